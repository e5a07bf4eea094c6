//! The hub's plain HTTP endpoint: `/metrics`, `/healthz`, `/readyz` and the
//! read-only hub API:
//!
//! - `GET /api/v1/clusters`: every cluster's link, state and summary.
//! - `GET /api/v1/objects`: every object with its per-cluster entries and
//!   merged (desired) status.
//! - `GET /api/v1/objects/<workspace>/<group or core>/<resource>/<namespace or _>/<name>`:
//!   one object: merged status, strategy, each cluster's entry with its
//!   state and age (hub clock, skew-corrected), its conflicts now (open or
//!   resolved) and the last ended ones.
//! - `GET /api/v1/conflicts`: every object's present conflicts and the
//!   history of ended ones (bounded).
//! - `GET /api/v1/capacity[/history]`: see [`crate::capacity::api`].

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::aggregate::ledger::{EndedConflict, PresentConflict};
use crate::aggregate::{Aggregator, Conflict, Strategy};
use crate::health::{ClusterState, Health, cluster_state, unix_ms};
use crate::metrics::Metrics;
use crate::store::{ObjectKey, Store};

/// Longest time a client may take to send its request headers.
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
    pub heartbeat_interval: Duration,
    /// Silence after which a cluster is Offline.
    pub offline_grace: Duration,
    /// True once the listeners are bound and the upstream client is built.
    pub ready: AtomicBool,
    /// Cancelled when the hub begins shutting down (`/readyz` turns 503).
    pub shutdown: CancellationToken,
}

/// Serves HTTP until `stop`; open connections finish their current request.
pub async fn serve(listener: TcpListener, state: Arc<HttpState>, stop: CancellationToken) {
    let mut connections = JoinSet::new();
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
        let state = state.clone();
        let stop = stop.clone();
        connections.spawn(async move {
            let service = service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&state, &request)) }
            });
            let mut builder = http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let connection = builder.serve_connection(TokioIo::new(tcp), service);
            let mut connection = std::pin::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = result {
                tracing::debug!(%peer, %error, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

fn route(state: &HttpState, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET is supported\n");
    }
    if let Some(response) =
        crate::capacity::api::route(&state.capacity, request.uri().path(), request.uri().query())
    {
        return response;
    }
    match request.uri().path() {
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
        "/api/v1/clusters" => json(&clusters(state)),
        "/api/v1/objects" => json(&objects(state)),
        "/api/v1/conflicts" => json(&conflicts(state)),
        path => match path.strip_prefix("/api/v1/objects/") {
            Some(rest) => match object(state, rest) {
                Some(detail) => json(&detail),
                None => text(StatusCode::NOT_FOUND, "no such object in the hub's store\n"),
            },
            None => text(StatusCode::NOT_FOUND, "not found\n"),
        },
    }
}

/// One cluster in `GET /api/v1/clusters`.
#[derive(Debug, Serialize)]
struct ClusterView {
    name: String,
    connected: bool,
    state: ClusterState,
    /// RFC 3339, hub clock.
    last_heartbeat: Option<String>,
    session: Option<String>,
    agent_version: Option<String>,
    clock_skew_ms: Option<i64>,
    /// Objects the cluster reports (stored; held reports not counted).
    objects: usize,
    /// Reports held until placement can judge them.
    held: usize,
    /// What KCP placed on the cluster. Without a SyncTarget the cluster
    /// may report nothing.
    placement: crate::placement::PlacementSummary,
    summary: Option<uplink_protocol::ClusterSummary>,
}

fn clusters(state: &HttpState) -> Vec<ClusterView> {
    let now = SystemTime::now();
    state
        .health
        .records()
        .into_iter()
        .map(|(name, record)| ClusterView {
            objects: state.store.cluster_objects(&name),
            held: state.store.held(&name),
            placement: state.placements.summary(&name),
            state: cluster_state(&record, now, state.heartbeat_interval, state.offline_grace),
            connected: record.connected,
            last_heartbeat: record.last_heartbeat.and_then(rfc3339),
            session: record.session_id,
            agent_version: record.agent_version,
            clock_skew_ms: record.clock_skew_ms,
            summary: record.summary,
            name,
        })
        .collect()
}

/// One object in `GET /api/v1/objects`.
#[derive(Debug, Serialize)]
struct ObjectView {
    #[serde(flatten)]
    key: ObjectKey,
    clusters: BTreeMap<String, EntryView>,
    desired_status: Option<Value>,
}

#[derive(Debug, Serialize)]
struct EntryView {
    status: Value,
    generation: Option<i64>,
    observed_generation: Option<i64>,
    observed_at_ms: i64,
    seq: u64,
    uid: String,
}

fn objects(state: &HttpState) -> Vec<ObjectView> {
    state
        .store
        .objects()
        .into_iter()
        .map(|(key, entries)| ObjectView {
            desired_status: state.aggregator.preview(&key, &entries).status,
            clusters: entries
                .into_iter()
                .map(|(cluster, e)| {
                    let view = EntryView {
                        status: e.status.value(),
                        generation: e.generation,
                        observed_generation: e.observed_generation,
                        observed_at_ms: e.observed_at_ms,
                        seq: e.seq,
                        uid: e.uid,
                    };
                    (cluster, view)
                })
                .collect(),
            key,
        })
        .collect()
}

/// `GET /api/v1/objects/<workspace>/<group>/<resource>/<namespace>/<name>`.
#[derive(Debug, Serialize)]
struct ObjectDetail {
    #[serde(flatten)]
    key: ObjectKey,
    strategy: Strategy,
    merged_status: Option<Value>,
    clusters: BTreeMap<String, ClusterEntryView>,
    /// Conflicts of the merge now; `resolved_by` is null while open.
    conflicts: Vec<Conflict>,
    /// The same, as the writer last recorded them, with when they began.
    recorded_conflicts: Vec<PresentConflict>,
    /// Conflicts that ended, newest first (at most 20).
    history: Vec<EndedConflict>,
}

#[derive(Debug, Serialize)]
struct ClusterEntryView {
    state: ClusterState,
    /// How long ago the cluster observed this status, on the hub's clock.
    age_ms: i64,
    /// RFC 3339, the agent's clock corrected by its estimated skew.
    observed_at: Option<String>,
    observed_at_agent_ms: i64,
    clock_skew_ms: i64,
    #[serde(flatten)]
    entry: EntryView,
}

fn object(state: &HttpState, path: &str) -> Option<ObjectDetail> {
    let parts: Vec<&str> = path.split('/').collect();
    let [workspace, group, resource, namespace, name] = parts.as_slice() else {
        return None;
    };
    let group = if *group == "core" { "" } else { group };
    let namespace = if *namespace == "_" {
        None
    } else {
        Some(*namespace)
    };
    let (key, entries) = state.store.find(|k| {
        k.workspace == *workspace
            && k.group == group
            && k.resource == *resource
            && k.namespace.as_deref() == namespace
            && k.name == *name
    })?;
    let now = SystemTime::now();
    let view = state.aggregator.cluster_view(now);
    let merged = state.aggregator.preview(&key, &entries);
    let clusters = entries
        .into_iter()
        .map(|(cluster, e)| {
            let info = view.get(&cluster);
            let corrected = view.corrected_ms(&cluster, &e);
            let observed_at = jiff::Timestamp::from_millisecond(corrected)
                .ok()
                .map(|t| t.to_string());
            let entry = ClusterEntryView {
                state: info.state,
                age_ms: unix_ms(now).saturating_sub(corrected),
                observed_at,
                observed_at_agent_ms: e.observed_at_ms,
                clock_skew_ms: info.skew_ms,
                entry: EntryView {
                    status: e.status.value(),
                    generation: e.generation,
                    observed_generation: e.observed_generation,
                    observed_at_ms: e.observed_at_ms,
                    seq: e.seq,
                    uid: e.uid,
                },
            };
            (cluster, entry)
        })
        .collect();
    Some(ObjectDetail {
        recorded_conflicts: state.aggregator.ledger().present(&key),
        history: state.aggregator.ledger().history(Some(&key)),
        strategy: merged.strategy,
        merged_status: merged.status,
        conflicts: merged.conflicts,
        clusters,
        key,
    })
}

/// `GET /api/v1/conflicts`.
#[derive(Debug, Serialize)]
struct ConflictsView {
    present: Vec<ObjectConflicts>,
    /// Newest first.
    history: Vec<EndedConflict>,
}

#[derive(Debug, Serialize)]
struct ObjectConflicts {
    object: ObjectKey,
    conflicts: Vec<PresentConflict>,
}

fn conflicts(state: &HttpState) -> ConflictsView {
    let ledger = state.aggregator.ledger();
    ConflictsView {
        present: ledger
            .all_present()
            .into_iter()
            .map(|(object, conflicts)| ObjectConflicts { object, conflicts })
            .collect(),
        history: ledger.history(None),
    }
}

fn rfc3339(time: SystemTime) -> Option<String> {
    jiff::Timestamp::try_from(time).ok().map(|t| t.to_string())
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
}

fn json<T: Serialize>(value: &T) -> Response<Full<Bytes>> {
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
