//! What an agent is told to do: which cluster it reports for, where the hub
//! is, which credentials it presents and which resource types it watches.
//!
//! [`AgentConfig`] is plain data (the binary fills it from flags, tests fill
//! it directly); [`crate::Agent::bind`] checks it against the outside world
//! (files, addresses) and says which flag was wrong.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

pub use crate::events::EventSettings;
use jiff::SignedDuration;
pub use uplink_protocol::resource::{ResourceSpec, ResourceSpecError, parse_resource_list};

/// Everything an [`crate::Agent`] needs to run.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The cluster this agent reports for; must match the identity in its
    /// client certificate.
    pub cluster: String,
    /// Kubeconfig to read; `None` infers it (in-cluster, then `KUBECONFIG`).
    pub kubeconfig: Option<PathBuf>,
    /// The hub, as `wss://host:port` (the path defaults to `/v1/tunnel`);
    /// a replicated hub's replicas as a comma-separated list of such URLs
    /// (one session each), or, with [`HubDiscovery::Dns`], one URL whose
    /// host is a headless Service name.
    pub hub_url: String,
    /// How the hub's replicas are found (`--hub-discovery`).
    pub hub_discovery: HubDiscovery,
    /// How often a [`HubDiscovery::Dns`] name is resolved again.
    pub hub_resolve_interval: Duration,
    /// Resolves a [`HubDiscovery::Dns`] name; `None`: the system's
    /// (tokio's `lookup_host`). For tests and embedding programs.
    pub hub_resolver: Option<std::sync::Arc<dyn crate::replicas::NameResolver>>,
    /// PEM client certificate chain presented to the hub.
    pub tls_cert: PathBuf,
    /// PEM private key of `tls_cert`.
    pub tls_key: PathBuf,
    /// PEM CA certificate(s) the hub's serving certificate must chain to.
    /// Nothing else is trusted.
    pub hub_ca: PathBuf,
    /// How often `tls_cert`, `tls_key` and `hub_ca` are read again to pick
    /// up a rotation; zero never reads them again.
    pub tls_reload_interval: Duration,
    /// The resource types to watch.
    pub resources: Vec<ResourceSpec>,
    /// The resource types the agent applies when the hub sends them down
    /// (protocol version 2). Empty: status only (the agent offers only
    /// version 1). Needs a Kubernetes client: an agent fed by
    /// [`crate::Agent::bind_with_events`] is always status only.
    pub downward_resources: Vec<ResourceSpec>,
    /// Address of the `/metrics`, `/healthz`, `/readyz` server. Port 0 picks a
    /// free port; read it back with [`crate::Agent::http_addr`]. `None` serves
    /// nothing: for a program that embeds many agents and reads their
    /// [`crate::Agent::metrics`] itself.
    pub http_listen: Option<SocketAddr>,
    /// How often to heartbeat (the agent uses the shorter of this and the
    /// hub's announced interval; a hub replica asking for keepalives, a
    /// longer interval, gets them as asked: per session).
    pub heartbeat_interval: Duration,
    /// Unacknowledged outbox entries above which the agent reports an
    /// overflow (see [`crate::outbox`]).
    pub outbox_limit: usize,
    /// Added to the agent's clock in every timestamp it sends; for tests of
    /// clock skew. Zero in production.
    pub clock_offset: SignedDuration,
    /// How the agent waits between connection attempts.
    pub reconnect: ReconnectSettings,
    /// Watch nodes and pods for the capacity summary (see
    /// [`crate::capacity`]); `--capacity=false` turns it off.
    pub capacity: bool,
    /// Report the events about synced objects (see [`crate::events`]), and
    /// how; `None` turns it off (`--events=false`).
    pub events: Option<EventSettings>,
    /// Types whose objects born in this cluster KCP holds whole (upsync,
    /// protocol version 3): those labelled
    /// `state.workload.kcp.io/<syncTargetKey>: Upsync`. Resolved through
    /// discovery at start-up; a type the cluster does not serve is a
    /// configuration error.
    pub upsync_resources: Vec<ResourceSpec>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            cluster: String::new(),
            kubeconfig: None,
            hub_url: String::new(),
            hub_discovery: HubDiscovery::Static,
            hub_resolve_interval: Duration::from_secs(30),
            hub_resolver: None,
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            hub_ca: PathBuf::new(),
            tls_reload_interval: Duration::from_secs(5),
            resources: vec![ResourceSpec::deployments()],
            // Status only, protocol version 1, unless asked: writing needs
            // RBAC the operator grants (deploy/agent grants it and passes
            // `--downward-resources` with DEFAULT_DOWNWARD_RESOURCES).
            downward_resources: Vec::new(),
            http_listen: Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))),
            heartbeat_interval: Duration::from_secs(10),
            outbox_limit: 100_000,
            clock_offset: SignedDuration::ZERO,
            reconnect: ReconnectSettings::default(),
            capacity: true,
            events: Some(EventSettings::default()),
            upsync_resources: Vec::new(),
        }
    }
}

/// How the agent finds the hub's replicas (`--hub-discovery`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HubDiscovery {
    /// `--hub-url` lists every replica (one URL for a hub that is not
    /// replicated).
    #[default]
    Static,
    /// `--hub-url` is one URL whose host is a headless Service name: one
    /// session per address it resolves to, resolved again every
    /// `--hub-resolve-interval`.
    Dns,
}

/// Why a `--hub-discovery` value is not known.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid hub discovery {0:?} (expected static or dns)")]
pub struct HubDiscoveryError(pub String);

impl std::str::FromStr for HubDiscovery {
    type Err = HubDiscoveryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "static" => Ok(HubDiscovery::Static),
            "dns" => Ok(HubDiscovery::Dns),
            other => Err(HubDiscoveryError(other.to_owned())),
        }
    }
}

/// The types the agent applies unless told otherwise (`--downward-resources`):
/// the workloads and what they use.
pub const DEFAULT_DOWNWARD_RESOURCES: &str = "deployments.v1.apps,statefulsets.v1.apps,daemonsets.v1.apps,jobs.v1.batch,services.v1,configmaps.v1,secrets.v1,persistentvolumeclaims.v1";

/// [`DEFAULT_DOWNWARD_RESOURCES`], parsed.
pub fn default_downward_resources() -> Vec<ResourceSpec> {
    // A constant list of valid names, checked by a test below.
    parse_resource_list(DEFAULT_DOWNWARD_RESOURCES).unwrap_or_default()
}

/// Exponential backoff with full jitter between connection attempts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReconnectSettings {
    /// Upper bound of the first delay.
    pub initial: Duration,
    /// The delay bound never grows past this.
    pub max: Duration,
    /// Growth of the bound per failed attempt.
    pub multiplier: f64,
    /// A connection that stayed up this long resets the backoff.
    pub reset_after: Duration,
}

impl ReconnectSettings {
    /// The delays these settings give: full jitter below a growing bound.
    pub fn policy(&self) -> uplink_ops::backoff::Policy {
        uplink_ops::backoff::Policy {
            initial: self.initial,
            max: self.max,
            multiplier: self.multiplier,
            jitter: uplink_ops::backoff::Jitter::Full,
        }
    }
}

impl Default for ReconnectSettings {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
            multiplier: 2.0,
            reset_after: Duration::from_secs(60),
        }
    }
}

/// Why a duration flag could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?} (expected e.g. 10s, 500ms, 2m{signed}): {reason}")]
pub struct DurationError {
    pub input: String,
    pub reason: String,
    signed: &'static str,
}

/// Parses a signed duration such as `-2s`, `1m30s` or `250ms`.
pub fn parse_signed_duration(input: &str) -> Result<SignedDuration, DurationError> {
    input
        .trim()
        .parse()
        .map_err(|e: jiff::Error| DurationError {
            input: input.to_owned(),
            reason: e.to_string(),
            signed: ", -2s",
        })
}

/// Parses a positive duration such as `10s` or `500ms`.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let fail = |reason: String| DurationError {
        input: input.to_owned(),
        reason,
        signed: "",
    };
    let signed = parse_signed_duration(input).map_err(|e| fail(e.reason))?;
    let unsigned = Duration::try_from(signed).map_err(|_| fail("must not be negative".into()))?;
    if unsigned.is_zero() {
        return Err(fail("must be greater than zero".into()));
    }
    Ok(unsigned)
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn default_downward_resources_parse() {
        let names: Vec<String> = default_downward_resources()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(names.len(), 8);
        assert_eq!(names[0], "deployments.v1.apps");
        assert_eq!(names[7], "persistentvolumeclaims.v1");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("ten").is_err());
        assert_eq!(
            parse_signed_duration("-2s"),
            Ok(SignedDuration::from_secs(-2))
        );
    }
}
