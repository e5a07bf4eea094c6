//! The writer against the test bed's KCP-like API server: status lands in
//! the object's workspace through `/clusters/<workspace>`, with a merge patch
//! of `/status`, for an object KCP placed on the reporting cluster.

mod support;

use std::time::Duration;

use anyhow::{Result, bail};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, PostParams};
use serde_json::json;
use support::{Pki, TestAgentConnector, placed_on, register_clusters, upsert};
use tokio_util::sync::CancellationToken;
use uplink_e2e::apiserver::{ApiServer, ApiServerConfig};
use uplink_hub::{Hub, HubConfig};
use uplink_protocol::{Ack, AgentFrame, DeltaBatch, HubFrame};

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

#[tokio::test]
async fn status_lands_in_the_objects_workspace() -> Result<()> {
    let server = ApiServer::start(ApiServerConfig {
        workspaces: vec![WORKSPACE.into()],
        ..ApiServerConfig::default()
    })
    .await?;
    let pki = Pki::new("uplink test CA")?;
    pki.issue_server()?;
    register_clusters(&server, pki.dir.path(), &["edge-1"]).await?;
    // The hub's kubeconfig points at another workspace, as KCP's often do;
    // the hub addresses each object's own workspace.
    let kubeconfig = pki.path("kcp.kubeconfig");
    server.write_kubeconfig(&kubeconfig, Some("root"))?;

    // The client the test uses to look at the workspace.
    let workspace_kubeconfig = pki.path("ws.kubeconfig");
    server.write_kubeconfig(&workspace_kubeconfig, Some(WORKSPACE))?;
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&workspace_kubeconfig)?,
        &kube::config::KubeConfigOptions::default(),
    )
    .await?;
    let client = kube::Client::try_from(config)?;
    let deployments: Api<Deployment> = Api::namespaced(client, "default");
    deployments
        .create(&PostParams::default(), &deployment("web")?)
        .await?;

    let hub = Hub::bind(HubConfig {
        listen: "127.0.0.1:0".parse()?,
        http_listen: "127.0.0.1:0".parse()?,
        tls_cert: pki.path("hub.pem"),
        tls_key: pki.path("hub-key.pem"),
        client_ca: pki.path("ca.pem"),
        kcp_kubeconfig: Some(kubeconfig),
        write_qps: 0.0,
        ..HubConfig::default()
    })
    .await?;
    let metrics = hub.metrics();
    let connector = TestAgentConnector::new(&pki, hub.tunnel_addr());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(hub.run(shutdown.clone()));

    let mut agent = connector.connect(&pki.client("edge-1")?).await?;
    agent.hello("edge-1", "s", None, 0).await?;
    agent
        .send(&AgentFrame::Deltas(DeltaBatch {
            deltas: vec![upsert(1, "web", json!({"replicas": 2, "readyReplicas": 1}))],
        }))
        .await?;
    assert_eq!(agent.recv().await?, HubFrame::Ack(Ack::new(1)));

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = deployments.get_status("web").await?.status;
        let status = serde_json::to_value(status)?;
        if status == json!({"replicas": 2, "readyReplicas": 1}) {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("status never landed; last seen {status}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A field that disappears downstream disappears upstream.
    agent
        .send(&AgentFrame::Deltas(DeltaBatch {
            deltas: vec![upsert(2, "web", json!({"replicas": 2}))],
        }))
        .await?;
    assert_eq!(agent.recv().await?, HubFrame::Ack(Ack::new(2)));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = serde_json::to_value(deployments.get_status("web").await?.status)?;
        if status == json!({"replicas": 2}) {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("readyReplicas was never removed; last seen {status}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    assert_eq!(metrics.kcp_writes.with_label_values(&["success"]).get(), 2);

    drop(agent);
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(20), task).await???;
    server.shutdown().await;
    Ok(())
}

/// KCP holds a status no hub of this process wrote (an earlier hub did, or
/// someone else): the first write diffs against it, so fields no cluster
/// reports are removed rather than left behind.
#[tokio::test]
async fn the_first_write_removes_fields_kcp_holds_but_no_cluster_reports() -> Result<()> {
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
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&workspace_kubeconfig)?,
        &kube::config::KubeConfigOptions::default(),
    )
    .await?;
    let client = kube::Client::try_from(config)?;
    let deployments: Api<Deployment> = Api::namespaced(client, "default");
    deployments
        .create(&PostParams::default(), &deployment("web")?)
        .await?;
    // What an earlier hub left in KCP.
    deployments
        .patch_status(
            "web",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"status": {"replicas": 1, "readyReplicas": 2}})),
        )
        .await?;

    let hub = Hub::bind(HubConfig {
        listen: "127.0.0.1:0".parse()?,
        http_listen: "127.0.0.1:0".parse()?,
        tls_cert: pki.path("hub.pem"),
        tls_key: pki.path("hub-key.pem"),
        client_ca: pki.path("ca.pem"),
        kcp_kubeconfig: Some(kubeconfig),
        write_qps: 0.0,
        ..HubConfig::default()
    })
    .await?;
    let connector = TestAgentConnector::new(&pki, hub.tunnel_addr());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(hub.run(shutdown.clone()));

    let mut agent = connector.connect(&pki.client("edge-1")?).await?;
    agent.hello("edge-1", "s", None, 0).await?;
    agent
        .send(&AgentFrame::Deltas(DeltaBatch {
            deltas: vec![upsert(1, "web", json!({"replicas": 1}))],
        }))
        .await?;
    assert_eq!(agent.recv().await?, HubFrame::Ack(Ack::new(1)));

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = serde_json::to_value(deployments.get_status("web").await?.status)?;
        if status == json!({"replicas": 1}) {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("readyReplicas, which no cluster reports, was never removed; last seen {status}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    drop(agent);
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(20), task).await???;
    server.shutdown().await;
    Ok(())
}
