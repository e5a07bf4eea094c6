//! Forgetting a cluster KCP no longer knows (its SyncTarget deleted): its
//! reports, its record and every metric series labelled with its name, so
//! that cluster names (label values from agents' certificates) do not
//! accumulate in the hub's memory or in `/metrics`.

use std::sync::Arc;

use crate::capacity::Capacity;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::store::Store;

/// What holds something per cluster.
#[derive(Debug)]
pub struct Forget {
    pub store: Arc<Store>,
    pub health: Arc<Health>,
    pub capacity: Arc<Capacity>,
    pub metrics: Arc<Metrics>,
}

impl Forget {
    /// Forgets everything of `cluster`. A session still open goes on (it
    /// may report nothing without a SyncTarget) and starts a new record.
    pub fn forget(&self, cluster: &str) {
        self.store.forget_cluster(cluster);
        self.health.forget(cluster);
        self.capacity.forget(cluster);
        let series = self.metrics.forget_cluster(cluster);
        tracing::info!(%cluster, series, outcome = "forgotten", "the cluster's SyncTarget was deleted; forgetting the cluster");
    }
}
