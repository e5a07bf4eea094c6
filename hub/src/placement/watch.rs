//! A list+watch of one collection in KCP, as a stream that never ends: a
//! complete list first ([`Event::Listed`]), then the changes
//! ([`Event::Applied`], [`Event::Deleted`]), resumed from the last resource
//! version the server sent (objects and bookmarks) whenever the watch ends,
//! and listed again from scratch when the server says that version is too
//! old (410 Gone). Failures are yielded, for the caller to count and log,
//! and retried after an exponential backoff with jitter; a list or watch
//! that works again resets the backoff. A collection the server does not
//! serve (404, a custom resource not defined yet) is listed as empty once,
//! then asked for again with the backoff.
//!
//! Written here rather than taken from `kube_runtime::watcher` because the
//! caller needs the list's `kind` (a list's items carry none for built-in
//! types, and a placement names the kind it accepts) and a wildcard path
//! (`/clusters/*/...`) that `kube::Api` cannot address.

use std::fmt::Debug;
use std::time::Duration;

use futures::{StreamExt, stream::BoxStream};
use kube::Client;
use kube::api::{ListParams, WatchParams};
use kube::core::{ObjectList, Request, WatchEvent};
use serde::de::DeserializeOwned;
use tokio::time::Instant;

/// Objects per page of a list (kube-apiserver's default chunk size in client-go).
const PAGE: u32 = 500;
/// How long one watch request stays open before it is resumed.
const WATCH_TIMEOUT_S: u32 = 290;
/// First retry delay after a failure; doubles per failure in a row.
const RETRY_BASE: Duration = Duration::from_millis(200);
/// Longest retry delay.
const RETRY_MAX: Duration = Duration::from_secs(30);

/// What a watched object must tell the watch.
pub trait Watched: Clone + DeserializeOwned + Send + Debug + 'static {
    /// `metadata.resourceVersion`, where the watch resumes after this object.
    fn resource_version(&self) -> Option<&str>;

    /// Whether a list keeps this object; a list page's others are dropped
    /// as it arrives, so a list of many objects the caller ignores anyway
    /// is never held whole. Watch events are never filtered: a change that
    /// makes an object uninteresting is news.
    fn keep_listed(&self) -> bool {
        true
    }
}

/// One collection to list and watch: a path under the client's base URL
/// (`/apis/apps/v1/deployments`) and an optional label selector.
#[derive(Clone)]
pub struct Collection {
    pub client: Client,
    pub path: String,
    pub label_selector: Option<String>,
}

impl Debug for Collection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collection")
            .field("path", &self.path)
            .field("label_selector", &self.label_selector)
            .finish_non_exhaustive()
    }
}

/// What the collection holds, or how it changed.
#[derive(Debug, Clone, PartialEq)]
pub enum Event<T> {
    /// Every object that matches now; replaces whatever was known before
    /// (objects missing from it are gone). `kind` is the list's kind without
    /// its `List` suffix, when the server named one.
    Listed {
        kind: Option<String>,
        objects: Vec<T>,
    },
    /// An object appeared or changed.
    Applied(T),
    /// An object was deleted (or stopped matching the selector).
    Deleted(T),
}

/// Why a list or watch failed; it is retried after `retry_in`.
#[derive(Debug, thiserror::Error)]
#[error("{what} {path}: {source} (retrying in {retry_in:?})")]
pub struct WatchError {
    pub what: &'static str,
    pub path: String,
    /// Failures in a row, this one included.
    pub attempt: u32,
    pub retry_in: Duration,
    #[source]
    pub source: kube::Error,
}

/// Lists and watches `collection` until the stream is dropped.
pub fn list_watch<T: Watched>(
    collection: Collection,
) -> BoxStream<'static, Result<Event<T>, WatchError>> {
    let machine = Machine {
        collection,
        state: State::List,
        failures: 0,
    };
    futures::stream::unfold(machine, |mut machine| async move {
        let item = machine.next().await;
        Some((item, machine))
    })
    .boxed()
}

/// Where the list+watch stands.
enum State<T> {
    /// Listing from scratch.
    List,
    /// Starting a watch from a resource version.
    Watch { version: String },
    /// Reading a running watch.
    Watching {
        version: String,
        events: BoxStream<'static, Result<WatchEvent<T>, kube::Error>>,
    },
    /// Waiting out the backoff after a failure, then `then`.
    Backoff { until: Instant, then: Box<State<T>> },
}

struct Machine<T> {
    collection: Collection,
    state: State<T>,
    failures: u32,
}

impl<T: Watched> Machine<T> {
    /// The next event or failure; waits as long as the watch is quiet.
    async fn next(&mut self) -> Result<Event<T>, WatchError> {
        loop {
            match std::mem::replace(&mut self.state, State::List) {
                State::List => match list(&self.collection).await {
                    Ok((version, event)) => {
                        self.failures = 0;
                        self.state = State::Watch { version };
                        return Ok(event);
                    }
                    // The type is not served (yet): nothing of it exists.
                    // Said once, as an empty list, then asked again later.
                    Err(source) if is_not_found(&source) => {
                        let repeated = self.failures > 0;
                        let error = self.failed("listing", source, State::List);
                        if repeated {
                            return Err(error);
                        }
                        return Ok(Event::Listed {
                            kind: None,
                            objects: Vec::new(),
                        });
                    }
                    Err(source) => return Err(self.failed("listing", source, State::List)),
                },
                State::Watch { version } => match watch(&self.collection, &version).await {
                    Ok(events) => {
                        self.state = State::Watching { version, events };
                    }
                    Err(source) if is_gone(&source) => self.state = State::List,
                    Err(source) => {
                        return Err(self.failed("watching", source, State::Watch { version }));
                    }
                },
                State::Watching {
                    mut version,
                    mut events,
                } => match events.next().await {
                    // The server ended the watch (its timeout): resume.
                    None => self.state = State::Watch { version },
                    Some(Ok(WatchEvent::Added(object) | WatchEvent::Modified(object))) => {
                        self.failures = 0;
                        advance(&mut version, &object);
                        self.state = State::Watching { version, events };
                        return Ok(Event::Applied(object));
                    }
                    Some(Ok(WatchEvent::Deleted(object))) => {
                        self.failures = 0;
                        advance(&mut version, &object);
                        self.state = State::Watching { version, events };
                        return Ok(Event::Deleted(object));
                    }
                    Some(Ok(WatchEvent::Bookmark(bookmark))) => {
                        version = bookmark.metadata.resource_version;
                        self.state = State::Watching { version, events };
                    }
                    Some(Ok(WatchEvent::Error(status))) if status.code == 410 => {
                        self.state = State::List;
                    }
                    Some(Ok(WatchEvent::Error(status))) => {
                        let source = kube::Error::Api(status);
                        return Err(self.failed("watching", source, State::Watch { version }));
                    }
                    Some(Err(source)) => {
                        return Err(self.failed("watching", source, State::Watch { version }));
                    }
                },
                State::Backoff { until, then } => {
                    tokio::time::sleep_until(until).await;
                    self.state = *then;
                }
            }
        }
    }

    /// Counts a failure; the next call waits out the backoff, then goes on
    /// with `next`.
    fn failed(&mut self, what: &'static str, source: kube::Error, next: State<T>) -> WatchError {
        self.failures = self.failures.saturating_add(1);
        let retry_in =
            uplink_ops::backoff::Policy::retries(RETRY_BASE, RETRY_MAX).delay_after(self.failures);
        self.state = State::Backoff {
            until: Instant::now() + retry_in,
            then: Box::new(next),
        };
        WatchError {
            what,
            path: self.collection.path.clone(),
            attempt: self.failures,
            retry_in,
            source,
        }
    }
}

/// A complete, paginated list: its resource version and the event.
async fn list<T: Watched>(collection: &Collection) -> Result<(String, Event<T>), kube::Error> {
    let request = Request::new(&collection.path);
    let mut objects = Vec::new();
    let mut continue_token = None;
    loop {
        let params = ListParams {
            label_selector: collection.label_selector.clone(),
            limit: Some(PAGE),
            continue_token: continue_token.take(),
            ..ListParams::default()
        };
        let page: ObjectList<T> = collection
            .client
            .request(request.list(&params).map_err(kube::Error::BuildRequest)?)
            .await?;
        objects.extend(page.items.into_iter().filter(Watched::keep_listed));
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => continue_token = Some(token),
            _ => {
                let version = page.metadata.resource_version.unwrap_or_default();
                let kind = page
                    .types
                    .kind
                    .strip_suffix("List")
                    .filter(|kind| !kind.is_empty())
                    .map(str::to_owned);
                return Ok((version, Event::Listed { kind, objects }));
            }
        }
    }
}

async fn watch<T: Watched>(
    collection: &Collection,
    version: &str,
) -> Result<BoxStream<'static, Result<WatchEvent<T>, kube::Error>>, kube::Error> {
    let params = WatchParams {
        label_selector: collection.label_selector.clone(),
        timeout: Some(WATCH_TIMEOUT_S),
        bookmarks: true,
        ..WatchParams::default()
    };
    let request = Request::new(&collection.path)
        .watch(&params, version)
        .map_err(kube::Error::BuildRequest)?;
    let events = collection.client.request_events::<T>(request).await?;
    Ok(events.boxed())
}

/// The watch resumes after `object`.
fn advance<T: Watched>(version: &mut String, object: &T) {
    if let Some(newer) = object.resource_version().filter(|v| !v.is_empty()) {
        newer.clone_into(version);
    }
}

fn is_not_found(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 404)
}

fn is_gone(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 410)
}
