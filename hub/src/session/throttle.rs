//! Backpressure from the KCP writer: while a cluster's backlog in its
//! queue is deep, that cluster's agent is told to pause and then held to a
//! rate; once the backlog shrank, released. Other clusters are never
//! throttled for it: the writer serves clusters fairly
//! ([`crate::writer::WriteQueue`]), so their writes do not wait behind it.

use std::time::Duration;

use tokio::time::Instant;
use uplink_protocol::{HubFrame, Throttle};

use super::wire::Violation;
use super::{Connection, Transport};

/// When and how agents are slowed down because the KCP writer fell behind.
///
/// The store keeps one entry per object whatever the traffic, so memory is
/// bounded either way; throttling keeps agents from spending the hub's CPU
/// (and the network) on changes the writer will coalesce anyway.
#[derive(Debug, Clone, Copy)]
pub struct ThrottleSettings {
    /// A cluster's backlog in the writer's queue (objects queued on its
    /// behalf) at which its agent gets `Throttle`; below half of it the
    /// agent is released. 0 never throttles.
    pub queue_depth: usize,
    /// How long a throttled agent pauses its deltas.
    pub pause: Duration,
    /// The rate a throttled agent is held to after the pause (0: unlimited).
    pub max_deltas_per_s: u32,
}

impl<S: Transport> Connection<S> {
    /// Tells the agent to pause when the KCP writer is behind on this
    /// cluster's changes (again once each pause is over, while it stays
    /// behind), and releases it once the cluster's backlog is down to half
    /// the threshold. Checked after every frame, so heartbeats release an
    /// agent that stopped sending.
    pub(super) async fn throttle_if_behind(&mut self) -> Result<(), Violation> {
        let settings = self.shared.throttle;
        if settings.queue_depth == 0 {
            return Ok(());
        }
        let depth = self.shared.write_queue.cluster_depth(&self.cluster);
        let now = Instant::now();
        let frame = if depth >= settings.queue_depth {
            if self.throttled_until.is_some_and(|until| now < until) {
                return Ok(());
            }
            if self.throttled_until.is_none() {
                tracing::info!(cluster = %self.cluster, queue_depth = depth, pause = ?settings.pause, max_deltas_per_s = settings.max_deltas_per_s, "KCP writer behind on this cluster's changes; throttling the agent");
            }
            self.throttled_until = Some(now + settings.pause);
            self.shared
                .metrics
                .throttles
                .with_label_values(&[&self.cluster])
                .inc();
            Throttle {
                pause_ms: u64::try_from(settings.pause.as_millis()).unwrap_or(u64::MAX),
                max_deltas_per_s: settings.max_deltas_per_s,
            }
        } else if self.throttled_until.is_some() && depth < settings.queue_depth / 2 {
            tracing::info!(cluster = %self.cluster, queue_depth = depth, "KCP writer caught up with this cluster's changes; releasing the agent");
            self.throttled_until = None;
            Throttle {
                pause_ms: 0,
                max_deltas_per_s: 0,
            }
        } else {
            return Ok(());
        };
        self.send_or_end(&HubFrame::Throttle(frame)).await
    }
}
