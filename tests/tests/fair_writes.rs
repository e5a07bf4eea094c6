//! Fair writes, end to end: a cluster with a genuine certificate reports
//! thousands of distinct objects (all placed on it, so every report is
//! taken), and another cluster's status change still reaches KCP within
//! the writer's settle time plus a few writes, while the flood is being
//! written. Before the writer served clusters in turn, the change waited
//! behind the whole flood (here 40 s at 50 writes/s; the
//! hostile-client finding was 95,000 objects and about 25 minutes).
//!
//! `hub/tests/fair_writes.rs` holds the bound at 100,000 objects on the
//! writer itself, in virtual time.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use serde_json::{Value, json};
use uplink_tests::fleet::{
    Fleet, SCENARIO_TIMEOUT, STATUS_DEADLINE, bounded, deployment, eventually,
};
use uplink_tests::forged::{deployment_ref, upsert};

const FLOOD_WS: &str = "root:org:flood";
const TENANT: &str = "root:org:tenant";
/// 40 s of writes at the default 50/s, well past the status deadline.
const FLOOD: usize = 2_000;
const BATCH: usize = 1_000;

fn status(ready: i64) -> Value {
    json!({"observedGeneration": 1, "replicas": ready, "readyReplicas": ready, "updatedReplicas": ready})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_cluster_does_not_hold_back_anothers_write() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, flood()).await
}

async fn flood() -> Result<()> {
    let mut fleet = Fleet::builder()
        .clusters(["hostile", "honest"])
        .workspaces([FLOOD_WS, TENANT])
        // What is left of the flood at the end is not worth waiting for.
        .hub_config(|c| c.shutdown_flush_timeout = Duration::from_millis(100))
        .start()
        .await?;
    fleet
        .place(TENANT, "shop", &deployment("web", 3), &["honest"])
        .await?;
    fleet
        .set_status::<Deployment>("honest", TENANT, "shop", "web", status(3))
        .await?;
    fleet
        .create_upstream_deployments(
            FLOOD_WS,
            "spam",
            (0..FLOOD).map(|i| format!("spam-{i}")),
            "hostile",
        )
        .await?;
    eventually(STATUS_DEADLINE, "KCP to show honest's status", async || {
        let got = fleet
            .upstream_status::<Deployment>(TENANT, "shop", "web")
            .await?;
        ensure!(got == Some(status(3)), "KCP shows {got:?}");
        Ok(())
    })
    .await?;

    // The hostile cluster reports every one of its objects at once.
    fleet.stop_agent("hostile").await?;
    let mut forged = fleet.forged_agent("hostile").await?;
    forged.hello("hostile").await?;
    for batch in (0..FLOOD).collect::<Vec<_>>().chunks(BATCH) {
        let changes = batch
            .iter()
            .map(|i| {
                let object = deployment_ref(FLOOD_WS, "spam", &format!("spam-{i}"));
                (object, upsert(&status(1)))
            })
            .collect();
        forged.report(changes).await?;
    }
    let depth = "uplink_hub_write_queue_cluster_depth{cluster=\"hostile\"}";
    eventually(
        STATUS_DEADLINE,
        "the flood in the write queue",
        async || {
            let queued = fleet.hub_metrics().await?.value(depth).unwrap_or(0.0);
            ensure!(queued >= (FLOOD / 2) as f64, "{queued} of the flood queued");
            Ok(())
        },
    )
    .await?;

    // The honest cluster's change lands while the flood is written.
    let changed = Instant::now();
    fleet
        .set_status::<Deployment>("honest", TENANT, "shop", "web", status(2))
        .await?;
    eventually(STATUS_DEADLINE, "KCP to show honest's change", async || {
        let got = fleet
            .upstream_status::<Deployment>(TENANT, "shop", "web")
            .await?;
        ensure!(got == Some(status(2)), "KCP shows {got:?}");
        Ok(())
    })
    .await?;
    let took = changed.elapsed();
    let behind = fleet.hub_metrics().await?.value(depth).unwrap_or(0.0);
    ensure!(
        behind > 0.0,
        "the flood was written before the check: the scenario proves nothing"
    );
    // Settle time and a few writes are tens of milliseconds; the margin is
    // for the agent's watch, the test bed and this test's polling.
    ensure!(
        took <= Duration::from_secs(3),
        "honest's change took {took:?} to reach KCP with {behind} flood objects queued"
    );
    drop(forged);
    fleet.shutdown().await
}
