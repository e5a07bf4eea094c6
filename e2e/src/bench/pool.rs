//! Agent pools: simulated agents ([`super::simulated`]) in child processes,
//! so that more of them fit than one process's descriptors allow.
//!
//! RLIMIT_NOFILE's hard limit bounds one process (20,000 on the machine the
//! project is built on, and raising it needs CAP_SYS_RESOURCE); an agent
//! talking to three hub replicas holds three tunnels. So a scenario starts
//! `uplink-e2e bench-agent-pool` (hidden) once per [`MAX_PER_POOL`] agents
//! and drives each over its stdin and stdout, one JSON object a line:
//!
//! - commands (stdin): `{"cmd":"change","round":N}` (every agent reports its
//!   object's status with counter `N`), `{"cmd":"stop"}` (every agent says
//!   goodbye, the pool exits). A closed stdin means stop too: a pool never
//!   outlives the scenario that started it.
//! - reports (stdout): `ready` once every agent runs, `status` every
//!   [`STATUS_EVERY`] (agents with a session, sessions, reconnects, unacked
//!   outbox entries), `changed` once a round's events are queued in every
//!   agent, `failed` when an agent ended on its own, `stopped` at the end.
//!
//! Each pool is in a process group of its own and killed when dropped; every
//! wait on one is bounded.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use uplink_agent::ReconnectSettings;

use super::simulated::{SimulatedAgents, SimulatedSettings, status};
use crate::demo::launch::duration_flag;
use crate::demo::parse_duration;

/// Agents per pool process: three tunnels each stay well within 20,000
/// descriptors.
pub const MAX_PER_POOL: usize = 5_000;
/// How often a pool reports its agents' state.
pub const STATUS_EVERY: Duration = Duration::from_millis(200);
/// How long one command may take to be written to a pool.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// `uplink-e2e bench-agent-pool`: simulated agents `<prefix>-<first>` ..
/// `<prefix>-<first + count - 1>`, driven over stdin and stdout.
#[derive(Debug, Clone, clap::Args)]
pub struct PoolArgs {
    /// The hub's tunnel URL(s), as the agent's `--hub-url` takes them.
    #[arg(long)]
    pub hub_url: String,
    /// Holds `ca.crt` and `<cluster>.crt`/`.key` for every agent.
    #[arg(long)]
    pub pki: PathBuf,
    /// The agents' names: `<prefix>-<index>`.
    #[arg(long)]
    pub prefix: String,
    #[arg(long)]
    pub first: usize,
    #[arg(long)]
    pub count: usize,
    /// Agent `i`'s objects live in workspace [`workspace_of`]`(i, workspaces)`.
    #[arg(long, default_value_t = 1)]
    pub workspaces: usize,
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub heartbeat: Duration,
}

/// What a pool is told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum PoolCommand {
    /// Every agent reports its one object with status counter `round`.
    Change {
        round: i64,
    },
    Stop,
}

/// What a pool says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum PoolReport {
    Ready { agents: usize },
    Status(PoolStatus),
    Changed { round: i64 },
    Failed { error: String },
    Stopped,
}

/// A pool's agents right now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolStatus {
    /// Agents with at least one session established.
    pub connected: usize,
    /// Sessions established, all agents together (the agents' `connected`
    /// gauges summed: one per hub replica once every session is up).
    pub sessions: i64,
    /// Connection attempts after each agent's first, summed.
    pub reconnects: u64,
    /// Outbox entries not acknowledged yet, summed.
    pub unacked: i64,
}

impl PoolCommand {
    /// The line that carries it, newline included.
    pub fn line(&self) -> String {
        // A unit or integer field: serializing cannot fail.
        serde_json::to_string(self).unwrap_or_default() + "\n"
    }

    pub fn parse(line: &str) -> anyhow::Result<PoolCommand> {
        serde_json::from_str(line.trim()).with_context(|| format!("not a pool command: {line:?}"))
    }
}

impl PoolReport {
    /// The line that carries it, without the newline.
    pub fn line(&self) -> String {
        // Strings and numbers only: serializing cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// A report, or `None` for anything else a pool might print.
    pub fn parse(line: &str) -> Option<PoolReport> {
        serde_json::from_str(line.trim()).ok()
    }
}

/// The name of agent `index`.
pub fn agent_name(prefix: &str, index: usize) -> String {
    format!("{prefix}-{index}")
}

/// The KCP workspace of agent `index`'s objects, dealt round-robin over
/// `workspaces` workspaces `root:bench:w-NN` (the hub shards by workspace).
pub fn workspace_of(index: usize, workspaces: usize) -> String {
    format!("root:bench:w-{:02}", index % workspaces.max(1))
}

/// Every workspace [`workspace_of`] deals over.
pub fn workspaces(count: usize) -> Vec<String> {
    (0..count.max(1)).map(|i| workspace_of(i, count)).collect()
}

/// How `agents` agents split into pools of at most `per_pool`: `(first, count)`.
pub fn split(agents: usize, per_pool: usize) -> Vec<(usize, usize)> {
    let per_pool = per_pool.max(1);
    (0..agents)
        .step_by(per_pool)
        .map(|first| (first, per_pool.min(agents - first)))
        .collect()
}

/// `uplink-e2e bench-agent-pool`: runs the agents until told to stop or
/// stdin closes.
pub async fn serve(args: PoolArgs) -> anyhow::Result<()> {
    let limit = super::connections::raise_fd_limit(std::process::id()).await;
    eprintln!("agent pool: descriptor limit {limit:?}");
    let clusters: Vec<(String, String)> = (args.first..args.first + args.count)
        .map(|i| {
            (
                agent_name(&args.prefix, i),
                workspace_of(i, args.workspaces),
            )
        })
        .collect();
    let settings = SimulatedSettings {
        hub_url: args.hub_url.clone(),
        pki: args.pki.clone(),
        heartbeat: args.heartbeat,
        reconnect: ReconnectSettings::default(),
        objects: 1,
    };
    let mut agents = match SimulatedAgents::start_in(&clusters, &settings).await {
        Ok(agents) => agents,
        Err(error) => {
            say(&PoolReport::Failed {
                error: format!("{error:#}"),
            });
            return Err(error);
        }
    };
    say(&PoolReport::Ready {
        agents: agents.agents.len(),
    });
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut ticks = tokio::time::interval(STATUS_EVERY);
    let mut failed = false;
    loop {
        tokio::select! {
            line = lines.next_line() => {
                let line = match line {
                    Ok(Some(line)) => line,
                    // Closed or unreadable: the scenario is gone.
                    Ok(None) | Err(_) => break,
                };
                match PoolCommand::parse(&line) {
                    Ok(PoolCommand::Stop) => break,
                    Ok(PoolCommand::Change { round }) => {
                        for agent in &agents.agents {
                            // An agent that stopped is reported by `failed`.
                            let _ = agent.events.send(agent.applied(0, status(round))).await;
                        }
                        say(&PoolReport::Changed { round });
                    }
                    Err(error) => eprintln!("agent pool: {error:#}"),
                }
            }
            _ = ticks.tick() => {
                say(&PoolReport::Status(PoolStatus {
                    connected: agents.connected(),
                    sessions: agents.agents.iter().map(|a| a.metrics.connected.get()).sum(),
                    reconnects: agents.reconnects(),
                    unacked: agents.unacked(),
                }));
                if !failed && let Some(error) = agents.failed() {
                    failed = true;
                    say(&PoolReport::Failed { error });
                }
            }
        }
    }
    agents.stop().await;
    say(&PoolReport::Stopped);
    Ok(())
}

/// One report on stdout (line-buffered: the line goes out whole).
fn say(report: &PoolReport) {
    println!("{}", report.line());
}

/// What the scenario knows of one pool, from its reports.
#[derive(Debug, Clone, Default)]
struct PoolState {
    ready: Option<usize>,
    status: PoolStatus,
    changed: Option<i64>,
    failed: Option<String>,
    /// Its stdout closed: it exited or is about to.
    closed: bool,
}

impl PoolState {
    fn apply(&mut self, report: PoolReport) {
        match report {
            PoolReport::Ready { agents } => self.ready = Some(agents),
            PoolReport::Status(status) => self.status = status,
            PoolReport::Changed { round } => {
                self.changed = Some(self.changed.map_or(round, |r| r.max(round)));
            }
            PoolReport::Failed { error } => self.failed = self.failed.take().or(Some(error)),
            PoolReport::Stopped => {}
        }
    }
}

/// One pool process.
#[derive(Debug)]
struct AgentPool {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    state: Arc<Mutex<PoolState>>,
    reader: JoinHandle<()>,
    log: PathBuf,
}

impl AgentPool {
    fn spawn(exe: &Path, args: &PoolArgs, log: &Path) -> anyhow::Result<AgentPool> {
        let stderr = std::fs::File::create(log)
            .with_context(|| format!("creating the log file {}", log.display()))?;
        let mut command = Command::new(exe);
        command
            .arg("bench-agent-pool")
            .arg("--hub-url")
            .arg(&args.hub_url)
            .arg("--pki")
            .arg(&args.pki)
            .arg("--prefix")
            .arg(&args.prefix)
            .arg("--first")
            .arg(args.first.to_string())
            .arg("--count")
            .arg(args.count.to_string())
            .arg("--workspaces")
            .arg(args.workspaces.to_string())
            .arg("--heartbeat")
            .arg(duration_flag(args.heartbeat))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .process_group(0)
            .kill_on_drop(true);
        let name = format!("agent pool {}..{}", args.first, args.first + args.count);
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {name} ({})", exe.display()))?;
        let stdin = child.stdin.take();
        let stdout = child
            .stdout
            .take()
            .with_context(|| format!("{name} has no stdout"))?;
        let state = Arc::new(Mutex::new(PoolState::default()));
        let reader = tokio::spawn({
            let state = Arc::clone(&state);
            async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(report) = PoolReport::parse(&line) {
                        state
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .apply(report);
                    }
                }
                state.lock().unwrap_or_else(PoisonError::into_inner).closed = true;
            }
        });
        Ok(AgentPool {
            name,
            child,
            stdin,
            state,
            reader,
            log: log.to_owned(),
        })
    }

    fn state(&self) -> PoolState {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    async fn send(&mut self, command: &PoolCommand) -> anyhow::Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .with_context(|| format!("{}: stdin closed", self.name))?;
        tokio::time::timeout(SEND_TIMEOUT, stdin.write_all(command.line().as_bytes()))
            .await
            .with_context(|| format!("{}: a command took over {SEND_TIMEOUT:?}", self.name))?
            .with_context(|| format!("{}: writing a command", self.name))
    }

    /// What went wrong with it, if anything did.
    fn trouble(&mut self) -> Option<String> {
        let state = self.state();
        let why = if let Some(error) = state.failed {
            error
        } else if let Ok(Some(status)) = self.child.try_wait() {
            format!("exited ({status})")
        } else if state.closed {
            "closed its stdout".to_owned()
        } else {
            return None;
        };
        Some(format!(
            "{}: {why}; the end of its log ({}):\n{}",
            self.name,
            self.log.display(),
            crate::demo::processes::log_tail(&self.log, 10)
        ))
    }

    /// Asks it to stop, waits up to `grace`, then kills it.
    async fn stop(mut self, grace: Duration) {
        let _ = self.send(&PoolCommand::Stop).await;
        drop(self.stdin.take());
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        self.reader.abort();
    }
}

impl Drop for AgentPool {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// What every pool of a scenario runs.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// `uplink-e2e` itself.
    pub exe: PathBuf,
    /// Comma-separated tunnel URLs.
    pub hub_url: String,
    pub pki: PathBuf,
    pub prefix: String,
    pub agents: usize,
    pub workspaces: usize,
    pub heartbeat: Duration,
    /// Where each pool's log goes (`<logs>/<label>-<n>.log`).
    pub logs: PathBuf,
    pub label: String,
}

/// Every pool of a scenario; killed when dropped.
#[derive(Debug)]
pub struct AgentPools {
    pools: Vec<AgentPool>,
}

impl AgentPools {
    /// Starts `settings.agents` agents in pools of at most [`MAX_PER_POOL`]
    /// and waits (up to `timeout`) until every pool says its agents run.
    pub async fn start(settings: &PoolSettings, timeout: Duration) -> anyhow::Result<AgentPools> {
        let mut pools = Vec::new();
        for (n, (first, count)) in split(settings.agents, MAX_PER_POOL).into_iter().enumerate() {
            let args = PoolArgs {
                hub_url: settings.hub_url.clone(),
                pki: settings.pki.clone(),
                prefix: settings.prefix.clone(),
                first,
                count,
                workspaces: settings.workspaces,
                heartbeat: settings.heartbeat,
            };
            let log = settings.logs.join(format!("{}-{n}.log", settings.label));
            pools.push(AgentPool::spawn(&settings.exe, &args, &log)?);
        }
        let mut pools = AgentPools { pools };
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(trouble) = pools.trouble() {
                anyhow::bail!("{trouble}");
            }
            let ready: usize = pools.pools.iter().filter_map(|p| p.state().ready).sum();
            if pools.pools.iter().all(|p| p.state().ready.is_some()) {
                anyhow::ensure!(
                    ready == settings.agents,
                    "the pools run {ready} agents of {}",
                    settings.agents
                );
                return Ok(pools);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the agent pools did not start within {timeout:?} ({ready} agents ready)"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The pools' latest reports, summed.
    pub fn status(&self) -> PoolStatus {
        self.pools
            .iter()
            .map(|p| p.state().status)
            .fold(PoolStatus::default(), |a, b| PoolStatus {
                connected: a.connected + b.connected,
                sessions: a.sessions + b.sessions,
                reconnects: a.reconnects + b.reconnects,
                unacked: a.unacked + b.unacked,
            })
    }

    /// The first pool in trouble (failed agent, exited), with why.
    pub fn trouble(&mut self) -> Option<String> {
        self.pools.iter_mut().find_map(AgentPool::trouble)
    }

    /// Tells every agent to report counter `round`, and waits (up to
    /// `timeout`) until every pool has queued it.
    pub async fn change(&mut self, round: i64, timeout: Duration) -> anyhow::Result<()> {
        for pool in &mut self.pools {
            pool.send(&PoolCommand::Change { round }).await?;
        }
        let deadline = Instant::now() + timeout;
        loop {
            if self
                .pools
                .iter()
                .all(|p| p.state().changed.is_some_and(|r| r >= round))
            {
                return Ok(());
            }
            if let Some(trouble) = self.trouble() {
                anyhow::bail!("{trouble}");
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the pools did not queue round {round} within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops every pool (each agent says goodbye), `grace` for each.
    pub async fn stop(self, grace: Duration) {
        futures::future::join_all(self.pools.into_iter().map(|p| p.stop(grace))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_as_lines() {
        let change = PoolCommand::Change { round: 7 };
        assert_eq!(change.line(), "{\"cmd\":\"change\",\"round\":7}\n");
        assert_eq!(PoolCommand::parse(&change.line()).ok(), Some(change));
        assert_eq!(
            PoolCommand::parse("{\"cmd\":\"stop\"}").ok(),
            Some(PoolCommand::Stop)
        );
        assert!(PoolCommand::parse("change 7").is_err());
        assert!(PoolCommand::parse("{\"cmd\":\"explode\"}").is_err());
    }

    #[test]
    fn reports_round_trip_and_other_lines_are_ignored() {
        let status = PoolReport::Status(PoolStatus {
            connected: 3,
            sessions: 9,
            reconnects: 1,
            unacked: 2,
        });
        assert_eq!(PoolReport::parse(&status.line()), Some(status));
        assert_eq!(
            PoolReport::parse("{\"event\":\"ready\",\"agents\":5}"),
            Some(PoolReport::Ready { agents: 5 })
        );
        assert_eq!(
            PoolReport::parse(&PoolReport::Stopped.line()),
            Some(PoolReport::Stopped)
        );
        assert_eq!(PoolReport::parse("agent pool: descriptor limit"), None);
        assert_eq!(PoolReport::parse("{\"event\":\"other\"}"), None);
    }

    #[test]
    fn the_state_keeps_the_highest_round_and_the_first_failure() {
        let mut state = PoolState::default();
        state.apply(PoolReport::Changed { round: 3 });
        state.apply(PoolReport::Changed { round: 2 });
        state.apply(PoolReport::Failed { error: "a".into() });
        state.apply(PoolReport::Failed { error: "b".into() });
        state.apply(PoolReport::Ready { agents: 4 });
        assert_eq!(state.changed, Some(3));
        assert_eq!(state.failed.as_deref(), Some("a"));
        assert_eq!(state.ready, Some(4));
    }

    #[test]
    fn agents_split_into_bounded_pools() {
        assert_eq!(split(10_000, 5_000), [(0, 5_000), (5_000, 5_000)]);
        assert_eq!(split(300, 5_000), [(0, 300)]);
        assert_eq!(split(7, 3), [(0, 3), (3, 3), (6, 1)]);
        assert!(split(0, 5).is_empty());
    }

    #[test]
    fn workspaces_are_dealt_round_robin() {
        assert_eq!(workspace_of(0, 64), "root:bench:w-00");
        assert_eq!(workspace_of(65, 64), "root:bench:w-01");
        assert_eq!(workspace_of(5, 0), "root:bench:w-00");
        assert_eq!(workspaces(3).len(), 3);
        assert_eq!(agent_name("fo", 12), "fo-12");
    }
}
