//! `connections`: many idle agents on one hub. The agents are the agent's
//! own library ([`uplink_agent::Agent`]) in this process, each with its own
//! certificate identity, TLS connection and session; their watch events are
//! synthetic (an empty, fully listed cluster), so no API server per agent is
//! needed. The hub is the real binary as a child process.
//!
//! Measured: the hub's resident memory per agent (after − before, over the
//! agents), the time until every agent is connected, and the hub's CPU while
//! the connected agents only heartbeat.
//!
//! Every in-process agent holds one descriptor here (its tunnel; they serve
//! no HTTP, their metrics are read in-process), so the number of agents is
//! capped by this process's RLIMIT_NOFILE, which is raised to its hard limit
//! first (`prlimit`).

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use tokio::time::Instant;
use uplink_agent::ReconnectSettings;

use super::fleet::{Binaries, deployments_only, hub_metric, metrics_client, one_source_fleet};
use super::procstat;
use super::simulated::{SimulatedAgents, SimulatedSettings, write_pki};
use crate::apiserver::{ApiServer, ApiServerConfig};
use crate::demo::launch::{self, Files};

/// Descriptors kept free for everything else in this process.
const SPARE_FDS: u64 = 1_000;
/// How long a child gets to exit after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// How much load.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionsSettings {
    /// Agents asked for; fewer run when descriptors do not allow them.
    pub agents: usize,
    pub heartbeat: Duration,
    /// How long the hub's CPU is watched with every agent idle.
    pub idle: Duration,
}

/// What was measured.
#[derive(Debug, Clone)]
pub struct ConnectionsReport {
    /// Agents that ran (and connected).
    pub agents: usize,
    pub hub_rss_per_agent_kib: f64,
    pub connect_s: f64,
    pub idle_hub_cpu_millicores: f64,
}

/// Runs the scenario.
pub async fn run(
    binaries: &Binaries,
    settings: ConnectionsSettings,
) -> anyhow::Result<ConnectionsReport> {
    let agents = agents_within_fd_limit(settings.agents).await;
    let dir = std::env::temp_dir().join(format!("uplink-bench-conn-{}", std::process::id()));
    let result = measure(binaries, settings, agents, &dir).await;
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("  logs kept in {}", dir.display());
    }
    result
}

async fn measure(
    binaries: &Binaries,
    settings: ConnectionsSettings,
    agents: usize,
    dir: &Path,
) -> anyhow::Result<ConnectionsReport> {
    let names: Vec<String> = (1..=agents).map(|i| format!("idle-{i}")).collect();
    let files = Files {
        pki: dir.join("pki"),
        kcp_kubeconfig: dir.join("kcp.kubeconfig"),
        logs: dir.join("logs"),
    };
    std::fs::create_dir_all(&files.logs)?;
    eprintln!("  issuing {agents} client certificates ...");
    write_pki(&files.pki, &names).await?;
    let kcp = ApiServer::start(ApiServerConfig::default())
        .await
        .context("starting KCP")?;
    kcp.write_kubeconfig(&files.kcp_kubeconfig, None)?;
    let mut hub_flags = one_source_fleet();
    hub_flags.extend(deployments_only());
    let (hub, addrs) =
        launch::start_hub_with(&binaries.hub, &files, settings.heartbeat, &hub_flags).await?;
    let outcome = async {
        let pid = hub.id().context("the hub is not running")?;
        raise_fd_limit(pid).await;
        let http = metrics_client();
        let before = procstat::sample(pid)?;

        eprintln!("  connecting {agents} agents ...");
        let started = Instant::now();
        let simulated = SimulatedAgents::start(
            &names,
            &SimulatedSettings {
                hub_url: format!("wss://{}", addrs.tunnel),
                pki: files.pki.clone(),
                heartbeat: settings.heartbeat,
                reconnect: ReconnectSettings::default(),
                objects: 0,
            },
        )
        .await?;
        let deadline =
            started + Duration::from_secs(60) + Duration::from_millis(agents as u64 * 20);
        loop {
            let connected = hub_metric(&http, addrs.http, "uplink_hub_agents_connected", &[])
                .await
                .unwrap_or(0.0);
            if connected as usize >= agents {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{connected} of {agents} agents connected in time"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let connect_s = started.elapsed().as_secs_f64();

        eprintln!("  idle for {:?} ...", settings.idle);
        let idle_from = procstat::sample(pid)?;
        let idle_start = Instant::now();
        tokio::time::sleep(settings.idle).await;
        let idle_to = procstat::sample(pid)?;
        let idle_cpu = idle_to.cpu.saturating_sub(idle_from.cpu);

        simulated.stop().await;

        Ok(ConnectionsReport {
            agents,
            hub_rss_per_agent_kib: idle_to.rss_bytes.saturating_sub(before.rss_bytes) as f64
                / 1024.0
                / agents as f64,
            connect_s,
            idle_hub_cpu_millicores: idle_cpu.as_secs_f64() / idle_start.elapsed().as_secs_f64()
                * 1000.0,
        })
    }
    .await;
    hub.stop(STOP_GRACE).await;
    kcp.shutdown().await;
    outcome
}

/// How many of `asked` in-process agents fit this process's descriptors
/// (one each, plus [`SPARE_FDS`]), after raising the limit; says so when
/// fewer fit.
pub async fn agents_within_fd_limit(asked: usize) -> usize {
    let limit = raise_fd_limit(std::process::id()).await;
    let agents = match limit {
        Some(limit) => asked.min(limit.saturating_sub(SPARE_FDS) as usize),
        None => asked,
    }
    .max(1);
    if agents < asked {
        eprintln!("  {agents} agents instead of {asked}: the descriptor limit is {limit:?}");
    }
    agents
}

/// Raises the soft RLIMIT_NOFILE of `pid` to its hard limit with `prlimit`
/// (the workspace forbids the `unsafe` a direct call needs). Returns the
/// soft limit in effect afterwards, when it can be read.
pub async fn raise_fd_limit(pid: u32) -> Option<u64> {
    let output = tokio::process::Command::new("prlimit")
        .args([
            "--pid",
            &pid.to_string(),
            "--nofile",
            "--raw",
            "--noheadings",
        ])
        .output()
        .await
        .ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    // `NOFILE <description> <soft> <hard> <units>`: the two numbers.
    let numbers: Vec<u64> = text
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let (soft, hard) = (*numbers.first()?, *numbers.get(1)?);
    if soft >= hard {
        return Some(soft);
    }
    let raised = tokio::process::Command::new("prlimit")
        .args([
            "--pid",
            &pid.to_string(),
            &format!("--nofile={hard}:{hard}"),
        ])
        .status()
        .await
        .is_ok_and(|s| s.success());
    Some(if raised { hard } else { soft })
}
