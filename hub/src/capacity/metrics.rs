//! Capacity metrics, registered in the hub's own registry:
//!
//! - `uplink_cluster_capacity{cluster,resource}`, `uplink_cluster_allocatable`,
//!   `uplink_cluster_allocated`, `uplink_cluster_usage` (absent while usage
//!   is unknown);
//! - `uplink_cluster_health{cluster,state}`: 1 for the cluster's health
//!   (`Healthy`, `Degraded`, `Unhealthy`, `Unknown`), 0 for the others;
//! - `uplink_fleet_capacity{resource}`, `uplink_fleet_allocatable`,
//!   `uplink_fleet_allocated`, `uplink_fleet_usage`,
//!   `uplink_fleet_allocation_ratio`, `uplink_fleet_utilization_ratio`.
//!
//! `resource` is `cpu` (in cores), `memory` and `ephemeral_storage` (bytes),
//! `pods`, or an extended resource's name (units). Extended-resource names
//! come from agents: at most [`MAX_EXTENDED_LABELS`] per cluster and for the
//! fleet become label values (the first by name; the API reports them all),
//! a name a cluster stops reporting loses its series, and a forgotten
//! cluster loses all of its ([`CapacityMetrics::forget`]).
//!
//! A cluster's gauges are set again only when what they show changed: with
//! thousands of idle clusters, republishing every series every few seconds
//! was most of what the capacity task cost.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use prometheus::{GaugeVec, Opts, Registry};
use uplink_protocol::{ExtendedAmounts, ResourceAmounts};

use super::fleet::FleetTotals;
use super::record::{CapacityRecord, ClusterHealth, Rates};

/// Most extended resources of one cluster (and of the fleet) exported as
/// label values.
pub const MAX_EXTENDED_LABELS: usize = 32;

/// The capacity gauges; see the module documentation.
#[derive(Debug, Clone)]
pub struct CapacityMetrics {
    /// Extended-resource label values published, per cluster (`None`: the
    /// fleet's).
    extended: Arc<Mutex<HashMap<Option<String>, BTreeSet<String>>>>,
    /// What each cluster's gauges show now.
    shown: Arc<Mutex<HashMap<String, Shown>>>,
    cluster_capacity: GaugeVec,
    cluster_allocatable: GaugeVec,
    cluster_allocated: GaugeVec,
    cluster_usage: GaugeVec,
    cluster_health: GaugeVec,
    fleet_capacity: GaugeVec,
    fleet_allocatable: GaugeVec,
    fleet_allocated: GaugeVec,
    fleet_usage: GaugeVec,
    fleet_allocation: GaugeVec,
    fleet_utilization: GaugeVec,
}

fn gauge(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<GaugeVec, prometheus::Error> {
    let g = GaugeVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

/// The part of a [`CapacityRecord`] its gauges show.
#[derive(Debug, PartialEq)]
struct Shown {
    health: ClusterHealth,
    capacity: ResourceAmounts,
    allocatable: ResourceAmounts,
    allocated: ResourceAmounts,
    used: Option<ResourceAmounts>,
    extended: BTreeMap<String, ExtendedAmounts>,
}

impl Shown {
    fn of(r: &CapacityRecord) -> Self {
        Self {
            health: r.health,
            capacity: r.capacity,
            allocatable: r.allocatable,
            allocated: r.allocated,
            used: r.used,
            extended: r.extended.clone(),
        }
    }

    fn shows(&self, r: &CapacityRecord) -> bool {
        self.health == r.health
            && self.capacity == r.capacity
            && self.allocatable == r.allocatable
            && self.allocated == r.allocated
            && self.used == r.used
            && self.extended == r.extended
    }
}

/// `(resource label, value)` of the standard resources, CPU in cores.
fn standard(a: &ResourceAmounts) -> [(&'static str, f64); 4] {
    [
        ("cpu", a.cpu_millis as f64 / 1000.0),
        ("memory", a.memory_bytes as f64),
        ("ephemeral_storage", a.ephemeral_storage_bytes as f64),
        ("pods", a.pods as f64),
    ]
}

impl CapacityMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let c = ["cluster", "resource"];
        let f = ["resource"];
        Ok(Self {
            extended: Arc::default(),
            shown: Arc::default(),
            cluster_capacity: gauge(
                registry,
                "uplink_cluster_capacity",
                "Sum of the cluster's node capacity, by resource (cpu in cores, memory and storage in bytes).",
                &c,
            )?,
            cluster_allocatable: gauge(
                registry,
                "uplink_cluster_allocatable",
                "Sum of the cluster's node allocatable, by resource.",
                &c,
            )?,
            cluster_allocated: gauge(
                registry,
                "uplink_cluster_allocated",
                "Requests of the cluster's scheduled, non-terminated pods, by resource.",
                &c,
            )?,
            cluster_usage: gauge(
                registry,
                "uplink_cluster_usage",
                "The cluster's node usage from metrics.k8s.io (absent when unknown).",
                &c,
            )?,
            cluster_health: gauge(
                registry,
                "uplink_cluster_health",
                "1 for the cluster's health (Healthy, Degraded, Unhealthy, Unknown), 0 for the others.",
                &["cluster", "state"],
            )?,
            fleet_capacity: gauge(
                registry,
                "uplink_fleet_capacity",
                "Capacity across the clusters counted in fleet totals.",
                &f,
            )?,
            fleet_allocatable: gauge(
                registry,
                "uplink_fleet_allocatable",
                "Allocatable across the clusters counted in fleet totals.",
                &f,
            )?,
            fleet_allocated: gauge(
                registry,
                "uplink_fleet_allocated",
                "Requests across the clusters counted in fleet totals.",
                &f,
            )?,
            fleet_usage: gauge(
                registry,
                "uplink_fleet_usage",
                "Usage across the clusters that report it.",
                &f,
            )?,
            fleet_allocation: gauge(
                registry,
                "uplink_fleet_allocation_ratio",
                "Fleet allocated / allocatable.",
                &f,
            )?,
            fleet_utilization: gauge(
                registry,
                "uplink_fleet_utilization_ratio",
                "Fleet usage / allocatable of the clusters reporting usage.",
                &f,
            )?,
        })
    }

    /// Publishes `records` and `fleet`; clusters no longer known are removed
    /// by [`CapacityMetrics::forget`].
    pub fn publish(&self, records: &[CapacityRecord], fleet: &FleetTotals) {
        let mut shown = self.shown.lock().unwrap_or_else(PoisonError::into_inner);
        for r in records {
            let name = r.cluster.as_str();
            match shown.get_mut(name) {
                Some(s) if s.shows(r) => continue,
                Some(s) => *s = Shown::of(r),
                None => {
                    shown.insert(name.to_owned(), Shown::of(r));
                }
            }
            for health in ClusterHealth::ALL {
                self.cluster_health
                    .with_label_values(&[name, health.name()])
                    .set(if health == r.health { 1.0 } else { 0.0 });
            }
            let set =
                |g: &GaugeVec, a: &ResourceAmounts, extended: &dyn Fn(&ExtendedAmounts) -> u64| {
                    for (resource, value) in standard(a) {
                        g.with_label_values(&[name, resource]).set(value);
                    }
                    for (resource, e) in r.extended.iter().take(MAX_EXTENDED_LABELS) {
                        g.with_label_values(&[name, resource.as_str()])
                            .set(extended(e) as f64);
                    }
                };
            set(&self.cluster_capacity, &r.capacity, &|e| e.capacity);
            set(&self.cluster_allocatable, &r.allocatable, &|e| {
                e.allocatable
            });
            set(&self.cluster_allocated, &r.allocated, &|e| e.requests);
            for gone in self.published(Some(name), r.extended.keys()) {
                for g in [
                    &self.cluster_capacity,
                    &self.cluster_allocatable,
                    &self.cluster_allocated,
                ] {
                    let _ = g.remove_label_values(&[name, gone.as_str()]);
                }
            }
            match &r.used {
                Some(used) => {
                    for (resource, value) in standard(used).into_iter().take(2) {
                        self.cluster_usage
                            .with_label_values(&[name, resource])
                            .set(value);
                    }
                }
                None => {
                    for (resource, _) in standard(&ResourceAmounts::default()).into_iter().take(2) {
                        let _ = self.cluster_usage.remove_label_values(&[name, resource]);
                    }
                }
            }
        }
        drop(shown);
        let set =
            |g: &GaugeVec, a: &ResourceAmounts, extended: &dyn Fn(&ExtendedAmounts) -> u64| {
                for (resource, value) in standard(a) {
                    g.with_label_values(&[resource]).set(value);
                }
                for (resource, e) in fleet.extended.iter().take(MAX_EXTENDED_LABELS) {
                    g.with_label_values(&[resource.as_str()])
                        .set(extended(e) as f64);
                }
            };
        set(&self.fleet_capacity, &fleet.capacity, &|e| e.capacity);
        set(&self.fleet_allocatable, &fleet.allocatable, &|e| {
            e.allocatable
        });
        set(&self.fleet_allocated, &fleet.allocated, &|e| e.requests);
        for gone in self.published(None, fleet.extended.keys()) {
            for g in [
                &self.fleet_capacity,
                &self.fleet_allocatable,
                &self.fleet_allocated,
            ] {
                let _ = g.remove_label_values(&[gone.as_str()]);
            }
        }
        if let Some(used) = &fleet.used {
            for (resource, value) in standard(used).into_iter().take(2) {
                self.fleet_usage.with_label_values(&[resource]).set(value);
            }
        }
        let rates = |g: &GaugeVec, r: &Rates| {
            for (resource, value) in [
                ("cpu", r.cpu),
                ("memory", r.memory),
                ("ephemeral_storage", r.ephemeral_storage),
                ("pods", r.pods),
            ] {
                match value {
                    Some(v) => g.with_label_values(&[resource]).set(v),
                    None => {
                        let _ = g.remove_label_values(&[resource]);
                    }
                }
            }
        };
        rates(&self.fleet_allocation, &fleet.allocation);
        rates(&self.fleet_utilization, &fleet.utilization);
    }

    /// Records the extended-resource names now published for `cluster`
    /// (`None`: the fleet), the first [`MAX_EXTENDED_LABELS`] of `names`;
    /// returns those published before and not any more.
    fn published<'a>(
        &self,
        cluster: Option<&str>,
        names: impl Iterator<Item = &'a String>,
    ) -> Vec<String> {
        let now: BTreeSet<String> = names.take(MAX_EXTENDED_LABELS).cloned().collect();
        let mut extended = self.extended.lock().unwrap_or_else(PoisonError::into_inner);
        let before = extended.insert(cluster.map(str::to_owned), now.clone());
        before
            .unwrap_or_default()
            .difference(&now)
            .cloned()
            .collect()
    }

    /// Removes every series of `cluster` (the hub forgot it).
    pub fn forget(&self, cluster: &str) {
        use crate::labels::remove_cluster;
        for g in [
            &self.cluster_capacity,
            &self.cluster_allocatable,
            &self.cluster_allocated,
            &self.cluster_usage,
            &self.cluster_health,
        ] {
            remove_cluster(g, cluster);
        }
        self.extended
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&Some(cluster.to_owned()));
        self.shown
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(cluster);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::core::Collector;
    use uplink_protocol::ExtendedAmounts;

    fn series(g: &GaugeVec, cluster: &str) -> Vec<String> {
        let mut resources: Vec<String> = g
            .collect()
            .iter()
            .flat_map(|f| f.get_metric().iter())
            .filter(|m| m.get_label().iter().any(|l| l.value() == cluster))
            .filter_map(|m| {
                m.get_label()
                    .iter()
                    .find(|l| l.name() == "resource")
                    .map(|l| l.value().to_owned())
            })
            .collect();
        resources.sort();
        resources
    }

    fn health_of(metrics: &CapacityMetrics, cluster: &str) -> Vec<String> {
        metrics
            .cluster_health
            .collect()
            .iter()
            .flat_map(|f| f.get_metric().iter())
            .filter(|m| m.get_gauge().get_value() == 1.0)
            .filter(|m| m.get_label().iter().any(|l| l.value() == cluster))
            .filter_map(|m| {
                m.get_label()
                    .iter()
                    .find(|l| l.name() == "state")
                    .map(|l| l.value().to_owned())
            })
            .collect()
    }

    #[test]
    fn only_what_changed_is_published_again_and_a_forgotten_cluster_comes_back()
    -> prometheus::Result<()> {
        let registry = Registry::new();
        let metrics = CapacityMetrics::register(&registry)?;
        let link = crate::health::ClusterRecord::default();
        let mut record = CapacityRecord::new("c1", &link, crate::health::ClusterState::Ready);
        record.health = ClusterHealth::Healthy;
        record.allocatable.cpu_millis = 4_000;
        let allocatable_cpu = |m: &CapacityMetrics| {
            m.cluster_allocatable
                .with_label_values(&["c1", "cpu"])
                .get()
        };
        metrics.publish(std::slice::from_ref(&record), &FleetTotals::default());
        assert_eq!(health_of(&metrics, "c1"), ["Healthy"]);
        // Unchanged: left as it is.
        metrics.publish(std::slice::from_ref(&record), &FleetTotals::default());
        assert_eq!(health_of(&metrics, "c1"), ["Healthy"]);
        // A change of health or of an amount is shown at the next publish.
        record.health = ClusterHealth::Degraded;
        metrics.publish(std::slice::from_ref(&record), &FleetTotals::default());
        assert_eq!(health_of(&metrics, "c1"), ["Degraded"]);
        record.allocatable.cpu_millis = 8_000;
        metrics.publish(std::slice::from_ref(&record), &FleetTotals::default());
        assert_eq!(allocatable_cpu(&metrics), 8.0);
        // Forgotten, then back with the same record: published again.
        metrics.forget("c1");
        assert!(health_of(&metrics, "c1").is_empty());
        metrics.publish(std::slice::from_ref(&record), &FleetTotals::default());
        assert_eq!(health_of(&metrics, "c1"), ["Degraded"]);
        assert_eq!(allocatable_cpu(&metrics), 8.0);
        Ok(())
    }

    #[test]
    fn extended_labels_are_bounded_pruned_and_forgotten() -> prometheus::Result<()> {
        let registry = Registry::new();
        let metrics = CapacityMetrics::register(&registry)?;
        let summary = uplink_protocol::ClusterSummary {
            extended: (0..100)
                .map(|i| (format!("example.com/r{i:03}"), ExtendedAmounts::default()))
                .collect(),
            ..Default::default()
        };
        let link = crate::health::ClusterRecord {
            summary: Some(summary),
            ..Default::default()
        };
        let mut record = CapacityRecord::new("c1", &link, crate::health::ClusterState::Ready);
        metrics.publish(std::slice::from_ref(&record), &FleetTotals::default());
        let published = series(&metrics.cluster_capacity, "c1");
        assert_eq!(published.len(), 4 + MAX_EXTENDED_LABELS);
        // A name no longer reported loses its series.
        record.extended = [("example.com/r000".to_owned(), ExtendedAmounts::default())].into();
        metrics.publish(std::slice::from_ref(&record), &FleetTotals::default());
        assert_eq!(series(&metrics.cluster_capacity, "c1").len(), 5);
        metrics.forget("c1");
        assert!(series(&metrics.cluster_capacity, "c1").is_empty());
        assert!(series(&metrics.cluster_health, "c1").is_empty());
        Ok(())
    }
}
