//! What a replica does when it loses a shard: forgets the store's entries
//! of the shard (silently: no write comes of it), what the writer wrote of
//! it (a later takeover reads KCP again), and any snapshot it was
//! gathering for it. Sessions follow the same changes on their own
//! (telling agents, [`crate::session`]).

use std::collections::BTreeSet;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::replicas::{Ownership, ShardId};
use crate::store::Store;
use crate::writer::Writer;

/// Follows `ownership`'s changes until `stop` (a single hub: returns).
pub(crate) async fn follow(
    ownership: Ownership,
    store: Arc<Store>,
    writer: Arc<Writer>,
    stop: CancellationToken,
) {
    let Some(mut changes) = ownership.watch() else {
        return;
    };
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
        held = now;
    }
}

fn forget(ownership: &Ownership, store: &Store, writer: &Writer, shard: ShardId) {
    let forgotten = store.forget_within(|key| ownership.shard_of(&key.workspace) == shard);
    writer.forget_shard(shard);
    ownership.forget(shard);
    tracing::info!(%shard, forgotten, outcome = "forgotten", "shard lost: its entries forgotten");
}
