//! Watches KCP for the counters a benchmark writes downstream and times how
//! long each write took to show up there; [`KcpWatch::start_on`] does the
//! same on other API servers for another value (the `downstream` scenario
//! watches the clusters for the sequence numbers it writes into KCP).
//!
//! A write of counter `c` to an object counts as shown once the watch
//! delivers a value `>= c` for that object: Uplink coalesces, so the other
//! side may skip straight to a later value, and that later value carries
//! every earlier one. Writes never shown are lost.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::runtime::watcher;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::fleet::counter_of;

/// The KCP side of a benchmark; aborts its watch when dropped.
#[derive(Debug)]
pub struct KcpWatch {
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
    task: JoinHandle<()>,
}

#[derive(Debug, Default)]
struct State {
    index: HashMap<String, usize>,
    /// The highest counter KCP showed per object.
    shown: Vec<Option<i64>>,
    /// Writes not shown yet, per object, oldest first: (counter, written at).
    pending: Vec<VecDeque<(i64, Instant)>>,
    /// Write-to-KCP times of the writes shown so far.
    latencies: Vec<Duration>,
    /// Changes the watch delivered after the first list.
    events: u64,
    /// Of `events`, those that raised an object's value: on a cluster whose
    /// controllers write status, the benchmark's own changes.
    value_changes: u64,
    /// The watched APIs whose first list is in.
    listed: usize,
    /// Reads the counter of an object.
    value_of: Option<ValueOf>,
}

/// Reads the counter a benchmark wrote from an object, if it carries one.
pub type ValueOf = fn(&Deployment) -> Option<i64>;

impl State {
    /// Records what `deployment` shows; true when it raised the object's value.
    fn observe(&mut self, deployment: &Deployment, now: Instant) -> bool {
        let Some(index) = deployment
            .metadata
            .name
            .as_ref()
            .and_then(|name| self.index.get(name))
            .copied()
        else {
            return false;
        };
        let Some(value) = self.value_of.unwrap_or(counter_of)(deployment) else {
            return false;
        };
        let mut raised = false;
        if let Some(shown) = self.shown.get_mut(index) {
            raised = shown.is_none_or(|old| value > old);
            *shown = Some(shown.map_or(value, |old| old.max(value)));
        }
        if let Some(pending) = self.pending.get_mut(index) {
            while pending.front().is_some_and(|(c, _)| *c <= value) {
                if let Some((_, at)) = pending.pop_front() {
                    self.latencies.push(now.saturating_duration_since(at));
                }
            }
        }
        raised
    }
}

impl KcpWatch {
    /// Starts watching `api` for the counters ([`counter_of`]) of the
    /// objects `names` (indexed in that order) and returns once the first
    /// list is in.
    pub async fn start(api: Api<Deployment>, names: &[String]) -> anyhow::Result<KcpWatch> {
        KcpWatch::start_on(vec![api], names, counter_of).await
    }

    /// Starts watching every one of `apis` for `value_of` of the objects
    /// `names` (names are unique across them; indexed in that order) and
    /// returns once every first list is in.
    pub async fn start_on(
        apis: Vec<Api<Deployment>>,
        names: &[String],
        value_of: ValueOf,
    ) -> anyhow::Result<KcpWatch> {
        let watched = apis.len();
        let state = Arc::new(Mutex::new(State {
            index: names
                .iter()
                .enumerate()
                .map(|(i, n)| (n.clone(), i))
                .collect(),
            shown: vec![None; names.len()],
            pending: vec![VecDeque::new(); names.len()],
            value_of: Some(value_of),
            ..State::default()
        }));
        let changed = Arc::new(Notify::new());
        let task = tokio::spawn({
            let (state, changed) = (state.clone(), changed.clone());
            async move {
                let streams = apis
                    .into_iter()
                    .map(|api| watcher(api, watcher::Config::default()).boxed());
                let mut events = futures::stream::select_all(streams);
                while let Some(event) = events.next().await {
                    let now = Instant::now();
                    let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
                    match event {
                        Ok(watcher::Event::Apply(d)) => {
                            state.events += 1;
                            if state.observe(&d, now) {
                                state.value_changes += 1;
                            }
                        }
                        Ok(watcher::Event::InitApply(d)) => {
                            state.observe(&d, now);
                        }
                        Ok(watcher::Event::InitDone) => state.listed += 1,
                        Ok(_) => {}
                        Err(error) => tracing::warn!(%error, "benchmark watch failed; it retries"),
                    }
                    drop(state);
                    changed.notify_waiters();
                }
            }
        });
        let watch = KcpWatch {
            state,
            changed,
            task,
        };
        watch
            .wait_until(Instant::now() + Duration::from_secs(30), |s| {
                s.listed >= watched
            })
            .await
            .then_some(())
            .ok_or_else(|| anyhow::anyhow!("the watch's first lists did not arrive within 30s"))?;
        Ok(watch)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records that counter `value` is about to be written to object `index`.
    pub fn expect(&self, index: usize, value: i64, at: Instant) {
        if let Some(pending) = self.lock().pending.get_mut(index) {
            pending.push_back((value, at));
        }
    }

    /// Takes back an expectation whose write failed.
    pub fn forget(&self, index: usize, value: i64) {
        if let Some(pending) = self.lock().pending.get_mut(index) {
            pending.retain(|(c, _)| *c != value);
        }
    }

    /// Writes not shown in KCP yet.
    pub fn pending(&self) -> usize {
        self.lock().pending.iter().map(VecDeque::len).sum()
    }

    /// Up to `limit` indexes of objects with writes not shown yet.
    pub fn pending_objects(&self, limit: usize) -> Vec<usize> {
        self.lock()
            .pending
            .iter()
            .enumerate()
            .filter(|(_, p)| !p.is_empty())
            .map(|(i, _)| i)
            .take(limit)
            .collect()
    }

    /// The highest counter KCP showed for object `index`.
    pub fn shown(&self, index: usize) -> Option<i64> {
        self.lock().shown.get(index).copied().flatten()
    }

    /// Changes to the watched objects KCP reported since the first list:
    /// every write that changed an object is one.
    pub fn events(&self) -> u64 {
        self.lock().events
    }

    /// Of [`KcpWatch::events`], those that raised an object's value (status
    /// writes by the cluster's own controllers do not).
    pub fn value_changes(&self) -> u64 {
        self.lock().value_changes
    }

    /// The write-to-KCP times collected since the last call.
    pub fn take_latencies(&self) -> Vec<Duration> {
        std::mem::take(&mut self.lock().latencies)
    }

    /// Waits until every expected write is shown; false at `deadline`.
    pub async fn wait_all_shown(&self, deadline: Instant) -> bool {
        self.wait_until(deadline, |s| s.pending.iter().all(VecDeque::is_empty))
            .await
    }

    async fn wait_until(&self, deadline: Instant, done: impl Fn(&State) -> bool) -> bool {
        loop {
            let notified = self.changed.notified();
            if done(&self.lock()) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            // Also wake now and then: `notify_waiters` only reaches waiters
            // registered before it fired.
            let _ = tokio::time::timeout_at(
                deadline.min(Instant::now() + Duration::from_millis(100)),
                notified,
            )
            .await;
        }
    }
}

impl Drop for KcpWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The `q` quantile (0..=1) of `sorted` (nearest rank), zero when empty.
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_use_the_nearest_rank() {
        let ms = |v: u64| Duration::from_millis(v);
        let sorted: Vec<Duration> = (1..=100).map(ms).collect();
        assert_eq!(quantile(&sorted, 0.5), ms(50));
        assert_eq!(quantile(&sorted, 0.99), ms(99));
        assert_eq!(quantile(&sorted, 1.0), ms(100));
        assert_eq!(quantile(&[], 0.5), Duration::ZERO);
    }
}
