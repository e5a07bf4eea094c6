//! The writer's work queue: object keys whose upstream status may be out of
//! date, each at most once, so the queue is bounded by the number of objects,
//! never by traffic.
//!
//! Each key is queued on behalf of the clusters whose changes it carries
//! (the ones that reported, or whose state changed): the writer serves them
//! fairly ([`super::fair`]), and each cluster's backlog is known
//! ([`WriteQueue::cluster_depth`]), so a cluster that floods the hub is the
//! only one throttled and the only one kept waiting.
//!
//! A key marked dirty while it is being written is written again once the
//! current write finishes (never twice at the same time). A key can wait for
//! a retry until a deadline (after a 429 or a failure); marking it dirty
//! meanwhile does not cut the wait short.
//!
//! With a settle time, a key that becomes dirty waits that long before it is
//! due, and further changes meanwhile ride along: a burst of changes to one
//! object becomes one write of its latest status instead of one write per
//! change the writer happened to be idle for. A key that keeps changing
//! waits longer, while its changes keep coming at their usual pace, up to a
//! cap ([`super::pace`]). Either way the delay it adds is bounded.

use std::collections::{BTreeSet, HashMap};
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::fair::Flows;
use super::pace::{Paces, SettleTimes};
use crate::metrics::Metrics;
use crate::store::{ClusterName, ObjectKey};

/// Keys waiting to be written, coalesced.
#[derive(Debug)]
pub struct WriteQueue {
    state: Mutex<State>,
    changed: Notify,
    metrics: Arc<Metrics>,
}

/// The clusters a key is queued for (a handful at most: the clusters the
/// object is placed on).
type Sources = Vec<ClusterName>;

#[derive(Debug)]
struct State {
    /// Every key settling, ready or waiting for a retry.
    queued: HashMap<ObjectKey, Pending>,
    /// Keys not due yet (settle or retry), by deadline (the counter keeps
    /// entries unique).
    delayed: BTreeSet<(Instant, u64, ObjectKey)>,
    /// Ready keys in fair order.
    flows: Flows,
    /// Keys being written right now, with the clusters they carry.
    in_flight: HashMap<ObjectKey, Sources>,
    /// Keys marked dirty while being written, and by which clusters.
    dirty_in_flight: HashMap<ObjectKey, Sources>,
    /// Keys queued per cluster (settling, ready or waiting for a retry).
    depth: HashMap<ClusterName, usize>,
    counter: u64,
    /// How fast each key changed lately: how long it settles.
    paces: Paces,
}

#[derive(Debug)]
struct Pending {
    sources: Sources,
    due: Due,
}

#[derive(Debug, Clone, Copy)]
enum Due {
    /// In its clusters' flows since `since`, with this ticket.
    Ready { ticket: u64, since: Instant },
    /// In `delayed` until `at` (entry `id`).
    Delayed {
        at: Instant,
        id: u64,
        window: Option<Window>,
    },
}

/// A settle window (a retry has none: changes never move its deadline).
#[derive(Debug, Clone, Copy)]
struct Window {
    opened: Instant,
    /// Changes may keep it open until then at the latest.
    until: Instant,
}

/// When a key that is not queued becomes due.
#[derive(Debug, Clone, Copy)]
enum Wait {
    /// After its settle time, which its further changes may stretch.
    Settle,
    /// Not before this long (a retry).
    Retry(Duration),
}

impl WriteQueue {
    /// A queue whose keys are due as soon as they are dirty.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self::with_settle(metrics, Duration::ZERO)
    }

    /// A queue whose newly dirty keys wait `settle` before they are due.
    pub fn with_settle(metrics: Arc<Metrics>, settle: Duration) -> Self {
        Self::with_settle_times(metrics, SettleTimes::fixed(settle))
    }

    /// A queue whose newly dirty keys wait `times.base` before they are due,
    /// or longer (up to `times.max`) while they keep changing.
    pub fn with_settle_times(metrics: Arc<Metrics>, times: SettleTimes) -> Self {
        Self {
            state: Mutex::new(State {
                queued: HashMap::new(),
                delayed: BTreeSet::new(),
                flows: Flows::default(),
                in_flight: HashMap::new(),
                dirty_in_flight: HashMap::new(),
                depth: HashMap::new(),
                counter: 0,
                paces: Paces::new(times),
            }),
            changed: Notify::new(),
            metrics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent before it can panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks `key` as possibly out of date upstream because of a change
    /// from `cluster` (a report, or its state).
    pub fn push(&self, key: ObjectKey, cluster: &str) {
        {
            let mut state = self.lock();
            let now = Instant::now();
            state.paces.changed(&key, now);
            if state.in_flight.contains_key(&key) {
                add_source(state.dirty_in_flight.entry(key).or_default(), cluster);
            } else if state.queued.contains_key(&key) {
                state.stretch(&key, now);
                state.add_source(&key, cluster, &self.metrics);
            } else {
                state.enqueue(key, vec![cluster.to_owned()], Wait::Settle, &self.metrics);
            }
            self.metrics
                .write_queue_depth
                .set(state.queued.len() as i64);
        }
        self.changed.notify_waiters();
    }

    /// Waits for the next key that is due, in fair order, and marks it in
    /// flight. The caller must call [`WriteQueue::done`] for it.
    pub async fn next(&self) -> ObjectKey {
        loop {
            let mut notified = pin!(self.changed.notified());
            notified.as_mut().enable();
            let deadline = {
                let mut state = self.lock();
                if let Some(key) = state.pop_due(Instant::now(), &self.metrics) {
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
            let mut sources = state.in_flight.remove(&key).unwrap_or_default();
            let dirty = state.dirty_in_flight.remove(&key);
            if let Some(delay) = retry_after {
                for cluster in dirty.iter().flatten() {
                    add_source(&mut sources, cluster);
                }
                state.enqueue(key, sources, Wait::Retry(delay), &self.metrics);
            } else if let Some(dirty) = dirty {
                state.enqueue(key, dirty, Wait::Settle, &self.metrics);
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

    /// Keys queued on behalf of `cluster` (settling, ready or waiting for a
    /// retry): its backlog, which decides whether it is throttled.
    pub fn cluster_depth(&self, cluster: &str) -> usize {
        self.lock().depth.get(cluster).copied().unwrap_or(0)
    }

    /// Removes and returns every ready key, in fair order (tests of the
    /// store's marking).
    #[cfg(test)]
    pub(crate) fn drain_ready(&self) -> Vec<ObjectKey> {
        let mut state = self.lock();
        let mut keys = Vec::new();
        while let Some((cluster, ticket, key)) = state.flows.pop() {
            state.dequeue(&key, &cluster, ticket, &self.metrics);
            state.in_flight.remove(&key);
            keys.push(key);
        }
        keys
    }
}

/// Adds `cluster` to `sources` unless it is there.
fn add_source(sources: &mut Sources, cluster: &str) -> bool {
    if sources.iter().any(|c| c == cluster) {
        return false;
    }
    sources.push(cluster.to_owned());
    true
}

impl State {
    /// Queues a key that is not queued, for `sources`: ready now, or once
    /// it has settled or its retry is due.
    fn enqueue(&mut self, key: ObjectKey, sources: Sources, wait: Wait, metrics: &Metrics) {
        for cluster in &sources {
            self.count(cluster, 1, metrics);
        }
        let now = Instant::now();
        let (delay, window) = match wait {
            Wait::Retry(delay) => (delay, None),
            Wait::Settle => {
                let times = self.paces.times();
                let window = Window {
                    opened: now,
                    until: now + times.max.max(times.base),
                };
                (self.paces.quiet(&key, now), Some(window))
            }
        };
        if delay.is_zero() {
            self.make_ready(key, sources);
        } else {
            self.counter += 1;
            let id = self.counter;
            let at = now + delay;
            self.delayed.insert((at, id, key.clone()));
            let due = Due::Delayed { at, id, window };
            self.queued.insert(key, Pending { sources, due });
        }
    }

    /// `key`, settling, changed again at `now`: its window stays open for its
    /// quiet time from now, within the window's cap.
    fn stretch(&mut self, key: &ObjectKey, now: Instant) {
        let quiet = self.paces.quiet(key, now);
        let Some(pending) = self.queued.get_mut(key) else {
            return;
        };
        let Due::Delayed {
            at,
            id,
            window: Some(window),
        } = pending.due
        else {
            return;
        };
        // A window that closed stays closed (the key waits for its turn).
        let later = (now + quiet).min(window.until);
        if at <= now || later <= at {
            return;
        }
        pending.due = Due::Delayed {
            at: later,
            id,
            window: Some(window),
        };
        self.delayed.remove(&(at, id, key.clone()));
        self.delayed.insert((later, id, key.clone()));
    }

    /// Puts `key` in the flow of each of `sources`.
    fn make_ready(&mut self, key: ObjectKey, sources: Sources) {
        let ticket = self.flows.ticket();
        for cluster in &sources {
            self.flows.insert(cluster, ticket, key.clone());
        }
        let due = Due::Ready {
            ticket,
            since: Instant::now(),
        };
        self.queued.insert(key, Pending { sources, due });
    }

    /// `cluster` dirtied a queued key: the key is queued for it too.
    fn add_source(&mut self, key: &ObjectKey, cluster: &str, metrics: &Metrics) {
        let Some(pending) = self.queued.get_mut(key) else {
            return;
        };
        if !add_source(&mut pending.sources, cluster) {
            return;
        }
        if let Due::Ready { ticket, .. } = pending.due {
            self.flows.insert(cluster, ticket, key.clone());
        }
        self.count(cluster, 1, metrics);
    }

    fn pop_due(&mut self, now: Instant, metrics: &Metrics) -> Option<ObjectKey> {
        while let Some(first) = self.delayed.first() {
            if first.0 > now {
                break;
            }
            if let Some((at, _, key)) = self.delayed.pop_first()
                && let Some(pending) = self.queued.remove(&key)
            {
                if let Due::Delayed {
                    window: Some(window),
                    ..
                } = pending.due
                {
                    metrics
                        .write_settle
                        .observe(at.saturating_duration_since(window.opened).as_secs_f64());
                }
                self.make_ready(key, pending.sources);
            }
        }
        let (cluster, ticket, key) = self.flows.pop()?;
        if let Some(since) = self.dequeue(&key, &cluster, ticket, metrics) {
            metrics
                .write_queue_wait
                .observe(now.saturating_duration_since(since).as_secs_f64());
        }
        Some(key)
    }

    /// Takes `key`, just popped from `cluster`'s flow, out of the queue and
    /// into flight; returns since when it was ready.
    fn dequeue(
        &mut self,
        key: &ObjectKey,
        cluster: &str,
        ticket: u64,
        metrics: &Metrics,
    ) -> Option<Instant> {
        let pending = self.queued.remove(key)?;
        for other in pending.sources.iter().filter(|c| *c != cluster) {
            self.flows.remove(other, &key.workspace, ticket);
        }
        for source in &pending.sources {
            self.count(source, -1, metrics);
        }
        self.in_flight.insert(key.clone(), pending.sources);
        match pending.due {
            Due::Ready { since, .. } => Some(since),
            Due::Delayed { .. } => None,
        }
    }

    /// Adds `by` to `cluster`'s backlog and its gauge (whose series goes
    /// away when the backlog does, so only clusters with one have it).
    fn count(&mut self, cluster: &str, by: isize, metrics: &Metrics) {
        let depth = match self.depth.get_mut(cluster) {
            Some(depth) => depth,
            None => self.depth.entry(cluster.to_owned()).or_default(),
        };
        *depth = depth.saturating_add_signed(by);
        let gauge = &metrics.write_queue_cluster_depth;
        if *depth == 0 {
            self.depth.remove(cluster);
            // An error only says the series was never set: nothing to remove.
            gauge.remove_label_values(&[cluster]).ok();
        } else {
            gauge.with_label_values(&[cluster]).set(*depth as i64);
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt as _;

    use super::*;
    use crate::store::KeyParts;

    fn queue() -> WriteQueue {
        WriteQueue::new(Arc::new(
            Metrics::new().unwrap_or_else(|e| panic!("metrics: {e}")),
        ))
    }

    #[tokio::test]
    async fn a_key_is_queued_once() {
        let queue = queue();
        queue.push(ObjectKey::deployment("a"), "c1");
        queue.push(ObjectKey::deployment("b"), "c1");
        queue.push(ObjectKey::deployment("a"), "c1");
        assert_eq!(queue.len(), 2);
        assert_eq!(queue.next().await, ObjectKey::deployment("a"));
        assert_eq!(queue.next().await, ObjectKey::deployment("b"));
        assert!(queue.is_empty());
        assert_eq!(queue.metrics.write_queue_depth.get(), 0);
    }

    #[tokio::test]
    async fn dirty_while_in_flight_is_written_again_after() {
        let queue = queue();
        queue.push(ObjectKey::deployment("a"), "c1");
        let a = queue.next().await;
        queue.push(ObjectKey::deployment("a"), "c1");
        queue.push(ObjectKey::deployment("a"), "c1");
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
        queue.push(ObjectKey::deployment("a"), "c1");
        let a = queue.next().await;
        let start = Instant::now();
        queue.done(a, Some(Duration::from_secs(5)));
        queue.push(ObjectKey::deployment("a"), "c1"); // a change does not cut the wait short
        assert_eq!(queue.len(), 1);
        assert_eq!(queue.next().await, ObjectKey::deployment("a"));
        assert!(start.elapsed() >= Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_within_the_settle_time_is_one_write() {
        let queue = WriteQueue::with_settle(
            Arc::new(Metrics::new().unwrap_or_else(|e| panic!("metrics: {e}"))),
            Duration::from_millis(20),
        );
        let start = Instant::now();
        queue.push(ObjectKey::deployment("a"), "c1");
        tokio::time::advance(Duration::from_millis(15)).await;
        queue.push(ObjectKey::deployment("a"), "c1"); // rides along: the window is not restarted
        assert_eq!(queue.len(), 1);
        assert_eq!(queue.next().await, ObjectKey::deployment("a"));
        assert_eq!(start.elapsed(), Duration::from_millis(20));
        // Dirty while in flight: written again, after its own settle time.
        queue.push(ObjectKey::deployment("a"), "c1");
        queue.done(ObjectKey::deployment("a"), None);
        let rewritten = Instant::now();
        assert_eq!(queue.next().await, ObjectKey::deployment("a"));
        assert_eq!(rewritten.elapsed(), Duration::from_millis(20));
    }

    fn learning(base_ms: u64, max_ms: u64) -> WriteQueue {
        WriteQueue::with_settle_times(
            Arc::new(Metrics::new().unwrap_or_else(|e| panic!("metrics: {e}"))),
            SettleTimes {
                base: Duration::from_millis(base_ms),
                max: Duration::from_millis(max_ms),
            },
        )
    }

    #[tokio::test(start_paused = true)]
    async fn an_isolated_change_is_due_after_the_base_settle_time() {
        let queue = learning(20, 500);
        let start = Instant::now();
        queue.push(ObjectKey::deployment("a"), "c1");
        assert_eq!(queue.next().await, ObjectKey::deployment("a"));
        assert_eq!(start.elapsed(), Duration::from_millis(20));
        queue.done(ObjectKey::deployment("a"), None);
        // Changes 200 ms apart (1,000 changes/s over 200 objects): each
        // still waits the base time only.
        for _ in 0..5 {
            tokio::time::advance(Duration::from_millis(180)).await;
            let changed = Instant::now();
            queue.push(ObjectKey::deployment("a"), "c1");
            assert_eq!(queue.next().await, ObjectKey::deployment("a"));
            assert_eq!(changed.elapsed(), Duration::from_millis(20));
            queue.done(ObjectKey::deployment("a"), None);
        }
        let text = queue.metrics.render();
        assert!(
            text.contains("uplink_hub_write_settle_seconds_bucket{le=\"0.02\"} 6"),
            "every settle time was the base one:\n{text}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_changing_rapidly_waits_longer_but_never_beyond_the_cap() {
        let queue = Arc::new(learning(20, 300));
        let ms = Duration::from_millis;
        // First change: nothing known yet, written after the base time.
        let start = Instant::now();
        queue.push(ObjectKey::deployment("a"), "c1");
        queue.done(queue.next().await, None);
        assert_eq!(start.elapsed(), ms(20));
        // Then it changes every 40 ms, 20 times (from 40 to 800 ms).
        tokio::time::advance(ms(20)).await;
        let pusher = tokio::spawn({
            let queue = queue.clone();
            async move {
                for _ in 0..20 {
                    queue.push(ObjectKey::deployment("a"), "c1");
                    tokio::time::sleep(ms(40)).await;
                }
            }
        });
        let mut writes = Vec::new();
        for _ in 0..3 {
            let written = queue.next().await;
            writes.push(start.elapsed());
            queue.done(written, None);
        }
        // The window opened at 40 ms stays open while the changes keep
        // coming, up to the cap (300 ms); so does the next one (opened by
        // the change at 360 ms); the last one closes 160 ms (four of its
        // gaps) after the last change, at 800 ms.
        assert_eq!(writes, [ms(340), ms(660), ms(960)]);
        assert!(pusher.await.is_ok());
        assert!(queue.is_idle());
        let text = queue.metrics.render();
        assert!(
            text.contains("uplink_hub_write_settle_seconds_bucket{le=\"0.5\"} 4"),
            "settle times of 20, 300, 300 and 280 ms:\n{text}"
        );
        assert!(
            text.contains("uplink_hub_write_settle_seconds_bucket{le=\"0.2\"} 1"),
            "one isolated change:\n{text}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_learned_delay_decays_once_the_key_goes_quiet() {
        let queue = learning(20, 300);
        let ms = Duration::from_millis;
        // Changes 30 ms apart, each written as soon as it is due.
        for _ in 0..5 {
            queue.push(ObjectKey::deployment("a"), "c1");
            tokio::time::advance(ms(30)).await;
            if let Some(written) = queue.next().now_or_never() {
                queue.done(written, None);
            }
        }
        // Busy: the next change waits four of its gaps.
        let changed = Instant::now();
        queue.push(ObjectKey::deployment("a"), "c1");
        queue.done(queue.next().await, None);
        assert_eq!(changed.elapsed(), ms(120));
        // A short pause (as between two bursts) keeps it busy: half its
        // rate, a gap of 2*30*150/180 = 50 ms, so the next change waits 200 ms.
        tokio::time::advance(ms(30)).await;
        let changed = Instant::now();
        queue.push(ObjectKey::deployment("a"), "c1");
        queue.done(queue.next().await, None);
        assert_eq!(changed.elapsed(), ms(200));
        // A pause longer than the memory (50 base settle times): the next
        // change is an isolated one again.
        tokio::time::advance(ms(1000)).await;
        let changed = Instant::now();
        queue.push(ObjectKey::deployment("a"), "c1");
        queue.done(queue.next().await, None);
        assert_eq!(changed.elapsed(), ms(20));
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_is_not_stretched_by_changes() {
        let queue = learning(20, 300);
        for _ in 0..5 {
            queue.push(ObjectKey::deployment("a"), "c1");
            tokio::time::advance(Duration::from_millis(10)).await;
        }
        let a = queue.next().await;
        queue.done(a, Some(Duration::from_millis(100)));
        let failed = Instant::now();
        for _ in 0..9 {
            tokio::time::advance(Duration::from_millis(10)).await;
            queue.push(ObjectKey::deployment("a"), "c1");
        }
        assert_eq!(queue.next().await, ObjectKey::deployment("a"));
        assert_eq!(failed.elapsed(), Duration::from_millis(100));
    }

    fn key_in(workspace: &str, name: &str) -> ObjectKey {
        ObjectKey::new(KeyParts {
            workspace: workspace.into(),
            ..ObjectKey::deployment(name).parts().clone()
        })
    }

    #[tokio::test]
    async fn backlogs_are_per_cluster_and_their_gauges_go_with_them() {
        let queue = queue();
        for i in 0..5 {
            queue.push(ObjectKey::deployment(&format!("flood-{i}")), "a");
        }
        queue.push(ObjectKey::deployment("mine"), "b");
        queue.push(ObjectKey::deployment("flood-0"), "b"); // b changed a shared object too
        assert_eq!(queue.cluster_depth("a"), 5);
        assert_eq!(queue.cluster_depth("b"), 2);
        assert_eq!(queue.len(), 6);
        let gauge = &queue.metrics.write_queue_cluster_depth;
        assert_eq!(gauge.with_label_values(&["b"]).get(), 2);
        // Fair order: a, b, a, b (b's second is the shared one, taken already).
        let mut order = Vec::new();
        for _ in 0..6 {
            let k = queue.next().await;
            order.push(k.name.clone());
            queue.done(k, None);
        }
        assert_eq!(
            order,
            [
                "flood-0", "mine", "flood-1", "flood-2", "flood-3", "flood-4"
            ]
        );
        assert_eq!(queue.cluster_depth("a"), 0);
        assert!(queue.is_idle());
        let text = queue.metrics.render();
        assert!(
            !text.contains("uplink_hub_write_queue_cluster_depth{"),
            "no series once no cluster has a backlog:\n{text}"
        );
    }

    #[tokio::test]
    async fn workspaces_of_one_cluster_take_turns() {
        let queue = queue();
        for i in 0..3 {
            queue.push(key_in("w1", &format!("a{i}")), "c1");
        }
        queue.push(key_in("w2", "x"), "c1");
        let first = queue.next().await;
        let second = queue.next().await;
        assert_eq!((first.name.as_str(), second.name.as_str()), ("a0", "x"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_keeps_its_clusters_and_adds_those_that_dirtied_it() {
        let queue = queue();
        queue.push(ObjectKey::deployment("a"), "c1");
        let a = queue.next().await;
        queue.push(ObjectKey::deployment("a"), "c2");
        assert_eq!(queue.cluster_depth("c1"), 0, "in flight is not queued");
        queue.done(a, Some(Duration::from_secs(1)));
        assert_eq!(queue.cluster_depth("c1"), 1);
        assert_eq!(queue.cluster_depth("c2"), 1);
        assert_eq!(queue.next().await, ObjectKey::deployment("a"));
        assert_eq!(queue.cluster_depth("c2"), 0);
    }

    /// The finding: 95,000 objects of one cluster ahead of another's one
    /// change kept it out of KCP for about 25 minutes at 50 writes/s. Now
    /// it is the next but one write taken.
    #[tokio::test]
    async fn another_clusters_flood_delays_a_change_by_one_write() {
        let queue = queue();
        for i in 0..100_000 {
            queue.push(
                key_in(&format!("ws-{}", i % 7), &format!("flood-{i}")),
                "hostile",
            );
        }
        queue.push(key_in("tenant", "legit"), "honest");
        let first = queue.next().await;
        let second = queue.next().await;
        assert_eq!(first.name, "flood-0");
        assert_eq!(second.name, "legit");
        assert_eq!(queue.cluster_depth("hostile"), 99_999);
    }
}
