//! Unit tests of the merge: each kind against hand-written expected
//! objects, each strategy, conflicts and gates; and property tests that no
//! arrival order or replay changes the result.

use crate::store::KeyParts;
use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;
use proptest::strategy::Strategy as _;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::Strategy;
use super::*;
use crate::metrics::Metrics;
use crate::store::{Store, Update};
use crate::writer::WriteQueue;

const T0: i64 = 1_700_000_000_000;

fn key(group: &str, resource: &str, kind: &str) -> ObjectKey {
    ObjectKey::new(KeyParts {
        workspace: "root:org:team-a".into(),
        group: group.into(),
        version: "v1".into(),
        resource: resource.into(),
        kind: kind.into(),
        namespace: Some("shop".into()),
        name: "web".into(),
    })
}

fn deployment() -> ObjectKey {
    key("apps", "deployments", "Deployment")
}

fn widget() -> ObjectKey {
    key("example.com", "widgets", "Widget")
}

fn entry(status: Value, at_ms: i64) -> Entry {
    let observed_generation = status.get("observedGeneration").and_then(Value::as_i64);
    Entry {
        status: crate::status::Status::of(&status),
        generation: observed_generation,
        observed_generation,
        observed_at_ms: at_ms,
        seq: 1,
        uid: "uid".into(),
    }
}

fn entries(list: Vec<(&str, Value)>) -> BTreeMap<ClusterName, Entry> {
    list.into_iter()
        .enumerate()
        .map(|(i, (c, s))| (c.to_owned(), entry(s, T0 + i as i64)))
        .collect()
}

fn policy(strategy: Strategy) -> MergePolicy {
    let mut policy = MergePolicy::default();
    policy.default.strategy = strategy;
    policy
}

fn merge_with(
    key: &ObjectKey,
    entries: &BTreeMap<ClusterName, Entry>,
    policy: &MergePolicy,
) -> Merged {
    merge(
        key,
        entries,
        &ClusterView::default(),
        policy,
        &FeatureGates::default(),
    )
}

fn merge_default(key: &ObjectKey, entries: &BTreeMap<ClusterName, Entry>) -> Merged {
    merge_with(key, entries, &MergePolicy::default())
}

fn status(merged: &Merged) -> Value {
    merged.status.clone().unwrap_or(Value::Null)
}

fn offline() -> ClusterInfo {
    ClusterInfo {
        state: ClusterState::Offline,
        ..ClusterInfo::default()
    }
}

fn available(time: &str) -> Value {
    json!({"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable",
           "message": "ok", "lastTransitionTime": time})
}

fn deployment_status(ready: i64, generation: i64, time: &str) -> Value {
    json!({
        "replicas": ready, "updatedReplicas": ready, "readyReplicas": ready,
        "availableReplicas": ready, "observedGeneration": generation,
        "conditions": [available(time)],
    })
}

// ---- kinds ----------------------------------------------------------------

#[test]
fn deployment_sums_replicas_and_combines_conditions() {
    let merged = merge_default(
        &deployment(),
        &entries(vec![
            ("a", deployment_status(2, 3, "2024-01-01T00:00:00Z")),
            ("b", deployment_status(3, 3, "2024-01-01T00:01:00Z")),
            ("c", deployment_status(5, 3, "2024-01-01T00:00:30Z")),
        ]),
    );
    assert_eq!(
        status(&merged),
        json!({
            "replicas": 10, "updatedReplicas": 10, "readyReplicas": 10,
            "availableReplicas": 10, "observedGeneration": 3,
            "conditions": [available("2024-01-01T00:01:00Z")],
        })
    );
    assert!(merged.conflicts.is_empty());
}

#[test]
fn deployment_with_a_cluster_that_has_no_status_yet() {
    let merged = merge_default(
        &deployment(),
        &entries(vec![
            ("a", deployment_status(2, 3, "2024-01-01T00:00:00Z")),
            ("b", deployment_status(3, 3, "2024-01-01T00:01:00Z")),
            ("c", json!({})),
        ]),
    );
    assert_eq!(
        status(&merged),
        json!({
            "replicas": 5, "updatedReplicas": 5, "readyReplicas": 5,
            "availableReplicas": 5, "observedGeneration": 3,
            "conditions": [{
                "type": "Available", "status": "Unknown", "reason": "NotReportedByAllClusters",
                "message": "ok (True: a, b; missing: c)", "lastTransitionTime": "2024-01-01T00:00:00Z",
            }],
        })
    );
    assert!(merged.conflicts.is_empty(), "no status is no disagreement");
}

#[test]
fn offline_cluster_is_left_out_and_said_so() {
    let list = entries(vec![
        ("a", deployment_status(2, 3, "2024-01-01T00:00:00Z")),
        ("b", deployment_status(3, 3, "2024-01-01T00:01:00Z")),
        (
            "c",
            json!({"replicas": 5, "readyReplicas": 0, "observedGeneration": 2,
                     "conditions": [{"type": "Available", "status": "False"}]}),
        ),
    ]);
    let view = ClusterView::default().with("c", offline());
    let merged = merge(
        &deployment(),
        &list,
        &view,
        &MergePolicy::default(),
        &FeatureGates::default(),
    );
    assert_eq!(
        status(&merged),
        json!({
            "replicas": 5, "updatedReplicas": 5, "readyReplicas": 5,
            "availableReplicas": 5, "observedGeneration": 3,
            "conditions": [
                available("2024-01-01T00:01:00Z"),
                {"type": "StatusConflict", "status": "True", "reason": "Resolved",
                 "message": "ClusterOffline (Info, resolved by offlinePolicy=exclude): c Offline; their last reports are left out"},
            ],
        })
    );

    // keep: the old report counts, and the conflict is a warning.
    let keep = MergePolicy {
        offline: OfflinePolicy::Keep,
        ..MergePolicy::default()
    };
    let merged = merge(&deployment(), &list, &view, &keep, &FeatureGates::default());
    let merged_status = status(&merged);
    assert_eq!(merged_status["replicas"], json!(10));
    assert_eq!(merged_status["observedGeneration"], json!(2));
    assert_eq!(merged_status["conditions"][0]["status"], json!("False"));
    let kinds: Vec<(ConflictType, Severity)> = merged
        .conflicts
        .iter()
        .map(|c| (c.kind, c.severity))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (ConflictType::GenerationSkew, Severity::Warning),
            (ConflictType::ClusterOffline, Severity::Warning),
        ]
    );

    // Every cluster Offline: their last reports are all there is.
    let view = ClusterView::default()
        .with("a", offline())
        .with("b", offline())
        .with("c", offline());
    let merged = merge(
        &deployment(),
        &list,
        &view,
        &MergePolicy::default(),
        &FeatureGates::default(),
    );
    assert_eq!(status(&merged)["replicas"], json!(10));
    assert!(
        merged
            .conflicts
            .iter()
            .any(|c| c.severity == Severity::Critical)
    );
}

#[test]
fn replicaset_statefulset_daemonset_sum_their_counts() {
    let merged = merge_default(
        &key("apps", "replicasets", "ReplicaSet"),
        &entries(vec![
            (
                "a",
                json!({"replicas": 1, "fullyLabeledReplicas": 1, "readyReplicas": 1, "availableReplicas": 1, "observedGeneration": 4}),
            ),
            (
                "b",
                json!({"replicas": 2, "fullyLabeledReplicas": 2, "readyReplicas": 0, "availableReplicas": 0, "observedGeneration": 4}),
            ),
        ]),
    );
    assert_eq!(
        status(&merged),
        json!({"replicas": 3, "fullyLabeledReplicas": 3, "readyReplicas": 1, "availableReplicas": 1, "observedGeneration": 4})
    );

    let merged = merge_default(
        &key("apps", "statefulsets", "StatefulSet"),
        &entries(vec![
            (
                "a",
                json!({"replicas": 3, "readyReplicas": 3, "currentReplicas": 3, "updatedReplicas": 3,
                         "availableReplicas": 3, "currentRevision": "web-1", "updateRevision": "web-1",
                         "collisionCount": 0, "observedGeneration": 1}),
            ),
            (
                "b",
                json!({"replicas": 2, "readyReplicas": 1, "currentReplicas": 2, "updatedReplicas": 2,
                         "availableReplicas": 1, "currentRevision": "web-1", "updateRevision": "web-1",
                         "collisionCount": 1, "observedGeneration": 1}),
            ),
        ]),
    );
    assert_eq!(
        status(&merged),
        json!({"replicas": 5, "readyReplicas": 4, "currentReplicas": 5, "updatedReplicas": 5,
               "availableReplicas": 4, "currentRevision": "web-1", "updateRevision": "web-1",
               "collisionCount": 1, "observedGeneration": 1})
    );

    let merged = merge_default(
        &key("apps", "daemonsets", "DaemonSet"),
        &entries(vec![
            (
                "a",
                json!({"currentNumberScheduled": 3, "desiredNumberScheduled": 3, "numberAvailable": 3,
                         "numberMisscheduled": 0, "numberReady": 3, "updatedNumberScheduled": 3, "observedGeneration": 2}),
            ),
            (
                "b",
                json!({"currentNumberScheduled": 2, "desiredNumberScheduled": 4, "numberAvailable": 1,
                         "numberMisscheduled": 1, "numberReady": 1, "numberUnavailable": 3,
                         "updatedNumberScheduled": 2, "observedGeneration": 2}),
            ),
        ]),
    );
    assert_eq!(
        status(&merged),
        json!({"currentNumberScheduled": 5, "desiredNumberScheduled": 7, "numberAvailable": 4,
               "numberMisscheduled": 1, "numberReady": 4, "numberUnavailable": 3,
               "updatedNumberScheduled": 5, "observedGeneration": 2})
    );
}

fn job() -> ObjectKey {
    key("batch", "jobs", "Job")
}

#[test]
fn job_failed_in_one_cluster_is_failed_and_not_complete() {
    let merged = merge_default(
        &job(),
        &entries(vec![
            (
                "a",
                json!({"active": 0, "succeeded": 1, "startTime": "2024-01-01T00:00:10Z",
                         "completionTime": "2024-01-01T00:05:00Z",
                         "conditions": [{"type": "Complete", "status": "True"}]}),
            ),
            (
                "b",
                json!({"active": 0, "failed": 2, "startTime": "2024-01-01T00:00:00Z",
                         "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}),
            ),
        ]),
    );
    assert_eq!(
        status(&merged),
        json!({
            "active": 0, "succeeded": 1, "failed": 2, "startTime": "2024-01-01T00:00:00Z",
            "conditions": [
                {"type": "Complete", "status": "Unknown", "reason": "NotReportedByAllClusters",
                 "message": "(True: a; missing: b)"},
                {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                 "message": "(True: b; missing: a)"},
            ],
        })
    );
}

#[test]
fn job_complete_everywhere_takes_the_latest_completion() {
    let done = |succeeded: i64, at: &str| {
        json!({"succeeded": succeeded, "startTime": "2024-01-01T00:00:00Z", "completionTime": at,
               "conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": at}]})
    };
    let merged = merge_default(
        &job(),
        &entries(vec![
            ("a", done(1, "2024-01-01T00:09:00Z")),
            ("b", done(2, "2024-01-01T00:05:00Z")),
            (
                "c",
                json!({"active": 1, "startTime": "2024-01-01T00:00:00Z"}),
            ),
        ]),
    );
    let s = status(&merged);
    assert_eq!(s["succeeded"], json!(3));
    assert_eq!(s["active"], json!(1));
    assert_eq!(s.get("completionTime"), None, "c is still running");
    assert_eq!(s["conditions"][0]["status"], json!("Unknown"));

    let merged = merge_default(
        &job(),
        &entries(vec![
            ("a", done(1, "2024-01-01T00:09:00Z")),
            ("b", done(2, "2024-01-01T00:05:00Z")),
        ]),
    );
    assert_eq!(
        status(&merged),
        json!({"succeeded": 3, "startTime": "2024-01-01T00:00:00Z", "completionTime": "2024-01-01T00:09:00Z",
               "conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": "2024-01-01T00:09:00Z"}]})
    );
}

#[test]
fn pod_takes_the_status_of_the_priority_cluster() {
    let list = entries(vec![
        ("east", json!({"phase": "Running", "podIP": "10.0.0.1"})),
        ("west", json!({"phase": "Pending"})),
    ]);
    let pod = key("", "pods", "Pod");
    assert_eq!(
        status(&merge_default(&pod, &list)),
        json!({"phase": "Running", "podIP": "10.0.0.1"})
    );
    let west_first = MergePolicy {
        priority: PriorityOrder::Clusters(vec!["west".into()]),
        ..MergePolicy::default()
    };
    let merged = merge_with(&pod, &list, &west_first);
    assert_eq!(status(&merged), json!({"phase": "Pending"}));
    assert!(merged.conflicts.is_empty());

    // By label: the higher integer first.
    let by_label = MergePolicy {
        priority: PriorityOrder::Label("tier".into()),
        ..MergePolicy::default()
    };
    let labelled = |v: &str| ClusterInfo {
        labels: BTreeMap::from([("tier".to_owned(), v.to_owned())]),
        ..ClusterInfo::default()
    };
    let view = ClusterView::default()
        .with("east", labelled("1"))
        .with("west", labelled("7"));
    let merged = merge(&pod, &list, &view, &by_label, &FeatureGates::default());
    assert_eq!(status(&merged), json!({"phase": "Pending"}));
}

#[test]
fn service_unions_load_balancer_ingress() {
    let merged = merge_default(
        &key("", "services", "Service"),
        &entries(vec![
            (
                "a",
                json!({"loadBalancer": {"ingress": [{"ip": "1.1.1.1"}]}}),
            ),
            (
                "b",
                json!({"loadBalancer": {"ingress": [{"ip": "2.2.2.2"}, {"ip": "1.1.1.1"}]}}),
            ),
            ("c", json!({"loadBalancer": {}})),
            ("d", json!({})),
        ]),
    );
    assert_eq!(
        status(&merged),
        json!({"loadBalancer": {"ingress": [{"ip": "1.1.1.1"}, {"ip": "2.2.2.2"}]}})
    );
    assert!(merged.conflicts.is_empty());
}

#[test]
fn one_cluster_is_taken_as_reported() {
    let report = json!({"conditions": [{"type": "Z"}, {"type": "A"}], "x": 1});
    let merged = merge_default(&deployment(), &entries(vec![("a", report.clone())]));
    assert_eq!(merged.status, Some(report));
    assert_eq!(merge_default(&deployment(), &BTreeMap::new()).status, None);
}

// ---- conflicts ------------------------------------------------------------

#[test]
fn generation_skew_names_the_cluster_behind() {
    let merged = merge_default(
        &deployment(),
        &entries(vec![
            ("a", deployment_status(2, 2, "2024-01-01T00:00:00Z")),
            ("b", deployment_status(3, 2, "2024-01-01T00:00:00Z")),
            ("c", deployment_status(5, 1, "2024-01-01T00:00:00Z")),
        ]),
    );
    let s = status(&merged);
    assert_eq!(s["readyReplicas"], json!(10));
    assert_eq!(s["observedGeneration"], json!(1), "the lowest generation");
    assert_eq!(merged.conflicts.len(), 1);
    let conflict = &merged.conflicts[0];
    assert_eq!(conflict.kind, ConflictType::GenerationSkew);
    assert_eq!(conflict.clusters, vec!["c".to_owned()]);
    assert_eq!(conflict.resolved_by.as_deref(), Some("Newest"));
    let condition = &s["conditions"][1];
    assert_eq!(condition["type"], json!("StatusConflict"));
    assert_eq!(condition["status"], json!("True"));
    assert_eq!(
        condition["message"],
        json!(
            "GenerationSkew (Warning, resolved by Newest): c behind generation 2: observedGeneration a, b at 2; c at 1"
        )
    );
}

#[test]
fn manual_leaves_disputes_open_and_writes_nothing_disputed() {
    let list = entries(vec![
        (
            "a",
            json!({"phase": "Running", "shards": 2, "observedGeneration": 2}),
        ),
        (
            "b",
            json!({"phase": "Failed", "shards": 2, "observedGeneration": 1}),
        ),
    ]);
    let merged = merge_with(&widget(), &list, &policy(Strategy::Manual));
    assert_eq!(
        status(&merged),
        json!({"shards": 2, "conditions": [{
            "type": "StatusConflict", "status": "True", "reason": "Unresolved",
            "message": "GenerationSkew (Warning, unresolved): b behind generation 2: observedGeneration a at 2; b at 1 | \
                        FieldDisagreement (Warning, unresolved): status.phase differs: a report \"Running\"; b report \"Failed\"",
        }]})
    );
    assert_eq!(
        merged.disputed,
        vec![
            FieldPath::of(&["observedGeneration"]),
            FieldPath::of(&["phase"])
        ]
    );
    assert!(merged.conflicts.iter().all(Conflict::is_open));

    // The same with conflict resolution gated off, whatever the strategy.
    let gates = FeatureGates {
        upstream_sync_conflict_resolution: false,
        ..FeatureGates::default()
    };
    let gated = merge(
        &widget(),
        &list,
        &ClusterView::default(),
        &policy(Strategy::Newest),
        &gates,
    );
    assert_eq!(gated.status, merged.status);
    assert_eq!(gated.strategy, Strategy::Manual);
}

#[test]
fn a_clusters_own_status_conflict_condition_is_replaced() {
    let list = entries(vec![
        (
            "a",
            json!({"phase": "A", "conditions": [{"type": "StatusConflict", "status": "True", "message": "old"}]}),
        ),
        ("b", json!({"phase": "B"})),
    ]);
    let merged = merge_with(&widget(), &list, &policy(Strategy::Priority));
    let s = status(&merged);
    assert_eq!(s["phase"], json!("A"));
    let conditions = s["conditions"].as_array().cloned().unwrap_or_default();
    assert_eq!(conditions.len(), 1);
    assert_eq!(conditions[0]["reason"], json!("Resolved"));
}

// ---- strategies -----------------------------------------------------------

fn three_phases() -> BTreeMap<ClusterName, Entry> {
    // c reported last, a first.
    entries(vec![
        ("a", json!({"phase": "Running", "list": [1]})),
        ("b", json!({"phase": "Running", "list": [2]})),
        ("c", json!({"phase": "Pending", "list": [1, 3]})),
    ])
}

#[test]
fn each_strategy_on_a_disagreement() {
    let cases = [
        (
            Strategy::Newest,
            json!({"phase": "Pending", "list": [1, 3]}),
        ),
        (Strategy::Oldest, json!({"phase": "Running", "list": [1]})),
        (Strategy::Priority, json!({"phase": "Running", "list": [1]})),
        (Strategy::Quorum, json!({"phase": "Running"})),
        (Strategy::All, json!({})),
        (
            Strategy::Union,
            json!({"phase": "Running", "list": [1, 2, 3]}),
        ),
        (Strategy::Manual, json!({})),
    ];
    for (strategy, expected) in cases {
        let merged = merge_with(&widget(), &three_phases(), &policy(strategy));
        let mut s = status(&merged);
        conflict::set_condition(&mut s, &[]);
        assert_eq!(s, expected, "{strategy}");
        let open = merged.conflicts.iter().filter(|c| c.is_open()).count();
        let expected_open = match strategy {
            Strategy::All | Strategy::Manual => 2,
            Strategy::Quorum => 1,
            _ => 0,
        };
        assert_eq!(open, expected_open, "{strategy}: {:?}", merged.conflicts);
    }
}

#[test]
fn newest_compares_skew_corrected_times() {
    // "fast"'s clock is an hour ahead: its report looks newest on raw clocks.
    let hour = 3_600_000;
    let mut list = BTreeMap::new();
    list.insert("fast".to_owned(), entry(json!({"phase": "Old"}), T0 + hour));
    list.insert(
        "true".to_owned(),
        entry(json!({"phase": "New"}), T0 + 10_000),
    );
    let view = ClusterView::default().with(
        "fast",
        ClusterInfo {
            skew_ms: -hour,
            ..ClusterInfo::default()
        },
    );
    let merged = merge(
        &widget(),
        &list,
        &view,
        &policy(Strategy::Newest),
        &FeatureGates::default(),
    );
    assert_eq!(status(&merged)["phase"], json!("New"));
    let raw = merge_with(&widget(), &list, &policy(Strategy::Newest));
    assert_eq!(
        status(&raw)["phase"],
        json!("Old"),
        "uncorrected clocks would pick the wrong one"
    );
}

#[test]
fn aggregation_gate_off_takes_one_cluster_by_priority() {
    let gates = FeatureGates {
        upstream_sync_aggregation: false,
        ..FeatureGates::default()
    };
    let list = entries(vec![
        ("a", deployment_status(2, 1, "2024-01-01T00:00:00Z")),
        ("b", deployment_status(3, 1, "2024-01-01T00:00:00Z")),
    ]);
    let merged = merge(
        &deployment(),
        &list,
        &ClusterView::default(),
        &MergePolicy::default(),
        &gates,
    );
    assert_eq!(
        merged.status,
        Some(deployment_status(2, 1, "2024-01-01T00:00:00Z"))
    );
}

#[test]
fn configured_field_rules_merge_custom_resources() {
    let policy = MergePolicy::parse(
        "defaultStrategy: Manual\n\
         resources:\n\
         \x20 - resource: widgets.example.com\n\
         \x20   strategy: Manual\n\
         \x20   fields:\n\
         \x20     - {path: status.shards, rule: sum}\n\
         \x20     - {path: status.version, rule: min}\n\
         \x20     - {path: status.seen, rule: max}\n\
         \x20     - {path: status.endpoints, rule: union}\n\
         \x20     - {path: status.message, rule: newest}\n\
         \x20     - {path: status.owner, rule: priority}\n\
         \x20     - {path: status.nested.count, rule: sum}\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let merged = merge_with(
        &widget(),
        &entries(vec![
            (
                "a",
                json!({"shards": 1, "version": 3, "seen": "2024-01-01T00:00:00Z", "endpoints": ["x"],
                         "message": "first", "owner": "a", "nested": {"count": 1, "other": true}}),
            ),
            (
                "b",
                json!({"shards": 2, "version": 2, "seen": "2024-02-01T00:00:00Z", "endpoints": ["y", "x"],
                         "message": "second", "owner": "b", "nested": {"count": 4, "other": true}}),
            ),
        ]),
        &policy,
    );
    assert_eq!(
        status(&merged),
        json!({"shards": 3, "version": 2, "seen": "2024-02-01T00:00:00Z", "endpoints": ["x", "y"],
               "message": "second", "owner": "a", "nested": {"count": 5, "other": true}})
    );
    assert!(merged.conflicts.is_empty(), "{:?}", merged.conflicts);
}

// ---- properties -----------------------------------------------------------

const CLUSTERS: [&str; 4] = ["a", "b", "c", "d"];
const STRATEGIES: [Strategy; 7] = [
    Strategy::Newest,
    Strategy::Oldest,
    Strategy::Priority,
    Strategy::Quorum,
    Strategy::All,
    Strategy::Union,
    Strategy::Manual,
];

fn arb_status() -> impl proptest::strategy::Strategy<Value = Value> {
    (
        0i64..4,
        prop::sample::select(vec!["Running", "Pending", "Failed"]),
        prop::collection::vec(0i64..4, 0..3),
        prop::sample::select(vec!["True", "False", "Unknown"]),
        1i64..3,
        any::<bool>(),
    )
        .prop_map(|(ready, phase, list, available, generation, empty)| {
            if empty {
                return json!({});
            }
            json!({
                "readyReplicas": ready, "phase": phase, "list": list,
                "observedGeneration": generation,
                "conditions": [{"type": "Available", "status": available}],
                "nested": {"phase": phase, "ready": ready},
            })
        })
}

/// One cluster's reports in sequence order: `None` is a delete.
fn arb_history() -> impl proptest::strategy::Strategy<Value = Vec<(Option<Value>, i64)>> {
    prop::collection::vec((prop::option::weighted(0.8, arb_status()), 0i64..5), 1..4)
}

fn arb_view() -> impl proptest::strategy::Strategy<Value = ClusterView> {
    prop::collection::vec((0u8..3, -3i64..3), CLUSTERS.len()).prop_map(|infos| {
        let mut view = ClusterView::default();
        for (name, (state, skew)) in CLUSTERS.iter().zip(infos) {
            let state = match state {
                0 => ClusterState::Ready,
                1 => ClusterState::Stale,
                _ => ClusterState::Offline,
            };
            view.insert(
                *name,
                ClusterInfo {
                    state,
                    skew_ms: skew,
                    labels: BTreeMap::new(),
                },
            );
        }
        view
    })
}

fn test_store() -> Store {
    let metrics = Arc::new(Metrics::new().unwrap_or_else(|e| panic!("metrics: {e}")));
    Store::new(Arc::new(WriteQueue::new(metrics.clone())), metrics, 1000)
}

/// Feeds `arrivals` (cluster, update) to a fresh store one at a time and
/// returns the object's entries.
fn replay(key: &ObjectKey, arrivals: &[(&str, Update)]) -> BTreeMap<ClusterName, Entry> {
    let store = test_store();
    for (cluster, update) in arrivals {
        store
            .apply(cluster, "session", vec![update.clone()], vec![])
            .ok();
    }
    store.entries(key)
}

/// `list` in the order of `keys` (one random key per element; ties keep
/// the original order).
fn permuted<T: Clone>(list: &[T], keys: &[u32]) -> Vec<T> {
    let mut ranked: Vec<(u32, usize)> =
        (0..list.len()).map(|i| (keys[i % keys.len()], i)).collect();
    ranked.sort();
    ranked.into_iter().map(|(_, i)| list[i].clone()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// For random cluster reports, every strategy (and every gate setting)
    /// gives the same result whatever order the deltas arrive in, within and
    /// across clusters, and whatever is replayed: that of the latest report
    /// of each cluster.
    #[test]
    fn no_arrival_order_or_replay_changes_the_merge(
        histories in prop::collection::vec(arb_history(), CLUSTERS.len()),
        order_a in prop::collection::vec(any::<u32>(), 32),
        order_b in prop::collection::vec(any::<u32>(), 32),
        replays in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        view in arb_view(),
        kind in 0usize..3,
    ) {
        let key = [deployment(), widget(), key("", "services", "Service")][kind].clone();
        let mut updates: Vec<(&str, Update)> = Vec::new();
        let mut latest: BTreeMap<ClusterName, Entry> = BTreeMap::new();
        for (cluster, history) in CLUSTERS.iter().zip(&histories) {
            for (seq, (status, at)) in history.iter().enumerate() {
                let seq = seq as u64 + 1;
                let entry = status.clone().map(|s| Entry { seq, ..entry(s, T0 + at) });
                match &entry {
                    Some(e) => latest.insert((*cluster).to_owned(), e.clone()),
                    None => latest.remove(*cluster),
                };
                updates.push((cluster, Update { key: key.clone(), seq, entry }));
            }
        }
        let mut arrivals = updates.clone();
        for index in &replays {
            arrivals.push(updates[index.index(updates.len())].clone());
        }
        let one = replay(&key, &permuted(&arrivals, &order_a));
        let two = replay(&key, &permuted(&arrivals, &order_b));
        // Everything once more, on top: replaying a delta changes nothing.
        let twice: Vec<_> = permuted(&arrivals, &order_a).into_iter().chain(permuted(&arrivals, &order_b)).collect();
        let three = replay(&key, &twice);
        prop_assert_eq!(&one, &latest);

        let gate_settings = [
            FeatureGates::default(),
            FeatureGates { upstream_sync_aggregation: false, ..FeatureGates::default() },
            FeatureGates { upstream_sync_conflict_resolution: false, ..FeatureGates::default() },
        ];
        for strategy in STRATEGIES {
            let policy = policy(strategy);
            for gates in &gate_settings {
                let expected = merge(&key, &latest, &view, &policy, gates);
                prop_assert_eq!(&merge(&key, &one, &view, &policy, gates), &expected, "{}", strategy);
                prop_assert_eq!(&merge(&key, &two, &view, &policy, gates), &expected, "{}", strategy);
                prop_assert_eq!(&merge(&key, &three, &view, &policy, gates), &expected, "{}", strategy);
                // A merge never sorts or edits its input: same input, same output.
                prop_assert_eq!(&merge(&key, &latest, &view, &policy, gates), &expected, "{}", strategy);
                // Manual and All never write a disputed field.
                if matches!(expected.strategy, Strategy::Manual | Strategy::All) {
                    for path in &expected.disputed {
                        prop_assert!(expected.status.as_ref().and_then(|s| path.lookup(s)).is_none());
                    }
                }
            }
        }
    }
}

#[tokio::test]
async fn a_cluster_turning_offline_requeues_its_objects_and_is_excluded() {
    let metrics = Arc::new(Metrics::new().unwrap_or_else(|e| panic!("metrics: {e}")));
    let queue = Arc::new(WriteQueue::new(metrics.clone()));
    let store = Arc::new(Store::new(queue.clone(), metrics.clone(), 100));
    let health = Arc::new(Health::new(metrics.clone()));
    let aggregator = Arc::new(Aggregator::new(
        MergePolicy::default(),
        FeatureGates::default(),
        health.clone(),
        Duration::from_millis(20),
        Duration::from_millis(200),
        metrics.clone(),
    ));
    health.session_started("quiet", 1, "s", "v");
    let key = deployment();
    for (cluster, ready) in [("quiet", 5), ("talkative", 2)] {
        let update = Update {
            key: key.clone(),
            seq: 1,
            entry: Some(entry(json!({"readyReplicas": ready}), T0)),
        };
        store.apply(cluster, "s", vec![update], vec![]).ok();
    }
    queue.drain_ready();
    let stop = CancellationToken::new();
    let watch = tokio::spawn(watch_cluster_states(
        aggregator.clone(),
        store.clone(),
        queue.clone(),
        Duration::from_millis(20),
        stop.clone(),
    ));

    // "talkative" keeps heartbeating; "quiet" goes silent past the grace.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        health.heartbeat(
            "talkative",
            crate::health::unix_ms(SystemTime::now()),
            SystemTime::now(),
        );
        // Re-queued on Ready -> Stale, and again on Stale -> Offline.
        let requeued = queue.drain_ready().contains(&key);
        let state = aggregator.cluster_view(SystemTime::now()).state("quiet");
        if requeued && state == ClusterState::Offline {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the object was never re-queued"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let merged = aggregator.evaluate(&key, &store.entries(&key));
    assert_eq!(
        status(&merged)["readyReplicas"],
        json!(2),
        "quiet is left out"
    );
    assert_eq!(merged.conflicts[0].kind, ConflictType::ClusterOffline);
    assert_eq!(merged.conflicts[0].clusters, vec!["quiet".to_owned()]);
    assert_eq!(
        metrics
            .conflicts
            .with_label_values(&["ClusterOffline", "Newest"])
            .get(),
        1
    );
    stop.cancel();
    watch.await.unwrap_or_else(|e| panic!("{e}"));
}
