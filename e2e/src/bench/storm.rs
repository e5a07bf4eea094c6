//! `storm`: the hub killed with SIGKILL under many connected agents, every
//! cluster's status changed while it is down, and the hub started again on
//! the same addresses.
//!
//! The agents are simulated in this process ([`super::simulated`]), one object
//! each, with the agent's default reconnect settings (exponential backoff,
//! full jitter). KCP's watch ([`super::kcpwatch`]) tells when every change
//! made while the hub was down has arrived.
//!
//! Measured from the kill: when every agent is connected again, when KCP
//! shows every change (all synced), how the agents' reconnect attempts spread
//! over time (the times by which 10 %, 50 % and 90 % of them were made,
//! sampled every [`SAMPLE`]), and the changes that never arrived.
//!
//! The hub writes to KCP without its default rate limit here, as in the
//! other scenarios that count writes: at 50 writes/s, 10,000 changed objects
//! take 200 s whatever the tunnel does, and the limiter is not what this
//! measures.

use std::time::Duration;

use anyhow::Context as _;
use tokio::time::Instant;
use uplink_agent::ReconnectSettings;

use super::connections::agents_within_fd_limit;
use super::fleet::{
    Binaries, deployments_only, hub_metric, metrics_client, one_source_fleet, unlimited_writes,
};
use super::kcpwatch::KcpWatch;
use super::simulated::{
    SimulatedAgents, SimulatedSettings, object_name, seed_kcp, start_kcp, status, write_pki,
};
use crate::demo::launch::{self, Files};

/// How often the agents' attempt counters and KCP are looked at.
const SAMPLE: Duration = Duration::from_millis(100);
/// How long the agents get to connect before the kill.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(180);
/// How long after the kill the fleet gets to sync again before what is
/// missing counts as lost.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a child gets to exit after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Heartbeats are not what this measures.
const HEARTBEAT: Duration = Duration::from_secs(10);

/// How much load.
#[derive(Debug, Clone, Copy)]
pub struct StormSettings {
    /// Agents asked for; fewer run when descriptors do not allow them.
    pub agents: usize,
}

/// What was measured; times are seconds since the kill.
#[derive(Debug, Clone)]
pub struct StormReport {
    pub agents: usize,
    /// Every agent connected again.
    pub all_connected_s: f64,
    /// Every agent connected and KCP showing every change.
    pub all_synced_s: f64,
    /// Changes made while the hub was down that KCP never showed.
    pub lost: u64,
    /// Reconnect attempts made, all agents together.
    pub attempts: u64,
    /// By when 10 %, 50 % and 90 % of those attempts had been made.
    pub attempts_p10_s: f64,
    pub attempts_p50_s: f64,
    pub attempts_p90_s: f64,
}

/// Runs the scenario.
pub async fn run(binaries: &Binaries, settings: StormSettings) -> anyhow::Result<StormReport> {
    let agents = agents_within_fd_limit(settings.agents).await;
    let dir = std::env::temp_dir().join(format!("uplink-bench-storm-{}", std::process::id()));
    let files = Files {
        pki: dir.join("pki"),
        kcp_kubeconfig: dir.join("kcp.kubeconfig"),
        logs: dir.join("logs"),
    };
    let result = measure(binaries, agents, &files).await;
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("  logs kept in {}", dir.display());
    }
    result
}

async fn measure(binaries: &Binaries, agents: usize, files: &Files) -> anyhow::Result<StormReport> {
    std::fs::create_dir_all(&files.logs)?;
    let names: Vec<String> = (1..=agents).map(|i| format!("storm-{i}")).collect();
    eprintln!("  issuing {agents} client certificates ...");
    write_pki(&files.pki, &names).await?;
    let (kcp, clients) = start_kcp(&files.kcp_kubeconfig).await?;
    let mut extra = unlimited_writes();
    extra.extend(one_source_fleet());
    extra.extend(deployments_only());
    let (hub, addrs) = launch::start_hub_with(&binaries.hub, files, HEARTBEAT, &extra).await?;
    let mut hub = Some(hub);
    let outcome = async {
        eprintln!("  seeding {agents} objects in KCP ...");
        seed_kcp(&clients, &names, 1).await?;
        let objects: Vec<String> = names.iter().map(|n| object_name(n, 0)).collect();
        let upstream = kube::Api::namespaced(clients.workspace.clone(), super::fleet::NAMESPACE);
        let kcp_watch = KcpWatch::start(upstream, &objects).await?;

        // Expected before any agent starts: the first ones connect (and
        // their statuses reach KCP) while the last ones are still starting.
        let started = Instant::now();
        for index in 0..agents {
            kcp_watch.expect(index, 0, started);
        }
        eprintln!("  connecting {agents} agents ...");
        let simulated = SimulatedAgents::start(
            &names,
            &SimulatedSettings {
                hub_url: format!("wss://{}", addrs.tunnel),
                pki: files.pki.clone(),
                heartbeat: HEARTBEAT,
                reconnect: ReconnectSettings::default(),
                objects: 1,
            },
        )
        .await?;
        let measured = async {
            // Everyone connected and KCP showing every initial status.
            let http = metrics_client();
            loop {
                let connected = hub_metric(&http, addrs.http, "uplink_hub_agents_connected", &[])
                    .await
                    .unwrap_or(0.0);
                if connected as usize >= agents && kcp_watch.pending() == 0 {
                    break;
                }
                if started.elapsed() >= CONNECT_TIMEOUT {
                    let missing: Vec<&String> = kcp_watch
                        .pending_objects(5)
                        .into_iter()
                        .filter_map(|i| objects.get(i))
                        .collect();
                    anyhow::bail!(
                        "before the kill: {connected} of {agents} agents connected, {} initial statuses not in KCP (first: {missing:?})",
                        kcp_watch.pending()
                    );
                }
                tokio::time::sleep(SAMPLE).await;
            }
            let _ = kcp_watch.take_latencies();
            let attempts_before = simulated.reconnects();

            eprintln!("  killing the hub, changing every status, restarting it ...");
            let killed_at = Instant::now();
            if let Some(hub) = hub.take() {
                hub.crash().await;
            }
            for (index, agent) in simulated.agents.iter().enumerate() {
                kcp_watch.expect(index, 1, killed_at);
                agent
                    .events
                    .send(agent.applied(0, status(1)))
                    .await
                    .with_context(|| format!("agent {} stopped", agent.cluster))?;
            }
            let restart_log = files.logs.join("hub-restarted.log");
            let (restarted, _) = launch::restart_hub_at(
                &binaries.hub,
                files,
                HEARTBEAT,
                addrs,
                &restart_log,
                &extra,
            )
            .await?;
            hub = Some(restarted);

            // Attempts over time: (seconds since the kill, attempts so far).
            let mut timeline = Vec::new();
            let mut all_connected = None;
            let all_synced = loop {
                let elapsed = killed_at.elapsed();
                timeline.push((
                    elapsed.as_secs_f64(),
                    simulated.reconnects() - attempts_before,
                ));
                if all_connected.is_none() && simulated.connected() == agents {
                    all_connected = Some(elapsed);
                }
                if all_connected.is_some() && kcp_watch.pending() == 0 {
                    break Some(elapsed);
                }
                if elapsed >= RECOVERY_TIMEOUT {
                    break None;
                }
                tokio::time::sleep(SAMPLE).await;
            };
            let attempts = simulated.reconnects() - attempts_before;
            let at = |share: f64| attempt_time(&timeline, attempts, share);
            let never = RECOVERY_TIMEOUT.as_secs_f64();
            Ok(StormReport {
                agents,
                all_connected_s: all_connected.map_or(never, |d| d.as_secs_f64()),
                all_synced_s: all_synced.map_or(never, |d| d.as_secs_f64()),
                lost: kcp_watch.pending() as u64,
                attempts,
                attempts_p10_s: at(0.1),
                attempts_p50_s: at(0.5),
                attempts_p90_s: at(0.9),
            })
        }
        .await;
        simulated.stop().await;
        measured
    }
    .await;
    if let Some(hub) = hub {
        hub.stop(STOP_GRACE).await;
    }
    kcp.shutdown().await;
    outcome
}

/// The first sampled time by which `share` of `total` attempts had been
/// made; 0 when there were none.
fn attempt_time(timeline: &[(f64, u64)], total: u64, share: f64) -> f64 {
    if total == 0 {
        return 0.0;
    }
    let needed = (total as f64 * share).ceil() as u64;
    timeline
        .iter()
        .find(|(_, made)| *made >= needed)
        .map_or(0.0, |(at, _)| *at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempt_times_are_read_off_the_timeline() {
        let timeline = [(0.1, 0), (0.2, 5), (0.3, 9), (0.4, 10)];
        assert_eq!(attempt_time(&timeline, 10, 0.1), 0.2);
        assert_eq!(attempt_time(&timeline, 10, 0.5), 0.2);
        assert_eq!(attempt_time(&timeline, 10, 0.9), 0.3);
        assert_eq!(attempt_time(&timeline, 10, 1.0), 0.4);
        assert_eq!(attempt_time(&timeline, 0, 0.5), 0.0);
    }
}
