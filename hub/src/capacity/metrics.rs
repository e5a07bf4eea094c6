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
//! `pods`, or an extended resource's name (units).

use prometheus::{GaugeVec, Opts, Registry};
use uplink_protocol::{ExtendedAmounts, ResourceAmounts};

use super::fleet::FleetTotals;
use super::record::{CapacityRecord, ClusterHealth, Rates};

/// The capacity gauges; see the module documentation.
#[derive(Debug, Clone)]
pub struct CapacityMetrics {
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
        for r in records {
            let name = r.cluster.as_str();
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
                    for (resource, e) in &r.extended {
                        g.with_label_values(&[name, resource.as_str()])
                            .set(extended(e) as f64);
                    }
                };
            set(&self.cluster_capacity, &r.capacity, &|e| e.capacity);
            set(&self.cluster_allocatable, &r.allocatable, &|e| {
                e.allocatable
            });
            set(&self.cluster_allocated, &r.allocated, &|e| e.requests);
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
        let set =
            |g: &GaugeVec, a: &ResourceAmounts, extended: &dyn Fn(&ExtendedAmounts) -> u64| {
                for (resource, value) in standard(a) {
                    g.with_label_values(&[resource]).set(value);
                }
                for (resource, e) in &fleet.extended {
                    g.with_label_values(&[resource.as_str()])
                        .set(extended(e) as f64);
                }
            };
        set(&self.fleet_capacity, &fleet.capacity, &|e| e.capacity);
        set(&self.fleet_allocatable, &fleet.allocatable, &|e| {
            e.allocatable
        });
        set(&self.fleet_allocated, &fleet.allocated, &|e| e.requests);
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
}
