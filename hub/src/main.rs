//! `uplink-hub`: flags → [`HubConfig`], logging, signals, then
//! [`uplink_hub::run`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use uplink_hub::aggregate::{FeatureGates, MergePolicy};
use uplink_hub::budget::MemoryBudget;
use uplink_hub::config::{EventSettings, ReplicasConfig, ReplicasFlags};
use uplink_hub::{HubConfig, StatusWrite, UpstreamMode};
use uplink_protocol::Limits;
use uplink_protocol::resource::ResourceSpec;

/// mimalloc instead of glibc's malloc: the ingest path allocates and frees
/// small objects per delta on every runtime thread, where glibc spent about
/// 40 % of the hub's CPU in a profile (see BENCHMARKS.md), and its per-thread
/// arenas hold memory that mimalloc gives back.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Accepts Uplink agents over mutual-TLS WebSockets, keeps the latest status
/// each cluster reports, and writes it into the objects' status in KCP.
#[derive(Debug, Parser)]
#[command(
    name = "uplink-hub",
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Args {
    /// Without a command the hub serves; `report` asks a running hub.
    #[command(subcommand)]
    command: Option<Command>,

    /// Address of the agents' TLS WebSocket tunnel (path /v1/tunnel).
    #[arg(long, env = "UPLINK_HUB_LISTEN", default_value = "0.0.0.0:8443")]
    listen: SocketAddr,

    /// Address of the HTTP endpoint: /metrics, /healthz, /readyz and the
    /// hub API (/api/v1/clusters, /api/v1/objects, ...). Loopback by
    /// default. Set e.g. 0.0.0.0:8080 where probes or Prometheus must reach
    /// it; --http-auth decides who may read the API.
    #[arg(long, env = "UPLINK_HUB_HTTP_LISTEN", default_value = "127.0.0.1:8080")]
    http_listen: SocketAddr,

    /// Who may read the hub API (and /metrics with --http-metrics-auth):
    /// `delegated` checks bearer tokens with a TokenReview and authorizes
    /// each request with a SubjectAccessReview (verb get, the request
    /// path as non-resource URL) at the API server of --auth-kubeconfig;
    /// `client-cert` accepts any client certificate signed by
    /// --http-client-ca; `none` checks nothing (local use on loopback).
    /// /healthz and /readyz are always open.
    #[arg(
        long,
        env = "UPLINK_HUB_HTTP_AUTH",
        value_enum,
        default_value = "delegated"
    )]
    http_auth: uplink_hub::http::HttpAuthMode,

    /// Kubeconfig of the API server that answers the TokenReviews and
    /// SubjectAccessReviews of --http-auth=delegated (the hub's identity
    /// there needs the system:auth-delegator ClusterRole). Default: the
    /// hub's in-cluster service account.
    #[arg(long, env = "UPLINK_HUB_AUTH_KUBECONFIG")]
    auth_kubeconfig: Option<PathBuf>,

    /// PEM file with the CA of client certificates for the HTTP endpoint.
    /// Set, the endpoint serves HTTPS (with --tls-cert) and a client
    /// certificate it signed authenticates as its subject's CN (groups: its
    /// O values), as kube-apiserver reads it.
    #[arg(long, env = "UPLINK_HUB_HTTP_CLIENT_CA")]
    http_client_ca: Option<PathBuf>,

    /// Put before the request path in the SubjectAccessReviews of
    /// --http-auth=delegated: RBAC grants e.g. nonResourceURLs
    /// /uplink-hub/api/v1/*. Kubernetes grants every authenticated user
    /// get on /api/* (system:discovery), so the bare path would open the hub
    /// API to any ServiceAccount; empty only where no such role exists.
    #[arg(long, env = "UPLINK_HUB_AUTH_PATH_PREFIX", default_value = uplink_hub::http::auth::DEFAULT_PATH_PREFIX)]
    auth_path_prefix: String,

    /// /metrics needs authorization too (as every /api/v1 path does);
    /// without it /metrics is open.
    #[arg(long, env = "UPLINK_HUB_HTTP_METRICS_AUTH")]
    http_metrics_auth: bool,

    /// PEM file with the hub's serving certificate (chain) for the tunnel.
    #[arg(long, env = "UPLINK_HUB_TLS_CERT", required = true)]
    tls_cert: Option<PathBuf>,

    /// PEM file with the private key of --tls-cert.
    #[arg(long, env = "UPLINK_HUB_TLS_KEY", required = true)]
    tls_key: Option<PathBuf>,

    /// PEM file with the CA that signs agents' client certificates. A
    /// certificate proves the cluster named by its URI SAN
    /// `uplink://cluster/<name>` (else its subject CN).
    #[arg(long, env = "UPLINK_HUB_CLIENT_CA", required = true)]
    client_ca: Option<PathBuf>,

    /// How often --tls-cert, --tls-key, --client-ca (and --http-client-ca)
    /// are read again. Changed files (as cert-manager renews a mounted
    /// Secret) are used for new handshakes; established sessions stay. An
    /// unusable change is logged and the previous material kept. 0s: never.
    #[arg(long, env = "UPLINK_HUB_TLS_RELOAD_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    tls_reload_interval: Duration,

    /// Kubeconfig of the upstream (KCP). Without it the configuration is
    /// inferred: in-cluster service account, else $KUBECONFIG or ~/.kube/config.
    #[arg(long, env = "UPLINK_HUB_KCP_KUBECONFIG")]
    kcp_kubeconfig: Option<PathBuf>,

    /// The upstream's kind: `kcp` addresses each object under
    /// /clusters/<workspace>; `kubernetes` has no workspaces.
    #[arg(long, env = "UPLINK_HUB_UPSTREAM", value_enum, default_value = "kcp")]
    upstream: UpstreamMode,

    /// How often agents send heartbeats (e.g. 10s, 500ms, 1m). A connection
    /// silent for three intervals is dropped.
    #[arg(long, env = "UPLINK_HUB_HEARTBEAT_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    heartbeat_interval: Duration,

    /// Log format: `text` for people, `json` for log pipelines. The level
    /// comes from RUST_LOG (default `info`).
    #[arg(
        long,
        env = "UPLINK_HUB_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,

    /// Sustained upstream status writes per second (token bucket rate; 0
    /// means unlimited).
    #[arg(long, env = "UPLINK_HUB_WRITE_QPS", default_value_t = 50.0)]
    write_qps: f64,

    /// Upstream status writes allowed in a burst (token bucket size).
    #[arg(long, env = "UPLINK_HUB_WRITE_BURST", default_value_t = 100)]
    write_burst: u32,

    /// Upstream status writes in flight at once.
    #[arg(long, env = "UPLINK_HUB_WRITE_CONCURRENCY", default_value_t = 4)]
    write_concurrency: usize,

    /// How long an object that changed waits before its status is written
    /// upstream; changes meanwhile ride along, so a burst becomes one write.
    /// It adds at most this much to every change's latency; 0 writes at once.
    #[arg(long, env = "UPLINK_HUB_WRITE_SETTLE", default_value = "20ms", value_parser = parse_duration)]
    write_settle: Duration,

    /// How long an object that keeps changing (changes less than five settle
    /// times apart) may wait at most: its window stays open while changes
    /// keep coming at its recent pace, up to this long from its first
    /// change. An isolated change still waits `--write-settle`; at most
    /// `--write-settle`: every change waits exactly that.
    #[arg(long, env = "UPLINK_HUB_WRITE_SETTLE_MAX", default_value = "500ms", value_parser = parse_duration)]
    write_settle_max: Duration,

    /// How object status is written to KCP: `apply` (server-side apply of
    /// /status with field manager `uplink-hub`; conditions other
    /// controllers set on the same object stay) or `merge-patch` (a JSON
    /// merge patch; it replaces the whole `conditions` list).
    #[arg(
        long,
        env = "UPLINK_HUB_STATUS_WRITE",
        value_enum,
        default_value = "apply"
    )]
    status_write: StatusWrite,

    /// Send every upstream write with dryRun=All: the server validates it
    /// and changes nothing.
    #[arg(long, env = "UPLINK_HUB_DRY_RUN")]
    dry_run: bool,

    /// Longest time from an agent's TCP connect to a finished TLS
    /// handshake (at most --handshake-timeout). A legitimate handshake takes
    /// a few round trips; a connection still in it at the deadline is closed.
    #[arg(long, env = "UPLINK_HUB_TLS_HANDSHAKE_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    tls_handshake_timeout: Duration,

    /// Longest time from an agent's TCP connect to its Hello.
    #[arg(long, env = "UPLINK_HUB_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    handshake_timeout: Duration,

    /// Connections in their TLS handshake at once, all sources. When full,
    /// the oldest of them is closed to make room for a new one, so stalled
    /// connections cannot lock agents out; the accept loop never waits.
    #[arg(
        long,
        env = "UPLINK_HUB_MAX_TLS_HANDSHAKES",
        alias = "max-concurrent-handshakes",
        default_value_t = 1024
    )]
    max_tls_handshakes: usize,

    /// Connections in their TLS handshake at once from one source address
    /// (IPv6: one /64). When full, that source's oldest is closed.
    #[arg(
        long,
        env = "UPLINK_HUB_MAX_TLS_HANDSHAKES_PER_SOURCE",
        default_value_t = 32
    )]
    max_tls_handshakes_per_source: usize,

    /// Connections past TLS that have not sent their Hello yet, all
    /// clusters. When full, the oldest of them is closed.
    #[arg(long, env = "UPLINK_HUB_MAX_AWAITING_HELLO", default_value_t = 1024)]
    max_awaiting_hello: usize,

    /// Connections to the HTTP endpoint (API, metrics, probes) open at
    /// once. Past it a new connection is closed unanswered and counted in
    /// uplink_hub_http_connections_refused_total.
    #[arg(long, env = "UPLINK_HUB_HTTP_MAX_CONNECTIONS", default_value_t = 256)]
    http_max_connections: usize,

    /// Connections past TLS that have not sent their Hello yet, per cluster
    /// (certificate identity). When full, that cluster's oldest is closed.
    #[arg(
        long,
        env = "UPLINK_HUB_MAX_AWAITING_HELLO_PER_CLUSTER",
        default_value_t = 4
    )]
    max_awaiting_hello_per_cluster: usize,

    /// How long shutdown waits for pending upstream writes.
    #[arg(long, env = "UPLINK_HUB_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    shutdown_timeout: Duration,

    /// Largest frame an agent may send, in bytes.
    #[arg(long, env = "UPLINK_HUB_MAX_FRAME_BYTES", default_value_t = Limits::default().max_frame_bytes)]
    max_frame_bytes: u32,

    /// Most objects the hub keeps for one cluster.
    #[arg(long, env = "UPLINK_HUB_MAX_OBJECTS_PER_CLUSTER", default_value_t = Limits::default().max_objects_per_cluster)]
    max_objects_per_cluster: u64,

    /// Bytes the hub may hold for one cluster's statuses (status text,
    /// object names and ~512 bytes per object); a report past it is
    /// refused (`cluster_memory_budget` in the agent's Ack).
    #[arg(long, env = "UPLINK_HUB_MAX_STATUS_BYTES_PER_CLUSTER", default_value_t = MemoryBudget::DEFAULT_CLUSTER_BYTES)]
    max_status_bytes_per_cluster: u64,

    /// Bytes the hub may hold for all clusters' statuses; past it a cluster
    /// holding more than its fair share (this / clusters) is refused
    /// (`hub_memory_budget`).
    #[arg(long, env = "UPLINK_HUB_MAX_STATUS_BYTES", default_value_t = MemoryBudget::DEFAULT_TOTAL_BYTES)]
    max_status_bytes: u64,

    /// Agents' event series (protocol version 3) waiting to be written to
    /// KCP; past it the oldest is dropped (counted in
    /// uplink_hub_events_dropped_total{reason="queue_full"}).
    #[arg(long, env = "UPLINK_HUB_EVENT_QUEUE_SIZE", default_value_t = EventSettings::default().queue_size)]
    event_queue_size: usize,

    /// Sustained event writes to KCP per second (token bucket rate; 0
    /// means unlimited). Separate from --write-qps: events never slow
    /// status down.
    #[arg(long, env = "UPLINK_HUB_EVENT_WRITE_QPS", default_value_t = EventSettings::default().write_qps)]
    event_write_qps: f64,

    /// Event writes to KCP allowed in a burst (token bucket size).
    #[arg(long, env = "UPLINK_HUB_EVENT_WRITE_BURST", default_value_t = EventSettings::default().write_burst)]
    event_write_burst: u32,

    /// Event series reports one cluster may have accepted per second, over
    /// all its connections (0 means unlimited); past it they are dropped
    /// (uplink_hub_events_dropped_total{reason="rate_limited"}).
    #[arg(long, env = "UPLINK_HUB_EVENT_RATE_PER_CLUSTER", default_value_t = EventSettings::default().cluster_rate)]
    event_rate_per_cluster: f64,

    /// Event series reports one cluster may have accepted in a burst.
    #[arg(long, env = "UPLINK_HUB_EVENT_BURST_PER_CLUSTER", default_value_t = EventSettings::default().cluster_burst)]
    event_burst_per_cluster: u32,

    /// KCP clients (one per workspace) the hub keeps; past it the least
    /// recently used is evicted (and built again when needed).
    #[arg(long, env = "UPLINK_HUB_MAX_KCP_CLIENTS", default_value_t = uplink_hub::KubeUpstream::DEFAULT_CLIENTS)]
    max_kcp_clients: usize,

    /// YAML merge policy: strategy per resource type, field rules, cluster
    /// priority and labels, offline policy. Without it: Newest with the
    /// built-in kind merges, Offline clusters excluded.
    #[arg(long, env = "UPLINK_HUB_CONFIG")]
    config: Option<PathBuf>,

    /// Feature gates, Kubernetes syntax: UpstreamSync=true,
    /// UpstreamSyncAggregation=false, UpstreamSyncConflictResolution=true
    /// (all default to true).
    #[arg(long, env = "UPLINK_HUB_FEATURE_GATES", default_value = "", value_parser = parse_gates)]
    feature_gates: FeatureGates,

    /// Silence after which a cluster is Offline (its reports then follow the
    /// policy's offlinePolicy).
    #[arg(long, env = "UPLINK_HUB_OFFLINE_GRACE", default_value = "5m", value_parser = parse_duration)]
    offline_grace: Duration,

    /// KCP workspace that holds one SyncTarget (workload.kcp.io/v1alpha1)
    /// per cluster, named like the cluster's certificate identity. KCP's
    /// placement on it decides what the cluster may report; the hub writes
    /// its heartbeat time, Ready condition and capacity, and never creates
    /// it. Empty with --upstream kubernetes (no workspaces).
    #[arg(long, env = "UPLINK_HUB_SYNCTARGET_WORKSPACE", default_value = "root")]
    synctarget_workspace: String,

    /// Resource types the hub syncs, status up and spec down, as
    /// resource.version.group (pods.v1 for the core group), comma-separated.
    /// Placement is watched for each, per connected cluster; reports of
    /// other types are refused; each cluster's agent says which of them it
    /// applies (its --downward-resources).
    #[arg(
        long,
        env = "UPLINK_HUB_RESOURCES",
        value_delimiter = ',',
        default_value = "deployments.v1.apps,statefulsets.v1.apps,daemonsets.v1.apps,jobs.v1.batch,services.v1,configmaps.v1,secrets.v1,persistentvolumeclaims.v1"
    )]
    resources: Vec<ResourceSpec>,

    /// Resource types this hub accepts for upsync: objects born in a
    /// cluster (persistentvolumes.v1, ...) that the hub creates, updates
    /// and deletes in KCP, kept whole. A session upsyncs the types its
    /// agent names too. Comma-separated; none of them in --resources.
    #[arg(long, env = "UPLINK_HUB_UPSYNC_RESOURCES", value_delimiter = ',')]
    upsync_resources: Vec<ResourceSpec>,

    /// Upsynced objects waiting for the upsync writer; at the bound an
    /// agent's upsync reports wait (and its acks with them), nothing is
    /// dropped. Each holds an object of up to 1.5 MiB: the bound is what
    /// bounds their memory.
    #[arg(long, env = "UPLINK_HUB_UPSYNC_QUEUE_SIZE", default_value_t = 1_000)]
    upsync_queue_size: usize,

    /// How long a report of an object that KCP has not (yet) placed on the
    /// reporting cluster is held, once that cluster's placement is listed,
    /// before it is refused.
    #[arg(long, env = "UPLINK_HUB_PLACEMENT_HOLD", default_value = "30s", value_parser = parse_duration)]
    placement_hold: Duration,

    /// Longest time a SyncTarget's lastSyncerHeartbeatTime may lag behind
    /// the cluster's last heartbeat (state changes are written at once).
    #[arg(long, env = "UPLINK_HUB_SYNCTARGET_HEARTBEAT_PERIOD", default_value = "30s", value_parser = parse_duration)]
    synctarget_heartbeat_period: Duration,

    /// KCP writes queued on behalf of one cluster at which its agent is told
    /// to slow down (Throttle); below half of it the agent is released.
    /// Other clusters are not throttled for it. 0 never throttles.
    #[arg(
        long,
        env = "UPLINK_HUB_THROTTLE_QUEUE_DEPTH",
        default_value_t = 10_000
    )]
    throttle_queue_depth: usize,

    /// How long a throttled agent pauses its deltas.
    #[arg(long, env = "UPLINK_HUB_THROTTLE_PAUSE", default_value = "1s", value_parser = parse_duration)]
    throttle_pause: Duration,

    /// How often a capacity history point is recorded per cluster and for
    /// the fleet.
    #[arg(long, env = "UPLINK_HUB_CAPACITY_SAMPLE_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    capacity_sample_interval: Duration,

    /// How long capacity history is kept.
    #[arg(long, env = "UPLINK_HUB_CAPACITY_RETENTION", default_value = "24h", value_parser = parse_duration)]
    capacity_retention: Duration,

    /// Most capacity history points per series; older points are merged
    /// (downsampled) to stay under it.
    #[arg(long, env = "UPLINK_HUB_CAPACITY_MAX_POINTS", default_value_t = 2880)]
    capacity_max_points: usize,

    /// Largest difference between an agent's clock and the hub's: a
    /// heartbeat further off has its report (clock sample and cluster
    /// summary) refused and counted in uplink_hub_reports_refused_total.
    /// Within it, the hub corrects for the agent's clock offset.
    #[arg(long, env = "UPLINK_HUB_MAX_CLOCK_SKEW", default_value = "24h", value_parser = parse_duration)]
    max_clock_skew: Duration,

    /// Makes this hub one of several replicas: the namespace of the
    /// coordination.k8s.io Leases by which they share the shards (in the
    /// cluster the hub runs in, or a KCP workspace via
    /// --replicas-kubeconfig). Absent: a single hub, holding every shard.
    #[arg(long, env = "UPLINK_HUB_REPLICAS_LEASE_NAMESPACE")]
    replicas_lease_namespace: Option<String>,
    /// The API server holding the Leases; default: in-cluster (else the
    /// usual kubeconfig rules).
    #[arg(long, env = "UPLINK_HUB_REPLICAS_KUBECONFIG")]
    replicas_kubeconfig: Option<PathBuf>,
    /// This replica's name among them, unique (a DNS label); default: the
    /// host name (in Kubernetes, the pod name).
    #[arg(long, env = "UPLINK_HUB_IDENTITY")]
    replicas_identity: Option<String>,
    /// How many shards the workspaces hash into (1..=1024); every replica
    /// must be given the same.
    #[arg(long, env = "UPLINK_HUB_SHARDS", default_value_t = 16)]
    shards: u16,
    /// The Leases' name prefix (and label value).
    #[arg(
        long,
        env = "UPLINK_HUB_REPLICAS_LEASE_PREFIX",
        default_value = "uplink-hub"
    )]
    replicas_lease_prefix: String,
    /// How long the others wait, from seeing a Lease change, before taking it.
    #[arg(long, env = "UPLINK_HUB_REPLICAS_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    replicas_lease_duration: Duration,
    /// How long after a renewal started this replica stops writing the shard
    /// unless renewed again (shorter than the lease duration).
    #[arg(long, env = "UPLINK_HUB_REPLICAS_RENEW_DEADLINE", default_value = "10s", value_parser = parse_duration)]
    replicas_renew_deadline: Duration,
    /// How often the Leases are renewed, read and balanced.
    #[arg(long, env = "UPLINK_HUB_REPLICAS_RETRY_PERIOD", default_value = "2s", value_parser = parse_duration)]
    replicas_retry_period: Duration,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Prints the capacity report of a running hub (GET /api/v1/capacity).
    Report {
        /// The hub's HTTP endpoint (its --http-listen), e.g. http://hub:8080.
        #[arg(long, env = "UPLINK_HUB_HTTP")]
        hub_http: String,
        /// Bearer token sent to the hub (its --http-auth=delegated checks
        /// it), e.g. $(kubectl create token <serviceaccount>).
        #[arg(long, env = "UPLINK_HUB_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// json, csv or table.
        #[arg(
            long,
            env = "UPLINK_HUB_REPORT_FORMAT",
            value_enum,
            default_value = "table"
        )]
        format: uplink_hub::capacity::Format,
    },
}

fn parse_gates(text: &str) -> Result<FeatureGates, String> {
    text.parse()
        .map_err(|e: uplink_hub::aggregate::GateError| e.to_string())
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let signed: jiff::SignedDuration = text
        .parse()
        .map_err(|e| format!("{text:?} is not a duration like 10s, 500ms or 1m: {e}"))?;
    Duration::try_from(signed).map_err(|_| format!("{text:?} is negative"))
}

impl Args {
    fn config(self) -> anyhow::Result<HubConfig> {
        let defaults = HubConfig::default();
        let merge_policy = match &self.config {
            Some(path) => MergePolicy::load(path)?,
            None => MergePolicy::default(),
        };
        if self.upstream == UpstreamMode::Kcp && self.synctarget_workspace.is_empty() {
            anyhow::bail!(
                "--synctarget-workspace must name the KCP workspace that holds the clusters' SyncTargets"
            );
        }
        if self.tls_handshake_timeout.is_zero() || self.handshake_timeout.is_zero() {
            anyhow::bail!("--tls-handshake-timeout and --handshake-timeout must be longer than 0s");
        }
        if self.tls_handshake_timeout > self.handshake_timeout {
            anyhow::bail!(
                "--tls-handshake-timeout ({:?}) must not be longer than --handshake-timeout ({:?}), which covers TLS too",
                self.tls_handshake_timeout,
                self.handshake_timeout
            );
        }
        for (flag, value) in [
            ("--max-tls-handshakes", self.max_tls_handshakes),
            (
                "--max-tls-handshakes-per-source",
                self.max_tls_handshakes_per_source,
            ),
            ("--max-awaiting-hello", self.max_awaiting_hello),
            ("--http-max-connections", self.http_max_connections),
            ("--event-queue-size", self.event_queue_size),
            ("--upsync-queue-size", self.upsync_queue_size),
            (
                "--max-awaiting-hello-per-cluster",
                self.max_awaiting_hello_per_cluster,
            ),
        ] {
            if value == 0 {
                anyhow::bail!("{flag} must be at least 1");
            }
        }
        if self.resources.is_empty() {
            anyhow::bail!("--resources must name at least one resource type");
        }
        if let Some(reserved) = self
            .resources
            .iter()
            .find(|r| uplink_hub::placement::is_reserved(&r.group, &r.resource))
        {
            anyhow::bail!(
                "--resources {reserved}: SyncTargets are the hub's own records, never synced from a cluster"
            );
        }
        for upsync in &self.upsync_resources {
            if uplink_hub::placement::is_reserved(&upsync.group, &upsync.resource) {
                anyhow::bail!(
                    "--upsync-resources {upsync}: SyncTargets are the hub's own records, never upsynced from a cluster"
                );
            }
            if self
                .resources
                .iter()
                .any(|r| r.group == upsync.group && r.resource == upsync.resource)
            {
                anyhow::bail!(
                    "--upsync-resources {upsync} is in --resources too: a type is either synced from KCP or upsynced from the clusters"
                );
            }
        }
        let replicas = ReplicasConfig::from_flags(
            ReplicasFlags {
                lease_namespace: self.replicas_lease_namespace,
                kubeconfig: self.replicas_kubeconfig,
                identity: self.replicas_identity,
                shards: self.shards,
                lease_prefix: self.replicas_lease_prefix,
                lease_duration: self.replicas_lease_duration,
                renew_deadline: self.replicas_renew_deadline,
                retry_period: self.replicas_retry_period,
            },
            uplink_hub::config::hostname,
        )?;
        Ok(HubConfig {
            replicas,
            listen: self.listen,
            http_listen: self.http_listen,
            // Required by clap unless a command is given, and a command
            // never reaches here.
            tls_cert: self.tls_cert.context("--tls-cert is required")?,
            tls_key: self.tls_key.context("--tls-key is required")?,
            client_ca: self.client_ca.context("--client-ca is required")?,
            tls_reload_interval: self.tls_reload_interval,
            kcp_kubeconfig: self.kcp_kubeconfig,
            upstream: self.upstream,
            heartbeat_interval: self.heartbeat_interval,
            limits: Limits {
                max_frame_bytes: self.max_frame_bytes,
                max_objects_per_cluster: self.max_objects_per_cluster,
                ..defaults.limits
            },
            max_kcp_clients: self.max_kcp_clients,
            memory_budget: MemoryBudget {
                cluster_bytes: self.max_status_bytes_per_cluster,
                total_bytes: self.max_status_bytes,
            },
            write_qps: self.write_qps,
            write_burst: self.write_burst,
            write_concurrency: self.write_concurrency,
            write_settle: self.write_settle,
            write_settle_max: self.write_settle_max,
            status_write: self.status_write,
            dry_run: self.dry_run,
            tls_handshake_timeout: self.tls_handshake_timeout,
            handshake_timeout: self.handshake_timeout,
            max_tls_handshakes: self.max_tls_handshakes,
            http_max_connections: self.http_max_connections,
            events: EventSettings {
                queue_size: self.event_queue_size,
                write_qps: self.event_write_qps,
                write_burst: self.event_write_burst,
                cluster_rate: self.event_rate_per_cluster,
                cluster_burst: self.event_burst_per_cluster,
            },
            max_tls_handshakes_per_source: self.max_tls_handshakes_per_source,
            max_awaiting_hello: self.max_awaiting_hello,
            max_awaiting_hello_per_cluster: self.max_awaiting_hello_per_cluster,
            shutdown_flush_timeout: self.shutdown_timeout,
            offline_grace: self.offline_grace,
            merge_policy,
            feature_gates: self.feature_gates,
            synctarget_workspace: self.synctarget_workspace,
            resources: self.resources,
            upsync_resources: self.upsync_resources,
            upsync_queue_size: self.upsync_queue_size,
            upsync_write_concurrency: defaults.upsync_write_concurrency,
            placement_hold: self.placement_hold,
            synctarget_heartbeat_period: self.synctarget_heartbeat_period,
            throttle_queue_depth: self.throttle_queue_depth,
            throttle_pause: self.throttle_pause,
            http_auth: uplink_hub::http::HttpAuthConfig {
                mode: self.http_auth,
                kubeconfig: self.auth_kubeconfig,
                client_ca: self.http_client_ca,
                protect_metrics: self.http_metrics_auth,
                path_prefix: self.auth_path_prefix,
            },
            capacity: uplink_hub::capacity::CapacitySettings {
                sample_interval: self.capacity_sample_interval,
                history: uplink_hub::capacity::HistorySettings {
                    retention: self.capacity_retention,
                    max_points: self.capacity_max_points,
                },
                reports: uplink_hub::capacity::ReportBounds {
                    max_clock_skew: self.max_clock_skew,
                    ..defaults.capacity.reports
                },
                ..defaults.capacity
            },
        })
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Cancels `shutdown` on SIGTERM or Ctrl-C.
fn cancel_on_signal(shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = sigterm.recv() => tracing::info!("SIGTERM received; shutting down"),
            _ = tokio::signal::ctrl_c() => tracing::info!("Ctrl-C received; shutting down"),
        }
        shutdown.cancel();
    });
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Command::Report {
        hub_http,
        format,
        token,
    }) = &args.command
    {
        return match uplink_hub::capacity::api::fetch_report(hub_http, *format, token.as_deref())
            .await
        {
            Ok(report) => {
                print!("{report}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("uplink-hub report: {error}");
                ExitCode::FAILURE
            }
        };
    }
    init_logging(args.log_format);
    if rustls::crypto::ring::default_provider()
        .install_default()
        .is_err()
    {
        tracing::debug!("a rustls crypto provider was already installed");
    }
    let shutdown = CancellationToken::new();
    if let Err(error) = cancel_on_signal(shutdown.clone()) {
        tracing::error!(error = format!("{error:#}"), "uplink-hub cannot start");
        return ExitCode::FAILURE;
    }
    let config = match args.config() {
        Ok(config) => config,
        Err(error) => {
            // The message names the file and the bad line.
            tracing::error!(error = format!("{error:#}"), "uplink-hub cannot start");
            eprintln!("uplink-hub: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    // Each error's message already names its cause, so one line says it all.
    match uplink_hub::run(config, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "uplink-hub failed");
            ExitCode::FAILURE
        }
    }
}
