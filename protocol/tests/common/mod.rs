//! Proptest strategies for every frame, shared by the test files.

#![allow(dead_code)] // Each test file uses a different subset.

use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use uplink_protocol::*;

/// Any string, unicode included, up to 24 characters (≤ 96 bytes, within the
/// default string limit).
pub fn text() -> impl Strategy<Value = String> {
    vec(any::<char>(), 0..24).prop_map(String::from_iter)
}

/// Like [`text`], but never empty (names the decoder requires).
pub fn name() -> impl Strategy<Value = String> {
    vec(any::<char>(), 1..24).prop_map(String::from_iter)
}

/// KCP workspace names as they occur (`root:org:team-a`), empty (plain
/// Kubernetes upstream), or anything.
pub fn workspace() -> impl Strategy<Value = String> {
    prop_oneof![
        "root(:[a-z][a-z0-9-]{0,12}){0,4}",
        Just(String::new()),
        Just("root:org:team-a".to_owned()),
        text(),
    ]
}

pub fn object_ref() -> impl Strategy<Value = ObjectRef> {
    (
        prop_oneof![Just(String::new()), Just("apps".to_owned()), text()],
        text(),
        text(),
        text(),
        workspace(),
        option::of(text()),
        name(),
        text(),
    )
        .prop_map(
            |(group, version, resource, kind, workspace, namespace, name, uid)| ObjectRef {
                group,
                version,
                resource,
                kind,
                workspace,
                namespace,
                name,
                uid,
            },
        )
}

pub fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        vec(any::<char>(), 0..200).prop_map(|chars| Change::Upsert {
            status_json: String::from_iter(chars)
        }),
        Just(Change::Upsert {
            status_json: r#"{"replicas":3,"conditions":[{"type":"Available"}]}"#.to_owned()
        }),
        Just(Change::Deleted),
    ]
}

pub fn delta() -> impl Strategy<Value = Delta> {
    (
        any::<u64>(),
        object_ref(),
        option::of(any::<i64>()),
        option::of(any::<i64>()),
        any::<i64>(),
        change(),
    )
        .prop_map(
            |(seq, object, generation, observed_generation, observed_at_ms, change)| Delta {
                seq,
                object,
                generation,
                observed_generation,
                observed_at_ms,
                change,
                object_json: None,
            },
        )
}

pub fn deltas() -> impl Strategy<Value = Vec<Delta>> {
    vec(delta(), 0..6)
}

pub fn hello() -> impl Strategy<Value = Hello> {
    (
        vec(any::<u16>(), 0..4),
        name(),
        text(),
        text(),
        option::of(any::<u64>()),
        any::<u64>(),
        vec(text(), 0..3),
    )
        .prop_map(
            |(
                protocol_versions,
                cluster,
                agent_version,
                session_id,
                last_hub_epoch,
                last_ack,
                downward_resources,
            )| {
                Hello {
                    protocol_versions,
                    cluster,
                    agent_version,
                    session_id,
                    last_hub_epoch,
                    last_ack,
                    downward_resources,
                    upsync_resources: Vec::new(),
                }
            },
        )
}

pub fn resources() -> impl Strategy<Value = ResourceAmounts> {
    (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
        |(cpu_millis, memory_bytes, ephemeral_storage_bytes, pods)| ResourceAmounts {
            cpu_millis,
            memory_bytes,
            ephemeral_storage_bytes,
            pods,
        },
    )
}

pub fn summary() -> impl Strategy<Value = ClusterSummary> {
    let watch = (text(), any::<bool>(), any::<u64>(), option::of(text())).prop_map(
        |(resource, ready, objects, error)| WatchHealth {
            resource,
            ready,
            objects,
            error,
        },
    );
    (
        vec(watch, 0..4),
        (any::<u32>(), any::<u32>()),
        resources(),
        resources(),
        resources(),
        option::of(resources()),
        any::<[u64; 5]>(),
    )
        .prop_map(
            |(watches, (total, ready), capacity, allocatable, requests, usage, phases)| {
                ClusterSummary {
                    watches,
                    nodes: NodeCounts {
                        total,
                        ready,
                        cordoned: 0,
                    },
                    capacity,
                    allocatable,
                    requests,
                    usage,
                    pods: PodPhaseCounts {
                        pending: phases[0],
                        running: phases[1],
                        succeeded: phases[2],
                        failed: phases[3],
                        unknown: phases[4],
                    },
                    ..ClusterSummary::default()
                }
            },
        )
}

pub fn agent_frame() -> impl Strategy<Value = AgentFrame> {
    prop_oneof![
        hello().prop_map(AgentFrame::Hello),
        deltas().prop_map(|deltas| AgentFrame::Deltas(DeltaBatch { deltas })),
        (any::<u64>(), snapshot_shards()).prop_map(|(objects, shards)| {
            AgentFrame::SnapshotBegin(SnapshotBegin { objects, shards })
        }),
        deltas().prop_map(|deltas| AgentFrame::SnapshotChunk(SnapshotChunk { deltas })),
        any::<u64>().prop_map(|seq| AgentFrame::SnapshotEnd(SnapshotEnd {
            seq,
            upsync_listed: false,
        })),
        (any::<i64>(), option::of(summary())).prop_map(|(agent_time_ms, summary)| {
            AgentFrame::Heartbeat(Heartbeat {
                agent_time_ms,
                summary,
            })
        }),
        text().prop_map(|reason| AgentFrame::Bye(Bye { reason })),
        (any::<u64>(), vec(apply_failure(), 0..3))
            .prop_map(|(seq, failures)| AgentFrame::DownwardAck(DownwardAck { seq, failures })),
        vec(event_report(), 0..4).prop_map(|reports| AgentFrame::Events(EventBatch { reports })),
    ]
}

pub fn event_report() -> impl Strategy<Value = EventReport> {
    (
        object_ref(),
        option::of(object_ref()),
        prop_oneof![
            Just("Normal".to_owned()),
            Just("Warning".to_owned()),
            text()
        ],
        (text(), text(), text(), text(), text()),
        (1..u64::MAX, any::<i64>(), any::<i64>()),
    )
        .prop_map(
            |(
                regarding,
                related,
                event_type,
                (reason, action, reporting_controller, reporting_instance, note),
                (count, first_ms, last_ms),
            )| EventReport {
                regarding,
                related,
                event_type,
                reason,
                action,
                reporting_controller,
                reporting_instance,
                note,
                count,
                first_ms,
                last_ms,
            },
        )
}

pub fn apply_failure() -> impl Strategy<Value = ApplyFailure> {
    (any::<u64>(), text(), text()).prop_map(|(seq, reason, message)| ApplyFailure {
        seq,
        reason,
        message,
    })
}

pub fn downward_deltas() -> impl Strategy<Value = Vec<DownwardDelta>> {
    let change = prop_oneof![
        text().prop_map(|manifest_json| DownwardChange::Apply { manifest_json }),
        Just(DownwardChange::Delete),
    ];
    vec(
        (any::<u64>(), object_ref(), change).prop_map(|(seq, object, change)| DownwardDelta {
            seq,
            object,
            change,
        }),
        0..6,
    )
}

pub fn limits() -> impl Strategy<Value = Limits> {
    (
        any::<u32>(),
        1..=u32::MAX,
        any::<u32>(),
        any::<u32>(),
        any::<u64>(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(
            |(
                max_frame_bytes,
                max_deltas_per_batch,
                max_string_bytes,
                max_status_bytes,
                max_objects_per_cluster,
                max_manifest_bytes,
                max_downward_in_flight,
                max_events_per_batch,
            )| Limits {
                max_frame_bytes,
                max_deltas_per_batch,
                max_string_bytes,
                max_status_bytes,
                max_objects_per_cluster,
                max_manifest_bytes,
                max_downward_in_flight,
                max_events_per_batch,
            },
        )
}

pub fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop_oneof![
        Just(ErrorCode::UnsupportedVersion),
        Just(ErrorCode::IdentityMismatch),
        Just(ErrorCode::Malformed),
        Just(ErrorCode::LimitExceeded),
        Just(ErrorCode::UnexpectedFrame),
        Just(ErrorCode::Superseded),
        Just(ErrorCode::Internal),
    ]
}

/// What a replica may say it holds: valid by construction.
pub fn shards_held() -> impl Strategy<Value = ShardsHeld> {
    (1..=MAX_SHARDS)
        .prop_flat_map(|count| {
            (
                Just(count),
                proptest::collection::btree_map(0..count, any::<u64>(), 0..8),
                any::<u8>(),
                proptest::option::of(1..=MAX_HEARTBEAT_INTERVAL_MS),
            )
        })
        .prop_map(|(count, held, pick, heartbeat_interval_ms)| {
            let held: Vec<ShardClaim> = held
                .into_iter()
                .map(|(shard, term)| ShardClaim {
                    shard: ShardId(shard),
                    term,
                })
                .collect();
            let snapshot = held
                .iter()
                .enumerate()
                .filter(|(i, _)| pick & (1 << (i % 8)) != 0)
                .map(|(_, claim)| claim.shard)
                .collect();
            ShardsHeld {
                count,
                held,
                snapshot,
                heartbeat_interval_ms,
            }
        })
}

/// A snapshot's shards: everything, or a few in ascending order.
pub fn snapshot_shards() -> impl Strategy<Value = Option<Vec<ShardId>>> {
    proptest::option::of(
        proptest::collection::btree_set(0..MAX_SHARDS, 1..8)
            .prop_map(|shards| shards.into_iter().map(ShardId).collect()),
    )
}

pub fn hub_frame() -> impl Strategy<Value = HubFrame> {
    let mode = prop_oneof![
        any::<u64>().prop_map(|acked| SessionMode::Resume { acked }),
        Just(SessionMode::Snapshot),
    ];
    prop_oneof![
        (any::<u16>(), any::<u64>(), mode, 1..=u64::MAX, limits()).prop_map(
            |(protocol_version, hub_epoch, mode, heartbeat_interval_ms, limits)| {
                HubFrame::Welcome(Welcome {
                    protocol_version,
                    hub_epoch,
                    mode,
                    heartbeat_interval_ms,
                    limits,
                    sync_target: None,
                    shards: None,
                })
            }
        ),
        shards_held().prop_map(HubFrame::Shards),
        any::<u64>().prop_map(|seq| HubFrame::Ack(Ack::new(seq))),
        (any::<i64>(), any::<i64>()).prop_map(|(agent_time_ms, hub_time_ms)| {
            HubFrame::HeartbeatAck(HeartbeatAck {
                agent_time_ms,
                hub_time_ms,
            })
        }),
        (any::<u64>(), any::<u32>()).prop_map(|(pause_ms, max_deltas_per_s)| {
            HubFrame::Throttle(Throttle {
                pause_ms,
                max_deltas_per_s,
            })
        }),
        (error_code(), text())
            .prop_map(|(code, message)| HubFrame::Error(ErrorFrame { code, message })),
        text().prop_map(|reason| HubFrame::Bye(Bye { reason })),
        downward_deltas().prop_map(|deltas| HubFrame::Downward(DownwardBatch { deltas })),
        (any::<u64>(), snapshot_shards()).prop_map(|(objects, shards)| {
            HubFrame::DownwardSnapshotBegin(SnapshotBegin { objects, shards })
        }),
        downward_deltas()
            .prop_map(|deltas| HubFrame::DownwardSnapshotChunk(DownwardBatch { deltas })),
        any::<u64>().prop_map(|seq| HubFrame::DownwardSnapshotEnd(SnapshotEnd {
            seq,
            upsync_listed: false,
        })),
    ]
}
