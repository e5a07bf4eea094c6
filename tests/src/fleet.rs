//! A whole Uplink installation in one test process: a KCP test-bed API server
//! with workspaces, one API server per physical cluster, a development PKI,
//! the hub and one agent per cluster, all on loopback with port-0 listeners.
//!
//! Scenario tests set a fleet up, do something to the clusters (place a
//! workload, change its status, delete it, stop an agent) and assert what
//! KCP, the hub's metrics and API, and the agents' metrics show:
//!
//! ```ignore
//! let mut fleet = Fleet::builder()
//!     .clusters(["a", "b"])
//!     .workspaces(["root:org:team-a"])
//!     .start()
//!     .await?;
//! fleet.place("root:org:team-a", "shop", &deployment("web", 2), &["a"]).await?;
//! fleet.set_status::<Deployment>("a", "root:org:team-a", "shop", "web", json!({"readyReplicas": 2})).await?;
//! eventually(STATUS_DEADLINE, "status in KCP", async || { ... }).await?;
//! fleet.shutdown().await?;
//! ```
//!
//! The agent and the hub run as libraries on tasks the fleet owns, each with
//! its own cancellation token (children of one root token, so a dropped fleet
//! stops everything). [`Fleet::shutdown`] stops them in order: agents (they
//! flush and say goodbye to a live hub), then the hub, then the API servers.
//! Agents can be stopped and started again ([`Fleet::stop_agent`],
//! [`Fleet::start_agent`]) and extra agents with hand-made configurations
//! (foreign certificates, false names) spawned next to the regular ones
//! ([`Fleet::spawn_agent`]).

pub mod capacity;
pub mod convergence;
mod poll;
pub mod processes;
pub mod proxy;
pub mod replicas;
mod scrape;
pub mod setup;
pub mod spec_down;
pub mod writers;

use std::{
    collections::BTreeMap,
    fmt::Debug,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail};
use k8s_openapi::{
    NamespaceResourceScope,
    api::{apps::v1::Deployment, core::v1::Namespace},
};
use kube::{
    Api, Client, Resource,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    core::ObjectMeta,
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};
use uplink_agent::mapping::{NamespaceLocator, SyncTargetRef};
use uplink_agent::{Agent, AgentConfig, AgentError, ReconnectSettings, ResourceSpec};
use uplink_e2e::{
    apiserver::{ApiServer, ApiServerConfig},
    pki::DevPki,
};
use uplink_hub::placement::key::{STATE_LABEL_PREFIX, STATE_SYNC, state_label, sync_target_key};
use uplink_hub::{Hub, HubConfig, HubError, health::Health, store::Store};

pub use poll::{bounded, eventually, round_reached};
pub use scrape::{Scrape, http_get};
pub use setup::HubTweak;

use crate::apiserver::client_for;

/// The namespace annotation that tells an agent where a downstream
/// namespace's objects live in KCP (kcp's syncer convention).
pub const NAMESPACE_LOCATOR: &str = "kcp.io/namespace-locator";

/// How long a status change may take to reach KCP in a scenario. Generous:
/// loopback is fast, but the test machine may be busy compiling.
pub const STATUS_DEADLINE: Duration = Duration::from_secs(15);

/// How long one scenario may take, setup and shutdown included.
pub const SCENARIO_TIMEOUT: Duration = Duration::from_secs(90);

/// Heartbeat interval unless the builder says otherwise.
const DEFAULT_HEARTBEAT: Duration = Duration::from_millis(500);
/// How long starting an agent waits for its session with the hub.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long stopping one task (an agent, the hub) may take.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// Chooses what a [`Fleet`] consists of.
#[derive(Debug, Clone)]
pub struct FleetBuilder {
    clusters: Vec<String>,
    workspaces: Vec<String>,
    heartbeat: Duration,
    agents: bool,
    hub_merge: HubMergeSettings,
    /// Changes to the hub's configuration, applied in order ([`setup`]).
    hub_tweaks: Vec<HubTweak>,
    /// The KCP workspace holding the clusters' SyncTargets (the hub's
    /// `--synctarget-workspace`).
    synctarget_workspace: String,
    /// Clusters that get no SyncTarget (KCP places nothing on them).
    without_synctarget: Vec<String>,
    /// Both halves on: the agents apply what the hub sends down, the
    /// clusters run the stand-in Deployment controller, and the fleet
    /// creates no downstream copies itself ([`spec_down`]).
    spec_down: bool,
    /// Types upsynced: the agents' and the hub's `--upsync-resources`.
    upsync: Vec<ResourceSpec>,
}

/// The hub's merge policy and feature gates for a fleet (aggregation
/// scenarios); the hub's defaults unless set.
#[derive(Debug, Clone, Default)]
struct HubMergeSettings {
    merge_policy: Option<uplink_hub::aggregate::MergePolicy>,
    feature_gates: Option<uplink_hub::aggregate::FeatureGates>,
}

impl FleetBuilder {
    /// The hub's merge policy (what `--config` would load).
    pub fn merge_policy(mut self, policy: uplink_hub::aggregate::MergePolicy) -> Self {
        self.hub_merge.merge_policy = Some(policy);
        self
    }

    /// The hub's feature gates (what `--feature-gates` would set).
    pub fn feature_gates(mut self, gates: uplink_hub::aggregate::FeatureGates) -> Self {
        self.hub_merge.feature_gates = Some(gates);
        self
    }

    /// Types whose objects born in the clusters KCP holds whole (the agents'
    /// and the hub's `--upsync-resources`).
    pub fn upsync<I, S>(mut self, types: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        // The names are literals in tests; a typo is a test bug.
        #[allow(clippy::expect_used)]
        let types = types.into_iter().map(|t| {
            t.as_ref()
                .parse()
                .expect("a resource type as resource.version.group")
        });
        self.upsync.extend(types);
        self
    }

    /// The physical clusters: one API server and one agent each. The names
    /// are the clusters' identities (certificate, `--cluster`, metric labels).
    pub fn clusters<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.clusters = names.into_iter().map(Into::into).collect();
        self
    }

    /// KCP workspaces created at start (others are created on first use).
    pub fn workspaces<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.workspaces = names.into_iter().map(Into::into).collect();
        self
    }

    /// The heartbeat interval of the hub and of every agent.
    pub fn heartbeat(mut self, interval: Duration) -> Self {
        self.heartbeat = interval;
        self
    }

    /// Creates no SyncTarget for `cluster`: KCP places nothing on it, so it
    /// may report nothing.
    pub fn without_synctarget(mut self, cluster: &str) -> Self {
        self.without_synctarget.push(cluster.to_owned());
        self
    }

    /// Starts no agents: the test starts them with [`Fleet::start_agent`] or
    /// [`Fleet::spawn_agent`].
    pub fn without_agents(mut self) -> Self {
        self.agents = false;
        self
    }

    /// Starts the API servers, writes the PKI and kubeconfigs, starts the hub
    /// and the agents, and returns once every agent has a session.
    pub async fn start(self) -> Result<Fleet> {
        crate::apiserver::install_crypto_provider();
        let dir = tempfile::tempdir().context("creating the fleet's directory")?;
        let root = CancellationToken::new();

        let kcp = ApiServer::start(ApiServerConfig {
            workspaces: self.workspaces.clone(),
            ..ApiServerConfig::default()
        })
        .await
        .context("starting the KCP API server")?;
        let kcp_kubeconfig = dir.path().join("kcp.kubeconfig");
        kcp.write_kubeconfig(&kcp_kubeconfig, None)
            .context("writing the KCP kubeconfig")?;

        let mut clusters = BTreeMap::new();
        for name in &self.clusters {
            let server = ApiServer::start(ApiServerConfig {
                deployment_controller: self.spec_down,
                ..ApiServerConfig::default()
            })
            .await
            .with_context(|| format!("starting the API server of cluster {name}"))?;
            server
                .write_kubeconfig(&cluster_kubeconfig(dir.path(), name), None)
                .with_context(|| format!("writing the kubeconfig of cluster {name}"))?;
            clusters.insert(name.clone(), server);
        }

        let pki = DevPki::new("Uplink fleet test CA").context("generating the PKI")?;
        pki.write_all(&dir.path().join("pki"), &self.clusters, &[])
            .context("writing the PKI")?;

        let mut hub_config = HubConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls_cert: dir.path().join("pki/hub.crt"),
            tls_key: dir.path().join("pki/hub.key"),
            client_ca: dir.path().join("pki/ca.crt"),
            kcp_kubeconfig: Some(kcp_kubeconfig),
            heartbeat_interval: self.heartbeat,
            shutdown_flush_timeout: Duration::from_secs(2),
            // Loopback only; tests of the checks turn them on.
            http_auth: uplink_hub::http::HttpAuthConfig::disabled(),
            ..HubConfig::default()
        };
        if let Some(policy) = self.hub_merge.merge_policy.clone() {
            hub_config.merge_policy = policy;
        }
        hub_config.upsync_resources = self.upsync.clone();
        if let Some(gates) = self.hub_merge.feature_gates {
            hub_config.feature_gates = gates;
        }
        for tweak in &self.hub_tweaks {
            tweak.apply(&mut hub_config);
        }
        // KCP knows every cluster by its SyncTarget, as an operator would
        // have created them; placement is what the hub reads from them.
        hub_config.synctarget_workspace = self.synctarget_workspace.clone();
        setup::install_synctarget_crd(&kcp, &self.synctarget_workspace).await?;
        let mut synctarget_uids = BTreeMap::new();
        for name in &self.clusters {
            if !self.without_synctarget.contains(name) {
                let uid = setup::create_synctarget(&kcp, &self.synctarget_workspace, name).await?;
                synctarget_uids.insert(name.clone(), uid);
            }
        }
        let hub = RunningHub::start(hub_config, root.child_token()).await?;

        let mut fleet = Fleet {
            heartbeat: self.heartbeat,
            spec_down: self.spec_down,
            upsync: self.upsync.clone(),
            synctarget_workspace: self.synctarget_workspace,
            synctarget_uids,
            dir,
            pki,
            kcp,
            clusters,
            hub,
            agents: BTreeMap::new(),
            agent_configs: BTreeMap::new(),
            root: root.clone(),
            _stop_on_drop: root.drop_guard(),
        };
        if self.agents {
            for name in &self.clusters {
                let config = fleet.agent_config(name)?;
                fleet.spawn_agent(name, config).await?;
            }
            for name in &self.clusters {
                fleet.wait_agent_connected(name).await?;
            }
        }
        Ok(fleet)
    }
}

/// A running installation: KCP, clusters, hub, agents. See the module docs.
#[derive(Debug)]
pub struct Fleet {
    heartbeat: Duration,
    /// Agents apply what the hub sends down ([`FleetBuilder::spec_down`]).
    spec_down: bool,
    /// Types the agents upsync ([`FleetBuilder::upsync`]).
    upsync: Vec<ResourceSpec>,
    /// Where the clusters' SyncTargets live.
    synctarget_workspace: String,
    /// The uid of each cluster's SyncTarget as the fleet created it at
    /// start: downstream namespaces are named after it.
    synctarget_uids: BTreeMap<String, String>,
    /// Kubeconfigs and the PKI; removed when the fleet is dropped.
    dir: TempDir,
    pki: DevPki,
    kcp: ApiServer,
    clusters: BTreeMap<String, ApiServer>,
    hub: RunningHub,
    /// Running agents by name.
    agents: BTreeMap<String, RunningAgent>,
    /// The configuration every agent was last started with, by name, so a
    /// stopped agent starts again as it was.
    agent_configs: BTreeMap<String, AgentConfig>,
    /// Parent of every task's token.
    root: CancellationToken,
    _stop_on_drop: DropGuard,
}

impl Fleet {
    pub fn builder() -> FleetBuilder {
        FleetBuilder {
            clusters: Vec::new(),
            workspaces: Vec::new(),
            heartbeat: DEFAULT_HEARTBEAT,
            agents: true,
            hub_merge: HubMergeSettings::default(),
            hub_tweaks: Vec::new(),
            synctarget_workspace: "root".to_owned(),
            without_synctarget: Vec::new(),
            spec_down: false,
            upsync: Vec::new(),
        }
    }

    // ---- Where things are -------------------------------------------------

    /// The fleet's directory (kubeconfigs, `pki/`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The CA that signed the hub's and the clusters' certificates; issue
    /// more certificates with it (write them with [`Fleet::write_cert`]).
    pub fn pki(&self) -> &DevPki {
        &self.pki
    }

    /// Writes `cert` as `<dir>/pki/<stem>.crt` and `.key` and returns both paths.
    pub fn write_cert(
        &self,
        stem: &str,
        cert: &uplink_e2e::pki::IssuedCert,
    ) -> Result<(PathBuf, PathBuf)> {
        let pki = self.dir.path().join("pki");
        cert.write(&pki, stem)
            .with_context(|| format!("writing certificate {stem}"))?;
        Ok((
            pki.join(format!("{stem}.crt")),
            pki.join(format!("{stem}.key")),
        ))
    }

    /// The heartbeat interval of the hub and the agents.
    pub fn heartbeat(&self) -> Duration {
        self.heartbeat
    }

    /// The KCP API server (for fault injection, kubeconfigs).
    pub fn kcp_server(&self) -> &ApiServer {
        &self.kcp
    }

    /// The API server playing physical cluster `name`.
    pub fn cluster_server(&self, name: &str) -> Result<&ApiServer> {
        self.clusters
            .get(name)
            .ok_or_else(|| anyhow!("the fleet has no cluster {name:?}"))
    }

    /// A client for a KCP workspace (`root:org:team-a`).
    pub async fn kcp(&self, workspace: &str) -> Result<Client> {
        client_for(&self.kcp, Some(workspace)).await
    }

    /// A client for physical cluster `name`.
    pub async fn cluster(&self, name: &str) -> Result<Client> {
        client_for(self.cluster_server(name)?, None).await
    }

    // ---- The hub ----------------------------------------------------------

    /// `wss://127.0.0.1:<port>`, the hub's tunnel.
    pub fn hub_url(&self) -> String {
        format!("wss://{}", self.hub.tunnel_addr)
    }

    /// Where the hub serves `/metrics`, `/healthz` and its API.
    pub fn hub_http_addr(&self) -> SocketAddr {
        self.hub.http_addr
    }

    /// Stops the hub (its agents lose their sessions and keep trying to
    /// reconnect). [`Fleet::start_hub`] starts it again.
    pub async fn stop_hub(&mut self) -> Result<()> {
        self.hub.stop.cancel();
        join("the hub", self.hub.task.take()).await
    }

    /// Starts a stopped hub again on the same addresses, with the same
    /// configuration: a new process as far as anyone can tell (new epoch,
    /// empty store), so every agent snapshots both ways.
    pub async fn start_hub(&mut self) -> Result<()> {
        if self.hub.task.is_some() {
            bail!("the hub is running");
        }
        self.hub = RunningHub::start(self.hub.config.clone(), self.root.child_token()).await?;
        Ok(())
    }

    /// The hub's store (what every cluster reported).
    pub fn hub_store(&self) -> &Arc<Store> {
        &self.hub.store
    }

    /// The hub's cluster records.
    pub fn hub_health(&self) -> &Arc<Health> {
        &self.hub.health
    }

    /// The hub's `/metrics`, scraped over HTTP as Prometheus would.
    pub async fn hub_metrics(&self) -> Result<Scrape> {
        http_get(self.hub.http_addr, "/metrics")
            .await
            .map(Scrape::new)
    }

    /// `GET <path>` on the hub's HTTP endpoint, decoded as JSON
    /// (`/api/v1/clusters`, `/api/v1/objects`).
    pub async fn hub_api(&self, path: &str) -> Result<Value> {
        let body = http_get(self.hub.http_addr, path).await?;
        serde_json::from_str(&body).with_context(|| format!("GET {path}: not JSON: {body}"))
    }

    /// Every item of the hub API list at `path` (`/api/v1/objects`,
    /// `/api/v1/clusters`, `/api/v1/conflicts`), page after page following
    /// `metadata.continue`, as one JSON array.
    pub async fn hub_list(&self, path: &str) -> Result<Value> {
        let mut items = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page_path = match &token {
                // Continue tokens are base64url: nothing to escape.
                Some(token) => format!("{path}?continue={token}"),
                None => path.to_owned(),
            };
            let page = self.hub_api(&page_path).await?;
            let Some(page_items) = page["items"].as_array() else {
                bail!("GET {page_path}: no items in {page}");
            };
            items.extend(page_items.iter().cloned());
            match page["metadata"]["continue"].as_str() {
                Some(next) if Some(next) == token.as_deref() => {
                    bail!("GET {page_path}: the same continue token again")
                }
                Some(next) => token = Some(next.to_owned()),
                None => return Ok(Value::Array(items)),
            }
        }
    }

    // ---- Agents -----------------------------------------------------------

    /// The configuration of cluster `cluster`'s regular agent: its name, its
    /// certificate, its cluster's kubeconfig, the hub, Deployments, the
    /// fleet's heartbeat and quick reconnects. Change fields and pass it to
    /// [`Fleet::spawn_agent`] for an agent that misbehaves.
    pub fn agent_config(&self, cluster: &str) -> Result<AgentConfig> {
        self.cluster_server(cluster)?;
        let pki = self.dir.path().join("pki");
        Ok(AgentConfig {
            cluster: cluster.to_owned(),
            kubeconfig: Some(cluster_kubeconfig(self.dir.path(), cluster)),
            hub_url: self.hub_url(),
            tls_cert: pki.join(format!("{cluster}.crt")),
            tls_key: pki.join(format!("{cluster}.key")),
            hub_ca: pki.join("ca.crt"),
            resources: vec![ResourceSpec::deployments()],
            downward_resources: if self.spec_down {
                uplink_agent::config::default_downward_resources()
            } else {
                Vec::new()
            },
            upsync_resources: self.upsync.clone(),
            http_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            heartbeat_interval: self.heartbeat,
            reconnect: ReconnectSettings {
                initial: Duration::from_millis(100),
                max: Duration::from_secs(1),
                ..ReconnectSettings::default()
            },
            ..AgentConfig::default()
        })
    }

    /// Binds and runs an agent named `name` (the fleet's handle for it; the
    /// cluster it claims is `config.cluster`). Does not wait for it to
    /// connect: it may be meant to fail.
    pub async fn spawn_agent(&mut self, name: &str, config: AgentConfig) -> Result<()> {
        if self.agents.contains_key(name) {
            bail!("agent {name:?} is already running");
        }
        let agent = Agent::bind(config.clone())
            .await
            .with_context(|| format!("binding agent {name:?}"))?;
        let stop = self.root.child_token();
        let http_addr = agent
            .http_addr()
            .ok_or_else(|| anyhow!("agent {name:?} is configured without an HTTP server"))?;
        let running = RunningAgent {
            http_addr,
            metrics: agent.metrics().clone(),
            stop: stop.clone(),
            task: Some(tokio::spawn(agent.run(stop))),
        };
        self.agents.insert(name.to_owned(), running);
        self.agent_configs.insert(name.to_owned(), config);
        Ok(())
    }

    /// Starts agent `name` again with the configuration it last ran with (or,
    /// the first time, its cluster's regular one) and waits for its session.
    pub async fn start_agent(&mut self, name: &str) -> Result<()> {
        let config = match self.agent_configs.get(name) {
            Some(config) => config.clone(),
            None => self.agent_config(name)?,
        };
        self.spawn_agent(name, config).await?;
        self.wait_agent_connected(name).await
    }

    /// Waits until agent `name` has a session with the hub.
    pub async fn wait_agent_connected(&self, name: &str) -> Result<()> {
        let agent = self.agent(name)?;
        eventually(
            CONNECT_TIMEOUT,
            &format!("agent {name:?} to connect to the hub"),
            async || {
                if agent.task.as_ref().is_some_and(JoinHandle::is_finished) {
                    bail!("the agent's task ended");
                }
                match agent.metrics.connected.get() {
                    1 => Ok(()),
                    other => bail!(
                        "uplink_agent_connected {other} after {} reconnects",
                        agent.metrics.reconnects.get()
                    ),
                }
            },
        )
        .await
    }

    /// Stops agent `name` (flush, `Bye`, close) and returns how its run ended.
    pub async fn stop_agent(&mut self, name: &str) -> Result<()> {
        let mut agent = self
            .agents
            .remove(name)
            .ok_or_else(|| anyhow!("agent {name:?} is not running"))?;
        agent.stop.cancel();
        join(&format!("agent {name:?}"), agent.task.take()).await
    }

    /// Agent `name`'s `/metrics`, scraped over HTTP.
    pub async fn agent_metrics(&self, name: &str) -> Result<Scrape> {
        http_get(self.agent(name)?.http_addr, "/metrics")
            .await
            .map(Scrape::new)
    }

    /// Where agent `name` serves `/metrics`, `/healthz` and `/readyz`.
    pub fn agent_http_addr(&self, name: &str) -> Result<SocketAddr> {
        Ok(self.agent(name)?.http_addr)
    }

    fn agent(&self, name: &str) -> Result<&RunningAgent> {
        self.agents
            .get(name)
            .ok_or_else(|| anyhow!("agent {name:?} is not running"))
    }

    // ---- Workloads ----------------------------------------------------------

    /// Places `object` as KCP would: creates it in `namespace` of KCP
    /// workspace `workspace` (and the namespace, if missing) with kcp's
    /// placement label for each of `clusters`
    /// (`state.workload.kcp.io/<syncTargetKey>: Sync`), and in each of them
    /// a copy in the downstream namespace
    /// [`Fleet::downstream_namespace`]`(cluster, workspace, namespace)`,
    /// which carries the namespace locator. Returns the upstream object as
    /// created. In [`FleetBuilder::spec_down`] mode only the upstream object
    /// is created: the agents make the copies from what the hub sends down.
    pub async fn place<K>(
        &self,
        workspace: &str,
        namespace: &str,
        object: &K,
        clusters: &[&str],
    ) -> Result<K>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
            + Clone
            + Debug
            + Serialize
            + DeserializeOwned,
    {
        let upstream = self
            .create_upstream(workspace, namespace, object, clusters)
            .await?;
        if self.spec_down {
            return Ok(upstream);
        }
        for cluster in clusters {
            self.create_downstream(cluster, workspace, namespace, object)
                .await?;
        }
        Ok(upstream)
    }

    /// Creates `object` in KCP only, placed on `clusters` (which may be none).
    pub async fn create_upstream<K>(
        &self,
        workspace: &str,
        namespace: &str,
        object: &K,
        clusters: &[&str],
    ) -> Result<K>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
            + Clone
            + Debug
            + Serialize
            + DeserializeOwned,
    {
        let name = object
            .meta()
            .name
            .clone()
            .ok_or_else(|| anyhow!("the object to place has no name"))?;
        let kcp = self.kcp(workspace).await?;
        ensure_namespace(&kcp, namespace, BTreeMap::new()).await?;
        let mut upstream = fresh_copy(object, namespace);
        let labels = upstream.meta_mut().labels.get_or_insert_with(BTreeMap::new);
        for cluster in clusters {
            labels.insert(self.placement_label(cluster), STATE_SYNC.to_owned());
        }
        Api::<K>::namespaced(kcp, namespace)
            .create(&PostParams::default(), &upstream)
            .await
            .with_context(|| format!("creating {name} in KCP {workspace}/{namespace}"))
    }

    /// Creates Deployments `names` in KCP (`workspace`/`namespace`), each
    /// placed on `cluster`, many at a time: for scenarios whose downstream
    /// side is simulated.
    pub async fn create_upstream_deployments(
        &self,
        workspace: &str,
        namespace: &str,
        names: impl IntoIterator<Item = String>,
        cluster: &str,
    ) -> Result<()> {
        use futures::{StreamExt as _, TryStreamExt as _};
        // One namespace first, so the concurrent creates do not race for it.
        let kcp = self.kcp(workspace).await?;
        ensure_namespace(&kcp, namespace, BTreeMap::new()).await?;
        futures::stream::iter(names)
            .map(|name| async move {
                self.create_upstream(workspace, namespace, &deployment(&name, 1), &[cluster])
                    .await
                    .map(drop)
            })
            .buffer_unordered(32)
            .try_collect()
            .await
    }

    /// Creates the downstream copy of `object` in `cluster`, in the
    /// namespace a placement of KCP `workspace`/`namespace` gets there (as
    /// KCP's syncer would, after placing it).
    pub async fn create_downstream<K>(
        &self,
        cluster: &str,
        workspace: &str,
        namespace: &str,
        object: &K,
    ) -> Result<K>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
            + Clone
            + Debug
            + Serialize
            + DeserializeOwned,
    {
        let name = object.meta().name.clone().unwrap_or_default();
        let locator = self.namespace_locator(cluster, workspace, namespace);
        let downstream_ns = locator.downstream_namespace();
        let locator = locator.to_annotation();
        let client = self.cluster(cluster).await?;
        let annotations = BTreeMap::from([(NAMESPACE_LOCATOR.to_owned(), locator)]);
        ensure_namespace(&client, &downstream_ns, annotations).await?;
        Api::<K>::namespaced(client, &downstream_ns)
            .create(&PostParams::default(), &fresh_copy(object, &downstream_ns))
            .await
            .with_context(|| format!("creating {name} in cluster {cluster}/{downstream_ns}"))
    }

    /// Places the KCP object `workspace`/`namespace`/`name` on exactly
    /// `clusters`: kcp's placement labels of other clusters are removed
    /// (the object is unplaced from them), those of `clusters` set.
    pub async fn set_placement<K>(
        &self,
        workspace: &str,
        namespace: &str,
        name: &str,
        clusters: &[&str],
    ) -> Result<()>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
            + Clone
            + Debug
            + DeserializeOwned,
    {
        let api = Api::<K>::namespaced(self.kcp(workspace).await?, namespace);
        let object = api
            .get(name)
            .await
            .with_context(|| format!("reading {name} in KCP {workspace}/{namespace}"))?;
        let mut labels = serde_json::Map::new();
        for key in object.meta().labels.iter().flatten().map(|(k, _)| k) {
            if key.starts_with(STATE_LABEL_PREFIX) {
                labels.insert(key.clone(), Value::Null);
            }
        }
        for cluster in clusters {
            labels.insert(self.placement_label(cluster), json!(STATE_SYNC));
        }
        let patch = json!({ "metadata": { "labels": labels } });
        api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .with_context(|| {
                format!("placing {name} in KCP {workspace}/{namespace} on {clusters:?}")
            })?;
        Ok(())
    }

    /// kcp's placement label for `cluster`'s SyncTarget
    /// (`state.workload.kcp.io/<syncTargetKey>`).
    pub fn placement_label(&self, cluster: &str) -> String {
        state_label(&sync_target_key(&self.synctarget_workspace, cluster))
    }

    /// The workspace holding the clusters' SyncTargets.
    pub fn synctarget_workspace(&self) -> &str {
        &self.synctarget_workspace
    }

    /// Replaces the downstream copy's `.status` in `cluster` (a merge patch of
    /// `/status`, as the cluster's controllers would write it).
    pub async fn set_status<K>(
        &self,
        cluster: &str,
        workspace: &str,
        namespace: &str,
        name: &str,
        status: Value,
    ) -> Result<()>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
            + Clone
            + Debug
            + DeserializeOwned,
    {
        let downstream_ns = self.downstream_namespace(cluster, workspace, namespace);
        let api = Api::<K>::namespaced(self.cluster(cluster).await?, &downstream_ns);
        // A merge patch merges into the old status; clear it first so fields
        // missing from `status` disappear, as when a controller rewrites it.
        let patch = json!({ "status": null });
        api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .with_context(|| format!("clearing the status of {name} in {cluster}"))?;
        let patch = json!({ "status": status });
        api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .with_context(|| format!("setting the status of {name} in {cluster}"))?;
        Ok(())
    }

    /// Deletes the downstream copy in `cluster`.
    pub async fn delete_downstream<K>(
        &self,
        cluster: &str,
        workspace: &str,
        namespace: &str,
        name: &str,
    ) -> Result<()>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
            + Clone
            + Debug
            + DeserializeOwned,
    {
        let downstream_ns = self.downstream_namespace(cluster, workspace, namespace);
        Api::<K>::namespaced(self.cluster(cluster).await?, &downstream_ns)
            .delete(name, &DeleteParams::default())
            .await
            .with_context(|| format!("deleting {name} in {cluster}/{downstream_ns}"))?;
        Ok(())
    }

    /// The downstream copy, in `cluster`, of KCP `workspace`/`namespace`/`name`.
    pub async fn cluster_object<K>(
        &self,
        cluster: &str,
        workspace: &str,
        namespace: &str,
        name: &str,
    ) -> Result<K>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
            + Clone
            + Debug
            + DeserializeOwned,
    {
        let downstream_ns = self.downstream_namespace(cluster, workspace, namespace);
        Api::<K>::namespaced(self.cluster(cluster).await?, &downstream_ns)
            .get(name)
            .await
            .with_context(|| format!("reading {name} in {cluster}/{downstream_ns}"))
    }

    /// The `.status` of the upstream object in KCP; `None` when it has none
    /// (absent or `null`).
    pub async fn upstream_status<K>(
        &self,
        workspace: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Value>>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
            + Clone
            + Debug
            + Serialize
            + DeserializeOwned,
    {
        let object = Api::<K>::namespaced(self.kcp(workspace).await?, namespace)
            .get(name)
            .await
            .with_context(|| format!("reading {name} in KCP {workspace}/{namespace}"))?;
        let mut object = serde_json::to_value(&object)?;
        Ok(match object.get_mut("status").map(Value::take) {
            None | Some(Value::Null) => None,
            Some(status) => Some(status),
        })
    }

    // ---- Shutdown -----------------------------------------------------------

    /// Stops everything in order: the agents (they flush and say goodbye to
    /// a live hub), the hub, the API servers. Fails if an agent or the hub
    /// ended with an error, or did not stop in time.
    pub async fn shutdown(mut self) -> Result<()> {
        let mut failures = Vec::new();
        for agent in self.agents.values() {
            agent.stop.cancel();
        }
        for (name, mut agent) in std::mem::take(&mut self.agents) {
            if let Err(error) = join(&format!("agent {name:?}"), agent.task.take()).await {
                failures.push(format!("{error:#}"));
            }
        }
        self.hub.stop.cancel();
        if let Err(error) = join("the hub", self.hub.task.take()).await {
            failures.push(format!("{error:#}"));
        }
        self.kcp.shutdown().await;
        for server in self.clusters.into_values() {
            server.shutdown().await;
        }
        if failures.is_empty() {
            Ok(())
        } else {
            bail!("shutting the fleet down: {}", failures.join("; "))
        }
    }
}

/// The hub, running on a task the fleet owns.
#[derive(Debug)]
struct RunningHub {
    /// What it was started with (its listen addresses are the ones it got,
    /// so a restarted hub is found where its agents look).
    config: HubConfig,
    tunnel_addr: SocketAddr,
    http_addr: SocketAddr,
    store: Arc<Store>,
    health: Arc<Health>,
    stop: CancellationToken,
    task: Option<JoinHandle<Result<(), HubError>>>,
}

impl RunningHub {
    async fn start(mut config: HubConfig, stop: CancellationToken) -> Result<Self> {
        let hub = Hub::bind(config.clone()).await.context("binding the hub")?;
        config.listen = hub.tunnel_addr();
        config.http_listen = hub.http_addr();
        Ok(RunningHub {
            config,
            tunnel_addr: hub.tunnel_addr(),
            http_addr: hub.http_addr(),
            store: hub.store(),
            health: hub.health(),
            stop: stop.clone(),
            task: Some(tokio::spawn(hub.run(stop))),
        })
    }
}

/// One agent, running on a task the fleet owns.
#[derive(Debug)]
struct RunningAgent {
    http_addr: SocketAddr,
    /// The same registry the agent serves on `/metrics`.
    metrics: uplink_agent::metrics::Metrics,
    stop: CancellationToken,
    task: Option<JoinHandle<Result<(), AgentError>>>,
}

/// Awaits a task that was told to stop; its error, a panic or a hang is a failure.
async fn join<E>(what: &str, task: Option<JoinHandle<Result<(), E>>>) -> Result<()>
where
    E: std::error::Error + Send + Sync + 'static,
{
    let Some(mut task) = task else {
        return Ok(());
    };
    match tokio::time::timeout(STOP_TIMEOUT, &mut task).await {
        Err(_) => {
            task.abort();
            bail!("{what} did not stop within {STOP_TIMEOUT:?}")
        }
        Ok(Err(join_error)) => bail!("{what} panicked or was aborted: {join_error}"),
        Ok(Ok(Err(error))) => Err(anyhow::Error::new(error).context(format!("{what} failed"))),
        Ok(Ok(Ok(()))) => Ok(()),
    }
}

/// The downstream namespace a placement of KCP `workspace`/`namespace` gets
/// in the cluster of SyncTarget `sync_target`: `kcp-<hash>` as kcp's syncer
/// names them, by the agent's own function
/// ([`NamespaceLocator::downstream_namespace`]). The name says nothing about
/// the upstream coordinates; only the locator annotation does.
pub fn downstream_namespace(
    sync_target: &SyncTargetRef,
    workspace: &str,
    namespace: &str,
) -> String {
    NamespaceLocator {
        sync_target: sync_target.clone(),
        workspace: workspace.to_owned(),
        namespace: namespace.to_owned(),
    }
    .downstream_namespace()
}

/// A minimal valid Deployment named `name` (one container, `replicas`).
pub fn deployment(name: &str, replicas: i32) -> Deployment {
    let labels = json!({ "app": name });
    let value = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": name, "labels": labels },
        "spec": {
            "replicas": replicas,
            "selector": { "matchLabels": labels },
            "template": {
                "metadata": { "labels": labels },
                "spec": { "containers": [{ "name": "app", "image": "registry.k8s.io/pause:3.10" }] }
            }
        }
    });
    // The JSON above is a literal Deployment; decoding it cannot fail.
    #[allow(clippy::expect_used)]
    serde_json::from_value(value).expect("a valid Deployment literal")
}

fn cluster_kubeconfig(dir: &Path, cluster: &str) -> PathBuf {
    dir.join("clusters").join(format!("{cluster}.kubeconfig"))
}

/// `object` ready to be created in `namespace`: no server-set metadata, no status.
fn fresh_copy<K: Resource + Clone + Serialize + DeserializeOwned>(
    object: &K,
    namespace: &str,
) -> K {
    let mut copy = object.clone();
    let meta = copy.meta_mut();
    meta.namespace = Some(namespace.to_owned());
    meta.resource_version = None;
    meta.uid = None;
    meta.creation_timestamp = None;
    meta.managed_fields = None;
    meta.generation = None;
    copy
}

/// Creates namespace `name` with `annotations`; if it exists, merges the
/// annotations into it.
async fn ensure_namespace(
    client: &Client,
    name: &str,
    annotations: BTreeMap<String, String>,
) -> Result<()> {
    let api = Api::<Namespace>::all(client.clone());
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            annotations: Some(annotations.clone()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    match api.create(&PostParams::default(), &namespace).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => {
            if !annotations.is_empty() {
                let patch = json!({ "metadata": { "annotations": annotations } });
                api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .with_context(|| format!("annotating namespace {name}"))?;
            }
            Ok(())
        }
        Err(error) => Err(error).with_context(|| format!("creating namespace {name}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downstream_namespaces_are_dns_labels_unique_per_placement() {
        let east = SyncTargetRef {
            workspace: "root".into(),
            name: "east".into(),
            uid: "u-1".into(),
        };
        let west = SyncTargetRef {
            name: "west".into(),
            ..east.clone()
        };
        let a = downstream_namespace(&east, "root:org:team-a", "shop");
        let b = downstream_namespace(&east, "root:org:team", "a-shop");
        assert_ne!(a, b);
        assert_eq!(a, downstream_namespace(&east, "root:org:team-a", "shop"));
        assert_ne!(a, downstream_namespace(&west, "root:org:team-a", "shop"));
        assert!(a.len() <= 63);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        );
    }
}
