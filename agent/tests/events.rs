//! Downstream Events on their way up, against the fake hub: a burst of
//! Events about a synced object goes up as a few `Events` reports of one
//! series with the whole count, in upstream coordinates, after the status;
//! Events about objects that are not synced (or about an earlier object of
//! the same name) go nowhere; a hub that speaks only version 2 gets none.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::result_large_err)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use futures::channel::mpsc::{UnboundedSender, unbounded};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use uplink_agent::config::ReconnectSettings;
use uplink_agent::mapping::Locator;
use uplink_agent::watch::{
    ObservedNamespace, ObservedObject, WatchEvent, WatchId, WatchedResource,
};
use uplink_agent::{Agent, AgentConfig, ResourceSpec};
use uplink_protocol::{AgentFrame, EventReport, HubFrame, Limits, SessionMode, Welcome};

use support::{DEADLINE, FakeHub, Pki, pki};

fn config(pki: &Pki, hub: std::net::SocketAddr) -> AgentConfig {
    AgentConfig {
        cluster: "east".into(),
        hub_url: format!("wss://{hub}"),
        tls_cert: pki.client_cert.clone(),
        tls_key: pki.client_key.clone(),
        hub_ca: pki.ca.clone(),
        resources: vec![ResourceSpec::deployments()],
        http_listen: None,
        heartbeat_interval: Duration::from_secs(1),
        reconnect: ReconnectSettings {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(100),
            ..ReconnectSettings::default()
        },
        capacity: false,
        ..AgentConfig::default()
    }
}

/// A cluster whose namespace `kcp-1` maps to `root:org:team-a`/`shop` and
/// holds the deployment `web`.
fn initial_lists(events: &UnboundedSender<WatchEvent>) {
    let deployments = WatchId::Resource(ResourceSpec::deployments());
    let locator = Locator {
        workspace: "root:org:team-a".into(),
        namespace: "shop".into(),
    };
    for event in [
        WatchEvent::Restarted(WatchId::Namespaces),
        WatchEvent::NamespaceApplied(ObservedNamespace {
            name: "kcp-1".into(),
            locator: Some(locator.to_annotation()),
        }),
        WatchEvent::Listed(WatchId::Namespaces),
        WatchEvent::Restarted(deployments.clone()),
        WatchEvent::Applied(ObservedObject {
            resource: Arc::new(WatchedResource {
                spec: ResourceSpec::deployments(),
                kind: "Deployment".into(),
                namespaced: true,
                upsync: false,
            }),
            namespace: Some("kcp-1".into()),
            name: "web".into(),
            uid: "uid-web".into(),
            generation: Some(1),
            status: json!({"readyReplicas": 1}),
            upsync: None,
        }),
        WatchEvent::Listed(deployments),
    ] {
        events.unbounded_send(event).unwrap();
    }
}

/// A downstream events.k8s.io/v1 Event about the deployment `name`.
fn event(uid: &str, name: &str, regarding_uid: &str, at_s: u32) -> WatchEvent {
    WatchEvent::Event(json!({
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"name": format!("{name}.{uid}"), "namespace": "kcp-1", "uid": uid},
        "regarding": {"apiVersion": "apps/v1", "kind": "Deployment", "namespace": "kcp-1",
                      "name": name, "uid": regarding_uid},
        "type": "Warning",
        "reason": "FailedCreate",
        "action": "Create",
        "note": "exceeded quota",
        "reportingController": "replicaset-controller",
        "reportingInstance": "kcm-1",
        "eventTime": format!("2026-12-07T10:00:{:02}.000000Z", at_s % 60),
    }))
}

fn welcome(version: u16) -> HubFrame {
    HubFrame::Welcome(Welcome {
        protocol_version: version,
        hub_epoch: 1,
        mode: SessionMode::Snapshot,
        heartbeat_interval_ms: 1_000,
        limits: Limits::default(),
        sync_target: None,
        shards: None,
    })
}

fn counter(agent_metrics: &str, name: &str) -> f64 {
    agent_metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_burst_of_events_goes_up_as_one_series_with_its_whole_count() {
    let pki = pki();
    let mut hub = FakeHub::start(Arc::clone(&pki.server)).await;
    let (events, source) = unbounded();
    initial_lists(&events);
    for i in 0..50 {
        events
            .unbounded_send(event(&format!("e{i}"), "web", "uid-web", i))
            .unwrap();
    }
    // Not synced: another deployment, and an earlier `web`.
    events
        .unbounded_send(event("x1", "db", "uid-db", 0))
        .unwrap();
    events
        .unbounded_send(event("x2", "web", "uid-old-web", 0))
        .unwrap();
    let agent = Agent::bind_with_events(config(&pki, hub.addr), source)
        .await
        .unwrap();
    let metrics = agent.metrics().clone();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(agent.run(shutdown.clone()));

    let mut conn = hub.next_conn().await;
    let AgentFrame::Hello(hello) = conn.recv().await else {
        panic!("expected Hello")
    };
    assert!(hello.protocol_versions.contains(&3), "{hello:?}");
    conn.send(welcome(3)).await;

    // Status first: the snapshot, then the events.
    let mut frames = Vec::new();
    let mut reports: Vec<EventReport> = Vec::new();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while reports.last().is_none_or(|r| r.count < 50) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no report with the whole count; got {reports:?}"
        );
        match conn.recv().await {
            AgentFrame::Events(batch) => {
                frames.push("Events");
                reports.extend(batch.reports);
            }
            AgentFrame::SnapshotBegin(_) => frames.push("SnapshotBegin"),
            AgentFrame::SnapshotChunk(_) => frames.push("SnapshotChunk"),
            AgentFrame::SnapshotEnd(_) => frames.push("SnapshotEnd"),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        frames[..3],
        ["SnapshotBegin", "SnapshotChunk", "SnapshotEnd"],
        "status before events"
    );
    assert!(
        reports.len() <= 5,
        "one series, at most the object's burst of reports: {reports:?}"
    );
    let last = reports.last().unwrap();
    assert_eq!(last.count, 50);
    assert_eq!(last.regarding.workspace, "root:org:team-a");
    assert_eq!(last.regarding.namespace.as_deref(), Some("shop"));
    assert_eq!(last.regarding.name, "web");
    assert_eq!(last.regarding.uid, "uid-web");
    assert_eq!(
        (last.event_type.as_str(), last.reason.as_str()),
        ("Warning", "FailedCreate")
    );
    assert!(
        reports.iter().all(|r| r.regarding.name == "web"),
        "nothing about objects that are not synced: {reports:?}"
    );
    let text = metrics.render();
    assert_eq!(counter(&text, "uplink_agent_events_observed_total"), 50.0);
    assert_eq!(
        counter(&text, "uplink_agent_events_sent_total"),
        reports.len() as f64
    );

    shutdown.cancel();
    running.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_hub_that_speaks_version_2_gets_no_events() {
    let pki = pki();
    let mut hub = FakeHub::start(Arc::clone(&pki.server)).await;
    let (events, source) = unbounded();
    initial_lists(&events);
    events
        .unbounded_send(event("e1", "web", "uid-web", 0))
        .unwrap();
    let agent = Agent::bind_with_events(config(&pki, hub.addr), source)
        .await
        .unwrap();
    let metrics = agent.metrics().clone();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(agent.run(shutdown.clone()));

    let mut conn = hub.next_conn().await;
    let AgentFrame::Hello(_) = conn.recv().await else {
        panic!("expected Hello")
    };
    conn.send(welcome(2)).await;
    for expected in ["SnapshotBegin", "SnapshotChunk", "SnapshotEnd"] {
        let frame = conn.recv().await;
        assert!(format!("{frame:?}").starts_with(expected), "{frame:?}");
    }
    // The event was read and waits in the lane; heartbeats flow, no Events.
    support::poll_until("the event observed", || {
        counter(&metrics.render(), "uplink_agent_events_observed_total") == 1.0
    })
    .await;
    for _ in 0..3 {
        match conn.recv_any().await {
            AgentFrame::Heartbeat(_) => {}
            other => panic!("expected only heartbeats, got {other:?}"),
        }
    }
    assert_eq!(
        counter(&metrics.render(), "uplink_agent_events_sent_total"),
        0.0
    );

    shutdown.cancel();
    running.await.unwrap().unwrap();
}
