//! Processes die: the real `uplink-hub` and `uplink-agent` binaries are
//! killed with SIGKILL (no goodbye, no flush) in the middle of traffic, and
//! restarted. Whatever happened to the clusters meanwhile, changes and
//! deletions included, must end up in KCP: the convergence checker must find
//! no difference.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};
use uplink_tests::fleet::convergence::Convergence;

use uplink_tests::fleet::processes::{AgentProcess, HubProcess};
use uplink_tests::fleet::{Fleet, bounded, deployment, eventually, round_reached};

const TEAM: &str = "root:org:team-a";
const HEARTBEAT: Duration = Duration::from_millis(500);
const WITHIN: Duration = Duration::from_secs(60);
/// Scenarios with processes also build them on the first run.
const PROCESS_SCENARIO_TIMEOUT: Duration = Duration::from_secs(240);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_process_restarts_and_kcp_converges() -> Result<()> {
    bounded(PROCESS_SCENARIO_TIMEOUT, killed_agent()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_killed_during_thousands_of_changes_restarts_and_kcp_converges() -> Result<()> {
    bounded(PROCESS_SCENARIO_TIMEOUT, killed_hub()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletions_acked_but_not_written_survive_a_hub_kill() -> Result<()> {
    bounded(PROCESS_SCENARIO_TIMEOUT, acked_not_written()).await
}

/// The fleet's own hub (a library) with agent processes; agent a is killed,
/// its cluster changes and loses objects, and a new agent process snapshots.
async fn killed_agent() -> Result<()> {
    let fleet = Fleet::builder()
        .clusters(["a", "b"])
        .workspaces([TEAM])
        .heartbeat(HEARTBEAT)
        .without_agents()
        .start()
        .await?;
    let hub_url = fleet.hub_url();
    let mut agent_a = AgentProcess::start(&fleet, "a", &hub_url).await?;
    let _agent_b = AgentProcess::start(&fleet, "b", &hub_url).await?;

    let mut checker = Convergence::deployments();
    let ns = "apps";
    for i in 0..10 {
        let cluster = if i % 2 == 0 { "a" } else { "b" };
        let name = format!("web-{i}");
        fleet
            .place(TEAM, ns, &deployment(&name, 2), &[cluster])
            .await?;
        set_status(&fleet, cluster, ns, &name, 0).await?;
        checker.track(TEAM, ns, &name, cluster);
    }
    checker.converged(&fleet, WITHIN).await?;

    agent_a.process.kill().await?;
    // While a's agent is dead: its objects change, two are deleted, one is new.
    for i in (0..10).step_by(2) {
        set_status(&fleet, "a", ns, &format!("web-{i}"), 2).await?;
    }
    for name in ["web-0", "web-2"] {
        fleet
            .delete_downstream::<Deployment>("a", TEAM, ns, name)
            .await?;
    }
    fleet
        .place(TEAM, ns, &deployment("late", 1), &["a"])
        .await?;
    set_status(&fleet, "a", ns, "late", 1).await?;
    checker.track(TEAM, ns, "late", "a");

    agent_a.restart().await?;
    // A new process is a new session: it sends a full snapshot.
    let metrics = agent_a.process.metrics().await?;
    ensure!(
        metrics.counter("uplink_agent_sessions_total{mode=\"snapshot\"}") == 1.0,
        "the restarted agent should have snapshotted:\n{metrics}"
    );
    checker.converged(&fleet, WITHIN).await?;
    fleet.shutdown().await
}

const CLUSTERS: [&str; 3] = ["a", "b", "c"];
const OBJECTS_PER_CLUSTER: usize = 50;
const ROUNDS: u32 = 20;

/// A hub process with three agent processes; 3 × 50 objects change 20 times
/// each (3 000 status changes) while the hub is killed, some objects are
/// deleted while it is down, and it is restarted on the same port.
async fn killed_hub() -> Result<()> {
    let fleet = Fleet::builder()
        .clusters(CLUSTERS)
        .workspaces([TEAM])
        .heartbeat(HEARTBEAT)
        .without_agents()
        .start()
        .await?;
    let mut hub = HubProcess::start(&fleet, &[]).await?;
    let mut agents = Vec::new();
    for cluster in CLUSTERS {
        agents.push(AgentProcess::start(&fleet, cluster, &hub.url()).await?);
    }

    let mut checker = Convergence::deployments();
    let mut objects = Vec::new();
    for cluster in CLUSTERS {
        let ns = format!("ns-{cluster}");
        for i in 0..OBJECTS_PER_CLUSTER {
            let name = format!("app-{i}");
            objects.push((cluster, ns.clone(), name.clone()));
            checker.track(TEAM, &ns, &name, cluster);
        }
    }
    futures::stream::iter(objects.iter().map(Ok::<_, anyhow::Error>))
        .try_for_each_concurrent(8, |(cluster, ns, name)| async {
            fleet
                .place(TEAM, ns, &deployment(name, 3), &[*cluster])
                .await
                .map(drop)
        })
        .await?;

    // Every object changes ROUNDS times, all clusters at once.
    let round = Arc::new(AtomicU32::new(0));
    let changes = {
        let round = round.clone();
        let clients: Vec<_> =
            futures::future::try_join_all(CLUSTERS.map(|c| fleet.cluster(c))).await?;
        // Each object with its downstream namespace in its cluster.
        let objects: Vec<_> = objects
            .iter()
            .map(|(cluster, ns, name)| {
                let downstream_ns = fleet.downstream_namespace(cluster, TEAM, ns);
                (*cluster, downstream_ns, name.clone())
            })
            .collect();
        tokio::spawn(async move {
            for r in 1..=ROUNDS {
                futures::stream::iter(objects.iter())
                    .for_each_concurrent(16, |(cluster, downstream_ns, name)| {
                        let index = CLUSTERS.iter().position(|c| c == cluster).unwrap_or(0);
                        let client = clients[index].clone();
                        async move {
                            // Objects deleted meanwhile answer 404: that is expected.
                            let _ = patch_status(client, downstream_ns, name, r).await;
                        }
                    })
                    .await;
                round.store(r, Ordering::SeqCst);
            }
        })
    };

    wait_for_round(&round, ROUNDS / 4).await?;
    let metrics = hub.process.metrics().await?;
    let received = metrics.counter("uplink_hub_deltas_received_total{cluster=\"a\"}");
    ensure!(
        received > 0.0,
        "the hub should have received deltas before it is killed"
    );
    hub.process.kill().await?;

    // While the hub is down: a few objects are deleted in every cluster.
    for cluster in CLUSTERS {
        for i in 0..5 {
            fleet
                .delete_downstream::<Deployment>(
                    cluster,
                    TEAM,
                    &format!("ns-{cluster}"),
                    &format!("app-{i}"),
                )
                .await?;
        }
    }
    wait_for_round(&round, ROUNDS / 2).await?;
    hub.restart().await?;
    changes.await.context("the change driver panicked")?;

    // A restarted hub has a new epoch: every agent sends a snapshot again.
    for agent in &mut agents {
        agent.wait_connected().await?;
        let process = &agent.process;
        eventually(WITHIN, "the agent to snapshot to the new hub", async || {
            let snapshots = process
                .metrics()
                .await?
                .counter("uplink_agent_sessions_total{mode=\"snapshot\"}");
            if snapshots >= 2.0 {
                Ok(())
            } else {
                bail!("{snapshots} snapshots")
            }
        })
        .await?;
    }
    checker.converged(&fleet, WITHIN).await?;
    fleet.shutdown().await
}

async fn wait_for_round(round: &AtomicU32, at_least: u32) -> Result<()> {
    round_reached(round, at_least, WITHIN).await
}

/// The status of `round`. From the round the hub is killed in on,
/// `availableReplicas` is gone: a restarted hub must remove it from KCP,
/// although it never saw it.
fn status(round: u32) -> Value {
    if round <= ROUNDS / 4 {
        json!({"observedGeneration": 1, "replicas": 30, "updatedReplicas": 30, "readyReplicas": round, "availableReplicas": round})
    } else {
        json!({"observedGeneration": 1, "replicas": 30, "updatedReplicas": 30, "readyReplicas": round})
    }
}

async fn set_status(fleet: &Fleet, cluster: &str, ns: &str, name: &str, round: u32) -> Result<()> {
    fleet
        .set_status::<Deployment>(cluster, TEAM, ns, name, status(round))
        .await
}

/// One merge patch of the status (every field is rewritten each round).
async fn patch_status(client: kube::Client, ns: &str, name: &str, round: u32) -> Result<()> {
    Api::<Deployment>::namespaced(client, ns)
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": with_removals(status(round)) })),
        )
        .await?;
    Ok(())
}

/// `status` as a merge patch: fields it lacks are removed (`null`).
fn with_removals(mut status: Value) -> Value {
    if let Some(fields) = status.as_object_mut() {
        fields.entry("availableReplicas").or_insert(Value::Null);
    }
    status
}

/// The hub stores (and acks) deletions at once but writes KCP slowly; it is
/// killed before the writes land. The agent no longer holds those
/// deletions as pending, yet the restarted hub must still clear the objects
/// upstream: the agent's next snapshot names its recent deletions.
async fn acked_not_written() -> Result<()> {
    const OBJECTS: usize = 6;
    let fleet = Fleet::builder()
        .clusters(["a"])
        .workspaces([TEAM])
        .heartbeat(HEARTBEAT)
        .without_agents()
        .start()
        .await?;
    let mut hub = HubProcess::start(&fleet, &["--write-concurrency=1"]).await?;
    let agent = AgentProcess::start(&fleet, "a", &hub.url()).await?;
    let ns = "gone";
    let mut checker = Convergence::deployments();
    for i in 0..OBJECTS {
        let name = format!("app-{i}");
        fleet.place(TEAM, ns, &deployment(&name, 1), &["a"]).await?;
        set_status(&fleet, "a", ns, &name, 1).await?;
        checker.track(TEAM, ns, &name, "a");
    }
    checker.converged(&fleet, WITHIN).await?;

    // KCP turns slow; the deletions are stored and acked long before the
    // hub has written them.
    fleet
        .kcp_server()
        .faults()
        .set_latency(Duration::from_secs(2));
    for i in 0..OBJECTS {
        fleet
            .delete_downstream::<Deployment>("a", TEAM, ns, &format!("app-{i}"))
            .await?;
    }
    let agent_process = &agent.process;
    eventually(WITHIN, "the hub to ack every deletion", async || {
        let metrics = agent_process.metrics().await?;
        let pending = metrics.require("uplink_agent_outbox_entries")?;
        let objects = metrics.require("uplink_agent_outbox_objects")?;
        if pending == 0.0 && objects == 0.0 {
            Ok(())
        } else {
            bail!("{pending} entries pending, {objects} objects remembered")
        }
    })
    .await?;
    hub.process.kill().await?;
    fleet.kcp_server().faults().clear();
    let left = checker.differences(&fleet).await?;
    ensure!(
        !left.is_empty(),
        "every deletion reached KCP before the kill: the scenario tests nothing"
    );

    hub.restart().await?;
    checker.converged(&fleet, WITHIN).await?;
    fleet.shutdown().await
}
