//! The upstream API server as the writer sees it: write an object's status
//! (a JSON merge patch or a server-side apply of `/status`), read it back
//! with who owns which field. [`KubeUpstream`] talks to KCP (or plain
//! Kubernetes); tests substitute a fake.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use futures::future::BoxFuture;
use http_body_util::{BodyExt, Limited};
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, Resource};
use serde_json::Value;

use crate::cache::LruCache;
use crate::config::UpstreamMode;
use crate::store::ObjectKey;

/// Longest time one upstream request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Most bytes of an error response body kept for the log.
const ERROR_BODY_LIMIT: usize = 16 * 1024;

/// Writes object status upstream.
pub trait StatusUpstream: Send + Sync + std::fmt::Debug + 'static {
    /// Applies a JSON merge patch (`{"status": ...}`) to the object's
    /// `/status` subresource; with `dry_run`, the server validates only.
    fn patch_status<'a>(
        &'a self,
        key: &'a ObjectKey,
        patch: &'a Value,
        dry_run: bool,
    ) -> BoxFuture<'a, Result<(), UpstreamError>>;

    /// Server-side applies `configuration` (a whole apply configuration:
    /// `apiVersion`, `kind`, `metadata.name`, `status`) to the object's
    /// `/status` subresource.
    fn apply_status<'a>(
        &'a self,
        key: &'a ObjectKey,
        configuration: &'a Value,
        options: ApplyOptions<'a>,
    ) -> BoxFuture<'a, Result<(), UpstreamError>>;

    /// Reads the object's current `.status` and `.metadata.managedFields`.
    fn get_status<'a>(
        &'a self,
        key: &'a ObjectKey,
    ) -> BoxFuture<'a, Result<UpstreamStatus, UpstreamError>>;
}

/// An object's status as the upstream holds it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UpstreamStatus {
    /// `.status`; `None` when the object has none.
    pub status: Option<Value>,
    /// `.metadata.managedFields`: which field manager owns which fields.
    pub managed_fields: Vec<Value>,
}

/// How a server-side apply is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApplyOptions<'a> {
    /// The field manager that owns what it applies (`fieldManager`).
    pub field_manager: &'a str,
    /// Take fields another manager owns over instead of failing (`force`).
    pub force: bool,
    /// The server validates only (`dryRun=All`).
    pub dry_run: bool,
}

/// How an upstream request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    #[error("not found")]
    NotFound,
    #[error("conflict: {0}")]
    Conflict(String),
    /// A server-side apply that another field manager's fields refused
    /// (409 with `FieldManagerConflict` causes); re-reading cannot help.
    #[error("field manager conflict: {0}")]
    FieldConflict(String),
    #[error("throttled (retry after {retry_after:?})")]
    Throttled { retry_after: Option<Duration> },
    #[error("server error {status}: {message}")]
    Server { status: u16, message: String },
    #[error("refused with {status}: {message}")]
    Refused { status: u16, message: String },
    #[error("request failed: {0}")]
    Transport(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot address {key}: {reason}")]
    BadObject { key: String, reason: String },
    /// Not sent, or abandoned: this replica does not hold the shard of the
    /// object's workspace (or its fence closed while the write was in
    /// flight). The shard's holder writes it ([`super::fenced`]).
    #[error("not written: this replica does not hold shard {shard}")]
    NotHeld { shard: u16 },
}

/// Why the upstream client could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamConfigError {
    #[error("reading kubeconfig {path}: {source}")]
    ReadKubeconfig {
        path: PathBuf,
        source: kube::config::KubeconfigError,
    },
    #[error("using kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        source: kube::config::KubeconfigError,
    },
    #[error("inferring the upstream configuration (no --kcp-kubeconfig given): {0}")]
    Infer(#[from] kube::config::InferConfigError),
    #[error("upstream server URL {url}: {reason}")]
    ServerUrl { url: String, reason: String },
    #[error("building the upstream client: {0}")]
    Client(#[from] kube::Error),
    #[error("the KCP client cache's metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("User-Agent {value:?}: {reason}")]
    UserAgent { value: String, reason: String },
}

/// The hub's `User-Agent` towards KCP: `uplink-hub/<version> (<identity>)`.
pub fn user_agent(identity: &str) -> String {
    format!("uplink-hub/{} ({identity})", env!("CARGO_PKG_VERSION"))
}

/// KCP or Kubernetes, through kube-rs clients.
///
/// With KCP, a workspace is a URL path prefix: each workspace gets its own
/// client whose base URL is `<server>/clusters/<workspace>` (kube-client's
/// base-URI middleware keeps a base path and appends request paths to it).
/// Clients are cached per workspace, the least recently used evicted past
/// [`KubeUpstream::DEFAULT_CLIENTS`] (or `--max-kcp-clients`): a workspace's
/// name comes from an agent's report.
pub struct KubeUpstream {
    /// The configuration with the server's URL stripped of any `/clusters/…`.
    base: Config,
    mode: UpstreamMode,
    clients: Mutex<LruCache<String, Client>>,
    /// `uplink_hub_kcp_clients`: clients cached now.
    cached: prometheus::IntGauge,
    /// `uplink_hub_kcp_client_evictions_total`.
    evictions: prometheus::IntCounter,
}

impl std::fmt::Debug for KubeUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeUpstream")
            .field("server", &self.base.cluster_url)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl KubeUpstream {
    /// Loads `kubeconfig`, or infers the configuration when `None`.
    pub async fn load(
        kubeconfig: Option<&Path>,
        mode: UpstreamMode,
    ) -> Result<Self, UpstreamConfigError> {
        let config = match kubeconfig {
            Some(path) => {
                let file = Kubeconfig::read_from(path).map_err(|source| {
                    UpstreamConfigError::ReadKubeconfig {
                        path: path.to_owned(),
                        source,
                    }
                })?;
                Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                    .await
                    .map_err(|source| UpstreamConfigError::Kubeconfig {
                        path: path.to_owned(),
                        source,
                    })?
            }
            None => Config::infer().await?,
        };
        Self::new(config, mode)
    }

    /// Uses `config` as the upstream; with KCP, a `/clusters/<ws>` suffix of
    /// its server URL is dropped (workspaces come from the objects).
    pub fn new(mut config: Config, mode: UpstreamMode) -> Result<Self, UpstreamConfigError> {
        // The writer retries by itself, level-triggered (429 honoring
        // Retry-After, 5xx with backoff); kube's own retry layer would hold a
        // write slot for up to 15 attempts and hide the outcome from it.
        config.default_retry = false;
        if mode == UpstreamMode::Kcp {
            let url = config.cluster_url.to_string();
            let path = config.cluster_url.path();
            let base_path = match path.find("/clusters/") {
                Some(at) => &path[..at],
                None => path.trim_end_matches('/'),
            };
            config.cluster_url = with_path(&config.cluster_url, base_path)
                .map_err(|reason| UpstreamConfigError::ServerUrl { url, reason })?;
        }
        let upstream = Self {
            base: config,
            mode,
            clients: Mutex::new(LruCache::new(Self::DEFAULT_CLIENTS)),
            cached: prometheus::IntGauge::new(
                "uplink_hub_kcp_clients",
                "KCP clients cached, one per workspace written to or watched.",
            )?,
            evictions: prometheus::IntCounter::new(
                "uplink_hub_kcp_client_evictions_total",
                "KCP clients evicted from the cache (least recently used) to stay within --max-kcp-clients.",
            )?,
        };
        // Build one client now, so a broken configuration fails at startup.
        upstream.build_client("")?;
        Ok(upstream)
    }

    /// Workspace clients kept unless told otherwise.
    pub const DEFAULT_CLIENTS: usize = 1024;

    /// Sends `User-Agent: uplink-hub/<version> (<identity>)` (the replica
    /// identity, or `single`) on every request, so the API server's audit
    /// log tells the replicas' writes apart. kube sets no User-Agent of its
    /// own (kube-client 5 adds only `Config::headers`), so this is the one.
    pub fn with_identity(mut self, identity: &str) -> Result<Self, UpstreamConfigError> {
        let agent = user_agent(identity);
        let value =
            http::HeaderValue::from_str(&agent).map_err(|e| UpstreamConfigError::UserAgent {
                value: agent.clone(),
                reason: e.to_string(),
            })?;
        self.base
            .headers
            .retain(|(name, _)| name != http::header::USER_AGENT);
        self.base.headers.push((http::header::USER_AGENT, value));
        // Clients built before carry no User-Agent: built again.
        let capacity = self
            .clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .capacity();
        self.clients = Mutex::new(LruCache::new(capacity));
        self.build_client("")?;
        Ok(self)
    }

    /// Keeps at most `capacity` workspace clients (at least one).
    pub fn with_max_clients(self, capacity: usize) -> Self {
        Self {
            clients: Mutex::new(LruCache::new(capacity)),
            ..self
        }
    }

    /// The client cache's metrics, for the hub's registry.
    pub fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.cached.clone()),
            Box::new(self.evictions.clone()),
        ]
    }

    fn build_client(&self, workspace: &str) -> Result<Client, kube::Error> {
        let mut config = self.base.clone();
        if self.mode == UpstreamMode::Kcp && !workspace.is_empty() {
            let path = format!(
                "{}/clusters/{workspace}",
                config.cluster_url.path().trim_end_matches('/')
            );
            config.cluster_url = with_path(&config.cluster_url, &path).map_err(|reason| {
                kube::Error::Service(format!("workspace {workspace:?}: {reason}").into())
            })?;
        }
        Client::try_from(config)
    }

    fn client(&self, key: &ObjectKey) -> Result<Client, UpstreamError> {
        let workspace = match self.mode {
            UpstreamMode::Kcp => {
                if !is_path_segment(&key.workspace) {
                    return Err(UpstreamError::BadObject {
                        key: key.to_string(),
                        reason: "the workspace is not a valid path segment".into(),
                    });
                }
                key.workspace.as_str()
            }
            UpstreamMode::Kubernetes => "",
        };
        self.workspace_client(workspace)
            .map_err(|e| UpstreamError::BadObject {
                key: key.to_string(),
                reason: e.to_string(),
            })
    }

    /// The client whose requests go to `workspace` (`*`: every workspace,
    /// kcp's wildcard; empty: no prefix), built once and cached (an evicted
    /// one is built again; requests in flight keep their clone).
    pub(crate) fn workspace_client(&self, workspace: &str) -> Result<Client, kube::Error> {
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(client) = clients.get(workspace) {
            return Ok(client);
        }
        let client = self.build_client(workspace)?;
        if let Some(evicted) = clients.insert(workspace.to_owned(), client.clone()) {
            self.evictions.inc();
            tracing::debug!(workspace = %evicted, "KCP client evicted from the cache");
        }
        self.cached.set(clients.len() as i64);
        Ok(client)
    }

    /// Whether workspaces are URL prefixes.
    pub fn mode(&self) -> UpstreamMode {
        self.mode
    }

    pub(crate) async fn send(
        &self,
        key: &ObjectKey,
        request: http::Request<Vec<u8>>,
    ) -> Result<Vec<u8>, UpstreamError> {
        let client = self.client(key)?;
        Self::send_with(client, request).await
    }

    /// Sends `request` to `workspace` (ignored with a plain Kubernetes
    /// upstream); `what` names the request's object in errors.
    pub(crate) async fn send_in_workspace(
        &self,
        workspace: &str,
        what: &str,
        request: http::Request<Vec<u8>>,
    ) -> Result<Vec<u8>, UpstreamError> {
        let bad = |reason: String| UpstreamError::BadObject {
            key: what.to_owned(),
            reason,
        };
        let workspace = match self.mode {
            UpstreamMode::Kcp if !is_path_segment(workspace) => {
                return Err(bad("the workspace is not a valid path segment".to_owned()));
            }
            UpstreamMode::Kcp => workspace,
            UpstreamMode::Kubernetes => "",
        };
        let client = self
            .workspace_client(workspace)
            .map_err(|e| bad(e.to_string()))?;
        Self::send_with(client, request).await
    }

    pub(crate) async fn send_with(
        client: Client,
        request: http::Request<Vec<u8>>,
    ) -> Result<Vec<u8>, UpstreamError> {
        let request = request.map(kube::client::Body::from);
        let response = tokio::time::timeout(REQUEST_TIMEOUT, client.send(request))
            .await
            .map_err(|_| UpstreamError::Timeout(REQUEST_TIMEOUT))?
            .map_err(|e| UpstreamError::Transport(e.to_string()))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = tokio::time::timeout(
            REQUEST_TIMEOUT,
            Limited::new(response.into_body(), 8 * 1024 * 1024).collect(),
        )
        .await
        .map_err(|_| UpstreamError::Timeout(REQUEST_TIMEOUT))?
        .map_err(|e| UpstreamError::Transport(format!("reading the response: {e}")))?
        .to_bytes();
        if status.is_success() {
            return Ok(body.to_vec());
        }
        let message = error_message(&body);
        Err(match status.as_u16() {
            404 => UpstreamError::NotFound,
            409 if is_field_manager_conflict(&body) => UpstreamError::FieldConflict(message),
            409 => UpstreamError::Conflict(message),
            429 => UpstreamError::Throttled { retry_after },
            code @ 500..=599 => UpstreamError::Server {
                status: code,
                message,
            },
            code => UpstreamError::Refused {
                status: code,
                message,
            },
        })
    }

    pub(crate) fn request(key: &ObjectKey) -> Result<kube::core::Request, UpstreamError> {
        for (what, value) in [
            ("group", key.group.as_str()),
            ("version", key.version.as_str()),
            ("resource", key.resource.as_str()),
            ("name", key.name.as_str()),
            ("namespace", key.namespace.as_deref().unwrap_or("x")),
        ] {
            let optional_group = what == "group" && value.is_empty();
            if !optional_group && !is_path_segment(value) {
                return Err(UpstreamError::BadObject {
                    key: key.to_string(),
                    reason: format!("the {what} {value:?} is not a valid path segment"),
                });
            }
        }
        let api_resource = ApiResource {
            group: key.group.clone(),
            version: key.version.clone(),
            api_version: if key.group.is_empty() {
                key.version.clone()
            } else {
                format!("{}/{}", key.group, key.version)
            },
            kind: key.kind.clone(),
            plural: key.resource.clone(),
        };
        let url = DynamicObject::url_path(&api_resource, key.namespace.as_deref());
        Ok(kube::core::Request::new(url))
    }

    /// The `PATCH …/status` request of a server-side apply.
    fn apply_request(
        key: &ObjectKey,
        configuration: &Value,
        options: ApplyOptions<'_>,
    ) -> Result<http::Request<Vec<u8>>, UpstreamError> {
        let mut params = PatchParams::apply(options.field_manager);
        params.force = options.force;
        params.dry_run = options.dry_run;
        Self::request(key)?
            .patch_subresource("status", &key.name, &params, &Patch::Apply(configuration))
            .map_err(|e| UpstreamError::BadObject {
                key: key.to_string(),
                reason: e.to_string(),
            })
    }
}

impl StatusUpstream for KubeUpstream {
    fn patch_status<'a>(
        &'a self,
        key: &'a ObjectKey,
        patch: &'a Value,
        dry_run: bool,
    ) -> BoxFuture<'a, Result<(), UpstreamError>> {
        Box::pin(async move {
            let params = PatchParams {
                dry_run,
                ..PatchParams::default()
            };
            let request = Self::request(key)?
                .patch_subresource("status", &key.name, &params, &Patch::Merge(patch))
                .map_err(|e| UpstreamError::BadObject {
                    key: key.to_string(),
                    reason: e.to_string(),
                })?;
            self.send(key, request).await.map(drop)
        })
    }

    fn apply_status<'a>(
        &'a self,
        key: &'a ObjectKey,
        configuration: &'a Value,
        options: ApplyOptions<'a>,
    ) -> BoxFuture<'a, Result<(), UpstreamError>> {
        Box::pin(async move {
            let request = Self::apply_request(key, configuration, options)?;
            self.send(key, request).await.map(drop)
        })
    }

    fn get_status<'a>(
        &'a self,
        key: &'a ObjectKey,
    ) -> BoxFuture<'a, Result<UpstreamStatus, UpstreamError>> {
        Box::pin(async move {
            let request = Self::request(key)?
                .get_subresource("status", &key.name)
                .map_err(|e| UpstreamError::BadObject {
                    key: key.to_string(),
                    reason: e.to_string(),
                })?;
            let body = self.send(key, request).await?;
            let object: Value = serde_json::from_slice(&body)
                .map_err(|e| UpstreamError::Transport(format!("decoding the object: {e}")))?;
            Ok(UpstreamStatus {
                status: object.get("status").filter(|s| !s.is_null()).cloned(),
                managed_fields: object
                    .pointer("/metadata/managedFields")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default(),
            })
        })
    }
}

impl KubeUpstream {
    /// Reads the whole object.
    pub(crate) async fn get_object(&self, key: &ObjectKey) -> Result<Value, UpstreamError> {
        let request = Self::request(key)?
            .get(&key.name, &kube::api::GetParams::default())
            .map_err(|e| UpstreamError::BadObject {
                key: key.to_string(),
                reason: e.to_string(),
            })?;
        let body = self.send(key, request).await?;
        serde_json::from_slice(&body)
            .map_err(|e| UpstreamError::Transport(format!("decoding the object: {e}")))
    }

    /// Applies a JSON merge patch to the object itself (not a subresource).
    pub(crate) async fn patch_object(
        &self,
        key: &ObjectKey,
        patch: &Value,
    ) -> Result<(), UpstreamError> {
        let request = Self::request(key)?
            .patch(&key.name, &PatchParams::default(), &Patch::Merge(patch))
            .map_err(|e| UpstreamError::BadObject {
                key: key.to_string(),
                reason: e.to_string(),
            })?;
        self.send(key, request).await.map(drop)
    }
}

/// True when `value` can be used as one segment of a URL path as it is (the
/// protocol's rule, which the agent checks too before sending).
pub fn is_path_segment(value: &str) -> bool {
    uplink_protocol::names::is_valid_path_segment(value)
}

fn with_path(url: &http::Uri, path: &str) -> Result<http::Uri, String> {
    let mut parts = url.clone().into_parts();
    let path = if path.is_empty() { "/" } else { path };
    parts.path_and_query = Some(path.parse().map_err(|e| format!("path {path:?}: {e}"))?);
    http::Uri::from_parts(parts).map_err(|e| e.to_string())
}

/// Whether a 409's Status names field managers' conflicts (a server-side
/// apply's), rather than a stale resourceVersion.
fn is_field_manager_conflict(body: &[u8]) -> bool {
    let body = &body[..body.len().min(ERROR_BODY_LIMIT)];
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.pointer("/details/causes").cloned())
        .and_then(|c| c.as_array().cloned())
        .is_some_and(|causes| {
            causes
                .iter()
                .any(|c| c.get("reason").and_then(Value::as_str) == Some("FieldManagerConflict"))
        })
}

fn error_message(body: &[u8]) -> String {
    let body = &body[..body.len().min(ERROR_BODY_LIMIT)];
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn kcp_base_url_drops_a_workspace_suffix() {
        let mut config = Config::new(
            "https://kcp.example:6443/clusters/root"
                .parse()
                .unwrap_or_else(|e| panic!("{e}")),
        );
        config.default_namespace = "default".into();
        let upstream =
            KubeUpstream::new(config, UpstreamMode::Kcp).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            upstream.base.cluster_url.to_string(),
            "https://kcp.example:6443/"
        );
    }

    #[tokio::test]
    async fn workspace_clients_are_bounded_least_recently_used_first() {
        let config = Config::new(
            "https://kcp.example:6443"
                .parse()
                .unwrap_or_else(|e| panic!("{e}")),
        );
        let upstream = KubeUpstream::new(config, UpstreamMode::Kcp)
            .unwrap_or_else(|e| panic!("{e}"))
            .with_max_clients(2);
        for workspace in ["root:a", "root:b", "root:a", "root:c", "root:d"] {
            upstream
                .workspace_client(workspace)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        assert_eq!(upstream.cached.get(), 2);
        assert_eq!(upstream.evictions.get(), 2, "b, then a");
        let clients = upstream
            .clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        assert_eq!(clients.len(), 2);
    }

    #[test]
    fn apply_is_a_patch_of_status_with_manager_and_force() {
        let key = ObjectKey::deployment("web");
        let configuration = serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment"});
        let options = ApplyOptions {
            field_manager: "uplink-hub",
            force: true,
            dry_run: true,
        };
        let request = KubeUpstream::apply_request(&key, &configuration, options)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(request.method(), http::Method::PATCH);
        assert_eq!(
            request.uri().to_string(),
            "/apis/apps/v1/namespaces/default/deployments/web/status?&dryRun=All&force=true&fieldManager=uplink-hub"
        );
        assert_eq!(
            request.headers().get(http::header::CONTENT_TYPE),
            Some(&http::HeaderValue::from_static(
                "application/apply-patch+yaml"
            ))
        );
        assert_eq!(
            serde_json::from_slice::<Value>(request.body()).ok(),
            Some(configuration)
        );
    }

    #[test]
    fn field_manager_conflicts_are_told_from_other_conflicts() {
        let apply = br#"{"kind":"Status","code":409,"reason":"Conflict","message":"Apply failed with 1 conflict: conflict with \"x\": .status.replicas","details":{"causes":[{"reason":"FieldManagerConflict","message":"conflict with \"x\"","field":".status.replicas"}]}}"#;
        let stale = br#"{"kind":"Status","code":409,"reason":"Conflict","message":"the object has been modified"}"#;
        assert!(is_field_manager_conflict(apply));
        assert!(!is_field_manager_conflict(stale));
        assert!(!is_field_manager_conflict(b"not json"));
    }

    #[test]
    fn path_segments() {
        assert!(is_path_segment("root:org:team-a"));
        assert!(is_path_segment("my-app.v2"));
        assert!(!is_path_segment("a/b"));
        assert!(!is_path_segment(".."));
        assert!(!is_path_segment("a b"));
        assert!(!is_path_segment(""));
    }
}
