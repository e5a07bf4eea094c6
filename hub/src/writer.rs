//! The only place that writes to KCP.
//!
//! The store marks objects dirty in a key-coalesced [`WriteQueue`]; a
//! dispatcher takes keys from it at the rate the token bucket allows and runs
//! up to `concurrency` writes at once. Each write merges the object's
//! entries from the store at that moment ([`Aggregator::evaluate`];
//! level-triggered: it always writes the latest state, never a history),
//! skips it when it equals what was last written successfully, and otherwise
//! sends a JSON merge patch of `/status` built from the last written status
//! to the desired one (fields that disappeared become `null`).
//!
//! No cluster can make the writer wipe a status: when no cluster reports
//! the object any more (the last one deleted it, or it was unplaced from
//! all of them), KCP keeps the last merged status and the writer adds the
//! condition `StatusReported=False` (reason `NoClusterReports`) to it; the
//! next report from a cluster replaces both. `status: null` is never
//! written. When the hub
//! has not written the object yet (first write, or after a restart) it reads
//! the status KCP holds first and diffs against that, so fields an earlier
//! hub wrote and no cluster reports any more are removed too. Fields whose
//! dispute is open keep whatever KCP holds: the patch never touches them.
//! With the `UpstreamSync` gate off nothing is written (conflicts are still
//! recorded).
//!
//! Outcomes: 404 forgets the object (it is gone upstream), 409 re-reads the
//! status and writes again, 429 waits for `Retry-After`, anything else waits
//! with exponential backoff. The key stays in the queue until it lands.

pub mod finalizer;
mod queue;
mod rate;
pub mod synctarget;
mod upstream;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use queue::WriteQueue;
pub use rate::TokenBucket;
pub use synctarget::{SyncTargetSettings, SyncTargets};
pub use upstream::{
    KubeUpstream, StatusUpstream, UpstreamConfigError, UpstreamError, is_path_segment,
};

use crate::aggregate::{Aggregator, FieldPath};
use crate::metrics::{Metrics, write_result};
use crate::store::{ObjectKey, Store};

/// First retry delay after a failure; doubles per failure.
const BACKOFF_BASE: Duration = Duration::from_millis(200);
/// Longest retry delay after failures.
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Retry delay after a 429 without `Retry-After`.
const THROTTLE_DEFAULT: Duration = Duration::from_secs(1);

/// How the writer writes.
#[derive(Debug, Clone)]
pub struct WriterSettings {
    pub qps: f64,
    pub burst: u32,
    pub concurrency: usize,
    pub dry_run: bool,
}

/// Writes objects' desired status upstream.
#[derive(Debug)]
pub struct Writer {
    queue: Arc<WriteQueue>,
    store: Arc<Store>,
    aggregator: Arc<Aggregator>,
    upstream: Arc<dyn StatusUpstream>,
    metrics: Arc<Metrics>,
    settings: WriterSettings,
    memory: Mutex<HashMap<ObjectKey, Memory>>,
}

/// What the writer remembers about one object.
#[derive(Debug, Default)]
struct Memory {
    /// The status last written successfully (or read back), `None` if unknown.
    written: Option<Value>,
    /// Failures in a row, for the backoff.
    failures: u32,
}

/// What happened to one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Done,
    RetryAfter(Duration),
}

impl Writer {
    pub fn new(
        queue: Arc<WriteQueue>,
        store: Arc<Store>,
        aggregator: Arc<Aggregator>,
        upstream: Arc<dyn StatusUpstream>,
        metrics: Arc<Metrics>,
        settings: WriterSettings,
    ) -> Self {
        Self {
            queue,
            store,
            aggregator,
            upstream,
            metrics,
            settings,
            memory: Mutex::default(),
        }
    }

    fn memory(&self) -> MutexGuard<'_, HashMap<ObjectKey, Memory>> {
        // Never held across an await or a call that can panic midway.
        self.memory.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes until `stop` is cancelled, then keeps writing what is pending
    /// for at most `flush_timeout` and abandons the rest.
    pub async fn run(self: Arc<Self>, stop: CancellationToken, flush_timeout: Duration) {
        let permits = Arc::new(Semaphore::new(self.settings.concurrency.max(1)));
        let mut bucket = TokenBucket::new(self.settings.qps, self.settings.burst);
        let mut writes = JoinSet::new();
        let mut flush_deadline: Option<Instant> = None;

        loop {
            let deadline = flush_deadline;
            let until_deadline = async move {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let next = async {
                let permit = permits.clone().acquire_owned().await;
                let key = self.queue.next().await;
                (permit, key)
            };
            tokio::select! {
                biased;
                () = stop.cancelled(), if flush_deadline.is_none() => {
                    flush_deadline = Some(Instant::now() + flush_timeout);
                    tracing::info!(pending = self.queue.len(), "flushing pending upstream writes");
                }
                () = until_deadline => {
                    let abandoned = self.queue.len() + writes.len();
                    writes.abort_all();
                    tracing::warn!(abandoned, ?flush_timeout, "upstream writes still pending at shutdown were abandoned");
                    break;
                }
                () = self.queue.idle(), if flush_deadline.is_some() => break,
                Some(joined) = writes.join_next(), if !writes.is_empty() => {
                    if let Err(error) = joined
                        && error.is_panic()
                    {
                        tracing::error!(%error, "an upstream write panicked");
                    }
                }
                (permit, key) = next => {
                    let Ok(permit) = permit else { break }; // never closed
                    bucket.acquire().await;
                    let writer = self.clone();
                    writes.spawn(async move {
                        let outcome = writer.write(&key).await;
                        let retry_after = match outcome {
                            Outcome::Done => None,
                            Outcome::RetryAfter(delay) => Some(delay),
                        };
                        writer.queue.done(key, retry_after);
                        drop(permit);
                    });
                }
            }
        }
        writes.abort_all();
        while writes.join_next().await.is_some() {}
    }

    /// Brings one object's upstream status to its desired state, once.
    async fn write(&self, key: &ObjectKey) -> Outcome {
        let merged = self.aggregator.evaluate(key, &self.store.entries(key));
        if !self.aggregator.gates().upstream_sync {
            return Outcome::Done;
        }
        let mut known = self.memory().get(key).and_then(|m| m.written.clone());
        if known.is_none() {
            // The first write since the hub started: KCP may hold a status an
            // earlier hub wrote, so diff against it, or fields no cluster
            // reports any more would linger there (and an object no cluster
            // reports keeps it, marked as such).
            match self.upstream.get_status(key).await {
                Ok(current) => {
                    if let Some(current) = &current {
                        self.memory().entry(key.clone()).or_default().written =
                            Some(current.clone());
                    }
                    known = current;
                }
                Err(UpstreamError::NotFound) => {
                    self.count(write_result::NOT_FOUND);
                    self.memory().remove(key);
                    tracing::info!(object = %key, "object not found upstream; forgetting it");
                    return Outcome::Done;
                }
                // Writing blind would leave behind whatever KCP holds that no
                // cluster reports: retry the read.
                Err(error) => {
                    self.count(write_result::ERROR);
                    let delay = self.failed(key);
                    tracing::warn!(object = %key, %error, retry_in = ?delay, "reading the status before the first write failed");
                    return Outcome::RetryAfter(delay);
                }
            }
        }
        let reported = merged.status.is_some();
        let desired = match merged.status {
            Some(status) => Some(keep_disputed(status, known.as_ref(), &merged.disputed)),
            None => known.as_ref().map(not_reported),
        };
        if known == desired {
            if desired.is_some() && !reported {
                // Marked already; nothing reports the object, so the memory
                // of it goes (bounded by the store's objects).
                self.memory().remove(key);
            }
            return Outcome::Done;
        }
        let patch = status_patch(known.as_ref(), desired.as_ref());

        let started = Instant::now();
        let result = self
            .upstream
            .patch_status(key, &patch, self.settings.dry_run)
            .await;
        self.metrics
            .kcp_write_duration
            .observe(started.elapsed().as_secs_f64());

        match result {
            Ok(()) => {
                let label = if self.settings.dry_run {
                    write_result::DRY_RUN
                } else {
                    write_result::SUCCESS
                };
                self.metrics.kcp_writes.with_label_values(&[label]).inc();
                tracing::debug!(object = %key, reported, "status written");
                let mut memory = self.memory();
                match desired {
                    // Nothing reports the object any more: forget it, so the
                    // writer's memory stays bounded by the store's objects.
                    Some(_) if !reported => {
                        memory.remove(key);
                    }
                    Some(status) => {
                        let entry = memory.entry(key.clone()).or_default();
                        entry.written = Some(status);
                        entry.failures = 0;
                    }
                    None => {
                        memory.remove(key);
                    }
                }
                Outcome::Done
            }
            Err(UpstreamError::NotFound) => {
                self.count(write_result::NOT_FOUND);
                self.memory().remove(key);
                tracing::info!(object = %key, "object not found upstream; forgetting it");
                Outcome::Done
            }
            Err(UpstreamError::Conflict(message)) => {
                self.count(write_result::CONFLICT);
                let delay = self.failed(key);
                tracing::debug!(object = %key, %message, "conflict; re-reading the status");
                match self.upstream.get_status(key).await {
                    Ok(current) => {
                        self.memory().entry(key.clone()).or_default().written = current;
                        Outcome::RetryAfter(Duration::ZERO)
                    }
                    Err(UpstreamError::NotFound) => {
                        self.memory().remove(key);
                        Outcome::Done
                    }
                    Err(error) => {
                        tracing::warn!(object = %key, %error, "re-reading the status after a conflict");
                        Outcome::RetryAfter(delay)
                    }
                }
            }
            Err(UpstreamError::Throttled { retry_after }) => {
                self.count(write_result::THROTTLED);
                let delay = retry_after.unwrap_or(THROTTLE_DEFAULT);
                tracing::debug!(object = %key, ?delay, "throttled upstream");
                Outcome::RetryAfter(delay)
            }
            Err(error) => {
                self.count(write_result::ERROR);
                let delay = self.failed(key);
                tracing::warn!(object = %key, %error, retry_in = ?delay, "writing status upstream failed");
                Outcome::RetryAfter(delay)
            }
        }
    }

    fn count(&self, result: &str) {
        self.metrics.kcp_writes.with_label_values(&[result]).inc();
    }

    /// Records one more failure for `key`; returns how long to wait.
    fn failed(&self, key: &ObjectKey) -> Duration {
        let mut memory = self.memory();
        let entry = memory.entry(key.clone()).or_default();
        entry.failures = entry.failures.saturating_add(1);
        crate::retry::delay(entry.failures, BACKOFF_BASE, BACKOFF_MAX)
    }
}

/// `desired` with each `disputed` field as KCP holds it (`known`), so the
/// patch leaves those fields alone.
fn keep_disputed(mut desired: Value, known: Option<&Value>, disputed: &[FieldPath]) -> Value {
    for path in disputed {
        match known.and_then(|k| path.lookup(k)) {
            Some(value) => path.insert(&mut desired, value.clone()),
            None => {
                path.remove(&mut desired);
            }
        }
    }
    desired
}

/// The condition type the hub sets to `False` on an object no cluster
/// reports any more (its status is the last one merged).
pub const NOT_REPORTED_CONDITION: &str = "StatusReported";
/// The reason of that condition.
pub const NOT_REPORTED_REASON: &str = "NoClusterReports";

/// `last` (the status KCP holds) marked as reported by no cluster: the same
/// fields, with the `StatusReported=False` condition added (or kept).
pub fn not_reported(last: &Value) -> Value {
    let mut status = last.clone();
    let Some(object) = status.as_object_mut() else {
        return status;
    };
    let conditions = object
        .entry("conditions")
        .or_insert_with(|| Value::Array(Vec::new()));
    // A status whose conditions are not a list is left as it is.
    let Value::Array(conditions) = conditions else {
        return status;
    };
    let marked = conditions.iter().any(|c| {
        c.get("type").and_then(Value::as_str) == Some(NOT_REPORTED_CONDITION)
            && c.get("status").and_then(Value::as_str) == Some("False")
    });
    if !marked {
        conditions
            .retain(|c| c.get("type").and_then(Value::as_str) != Some(NOT_REPORTED_CONDITION));
        conditions.push(serde_json::json!({
            "type": NOT_REPORTED_CONDITION,
            "status": "False",
            "reason": NOT_REPORTED_REASON,
            "message": "no cluster this object is placed on reports it any more; the status is the last one merged from their reports",
            "lastTransitionTime": crate::capacity::rfc3339(std::time::SystemTime::now()),
        }));
    }
    status
}

/// The merge patch that takes an object's status from `written` (`None`:
/// unknown) to `desired` (`None`: no status).
pub fn status_patch(written: Option<&Value>, desired: Option<&Value>) -> Value {
    let status = match (written, desired) {
        (_, None) => Value::Null,
        (Some(old), Some(new)) => merge_diff(old, new),
        (None, Some(new)) => new.clone(),
    };
    let mut patch = Map::new();
    patch.insert("status".to_owned(), status);
    Value::Object(patch)
}

/// The JSON merge patch (RFC 7386) that turns `old` into `new`.
fn merge_diff(old: &Value, new: &Value) -> Value {
    match (old, new) {
        (Value::Object(old), Value::Object(new)) => {
            let mut patch = Map::new();
            for key in old.keys() {
                if !new.contains_key(key) {
                    patch.insert(key.clone(), Value::Null);
                }
            }
            for (key, value) in new {
                match old.get(key) {
                    Some(previous) if previous == value => {}
                    Some(previous @ Value::Object(_)) if value.is_object() => {
                        patch.insert(key.clone(), merge_diff(previous, value));
                    }
                    _ => {
                        patch.insert(key.clone(), value.clone());
                    }
                }
            }
            Value::Object(patch)
        }
        _ => new.clone(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::future::BoxFuture;
    use serde_json::json;

    use super::*;
    use crate::store::{Entry, Update};

    /// Records patches; answers with queued results, then success.
    #[derive(Debug, Default)]
    struct FakeUpstream {
        patches: Mutex<Vec<(ObjectKey, Value)>>,
        answers: Mutex<VecDeque<Result<(), UpstreamError>>>,
        current: Mutex<Option<Value>>,
        gets: AtomicUsize,
        /// Reads that fail before they succeed.
        failing_gets: AtomicUsize,
    }

    impl FakeUpstream {
        fn patches(&self) -> Vec<Value> {
            self.patches
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .map(|(_, p)| p.clone())
                .collect()
        }
        fn answer(&self, result: Result<(), UpstreamError>) {
            self.answers
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push_back(result);
        }
    }

    impl StatusUpstream for FakeUpstream {
        fn patch_status<'a>(
            &'a self,
            key: &'a ObjectKey,
            patch: &'a Value,
            _dry_run: bool,
        ) -> BoxFuture<'a, Result<(), UpstreamError>> {
            Box::pin(async move {
                self.patches
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push((key.clone(), patch.clone()));
                self.answers
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .pop_front()
                    .unwrap_or(Ok(()))
            })
        }

        fn get_status<'a>(
            &'a self,
            _key: &'a ObjectKey,
        ) -> BoxFuture<'a, Result<Option<Value>, UpstreamError>> {
            Box::pin(async move {
                self.gets.fetch_add(1, Ordering::SeqCst);
                let failing =
                    self.failing_gets
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
                if failing.is_ok() {
                    return Err(UpstreamError::Transport("connection refused".into()));
                }
                Ok(self
                    .current
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone())
            })
        }
    }

    struct Fixture {
        store: Arc<Store>,
        queue: Arc<WriteQueue>,
        upstream: Arc<FakeUpstream>,
        writer: Arc<Writer>,
        metrics: Arc<Metrics>,
    }

    fn fixture() -> Fixture {
        let metrics = Arc::new(Metrics::new().unwrap_or_else(|e| panic!("metrics: {e}")));
        let queue = Arc::new(WriteQueue::new(metrics.clone()));
        let store = Arc::new(Store::new(queue.clone(), metrics.clone(), 1000));
        let upstream = Arc::new(FakeUpstream::default());
        let aggregator = Arc::new(Aggregator::new(
            crate::aggregate::MergePolicy::default(),
            crate::aggregate::FeatureGates::default(),
            Arc::new(crate::health::Health::new(metrics.clone())),
            Duration::from_secs(10),
            Duration::from_secs(300),
            metrics.clone(),
        ));
        let writer = Arc::new(Writer::new(
            queue.clone(),
            store.clone(),
            aggregator,
            upstream.clone(),
            metrics.clone(),
            WriterSettings {
                qps: 0.0,
                burst: 1,
                concurrency: 4,
                dry_run: false,
            },
        ));
        Fixture {
            store,
            queue,
            upstream,
            writer,
            metrics,
        }
    }

    fn key() -> ObjectKey {
        ObjectKey {
            workspace: "root:a".into(),
            group: "apps".into(),
            version: "v1".into(),
            resource: "deployments".into(),
            kind: "Deployment".into(),
            namespace: Some("default".into()),
            name: "web".into(),
        }
    }

    fn upsert(seq: u64, status: Value) -> Update {
        Update {
            key: key(),
            seq,
            entry: Some(Entry {
                status: Arc::new(status),
                generation: None,
                observed_generation: None,
                observed_at_ms: 0,
                seq,
                uid: String::new(),
            }),
        }
    }

    /// Runs the writer until the queue is idle (a flush with no deadline worth the name).
    async fn settle(f: &Fixture) {
        let stop = CancellationToken::new();
        stop.cancel();
        f.writer.clone().run(stop, Duration::from_secs(3600)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn coalesces_changes_into_one_write_of_the_latest() {
        let f = fixture();
        for seq in 1..=5 {
            f.store
                .apply(
                    "c1",
                    "s",
                    vec![upsert(seq, json!({"replicas": seq}))],
                    vec![],
                )
                .ok();
        }
        settle(&f).await;
        assert_eq!(
            f.upstream.patches(),
            vec![json!({"status": {"replicas": 5}})]
        );
        assert_eq!(
            f.metrics
                .kcp_writes
                .with_label_values(&[write_result::SUCCESS])
                .get(),
            1
        );
    }

    #[tokio::test(start_paused = true)]
    async fn never_writes_the_same_status_twice() {
        let f = fixture();
        f.store
            .apply("c1", "s", vec![upsert(1, json!({"ready": 1}))], vec![])
            .ok();
        settle(&f).await;
        // A new session reporting the same status: the store marks the
        // object dirty, the writer finds nothing to do.
        f.store
            .apply("c1", "s2", vec![upsert(1, json!({"ready": 1}))], vec![])
            .ok();
        f.queue.push(key());
        settle(&f).await;
        assert_eq!(f.upstream.patches().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn removed_fields_become_null_and_a_vanished_object_keeps_its_last_status() {
        let f = fixture();
        f.store
            .apply(
                "c1",
                "s",
                vec![upsert(1, json!({"a": 1, "b": {"x": 1, "y": 2}}))],
                vec![],
            )
            .ok();
        settle(&f).await;
        f.store
            .apply(
                "c1",
                "s",
                vec![upsert(2, json!({"a": 1, "b": {"x": 1}}))],
                vec![],
            )
            .ok();
        settle(&f).await;
        f.store
            .apply(
                "c1",
                "s",
                vec![Update {
                    key: key(),
                    seq: 3,
                    entry: None,
                }],
                vec![],
            )
            .ok();
        settle(&f).await;
        let patches = f.upstream.patches();
        assert_eq!(
            patches[..2],
            [
                json!({"status": {"a": 1, "b": {"x": 1, "y": 2}}}),
                json!({"status": {"b": {"y": null}}}),
            ]
        );
        // The last cluster deleted it: never `status: null`; the fields
        // stay, marked as reported by no cluster.
        assert_eq!(patches.len(), 3, "{patches:?}");
        let last = &patches[2]["status"];
        assert_eq!(
            last.as_object().map(|o| o.len()),
            Some(1),
            "only conditions change: {last}"
        );
        assert_eq!(last["conditions"][0]["type"], NOT_REPORTED_CONDITION);
        assert_eq!(last["conditions"][0]["status"], "False");
        assert_eq!(last["conditions"][0]["reason"], NOT_REPORTED_REASON);
        // Nothing more to write, however often it is looked at again.
        f.queue.push(key());
        settle(&f).await;
        assert_eq!(f.upstream.patches().len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn not_found_forgets_and_throttled_waits() {
        let f = fixture();
        f.upstream.answer(Err(UpstreamError::Throttled {
            retry_after: Some(Duration::from_secs(7)),
        }));
        f.upstream.answer(Err(UpstreamError::NotFound));
        f.store
            .apply("c1", "s", vec![upsert(1, json!({"a": 1}))], vec![])
            .ok();
        let start = Instant::now();
        settle(&f).await;
        assert!(
            start.elapsed() >= Duration::from_secs(7),
            "Retry-After honored"
        );
        assert_eq!(f.upstream.patches().len(), 2);
        assert!(f.writer.memory().is_empty(), "a 404 forgets the object");
        let by = |r: &str| f.metrics.kcp_writes.with_label_values(&[r]).get();
        assert_eq!(
            (by(write_result::THROTTLED), by(write_result::NOT_FOUND)),
            (1, 1)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn conflict_rereads_and_diffs_against_upstream() {
        let f = fixture();
        f.upstream
            .answer(Err(UpstreamError::Conflict("changed".into())));
        *f.upstream
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(json!({"stale": true, "a": 1}));
        f.store
            .apply("c1", "s", vec![upsert(1, json!({"a": 1}))], vec![])
            .ok();
        settle(&f).await;
        // Read before the first write, and again after the conflict.
        assert_eq!(f.upstream.gets.load(Ordering::SeqCst), 2);
        assert_eq!(
            f.upstream.patches(),
            vec![
                json!({"status": {"stale": null}}),
                json!({"status": {"stale": null}})
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn server_errors_back_off_until_the_write_lands() {
        let f = fixture();
        for _ in 0..3 {
            f.upstream.answer(Err(UpstreamError::Server {
                status: 503,
                message: "unavailable".into(),
            }));
        }
        f.store
            .apply("c1", "s", vec![upsert(1, json!({"a": 1}))], vec![])
            .ok();
        let start = Instant::now();
        settle(&f).await;
        assert_eq!(f.upstream.patches().len(), 4);
        // 200 ms + 400 ms + 800 ms at least.
        assert!(start.elapsed() >= Duration::from_millis(1400));
        assert!(f.queue.is_idle());
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_write_diffs_against_what_an_earlier_hub_left() {
        let f = fixture();
        *f.upstream
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(json!({"a": 1, "gone": true}));
        f.store
            .apply("c1", "s", vec![upsert(1, json!({"a": 2}))], vec![])
            .ok();
        settle(&f).await;
        assert_eq!(
            f.upstream.patches(),
            vec![json!({"status": {"a": 2, "gone": null}})]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_write_waits_until_it_can_read_what_kcp_holds() {
        let f = fixture();
        *f.upstream
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(json!({"a": 1, "b": 2}));
        f.upstream.failing_gets.store(2, Ordering::SeqCst);
        f.store
            .apply("c1", "s", vec![upsert(1, json!({"a": 1}))], vec![])
            .ok();
        settle(&f).await;
        // No blind write of `{"a": 1}` (which would leave `b` behind).
        assert_eq!(f.upstream.gets.load(Ordering::SeqCst), 3);
        assert_eq!(f.upstream.patches(), vec![json!({"status": {"b": null}})]);
        assert!(f.queue.is_idle());
    }

    #[test]
    fn patch_with_unknown_upstream_sends_the_whole_status() {
        assert_eq!(
            status_patch(None, Some(&json!({"a": {"b": 1}}))),
            json!({"status": {"a": {"b": 1}}})
        );
        assert_eq!(
            status_patch(Some(&json!({"a": 1})), None),
            json!({"status": null})
        );
        assert_eq!(
            status_patch(Some(&json!({"a": [1, 2]})), Some(&json!({"a": [1]}))),
            json!({"status": {"a": [1]}})
        );
    }
}
