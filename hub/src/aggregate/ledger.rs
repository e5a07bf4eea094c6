//! The hub's record of conflicts: which are present on each object now
//! (open or resolved by the strategy), since when, and a bounded history of
//! those that ended. Feeds the hub API and the conflict metrics.
//!
//! A conflict is identified by object, type and subject: the same dispute
//! with a changed message is the same conflict. Two writers record here,
//! each replacing only its own: the merge (every type but
//! `UpsyncConflict`, [`ConflictLedger::record`]) and the upsync writer
//! (`UpsyncConflict` per cluster, [`ConflictLedger::record_upsync`]). Metrics:
//! `uplink_hub_conflicts{type,strategy}` (present now) and
//! `uplink_hub_conflicts_total{type,strategy}` (ever appeared).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use serde::Serialize;

use super::{Conflict, ConflictType, Merged, Strategy, UpsyncConflicts};
use crate::metrics::Metrics;
use crate::store::ObjectKey;

/// Ended conflicts kept for one object in API answers.
pub const HISTORY_PER_OBJECT: usize = 20;
/// Ended conflicts kept in all.
pub const HISTORY_TOTAL: usize = 1000;

/// What resolved (or left open) a conflict: the merge's strategy, or an
/// upsynced type's `upsyncConflicts`. Serialized as the strategy's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Resolution {
    Merge(Strategy),
    Upsync(UpsyncConflicts),
}

impl Resolution {
    pub fn as_str(self) -> &'static str {
        match self {
            Resolution::Merge(strategy) => strategy.as_str(),
            Resolution::Upsync(strategy) => strategy.as_str(),
        }
    }
}

impl PartialEq<Strategy> for Resolution {
    fn eq(&self, other: &Strategy) -> bool {
        *self == Resolution::Merge(*other)
    }
}

/// A conflict present on an object now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PresentConflict {
    #[serde(flatten)]
    pub conflict: Conflict,
    pub strategy: Resolution,
    /// When the hub first saw it (RFC 3339, hub clock).
    pub since: String,
}

/// A conflict that is gone: the clusters agree again, or the object is.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EndedConflict {
    pub object: ObjectKey,
    #[serde(flatten)]
    pub conflict: Conflict,
    pub strategy: Resolution,
    pub since: String,
    pub ended: String,
}

/// Present conflicts per object and the history of ended ones.
#[derive(Debug)]
pub struct ConflictLedger {
    inner: Mutex<Inner>,
    metrics: Arc<Metrics>,
}

#[derive(Debug, Default)]
struct Inner {
    present: HashMap<ObjectKey, Vec<PresentConflict>>,
    /// Oldest first; at most [`HISTORY_TOTAL`].
    history: VecDeque<EndedConflict>,
}

impl ConflictLedger {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            inner: Mutex::default(),
            metrics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Updates are plain collection edits; a poisoned lock holds valid data.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes `merged.conflicts` the present conflicts of `key` at `now`
    /// (its upsync conflicts stay as they are).
    pub fn record(&self, key: &ObjectKey, merged: &Merged, now: SystemTime) {
        let conflicts = merged
            .conflicts
            .iter()
            .map(|c| (c, Resolution::Merge(merged.strategy)));
        self.replace(
            key,
            |c| c.kind != ConflictType::UpsyncConflict,
            conflicts,
            now,
        );
    }

    /// Makes `conflict` (`None`: none) the present upsync conflict of `key`
    /// from `cluster` at `now`, resolved by `strategy`.
    pub fn record_upsync(
        &self,
        key: &ObjectKey,
        cluster: &str,
        conflict: Option<&Conflict>,
        strategy: UpsyncConflicts,
        now: SystemTime,
    ) {
        let subject = upsync_subject(cluster);
        self.replace(
            key,
            |c| c.kind == ConflictType::UpsyncConflict && c.subject == subject,
            conflict.map(|c| (c, Resolution::Upsync(strategy))),
            now,
        );
    }

    /// Replaces the present conflicts of `key` that are `mine` with
    /// `conflicts` at `now`; the others stay.
    fn replace<'c>(
        &self,
        key: &ObjectKey,
        mine: impl Fn(&Conflict) -> bool,
        conflicts: impl IntoIterator<Item = (&'c Conflict, Resolution)>,
        now: SystemTime,
    ) {
        let stamp = rfc3339(now);
        let mut inner = self.lock();
        let all = inner.present.remove(key).unwrap_or_default();
        let (previous, mut present): (Vec<PresentConflict>, Vec<PresentConflict>) =
            all.into_iter().partition(|p| mine(&p.conflict));
        for (conflict, strategy) in conflicts {
            let same = previous.iter().find(|p| {
                p.conflict.kind == conflict.kind
                    && p.conflict.subject == conflict.subject
                    && p.strategy == strategy
            });
            let since = match same {
                Some(p) => p.since.clone(),
                None => {
                    let labels = [conflict.kind.as_str(), strategy.as_str()];
                    self.metrics.conflicts.with_label_values(&labels).inc();
                    self.metrics
                        .conflicts_total
                        .with_label_values(&labels)
                        .inc();
                    tracing::info!(object = %key, conflict = conflict.kind.as_str(), subject = %conflict.subject, clusters = ?conflict.clusters, open = conflict.is_open(), "conflict appeared");
                    stamp.clone()
                }
            };
            present.push(PresentConflict {
                conflict: conflict.clone(),
                strategy,
                since,
            });
        }
        for old in previous {
            let still = present.iter().any(|p| {
                p.conflict.kind == old.conflict.kind
                    && p.conflict.subject == old.conflict.subject
                    && p.strategy == old.strategy
            });
            if still {
                continue;
            }
            self.metrics
                .conflicts
                .with_label_values(&[old.conflict.kind.as_str(), old.strategy.as_str()])
                .dec();
            tracing::info!(object = %key, conflict = old.conflict.kind.as_str(), subject = %old.conflict.subject, "conflict ended");
            if inner.history.len() >= HISTORY_TOTAL {
                inner.history.pop_front();
            }
            inner.history.push_back(EndedConflict {
                object: key.clone(),
                conflict: old.conflict,
                strategy: old.strategy,
                since: old.since,
                ended: stamp.clone(),
            });
        }
        if !present.is_empty() {
            inner.present.insert(key.clone(), present);
        }
    }

    /// The conflicts present on `key`.
    pub fn present(&self, key: &ObjectKey) -> Vec<PresentConflict> {
        self.lock().present.get(key).cloned().unwrap_or_default()
    }

    /// Every object with conflicts, sorted by object.
    pub fn all_present(&self) -> Vec<(ObjectKey, Vec<PresentConflict>)> {
        let mut all: Vec<_> = self
            .lock()
            .present
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// One page of the objects with conflicts, in key order (the hub API's
    /// conflict list pages this way).
    pub fn present_page(
        &self,
        after: Option<&ObjectKey>,
        limit: usize,
    ) -> crate::page::Page<ObjectKey> {
        crate::page::select(self.lock().present.keys(), after, limit)
    }

    /// Ended conflicts, newest first: of `key` (at most
    /// [`HISTORY_PER_OBJECT`]) or of every object.
    pub fn history(&self, key: Option<&ObjectKey>) -> Vec<EndedConflict> {
        let inner = self.lock();
        let ended = inner.history.iter().rev();
        match key {
            Some(key) => ended
                .filter(|e| &e.object == key)
                .take(HISTORY_PER_OBJECT)
                .cloned()
                .collect(),
            None => ended.cloned().collect(),
        }
    }
}

/// The subject of `cluster`'s upsync conflict on an object: one per
/// upsyncing cluster.
pub fn upsync_subject(cluster: &str) -> String {
    format!("upsync/{cluster}")
}

fn rfc3339(time: SystemTime) -> String {
    jiff::Timestamp::try_from(time)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::Severity;

    fn upsync_conflict(cluster: &str) -> Conflict {
        Conflict {
            kind: ConflictType::UpsyncConflict,
            severity: Severity::Warning,
            subject: upsync_subject(cluster),
            clusters: vec![cluster.to_owned()],
            message: "ThreeWayMerge dropped KCP's change of spec.b".into(),
            resolved_by: Some("ThreeWayMerge".into()),
        }
    }

    #[test]
    fn the_merge_and_the_upsync_writer_each_replace_only_their_own() {
        let metrics = Arc::new(Metrics::new().unwrap_or_else(|e| panic!("{e}")));
        let ledger = ConflictLedger::new(metrics.clone());
        let key = ObjectKey::deployment("web");
        let now = SystemTime::now();
        let strategy = UpsyncConflicts::ThreeWayMerge;
        ledger.record_upsync(&key, "a", Some(&upsync_conflict("a")), strategy, now);
        ledger.record_upsync(&key, "b", Some(&upsync_conflict("b")), strategy, now);
        let skew = Conflict::generation_skew(&[(1, vec!["a".into()]), (2, vec!["b".into()])], None);
        let merged = Merged {
            status: None,
            conflicts: vec![skew],
            disputed: Vec::new(),
            strategy: Strategy::Newest,
        };
        ledger.record(&key, &merged, now);
        assert_eq!(ledger.present(&key).len(), 3);
        // The merge finds no conflict: the upsync ones stay.
        ledger.record(
            &key,
            &Merged {
                conflicts: Vec::new(),
                ..merged
            },
            now,
        );
        assert_eq!(ledger.present(&key).len(), 2);
        // a's next write drops nothing: a's ends, b's stays.
        ledger.record_upsync(&key, "a", None, strategy, now);
        let present = ledger.present(&key);
        let [left] = present.as_slice() else {
            panic!("one conflict left, got {present:?}");
        };
        assert_eq!(left.conflict.subject, upsync_subject("b"));
        assert_eq!(left.strategy, Resolution::Upsync(strategy));
        let labels = ["UpsyncConflict", "ThreeWayMerge"];
        assert_eq!(metrics.conflicts.with_label_values(&labels).get(), 1);
        assert_eq!(metrics.conflicts_total.with_label_values(&labels).get(), 2);
        assert_eq!(ledger.history(Some(&key)).len(), 2, "the skew and a's");
    }
}
