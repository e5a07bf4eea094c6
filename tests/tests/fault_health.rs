//! A cluster whose agent stops heartbeating goes Stale (three intervals),
//! then Offline (the grace), and back to Ready when it returns: in the hub
//! API, in `uplink_hub_cluster_state`, and in the cluster's `SyncTarget` in
//! KCP (`Ready` condition and `lastSyncerHeartbeatTime`).

use std::time::Duration;

use anyhow::{Result, bail};
use serde_json::Value;
use uplink_tests::fleet::setup::ready_condition;
use uplink_tests::fleet::{Fleet, SCENARIO_TIMEOUT, bounded, eventually};

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
