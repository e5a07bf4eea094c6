//! The upward lane: the outbox's changes out to the hub, as `Deltas` batches
//! (paced while the hub throttles) or as a snapshot of every object; the
//! hub's `Ack` (with the reports it refused) and `Throttle` back in.

use std::time::Duration;

use tokio::time::Instant;
use uplink_protocol::{
    Ack, AgentFrame, Delta, EVENTS_VERSION, Limits, Rejected, SnapshotBegin, SnapshotEnd, Throttle,
};

use super::batch::{BatchKind, frame_deltas};
use super::wire::Sender;
use super::{SessionContext, SessionError, Steady};
use crate::routes::ShardSet;

/// `SnapshotBegin`, chunks with every existing object of `shards`,
/// `SnapshotEnd`.
pub(super) async fn send_snapshot(
    ctx: &SessionContext,
    tx: &mut Sender,
    limits: &Limits,
    version: u16,
    upsync_listed: bool,
    shards: &ShardSet,
) -> Result<(), SessionError> {
    if shards.is_empty() {
        // A replica that holds nothing asked for a snapshot of it: there is
        // nothing to send (and protocol version 4 refuses an empty list).
        tracing::info!(cluster = %ctx.cluster, replica = %ctx.replica_name, "snapshot of no shard: nothing to send");
        return Ok(());
    }
    let snapshot = ctx.outbox.lock().snapshot_entries(ctx.replica, shards);
    let seq = snapshot.seq;
    // Frames are built before `SnapshotBegin` so it can announce the exact
    // count (objects the hub would refuse are left out).
    let deltas = snapshot.into_deltas().map(|d| for_version(d, version));
    let framed = frame_deltas(deltas, limits, BatchKind::SnapshotChunk)?;
    report_dropped(ctx, &framed.dropped);
    // Each frame of a snapshot (sent before anything is read back) may take
    // three heartbeat intervals.
    let per_frame = ctx.heartbeat_interval * 3;
    tx.deadline = Instant::now() + per_frame;
    tx.frame(&AgentFrame::SnapshotBegin(SnapshotBegin {
        objects: framed.deltas,
        shards: shards.to_wire(),
    }))
    .await?;
    for frame in framed.frames {
        tx.deadline = Instant::now() + per_frame;
        tx.bytes(frame.bytes).await?;
    }
    tx.deadline = Instant::now() + per_frame;
    tx.frame(&AgentFrame::SnapshotEnd(SnapshotEnd { seq, upsync_listed }))
        .await?;
    ctx.metrics.snapshot_objects.inc_by(framed.deltas);
    tracing::info!(cluster = %ctx.cluster, replica = %ctx.replica_name, objects = framed.deltas, seq, shards = ?shards.to_wire(), "snapshot sent");
    Ok(())
}

/// `delta` as a session of `version` carries it: below version 3 an
/// upsynced object's whole state stays behind (its status still goes).
fn for_version(mut delta: Delta, version: u16) -> Delta {
    if version < EVENTS_VERSION {
        delta.object_json = None;
    }
    delta
}

fn report_dropped(ctx: &SessionContext, dropped: &[(Delta, &'static str, String)]) {
    if dropped.is_empty() {
        return;
    }
    let mut outbox = ctx.outbox.lock();
    for (delta, kind, error) in dropped {
        ctx.metrics.deltas_dropped.with_label_values(&[kind]).inc();
        tracing::warn!(
            workspace = %delta.object.workspace,
            namespace = delta.object.namespace.as_deref().unwrap_or_default(),
            name = %delta.object.name,
            resource = %delta.object.resource,
            error = %error,
            "delta exceeds the hub's limits; not sent"
        );
        outbox.discard(delta.seq);
    }
}

impl Steady<'_> {
    /// When the next `Deltas` frame may go out, given throttling.
    pub(super) fn send_at(&self) -> Instant {
        match self.paused_until {
            Some(until) => until.max(self.next_send_at),
            None => self.next_send_at,
        }
    }

    /// Takes the hub's acknowledgement: the outbox drops what it covers.
    pub(super) fn acked(&self, ack: &Ack) {
        let mut outbox = self.ctx.outbox.lock();
        if ack.seq > outbox.last_seq() {
            tracing::warn!(
                ack = ack.seq,
                last_seq = outbox.last_seq(),
                "hub acknowledged a sequence never sent"
            );
        }
        outbox.ack(self.ctx.replica, ack.seq);
        tracing::debug!(ack = ack.seq, pending = outbox.pending_len(), "ack");
        drop(outbox);
        self.count_rejected(&ack.rejected);
    }

    /// Counts the reports the hub refused and logs them: at `warn` for the
    /// first ten of each reason and then at every power of two (a cluster
    /// that reports what KCP did not place on it would flood otherwise),
    /// at `debug` in between.
    pub(super) fn count_rejected(&self, rejected: &[Rejected]) {
        for refusal in rejected {
            // A reason this agent does not know is counted as `other`, so a
            // newer hub cannot grow the label set.
            let reason = Rejected::REASONS
                .iter()
                .copied()
                .find(|known| *known == refusal.reason)
                .unwrap_or("other");
            let counter = self
                .ctx
                .metrics
                .rejected_deltas
                .with_label_values(&[reason]);
            counter.inc();
            let total = counter.get();
            if total <= 10 || total.is_power_of_two() {
                tracing::warn!(cluster = %self.ctx.cluster, seq = refusal.seq, reason = %refusal.reason, rejected = total, "the hub refused a report");
            } else {
                tracing::debug!(cluster = %self.ctx.cluster, seq = refusal.seq, reason = %refusal.reason, rejected = total, "the hub refused a report");
            }
        }
    }

    pub(super) fn throttle(&mut self, throttle: Throttle) {
        tracing::info!(
            pause_ms = throttle.pause_ms,
            max_deltas_per_s = throttle.max_deltas_per_s,
            "hub throttles deltas"
        );
        self.paused_until = (throttle.pause_ms > 0)
            .then(|| Instant::now() + Duration::from_millis(throttle.pause_ms));
        self.max_deltas_per_s = throttle.max_deltas_per_s;
    }

    /// Sends one batch of unsent outbox entries.
    pub(super) async fn send_deltas(&mut self, tx: &mut Sender) -> Result<(), SessionError> {
        let mut max = (self.limits.max_deltas_per_batch as usize).max(1);
        if self.max_deltas_per_s > 0 {
            max = max.min(self.max_deltas_per_s as usize);
        }
        let replica = self.ctx.replica;
        let deltas = self.ctx.outbox.lock().unsent(replica, max);
        let sent: Vec<u64> = deltas.iter().map(|d| d.seq).collect();
        if sent.is_empty() {
            return Ok(());
        }
        let version = self.version;
        let deltas = deltas.into_iter().map(|d| for_version(d, version));
        let framed = frame_deltas(deltas, &self.limits, BatchKind::Deltas)?;
        report_dropped(self.ctx, &framed.dropped);
        let frames = framed.frames.len() as u64;
        for frame in framed.frames {
            tx.bytes(frame.bytes).await?;
            self.ctx.outbox.lock().mark_sent(replica, frame.seqs);
        }
        // What was dropped is discarded; whatever else is marked.
        self.ctx.outbox.lock().mark_sent(replica, sent);
        tx.metrics.deltas_sent.inc_by(framed.deltas);
        tx.metrics.delta_frames_sent.inc_by(frames);
        if self.max_deltas_per_s > 0 {
            let spacing =
                Duration::from_secs_f64(framed.deltas as f64 / f64::from(self.max_deltas_per_s));
            self.next_send_at = Instant::now() + spacing;
        }
        Ok(())
    }
}

impl Steady<'_> {
    /// A snapshot of the shards the replica asked for (a `Shards` frame's
    /// `snapshot`).
    pub(super) async fn send_shard_snapshot(
        &mut self,
        tx: &mut Sender,
        shards: ShardSet,
    ) -> Result<(), SessionError> {
        let types = self.ctx.upsync_resources.len();
        let upsync_listed =
            self.version >= EVENTS_VERSION && *self.ctx.upsync_listed.borrow() >= types;
        self.ctx
            .metrics
            .sessions
            .with_label_values(&["snapshot"])
            .inc();
        // Each frame has its own deadline; the steady state sets its own
        // again on the next turn.
        send_snapshot(
            self.ctx,
            tx,
            &self.limits,
            self.version,
            upsync_listed,
            &shards,
        )
        .await
    }
}
