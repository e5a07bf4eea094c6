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

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use futures::TryStreamExt as _;
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::{Value, json};
use uplink_agent::config::DEFAULT_DOWNWARD_RESOURCES;
use uplink_tests::fleet::processes::{AgentProcess, HubProcess};
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

/// kcp takes an object off a cluster with its deletion annotation
/// (`deletion.internal.workload.kcp.io/<key>`), here while the hub is down.
/// The placement label stays meanwhile, so the restarted hub still sees the
/// object: it deletes the downstream copy, then removes its finalizer, the
/// label and the annotation in one write, as kcp's syncer does. Nothing is
/// left behind on either side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taken_off_the_kcp_way_while_the_hub_is_down_leaves_nothing_behind() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, async {
        let mut fleet = fleet(&["east"]).await?;
        fleet
            .place(WORKSPACE, NAMESPACE, &deployment("web", 1), &["east"])
            .await?;
        let mut check = SpecDown::new();
        check.track(WORKSPACE, NAMESPACE, "web", &["east"]);
        check.converged(&fleet, CONVERGE).await?;
        let finalizer = fleet.syncer_finalizer("east");
        let label = fleet.placement_label("east");
        let key = label
            .strip_prefix("state.workload.kcp.io/")
            .context("the placement label's prefix")?;
        let annotation = format!("deletion.internal.workload.kcp.io/{key}");
        eventually(CONVERGE, "the hub's finalizer on web", async || {
            let up = fleet
                .upstream_deployment(WORKSPACE, NAMESPACE, "web")
                .await?
                .context("web in KCP")?;
            ensure!(finalizers(&up).contains(&finalizer), "{up}");
            Ok(())
        })
        .await?;

        fleet.stop_hub().await?;
        let patch = json!({"metadata": {"annotations": {&annotation: "2026-12-06T23:00:00Z"}}});
        patch_upstream(&fleet, WORKSPACE, "web", patch).await?;
        fleet.start_hub().await?;

        check.track(WORKSPACE, NAMESPACE, "web", &[]);
        check.converged(&fleet, CONVERGE).await?;
        eventually(CONVERGE, "web let go of in KCP", async || {
            let up = fleet
                .upstream_deployment(WORKSPACE, NAMESPACE, "web")
                .await?
                .context("web must stay in KCP")?;
            let metadata = &up["metadata"];
            ensure!(
                !finalizers(&up).contains(&finalizer),
                "finalizer left: {metadata}"
            );
            ensure!(
                metadata["labels"][&label].is_null(),
                "label left: {metadata}"
            );
            ensure!(
                metadata["annotations"][&annotation].is_null(),
                "annotation left: {metadata}"
            );
            Ok(())
        })
        .await?;
        ensure!(owned_deployments(&fleet, "east").await?.is_empty());
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

/// Objects of the fault scenarios.
const MANY: usize = 50;

fn app(i: usize) -> String {
    format!("app-{i}")
}

/// Places `count` Deployments `app-<i>` on `clusters`, 8 at a time.
async fn place_many(fleet: &Fleet, count: usize, clusters: &[&str]) -> Result<()> {
    futures::stream::iter((0..count).map(Ok::<_, anyhow::Error>))
        .try_for_each_concurrent(8, |i| async move {
            fleet
                .place(WORKSPACE, NAMESPACE, &deployment(&app(i), 1), clusters)
                .await
                .map(drop)
        })
        .await
}

/// Waits until `counter` reaches `at_least`.
async fn wait_count(counter: &AtomicUsize, at_least: usize, what: &str) -> Result<()> {
    eventually(Duration::from_secs(60), what, async || {
        let now = counter.load(Ordering::SeqCst);
        ensure!(now >= at_least, "{now} so far");
        Ok(())
    })
    .await
}

/// The hub process is killed (SIGKILL) while 1,000 spec changes stream into
/// KCP, stays down while more changes land and some objects are unplaced
/// or deleted in KCP, and starts again: every cluster ends up with KCP's
/// last word on every object, nothing unplaced or deleted is left behind,
/// and the deleted objects leave KCP once their copies are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_killed_during_a_thousand_changes_restarts_and_everything_converges() -> Result<()> {
    const CHANGES: usize = 1_000;
    bounded(Duration::from_secs(240), async {
        let mut fleet = Fleet::builder()
            .clusters(["east"])
            .workspaces([WORKSPACE])
            .spec_down()
            .without_agents()
            .start()
            .await?;
        // The fleet's own hub makes way for a process that can be killed.
        fleet.stop_hub().await?;
        let mut hub = HubProcess::start(&fleet, &[]).await?;
        let mut agent = fleet.agent_config("east")?;
        agent.hub_url = hub.url();
        fleet.spawn_agent("east", agent).await?;
        fleet.wait_agent_connected("east").await?;

        place_many(&fleet, MANY, &["east"]).await?;
        let mut check = SpecDown::new();
        for i in 0..MANY {
            check.track(WORKSPACE, NAMESPACE, &app(i), &["east"]);
        }
        check.converged(&fleet, Duration::from_secs(60)).await?;

        // Change i: object i % MANY gets replicas and an annotation naming i.
        let done = Arc::new(AtomicUsize::new(0));
        let api = Api::<Deployment>::namespaced(fleet.kcp(WORKSPACE).await?, NAMESPACE);
        let changes = {
            let done = done.clone();
            let api = api.clone();
            tokio::spawn(async move {
                let mut lost = Vec::new();
                for chunk in (0..CHANGES).collect::<Vec<_>>().chunks(MANY) {
                    let results = futures::future::join_all(chunk.iter().map(|&i| {
                        let api = api.clone();
                        async move {
                            let patch = json!({
                                "metadata": {"annotations": {"example.com/change": i.to_string()}},
                                "spec": {"replicas": 1 + (i / MANY) % 4},
                            });
                            let result = api
                                .patch(
                                    &app(i % MANY),
                                    &PatchParams::default(),
                                    &Patch::Merge(&patch),
                                )
                                .await;
                            (i, result)
                        }
                    }))
                    .await;
                    for (i, result) in results {
                        match result {
                            Ok(_) => {}
                            // Deleted meanwhile: nothing to change.
                            Err(kube::Error::Api(s)) if s.code == 404 => {}
                            Err(e) => lost.push(format!("change {i}: {e}")),
                        }
                        done.fetch_add(1, Ordering::SeqCst);
                    }
                }
                lost
            })
        };

        wait_count(&done, CHANGES / 4, "a quarter of the changes").await?;
        hub.process.kill().await?;
        // While the hub is down: app-0..4 unplaced, app-5..9 deleted in KCP.
        for i in 0..5 {
            fleet
                .set_placement::<Deployment>(WORKSPACE, NAMESPACE, &app(i), &[])
                .await?;
            check.track(WORKSPACE, NAMESPACE, &app(i), &[]);
            api.delete(&app(i + 5), &DeleteParams::default())
                .await
                .with_context(|| format!("deleting {} in KCP", app(i + 5)))?;
        }
        wait_count(&done, CHANGES / 2, "half of the changes").await?;
        hub.restart().await?;
        let lost = changes.await.context("the change driver panicked")?;
        ensure!(lost.is_empty(), "KCP refused changes: {lost:?}");
        ensure!(done.load(Ordering::SeqCst) == CHANGES);

        check.converged(&fleet, Duration::from_secs(90)).await?;
        // KCP's last word: each remaining object has its last change.
        for i in 10..MANY {
            let last = CHANGES - MANY + i;
            let down = fleet
                .downstream_deployment("east", WORKSPACE, NAMESPACE, &app(i))
                .await?
                .with_context(|| format!("{} gone from east", app(i)))?;
            assert_eq!(
                down["metadata"]["annotations"]["example.com/change"],
                last.to_string(),
                "{}",
                app(i)
            );
        }
        for i in 5..10 {
            ensure!(
                fleet
                    .upstream_deployment(WORKSPACE, NAMESPACE, &app(i))
                    .await?
                    .is_none(),
                "{} deleted in KCP is still there",
                app(i)
            );
        }
        ensure!(
            owned_deployments(&fleet, "east").await?.len() == MANY - 10,
            "east holds copies of objects no longer placed on it"
        );
        fleet.stop_agent("east").await?;
        hub.process.terminate(Duration::from_secs(20)).await?;
        fleet.shutdown().await
    })
    .await
}

/// The agent process is killed (SIGKILL) while it applies 300 objects;
/// while it is away some are unplaced and some deleted in KCP. Started
/// again (a new session: the hub sends a snapshot), it applies the rest,
/// sweeps what is no longer placed, and KCP lets the deleted objects go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_while_applying_comes_back_without_leftovers() -> Result<()> {
    const COUNT: usize = 300;
    bounded(Duration::from_secs(240), async {
        let fleet = Fleet::builder()
            .clusters(["east"])
            .workspaces([WORKSPACE])
            .spec_down()
            .without_agents()
            .start()
            .await?;
        let downward = format!("--downward-resources={DEFAULT_DOWNWARD_RESOURCES}");
        let mut agent =
            AgentProcess::start_with(&fleet, "east", &fleet.hub_url(), &[downward.as_str()])
                .await?;
        let created = Arc::new(AtomicUsize::new(0));
        let placing = {
            let created = created.clone();
            let api = Api::<Deployment>::namespaced(fleet.kcp(WORKSPACE).await?, NAMESPACE);
            let label = fleet.placement_label("east");
            fleet
                .place(WORKSPACE, NAMESPACE, &deployment(&app(0), 1), &["east"])
                .await?;
            created.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                for i in 1..COUNT {
                    let mut object = deployment(&app(i), 1);
                    object
                        .metadata
                        .labels
                        .get_or_insert_default()
                        .insert(label.clone(), "Sync".into());
                    api.create(&kube::api::PostParams::default(), &object)
                        .await
                        .with_context(|| format!("creating {}", app(i)))?;
                    created.fetch_add(1, Ordering::SeqCst);
                }
                anyhow::Ok(())
            })
        };
        // Killed in the middle: some copies exist, not all.
        eventually(
            Duration::from_secs(60),
            "the agent to be applying",
            async || {
                let have = owned_deployments(&fleet, "east").await?.len();
                ensure!(have >= 20, "{have} copies");
                Ok(())
            },
        )
        .await?;
        agent.process.kill().await?;
        placing.await.context("the creator panicked")??;
        let applied = owned_deployments(&fleet, "east").await?.len();
        ensure!(
            applied < COUNT,
            "the agent applied all {applied} before it was killed; the scenario needs it mid-way"
        );

        // While it is away: 0..10 unplaced, 10..20 deleted in KCP (among
        // those it already applied), and 20 more changed.
        let api = Api::<Deployment>::namespaced(fleet.kcp(WORKSPACE).await?, NAMESPACE);
        let mut check = SpecDown::new();
        for i in 0..COUNT {
            check.track(WORKSPACE, NAMESPACE, &app(i), &["east"]);
        }
        for i in 0..10 {
            fleet
                .set_placement::<Deployment>(WORKSPACE, NAMESPACE, &app(i), &[])
                .await?;
            check.track(WORKSPACE, NAMESPACE, &app(i), &[]);
            api.delete(&app(i + 10), &DeleteParams::default()).await?;
        }
        for i in 20..40 {
            patch_upstream(&fleet, WORKSPACE, &app(i), json!({"spec": {"replicas": 2}})).await?;
        }

        agent.restart().await?;
        check.converged(&fleet, Duration::from_secs(120)).await?;
        ensure!(
            owned_deployments(&fleet, "east").await?.len() == COUNT - 20,
            "leftovers in east"
        );
        let metrics = agent.process.metrics().await?;
        ensure!(
            metrics.counter("uplink_agent_applies_total{result=\"deleted\"}") >= 10.0,
            "the restarted agent should have deleted the unplaced and the deleted:\n{}",
            metrics.text()
        );
        agent.process.terminate(Duration::from_secs(20)).await?;
        fleet.shutdown().await
    })
    .await
}

/// Someone edits the copy by hand (`kubectl edit`, another field manager):
/// the field Uplink applied (`spec.replicas`) is set back to KCP's value,
/// the annotation only the editor set stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_edit_downstream_is_set_back_and_other_fields_survive() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, async {
        let fleet = fleet(&["east"]).await?;
        fleet
            .place(WORKSPACE, NAMESPACE, &deployment("web", 2), &["east"])
            .await?;
        let mut check = SpecDown::new();
        check.track(WORKSPACE, NAMESPACE, "web", &["east"]);
        check.converged(&fleet, CONVERGE).await?;

        let namespace = fleet.downstream_namespace("east", WORKSPACE, NAMESPACE);
        let api = Api::<Deployment>::namespaced(fleet.cluster("east").await?, &namespace);
        let edit = json!({
            "metadata": {"annotations": {"example.com/by-hand": "yes"}},
            "spec": {"replicas": 7},
        });
        api.patch(
            "web",
            &PatchParams {
                field_manager: Some("kubectl-edit".into()),
                ..PatchParams::default()
            },
            &Patch::Merge(&edit),
        )
        .await
        .context("editing the copy by hand")?;

        fleet
            .downstream_deployment_where(
                "east",
                (WORKSPACE, NAMESPACE, "web"),
                CONVERGE,
                "replicas set back to KCP's 2",
                |down| {
                    ensure!(
                        down["spec"]["replicas"] == 2,
                        "replicas {}",
                        down["spec"]["replicas"]
                    );
                    Ok(())
                },
            )
            .await?;
        let down = fleet
            .downstream_deployment("east", WORKSPACE, NAMESPACE, "web")
            .await?
            .context("no copy")?;
        assert_eq!(
            down["metadata"]["annotations"]["example.com/by-hand"], "yes",
            "the editor's own field must survive: {down}"
        );
        check.converged(&fleet, CONVERGE).await?;
        let metrics = fleet.agent_metrics("east").await?;
        ensure!(
            metrics.counter("uplink_agent_applies_total{result=\"drift\"}") >= 1.0,
            "the correction should be counted:\n{}",
            metrics.text()
        );
        fleet.shutdown().await
    })
    .await
}
