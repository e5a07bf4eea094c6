//! The store's unit tests.

use super::*;
use crate::budget::report_cost;
use crate::status::Status;
use serde_json::Value;
use serde_json::json;
use uplink_protocol::Rejected;

fn key(name: &str) -> ObjectKey {
    ObjectKey::new(KeyParts {
        workspace: "root:org:team-a".into(),
        group: "apps".into(),
        version: "v1".into(),
        resource: "deployments".into(),
        kind: "Deployment".into(),
        namespace: Some("default".into()),
        name: name.into(),
    })
}

fn upsert(name: &str, seq: u64, status: Value) -> Update {
    Update {
        key: key(name),
        seq,
        entry: Some(entry(seq, status)),
    }
}

fn entry(seq: u64, status: Value) -> Entry {
    Entry {
        status: Status::of(&status),
        generation: Some(1),
        observed_generation: Some(1),
        observed_at_ms: 0,
        seq,
        uid: "uid".into(),
    }
}

fn deleted(name: &str, seq: u64) -> Update {
    Update {
        key: key(name),
        seq,
        entry: None,
    }
}

fn store(max: u64) -> (Store, Arc<WriteQueue>) {
    let metrics = Arc::new(Metrics::new().unwrap_or_else(|e| panic!("metrics: {e}")));
    let queue = Arc::new(WriteQueue::new(metrics.clone()));
    (Store::new(queue.clone(), metrics, max), queue)
}

#[test]
fn replayed_batch_changes_nothing() {
    let (store, queue) = store(100);
    let batch = vec![
        upsert("a", 1, json!({"replicas": 1})),
        upsert("a", 2, json!({"replicas": 2})),
    ];
    assert_eq!(store.apply("c1", "s1", batch.clone(), vec![]), Ok(2));
    assert_eq!(queue.drain_ready(), vec![key("a")]);
    assert_eq!(store.apply("c1", "s1", batch, vec![]), Ok(2));
    assert!(
        queue.drain_ready().is_empty(),
        "a replay marks nothing dirty"
    );
    assert_eq!(
        store.desired_status(&key("a")),
        Some(json!({"replicas": 2}))
    );
}

#[test]
fn older_delta_after_newer_is_ignored() {
    let (store, _queue) = store(100);
    store
        .apply(
            "c1",
            "s1",
            vec![upsert("a", 5, json!({"v": "new"}))],
            vec![],
        )
        .ok();
    store
        .apply(
            "c1",
            "s1",
            vec![upsert("a", 3, json!({"v": "old"}))],
            vec![],
        )
        .ok();
    assert_eq!(store.desired_status(&key("a")), Some(json!({"v": "new"})));
    // A replayed upsert older than a delete does not resurrect the object.
    store.apply("c1", "s1", vec![deleted("a", 6)], vec![]).ok();
    store
        .apply(
            "c1",
            "s1",
            vec![upsert("a", 4, json!({"v": "old"}))],
            vec![],
        )
        .ok();
    assert_eq!(store.desired_status(&key("a")), None);
    assert!(store.is_empty());
}

#[test]
fn new_session_restarts_the_sequence() {
    let (store, _queue) = store(100);
    store
        .apply("c1", "s1", vec![upsert("a", 50, json!({"v": 1}))], vec![])
        .ok();
    assert_eq!(
        store.apply("c1", "s2", vec![upsert("a", 1, json!({"v": 2}))], vec![]),
        Ok(1)
    );
    assert_eq!(store.desired_status(&key("a")), Some(json!({"v": 2})));
    assert_eq!(store.position("c1").map(|p| p.seq), Some(1));
}

#[test]
fn clusters_do_not_touch_each_other() {
    let (store, _queue) = store(100);
    store
        .apply(
            "c1",
            "s1",
            vec![upsert("a", 1, json!({"from": "c1"}))],
            vec![],
        )
        .ok();
    store
        .apply(
            "c2",
            "s9",
            vec![upsert("a", 1, json!({"from": "c2"}))],
            vec![],
        )
        .ok();
    store.apply("c2", "s9", vec![deleted("a", 2)], vec![]).ok();
    let entries = store.entries(&key("a"));
    assert_eq!(entries.keys().collect::<Vec<_>>(), vec!["c1"]);
}

#[test]
fn snapshot_drops_missing_objects_and_marks_them_dirty() {
    let (store, queue) = store(100);
    store
        .apply(
            "c1",
            "s1",
            vec![upsert("a", 1, json!({})), upsert("b", 2, json!({}))],
            vec![],
        )
        .ok();
    queue.drain_ready();
    let snapshot = HashMap::from([
        (key("b"), entry(1, json!({}))),
        (key("c"), entry(2, json!({"x": 1}))),
    ]);
    assert_eq!(
        store
            .replace_cluster("c1", "s2", snapshot, HashMap::new(), 7)
            .map(|applied| applied.seq),
        Ok(7)
    );
    let mut dirty = queue.drain_ready();
    dirty.sort();
    assert_eq!(dirty, vec![key("a"), key("c")], "b is unchanged");
    assert_eq!(store.len(), 2);
    assert_eq!(store.entries(&key("a")).len(), 0);
    assert_eq!(
        store.position("c1"),
        Some(Position {
            session: Arc::from("s2"),
            seq: 7
        })
    );
}

#[test]
fn object_limit_applies_all_or_nothing() {
    let (store, _queue) = store(2);
    assert!(
        store
            .apply(
                "c1",
                "s1",
                vec![upsert("a", 1, json!({})), upsert("b", 2, json!({}))],
                vec![]
            )
            .is_ok()
    );
    let err = store.apply(
        "c1",
        "s1",
        vec![upsert("a", 3, json!({"v": 1})), upsert("c", 4, json!({}))],
        vec![],
    );
    assert!(matches!(
        err,
        Err(StoreError::TooManyObjects { max: 2, .. })
    ));
    assert_eq!(
        store.desired_status(&key("a")),
        Some(json!({})),
        "nothing applied"
    );
    // Another cluster has its own budget.
    assert!(
        store
            .apply("c2", "s1", vec![upsert("c", 1, json!({}))], vec![])
            .is_ok()
    );
}

#[tokio::test(start_paused = true)]
async fn held_reports_are_never_merged_until_released() {
    let (store, queue) = store(2);
    assert_eq!(
        store.apply("c1", "s1", vec![], vec![upsert("a", 1, json!({"v": 1}))]),
        Ok(1)
    );
    assert_eq!(store.desired_status(&key("a")), None, "held is not merged");
    assert!(queue.drain_ready().is_empty(), "nothing to write yet");
    assert_eq!(store.held("c1"), 1);
    // A newer held report replaces the older one but keeps its age.
    tokio::time::advance(std::time::Duration::from_secs(5)).await;
    store
        .apply("c1", "s1", vec![], vec![upsert("a", 2, json!({"v": 2}))])
        .ok();
    let mut ages = Vec::new();
    store.recheck_held("c1", None, |_, since| {
        ages.push(since.elapsed());
        HeldVerdict::Keep
    });
    assert_eq!(ages, vec![std::time::Duration::from_secs(5)]);
    // Held reports count against the object limit.
    assert!(
        store
            .apply(
                "c1",
                "s1",
                vec![upsert("b", 3, json!({})), upsert("c", 4, json!({}))],
                vec![]
            )
            .is_err()
    );
    // Released: merged and written.
    let refused = store.recheck_held("c1", Some(&key("a")), |_, _| HeldVerdict::Release);
    assert!(refused.is_empty());
    assert_eq!(store.desired_status(&key("a")), Some(json!({"v": 2})));
    assert_eq!(queue.drain_ready(), vec![key("a")]);
    assert_eq!(store.held("c1"), 0);
}

#[test]
fn refused_held_reports_are_dropped_and_returned() {
    let (store, queue) = store(10);
    store
        .apply("c1", "s1", vec![], vec![upsert("a", 7, json!({}))])
        .ok();
    let refused = store.recheck_held("c1", None, |_, _| HeldVerdict::Reject("not_placed"));
    assert_eq!(refused, vec![(key("a"), 7, "not_placed")]);
    assert_eq!(store.held("c1"), 0);
    assert!(store.is_empty());
    assert!(queue.drain_ready().is_empty());
    // A held deletion replaces the held report, and is judged (and
    // refused) like any report.
    store
        .apply("c1", "s1", vec![], vec![upsert("b", 8, json!({}))])
        .ok();
    store.apply("c1", "s1", vec![], vec![deleted("b", 9)]).ok();
    assert_eq!(store.held("c1"), 1);
    assert_eq!(store.position("c1").map(|p| p.seq), Some(9));
    let refused = store.recheck_held("c1", None, |_, _| HeldVerdict::Reject("not_placed"));
    assert_eq!(refused, vec![(key("b"), 9, "not_placed")]);
    // Released, a deletion of an object the cluster never reported
    // changes nothing.
    store.apply("c1", "s1", vec![], vec![deleted("c", 10)]).ok();
    store.recheck_held("c1", None, |_, _| HeldVerdict::Release);
    assert_eq!(store.held("c1"), 0);
    assert!(store.is_empty());
}

#[test]
fn unplacing_drops_only_that_clusters_entry() {
    let (store, queue) = store(10);
    store
        .apply(
            "c1",
            "s1",
            vec![upsert("a", 1, json!({"from": "c1"}))],
            vec![],
        )
        .ok();
    store
        .apply(
            "c2",
            "s1",
            vec![upsert("a", 1, json!({"from": "c2"}))],
            vec![],
        )
        .ok();
    queue.drain_ready();
    store.unplace("c2", &[key("a")]);
    assert_eq!(
        store.entries(&key("a")).keys().collect::<Vec<_>>(),
        vec!["c1"]
    );
    assert_eq!(queue.drain_ready(), vec![key("a")], "merged again");
    assert!(store.cluster_keys("c2").is_empty());
}

#[test]
fn a_batch_may_mix_accepted_and_held_in_any_seq_order() {
    let (store, _queue) = store(10);
    let acked = store.apply(
        "c1",
        "s1",
        vec![upsert("a", 2, json!({}))],
        vec![upsert("b", 1, json!({})), upsert("c", 3, json!({}))],
    );
    assert_eq!(acked, Ok(3));
    assert_eq!(
        store.held("c1"),
        2,
        "the lower seq of b was not taken for a replay"
    );
}

fn cost(name: &str, status: &Value) -> u64 {
    entry_cost(&key(name), &entry(0, status.clone()))
}

#[test]
fn a_cluster_over_its_memory_budget_is_refused_alone() {
    let big = json!({"a": vec![0; 1000]});
    let budget = MemoryBudget {
        cluster_bytes: 3 * cost("a", &big),
        total_bytes: u64::MAX,
    };
    let (store, _queue) = store(100);
    let store = store.with_budget(budget);
    let batch = (1..=4)
        .map(|i| upsert(&format!("{i}"), i, big.clone()))
        .collect();
    let applied = store.ingest("c1", "s1", batch, vec![]);
    let applied = applied.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(applied.seq, 4, "refused reports are acked too");
    assert_eq!(
        applied.refused,
        vec![(key("4"), 4, Rejected::CLUSTER_MEMORY_BUDGET)]
    );
    assert_eq!(store.held_bytes("c1").0, 3 * cost("1", &big));
    // A report that grows is refused and the earlier one stays; one that
    // shrinks is taken, and then there is room again.
    let bigger = json!({"a": vec![0; 1001]});
    let applied = store.ingest("c1", "s1", vec![upsert("1", 5, bigger)], vec![]);
    assert_eq!(applied.map(|a| a.refused.len()), Ok(1));
    assert_eq!(store.desired_status(&key("1")), Some(big.clone()));
    let applied = store.ingest("c1", "s1", vec![upsert("1", 6, json!({}))], vec![]);
    assert_eq!(applied.map(|a| a.refused.len()), Ok(0));
    store.apply("c1", "s1", vec![deleted("2", 7)], vec![]).ok();
    let applied = store.ingest("c1", "s1", vec![upsert("4", 8, big.clone())], vec![]);
    assert_eq!(applied.map(|a| a.refused.len()), Ok(0));
    // A report placement cannot judge yet counts the same.
    let applied = store.ingest("c1", "s1", vec![], vec![upsert("h", 9, big.clone())]);
    assert_eq!(
        applied.map(|a| a.refused),
        Ok(vec![(key("h"), 9, Rejected::CLUSTER_MEMORY_BUDGET)])
    );
    assert_eq!(store.held("c1"), 0);
    // Another cluster has a budget of its own.
    let applied = store.ingest("c2", "s1", vec![upsert("1", 1, big.clone())], vec![]);
    assert_eq!(applied.map(|a| a.refused), Ok(vec![]));
    assert_eq!(store.entries(&key("1")).len(), 2);
}

#[test]
fn the_total_budget_refuses_the_cluster_over_its_share() {
    let big = json!({"a": vec![0; 1000]});
    let one = cost("l1", &big);
    let budget = MemoryBudget {
        cluster_bytes: u64::MAX,
        total_bytes: 4 * one,
    };
    let (store, _queue) = store(100);
    let store = store.with_budget(budget);
    store.ingest("quiet", "s1", vec![], vec![]).ok();
    let batch = (1..=5)
        .map(|i| upsert(&format!("l{i}"), i, big.clone()))
        .collect();
    let applied = store.ingest("loud", "s1", batch, vec![]);
    let refused = applied.map(|a| a.refused.len());
    assert_eq!(refused, Ok(1), "the flood stops at the total budget");
    // The quiet cluster still gets its fair share (half the total).
    let batch = vec![upsert("q1", 1, big.clone()), upsert("q2", 2, big.clone())];
    let applied = store.ingest("quiet", "s1", batch, vec![]);
    assert_eq!(applied.map(|a| a.refused.len()), Ok(0));
    assert_eq!(store.held_bytes("quiet").0, 2 * one);
}

#[tokio::test(start_paused = true)]
async fn bytes_are_counted_back_to_zero_whatever_the_path() {
    let (store, _queue) = store(100);
    let status = json!({"replicas": 3});
    store
        .apply(
            "c1",
            "s1",
            vec![
                upsert("a", 1, status.clone()),
                upsert("b", 2, status.clone()),
            ],
            vec![upsert("c", 3, status.clone()), deleted("d", 4)],
        )
        .ok();
    let expected = cost("a", &status) * 3 + report_cost(&key("d"), None, "");
    assert_eq!(store.held_bytes("c1"), (expected, expected));
    // Replaced by a bigger report, released, refused, unplaced.
    store
        .apply(
            "c1",
            "s1",
            vec![upsert("a", 5, json!({"x": "long"}))],
            vec![],
        )
        .ok();
    store.recheck_held("c1", Some(&key("c")), |_, _| HeldVerdict::Release);
    store.recheck_held("c1", None, |_, _| HeldVerdict::Reject("not_placed"));
    store.unplace("c1", &[key("b")]);
    let left = cost("a", &json!({"x": "long"})) + cost("c", &status);
    assert_eq!(store.held_bytes("c1").0, left);
    // A snapshot replaces the count; deletions bring it to zero.
    let snapshot = HashMap::from([(key("e"), entry(9, status.clone()))]);
    store
        .replace_cluster("c1", "s2", snapshot, HashMap::new(), 9)
        .ok();
    assert_eq!(
        store.held_bytes("c1"),
        (cost("e", &status), cost("e", &status))
    );
    store.apply("c1", "s2", vec![deleted("e", 10)], vec![]).ok();
    assert_eq!(store.held_bytes("c1"), (0, 0));
}

#[test]
fn a_forgotten_cluster_leaves_nothing_behind() {
    let (store, queue) = store(10);
    store
        .apply(
            "c1",
            "s1",
            vec![upsert("a", 1, json!({"v": 1}))],
            vec![upsert("b", 2, json!({}))],
        )
        .ok();
    store
        .apply("c2", "s1", vec![upsert("a", 1, json!({"v": 2}))], vec![])
        .ok();
    queue.drain_ready();
    let c2 = store.held_bytes("c2").0;
    store.forget_cluster("c1");
    assert_eq!(store.held_bytes("c1"), (0, c2));
    assert_eq!(store.position("c1"), None);
    assert_eq!(store.held("c1"), 0);
    assert_eq!(
        store.entries(&key("a")).keys().collect::<Vec<_>>(),
        vec!["c2"]
    );
    assert_eq!(queue.drain_ready(), vec![key("a")], "merged again");
}

#[test]
fn a_snapshot_of_some_shards_replaces_only_their_entries() {
    let (store, queue) = store(100);
    store
        .apply(
            "c1",
            "s1",
            vec![
                upsert("a", 1, json!({"v": 1})),
                upsert("b", 2, json!({"v": 1})),
                upsert("c", 3, json!({"v": 1})),
            ],
            vec![],
        )
        .ok();
    queue.drain_ready();
    let before = store.held_bytes("c1");
    // The snapshot covers "a" and "b" (say, one shard): "a" is gone, "b"
    // changed; "c" is outside it and stays.
    let within = |k: &ObjectKey| k.name == "a" || k.name == "b";
    let snapshot = HashMap::from([(key("b"), entry(4, json!({"v": 2})))]);
    let applied =
        store.replace_cluster_within("c1", "s1", snapshot, HashMap::new(), 4, Some(&within));
    assert_eq!(applied.map(|a| a.seq), Ok(4));
    let mut dirty = queue.drain_ready();
    dirty.sort();
    assert_eq!(dirty, vec![key("a"), key("b")]);
    assert_eq!(store.entries(&key("a")).len(), 0);
    assert_eq!(store.entries(&key("c")).len(), 1, "outside the snapshot");
    assert_eq!(store.cluster_objects("c1"), 2);
    assert_eq!(store.position("c1").map(|p| p.seq), Some(4));
    // Bytes: "a" gone, "b" the same size, "c" kept.
    assert!(store.held_bytes("c1").0 < before.0);
}

#[test]
fn forgetting_a_shard_is_silent_and_keeps_the_rest() {
    let (store, queue) = store(100);
    store
        .apply(
            "c1",
            "s1",
            vec![upsert("a", 1, json!({})), upsert("b", 2, json!({}))],
            vec![],
        )
        .ok();
    store
        .apply("c2", "s1", vec![upsert("a", 1, json!({}))], vec![])
        .ok();
    queue.drain_ready();
    let forgotten = store.forget_within(|k| k.name == "a");
    assert_eq!(forgotten, 2);
    assert!(
        queue.drain_ready().is_empty(),
        "no write comes of forgetting"
    );
    assert_eq!(store.entries(&key("a")).len(), 0);
    assert_eq!(store.entries(&key("b")).len(), 1);
    assert_eq!(store.cluster_objects("c2"), 0);
    assert_eq!(
        store.position("c1").map(|p| p.seq),
        Some(2),
        "positions stay"
    );
}
