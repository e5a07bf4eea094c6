//! The writer against the test bed's KCP-like API server: status lands in
//! the object's workspace through `/clusters/<workspace>`, for an object KCP
//! placed on the reporting cluster, by server-side apply of `/status` (the
//! default: other controllers' conditions on the object stay) or by merge
//! patch (`--status-write=merge-patch`: the whole `conditions` list is
//! replaced).

mod support;

use std::time::Duration;

use anyhow::{Result, bail};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::{Agent, Pki, TestAgentConnector, placed_on, register_clusters, upsert};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uplink_e2e::apiserver::{ApiServer, ApiServerConfig};
use uplink_hub::{Hub, HubConfig, Metrics, StatusWrite};
use uplink_protocol::{Ack, AgentFrame, Change, DeltaBatch, HubFrame};

const WORKSPACE: &str = "root:org:team-a";

/// Deployment `name`, placed by KCP on cluster `edge-1`.
fn deployment(name: &str) -> Result<Deployment> {
    let (label, value) = placed_on("edge-1");
    Ok(serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default", "labels": {label: value}},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": "nginx"}]}
            }
        }
    }))?)
}

fn condition(condition_type: &str, status: &str) -> Value {
    json!({"type": condition_type, "status": status, "reason": "Test"})
}

/// The test bed with workspace [`WORKSPACE`], cluster `edge-1` registered
/// and Deployment `default/web` placed on it.
struct Bed {
    server: ApiServer,
    pki: Pki,
    /// Deployments in [`WORKSPACE`], as a user of it sees them.
    deployments: Api<Deployment>,
}

impl Bed {
    async fn new() -> Result<Self> {
        let server = ApiServer::start(ApiServerConfig {
            workspaces: vec![WORKSPACE.into()],
            ..ApiServerConfig::default()
        })
        .await?;
        let pki = Pki::new("uplink test CA")?;
        pki.issue_server()?;
        register_clusters(&server, pki.dir.path(), &["edge-1"]).await?;
        let workspace_kubeconfig = pki.path("ws.kubeconfig");
        server.write_kubeconfig(&workspace_kubeconfig, Some(WORKSPACE))?;
        let config = kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&workspace_kubeconfig)?,
            &kube::config::KubeConfigOptions::default(),
        )
        .await?;
        let deployments: Api<Deployment> =
            Api::namespaced(kube::Client::try_from(config)?, "default");
        deployments
            .create(&PostParams::default(), &deployment("web")?)
            .await?;
        Ok(Self {
            server,
            pki,
            deployments,
        })
    }

    /// A hub writing with `status_write`, and cluster `edge-1` connected to it.
    async fn hub(&self, status_write: StatusWrite) -> Result<RunningHub> {
        // The hub's kubeconfig points at another workspace, as KCP's often
        // do; the hub addresses each object's own workspace.
        let kubeconfig = self.pki.path("kcp.kubeconfig");
        self.server.write_kubeconfig(&kubeconfig, Some("root"))?;
        let hub = Hub::bind(HubConfig {
            listen: "127.0.0.1:0".parse()?,
            http_listen: "127.0.0.1:0".parse()?,
            tls_cert: self.pki.path("hub.pem"),
            tls_key: self.pki.path("hub-key.pem"),
            client_ca: self.pki.path("ca.pem"),
            kcp_kubeconfig: Some(kubeconfig),
            write_qps: 0.0,
            status_write,
            // Loopback only; tests of the checks turn them on.
            http_auth: uplink_hub::http::HttpAuthConfig::disabled(),
            ..HubConfig::default()
        })
        .await?;
        let metrics = hub.metrics();
        let connector = TestAgentConnector::new(&self.pki, hub.tunnel_addr());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(hub.run(shutdown.clone()));
        let mut agent = connector.connect(&self.pki.client("edge-1")?).await?;
        agent.hello("edge-1", "s", None, 0).await?;
        Ok(RunningHub {
            agent,
            metrics,
            shutdown,
            task,
            seq: 0,
        })
    }

    /// `web`'s status in KCP.
    async fn status(&self) -> Result<Value> {
        Ok(serde_json::to_value(
            self.deployments.get_status("web").await?.status,
        )?)
    }

    /// `web`'s status once `check` holds for it.
    async fn status_when(&self, what: &str, check: impl Fn(&Value) -> bool) -> Result<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let status = self.status().await?;
            if check(&status) {
                return Ok(status);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("{what}: never happened; last seen {status}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Another controller server-side applies `conditions` to `web`'s status.
    async fn other_controller_applies(&self, conditions: Value) -> Result<()> {
        self.deployments
            .patch_status(
                "web",
                &PatchParams::apply("other-controller"),
                &Patch::Apply(json!({
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "metadata": {"name": "web", "namespace": "default"},
                    "status": {"conditions": conditions},
                })),
            )
            .await?;
        Ok(())
    }

    async fn shutdown(self) {
        self.server.shutdown().await;
    }
}

/// A hub in this process, with cluster `edge-1` connected.
struct RunningHub {
    agent: Agent,
    metrics: std::sync::Arc<Metrics>,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), uplink_hub::HubError>>,
    seq: u64,
}

impl RunningHub {
    /// `edge-1` reports `web` with `status`.
    async fn report(&mut self, status: Value) -> Result<()> {
        self.seq += 1;
        self.send(upsert(self.seq, "web", status)).await
    }

    /// `edge-1` reports `web` deleted.
    async fn report_deleted(&mut self) -> Result<()> {
        self.seq += 1;
        let mut delta = upsert(self.seq, "web", Value::Null);
        delta.change = Change::Deleted;
        self.send(delta).await
    }

    async fn send(&mut self, delta: uplink_protocol::Delta) -> Result<()> {
        self.agent
            .send(&AgentFrame::Deltas(DeltaBatch {
                deltas: vec![delta],
            }))
            .await?;
        assert_eq!(self.agent.recv().await?, HubFrame::Ack(Ack::new(self.seq)));
        Ok(())
    }

    async fn stop(self) -> Result<()> {
        drop(self.agent);
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.task).await???;
        Ok(())
    }
}

/// The condition of `condition_type` in `status`.
fn condition_of<'a>(status: &'a Value, condition_type: &str) -> Option<&'a Value> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == condition_type)
}

#[tokio::test]
async fn status_lands_in_the_objects_workspace() -> Result<()> {
    for status_write in [StatusWrite::Apply, StatusWrite::MergePatch] {
        let bed = Bed::new().await?;
        let mut hub = bed.hub(status_write).await?;
        hub.report(json!({"replicas": 2, "readyReplicas": 1}))
            .await?;
        bed.status_when(&format!("{status_write:?}: the status lands"), |s| {
            *s == json!({"replicas": 2, "readyReplicas": 1})
        })
        .await?;

        // A field that disappears downstream disappears upstream.
        hub.report(json!({"replicas": 2})).await?;
        bed.status_when(
            &format!("{status_write:?}: readyReplicas is removed"),
            |s| *s == json!({"replicas": 2}),
        )
        .await?;
        assert_eq!(
            hub.metrics.kcp_writes.with_label_values(&["success"]).get(),
            2
        );
        hub.stop().await?;
        bed.shutdown().await;
    }
    Ok(())
}

/// Under apply the hub owns the status fields it reports and nothing else:
/// a condition another controller applied to the same object survives every
/// write, including the marking of an object no cluster reports any more,
/// while what the clusters stop reporting (a field, a condition the hub
/// set) disappears.
#[tokio::test]
async fn another_controllers_condition_survives_applies() -> Result<()> {
    let bed = Bed::new().await?;
    let mut hub = bed.hub(StatusWrite::Apply).await?;
    hub.report(json!({
        "replicas": 2,
        "readyReplicas": 2,
        "conditions": [condition("Available", "True"), condition("Progressing", "True")],
    }))
    .await?;
    bed.status_when("the first status", |s| s["readyReplicas"] == 2)
        .await?;
    bed.other_controller_applies(json!([condition("ExternalCheck", "True")]))
        .await?;

    hub.report(json!({"replicas": 2, "conditions": [condition("Available", "False")]}))
        .await?;
    let status = bed
        .status_when("Available=False", |s| {
            condition_of(s, "Available").is_some_and(|c| c["status"] == "False")
        })
        .await?;
    assert_eq!(
        condition_of(&status, "ExternalCheck"),
        Some(&condition("ExternalCheck", "True")),
        "the other controller's condition is gone: {status}"
    );
    assert_eq!(status.get("readyReplicas"), None, "{status}");
    assert_eq!(condition_of(&status, "Progressing"), None, "{status}");

    // The last cluster deletes it: the hub keeps what it reported, marked.
    hub.report_deleted().await?;
    let status = bed
        .status_when("StatusReported=False", |s| {
            condition_of(s, "StatusReported").is_some_and(|c| c["status"] == "False")
        })
        .await?;
    assert_eq!(status["replicas"], 2, "{status}");
    assert!(condition_of(&status, "Available").is_some(), "{status}");
    assert!(condition_of(&status, "ExternalCheck").is_some(), "{status}");

    // Reported again: the mark, which the hub no longer applies, goes.
    hub.report(json!({"replicas": 3, "conditions": [condition("Available", "True")]}))
        .await?;
    let status = bed
        .status_when("reported again", |s| s["replicas"] == 3)
        .await?;
    assert_eq!(condition_of(&status, "StatusReported"), None, "{status}");
    assert!(condition_of(&status, "ExternalCheck").is_some(), "{status}");

    // Who owns what, as the API server records it.
    let object = bed.deployments.get_status("web").await?;
    let managers: Vec<(String, String, String)> = object
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter(|entry| entry.fields_v1.is_some())
        .map(|entry| {
            (
                entry.manager.unwrap_or_default(),
                entry.operation.unwrap_or_default(),
                entry.subresource.unwrap_or_default(),
            )
        })
        .filter(|(manager, _, _)| manager == "uplink-hub" || manager == "other-controller")
        .collect();
    assert!(
        managers.contains(&("uplink-hub".into(), "Apply".into(), "status".into()))
            && managers.contains(&("other-controller".into(), "Apply".into(), "status".into())),
        "{managers:?}"
    );
    hub.stop().await?;
    bed.shutdown().await;
    Ok(())
}

/// For contrast: a merge patch replaces the whole `conditions` list, so
/// another controller's condition goes as soon as the hub's change.
#[tokio::test]
async fn merge_patches_replace_another_controllers_condition() -> Result<()> {
    let bed = Bed::new().await?;
    let mut hub = bed.hub(StatusWrite::MergePatch).await?;
    hub.report(json!({"replicas": 2, "conditions": [condition("Available", "True")]}))
        .await?;
    bed.status_when("the first status", |s| s["replicas"] == 2)
        .await?;
    bed.other_controller_applies(json!([condition("ExternalCheck", "True")]))
        .await?;
    assert!(condition_of(&bed.status().await?, "ExternalCheck").is_some());

    hub.report(json!({"replicas": 2, "conditions": [condition("Available", "False")]}))
        .await?;
    let status = bed
        .status_when("Available=False", |s| {
            condition_of(s, "Available").is_some_and(|c| c["status"] == "False")
        })
        .await?;
    assert_eq!(condition_of(&status, "ExternalCheck"), None, "{status}");
    hub.stop().await?;
    bed.shutdown().await;
    Ok(())
}

/// KCP holds a status no hub of this process wrote (an earlier hub did, or
/// someone else): under merge patch the first write diffs against all of
/// it, so fields no cluster reports are removed rather than left behind.
#[tokio::test]
async fn the_first_merge_patch_removes_fields_kcp_holds_but_no_cluster_reports() -> Result<()> {
    let bed = Bed::new().await?;
    // What an earlier hub left in KCP.
    bed.deployments
        .patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"replicas": 1, "readyReplicas": 2}})),
        )
        .await?;
    let mut hub = bed.hub(StatusWrite::MergePatch).await?;
    hub.report(json!({"replicas": 1})).await?;
    bed.status_when("readyReplicas, which no cluster reports, is removed", |s| {
        *s == json!({"replicas": 1})
    })
    .await?;
    hub.stop().await?;
    bed.shutdown().await;
    Ok(())
}

/// Under apply the first write after a restart diffs against what the hub
/// owns (read back from `managedFields`): what an earlier hub applied and no
/// cluster reports is removed; another controller's condition is not.
#[tokio::test]
async fn the_first_apply_removes_what_an_earlier_hub_applied_and_no_cluster_reports() -> Result<()>
{
    let bed = Bed::new().await?;
    // What an earlier hub applied.
    bed.deployments
        .patch_status(
            "web",
            &PatchParams::apply("uplink-hub").force(),
            &Patch::Apply(json!({
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "web", "namespace": "default"},
                "status": {"replicas": 1, "readyReplicas": 2},
            })),
        )
        .await?;
    bed.other_controller_applies(json!([condition("ExternalCheck", "True")]))
        .await?;
    let mut hub = bed.hub(StatusWrite::Apply).await?;
    hub.report(json!({"replicas": 1})).await?;
    bed.status_when("readyReplicas, which no cluster reports, is removed", |s| {
        *s == json!({"replicas": 1, "conditions": [condition("ExternalCheck", "True")]})
    })
    .await?;
    hub.stop().await?;
    bed.shutdown().await;
    Ok(())
}
