//! The hub's tunnel end to end on loopback: mutual TLS, the WebSocket
//! upgrade, protocol v1 sessions, refusals, and the writes they cause.

mod support;

use anyhow::{Result, bail};
use serde_json::json;
use support::{Agent, End, FakePlacement, TestHub, eventually, upsert};
use uplink_protocol::{
    Ack, AgentFrame, Delta, DeltaBatch, ErrorCode, HubFrame, Limits, PROTOCOL_VERSION, Rejected,
    SessionMode, SnapshotBegin, SnapshotChunk, SnapshotEnd, close,
};

fn welcome(frame: HubFrame) -> Result<uplink_protocol::Welcome> {
    match frame {
        HubFrame::Welcome(welcome) => Ok(welcome),
        other => bail!("expected Welcome, got {other:?}"),
    }
}

/// Sends `deltas` as a snapshot in one chunk, ending at `seq`.
async fn snapshot(agent: &mut Agent, deltas: Vec<Delta>, seq: u64) -> Result<()> {
    let objects = u64::try_from(deltas.len())?;
    agent
        .send(&AgentFrame::SnapshotBegin(SnapshotBegin {
            objects,
            shards: None,
        }))
        .await?;
    agent
        .send(&AgentFrame::SnapshotChunk(SnapshotChunk { deltas }))
        .await?;
    agent
        .send(&AgentFrame::SnapshotEnd(SnapshotEnd {
            seq,
            upsync_listed: false,
        }))
        .await
}

fn error_code(frame: HubFrame) -> Result<ErrorCode> {
    match frame {
        HubFrame::Error(error) => Ok(error.code),
        other => bail!("expected Error, got {other:?}"),
    }
}

#[tokio::test]
async fn snapshot_then_deltas_are_acked_stored_and_written() -> Result<()> {
    let hub = TestHub::start(Limits::default()).await?;
    let identity = hub.pki.client("edge-1")?;
    let mut agent = hub.connect(&identity).await?;

    let hello = welcome(agent.hello("edge-1", "session-a", None, 0).await?)?;
    assert_eq!(hello.mode, SessionMode::Snapshot);
    assert_eq!(hello.protocol_version, PROTOCOL_VERSION);

    snapshot(
        &mut agent,
        vec![upsert(3, "web", json!({"replicas": 1}))],
        5,
    )
    .await?;
    assert_eq!(agent.recv().await?, HubFrame::Ack(Ack::new(5)));

    agent
        .send(&AgentFrame::Deltas(DeltaBatch {
            deltas: vec![
                upsert(6, "web", json!({"replicas": 2})),
                upsert(7, "api", json!({"replicas": 3})),
            ],
        }))
        .await?;
    assert_eq!(agent.recv().await?, HubFrame::Ack(Ack::new(7)));

    let upstream = hub.upstream.clone();
    eventually("patches of both objects' latest status", || {
        let patches = upstream.patches();
        let last = |name: &str| {
            patches
                .iter()
                .rev()
                .find(|(key, _)| key.name == name)
                .map(|(_, patch)| patch.clone())
        };
        last("web") == Some(json!({"status": {"replicas": 2}}))
            && last("api") == Some(json!({"status": {"replicas": 3}}))
    })
    .await?;
    let patched = upstream.patches();
    assert_eq!(patched[0].0.workspace, "root:org:team-a");
    assert_eq!(
        hub.metrics
            .deltas_received
            .with_label_values(&["edge-1"])
            .get(),
        3
    );
    assert_eq!(hub.metrics.agents_connected.get(), 1);

    // The same agent process reconnects: same session and epoch → resume.
    drop(agent);
    let mut agent = hub.connect(&identity).await?;
    let resumed = welcome(
        agent
            .hello("edge-1", "session-a", Some(hello.hub_epoch), 7)
            .await?,
    )?;
    assert_eq!(resumed.mode, SessionMode::Resume { acked: 7 });
    // A restarted agent (new session) must snapshot.
    let mut restarted = hub.connect(&identity).await?;
    let fresh = welcome(
        restarted
            .hello("edge-1", "session-b", Some(hello.hub_epoch), 0)
            .await?,
    )?;
    assert_eq!(fresh.mode, SessionMode::Snapshot);
    // ...and it replaced the previous connection.
    assert_eq!(error_code(agent.recv().await?)?, ErrorCode::Superseded);
    assert_eq!(
        agent.end().await?,
        End::Closed(Some(close::POLICY_VIOLATION))
    );

    let (status, body) = hub.get("/api/v1/clusters").await?;
    assert_eq!(status, 200);
    let clusters: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(clusters["items"][0]["name"], "edge-1");
    assert_eq!(clusters["items"][0]["connected"], true);
    assert_eq!(clusters["items"][0]["objects"], 2);

    drop((agent, restarted));
    hub.stop().await
}

#[tokio::test]
async fn every_connected_cluster_gets_its_placement_from_one_watch_per_type() -> Result<()> {
    let placement = FakePlacement::default();
    let watches = placement.placed_watches.clone();
    let hub = TestHub::start_placed(|_| {}, placement).await?;
    let clusters = ["edge-1", "east", "west"];
    let mut agents = Vec::new();
    for cluster in clusters {
        let mut agent = hub.connect(&hub.pki.client(cluster)?).await?;
        welcome(agent.hello(cluster, "s", None, 0).await?)?;
        snapshot(
            &mut agent,
            vec![upsert(1, "web", json!({"replicas": 1}))],
            1,
        )
        .await?;
        assert_eq!(agent.recv().await?, HubFrame::Ack(Ack::new(1)));
        agents.push(agent);
    }
    // Each cluster's report was taken: its share of the one watch placed
    // `web` on it.
    let (status, body) = hub.get("/api/v1/clusters").await?;
    assert_eq!(status, 200);
    let listed: serde_json::Value = serde_json::from_str(&body)?;
    for cluster in clusters {
        let record = listed["items"]
            .as_array()
            .and_then(|items| items.iter().find(|c| c["name"] == cluster));
        assert_eq!(
            record.map(|c| c["objects"].clone()),
            Some(json!(1)),
            "{cluster}"
        );
    }
    assert_eq!(
        watches.load(std::sync::atomic::Ordering::SeqCst),
        uplink_hub::config::default_resources().len(),
        "one watch per synced type, however many clusters connect"
    );
    drop(agents);
    hub.stop().await
}

#[tokio::test]
async fn hello_claiming_another_cluster_is_refused() -> Result<()> {
    let hub = TestHub::start(Limits::default()).await?;
    let mut agent = hub.connect(&hub.pki.client("edge-1")?).await?;
    match agent.hello("edge-2", "s", None, 0).await? {
        HubFrame::Error(error) => {
            assert_eq!(error.code, ErrorCode::IdentityMismatch);
            assert!(error.message.contains("edge-1") && error.message.contains("edge-2"));
        }
        other => bail!("expected Error, got {other:?}"),
    }
    assert_eq!(
        agent.end().await?,
        End::Closed(Some(close::POLICY_VIOLATION))
    );
    assert_eq!(
        hub.metrics
            .handshake_failures
            .with_label_values(&["identity_mismatch"])
            .get(),
        1
    );
    // Another agent is unaffected.
    let mut other = hub.connect(&hub.pki.client("edge-2")?).await?;
    welcome(other.hello("edge-2", "s", None, 0).await?)?;
    drop((agent, other));
    hub.stop().await
}

#[tokio::test]
async fn certificate_from_another_ca_fails_the_tls_handshake() -> Result<()> {
    let hub = TestHub::start(Limits::default()).await?;
    let stranger = support::Pki::new("another CA")?.client("edge-1")?;
    let refused = match hub.tls(&stranger).await {
        Err(_) => true,
        // TLS 1.3: the refusal may only show on the first read.
        Ok(mut tls) => {
            use tokio::io::AsyncReadExt;
            let mut buf = [0u8; 1];
            !matches!(tls.read(&mut buf).await, Ok(n) if n > 0)
        }
    };
    assert!(refused, "the hub accepted a certificate from another CA");
    let metrics = hub.metrics.clone();
    eventually("the TLS failure to be counted", || {
        metrics.handshake_failures.with_label_values(&["tls"]).get() == 1
    })
    .await?;
    hub.stop().await
}

#[tokio::test]
async fn wrong_path_and_missing_subprotocol_are_refused() -> Result<()> {
    let hub = TestHub::start(Limits::default()).await?;
    let identity = hub.pki.client("edge-1")?;
    let err = hub
        .connect_to(&identity, "/elsewhere", Some("uplink.v1"))
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("404"), "{err}");
    let err = hub
        .connect_to(&identity, "/v1/tunnel", Some("other.v9"))
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("400"), "{err}");
    assert_eq!(
        hub.metrics
            .handshake_failures
            .with_label_values(&["websocket"])
            .get(),
        2
    );
    hub.stop().await
}

#[tokio::test]
async fn bad_frames_end_only_their_own_session() -> Result<()> {
    let limits = Limits {
        max_frame_bytes: 16 * 1024,
        ..Limits::default()
    };
    let hub = TestHub::start(limits).await?;
    let mut good = hub.connect(&hub.pki.client("good")?).await?;
    welcome(good.hello("good", "s", None, 0).await?)?;
    good.send(&AgentFrame::Deltas(DeltaBatch {
        deltas: vec![upsert(1, "web", json!({"ok": true}))],
    }))
    .await?;
    assert_eq!(good.recv().await?, HubFrame::Ack(Ack::new(1)));

    // Garbage instead of msgpack.
    let mut garbage = hub.connect(&hub.pki.client("garbage")?).await?;
    welcome(garbage.hello("garbage", "s", None, 0).await?)?;
    garbage.send_raw(vec![0xc1, 0xff, 0x00]).await?;
    assert_eq!(error_code(garbage.recv().await?)?, ErrorCode::Malformed);
    assert_eq!(
        garbage.end().await?,
        End::Closed(Some(close::PROTOCOL_ERROR))
    );

    // A message over the frame limit.
    let mut big = hub.connect(&hub.pki.client("big")?).await?;
    welcome(big.hello("big", "s", None, 0).await?)?;
    big.send_raw(vec![0u8; 64 * 1024]).await?;
    assert_eq!(error_code(big.recv().await?)?, ErrorCode::LimitExceeded);
    assert_eq!(big.end().await?, End::Closed(Some(close::POLICY_VIOLATION)));

    let rejected = |cluster: &str, reason: &str| {
        hub.metrics
            .frames_rejected
            .with_label_values(&[cluster, reason])
            .get()
    };
    assert_eq!(rejected("garbage", "malformed"), 1);
    assert_eq!(rejected("big", "frame_too_large"), 1);

    // The good session still works, and its object is intact.
    good.send(&AgentFrame::Deltas(DeltaBatch {
        deltas: vec![upsert(2, "web", json!({"ok": "still"}))],
    }))
    .await?;
    assert_eq!(good.recv().await?, HubFrame::Ack(Ack::new(2)));
    let (_, objects) = hub.get("/api/v1/objects").await?;
    let objects: serde_json::Value = serde_json::from_str(&objects)?;
    assert_eq!(objects["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        objects["items"][0]["desired_status"],
        json!({"ok": "still"})
    );
    drop((good, garbage, big));
    hub.stop().await
}

/// An `Error` fits the string limit the hub announces, even one below the
/// protocol's own cap on error messages (found by the hub_session fuzz
/// target: the hub sent a 70-byte message under a 64-byte limit).
#[tokio::test]
async fn error_messages_fit_the_announced_string_limit() -> Result<()> {
    let limits = Limits {
        max_string_bytes: 24,
        ..Limits::default()
    };
    let hub = TestHub::start(limits).await?;
    let mut agent = hub.connect(&hub.pki.client("east")?).await?;
    let announced = welcome(agent.hello("east", "s", None, 0).await?)?.limits;
    assert_eq!(announced.max_string_bytes, 24);
    agent.send_raw(vec![0xc1, 0xff, 0x00]).await?;
    match agent.recv().await? {
        HubFrame::Error(error) => {
            assert_eq!(error.code, ErrorCode::Malformed);
            assert!(
                error.message.len() <= 24 && error.message.starts_with("malformed frame"),
                "{:?}",
                error.message
            );
        }
        other => bail!("expected Error, got {other:?}"),
    }
    assert_eq!(agent.end().await?, End::Closed(Some(close::PROTOCOL_ERROR)));
    hub.stop().await
}

/// One delta the hub cannot use (a status that is not a JSON object, a name
/// that is not a path segment) is skipped and counted; the rest of its batch
/// is stored, the whole batch acked, and the session goes on. Otherwise the
/// agent would resend it after every reconnect, blocking its cluster.
#[tokio::test]
async fn a_delta_the_hub_cannot_use_is_skipped_not_fatal() -> Result<()> {
    let hub = TestHub::start(Limits::default()).await?;
    let mut agent = hub.connect(&hub.pki.client("east")?).await?;
    let epoch = welcome(agent.hello("east", "s", None, 0).await?)?.hub_epoch;
    let mut bad_name = upsert(3, "bad", json!({"ok": true}));
    bad_name.object.namespace = Some("a/b".into());
    agent
        .send(&AgentFrame::Deltas(DeltaBatch {
            deltas: vec![
                upsert(1, "odd", json!([1, 2])),
                upsert(2, "web", json!({"ok": true})),
                bad_name,
            ],
        }))
        .await?;
    // Refused, and the agent is told which and why.
    assert_eq!(
        agent.recv().await?,
        HubFrame::Ack(Ack {
            seq: 3,
            rejected: vec![
                Rejected {
                    seq: 1,
                    reason: Rejected::STATUS_NOT_OBJECT.into()
                },
                Rejected {
                    seq: 3,
                    reason: Rejected::INVALID_OBJECT.into()
                },
            ],
        })
    );
    let rejected = |reason: &str| {
        hub.metrics
            .rejected_deltas
            .with_label_values(&["east", reason])
            .get()
    };
    assert_eq!(rejected("status_not_object"), 1);
    assert_eq!(rejected("invalid_object"), 1);
    assert_eq!(
        hub.metrics
            .frames_rejected
            .with_label_values(&["east", "status_not_object"])
            .get(),
        0
    );

    // The session goes on; snapshots skip such deltas the same way.
    agent
        .send(&AgentFrame::Deltas(DeltaBatch {
            deltas: vec![upsert(4, "web", json!({"ok": "still"}))],
        }))
        .await?;
    assert_eq!(agent.recv().await?, HubFrame::Ack(Ack::new(4)));
    let (_, objects) = hub.get("/api/v1/objects").await?;
    let objects: serde_json::Value = serde_json::from_str(&objects)?;
    assert_eq!(
        objects["items"].as_array().map(Vec::len),
        Some(1),
        "{objects}"
    );
    assert_eq!(
        objects["items"][0]["desired_status"],
        json!({"ok": "still"})
    );

    // A reconnect resumes after the skipped deltas too.
    drop(agent);
    let mut agent = hub.connect(&hub.pki.client("east")?).await?;
    let resumed = welcome(agent.hello("east", "s", Some(epoch), 4).await?)?;
    assert_eq!(resumed.mode, SessionMode::Resume { acked: 4 });
    agent
        .send(&AgentFrame::Deltas(DeltaBatch {
            deltas: vec![upsert(5, "odd", json!("text"))],
        }))
        .await?;
    assert!(matches!(
        agent.recv().await?,
        HubFrame::Ack(Ack { seq: 5, .. })
    ));

    let mut fresh = hub.connect(&hub.pki.client("west")?).await?;
    welcome(fresh.hello("west", "s2", None, 0).await?)?;
    fresh
        .send(&AgentFrame::SnapshotBegin(SnapshotBegin {
            objects: 2,
            shards: None,
        }))
        .await?;
    fresh
        .send(&AgentFrame::SnapshotChunk(SnapshotChunk {
            deltas: vec![
                upsert(1, "odd", json!(7)),
                upsert(2, "api", json!({"ok": true})),
            ],
        }))
        .await?;
    fresh
        .send(&AgentFrame::SnapshotEnd(SnapshotEnd {
            seq: 2,
            upsync_listed: false,
        }))
        .await?;
    assert!(matches!(
        fresh.recv().await?,
        HubFrame::Ack(Ack { seq: 2, .. })
    ));
    let (_, objects) = hub.get("/api/v1/objects").await?;
    let objects: serde_json::Value = serde_json::from_str(&objects)?;
    assert_eq!(
        objects["items"].as_array().map(Vec::len),
        Some(2),
        "{objects}"
    );
    drop((agent, fresh));
    hub.stop().await
}

#[tokio::test]
async fn frames_before_hello_are_refused() -> Result<()> {
    let hub = TestHub::start(Limits::default()).await?;
    let mut agent = hub.connect(&hub.pki.client("edge-1")?).await?;
    agent
        .send(&AgentFrame::Deltas(DeltaBatch { deltas: vec![] }))
        .await?;
    assert_eq!(error_code(agent.recv().await?)?, ErrorCode::UnexpectedFrame);
    assert_eq!(agent.end().await?, End::Closed(Some(close::PROTOCOL_ERROR)));
    drop(agent);
    hub.stop().await
}

#[tokio::test]
async fn shutdown_says_bye_and_http_reports_it() -> Result<()> {
    let hub = TestHub::start(Limits::default()).await?;
    assert_eq!(hub.get("/healthz").await?.0, 200);
    assert_eq!(hub.get("/readyz").await?.0, 200);
    let (status, metrics) = hub.get("/metrics").await?;
    assert_eq!(status, 200);
    for name in [
        "uplink_hub_agents_connected",
        "uplink_hub_kcp_write_duration_seconds",
        "uplink_hub_store_objects",
        "uplink_hub_kcp_write_queue_depth",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }

    let mut agent = hub.connect(&hub.pki.client("edge-1")?).await?;
    welcome(agent.hello("edge-1", "s", None, 0).await?)?;
    agent
        .send(&AgentFrame::Heartbeat(uplink_protocol::Heartbeat {
            agent_time_ms: 1,
            summary: None,
        }))
        .await?;
    assert!(matches!(agent.recv().await?, HubFrame::HeartbeatAck(_)));
    assert_eq!(
        hub.metrics.heartbeats.with_label_values(&["edge-1"]).get(),
        1
    );

    hub.shutdown.cancel();
    assert!(matches!(agent.recv().await?, HubFrame::Bye(_)));
    assert_eq!(agent.end().await?, End::Closed(Some(close::GOING_AWAY)));
    drop(agent);
    hub.stop().await
}

#[tokio::test]
async fn a_silent_agent_is_dropped_after_three_intervals() -> Result<()> {
    let hub = TestHub::start_with(|config| {
        config.heartbeat_interval = std::time::Duration::from_millis(100);
    })
    .await?;
    let mut agent = hub.connect(&hub.pki.client("edge-1")?).await?;
    welcome(agent.hello("edge-1", "s", None, 0).await?)?;
    let started = std::time::Instant::now();
    assert_eq!(agent.end().await?, End::Closed(Some(close::GOING_AWAY)));
    assert!(started.elapsed() >= std::time::Duration::from_millis(300));
    drop(agent);
    let metrics = hub.metrics.clone();
    eventually("the agent to count as disconnected", || {
        metrics.agents_connected.get() == 0
    })
    .await?;
    hub.stop().await
}

#[tokio::test]
async fn a_snapshot_naming_more_deletions_than_a_cluster_may_hold_is_refused() -> Result<()> {
    let limits = Limits {
        max_objects_per_cluster: 3,
        ..Limits::default()
    };
    let hub = TestHub::start(limits).await?;
    let identity = hub.pki.client("edge-1")?;
    let mut agent = hub.connect(&identity).await?;
    welcome(agent.hello("edge-1", "session-a", None, 0).await?)?;

    agent
        .send(&AgentFrame::SnapshotBegin(SnapshotBegin {
            objects: 0,
            shards: None,
        }))
        .await?;
    let deleted = |seq: u64| uplink_protocol::Delta {
        change: uplink_protocol::Change::Deleted,
        ..upsert(seq, &format!("gone-{seq}"), json!({}))
    };
    // Each chunk is within the batch limit; together they name four
    // deletions where the cluster may hold three objects.
    for seq in [1, 3] {
        agent
            .send(&AgentFrame::SnapshotChunk(SnapshotChunk {
                deltas: vec![deleted(seq), deleted(seq + 1)],
            }))
            .await?;
    }
    assert_eq!(error_code(agent.recv().await?)?, ErrorCode::LimitExceeded);
    assert_eq!(
        agent.end().await?,
        End::Closed(Some(close::POLICY_VIOLATION))
    );
    hub.stop().await
}
