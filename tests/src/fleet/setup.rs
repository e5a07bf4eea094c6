//! Fleet options for fault and health scenarios: hub settings (heartbeats,
//! offline grace, SyncTargets, throttling) and the SyncTarget CRD in KCP.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow};
use kube::Api;
use kube::api::{ApiResource, DynamicObject, PostParams};
use kube::core::GroupVersionKind;
use serde_json::Value;
use uplink_agent::mapping::{NamespaceLocator, SyncTargetRef};
use uplink_e2e::apiserver::ApiServer;
use uplink_hub::HubConfig;

use super::{Fleet, FleetBuilder, downstream_namespace};
use crate::apiserver::client_for;

/// The SyncTarget CRD Uplink ships.
const SYNCTARGET_CRD: &str = include_str!("../../../deploy/crds/synctargets.workload.kcp.io.yaml");

/// A change to the hub's configuration before it starts.
#[derive(Clone)]
pub struct HubTweak(Arc<dyn Fn(&mut HubConfig) + Send + Sync>);

impl HubTweak {
    pub fn new(f: impl Fn(&mut HubConfig) + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    pub fn apply(&self, config: &mut HubConfig) {
        (self.0)(config);
    }
}

impl fmt::Debug for HubTweak {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HubTweak(..)")
    }
}

impl FleetBuilder {
    /// Changes the hub's configuration (after the fleet's own settings).
    pub fn hub_config(mut self, f: impl Fn(&mut HubConfig) + Send + Sync + 'static) -> Self {
        self.hub_tweaks.push(HubTweak::new(f));
        self
    }

    /// Silence after which the hub calls a cluster Offline.
    pub fn offline_grace(self, grace: Duration) -> Self {
        self.hub_config(move |c| c.offline_grace = grace)
    }

    /// Keeps the clusters' SyncTargets in KCP workspace `workspace` (the
    /// CRD and one SyncTarget per cluster are created before the hub
    /// starts), and has the hub refresh their `lastSyncerHeartbeatTime` at
    /// least every `heartbeat_period`.
    pub fn synctargets(mut self, workspace: &str, heartbeat_period: Duration) -> Self {
        self.synctarget_workspace = workspace.to_owned();
        self.hub_config(move |c| {
            c.synctarget_heartbeat_period = heartbeat_period;
        })
    }
}

/// Creates the SyncTarget CRD in `workspace` of `kcp`.
pub async fn install_synctarget_crd(kcp: &ApiServer, workspace: &str) -> Result<()> {
    let crd: Value =
        serde_saphyr::from_str(SYNCTARGET_CRD).context("parsing the SyncTarget CRD")?;
    let client = client_for(kcp, Some(workspace)).await?;
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
        "customresourcedefinitions",
    );
    let crd: DynamicObject = serde_json::from_value(crd).context("the SyncTarget CRD")?;
    Api::<DynamicObject>::all_with(client, &resource)
        .create(&PostParams::default(), &crd)
        .await
        .with_context(|| format!("creating the SyncTarget CRD in KCP workspace {workspace}"))?;
    Ok(())
}

/// Creates cluster `name`'s SyncTarget in `workspace` of `kcp`, as an
/// operator registering the cluster with KCP would; returns its uid.
pub async fn create_synctarget(kcp: &ApiServer, workspace: &str, name: &str) -> Result<String> {
    let client = client_for(kcp, Some(workspace)).await?;
    let synctarget: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "workload.kcp.io/v1alpha1",
        "kind": "SyncTarget",
        "metadata": { "name": name },
        "spec": {},
    }))
    .context("a SyncTarget")?;
    let created = Api::<DynamicObject>::all_with(client, &synctarget_resource())
        .create(&PostParams::default(), &synctarget)
        .await
        .with_context(|| format!("creating SyncTarget {name} in KCP workspace {workspace}"))?;
    created
        .metadata
        .uid
        .ok_or_else(|| anyhow!("SyncTarget {name} in {workspace} was created without a uid"))
}

fn synctarget_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("workload.kcp.io", "v1alpha1", "SyncTarget"),
        "synctargets",
    )
}

impl Fleet {
    /// Cluster `cluster`'s SyncTarget as kcp's namespace locator names it:
    /// the one the fleet created at start (a SyncTarget created again later
    /// gets a new uid, but the fleet keeps naming namespaces after the first,
    /// so a scenario's downstream copies stay where they are). A cluster
    /// without one gets an empty uid.
    pub fn sync_target_ref(&self, cluster: &str) -> SyncTargetRef {
        SyncTargetRef {
            workspace: self.synctarget_workspace.clone(),
            name: cluster.to_owned(),
            uid: self
                .synctarget_uids
                .get(cluster)
                .cloned()
                .unwrap_or_default(),
        }
    }

    /// The namespace locator of KCP `workspace`/`namespace` in `cluster`.
    pub fn namespace_locator(
        &self,
        cluster: &str,
        workspace: &str,
        namespace: &str,
    ) -> NamespaceLocator {
        NamespaceLocator {
            sync_target: self.sync_target_ref(cluster),
            workspace: workspace.to_owned(),
            namespace: namespace.to_owned(),
        }
    }

    /// The downstream namespace a placement of KCP `workspace`/`namespace`
    /// gets in `cluster`: [`downstream_namespace`] of the cluster's
    /// SyncTarget, the name the agent gives it when it applies what the hub
    /// sends down.
    pub fn downstream_namespace(&self, cluster: &str, workspace: &str, namespace: &str) -> String {
        downstream_namespace(&self.sync_target_ref(cluster), workspace, namespace)
    }

    /// Registers cluster `name` with KCP: creates its SyncTarget (see
    /// [`Fleet::sync_target_ref`] for how downstream namespaces are named
    /// afterwards).
    pub async fn create_synctarget(&self, name: &str) -> Result<()> {
        create_synctarget(&self.kcp, self.synctarget_workspace(), name)
            .await
            .map(drop)
    }

    /// Deletes cluster `name`'s SyncTarget: KCP no longer places anything on it.
    pub async fn delete_synctarget(&self, name: &str) -> Result<()> {
        let api = Api::<DynamicObject>::all_with(
            self.kcp(self.synctarget_workspace()).await?,
            &synctarget_resource(),
        );
        api.delete(name, &kube::api::DeleteParams::default())
            .await
            .with_context(|| format!("deleting SyncTarget {name}"))?;
        Ok(())
    }

    /// Cluster `cluster`'s SyncTarget in KCP workspace `workspace`, `None`
    /// while it does not exist.
    pub async fn synctarget(&self, workspace: &str, cluster: &str) -> Result<Option<Value>> {
        let api =
            Api::<DynamicObject>::all_with(self.kcp(workspace).await?, &synctarget_resource());
        let object = api
            .get_opt(cluster)
            .await
            .with_context(|| format!("reading SyncTarget {cluster} in {workspace}"))?;
        object
            .map(|o| serde_json::to_value(o).map_err(|e| anyhow!("encoding SyncTarget: {e}")))
            .transpose()
    }

    /// The hub's view of cluster `cluster` in `GET /api/v1/clusters`.
    pub async fn hub_cluster(&self, cluster: &str) -> Result<Value> {
        let clusters = self.hub_list("/api/v1/clusters").await?;
        clusters
            .as_array()
            .and_then(|all| all.iter().find(|c| c["name"] == cluster))
            .cloned()
            .ok_or_else(|| anyhow!("cluster {cluster} is not in /api/v1/clusters: {clusters}"))
    }
}

/// `(status, reason)` of the `Ready` condition of a SyncTarget.
pub fn ready_condition(synctarget: &Value) -> Option<(String, String)> {
    synctarget["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_owned(),
                c["reason"].as_str().unwrap_or_default().to_owned(),
            )
        })
}

impl Fleet {
    /// The hub's tunnel address (to put a [`super::proxy::TcpProxy`] in front of it).
    pub fn hub_tunnel_addr(&self) -> std::net::SocketAddr {
        self.hub.tunnel_addr
    }
}
