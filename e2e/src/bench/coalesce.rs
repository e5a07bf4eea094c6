//! `coalesce`: bursts of status changes per object; how many KCP writes
//! Uplink makes for them (the hub's own `uplink_hub_kcp_writes_total`
//! counter) against a baseline that patches KCP once per watch event (the
//! downstream watch events, counted by a watcher of our own), and how many
//! writes a change that leaves the status alone causes (must be 0).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::api::{Patch, PatchParams};
use kube::runtime::watcher;
use tokio::time::Instant;

use super::fleet::{Binaries, Fleet, FleetSize, counter_of, write_counter};
use super::kcpwatch::KcpWatch;

/// How long KCP gets to show a burst's last statuses.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
/// The hub's write counter counts as settled when it stays put this long.
const QUIET: Duration = Duration::from_millis(500);

/// How much load.
#[derive(Debug, Clone, Copy)]
pub struct CoalesceSettings {
    pub clusters: usize,
    pub objects: usize,
    pub bursts: u32,
    /// Status changes per object per burst, written back to back.
    pub burst_len: u32,
}

/// What was measured.
#[derive(Debug, Clone)]
pub struct CoalesceReport {
    /// Status changes written downstream during the bursts.
    pub changes: u64,
    /// KCP status writes the hub made for them.
    pub uplink_writes: u64,
    /// Changes KCP's watch reported during the bursts (each hub write that
    /// changed an object is one): a check on `uplink_writes`.
    pub kcp_events: u64,
    /// Downstream watch events during the bursts: the writes of a forwarder
    /// that patches once per event.
    pub per_event_writes: u64,
    /// KCP writes caused by changes that left every status alone.
    pub unchanged_writes: u64,
    /// Changes that left the status alone.
    pub unchanged_changes: u64,
    /// After the run, KCP held the last written counter of every object.
    pub final_statuses_match: bool,
}

impl CoalesceReport {
    /// How many times fewer writes Uplink makes than the per-event baseline.
    pub fn ratio(&self) -> f64 {
        self.per_event_writes as f64 / self.uplink_writes.max(1) as f64
    }
}

/// Runs the scenario on a fleet of its own.
pub async fn run(
    binaries: &Binaries,
    settings: CoalesceSettings,
) -> anyhow::Result<CoalesceReport> {
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

async fn measure(fleet: &Fleet, settings: CoalesceSettings) -> anyhow::Result<CoalesceReport> {
    let names: Vec<String> = fleet.objects.iter().map(|o| o.name.clone()).collect();
    let watch = KcpWatch::start(fleet.upstream()?, &names).await?;
    let downstream = fleet
        .objects
        .iter()
        .map(|o| fleet.downstream(o))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let events = DownstreamEvents::start(fleet).await?;
    let settle = |what: &'static str| {
        let watch = &watch;
        async move {
            anyhow::ensure!(
                watch.wait_all_shown(Instant::now() + SETTLE_TIMEOUT).await,
                "KCP did not show {what} within {SETTLE_TIMEOUT:?}; logs in {}",
                fleet.dir().display()
            );
            Ok(())
        }
    };

    // Warm up: counter 0 everywhere, shown in KCP.
    for (index, (api, name)) in downstream.iter().zip(&names).enumerate() {
        watch.expect(index, 0, Instant::now());
        write_counter(api, name, 0)
            .await
            .with_context(|| format!("writing the first status of {name}"))?;
    }
    settle("the first statuses").await?;
    let writes_before = fleet.settled_kcp_writes(QUIET).await?;
    let events_before = events.count();
    let kcp_events_before = watch.events();

    // Bursts: every object gets `burst_len` changes back to back, all
    // objects at once; then KCP catches up.
    let mut last = 0i64;
    for burst in 0..settings.bursts {
        let first = i64::from(burst) * i64::from(settings.burst_len) + 1;
        last = first + i64::from(settings.burst_len) - 1;
        let writers = downstream
            .iter()
            .zip(&names)
            .enumerate()
            .map(|(index, (api, name))| {
                let watch = &watch;
                async move {
                    for value in first..=last {
                        watch.expect(index, value, Instant::now());
                        write_counter(api, name, value)
                            .await
                            .with_context(|| format!("writing {name}"))?;
                    }
                    anyhow::Ok(())
                }
            });
        for result in futures::future::join_all(writers).await {
            result?;
        }
        settle("a burst's last statuses").await?;
    }
    let changes = names.len() as u64 * u64::from(settings.bursts) * u64::from(settings.burst_len);
    // Every change is one event downstream; give our watcher time to see them.
    events
        .wait_for(events_before + changes, Instant::now() + SETTLE_TIMEOUT)
        .await;
    let per_event_writes = events.count() - events_before;
    let writes_after_bursts = fleet.settled_kcp_writes(QUIET).await?;
    let uplink_writes = writes_after_bursts - writes_before;
    let kcp_events = watch.events() - kcp_events_before;

    // Changes that leave the status alone: a label on every object. Then one
    // real change per cluster as a marker that the agents got past them.
    let events_before_touch = events.count();
    let touch = Patch::Merge(serde_json::json!({
        "metadata": { "labels": { "uplink-bench/touched": "yes" } }
    }));
    for (api, name) in downstream.iter().zip(&names) {
        api.patch(name, &PatchParams::default(), &touch)
            .await
            .with_context(|| format!("labelling {name}"))?;
    }
    let unchanged_changes = names.len() as u64;
    events
        .wait_for(
            events_before_touch + unchanged_changes,
            Instant::now() + SETTLE_TIMEOUT,
        )
        .await;
    let mut markers = 0u64;
    for cluster in &fleet.clusters {
        let Some(index) = fleet.objects.iter().position(|o| o.cluster == *cluster) else {
            continue;
        };
        let value = last + 1;
        watch.expect(index, value, Instant::now());
        write_counter(&downstream[index], &names[index], value)
            .await
            .with_context(|| format!("writing the marker of {cluster}"))?;
        markers += 1;
    }
    settle("the markers").await?;
    let writes_at_end = fleet.settled_kcp_writes(QUIET).await?;
    let unchanged_writes = (writes_at_end - writes_after_bursts).saturating_sub(markers);

    let upstream = fleet.upstream()?;
    let mut final_statuses_match = true;
    for (index, name) in names.iter().enumerate() {
        let expected = if watch.shown(index) == Some(last + 1) {
            last + 1
        } else {
            last
        };
        let object = upstream
            .get(name)
            .await
            .with_context(|| format!("reading {name} in KCP"))?;
        final_statuses_match &= counter_of(&object) == Some(expected);
    }

    Ok(CoalesceReport {
        changes,
        uplink_writes,
        kcp_events,
        per_event_writes,
        unchanged_writes,
        unchanged_changes,
        final_statuses_match,
    })
}

/// Counts the watch events of every Deployment in every cluster after the
/// first list: what a forwarder patching once per event would write.
#[derive(Debug)]
struct DownstreamEvents {
    count: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl DownstreamEvents {
    async fn start(fleet: &Fleet) -> anyhow::Result<DownstreamEvents> {
        let count = Arc::new(AtomicU64::new(0));
        let listed = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for cluster in &fleet.clusters {
            let client = fleet
                .connections
                .cluster(cluster)
                .with_context(|| format!("no client for {cluster}"))?;
            let api: Api<Deployment> = Api::all(client);
            let (count, listed) = (count.clone(), listed.clone());
            tasks.push(tokio::spawn(async move {
                let mut stream = std::pin::pin!(watcher(api, watcher::Config::default()));
                while let Some(event) = stream.next().await {
                    match event {
                        Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => {
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(watcher::Event::InitDone) => {
                            listed.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(_) => {}
                        Err(error) => tracing::warn!(%error, "cluster watch failed; it retries"),
                    }
                }
            }));
        }
        let events = DownstreamEvents { count, tasks };
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        while listed.load(Ordering::Relaxed) < fleet.clusters.len() as u64 {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the clusters' first lists did not arrive"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(events)
    }

    fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Waits until `target` events were seen, or `deadline`.
    async fn wait_for(&self, target: u64, deadline: Instant) {
        while self.count() < target && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for DownstreamEvents {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}
