//! What the hub sends down to each cluster: the objects KCP placed on it
//! (spec and metadata, never status), through the session's downward lane
//! (protocol version 2).
//!
//! In flow order: the placement watch ([`crate::placement`]) turns every
//! change of a placed object into a [`Change`] (a new manifest, or a delete
//! when the object is unplaced or deleted in KCP); this module keeps, per
//! cluster whose agent applies that type, a [`DownwardQueue`] of the latest
//! unacknowledged change per object; the session's downward lane
//! (`session/downward.rs`) sends batches from it within a window, or a
//! snapshot when the agent cannot resume, and hands back the agent's
//! acknowledgements: confirmed deletions let the upstream object go (its
//! finalizer, [`crate::writer::finalizer`]), refused applies become a
//! condition on the upstream object ([`Downstream::failures`]).
//!
//! A lane exists from the first version-2 session of a cluster on and
//! keeps queuing while the agent is away, bounded by the objects placed on
//! the cluster; a reconnect of the same agent session resumes it, anything
//! else gets a snapshot.

mod queue;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;
use uplink_protocol::{ApplyFailure, DownwardAck};

pub use self::queue::{Change, Confirmed, DownwardQueue, Queued};
use crate::metrics::Metrics;
use crate::store::{ClusterName, ObjectKey};
use crate::writer::WriteQueue;

/// What a snapshot starts from: every object placed on the cluster (key,
/// upstream uid, manifest), and those placed on it that are being deleted
/// in KCP (their keys).
pub type SnapshotObjects = (Vec<(ObjectKey, String, Arc<str>)>, Vec<ObjectKey>);

/// Every cluster's downward lane.
#[derive(Debug)]
pub struct Downstream {
    lanes: Mutex<HashMap<ClusterName, Lane>>,
    /// Applies refused downstream, by object.
    failures: Mutex<HashMap<ObjectKey, ApplyFailures>>,
    /// Marks objects whose upstream status must say so again.
    write_queue: Arc<WriteQueue>,
    metrics: Arc<Metrics>,
}

#[derive(Debug)]
struct Lane {
    /// (group, resource) of the types the cluster's agent applies.
    types: HashSet<(String, String)>,
    queue: DownwardQueue,
    /// Woken when the queue has something to send.
    wake: Arc<Notify>,
    /// The agent session the lane serves; another one gets a snapshot.
    session: String,
}

/// The clusters that refused to apply one object: reason and message each.
pub type ApplyFailures = BTreeMap<ClusterName, (String, String)>;

/// How a session's downward lane starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaneStart {
    /// Send again what the agent did not acknowledge.
    Resume,
    /// A snapshot of `objects` objects, ending at sequence number `end`:
    /// its entries come out of [`Downstream::next_batch`] as the window
    /// opens, then [`Downstream::snapshot_end_due`].
    Snapshot { objects: u64, end: u64 },
}

impl Downstream {
    pub fn new(write_queue: Arc<WriteQueue>, metrics: Arc<Metrics>) -> Self {
        Self {
            lanes: Mutex::default(),
            failures: Mutex::default(),
            write_queue,
            metrics,
        }
    }

    fn lanes(&self) -> MutexGuard<'_, HashMap<ClusterName, Lane>> {
        // Never held across a call that can panic midway.
        self.lanes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Opens `cluster`'s lane for agent session `session`, which applies
    /// `types` ((group, resource)). `placed` lists every object placed on
    /// the cluster now (key, upstream uid, manifest), and the objects placed
    /// on it that are being deleted in KCP (call it under the placement
    /// view's read lock, so no change slips between it and the queue). The
    /// same session resumes; another one gets a snapshot, whose end
    /// confirms the deleted objects gone.
    pub fn open(
        &self,
        cluster: &str,
        session: &str,
        types: HashSet<(String, String)>,
        placed: impl FnOnce(&HashSet<(String, String)>) -> SnapshotObjects,
    ) -> (LaneStart, Arc<Notify>) {
        let mut lanes = self.lanes();
        let lane = lanes.entry(cluster.to_owned()).or_insert_with(|| Lane {
            types: HashSet::new(),
            queue: DownwardQueue::default(),
            wake: Arc::new(Notify::new()),
            session: String::new(),
        });
        let start = if lane.session == session && lane.types == types && lane.queue.can_resume() {
            lane.queue.resume();
            LaneStart::Resume
        } else {
            let (objects, deleting) = placed(&types);
            self.metrics
                .downstream_objects
                .with_label_values(&[cluster])
                .set(i64::try_from(objects.len()).unwrap_or(i64::MAX));
            lane.types = types;
            lane.session = session.to_owned();
            let before = lane.queue.len();
            let (objects, end) = lane.queue.snapshot(objects);
            lane.queue.sweep_with_snapshot(deleting);
            self.count_queue(before, lane.queue.len());
            LaneStart::Snapshot { objects, end }
        };
        (start, lane.wake.clone())
    }

    /// Whether `cluster` applies objects of `group`/`resource` downward.
    pub fn applies(&self, cluster: &str, group: &str, resource: &str) -> bool {
        self.lanes().get(cluster).is_some_and(|lane| {
            lane.types
                .contains(&(group.to_owned(), resource.to_owned()))
        })
    }

    /// Queues `change` of `key` for `cluster`, if its agent applies that
    /// type (call it under the placement view's write lock).
    pub fn changed(&self, cluster: &str, key: &ObjectKey, uid: &str, change: Change) {
        let mut lanes = self.lanes();
        let Some(lane) = lanes.get_mut(cluster) else {
            return;
        };
        if !lane
            .types
            .contains(&(key.group.clone(), key.resource.clone()))
        {
            return;
        }
        let before = lane.queue.len();
        lane.queue.push(key.clone(), uid.to_owned(), change);
        self.count_queue(before, lane.queue.len());
        lane.wake.notify_one();
    }

    /// The types `cluster`'s agent applies; empty without a lane.
    pub fn types(&self, cluster: &str) -> HashSet<(String, String)> {
        self.lanes()
            .get(cluster)
            .map(|lane| lane.types.clone())
            .unwrap_or_default()
    }

    /// Publishes how many objects placed on `cluster` it applies.
    pub fn set_objects(&self, cluster: &str, objects: usize) {
        self.metrics
            .downstream_objects
            .with_label_values(&[cluster])
            .set(i64::try_from(objects).unwrap_or(i64::MAX));
    }

    fn count_queue(&self, before: usize, after: usize) {
        let delta = i64::try_from(after).unwrap_or(i64::MAX) - i64::try_from(before).unwrap_or(0);
        self.metrics.downstream_queue.add(delta);
    }

    /// The next batch for `cluster`'s agent: at most `max`, keeping at most
    /// `window` unacknowledged in flight.
    pub fn next_batch(&self, cluster: &str, max: usize, window: u64) -> Vec<Queued> {
        self.lanes()
            .get_mut(cluster)
            .map(|lane| lane.queue.next_batch(max, window))
            .unwrap_or_default()
    }

    /// Takes `cluster`'s acknowledgement; returns what it confirmed. Refused
    /// applies are recorded ([`Downstream::failures`]); an object applied
    /// since clears its record.
    pub fn acked(&self, cluster: &str, ack: &DownwardAck) -> Confirmed {
        let (confirmed, failed) = {
            let mut lanes = self.lanes();
            let Some(lane) = lanes.get_mut(cluster) else {
                return Confirmed::default();
            };
            let before = lane.queue.len();
            let confirmed = lane.queue.ack(ack.seq);
            self.count_queue(before, lane.queue.len());
            (confirmed, &ack.failures)
        };
        let failed: HashMap<u64, &ApplyFailure> = failed.iter().map(|f| (f.seq, f)).collect();
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        for (seq, key) in &confirmed.applied {
            let record = failures.entry(key.clone()).or_default();
            let changed = match failed.get(seq) {
                Some(failure) => {
                    let new = (failure.reason.clone(), failure.message.clone());
                    record.insert(cluster.to_owned(), new.clone()) != Some(new)
                }
                None => record.remove(cluster).is_some(),
            };
            if record.is_empty() {
                failures.remove(key);
            }
            if changed {
                self.write_queue.push(key.clone(), cluster);
            }
        }
        for key in &confirmed.deleted {
            if let Some(record) = failures.get_mut(key)
                && record.remove(cluster).is_some()
            {
                if record.is_empty() {
                    failures.remove(key);
                }
                self.write_queue.push(key.clone(), cluster);
            }
        }
        confirmed
    }

    /// The end of `cluster`'s snapshot, once everything in it was sent and
    /// the window has room; the caller sends it.
    pub fn snapshot_end_due(&self, cluster: &str, window: u64) -> Option<u64> {
        self.lanes()
            .get_mut(cluster)
            .and_then(|lane| lane.queue.snapshot_end_due(window))
    }

    /// Whether `cluster`'s lane is in the middle of a snapshot.
    pub fn in_snapshot(&self, cluster: &str) -> bool {
        self.lanes()
            .get(cluster)
            .is_some_and(|lane| lane.queue.in_snapshot())
    }

    /// Whether `cluster`'s queue has something to send.
    pub fn has_unsent(&self, cluster: &str) -> bool {
        self.lanes()
            .get(cluster)
            .is_some_and(|lane| lane.queue.has_unsent())
    }

    /// The clusters that refused to apply `key`, with reason and message.
    pub fn failures(&self, key: &ObjectKey) -> ApplyFailures {
        self.failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .cloned()
            .unwrap_or_default()
    }
}
