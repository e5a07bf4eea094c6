//! The fence: whether this replica may write for a shard *now*.
//!
//! [`Fence::holds`] is true only while the replica holds the shard's Lease
//! and the last successful renew (or the acquisition) *started* less than
//! the renew deadline ago. The start is taken before the request is sent, so
//! the record the API server stored is younger than it. Another replica may
//! take the shard only after it has seen that record unchanged for a whole
//! lease duration on its own clock, from an observation made after the write
//! was stored; since the renew deadline is shorter than the lease duration,
//! this replica's fence has closed before the other's can open. (Clock
//! *rates* must agree within lease duration / renew deadline; clock skew does
//! not matter, as in client-go.)
//!
//! [`Fence::deadline`] is when a shard's fence closes as things stand: a
//! writer bounds each request by it, so no request it sent is still awaited
//! after the fence closed. A renewal of the same acquisition (the same
//! [`Claim::generation`], so the fence stayed open throughout) moves the
//! bound of a request in flight to the new deadline ([`Fence::open`]): a
//! request slower than what was left when it was sent is not dropped while
//! the shard stays held. What remains: a request abandoned by the client
//! may still be on the wire or in the API server's queue. The margin
//! lease_duration - renew_deadline (5 s with client-go's timings) is what
//! such a straggler has before another replica can hold the shard; one that
//! takes longer lands late (client-go's leader election has the same gap).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::shard::ShardId;

/// Cheap to clone: every clone sees the same shards.
#[derive(Debug, Clone)]
pub struct Fence {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    renew_deadline: Duration,
    /// Held shards → when their last successful renew started, and their
    /// term.
    renewed: Mutex<BTreeMap<ShardId, Held>>,
    /// The held shards, sent on every acquisition, loss or release (not on
    /// renewals).
    changes: watch::Sender<Vec<ShardId>>,
    /// The next acquisition's [`Claim::generation`].
    generations: std::sync::atomic::AtomicU64,
}

/// One held shard: when its last successful renew (or the acquisition)
/// started, and the Lease's `leaseTransitions` when this replica acquired it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    started: Instant,
    term: u64,
    generation: u64,
}

/// A shard held, as [`Fence::claims`] tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    pub shard: ShardId,
    /// The Lease's `leaseTransitions` when this replica acquired it (what
    /// agents are told).
    pub term: u64,
    /// Which acquisition of this process it is: new on every acquisition,
    /// even of a Lease whose record still named this process (its term then
    /// unchanged) after the fence had closed. What the replica knew of the
    /// shard before is gone either way.
    pub generation: u64,
}

impl Fence {
    pub fn new(renew_deadline: Duration) -> Self {
        let (changes, _) = watch::channel(Vec::new());
        Self {
            inner: Arc::new(Inner {
                renew_deadline,
                renewed: Mutex::new(BTreeMap::new()),
                changes,
                generations: std::sync::atomic::AtomicU64::new(1),
            }),
        }
    }

    /// The renew deadline this fence closes after.
    pub fn renew_deadline(&self) -> Duration {
        self.inner.renew_deadline
    }

    /// May this replica write for `shard` now?
    pub fn holds(&self, shard: ShardId) -> bool {
        self.holds_at(shard, Instant::now())
    }

    /// Was `shard` open at `now`, as far as this fence knows: its last
    /// renew (or acquisition) started at or before `now` and less than the
    /// renew deadline before it. For comparing several fences at one
    /// instant; writers ask [`Fence::holds`].
    pub fn holds_at(&self, shard: ShardId, now: Instant) -> bool {
        let renewed = self.lock();
        renewed.get(&shard).is_some_and(|held| {
            now.checked_duration_since(held.started)
                .is_some_and(|age| age < self.inner.renew_deadline)
        })
    }

    /// When `shard`'s fence closes unless renewed meanwhile; `None` when it
    /// is closed now. A write for `shard` must be abandoned by then (see the
    /// module documentation for what remains).
    pub fn deadline(&self, shard: ShardId) -> Option<Instant> {
        self.open(shard).map(|(close, _)| close)
    }

    /// [`deadline`](Self::deadline) with the generation of the acquisition
    /// it belongs to: while the generation stays the same the fence has
    /// been open throughout, so a write sent under it may stay in flight
    /// until the later deadline a renewal brings.
    pub fn open(&self, shard: ShardId) -> Option<(Instant, u64)> {
        let renewed = self.lock();
        let held = renewed.get(&shard)?;
        let close = held.started + self.inner.renew_deadline;
        (Instant::now() < close).then_some((close, held.generation))
    }

    /// The shards held now (within the renew deadline) with their terms
    /// (the Lease's `leaseTransitions` when acquired), in order of shard.
    pub fn claims(&self) -> Vec<Claim> {
        let renewed = self.lock();
        renewed
            .iter()
            .filter(|(_, held)| held.started.elapsed() < self.inner.renew_deadline)
            .map(|(shard, held)| Claim {
                shard: *shard,
                term: held.term,
                generation: held.generation,
            })
            .collect()
    }

    /// The shards held now (within the renew deadline), in order.
    pub fn held(&self) -> Vec<ShardId> {
        let renewed = self.lock();
        renewed
            .iter()
            .filter(|(_, held)| held.started.elapsed() < self.inner.renew_deadline)
            .map(|(shard, _)| *shard)
            .collect()
    }

    /// The held shards, told on every acquisition, loss and release. A shard
    /// whose renew deadline passes closes in [`Fence::holds`] at once and is
    /// told here when the engine next notices (within a retry period).
    pub fn watch(&self) -> watch::Receiver<Vec<ShardId>> {
        self.inner.changes.subscribe()
    }

    /// (The engine's; public for tests standing in for it.) `shard` was
    /// acquired or renewed by a request that started at
    /// `started`; `term` is its Lease's `leaseTransitions` (kept from the
    /// acquisition while renewals keep it: a renew does not change it).
    pub fn renewed(&self, shard: ShardId, started: Instant, term: u64) {
        let mut renewed = self.lock();
        // A renewal keeps the generation only while the fence stayed open:
        // one that lands after the renew deadline passed (the round was
        // slow, the API server unreachable for a while) reopens a fence
        // that was closed, during which reports of the shard were dropped;
        // a new generation makes it a takeover again (agents asked for the
        // shard's snapshot, writes wait for it).
        let kept = renewed
            .get(&shard)
            .filter(|held| held.term == term && held.started.elapsed() < self.inner.renew_deadline)
            .map(|held| held.generation);
        let generation = kept.unwrap_or_else(|| {
            self.inner
                .generations
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        });
        renewed.insert(
            shard,
            Held {
                started,
                term,
                generation,
            },
        );
        if kept.is_none() {
            self.publish(&renewed);
        }
    }

    /// (The engine's; public for tests standing in for it.) `shard` is no
    /// longer held (lost, expired or being released). Called
    /// before a release is sent, so the fence closes before others may take
    /// the shard.
    pub fn drop_shard(&self, shard: ShardId) {
        let mut renewed = self.lock();
        if renewed.remove(&shard).is_some() {
            self.publish(&renewed);
        }
    }

    /// Every shard is dropped (shutting down).
    pub(crate) fn drop_all(&self) {
        let mut renewed = self.lock();
        if !renewed.is_empty() {
            renewed.clear();
            self.publish(&renewed);
        }
    }

    fn publish(&self, renewed: &BTreeMap<ShardId, Held>) {
        self.inner
            .changes
            .send_replace(renewed.keys().copied().collect());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<ShardId, Held>> {
        self.inner
            .renewed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn holds_until_the_renew_deadline_after_the_last_renew_start() {
        let fence = Fence::new(Duration::from_secs(10));
        let shard = ShardId(3);
        assert!(!fence.holds(shard));
        let started = Instant::now();
        tokio::time::advance(Duration::from_secs(1)).await; // the request took 1 s
        fence.renewed(shard, started, 0);
        assert!(fence.holds(shard));
        assert_eq!(fence.held(), vec![shard]);
        tokio::time::advance(Duration::from_millis(8_999)).await;
        assert!(fence.holds(shard), "9.999 s after the renew started");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!fence.holds(shard), "10 s after the renew started");
        assert!(fence.held().is_empty());
        // A renew that starts now opens it again.
        let restarted = Instant::now();
        fence.renewed(shard, restarted, 0);
        assert!(fence.holds(shard));
        // At a shared earlier instant, before that renew started, it was not.
        assert!(!fence.holds_at(shard, restarted - Duration::from_millis(1)));
        assert!(fence.holds_at(shard, restarted));
        assert!(fence.holds_at(shard, restarted + Duration::from_millis(9_999)));
        assert!(!fence.holds_at(shard, restarted + Duration::from_secs(10)));
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_is_when_the_fence_closes_and_terms_are_kept() {
        let fence = Fence::new(Duration::from_secs(10));
        let shard = ShardId(2);
        assert_eq!(fence.deadline(shard), None);
        let started = Instant::now();
        fence.renewed(shard, started, 7);
        assert_eq!(
            fence.deadline(shard),
            Some(started + Duration::from_secs(10))
        );
        let first = fence.claims();
        assert_eq!(
            first.iter().map(|c| (c.shard, c.term)).collect::<Vec<_>>(),
            vec![(shard, 7)]
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(fence.deadline(shard), None, "closed");
        assert!(fence.claims().is_empty());
        // Reacquired under a new term: told, even without a drop between.
        let changes = fence.watch();
        fence.renewed(shard, Instant::now(), 8);
        assert!(changes.has_changed().unwrap_or(false));
        let second = fence.claims();
        assert_eq!(
            second.iter().map(|c| (c.shard, c.term)).collect::<Vec<_>>(),
            vec![(shard, 8)]
        );
        assert_ne!(first[0].generation, second[0].generation);
        // Dropped and taken back under the same term: a new generation.
        fence.drop_shard(shard);
        fence.renewed(shard, Instant::now(), 8);
        let third = fence.claims();
        assert_ne!(third[0].generation, second[0].generation);
        // A renewal keeps it.
        fence.renewed(shard, Instant::now(), 8);
        assert_eq!(fence.claims(), third);
    }

    #[tokio::test(start_paused = true)]
    async fn changes_are_told_on_acquire_and_drop_not_on_renew() {
        let fence = Fence::new(Duration::from_secs(10));
        let mut changes = fence.watch();
        fence.renewed(ShardId(1), Instant::now(), 0);
        assert!(changes.has_changed().unwrap_or(false));
        assert_eq!(*changes.borrow_and_update(), vec![ShardId(1)]);
        fence.renewed(ShardId(1), Instant::now(), 0);
        assert!(!changes.has_changed().unwrap_or(true));
        let clone = fence.clone();
        clone.drop_shard(ShardId(1));
        assert!(!fence.holds(ShardId(1)));
        assert!(changes.borrow_and_update().is_empty());
    }

    /// The fence closed (the renew deadline passed) and a late renewal of
    /// the same term reopened it: a new generation, told to the watchers,
    /// as a takeover is (what was dropped meanwhile is asked for again).
    #[tokio::test(start_paused = true)]
    async fn a_renewal_after_the_fence_closed_is_a_new_generation() {
        let fence = Fence::new(Duration::from_secs(10));
        let shard = ShardId(2);
        let mut changes = fence.watch();
        fence.renewed(shard, Instant::now(), 4);
        let first = fence.claims();
        changes.borrow_and_update();
        tokio::time::advance(Duration::from_secs(9)).await;
        fence.renewed(shard, Instant::now(), 4);
        assert_eq!(fence.claims(), first, "renewed in time: same generation");
        assert!(!changes.has_changed().unwrap_or(true));
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(!fence.holds(shard), "closed");
        fence.renewed(shard, Instant::now(), 4);
        let reopened = fence.claims();
        assert_eq!(reopened.len(), 1);
        assert_ne!(reopened[0].generation, first[0].generation);
        assert!(changes.has_changed().unwrap_or(false), "told as a takeover");
    }
}
