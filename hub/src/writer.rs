//! The only place that writes to KCP.
//!
//! The store marks objects dirty in a key-coalesced [`WriteQueue`]; a
//! dispatcher takes keys from it at the rate the token bucket allows and runs
//! up to `concurrency` writes at once. Each write merges the object's
//! entries from the store at that moment ([`Aggregator::evaluate`];
//! level-triggered: it always writes the latest state, never a history),
//! skips it when it equals what was last written successfully, and otherwise
//! writes it in one of two ways ([`StatusWrite`]):
//!
//! - **apply** (the default): a server-side apply of `/status` with field
//!   manager [`FIELD_MANAGER`], whose configuration is the whole desired
//!   status. The hub owns exactly the status fields it reports: a field (or
//!   condition) it no longer applies is removed by the API server unless
//!   another manager owns it too, and fields other managers own (say, a
//!   condition another controller sets on the same object) are left alone.
//!   "What was last written" is what the hub owns: after a restart it is
//!   read back from the object's `managedFields` ([`owned`]). Conditions
//!   merge per `type` where the type's schema makes `conditions` an
//!   associative list (`x-kubernetes-list-type: map` keyed by `type`, as
//!   built-in types and generated CRDs do); an atomic list has one owner.
//! - **merge-patch**: a JSON merge patch of `/status` built from the last
//!   written status to the desired one (fields that disappeared become
//!   `null`; a changed list, `conditions` included, is replaced whole).
//!   "What was last written" after a restart is the whole status KCP holds.
//!
//! Applies are forced (`force=true`): the hub is the only source of the
//! status it reports, and a controller cannot resolve a conflict by itself,
//! so, as the Kubernetes documentation recommends for controllers ("always
//! force conflicts on objects that they own and manage"), a field another
//! manager set to another value is taken over rather than left stale. Only
//! fields the clusters report are contested this way; everything else other
//! managers own stays theirs. A status field KCP's schema of the type does
//! not declare (a newer cluster's field) gets a whole apply refused where a
//! merge patch would have it pruned; the writer learns such fields from the
//! refusal and leaves them out of that type's applies ([`undeclared`]).
//!
//! No cluster can make the writer wipe a status: when no cluster reports
//! the object any more (the last one deleted it, or it was unplaced from
//! all of them), KCP keeps the last merged status and the writer adds the
//! condition `StatusReported=False` (reason `NoClusterReports`) to it; the
//! next report from a cluster replaces both. `status: null` is never
//! written, and an apply always carries every field the hub still owns.
//! When the hub has not written the object yet (first write, or after a
//! restart) it reads the object first and diffs against what it holds, so
//! fields an earlier hub wrote and no cluster reports any more are removed
//! too. Fields whose dispute is open keep whatever KCP holds: the write
//! never changes them. With the `UpstreamSync` gate off nothing is written
//! (conflicts are still recorded).
//!
//! An object of an upsynced type ([`upsync`]) gets its status written only
//! when it is an upsynced object upstream (the upsync writer's UID map
//! knows it; until that map is rebuilt at start such a key waits): a
//! cluster's report never writes the status of KCP's own object of that
//! name. When the upsync writer creates such an object (anew) it has the
//! writer forget what it wrote of the key before and queues it again.
//!
//! Outcomes: 404 forgets the object (it is gone upstream), 409 re-reads the
//! status and writes again (with forced applies a 409 is the server's own
//! optimistic-concurrency conflict, never another manager's fields; should
//! a field-manager conflict come back anyway, it waits with backoff like
//! any refusal, since re-reading cannot resolve it), 429 waits for
//! `Retry-After`, anything else waits with exponential backoff. The key
//! stays in the queue until it lands.

pub mod events;
mod fair;
pub mod fenced;
pub mod finalizer;
mod owned;
mod pace;
mod queue;
mod request;
pub mod synctarget;
mod undeclared;
mod upstream;
pub mod upsync;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uplink_protocol::resource::ResourceSpec;

pub use pace::SettleTimes;
pub use queue::WriteQueue;
pub use request::{apply_configuration, status_patch};
pub use synctarget::{SyncTargetSettings, SyncTargets};
use uplink_ops::rate::TokenBucket;
pub use upstream::{
    ApplyOptions, KubeUpstream, StatusUpstream, UpstreamConfigError, UpstreamError, UpstreamStatus,
    is_path_segment,
};

use crate::aggregate::{Aggregator, FieldPath};
pub use crate::config::StatusWrite;
use crate::metrics::{Metrics, write_result};
use crate::replicas::{Ownership, ShardId};
use crate::status::Status;
use crate::store::{ObjectKey, Store};

/// First retry delay after a failure; doubles per failure.
const BACKOFF_BASE: Duration = Duration::from_millis(200);
/// Longest retry delay after failures.
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Retry delay after a 429 without `Retry-After`.
const THROTTLE_DEFAULT: Duration = Duration::from_secs(1);

/// The field manager of the hub's server-side applies of object status.
pub const FIELD_MANAGER: &str = "uplink-hub";

/// How the writer writes.
#[derive(Debug, Clone)]
pub struct WriterSettings {
    pub qps: f64,
    pub burst: u32,
    pub concurrency: usize,
    pub status_write: StatusWrite,
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
    /// Status fields KCP's schemas lack, left out of applies.
    undeclared: undeclared::UndeclaredFields,
    /// The upsynced types and what the upsync writer knows of their
    /// objects, when the hub upsyncs any.
    upsync: Option<UpsyncedStatus>,
    /// Which shards this hub writes (all, for a single hub).
    ownership: Ownership,
}

/// How often the writes of a shard that gathers its agents' snapshots
/// look again ([`crate::replicas::ownership`]).
const GATHER_POLL: Duration = Duration::from_millis(250);

/// What the writer needs to write the status of upsynced objects only.
#[derive(Debug)]
struct UpsyncedStatus {
    upsync: Arc<upsync::Upsync>,
    types: Vec<ResourceSpec>,
}

/// How long the status of an object of an upsynced type waits for the UID
/// map to be rebuilt (it cannot tell an upsynced object from KCP's own).
const UPSYNC_MAP_WAIT: Duration = Duration::from_secs(1);

/// What the writer remembers about one object.
#[derive(Debug, Default)]
struct Memory {
    /// The status last written successfully (or read back: under apply,
    /// the part the hub owns), `None` if unknown. Kept as JSON text, like
    /// the store's statuses ([`Status`]): a parsed value takes many times
    /// its text.
    written: Option<Status>,
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
            undeclared: undeclared::UndeclaredFields::default(),
            upsync: None,
            ownership: Ownership::single(1),
        }
    }

    /// Writes only the objects of shards `ownership` holds (and of a shard
    /// just taken over, only once it gathered its agents' snapshots). The
    /// upstream itself is fenced too ([`fenced`]): this gate spares the
    /// reads and keeps partial merges out.
    #[must_use]
    pub fn with_ownership(mut self, ownership: Ownership) -> Self {
        self.ownership = ownership;
        self
    }

    /// `shard` was lost: what was written of its objects is forgotten (the
    /// next holder writes them; should this replica take the shard back,
    /// it reads them from KCP again before writing).
    pub fn forget_shard(&self, shard: ShardId) {
        let ownership = &self.ownership;
        self.memory()
            .retain(|key, _| ownership.shard_of(&key.workspace) != shard);
    }

    /// `Some` outcome when `key`'s shard is not this replica's to write now:
    /// not held (dropped: the holder writes it), or gathering snapshots
    /// (waits).
    fn shard_gate(&self, key: &ObjectKey) -> Option<Outcome> {
        let shard = self.ownership.shard_of(&key.workspace);
        if !self.ownership.holds(shard) {
            self.not_held(key);
            return Some(Outcome::Done);
        }
        self.ownership
            .gathering_for(shard)
            .map(|left| Outcome::RetryAfter(left.min(GATHER_POLL)))
    }

    fn not_held(&self, key: &ObjectKey) {
        self.count(write_result::NOT_HELD);
        self.memory().remove(key);
        tracing::debug!(object = %key, outcome = "not held", "status not written: another replica holds the object's shard");
    }

    /// Writes the status of an object of `types` (the upsynced types) only
    /// when `upsync`'s UID map says it is an upsynced object: a cluster's
    /// report of such an object must not write the status of KCP's own
    /// object of that name, which the upsync writer refused to take over.
    #[must_use]
    pub fn with_upsync(mut self, upsync: Arc<upsync::Upsync>, types: Vec<ResourceSpec>) -> Self {
        self.upsync = Some(UpsyncedStatus { upsync, types });
        self
    }

    /// For a key of an upsynced type: `Some` outcome when its status is not
    /// to be written now (not an upsynced object, or the UID map not
    /// rebuilt yet). Forgets what was written of an older object of the
    /// name, if the upsync writer created it anew.
    fn upsync_gate(&self, key: &ObjectKey) -> Option<Outcome> {
        let upsynced = self.upsync.as_ref()?;
        if upsynced.upsync.take_created(key) {
            self.memory().remove(key);
        }
        let of_type = upsynced
            .types
            .iter()
            .any(|t| t.group == key.group && t.resource == key.resource);
        if !of_type {
            return None;
        }
        match upsynced.upsync.status_writable(key) {
            Some(true) => None,
            Some(false) => {
                // KCP's own object, or none yet: the upsync writer queues the
                // key again when it creates it.
                self.count(write_result::NOT_UPSYNCED);
                self.memory().remove(key);
                tracing::debug!(object = %key, "not an upsynced object upstream; its status is not written");
                Some(Outcome::Done)
            }
            None => Some(Outcome::RetryAfter(UPSYNC_MAP_WAIT)),
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
        if let Some(outcome) = self.shard_gate(key) {
            return outcome;
        }
        let merged = self.aggregator.evaluate(key, &self.store.entries(key));
        if !self.aggregator.gates().upstream_sync {
            return Outcome::Done;
        }
        if let Some(outcome) = self.upsync_gate(key) {
            return outcome;
        }
        let mut known = self
            .memory()
            .get(key)
            .and_then(|m| m.written.as_ref().map(Status::value));
        if known.is_none() {
            // The first write since the hub started: KCP may hold a status an
            // earlier hub wrote, so diff against it, or fields no cluster
            // reports any more would linger there (and an object no cluster
            // reports keeps it, marked as such).
            match self.upstream.get_status(key).await {
                Ok(current) => {
                    let current = self.held(current);
                    if let Some(current) = &current {
                        self.memory().entry(key.clone()).or_default().written =
                            Some(Status::of(current));
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
            Some(mut status) => {
                self.undeclared.strip(key, &mut status);
                Some(keep_disputed(status, known.as_ref(), &merged.disputed))
            }
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
        let started = Instant::now();
        let result = match (self.settings.status_write, &desired) {
            (StatusWrite::MergePatch, _) => {
                let patch = status_patch(known.as_ref(), desired.as_ref());
                self.upstream
                    .patch_status(key, &patch, self.settings.dry_run)
                    .await
            }
            (StatusWrite::Apply, Some(status)) => {
                let configuration = apply_configuration(key, status);
                self.upstream
                    .apply_status(key, &configuration, self.apply_options())
                    .await
            }
            // Unreachable: no status is desired only when none is known
            // either, and then `known == desired` returned above.
            (StatusWrite::Apply, None) => return Outcome::Done,
        };
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
                        entry.written = Some(Status::of(&status));
                        entry.failures = 0;
                    }
                    None => {
                        memory.remove(key);
                    }
                }
                Outcome::Done
            }
            Err(UpstreamError::NotHeld { .. }) => {
                self.not_held(key);
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
                        let current = self.held(current);
                        self.memory().entry(key.clone()).or_default().written =
                            current.as_ref().map(Status::of);
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
            Err(UpstreamError::FieldConflict(message)) => {
                self.count(write_result::CONFLICT);
                let delay = self.failed(key);
                tracing::warn!(object = %key, %message, retry_in = ?delay, "another field manager's fields refused the status apply");
                Outcome::RetryAfter(delay)
            }
            Err(UpstreamError::Throttled { retry_after }) => {
                self.count(write_result::THROTTLED);
                let delay = retry_after.unwrap_or(THROTTLE_DEFAULT);
                tracing::debug!(object = %key, ?delay, "throttled upstream");
                Outcome::RetryAfter(delay)
            }
            Err(error) => {
                self.count(write_result::ERROR);
                if let Some(fields) = self.undeclared_in(key, &error) {
                    tracing::info!(object = %key, fields = %fields, "KCP's schema of this type lacks status fields a cluster reports; they are left out of its applies");
                    return Outcome::RetryAfter(Duration::ZERO);
                }
                let delay = self.failed(key);
                tracing::warn!(object = %key, %error, retry_in = ?delay, "writing status upstream failed");
                Outcome::RetryAfter(delay)
            }
        }
    }

    /// The status fields an apply's refusal names as undeclared in KCP's
    /// schema and the writer did not know yet (`None`: nothing new to
    /// leave out; see [`undeclared`]).
    fn undeclared_in(&self, key: &ObjectKey, error: &UpstreamError) -> Option<String> {
        let (UpstreamError::Server { message, .. } | UpstreamError::Refused { message, .. }) =
            error
        else {
            return None;
        };
        if self.settings.status_write != StatusWrite::Apply {
            return None;
        }
        let learned = self.undeclared.learn(key, message);
        (!learned.is_empty()).then(|| {
            learned
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        })
    }

    /// What the writer diffs against, of a status read from KCP: all of it
    /// under merge patch, the part the hub owns under apply.
    fn held(&self, read: UpstreamStatus) -> Option<Value> {
        match self.settings.status_write {
            StatusWrite::MergePatch => read.status,
            StatusWrite::Apply => {
                owned::applied_status(read.status.as_ref(), &read.managed_fields, FIELD_MANAGER)
            }
        }
    }

    fn apply_options(&self) -> ApplyOptions<'static> {
        ApplyOptions {
            field_manager: FIELD_MANAGER,
            // See the module documentation.
            force: true,
            dry_run: self.settings.dry_run,
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
        uplink_ops::backoff::Policy::retries(BACKOFF_BASE, BACKOFF_MAX).delay_after(entry.failures)
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

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::future::BoxFuture;
    use serde_json::json;

    use super::*;
    use crate::store::{Entry, Update};

    /// Records patches and applies; answers with queued results, then
    /// success.
    #[derive(Debug, Default)]
    struct FakeUpstream {
        patches: Mutex<Vec<(ObjectKey, Value)>>,
        /// Each configuration applied, with its query parameters.
        applies: Mutex<Vec<(Value, String)>>,
        answers: Mutex<VecDeque<Result<(), UpstreamError>>>,
        current: Mutex<Option<Value>>,
        managed_fields: Mutex<Vec<Value>>,
        gets: AtomicUsize,
        /// Reads that fail before they succeed.
        failing_gets: AtomicUsize,
    }

    impl FakeUpstream {
        /// The configurations applied, in order.
        fn applies(&self) -> Vec<Value> {
            self.applies
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .map(|(c, _)| c.clone())
                .collect()
        }
        /// The status of each configuration applied, in order.
        fn applied_statuses(&self) -> Vec<Value> {
            self.applies()
                .into_iter()
                .map(|c| c["status"].clone())
                .collect()
        }
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

        fn apply_status<'a>(
            &'a self,
            _key: &'a ObjectKey,
            configuration: &'a Value,
            options: ApplyOptions<'a>,
        ) -> BoxFuture<'a, Result<(), UpstreamError>> {
            Box::pin(async move {
                let how = format!(
                    "fieldManager={} force={} dryRun={}",
                    options.field_manager, options.force, options.dry_run
                );
                self.applies
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push((configuration.clone(), how));
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
        ) -> BoxFuture<'a, Result<UpstreamStatus, UpstreamError>> {
            Box::pin(async move {
                self.gets.fetch_add(1, Ordering::SeqCst);
                let failing =
                    self.failing_gets
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
                if failing.is_ok() {
                    return Err(UpstreamError::Transport("connection refused".into()));
                }
                Ok(UpstreamStatus {
                    status: self
                        .current
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .clone(),
                    managed_fields: self
                        .managed_fields
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .clone(),
                })
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

    /// A merge-patching writer that takes Deployments for an upsynced type,
    /// and the upsync state it consults.
    fn upsync_fixture() -> (Fixture, Arc<upsync::Upsync>) {
        let f = fixture();
        let upsync = Arc::new(upsync::Upsync::new(16, f.metrics.clone()));
        let writer = Writer::new(
            f.queue.clone(),
            f.store.clone(),
            f.writer.aggregator.clone(),
            f.upstream.clone(),
            f.metrics.clone(),
            f.writer.settings.clone(),
        )
        .with_upsync(upsync.clone(), vec![ResourceSpec::deployments()]);
        (
            Fixture {
                writer: Arc::new(writer),
                ..f
            },
            upsync,
        )
    }

    /// `key()` as an upsynced object: what the upsync writer records of one
    /// it wrote, upstream uid `uid`.
    fn upsynced(upsync: &upsync::Upsync, uid: &str) {
        let annotation = format!("{}target", upsync::merge::DOWNSTREAM_UID_PREFIX);
        upsync.uids.set(
            &key(),
            &json!({"metadata": {"uid": uid, "annotations": {annotation: "down-1"}}}),
        );
    }

    fn writes(f: &Fixture, result: &str) -> u64 {
        f.metrics.kcp_writes.with_label_values(&[result]).get()
    }

    #[tokio::test(start_paused = true)]
    async fn the_status_of_an_upsynced_type_is_written_only_to_an_upsynced_object() {
        let (f, upsync) = upsync_fixture();
        // KCP holds its own object of that name (the fake answers every
        // read): a cluster's report must never write its status.
        f.store
            .apply("c1", "s", vec![upsert(1, json!({"ready": 1}))], vec![])
            .ok();
        // The UID map is not rebuilt yet: it cannot tell, so it waits.
        assert!(matches!(
            f.writer.write(&key()).await,
            Outcome::RetryAfter(delay) if delay > Duration::ZERO
        ));
        upsync.uids.rebuilt(Vec::new(), HashMap::new());
        settle(&f).await;
        assert!(f.upstream.patches().is_empty());
        assert_eq!(f.upstream.gets.load(Ordering::SeqCst), 0);
        assert_eq!(writes(&f, write_result::NOT_UPSYNCED), 1);

        // Once the upsync writer made it (the map knows it): written.
        upsynced(&upsync, "up-1");
        f.queue.push(key(), "c1");
        settle(&f).await;
        assert_eq!(f.upstream.patches(), vec![json!({"status": {"ready": 1}})]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_object_created_anew_gets_its_status_again() {
        let (f, upsync) = upsync_fixture();
        upsync.uids.rebuilt(Vec::new(), HashMap::new());
        upsynced(&upsync, "up-1");
        f.store
            .apply("c1", "s", vec![upsert(1, json!({"ready": 1}))], vec![])
            .ok();
        settle(&f).await;
        assert_eq!(f.upstream.patches().len(), 1);

        // The upsync writer deleted the object and created it anew, without
        // a status; the store's status is the same.
        upsynced(&upsync, "up-2");
        upsync.mark_created(&key());
        f.queue.push(key(), "c1");
        settle(&f).await;
        assert_eq!(
            f.upstream.patches(),
            vec![
                json!({"status": {"ready": 1}}),
                json!({"status": {"ready": 1}})
            ]
        );
        assert!(!upsync.take_created(&key()), "taken by the write");
    }

    /// A writer that merge-patches (what the older tests here describe).
    fn fixture() -> Fixture {
        fixture_with(StatusWrite::MergePatch, false)
    }

    fn fixture_with(status_write: StatusWrite, dry_run: bool) -> Fixture {
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
                status_write,
                dry_run,
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
        ObjectKey::deployment("web")
    }

    fn upsert(seq: u64, status: Value) -> Update {
        Update {
            key: key(),
            seq,
            entry: Some(Entry {
                status: Status::of(&status),
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
        f.queue.push(key(), "c1");
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
        f.queue.push(key(), "c1");
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

    /// The hub's FieldsV1 entry for an apply to `/status` of `status`
    /// (what the API server would record; conditions keyed by type).
    fn hub_entry(status: &Value) -> Value {
        fn set(value: &Value, field: &str) -> Value {
            match value {
                Value::Object(m) => Value::Object(
                    m.iter()
                        .map(|(k, v)| (format!("f:{k}"), set(v, k)))
                        .collect(),
                ),
                Value::Array(items) if field == "conditions" => Value::Object(
                    items
                        .iter()
                        .map(|c| {
                            let mut item = set(c, "");
                            item[".".to_owned()] = json!({});
                            (format!("k:{}", json!({"type": c["type"]})), item)
                        })
                        .collect(),
                ),
                _ => json!({}),
            }
        }
        json!({
            "manager": FIELD_MANAGER,
            "operation": "Apply",
            "subresource": "status",
            "fieldsType": "FieldsV1",
            "fieldsV1": {"f:status": set(status, "status")},
        })
    }

    #[tokio::test(start_paused = true)]
    async fn apply_sends_the_whole_status_as_the_hubs_forced_apply() {
        let f = fixture_with(StatusWrite::Apply, false);
        let available = json!({"type": "Available", "status": "True"});
        f.store
            .apply(
                "c1",
                "s",
                vec![upsert(
                    1,
                    json!({"replicas": 2, "readyReplicas": 1, "conditions": [available]}),
                )],
                vec![],
            )
            .ok();
        settle(&f).await;
        f.store
            .apply("c1", "s", vec![upsert(2, json!({"replicas": 2}))], vec![])
            .ok();
        settle(&f).await;
        assert!(
            f.upstream.patches().is_empty(),
            "no merge patch under apply"
        );
        let applies = f
            .upstream
            .applies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        assert_eq!(
            applies,
            vec![
                (
                    json!({
                        "apiVersion": "apps/v1",
                        "kind": "Deployment",
                        "metadata": {"name": "web", "namespace": "default"},
                        "status": {"replicas": 2, "readyReplicas": 1, "conditions": [available]},
                    }),
                    "fieldManager=uplink-hub force=true dryRun=false".to_owned()
                ),
                // The whole status again, not a diff: what the hub leaves
                // out (readyReplicas, the condition) the server removes.
                (
                    json!({
                        "apiVersion": "apps/v1",
                        "kind": "Deployment",
                        "metadata": {"name": "web", "namespace": "default"},
                        "status": {"replicas": 2},
                    }),
                    "fieldManager=uplink-hub force=true dryRun=false".to_owned()
                ),
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn apply_coalesces_and_never_applies_the_same_status_twice() {
        let f = fixture_with(StatusWrite::Apply, false);
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
        f.store
            .apply("c1", "s2", vec![upsert(5, json!({"replicas": 5}))], vec![])
            .ok();
        f.queue.push(key(), "c1");
        settle(&f).await;
        assert_eq!(f.upstream.applied_statuses(), vec![json!({"replicas": 5})]);
    }

    #[tokio::test(start_paused = true)]
    async fn apply_keeps_the_hubs_fields_of_an_object_no_cluster_reports() {
        let f = fixture_with(StatusWrite::Apply, false);
        f.store
            .apply("c1", "s", vec![upsert(1, json!({"replicas": 2}))], vec![])
            .ok();
        settle(&f).await;
        f.store
            .apply(
                "c1",
                "s",
                vec![Update {
                    key: key(),
                    seq: 2,
                    entry: None,
                }],
                vec![],
            )
            .ok();
        settle(&f).await;
        let applied = f.upstream.applied_statuses();
        assert_eq!(applied.len(), 2, "{applied:?}");
        // Everything the hub owns is applied again (or the server would
        // remove it), with the condition added.
        assert_eq!(applied[1]["replicas"], 2);
        assert_eq!(applied[1]["conditions"][0]["type"], NOT_REPORTED_CONDITION);
        assert_eq!(applied[1]["conditions"][0]["status"], "False");
        // After a restart the hub reads what it owns back: nothing to do.
        *f.upstream
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(applied[1].clone());
        *f.upstream
            .managed_fields
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = vec![hub_entry(&applied[1])];
        f.queue.push(key(), "c1");
        settle(&f).await;
        assert_eq!(f.upstream.applied_statuses().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_apply_diffs_against_what_the_hub_owns_not_what_kcp_holds() {
        let f = fixture_with(StatusWrite::Apply, false);
        let theirs = json!({"type": "External", "status": "True"});
        let earlier = json!({"replicas": 2});
        // An earlier hub applied `earlier`; another manager set a condition.
        *f.upstream
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner) =
            Some(json!({"replicas": 2, "conditions": [theirs]}));
        *f.upstream
            .managed_fields
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = vec![
            json!({"manager": "other", "operation": "Apply", "subresource": "status",
                   "fieldsV1": {"f:status": {"f:conditions": {"k:{\"type\":\"External\"}": {".": {}, "f:type": {}, "f:status": {}}}}}}),
            hub_entry(&earlier),
        ];
        f.store
            .apply("c1", "s", vec![upsert(1, earlier.clone())], vec![])
            .ok();
        settle(&f).await;
        assert_eq!(
            f.upstream.applies().len(),
            0,
            "the hub owns exactly what it would apply"
        );
        // A restarted hub whose earlier self owned a field no cluster reports:
        // it applies without it (and the server removes it).
        let f = fixture_with(StatusWrite::Apply, false);
        *f.upstream
            .managed_fields
            .lock()
            .unwrap_or_else(PoisonError::into_inner) =
            vec![hub_entry(&json!({"replicas": 2, "readyReplicas": 1}))];
        *f.upstream
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner) =
            Some(json!({"replicas": 2, "readyReplicas": 1, "conditions": [theirs]}));
        f.store
            .apply("c1", "s", vec![upsert(1, earlier.clone())], vec![])
            .ok();
        settle(&f).await;
        assert_eq!(f.upstream.applied_statuses(), vec![earlier]);
    }

    #[tokio::test(start_paused = true)]
    async fn fields_kcps_schema_lacks_are_learned_and_left_out_of_applies() {
        let f = fixture_with(StatusWrite::Apply, false);
        // As kube-apiserver answers it.
        f.upstream.answer(Err(UpstreamError::Server {
            status: 500,
            message: "failed to create typed patch object (default/web; apps/v1, Kind=Deployment): .status.terminatingReplicas: field not declared in schema".into(),
        }));
        f.store
            .apply(
                "c1",
                "s",
                vec![upsert(1, json!({"replicas": 2, "terminatingReplicas": 1}))],
                vec![],
            )
            .ok();
        let start = Instant::now();
        settle(&f).await;
        assert_eq!(
            f.upstream.applied_statuses(),
            vec![
                json!({"replicas": 2, "terminatingReplicas": 1}),
                json!({"replicas": 2}),
            ]
        );
        assert!(start.elapsed() < BACKOFF_BASE, "retried at once");
        // Later writes of the type leave it out from the start.
        f.store
            .apply(
                "c1",
                "s",
                vec![upsert(2, json!({"replicas": 3, "terminatingReplicas": 0}))],
                vec![],
            )
            .ok();
        settle(&f).await;
        assert_eq!(
            f.upstream.applied_statuses().last(),
            Some(&json!({"replicas": 3}))
        );
        assert_eq!(f.upstream.applied_statuses().len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn apply_dry_run_and_field_manager_conflicts() {
        let f = fixture_with(StatusWrite::Apply, true);
        let earlier = json!({"replicas": 0});
        *f.upstream
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(earlier.clone());
        *f.upstream
            .managed_fields
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = vec![hub_entry(&earlier)];
        f.upstream.answer(Err(UpstreamError::FieldConflict(
            "conflict with \"other\": .status.replicas".into(),
        )));
        f.store
            .apply("c1", "s", vec![upsert(1, json!({"replicas": 1}))], vec![])
            .ok();
        let start = Instant::now();
        settle(&f).await;
        let applies = f
            .upstream
            .applies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        assert_eq!(applies.len(), 2, "retried until it landed: {applies:?}");
        assert!(
            applies
                .iter()
                .all(|(_, how)| how == "fieldManager=uplink-hub force=true dryRun=true")
        );
        // A field-manager conflict is not re-read (that cannot resolve it):
        // one read before the first write, then a backoff.
        assert_eq!(f.upstream.gets.load(Ordering::SeqCst), 1);
        assert!(start.elapsed() >= BACKOFF_BASE);
        let by = |r: &str| f.metrics.kcp_writes.with_label_values(&[r]).get();
        assert_eq!(
            (by(write_result::CONFLICT), by(write_result::DRY_RUN)),
            (1, 1)
        );
    }
}
