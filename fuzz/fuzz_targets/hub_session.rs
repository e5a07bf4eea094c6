//! The hub's session state machine (hub/src/session/) driven by arbitrary
//! sequences of agent frames, structure-aware: mostly well-formed frames
//! built with `arbitrary` from a small vocabulary (the right or a wrong
//! cluster, placed and unplaced objects, small sequence numbers, valid and
//! invalid statuses), mixed with raw bytes, text, pings, pauses, closes and
//! hub shutdown. The real `session::serve` runs over an in-memory WebSocket
//! on a paused clock (`uplink_hub::fuzzing`).
//!
//! Properties of every run:
//! - the session ends (no input leaves it hanging);
//! - every message the hub sends is a binary frame that decodes under the
//!   limits it announces; the first is `Welcome` or `Error`, and nothing
//!   follows an `Error`;
//! - an ack never exceeds a sequence number the agent sent, and acks never
//!   go back while the agent's sequence numbers go forward;
//! - the store holds only objects placed on the cluster, and no more than
//!   the per-cluster limit.

#![no_main]

use std::collections::BTreeMap;
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use uplink_hub::fuzzing::{self, CLUSTER, HUB_EPOCH, Input, NAMESPACE, PLACED, WORKSPACE};
use uplink_protocol::{
    AgentFrame, ApplyFailure, Bye, Change, ClusterSummary, Delta, DeltaBatch, DownwardAck,
    Heartbeat, Hello, HubFrame, NodeCounts, ObjectRef, ResourceAmounts, SnapshotBegin,
    SnapshotChunk, SnapshotEnd, WatchHealth, decode_agent_frame, decode_hub_frame, encode,
};

#[derive(Debug, Arbitrary)]
enum Step {
    Hello(HelloSpec),
    Deltas(Vec<DeltaSpec>),
    SnapshotBegin(u8),
    SnapshotChunk(Vec<DeltaSpec>),
    SnapshotEnd(Seq),
    Heartbeat(HeartbeatSpec),
    DownwardAck(Seq, Vec<(Seq, String)>),
    Bye,
    Raw(Vec<u8>),
    Text(String),
    Ping,
    Close,
    /// Seconds the clock may run.
    Wait(u8),
    Shutdown,
}

#[derive(Debug, Arbitrary)]
struct HelloSpec {
    versions: Vec<u8>,
    other_cluster: bool,
    session: u8,
    epoch: Option<bool>,
    last_ack: Seq,
    downward: bool,
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Seq {
    Small(u8),
    Any(u64),
}

impl Seq {
    fn get(self) -> u64 {
        match self {
            Seq::Small(n) => u64::from(n),
            Seq::Any(n) => n,
        }
    }
}

#[derive(Debug, Arbitrary)]
struct DeltaSpec {
    seq: Seq,
    object: ObjectSpec,
    generation: Option<i8>,
    observed_generation: Option<i8>,
    observed_at_ms: i64,
    change: ChangeSpec,
}

#[derive(Debug, Arbitrary)]
enum ObjectSpec {
    /// One of the placed deployments (by index), reported as placed.
    Placed(u8),
    /// A deployment of that namespace that is not placed.
    Unplaced(u8),
    /// A placed deployment reported with another kind.
    WrongKind(u8),
    /// A placed deployment's name in another workspace.
    OtherWorkspace(u8),
    /// The hub's own SyncTarget records.
    Reserved,
    /// Any strings at all.
    Anything {
        group: String,
        version: String,
        resource: String,
        kind: String,
        workspace: String,
        namespace: Option<String>,
        name: String,
    },
}

#[derive(Debug, Arbitrary)]
enum ChangeSpec {
    Upsert(StatusSpec),
    Deleted,
}

#[derive(Debug, Arbitrary)]
enum StatusSpec {
    Replicas(u8),
    NotAnObject,
    Text(String),
    /// A status of about this many bytes.
    Large(u16),
}

#[derive(Debug, Arbitrary)]
struct HeartbeatSpec {
    /// Milliseconds from the hub's clock, or any time at all.
    skew_ms: Option<i32>,
    any_time: i64,
    summary: Option<SummarySpec>,
}

#[derive(Debug, Arbitrary)]
struct SummarySpec {
    nodes: (u32, u32, u32),
    capacity: (u64, u64, u64, u64),
    requests: (u64, u64, u64, u64),
    usage: Option<(u64, u64, u64, u64)>,
    watches: Vec<(String, bool, u64, Option<String>)>,
    workspaces: Vec<(u8, (u64, u64, u64, u64))>,
}

fn amounts(
    (cpu_millis, memory_bytes, ephemeral_storage_bytes, pods): (u64, u64, u64, u64),
) -> ResourceAmounts {
    ResourceAmounts {
        cpu_millis,
        memory_bytes,
        ephemeral_storage_bytes,
        pods,
    }
}

fn object(spec: ObjectSpec) -> ObjectRef {
    let deployment = |name: String| ObjectRef {
        group: "apps".into(),
        version: "v1".into(),
        resource: "deployments".into(),
        kind: "Deployment".into(),
        workspace: WORKSPACE.into(),
        namespace: Some(NAMESPACE.into()),
        name,
        uid: String::new(),
    };
    let placed = |i: u8| PLACED[usize::from(i) % PLACED.len()].to_owned();
    match spec {
        ObjectSpec::Placed(i) => deployment(placed(i)),
        ObjectSpec::Unplaced(i) => deployment(format!("unplaced-{}", i % 4)),
        ObjectSpec::WrongKind(i) => ObjectRef {
            kind: "StatefulSet".into(),
            ..deployment(placed(i))
        },
        ObjectSpec::OtherWorkspace(i) => ObjectRef {
            workspace: "root:other".into(),
            ..deployment(placed(i))
        },
        ObjectSpec::Reserved => ObjectRef {
            group: "workload.kcp.io".into(),
            resource: "synctargets".into(),
            kind: "SyncTarget".into(),
            workspace: "root".into(),
            namespace: None,
            ..deployment(CLUSTER.into())
        },
        ObjectSpec::Anything {
            group,
            version,
            resource,
            kind,
            workspace,
            namespace,
            name,
        } => ObjectRef {
            group,
            version,
            resource,
            kind,
            workspace,
            namespace,
            name,
            uid: String::new(),
        },
    }
}

fn delta(spec: DeltaSpec) -> Delta {
    let change = match spec.change {
        ChangeSpec::Deleted => Change::Deleted,
        ChangeSpec::Upsert(status) => Change::Upsert {
            status_json: match status {
                StatusSpec::Replicas(n) => format!(r#"{{"replicas":{n},"readyReplicas":{n}}}"#),
                StatusSpec::NotAnObject => "[1,2]".into(),
                StatusSpec::Text(text) => text,
                StatusSpec::Large(len) => {
                    format!(r#"{{"message":"{}"}}"#, "x".repeat(usize::from(len) % 1024))
                }
            },
        },
    };
    Delta {
        seq: spec.seq.get(),
        object: object(spec.object),
        generation: spec.generation.map(i64::from),
        observed_generation: spec.observed_generation.map(i64::from),
        observed_at_ms: spec.observed_at_ms,
        change,
        object_json: None,
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn frame(step: Step) -> Result<AgentFrame, Input> {
    Ok(match step {
        Step::Hello(spec) => AgentFrame::Hello(Hello {
            protocol_versions: spec
                .versions
                .into_iter()
                .map(|v| u16::from(v % 4))
                .collect(),
            cluster: if spec.other_cluster {
                "fuzz-b".into()
            } else {
                CLUSTER.into()
            },
            agent_version: "fuzz".into(),
            session_id: format!("s{}", spec.session % 3),
            last_hub_epoch: spec
                .epoch
                .map(|same| if same { HUB_EPOCH } else { HUB_EPOCH + 1 }),
            last_ack: spec.last_ack.get(),
            downward_resources: if spec.downward {
                vec!["configmaps.v1".into()]
            } else {
                Vec::new()
            },
            upsync_resources: Vec::new(),
        }),
        Step::Deltas(deltas) => AgentFrame::Deltas(DeltaBatch {
            deltas: deltas.into_iter().map(delta).collect(),
        }),
        Step::SnapshotBegin(objects) => AgentFrame::SnapshotBegin(SnapshotBegin {
            objects: u64::from(objects),
            shards: None,
        }),
        Step::SnapshotChunk(deltas) => AgentFrame::SnapshotChunk(SnapshotChunk {
            deltas: deltas.into_iter().map(delta).collect(),
        }),
        Step::SnapshotEnd(seq) => AgentFrame::SnapshotEnd(SnapshotEnd {
            seq: seq.get(),
            upsync_listed: false,
        }),
        Step::Heartbeat(spec) => AgentFrame::Heartbeat(Heartbeat {
            agent_time_ms: match spec.skew_ms {
                Some(skew) => now_ms().saturating_add(i64::from(skew)),
                None => spec.any_time,
            },
            summary: spec.summary.map(|s| ClusterSummary {
                watches: s
                    .watches
                    .into_iter()
                    .map(|(resource, ready, objects, error)| WatchHealth {
                        resource,
                        ready,
                        objects,
                        error,
                    })
                    .collect(),
                nodes: NodeCounts {
                    total: s.nodes.0,
                    ready: s.nodes.1,
                    cordoned: s.nodes.2,
                },
                capacity: amounts(s.capacity),
                allocatable: amounts(s.capacity),
                requests: amounts(s.requests),
                usage: s.usage.map(amounts),
                workspaces: s
                    .workspaces
                    .into_iter()
                    .map(|(w, a)| (format!("root:w{}", w % 4), amounts(a)))
                    .collect::<BTreeMap<_, _>>(),
                ..ClusterSummary::default()
            }),
        }),
        Step::DownwardAck(seq, failures) => AgentFrame::DownwardAck(DownwardAck {
            seq: seq.get(),
            failures: failures
                .into_iter()
                .map(|(seq, message)| ApplyFailure {
                    seq: seq.get(),
                    reason: "invalid".into(),
                    message,
                })
                .collect(),
        }),
        Step::Bye => AgentFrame::Bye(Bye {
            reason: "fuzz".into(),
        }),
        Step::Raw(bytes) => return Err(Input::Binary(bytes)),
        Step::Text(text) => return Err(Input::Text(text)),
        Step::Ping => return Err(Input::Ping(b"fuzz".to_vec())),
        Step::Close => return Err(Input::Close),
        Step::Wait(seconds) => return Err(Input::Wait(Duration::from_secs(u64::from(seconds)))),
        Step::Shutdown => return Err(Input::Shutdown),
    })
}

fuzz_target!(|steps: Vec<Step>| {
    let inputs: Vec<Input> = steps
        .into_iter()
        .take(32)
        .map(|step| match frame(step) {
            Ok(frame) => Input::Binary(encode(&frame).expect("a frame encodes")),
            Err(input) => input,
        })
        .collect();
    let seqs = agent_seqs(&inputs);
    let outcome = fuzzing::run_session(inputs);

    assert!(outcome.ended, "the session did not end");
    assert_eq!(
        outcome.other_messages, 0,
        "the hub sent a non-binary message"
    );
    assert!(
        outcome.stored_unplaced.is_empty(),
        "the store kept unplaced objects: {:?}",
        outcome.stored_unplaced
    );
    assert!(
        outcome.stored as u64 <= outcome.limits.max_objects_per_cluster,
        "the store holds {} objects for the cluster",
        outcome.stored
    );

    let mut last_ack = None;
    let mut errored = false;
    for (index, bytes) in outcome.sent.iter().enumerate() {
        let frame = decode_hub_frame(bytes, &outcome.limits)
            .unwrap_or_else(|error| panic!("hub frame {index} does not decode: {error}"));
        assert!(!errored, "the hub sent {frame:?} after an Error");
        if index == 0 {
            assert!(
                matches!(frame, HubFrame::Welcome(_) | HubFrame::Error(_)),
                "the hub's first frame is {frame:?}"
            );
        }
        match frame {
            HubFrame::Error(_) => errored = true,
            HubFrame::Ack(ack) => {
                // 0 acknowledges nothing (an empty batch, say).
                assert!(
                    ack.seq == 0 || seqs.iter().any(|seq| *seq >= ack.seq),
                    "ack {} is past every sequence number the agent sent",
                    ack.seq
                );
                // Acks are cumulative for an agent whose sequence numbers go
                // forward, as the protocol asks; one that sends them out of
                // order is acked what it sent, which may go back.
                if let Some(last) = last_ack
                    && seqs.is_sorted()
                {
                    assert!(ack.seq >= last, "ack went back from {last} to {}", ack.seq);
                }
                last_ack = Some(ack.seq);
            }
            _ => {}
        }
    }
});

/// The upward sequence numbers of every frame the agent sends, in order
/// (raw bytes too, when they happen to be a frame).
fn agent_seqs(inputs: &[Input]) -> Vec<u64> {
    let limits = fuzzing::limits();
    let mut seqs = Vec::new();
    for input in inputs {
        let Input::Binary(bytes) = input else {
            continue;
        };
        match decode_agent_frame(bytes, &limits) {
            Ok(AgentFrame::Deltas(DeltaBatch { deltas }))
            | Ok(AgentFrame::SnapshotChunk(SnapshotChunk { deltas })) => {
                seqs.extend(deltas.iter().map(|delta| delta.seq));
            }
            Ok(AgentFrame::SnapshotEnd(end)) => seqs.push(end.seq),
            _ => {}
        }
    }
    seqs
}
