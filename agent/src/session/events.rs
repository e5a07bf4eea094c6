//! The event lane (protocol version 3): the event lane's reports out to
//! the hub as `Events` frames, when the rate limits allow and no status is
//! ready to go (the steady state decides when). Best effort: nothing is
//! acknowledged or resent, and a frame the hub would refuse is dropped,
//! counted, rather than sent to get the session closed.

use tokio::time::Instant;
use uplink_protocol::{AgentFrame, EventBatch, decode_agent_frame, encode, truncate_utf8};

use super::wire::Sender;
use super::{SessionError, Steady};
use crate::events::EventChanges;

impl Steady<'_> {
    /// Sends one `Events` frame of what the lane lets go now.
    pub(super) async fn send_events(&mut self, tx: &mut Sender) -> Result<(), SessionError> {
        let Some(lane) = &self.events else {
            return Ok(());
        };
        let max = (self.limits.max_events_per_batch as usize).max(1);
        // Each report goes to the replica holding its object's shard; the
        // others wait in the lane (within its bound).
        let routes = self.ctx.outbox.lock().routes().table();
        let replica = self.ctx.replica;
        let mut reports = lane.take_routed(max, |object| {
            routes.route(&object.workspace) == Some(replica)
        });
        if reports.is_empty() {
            return Ok(());
        }
        // The note is free text, the only field that may be long.
        let max_string = self.limits.max_string_bytes as usize;
        for report in &mut reports {
            truncate_utf8(&mut report.note, max_string);
        }
        let count = reports.len() as u64;
        let bytes = encode(&AgentFrame::Events(EventBatch { reports }))?;
        if let Err(error) = decode_agent_frame(&bytes, &self.limits) {
            let dropped = self
                .ctx
                .metrics
                .events_dropped
                .with_label_values(&["frame_limit"]);
            dropped.inc_by(count);
            tracing::warn!(cluster = %self.ctx.cluster, reports = count, %error, "event reports exceed the hub's limits; not sent");
            return Ok(());
        }
        tx.bytes(bytes).await?;
        self.ctx.metrics.events_sent.inc_by(count);
        Ok(())
    }
}

/// Sleeps until `due`; never resolves without one.
pub(super) async fn sleep_until_due(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

/// Resolves when a series starts waiting in the lane; never without one.
pub(super) async fn events_changed(changes: Option<&mut EventChanges>) {
    match changes {
        Some(changes) => changes.changed().await,
        None => std::future::pending().await,
    }
}

impl Steady<'_> {
    /// When a report for this session's replica may go, if one waits.
    pub(super) fn events_due(&self) -> Option<Instant> {
        let lane = self.events.as_ref()?;
        let routes = self.ctx.outbox.lock().routes().table();
        let replica = self.ctx.replica;
        lane.next_due_routed(|object| routes.route(&object.workspace) == Some(replica))
    }
}
