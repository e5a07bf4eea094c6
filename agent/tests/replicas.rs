//! The agent against a replicated hub (protocol version 4), played by fake
//! hubs frame by frame: each replica gets only the deltas of the shards it
//! holds, an unheld shard's changes wait, a shard taken over with
//! `snapshot` gets a snapshot of that shard only, acks stay per replica,
//! the higher term wins, and `--hub-discovery=dns` finds a replica by name.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::result_large_err)]

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::channel::mpsc::{UnboundedSender, unbounded};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use uplink_agent::config::{HubDiscovery, ReconnectSettings};
use uplink_agent::mapping::Locator;
use uplink_agent::metrics::Metrics;
use uplink_agent::watch::{
    ObservedNamespace, ObservedObject, WatchEvent, WatchId, WatchedResource,
};
use uplink_agent::{Agent, AgentConfig, ResourceSpec};
use uplink_protocol::{
    Ack, AgentFrame, Delta, HubFrame, Limits, SessionMode, ShardClaim, ShardId, ShardsHeld,
    Welcome, shard_of,
};

use support::{FakeHub, HubConn, Pki, pki, poll_until};

/// Shards the fake replicas divide the workspaces into.
const COUNT: u16 = 2;

/// A workspace of `shard`.
fn workspace_in(shard: u16) -> String {
    (0..)
        .map(|i| format!("root:org:ws-{i}"))
        .find(|ws| shard_of(ws, COUNT) == ShardId(shard))
        .unwrap()
}

fn config(pki: &Pki, hub_url: String) -> AgentConfig {
    AgentConfig {
        cluster: "east".into(),
        hub_url,
        tls_cert: pki.client_cert.clone(),
        tls_key: pki.client_key.clone(),
        hub_ca: pki.ca.clone(),
        resources: vec![ResourceSpec::deployments()],
        http_listen: None,
        heartbeat_interval: Duration::from_secs(60),
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

fn deployments() -> WatchId {
    WatchId::Resource(ResourceSpec::deployments())
}

/// The downstream namespace of `shard`'s workspace.
fn namespace_of(shard: u16) -> String {
    format!("ns-{shard}")
}

fn deployment(shard: u16, name: &str, ready: i64) -> WatchEvent {
    WatchEvent::Applied(ObservedObject {
        resource: Arc::new(WatchedResource {
            spec: ResourceSpec::deployments(),
            kind: "Deployment".into(),
            namespaced: true,
            upsync: false,
        }),
        namespace: Some(namespace_of(shard)),
        name: name.into(),
        uid: format!("uid-{name}"),
        generation: Some(1),
        status: json!({"readyReplicas": ready}),
        upsync: None,
    })
}

/// One namespace per shard, mapped to a workspace of that shard, and one
/// deployment in each (`web-0`, `web-1`).
fn initial_lists(events: &UnboundedSender<WatchEvent>) {
    events
        .unbounded_send(WatchEvent::Restarted(WatchId::Namespaces))
        .unwrap();
    for shard in 0..COUNT {
        let locator = Locator {
            workspace: workspace_in(shard),
            namespace: "up".into(),
        };
        events
            .unbounded_send(WatchEvent::NamespaceApplied(ObservedNamespace {
                name: namespace_of(shard),
                locator: Some(locator.to_annotation()),
            }))
            .unwrap();
    }
    events
        .unbounded_send(WatchEvent::Listed(WatchId::Namespaces))
        .unwrap();
    events
        .unbounded_send(WatchEvent::Restarted(deployments()))
        .unwrap();
    for shard in 0..COUNT {
        events
            .unbounded_send(deployment(shard, &format!("web-{shard}"), 1))
            .unwrap();
    }
    events
        .unbounded_send(WatchEvent::Listed(deployments()))
        .unwrap();
}

fn held(claims: &[(u16, u64)], snapshot: &[u16]) -> ShardsHeld {
    ShardsHeld {
        count: COUNT,
        held: claims
            .iter()
            .map(|(shard, term)| ShardClaim {
                shard: ShardId(*shard),
                term: *term,
            })
            .collect(),
        snapshot: snapshot.iter().copied().map(ShardId).collect(),
        heartbeat_interval_ms: None,
    }
}

/// Accepts the agent's connection, checks it offers version 4 and welcomes
/// it as a replica holding `shards`.
async fn welcome(hub: &mut FakeHub, mode: SessionMode, shards: Option<ShardsHeld>) -> HubConn {
    let mut conn = hub.next_conn().await;
    let AgentFrame::Hello(hello) = conn.recv().await else {
        panic!("expected Hello")
    };
    assert!(hello.protocol_versions.contains(&4), "{hello:?}");
    conn.send(HubFrame::Welcome(Welcome {
        protocol_version: 4,
        hub_epoch: 1,
        mode,
        heartbeat_interval_ms: 60_000,
        limits: Limits::default(),
        sync_target: None,
        shards,
    }))
    .await;
    conn
}

/// A whole snapshot: the shards it says it covers, and its deltas; acked.
async fn snapshot(conn: &mut HubConn) -> (Option<Vec<ShardId>>, Vec<Delta>) {
    let AgentFrame::SnapshotBegin(begin) = conn.recv().await else {
        panic!("expected SnapshotBegin")
    };
    let mut deltas = Vec::new();
    loop {
        match conn.recv().await {
            AgentFrame::SnapshotChunk(chunk) => deltas.extend(chunk.deltas),
            AgentFrame::SnapshotEnd(end) => {
                conn.send(HubFrame::Ack(Ack::new(end.seq))).await;
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(begin.objects, deltas.len() as u64);
    (begin.shards, deltas)
}

/// The next `Deltas` batch.
async fn deltas(conn: &mut HubConn) -> Vec<Delta> {
    match conn.recv().await {
        AgentFrame::Deltas(batch) => batch.deltas,
        other => panic!("expected Deltas, got {other:?}"),
    }
}

fn names(deltas: &[Delta]) -> BTreeSet<String> {
    deltas.iter().map(|d| d.object.name.clone()).collect()
}

struct Running {
    events: UnboundedSender<WatchEvent>,
    metrics: Metrics,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), uplink_agent::AgentError>>,
}

async fn start(config: AgentConfig) -> Running {
    let (events, source) = unbounded();
    initial_lists(&events);
    let agent = Agent::bind_with_events(config, source).await.unwrap();
    let metrics = agent.metrics().clone();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(agent.run(shutdown.clone()));
    Running {
        events,
        metrics,
        shutdown,
        task,
    }
}

impl Running {
    /// Stops the agent: every session says `Bye` and closes.
    async fn stop(self, conns: Vec<HubConn>) {
        self.shutdown.cancel();
        let byes = conns.into_iter().map(said_goodbye);
        tokio::time::timeout(support::DEADLINE, futures::future::join_all(byes))
            .await
            .expect("every session said goodbye in time");
        tokio::time::timeout(support::DEADLINE, self.task)
            .await
            .expect("the agent stopped in time")
            .unwrap()
            .unwrap();
    }
}

/// Reads until the agent's `Bye`, then until the close (answered).
async fn said_goodbye(mut conn: HubConn) {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let mut bye = false;
    while let Some(Ok(message)) = conn.ws.next().await {
        match message {
            Message::Binary(bytes) => {
                if let Ok(AgentFrame::Bye(_)) =
                    uplink_protocol::decode_agent_frame(&bytes, &Limits::default())
                {
                    bye = true;
                }
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    assert!(bye, "the session ended without Bye");
}

#[tokio::test]
async fn each_replica_gets_only_its_shards_and_acks_stay_apart() {
    let pki = pki();
    let mut a = FakeHub::start(Arc::clone(&pki.server)).await;
    let mut b = FakeHub::start(Arc::clone(&pki.server)).await;
    let agent = start(config(&pki, format!("wss://{},wss://{}", a.addr, b.addr))).await;

    let mut to_a = welcome(&mut a, SessionMode::Snapshot, Some(held(&[(0, 1)], &[0]))).await;
    let (shards, deltas_a) = snapshot(&mut to_a).await;
    assert_eq!(shards, Some(vec![ShardId(0)]));
    assert_eq!(names(&deltas_a), BTreeSet::from(["web-0".to_owned()]));
    let mut to_b = welcome(&mut b, SessionMode::Snapshot, Some(held(&[(1, 1)], &[1]))).await;
    let (shards, deltas_b) = snapshot(&mut to_b).await;
    assert_eq!(shards, Some(vec![ShardId(1)]));
    assert_eq!(names(&deltas_b), BTreeSet::from(["web-1".to_owned()]));

    // A change of each: each replica gets its own.
    agent
        .events
        .unbounded_send(deployment(1, "web-1", 2))
        .unwrap();
    agent
        .events
        .unbounded_send(deployment(0, "web-0", 2))
        .unwrap();
    let got_a = deltas(&mut to_a).await;
    assert_eq!(names(&got_a), BTreeSet::from(["web-0".to_owned()]));
    let got_b = deltas(&mut to_b).await;
    assert_eq!(names(&got_b), BTreeSet::from(["web-1".to_owned()]));

    // A acknowledges past B's entry: only A's entry leaves the outbox.
    to_a.send(HubFrame::Ack(Ack::new(u64::MAX / 2))).await;
    poll_until("A's entry acknowledged", || {
        agent.metrics.outbox_entries.get() == 1
    })
    .await;
    // B's connection drops before it acknowledged: its entry goes again.
    drop(to_b);
    let mut to_b = welcome(
        &mut b,
        SessionMode::Resume { acked: 0 },
        Some(held(&[(1, 1)], &[])),
    )
    .await;
    let again = deltas(&mut to_b).await;
    assert_eq!(names(&again), BTreeSet::from(["web-1".to_owned()]));
    to_b.send(HubFrame::Ack(Ack::new(again[0].seq))).await;
    poll_until("B's entry acknowledged", || {
        agent.metrics.outbox_entries.get() == 0
    })
    .await;
    let rendered = agent.metrics.render();
    assert!(
        rendered.contains("uplink_agent_routed_shards{replica=\"wss://"),
        "{rendered}"
    );
    agent.stop(vec![to_a, to_b]).await;
}

#[tokio::test]
async fn an_unheld_shard_waits_until_a_replica_claims_it() {
    let pki = pki();
    let mut a = FakeHub::start(Arc::clone(&pki.server)).await;
    let agent = start(config(&pki, format!("wss://{}", a.addr))).await;
    let mut to_a = welcome(&mut a, SessionMode::Snapshot, Some(held(&[(0, 1)], &[0]))).await;
    let (_, deltas_a) = snapshot(&mut to_a).await;
    assert_eq!(names(&deltas_a), BTreeSet::from(["web-0".to_owned()]));
    poll_until("web-1 waits unrouted", || {
        agent.metrics.outbox_unrouted.get() == 1
    })
    .await;

    // A change of the unheld shard waits too (coalesced with the first).
    agent
        .events
        .unbounded_send(deployment(1, "web-1", 2))
        .unwrap();
    agent
        .events
        .unbounded_send(deployment(0, "web-0", 2))
        .unwrap();
    let got = deltas(&mut to_a).await;
    assert_eq!(names(&got), BTreeSet::from(["web-0".to_owned()]));
    assert_eq!(agent.metrics.outbox_unrouted.get(), 1);

    // A claims shard 1 without asking for a snapshot: the waiting change goes.
    to_a.send(HubFrame::Shards(held(&[(0, 1), (1, 1)], &[])))
        .await;
    let got = deltas(&mut to_a).await;
    assert_eq!(names(&got), BTreeSet::from(["web-1".to_owned()]));
    assert_eq!(agent.metrics.outbox_unrouted.get(), 0);
    agent.stop(vec![to_a]).await;
}

#[tokio::test]
async fn a_shard_taken_over_with_snapshot_gets_a_snapshot_of_that_shard_only() {
    let pki = pki();
    let mut a = FakeHub::start(Arc::clone(&pki.server)).await;
    let mut b = FakeHub::start(Arc::clone(&pki.server)).await;
    let agent = start(config(&pki, format!("wss://{},wss://{}", a.addr, b.addr))).await;
    let mut to_a = welcome(
        &mut a,
        SessionMode::Snapshot,
        Some(held(&[(0, 1), (1, 1)], &[0, 1])),
    )
    .await;
    let (_, deltas_a) = snapshot(&mut to_a).await;
    assert_eq!(deltas_a.len(), 2);
    let mut to_b = welcome(
        &mut b,
        SessionMode::Resume { acked: 0 },
        Some(held(&[], &[])),
    )
    .await;

    // A change of shard 1 goes to A, which does not acknowledge it.
    agent
        .events
        .unbounded_send(deployment(1, "web-1", 2))
        .unwrap();
    assert_eq!(
        names(&deltas(&mut to_a).await),
        BTreeSet::from(["web-1".to_owned()])
    );

    // B takes shard 1 over (a higher term) and asks for its snapshot.
    to_b.send(HubFrame::Shards(held(&[(1, 2)], &[1]))).await;
    let (shards, deltas_b) = snapshot(&mut to_b).await;
    assert_eq!(shards, Some(vec![ShardId(1)]));
    assert_eq!(names(&deltas_b), BTreeSet::from(["web-1".to_owned()]));
    // The snapshot covered the entry A never acknowledged: B's ack of it
    // empties the outbox, A's stale claim notwithstanding.
    poll_until("B's snapshot acknowledged", || {
        agent.metrics.outbox_entries.get() == 0
    })
    .await;

    let routed = |hub: &FakeHub| {
        agent
            .metrics
            .routed_shards
            .with_label_values(&[&format!("wss://{}/v1/tunnel", hub.addr)])
            .get()
    };
    assert_eq!((routed(&a), routed(&b)), (1, 1), "one shard each");

    // From now on shard 1 goes to B, shard 0 still to A.
    agent
        .events
        .unbounded_send(deployment(1, "web-1", 3))
        .unwrap();
    agent
        .events
        .unbounded_send(deployment(0, "web-0", 3))
        .unwrap();
    assert_eq!(
        names(&deltas(&mut to_b).await),
        BTreeSet::from(["web-1".to_owned()])
    );
    assert_eq!(
        names(&deltas(&mut to_a).await),
        BTreeSet::from(["web-0".to_owned()])
    );
    agent.stop(vec![to_a, to_b]).await;
}

/// Answers the agent's heartbeats (other frames are dropped) until `n`
/// came; when each came.
async fn heartbeats(conn: &mut HubConn, n: usize) -> Vec<tokio::time::Instant> {
    let mut at = Vec::new();
    while at.len() < n {
        if let AgentFrame::Heartbeat(heartbeat) = conn.recv_any().await {
            at.push(tokio::time::Instant::now());
            conn.send(HubFrame::HeartbeatAck(uplink_protocol::HeartbeatAck {
                agent_time_ms: heartbeat.agent_time_ms,
                hub_time_ms: heartbeat.agent_time_ms,
            }))
            .await;
        }
    }
    at
}

fn gaps(at: &[tokio::time::Instant]) -> Vec<Duration> {
    at.windows(2).map(|pair| pair[1] - pair[0]).collect()
}

#[tokio::test]
async fn a_session_heartbeats_at_the_interval_its_replica_asked_for() {
    // Real time (the agent talks TLS over loopback): intervals far apart,
    // so that scheduling noise cannot blur them.
    let normal = Duration::from_millis(200);
    let keepalive = Duration::from_millis(1500);
    let pki = pki();
    let mut hub = FakeHub::start(Arc::clone(&pki.server)).await;
    let agent = start(AgentConfig {
        heartbeat_interval: normal,
        ..config(&pki, format!("wss://{}", hub.addr))
    })
    .await;
    let mut conn = hub.next_conn().await;
    let AgentFrame::Hello(_) = conn.recv().await else {
        panic!("expected Hello")
    };
    conn.send(HubFrame::Welcome(Welcome {
        protocol_version: 4,
        hub_epoch: 1,
        mode: SessionMode::Snapshot,
        heartbeat_interval_ms: 200,
        limits: Limits::default(),
        sync_target: None,
        shards: Some(ShardsHeld {
            heartbeat_interval_ms: Some(1500),
            ..held(&[(0, 1), (1, 1)], &[0, 1])
        }),
    }))
    .await;
    snapshot(&mut conn).await;

    // Keepalives: nothing in between, though the agent's own interval and
    // the Welcome's are 200 ms (the session stays up: three keepalive
    // intervals make it dead, not three of 200 ms).
    let slow = gaps(&heartbeats(&mut conn, 3).await);
    assert!(
        slow.iter().all(|gap| *gap >= keepalive - normal),
        "heartbeats {slow:?} apart, asked for every {keepalive:?}"
    );

    // The replica asks for nothing any more: the Welcome's interval again.
    conn.send(HubFrame::Shards(held(&[(0, 1), (1, 1)], &[])))
        .await;
    let fast = gaps(&heartbeats(&mut conn, 5).await);
    assert!(
        fast[1..].iter().all(|gap| *gap < keepalive - normal),
        "heartbeats {fast:?} apart after the interval went back to {normal:?}"
    );
    agent.stop(vec![conn]).await;
}

#[tokio::test]
async fn a_shard_moving_without_snapshot_is_sent_its_unacknowledged_entries() {
    let pki = pki();
    let mut a = FakeHub::start(Arc::clone(&pki.server)).await;
    let mut b = FakeHub::start(Arc::clone(&pki.server)).await;
    let agent = start(config(&pki, format!("wss://{},wss://{}", a.addr, b.addr))).await;
    // A holds shard 1 at term 5; B's claim at term 3 is stale.
    let mut to_a = welcome(&mut a, SessionMode::Snapshot, Some(held(&[(1, 5)], &[1]))).await;
    let (_, deltas_a) = snapshot(&mut to_a).await;
    assert_eq!(names(&deltas_a), BTreeSet::from(["web-1".to_owned()]));
    let mut to_b = welcome(
        &mut b,
        SessionMode::Resume { acked: 0 },
        Some(held(&[(0, 1), (1, 3)], &[])),
    )
    .await;
    // B holds shard 0, which nobody held: web-0 (waiting since the start)
    // goes to B, web-1 stays with A.
    assert_eq!(
        names(&deltas(&mut to_b).await),
        BTreeSet::from(["web-0".to_owned()])
    );
    agent
        .events
        .unbounded_send(deployment(1, "web-1", 2))
        .unwrap();
    assert_eq!(
        names(&deltas(&mut to_a).await),
        BTreeSet::from(["web-1".to_owned()])
    );
    // B claims shard 1 at a newer term without a snapshot: what A did not
    // acknowledge goes to B.
    to_b.send(HubFrame::Shards(held(&[(0, 1), (1, 6)], &[])))
        .await;
    let moved = deltas(&mut to_b).await;
    assert_eq!(names(&moved), BTreeSet::from(["web-1".to_owned()]));
    // A's late ack of it does not count for B: B's ack does.
    to_a.send(HubFrame::Ack(Ack::new(moved[0].seq))).await;
    agent
        .events
        .unbounded_send(deployment(0, "web-0", 2))
        .unwrap();
    let next = deltas(&mut to_b).await;
    assert_eq!(names(&next), BTreeSet::from(["web-0".to_owned()]));
    assert!(agent.metrics.outbox_entries.get() >= 1);
    to_b.send(HubFrame::Ack(Ack::new(next[0].seq))).await;
    poll_until("B acknowledged both", || {
        agent.metrics.outbox_entries.get() == 0
    })
    .await;
    agent.stop(vec![to_a, to_b]).await;
}

#[tokio::test]
async fn dns_discovery_finds_a_replica_by_name() {
    let pki = pki();
    let mut hub = FakeHub::start(Arc::clone(&pki.server)).await;
    let mut config = config(&pki, format!("wss://localhost:{}", hub.addr.port()));
    config.hub_discovery = HubDiscovery::Dns;
    config.hub_resolve_interval = Duration::from_millis(50);
    let agent = start(config).await;
    // An unreplicated hub behind the name: everything goes to it.
    let mut conn = welcome(&mut hub, SessionMode::Snapshot, None).await;
    let (shards, deltas) = snapshot(&mut conn).await;
    assert_eq!(shards, None);
    assert_eq!(deltas.len(), 2);
    // Resolving again (the same address) keeps the session.
    agent
        .events
        .unbounded_send(deployment(0, "web-0", 2))
        .unwrap();
    let AgentFrame::Deltas(batch) = conn.recv().await else {
        panic!("expected Deltas")
    };
    assert_eq!(batch.deltas[0].object.name, "web-0");
    agent.stop(vec![conn]).await;
}

/// A name whose addresses the test sets.
#[derive(Debug, Default)]
struct TestResolver(std::sync::Mutex<Vec<std::net::SocketAddr>>);

impl TestResolver {
    fn set(&self, addresses: &[std::net::SocketAddr]) {
        *self.0.lock().unwrap() = addresses.to_vec();
    }
}

impl uplink_agent::replicas::NameResolver for TestResolver {
    fn resolve(
        &self,
        _host: &str,
        _port: u16,
    ) -> futures::future::BoxFuture<'static, std::io::Result<Vec<std::net::SocketAddr>>> {
        let addresses = self.0.lock().unwrap().clone();
        Box::pin(async move { Ok(addresses) })
    }
}

#[tokio::test]
async fn dns_discovery_follows_the_addresses_of_the_name() {
    let pki = pki();
    let mut a = FakeHub::start(Arc::clone(&pki.server)).await;
    let mut b = FakeHub::start(Arc::clone(&pki.server)).await;
    let resolver = Arc::new(TestResolver::default());
    resolver.set(&[a.addr]);
    let mut config = config(&pki, "wss://localhost:8443".into());
    config.hub_discovery = HubDiscovery::Dns;
    config.hub_resolve_interval = Duration::from_millis(20);
    config.hub_resolver = Some(resolver.clone());
    let agent = start(config).await;

    let mut to_a = welcome(&mut a, SessionMode::Snapshot, Some(held(&[(0, 1)], &[0]))).await;
    let (_, deltas_a) = snapshot(&mut to_a).await;
    assert_eq!(names(&deltas_a), BTreeSet::from(["web-0".to_owned()]));

    // A second address appears: a session with it starts.
    resolver.set(&[a.addr, b.addr]);
    let mut to_b = welcome(&mut b, SessionMode::Snapshot, Some(held(&[(1, 1)], &[1]))).await;
    let (_, deltas_b) = snapshot(&mut to_b).await;
    assert_eq!(names(&deltas_b), BTreeSet::from(["web-1".to_owned()]));
    poll_until("two sessions", || agent.metrics.connected.get() == 2).await;

    // The first disappears: its session says goodbye and ends.
    resolver.set(&[b.addr]);
    said_goodbye(to_a).await;
    poll_until("one session", || agent.metrics.connected.get() == 1).await;
    let rendered = agent.metrics.render();
    assert!(
        !rendered.contains(&format!("({})", a.addr)),
        "the gone replica's series are removed:\n{rendered}"
    );
    // Shard 0 has no holder now: its changes wait.
    agent
        .events
        .unbounded_send(deployment(0, "web-0", 2))
        .unwrap();
    poll_until("web-0 waits unrouted", || {
        agent.metrics.outbox_unrouted.get() == 1
    })
    .await;
    agent.stop(vec![to_b]).await;
}
