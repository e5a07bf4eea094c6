//! The replicas engine against the test bed's `coordination.k8s.io/v1`
//! Leases, in real time with short timings: three engines spread the shards
//! evenly, a graceful stop hands shards over at once, a crash hands them over
//! after the lease duration, and no shard is ever fenced open in two engines
//! at once.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::api::{ListParams, PostParams};
use prometheus::Registry;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uplink_e2e::apiserver::{ApiServer, ApiServerConfig};
use uplink_hub::replicas::lease::REPLICAS_LABEL;
use uplink_hub::replicas::{self, Fence, ReplicaMetrics, ReplicaSettings, ShardId};

const SHARDS: u16 = 16;
const LEASE: Duration = Duration::from_secs(2);
const RETRY: Duration = Duration::from_millis(200);
/// The longest time between two of a replica's renewals starting.
const MAX_TICK: Duration = RETRY;
/// A write's latency on the test bed, and scheduling, at most.
const SLACK: Duration = Duration::from_millis(100);
const NAMESPACE: &str = "default";
const PREFIX: &str = "uplink-hub";

struct Replica {
    identity: String,
    fence: Fence,
    metrics: ReplicaMetrics,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), replicas::SettingsError>>,
}

fn start(client: &kube::Client, identity: &str) -> Result<Replica> {
    let settings = ReplicaSettings {
        namespace: NAMESPACE.into(),
        identity: identity.into(),
        prefix: PREFIX.into(),
        shards: SHARDS,
        lease_duration: LEASE,
        renew_deadline: Duration::from_millis(1500),
        retry_period: RETRY,
    };
    settings.validate()?;
    let fence = settings.fence();
    let metrics = ReplicaMetrics::register(&Registry::new())?;
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(replicas::run(
        client.clone(),
        settings,
        fence.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    Ok(Replica {
        identity: identity.into(),
        fence,
        metrics,
        shutdown,
        task,
    })
}

/// Samples every fence every few milliseconds until stopped; records any
/// moment a shard was open in two fences.
struct Sampler {
    fences: Arc<Mutex<Vec<(String, Fence)>>>,
    overlaps: Arc<Mutex<Vec<String>>>,
    samples: Arc<Mutex<u64>>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Sampler {
    fn start(fences: Vec<(String, Fence)>) -> Self {
        let overlaps = Arc::new(Mutex::new(Vec::new()));
        let samples = Arc::new(Mutex::new(0u64));
        let stop = CancellationToken::new();
        let fences = Arc::new(Mutex::new(fences));
        let task = tokio::spawn({
            let (overlaps, samples, stop) = (overlaps.clone(), samples.clone(), stop.clone());
            let fences = fences.clone();
            async move {
                let mut interval = tokio::time::interval(Duration::from_millis(2));
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        _ = interval.tick() => {}
                    }
                    let fences = fences
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .clone();
                    // One instant for every fence: asking each at its own
                    // instant could see one open just before and the next
                    // just after a handover.
                    let now = Instant::now();
                    for shard in 0..SHARDS {
                        let open: Vec<&str> = fences
                            .iter()
                            .filter(|(_, fence)| fence.holds_at(ShardId(shard), now))
                            .map(|(identity, _)| identity.as_str())
                            .collect();
                        if open.len() > 1 {
                            overlaps
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .push(format!("shard {shard} open in {open:?}"));
                        }
                    }
                    *samples.lock().unwrap_or_else(PoisonError::into_inner) += 1;
                }
            }
        });
        Self {
            fences,
            overlaps,
            samples,
            stop,
            task,
        }
    }

    fn watch(&self, replica: &Replica) {
        self.fences
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((replica.identity.clone(), replica.fence.clone()));
    }

    async fn finish(self) -> Result<u64> {
        self.stop.cancel();
        self.task.await?;
        let overlaps = self
            .overlaps
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if !overlaps.is_empty() {
            bail!("shards open in two fences at once: {overlaps:?}");
        }
        Ok(*self.samples.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// Polls `check` until it is true or `limit` passes.
async fn until<F, Fut>(what: &str, limit: Duration, mut check: F) -> Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let start = Instant::now();
    loop {
        if check().await? {
            return Ok(start.elapsed());
        }
        if start.elapsed() > limit {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Shard → holder, as the Lease objects say (empty holders left out).
async fn lease_holders(leases: &Api<Lease>) -> Result<BTreeMap<u16, String>> {
    let list = leases
        .list(&ListParams::default().labels(&format!("{REPLICAS_LABEL}={PREFIX}")))
        .await?;
    let mut holders = BTreeMap::new();
    for lease in list.items {
        let name = lease.metadata.name.clone().unwrap_or_default();
        let Some(number) = name.strip_prefix(&format!("{PREFIX}-shard-")) else {
            continue;
        };
        let holder = lease
            .spec
            .and_then(|spec| spec.holder_identity)
            .unwrap_or_default();
        if !holder.is_empty() {
            holders.insert(number.parse()?, holder);
        }
    }
    Ok(holders)
}

/// The identity part of a holder string `<identity>_<uuid>`.
fn identity_of(holder: &str) -> &str {
    holder
        .split_once('_')
        .map_or(holder, |(identity, _)| identity)
}

/// A test bed API server and a client for it.
async fn test_bed() -> Result<(ApiServer, kube::Client, tempfile::TempDir)> {
    let server = ApiServer::start(ApiServerConfig::default()).await?;
    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig, None)?;
    let client = kube::Client::try_from(
        kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&kubeconfig)?,
            &kube::config::KubeConfigOptions::default(),
        )
        .await?,
    )?;
    Ok((server, client, dir))
}

/// Every shard held by exactly one of `replicas`, in the Leases and in the
/// fences alike, with counts as `expected` (largest first).
async fn spread_is(leases: &Api<Lease>, replicas: &[&Replica], expected: &[usize]) -> Result<bool> {
    let holders = lease_holders(leases).await?;
    if holders.len() != usize::from(SHARDS) {
        return Ok(false);
    }
    let mut counts = Vec::new();
    for replica in replicas {
        let from_leases: BTreeSet<u16> = holders
            .iter()
            .filter(|(_, holder)| identity_of(holder) == replica.identity)
            .map(|(shard, _)| *shard)
            .collect();
        let from_fence: BTreeSet<u16> = replica.fence.held().iter().map(|s| s.0).collect();
        if from_leases != from_fence {
            return Ok(false);
        }
        counts.push(from_fence.len());
    }
    counts.sort_unstable_by(|a, b| b.cmp(a));
    Ok(counts == expected)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_spread_hand_over_and_never_overlap() -> Result<()> {
    let (server, client, _dir) = test_bed().await?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);

    // The test bed answers both kinds of lost race with 409, as
    // kube-apiserver does.
    let raw = uplink_hub::replicas::LeaseClient::new(client.clone(), NAMESPACE, "race");
    let first = uplink_hub::replicas::LeaseRecord::acquired_by(None, "x", LEASE);
    let created = raw.write("race-shard-00", None, &first, "creating").await?;
    let again = raw.write("race-shard-00", None, &first, "creating").await;
    assert!(again.as_ref().is_err_and(|e| e.lost_race()), "{again:?}");
    // (A write that changes nothing keeps the resourceVersion, as in
    // kube-apiserver; a renewal always carries a new renewTime.)
    let second = uplink_hub::replicas::LeaseRecord::acquired_by(Some(&first), "y", LEASE);
    raw.write("race-shard-00", Some(&created), &second, "renewing")
        .await?;
    let stale = raw
        .write("race-shard-00", Some(&created), &first, "renewing")
        .await;
    assert!(stale.as_ref().is_err_and(|e| e.lost_race()), "{stale:?}");

    let a = start(&client, "hub-a")?;
    let b = start(&client, "hub-b")?;
    let c = start(&client, "hub-c")?;
    let sampler = Sampler::start(
        [&a, &b, &c]
            .iter()
            .map(|r| (r.identity.clone(), r.fence.clone()))
            .collect(),
    );

    let all = [&a, &b, &c];
    let took = until(
        "an even spread of 16 shards over 3",
        Duration::from_secs(20),
        || spread_is(&leases, &all, &[6, 5, 5]),
    )
    .await?;
    eprintln!("three replicas spread 6/5/5 in {took:?}");
    // The gauge is set at the end of a tick: poll it.
    until(
        "the shards_held gauges to sum to 16",
        Duration::from_secs(5),
        || async {
            let held: i64 = all.iter().map(|r| r.metrics.shards_held.get()).sum();
            Ok(held == i64::from(SHARDS))
        },
    )
    .await?;

    // A crash: c's task is aborted, nothing released. Its fence must close
    // by itself before anyone else's opens (the sampler watches), and its
    // shards move after the lease duration.
    c.task.abort();
    let crashed_at = Instant::now();
    let _ = c.task.await; // cancelled
    let survivors = [&a, &b];
    let took = until("c's shards taken over", Duration::from_secs(15), || {
        spread_is(&leases, &survivors, &[8, 8])
    })
    .await?;
    eprintln!("after a crash, shards moved in {took:?}");
    // The others count the lease duration from when they saw c's last
    // renewal, which may have been up to a tick before the abort (and a
    // write's latency), so takeover may come that much less than LEASE after
    // the abort; never earlier.
    assert!(
        crashed_at.elapsed() >= LEASE - MAX_TICK - SLACK,
        "the shards of a crashed replica moved before its lease could expire ({:?})",
        crashed_at.elapsed()
    );
    assert!(c.fence.held().is_empty());

    // A graceful stop: b releases; a takes everything at once, well within
    // the lease duration that a crash would cost.
    b.shutdown.cancel();
    let stopped_at = Instant::now();
    b.task.await??;
    assert!(b.fence.held().is_empty());
    let last = [&a];
    let took = until("b's shards handed to a", Duration::from_secs(15), || {
        spread_is(&leases, &last, &[16])
    })
    .await?;
    eprintln!("after a graceful stop, shards moved in {took:?}");
    assert!(
        stopped_at.elapsed() < LEASE,
        "a released shard waited for the lease to expire ({:?})",
        stopped_at.elapsed()
    );
    let released = b.metrics.transitions.with_label_values(&["released"]).get();
    assert!(released >= 8, "b released {released}");

    // A replica joining takes its share: nothing is free, so only after a
    // has been over its share for the settle time (one lease duration).
    let d = start(&client, "hub-d")?;
    sampler.watch(&d);
    let joined_at = Instant::now();
    let pair = [&a, &d];
    let took = until("d's share", Duration::from_secs(15), || {
        spread_is(&leases, &pair, &[8, 8])
    })
    .await?;
    eprintln!("a joining replica had its share in {took:?}");
    assert!(
        joined_at.elapsed() >= LEASE,
        "a released before the settle time"
    );

    for replica in [a, d] {
        replica.shutdown.cancel();
        replica.task.await??;
    }
    let samples = sampler.finish().await?;
    assert!(samples > 100, "only {samples} samples");
    let holders = lease_holders(&leases)
        .await
        .context("leases after shutdown")?;
    assert!(holders.is_empty(), "still held after shutdown: {holders:?}");
    server.shutdown().await;
    Ok(())
}

/// Two processes given one identity (a force-deleted pod still running on a
/// partitioned node): only the one holding the member lease takes shards,
/// the two never both hold one, and the other takes over once the first
/// stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_with_one_identity_never_both_hold_a_shard() -> Result<()> {
    let (server, client, _dir) = test_bed().await?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    let first = start(&client, "hub-x")?;
    let second = start(&client, "hub-x")?;
    let sampler = Sampler::start(vec![
        ("first".into(), first.fence.clone()),
        ("second".into(), second.fence.clone()),
    ]);

    // All 16 shards end up held by one process, under one holder string.
    let took = until(
        "one holder of all shards",
        Duration::from_secs(20),
        || async {
            let holders = lease_holders(&leases).await?;
            let strings: BTreeSet<&String> = holders.values().collect();
            let fences = (first.fence.held().len(), second.fence.held().len());
            Ok(holders.len() == usize::from(SHARDS)
                && strings.len() == 1
                && (fences == (16, 0) || fences == (0, 16)))
        },
    )
    .await?;
    eprintln!("one of two processes with one identity held all shards in {took:?}");
    // And it stays so for two lease durations (the sampler watches).
    let (holder, other) = if first.fence.held().is_empty() {
        (second, first)
    } else {
        (first, second)
    };
    let watching = Instant::now();
    while watching.elapsed() < 2 * LEASE {
        assert!(
            other.fence.held().is_empty(),
            "the second process of one identity took shards"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The holder stops: the other process takes its identity over.
    holder.shutdown.cancel();
    holder.task.await??;
    let only = [&other];
    let took = until(
        "the other process holding all",
        Duration::from_secs(20),
        || spread_is(&leases, &only, &[16]),
    )
    .await?;
    eprintln!("the other process of the identity took over in {took:?}");
    other.shutdown.cancel();
    other.task.await??;
    let samples = sampler.finish().await?;
    assert!(samples > 100, "only {samples} samples");
    server.shutdown().await;
    Ok(())
}

/// A member Lease nobody renews (a replica gone with its pod name) is
/// deleted once ten of its lease durations passed unrenewed; the live
/// replicas' member Leases stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_member_lease_of_a_replica_long_gone_is_deleted() -> Result<()> {
    let (_server, client, _dir) = test_bed().await?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    let gone = replicas::member_lease_name(PREFIX, "hub-gone");
    leases
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({
                "metadata": {"name": gone, "labels": {REPLICAS_LABEL: PREFIX}},
                "spec": {"holderIdentity": "hub-gone_0", "leaseDurationSeconds": 1},
            }))?,
        )
        .await?;
    let a = start(&client, "hub-a")?;
    let took = until(
        "the gone replica's member lease to be deleted",
        Duration::from_secs(30),
        || {
            let (leases, gone) = (leases.clone(), gone.clone());
            // The deletion is counted once its answer is back, a moment
            // after the Lease is gone from the server.
            let counted = a.metrics.members_deleted.get() == 1;
            async move { Ok(counted && leases.get_opt(&gone).await?.is_none()) }
        },
    )
    .await?;
    // Ten lease durations from when the replica first read it (just after
    // this test's clock started): not at first sight.
    assert!(
        took >= Duration::from_secs(9),
        "deleted after {took:?}, before ten lease durations passed"
    );
    assert!(
        leases
            .get_opt(&replicas::member_lease_name(PREFIX, "hub-a"))
            .await?
            .is_some(),
        "the live replica's member lease stays"
    );
    a.shutdown.cancel();
    a.task.await??;
    Ok(())
}
