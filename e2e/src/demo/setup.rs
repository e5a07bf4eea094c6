//! What the demo needs before it starts anything: the hub and agent
//! binaries, its directory, its log, and the notes that tell a person how
//! to look at KCP and the clusters with `kubectl` while it runs.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::DemoArgs;
use super::launch::Files;
use super::seed::placement_label;
use super::topology::Topology;
use crate::binaries::{self, Profile};

/// The programs the demo runs as children.
#[derive(Debug, Clone)]
pub(super) struct Binaries {
    pub(super) hub: PathBuf,
    pub(super) agent: PathBuf,
}

/// The hub and agent binaries: the overrides, or built and found beside us.
pub(super) async fn find_binaries(args: &DemoArgs) -> anyhow::Result<Binaries> {
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

/// Sends the demo's own tracing (the embedded API servers, the driver) to a
/// file, so it never scribbles over the table. Left alone if a subscriber
/// is already installed.
pub(super) fn init_logging(path: &Path) {
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

/// Certificates, kubeconfigs and logs: `--dir` (kept at exit), or
/// `$TMPDIR/uplink-demo-<pid>`, removed at exit unless `--keep-dir` was
/// given or the demo failed.
#[derive(Debug)]
pub(super) struct DemoDir {
    pub(super) path: PathBuf,
    pub(super) keep: bool,
}

impl DemoDir {
    pub(super) fn create(dir: Option<&Path>, keep: bool) -> anyhow::Result<DemoDir> {
        let (path, keep) = match dir {
            Some(dir) => (dir.to_owned(), true),
            None => (
                std::env::temp_dir().join(format!("uplink-demo-{}", std::process::id())),
                keep,
            ),
        };
        std::fs::create_dir_all(path.join("logs"))
            .with_context(|| format!("creating the demo directory {}", path.display()))?;
        Ok(DemoDir { path, keep })
    }
}

/// The kubeconfig of each KCP workspace and each cluster, as written.
#[derive(Debug, Clone, Default)]
pub(super) struct Kubeconfigs {
    /// (workspace, path), the workspace's server being `<KCP>/clusters/<workspace>`.
    pub(super) workspaces: Vec<(String, PathBuf)>,
    /// (cluster, path).
    pub(super) clusters: Vec<(String, PathBuf)>,
    /// The workspace holding the clusters' SyncTargets.
    pub(super) synctargets: PathBuf,
}

/// The lines under the table: how to look at KCP and the clusters yourself
/// (paths quoted, ready to paste), where the logs are.
pub(super) fn notes(files: &Files, kubeconfigs: &Kubeconfigs, topology: &Topology) -> Vec<String> {
    let mut notes = vec![
        "look for yourself in a second terminal (README.md, \"The full loop with kubectl\"):"
            .to_owned(),
    ];
    for (workspace, path) in &kubeconfigs.workspaces {
        let namespaces: Vec<String> = topology
            .upstream_namespaces()
            .into_iter()
            .filter(|(w, _)| w == workspace)
            .map(|(_, n)| n)
            .collect();
        let namespace = namespaces.first().map_or("default", String::as_str);
        notes.push(format!(
            "  KCP {workspace:<11}  kubectl --kubeconfig '{}' get deployments -n {namespace}",
            path.display()
        ));
    }
    for (cluster, path) in &kubeconfigs.clusters {
        notes.push(format!(
            "  {cluster:<15}  kubectl --kubeconfig '{}' get deployments -A",
            path.display()
        ));
    }
    if let Some((cluster, _)) = kubeconfigs.clusters.first() {
        notes.push(format!(
            "  placement on {cluster}: label {}=Sync",
            placement_label(cluster)
        ));
    }
    notes.push(format!(
        "  KCP {:<11}  kubectl --kubeconfig '{}' get synctargets",
        super::seed::SYNCTARGET_WORKSPACE,
        kubeconfigs.synctargets.display()
    ));
    notes.push(format!(
        "logs: {} (hub.log, agent-<cluster>.log), {}",
        files.logs.display(),
        files.logs.with_file_name("demo.log").display()
    ));
    notes
}
