//! Watch streams: newline-delimited JSON events over a chunked response,
//! with kube's resourceVersion semantics (current state, resume from the
//! history, 410 Expired as an ERROR event), bookmarks, streaming lists
//! (`sendInitialEvents`), `timeoutSeconds`, and injected early ends.
//!
//! Each watch runs in its own task that owns the store subscription and
//! writes into a small channel read by the response body; when the client
//! goes away the body is dropped, the task ends and the watcher is removed.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::Response;
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;

use super::Shared;
use super::handler::Body;
use super::object::{self, KeyOrder};
use super::path::Query;
use super::registry::Target;
use super::status::{ApiError, Cause};
use super::store::{Delivery, Filter, Scope, Subscription, WatchStart};
use super::table::{self, Rendering};

/// How a watch was asked to behave.
#[derive(Debug, Clone)]
struct WatchParams {
    start: WatchStart,
    initial_events_end: bool,
    bookmarks: bool,
    timeout: Option<Duration>,
    close_after: Option<u64>,
    table: bool,
    include_object: Option<String>,
}

fn list_options_invalid(field: &str, message: &str) -> ApiError {
    ApiError::invalid(
        "meta.k8s.io",
        "ListOptions",
        "",
        vec![Cause {
            reason: "FieldValueForbidden",
            field: field.to_string(),
            message: format!("Forbidden: {message}"),
        }],
    )
}

fn params(query: &Query, close_after: Option<u64>, accept: &str) -> Result<WatchParams, ApiError> {
    let rv = match query.get("resourceVersion") {
        None | Some("" | "0") => None,
        Some(v) => Some(v.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!(
                "resourceVersion: Invalid value: {v:?}: must be a non-negative integer"
            ))
        })?),
    };
    let bookmarks = query.flag("allowWatchBookmarks");
    let send_initial = match query.get("sendInitialEvents") {
        None | Some("") => None,
        Some("true" | "1") => Some(true),
        Some(_) => Some(false),
    };
    let rv_match = query.get("resourceVersionMatch").filter(|m| !m.is_empty());
    match (send_initial, rv_match) {
        (Some(_), m) if m != Some("NotOlderThan") => {
            return Err(list_options_invalid(
                "resourceVersionMatch",
                "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
            ));
        }
        (None, Some(_)) => {
            return Err(list_options_invalid(
                "resourceVersionMatch",
                "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
            ));
        }
        _ => {}
    }
    if send_initial == Some(true) && !bookmarks {
        return Err(list_options_invalid(
            "allowWatchBookmarks",
            "sendInitialEvents requires setting allowWatchBookmarks to true",
        ));
    }
    let start = match (send_initial, rv) {
        (Some(true), _) | (None, None) => WatchStart::CurrentState,
        (Some(false), None) => WatchStart::Now,
        (_, Some(n)) => WatchStart::After(n),
    };
    let timeout = match query.get("timeoutSeconds") {
        None | Some("") => None,
        Some(t) => Some(Duration::from_secs(t.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!("timeoutSeconds: Invalid value: {t:?}"))
        })?)),
    };
    Ok(WatchParams {
        start,
        initial_events_end: send_initial == Some(true),
        bookmarks,
        timeout,
        close_after,
        table: Rendering::from_accept(accept) == Rendering::Table,
        include_object: query.get("includeObject").map(str::to_string),
    })
}

/// Starts a watch and returns its streaming response.
pub(crate) fn serve(
    shared: Arc<Shared>,
    target: Target,
    scope: Scope,
    query: &Query,
    filter: Filter,
    close_after: Option<u64>,
    accept: &str,
) -> Result<Response<Body>, ApiError> {
    let params = params(query, close_after, accept)?;
    let (tx, rx) = mpsc::channel::<Bytes>(32);
    match shared
        .store
        .watch(&scope, &target.def.key(), filter, params.start)
    {
        Ok(subscription) => {
            tokio::spawn(run(shared, target, subscription, params, tx));
        }
        Err(e) if e.code == 410 => {
            // The watch cache answers an expired resourceVersion with an
            // ERROR event on a 200 stream, then ends it.
            let line = event_line("ERROR", &e.to_status(), KeyOrder::KindFirst);
            tokio::spawn(async move {
                let _ = tx.send(line).await;
            });
        }
        Err(e) => return Err(e),
    }
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, Infallible>(Frame::data(chunk)), rx))
    });
    let mut response = Response::new(StreamBody::new(stream).boxed_unsync());
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, private"),
    );
    Ok(response)
}

/// `{"type":...,"object":...}` and a newline, in kube's field order.
fn event_line(kind: &str, object: &Value, order: KeyOrder) -> Bytes {
    framed(kind, &object::to_json(object, order))
}

fn framed(kind: &str, object: &[u8]) -> Bytes {
    let mut line = Vec::with_capacity(object.len() + 32);
    line.extend_from_slice(b"{\"type\":\"");
    line.extend_from_slice(kind.as_bytes());
    line.extend_from_slice(b"\",\"object\":");
    line.extend_from_slice(object);
    line.extend_from_slice(b"}\n");
    Bytes::from(line)
}

/// One event line, reusing the event's shared serialisation when the
/// object is served as stored.
fn delivery_line(target: &Target, params: &WatchParams, d: &Delivery) -> Bytes {
    let presented = target.present(&d.event.object);
    if params.table {
        let rv = object::meta_str(&presented, "resourceVersion").map(str::to_string);
        let t = table::render(target, &[presented], rv, params.include_object.as_deref());
        return event_line(d.kind.as_str(), &t, KeyOrder::KindFirst);
    }
    let order = KeyOrder::for_resource(target.def.custom);
    if !Arc::ptr_eq(&presented, &d.event.object) {
        return event_line(d.kind.as_str(), &presented, order);
    }
    framed(d.kind.as_str(), d.event.object_json(order))
}

fn bookmark_line(target: &Target, rv: u64, initial_events_end: bool) -> Bytes {
    let mut metadata = json!({ "resourceVersion": rv.to_string(), "creationTimestamp": null });
    if initial_events_end {
        metadata["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
    }
    event_line(
        "BOOKMARK",
        &json!({ "kind": target.def.kind, "apiVersion": target.api_version(), "metadata": metadata }),
        KeyOrder::for_resource(target.def.custom),
    )
}

/// Streams one watch until it times out, the client leaves, the watcher is
/// dropped (too slow, resource gone), a fault ends it, or the server stops.
async fn run(
    shared: Arc<Shared>,
    target: Target,
    mut sub: Subscription,
    params: WatchParams,
    tx: mpsc::Sender<Bytes>,
) {
    let deadline = params.timeout.map(|t| tokio::time::Instant::now() + t);
    let mut sent_events: u64 = 0;
    let mut last_rv = 0u64;
    let limit_reached = |n: u64| params.close_after.is_some_and(|max| n >= max);
    if limit_reached(0) {
        return;
    }
    let initial = std::mem::take(&mut sub.initial);
    for d in &initial {
        if tx.send(delivery_line(&target, &params, d)).await.is_err() {
            return;
        }
        sent_events += 1;
        last_rv = last_rv.max(d.event.rv);
        if limit_reached(sent_events) {
            return;
        }
    }
    drop(initial);
    if params.initial_events_end {
        let rv = sub.start_rv.max(last_rv);
        if tx.send(bookmark_line(&target, rv, true)).await.is_err() {
            return;
        }
    }
    let interval = shared
        .config
        .bookmark_interval
        .max(Duration::from_millis(10));
    let mut bookmarks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    bookmarks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let timeout = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(timeout);
    loop {
        tokio::select! {
            () = shared.shutdown.cancelled() => return,
            () = &mut timeout => return,
            () = tx.closed() => return,
            delivery = sub.live.recv() => {
                let Some(d) = delivery else { return };
                if tx.send(delivery_line(&target, &params, &d)).await.is_err() {
                    return;
                }
                sent_events += 1;
                last_rv = last_rv.max(d.event.rv);
                if limit_reached(sent_events) {
                    return;
                }
            }
            _ = bookmarks.tick(), if params.bookmarks => {
                // Every event up to the store's current resourceVersion is
                // already queued for us; send those first so the bookmark
                // never promises more than was delivered.
                let rv = sub.store_rv();
                loop {
                    match sub.live.try_recv() {
                        Ok(d) => {
                            if tx.send(delivery_line(&target, &params, &d)).await.is_err() {
                                return;
                            }
                            sent_events += 1;
                            last_rv = last_rv.max(d.event.rv);
                            if limit_reached(sent_events) {
                                return;
                            }
                        }
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => return,
                    }
                }
                if tx.send(bookmark_line(&target, rv.max(last_rv), false)).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_version_semantics() {
        let p = |q: &str| params(&Query::parse(Some(q)), None, "application/json");
        assert_eq!(p("").map(|p| p.start).ok(), Some(WatchStart::CurrentState));
        assert_eq!(
            p("resourceVersion=0").map(|p| p.start).ok(),
            Some(WatchStart::CurrentState)
        );
        assert_eq!(
            p("resourceVersion=12").map(|p| p.start).ok(),
            Some(WatchStart::After(12))
        );
        assert_eq!(p("resourceVersion=x").err().map(|e| e.code), Some(400));
        let streaming =
            p("sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true");
        assert!(
            streaming.is_ok_and(|p| p.initial_events_end && p.start == WatchStart::CurrentState)
        );
        assert_eq!(
            p("sendInitialEvents=true&allowWatchBookmarks=true")
                .err()
                .map(|e| e.code),
            Some(422)
        );
        assert_eq!(
            p("sendInitialEvents=true&resourceVersionMatch=NotOlderThan")
                .err()
                .map(|e| e.code),
            Some(422)
        );
        assert_eq!(
            p("resourceVersionMatch=NotOlderThan").err().map(|e| e.code),
            Some(422)
        );
        assert_eq!(
            p("sendInitialEvents=false&resourceVersionMatch=NotOlderThan")
                .map(|p| p.start)
                .ok(),
            Some(WatchStart::Now)
        );
    }
}
