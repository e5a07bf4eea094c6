//! Micro-benchmarks of the wire codec: encoding and decoding a batch of
//! deltas the size the agent sends under load (`cargo bench -p uplink-protocol`).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use uplink_protocol::{
    AgentFrame, Change, Delta, DeltaBatch, Limits, ObjectRef, decode_agent_frame, encode,
};

/// A Deployment's status as the agent extracts it.
const STATUS: &str = r#"{"observedGeneration":4,"replicas":3,"updatedReplicas":3,"readyReplicas":3,"availableReplicas":3,"conditions":[{"type":"Available","status":"True","reason":"MinimumReplicasAvailable"},{"type":"Progressing","status":"True","reason":"NewReplicaSetAvailable"}]}"#;

fn batch(deltas: u64) -> AgentFrame {
    AgentFrame::Deltas(DeltaBatch {
        deltas: (0..deltas)
            .map(|seq| Delta {
                seq,
                object: ObjectRef {
                    group: "apps".to_owned(),
                    version: "v1".to_owned(),
                    resource: "deployments".to_owned(),
                    kind: "Deployment".to_owned(),
                    workspace: "root:org:team-a".to_owned(),
                    namespace: Some("shop".to_owned()),
                    name: format!("web-{seq}"),
                    uid: format!("00000000-0000-0000-0000-{seq:012}"),
                },
                generation: Some(4),
                observed_generation: Some(4),
                observed_at_ms: 1_700_000_000_000,
                change: Change::Upsert {
                    status_json: STATUS.to_owned(),
                },
                object_json: None,
            })
            .collect(),
    })
}

fn codec(c: &mut Criterion) {
    let limits = Limits::default();
    for deltas in [1u64, 100] {
        let frame = batch(deltas);
        let bytes = match encode(&frame) {
            Ok(bytes) => bytes,
            Err(error) => panic!("encoding the benchmark frame: {error}"),
        };
        let mut group = c.benchmark_group(format!("deltas_{deltas}"));
        group.throughput(Throughput::Elements(deltas));
        group.bench_function("encode", |b| b.iter(|| encode(black_box(&frame))));
        group.bench_function("decode", |b| {
            b.iter(|| decode_agent_frame(black_box(&bytes), &limits))
        });
        group.finish();
    }
}

criterion_group!(benches, codec);
criterion_main!(benches);
