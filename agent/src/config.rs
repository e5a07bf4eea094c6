//! What an agent is told to do: which cluster it reports for, where the hub
//! is, which credentials it presents and which resource types it watches.
//!
//! [`AgentConfig`] is plain data (the binary fills it from flags, tests fill
//! it directly); [`crate::Agent::bind`] checks it against the outside world
//! (files, addresses) and says which flag was wrong.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use jiff::SignedDuration;

/// Everything an [`crate::Agent`] needs to run.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The cluster this agent reports for; must match the identity in its
    /// client certificate.
    pub cluster: String,
    /// Kubeconfig to read; `None` infers it (in-cluster, then `KUBECONFIG`).
    pub kubeconfig: Option<PathBuf>,
    /// The hub, as `wss://host:port` (the path defaults to `/v1/tunnel`).
    pub hub_url: String,
    /// PEM client certificate chain presented to the hub.
    pub tls_cert: PathBuf,
    /// PEM private key of `tls_cert`.
    pub tls_key: PathBuf,
    /// PEM CA certificate(s) the hub's serving certificate must chain to.
    /// Nothing else is trusted.
    pub hub_ca: PathBuf,
    /// The resource types to watch.
    pub resources: Vec<ResourceSpec>,
    /// Address of the `/metrics`, `/healthz`, `/readyz` server. Port 0 picks a
    /// free port; read it back with [`crate::Agent::http_addr`]. `None` serves
    /// nothing: for a program that embeds many agents and reads their
    /// [`crate::Agent::metrics`] itself.
    pub http_listen: Option<SocketAddr>,
    /// How often to heartbeat (the agent uses the shorter of this and the
    /// hub's announced interval).
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
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            cluster: String::new(),
            kubeconfig: None,
            hub_url: String::new(),
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            hub_ca: PathBuf::new(),
            resources: vec![ResourceSpec::deployments()],
            http_listen: Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))),
            heartbeat_interval: Duration::from_secs(10),
            outbox_limit: 100_000,
            clock_offset: SignedDuration::ZERO,
            reconnect: ReconnectSettings::default(),
            capacity: true,
        }
    }
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

/// One resource type to watch, written like kubectl does:
/// `resource.version.group` (`deployments.v1.apps`), or `resource.version`
/// for the core group (`pods.v1`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceSpec {
    /// Plural resource name, e.g. `deployments`.
    pub resource: String,
    pub version: String,
    /// API group, empty for the core group.
    pub group: String,
}

impl ResourceSpec {
    /// `deployments.v1.apps`, the default.
    pub fn deployments() -> Self {
        Self {
            resource: "deployments".into(),
            version: "v1".into(),
            group: "apps".into(),
        }
    }
}

/// Why a `--resources` entry is not `resource.version[.group]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid resource {input:?} (expected resource.version.group like deployments.v1.apps, or pods.v1 for the core group): {reason}"
)]
pub struct ResourceSpecError {
    pub input: String,
    pub reason: &'static str,
}

impl FromStr for ResourceSpec {
    type Err = ResourceSpecError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let fail = |reason| ResourceSpecError {
            input: input.to_owned(),
            reason,
        };
        // The group may itself contain dots (example.com), so split only twice.
        let mut parts = input.trim().splitn(3, '.');
        let resource = parts.next().unwrap_or_default();
        let version = parts.next().ok_or_else(|| fail("missing version"))?;
        let group = parts.next().unwrap_or_default();
        if !is_dns_label(resource) {
            return Err(fail("resource must be a lowercase DNS label"));
        }
        if !is_version(version) {
            return Err(fail("version must look like v1, v1beta1 or v2alpha3"));
        }
        if input.trim().matches('.').count() >= 2 && !group.split('.').all(is_dns_label) {
            return Err(fail("group must be a DNS subdomain"));
        }
        Ok(Self {
            resource: resource.to_owned(),
            version: version.to_owned(),
            group: group.to_owned(),
        })
    }
}

impl fmt::Display for ResourceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.group.is_empty() {
            write!(f, "{}.{}", self.resource, self.version)
        } else {
            write!(f, "{}.{}.{}", self.resource, self.version, self.group)
        }
    }
}

/// Parses a comma-separated `--resources` list.
pub fn parse_resource_list(list: &str) -> Result<Vec<ResourceSpec>, ResourceSpecError> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::parse)
        .collect()
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_version(s: &str) -> bool {
    let Some(rest) = s.strip_prefix('v') else {
        return false;
    };
    let major_len = rest.bytes().take_while(u8::is_ascii_digit).count();
    if major_len == 0 {
        return false;
    }
    let rest = &rest[major_len..];
    if rest.is_empty() {
        return true;
    }
    let Some(minor) = rest
        .strip_prefix("alpha")
        .or_else(|| rest.strip_prefix("beta"))
    else {
        return false;
    };
    !minor.is_empty() && minor.bytes().all(|b| b.is_ascii_digit())
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

    fn spec(input: &str) -> ResourceSpec {
        match input.parse() {
            Ok(spec) => spec,
            Err(e) => panic!("{input}: {e}"),
        }
    }

    #[test]
    fn parses_grouped_core_and_dotted_groups() {
        assert_eq!(spec("deployments.v1.apps"), ResourceSpec::deployments());
        let pods = spec("pods.v1");
        assert_eq!(
            (
                pods.resource.as_str(),
                pods.version.as_str(),
                pods.group.as_str()
            ),
            ("pods", "v1", "")
        );
        let crd = spec("widgets.v1alpha1.example.com");
        assert_eq!(crd.group, "example.com");
        assert_eq!(crd.version, "v1alpha1");
    }

    #[test]
    fn display_round_trips() {
        for input in [
            "deployments.v1.apps",
            "pods.v1",
            "widgets.v2beta3.example.com",
        ] {
            assert_eq!(spec(input).to_string(), input);
        }
    }

    #[test]
    fn errors_name_the_bad_input() {
        for bad in [
            "deployments",
            "Deployments.v1.apps",
            "deployments.apps.v1",
            "deployments.v1.",
            ".v1.apps",
            "pods.v1beta",
        ] {
            let err = bad.parse::<ResourceSpec>().expect_err(bad);
            assert_eq!(err.input, bad);
            assert!(err.to_string().contains(bad), "{err}");
        }
    }

    #[test]
    fn resource_lists() {
        let list = parse_resource_list("deployments.v1.apps, pods.v1,").map_err(|e| e.to_string());
        assert_eq!(list.map(|l| l.len()), Ok(2));
        assert!(parse_resource_list("deployments.v1.apps,nope").is_err());
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
