//! Every way a frame is refused: one test per `DecodeError` variant, with the
//! numbers and the field the error must name.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use serde_json::json;
use uplink_protocol::*;

fn object(name: &str) -> ObjectRef {
    ObjectRef {
        group: "apps".into(),
        version: "v1".into(),
        resource: "deployments".into(),
        kind: "Deployment".into(),
        workspace: "root:org:team-a".into(),
        namespace: Some("default".into()),
        name: name.into(),
        uid: "uid-1".into(),
    }
}

fn delta(seq: u64, name: &str, status_json: &str) -> Delta {
    Delta {
        seq,
        object: object(name),
        generation: Some(2),
        observed_generation: Some(2),
        observed_at_ms: 1_700_000_000_000,
        change: Change::Upsert {
            status_json: status_json.into(),
        },
        object_json: None,
    }
}

fn batch(deltas: Vec<Delta>) -> Vec<u8> {
    encode(&AgentFrame::Deltas(DeltaBatch { deltas })).unwrap()
}

fn hello(cluster: &str) -> AgentFrame {
    AgentFrame::Hello(Hello {
        protocol_versions: vec![PROTOCOL_VERSION],
        cluster: cluster.into(),
        agent_version: "test".into(),
        session_id: "session-1".into(),
        last_hub_epoch: None,
        last_ack: 0,
        downward_resources: Vec::new(),
        upsync_resources: Vec::new(),
    })
}

/// msgpack for a JSON-like value, maps with string keys.
fn msgpack(value: &serde_json::Value) -> Vec<u8> {
    rmp_serde::to_vec_named(value).unwrap()
}

/// msgpack for `{"Deltas": {"deltas": <array32 header claiming len>}}`, with
/// nothing after the header.
fn batch_header_only(len: u32) -> Vec<u8> {
    let mut bytes = msgpack(&json!({"Deltas": {"deltas": []}}));
    assert_eq!(bytes.pop(), Some(0x90)); // the empty array
    bytes.push(0xdd);
    bytes.extend_from_slice(&len.to_be_bytes());
    bytes
}

#[test]
fn a_frame_over_the_size_limit_is_refused_before_parsing() {
    let bytes = encode(&hello("cluster-a")).unwrap();
    let limits = Limits {
        max_frame_bytes: bytes.len() as u32 - 1,
        ..Limits::default()
    };
    let err = decode_agent_frame(&bytes, &limits).unwrap_err();
    assert!(
        matches!(err, DecodeError::FrameTooLarge { len, max } if len == bytes.len() && max == limits.max_frame_bytes),
        "{err}"
    );

    // Garbage of the same size is refused for its size, not its content.
    let garbage = vec![0xc1; bytes.len()];
    let err = decode_hub_frame(&garbage, &limits).unwrap_err();
    assert_eq!(err.kind(), "frame_too_large");

    // Exactly at the limit is fine.
    let limits = Limits {
        max_frame_bytes: bytes.len() as u32,
        ..Limits::default()
    };
    assert!(decode_agent_frame(&bytes, &limits).is_ok());
}

#[test]
fn a_batch_over_the_delta_limit_is_refused() {
    let limits = Limits {
        max_deltas_per_batch: 2,
        ..Limits::default()
    };
    let deltas: Vec<_> = (1..=3).map(|seq| delta(seq, "web", "{}")).collect();

    let err = decode_agent_frame(&batch(deltas.clone()), &limits).unwrap_err();
    assert!(
        matches!(err, DecodeError::TooManyDeltas { len: 3, max: 2 }),
        "{err}"
    );

    let chunk = encode(&AgentFrame::SnapshotChunk(SnapshotChunk {
        deltas: deltas.clone(),
    }))
    .unwrap();
    let err = decode_agent_frame(&chunk, &limits).unwrap_err();
    assert!(
        matches!(err, DecodeError::TooManyDeltas { len: 3, max: 2 }),
        "{err}"
    );

    assert!(decode_agent_frame(&batch(deltas[..2].to_vec()), &limits).is_ok());
}

#[test]
fn a_batch_over_the_event_limit_is_refused() {
    let limits = Limits {
        max_events_per_batch: 2,
        ..Limits::default()
    };
    let report = |name: &str| EventReport {
        regarding: object(name),
        related: None,
        event_type: "Warning".into(),
        reason: "BackOff".into(),
        action: String::new(),
        reporting_controller: "kubelet".into(),
        reporting_instance: "node-1".into(),
        note: "Back-off restarting failed container".into(),
        count: 3,
        first_ms: 1,
        last_ms: 2,
    };
    let frame =
        |reports: Vec<EventReport>| encode(&AgentFrame::Events(EventBatch { reports })).unwrap();
    let err = decode_agent_frame(&frame(vec![report("a"), report("b"), report("c")]), &limits)
        .unwrap_err();
    assert!(
        matches!(err, DecodeError::TooManyEvents { len: 3, max: 2 }),
        "{err}"
    );
    assert_eq!(err.kind(), "too_many_events");
    assert!(decode_agent_frame(&frame(vec![report("a"), report("b")]), &limits).is_ok());
    let err = decode_agent_frame(&frame(vec![report("")]), &limits).unwrap_err();
    assert!(
        matches!(&err, DecodeError::Invalid { field, .. } if field == "Events.reports[0].regarding.name"),
        "{err}"
    );
}

#[test]
fn a_batch_is_refused_from_its_header_alone() {
    // The header claims four billion deltas and none follow: the refusal must
    // come from the count, before any delta is read.
    let err = decode_agent_frame(&batch_header_only(u32::MAX), &Limits::default()).unwrap_err();
    assert!(
        matches!(err, DecodeError::TooManyDeltas { len, max: 1024 } if len == u64::from(u32::MAX)),
        "{err}"
    );
    // Within the limit, the same header is merely truncated.
    let err = decode_agent_frame(&batch_header_only(3), &Limits::default()).unwrap_err();
    assert!(matches!(err, DecodeError::Truncated { .. }), "{err}");
}

#[test]
fn a_batch_with_structs_as_arrays_is_still_bounded() {
    // rmp_serde also reads structs encoded as arrays (no field names); the
    // precheck cannot see the batch there, the check after decoding does.
    let limits = Limits {
        max_deltas_per_batch: 2,
        ..Limits::default()
    };
    let frame = AgentFrame::Deltas(DeltaBatch {
        deltas: (1..=3).map(|seq| delta(seq, "web", "{}")).collect(),
    });
    let compact = rmp_serde::to_vec(&frame).unwrap();
    let err = decode_agent_frame(&compact, &limits).unwrap_err();
    assert!(
        matches!(err, DecodeError::TooManyDeltas { len: 3, max: 2 }),
        "{err}"
    );
}

#[test]
fn a_string_over_the_limit_is_refused_naming_its_field() {
    let limits = Limits::default();
    let long = "n".repeat(2000);
    let bytes = batch(vec![delta(1, "ok", "{}"), delta(2, &long, "{}")]);
    let err = decode_agent_frame(&bytes, &limits).unwrap_err();
    match &err {
        DecodeError::StringTooLong { field, len, max } => {
            assert_eq!(field, "Deltas.deltas[1].object.name");
            assert_eq!((*len, *max), (2000, 1024));
        }
        other => panic!("expected StringTooLong, got {other}"),
    }
    assert!(
        err.to_string().contains("Deltas.deltas[1].object.name"),
        "{err}"
    );

    let err = decode_agent_frame(&encode(&hello(&long)).unwrap(), &limits).unwrap_err();
    assert!(
        matches!(&err, DecodeError::StringTooLong { field, .. } if field == "Hello.cluster"),
        "{err}"
    );

    // The hub's frames are held to the agent's limits the same way.
    let bye = encode(&HubFrame::Bye(Bye { reason: long })).unwrap();
    let err = decode_hub_frame(&bye, &limits).unwrap_err();
    assert!(
        matches!(&err, DecodeError::StringTooLong { field, .. } if field == "Bye.reason"),
        "{err}"
    );
}

#[test]
fn a_string_is_refused_from_its_header_alone() {
    // A str32 header claiming 4 GiB, and nothing after it.
    let mut bytes = msgpack(&json!({"Bye": {"reason": ""}}));
    assert_eq!(bytes.pop(), Some(0xa0));
    bytes.push(0xdb);
    bytes.extend_from_slice(&u32::MAX.to_be_bytes());
    let err = decode_agent_frame(&bytes, &Limits::default()).unwrap_err();
    assert!(
        matches!(&err, DecodeError::StringTooLong { field, len, .. } if field == "Bye.reason" && *len == u64::from(u32::MAX)),
        "{err}"
    );
}

#[test]
fn binary_values_count_as_strings() {
    // `{"Bye": {"reason": <bin8 of 10 bytes>}}`: serde accepts UTF-8 bytes
    // as a String, so they are held to the string limit too.
    let mut bytes = msgpack(&json!({"Bye": {"reason": ""}}));
    bytes.pop();
    bytes.extend_from_slice(&[0xc4, 10]);
    bytes.extend_from_slice(b"0123456789");
    let limits = Limits {
        max_string_bytes: 9,
        ..Limits::default()
    };
    let err = decode_agent_frame(&bytes, &limits).unwrap_err();
    assert!(
        matches!(&err, DecodeError::StringTooLong { field, len: 10, max: 9 } if field == "Bye.reason"),
        "{err}"
    );
}

#[test]
fn a_status_over_its_limit_is_refused_naming_the_delta() {
    let limits = Limits {
        max_status_bytes: 4096,
        ..Limits::default()
    };
    // Over the string limit but within the status limit: accepted.
    let status = format!(r#"{{"message":"{}"}}"#, "x".repeat(3000));
    assert!(decode_agent_frame(&batch(vec![delta(1, "web", &status)]), &limits).is_ok());

    let status = format!(r#"{{"message":"{}"}}"#, "x".repeat(5000));
    let bytes = batch(vec![delta(1, "a", "{}"), delta(2, "web", &status)]);
    let err = decode_agent_frame(&bytes, &limits).unwrap_err();
    match &err {
        DecodeError::StatusTooLarge { field, len, max } => {
            assert_eq!(field, "Deltas.deltas[1].change.Upsert.status_json");
            assert_eq!((*len, *max), (status.len() as u64, 4096));
        }
        other => panic!("expected StatusTooLarge, got {other}"),
    }
}

#[test]
fn nesting_deeper_than_the_limit_is_refused_without_overflowing_the_stack() {
    // An unknown field holding 40 nested arrays.
    let mut bytes = msgpack(&json!({"Bye": {"extra": null}}));
    assert_eq!(bytes.pop(), Some(0xc0));
    bytes.extend(std::iter::repeat_n(0x91, 40));
    bytes.push(0xc0);
    let err = decode_agent_frame(&bytes, &Limits::default()).unwrap_err();
    assert!(
        matches!(&err, DecodeError::NestingTooDeep { field, max: 32 } if field.starts_with("Bye.extra[0][0]")),
        "{err}"
    );

    // A whole frame of nested arrays.
    let bytes = vec![0x91; 1_000_000];
    let err = decode_hub_frame(&bytes, &Limits::default()).unwrap_err();
    assert_eq!(err.kind(), "too_deep");
}

#[test]
fn bytes_after_the_frame_are_refused() {
    let mut bytes = encode(&hello("cluster-a")).unwrap();
    let frame_len = bytes.len();
    bytes.extend_from_slice(&[0xc0, 0xc0]);
    let err = decode_agent_frame(&bytes, &Limits::default()).unwrap_err();
    assert!(
        matches!(err, DecodeError::TrailingBytes { frame_len: f, trailing: 2 } if f == frame_len),
        "{err}"
    );
}

#[test]
fn a_truncated_frame_is_refused() {
    let bytes = encode(&hello("cluster-a")).unwrap();
    let err = decode_agent_frame(&bytes[..bytes.len() - 1], &Limits::default()).unwrap_err();
    assert!(matches!(err, DecodeError::Truncated { .. }), "{err}");
    let err = decode_agent_frame(&[], &Limits::default()).unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::Truncated {
                offset: 0,
                needed: 1,
                remaining: 0
            }
        ),
        "{err}"
    );
}

#[test]
fn the_reserved_marker_is_refused() {
    let mut bytes = msgpack(&json!({"Bye": {"reason": null}}));
    let offset = bytes.len() - 1;
    bytes[offset] = 0xc1;
    let err = decode_agent_frame(&bytes, &Limits::default()).unwrap_err();
    assert!(
        matches!(err, DecodeError::InvalidMarker { offset: o } if o == offset),
        "{err}"
    );
}

#[test]
fn well_formed_msgpack_that_is_not_a_frame_is_malformed() {
    let limits = Limits::default();
    for value in [
        json!({"Nope": {}}),
        json!({"Hello": {"cluster": "a"}}),
        json!({"Ack": {"seq": "seven"}}),
        json!([1, 2, 3]),
        json!("Hello"),
    ] {
        let err = decode_agent_frame(&msgpack(&value), &limits).unwrap_err();
        assert!(matches!(err, DecodeError::Malformed(_)), "{value}: {err}");
        assert_eq!(err.kind(), "malformed");
    }
    // A hub frame is not an agent frame, and the other way round.
    let ack = encode(&HubFrame::Ack(Ack::new(1))).unwrap();
    assert!(matches!(
        decode_agent_frame(&ack, &limits),
        Err(DecodeError::Malformed(_))
    ));
    let hello = encode(&hello("cluster-a")).unwrap();
    assert!(matches!(
        decode_hub_frame(&hello, &limits),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn empty_names_are_invalid() {
    let limits = Limits::default();
    let err = decode_agent_frame(&encode(&hello("")).unwrap(), &limits).unwrap_err();
    assert!(
        matches!(&err, DecodeError::Invalid { field, .. } if field == "Hello.cluster"),
        "{err}"
    );

    let chunk = encode(&AgentFrame::SnapshotChunk(SnapshotChunk {
        deltas: vec![delta(1, "web", "{}"), delta(2, "", "{}")],
    }))
    .unwrap();
    let err = decode_agent_frame(&chunk, &limits).unwrap_err();
    assert!(
        matches!(&err, DecodeError::Invalid { field, .. } if field == "SnapshotChunk.deltas[1].object.name"),
        "{err}"
    );
    assert_eq!(err.kind(), "invalid");
}

#[test]
fn a_welcome_that_would_stall_the_agent_is_invalid() {
    let welcome = |heartbeat_interval_ms, max_deltas_per_batch| {
        encode(&HubFrame::Welcome(Welcome {
            protocol_version: PROTOCOL_VERSION,
            hub_epoch: 1,
            mode: SessionMode::Snapshot,
            heartbeat_interval_ms,
            limits: Limits {
                max_deltas_per_batch,
                ..Limits::default()
            },
            sync_target: None,
            shards: None,
        }))
        .unwrap()
    };
    let limits = Limits::default();
    assert!(decode_hub_frame(&welcome(10_000, 1), &limits).is_ok());
    let err = decode_hub_frame(&welcome(0, 1), &limits).unwrap_err();
    assert!(
        matches!(&err, DecodeError::Invalid { field, .. } if field == "Welcome.heartbeat_interval_ms"),
        "{err}"
    );
    let err = decode_hub_frame(&welcome(10_000, 0), &limits).unwrap_err();
    assert!(
        matches!(&err, DecodeError::Invalid { field, .. } if field == "Welcome.limits.max_deltas_per_batch"),
        "{err}"
    );
}

#[test]
fn errors_map_to_labels_error_codes_and_close_codes() {
    let field = || "f".to_owned();
    let malformed = rmp_serde::from_slice::<Ack>(&[0xc0]).unwrap_err();
    let cases = [
        (
            DecodeError::FrameTooLarge { len: 2, max: 1 },
            "frame_too_large",
            ErrorCode::LimitExceeded,
            close::POLICY_VIOLATION,
        ),
        (
            DecodeError::TooManyDeltas { len: 2, max: 1 },
            "too_many_deltas",
            ErrorCode::LimitExceeded,
            close::POLICY_VIOLATION,
        ),
        (
            DecodeError::StringTooLong {
                field: field(),
                len: 2,
                max: 1,
            },
            "string_too_long",
            ErrorCode::LimitExceeded,
            close::POLICY_VIOLATION,
        ),
        (
            DecodeError::StatusTooLarge {
                field: field(),
                len: 2,
                max: 1,
            },
            "status_too_large",
            ErrorCode::LimitExceeded,
            close::POLICY_VIOLATION,
        ),
        (
            DecodeError::NestingTooDeep {
                field: field(),
                max: 1,
            },
            "too_deep",
            ErrorCode::Malformed,
            close::PROTOCOL_ERROR,
        ),
        (
            DecodeError::TrailingBytes {
                frame_len: 1,
                trailing: 1,
            },
            "trailing_bytes",
            ErrorCode::Malformed,
            close::PROTOCOL_ERROR,
        ),
        (
            DecodeError::Truncated {
                offset: 0,
                needed: 1,
                remaining: 0,
            },
            "malformed",
            ErrorCode::Malformed,
            close::PROTOCOL_ERROR,
        ),
        (
            DecodeError::InvalidMarker { offset: 0 },
            "malformed",
            ErrorCode::Malformed,
            close::PROTOCOL_ERROR,
        ),
        (
            DecodeError::Malformed(malformed),
            "malformed",
            ErrorCode::Malformed,
            close::PROTOCOL_ERROR,
        ),
        (
            DecodeError::Invalid {
                field: field(),
                reason: "r",
            },
            "invalid",
            ErrorCode::Malformed,
            close::PROTOCOL_ERROR,
        ),
    ];
    for (err, kind, code, close_code) in cases {
        assert_eq!(err.kind(), kind, "{err}");
        assert_eq!(err.error_code(), code, "{err}");
        assert_eq!(err.close_code(), close_code, "{err}");
    }
    assert_eq!(ErrorCode::IdentityMismatch.close_code(), 1008);
    assert_eq!(ErrorCode::Superseded.close_code(), 1008);
    assert_eq!(ErrorCode::UnsupportedVersion.close_code(), 1002);
    assert_eq!(ErrorCode::UnexpectedFrame.close_code(), 1002);
    assert_eq!(ErrorCode::Internal.close_code(), 1011);
    assert_eq!(close::GOING_AWAY, 1001);
}

#[test]
fn shards_a_replica_cannot_hold_are_invalid() {
    let limits = Limits::default();
    let claim = |shard, term| ShardClaim {
        shard: ShardId(shard),
        term,
    };
    let shards = |count, held: Vec<ShardClaim>, snapshot: Vec<u16>| {
        encode(&HubFrame::Shards(ShardsHeld {
            count,
            held,
            snapshot: snapshot.into_iter().map(ShardId).collect(),
            heartbeat_interval_ms: None,
        }))
        .unwrap()
    };
    let field_of = |bytes: &[u8]| match decode_hub_frame(bytes, &limits) {
        Err(DecodeError::Invalid { field, .. }) => field,
        other => format!("not invalid: {other:?}"),
    };
    assert!(
        decode_hub_frame(
            &shards(16, vec![claim(1, 4), claim(9, 0)], vec![9]),
            &limits
        )
        .is_ok()
    );
    assert!(decode_hub_frame(&shards(16, Vec::new(), Vec::new()), &limits).is_ok());
    assert_eq!(field_of(&shards(0, Vec::new(), Vec::new())), "Shards.count");
    assert_eq!(
        field_of(&shards(1025, Vec::new(), Vec::new())),
        "Shards.count"
    );
    assert_eq!(
        field_of(&shards(16, vec![claim(16, 1)], Vec::new())),
        "Shards.held"
    );
    assert_eq!(
        field_of(&shards(16, vec![claim(3, 1), claim(2, 1)], Vec::new())),
        "Shards.held"
    );
    assert_eq!(
        field_of(&shards(16, vec![claim(3, 1), claim(3, 2)], Vec::new())),
        "Shards.held"
    );
    assert_eq!(
        field_of(&shards(16, vec![claim(3, 1)], vec![4])),
        "Shards.snapshot"
    );
    assert_eq!(
        field_of(&shards(16, vec![claim(3, 1), claim(4, 1)], vec![4, 3])),
        "Shards.snapshot"
    );
}

#[test]
fn a_heartbeat_interval_of_zero_or_above_an_hour_is_invalid() {
    let limits = Limits::default();
    let held = |interval| ShardsHeld {
        count: 4,
        held: vec![ShardClaim {
            shard: ShardId(1),
            term: 2,
        }],
        snapshot: Vec::new(),
        heartbeat_interval_ms: interval,
    };
    let welcome = |interval| {
        HubFrame::Welcome(Welcome {
            protocol_version: 4,
            hub_epoch: 1,
            mode: SessionMode::Snapshot,
            heartbeat_interval_ms: 10_000,
            limits: Limits::default(),
            sync_target: None,
            shards: Some(held(interval)),
        })
    };
    for interval in [None, Some(1), Some(60_000), Some(MAX_HEARTBEAT_INTERVAL_MS)] {
        for frame in [HubFrame::Shards(held(interval)), welcome(interval)] {
            assert_eq!(
                decode_hub_frame(&encode(&frame).unwrap(), &limits).unwrap(),
                frame
            );
        }
    }
    for interval in [0, MAX_HEARTBEAT_INTERVAL_MS + 1, u64::MAX] {
        for (frame, name) in [
            (
                HubFrame::Shards(held(Some(interval))),
                "Shards.heartbeat_interval_ms",
            ),
            (
                welcome(Some(interval)),
                "Welcome.shards.heartbeat_interval_ms",
            ),
        ] {
            let err = decode_hub_frame(&encode(&frame).unwrap(), &limits).unwrap_err();
            assert!(
                matches!(&err, DecodeError::Invalid { field, .. } if field == name),
                "{interval}: {err}"
            );
            assert_eq!(err.error_code(), ErrorCode::Malformed);
        }
    }
}

#[test]
fn a_snapshot_of_no_shard_or_of_shards_out_of_order_is_invalid() {
    let limits = Limits::default();
    let begin = |shards: Option<Vec<u16>>| {
        encode(&AgentFrame::SnapshotBegin(SnapshotBegin {
            objects: 1,
            shards: shards.map(|s| s.into_iter().map(ShardId).collect()),
        }))
        .unwrap()
    };
    assert!(decode_agent_frame(&begin(None), &limits).is_ok());
    assert!(decode_agent_frame(&begin(Some(vec![0, 5, 1023])), &limits).is_ok());
    for shards in [vec![], vec![5, 1], vec![1024]] {
        let err = decode_agent_frame(&begin(Some(shards.clone())), &limits).unwrap_err();
        assert!(
            matches!(&err, DecodeError::Invalid { field, .. } if field == "SnapshotBegin.shards"),
            "{shards:?}: {err}"
        );
    }
}
