//! Entries leaving the store because KCP says so: objects unplaced from a
//! cluster, and clusters whose SyncTarget was deleted.

use super::{Inner, ObjectKey, Store, charge, remove_entry, stored_cost};

impl Store {
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
}
