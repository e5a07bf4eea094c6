//! `uplink-e2e demo`: the whole system on one machine. KCP (an embedded API
//! server with workspaces `root:demo:a` and `root:demo:b`), one embedded API
//! server per physical cluster, and the real `uplink-hub` and `uplink-agent`
//! binaries as child processes with freshly generated certificates.
//!
//! The demo creates the workloads in KCP and their downstream copies in the
//! clusters ([`seed`]), plays the missing controllers by moving each copy's
//! status along a script ([`driver`], [`script`]), and shows a refreshing
//! table of what KCP holds next to each cluster's truth ([`observe`],
//! [`table`]). After `--duration` it stops driving, waits for KCP to catch up
//! with what the driver last set, prints the final table and exits 0, or
//! non-zero if KCP never caught up. Ctrl-C stops it early (exit 0). Every
//! child is stopped on the way out ([`processes`]).
//!
//! Shutdown order: the driver, then the agents, then the hub, then the API
//! servers, so nothing writes to a server that is already gone.

mod args;
pub mod capacity;
pub mod connections;
pub mod driver;
pub mod launch;
pub mod observe;
pub mod processes;
pub mod script;
pub mod seed;
pub mod status;
pub mod table;
pub mod topology;

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use args::{DemoArgs, parse_duration};

use crate::apiserver::{ApiServer, ApiServerConfig};
use crate::binaries::{self, Profile};
use crate::pki::DevPki;
use connections::Connections;
use driver::{DrivenObject, Driver};
use launch::Files;
use observe::{Observation, Observer, WatchedObject};
use processes::{ChildProcess, Stopped};
use topology::{Topology, WORKSPACES};

/// How often the driver moves the script along.
const DRIVER_TICK: Duration = Duration::from_secs(1);
/// How often the live table refreshes on a terminal.
const REFRESH: Duration = Duration::from_secs(1);
/// How often a new table is printed when stdout is not a terminal.
const PLAIN_REFRESH: Duration = Duration::from_secs(5);
/// How long the agents get to send their first heartbeat before driving starts anyway.
const AGENTS_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long KCP gets to catch up after the driver stops.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a child gets to exit after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Runs the demo; see the module documentation.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    let signals = tokio::spawn(cancel_on_signal(stop.clone()));
    // Before anything else exists: a failed build leaves nothing behind.
    let binaries = match find_binaries(&args).await {
        Ok(binaries) => binaries,
        Err(error) if stop.is_cancelled() => {
            println!("interrupted while building: {error:#}");
            return Ok(());
        }
        Err(error) => return Err(error),
    };
    let dir = DemoDir::create(args.keep_dir)?;
    init_logging(&dir.path.join("demo.log"));

    let mut demo = Demo {
        args,
        binaries,
        stop: stop.clone(),
        dir,
        servers: Vec::new(),
        children: Vec::new(),
    };
    let outcome = demo.play().await;
    demo.teardown(outcome.is_err()).await;
    signals.abort();
    match outcome {
        Err(error) if stop.is_cancelled() => {
            // Ctrl-C during start-up (a build, a server) breaks whatever ran.
            println!("interrupted while starting: {error:#}");
            Ok(())
        }
        other => other,
    }
}

/// The hub and agent binaries: the overrides, or built and found beside us.
async fn find_binaries(args: &DemoArgs) -> anyhow::Result<Binaries> {
    let (hub, agent) = (args.hub_bin.clone(), args.agent_bin.clone());
    let missing: Vec<&'static str> = [
        ("uplink-hub", hub.is_none()),
        ("uplink-agent", agent.is_none()),
    ]
    .into_iter()
    .filter_map(|(name, missing)| missing.then_some(name))
    .collect();
    let mut located = if missing.is_empty() {
        Vec::new()
    } else {
        tokio::task::spawn_blocking(move || binaries::locate_all(&missing, Profile::current()))
            .await
            .context("the build task failed")??
    }
    .into_iter();
    let hub = match hub {
        Some(path) => path,
        None => located.next().context("uplink-hub was not located")?,
    };
    let agent = match agent {
        Some(path) => path,
        None => located.next().context("uplink-agent was not located")?,
    };
    Ok(Binaries { hub, agent })
}

/// The programs the demo runs as children.
#[derive(Debug, Clone)]
struct Binaries {
    hub: PathBuf,
    agent: PathBuf,
}

/// Cancels `stop` on Ctrl-C or SIGTERM.
pub(crate) async fn cancel_on_signal(stop: CancellationToken) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
    stop.cancel();
}

/// Sends the demo's own tracing (the embedded API servers, the driver) to a
/// file, so it never scribbles over the table. Left alone if a subscriber
/// is already installed.
fn init_logging(path: &Path) {
    let Ok(file) = std::fs::File::create(path) else {
        return;
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file))
        .try_init();
}

/// `$TMPDIR/uplink-demo-<pid>`: certificates, kubeconfigs and logs. Removed
/// at exit unless `--keep-dir` was given or the demo failed.
#[derive(Debug)]
struct DemoDir {
    path: PathBuf,
    keep: bool,
}

impl DemoDir {
    fn create(keep: bool) -> anyhow::Result<DemoDir> {
        let path = std::env::temp_dir().join(format!("uplink-demo-{}", std::process::id()));
        std::fs::create_dir_all(path.join("logs"))
            .with_context(|| format!("creating the demo directory {}", path.display()))?;
        Ok(DemoDir { path, keep })
    }
}

/// Everything the demo started, so [`Demo::teardown`] can stop it.
#[derive(Debug)]
struct Demo {
    args: DemoArgs,
    binaries: Binaries,
    stop: CancellationToken,
    dir: DemoDir,
    /// KCP first, then the clusters.
    servers: Vec<ApiServer>,
    /// The hub first, then the agents.
    children: Vec<ChildProcess>,
}

/// Why the live phase ended.
#[derive(Debug)]
enum Ended {
    DurationElapsed,
    Interrupted,
    ChildExited(String),
}

/// What the demo's own clients need to reach one object.
struct Placement {
    object: topology::DemoObject,
    upstream: Api<Deployment>,
    downstream: Api<Deployment>,
}

impl Demo {
    async fn play(&mut self) -> anyhow::Result<()> {
        let topology = Topology::new(usize::from(self.args.clusters));
        let dir = self.dir.path.clone();
        let files = Files {
            pki: dir.join("pki"),
            kcp_kubeconfig: dir.join("kcp.kubeconfig"),
            logs: dir.join("logs"),
        };

        DevPki::new("uplink-demo-ca")
            .and_then(|pki| pki.write_all(&files.pki, &topology.clusters, &[]))
            .context("writing the demo's certificates")?;

        let mut connections = Connections::default();
        let kcp = ApiServer::start(ApiServerConfig {
            workspaces: WORKSPACES.iter().map(|w| (*w).to_owned()).collect(),
            ..ApiServerConfig::default()
        })
        .await
        .context("starting the embedded KCP")?;
        println!("KCP (embedded)        {}", kcp.url());
        kcp.write_kubeconfig(&files.kcp_kubeconfig, None)
            .context("writing the KCP kubeconfig")?;
        let mut workspace_kubeconfigs = Vec::new();
        for workspace in WORKSPACES {
            let path = dir.join(format!("kcp-{workspace}.kubeconfig"));
            kcp.write_kubeconfig(&path, Some(workspace))
                .with_context(|| format!("writing the kubeconfig of {workspace}"))?;
            connections
                .add_workspace(workspace, &kcp.kubeconfig_yaml(Some(workspace)))
                .await?;
            workspace_kubeconfigs.push(path);
        }
        // Where the clusters are registered (their SyncTargets).
        connections
            .add_workspace(
                seed::SYNCTARGET_WORKSPACE,
                &kcp.kubeconfig_yaml(Some(seed::SYNCTARGET_WORKSPACE)),
            )
            .await?;
        self.servers.push(kcp);

        let mut cluster_kubeconfigs = Vec::new();
        for cluster in &topology.clusters {
            let server = ApiServer::start(ApiServerConfig::default())
                .await
                .with_context(|| format!("starting the API server of {cluster}"))?;
            println!("{cluster:<21} {}", server.url());
            let path = dir.join(format!("{cluster}.kubeconfig"));
            server
                .write_kubeconfig(&path, None)
                .with_context(|| format!("writing the kubeconfig of {cluster}"))?;
            connections
                .add_cluster(cluster, &server.kubeconfig_yaml(None))
                .await?;
            cluster_kubeconfigs.push(path);
            self.servers.push(server);
        }

        seed::seed(&topology, &connections)
            .await
            .context("creating the demo's workloads")?;
        capacity::seed(&topology, &connections)
            .await
            .context("creating the demo's nodes and pods")?;
        println!(
            "created {} Deployments in KCP and their copies in the clusters",
            topology.objects.len()
        );

        let (hub, hub_addrs) =
            launch::start_hub(&self.binaries.hub, &files, self.args.heartbeat_interval).await?;
        println!(
            "uplink-hub            tunnel wss://{}  http http://{}  (log {})",
            hub_addrs.tunnel,
            hub_addrs.http,
            hub.log_path().display()
        );
        self.children.push(hub);
        for (cluster, kubeconfig) in topology.clusters.iter().zip(&cluster_kubeconfigs) {
            let agent = launch::start_agent(
                &self.binaries.agent,
                &files,
                cluster,
                kubeconfig,
                hub_addrs.tunnel,
                self.args.heartbeat_interval,
            )?;
            println!(
                "uplink-agent {cluster:<8} (log {})",
                agent.log_path().display()
            );
            self.children.push(agent);
        }

        let placements = placements(&topology, &connections)?;
        let driver = Driver::new(
            placements
                .iter()
                .map(|p| DrivenObject {
                    object: p.object.clone(),
                    upstream: p.upstream.clone(),
                    downstream: p.downstream.clone(),
                })
                .collect(),
        );
        let observer = Observer::new(
            placements
                .into_iter()
                .map(|p| WatchedObject {
                    object: p.object,
                    upstream: p.upstream,
                    downstream: p.downstream,
                })
                .collect(),
            topology.clusters.clone(),
            driver.last_set(),
            Some(hub_addrs.http),
        );
        let notes = notes(&files, &workspace_kubeconfigs);
        for note in &notes {
            println!("{note}");
        }

        if !self.wait_for_agents(&observer).await {
            let last = observer.observe().await;
            print_final(
                "Uplink demo: interrupted while the agents connected",
                &last,
                &notes,
            );
            return Ok(());
        }

        let driving = self.stop.child_token();
        let driver_task = tokio::spawn(driver.run(DRIVER_TICK, driving.clone()));
        let ended = self.show_live(&observer, &notes).await;
        // Stop driving and let any write in flight finish before judging KCP.
        driving.cancel();
        let _ = driver_task.await;

        match ended {
            Ended::Interrupted => {
                let last = observer.observe().await;
                print_final("Uplink demo: interrupted (Ctrl-C)", &last, &notes);
                Ok(())
            }
            Ended::ChildExited(what) => {
                let last = observer.observe().await;
                let headline = what.lines().next().unwrap_or_default();
                print_final(
                    &format!("Uplink demo: stopped early: {headline}"),
                    &last,
                    &notes,
                );
                anyhow::bail!("{what}")
            }
            Ended::DurationElapsed => self.converge(&observer, &notes).await,
        }
    }

    /// Waits until the hub has a heartbeat from every cluster (or gives up
    /// after a while: the table then shows who is missing). False if stopped.
    async fn wait_for_agents(&mut self, observer: &Observer) -> bool {
        let deadline = Instant::now() + AGENTS_READY_TIMEOUT;
        let mut last_count = usize::MAX;
        loop {
            let observation = observer.observe().await;
            let heard = observation
                .clusters
                .iter()
                .filter(|c| c.heartbeat_age.is_some())
                .count();
            if heard != last_count {
                println!(
                    "waiting for agents: {heard}/{} clusters heartbeating",
                    observation.clusters.len()
                );
                last_count = heard;
            }
            if heard == observation.clusters.len() {
                return true;
            }
            if let Some(what) = self.exited_child() {
                // Driving would be pointless; the live phase reports it at once.
                println!("{what}");
                return true;
            }
            if Instant::now() >= deadline {
                println!(
                    "not every agent sent a heartbeat within {AGENTS_READY_TIMEOUT:?}; driving anyway"
                );
                return true;
            }
            tokio::select! {
                () = self.stop.cancelled() => return false,
                () = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
    }

    /// Refreshes the table until the duration is over, Ctrl-C, or a child dies.
    async fn show_live(&mut self, observer: &Observer, notes: &[String]) -> Ended {
        let tty = std::io::stdout().is_terminal();
        let start = Instant::now();
        let end = start + self.args.duration;
        let mut last_print: Option<Instant> = None;
        loop {
            if let Some(what) = self.exited_child() {
                return Ended::ChildExited(what);
            }
            let now = Instant::now();
            if now >= end {
                return Ended::DurationElapsed;
            }
            let observation = observer.observe().await;
            let due = last_print.is_none_or(|at| now.duration_since(at) >= PLAIN_REFRESH);
            if tty || due {
                let title = format!(
                    "Uplink demo · {}s of {}s · {} clusters · Ctrl-C stops",
                    now.duration_since(start).as_secs(),
                    self.args.duration.as_secs(),
                    observation.clusters.len()
                );
                // A terminal's screen is redrawn, so the notes go with every
                // table; a log gets them at the start and the end only.
                let mut text = table::render(&title, &observation, if tty { notes } else { &[] });
                if let Some(hub) = observer.hub_http() {
                    let width = std::env::var("COLUMNS").ok().and_then(|c| c.parse().ok());
                    let fleet = capacity::fleet_table(hub).await;
                    text = capacity::beside(&text, &fleet, 4, width.unwrap_or(160));
                }
                print_table(&text, tty);
                last_print = Some(now);
            }
            let next = (now + REFRESH).min(end);
            tokio::select! {
                () = self.stop.cancelled() => return Ended::Interrupted,
                () = tokio::time::sleep_until(next) => {}
            }
        }
    }

    /// After the duration: waits for KCP to show what the driver last set on
    /// every object, then prints the final table.
    async fn converge(&self, observer: &Observer, notes: &[String]) -> anyhow::Result<()> {
        let deadline = Instant::now() + CONVERGE_TIMEOUT;
        let started = Instant::now();
        let mut first = true;
        loop {
            let observation = observer.observe().await;
            if first && !observation.settled() {
                println!(
                    "\ndriver stopped; waiting up to {CONVERGE_TIMEOUT:?} for KCP to catch up ..."
                );
            }
            first = false;
            if observation.settled() {
                let title = format!(
                    "Uplink demo · final, after {}s: KCP shows the status the driver last set on every object (caught up in {:.1}s)",
                    self.args.duration.as_secs(),
                    started.elapsed().as_secs_f64()
                );
                print_final(&title, &observation, notes);
                return Ok(());
            }
            let interrupted = tokio::select! {
                () = self.stop.cancelled() => true,
                () = tokio::time::sleep(Duration::from_millis(250)) => false,
            };
            if interrupted || Instant::now() >= deadline {
                let behind: Vec<String> = observation
                    .objects
                    .iter()
                    .filter(|o| !o.settled())
                    .map(|o| o.object.to_string())
                    .collect();
                if interrupted {
                    print_final(
                        "Uplink demo: interrupted while KCP caught up",
                        &observation,
                        notes,
                    );
                    return Ok(());
                }
                let title = format!(
                    "Uplink demo · final: KCP did NOT catch up within {CONVERGE_TIMEOUT:?} for {}",
                    behind.join(", ")
                );
                print_final(&title, &observation, notes);
                anyhow::bail!(
                    "KCP does not show the status the driver last set for {} (see the table above and the logs in {})",
                    behind.join(", "),
                    self.dir.path.display()
                );
            }
        }
    }

    /// A description of the first child that exited, if any did.
    fn exited_child(&mut self) -> Option<String> {
        self.children.iter_mut().find_map(|child| {
            child.exited().map(|status| {
                format!(
                    "{} exited ({status}); the end of its log ({}):\n{}",
                    child.name(),
                    child.log_path().display(),
                    child.log_tail(15)
                )
            })
        })
    }

    /// Stops the agents, then the hub, then the API servers; removes the
    /// demo directory unless asked (or failed) to keep it.
    async fn teardown(&mut self, failed: bool) {
        // Agents first (they were pushed after the hub), in parallel.
        let mut children = std::mem::take(&mut self.children);
        let hub = if children.is_empty() {
            None
        } else {
            Some(children.remove(0))
        };
        let stops = children.into_iter().map(|child| async move {
            let name = child.name().to_owned();
            (name, child.stop(STOP_GRACE).await)
        });
        let mut results = futures::future::join_all(stops).await;
        if let Some(hub) = hub {
            let name = hub.name().to_owned();
            results.push((name, hub.stop(STOP_GRACE).await));
        }
        for (name, stopped) in results {
            match stopped {
                Stopped::Terminated(_) => {}
                Stopped::AlreadyExited(status) => println!("{name} had already exited ({status})"),
                Stopped::Killed => {
                    println!("{name} ignored SIGTERM for {STOP_GRACE:?} and was killed")
                }
                Stopped::Lost(error) => println!("{name}: stopping it failed: {error}"),
            }
        }
        for server in std::mem::take(&mut self.servers) {
            server.shutdown().await;
        }
        if self.dir.keep || failed {
            println!("demo files kept in {}", self.dir.path.display());
        } else if let Err(error) = std::fs::remove_dir_all(&self.dir.path) {
            println!("could not remove {}: {error}", self.dir.path.display());
        }
    }
}

/// Each object's two copies, through the demo's own clients.
fn placements(topology: &Topology, connections: &Connections) -> anyhow::Result<Vec<Placement>> {
    topology
        .objects
        .iter()
        .map(|object| {
            let upstream = connections
                .workspace(&object.workspace)
                .with_context(|| format!("no client for {}", object.workspace))?;
            let downstream = connections
                .cluster(&object.cluster)
                .with_context(|| format!("no client for {}", object.cluster))?;
            Ok(Placement {
                object: object.clone(),
                upstream: Api::namespaced(upstream, &object.namespace),
                downstream: Api::namespaced(downstream, &object.downstream_namespace()),
            })
        })
        .collect()
}

/// The lines under the table: how to look at KCP yourself, where the logs are.
fn notes(files: &Files, workspace_kubeconfigs: &[PathBuf]) -> Vec<String> {
    let mut notes = vec![format!(
        "KCP kubeconfig: {} (root; the demo's objects live in the workspaces below)",
        files.kcp_kubeconfig.display()
    )];
    for path in workspace_kubeconfigs {
        notes.push(format!(
            "  kubectl --kubeconfig '{}' get deployments -A -o yaml",
            path.display()
        ));
    }
    notes.push(format!(
        "logs: {} (hub.log, agent-<cluster>.log), {}",
        files.logs.display(),
        files.logs.with_file_name("demo.log").display()
    ));
    notes
}

fn print_table(text: &str, tty: bool) {
    let mut stdout = std::io::stdout().lock();
    if tty {
        let _ = write!(stdout, "{}", table::CLEAR_SCREEN);
    } else {
        let _ = writeln!(stdout);
    }
    let _ = write!(stdout, "{text}");
    let _ = stdout.flush();
}

/// The last table: never clears the screen, so it stays in the scrollback.
fn print_final(title: &str, observation: &Observation, notes: &[String]) {
    print_table(&table::render(title, observation, notes), false);
}
