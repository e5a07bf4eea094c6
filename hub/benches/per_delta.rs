//! The hub's per-delta path, micro-benchmarked (`cargo bench -p uplink-hub`):
//! a `Deltas` frame of 128 reports of objects the hub already holds, each
//! with a changed status, as the ingest scenario sends them.
//!
//! - `decode`: the frame's bytes to typed deltas (size check, pre-scan,
//!   msgpack decode, validation);
//! - `key_and_status`: each delta to a store update (names validated, its
//!   object key hashed once, the status checked to be a JSON object);
//! - `store`: the updates into the store (replay floor, memory budget,
//!   entries, the cluster's keys) and the write queue's dirty mark;
//! - `decode_to_dirty`: all three, as the session runs them.
//!
//! Placement (a lookup per report under the view's read lock) and the
//! session's I/O are not in it; `uplink-e2e bench ingest` measures the
//! whole process.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use uplink_hub::Metrics;
use uplink_hub::status::Status;
use uplink_hub::store::{Entry, Store, Update};
use uplink_hub::writer::WriteQueue;
use uplink_protocol::names::invalid_name;
use uplink_protocol::{
    AgentFrame, Change, Delta, DeltaBatch, Limits, ObjectRef, decode_agent_frame, encode,
};

const CLUSTER: &str = "edge-1";
const SESSION: &str = "session-1";
/// Objects the cluster reports; each frame changes `BATCH` of them.
const OBJECTS: u64 = 1_024;
const BATCH: u64 = 128;

/// A Deployment's status as the agent extracts it, `ready` replicas ready.
fn status(ready: u64) -> String {
    format!(
        r#"{{"observedGeneration":4,"replicas":3,"updatedReplicas":3,"readyReplicas":{ready},"availableReplicas":3,"conditions":[{{"type":"Available","status":"True","reason":"MinimumReplicasAvailable"}},{{"type":"Progressing","status":"True","reason":"NewReplicaSetAvailable"}}]}}"#
    )
}

/// The frame of deltas `first_seq..first_seq + BATCH`.
fn frame(first_seq: u64) -> Vec<u8> {
    let deltas = (first_seq..first_seq + BATCH)
        .map(|seq| Delta {
            seq,
            object: ObjectRef {
                group: "apps".to_owned(),
                version: "v1".to_owned(),
                resource: "deployments".to_owned(),
                kind: "Deployment".to_owned(),
                workspace: "root:org:team-a".to_owned(),
                namespace: Some("shop".to_owned()),
                name: format!("web-{}", seq % OBJECTS),
                uid: format!("00000000-0000-0000-0000-{:012}", seq % OBJECTS),
            },
            generation: Some(4),
            observed_generation: Some(4),
            observed_at_ms: 1_700_000_000_000,
            change: Change::Upsert {
                status_json: status(seq),
            },
            object_json: None,
        })
        .collect();
    encode(&AgentFrame::Deltas(DeltaBatch { deltas }))
        .unwrap_or_else(|e| panic!("encoding the bench frame: {e}"))
}

fn decode(bytes: &[u8]) -> Vec<Delta> {
    match decode_agent_frame(bytes, &Limits::default()) {
        Ok(AgentFrame::Deltas(batch)) => batch.deltas,
        other => panic!("expected Deltas, got {other:?}"),
    }
}

/// What the session makes of each delta (see `session/upward.rs`).
fn updates(deltas: Vec<Delta>) -> Vec<Update> {
    deltas
        .into_iter()
        .map(|mut delta| {
            assert!(invalid_name(&delta.object, true).is_none());
            let entry = match &mut delta.change {
                Change::Upsert { status_json } => Entry {
                    status: Status::from_json(std::mem::take(status_json))
                        .unwrap_or_else(|e| panic!("bench status: {e}")),
                    generation: delta.generation,
                    observed_generation: delta.observed_generation,
                    observed_at_ms: delta.observed_at_ms,
                    seq: delta.seq,
                    uid: String::new(),
                },
                Change::Deleted => panic!("the bench sends upserts"),
            };
            Update::from_delta(delta, Some(entry))
        })
        .collect()
}

/// A store holding every object of the cluster, and the next sequence
/// number to send.
fn warm_store() -> (Store, u64) {
    let metrics = Arc::new(Metrics::new().unwrap_or_else(|e| panic!("metrics: {e}")));
    let queue = Arc::new(WriteQueue::new(metrics.clone()));
    let store = Store::new(queue, metrics, 10_000);
    let mut seq = 1;
    while seq <= OBJECTS {
        let batch = updates(decode(&frame(seq)));
        store
            .apply(CLUSTER, SESSION, batch, Vec::new())
            .unwrap_or_else(|e| panic!("warming the store: {e}"));
        seq += BATCH;
    }
    (store, seq)
}

fn per_delta(c: &mut Criterion) {
    let mut group = c.benchmark_group("hub_per_delta");
    group.throughput(Throughput::Elements(BATCH));

    let bytes = frame(1);
    group.bench_function("decode", |b| b.iter(|| decode(black_box(&bytes))));
    group.bench_function("key_and_status", |b| {
        b.iter_batched(
            || decode(&bytes),
            |deltas| updates(black_box(deltas)),
            BatchSize::SmallInput,
        )
    });

    let (store, mut next) = warm_store();
    group.bench_function("store", |b| {
        b.iter_batched(
            || {
                let batch = updates(decode(&frame(next)));
                next += BATCH;
                batch
            },
            |batch| store.apply(CLUSTER, SESSION, black_box(batch), Vec::new()),
            BatchSize::SmallInput,
        )
    });

    let (store, mut next) = warm_store();
    group.bench_function("decode_to_dirty", |b| {
        b.iter_batched(
            || {
                let bytes = frame(next);
                next += BATCH;
                bytes
            },
            |bytes| {
                store.apply(
                    CLUSTER,
                    SESSION,
                    updates(decode(black_box(&bytes))),
                    Vec::new(),
                )
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, per_delta);
criterion_main!(benches);
