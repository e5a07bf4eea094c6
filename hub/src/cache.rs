//! A bounded map that evicts its least recently used entry, for what the hub
//! can rebuild on demand (a KCP client per workspace): names that come from
//! agents or KCP must not grow the hub without bound.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

/// At most `capacity` entries; inserting into a full cache evicts the entry
/// used least recently (looked up or inserted).
#[derive(Debug)]
pub struct LruCache<K, V> {
    capacity: usize,
    /// Each entry with the tick of its last use.
    entries: HashMap<K, (V, u64)>,
    /// Keys by the tick of their last use, oldest first.
    by_use: BTreeMap<u64, K>,
    tick: u64,
}

impl<K: Eq + Hash + Clone, V: Clone> LruCache<K, V> {
    /// A cache of at most `capacity` entries (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            entries: HashMap::new(),
            by_use: BTreeMap::new(),
            tick: 0,
        }
    }

    /// How many entries it keeps at most.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The value of `key`, now the most recently used.
    pub fn get<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        self.tick += 1;
        let (value, used) = self.entries.get_mut(key)?;
        if let Some(key) = self.by_use.remove(used) {
            self.by_use.insert(self.tick, key);
        }
        *used = self.tick;
        Some(value.clone())
    }

    /// Stores `value` for `key`; returns the key evicted to make room.
    pub fn insert(&mut self, key: K, value: V) -> Option<K> {
        self.tick += 1;
        if let Some((_, used)) = self.entries.insert(key.clone(), (value, self.tick)) {
            self.by_use.remove(&used);
            self.by_use.insert(self.tick, key);
            return None;
        }
        self.by_use.insert(self.tick, key);
        if self.entries.len() <= self.capacity {
            return None;
        }
        let (_, oldest) = self.by_use.pop_first()?;
        self.entries.remove(&oldest);
        Some(oldest)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_the_least_recently_used() {
        let mut cache = LruCache::new(2);
        assert_eq!(cache.insert("a".to_owned(), 1), None);
        assert_eq!(cache.insert("b".to_owned(), 2), None);
        assert_eq!(cache.get("a"), Some(1), "a is now the most recent");
        assert_eq!(cache.insert("c".to_owned(), 3), Some("b".to_owned()));
        assert_eq!(cache.get("b"), None);
        assert_eq!(cache.len(), 2);
        // Replacing a value evicts nothing and counts as a use.
        assert_eq!(cache.insert("a".to_owned(), 10), None);
        assert_eq!(cache.insert("d".to_owned(), 4), Some("c".to_owned()));
        assert_eq!(cache.get("a"), Some(10));
        assert_eq!(cache.get("d"), Some(4));
    }

    #[test]
    fn stays_bounded_under_many_names() {
        let mut cache = LruCache::new(100);
        let evicted = (0..10_000).filter_map(|i| cache.insert(i, i)).count();
        assert_eq!(cache.len(), 100);
        assert_eq!(evicted, 9_900);
        assert_eq!(cache.by_use.len(), 100, "the use order is bounded too");
        assert_eq!(cache.get(&9_999), Some(9_999));
        assert_eq!(cache.get(&0), None);
    }
}
