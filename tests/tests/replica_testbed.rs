//! The replica test bed without hub processes: three replicas engines
//! (`uplink_hub::replicas::run`, the engine the hub will run) reach their
//! Leases through the harness's links, and stand-in writers patch statuses
//! in KCP only for the shards their fence holds, sending the hub's
//! `User-Agent`. One replica is partitioned from its Leases: its shards move
//! to the others, and the KCP test bed's record of status writes shows the
//! handover with no overlap. This checks the pieces the failover scenarios
//! stand on (the Lease links and partition, the Lease reading, the status
//! write record, the writers checker) before the hub is wired.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use http::{HeaderValue, Request, header};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, PostParams};
use kube::{Client, Config};
use prometheus::Registry;
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uplink_e2e::apiserver::{ApiServer, ApiServerConfig};
use uplink_hub::replicas::{self, Fence, ReplicaMetrics, ShardId, shard_of};
use uplink_tests::apiserver::{client_for, client_from_kubeconfig_yaml, start_server};
use uplink_tests::fleet::replicas::{LeaseServer, ReplicaOptions, replica_identity};
use uplink_tests::fleet::writers::{ShardWriters, assert_one_writer_per_shard, hub_shard};
use uplink_tests::fleet::{bounded, deployment, eventually};

const WORKSPACES: usize = 24;
const WRITE_EVERY: Duration = Duration::from_millis(40);
const WITHIN: Duration = Duration::from_secs(30);

fn workspace(i: usize) -> String {
    format!("root:org:ws-{i}")
}

/// One replica: its engine and its stand-in writer.
struct Replica {
    identity: String,
    fence: Fence,
    stop: CancellationToken,
    engine: JoinHandle<Result<(), replicas::SettingsError>>,
    writer: JoinHandle<Result<()>>,
}

/// Patches, every [`WRITE_EVERY`], the status of the next workspace (round
/// robin) whose shard `fence` holds, as `uplink-hub/test (<identity>)`.
async fn write_held(kcp: Client, fence: Fence, shards: u16, stop: CancellationToken) -> Result<()> {
    let mut next = 0usize;
    let mut count = 0u64;
    let mut tick = tokio::time::interval(WRITE_EVERY);
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        let held = (0..WORKSPACES)
            .map(|k| (next + k) % WORKSPACES)
            .find(|i| fence.holds(shard_of(&workspace(*i), shards)));
        let Some(i) = held else { continue };
        next = i + 1;
        count += 1;
        let path = format!(
            "/clusters/{}/apis/apps/v1/namespaces/default/deployments/app/status",
            workspace(i)
        );
        let body = serde_json::to_vec(&json!({ "status": { "observedGeneration": count } }))?;
        let request = Request::patch(path)
            .header(header::CONTENT_TYPE, "application/merge-patch+json")
            .body(body)?;
        // A write refused or cut short is no write; the next tick goes on.
        let _ = kcp.request_text(request).await;
    }
}

async fn start_replica(
    leases: &LeaseServer,
    kcp: &ApiServer,
    options: &ReplicaOptions,
    identity: &str,
) -> Result<Replica> {
    let kubeconfig = std::fs::read_to_string(leases.kubeconfig(identity)?)?;
    let lease_client = client_from_kubeconfig_yaml(&kubeconfig, false).await?;
    let settings = options.settings(identity);
    let fence = settings.fence();
    let metrics = ReplicaMetrics::register(&Registry::new())?;
    let stop = CancellationToken::new();
    let engine = tokio::spawn(replicas::run(
        lease_client,
        settings,
        fence.clone(),
        metrics,
        stop.clone(),
    ));
    let kcp_client = {
        let kubeconfig = kube::config::Kubeconfig::from_yaml(&kcp.kubeconfig_yaml(None))?;
        let mut config =
            Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
                .await?;
        let agent = HeaderValue::from_str(&format!("uplink-hub/test ({identity})"))?;
        config.headers.push((header::USER_AGENT, agent));
        Client::try_from(config)?
    };
    let writer = tokio::spawn(write_held(
        kcp_client,
        fence.clone(),
        options.shards,
        stop.clone(),
    ));
    Ok(Replica {
        identity: identity.to_owned(),
        fence,
        stop,
        engine,
        writer,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_from_its_leases_hands_its_shards_over_without_overlap() -> Result<()> {
    bounded(Duration::from_secs(120), partitioned()).await
}

async fn partitioned() -> Result<()> {
    let workspaces: Vec<String> = (0..WORKSPACES).map(workspace).collect();
    let kcp = start_server(ApiServerConfig {
        workspaces: workspaces.clone(),
        ..ApiServerConfig::default()
    })
    .await?;
    for ws in &workspaces {
        Api::<Deployment>::namespaced(client_for(&kcp, Some(ws)).await?, "default")
            .create(&PostParams::default(), &deployment("app", 1))
            .await
            .with_context(|| format!("creating the Deployment in {ws}"))?;
    }
    let dir = tempfile::tempdir()?;
    let options = ReplicaOptions::default();
    options.validate()?;
    let identities: Vec<String> = (0..options.replicas).map(replica_identity).collect();
    let leases = LeaseServer::start(dir.path(), &options, &identities).await?;
    let mut running = Vec::new();
    for identity in &identities {
        running.push(start_replica(&leases, &kcp, &options, identity).await?);
    }
    let all: Vec<&str> = identities.iter().map(String::as_str).collect();
    leases.wait_balanced(&all, WITHIN).await?;

    // Every replica writes before the partition.
    let wrote = |writes: &ShardWriters, identity: &str| {
        writes
            .runs()
            .values()
            .flatten()
            .any(|run| run.writer == identity)
    };
    eventually(WITHIN, "every replica to write a status", async || {
        let writes = ShardWriters::from_writes(&kcp.status_writes(), .., hub_shard(options.shards));
        match all.iter().find(|identity| !wrote(&writes, identity)) {
            Some(silent) => bail!("{silent} wrote nothing yet:\n{writes}"),
            None => Ok(()),
        }
    })
    .await?;

    // hub-0 is cut from its Leases (not from KCP): it keeps trying to write.
    let cut = "hub-0";
    let before: Vec<ShardId> = running[0].fence.held();
    let partitioned_at = Instant::now();
    leases.partition(cut)?;
    ensure!(
        !before.is_empty(),
        "{cut} held no shard before the partition"
    );
    eventually(
        WITHIN,
        "the cut replica's fence to close",
        async || match running[0].fence.held() {
            held if held.is_empty() => Ok(()),
            held => bail!("{cut} still holds {held:?}"),
        },
    )
    .await?;
    let rest = ["hub-1", "hub-2"];
    leases.wait_balanced(&rest, WITHIN).await?;
    // The others write in every shard the cut replica wrote (a few times
    // each, so that a cut replica still writing would show in between).
    let written: BTreeSet<u16> = workspaces
        .iter()
        .map(|ws| shard_of(ws, options.shards).0)
        .collect();
    let moved: Vec<u16> = before
        .iter()
        .map(|s| s.0)
        .filter(|s| written.contains(s))
        .collect();
    ensure!(!moved.is_empty(), "{cut} held none of the written shards");
    eventually(
        WITHIN,
        "the cut replica's shards to be written by others",
        async || {
            let writes = ShardWriters::from_writes(
                &kcp.status_writes(),
                partitioned_at..,
                hub_shard(options.shards),
            );
            for shard in &moved {
                let by_others: usize = writes
                    .runs()
                    .get(shard)
                    .into_iter()
                    .flatten()
                    .filter(|run| run.writer != cut)
                    .map(|run| run.writes)
                    .sum();
                ensure!(
                    by_others >= 3,
                    "shard {shard:02}: {by_others} writes by others yet:\n{writes}"
                );
            }
            Ok(())
        },
    )
    .await?;
    let healed_at = Instant::now();
    leases.heal(cut)?;

    let writers = assert_one_writer_per_shard(&kcp, partitioned_at..healed_at, options.shards)?;
    for shard in &moved {
        let order = writers.writers(*shard);
        ensure!(
            order.len() == 2 && order.first() == Some(&cut),
            "shard {shard:02}: expected {cut} then one other, got {order:?}:\n{writers}"
        );
    }
    ensure!(
        writers.foreign() == 0,
        "expected only the replicas' writes:\n{writers}"
    );

    // Back on its Leases, the cut replica takes its share again.
    leases.wait_balanced(&all, WITHIN).await?;

    for replica in &running {
        replica.stop.cancel();
    }
    for replica in running {
        replica
            .engine
            .await?
            .with_context(|| format!("{}'s engine", replica.identity))?;
        replica
            .writer
            .await?
            .with_context(|| format!("{}'s writer", replica.identity))?;
    }
    leases.shutdown().await;
    kcp.shutdown().await;
    Ok(())
}
