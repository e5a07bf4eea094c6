//! The agent against a tiny fake hub (tokio-rustls + tokio-tungstenite) that
//! speaks just enough of protocol v1, with watch events from a fake source:
//! session setup, snapshot, deltas, acks, resume after a lost connection,
//! refusal, dead-connection detection, heartbeats, shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::result_large_err)]

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::channel::mpsc::{UnboundedSender, unbounded};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use uplink_agent::config::ReconnectSettings;
use uplink_agent::mapping::Locator;
use uplink_agent::watch::{
    ObservedNamespace, ObservedObject, WatchEvent, WatchId, WatchedResource,
};
use uplink_agent::{Agent, AgentConfig, AgentError, ResourceSpec};
use uplink_protocol::{
    Ack, AgentFrame, Change, ErrorCode, ErrorFrame, HubFrame, Rejected, SessionMode,
};

use support::{DEADLINE, FakeHub, Pki, pki, poll_until};

// ---------------------------------------------------------------- agent side

fn config(pki: &Pki, hub: SocketAddr) -> AgentConfig {
    AgentConfig {
        cluster: "east".into(),
        hub_url: format!("wss://{hub}"),
        tls_cert: pki.client_cert.clone(),
        tls_key: pki.client_key.clone(),
        hub_ca: pki.ca.clone(),
        resources: vec![ResourceSpec::deployments()],
        http_listen: Some("127.0.0.1:0".parse().unwrap()),
        heartbeat_interval: Duration::from_secs(1),
        reconnect: ReconnectSettings {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(100),
            ..ReconnectSettings::default()
        },
        ..AgentConfig::default()
    }
}

fn deployments() -> WatchId {
    WatchId::Resource(ResourceSpec::deployments())
}

fn deployment(name: &str, ready: i64) -> WatchEvent {
    WatchEvent::Applied(ObservedObject {
        resource: Arc::new(WatchedResource {
            spec: ResourceSpec::deployments(),
            kind: "Deployment".into(),
            namespaced: true,
            upsync: false,
        }),
        namespace: Some("ns1".into()),
        name: name.into(),
        uid: format!("uid-{name}"),
        generation: Some(2),
        status: json!({"readyReplicas": ready, "observedGeneration": 2}),
        upsync: None,
    })
}

fn namespace(locator: Option<Locator>) -> WatchEvent {
    WatchEvent::NamespaceApplied(ObservedNamespace {
        name: "ns1".into(),
        locator: locator.map(|l| l.to_annotation()),
    })
}

fn team_a() -> Locator {
    Locator {
        workspace: "root:org:team-a".into(),
        namespace: "up-ns".into(),
    }
}

/// The initial lists of a cluster with one mapped namespace and one deployment.
fn initial_lists(events: &UnboundedSender<WatchEvent>) {
    for event in [
        WatchEvent::Restarted(WatchId::Namespaces),
        namespace(Some(team_a())),
        WatchEvent::Listed(WatchId::Namespaces),
        WatchEvent::Restarted(deployments()),
        deployment("web", 1),
        WatchEvent::Listed(deployments()),
    ] {
        events.unbounded_send(event).unwrap();
    }
}

async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).await.unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    (status, body)
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("metric {name} missing in\n{text}"))
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn snapshot_deltas_resume_locator_change_and_goodbye() {
    let pki = pki();
    let mut hub = FakeHub::start(Arc::clone(&pki.server)).await;
    let (events, source) = unbounded();
    initial_lists(&events);
    let agent = Agent::bind_with_events(config(&pki, hub.addr), source)
        .await
        .unwrap();
    // Configured with an HTTP address above.
    let http = agent.http_addr().unwrap();
    let health = agent.health().clone();
    let metrics = agent.metrics().clone();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(agent.run(shutdown.clone()));

    // Not ready before a session exists.
    poll_until("initial lists applied", || {
        health.watches_not_ready().is_empty()
    })
    .await;
    let (status, body) = http_get(http, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("not connected to the hub"), "{body}");

    // First connection: Hello, then a snapshot because the hub asks for one.
    let mut conn = hub.next_conn().await;
    assert_eq!(
        conn.peer_certs, 1,
        "the agent presents its client certificate"
    );
    let AgentFrame::Hello(hello) = conn.recv().await else {
        panic!("expected Hello")
    };
    assert_eq!(hello.cluster, "east");
    assert_eq!(hello.protocol_versions, [1, 2, 3, 4], "it reports events");
    assert_eq!((hello.last_hub_epoch, hello.last_ack), (None, 0));
    let session_id = hello.session_id.clone();
    assert!(uuid::Uuid::parse_str(&session_id).is_ok(), "{session_id}");
    conn.welcome(7, SessionMode::Snapshot, 60_000).await;

    let AgentFrame::SnapshotBegin(begin) = conn.recv().await else {
        panic!("expected SnapshotBegin")
    };
    assert_eq!(begin.objects, 1);
    let AgentFrame::SnapshotChunk(chunk) = conn.recv().await else {
        panic!("expected SnapshotChunk")
    };
    let delta = &chunk.deltas[0];
    assert_eq!(delta.object.workspace, "root:org:team-a");
    assert_eq!(delta.object.namespace.as_deref(), Some("up-ns"));
    assert_eq!(
        (delta.object.name.as_str(), delta.object.kind.as_str()),
        ("web", "Deployment")
    );
    assert_eq!(
        (delta.generation, delta.observed_generation),
        (Some(2), Some(2))
    );
    let Change::Upsert { status_json } = &delta.change else {
        panic!("expected Upsert")
    };
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(status_json).unwrap(),
        json!({"readyReplicas": 1, "observedGeneration": 2})
    );
    let AgentFrame::SnapshotEnd(end) = conn.recv().await else {
        panic!("expected SnapshotEnd")
    };
    assert_eq!(end.seq, 1);
    conn.send(HubFrame::Ack(Ack::new(1))).await;

    poll_until("ready", || health.not_ready_reason().is_none()).await;
    assert_eq!(http_get(http, "/readyz").await.0, 200);

    // A status change travels as a delta; the hub does not ack it.
    events.unbounded_send(deployment("web", 2)).unwrap();
    let AgentFrame::Deltas(batch) = conn.recv().await else {
        panic!("expected Deltas")
    };
    assert_eq!(batch.deltas.len(), 1);
    assert_eq!(batch.deltas[0].seq, 2);

    // The connection drops; the agent comes back with the same session and
    // resends what the hub did not acknowledge.
    drop(conn);
    let mut conn = hub.next_conn().await;
    let AgentFrame::Hello(hello) = conn.recv().await else {
        panic!("expected Hello")
    };
    assert_eq!(hello.session_id, session_id);
    assert_eq!((hello.last_hub_epoch, hello.last_ack), (Some(7), 1));
    conn.welcome(7, SessionMode::Resume { acked: 1 }, 60_000)
        .await;
    let AgentFrame::Deltas(batch) = conn.recv().await else {
        panic!("expected resent Deltas")
    };
    assert_eq!(batch.deltas.iter().map(|d| d.seq).collect::<Vec<_>>(), [2]);
    let Change::Upsert { status_json } = &batch.deltas[0].change else {
        panic!("expected Upsert")
    };
    assert!(status_json.contains("\"readyReplicas\":2"), "{status_json}");
    conn.send(HubFrame::Ack(Ack::new(2))).await;

    // The namespace loses its locator: the object is deleted upstream.
    events.unbounded_send(namespace(None)).unwrap();
    let AgentFrame::Deltas(batch) = conn.recv().await else {
        panic!("expected Deltas")
    };
    assert_eq!(batch.deltas[0].change, Change::Deleted);
    assert_eq!(batch.deltas[0].object.workspace, "root:org:team-a");
    // The hub refuses it (KCP never placed it here) and says so.
    conn.send(HubFrame::Ack(Ack {
        seq: batch.deltas[0].seq,
        rejected: vec![Rejected {
            seq: batch.deltas[0].seq,
            reason: Rejected::NOT_PLACED.into(),
        }],
    }))
    .await;

    poll_until("acks applied", || metrics.outbox_entries.get() == 0).await;
    poll_until("refusal counted", || {
        metrics
            .rejected_deltas
            .with_label_values(&[Rejected::NOT_PLACED])
            .get()
            == 1
    })
    .await;
    let (status, text) = http_get(http, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(metric(&text, "uplink_agent_connected"), 1.0);
    assert_eq!(metric(&text, "uplink_agent_outbox_entries"), 0.0);
    assert_eq!(
        metric(&text, "uplink_agent_sessions_total{mode=\"snapshot\"}"),
        1.0
    );
    assert_eq!(
        metric(&text, "uplink_agent_sessions_total{mode=\"resume\"}"),
        1.0
    );
    assert!(metric(&text, "uplink_agent_reconnects_total") >= 1.0);
    assert_eq!(metric(&text, "uplink_agent_deltas_sent_total"), 3.0);
    assert_eq!(http_get(http, "/healthz").await.0, 200);

    // Shutdown: an unsent change is flushed, then Bye and close.
    events.unbounded_send(namespace(Some(team_a()))).unwrap();
    poll_until("change queued", || metrics.outbox_entries.get() == 1).await;
    shutdown.cancel();
    let mut flushed = false;
    loop {
        match conn.recv().await {
            AgentFrame::Deltas(_) => flushed = true,
            AgentFrame::Bye(bye) => {
                assert!(bye.reason.contains("shutting down"));
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(flushed, "the queued change is sent before Bye");
    // Let the close handshake finish from our side.
    while let Some(Ok(_)) = conn.ws.next().await {}
    drop(conn);
    let result = tokio::time::timeout(DEADLINE, running)
        .await
        .unwrap()
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(metrics.connected.get(), 0);
}

#[tokio::test]
async fn no_connection_before_the_initial_lists_complete() {
    let pki = pki();
    let mut hub = FakeHub::start(Arc::clone(&pki.server)).await;
    let (events, source) = unbounded();
    // Namespaces listed; deployments seen so far: "web", the list goes on.
    for event in [
        WatchEvent::Restarted(WatchId::Namespaces),
        namespace(Some(team_a())),
        WatchEvent::Listed(WatchId::Namespaces),
        WatchEvent::Restarted(deployments()),
        deployment("web", 1),
    ] {
        events.unbounded_send(event).unwrap();
    }
    let agent = Agent::bind_with_events(config(&pki, hub.addr), source)
        .await
        .unwrap();
    // Configured with an HTTP address above.
    let http = agent.http_addr().unwrap();
    let health = agent.health().clone();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(agent.run(shutdown.clone()));
    poll_until("the partial list applied", || {
        health.watches_not_ready() == ["deployments.v1.apps"]
            && health.summary().watches[0].objects == 1
    })
    .await;

    // A snapshot now would lack "api": the hub would drop it, then get it
    // back. So the agent does not connect (it would within milliseconds).
    let early = tokio::time::timeout(Duration::from_millis(500), hub.conns.recv()).await;
    assert!(
        early.is_err(),
        "the agent connected before its initial lists completed"
    );
    let (status, body) = http_get(http, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("deployments.v1.apps"), "{body}");

    events.unbounded_send(deployment("api", 1)).unwrap();
    events
        .unbounded_send(WatchEvent::Listed(deployments()))
        .unwrap();
    let mut conn = hub.next_conn().await;
    let AgentFrame::Hello(_) = conn.recv().await else {
        panic!("expected Hello")
    };
    conn.welcome(1, SessionMode::Snapshot, 60_000).await;
    let AgentFrame::SnapshotBegin(begin) = conn.recv().await else {
        panic!("expected SnapshotBegin")
    };
    assert_eq!(begin.objects, 2, "the snapshot holds the whole list");

    drop(conn);
    shutdown.cancel();
    let result = tokio::time::timeout(DEADLINE, running)
        .await
        .unwrap()
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
}

#[tokio::test]
async fn refused_then_silent_hub_then_heartbeats() {
    let pki = pki();
    let mut hub = FakeHub::start(Arc::clone(&pki.server)).await;
    let (events, source) = unbounded();
    initial_lists(&events);
    let mut config = config(&pki, hub.addr);
    config.heartbeat_interval = Duration::from_millis(100);
    config.clock_offset = jiff::SignedDuration::from_hours(1);
    let agent = Agent::bind_with_events(config, source).await.unwrap();
    let metrics = agent.metrics().clone();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(agent.run(shutdown.clone()));

    // The hub refuses: the agent counts it and tries again.
    let mut conn = hub.next_conn().await;
    let AgentFrame::Hello(_) = conn.recv().await else {
        panic!("expected Hello")
    };
    conn.send(HubFrame::Error(ErrorFrame {
        code: ErrorCode::IdentityMismatch,
        message: "certificate says west".into(),
    }))
    .await;
    let mut conn = hub.next_conn().await;
    assert_eq!(
        metrics
            .hub_errors
            .with_label_values(&["IdentityMismatch"])
            .get(),
        1
    );

    // Welcomed: heartbeats flow (clock offset applied, summary on the
    // first). Then the hub goes silent, and after 3 intervals without anything
    // from it the agent gives up on the connection and reconnects.
    let AgentFrame::Hello(_) = conn.recv().await else {
        panic!("expected Hello")
    };
    conn.welcome(1, SessionMode::Snapshot, 100_000).await;
    let mut heartbeats = Vec::new();
    while heartbeats.len() < 2 {
        if let AgentFrame::Heartbeat(hb) = conn.recv_any().await {
            heartbeats.push(hb);
        }
    }
    // From here on the hub reads nothing, so it answers no pings either.
    assert!(heartbeats.len() >= 2, "{heartbeats:?}");
    let now_ms = jiff::Timestamp::now().as_millisecond();
    let skew = heartbeats[0].agent_time_ms - now_ms;
    assert!(
        (3_500_000..3_700_000).contains(&skew),
        "clock offset not applied: {skew}"
    );
    let summary = heartbeats[0]
        .summary
        .as_ref()
        .expect("first heartbeat carries the summary");
    assert_eq!(summary.watches.len(), 1);
    assert_eq!(summary.watches[0].resource, "deployments.v1.apps");
    assert!(summary.watches[0].ready);
    assert_eq!(summary.watches[0].objects, 1);
    assert!(
        heartbeats[1].summary.is_none(),
        "unchanged summary is not resent"
    );

    let _next = hub.next_conn().await;
    assert!(metrics.reconnects.get() >= 2);
    drop(conn);
    shutdown.cancel();
    let result = tokio::time::timeout(DEADLINE, running)
        .await
        .unwrap()
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
}

#[tokio::test]
async fn bind_errors_name_the_flag_and_file() {
    let pki = pki();
    let hub: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let bind = |config: AgentConfig| async move {
        let (_events, source) = unbounded::<WatchEvent>();
        Agent::bind_with_events(config, source)
            .await
            .map(|_| ())
            .unwrap_err()
    };

    let mut missing_cert = config(&pki, hub);
    missing_cert.tls_cert = PathBuf::from("/nonexistent/east.pem");
    let err = bind(missing_cert).await;
    assert!(matches!(err, AgentError::Tls(_)));
    let text = err.to_string();
    assert!(
        text.contains("--tls-cert") && text.contains("/nonexistent/east.pem"),
        "{text}"
    );

    let mut key_as_ca = config(&pki, hub);
    key_as_ca.hub_ca = pki.client_key.clone();
    assert!(bind(key_as_ca).await.to_string().contains("--hub-ca"));

    let mut plain_ws = config(&pki, hub);
    plain_ws.hub_url = format!("ws://{hub}");
    assert!(bind(plain_ws).await.to_string().contains("--hub-url"));

    let mut no_cluster = config(&pki, hub);
    no_cluster.cluster = String::new();
    assert!(bind(no_cluster).await.to_string().contains("--cluster"));

    // The certificate files are read through rustls-pki-types.
    assert!(CertificateDer::pem_file_iter(&pki.client_cert).is_ok());
}

#[tokio::test]
async fn a_hub_that_stops_reading_is_declared_dead_and_shutdown_does_not_hang() {
    let pki = pki();
    let mut hub = FakeHub::start(Arc::clone(&pki.server)).await;
    let (events, source) = unbounded();
    initial_lists(&events);
    // Far more than the socket buffers on both ends hold: sends block once
    // the hub stops reading.
    let message = "x".repeat(1000);
    for i in 0..150 {
        let mut event = deployment(&format!("big-{i}"), 1);
        if let WatchEvent::Applied(object) = &mut event {
            let conditions: Vec<_> = (0..200)
                .map(|n| json!({"type": format!("C{n}"), "status": "True", "message": message}))
                .collect();
            object.status = json!({"readyReplicas": 1, "conditions": conditions});
        }
        events.unbounded_send(event).unwrap();
    }
    let mut config = config(&pki, hub.addr);
    config.heartbeat_interval = Duration::from_millis(200);
    let agent = Agent::bind_with_events(config, source).await.unwrap();
    let metrics = agent.metrics().clone();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(agent.run(shutdown.clone()));

    // Welcomed, then the hub reads nothing more (its node died, say): the
    // agent's sends block on a full buffer. Still, three intervals without
    // anything from the hub end the connection, and the agent reconnects.
    let mut stalled = hub.next_conn().await;
    let AgentFrame::Hello(_) = stalled.recv().await else {
        panic!("expected Hello")
    };
    stalled
        .welcome(3, SessionMode::Resume { acked: 0 }, 200)
        .await;
    let started = tokio::time::Instant::now();
    let mut again = hub.next_conn().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "declared dead after {:?}",
        started.elapsed()
    );
    assert!(metrics.reconnects.get() >= 1);

    // The same again, and now the agent stops while a send is blocked.
    let AgentFrame::Hello(_) = again.recv().await else {
        panic!("expected Hello")
    };
    again
        .welcome(3, SessionMode::Resume { acked: 0 }, 200)
        .await;
    let AgentFrame::Deltas(_) = again.recv().await else {
        panic!("expected Deltas")
    };
    // The rest of the batch does not fit into the buffers.
    shutdown.cancel();
    let stopping = tokio::time::Instant::now();
    let result = tokio::time::timeout(DEADLINE, running)
        .await
        .expect("shutdown hung on a blocked send")
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
    assert!(
        stopping.elapsed() < Duration::from_secs(8),
        "shutdown took {:?}",
        stopping.elapsed()
    );
    drop((stalled, again));
}
