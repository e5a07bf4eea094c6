//! The agent's per-event path, micro-benchmarked (`cargo bench -p
//! uplink-agent`): a watch event of an object whose status changed, through
//! the inventory (status extraction, the sendable-size check, the mapping
//! to KCP coordinates by the namespace's locator) into the outbox (its
//! change detection, sequence number and pending entry), then acknowledged
//! as the hub would.
//!
//! The watch itself (kube's decoding of the event) is not in it; `uplink-e2e
//! bench agent` measures the whole process.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;
use uplink_agent::ResourceSpec;
use uplink_agent::clock::AgentClock;
use uplink_agent::health::AgentHealth;
use uplink_agent::inventory::Inventory;
use uplink_agent::mapping::Locator;
use uplink_agent::metrics::Metrics;
use uplink_agent::outbox::{Outbox, SharedOutbox};
use uplink_agent::routes::{Holding, ReplicaId};

/// The one (unreplicated) hub the outbox sends to.
const HUB: ReplicaId = ReplicaId(0);
use uplink_agent::watch::{ObservedNamespace, ObservedObject, WatchEvent, WatchedResource};

/// Objects in the namespace; each round changes every one of them.
const OBJECTS: u64 = 1_000;
const NAMESPACE: &str = "kcp-3f9a2b7c1d0e";

fn resource() -> Arc<WatchedResource> {
    Arc::new(WatchedResource {
        spec: ResourceSpec::deployments(),
        kind: "Deployment".to_owned(),
        namespaced: true,
        upsync: false,
    })
}

/// One round: every object with `ready` replicas ready.
fn round(resource: &Arc<WatchedResource>, ready: u64) -> Vec<WatchEvent> {
    (0..OBJECTS)
        .map(|i| {
            WatchEvent::Applied(ObservedObject {
                resource: resource.clone(),
                namespace: Some(NAMESPACE.to_owned()),
                name: format!("web-{i}"),
                uid: format!("00000000-0000-0000-0000-{i:012}"),
                generation: Some(4),
                status: json!({
                    "observedGeneration": 4, "replicas": 3, "updatedReplicas": 3,
                    "readyReplicas": ready, "availableReplicas": 3,
                    "conditions": [
                        {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
                        {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}
                    ]
                }), upsync: None, })
        })
        .collect()
}

fn per_event(c: &mut Criterion) {
    let metrics = Metrics::new();
    let outbox = SharedOutbox::new(Outbox::new(100_000, metrics.clone()));
    outbox.lock().hold(HUB, &"hub".into(), &Holding::Everything);
    let health = AgentHealth::new(&[ResourceSpec::deployments()]);
    let mut inventory = Inventory::new(
        outbox.clone(),
        metrics,
        health,
        AgentClock::new(jiff::SignedDuration::ZERO),
    );
    inventory.apply(WatchEvent::NamespaceApplied(ObservedNamespace {
        name: NAMESPACE.to_owned(),
        locator: Some(
            Locator {
                workspace: "root:org:team-a".to_owned(),
                namespace: "shop".to_owned(),
            }
            .to_annotation(),
        ),
    }));
    let resource = resource();
    let mut ready = 0;

    let mut group = c.benchmark_group("agent_per_event");
    group.throughput(Throughput::Elements(OBJECTS));
    group.bench_function("status_change_to_outbox", |b| {
        b.iter_batched(
            || {
                ready += 1;
                round(&resource, ready)
            },
            |events| {
                for event in events {
                    inventory.apply(black_box(event));
                }
                let mut outbox = outbox.lock();
                let sent: Vec<u64> = outbox
                    .unsent(HUB, usize::MAX)
                    .iter()
                    .map(|d| d.seq)
                    .collect();
                outbox.mark_sent(HUB, sent);
                let last = outbox.last_seq();
                outbox.ack(HUB, last);
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, per_event);
criterion_main!(benches);
