//! `failover`: three hub replicas sharing the fleet's shards by Lease
//! (issue 20), the busiest SIGKILLed, every status changed at once.
//!
//! Two runs, each on a KCP of its own with the same agents:
//!
//! 1. **One hub**, not replicated (no lease flags): every agent connects,
//!    KCP shows every initial status, then a load phase of `rounds` rounds,
//!    each changing every object's status and waiting until KCP shows all of
//!    it. The hub's CPU seconds over the load phase per million deltas it
//!    received is the baseline.
//! 2. **`replicas` hubs** (`--replicas-lease-namespace`, the Leases on the
//!    test bed's `coordination.k8s.io/v1`, `--replicas-identity hub-<i>`,
//!    `--shards`), the Lease timings left at the hub's defaults (what an
//!    operator gets), every agent given every tunnel URL comma-separated.
//!    The same load phase, CPU summed over the replicas: the ratio to the
//!    baseline is the sharding overhead. Then the replica holding most
//!    shards (`uplink_hub_shards_held`) is SIGKILLed and every object's
//!    status changed at once; measured from the kill: when the survivors
//!    hold every shard again, when KCP shows every change, and the changes
//!    it never showed (lost).
//!
//! The agents are simulated ([`super::simulated`]) in child processes
//! ([`super::pool`]): 10,000 agents with one session per replica do not fit
//! one process's descriptors. Each has one object, in one of `workspaces`
//! workspaces `root:bench:w-NN` (the hub shards by workspace); KCP is
//! watched in every one of them.
//!
//! The processes' logs are deleted after a run that succeeded, unless
//! `UPLINK_BENCH_KEEP_LOGS` is set (the directory is printed).
//!
//! With `replicas` = 1 only the first run happens (a baseline, nothing to
//! fail over to): that is how the harness runs against a hub without
//! replication.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use tokio::time::Instant;
use uplink_hub::replicas::ReplicaSettings;

use super::connections::raise_fd_limit;
use super::fleet::{
    Binaries, MetricsClient, NAMESPACE, deployments_only, hub_metrics, metrics_client,
    one_source_fleet, unlimited_writes,
};
use super::kcpwatch::KcpWatch;
use super::pool::{self, AgentPools, PoolSettings, agent_name, workspace_of};
use super::procstat;
use super::simulated::{object_name, seed_kcp_in, write_pki};
use crate::apiserver::{ApiServer, ApiServerConfig};
use crate::demo::launch::{self, Files, HubAddrs};
use crate::demo::processes::ChildProcess;

/// How often KCP's watch is looked at.
const SAMPLE: Duration = Duration::from_millis(100);
/// How often the hubs' `/metrics` are read while waiting (large pages with
/// thousands of agents; the hubs' time serving them is time not spent
/// recovering).
const SCRAPE_EVERY: Duration = Duration::from_millis(250);
/// How long after the kill the survivors get before what is missing counts
/// as lost.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long KCP gets to show one load round.
const ROUND_TIMEOUT: Duration = Duration::from_secs(180);
/// How long the pools get to queue a round's changes.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a child gets to exit when stopped.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Heartbeats are not what this measures.
const HEARTBEAT: Duration = Duration::from_secs(10);
/// Where the replicas' Leases live on the test bed.
const LEASE_NAMESPACE: &str = "default";
/// The agents' names: `fo-<i>`.
const PREFIX: &str = "fo";

/// How much load.
#[derive(Debug, Clone, Copy)]
pub struct FailoverSettings {
    pub agents: usize,
    /// KCP workspaces the agents' objects are dealt over.
    pub workspaces: usize,
    /// Hub replicas in the second run; 1 runs the baseline only.
    pub replicas: usize,
    pub shards: u16,
    /// Load rounds (every status changed once each) per run.
    pub rounds: u32,
}

/// The hubs' cost over a load phase.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadCost {
    /// CPU seconds, every hub together.
    pub cpu_s: f64,
    /// Deltas received, every hub together.
    pub deltas: u64,
}

impl LoadCost {
    /// CPU seconds per million deltas; 0 when none arrived.
    pub fn per_million(&self) -> f64 {
        if self.deltas == 0 {
            0.0
        } else {
            self.cpu_s / self.deltas as f64 * 1e6
        }
    }
}

/// The replicated run's kill and what followed; times in seconds since it.
#[derive(Debug, Clone, PartialEq)]
pub struct Failover {
    pub killed: String,
    /// Shards the killed replica held.
    pub killed_shards: u64,
    /// The survivors' `shards_held` sum to the shard count again.
    pub shards_held_again_s: Option<f64>,
    /// KCP shows every change made at the kill.
    pub all_in_kcp_s: Option<f64>,
    /// Changes made at the kill that KCP never showed.
    pub lost: u64,
}

impl Failover {
    /// Both done: every shard held again and every change in KCP; the
    /// recovery timeout when either never happened.
    pub fn recovered_s(&self) -> f64 {
        match (self.shards_held_again_s, self.all_in_kcp_s) {
            (Some(a), Some(b)) => a.max(b),
            _ => RECOVERY_TIMEOUT.as_secs_f64(),
        }
    }
}

/// What was measured.
#[derive(Debug, Clone, PartialEq)]
pub struct FailoverReport {
    pub agents: usize,
    pub replicas: usize,
    pub shards: u16,
    /// The Lease timings the replicas ran with (the hub's defaults).
    pub lease: LeaseTimings,
    pub single: LoadCost,
    /// `None` with one replica.
    pub replicated: Option<LoadCost>,
    pub failover: Option<Failover>,
}

/// Lease duration, renew deadline, retry period.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LeaseTimings {
    pub duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl LeaseTimings {
    /// The hub's defaults (client-go's leader election): what the replicas
    /// run with, since the scenario passes no timing flag.
    pub fn hub_defaults() -> LeaseTimings {
        let defaults = ReplicaSettings::default();
        LeaseTimings {
            duration: defaults.lease_duration,
            renew_deadline: defaults.renew_deadline,
            retry_period: defaults.retry_period,
        }
    }
}

impl FailoverReport {
    /// Replicated CPU per delta over the single hub's; `None` with one replica.
    pub fn overhead(&self) -> Option<f64> {
        let replicated = self.replicated?.per_million();
        let single = self.single.per_million();
        (single > 0.0).then(|| replicated / single)
    }
}

/// Runs the scenario.
pub async fn run(
    binaries: &Binaries,
    settings: FailoverSettings,
) -> anyhow::Result<FailoverReport> {
    // One directory per run: a test process may run several at once.
    static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "uplink-bench-failover-{}-{run}",
        std::process::id()
    ));
    let files = Files {
        pki: dir.join("pki"),
        kcp_kubeconfig: dir.join("kcp.kubeconfig"),
        logs: dir.join("logs"),
    };
    let result = measure(binaries, settings, &files).await;
    let keep = std::env::var_os("UPLINK_BENCH_KEEP_LOGS").is_some();
    if result.is_ok() && !keep {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("  logs kept in {}", dir.display());
    }
    result
}

async fn measure(
    binaries: &Binaries,
    settings: FailoverSettings,
    files: &Files,
) -> anyhow::Result<FailoverReport> {
    std::fs::create_dir_all(&files.logs)?;
    let agents = settings.agents.max(1);
    let names: Vec<String> = (0..agents).map(|i| agent_name(PREFIX, i)).collect();
    eprintln!("  issuing {agents} client certificates ...");
    write_pki(&files.pki, &names).await?;
    let lease = LeaseTimings::hub_defaults();

    eprintln!("  one hub, not replicated ...");
    let single = run_once(binaries, settings, files, 1, None).await?;
    let (replicated, failover) = if settings.replicas > 1 {
        eprintln!(
            "  {} replicas, {} shards, Lease timings the hub's defaults: lease duration {:?}, renew deadline {:?}, retry period {:?} ...",
            settings.replicas,
            settings.shards,
            lease.duration,
            lease.renew_deadline,
            lease.retry_period
        );
        let run = run_once(binaries, settings, files, settings.replicas, Some(lease)).await?;
        (Some(run.load), run.failover)
    } else {
        (None, None)
    };
    Ok(FailoverReport {
        agents,
        replicas: settings.replicas,
        shards: settings.shards,
        lease,
        single: single.load,
        replicated,
        failover,
    })
}

/// One run's results.
struct Run {
    load: LoadCost,
    failover: Option<Failover>,
}

/// One hub process of a run.
struct Hub {
    identity: String,
    process: Option<ChildProcess>,
    addrs: HubAddrs,
}

/// The hub flags that make a hub replica `identity` of several.
pub fn replica_flags(identity: &str, lease_kubeconfig: &Path, shards: u16) -> Vec<String> {
    vec![
        "--replicas-lease-namespace".to_owned(),
        LEASE_NAMESPACE.to_owned(),
        "--replicas-kubeconfig".to_owned(),
        lease_kubeconfig.display().to_string(),
        "--replicas-identity".to_owned(),
        identity.to_owned(),
        "--shards".to_owned(),
        shards.to_string(),
    ]
}

/// The agents' `--hub-url`: every tunnel, comma-separated.
pub fn hub_urls(tunnels: &[std::net::SocketAddr]) -> String {
    tunnels
        .iter()
        .map(|t| format!("wss://{t}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The index of the replica holding most shards (the first of equals);
/// `None` when none holds any.
pub fn busiest(held: &[u64]) -> Option<usize> {
    held.iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .fold(None, |best: Option<(usize, u64)>, (i, n)| match best {
            Some((_, m)) if m >= *n => best,
            _ => Some((i, *n)),
        })
        .map(|(i, _)| i)
}

/// Every shard held, and spread: each replica holds at least its share
/// rounded down (the first replica up may hold them all until the others
/// join and it releases its excess).
pub fn balanced(held: &[u64], shards: u16) -> bool {
    let replicas = held.len().max(1) as u64;
    held.iter().sum::<u64>() == u64::from(shards)
        && held.iter().all(|n| *n >= u64::from(shards) / replicas)
}

/// Starts KCP, the hubs (`replicas` of them; lease flags when `lease` is
/// given) and the agents, waits until everything is connected and synced,
/// runs the load phase and, when replicated, the failover.
async fn run_once(
    binaries: &Binaries,
    settings: FailoverSettings,
    files: &Files,
    replicas: usize,
    lease: Option<LeaseTimings>,
) -> anyhow::Result<Run> {
    use crate::demo::connections::client;
    use crate::demo::seed::SYNCTARGET_WORKSPACE;

    let agents = settings.agents.max(1);
    let label = if lease.is_some() {
        "replicated"
    } else {
        "single"
    };
    let workspaces = pool::workspaces(settings.workspaces);
    let kcp = ApiServer::start(ApiServerConfig {
        workspaces: workspaces.clone(),
        ..ApiServerConfig::default()
    })
    .await
    .context("starting KCP")?;
    kcp.write_kubeconfig(&files.kcp_kubeconfig, None)?;
    let mut hubs: Vec<Hub> = Vec::new();
    let outcome = async {
        let mut clients = BTreeMap::new();
        for workspace in &workspaces {
            clients.insert(
                workspace.clone(),
                client(workspace, &kcp.kubeconfig_yaml(Some(workspace))).await?,
            );
        }
        let root = client(
            SYNCTARGET_WORKSPACE,
            &kcp.kubeconfig_yaml(Some(SYNCTARGET_WORKSPACE)),
        )
        .await?;
        let placed: Vec<(String, String)> = (0..agents)
            .map(|i| (agent_name(PREFIX, i), workspace_of(i, settings.workspaces)))
            .collect();
        eprintln!(
            "  seeding {agents} objects in {} workspaces ...",
            workspaces.len()
        );
        seed_kcp_in(root, &clients, &placed, 1).await?;
        let objects: Vec<String> = placed.iter().map(|(c, _)| object_name(c, 0)).collect();
        let apis = clients
            .values()
            .map(|c| kube::Api::namespaced(c.clone(), NAMESPACE))
            .collect();
        let watch = KcpWatch::start_on(apis, &objects, super::fleet::counter_of).await?;

        for i in 0..replicas {
            let identity = format!("hub-{i}");
            let mut flags = unlimited_writes();
            flags.extend(one_source_fleet());
            flags.extend(deployments_only());
            if lease.is_some() {
                flags.extend(replica_flags(
                    &identity,
                    &files.kcp_kubeconfig,
                    settings.shards,
                ));
            }
            let log = files.logs.join(format!("{label}-{identity}.log"));
            let (process, addrs) =
                launch::start_hub_logged(&binaries.hub, files, HEARTBEAT, &log, &flags).await?;
            if let Some(pid) = process.id() {
                raise_fd_limit(pid).await;
            }
            hubs.push(Hub {
                identity,
                process: Some(process),
                addrs,
            });
        }
        let tunnels: Vec<_> = hubs.iter().map(|h| h.addrs.tunnel).collect();

        let started = Instant::now();
        for index in 0..agents {
            watch.expect(index, 0, started);
        }
        eprintln!("  starting {agents} agents in pools ...");
        let connect_timeout = Duration::from_secs(60) + Duration::from_millis(agents as u64 * 20);
        let mut pools = AgentPools::start(
            &PoolSettings {
                exe: binaries.e2e.clone(),
                hub_url: hub_urls(&tunnels),
                pki: files.pki.clone(),
                prefix: PREFIX.to_owned(),
                agents,
                workspaces: settings.workspaces,
                heartbeat: HEARTBEAT,
                logs: files.logs.clone(),
                label: format!("{label}-pool"),
            },
            connect_timeout,
        )
        .await?;
        let measured = async {
            let http = metrics_client();
            wait_connected(
                &http,
                &mut hubs,
                &mut pools,
                &watch,
                agents,
                lease.map(|_| settings.shards),
                started + connect_timeout,
            )
            .await?;
            eprintln!(
                "  connected and synced in {:.1}s; load: {} rounds ...",
                started.elapsed().as_secs_f64(),
                settings.rounds
            );
            let load = load(
                &http,
                &mut hubs,
                &mut pools,
                &watch,
                agents,
                settings.rounds,
            )
            .await?;
            eprintln!(
                "  load: {} deltas, {:.2} hub CPU s ({:.2} per million)",
                load.deltas,
                load.cpu_s,
                load.per_million()
            );
            let failover = if lease.is_some() {
                let round = i64::from(settings.rounds) + 1;
                Some(
                    fail_over(
                        &http,
                        &mut hubs,
                        &mut pools,
                        &watch,
                        agents,
                        settings.shards,
                        round,
                    )
                    .await?,
                )
            } else {
                None
            };
            anyhow::Ok(Run { load, failover })
        }
        .await;
        pools.stop(STOP_GRACE).await;
        measured
    }
    .await;
    for hub in hubs {
        if let Some(process) = hub.process {
            process.stop(STOP_GRACE).await;
        }
    }
    kcp.shutdown().await;
    outcome
}

/// The first hub that exited, with the end of its log.
fn exited_hub(hubs: &mut [Hub]) -> Option<String> {
    hubs.iter_mut().find_map(|hub| {
        let process = hub.process.as_mut()?;
        let status = process.exited()?;
        Some(format!(
            "{} exited ({status}); the end of its log:\n{}",
            hub.identity,
            process.log_tail(15)
        ))
    })
}

/// The hubs' connected agents, shards held and deltas received.
const CONNECTED: usize = 0;
const SHARDS_HELD: usize = 1;
const DELTAS: usize = 2;
const SCRAPED: [&str; 3] = [
    "uplink_hub_agents_connected",
    "uplink_hub_shards_held",
    "uplink_hub_deltas_received_total",
];

/// [`SCRAPED`] of every running hub, in order (`None` where unreadable or
/// killed), one `/metrics` read per hub.
async fn scrape(http: &MetricsClient, hubs: &[Hub]) -> Vec<Option<Vec<f64>>> {
    let mut values = Vec::with_capacity(hubs.len());
    for hub in hubs {
        values.push(if hub.process.is_some() {
            hub_metrics(http, hub.addrs.http, &SCRAPED, &[]).await.ok()
        } else {
            None
        });
    }
    values
}

/// Metric `which` of [`SCRAPED`] per hub.
fn column(scraped: &[Option<Vec<f64>>], which: usize) -> Vec<Option<f64>> {
    scraped
        .iter()
        .map(|hub| hub.as_ref().and_then(|v| v.get(which).copied()))
        .collect()
}

/// Metric `which` of [`SCRAPED`], summed over the hubs that answered.
fn total(scraped: &[Option<Vec<f64>>], which: usize) -> f64 {
    column(scraped, which).into_iter().flatten().sum()
}

/// CPU time of every running hub, summed.
fn hubs_cpu(hubs: &[Hub]) -> anyhow::Result<Duration> {
    let mut total = Duration::ZERO;
    for hub in hubs {
        if let Some(pid) = hub.process.as_ref().and_then(ChildProcess::id) {
            total += procstat::sample(pid)?.cpu;
        }
    }
    Ok(total)
}

/// Waits until every hub has every agent connected, KCP shows every
/// initial status and, when `shards` is given, the hubs hold every shard,
/// spread ([`balanced`]).
async fn wait_connected(
    http: &MetricsClient,
    hubs: &mut [Hub],
    pools: &mut AgentPools,
    watch: &KcpWatch,
    agents: usize,
    shards: Option<u16>,
    deadline: Instant,
) -> anyhow::Result<()> {
    loop {
        if let Some(trouble) = pools.trouble().or_else(|| exited_hub(hubs)) {
            anyhow::bail!("{trouble}");
        }
        let scraped = scrape(http, hubs).await;
        let connected = column(&scraped, CONNECTED);
        let held: Vec<u64> = column(&scraped, SHARDS_HELD)
            .into_iter()
            .map(|v| v.unwrap_or(0.0) as u64)
            .collect();
        let all_connected = connected
            .iter()
            .all(|c| c.is_some_and(|c| c as usize >= agents));
        let all_held = shards.is_none_or(|s| balanced(&held, s));
        if all_connected && all_held && watch.pending() == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "before the load: agents connected per hub {connected:?} of {agents}, shards held per hub {held:?} of {shards:?}, {} initial statuses not in KCP, pools: {:?}",
                watch.pending(),
                pools.status()
            );
        }
        tokio::time::sleep(SCRAPE_EVERY).await;
    }
}

/// `rounds` rounds of changing every status, each until KCP shows all of
/// it; the hubs' CPU and deltas over them.
async fn load(
    http: &MetricsClient,
    hubs: &mut [Hub],
    pools: &mut AgentPools,
    watch: &KcpWatch,
    agents: usize,
    rounds: u32,
) -> anyhow::Result<LoadCost> {
    // Scraped before the CPU is read: a `/metrics` page of 10,000
    // clusters costs each hub a noticeable moment, which is the
    // benchmark's doing, not the load's (and would count three times
    // with three replicas).
    let deltas_before = total(&scrape(http, hubs).await, DELTAS) as u64;
    let cpu_before = hubs_cpu(hubs)?;
    for round in 1..=i64::from(rounds) {
        let at = Instant::now();
        for index in 0..agents {
            watch.expect(index, round, at);
        }
        pools.change(round, CHANGE_TIMEOUT).await?;
        if !watch.wait_all_shown(Instant::now() + ROUND_TIMEOUT).await {
            if let Some(trouble) = pools.trouble().or_else(|| exited_hub(hubs)) {
                anyhow::bail!("{trouble}");
            }
            anyhow::bail!(
                "load round {round}: {} changes not in KCP within {ROUND_TIMEOUT:?}",
                watch.pending()
            );
        }
    }
    let cpu = hubs_cpu(hubs)?.saturating_sub(cpu_before);
    let deltas_after = total(&scrape(http, hubs).await, DELTAS) as u64;
    Ok(LoadCost {
        cpu_s: cpu.as_secs_f64(),
        deltas: deltas_after.saturating_sub(deltas_before),
    })
}

/// Kills the busiest replica, changes every status to `round` at once, and
/// times the survivors' recovery.
async fn fail_over(
    http: &MetricsClient,
    hubs: &mut [Hub],
    pools: &mut AgentPools,
    watch: &KcpWatch,
    agents: usize,
    shards: u16,
    round: i64,
) -> anyhow::Result<Failover> {
    let held: Vec<u64> = column(&scrape(http, hubs).await, SHARDS_HELD)
        .into_iter()
        .map(|v| v.unwrap_or(0.0) as u64)
        .collect();
    let index = busiest(&held).with_context(|| format!("no replica holds a shard: {held:?}"))?;
    let hub = hubs.get_mut(index).context("no such replica")?;
    let killed = hub.identity.clone();
    let killed_shards = held.get(index).copied().unwrap_or(0);
    eprintln!(
        "  shards held {held:?}: killing {killed} ({killed_shards} shards), changing every status ..."
    );
    let killed_at = Instant::now();
    if let Some(process) = hub.process.take() {
        process.crash().await;
    }
    for index in 0..agents {
        watch.expect(index, round, killed_at);
    }
    pools.change(round, CHANGE_TIMEOUT).await?;
    let (mut shards_again, mut all_in_kcp) = (None, None);
    let mut scraped_at: Option<Instant> = None;
    loop {
        let elapsed = killed_at.elapsed();
        if shards_again.is_none() && scraped_at.is_none_or(|at| at.elapsed() >= SCRAPE_EVERY) {
            scraped_at = Some(Instant::now());
            let survivors = total(&scrape(http, hubs).await, SHARDS_HELD);
            if survivors as u64 >= u64::from(shards) {
                shards_again = Some(elapsed.as_secs_f64());
            }
        }
        if all_in_kcp.is_none() && watch.pending() == 0 {
            all_in_kcp = Some(elapsed.as_secs_f64());
        }
        if (shards_again.is_some() && all_in_kcp.is_some()) || elapsed >= RECOVERY_TIMEOUT {
            break;
        }
        if let Some(trouble) = pools.trouble().or_else(|| exited_hub(hubs)) {
            anyhow::bail!("after the kill: {trouble}");
        }
        tokio::time::sleep(SAMPLE).await;
    }
    Ok(Failover {
        killed,
        killed_shards,
        shards_held_again_s: shards_again,
        all_in_kcp_s: all_in_kcp,
        lost: watch.pending() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_busiest_holds_most_and_the_first_of_equals_wins() {
        assert_eq!(busiest(&[5, 6, 5]), Some(1));
        assert_eq!(busiest(&[6, 5, 6]), Some(0));
        assert_eq!(busiest(&[0, 0, 1]), Some(2));
        assert_eq!(busiest(&[0, 0]), None);
        assert_eq!(busiest(&[]), None);
    }

    #[test]
    fn shards_count_as_balanced_once_all_are_held_and_spread() {
        assert!(balanced(&[6, 5, 5], 16));
        assert!(!balanced(&[16, 0, 0], 16));
        assert!(!balanced(&[6, 5, 4], 16));
        assert!(!balanced(&[10, 5, 1], 16) && balanced(&[16], 16));
    }

    #[test]
    fn cost_per_million_and_overhead() {
        let single = LoadCost {
            cpu_s: 2.0,
            deltas: 1_000_000,
        };
        assert_eq!(single.per_million(), 2.0);
        assert_eq!(
            LoadCost {
                cpu_s: 1.0,
                deltas: 0
            }
            .per_million(),
            0.0
        );
        let report = FailoverReport {
            agents: 3,
            replicas: 3,
            shards: 16,
            lease: LeaseTimings::hub_defaults(),
            single,
            replicated: Some(LoadCost {
                cpu_s: 1.2,
                deltas: 500_000,
            }),
            failover: None,
        };
        assert!(report.overhead().is_some_and(|r| (r - 1.2).abs() < 1e-9));
        let alone = FailoverReport {
            replicated: None,
            ..report
        };
        assert_eq!(alone.overhead(), None);
    }

    #[test]
    fn recovery_needs_both_shards_and_kcp() {
        let failover = Failover {
            killed: "hub-1".into(),
            killed_shards: 6,
            shards_held_again_s: Some(17.5),
            all_in_kcp_s: Some(18.25),
            lost: 0,
        };
        assert_eq!(failover.recovered_s(), 18.25);
        let stuck = Failover {
            all_in_kcp_s: None,
            ..failover
        };
        assert_eq!(stuck.recovered_s(), RECOVERY_TIMEOUT.as_secs_f64());
    }

    #[test]
    fn replicas_get_the_agreed_flags_and_agents_every_url() {
        let flags = replica_flags("hub-2", Path::new("/k/kcp.kubeconfig"), 16);
        assert_eq!(
            flags.join(" "),
            "--replicas-lease-namespace default --replicas-kubeconfig /k/kcp.kubeconfig --replicas-identity hub-2 --shards 16"
        );
        let tunnels = ["127.0.0.1:1".parse(), "127.0.0.1:2".parse()]
            .into_iter()
            .collect::<Result<Vec<std::net::SocketAddr>, _>>()
            .unwrap_or_default();
        assert_eq!(hub_urls(&tunnels), "wss://127.0.0.1:1,wss://127.0.0.1:2");
    }

    #[test]
    fn the_lease_timings_are_the_hubs_defaults() {
        let lease = LeaseTimings::hub_defaults();
        assert_eq!(lease.duration, Duration::from_secs(15));
        assert_eq!(lease.renew_deadline, Duration::from_secs(10));
        assert_eq!(lease.retry_period, Duration::from_secs(2));
    }
}
