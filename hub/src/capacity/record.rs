//! One cluster's capacity record: its health, and what it has, what is
//! allocated on it, what is used and what is left, from the latest
//! heartbeat summary and the state of its link.
//!
//! # Health
//!
//! Checked in this order; the first rule that matches decides:
//!
//! | health | when |
//! |---|---|
//! | `Unknown` | never heard from, or `Offline` (no heartbeat for longer than the offline grace); no summary yet; the agent reports no node watch (`--capacity=false`) or its node list is not complete yet |
//! | `Unhealthy` | `Stale` (no heartbeat for three intervals); no nodes; no node Ready; fewer than half the nodes Ready |
//! | `Degraded` | at least one node not Ready; a watch of the agent failing or not listed yet |
//! | `Healthy` | otherwise |
//!
//! Cordoned nodes do not change the health (an operator's choice); they are
//! counted apart, and their allocatable is not in `schedulable`.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::Serialize;
use serde_json::{Map, Value, json};
use uplink_protocol::{
    ClusterSummary, ExtendedAmounts, NodeCounts, PodPhaseCounts, ResourceAmounts,
};

use crate::health::{ClusterRecord, ClusterState};

/// The node watch's name in the agent's summary.
pub const NODES_WATCH: &str = "nodes.v1";

/// A cluster's health; see the module documentation for the thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum ClusterHealth {
    Healthy,
    Degraded,
    Unhealthy,
    Unknown,
}

impl ClusterHealth {
    pub const ALL: [ClusterHealth; 4] = [
        ClusterHealth::Healthy,
        ClusterHealth::Degraded,
        ClusterHealth::Unhealthy,
        ClusterHealth::Unknown,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ClusterHealth::Healthy => "Healthy",
            ClusterHealth::Degraded => "Degraded",
            ClusterHealth::Unhealthy => "Unhealthy",
            ClusterHealth::Unknown => "Unknown",
        }
    }
}

/// Allocation or utilization ratios (0.0 ..), per resource; `None` where the
/// denominator is zero or the numerator unknown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Rates {
    pub cpu: Option<f64>,
    pub memory: Option<f64>,
    pub ephemeral_storage: Option<f64>,
    pub pods: Option<f64>,
}

impl Rates {
    /// `part / whole` per resource.
    pub fn of(part: &ResourceAmounts, whole: &ResourceAmounts) -> Self {
        Self {
            cpu: ratio(part.cpu_millis, whole.cpu_millis),
            memory: ratio(part.memory_bytes, whole.memory_bytes),
            ephemeral_storage: ratio(part.ephemeral_storage_bytes, whole.ephemeral_storage_bytes),
            pods: ratio(part.pods, whole.pods),
        }
    }

    /// Utilization: only CPU and memory are measured by `metrics.k8s.io`.
    pub fn usage(used: Option<&ResourceAmounts>, whole: &ResourceAmounts) -> Self {
        match used {
            None => Self::default(),
            Some(used) => Self {
                cpu: ratio(used.cpu_millis, whole.cpu_millis),
                memory: ratio(used.memory_bytes, whole.memory_bytes),
                ..Self::default()
            },
        }
    }

    /// The larger of the CPU and memory ratios (the ranking key of top N).
    pub fn peak(&self) -> Option<f64> {
        match (self.cpu, self.memory) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }
}

fn ratio(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

/// `a - b` per resource, never below zero.
pub fn saturating_sub(a: &ResourceAmounts, b: &ResourceAmounts) -> ResourceAmounts {
    ResourceAmounts {
        cpu_millis: a.cpu_millis.saturating_sub(b.cpu_millis),
        memory_bytes: a.memory_bytes.saturating_sub(b.memory_bytes),
        ephemeral_storage_bytes: a
            .ephemeral_storage_bytes
            .saturating_sub(b.ephemeral_storage_bytes),
        pods: a.pods.saturating_sub(b.pods),
    }
}

/// `a += b` per resource (saturating: sums of u64 byte counts across a fleet
/// stay far below the limit, but never wrap).
pub fn add(a: &mut ResourceAmounts, b: &ResourceAmounts) {
    a.cpu_millis = a.cpu_millis.saturating_add(b.cpu_millis);
    a.memory_bytes = a.memory_bytes.saturating_add(b.memory_bytes);
    a.ephemeral_storage_bytes = a
        .ephemeral_storage_bytes
        .saturating_add(b.ephemeral_storage_bytes);
    a.pods = a.pods.saturating_add(b.pods);
}

/// One cluster's capacity record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CapacityRecord {
    pub cluster: String,
    pub health: ClusterHealth,
    /// Why the health is what it is, for people.
    pub health_reason: String,
    /// The link state the health was judged with.
    pub state: ClusterState,
    pub nodes: NodeCounts,
    pub capacity: ResourceAmounts,
    pub allocatable: ResourceAmounts,
    /// Allocatable of nodes Ready and not cordoned.
    pub schedulable: ResourceAmounts,
    /// Requests of scheduled pods that are not terminated.
    pub allocated: ResourceAmounts,
    /// From `metrics.k8s.io`; `None` when unknown (never zero for unknown).
    pub used: Option<ResourceAmounts>,
    /// `allocatable - allocated`, never below zero.
    pub available: ResourceAmounts,
    /// `allocated / allocatable`.
    pub allocation: Rates,
    /// `used / allocatable` (CPU and memory).
    pub utilization: Rates,
    pub pods: PodPhaseCounts,
    pub extended: BTreeMap<String, ExtendedAmounts>,
    /// Requests by KCP workspace.
    pub workspaces: BTreeMap<String, ResourceAmounts>,
}

impl CapacityRecord {
    /// The record of `cluster` from its link record, in link state `state`.
    pub fn new(cluster: &str, record: &ClusterRecord, state: ClusterState) -> Self {
        let (health, reason) = judge(record, state);
        let summary = record.summary.clone().unwrap_or_default();
        Self::from_summary(cluster, health, reason, state, summary)
    }

    fn from_summary(
        cluster: &str,
        health: ClusterHealth,
        health_reason: String,
        state: ClusterState,
        s: ClusterSummary,
    ) -> Self {
        Self {
            cluster: cluster.to_owned(),
            health,
            health_reason,
            state,
            nodes: s.nodes,
            available: saturating_sub(&s.allocatable, &s.requests),
            allocation: Rates::of(&s.requests, &s.allocatable),
            utilization: Rates::usage(s.usage.as_ref(), &s.allocatable),
            capacity: s.capacity,
            allocatable: s.allocatable,
            schedulable: s.schedulable,
            allocated: s.requests,
            used: s.usage,
            pods: s.pods,
            extended: s.extended,
            workspaces: s.workspaces,
        }
    }

    /// Whether the record's numbers count in fleet totals: everything but
    /// `Unknown` (Offline, or no node data).
    pub fn counts_in_totals(&self) -> bool {
        self.health != ClusterHealth::Unknown
    }

    /// Fields for the cluster's `SyncTarget` status: `capacity` and
    /// `allocatable` as Kubernetes quantities (extended resources included),
    /// as kcp's SyncTarget carried them, and `allocation`: the share of
    /// allocatable that pod requests take, per resource, as a whole
    /// percentage (`"42%"`, rounded down as `kubectl describe node` does;
    /// over 100% when requests exceed allocatable), for the SyncTarget's
    /// printer columns. A resource without allocatable is `null` there, which
    /// a merge patch turns into no key. Empty when the agent reported no node
    /// data (nothing is claimed rather than zeros).
    pub fn synctarget_status_fields(&self) -> Map<String, Value> {
        let mut fields = Map::new();
        if self.health == ClusterHealth::Unknown && self.nodes.total == 0 {
            return fields;
        }
        fields.insert(
            "capacity".into(),
            quantities(
                &self.capacity,
                self.extended.iter().map(|(n, e)| (n, e.capacity)),
            ),
        );
        fields.insert(
            "allocatable".into(),
            quantities(
                &self.allocatable,
                self.extended.iter().map(|(n, e)| (n, e.allocatable)),
            ),
        );
        // The same ratios as `allocation`, from the amounts.
        fields.insert(
            "allocation".into(),
            percentages(&self.allocated, &self.allocatable),
        );
        fields
    }

    /// The SyncTarget condition of type `Healthy`: `True` when Healthy,
    /// `False` when Degraded or Unhealthy, `Unknown` when Unknown; the
    /// reason is the health's name.
    pub fn health_condition(&self, last_transition: Option<String>) -> Value {
        let status = match self.health {
            ClusterHealth::Healthy => "True",
            ClusterHealth::Degraded | ClusterHealth::Unhealthy => "False",
            ClusterHealth::Unknown => "Unknown",
        };
        json!({
            "type": "Healthy",
            "status": status,
            "reason": self.health.name(),
            "message": self.health_reason,
            "lastTransitionTime": last_transition,
        })
    }
}

/// Adds `record`'s capacity fields and its `Healthy` condition (which turned
/// to its present value at `health_since`) to a SyncTarget status merge
/// patch (`{"status": {...}}`): `capacity` and `allocatable` replace what is
/// there, the condition is appended to `status.conditions`.
pub fn apply_to_synctarget_patch(
    patch: &mut Value,
    record: &CapacityRecord,
    health_since: SystemTime,
) {
    let Some(status) = patch.get_mut("status").and_then(Value::as_object_mut) else {
        return;
    };
    for (key, value) in record.synctarget_status_fields() {
        status.insert(key, value);
    }
    let condition = record.health_condition(Some(super::rfc3339(health_since)));
    match status.get_mut("conditions").and_then(Value::as_array_mut) {
        Some(conditions) => {
            conditions.retain(|c| c.get("type").and_then(Value::as_str) != Some("Healthy"));
            conditions.push(condition);
        }
        None => {
            status.insert("conditions".into(), Value::Array(vec![condition]));
        }
    }
}

/// `part / whole` per resource as a whole percentage (`"42%"`, rounded
/// down, in integers so that 290m of 1000m is 29%), `null` where `whole` is
/// zero.
fn percentages(part: &ResourceAmounts, whole: &ResourceAmounts) -> Value {
    let percent = |part: u64, whole: u64| {
        if whole == 0 {
            return Value::Null;
        }
        let p = u128::from(part) * 100 / u128::from(whole);
        Value::String(format!("{p}%"))
    };
    json!({
        "cpu": percent(part.cpu_millis, whole.cpu_millis),
        "memory": percent(part.memory_bytes, whole.memory_bytes),
        "ephemeral-storage": percent(part.ephemeral_storage_bytes, whole.ephemeral_storage_bytes),
        "pods": percent(part.pods, whole.pods),
    })
}

/// Amounts as Kubernetes quantities: CPU in millicores, the rest in units.
fn quantities<'a>(
    amounts: &ResourceAmounts,
    extended: impl Iterator<Item = (&'a String, u64)>,
) -> Value {
    let mut map = Map::new();
    map.insert("cpu".into(), format!("{}m", amounts.cpu_millis).into());
    map.insert("memory".into(), amounts.memory_bytes.to_string().into());
    map.insert(
        "ephemeral-storage".into(),
        amounts.ephemeral_storage_bytes.to_string().into(),
    );
    map.insert("pods".into(), amounts.pods.to_string().into());
    for (name, value) in extended {
        map.insert(name.clone(), value.to_string().into());
    }
    Value::Object(map)
}

/// The health of a cluster; see the module documentation.
pub fn judge(record: &ClusterRecord, state: ClusterState) -> (ClusterHealth, String) {
    use ClusterHealth::*;
    if record.last_heartbeat.is_none() && record.connected_at.is_none() {
        return (Unknown, "never heard from".into());
    }
    match state {
        ClusterState::Offline => {
            return (
                Unknown,
                "no heartbeat for longer than the offline grace".into(),
            );
        }
        ClusterState::Stale => {
            return (
                Unhealthy,
                "no heartbeat for three heartbeat intervals".into(),
            );
        }
        ClusterState::Ready => {}
    }
    let Some(summary) = &record.summary else {
        return (Unknown, "no cluster summary received yet".into());
    };
    match summary.watches.iter().find(|w| w.resource == NODES_WATCH) {
        None => return (Unknown, "the agent does not report nodes".into()),
        Some(w) if !w.ready => {
            return (Unknown, "the agent's node list is not complete yet".into());
        }
        Some(_) => {}
    }
    let NodeCounts { total, ready, .. } = summary.nodes;
    if total == 0 {
        return (Unhealthy, "the cluster has no nodes".into());
    }
    if ready == 0 {
        return (Unhealthy, format!("none of {total} nodes is Ready"));
    }
    if u64::from(ready) * 2 < u64::from(total) {
        return (
            Unhealthy,
            format!("fewer than half the nodes are Ready ({ready} of {total})"),
        );
    }
    if ready < total {
        return (
            Degraded,
            format!("{} of {total} nodes not Ready", total - ready),
        );
    }
    if let Some(w) = summary
        .watches
        .iter()
        .find(|w| w.error.is_some() || !w.ready)
    {
        let why = w.error.as_deref().unwrap_or("initial list pending");
        return (Degraded, format!("watch {} failing: {why}", w.resource));
    }
    (Healthy, format!("{ready} of {total} nodes Ready"))
}

/// Seconds since the Unix epoch of `time`, for history points.
pub fn unix_seconds(time: SystemTime) -> f64 {
    match time.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

#[cfg(test)]
mod tests {
    use uplink_protocol::WatchHealth;

    use super::*;

    fn record(total: u32, ready: u32, watches: Vec<WatchHealth>) -> ClusterRecord {
        ClusterRecord {
            last_heartbeat: Some(SystemTime::now()),
            summary: Some(ClusterSummary {
                watches,
                nodes: NodeCounts {
                    total,
                    ready,
                    cordoned: 0,
                },
                ..ClusterSummary::default()
            }),
            ..ClusterRecord::default()
        }
    }

    fn nodes_watch() -> WatchHealth {
        WatchHealth {
            resource: NODES_WATCH.into(),
            ready: true,
            objects: 0,
            error: None,
        }
    }

    fn health(r: &ClusterRecord, state: ClusterState) -> ClusterHealth {
        judge(r, state).0
    }

    #[test]
    fn health_thresholds() {
        use ClusterHealth::*;
        let ready = ClusterState::Ready;
        assert_eq!(health(&ClusterRecord::default(), ready), Unknown);
        assert_eq!(health(&record(3, 3, vec![nodes_watch()]), ready), Healthy);
        assert_eq!(health(&record(3, 2, vec![nodes_watch()]), ready), Degraded);
        assert_eq!(health(&record(4, 2, vec![nodes_watch()]), ready), Degraded);
        assert_eq!(health(&record(3, 1, vec![nodes_watch()]), ready), Unhealthy);
        assert_eq!(health(&record(3, 0, vec![nodes_watch()]), ready), Unhealthy);
        assert_eq!(health(&record(0, 0, vec![nodes_watch()]), ready), Unhealthy);
        assert_eq!(health(&record(3, 3, vec![]), ready), Unknown);
        let failing = WatchHealth {
            resource: "deployments.v1.apps".into(),
            ready: true,
            objects: 1,
            error: Some("forbidden".into()),
        };
        assert_eq!(
            health(&record(3, 3, vec![nodes_watch(), failing]), ready),
            Degraded
        );
        let r = record(3, 3, vec![nodes_watch()]);
        assert_eq!(health(&r, ClusterState::Stale), Unhealthy);
        assert_eq!(health(&r, ClusterState::Offline), Unknown);
    }

    #[test]
    fn available_and_rates() {
        let mut r = record(1, 1, vec![nodes_watch()]);
        if let Some(s) = &mut r.summary {
            s.allocatable = ResourceAmounts {
                cpu_millis: 4000,
                memory_bytes: 1000,
                ephemeral_storage_bytes: 0,
                pods: 110,
            };
            s.requests = ResourceAmounts {
                cpu_millis: 1000,
                memory_bytes: 1500,
                ephemeral_storage_bytes: 0,
                pods: 11,
            };
        }
        let c = CapacityRecord::new("c", &r, ClusterState::Ready);
        assert_eq!(c.available.cpu_millis, 3000);
        assert_eq!(c.available.memory_bytes, 0);
        assert_eq!(c.allocation.cpu, Some(0.25));
        assert_eq!(c.allocation.memory, Some(1.5));
        assert_eq!(c.allocation.ephemeral_storage, None);
        assert_eq!(c.allocation.pods, Some(0.1));
        assert_eq!(c.utilization, Rates::default());
        let fields = c.synctarget_status_fields();
        assert_eq!(fields["allocatable"]["cpu"], "4000m");
        assert_eq!(fields["allocatable"]["pods"], "110");
        assert_eq!(
            fields["allocation"],
            json!({"cpu": "25%", "memory": "150%", "ephemeral-storage": null, "pods": "10%"})
        );
        // Integers: 290m of 1000m is 29%, not 28.999...%; rounded down.
        let exact = percentages(
            &ResourceAmounts {
                cpu_millis: 290,
                memory_bytes: 2,
                ..ResourceAmounts::default()
            },
            &ResourceAmounts {
                cpu_millis: 1000,
                memory_bytes: 3,
                ..ResourceAmounts::default()
            },
        );
        assert_eq!(exact["cpu"], "29%");
        assert_eq!(exact["memory"], "66%");
    }
}
