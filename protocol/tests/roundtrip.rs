//! Every frame decodes to exactly what was encoded.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

mod common;

use proptest::prelude::*;
use uplink_protocol::*;

proptest! {
    #[test]
    fn agent_frames_round_trip(frame in common::agent_frame()) {
        let bytes = encode(&frame).unwrap();
        prop_assert_eq!(decode_agent_frame(&bytes, &Limits::default()).unwrap(), frame);
    }

    #[test]
    fn hub_frames_round_trip(frame in common::hub_frame()) {
        let bytes = encode(&frame).unwrap();
        prop_assert_eq!(decode_hub_frame(&bytes, &Limits::default()).unwrap(), frame);
    }
}

#[test]
fn extreme_numbers_and_kcp_names_round_trip() {
    let frame = AgentFrame::Deltas(DeltaBatch {
        deltas: vec![Delta {
            seq: u64::MAX,
            object: ObjectRef {
                group: String::new(),
                version: "v1".into(),
                resource: "pods".into(),
                kind: "Pod".into(),
                workspace: "root:org:team-a".into(),
                namespace: Some("ns-with-dashes:and:colons".into()),
                name: "web-0 ✓".into(),
                uid: "0b7c-…".into(),
            },
            generation: Some(i64::MIN),
            observed_generation: Some(i64::MAX),
            observed_at_ms: i64::MIN,
            change: Change::Upsert {
                status_json: "{}".into(),
            },
            object_json: None,
        }],
    });
    let bytes = encode(&frame).unwrap();
    assert_eq!(
        decode_agent_frame(&bytes, &Limits::default()).unwrap(),
        frame
    );
}

#[test]
fn version_negotiation_picks_the_highest_common_version() {
    assert_eq!(
        negotiate_version(&[PROTOCOL_VERSION]),
        Some(PROTOCOL_VERSION)
    );
    assert_eq!(
        negotiate_version(&[7, PROTOCOL_VERSION, 0]),
        Some(PROTOCOL_VERSION)
    );
    assert_eq!(negotiate_version(&[PROTOCOL_VERSION + 1]), None);
    assert_eq!(negotiate_version(&[]), None);
    assert!(SUPPORTED_VERSIONS.contains(&PROTOCOL_VERSION));
}

#[test]
fn error_frame_messages_are_cut_to_fit() {
    let frame = ErrorFrame::new(ErrorCode::Internal, "é".repeat(1000));
    assert!(frame.message.len() <= ErrorFrame::MAX_MESSAGE_BYTES);
    assert!(frame.message.chars().all(|c| c == 'é'));
    let bytes = encode(&HubFrame::Error(frame.clone())).unwrap();
    assert_eq!(
        decode_hub_frame(&bytes, &Limits::default()).unwrap(),
        HubFrame::Error(frame)
    );
}
