//! Which hub replica each shard's changes go to (protocol version 4).
//!
//! Every session with a replica tells the table what the replica holds: its
//! `Welcome.shards` and every `Shards` frame after it, or "everything" for a
//! hub that is not replicated (`shards: None`, a claim on every shard at
//! term 0). A shard routes to the replica whose claim has the highest term;
//! of equal terms, the claim received last (a claim the replica repeats
//! unchanged keeps the order it was first received in, so two tied
//! replicas do not take turns). A replica's new holding that drops a shard
//! gives up its route only if it had it; a replica whose session ended
//! holds nothing.
//!
//! The table is plain data, changed only through [`Routes::hold`] and
//! [`Routes::release`], which say whether any route changed and log one
//! line per replica whose routed shards changed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use uplink_protocol::{ShardId, ShardsHeld, shard_of};

/// One session slot with a replica: a `--hub-url` entry, or one address of
/// a resolved Service name. Stable across the session's reconnects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReplicaId(pub u32);

impl fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "replica-{}", self.0)
    }
}

/// What a replica says it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holding {
    /// A hub that is not replicated: every shard, at term 0.
    Everything,
    /// A replica of a replicated hub: these shards.
    Shards(ShardsHeld),
}

impl Holding {
    /// What a `Welcome.shards` says.
    pub fn from_welcome(shards: Option<&ShardsHeld>) -> Self {
        shards.map_or(Holding::Everything, |held| Holding::Shards(held.clone()))
    }
}

/// Some shards, or all of them: what a snapshot covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardSet {
    Everything,
    Shards { count: u16, shards: BTreeSet<u16> },
}

impl ShardSet {
    /// Whether an object of `workspace` is in the set.
    pub fn contains(&self, workspace: &str) -> bool {
        match self {
            ShardSet::Everything => true,
            ShardSet::Shards { count, shards } => shards.contains(&shard_of(workspace, *count).0),
        }
    }

    /// Whether the set names no shard at all.
    pub fn is_empty(&self) -> bool {
        match self {
            ShardSet::Everything => false,
            ShardSet::Shards { shards, .. } => shards.is_empty(),
        }
    }

    /// As `SnapshotBegin.shards` names it.
    pub fn to_wire(&self) -> Option<Vec<ShardId>> {
        match self {
            ShardSet::Everything => None,
            ShardSet::Shards { shards, .. } => Some(shards.iter().copied().map(ShardId).collect()),
        }
    }

    /// Adds `other` (a request that came while another waited).
    pub fn merge(&mut self, other: ShardSet) {
        match (&mut *self, other) {
            (ShardSet::Everything, _) => {}
            (_, ShardSet::Everything) => *self = ShardSet::Everything,
            (
                ShardSet::Shards { count, shards },
                ShardSet::Shards {
                    count: other_count,
                    shards: more,
                },
            ) => {
                if *count == other_count {
                    shards.extend(more);
                } else {
                    // The shard count changed (the hub was redeployed with
                    // another `--shards`): the newest request's count holds.
                    *count = other_count;
                    *shards = more;
                }
            }
        }
    }
}

/// One claim: its term and when it was first received.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Claim {
    term: u64,
    order: u64,
}

#[derive(Debug, Clone)]
enum Held {
    Everything(Claim),
    Shards(BTreeMap<u16, Claim>),
}

#[derive(Debug, Clone)]
struct Replica {
    /// How logs and metrics name it (its URL, or its address).
    name: Arc<str>,
    held: Held,
}

/// The shard → replica table; see the module documentation.
#[derive(Debug, Clone)]
pub struct Routes {
    cluster: Arc<str>,
    /// The shard count the replicas announced last; `None` while only
    /// unreplicated hubs (or none) spoke.
    count: Option<u16>,
    replicas: BTreeMap<ReplicaId, Replica>,
    /// The routes as they are now.
    table: RouteTable,
    next_order: u64,
    /// The highest term claimed for each shard while it has had claimants
    /// without a break. Leases' transition counts only grow, so a claim
    /// below it is a replica that lost the shard and has not said so yet
    /// (cut from its Leases, it notices late): such a claim never gets the
    /// route back when the real holder's session ends. Forgotten once
    /// nobody claims the shard (a Lease deleted and created anew starts
    /// again from 0).
    highest: BTreeMap<u16, u64>,
}

/// The routes at one moment, cheap to copy (for the event lane, which
/// reads them under its own lock).
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    count: Option<u16>,
    /// The route of every shard (`count` entries), when `count` is known.
    by_shard: Arc<[Option<ReplicaId>]>,
    /// The route of every object while the count is unknown: the best
    /// claim on everything.
    everything: Option<ReplicaId>,
}

impl RouteTable {
    /// The replica an object of `workspace` goes to, if any.
    pub fn route(&self, workspace: &str) -> Option<ReplicaId> {
        match self.count {
            Some(count) => self
                .by_shard
                .get(usize::from(shard_of(workspace, count).0))
                .copied()
                .flatten(),
            None => self.everything,
        }
    }
}

impl Routes {
    pub fn new(cluster: &str) -> Self {
        Self {
            cluster: cluster.into(),
            count: None,
            replicas: BTreeMap::new(),
            table: RouteTable::default(),
            next_order: 0,
            highest: BTreeMap::new(),
        }
    }

    /// The replica an object of `workspace` goes to, if any.
    pub fn route(&self, workspace: &str) -> Option<ReplicaId> {
        self.table.route(workspace)
    }

    /// The routes as they are now, to read without the outbox's lock.
    pub fn table(&self) -> RouteTable {
        self.table.clone()
    }

    /// The shards routed to `replica` (every shard `0..count`; with no
    /// count known, `Some(everything)` is reported as shard 0 alone).
    pub fn routed_shards(&self, replica: ReplicaId) -> Vec<u16> {
        if self.count.is_none() {
            return if self.table.everything == Some(replica) {
                vec![0]
            } else {
                Vec::new()
            };
        }
        (0u16..)
            .zip(self.table.by_shard.iter())
            .filter(|(_, route)| **route == Some(replica))
            .map(|(shard, _)| shard)
            .collect()
    }

    /// The announced shard count, if any replica announced one.
    pub fn count(&self) -> Option<u16> {
        self.count
    }

    /// Every replica that told what it holds, and its name.
    pub fn replicas(&self) -> impl Iterator<Item = (ReplicaId, &Arc<str>)> {
        self.replicas.iter().map(|(id, r)| (*id, &r.name))
    }

    /// How `replica` is named in logs and metrics.
    pub fn name(&self, replica: ReplicaId) -> Option<Arc<str>> {
        self.replicas.get(&replica).map(|r| Arc::clone(&r.name))
    }

    /// `replica` (named `name`) holds `holding` now. Whether any route
    /// changed.
    pub fn hold(&mut self, replica: ReplicaId, name: &Arc<str>, holding: &Holding) -> bool {
        let before = self.snapshot();
        let previous = self.replicas.remove(&replica);
        let held = match holding {
            Holding::Everything => Held::Everything(match previous.map(|r| r.held) {
                Some(Held::Everything(claim)) => claim,
                _ => self.claim(0),
            }),
            Holding::Shards(shards) => {
                if self.count.is_some_and(|count| count != shards.count) {
                    tracing::warn!(cluster = %self.cluster, replica = %name, count = shards.count, known = ?self.count, "replicas announce different shard counts; the newest holds");
                }
                self.count = Some(shards.count);
                let old = match previous.map(|r| r.held) {
                    Some(Held::Shards(old)) => old,
                    _ => BTreeMap::new(),
                };
                let mut claims = BTreeMap::new();
                for claim in &shards.held {
                    let kept = old
                        .get(&claim.shard.0)
                        .filter(|known| known.term == claim.term)
                        .copied();
                    let claim_now = kept.unwrap_or_else(|| self.claim(claim.term));
                    claims.insert(claim.shard.0, claim_now);
                }
                Held::Shards(claims)
            }
        };
        self.replicas.insert(
            replica,
            Replica {
                name: Arc::clone(name),
                held,
            },
        );
        self.recompute();
        self.report(&before)
    }

    /// `replica` holds nothing any more (its session ended). Whether any
    /// route changed.
    pub fn release(&mut self, replica: ReplicaId) -> bool {
        let before = self.snapshot();
        let Some(gone) = self.replicas.remove(&replica) else {
            return false;
        };
        // Keep the name for the log line below.
        self.replicas.insert(
            replica,
            Replica {
                name: gone.name,
                held: Held::Shards(BTreeMap::new()),
            },
        );
        self.recompute();
        let changed = self.report(&before);
        self.replicas.remove(&replica);
        changed
    }

    fn claim(&mut self, term: u64) -> Claim {
        self.next_order += 1;
        Claim {
            term,
            order: self.next_order,
        }
    }

    fn recompute(&mut self) {
        let everything = self
            .replicas
            .iter()
            .filter_map(|(id, r)| match r.held {
                Held::Everything(claim) => Some((claim, *id)),
                Held::Shards(_) => None,
            })
            .max()
            .map(|(_, id)| id);
        let Some(count) = self.count else {
            self.table = RouteTable {
                count: None,
                by_shard: Arc::new([]),
                everything,
            };
            return;
        };
        let replicas = &self.replicas;
        let highest = &mut self.highest;
        let by_shard = (0..count)
            .map(|shard| {
                let claims: Vec<(Claim, ReplicaId)> = replicas
                    .iter()
                    .filter_map(|(id, r)| match &r.held {
                        Held::Everything(claim) => Some((*claim, *id)),
                        Held::Shards(claims) => claims.get(&shard).map(|claim| (*claim, *id)),
                    })
                    .collect();
                let Some(best) = claims.iter().map(|(claim, _)| claim.term).max() else {
                    highest.remove(&shard);
                    return None;
                };
                let term = highest.entry(shard).or_insert(best);
                *term = (*term).max(best);
                let term = *term;
                claims
                    .into_iter()
                    .filter(|(claim, _)| claim.term == term)
                    .max()
                    .map(|(_, id)| id)
            })
            .collect();
        self.table = RouteTable {
            count: Some(count),
            by_shard,
            everything,
        };
    }

    /// Every replica's routed shards.
    fn snapshot(&self) -> BTreeMap<ReplicaId, Vec<u16>> {
        self.replicas
            .keys()
            .map(|id| (*id, self.routed_shards(*id)))
            .collect()
    }

    /// Logs one line per replica whose routed shards changed since
    /// `before`; whether any did.
    fn report(&self, before: &BTreeMap<ReplicaId, Vec<u16>>) -> bool {
        let mut changed = false;
        let ids: BTreeSet<ReplicaId> = before.keys().chain(self.replicas.keys()).copied().collect();
        for id in ids {
            let was = before.get(&id).cloned().unwrap_or_default();
            let now = self.routed_shards(id);
            if was == now {
                continue;
            }
            changed = true;
            let replica = self.name(id).unwrap_or_else(|| id.to_string().into());
            if self.count.is_none() {
                tracing::info!(cluster = %self.cluster, %replica, everything = !now.is_empty(), "routes changed: every object goes to this hub");
            } else {
                tracing::info!(cluster = %self.cluster, %replica, shards = ?now, was = ?was, "routes changed");
            }
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use uplink_protocol::ShardClaim;

    use super::*;

    fn held(count: u16, claims: &[(u16, u64)]) -> Holding {
        Holding::Shards(ShardsHeld {
            count,
            held: claims
                .iter()
                .map(|(shard, term)| ShardClaim {
                    shard: ShardId(*shard),
                    term: *term,
                })
                .collect(),
            snapshot: Vec::new(),
            heartbeat_interval_ms: None,
        })
    }

    fn name(s: &str) -> Arc<str> {
        s.into()
    }

    const A: ReplicaId = ReplicaId(1);
    const B: ReplicaId = ReplicaId(2);

    #[test]
    fn the_highest_term_wins_and_a_tie_goes_to_the_last_claim() {
        let mut routes = Routes::new("east");
        assert!(routes.hold(A, &name("a"), &held(4, &[(0, 1), (1, 1)])));
        assert_eq!(routes.routed_shards(A), [0, 1]);
        // B's stale claim on shard 0 (lower term) loses; its tie on 1 wins.
        assert!(routes.hold(B, &name("b"), &held(4, &[(0, 0), (1, 1), (2, 3)])));
        assert_eq!(routes.routed_shards(A), [0]);
        assert_eq!(routes.routed_shards(B), [1, 2]);
        // A repeating its unchanged claims does not take shard 1 back.
        assert!(!routes.hold(A, &name("a"), &held(4, &[(0, 1), (1, 1)])));
        assert_eq!(routes.routed_shards(B), [1, 2]);
        // A new term does.
        assert!(routes.hold(A, &name("a"), &held(4, &[(0, 1), (1, 2)])));
        assert_eq!(routes.routed_shards(A), [0, 1]);
    }

    #[test]
    fn a_claim_beaten_by_a_higher_term_never_gets_the_route_back() {
        let mut routes = Routes::new("east");
        // A is cut from its Leases and still claims shard 0 at term 3; B
        // took it over at term 4.
        routes.hold(A, &name("a"), &held(4, &[(0, 3)]));
        routes.hold(B, &name("b"), &held(4, &[(0, 4)]));
        assert_eq!(routes.routed_shards(B), [0]);
        // B's session ends: the shard waits rather than going back to A,
        // which would acknowledge and drop what it no longer holds.
        assert!(routes.release(B));
        assert!(routes.routed_shards(A).is_empty());
        assert_eq!(routes.route_of_shard(0), None);
        // B back (same term): it has the route again.
        routes.hold(B, &name("b"), &held(4, &[(0, 4)]));
        assert_eq!(routes.routed_shards(B), [0]);
        // Once nobody claims the shard, the memory goes: a Lease created
        // anew starts from term 0 and is routed.
        routes.hold(A, &name("a"), &held(4, &[]));
        routes.hold(B, &name("b"), &held(4, &[]));
        routes.hold(A, &name("a"), &held(4, &[(0, 0)]));
        assert_eq!(routes.routed_shards(A), [0]);
    }

    #[test]
    fn dropping_a_shard_clears_only_its_own_route() {
        let mut routes = Routes::new("east");
        routes.hold(A, &name("a"), &held(4, &[(0, 5)]));
        routes.hold(B, &name("b"), &held(4, &[(0, 4), (1, 1)]));
        assert_eq!(routes.routed_shards(A), [0]);
        // B gives up shard 0, which it did not route: nothing changes.
        assert!(!routes.hold(B, &name("b"), &held(4, &[(1, 1)])));
        assert_eq!(routes.routed_shards(A), [0]);
        // A gives it up: nobody holds it.
        assert!(routes.hold(A, &name("a"), &held(4, &[])));
        assert_eq!(routes.route_of_shard(0), None);
        // A session that ends loses its routes.
        assert!(routes.release(B));
        assert_eq!(routes.route_of_shard(1), None);
    }

    #[test]
    fn an_unreplicated_hub_takes_everything() {
        let mut routes = Routes::new("east");
        assert_eq!(routes.route("root:org"), None);
        routes.hold(A, &name("a"), &Holding::Everything);
        assert_eq!(routes.route("root:org"), Some(A));
        assert_eq!(routes.route(""), Some(A));
        assert!(routes.release(A));
        assert_eq!(routes.route("root:org"), None);
    }

    impl Routes {
        fn route_of_shard(&self, shard: u16) -> Option<ReplicaId> {
            self.table
                .by_shard
                .get(usize::from(shard))
                .copied()
                .flatten()
        }
    }

    #[test]
    fn shard_sets() {
        let mut set = ShardSet::Shards {
            count: 16,
            shards: BTreeSet::from([5]),
        };
        assert!(set.contains("root"));
        assert!(!set.contains("root:demo:a"));
        set.merge(ShardSet::Shards {
            count: 16,
            shards: BTreeSet::from([7]),
        });
        assert!(set.contains("root:demo:a"));
        assert_eq!(set.to_wire(), Some(vec![ShardId(5), ShardId(7)]));
        set.merge(ShardSet::Everything);
        assert_eq!(set.to_wire(), None);
    }
}
