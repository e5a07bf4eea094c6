//! What a replica publishes about its shards.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// The replicas' metrics.
#[derive(Debug, Clone)]
pub struct ReplicaMetrics {
    /// Shards this replica holds.
    pub shards_held: IntGauge,
    /// Shards acquired, lost (not renewed in time, or taken) and released.
    pub transitions: IntCounterVec,
    /// Member Leases of replicas long gone, deleted by this one.
    pub members_deleted: IntCounter,
}

impl ReplicaMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let shards_held = IntGauge::new("uplink_hub_shards_held", "Shards this replica holds.")?;
        let transitions = IntCounterVec::new(
            Opts::new(
                "uplink_hub_shard_transitions_total",
                "Shards this replica acquired, lost (not renewed in time or taken) and released.",
            ),
            &["change"],
        )?;
        let members_deleted = IntCounter::new(
            "uplink_hub_member_leases_deleted_total",
            "Member Leases of replicas gone for ten lease durations, deleted by this replica.",
        )?;
        registry.register(Box::new(shards_held.clone()))?;
        registry.register(Box::new(transitions.clone()))?;
        registry.register(Box::new(members_deleted.clone()))?;
        Ok(Self {
            shards_held,
            transitions,
            members_deleted,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_register_once() -> Result<(), prometheus::Error> {
        let registry = Registry::new();
        let metrics = ReplicaMetrics::register(&registry)?;
        metrics.transitions.with_label_values(&["acquired"]).inc();
        metrics.shards_held.set(3);
        let names: Vec<String> = registry
            .gather()
            .iter()
            .map(|f| f.name().to_owned())
            .collect();
        assert!(names.contains(&"uplink_hub_shards_held".to_owned()));
        assert!(names.contains(&"uplink_hub_shard_transitions_total".to_owned()));
        assert!(ReplicaMetrics::register(&registry).is_err());
        Ok(())
    }
}
