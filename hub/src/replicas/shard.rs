//! The names of the Leases that stand for shards and replicas. Which shard a
//! workspace is in is the protocol's ([`uplink_protocol::shard_of`]): agents
//! route by it too.

pub use uplink_protocol::{ShardId, shard_of};

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
