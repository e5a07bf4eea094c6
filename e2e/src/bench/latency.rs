//! `latency`: status changes written into the clusters' API servers at a
//! fixed rate; the time from each write until KCP's watch shows it.
//!
//! One task per object writes its counter at `rate / objects` per second, so
//! the writes to one object are ordered. Lost writes are those KCP never
//! showed (a later value counts, see [`super::kcpwatch`]).
//!
//! With `--event-burst N`, N downstream Events about the first object are
//! recorded in its cluster while the writes run (70% `BackOff`, 30%
//! `FailedCreate`, 32 at a time): the status latency is then measured
//! beside a burst of events, and the report says how many Events KCP ended
//! with about that object and how many occurrences they count (a handful
//! of series counting all N is what the agent's series promise).

use std::time::Duration;

use anyhow::Context as _;
use tokio::time::Instant;

use super::fleet::{Binaries, Fleet, FleetSize, counter_of, write_counter};
use super::kcpwatch::{KcpWatch, quantile};
use crate::demo::topology::DemoObject;

/// How long KCP gets to show the first statuses and, after the load, the last.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// How much load.
#[derive(Debug, Clone, Copy)]
pub struct LatencySettings {
    pub clusters: usize,
    pub objects: usize,
    /// Status changes per second, over all objects.
    pub rate: u32,
    pub duration: Duration,
    /// Downstream Events recorded about the first object during the run.
    pub event_burst: usize,
}

/// What was measured.
#[derive(Debug, Clone)]
pub struct LatencyReport {
    /// Writes per second actually achieved.
    pub rate_per_s: f64,
    pub writes: u64,
    pub write_errors: u64,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    /// Writes KCP never showed.
    pub lost: u64,
    /// After the run, KCP held the last written counter of every object.
    pub final_statuses_match: bool,
    /// With an event burst: the Events KCP holds about the first object,
    /// and the occurrences they count (their series counts).
    pub events: Option<EventOutcome>,
}

/// What KCP shows of an event burst.
#[derive(Debug, Clone, Copy)]
pub struct EventOutcome {
    pub recorded: usize,
    pub series: usize,
    pub occurrences: u64,
    /// From the end of the burst until KCP counted every occurrence (or
    /// gave up at [`EVENTS_TIMEOUT`]).
    pub settled: Duration,
}

/// How long KCP gets to count every occurrence of a burst after it ends:
/// the agent sends one report per object every five seconds once the
/// object's burst of five reports is spent.
const EVENTS_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs the scenario on a fleet of its own.
pub async fn run(binaries: &Binaries, settings: LatencySettings) -> anyhow::Result<LatencyReport> {
    let fleet = Fleet::start(
        binaries,
        FleetSize {
            clusters: settings.clusters,
            objects: settings.objects,
            downward: false,
        },
    )
    .await?;
    let outcome = measure(&fleet, settings).await;
    fleet.stop(outcome.is_err()).await;
    outcome
}

async fn measure(fleet: &Fleet, settings: LatencySettings) -> anyhow::Result<LatencyReport> {
    let names: Vec<String> = fleet.objects.iter().map(|o| o.name.clone()).collect();
    let watch = KcpWatch::start(fleet.upstream()?, &names).await?;
    let downstream = fleet
        .objects
        .iter()
        .map(|o| fleet.downstream(o))
        .collect::<anyhow::Result<Vec<_>>>()?;

    // Warm up: every object gets counter 0 and KCP shows it.
    for (index, (api, name)) in downstream.iter().zip(&names).enumerate() {
        watch.expect(index, 0, Instant::now());
        write_counter(api, name, 0)
            .await
            .with_context(|| format!("writing the first status of {name}"))?;
    }
    anyhow::ensure!(
        watch.wait_all_shown(Instant::now() + SETTLE_TIMEOUT).await,
        "KCP did not show the first statuses within {SETTLE_TIMEOUT:?}; logs in {}",
        fleet.dir().display()
    );
    watch.take_latencies();

    let period = Duration::from_secs_f64(names.len() as f64 / f64::from(settings.rate.max(1)));
    let started = Instant::now();
    let end = started + settings.duration;
    let count = names.len() as f64;
    let writers = downstream
        .iter()
        .zip(&names)
        .enumerate()
        .map(|(index, (api, name))| {
            let watch = &watch;
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
                    match write_counter(api, name, next).await {
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
    let burst = async {
        if settings.event_burst == 0 {
            return Ok(None);
        }
        let Some(object) = fleet.objects.first() else {
            return Ok(None);
        };
        record_burst(fleet, object, settings.event_burst).await?;
        anyhow::Ok(Some((object.name.clone(), Instant::now())))
    };
    let (results, burst) = tokio::join!(futures::future::join_all(writers), burst);
    let burst = burst?;
    let elapsed = started.elapsed();
    let writes: u64 = results.iter().map(|r| r.0).sum();
    let write_errors: u64 = results.iter().map(|r| r.1).sum();

    watch.wait_all_shown(Instant::now() + SETTLE_TIMEOUT).await;
    let lost = watch.pending() as u64;
    let mut latencies = watch.take_latencies();
    latencies.sort();

    // KCP itself, read directly, must hold every object's last counter.
    let upstream = fleet.upstream()?;
    let mut final_statuses_match = true;
    for (name, result) in names.iter().zip(&results) {
        let object = upstream
            .get(name)
            .await
            .with_context(|| format!("reading {name} in KCP"))?;
        final_statuses_match &= counter_of(&object) == Some(result.2);
    }

    let events = match burst {
        None => None,
        Some((name, ended)) => Some(count_burst(fleet, &name, settings.event_burst, ended).await?),
    };

    Ok(LatencyReport {
        rate_per_s: writes as f64 / elapsed.as_secs_f64(),
        writes,
        write_errors,
        p50: quantile(&latencies, 0.50),
        p99: quantile(&latencies, 0.99),
        max: latencies.last().copied().unwrap_or_default(),
        lost,
        final_statuses_match,
        events,
    })
}

/// Records `count` Events about `object` in its cluster, as a controller
/// failing over and over would.
async fn record_burst(fleet: &Fleet, object: &DemoObject, count: usize) -> anyhow::Result<()> {
    use futures::{StreamExt as _, TryStreamExt as _};
    let deployment = fleet
        .downstream(object)?
        .get(&object.name)
        .await
        .with_context(|| format!("reading {} in its cluster", object.name))?;
    let events = fleet.downstream_events(object)?;
    let namespace = events.namespace().unwrap_or_default().to_owned();
    futures::stream::iter(0..count)
        .map(|i| {
            let events = events.clone();
            let reason = if i % 10 < 7 {
                "BackOff"
            } else {
                "FailedCreate"
            };
            let event = serde_json::json!({
                "apiVersion": "events.k8s.io/v1",
                "kind": "Event",
                "metadata": {"name": format!("{}.burst.{i}", object.name), "namespace": namespace},
                "eventTime": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S.%6fZ").to_string(),
                "regarding": {"apiVersion": "apps/v1", "kind": "Deployment", "namespace": namespace,
                              "name": object.name, "uid": deployment.metadata.uid},
                "type": "Warning",
                "reason": reason,
                "action": "Sync",
                "note": format!("{reason} {i}"),
                "reportingController": "uplink.io/bench",
                "reportingInstance": "bench",
            });
            async move {
                let event = serde_json::from_value(event)?;
                events
                    .create(&kube::api::PostParams::default(), &event)
                    .await
                    .context("recording an Event")
                    .map(drop)
            }
        })
        .buffer_unordered(32)
        .try_collect()
        .await
}

/// Waits until KCP's Events about `name` count `recorded` occurrences.
async fn count_burst(
    fleet: &Fleet,
    name: &str,
    recorded: usize,
    ended: Instant,
) -> anyhow::Result<EventOutcome> {
    let upstream = fleet.upstream_events()?;
    loop {
        let about: Vec<_> = upstream
            .list(&kube::api::ListParams::default())
            .await
            .context("listing Events in KCP")?
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .collect();
        let occurrences: u64 = about
            .iter()
            .map(|e| {
                e.series
                    .as_ref()
                    .map_or(1, |s| u64::from(s.count.unsigned_abs()))
            })
            .sum();
        let done = occurrences >= recorded as u64;
        if done || ended.elapsed() >= EVENTS_TIMEOUT {
            return Ok(EventOutcome {
                recorded,
                series: about.len(),
                occurrences,
                settled: ended.elapsed(),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
