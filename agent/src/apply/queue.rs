//! The apply stage's queue for one session: downward deltas from the session
//! lane to [`WORKERS`] workers, without ever making the lane wait.
//!
//! The lane pushes into an unbounded channel (its depth is bounded by the
//! hub's window and checked by the lane, see
//! [`crate::session`]'s downward lane); a dispatcher moves each delta to the
//! worker its object hashes to, through a small bounded channel, so deltas
//! of one object are applied in order while different objects are applied
//! in parallel. Each delta ends in one [`Done`]; transient failures are
//! retried with the agent's backoff until they pass or the session ends.
//!
//! A sweep (after a downward snapshot's end) waits at a barrier: every
//! worker finishes what came before it, then the dispatcher sweeps, and only
//! then hands on what came after it.
//!
//! Dropping the queue aborts its tasks; the hub sends what was not
//! acknowledged again (re-applying is harmless).

use std::collections::HashSet;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;
use uplink_protocol::{ApplyFailure, DownwardChange, ObjectRef};

use crate::routes::ShardSet;

use super::{Applier, ApplyResult, Transient};
use crate::transform::{DownstreamKey, Target};
use uplink_ops::backoff::{Backoff, Policy};

/// Workers per session: objects applied at the same time.
pub const WORKERS: usize = 8;
/// Deltas waiting at each worker; the rest wait at the dispatcher.
const WORKER_QUEUE: usize = 32;

/// One downward delta to apply.
#[derive(Debug, Clone)]
pub struct Job {
    pub seq: u64,
    pub object: ObjectRef,
    pub change: DownwardChange,
    /// When the lane received it (for the latency histogram).
    pub received: Instant,
}

/// What the queue reports back to the lane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    /// Delta `seq` is done: applied or deleted, or not (`failure`).
    Delta {
        seq: u64,
        failure: Option<ApplyFailure>,
    },
    /// The sweep of the snapshot ending at `end_seq` is done.
    Swept { end_seq: u64 },
}

enum Entry {
    Job(Box<Job>),
    Sweep {
        end_seq: u64,
        named: HashSet<DownstreamKey>,
        shards: ShardSet,
    },
}

enum Work {
    Job(Box<Job>),
    /// Answered once everything before it was handled.
    Barrier(oneshot::Sender<()>),
}

/// The session's apply queue; see the module docs.
#[derive(Debug)]
pub struct ApplyQueue {
    entries: mpsc::UnboundedSender<Entry>,
    /// Deltas pushed and not yet taken up by a worker (the gauge's value).
    queued: Queued,
    tasks: JoinSet<()>,
}

/// Deltas waiting in one session's queue, mirrored into
/// `uplink_agent_downward_queue_deltas` (one session at a time).
#[derive(Debug, Clone)]
struct Queued {
    count: Arc<AtomicI64>,
    gauge: prometheus::IntGauge,
}

impl Queued {
    fn add(&self, n: i64) {
        let now = self.count.fetch_add(n, Ordering::Relaxed) + n;
        self.gauge.set(now);
    }
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Entry::Job(job) => write!(f, "Job({})", job.seq),
            Entry::Sweep { end_seq, .. } => write!(f, "Sweep({end_seq})"),
        }
    }
}

impl ApplyQueue {
    /// Starts the workers and the dispatcher of one session. `target` is the
    /// cluster's SyncTarget; without one, every delta fails (`forbidden`).
    pub fn start(
        applier: Arc<Applier>,
        target: Option<Target>,
        done: mpsc::UnboundedSender<Done>,
    ) -> Self {
        let target = target.map(Arc::new);
        let queued = Queued {
            count: Arc::new(AtomicI64::new(0)),
            gauge: applier.metrics().downward_queue.clone(),
        };
        queued.gauge.set(0);
        let mut tasks = JoinSet::new();
        let mut shards = Vec::with_capacity(WORKERS);
        for _ in 0..WORKERS {
            let (tx, rx) = mpsc::channel(WORKER_QUEUE);
            shards.push(tx);
            tasks.spawn(work(
                Arc::clone(&applier),
                target.clone(),
                rx,
                done.clone(),
                queued.clone(),
            ));
        }
        // Drift: one watch per downward type (a type in several versions
        // is one set of objects).
        if let Some(target) = &target {
            let mut seen = HashSet::new();
            for spec in applier.types() {
                if seen.insert((spec.group.clone(), spec.resource.clone())) {
                    tasks.spawn(super::drift::watch(
                        Arc::clone(&applier),
                        Arc::clone(target),
                        spec.clone(),
                    ));
                }
            }
        }
        let (entries, rx) = mpsc::unbounded_channel();
        tasks.spawn(dispatch(Arc::clone(&applier), target, rx, shards, done));
        Self {
            entries,
            queued,
            tasks,
        }
    }

    /// Queues a delta; never waits.
    pub fn push(&self, job: Job) {
        if self.entries.send(Entry::Job(Box::new(job))).is_ok() {
            self.queued.add(1);
        }
    }

    /// Queues the sweep after a downward snapshot: once everything queued
    /// before is done, owned objects of `shards` not in `named` are deleted
    /// and [`Done::Swept`] reports it.
    pub fn sweep(&self, end_seq: u64, named: HashSet<DownstreamKey>, shards: ShardSet) {
        let _ = self.entries.send(Entry::Sweep {
            end_seq,
            named,
            shards,
        });
    }
}

impl Drop for ApplyQueue {
    fn drop(&mut self) {
        // What never reached a worker leaves with the session (the hub
        // sends it again).
        self.tasks.abort_all();
        self.queued.gauge.set(0);
    }
}

fn shard_of(object: &ObjectRef, shards: usize) -> usize {
    let mut hasher = DefaultHasher::new();
    (
        &object.group,
        &object.resource,
        &object.workspace,
        &object.namespace,
        &object.name,
    )
        .hash(&mut hasher);
    usize::try_from(hasher.finish() % shards.max(1) as u64).unwrap_or(0)
}

async fn dispatch(
    applier: Arc<Applier>,
    target: Option<Arc<Target>>,
    mut entries: mpsc::UnboundedReceiver<Entry>,
    shards: Vec<mpsc::Sender<Work>>,
    done: mpsc::UnboundedSender<Done>,
) {
    while let Some(entry) = entries.recv().await {
        match entry {
            Entry::Job(job) => {
                let shard = &shards[shard_of(&job.object, shards.len())];
                if shard.send(Work::Job(job)).await.is_err() {
                    return;
                }
            }
            Entry::Sweep {
                end_seq,
                named,
                shards: swept,
            } => {
                let mut waits = Vec::with_capacity(shards.len());
                for shard in &shards {
                    let (tx, rx) = oneshot::channel();
                    if shard.send(Work::Barrier(tx)).await.is_err() {
                        return;
                    }
                    waits.push(rx);
                }
                for wait in waits {
                    let _ = wait.await;
                }
                match &target {
                    Some(target) => sweep_until_done(&applier, target, &named, &swept).await,
                    None => {
                        tracing::warn!(end_seq, "no SyncTarget: nothing is owned, nothing to sweep")
                    }
                }
                if done.send(Done::Swept { end_seq }).is_err() {
                    return;
                }
            }
        }
    }
}

async fn sweep_until_done(
    applier: &Applier,
    target: &Target,
    named: &HashSet<DownstreamKey>,
    shards: &ShardSet,
) {
    let mut backoff = retry_backoff();
    let mut attempt = 0u32;
    loop {
        match applier.sweep(target, named, shards).await {
            Ok(report) => {
                tracing::info!(
                    named = named.len(),
                    owned = report.owned,
                    deleted = report.deleted,
                    "downward snapshot swept"
                );
                return;
            }
            Err(e) => {
                attempt += 1;
                applier
                    .metrics()
                    .applies
                    .with_label_values(&["error"])
                    .inc();
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, attempt, retry_in = ?delay, "sweep failed; retrying");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

async fn work(
    applier: Arc<Applier>,
    target: Option<Arc<Target>>,
    mut queue: mpsc::Receiver<Work>,
    done: mpsc::UnboundedSender<Done>,
    queued: Queued,
) {
    while let Some(work) = queue.recv().await {
        let job = match work {
            Work::Barrier(reached) => {
                let _ = reached.send(());
                continue;
            }
            Work::Job(job) => job,
        };
        queued.add(-1);
        let result = apply_until_done(&applier, target.as_deref(), &job).await;
        let metrics = applier.metrics();
        metrics.applies.with_label_values(&[result.label()]).inc();
        metrics
            .apply_duration
            .observe(job.received.elapsed().as_secs_f64());
        let failure = match result {
            ApplyResult::Applied | ApplyResult::Deleted => None,
            ApplyResult::Failed { reason, message } => {
                tracing::warn!(seq = job.seq, workspace = %job.object.workspace, namespace = job.object.namespace.as_deref().unwrap_or_default(), name = %job.object.name, resource = %job.object.resource, reason, %message, "downward delta not applied");
                Some(ApplyFailure {
                    seq: job.seq,
                    reason: reason.to_owned(),
                    message,
                })
            }
        };
        if done
            .send(Done::Delta {
                seq: job.seq,
                failure,
            })
            .is_err()
        {
            return;
        }
    }
}

/// Applies (or deletes) until the cluster gives an answer that is not
/// transient.
async fn apply_until_done(applier: &Applier, target: Option<&Target>, job: &Job) -> ApplyResult {
    let Some(target) = target else {
        return ApplyResult::Failed {
            reason: ApplyFailure::FORBIDDEN,
            message: "the hub named no SyncTarget for this cluster, so nothing is placed on it"
                .into(),
        };
    };
    let mut backoff = retry_backoff();
    let mut attempt = 0u32;
    loop {
        let result = match &job.change {
            DownwardChange::Apply { manifest_json } => {
                applier.apply(&job.object, manifest_json, target).await
            }
            DownwardChange::Delete => applier.delete(&job.object, target).await,
        };
        match result {
            Ok(result) => return result,
            Err(Transient(error)) => {
                attempt += 1;
                applier
                    .metrics()
                    .applies
                    .with_label_values(&["error"])
                    .inc();
                let delay = backoff.next_delay();
                // The first few, then every power of two: a cluster that is
                // down would flood the log otherwise.
                if attempt <= 3 || attempt.is_power_of_two() {
                    tracing::warn!(seq = job.seq, name = %job.object.name, %error, attempt, retry_in = ?delay, "apply failed; retrying");
                }
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Pacing of retries against the cluster.
fn retry_backoff() -> Backoff {
    Backoff::new(Policy::spread(
        Duration::from_millis(200),
        Duration::from_secs(10),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(name: &str) -> ObjectRef {
        ObjectRef {
            group: "apps".into(),
            version: "v1".into(),
            resource: "deployments".into(),
            kind: "Deployment".into(),
            workspace: "root:org".into(),
            namespace: Some("shop".into()),
            name: name.into(),
            uid: String::new(),
        }
    }

    #[test]
    fn one_object_always_goes_to_the_same_worker() {
        let a = shard_of(&object("web"), WORKERS);
        assert!(a < WORKERS);
        let mut v2 = object("web");
        v2.version = "v2".into();
        v2.uid = "another".into();
        assert_eq!(shard_of(&v2, WORKERS), a, "version and uid do not matter");
        // Different objects spread over the workers.
        let used: HashSet<usize> = (0..64)
            .map(|i| shard_of(&object(&format!("app-{i}")), WORKERS))
            .collect();
        assert!(used.len() > WORKERS / 2, "{used:?}");
    }
}
