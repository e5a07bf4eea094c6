//! Writes the seed corpus of the `frame_decode` fuzz target (see FUZZING.md
//! at the repository root): one real encoded frame of every type, agent's
//! and hub's, into the directory given (default
//! `fuzz/corpus/frame_decode`). Files are named by their content, so a
//! second run adds nothing.
//!
//! `cargo run -p uplink-protocol --example fuzz_seeds`

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use uplink_protocol::*;

fn main() -> std::io::Result<()> {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/frame_decode")
        });
    for frame in agent_frames() {
        write(&dir, &encode(&frame).map_err(std::io::Error::other)?)?;
    }
    for frame in hub_frames() {
        write(&dir, &encode(&frame).map_err(std::io::Error::other)?)?;
    }
    Ok(())
}

/// Writes `bytes` under a name derived from them.
fn write(dir: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    // FNV-1a: stable and dependency-free; collisions only cost a seed.
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    });
    std::fs::write(dir.join(format!("seed-{hash:016x}")), bytes)
}

fn object(name: &str) -> ObjectRef {
    ObjectRef {
        group: "apps".into(),
        version: "v1".into(),
        resource: "deployments".into(),
        kind: "Deployment".into(),
        workspace: "root:org:team-a".into(),
        namespace: Some("shop".into()),
        name: name.into(),
        uid: "0f6c1f2e-uid".into(),
    }
}

fn deltas() -> Vec<Delta> {
    vec![
        Delta {
            seq: 41,
            object: object("web"),
            generation: Some(3),
            observed_generation: Some(3),
            observed_at_ms: 1_765_000_000_000,
            change: Change::Upsert {
                status_json: r#"{"replicas":3,"readyReplicas":2}"#.into(),
            },
            object_json: None,
        },
        Delta {
            seq: 42,
            object: ObjectRef {
                namespace: None,
                ..object("db")
            },
            generation: None,
            observed_generation: None,
            observed_at_ms: 1_765_000_000_500,
            change: Change::Deleted,
            object_json: None,
        },
    ]
}

fn amounts(n: u64) -> ResourceAmounts {
    ResourceAmounts {
        cpu_millis: 4000 * n,
        memory_bytes: 16 << 30,
        ephemeral_storage_bytes: 100 << 30,
        pods: 110 * n,
    }
}

fn agent_frames() -> Vec<AgentFrame> {
    vec![
        AgentFrame::Hello(Hello {
            protocol_versions: vec![1, 2],
            cluster: "east".into(),
            agent_version: "0.1.0".into(),
            session_id: "9d7c".into(),
            last_hub_epoch: Some(7),
            last_ack: 40,
            downward_resources: vec!["configmaps.v1".into()],
            upsync_resources: Vec::new(),
        }),
        AgentFrame::Hello(Hello {
            protocol_versions: vec![1, 2, 3],
            cluster: "east".into(),
            agent_version: "0.2.0".into(),
            session_id: "9d7d".into(),
            last_hub_epoch: None,
            last_ack: 0,
            downward_resources: vec!["configmaps.v1".into()],
            upsync_resources: vec!["persistentvolumes.v1".into()],
        }),
        AgentFrame::Deltas(DeltaBatch {
            deltas: vec![Delta {
                seq: 43,
                object: ObjectRef {
                    group: String::new(),
                    version: "v1".into(),
                    resource: "persistentvolumes".into(),
                    kind: "PersistentVolume".into(),
                    workspace: "root".into(),
                    namespace: None,
                    name: "pv-1".into(),
                    uid: "7a1e-uid".into(),
                },
                generation: None,
                observed_generation: None,
                observed_at_ms: 1_765_000_001_000,
                change: Change::Upsert {
                    status_json: r#"{"phase":"Bound"}"#.into(),
                },
                object_json: Some(
                    r#"{"apiVersion":"v1","kind":"PersistentVolume","metadata":{"name":"pv-1"},"spec":{"capacity":{"storage":"1Gi"}}}"#
                        .into(),
                ),
            }],
        }),
        AgentFrame::Events(EventBatch {
            reports: vec![EventReport {
                regarding: object("web"),
                related: None,
                event_type: "Warning".into(),
                reason: "BackOff".into(),
                action: "Sync".into(),
                reporting_controller: "kubelet".into(),
                reporting_instance: "node-1".into(),
                note: "Back-off restarting failed container".into(),
                count: 12,
                first_ms: 1_765_000_000_000,
                last_ms: 1_765_000_060_000,
            }],
        }),
        AgentFrame::Hello(Hello {
            protocol_versions: vec![1],
            cluster: "east".into(),
            agent_version: String::new(),
            session_id: "s".into(),
            last_hub_epoch: None,
            last_ack: 0,
            downward_resources: Vec::new(),
            upsync_resources: Vec::new(),
        }),
        AgentFrame::Deltas(DeltaBatch { deltas: deltas() }),
        AgentFrame::SnapshotBegin(SnapshotBegin { objects: 2, shards: None }),
        AgentFrame::SnapshotChunk(SnapshotChunk { deltas: deltas() }),
        AgentFrame::SnapshotEnd(SnapshotEnd { seq: 42, upsync_listed: false, }),
        AgentFrame::Heartbeat(Heartbeat {
            agent_time_ms: 1_765_000_001_000,
            summary: None,
        }),
        AgentFrame::Heartbeat(Heartbeat {
            agent_time_ms: 1_765_000_001_000,
            summary: Some(ClusterSummary {
                watches: vec![WatchHealth {
                    resource: "deployments.v1.apps".into(),
                    ready: true,
                    objects: 12,
                    error: Some("410 Gone".into()),
                }],
                nodes: NodeCounts {
                    total: 3,
                    ready: 3,
                    cordoned: 0,
                },
                capacity: amounts(3),
                allocatable: amounts(3),
                requests: amounts(1),
                usage: Some(amounts(1)),
                pods: PodPhaseCounts {
                    running: 20,
                    ..PodPhaseCounts::default()
                },
                schedulable: amounts(2),
                extended: BTreeMap::from([(
                    "nvidia.com/gpu".into(),
                    ExtendedAmounts {
                        capacity: 8,
                        allocatable: 8,
                        requests: 2,
                    },
                )]),
                workspaces: BTreeMap::from([("root:org:team-a".into(), amounts(1))]),
            }),
        }),
        AgentFrame::Bye(Bye {
            reason: "shutting down".into(),
        }),
        AgentFrame::DownwardAck(DownwardAck {
            seq: 5,
            failures: vec![ApplyFailure {
                seq: 4,
                reason: "invalid".into(),
                message: "spec.replicas: must be non-negative".into(),
            }],
        }),
    ]
}

fn hub_frames() -> Vec<HubFrame> {
    let downward = DownwardBatch {
        deltas: vec![
            DownwardDelta {
                seq: 1,
                object: object("web"),
                change: DownwardChange::Apply {
                    manifest_json:
                        r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"web"}}"#
                            .into(),
                },
            },
            DownwardDelta {
                seq: 2,
                object: object("old"),
                change: DownwardChange::Delete,
            },
        ],
    };
    vec![
        HubFrame::Welcome(Welcome {
            protocol_version: 2,
            hub_epoch: 7,
            mode: SessionMode::Resume { acked: 40 },
            heartbeat_interval_ms: 10_000,
            limits: Limits::default(),
            sync_target: Some(SyncTargetLocator {
                workspace: "root".into(),
                name: "east".into(),
                uid: "u-1".into(),
                key: "2xk3".into(),
            }),
            shards: None,
        }),
        HubFrame::Welcome(Welcome {
            protocol_version: 4,
            hub_epoch: 9,
            mode: SessionMode::Snapshot,
            heartbeat_interval_ms: 10_000,
            limits: Limits::default(),
            sync_target: None,
            shards: Some(ShardsHeld {
                count: 16,
                held: vec![
                    ShardClaim {
                        shard: ShardId(2),
                        term: 3,
                    },
                    ShardClaim {
                        shard: ShardId(7),
                        term: 1,
                    },
                ],
                snapshot: vec![ShardId(2), ShardId(7)],
                heartbeat_interval_ms: None,
            }),
        }),
        HubFrame::Shards(ShardsHeld {
            count: 16,
            held: vec![ShardClaim {
                shard: ShardId(7),
                term: 1,
            }],
            snapshot: Vec::new(),
            heartbeat_interval_ms: Some(60_000),
        }),
        HubFrame::Welcome(Welcome {
            protocol_version: 1,
            hub_epoch: 8,
            mode: SessionMode::Snapshot,
            heartbeat_interval_ms: 10_000,
            limits: Limits::default(),
            sync_target: None,
            shards: None,
        }),
        HubFrame::Ack(Ack {
            seq: 42,
            rejected: vec![Rejected {
                seq: 41,
                reason: Rejected::NOT_PLACED.into(),
            }],
        }),
        HubFrame::HeartbeatAck(HeartbeatAck {
            agent_time_ms: 1_765_000_001_000,
            hub_time_ms: 1_765_000_001_020,
        }),
        HubFrame::Throttle(Throttle {
            pause_ms: 1000,
            max_deltas_per_s: 50,
        }),
        HubFrame::Error(ErrorFrame::new(ErrorCode::LimitExceeded, "too many deltas")),
        HubFrame::Bye(Bye {
            reason: "hub shutting down".into(),
        }),
        HubFrame::Downward(downward.clone()),
        HubFrame::DownwardSnapshotBegin(SnapshotBegin {
            objects: 2,
            shards: None,
        }),
        HubFrame::DownwardSnapshotChunk(downward),
        HubFrame::DownwardSnapshotEnd(SnapshotEnd {
            seq: 2,
            upsync_listed: false,
        }),
    ]
}
