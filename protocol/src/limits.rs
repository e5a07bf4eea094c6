//! The limits a receiver enforces on every frame, so one misbehaving peer can
//! cost the receiver only a bounded amount of memory and work.

use serde::{Deserialize, Serialize};

/// Limits on frames, announced by the hub in `Welcome` and enforced by both
/// sides while decoding (each side with its own configured limits).
///
/// A field missing on the wire takes its value from [`Limits::default`], so
/// limits added later stay compatible.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// Largest encoded frame, in bytes.
    pub max_frame_bytes: u32,
    /// Most deltas in one `DeltaBatch` or `SnapshotChunk`.
    pub max_deltas_per_batch: u32,
    /// Longest string (names, workspace, uid, messages), in bytes.
    pub max_string_bytes: u32,
    /// Largest `status_json` of one delta, in bytes.
    pub max_status_bytes: u32,
    /// Most objects the hub keeps for one cluster.
    pub max_objects_per_cluster: u64,
    /// Largest `manifest_json` of one downward delta, in bytes (version 2).
    pub max_manifest_bytes: u32,
    /// Most downward deltas the hub has in flight (sent, not acknowledged),
    /// snapshot entries included (version 2): the agent can queue this many
    /// without ever having to stop reading the connection.
    pub max_downward_in_flight: u32,
    /// Most reports in one `Events` batch (version 3).
    pub max_events_per_batch: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_bytes: 4 * 1024 * 1024,
            max_deltas_per_batch: 1024,
            max_string_bytes: 1024,
            max_status_bytes: 256 * 1024,
            max_objects_per_cluster: 1_000_000,
            // kube-apiserver refuses request bodies over 3 MiB and etcd
            // values over 1.5 MiB; a placed object is at most that.
            max_manifest_bytes: 1536 * 1024,
            max_downward_in_flight: 2048,
            max_events_per_batch: 256,
        }
    }
}

/// Cuts `s` to at most `max_bytes` bytes, at a character boundary, so a
/// sender can fit free-form text (error messages, reasons) into
/// [`Limits::max_string_bytes`] instead of having the frame refused.
pub fn truncate_utf8(s: &mut String, max_bytes: usize) {
    if s.len() <= max_bytes {
        return;
    }
    let mut end = max_bytes;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_utf8_keeps_whole_characters() {
        let mut s = String::from("añb");
        truncate_utf8(&mut s, 2);
        assert_eq!(s, "a");
        let mut s = String::from("añb");
        truncate_utf8(&mut s, 3);
        assert_eq!(s, "añ");
        let mut s = String::from("short");
        truncate_utf8(&mut s, 100);
        assert_eq!(s, "short");
        truncate_utf8(&mut s, 0);
        assert_eq!(s, "");
    }
}
