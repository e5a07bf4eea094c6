//! Spec down the same tunnel, end to end: a Deployment created, changed,
//! scaled, unplaced or deleted in KCP reaches the clusters it is placed on
//! through the hub and the agents (both halves on, [`Fleet::spec_down`]),
//! and its status comes back merged. The clusters run the test bed's
//! stand-in Deployment controller (status follows spec after a completed
//! rollout; no pods), so "run" shows as `readyReplicas`.
//!
//! Every scenario ends with the two-way convergence check
//! ([`SpecDown::converged`]): the KCP object through the agent's
//! transformations equals each cluster's copy, and KCP's status is the
//! merge of the copies' statuses.

use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::{Value, json};
use uplink_tests::fleet::spec_down::{SpecDown, owned_deployments};
use uplink_tests::fleet::{Fleet, SCENARIO_TIMEOUT, bounded, deployment, eventually};

const WORKSPACE: &str = "root:org:team-a";
const NAMESPACE: &str = "shop";

/// How long the downward path may take in a scenario (KCP write → applied
/// → status back in KCP). Generous: the machine may be compiling.
const CONVERGE: Duration = Duration::from_secs(20);

async fn fleet(clusters: &[&str]) -> Result<Fleet> {
    Fleet::builder()
        .clusters(clusters.iter().copied())
        .workspaces([WORKSPACE])
        .spec_down()
        .start()
        .await
}

/// Merge-patches KCP Deployment `name` (as a user would with `kubectl patch`).
async fn patch_upstream(fleet: &Fleet, workspace: &str, name: &str, patch: Value) -> Result<()> {
    Api::<Deployment>::namespaced(fleet.kcp(workspace).await?, NAMESPACE)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("patching {name} in KCP"))?;
    Ok(())
}

/// KCP's `.status.<field>` of `name` becomes `want`.
async fn kcp_status_reaches(fleet: &Fleet, name: &str, field: &str, want: i64) -> Result<()> {
    eventually(
        CONVERGE,
        &format!("KCP's {name} status.{field} to be {want}"),
        async || {
            let status = fleet
                .upstream_status::<Deployment>(WORKSPACE, NAMESPACE, name)
                .await?
                .unwrap_or(Value::Null);
            ensure!(status[field] == want, "status is {status}");
            Ok(())
        },
    )
    .await
}

fn finalizers(object: &Value) -> Vec<String> {
    object["metadata"]["finalizers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f.as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_created_in_kcp_runs_in_its_cluster() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, async {
        let fleet = fleet(&["east"]).await?;
        fleet
            .place(WORKSPACE, NAMESPACE, &deployment("web", 2), &["east"])
            .await?;
        let mut check = SpecDown::new();
        check.track(WORKSPACE, NAMESPACE, "web", &["east"]);
        check.converged(&fleet, CONVERGE).await?;

        // The agent made the copy and the cluster's controller ran it.
        let down = fleet
            .downstream_deployment("east", WORKSPACE, NAMESPACE, "web")
            .await?
            .context("no copy in east")?;
        assert_eq!(down["spec"]["replicas"], 2);
        assert_eq!(down["status"]["readyReplicas"], 2);
        let up = fleet
            .upstream_deployment(WORKSPACE, NAMESPACE, "web")
            .await?
            .context("gone from KCP")?;
        assert_eq!(up["status"]["readyReplicas"], 2, "{up}");
        assert_eq!(finalizers(&up), vec![fleet.syncer_finalizer("east")]);
        assert!(
            down["metadata"]["finalizers"].is_null(),
            "the KCP finalizer went down: {down}"
        );
        let managers: Vec<&str> = down["metadata"]["managedFields"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["manager"].as_str())
            .collect();
        assert!(managers.contains(&"uplink"), "managers {managers:?}");
        fleet.shutdown().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_change_in_kcp_reaches_the_cluster() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, async {
        let fleet = fleet(&["east"]).await?;
        fleet
            .place(WORKSPACE, NAMESPACE, &deployment("web", 1), &["east"])
            .await?;
        let mut check = SpecDown::new();
        check.track(WORKSPACE, NAMESPACE, "web", &["east"]);
        check.converged(&fleet, CONVERGE).await?;

        let image = "registry.k8s.io/pause:3.9";
        patch_upstream(
            &fleet,
            WORKSPACE,
            "web",
            json!({
                "metadata": {
                    "labels": {"tier": "frontend"},
                    "annotations": {"team.example.com/owner": "alice", "kcp.io/secret-sauce": "x"},
                },
                "spec": {"template": {"spec": {"containers": [{"name": "app", "image": image}]}}},
            }),
        )
        .await?;
        fleet
            .downstream_deployment_where(
                "east",
                (WORKSPACE, NAMESPACE, "web"),
                CONVERGE,
                "the new image downstream",
                |down| {
                    let have = &down["spec"]["template"]["spec"]["containers"][0]["image"];
                    ensure!(*have == image, "image is {have}");
                    Ok(())
                },
            )
            .await?;
        check.converged(&fleet, CONVERGE).await?;
        let down = fleet
            .downstream_deployment("east", WORKSPACE, NAMESPACE, "web")
            .await?
            .context("no copy")?;
        assert_eq!(down["metadata"]["labels"]["tier"], "frontend");
        assert_eq!(
            down["metadata"]["annotations"]["team.example.com/owner"],
            "alice"
        );
        assert!(
            down["metadata"]["annotations"]["kcp.io/secret-sauce"].is_null(),
            "a kcp annotation went down: {down}"
        );
        fleet.shutdown().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_in_kcp_scales_downstream_and_readiness_comes_back() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, async {
        let fleet = fleet(&["east"]).await?;
        fleet
            .place(WORKSPACE, NAMESPACE, &deployment("web", 1), &["east"])
            .await?;
        kcp_status_reaches(&fleet, "web", "readyReplicas", 1).await?;

        patch_upstream(&fleet, WORKSPACE, "web", json!({"spec": {"replicas": 5}})).await?;
        fleet
            .downstream_deployment_where(
                "east",
                (WORKSPACE, NAMESPACE, "web"),
                CONVERGE,
                "5 replicas downstream",
                |down| {
                    ensure!(down["spec"]["replicas"] == 5, "spec {}", down["spec"]);
                    Ok(())
                },
            )
            .await?;
        kcp_status_reaches(&fleet, "web", "readyReplicas", 5).await?;

        patch_upstream(&fleet, WORKSPACE, "web", json!({"spec": {"replicas": 0}})).await?;
        // Zero counts are omitted (kube's controller omits them), so
        // convergence is the check here.
        let mut check = SpecDown::new();
        check.track(WORKSPACE, NAMESPACE, "web", &["east"]);
        check.converged(&fleet, CONVERGE).await?;
        let status = fleet
            .upstream_status::<Deployment>(WORKSPACE, NAMESPACE, "web")
            .await?
            .unwrap_or(Value::Null);
        assert!(
            status["readyReplicas"].as_i64().unwrap_or(0) == 0,
            "{status}"
        );
        fleet.shutdown().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unplacing_deletes_downstream_and_releases_the_finalizer() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, async {
        let fleet = fleet(&["east"]).await?;
        fleet
            .place(WORKSPACE, NAMESPACE, &deployment("web", 1), &["east"])
            .await?;
        let mut check = SpecDown::new();
        check.track(WORKSPACE, NAMESPACE, "web", &["east"]);
        check.converged(&fleet, CONVERGE).await?;

        fleet
            .set_placement::<Deployment>(WORKSPACE, NAMESPACE, "web", &[])
            .await?;
        check.track(WORKSPACE, NAMESPACE, "web", &[]);
        check.converged(&fleet, CONVERGE).await?;
        let finalizer = fleet.syncer_finalizer("east");
        eventually(CONVERGE, "the finalizer to be removed", async || {
            let up = fleet
                .upstream_deployment(WORKSPACE, NAMESPACE, "web")
                .await?
                .context("the unplaced object must stay in KCP")?;
            let have = finalizers(&up);
            ensure!(!have.contains(&finalizer), "finalizers {have:?}");
            Ok(())
        })
        .await?;
        assert!(owned_deployments(&fleet, "east").await?.is_empty());
        fleet.shutdown().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_in_kcp_deletes_downstream_then_upstream() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, async {
        let fleet = fleet(&["east"]).await?;
        fleet
            .place(WORKSPACE, NAMESPACE, &deployment("web", 1), &["east"])
            .await?;
        let mut check = SpecDown::new();
        check.track(WORKSPACE, NAMESPACE, "web", &["east"]);
        check.converged(&fleet, CONVERGE).await?;

        Api::<Deployment>::namespaced(fleet.kcp(WORKSPACE).await?, NAMESPACE)
            .delete("web", &DeleteParams::default())
            .await
            .context("deleting web in KCP")?;
        eventually(CONVERGE, "web gone from KCP", async || {
            match fleet
                .upstream_deployment(WORKSPACE, NAMESPACE, "web")
                .await?
            {
                None => Ok(()),
                Some(up) => bail!("still there, finalizers {:?}", finalizers(&up)),
            }
        })
        .await?;
        // The finalizer went only once the copy was gone.
        let down = fleet
            .downstream_deployment("east", WORKSPACE, NAMESPACE, "web")
            .await?;
        assert!(down.is_none(), "copy left behind: {down:?}");
        check.converged(&fleet, CONVERGE).await?;
        fleet.shutdown().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_placed_on_two_clusters_runs_in_both_with_merged_status() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, async {
        let fleet = fleet(&["east", "west"]).await?;
        fleet
            .place(
                WORKSPACE,
                NAMESPACE,
                &deployment("web", 3),
                &["east", "west"],
            )
            .await?;
        let mut check = SpecDown::new();
        check.track(WORKSPACE, NAMESPACE, "web", &["east", "west"]);
        check.converged(&fleet, CONVERGE).await?;
        kcp_status_reaches(&fleet, "web", "readyReplicas", 6).await?;
        let up = fleet
            .upstream_deployment(WORKSPACE, NAMESPACE, "web")
            .await?
            .context("gone from KCP")?;
        let mut have = finalizers(&up);
        have.sort();
        let mut want = vec![
            fleet.syncer_finalizer("east"),
            fleet.syncer_finalizer("west"),
        ];
        want.sort();
        assert_eq!(have, want);

        // Unplaced from one: it goes there, stays in the other, and the
        // status is the remaining cluster's.
        fleet
            .set_placement::<Deployment>(WORKSPACE, NAMESPACE, "web", &["west"])
            .await?;
        check.track(WORKSPACE, NAMESPACE, "web", &["west"]);
        check.converged(&fleet, CONVERGE).await?;
        kcp_status_reaches(&fleet, "web", "readyReplicas", 3).await?;
        fleet.shutdown().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_in_a_workspace_with_dashes_and_colons_round_trips() -> Result<()> {
    const ODD_WORKSPACE: &str = "root:my-org:team-a";
    const ODD_NAMESPACE: &str = "web-shop";
    bounded(SCENARIO_TIMEOUT, async {
        let fleet = Fleet::builder()
            .clusters(["east"])
            .workspaces([ODD_WORKSPACE, "root:my:org-team-a"])
            .spec_down()
            .start()
            .await?;
        fleet
            .place(
                ODD_WORKSPACE,
                ODD_NAMESPACE,
                &deployment("web", 2),
                &["east"],
            )
            .await?;
        // A look-alike in another workspace, which a lossy mapping would
        // confuse with the first.
        fleet
            .place(
                "root:my:org-team-a",
                ODD_NAMESPACE,
                &deployment("web", 4),
                &["east"],
            )
            .await?;
        let mut check = SpecDown::new();
        check.track(ODD_WORKSPACE, ODD_NAMESPACE, "web", &["east"]);
        check.track("root:my:org-team-a", ODD_NAMESPACE, "web", &["east"]);
        check.converged(&fleet, CONVERGE).await?;

        let namespace = fleet.downstream_namespace("east", ODD_WORKSPACE, ODD_NAMESPACE);
        assert!(namespace.starts_with("kcp-"), "{namespace}");
        assert_ne!(
            namespace,
            fleet.downstream_namespace("east", "root:my:org-team-a", ODD_NAMESPACE)
        );
        for (workspace, ready) in [(ODD_WORKSPACE, 2), ("root:my:org-team-a", 4)] {
            eventually(CONVERGE, &format!("{workspace}'s status"), async || {
                let status = fleet
                    .upstream_status::<Deployment>(workspace, ODD_NAMESPACE, "web")
                    .await?
                    .unwrap_or(Value::Null);
                ensure!(status["readyReplicas"] == ready, "status {status}");
                Ok(())
            })
            .await?;
        }
        fleet.shutdown().await
    })
    .await
}
