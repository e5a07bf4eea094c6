//! `uplink-e2e bench`: Uplink measured as it runs, real processes over real
//! mutual-TLS WebSockets on loopback, each figure printed beside its goal and,
//! where a scenario has one, a baseline measured in the same run.
//!
//! The scenarios ([`Scenario`]) each start a fleet of their own
//! ([`fleet::Fleet`]): KCP and the clusters as embedded API servers, the real
//! `uplink-hub` and `uplink-agent` binaries as child processes. A scenario
//! that fails says so in the table and is left out of the JSON: the run
//! never prints a number it did not measure.

pub mod agent;
pub mod coalesce;
pub mod connections;
pub mod downstream;
pub mod failover;
pub mod fleet;
pub mod ingest;
pub mod kcpwatch;
pub mod latency;
pub mod placed;
pub mod pool;
pub mod procstat;
pub mod simulated;
pub mod sink;
pub mod storm;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;

use crate::binaries::{self, Profile};
use crate::demo::parse_duration;
use agent::{AgentReport, AgentSettings};
use coalesce::{CoalesceReport, CoalesceSettings};
use connections::{ConnectionsReport, ConnectionsSettings};
use downstream::{DownstreamReport, DownstreamSettings};
use failover::{FailoverReport, FailoverSettings};
use fleet::Binaries;
use ingest::{IngestReport, IngestSettings};
use latency::{LatencyReport, LatencySettings};
use storm::{StormReport, StormSettings};

/// One benchmark scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Scenario {
    /// Deltas acked per second, hub CPU and memory, against a bare TLS WebSocket server.
    Ingest,
    /// Time from a status write in a cluster to KCP's watch showing it.
    Latency,
    /// Time from a write in KCP to the cluster showing the object applied;
    /// KCP reads by the hub per change.
    Downstream,
    /// Many idle agents: hub memory per agent, time to connect, idle CPU.
    Connections,
    /// The hub killed and restarted under many agents.
    Storm,
    /// KCP writes for bursts of changes, against one write per watch event.
    Coalesce,
    /// One real agent watching many objects: memory and CPU.
    Agent,
    /// Hub replicas sharing the shards by Lease, the busiest SIGKILLed:
    /// time until every shard is held and every change in KCP; hub CPU per
    /// delta with replicas against one hub.
    Failover,
}

impl Scenario {
    pub const ALL: [Scenario; 8] = [
        Scenario::Ingest,
        Scenario::Latency,
        Scenario::Downstream,
        Scenario::Connections,
        Scenario::Storm,
        Scenario::Coalesce,
        Scenario::Agent,
        Scenario::Failover,
    ];

    /// The name in the command line, the table and the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Ingest => "ingest",
            Scenario::Latency => "latency",
            Scenario::Downstream => "downstream",
            Scenario::Connections => "connections",
            Scenario::Storm => "storm",
            Scenario::Coalesce => "coalesce",
            Scenario::Agent => "agent",
            Scenario::Failover => "failover",
        }
    }
}

/// `uplink-e2e bench [SCENARIO...]`: no scenario runs them all.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct BenchArgs {
    /// Scenarios to run; all when none is given.
    #[arg(value_enum)]
    pub scenarios: Vec<Scenario>,

    /// Every scenario small, in about two minutes.
    #[arg(long, env = "UPLINK_BENCH_QUICK")]
    pub quick: bool,

    /// Also write the figures as JSON to this file.
    #[arg(long, env = "UPLINK_BENCH_JSON")]
    pub json: Option<PathBuf>,

    /// Simulated agents (connections, storm, failover).
    #[arg(long, env = "UPLINK_BENCH_AGENTS")]
    pub agents: Option<usize>,

    /// Hub replicas (failover; default 3); 1 measures the single-hub baseline only,
    /// with nothing to fail over to.
    #[arg(long, env = "UPLINK_BENCH_REPLICAS")]
    pub replicas: Option<usize>,

    /// Objects the one agent watches (agent).
    #[arg(long, env = "UPLINK_BENCH_OBJECTS")]
    pub objects: Option<usize>,

    /// Changes per second (latency: status changes in the clusters;
    /// downstream: changes in KCP).
    #[arg(long, env = "UPLINK_BENCH_RATE")]
    pub rate: Option<u32>,

    /// How long load runs (latency, downstream), e.g. `30s`.
    #[arg(long, env = "UPLINK_BENCH_DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Downstream Events recorded about one object while the load runs
    /// (latency): the status latency beside a burst of events, and what
    /// KCP ends up showing of the burst.
    #[arg(long, env = "UPLINK_BENCH_EVENT_BURST", default_value_t = 0)]
    pub event_burst: usize,

    /// The `uplink-hub` binary; by default it is built and taken from beside this executable.
    #[arg(long, env = "UPLINK_BENCH_HUB_BIN")]
    pub hub_bin: Option<PathBuf>,

    /// The `uplink-agent` binary; by default it is built and taken from beside this executable.
    #[arg(long, env = "UPLINK_BENCH_AGENT_BIN")]
    pub agent_bin: Option<PathBuf>,
}

/// The sizes a run uses: the full-scale defaults, `--quick`'s, and the flags.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scale {
    pub clusters: usize,
    pub latency_objects: usize,
    pub rate: u32,
    pub duration: Duration,
    pub coalesce_objects: usize,
    pub bursts: u32,
    pub burst_len: u32,
    pub agent_objects: usize,
    pub agent_idle: Duration,
    pub agents: usize,
    pub connections_idle: Duration,
    pub ingest_agents: usize,
    pub ingest_objects: usize,
    pub ingest_window: Duration,
    /// Downstream Events about one object during the latency run.
    pub event_burst: usize,
    /// Simulated agents of the failover scenario (one object each).
    pub failover_agents: usize,
    /// Its load rounds (every status changed once each), per run.
    pub failover_rounds: u32,
    /// Its hub replicas.
    pub replicas: usize,
}

impl Scale {
    pub fn of(args: &BenchArgs) -> Scale {
        let base = if args.quick {
            Scale {
                clusters: 2,
                latency_objects: 50,
                rate: 200,
                duration: Duration::from_secs(10),
                coalesce_objects: 20,
                bursts: 3,
                burst_len: 10,
                agent_objects: 1_000,
                agent_idle: Duration::from_secs(5),
                agents: 200,
                connections_idle: Duration::from_secs(5),
                ingest_agents: 4,
                ingest_objects: 500,
                ingest_window: Duration::from_secs(5),
                event_burst: 0,
                failover_agents: 300,
                failover_rounds: 3,
                replicas: 3,
            }
        } else {
            Scale {
                clusters: 4,
                latency_objects: 200,
                rate: 1_000,
                duration: Duration::from_secs(30),
                coalesce_objects: 200,
                bursts: 5,
                burst_len: 20,
                agent_objects: 10_000,
                agent_idle: Duration::from_secs(20),
                agents: 10_000,
                connections_idle: Duration::from_secs(30),
                ingest_agents: 16,
                ingest_objects: 500,
                ingest_window: Duration::from_secs(20),
                event_burst: 0,
                failover_agents: 10_000,
                failover_rounds: 5,
                replicas: 3,
            }
        };
        Scale {
            agent_objects: args.objects.unwrap_or(base.agent_objects),
            agents: args.agents.unwrap_or(base.agents),
            rate: args.rate.unwrap_or(base.rate),
            duration: args.duration.unwrap_or(base.duration),
            event_burst: args.event_burst,
            failover_agents: args.agents.unwrap_or(base.failover_agents),
            replicas: args.replicas.unwrap_or(base.replicas).max(1),
            ..base
        }
    }
}

/// One figure of one scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    /// The key in the JSON.
    pub name: &'static str,
    pub value: f64,
    /// What we aim for, in words (`<= 500 ms`, `0`).
    pub goal: &'static str,
    pub baseline: Option<f64>,
    /// value / baseline, or the reverse where smaller is better; said by the scenario.
    pub ratio: Option<f64>,
}

impl Figure {
    fn new(name: &'static str, value: f64, goal: &'static str) -> Figure {
        Figure {
            name,
            value,
            goal,
            baseline: None,
            ratio: None,
        }
    }
}

/// How a scenario ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    Measured(Vec<Figure>),
    Failed(String),
}

/// Everything a run produced, in scenario order.
#[derive(Debug, Clone, Default)]
pub struct Results(pub Vec<(Scenario, Outcome)>);

impl IngestReport {
    pub fn figures(&self) -> Vec<Figure> {
        vec![
            Figure {
                baseline: Some(self.raw_ceiling_per_s),
                ratio: Some(self.ratio_to_raw()),
                ..Figure::new("deltas_per_s", self.deltas_per_s, ">= 250000")
            },
            Figure::new("raw_ceiling_per_s", self.raw_ceiling_per_s, "-"),
            Figure::new("ratio_to_raw", self.ratio_to_raw(), ">= 0.5"),
            Figure {
                baseline: Some(self.sink_cpu_s_per_million),
                ratio: Some(self.hub_cpu_to_sink()),
                ..Figure::new(
                    "hub_cpu_s_per_million",
                    self.hub_cpu_s_per_million,
                    "<= 2.0",
                )
            },
            Figure::new("sink_cpu_s_per_million", self.sink_cpu_s_per_million, "-"),
            Figure::new("hub_cpu_to_sink", self.hub_cpu_to_sink(), "<= 3"),
            Figure::new("hub_rss_mib", self.hub_rss_mib, "-"),
            Figure::new("agents", self.agents as f64, "-"),
            Figure::new("deltas_per_frame", self.deltas_per_frame, "-"),
            Figure::new("throttles", self.throttles as f64, "0"),
        ]
    }
}

impl StormReport {
    pub fn figures(&self) -> Vec<Figure> {
        vec![
            Figure::new("agents", self.agents as f64, "10000 at full scale"),
            Figure::new("all_connected_s", self.all_connected_s, "-"),
            Figure::new("all_synced_s", self.all_synced_s, "<= 60"),
            Figure::new("lost", self.lost as f64, "0"),
            Figure::new("attempts", self.attempts as f64, "-"),
            Figure::new("attempts_p10_s", self.attempts_p10_s, "spread by jitter"),
            Figure::new("attempts_p50_s", self.attempts_p50_s, "spread by jitter"),
            Figure::new("attempts_p90_s", self.attempts_p90_s, "spread by jitter"),
        ]
    }
}

impl LatencyReport {
    pub fn figures(&self) -> Vec<Figure> {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        vec![
            Figure::new("rate_per_s", self.rate_per_s, "the requested rate"),
            Figure::new("p50_ms", ms(self.p50), "-"),
            Figure::new("p99_ms", ms(self.p99), "<= 50 at 1000/s and at 10000/s"),
            Figure::new("max_ms", ms(self.max), "-"),
            Figure::new("lost", self.lost as f64, "0"),
        ]
        .into_iter()
        .chain(self.events.iter().flat_map(|e| {
            [
                Figure::new("events_recorded", e.recorded as f64, "-"),
                Figure::new(
                    "event_series_in_kcp",
                    e.series as f64,
                    "a handful (2 reasons: 2)",
                ),
                Figure::new(
                    "event_occurrences_in_kcp",
                    e.occurrences as f64,
                    "events_recorded",
                ),
                Figure::new("events_settled_s", e.settled.as_secs_f64(), "-"),
            ]
        }))
        .collect()
    }
}

impl DownstreamReport {
    pub fn figures(&self) -> Vec<Figure> {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        vec![
            Figure::new("rate_per_s", self.rate_per_s, "the requested rate"),
            Figure::new("p50_ms", ms(self.p50), "-"),
            Figure::new("p99_ms", ms(self.p99), "<= 100 at 1000/s"),
            Figure::new("max_ms", ms(self.max), "-"),
            Figure::new("lost", self.lost as f64, "0"),
            Figure::new("changes", self.changes as f64, "-"),
            Figure::new("downstream_events", self.downstream_events as f64, "-"),
            Figure::new(
                "hub_kcp_reads_per_change",
                self.hub_reads_per_change(),
                "0 beyond the watch",
            ),
            Figure::new("hub_kcp_reads", self.hub_kcp_reads as f64, "0"),
            Figure::new("hub_kcp_other_reads", self.hub_kcp_other_reads as f64, "-"),
            Figure::new("hub_kcp_watches", self.hub_kcp_watches as f64, "-"),
        ]
    }
}

impl ConnectionsReport {
    pub fn figures(&self) -> Vec<Figure> {
        vec![
            Figure::new("agents", self.agents as f64, "30000 with --agents 30000"),
            Figure::new("hub_rss_per_agent_kib", self.hub_rss_per_agent_kib, "<= 40"),
            Figure::new("connect_s", self.connect_s, "-"),
            Figure::new(
                "idle_hub_cpu_millicores",
                self.idle_hub_cpu_millicores,
                "<= 50 at 10000",
            ),
        ]
    }
}

impl AgentReport {
    pub fn figures(&self) -> Vec<Figure> {
        vec![
            Figure::new("objects", self.objects as f64, "10000 at full scale"),
            Figure::new("rss_mib", self.rss_mib, "<= 20"),
            Figure::new("idle_cpu_millicores", self.idle_cpu_millicores, "<= 5"),
            Figure::new("cpu_us_per_change", self.cpu_us_per_change, "-"),
        ]
    }
}

impl FailoverReport {
    pub fn figures(&self) -> Vec<Figure> {
        let single = self.single.per_million();
        let mut figures = vec![
            Figure::new("agents", self.agents as f64, "10000 at full scale"),
            Figure::new("replicas", self.replicas as f64, "3"),
        ];
        if let Some(failover) = &self.failover {
            figures.extend([
                Figure::new("shards", f64::from(self.shards), "16"),
                Figure::new(
                    "lease_duration_s",
                    self.lease.duration.as_secs_f64(),
                    "the hub's default",
                ),
                Figure::new(
                    "renew_deadline_s",
                    self.lease.renew_deadline.as_secs_f64(),
                    "the hub's default",
                ),
                Figure::new(
                    "retry_period_s",
                    self.lease.retry_period.as_secs_f64(),
                    "the hub's default",
                ),
                Figure::new("killed_shards", failover.killed_shards as f64, "-"),
                Figure::new(
                    "shards_held_again_s",
                    failover
                        .shards_held_again_s
                        .unwrap_or_else(|| failover.recovered_s()),
                    "-",
                ),
                Figure::new(
                    "all_in_kcp_s",
                    failover
                        .all_in_kcp_s
                        .unwrap_or_else(|| failover.recovered_s()),
                    "-",
                ),
                Figure::new("recovered_s", failover.recovered_s(), "<= 20"),
                Figure::new("lost", failover.lost as f64, "0"),
            ]);
        }
        figures.push(Figure::new("single_hub_cpu_s_per_million", single, "-"));
        figures.push(Figure::new("single_deltas", self.single.deltas as f64, "-"));
        if let (Some(replicated), Some(overhead)) = (self.replicated, self.overhead()) {
            figures.extend([
                Figure {
                    baseline: Some(single),
                    ratio: Some(overhead),
                    ..Figure::new(
                        "replicated_hub_cpu_s_per_million",
                        replicated.per_million(),
                        "-",
                    )
                },
                Figure::new("replicated_deltas", replicated.deltas as f64, "-"),
                Figure::new("sharding_overhead", overhead, "<= 1.2"),
            ]);
        }
        figures
    }
}

impl CoalesceReport {
    pub fn figures(&self) -> Vec<Figure> {
        vec![
            Figure::new("changes", self.changes as f64, "-"),
            Figure {
                baseline: Some(self.per_event_writes as f64),
                ratio: Some(self.ratio()),
                ..Figure::new("uplink_writes", self.uplink_writes as f64, "< changes")
            },
            Figure::new("per_event_writes", self.per_event_writes as f64, "-"),
            Figure::new("ratio", self.ratio(), ">= 10"),
            Figure::new("unchanged_writes", self.unchanged_writes as f64, "0"),
        ]
    }
}

/// Runs the chosen scenarios, prints the table and writes the JSON. Fails
/// when a scenario failed (after printing what the others measured).
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let scale = Scale::of(&args);
    let scenarios = if args.scenarios.is_empty() {
        Scenario::ALL.to_vec()
    } else {
        let mut chosen = args.scenarios.clone();
        chosen.sort();
        chosen.dedup();
        chosen
    };
    let binaries = find_binaries(&args).await?;
    let interrupted = tokio_util::sync::CancellationToken::new();
    let _signals = AbortOnDrop(tokio::spawn(crate::demo::cancel_on_signal(
        interrupted.clone(),
    )));
    let mut results = Results::default();
    for scenario in scenarios {
        eprintln!("== {}: running ...", scenario.name());
        let started = std::time::Instant::now();
        // Interrupted, the scenario is dropped where it stands: its child
        // processes are killed with it (kill on drop), none is left behind.
        let outcome = tokio::select! {
            outcome = run_scenario(scenario, &binaries, scale) => outcome,
            () = interrupted.cancelled() => {
                eprintln!("== {}: interrupted; its processes are stopped", scenario.name());
                anyhow::bail!("interrupted");
            }
        };
        let what = match &outcome {
            Outcome::Measured(_) => "done".to_owned(),
            Outcome::Failed(error) => format!("FAILED: {error}"),
        };
        eprintln!(
            "== {}: {what} ({:.1}s)",
            scenario.name(),
            started.elapsed().as_secs_f64()
        );
        results.0.push((scenario, outcome));
    }
    println!("{}", results.table());
    if let Some(path) = &args.json {
        let json = results.json(machine(), commit());
        let text = serde_json::to_string_pretty(&json)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        eprintln!("figures written to {}", path.display());
    }
    let failed: Vec<&str> = results
        .0
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Failed(_)))
        .map(|(s, _)| s.name())
        .collect();
    anyhow::ensure!(failed.is_empty(), "scenarios failed: {}", failed.join(", "));
    Ok(())
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The failover scenario's workspaces: many, so that the objects spread
/// over every shard.
const FAILOVER_WORKSPACES: usize = 64;
/// The failover scenario's shard count (the hub's default).
const FAILOVER_SHARDS: u16 = 16;

/// Runs one scenario; its errors become [`Outcome::Failed`].
pub async fn run_scenario(scenario: Scenario, binaries: &Binaries, scale: Scale) -> Outcome {
    let measured = match scenario {
        Scenario::Latency => latency::run(
            binaries,
            LatencySettings {
                clusters: scale.clusters,
                objects: scale.latency_objects,
                rate: scale.rate,
                duration: scale.duration,
                event_burst: scale.event_burst,
            },
        )
        .await
        .map(|r| r.figures()),
        Scenario::Downstream => downstream::run(
            binaries,
            DownstreamSettings {
                clusters: scale.clusters,
                objects: scale.latency_objects,
                rate: scale.rate,
                duration: scale.duration,
            },
        )
        .await
        .map(|r| r.figures()),
        Scenario::Coalesce => coalesce::run(
            binaries,
            CoalesceSettings {
                clusters: scale.clusters,
                objects: scale.coalesce_objects,
                bursts: scale.bursts,
                burst_len: scale.burst_len,
            },
        )
        .await
        .map(|r| r.figures()),
        Scenario::Agent => agent::run(
            binaries,
            AgentSettings {
                objects: scale.agent_objects,
                idle: scale.agent_idle,
            },
        )
        .await
        .map(|r| r.figures()),
        Scenario::Connections => connections::run(
            binaries,
            ConnectionsSettings {
                agents: scale.agents,
                heartbeat: Duration::from_secs(10),
                idle: scale.connections_idle,
            },
        )
        .await
        .map(|r| r.figures()),
        Scenario::Ingest => ingest::run(
            binaries,
            IngestSettings {
                agents: scale.ingest_agents,
                objects_per_agent: scale.ingest_objects,
                duration: scale.ingest_window,
            },
        )
        .await
        .map(|r| r.figures()),
        Scenario::Failover => failover::run(
            binaries,
            FailoverSettings {
                agents: scale.failover_agents,
                workspaces: FAILOVER_WORKSPACES,
                replicas: scale.replicas,
                shards: FAILOVER_SHARDS,
                rounds: scale.failover_rounds,
            },
        )
        .await
        .map(|r| r.figures()),
        Scenario::Storm => storm::run(
            binaries,
            StormSettings {
                agents: scale.agents,
            },
        )
        .await
        .map(|r| r.figures()),
    };
    match measured {
        Ok(figures) => Outcome::Measured(figures),
        Err(error) => Outcome::Failed(format!("{error:#}")),
    }
}

impl Results {
    /// The final table: scenario, figure, value, goal, baseline, ratio.
    pub fn table(&self) -> String {
        let mut rows = vec![[
            "scenario".to_owned(),
            "figure".to_owned(),
            "value".to_owned(),
            "goal".to_owned(),
            "baseline".to_owned(),
            "ratio".to_owned(),
        ]];
        let dash = || "-".to_owned();
        for (scenario, outcome) in &self.0 {
            let name = scenario.name().to_owned();
            match outcome {
                Outcome::Measured(figures) => {
                    for f in figures {
                        rows.push([
                            name.clone(),
                            f.name.to_owned(),
                            number(f.value),
                            f.goal.to_owned(),
                            f.baseline.map(number).unwrap_or_else(dash),
                            f.ratio.map(|r| format!("{r:.2}x")).unwrap_or_else(dash),
                        ]);
                    }
                }
                Outcome::Failed(error) => rows.push([
                    name,
                    "FAILED".to_owned(),
                    error.lines().next().unwrap_or_default().to_owned(),
                    dash(),
                    dash(),
                    dash(),
                ]),
            }
        }
        let mut widths = [0usize; 6];
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for (i, row) in rows.iter().enumerate() {
            let line: Vec<String> = row
                .iter()
                .zip(widths)
                .enumerate()
                .map(|(col, (cell, w))| {
                    // Numbers right-aligned, words left-aligned.
                    if col == 2 || col >= 4 {
                        format!("{cell:>w$}")
                    } else {
                        format!("{cell:<w$}")
                    }
                })
                .collect();
            let _ = writeln!(out, "{}", line.join("  ").trim_end());
            if i == 0 {
                let total = widths.iter().sum::<usize>() + 2 * (widths.len() - 1);
                let _ = writeln!(out, "{}", "-".repeat(total));
            }
        }
        out
    }

    /// `{"machine": {...}, "commit": "...", "scenarios": {NAME: {FIGURE: number}}}`;
    /// scenarios that measured nothing are left out.
    pub fn json(&self, machine: serde_json::Value, commit: String) -> serde_json::Value {
        let scenarios: BTreeMap<&str, BTreeMap<&str, f64>> = self
            .0
            .iter()
            .filter_map(|(scenario, outcome)| match outcome {
                Outcome::Measured(figures) => Some((
                    scenario.name(),
                    figures.iter().map(|f| (f.name, f.value)).collect(),
                )),
                _ => None,
            })
            .collect();
        serde_json::json!({ "machine": machine, "commit": commit, "scenarios": scenarios })
    }
}

/// A figure with as many decimals as it deserves.
fn number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{value:.0}")
    } else if value.abs() >= 100.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// The machine the figures come from: CPU model and count, memory, kernel.
pub fn machine() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    let cpus = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let memory_mib = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kib| kib.parse::<u64>().ok())
        .map(|kib| kib / 1024);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned());
    serde_json::json!({
        "cpu_model": cpu_model,
        "cpus": cpus,
        "memory_mib": memory_mib,
        "kernel": kernel,
        "os": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
        "profile": Profile::current().cargo_name(),
    })
}

/// `git rev-parse HEAD` of the working directory, or `unknown`.
pub fn commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The hub and agent binaries (the overrides, or built and found beside us)
/// and `uplink-e2e` itself.
pub async fn find_binaries(args: &BenchArgs) -> anyhow::Result<Binaries> {
    let paths = tokio::task::spawn_blocking(|| {
        binaries::locate_all(
            &["uplink-hub", "uplink-agent", "uplink-e2e"],
            Profile::current(),
        )
    })
    .await
    .context("the build task failed")??;
    let mut paths = paths.into_iter();
    let (Some(hub), Some(agent), Some(e2e)) = (paths.next(), paths.next(), paths.next()) else {
        anyhow::bail!("the binaries were not located");
    };
    Ok(Binaries {
        hub: args.hub_bin.clone().unwrap_or(hub),
        agent: args.agent_bin.clone().unwrap_or(agent),
        e2e,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn results() -> Results {
        Results(vec![
            (
                Scenario::Latency,
                Outcome::Measured(vec![Figure::new("p50_ms", 1.5, "<= 100")]),
            ),
            (
                Scenario::Storm,
                Outcome::Failed("the hub did not start".into()),
            ),
        ])
    }

    #[test]
    fn the_json_holds_measured_scenarios_only() {
        let json = results().json(serde_json::json!({"cpus": 2}), "abc".to_owned());
        assert_eq!(json["commit"], "abc");
        assert_eq!(json["machine"]["cpus"], 2);
        assert_eq!(json["scenarios"]["latency"]["p50_ms"], 1.5);
        assert!(json["scenarios"].get("storm").is_none());
    }

    #[test]
    fn the_table_says_what_was_not_measured() {
        let table = results().table();
        assert!(table.contains("p50_ms"), "{table}");
        assert!(table.contains("1.50"), "{table}");
        let storm = table.lines().find(|l| l.starts_with("storm"));
        assert!(
            storm.is_some_and(|l| l.contains("FAILED") && l.contains("did not start")),
            "{table}"
        );
    }

    #[test]
    fn quick_is_smaller_and_flags_win() {
        let full = Scale::of(&BenchArgs::default());
        let quick = Scale::of(&BenchArgs {
            quick: true,
            rate: Some(7),
            ..BenchArgs::default()
        });
        assert!(quick.latency_objects < full.latency_objects);
        assert!(quick.agent_objects < full.agent_objects);
        assert_eq!(quick.rate, 7);
        assert_eq!(full.rate, 1_000);
        assert_eq!((full.failover_agents, full.replicas), (10_000, 3));
        assert!(quick.failover_agents < full.failover_agents);
        let baseline_only = Scale::of(&BenchArgs {
            replicas: Some(1),
            agents: Some(40),
            ..BenchArgs::default()
        });
        assert_eq!(
            (baseline_only.failover_agents, baseline_only.replicas),
            (40, 1)
        );
    }

    #[test]
    fn failover_figures_say_the_overhead_against_its_goal() {
        use failover::{Failover, LeaseTimings, LoadCost};
        let report = FailoverReport {
            agents: 300,
            replicas: 3,
            shards: 16,
            lease: LeaseTimings::hub_defaults(),
            single: LoadCost {
                cpu_s: 1.0,
                deltas: 1_000,
            },
            replicated: Some(LoadCost {
                cpu_s: 1.5,
                deltas: 1_000,
            }),
            failover: Some(Failover {
                killed: "hub-0".into(),
                killed_shards: 6,
                shards_held_again_s: Some(16.0),
                all_in_kcp_s: None,
                lost: 3,
            }),
        };
        let figures = report.figures();
        let value = |name: &str| figures.iter().find(|f| f.name == name).map(|f| f.value);
        assert_eq!(value("sharding_overhead"), Some(1.5));
        assert_eq!(value("single_hub_cpu_s_per_million"), Some(1000.0));
        assert_eq!(value("lease_duration_s"), Some(15.0));
        assert_eq!(value("lost"), Some(3.0));
        // Never all in KCP: the recovery timeout, not a number it did not measure.
        assert_eq!(value("recovered_s"), Some(120.0));
        let alone = FailoverReport {
            replicas: 1,
            replicated: None,
            failover: None,
            ..report
        };
        let figures = alone.figures();
        assert!(figures.iter().all(|f| f.name != "sharding_overhead"));
        assert!(figures.iter().all(|f| f.name != "recovered_s"));
        assert!(figures.iter().all(|f| f.name != "lease_duration_s"));
    }

    #[test]
    fn machine_info_comes_from_proc() {
        let machine = machine();
        assert!(machine["cpus"].as_u64().is_some_and(|n| n > 0), "{machine}");
    }
}
