//! The hub as three replicas (issue 20): real `uplink-hub` processes that
//! share the workspaces' 16 shards through `coordination.k8s.io/v1` Leases
//! on an API server of their own, and real agent processes that keep a
//! session with every replica. A replica is killed, cut from its Leases, or
//! joins late; KCP must end up showing every change (the convergence
//! checker finds no difference), and no shard ever has two writers at once
//! (the KCP test bed's record of status writes, by the writer's
//! User-Agent).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};
use uplink_protocol::shard_of;
use uplink_tests::fleet::convergence::Convergence;

use uplink_tests::fleet::processes::AgentProcess;
use uplink_tests::fleet::replicas::{HubReplicas, ReplicaOptions, workspaces_per_shard};
use uplink_tests::fleet::writers::assert_one_writer_per_shard;
use uplink_tests::fleet::{Fleet, bounded, deployment, eventually, round_reached};

const CLUSTERS: [&str; 3] = ["a", "b", "c"];
const SHARDS: u16 = 16;
const HEARTBEAT: Duration = Duration::from_millis(500);
const WITHIN: Duration = Duration::from_secs(60);
/// Scenarios with processes also build them on the first run.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_busiest_replica_killed_during_thousands_of_changes_hands_its_shards_over_and_kcp_converges()
-> Result<()> {
    bounded(SCENARIO_TIMEOUT, busiest_killed()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_from_its_leases_never_writes_beside_the_new_holder() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, partitioned()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_joining_takes_its_share_and_writes_it() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, joining()).await
}

/// A fleet of three clusters, one workspace per shard, `per_workspace`
/// objects per workspace and cluster, placed, with agents connected to
/// every replica slot; the checker tracks every object.
struct Scene {
    fleet: Fleet,
    replicas: HubReplicas,
    _agents: Vec<AgentProcess>,
    objects: Vec<SceneObject>,
    checker: Convergence,
}

#[derive(Clone)]
struct SceneObject {
    cluster: &'static str,
    workspace: String,
    name: String,
}

const NAMESPACE: &str = "apps";

impl Scene {
    async fn start(options: ReplicaOptions, per_workspace: usize) -> Result<Scene> {
        let workspaces = workspaces_per_shard("root:org:ws", SHARDS, 1);
        let mut fleet = Fleet::builder()
            .clusters(CLUSTERS)
            .workspaces(workspaces.clone())
            .heartbeat(HEARTBEAT)
            .without_agents()
            .start()
            .await?;
        let replicas = HubReplicas::start(&mut fleet, options).await?;
        let mut agents = Vec::new();
        for cluster in CLUSTERS {
            agents.push(AgentProcess::start(&fleet, cluster, &replicas.hub_urls()).await?);
        }
        for agent in &mut agents {
            agent.wait_sessions(replicas.started().len()).await?;
        }
        let mut checker = Convergence::deployments();
        let mut objects = Vec::new();
        for workspace in &workspaces {
            for cluster in CLUSTERS {
                for i in 0..per_workspace {
                    let name = format!("{cluster}-{i}");
                    checker.track(workspace, NAMESPACE, &name, cluster);
                    objects.push(SceneObject {
                        cluster,
                        workspace: workspace.clone(),
                        name,
                    });
                }
            }
        }
        futures::stream::iter(objects.iter().map(Ok::<_, anyhow::Error>))
            .try_for_each_concurrent(8, |object| {
                let fleet = &fleet;
                async move {
                    fleet
                        .place(
                            &object.workspace,
                            NAMESPACE,
                            &deployment(&object.name, 3),
                            &[object.cluster],
                        )
                        .await
                        .map(drop)
                }
            })
            .await?;
        Ok(Scene {
            fleet,
            replicas,
            _agents: agents,
            objects,
            checker,
        })
    }

    /// Changes every object's status `rounds` times (rounds `first..`), all
    /// clusters at once, in a task; `round` says how far it got.
    async fn drive_changes(
        &self,
        first: u32,
        rounds: u32,
        round: Arc<AtomicU32>,
    ) -> Result<tokio::task::JoinHandle<()>> {
        let clients: Vec<_> =
            futures::future::try_join_all(CLUSTERS.map(|c| self.fleet.cluster(c))).await?;
        let objects: Vec<(usize, String, String)> = self
            .objects
            .iter()
            .map(|o| {
                let index = CLUSTERS.iter().position(|c| *c == o.cluster).unwrap_or(0);
                let downstream =
                    self.fleet
                        .downstream_namespace(o.cluster, &o.workspace, NAMESPACE);
                (index, downstream, o.name.clone())
            })
            .collect();
        Ok(tokio::spawn(async move {
            for r in first..first + rounds {
                futures::stream::iter(objects.iter())
                    .for_each_concurrent(16, |(index, downstream, name)| {
                        let client = clients[*index].clone();
                        async move {
                            let _ = patch_status(client, downstream, name, r).await;
                        }
                    })
                    .await;
                round.store(r, Ordering::SeqCst);
            }
        }))
    }

    async fn shutdown(self) -> Result<()> {
        self.replicas.shutdown().await?;
        self.fleet.shutdown().await
    }
}

/// Three replicas; 16 workspaces × 3 clusters × 4 objects change 12 times
/// (2,304 status changes); the replica holding most shards is SIGKILLed a
/// quarter of the way in. Its shards move to the other two once their
/// Leases expire, each new holder asks the agents for a snapshot of what it
/// took, and KCP converges.
async fn busiest_killed() -> Result<()> {
    const ROUNDS: u32 = 12;
    let mut scene = Scene::start(ReplicaOptions::default(), 4).await?;
    let before = scene.replicas.wait_balanced(WITHIN).await?;

    let round = Arc::new(AtomicU32::new(0));
    let changes = scene.drive_changes(1, ROUNDS, round.clone()).await?;
    wait_for_round(&round, ROUNDS / 4).await?;
    let busiest = scene.replicas.leases().busiest().await?;
    let held_by_busiest = before.get(&busiest).map_or(0, Vec::len);
    ensure!(
        held_by_busiest >= usize::from(SHARDS) / 3,
        "{busiest} was to hold the most shards: {before:?}"
    );
    scene.replicas.kill(&busiest).await?;

    // The two left take every shard, 8 each.
    let after = scene.replicas.wait_balanced(WITHIN).await?;
    ensure!(
        !after.contains_key(&busiest) && after.values().map(Vec::len).sum::<usize>() == 16,
        "the survivors should hold every shard: {after:?}"
    );
    changes.await.context("the change driver panicked")?;
    scene.checker.converged(&scene.fleet, WITHIN).await?;

    // Each survivor took some of the killed replica's shards and asked for
    // their snapshot.
    for (identity, shards) in &after {
        let metrics = scene
            .replicas
            .replica(identity)?
            .hub
            .process
            .metrics()
            .await?;
        let acquired = metrics.counter("uplink_hub_shard_transitions_total{change=\"acquired\"}");
        ensure!(
            acquired as usize > before.get(identity).map_or(0, Vec::len),
            "{identity} (holding {shards:?}) should have acquired shards after the kill:\n{metrics}"
        );
    }
    scene.shutdown().await
}

/// The replica holding the SyncTargets' shard is cut from its Leases
/// (connections stay open, nothing passes) while statuses keep changing.
/// Heartbeats reach every replica, and SyncTargets are written every
/// second here, so a replica that kept writing after its fence closed
/// would show up in KCP's record beside the new holder. It stops writing
/// before the others may take its shards; the record shows every shard
/// written by one replica at a time, and the cut replica's shards written
/// by their new holders. Healed, it takes its share again and KCP
/// converges.
async fn partitioned() -> Result<()> {
    const ROUNDS: u32 = 16;
    let options = ReplicaOptions {
        extra: vec!["--synctarget-heartbeat-period=1s".to_owned()],
        ..ReplicaOptions::default()
    };
    let scene = Scene::start(options, 2).await?;
    let before = scene.replicas.wait_balanced(WITHIN).await?;

    let round = Arc::new(AtomicU32::new(0));
    let changes = scene.drive_changes(1, ROUNDS, round.clone()).await?;
    wait_for_round(&round, 2).await?;
    let synctargets = shard_of(scene.fleet.synctarget_workspace(), SHARDS).0;
    let cut = before
        .iter()
        .find(|(_, shards)| shards.contains(&synctargets))
        .map(|(identity, _)| identity.clone())
        .with_context(|| format!("nobody holds shard {synctargets}: {before:?}"))?;
    let cut_shards = before.get(&cut).cloned().unwrap_or_default();
    let from = Instant::now();
    scene.replicas.partition(&cut)?;

    // The others hold every shard; the cut one still runs, holding none.
    let leases = scene.replicas.leases();
    eventually(WITHIN, "the others to hold every shard", async || {
        let holders = leases.holders().await?;
        let unheld: Vec<u16> = holders
            .iter()
            .filter(|(_, holder)| holder.as_deref().is_none_or(|h| h == cut))
            .map(|(shard, _)| *shard)
            .collect();
        ensure!(
            unheld.is_empty(),
            "shards not held by the others: {unheld:?}"
        );
        Ok(())
    })
    .await?;
    eventually(
        WITHIN,
        "the cut replica to say it holds nothing",
        async || {
            let held = scene.replicas.replica(&cut)?.shards_held().await?;
            ensure!(held == 0, "{cut} says it holds {held} shards");
            Ok(())
        },
    )
    .await?;
    // Changes keep coming while the partition lasts.
    let at_cut = round.load(Ordering::SeqCst);
    wait_for_round(&round, (at_cut + 2).min(ROUNDS)).await?;
    let to = Instant::now();
    scene.replicas.heal(&cut)?;

    let writers = assert_one_writer_per_shard(scene.fleet.kcp_server(), from..to, SHARDS)?;
    ensure!(
        writers.writers(synctargets).iter().any(|w| *w != cut),
        "the SyncTargets' shard {synctargets} should have been written by its new holder: {:?}",
        writers.runs().get(&synctargets)
    );
    let moved: Vec<u16> = cut_shards
        .iter()
        .copied()
        .filter(|shard| writers.writers(*shard).iter().any(|w| *w != cut))
        .collect();
    ensure!(
        !moved.is_empty(),
        "the cut replica's shards {cut_shards:?} should have been written by their new holders: {:?}",
        writers.runs()
    );

    changes.await.context("the change driver panicked")?;
    scene.replicas.wait_balanced(WITHIN).await?;
    scene.checker.converged(&scene.fleet, WITHIN).await?;
    scene.shutdown().await
}

/// Two replicas hold 8 shards each; a third joins and takes its share
/// (6/5/5 between them) once the others release their excess, and the
/// statuses of its shards changed afterwards reach KCP through it.
async fn joining() -> Result<()> {
    let scene = Scene::start(
        ReplicaOptions {
            start: 2,
            ..ReplicaOptions::default()
        },
        2,
    )
    .await?;
    let before = scene.replicas.wait_balanced(WITHIN).await?;
    ensure!(before.len() == 2, "two replicas first: {before:?}");
    let round = Arc::new(AtomicU32::new(0));
    scene
        .drive_changes(1, 1, round.clone())
        .await?
        .await
        .context("the change driver panicked")?;
    scene.checker.converged(&scene.fleet, WITHIN).await?;

    let mut scene = scene;
    let joiner = scene
        .replicas
        .replicas()
        .iter()
        .map(|r| r.identity.clone())
        .find(|identity| !before.contains_key(identity))
        .context("a replica slot left to start")?;
    scene.replicas.start_replica(&joiner).await?;
    let after = scene.replicas.wait_balanced(WITHIN).await?;
    let share = after.get(&joiner).map_or(0, Vec::len);
    ensure!(share >= 5, "{joiner} should hold 5 or 6 shards: {after:?}");

    let from = Instant::now();
    scene
        .drive_changes(2, 2, round.clone())
        .await?
        .await
        .context("the change driver panicked")?;
    scene.checker.converged(&scene.fleet, WITHIN).await?;
    let writers = assert_one_writer_per_shard(scene.fleet.kcp_server(), from.., SHARDS)?;
    let written: Vec<u16> = after
        .get(&joiner)
        .into_iter()
        .flatten()
        .copied()
        .filter(|shard| writers.writers(*shard).contains(&joiner.as_str()))
        .collect();
    ensure!(
        !written.is_empty(),
        "{joiner} should have written statuses of its shards {:?}: {:?}",
        after.get(&joiner),
        writers.runs()
    );
    scene.shutdown().await
}

async fn wait_for_round(round: &AtomicU32, at_least: u32) -> Result<()> {
    round_reached(round, at_least, WITHIN).await
}

fn status(round: u32) -> Value {
    json!({"observedGeneration": 1, "replicas": 30, "updatedReplicas": 30, "readyReplicas": round, "availableReplicas": round})
}

async fn patch_status(client: kube::Client, ns: &str, name: &str, round: u32) -> Result<()> {
    Api::<Deployment>::namespaced(client, ns)
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status(round) })),
        )
        .await?;
    Ok(())
}
