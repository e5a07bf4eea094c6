//! Aggregation across clusters, end to end: one Deployment placed on several
//! clusters, each reporting its own status; the hub merges them into the one
//! status KCP shows and reports where the clusters disagree, in the object's
//! `StatusConflict` condition, the hub API and the metrics.

use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use serde_json::{Value, json};
use uplink_hub::aggregate::MergePolicy;
use uplink_tests::fleet::{
    Fleet, SCENARIO_TIMEOUT, STATUS_DEADLINE, bounded, deployment, eventually,
};

const WORKSPACE: &str = "root:org:team-a";
const NAMESPACE: &str = "shop";

fn rolled_out(ready: i64, generation: i64) -> Value {
    json!({
        "observedGeneration": generation, "replicas": ready, "updatedReplicas": ready,
        "readyReplicas": ready, "availableReplicas": ready,
        "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"}],
    })
}

/// KCP's status of `name`, once `check` accepts it.
async fn kcp_status(
    fleet: &Fleet,
    name: &str,
    what: &str,
    check: impl Fn(&Value) -> Result<()>,
) -> Result<Value> {
    eventually(STATUS_DEADLINE, what, async || {
        let status = fleet
            .upstream_status::<Deployment>(WORKSPACE, NAMESPACE, name)
            .await?
            .unwrap_or(Value::Null);
        check(&status).with_context(|| format!("KCP status {status}"))?;
        Ok(status)
    })
    .await
}

/// The `StatusConflict` condition of `status`, if any.
fn conflict_condition(status: &Value) -> Option<&Value> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "StatusConflict")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_replicas_of_three_clusters_add_up_in_kcp() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, async {
        let fleet = Fleet::builder()
            .clusters(["east", "north", "west"])
            .workspaces([WORKSPACE])
            .start()
            .await?;
        fleet
            .place(
                WORKSPACE,
                NAMESPACE,
                &deployment("web", 10),
                &["east", "north", "west"],
            )
            .await?;
        for (cluster, ready) in [("east", 2), ("north", 3), ("west", 5)] {
            fleet
                .set_status::<Deployment>(
                    cluster,
                    WORKSPACE,
                    NAMESPACE,
                    "web",
                    rolled_out(ready, 1),
                )
                .await?;
        }
        let status = kcp_status(&fleet, "web", "10 ready replicas in KCP", |s| {
            ensure!(
                s["readyReplicas"] == 10,
                "readyReplicas is {}",
                s["readyReplicas"]
            );
            ensure!(
                s["conditions"][0]["status"] == "True",
                "not Available in all clusters yet"
            );
            Ok(())
        })
        .await?;
        assert_eq!(status["replicas"], 10);
        assert_eq!(status["availableReplicas"], 10);
        assert_eq!(status["observedGeneration"], 1);
        assert_eq!(conflict_condition(&status), None, "the clusters agree");

        // The hub API shows the breakdown.
        let object = fleet
            .hub_api(&format!(
                "/api/v1/objects/{WORKSPACE}/apps/deployments/{NAMESPACE}/web"
            ))
            .await?;
        assert_eq!(object["merged_status"]["readyReplicas"], 10);
        for (cluster, ready) in [("east", 2), ("north", 3), ("west", 5)] {
            assert_eq!(
                object["clusters"][cluster]["status"]["readyReplicas"],
                ready
            );
            assert_eq!(object["clusters"][cluster]["state"], "Ready");
            ensure!(
                object["clusters"][cluster]["age_ms"].is_i64(),
                "no age: {object}"
            );
        }
        fleet.shutdown().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generation_rolled_out_to_two_of_three_clusters_names_the_third() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, async {
        let fleet = Fleet::builder()
            .clusters(["east", "north", "west"])
            .workspaces([WORKSPACE])
            .start()
            .await?;
        fleet
            .place(
                WORKSPACE,
                NAMESPACE,
                &deployment("web", 3),
                &["east", "north", "west"],
            )
            .await?;
        for (cluster, generation) in [("east", 2), ("north", 1), ("west", 2)] {
            fleet
                .set_status::<Deployment>(
                    cluster,
                    WORKSPACE,
                    NAMESPACE,
                    "web",
                    rolled_out(1, generation),
                )
                .await?;
        }
        let status = kcp_status(
            &fleet,
            "web",
            "a StatusConflict condition naming north",
            |s| {
                let Some(condition) = conflict_condition(s) else {
                    bail!("no StatusConflict condition");
                };
                let message = condition["message"].as_str().unwrap_or_default();
                ensure!(message.contains("GenerationSkew"), "message {message}");
                ensure!(
                    message.contains("north behind generation 2"),
                    "message {message}"
                );
                // east and north alone already make that conflict: wait
                // for west's report too before judging the merge.
                ensure!(
                    s["readyReplicas"] == 3,
                    "readyReplicas {} (not every cluster merged yet)",
                    s["readyReplicas"]
                );
                Ok(())
            },
        )
        .await?;
        let condition = conflict_condition(&status).cloned().unwrap_or_default();
        assert_eq!(condition["status"], "True");
        assert_eq!(
            condition["reason"], "Resolved",
            "Newest resolves generation skew"
        );
        assert_eq!(status["observedGeneration"], 1, "the lowest generation");
        assert_eq!(status["readyReplicas"], 3);

        let metrics = fleet.hub_metrics().await?;
        assert_eq!(
            metrics.require(r#"uplink_hub_conflicts{type="GenerationSkew",strategy="Newest"}"#)?,
            1.0
        );
        let conflicts = fleet.hub_list("/api/v1/conflicts").await?;
        assert_eq!(conflicts[0]["object"]["name"], "web");
        assert_eq!(conflicts[0]["conflicts"][0]["type"], "GenerationSkew");
        assert_eq!(conflicts[0]["conflicts"][0]["clusters"], json!(["north"]));

        // north catches up: the conflict ends, the condition goes away, and
        // the API keeps it in the history.
        fleet
            .set_status::<Deployment>("north", WORKSPACE, NAMESPACE, "web", rolled_out(1, 2))
            .await?;
        kcp_status(&fleet, "web", "the conflict to end", |s| {
            ensure!(conflict_condition(s).is_none(), "still in conflict");
            ensure!(
                s["observedGeneration"] == 2,
                "observedGeneration {}",
                s["observedGeneration"]
            );
            Ok(())
        })
        .await?;
        let object = fleet
            .hub_api(&format!(
                "/api/v1/objects/{WORKSPACE}/apps/deployments/{NAMESPACE}/web"
            ))
            .await?;
        assert_eq!(object["history"][0]["type"], "GenerationSkew");
        assert_eq!(object["conflicts"], json!([]));
        let metrics = fleet.hub_metrics().await?;
        assert_eq!(
            metrics.require(r#"uplink_hub_conflicts{type="GenerationSkew",strategy="Newest"}"#)?,
            0.0
        );
        assert_eq!(
            metrics
                .counter(r#"uplink_hub_conflicts_total{type="GenerationSkew",strategy="Newest"}"#),
            1.0
        );
        fleet.shutdown().await
    })
    .await
}

/// A policy where every Deployment field goes to `strategy` (no kind merge),
/// so a disagreement on `readyReplicas` is a dispute.
fn whole_fields(strategy: &str) -> Result<MergePolicy> {
    Ok(MergePolicy::parse(&format!(
        "resources:\n  - resource: deployments.apps\n    strategy: {strategy}\n    kindMerge: false\n"
    ))?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newest_picks_the_cluster_that_really_changed_last_despite_a_clock_an_hour_ahead()
-> Result<()> {
    bounded(SCENARIO_TIMEOUT, async {
        let mut fleet = Fleet::builder()
            .clusters(["ahead", "true-time"])
            .workspaces([WORKSPACE])
            .merge_policy(whole_fields("Newest")?)
            .without_agents()
            .start()
            .await?;
        let ahead = uplink_agent::AgentConfig {
            // One hour ahead (parsed, so this crate needs no jiff of its own).
            clock_offset: "1h".parse()?,
            ..fleet.agent_config("ahead")?
        };
        fleet.spawn_agent("ahead", ahead).await?;
        fleet.wait_agent_connected("ahead").await?;
        fleet.start_agent("true-time").await?;
        eventually(
            STATUS_DEADLINE,
            "the hub to estimate ahead's clock skew",
            async || {
                let skew = fleet.hub_health().clock_skew_ms("ahead");
                match skew {
                    Some(ms) if (ms + 3_600_000).abs() < 60_000 => Ok(()),
                    other => bail!("skew estimate {other:?}"),
                }
            },
        )
        .await?;

        fleet
            .place(
                WORKSPACE,
                NAMESPACE,
                &deployment("web", 1),
                &["ahead", "true-time"],
            )
            .await?;
        // ahead changes first, true-time an instant later. On raw agent
        // clocks ahead's report is an hour newer and would win for good.
        fleet
            .set_status::<Deployment>(
                "ahead",
                WORKSPACE,
                NAMESPACE,
                "web",
                json!({"readyReplicas": 1}),
            )
            .await?;
        kcp_status(&fleet, "web", "ahead's report in KCP", |s| {
            ensure!(
                s["readyReplicas"] == 1,
                "readyReplicas {}",
                s["readyReplicas"]
            );
            Ok(())
        })
        .await?;
        fleet
            .set_status::<Deployment>(
                "true-time",
                WORKSPACE,
                NAMESPACE,
                "web",
                json!({"readyReplicas": 7}),
            )
            .await?;
        let status = kcp_status(&fleet, "web", "true-time's later report to win", |s| {
            ensure!(
                s["readyReplicas"] == 7,
                "readyReplicas {}",
                s["readyReplicas"]
            );
            Ok(())
        })
        .await?;
        let condition = conflict_condition(&status).cloned().unwrap_or_default();
        assert_eq!(condition["reason"], "Resolved");
        fleet.shutdown().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_keeps_a_disagreement_open_and_writes_nothing_disputed() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, async {
        let fleet = Fleet::builder()
            .clusters(["east", "west"])
            .workspaces([WORKSPACE])
            .merge_policy(whole_fields("Manual")?)
            .start()
            .await?;
        fleet
            .place(
                WORKSPACE,
                NAMESPACE,
                &deployment("web", 2),
                &["east", "west"],
            )
            .await?;
        for cluster in ["east", "west"] {
            fleet
                .set_status::<Deployment>(
                    cluster,
                    WORKSPACE,
                    NAMESPACE,
                    "web",
                    json!({"replicas": 2, "readyReplicas": 2}),
                )
                .await?;
        }
        kcp_status(&fleet, "web", "the agreed status", |s| {
            ensure!(s["readyReplicas"] == 2 && s["replicas"] == 2, "status {s}");
            Ok(())
        })
        .await?;

        // Both scale to 3; west then reports 1 ready where east reports 2:
        // readyReplicas is disputed and stays as KCP has it, the agreed
        // replicas still follow. (`set_status` clears a status before
        // setting it, and a cluster without a status has no opinion: east
        // changes first so that no moment in between has west alone
        // reporting readyReplicas 1.)
        fleet
            .set_status::<Deployment>(
                "east",
                WORKSPACE,
                NAMESPACE,
                "web",
                json!({"replicas": 3, "readyReplicas": 2}),
            )
            .await?;
        fleet
            .set_status::<Deployment>(
                "west",
                WORKSPACE,
                NAMESPACE,
                "web",
                json!({"replicas": 3, "readyReplicas": 1}),
            )
            .await?;
        let status = kcp_status(&fleet, "web", "an unresolved StatusConflict", |s| {
            let Some(condition) = conflict_condition(s) else {
                bail!("no StatusConflict condition");
            };
            ensure!(condition["reason"] == "Unresolved", "condition {condition}");
            ensure!(s["replicas"] == 3, "replicas {}", s["replicas"]);
            Ok(())
        })
        .await?;
        assert_eq!(
            status["readyReplicas"], 2,
            "the disputed field was not written"
        );
        let message = conflict_condition(&status)
            .and_then(|c| c["message"].as_str())
            .unwrap_or_default()
            .to_owned();
        assert!(
            message.contains("east report 2") && message.contains("west report 1"),
            "{message}"
        );

        let object = fleet
            .hub_api(&format!(
                "/api/v1/objects/{WORKSPACE}/apps/deployments/{NAMESPACE}/web"
            ))
            .await?;
        assert_eq!(object["strategy"], "Manual");
        assert_eq!(object["conflicts"][0]["type"], "FieldDisagreement");
        assert_eq!(object["conflicts"][0]["subject"], "status.readyReplicas");
        assert_eq!(object["conflicts"][0]["resolved_by"], Value::Null);
        assert_eq!(object["conflicts"][0]["clusters"], json!(["east", "west"]));
        let metrics = fleet.hub_metrics().await?;
        assert_eq!(
            metrics
                .require(r#"uplink_hub_conflicts{type="FieldDisagreement",strategy="Manual"}"#)?,
            1.0
        );
        // Still not written a while later: nothing else is pending.
        tokio::time::timeout(Duration::from_secs(1), async {
            loop {
                let s = fleet
                    .upstream_status::<Deployment>(WORKSPACE, NAMESPACE, "web")
                    .await?;
                ensure!(
                    s.is_some_and(|s| s["readyReplicas"] == 2),
                    "readyReplicas was written"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            #[allow(unreachable_code)]
            Ok::<(), anyhow::Error>(())
        })
        .await
        .unwrap_or(Ok(()))?;
        fleet.shutdown().await
    })
    .await
}
