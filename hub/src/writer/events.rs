//! Agents' event series into KCP (protocol version 3): the session lane
//! takes a report only about an object placed on its cluster, with that
//! object's upstream uid ([`EventSeries`]), and queues it ([`EventQueue`]);
//! [`EventWriter`] writes each as an `events.k8s.io/v1` Event in the
//! object's workspace and namespace ([`manifest`]).
//!
//! Events are best effort and never in the way of status: their own queue
//! (bounded, dropping the oldest), their own token bucket, a small number
//! of writes at once, a bounded number of retries, and nothing kept for a
//! restart. kube-apiserver lets only an Event's `series` change, so the
//! first write of a series creates its Event and later ones patch its
//! `series`; the writer remembers (bounded) the count it last wrote to
//! skip what would change nothing. A create that finds the Event (another
//! hub, a restart) patches instead; a patch that does not (Events expire)
//! creates it again. With the `UpstreamSync` gate off nothing is written;
//! in dry-run every write is sent with `dryRun=All` and nothing is
//! remembered.

pub mod manifest;
mod queue;

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::future::BoxFuture;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uplink_ops::rate::TokenBucket;
use uplink_protocol::EventReport;

pub use self::manifest::{event_manifest, event_name, event_namespace, micro_time, series_patch};
pub use self::queue::EventQueue;
use super::{KubeUpstream, UpstreamError, is_path_segment};
use crate::cache::LruCache;
use crate::metrics::{Metrics, event_dropped, event_write};
use crate::store::{ClusterName, ObjectKey};

/// Attempts of one write (a create and the patch its 409 calls for count
/// as two) before it is dropped: the last failure is not retried.
const MAX_ATTEMPTS: u32 = 5;
/// First retry delay after a failure; doubles per failure.
const RETRY_BASE: Duration = Duration::from_millis(200);
/// Longest retry delay, `Retry-After` included: a write waiting holds one
/// of the few write slots.
const RETRY_MAX: Duration = Duration::from_secs(10);
/// Retry delay after a 429 without `Retry-After`.
const THROTTLE_DEFAULT: Duration = Duration::from_secs(1);
/// Event names whose last written count the writer remembers.
const REMEMBERED: usize = 65_536;

/// Whether the `n`-th occurrence of something is worth a log line: the
/// first ten, then each power of two (a cluster that keeps doing it would
/// flood the log otherwise).
pub(crate) fn sparingly(n: u64) -> bool {
    n <= 10 || n.is_power_of_two()
}

/// One cluster's event series about an object placed on it, as the
/// session lane took it: the report (its `related` kept only when placed
/// on the cluster too) and the objects' upstream uids from placement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSeries {
    pub cluster: ClusterName,
    pub report: EventReport,
    /// `report.regarding`'s uid in KCP.
    pub regarding_uid: String,
    /// `report.related`'s uid in KCP; `Some` exactly when it is.
    pub related_uid: Option<String>,
    name: String,
}

impl EventSeries {
    pub fn new(
        cluster: &str,
        report: EventReport,
        regarding_uid: String,
        related_uid: Option<String>,
    ) -> Self {
        let name = event_name(cluster, &report);
        Self {
            cluster: cluster.to_owned(),
            report,
            regarding_uid,
            related_uid,
            name,
        }
    }

    /// The Event's name ([`event_name`]).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The Event's namespace ([`event_namespace`]).
    pub fn namespace(&self) -> &str {
        event_namespace(&self.report)
    }

    /// The workspace the Event goes to: its regarding object's.
    pub fn workspace(&self) -> &str {
        &self.report.regarding.workspace
    }

    /// The regarding object, for logs.
    pub fn object(&self) -> ObjectKey {
        ObjectKey::from(&self.report.regarding)
    }
}

/// Writes Events upstream.
pub trait EventUpstream: Send + Sync + std::fmt::Debug + 'static {
    /// Creates `event` (a whole `events.k8s.io/v1` Event) in `namespace`
    /// of `workspace`; an Event of that name already there is
    /// [`UpstreamError::Conflict`].
    fn create_event<'a>(
        &'a self,
        workspace: &'a str,
        namespace: &'a str,
        event: &'a Value,
        dry_run: bool,
    ) -> BoxFuture<'a, Result<(), UpstreamError>>;

    /// Applies the JSON merge patch `patch` to Event `name`; an Event that
    /// is not there is [`UpstreamError::NotFound`].
    fn patch_event<'a>(
        &'a self,
        workspace: &'a str,
        namespace: &'a str,
        name: &'a str,
        patch: &'a Value,
        dry_run: bool,
    ) -> BoxFuture<'a, Result<(), UpstreamError>>;
}

/// The path of `namespace`'s Events; `name` of the Event for errors.
fn events_path(namespace: &str, name: &str) -> Result<String, UpstreamError> {
    if !is_path_segment(namespace) {
        return Err(UpstreamError::BadObject {
            key: format!("events/{namespace}/{name}"),
            reason: "the namespace is not a valid path segment".into(),
        });
    }
    Ok(format!(
        "/apis/events.k8s.io/v1/namespaces/{namespace}/events"
    ))
}

/// The `POST` that creates `event` in `namespace`.
fn create_request(
    namespace: &str,
    event: &Value,
    dry_run: bool,
) -> Result<http::Request<Vec<u8>>, UpstreamError> {
    let name = event
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let bad = |reason: String| UpstreamError::BadObject {
        key: format!("events/{namespace}/{name}"),
        reason,
    };
    let body = serde_json::to_vec(event).map_err(|e| bad(e.to_string()))?;
    let params = PostParams {
        dry_run,
        ..PostParams::default()
    };
    kube::core::Request::new(events_path(namespace, name)?)
        .create(&params, body)
        .map_err(|e| bad(e.to_string()))
}

/// The `PATCH` (JSON merge patch) of Event `name` in `namespace`.
fn patch_request(
    namespace: &str,
    name: &str,
    patch: &Value,
    dry_run: bool,
) -> Result<http::Request<Vec<u8>>, UpstreamError> {
    let bad = |reason: String| UpstreamError::BadObject {
        key: format!("events/{namespace}/{name}"),
        reason,
    };
    if !is_path_segment(name) {
        return Err(bad("the name is not a valid path segment".into()));
    }
    let params = PatchParams {
        dry_run,
        ..PatchParams::default()
    };
    kube::core::Request::new(events_path(namespace, name)?)
        .patch(name, &params, &Patch::Merge(patch))
        .map_err(|e| bad(e.to_string()))
}

impl EventUpstream for KubeUpstream {
    fn create_event<'a>(
        &'a self,
        workspace: &'a str,
        namespace: &'a str,
        event: &'a Value,
        dry_run: bool,
    ) -> BoxFuture<'a, Result<(), UpstreamError>> {
        Box::pin(async move {
            let request = create_request(namespace, event, dry_run)?;
            let what = format!("{workspace}:events/{namespace}");
            self.send_in_workspace(workspace, &what, request)
                .await
                .map(drop)
        })
    }

    fn patch_event<'a>(
        &'a self,
        workspace: &'a str,
        namespace: &'a str,
        name: &'a str,
        patch: &'a Value,
        dry_run: bool,
    ) -> BoxFuture<'a, Result<(), UpstreamError>> {
        Box::pin(async move {
            let request = patch_request(namespace, name, patch, dry_run)?;
            let what = format!("{workspace}:events/{namespace}/{name}");
            self.send_in_workspace(workspace, &what, request)
                .await
                .map(drop)
        })
    }
}

/// How the event writer writes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EventWriterSettings {
    /// Sustained writes per second (0: unlimited).
    pub qps: f64,
    pub burst: u32,
    /// Writes in flight at once.
    pub concurrency: usize,
    /// Send every write with `dryRun=All`.
    pub dry_run: bool,
    /// The `UpstreamSync` gate: off, nothing is written.
    pub upstream_sync: bool,
}

/// Writes queued event series into KCP; see the module documentation.
#[derive(Debug)]
pub struct EventWriter {
    queue: Arc<EventQueue>,
    upstream: Arc<dyn EventUpstream>,
    metrics: Arc<Metrics>,
    settings: EventWriterSettings,
    bucket: Mutex<TokenBucket>,
    /// The count last written of each Event (by name), most recent ones.
    written: Mutex<LruCache<String, u64>>,
}

/// How one attempt at a write ended, when it did not land.
enum Next {
    /// Write again at once, the other way (create or patch).
    Switch,
    /// Write again after this long (`None`: the backoff's delay).
    Retry(Option<Duration>),
    /// Give up: refused (or not worth retrying).
    Drop,
}

impl EventWriter {
    pub fn new(
        queue: Arc<EventQueue>,
        upstream: Arc<dyn EventUpstream>,
        metrics: Arc<Metrics>,
        settings: EventWriterSettings,
    ) -> Self {
        Self {
            queue,
            upstream,
            metrics,
            bucket: Mutex::new(TokenBucket::new(settings.qps, settings.burst)),
            settings,
            written: Mutex::new(LruCache::new(REMEMBERED)),
        }
    }

    fn written(&self) -> MutexGuard<'_, LruCache<String, u64>> {
        // Never held across an await or a call that can panic midway.
        self.written.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes what the queue holds until `stop`; then what is waiting or
    /// in flight is abandoned (best effort: events are not flushed).
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let permits = Arc::new(Semaphore::new(self.settings.concurrency.max(1)));
        let mut writes = JoinSet::new();
        loop {
            let next = async {
                let permit = permits.clone().acquire_owned().await;
                (permit, self.queue.next().await)
            };
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                Some(joined) = writes.join_next(), if !writes.is_empty() => {
                    if let Err(error) = joined
                        && error.is_panic()
                    {
                        tracing::error!(%error, "an event write panicked");
                    }
                }
                (permit, series) = next => {
                    let Ok(permit) = permit else { break }; // never closed
                    let writer = self.clone();
                    writes.spawn(async move {
                        writer.write(series).await;
                        drop(permit);
                    });
                }
            }
        }
        let abandoned = self.queue.len() + writes.len();
        writes.abort_all();
        while writes.join_next().await.is_some() {}
        if abandoned > 0 {
            tracing::info!(
                abandoned,
                "event writes still pending at shutdown were abandoned"
            );
        }
    }

    /// Waits for a token of the writer's bucket.
    async fn token(&self) {
        loop {
            let at = {
                let mut bucket = self.bucket.lock().unwrap_or_else(PoisonError::into_inner);
                let now = Instant::now();
                if bucket.try_take(now) {
                    return;
                }
                bucket.next_token_at(now)
            };
            tokio::time::sleep_until(at).await;
        }
    }

    /// Writes one series: creates its Event, or patches its `series`.
    pub async fn write(&self, series: EventSeries) {
        if !self.settings.upstream_sync {
            self.count(event_write::DISABLED);
            return;
        }
        let count = series.report.count;
        let known = if self.settings.dry_run {
            None
        } else {
            self.written().get(series.name())
        };
        if known.is_some_and(|written| count <= written) {
            self.count(event_write::UNCHANGED);
            return;
        }
        let event = event_manifest(&series);
        let patch = series_patch(&series);
        let mut create = known.is_none();
        let mut failures = 0;
        let mut last_error = None;
        for attempt in 1..=MAX_ATTEMPTS {
            let result = match (create, &patch) {
                (true, _) => {
                    self.token().await;
                    self.upstream
                        .create_event(
                            series.workspace(),
                            series.namespace(),
                            &event,
                            self.settings.dry_run,
                        )
                        .await
                }
                (false, Some(patch)) => {
                    self.token().await;
                    self.upstream
                        .patch_event(
                            series.workspace(),
                            series.namespace(),
                            series.name(),
                            patch,
                            self.settings.dry_run,
                        )
                        .await
                }
                // The Event is there and a series seen once has nothing
                // to patch.
                (false, None) => {
                    self.landed(&series, event_write::UNCHANGED);
                    return;
                }
            };
            let error = match result {
                Ok(()) => {
                    let result = match (self.settings.dry_run, create) {
                        (true, _) => event_write::DRY_RUN,
                        (false, true) => event_write::CREATED,
                        (false, false) => event_write::UPDATED,
                    };
                    self.landed(&series, result);
                    return;
                }
                Err(error) => error,
            };
            match next_step(create, &error) {
                Next::Switch => create = !create,
                Next::Retry(_) if attempt == MAX_ATTEMPTS => {}
                Next::Retry(delay) => {
                    failures += 1;
                    let delay = delay.unwrap_or_else(|| {
                        uplink_ops::backoff::Policy::retries(RETRY_BASE, RETRY_MAX)
                            .delay_after(failures)
                    });
                    let delay = delay.min(RETRY_MAX);
                    self.count(event_write::RETRIED);
                    tracing::debug!(cluster = %series.cluster, object = %series.object(), event = %series.name(), %error, retry_in = ?delay, "event write failed; retrying");
                    tokio::time::sleep(delay).await;
                }
                Next::Drop => {
                    self.dropped(&series, event_write::REFUSED, &error);
                    return;
                }
            }
            last_error = Some(error);
        }
        let error = last_error.unwrap_or_else(|| UpstreamError::Transport("no attempt".into()));
        self.dropped(&series, event_write::FAILED, &error);
    }

    /// Records a write that landed (or found nothing to do).
    fn landed(&self, series: &EventSeries, result: &str) {
        self.count(result);
        if !self.settings.dry_run {
            let mut written = self.written();
            let count = written
                .get(series.name())
                .unwrap_or(0)
                .max(series.report.count);
            written.insert(series.name().to_owned(), count);
        }
        tracing::debug!(cluster = %series.cluster, object = %series.object(), event = %series.name(), count = series.report.count, result, "event written");
    }

    /// Records a write given up on.
    fn dropped(&self, series: &EventSeries, result: &str, error: &UpstreamError) {
        self.count(result);
        let counter = self
            .metrics
            .events_dropped
            .with_label_values(&[event_dropped::WRITE_FAILED]);
        counter.inc();
        if sparingly(counter.get()) {
            tracing::warn!(cluster = %series.cluster, object = %series.object(), event = %series.name(), result, %error, dropped = counter.get(), "event not written to KCP; dropped");
        }
    }

    fn count(&self, result: &str) {
        self.metrics.event_writes.with_label_values(&[result]).inc();
    }
}

/// What to do after an attempt (a create when `create`) failed with
/// `error`.
fn next_step(create: bool, error: &UpstreamError) -> Next {
    match error {
        // AlreadyExists: the Event is there, its series is what may change.
        UpstreamError::Conflict(_) if create => Next::Switch,
        // Expired (or deleted) since it was written: create it again.
        UpstreamError::NotFound if !create => Next::Switch,
        UpstreamError::Throttled { retry_after } => {
            Next::Retry(Some(retry_after.unwrap_or(THROTTLE_DEFAULT)))
        }
        UpstreamError::Server { .. }
        | UpstreamError::Transport(_)
        | UpstreamError::Timeout(_)
        | UpstreamError::Conflict(_) => Next::Retry(None),
        // A create's 404: the namespace or workspace is not there.
        UpstreamError::NotFound
        | UpstreamError::FieldConflict(_)
        | UpstreamError::Refused { .. }
        | UpstreamError::BadObject { .. }
        // The shard's holder writes its events (best effort).
        | UpstreamError::NotHeld { .. } => Next::Drop,
    }
}

#[cfg(test)]
mod tests;
