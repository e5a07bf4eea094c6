//! What a hub needs to know to run: addresses, credentials, the upstream and
//! the knobs of each stage. Built by `main.rs` from flags; tests build it
//! directly.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use uplink_protocol::Limits;
use uplink_protocol::resource::ResourceSpec;

use crate::aggregate::{FeatureGates, MergePolicy};

/// The hub's configuration.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Where the agents' TLS WebSocket tunnel listens.
    pub listen: SocketAddr,
    /// Where `/metrics`, `/healthz`, `/readyz` and the hub API listen
    /// (loopback unless told otherwise: the API serves every workspace's
    /// statuses).
    pub http_listen: SocketAddr,
    /// The hub's serving certificate chain (PEM).
    pub tls_cert: PathBuf,
    /// The private key of the serving certificate (PEM).
    pub tls_key: PathBuf,
    /// The CA that signs the agents' client certificates (PEM).
    pub client_ca: PathBuf,
    /// How often the certificate, key and CA files are read again to pick
    /// up a rotation; zero never reads them again.
    pub tls_reload_interval: Duration,
    /// Kubeconfig of the upstream (KCP); `None` infers it (in-cluster or `~/.kube/config`).
    pub kcp_kubeconfig: Option<PathBuf>,
    /// Whether workspaces are URL prefixes (`kcp`) or ignored (`kubernetes`).
    pub upstream: UpstreamMode,
    /// How often agents send heartbeats; three silent intervals end a session.
    pub heartbeat_interval: Duration,
    /// The limits announced to and enforced on every agent.
    pub limits: Limits,
    /// Sustained upstream writes per second (token bucket rate).
    pub write_qps: f64,
    /// Upstream writes allowed in a burst (token bucket size).
    pub write_burst: u32,
    /// Upstream writes in flight at once.
    pub write_concurrency: usize,
    /// How long an object that changed waits before its status is written,
    /// so a burst of changes becomes one write (zero: write at once).
    pub write_settle: Duration,
    /// How long an object that keeps changing may wait at most: its settle
    /// window stays open while changes keep coming at its recent pace, up to
    /// this long (at or below `write_settle`, nothing is learned: every
    /// change waits `write_settle`).
    pub write_settle_max: Duration,
    /// How object status is written: server-side apply or merge patch.
    pub status_write: StatusWrite,
    /// Send every write with `dryRun=All`.
    pub dry_run: bool,
    /// Longest time from TCP accept to a finished TLS handshake (at most
    /// `handshake_timeout`).
    pub tls_handshake_timeout: Duration,
    /// Longest time from TCP accept to a received `Hello`.
    pub handshake_timeout: Duration,
    /// Connections in their TLS handshake at once, all sources; when full,
    /// the oldest is closed to make room for a new one.
    pub max_tls_handshakes: usize,
    /// Connections in their TLS handshake at once from one source address
    /// (IPv6: one /64); when full, its oldest is closed to make room.
    pub max_tls_handshakes_per_source: usize,
    /// Connections past TLS that have not sent `Hello` yet, all clusters;
    /// when full, the oldest is closed to make room.
    pub max_awaiting_hello: usize,
    /// Connections past TLS that have not sent `Hello` yet, per cluster
    /// (certificate identity); when full, its oldest is closed.
    pub max_awaiting_hello_per_cluster: usize,
    /// How long shutdown waits for pending upstream writes.
    pub shutdown_flush_timeout: Duration,
    /// How long a cluster may stay without heartbeats before it is Offline
    /// (and the merge policy's `offlinePolicy` applies to its reports).
    pub offline_grace: Duration,
    /// How clusters' reports are merged and conflicts resolved (`--config`).
    pub merge_policy: MergePolicy,
    /// `--feature-gates`.
    pub feature_gates: FeatureGates,
    /// The KCP workspace that holds one `SyncTarget` per cluster, named
    /// like the cluster. The hub reads placement from them (a cluster
    /// without one may report nothing) and writes their status; it never
    /// creates them. Empty with a plain Kubernetes upstream.
    pub synctarget_workspace: String,
    /// The resource types the hub syncs: placement is watched for each,
    /// reports of any other type are refused.
    pub resources: Vec<ResourceSpec>,
    /// The types this hub accepts for upsync (objects born in a cluster,
    /// kept whole in KCP); a session upsyncs those its agent names too
    /// (`Hello.upsync_resources`). None of them may be in `resources`: a
    /// type flows one way.
    pub upsync_resources: Vec<ResourceSpec>,
    /// Upsynced objects (cluster, object) waiting for the upsync writer;
    /// at the bound a session waits (and its agent's acks with it).
    pub upsync_queue_size: usize,
    /// Upsync writes to KCP in flight at once (objects born in clusters are
    /// few beside statuses).
    pub upsync_write_concurrency: usize,
    /// How long a report of an object not (yet) placed on its cluster is
    /// held, once that cluster's placement is listed, before it is refused.
    pub placement_hold: Duration,
    /// Longest time a SyncTarget's `lastSyncerHeartbeatTime` may lag behind
    /// the cluster's last heartbeat (state changes are written at once).
    pub synctarget_heartbeat_period: Duration,
    /// KCP writes waiting in the writer's queue on behalf of one cluster at
    /// which that cluster's agent is told to slow down (`Throttle`); below
    /// half of it the agent is released.
    pub throttle_queue_depth: usize,
    /// How long a throttled agent pauses its deltas.
    pub throttle_pause: Duration,
    /// Capacity history sampling and retention.
    pub capacity: crate::capacity::CapacitySettings,
    /// Bytes the store may hold for one cluster's statuses and for all
    /// clusters' (`--max-status-bytes-per-cluster`, `--max-status-bytes`).
    pub memory_budget: crate::budget::MemoryBudget,
    /// KCP clients (one per workspace) kept; the least recently used is
    /// evicted past it.
    pub max_kcp_clients: usize,
    /// Who may use the HTTP endpoint (the hub API, `/metrics`): bearer
    /// tokens and client certificates checked and authorized against an
    /// API server by default; see [`crate::http::auth`].
    pub http_auth: crate::http::HttpAuthConfig,
    /// HTTP connections open at once (`--http-max-connections`); past it a
    /// new connection is closed at once and counted.
    pub http_max_connections: usize,
    /// How agents' event series reach KCP (protocol version 3).
    pub events: EventSettings,
    /// Whether this hub is one of several replicas (issue 20), and how many
    /// shards the workspaces hash into.
    pub replicas: ReplicasConfig,
}

/// Replicas: a single hub (no lease namespace) holds every shard; a replica
/// holds the shards whose Leases it holds ([`crate::replicas`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicasConfig {
    /// How many shards the workspaces hash into (`--shards`).
    pub shards: u16,
    /// `Some`: this hub is a replica (`--replicas-lease-namespace`).
    pub lease: Option<LeaseConfig>,
}

impl Default for ReplicasConfig {
    fn default() -> Self {
        Self {
            shards: 16,
            lease: None,
        }
    }
}

/// Where a replica's Leases are and how it takes part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseConfig {
    /// Namespace, identity, prefix, timings; `shards` equals
    /// [`ReplicasConfig::shards`].
    pub settings: crate::replicas::ReplicaSettings,
    /// The API server holding the Leases (`--replicas-kubeconfig`); `None`:
    /// in-cluster, else the usual kubeconfig rules (kube's `Config::infer`).
    pub kubeconfig: Option<PathBuf>,
}

/// A replicas flag that cannot work, named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplicasConfigError {
    #[error("--shards {0}: must be within 1..={max}", max = uplink_protocol::MAX_SHARDS)]
    Shards(u16),
    #[error(
        "--replicas-identity is not given, UPLINK_HUB_IDENTITY is not set and the host name could not be read: name this replica"
    )]
    NoIdentity,
    #[error("{flag}: {reason}")]
    Setting { flag: &'static str, reason: String },
    #[error("{flag} is given without --replicas-lease-namespace: it only applies to replicas")]
    WithoutNamespace { flag: &'static str },
}

/// The replicas flags as given (`main.rs` fills it from the command line).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicasFlags {
    pub lease_namespace: Option<String>,
    pub kubeconfig: Option<PathBuf>,
    /// `--replicas-identity` / `UPLINK_HUB_IDENTITY`.
    pub identity: Option<String>,
    pub shards: u16,
    pub lease_prefix: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl ReplicasConfig {
    /// Checks the flags; `hostname` is the default identity (the pod name
    /// in Kubernetes), asked only for a replica given no identity.
    pub fn from_flags(
        flags: ReplicasFlags,
        hostname: impl FnOnce() -> Option<String>,
    ) -> Result<Self, ReplicasConfigError> {
        if flags.shards == 0 || flags.shards > uplink_protocol::MAX_SHARDS {
            return Err(ReplicasConfigError::Shards(flags.shards));
        }
        let Some(namespace) = flags.lease_namespace else {
            if flags.kubeconfig.is_some() {
                return Err(ReplicasConfigError::WithoutNamespace {
                    flag: "--replicas-kubeconfig",
                });
            }
            return Ok(Self {
                shards: flags.shards,
                lease: None,
            });
        };
        let identity = flags
            .identity
            .filter(|i| !i.is_empty())
            .or_else(hostname)
            .ok_or(ReplicasConfigError::NoIdentity)?;
        let settings = crate::replicas::ReplicaSettings {
            namespace,
            identity,
            prefix: flags.lease_prefix,
            shards: flags.shards,
            lease_duration: flags.lease_duration,
            renew_deadline: flags.renew_deadline,
            retry_period: flags.retry_period,
        };
        settings
            .validate()
            .map_err(|e| ReplicasConfigError::Setting {
                flag: match e.field {
                    "namespace" => "--replicas-lease-namespace",
                    "identity" => "--replicas-identity",
                    "prefix" => "--replicas-lease-prefix",
                    "shards" => "--shards",
                    "lease_duration" => "--replicas-lease-duration",
                    "renew_deadline" => "--replicas-renew-deadline",
                    _ => "--replicas-retry-period",
                },
                reason: e.reason,
            })?;
        Ok(Self {
            shards: flags.shards,
            lease: Some(LeaseConfig {
                settings,
                kubeconfig: flags.kubeconfig,
            }),
        })
    }
}

/// This host's name, the default replica identity (a pod's name is its
/// host name): the kernel's, else `$HOSTNAME`.
pub fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|n| !n.is_empty()))
}

/// The bounds on agents' event series (protocol version 3): best effort,
/// never in the way of status, so each stage has a bound past which it
/// drops (and counts).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EventSettings {
    /// Event series waiting for the event writer; past it the oldest is
    /// dropped.
    pub queue_size: usize,
    /// Sustained event writes to KCP per second (token bucket rate; 0:
    /// unlimited).
    pub write_qps: f64,
    /// Event writes to KCP allowed in a burst.
    pub write_burst: u32,
    /// Event series reports one cluster may have taken per second (shared
    /// by its reconnects; 0: unlimited); past it they are dropped.
    pub cluster_rate: f64,
    /// Event series reports one cluster may have taken in a burst.
    pub cluster_burst: u32,
}

impl Default for EventSettings {
    fn default() -> Self {
        Self {
            queue_size: 10_000,
            write_qps: 50.0,
            write_burst: 100,
            cluster_rate: 20.0,
            cluster_burst: 200,
        }
    }
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8443)),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tls_cert: PathBuf::from("certs/hub.pem"),
            tls_key: PathBuf::from("certs/hub-key.pem"),
            client_ca: PathBuf::from("certs/ca.pem"),
            tls_reload_interval: Duration::from_secs(5),
            kcp_kubeconfig: None,
            upstream: UpstreamMode::Kcp,
            heartbeat_interval: Duration::from_secs(10),
            limits: Limits::default(),
            write_qps: 50.0,
            write_settle: Duration::from_millis(20),
            write_settle_max: Duration::from_millis(500),
            write_burst: 100,
            write_concurrency: 4,
            status_write: StatusWrite::default(),
            dry_run: false,
            tls_handshake_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
            max_tls_handshakes: 1024,
            max_tls_handshakes_per_source: 32,
            max_awaiting_hello: 1024,
            max_awaiting_hello_per_cluster: 4,
            shutdown_flush_timeout: Duration::from_secs(10),
            offline_grace: Duration::from_secs(300),
            merge_policy: MergePolicy::default(),
            feature_gates: FeatureGates::default(),
            synctarget_workspace: "root".to_owned(),
            resources: default_resources(),
            upsync_resources: Vec::new(),
            // Each waiting report holds an object of up to 1.5 MiB.
            upsync_queue_size: 1_000,
            upsync_write_concurrency: 2,
            placement_hold: Duration::from_secs(30),
            synctarget_heartbeat_period: Duration::from_secs(30),
            throttle_queue_depth: 10_000,
            throttle_pause: Duration::from_secs(1),
            capacity: crate::capacity::CapacitySettings::default(),
            memory_budget: crate::budget::MemoryBudget::default(),
            max_kcp_clients: crate::writer::KubeUpstream::DEFAULT_CLIENTS,
            http_auth: crate::http::HttpAuthConfig::default(),
            http_max_connections: 256,
            events: EventSettings::default(),
            replicas: ReplicasConfig::default(),
        }
    }
}

/// The types the hub syncs unless told otherwise: the workloads and what
/// they need (issue 14's list). One placement watch per type and connected
/// cluster.
pub fn default_resources() -> Vec<ResourceSpec> {
    DEFAULT_RESOURCES
        .iter()
        .filter_map(|text| text.parse().ok())
        .collect()
}

/// [`default_resources`], as `--resources` takes them.
pub const DEFAULT_RESOURCES: &[&str] = &[
    "deployments.v1.apps",
    "statefulsets.v1.apps",
    "daemonsets.v1.apps",
    "jobs.v1.batch",
    "services.v1",
    "configmaps.v1",
    "secrets.v1",
    "persistentvolumeclaims.v1",
];

/// What kind of API server the hub writes to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum UpstreamMode {
    /// KCP: each object lives under `/clusters/<workspace>`.
    #[default]
    Kcp,
    /// Plain Kubernetes: no workspace prefix; the workspace is ignored.
    Kubernetes,
}

/// How the writer writes an object's status to KCP (see [`crate::writer`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum StatusWrite {
    /// Server-side apply of `/status` with field manager `uplink-hub`:
    /// the hub owns the status fields it reports and nothing else, so
    /// other controllers' conditions on the same object stay.
    #[default]
    Apply,
    /// JSON merge patch of `/status`: lists (`conditions`) are replaced
    /// whole, and every field no cluster reports is removed.
    MergePatch,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> ReplicasFlags {
        let defaults = crate::replicas::ReplicaSettings::default();
        ReplicasFlags {
            lease_namespace: Some("uplink".into()),
            kubeconfig: None,
            identity: None,
            shards: 16,
            lease_prefix: defaults.prefix,
            lease_duration: defaults.lease_duration,
            renew_deadline: defaults.renew_deadline,
            retry_period: defaults.retry_period,
        }
    }

    #[test]
    fn replicas_flags_are_checked_and_named() {
        let host = || Some("hub-0".to_owned());
        let config = ReplicasConfig::from_flags(flags(), host);
        let identity = config
            .ok()
            .and_then(|c| c.lease)
            .map(|l| l.settings.identity);
        assert_eq!(identity.as_deref(), Some("hub-0"), "the host name");
        let given = ReplicasConfig::from_flags(
            ReplicasFlags {
                identity: Some("hub-1".into()),
                ..flags()
            },
            host,
        );
        assert_eq!(
            given
                .ok()
                .and_then(|c| c.lease)
                .map(|l| l.settings.identity),
            Some("hub-1".to_owned())
        );
        let single = ReplicasConfig::from_flags(
            ReplicasFlags {
                lease_namespace: None,
                ..flags()
            },
            || None,
        );
        assert_eq!(
            single,
            Ok(ReplicasConfig {
                shards: 16,
                lease: None
            })
        );
        let error = |flags| ReplicasConfig::from_flags(flags, host).err();
        assert_eq!(
            error(ReplicasFlags {
                shards: 0,
                ..flags()
            }),
            Some(ReplicasConfigError::Shards(0))
        );
        assert_eq!(
            error(ReplicasFlags {
                shards: 1025,
                lease_namespace: None,
                ..flags()
            }),
            Some(ReplicasConfigError::Shards(1025))
        );
        assert_eq!(
            ReplicasConfig::from_flags(flags(), || None).err(),
            Some(ReplicasConfigError::NoIdentity)
        );
        let renew = error(ReplicasFlags {
            renew_deadline: Duration::from_secs(20),
            ..flags()
        });
        assert!(
            renew
                .as_ref()
                .is_some_and(|e| e.to_string().starts_with("--replicas-renew-deadline: ")),
            "{renew:?}"
        );
        assert_eq!(
            error(ReplicasFlags {
                lease_namespace: None,
                kubeconfig: Some("k".into()),
                ..flags()
            }),
            Some(ReplicasConfigError::WithoutNamespace {
                flag: "--replicas-kubeconfig"
            })
        );
    }

    #[test]
    fn every_default_resource_parses() {
        assert_eq!(default_resources().len(), DEFAULT_RESOURCES.len());
        assert_eq!(HubConfig::default().resources, default_resources());
    }
}
