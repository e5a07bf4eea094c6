//! KCP answers 500, then 429, for a while, then recovers. The hub retries
//! (backoff for 5xx, `Retry-After` for 429) and, since status writes are
//! level-triggered from its store, catches up to the latest state of every
//! object: a handful of writes, not the history of changes it missed.

use std::time::Duration;

use anyhow::{Result, bail, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use serde_json::json;
use uplink_tests::fleet::convergence::Convergence;
use uplink_tests::fleet::{Fleet, SCENARIO_TIMEOUT, bounded, deployment, eventually};

const TEAM: &str = "root:org:team-a";
const NS: &str = "shop";
const OBJECTS: usize = 10;
/// Status changes per object while KCP fails.
const ROUNDS: u32 = 6;
const WITHIN: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcp_errors_are_retried_and_the_hub_catches_up_to_the_latest_state() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, kcp_errors()).await
}

async fn kcp_errors() -> Result<()> {
    let fleet = Fleet::builder()
        .clusters(["a"])
        .workspaces([TEAM])
        .heartbeat(Duration::from_millis(300))
        // Only object status writes are counted (SyncTarget writes have
        // their own counter).
        .hub_config(|c| c.write_qps = 0.0)
        .start()
        .await?;
    let mut checker = Convergence::deployments();
    for i in 0..OBJECTS {
        let name = format!("web-{i}");
        fleet.place(TEAM, NS, &deployment(&name, 3), &["a"]).await?;
        fleet
            .set_status::<Deployment>("a", TEAM, NS, &name, status(0))
            .await?;
        checker.track(TEAM, NS, &name, "a");
    }
    checker.converged(&fleet, WITHIN).await?;
    let writes = |scrape: &uplink_tests::fleet::Scrape, result: &str| {
        scrape.counter(&format!(
            "uplink_hub_kcp_writes_total{{result=\"{result}\"}}"
        ))
    };
    let before = fleet.hub_metrics().await?;

    // 500 for everything: every object fails at least once.
    let kcp = fleet.kcp_server().faults();
    kcp.set_error_rate(1.0, 500);
    change_all(&fleet, 1).await?;
    eventually(WITHIN, "writes to fail with 500", async || {
        let failed = writes(&fleet.hub_metrics().await?, "error") - writes(&before, "error");
        if failed >= OBJECTS as f64 {
            Ok(())
        } else {
            bail!("{failed} failed writes")
        }
    })
    .await?;

    // Then 429 with Retry-After.
    kcp.set_error_rate(1.0, 429);
    for round in 2..ROUNDS {
        change_all(&fleet, round).await?;
    }
    eventually(WITHIN, "writes to be throttled", async || {
        let throttled =
            writes(&fleet.hub_metrics().await?, "throttled") - writes(&before, "throttled");
        if throttled >= 1.0 {
            Ok(())
        } else {
            bail!("{throttled} throttled writes")
        }
    })
    .await?;
    change_all(&fleet, ROUNDS).await?;
    // Every change has reached the hub's store before KCP recovers.
    eventually(WITHIN, "the hub to hold the last round", async || {
        let objects = fleet.hub_list("/api/v1/objects").await?;
        let latest = objects
            .as_array()
            .map(|all| {
                all.iter()
                    .filter(|o| o["clusters"]["a"]["status"] == status(ROUNDS))
                    .count()
            })
            .unwrap_or(0);
        if latest == OBJECTS {
            Ok(())
        } else {
            bail!("{latest} objects at the last round")
        }
    })
    .await?;

    let recovered = fleet.hub_metrics().await?;
    kcp.clear();
    checker.converged(&fleet, WITHIN).await?;
    let after = fleet.hub_metrics().await?;
    let successes = writes(&after, "success") - writes(&recovered, "success");
    // Each object missed ROUNDS changes; catching up takes one write each
    // (two if a retry was in flight when KCP recovered).
    ensure!(
        successes <= (2 * OBJECTS) as f64,
        "{successes} successful writes to catch up {OBJECTS} objects after {ROUNDS} missed changes each: a history, not the latest state"
    );
    fleet.shutdown().await
}

fn status(round: u32) -> serde_json::Value {
    json!({"observedGeneration": 1, "replicas": 3, "updatedReplicas": round, "readyReplicas": round})
}

async fn change_all(fleet: &Fleet, round: u32) -> Result<()> {
    for i in 0..OBJECTS {
        fleet
            .set_status::<Deployment>("a", TEAM, NS, &format!("web-{i}"), status(round))
            .await?;
    }
    Ok(())
}
