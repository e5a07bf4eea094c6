//! Entries leaving the store because this replica no longer holds their
//! shard (issue 20): forgotten silently. Nothing is queued for the writer:
//! the shard's new holder writes its objects, from its own agents'
//! snapshots; a merge written here from what is left would be wrong, and
//! the writer may not write the shard anyway.

use super::{Inner, ObjectKey, Store, charge, held_cost, remove_entry, stored_cost};

impl Store {
    /// Forgets every cluster's entries and held reports of the objects
    /// `within` names, without queueing any write. Positions stay: a
    /// session resumes, and is asked for a snapshot of the shard should
    /// this replica take it back. Returns how many entries went.
    pub fn forget_within(&self, within: impl Fn(&ObjectKey) -> bool) -> usize {
        let mut inner = self.lock();
        let Inner {
            objects,
            clusters,
            bytes: total,
        } = &mut *inner;
        let mut forgotten = 0;
        for (cluster, state) in clusters.iter_mut() {
            let gone: Vec<ObjectKey> = state.keys.iter().filter(|k| within(k)).cloned().collect();
            for key in gone {
                let cost = stored_cost(objects, &key, cluster);
                state.keys.remove(&key);
                if remove_entry(objects, &key, cluster) {
                    forgotten += 1;
                }
                charge(total, &mut state.bytes, cost, 0);
            }
            let before = state.held.len();
            let held_bytes: u64 = state
                .held
                .iter()
                .filter(|(key, _)| within(key))
                .map(|(key, held)| held_cost(key, held.entry.as_ref()))
                .sum();
            state.held.retain(|key, _| !within(key));
            charge(total, &mut state.bytes, held_bytes, 0);
            self.count_held(before, state.held.len());
            self.publish(cluster, state, *total, objects.len());
        }
        forgotten
    }
}
