//! The writer's work queue: object keys whose upstream status may be out of
//! date, each at most once, so the queue is bounded by the number of objects,
//! never by traffic.
//!
//! A key marked dirty while it is being written is written again once the
//! current write finishes (never twice at the same time). A key can wait for
//! a retry until a deadline (after a 429 or a failure); marking it dirty
//! meanwhile does not cut the wait short.
//!
//! With a settle time, a key that becomes dirty waits that long before it is
//! due, and further changes meanwhile ride along: a burst of changes to one
//! object becomes one write of its latest status instead of one write per
//! change the writer happened to be idle for. It bounds the delay it adds.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::store::ObjectKey;

/// Keys waiting to be written, coalesced.
#[derive(Debug)]
pub struct WriteQueue {
    state: Mutex<State>,
    changed: Notify,
    metrics: Arc<Metrics>,
    /// How long a newly dirty key waits before it is due.
    settle: Duration,
}

#[derive(Debug, Default)]
struct State {
    /// Keys ready now, in the order they became dirty.
    ready: VecDeque<ObjectKey>,
    /// Keys waiting for a retry, by deadline (the counter keeps entries unique).
    delayed: BTreeSet<(Instant, u64, ObjectKey)>,
    /// Every key in `ready` or `delayed`.
    queued: HashMap<ObjectKey, Queued>,
    /// Keys being written right now.
    in_flight: HashSet<ObjectKey>,
    /// Keys marked dirty while being written.
    dirty_in_flight: HashSet<ObjectKey>,
    counter: u64,
}

#[derive(Debug, Clone, Copy)]
enum Queued {
    Ready,
    Delayed,
}

impl WriteQueue {
    /// A queue whose keys are due as soon as they are dirty.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self::with_settle(metrics, Duration::ZERO)
    }

    /// A queue whose newly dirty keys wait `settle` before they are due.
    pub fn with_settle(metrics: Arc<Metrics>, settle: Duration) -> Self {
        Self {
            state: Mutex::default(),
            changed: Notify::new(),
            metrics,
            settle,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent before it can panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks `key` as possibly out of date upstream.
    pub fn push(&self, key: ObjectKey) {
        {
            let mut state = self.lock();
            if state.in_flight.contains(&key) {
                state.dirty_in_flight.insert(key);
            } else if !state.queued.contains_key(&key) {
                state.enqueue(key, self.settle);
            }
            self.metrics
                .write_queue_depth
                .set(state.queued.len() as i64);
        }
        self.changed.notify_waiters();
    }

    /// Waits for the next key that is due and marks it in flight. The caller
    /// must call [`WriteQueue::done`] for it.
    pub async fn next(&self) -> ObjectKey {
        loop {
            let mut notified = pin!(self.changed.notified());
            notified.as_mut().enable();
            let deadline = {
                let mut state = self.lock();
                if let Some(key) = state.pop_due(Instant::now()) {
                    self.metrics
                        .write_queue_depth
                        .set(state.queued.len() as i64);
                    return key;
                }
                state.delayed.first().map(|(at, _, _)| *at)
            };
            match deadline {
                Some(at) => {
                    tokio::select! {
                        () = notified => {}
                        () = tokio::time::sleep_until(at) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Finishes the write of `key`: retries it after `retry_after` if given,
    /// or writes it again if it was marked dirty meanwhile.
    pub fn done(&self, key: ObjectKey, retry_after: Option<Duration>) {
        {
            let mut state = self.lock();
            state.in_flight.remove(&key);
            let dirty = state.dirty_in_flight.remove(&key);
            if let Some(delay) = retry_after {
                state.counter += 1;
                let id = state.counter;
                state
                    .delayed
                    .insert((Instant::now() + delay, id, key.clone()));
                state.queued.insert(key, Queued::Delayed);
            } else if dirty {
                state.enqueue(key, self.settle);
            }
            self.metrics
                .write_queue_depth
                .set(state.queued.len() as i64);
        }
        self.changed.notify_waiters();
    }

    /// Waits until nothing is queued, waiting for a retry or in flight.
    pub async fn idle(&self) {
        loop {
            let mut notified = pin!(self.changed.notified());
            notified.as_mut().enable();
            if self.is_idle() {
                return;
            }
            notified.await;
        }
    }

    pub fn is_idle(&self) -> bool {
        let state = self.lock();
        state.queued.is_empty() && state.in_flight.is_empty()
    }

    /// Keys queued (ready or waiting for a retry), not counting writes in flight.
    pub fn len(&self) -> usize {
        self.lock().queued.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes and returns every ready key (tests of the store's marking).
    #[cfg(test)]
    pub(crate) fn drain_ready(&self) -> Vec<ObjectKey> {
        let mut state = self.lock();
        let keys: Vec<_> = state.ready.drain(..).collect();
        for key in &keys {
            state.queued.remove(key);
        }
        keys
    }
}

impl State {
    /// Queues a key that is not queued: ready now, or after `settle`.
    fn enqueue(&mut self, key: ObjectKey, settle: Duration) {
        if settle.is_zero() {
            self.queued.insert(key.clone(), Queued::Ready);
            self.ready.push_back(key);
        } else {
            self.counter += 1;
            let id = self.counter;
            self.delayed
                .insert((Instant::now() + settle, id, key.clone()));
            self.queued.insert(key, Queued::Delayed);
        }
    }

    fn pop_due(&mut self, now: Instant) -> Option<ObjectKey> {
        while let Some(first) = self.delayed.first() {
            if first.0 > now {
                break;
            }
            if let Some((_, _, key)) = self.delayed.pop_first() {
                self.queued.insert(key.clone(), Queued::Ready);
                self.ready.push_back(key);
            }
        }
        let key = self.ready.pop_front()?;
        self.queued.remove(&key);
        self.in_flight.insert(key.clone());
        Some(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> ObjectKey {
        ObjectKey {
            workspace: "ws".into(),
            group: String::new(),
            version: "v1".into(),
            resource: "pods".into(),
            kind: "Pod".into(),
            namespace: Some("default".into()),
            name: name.into(),
        }
    }

    fn queue() -> WriteQueue {
        WriteQueue::new(Arc::new(
            Metrics::new().unwrap_or_else(|e| panic!("metrics: {e}")),
        ))
    }

    #[tokio::test]
    async fn a_key_is_queued_once() {
        let queue = queue();
        queue.push(key("a"));
        queue.push(key("b"));
        queue.push(key("a"));
        assert_eq!(queue.len(), 2);
        assert_eq!(queue.next().await, key("a"));
        assert_eq!(queue.next().await, key("b"));
        assert!(queue.is_empty());
        assert_eq!(queue.metrics.write_queue_depth.get(), 0);
    }

    #[tokio::test]
    async fn dirty_while_in_flight_is_written_again_after() {
        let queue = queue();
        queue.push(key("a"));
        let a = queue.next().await;
        queue.push(key("a"));
        queue.push(key("a"));
        assert!(queue.is_empty(), "not ready while in flight");
        queue.done(a, None);
        assert_eq!(queue.len(), 1);
        let again = queue.next().await;
        queue.done(again, None);
        assert!(queue.is_idle());
    }

    #[tokio::test(start_paused = true)]
    async fn retry_waits_for_its_deadline() {
        let queue = queue();
        queue.push(key("a"));
        let a = queue.next().await;
        let start = Instant::now();
        queue.done(a, Some(Duration::from_secs(5)));
        queue.push(key("a")); // a change does not cut the wait short
        assert_eq!(queue.len(), 1);
        assert_eq!(queue.next().await, key("a"));
        assert!(start.elapsed() >= Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_within_the_settle_time_is_one_write() {
        let queue = WriteQueue::with_settle(
            Arc::new(Metrics::new().unwrap_or_else(|e| panic!("metrics: {e}"))),
            Duration::from_millis(20),
        );
        let start = Instant::now();
        queue.push(key("a"));
        tokio::time::advance(Duration::from_millis(15)).await;
        queue.push(key("a")); // rides along: the window is not restarted
        assert_eq!(queue.len(), 1);
        assert_eq!(queue.next().await, key("a"));
        assert_eq!(start.elapsed(), Duration::from_millis(20));
        // Dirty while in flight: written again, after its own settle time.
        queue.push(key("a"));
        queue.done(key("a"), None);
        let rewritten = Instant::now();
        assert_eq!(queue.next().await, key("a"));
        assert_eq!(rewritten.elapsed(), Duration::from_millis(20));
    }
}
