//! A Kubernetes-compatible API server for tests, benchmarks and the demo.
//!
//! One instance plays a physical cluster (requests without a prefix) and, at
//! the same time, KCP (requests under `/clusters/<workspace>/...`, each
//! workspace with its own objects). It stores objects as JSON of any schema and
//! behaves like kube-apiserver (1.31+) wherever Uplink's clients (`kube` and
//! `kubectl`) rely on it: discovery, CRUD with optimistic concurrency, the
//! `/status` subresource, patches (merge, JSON, strategic, server-side apply),
//! watches with resume, bookmarks and 410 Expired, selectors, finalizers,
//! dry runs, `Status` errors, CRDs, authentication (admin, static and ServiceAccount
//! tokens, impersonation) and RBAC authorization, and the cluster APIs
//! beside workloads (RBAC, events.k8s.io, the reviews, TokenRequest, CSRs,
//! APIServices, component statuses, ephemeral containers); built-in objects
//! are written `kind` first, as Go's structs order them (custom resources
//! with sorted keys, as kube's unstructured encoding does). Faults (latency,
//! error responses, short watches) can be injected at run time through
//! [`Faults`].
//!
//! KCP, as far as Uplink sees it:
//! - Every object stored in a workspace carries the annotation
//!   `kcp.io/cluster: <workspace>` in every answer (get, list, watch events,
//!   the answers to create, update, patch and delete), as kcp's storage sets
//!   it from the storage key on every object it returns: a value sent by a
//!   client is replaced, and removing it changes nothing. Objects of the
//!   physical cluster (paths without `/clusters/`) have no such annotation.
//! - kcp's wildcard `/clusters/*`: `GET /clusters/*/api/v1/<resource>` and
//!   `/clusters/*/apis/<group>/<version>/<resource>` (and `.../namespaces/<ns>/...`)
//!   list and watch across every workspace (never the physical cluster),
//!   with label selectors (`key`, `key=value`, ...), field selectors,
//!   `limit`/`continue` (one snapshot across workspaces, ordered by
//!   workspace, namespace, name) and watches with the same guarantees as in
//!   one workspace: resume from a resourceVersion, bookmarks, 410 Expired
//!   when any workspace's history no longer reaches back. This works because
//!   one counter numbers every write of the server, so resource versions
//!   compare across workspaces (as one etcd revision does for kcp). A
//!   custom resource is served under `/clusters/*` when some workspace
//!   defines it. Every other verb (get by name, create, update, patch,
//!   delete, deletecollection) is refused as kcp's
//!   `WithWildcardListWatchGuard` refuses it: 405 `MethodNotAllowed`,
//!   "`<verb>` is not supported on resources of kind "<resource>" in the `*`
//!   logical cluster". Discovery under `/clusters/*` is the union of every
//!   workspace's, so `kubectl --server .../clusters/* get deployments -A -l
//!   <label>` works. As in kcp, the wildcard is for privileged users only:
//!   every request under `/clusters/*` (discovery included) is authorized
//!   in the logical cluster `*`, which is no workspace, so only
//!   `system:masters` (the admin token) gets past authorization (then the
//!   verb check above); anyone else, a ServiceAccount token of any
//!   workspace included, gets 403 Forbidden.
//!
//! Layout: [`tls`] (identity, kubeconfig), `path` (URL → request
//! description), `handler` (faults, routing, verbs over HTTP, rendering
//! answers as `Accept` asks), `authn` (bearer tokens, ServiceAccount tokens,
//! impersonation), `rbac` (the authorizer, request attributes, the bootstrap
//! policy and ClusterRole aggregation), `registry` (what each verb does to
//! an object), `store` (objects, resource versions, history, watch fan-out),
//! `watch` (streaming), `resources` (resource table, CRDs), `discovery`,
//! `openapi` (the minimum kubectl needs), `table` (server-side printing),
//! `selector`, `fields` (each kind's field selector fields and their
//! defaults), `patch`, `apply` (server-side apply ownership), `schema` (CRD
//! pruning, fieldValidation), `scale`, `protobuf` (kubectl's typed bodies),
//! `bootstrap` (the `default/kubernetes` Service, `default`
//! ServiceAccounts), `graceful` (graceful deletion), `kubelet` (removes pods
//! after their grace), `deployments` (the opt-in stand-in Deployment
//! controller), `requests` (request counters and `/metrics`), `special`
//! (routing of what is not plain storage) with
//! `reviews` (TokenReview and the access reviews), `subresources`
//! (TokenRequest, ephemeral containers, CSR approval), `certificates`,
//! `componentstatuses`, `apiservices` and `events` (events.k8s.io over core
//! Events), `status` (errors), `status_writes` (who wrote which status),
//! [`faults`], [`cli`].
//!
//! Pods bound to a node are deleted gracefully (`graceful`): a DELETE sets
//! `deletionTimestamp` and `deletionGracePeriodSeconds` (the
//! `gracePeriodSeconds` asked for, else the pod's
//! `terminationGracePeriodSeconds`, else 30 s), a grace of 0 removes the pod
//! at once, a later DELETE may only shorten the grace. What kube leaves to
//! the kubelet, deleting the pod with grace 0 once its containers have
//! stopped, the test bed's `kubelet` does when the grace period has passed
//! (to the second), in every workspace, whatever node the pod names. A DELETE
//! that removes an object at once answers a `Status` of Success, except for
//! pods, services and service accounts, which answer the object (as do
//! namespaces and CRDs).
//!
//! The test bed may simulate a Deployment controller that sets status from
//! spec, so that "run" is visible without a kubelet: with
//! [`ApiServerConfig::deployment_controller`] on (off by default; meant for
//! the servers that play physical clusters in the demo and scenario tests;
//! `uplink-e2e apiserver --deployment-controller`), every Deployment of the
//! physical cluster (never one in a workspace) that is not paused gets,
//! through `/status` and as field manager `kube-controller-manager`, the
//! status kube's controller reports
//! once a rollout has completed: `observedGeneration` = `generation`;
//! `replicas`, `updatedReplicas`, `readyReplicas`, `availableReplicas` =
//! `spec.replicas` at once (a scale reaches its new count in one status
//! write, with no intermediate counts); `Available` True
//! (`MinimumReplicasAvailable`) and `Progressing` True
//! (`NewReplicaSetAvailable`, naming a ReplicaSet per template). It reacts
//! to each change through an in-process watch. It creates no ReplicaSets
//! or pods, shows no rollout in progress, sets no revision annotation, and
//! leaves paused Deployments' status as it is (kube would still scale
//! them); the `deployments` module says exactly what it does.
//!
//! Every request is counted by logical cluster, verb (kube's: `get`,
//! `list`, `watch`, `create`, ...) and resource, whatever its answer:
//! [`ApiServer::requests`] returns a snapshot (e.g. to count a client's
//! reads per change), and `GET /metrics` (authenticated, on the whole
//! server only) serves the same counts as Prometheus text
//! (`uplink_testbed_requests_total`); faults are never injected into it.
//! Every stored write to a `/status` subresource is recorded with its time,
//! object and `User-Agent` ([`ApiServer::status_writes`], `status_writes`):
//! what kube-apiserver's audit log would tell, kept in memory.
//!
//! Known simplifications (each documented where it lives): namespaces and
//! CRDs are deleted at once with their contents (no Terminating phase);
//! `propagationPolicy`/owner references are not acted on (no garbage
//! collector); pods run nothing: no kubelet moves their phase, and the
//! stand-in kubelet removes terminating pods exactly when their grace ends;
//! no workload controller runs: Deployments get a status only from the
//! opt-in stand-in above, and nothing creates ReplicaSets or pods or acts
//! on Jobs, StatefulSets, DaemonSets or Services; `/metrics` serves only
//! the request counters;
//! lists ignore `resourceVersionMatch` (a list is served from the current
//! state, except continued pages, which are served from the first page's
//! snapshot); built-in kinds get no defaulting or schema validation (CRs are
//! pruned by their schema; field selectors and the pod grace period read
//! unset fields as their defaults; events.k8s.io Events, CSRs,
//! TokenRequests, ephemeral containers, CSR approvals and Leases' specs
//! (not their `strategy`) are validated as kube does); strategic merge uses a fixed table of merge keys; server-side
//! apply tracks ownership for appliers only; protobuf request bodies are
//! decoded for the kinds kubectl's typed commands send (others, and unknown
//! fields, get 415: send JSON); the `default/kubernetes` Service has no
//! Endpoints (none are served). Authentication and authorization: requests
//! without a token may read only health and `/version` (others get 401,
//! like `--anonymous-auth` limited to those paths); RBAC objects are not
//! validated beyond their names, a binding's roleRef may change, and writes
//! of roles and bindings are not checked for privilege escalation
//! (`escalate`/`bind`); issued tokens live in memory (a restarted server
//! forgets them) and a token bound to a Pod or Secret outlives it; KCP
//! workspaces get no stored bootstrap roles (the authorizer applies the
//! bootstrap policy there, as kcp's does). Cluster APIs: nothing signs CSRs
//! and a CSR's spec can be changed through the main resource; component
//! statuses are always Healthy; APIServices are synced when read and after
//! CRD writes (a watch sees CRD-driven changes late), and client-created
//! ones are stored but nothing proxies to them.

mod apiservices;
mod apply;
mod authn;
mod bootstrap;
mod certificates;
pub mod cli;
mod componentstatuses;
mod deployments;
mod discovery;
mod events;
mod faults;
mod fields;
mod graceful;
mod handler;
mod kubelet;
mod object;
mod openapi;
mod patch;
mod path;
mod protobuf;
mod rbac;
mod registry;
mod requests;
mod resources;
mod reviews;
mod scale;
mod schema;
mod selector;
mod special;
mod status;
mod status_writes;
mod store;
mod subresources;
mod table;
mod tls;
mod watch;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

pub use faults::Faults;
pub use requests::{RequestCounts, RequestKey};
pub use status_writes::StatusWrite;

/// A line of kube-apiserver's `--token-auth-file`: `token,user,uid,"group1,group2"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticToken {
    pub token: String,
    pub user: String,
    pub uid: String,
    pub groups: Vec<String>,
}

/// How to run one API server.
#[derive(Debug, Clone)]
pub struct ApiServerConfig {
    /// Where to listen; port 0 picks a free port.
    pub listen: SocketAddr,
    /// The bearer token clients must present; `None` generates a random one.
    pub token: Option<String>,
    /// More bearer tokens, each a fixed user with groups, as
    /// kube-apiserver's `--token-auth-file` configures them: good in every
    /// workspace, authorized by RBAC like anyone (TokenReview knows them).
    pub static_tokens: Vec<StaticToken>,
    /// KCP workspaces created at start (e.g. `root:demo:a`). Others are
    /// created on first use.
    pub workspaces: Vec<String>,
    /// Events kept per resource (per workspace) for watches that resume from
    /// a resource version; older ones get 410 Expired.
    pub watch_history: usize,
    /// Largest accepted request body (kube-apiserver: 3 MiB).
    pub max_body_bytes: usize,
    /// How often a watch that allows bookmarks gets one.
    pub bookmark_interval: Duration,
    /// Events a watcher may have queued before it counts as too slow and its
    /// watch is ended (writers never wait for watchers).
    pub watcher_buffer: usize,
    /// Run the stand-in Deployment controller on the physical cluster's
    /// Deployments (see the `deployments` module): their status follows
    /// their spec as after a completed rollout. Off by default.
    pub deployment_controller: bool,
    /// How many writes to `/status` subresources the in-memory record keeps
    /// ([`ApiServer::status_writes`]); older ones are dropped and counted.
    pub status_write_capacity: usize,
}

impl Default for ApiServerConfig {
    fn default() -> Self {
        ApiServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            token: None,
            static_tokens: Vec::new(),
            workspaces: Vec::new(),
            watch_history: 10_000,
            max_body_bytes: 3 * 1024 * 1024,
            bookmark_interval: Duration::from_secs(5),
            watcher_buffer: 1024,
            deployment_controller: false,
            status_write_capacity: 200_000,
        }
    }
}

/// What can go wrong while starting a server.
#[derive(Debug, thiserror::Error)]
pub enum ApiServerError {
    #[error("failed to bind the API server to {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("failed to generate the serving certificate: {0}")]
    Certificate(#[source] rcgen::Error),
    #[error("failed to build the TLS configuration: {0}")]
    Tls(#[source] rustls::Error),
    #[error("invalid workspace name {name:?}: {reason}")]
    Workspace { name: String, reason: String },
}

/// What every request handler shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub config: ApiServerConfig,
    pub token: String,
    pub store: store::Store,
    /// ServiceAccount tokens issued through TokenRequest.
    pub tokens: authn::Tokens,
    /// Deletes gracefully deleted pods when their grace period has passed.
    pub kubelet: kubelet::Kubelet,
    /// How many requests of each kind the server received.
    pub requests: requests::RequestCounter,
    /// Who wrote which status, and when (the audit log's stand-in).
    pub status_writes: status_writes::StatusWriteLog,
    pub faults: Faults,
    pub shutdown: CancellationToken,
}

/// A running API server. Dropping it (or [`ApiServer::shutdown`]) stops it.
#[derive(Debug)]
pub struct ApiServer {
    addr: SocketAddr,
    token: String,
    ca_pem: String,
    faults: Faults,
    shutdown: CancellationToken,
    shared: Arc<Shared>,
    /// Every server task holds a clone of the sender; when all are gone the
    /// receiver yields `None` (the shutdown pattern of tokio's mini-redis).
    tasks_done: mpsc::Receiver<()>,
}

impl ApiServer {
    /// Binds, generates the serving certificate, pre-creates workspaces and
    /// starts serving in the background.
    pub async fn start(config: ApiServerConfig) -> Result<ApiServer, ApiServerError> {
        for ws in &config.workspaces {
            path::validate_workspace(ws).map_err(|reason| ApiServerError::Workspace {
                name: ws.clone(),
                reason,
            })?;
        }
        let cert = tls::ServingCert::generate()?;
        let acceptor = TlsAcceptor::from(cert.server_config()?);
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ApiServerError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let addr = listener
            .local_addr()
            .map_err(|source| ApiServerError::Bind {
                addr: config.listen,
                source,
            })?;
        let token = config.token.clone().unwrap_or_else(tls::random_token);
        let shutdown = CancellationToken::new();
        let faults = Faults::default();
        let store = store::Store::new(config.watch_history, config.watcher_buffer);
        store.set_apiserver_port(addr.port());
        store.ensure_space("");
        for ws in &config.workspaces {
            store.ensure_space(ws);
        }
        rbac::policy::bootstrap(&store);
        let status_writes = status_writes::StatusWriteLog::new(config.status_write_capacity);
        let shared = Arc::new(Shared {
            config,
            token: token.clone(),
            store,
            tokens: authn::Tokens::default(),
            kubelet: kubelet::Kubelet::default(),
            requests: requests::RequestCounter::default(),
            status_writes,
            faults: faults.clone(),
            shutdown: shutdown.clone(),
        });
        apiservices::sync(&shared, "");
        let (task_guard, tasks_done) = mpsc::channel(1);
        let kubelet_guard = task_guard.clone();
        let kubelet_shared = shared.clone();
        tokio::spawn(async move {
            kubelet::run(kubelet_shared).await;
            drop(kubelet_guard);
        });
        if shared.config.deployment_controller {
            let controller_guard = task_guard.clone();
            let controller_shared = shared.clone();
            tokio::spawn(async move {
                deployments::run(controller_shared).await;
                drop(controller_guard);
            });
        }
        tokio::spawn(accept_loop(listener, acceptor, shared.clone(), task_guard));
        tracing::info!(%addr, "API server listening");
        Ok(ApiServer {
            addr,
            token,
            ca_pem: cert.cert_pem,
            faults,
            shutdown,
            shared,
            tasks_done,
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The bearer token clients must present.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The self-signed serving certificate (PEM); trust it as the CA.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A kubeconfig for this server; with a workspace, the server URL ends
    /// in `/clusters/<workspace>` as KCP's do.
    pub fn kubeconfig_yaml(&self, workspace: Option<&str>) -> String {
        let server = match workspace {
            Some(ws) => format!("{}/clusters/{ws}", self.url()),
            None => self.url(),
        };
        tls::kubeconfig_yaml(&server, &self.ca_pem, &self.token)
    }

    /// Like [`ApiServer::kubeconfig_yaml`] (no workspace), but reaching the
    /// server at `addr`, a loopback proxy in front of it (the serving
    /// certificate names `127.0.0.1` and `localhost`, whatever the port).
    pub fn kubeconfig_yaml_via(&self, addr: SocketAddr) -> String {
        tls::kubeconfig_yaml(&format!("https://{addr}"), &self.ca_pem, &self.token)
    }

    /// Writes [`ApiServer::kubeconfig_yaml`] to `path` (creating parent directories).
    pub fn write_kubeconfig(&self, path: &Path, workspace: Option<&str>) -> std::io::Result<()> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, self.kubeconfig_yaml(workspace))
    }

    /// The fault injection handle.
    pub fn faults(&self) -> Faults {
        self.faults.clone()
    }

    /// How many requests of each kind the server has received so far (see
    /// [`RequestCounts`]; the same counts are served on `GET /metrics`).
    pub fn requests(&self) -> RequestCounts {
        self.shared.requests.snapshot()
    }

    /// Every write to a `/status` subresource this server stored, oldest
    /// first (at most [`ApiServerConfig::status_write_capacity`] of the
    /// newest): when, in which logical cluster, of which object, by which
    /// `User-Agent`. A real kube-apiserver keeps this in its audit log; the
    /// test bed keeps it in memory. See [`StatusWrite`] for what is recorded.
    pub fn status_writes(&self) -> Vec<StatusWrite> {
        self.shared.status_writes.snapshot()
    }

    /// How many status writes were dropped from [`ApiServer::status_writes`]
    /// to stay within its capacity (0: the record is complete).
    pub fn status_writes_dropped(&self) -> u64 {
        self.shared.status_writes.dropped()
    }

    /// Stops accepting, ends watches and in-flight connections, and returns
    /// once they are gone (or after a few seconds, whichever is first).
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        self.shared.store.end_all_watches();
        let all_ended = self.tasks_done.recv();
        if tokio::time::timeout(Duration::from_secs(5), all_ended)
            .await
            .is_err()
        {
            tracing::warn!(addr = %self.addr, "API server connections did not end within 5s");
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.shared.store.end_all_watches();
    }
}

/// Accepts TCP connections until shutdown; each connection gets its own task.
async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    task_guard: mpsc::Sender<()>,
) {
    loop {
        let accepted = tokio::select! {
            () = shared.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(conn) => conn,
            Err(error) => {
                // Usually out of file descriptors: back off instead of spinning.
                tracing::warn!(%error, "API server failed to accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let guard = task_guard.clone();
        let (acceptor, shared) = (acceptor.clone(), shared.clone());
        tokio::spawn(async move {
            serve_connection(tcp, peer, acceptor, shared).await;
            drop(guard);
        });
    }
}

/// Runs TLS and HTTP/1.1 on one connection until it closes or the server shuts down.
async fn serve_connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
) {
    let handshake = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp));
    let tls = tokio::select! {
        () = shared.shutdown.cancelled() => return,
        tls = handshake => match tls {
            Ok(Ok(tls)) => tls,
            Ok(Err(error)) => {
                tracing::debug!(%peer, %error, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                return;
            }
        },
    };
    let service_shared = shared.clone();
    let service = service_fn(move |req| handler::handle(service_shared.clone(), req));
    let conn = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(tls), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        }
        () = shared.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(3), conn).await;
        }
    }
}

#[cfg(test)]
mod tests;
