//! Many agents in this process: the agent's own library
//! ([`uplink_agent::Agent`]), each with its own certificate identity, TLS
//! connection and session, but with watch events fed by the benchmark instead
//! of a Kubernetes API server, so thousands fit on two cores.
//!
//! Every simulated cluster has one namespace, [`DOWNSTREAM_NAMESPACE`], whose
//! locator points at the benchmark's namespace in the cluster's workspace
//! ([`WORKSPACE`] unless [`SimulatedAgents::start_in`] names another per
//! cluster), and `objects` Deployments in it named `<cluster>-<i>`. The agents serve no HTTP (one
//! descriptor each: the tunnel); their metrics are read in-process.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uplink_agent::mapping::Locator;
use uplink_agent::metrics::Metrics;
use uplink_agent::watch::{
    ObservedNamespace, ObservedObject, WatchEvent, WatchId, WatchedResource,
};
use uplink_agent::{Agent, AgentConfig, AgentError, ReconnectSettings, ResourceSpec};

use super::fleet::{NAMESPACE, WORKSPACE};

/// The one downstream namespace of every simulated cluster.
pub const DOWNSTREAM_NAMESPACE: &str = "kcp-bench";
/// Watch events queued per agent before the feeder waits.
const EVENT_QUEUE: usize = 1_024;
/// How long the agents get to say goodbye when stopped.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// What every simulated agent is configured with.
#[derive(Debug, Clone)]
pub struct SimulatedSettings {
    /// `wss://host:port` of the hub; of a replicated hub, every replica's,
    /// comma-separated (each agent keeps a session with each and routes by
    /// shard; note every simulated object lives in one workspace, so one
    /// shard).
    pub hub_url: String,
    /// Holds `ca.crt` and `<cluster>.crt`/`.key` for every cluster.
    pub pki: std::path::PathBuf,
    pub heartbeat: Duration,
    pub reconnect: ReconnectSettings,
    /// Objects per cluster.
    pub objects: usize,
}

/// One simulated agent: what the benchmark needs to drive and read it.
#[derive(Debug, Clone)]
pub struct SimulatedAgent {
    pub cluster: String,
    /// The same registry a real agent serves on `/metrics`.
    pub metrics: Metrics,
    /// Feeds its watch: send [`SimulatedAgent::applied`] events here.
    pub events: mpsc::Sender<WatchEvent>,
    resource: Arc<WatchedResource>,
}

impl SimulatedAgent {
    /// Object `index` of this cluster, with `status`.
    pub fn applied(&self, index: usize, status: serde_json::Value) -> WatchEvent {
        WatchEvent::Applied(ObservedObject {
            resource: Arc::clone(&self.resource),
            namespace: Some(DOWNSTREAM_NAMESPACE.to_owned()),
            name: object_name(&self.cluster, index),
            uid: format!("uid-{}-{index}", self.cluster),
            generation: Some(1),
            status,
            upsync: None,
        })
    }
}

/// The name of object `index` of `cluster`, downstream and in KCP alike.
pub fn object_name(cluster: &str, index: usize) -> String {
    format!("{cluster}-{index}")
}

/// A Deployment status whose counter is `value`, the size of a real one.
pub fn status(value: i64) -> serde_json::Value {
    serde_json::json!({
        "observedGeneration": 1,
        "replicas": 3,
        "updatedReplicas": 3,
        "readyReplicas": value,
        "availableReplicas": value,
        "conditions": [
            {
                "type": "Available",
                "status": "True",
                "reason": "MinimumReplicasAvailable",
                "message": "Deployment has minimum availability.",
            },
            {
                "type": "Progressing",
                "status": "True",
                "reason": "NewReplicaSetAvailable",
                "message": "ReplicaSet has successfully progressed.",
            },
        ],
    })
}

/// The running agents; [`SimulatedAgents::stop`] stops them in order.
#[derive(Debug)]
pub struct SimulatedAgents {
    pub agents: Vec<SimulatedAgent>,
    shutdown: CancellationToken,
    tasks: JoinSet<Result<(), AgentError>>,
}

impl SimulatedAgents {
    /// Binds and starts one agent per name in `clusters`, all in
    /// [`WORKSPACE`]. Each first lists its objects (status counter 0), so it
    /// connects with a full snapshot.
    pub async fn start(
        clusters: &[String],
        settings: &SimulatedSettings,
    ) -> anyhow::Result<SimulatedAgents> {
        let placed: Vec<(String, String)> = clusters
            .iter()
            .map(|c| (c.clone(), WORKSPACE.to_owned()))
            .collect();
        SimulatedAgents::start_in(&placed, settings).await
    }

    /// [`SimulatedAgents::start`] with a KCP workspace per cluster:
    /// `(cluster, workspace)`, the workspace its namespace's locator names
    /// (the hub shards by workspace).
    pub async fn start_in(
        clusters: &[(String, String)],
        settings: &SimulatedSettings,
    ) -> anyhow::Result<SimulatedAgents> {
        let spec = ResourceSpec::deployments();
        let resource = Arc::new(WatchedResource {
            spec: spec.clone(),
            kind: "Deployment".to_owned(),
            namespaced: true,
            upsync: false,
        });
        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let mut agents = Vec::with_capacity(clusters.len());
        for (cluster, workspace) in clusters {
            let locator = Locator {
                workspace: workspace.clone(),
                namespace: NAMESPACE.to_owned(),
            };
            let config = AgentConfig {
                cluster: cluster.clone(),
                hub_url: settings.hub_url.clone(),
                tls_cert: settings.pki.join(format!("{cluster}.crt")),
                tls_key: settings.pki.join(format!("{cluster}.key")),
                hub_ca: settings.pki.join("ca.crt"),
                resources: vec![spec.clone()],
                http_listen: None,
                heartbeat_interval: settings.heartbeat,
                reconnect: settings.reconnect,
                capacity: false,
                ..AgentConfig::default()
            };
            let (tx, rx) = mpsc::channel(EVENT_QUEUE);
            let agent = Agent::bind_with_events(config, tokio_stream_of(rx))
                .await
                .with_context(|| format!("starting agent {cluster}"))?;
            let simulated = SimulatedAgent {
                cluster: cluster.clone(),
                metrics: agent.metrics().clone(),
                events: tx,
                resource: Arc::clone(&resource),
            };
            // The initial lists: the namespace with its locator, then every
            // object. The queue is fresh, so only its bound can make us wait.
            let mut initial = vec![
                WatchEvent::Restarted(WatchId::Namespaces),
                WatchEvent::NamespaceApplied(ObservedNamespace {
                    name: DOWNSTREAM_NAMESPACE.to_owned(),
                    locator: Some(locator.to_annotation()),
                }),
                WatchEvent::Listed(WatchId::Namespaces),
                WatchEvent::Restarted(WatchId::Resource(spec.clone())),
            ];
            initial.extend((0..settings.objects).map(|i| simulated.applied(i, status(0))));
            initial.push(WatchEvent::Listed(WatchId::Resource(spec.clone())));
            tasks.spawn(agent.run(shutdown.child_token()));
            for event in initial {
                simulated
                    .events
                    .send(event)
                    .await
                    .with_context(|| format!("agent {cluster} stopped while listing"))?;
            }
            agents.push(simulated);
        }
        Ok(SimulatedAgents {
            agents,
            shutdown,
            tasks,
        })
    }

    /// Agents whose session is established right now.
    pub fn connected(&self) -> usize {
        self.agents
            .iter()
            .filter(|a| a.metrics.connected.get() > 0)
            .count()
    }

    /// Connection attempts after each agent's first, summed.
    pub fn reconnects(&self) -> u64 {
        self.agents.iter().map(|a| a.metrics.reconnects.get()).sum()
    }

    /// Outbox entries not acknowledged yet, summed.
    pub fn unacked(&self) -> i64 {
        self.agents
            .iter()
            .map(|a| a.metrics.outbox_entries.get())
            .sum()
    }

    /// An agent that ended on its own, with why; `None` while all run.
    pub fn failed(&mut self) -> Option<String> {
        match self.tasks.try_join_next()? {
            Ok(Ok(())) => Some("an agent stopped on its own".to_owned()),
            Ok(Err(error)) => Some(format!("an agent failed: {error}")),
            Err(error) => Some(format!("an agent task failed: {error}")),
        }
    }

    /// Stops every agent (each flushes and says `Bye`), waiting a bounded time.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(STOP_GRACE, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        self.tasks.abort_all();
    }
}

/// A receiver as a stream (the agent takes a stream of watch events).
fn tokio_stream_of(
    mut rx: mpsc::Receiver<WatchEvent>,
) -> impl futures::Stream<Item = WatchEvent> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Writes a PKI with one client certificate per cluster into `dir`.
pub async fn write_pki(dir: &Path, clusters: &[String]) -> anyhow::Result<()> {
    let (dir, clusters) = (dir.to_owned(), clusters.to_vec());
    tokio::task::spawn_blocking(move || {
        crate::pki::DevPki::new("uplink-bench-ca").and_then(|ca| ca.write_all(&dir, &clusters, &[]))
    })
    .await
    .context("the certificate task failed")?
    .context("writing the benchmark's certificates")
}

/// Starts KCP with the benchmark's workspace, writes the hub's kubeconfig
/// to `kubeconfig`, and returns clients of that workspace and of the
/// workspace holding the SyncTargets.
pub async fn start_kcp(
    kubeconfig: &Path,
) -> anyhow::Result<(crate::apiserver::ApiServer, KcpClients)> {
    use crate::apiserver::{ApiServer, ApiServerConfig};
    use crate::demo::seed::SYNCTARGET_WORKSPACE;

    let kcp = ApiServer::start(ApiServerConfig {
        workspaces: vec![WORKSPACE.to_owned()],
        ..ApiServerConfig::default()
    })
    .await
    .context("starting KCP")?;
    kcp.write_kubeconfig(kubeconfig, None)?;
    let mut connections = crate::demo::connections::Connections::default();
    for workspace in [WORKSPACE, SYNCTARGET_WORKSPACE] {
        connections
            .add_workspace(workspace, &kcp.kubeconfig_yaml(Some(workspace)))
            .await?;
    }
    let clients = KcpClients {
        workspace: connections
            .workspace(WORKSPACE)
            .context("no client for KCP")?,
        root: connections
            .workspace(SYNCTARGET_WORKSPACE)
            .context("no client for KCP")?,
    };
    Ok((kcp, clients))
}

/// Clients of the benchmark's KCP.
#[derive(Clone)]
pub struct KcpClients {
    /// The benchmark's workspace.
    pub workspace: kube::Client,
    /// The workspace holding the SyncTargets.
    pub root: kube::Client,
}

impl std::fmt::Debug for KcpClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KcpClients")
    }
}

/// Registers every simulated cluster with KCP (its SyncTarget) and creates,
/// in the benchmark's workspace, the namespace and every cluster's objects,
/// each placed on its cluster, so the hub accepts their reports and its
/// writes land on real objects.
pub async fn seed_kcp(kcp: &KcpClients, clusters: &[String], objects: usize) -> anyhow::Result<()> {
    use futures::{StreamExt as _, TryStreamExt as _};

    use crate::demo::seed::{create, namespace_object, placed_deployment, register_clusters};
    use crate::demo::topology::DemoObject;

    register_clusters(kcp.root.clone(), clusters).await?;
    let client = kcp.workspace.clone();
    create(
        &kube::Api::all(client.clone()),
        &namespace_object(NAMESPACE, None),
        WORKSPACE,
    )
    .await?;
    let api = kube::Api::namespaced(client, NAMESPACE);
    let all = clusters
        .iter()
        .flat_map(|cluster| (0..objects).map(move |i| (cluster, i)));
    futures::stream::iter(all)
        .map(|(cluster, i)| {
            let object = DemoObject {
                workspace: WORKSPACE.to_owned(),
                namespace: NAMESPACE.to_owned(),
                name: object_name(cluster, i),
                cluster: cluster.clone(),
            };
            let api = api.clone();
            async move { create(&api, &placed_deployment(&object), WORKSPACE).await }
        })
        .buffer_unordered(32)
        .try_collect::<()>()
        .await
        .context("seeding KCP")
}

/// [`seed_kcp`] over many workspaces: registers every cluster with KCP
/// (`root`: the workspace holding the SyncTargets), then creates in each
/// cluster's workspace (`(cluster, workspace)`, a client per workspace in
/// `workspaces`) the namespace and the cluster's objects, placed on it.
pub async fn seed_kcp_in(
    root: kube::Client,
    workspaces: &std::collections::BTreeMap<String, kube::Client>,
    clusters: &[(String, String)],
    objects: usize,
) -> anyhow::Result<()> {
    use futures::{StreamExt as _, TryStreamExt as _};

    use crate::demo::seed::{create, namespace_object, placed_deployment, register_clusters};
    use crate::demo::topology::DemoObject;

    let names: Vec<String> = clusters.iter().map(|(c, _)| c.clone()).collect();
    register_clusters(root, &names).await?;
    for (workspace, client) in workspaces {
        create(
            &kube::Api::all(client.clone()),
            &namespace_object(NAMESPACE, None),
            workspace,
        )
        .await?;
    }
    let all = clusters
        .iter()
        .flat_map(|(cluster, workspace)| (0..objects).map(move |i| (cluster, workspace, i)));
    futures::stream::iter(all)
        .map(|(cluster, workspace, i)| {
            let client = workspaces.get(workspace).cloned();
            async move {
                let client =
                    client.with_context(|| format!("no client for workspace {workspace}"))?;
                let object = DemoObject {
                    workspace: workspace.clone(),
                    namespace: NAMESPACE.to_owned(),
                    name: object_name(cluster, i),
                    cluster: cluster.clone(),
                };
                let api = kube::Api::namespaced(client, NAMESPACE);
                create(&api, &placed_deployment(&object), workspace).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(32)
        .try_collect::<()>()
        .await
        .context("seeding KCP")
}
