//! What an object's status upstream should be, given what every cluster
//! reports about it, and where the clusters disagree.
//!
//! [`merge`] is a pure function of the set of cluster entries (a
//! `BTreeMap`, so cluster name order), a snapshot of the clusters' states
//! ([`ClusterView`]), the [`MergePolicy`] and the [`FeatureGates`]: never of
//! arrival order, so replays and reorderings change nothing. In order:
//!
//! 1. Offline clusters: under `offlinePolicy: exclude` (the default) their
//!    last reports are left out, unless every reporting cluster is Offline;
//!    either way a `ClusterOffline` conflict says so.
//! 2. One contributing cluster: its status, as reported.
//! 3. Aggregation gate off: the whole status of the highest-priority cluster.
//! 4. Otherwise field rules (the kind's built-in ones, [`kinds`], overridden
//!    by configured ones, [`rules`]) merge the fields they name; every other
//!    top-level field goes to the strategy ([`strategy`]), which resolves
//!    disagreements or, for `All`/`Manual`/`Quorum` without a majority,
//!    leaves them open and the field out.
//! 5. Generation skew: with `All` or `Manual` it stays open and
//!    `observedGeneration` is left out; other strategies resolve it (the
//!    kind rules report the lowest generation).
//! 6. The `StatusConflict` condition ([`conflict`]) lists every conflict
//!    (unless `conditions` itself is disputed).
//!
//! [`Aggregator`] wraps the pure merge for the running hub: it takes the
//! cluster snapshot from [`Health`], and records conflicts in a
//! [`ConflictLedger`] (API and metrics). [`requeue`] sends an object back
//! to the writer when a cluster's state change alters its merge.

pub mod conditions;
pub mod config;
pub mod conflict;
pub mod gates;
pub mod kinds;
pub mod ledger;
pub mod requeue;
pub mod rules;
pub mod strategy;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::{Map, Value};

pub use config::{
    MergePolicy, OfflinePolicy, PolicyError, PriorityOrder, ResourcePolicy, Strategy,
    UpsyncConflicts,
};
pub use conflict::{Conflict, ConflictType, Severity};
pub use gates::{FeatureGates, GateError};
pub use ledger::ConflictLedger;
pub use requeue::watch_cluster_states;
pub use rules::{FieldPath, FieldRule, Rule};

use crate::downstream::Downstream;
use crate::health::{ClusterState, Health};
use crate::metrics::Metrics;
use crate::store::{ClusterName, Entry, ObjectKey};

/// What the merge needs to know about one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterInfo {
    pub state: ClusterState,
    /// Estimated `hub clock - agent clock`, in ms: an agent's time plus this
    /// is hub time.
    pub skew_ms: i64,
    pub labels: BTreeMap<String, String>,
}

impl Default for ClusterInfo {
    fn default() -> Self {
        Self {
            state: ClusterState::Ready,
            skew_ms: 0,
            labels: BTreeMap::new(),
        }
    }
}

/// A snapshot of the clusters, taken once per merge. A cluster it does not
/// know is Ready, with no skew and no labels.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterView {
    clusters: BTreeMap<ClusterName, ClusterInfo>,
}

impl ClusterView {
    pub fn insert(&mut self, cluster: impl Into<ClusterName>, info: ClusterInfo) {
        self.clusters.insert(cluster.into(), info);
    }

    pub fn with(mut self, cluster: impl Into<ClusterName>, info: ClusterInfo) -> Self {
        self.insert(cluster, info);
        self
    }

    pub fn get(&self, cluster: &str) -> ClusterInfo {
        self.clusters.get(cluster).cloned().unwrap_or_default()
    }

    pub fn state(&self, cluster: &str) -> ClusterState {
        self.clusters
            .get(cluster)
            .map_or(ClusterState::Ready, |c| c.state)
    }

    /// When `entry` was observed, on the hub's clock.
    pub fn corrected_ms(&self, cluster: &str, entry: &Entry) -> i64 {
        let skew = self.clusters.get(cluster).map_or(0, |c| c.skew_ms);
        entry.observed_at_ms.saturating_add(skew)
    }
}

/// The result of merging one object.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Merged {
    /// The desired upstream `.status`; `None` when no cluster reports the
    /// object (the writer then clears it).
    pub status: Option<Value>,
    /// Every conflict, sorted by type and subject.
    pub conflicts: Vec<Conflict>,
    /// Fields left out because their dispute is open: the writer leaves what
    /// KCP holds for them untouched.
    pub disputed: Vec<FieldPath>,
    /// The strategy in effect (`Manual` when conflict resolution is gated off).
    pub strategy: Strategy,
}

/// Merges the `entries` every cluster reports for `key`.
pub fn merge(
    key: &ObjectKey,
    entries: &BTreeMap<ClusterName, Entry>,
    clusters: &ClusterView,
    policy: &MergePolicy,
    gates: &FeatureGates,
) -> Merged {
    let resource = policy.resource(&key.group, &key.resource);
    let strategy = if gates.upstream_sync_conflict_resolution {
        resource.strategy
    } else {
        Strategy::Manual
    };
    if entries.is_empty() {
        return Merged {
            status: None,
            conflicts: Vec::new(),
            disputed: Vec::new(),
            strategy,
        };
    }

    let mut conflicts = Vec::new();
    let offline: Vec<ClusterName> = entries
        .keys()
        .filter(|c| clusters.state(c) == ClusterState::Offline)
        .cloned()
        .collect();
    let all_offline = offline.len() == entries.len();
    if !offline.is_empty() {
        conflicts.push(Conflict::cluster_offline(
            &offline,
            policy.offline,
            all_offline,
        ));
    }
    let exclude = policy.offline == OfflinePolicy::Exclude && !all_offline;
    let contributing: Vec<(&str, &Entry)> = entries
        .iter()
        .filter(|(cluster, _)| !(exclude && offline.contains(cluster)))
        .map(|(cluster, entry)| (cluster.as_str(), entry))
        .collect();

    let names: Vec<&str> = contributing.iter().map(|(c, _)| *c).collect();
    let ranks = ranks(&names, policy.priority_for(resource), clusters);
    // The store keeps statuses as text; only the contributing ones are
    // parsed, once per merge.
    let parsed: Vec<Value> = contributing.iter().map(|(_, e)| e.status.value()).collect();
    let reports = contributing
        .iter()
        .zip(&parsed)
        .zip(ranks)
        .map(|(((cluster, entry), status), rank)| Report {
            cluster,
            status,
            time_ms: clusters.corrected_ms(cluster, entry),
            rank,
            observed_generation: entry
                .observed_generation
                .or_else(|| status.get("observedGeneration").and_then(Value::as_i64)),
        })
        .collect();
    let mut merger = Merger {
        reports,
        strategy,
        conflicts,
        disputed: Vec::new(),
    };

    let mut status = if merger.reports.len() == 1 || !gates.upstream_sync_aggregation {
        merger.whole_status_by_priority()
    } else {
        let mut rules = if resource.kind_merge {
            kinds::rules_for(&key.group, &key.kind)
        } else {
            Vec::new()
        };
        rules.retain(|builtin| {
            !resource.fields.iter().any(|configured| {
                configured.path.starts_with(&builtin.path)
                    || builtin.path.starts_with(&configured.path)
            })
        });
        rules.extend(resource.fields.iter().cloned());
        rules.sort_by(|a, b| a.path.cmp(&b.path));
        merger.merge_fields(&rules)
    };

    if merger.generation_skew_is_open() {
        let path = FieldPath::of(&["observedGeneration"]);
        path.remove(&mut status);
        merger.disputed.push(path);
    }
    let Merger {
        mut conflicts,
        mut disputed,
        ..
    } = merger;
    conflicts.sort_by(|a, b| (a.kind, &a.subject).cmp(&(b.kind, &b.subject)));
    disputed.sort();
    disputed.dedup();
    // Conditions disputed (not lists, or no kind merge): the writer keeps
    // what KCP holds, so a condition added here would never land.
    if !disputed.contains(&FieldPath::of(&["conditions"])) {
        conflict::set_condition(&mut status, &conflicts);
    }
    Merged {
        status: Some(status),
        conflicts,
        disputed,
        strategy,
    }
}

/// One contributing cluster's report, as the merge sees it.
#[derive(Debug)]
pub(crate) struct Report<'a> {
    pub cluster: &'a str,
    pub status: &'a Value,
    /// When it was observed, skew-corrected to the hub's clock.
    pub time_ms: i64,
    /// Position in the priority order (0 first); unique.
    pub rank: usize,
    pub observed_generation: Option<i64>,
}

/// The state of one merge: the reports (in cluster name order), the
/// strategy, and what it found.
#[derive(Debug)]
pub(crate) struct Merger<'a> {
    pub reports: Vec<Report<'a>>,
    pub strategy: Strategy,
    pub conflicts: Vec<Conflict>,
    pub disputed: Vec<FieldPath>,
}

impl Merger<'_> {
    /// The whole status of the highest-priority report.
    fn whole_status_by_priority(&mut self) -> Value {
        self.detect_generation_skew();
        self.reports
            .iter()
            .min_by_key(|r| r.rank)
            .map_or_else(empty, |r| object_or_empty(r.status))
    }

    /// Rules for the fields they name, the strategy for the other top-level
    /// fields. `rules` are sorted by path and do not overlap.
    fn merge_fields(&mut self, rules: &[FieldRule]) -> Value {
        self.detect_generation_skew();
        let statuses: Vec<Value> = self
            .reports
            .iter()
            .map(|r| object_or_empty(r.status))
            .collect();
        if let Some(root) = rules.iter().find(|r| r.path.segments().is_empty()) {
            let votes: Vec<(usize, &Value)> = statuses.iter().enumerate().collect();
            return self
                .apply(root.rule, &root.path, &votes)
                .map_or_else(empty, |v| object_or_empty(&v));
        }

        let rests: Vec<Value> = statuses
            .iter()
            .map(|status| {
                let mut rest = status.clone();
                for rule in rules {
                    rule.path.remove(&mut rest);
                }
                rest
            })
            .collect();
        let keys: BTreeSet<&String> = rests
            .iter()
            .filter_map(Value::as_object)
            .flat_map(Map::keys)
            .collect();
        let mut merged = Map::new();
        for key in keys {
            let votes: Vec<(usize, &Value)> = rests
                .iter()
                .enumerate()
                .filter_map(|(i, rest)| Some((i, rest.get(key)?)))
                .collect();
            if let Some(value) = self.decide(&FieldPath::of(&[key]), &votes) {
                merged.insert(key.clone(), value);
            }
        }
        let mut merged = Value::Object(merged);
        for rule in rules {
            let votes: Vec<(usize, &Value)> = statuses
                .iter()
                .enumerate()
                .filter_map(|(i, status)| Some((i, rule.path.lookup(status)?)))
                .collect();
            match self.apply(rule.rule, &rule.path, &votes) {
                Some(value) => rule.path.insert(&mut merged, value),
                None => {
                    rule.path.remove(&mut merged);
                }
            }
        }
        merged
    }

    /// Records a `GenerationSkew` conflict when reports are at different
    /// observed generations.
    fn detect_generation_skew(&mut self) {
        let mut levels: BTreeMap<i64, Vec<String>> = BTreeMap::new();
        for report in &self.reports {
            if let Some(generation) = report.observed_generation {
                levels
                    .entry(generation)
                    .or_default()
                    .push(report.cluster.to_owned());
            }
        }
        if levels.len() < 2 {
            return;
        }
        let resolved_by = match self.strategy {
            Strategy::All | Strategy::Manual => None,
            other => Some(other),
        };
        let levels: Vec<(i64, Vec<String>)> = levels.into_iter().collect();
        self.conflicts
            .push(Conflict::generation_skew(&levels, resolved_by));
    }

    fn generation_skew_is_open(&self) -> bool {
        self.conflicts
            .iter()
            .any(|c| c.kind == ConflictType::GenerationSkew && c.is_open())
    }
}

/// Each name's position in `order` (0 first), ties by name. Works on its own
/// list of indices: the caller's slice is never reordered.
fn ranks(names: &[&str], order: &PriorityOrder, clusters: &ClusterView) -> Vec<usize> {
    let mut indices: Vec<usize> = (0..names.len()).collect();
    match order {
        PriorityOrder::Clusters(list) => indices.sort_by_key(|&i| {
            let position = list
                .iter()
                .position(|c| c == names[i])
                .unwrap_or(usize::MAX);
            (position, names[i])
        }),
        PriorityOrder::Label(label) => indices.sort_by_key(|&i| {
            let value = clusters
                .clusters
                .get(names[i])
                .and_then(|c| c.labels.get(label))
                .and_then(|v| v.trim().parse::<i64>().ok());
            (Reverse(value), names[i])
        }),
    }
    let mut ranks = vec![0; names.len()];
    for (rank, index) in indices.into_iter().enumerate() {
        ranks[index] = rank;
    }
    ranks
}

fn empty() -> Value {
    Value::Object(Map::new())
}

/// Statuses are objects; anything else counts as an empty status.
fn object_or_empty(value: &Value) -> Value {
    if value.is_object() {
        value.clone()
    } else {
        empty()
    }
}

/// The merge as the running hub does it: clusters from [`Health`], the
/// configured policy and gates, and conflicts recorded in a ledger.
#[derive(Debug)]
pub struct Aggregator {
    policy: MergePolicy,
    gates: FeatureGates,
    health: Arc<Health>,
    heartbeat_interval: Duration,
    offline_grace: Duration,
    ledger: ConflictLedger,
    /// Where refused downward applies are recorded, for their condition.
    downstream: Option<Arc<Downstream>>,
    metrics: Arc<Metrics>,
}

impl Aggregator {
    pub fn new(
        policy: MergePolicy,
        gates: FeatureGates,
        health: Arc<Health>,
        heartbeat_interval: Duration,
        offline_grace: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            policy,
            gates,
            health,
            heartbeat_interval,
            offline_grace,
            ledger: ConflictLedger::new(metrics.clone()),
            downstream: None,
            metrics,
        }
    }

    /// Merged statuses also say which clusters refused to apply the object
    /// (the `DownstreamApplied` condition, [`conditions::set_apply_failures`]).
    pub fn with_apply_failures(mut self, downstream: Arc<Downstream>) -> Self {
        self.downstream = Some(downstream);
        self
    }

    pub fn gates(&self) -> FeatureGates {
        self.gates
    }

    pub fn policy(&self) -> &MergePolicy {
        &self.policy
    }

    pub fn ledger(&self) -> &ConflictLedger {
        &self.ledger
    }

    /// Every known cluster's state, skew and labels at `now`.
    pub fn cluster_view(&self, now: SystemTime) -> ClusterView {
        let states = self
            .health
            .link_states(now, self.heartbeat_interval, self.offline_grace);
        let mut view = self.view_of(states);
        self.add_labelled(&mut view, self.policy.cluster_labels.keys());
        view
    }

    /// The view a merge of `entries` needs: only the clusters that report
    /// the object. Merging never looks at any other, and building the whole
    /// fleet's view per write made each write cost O(clusters).
    fn view_for(&self, entries: &BTreeMap<ClusterName, Entry>, now: SystemTime) -> ClusterView {
        let states = self.health.link_states_of(
            entries.keys().map(String::as_str),
            now,
            self.heartbeat_interval,
            self.offline_grace,
        );
        let mut view = self.view_of(states);
        self.add_labelled(&mut view, entries.keys());
        view
    }

    /// Adds each of `names` that has configured labels but no health record
    /// yet, with just its labels.
    fn add_labelled<'a>(
        &self,
        view: &mut ClusterView,
        names: impl IntoIterator<Item = &'a ClusterName>,
    ) {
        for name in names {
            if let Some(labels) = self.policy.cluster_labels.get(name)
                && !view.clusters.contains_key(name)
            {
                view.insert(
                    name.clone(),
                    ClusterInfo {
                        labels: labels.clone(),
                        ..ClusterInfo::default()
                    },
                );
            }
        }
    }

    fn view_of(&self, states: Vec<(ClusterName, ClusterState, Option<i64>)>) -> ClusterView {
        let mut view = ClusterView::default();
        for (name, state, skew) in states {
            let labels = self
                .policy
                .cluster_labels
                .get(&name)
                .cloned()
                .unwrap_or_default();
            view.insert(
                name,
                ClusterInfo {
                    state,
                    skew_ms: skew.unwrap_or(0),
                    labels,
                },
            );
        }
        view
    }

    /// The merge of `entries` now, without recording anything.
    pub fn preview(&self, key: &ObjectKey, entries: &BTreeMap<ClusterName, Entry>) -> Merged {
        let view = self.view_for(entries, SystemTime::now());
        merge(key, entries, &view, &self.policy, &self.gates)
    }

    /// The merge of `entries` now, with its conflicts recorded (what the
    /// writer uses).
    pub fn evaluate(&self, key: &ObjectKey, entries: &BTreeMap<ClusterName, Entry>) -> Merged {
        let now = SystemTime::now();
        let mut merged = merge(
            key,
            entries,
            &self.view_for(entries, now),
            &self.policy,
            &self.gates,
        );
        self.ledger.record(key, &merged, now);
        if let (Some(downstream), Some(status)) = (&self.downstream, merged.status.as_mut()) {
            conditions::set_apply_failures(status, &downstream.failures(key));
        }
        merged
    }

    /// Each cluster's state at `now`.
    fn states(&self, now: SystemTime) -> BTreeMap<ClusterName, ClusterState> {
        self.health
            .link_states(now, self.heartbeat_interval, self.offline_grace)
            .into_iter()
            .map(|(name, state, _)| (name, state))
            .collect()
    }
}

#[cfg(test)]
mod tests;
