//! Upsync: objects born in a cluster (a PersistentVolume, ...) that KCP
//! holds whole. The session lane takes an agent's report of such an object
//! only where its cluster serves KCP ([`crate::placement::Judge::upsync_verdict`])
//! and queues it ([`UpsyncQueue`]: per (cluster, object), latest wins,
//! bounded, never dropped); its status goes through the store, the merge
//! and the status writer like any report's, so an object two clusters
//! upsync is one upstream object with one merged status. [`UpsyncWriter`]
//! brings the object itself into KCP, through [`UpsyncUpstream`], with the
//! status lane's guarantees: retried (409 re-read, 429, 5xx, backoff) until
//! it lands.
//!
//! The upstream object carries, per upsyncing cluster, kcp's label
//! `state.workload.kcp.io/<syncTargetKey>: Upsync` and the annotation
//! `downstream-uid.uplink.io/<syncTargetKey>` with the uid of the
//! cluster's own object; `uplink.io/last-applied` holds the desired object
//! last written (the base of the three-way merge, [`merge`]) and
//! `uplink.io/conflicts` the last few changes a write dropped. The hub keeps
//! those uids in memory too ([`UidMap`], rebuilt at start from a list of
//! each upsynced type across all workspaces): a snapshot that no longer
//! names an object its cluster upsyncs deletes it upstream, but only a
//! snapshot the agent says names every object it upsyncs
//! (`SnapshotEnd.upsync_listed`, version 3; an agent's first snapshot after
//! its start names none) and only objects of the types its session upsyncs.
//!
//! Writing one report, after judging placement again (a cluster never
//! touches an object where it does not serve KCP):
//! - none upstream: create it, then have the status writer write its
//!   status again (it forgets an object it found missing); a create
//!   answered 404 (no such namespace or type upstream) is dropped, not
//!   retried, until the cluster reports the object again;
//! - upstream, carrying another downstream uid for this cluster: the
//!   cluster's object was deleted and created anew; when the cluster is its
//!   only upsyncer the upstream one is deleted (preconditions: its uid and
//!   the resourceVersion read, so a mark another cluster added meanwhile
//!   makes it read again) and
//!   created anew, never resurrected; with others only the annotation is
//!   replaced;
//! - else the managed content is merged (base, KCP's, the cluster's) under
//!   the type's `upsyncConflicts` and the object replaced (PUT with its
//!   resourceVersion); a change the result drops is recorded in the
//!   conflict ledger (`UpsyncConflict`) and in `uplink.io/conflicts`;
//! - deleted in the cluster: its label and annotation go; the last
//!   upsyncer's deletion deletes the upstream object (preconditions: uid
//!   and resourceVersion, as above).
//!
//! Left as it is, deliberately:
//! - several clusters upsyncing one object share it, and its content is
//!   not merged across them: each write merges the writing cluster's
//!   object against `uplink.io/last-applied` (whichever cluster wrote it)
//!   and KCP's, so the last writer's content applies; its status is merged
//!   from all of them like any report's;
//! - a cluster's object deleted and created anew while another cluster
//!   still upsyncs the upstream one keeps that upstream object (only the
//!   cluster's uid annotation changes);
//! - the queue is bounded by reports, not by their bytes, and the objects
//!   of a snapshot being received are not counted against the cluster's
//!   memory budget (statuses are).

mod kube;
pub mod merge;
mod queue;
#[cfg(test)]
mod tests;
mod uids;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use serde_json::{Map, Value, json};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uplink_protocol::resource::ResourceSpec;

use self::merge::{
    CONFLICTS_ANNOTATION, CONFLICTS_KEPT, DOWNSTREAM_UID_PREFIX, Dropped, LAST_APPLIED_ANNOTATION,
    STATE_UPSYNC, managed, with_managed,
};
pub use self::queue::UpsyncQueue;
pub use self::uids::{SnapshotScope, UidMap};
use super::{UpstreamError, WriteQueue};
use crate::aggregate::ledger::upsync_subject;
use crate::aggregate::{Aggregator, Conflict, ConflictType, Severity, UpsyncConflicts};
use crate::metrics::{Metrics, upsync_write};
use crate::placement::key::{STATE_LABEL_PREFIX, state_label};
use crate::placement::{Placements, Verdict};
use crate::store::{ClusterName, KeyParts, ObjectKey};

/// First retry delay after a failure; doubles per failure.
const BACKOFF_BASE: Duration = Duration::from_millis(200);
/// Longest retry delay after failures.
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Retry delay after a 429 without `Retry-After`.
const THROTTLE_DEFAULT: Duration = Duration::from_secs(1);
/// Reads and writes of one report in a row (409s, a recreate) before it
/// waits its backoff.
const ATTEMPTS: u32 = 5;

/// One (cluster, object) of the queue.
pub type UpsyncId = (ClusterName, ObjectKey);

/// What a cluster wants of an object it upsyncs.
#[derive(Debug, Clone, PartialEq)]
pub enum UpsyncChange {
    /// The object as KCP is to hold it (apiVersion, kind, metadata with
    /// name, namespace, labels and annotations, the other top-level fields
    /// but status; no kcp or Uplink label or annotation).
    Desired(Arc<Value>),
    /// The cluster's object is gone.
    Deleted,
}

/// One cluster's latest report of an object it upsyncs.
#[derive(Debug, Clone, PartialEq)]
pub struct UpsyncReport {
    pub cluster: ClusterName,
    pub key: ObjectKey,
    /// The uid of the cluster's own object.
    pub downstream_uid: String,
    pub change: UpsyncChange,
}

impl UpsyncReport {
    pub fn id(&self) -> UpsyncId {
        (self.cluster.clone(), self.key.clone())
    }
}

/// An upsynced type's object as a list across all workspaces found it.
#[derive(Debug, Clone, PartialEq)]
pub struct Listed {
    /// The workspace it lives in (empty with a plain Kubernetes upstream).
    pub workspace: String,
    /// The whole object, `kind` set.
    pub object: Value,
}

/// Reads and writes upsynced objects upstream, whole.
pub trait UpsyncUpstream: Send + Sync + std::fmt::Debug + 'static {
    /// The object `key` names.
    fn get_upsynced<'a>(
        &'a self,
        key: &'a ObjectKey,
    ) -> BoxFuture<'a, Result<Value, UpstreamError>>;

    /// Creates `object` where `key` names it; one of that name already
    /// there is [`UpstreamError::Conflict`]. Returns the created object.
    /// With `dry_run` (this and the other writes) the server validates only.
    fn create_upsynced<'a>(
        &'a self,
        key: &'a ObjectKey,
        object: &'a Value,
        dry_run: bool,
    ) -> BoxFuture<'a, Result<Value, UpstreamError>>;

    /// Replaces the object (a PUT; `object` carries the
    /// `metadata.resourceVersion` it was read at, so a change meanwhile is
    /// [`UpstreamError::Conflict`]). Returns the stored object.
    fn update_upsynced<'a>(
        &'a self,
        key: &'a ObjectKey,
        object: &'a Value,
        dry_run: bool,
    ) -> BoxFuture<'a, Result<Value, UpstreamError>>;

    /// Deletes the object if its uid is `uid` and it is unchanged since
    /// `resource_version` (`preconditions`; empty: any version): another
    /// uid or a change meanwhile is [`UpstreamError::Conflict`].
    fn delete_upsynced<'a>(
        &'a self,
        key: &'a ObjectKey,
        uid: &'a str,
        resource_version: &'a str,
        dry_run: bool,
    ) -> BoxFuture<'a, Result<(), UpstreamError>>;

    /// Every object of `resource` in every workspace.
    fn list_upsynced<'a>(
        &'a self,
        resource: &'a ResourceSpec,
    ) -> BoxFuture<'a, Result<Vec<Listed>, UpstreamError>>;
}

/// What the sessions and the upsync writer share: the queue, and the UID
/// map a snapshot is checked against.
#[derive(Debug)]
pub struct Upsync {
    pub queue: UpsyncQueue,
    pub uids: UidMap,
    /// Keys whose upstream object the upsync writer created (anew since the
    /// status writer last wrote them): the status writer forgets the status
    /// it wrote of an older object of that name before it writes them
    /// again. Each is queued for the status writer as it is added, which
    /// takes it at its next write of the key (so bounded by that queue).
    created: Mutex<std::collections::HashSet<ObjectKey>>,
}

impl Upsync {
    pub fn new(queue_size: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            queue: UpsyncQueue::new(queue_size, metrics.clone()),
            uids: UidMap::new(metrics),
            created: Mutex::default(),
        }
    }

    fn created(&self) -> MutexGuard<'_, std::collections::HashSet<ObjectKey>> {
        // Never held across an await or a call that can panic midway.
        self.created.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the status writer may write the status of `key`, an object
    /// of an upsynced type: only when it is an upsynced object (the UID map
    /// knows it), never KCP's own object of that name; `None` until the map
    /// is rebuilt. The upsync writer queues the key for the status writer
    /// again when it creates the object.
    pub fn status_writable(&self, key: &ObjectKey) -> Option<bool> {
        self.uids.is_rebuilt().then(|| self.uids.contains(key))
    }

    /// The upsync writer created `key`'s upstream object (anew): see
    /// [`Upsync::take_created`]. The key is to be queued for the status
    /// writer after this.
    pub fn mark_created(&self, key: &ObjectKey) {
        self.created().insert(key.clone());
    }

    /// Whether the upsync writer created `key`'s upstream object since the
    /// status writer last asked (which it does as it writes the key): what
    /// the status writer remembers of the key is an older object's.
    pub fn take_created(&self, key: &ObjectKey) -> bool {
        self.created().remove(key)
    }

    /// After `cluster` (SyncTarget key `synctarget_key`) sent a snapshot
    /// naming `present` of its upsynced objects of `types`, and every one
    /// it has of them: every other object of those types it upsyncs is gone
    /// in the cluster, so its deletion is queued (once the UID map is
    /// rebuilt, when it is not yet). Objects of other types are left alone.
    pub fn snapshot(
        &self,
        cluster: &str,
        synctarget_key: &str,
        types: &[ResourceSpec],
        scope: &SnapshotScope,
        present: std::collections::HashSet<ObjectKey>,
    ) {
        for (key, downstream_uid) in
            self.uids
                .snapshot(cluster, synctarget_key, types, scope, present)
        {
            self.queue.push_now(UpsyncReport {
                cluster: cluster.to_owned(),
                key,
                downstream_uid,
                change: UpsyncChange::Deleted,
            });
        }
    }
}

/// How the upsync writer writes.
#[derive(Debug, Clone)]
pub struct UpsyncWriterSettings {
    /// The upsynced types (listed at start to rebuild the UID map).
    pub resources: Vec<ResourceSpec>,
    /// Writes in flight at once.
    pub concurrency: usize,
    /// How long a report placement cannot judge yet is retried before it
    /// is dropped (the store refuses it after as long).
    pub hold: Duration,
    /// Send every write with `dryRun=All`; nothing is remembered of them.
    pub dry_run: bool,
}

/// Writes upsynced objects into KCP; see the module documentation.
#[derive(Debug)]
pub struct UpsyncWriter {
    upsync: Arc<Upsync>,
    upstream: Arc<dyn UpsyncUpstream>,
    placements: Arc<Placements>,
    /// The status writer's queue: a created object's status is written again.
    status_queue: Arc<WriteQueue>,
    /// The merge policy (each type's `upsyncConflicts`), the gates and the
    /// conflict ledger.
    aggregator: Arc<Aggregator>,
    metrics: Arc<Metrics>,
    settings: UpsyncWriterSettings,
    /// Failures in a row and when placement first could not tell, per key
    /// being retried (bounded by the queue).
    retries: Mutex<HashMap<UpsyncId, Retry>>,
}

#[derive(Debug, Default)]
struct Retry {
    failures: u32,
    held_since: Option<Instant>,
}

/// How one write ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Done,
    RetryAfter(Duration),
}

/// How a delete of the object as read ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Deletion {
    /// Deleted, or gone already.
    Gone,
    /// Changed or replaced since it was read (409): read it again.
    Changed,
    /// The write ends here (dry run, a failure).
    Ended(Outcome),
}

impl UpsyncWriter {
    pub fn new(
        upsync: Arc<Upsync>,
        upstream: Arc<dyn UpsyncUpstream>,
        placements: Arc<Placements>,
        status_queue: Arc<WriteQueue>,
        aggregator: Arc<Aggregator>,
        metrics: Arc<Metrics>,
        settings: UpsyncWriterSettings,
    ) -> Self {
        Self {
            upsync,
            upstream,
            placements,
            status_queue,
            aggregator,
            metrics,
            settings,
            retries: Mutex::default(),
        }
    }

    fn retries(&self) -> MutexGuard<'_, HashMap<UpsyncId, Retry>> {
        // Never held across an await or a call that can panic midway.
        self.retries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Rebuilds the UID map, then writes what the queue holds until
    /// `stop`; what is waiting then is abandoned (a restarted hub gets every
    /// upsynced object again in its agents' snapshots).
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        tokio::select! {
            () = stop.cancelled() => return,
            () = self.rebuild() => {}
        }
        let permits = Arc::new(Semaphore::new(self.settings.concurrency.max(1)));
        let mut writes = JoinSet::new();
        loop {
            let next = async {
                let permit = permits.clone().acquire_owned().await;
                (permit, self.upsync.queue.next().await)
            };
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                Some(joined) = writes.join_next(), if !writes.is_empty() => {
                    if let Err(error) = joined
                        && error.is_panic()
                    {
                        tracing::error!(%error, "an upsync write panicked");
                    }
                }
                (permit, report) = next => {
                    let Ok(permit) = permit else { break }; // never closed
                    let writer = self.clone();
                    writes.spawn(async move {
                        let id = report.id();
                        let retry = match writer.write(&report).await {
                            Outcome::Done => {
                                writer.retries().remove(&id);
                                None
                            }
                            Outcome::RetryAfter(delay) => Some((report, delay)),
                        };
                        writer.upsync.queue.done(&id, retry);
                        drop(permit);
                    });
                }
            }
        }
        let abandoned = self.upsync.queue.len() + writes.len();
        writes.abort_all();
        while writes.join_next().await.is_some() {}
        if abandoned > 0 {
            tracing::info!(
                abandoned,
                "upsync writes still pending at shutdown were abandoned"
            );
        }
    }

    /// Fills the UID map from what KCP holds: every upsynced type listed
    /// across all workspaces (once the SyncTargets are listed, which name
    /// the clusters), retried until it works.
    async fn rebuild(&self) {
        let mut failures = 0u32;
        loop {
            let names = loop {
                let changed = self.placements.changed();
                {
                    let view = self.placements.read();
                    if view.synctargets_listed() {
                        break view.clusters_by_synctarget_key();
                    }
                }
                changed.await;
            };
            match self.list_all().await {
                Ok(objects) => {
                    let count = objects.len();
                    let missing = self.upsync.uids.rebuilt(objects, names);
                    for (cluster, key, downstream_uid) in missing {
                        self.upsync.queue.push_now(UpsyncReport {
                            cluster,
                            key,
                            downstream_uid,
                            change: UpsyncChange::Deleted,
                        });
                    }
                    tracing::info!(objects = count, "upsynced objects read from KCP");
                    return;
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    let delay = backoff(failures);
                    tracing::warn!(%error, retry_in = ?delay, "listing upsynced objects failed");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Every upsynced object KCP holds, with its key.
    async fn list_all(&self) -> Result<Vec<(ObjectKey, Value)>, UpstreamError> {
        let mut all = Vec::new();
        for resource in &self.settings.resources {
            for listed in self.upstream.list_upsynced(resource).await? {
                let object = listed.object;
                let text = |pointer: &str| {
                    object
                        .pointer(pointer)
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                };
                let (Some(kind), Some(name)) = (text("/kind"), text("/metadata/name")) else {
                    continue;
                };
                let key = ObjectKey::new(KeyParts {
                    workspace: listed.workspace,
                    group: resource.group.clone(),
                    version: resource.version.clone(),
                    resource: resource.resource.clone(),
                    kind,
                    namespace: text("/metadata/namespace"),
                    name,
                });
                all.push((key, object));
            }
        }
        Ok(all)
    }

    /// Brings one report into KCP, once.
    async fn write(&self, report: &UpsyncReport) -> Outcome {
        if !self.aggregator.gates().upstream_sync {
            self.count(upsync_write::DISABLED);
            return Outcome::Done;
        }
        // Placement again, now: it may have changed since the report was
        // judged, and a held report is judged only now.
        let (verdict, synctarget_key) = {
            let view = self.placements.read();
            let judge = view.judge(&report.cluster);
            (
                judge.verdict(&report.key),
                judge.synctarget().map(|t| t.key.clone()),
            )
        };
        let synctarget_key = match (verdict, synctarget_key) {
            (Verdict::Accept, Some(key)) => key,
            (Verdict::Reject(reason), _) => {
                self.count(upsync_write::REFUSED);
                tracing::info!(cluster = %report.cluster, object = %report.key, reason, "upsync refused by placement; not written");
                return Outcome::Done;
            }
            _ => return self.held(report),
        };
        self.upsync.uids.name(&synctarget_key, &report.cluster);
        match &report.change {
            UpsyncChange::Desired(desired) => self.upsert(report, &synctarget_key, desired).await,
            UpsyncChange::Deleted => self.release(report, &synctarget_key).await,
        }
    }

    /// A report placement cannot judge yet: retried, until the hold runs out.
    fn held(&self, report: &UpsyncReport) -> Outcome {
        let now = Instant::now();
        let (since, failures) = {
            let mut retries = self.retries();
            let retry = retries.entry(report.id()).or_default();
            retry.failures = retry.failures.saturating_add(1);
            (*retry.held_since.get_or_insert(now), retry.failures)
        };
        if now >= since + self.settings.hold {
            self.count(upsync_write::REFUSED);
            tracing::info!(cluster = %report.cluster, object = %report.key, held = ?self.settings.hold, "upsync never allowed by placement; dropped");
            return Outcome::Done;
        }
        self.count(upsync_write::RETRIED);
        Outcome::RetryAfter(backoff(failures).min(Duration::from_secs(1)))
    }

    /// Creates or updates the object as `report`'s cluster wants it.
    async fn upsert(
        &self,
        report: &UpsyncReport,
        synctarget_key: &str,
        desired: &Value,
    ) -> Outcome {
        let key = &report.key;
        let uid_annotation = format!("{DOWNSTREAM_UID_PREFIX}{synctarget_key}");
        for _ in 0..ATTEMPTS {
            let current = match self.upstream.get_upsynced(key).await {
                Ok(current) => current,
                Err(UpstreamError::NotFound) => {
                    match self.create(report, synctarget_key, desired).await {
                        Some(outcome) => return outcome,
                        None => continue,
                    }
                }
                Err(error) => return self.failed(report, &error),
            };
            if current
                .pointer("/metadata/deletionTimestamp")
                .is_some_and(|t| !t.is_null())
            {
                // Being deleted (finalizers): created anew once it is gone.
                self.count(upsync_write::RETRIED);
                return Outcome::RetryAfter(self.backoff_for(report));
            }
            let upsyncing = upsyncers(&current);
            if upsyncing.is_empty() {
                // KCP's own object (no cluster upsyncs it): never taken
                // over, or a cluster could rewrite, and by deleting its
                // copy delete, what a KCP user made.
                self.count(upsync_write::REFUSED);
                tracing::warn!(cluster = %report.cluster, object = %key, "an object of that name exists in KCP and no cluster upsyncs it; left alone");
                return Outcome::Done;
            }
            let carried = annotation(&current, &uid_annotation);
            if carried.is_some_and(|uid| uid != report.downstream_uid)
                && upsyncing.iter().all(|k| k == synctarget_key)
            {
                // The cluster's object was deleted and created anew, and no
                // other cluster holds the upstream one: so is it.
                match self.delete(report, &current).await {
                    Deletion::Ended(outcome) => return outcome,
                    Deletion::Gone | Deletion::Changed => continue,
                }
            }
            let strategy = self
                .aggregator
                .policy()
                .resource(&key.group, &key.resource)
                .upsync_conflicts;
            let base = annotation(&current, LAST_APPLIED_ANNOTATION)
                .and_then(|text| serde_json::from_str::<Value>(text).ok())
                .map_or_else(|| managed(&json!({})), |base| managed(&base));
            let merged = merge::merge(&base, &managed(&current), &managed(desired), strategy);
            let mut object = with_managed(&current, &merged.content);
            mark(&mut object, synctarget_key, &report.downstream_uid, desired);
            let conflict = (!merged.dropped.is_empty())
                .then(|| self.conflict(report, strategy, &merged.dropped));
            if let Some(conflict) = &conflict {
                add_conflict(&mut object, report, strategy, &merged.dropped);
                tracing::info!(cluster = %report.cluster, object = %key, %strategy, message = %conflict.message, "upsync conflict");
            }
            if object == current {
                self.count(upsync_write::UNCHANGED);
                self.landed(report, &current, None, strategy);
                return Outcome::Done;
            }
            // Left out, the server keeps them; sent, it would take them as
            // the writer's to set.
            without_managed_fields(&mut object);
            match self
                .upstream
                .update_upsynced(key, &object, self.settings.dry_run)
                .await
            {
                Ok(_) if self.settings.dry_run => {
                    self.count(upsync_write::DRY_RUN);
                    return Outcome::Done;
                }
                Ok(updated) => {
                    self.count(upsync_write::UPDATED);
                    tracing::debug!(cluster = %report.cluster, object = %key, "upsynced object updated");
                    self.landed(report, &updated, conflict.as_ref(), strategy);
                    return Outcome::Done;
                }
                Err(UpstreamError::Conflict(_) | UpstreamError::NotFound) => {
                    self.count(upsync_write::CONFLICT);
                }
                Err(error) => return self.failed(report, &error),
            }
        }
        self.count(upsync_write::RETRIED);
        Outcome::RetryAfter(self.backoff_for(report))
    }

    /// Creates the object; `None` when it appeared meanwhile (read again).
    async fn create(
        &self,
        report: &UpsyncReport,
        synctarget_key: &str,
        desired: &Value,
    ) -> Option<Outcome> {
        let mut object = desired.clone();
        mark(&mut object, synctarget_key, &report.downstream_uid, desired);
        if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            metadata.remove("resourceVersion");
        }
        match self
            .upstream
            .create_upsynced(&report.key, &object, self.settings.dry_run)
            .await
        {
            Ok(_) if self.settings.dry_run => {
                self.count(upsync_write::DRY_RUN);
                Some(Outcome::Done)
            }
            Ok(created) => {
                self.count(upsync_write::CREATED);
                tracing::info!(cluster = %report.cluster, object = %report.key, "upsynced object created");
                let strategy = self
                    .aggregator
                    .policy()
                    .resource(&report.key.group, &report.key.resource)
                    .upsync_conflicts;
                self.landed(report, &created, None, strategy);
                // The status writer may have tried (and forgotten) the
                // object before it existed, or remember what it wrote to
                // an older object of that name (deleted and created anew):
                // it forgets that and writes the status again.
                self.upsync.mark_created(&report.key);
                self.status_queue.push(report.key.clone(), &report.cluster);
                Some(Outcome::Done)
            }
            Err(UpstreamError::Conflict(_)) => {
                self.count(upsync_write::CONFLICT);
                None
            }
            Err(UpstreamError::NotFound) => {
                // Where it is to be created does not exist upstream (its
                // namespace, or the type there; a cluster-scoped type
                // reported with a namespace): no retry changes that, and
                // retrying forever would hold a queue slot. Dropped until
                // the cluster reports the object again.
                self.count(upsync_write::REFUSED);
                let refused = self
                    .metrics
                    .upsync_writes
                    .with_label_values(&[upsync_write::REFUSED])
                    .get();
                if super::events::sparingly(refused) {
                    tracing::warn!(cluster = %report.cluster, object = %report.key, refused, "KCP has nowhere to create the upsynced object (404: its namespace or type is missing); dropped until the cluster reports it again");
                }
                Some(Outcome::Done)
            }
            Err(error) => Some(self.failed(report, &error)),
        }
    }

    /// Deletes `current` as it was read (preconditions: its uid and its
    /// resourceVersion, so that another cluster's mark added meanwhile, by
    /// a write running beside this one, is never deleted with it).
    async fn delete(&self, report: &UpsyncReport, current: &Value) -> Deletion {
        let text = |pointer: &str| {
            current
                .pointer(pointer)
                .and_then(Value::as_str)
                .unwrap_or_default()
        };
        let uid = text("/metadata/uid");
        let resource_version = text("/metadata/resourceVersion");
        match self
            .upstream
            .delete_upsynced(&report.key, uid, resource_version, self.settings.dry_run)
            .await
        {
            Ok(()) if self.settings.dry_run => {
                self.count(upsync_write::DRY_RUN);
                Deletion::Ended(Outcome::Done)
            }
            Ok(()) | Err(UpstreamError::NotFound) => {
                self.count(upsync_write::DELETED);
                tracing::info!(cluster = %report.cluster, object = %report.key, uid, "upsynced object deleted");
                self.upsync.uids.remove(&report.key);
                Deletion::Gone
            }
            Err(UpstreamError::Conflict(_)) => {
                self.count(upsync_write::CONFLICT);
                Deletion::Changed
            }
            Err(error) => Deletion::Ended(self.failed(report, &error)),
        }
    }

    /// The cluster's object is gone: its mark comes off the upstream
    /// object, which is deleted when no upsyncing cluster is left.
    async fn release(&self, report: &UpsyncReport, synctarget_key: &str) -> Outcome {
        let key = &report.key;
        let uid_annotation = format!("{DOWNSTREAM_UID_PREFIX}{synctarget_key}");
        let strategy = self
            .aggregator
            .policy()
            .resource(&key.group, &key.resource)
            .upsync_conflicts;
        for _ in 0..ATTEMPTS {
            let current = match self.upstream.get_upsynced(key).await {
                Ok(current) => current,
                Err(UpstreamError::NotFound) => {
                    self.count(upsync_write::UNCHANGED);
                    self.upsync.uids.remove(key);
                    return Outcome::Done;
                }
                Err(error) => return self.failed(report, &error),
            };
            let carried = annotation(&current, &uid_annotation);
            let ours = carried.is_some_and(|uid| {
                report.downstream_uid.is_empty() || uid == report.downstream_uid
            });
            if !ours {
                // Not this cluster's (any more): a newer object of the
                // cluster took its place, or it never upsynced it.
                self.count(upsync_write::UNCHANGED);
                return Outcome::Done;
            }
            if upsyncers(&current).iter().all(|k| k == synctarget_key) {
                match self.delete(report, &current).await {
                    Deletion::Ended(outcome) => return outcome,
                    Deletion::Gone => {
                        self.aggregator.ledger().record_upsync(
                            key,
                            &report.cluster,
                            None,
                            strategy,
                            SystemTime::now(),
                        );
                        return Outcome::Done;
                    }
                    // Changed meanwhile (another cluster's mark, say): read
                    // again.
                    Deletion::Changed => continue,
                }
            }
            let mut object = current.clone();
            unmark(&mut object, synctarget_key);
            without_managed_fields(&mut object);
            match self
                .upstream
                .update_upsynced(key, &object, self.settings.dry_run)
                .await
            {
                Ok(_) if self.settings.dry_run => {
                    self.count(upsync_write::DRY_RUN);
                    return Outcome::Done;
                }
                Ok(updated) => {
                    self.count(upsync_write::UPDATED);
                    tracing::info!(cluster = %report.cluster, object = %key, "cluster no longer upsyncs the object; others still do");
                    self.upsync.uids.set(key, &updated);
                    self.aggregator.ledger().record_upsync(
                        key,
                        &report.cluster,
                        None,
                        strategy,
                        SystemTime::now(),
                    );
                    return Outcome::Done;
                }
                Err(UpstreamError::Conflict(_)) => self.count(upsync_write::CONFLICT),
                Err(UpstreamError::NotFound) => {
                    self.upsync.uids.remove(key);
                    return Outcome::Done;
                }
                Err(error) => return self.failed(report, &error),
            }
        }
        self.count(upsync_write::RETRIED);
        Outcome::RetryAfter(self.backoff_for(report))
    }

    /// After a write landed (or found nothing to change): the UID map, and
    /// the cluster's upsync conflict on the object (ended when none).
    fn landed(
        &self,
        report: &UpsyncReport,
        object: &Value,
        conflict: Option<&Conflict>,
        strategy: UpsyncConflicts,
    ) {
        self.upsync.uids.set(&report.key, object);
        self.aggregator.ledger().record_upsync(
            &report.key,
            &report.cluster,
            conflict,
            strategy,
            SystemTime::now(),
        );
    }

    /// The ledger's record of a write that dropped `dropped`.
    fn conflict(
        &self,
        report: &UpsyncReport,
        strategy: UpsyncConflicts,
        dropped: &[Dropped],
    ) -> Conflict {
        let sides: Vec<String> = dropped
            .iter()
            .map(|d| {
                let side = match d.dropped {
                    merge::Side::Kcp => "KCP's",
                    merge::Side::Cluster => "the cluster's",
                };
                format!("{side} change of {}", d.path)
            })
            .collect();
        Conflict {
            kind: ConflictType::UpsyncConflict,
            severity: Severity::Warning,
            subject: upsync_subject(&report.cluster),
            clusters: vec![report.cluster.clone()],
            message: format!("{strategy} dropped {}", sides.join(", ")),
            resolved_by: Some(strategy.to_string()),
        }
    }

    /// A failed request: retried after a backoff, or dropped when KCP
    /// refuses it outright.
    fn failed(&self, report: &UpsyncReport, error: &UpstreamError) -> Outcome {
        match error {
            UpstreamError::Throttled { retry_after } => {
                self.count(upsync_write::RETRIED);
                let delay = retry_after.unwrap_or(THROTTLE_DEFAULT);
                tracing::debug!(cluster = %report.cluster, object = %report.key, ?delay, "throttled upstream");
                Outcome::RetryAfter(delay)
            }
            // The shard's holder writes it: its agents' snapshots bring
            // every upsynced object of the shard there.
            UpstreamError::NotHeld { shard } => {
                self.count(upsync_write::NOT_HELD);
                tracing::debug!(cluster = %report.cluster, object = %report.key, shard, outcome = "not held", "upsynced object left to the shard's holder");
                Outcome::Done
            }
            UpstreamError::Refused { .. }
            | UpstreamError::BadObject { .. }
            | UpstreamError::FieldConflict(_) => {
                self.count(upsync_write::REFUSED);
                tracing::warn!(cluster = %report.cluster, object = %report.key, %error, "KCP refused the upsynced object; dropped until the cluster reports it again");
                Outcome::Done
            }
            _ => {
                self.count(upsync_write::RETRIED);
                let delay = self.backoff_for(report);
                tracing::warn!(cluster = %report.cluster, object = %report.key, %error, retry_in = ?delay, "writing an upsynced object failed");
                Outcome::RetryAfter(delay)
            }
        }
    }

    /// One more failure of `report`'s key; how long it waits.
    fn backoff_for(&self, report: &UpsyncReport) -> Duration {
        let mut retries = self.retries();
        let retry = retries.entry(report.id()).or_default();
        retry.failures = retry.failures.saturating_add(1);
        backoff(retry.failures)
    }

    fn count(&self, result: &str) {
        self.metrics
            .upsync_writes
            .with_label_values(&[result])
            .inc();
    }
}

fn backoff(failures: u32) -> Duration {
    uplink_ops::backoff::Policy::retries(BACKOFF_BASE, BACKOFF_MAX).delay_after(failures)
}

/// The annotation `name` of `object`, if it has it.
fn annotation<'a>(object: &'a Value, name: &str) -> Option<&'a str> {
    object
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(name))
        .and_then(Value::as_str)
}

/// The SyncTarget keys of the clusters that upsync `object`: its
/// `Upsync` placement labels and downstream-uid annotations.
fn upsyncers(object: &Value) -> BTreeSet<String> {
    let entries = |part: &str| {
        object
            .pointer(&format!("/metadata/{part}"))
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default()
    };
    let labels = entries("labels");
    let annotations = entries("annotations");
    labels
        .iter()
        .filter(|(_, v)| v.as_str() == Some(STATE_UPSYNC))
        .filter_map(|(k, _)| k.strip_prefix(STATE_LABEL_PREFIX))
        .chain(
            annotations
                .keys()
                .filter_map(|k| k.strip_prefix(DOWNSTREAM_UID_PREFIX)),
        )
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The `metadata.<part>` map of `object`, made when missing.
fn entries_mut<'a>(object: &'a mut Value, part: &str) -> Option<&'a mut Map<String, Value>> {
    let metadata = object
        .as_object_mut()?
        .entry("metadata")
        .or_insert_with(|| json!({}))
        .as_object_mut()?;
    let entries = metadata.entry(part).or_insert_with(|| json!({}));
    if !entries.is_object() {
        *entries = json!({});
    }
    entries.as_object_mut()
}

/// Marks `object` as upsynced by the cluster with `synctarget_key`
/// (downstream uid `downstream_uid`), written from `desired`.
fn mark(object: &mut Value, synctarget_key: &str, downstream_uid: &str, desired: &Value) {
    if let Some(labels) = entries_mut(object, "labels") {
        labels.insert(state_label(synctarget_key), json!(STATE_UPSYNC));
    }
    if let Some(annotations) = entries_mut(object, "annotations") {
        annotations.insert(
            format!("{DOWNSTREAM_UID_PREFIX}{synctarget_key}"),
            json!(downstream_uid),
        );
        // A value read from JSON always writes back as JSON.
        let last_applied = serde_json::to_string(desired).unwrap_or_default();
        annotations.insert(LAST_APPLIED_ANNOTATION.to_owned(), json!(last_applied));
    }
}

/// `object` without `metadata.managedFields`.
fn without_managed_fields(object: &mut Value) {
    if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.remove("managedFields");
    }
}

/// Takes the mark of the cluster with `synctarget_key` off `object`.
fn unmark(object: &mut Value, synctarget_key: &str) {
    if let Some(labels) = entries_mut(object, "labels") {
        labels.remove(&state_label(synctarget_key));
    }
    if let Some(annotations) = entries_mut(object, "annotations") {
        annotations.remove(&format!("{DOWNSTREAM_UID_PREFIX}{synctarget_key}"));
    }
}

/// Appends one conflict to `object`'s `uplink.io/conflicts`, keeping the
/// last [`CONFLICTS_KEPT`].
fn add_conflict(
    object: &mut Value,
    report: &UpsyncReport,
    strategy: UpsyncConflicts,
    dropped: &[Dropped],
) {
    let Some(annotations) = entries_mut(object, "annotations") else {
        return;
    };
    let mut conflicts: Vec<Value> = annotations
        .get(CONFLICTS_ANNOTATION)
        .and_then(Value::as_str)
        .and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or_default();
    let time = jiff::Timestamp::try_from(SystemTime::now())
        .map(|t| t.to_string())
        .unwrap_or_default();
    conflicts.push(json!({
        "time": time,
        "cluster": report.cluster,
        "strategy": strategy.as_str(),
        "fields": dropped,
    }));
    let excess = conflicts.len().saturating_sub(CONFLICTS_KEPT);
    conflicts.drain(..excess);
    // A value read from JSON always writes back as JSON.
    let text = serde_json::to_string(&conflicts).unwrap_or_default();
    annotations.insert(CONFLICTS_ANNOTATION.to_owned(), json!(text));
}
