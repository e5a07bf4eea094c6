//! The upsync writer's queue: keyed by (cluster, object), latest report
//! wins, bounded. Upsync is not best effort, so nothing is ever dropped:
//! a new key that finds the queue full waits for room (and the session
//! that pushes it, so its agent's acks wait too: the protocol's own
//! backpressure). A report of a key already waiting replaces it where it
//! stands; one of a key being written waits until that write is done, so
//! one (cluster, object) is never written twice at once. A write that
//! failed comes back after its backoff, unless a newer report came in
//! meanwhile (which is written instead, since it carries the whole
//! desired state).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::{UpsyncId, UpsyncReport};
use crate::metrics::Metrics;

/// Reports waiting for the upsync writer.
#[derive(Debug)]
pub struct UpsyncQueue {
    waiting: Mutex<Waiting>,
    /// Woken when a report is ready (one consumer: the writer).
    ready: Notify,
    /// Woken when room is made (sessions waiting to push).
    room: Notify,
    capacity: usize,
    metrics: Arc<Metrics>,
}

#[derive(Debug, Default)]
struct Waiting {
    /// The latest report per key that is not being written.
    reports: HashMap<UpsyncId, UpsyncReport>,
    /// Keys ready to be written, oldest first, each once.
    order: VecDeque<UpsyncId>,
    /// Keys waiting out a retry delay, by when (and a tie-breaker).
    delayed: BTreeMap<(Instant, u64), UpsyncId>,
    /// Keys being written.
    in_flight: HashSet<UpsyncId>,
    ticket: u64,
}

impl UpsyncQueue {
    /// A queue of at most `capacity` waiting reports (at least one).
    pub fn new(capacity: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            waiting: Mutex::default(),
            ready: Notify::new(),
            room: Notify::new(),
            capacity: capacity.max(1),
            metrics,
        }
    }

    fn waiting(&self) -> MutexGuard<'_, Waiting> {
        // Never held across an await or a call that can panic midway.
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `report`, waiting for room when its key is new and the queue
    /// is full.
    pub async fn push(&self, report: UpsyncReport) {
        let mut report = Some(report);
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            {
                let mut waiting = self.waiting();
                let Some(pending) = report.take() else { return };
                let id = pending.id();
                if waiting.reports.contains_key(&id) || waiting.reports.len() < self.capacity {
                    self.insert(&mut waiting, id, pending);
                    return;
                }
                report = Some(pending);
            }
            room.await;
        }
    }

    /// Queues `report` whatever the bound (the writer's own reconciliation,
    /// bounded by the objects it knows; it must not wait on itself).
    pub fn push_now(&self, report: UpsyncReport) {
        let mut waiting = self.waiting();
        let id = report.id();
        self.insert(&mut waiting, id, report);
    }

    fn insert(&self, waiting: &mut Waiting, id: UpsyncId, report: UpsyncReport) {
        let queued = waiting.reports.insert(id.clone(), report).is_some();
        // A key being written is queued again when its write is done.
        if !queued && !waiting.in_flight.contains(&id) {
            waiting.order.push_back(id);
        }
        self.metrics
            .upsync_queue_depth
            .set(waiting.reports.len() as i64);
        self.ready.notify_one();
    }

    /// The oldest ready report, if any; else when the next delayed one is due.
    fn pop(&self) -> Result<UpsyncReport, Option<Instant>> {
        let mut waiting = self.waiting();
        let now = Instant::now();
        while let Some(entry) = waiting.delayed.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let id = entry.remove();
            waiting.order.push_back(id);
        }
        while let Some(id) = waiting.order.pop_front() {
            if let Some(report) = waiting.reports.remove(&id) {
                waiting.in_flight.insert(id);
                self.metrics
                    .upsync_queue_depth
                    .set(waiting.reports.len() as i64);
                drop(waiting);
                self.room.notify_waiters();
                return Ok(report);
            }
        }
        Err(waiting.delayed.keys().next().map(|(at, _)| *at))
    }

    /// Waits for the next report to write; the caller must call
    /// [`UpsyncQueue::done`] with its id when the write is over.
    pub async fn next(&self) -> UpsyncReport {
        loop {
            let ready = self.ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            match self.pop() {
                Ok(report) => return report,
                Err(Some(due)) => {
                    tokio::select! {
                        () = ready => {}
                        () = tokio::time::sleep_until(due) => {}
                    }
                }
                Err(None) => ready.await,
            }
        }
    }

    /// Ends the write of `id`: `retry` brings its report back after the
    /// delay, unless a newer one arrived meanwhile.
    pub fn done(&self, id: &UpsyncId, retry: Option<(UpsyncReport, Duration)>) {
        let mut waiting = self.waiting();
        waiting.in_flight.remove(id);
        if waiting.reports.contains_key(id) {
            waiting.order.push_back(id.clone());
        } else if let Some((report, delay)) = retry {
            waiting.reports.insert(id.clone(), report);
            waiting.ticket += 1;
            let ticket = waiting.ticket;
            waiting
                .delayed
                .insert((Instant::now() + delay, ticket), id.clone());
        }
        self.metrics
            .upsync_queue_depth
            .set(waiting.reports.len() as i64);
        drop(waiting);
        self.ready.notify_one();
    }

    /// Reports waiting (not being written).
    pub fn len(&self) -> usize {
        self.waiting().reports.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::super::UpsyncChange;
    use super::*;
    use crate::store::ObjectKey;

    fn report(cluster: &str, name: &str, uid: &str) -> UpsyncReport {
        UpsyncReport {
            cluster: cluster.into(),
            key: ObjectKey::deployment(name),
            downstream_uid: uid.into(),
            change: UpsyncChange::Deleted,
        }
    }

    fn queue(capacity: usize) -> UpsyncQueue {
        let metrics = Arc::new(Metrics::new().unwrap_or_else(|e| panic!("{e}")));
        UpsyncQueue::new(capacity, metrics)
    }

    #[tokio::test(start_paused = true)]
    async fn the_latest_report_per_key_wins_and_a_full_queue_waits() {
        let queue = Arc::new(queue(2));
        queue.push(report("a", "web", "1")).await;
        queue.push(report("a", "web", "2")).await;
        queue.push(report("b", "web", "3")).await;
        assert_eq!(queue.len(), 2);
        assert_eq!(queue.metrics.upsync_queue_depth.get(), 2);
        // Full: a new key waits for room; a queued one does not.
        let pushing = tokio::spawn({
            let queue = queue.clone();
            async move { queue.push(report("a", "api", "4")).await }
        });
        tokio::task::yield_now().await;
        assert!(!pushing.is_finished());
        let first = queue.next().await;
        assert_eq!(first.downstream_uid, "2");
        pushing.await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(queue.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_in_flight_waits_and_a_retry_yields_to_a_newer_report() {
        let queue = queue(10);
        queue.push(report("a", "web", "1")).await;
        let first = queue.next().await;
        // A newer report while the first is written: not handed out yet.
        queue.push(report("a", "web", "2")).await;
        assert!(queue.pop().is_err());
        queue.done(&first.id(), Some((first.clone(), Duration::from_secs(5))));
        let second = queue.next().await;
        assert_eq!(second.downstream_uid, "2", "the newer one, at once");
        // A retry comes back after its delay.
        queue.done(&second.id(), Some((second.clone(), Duration::from_secs(5))));
        let started = Instant::now();
        let again = queue.next().await;
        assert_eq!(again.downstream_uid, "2");
        assert!(started.elapsed() >= Duration::from_secs(5));
        queue.done(&again.id(), None);
        assert!(queue.is_empty());
    }
}
