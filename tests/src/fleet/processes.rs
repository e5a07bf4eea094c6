//! The real `uplink-hub` and `uplink-agent` binaries as child processes, for
//! scenarios a library cannot play: a process killed with SIGKILL.
//!
//! They use the fleet's API servers, PKI and kubeconfigs. Every process has
//! fixed ports (picked free on loopback before the first start), so a
//! restarted hub is found again at the URL its agents were given. Output goes
//! to a log file in the fleet's directory; [`Process::log_tail`] shows it
//! when a scenario fails. Children are killed when dropped.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use tokio::process::{Child, Command};
use uplink_e2e::binaries::{self, Profile};

use super::{Fleet, Scrape, cluster_kubeconfig, eventually, http_get};

/// How long a process may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Paths of the two binaries, built once per test process.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub hub: PathBuf,
    pub agent: PathBuf,
}

/// Locates (building them if cargo is at hand) `uplink-hub` and `uplink-agent`.
pub async fn binaries() -> Result<Binaries> {
    static FOUND: OnceLock<Binaries> = OnceLock::new();
    if let Some(found) = FOUND.get() {
        return Ok(found.clone());
    }
    let paths = tokio::task::spawn_blocking(|| {
        binaries::locate_all(&["uplink-hub", "uplink-agent"], Profile::current())
    })
    .await
    .context("locating the binaries")??;
    let found = Binaries {
        hub: paths[0].clone(),
        agent: paths[1].clone(),
    };
    Ok(FOUND.get_or_init(|| found).clone())
}

/// A loopback address with a port that was free a moment ago.
pub fn free_addr() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    listener.local_addr().context("finding a free port")
}

/// One child process that can be killed and started again with the same
/// command line.
#[derive(Debug)]
pub struct Process {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    /// Where it serves `/metrics`.
    pub http_addr: SocketAddr,
    child: Option<Child>,
    starts: u32,
}

impl Process {
    fn new(
        name: &str,
        program: PathBuf,
        args: Vec<String>,
        log: PathBuf,
        http_addr: SocketAddr,
    ) -> Self {
        Self {
            name: name.to_owned(),
            program,
            args,
            log,
            http_addr,
            child: None,
            starts: 0,
        }
    }

    /// Starts the process (appending to its log).
    pub fn spawn(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("{} is already running", self.name);
        }
        self.starts += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.program.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL, then waits for the process to be gone.
    pub async fn kill(&mut self) -> Result<()> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| anyhow!("{} is not running", self.name))?;
        child
            .start_kill()
            .with_context(|| format!("killing {}", self.name))?;
        tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .map_err(|_| anyhow!("{} did not die within 10s of SIGKILL", self.name))??;
        Ok(())
    }

    /// SIGTERM, then waits (at most `within`) for the process to exit and
    /// returns how it exited.
    pub async fn terminate(&mut self, within: Duration) -> Result<std::process::ExitStatus> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| anyhow!("{} is not running", self.name))?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow!("{} has no process id", self.name))?;
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .await
            .context("running kill -TERM")?;
        ensure!(sent.success(), "kill -TERM {pid} failed: {sent}");
        match tokio::time::timeout(within, child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => {
                let _ = child.start_kill();
                bail!(
                    "{} did not exit within {within:?} of SIGTERM; log:\n{}",
                    self.name,
                    self.log_tail(30)
                )
            }
        }
    }

    /// Fails if the process exited.
    pub fn check_running(&mut self) -> Result<()> {
        let child = self
            .child
            .as_mut()
            .ok_or_else(|| anyhow!("{} is not running", self.name))?;
        if let Some(status) = child.try_wait()? {
            bail!(
                "{} exited ({status}); log:\n{}",
                self.name,
                self.log_tail(30)
            );
        }
        Ok(())
    }

    /// Its `/metrics`.
    pub async fn metrics(&self) -> Result<Scrape> {
        http_get(self.http_addr, "/metrics").await.map(Scrape::new)
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Whether it was started and not killed or terminated since (it may
    /// have exited on its own: [`Process::check_running`] tells).
    pub fn is_started(&self) -> bool {
        self.child.is_some()
    }

    /// How many times it was started.
    pub fn starts(&self) -> u32 {
        self.starts
    }
}

/// `uplink-hub` as a process, against the fleet's KCP and PKI.
#[derive(Debug)]
pub struct HubProcess {
    pub process: Process,
    tunnel: SocketAddr,
}

impl HubProcess {
    /// Starts a hub on free loopback ports with the fleet's heartbeat,
    /// unlimited KCP writes and `extra` flags, and waits for `/readyz`.
    pub async fn start(fleet: &Fleet, extra: &[&str]) -> Result<HubProcess> {
        let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        let mut hub = Self::spawn(fleet, "hub", &extra).await?;
        hub.wait_ready().await?;
        Ok(hub)
    }

    /// Starts a hub as [`HubProcess::start`] does, logging to
    /// `<name>-process.log` in the fleet's directory, without waiting for
    /// it to be ready ([`HubProcess::wait_ready`]).
    pub async fn spawn(fleet: &Fleet, name: &str, extra: &[String]) -> Result<HubProcess> {
        let mut hub = Self::prepare(fleet, name, extra).await?;
        hub.process.spawn()?;
        Ok(hub)
    }

    /// A hub process as [`HubProcess::spawn`] would start it, not started
    /// yet: its ports are chosen, so its URL can be handed out before it
    /// runs (start it with `process.spawn()`). Replicas are prepared, then
    /// started together, as a Deployment's pods are.
    pub async fn prepare(fleet: &Fleet, name: &str, extra: &[String]) -> Result<HubProcess> {
        let binaries = binaries().await?;
        let tunnel = free_addr()?;
        let http = free_addr()?;
        let args = hub_args(fleet.dir(), tunnel, http, fleet.heartbeat(), extra);
        let log = fleet.dir().join(format!("{name}-process.log"));
        let program = if name == "hub" {
            "uplink-hub".to_owned()
        } else {
            format!("uplink-hub {name}")
        };
        Ok(HubProcess {
            process: Process::new(&program, binaries.hub, args, log, http),
            tunnel,
        })
    }

    /// `wss://<tunnel>`, the same across restarts.
    pub fn url(&self) -> String {
        format!("wss://{}", self.tunnel)
    }

    /// Starts the hub again on the same ports and waits for `/readyz`.
    pub async fn restart(&mut self) -> Result<()> {
        self.process.spawn()?;
        self.wait_ready().await
    }

    /// The address of its tunnel (agents connect here).
    pub fn tunnel_addr(&self) -> SocketAddr {
        self.tunnel
    }

    /// Waits until it answers `/readyz` (failing at once if it exited).
    pub async fn wait_ready(&mut self) -> Result<()> {
        let http = self.process.http_addr;
        let process = &mut self.process;
        // A process that exited fails the wait at once (with its log), not
        // after the timeout.
        eventually(READY_TIMEOUT, "uplink-hub to be ready", async || {
            if let Err(exited) = process.check_running() {
                return Ok(Err(exited));
            }
            http_get(http, "/readyz").await.map(Ok)
        })
        .await?
        .map(drop)
    }
}

/// The command line of a hub process: the fleet's PKI and KCP kubeconfig
/// under `dir`, the given addresses and heartbeat, `--write-qps=0` and
/// `--shutdown-timeout=2s` unless `extra` sets them (a flag may be given
/// only once), then `extra`.
pub fn hub_args(
    dir: &Path,
    tunnel: SocketAddr,
    http: SocketAddr,
    heartbeat: Duration,
    extra: &[String],
) -> Vec<String> {
    let pki = dir.join("pki");
    let mut args: Vec<String> = vec![
        format!("--listen={tunnel}"),
        format!("--http-listen={http}"),
        format!("--tls-cert={}", pki.join("hub.crt").display()),
        format!("--tls-key={}", pki.join("hub.key").display()),
        format!("--client-ca={}", pki.join("ca.crt").display()),
        format!("--kcp-kubeconfig={}", dir.join("kcp.kubeconfig").display()),
        format!("--heartbeat-interval={}ms", heartbeat.as_millis()),
        // The API is read on loopback without credentials.
        "--http-auth=none".to_owned(),
    ];
    for default in ["--write-qps=0", "--shutdown-timeout=2s"] {
        let flag = default.split('=').next().unwrap_or(default);
        if !extra.iter().any(|e| e.starts_with(flag)) {
            args.push(default.to_owned());
        }
    }
    args.extend(extra.iter().cloned());
    args
}

/// `uplink-agent` as a process, watching one of the fleet's clusters.
#[derive(Debug)]
pub struct AgentProcess {
    pub process: Process,
}

impl AgentProcess {
    /// Starts cluster `cluster`'s agent against `hub_url` with the fleet's
    /// heartbeat and quick reconnects, and waits until it has a session.
    pub async fn start(fleet: &Fleet, cluster: &str, hub_url: &str) -> Result<AgentProcess> {
        Self::start_with(fleet, cluster, hub_url, &[]).await
    }

    /// [`AgentProcess::start`] with `extra` flags (`--downward-resources=...`).
    pub async fn start_with(
        fleet: &Fleet,
        cluster: &str,
        hub_url: &str,
        extra: &[&str],
    ) -> Result<AgentProcess> {
        let binaries = binaries().await?;
        let http = free_addr()?;
        let pki = fleet.dir().join("pki");
        let mut args = vec![
            format!("--cluster={cluster}"),
            format!(
                "--kubeconfig={}",
                cluster_kubeconfig(fleet.dir(), cluster).display()
            ),
            format!("--hub-url={hub_url}"),
            format!(
                "--tls-cert={}",
                pki.join(format!("{cluster}.crt")).display()
            ),
            format!("--tls-key={}", pki.join(format!("{cluster}.key")).display()),
            format!("--hub-ca={}", pki.join("ca.crt").display()),
            format!("--http-listen={http}"),
            format!("--heartbeat-interval={}ms", fleet.heartbeat().as_millis()),
            "--reconnect-initial=100ms".into(),
            "--reconnect-max=1s".into(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let log = fleet.dir().join(format!("agent-{cluster}-process.log"));
        let mut agent = AgentProcess {
            process: Process::new(
                &format!("uplink-agent {cluster}"),
                binaries.agent,
                args,
                log,
                http,
            ),
        };
        agent.process.spawn()?;
        agent.wait_connected().await?;
        Ok(agent)
    }

    /// Starts the agent again (a new process: a new session id) and waits
    /// until it has a session.
    pub async fn restart(&mut self) -> Result<()> {
        self.process.spawn()?;
        self.wait_connected().await
    }

    /// Waits until `uplink_agent_connected` is 1.
    pub async fn wait_connected(&mut self) -> Result<()> {
        self.wait_sessions(1).await
    }

    /// Waits until the agent has at least `sessions` sessions established
    /// (one per hub replica; `uplink_agent_connected`).
    pub async fn wait_sessions(&mut self, sessions: usize) -> Result<()> {
        let process = &mut self.process;
        eventually(READY_TIMEOUT, "the agent process to connect", async || {
            if let Err(exited) = process.check_running() {
                return Ok(Err(exited));
            }
            let connected = process.metrics().await?.require("uplink_agent_connected")?;
            if connected >= sessions as f64 {
                Ok(Ok(()))
            } else {
                bail!("uplink_agent_connected {connected}, waiting for {sessions}")
            }
        })
        .await?
    }
}
