//! The agent's small HTTP server: `/metrics` (Prometheus text), `/healthz`
//! (the process runs) and `/readyz` (every watch listed and a hub session
//! established; the body says what is missing). The accept loop, its
//! connection cap and the metrics encoding are `uplink_ops`' (the hub serves
//! through the same); only the routes are here.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use uplink_ops::serve::{self, Serving, text};

use crate::health::AgentHealth;
use crate::metrics::Metrics;

/// Connections served at once; past it new ones are closed unanswered.
const MAX_CONNECTIONS: usize = 64;

/// Longest time a client may take to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// What the handlers read.
#[derive(Debug, Clone)]
struct State {
    metrics: Metrics,
    health: AgentHealth,
}

/// Serves until `stop` is cancelled, then lets open requests finish (for at
/// most 5 s).
pub async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    health: AgentHealth,
    stop: CancellationToken,
) {
    let serving = Serving {
        max_connections: MAX_CONNECTIONS,
        header_timeout: HEADER_TIMEOUT,
        drain_timeout: Some(Duration::from_secs(5)),
        open: metrics.http_connections.clone(),
        refused: metrics.http_connections_refused.clone(),
    };
    let state = State { metrics, health };
    let on_refused = |peer, limit| {
        tracing::debug!(%peer, limit, outcome = "refused", "too many HTTP connections; closed a new one");
    };
    serve::accept(listener, serving, stop.clone(), on_refused, |tcp, _| {
        let state = state.clone();
        let stop = stop.clone();
        async move {
            let service = service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&state, &request)) }
            });
            serve::connection(tcp, service, HEADER_TIMEOUT, &stop).await;
        }
    })
    .await;
}

fn route(state: &State, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    match request.uri().path() {
        "/metrics" => uplink_ops::metrics::response(state.metrics.render()),
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => match state.health.not_ready_reason() {
            None => text(StatusCode::OK, "ready\n"),
            Some(reason) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {reason}\n"),
            ),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found (try /metrics, /healthz, /readyz)\n",
        ),
    }
}
