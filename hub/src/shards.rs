//! What a replica does when it loses a shard: forgets the store's entries
//! of the shard (silently: no write comes of it), what the writer wrote of
//! it (a later takeover reads KCP again), and any snapshot it was
//! gathering for it. When a replica that started less than [`WARM_UP`] ago
//! acquires one, its writes wait for the snapshot of every cluster KCP
//! knows (a SyncTarget), not only of those connected now: a replica that
//! just joined has few sessions yet (agents find it at their next DNS
//! resolution or reconnect), and a merge of only their reports would
//! overwrite what the previous holder wrote of all of them. The wait is
//! bounded by the gather timeout; later, the connected agents are the live
//! ones and only they are waited for. Sessions follow the same changes on
//! their own (telling agents, [`crate::session`]).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::placement::Placements;
use crate::replicas::{Ownership, ShardId};
use crate::store::Store;
use crate::writer::Writer;

/// How long after its start a replica waits, on taking a shard, for every
/// registered cluster's snapshot rather than its connected ones': the
/// agents' DNS re-resolution (30 s by default) and a reconnect.
pub(crate) const WARM_UP: Duration = Duration::from_secs(60);

/// Follows `ownership`'s changes until `stop` (a single hub: returns).
pub(crate) async fn follow(
    ownership: Ownership,
    store: Arc<Store>,
    writer: Arc<Writer>,
    placements: Arc<Placements>,
    stop: CancellationToken,
) {
    let Some(mut changes) = ownership.watch() else {
        return;
    };
    let started = Instant::now();
    let mut held: BTreeSet<ShardId> = changes.borrow_and_update().iter().copied().collect();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            changed = changes.changed() => if changed.is_err() { return },
        }
        let now: BTreeSet<ShardId> = changes.borrow_and_update().iter().copied().collect();
        for shard in held.difference(&now) {
            forget(&ownership, &store, &writer, *shard);
        }
        let acquired: Vec<ShardId> = now.difference(&held).copied().collect();
        if !acquired.is_empty() && started.elapsed() < WARM_UP {
            let clusters: Vec<String> = placements
                .read()
                .clusters_by_synctarget_key()
                .into_values()
                .collect();
            for shard in &acquired {
                for cluster in &clusters {
                    ownership.expect(*shard, cluster);
                }
            }
        }
        held = now;
    }
}

fn forget(ownership: &Ownership, store: &Store, writer: &Writer, shard: ShardId) {
    let forgotten = store.forget_within(|key| ownership.shard_of(&key.workspace) == shard);
    writer.forget_shard(shard);
    ownership.forget(shard);
    tracing::info!(%shard, forgotten, outcome = "forgotten", "shard lost: its entries forgotten");
}
