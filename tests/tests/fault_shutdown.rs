//! Graceful shutdown of the real `uplink-hub`: on SIGTERM it stops
//! accepting, tells its agents `Bye` (they notice at once instead of after
//! three silent heartbeat intervals) and flushes its pending KCP writes
//! within the deadline, so KCP is up to date even before a hub is back.

use std::time::Duration;

use anyhow::{Result, bail, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use serde_json::json;
use tokio::time::Instant;
use uplink_tests::fleet::convergence::Convergence;
use uplink_tests::fleet::processes::{AgentProcess, HubProcess};
use uplink_tests::fleet::{Fleet, bounded, deployment, eventually};

const TEAM: &str = "root:org:team-a";
const NS: &str = "shop";
const OBJECTS: usize = 8;
/// Long, so that noticing by silence (3 × 3 s) cannot pass for a `Bye`.
const HEARTBEAT: Duration = Duration::from_secs(3);
const WITHIN: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_says_bye_to_agents_and_flushes_kcp_writes() -> Result<()> {
    bounded(Duration::from_secs(240), sigterm()).await
}

async fn sigterm() -> Result<()> {
    let fleet = Fleet::builder()
        .clusters(["a"])
        .workspaces([TEAM])
        .heartbeat(HEARTBEAT)
        .without_agents()
        .start()
        .await?;
    let mut hub =
        HubProcess::start(&fleet, &["--write-concurrency=1", "--shutdown-timeout=20s"]).await?;
    let agent = AgentProcess::start(&fleet, "a", &hub.url()).await?;

    let mut checker = Convergence::deployments();
    for i in 0..OBJECTS {
        let name = format!("web-{i}");
        fleet.place(TEAM, NS, &deployment(&name, 2), &["a"]).await?;
        fleet
            .set_status::<Deployment>("a", TEAM, NS, &name, status(0))
            .await?;
        checker.track(TEAM, NS, &name, "a");
    }
    checker.converged(&fleet, WITHIN).await?;

    // KCP turns slow: the hub's writes queue up behind one another.
    fleet
        .kcp_server()
        .faults()
        .set_latency(Duration::from_millis(250));
    let received = |scrape: &uplink_tests::fleet::Scrape| {
        scrape.counter("uplink_hub_deltas_received_total{cluster=\"a\"}")
    };
    let before = received(&hub.process.metrics().await?);
    for i in 0..OBJECTS {
        fleet
            .set_status::<Deployment>("a", TEAM, NS, &format!("web-{i}"), status(1))
            .await?;
    }
    eventually(WITHIN, "the hub to receive every change", async || {
        let now = received(&hub.process.metrics().await?) - before;
        if now >= OBJECTS as f64 {
            Ok(())
        } else {
            bail!("{now} deltas")
        }
    })
    .await?;

    let sigterm = Instant::now();
    let terminate = hub.process.terminate(Duration::from_secs(30));
    let agent_noticed = async {
        eventually(WITHIN, "the agent to see the hub go", async || {
            let connected = agent
                .process
                .metrics()
                .await?
                .require("uplink_agent_connected")?;
            if connected == 0.0 {
                Ok(sigterm.elapsed())
            } else {
                bail!("uplink_agent_connected {connected}")
            }
        })
        .await
    };
    let (exit, noticed) = tokio::try_join!(terminate, agent_noticed)?;
    ensure!(exit.success(), "the hub exited with {exit} on SIGTERM");
    ensure!(
        noticed < HEARTBEAT,
        "the agent noticed the hub's shutdown after {noticed:?}: it waited for silence instead of hearing Bye"
    );
    // No hub is running now: whatever KCP holds, the flush wrote.
    let differences = checker.differences(&fleet).await?;
    ensure!(
        differences.is_empty(),
        "pending writes were not flushed on SIGTERM: {} differences, e.g. {}",
        differences.len(),
        differences
            .first()
            .map(ToString::to_string)
            .unwrap_or_default()
    );

    fleet.kcp_server().faults().clear();
    hub.restart().await?;
    fleet
        .set_status::<Deployment>("a", TEAM, NS, "web-0", status(2))
        .await?;
    checker.converged(&fleet, WITHIN).await?;
    fleet.shutdown().await
}

fn status(round: u32) -> serde_json::Value {
    json!({"observedGeneration": 1, "replicas": 2, "readyReplicas": round})
}
