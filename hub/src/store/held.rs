//! Held reports: what a cluster reported of objects placement cannot
//! judge yet, kept aside (never merged) until they are released into the
//! entries or refused.

use tokio::time::Instant;

use super::{
    ClusterName, Entry, Inner, ObjectKey, Store, charge, entry_cost, held_cost, stored_cost,
    upsert_entry,
};

/// A report kept aside until placement can judge it.
#[derive(Debug)]
pub(super) struct Held {
    /// The reported state; `None` for a deletion (kept so that it is
    /// judged, and refused or dropped, like any report).
    pub(super) entry: Option<Entry>,
    /// The report's sequence number.
    pub(super) seq: u64,
    /// When the first report of the object that is still held arrived.
    pub(super) since: Instant,
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

    pub(super) fn count_held(&self, before: usize, after: usize) {
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
}
