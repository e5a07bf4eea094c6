//! `uplink-agent`: parses flags, sets up logging and signals, and runs the
//! library's agent until SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use jiff::SignedDuration;
use tokio_util::sync::CancellationToken;
use uplink_agent::config::{
    EventSettings, HubDiscovery, ResourceSpecError, parse_duration, parse_resource_list,
    parse_signed_duration,
};
use uplink_agent::{AgentConfig, ReconnectSettings, ResourceSpec};

/// Watches the objects KCP placed on this cluster and streams their status to
/// the Uplink hub over a mutually authenticated TLS WebSocket; applies the
/// objects KCP placed on this cluster when the hub sends them down.
///
/// An object is synced when its namespace carries the annotation
/// `kcp.io/namespace-locator` (JSON with `cluster`: the KCP workspace, and
/// `namespace`: the upstream namespace). Every flag can also be set through
/// the environment variable shown with it.
#[derive(Debug, Parser)]
#[command(name = "uplink-agent", version)]
struct Args {
    /// Name of this cluster, as the hub knows it. Must match the identity in
    /// the client certificate.
    #[arg(long, env = "UPLINK_AGENT_CLUSTER")]
    cluster: String,

    /// Kubeconfig of the cluster to watch. Without it: in-cluster
    /// configuration, else $KUBECONFIG or ~/.kube/config.
    #[arg(long, env = "UPLINK_AGENT_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,

    /// The hub's tunnel endpoint, wss://HOST:PORT (path defaults to
    /// /v1/tunnel). A replicated hub: every replica's, comma-separated (one
    /// session each); or, with --hub-discovery=dns, one URL whose host is a
    /// headless Service name.
    #[arg(long, env = "UPLINK_AGENT_HUB_URL")]
    hub_url: String,

    /// How the hub's replicas are found: `static` (--hub-url lists them) or
    /// `dns` (--hub-url's host is resolved, one session per address, again
    /// every --hub-resolve-interval; the TLS server name stays the host).
    #[arg(long, env = "UPLINK_AGENT_HUB_DISCOVERY", default_value = "static")]
    hub_discovery: HubDiscovery,

    /// How often --hub-discovery=dns resolves the hub's name again.
    #[arg(long, env = "UPLINK_AGENT_HUB_RESOLVE_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    hub_resolve_interval: Duration,

    /// PEM client certificate (chain) presented to the hub.
    #[arg(long, env = "UPLINK_AGENT_TLS_CERT")]
    tls_cert: PathBuf,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "UPLINK_AGENT_TLS_KEY")]
    tls_key: PathBuf,

    /// PEM CA certificate the hub's serving certificate must chain to; the
    /// only trusted root.
    #[arg(long, env = "UPLINK_AGENT_HUB_CA")]
    hub_ca: PathBuf,

    /// How often --tls-cert, --tls-key and --hub-ca are read again. Changed
    /// files (as cert-manager renews a mounted Secret) are used from the
    /// next connection; the session in progress stays. An unusable change
    /// is logged and the previous material kept. 0s: never.
    #[arg(long, env = "UPLINK_AGENT_TLS_RELOAD_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    tls_reload_interval: Duration,

    /// Resource types to watch, comma-separated, as resource.version.group
    /// (deployments.v1.apps; core group: pods.v1). Resolved through
    /// discovery, so CRDs work.
    #[arg(
        long,
        env = "UPLINK_AGENT_RESOURCES",
        value_delimiter = ',',
        default_value = "deployments.v1.apps"
    )]
    resources: Vec<ResourceSpec>,

    /// Resource types the agent applies in this cluster when the hub sends
    /// them down (protocol version 2), comma-separated like --resources,
    /// e.g. the list: deployments.v1.apps,statefulsets.v1.apps,
    /// daemonsets.v1.apps,jobs.v1.batch,services.v1,configmaps.v1,
    /// secrets.v1,persistentvolumeclaims.v1 (deploy/agent passes it, with
    /// the RBAC for those writes). Empty, the default, turns the downward
    /// lane off: the agent offers only protocol version 1 and reports status
    /// only, so an agent never writes to a cluster it was not granted.
    #[arg(
        long,
        env = "UPLINK_AGENT_DOWNWARD_RESOURCES",
        default_value = "",
        value_parser = parse_optional_resources
    )]
    downward_resources: ResourceList,

    /// Address of the /metrics, /healthz and /readyz server. Loopback by
    /// default; set e.g. 0.0.0.0:9090 where probes or Prometheus must reach
    /// it from outside the pod.
    #[arg(
        long,
        env = "UPLINK_AGENT_HTTP_LISTEN",
        default_value = "127.0.0.1:9090"
    )]
    http_listen: SocketAddr,

    /// How often to send heartbeats (the shorter of this and the hub's
    /// interval is used; a hub replica that asks for keepalives gets them
    /// at the interval it asks for). A connection silent for 3 intervals
    /// is dead.
    #[arg(long, env = "UPLINK_AGENT_HEARTBEAT_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    heartbeat_interval: Duration,

    /// Unacknowledged outbox entries above which the agent reports an overflow
    /// (uplink_agent_outbox_overflow_total). Entries are still kept: at most
    /// one per watched object.
    #[arg(long, env = "UPLINK_AGENT_OUTBOX_LIMIT", default_value_t = 100_000)]
    outbox_limit: usize,

    /// Upper bound of the first reconnect delay (full jitter: the delay is
    /// drawn uniformly below the bound, which doubles per failed attempt).
    #[arg(long, env = "UPLINK_AGENT_RECONNECT_INITIAL", default_value = "500ms", value_parser = parse_duration)]
    reconnect_initial: Duration,

    /// Cap of the reconnect delay bound.
    #[arg(long, env = "UPLINK_AGENT_RECONNECT_MAX", default_value = "30s", value_parser = parse_duration)]
    reconnect_max: Duration,

    /// Log format.
    #[arg(long, env = "UPLINK_AGENT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    /// For tests of clock skew only: a signed duration (e.g. -2s, 500ms) added
    /// to every timestamp the agent sends.
    #[arg(
        long,
        env = "UPLINK_AGENT_CLOCK_OFFSET",
        default_value = "0s",
        value_parser = parse_signed_duration,
        allow_hyphen_values = true
    )]
    clock_offset: SignedDuration,

    /// Watch nodes and pods and send the cluster's capacity (nodes, capacity,
    /// allocatable, requests, usage, pods by phase) with heartbeats.
    #[arg(long, env = "UPLINK_AGENT_CAPACITY", default_value_t = true, action = clap::ArgAction::Set)]
    capacity: bool,

    /// Report the events.k8s.io/v1 Events about synced objects to the hub,
    /// folded into series and rate-limited (per object 0.2/s, burst 5; per
    /// cluster 50/s, burst 200), never ahead of status.
    #[arg(long, env = "UPLINK_AGENT_EVENTS", default_value_t = true, action = clap::ArgAction::Set)]
    events: bool,

    /// Comma-separated types whose objects born in this cluster KCP holds
    /// whole (`persistentvolumes.v1,...`): those labelled
    /// `state.workload.kcp.io/<syncTargetKey>: Upsync` go up with their
    /// spec and status. Empty: none. Each must be served here.
    #[arg(long, env = "UPLINK_AGENT_UPSYNC_RESOURCES", default_value = "", value_parser = parse_optional_resources)]
    upsync_resources: ResourceList,
}

/// A `--downward-resources` or `--upsync-resources` list (possibly empty,
/// unlike `--resources`).
#[derive(Debug, Clone)]
struct ResourceList(Vec<ResourceSpec>);

fn parse_optional_resources(list: &str) -> Result<ResourceList, ResourceSpecError> {
    parse_resource_list(list).map(ResourceList)
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl Args {
    fn into_config(self) -> AgentConfig {
        AgentConfig {
            cluster: self.cluster,
            kubeconfig: self.kubeconfig,
            hub_url: self.hub_url,
            hub_discovery: self.hub_discovery,
            hub_resolve_interval: self.hub_resolve_interval,
            hub_resolver: None,
            tls_cert: self.tls_cert,
            tls_key: self.tls_key,
            hub_ca: self.hub_ca,
            tls_reload_interval: self.tls_reload_interval,
            resources: self.resources,
            downward_resources: self.downward_resources.0,
            http_listen: Some(self.http_listen),
            heartbeat_interval: self.heartbeat_interval,
            outbox_limit: self.outbox_limit,
            clock_offset: self.clock_offset,
            reconnect: ReconnectSettings {
                initial: self.reconnect_initial,
                max: self.reconnect_max,
                ..ReconnectSettings::default()
            },
            capacity: self.capacity,
            events: self.events.then(EventSettings::default),
            upsync_resources: self.upsync_resources.0,
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
}

/// Cancels `token` on SIGTERM or Ctrl-C.
async fn cancel_on_signal(token: CancellationToken) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            r = tokio::signal::ctrl_c() => { r.context("waiting for Ctrl-C")?; tracing::info!("Ctrl-C received"); }
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c()
            .await
            .context("waiting for Ctrl-C")?;
        tracing::info!("Ctrl-C received");
    }
    token.cancel();
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(args.log_format);
    // The one process-wide TLS provider (kube's client uses it too).
    let _ = rustls::crypto::ring::default_provider().install_default();

    let shutdown = CancellationToken::new();
    let signals = tokio::spawn(cancel_on_signal(shutdown.clone()));
    let result = uplink_agent::run(args.into_config(), shutdown).await;
    signals.abort();
    if let Err(e) = &result {
        tracing::error!(error = %e, "agent failed");
    }
    result.context("uplink-agent")
}
