//! `downstream`: changes written into KCP at a fixed rate; the time from
//! each write until the cluster's watch shows the object applied there by
//! the agent, and how often the hub read KCP for them.
//!
//! The fleet's agents apply what the hub sends down
//! ([`FleetSize::downward`]); the clusters start empty. Every change is a
//! merge patch of one annotation, [`SEQ_ANNOTATION`], on the object in KCP:
//! the object's next sequence number. One task per object writes at
//! `rate / objects` per second, so the changes to one object are ordered.
//! A watch on every cluster ([`KcpWatch::start_on`]) reads the annotation
//! back from the applied objects.
//!
//! **Lost.** The hub and the agent keep only the latest state of an object
//! (the downward queue coalesces), so a change may never be applied on its
//! own: a later one carries it. A change counts as delivered once its
//! object shows its sequence number or a later one downstream; a change is
//! lost when, [`SETTLE_TIMEOUT`] after the load stopped, it is not
//! delivered: exactly when its object's last written sequence number never
//! arrived downstream. The run also reads every object in its cluster at the
//! end and checks it holds that last number.
//!
//! **KCP reads by the hub.** The test-bed API server standing in for KCP
//! counts every request it gets ([`crate::apiserver::RequestCounts`]), from
//! the hub and from this benchmark alike. During the load the benchmark
//! sends KCP only its patches (it reads nothing there: its watches are on
//! the clusters) and counts them itself; so KCP's `get`s and `list`s from
//! the first change until the last one arrived downstream, minus the
//! benchmark's own (zero), are the hub's. Those of Deployments, the type
//! that changes, are the per-change figure; reads of other types (the hub
//! listing again, with its backoff, a type KCP does not serve) are counted
//! apart. KCP's count of Deployment patches
//! over the same time, minus the benchmark's, says what else the hub wrote
//! to the objects themselves (its finalizers): a check that the counters
//! attribute requests as the benchmark assumes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use tokio::time::Instant;
use uplink_hub::placement::key::sync_target_key;
use uplink_hub::writer::finalizer::finalizer_name;

use super::fleet::{Binaries, Fleet, FleetSize};
use super::kcpwatch::{KcpWatch, quantile};
use crate::apiserver::{RequestCounts, RequestKey};
use crate::demo::seed::SYNCTARGET_WORKSPACE;

/// The annotation that carries a change's sequence number.
pub const SEQ_ANNOTATION: &str = "bench.uplink.dev/seq";
/// How long the clusters get to show the first changes and, after the
/// load, the last.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Before the load, KCP's read counter counts as settled (the hub done
/// with its start) when it stays put this long.
const QUIET: Duration = Duration::from_secs(1);

/// How much load.
#[derive(Debug, Clone, Copy)]
pub struct DownstreamSettings {
    pub clusters: usize,
    pub objects: usize,
    /// Changes per second written into KCP, over all objects.
    pub rate: u32,
    pub duration: Duration,
}

/// What was measured.
#[derive(Debug, Clone)]
pub struct DownstreamReport {
    /// Changes per second actually written.
    pub rate_per_s: f64,
    /// Changes written into KCP during the load (successful patches).
    pub changes: u64,
    pub write_errors: u64,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    /// Changes not delivered downstream (see the module documentation).
    pub lost: u64,
    /// Objects whose last change did not arrive downstream.
    pub objects_behind: u64,
    /// Watch events of the clusters during the load that carried a new
    /// sequence number: the applies (fewer than `changes` where the hub
    /// coalesced; the clusters' status writes are not counted).
    pub downstream_events: u64,
    /// KCP reads (`get`, `list`) of Deployments during the load not made
    /// by the benchmark.
    pub hub_kcp_reads: u64,
    /// KCP reads of other types during the load (none made by the benchmark).
    pub hub_kcp_other_reads: u64,
    /// KCP watch requests during the load (the hub's, resuming its watches).
    pub hub_kcp_watches: u64,
    /// KCP reads the benchmark made during the load (none, by design).
    pub bench_kcp_reads: u64,
    /// Requests the benchmark sent to KCP during the load (its patches).
    pub bench_kcp_requests: u64,
    /// Patches of Deployments KCP counted during the load.
    pub kcp_deployment_patches: u64,
    /// After the run, every object in its cluster held its last sequence number.
    pub final_values_match: bool,
}

impl DownstreamReport {
    /// KCP reads by the hub per change written.
    pub fn hub_reads_per_change(&self) -> f64 {
        self.hub_kcp_reads as f64 / self.changes.max(1) as f64
    }

    /// Patches of the objects by someone other than the benchmark (the hub's
    /// finalizer writes).
    pub fn other_deployment_patches(&self) -> u64 {
        self.kcp_deployment_patches
            .saturating_sub(self.bench_kcp_requests)
    }
}

/// Runs the scenario on a fleet of its own.
pub async fn run(
    binaries: &Binaries,
    settings: DownstreamSettings,
) -> anyhow::Result<DownstreamReport> {
    let fleet = Fleet::start(
        binaries,
        FleetSize {
            clusters: settings.clusters,
            objects: settings.objects,
            downward: true,
        },
    )
    .await?;
    let outcome = measure(&fleet, settings).await;
    fleet.stop(outcome.is_err()).await;
    outcome
}

async fn measure(fleet: &Fleet, settings: DownstreamSettings) -> anyhow::Result<DownstreamReport> {
    let names: Vec<String> = fleet.objects.iter().map(|o| o.name.clone()).collect();
    let mut cluster_apis = Vec::new();
    for cluster in &fleet.clusters {
        if let Some(object) = fleet.objects.iter().find(|o| o.cluster == *cluster) {
            cluster_apis.push(fleet.downstream(object)?);
        }
    }
    let watch = KcpWatch::start_on(cluster_apis, &names, seq_of).await?;
    let upstream = fleet.upstream()?;

    // Warm up: every object gets sequence number 0 in KCP, and its cluster
    // shows it (the agents created the namespaces and applied everything).
    for (index, name) in names.iter().enumerate() {
        watch.expect(index, 0, Instant::now());
        write_seq(&upstream, name, 0)
            .await
            .with_context(|| format!("writing the first change of {name}"))?;
    }
    anyhow::ensure!(
        watch.wait_all_shown(Instant::now() + SETTLE_TIMEOUT).await,
        "the clusters did not show the first changes within {SETTLE_TIMEOUT:?} ({} missing); logs in {}",
        watch.pending(),
        fleet.dir().display()
    );
    wait_for_finalizers(fleet, &upstream).await?;
    let before = settled_kcp_requests(fleet).await?;
    watch.take_latencies();
    let events_before = watch.value_changes();

    let sent = AtomicU64::new(0);
    let period = Duration::from_secs_f64(names.len() as f64 / f64::from(settings.rate.max(1)));
    let started = Instant::now();
    let end = started + settings.duration;
    let count = names.len() as f64;
    let writers = names.iter().enumerate().map(|(index, name)| {
        let (watch, upstream, sent) = (&watch, &upstream, &sent);
        async move {
            // Spread the objects over one period so the load is even.
            let offset = period.mul_f64(index as f64 / count);
            let mut ticks = tokio::time::interval_at(started + offset, period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let (mut written, mut errors, mut value) = (0u64, 0u64, 0i64);
            loop {
                ticks.tick().await;
                if Instant::now() >= end {
                    return (written, errors, value);
                }
                let next = value + 1;
                watch.expect(index, next, Instant::now());
                sent.fetch_add(1, Ordering::Relaxed);
                match write_seq(upstream, name, next).await {
                    Ok(()) => {
                        value = next;
                        written += 1;
                    }
                    Err(error) => {
                        watch.forget(index, next);
                        errors += 1;
                        tracing::warn!(%error, object = %name, "benchmark write failed");
                    }
                }
            }
        }
    });
    let results = futures::future::join_all(writers).await;
    let elapsed = started.elapsed();
    let changes: u64 = results.iter().map(|r| r.0).sum();
    let write_errors: u64 = results.iter().map(|r| r.1).sum();

    watch.wait_all_shown(Instant::now() + SETTLE_TIMEOUT).await;
    let during = fleet.kcp_requests()?.since(&before);
    let downstream_events = watch.value_changes() - events_before;
    let lost = watch.pending() as u64;
    let objects_behind = watch.pending_objects(usize::MAX).len() as u64;
    let mut latencies = watch.take_latencies();
    latencies.sort();
    report_kcp_requests(&during);

    // Each cluster, read directly, must hold every object's last number.
    let mut final_values_match = true;
    for (object, result) in fleet.objects.iter().zip(&results) {
        let applied = fleet
            .downstream(object)?
            .get(&object.name)
            .await
            .with_context(|| format!("reading {} in {}", object.name, object.cluster))?;
        final_values_match &= seq_of(&applied) == Some(result.2);
    }

    // The benchmark reads nothing in KCP during the load; every request it
    // sends there is one patch.
    let bench_kcp_reads = 0;
    Ok(DownstreamReport {
        rate_per_s: changes as f64 / elapsed.as_secs_f64(),
        changes,
        write_errors,
        p50: quantile(&latencies, 0.50),
        p99: quantile(&latencies, 0.99),
        max: latencies.last().copied().unwrap_or_default(),
        lost,
        objects_behind,
        downstream_events,
        hub_kcp_reads: during
            .total(|k| k.is_read() && is_deployments(k))
            .saturating_sub(bench_kcp_reads),
        hub_kcp_other_reads: during.total(|k| k.is_read() && !is_deployments(k)),
        hub_kcp_watches: during.verb("watch"),
        bench_kcp_reads,
        bench_kcp_requests: sent.load(Ordering::Relaxed),
        kcp_deployment_patches: during.total(is_deployment_patch),
        final_values_match,
    })
}

/// The sequence number an object carries, if any.
pub fn seq_of(deployment: &Deployment) -> Option<i64> {
    deployment
        .metadata
        .annotations
        .as_ref()?
        .get(SEQ_ANNOTATION)?
        .parse()
        .ok()
}

/// Writes sequence number `value` into an object in KCP: one merge patch.
pub async fn write_seq(api: &Api<Deployment>, name: &str, value: i64) -> kube::Result<()> {
    let patch = serde_json::json!({
        "metadata": { "annotations": { SEQ_ANNOTATION: value.to_string() } }
    });
    api.patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map(|_| ())
}

fn is_deployments(key: &RequestKey) -> bool {
    key.group == "apps" && key.resource == "deployments"
}

fn is_deployment_patch(key: &RequestKey) -> bool {
    key.verb == "patch" && is_deployments(key) && key.subresource.is_empty()
}

/// Waits until every object in KCP carries the hub's finalizer for its
/// cluster: the hub adds them when the agents connect, and a finalizer
/// written during the load would conflict with the benchmark's changes.
async fn wait_for_finalizers(fleet: &Fleet, upstream: &Api<Deployment>) -> anyhow::Result<()> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let listed = upstream
            .list(&ListParams::default())
            .await
            .context("listing the objects in KCP")?;
        let missing = fleet
            .objects
            .iter()
            .filter(|object| {
                let finalizer =
                    finalizer_name(&sync_target_key(SYNCTARGET_WORKSPACE, &object.cluster));
                !listed.items.iter().any(|d| {
                    d.metadata.name.as_deref() == Some(&object.name)
                        && d.metadata
                            .finalizers
                            .as_ref()
                            .is_some_and(|f| f.contains(&finalizer))
                })
            })
            .count();
        if missing == 0 {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{missing} objects in KCP still lack the hub's finalizer after {SETTLE_TIMEOUT:?}; logs in {}",
            fleet.dir().display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// KCP's request counts once its reads stay put for [`QUIET`] (the hub's
/// start-up reads are over).
async fn settled_kcp_requests(fleet: &Fleet) -> anyhow::Result<RequestCounts> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let mut last = fleet.kcp_requests()?;
    loop {
        tokio::time::sleep(QUIET).await;
        let now = fleet.kcp_requests()?;
        if now.reads() == last.reads() || Instant::now() >= deadline {
            return Ok(now);
        }
        last = now;
    }
}

/// Says on stderr which reads and watches KCP got during the load, if any.
fn report_kcp_requests(during: &RequestCounts) {
    for (key, n) in during.iter() {
        if key.is_read() || key.verb == "watch" {
            eprintln!(
                "  KCP {} {}/{}{} in {:?}: {n} during the load",
                key.verb,
                key.group,
                key.resource,
                if key.subresource.is_empty() {
                    String::new()
                } else {
                    format!("/{}", key.subresource)
                },
                key.workspace
            );
        }
    }
}
