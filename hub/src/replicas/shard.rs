//! Workspaces hashed into shards, and the names of the Leases that stand for
//! them.
//!
//! The hash is FNV-1a 64 over the workspace's bytes, written out here so it
//! never changes with a Rust release or a dependency: every replica, of any
//! version, must put a workspace in the same shard, or two replicas would
//! write one workspace. The unit tests pin values.

use std::fmt;

/// One shard: `0..shards`. Each is one Lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShardId(pub u16);

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}", self.0)
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a 64 of `bytes`: stable across processes, platforms and versions.
pub(crate) fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(FNV_PRIME)
    })
}

/// The shard of a workspace (its logical cluster name, e.g. `root:org:team`),
/// among `shards` (at least 1; 0 is read as 1).
pub fn shard_of(workspace: &str, shards: u16) -> ShardId {
    let shards = u64::from(shards.max(1));
    // The remainder is below `shards`, itself a u16.
    #[allow(clippy::cast_possible_truncation)]
    let shard = (fnv1a64(workspace.as_bytes()) % shards) as u16;
    ShardId(shard)
}

/// The Lease that stands for `shard`: `<prefix>-shard-<NN>` (two digits at
/// least, so they sort in `kubectl get leases` up to 100 shards).
pub fn shard_lease_name(prefix: &str, shard: ShardId) -> String {
    format!("{prefix}-shard-{shard}")
}

/// The shard a Lease name stands for, if it is one of `prefix`'s below `shards`.
pub fn parse_shard_lease_name(prefix: &str, shards: u16, name: &str) -> Option<ShardId> {
    let number = name.strip_prefix(prefix)?.strip_prefix("-shard-")?;
    if number.len() < 2 || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let shard: u16 = number.parse().ok()?;
    let id = ShardId(shard);
    (shard < shards && shard_lease_name(prefix, id) == name).then_some(id)
}

/// The member Lease of the replica `identity`: `<prefix>-member-<identity>`.
pub fn member_lease_name(prefix: &str, identity: &str) -> String {
    format!("{prefix}-member-{identity}")
}

/// The replica a member Lease name stands for, if it is one of `prefix`'s.
pub fn parse_member_lease_name<'a>(prefix: &str, name: &'a str) -> Option<&'a str> {
    name.strip_prefix(prefix)?
        .strip_prefix("-member-")
        .filter(|identity| !identity.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// These values are a contract between replicas of different versions:
    /// if this test fails, the hash changed and a rolling upgrade would give
    /// one workspace two writers. Do not update the numbers; restore the hash.
    #[test]
    fn the_hash_is_pinned() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"root"), 0xa354_fd1f_f0c4_67c5);
        assert_eq!(fnv1a64(b"root:demo:a"), 0x2025_6bc2_687b_55d7);
        assert_eq!(shard_of("root", 16), ShardId(5));
        assert_eq!(shard_of("root:demo:a", 16), ShardId(7));
        assert_eq!(shard_of("root:org:team-1", 16), ShardId(2));
        assert_eq!(shard_of("root:org:team-1", 1024), ShardId(146));
        assert_eq!(shard_of("root:demo:a", 1024), ShardId(471));
        assert_eq!(shard_of("anything", 1), ShardId(0));
        assert_eq!(shard_of("anything", 0), ShardId(0));
    }

    #[test]
    fn workspaces_spread_over_the_shards() {
        let mut counts = [0u32; 16];
        for i in 0..1600 {
            counts[usize::from(shard_of(&format!("root:org:ws-{i}"), 16).0)] += 1;
        }
        assert!(counts.iter().all(|c| (60..=140).contains(c)), "{counts:?}");
    }

    #[test]
    fn lease_names_round_trip() {
        assert_eq!(
            shard_lease_name("uplink-hub", ShardId(3)),
            "uplink-hub-shard-03"
        );
        assert_eq!(
            shard_lease_name("uplink-hub", ShardId(123)),
            "uplink-hub-shard-123"
        );
        assert_eq!(
            parse_shard_lease_name("uplink-hub", 16, "uplink-hub-shard-03"),
            Some(ShardId(3))
        );
        assert_eq!(
            parse_shard_lease_name("uplink-hub", 16, "uplink-hub-shard-3"),
            None
        );
        assert_eq!(
            parse_shard_lease_name("uplink-hub", 16, "uplink-hub-shard-16"),
            None
        );
        assert_eq!(
            parse_shard_lease_name("uplink-hub", 16, "uplink-hub-shard-003"),
            None
        );
        assert_eq!(
            parse_shard_lease_name("other", 16, "uplink-hub-shard-03"),
            None
        );
        assert_eq!(
            member_lease_name("uplink-hub", "hub-0"),
            "uplink-hub-member-hub-0"
        );
        assert_eq!(
            parse_member_lease_name("uplink-hub", "uplink-hub-member-hub-0"),
            Some("hub-0")
        );
        assert_eq!(
            parse_member_lease_name("uplink-hub", "uplink-hub-member-"),
            None
        );
    }
}
