//! Micro-benchmarks of two pipeline steps, through the agent's and the hub's
//! public libraries (`cargo bench -p uplink-e2e --bench pipeline`):
//!
//! - `map_upstream`: a downstream object's coordinates to its KCP workspace
//!   and namespace (the agent's `mapping`), with the locator parsed first;
//! - `merge`: the hub's merge of one Deployment's statuses from 1 and 3
//!   clusters with the default policy.

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use uplink_agent::ResourceSpec;
use uplink_agent::mapping::{DownstreamRef, Locator, to_upstream};
use uplink_hub::aggregate::{ClusterView, FeatureGates, MergePolicy, merge};
use uplink_hub::store::{Entry, KeyParts, ObjectKey};

fn map_upstream(c: &mut Criterion) {
    let annotation = r#"{"cluster":"root:org:team-a","namespace":"shop"}"#;
    let object = DownstreamRef {
        resource: ResourceSpec {
            resource: "deployments".to_owned(),
            version: "v1".to_owned(),
            group: "apps".to_owned(),
        },
        kind: "Deployment".to_owned(),
        namespace: "kcp-3f9a2b7c1d".to_owned(),
        name: "web".to_owned(),
        uid: "00000000-0000-0000-0000-000000000001".to_owned(),
    };
    c.bench_function("map_upstream", |b| {
        b.iter(|| {
            let locator = Locator::parse(black_box(annotation)).ok();
            locator.map(|l| to_upstream(black_box(&object), &l))
        })
    });
}

fn merge_statuses(c: &mut Criterion) {
    let key = ObjectKey::new(KeyParts {
        workspace: "root:org:team-a".to_owned(),
        group: "apps".to_owned(),
        version: "v1".to_owned(),
        resource: "deployments".to_owned(),
        kind: "Deployment".to_owned(),
        namespace: Some("shop".to_owned()),
        name: "web".to_owned(),
    });
    let status = serde_json::json!({
        "observedGeneration": 4, "replicas": 3, "updatedReplicas": 3,
        "readyReplicas": 3, "availableReplicas": 3,
        "conditions": [
            {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
            {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}
        ]
    });
    let policy = MergePolicy::default();
    let gates = FeatureGates::default();
    let clusters = ClusterView::default();
    for count in [1usize, 3] {
        let entries: BTreeMap<String, Entry> = (1..=count)
            .map(|i| {
                let entry = Entry {
                    status: uplink_hub::status::Status::of(&status),
                    generation: Some(4),
                    observed_generation: Some(4),
                    observed_at_ms: 1_700_000_000_000 + i as i64,
                    seq: i as u64,
                    uid: format!("uid-{i}"),
                };
                (format!("cluster-{i}"), entry)
            })
            .collect();
        c.bench_function(&format!("merge_{count}_clusters"), |b| {
            b.iter(|| {
                merge(
                    black_box(&key),
                    black_box(&entries),
                    &clusters,
                    &policy,
                    &gates,
                )
            })
        });
    }
}

criterion_group!(benches, map_upstream, merge_statuses);
criterion_main!(benches);
