//! A connection cut silently: a proxy between agent and hub stops forwarding
//! in both directions without closing anything, as a broken middlebox does.
//! TCP never reports a thing; only the heartbeats can tell. Both sides must
//! notice within three heartbeat intervals, and once the network heals the
//! agent must resume its session (no snapshot) and deliver what changed
//! meanwhile.

use std::time::Duration;

use anyhow::{Result, bail, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use serde_json::json;
use tokio::time::Instant;
use uplink_tests::fleet::convergence::Convergence;
use uplink_tests::fleet::proxy::{LinkMode, TcpProxy};
use uplink_tests::fleet::{Fleet, SCENARIO_TIMEOUT, bounded, deployment, eventually};

const TEAM: &str = "root:org:team-a";
const NS: &str = "shop";
/// Long enough that scheduling noise on a busy machine is small against it.
const HEARTBEAT: Duration = Duration::from_millis(1000);
/// What "noticed" may take beyond three intervals: polling (50 ms) and a
/// loaded machine's scheduling.
const SLACK: Duration = Duration::from_millis(500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_cut_is_noticed_by_both_sides_and_the_agent_resumes() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, silent_cut()).await
}

async fn silent_cut() -> Result<()> {
    let mut fleet = Fleet::builder()
        .clusters(["a"])
        .workspaces([TEAM])
        .heartbeat(HEARTBEAT)
        .without_agents()
        .start()
        .await?;
    let proxy = TcpProxy::start(fleet.hub_tunnel_addr()).await?;
    let mut config = fleet.agent_config("a")?;
    config.hub_url = proxy.wss_url();
    fleet.spawn_agent("a", config).await?;
    fleet.wait_agent_connected("a").await?;

    let mut checker = Convergence::deployments();
    for i in 0..5 {
        let name = format!("web-{i}");
        fleet.place(TEAM, NS, &deployment(&name, 1), &["a"]).await?;
        fleet
            .set_status::<Deployment>(
                "a",
                TEAM,
                NS,
                &name,
                json!({"replicas": 1, "readyReplicas": 0}),
            )
            .await?;
        checker.track(TEAM, NS, &name, "a");
    }
    checker.converged(&fleet, Duration::from_secs(20)).await?;

    let before = fleet.agent_metrics("a").await?;
    let sessions = |mode: &str| format!("uplink_agent_sessions_total{{mode=\"{mode}\"}}");
    let (resumes, snapshots) = (
        before.counter(&sessions("resume")),
        before.counter(&sessions("snapshot")),
    );
    ensure!(
        snapshots == 1.0,
        "the first session is a snapshot, got {snapshots}"
    );

    // Cut. Nothing is closed: both sides only stop hearing from each other.
    proxy.set_mode(LinkMode::Blackhole);
    let cut = Instant::now();
    // Changes during the cut wait in the agent's outbox.
    for i in 0..5 {
        fleet
            .set_status::<Deployment>(
                "a",
                TEAM,
                NS,
                &format!("web-{i}"),
                json!({"replicas": 1, "readyReplicas": 1}),
            )
            .await?;
    }

    let limit = HEARTBEAT * 3 + SLACK;
    let hub_noticed = async {
        eventually(
            limit * 2,
            "the hub to drop the silent connection",
            async || {
                let cluster = fleet.hub_cluster("a").await?;
                if cluster["connected"] == false {
                    Ok(cut.elapsed())
                } else {
                    bail!("connected: {}", cluster["connected"])
                }
            },
        )
        .await
    };
    let agent_noticed = async {
        eventually(
            limit * 2,
            "the agent to drop the silent connection",
            async || {
                let connected = fleet
                    .agent_metrics("a")
                    .await?
                    .require("uplink_agent_connected")?;
                if connected == 0.0 {
                    Ok(cut.elapsed())
                } else {
                    bail!("uplink_agent_connected {connected}")
                }
            },
        )
        .await
    };
    let (hub_after, agent_after) = tokio::try_join!(hub_noticed, agent_noticed)?;
    ensure!(
        hub_after <= limit,
        "the hub noticed after {hub_after:?}, more than 3 heartbeat intervals ({:?}) + {SLACK:?}",
        HEARTBEAT * 3
    );
    ensure!(
        agent_after <= limit,
        "the agent noticed after {agent_after:?}, more than 3 heartbeat intervals ({:?}) + {SLACK:?}",
        HEARTBEAT * 3
    );
    // Silence, not a close: nobody can have noticed before two intervals.
    ensure!(
        hub_after >= HEARTBEAT * 2 - SLACK && agent_after >= HEARTBEAT * 2 - SLACK,
        "noticed too early for silence (hub {hub_after:?}, agent {agent_after:?}): was the connection closed?"
    );

    // Heal. The agent reconnects through the proxy and resumes.
    proxy.set_mode(LinkMode::Forward);
    fleet.wait_agent_connected("a").await?;
    let after = fleet.agent_metrics("a").await?;
    ensure!(
        after.counter(&sessions("resume")) == resumes + 1.0,
        "expected one resume, metrics say {} (was {resumes})",
        after.counter(&sessions("resume"))
    );
    ensure!(
        after.counter(&sessions("snapshot")) == snapshots,
        "no snapshot expected after a resume, metrics say {} (was {snapshots})",
        after.counter(&sessions("snapshot"))
    );
    checker.converged(&fleet, Duration::from_secs(20)).await?;
    fleet.shutdown().await
}
