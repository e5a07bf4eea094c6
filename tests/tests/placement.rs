//! Placement is the contract: a cluster's certificate says who it is; only
//! KCP's placement (the `state.workload.kcp.io/<syncTargetKey>` label on the
//! upstream object) says what it may report. Each scenario has a cluster
//! report what it must not (another tenant's object, another kind, the
//! hub's own records, another cluster's health) and checks that KCP shows
//! what the placed clusters report, the refusals are counted on both sides,
//! and the honest clusters keep converging.

use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use serde_json::{Value, json};
use uplink_protocol::{
    AgentFrame, ClusterSummary, Heartbeat, HubFrame, NodeCounts, ObjectRef, Rejected,
    ResourceAmounts,
};
use uplink_tests::fleet::capacity::NodeResources;
use uplink_tests::fleet::convergence::Convergence;
use uplink_tests::fleet::setup::ready_condition;
use uplink_tests::fleet::{
    Fleet, SCENARIO_TIMEOUT, STATUS_DEADLINE, Scrape, bounded, deployment, eventually,
};
use uplink_tests::forged::{deployment_ref, now_ms, upsert};

const TEAM_A: &str = "root:org:team-a";
const TEAM_B: &str = "root:org:team-b";

fn status(ready: i64) -> Value {
    json!({"observedGeneration": 1, "replicas": ready, "readyReplicas": ready, "updatedReplicas": ready})
}

fn hub_rejected(scrape: &Scrape, cluster: &str, reason: &str) -> f64 {
    scrape.counter(&format!(
        "uplink_hub_rejected_deltas_total{{cluster=\"{cluster}\",reason=\"{reason}\"}}"
    ))
}

fn agent_rejected(scrape: &Scrape, reason: &str) -> f64 {
    scrape.counter(&format!(
        "uplink_agent_rejected_deltas_total{{reason=\"{reason}\"}}"
    ))
}

/// Waits until the hub and cluster `cluster`'s agent have both counted at
/// least `at_least` refusals for `reason`.
async fn refused_on_both_sides(
    fleet: &Fleet,
    cluster: &str,
    reason: &str,
    at_least: f64,
) -> Result<()> {
    eventually(
        STATUS_DEADLINE,
        &format!("{at_least} refusals ({reason}) of cluster {cluster} counted by hub and agent"),
        async || {
            let hub = hub_rejected(&fleet.hub_metrics().await?, cluster, reason);
            let agent = agent_rejected(&fleet.agent_metrics(cluster).await?, reason);
            ensure!(
                hub >= at_least && agent >= at_least,
                "hub counted {hub}, agent {agent}"
            );
            Ok(())
        },
    )
    .await
}

/// KCP's status of `name` in `workspace`/`namespace` becomes `want`.
async fn kcp_shows(
    fleet: &Fleet,
    workspace: &str,
    namespace: &str,
    name: &str,
    want: &Value,
) -> Result<()> {
    eventually(
        STATUS_DEADLINE,
        &format!("KCP to show {want} for {name}"),
        async || {
            let got = fleet
                .upstream_status::<Deployment>(workspace, namespace, name)
                .await?;
            ensure!(got.as_ref() == Some(want), "KCP shows {got:?}");
            Ok(())
        },
    )
    .await
}

/// The clusters whose reports of `name` the hub's store holds.
fn reporters(fleet: &Fleet, workspace: &str, name: &str) -> Vec<String> {
    fleet
        .hub_store()
        .find(|key| key.workspace == workspace && key.name == name)
        .map(|(_, entries)| entries.keys().cloned().collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_cannot_report_an_object_placed_on_another() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, cross_tenant()).await
}

/// Cluster b (valid certificate, objects of its own in team-b) gets a
/// downstream copy of team-a's `web`, which KCP placed on a only: it reports
/// a status, deletes it, and sends it in a snapshot after a restart. KCP's
/// status of `web` stays a's, every report is refused and counted on both
/// sides, and a's reports keep flowing.
async fn cross_tenant() -> Result<()> {
    let mut fleet = Fleet::builder()
        .clusters(["a", "b"])
        .workspaces([TEAM_A, TEAM_B])
        .hub_config(|c| c.placement_hold = Duration::from_millis(500))
        .start()
        .await?;
    fleet
        .place(TEAM_A, "shop", &deployment("web", 3), &["a"])
        .await?;
    fleet
        .place(TEAM_B, "billing", &deployment("invoices", 1), &["b"])
        .await?;
    fleet
        .set_status::<Deployment>("a", TEAM_A, "shop", "web", status(3))
        .await?;
    fleet
        .set_status::<Deployment>("b", TEAM_B, "billing", "invoices", status(1))
        .await?;
    kcp_shows(&fleet, TEAM_A, "shop", "web", &status(3)).await?;

    // b reports team-a's web: a status that would wipe a's readiness.
    fleet
        .create_downstream("b", TEAM_A, "shop", &deployment("web", 3))
        .await?;
    fleet
        .set_status::<Deployment>("b", TEAM_A, "shop", "web", status(0))
        .await?;
    refused_on_both_sides(&fleet, "b", Rejected::NOT_PLACED, 1.0).await?;
    // ... and a deletion, which would clear it.
    let before = hub_rejected(&fleet.hub_metrics().await?, "b", Rejected::NOT_PLACED);
    fleet
        .delete_downstream::<Deployment>("b", TEAM_A, "shop", "web")
        .await?;
    refused_on_both_sides(&fleet, "b", Rejected::NOT_PLACED, before + 1.0).await?;
    // ... and a snapshot naming it, after b's agent restarts.
    fleet
        .create_downstream("b", TEAM_A, "shop", &deployment("web", 3))
        .await?;
    fleet
        .set_status::<Deployment>("b", TEAM_A, "shop", "web", status(0))
        .await?;
    fleet.stop_agent("b").await?;
    let before = hub_rejected(&fleet.hub_metrics().await?, "b", Rejected::NOT_PLACED);
    fleet.start_agent("b").await?;
    eventually(
        STATUS_DEADLINE,
        "the hub to refuse the snapshot's report",
        async || {
            let hub = hub_rejected(&fleet.hub_metrics().await?, "b", Rejected::NOT_PLACED);
            let agent = agent_rejected(&fleet.agent_metrics("b").await?, Rejected::NOT_PLACED);
            ensure!(hub > before && agent >= 1.0, "hub {hub}, agent {agent}");
            Ok(())
        },
    )
    .await?;

    ensure!(
        reporters(&fleet, TEAM_A, "web") == ["a"],
        "only a reports web in the hub: {:?}",
        reporters(&fleet, TEAM_A, "web")
    );
    let shown = fleet
        .upstream_status::<Deployment>(TEAM_A, "shop", "web")
        .await?;
    ensure!(
        shown == Some(status(3)),
        "KCP's status of web changed: {shown:?}"
    );

    // a's reports keep flowing, and b's own object is fine.
    fleet
        .set_status::<Deployment>("a", TEAM_A, "shop", "web", status(2))
        .await?;
    let mut checker = Convergence::deployments();
    checker.track(TEAM_A, "shop", "web", "a");
    checker.track(TEAM_B, "billing", "invoices", "b");
    checker.converged(&fleet, STATUS_DEADLINE).await?;
    fleet.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unplacing_a_cluster_leaves_the_merge_of_the_others() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, unplace()).await
}

/// `web` placed on a and b: KCP shows the sum; unplaced from b, KCP shows a's
/// status alone, though b still reports it.
async fn unplace() -> Result<()> {
    let fleet = Fleet::builder()
        .clusters(["a", "b"])
        .workspaces([TEAM_A])
        .start()
        .await?;
    fleet
        .place(TEAM_A, "shop", &deployment("web", 5), &["a", "b"])
        .await?;
    fleet
        .set_status::<Deployment>("a", TEAM_A, "shop", "web", status(2))
        .await?;
    fleet
        .set_status::<Deployment>("b", TEAM_A, "shop", "web", status(3))
        .await?;
    kcp_shows(&fleet, TEAM_A, "shop", "web", &status(5)).await?;

    fleet
        .set_placement::<Deployment>(TEAM_A, "shop", "web", &["a"])
        .await?;
    let mut checker = Convergence::deployments();
    checker.track(TEAM_A, "shop", "web", "a");
    checker.converged(&fleet, STATUS_DEADLINE).await?;
    ensure!(reporters(&fleet, TEAM_A, "web") == ["a"]);
    let metrics = fleet.hub_metrics().await?;
    ensure!(
        metrics.value(r#"uplink_hub_placements{cluster="b"}"#) == Some(0.0)
            && metrics.value(r#"uplink_hub_placements{cluster="a"}"#) == Some(1.0),
        "placements per cluster:\n{metrics}"
    );
    fleet.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_is_applied_once_its_placement_appears() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, late_placement()).await
}

/// The downstream object and its status exist before KCP's placement label
/// does (a race at start-up): the report is held, not written, and applied
/// as soon as the label appears.
async fn late_placement() -> Result<()> {
    let fleet = Fleet::builder()
        .clusters(["a"])
        .workspaces([TEAM_A])
        .hub_config(|c| c.placement_hold = Duration::from_secs(60))
        .start()
        .await?;
    fleet
        .create_upstream(TEAM_A, "shop", &deployment("web", 2), &[])
        .await?;
    fleet
        .create_downstream("a", TEAM_A, "shop", &deployment("web", 2))
        .await?;
    fleet
        .set_status::<Deployment>("a", TEAM_A, "shop", "web", status(2))
        .await?;
    eventually(STATUS_DEADLINE, "the hub to hold a's report", async || {
        let cluster = fleet.hub_cluster("a").await?;
        ensure!(cluster["held"] == 1, "{cluster}");
        Ok(())
    })
    .await?;
    // Held, so not written (a new Deployment's status is empty).
    let shown = fleet
        .upstream_status::<Deployment>(TEAM_A, "shop", "web")
        .await?;
    ensure!(
        shown.as_ref().is_none_or(|s| s == &json!({})),
        "a held report reached KCP before its placement: {shown:?}"
    );

    fleet
        .set_placement::<Deployment>(TEAM_A, "shop", "web", &["a"])
        .await?;
    let mut checker = Convergence::deployments();
    checker.track(TEAM_A, "shop", "web", "a");
    checker.converged(&fleet, STATUS_DEADLINE).await?;
    let metrics = fleet.hub_metrics().await?;
    ensure!(
        metrics.value("uplink_hub_held_reports") == Some(0.0)
            && hub_rejected(&metrics, "a", Rejected::NOT_PLACED) == 0.0,
        "released, not refused:\n{metrics}"
    );
    fleet.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_cannot_touch_another_clusters_record() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, forged_health()).await
}

const NODE: NodeResources<'static> = NodeResources {
    cpu: "4",
    memory: "8Gi",
    ephemeral_storage: "100Gi",
    pods: "110",
    extended: &[],
};

/// b, with its own genuine certificate, claims to be a (refused), then
/// sends heartbeats with a forged summary: a's SyncTarget, state, health and
/// capacity stay a's own.
async fn forged_health() -> Result<()> {
    let mut fleet = Fleet::builder()
        .clusters(["a", "b"])
        .synctargets("root", Duration::from_millis(500))
        .start()
        .await?;
    fleet.create_node("a", "node-1", NODE, NODE, true).await?;
    let healthy = async |fleet: &Fleet| -> Result<Value> {
        let synctarget = fleet.synctarget("root", "a").await?.unwrap_or_default();
        ensure!(
            ready_condition(&synctarget) == Some(("True".into(), "Ready".into()))
                && synctarget["status"]["capacity"]["cpu"] == "4000m",
            "a's SyncTarget: {}",
            synctarget["status"]
        );
        Ok(synctarget["status"]["capacity"].clone())
    };
    let capacity = eventually(
        STATUS_DEADLINE,
        "a's SyncTarget to show a's node",
        async || healthy(&fleet).await,
    )
    .await?;

    // Claiming a's name with b's certificate is refused at Hello.
    let mut forged = fleet.forged_agent("b").await?;
    ensure!(
        forged.hello("a").await.is_err(),
        "the hub welcomed b's certificate as cluster a"
    );

    // As itself, b reports a fantastic cluster of its own.
    fleet.stop_agent("b").await?;
    let mut forged = fleet.forged_agent("b").await?;
    forged.hello("b").await?;
    let huge = ResourceAmounts {
        cpu_millis: 1 << 40,
        memory_bytes: 1 << 50,
        ephemeral_storage_bytes: 1 << 50,
        pods: 1 << 20,
    };
    let summary = ClusterSummary {
        nodes: NodeCounts {
            total: 1000,
            ready: 0,
            cordoned: 0,
        },
        capacity: huge,
        allocatable: huge,
        ..ClusterSummary::default()
    };
    for _ in 0..3 {
        forged
            .send(&AgentFrame::Heartbeat(Heartbeat {
                // A clock in step with the hub's: one further off than the
                // hub's `max_clock_skew` has its report refused.
                agent_time_ms: now_ms(),
                summary: Some(summary.clone()),
            }))
            .await?;
        loop {
            if let HubFrame::HeartbeatAck(_) = forged.recv().await? {
                break;
            }
        }
    }
    eventually(
        STATUS_DEADLINE,
        "b's SyncTarget to show b's claim",
        async || {
            let synctarget = fleet.synctarget("root", "b").await?.unwrap_or_default();
            ensure!(
                synctarget["status"]["capacity"]["pods"] == json!((1u64 << 20).to_string()),
                "b's SyncTarget: {}",
                synctarget["status"]
            );
            Ok(())
        },
    )
    .await?;
    ensure!(healthy(&fleet).await? == capacity, "a's capacity changed");
    let a = fleet.hub_cluster("a").await?;
    ensure!(
        a["summary"]["nodes"]["total"] == 1 && a["state"] == "Ready",
        "a's record in the hub: {a}"
    );
    drop(forged);
    fleet.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_without_a_synctarget_may_report_nothing() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, no_synctarget()).await
}

/// c connects with a valid certificate but KCP has no SyncTarget for it:
/// its reports are refused (`no_synctarget`), nothing is written for it, no
/// SyncTarget is created, and the hub API says so.
async fn no_synctarget() -> Result<()> {
    let fleet = Fleet::builder()
        .clusters(["a", "c"])
        .workspaces([TEAM_A])
        .without_synctarget("c")
        .hub_config(|c| c.placement_hold = Duration::from_millis(500))
        .start()
        .await?;
    fleet
        .place(TEAM_A, "shop", &deployment("web", 3), &["a"])
        .await?;
    fleet
        .set_status::<Deployment>("a", TEAM_A, "shop", "web", status(3))
        .await?;
    kcp_shows(&fleet, TEAM_A, "shop", "web", &status(3)).await?;

    fleet
        .create_downstream("c", TEAM_A, "shop", &deployment("web", 3))
        .await?;
    fleet
        .set_status::<Deployment>("c", TEAM_A, "shop", "web", status(0))
        .await?;
    refused_on_both_sides(&fleet, "c", Rejected::NO_SYNCTARGET, 1.0).await?;

    let c = fleet.hub_cluster("c").await?;
    ensure!(
        c["connected"] == true
            && c["placement"]["syncTarget"].is_null()
            && c["placement"]["objects"] == 0,
        "the hub API should show c connected without a SyncTarget: {c}"
    );
    ensure!(
        fleet.synctarget("root", "c").await?.is_none(),
        "the hub created a SyncTarget for c"
    );
    let mut checker = Convergence::deployments();
    checker.track(TEAM_A, "shop", "web", "a");
    checker.converged(&fleet, STATUS_DEADLINE).await?;
    fleet.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_kind_or_version_of_a_placed_object_is_refused() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, wrong_kind()).await
}

/// `web` is placed on a and b. b (its agent replaced by a forged one)
/// reports it as a Job, as apps/v1beta1, and as a CronJob (a type the hub
/// does not sync): each refused, the merge unchanged. Its honest report is
/// merged.
async fn wrong_kind() -> Result<()> {
    let mut fleet = Fleet::builder()
        .clusters(["a", "b"])
        .workspaces([TEAM_A])
        .start()
        .await?;
    fleet
        .place(TEAM_A, "shop", &deployment("web", 5), &["a", "b"])
        .await?;
    fleet.stop_agent("b").await?;
    fleet
        .set_status::<Deployment>("a", TEAM_A, "shop", "web", status(5))
        .await?;
    kcp_shows(&fleet, TEAM_A, "shop", "web", &status(5)).await?;

    let mut b = fleet.forged_agent("b").await?;
    b.hello("b").await?;
    let web = deployment_ref(TEAM_A, "shop", "web");
    let as_job = ObjectRef {
        kind: "Job".into(),
        ..web.clone()
    };
    let old_version = ObjectRef {
        version: "v1beta1".into(),
        ..web.clone()
    };
    let cron_job = ObjectRef {
        group: "batch".into(),
        resource: "cronjobs".into(),
        kind: "CronJob".into(),
        ..web.clone()
    };
    let ack = b
        .report(vec![
            (as_job, upsert(&json!({"active": 9}))),
            (old_version, upsert(&status(0))),
            (cron_job, upsert(&json!({"active": []}))),
        ])
        .await?;
    let reasons: Vec<&str> = ack.rejected.iter().map(|r| r.reason.as_str()).collect();
    ensure!(
        reasons
            == [
                Rejected::KIND_MISMATCH,
                Rejected::KIND_MISMATCH,
                Rejected::RESOURCE_NOT_SYNCED
            ],
        "refusals in the Ack: {:?}",
        ack.rejected
    );
    ensure!(
        fleet.hub_store().len() == 1,
        "a forged kind became another object in the hub"
    );
    let shown = fleet
        .upstream_status::<Deployment>(TEAM_A, "shop", "web")
        .await?;
    ensure!(shown == Some(status(5)), "the merge changed: {shown:?}");

    // The same object as what it is: merged with a's report.
    let ack = b.report(vec![(web, upsert(&status(1)))]).await?;
    ensure!(ack.rejected.is_empty(), "{:?}", ack.rejected);
    kcp_shows(&fleet, TEAM_A, "shop", "web", &status(6)).await?;
    drop(b);
    fleet.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_naming_a_synctarget_are_refused() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, synctarget_reports()).await
}

/// b reports a's SyncTarget as Offline and Unhealthy: refused as a
/// reserved resource; a's SyncTarget stays Ready.
async fn synctarget_reports() -> Result<()> {
    let mut fleet = Fleet::builder()
        .clusters(["a", "b"])
        .synctargets("root", Duration::from_millis(500))
        .start()
        .await?;
    let ready = async |fleet: &Fleet| -> Result<()> {
        let synctarget = fleet.synctarget("root", "a").await?.unwrap_or_default();
        ensure!(
            ready_condition(&synctarget) == Some(("True".into(), "Ready".into())),
            "a's SyncTarget: {}",
            synctarget["status"]
        );
        Ok(())
    };
    eventually(STATUS_DEADLINE, "a's SyncTarget Ready", async || {
        ready(&fleet).await
    })
    .await?;
    fleet.stop_agent("b").await?;
    let mut b = fleet.forged_agent("b").await?;
    b.hello("b").await?;
    let synctarget = ObjectRef {
        group: "workload.kcp.io".into(),
        version: "v1alpha1".into(),
        resource: "synctargets".into(),
        kind: "SyncTarget".into(),
        workspace: "root".into(),
        namespace: None,
        name: "a".into(),
        uid: String::new(),
    };
    let offline = json!({"conditions": [
        {"type": "Ready", "status": "False", "reason": "Offline", "message": "forged"},
        {"type": "Healthy", "status": "False", "reason": "Unhealthy", "message": "forged"}
    ]});
    for _ in 0..5 {
        let ack = b
            .report(vec![(synctarget.clone(), upsert(&offline))])
            .await?;
        let reasons: Vec<&str> = ack.rejected.iter().map(|r| r.reason.as_str()).collect();
        if reasons != [Rejected::RESERVED_RESOURCE] {
            bail!(
                "expected a reserved_resource refusal, got {:?}",
                ack.rejected
            );
        }
        ready(&fleet).await.context("after b's forged report")?;
    }
    ensure!(
        fleet.hub_store().is_empty(),
        "the forged SyncTarget was stored"
    );
    drop(b);
    fleet.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_whose_synctarget_is_deleted_reports_nothing_until_it_is_back() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, synctarget_deleted()).await
}

/// The operator deletes a's SyncTarget: KCP places nothing on a any more,
/// so a's report leaves the merge (KCP keeps the last status, marked as
/// reported by no cluster) and a's next reports are refused. Registered
/// again, a's reports flow again.
async fn synctarget_deleted() -> Result<()> {
    let fleet = Fleet::builder()
        .clusters(["a"])
        .workspaces([TEAM_A])
        .hub_config(|c| c.placement_hold = Duration::from_millis(500))
        .start()
        .await?;
    fleet
        .place(TEAM_A, "shop", &deployment("web", 3), &["a"])
        .await?;
    fleet
        .set_status::<Deployment>("a", TEAM_A, "shop", "web", status(3))
        .await?;
    kcp_shows(&fleet, TEAM_A, "shop", "web", &status(3)).await?;

    fleet.delete_synctarget("a").await?;
    eventually(
        STATUS_DEADLINE,
        "web to be reported by no cluster",
        async || {
            let shown = fleet
                .upstream_status::<Deployment>(TEAM_A, "shop", "web")
                .await?
                .unwrap_or_default();
            ensure!(
                uplink_tests::fleet::convergence::marked_unreported(&shown)
                    && shown["readyReplicas"] == 3,
                "KCP shows {shown}"
            );
            Ok(())
        },
    )
    .await?;
    fleet
        .set_status::<Deployment>("a", TEAM_A, "shop", "web", status(1))
        .await?;
    refused_on_both_sides(&fleet, "a", Rejected::NO_SYNCTARGET, 1.0).await?;

    fleet.create_synctarget("a").await?;
    eventually(
        STATUS_DEADLINE,
        "a's placement to be watched again",
        async || {
            let a = fleet.hub_cluster("a").await?;
            ensure!(
                a["placement"]["complete"] == true && a["placement"]["objects"] == 1,
                "{a}"
            );
            Ok(())
        },
    )
    .await?;
    fleet
        .set_status::<Deployment>("a", TEAM_A, "shop", "web", status(2))
        .await?;
    let mut checker = Convergence::deployments();
    checker.track(TEAM_A, "shop", "web", "a");
    checker.converged(&fleet, STATUS_DEADLINE).await?;
    fleet.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_synced_type_kcp_does_not_serve_yet_holds_nothing_up() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, async {
        let fleet = Fleet::builder()
            .clusters(["a"])
            .workspaces([TEAM_A])
            .hub_config(|c| {
                c.resources.push(
                    "widgets.v1alpha1.example.com"
                        .parse()
                        .unwrap_or_else(|e| panic!("{e}")),
                );
            })
            .start()
            .await?;
        fleet
            .place(TEAM_A, "shop", &deployment("web", 3), &["a"])
            .await?;
        fleet
            .set_status::<Deployment>("a", TEAM_A, "shop", "web", status(3))
            .await?;
        let mut checker = Convergence::deployments();
        checker.track(TEAM_A, "shop", "web", "a");
        checker.converged(&fleet, STATUS_DEADLINE).await?;
        let a = fleet.hub_cluster("a").await?;
        ensure!(a["placement"]["complete"] == true, "{a}");
        fleet.shutdown().await
    })
    .await
}
