//! Upsync at the agent (protocol version 3), against a cluster played by
//! the test bed's API server and a fake hub: a type the cluster does not
//! serve stops the agent at start-up; once the hub names the cluster's
//! SyncTarget, the objects labelled `state.workload.kcp.io/<key>: Upsync`
//! go up whole (and only those), changes and deletions follow.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::result_large_err)]

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::PersistentVolume;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uplink_agent::config::ReconnectSettings;
use uplink_agent::{Agent, AgentConfig, AgentError, ResourceSpec};
use uplink_protocol::{
    Ack, AgentFrame, Change, Delta, HubFrame, Limits, SessionMode, SyncTargetLocator, Welcome,
};

use support::{Cluster, DEADLINE, FakeHub, HubConn, Pki, cluster, pki};

const KEY: &str = "6ohB8yeXhwqTQVuBzJRgqcRJTpRjX7yTZu5g5g";

fn config(pki: &Pki, hub: &FakeHub, cluster: &Cluster, upsync: &[&str]) -> AgentConfig {
    AgentConfig {
        cluster: "east".into(),
        kubeconfig: Some(cluster.kubeconfig.clone()),
        hub_url: format!("wss://{}", hub.addr),
        tls_cert: pki.client_cert.clone(),
        tls_key: pki.client_key.clone(),
        hub_ca: pki.ca.clone(),
        resources: vec![ResourceSpec::deployments()],
        upsync_resources: upsync.iter().map(|r| r.parse().unwrap()).collect(),
        http_listen: None,
        heartbeat_interval: Duration::from_millis(500),
        reconnect: ReconnectSettings {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(100),
            ..ReconnectSettings::default()
        },
        capacity: false,
        events: None,
        ..AgentConfig::default()
    }
}

fn volume(name: &str, label: Option<&str>, size: &str) -> PersistentVolume {
    let labels = match label {
        Some(value) => json!({ format!("state.workload.kcp.io/{KEY}"): value }),
        None => json!({}),
    };
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": name, "labels": labels},
        "spec": {"capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"],
                 "hostPath": {"path": format!("/data/{name}")}},
    }))
    .unwrap()
}

/// The next `Deltas` (snapshots and heartbeats skipped), acknowledged.
async fn next_deltas(conn: &mut HubConn) -> Vec<Delta> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        assert!(tokio::time::Instant::now() < deadline, "no deltas in time");
        match conn.recv().await {
            AgentFrame::Deltas(batch) => {
                if let Some(last) = batch.deltas.last() {
                    conn.send(HubFrame::Ack(Ack::new(last.seq))).await;
                }
                return batch.deltas;
            }
            AgentFrame::SnapshotEnd(end) => conn.send(HubFrame::Ack(Ack::new(end.seq))).await,
            AgentFrame::SnapshotBegin(_) | AgentFrame::SnapshotChunk(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn welcome(version: u16) -> HubFrame {
    HubFrame::Welcome(Welcome {
        protocol_version: version,
        hub_epoch: 1,
        mode: SessionMode::Snapshot,
        heartbeat_interval_ms: 500,
        limits: Limits::default(),
        sync_target: Some(SyncTargetLocator {
            workspace: "root".into(),
            name: "east".into(),
            uid: "synctarget-uid".into(),
            key: KEY.into(),
        }),
        shards: None,
    })
}

fn whole(delta: &Delta) -> Value {
    serde_json::from_str(delta.object_json.as_deref().unwrap_or("null")).unwrap()
}

#[tokio::test]
async fn a_type_the_cluster_does_not_serve_stops_the_agent_at_start_up() {
    let pki = pki();
    let hub = FakeHub::start(std::sync::Arc::clone(&pki.server)).await;
    let cluster = cluster().await;
    let error = Agent::bind(config(&pki, &hub, &cluster, &["widgets.v1.example.com"]))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(
            &error,
            AgentError::Config {
                flag: "--upsync-resources",
                ..
            }
        ),
        "{error}"
    );
    assert!(
        error.to_string().contains("widgets.v1.example.com"),
        "{error}"
    );
}

#[tokio::test]
async fn labelled_objects_go_up_whole_once_the_synctarget_is_known() {
    let pki = pki();
    let mut hub = FakeHub::start(std::sync::Arc::clone(&pki.server)).await;
    let cluster = cluster().await;
    let volumes: Api<PersistentVolume> = Api::all(cluster.client.clone());
    let post = PostParams::default();
    volumes
        .create(&post, &volume("pv-1", Some("Upsync"), "1Gi"))
        .await
        .unwrap();
    volumes
        .create(&post, &volume("pv-other", Some("Sync"), "1Gi"))
        .await
        .unwrap();
    volumes
        .create(&post, &volume("pv-local", None, "1Gi"))
        .await
        .unwrap();

    let agent = Agent::bind(config(&pki, &hub, &cluster, &["persistentvolumes.v1"]))
        .await
        .unwrap();
    let stop = CancellationToken::new();
    let running = tokio::spawn(agent.run(stop.clone()));

    let mut conn = hub.next_conn().await;
    let AgentFrame::Hello(hello) = conn.recv().await else {
        panic!("expected Hello")
    };
    assert!(hello.protocol_versions.contains(&3), "{hello:?}");
    assert_eq!(hello.upsync_resources, ["persistentvolumes.v1"]);
    conn.send(welcome(3)).await;

    // The first snapshot waits for the upsync lists, and says so: only the
    // volume labelled Upsync for this cluster, whole.
    let AgentFrame::SnapshotBegin(_) = conn.recv().await else {
        panic!("expected SnapshotBegin")
    };
    let mut deltas = Vec::new();
    let end = loop {
        match conn.recv().await {
            AgentFrame::SnapshotChunk(chunk) => deltas.extend(chunk.deltas),
            AgentFrame::SnapshotEnd(end) => break end,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(end.upsync_listed, "{end:?}");
    conn.send(HubFrame::Ack(Ack::new(end.seq))).await;
    let names: Vec<&str> = deltas.iter().map(|d| d.object.name.as_str()).collect();
    assert_eq!(names, ["pv-1"], "{deltas:?}");
    let delta = &deltas[0];
    assert_eq!(
        (
            delta.object.workspace.as_str(),
            delta.object.namespace.as_deref()
        ),
        ("root", None)
    );
    let object = whole(delta);
    assert_eq!(object["spec"]["capacity"]["storage"], "1Gi");
    assert_eq!(object["metadata"]["name"], "pv-1");
    assert!(object["metadata"].get("uid").is_none(), "{object}");
    assert!(object.get("status").is_none(), "{object}");
    assert!(matches!(delta.change, Change::Upsert { .. }));

    // A change of its spec follows; its deletion too.
    volumes
        .patch(
            "pv-1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"capacity": {"storage": "2Gi"}}})),
        )
        .await
        .unwrap();
    let deltas = next_deltas(&mut conn).await;
    assert_eq!(whole(&deltas[0])["spec"]["capacity"]["storage"], "2Gi");
    volumes
        .delete("pv-1", &DeleteParams::default())
        .await
        .unwrap();
    let deltas = next_deltas(&mut conn).await;
    assert!(
        matches!(deltas.as_slice(), [d] if d.change == Change::Deleted && d.object.name == "pv-1"),
        "{deltas:?}"
    );

    stop.cancel();
    running.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_version_2_hub_gets_no_upsync() {
    let pki = pki();
    let mut hub = FakeHub::start(std::sync::Arc::clone(&pki.server)).await;
    let cluster = cluster().await;
    Api::<PersistentVolume>::all(cluster.client.clone())
        .create(
            &PostParams::default(),
            &volume("pv-1", Some("Upsync"), "1Gi"),
        )
        .await
        .unwrap();
    let agent = Agent::bind(config(&pki, &hub, &cluster, &["persistentvolumes.v1"]))
        .await
        .unwrap();
    let stop = CancellationToken::new();
    let running = tokio::spawn(agent.run(stop.clone()));
    let mut conn = hub.next_conn().await;
    let AgentFrame::Hello(_) = conn.recv().await else {
        panic!("expected Hello")
    };
    // Version 2 names the SyncTarget too; the agent must not start upsync.
    conn.send(welcome(2)).await;
    let mut frames = Vec::new();
    let mut heartbeats = 0;
    while heartbeats < 4 {
        match conn.recv_any().await {
            AgentFrame::Heartbeat(_) => heartbeats += 1,
            AgentFrame::SnapshotEnd(end) => {
                assert!(!end.upsync_listed, "{end:?}");
                conn.send(HubFrame::Ack(Ack::new(end.seq))).await;
            }
            frame => frames.push(frame),
        }
    }
    assert!(
        frames.iter().all(|f| match f {
            AgentFrame::Deltas(batch) => batch.deltas.iter().all(|d| d.object_json.is_none()),
            AgentFrame::SnapshotChunk(chunk) =>
                chunk.deltas.iter().all(|d| d.object_json.is_none()),
            _ => true,
        }),
        "{frames:?}"
    );
    assert!(
        !format!("{frames:?}").contains("pv-1"),
        "no upsynced object in a version 2 session: {frames:?}"
    );
    stop.cancel();
    running.await.unwrap().unwrap();
}
