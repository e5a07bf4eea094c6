//! The hub's HTTP endpoint: `/metrics`, `/healthz`, `/readyz` and the
//! read-only hub API:
//!
//! - `GET /api/v1/clusters`: every cluster's link, state and summary.
//! - `GET /api/v1/objects`: every object with its per-cluster entries and
//!   merged (desired) status.
//! - `GET /api/v1/objects/<workspace>/<group or core>/<resource>/<namespace or _>/<name>`:
//!   one object: merged status, strategy, each cluster's entry with its
//!   state and age (hub clock, skew-corrected), its conflicts now (open or
//!   resolved) and the last ended ones.
//! - `GET /api/v1/conflicts`: every object's present conflicts.
//! - `GET /api/v1/conflicts/history`: conflicts that ended, newest first
//!   (at most [`crate::aggregate::ledger::HISTORY_TOTAL`]).
//! - `GET /api/v1/capacity[/history]`: see [`crate::capacity::api`].
//!
//! The three lists page and stream as Kubernetes lists do ([`list`]):
//! `{"kind": "ObjectList", "metadata": {"continue": ..}, "items": [..]}`.
//! Who may ask is [`auth`]'s to decide; `/healthz` and `/readyz` are open.

pub mod auth;
pub mod list;
mod tls;
mod views;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

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
}

/// Serves HTTP (HTTPS when `state.access` has a TLS configuration) until
/// `stop`; open connections finish their current request. At most
/// `state.max_connections` at once: past it a new connection is closed
/// unanswered (a client holding many open cannot grow the hub; probes and
/// scrapes retry).
pub async fn serve(listener: TcpListener, state: Arc<HttpState>, stop: CancellationToken) {
    let mut connections = JoinSet::new();
    let refusals_logged = crate::server::warn::WarnBudget::default();
    loop {
        let (tcp, peer) = tokio::select! {
            () = stop.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accepting an HTTP connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        while connections.try_join_next().is_some() {}
        if connections.len() >= state.max_connections {
            drop(tcp);
            state.metrics.http_connections_refused.inc();
            if let Some(suppressed) = refusals_logged.allow() {
                tracing::warn!(%peer, limit = state.max_connections, suppressed, outcome = "refused", "too many HTTP connections; closed a new one");
            }
            continue;
        }
        let open = OpenConnection::new(&state.metrics.http_connections);
        let state = state.clone();
        let stop = stop.clone();
        connections.spawn(async move {
            let _open = open;
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
        });
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// One connection counted in `uplink_hub_http_connections` while it lives.
struct OpenConnection(prometheus::IntGauge);

impl OpenConnection {
    fn new(gauge: &prometheus::IntGauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
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
    let mut builder = http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    let connection = builder.serve_connection(TokioIo::new(io), service);
    let mut connection = std::pin::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, "HTTP connection ended with an error");
    }
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
    if let Some(response) = crate::capacity::api::route(&state.capacity, path, query) {
        return response.map(BodyExt::boxed_unsync);
    }
    match path {
        "/metrics" => {
            let mut response = text(StatusCode::OK, state.metrics.render());
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            if state.shutdown.is_cancelled() {
                text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
            } else if state.ready.load(Ordering::Acquire) {
                text(StatusCode::OK, "ok\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "starting\n")
            }
        }
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
                let page = state.store.page_keys(asked.after.as_ref(), asked.limit);
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
    let mut response = Response::new(Full::new(body.into()).boxed_unsync());
    *response.status_mut() = status;
    response
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
