//! What reports cost against the memory budgets ([`crate::budget`]), and
//! moving that count when a report comes, changes or goes.

use std::collections::{BTreeMap, HashMap};

use super::{ClusterName, Entry, ObjectKey};
use crate::budget::report_cost;

/// What `entry` of `key` costs against the budgets.
pub(super) fn entry_cost(key: &ObjectKey, entry: &Entry) -> u64 {
    report_cost(key, Some(&entry.status), &entry.uid)
}

/// What a held report of `key` costs against the budgets.
pub(super) fn held_cost(key: &ObjectKey, entry: Option<&Entry>) -> u64 {
    entry.map_or_else(|| report_cost(key, None, ""), |e| entry_cost(key, e))
}

/// What `cluster`'s stored entry of `key` costs (0 without one).
pub(super) fn stored_cost(
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
pub(super) fn charge(total: &mut u64, cluster: &mut u64, from: u64, to: u64) {
    *cluster = cluster.saturating_sub(from).saturating_add(to);
    *total = total.saturating_sub(from).saturating_add(to);
}
