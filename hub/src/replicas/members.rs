//! Member Leases of replicas long gone. A replica's member Lease is named
//! after its identity, the pod name, which changes with every rollout of a
//! Deployment: without cleanup every pod that ever ran would leave one
//! behind. A Lease nobody renewed for [`GONE_AFTER_LEASES`] lease durations,
//! as this replica observed it, belongs to a replica that is gone; any live
//! replica deletes it, on the condition that it is still the version read
//! (a replica coming back after a long partition simply creates its member
//! Lease again). Shard Leases are never deleted: a deleted shard Lease is
//! free at once.

use std::collections::BTreeMap;

use tokio::time::Instant;

use super::lease::Observed;
use super::shard::parse_member_lease_name;

/// How many of its own lease durations a member Lease must stay unrenewed
/// before it counts as gone: far beyond any partition a replica could hold
/// shards through, so only the dead are cleaned up.
pub const GONE_AFTER_LEASES: u32 = 10;

/// At most this many deletions per round, so a namespace full of old
/// member Leases does not delay shard renewals.
pub const DELETIONS_PER_ROUND: usize = 4;

/// The member Leases (name, resourceVersion) of other replicas unchanged
/// for [`GONE_AFTER_LEASES`] of their lease durations, as seen by `now`;
/// at most [`DELETIONS_PER_ROUND`].
pub fn gone<'a>(
    observed: &'a BTreeMap<String, Observed>,
    prefix: &str,
    me: &str,
    now: Instant,
) -> Vec<(&'a str, String)> {
    observed
        .iter()
        .filter(|(name, _)| {
            parse_member_lease_name(prefix, name).is_some_and(|identity| identity != me)
        })
        .filter(|(_, seen)| {
            let duration = u64::try_from(seen.record.lease_duration_seconds).unwrap_or(0);
            let gone_after = std::time::Duration::from_secs(duration.max(1)) * GONE_AFTER_LEASES;
            now.duration_since(seen.observed_at) >= gone_after
        })
        .filter_map(|(name, seen)| {
            let version = seen.lease.metadata.resource_version.clone()?;
            Some((name.as_str(), version))
        })
        .take(DELETIONS_PER_ROUND)
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
    use kube::api::ObjectMeta;

    use super::*;

    fn lease(name: &str) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                resource_version: Some("7".to_owned()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(format!("{name}_uuid")),
                lease_duration_seconds: Some(15),
                ..LeaseSpec::default()
            }),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn only_other_replicas_member_leases_unrenewed_for_ten_lease_durations_are_gone() {
        let seen_at = Instant::now();
        let mut observed = BTreeMap::new();
        for name in [
            "uplink-hub-member-hub-old",
            "uplink-hub-member-hub-me",
            "uplink-hub-shard-03",
        ] {
            observed.insert(name.to_owned(), Observed::new(lease(name), seen_at));
        }
        tokio::time::advance(Duration::from_secs(149)).await;
        assert!(gone(&observed, "uplink-hub", "hub-me", Instant::now()).is_empty());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            gone(&observed, "uplink-hub", "hub-me", Instant::now()),
            vec![("uplink-hub-member-hub-old", "7".to_owned())],
            "not this replica's own, never a shard's"
        );
        // Renewed (its record changed) just now: alive again.
        let mut renewed = lease("uplink-hub-member-hub-old");
        if let Some(spec) = renewed.spec.as_mut() {
            spec.holder_identity = Some("uplink-hub-member-hub-old_new".to_owned());
        }
        if let Some(seen) = observed.get_mut("uplink-hub-member-hub-old") {
            seen.update(renewed, Instant::now());
        }
        assert!(gone(&observed, "uplink-hub", "hub-me", Instant::now()).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn deletions_per_round_are_bounded() {
        let seen_at = Instant::now();
        let observed: BTreeMap<String, Observed> = (0..10)
            .map(|i| {
                let name = format!("uplink-hub-member-hub-{i}");
                let seen = Observed::new(lease(&name), seen_at);
                (name, seen)
            })
            .collect();
        tokio::time::advance(Duration::from_secs(600)).await;
        assert_eq!(
            gone(&observed, "uplink-hub", "hub-me", Instant::now()).len(),
            DELETIONS_PER_ROUND
        );
    }
}
