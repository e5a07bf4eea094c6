//! Picks one page of a keyed collection in key order, as a Kubernetes list
//! pages: the `limit` smallest keys after the last key of the previous page.
//! The hub API ([`crate::http`]) serves its lists this way, so no request
//! copies more than one page of keys out of a store, whatever the store's
//! size or map type.

use std::collections::BinaryHeap;

/// One page of keys, sorted, and how many keys come after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<K> {
    /// At most `limit` keys, ascending.
    pub keys: Vec<K>,
    /// Keys after the last one of this page (0: this is the last page).
    pub remaining: usize,
}

/// The `limit` smallest of `keys` greater than `after` (all keys when
/// `after` is `None`), in one pass that holds at most `limit` references:
/// time O(n log limit), memory O(limit). `keys` need not be sorted or
/// distinct-checked: a map's keys are distinct.
pub fn select<'a, K>(keys: impl Iterator<Item = &'a K>, after: Option<&K>, limit: usize) -> Page<K>
where
    K: Ord + Clone + 'a,
{
    // A max-heap of the smallest keys seen so far: its top is the one to
    // drop when a smaller key comes.
    let mut smallest: BinaryHeap<&K> = BinaryHeap::with_capacity(limit.min(4096) + 1);
    let mut following = 0usize;
    for key in keys {
        if after.is_some_and(|after| key <= after) {
            continue;
        }
        following += 1;
        if smallest.len() < limit {
            smallest.push(key);
        } else if smallest.peek().is_some_and(|top| key < *top) {
            smallest.pop();
            smallest.push(key);
        }
    }
    let keys: Vec<K> = smallest.into_sorted_vec().into_iter().cloned().collect();
    Page {
        remaining: following - keys.len(),
        keys,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn pages_cover_every_key_once_in_order() {
        let keys: Vec<u32> = (0..1000).map(|i| (i * 7919) % 1000).collect();
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = select(keys.iter(), after.as_ref(), 64);
            seen.extend(page.keys.iter().copied());
            after = page.keys.last().copied();
            if page.remaining == 0 {
                break;
            }
        }
        assert_eq!(seen, (0..1000).collect::<Vec<u32>>());
    }

    #[test]
    fn an_empty_collection_is_one_empty_page() {
        let page = select(std::iter::empty::<&u8>(), None, 10);
        assert_eq!(
            page,
            Page {
                keys: vec![],
                remaining: 0
            }
        );
    }

    proptest! {
        #[test]
        fn a_page_is_the_sorted_prefix_after_the_key(
            keys in proptest::collection::btree_set(any::<u16>(), 0..300),
            after in proptest::option::of(any::<u16>()),
            limit in 1usize..50,
        ) {
            let shuffled: Vec<u16> = keys.iter().rev().copied().collect();
            let page = select(shuffled.iter(), after.as_ref(), limit);
            let expected: Vec<u16> = keys
                .iter()
                .copied()
                .filter(|k| after.is_none_or(|a| *k > a))
                .collect();
            prop_assert_eq!(&page.keys[..], &expected[..expected.len().min(limit)]);
            prop_assert_eq!(page.remaining, expected.len() - page.keys.len());
        }
    }
}
