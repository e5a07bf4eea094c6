//! Which objects a cluster's state change (Ready / Stale / Offline) sends
//! back to the writer: only those whose merge comes out differently under
//! the new state. A cluster turning Stale changes no merge (only Offline
//! does: the Offline policy and the `ClusterOffline` conflict), so a
//! flapping cluster with 100,000 objects no longer queues them all for
//! writing at every flap.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use super::{Aggregator, ClusterInfo, ClusterView, merge};
use crate::health::ClusterState;
use crate::store::{ClusterName, ObjectKey, Store};
use crate::writer::WriteQueue;

/// Objects merged between two yields to the runtime.
const CHUNK: usize = 1024;

/// Of `keys`, those whose merge differs between the clusters as `before`
/// and as `after` (status or conflicts).
pub fn changed_objects(
    aggregator: &Aggregator,
    store: &Store,
    keys: &[ObjectKey],
    before: &ClusterView,
    after: &ClusterView,
) -> Vec<ObjectKey> {
    let (policy, gates) = (&aggregator.policy, &aggregator.gates);
    keys.iter()
        .filter(|key| {
            let entries = store.entries(key);
            merge(key, &entries, before, policy, gates)
                != merge(key, &entries, after, policy, gates)
        })
        .cloned()
        .collect()
}

/// `view` with each of `states` in place of the cluster's state.
fn with_states(view: &ClusterView, states: &[(ClusterName, ClusterState)]) -> ClusterView {
    let mut view = view.clone();
    for (cluster, state) in states {
        let info = view.get(cluster);
        view.insert(
            cluster.clone(),
            ClusterInfo {
                state: *state,
                ..info
            },
        );
    }
    view
}

/// Re-queues, for each cluster whose state changed, its objects whose
/// merge changes with it (so the Offline policy and conflicts are
/// re-evaluated, and nothing else is written again). Checks every `every`
/// until `stop`.
pub async fn watch_cluster_states(
    aggregator: Arc<Aggregator>,
    store: Arc<Store>,
    queue: Arc<WriteQueue>,
    every: Duration,
    stop: CancellationToken,
) {
    let mut known = aggregator.states(SystemTime::now());
    let mut ticks = tokio::time::interval(every.max(Duration::from_millis(50)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let at = SystemTime::now();
        let now = aggregator.states(at);
        let changed: BTreeMap<&ClusterName, (ClusterState, ClusterState)> = now
            .iter()
            .filter_map(|(cluster, state)| {
                let before = *known.get(cluster)?;
                (before != *state).then_some((cluster, (before, *state)))
            })
            .collect();
        if !changed.is_empty() {
            let after = aggregator.cluster_view(at);
            let earlier: Vec<(ClusterName, ClusterState)> = changed
                .iter()
                .map(|(cluster, (before, _))| ((*cluster).clone(), *before))
                .collect();
            let before = with_states(&after, &earlier);
            for (cluster, (was, is)) in &changed {
                let keys = store.cluster_keys(cluster);
                let mut requeued = 0;
                for chunk in keys.chunks(CHUNK) {
                    for key in changed_objects(&aggregator, &store, chunk, &before, &after) {
                        queue.push(key, cluster);
                        requeued += 1;
                    }
                    tokio::task::yield_now().await;
                }
                let metrics = &aggregator.metrics;
                metrics
                    .cluster_state_changes
                    .with_label_values(&[is.name()])
                    .inc();
                metrics
                    .cluster_state_requeues
                    .with_label_values(&[is.name()])
                    .inc_by(requeued);
                tracing::info!(%cluster, before = was.name(), state = is.name(), objects = keys.len(), requeued, "cluster state changed; re-merged its objects");
            }
        }
        known = now;
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::aggregate::{FeatureGates, MergePolicy};
    use crate::health::Health;
    use crate::metrics::Metrics;
    use crate::store::{Entry, Update};

    fn update(name: &str, status: Value) -> Update {
        Update {
            key: ObjectKey::deployment(name),
            seq: 1,
            entry: Some(Entry {
                status: crate::status::Status::of(&status),
                generation: Some(1),
                observed_generation: Some(1),
                observed_at_ms: 0,
                seq: 1,
                uid: String::new(),
            }),
        }
    }

    fn view(c1: ClusterState) -> ClusterView {
        let ready = ClusterInfo::default();
        ClusterView::default()
            .with(
                "c1",
                ClusterInfo {
                    state: c1,
                    ..ready.clone()
                },
            )
            .with("c2", ready)
    }

    #[test]
    fn only_objects_whose_merge_changes_are_requeued() {
        let metrics = Arc::new(Metrics::new().unwrap_or_else(|e| panic!("metrics: {e}")));
        let queue = Arc::new(WriteQueue::new(metrics.clone()));
        let store = Store::new(queue, metrics.clone(), 100);
        let aggregator = Aggregator::new(
            MergePolicy::default(),
            FeatureGates::default(),
            Arc::new(Health::new(metrics.clone())),
            Duration::from_secs(10),
            Duration::from_secs(300),
            metrics,
        );
        let mine: Vec<Update> = (0..3)
            .map(|i| update(&format!("own-{i}"), json!({"readyReplicas": i})))
            .chain([update("shared", json!({"readyReplicas": 1}))])
            .collect();
        store.apply("c1", "s", mine, Vec::new()).ok();
        store
            .apply(
                "c2",
                "s",
                vec![update("shared", json!({"readyReplicas": 2}))],
                Vec::new(),
            )
            .ok();
        let mut keys = store.cluster_keys("c1");
        keys.sort();
        let changed =
            |from, to| changed_objects(&aggregator, &store, &keys, &view(from), &view(to)).len();
        use ClusterState::*;
        // No merge looks at Stale: nothing to write again.
        assert_eq!(changed(Ready, Stale), 0);
        assert_eq!(changed(Stale, Ready), 0);
        // Offline: c1's own objects get the ClusterOffline conflict, the
        // shared one loses c1's report. All four change, and back.
        assert_eq!(changed(Stale, Offline), 4);
        assert_eq!(changed(Offline, Ready), 4);
        assert_eq!(changed(Offline, Offline), 0);
    }
}
