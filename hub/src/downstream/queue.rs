//! One cluster's downward queue: the latest change of every placed object
//! that the cluster's agent has not acknowledged yet, in sequence order.
//!
//! The same guarantees as the agent's outbox upward: one entry per object
//! however often it changed (latest state wins, under a new sequence
//! number), cumulative acks, resume by sending again what is above the last
//! ack, and a snapshot that replaces everything pending. Memory is bounded
//! by the objects placed on the cluster: at most one entry each.
//!
//! A snapshot gives every object it names its own sequence number and ends
//! with one more (the agent acknowledges it after sweeping what the
//! snapshot did not name), so acks and the in-flight window work the same
//! during a snapshot as after it: the snapshot's entries go out as the
//! window opens, then its end, then what changed since. An object that
//! changes before its snapshot entry went out keeps that entry, with the
//! new manifest; one deleted meanwhile leaves the snapshot, and the
//! agent's sweep deletes it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::store::ObjectKey;

/// What a cluster is to do with one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Bring the object into the cluster as this manifest says.
    Apply(Arc<str>),
    /// Delete it from the cluster.
    Delete,
}

/// One entry waiting for the agent's acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    pub seq: u64,
    pub key: ObjectKey,
    /// The upstream object's uid.
    pub uid: String,
    pub change: Change,
}

/// The queue; see the module documentation.
#[derive(Debug, Default)]
pub struct DownwardQueue {
    /// The last sequence number given out.
    last_seq: u64,
    /// Everything acknowledged up to here.
    acked: u64,
    /// Everything up to here was handed to the session.
    sent: u64,
    entries: HashMap<ObjectKey, Queued>,
    by_seq: BTreeMap<u64, ObjectKey>,
    /// Deletions that a snapshot superseded: confirmed once the agent acks
    /// the snapshot's end (its sweep deleted them).
    swept: Vec<(u64, ObjectKey)>,
    /// The end of a snapshot whose end was not sent yet.
    snapshot_end: Option<u64>,
    /// The end of the last snapshot; until it is acknowledged, a new
    /// connection needs a new snapshot.
    last_snapshot_end: u64,
}

/// What an acknowledgement confirmed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Confirmed {
    /// Objects now gone downstream.
    pub deleted: Vec<ObjectKey>,
    /// Objects now applied, with the sequence number of the change.
    pub applied: Vec<(u64, ObjectKey)>,
}

impl DownwardQueue {
    /// Queues `change` of `key`, replacing a pending one. Returns its
    /// sequence number.
    pub fn push(&mut self, key: ObjectKey, uid: String, change: Change) -> u64 {
        // Still in the unsent part of a snapshot: the snapshot carries the
        // newest state, or no longer names a deleted object.
        if let Some(end) = self.snapshot_end
            && let Some(entry) = self.entries.get_mut(&key)
            && entry.seq < end
            && entry.seq > self.sent
        {
            let seq = entry.seq;
            match change {
                Change::Apply(_) => {
                    entry.uid = uid;
                    entry.change = change;
                }
                Change::Delete => {
                    self.entries.remove(&key);
                    self.by_seq.remove(&seq);
                    self.swept.push((end, key));
                }
            }
            return seq;
        }
        self.last_seq += 1;
        let seq = self.last_seq;
        if let Some(old) = self.entries.get(&key) {
            self.by_seq.remove(&old.seq);
        }
        self.by_seq.insert(seq, key.clone());
        self.entries.insert(
            key.clone(),
            Queued {
                seq,
                key,
                uid,
                change,
            },
        );
        seq
    }

    /// The next entries to send, in order: at most `max`, and no more than
    /// `window` unacknowledged in flight; during a snapshot, only its
    /// entries ([`DownwardQueue::snapshot_end_due`] says when its end may
    /// go). Marks them sent.
    pub fn next_batch(&mut self, max: usize, window: u64) -> Vec<Queued> {
        let room = window.saturating_sub(self.in_flight());
        let take = usize::try_from(room).unwrap_or(usize::MAX).min(max);
        let until = self.snapshot_end.unwrap_or(u64::MAX);
        let batch: Vec<Queued> = self
            .by_seq
            .range(self.sent + 1..until)
            .take(take)
            .filter_map(|(_, key)| self.entries.get(key).cloned())
            .collect();
        if let Some(last) = batch.last() {
            self.sent = last.seq;
        }
        batch
    }

    /// The end of the snapshot being sent, once every entry of it went out
    /// and the window has room for it. Marks it sent.
    pub fn snapshot_end_due(&mut self, window: u64) -> Option<u64> {
        let end = self.snapshot_end?;
        if self.by_seq.range(self.sent + 1..end).next().is_some() || self.in_flight() >= window {
            return None;
        }
        self.snapshot_end = None;
        self.sent = end;
        Some(end)
    }

    /// Whether a snapshot is being sent (its end not yet).
    pub fn in_snapshot(&self) -> bool {
        self.snapshot_end.is_some()
    }

    /// Sequence numbers sent and not acknowledged (an upper bound: entries
    /// replaced since they were sent count until the ack passes them).
    pub fn in_flight(&self) -> u64 {
        self.sent.saturating_sub(self.acked)
    }

    /// Whether entries (or a snapshot's end) wait to be sent.
    pub fn has_unsent(&self) -> bool {
        self.snapshot_end.is_some() || self.by_seq.range(self.sent + 1..).next().is_some()
    }

    /// Acknowledges everything up to `seq`; returns what that confirmed. An
    /// ack of something never sent is capped at what was sent.
    pub fn ack(&mut self, seq: u64) -> Confirmed {
        let seq = seq.min(self.sent);
        let mut confirmed = Confirmed::default();
        if seq <= self.acked {
            return confirmed;
        }
        self.acked = seq;
        let done: Vec<u64> = self.by_seq.range(..=seq).map(|(s, _)| *s).collect();
        for s in done {
            let Some(key) = self.by_seq.remove(&s) else {
                continue;
            };
            if let Some(entry) = self.entries.remove(&key) {
                match entry.change {
                    Change::Delete => confirmed.deleted.push(key),
                    Change::Apply(_) => confirmed.applied.push((s, key)),
                }
            }
        }
        let (done, pending): (Vec<_>, Vec<_>) =
            self.swept.drain(..).partition(|(end, _)| *end <= seq);
        self.swept = pending;
        confirmed
            .deleted
            .extend(done.into_iter().map(|(_, key)| key));
        confirmed
    }

    /// Whether a reconnect can resume: the last snapshot was acknowledged
    /// whole (an agent cut off in the middle of one needs a new one).
    pub fn can_resume(&self) -> bool {
        self.acked >= self.last_snapshot_end
    }

    /// A reconnect of the same agent session: everything not acknowledged
    /// is sent again.
    pub fn resume(&mut self) {
        self.sent = self.acked;
    }

    /// Starts a snapshot of `objects` (every object placed on the cluster
    /// that it applies): replaces everything pending, gives each object a
    /// sequence number and the end one more, to be sent as the window
    /// allows. Returns how many objects and the end's sequence number.
    pub fn snapshot(&mut self, objects: Vec<(ObjectKey, String, Arc<str>)>) -> (u64, u64) {
        let first = self.last_seq + 1;
        let count = objects.len() as u64;
        let end = first + count;
        // Pending deletions are not named by the snapshot: the agent's sweep
        // deletes them, confirmed with the end.
        for (_, key) in std::mem::take(&mut self.by_seq) {
            if let Some(Queued {
                change: Change::Delete,
                ..
            }) = self.entries.get(&key)
            {
                self.swept.push((end, key));
            }
        }
        for entry in &mut self.swept {
            entry.0 = end;
        }
        self.entries.clear();
        for ((key, uid, manifest), seq) in objects.into_iter().zip(first..) {
            self.by_seq.insert(seq, key.clone());
            self.entries.insert(
                key.clone(),
                Queued {
                    seq,
                    key,
                    uid,
                    change: Change::Apply(manifest),
                },
            );
        }
        self.last_seq = end;
        self.acked = first - 1;
        self.sent = first - 1;
        self.snapshot_end = Some(end);
        self.last_snapshot_end = end;
        (count, end)
    }

    /// Objects deleted in KCP that the snapshot being sent does not name
    /// (their copies, if any, go in the agent's sweep): confirmed deleted
    /// with the snapshot's end, so the hub lets them go upstream. An object
    /// whose deletion the hub saw before the cluster's lane opened (a hub
    /// that restarted while objects were being deleted) has no other way
    /// to be confirmed.
    pub fn sweep_with_snapshot(&mut self, keys: impl IntoIterator<Item = ObjectKey>) {
        let Some(end) = self.snapshot_end else {
            return;
        };
        self.swept.extend(keys.into_iter().map(|key| (end, key)));
    }

    /// Entries waiting (sent or not).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(text: &str) -> Change {
        Change::Apply(Arc::from(text))
    }

    fn seqs(batch: &[Queued]) -> Vec<u64> {
        batch.iter().map(|q| q.seq).collect()
    }

    #[test]
    fn objects_deleted_before_a_snapshot_are_confirmed_by_its_end() {
        let mut queue = DownwardQueue::default();
        let (_, end) = queue.snapshot(vec![(
            ObjectKey::deployment("a"),
            "u".into(),
            Arc::from("1"),
        )]);
        queue.sweep_with_snapshot([ObjectKey::deployment("gone")]);
        assert_eq!(seqs(&queue.next_batch(10, 10)), [end - 1]);
        assert_eq!(queue.snapshot_end_due(10), Some(end));
        let confirmed = queue.ack(end - 1);
        assert!(confirmed.deleted.is_empty(), "not before the end");
        let confirmed = queue.ack(end);
        assert_eq!(confirmed.deleted, vec![ObjectKey::deployment("gone")]);
        // Outside a snapshot there is no sweep to confirm anything.
        queue.sweep_with_snapshot([ObjectKey::deployment("other")]);
        queue.push(ObjectKey::deployment("b"), "u".into(), apply("1"));
        queue.next_batch(10, 10);
        assert!(queue.ack(end + 1).deleted.is_empty());
    }

    #[test]
    fn the_latest_change_per_object_goes_once() {
        let mut queue = DownwardQueue::default();
        queue.push(ObjectKey::deployment("a"), "u".into(), apply("1"));
        queue.push(ObjectKey::deployment("b"), "u".into(), apply("1"));
        queue.push(ObjectKey::deployment("a"), "u".into(), apply("2"));
        let batch = queue.next_batch(10, 10);
        assert_eq!(seqs(&batch), [2, 3]);
        assert_eq!(batch[1].change, apply("2"));
        assert!(queue.next_batch(10, 10).is_empty());
        assert_eq!(queue.len(), 2);
    }

    #[test]
    fn the_window_bounds_what_is_in_flight() {
        let mut queue = DownwardQueue::default();
        for name in ["a", "b", "c", "d"] {
            queue.push(ObjectKey::deployment(name), "u".into(), apply("1"));
        }
        assert_eq!(seqs(&queue.next_batch(10, 3)), [1, 2, 3]);
        assert!(queue.next_batch(10, 3).is_empty(), "window full");
        queue.ack(2);
        assert_eq!(seqs(&queue.next_batch(10, 3)), [4]);
        assert!(!queue.has_unsent());
    }

    #[test]
    fn acks_confirm_deletions_and_resume_resends_the_rest() {
        let mut queue = DownwardQueue::default();
        queue.push(ObjectKey::deployment("a"), "u".into(), apply("1"));
        queue.push(ObjectKey::deployment("b"), "u".into(), Change::Delete);
        queue.push(ObjectKey::deployment("c"), "u".into(), apply("1"));
        queue.next_batch(10, 10);
        let confirmed = queue.ack(2);
        assert_eq!(confirmed.deleted, vec![ObjectKey::deployment("b")]);
        assert_eq!(confirmed.applied, vec![(1, ObjectKey::deployment("a"))]);
        assert_eq!(
            queue.ack(1),
            Confirmed::default(),
            "stale acks change nothing"
        );
        // The connection dropped before c was acknowledged.
        queue.resume();
        assert_eq!(seqs(&queue.next_batch(10, 10)), [3]);
        // An ack beyond what was sent is capped.
        queue.ack(99);
        queue.push(ObjectKey::deployment("d"), "u".into(), apply("1"));
        assert_eq!(seqs(&queue.next_batch(10, 10)), [4]);
    }

    #[test]
    fn a_snapshot_goes_out_as_the_window_opens_then_its_end_then_the_rest() {
        let mut queue = DownwardQueue::default();
        queue.push(ObjectKey::deployment("gone"), "u".into(), Change::Delete);
        queue.push(ObjectKey::deployment("a"), "u".into(), apply("old"));
        queue.next_batch(10, 10);
        let (objects, end) = queue.snapshot(vec![
            (ObjectKey::deployment("a"), "u".into(), Arc::from("new")),
            (ObjectKey::deployment("b"), "u".into(), Arc::from("new")),
            (ObjectKey::deployment("c"), "u".into(), Arc::from("new")),
        ]);
        assert_eq!((objects, end), (3, 6));
        assert!(queue.in_snapshot());
        // A change after the snapshot was taken waits for its end.
        queue.push(ObjectKey::deployment("d"), "u".into(), apply("new"));
        assert_eq!(seqs(&queue.next_batch(10, 2)), [3, 4]);
        assert_eq!(queue.snapshot_end_due(2), None, "c is not sent yet");
        // c changes before it went out: the snapshot carries the change.
        queue.push(ObjectKey::deployment("c"), "u".into(), apply("newer"));
        queue.ack(4);
        let batch = queue.next_batch(10, 2);
        assert_eq!(seqs(&batch), [5]);
        assert_eq!(batch[0].change, apply("newer"));
        assert_eq!(queue.snapshot_end_due(2), Some(6));
        assert!(!queue.in_snapshot());
        queue.ack(6);
        assert_eq!(
            seqs(&queue.next_batch(10, 2)),
            [7],
            "then what changed since"
        );
    }

    #[test]
    fn an_object_deleted_before_its_snapshot_entry_went_out_is_swept() {
        let mut queue = DownwardQueue::default();
        queue.push(ObjectKey::deployment("gone"), "u".into(), Change::Delete);
        queue.next_batch(10, 10);
        let (_, end) = queue.snapshot(vec![
            (ObjectKey::deployment("a"), "u".into(), Arc::from("1")),
            (ObjectKey::deployment("b"), "u".into(), Arc::from("1")),
        ]);
        queue.push(ObjectKey::deployment("b"), "u".into(), Change::Delete);
        assert_eq!(seqs(&queue.next_batch(10, 10)), [2]);
        assert_eq!(queue.snapshot_end_due(10), Some(end));
        // Acks inside the snapshot confirm nothing yet; its end confirms
        // what the sweep deleted.
        assert_eq!(queue.ack(2).deleted, Vec::<ObjectKey>::new());
        let mut deleted = queue.ack(end).deleted;
        deleted.sort();
        assert_eq!(
            deleted,
            vec![ObjectKey::deployment("b"), ObjectKey::deployment("gone")]
        );
    }

    #[test]
    fn only_a_whole_acknowledged_snapshot_can_be_resumed_after() {
        let mut queue = DownwardQueue::default();
        assert!(queue.can_resume());
        let (_, end) = queue.snapshot(vec![
            (ObjectKey::deployment("a"), "u".into(), Arc::from("1")),
            (ObjectKey::deployment("b"), "u".into(), Arc::from("1")),
        ]);
        queue.next_batch(10, 10);
        assert_eq!(queue.snapshot_end_due(10), Some(end));
        queue.ack(1);
        assert!(!queue.can_resume(), "cut off in the middle of the snapshot");
        queue.ack(end);
        assert!(queue.can_resume());
    }
}
