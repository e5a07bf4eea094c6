//! Creates what the demo starts from, in KCP only ([`prepare_kcp`]): each
//! cluster registered with KCP (a SyncTarget named like the cluster in
//! [`SYNCTARGET_WORKSPACE`]) and the workspaces' namespaces. The demo's
//! Deployments are created by its driver, placed on their cluster with
//! kcp's label `state.workload.kcp.io/<syncTargetKey>: Sync`
//! ([`placed_deployment`]); Uplink carries them down. [`downstream_namespace`]
//! is where the agent puts them: the agent's own mapping, fed with the
//! SyncTarget the hub names in its `Welcome`.
//!
//! [`seed`] is the status-only benchmarks' start (their agents run without
//! the downward lane): KCP as above with the Deployments, and a downstream
//! copy of each (same name, same spec, no status) made by hand in a
//! `kcp-<hash>` namespace whose locator annotation points back to the
//! workspace and namespace.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{Container, Namespace, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::api::{ApiResource, DynamicObject, PostParams};
use kube::core::GroupVersionKind;
use kube::{Api, Client};
use uplink_agent::mapping::{NamespaceLocator, SyncTargetRef};
pub use uplink_hub::placement::key::STATE_SYNC;
use uplink_hub::placement::key::{state_label, sync_target_key};

use super::connections::Connections;
use super::driver::image;
use super::topology::{DESIRED_REPLICAS, DemoObject, NAMESPACE_LOCATOR_ANNOTATION, Topology};

/// The KCP workspace holding the clusters' SyncTargets (the hub's default
/// `--synctarget-workspace`).
pub const SYNCTARGET_WORKSPACE: &str = "root";

/// The SyncTarget CRD Uplink ships for KCP.
const SYNCTARGET_CRD: &str = include_str!("../../../deploy/crds/synctargets.workload.kcp.io.yaml");

/// What failed while creating the demo's objects.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("no connection to {place}")]
    NotConnected { place: String },
    #[error("the SyncTarget CRD Uplink ships is not valid: {0}")]
    Crd(String),
    #[error("reading SyncTarget {cluster}: {source}")]
    SyncTarget {
        cluster: String,
        #[source]
        source: kube::Error,
    },
    #[error("SyncTarget {cluster} has no uid")]
    NoUid { cluster: String },
    #[error("creating {what} in {place}: {source}")]
    Create {
        what: String,
        place: String,
        #[source]
        source: kube::Error,
    },
}

/// The clusters' SyncTargets as the hub names them to the agents.
pub type SyncTargets = BTreeMap<String, SyncTargetRef>;

/// Registers every cluster of `topology` with KCP and creates the upstream
/// namespaces; returns the SyncTargets. What already exists is left as it is.
pub async fn prepare_kcp(
    topology: &Topology,
    connections: &Connections,
) -> Result<SyncTargets, SeedError> {
    let root = connections
        .workspace(SYNCTARGET_WORKSPACE)
        .ok_or_else(|| missing(SYNCTARGET_WORKSPACE))?;
    register_clusters(root.clone(), &topology.clusters).await?;
    for (workspace, namespace) in topology.upstream_namespaces() {
        let client = connections
            .workspace(&workspace)
            .ok_or_else(|| missing(&workspace))?;
        create(
            &Api::all(client),
            &namespace_object(&namespace, None),
            &workspace,
        )
        .await?;
    }
    sync_targets(root, &topology.clusters).await
}

/// Reads the SyncTargets of `clusters` (`root` is a client of
/// [`SYNCTARGET_WORKSPACE`]).
pub async fn sync_targets(root: Client, clusters: &[String]) -> Result<SyncTargets, SeedError> {
    let api = Api::<DynamicObject>::all_with(root, &synctarget_resource());
    let mut targets = SyncTargets::new();
    for cluster in clusters {
        let found = api
            .get(cluster)
            .await
            .map_err(|source| SeedError::SyncTarget {
                cluster: cluster.clone(),
                source,
            })?;
        let uid = found.metadata.uid.ok_or_else(|| SeedError::NoUid {
            cluster: cluster.clone(),
        })?;
        targets.insert(
            cluster.clone(),
            SyncTargetRef {
                workspace: SYNCTARGET_WORKSPACE.to_owned(),
                name: cluster.clone(),
                uid,
            },
        );
    }
    Ok(targets)
}

/// The namespace the agent of `object`'s cluster puts it in:
/// [`NamespaceLocator::downstream_namespace`] (kcp's
/// `PhysicalClusterNamespaceName`) of the locator naming the cluster's
/// SyncTarget and the object's workspace and namespace.
pub fn downstream_namespace(object: &DemoObject, sync_target: &SyncTargetRef) -> String {
    NamespaceLocator {
        sync_target: sync_target.clone(),
        workspace: object.workspace.clone(),
        namespace: object.namespace.clone(),
    }
    .downstream_namespace()
}

fn missing(place: &str) -> SeedError {
    SeedError::NotConnected {
        place: place.to_owned(),
    }
}

/// For the status-only benchmarks: [`prepare_kcp`], every Deployment of
/// `topology` placed in KCP, and its downstream copy made by hand (see the
/// module documentation). Objects that already exist are left as they are.
pub async fn seed(topology: &Topology, connections: &Connections) -> Result<(), SeedError> {
    prepare_kcp(topology, connections).await?;
    for object in &topology.objects {
        let upstream = connections
            .workspace(&object.workspace)
            .ok_or_else(|| missing(&object.workspace))?;
        create(
            &Api::namespaced(upstream, &object.namespace),
            &placed_deployment(object),
            &object.workspace,
        )
        .await?;

        let downstream = connections
            .cluster(&object.cluster)
            .ok_or_else(|| missing(&object.cluster))?;
        let namespace = object.downstream_namespace();
        let locator = BTreeMap::from([(
            NAMESPACE_LOCATOR_ANNOTATION.to_owned(),
            object.namespace_locator(),
        )]);
        create(
            &Api::all(downstream.clone()),
            &namespace_object(&namespace, Some(locator)),
            &object.cluster,
        )
        .await?;
        create(
            &Api::namespaced(downstream, &namespace),
            &deployment(object, &namespace),
            &object.cluster,
        )
        .await?;
    }
    Ok(())
}

/// Registers `clusters` with KCP as an operator would (`root` is a client
/// of [`SYNCTARGET_WORKSPACE`]): the SyncTarget CRD, then one SyncTarget
/// named like each cluster. KCP places workloads on SyncTargets; the hub
/// reads what each cluster may report from them.
pub async fn register_clusters(root: Client, clusters: &[String]) -> Result<(), SeedError> {
    let crd: DynamicObject =
        serde_saphyr::from_str(SYNCTARGET_CRD).map_err(|e| SeedError::Crd(e.to_string()))?;
    let crds = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
        "customresourcedefinitions",
    );
    create(
        &Api::all_with(root.clone(), &crds),
        &crd,
        SYNCTARGET_WORKSPACE,
    )
    .await?;
    let synctargets = synctarget_resource();
    let api = Api::<DynamicObject>::all_with(root, &synctargets);
    for cluster in clusters {
        let mut synctarget = DynamicObject::new(cluster, &synctargets);
        synctarget.data = serde_json::json!({ "spec": {} });
        // A CRD's API may take a moment to be served after it is created.
        let mut attempts = 0;
        loop {
            match create(&api, &synctarget, SYNCTARGET_WORKSPACE).await {
                Err(SeedError::Create {
                    source: kube::Error::Api(status),
                    ..
                }) if status.code == 404 && attempts < 50 => {
                    attempts += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                other => break other?,
            }
        }
    }
    Ok(())
}

fn synctarget_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("workload.kcp.io", "v1alpha1", "SyncTarget"),
        "synctargets",
    )
}

/// kcp's placement label of `cluster`'s SyncTarget (`state.workload.kcp.io/<key>`).
pub fn placement_label(cluster: &str) -> String {
    state_label(&sync_target_key(SYNCTARGET_WORKSPACE, cluster))
}

/// The demo Deployment `object` as KCP holds it: placed on its cluster.
pub fn placed_deployment(object: &DemoObject) -> Deployment {
    let mut deployment = deployment(object, &object.namespace);
    if let Some(labels) = &mut deployment.metadata.labels {
        labels.insert(placement_label(&object.cluster), STATE_SYNC.to_owned());
    }
    deployment
}

/// Creates `value`; an object that already exists counts as created.
pub async fn create<K>(api: &Api<K>, value: &K, place: &str) -> Result<(), SeedError>
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.create(&PostParams::default(), value).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(source) => Err(SeedError::Create {
            what: format!(
                "{} {}",
                std::any::type_name::<K>()
                    .rsplit("::")
                    .next()
                    .unwrap_or_default(),
                value.meta().name.as_deref().unwrap_or_default()
            ),
            place: place.to_owned(),
            source,
        }),
    }
}

pub fn namespace_object(name: &str, annotations: Option<BTreeMap<String, String>>) -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            annotations,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// The demo Deployment `object` in `namespace`, at revision 1, without status.
pub fn deployment(object: &DemoObject, namespace: &str) -> Deployment {
    let labels = BTreeMap::from([("app".to_owned(), object.name.clone())]);
    Deployment {
        metadata: ObjectMeta {
            name: Some(object.name.clone()),
            namespace: Some(namespace.to_owned()),
            labels: Some(labels.clone()),
            ..Default::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(DESIRED_REPLICAS),
            selector: LabelSelector {
                match_labels: Some(labels.clone()),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: object.name.clone(),
                        image: Some(image(&object.name, 1)),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    }
}
