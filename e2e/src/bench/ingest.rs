//! `ingest`: how many status deltas the hub takes in per second.
//!
//! Simulated agents ([`super::simulated`]) each own many objects and change
//! every one of them again as soon as the hub has acknowledged most of the
//! previous round, so the hub is never waiting for work and the agents'
//! outboxes stay small. The hub is the real binary, writing to KCP at its
//! default rate limit as it would in production (the store takes every
//! delta; the writer writes the latest state at its own pace).
//!
//! The objects stay fewer than the hub's `--throttle-queue-depth` (10,000):
//! with more objects dirty at once than that, the hub throttles the agents
//! to what its KCP writer can write, by design, and the rate measured would
//! be the writer's. `throttles` reports the Throttle frames sent while
//! measuring; a run with any is not measuring ingest.
//!
//! Measured over a window after warm-up: deltas the hub received and
//! acknowledged per second (`uplink_hub_deltas_received_total`), the hub's
//! CPU seconds per million deltas and its resident memory (from `/proc`).
//!
//! Baseline, in the same run: the same clusters' certificates blasting the
//! same `Deltas` frame (as many deltas per frame as the agents achieved,
//! encoded by the protocol crate) at a bare TLS WebSocket sink
//! ([`super::sink`]) that reads and discards; Uplink's rate as a fraction
//! of that ceiling.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uplink_agent::ReconnectSettings;
use uplink_agent::mapping::{DownstreamRef, Locator, to_upstream};
use uplink_protocol::{AgentFrame, Change, Delta, DeltaBatch};

use super::fleet::{Binaries, NAMESPACE, WORKSPACE, hub_metric, metrics_client};
use super::procstat;
use super::simulated::{
    DOWNSTREAM_NAMESPACE, SimulatedAgent, SimulatedAgents, SimulatedSettings, object_name,
    seed_kcp, start_kcp, status, write_pki,
};
use super::sink::{self, BlastClient};
use crate::demo::launch::{self, Files};
use crate::demo::processes::ChildProcess;

/// How long a child gets to exit after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Unacknowledged entries an agent may have before its feeder waits: enough
/// for full batches in flight, small enough that changes are not merged away
/// in the outbox before they are sent.
const WINDOW: i64 = 2_048;
/// Load before the window opens, so connections and caches are warm.
const WARM_UP: Duration = Duration::from_secs(2);
/// How long everything gets to connect and deliver its first snapshot.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);

/// How much load.
#[derive(Debug, Clone, Copy)]
pub struct IngestSettings {
    pub agents: usize,
    pub objects_per_agent: usize,
    /// The measured window (and the baseline's run).
    pub duration: Duration,
}

/// What was measured.
#[derive(Debug, Clone)]
pub struct IngestReport {
    pub agents: usize,
    pub deltas_per_s: f64,
    pub raw_ceiling_per_s: f64,
    pub hub_cpu_s_per_million: f64,
    /// The baseline sink's own CPU seconds per million deltas it received
    /// (TLS, WebSocket framing, nothing else): the floor under the hub's.
    pub sink_cpu_s_per_million: f64,
    pub hub_rss_mib: f64,
    /// Deltas per `Deltas` frame the agents achieved (the baseline sends these).
    pub deltas_per_frame: f64,
    /// Throttle frames the hub sent while measuring (0 for a valid figure).
    pub throttles: u64,
}

impl IngestReport {
    pub fn ratio_to_raw(&self) -> f64 {
        if self.raw_ceiling_per_s > 0.0 {
            self.deltas_per_s / self.raw_ceiling_per_s
        } else {
            0.0
        }
    }

    /// The hub's CPU per delta in multiples of the sink's.
    pub fn hub_cpu_to_sink(&self) -> f64 {
        if self.sink_cpu_s_per_million > 0.0 {
            self.hub_cpu_s_per_million / self.sink_cpu_s_per_million
        } else {
            0.0
        }
    }
}

/// Runs the scenario: Uplink first, then the baseline.
pub async fn run(binaries: &Binaries, settings: IngestSettings) -> anyhow::Result<IngestReport> {
    let dir = std::env::temp_dir().join(format!("uplink-bench-ingest-{}", std::process::id()));
    let result = async {
        let names: Vec<String> = (1..=settings.agents.max(1))
            .map(|i| format!("ingest-{i}"))
            .collect();
        let files = Files {
            pki: dir.join("pki"),
            kcp_kubeconfig: dir.join("kcp.kubeconfig"),
            logs: dir.join("logs"),
        };
        std::fs::create_dir_all(&files.logs)?;
        write_pki(&files.pki, &names).await?;
        let uplink = measure_uplink(binaries, settings, &names, &files).await?;
        eprintln!(
            "  uplink: {:.0} deltas/s at {:.0} deltas per frame; now the raw ceiling ...",
            uplink.deltas_per_s, uplink.deltas_per_frame
        );
        let batch = uplink.deltas_per_frame.round().max(1.0) as usize;
        let raw = measure_raw(&binaries.e2e, settings, &names, &files, batch).await?;
        Ok(IngestReport {
            raw_ceiling_per_s: raw.deltas_per_s,
            sink_cpu_s_per_million: raw.cpu_s_per_million,
            ..uplink
        })
    }
    .await;
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("  logs kept in {}", dir.display());
    }
    result
}

async fn measure_uplink(
    binaries: &Binaries,
    settings: IngestSettings,
    names: &[String],
    files: &Files,
) -> anyhow::Result<IngestReport> {
    let (kcp, clients) = start_kcp(&files.kcp_kubeconfig).await?;
    let (hub, addrs) =
        launch::start_hub_with(&binaries.hub, files, Duration::from_secs(5), &[]).await?;
    let outcome = async {
        let total = names.len() * settings.objects_per_agent;
        eprintln!("  seeding {total} objects in KCP ...");
        seed_kcp(&clients, names, settings.objects_per_agent).await?;

        let pid = hub.id().context("the hub is not running")?;
        let http = metrics_client();
        let mut agents = SimulatedAgents::start(
            names,
            &SimulatedSettings {
                hub_url: format!("wss://{}", addrs.tunnel),
                pki: files.pki.clone(),
                heartbeat: Duration::from_secs(5),
                reconnect: ReconnectSettings::default(),
                objects: settings.objects_per_agent,
            },
        )
        .await?;
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let stored = hub_metric(&http, addrs.http, "uplink_hub_store_objects", &[]).await?;
            if agents.connected() == names.len() && stored as usize >= total {
                break;
            }
            if let Some(failure) = agents.failed() {
                anyhow::bail!("{failure}");
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "after {SETTLE_TIMEOUT:?}: {} of {} agents connected, {stored} of {total} objects stored",
                agents.connected(),
                names.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        let stop = CancellationToken::new();
        let mut feeders = JoinSet::new();
        for agent in &agents.agents {
            feeders.spawn(feed(agent.clone(), settings.objects_per_agent, stop.clone()));
        }
        tokio::time::sleep(WARM_UP).await;
        let frames_sent = |agents: &SimulatedAgents| -> (u64, u64) {
            agents.agents.iter().fold((0, 0), |(d, f), a| {
                (
                    d + a.metrics.deltas_sent.get(),
                    f + a.metrics.delta_frames_sent.get(),
                )
            })
        };
        let received = || hub_metric(&http, addrs.http, "uplink_hub_deltas_received_total", &[]);
        let throttles = || hub_metric(&http, addrs.http, "uplink_hub_throttles_total", &[]);
        let (deltas_from, frames_from) = frames_sent(&agents);
        let throttles_from = throttles().await?;
        let from = (received().await?, procstat::sample(pid)?, Instant::now());
        eprintln!("  measuring for {:?} ...", settings.duration);
        tokio::time::sleep(settings.duration).await;
        let to = (received().await?, procstat::sample(pid)?, Instant::now());
        let (deltas_to, frames_to) = frames_sent(&agents);
        let throttles_to = throttles().await?;
        stop.cancel();
        while feeders.join_next().await.is_some() {}
        if let Some(failure) = agents.failed() {
            anyhow::bail!("{failure}");
        }
        agents.stop().await;

        let deltas = (to.0 - from.0).max(0.0);
        let seconds = to.2.duration_since(from.2).as_secs_f64();
        let cpu = to.1.cpu.saturating_sub(from.1.cpu).as_secs_f64();
        anyhow::ensure!(deltas > 0.0, "the hub received no deltas while measured");
        Ok(IngestReport {
            agents: names.len(),
            deltas_per_s: deltas / seconds,
            raw_ceiling_per_s: 0.0,
            hub_cpu_s_per_million: cpu / deltas * 1e6,
            sink_cpu_s_per_million: 0.0,
            hub_rss_mib: to.1.rss_mib(),
            deltas_per_frame: (deltas_to - deltas_from) as f64
                / (frames_to - frames_from).max(1) as f64,
            throttles: (throttles_to - throttles_from).max(0.0) as u64,
        })
    }
    .await;
    hub.stop(STOP_GRACE).await;
    kcp.shutdown().await;
    outcome
}

/// Changes every object of `agent`, round after round, keeping at most
/// [`WINDOW`] entries unacknowledged, until `stop`.
async fn feed(agent: SimulatedAgent, objects: usize, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for round in 1i64.. {
        for i in 0..objects {
            while agent.metrics.outbox_entries.get() >= WINDOW {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = ticker.tick() => {}
                }
            }
            let event = agent.applied(i, status(round));
            tokio::select! {
                () = stop.cancelled() => return,
                sent = agent.events.send(event) => if sent.is_err() { return },
            }
        }
    }
}

/// What the baseline measured.
struct Raw {
    /// Deltas per second the sink received.
    deltas_per_s: f64,
    /// The sink's CPU seconds per million deltas received.
    cpu_s_per_million: f64,
}

/// The baseline: the sink as a child process, one connection per cluster
/// sending frames of `batch` deltas.
async fn measure_raw(
    e2e: &Path,
    settings: IngestSettings,
    names: &[String],
    files: &Files,
    batch: usize,
) -> anyhow::Result<Raw> {
    let sink = start_sink(e2e, files).await?;
    let pid = sink.id().context("the sink is not running")?;
    let outcome = async {
        let addr = wait_for_sink(&sink).await?;
        let before = procstat::sample(pid)?;
        let mut clients = Vec::with_capacity(names.len());
        for name in names {
            let tls = uplink_agent::tls::client_config(
                &files.pki.join(format!("{name}.crt")),
                &files.pki.join(format!("{name}.key")),
                &files.pki.join("ca.crt"),
            )?;
            clients.push(BlastClient {
                cluster: name.clone(),
                tls,
            });
        }
        let frame = deltas_frame(&names[0], batch)?;
        let report = sink::blast(addr, clients, frame, settings.duration).await?;
        let after = procstat::sample(pid)?;
        anyhow::Ok((report, after.cpu.saturating_sub(before.cpu)))
    }
    .await;
    let log = sink.log_path().to_owned();
    sink.stop(STOP_GRACE).await;
    let (report, cpu) = outcome?;
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    let (messages, _bytes) = sink::parse_received(&output).with_context(|| {
        format!(
            "the sink did not report what it received ({})",
            log.display()
        )
    })?;
    anyhow::ensure!(
        messages > 0 && messages <= report.sent,
        "the sink received {messages} of {} frames sent",
        report.sent
    );
    let deltas = messages as f64 * batch as f64;
    Ok(Raw {
        deltas_per_s: deltas / report.elapsed.as_secs_f64(),
        cpu_s_per_million: cpu.as_secs_f64() / deltas * 1e6,
    })
}

async fn start_sink(exe: &Path, files: &Files) -> anyhow::Result<ChildProcess> {
    let mut command = tokio::process::Command::new(exe);
    command
        .arg("bench-sink")
        .arg("--tls-cert")
        .arg(files.pki.join("hub.crt"))
        .arg("--tls-key")
        .arg(files.pki.join("hub.key"))
        .arg("--client-ca")
        .arg(files.pki.join("ca.crt"));
    Ok(ChildProcess::spawn(
        "bench-sink",
        command,
        &files.logs.join("sink.log"),
    )?)
}

async fn wait_for_sink(sink: &ChildProcess) -> anyhow::Result<std::net::SocketAddr> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let output = std::fs::read_to_string(sink.log_path()).unwrap_or_default();
        if let Some(addr) = sink::parse_listening(&output) {
            return Ok(addr);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the sink did not listen within 30s: {output}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A `Deltas` frame of `batch` deltas, each as an agent of `cluster` would
/// send it: mapped upstream by the agent's own mapping, a real status.
fn deltas_frame(cluster: &str, batch: usize) -> anyhow::Result<Bytes> {
    let locator = Locator {
        workspace: WORKSPACE.to_owned(),
        namespace: NAMESPACE.to_owned(),
    };
    let status_json = serde_json::to_string(&status(1))?;
    let now_ms = jiff::Timestamp::now().as_millisecond();
    let deltas = (0..batch)
        .map(|i| {
            let downstream = DownstreamRef {
                resource: uplink_agent::ResourceSpec::deployments(),
                kind: "Deployment".to_owned(),
                namespace: DOWNSTREAM_NAMESPACE.to_owned(),
                name: object_name(cluster, i),
                uid: format!("uid-{cluster}-{i}"),
            };
            Delta {
                seq: i as u64 + 1,
                object: to_upstream(&downstream, &locator),
                generation: Some(1),
                observed_generation: Some(1),
                observed_at_ms: now_ms,
                change: Change::Upsert {
                    status_json: status_json.clone(),
                },
                object_json: None,
            }
        })
        .collect();
    let frame = AgentFrame::Deltas(DeltaBatch { deltas });
    Ok(Bytes::from(uplink_protocol::encode(&frame)?))
}
