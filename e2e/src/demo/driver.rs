//! Plays the part of the deployment controllers that the demo's clusters do
//! not have: every tick it moves each object along its [`Scene`] script and
//! writes the resulting status through the cluster's `/status` subresource.
//!
//! A rollout is a spec change: first in KCP (where it originates), then in the
//! cluster (what kcp's syncer would do), so the cluster's generation moves and
//! the status that follows observes it. The driver remembers what it last set
//! for every object ([`LastSet`]): that is what KCP must end up showing.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::api::{Patch, PatchParams};
use tokio_util::sync::CancellationToken;

use super::script::{Phase, Scene};
use super::status::StatusSummary;
use super::topology::DemoObject;

/// Objects after the first start their script this many ticks later, one
/// after another (cycling), so the table does not move in lockstep.
const STAGGER_TICKS: u64 = 2;
const STAGGER_GROUPS: u64 = 4;

/// What the driver last wrote to one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub phase: Phase,
    pub status: StatusSummary,
}

/// What the driver last set, per object (indexed like the topology's
/// objects); shared with the table.
#[derive(Debug, Clone, Default)]
pub struct LastSet(Arc<Mutex<Vec<Option<Applied>>>>);

impl LastSet {
    fn new(objects: usize) -> LastSet {
        LastSet(Arc::new(Mutex::new(vec![None; objects])))
    }

    /// What was last set on object `index`, if anything yet.
    pub fn get(&self, index: usize) -> Option<Applied> {
        let applied = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        applied.get(index).cloned().flatten()
    }

    fn set(&self, index: usize, value: Applied) {
        let mut applied = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = applied.get_mut(index) {
            *slot = Some(value);
        }
    }
}

/// A write the driver could not make; it retries on the next tick.
#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    #[error("changing the spec of {object} in {place}: {source}")]
    Spec {
        object: String,
        place: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("writing the status of {object} in {cluster}: {source}")]
    Status {
        object: String,
        cluster: String,
        #[source]
        source: kube::Error,
    },
}

/// One object the driver moves: its two copies and how far it got.
#[derive(Debug)]
pub struct DrivenObject {
    pub object: DemoObject,
    /// The object in its KCP workspace (where spec changes originate).
    pub upstream: Api<Deployment>,
    /// The object's copy in its cluster (where the status is written).
    pub downstream: Api<Deployment>,
}

/// Moves every object along the script.
#[derive(Debug)]
pub struct Driver {
    objects: Vec<Tracked>,
    last_set: LastSet,
}

#[derive(Debug)]
struct Tracked {
    driven: DrivenObject,
    /// The tick at which this object's script starts.
    delay: u64,
    /// The scene whose status was last written.
    applied: Option<Scene>,
    /// The rollouts whose spec change has landed in both places.
    rollouts_applied: u32,
    /// The cluster copy's generation after the last spec change.
    generation: Option<i64>,
}

impl Driver {
    pub fn new(objects: Vec<DrivenObject>) -> Driver {
        let last_set = LastSet::new(objects.len());
        let objects = objects
            .into_iter()
            .enumerate()
            .map(|(i, driven)| Tracked {
                driven,
                delay: (i as u64 % STAGGER_GROUPS) * STAGGER_TICKS,
                applied: None,
                rollouts_applied: 0,
                generation: None,
            })
            .collect();
        Driver { objects, last_set }
    }

    /// The shared record of what the driver last set.
    pub fn last_set(&self) -> LastSet {
        self.last_set.clone()
    }

    /// Ticks every `tick` until `stop` is cancelled. A failed write is logged
    /// and retried on the next tick; it never stops the other objects.
    pub async fn run(mut self, tick: Duration, stop: CancellationToken) {
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut count: u64 = 0;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = interval.tick() => {}
            }
            self.step(count).await;
            count += 1;
        }
    }

    /// Brings every object to its scene at `tick`.
    pub async fn step(&mut self, tick: u64) {
        for (index, tracked) in self.objects.iter_mut().enumerate() {
            let Some(own_tick) = tick.checked_sub(tracked.delay) else {
                continue;
            };
            let scene = Scene::at(own_tick);
            if tracked.applied == Some(scene) {
                continue;
            }
            match tracked.apply(scene).await {
                Ok(applied) => self.last_set.set(index, applied),
                Err(error) => tracing::warn!(%error, "driver write failed; retrying next tick"),
            }
        }
    }
}

impl Tracked {
    async fn apply(&mut self, scene: Scene) -> Result<Applied, DriveError> {
        let object = &self.driven.object;
        if scene.rollouts > self.rollouts_applied || self.generation.is_none() {
            let revision = scene.rollouts + 1;
            let patch = Patch::Merge(spec_patch(object, revision));
            let params = PatchParams::default();
            // KCP first: that is where a rollout originates.
            self.driven
                .upstream
                .patch(&object.name, &params, &patch)
                .await
                .map_err(|source| DriveError::Spec {
                    object: object.to_string(),
                    place: "KCP",
                    source,
                })?;
            let downstream = self
                .driven
                .downstream
                .patch(&object.name, &params, &patch)
                .await
                .map_err(|source| DriveError::Spec {
                    object: object.to_string(),
                    place: "its cluster",
                    source,
                })?;
            self.generation = Some(downstream.metadata.generation.unwrap_or(1));
            self.rollouts_applied = scene.rollouts;
        }
        let generation = self.generation.unwrap_or(1);
        // Kubernetes keeps times to the second.
        let now = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second())
            .unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        let status = scene.status(generation, now);
        let patch = Patch::Merge(serde_json::json!({ "status": status }));
        self.driven
            .downstream
            .patch_status(&object.name, &PatchParams::default(), &patch)
            .await
            .map_err(|source| DriveError::Status {
                object: object.to_string(),
                cluster: object.cluster.clone(),
                source,
            })?;
        tracing::debug!(%object, phase = scene.phase.label(), generation, "status set");
        self.applied = Some(scene);
        Ok(Applied {
            phase: scene.phase,
            status: StatusSummary::of(Some(&status)).unwrap_or_default(),
        })
    }
}

/// The spec change of a rollout: a new image tag per revision. Applying the
/// same revision twice changes nothing (and bumps no generation).
fn spec_patch(object: &DemoObject, revision: u32) -> serde_json::Value {
    serde_json::json!({
        "spec": { "template": { "spec": { "containers": [
            { "name": object.name, "image": image(&object.name, revision) }
        ] } } }
    })
}

/// The container image of `name` at `revision`.
pub fn image(name: &str, revision: u32) -> String {
    format!("registry.example/demo/{name}:v{revision}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_set_starts_empty_and_ignores_unknown_objects() {
        let last = LastSet::new(2);
        assert_eq!(last.get(0), None);
        let applied = Applied {
            phase: Phase::Steady,
            status: StatusSummary::default(),
        };
        last.set(1, applied.clone());
        last.set(7, applied.clone());
        assert_eq!(last.get(1), Some(applied));
        assert_eq!(last.get(7), None);
    }
}

/// The driver against real (embedded) API servers: what it writes is what
/// the cluster holds, and a rollout moves the generation in KCP and the cluster.
#[cfg(test)]
mod against_api_servers {
    use super::*;
    use crate::apiserver::{ApiServer, ApiServerConfig};
    use crate::demo::connections::Connections;
    use crate::demo::seed::{SYNCTARGET_WORKSPACE, seed};
    use crate::demo::topology::{Topology, WORKSPACES};

    async fn servers() -> (ApiServer, ApiServer, Connections) {
        let kcp = ApiServer::start(ApiServerConfig {
            workspaces: WORKSPACES.iter().map(|w| (*w).to_owned()).collect(),
            ..ApiServerConfig::default()
        })
        .await
        .unwrap_or_else(|e| panic!("KCP: {e}"));
        let cluster = ApiServer::start(ApiServerConfig::default())
            .await
            .unwrap_or_else(|e| panic!("cluster: {e}"));
        let mut connections = Connections::default();
        for workspace in WORKSPACES.into_iter().chain([SYNCTARGET_WORKSPACE]) {
            connections
                .add_workspace(workspace, &kcp.kubeconfig_yaml(Some(workspace)))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        connections
            .add_cluster("cluster-1", &cluster.kubeconfig_yaml(None))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        (kcp, cluster, connections)
    }

    fn apis(topology: &Topology, connections: &Connections) -> Vec<DrivenObject> {
        topology
            .objects
            .iter()
            .map(|object| DrivenObject {
                object: object.clone(),
                upstream: Api::namespaced(
                    connections
                        .workspace(&object.workspace)
                        .unwrap_or_else(|| unreachable!()),
                    &object.namespace,
                ),
                downstream: Api::namespaced(
                    connections
                        .cluster(&object.cluster)
                        .unwrap_or_else(|| unreachable!()),
                    &object.downstream_namespace(),
                ),
            })
            .collect()
    }

    #[tokio::test]
    async fn the_cluster_holds_what_the_driver_last_set_through_a_rollout_and_a_failure() {
        let (kcp, cluster, connections) = servers().await;
        let topology = Topology::new(1);
        seed(&topology, &connections)
            .await
            .unwrap_or_else(|e| panic!("seed: {e}"));
        // Seeding twice is harmless (the demo may retry).
        seed(&topology, &connections)
            .await
            .unwrap_or_else(|e| panic!("seed again: {e}"));

        let objects = apis(&topology, &connections);
        let copies: Vec<(Api<Deployment>, Api<Deployment>, String)> = objects
            .iter()
            .map(|d| {
                (
                    d.upstream.clone(),
                    d.downstream.clone(),
                    d.object.name.clone(),
                )
            })
            .collect();
        let mut driver = Driver::new(objects);
        let last_set = driver.last_set();
        let mut phases_seen = Vec::new();
        for tick in 0..20 {
            driver.step(tick).await;
            for (index, (_, downstream, name)) in copies.iter().enumerate() {
                let held = downstream
                    .get(name)
                    .await
                    .unwrap_or_else(|e| panic!("get {name}: {e}"));
                let set = last_set.get(index);
                assert_eq!(
                    StatusSummary::of(held.status.as_ref()),
                    set.as_ref().map(|a| a.status.clone()),
                    "tick {tick}, {name}"
                );
                if let Some(applied) = set {
                    phases_seen.push(applied.phase);
                }
            }
        }
        assert!(phases_seen.contains(&Phase::Failing), "{phases_seen:?}");

        // The first object rolled out once by tick 19: generation 2 on both
        // sides, observed in the cluster's status.
        let (upstream, downstream, name) = &copies[0];
        let down = downstream.get(name).await.unwrap_or_else(|e| panic!("{e}"));
        let up = upstream.get(name).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(down.metadata.generation, Some(2));
        assert_eq!(up.metadata.generation, Some(2));
        assert_eq!(
            down.status.as_ref().and_then(|s| s.observed_generation),
            Some(2)
        );
        let image = |d: &Deployment| {
            d.spec
                .as_ref()
                .and_then(|s| s.template.spec.as_ref())
                .and_then(|p| p.containers.first())
                .and_then(|c| c.image.clone())
        };
        assert_eq!(image(&down), Some(super::image(name, 2)));
        assert_eq!(image(&up), Some(super::image(name, 2)));
        // KCP's status is the hub's to write, never the driver's.
        assert_eq!(StatusSummary::of(up.status.as_ref()), None);

        kcp.shutdown().await;
        cluster.shutdown().await;
    }

    #[tokio::test]
    async fn downstream_namespaces_carry_the_locator() {
        let (kcp, cluster, connections) = servers().await;
        let topology = Topology::new(1);
        seed(&topology, &connections)
            .await
            .unwrap_or_else(|e| panic!("seed: {e}"));
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(
            connections
                .cluster("cluster-1")
                .unwrap_or_else(|| unreachable!()),
        );
        for object in &topology.objects {
            let ns = namespaces
                .get(&object.downstream_namespace())
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let locator = ns.metadata.annotations.and_then(|a| {
                a.get(super::super::topology::NAMESPACE_LOCATOR_ANNOTATION)
                    .cloned()
            });
            assert_eq!(locator, Some(object.namespace_locator()));
        }
        kcp.shutdown().await;
        cluster.shutdown().await;
    }
}
