//! Admission of tunnel connections before they are sessions: how many may be
//! in their TLS handshake (in total and from one source address), and how
//! many may have finished TLS without sending `Hello` yet (in total and for
//! one cluster).
//!
//! A limit never makes the accept loop wait, and never turns the newest
//! connection away: when one is reached, the *oldest* connection it counts
//! is closed to make room. A flood of idle or stalled connections therefore
//! only ever displaces itself, while a legitimate agent, whose handshake
//! takes milliseconds, finishes long before it becomes the oldest. Together
//! with the deadlines (the listener's), this bounds what unauthenticated
//! peers can hold (file descriptors, tasks, TLS state) without letting them
//! lock agents out, even from the agents' own address (a shared NAT).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};

use prometheus::IntGauge;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// Where a connection comes from, for the per-source limit: its IP address,
/// IPv4-mapped IPv6 addresses as IPv4, and IPv6 by its /64 (one host
/// usually holds a whole /64, so counting single IPv6 addresses would
/// limit nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source(IpAddr);

impl Source {
    pub fn of(peer: SocketAddr) -> Self {
        match peer.ip() {
            IpAddr::V4(v4) => Self(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self(IpAddr::V4(v4)),
                None => Self(IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into())),
            },
        }
    }
}

/// A connection that was closed to make room, for its metric and log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Displaced {
    /// Its peer address.
    pub peer: SocketAddr,
    /// The `reason` label: which limit was reached.
    pub reason: &'static str,
}

/// Counts connections in one phase of the handshake, by key, and makes room
/// for a new one by displacing the oldest when a limit is reached.
#[derive(Debug)]
pub struct Gate<K> {
    state: Mutex<GateState<K>>,
    max_total: usize,
    max_per_key: usize,
    /// `reason` when the total limit displaced a connection.
    total_reason: &'static str,
    /// `reason` when the per-key limit displaced a connection.
    per_key_reason: &'static str,
    /// Connections in this phase now.
    gauge: IntGauge,
}

#[derive(Debug)]
struct GateState<K> {
    next_id: u64,
    /// Every connection in the phase, oldest first (ids only grow).
    oldest_first: BTreeMap<u64, Entry<K>>,
    /// The ids of each key's connections; a key without any is removed, so
    /// the map never holds more keys than the total limit.
    by_key: HashMap<K, BTreeSet<u64>>,
}

#[derive(Debug)]
struct Entry<K> {
    key: K,
    peer: SocketAddr,
    displaced: CancellationToken,
}

impl<K: Clone + Eq + Hash> Gate<K> {
    /// A gate holding at most `max_total` connections, `max_per_key` of
    /// them with the same key (each at least 1).
    pub fn new(
        max_total: usize,
        max_per_key: usize,
        total_reason: &'static str,
        per_key_reason: &'static str,
        gauge: IntGauge,
    ) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(GateState {
                next_id: 0,
                oldest_first: BTreeMap::new(),
                by_key: HashMap::new(),
            }),
            max_total: max_total.max(1),
            max_per_key: max_per_key.max(1),
            total_reason,
            per_key_reason,
            gauge,
        })
    }

    /// Counts a new connection, displacing the oldest one of its key, or
    /// else the oldest of all, when a limit is full. Never waits.
    pub fn enter(self: &Arc<Self>, key: K, peer: SocketAddr) -> (Slot<K>, Option<Displaced>) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut displaced = None;
        let oldest_of_key = state
            .by_key
            .get(&key)
            .filter(|ids| ids.len() >= self.max_per_key)
            .and_then(|ids| ids.first().copied());
        if let Some(id) = oldest_of_key {
            displaced = state.displace(id, self.per_key_reason);
        } else if state.oldest_first.len() >= self.max_total
            && let Some(id) = state.oldest_first.keys().next().copied()
        {
            displaced = state.displace(id, self.total_reason);
        }
        let id = state.next_id;
        state.next_id += 1;
        let token = CancellationToken::new();
        state.oldest_first.insert(
            id,
            Entry {
                key: key.clone(),
                peer,
                displaced: token.clone(),
            },
        );
        state.by_key.entry(key.clone()).or_default().insert(id);
        self.gauge.set(gauge_value(state.oldest_first.len()));
        drop(state);
        let slot = Slot {
            gate: self.clone(),
            id,
            key,
            displaced: token,
        };
        (slot, displaced)
    }

    fn leave(&self, id: u64, key: &K) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        // A displaced connection was already removed.
        if state.oldest_first.remove(&id).is_some() {
            state.forget(id, key);
        }
        self.gauge.set(gauge_value(state.oldest_first.len()));
    }

    /// Connections counted now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .oldest_first
            .len()
    }
}

impl<K: Clone + Eq + Hash> GateState<K> {
    /// Removes connection `id` and tells its task to close it.
    fn displace(&mut self, id: u64, reason: &'static str) -> Option<Displaced> {
        let entry = self.oldest_first.remove(&id)?;
        self.forget(id, &entry.key);
        entry.displaced.cancel();
        Some(Displaced {
            peer: entry.peer,
            reason,
        })
    }

    fn forget(&mut self, id: u64, key: &K) {
        if let Some(ids) = self.by_key.get_mut(key) {
            ids.remove(&id);
            if ids.is_empty() {
                self.by_key.remove(key);
            }
        }
    }
}

fn gauge_value(len: usize) -> i64 {
    i64::try_from(len).unwrap_or(i64::MAX)
}

/// One connection's place in a [`Gate`]; leaving it (drop) frees the place.
#[derive(Debug)]
pub struct Slot<K: Clone + Eq + Hash> {
    gate: Arc<Gate<K>>,
    id: u64,
    key: K,
    displaced: CancellationToken,
}

impl<K: Clone + Eq + Hash> Slot<K> {
    /// Completes when a newer connection displaced this one: its task must
    /// then close it (the displacement is already counted and logged).
    pub fn displaced(&self) -> WaitForCancellationFuture<'_> {
        self.displaced.cancelled()
    }
}

impl<K: Clone + Eq + Hash> Drop for Slot<K> {
    fn drop(&mut self) {
        self.gate.leave(self.id, &self.key);
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn peer(ip: [u8; 4], port: u16) -> SocketAddr {
        SocketAddr::from((ip, port))
    }

    fn gate(total: usize, per_key: usize) -> prometheus::Result<Arc<Gate<Source>>> {
        let gauge = IntGauge::new("in_progress", "unregistered")?;
        Ok(Gate::new(total, per_key, "total", "per_key", gauge))
    }

    #[test]
    fn the_oldest_of_a_full_source_makes_room() -> prometheus::Result<()> {
        let gate = gate(10, 2)?;
        let a = peer([10, 0, 0, 1], 1);
        let (first, none) = gate.enter(Source::of(a), a);
        assert_eq!(none, None);
        let (_second, none) = gate.enter(Source::of(a), peer([10, 0, 0, 1], 2));
        assert_eq!(none, None);
        let (_third, displaced) = gate.enter(Source::of(a), peer([10, 0, 0, 1], 3));
        assert_eq!(
            displaced,
            Some(Displaced {
                peer: a,
                reason: "per_key"
            })
        );
        assert!(first.displaced.is_cancelled());
        assert_eq!(gate.len(), 2);
        // The displaced slot's drop does not free another's place.
        drop(first);
        assert_eq!(gate.len(), 2);
        assert_eq!(gate.gauge.get(), 2);
        Ok(())
    }

    #[test]
    fn the_oldest_of_all_makes_room_when_the_total_is_full() -> prometheus::Result<()> {
        let gate = gate(2, 2)?;
        let (a, b, c) = (
            peer([10, 0, 0, 1], 1),
            peer([10, 0, 0, 2], 1),
            peer([10, 0, 0, 3], 1),
        );
        let (first, _) = gate.enter(Source::of(a), a);
        let (second, _) = gate.enter(Source::of(b), b);
        let (_third, displaced) = gate.enter(Source::of(c), c);
        assert_eq!(displaced.map(|d| (d.peer, d.reason)), Some((a, "total")));
        assert!(first.displaced.is_cancelled() && !second.displaced.is_cancelled());
        drop(second);
        assert_eq!(gate.len(), 1);
        Ok(())
    }

    #[test]
    fn leaving_frees_the_place_and_forgets_the_key() -> prometheus::Result<()> {
        let gate = gate(4, 1)?;
        let a = peer([10, 0, 0, 1], 1);
        let (slot, _) = gate.enter(Source::of(a), a);
        drop(slot);
        assert_eq!(gate.len(), 0);
        assert_eq!(gate.gauge.get(), 0);
        let (_slot, displaced) = gate.enter(Source::of(a), a);
        assert_eq!(displaced, None);
        let keys = gate
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .by_key
            .len();
        assert_eq!(keys, 1);
        Ok(())
    }

    #[test]
    fn ipv6_sources_are_counted_by_their_64_prefix() {
        let one = SocketAddr::from((Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, 1), 1));
        let same_64 = SocketAddr::from((Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 9, 9, 9, 9), 2));
        let other_64 = SocketAddr::from((Ipv6Addr::new(0x2001, 0xdb8, 0, 2, 0, 0, 0, 1), 3));
        assert_eq!(Source::of(one), Source::of(same_64));
        assert_ne!(Source::of(one), Source::of(other_64));
        let mapped = SocketAddr::from((Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped(), 4));
        assert_eq!(Source::of(mapped), Source::of(peer([192, 0, 2, 1], 5)));
    }
}
