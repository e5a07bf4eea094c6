//! Backpressure: KCP is slow, the hub's writer falls behind, and the hub
//! slows its agents down with `Throttle` frames instead of growing: its
//! queue and store stay bounded by the number of objects. Only the cluster
//! whose backlog is deep is throttled: another cluster with a few changes
//! is not. When KCP is fast again the agents are released and KCP
//! converges.

use std::time::Duration;

use anyhow::{Result, bail, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use serde_json::json;
use uplink_tests::fleet::convergence::Convergence;
use uplink_tests::fleet::{Fleet, SCENARIO_TIMEOUT, bounded, deployment, eventually};

const TEAM: &str = "root:org:team-a";
const NS: &str = "shop";
const OBJECTS: usize = 20;
const WITHIN: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_falls_behind_throttles_agents_and_stays_bounded() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, backpressure()).await
}

async fn backpressure() -> Result<()> {
    let fleet = Fleet::builder()
        .clusters(["a", "b"])
        .workspaces([TEAM])
        .heartbeat(Duration::from_millis(300))
        .hub_config(|c| {
            c.write_qps = 0.0;
            c.write_concurrency = 1;
            c.throttle_queue_depth = 4;
            c.throttle_pause = Duration::from_millis(300);
        })
        .start()
        .await?;
    let mut checker = Convergence::deployments();
    for i in 0..OBJECTS {
        let name = format!("web-{i}");
        fleet.place(TEAM, NS, &deployment(&name, 1), &["a"]).await?;
        checker.track(TEAM, NS, &name, "a");
    }
    fleet
        .place(TEAM, NS, &deployment("quiet", 1), &["b"])
        .await?;
    checker.track(TEAM, NS, "quiet", "b");

    // KCP slows down: one write at a time, 300 ms each.
    fleet
        .kcp_server()
        .faults()
        .set_latency(Duration::from_millis(300));
    let throttles = "uplink_hub_throttles_total{cluster=\"a\"}";
    let mut round = 0;
    let mut deepest = 0.0f64;
    eventually(WITHIN, "the hub to throttle agent a", async || {
        round += 1;
        let status = json!({"observedGeneration": 1, "replicas": 1, "readyReplicas": round});
        fleet
            .set_status::<Deployment>("b", TEAM, NS, "quiet", status)
            .await?;
        for i in 0..OBJECTS {
            let status = json!({"observedGeneration": 1, "replicas": 1, "readyReplicas": round});
            fleet
                .set_status::<Deployment>("a", TEAM, NS, &format!("web-{i}"), status)
                .await?;
        }
        let metrics = fleet.hub_metrics().await?;
        deepest = deepest.max(metrics.require("uplink_hub_kcp_write_queue_depth")?);
        let sent = metrics.counter(throttles);
        if sent >= 1.0 {
            Ok(())
        } else {
            bail!("{sent} throttles after {round} rounds")
        }
    })
    .await?;
    let metrics = fleet.hub_metrics().await?;
    deepest = deepest.max(metrics.require("uplink_hub_kcp_write_queue_depth")?);
    ensure!(
        deepest <= OBJECTS as f64 + 1.0,
        "the write queue reached {deepest} for {OBJECTS} objects: it grows with traffic"
    );
    let quiet = metrics.counter("uplink_hub_throttles_total{cluster=\"b\"}");
    ensure!(
        quiet == 0.0,
        "cluster b, with one object, was throttled {quiet} times for a's backlog"
    );
    let stored = metrics.require("uplink_hub_store_objects")?;
    ensure!(
        stored <= OBJECTS as f64 + 1.0,
        "the store holds {stored} objects for {OBJECTS}"
    );

    // KCP recovers; the agent is released and everything lands.
    fleet.kcp_server().faults().clear();
    checker.converged(&fleet, WITHIN).await?;
    fleet.shutdown().await
}
