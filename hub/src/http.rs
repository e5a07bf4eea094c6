//! The hub's HTTP endpoint: `/metrics`, `/healthz`, `/readyz` and the
//! read-only hub API:
//!
//! - `GET /api/v1/clusters`: every cluster's link, state, health,
//!   allocation and summary; `GET /api/v1/clusters/<name>`: one of them.
//! - `GET /api/v1/objects[?cluster=<name>]`: every object (or every object
//!   the cluster reports) with its per-cluster entries and merged (desired)
//!   status.
//! - `GET /api/v1/objects/<workspace>/<group or core>/<resource>/<namespace or _>/<name>`:
//!   one object: merged status, strategy, each cluster's entry with its
//!   state and age (hub clock, skew-corrected), its conflicts now (open or
//!   resolved) and the last ended ones.
//! - `GET /api/v1/conflicts`: every object's present conflicts.
//! - `GET /api/v1/conflicts/history`: conflicts that ended, newest first
//!   (at most [`crate::aggregate::ledger::HISTORY_TOTAL`]).
//! - `GET /api/v1/capacity[/history]`: see [`crate::capacity::api`].
//!
//! - `GET /ui/`: the operator's page ([`ui`]), a client of the API above;
//!   `/` redirects to it.
//!
//! The three lists page and stream as Kubernetes lists do ([`list`]):
//! `{"kind": "ObjectList", "metadata": {"continue": ..}, "items": [..]}`.
//! Who may ask is [`auth`]'s to decide; `/healthz` and `/readyz` are open.

pub mod auth;
pub mod list;
mod tls;
mod ui;
mod views;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use uplink_ops::serve::{self, Serving};

use crate::aggregate::Aggregator;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::store::{ObjectKey, Store};
pub use auth::{Access, HttpAuthConfig, HttpAuthMode};
pub use list::{Body, DEFAULT_LIMIT, ListRequest, MAX_LIMIT};

/// Longest time a client may take to send its request headers (and, with
/// TLS, to finish its handshake).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// What the HTTP endpoint reads.
#[derive(Debug)]
pub struct HttpState {
    pub metrics: Arc<Metrics>,
    pub store: Arc<Store>,
    pub health: Arc<Health>,
    pub aggregator: Arc<Aggregator>,
    /// What KCP placed on each cluster.
    pub placements: Arc<crate::placement::Placements>,
    /// Capacity records, totals, history and reports.
    pub capacity: Arc<crate::capacity::Capacity>,
    /// Who may read what: authentication and authorization of requests.
    pub access: Arc<Access>,
    pub heartbeat_interval: Duration,
    /// Silence after which a cluster is Offline.
    pub offline_grace: Duration,
    /// Connections served at once; past it new ones are closed unanswered.
    pub max_connections: usize,
    /// True once the listeners are bound and the upstream client is built.
    pub ready: AtomicBool,
    /// Cancelled when the hub begins shutting down (`/readyz` turns 503).
    pub shutdown: CancellationToken,
    /// Which shards this hub holds (`/readyz`, `/api/v1/shards`).
    pub ownership: crate::replicas::Ownership,
}

/// `/api/v1/shards`: this hub's identity (`single` when not replicated),
/// the shard count, and the shards it holds with their terms.
fn shards_view(ownership: &crate::replicas::Ownership) -> serde_json::Value {
    let held: Vec<serde_json::Value> = match ownership.claims() {
        Some(claims) => claims
            .iter()
            .map(|c| serde_json::json!({"shard": c.shard.0, "term": c.term}))
            .collect(),
        None => (0..ownership.count())
            .map(|shard| serde_json::json!({"shard": shard, "term": 0}))
            .collect(),
    };
    serde_json::json!({
        "kind": "Shards",
        "identity": ownership.identity(),
        "replicated": ownership.is_replicated(),
        "count": ownership.count(),
        "held": held,
    })
}

/// `/readyz`'s lines after `ok`: `identity`, `shards held/count` and
/// which, as `shard@term`.
fn shards_text(ownership: &crate::replicas::Ownership) -> String {
    match ownership.claims() {
        None => format!(
            "identity {}\nshards {}/{} held (a single hub holds every shard)\n",
            ownership.identity(),
            ownership.count(),
            ownership.count()
        ),
        Some(claims) => {
            let held: Vec<String> = claims
                .iter()
                .map(|c| format!("{}@{}", c.shard, c.term))
                .collect();
            format!(
                "identity {}\nshards {}/{} held: {}\n",
                ownership.identity(),
                claims.len(),
                ownership.count(),
                held.join(" ")
            )
        }
    }
}

/// Serves HTTP (HTTPS when `state.access` has a TLS configuration) until
/// `stop`; open connections finish their current request. At most
/// `state.max_connections` at once: past it a new connection is closed
/// unanswered (a client holding many open cannot grow the hub; probes and
/// scrapes retry). The accept loop, cap and shutdown are `uplink_ops`' (the
/// agent serves through the same); TLS, authentication and the routes are
/// the hub's.
pub async fn serve(listener: TcpListener, state: Arc<HttpState>, stop: CancellationToken) {
    let serving = Serving {
        max_connections: state.max_connections,
        header_timeout: HEADER_TIMEOUT,
        drain_timeout: None,
        open: state.metrics.http_connections.clone(),
        refused: state.metrics.http_connections_refused.clone(),
    };
    let refusals_logged = crate::server::warn::WarnBudget::default();
    let on_refused = |peer, limit| {
        if let Some(suppressed) = refusals_logged.allow() {
            tracing::warn!(%peer, limit, suppressed, outcome = "refused", "too many HTTP connections; closed a new one");
        }
    };
    serve::accept(listener, serving, stop.clone(), on_refused, |tcp, peer| {
        let state = state.clone();
        let stop = stop.clone();
        async move {
            match state.access.tls() {
                None => serve_connection(tcp, None, state, stop).await,
                Some(acceptor) => {
                    let handshake = tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(tcp));
                    let tls = tokio::select! {
                        () = stop.cancelled() => return,
                        tls = handshake => tls,
                    };
                    match tls {
                        Ok(Ok(tls)) => {
                            let user = tls::client_user(tls.get_ref().1);
                            serve_connection(tls, user, state, stop).await;
                        }
                        Ok(Err(error)) => {
                            tracing::debug!(%peer, %error, outcome = "refused", "HTTPS handshake failed");
                        }
                        Err(_) => {
                            tracing::debug!(%peer, outcome = "timeout", "HTTPS handshake took too long");
                        }
                    }
                }
            }
        }
    })
    .await;
}

/// Serves one connection's requests; `user` is who its client certificate
/// proves (mutual TLS), if any.
async fn serve_connection<S>(
    io: S,
    user: Option<auth::UserInfo>,
    state: Arc<HttpState>,
    stop: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let user = Arc::new(user);
    let service = service_fn(move |request| {
        let state = state.clone();
        let user = user.clone();
        async move { Ok::<_, Infallible>(handle(&state, user.as_ref().as_ref(), request).await) }
    });
    serve::connection(io, service, HEADER_TIMEOUT, &stop).await;
}

/// Checks who asks, then answers.
async fn handle(
    state: &Arc<HttpState>,
    user: Option<&auth::UserInfo>,
    request: Request<Incoming>,
) -> Response<Body> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET is supported\n");
    }
    if let Err(denial) = state.access.check(&request, user).await {
        return denial.response();
    }
    route(state, &request)
}

fn route(state: &Arc<HttpState>, request: &Request<Incoming>) -> Response<Body> {
    let path = request.uri().path();
    let query = request.uri().query();
    if let Some(response) = ui::route(path) {
        return response;
    }
    if let Some(response) = crate::capacity::api::route(&state.capacity, path, query) {
        return response.map(BodyExt::boxed_unsync);
    }
    match path {
        "/metrics" => {
            uplink_ops::metrics::response(state.metrics.render()).map(BodyExt::boxed_unsync)
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            if state.shutdown.is_cancelled() {
                text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
            } else if state.ready.load(Ordering::Acquire) {
                // Ready whatever it holds (agents keep a session to every
                // replica); which shards, said below for the operator.
                text(
                    StatusCode::OK,
                    format!("ok\n{}", shards_text(&state.ownership)),
                )
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "starting\n")
            }
        }
        "/api/v1/shards" => json(&shards_view(&state.ownership)),
        "/api/v1/clusters" => match ListRequest::<String>::parse("clusters", query) {
            Ok(asked) => {
                let page = state.health.names_page(asked.after.as_ref(), asked.limit);
                let state = Arc::clone(state);
                list::respond("clusters", "ClusterList", page, move |name| {
                    views::cluster(&state, name)
                })
            }
            Err(error) => text(StatusCode::BAD_REQUEST, format!("{error}\n")),
        },
        "/api/v1/objects" => match ListRequest::<ObjectKey>::parse("objects", query) {
            Ok(asked) => {
                let cluster = crate::capacity::api::parse_query(query.unwrap_or_default())
                    .into_iter()
                    .find_map(|(name, value)| (name == "cluster").then_some(value));
                let page = match cluster {
                    Some(cluster) => {
                        state
                            .store
                            .cluster_page_keys(&cluster, asked.after.as_ref(), asked.limit)
                    }
                    None => state.store.page_keys(asked.after.as_ref(), asked.limit),
                };
                let state = Arc::clone(state);
                list::respond("objects", "ObjectList", page, move |key| {
                    views::object(&state, key)
                })
            }
            Err(error) => text(StatusCode::BAD_REQUEST, format!("{error}\n")),
        },
        "/api/v1/conflicts" => match ListRequest::<ObjectKey>::parse("conflicts", query) {
            Ok(asked) => {
                let ledger = state.aggregator.ledger();
                let page = ledger.present_page(asked.after.as_ref(), asked.limit);
                let state = Arc::clone(state);
                list::respond("conflicts", "ConflictList", page, move |key| {
                    views::object_conflicts(&state, key)
                })
            }
            Err(error) => text(StatusCode::BAD_REQUEST, format!("{error}\n")),
        },
        "/api/v1/conflicts/history" => {
            // Bounded by the ledger (HISTORY_TOTAL entries), so one page.
            let ended = state.aggregator.ledger().history(None);
            json(&serde_json::json!({
                "kind": "ConflictHistory",
                "metadata": {},
                "items": ended,
            }))
        }
        path if path.starts_with("/api/v1/clusters/") => {
            let name =
                crate::capacity::api::decode_path_segment(&path["/api/v1/clusters/".len()..]);
            match views::cluster(state, &name) {
                Some(cluster) => json(&cluster),
                None => text(
                    StatusCode::NOT_FOUND,
                    format!("no cluster {name:?} in the hub's records\n"),
                ),
            }
        }
        path => match path.strip_prefix("/api/v1/objects/") {
            Some(rest) => match views::object_detail(state, rest) {
                Some(detail) => json(&detail),
                None => text(StatusCode::NOT_FOUND, "no such object in the hub's store\n"),
            },
            None => text(StatusCode::NOT_FOUND, "not found\n"),
        },
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    serve::text(status, body).map(BodyExt::boxed_unsync)
}

fn json<T: Serialize>(value: &T) -> Response<Body> {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => {
            let mut response = text(StatusCode::OK, body);
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            response
        }
        Err(error) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding JSON: {error}\n"),
        ),
    }
}
