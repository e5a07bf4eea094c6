//! No bytes make the decoder panic, and damaged frames are refused.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

mod common;

use proptest::collection::vec;
use proptest::prelude::*;
use uplink_protocol::*;

/// Small limits, so random input reaches the limit checks too.
fn tight() -> Limits {
    Limits {
        max_frame_bytes: 4096,
        max_deltas_per_batch: 2,
        max_string_bytes: 16,
        max_status_bytes: 64,
        max_objects_per_cluster: 10,
        max_manifest_bytes: 128,
        max_downward_in_flight: 4,
        max_events_per_batch: 2,
    }
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in vec(any::<u8>(), 0..2048)) {
        for limits in [Limits::default(), tight()] {
            let _ = decode_agent_frame(&bytes, &limits);
            let _ = decode_hub_frame(&bytes, &limits);
        }
    }

    #[test]
    fn damaged_agent_frames_never_panic(
        frame in common::agent_frame(),
        edits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut bytes = encode(&frame).unwrap();
        for (index, byte) in edits {
            let at = index.index(bytes.len());
            bytes[at] = byte;
        }
        for limits in [Limits::default(), tight()] {
            let _ = decode_agent_frame(&bytes, &limits);
        }
    }

    #[test]
    fn damaged_hub_frames_never_panic(
        frame in common::hub_frame(),
        edits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut bytes = encode(&frame).unwrap();
        for (index, byte) in edits {
            let at = index.index(bytes.len());
            bytes[at] = byte;
        }
        let _ = decode_hub_frame(&bytes, &Limits::default());
    }

    #[test]
    fn truncated_frames_are_refused(frame in common::agent_frame(), cut in any::<prop::sample::Index>()) {
        let bytes = encode(&frame).unwrap();
        let cut = cut.index(bytes.len());
        let err = decode_agent_frame(&bytes[..cut], &Limits::default()).unwrap_err();
        prop_assert!(matches!(err, DecodeError::Truncated { .. }), "{}", err);
    }

    #[test]
    fn extended_frames_are_refused(frame in common::hub_frame(), extra in vec(any::<u8>(), 1..16)) {
        let mut bytes = encode(&frame).unwrap();
        let frame_len = bytes.len();
        bytes.extend_from_slice(&extra);
        let err = decode_hub_frame(&bytes, &Limits::default()).unwrap_err();
        prop_assert!(
            matches!(err, DecodeError::TrailingBytes { frame_len: f, trailing } if f == frame_len && trailing == extra.len()),
            "{}", err
        );
    }
}
