//! Creates the demo's workloads: each Deployment in its KCP workspace, and
//! its downstream copy (same name, same spec, no status) in a `kcp-<hash>`
//! namespace of its cluster whose locator annotation points back to the
//! workspace and namespace, as kcp's syncer would have left them.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{Container, Namespace, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::Api;
use kube::api::PostParams;

use super::connections::Connections;
use super::driver::image;
use super::topology::{DESIRED_REPLICAS, DemoObject, NAMESPACE_LOCATOR_ANNOTATION, Topology};

/// What failed while creating the demo's objects.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("no connection to {place}")]
    NotConnected { place: String },
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
            &deployment(object, &object.namespace),
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
