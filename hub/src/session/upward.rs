//! The upward lane: status reports arriving as `Deltas` or as a snapshot
//! (`SnapshotBegin`, chunks, `SnapshotEnd`, buffered until complete), each
//! one checked, judged against placement (taken, held, or refused), stored,
//! and acknowledged with the refusals the agent was not told yet. A report
//! of an upsynced object ([`super::upsync`]) is stored like any and, taken or
//! held, queued for the upsync writer too (before it is acknowledged).

use std::collections::{HashMap, HashSet};
use uplink_protocol::names::invalid_name;
use uplink_protocol::{
    Ack, Change, Delta, DeltaBatch, ErrorCode, HubFrame, REPLICAS_VERSION, Rejected, ShardId,
    SnapshotBegin, SnapshotChunk, SnapshotEnd,
};

use super::shards::unheld_kind;
use super::wire::Violation;
use super::{Connection, Transport};
use crate::placement::Verdict;
use crate::status::Status;
use crate::store::{Entry, ObjectKey, StoreError, Update};
use crate::writer::upsync::{SnapshotScope, UpsyncReport};

/// A checked report: its store update, and what it asks of its upsynced
/// object, when it is of one.
type Checked = (Update, Option<UpsyncReport>);

/// A snapshot being received.
pub(super) struct SnapshotBuffer {
    entries: HashMap<ObjectKey, Entry>,
    /// Objects the agent saw deleted recently (acknowledged or not). A hub
    /// that restarted, possibly before writing an acknowledged deletion to
    /// KCP, holds nothing for them, so replacing the cluster's entries would
    /// not notice they are gone: they are re-evaluated (and cleared upstream
    /// when no cluster reports them) explicitly.
    tombstones: HashSet<ObjectKey>,
    /// What `entries` take against the cluster's memory budget: a snapshot
    /// is buffered whole before it replaces the cluster's entries, so it is
    /// held to the budget while it arrives.
    bytes: u64,
    /// The latest report of each upsynced object in the snapshot.
    upsync: HashMap<ObjectKey, UpsyncReport>,
    /// Every upsynced object the snapshot names as present, refused or
    /// not: the cluster still has it, so it is not deleted upstream.
    upsync_present: HashSet<ObjectKey>,
    /// What each buffered upsynced object's whole state takes of `bytes`.
    whole_costs: HashMap<ObjectKey, u64>,
    /// Version 4: the shards the snapshot covers (`None`: everything).
    shards: Option<Vec<ShardId>>,
}

impl<S: Transport> Connection<S> {
    /// A batch of deltas: judged and stored, then acknowledged.
    pub(super) async fn deltas(
        &mut self,
        session: &str,
        batch: DeltaBatch,
        snapshot: &Option<SnapshotBuffer>,
    ) -> Result<(), Violation> {
        if snapshot.is_some() {
            return Err(Violation::unexpected("Deltas during a snapshot"));
        }
        self.count_deltas(batch.deltas.len());
        let highest = batch.deltas.iter().map(|d| d.seq).max().unwrap_or(0);
        // Reports of shards this replica does not hold are acked (within
        // `highest`) and dropped: their holder has them.
        let updates: Vec<Checked> = batch
            .deltas
            .into_iter()
            .filter(|delta| self.delta_held(delta, unheld_kind::DELTA))
            .filter_map(|delta| self.accept(delta))
            .collect();
        // Replayed reports (at or below what the store holds) are not
        // upsynced again: something newer may be on its way already.
        let floor = self
            .shared
            .store
            .position(&self.cluster)
            .filter(|position| *position.session == *session)
            .map_or(0, |position| position.seq);
        let mut upsyncs = Vec::new();
        {
            // Judged and stored under the placement view's read lock:
            // an unplacement cannot slip in between.
            let view = self.shared.placements.read();
            let judge = view.judge(&self.cluster);
            let mut accepted = Vec::with_capacity(updates.len());
            let mut held = Vec::new();
            for (update, upsync) in updates {
                let upsync = upsync.filter(|_| update.seq > floor);
                match judge.verdict(&update.key) {
                    Verdict::Accept => {
                        upsyncs.extend(upsync);
                        accepted.push(update);
                    }
                    Verdict::Hold => {
                        upsyncs.extend(upsync);
                        held.push(update);
                    }
                    Verdict::Reject(reason) => self.refuse_report(
                        &update.key,
                        update.seq,
                        reason,
                        "not authorized by placement",
                    ),
                }
            }
            let applied = self
                .shared
                .store
                .ingest(&self.cluster, session, accepted, held)
                .map_err(store_violation)?;
            upsyncs.retain(|report| !applied.refused.iter().any(|(key, _, _)| *key == report.key));
            self.refuse_over_budget(applied.refused);
        }
        // Queued before the ack: an acknowledged upsync is never lost (a
        // full queue makes the ack wait).
        for report in upsyncs {
            self.shared.upsync.queue.push(report).await;
        }
        // Refused deltas are acked too: the agent would resend them
        // on every reconnect, and they would never get better.
        let acked = self.shared.store.advance(&self.cluster, session, highest);
        self.send_ack(acked).await?;
        Ok(())
    }

    /// Starts buffering a snapshot.
    pub(super) fn snapshot_begin(
        &self,
        begin: &SnapshotBegin,
        snapshot: &mut Option<SnapshotBuffer>,
    ) -> Result<(), Violation> {
        if snapshot.is_some() {
            return Err(Violation::unexpected("SnapshotBegin during a snapshot"));
        }
        let max = self.shared.limits.max_objects_per_cluster;
        if begin.objects > max {
            return Err(Violation::new(
                "too_many_objects",
                ErrorCode::LimitExceeded,
                format!(
                    "a snapshot of {} objects exceeds the limit of {max} objects per cluster",
                    begin.objects
                ),
            ));
        }
        if begin.shards.is_some() && self.version < REPLICAS_VERSION {
            return Err(Violation::unexpected(
                "SnapshotBegin.shards (protocol version 4) in an older session",
            ));
        }
        tracing::debug!(cluster = %self.cluster, objects = begin.objects, shards = ?begin.shards, "snapshot begins");
        *snapshot = Some(SnapshotBuffer {
            entries: HashMap::new(),
            tombstones: HashSet::new(),
            bytes: 0,
            upsync: HashMap::new(),
            upsync_present: HashSet::new(),
            whole_costs: HashMap::new(),
            shards: begin.shards.clone(),
        });
        Ok(())
    }

    /// Adds one chunk of a snapshot to its buffer.
    pub(super) fn snapshot_chunk(
        &self,
        chunk: SnapshotChunk,
        snapshot: &mut Option<SnapshotBuffer>,
    ) -> Result<(), Violation> {
        let Some(buffer) = snapshot.as_mut() else {
            return Err(Violation::unexpected("SnapshotChunk outside a snapshot"));
        };
        self.count_deltas(chunk.deltas.len());
        for delta in chunk.deltas {
            // Outside the snapshot's shards (the agent's mistake) or of a
            // shard this replica does not hold: dropped.
            let shard = self.shared.ownership.shard_of(&delta.object.workspace);
            if buffer.shards.as_ref().is_some_and(|s| !s.contains(&shard))
                || !self.delta_held(&delta, unheld_kind::SNAPSHOT)
            {
                continue;
            }
            if self.upsyncs(&delta.object) {
                let key = ObjectKey::from(&delta.object);
                match delta.change {
                    Change::Upsert { .. } => buffer.upsync_present.insert(key),
                    Change::Deleted => buffer.upsync_present.remove(&key),
                };
            }
            // An upsynced object's whole state is held until the snapshot
            // ends too: it counts against the budget, parsed (about twice
            // its text).
            let whole_cost = delta.object_json.as_ref().map_or(0, |j| 2 * j.len() as u64);
            let Some((update, upsync)) = self.accept(delta) else {
                continue;
            };
            // An Upsert is part of the snapshot; a Deleted one is not,
            // and is re-evaluated once the snapshot is applied.
            let cost = |key: &ObjectKey, entry: &Entry| {
                crate::budget::report_cost(key, Some(&entry.status), &entry.uid)
            };
            let before = buffer
                .entries
                .get(&update.key)
                .map_or(0, |e| cost(&update.key, e))
                + buffer.whole_costs.get(&update.key).copied().unwrap_or(0);
            match update.entry {
                Some(entry) => {
                    let after = cost(&update.key, &entry) + whole_cost;
                    let budget = self.shared.store.budget().cluster_bytes;
                    if buffer.bytes.saturating_sub(before).saturating_add(after) > budget {
                        self.refuse_report(
                            &update.key,
                            update.seq,
                            Rejected::CLUSTER_MEMORY_BUDGET,
                            "the snapshot exceeds the cluster's memory budget",
                        );
                        continue;
                    }
                    buffer.bytes = buffer.bytes.saturating_sub(before).saturating_add(after);
                    if let Some(upsync) = upsync {
                        buffer.upsync.insert(update.key.clone(), upsync);
                    }
                    if whole_cost > 0 {
                        buffer.whole_costs.insert(update.key.clone(), whole_cost);
                    } else {
                        buffer.whole_costs.remove(&update.key);
                    }
                    buffer.entries.insert(update.key, entry);
                }
                None => {
                    buffer.bytes = buffer.bytes.saturating_sub(before);
                    buffer.whole_costs.remove(&update.key);
                    buffer.entries.remove(&update.key);
                    if let Some(upsync) = upsync {
                        buffer.upsync.insert(update.key.clone(), upsync);
                    }
                    buffer.tombstones.insert(update.key);
                }
            }
        }
        // Deletions count too: a snapshot that names more objects
        // than a cluster may hold is refused whatever they are.
        let max = self.shared.limits.max_objects_per_cluster;
        if buffer.entries.len() as u64 > max
            || buffer.tombstones.len() as u64 > max
            || buffer.upsync_present.len() as u64 > max
        {
            return Err(Violation::new(
                "too_many_objects",
                ErrorCode::LimitExceeded,
                format!("the snapshot exceeds the limit of {max} objects per cluster"),
            ));
        }
        Ok(())
    }

    /// Completes a snapshot: the buffered reports judged against placement
    /// and replace the cluster's entries, then the snapshot is acknowledged.
    pub(super) async fn snapshot_end(
        &mut self,
        session: &str,
        end: &SnapshotEnd,
        snapshot: &mut Option<SnapshotBuffer>,
    ) -> Result<(), Violation> {
        let Some(buffer) = snapshot.take() else {
            return Err(Violation::unexpected("SnapshotEnd outside a snapshot"));
        };
        let objects = buffer.entries.len();
        let mut accepted = HashMap::with_capacity(objects);
        let mut held = HashMap::new();
        let mut upsync = buffer.upsync;
        let mut upsyncs = Vec::new();
        let acked = {
            let view = self.shared.placements.read();
            let judge = view.judge(&self.cluster);
            // The cluster's upsynced objects the snapshot does not name are
            // gone from it: deleted upstream too (the writer judges each).
            // Only when the agent says its snapshot names every object it
            // upsyncs (its upsync lists completed first; a snapshot taken
            // at its start names none), and only objects of the types this
            // session upsyncs: a session that upsyncs nothing (upsync off,
            // a version 2 agent) deletes nothing.
            // A snapshot of some shards names only their objects: it says
            // nothing of the others', which it leaves alone.
            if let Some(target) = judge.synctarget()
                && self.lists_upsynced(end)
            {
                let scope = match &buffer.shards {
                    None => SnapshotScope::Everything,
                    Some(shards) => SnapshotScope::Shards {
                        count: self.shared.ownership.count(),
                        shards: shards.iter().copied().collect(),
                    },
                };
                self.shared.upsync.snapshot(
                    &self.cluster,
                    &target.key,
                    &self.upsync,
                    &scope,
                    buffer.upsync_present,
                );
            }
            for (key, entry) in buffer.entries {
                match judge.verdict(&key) {
                    Verdict::Accept => {
                        accepted.insert(key, entry);
                    }
                    Verdict::Hold => {
                        held.insert(key, entry);
                    }
                    Verdict::Reject(reason) => {
                        self.refuse_report(&key, entry.seq, reason, "not authorized by placement");
                    }
                }
            }
            // Objects deleted while a restarted hub was away are
            // merged again, but only those placed on this cluster:
            // nothing here may touch another tenant's object.
            let deleted: Vec<ObjectKey> = buffer
                .tombstones
                .into_iter()
                .filter(|key| !accepted.contains_key(key) && judge.verdict(key) == Verdict::Accept)
                .collect();
            for key in accepted.keys().chain(held.keys()).chain(&deleted) {
                upsyncs.extend(upsync.remove(key));
            }
            let ownership = &self.shared.ownership;
            let within = buffer.shards.as_ref().map(|shards| {
                move |key: &ObjectKey| shards.contains(&ownership.shard_of(&key.workspace))
            });
            let applied = self
                .shared
                .store
                .replace_cluster_within(
                    &self.cluster,
                    session,
                    accepted,
                    held,
                    end.seq,
                    within.as_ref().map(|w| w as &dyn Fn(&ObjectKey) -> bool),
                )
                .map_err(store_violation)?;
            for key in deleted {
                self.shared.write_queue.push(key, &self.cluster);
            }
            upsyncs.retain(|report| !applied.refused.iter().any(|(key, _, _)| *key == report.key));
            self.refuse_over_budget(applied.refused);
            applied.seq
        };
        for report in upsyncs {
            self.shared.upsync.queue.push(report).await;
        }
        // A shard taken over writes once every agent asked sent its part.
        self.shared
            .ownership
            .gathered(&self.cluster, buffer.shards.as_deref());
        self.shared
            .ownership
            .snapshotted(&self.cluster, buffer.shards.as_deref());
        tracing::info!(cluster = %self.cluster, objects, shards = ?buffer.shards, held = self.shared.store.held(&self.cluster), seq = acked, "snapshot applied");
        self.send_ack(acked).await?;
        Ok(())
    }

    /// Whether this replica holds `delta`'s shard (counted as `kind`, or as
    /// an upsync, when it does not).
    fn delta_held(&self, delta: &Delta, kind: &'static str) -> bool {
        let kind = if self.upsyncs(&delta.object) {
            unheld_kind::UPSYNC
        } else {
            kind
        };
        self.shard_held(&delta.object.workspace, kind)
    }

    /// Acknowledges up to `seq`, with the refusals the agent was not told yet.
    async fn send_ack(&mut self, seq: u64) -> Result<(), Violation> {
        let ack = Ack {
            seq,
            rejected: self.shared.rejections.take(&self.cluster),
        };
        self.send_or_end(&HubFrame::Ack(ack)).await
    }

    /// Refuses one report: counted, logged (rate-limited) and kept for the
    /// agent's next `Ack`.
    fn refuse_report(&self, key: &ObjectKey, seq: u64, reason: &'static str, detail: &str) {
        self.shared
            .rejections
            .reject(&self.cluster, key, seq, reason, detail);
    }

    /// Tells the agent about reports the store refused for a memory budget.
    fn refuse_over_budget(&self, refused: Vec<crate::store::RefusedHeld>) {
        for (key, seq, reason) in refused {
            self.refuse_report(&key, seq, reason, "over a memory budget");
        }
    }

    fn count_deltas(&self, n: usize) {
        self.shared
            .metrics
            .deltas_received
            .with_label_values(&[&self.cluster])
            .inc_by(n as u64);
        self.shared.health.deltas_received(&self.cluster, n);
    }

    /// The store update for one delta, or `None` for a delta the hub cannot
    /// use: refused (counted, logged, told to the agent in its `Ack`), never
    /// the end of the session (one bad object must not block its cluster:
    /// the agent would resend it after every reconnect).
    fn accept(&self, mut delta: Delta) -> Option<Checked> {
        let checked = self
            .upsync_change(&mut delta)
            .and_then(|upsync| Ok((upsync, self.checked_entry(&mut delta)?)));
        match checked {
            Ok((upsync, entry)) => {
                let downstream_uid = delta.object.uid.clone();
                let update = Update::from_delta(delta, entry);
                let report = upsync.map(|change| UpsyncReport {
                    cluster: self.cluster.clone(),
                    key: update.key.clone(),
                    downstream_uid,
                    change,
                });
                Some((update, report))
            }
            Err(refusal) => {
                let key = ObjectKey::from(&delta.object);
                self.refuse_report(&key, delta.seq, refusal.reason, &refusal.message);
                None
            }
        }
    }

    /// Checks one delta; its store entry (`None` for a deletion) without the
    /// uid, which [`Update::from_delta`] moves in. The status text is moved out of
    /// the delta, not copied.
    fn checked_entry(&self, delta: &mut Delta) -> Result<Option<Entry>, Violation> {
        let object = &delta.object;
        if let Some((what, value)) = invalid_name(object, self.shared.require_workspace) {
            return Err(Violation::new(
                Rejected::INVALID_OBJECT,
                ErrorCode::Malformed,
                format!("delta {}: {what} {value:?} is not a valid name", delta.seq),
            ));
        }

        let entry = match &mut delta.change {
            Change::Deleted => None,
            Change::Upsert { status_json } => {
                let status = Status::from_json(std::mem::take(status_json)).map_err(|e| {
                    Violation::new(
                        Rejected::STATUS_NOT_OBJECT,
                        ErrorCode::Malformed,
                        format!("delta {}: {e}", delta.seq),
                    )
                })?;
                Some(Entry {
                    status,
                    generation: delta.generation,
                    observed_generation: delta.observed_generation,
                    observed_at_ms: self.plausible_time(delta.observed_at_ms),
                    seq: delta.seq,
                    uid: String::new(),
                })
            }
        };
        Ok(entry)
    }
}

/// How far past the agent's estimated clock a report may be dated: the
/// estimate is smoothed and includes half a round trip.
const REPORT_TIME_ALLOWANCE_MS: i64 = 60_000;

impl<S: Transport> Connection<S> {
    /// `observed_at_ms` (agent clock), no later than the agent's clock can
    /// be now: the hub's clock minus the agent's estimated offset, plus
    /// [`REPORT_TIME_ALLOWANCE_MS`]; before there is an estimate, the hub's
    /// clock plus the largest skew a heartbeat may have
    /// ([`crate::capacity::ReportBounds::max_clock_skew`]). A report dated
    /// in the far future would otherwise win every `Newest` merge.
    fn plausible_time(&self, observed_at_ms: i64) -> i64 {
        let hub_now = crate::health::unix_ms(std::time::SystemTime::now());
        let latest = match self.shared.health.clock_skew_ms(&self.cluster) {
            Some(skew) => hub_now
                .saturating_sub(skew)
                .saturating_add(REPORT_TIME_ALLOWANCE_MS),
            None => {
                let max = self.shared.report_bounds.max_clock_skew.as_millis();
                hub_now.saturating_add(i64::try_from(max).unwrap_or(i64::MAX))
            }
        };
        observed_at_ms.min(latest)
    }
}

fn store_violation(error: StoreError) -> Violation {
    match error {
        StoreError::TooManyObjects { .. } => Violation::new(
            "too_many_objects",
            ErrorCode::LimitExceeded,
            error.to_string(),
        ),
    }
}
