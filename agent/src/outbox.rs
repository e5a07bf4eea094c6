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
//! - With a replicated hub (protocol version 4) every unacknowledged entry
//!   has a place: unrouted (no replica holds its workspace's shard; it
//!   waits), ready for the replica holding the shard ([`crate::routes`]), or
//!   in flight to the replica it was sent to. Acks are per replica: a
//!   replica's cumulative ack removes only entries in flight to it. When
//!   routes change, an entry in flight to a replica that no longer holds its
//!   shard while another does is made ready for the other (its snapshot of
//!   the shard, if it asked for one, covers it); one whose shard nobody
//!   holds stays in flight (its replica may still acknowledge it, or resume).
//!
//! `--outbox-limit` bounds the number of unacknowledged entries *reported as
//! healthy*: past it, each admitted entry increments
//! `uplink_agent_outbox_overflow_total` and the first one of a burst logs a
//! warning. Entries are still admitted (the newest state is the one the hub
//! needs, and dropping it would lose a status change), which keeps memory
//! bounded anyway: there is at most one entry per watched object.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;
use uplink_protocol::{Change, Delta, ObjectRef};

use crate::extract::ExtractedStatus;
use crate::metrics::Metrics;
use crate::routes::{Holding, ReplicaId, Routes, ShardSet};

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

/// Where an unacknowledged entry is on its way to a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// Its shard has no route: it waits (`uplink_agent_outbox_unrouted`).
    Unrouted,
    /// To be sent to the replica holding its shard.
    Ready(ReplicaId),
    /// Sent to this replica, not acknowledged by it yet; only its ack
    /// removes the entry.
    InFlight(ReplicaId),
}

#[derive(Debug)]
struct Pending {
    key: ObjectKey,
    place: Place,
}

/// The latest known state of objects, with unacknowledged entries numbered
/// and placed: waiting for a route, ready for a replica, or sent to one.
#[derive(Debug)]
pub struct Outbox {
    /// Last recorded state per object (acked or not). Deleted objects leave
    /// once their deletion is acknowledged.
    objects: HashMap<ObjectKey, Entry>,
    /// Unacknowledged entries by sequence number; at most one per object.
    pending: BTreeMap<u64, Pending>,
    /// `pending`, indexed by place.
    unrouted: BTreeSet<u64>,
    ready: HashMap<ReplicaId, BTreeSet<u64>>,
    in_flight: HashMap<ReplicaId, BTreeSet<u64>>,
    /// The highest sequence number each replica acknowledged.
    acked: HashMap<ReplicaId, u64>,
    /// The highest sequence number each replica may have recorded: sent
    /// to it, acknowledged by it, or the end of a snapshot it got. A hub
    /// skips what it receives at or below that as a replay, so an entry
    /// ready for a replica with a number not above it (numbered while it
    /// waited, or while it was another replica's) is numbered anew before
    /// it is sent: every replica sees strictly increasing numbers, which
    /// cumulative acks and resume rely on.
    seen_up_to: HashMap<ReplicaId, u64>,
    /// Which replica each shard goes to.
    routes: Routes,
    last_seq: u64,
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
        Self::with_routes(limit, metrics, Routes::new(""))
    }

    /// An outbox routing by `routes` (which names the cluster in its logs).
    pub fn with_routes(limit: usize, metrics: Metrics, routes: Routes) -> Self {
        Self {
            objects: HashMap::new(),
            pending: BTreeMap::new(),
            unrouted: BTreeSet::new(),
            ready: HashMap::new(),
            in_flight: HashMap::new(),
            acked: HashMap::new(),
            seen_up_to: HashMap::new(),
            routes,
            last_seq: 0,
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
            self.unplace(previous.seq);
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
        let place = match self.routes.route(&key.0.workspace) {
            Some(replica) => Place::Ready(replica),
            None => Place::Unrouted,
        };
        self.place(self.last_seq, Pending { key, place });
        self.update_gauges();
        self.last_seq
    }

    /// Puts a pending entry at `pending.place` (in `pending` and its index).
    fn place(&mut self, seq: u64, pending: Pending) {
        match pending.place {
            Place::Unrouted => {
                self.unrouted.insert(seq);
            }
            Place::Ready(replica) => {
                self.ready.entry(replica).or_default().insert(seq);
            }
            Place::InFlight(replica) => {
                self.in_flight.entry(replica).or_default().insert(seq);
            }
        }
        self.pending.insert(seq, pending);
    }

    /// Takes a pending entry out of `pending` and its index.
    fn unplace(&mut self, seq: u64) -> Option<Pending> {
        let pending = self.pending.remove(&seq)?;
        let index = match pending.place {
            Place::Unrouted => Some(&mut self.unrouted),
            Place::Ready(replica) => self.ready.get_mut(&replica),
            Place::InFlight(replica) => self.in_flight.get_mut(&replica),
        };
        if let Some(index) = index {
            index.remove(&seq);
        }
        Some(pending)
    }

    /// Moves a pending entry to `place`.
    fn move_to(&mut self, seq: u64, place: Place) {
        if let Some(mut pending) = self.unplace(seq) {
            pending.place = place;
            self.place(seq, pending);
        }
    }

    /// Where a pending entry at `place` of an object of `workspace` goes
    /// under the current routes: sent entries stay with their replica while
    /// it still holds the shard, or while nobody does (its ack may still
    /// come); anything else goes to the shard's holder, or waits.
    fn placed(&self, place: Place, workspace: &str) -> Place {
        let route = self.routes.route(workspace);
        match (place, route) {
            (Place::InFlight(sent_to), Some(holder)) if sent_to == holder => place,
            (Place::InFlight(_), None) => place,
            (_, Some(holder)) => Place::Ready(holder),
            (_, None) => Place::Unrouted,
        }
    }

    /// Places every pending entry again after the routes changed.
    fn reroute(&mut self) {
        let moves: Vec<(u64, Place)> = self
            .pending
            .iter()
            .filter_map(|(seq, p)| {
                let place = self.placed(p.place, &p.key.0.workspace);
                (place != p.place).then_some((*seq, place))
            })
            .collect();
        for (seq, place) in moves {
            self.move_to(seq, place);
        }
        self.update_gauges();
    }

    /// `replica` (named `name` in logs and metrics) holds `holding` now
    /// (its `Welcome` or a `Shards` frame): entries move to their shard's
    /// new holder. Whether any route changed.
    pub fn hold(&mut self, replica: ReplicaId, name: &Arc<str>, holding: &Holding) -> bool {
        let changed = self.routes.hold(replica, name, holding);
        if changed {
            self.reroute();
        }
        self.update_route_gauges();
        changed
    }

    /// `replica`'s session ended: it routes nothing. What it was sent stays
    /// in flight to it until another replica takes the shard (or it comes
    /// back and resumes).
    pub fn release(&mut self, replica: ReplicaId) -> bool {
        let name = self.routes.name(replica);
        let changed = self.routes.release(replica);
        if changed {
            self.reroute();
        }
        if let Some(name) = name {
            // It routes nothing now (the series leaves when the replica is
            // forgotten).
            self.metrics
                .routed_shards
                .with_label_values(&[&name])
                .set(0);
        }
        self.update_route_gauges();
        changed
    }

    /// `replica` is gone for good (its address vanished): it routes
    /// nothing and what was in flight to it goes elsewhere.
    pub fn forget(&mut self, replica: ReplicaId) {
        self.release(replica);
        self.acked.remove(&replica);
        self.seen_up_to.remove(&replica);
        let sent: Vec<u64> = self
            .in_flight
            .remove(&replica)
            .map(|set| set.into_iter().collect())
            .unwrap_or_default();
        for seq in sent {
            if let Some(p) = self.pending.get(&seq) {
                let place = match self.routes.route(&p.key.0.workspace) {
                    Some(holder) => Place::Ready(holder),
                    None => Place::Unrouted,
                };
                // Not in the removed index any more: placed afresh.
                if let Some(mut pending) = self.pending.remove(&seq) {
                    pending.place = place;
                    self.place(seq, pending);
                }
            }
        }
        self.ready.remove(&replica);
        self.update_gauges();
    }

    /// The routes entries follow.
    pub fn routes(&self) -> &Routes {
        &self.routes
    }

    /// `replica` stored everything it was sent up to and including `seq`.
    pub fn ack(&mut self, replica: ReplicaId, seq: u64) {
        let seq = seq.min(self.last_seq);
        let acked = self.acked.entry(replica).or_default();
        *acked = (*acked).max(seq);
        self.saw(replica, seq);
        let done: Vec<u64> = match self.in_flight.get_mut(&replica) {
            Some(sent) => {
                let rest = sent.split_off(&(seq + 1));
                std::mem::replace(sent, rest).into_iter().collect()
            }
            None => Vec::new(),
        };
        for entry_seq in done {
            let Some(Pending { key, .. }) = self.pending.remove(&entry_seq) else {
                continue;
            };
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

    /// A new connection to `replica` resumes after `acked`: what it was
    /// sent after that goes again.
    pub fn resume(&mut self, replica: ReplicaId, acked: u64) {
        self.ack(replica, acked);
        // The hub's position on this session is what it says it holds (at
        // least what it acknowledged before): what it was sent after that
        // goes again under its own numbers.
        let position = acked.max(self.acked(replica));
        self.seen_up_to.insert(replica, position);
        self.restart(replica);
    }

    /// A new connection to `replica` starts with a snapshot: what was in
    /// flight on the old one is acknowledged by nothing this one says, so
    /// it goes to its shard's holder again (this replica's snapshot covers
    /// the shards it holds).
    pub fn restart(&mut self, replica: ReplicaId) {
        let sent: Vec<u64> = self
            .in_flight
            .get(&replica)
            .map(|set| set.iter().copied().collect())
            .unwrap_or_default();
        for seq in sent {
            self.move_to(seq, Place::Ready(replica));
        }
        self.reroute();
    }

    /// Takes a snapshot for `replica` of every existing object of `shards`
    /// and every unacknowledged deletion of them (a deleted object stays in
    /// `objects` only until its deletion is acknowledged); every entry of
    /// those shards routed to `replica` (or to nobody) counts as sent to it
    /// (the snapshot carries it).
    pub fn snapshot_entries(&mut self, replica: ReplicaId, shards: &ShardSet) -> SnapshotEntries {
        let mut entries: Vec<Entry> = self
            .objects
            .values()
            .filter(|e| shards.contains(&e.object.workspace))
            .cloned()
            .collect();
        // Recent acknowledged deletions too, unless the object is back.
        entries.extend(
            self.recent_deletions
                .iter()
                .filter(|d| shards.contains(&d.object.workspace))
                .filter(|d| !self.objects.contains_key(&ObjectKey(Arc::clone(&d.object))))
                .cloned(),
        );
        entries.sort_by_key(|d| d.seq);
        let covered: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| shards.contains(&p.key.0.workspace))
            .filter(|(_, p)| {
                self.routes
                    .route(&p.key.0.workspace)
                    .is_none_or(|holder| holder == replica)
            })
            .map(|(seq, _)| *seq)
            .collect();
        for seq in covered {
            self.move_to(seq, Place::InFlight(replica));
        }
        // The snapshot's end carries `last_seq`: the hub's position jumps
        // there.
        self.saw(replica, self.last_seq);
        self.update_gauges();
        SnapshotEntries {
            entries,
            seq: self.last_seq,
        }
    }

    /// [`Self::snapshot_entries`] of everything, built at once.
    pub fn snapshot(&mut self, replica: ReplicaId) -> Snapshot {
        let entries = self.snapshot_entries(replica, &ShardSet::Everything);
        Snapshot {
            seq: entries.seq,
            deltas: entries.into_deltas().collect(),
        }
    }

    /// Up to `max` entries ready for `replica`, oldest first, each numbered
    /// above what `replica` may have recorded (see `seen_up_to`).
    pub fn unsent(&mut self, replica: ReplicaId, max: usize) -> Vec<Delta> {
        self.renumber_ready(replica);
        let Some(ready) = self.ready.get(&replica) else {
            return Vec::new();
        };
        ready
            .iter()
            .take(max)
            .filter_map(|seq| self.pending.get(seq))
            .filter_map(|p| self.objects.get(&p.key).map(Entry::to_delta))
            .collect()
    }

    /// Numbers anew the entries ready for `replica` whose number it may
    /// already have recorded, in their order.
    fn renumber_ready(&mut self, replica: ReplicaId) {
        let floor = self.seen_up_to.get(&replica).copied().unwrap_or_default();
        let stale: Vec<u64> = match self.ready.get(&replica) {
            Some(ready) => ready.range(..=floor).copied().collect(),
            None => return,
        };
        for old in stale {
            let Some(pending) = self.unplace(old) else {
                continue;
            };
            self.last_seq += 1;
            let new = self.last_seq;
            if let Some(entry) = self.objects.get_mut(&pending.key)
                && entry.seq == old
            {
                entry.seq = new;
            }
            self.place(new, pending);
        }
    }

    /// `replica` may have recorded everything up to `seq`.
    fn saw(&mut self, replica: ReplicaId, seq: u64) {
        let seen = self.seen_up_to.entry(replica).or_default();
        *seen = (*seen).max(seq);
    }

    /// Whether any entry is ready for `replica`.
    pub fn has_unsent(&self, replica: ReplicaId) -> bool {
        self.ready.get(&replica).is_some_and(|set| !set.is_empty())
    }

    /// The entries `seqs` were handed to `replica`'s connection (those still
    /// ready for it: one superseded or moved meanwhile is not).
    pub fn mark_sent(&mut self, replica: ReplicaId, seqs: impl IntoIterator<Item = u64>) {
        for seq in seqs {
            self.saw(replica, seq);
            if self
                .pending
                .get(&seq)
                .is_some_and(|p| p.place == Place::Ready(replica))
            {
                self.move_to(seq, Place::InFlight(replica));
            }
        }
    }

    /// Forgets the unacknowledged entry `seq` without sending it (the hub
    /// would refuse it). A deleted object is forgotten; an existing one keeps
    /// its state as the baseline, so only its next change is tried again.
    pub fn discard(&mut self, seq: u64) {
        if let Some(Pending { key, .. }) = self.unplace(seq)
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

    /// Unacknowledged entries whose shard has no route.
    pub fn unrouted_len(&self) -> usize {
        self.unrouted.len()
    }

    /// Objects the outbox remembers.
    pub fn objects_len(&self) -> usize {
        self.objects.len()
    }

    /// The highest sequence number handed out.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// The highest sequence number `replica` acknowledged.
    pub fn acked(&self, replica: ReplicaId) -> u64 {
        self.acked.get(&replica).copied().unwrap_or_default()
    }

    fn update_gauges(&self) {
        self.metrics
            .outbox_entries
            .set(gauge_value(self.pending.len()));
        self.metrics
            .outbox_objects
            .set(gauge_value(self.objects.len()));
        self.metrics
            .outbox_unrouted
            .set(gauge_value(self.unrouted.len()));
    }

    /// `uplink_agent_routed_shards` of every replica (a change of routes
    /// may take shards from one and give them to another).
    fn update_route_gauges(&self) {
        for (replica, name) in self.routes.replicas() {
            let shards = self.routes.routed_shards(replica).len();
            self.metrics
                .routed_shards
                .with_label_values(&[name])
                .set(gauge_value(shards));
        }
    }
}

fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The outbox shared by the pipeline (which fills it) and the sessions
/// (which drain it), with a wake-up for every session when entries arrive
/// or routes change.
#[derive(Debug, Clone)]
pub struct SharedOutbox {
    inner: Arc<Mutex<Outbox>>,
    changed: Arc<watch::Sender<()>>,
}

/// One session's view of [`SharedOutbox`]'s wake-ups.
#[derive(Debug)]
pub struct OutboxChanges(watch::Receiver<()>);

impl OutboxChanges {
    /// Resolves after the next [`SharedOutbox::notify`] (or at once if one
    /// happened since the last call).
    pub async fn changed(&mut self) {
        if self.0.changed().await.is_err() {
            // The outbox is gone: nothing will change again.
            std::future::pending::<()>().await;
        }
    }
}

impl SharedOutbox {
    pub fn new(outbox: Outbox) -> Self {
        Self {
            inner: Arc::new(Mutex::new(outbox)),
            changed: Arc::new(watch::Sender::new(())),
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

    /// Wakes every session: entries were queued, or routes changed.
    pub fn notify(&self) {
        self.changed.send_replace(());
    }

    /// The wake-ups, for one session.
    pub fn subscribe(&self) -> OutboxChanges {
        OutboxChanges(self.changed.subscribe())
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

    const H: ReplicaId = ReplicaId(0);

    fn outbox(limit: usize) -> Outbox {
        let mut o = Outbox::new(limit, Metrics::new());
        o.hold(H, &"hub".into(), &Holding::Everything);
        o
    }

    /// Hands every ready entry to `replica`'s connection.
    fn send_all(o: &mut Outbox, replica: ReplicaId) -> Vec<u64> {
        let seqs: Vec<u64> = o
            .unsent(replica, usize::MAX)
            .iter()
            .map(|d| d.seq)
            .collect();
        o.mark_sent(replica, seqs.clone());
        seqs
    }

    fn unsent_seqs(o: &mut Outbox) -> Vec<(u64, String)> {
        o.unsent(H, 100)
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
        let unsent = o.unsent(H, 10);
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
        send_all(&mut o, H);
        o.ack(H, 1);
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
        send_all(&mut o, H);
        o.ack(H, 2);
        assert_eq!(o.pending_len(), 1);
        assert_eq!(o.acked(H), 2);
        // Stale and duplicate acks change nothing; acks beyond last_seq are capped.
        o.ack(H, 1);
        assert_eq!(o.acked(H), 2);
        o.ack(H, 1000);
        assert_eq!((o.acked(H), o.pending_len()), (3, 0));
        assert_eq!(o.objects_len(), 3);
    }

    #[test]
    fn sent_but_unacked_entries_are_resent_after_reconnect() {
        let mut o = outbox(10);
        for name in ["a", "b", "c"] {
            o.upsert(object(name), status("{}", 1), 0);
        }
        assert_eq!(unsent_seqs(&mut o).len(), 3);
        send_all(&mut o, H);
        assert!(!o.has_unsent(H));
        o.ack(H, 1);
        // Connection lost; the hub says it holds up to 1.
        o.resume(H, 1);
        assert_eq!(unsent_seqs(&mut o), [(2, "b".into()), (3, "c".into())]);
        // A hub that holds less than we know was acked cannot undo the ack.
        o.resume(H, 0);
        assert_eq!(unsent_seqs(&mut o), [(2, "b".into()), (3, "c".into())]);
    }

    #[test]
    fn deleted_after_upsert_coalesces_to_deleted_and_leaves_on_ack() {
        let mut o = outbox(10);
        o.upsert(object("a"), status(r#"{"r":1}"#, 1), 0);
        assert_eq!(o.delete(&object("a"), 5), Some(2));
        let unsent = o.unsent(H, 10);
        assert_eq!(unsent.len(), 1);
        assert_eq!(unsent[0].change, Change::Deleted);
        assert_eq!(unsent[0].observed_at_ms, 5);
        // Deleting again, or deleting an unknown object, queues nothing.
        assert_eq!(o.delete(&object("a"), 6), None);
        assert_eq!(o.delete(&object("never-seen"), 6), None);
        send_all(&mut o, H);
        o.ack(H, 2);
        assert_eq!((o.pending_len(), o.objects_len()), (0, 0));
    }

    #[test]
    fn snapshot_holds_existing_objects_and_covers_pending_entries() {
        let mut o = outbox(10);
        o.upsert(object("a"), status("{}", 1), 0);
        o.upsert(object("b"), status("{}", 1), 0);
        o.delete(&object("a"), 0);
        let snap = o.snapshot(H);
        assert_eq!(snap.seq, 3);
        assert_eq!(
            snap.deltas
                .iter()
                .map(|d| (d.object.name.as_str(), d.change == Change::Deleted))
                .collect::<Vec<_>>(),
            [("b", false), ("a", true)],
            "existing objects, then the unacknowledged deletion"
        );
        assert!(!o.has_unsent(H));
        // Changes after the snapshot are sent as deltas.
        o.upsert(object("c"), status("{}", 1), 0);
        assert_eq!(unsent_seqs(&mut o), [(4, "c".into())]);
        // The ack of the snapshot's seq settles the deletion.
        o.ack(H, 3);
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
            names(o.snapshot(H)),
            [("b".into(), false), ("a".into(), true), ("c".into(), false)]
        );
        o.upsert(object("a"), status("{}", 2), 0);
        assert_eq!(
            names(o.snapshot(H)),
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
        o.hold(H, &"hub".into(), &Holding::Everything);
        for name in ["a", "b", "c", "d"] {
            o.upsert(object(name), status("{}", 1), 0);
        }
        assert_eq!(o.pending_len(), 4);
        assert_eq!(metrics.outbox_overflow.get(), 2);
        assert_eq!(metrics.outbox_entries.get(), 4);
        // Coalescing an already queued object is still bounded by objects.
        o.upsert(object("a"), status("{\"x\":1}", 1), 0);
        assert_eq!(o.pending_len(), 4);
        send_all(&mut o, H);
        o.ack(H, 5);
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

    fn object_in(workspace: &str, name: &str) -> ObjectRef {
        ObjectRef {
            workspace: workspace.into(),
            ..object(name)
        }
    }

    fn shards(count: u16, claims: &[(u16, u64)]) -> Holding {
        Holding::Shards(uplink_protocol::ShardsHeld {
            count,
            held: claims
                .iter()
                .map(|(shard, term)| uplink_protocol::ShardClaim {
                    shard: uplink_protocol::ShardId(*shard),
                    term: *term,
                })
                .collect(),
            snapshot: Vec::new(),
            heartbeat_interval_ms: None,
        })
    }

    /// A workspace of `shard` among 2.
    fn workspace_in(shard: u16) -> String {
        (0..)
            .map(|i| format!("root:ws-{i}"))
            .find(|ws| uplink_protocol::shard_of(ws, 2).0 == shard)
            .unwrap()
    }

    #[test]
    fn acks_remove_only_what_was_sent_to_the_replica_that_acks() {
        const A: ReplicaId = ReplicaId(1);
        const B: ReplicaId = ReplicaId(2);
        let metrics = Metrics::new();
        let mut o = Outbox::new(10, metrics.clone());
        o.hold(A, &"a".into(), &shards(2, &[(0, 1)]));
        o.upsert(object_in(&workspace_in(0), "zero"), status("{}", 1), 0);
        o.upsert(object_in(&workspace_in(1), "one"), status("{}", 1), 0);
        assert_eq!(send_all(&mut o, A), [1]);
        assert_eq!(o.unrouted_len(), 1);
        assert_eq!(metrics.outbox_unrouted.get(), 1);
        o.hold(B, &"b".into(), &shards(2, &[(1, 1)]));
        assert_eq!(o.unrouted_len(), 0);
        assert_eq!(send_all(&mut o, B), [2]);
        // A's ack past B's entry removes only A's.
        o.ack(A, 2);
        assert_eq!(o.pending_len(), 1);
        o.ack(B, 2);
        assert_eq!(o.pending_len(), 0);
    }

    #[test]
    fn a_moved_shard_sends_what_the_old_holder_did_not_acknowledge() {
        const A: ReplicaId = ReplicaId(1);
        const B: ReplicaId = ReplicaId(2);
        let mut o = Outbox::new(10, Metrics::new());
        o.hold(A, &"a".into(), &shards(2, &[(0, 1), (1, 1)]));
        o.upsert(object_in(&workspace_in(1), "one"), status("{}", 1), 0);
        assert_eq!(send_all(&mut o, A), [1]);
        // A's session ends: the entry stays in flight to A (its ack may
        // still come on resume) while nobody holds the shard...
        o.release(A);
        assert!(!o.has_unsent(A) && !o.has_unsent(B));
        // ...and goes to B once B holds it.
        o.hold(B, &"b".into(), &shards(2, &[(1, 2)]));
        assert_eq!(send_all(&mut o, B), [1]);
        o.ack(A, 1);
        assert_eq!(o.pending_len(), 1, "A's ack is not B's");
        // A snapshot for B of shard 1 covers a newer entry.
        o.upsert(
            object_in(&workspace_in(1), "one"),
            status("{\"x\":1}", 1),
            0,
        );
        let snap = o.snapshot_entries(
            B,
            &ShardSet::Shards {
                count: 2,
                shards: [1].into(),
            },
        );
        assert_eq!(snap.seq, 2);
        assert!(!o.has_unsent(B));
        o.ack(B, 2);
        assert_eq!(o.pending_len(), 0);
    }

    /// A replica that takes a shard over gets its snapshot, whose end
    /// carries the newest number; entries of its other shards still waiting
    /// behind have lower numbers, which the hub would skip as replays. They
    /// are numbered anew above the snapshot's end, and its ack removes them.
    #[test]
    fn what_waits_behind_a_snapshot_is_numbered_above_its_end() {
        const A: ReplicaId = ReplicaId(1);
        let mut o = Outbox::new(10, Metrics::new());
        o.hold(A, &"a".into(), &shards(2, &[(0, 1)]));
        o.upsert(object_in(&workspace_in(0), "zero"), status("{}", 1), 0);
        o.upsert(object_in(&workspace_in(1), "one"), status("{}", 1), 0);
        // A takes shard 1 and asks for its snapshot before entry 1 went out.
        o.hold(A, &"a".into(), &shards(2, &[(0, 1), (1, 2)]));
        let snap = o.snapshot_entries(
            A,
            &ShardSet::Shards {
                count: 2,
                shards: [1].into(),
            },
        );
        assert_eq!(snap.seq, 2);
        let sent = send_all(&mut o, A);
        assert_eq!(sent, [3], "numbered above the snapshot's end");
        o.ack(A, 3);
        assert_eq!(o.pending_len(), 0);
        // And an ack at or below what was acknowledged still removes what
        // was sent up to it.
        o.upsert(
            object_in(&workspace_in(0), "zero"),
            status("{\"x\":1}", 1),
            0,
        );
        assert_eq!(send_all(&mut o, A), [4]);
        o.ack(A, 4);
        o.ack(A, 4);
        assert_eq!(o.pending_len(), 0);
    }

    #[test]
    fn a_snapshot_of_some_shards_holds_only_their_objects() {
        let mut o = outbox(10);
        o.upsert(object_in(&workspace_in(0), "zero"), status("{}", 1), 0);
        o.upsert(object_in(&workspace_in(1), "one"), status("{}", 1), 0);
        let snap = o.snapshot_entries(
            H,
            &ShardSet::Shards {
                count: 2,
                shards: [1].into(),
            },
        );
        let names: Vec<String> = snap.into_deltas().map(|d| d.object.name).collect();
        assert_eq!(names, ["one"]);
        // The other shard's entry is still to be sent, numbered above the
        // snapshot's end (the hub's position jumps there).
        assert_eq!(unsent_seqs(&mut o), [(3, "zero".into())]);
    }
}
