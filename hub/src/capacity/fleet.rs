//! The fleet's totals across clusters, requests per KCP workspace, and the
//! clusters with the highest allocation or utilization.
//!
//! Totals add up the records that count ([`CapacityRecord::counts_in_totals`]:
//! not `Unknown`, so an Offline cluster's last report is left out). Usage is
//! summed over the clusters that report it, and the fleet's utilization
//! divides by the allocatable of those same clusters, so a cluster without
//! `metrics.k8s.io` neither counts as idle nor dilutes the rate.
//!
//! Every sum saturates at `u64::MAX` instead of wrapping; the records come
//! from summaries within [`super::validate`]'s bounds, so it takes
//! thousands of clusters at those bounds to get there.

use std::collections::BTreeMap;

use serde::Serialize;
use uplink_protocol::{ExtendedAmounts, ResourceAmounts};

use super::record::{CapacityRecord, ClusterHealth, Rates, add, saturating_sub};

/// Totals across the clusters that count.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FleetTotals {
    /// Clusters counted in the totals.
    pub clusters: usize,
    /// Clusters by health, all of them.
    pub health: BTreeMap<&'static str, usize>,
    pub nodes_total: u64,
    pub nodes_ready: u64,
    pub nodes_cordoned: u64,
    pub capacity: ResourceAmounts,
    pub allocatable: ResourceAmounts,
    pub schedulable: ResourceAmounts,
    pub allocated: ResourceAmounts,
    /// Sum over the clusters that report usage; `None` when none does.
    pub used: Option<ResourceAmounts>,
    /// How many clusters report usage.
    pub used_clusters: usize,
    pub available: ResourceAmounts,
    pub allocation: Rates,
    pub utilization: Rates,
    pub extended: BTreeMap<String, ExtendedAmounts>,
}

/// One workspace's requests across the fleet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct WorkspaceTotals {
    pub requests: ResourceAmounts,
    /// The same, by cluster.
    pub clusters: BTreeMap<String, ResourceAmounts>,
}

/// What the clusters are ranked by in a top N.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Ranking {
    /// The larger of CPU and memory allocation.
    Allocation,
    /// The larger of CPU and memory utilization.
    Utilization,
}

impl Ranking {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "allocation" => Some(Ranking::Allocation),
            "utilization" => Some(Ranking::Utilization),
            _ => None,
        }
    }
}

/// One entry of a top N.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ranked {
    pub cluster: String,
    /// The ranking value (a ratio).
    pub value: f64,
}

/// Totals over `records` (see the module documentation).
pub fn totals(records: &[CapacityRecord]) -> FleetTotals {
    let mut t = FleetTotals::default();
    for health in ClusterHealth::ALL {
        t.health.insert(health.name(), 0);
    }
    let mut used = ResourceAmounts::default();
    let mut used_allocatable = ResourceAmounts::default();
    for r in records {
        *t.health.entry(r.health.name()).or_default() += 1;
        if !r.counts_in_totals() {
            continue;
        }
        t.clusters += 1;
        t.nodes_total = t.nodes_total.saturating_add(r.nodes.total.into());
        t.nodes_ready = t.nodes_ready.saturating_add(r.nodes.ready.into());
        t.nodes_cordoned = t.nodes_cordoned.saturating_add(r.nodes.cordoned.into());
        add(&mut t.capacity, &r.capacity);
        add(&mut t.allocatable, &r.allocatable);
        add(&mut t.schedulable, &r.schedulable);
        add(&mut t.allocated, &r.allocated);
        if let Some(u) = &r.used {
            add(&mut used, u);
            add(&mut used_allocatable, &r.allocatable);
            t.used_clusters += 1;
        }
        for (name, e) in &r.extended {
            let sum = t.extended.entry(name.clone()).or_default();
            sum.capacity = sum.capacity.saturating_add(e.capacity);
            sum.allocatable = sum.allocatable.saturating_add(e.allocatable);
            sum.requests = sum.requests.saturating_add(e.requests);
        }
    }
    t.used = (t.used_clusters > 0).then_some(used);
    t.available = saturating_sub(&t.allocatable, &t.allocated);
    t.allocation = Rates::of(&t.allocated, &t.allocatable);
    t.utilization = Rates::usage(t.used.as_ref(), &used_allocatable);
    t
}

/// Requests per workspace across the clusters that count.
pub fn workspaces(records: &[CapacityRecord]) -> BTreeMap<String, WorkspaceTotals> {
    let mut out: BTreeMap<String, WorkspaceTotals> = BTreeMap::new();
    for r in records.iter().filter(|r| r.counts_in_totals()) {
        for (workspace, requests) in &r.workspaces {
            let w = out.entry(workspace.clone()).or_default();
            add(&mut w.requests, requests);
            w.clusters.insert(r.cluster.clone(), *requests);
        }
    }
    out
}

/// The `n` clusters with the highest `by`, highest first (ties by name);
/// clusters without a value (no allocatable, no usage) are left out.
pub fn top(records: &[CapacityRecord], by: Ranking, n: usize) -> Vec<Ranked> {
    let mut ranked: Vec<Ranked> = records
        .iter()
        .filter(|r| r.counts_in_totals())
        .filter_map(|r| {
            let rates = match by {
                Ranking::Allocation => r.allocation,
                Ranking::Utilization => r.utilization,
            };
            Some(Ranked {
                cluster: r.cluster.clone(),
                value: rates.peak()?,
            })
        })
        .collect();
    ranked.sort_by(|a, b| {
        b.value
            .total_cmp(&a.value)
            .then_with(|| a.cluster.cmp(&b.cluster))
    });
    ranked.truncate(n);
    ranked
}

#[cfg(test)]
mod tests {
    use uplink_protocol::{NodeCounts, PodPhaseCounts};

    use super::*;
    use crate::health::ClusterState;

    pub(crate) fn record(
        name: &str,
        health: ClusterHealth,
        cpu: (u64, u64),
        used: Option<u64>,
    ) -> CapacityRecord {
        let allocatable = ResourceAmounts {
            cpu_millis: cpu.0,
            ..ResourceAmounts::default()
        };
        let allocated = ResourceAmounts {
            cpu_millis: cpu.1,
            ..ResourceAmounts::default()
        };
        let used = used.map(|u| ResourceAmounts {
            cpu_millis: u,
            ..ResourceAmounts::default()
        });
        CapacityRecord {
            cluster: name.into(),
            health,
            health_reason: String::new(),
            state: ClusterState::Ready,
            nodes: NodeCounts {
                total: 1,
                ready: 1,
                cordoned: 0,
            },
            capacity: allocatable,
            allocatable,
            schedulable: allocatable,
            allocated,
            used,
            available: saturating_sub(&allocatable, &allocated),
            allocation: Rates::of(&allocated, &allocatable),
            utilization: Rates::usage(used.as_ref(), &allocatable),
            pods: PodPhaseCounts::default(),
            extended: BTreeMap::new(),
            workspaces: BTreeMap::from([("root:a".to_owned(), allocated)]),
        }
    }

    #[test]
    fn totals_skip_unknown_clusters_and_usage_counts_where_known() {
        let records = [
            record("a", ClusterHealth::Healthy, (4000, 1000), Some(500)),
            record("b", ClusterHealth::Degraded, (2000, 2000), None),
            record("c", ClusterHealth::Unknown, (8000, 8000), Some(8000)),
        ];
        let t = totals(&records);
        assert_eq!(t.clusters, 2);
        assert_eq!(t.allocatable.cpu_millis, 6000);
        assert_eq!(t.allocated.cpu_millis, 3000);
        assert_eq!(t.available.cpu_millis, 3000);
        assert_eq!(t.allocation.cpu, Some(0.5));
        assert_eq!(t.used.map(|u| u.cpu_millis), Some(500));
        assert_eq!(t.utilization.cpu, Some(500.0 / 4000.0));
        assert_eq!(t.health["Unknown"], 1);
        let w = workspaces(&records);
        assert_eq!(w["root:a"].requests.cpu_millis, 3000);
        assert_eq!(w["root:a"].clusters.len(), 2);
    }

    #[test]
    fn totals_saturate_instead_of_wrapping() {
        let mut a = record(
            "a",
            ClusterHealth::Healthy,
            (u64::MAX, u64::MAX),
            Some(u64::MAX),
        );
        a.nodes.total = u32::MAX;
        a.extended.insert(
            "x/y".into(),
            ExtendedAmounts {
                capacity: u64::MAX,
                allocatable: u64::MAX,
                requests: u64::MAX,
            },
        );
        let records = vec![a; 3];
        let t = totals(&records);
        assert_eq!(t.allocatable.cpu_millis, u64::MAX);
        assert_eq!(t.used.map(|u| u.cpu_millis), Some(u64::MAX));
        assert_eq!(t.nodes_total, 3 * u64::from(u32::MAX));
        assert_eq!(t.extended["x/y"].capacity, u64::MAX);
        assert_eq!(workspaces(&records)["root:a"].requests.cpu_millis, u64::MAX);
    }

    #[test]
    fn top_n_by_allocation_and_utilization() {
        let records = [
            record("a", ClusterHealth::Healthy, (4000, 1000), Some(3000)),
            record("b", ClusterHealth::Healthy, (2000, 1500), None),
            record("c", ClusterHealth::Healthy, (1000, 500), Some(100)),
        ];
        let names = |v: Vec<Ranked>| v.into_iter().map(|r| r.cluster).collect::<Vec<_>>();
        assert_eq!(names(top(&records, Ranking::Allocation, 2)), ["b", "c"]);
        assert_eq!(names(top(&records, Ranking::Utilization, 5)), ["a", "c"]);
    }
}
