//! kcp's name for a SyncTarget in labels and finalizers: the SyncTarget key,
//! and the placement label built from it.
//!
//! kcp's `ToSyncTargetKey(clusterName, syncTargetName)` hashes the
//! SyncTarget's workspace path joined with its name (`root:org:ws` and
//! `us-west1` give `root:org:ws:us-west1`; an empty workspace gives the name
//! alone, as `logicalcluster.Path.Join` does) with SHA-224 and writes the
//! 224-bit digest, read as one big-endian unsigned number, in base 62 with
//! Go's `big.Int.Text(62)` digits (`0-9`, `a-z`, `A-Z`, no leading zeros).
//! The result is at most 38 characters, a valid label name part.

use sha2::{Digest, Sha224};

/// The prefix of kcp's placement label; the full key is
/// `state.workload.kcp.io/<syncTargetKey>`.
pub const STATE_LABEL_PREFIX: &str = "state.workload.kcp.io/";

/// The prefix of the annotation with which kcp takes an object off one
/// SyncTarget (`deletion.internal.workload.kcp.io/<syncTargetKey>`, a
/// timestamp): the placement label stays until the syncer has deleted the
/// downstream copy and removed its finalizer, the label and the annotation
/// (kcp's `EnsureUpstreamFinalizerRemoved`), so the removal survives a
/// syncer that was down meanwhile.
pub const DELETION_ANNOTATION_PREFIX: &str = "deletion.internal.workload.kcp.io/";

/// The placement label's value for an object KCP placed on the cluster
/// (spec flows down, status up).
pub const STATE_SYNC: &str = "Sync";

/// The annotation kcp puts on every object with the logical cluster
/// (workspace) it lives in; wildcard lists and watches need it to tell
/// workspaces apart.
pub const CLUSTER_ANNOTATION: &str = "kcp.io/cluster";

/// Go's `big.Int.Text` digits, of which base 62 uses all.
const DIGITS: &[u8; 62] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";

/// kcp's `ToSyncTargetKey`: the key of SyncTarget `name` in `workspace`.
pub fn sync_target_key(workspace: &str, name: &str) -> String {
    let mut hasher = Sha224::new();
    if !workspace.is_empty() {
        hasher.update(workspace.as_bytes());
        hasher.update(b":");
    }
    hasher.update(name.as_bytes());
    base62(&hasher.finalize())
}

/// The label that marks an object placed on the SyncTarget with `key`.
pub fn state_label(key: &str) -> String {
    format!("{STATE_LABEL_PREFIX}{key}")
}

/// `bytes` read as one big-endian unsigned number, in base 62, by long
/// division (28 bytes: a few hundred steps, once per SyncTarget).
fn base62(bytes: &[u8]) -> String {
    let mut number: Vec<u8> = bytes.iter().copied().skip_while(|b| *b == 0).collect();
    let mut digits = Vec::new();
    while !number.is_empty() {
        let mut remainder = 0u32;
        let mut quotient = Vec::with_capacity(number.len());
        for byte in &number {
            let value = (remainder << 8) | u32::from(*byte);
            let q = value / 62;
            remainder = value % 62;
            if !(quotient.is_empty() && q == 0) {
                // q < 256: value < 62 * 256 since remainder < 62.
                quotient.push(u8::try_from(q).unwrap_or(u8::MAX));
            }
        }
        // remainder < 62 indexes DIGITS.
        digits.push(DIGITS[remainder as usize]);
        number = quotient;
    }
    if digits.is_empty() {
        digits.push(b'0');
    }
    digits.reverse();
    // Every byte comes from DIGITS, which is ASCII.
    String::from_utf8(digits).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys as kcp computes them. The first is in kcp's own syncer tests
    /// (`pkg/syncer/...`: SyncTarget `us-west1` in `root:org:ws` labels
    /// objects `state.workload.kcp.io/6ohB8yeXhwqTQVuBzJRgqcRJTpRjX7yTZu5g5g`);
    /// the others were worked out from kcp's algorithm (SHA-224 of
    /// `<path>:<name>`, `big.Int.Text(62)`) independently of this code.
    #[test]
    fn matches_kcp() {
        for (workspace, name, key) in [
            (
                "root:org:ws",
                "us-west1",
                "6ohB8yeXhwqTQVuBzJRgqcRJTpRjX7yTZu5g5g",
            ),
            ("root", "us-west1", "4PDIY5fHYyzNMVHhV3gZFv60V0eF3tjm3PUEj3"),
            ("root", "east-1", "yEIrJeA3lBV1iusfstlvanJwOHu2gz8OehWGy"),
            (
                "root:org:compute",
                "a",
                "ctw9ldivyUp5vge9TenEKWb9xOOySbwQXDA4GK",
            ),
            ("", "kind-cluster", "9Lw4rkmdYf5JJOnvq4H6IBnv1u1a2kBUdTnH4x"),
        ] {
            assert_eq!(sync_target_key(workspace, name), key, "{workspace}:{name}");
        }
    }

    #[test]
    fn base62_edges() {
        assert_eq!(base62(&[]), "0");
        assert_eq!(base62(&[0, 0]), "0");
        assert_eq!(base62(&[61]), "Z");
        assert_eq!(base62(&[62]), "10");
        assert_eq!(base62(&[1, 0]), "48"); // 256 = 4 * 62 + 8
        assert_eq!(base62(&[0xff; 4]), "4GFfc3"); // 4294967295
    }

    #[test]
    fn labels_are_valid_label_keys() {
        let label = state_label(&sync_target_key(
            "root:org:team-a",
            "cluster-with-a-long-name",
        ));
        let (prefix, name) = label.split_once('/').unwrap_or_default();
        assert_eq!(prefix, "state.workload.kcp.io");
        assert!(name.len() <= 63 && name.bytes().all(|b| b.is_ascii_alphanumeric()));
    }
}
