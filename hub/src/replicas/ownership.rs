//! What the rest of the hub asks about shards: does this replica hold the
//! shard of a workspace, until when may it write for it, which shards with
//! which terms does it tell agents, and has a shard it just took over been
//! gathered from the agents' snapshots yet.
//!
//! A single hub (no `--replicas-lease-namespace`) holds every shard, its
//! writes unbounded by any fence; a replica asks its [`Fence`].
//!
//! **Gathering.** A replica that acquires a shard knows nothing of it: its
//! store has no entries of the shard until the agents' snapshots of it
//! arrive. Writing a merge before then would write a partial one (the
//! status of an object reported by three clusters, merged from the first
//! one's snapshot). So a newly acquired shard *gathers*: its status writes
//! wait until every agent asked for its snapshot of the shard (each session
//! asks when it tells its agent of the shard) has sent it, its session
//! ended, or the gather timeout passed
//! (an agent that never answers must not hold the shard's writes forever).
//! A hub starting up is the same case, with every shard new and no agent
//! connected yet: today's behaviour (write as snapshots arrive) is kept.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use uplink_protocol::{ShardClaim, ShardId, shard_of};

use super::fence::{Claim, Fence};
use crate::cache::LruCache;

/// How long a write for a shard may take, as things stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// A single hub: no fence, no bound beyond the request's own timeout.
    Unbounded,
    /// The fence is open until `close`, for the acquisition `generation`:
    /// the request is abandoned then, unless a renewal of the same
    /// acquisition moved the close later meanwhile ([`Ownership::window`]
    /// again tells).
    Until { close: Instant, generation: u64 },
    /// The shard is not held: nothing may be written for it.
    Closed,
}

/// Cheap to clone: every clone sees the same shards.
#[derive(Debug, Clone)]
pub struct Ownership {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    count: u16,
    /// The replica identity, or `single`.
    identity: String,
    /// `None`: a single hub.
    fence: Option<Fence>,
    gather_timeout: Duration,
    gathering: Mutex<BTreeMap<ShardId, Gather>>,
    /// For each cluster, the shards (and their generations) whose entries
    /// the store has from its snapshot: a resuming session snapshots exactly
    /// the shards held now that are not among them.
    known: Mutex<LruCache<String, Told>>,
}

/// Shards with the generation of each (see [`Claim::generation`]).
pub type Told = BTreeMap<ShardId, u64>;

/// Clusters whose snapshotted shards are remembered; a cluster forgotten
/// snapshots everything when it resumes.
const KNOWN_CLUSTERS: usize = 65_536;

#[derive(Debug)]
struct Gather {
    until: Instant,
    /// Clusters whose snapshot of the shard is awaited.
    waiting: BTreeSet<String>,
}

/// The identity a single hub gives itself (in its `User-Agent`, its API).
pub const SINGLE: &str = "single";

impl Ownership {
    /// A single hub of `count` shards: holds them all.
    pub fn single(count: u16) -> Self {
        Self::new(count, SINGLE.to_owned(), None, Duration::ZERO)
    }

    /// One replica, `identity`, holding what `fence` says; a newly acquired
    /// shard gathers for at most `gather_timeout`.
    pub fn replicated(identity: &str, count: u16, fence: Fence, gather_timeout: Duration) -> Self {
        Self::new(count, identity.to_owned(), Some(fence), gather_timeout)
    }

    fn new(count: u16, identity: String, fence: Option<Fence>, gather_timeout: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                count: count.max(1),
                identity,
                fence,
                gather_timeout,
                gathering: Mutex::new(BTreeMap::new()),
                known: Mutex::new(LruCache::new(KNOWN_CLUSTERS)),
            }),
        }
    }

    pub fn is_replicated(&self) -> bool {
        self.inner.fence.is_some()
    }

    /// The fence a replica's engine keeps ([`super::run`]); `None` for a
    /// single hub.
    pub fn fence(&self) -> Option<&Fence> {
        self.inner.fence.as_ref()
    }

    /// How many shards the workspaces hash into.
    pub fn count(&self) -> u16 {
        self.inner.count
    }

    /// The replica identity, or [`SINGLE`].
    pub fn identity(&self) -> &str {
        &self.inner.identity
    }

    /// The shard of `workspace`.
    pub fn shard_of(&self, workspace: &str) -> ShardId {
        shard_of(workspace, self.inner.count)
    }

    /// May this hub write for `shard` now?
    pub fn holds(&self, shard: ShardId) -> bool {
        self.inner.fence.as_ref().is_none_or(|f| f.holds(shard))
    }

    /// May this hub write for `workspace` now?
    pub fn holds_workspace(&self, workspace: &str) -> bool {
        self.holds(self.shard_of(workspace))
    }

    /// Until when a write for `shard` may be in flight.
    pub fn window(&self, shard: ShardId) -> Window {
        match &self.inner.fence {
            None => Window::Unbounded,
            Some(fence) => fence
                .open(shard)
                .map_or(Window::Closed, |(close, generation)| Window::Until {
                    close,
                    generation,
                }),
        }
    }

    /// The shards held now with their terms and generations; `None` for a
    /// single hub (which tells agents nothing: it holds everything).
    pub fn claims(&self) -> Option<Vec<Claim>> {
        Some(self.inner.fence.as_ref()?.claims())
    }

    /// What agents are told of `claims`.
    pub fn told(claims: &[Claim]) -> Vec<ShardClaim> {
        claims
            .iter()
            .map(|c| ShardClaim {
                shard: c.shard,
                term: c.term,
            })
            .collect()
    }

    /// Told whenever the held shards change; `None` for a single hub.
    pub fn watch(&self) -> Option<watch::Receiver<Vec<ShardId>>> {
        self.inner.fence.as_ref().map(Fence::watch)
    }

    /// `cluster` was asked for its snapshot of `shard` (just acquired): the
    /// shard's writes wait for it, for the gather timeout (from the first
    /// such request) at most. Called before the request is sent, so its
    /// answer cannot come first.
    pub fn expect(&self, shard: ShardId, cluster: &str) {
        if !self.is_replicated() {
            return;
        }
        let timeout = self.inner.gather_timeout;
        self.gathering()
            .entry(shard)
            .or_insert_with(|| Gather {
                until: Instant::now() + timeout,
                waiting: BTreeSet::new(),
            })
            .waiting
            .insert(cluster.to_owned());
    }

    /// `cluster`'s snapshot of `shards` (`None`: of everything) arrived, or
    /// its session ended: nothing more is awaited from it.
    pub fn gathered(&self, cluster: &str, shards: Option<&[ShardId]>) {
        let mut gathering = self.gathering();
        for (shard, gather) in gathering.iter_mut() {
            if shards.is_none_or(|s| s.contains(shard)) {
                gather.waiting.remove(cluster);
            }
        }
        gathering.retain(|_, gather| !gather.waiting.is_empty());
    }

    /// `shard` is no longer held: nothing is gathered for it.
    pub fn forget(&self, shard: ShardId) {
        self.gathering().remove(&shard);
    }

    /// How long writes for `shard` still wait for snapshots; `None`: they
    /// need not.
    pub fn gathering_for(&self, shard: ShardId) -> Option<Duration> {
        let mut gathering = self.gathering();
        let gather = gathering.get(&shard)?;
        let left = gather.until.saturating_duration_since(Instant::now());
        if left.is_zero() || gather.waiting.is_empty() {
            if !gather.waiting.is_empty() {
                tracing::info!(%shard, waiting = gather.waiting.len(), outcome = "timed out", "shard gathered without every agent's snapshot");
            }
            gathering.remove(&shard);
            return None;
        }
        Some(left)
    }

    /// `cluster`'s snapshot of `shards` (`None`: of everything) was
    /// applied: the store has its entries of those held now.
    pub fn snapshotted(&self, cluster: &str, shards: Option<&[ShardId]>) {
        let Some(claims) = self.claims() else {
            return;
        };
        let mut known = self.known_clusters();
        let mut told = match shards {
            None => Told::new(),
            Some(_) => known.get(cluster).unwrap_or_default(),
        };
        for claim in claims {
            if shards.is_none_or(|s| s.contains(&claim.shard)) {
                told.insert(claim.shard, claim.generation);
            }
        }
        known.insert(cluster.to_owned(), told);
    }

    /// The shards whose entries the store has from `cluster`'s snapshots,
    /// if remembered.
    pub fn known(&self, cluster: &str) -> Option<Told> {
        self.known_clusters().get(cluster)
    }

    fn known_clusters(&self) -> MutexGuard<'_, LruCache<String, Told>> {
        self.inner
            .known
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn gathering(&self) -> MutexGuard<'_, BTreeMap<ShardId, Gather>> {
        self.inner
            .gathering
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_single_hub_holds_everything_unbounded() {
        let single = Ownership::single(16);
        assert!(!single.is_replicated());
        assert!(single.holds_workspace("root:a"));
        assert_eq!(single.window(ShardId(3)), Window::Unbounded);
        assert_eq!(single.claims(), None);
        assert!(single.watch().is_none());
        assert_eq!(single.identity(), SINGLE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_replica_holds_what_its_fence_says() {
        let fence = Fence::new(Duration::from_secs(10));
        let replica = Ownership::replicated("hub-0", 4, fence.clone(), Duration::from_secs(5));
        let shard = replica.shard_of("root:a");
        assert!(!replica.holds(shard));
        assert_eq!(replica.window(shard), Window::Closed);
        let started = Instant::now();
        fence.renewed(shard, started, 3);
        assert!(replica.holds_workspace("root:a"));
        let generation = replica
            .claims()
            .and_then(|claims| claims.first().map(|c| c.generation))
            .unwrap_or_default();
        assert_eq!(
            replica.window(shard),
            Window::Until {
                close: started + Duration::from_secs(10),
                generation
            }
        );
        let claims = replica.claims().unwrap_or_default();
        assert_eq!(
            Ownership::told(&claims),
            vec![ShardClaim { shard, term: 3 }]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_shard_gathers_until_every_snapshot_or_the_timeout() {
        let fence = Fence::new(Duration::from_secs(10));
        let replica = Ownership::replicated("hub-0", 4, fence, Duration::from_secs(5));
        let (a, b) = (ShardId(1), ShardId(2));
        replica.expect(a, "c1");
        replica.expect(a, "c2");
        replica.expect(b, "c1");
        assert!(replica.gathering_for(a).is_some());
        replica.gathered("c1", Some(&[a]));
        assert!(replica.gathering_for(a).is_some(), "c2 still owes one");
        assert!(
            replica.gathering_for(b).is_some(),
            "c1's snapshot was of a only"
        );
        replica.gathered("c2", None);
        assert_eq!(replica.gathering_for(a), None);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(replica.gathering_for(b), None, "timed out");
        assert_eq!(replica.gathering_for(a), None, "nobody to wait for");

        // What the store knows of a cluster's shards: their snapshots.
        let fence = Fence::new(Duration::from_secs(10));
        let replica = Ownership::replicated("hub-0", 4, fence.clone(), Duration::ZERO);
        fence.renewed(a, Instant::now(), 1);
        fence.renewed(b, Instant::now(), 1);
        assert_eq!(replica.known("c1"), None);
        replica.snapshotted("c1", Some(&[a]));
        let known = replica.known("c1").unwrap_or_default();
        assert_eq!(known.keys().copied().collect::<Vec<_>>(), vec![a]);
        replica.snapshotted("c1", None);
        let known = replica.known("c1").unwrap_or_default();
        assert_eq!(known.keys().copied().collect::<Vec<_>>(), vec![a, b]);
        let single = Ownership::single(4);
        single.expect(a, "c1");
        assert_eq!(single.gathering_for(a), None, "a single hub never gathers");
    }
}
