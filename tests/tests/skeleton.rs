//! The walking skeleton, end to end: a KCP test bed, two physical clusters,
//! the hub and one agent per cluster, all in this process. A status written
//! by a cluster's controllers must show up in the object's KCP workspace,
//! later changes must overwrite it, a deletion downstream must clear it, and
//! the hub's and the agents' metrics must say that the agents are connected
//! and working.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use serde_json::{Value, json};
use uplink_tests::fleet::{
    Fleet, SCENARIO_TIMEOUT, STATUS_DEADLINE, Scrape, bounded, deployment, eventually,
};

/// A workspace with dashes in its last segment.
const TEAM_A: &str = "root:org:team-a";
/// A deeper workspace with colons and dashes.
const PLATFORM: &str = "root:org:platform-team:blue-green";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_flows_from_two_clusters_to_their_kcp_workspaces() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, two_clusters_two_workspaces()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_delivers_what_changed_while_it_was_down() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, restarted_agent()).await
}

async fn two_clusters_two_workspaces() -> Result<()> {
    let fleet = Fleet::builder()
        .clusters(["a", "b"])
        .workspaces([TEAM_A, PLATFORM])
        .heartbeat(Duration::from_millis(200))
        .start()
        .await?;

    fleet
        .place(TEAM_A, "shop-front", &deployment("web-frontend", 2), &["a"])
        .await?;
    fleet
        .place(
            PLATFORM,
            "payments-eu",
            &deployment("api-backend", 1),
            &["b"],
        )
        .await?;

    // Cluster a rolls the Deployment out: nothing ready yet, then both replicas.
    let rolling = json!({
        "observedGeneration": 1, "replicas": 2, "updatedReplicas": 2,
        "readyReplicas": 0, "unavailableReplicas": 2,
    });
    fleet
        .set_status::<Deployment>("a", TEAM_A, "shop-front", "web-frontend", rolling.clone())
        .await?;
    kcp_status_becomes(&fleet, TEAM_A, "shop-front", "web-frontend", &rolling).await?;

    let ready = json!({
        "observedGeneration": 1, "replicas": 2, "updatedReplicas": 2,
        "readyReplicas": 2, "availableReplicas": 2,
        "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"}],
    });
    fleet
        .set_status::<Deployment>("a", TEAM_A, "shop-front", "web-frontend", ready.clone())
        .await?;
    kcp_status_becomes(&fleet, TEAM_A, "shop-front", "web-frontend", &ready).await?;

    // A later change overwrites it, and fields the cluster no longer reports
    // (availableReplicas, conditions) are gone upstream too.
    let scaled = json!({
        "observedGeneration": 2, "replicas": 3, "updatedReplicas": 1, "readyReplicas": 1,
    });
    fleet
        .set_status::<Deployment>("a", TEAM_A, "shop-front", "web-frontend", scaled.clone())
        .await?;
    kcp_status_becomes(&fleet, TEAM_A, "shop-front", "web-frontend", &scaled).await?;

    // Cluster b reports into the other workspace.
    let backend =
        json!({"observedGeneration": 1, "replicas": 1, "readyReplicas": 1, "availableReplicas": 1});
    fleet
        .set_status::<Deployment>("b", PLATFORM, "payments-eu", "api-backend", backend.clone())
        .await?;
    kcp_status_becomes(&fleet, PLATFORM, "payments-eu", "api-backend", &backend).await?;

    // The hub keys both objects by their upstream coordinates, each reported
    // by its own cluster only: the workspace names survived the trip whole.
    let objects = fleet.hub_list("/api/v1/objects").await?;
    for (workspace, namespace, name, cluster) in [
        (TEAM_A, "shop-front", "web-frontend", "a"),
        (PLATFORM, "payments-eu", "api-backend", "b"),
    ] {
        let object = find_object(&objects, workspace, namespace, name).with_context(|| {
            format!("{workspace}/{namespace}/{name} in the hub API: {objects:#}")
        })?;
        let reporters: Vec<&String> = object["clusters"]
            .as_object()
            .map(|c| c.keys().collect())
            .unwrap_or_default();
        ensure!(
            reporters == [cluster],
            "{name} should be reported by {cluster} only, the hub shows {reporters:?}"
        );
    }

    check_hub_metrics(&fleet).await?;
    check_agent_metrics(&fleet, "a").await?;
    check_agent_metrics(&fleet, "b").await?;

    let clusters = fleet.hub_list("/api/v1/clusters").await?;
    for name in ["a", "b"] {
        let connected = clusters
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == name)
            .map(|c| c["connected"].clone());
        ensure!(
            connected == Some(Value::Bool(true)),
            "cluster {name} should be listed as connected: {clusters:#}"
        );
    }

    // Deleting the downstream object: no cluster reports it any more. No
    // cluster can make the hub wipe a status: KCP keeps the last merged one,
    // and a condition says no cluster reports it.
    let before = fleet
        .upstream_status::<Deployment>(TEAM_A, "shop-front", "web-frontend")
        .await?
        .unwrap_or_default();
    fleet
        .delete_downstream::<Deployment>("a", TEAM_A, "shop-front", "web-frontend")
        .await?;
    eventually(
        STATUS_DEADLINE,
        "web-frontend's status in KCP to say no cluster reports it",
        async || {
            let status = fleet
                .upstream_status::<Deployment>(TEAM_A, "shop-front", "web-frontend")
                .await?
                .unwrap_or_default();
            let reported = status["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "StatusReported");
            ensure!(
                reported
                    .is_some_and(|c| c["status"] == "False" && c["reason"] == "NoClusterReports"),
                "status is {status}"
            );
            for field in ["replicas", "readyReplicas", "observedGeneration"] {
                ensure!(
                    status[field] == before[field],
                    "{field} changed from {} to {}",
                    before[field],
                    status[field]
                );
            }
            Ok(())
        },
    )
    .await?;
    let objects = fleet.hub_list("/api/v1/objects").await?;
    ensure!(
        find_object(&objects, TEAM_A, "shop-front", "web-frontend").is_none(),
        "the hub should have forgotten web-frontend: {objects:#}"
    );
    // The other cluster's object is untouched.
    let status = fleet
        .upstream_status::<Deployment>(PLATFORM, "payments-eu", "api-backend")
        .await?;
    ensure!(
        status.as_ref() == Some(&backend),
        "api-backend's status changed to {}",
        show(status.as_ref())
    );

    fleet.shutdown().await
}

async fn restarted_agent() -> Result<()> {
    let mut fleet = Fleet::builder()
        .clusters(["a"])
        .workspaces([TEAM_A])
        .heartbeat(Duration::from_millis(200))
        .start()
        .await?;
    fleet
        .place(TEAM_A, "shop-front", &deployment("web-frontend", 2), &["a"])
        .await?;
    let before = json!({"observedGeneration": 1, "replicas": 2, "readyReplicas": 1});
    fleet
        .set_status::<Deployment>("a", TEAM_A, "shop-front", "web-frontend", before.clone())
        .await?;
    kcp_status_becomes(&fleet, TEAM_A, "shop-front", "web-frontend", &before).await?;

    fleet.stop_agent("a").await?;
    eventually(
        STATUS_DEADLINE,
        "the hub to see agent a leave",
        async || {
            let connected = fleet
                .hub_metrics()
                .await?
                .require("uplink_hub_agents_connected")?;
            ensure!(
                connected == 0.0,
                "uplink_hub_agents_connected is {connected}"
            );
            Ok(())
        },
    )
    .await?;
    let after = json!({"observedGeneration": 1, "replicas": 2, "readyReplicas": 2});
    fleet
        .set_status::<Deployment>("a", TEAM_A, "shop-front", "web-frontend", after.clone())
        .await?;

    fleet.start_agent("a").await?;
    kcp_status_becomes(&fleet, TEAM_A, "shop-front", "web-frontend", &after).await?;
    fleet.shutdown().await
}

/// The hub: both agents connected, heartbeats flowing from both, deltas
/// received and KCP written.
async fn check_hub_metrics(fleet: &Fleet) -> Result<()> {
    let first = fleet.hub_metrics().await?;
    ensure!(
        first.value("uplink_hub_agents_connected") == Some(2.0),
        "the hub should count 2 connected agents:\n{first}"
    );
    for cluster in ["a", "b"] {
        let series = format!("uplink_hub_heartbeats_total{{cluster=\"{cluster}\"}}");
        let before = first.counter(&series);
        eventually(
            STATUS_DEADLINE,
            &format!("{series} to grow past {before}"),
            async || {
                let now = fleet.hub_metrics().await?.counter(&series);
                ensure!(now > before, "{series} is {now}");
                Ok(())
            },
        )
        .await?;
        let deltas = first.counter(&format!(
            "uplink_hub_deltas_received_total{{cluster=\"{cluster}\"}}"
        ));
        ensure!(deltas > 0.0, "no deltas received from {cluster}:\n{first}");
    }
    let writes = first.counter(r#"uplink_hub_kcp_writes_total{result="success"}"#);
    ensure!(
        writes >= 4.0,
        "expected at least 4 successful KCP writes:\n{first}"
    );
    Ok(())
}

/// An agent: connected, one session, deltas and heartbeats sent.
async fn check_agent_metrics(fleet: &Fleet, agent: &str) -> Result<()> {
    let scrape: Scrape = fleet.agent_metrics(agent).await?;
    ensure!(
        scrape.value("uplink_agent_connected") == Some(1.0),
        "agent {agent} should be connected:\n{scrape}"
    );
    for counter in [
        "uplink_agent_deltas_sent_total",
        "uplink_agent_heartbeats_sent_total",
    ] {
        ensure!(
            scrape.counter(counter) > 0.0,
            "agent {agent}: {counter} should be positive:\n{scrape}"
        );
    }
    Ok(())
}

/// Polls KCP until the object's status is exactly `expected`.
async fn kcp_status_becomes(
    fleet: &Fleet,
    workspace: &str,
    namespace: &str,
    name: &str,
    expected: &Value,
) -> Result<()> {
    eventually(
        STATUS_DEADLINE,
        &format!("status {expected} on {name} in KCP {workspace}/{namespace}"),
        async || {
            let status = fleet
                .upstream_status::<Deployment>(workspace, namespace, name)
                .await?;
            ensure!(
                status.as_ref() == Some(expected),
                "status is {}",
                show(status.as_ref())
            );
            Ok(())
        },
    )
    .await
}

fn find_object<'a>(
    objects: &'a Value,
    workspace: &str,
    namespace: &str,
    name: &str,
) -> Option<&'a Value> {
    objects
        .as_array()?
        .iter()
        .find(|o| o["workspace"] == workspace && o["namespace"] == namespace && o["name"] == name)
}

fn show(status: Option<&Value>) -> String {
    status.map_or_else(|| "absent".to_owned(), Value::to_string)
}
