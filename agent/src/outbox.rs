//! The outbox: the latest state of every synced object, and which of those
//! states the hub has not yet acknowledged.
//!
//! - Keyed by upstream object: a new state replaces the queued one (latest
//!   state wins), so memory grows with the number of objects, not changes.
//! - A state equal to the last one recorded for the object (status,
//!   generation, observedGeneration, uid) is not queued again.
//! - Every queued entry takes the next per-agent sequence number; the hub's
//!   cumulative `Ack { seq }` removes every entry up to `seq`.
//! - Entries sent but not acknowledged stay; after a reconnect the session
//!   resends them (resume) or a snapshot covers them.
//!
//! `--outbox-limit` bounds the number of unacknowledged entries *reported as
//! healthy*: past it, each admitted entry increments
//! `uplink_agent_outbox_overflow_total` and the first one of a burst logs a
//! warning. Entries are still admitted (the newest state is the one the hub
//! needs, and dropping it would lose a status change), which keeps memory
//! bounded anyway: there is at most one entry per watched object.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use uplink_protocol::{Change, Delta, ObjectRef};

use crate::extract::ExtractedStatus;
use crate::metrics::Metrics;

/// Identifies an upstream object across its downstream incarnations (the uid
/// is not part of it: a recreated object replaces the old one's entry).
///
/// It shares the entry's [`ObjectRef`] (one allocation per object, also
/// shared with the inventory), and compares and hashes only the identifying
/// parts of it.
#[derive(Debug, Clone)]
struct ObjectKey(Arc<ObjectRef>);

impl ObjectKey {
    fn parts(&self) -> (&str, &str, &str, Option<&str>, &str) {
        let o = &*self.0;
        (
            &o.group,
            &o.resource,
            &o.workspace,
            o.namespace.as_deref(),
            &o.name,
        )
    }
}

impl PartialEq for ObjectKey {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.parts() == other.parts()
    }
}

impl Eq for ObjectKey {}

impl std::hash::Hash for ObjectKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.parts().hash(state);
    }
}

/// The last recorded state of one object: a [`Delta`] whose object and
/// status are shared (with the key, and with the inventory) rather than
/// copied; turned into a [`Delta`] only when it is sent.
#[derive(Debug, Clone)]
struct Entry {
    seq: u64,
    object: Arc<ObjectRef>,
    generation: Option<i64>,
    observed_generation: Option<i64>,
    observed_at_ms: i64,
    /// The status JSON text; `None` when the object was deleted.
    status: Option<Arc<str>>,
    /// An upsynced object's whole state, as KCP is to hold it (JSON text);
    /// `None` for a status-only object and for a deletion.
    whole: Option<Arc<str>>,
}

impl Entry {
    fn is_deleted(&self) -> bool {
        self.status.is_none()
    }

    fn to_delta(&self) -> Delta {
        Delta {
            seq: self.seq,
            object: ObjectRef::clone(&self.object),
            generation: self.generation,
            observed_generation: self.observed_generation,
            observed_at_ms: self.observed_at_ms,
            change: match &self.status {
                Some(status) => Change::Upsert {
                    status_json: status.to_string(),
                },
                None => Change::Deleted,
            },
            object_json: self
                .status
                .as_ref()
                .and(self.whole.as_deref())
                .map(str::to_owned),
        }
    }
}

/// An [`ObjectRef`] the outbox can keep: shared as it is when it already is
/// an `Arc`, copied once otherwise.
pub trait IntoSharedRef {
    fn into_shared(self) -> Arc<ObjectRef>;
}

impl IntoSharedRef for Arc<ObjectRef> {
    fn into_shared(self) -> Arc<ObjectRef> {
        self
    }
}

impl IntoSharedRef for &Arc<ObjectRef> {
    fn into_shared(self) -> Arc<ObjectRef> {
        Arc::clone(self)
    }
}

impl IntoSharedRef for ObjectRef {
    fn into_shared(self) -> Arc<ObjectRef> {
        Arc::new(self)
    }
}

impl IntoSharedRef for &ObjectRef {
    fn into_shared(self) -> Arc<ObjectRef> {
        Arc::new(self.clone())
    }
}

/// Acknowledged deletions remembered for the next snapshot (the oldest are
/// forgotten first).
const RECENT_DELETIONS: usize = 10_000;

/// The latest known state of objects, with unacknowledged entries numbered.
#[derive(Debug)]
pub struct Outbox {
    /// Last recorded state per object (acked or not). Deleted objects leave
    /// once their deletion is acknowledged.
    objects: HashMap<ObjectKey, Entry>,
    /// Unacknowledged entries by sequence number; at most one per object.
    pending: BTreeMap<u64, ObjectKey>,
    last_seq: u64,
    acked: u64,
    /// Highest sequence handed to the current connection.
    sent: u64,
    limit: usize,
    overflowing: bool,
    metrics: Metrics,
    /// The last [`RECENT_DELETIONS`] acknowledged deletions. A hub acks a
    /// deletion once it is in its store, before it reaches KCP; a hub that
    /// dies in between and restarts learns of it only from the next
    /// snapshot, which therefore carries these too.
    recent_deletions: VecDeque<Entry>,
}

/// A complete picture of the synced objects, for a snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// Every existing object (`Upsert`), and every deletion the hub has not
    /// acknowledged (`Deleted`), in sequence order. The deletions matter to
    /// a hub that restarted meanwhile: it holds nothing for those objects
    /// and would not know to clear them upstream.
    pub deltas: Vec<Delta>,
    /// The sequence number the snapshot is complete up to.
    pub seq: u64,
}

/// A [`Snapshot`] whose deltas are built as they are read.
#[derive(Debug)]
pub struct SnapshotEntries {
    entries: Vec<Entry>,
    /// The sequence number the snapshot is complete up to.
    pub seq: u64,
}

impl SnapshotEntries {
    /// The snapshot's deltas, in sequence order.
    pub fn into_deltas(self) -> impl Iterator<Item = Delta> {
        self.entries.into_iter().map(|e| e.to_delta())
    }
}

impl Outbox {
    pub fn new(limit: usize, metrics: Metrics) -> Self {
        Self {
            objects: HashMap::new(),
            pending: BTreeMap::new(),
            last_seq: 0,
            acked: 0,
            sent: 0,
            limit,
            overflowing: false,
            metrics,
            recent_deletions: VecDeque::new(),
        }
    }

    /// Records that `object` exists with `status`. Returns the entry's
    /// sequence number, or `None` when nothing changed.
    pub fn upsert(
        &mut self,
        object: impl IntoSharedRef,
        status: ExtractedStatus,
        observed_at_ms: i64,
    ) -> Option<u64> {
        self.upsert_whole(object, status, None, observed_at_ms)
    }

    /// [`Self::upsert`] of an upsynced object, whose `whole` state (as KCP
    /// is to hold it) travels with its status; a change of either is a new
    /// entry.
    pub fn upsert_whole(
        &mut self,
        object: impl IntoSharedRef,
        status: ExtractedStatus,
        whole: Option<Arc<str>>,
        observed_at_ms: i64,
    ) -> Option<u64> {
        let object = object.into_shared();
        let key = ObjectKey(Arc::clone(&object));
        if let Some(last) = self.objects.get(&key)
            && last.status.as_deref() == Some(&*status.status_json)
            && last.generation == status.generation
            && last.observed_generation == status.observed_generation
            && last.object.uid == object.uid
            && last.whole == whole
        {
            return None;
        }
        Some(self.queue(
            key,
            Entry {
                seq: 0,
                object,
                generation: status.generation,
                observed_generation: status.observed_generation,
                observed_at_ms,
                status: Some(status.status_json),
                whole,
            },
        ))
    }

    /// Records that `object` no longer exists (or no longer maps upstream).
    /// Returns the entry's sequence number, or `None` when the outbox never
    /// recorded the object or already recorded its deletion.
    pub fn delete(&mut self, object: &ObjectRef, observed_at_ms: i64) -> Option<u64> {
        self.delete_shared(object.into_shared(), observed_at_ms)
    }

    /// [`Self::delete`] with a reference the caller already shares.
    pub fn delete_shared(
        &mut self,
        object: impl IntoSharedRef,
        observed_at_ms: i64,
    ) -> Option<u64> {
        let key = ObjectKey(object.into_shared());
        let last = self.objects.get(&key)?;
        if last.is_deleted() {
            return None;
        }
        let entry = Entry {
            seq: 0,
            object: Arc::clone(&last.object),
            generation: last.generation,
            observed_generation: last.observed_generation,
            observed_at_ms,
            status: None,
            whole: None,
        };
        Some(self.queue(key, entry))
    }

    fn queue(&mut self, key: ObjectKey, mut entry: Entry) -> u64 {
        self.last_seq += 1;
        entry.seq = self.last_seq;
        if let Some(previous) = self.objects.insert(key.clone(), entry) {
            // Coalesce: the object's older unacknowledged entry is superseded.
            self.pending.remove(&previous.seq);
        }
        if self.pending.len() >= self.limit {
            self.metrics.outbox_overflow.inc();
            if !self.overflowing {
                self.overflowing = true;
                tracing::warn!(
                    pending = self.pending.len(),
                    limit = self.limit,
                    "outbox over its limit: the hub is not acknowledging fast enough (entries are still kept, one per object)"
                );
            }
        }
        self.pending.insert(self.last_seq, key);
        self.update_gauges();
        self.last_seq
    }

    /// The hub stored everything up to and including `seq`.
    pub fn ack(&mut self, seq: u64) {
        let seq = seq.min(self.last_seq);
        if seq <= self.acked {
            return;
        }
        self.acked = seq;
        let rest = self.pending.split_off(&(seq + 1));
        let done = std::mem::replace(&mut self.pending, rest);
        for (entry_seq, key) in done {
            if let Some(d) = self.objects.get(&key)
                && d.seq == entry_seq
                && d.is_deleted()
                && let Some(deleted) = self.objects.remove(&key)
            {
                if self.recent_deletions.len() >= RECENT_DELETIONS {
                    self.recent_deletions.pop_front();
                }
                self.recent_deletions.push_back(deleted);
            }
        }
        if self.overflowing && self.pending.len() < self.limit {
            self.overflowing = false;
            tracing::info!(pending = self.pending.len(), "outbox back under its limit");
        }
        self.update_gauges();
    }

    /// A new connection resumes after `acked`: everything after it is sent
    /// again.
    pub fn resume(&mut self, acked: u64) {
        self.ack(acked);
        self.sent = self.acked;
    }

    /// Takes a snapshot of every existing object and every unacknowledged
    /// deletion (a deleted object stays in `objects` only until its deletion
    /// is acknowledged); everything queued so far counts as sent (the
    /// snapshot carries it).
    pub fn snapshot(&mut self) -> Snapshot {
        let entries = self.snapshot_entries();
        Snapshot {
            seq: entries.seq,
            deltas: entries.into_deltas().collect(),
        }
    }

    /// [`Self::snapshot`], its deltas built one at a time as they are read
    /// (the entries share their object and status with the outbox).
    pub fn snapshot_entries(&mut self) -> SnapshotEntries {
        let mut entries: Vec<Entry> = self.objects.values().cloned().collect();
        // Recent acknowledged deletions too, unless the object is back.
        entries.extend(
            self.recent_deletions
                .iter()
                .filter(|d| !self.objects.contains_key(&ObjectKey(Arc::clone(&d.object))))
                .cloned(),
        );
        entries.sort_by_key(|d| d.seq);
        self.sent = self.last_seq;
        SnapshotEntries {
            entries,
            seq: self.last_seq,
        }
    }

    /// Up to `max` entries not yet sent on this connection, oldest first.
    pub fn unsent(&self, max: usize) -> Vec<Delta> {
        self.pending
            .range(self.sent + 1..)
            .take(max)
            .filter_map(|(_, key)| self.objects.get(key).map(Entry::to_delta))
            .collect()
    }

    /// Whether any entry waits to be sent on this connection.
    pub fn has_unsent(&self) -> bool {
        self.pending.range(self.sent + 1..).next().is_some()
    }

    /// Entries up to `seq` were handed to the connection.
    pub fn mark_sent(&mut self, seq: u64) {
        self.sent = self.sent.max(seq);
    }

    /// Forgets the unacknowledged entry `seq` without sending it (the hub
    /// would refuse it). A deleted object is forgotten; an existing one keeps
    /// its state as the baseline, so only its next change is tried again.
    pub fn discard(&mut self, seq: u64) {
        if let Some(key) = self.pending.remove(&seq)
            && self.objects.get(&key).is_some_and(Entry::is_deleted)
        {
            self.objects.remove(&key);
        }
        self.update_gauges();
    }

    /// Unacknowledged entries.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Objects the outbox remembers.
    pub fn objects_len(&self) -> usize {
        self.objects.len()
    }

    /// The highest sequence number handed out.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// The highest sequence number the hub acknowledged.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    fn update_gauges(&self) {
        self.metrics
            .outbox_entries
            .set(gauge_value(self.pending.len()));
        self.metrics
            .outbox_objects
            .set(gauge_value(self.objects.len()));
    }
}

fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The outbox shared by the pipeline (which fills it) and the session (which
/// drains it), with a wake-up for the session when entries arrive.
#[derive(Debug, Clone)]
pub struct SharedOutbox {
    inner: Arc<Mutex<Outbox>>,
    changed: Arc<Notify>,
}

impl SharedOutbox {
    pub fn new(outbox: Outbox) -> Self {
        Self {
            inner: Arc::new(Mutex::new(outbox)),
            changed: Arc::new(Notify::new()),
        }
    }

    /// Locks the outbox. Callers never hold the lock across an `.await`.
    pub fn lock(&self) -> MutexGuard<'_, Outbox> {
        // A panic while holding the lock leaves a consistent outbox (every
        // method updates it before returning), so poisoning is ignored.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Wakes the session: entries were queued.
    pub fn notify(&self) {
        self.changed.notify_one();
    }

    /// Resolves after the next [`Self::notify`] (or at once if one happened
    /// since the last call).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn object(name: &str) -> ObjectRef {
        ObjectRef {
            group: "apps".into(),
            version: "v1".into(),
            resource: "deployments".into(),
            kind: "Deployment".into(),
            workspace: "root:org:team-a".into(),
            namespace: Some("default".into()),
            name: name.into(),
            uid: "uid-1".into(),
        }
    }

    fn status(json: &str, observed: i64) -> ExtractedStatus {
        ExtractedStatus {
            generation: Some(observed),
            observed_generation: Some(observed),
            status_json: json.into(),
        }
    }

    fn outbox(limit: usize) -> Outbox {
        Outbox::new(limit, Metrics::new())
    }

    fn unsent_seqs(o: &Outbox) -> Vec<(u64, String)> {
        o.unsent(100)
            .into_iter()
            .map(|d| (d.seq, d.object.name))
            .collect()
    }

    #[test]
    fn latest_state_wins_and_sequence_is_monotonic() {
        let mut o = outbox(10);
        assert_eq!(o.upsert(object("a"), status(r#"{"r":1}"#, 1), 0), Some(1));
        assert_eq!(o.upsert(object("b"), status(r#"{"r":1}"#, 1), 0), Some(2));
        assert_eq!(o.upsert(object("a"), status(r#"{"r":2}"#, 2), 0), Some(3));
        assert_eq!(o.pending_len(), 2);
        let unsent = o.unsent(10);
        assert_eq!(unsent.iter().map(|d| d.seq).collect::<Vec<_>>(), [2, 3]);
        assert_eq!(
            unsent[1].change,
            Change::Upsert {
                status_json: r#"{"r":2}"#.into()
            }
        );
    }

    #[test]
    fn unchanged_status_is_not_queued_even_after_ack() {
        let mut o = outbox(10);
        o.upsert(object("a"), status(r#"{"r":1}"#, 1), 0);
        assert_eq!(o.upsert(object("a"), status(r#"{"r":1}"#, 1), 99), None);
        o.ack(1);
        assert_eq!(o.pending_len(), 0);
        assert_eq!(o.upsert(object("a"), status(r#"{"r":1}"#, 1), 100), None);
        // A new generation with the same status text is a change.
        assert_eq!(o.upsert(object("a"), status(r#"{"r":1}"#, 2), 100), Some(2));
        // So is a recreated object (new uid).
        let mut recreated = object("a");
        recreated.uid = "uid-2".into();
        assert_eq!(o.upsert(recreated, status(r#"{"r":1}"#, 2), 100), Some(3));
    }

    #[test]
    fn cumulative_ack_removes_entries_up_to_seq() {
        let mut o = outbox(10);
        for name in ["a", "b", "c"] {
            o.upsert(object(name), status("{}", 1), 0);
        }
        o.ack(2);
        assert_eq!(o.pending_len(), 1);
        assert_eq!(o.acked(), 2);
        // Stale and duplicate acks change nothing; acks beyond last_seq are capped.
        o.ack(1);
        assert_eq!(o.acked(), 2);
        o.ack(1000);
        assert_eq!((o.acked(), o.pending_len()), (3, 0));
        assert_eq!(o.objects_len(), 3);
    }

    #[test]
    fn sent_but_unacked_entries_are_resent_after_reconnect() {
        let mut o = outbox(10);
        for name in ["a", "b", "c"] {
            o.upsert(object(name), status("{}", 1), 0);
        }
        assert_eq!(unsent_seqs(&o).len(), 3);
        o.mark_sent(3);
        assert!(!o.has_unsent());
        o.ack(1);
        // Connection lost; the hub says it holds up to 1.
        o.resume(1);
        assert_eq!(unsent_seqs(&o), [(2, "b".into()), (3, "c".into())]);
        // A hub that holds less than we know was acked cannot undo the ack.
        o.resume(0);
        assert_eq!(unsent_seqs(&o), [(2, "b".into()), (3, "c".into())]);
    }

    #[test]
    fn deleted_after_upsert_coalesces_to_deleted_and_leaves_on_ack() {
        let mut o = outbox(10);
        o.upsert(object("a"), status(r#"{"r":1}"#, 1), 0);
        assert_eq!(o.delete(&object("a"), 5), Some(2));
        let unsent = o.unsent(10);
        assert_eq!(unsent.len(), 1);
        assert_eq!(unsent[0].change, Change::Deleted);
        assert_eq!(unsent[0].observed_at_ms, 5);
        // Deleting again, or deleting an unknown object, queues nothing.
        assert_eq!(o.delete(&object("a"), 6), None);
        assert_eq!(o.delete(&object("never-seen"), 6), None);
        o.ack(2);
        assert_eq!((o.pending_len(), o.objects_len()), (0, 0));
    }

    #[test]
    fn snapshot_holds_existing_objects_and_covers_pending_entries() {
        let mut o = outbox(10);
        o.upsert(object("a"), status("{}", 1), 0);
        o.upsert(object("b"), status("{}", 1), 0);
        o.delete(&object("a"), 0);
        let snap = o.snapshot();
        assert_eq!(snap.seq, 3);
        assert_eq!(
            snap.deltas
                .iter()
                .map(|d| (d.object.name.as_str(), d.change == Change::Deleted))
                .collect::<Vec<_>>(),
            [("b", false), ("a", true)],
            "existing objects, then the unacknowledged deletion"
        );
        assert!(!o.has_unsent());
        // Changes after the snapshot are sent as deltas.
        o.upsert(object("c"), status("{}", 1), 0);
        assert_eq!(unsent_seqs(&o), [(4, "c".into())]);
        // The ack of the snapshot's seq settles the deletion.
        o.ack(3);
        assert_eq!(o.objects_len(), 2);
        // The next snapshot still names the acknowledged deletion (for a hub
        // that restarted before writing it), unless the object came back.
        let names = |snap: Snapshot| -> Vec<(String, bool)> {
            snap.deltas
                .iter()
                .map(|d| (d.object.name.clone(), d.change == Change::Deleted))
                .collect()
        };
        assert_eq!(
            names(o.snapshot()),
            [("b".into(), false), ("a".into(), true), ("c".into(), false)]
        );
        o.upsert(object("a"), status("{}", 2), 0);
        assert_eq!(
            names(o.snapshot()),
            [
                ("b".into(), false),
                ("c".into(), false),
                ("a".into(), false)
            ]
        );
    }

    #[test]
    fn over_the_limit_entries_are_admitted_and_counted() {
        let metrics = Metrics::new();
        let mut o = Outbox::new(2, metrics.clone());
        for name in ["a", "b", "c", "d"] {
            o.upsert(object(name), status("{}", 1), 0);
        }
        assert_eq!(o.pending_len(), 4);
        assert_eq!(metrics.outbox_overflow.get(), 2);
        assert_eq!(metrics.outbox_entries.get(), 4);
        // Coalescing an already queued object is still bounded by objects.
        o.upsert(object("a"), status("{\"x\":1}", 1), 0);
        assert_eq!(o.pending_len(), 4);
        o.ack(5);
        assert_eq!(metrics.outbox_entries.get(), 0);
    }

    #[test]
    fn discard_forgets_an_entry() {
        let mut o = outbox(10);
        o.upsert(object("a"), status("{}", 1), 0);
        o.discard(1);
        assert_eq!(o.pending_len(), 0);
        // The state stays as the baseline.
        assert_eq!(o.upsert(object("a"), status("{}", 1), 0), None);
    }
}
