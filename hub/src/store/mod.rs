//! The hub's memory of what clusters report: for every upstream object, the
//! latest entry from each cluster that reports it.
//!
//! Sequence numbers make replays harmless: within one agent session they
//! strictly increase, so the store keeps, per cluster, the highest sequence it
//! has stored (its cumulative ack) and ignores anything at or below it. A new
//! session starts a new sequence space; its snapshot replaces everything the
//! cluster reported before.
//!
//! Every change that can alter an object's desired upstream status marks the
//! object dirty in the writer's queue; the writer reads the store back when it
//! writes (level-triggered), so the store never has to remember a history.
//!
//! The store keeps only reports of objects placed on their cluster
//! ([`crate::placement`] judges them first). A report the placement view
//! cannot judge yet is *held*: kept aside per cluster (counting against the
//! cluster's object limit and memory budget, latest per object), never
//! merged, until it is released into the entries or refused
//! ([`Store::recheck_held`], in `held`). An object unplaced from a
//! cluster loses that cluster's entry ([`Store::unplace`], in `unplace`).
//! `key` holds the vocabulary, `cost` what reports cost, `read` the
//! queries.
//!
//! Every report is counted as the bytes it takes ([`crate::budget`]): per
//! cluster and in total, published as gauges, and a report that would take
//! its cluster over a [`MemoryBudget`] is refused, nothing else.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::time::Instant;

use crate::budget::MemoryBudget;
use crate::metrics::Metrics;
use crate::writer::WriteQueue;

mod cost;
mod held;
mod key;
mod read;
mod shards;
#[cfg(test)]
mod tests;
mod unplace;

use cost::{charge, entry_cost, held_cost, stored_cost};
use held::Held;
pub use held::{HeldVerdict, RefusedHeld};
pub use key::{Applied, ClusterName, Entry, KeyParts, ObjectKey, Position, StoreError, Update};

/// The latest entry per object and cluster.
#[derive(Debug)]
pub struct Store {
    inner: Mutex<Inner>,
    queue: Arc<WriteQueue>,
    metrics: Arc<Metrics>,
    max_objects_per_cluster: u64,
    budget: MemoryBudget,
}

#[derive(Debug, Default)]
struct Inner {
    objects: HashMap<ObjectKey, BTreeMap<ClusterName, Entry>>,
    clusters: HashMap<ClusterName, ClusterEntries>,
    /// Bytes every cluster's reports take (the sum of their `bytes`).
    bytes: u64,
}

#[derive(Debug)]
struct ClusterEntries {
    position: Position,
    keys: HashSet<ObjectKey>,
    /// Reports not judged yet (see the module documentation).
    held: HashMap<ObjectKey, Held>,
    /// Bytes the entries and held reports take ([`report_cost`]).
    bytes: u64,
}

impl ClusterEntries {
    fn new(session: &str) -> Self {
        Self {
            position: Position {
                session: Arc::from(session),
                seq: 0,
            },
            keys: HashSet::new(),
            held: HashMap::new(),
            bytes: 0,
        }
    }
}

impl Store {
    pub fn new(
        queue: Arc<WriteQueue>,
        metrics: Arc<Metrics>,
        max_objects_per_cluster: u64,
    ) -> Self {
        Self {
            inner: Mutex::default(),
            queue,
            metrics,
            max_objects_per_cluster,
            budget: MemoryBudget::default(),
        }
    }

    /// The memory budget the store enforces.
    pub fn budget(&self) -> MemoryBudget {
        self.budget
    }

    /// The store with memory budget `budget` instead of the default one.
    pub fn with_budget(mut self, budget: MemoryBudget) -> Self {
        self.budget = budget;
        self
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The lock is never held across a panic-prone call that leaves the
        // maps half-updated, so a poisoned lock still guards consistent data.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// [`Store::ingest`] for callers that need only the ack (refusals are
    /// counted in the metrics all the same).
    pub fn apply(
        &self,
        cluster: &str,
        session: &str,
        accepted: Vec<Update>,
        held: Vec<Update>,
    ) -> Result<u64, StoreError> {
        self.ingest(cluster, session, accepted, held)
            .map(|applied| applied.seq)
    }

    /// Applies a batch of changes from `cluster`'s agent session `session`
    /// and returns the cluster's cumulative ack (the highest sequence number
    /// handled from this session) with the reports refused for a memory
    /// budget. `accepted` are reports of objects placed on the cluster;
    /// `held` those placement cannot judge yet.
    ///
    /// Changes at or below the stored sequence are replays and are ignored.
    /// When the batch would take the cluster over its object limit (entries
    /// and held reports together), nothing is applied.
    pub fn ingest(
        &self,
        cluster: &str,
        session: &str,
        mut accepted: Vec<Update>,
        held: Vec<Update>,
    ) -> Result<Applied, StoreError> {
        let mut inner = self.lock();
        let known = inner.clusters.len() + usize::from(!inner.clusters.contains_key(cluster));
        let Inner {
            objects,
            clusters,
            bytes: total,
        } = &mut *inner;
        let state = clusters
            .entry(cluster.to_owned())
            .or_insert_with(|| ClusterEntries::new(session));
        if &*state.position.session != session {
            // A new agent session without a snapshot (the hub restarted
            // meanwhile and lost nothing it needs): its sequence starts over.
            state.position = Position {
                session: Arc::from(session),
                seq: 0,
            };
        }
        let floor = state.position.seq;
        // Each report's key swapped for the handle the store holds: one
        // comparison of the strings per report, and every lookup below
        // compares pointers.
        for update in &mut accepted {
            if let Some(stored) = stored_key(objects, &update.key) {
                update.key = stored;
            }
        }

        // Objects this batch adds to the cluster: upserts of objects it has
        // no entry for, and any held report (deletions too) of an object
        // not held yet.
        let is_new = |u: &&Update| {
            u.seq > floor && !state.keys.contains(&u.key) && !state.held.contains_key(&u.key)
        };
        let new_keys: HashSet<&ObjectKey> = accepted
            .iter()
            .filter(|u| u.entry.is_some())
            .filter(is_new)
            .chain(held.iter().filter(is_new))
            .map(|u| &u.key)
            .collect();
        let objects_after = (state.keys.len() + state.held.len() + new_keys.len()) as u64;
        if objects_after > self.max_objects_per_cluster {
            return Err(StoreError::TooManyObjects {
                cluster: cluster.to_owned(),
                objects: objects_after,
                max: self.max_objects_per_cluster,
            });
        }

        let mut highest = floor;
        let now = Instant::now();
        let held_before = state.held.len();
        let mut refused = Vec::new();
        for update in held {
            if update.seq <= floor {
                continue;
            }
            highest = highest.max(update.seq);
            let from = state
                .held
                .get(&update.key)
                .map_or(0, |h| held_cost(&update.key, h.entry.as_ref()));
            let to = held_cost(&update.key, update.entry.as_ref());
            if let Err(over) = self.budget.admit(state.bytes, *total, known, from, to) {
                refused.push((update.key, update.seq, over.reason()));
                continue;
            }
            charge(total, &mut state.bytes, from, to);
            let since = state.held.get(&update.key).map_or(now, |h| h.since);
            state.held.insert(
                update.key,
                Held {
                    entry: update.entry,
                    seq: update.seq,
                    since,
                },
            );
        }
        for update in accepted {
            if update.seq <= floor {
                continue; // replayed or reordered: something newer is stored
            }
            highest = highest.max(update.seq);
            let key = update.key;
            let from = stored_cost(objects, &key, cluster)
                + state
                    .held
                    .get(&key)
                    .map_or(0, |h| held_cost(&key, h.entry.as_ref()));
            let to = update
                .entry
                .as_ref()
                .map_or(0, |entry| entry_cost(&key, entry));
            if let Err(over) = self.budget.admit(state.bytes, *total, known, from, to) {
                refused.push((key, update.seq, over.reason()));
                continue;
            }
            charge(total, &mut state.bytes, from, to);
            state.held.remove(&key);
            let changed = match update.entry {
                Some(entry) => {
                    if !state.keys.contains(&key) {
                        state.keys.insert(key.clone());
                    }
                    upsert_entry(objects, &key, cluster, entry)
                }
                None => {
                    state.keys.remove(&key);
                    remove_entry(objects, &key, cluster)
                }
            };
            if changed {
                self.queue.push(key, cluster);
            }
        }
        state.position.seq = highest;
        self.count_held(held_before, state.held.len());
        self.publish(cluster, state, *total, objects.len());
        self.log_refused(cluster, &refused);
        Ok(Applied {
            seq: highest,
            refused,
        })
    }

    /// The gauges of `cluster` (`state`) and of the whole store.
    fn publish(&self, cluster: &str, state: &ClusterEntries, total: u64, objects: usize) {
        let m = &self.metrics;
        m.store_objects.set(objects as i64);
        m.store_bytes.set(i64::try_from(total).unwrap_or(i64::MAX));
        m.store_cluster_bytes
            .with_label_values(&[cluster])
            .set(i64::try_from(state.bytes).unwrap_or(i64::MAX));
        m.store_cluster_objects
            .with_label_values(&[cluster])
            .set((state.keys.len() + state.held.len()) as i64);
    }

    /// Logs reports refused for a memory budget: one line per batch, not
    /// per report (the session counts each in `rejected_deltas`).
    fn log_refused(&self, cluster: &str, refused: &[RefusedHeld]) {
        let Some((key, seq, reason)) = refused.first() else {
            return;
        };
        tracing::warn!(cluster, object = %key, seq, reason, refused = refused.len(), cluster_budget = self.budget.cluster_bytes, total_budget = self.budget.total_bytes, "reports refused: over a memory budget");
    }

    /// Replaces everything `cluster` reported with a snapshot taken at `seq`
    /// in agent session `session`: `entries` of placed objects, `held`
    /// reports placement cannot judge yet; objects missing from both are
    /// dropped. All or nothing.
    pub fn replace_cluster(
        &self,
        cluster: &str,
        session: &str,
        entries: HashMap<ObjectKey, Entry>,
        held: HashMap<ObjectKey, Entry>,
        seq: u64,
    ) -> Result<Applied, StoreError> {
        self.replace_cluster_within(cluster, session, entries, held, seq, None)
    }

    /// [`Store::replace_cluster`] within a part of the objects: `within`
    /// says which (a snapshot of some shards, protocol version 4); the
    /// cluster's entries and held reports outside it stay as they are, and
    /// so does its position when the session is the same (it moves up to
    /// `seq` at least). `entries` and `held` must be within it.
    pub fn replace_cluster_within(
        &self,
        cluster: &str,
        session: &str,
        entries: HashMap<ObjectKey, Entry>,
        mut held: HashMap<ObjectKey, Entry>,
        seq: u64,
        within: Option<&dyn Fn(&ObjectKey) -> bool>,
    ) -> Result<Applied, StoreError> {
        let objects_count = (entries.len() + held.len()) as u64;
        if objects_count > self.max_objects_per_cluster {
            return Err(StoreError::TooManyObjects {
                cluster: cluster.to_owned(),
                objects: objects_count,
                max: self.max_objects_per_cluster,
            });
        }
        let mut entries = entries;
        let mut inner = self.lock();
        let known = inner.clusters.len() + usize::from(!inner.clusters.contains_key(cluster));
        let Inner {
            objects,
            clusters,
            bytes: total,
        } = &mut *inner;
        let highest = entries
            .values()
            .chain(held.values())
            .map(|e| e.seq)
            .fold(seq, u64::max);
        let old = clusters.remove(cluster);
        let old_held = old.as_ref().map_or(0, |state| state.held.len());
        let old_bytes = old.as_ref().map_or(0, |state| state.bytes);
        let mut state = ClusterEntries::new(session);
        let mut highest = highest;
        let old_keys = match (old, within) {
            (None, _) => HashSet::new(),
            (Some(old), None) => old.keys,
            (Some(old), Some(within)) => {
                // Outside the snapshot's part: kept, entries and held reports.
                if *old.position.session == *session {
                    highest = highest.max(old.position.seq);
                }
                let (inside, kept): (HashSet<_>, HashSet<_>) =
                    old.keys.into_iter().partition(|key| within(key));
                state.bytes = kept
                    .iter()
                    .map(|key| stored_cost(objects, key, cluster))
                    .sum();
                state.keys = kept;
                state.held = old
                    .held
                    .into_iter()
                    .filter(|(key, _)| !within(key))
                    .collect();
                state.bytes += state
                    .held
                    .iter()
                    .map(|(key, held)| held_cost(key, held.entry.as_ref()))
                    .sum::<u64>();
                inside
            }
        };
        // The snapshot replaces everything the cluster held (within its
        // part): admitted report by report against what it takes so far.
        *total = total.saturating_sub(old_bytes).saturating_add(state.bytes);
        let mut refused = Vec::new();
        let mut admit = |key: &ObjectKey, cost: u64, seq: u64, bytes: &mut u64| match self
            .budget
            .admit(*bytes, *total, known, 0, cost)
        {
            Ok(()) => {
                charge(total, bytes, 0, cost);
                true
            }
            Err(over) => {
                refused.push((key.clone(), seq, over.reason()));
                false
            }
        };
        entries
            .retain(|key, entry| admit(key, entry_cost(key, entry), entry.seq, &mut state.bytes));
        held.retain(|key, entry| admit(key, entry_cost(key, entry), entry.seq, &mut state.bytes));

        for gone in old_keys.iter().filter(|k| !entries.contains_key(*k)) {
            if remove_entry(objects, gone, cluster) {
                self.queue.push(gone.clone(), cluster);
            }
        }
        state.position.seq = highest;
        state.keys.reserve(entries.len());
        for (key, entry) in entries {
            if upsert_entry(objects, &key, cluster, entry) {
                self.queue.push(key.clone(), cluster);
            }
            state.keys.insert(key);
        }
        let now = Instant::now();
        state.held.extend(held.into_iter().map(|(key, entry)| {
            let seq = entry.seq;
            let held = Held {
                entry: Some(entry),
                seq,
                since: now,
            };
            (key, held)
        }));
        self.count_held(old_held, state.held.len());
        self.publish(cluster, &state, *total, objects.len());
        self.log_refused(cluster, &refused);
        clusters.insert(cluster.to_owned(), state);
        Ok(Applied {
            seq: highest,
            refused,
        })
    }

    /// Moves `cluster`'s position in agent session `session` up to `seq`
    /// without storing anything: deltas the hub refused count as delivered,
    /// so a resume continues after them instead of asking for them again.
    /// Returns the position (the cumulative ack); `seq` itself when the store
    /// holds no position for that session.
    pub fn advance(&self, cluster: &str, session: &str, seq: u64) -> u64 {
        let mut inner = self.lock();
        match inner.clusters.get_mut(cluster) {
            Some(state) if &*state.position.session == session => {
                state.position.seq = state.position.seq.max(seq);
                state.position.seq
            }
            _ => seq,
        }
    }
}

/// Stores `cluster`'s `entry` for `key`; whether the status changed. On the
/// ingest path, once per delta: the key and the cluster name are cloned only
/// the first time they are stored.
/// The handle of `key` the store already holds, if any.
fn stored_key(
    objects: &HashMap<ObjectKey, BTreeMap<ClusterName, Entry>>,
    key: &ObjectKey,
) -> Option<ObjectKey> {
    objects.get_key_value(key).map(|(stored, _)| stored.clone())
}

fn upsert_entry(
    objects: &mut HashMap<ObjectKey, BTreeMap<ClusterName, Entry>>,
    key: &ObjectKey,
    cluster: &str,
    entry: Entry,
) -> bool {
    let per_cluster = match objects.get_mut(key) {
        Some(per_cluster) => per_cluster,
        None => objects.entry(key.clone()).or_default(),
    };
    match per_cluster.get_mut(cluster) {
        Some(stored) => {
            let changed = stored.status != entry.status;
            *stored = entry;
            changed
        }
        None => {
            per_cluster.insert(cluster.to_owned(), entry);
            true
        }
    }
}

fn remove_entry(
    objects: &mut HashMap<ObjectKey, BTreeMap<ClusterName, Entry>>,
    key: &ObjectKey,
    cluster: &str,
) -> bool {
    let Some(per_cluster) = objects.get_mut(key) else {
        return false;
    };
    let removed = per_cluster.remove(cluster).is_some();
    if per_cluster.is_empty() {
        objects.remove(key);
    }
    removed
}
