//! The wire shape the README documents, and the compatibility rules: unknown
//! fields are ignored, missing defaulted fields are filled in.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use serde::Serialize;
use serde_json::json;
use uplink_protocol::*;

/// The msgpack of a frame, read back as JSON to compare shapes.
fn as_json<F: Serialize>(frame: &F) -> serde_json::Value {
    rmp_serde::from_slice(&encode(frame).unwrap()).unwrap()
}

fn msgpack(value: &serde_json::Value) -> Vec<u8> {
    rmp_serde::to_vec_named(value).unwrap()
}

#[test]
fn hello_has_the_documented_shape() {
    let hello = AgentFrame::Hello(Hello {
        protocol_versions: vec![1],
        cluster: "cluster-a".into(),
        agent_version: "0.1.0".into(),
        session_id: "3f1c".into(),
        last_hub_epoch: Some(7),
        last_ack: 41,
        downward_resources: Vec::new(),
        upsync_resources: Vec::new(),
    });
    assert_eq!(
        as_json(&hello),
        json!({"Hello": {
            "protocol_versions": [1],
            "cluster": "cluster-a",
            "agent_version": "0.1.0",
            "session_id": "3f1c",
            "last_hub_epoch": 7,
            "last_ack": 41,
        }})
    );
}

#[test]
fn deltas_have_the_documented_shape() {
    let object = ObjectRef {
        group: "apps".into(),
        version: "v1".into(),
        resource: "deployments".into(),
        kind: "Deployment".into(),
        workspace: "root:org:team-a".into(),
        namespace: Some("default".into()),
        name: "web".into(),
        uid: "9d2e".into(),
    };
    let frame = AgentFrame::Deltas(DeltaBatch {
        deltas: vec![
            Delta {
                seq: 42,
                object: object.clone(),
                generation: Some(3),
                observed_generation: Some(3),
                observed_at_ms: 1_700_000_000_000,
                change: Change::Upsert {
                    status_json: r#"{"replicas":3}"#.into(),
                },
                object_json: None,
            },
            Delta {
                seq: 43,
                object: ObjectRef {
                    namespace: None,
                    ..object
                },
                generation: None,
                observed_generation: None,
                observed_at_ms: 1_700_000_000_500,
                change: Change::Deleted,
                object_json: None,
            },
        ],
    });
    let object = json!({
        "group": "apps", "version": "v1", "resource": "deployments",
        "kind": "Deployment", "workspace": "root:org:team-a",
        "namespace": "default", "name": "web", "uid": "9d2e",
    });
    let mut cluster_scoped = object.clone();
    cluster_scoped["namespace"] = serde_json::Value::Null;
    assert_eq!(
        as_json(&frame),
        json!({"Deltas": {"deltas": [
            {
                "seq": 42,
                "object": object,
                "generation": 3,
                "observed_generation": 3,
                "observed_at_ms": 1_700_000_000_000i64,
                "change": {"Upsert": {"status_json": "{\"replicas\":3}"}},
            },
            {
                "seq": 43,
                "object": cluster_scoped,
                "generation": null,
                "observed_generation": null,
                "observed_at_ms": 1_700_000_000_500i64,
                "change": "Deleted",
            },
        ]}})
    );
}

#[test]
fn session_modes_have_the_documented_shape() {
    let welcome = |mode| {
        as_json(&HubFrame::Welcome(Welcome {
            protocol_version: 1,
            hub_epoch: 9,
            mode,
            heartbeat_interval_ms: 10_000,
            limits: Limits::default(),
            sync_target: None,
            shards: None,
        }))
    };
    assert_eq!(
        welcome(SessionMode::Resume { acked: 41 })["Welcome"]["mode"],
        json!({"Resume": {"acked": 41}})
    );
    let snapshot = welcome(SessionMode::Snapshot);
    assert_eq!(snapshot["Welcome"]["mode"], json!("Snapshot"));
    assert_eq!(
        snapshot["Welcome"]["limits"],
        json!({
            "max_frame_bytes": 4_194_304,
            "max_deltas_per_batch": 1024,
            "max_string_bytes": 1024,
            "max_status_bytes": 262_144,
            "max_objects_per_cluster": 1_000_000,
            "max_manifest_bytes": 1_572_864,
            "max_downward_in_flight": 2048,
            "max_events_per_batch": 256,
        })
    );
}

#[test]
fn events_have_the_documented_shape() {
    let frame = AgentFrame::Events(EventBatch {
        reports: vec![EventReport {
            regarding: ObjectRef {
                group: "apps".into(),
                version: "v1".into(),
                resource: "deployments".into(),
                kind: "Deployment".into(),
                workspace: "root:org:team-a".into(),
                namespace: Some("shop".into()),
                name: "web".into(),
                uid: "d-1".into(),
            },
            related: None,
            event_type: "Warning".into(),
            reason: "FailedCreate".into(),
            action: "Create".into(),
            reporting_controller: "replicaset-controller".into(),
            reporting_instance: "kcm-1".into(),
            note: "quota exceeded".into(),
            count: 7,
            first_ms: 1_000,
            last_ms: 9_000,
        }],
    });
    let value = as_json(&frame);
    let report = &value["Events"]["reports"][0];
    assert_eq!(report["regarding"]["name"], "web");
    assert_eq!(report["related"], json!(null));
    assert_eq!(report["event_type"], "Warning");
    assert_eq!(report["count"], 7);
    assert_eq!(report["first_ms"], 1_000);
    assert_eq!(report["last_ms"], 9_000);
    // Only what the series needs: nothing the hub would have to trust.
    let Some(fields) = report.as_object() else {
        panic!("a report is a map: {report}");
    };
    assert_eq!(fields.len(), 11, "{report}");
    let decoded = decode_agent_frame(&msgpack(&value), &Limits::default()).unwrap();
    assert_eq!(decoded, frame);
}

/// A `Hello` as a later version might send it, with fields this one lacks.
#[derive(Serialize)]
enum FutureAgentFrame {
    Hello(FutureHello),
}

#[derive(Serialize)]
struct FutureHello {
    protocol_versions: Vec<u16>,
    cluster: String,
    agent_version: String,
    session_id: String,
    last_hub_epoch: Option<u64>,
    last_ack: u64,
    compression: Vec<String>,
    shard: Option<FutureShard>,
}

#[derive(Serialize)]
struct FutureShard {
    index: u32,
    of: u32,
}

#[test]
fn unknown_fields_are_ignored() {
    let future = FutureAgentFrame::Hello(FutureHello {
        protocol_versions: vec![2, 1],
        cluster: "cluster-a".into(),
        agent_version: "9.9".into(),
        session_id: "s".into(),
        last_hub_epoch: None,
        last_ack: 5,
        compression: vec!["zstd".into()],
        shard: Some(FutureShard { index: 1, of: 4 }),
    });
    let bytes = rmp_serde::to_vec_named(&future).unwrap();
    assert_eq!(
        decode_agent_frame(&bytes, &Limits::default()).unwrap(),
        AgentFrame::Hello(Hello {
            protocol_versions: vec![2, 1],
            cluster: "cluster-a".into(),
            agent_version: "9.9".into(),
            session_id: "s".into(),
            last_hub_epoch: None,
            last_ack: 5,
            downward_resources: Vec::new(),
            upsync_resources: Vec::new(),
        })
    );

    // Deep inside a batch and inside a struct variant too.
    let bytes = msgpack(&json!({"Deltas": {"compressed": false, "deltas": [{
        "seq": 1,
        "object": {"group": "", "version": "v1", "resource": "pods", "kind": "Pod",
                   "workspace": "root", "name": "p", "uid": "u", "shard": 3},
        "observed_at_ms": 5,
        "change": {"Upsert": {"status_json": "{}", "encoding": "json"}},
        "trace_id": "abc",
    }]}}));
    let AgentFrame::Deltas(batch) = decode_agent_frame(&bytes, &Limits::default()).unwrap() else {
        panic!("expected Deltas");
    };
    assert_eq!(batch.deltas[0].object.name, "p");
    assert_eq!(batch.deltas[0].object.namespace, None);
}

#[test]
fn missing_defaulted_fields_decode() {
    let limits = Limits::default();
    let bytes = msgpack(&json!({"Hello": {
        "protocol_versions": [1], "cluster": "cluster-a", "session_id": "s",
    }}));
    assert_eq!(
        decode_agent_frame(&bytes, &limits).unwrap(),
        AgentFrame::Hello(Hello {
            protocol_versions: vec![1],
            cluster: "cluster-a".into(),
            agent_version: String::new(),
            session_id: "s".into(),
            last_hub_epoch: None,
            last_ack: 0,
            downward_resources: Vec::new(),
            upsync_resources: Vec::new(),
        })
    );

    // A delta with only the required fields.
    let bytes = msgpack(&json!({"Deltas": {"deltas": [{
        "seq": 1,
        "object": {"group": "", "version": "v1", "resource": "pods", "kind": "Pod",
                   "workspace": "", "name": "p"},
        "observed_at_ms": 5,
        "change": "Deleted",
    }]}}));
    let AgentFrame::Deltas(batch) = decode_agent_frame(&bytes, &limits).unwrap() else {
        panic!("expected Deltas");
    };
    let delta = &batch.deltas[0];
    assert_eq!(delta.object.uid, "");
    assert_eq!((delta.generation, delta.observed_generation), (None, None));

    // A heartbeat summary from before capacity was reported.
    let bytes = msgpack(
        &json!({"Heartbeat": {"agent_time_ms": 1, "summary": {"watches": [
            {"resource": "deployments.v1.apps", "ready": true, "objects": 3},
        ]}}}),
    );
    let AgentFrame::Heartbeat(heartbeat) = decode_agent_frame(&bytes, &limits).unwrap() else {
        panic!("expected Heartbeat");
    };
    let summary = heartbeat.summary.unwrap();
    assert_eq!(summary.watches[0].error, None);
    assert_eq!(summary.capacity, ResourceAmounts::default());
    assert_eq!(summary.usage, None);

    // Limits a hub does not announce take their defaults.
    let bytes = msgpack(&json!({"Welcome": {
        "protocol_version": 1, "hub_epoch": 9, "mode": "Snapshot",
        "heartbeat_interval_ms": 10_000, "limits": {"max_deltas_per_batch": 10},
    }}));
    let HubFrame::Welcome(welcome) = decode_hub_frame(&bytes, &limits).unwrap() else {
        panic!("expected Welcome");
    };
    assert_eq!(
        welcome.limits,
        Limits {
            max_deltas_per_batch: 10,
            ..Limits::default()
        }
    );
    let bytes = msgpack(&json!({"Throttle": {"pause_ms": 100}}));
    assert_eq!(
        decode_hub_frame(&bytes, &limits).unwrap(),
        HubFrame::Throttle(Throttle {
            pause_ms: 100,
            max_deltas_per_s: 0,
        })
    );
}

#[test]
fn acks_have_the_documented_shape() {
    assert_eq!(
        as_json(&HubFrame::Ack(Ack::new(41))),
        json!({"Ack": {"seq": 41}})
    );
    let ack = HubFrame::Ack(Ack {
        seq: 44,
        rejected: vec![Rejected {
            seq: 43,
            reason: Rejected::NOT_PLACED.into(),
        }],
    });
    assert_eq!(
        as_json(&ack),
        json!({"Ack": {"seq": 44, "rejected": [{"seq": 43, "reason": "not_placed"}]}})
    );
}

#[test]
fn a_replicas_heartbeat_interval_is_optional_and_documented() {
    let held = ShardsHeld {
        count: 16,
        held: vec![ShardClaim {
            shard: ShardId(7),
            term: 1,
        }],
        snapshot: Vec::new(),
        heartbeat_interval_ms: Some(60_000),
    };
    assert_eq!(
        as_json(&HubFrame::Shards(held.clone())),
        json!({"Shards": {
            "count": 16,
            "held": [{"shard": 7, "term": 1}],
            "heartbeat_interval_ms": 60_000,
        }})
    );
    // Without the field (a hub before it, or one that asks for the
    // Welcome's interval): `None`, and nothing sent for it.
    let without = msgpack(&json!({"Shards": {"count": 16, "held": [{"shard": 7, "term": 1}]}}));
    let decoded = decode_hub_frame(&without, &Limits::default()).unwrap();
    assert_eq!(
        decoded,
        HubFrame::Shards(ShardsHeld {
            heartbeat_interval_ms: None,
            ..held
        })
    );
    assert_eq!(encode(&decoded).unwrap(), without);
}
