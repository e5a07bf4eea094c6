//! The UID map: for every upsynced object KCP holds, its upstream uid and,
//! per upsyncing cluster (by SyncTarget key), the uid of that cluster's own
//! object, as the object's `downstream-uid.uplink.io/<key>` annotations
//! say. Kept in memory, updated after every write and rebuilt at start
//! from a list of each upsynced type, so that a cluster's snapshot can be
//! checked for objects it no longer has (deleted while the hub was away).
//! Publishes `uplink_hub_upsynced_objects{cluster}`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde_json::Value;
use uplink_protocol::resource::ResourceSpec;
use uplink_protocol::{ShardId, shard_of};

use super::merge::DOWNSTREAM_UID_PREFIX;
use crate::metrics::Metrics;
use crate::store::{ClusterName, ObjectKey};

/// Upstream and downstream uids of the upsynced objects.
#[derive(Debug)]
pub struct UidMap {
    inner: Mutex<Inner>,
    metrics: Arc<Metrics>,
}

#[derive(Debug, Default)]
struct Inner {
    objects: HashMap<ObjectKey, Record>,
    /// Objects per SyncTarget key.
    counts: HashMap<String, usize>,
    /// The cluster of each SyncTarget key seen (the gauge's label).
    names: HashMap<String, ClusterName>,
    rebuilt: bool,
    /// Snapshots that arrived before the map was rebuilt.
    pending: Vec<Pending>,
}

/// Which upsynced objects a snapshot speaks for: every one, or those in
/// some shards of the workspaces (a replica's snapshot of the shards it
/// took over says nothing of the others).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotScope {
    Everything,
    Shards {
        count: u16,
        shards: BTreeSet<ShardId>,
    },
}

impl SnapshotScope {
    /// Does the snapshot speak for objects of `workspace`?
    pub fn covers(&self, workspace: &str) -> bool {
        match self {
            SnapshotScope::Everything => true,
            SnapshotScope::Shards { count, shards } => {
                shards.contains(&shard_of(workspace, *count))
            }
        }
    }

    /// Does it speak for everything `other` speaks for?
    fn includes(&self, other: &SnapshotScope) -> bool {
        match (self, other) {
            (SnapshotScope::Everything, _) => true,
            (SnapshotScope::Shards { .. }, SnapshotScope::Everything) => false,
            (
                SnapshotScope::Shards { count, shards },
                SnapshotScope::Shards {
                    count: other_count,
                    shards: other_shards,
                },
            ) => count == other_count && other_shards.is_subset(shards),
        }
    }
}

/// A snapshot that arrived before the map was rebuilt.
#[derive(Debug)]
struct Pending {
    cluster: ClusterName,
    synctarget_key: String,
    /// The types it names every object of.
    types: Vec<ResourceSpec>,
    /// The objects it speaks for.
    scope: SnapshotScope,
    /// The objects it named.
    present: HashSet<ObjectKey>,
}

/// One upstream object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Record {
    uid: String,
    /// Downstream uid per SyncTarget key.
    downstream: BTreeMap<String, String>,
}

impl UidMap {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            inner: Mutex::default(),
            metrics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Never held across an await or a call that can panic midway.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records `object` (as KCP holds it) under `key`.
    pub fn set(&self, key: &ObjectKey, object: &Value) {
        let record = Record {
            uid: object
                .pointer("/metadata/uid")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            downstream: object
                .pointer("/metadata/annotations")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .filter_map(|(name, value)| {
                    let synctarget_key = name.strip_prefix(DOWNSTREAM_UID_PREFIX)?;
                    Some((synctarget_key.to_owned(), value.as_str()?.to_owned()))
                })
                .collect(),
        };
        let mut inner = self.lock();
        let before = if record.downstream.is_empty() {
            inner.objects.remove(key)
        } else {
            inner.objects.insert(key.clone(), record.clone())
        };
        self.recount(&mut inner, before.as_ref(), Some(&record));
    }

    /// Forgets `key` (deleted upstream).
    pub fn remove(&self, key: &ObjectKey) {
        let mut inner = self.lock();
        let before = inner.objects.remove(key);
        self.recount(&mut inner, before.as_ref(), None);
    }

    /// Whether `key` is an upsynced object (one the upsync writer created,
    /// wrote, or found marked when it rebuilt the map).
    pub fn contains(&self, key: &ObjectKey) -> bool {
        self.lock().objects.contains_key(key)
    }

    /// Whether the map was rebuilt from what KCP holds (before that it
    /// knows only what was written since the start).
    pub fn is_rebuilt(&self) -> bool {
        self.lock().rebuilt
    }

    /// The upstream uid of `key`, if the map knows it.
    pub fn upstream_uid(&self, key: &ObjectKey) -> Option<String> {
        self.lock().objects.get(key).map(|r| r.uid.clone())
    }

    /// The downstream uid `key` carries for the SyncTarget key.
    pub fn downstream_uid(&self, key: &ObjectKey, synctarget_key: &str) -> Option<String> {
        self.lock()
            .objects
            .get(key)
            .and_then(|r| r.downstream.get(synctarget_key).cloned())
    }

    /// Learns that the SyncTarget key is `cluster`'s (for the gauge).
    pub fn name(&self, synctarget_key: &str, cluster: &str) {
        let mut inner = self.lock();
        if inner
            .names
            .get(synctarget_key)
            .is_some_and(|c| c == cluster)
        {
            return;
        }
        inner
            .names
            .insert(synctarget_key.to_owned(), cluster.to_owned());
        let count = inner.counts.get(synctarget_key).copied().unwrap_or(0);
        self.publish(cluster, count);
    }

    /// The objects of `types` that `cluster` (SyncTarget key
    /// `synctarget_key`) upsyncs and that are not in `present` (its
    /// snapshot's), with their downstream uids; nothing yet when the map is
    /// not rebuilt (they follow the rebuild).
    pub fn snapshot(
        &self,
        cluster: &str,
        synctarget_key: &str,
        types: &[ResourceSpec],
        scope: &SnapshotScope,
        present: HashSet<ObjectKey>,
    ) -> Vec<(ObjectKey, String)> {
        let mut inner = self.lock();
        if !inner.rebuilt {
            inner
                .pending
                .retain(|p| p.cluster != cluster || !scope.includes(&p.scope));
            inner.pending.push(Pending {
                cluster: cluster.to_owned(),
                synctarget_key: synctarget_key.to_owned(),
                types: types.to_vec(),
                scope: scope.clone(),
                present,
            });
            return Vec::new();
        }
        missing(&inner, synctarget_key, types, scope, &present)
    }

    /// Replaces the map with what KCP holds (`objects`, each with its key)
    /// and the clusters' names (by SyncTarget key); returns the deletions
    /// the snapshots received meanwhile call for: (cluster, object,
    /// downstream uid).
    pub fn rebuilt(
        &self,
        objects: Vec<(ObjectKey, Value)>,
        names: HashMap<String, ClusterName>,
    ) -> Vec<(ClusterName, ObjectKey, String)> {
        {
            let mut inner = self.lock();
            inner.objects.clear();
            inner.counts.clear();
            inner.names.extend(names);
        }
        for (key, object) in &objects {
            self.set(key, object);
        }
        let mut inner = self.lock();
        inner.rebuilt = true;
        let names: Vec<(String, ClusterName)> = inner
            .names
            .iter()
            .map(|(k, c)| (k.clone(), c.clone()))
            .collect();
        for (synctarget_key, cluster) in names {
            let count = inner.counts.get(&synctarget_key).copied().unwrap_or(0);
            self.publish(&cluster, count);
        }
        let pending = std::mem::take(&mut inner.pending);
        pending
            .into_iter()
            .flat_map(|pending| {
                let cluster = pending.cluster;
                missing(
                    &inner,
                    &pending.synctarget_key,
                    &pending.types,
                    &pending.scope,
                    &pending.present,
                )
                .into_iter()
                .map(move |(key, uid)| (cluster.clone(), key, uid))
            })
            .collect()
    }

    /// How many objects the map holds.
    pub fn len(&self) -> usize {
        self.lock().objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn recount(&self, inner: &mut Inner, before: Option<&Record>, after: Option<&Record>) {
        let keys_before = before.into_iter().flat_map(|r| r.downstream.keys());
        let keys_after = after.into_iter().flat_map(|r| r.downstream.keys());
        let mut changed: Vec<String> = Vec::new();
        for key in keys_before {
            if let Some(count) = inner.counts.get_mut(key) {
                *count = count.saturating_sub(1);
            }
            changed.push(key.clone());
        }
        for key in keys_after {
            *inner.counts.entry(key.clone()).or_default() += 1;
            changed.push(key.clone());
        }
        for key in changed {
            if let Some(cluster) = inner.names.get(&key) {
                let count = inner.counts.get(&key).copied().unwrap_or(0);
                self.publish(cluster, count);
            }
        }
    }

    fn publish(&self, cluster: &str, count: usize) {
        self.metrics
            .upsynced_objects
            .with_label_values(&[cluster])
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }
}

/// The objects of `types` the SyncTarget key upsyncs that are not in
/// `present`.
fn missing(
    inner: &Inner,
    synctarget_key: &str,
    types: &[ResourceSpec],
    scope: &SnapshotScope,
    present: &HashSet<ObjectKey>,
) -> Vec<(ObjectKey, String)> {
    inner
        .objects
        .iter()
        .filter(|(key, _)| scope.covers(&key.workspace))
        .filter(|(key, _)| {
            types
                .iter()
                .any(|t| t.group == key.group && t.resource == key.resource)
        })
        .filter(|(key, _)| !present.contains(*key))
        .filter_map(|(key, record)| {
            Some((key.clone(), record.downstream.get(synctarget_key)?.clone()))
        })
        .collect()
}
