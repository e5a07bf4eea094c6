//! KCP's side of a benchmark fleet whose agents apply what KCP places on
//! their clusters (the downward lane): each cluster registered with KCP (a
//! SyncTarget), each Deployment created in KCP and placed on its cluster,
//! and nothing created in the clusters: the agents create the namespaces and
//! the objects when the hub sends them down.
//!
//! The downstream namespace is the agent's ([`NamespaceLocator`]): it hashes
//! the cluster's SyncTarget, uid included, so it is known only once KCP gave
//! the SyncTarget its uid.

use std::collections::BTreeMap;

use anyhow::Context as _;
use kube::Api;
use kube::api::{ApiResource, DynamicObject};
use kube::core::GroupVersionKind;
use uplink_agent::mapping::{NamespaceLocator, SyncTargetRef};

use crate::demo::connections::Connections;
use crate::demo::seed::{self, SYNCTARGET_WORKSPACE};
use crate::demo::topology::Topology;

/// Registers the clusters and creates every object of `topology` in KCP,
/// placed on its cluster. Returns each cluster's downstream namespace for
/// the objects' (workspace, namespace), which must be the same for all.
pub async fn seed_placed(
    topology: &Topology,
    connections: &Connections,
) -> anyhow::Result<BTreeMap<String, String>> {
    let root = connections
        .workspace(SYNCTARGET_WORKSPACE)
        .context("no client for the SyncTargets' workspace")?;
    seed::register_clusters(root.clone(), &topology.clusters).await?;
    let namespaces = topology.upstream_namespaces();
    let [(workspace, namespace)] = namespaces.as_slice() else {
        anyhow::bail!("the benchmark's objects must share one upstream namespace: {namespaces:?}");
    };
    let upstream = connections
        .workspace(workspace)
        .with_context(|| format!("no client for KCP workspace {workspace}"))?;
    seed::create(
        &Api::all(upstream.clone()),
        &seed::namespace_object(namespace, None),
        workspace,
    )
    .await?;
    let deployments = Api::namespaced(upstream, namespace);
    for object in &topology.objects {
        seed::create(&deployments, &seed::placed_deployment(object), workspace).await?;
    }

    let synctargets = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("workload.kcp.io", "v1alpha1", "SyncTarget"),
        "synctargets",
    );
    let api = Api::<DynamicObject>::all_with(root, &synctargets);
    let mut downstream = BTreeMap::new();
    for cluster in &topology.clusters {
        let synctarget = api
            .get(cluster)
            .await
            .with_context(|| format!("reading the SyncTarget of {cluster}"))?;
        let uid = synctarget
            .metadata
            .uid
            .with_context(|| format!("the SyncTarget of {cluster} has no uid"))?;
        let locator = NamespaceLocator {
            sync_target: SyncTargetRef {
                workspace: SYNCTARGET_WORKSPACE.to_owned(),
                name: cluster.clone(),
                uid,
            },
            workspace: workspace.clone(),
            namespace: namespace.clone(),
        };
        downstream.insert(cluster.clone(), locator.downstream_namespace());
    }
    Ok(downstream)
}
