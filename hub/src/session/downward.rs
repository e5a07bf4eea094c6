//! The downward lane (protocol version 2): what KCP placed on the cluster,
//! from its queue in [`crate::downstream`], sent as the window allows (a
//! snapshot's entries, then its end, then changes), and the agent's
//! acknowledgements: confirmed deletions let go of the upstream object
//! (the hub's finalizer comes off), refused applies are recorded for a
//! condition upstream.
//!
//! The lane opens when the agent speaks version 2, names types it applies
//! that the hub syncs, and the cluster has a SyncTarget (no SyncTarget, no
//! placement, nothing to send). A version 1 agent is status-only.

use std::collections::HashSet;
use std::sync::Arc;

use tokio::sync::Notify;
use uplink_protocol::resource::ResourceSpec;
use uplink_protocol::{
    DOWNWARD_VERSION, DownwardAck, DownwardBatch, DownwardChange, DownwardDelta, Hello, HubFrame,
    ObjectRef, SnapshotBegin, SnapshotEnd,
};

use super::wire::Violation;
use super::{Connection, Transport};
use crate::downstream::{Change, LaneStart, Queued};
use crate::writer::finalizer::finalizer_name;

/// An open downward lane.
#[derive(Debug)]
pub(super) struct DownwardLane {
    /// Woken when the cluster's queue has something to send.
    pub(super) wake: Arc<Notify>,
    /// Most deltas sent and not acknowledged.
    window: u64,
    /// Most deltas per frame.
    batch: usize,
    /// The hub's finalizer for this cluster.
    finalizer: String,
}

impl<S: Transport> Connection<S> {
    /// Opens the lane, resuming or starting a snapshot (its first frame
    /// goes now); `None` for a status-only session.
    pub(super) async fn open_downward(
        &mut self,
        hello: &Hello,
    ) -> Result<Option<DownwardLane>, Violation> {
        if self.version < DOWNWARD_VERSION {
            return Ok(None);
        }
        let synced: HashSet<(String, String)> = self
            .shared
            .placements
            .settings()
            .resources
            .iter()
            .map(|r| (r.group.clone(), r.resource.clone()))
            .collect();
        let types: HashSet<(String, String)> = hello
            .downward_resources
            .iter()
            .filter_map(|text| text.parse::<ResourceSpec>().ok())
            .map(|r| (r.group, r.resource))
            .filter(|t| synced.contains(t))
            .collect();
        if types.is_empty() {
            return Ok(None);
        }
        // Under the view's read lock: the snapshot and the queue agree.
        let opened = {
            let view = self.shared.placements.read();
            view.synctarget(&self.cluster)
                .map(|t| t.key.clone())
                .map(|synctarget| {
                    // The hub holds what the cluster applies (placed before
                    // the lane opened too).
                    let finalizer = finalizer_name(&synctarget);
                    for (key, placed) in view.placed_objects(&self.cluster, &types) {
                        if !placed.deleting {
                            self.shared.finalizers.want(
                                &key,
                                &finalizer,
                                true,
                                false,
                                &placed.resource_version,
                                &placed.finalizers,
                            );
                        }
                    }
                    let (start, wake) = self.shared.downstream.open(
                        &self.cluster,
                        &hello.session_id,
                        types,
                        |types| {
                            let (deleting, live): (Vec<_>, Vec<_>) = view
                                .placed_objects(&self.cluster, types)
                                .into_iter()
                                .partition(|(_, placed)| placed.deleting);
                            (
                                live.into_iter()
                                    .map(|(key, placed)| (key, placed.uid, placed.manifest))
                                    .collect(),
                                deleting.into_iter().map(|(key, _)| key).collect(),
                            )
                        },
                    );
                    (synctarget, start, wake)
                })
        };
        let Some((synctarget, start, wake)) = opened else {
            return Ok(None);
        };
        tracing::info!(cluster = %self.cluster, ?start, "downward lane open");
        if let LaneStart::Snapshot { objects, .. } = start {
            self.send_or_end(&HubFrame::DownwardSnapshotBegin(SnapshotBegin {
                objects,
                shards: None,
            }))
            .await?;
        }
        let limits = self.shared.limits;
        Ok(Some(DownwardLane {
            wake,
            window: u64::from(limits.max_downward_in_flight.max(1)),
            batch: usize::try_from(limits.max_deltas_per_batch.max(1)).unwrap_or(usize::MAX),
            finalizer: finalizer_name(&synctarget),
        }))
    }

    /// Sends everything the window allows.
    pub(super) async fn send_downward(&mut self, lane: &DownwardLane) -> Result<(), Violation> {
        loop {
            let in_snapshot = self.shared.downstream.in_snapshot(&self.cluster);
            let batch = self
                .shared
                .downstream
                .next_batch(&self.cluster, lane.batch, lane.window);
            if !batch.is_empty() {
                let deltas = batch.into_iter().map(delta).collect();
                let frame = if in_snapshot {
                    HubFrame::DownwardSnapshotChunk(DownwardBatch { deltas })
                } else {
                    HubFrame::Downward(DownwardBatch { deltas })
                };
                self.send_or_end(&frame).await?;
                continue;
            }
            if let Some(end) = self
                .shared
                .downstream
                .snapshot_end_due(&self.cluster, lane.window)
            {
                self.send_or_end(&HubFrame::DownwardSnapshotEnd(SnapshotEnd {
                    seq: end,
                    upsync_listed: false,
                }))
                .await?;
                continue;
            }
            return Ok(());
        }
    }

    /// The agent applied up to `ack.seq`: deletions it confirmed let go of
    /// the upstream object; then more may go out.
    pub(super) async fn downward_ack(
        &mut self,
        ack: &DownwardAck,
        lane: &DownwardLane,
    ) -> Result<(), Violation> {
        let confirmed = self.shared.downstream.acked(&self.cluster, ack);
        for failure in &ack.failures {
            tracing::info!(cluster = %self.cluster, seq = failure.seq, reason = %failure.reason, message = %failure.message, "the cluster refused to apply an object");
        }
        if !confirmed.deleted.is_empty() {
            let view = self.shared.placements.read();
            for key in &confirmed.deleted {
                // Still placed (and so deleted in KCP, or being taken off
                // the cluster): let it go. An unplaced one was let go when
                // it was unplaced.
                if let Some(placed) = view.placed(&self.cluster, key) {
                    self.shared.finalizers.want(
                        key,
                        &lane.finalizer,
                        false,
                        placed.leaving,
                        &placed.resource_version,
                        &placed.finalizers,
                    );
                }
            }
        }
        self.send_downward(lane).await
    }
}

/// The wire form of a queued change.
fn delta(queued: Queued) -> DownwardDelta {
    let Queued {
        seq,
        key,
        uid,
        change,
    } = queued;
    DownwardDelta {
        seq,
        object: ObjectRef {
            group: key.group.clone(),
            version: key.version.clone(),
            resource: key.resource.clone(),
            kind: key.kind.clone(),
            workspace: key.workspace.clone(),
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            uid,
        },
        change: match change {
            Change::Apply(manifest) => DownwardChange::Apply {
                manifest_json: manifest.to_string(),
            },
            Change::Delete => DownwardChange::Delete,
        },
    }
}
