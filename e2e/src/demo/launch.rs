//! Starts the real `uplink-hub` and `uplink-agent` binaries for the demo and
//! learns where the hub listens: it binds port 0 and logs each bound address
//! (`--log-format json`), so we read its log until both addresses show up.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;

use super::processes::{ChildProcess, ProcessError};

/// How long the hub may take to log its addresses.
const HUB_START_TIMEOUT: Duration = Duration::from_secs(30);
/// Lines of a child's log quoted in an error.
const LOG_TAIL_LINES: usize = 20;

/// What failed while starting the hub or an agent.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error(
        "the hub exited ({status}) before it listened; the end of its log ({}):\n{tail}",
        log.display()
    )]
    HubExited {
        status: std::process::ExitStatus,
        log: PathBuf,
        tail: String,
    },
    #[error(
        "the hub did not log its listen addresses within {timeout:?} ({found}); the end of its log ({}):\n{tail}",
        log.display()
    )]
    HubSilent {
        timeout: Duration,
        /// What was found, e.g. `tunnel Some(..), http None`.
        found: String,
        log: PathBuf,
        tail: String,
    },
}

/// Where the hub listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HubAddrs {
    /// The agents' TLS WebSocket tunnel.
    pub tunnel: SocketAddr,
    /// `/metrics`, `/healthz` and the hub API.
    pub http: SocketAddr,
}

/// Files the hub and the agents read.
#[derive(Debug, Clone)]
pub struct Files {
    /// Holds `ca.crt`, `hub.crt`, `hub.key`, `<cluster>.crt`, `<cluster>.key`.
    pub pki: PathBuf,
    /// The KCP kubeconfig (root, no workspace prefix) for the hub.
    pub kcp_kubeconfig: PathBuf,
    /// Where logs go.
    pub logs: PathBuf,
}

/// Starts the hub on ports of its choosing and waits until it logs them.
pub async fn start_hub(
    binary: &Path,
    files: &Files,
    heartbeat_interval: Duration,
) -> Result<(ChildProcess, HubAddrs), LaunchError> {
    start_hub_with(binary, files, heartbeat_interval, &[]).await
}

/// [`start_hub`] with `extra` flags appended to the command line (the
/// benchmarks raise the KCP write rate limit, for example).
pub async fn start_hub_with(
    binary: &Path,
    files: &Files,
    heartbeat_interval: Duration,
    extra: &[String],
) -> Result<(ChildProcess, HubAddrs), LaunchError> {
    let log = files.logs.join("hub.log");
    spawn_hub(binary, files, heartbeat_interval, None, &log, extra).await
}

/// [`start_hub_with`] logging to `log`: one of several hubs (replicas).
pub async fn start_hub_logged(
    binary: &Path,
    files: &Files,
    heartbeat_interval: Duration,
    log: &Path,
    extra: &[String],
) -> Result<(ChildProcess, HubAddrs), LaunchError> {
    spawn_hub(binary, files, heartbeat_interval, None, log, extra).await
}

/// Starts the hub again on the addresses an earlier one chose (its agents
/// know only those), logging to `log` so the earlier log is kept.
pub async fn restart_hub_at(
    binary: &Path,
    files: &Files,
    heartbeat_interval: Duration,
    at: HubAddrs,
    log: &Path,
    extra: &[String],
) -> Result<(ChildProcess, HubAddrs), LaunchError> {
    spawn_hub(binary, files, heartbeat_interval, Some(at), log, extra).await
}

async fn spawn_hub(
    binary: &Path,
    files: &Files,
    heartbeat_interval: Duration,
    at: Option<HubAddrs>,
    log: &Path,
    extra: &[String],
) -> Result<(ChildProcess, HubAddrs), LaunchError> {
    let (tunnel, http) = match at {
        Some(addrs) => (addrs.tunnel.to_string(), addrs.http.to_string()),
        None => ("127.0.0.1:0".to_owned(), "127.0.0.1:0".to_owned()),
    };
    let mut command = Command::new(binary);
    command
        .arg("--listen")
        .arg(tunnel)
        .arg("--http-listen")
        .arg(http)
        .arg("--tls-cert")
        .arg(files.pki.join("hub.crt"))
        .arg("--tls-key")
        .arg(files.pki.join("hub.key"))
        .arg("--client-ca")
        .arg(files.pki.join("ca.crt"))
        .arg("--kcp-kubeconfig")
        .arg(&files.kcp_kubeconfig)
        .arg("--heartbeat-interval")
        .arg(duration_flag(heartbeat_interval))
        .arg("--log-format")
        .arg("json")
        // The demo and the benchmarks read the hub API on loopback only
        // (`--http-listen` above), so without credentials.
        .arg("--http-auth")
        .arg("none")
        .args(extra);
    let mut hub = ChildProcess::spawn("uplink-hub", command, log)?;
    let addrs = wait_for_addrs(&mut hub).await?;
    Ok((hub, addrs))
}

/// Starts the agent of `cluster`, connecting to the hub's tunnel.
pub fn start_agent(
    binary: &Path,
    files: &Files,
    cluster: &str,
    cluster_kubeconfig: &Path,
    hub_tunnel: SocketAddr,
    heartbeat_interval: Duration,
) -> Result<ChildProcess, LaunchError> {
    start_agent_with(
        binary,
        files,
        cluster,
        cluster_kubeconfig,
        hub_tunnel,
        heartbeat_interval,
        &[],
    )
}

/// [`start_agent`] with `extra` flags appended to the command line.
pub fn start_agent_with(
    binary: &Path,
    files: &Files,
    cluster: &str,
    cluster_kubeconfig: &Path,
    hub_tunnel: SocketAddr,
    heartbeat_interval: Duration,
    extra: &[String],
) -> Result<ChildProcess, LaunchError> {
    let mut command = Command::new(binary);
    command
        .arg("--cluster")
        .arg(cluster)
        .arg("--kubeconfig")
        .arg(cluster_kubeconfig)
        .arg("--hub-url")
        .arg(format!("wss://{hub_tunnel}"))
        .arg("--tls-cert")
        .arg(files.pki.join(format!("{cluster}.crt")))
        .arg("--tls-key")
        .arg(files.pki.join(format!("{cluster}.key")))
        .arg("--hub-ca")
        .arg(files.pki.join("ca.crt"))
        .arg("--resources")
        .arg("deployments.v1.apps")
        .arg("--http-listen")
        .arg("127.0.0.1:0")
        .arg("--heartbeat-interval")
        .arg(duration_flag(heartbeat_interval))
        .args(extra);
    // The log is a file: no colour codes in it.
    command.env("NO_COLOR", "1");
    let name = format!("uplink-agent {cluster}");
    Ok(ChildProcess::spawn(
        &name,
        command,
        &files.logs.join(format!("agent-{cluster}.log")),
    )?)
}

/// `1s`, `500ms`: how the binaries' duration flags are spelled.
pub fn duration_flag(duration: Duration) -> String {
    if duration.subsec_millis() == 0 && duration.as_secs() > 0 {
        format!("{}s", duration.as_secs())
    } else {
        format!("{}ms", duration.as_millis().max(1))
    }
}

async fn wait_for_addrs(hub: &mut ChildProcess) -> Result<HubAddrs, LaunchError> {
    let deadline = tokio::time::Instant::now() + HUB_START_TIMEOUT;
    loop {
        let log = std::fs::read_to_string(hub.log_path()).unwrap_or_default();
        let mut found = Found::default();
        for line in log.lines() {
            found.add(listen_addresses(line));
        }
        if let Found {
            tunnel: Some(tunnel),
            http: Some(http),
        } = found
        {
            return Ok(HubAddrs { tunnel, http });
        }
        if let Some(status) = hub.exited() {
            return Err(LaunchError::HubExited {
                status,
                log: hub.log_path().to_owned(),
                tail: hub.log_tail(LOG_TAIL_LINES),
            });
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(LaunchError::HubSilent {
                timeout: HUB_START_TIMEOUT,
                found: format!("found tunnel {:?}, http {:?}", found.tunnel, found.http),
                log: hub.log_path().to_owned(),
                tail: hub.log_tail(LOG_TAIL_LINES),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Found {
    tunnel: Option<SocketAddr>,
    http: Option<SocketAddr>,
}

impl Found {
    fn add(&mut self, addresses: Vec<(Listener, SocketAddr)>) {
        for (listener, addr) in addresses {
            match listener {
                Listener::Tunnel => self.tunnel = self.tunnel.or(Some(addr)),
                Listener::Http => self.http = self.http.or(Some(addr)),
            }
        }
    }
}

/// Which of the hub's listeners an address belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Tunnel,
    Http,
}

/// The listen addresses a JSON log line announces. Only lines whose message
/// says so (`listening`, `bound`, `serving`) count; in them, a field whose
/// value is a socket address belongs to the listener its name or the message
/// names (`tunnel`, `http`, ...).
pub fn listen_addresses(line: &str) -> Vec<(Listener, SocketAddr)> {
    let Ok(serde_json::Value::Object(top)) = serde_json::from_str::<serde_json::Value>(line) else {
        return Vec::new();
    };
    let fields = top.get("fields").and_then(serde_json::Value::as_object);
    let message = fields
        .and_then(|f| f.get("message"))
        .or_else(|| top.get("message"))
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
        .to_ascii_lowercase();
    if !["listen", "bound", "serving"]
        .iter()
        .any(|w| message.contains(w))
    {
        return Vec::new();
    }
    let classify = |text: &str| {
        if ["http", "metrics", "api"].iter().any(|w| text.contains(w)) {
            Some(Listener::Http)
        } else if ["tunnel", "wss", "websocket", "agent"]
            .iter()
            .any(|w| text.contains(w))
        {
            Some(Listener::Tunnel)
        } else {
            None
        }
    };
    top.iter()
        .chain(fields.into_iter().flatten())
        .filter_map(|(key, value)| {
            let addr: SocketAddr = value.as_str()?.parse().ok()?;
            let listener = classify(&key.to_ascii_lowercase()).or_else(|| classify(&message))?;
            Some((listener, addr))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_told_apart_by_field_name_or_message() {
        let both = r#"{"timestamp":"x","level":"INFO","fields":{"message":"listening","tunnel":"127.0.0.1:4000","http":"127.0.0.1:4001"},"target":"uplink_hub"}"#;
        let mut found = listen_addresses(both);
        found.sort_by_key(|(_, addr)| addr.port());
        let addr = |s: &str| s.parse::<SocketAddr>().ok();
        assert_eq!(
            found
                .into_iter()
                .map(|(l, a)| (l, Some(a)))
                .collect::<Vec<_>>(),
            [
                (Listener::Tunnel, addr("127.0.0.1:4000")),
                (Listener::Http, addr("127.0.0.1:4001")),
            ]
        );
        let by_message = r#"{"fields":{"message":"HTTP server listening","addr":"127.0.0.1:5"}}"#;
        assert_eq!(
            listen_addresses(by_message).first().map(|a| a.0),
            Some(Listener::Http)
        );
        let tunnel = r#"{"fields":{"message":"agent tunnel listening","addr":"127.0.0.1:6"}}"#;
        assert_eq!(
            listen_addresses(tunnel).first().map(|a| a.0),
            Some(Listener::Tunnel)
        );
    }

    #[test]
    fn the_hubs_own_lines_are_understood() {
        // What `uplink-hub --log-format json` (flattened events) writes.
        let tunnel = r#"{"timestamp":"t","level":"INFO","message":"tunnel listening","addr":"127.0.0.1:7001","target":"uplink_hub"}"#;
        let http = r#"{"timestamp":"t","level":"INFO","message":"HTTP (metrics, health, API) listening","addr":"127.0.0.1:7002","target":"uplink_hub"}"#;
        let mut found = Found::default();
        found.add(listen_addresses(tunnel));
        found.add(listen_addresses(http));
        assert_eq!(found.tunnel.map(|a| a.port()), Some(7001));
        assert_eq!(found.http.map(|a| a.port()), Some(7002));
    }

    #[test]
    fn other_lines_announce_nothing() {
        assert!(listen_addresses("not json").is_empty());
        let connected = r#"{"fields":{"message":"agent connected","peer":"127.0.0.1:9"}}"#;
        assert!(listen_addresses(connected).is_empty());
    }

    #[test]
    fn duration_flags_use_seconds_or_milliseconds() {
        assert_eq!(duration_flag(Duration::from_secs(1)), "1s");
        assert_eq!(duration_flag(Duration::from_millis(1500)), "1500ms");
        assert_eq!(duration_flag(Duration::from_millis(200)), "200ms");
    }
}
