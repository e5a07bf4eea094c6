//! A cluster with a genuine certificate lies about itself: its heartbeat
//! reports absurd capacity and a clock far in the future. The hub refuses
//! the report, counts it by reason, keeps the fleet totals and the cluster's
//! clock skew estimate as they were, and keeps serving the honest clusters.
//! A status report dated in the far future is taken as dated no later than
//! the agent's clock can be.

use std::time::Duration;

use anyhow::{Result, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use serde_json::{Value, json};
use uplink_protocol::{
    AgentFrame, ClusterSummary, Delta, DeltaBatch, ExtendedAmounts, Heartbeat, HubFrame,
    NodeCounts, ResourceAmounts, WatchHealth,
};
use uplink_tests::fleet::convergence::Convergence;
use uplink_tests::fleet::{
    Fleet, SCENARIO_TIMEOUT, STATUS_DEADLINE, bounded, deployment, eventually,
};
use uplink_tests::forged::{ForgedAgent, deployment_ref, now_ms, upsert};

const TEAM_A: &str = "root:org:team-a";

fn status(ready: i64) -> Value {
    json!({"observedGeneration": 1, "replicas": ready, "readyReplicas": ready, "updatedReplicas": ready})
}

/// One node of 4 cores and 8 GiB, Ready, with its watch listed.
fn honest_summary() -> ClusterSummary {
    let node = ResourceAmounts {
        cpu_millis: 4000,
        memory_bytes: 8 << 30,
        ephemeral_storage_bytes: 100 << 30,
        pods: 110,
    };
    ClusterSummary {
        watches: vec![WatchHealth {
            resource: "nodes.v1".into(),
            ready: true,
            objects: 1,
            error: None,
        }],
        nodes: NodeCounts {
            total: 1,
            ready: 1,
            cordoned: 0,
        },
        capacity: node,
        allocatable: node,
        schedulable: node,
        ..ClusterSummary::default()
    }
}

/// Everything at `u64::MAX`.
fn absurd_summary() -> ClusterSummary {
    let max = ResourceAmounts {
        cpu_millis: u64::MAX,
        memory_bytes: u64::MAX,
        ephemeral_storage_bytes: u64::MAX,
        pods: u64::MAX,
    };
    ClusterSummary {
        capacity: max,
        allocatable: max,
        schedulable: max,
        requests: max,
        usage: Some(max),
        extended: [(
            "example.com/widget".to_owned(),
            ExtendedAmounts {
                capacity: u64::MAX,
                allocatable: u64::MAX,
                requests: u64::MAX,
            },
        )]
        .into(),
        ..honest_summary()
    }
}

/// Sends one heartbeat and waits for its acknowledgement: the hub is alive
/// and read the frame.
async fn heartbeat(
    agent: &mut ForgedAgent,
    agent_time_ms: i64,
    summary: ClusterSummary,
) -> Result<()> {
    agent
        .send(&AgentFrame::Heartbeat(Heartbeat {
            agent_time_ms,
            summary: Some(summary),
        }))
        .await?;
    loop {
        if let HubFrame::HeartbeatAck(ack) = agent.recv().await?
            && ack.agent_time_ms == agent_time_ms
        {
            return Ok(());
        }
    }
}

fn refused(scrape: &uplink_tests::fleet::Scrape, reason: &str) -> f64 {
    scrape.counter(&format!(
        "uplink_hub_reports_refused_total{{reason=\"{reason}\"}}"
    ))
}

/// The parts of the fleet totals a cluster's summary feeds.
fn totals(report: &Value) -> Value {
    let fleet = &report["fleet"];
    json!({
        "clusters": fleet["clusters"],
        "nodes_total": fleet["nodes_total"],
        "capacity": fleet["capacity"],
        "allocatable": fleet["allocatable"],
        "schedulable": fleet["schedulable"],
        "allocated": fleet["allocated"],
        "used": fleet["used"],
        "extended": fleet["extended"],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_summary_and_clock_are_refused() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, absurd_report()).await
}

async fn absurd_report() -> Result<()> {
    // Long heartbeats: the forged agent speaks only when the test says so.
    let mut fleet = Fleet::builder()
        .clusters(["a", "b"])
        .workspaces([TEAM_A])
        .heartbeat(Duration::from_secs(10))
        .start()
        .await?;
    fleet
        .place(TEAM_A, "shop", &deployment("web", 3), &["a"])
        .await?;
    fleet.stop_agent("b").await?;
    let mut forged = fleet.forged_agent("b").await?;
    forged.hello("b").await?;

    // An honest report first: b counts in the totals with its one node.
    heartbeat(&mut forged, now_ms(), honest_summary()).await?;
    let before = eventually(
        STATUS_DEADLINE,
        "b's node in the fleet totals",
        async || {
            let report = fleet.hub_api("/api/v1/capacity").await?;
            let t = totals(&report);
            ensure!(
                t["allocatable"]["cpu_millis"].as_u64().unwrap_or(0) >= 4000,
                "fleet totals: {t}"
            );
            Ok(t)
        },
    )
    .await?;
    let skew = fleet.hub_health().clock_skew_ms("b");
    ensure!(
        skew.is_some_and(|s| s.abs() < 60_000),
        "b's skew estimate: {skew:?}"
    );

    // The finding: u64::MAX quantities and a clock 2^62 ms ahead.
    heartbeat(&mut forged, now_ms() + (1 << 62), absurd_summary()).await?;
    // The absurd quantities with an honest clock, and an honest summary
    // with a clock two days behind (beyond the default day of skew).
    heartbeat(&mut forged, now_ms(), absurd_summary()).await?;
    heartbeat(&mut forged, now_ms() - 2 * 86_400_000, honest_summary()).await?;

    let metrics = fleet.hub_metrics().await?;
    ensure!(
        refused(&metrics, "clock_skew") == 2.0 && refused(&metrics, "out_of_range") == 1.0,
        "refusals counted:\n{}",
        metrics.text()
    );
    let after = totals(&fleet.hub_api("/api/v1/capacity").await?);
    ensure!(
        after == before,
        "fleet totals changed:\nbefore {before}\nafter  {after}"
    );
    ensure!(
        fleet.hub_health().clock_skew_ms("b") == skew,
        "b's skew estimate changed: {skew:?} → {:?}",
        fleet.hub_health().clock_skew_ms("b")
    );
    let b = fleet.hub_cluster("b").await?;
    ensure!(
        b["summary"]["allocatable"]["cpu_millis"] == 4000 && b["state"] == "Ready",
        "b's record: {b}"
    );

    // The hub is alive and the honest cluster converges.
    heartbeat(&mut forged, now_ms(), honest_summary()).await?;
    fleet
        .set_status::<Deployment>("a", TEAM_A, "shop", "web", status(2))
        .await?;
    let mut checker = Convergence::deployments();
    checker.track(TEAM_A, "shop", "web", "a");
    checker.converged(&fleet, STATUS_DEADLINE).await?;
    drop(forged);
    fleet.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_from_the_future_is_dated_no_later_than_the_agent_can_be() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, future_report()).await
}

/// b reports its own object as observed at `i64::MAX` ms (which would win
/// every `Newest` merge for ever): the hub keeps it dated no later than
/// b's clock (as its heartbeats show it) plus a minute.
async fn future_report() -> Result<()> {
    let mut fleet = Fleet::builder()
        .clusters(["b"])
        .workspaces([TEAM_A])
        .heartbeat(Duration::from_secs(10))
        .start()
        .await?;
    fleet
        .place(TEAM_A, "shop", &deployment("web", 3), &["b"])
        .await?;
    fleet.stop_agent("b").await?;
    let mut forged = fleet.forged_agent("b").await?;
    forged.hello("b").await?;
    heartbeat(&mut forged, now_ms(), honest_summary()).await?;
    forged
        .send(&AgentFrame::Deltas(DeltaBatch {
            deltas: vec![Delta {
                seq: 1,
                object: deployment_ref(TEAM_A, "shop", "web"),
                generation: Some(1),
                observed_generation: Some(1),
                observed_at_ms: i64::MAX,
                change: upsert(&status(3)),
                object_json: None,
            }],
        }))
        .await?;
    loop {
        if let HubFrame::Ack(ack) = forged.recv().await?
            && ack.seq >= 1
        {
            break;
        }
    }
    // A minute, and a margin for b's skew estimate (half a round trip).
    let bound = now_ms() + 61_000;
    let (_, entries) = fleet
        .hub_store()
        .find(|key| key.workspace == TEAM_A && key.name == "web")
        .ok_or_else(|| anyhow::anyhow!("the report of web is not stored"))?;
    let observed = entries.get("b").map(|e| e.observed_at_ms);
    ensure!(
        observed.is_some_and(|at| at <= bound && at > now_ms()),
        "b's report is dated {observed:?}, the bound is {bound}"
    );
    drop(forged);
    fleet.shutdown().await
}
