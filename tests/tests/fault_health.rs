//! A cluster whose agent stops heartbeating goes Stale (three intervals),
//! then Offline (the grace), and back to Ready when it returns: in the hub
//! API, in `uplink_hub_cluster_state`, and in the cluster's `SyncTarget` in
//! KCP (`Ready` condition and `lastSyncerHeartbeatTime`). Each change
//! writes again only the objects whose merged status it changes.

use std::time::Duration;

use anyhow::{Result, bail, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use serde_json::{Value, json};
use uplink_tests::fleet::setup::ready_condition;
use uplink_tests::fleet::{Fleet, SCENARIO_TIMEOUT, bounded, deployment, eventually};

const HEARTBEAT: Duration = Duration::from_millis(300);
/// Long against Stale (0.9 s) so the Stale window is easy to observe.
const OFFLINE_GRACE: Duration = Duration::from_secs(5);
/// Where the hub writes SyncTargets.
const SYNCTARGETS: &str = "root";
const WITHIN: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_cluster_goes_stale_then_offline_and_back_to_ready() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, stale_offline_ready()).await
}

async fn stale_offline_ready() -> Result<()> {
    let mut fleet = Fleet::builder()
        .clusters(["a"])
        .heartbeat(HEARTBEAT)
        .offline_grace(OFFLINE_GRACE)
        .synctargets(SYNCTARGETS, Duration::from_secs(1))
        .start()
        .await?;

    expect_state(&fleet, "Ready", ("True", "Ready")).await?;
    let first = heartbeat_time(&fleet).await?;
    // The heartbeat time is refreshed (at most every second), not frozen.
    eventually(WITHIN, "lastSyncerHeartbeatTime to move on", async || {
        let now = heartbeat_time(&fleet).await?;
        if now > first {
            Ok(())
        } else {
            bail!("still {now}")
        }
    })
    .await?;

    fleet.stop_agent("a").await?;
    expect_state(&fleet, "Stale", ("False", "Stale")).await?;
    expect_state(&fleet, "Offline", ("False", "Offline")).await?;

    fleet.start_agent("a").await?;
    expect_state(&fleet, "Ready", ("True", "Ready")).await?;
    fleet.shutdown().await
}

const TEAM: &str = "root:org:team-a";
const NS: &str = "shop";
/// Objects placed on one cluster only, of each of a and b.
const OWN: usize = 5;

/// A cluster going Stale changes no merged status, so nothing is written
/// again; Offline and back to Ready rewrite the objects it reports (its own
/// get or lose the `ClusterOffline` conflict, the shared one its report),
/// never the other cluster's. (Before, every change of state queued all
/// of the cluster's objects: 100,000 writes per flap for a big cluster.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_cluster_rewrites_only_what_its_state_changes() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, flapping()).await
}

async fn flapping() -> Result<()> {
    let mut fleet = Fleet::builder()
        .clusters(["a", "b"])
        .workspaces([TEAM])
        .heartbeat(HEARTBEAT)
        .offline_grace(OFFLINE_GRACE)
        .start()
        .await?;
    let ready = |n: i64| json!({"replicas": n, "readyReplicas": n});
    for (name, clusters) in (0..OWN)
        .flat_map(|i| [(format!("a-{i}"), vec!["a"]), (format!("b-{i}"), vec!["b"])])
        .chain([("shared".to_owned(), vec!["a", "b"])])
    {
        fleet
            .place(TEAM, NS, &deployment(&name, 1), &clusters)
            .await?;
        for cluster in clusters {
            fleet
                .set_status::<Deployment>(cluster, TEAM, NS, &name, ready(1))
                .await?;
        }
    }
    expect_shared_ready(&fleet, 2).await?;
    let before = [
        counts(&fleet, "Stale").await?,
        counts(&fleet, "Offline").await?,
        counts(&fleet, "Ready").await?,
    ];

    fleet.stop_agent("a").await?;
    // Each state: acted on once, and exactly a's objects whose merge it
    // changes written again (a's own and the shared one; none of b's).
    let a_reports = (OWN + 1) as f64;
    for (i, (state, rewritten)) in [("Stale", 0.0), ("Offline", a_reports)]
        .into_iter()
        .enumerate()
    {
        eventually(WITHIN, &format!("a {state}, acted on"), async || {
            let (changes, requeues) = counts(&fleet, state).await?;
            ensure!(changes == before[i].0 + 1.0, "{changes} changes to {state}");
            let requeued = requeues - before[i].1;
            ensure!(
                requeued == rewritten,
                "{requeued} objects requeued for {state}"
            );
            Ok(())
        })
        .await?;
    }
    expect_shared_ready(&fleet, 1).await?;

    fleet.start_agent("a").await?;
    eventually(WITHIN, "a Ready again, acted on", async || {
        let (changes, requeues) = counts(&fleet, "Ready").await?;
        ensure!(changes == before[2].0 + 1.0, "{changes} changes to Ready");
        let requeued = requeues - before[2].1;
        ensure!(
            requeued == a_reports,
            "{requeued} objects requeued for Ready"
        );
        Ok(())
    })
    .await?;
    expect_shared_ready(&fleet, 2).await?;
    fleet.shutdown().await
}

/// The hub's count of changes to `state` it acted on, and of objects it
/// wrote again for them.
async fn counts(fleet: &Fleet, state: &str) -> Result<(f64, f64)> {
    let metrics = fleet.hub_metrics().await?;
    let changes = metrics.require(&format!(
        "uplink_hub_cluster_state_changes_total{{state=\"{state}\"}}"
    ))?;
    let requeues = metrics.require(&format!(
        "uplink_hub_cluster_state_requeues_total{{state=\"{state}\"}}"
    ))?;
    Ok((changes, requeues))
}

/// Waits until KCP shows `n` ready replicas of the shared Deployment.
async fn expect_shared_ready(fleet: &Fleet, n: i64) -> Result<()> {
    eventually(
        WITHIN,
        &format!("{n} ready replicas of shared in KCP"),
        async || {
            let status = fleet
                .upstream_status::<Deployment>(TEAM, NS, "shared")
                .await?
                .unwrap_or(Value::Null);
            ensure!(status["readyReplicas"] == n, "KCP status {status}");
            Ok(())
        },
    )
    .await
}

/// Waits until the hub API, the state metric and the SyncTarget all say `state`.
async fn expect_state(fleet: &Fleet, state: &str, condition: (&str, &str)) -> Result<()> {
    eventually(
        WITHIN,
        &format!("cluster a to be {state} everywhere"),
        async || {
            let api = fleet.hub_cluster("a").await?;
            if api["state"] != state {
                bail!("the hub API says {}", api["state"]);
            }
            let metrics = fleet.hub_metrics().await?;
            for candidate in ["Ready", "Stale", "Offline"] {
                let series =
                    format!("uplink_hub_cluster_state{{cluster=\"a\",state=\"{candidate}\"}}");
                let expected = if candidate == state { 1.0 } else { 0.0 };
                let value = metrics.require(&series)?;
                if value != expected {
                    bail!("{series} is {value}");
                }
            }
            let synctarget = fleet.synctarget(SYNCTARGETS, "a").await?;
            let ready = synctarget.as_ref().and_then(ready_condition);
            let wanted = (condition.0.to_owned(), condition.1.to_owned());
            if ready.as_ref() != Some(&wanted) {
                bail!("the SyncTarget's Ready condition is {ready:?}");
            }
            Ok(())
        },
    )
    .await
}

async fn heartbeat_time(fleet: &Fleet) -> Result<String> {
    let synctarget = fleet.synctarget(SYNCTARGETS, "a").await?;
    match synctarget
        .as_ref()
        .map(|s| &s["status"]["lastSyncerHeartbeatTime"])
    {
        Some(Value::String(time)) => Ok(time.clone()),
        other => bail!("no lastSyncerHeartbeatTime: {other:?}"),
    }
}
