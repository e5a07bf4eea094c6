//! The downward lane (protocol version 2): the hub's `Downward` batches and
//! downward snapshots in, handed to the apply stage ([`crate::apply::queue`])
//! without waiting, so heartbeats and the upward lane never wait for the
//! cluster; cumulative `DownwardAck`s (with what failed) out as deltas are
//! done.
//!
//! A downward snapshot (begin, chunks, end) names every object placed on the
//! cluster. Its objects are applied as they come; after its end, once they
//! are all done, the apply stage deletes the owned objects it did not name
//! (the sweep), and only then is the end's `seq` acknowledged. No ack goes
//! out while a snapshot is open. A snapshot of some shards (version 4,
//! `SnapshotBegin.shards`) sweeps only within them.
//!
//! Everything here lives as long as one connection: a new connection starts
//! with nothing pending, since the hub sends again what was not acknowledged
//! (or a new snapshot).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::Instant;
use uplink_protocol::{
    ApplyFailure, DownwardAck, DownwardBatch, DownwardChange, HubFrame, Limits, Rejected,
    SyncTargetLocator, truncate_utf8,
};

use super::wire::{Sender, frame_name};
use super::{SessionError, Steady};
use crate::apply::Applier;
use crate::apply::queue::{ApplyQueue, Done, Job};
use crate::routes::ShardSet;
use crate::transform::{DownstreamKey, Target, locate};

/// Most [`Done`]s taken from the apply stage before acknowledging.
const DONE_BATCH: usize = 1024;

/// One session's downward lane.
#[derive(Debug)]
pub(super) struct DownwardLane {
    queue: ApplyQueue,
    target: Option<Target>,
    tracker: AckTracker,
    /// The names of the open snapshot's objects, and the shards it covers,
    /// between begin and end.
    snapshot: Option<(HashSet<DownstreamKey>, ShardSet)>,
    /// Deltas received and not done above which the hub broke its window.
    max_pending: usize,
    /// Longest failure message the hub takes.
    max_message: usize,
}

impl DownwardLane {
    /// Starts the lane and its apply stage; the receiver yields what the
    /// apply stage finished.
    pub(super) fn start(
        applier: Arc<Applier>,
        sync_target: Option<&SyncTargetLocator>,
        limits: &Limits,
    ) -> (Self, mpsc::UnboundedReceiver<Done>) {
        let target = sync_target.map(Target::from);
        if target.is_none() {
            tracing::warn!(
                "the hub names no SyncTarget for this cluster: downward deltas will be refused"
            );
        }
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let queue = ApplyQueue::start(applier, target.clone(), done_tx);
        let lane = Self {
            queue,
            target,
            tracker: AckTracker::default(),
            snapshot: None,
            max_pending: usize::try_from(limits.max_objects_per_cluster)
                .unwrap_or(usize::MAX)
                .max(1),
            max_message: limits.max_string_bytes as usize,
        };
        (lane, done_rx)
    }

    /// Takes one downward frame from the hub; `shard_count` is the count
    /// the replica announced (a snapshot of some shards needs it).
    pub(super) fn receive(
        &mut self,
        frame: HubFrame,
        shard_count: Option<u16>,
    ) -> Result<(), SessionError> {
        match frame {
            HubFrame::Downward(batch) => {
                if self.snapshot.is_some() {
                    return Err(SessionError::Protocol(
                        "Downward inside a downward snapshot".into(),
                    ));
                }
                self.enqueue(batch)
            }
            HubFrame::DownwardSnapshotBegin(begin) => {
                if self.snapshot.is_some() {
                    return Err(SessionError::Protocol(
                        "DownwardSnapshotBegin inside a downward snapshot".into(),
                    ));
                }
                let shards = match (begin.shards, shard_count) {
                    (None, _) => ShardSet::Everything,
                    (Some(shards), Some(count)) => ShardSet::Shards {
                        count,
                        shards: shards.iter().map(|s| s.0).collect(),
                    },
                    (Some(_), None) => {
                        return Err(SessionError::Protocol(
                            "a downward snapshot of some shards from a hub that announced no shard count".into(),
                        ));
                    }
                };
                tracing::info!(objects = begin.objects, shards = ?shards.to_wire(), "downward snapshot begins");
                self.tracker.snapshot_begun();
                self.snapshot = Some((HashSet::new(), shards));
                Ok(())
            }
            HubFrame::DownwardSnapshotChunk(chunk) => {
                let Some((named, _)) = &mut self.snapshot else {
                    return Err(SessionError::Protocol(
                        "DownwardSnapshotChunk without DownwardSnapshotBegin".into(),
                    ));
                };
                if let Some(target) = &self.target {
                    for delta in &chunk.deltas {
                        if matches!(delta.change, DownwardChange::Apply { .. })
                            && let Ok(key) = locate(&delta.object, target)
                        {
                            named.insert(key);
                        }
                    }
                }
                self.enqueue(chunk)
            }
            HubFrame::DownwardSnapshotEnd(end) => {
                let Some((named, shards)) = self.snapshot.take() else {
                    return Err(SessionError::Protocol(
                        "DownwardSnapshotEnd without DownwardSnapshotBegin".into(),
                    ));
                };
                tracing::info!(
                    seq = end.seq,
                    objects = named.len(),
                    "downward snapshot received; sweeping once applied"
                );
                self.queue.sweep(end.seq, named, shards);
                Ok(())
            }
            other => Err(SessionError::Protocol(format!(
                "{} is not a downward frame",
                frame_name(&other)
            ))),
        }
    }

    fn enqueue(&mut self, batch: DownwardBatch) -> Result<(), SessionError> {
        let received = Instant::now();
        for delta in batch.deltas {
            self.tracker.received(delta.seq);
            self.queue.push(Job {
                seq: delta.seq,
                object: delta.object,
                change: delta.change,
                received,
            });
        }
        if self.tracker.pending > self.max_pending {
            return Err(SessionError::Protocol(format!(
                "the hub has {} downward deltas waiting for acknowledgement, more than the {} objects a cluster may have",
                self.tracker.pending, self.max_pending
            )));
        }
        Ok(())
    }

    /// Takes what the apply stage finished.
    pub(super) fn done(&mut self, done: Done) {
        match done {
            Done::Delta { seq, failure } => self.tracker.completed(seq, failure),
            Done::Swept { end_seq } => self.tracker.swept(end_seq),
        }
    }

    /// The next acknowledgement to send, if any; call until `None`.
    pub(super) fn next_ack(&mut self) -> Option<DownwardAck> {
        let mut ack = self.tracker.next_ack(Rejected::MAX_PER_ACK)?;
        for failure in &mut ack.failures {
            truncate_utf8(&mut failure.message, self.max_message);
        }
        Some(ack)
    }
}

/// What a session acknowledges downward: the highest `seq` done below
/// every `seq` still in flight, and what failed on the way.
#[derive(Debug, Default)]
struct AckTracker {
    /// Sequence numbers received and not done, with how many (a resent
    /// delta may be received twice).
    in_flight: BTreeMap<u64, usize>,
    /// Deltas received and not done.
    pending: usize,
    /// Sequence numbers done (and swept snapshot ends) not acknowledged yet.
    done: BTreeSet<u64>,
    /// The last `seq` acknowledged.
    acked: u64,
    /// Snapshots begun and not swept: no ack while there is one.
    open_snapshots: usize,
    failures: Vec<ApplyFailure>,
}

impl AckTracker {
    fn received(&mut self, seq: u64) {
        *self.in_flight.entry(seq).or_default() += 1;
        self.pending += 1;
    }

    fn completed(&mut self, seq: u64, failure: Option<ApplyFailure>) {
        if let Some(count) = self.in_flight.get_mut(&seq) {
            *count -= 1;
            if *count == 0 {
                self.in_flight.remove(&seq);
            }
            self.pending = self.pending.saturating_sub(1);
            self.done.insert(seq);
        }
        self.failures.extend(failure);
    }

    fn snapshot_begun(&mut self) {
        self.open_snapshots += 1;
    }

    fn swept(&mut self, end_seq: u64) {
        self.open_snapshots = self.open_snapshots.saturating_sub(1);
        self.done.insert(end_seq);
    }

    /// Every delta at or below the returned `seq` is done; the failures among
    /// them go with it (at most `max_failures`; more make a lower `seq`, and
    /// the rest follow in the next ack).
    fn next_ack(&mut self, max_failures: usize) -> Option<DownwardAck> {
        if self.open_snapshots > 0 {
            return None;
        }
        let done_up_to = match self.in_flight.keys().next() {
            Some(&lowest) => self.done.range(..lowest).next_back(),
            None => self.done.last(),
        }
        .copied()
        .unwrap_or(self.acked);
        self.failures.sort_by_key(|f| f.seq);
        let covered = self.failures.partition_point(|f| f.seq <= done_up_to);
        let (seq, take) = if covered > max_failures {
            // Acknowledge only up to the first failure that does not fit.
            let cut = self.failures[max_failures].seq;
            let seq = cut.saturating_sub(1);
            (seq, self.failures.partition_point(|f| f.seq <= seq))
        } else {
            (done_up_to, covered)
        };
        if take == 0 && seq <= self.acked {
            return None;
        }
        let failures: Vec<ApplyFailure> = self.failures.drain(..take).collect();
        self.acked = self.acked.max(seq);
        self.done = self.done.split_off(&(self.acked + 1));
        Some(DownwardAck {
            seq: self.acked,
            failures,
        })
    }
}

impl Steady<'_> {
    /// Takes what the apply stage finished and acknowledges what is done.
    pub(super) async fn downward_done(
        &mut self,
        done: Vec<Done>,
        tx: &mut Sender,
    ) -> Result<(), SessionError> {
        let Some(lane) = &mut self.downward else {
            return Ok(());
        };
        for done in done {
            lane.done(done);
        }
        while let Some(ack) = lane.next_ack() {
            tracing::debug!(seq = ack.seq, failures = ack.failures.len(), "downward ack");
            tx.frame(&uplink_protocol::AgentFrame::DownwardAck(ack))
                .await?;
        }
        Ok(())
    }
}

/// The next things the apply stage finished (waits for the first, takes
/// what else is there); never ready without a lane.
pub(super) async fn next_done(done: &mut Option<mpsc::UnboundedReceiver<Done>>) -> Vec<Done> {
    let Some(rx) = done else {
        return std::future::pending().await;
    };
    let Some(first) = rx.recv().await else {
        // The apply stage is gone (it only goes with the lane).
        return std::future::pending().await;
    };
    let mut batch = vec![first];
    while batch.len() < DONE_BATCH {
        match rx.try_recv() {
            Ok(done) => batch.push(done),
            Err(_) => break,
        }
    }
    batch
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn failure(seq: u64) -> ApplyFailure {
        ApplyFailure {
            seq,
            reason: ApplyFailure::CONFLICT.into(),
            message: "conflict".into(),
        }
    }

    #[test]
    fn acks_cover_what_is_done_in_order() {
        let mut t = AckTracker::default();
        for seq in [3, 5, 9] {
            t.received(seq);
        }
        assert_eq!(t.next_ack(10), None, "nothing done yet");
        // Done out of order: 5 waits for 3.
        t.completed(5, None);
        assert_eq!(t.next_ack(10), None);
        t.completed(3, Some(failure(3)));
        let ack = t.next_ack(10).unwrap();
        assert_eq!((ack.seq, ack.failures), (5, vec![failure(3)]));
        assert_eq!(t.next_ack(10), None, "no news, no ack");
        t.completed(9, None);
        assert_eq!(t.next_ack(10).map(|a| a.seq), Some(9));
        assert_eq!(t.pending, 0);
    }

    #[test]
    fn a_failure_waits_for_the_ack_that_covers_it() {
        let mut t = AckTracker::default();
        t.received(1);
        t.received(2);
        t.completed(2, Some(failure(2)));
        assert_eq!(t.next_ack(10), None, "1 is not done");
        t.completed(1, None);
        let ack = t.next_ack(10).unwrap();
        assert_eq!((ack.seq, ack.failures), (2, vec![failure(2)]));
    }

    #[test]
    fn too_many_failures_split_into_several_acks() {
        let mut t = AckTracker::default();
        for seq in 1..=5 {
            t.received(seq);
            t.completed(seq, Some(failure(seq)));
        }
        let first = t.next_ack(2).unwrap();
        assert_eq!(first.seq, 2);
        assert_eq!(first.failures, vec![failure(1), failure(2)]);
        let second = t.next_ack(2).unwrap();
        assert_eq!(second.seq, 4);
        let third = t.next_ack(2).unwrap();
        assert_eq!((third.seq, third.failures), (5, vec![failure(5)]));
        assert_eq!(t.next_ack(2), None);
    }

    #[test]
    fn no_ack_while_a_snapshot_is_open_then_its_end() {
        let mut t = AckTracker::default();
        t.snapshot_begun();
        // Chunk objects carry the seqs of their last change.
        for seq in [4, 7] {
            t.received(seq);
        }
        t.completed(4, None);
        t.completed(7, Some(failure(7)));
        assert_eq!(t.next_ack(10), None, "the sweep has not run");
        // A delta after the end waits behind the sweep.
        t.received(12);
        t.swept(10);
        let ack = t.next_ack(10).unwrap();
        assert_eq!((ack.seq, ack.failures), (10, vec![failure(7)]));
        t.completed(12, None);
        assert_eq!(t.next_ack(10).map(|a| a.seq), Some(12));
    }

    #[test]
    fn an_empty_snapshot_acknowledges_its_end() {
        let mut t = AckTracker::default();
        t.snapshot_begun();
        t.swept(30);
        assert_eq!(t.next_ack(10).map(|a| a.seq), Some(30));
    }

    #[test]
    fn a_resent_delta_counts_twice() {
        let mut t = AckTracker::default();
        t.received(6);
        t.received(6);
        t.completed(6, None);
        assert_eq!(t.next_ack(10), None);
        t.completed(6, None);
        assert_eq!(t.next_ack(10).map(|a| a.seq), Some(6));
    }
}
