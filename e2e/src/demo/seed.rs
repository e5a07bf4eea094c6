//! Creates the demo's workloads as KCP and its syncer would have left them:
//! each cluster registered with KCP (a SyncTarget named like the cluster in
//! [`SYNCTARGET_WORKSPACE`]), each Deployment in its KCP workspace placed on
//! its cluster (kcp's label `state.workload.kcp.io/<syncTargetKey>: Sync`),
//! and its downstream copy (same name, same spec, no status) in a
//! `kcp-<hash>` namespace of that cluster whose locator annotation points
//! back to the workspace and namespace.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{Container, Namespace, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::api::{ApiResource, DynamicObject, PostParams};
use kube::core::GroupVersionKind;
use kube::{Api, Client};
use uplink_hub::placement::key::{STATE_SYNC, state_label, sync_target_key};

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
    #[error("creating {what} in {place}: {source}")]
    Create {
        what: String,
        place: String,
        #[source]
        source: kube::Error,
    },
}

/// Creates every namespace and Deployment of `topology`. Objects that
/// already exist are left as they are.
pub async fn seed(topology: &Topology, connections: &Connections) -> Result<(), SeedError> {
    let missing = |place: &str| SeedError::NotConnected {
        place: place.to_owned(),
    };
    let root = connections
        .workspace(SYNCTARGET_WORKSPACE)
        .ok_or_else(|| missing(SYNCTARGET_WORKSPACE))?;
    register_clusters(root, &topology.clusters).await?;
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
    let synctargets = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("workload.kcp.io", "v1alpha1", "SyncTarget"),
        "synctargets",
    );
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
