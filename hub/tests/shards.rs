//! Replicated hubs (issue 20) end to end: hubs whose Leases are on the test
//! bed's API server, agents forged on loopback, each hub writing to its own
//! fake KCP. A replica tells agents its shards and what to snapshot,
//! refuses agents below version 4, acks and drops reports of shards it does
//! not hold, and stops writing a shard when its fence closes, before the
//! next holder starts. Real time with short lease timings; every wait is a
//! poll with a deadline.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::json;
use support::{Agent, FakeUpstream, TestHub, eventually, upsert};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use uplink_e2e::apiserver::{ApiServer, ApiServerConfig};
use uplink_hub::config::{LeaseConfig, ReplicasConfig};
use uplink_hub::health::{ClusterState, cluster_state};
use uplink_hub::replicas::ReplicaSettings;
use uplink_hub::session::KEEPALIVE_FACTOR;
use uplink_protocol::{
    Ack, AgentFrame, DeltaBatch, ErrorCode, Heartbeat, Hello, HubFrame, ShardId, ShardsHeld,
    SnapshotBegin, SnapshotChunk, SnapshotEnd, Welcome, shard_of,
};

const SHARDS: u16 = 2;
/// The workspace of every object the fake placement places.
const WORKSPACE: &str = "root:org:team-a";

fn replicas(identity: &str) -> ReplicasConfig {
    ReplicasConfig {
        shards: SHARDS,
        lease: Some(LeaseConfig {
            settings: ReplicaSettings {
                namespace: "default".into(),
                identity: identity.into(),
                prefix: "uplink-hub".into(),
                shards: SHARDS,
                lease_duration: Duration::from_secs(2),
                renew_deadline: Duration::from_millis(1500),
                retry_period: Duration::from_millis(200),
            },
            kubeconfig: None,
        }),
    }
}

async fn test_bed() -> Result<(ApiServer, kube::Config, tempfile::TempDir)> {
    let server = ApiServer::start(ApiServerConfig::default()).await?;
    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig, None)?;
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&kubeconfig)?,
        &kube::config::KubeConfigOptions::default(),
    )
    .await?;
    Ok((server, config, dir))
}

async fn replica(identity: &str, leases: kube::Config) -> Result<TestHub> {
    replica_with(identity, leases, |_| {}).await
}

/// A replica whose configuration `adjust` may change further.
async fn replica_with(
    identity: &str,
    leases: kube::Config,
    adjust: impl FnOnce(&mut uplink_hub::config::HubConfig),
) -> Result<TestHub> {
    TestHub::start_replica(
        |config| {
            config.replicas = replicas(identity);
            adjust(config);
        },
        Arc::new(FakeUpstream::default()),
        kube::Client::try_from(leases)?,
    )
    .await
}

/// Polls `check` until true, for at most `limit`.
async fn within(what: &str, limit: Duration, mut check: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + limit;
    while !check() {
        if Instant::now() > deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

fn held(hub: &TestHub) -> Vec<ShardId> {
    hub.ownership
        .claims()
        .unwrap_or_default()
        .iter()
        .map(|c| c.shard)
        .collect()
}

fn welcome(frame: HubFrame) -> Result<Welcome> {
    match frame {
        HubFrame::Welcome(welcome) => Ok(welcome),
        other => bail!("expected Welcome, got {other:?}"),
    }
}

/// The next `Shards` frame, skipping acks.
async fn next_shards(agent: &mut Agent) -> Result<ShardsHeld> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), agent.recv()).await?? {
            HubFrame::Shards(shards) => return Ok(shards),
            HubFrame::Ack(_) => {}
            other => bail!("expected Shards, got {other:?}"),
        }
    }
}

async fn snapshot_of(agent: &mut Agent, shards: Vec<ShardId>, seq: u64) -> Result<()> {
    agent
        .send(&AgentFrame::SnapshotBegin(SnapshotBegin {
            objects: 1,
            shards: Some(shards),
        }))
        .await?;
    agent
        .send(&AgentFrame::SnapshotChunk(SnapshotChunk {
            deltas: vec![upsert(seq, "web", json!({"replicas": 1}))],
        }))
        .await?;
    agent
        .send(&AgentFrame::SnapshotEnd(SnapshotEnd {
            seq,
            upsync_listed: false,
        }))
        .await
}

async fn delta(agent: &mut Agent, seq: u64, replicas: u64) -> Result<Ack> {
    agent
        .send(&AgentFrame::Deltas(DeltaBatch {
            deltas: vec![upsert(seq, "web", json!({"replicas": replicas}))],
        }))
        .await?;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), agent.recv()).await?? {
            // Acks of what was sent before (a snapshot) come first.
            HubFrame::Ack(ack) if ack.seq >= seq => return Ok(ack),
            HubFrame::Ack(_) | HubFrame::Shards(_) => {}
            other => bail!("expected Ack, got {other:?}"),
        }
    }
}

fn unheld(hub: &TestHub, kind: &str) -> u64 {
    hub.metrics
        .registry()
        .gather()
        .iter()
        .filter(|family| family.name() == "uplink_hub_unheld_shard_items_total")
        .flat_map(|family| family.get_metric().iter())
        .filter(|metric| {
            metric
                .get_label()
                .iter()
                .any(|l| l.name() == "kind" && l.value() == kind)
        })
        .map(|metric| metric.get_counter().get_value() as u64)
        .sum()
}

#[tokio::test]
async fn a_replica_welcomes_with_its_shards_and_refuses_agents_below_v4() -> Result<()> {
    let (_server, leases, _dir) = test_bed().await?;
    let hub = replica("hub-a", leases).await?;
    within("hub-a holding every shard", Duration::from_secs(10), || {
        held(&hub).len() == usize::from(SHARDS)
    })
    .await?;

    let mut agent = hub.connect(&hub.pki.client("edge-1")?).await?;
    let hello = welcome(agent.hello("edge-1", "s1", None, 0).await?)?;
    let shards = hello
        .shards
        .context("a replica's Welcome names its shards")?;
    assert_eq!(shards.count, SHARDS);
    let all: Vec<ShardId> = (0..SHARDS).map(ShardId).collect();
    assert_eq!(shards.held.iter().map(|c| c.shard).collect::<Vec<_>>(), all);
    assert_eq!(shards.snapshot, all, "a new session snapshots every shard");
    // It sends shard 0's snapshot only, then reconnects: it resumes, and is
    // asked again for the shard whose snapshot never came.
    snapshot_of(&mut agent, vec![ShardId(0)], 3).await?;
    match agent.recv().await? {
        HubFrame::Ack(ack) => assert_eq!(ack.seq, 3),
        other => bail!("expected the snapshot's Ack, got {other:?}"),
    }
    drop(agent);
    let mut agent = hub.connect(&hub.pki.client("edge-1")?).await?;
    let again = welcome(
        agent
            .hello("edge-1", "s1", Some(hello.hub_epoch), 3)
            .await?,
    )?;
    assert_eq!(
        again.mode,
        uplink_protocol::SessionMode::Resume { acked: 3 }
    );
    let shards = again.shards.context("shards in Welcome")?;
    assert_eq!(shards.snapshot, vec![ShardId(1)]);

    let mut old = hub.connect(&hub.pki.client("east")?).await?;
    old.send(&AgentFrame::Hello(Hello {
        protocol_versions: vec![1, 2, 3],
        cluster: "east".into(),
        agent_version: "test".into(),
        session_id: "s2".into(),
        last_hub_epoch: None,
        last_ack: 0,
        downward_resources: Vec::new(),
        upsync_resources: Vec::new(),
    }))
    .await?;
    match old.recv().await? {
        HubFrame::Error(error) => {
            assert_eq!(error.code, ErrorCode::UnsupportedVersion);
            assert!(error.message.contains("replicas"), "{}", error.message);
        }
        other => bail!("expected the v3 agent refused, got {other:?}"),
    }

    let (status, body) = hub.get("/readyz").await?;
    assert_eq!(status, 200);
    assert!(
        body.starts_with("ok\nidentity hub-a\nshards 2/2 held: 00@"),
        "{body}"
    );
    let (status, body) = hub.get("/api/v1/shards").await?;
    assert_eq!(status, 200);
    let view: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(view["identity"], "hub-a");
    assert_eq!(view["count"], SHARDS);
    assert_eq!(view["held"].as_array().map(Vec::len), Some(2));
    hub.stop().await
}

#[tokio::test]
async fn shards_frames_follow_a_rebalance_and_unheld_reports_are_acked_dropped_and_counted()
-> Result<()> {
    let (_server, leases, _dir) = test_bed().await?;
    let a = replica("hub-a", leases.clone()).await?;
    within("hub-a holding every shard", Duration::from_secs(10), || {
        held(&a).len() == usize::from(SHARDS)
    })
    .await?;
    let mut on_a = a.connect(&a.pki.client("edge-1")?).await?;
    welcome(on_a.hello("edge-1", "s1", None, 0).await?)?;

    // hub-b joins holding nothing; its share comes after hub-a's settle time.
    let b = replica("hub-b", leases).await?;
    let mut on_b = b.connect(&b.pki.client("east")?).await?;
    let first = welcome(on_b.hello("east", "s1", None, 0).await?)?;
    let first = first.shards.context("shards in Welcome")?;
    let told_b = if first.held.is_empty() {
        let shards = next_shards(&mut on_b).await?;
        assert_eq!(
            shards.snapshot,
            shards.held.iter().map(|c| c.shard).collect::<Vec<_>>(),
            "the newly acquired shards are to be snapshotted"
        );
        shards
    } else {
        first // hub-b was quicker than the connection: Welcome says it all
    };
    assert_eq!(told_b.held.len(), 1, "{told_b:?}");
    // hub-a tells its agent it gave that shard up, with nothing to snapshot.
    let told_a = next_shards(&mut on_a).await?;
    assert_eq!(told_a.held.len(), 1, "{told_a:?}");
    assert!(told_a.snapshot.is_empty());
    assert_ne!(told_a.held[0].shard, told_b.held[0].shard);

    // Exactly one of them holds the placed workspace's shard.
    let shard = shard_of(WORKSPACE, SHARDS);
    let (holder, mut to_holder, other, mut to_other) = if told_a.held[0].shard == shard {
        (&a, on_a, &b, on_b)
    } else {
        (&b, on_b, &a, on_a)
    };
    // The other acks a report of that shard, drops it and counts it.
    let ack = delta(&mut to_other, 10, 5).await?;
    assert_eq!(ack.seq, 10);
    within("the unheld delta counted", Duration::from_secs(5), || {
        unheld(other, "delta") == 1
    })
    .await?;
    // The holder writes once its agent sent the shard's snapshot.
    snapshot_of(&mut to_holder, vec![shard], 20).await?;
    let ack = delta(&mut to_holder, 21, 2).await?;
    assert_eq!(ack.seq, 21);
    let upstream = holder.upstream.clone();
    eventually("the holder writing the object", || {
        upstream
            .patches()
            .iter()
            .any(|(_, patch)| *patch == json!({"status": {"replicas": 2}}))
    })
    .await?;
    // (It may write SyncTargets: those of the `root` workspace's shard.)
    let wrote: Vec<_> = other
        .upstream
        .patches()
        .into_iter()
        .filter(|(key, _)| key.workspace == WORKSPACE)
        .collect();
    ensure!(
        wrote.is_empty(),
        "a replica not holding the shard wrote: {wrote:?}"
    );
    let root_held_by_other = other.ownership.holds_workspace("root");
    ensure!(
        other
            .upstream
            .patches()
            .iter()
            .all(|(key, _)| key.workspace != "root" || root_held_by_other),
        "a SyncTarget written by a replica not holding its workspace's shard"
    );
    a.stop().await?;
    b.stop().await
}

/// Sends a heartbeat and waits for its answer (skipping acks and shards);
/// fails if the hub closed the session.
async fn heartbeat(agent: &mut Agent) -> Result<()> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    agent
        .send(&AgentFrame::Heartbeat(Heartbeat {
            agent_time_ms: i64::try_from(now)?,
            summary: None,
        }))
        .await?;
    loop {
        match agent.recv().await? {
            HubFrame::HeartbeatAck(_) => return Ok(()),
            HubFrame::Ack(_) | HubFrame::Shards(_) => {}
            other => bail!("expected HeartbeatAck, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn only_the_replica_holding_the_synctargets_shard_asks_for_full_rate_heartbeats() -> Result<()>
{
    // Short intervals, so that three of them pass quickly.
    let full = Duration::from_millis(300);
    let keepalive = full * KEEPALIVE_FACTOR;
    let (_server, leases, _dir) = test_bed().await?;
    let fast = |config: &mut uplink_hub::config::HubConfig| config.heartbeat_interval = full;
    let a = replica_with("hub-a", leases.clone(), fast).await?;
    within("hub-a holding every shard", Duration::from_secs(10), || {
        held(&a).len() == usize::from(SHARDS)
    })
    .await?;
    let b = replica_with("hub-b", leases, fast).await?;
    within(
        "each replica holding one shard",
        Duration::from_secs(20),
        || held(&a).len() == 1 && held(&b).len() == 1,
    )
    .await?;

    // The fake placement's SyncTargets are in one workspace; its shard's
    // holder is every cluster's health replica.
    let mut on_a = a.connect(&a.pki.client("east")?).await?;
    let to_a = welcome(on_a.hello("east", "s1", None, 0).await?)?;
    let workspace = to_a
        .sync_target
        .as_ref()
        .context("the Welcome names the SyncTarget")?
        .workspace
        .clone();
    let shard = shard_of(&workspace, SHARDS);
    let asked_of_a = to_a.shards.context("shards in Welcome")?;
    let a_holds = asked_of_a.held.iter().any(|claim| claim.shard == shard);
    let mut on_b = b.connect(&b.pki.client("east")?).await?;
    let asked_of_b = welcome(on_b.hello("east", "s1", None, 0).await?)?
        .shards
        .context("shards in Welcome")?;
    let b_holds = asked_of_b.held.iter().any(|claim| claim.shard == shard);
    ensure!(
        a_holds != b_holds,
        "exactly one replica holds shard {shard}: {asked_of_a:?} {asked_of_b:?}"
    );
    let (health_asked, other_asked, other, mut to_other) = if a_holds {
        (asked_of_a, asked_of_b, &b, on_b)
    } else {
        (asked_of_b, asked_of_a, &a, on_a)
    };
    let ms = |d: Duration| u64::try_from(d.as_millis()).ok();
    assert_eq!(health_asked.heartbeat_interval_ms, ms(full));
    assert_eq!(other_asked.heartbeat_interval_ms, ms(keepalive));

    // The other replica keeps a session that heartbeats only every four
    // configured intervals (past the three that would end it), and shows
    // the cluster Ready between them.
    let grace = Duration::from_secs(300);
    for _ in 0..4 {
        heartbeat(&mut to_other).await?;
        // Pacing the agent's heartbeats: this wait is what is tested.
        tokio::time::sleep(full * 4).await;
        let record = other.health.record("east").context("east's record")?;
        assert_eq!(
            cluster_state(&record, std::time::SystemTime::now(), full, grace),
            ClusterState::Ready,
            "Ready between keepalives"
        );
    }
    heartbeat(&mut to_other).await?;
    a.stop().await?;
    b.stop().await
}

/// A TCP proxy that can freeze: while frozen, bytes wait in it (a network
/// partition that drops nothing).
struct Freezer {
    addr: SocketAddr,
    frozen: watch::Sender<bool>,
}

impl Freezer {
    async fn start(upstream: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (frozen, _) = watch::channel(false);
        let gate = frozen.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(pipe(client_read, server_write, gate.subscribe()));
                tokio::spawn(pipe(server_read, client_write, gate.subscribe()));
            }
        });
        Ok(Self { addr, frozen })
    }

    fn freeze(&self, frozen: bool) {
        self.frozen.send_replace(frozen);
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: watch::Receiver<bool>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let Ok(n) = from.read(&mut buffer).await else {
            return;
        };
        if n == 0 || frozen.wait_for(|frozen| !frozen).await.is_err() {
            return;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test]
async fn a_partitioned_replica_stops_writing_before_the_next_holder_starts() -> Result<()> {
    let (server, leases, _dir) = test_bed().await?;
    let freezer = Freezer::start(server.addr()).await?;
    let mut partitioned = leases.clone();
    partitioned.cluster_url = format!("https://{}", freezer.addr).parse()?;
    let a = replica("hub-a", partitioned).await?;
    within("hub-a holding every shard", Duration::from_secs(10), || {
        held(&a).len() == usize::from(SHARDS)
    })
    .await?;
    let shard = shard_of(WORKSPACE, SHARDS);
    let mut on_a = a.connect(&a.pki.client("edge-1")?).await?;
    welcome(on_a.hello("edge-1", "s1", None, 0).await?)?;
    snapshot_of(&mut on_a, (0..SHARDS).map(ShardId).collect(), 1).await?;
    let mut seq = 1;
    // hub-a writes while it holds the shard.
    seq += 1;
    delta(&mut on_a, seq, 100).await?;
    let upstream_a = a.upstream.clone();
    eventually("hub-a writing", || !upstream_a.patches().is_empty()).await?;

    // Partitioned from the Leases: its fence closes within the renew
    // deadline, and from then on nothing more is written, whatever comes.
    freezer.freeze(true);
    within("hub-a's fence closing", Duration::from_secs(5), || {
        !a.ownership.holds(shard)
    })
    .await?;
    let closed_at = Instant::now();
    let b = replica("hub-b", leases).await?;
    let mut on_b = b.connect(&b.pki.client("east")?).await?;
    welcome(on_b.hello("east", "s1", None, 0).await?)?;
    within(
        "hub-b taking the shard over",
        Duration::from_secs(15),
        || b.ownership.holds(shard),
    )
    .await?;
    // Meanwhile and after, hub-a is sent more: acked, never written.
    for replicas in 101..110 {
        seq += 1;
        assert_eq!(delta(&mut on_a, seq, replicas).await?.seq, seq);
    }
    snapshot_of(&mut on_b, vec![shard], 50).await?;
    let ack = delta(&mut on_b, 51, 7).await?;
    assert_eq!(ack.seq, 51);
    let upstream_b = b.upstream.clone();
    eventually("hub-b writing", || !upstream_b.patches().is_empty()).await?;

    let last_a = upstream_a
        .stamps
        .lock()
        .map(|s| s.iter().map(|(_, at)| *at).max())
        .ok()
        .flatten()
        .context("hub-a wrote")?;
    let first_b = upstream_b
        .stamps
        .lock()
        .map(|s| s.iter().map(|(_, at)| *at).min())
        .ok()
        .flatten()
        .context("hub-b wrote")?;
    ensure!(last_a <= closed_at, "hub-a wrote after its fence closed");
    ensure!(last_a < first_b, "hub-a and hub-b both wrote the shard");
    ensure!(
        !upstream_a
            .patches()
            .iter()
            .any(|(_, patch)| patch["status"]["replicas"].as_u64() > Some(100)),
        "a report sent after the fence closed was written"
    );
    assert!(unheld(&a, "delta") >= 9);
    freezer.freeze(false);
    a.stop().await?;
    b.stop().await
}
