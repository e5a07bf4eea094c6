//! `uplink-e2e demo`: the whole system on one machine. KCP (an embedded API
//! server with workspaces `root:demo:a` and `root:demo:b`), one embedded API
//! server per physical cluster, and the real `uplink-hub` and `uplink-agent`
//! binaries as child processes with freshly generated certificates, the
//! agents with their downward lane on.
//!
//! The demo writes to KCP only. It registers the clusters (SyncTargets) and
//! the workspaces' namespaces ([`seed`]); once the agents are connected its
//! driver ([`driver`], [`script`]) creates each Deployment in its workspace
//! with kcp's placement label, then scales it, rolls it out, unplaces and
//! places it again, and records when each step shows up in the cluster
//! and, merged by the hub, in KCP's status. The clusters' API servers run the
//! test bed's stand-in Deployment controller, which sets a Deployment's
//! status from its spec (no pods, no kubelet); that is what "runs" the
//! workloads. A refreshing table shows both copies of every object and the
//! latest steps ([`observe`], [`table`]); the hub's operator page shows
//! the fleet in a browser (`--open`, [`browser`]). After `--duration` it stops
//! driving, waits for KCP and the clusters to show what KCP last asked,
//! prints the final table and exits 0, or non-zero if they never did or a
//! step of the loop was not seen. Ctrl-C stops it early (exit 0). Every
//! child is stopped on the way out ([`processes`]).
//!
//! Shutdown order: the driver, then the agents, then the hub, then the API
//! servers, so nothing writes to a server that is already gone.

mod args;
mod browser;
pub mod capacity;
pub mod connections;
pub mod driver;
pub mod launch;
pub mod observe;
pub mod processes;
pub mod script;
pub mod seed;
mod setup;
mod start;
pub mod status;
pub mod table;
pub mod topology;

use std::io::{IsTerminal as _, Write as _};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use args::{DemoArgs, parse_duration};

use crate::apiserver::ApiServer;
use driver::{LoopEvent, Progress};
use observe::{Observation, Observer};
use processes::{ChildProcess, Stopped};
use setup::{Binaries, DemoDir};

/// How often the live table refreshes on a terminal.
const REFRESH: Duration = Duration::from_secs(1);
/// How often a new table is printed when stdout is not a terminal (loop
/// steps are printed as they complete).
const PLAIN_REFRESH: Duration = Duration::from_secs(10);
/// How often, not on a terminal, completed loop steps are printed.
const STEP_LINES: Duration = Duration::from_millis(200);
/// Loop steps shown under the table.
const EVENTS_SHOWN: usize = 8;
/// How long the agents get to send their first heartbeat before driving starts anyway.
const AGENTS_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the clusters and KCP get to catch up after the driver stops.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a child gets to exit after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Runs the demo; see the module documentation.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    let signals = tokio::spawn(cancel_on_signal(stop.clone()));
    // Before anything else exists: a failed build leaves nothing behind.
    let binaries = match setup::find_binaries(&args).await {
        Ok(binaries) => binaries,
        Err(error) if stop.is_cancelled() => {
            println!("interrupted while building: {error:#}");
            return Ok(());
        }
        Err(error) => return Err(error),
    };
    let dir = DemoDir::create(args.dir.as_deref(), args.keep_dir)?;
    setup::init_logging(&dir.path.join("demo.log"));

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

impl Demo {
    async fn play(&mut self) -> anyhow::Result<()> {
        let started = self.start().await?;
        let observer = Observer::new(
            started.watched.clone(),
            started.topology.clusters.clone(),
            started.driver.progress(),
            Some(started.hub_http),
        );
        for note in &started.notes {
            println!("{note}");
        }

        if !self.wait_for_agents(&observer).await {
            let last = observer.observe().await;
            print_final(
                "Uplink demo: interrupted while the agents connected",
                &last,
                &[],
                &started.notes,
            );
            return Ok(());
        }

        let progress = started.driver.progress();
        let driving = self.stop.child_token();
        println!(
            "driving: every step below is a write to KCP; the clusters and KCP's status follow through Uplink"
        );
        let driver_task = tokio::spawn(started.driver.run(driving.clone()));
        let pods_task = {
            let (topology, connections, stop) = (
                started.topology.clone(),
                started.connections.clone(),
                driving.clone(),
            );
            let namespaces: Vec<String> = started
                .watched
                .iter()
                .map(|w| w.downstream_namespace.clone())
                .collect();
            let patience = self.args.duration + CONVERGE_TIMEOUT;
            tokio::spawn(async move {
                capacity::seed_pods(&topology, &namespaces, &connections, patience, &stop).await
            })
        };
        let ended = self.show_live(&observer, &progress, &started.notes).await;
        // Stop driving and let any write in flight finish before judging.
        driving.cancel();
        let _ = driver_task.await;
        for failure in pods_task.await.unwrap_or_default() {
            println!("! the demo's pods: {failure}");
        }

        match ended {
            Ended::Interrupted => {
                let last = observer.observe().await;
                let events = progress.recent(EVENTS_SHOWN);
                print_final(
                    "Uplink demo: interrupted (Ctrl-C)",
                    &last,
                    &events,
                    &started.notes,
                );
                Ok(())
            }
            Ended::ChildExited(what) => {
                let last = observer.observe().await;
                let headline = what.lines().next().unwrap_or_default();
                let events = progress.recent(EVENTS_SHOWN);
                print_final(
                    &format!("Uplink demo: stopped early: {headline}"),
                    &last,
                    &events,
                    &started.notes,
                );
                anyhow::bail!("{what}")
            }
            Ended::DurationElapsed => self.converge(&observer, &progress, &started.notes).await,
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

    /// Refreshes the table until the duration is over, Ctrl-C, or a child
    /// dies. Not on a terminal, each loop step is printed as it completes.
    async fn show_live(
        &mut self,
        observer: &Observer,
        progress: &Progress,
        notes: &[String],
    ) -> Ended {
        let tty = std::io::stdout().is_terminal();
        let start = Instant::now();
        let end = start + self.args.duration;
        let mut last_print: Option<Instant> = None;
        let mut printed_seq = 0;
        loop {
            if let Some(what) = self.exited_child() {
                return Ended::ChildExited(what);
            }
            let now = Instant::now();
            if now >= end {
                return Ended::DurationElapsed;
            }
            if !tty {
                for event in progress.events_after(printed_seq) {
                    println!("step {event}");
                    printed_seq = event.seq;
                }
            }
            let due = last_print.is_none_or(|at| now.duration_since(at) >= PLAIN_REFRESH);
            if tty || due {
                let observation = observer.observe().await;
                let title = format!(
                    "Uplink demo · {}s of {}s · {} clusters · Ctrl-C stops",
                    now.duration_since(start).as_secs(),
                    self.args.duration.as_secs(),
                    observation.clusters.len()
                );
                // A terminal's screen is redrawn, so the notes and the latest
                // steps go with every table; a log gets the steps as they
                // come and the notes at the start and the end.
                let text = if tty {
                    table::render(&title, &observation, &progress.recent(EVENTS_SHOWN), notes)
                } else {
                    table::render(&title, &observation, &[], &[])
                };
                let text = match observer.hub_http() {
                    Some(hub) => {
                        let width = std::env::var("COLUMNS").ok().and_then(|c| c.parse().ok());
                        let fleet = capacity::fleet_table(hub).await;
                        capacity::beside(&text, &fleet, 4, width.unwrap_or(160))
                    }
                    None => text,
                };
                print_table(&text, tty);
                last_print = Some(now);
            }
            let next = (Instant::now() + if tty { REFRESH } else { STEP_LINES }).min(end);
            tokio::select! {
                () = self.stop.cancelled() => return Ended::Interrupted,
                () = tokio::time::sleep_until(next) => {}
            }
        }
    }

    /// After the duration: waits for every object to show what KCP last
    /// asked of it, then prints the final table. Fails if one never does,
    /// or if a step of the loop was not seen in time.
    async fn converge(
        &self,
        observer: &Observer,
        progress: &Progress,
        notes: &[String],
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + CONVERGE_TIMEOUT;
        let started = Instant::now();
        let mut first = true;
        loop {
            let observation = observer.observe().await;
            if first && !observation.settled() {
                println!(
                    "\ndriver stopped; waiting up to {CONVERGE_TIMEOUT:?} for the clusters and KCP to catch up ..."
                );
            }
            first = false;
            let (complete, missed) = progress.totals();
            let events = progress.recent(EVENTS_SHOWN);
            if observation.settled() {
                let title = format!(
                    "Uplink demo · final, after {}s: {complete} steps of the loop seen through, {missed} missed; \
                     every object shows what KCP last asked (caught up in {:.1}s)",
                    self.args.duration.as_secs(),
                    started.elapsed().as_secs_f64()
                );
                print_final(&title, &observation, &events, notes);
                if missed > 0 {
                    anyhow::bail!(
                        "{missed} step(s) of the loop were not seen within {}s (see the steps above and the logs in {})",
                        driver::STEP_TIMEOUT.as_secs(),
                        self.dir.path.display()
                    );
                }
                return Ok(());
            }
            let interrupted = tokio::select! {
                () = self.stop.cancelled() => true,
                () = tokio::time::sleep(Duration::from_millis(250)) => false,
            };
            if interrupted {
                print_final(
                    "Uplink demo: interrupted while KCP caught up",
                    &observation,
                    &events,
                    notes,
                );
                return Ok(());
            }
            if Instant::now() >= deadline {
                let behind: Vec<String> = observation
                    .objects
                    .iter()
                    .filter(|o| !o.settled())
                    .map(|o| o.object.to_string())
                    .collect();
                let title = format!(
                    "Uplink demo · final: NOT caught up within {CONVERGE_TIMEOUT:?} for {}",
                    behind.join(", ")
                );
                print_final(&title, &observation, &events, notes);
                anyhow::bail!(
                    "{} do not show what KCP last asked (see the table above and the logs in {})",
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
fn print_final(title: &str, observation: &Observation, events: &[LoopEvent], notes: &[String]) {
    print_table(&table::render(title, observation, events, notes), false);
}
