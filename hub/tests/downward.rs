//! The downward lane against the test bed's KCP: an agent speaking protocol
//! version 2 gets a snapshot of what KCP placed on its cluster, then every
//! change (spec, never status), and a delete when the object is unplaced or
//! deleted; the hub holds a deleted object in KCP with its finalizer until
//! the agent confirms the downstream delete.

mod support;

use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use std::sync::Arc;
use support::{Agent, Pki, TestAgentConnector, placed_on, register_clusters};
use tokio_util::sync::CancellationToken;
use uplink_e2e::apiserver::{ApiServer, ApiServerConfig};

use uplink_hub::{Hub, HubConfig, Metrics};
use uplink_protocol::{
    AgentFrame, DownwardAck, DownwardChange, DownwardDelta, HubFrame, ObjectRef,
};

const WORKSPACE: &str = "root:org:team-a";
const FINALIZER_PREFIX: &str = "workload.kcp.io/syncer-";

fn deployment(name: &str, replicas: i32, placed: bool) -> Result<Deployment> {
    let labels = if placed {
        let (label, value) = placed_on("edge-1");
        json!({"app": name, label: value})
    } else {
        json!({"app": name})
    };
    Ok(serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default", "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": "nginx"}]}
            }
        }
    }))?)
}

/// What the downward lane sent.
#[derive(Debug)]
enum Down {
    Delta(Box<DownwardDelta>),
    /// A snapshot's end, with its sequence number.
    End(u64),
}

impl Down {
    fn delta(&self) -> Result<&DownwardDelta> {
        match self {
            Down::Delta(delta) => Ok(delta),
            Down::End(_) => bail!("expected a delta, got the snapshot's end"),
        }
    }
}

/// The next `count` things the downward lane sends (other frames skipped).
async fn downward(agent: &mut Agent, count: usize) -> Result<Vec<Down>> {
    let mut got = Vec::new();
    while got.len() < count {
        match agent.recv().await? {
            HubFrame::Downward(batch) | HubFrame::DownwardSnapshotChunk(batch) => {
                got.extend(batch.deltas.into_iter().map(|d| Down::Delta(Box::new(d))));
            }
            HubFrame::DownwardSnapshotEnd(end) => got.push(Down::End(end.seq)),
            _ => {}
        }
    }
    Ok(got)
}

fn manifest(delta: &DownwardDelta) -> Result<Value> {
    match &delta.change {
        DownwardChange::Apply { manifest_json } => Ok(serde_json::from_str(manifest_json)?),
        DownwardChange::Delete => bail!("expected an Apply of {:?}", delta.object.name),
    }
}

async fn ack(agent: &mut Agent, seq: u64) -> Result<()> {
    agent
        .send(&AgentFrame::DownwardAck(DownwardAck {
            seq,
            failures: Vec::new(),
        }))
        .await
}

fn finalizers(deployment: &Deployment) -> Vec<String> {
    deployment
        .metadata
        .finalizers
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|f| f.starts_with(FINALIZER_PREFIX))
        .collect()
}

/// Polls `check` for up to 10 s.
async fn until<F, Fut>(what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if check().await? {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn placed_objects_go_down_changes_follow_and_deletes_wait_for_the_cluster() -> Result<()> {
    let kcp = Fixture::start().await?;
    let deployments = kcp.deployments.clone();
    deployments
        .create(&PostParams::default(), &deployment("api", 2, true)?)
        .await?;
    deployments
        .create(&PostParams::default(), &deployment("elsewhere", 1, false)?)
        .await?;
    let metrics = kcp.metrics.clone();

    let mut agent = kcp.connector.connect(&kcp.pki.client("edge-1")?).await?;
    let HubFrame::Welcome(welcome) = agent
        .hello_v2("edge-1", "s1", &["deployments.v1.apps"])
        .await?
    else {
        bail!("expected Welcome");
    };
    assert_eq!(welcome.protocol_version, 2);
    let target = welcome
        .sync_target
        .context("Welcome names the SyncTarget")?;
    assert_eq!(
        (target.workspace.as_str(), target.name.as_str()),
        ("root", "edge-1")
    );

    // The snapshot: what is placed on edge-1, not the rest; spec, no status.
    let HubFrame::DownwardSnapshotBegin(begin) = agent.recv().await? else {
        bail!("expected the downward snapshot");
    };
    assert_eq!(begin.objects, 2);
    let snapshot = downward(&mut agent, 3).await?;
    let Down::End(end) = snapshot[2] else {
        bail!("the end comes last: {snapshot:?}");
    };
    let entries: Vec<&DownwardDelta> = snapshot[..2]
        .iter()
        .map(Down::delta)
        .collect::<Result<_>>()?;
    let mut names: Vec<&str> = entries.iter().map(|d| d.object.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["api", "web"]);
    assert_eq!(end, entries.iter().map(|d| d.seq).max().unwrap_or(0) + 1);
    let web = entries
        .iter()
        .find(|d| d.object.name == "web")
        .context("web")?;
    assert_eq!(
        web.object,
        ObjectRef {
            uid: web.object.uid.clone(),
            ..support::object("web")
        }
    );
    assert!(!web.object.uid.is_empty(), "the upstream uid travels");
    let web_manifest = manifest(web)?;
    assert_eq!(web_manifest["spec"]["replicas"], 2);
    assert!(web_manifest.get("status").is_none());
    for field in ["resourceVersion", "uid", "managedFields", "finalizers"] {
        assert!(
            web_manifest["metadata"].get(field).is_none(),
            "{field}: {web_manifest}"
        );
    }
    ack(&mut agent, end).await?;

    // The hub holds both objects in KCP with its finalizer.
    until("the hub's finalizer on web and api", async || {
        for name in ["web", "api"] {
            if finalizers(&deployments.get(name).await?)
                != [format!("{FINALIZER_PREFIX}{}", target.key)]
            {
                return Ok(false);
            }
        }
        Ok(true)
    })
    .await?;

    // A change of the spec goes down; a status write does not.
    deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 5}})),
        )
        .await?;
    deployments
        .patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"replicas": 5}})),
        )
        .await?;
    let changed = downward(&mut agent, 1).await?;
    let changed = changed[0].delta()?;
    assert_eq!(changed.object.name, "web");
    assert_eq!(manifest(changed)?["spec"]["replicas"], 5);
    ack(&mut agent, changed.seq).await?;

    // Unplaced: deleted downstream; the upstream object stays and loses the
    // finalizer.
    let (label, _) = placed_on("edge-1");
    deployments
        .patch(
            "api",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {label: null}}})),
        )
        .await?;
    let unplaced = downward(&mut agent, 1).await?;
    let unplaced = unplaced[0].delta()?;
    assert_eq!(
        (unplaced.object.name.as_str(), &unplaced.change),
        ("api", &DownwardChange::Delete)
    );
    until("api's finalizer to go", async || {
        Ok(finalizers(&deployments.get("api").await?).is_empty())
    })
    .await?;

    // Deleted in KCP: held by the finalizer until the agent confirms the
    // downstream delete.
    deployments.delete("web", &DeleteParams::default()).await?;
    let deleted = downward(&mut agent, 1).await?;
    let deleted = deleted[0].delta()?;
    assert_eq!(
        (deleted.object.name.as_str(), &deleted.change),
        ("web", &DownwardChange::Delete)
    );
    let held = deployments
        .get_opt("web")
        .await?
        .context("held by the finalizer")?;
    ensure!(held.metadata.deletion_timestamp.is_some());
    ack(&mut agent, unplaced.seq.max(deleted.seq)).await?;
    until("web to be gone from KCP", async || {
        Ok(deployments.get_opt("web").await?.is_none())
    })
    .await?;
    assert_eq!(
        metrics
            .downstream_objects
            .with_label_values(&["edge-1"])
            .get(),
        0
    );

    drop(agent);
    kcp.stop().await
}

/// KCP with `web` placed on edge-1, and a hub.
struct Fixture {
    server: ApiServer,
    pki: Pki,
    deployments: Api<Deployment>,
    connector: TestAgentConnector,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), uplink_hub::HubError>>,
}

impl Fixture {
    async fn start() -> Result<Self> {
        let server = ApiServer::start(ApiServerConfig {
            workspaces: vec![WORKSPACE.into()],
            ..ApiServerConfig::default()
        })
        .await?;
        let pki = Pki::new("uplink test CA")?;
        pki.issue_server()?;
        register_clusters(&server, pki.dir.path(), &["edge-1"]).await?;
        let kubeconfig = pki.path("kcp.kubeconfig");
        server.write_kubeconfig(&kubeconfig, Some("root"))?;
        let workspace_kubeconfig = pki.path("ws.kubeconfig");
        server.write_kubeconfig(&workspace_kubeconfig, Some(WORKSPACE))?;
        let client = kube::Client::try_from(
            kube::Config::from_custom_kubeconfig(
                kube::config::Kubeconfig::read_from(&workspace_kubeconfig)?,
                &kube::config::KubeConfigOptions::default(),
            )
            .await?,
        )?;
        let deployments: Api<Deployment> = Api::namespaced(client, "default");
        deployments
            .create(&PostParams::default(), &deployment("web", 2, true)?)
            .await?;
        let hub = Hub::bind(HubConfig {
            listen: "127.0.0.1:0".parse()?,
            http_listen: "127.0.0.1:0".parse()?,
            tls_cert: pki.path("hub.pem"),
            tls_key: pki.path("hub-key.pem"),
            client_ca: pki.path("ca.pem"),
            kcp_kubeconfig: Some(kubeconfig),
            write_qps: 0.0,
            // Loopback only; tests of the checks turn them on.
            http_auth: uplink_hub::http::HttpAuthConfig::disabled(),
            ..HubConfig::default()
        })
        .await?;
        let connector = TestAgentConnector::new(&pki, hub.tunnel_addr());
        let metrics = hub.metrics();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(hub.run(shutdown.clone()));
        Ok(Self {
            server,
            pki,
            deployments,
            connector,
            metrics,
            shutdown,
            task,
        })
    }

    /// A version 2 agent of edge-1 in agent session `session`.
    async fn agent(&self, session: &str) -> Result<Agent> {
        let mut agent = self.connector.connect(&self.pki.client("edge-1")?).await?;
        let HubFrame::Welcome(_) = agent
            .hello_v2("edge-1", session, &["deployments.v1.apps"])
            .await?
        else {
            bail!("expected Welcome");
        };
        Ok(agent)
    }

    async fn scale(&self, replicas: i32) -> Result<()> {
        self.deployments
            .patch(
                "web",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"replicas": replicas}})),
            )
            .await?;
        Ok(())
    }

    async fn stop(self) -> Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.task).await???;
        self.server.shutdown().await;
        Ok(())
    }
}

/// The first frame of what the lane sends: a snapshot's begin or a delta.
async fn starts_with_snapshot(agent: &mut Agent) -> Result<bool> {
    loop {
        match agent.recv().await? {
            HubFrame::DownwardSnapshotBegin(_) => return Ok(true),
            HubFrame::Downward(_) | HubFrame::DownwardSnapshotChunk(_) => return Ok(false),
            _ => {}
        }
    }
}

#[tokio::test]
async fn the_same_agent_session_resumes_unless_cut_off_in_a_snapshot() -> Result<()> {
    let kcp = Fixture::start().await?;
    let mut agent = kcp.agent("s1").await?;
    assert!(starts_with_snapshot(&mut agent).await?);
    let snapshot = downward(&mut agent, 2).await?;
    let Down::End(end) = snapshot[1] else {
        bail!("expected the end: {snapshot:?}");
    };
    // Cut off before acknowledging the end: the sweep may not have
    // happened, so the next connection gets a snapshot again.
    ack(&mut agent, end - 1).await?;
    drop(agent);
    let mut agent = kcp.agent("s1").await?;
    assert!(starts_with_snapshot(&mut agent).await?, "a new snapshot");
    let snapshot = downward(&mut agent, 2).await?;
    let Down::End(end) = snapshot[1] else {
        bail!("expected the end: {snapshot:?}");
    };
    ack(&mut agent, end).await?;

    // A change not acknowledged before the connection drops is sent again
    // to the same session, without a snapshot.
    kcp.scale(3).await?;
    let change = downward(&mut agent, 1).await?;
    let seq = change[0].delta()?.seq;
    drop(agent);
    let mut agent = kcp.agent("s1").await?;
    let again = match agent.recv().await? {
        HubFrame::Downward(batch) => batch.deltas,
        other => bail!("expected the resent change, got {other:?}"),
    };
    assert_eq!(again.iter().map(|d| d.seq).collect::<Vec<_>>(), [seq]);
    assert_eq!(manifest(&again[0])?["spec"]["replicas"], 3);

    // Another agent session (a restarted agent) gets a snapshot.
    drop(agent);
    let mut agent = kcp.agent("s2").await?;
    assert!(starts_with_snapshot(&mut agent).await?);
    drop(agent);
    kcp.stop().await
}

#[tokio::test]
async fn an_apply_the_cluster_refused_shows_on_the_upstream_object() -> Result<()> {
    let kcp = Fixture::start().await?;
    let mut agent = kcp.agent("s1").await?;
    assert!(starts_with_snapshot(&mut agent).await?);
    let snapshot = downward(&mut agent, 2).await?;
    let Down::End(end) = snapshot[1] else {
        bail!("expected the end: {snapshot:?}");
    };
    ack(&mut agent, end).await?;
    // The cluster reports web's status, so KCP shows one.
    agent
        .send(&AgentFrame::Deltas(uplink_protocol::DeltaBatch {
            deltas: vec![support::upsert(1, "web", json!({"replicas": 2}))],
        }))
        .await?;

    kcp.scale(4).await?;
    let change = downward(&mut agent, 1).await?;
    let seq = change[0].delta()?.seq;
    agent
        .send(&AgentFrame::DownwardAck(DownwardAck {
            seq,
            failures: vec![uplink_protocol::ApplyFailure {
                seq,
                reason: uplink_protocol::ApplyFailure::CONFLICT.into(),
                message: "spec.replicas is owned by kubectl".into(),
            }],
        }))
        .await?;
    let applied = async |deployments: &Api<Deployment>| -> Result<Option<Value>> {
        let status = serde_json::to_value(deployments.get_status("web").await?.status)?;
        Ok(status["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "DownstreamApplied")
            .cloned())
    };
    until("the DownstreamApplied condition", async || {
        Ok(applied(&kcp.deployments).await?.is_some_and(|c| {
            c["status"] == "False"
                && c["reason"] == "Conflict"
                && c["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("edge-1") && m.contains("owned by kubectl"))
        }))
    })
    .await?;

    // Applied the next time: the condition goes.
    kcp.scale(5).await?;
    let change = downward(&mut agent, 1).await?;
    ack(&mut agent, change[0].delta()?.seq).await?;
    until("the condition to go", async || {
        Ok(applied(&kcp.deployments).await?.is_none())
    })
    .await?;
    drop(agent);
    kcp.stop().await
}
