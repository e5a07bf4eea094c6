//! The hostile-client suite (issue 15): a client with a cluster's genuine
//! certificate that misbehaves (a wrong or missing `Hello`, another
//! cluster's name, out-of-order sequence numbers, acknowledgements of frames
//! never sent, huge and deeply nested msgpack, 100,000 distinct objects,
//! slowloris reads and writes, a flood of pings, a reconnect loop every
//! 10 ms) and clients without one (a wrong CA, an expired certificate, no
//! certificate, plain HTTP, TLS 1.2 only).
//!
//! Every case runs in the same scene: a hub, KCP, cluster `a` with its
//! legitimate agent and a placed Deployment `web`, and cluster `b` whose
//! agent is stopped so the hostile client can speak for it. Each case
//! asserts how the hostile client was refused (the `Error` frame and the
//! WebSocket close code and reason, or the TLS alert) and ends with
//! [`aftermath`]: the hub alive (`/healthz`, a fresh connection welcomed),
//! its memory within budget (no leftover sessions or pending handshakes,
//! the store holding only placed objects, the process's resident memory
//! bounded) and the legitimate agent's new status reaching KCP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use uplink_hub::HubConfig;
use uplink_protocol::{
    AgentFrame, Bye, Delta, DeltaBatch, DownwardAck, ErrorCode, Heartbeat, Hello, HubFrame,
    PROTOCOL_VERSION, SUBPROTOCOL, SnapshotBegin, SnapshotChunk, SnapshotEnd, TUNNEL_PATH, close,
};
use uplink_tests::fleet::{
    Fleet, SCENARIO_TIMEOUT, STATUS_DEADLINE, Scrape, bounded, deployment, eventually, http_get,
};
use uplink_tests::forged::{Ending, ForgedAgent, deployment_ref, now_ms, upsert};

const TEAM_A: &str = "root:org:team-a";
/// The cluster with the legitimate agent.
const HONEST: &str = "a";
/// The cluster whose certificate the hostile client holds.
const HOSTILE: &str = "b";
/// The hub's deadline for a connection's `Hello` in these scenes.
const HELLO_DEADLINE: Duration = Duration::from_secs(2);
/// The hub's objects-per-cluster limit in these scenes.
const MAX_OBJECTS: u64 = 1_000;
/// How long a hostile client waits for the hub to end its connection.
const ENDING_WAIT: Duration = Duration::from_secs(10);
/// The resident memory this whole test process may reach (hubs, API
/// servers and agents of the scenes running in parallel included).
const RSS_BUDGET_BYTES: u64 = 2 << 30;

// ---- The scene --------------------------------------------------------------

/// Hub, KCP, cluster `a` with its agent and `web` placed on it, cluster `b`
/// with `api` placed on it and its agent stopped.
async fn scene() -> Result<Fleet> {
    scene_with(|_| {}).await
}

async fn scene_with(tweak: impl Fn(&mut HubConfig) + Send + Sync + 'static) -> Result<Fleet> {
    let mut fleet = Fleet::builder()
        .clusters([HONEST, HOSTILE])
        .workspaces([TEAM_A])
        .hub_config(move |c| {
            c.handshake_timeout = HELLO_DEADLINE;
            c.limits.max_objects_per_cluster = MAX_OBJECTS;
            tweak(c);
        })
        .start()
        .await?;
    fleet
        .place(TEAM_A, "shop", &deployment("web", 3), &[HONEST])
        .await?;
    fleet
        .place(TEAM_A, "shop", &deployment("api", 3), &[HOSTILE])
        .await?;
    fleet.stop_agent(HOSTILE).await?;
    Ok(fleet)
}

/// After the hostile act: the hub is alive and serving, holds no leftover
/// of the hostile client, and the legitimate agent's new status (ready
/// replicas `ready`) reaches KCP. Shuts the fleet down.
async fn aftermath(fleet: Fleet, ready: i64) -> Result<()> {
    let health = http_get(fleet.hub_http_addr(), "/healthz").await?;
    ensure!(health.trim() == "ok", "/healthz says {health:?}");

    // A fresh connection for the very cluster the hostile client used is
    // welcomed, and leaves politely.
    let mut fresh = fleet.forged_agent(HOSTILE).await?;
    fresh.hello(HOSTILE).await?;
    fresh
        .send(&AgentFrame::Bye(Bye {
            reason: "done".into(),
        }))
        .await?;
    expect_close(&fresh.ending(ENDING_WAIT).await?, close::NORMAL, "bye")?;

    // The legitimate agent converges.
    let status = json!({"observedGeneration": 1, "replicas": ready, "readyReplicas": ready});
    fleet
        .set_status::<Deployment>(HONEST, TEAM_A, "shop", "web", status.clone())
        .await?;
    eventually(STATUS_DEADLINE, "a's new status in KCP", async || {
        let seen = fleet
            .upstream_status::<Deployment>(TEAM_A, "shop", "web")
            .await?;
        ensure!(seen.as_ref() == Some(&status), "KCP holds {seen:?}");
        Ok(())
    })
    .await?;

    // Memory within budget: only the legitimate session left, nothing
    // pending, the store holding at most the two placed objects.
    eventually(STATUS_DEADLINE, "the hub to hold no leftovers", async || {
        let metrics = fleet.hub_metrics().await?;
        let connected = metrics.require("uplink_hub_agents_connected")?;
        let tls = gauge(&metrics, r#"uplink_hub_handshakes_in_progress{phase="tls"}"#);
        let hello = gauge(&metrics, r#"uplink_hub_handshakes_in_progress{phase="hello"}"#);
        let objects = metrics.require("uplink_hub_store_objects")?;
        ensure!(
            connected == 1.0 && tls == 0.0 && hello == 0.0 && objects <= 2.0,
            "{connected} agents connected, {tls} + {hello} handshakes pending, {objects} objects stored"
        );
        Ok(())
    })
    .await?;
    let rss = resident_bytes()?;
    ensure!(
        rss <= RSS_BUDGET_BYTES,
        "the test process holds {} MiB, over its budget of {} MiB",
        rss >> 20,
        RSS_BUDGET_BYTES >> 20
    );
    fleet.shutdown().await
}

fn gauge(metrics: &Scrape, series: &str) -> f64 {
    metrics.value(series).unwrap_or(0.0)
}

/// This process's resident memory, from `/proc/self/status`.
fn resident_bytes() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .ok_or_else(|| anyhow!("no VmRSS in /proc/self/status"))?;
    Ok(kib * 1024)
}

/// The hub closed with `code` and `reason`, and the `Error` frame before
/// it, if any, calls for that close.
fn expect_close(ending: &Ending, code: u16, reason: &str) -> Result<()> {
    ensure!(
        ending.close.as_ref().map(|(c, r)| (*c, r.as_str())) == Some((code, reason)),
        "expected close {code} {reason:?}, got {ending:?}"
    );
    if let Some(error) = &ending.error {
        ensure!(
            error.code.close_code() == code && !error.message.is_empty(),
            "the Error frame does not match the close: {ending:?}"
        );
    }
    Ok(())
}

/// As [`expect_close`], and an `Error` frame with code `error` came first.
fn expect_refusal(ending: &Ending, error: ErrorCode, reason: &str) -> Result<()> {
    expect_close(ending, error.close_code(), reason)?;
    ensure!(
        ending.error.as_ref().map(|e| e.code) == Some(error),
        "expected error {error:?}, got {ending:?}"
    );
    Ok(())
}

async fn handshake_failures(fleet: &Fleet, reason: &str) -> Result<f64> {
    Ok(fleet.hub_metrics().await?.counter(&format!(
        "uplink_hub_handshake_failures_total{{reason=\"{reason}\"}}"
    )))
}

async fn frames_rejected(fleet: &Fleet, reason: &str) -> Result<f64> {
    Ok(fleet.hub_metrics().await?.counter(&format!(
        "uplink_hub_frames_rejected_total{{cluster=\"{HOSTILE}\",reason=\"{reason}\"}}"
    )))
}

/// A `Hello` for `cluster` speaking `versions`.
fn hello(cluster: &str, versions: Vec<u16>) -> Hello {
    Hello {
        protocol_versions: versions,
        cluster: cluster.to_owned(),
        agent_version: "hostile".to_owned(),
        session_id: uuid::Uuid::new_v4().to_string(),
        last_hub_epoch: None,
        last_ack: 0,
        downward_resources: Vec::new(),
        upsync_resources: Vec::new(),
    }
}

/// The hostile client, connected and welcomed as `b`.
async fn welcomed(fleet: &Fleet) -> Result<ForgedAgent> {
    let mut agent = fleet.forged_agent(HOSTILE).await?;
    agent.hello(HOSTILE).await?;
    Ok(agent)
}

/// The hostile client sends one binary message after its `Welcome`.
async fn after_welcome_sends(fleet: &Fleet, bytes: Vec<u8>) -> Result<Ending> {
    let mut agent = welcomed(fleet).await?;
    agent.send_message(Message::Binary(bytes.into())).await?;
    agent.ending(ENDING_WAIT).await
}

fn delta(seq: u64, object: uplink_protocol::ObjectRef, status: &Value) -> Delta {
    Delta {
        seq,
        object,
        generation: Some(1),
        observed_generation: Some(1),
        observed_at_ms: now_ms(),
        change: upsert(status),
        object_json: None,
    }
}

/// `n` deltas for distinct objects nobody placed, from sequence `first`.
fn unplaced(first: u64, n: u64) -> Vec<Delta> {
    (first..first + n)
        .map(|seq| {
            delta(
                seq,
                deployment_ref(TEAM_A, "shop", &format!("x-{seq}")),
                &json!({"replicas": 1}),
            )
        })
        .collect()
}

/// `n` deltas of a resource type the hub does not sync, from sequence
/// `first`: each refused at once (`resource_not_synced`).
fn unsynced(first: u64, n: u64) -> Vec<Delta> {
    (first..first + n)
        .map(|seq| {
            let mut object = deployment_ref(TEAM_A, "shop", &format!("w-{seq}"));
            object.group = "example.com".into();
            object.resource = "widgets".into();
            object.kind = "Widget".into();
            delta(seq, object, &json!({"ready": true}))
        })
        .collect()
}

/// Waits for the `Ack` covering `seq`.
async fn acked(agent: &mut ForgedAgent, seq: u64) -> Result<uplink_protocol::Ack> {
    loop {
        if let HubFrame::Ack(ack) = agent.recv().await?
            && ack.seq >= seq
        {
            return Ok(ack);
        }
    }
}

// ---- A valid certificate, a wrong Hello -------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_claiming_another_cluster_is_refused() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, async {
        let fleet = scene().await?;
        let mut agent = fleet.forged_agent(HOSTILE).await?;
        agent
            .send(&AgentFrame::Hello(hello(HONEST, vec![PROTOCOL_VERSION])))
            .await?;
        let ending = agent.ending(ENDING_WAIT).await?;
        expect_refusal(&ending, ErrorCode::IdentityMismatch, "identity_mismatch")?;
        ensure!(handshake_failures(&fleet, "identity_mismatch").await? == 1.0);
        // a's session was not touched by the claim.
        ensure!(fleet.hub_store().position(HONEST).is_some());
        aftermath(fleet, 1).await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_with_no_common_version_is_refused() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, async {
        let fleet = scene().await?;
        let mut agent = fleet.forged_agent(HOSTILE).await?;
        agent
            .send(&AgentFrame::Hello(hello(HOSTILE, vec![0, 99, u16::MAX])))
            .await?;
        let ending = agent.ending(ENDING_WAIT).await?;
        expect_refusal(
            &ending,
            ErrorCode::UnsupportedVersion,
            "unsupported_version",
        )?;
        aftermath(fleet, 2).await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_with_no_version_at_all_is_refused() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, async {
        let fleet = scene().await?;
        let mut agent = fleet.forged_agent(HOSTILE).await?;
        agent
            .send(&AgentFrame::Hello(hello(HOSTILE, Vec::new())))
            .await?;
        let ending = agent.ending(ENDING_WAIT).await?;
        expect_refusal(
            &ending,
            ErrorCode::UnsupportedVersion,
            "unsupported_version",
        )?;
        aftermath(fleet, 3).await
    })
    .await
}

/// A `Hello` whose session id is over the string limit (1 KiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_with_an_oversized_string_is_refused() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, async {
        let fleet = scene().await?;
        let mut agent = fleet.forged_agent(HOSTILE).await?;
        let mut hello = hello(HOSTILE, vec![PROTOCOL_VERSION]);
        hello.session_id = "s".repeat(64 * 1024);
        agent.send(&AgentFrame::Hello(hello)).await?;
        let ending = agent.ending(ENDING_WAIT).await?;
        expect_refusal(&ending, ErrorCode::LimitExceeded, "string_too_long")?;
        ensure!(handshake_failures(&fleet, "string_too_long").await? == 1.0);
        aftermath(fleet, 42).await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_before_hello_is_refused() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, async {
        let fleet = scene().await?;
        let mut agent = fleet.forged_agent(HOSTILE).await?;
        agent
            .send(&AgentFrame::Deltas(DeltaBatch {
                deltas: vec![delta(
                    1,
                    deployment_ref(TEAM_A, "shop", "api"),
                    &json!({"replicas": 9}),
                )],
            }))
            .await?;
        let ending = agent.ending(ENDING_WAIT).await?;
        expect_refusal(&ending, ErrorCode::UnexpectedFrame, "unexpected_frame")?;
        ensure!(handshake_failures(&fleet, "unexpected_frame").await? == 1.0);
        aftermath(fleet, 4).await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_hello_is_refused() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, async {
        let fleet = scene().await?;
        let mut agent = welcomed(&fleet).await?;
        agent
            .send(&AgentFrame::Hello(hello(HOSTILE, vec![PROTOCOL_VERSION])))
            .await?;
        let ending = agent.ending(ENDING_WAIT).await?;
        expect_refusal(&ending, ErrorCode::UnexpectedFrame, "unexpected_frame")?;
        ensure!(frames_rejected(&fleet, "unexpected_frame").await? == 1.0);
        aftermath(fleet, 5).await
    })
    .await
}

/// Slowloris before `Hello`: TLS and the WebSocket upgrade done, then
/// nothing. The handshake deadline closes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_says_hello_is_closed_at_the_deadline() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, async {
        let fleet = scene().await?;
        let started = Instant::now();
        let mut agent = fleet.forged_agent(HOSTILE).await?;
        let ending = agent.ending(ENDING_WAIT).await?;
        let took = started.elapsed();
        expect_refusal(&ending, ErrorCode::LimitExceeded, "hello_timeout")?;
        ensure!(
            took >= HELLO_DEADLINE / 2 && took <= HELLO_DEADLINE * 3,
            "closed after {took:?}, the deadline is {HELLO_DEADLINE:?}"
        );
        ensure!(handshake_failures(&fleet, "hello_timeout").await? >= 1.0);
        aftermath(fleet, 6).await
    })
    .await
}

// ---- A valid certificate, a broken stream --------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_message_is_refused() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, async {
        let fleet = scene().await?;
        let mut agent = welcomed(&fleet).await?;
        agent
            .send_message(Message::Text(r#"{"Hello":{}}"#.into()))
            .await?;
        let ending = agent.ending(ENDING_WAIT).await?;
        expect_refusal(&ending, ErrorCode::Malformed, "text_message")?;
        aftermath(fleet, 7).await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_that_are_not_msgpack_are_refused() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, async {
        let fleet = scene().await?;
        // 0xc1 is the one byte msgpack never uses.
        let ending = after_welcome_sends(&fleet, vec![0xc1, 0xc1, 0xc1]).await?;
        expect_refusal(&ending, ErrorCode::Malformed, "malformed")?;
        aftermath(fleet, 8).await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_frame_type_is_refused() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, async {
        let fleet = scene().await?;
        let bytes = rmp_encode(&json!({"Takeover": {"cluster": HONEST}}))?;
        let ending = after_welcome_sends(&fleet, bytes).await?;
        ensure!(
            ending.close.as_ref().map(|(c, _)| *c) == Some(close::PROTOCOL_ERROR)
                && ending.error.as_ref().map(|e| e.code) == Some(ErrorCode::Malformed),
            "expected a Malformed refusal, got {ending:?}"
        );
        aftermath(fleet, 9).await
    })
    .await
}

/// 100,000 nested arrays: refused at the nesting limit, without recursing
/// through all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_msgpack_is_refused() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, async {
        let fleet = scene().await?;
        let mut bytes = vec![0x91; 100_000]; // fixarray of one element
        bytes.push(0xc0); // nil
        let ending = after_welcome_sends(&fleet, bytes).await?;
        expect_refusal(&ending, ErrorCode::Malformed, "too_deep")?;
        aftermath(fleet, 10).await
    })
    .await
}

/// Deeply nested maps inside a frame the hub expects (a `Hello`'s
/// `agent_version`), before the session starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_msgpack_before_hello_is_refused() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, async {
        let fleet = scene().await?;
        let mut agent = fleet.forged_agent(HOSTILE).await?;
        // {"Hello": {"agent_version": {"a": {"a": ... nil}}}}
        let mut bytes = vec![0x81, 0xa5];
        bytes.extend_from_slice(b"Hello");
        bytes.extend_from_slice(&[0x81, 0xad]);
        bytes.extend_from_slice(b"agent_version");
        for _ in 0..50_000 {
            bytes.extend_from_slice(&[0x81, 0xa1, b'a']);
        }
        bytes.push(0xc0);
        agent.send_message(Message::Binary(bytes.into())).await?;
        let ending = agent.ending(ENDING_WAIT).await?;
        expect_refusal(&ending, ErrorCode::Malformed, "too_deep")?;
        ensure!(handshake_failures(&fleet, "malformed").await? == 1.0);
        aftermath(fleet, 11).await
    })
    .await
}

/// `{"Deltas": {"deltas": <array header> nil nil nil nil nil}}`.
fn deltas_announcing(header: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0x81, 0xa6];
    bytes.extend_from_slice(b"Deltas");
    bytes.extend_from_slice(&[0x81, 0xa6]);
    bytes.extend_from_slice(b"deltas");
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&[0xc0; 5]);
    bytes
}

/// An array header announcing 4 billion deltas, then five bytes: refused
/// by the announcement (the hub must not reserve for it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_array_length_is_refused() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, async {
        let fleet = scene().await?;
        let bytes = deltas_announcing(&[0xdd, 0xff, 0xff, 0xff, 0xff]);
        let ending = after_welcome_sends(&fleet, bytes).await?;
        expect_refusal(&ending, ErrorCode::LimitExceeded, "too_many_deltas")?;
        // Within the limit (1,000 announced) but five sent: truncated.
        let bytes = deltas_announcing(&[0xdc, 0x03, 0xe8]);
        let ending = after_welcome_sends(&fleet, bytes).await?;
        expect_refusal(&ending, ErrorCode::Malformed, "malformed")?;
        aftermath(fleet, 12).await
    })
    .await
}

/// A string header announcing 4 GiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_string_length_is_refused() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, async {
        let fleet = scene().await?;
        // {"Bye": {"reason": str32(0xffffffff) "abc"}}
        let mut bytes = vec![0x81, 0xa3];
        bytes.extend_from_slice(b"Bye");
        bytes.extend_from_slice(&[0x81, 0xa6]);
        bytes.extend_from_slice(b"reason");
        bytes.extend_from_slice(&[0xdb, 0xff, 0xff, 0xff, 0xff]);
        bytes.extend_from_slice(b"abc");
        let ending = after_welcome_sends(&fleet, bytes).await?;
        expect_refusal(&ending, ErrorCode::LimitExceeded, "string_too_long")?;
        aftermath(fleet, 13).await
    })
    .await
}

/// A message over the frame limit (4 MiB): refused without being buffered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_over_the_size_limit_is_refused() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, async {
        let fleet = scene().await?;
        let ending = after_welcome_sends(&fleet, vec![0xc0; 5 << 20]).await?;
        expect_refusal(&ending, ErrorCode::LimitExceeded, "frame_too_large")?;
        ensure!(frames_rejected(&fleet, "frame_too_large").await? == 1.0);
        aftermath(fleet, 14).await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_over_the_delta_limit_is_refused() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, async {
        let fleet = scene().await?;
        let mut agent = welcomed(&fleet).await?;
        agent
            .send(&AgentFrame::Deltas(DeltaBatch {
                deltas: unplaced(1, 1025),
            }))
            .await?;
        let ending = agent.ending(ENDING_WAIT).await?;
        expect_refusal(&ending, ErrorCode::LimitExceeded, "too_many_deltas")?;
        aftermath(fleet, 15).await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_over_the_size_limit_is_refused() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, async {
        let fleet = scene().await?;
        let mut agent = welcomed(&fleet).await?;
        let huge = json!({"message": "x".repeat(300 * 1024)});
        agent
            .send(&AgentFrame::Deltas(DeltaBatch {
                deltas: vec![delta(1, deployment_ref(TEAM_A, "shop", "api"), &huge)],
            }))
            .await?;
        let ending = agent.ending(ENDING_WAIT).await?;
        expect_refusal(&ending, ErrorCode::LimitExceeded, "status_too_large")?;
        aftermath(fleet, 16).await
    })
    .await
}

// ---- A valid certificate, a lying session -----------------------------------

/// Sequence numbers going backwards: the hub's acknowledgement never goes
/// back, and the stale report does not replace the newer one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_sequence_numbers_do_not_move_the_ack_back() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, async {
        let fleet = scene().await?;
        let mut agent = welcomed(&fleet).await?;
        let api = deployment_ref(TEAM_A, "shop", "api");
        let send = |seq: u64, ready: i64| {
            AgentFrame::Deltas(DeltaBatch {
                deltas: vec![delta(seq, api.clone(), &json!({"readyReplicas": ready}))],
            })
        };
        agent.send(&send(10, 1)).await?;
        ensure!(acked(&mut agent, 10).await?.seq == 10);
        agent.send(&send(5, 3)).await?;
        let ack = acked(&mut agent, 0).await?;
        ensure!(ack.seq == 10, "the ack went back to {}", ack.seq);
        agent.send(&send(10, 4)).await?;
        let ack = acked(&mut agent, 0).await?;
        ensure!(ack.seq == 10, "a repeated seq moved the ack to {}", ack.seq);
        // b is the only cluster reporting api: the merged status is b's.
        let (key, entries) = fleet
            .hub_store()
            .find(|key| key.name == "api")
            .ok_or_else(|| anyhow!("api is not stored"))?;
        ensure!(
            entries.contains_key(HOSTILE),
            "b's report of api is not stored"
        );
        let stored = fleet
            .hub_store()
            .desired_status(&key)
            .map(|status| status["readyReplicas"].clone());
        ensure!(
            stored == Some(json!(1)),
            "api's ready replicas as stored: {stored:?}, not those of seq 10"
        );
        agent
            .send(&AgentFrame::Bye(Bye {
                reason: "done".into(),
            }))
            .await?;
        expect_close(&agent.ending(ENDING_WAIT).await?, close::NORMAL, "bye")?;
        aftermath(fleet, 17).await
    })
    .await
}

/// An acknowledgement of downward frames the hub never sent, on a session
/// without a downward lane.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_for_frames_never_sent_is_refused() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, async {
        let fleet = scene().await?;
        let mut agent = welcomed(&fleet).await?;
        agent
            .send(&AgentFrame::DownwardAck(DownwardAck {
                seq: u64::MAX,
                failures: Vec::new(),
            }))
            .await?;
        let ending = agent.ending(ENDING_WAIT).await?;
        expect_refusal(&ending, ErrorCode::UnexpectedFrame, "unexpected_frame")?;
        aftermath(fleet, 18).await
    })
    .await
}

/// An acknowledgement of downward frames beyond those sent, on a session
/// with a downward lane: taken as acknowledging what was sent, no more;
/// the session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_beyond_the_frames_sent_is_clamped() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, async {
        let fleet = scene().await?;
        let mut agent = fleet.forged_agent(HOSTILE).await?;
        let mut hello = hello(HOSTILE, vec![PROTOCOL_VERSION]);
        hello.downward_resources = vec!["deployments.v1.apps".into()];
        agent.send(&AgentFrame::Hello(hello)).await?;
        match agent.recv().await? {
            HubFrame::Welcome(_) => {}
            other => bail!("expected Welcome, got {other:?}"),
        }
        agent
            .send(&AgentFrame::DownwardAck(DownwardAck {
                seq: u64::MAX,
                failures: Vec::new(),
            }))
            .await?;
        // Still in session: a heartbeat is answered.
        let at = now_ms();
        agent
            .send(&AgentFrame::Heartbeat(Heartbeat {
                agent_time_ms: at,
                summary: None,
            }))
            .await?;
        loop {
            if let HubFrame::HeartbeatAck(ack) = agent.recv().await?
                && ack.agent_time_ms == at
            {
                break;
            }
        }
        agent
            .send(&AgentFrame::Bye(Bye {
                reason: "done".into(),
            }))
            .await?;
        expect_close(&agent.ending(ENDING_WAIT).await?, close::NORMAL, "bye")?;
        aftermath(fleet, 19).await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_frames_out_of_place_are_refused() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, async {
        let fleet = scene().await?;
        let cases: Vec<(&str, Vec<AgentFrame>)> = vec![
            (
                "a chunk outside a snapshot",
                vec![AgentFrame::SnapshotChunk(SnapshotChunk {
                    deltas: unplaced(1, 1),
                })],
            ),
            (
                "an end outside a snapshot",
                vec![AgentFrame::SnapshotEnd(SnapshotEnd {
                    seq: 7,
                    upsync_listed: false,
                })],
            ),
            (
                "deltas during a snapshot",
                vec![
                    AgentFrame::SnapshotBegin(SnapshotBegin {
                        objects: 1,
                        shards: None,
                    }),
                    AgentFrame::Deltas(DeltaBatch {
                        deltas: unplaced(1, 1),
                    }),
                ],
            ),
            (
                "a snapshot begun twice",
                vec![
                    AgentFrame::SnapshotBegin(SnapshotBegin {
                        objects: 1,
                        shards: None,
                    }),
                    AgentFrame::SnapshotBegin(SnapshotBegin {
                        objects: 1,
                        shards: None,
                    }),
                ],
            ),
        ];
        for (what, frames) in cases {
            let mut agent = welcomed(&fleet).await?;
            for frame in &frames {
                agent.send(frame).await?;
            }
            let ending = agent.ending(ENDING_WAIT).await?;
            expect_refusal(&ending, ErrorCode::UnexpectedFrame, "unexpected_frame")
                .with_context(|| what.to_owned())?;
        }
        aftermath(fleet, 20).await
    })
    .await
}

/// A snapshot announcing 100,000 objects, over the cluster's limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_of_too_many_objects_is_refused_up_front() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, async {
        let fleet = scene().await?;
        let mut agent = welcomed(&fleet).await?;
        agent
            .send(&AgentFrame::SnapshotBegin(SnapshotBegin {
                objects: 100_000,
                shards: None,
            }))
            .await?;
        let ending = agent.ending(ENDING_WAIT).await?;
        expect_refusal(&ending, ErrorCode::LimitExceeded, "too_many_objects")?;
        aftermath(fleet, 21).await
    })
    .await
}

/// A snapshot announcing 10 objects, then sending more distinct ones than
/// the cluster may hold: refused as soon as the buffer passes the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_lying_about_its_size_is_refused_at_the_limit() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, async {
        let fleet = scene().await?;
        let mut agent = welcomed(&fleet).await?;
        agent
            .send(&AgentFrame::SnapshotBegin(SnapshotBegin {
                objects: 10,
                shards: None,
            }))
            .await?;
        let mut first = 1;
        while first <= MAX_OBJECTS + 1 {
            agent
                .send(&AgentFrame::SnapshotChunk(SnapshotChunk {
                    deltas: unplaced(first, 500),
                }))
                .await?;
            first += 500;
        }
        let ending = agent.ending(ENDING_WAIT).await?;
        expect_refusal(&ending, ErrorCode::LimitExceeded, "too_many_objects")?;
        aftermath(fleet, 22).await
    })
    .await
}

/// 100,000 distinct objects nobody placed (yet), as 100 batches of
/// deltas: held until placement can judge them, and counted against the
/// cluster's object limit: the batch that would pass it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_distinct_objects_stop_at_the_object_limit() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, async {
        let fleet = scene().await?;
        let mut agent = welcomed(&fleet).await?;
        // Batches of 500: b's agent may have reported `api` before it
        // stopped, so the hub holds 0 or 1 object of b's to begin with.
        const BATCH: u64 = 500;
        let mut acked_batches = 0;
        let mut ending = None;
        for batch in 0..100_000 / BATCH {
            let first = batch * BATCH + 1;
            let sent = agent
                .send(&AgentFrame::Deltas(DeltaBatch {
                    deltas: unplaced(first, BATCH),
                }))
                .await;
            if sent.is_err() {
                ending = Some(agent.ending(ENDING_WAIT).await?);
                break;
            }
            match agent.recv_or_ending().await? {
                Ok(HubFrame::Ack(ack)) if ack.seq == first + BATCH - 1 => acked_batches += 1,
                Ok(other) => bail!("expected the Ack of batch {batch}, got {other:?}"),
                Err(end) => {
                    ending = Some(end);
                    break;
                }
            }
        }
        let ending = ending.ok_or_else(|| anyhow!("all 100,000 objects were taken"))?;
        expect_refusal(&ending, ErrorCode::LimitExceeded, "too_many_objects")?;
        let taken = acked_batches * BATCH;
        ensure!(
            taken <= MAX_OBJECTS && taken + BATCH + 1 > MAX_OBJECTS,
            "{taken} objects taken before the refusal (limit {MAX_OBJECTS} objects)"
        );
        let held = fleet
            .hub_metrics()
            .await?
            .require("uplink_hub_held_reports")?;
        ensure!(held <= MAX_OBJECTS as f64, "{held} reports held");
        aftermath(fleet, 23).await
    })
    .await
}

/// The same 100,000 objects under the default object limit (a million):
/// all held, within the limit, and the legitimate agent still converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_distinct_objects_within_the_limit_do_not_hold_others_up() -> Result<()>
{
    bounded(SCENARIO_TIMEOUT * 2, async {
        let fleet = scene_with(|c| {
            c.limits.max_objects_per_cluster =
                uplink_protocol::Limits::default().max_objects_per_cluster;
        })
        .await?;
        let mut agent = welcomed(&fleet).await?;
        for batch in 0..100u64 {
            let first = batch * 1_000 + 1;
            agent
                .send(&AgentFrame::Deltas(DeltaBatch {
                    deltas: unplaced(first, 1_000),
                }))
                .await?;
            acked(&mut agent, first + 999).await?;
        }
        let held = fleet
            .hub_metrics()
            .await?
            .require("uplink_hub_held_reports")?;
        ensure!(held <= 100_000.0, "{held} reports held");
        agent
            .send(&AgentFrame::Bye(Bye {
                reason: "done".into(),
            }))
            .await?;
        expect_close(&agent.ending(ENDING_WAIT).await?, close::NORMAL, "bye")?;
        aftermath(fleet, 38).await
    })
    .await
}

/// b reports `web`, placed on a only, with a status of its own: not
/// taken, and KCP keeps a's status (checked by [`aftermath`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_of_another_clusters_object_do_not_reach_kcp() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, async {
        let fleet = scene().await?;
        let mut agent = welcomed(&fleet).await?;
        agent
            .send(&AgentFrame::Deltas(DeltaBatch {
                deltas: vec![delta(
                    1,
                    deployment_ref(TEAM_A, "shop", "web"),
                    &json!({"replicas": 99, "readyReplicas": 99}),
                )],
            }))
            .await?;
        acked(&mut agent, 1).await?;
        let web = fleet
            .hub_store()
            .find(|key| key.name == "web")
            .map(|(_, entries)| entries.contains_key(HOSTILE));
        ensure!(web != Some(true), "b's report of web was stored");
        agent
            .send(&AgentFrame::Bye(Bye {
                reason: "done".into(),
            }))
            .await?;
        expect_close(&agent.ending(ENDING_WAIT).await?, close::NORMAL, "bye")?;
        aftermath(fleet, 39).await
    })
    .await
}

// ---- A valid certificate, slow or noisy -----------------------------------------

/// Slowloris writes: a WebSocket frame header announcing 4 KiB, ten bytes
/// of it, then nothing. No frame arrives, so the session ends as silent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_that_never_finishes_ends_the_session_as_silent() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, async {
        let fleet = scene().await?;
        let mut agent = welcomed(&fleet).await?;
        let started = Instant::now();
        // FIN + binary; masked, 16-bit length 4096; the mask; 10 bytes.
        let mut bytes = vec![0x82, 0xfe, 0x10, 0x00, 1, 2, 3, 4];
        bytes.extend_from_slice(&[0; 10]);
        agent.send_raw(&bytes).await?;
        let ending = agent.ending(ENDING_WAIT).await?;
        expect_close(
            &ending,
            close::GOING_AWAY,
            "silent for three heartbeat intervals",
        )?;
        let limit = fleet.heartbeat() * 3;
        ensure!(
            started.elapsed() <= limit * 3,
            "took {:?} to end it (silence limit {limit:?})",
            started.elapsed()
        );
        aftermath(fleet, 24).await
    })
    .await
}

/// Slowloris reads: the client sends batches of a type the hub does not
/// sync, each answered with a large acknowledgement (a thousand refusals),
/// and never reads. The hub gives up on the session (its send times out)
/// instead of waiting for ever; nothing refused the client otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_dropped() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, async {
        let fleet = scene().await?;
        let mut agent = welcomed(&fleet).await?;
        let mut seq = 1;
        let sending = Instant::now();
        let mut batches = 0;
        // Until the hub stops reading (its send gave up), or 60 s.
        while sending.elapsed() < Duration::from_secs(60) {
            let batch = AgentFrame::Deltas(DeltaBatch {
                deltas: unsynced(seq, 1_000),
            });
            seq += 1_000;
            match tokio::time::timeout(Duration::from_secs(3), agent.send(&batch)).await {
                Ok(Ok(())) => batches += 1,
                Ok(Err(_)) | Err(_) => break,
            }
        }
        let stalled = Instant::now();
        eventually(STATUS_DEADLINE, "the hub to drop b's session", async || {
            let metrics = fleet.hub_metrics().await?;
            let connected = metrics.require("uplink_hub_agents_connected")?;
            ensure!(connected == 1.0, "{connected} agents connected");
            Ok(())
        })
        .await?;
        eprintln!(
            "slowloris reads: {batches} batches sent in {:?}; the hub dropped the session {:?} after the client's sends stalled",
            stalled - sending,
            stalled.elapsed()
        );
        ensure!(batches >= 10, "only {batches} batches before the sends stalled");
        let ending = agent.ending(ENDING_WAIT).await?;
        ensure!(
            ending.error.is_none(),
            "the hub refused the client instead: {ending:?}"
        );
        aftermath(fleet, 25).await
    })
    .await
}

/// A flood of WebSocket pings: answered, but pings are not frames, so they
/// do not keep a session alive that sends nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_pings_does_not_keep_a_session_alive() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, async {
        let fleet = scene().await?;
        let mut agent = welcomed(&fleet).await?;
        let started = Instant::now();
        let limit = fleet.heartbeat() * 3;
        let mut pings = 0u64;
        let mut ending = Ending::default();
        // Pings for twice the silence limit, or until the hub closes; the
        // hub's pongs read as they come.
        let mut ended = false;
        while started.elapsed() < limit * 2 {
            if agent
                .send_message(Message::Ping(pings.to_be_bytes().to_vec().into()))
                .await
                .is_err()
            {
                break;
            }
            pings += 1;
            if pings.is_multiple_of(100) {
                ended = agent.read_ready(&mut ending);
                if ended || ending.close.is_some() {
                    break;
                }
                tokio::task::yield_now().await;
            }
        }
        let closed_after = started.elapsed();
        let ending = if ended {
            ending
        } else {
            agent.ending_from(ending, ENDING_WAIT).await?
        };
        ensure!(pings >= 1_000, "only {pings} pings sent");
        expect_close(
            &ending,
            close::GOING_AWAY,
            "silent for three heartbeat intervals",
        )?;
        // Had the pings counted, the hub would never have closed while
        // they came.
        ensure!(
            closed_after < limit * 2,
            "closed {closed_after:?} after the Welcome: the pings kept the session alive"
        );
        aftermath(fleet, 26).await
    })
    .await
}

/// A flood of heartbeats: each answered, the session kept, nothing grows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_heartbeats_is_answered_in_order() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, async {
        let fleet = scene().await?;
        let mut agent = welcomed(&fleet).await?;
        let base = now_ms();
        for i in 0..5_000 {
            agent
                .send(&AgentFrame::Heartbeat(Heartbeat {
                    agent_time_ms: base + i,
                    summary: None,
                }))
                .await?;
        }
        loop {
            if let HubFrame::HeartbeatAck(ack) = agent.recv().await?
                && ack.agent_time_ms == base + 4_999
            {
                break;
            }
        }
        agent
            .send(&AgentFrame::Bye(Bye {
                reason: "done".into(),
            }))
            .await?;
        expect_close(&agent.ending(ENDING_WAIT).await?, close::NORMAL, "bye")?;
        aftermath(fleet, 27).await
    })
    .await
}

/// A reconnect every 10 ms, each a full session: every new one replaces
/// the one before, which is told so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_loop_every_10ms_supersedes_each_session() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, async {
        let fleet = scene().await?;
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let mut previous: Option<ForgedAgent> = None;
        for _ in 0..100 {
            tick.tick().await;
            let agent = welcomed(&fleet).await?;
            if let Some(mut old) = previous.replace(agent) {
                let ending = old.ending(ENDING_WAIT).await?;
                expect_refusal(&ending, ErrorCode::Superseded, "superseded")?;
            }
        }
        drop(previous);
        aftermath(fleet, 28).await
    })
    .await
}

/// A reconnect every 10 ms that drops each connection right after the
/// WebSocket upgrade, before `Hello`: each counted, none left pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_loop_every_10ms_without_hello_leaves_nothing() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, async {
        let fleet = scene().await?;
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        for _ in 0..200 {
            tick.tick().await;
            drop(fleet.forged_agent(HOSTILE).await?);
        }
        eventually(
            STATUS_DEADLINE,
            "200 handshakes counted as closed",
            async || {
                let closed = handshake_failures(&fleet, "closed").await?;
                let ws = handshake_failures(&fleet, "websocket").await?;
                ensure!(closed + ws >= 200.0, "{closed} closed, {ws} websocket");
                Ok(())
            },
        )
        .await?;
        aftermath(fleet, 29).await
    })
    .await
}

// ---- A valid certificate, a wrong request ---------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_to_another_path_gets_404() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, async {
        let fleet = scene().await?;
        let config = client_config(&fleet, Identity::Cluster(HOSTILE), Versions::Tls13)?;
        let status = upgrade_status(&fleet, config, "/v1/admin", true).await?;
        ensure!(status == 404, "HTTP {status}");
        aftermath(fleet, 30).await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_without_the_subprotocol_gets_400() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, async {
        let fleet = scene().await?;
        let config = client_config(&fleet, Identity::Cluster(HOSTILE), Versions::Tls13)?;
        let status = upgrade_status(&fleet, config, TUNNEL_PATH, false).await?;
        ensure!(status == 400, "HTTP {status}");
        aftermath(fleet, 31).await
    })
    .await
}

// ---- No valid certificate ---------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_is_refused() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, async {
        let fleet = scene().await?;
        let stranger = OwnCa::new("stranger CA")?;
        let cert = stranger.client_cert(HOSTILE, Validity::Current)?;
        let config = client_config(&fleet, Identity::Own(cert), Versions::Tls13)?;
        refused_by_tls(&fleet, config, "UnknownCA").await?;
        aftermath(fleet, 32).await
    })
    .await
}

/// An expired certificate from a CA the hub trusts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_is_refused() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, async {
        let trusted = OwnCa::new("second trusted CA")?;
        let extra_ca = trusted.cert_pem.clone();
        let fleet = scene_with(move |c| trust_also(c, &extra_ca)).await?;
        // The CA is trusted: a current certificate from it is welcomed.
        let current = trusted.client_cert(HOSTILE, Validity::Current)?;
        let config = client_config(&fleet, Identity::Own(current), Versions::Tls13)?;
        let status = upgrade_status(&fleet, config, TUNNEL_PATH, true).await?;
        ensure!(status == 101, "a current certificate got HTTP {status}");
        let expired = trusted.client_cert(HOSTILE, Validity::Expired)?;
        let config = client_config(&fleet, Identity::Own(expired), Versions::Tls13)?;
        refused_by_tls(&fleet, config, "CertificateExpired").await?;
        aftermath(fleet, 33).await
    })
    .await
}

/// A certificate from a trusted CA that names no cluster (no URI SAN, no
/// common name): TLS succeeds, then the hub refuses the upgrade with HTTP
/// 403 saying why, starts no session, and counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_naming_no_cluster_is_refused() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, async {
        let trusted = OwnCa::new("second trusted CA")?;
        let extra_ca = trusted.cert_pem.clone();
        let fleet = scene_with(move |c| trust_also(c, &extra_ca)).await?;
        let nameless = trusted.issue(None, Validity::Current)?;
        let config = client_config(&fleet, Identity::Own(nameless), Versions::Tls13)?;
        let outcome = tokio::time::timeout(
            ENDING_WAIT,
            upgrade_status(&fleet, config, TUNNEL_PATH, true),
        )
        .await
        .context("the hub neither refused nor accepted in time")?;
        ensure!(
            matches!(outcome, Ok(403)),
            "expected HTTP 403 saying why, got {outcome:?}"
        );
        eventually(STATUS_DEADLINE, "the failure counted", async || {
            let failures = handshake_failures(&fleet, "no_identity").await?;
            ensure!(failures == 1.0, "{failures} no_identity failures");
            Ok(())
        })
        .await?;
        aftermath(fleet, 40).await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_client_certificate_is_refused() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, async {
        let fleet = scene().await?;
        let config = client_config(&fleet, Identity::None, Versions::Tls13)?;
        refused_by_tls(&fleet, config, "CertificateRequired").await?;
        aftermath(fleet, 34).await
    })
    .await
}

/// The hub's own serving certificate, from the right CA, presented as a
/// client certificate: not for client authentication.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_as_client_certificate_is_refused() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, async {
        let fleet = scene().await?;
        let cert = fleet.pki().hub_cert(&[])?;
        let identity = Identity::Own((cert.cert_chain()?, cert.private_key()?));
        let config = client_config(&fleet, identity, Versions::Tls13)?;
        refused_by_tls(&fleet, config, "").await?;
        aftermath(fleet, 35).await
    })
    .await
}

/// A valid certificate, but a client that speaks TLS 1.2 only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_1_2_only_client_is_refused() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, async {
        let fleet = scene().await?;
        let config = client_config(&fleet, Identity::Cluster(HOSTILE), Versions::Tls12)?;
        refused_by_tls(&fleet, config, "ProtocolVersion").await?;
        aftermath(fleet, 36).await
    })
    .await
}

/// Plain HTTP on the tunnel port: answered with a fatal TLS alert and
/// closed, and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_on_the_tunnel_port_is_closed() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, async {
        let fleet = scene().await?;
        let before = handshake_failures(&fleet, "tls").await?;
        let mut tcp = TcpStream::connect(tunnel_addr(&fleet)?).await?;
        tcp.write_all(
            format!(
                "GET {TUNNEL_PATH} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                 Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {SUBPROTOCOL}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await?;
        let mut answer = Vec::new();
        tokio::time::timeout(ENDING_WAIT, tcp.read_to_end(&mut answer))
            .await
            .context("the hub kept a plain HTTP connection open")?
            .ok();
        // One TLS record: a fatal alert (content type 21, level 2).
        ensure!(
            answer.len() == 7 && answer[0] == 21 && answer[5] == 2,
            "expected a fatal TLS alert, got {answer:?} ({:?})",
            String::from_utf8_lossy(&answer)
        );
        eventually(STATUS_DEADLINE, "the failure counted", async || {
            let after = handshake_failures(&fleet, "tls").await?;
            ensure!(after > before, "{after} TLS failures");
            Ok(())
        })
        .await?;
        aftermath(fleet, 37).await
    })
    .await
}

// ---- TLS helpers ------------------------------------------------------------

fn tunnel_addr(fleet: &Fleet) -> Result<SocketAddr> {
    let url = fleet.hub_url();
    url.trim_start_matches("wss://")
        .parse()
        .with_context(|| format!("the hub's URL {url}"))
}

enum Identity {
    /// The fleet's genuine certificate for this cluster.
    Cluster(&'static str),
    Own((Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)),
    None,
}

enum Versions {
    Tls13,
    Tls12,
}

/// A client configuration trusting the fleet's CA for the hub.
fn client_config(
    fleet: &Fleet,
    identity: Identity,
    versions: Versions,
) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(fleet.pki().ca_cert_der()?)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider);
    let builder = match versions {
        Versions::Tls13 => builder.with_protocol_versions(&[&rustls::version::TLS13])?,
        Versions::Tls12 => builder.with_protocol_versions(&[&rustls::version::TLS12])?,
    }
    .with_root_certificates(roots);
    Ok(match identity {
        Identity::Cluster(cluster) => {
            let cert = fleet.pki().client_cert(cluster)?;
            builder.with_client_auth_cert(cert.cert_chain()?, cert.private_key()?)?
        }
        Identity::Own((chain, key)) => builder.with_client_auth_cert(chain, key)?,
        Identity::None => builder.with_no_client_auth(),
    })
}

/// TLS then a WebSocket upgrade to `path`; the HTTP status of the answer
/// (101 when upgraded). Fails when TLS does.
async fn upgrade_status(
    fleet: &Fleet,
    config: rustls::ClientConfig,
    path: &str,
    subprotocol: bool,
) -> Result<u16> {
    let tcp = TcpStream::connect(tunnel_addr(fleet)?).await?;
    let tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?;
    let mut request = format!("wss://localhost{path}").into_client_request()?;
    if subprotocol {
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(SUBPROTOCOL),
        );
    }
    match tokio_tungstenite::client_async(request, tls).await {
        Ok((_, response)) => Ok(response.status().as_u16()),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Ok(response.status().as_u16())
        }
        Err(error) => Err(error.into()),
    }
}

/// The hub refuses the client in its TLS handshake with an alert whose
/// name contains `alert` (the client sees it at the latest on its first
/// read, TLS 1.3 checking client certificates after the server's
/// Finished), and counts the failure; no session starts.
async fn refused_by_tls(fleet: &Fleet, config: rustls::ClientConfig, alert: &str) -> Result<()> {
    let before = handshake_failures(fleet, "tls").await?;
    let outcome = tokio::time::timeout(
        ENDING_WAIT,
        upgrade_status(fleet, config, TUNNEL_PATH, true),
    )
    .await
    .context("the hub neither refused nor accepted in time")?;
    let error = match outcome {
        Ok(status) => bail!("the hub answered HTTP {status} instead of refusing"),
        Err(error) => format!("{error:#}"),
    };
    ensure!(
        error.contains("alert") && error.contains(alert),
        "expected a TLS alert {alert:?}, got: {error}"
    );
    eventually(STATUS_DEADLINE, "the TLS failure counted", async || {
        let after = handshake_failures(fleet, "tls").await?;
        ensure!(after > before, "{after} TLS failures");
        Ok(())
    })
    .await?;
    Ok(())
}

/// Adds `extra_ca` to the CAs the hub trusts for clients.
fn trust_also(config: &mut HubConfig, extra_ca: &str) {
    let Ok(mut bundle) = std::fs::read_to_string(&config.client_ca) else {
        return; // the hub then fails to start, which the test reports
    };
    bundle.push_str(extra_ca);
    let path = config.client_ca.with_file_name("ca-bundle.crt");
    if std::fs::write(&path, bundle).is_ok() {
        config.client_ca = path;
    }
}

enum Validity {
    Current,
    Expired,
}

/// A CA of the test's own.
struct OwnCa {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl OwnCa {
    fn new(name: &str) -> Result<Self> {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// A client certificate naming `cluster` as the fleet's do.
    fn client_cert(
        &self,
        cluster: &str,
        validity: Validity,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
        self.issue(Some(cluster), validity)
    }

    /// A client certificate naming `cluster` (URI SAN and CN), or naming
    /// nothing at all.
    fn issue(
        &self,
        cluster: Option<&str>,
        validity: Validity,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        if let Some(cluster) = cluster {
            params.distinguished_name.push(DnType::CommonName, cluster);
            params.subject_alt_names = vec![SanType::URI(
                uplink_e2e::pki::cluster_uri(cluster).try_into()?,
            )];
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        match validity {
            Validity::Current => {
                params.not_before = rcgen::date_time_ymd(2020, 1, 1);
                params.not_after = rcgen::date_time_ymd(2099, 1, 1);
            }
            Validity::Expired => {
                params.not_before = rcgen::date_time_ymd(2020, 1, 1);
                params.not_after = rcgen::date_time_ymd(2021, 1, 1);
            }
        }
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let chain =
            CertificateDer::pem_slice_iter(cert.pem().as_bytes()).collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes())?;
        Ok((chain, key))
    }
}

/// `value` as msgpack (maps with string keys, as frames are encoded).
fn rmp_encode(value: &Value) -> Result<Vec<u8>> {
    uplink_protocol::encode(value).map_err(|e| anyhow!("encoding {value}: {e}"))
}
