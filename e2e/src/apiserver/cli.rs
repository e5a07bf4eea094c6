//! `uplink-e2e apiserver`: one API server on the command line, until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::{ApiServer, ApiServerConfig};

/// Flags of `uplink-e2e apiserver`; each has an `UPLINK_APISERVER_*` environment twin.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiserverArgs {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, env = "UPLINK_APISERVER_LISTEN", default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Write a kubeconfig for the server here (plus `<file>.<workspace>` for each --workspace).
    #[arg(long, env = "UPLINK_APISERVER_KUBECONFIG_OUT")]
    pub kubeconfig_out: Option<PathBuf>,
    /// Bearer token clients must present (random when unset).
    #[arg(long, env = "UPLINK_APISERVER_TOKEN")]
    pub token: Option<String>,
    /// KCP workspace to create at start, e.g. `root:demo:a` (repeatable; comma-separated in the env var).
    #[arg(
        long = "workspace",
        env = "UPLINK_APISERVER_WORKSPACE",
        value_delimiter = ','
    )]
    pub workspaces: Vec<String>,
    /// Watch events kept per resource for resuming watches.
    #[arg(long, env = "UPLINK_APISERVER_WATCH_HISTORY", default_value_t = 10_000)]
    pub watch_history: usize,
    /// Simulate a Deployment controller: the physical cluster's Deployments
    /// get the status of a completed rollout of their spec.
    #[arg(long, env = "UPLINK_APISERVER_DEPLOYMENT_CONTROLLER")]
    pub deployment_controller: bool,
}

/// Runs the server until Ctrl-C or SIGTERM, printing its URL and kubeconfig path(s).
pub async fn run(args: ApiserverArgs) -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let config = ApiServerConfig {
        listen: args.listen,
        token: args.token,
        workspaces: args.workspaces.clone(),
        watch_history: args.watch_history,
        deployment_controller: args.deployment_controller,
        ..ApiServerConfig::default()
    };
    let server = ApiServer::start(config).await?;
    println!("listening on {}", server.url());
    if let Some(path) = &args.kubeconfig_out {
        server.write_kubeconfig(path, None)?;
        println!("kubeconfig: {}", path.display());
        for ws in &args.workspaces {
            let mut name = path.as_os_str().to_owned();
            name.push(format!(".{ws}"));
            let ws_path = PathBuf::from(name);
            server.write_kubeconfig(&ws_path, Some(ws))?;
            println!("kubeconfig for workspace {ws}: {}", ws_path.display());
        }
    }
    wait_for_signal().await?;
    server.shutdown().await;
    Ok(())
}

#[cfg(unix)]
async fn wait_for_signal() -> std::io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result,
        _ = term.recv() => Ok(()),
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() -> std::io::Result<()> {
    tokio::signal::ctrl_c().await
}
