//! The hub's memory under a status flood (issue 15's finding: 1,024 deltas
//! of 256 KiB statuses shaped like `{"a":[0,0,…]}`).

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Result, bail};
use serde_json::json;
use support::{FakePlacement, TestHub, eventually, object, upsert};
use uplink_hub::budget::MemoryBudget;
use uplink_protocol::{
    AgentFrame, Change, Delta, DeltaBatch, HubFrame, Limits, Rejected, SnapshotBegin, SnapshotEnd,
};

/// The finding's status: `{"a":[0,0,…]}`, as long as a status may be.
fn finding_status(limits: &Limits) -> String {
    let zeros = (limits.max_status_bytes as usize - 9) / 2;
    let mut text = String::with_capacity(limits.max_status_bytes as usize);
    text.push_str("{\"a\":[");
    for _ in 0..zeros {
        text.push_str("0,");
    }
    text.push_str("0]}");
    text
}

/// One delta of the finding for object `name`.
fn flood_delta(seq: u64, name: &str, status: &str) -> Delta {
    Delta {
        seq,
        object: object(name),
        generation: Some(1),
        observed_generation: Some(1),
        observed_at_ms: 1_700_000_000_000,
        change: Change::Upsert {
            status_json: status.to_owned(),
        },
        object_json: None,
    }
}

/// Waits for the Ack of `seq` (skipping other frames such as Throttle);
/// returns the reasons of the reports it refused.
async fn acked(agent: &mut support::Agent, seq: u64) -> Result<Vec<String>> {
    let mut refused = Vec::new();
    loop {
        match agent.recv().await? {
            HubFrame::Ack(ack) => {
                refused.extend(ack.rejected.into_iter().map(|r| r.reason));
                if ack.seq >= seq {
                    return Ok(refused);
                }
            }
            HubFrame::Error(error) => bail!("refused: {error:?}"),
            _ => {}
        }
    }
}

/// Connects `cluster` with an empty snapshot.
async fn connect(hub: &TestHub, cluster: &str) -> Result<support::Agent> {
    let identity = hub.pki.client(cluster)?;
    let mut agent = hub.connect(&identity).await?;
    agent.hello(cluster, "session-1", None, 0).await?;
    agent
        .send(&AgentFrame::SnapshotBegin(SnapshotBegin {
            objects: 0,
            shards: None,
        }))
        .await?;
    agent
        .send(&AgentFrame::SnapshotEnd(SnapshotEnd {
            seq: 0,
            upsync_listed: false,
        }))
        .await?;
    acked(&mut agent, 0).await?;
    Ok(agent)
}

/// Sends the finding from `agent`: `count` deltas of distinct objects, as
/// many per batch as fit a frame; returns the refusals' reasons.
async fn flood(agent: &mut support::Agent, count: u64, first_seq: u64) -> Result<Vec<String>> {
    let limits = Limits::default();
    let status = finding_status(&limits);
    let per_batch = (limits.max_frame_bytes as usize / (status.len() + 512)) as u64;
    let mut refused = Vec::new();
    let mut seq = first_seq;
    let end = first_seq + count;
    while seq < end {
        let last = (seq + per_batch).min(end);
        let deltas = (seq..last)
            .map(|s| flood_delta(s, &format!("flood-{s}"), &status))
            .collect();
        agent
            .send(&AgentFrame::Deltas(DeltaBatch { deltas }))
            .await?;
        refused.extend(acked(agent, last - 1).await?);
        seq = last;
    }
    Ok(refused)
}

/// The cluster that floods (it has a SyncTarget in the fake placement).
const FLOODER: &str = "east";

/// The fake placement with `flood-1` … `flood-<count>` placed too.
fn flood_placement(count: u64) -> FakePlacement {
    let mut placement = FakePlacement::default();
    placement
        .objects
        .extend((1..=count).map(|i| format!("flood-{i}")));
    placement
}

/// Resident memory of this process, in MiB (Linux).
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// By hand: `cargo test -p uplink-hub --test memory -- --ignored --nocapture`
/// prints what the finding's flood adds to the process's resident memory
/// (hub and test agent in one process; the fake KCP keeps no writes).
#[tokio::test]
#[ignore = "a measurement, run by hand"]
async fn measure_rss_of_the_finding() -> Result<()> {
    let hub = TestHub::start_placed(
        |config| config.heartbeat_interval = Duration::from_secs(600),
        flood_placement(1024),
    )
    .await?;
    hub.upstream.discard.store(true, Ordering::Relaxed);
    let mut agent = connect(&hub, FLOODER).await?;
    let before = rss_mib();
    let refused = flood(&mut agent, 1024, 1).await?;
    let after_ingest = rss_mib();
    let upstream = hub.upstream.clone();
    let written = 1024 - refused.len() as u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    while upstream.writes.load(Ordering::Relaxed) < written {
        if tokio::time::Instant::now() > deadline {
            bail!("the writer did not write every stored object");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after_writes = rss_mib();
    println!(
        "rss before {before:.0} MiB, after ingest {after_ingest:.0} MiB (+{:.0}), after writes {after_writes:.0} MiB (+{:.0}); refused {}",
        after_ingest - before,
        after_writes - before,
        refused.len()
    );
    hub.stop().await
}

/// The finding, against a small per-cluster budget: the flooding cluster is
/// refused past it (told why, counted), the hub's accounted memory stays
/// within it, and another cluster's statuses still reach KCP.
#[tokio::test]
async fn a_status_flood_stays_within_the_cluster_budget() -> Result<()> {
    const BUDGET: u64 = 4 * 1024 * 1024;
    let hub = TestHub::start_placed(
        |config| {
            config.memory_budget = MemoryBudget {
                cluster_bytes: BUDGET,
                total_bytes: 64 * BUDGET,
            };
            // The test agents send no heartbeats.
            config.heartbeat_interval = Duration::from_secs(600);
        },
        flood_placement(1024),
    )
    .await?;
    let mut quiet = connect(&hub, "west").await?;
    quiet
        .send(&AgentFrame::Deltas(DeltaBatch {
            deltas: vec![upsert(1, "web", json!({"replicas": 1}))],
        }))
        .await?;
    acked(&mut quiet, 1).await?;

    let mut flooder = connect(&hub, FLOODER).await?;
    let refused = flood(&mut flooder, 1024, 1).await?;

    let stored = hub
        .metrics
        .store_cluster_objects
        .with_label_values(&[FLOODER])
        .get();
    let held = hub
        .metrics
        .store_cluster_bytes
        .with_label_values(&[FLOODER])
        .get();
    assert!(held as u64 <= BUDGET, "{held} bytes held for the flood");
    assert!(stored > 0, "the flood is stored up to its budget");
    assert_eq!(refused.len() as i64, 1024 - stored, "the rest is refused");
    assert!(
        refused.iter().all(|r| r == Rejected::CLUSTER_MEMORY_BUDGET),
        "and told why: {:?}",
        refused.first()
    );
    assert_eq!(
        hub.metrics
            .rejected_deltas
            .with_label_values(&[FLOODER, Rejected::CLUSTER_MEMORY_BUDGET])
            .get(),
        refused.len() as u64
    );
    let quiet_bytes = hub
        .metrics
        .store_cluster_bytes
        .with_label_values(&["west"])
        .get();
    assert!(quiet_bytes > 0);
    assert_eq!(hub.metrics.store_bytes.get(), held + quiet_bytes);

    // The other cluster is untouched and its next change still lands.
    quiet
        .send(&AgentFrame::Deltas(DeltaBatch {
            deltas: vec![upsert(2, "web", json!({"replicas": 2}))],
        }))
        .await?;
    assert_eq!(acked(&mut quiet, 2).await?, Vec::<String>::new());
    let upstream = hub.upstream.clone();
    eventually("the quiet cluster's change in KCP", || {
        upstream
            .patches()
            .iter()
            .any(|(key, patch)| key.name == "web" && *patch == json!({"status": {"replicas": 2}}))
    })
    .await?;
    hub.stop().await
}

/// A snapshot is held to the cluster's budget while it arrives (it is
/// buffered whole before it replaces the cluster's entries).
#[tokio::test]
async fn a_snapshot_is_held_to_the_cluster_budget() -> Result<()> {
    let status = format!(r#"{{"a":"{}"}}"#, "x".repeat(30 * 1024));
    let hub = TestHub::start_placed(
        |config| {
            config.memory_budget = MemoryBudget {
                cluster_bytes: 64 * 1024,
                total_bytes: 1024 * 1024,
            }
        },
        flood_placement(3),
    )
    .await?;
    let identity = hub.pki.client(FLOODER)?;
    let mut agent = hub.connect(&identity).await?;
    agent.hello(FLOODER, "session-1", None, 0).await?;
    agent
        .send(&AgentFrame::SnapshotBegin(SnapshotBegin {
            objects: 3,
            shards: None,
        }))
        .await?;
    agent
        .send(&AgentFrame::SnapshotChunk(uplink_protocol::SnapshotChunk {
            deltas: (1..=3)
                .map(|i| flood_delta(i, &format!("flood-{i}"), &status))
                .collect(),
        }))
        .await?;
    agent
        .send(&AgentFrame::SnapshotEnd(SnapshotEnd {
            seq: 3,
            upsync_listed: false,
        }))
        .await?;
    let refused = acked(&mut agent, 3).await?;
    assert_eq!(refused, vec![Rejected::CLUSTER_MEMORY_BUDGET.to_owned()]);
    let held = hub
        .metrics
        .store_cluster_bytes
        .with_label_values(&[FLOODER])
        .get();
    assert!(held > 60 * 1024 && held <= 64 * 1024, "{held}");
    assert_eq!(
        hub.metrics
            .store_cluster_objects
            .with_label_values(&[FLOODER])
            .get(),
        2
    );
    hub.stop().await
}
