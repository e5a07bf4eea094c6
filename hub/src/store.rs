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
//! merged, until it is
//! released into the entries or refused ([`Store::recheck_held`]). An
//! object unplaced from a cluster loses that cluster's entry
//! ([`Store::unplace`]).
//!
//! Every report is counted as the bytes it takes ([`crate::budget`]): per
//! cluster and in total, published as gauges, and a report that would take
//! its cluster over a [`MemoryBudget`] is refused, nothing else.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::time::Instant;

use serde::Serialize;
use serde_json::Value;
use uplink_protocol::ObjectRef;

use crate::aggregate;
use crate::budget::{MemoryBudget, report_cost};
use crate::metrics::Metrics;
use crate::status::Status;
use crate::writer::WriteQueue;

/// A cluster's name, as its certificate proves it.
pub type ClusterName = String;

/// Names one upstream object: where it lives in KCP and what it is. The
/// downstream uid is not part of it (each cluster has its own).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ObjectKey {
    pub workspace: String,
    pub group: String,
    pub version: String,
    pub resource: String,
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

impl From<&ObjectRef> for ObjectKey {
    fn from(object: &ObjectRef) -> Self {
        Self {
            workspace: object.workspace.clone(),
            group: object.group.clone(),
            version: object.version.clone(),
            resource: object.resource.clone(),
            kind: object.kind.clone(),
            namespace: object.namespace.clone(),
            name: object.name.clone(),
        }
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        write!(f, "{}:{}/{}/", self.workspace, group, self.resource)?;
        if let Some(ns) = &self.namespace {
            write!(f, "{ns}/")?;
        }
        f.write_str(&self.name)
    }
}

/// What one cluster last reported about one object.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The object's `.status`, always a JSON object, as the agent's text.
    pub status: Status,
    pub generation: Option<i64>,
    pub observed_generation: Option<i64>,
    /// When the agent observed it (agent clock, ms since the Unix epoch).
    pub observed_at_ms: i64,
    /// The agent's sequence number of this report.
    pub seq: u64,
    /// The downstream object's uid.
    pub uid: String,
}

/// One change reported by a cluster: the object and its new entry, or `None`
/// when the object was deleted downstream.
#[derive(Debug, Clone)]
pub struct Update {
    pub key: ObjectKey,
    pub seq: u64,
    pub entry: Option<Entry>,
}

/// Where a cluster's stream stands: the agent session the store's entries
/// come from and the highest sequence number stored from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub session: Arc<str>,
    pub seq: u64,
}

/// What a batch or snapshot did: the cluster's cumulative ack, and the
/// reports refused for a memory budget (object, sequence number, reason),
/// to be told to the agent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Applied {
    pub seq: u64,
    pub refused: Vec<RefusedHeld>,
}

/// Why the store refused a change; nothing of it was applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("cluster {cluster} would report {objects} objects, more than the limit of {max}")]
    TooManyObjects {
        cluster: ClusterName,
        objects: u64,
        max: u64,
    },
}

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

/// What `entry` of `key` costs against the budgets.
fn entry_cost(key: &ObjectKey, entry: &Entry) -> u64 {
    report_cost(key, Some(&entry.status), &entry.uid)
}

/// What a held report of `key` costs against the budgets.
fn held_cost(key: &ObjectKey, entry: Option<&Entry>) -> u64 {
    entry.map_or_else(|| report_cost(key, None, ""), |e| entry_cost(key, e))
}

/// What `cluster`'s stored entry of `key` costs (0 without one).
fn stored_cost(
    objects: &HashMap<ObjectKey, BTreeMap<ClusterName, Entry>>,
    key: &ObjectKey,
    cluster: &str,
) -> u64 {
    objects
        .get(key)
        .and_then(|per_cluster| per_cluster.get(cluster))
        .map_or(0, |entry| entry_cost(key, entry))
}

/// Moves a cluster's and the total count of bytes from `from` to `to`.
fn charge(total: &mut u64, cluster: &mut u64, from: u64, to: u64) {
    *cluster = cluster.saturating_sub(from).saturating_add(to);
    *total = total.saturating_sub(from).saturating_add(to);
}

/// A report kept aside until placement can judge it.
#[derive(Debug)]
struct Held {
    /// The reported state; `None` for a deletion (kept so that it is
    /// judged, and refused or dropped, like any report).
    entry: Option<Entry>,
    /// The report's sequence number.
    seq: u64,
    /// When the first report of the object that is still held arrived.
    since: Instant,
}

/// What becomes of a held report when it is judged again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeldVerdict {
    /// The object is placed: the report joins the entries.
    Release,
    /// Still cannot tell.
    Keep,
    /// Refused, for this reason.
    Reject(&'static str),
}

/// A held report that was refused: the object, the report's sequence
/// number, the reason.
pub type RefusedHeld = (ObjectKey, u64, &'static str);

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
        accepted: Vec<Update>,
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
            let from = stored_cost(objects, &update.key, cluster)
                + state
                    .held
                    .get(&update.key)
                    .map_or(0, |h| held_cost(&update.key, h.entry.as_ref()));
            let to = update
                .entry
                .as_ref()
                .map_or(0, |entry| entry_cost(&update.key, entry));
            if let Err(over) = self.budget.admit(state.bytes, *total, known, from, to) {
                refused.push((update.key, update.seq, over.reason()));
                continue;
            }
            charge(total, &mut state.bytes, from, to);
            state.held.remove(&update.key);
            let changed = match update.entry {
                Some(entry) => {
                    if !state.keys.contains(&update.key) {
                        state.keys.insert(update.key.clone());
                    }
                    upsert_entry(objects, &update.key, cluster, entry)
                }
                None => {
                    state.keys.remove(&update.key);
                    remove_entry(objects, &update.key, cluster)
                }
            };
            if changed {
                self.queue.push(update.key, cluster);
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
        mut held: HashMap<ObjectKey, Entry>,
        seq: u64,
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
        let (old_keys, old_held, old_bytes) = clusters
            .remove(cluster)
            .map(|state| (state.keys, state.held.len(), state.bytes))
            .unwrap_or_default();
        // The snapshot replaces everything the cluster held: admitted
        // report by report against what the snapshot takes so far.
        *total = total.saturating_sub(old_bytes);
        let mut state = ClusterEntries::new(session);
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
        state.held = held
            .into_iter()
            .map(|(key, entry)| {
                let seq = entry.seq;
                let held = Held {
                    entry: Some(entry),
                    seq,
                    since: now,
                };
                (key, held)
            })
            .collect();
        self.count_held(old_held, state.held.len());
        self.publish(cluster, &state, *total, objects.len());
        self.log_refused(cluster, &refused);
        clusters.insert(cluster.to_owned(), state);
        Ok(Applied {
            seq: highest,
            refused,
        })
    }

    /// Drops `cluster`'s entries of `keys`: those objects are no longer
    /// placed on it. Each object is merged again from the other clusters.
    pub fn unplace(&self, cluster: &str, keys: &[ObjectKey]) {
        if keys.is_empty() {
            return;
        }
        let mut inner = self.lock();
        let Inner {
            objects,
            clusters,
            bytes: total,
        } = &mut *inner;
        let Some(state) = clusters.get_mut(cluster) else {
            return;
        };
        for key in keys {
            let cost = stored_cost(objects, key, cluster);
            if state.keys.remove(key) && remove_entry(objects, key, cluster) {
                charge(total, &mut state.bytes, cost, 0);
                self.queue.push(key.clone(), cluster);
            }
        }
        self.publish(cluster, state, *total, objects.len());
    }

    /// Forgets everything of `cluster` (its SyncTarget was deleted): its
    /// entries (each object merged again from the others), held reports and
    /// position (a later session sends a snapshot).
    pub fn forget_cluster(&self, cluster: &str) {
        let mut inner = self.lock();
        let Inner {
            objects,
            clusters,
            bytes: total,
        } = &mut *inner;
        let Some(state) = clusters.remove(cluster) else {
            return;
        };
        *total = total.saturating_sub(state.bytes);
        for key in state.keys {
            if remove_entry(objects, &key, cluster) {
                self.queue.push(key, cluster);
            }
        }
        self.count_held(state.held.len(), 0);
        self.metrics.store_objects.set(objects.len() as i64);
        self.metrics
            .store_bytes
            .set(i64::try_from(*total).unwrap_or(i64::MAX));
    }

    /// Judges `cluster`'s held reports again (only the one of `only`, when
    /// given): released ones join the entries, refused ones are dropped and
    /// returned.
    pub fn recheck_held(
        &self,
        cluster: &str,
        only: Option<&ObjectKey>,
        mut judge: impl FnMut(&ObjectKey, Instant) -> HeldVerdict,
    ) -> Vec<RefusedHeld> {
        let mut inner = self.lock();
        let Inner {
            objects,
            clusters,
            bytes: total,
        } = &mut *inner;
        let Some(state) = clusters.get_mut(cluster) else {
            return Vec::new();
        };
        if state.held.is_empty() {
            return Vec::new();
        }
        let verdicts: Vec<(ObjectKey, HeldVerdict)> = match only {
            Some(key) => state
                .held
                .get(key)
                .map(|held| (key.clone(), judge(key, held.since)))
                .into_iter()
                .collect(),
            None => state
                .held
                .iter()
                .map(|(key, held)| (key.clone(), judge(key, held.since)))
                .filter(|(_, verdict)| *verdict != HeldVerdict::Keep)
                .collect(),
        };
        let held_before = state.held.len();
        let mut refused = Vec::new();
        for (key, verdict) in verdicts {
            match verdict {
                HeldVerdict::Keep => {}
                HeldVerdict::Release => {
                    // A released deletion is of an object the cluster has no
                    // entry for (unplaced objects have none): nothing to do.
                    let Some(held) = state.held.remove(&key) else {
                        continue;
                    };
                    charge(
                        total,
                        &mut state.bytes,
                        held_cost(&key, held.entry.as_ref()),
                        0,
                    );
                    if let Some(entry) = held.entry {
                        let from = stored_cost(objects, &key, cluster);
                        charge(total, &mut state.bytes, from, entry_cost(&key, &entry));
                        state.keys.insert(key.clone());
                        if upsert_entry(objects, &key, cluster, entry) {
                            self.queue.push(key, cluster);
                        }
                    }
                }
                HeldVerdict::Reject(reason) => {
                    if let Some(held) = state.held.remove(&key) {
                        let cost = held_cost(&key, held.entry.as_ref());
                        charge(total, &mut state.bytes, cost, 0);
                        refused.push((key, held.seq, reason));
                    }
                }
            }
        }
        self.count_held(held_before, state.held.len());
        self.publish(cluster, state, *total, objects.len());
        refused
    }

    fn count_held(&self, before: usize, after: usize) {
        let delta =
            i64::try_from(after).unwrap_or(i64::MAX) - i64::try_from(before).unwrap_or(i64::MAX);
        self.metrics.held_reports.add(delta);
    }

    /// Clusters that have held reports.
    pub fn clusters_with_held(&self) -> Vec<ClusterName> {
        self.lock()
            .clusters
            .iter()
            .filter(|(_, state)| !state.held.is_empty())
            .map(|(cluster, _)| cluster.clone())
            .collect()
    }

    /// How many reports of `cluster` are held.
    pub fn held(&self, cluster: &str) -> usize {
        self.lock()
            .clusters
            .get(cluster)
            .map_or(0, |state| state.held.len())
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

    /// Where `cluster`'s stream stands, if the store holds anything from it.
    pub fn position(&self, cluster: &str) -> Option<Position> {
        self.lock()
            .clusters
            .get(cluster)
            .map(|state| state.position.clone())
    }

    /// Every cluster's entry for one object.
    pub fn entries(&self, key: &ObjectKey) -> BTreeMap<ClusterName, Entry> {
        self.lock().objects.get(key).cloned().unwrap_or_default()
    }

    /// The status the object would have upstream under the default merge
    /// policy with every cluster Ready (the writer merges with the
    /// configured policy and the clusters' real states: see
    /// [`aggregate::Aggregator`]).
    pub fn desired_status(&self, key: &ObjectKey) -> Option<Value> {
        let entries = self.entries(key);
        aggregate::merge(
            key,
            &entries,
            &aggregate::ClusterView::default(),
            &aggregate::MergePolicy::default(),
            &aggregate::FeatureGates::default(),
        )
        .status
    }

    /// The objects `cluster` reports, sorted.
    pub fn cluster_keys(&self, cluster: &str) -> Vec<ObjectKey> {
        let mut keys: Vec<ObjectKey> = self
            .lock()
            .clusters
            .get(cluster)
            .map(|state| state.keys.iter().cloned().collect())
            .unwrap_or_default();
        keys.sort();
        keys
    }

    /// Bytes `cluster`'s reports take, and every cluster's together
    /// ([`crate::budget`]).
    pub fn held_bytes(&self, cluster: &str) -> (u64, u64) {
        let inner = self.lock();
        let of_cluster = inner.clusters.get(cluster).map_or(0, |state| state.bytes);
        (of_cluster, inner.bytes)
    }

    /// How many objects `cluster` reports.
    pub fn cluster_objects(&self, cluster: &str) -> usize {
        self.lock()
            .clusters
            .get(cluster)
            .map_or(0, |state| state.keys.len())
    }

    /// How many objects the store holds.
    pub fn len(&self) -> usize {
        self.lock().objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first object (in no particular order) for which `matches` holds,
    /// with its entries. Looks up one object without copying the store.
    pub fn find(
        &self,
        matches: impl Fn(&ObjectKey) -> bool,
    ) -> Option<(ObjectKey, BTreeMap<ClusterName, Entry>)> {
        self.lock()
            .objects
            .iter()
            .find(|(key, _)| matches(key))
            .map(|(key, entries)| (key.clone(), entries.clone()))
    }

    /// One page of object keys in key order: the `limit` smallest after
    /// `after` (the hub API's lists page through the store this way).
    pub fn page_keys(
        &self,
        after: Option<&ObjectKey>,
        limit: usize,
    ) -> crate::page::Page<ObjectKey> {
        crate::page::select(self.lock().objects.keys(), after, limit)
    }

    /// Every object with its entries, sorted by key.
    pub fn objects(&self) -> Vec<(ObjectKey, BTreeMap<ClusterName, Entry>)> {
        let mut all: Vec<_> = self
            .lock()
            .objects
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

/// Removes `cluster`'s entry for `key`; true when there was one.
/// Stores `cluster`'s `entry` for `key`; whether the status changed. On the
/// ingest path, once per delta: the key and the cluster name are cloned only
/// the first time they are stored.
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use uplink_protocol::Rejected;

    fn key(name: &str) -> ObjectKey {
        ObjectKey {
            workspace: "root:org:team-a".into(),
            group: "apps".into(),
            version: "v1".into(),
            resource: "deployments".into(),
            kind: "Deployment".into(),
            namespace: Some("default".into()),
            name: name.into(),
        }
    }

    fn upsert(name: &str, seq: u64, status: Value) -> Update {
        Update {
            key: key(name),
            seq,
            entry: Some(entry(seq, status)),
        }
    }

    fn entry(seq: u64, status: Value) -> Entry {
        Entry {
            status: Status::of(&status),
            generation: Some(1),
            observed_generation: Some(1),
            observed_at_ms: 0,
            seq,
            uid: "uid".into(),
        }
    }

    fn deleted(name: &str, seq: u64) -> Update {
        Update {
            key: key(name),
            seq,
            entry: None,
        }
    }

    fn store(max: u64) -> (Store, Arc<WriteQueue>) {
        let metrics = Arc::new(Metrics::new().unwrap_or_else(|e| panic!("metrics: {e}")));
        let queue = Arc::new(WriteQueue::new(metrics.clone()));
        (Store::new(queue.clone(), metrics, max), queue)
    }

    #[test]
    fn replayed_batch_changes_nothing() {
        let (store, queue) = store(100);
        let batch = vec![
            upsert("a", 1, json!({"replicas": 1})),
            upsert("a", 2, json!({"replicas": 2})),
        ];
        assert_eq!(store.apply("c1", "s1", batch.clone(), vec![]), Ok(2));
        assert_eq!(queue.drain_ready(), vec![key("a")]);
        assert_eq!(store.apply("c1", "s1", batch, vec![]), Ok(2));
        assert!(
            queue.drain_ready().is_empty(),
            "a replay marks nothing dirty"
        );
        assert_eq!(
            store.desired_status(&key("a")),
            Some(json!({"replicas": 2}))
        );
    }

    #[test]
    fn older_delta_after_newer_is_ignored() {
        let (store, _queue) = store(100);
        store
            .apply(
                "c1",
                "s1",
                vec![upsert("a", 5, json!({"v": "new"}))],
                vec![],
            )
            .ok();
        store
            .apply(
                "c1",
                "s1",
                vec![upsert("a", 3, json!({"v": "old"}))],
                vec![],
            )
            .ok();
        assert_eq!(store.desired_status(&key("a")), Some(json!({"v": "new"})));
        // A replayed upsert older than a delete does not resurrect the object.
        store.apply("c1", "s1", vec![deleted("a", 6)], vec![]).ok();
        store
            .apply(
                "c1",
                "s1",
                vec![upsert("a", 4, json!({"v": "old"}))],
                vec![],
            )
            .ok();
        assert_eq!(store.desired_status(&key("a")), None);
        assert!(store.is_empty());
    }

    #[test]
    fn new_session_restarts_the_sequence() {
        let (store, _queue) = store(100);
        store
            .apply("c1", "s1", vec![upsert("a", 50, json!({"v": 1}))], vec![])
            .ok();
        assert_eq!(
            store.apply("c1", "s2", vec![upsert("a", 1, json!({"v": 2}))], vec![]),
            Ok(1)
        );
        assert_eq!(store.desired_status(&key("a")), Some(json!({"v": 2})));
        assert_eq!(store.position("c1").map(|p| p.seq), Some(1));
    }

    #[test]
    fn clusters_do_not_touch_each_other() {
        let (store, _queue) = store(100);
        store
            .apply(
                "c1",
                "s1",
                vec![upsert("a", 1, json!({"from": "c1"}))],
                vec![],
            )
            .ok();
        store
            .apply(
                "c2",
                "s9",
                vec![upsert("a", 1, json!({"from": "c2"}))],
                vec![],
            )
            .ok();
        store.apply("c2", "s9", vec![deleted("a", 2)], vec![]).ok();
        let entries = store.entries(&key("a"));
        assert_eq!(entries.keys().collect::<Vec<_>>(), vec!["c1"]);
    }

    #[test]
    fn snapshot_drops_missing_objects_and_marks_them_dirty() {
        let (store, queue) = store(100);
        store
            .apply(
                "c1",
                "s1",
                vec![upsert("a", 1, json!({})), upsert("b", 2, json!({}))],
                vec![],
            )
            .ok();
        queue.drain_ready();
        let snapshot = HashMap::from([
            (key("b"), entry(1, json!({}))),
            (key("c"), entry(2, json!({"x": 1}))),
        ]);
        assert_eq!(
            store
                .replace_cluster("c1", "s2", snapshot, HashMap::new(), 7)
                .map(|applied| applied.seq),
            Ok(7)
        );
        let mut dirty = queue.drain_ready();
        dirty.sort();
        assert_eq!(dirty, vec![key("a"), key("c")], "b is unchanged");
        assert_eq!(store.len(), 2);
        assert_eq!(store.entries(&key("a")).len(), 0);
        assert_eq!(
            store.position("c1"),
            Some(Position {
                session: Arc::from("s2"),
                seq: 7
            })
        );
    }

    #[test]
    fn object_limit_applies_all_or_nothing() {
        let (store, _queue) = store(2);
        assert!(
            store
                .apply(
                    "c1",
                    "s1",
                    vec![upsert("a", 1, json!({})), upsert("b", 2, json!({}))],
                    vec![]
                )
                .is_ok()
        );
        let err = store.apply(
            "c1",
            "s1",
            vec![upsert("a", 3, json!({"v": 1})), upsert("c", 4, json!({}))],
            vec![],
        );
        assert!(matches!(
            err,
            Err(StoreError::TooManyObjects { max: 2, .. })
        ));
        assert_eq!(
            store.desired_status(&key("a")),
            Some(json!({})),
            "nothing applied"
        );
        // Another cluster has its own budget.
        assert!(
            store
                .apply("c2", "s1", vec![upsert("c", 1, json!({}))], vec![])
                .is_ok()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn held_reports_are_never_merged_until_released() {
        let (store, queue) = store(2);
        assert_eq!(
            store.apply("c1", "s1", vec![], vec![upsert("a", 1, json!({"v": 1}))]),
            Ok(1)
        );
        assert_eq!(store.desired_status(&key("a")), None, "held is not merged");
        assert!(queue.drain_ready().is_empty(), "nothing to write yet");
        assert_eq!(store.held("c1"), 1);
        // A newer held report replaces the older one but keeps its age.
        tokio::time::advance(std::time::Duration::from_secs(5)).await;
        store
            .apply("c1", "s1", vec![], vec![upsert("a", 2, json!({"v": 2}))])
            .ok();
        let mut ages = Vec::new();
        store.recheck_held("c1", None, |_, since| {
            ages.push(since.elapsed());
            HeldVerdict::Keep
        });
        assert_eq!(ages, vec![std::time::Duration::from_secs(5)]);
        // Held reports count against the object limit.
        assert!(
            store
                .apply(
                    "c1",
                    "s1",
                    vec![upsert("b", 3, json!({})), upsert("c", 4, json!({}))],
                    vec![]
                )
                .is_err()
        );
        // Released: merged and written.
        let refused = store.recheck_held("c1", Some(&key("a")), |_, _| HeldVerdict::Release);
        assert!(refused.is_empty());
        assert_eq!(store.desired_status(&key("a")), Some(json!({"v": 2})));
        assert_eq!(queue.drain_ready(), vec![key("a")]);
        assert_eq!(store.held("c1"), 0);
    }

    #[test]
    fn refused_held_reports_are_dropped_and_returned() {
        let (store, queue) = store(10);
        store
            .apply("c1", "s1", vec![], vec![upsert("a", 7, json!({}))])
            .ok();
        let refused = store.recheck_held("c1", None, |_, _| HeldVerdict::Reject("not_placed"));
        assert_eq!(refused, vec![(key("a"), 7, "not_placed")]);
        assert_eq!(store.held("c1"), 0);
        assert!(store.is_empty());
        assert!(queue.drain_ready().is_empty());
        // A held deletion replaces the held report, and is judged (and
        // refused) like any report.
        store
            .apply("c1", "s1", vec![], vec![upsert("b", 8, json!({}))])
            .ok();
        store.apply("c1", "s1", vec![], vec![deleted("b", 9)]).ok();
        assert_eq!(store.held("c1"), 1);
        assert_eq!(store.position("c1").map(|p| p.seq), Some(9));
        let refused = store.recheck_held("c1", None, |_, _| HeldVerdict::Reject("not_placed"));
        assert_eq!(refused, vec![(key("b"), 9, "not_placed")]);
        // Released, a deletion of an object the cluster never reported
        // changes nothing.
        store.apply("c1", "s1", vec![], vec![deleted("c", 10)]).ok();
        store.recheck_held("c1", None, |_, _| HeldVerdict::Release);
        assert_eq!(store.held("c1"), 0);
        assert!(store.is_empty());
    }

    #[test]
    fn unplacing_drops_only_that_clusters_entry() {
        let (store, queue) = store(10);
        store
            .apply(
                "c1",
                "s1",
                vec![upsert("a", 1, json!({"from": "c1"}))],
                vec![],
            )
            .ok();
        store
            .apply(
                "c2",
                "s1",
                vec![upsert("a", 1, json!({"from": "c2"}))],
                vec![],
            )
            .ok();
        queue.drain_ready();
        store.unplace("c2", &[key("a")]);
        assert_eq!(
            store.entries(&key("a")).keys().collect::<Vec<_>>(),
            vec!["c1"]
        );
        assert_eq!(queue.drain_ready(), vec![key("a")], "merged again");
        assert!(store.cluster_keys("c2").is_empty());
    }

    #[test]
    fn a_batch_may_mix_accepted_and_held_in_any_seq_order() {
        let (store, _queue) = store(10);
        let acked = store.apply(
            "c1",
            "s1",
            vec![upsert("a", 2, json!({}))],
            vec![upsert("b", 1, json!({})), upsert("c", 3, json!({}))],
        );
        assert_eq!(acked, Ok(3));
        assert_eq!(
            store.held("c1"),
            2,
            "the lower seq of b was not taken for a replay"
        );
    }

    fn cost(name: &str, status: &Value) -> u64 {
        entry_cost(&key(name), &entry(0, status.clone()))
    }

    #[test]
    fn a_cluster_over_its_memory_budget_is_refused_alone() {
        let big = json!({"a": vec![0; 1000]});
        let budget = MemoryBudget {
            cluster_bytes: 3 * cost("a", &big),
            total_bytes: u64::MAX,
        };
        let (store, _queue) = store(100);
        let store = store.with_budget(budget);
        let batch = (1..=4)
            .map(|i| upsert(&format!("{i}"), i, big.clone()))
            .collect();
        let applied = store.ingest("c1", "s1", batch, vec![]);
        let applied = applied.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(applied.seq, 4, "refused reports are acked too");
        assert_eq!(
            applied.refused,
            vec![(key("4"), 4, Rejected::CLUSTER_MEMORY_BUDGET)]
        );
        assert_eq!(store.held_bytes("c1").0, 3 * cost("1", &big));
        // A report that grows is refused and the earlier one stays; one that
        // shrinks is taken, and then there is room again.
        let bigger = json!({"a": vec![0; 1001]});
        let applied = store.ingest("c1", "s1", vec![upsert("1", 5, bigger)], vec![]);
        assert_eq!(applied.map(|a| a.refused.len()), Ok(1));
        assert_eq!(store.desired_status(&key("1")), Some(big.clone()));
        let applied = store.ingest("c1", "s1", vec![upsert("1", 6, json!({}))], vec![]);
        assert_eq!(applied.map(|a| a.refused.len()), Ok(0));
        store.apply("c1", "s1", vec![deleted("2", 7)], vec![]).ok();
        let applied = store.ingest("c1", "s1", vec![upsert("4", 8, big.clone())], vec![]);
        assert_eq!(applied.map(|a| a.refused.len()), Ok(0));
        // A report placement cannot judge yet counts the same.
        let applied = store.ingest("c1", "s1", vec![], vec![upsert("h", 9, big.clone())]);
        assert_eq!(
            applied.map(|a| a.refused),
            Ok(vec![(key("h"), 9, Rejected::CLUSTER_MEMORY_BUDGET)])
        );
        assert_eq!(store.held("c1"), 0);
        // Another cluster has a budget of its own.
        let applied = store.ingest("c2", "s1", vec![upsert("1", 1, big.clone())], vec![]);
        assert_eq!(applied.map(|a| a.refused), Ok(vec![]));
        assert_eq!(store.entries(&key("1")).len(), 2);
    }

    #[test]
    fn the_total_budget_refuses_the_cluster_over_its_share() {
        let big = json!({"a": vec![0; 1000]});
        let one = cost("l1", &big);
        let budget = MemoryBudget {
            cluster_bytes: u64::MAX,
            total_bytes: 4 * one,
        };
        let (store, _queue) = store(100);
        let store = store.with_budget(budget);
        store.ingest("quiet", "s1", vec![], vec![]).ok();
        let batch = (1..=5)
            .map(|i| upsert(&format!("l{i}"), i, big.clone()))
            .collect();
        let applied = store.ingest("loud", "s1", batch, vec![]);
        let refused = applied.map(|a| a.refused.len());
        assert_eq!(refused, Ok(1), "the flood stops at the total budget");
        // The quiet cluster still gets its fair share (half the total).
        let batch = vec![upsert("q1", 1, big.clone()), upsert("q2", 2, big.clone())];
        let applied = store.ingest("quiet", "s1", batch, vec![]);
        assert_eq!(applied.map(|a| a.refused.len()), Ok(0));
        assert_eq!(store.held_bytes("quiet").0, 2 * one);
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_are_counted_back_to_zero_whatever_the_path() {
        let (store, _queue) = store(100);
        let status = json!({"replicas": 3});
        store
            .apply(
                "c1",
                "s1",
                vec![
                    upsert("a", 1, status.clone()),
                    upsert("b", 2, status.clone()),
                ],
                vec![upsert("c", 3, status.clone()), deleted("d", 4)],
            )
            .ok();
        let expected = cost("a", &status) * 3 + report_cost(&key("d"), None, "");
        assert_eq!(store.held_bytes("c1"), (expected, expected));
        // Replaced by a bigger report, released, refused, unplaced.
        store
            .apply(
                "c1",
                "s1",
                vec![upsert("a", 5, json!({"x": "long"}))],
                vec![],
            )
            .ok();
        store.recheck_held("c1", Some(&key("c")), |_, _| HeldVerdict::Release);
        store.recheck_held("c1", None, |_, _| HeldVerdict::Reject("not_placed"));
        store.unplace("c1", &[key("b")]);
        let left = cost("a", &json!({"x": "long"})) + cost("c", &status);
        assert_eq!(store.held_bytes("c1").0, left);
        // A snapshot replaces the count; deletions bring it to zero.
        let snapshot = HashMap::from([(key("e"), entry(9, status.clone()))]);
        store
            .replace_cluster("c1", "s2", snapshot, HashMap::new(), 9)
            .ok();
        assert_eq!(
            store.held_bytes("c1"),
            (cost("e", &status), cost("e", &status))
        );
        store.apply("c1", "s2", vec![deleted("e", 10)], vec![]).ok();
        assert_eq!(store.held_bytes("c1"), (0, 0));
    }

    #[test]
    fn a_forgotten_cluster_leaves_nothing_behind() {
        let (store, queue) = store(10);
        store
            .apply(
                "c1",
                "s1",
                vec![upsert("a", 1, json!({"v": 1}))],
                vec![upsert("b", 2, json!({}))],
            )
            .ok();
        store
            .apply("c2", "s1", vec![upsert("a", 1, json!({"v": 2}))], vec![])
            .ok();
        queue.drain_ready();
        let c2 = store.held_bytes("c2").0;
        store.forget_cluster("c1");
        assert_eq!(store.held_bytes("c1"), (0, c2));
        assert_eq!(store.position("c1"), None);
        assert_eq!(store.held("c1"), 0);
        assert_eq!(
            store.entries(&key("a")).keys().collect::<Vec<_>>(),
            vec!["c2"]
        );
        assert_eq!(queue.drain_ready(), vec![key("a")], "merged again");
    }
}
