//! `agent`: one real `uplink-agent` process watching many objects in its
//! cluster: its resident memory once everything is synced, its CPU while
//! nothing changes, and its CPU per status change under load.
//!
//! Read from `/proc/<pid>` ([`super::procstat`]); a change counts once KCP
//! shows it, so the CPU of the whole path inside the agent is in the figure.

use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt as _;
use tokio::time::Instant;

use super::fleet::{Binaries, Fleet, FleetSize, write_counter};
use super::kcpwatch::KcpWatch;
use super::procstat;

/// How long KCP gets to show a round of statuses.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Writes in flight at once.
const CONCURRENT_WRITES: usize = 32;

/// How much load.
#[derive(Debug, Clone, Copy)]
pub struct AgentSettings {
    pub objects: usize,
    /// How long the agent is watched while nothing changes.
    pub idle: Duration,
}

/// What was measured.
#[derive(Debug, Clone)]
pub struct AgentReport {
    pub objects: usize,
    pub rss_mib: f64,
    pub idle_cpu_millicores: f64,
    /// Agent CPU time per status change (idle CPU included).
    pub cpu_us_per_change: f64,
    pub changes: u64,
}

/// Runs the scenario on a fleet of its own.
pub async fn run(binaries: &Binaries, settings: AgentSettings) -> anyhow::Result<AgentReport> {
    eprintln!("  creating {} objects ...", settings.objects);
    let fleet = Fleet::start(
        binaries,
        FleetSize {
            clusters: 1,
            objects: settings.objects,
            downward: false,
        },
    )
    .await?;
    let outcome = measure(&fleet, settings).await;
    fleet.stop(outcome.is_err()).await;
    outcome
}

async fn measure(fleet: &Fleet, settings: AgentSettings) -> anyhow::Result<AgentReport> {
    let pid = fleet
        .agents
        .first()
        .and_then(|a| a.id())
        .context("the agent is not running")?;
    let names: Vec<String> = fleet.objects.iter().map(|o| o.name.clone()).collect();
    let watch = KcpWatch::start(fleet.upstream()?, &names).await?;
    let downstream = fleet
        .objects
        .iter()
        .map(|o| fleet.downstream(o))
        .collect::<anyhow::Result<Vec<_>>>()?;

    // One round: every object gets `value`; returns when KCP shows them all.
    let round = |value: i64| {
        let (watch, names, downstream) = (&watch, &names, &downstream);
        async move {
            let writes = futures::stream::iter(downstream.iter().zip(names).enumerate())
                .map(|(index, (api, name))| async move {
                    watch.expect(index, value, Instant::now());
                    write_counter(api, name, value)
                        .await
                        .with_context(|| format!("writing {name}"))
                })
                .buffer_unordered(CONCURRENT_WRITES)
                .collect::<Vec<_>>()
                .await;
            for result in writes {
                result?;
            }
            anyhow::ensure!(
                watch.wait_all_shown(Instant::now() + SETTLE_TIMEOUT).await,
                "KCP did not show {} statuses within {SETTLE_TIMEOUT:?}; logs in {}",
                watch.pending(),
                fleet.dir().display()
            );
            anyhow::Ok(())
        }
    };

    eprintln!("  first statuses ...");
    round(0).await?;
    let synced = procstat::sample(pid)?;

    eprintln!("  idle for {:?} ...", settings.idle);
    let idle_start = Instant::now();
    tokio::time::sleep(settings.idle).await;
    let idle_end = procstat::sample(pid)?;
    let idle_cpu = idle_end.cpu.saturating_sub(synced.cpu);
    let idle_cpu_millicores = idle_cpu.as_secs_f64() / idle_start.elapsed().as_secs_f64() * 1000.0;

    eprintln!("  one change per object ...");
    let before = procstat::sample(pid)?;
    round(1).await?;
    let after = procstat::sample(pid)?;
    let changes = names.len() as u64;
    let cpu = after.cpu.saturating_sub(before.cpu);

    Ok(AgentReport {
        objects: names.len(),
        rss_mib: idle_end.rss_mib(),
        idle_cpu_millicores,
        cpu_us_per_change: cpu.as_secs_f64() * 1e6 / changes.max(1) as f64,
        changes,
    })
}
