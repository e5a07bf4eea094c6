//! The system under measurement: KCP and one API server per cluster in this
//! process, the real `uplink-hub` and one real `uplink-agent` per cluster as
//! child processes, talking mutual TLS over loopback.
//!
//! Every object is a Deployment in workspace [`WORKSPACE`], namespace
//! [`NAMESPACE`], placed on its cluster. By default it has a copy in a
//! `kcp-<hash>` namespace of its cluster (the demo's seeding) and the agents
//! report status only: a benchmark writes a counter into the copy's
//! `status.readyReplicas` and watches KCP for it ([`write_counter`]). With
//! [`FleetSize::downward`] the clusters start empty and the agents apply what
//! the hub sends down ([`super::placed`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::api::{Patch, PatchParams};
use tokio::time::Instant;

use crate::apiserver::{ApiServer, ApiServerConfig, RequestCounts};
use crate::demo::connections::Connections;
use crate::demo::launch::{self, Files, HubAddrs};
use crate::demo::observe::parse_metrics;
use crate::demo::processes::ChildProcess;
use crate::demo::seed;
use crate::demo::topology::{DemoObject, Topology};
use crate::pki::DevPki;
use uplink_agent::config::DEFAULT_DOWNWARD_RESOURCES;

use super::placed;

/// The KCP workspace every benchmark object lives in.
pub const WORKSPACE: &str = "root:bench";
/// The namespace of every benchmark object in KCP.
pub const NAMESPACE: &str = "load";
/// Heartbeats are not what these scenarios measure: keep them rare.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// How long the agents get to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a child gets to exit after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// The hub's KCP write limits during benchmarks: high enough that the rate
/// limiter is not what is measured.
const HUB_WRITE_QPS: &str = "100000";
const HUB_WRITE_BURST: &str = "100000";

/// The programs a benchmark runs.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub hub: PathBuf,
    pub agent: PathBuf,
    /// `uplink-e2e` itself, for the `ingest` baseline's `bench-sink`.
    pub e2e: PathBuf,
}

/// How big a fleet to start.
#[derive(Debug, Clone, Copy)]
pub struct FleetSize {
    pub clusters: usize,
    pub objects: usize,
    /// The agents apply what KCP places on their clusters
    /// (`--downward-resources`), and nothing is created in the clusters
    /// beforehand; otherwise the agents are status-only and every object
    /// has a copy downstream from the start.
    pub downward: bool,
}

/// A running fleet; [`Fleet::stop`] takes it down.
#[derive(Debug)]
pub struct Fleet {
    dir: PathBuf,
    pub objects: Vec<DemoObject>,
    pub clusters: Vec<String>,
    pub connections: Connections,
    pub hub: ChildProcess,
    pub hub_addrs: HubAddrs,
    pub agents: Vec<ChildProcess>,
    /// The namespace of the objects in each cluster, when the agents
    /// apply them (the agent's naming); otherwise the demo's
    /// ([`DemoObject::downstream_namespace`]).
    downstream_namespaces: BTreeMap<String, String>,
    /// KCP first, then the clusters.
    servers: Vec<ApiServer>,
    http: MetricsClient,
}

impl Fleet {
    /// Starts everything and waits until every agent is connected.
    pub async fn start(binaries: &Binaries, size: FleetSize) -> anyhow::Result<Fleet> {
        static COUNT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("uplink-bench-{}-{n}", std::process::id()));
        std::fs::create_dir_all(dir.join("logs"))
            .with_context(|| format!("creating {}", dir.display()))?;
        let topology = topology(size);
        let files = Files {
            pki: dir.join("pki"),
            kcp_kubeconfig: dir.join("kcp.kubeconfig"),
            logs: dir.join("logs"),
        };
        DevPki::new("uplink-bench-ca")
            .and_then(|pki| pki.write_all(&files.pki, &topology.clusters, &[]))
            .context("writing the benchmark's certificates")?;

        let mut servers = Vec::new();
        let mut connections = Connections::default();
        let kcp = ApiServer::start(ApiServerConfig {
            workspaces: vec![WORKSPACE.to_owned()],
            ..ApiServerConfig::default()
        })
        .await
        .context("starting KCP")?;
        kcp.write_kubeconfig(&files.kcp_kubeconfig, None)
            .context("writing the KCP kubeconfig")?;
        connections
            .add_workspace(WORKSPACE, &kcp.kubeconfig_yaml(Some(WORKSPACE)))
            .await?;
        connections
            .add_workspace(
                seed::SYNCTARGET_WORKSPACE,
                &kcp.kubeconfig_yaml(Some(seed::SYNCTARGET_WORKSPACE)),
            )
            .await?;
        servers.push(kcp);
        let mut kubeconfigs = Vec::new();
        for cluster in &topology.clusters {
            let server = ApiServer::start(ApiServerConfig::default())
                .await
                .with_context(|| format!("starting the API server of {cluster}"))?;
            let path = dir.join(format!("{cluster}.kubeconfig"));
            server
                .write_kubeconfig(&path, None)
                .with_context(|| format!("writing the kubeconfig of {cluster}"))?;
            connections
                .add_cluster(cluster, &server.kubeconfig_yaml(None))
                .await?;
            kubeconfigs.push(path);
            servers.push(server);
        }
        let downstream_namespaces = if size.downward {
            placed::seed_placed(&topology, &connections)
                .await
                .context("creating the benchmark's objects in KCP")?
        } else {
            seed::seed(&topology, &connections)
                .await
                .context("creating the benchmark's objects")?;
            BTreeMap::new()
        };

        let mut hub_flags = unlimited_writes();
        hub_flags.extend(one_source_fleet());
        let (hub, hub_addrs) =
            launch::start_hub_with(&binaries.hub, &files, HEARTBEAT, &hub_flags).await?;
        let mut agent_flags = vec!["--capacity".to_owned(), "false".to_owned()];
        if size.downward {
            agent_flags.extend([
                "--downward-resources".to_owned(),
                DEFAULT_DOWNWARD_RESOURCES.to_owned(),
            ]);
        }
        let mut agents = Vec::new();
        for (cluster, kubeconfig) in topology.clusters.iter().zip(&kubeconfigs) {
            agents.push(launch::start_agent_with(
                &binaries.agent,
                &files,
                cluster,
                kubeconfig,
                hub_addrs.tunnel,
                HEARTBEAT,
                &agent_flags,
            )?);
        }
        let fleet = Fleet {
            dir,
            objects: topology.objects,
            clusters: topology.clusters,
            connections,
            hub,
            hub_addrs,
            agents,
            downstream_namespaces,
            servers,
            http: metrics_client(),
        };
        fleet.wait_for_agents().await?;
        Ok(fleet)
    }

    /// Where logs and certificates are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The hub's process id.
    pub fn hub_pid(&self) -> anyhow::Result<u32> {
        self.hub.id().context("the hub is not running")
    }

    async fn wait_for_agents(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        loop {
            let connected = self.hub_metric("uplink_hub_agents_connected", &[]).await;
            if connected
                .as_ref()
                .is_ok_and(|n| *n as usize >= self.clusters.len())
            {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "not every agent connected within {CONNECT_TIMEOUT:?} (hub: {connected:?}); logs in {}",
                self.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The sum of the hub's samples of `name` whose labels include `labels`.
    pub async fn hub_metric(&self, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<f64> {
        hub_metric(&self.http, self.hub_addrs.http, name, labels).await
    }

    /// Successful status writes the hub made to KCP so far.
    pub async fn hub_kcp_writes(&self) -> anyhow::Result<u64> {
        let value = self
            .hub_metric("uplink_hub_kcp_writes_total", &[("result", "success")])
            .await?;
        Ok(value as u64)
    }

    /// Polls the hub's KCP write counter until it stops moving for `quiet`.
    pub async fn settled_kcp_writes(&self, quiet: Duration) -> anyhow::Result<u64> {
        let mut last = self.hub_kcp_writes().await?;
        loop {
            tokio::time::sleep(quiet).await;
            let now = self.hub_kcp_writes().await?;
            if now == last {
                return Ok(now);
            }
            last = now;
        }
    }

    /// The object's copy in its cluster.
    pub fn downstream(&self, object: &DemoObject) -> anyhow::Result<Api<Deployment>> {
        let client = self
            .connections
            .cluster(&object.cluster)
            .with_context(|| format!("no client for {}", object.cluster))?;
        let namespace = match self.downstream_namespaces.get(&object.cluster) {
            Some(namespace) => namespace.clone(),
            None => object.downstream_namespace(),
        };
        Ok(Api::namespaced(client, &namespace))
    }

    /// The Events in the namespace of the object's copy in its cluster.
    pub fn downstream_events(
        &self,
        object: &DemoObject,
    ) -> anyhow::Result<Api<k8s_openapi::api::events::v1::Event>> {
        let deployments = self.downstream(object)?;
        let client = self
            .connections
            .cluster(&object.cluster)
            .with_context(|| format!("no client for {}", object.cluster))?;
        let namespace = deployments.namespace().unwrap_or_default().to_owned();
        Ok(Api::namespaced(client, &namespace))
    }

    /// The Events in KCP, where the objects are.
    pub fn upstream_events(&self) -> anyhow::Result<Api<k8s_openapi::api::events::v1::Event>> {
        let client = self
            .connections
            .workspace(WORKSPACE)
            .context("no client for KCP")?;
        Ok(Api::namespaced(client, NAMESPACE))
    }

    /// The requests KCP (the test-bed API server standing in for it)
    /// received so far, from anyone: the hub and the benchmark itself.
    pub fn kcp_requests(&self) -> anyhow::Result<RequestCounts> {
        self.servers
            .first()
            .map(ApiServer::requests)
            .context("KCP is not running")
    }

    /// Every object in KCP.
    pub fn upstream(&self) -> anyhow::Result<Api<Deployment>> {
        let client = self
            .connections
            .workspace(WORKSPACE)
            .context("no client for KCP")?;
        Ok(Api::namespaced(client, NAMESPACE))
    }

    /// A description of the first child that exited, if any did.
    pub fn exited_child(&mut self) -> Option<String> {
        std::iter::once(&mut self.hub)
            .chain(self.agents.iter_mut())
            .find_map(|child| {
                child.exited().map(|status| {
                    format!(
                        "{} exited ({status}); the end of its log:\n{}",
                        child.name(),
                        child.log_tail(15)
                    )
                })
            })
    }

    /// Stops the agents, the hub, then the API servers; removes the
    /// directory unless `keep` (a failed run keeps its logs).
    pub async fn stop(self, keep: bool) {
        for agent in self.agents {
            agent.stop(STOP_GRACE).await;
        }
        self.hub.stop(STOP_GRACE).await;
        for server in self.servers {
            server.shutdown().await;
        }
        if keep {
            eprintln!("  logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The hub flags that lift its KCP write rate limit (see [`HUB_WRITE_QPS`]).
pub fn unlimited_writes() -> Vec<String> {
    [
        "--write-qps",
        HUB_WRITE_QPS,
        "--write-burst",
        HUB_WRITE_BURST,
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Hub flags for a fleet whose agents all connect from 127.0.0.1: the
/// per-source handshake limit guards against one hostile address, and would
/// otherwise pace a benchmark's thousands of loopback agents.
pub fn one_source_fleet() -> Vec<String> {
    ["--max-tls-handshakes-per-source", "1000000"]
        .map(str::to_owned)
        .to_vec()
}

/// Hub flags that sync Deployments only: the connection benchmarks report
/// one object type, and each synced type costs one placement watch per
/// connected cluster.
pub fn deployments_only() -> Vec<String> {
    ["--resources", "deployments.v1.apps"]
        .map(str::to_owned)
        .to_vec()
}

/// A plain HTTP client for the hub's `/metrics`.
pub type MetricsClient = HttpClient<HttpConnector, Empty<Bytes>>;

/// A new [`MetricsClient`].
pub fn metrics_client() -> MetricsClient {
    HttpClient::builder(TokioExecutor::new()).build_http()
}

/// The sum of the samples of `name` whose labels include `labels`, from the
/// hub serving HTTP at `addr`.
pub async fn hub_metric(
    http: &MetricsClient,
    addr: SocketAddr,
    name: &str,
    labels: &[(&str, &str)],
) -> anyhow::Result<f64> {
    let sums = hub_metrics(http, addr, &[name], labels).await?;
    Ok(sums.first().copied().unwrap_or(0.0))
}

/// [`hub_metric`] for each of `names`, from one read of `/metrics` (with
/// thousands of agents the page is large: one read, not one per name).
pub async fn hub_metrics(
    http: &MetricsClient,
    addr: SocketAddr,
    names: &[&str],
    labels: &[(&str, &str)],
) -> anyhow::Result<Vec<f64>> {
    let uri: hyper::Uri = format!("http://{addr}/metrics").parse()?;
    let response = tokio::time::timeout(Duration::from_secs(10), http.get(uri))
        .await
        .context("the hub did not answer in time")??;
    anyhow::ensure!(
        response.status().is_success(),
        "GET /metrics answered {}",
        response.status()
    );
    let body = response.into_body().collect().await?.to_bytes();
    let text = String::from_utf8(body.to_vec())?;
    let samples = parse_metrics(&text);
    Ok(names
        .iter()
        .map(|name| {
            samples
                .iter()
                .filter(|s| s.name == *name && labels.iter().all(|(k, v)| s.label(k) == Some(v)))
                .map(|s| s.value)
                .sum()
        })
        .collect())
}

/// `objects` Deployments `obj-<i>` dealt round-robin over `clusters` clusters.
fn topology(size: FleetSize) -> Topology {
    let clusters: Vec<String> = (1..=size.clusters.max(1))
        .map(|i| format!("cluster-{i}"))
        .collect();
    let objects = (0..size.objects.max(1))
        .map(|i| DemoObject {
            workspace: WORKSPACE.to_owned(),
            namespace: NAMESPACE.to_owned(),
            name: format!("obj-{i}"),
            cluster: clusters[i % clusters.len()].clone(),
        })
        .collect();
    Topology { clusters, objects }
}

/// Writes `status.readyReplicas = value` into a downstream object.
pub async fn write_counter(api: &Api<Deployment>, name: &str, value: i64) -> kube::Result<()> {
    let patch = serde_json::json!({
        "status": { "observedGeneration": 1, "replicas": 3, "readyReplicas": value }
    });
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map(|_| ())
}

/// The counter a Deployment's status carries, if any.
pub fn counter_of(deployment: &Deployment) -> Option<i64> {
    deployment
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .map(i64::from)
}

/// The hub's tunnel address (for reports).
pub fn describe(addrs: &HubAddrs) -> String {
    format!("tunnel wss://{} http http://{}", addrs.tunnel, addrs.http)
}
