//! Workspaces hashed into shards: the one function every replica of the hub
//! and every agent must agree on (version 4, [`crate::ShardsHeld`]).
//!
//! The hash is FNV-1a 64 over the workspace's bytes, written out here so it
//! never changes with a Rust release or a dependency: every replica and
//! agent, of any version, must put a workspace in the same shard, or two
//! replicas would write one workspace and an agent would send its deltas to
//! the wrong one. The unit tests pin values.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One shard: `0..count`. On a replicated hub each is one Lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ShardId(pub u16);

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}", self.0)
    }
}

/// The most shards workspaces may hash into: a replicated hub's `--shards`
/// is at most this, and a frame naming a shard at or above it is refused.
pub const MAX_SHARDS: u16 = 1024;

/// Why a list of shards in a frame is refused.
pub(crate) fn check_shard_list(shards: &[ShardId], count: u16) -> Result<(), &'static str> {
    if shards.iter().any(|shard| shard.0 >= count) {
        return Err("names a shard at or above the shard count");
    }
    if shards.windows(2).any(|pair| pair[0] >= pair[1]) {
        return Err("must be in strictly ascending order");
    }
    Ok(())
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a 64 of `bytes`: stable across processes, platforms and versions.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(FNV_PRIME)
    })
}

/// The shard of a workspace (its logical cluster name, e.g. `root:org:team`),
/// among `count` shards (at least 1; 0 is read as 1).
pub fn shard_of(workspace: &str, count: u16) -> ShardId {
    let count = u64::from(count.max(1));
    // The remainder is below `count`, itself a u16.
    #[allow(clippy::cast_possible_truncation)]
    let shard = (fnv1a64(workspace.as_bytes()) % count) as u16;
    ShardId(shard)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// These values are a contract between replicas and agents of different
    /// versions: if this test fails, the hash changed and a rolling upgrade
    /// would give one workspace two writers. Do not update the numbers;
    /// restore the hash.
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
    fn a_shard_travels_as_its_number() -> Result<(), rmp_serde::encode::Error> {
        let bytes = rmp_serde::to_vec_named(&ShardId(7))?;
        assert_eq!(bytes, rmp_serde::to_vec_named(&7u16)?);
        Ok(())
    }
}
