//! The live connection of each cluster: a newer connection for a cluster
//! replaces the older one, which is then told it was superseded.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use tokio_util::sync::CancellationToken;

/// The live connection of each cluster, so a newer one can replace it.
#[derive(Debug, Default)]
pub struct Connections {
    current: Mutex<HashMap<String, (u64, CancellationToken)>>,
    next_id: AtomicU64,
}

impl Connections {
    /// Makes a new connection the cluster's current one; the previous one's
    /// token is cancelled (it then tells its agent it was superseded).
    pub(super) fn register(&self, cluster: &str) -> (u64, CancellationToken) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let token = CancellationToken::new();
        let previous = self
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(cluster.to_owned(), (id, token.clone()));
        if let Some((_, old)) = previous {
            old.cancel();
        }
        (id, token)
    }

    /// Connection `id` of `cluster` ended; whether it was still the
    /// cluster's current one (not superseded by a newer connection).
    pub(super) fn unregister(&self, cluster: &str, id: u64) -> bool {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let was_current = current
            .get(cluster)
            .is_some_and(|(current, _)| *current == id);
        if was_current {
            current.remove(cluster);
        }
        was_current
    }
}
