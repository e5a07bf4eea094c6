//! Fair writes: one cluster's flood of 100,000 distinct objects does not
//! keep another cluster's status change out of KCP. The finding (tried as a
//! hostile agent): 95,000 objects ahead of it in the write queue kept a
//! legitimate change waiting about 25 minutes at the default 50 writes/s.
//!
//! The real store, merge, queue and writer, at the default rate, settle
//! time and concurrency, against a KCP that records what it is sent; time
//! is tokio's paused clock, so the scenario takes seconds of virtual time
//! and well under a minute of real time.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use support::FakeUpstream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uplink_hub::aggregate::{Aggregator, FeatureGates, MergePolicy};
use uplink_hub::health::Health;
use uplink_hub::store::{Entry, KeyParts, ObjectKey, Store, Update};
use uplink_hub::writer::{WriteQueue, Writer, WriterSettings};
use uplink_hub::{HubConfig, Metrics};

const FLOOD: usize = 100_000;

fn key(workspace: &str, name: &str) -> ObjectKey {
    ObjectKey::new(KeyParts {
        workspace: workspace.into(),
        group: "apps".into(),
        version: "v1".into(),
        resource: "deployments".into(),
        kind: "Deployment".into(),
        namespace: Some("default".into()),
        name: name.into(),
    })
}

fn update(key: ObjectKey, seq: u64, status: Value) -> Update {
    Update {
        key,
        seq,
        entry: Some(Entry {
            status: uplink_hub::status::Status::of(&status),
            generation: Some(1),
            observed_generation: Some(1),
            observed_at_ms: 0,
            seq,
            uid: String::new(),
        }),
    }
}

#[tokio::test(start_paused = true)]
async fn a_flood_from_one_cluster_delays_anothers_change_by_a_few_writes() {
    let defaults = HubConfig::default();
    let metrics = Arc::new(Metrics::new().unwrap_or_else(|e| panic!("metrics: {e}")));
    let queue = Arc::new(WriteQueue::with_settle(
        metrics.clone(),
        defaults.write_settle,
    ));
    let store = Arc::new(Store::new(
        queue.clone(),
        metrics.clone(),
        defaults.limits.max_objects_per_cluster,
    ));
    let health = Arc::new(Health::new(metrics.clone()));
    let aggregator = Arc::new(Aggregator::new(
        MergePolicy::default(),
        FeatureGates::default(),
        health,
        defaults.heartbeat_interval,
        defaults.offline_grace,
        metrics.clone(),
    ));
    let kcp = Arc::new(FakeUpstream::default());
    let writer = Arc::new(Writer::new(
        queue.clone(),
        store.clone(),
        aggregator,
        kcp.clone(),
        metrics.clone(),
        WriterSettings {
            qps: defaults.write_qps,
            burst: defaults.write_burst,
            concurrency: defaults.write_concurrency,
            status_write: defaults.status_write,
            dry_run: false,
        },
    ));
    let stop = CancellationToken::new();
    let writing = tokio::spawn(writer.run(stop.clone(), Duration::ZERO));

    // The hostile cluster: 100,000 distinct objects over a few workspaces,
    // in batches as a session would store them.
    let mut seq = 0;
    let names: Vec<usize> = (0..FLOOD).collect();
    for batch in names.chunks(1024) {
        let updates = batch
            .iter()
            .map(|i| {
                seq += 1;
                let workspace = format!("root:hostile:{}", i % 5);
                update(key(&workspace, &format!("flood-{i}")), seq, json!({"i": i}))
            })
            .collect();
        store
            .apply("hostile", "s", updates, Vec::new())
            .unwrap_or_else(|e| panic!("storing the flood: {e}"));
    }
    assert_eq!(queue.cluster_depth("hostile"), FLOOD);

    // The writer is busy with the flood (the burst is spent).
    let busy = Instant::now() + Duration::from_secs(5);
    while Instant::now() < busy {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = kcp.patches().len();
    assert!(before > 100, "the flood is being written: {before} writes");

    // The honest cluster's change, in its own workspace.
    let changed = Instant::now();
    store
        .apply(
            "honest",
            "s",
            vec![update(key("root:tenant", "legit"), 1, json!({"ready": 3}))],
            Vec::new(),
        )
        .unwrap_or_else(|e| panic!("storing the change: {e}"));
    let deadline = changed + Duration::from_secs(60);
    let written = loop {
        if kcp.patches().iter().any(|(key, _)| key.name == "legit") {
            break Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "the honest change was not written within a minute behind the flood"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    };

    // The bound: the settle time plus a few writes' worth of time (one
    // flood write per turn, the writes already in flight, the token of
    // the write waiting for one).
    let write = Duration::from_secs_f64(1.0 / defaults.write_qps);
    let bound = defaults.write_settle + write * (defaults.write_concurrency as u32 + 2);
    let took = written - changed;
    assert!(
        took <= bound,
        "the honest change took {took:?} behind the flood, more than {bound:?}"
    );
    // The flood is served too, at its fair share.
    let after = Instant::now() + Duration::from_secs(2);
    while Instant::now() < after {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let writes = kcp.patches();
    assert!(
        writes.len() >= before + 90,
        "the flood starved: {} writes in 2 s after {before}",
        writes.len()
    );
    let written: HashMap<&str, usize> = writes.iter().fold(HashMap::new(), |mut seen, (key, _)| {
        *seen.entry(key.name.as_str()).or_default() += 1;
        seen
    });
    assert!(
        written.values().all(|n| *n == 1),
        "an object was written twice"
    );
    assert!(
        queue.cluster_depth("honest") == 0 && queue.cluster_depth("hostile") > 0,
        "backlogs: honest {}, hostile {}",
        queue.cluster_depth("honest"),
        queue.cluster_depth("hostile")
    );

    stop.cancel();
    writing.abort();
    writing.await.ok();
}
