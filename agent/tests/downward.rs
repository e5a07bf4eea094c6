//! The downward lane end to end: a fake hub (played frame by frame) sends
//! placed objects, and the agent applies them in a cluster played by the
//! test bed's API server: namespace and object created with the
//! transformations, an update, a conflict with another field manager
//! reported and not forced, deletes, a downward snapshot's sweep, and
//! heartbeats and status reports that do not wait for slow applies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::result_large_err)]

mod support;

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uplink_agent::config::ReconnectSettings;
use uplink_agent::mapping::{Locator, NAMESPACE_LOCATOR, NamespaceLocator, SyncTargetRef};
use uplink_agent::{Agent, AgentConfig, ResourceSpec};
use uplink_protocol::{
    Ack, AgentFrame, ApplyFailure, Change, Delta, DownwardAck, DownwardBatch, DownwardChange,
    DownwardDelta, HubFrame, Limits, ObjectRef, SessionMode, ShardClaim, ShardId, ShardsHeld,
    SnapshotBegin, SnapshotEnd, SyncTargetLocator, Welcome, shard_of,
};

use support::{Cluster, DEADLINE, FakeHub, HubConn, Pki, cluster, pki, poll_until};

/// This cluster's SyncTarget key (any valid label name part will do).
const KEY: &str = "6ohB8yeXhwqTQVuBzJRgqcRJTpRjX7yTZu5g5g";
const TEAM: &str = "root:org:team-a";

fn placement_label() -> String {
    format!("state.workload.kcp.io/{KEY}")
}

fn sync_target() -> SyncTargetLocator {
    SyncTargetLocator {
        workspace: "root".into(),
        name: "east".into(),
        uid: "synctarget-uid".into(),
        key: KEY.into(),
    }
}

/// The namespace the agent should create for `TEAM`/`namespace`, worked out
/// from kcp's locator (the agent's own mapping function).
fn downstream_namespace(namespace: &str) -> String {
    NamespaceLocator {
        sync_target: SyncTargetRef {
            workspace: "root".into(),
            name: "east".into(),
            uid: "synctarget-uid".into(),
        },
        workspace: TEAM.into(),
        namespace: namespace.into(),
    }
    .downstream_namespace()
}

fn agent_config(pki: &Pki, hub: &FakeHub, cluster: &Cluster) -> AgentConfig {
    AgentConfig {
        cluster: "east".into(),
        kubeconfig: Some(cluster.kubeconfig.clone()),
        hub_url: format!("wss://{}", hub.addr),
        tls_cert: pki.client_cert.clone(),
        tls_key: pki.client_key.clone(),
        hub_ca: pki.ca.clone(),
        resources: vec![ResourceSpec::deployments()],
        downward_resources: vec![
            ResourceSpec::deployments(),
            "configmaps.v1".parse().unwrap(),
        ],
        http_listen: None,
        heartbeat_interval: Duration::from_millis(200),
        reconnect: ReconnectSettings {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(100),
            ..ReconnectSettings::default()
        },
        capacity: false,
        ..AgentConfig::default()
    }
}

/// Accepts the agent: checks its `Hello` offers the downward lane, welcomes
/// it with version 2 and this cluster's SyncTarget, and takes its status
/// snapshot.
async fn welcome(hub: &mut FakeHub) -> HubConn {
    let mut conn = hub.next_conn().await;
    let AgentFrame::Hello(hello) = conn.recv().await else {
        panic!("expected Hello")
    };
    assert_eq!(hello.protocol_versions, [1, 2, 3, 4]);
    assert_eq!(
        hello.downward_resources,
        ["deployments.v1.apps", "configmaps.v1"]
    );
    conn.send(HubFrame::Welcome(Welcome {
        protocol_version: 2,
        hub_epoch: 1,
        mode: SessionMode::Snapshot,
        heartbeat_interval_ms: 60_000,
        limits: Limits::default(),
        sync_target: Some(sync_target()),
        shards: None,
    }))
    .await;
    let AgentFrame::SnapshotBegin(_) = conn.recv().await else {
        panic!("expected SnapshotBegin")
    };
    let end = loop {
        match conn.recv().await {
            AgentFrame::SnapshotChunk(_) => {}
            AgentFrame::SnapshotEnd(end) => break end,
            other => panic!("unexpected {other:?}"),
        }
    };
    conn.send(HubFrame::Ack(Ack::new(end.seq))).await;
    conn
}

// ---------------------------------------------------------------- deltas

fn object_ref(resource: &str, kind: &str, namespace: &str, name: &str) -> ObjectRef {
    let (group, version) = match resource {
        "deployments" => ("apps", "v1"),
        _ => ("", "v1"),
    };
    ObjectRef {
        group: group.into(),
        version: version.into(),
        resource: resource.into(),
        kind: kind.into(),
        workspace: TEAM.into(),
        namespace: Some(namespace.into()),
        name: name.into(),
        uid: format!("upstream-{name}"),
    }
}

fn apply(seq: u64, object: ObjectRef, manifest: &Value) -> DownwardDelta {
    DownwardDelta {
        seq,
        object,
        change: DownwardChange::Apply {
            manifest_json: manifest.to_string(),
        },
    }
}

fn delete(seq: u64, object: ObjectRef) -> DownwardDelta {
    DownwardDelta {
        seq,
        object,
        change: DownwardChange::Delete,
    }
}

/// A Deployment as KCP holds it once placed on this cluster.
fn placed_deployment(name: &str, replicas: i32) -> Value {
    let labels = json!({ "app": name });
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": "shop",
            "uid": format!("upstream-{name}"),
            "resourceVersion": "17",
            "generation": 4,
            "labels": { "app": name, placement_label(): "Sync" },
            "annotations": {
                "kcp.io/cluster": "2x8f1",
                "team.example.com/owner": "alice",
            },
            "finalizers": [format!("workload.kcp.io/syncer-{KEY}")],
        },
        "spec": {
            "replicas": replicas,
            "selector": { "matchLabels": labels },
            "template": {
                "metadata": { "labels": labels },
                "spec": { "containers": [{ "name": "app", "image": "registry.k8s.io/pause:3.10" }] },
            },
        },
    })
}

fn placed_configmap(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": { "name": name, "labels": { placement_label(): "Sync" } },
        "data": { "mode": "placed" },
    })
}

async fn send_downward(conn: &mut HubConn, deltas: Vec<DownwardDelta>) {
    conn.send(HubFrame::Downward(DownwardBatch { deltas }))
        .await;
}

/// The next `DownwardAck`; status reports on the way are kept in
/// `reported`.
async fn next_ack(conn: &mut HubConn, reported: &mut Vec<Delta>) -> DownwardAck {
    loop {
        match conn.recv().await {
            AgentFrame::DownwardAck(ack) => return ack,
            AgentFrame::Deltas(batch) => reported.extend(batch.deltas),
            other => panic!("expected DownwardAck, got {other:?}"),
        }
    }
}

/// The first status report about `name`, among `reported` or still to come.
async fn report_about(conn: &mut HubConn, reported: &mut Vec<Delta>, name: &str) -> Delta {
    loop {
        if let Some(delta) = reported.iter().find(|d| d.object.name == name) {
            return delta.clone();
        }
        match conn.recv().await {
            AgentFrame::Deltas(batch) => reported.extend(batch.deltas),
            other => panic!("expected Deltas, got {other:?}"),
        }
    }
}

async fn start(pki: &Pki, hub: &FakeHub, cluster: &Cluster) -> (CancellationToken, Agent) {
    let agent = Agent::bind(agent_config(pki, hub, cluster)).await.unwrap();
    (CancellationToken::new(), agent)
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn applies_updates_refuses_conflicts_and_deletes() {
    let pki = pki();
    let mut hub = FakeHub::start(pki.server.clone()).await;
    let cluster = cluster().await;
    let (stop, agent) = start(&pki, &hub, &cluster).await;
    let metrics = agent.metrics().clone();
    let running = tokio::spawn(agent.run(stop.clone()));
    let mut conn = welcome(&mut hub).await;
    let mut reported = Vec::new();

    // Created: the namespace, then the object, transformed.
    let web = object_ref("deployments", "Deployment", "shop", "web");
    send_downward(
        &mut conn,
        vec![apply(1, web.clone(), &placed_deployment("web", 2))],
    )
    .await;
    let ack = next_ack(&mut conn, &mut reported).await;
    assert_eq!((ack.seq, ack.failures.len()), (1, 0), "{ack:?}");

    let ns_name = downstream_namespace("shop");
    let namespace = Api::<Namespace>::all(cluster.client.clone())
        .get(&ns_name)
        .await
        .unwrap();
    let annotations = namespace.metadata.annotations.unwrap();
    let locator = Locator::parse(&annotations[NAMESPACE_LOCATOR]).unwrap();
    assert_eq!(
        (locator.workspace.as_str(), locator.namespace.as_str()),
        (TEAM, "shop")
    );
    assert_eq!(
        namespace.metadata.labels.unwrap()[&placement_label()],
        "Sync"
    );

    let deployments = Api::<Deployment>::namespaced(cluster.client.clone(), &ns_name);
    let applied = deployments.get("web").await.unwrap();
    let meta = &applied.metadata;
    assert_eq!(applied.spec.as_ref().unwrap().replicas, Some(2));
    let labels = meta.labels.clone().unwrap();
    assert_eq!(labels[&placement_label()], "Sync");
    assert_eq!(labels["app"], "web");
    let annotations = meta.annotations.clone().unwrap_or_default();
    assert!(
        !annotations.contains_key("kcp.io/cluster"),
        "{annotations:?}"
    );
    assert_eq!(annotations["team.example.com/owner"], "alice");
    assert!(meta.finalizers.as_ref().is_none_or(Vec::is_empty));
    assert_ne!(meta.uid.as_deref(), Some("upstream-web"));
    let managers: Vec<(String, String)> = meta
        .managed_fields
        .iter()
        .flatten()
        .map(|m| {
            (
                m.manager.clone().unwrap_or_default(),
                m.operation.clone().unwrap_or_default(),
            )
        })
        .collect();
    assert!(
        managers.contains(&("uplink".into(), "Apply".into())),
        "{managers:?}"
    );

    // The way back: the agent's watch reports the object under its KCP
    // coordinates.
    let report = report_about(&mut conn, &mut reported, "web").await;
    assert_eq!(report.object.workspace, TEAM);
    assert_eq!(report.object.namespace.as_deref(), Some("shop"));

    // Updated.
    send_downward(
        &mut conn,
        vec![apply(2, web.clone(), &placed_deployment("web", 3))],
    )
    .await;
    assert_eq!(
        next_ack(&mut conn, &mut reported).await,
        DownwardAck {
            seq: 2,
            failures: vec![]
        }
    );
    let replicas = |d: Deployment| d.spec.unwrap().replicas;
    assert_eq!(replicas(deployments.get("web").await.unwrap()), Some(3));

    // Another manager takes the replicas (an autoscaler would): the next
    // change of them conflicts, is reported, and is not forced.
    let scale = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": "web" },
        "spec": { "replicas": 5 },
    });
    deployments
        .patch(
            "web",
            &PatchParams::apply("autoscaler").force(),
            &Patch::Apply(&scale),
        )
        .await
        .unwrap();
    send_downward(
        &mut conn,
        vec![apply(3, web.clone(), &placed_deployment("web", 4))],
    )
    .await;
    let ack = next_ack(&mut conn, &mut reported).await;
    assert_eq!(ack.seq, 3);
    assert_eq!(ack.failures.len(), 1, "{ack:?}");
    assert_eq!(ack.failures[0].seq, 3);
    assert_eq!(ack.failures[0].reason, ApplyFailure::CONFLICT);
    assert!(
        ack.failures[0].message.contains("autoscaler"),
        "{}",
        ack.failures[0].message
    );
    assert_eq!(replicas(deployments.get("web").await.unwrap()), Some(5));

    // What cannot be turned into an object, and what never goes down.
    let broken = DownwardDelta {
        seq: 4,
        object: object_ref("configmaps", "ConfigMap", "shop", "broken"),
        change: DownwardChange::Apply {
            manifest_json: "{not json".into(),
        },
    };
    let root_ca = apply(
        5,
        object_ref("configmaps", "ConfigMap", "shop", "kube-root-ca.crt"),
        &placed_configmap("kube-root-ca.crt"),
    );
    send_downward(&mut conn, vec![broken, root_ca]).await;
    let ack = next_ack(&mut conn, &mut reported).await;
    let reasons: Vec<(u64, &str)> = ack
        .failures
        .iter()
        .map(|f| (f.seq, f.reason.as_str()))
        .collect();
    assert_eq!(ack.seq, 5);
    assert_eq!(
        reasons,
        [(4, ApplyFailure::MALFORMED), (5, ApplyFailure::FORBIDDEN)]
    );

    // Deleted; a delete of what is not there is done as well.
    send_downward(
        &mut conn,
        vec![
            delete(6, web.clone()),
            delete(
                7,
                object_ref("deployments", "Deployment", "shop", "never-was"),
            ),
        ],
    )
    .await;
    let mut acked = next_ack(&mut conn, &mut reported).await;
    while acked.seq < 7 {
        assert!(acked.failures.is_empty(), "{acked:?}");
        acked = next_ack(&mut conn, &mut reported).await;
    }
    assert_eq!(
        acked,
        DownwardAck {
            seq: 7,
            failures: vec![]
        }
    );
    assert!(deployments.get_opt("web").await.unwrap().is_none());

    let applies = |result: &str| metrics.applies.with_label_values(&[result]).get();
    assert_eq!(
        (applies("applied"), applies("deleted"), applies("conflict")),
        (2, 2, 1)
    );
    assert_eq!(metrics.apply_duration.get_sample_count(), 7);

    stop.cancel();
    drop(conn);
    tokio::time::timeout(DEADLINE, running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_downward_snapshot_sweeps_what_it_does_not_name() {
    let pki = pki();
    let mut hub = FakeHub::start(pki.server.clone()).await;
    let cluster = cluster().await;

    // Left from before the agent restarted: an object it applied and that
    // has been unplaced since, one made by hand, one placed on another
    // cluster, all in the namespace of TEAM/shop.
    let ns_name = downstream_namespace("shop");
    let locator = NamespaceLocator {
        sync_target: SyncTargetRef {
            workspace: "root".into(),
            name: "east".into(),
            uid: "synctarget-uid".into(),
        },
        workspace: TEAM.into(),
        namespace: "shop".into(),
    };
    let namespace: Namespace = serde_json::from_value(json!({
        "metadata": {
            "name": ns_name,
            "annotations": { NAMESPACE_LOCATOR: locator.to_annotation() },
        },
    }))
    .unwrap();
    Api::<Namespace>::all(cluster.client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .unwrap();
    let configmaps = Api::<ConfigMap>::namespaced(cluster.client.clone(), &ns_name);
    for (name, labels) in [
        ("stale", json!({ placement_label(): "Sync" })),
        ("handmade", json!({ "app": "mine" })),
        (
            "elsewhere",
            json!({ "state.workload.kcp.io/another-cluster": "Sync" }),
        ),
    ] {
        let configmap: ConfigMap = serde_json::from_value(json!({
            "metadata": { "name": name, "labels": labels },
            "data": { "mode": "old" },
        }))
        .unwrap();
        configmaps
            .create(&PostParams::default(), &configmap)
            .await
            .unwrap();
    }

    let (stop, agent) = start(&pki, &hub, &cluster).await;
    let running = tokio::spawn(agent.run(stop.clone()));
    let mut conn = welcome(&mut hub).await;
    let mut reported = Vec::new();

    conn.send(HubFrame::DownwardSnapshotBegin(SnapshotBegin {
        objects: 1,
        shards: None,
    }))
    .await;
    conn.send(HubFrame::DownwardSnapshotChunk(DownwardBatch {
        deltas: vec![apply(
            8,
            object_ref("configmaps", "ConfigMap", "shop", "kept"),
            &placed_configmap("kept"),
        )],
    }))
    .await;
    conn.send(HubFrame::DownwardSnapshotEnd(SnapshotEnd {
        seq: 9,
        upsync_listed: false,
    }))
    .await;
    // The first ack is the end's, after the sweep.
    assert_eq!(
        next_ack(&mut conn, &mut reported).await,
        DownwardAck {
            seq: 9,
            failures: vec![]
        }
    );

    let names: Vec<String> = configmaps
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    assert!(names.contains(&"kept".to_owned()), "{names:?}");
    assert!(!names.contains(&"stale".to_owned()), "{names:?}");
    assert!(names.contains(&"handmade".to_owned()), "{names:?}");
    assert!(names.contains(&"elsewhere".to_owned()), "{names:?}");

    stop.cancel();
    drop(conn);
    tokio::time::timeout(DEADLINE, running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn slow_applies_hold_up_neither_heartbeats_nor_status() {
    let pki = pki();
    let mut hub = FakeHub::start(pki.server.clone()).await;
    let cluster = cluster().await;
    let (stop, agent) = start(&pki, &hub, &cluster).await;
    let metrics = agent.metrics().clone();
    let running = tokio::spawn(agent.run(stop.clone()));
    let mut conn = welcome(&mut hub).await;
    let mut reported = Vec::new();

    let web = object_ref("deployments", "Deployment", "shop", "web");
    send_downward(&mut conn, vec![apply(1, web, &placed_deployment("web", 1))]).await;
    assert_eq!(next_ack(&mut conn, &mut reported).await.seq, 1);

    // Now every request to the cluster takes 4 s: each apply below needs at
    // least two (its new namespace, the apply; discovery may be cached by
    // the drift watches), so none is done for 8 s.
    cluster.server.faults().set_latency(Duration::from_secs(4));
    let deltas: Vec<DownwardDelta> = (2..=41)
        .map(|seq| {
            let name = format!("settings-{seq}");
            apply(
                seq,
                object_ref("configmaps", "ConfigMap", "settings", &name),
                &placed_configmap(&name),
            )
        })
        .collect();
    send_downward(&mut conn, deltas).await;
    poll_until("deltas queued for the apply workers", || {
        metrics.downward_queue.get() > 0
    })
    .await;

    // A status change downstream (its write waits 4 s too) still travels
    // up, and heartbeats keep going, while the applies wait.
    let ns_name = downstream_namespace("shop");
    let status_client = cluster.client.clone();
    let status_write = tokio::spawn(async move {
        Api::<Deployment>::namespaced(status_client, &ns_name)
            .patch_status(
                "web",
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": { "readyReplicas": 7 } })),
            )
            .await
    });
    let mut heartbeats = 0;
    loop {
        match conn.recv_any().await {
            AgentFrame::Heartbeat(_) => heartbeats += 1,
            AgentFrame::Deltas(batch)
                if batch.deltas.iter().any(|d| {
                    matches!(&d.change, Change::Upsert { status_json } if status_json.contains("\"readyReplicas\":7"))
                }) =>
            {
                break;
            }
            AgentFrame::Deltas(_) => {}
            AgentFrame::DownwardAck(ack) => {
                panic!("an apply finished before the status came through: {ack:?}")
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // The status write alone took 4 s: at 200 ms, about 20 heartbeats.
    assert!(
        heartbeats >= 10,
        "only {heartbeats} heartbeats while applies waited"
    );
    status_write.await.unwrap().unwrap();

    // Once the cluster is fast again, everything is applied and acknowledged.
    cluster.server.faults().clear();
    let mut ack = next_ack(&mut conn, &mut reported).await;
    while ack.seq < 41 {
        assert!(ack.failures.is_empty(), "{ack:?}");
        ack = next_ack(&mut conn, &mut reported).await;
    }
    assert!(ack.failures.is_empty(), "{ack:?}");
    assert_eq!(metrics.downward_queue.get(), 0);

    stop.cancel();
    drop(conn);
    tokio::time::timeout(DEADLINE, running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// The locator of `workspace`/`namespace` on this cluster's SyncTarget.
fn locator_of(workspace: &str, namespace: &str) -> NamespaceLocator {
    NamespaceLocator {
        sync_target: SyncTargetRef {
            workspace: "root".into(),
            name: "east".into(),
            uid: "synctarget-uid".into(),
        },
        workspace: workspace.into(),
        namespace: namespace.into(),
    }
}

#[tokio::test]
async fn a_downward_snapshot_of_some_shards_sweeps_only_within_them() {
    const COUNT: u16 = 2;
    let pki = pki();
    let mut hub = FakeHub::start(pki.server.clone()).await;
    let cluster = cluster().await;
    let team_shard = shard_of(TEAM, COUNT);
    let other = (0..)
        .map(|i| format!("root:org:other-{i}"))
        .find(|ws| shard_of(ws, COUNT) != team_shard)
        .unwrap();

    // An object the agent applied and that has been unplaced since, in a
    // namespace of each shard.
    let mut namespaces = Vec::new();
    for workspace in [TEAM, other.as_str()] {
        let locator = locator_of(workspace, "shop");
        let ns_name = locator.downstream_namespace();
        let namespace: Namespace = serde_json::from_value(json!({
            "metadata": {
                "name": ns_name,
                "annotations": { NAMESPACE_LOCATOR: locator.to_annotation() },
            },
        }))
        .unwrap();
        Api::<Namespace>::all(cluster.client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .unwrap();
        let configmap: ConfigMap = serde_json::from_value(json!({
            "metadata": { "name": "stale", "labels": { placement_label(): "Sync" } },
            "data": { "mode": "old" },
        }))
        .unwrap();
        Api::<ConfigMap>::namespaced(cluster.client.clone(), &ns_name)
            .create(&PostParams::default(), &configmap)
            .await
            .unwrap();
        namespaces.push(ns_name);
    }

    let (stop, agent) = start(&pki, &hub, &cluster).await;
    let running = tokio::spawn(agent.run(stop.clone()));
    // A replica holding both shards.
    let mut conn = hub.next_conn().await;
    let AgentFrame::Hello(hello) = conn.recv().await else {
        panic!("expected Hello")
    };
    assert!(hello.protocol_versions.contains(&4));
    let both = ShardsHeld {
        count: COUNT,
        held: (0..COUNT)
            .map(|shard| ShardClaim {
                shard: ShardId(shard),
                term: 1,
            })
            .collect(),
        snapshot: Vec::new(),
        heartbeat_interval_ms: None,
    };
    conn.send(HubFrame::Welcome(Welcome {
        protocol_version: 4,
        hub_epoch: 1,
        mode: SessionMode::Resume { acked: 0 },
        heartbeat_interval_ms: 60_000,
        limits: Limits::default(),
        sync_target: Some(sync_target()),
        shards: Some(both),
    }))
    .await;

    // A downward snapshot of the team's shard only, naming nothing.
    conn.send(HubFrame::DownwardSnapshotBegin(SnapshotBegin {
        objects: 0,
        shards: Some(vec![team_shard]),
    }))
    .await;
    conn.send(HubFrame::DownwardSnapshotEnd(SnapshotEnd {
        seq: 1,
        upsync_listed: false,
    }))
    .await;
    let mut reported = Vec::new();
    assert_eq!(next_ack(&mut conn, &mut reported).await.seq, 1);

    let stale_in = |ns: String| {
        let client = cluster.client.clone();
        async move {
            Api::<ConfigMap>::namespaced(client, &ns)
                .get_opt("stale")
                .await
                .unwrap()
                .is_some()
        }
    };
    assert!(
        !stale_in(namespaces[0].clone()).await,
        "swept in the snapshot's shard"
    );
    assert!(
        stale_in(namespaces[1].clone()).await,
        "left alone in the other shard"
    );

    stop.cancel();
    drop(conn);
    tokio::time::timeout(DEADLINE, running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
