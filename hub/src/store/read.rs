//! Reading the store back: positions, entries, desired statuses, and the
//! pages the hub API lists.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{ClusterName, Entry, ObjectKey, Position, Store};
use crate::aggregate;

impl Store {
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

    /// [`Store::page_keys`] of the objects `cluster` reports.
    pub fn cluster_page_keys(
        &self,
        cluster: &str,
        after: Option<&ObjectKey>,
        limit: usize,
    ) -> crate::page::Page<ObjectKey> {
        let inner = self.lock();
        match inner.clusters.get(cluster) {
            Some(state) => crate::page::select(state.keys.iter(), after, limit),
            None => crate::page::select(std::iter::empty(), after, limit),
        }
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
