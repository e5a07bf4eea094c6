//! The cluster's capacity summary, kept up to date one watch event at a time.
//!
//! Every node and pod is held as its contribution only ([`NodeShare`], a
//! pod's [`Amounts`]), never as the object. An event subtracts the object's
//! old contribution and adds the new one, so a heartbeat reads running
//! totals and nothing is ever listed again to build a summary. Re-lists
//! after a broken watch are handled with list epochs, as in
//! [`crate::inventory`]: what a completed re-list did not mention is gone.
//!
//! What counts where (the scheduler's view):
//! - `requests` and per-node requests: pods bound to a node (`spec.nodeName`)
//!   and not terminated (`Succeeded`, `Failed`); each counts 1 in `pods`.
//!   Pending pods not scheduled yet are in the phase counts only.
//! - per-workspace requests: the same pods, grouped by the workspace their
//!   namespace's locator names ([`crate::mapping::Locator`]).
//! - `schedulable`: allocatable of nodes Ready and not cordoned.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use k8s_openapi::api::core::v1::{Node, Pod};
use uplink_protocol::{
    ClusterSummary, ExtendedAmounts, NodeCounts, PodPhaseCounts, ResourceAmounts, WatchHealth,
};

use super::amounts::{Amounts, Totals};
use super::node::NodeShare;
use super::pod::{is_terminated, node_name, pod_requests};
use super::quantity::QuantityError;
use crate::mapping::Locator;

/// Most workspaces listed in one summary (the largest by CPU requests), so a
/// heartbeat stays well inside the hub's frame limit.
pub const MAX_SUMMARY_WORKSPACES: usize = 1000;

/// Longest workspace name listed: well under the protocol's default string
/// limit, so one odd locator cannot get every heartbeat refused.
const MAX_WORKSPACE_NAME_BYTES: usize = 512;

/// The watches the collector runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CapacityWatch {
    Nodes,
    Pods,
    Namespaces,
}

impl CapacityWatch {
    /// The name in the heartbeat's watch list and in metrics.
    pub fn name(self) -> &'static str {
        match self {
            CapacityWatch::Nodes => "nodes.v1",
            CapacityWatch::Pods => "pods.v1",
            CapacityWatch::Namespaces => "namespaces.v1",
        }
    }

    fn index(self) -> usize {
        match self {
            CapacityWatch::Nodes => 0,
            CapacityWatch::Pods => 1,
            CapacityWatch::Namespaces => 2,
        }
    }
}

/// `status.phase` of a pod, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Pending,
    Running,
    Succeeded,
    Failed,
    Unknown,
}

impl Phase {
    fn of(pod: &Pod) -> Self {
        match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
            Some("Running") => Phase::Running,
            Some("Succeeded") => Phase::Succeeded,
            Some("Failed") => Phase::Failed,
            Some("Pending") | None => Phase::Pending,
            Some(_) => Phase::Unknown,
        }
    }
}

/// One pod as held: where its request counts, and the request.
#[derive(Debug, Clone)]
struct PodShare {
    phase: Phase,
    /// The node it is bound to, when its request counts (scheduled and not
    /// terminated); `None` when it does not count.
    counted_on: Option<Arc<str>>,
    requests: Amounts,
    epoch: u32,
}

#[derive(Debug, Clone)]
struct NodeEntry {
    share: NodeShare,
    epoch: u32,
}

#[derive(Debug, Clone)]
struct NamespaceEntry {
    workspace: Option<Arc<str>>,
    epoch: u32,
}

#[derive(Debug, Clone, Default)]
struct WatchState {
    ready: bool,
    error: Option<String>,
    epoch: u32,
}

/// Node totals.
#[derive(Debug, Clone, Default)]
struct NodeTotals {
    total: i64,
    ready: i64,
    cordoned: i64,
    capacity: Totals,
    allocatable: Totals,
    schedulable: Totals,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct Collector {
    nodes: HashMap<Box<str>, NodeEntry>,
    /// By namespace, then name.
    pods: HashMap<Arc<str>, HashMap<Box<str>, PodShare>>,
    namespaces: HashMap<Box<str>, NamespaceEntry>,
    /// Interned node names (pods point at them).
    node_names: HashMap<Arc<str>, u32>,
    node_totals: NodeTotals,
    requests: Totals,
    per_node: HashMap<Arc<str>, Totals>,
    per_namespace: HashMap<Arc<str>, Totals>,
    phases: [i64; 5],
    watches: [WatchState; 3],
    usage: Option<ResourceAmounts>,
    /// Malformed quantities met (each counted as zero).
    quantity_errors: u64,
}

/// A collector shared between its watches and the heartbeat.
pub type SharedCollector = Arc<Mutex<Collector>>;

/// Locks `collector`. Every update is a handful of additions made while
/// holding the lock; a panic cannot leave a half-applied one that matters
/// more than the next re-list fixes.
pub fn lock(collector: &SharedCollector) -> MutexGuard<'_, Collector> {
    collector
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Collector {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn shared(self) -> SharedCollector {
        Arc::new(Mutex::new(self))
    }

    fn epoch(&self, watch: CapacityWatch) -> u32 {
        self.watches[watch.index()].epoch
    }

    /// A watch (re)starts its list.
    pub fn restarted(&mut self, watch: CapacityWatch) {
        let state = &mut self.watches[watch.index()];
        state.epoch = state.epoch.wrapping_add(1);
    }

    /// A watch's list is complete: what it did not list is gone.
    pub fn listed(&mut self, watch: CapacityWatch) {
        let epoch = self.epoch(watch);
        match watch {
            CapacityWatch::Nodes => {
                let gone: Vec<Box<str>> = self
                    .nodes
                    .iter()
                    .filter(|(_, n)| n.epoch != epoch)
                    .map(|(k, _)| k.clone())
                    .collect();
                for name in gone {
                    self.node_deleted(&name);
                }
            }
            CapacityWatch::Pods => {
                let gone: Vec<(Arc<str>, Box<str>)> = self
                    .pods
                    .iter()
                    .flat_map(|(ns, pods)| {
                        pods.iter()
                            .filter(|(_, p)| p.epoch != epoch)
                            .map(|(name, _)| (ns.clone(), name.clone()))
                    })
                    .collect();
                for (ns, name) in gone {
                    self.pod_deleted(&ns, &name);
                }
            }
            CapacityWatch::Namespaces => {
                let gone: Vec<Box<str>> = self
                    .namespaces
                    .iter()
                    .filter(|(_, n)| n.epoch != epoch)
                    .map(|(k, _)| k.clone())
                    .collect();
                for name in gone {
                    self.namespaces.remove(&name);
                }
            }
        }
        let state = &mut self.watches[watch.index()];
        state.ready = true;
        state.error = None;
    }

    /// A watch failed (it retries by itself).
    pub fn failed(&mut self, watch: CapacityWatch, error: String) {
        self.watches[watch.index()].error = Some(error);
    }

    /// The latest node usage from `metrics.k8s.io`, `None` when unknown.
    pub fn set_usage(&mut self, usage: Option<ResourceAmounts>) {
        self.usage = usage;
    }

    /// Malformed quantities met so far.
    pub fn quantity_errors(&self) -> u64 {
        self.quantity_errors
    }

    fn quantity_error(&mut self, kind: &str, name: &str, error: Option<QuantityError>) {
        if let Some(error) = error {
            self.quantity_errors += 1;
            tracing::warn!(kind, object = %name, %error, "malformed quantity counted as zero");
        }
    }

    /// A node was added, changed or listed.
    pub fn node_applied(&mut self, node: &Node) {
        let name = node.metadata.name.as_deref().unwrap_or_default();
        let (share, error) = NodeShare::of(node);
        self.quantity_error("Node", name, error);
        self.node_share(name, share);
    }

    /// Applies an already-read node (see [`NodeShare::of`]).
    pub fn node_share(&mut self, name: &str, share: NodeShare) {
        let epoch = self.epoch(CapacityWatch::Nodes);
        if let Some(old) = self.nodes.get(name).map(|e| e.share.clone()) {
            self.count_node(&old, -1);
        }
        self.count_node(&share, 1);
        self.nodes.insert(name.into(), NodeEntry { share, epoch });
    }

    /// A node was deleted.
    pub fn node_deleted(&mut self, name: &str) {
        if let Some(old) = self.nodes.remove(name) {
            self.count_node(&old.share, -1);
        }
    }

    fn count_node(&mut self, share: &NodeShare, sign: i64) {
        let t = &mut self.node_totals;
        t.total += sign;
        t.ready += sign * i64::from(share.ready);
        t.cordoned += sign * i64::from(share.cordoned);
        t.capacity.apply(&share.capacity, i128::from(sign));
        t.allocatable.apply(&share.allocatable, i128::from(sign));
        if share.schedulable() {
            t.schedulable.apply(&share.allocatable, i128::from(sign));
        }
    }

    /// A pod was added, changed or listed.
    pub fn pod_applied(&mut self, pod: &Pod) {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let phase = Phase::of(pod);
        let counts = !is_terminated(pod);
        let node = node_name(pod).filter(|_| counts);
        let requests = if node.is_some() {
            let (requests, error) = pod_requests(pod);
            self.quantity_error("Pod", name, error);
            requests
        } else {
            Amounts::default()
        };
        let epoch = self.epoch(CapacityWatch::Pods);
        let old = self
            .pods
            .get_mut(namespace)
            .and_then(|pods| pods.remove(name));
        let ns: Arc<str> = match self.pods.get_key_value(namespace) {
            Some((ns, _)) => ns.clone(),
            None => namespace.into(),
        };
        if let Some(old) = old {
            self.count_pod(&ns, &old, -1);
        }
        let counted_on = node.map(|n| self.intern_node(n));
        let share = PodShare {
            phase,
            counted_on,
            requests,
            epoch,
        };
        self.count_pod(&ns, &share, 1);
        self.pods.entry(ns).or_default().insert(name.into(), share);
    }

    /// A pod was deleted.
    pub fn pod_deleted(&mut self, namespace: &str, name: &str) {
        let Some(ns) = self.pods.get_key_value(namespace).map(|(ns, _)| ns.clone()) else {
            return;
        };
        let Some(old) = self.pods.get_mut(namespace).and_then(|p| p.remove(name)) else {
            return;
        };
        self.count_pod(&ns, &old, -1);
        if self.pods.get(namespace).is_some_and(HashMap::is_empty) {
            self.pods.remove(namespace);
        }
    }

    fn intern_node(&mut self, name: &str) -> Arc<str> {
        if let Some((interned, _)) = self.node_names.get_key_value(name) {
            return interned.clone();
        }
        let interned: Arc<str> = name.into();
        self.node_names.insert(interned.clone(), 0);
        interned
    }

    fn count_pod(&mut self, namespace: &Arc<str>, pod: &PodShare, sign: i64) {
        let phase = match pod.phase {
            Phase::Pending => 0,
            Phase::Running => 1,
            Phase::Succeeded => 2,
            Phase::Failed => 3,
            Phase::Unknown => 4,
        };
        self.phases[phase] += sign;
        let Some(node) = &pod.counted_on else {
            return;
        };
        let sign = i128::from(sign);
        self.requests.apply(&pod.requests, sign);
        self.per_namespace
            .entry(namespace.clone())
            .or_default()
            .apply(&pod.requests, sign);
        self.per_node
            .entry(node.clone())
            .or_default()
            .apply(&pod.requests, sign);
        let refs = self.node_names.entry(node.clone()).or_default();
        if sign > 0 {
            *refs += 1;
        } else {
            *refs = refs.saturating_sub(1);
        }
        if *refs == 0 {
            self.node_names.remove(node);
            self.per_node.remove(node);
        }
        if self
            .per_namespace
            .get(namespace)
            .is_some_and(|t| t.pods == 0)
        {
            self.per_namespace.remove(namespace);
        }
    }

    /// A namespace was added, changed or listed, with its raw
    /// `kcp.io/namespace-locator` annotation.
    pub fn namespace_applied(&mut self, name: &str, locator: Option<&str>) {
        let workspace = locator
            .and_then(|raw| Locator::parse(raw).ok())
            .map(|l| Arc::<str>::from(l.workspace));
        let epoch = self.epoch(CapacityWatch::Namespaces);
        self.namespaces
            .insert(name.into(), NamespaceEntry { workspace, epoch });
    }

    /// A namespace was deleted.
    pub fn namespace_deleted(&mut self, name: &str) {
        self.namespaces.remove(name);
    }

    /// Requests of the scheduled, non-terminated pods on `node`.
    pub fn node_requests(&self, node: &str) -> ResourceAmounts {
        self.per_node
            .get(node)
            .map(Totals::to_wire)
            .unwrap_or_default()
    }

    /// How many pods and nodes are held (for the benchmark and logs).
    pub fn held(&self) -> (usize, usize) {
        let pods = self.pods.values().map(HashMap::len).sum();
        (self.nodes.len(), pods)
    }

    /// Fills the capacity part of `summary` (everything but the configured
    /// resources' watches, to which the capacity watches are appended).
    pub fn fill(&self, summary: &mut ClusterSummary) {
        let t = &self.node_totals;
        let count = |v: i64| u32::try_from(v.max(0)).unwrap_or(u32::MAX);
        summary.nodes = NodeCounts {
            total: count(t.total),
            ready: count(t.ready),
            cordoned: count(t.cordoned),
        };
        summary.capacity = t.capacity.to_wire();
        summary.allocatable = t.allocatable.to_wire();
        summary.schedulable = t.schedulable.to_wire();
        summary.requests = self.requests.to_wire();
        summary.usage = self.usage;
        let phase = |i: usize| u64::try_from(self.phases[i].max(0)).unwrap_or_default();
        summary.pods = PodPhaseCounts {
            pending: phase(0),
            running: phase(1),
            succeeded: phase(2),
            failed: phase(3),
            unknown: phase(4),
        };
        let mut extended: BTreeMap<String, ExtendedAmounts> = BTreeMap::new();
        for resource in t.capacity.scalar.keys() {
            extended.entry(resource.to_string()).or_default().capacity =
                t.capacity.scalar_u64(resource);
        }
        for resource in t.allocatable.scalar.keys() {
            extended
                .entry(resource.to_string())
                .or_default()
                .allocatable = t.allocatable.scalar_u64(resource);
        }
        for resource in self.requests.scalar.keys() {
            extended.entry(resource.to_string()).or_default().requests =
                self.requests.scalar_u64(resource);
        }
        summary.extended = extended;
        let mut workspaces: BTreeMap<&str, Totals> = BTreeMap::new();
        for (namespace, totals) in &self.per_namespace {
            let Some(workspace) = self
                .namespaces
                .get(&**namespace)
                .and_then(|n| n.workspace.as_deref())
                .filter(|w| w.len() <= MAX_WORKSPACE_NAME_BYTES)
            else {
                continue;
            };
            let sum = workspaces.entry(workspace).or_default();
            sum.cpu_millis += totals.cpu_millis;
            sum.memory_bytes += totals.memory_bytes;
            sum.ephemeral_storage_bytes += totals.ephemeral_storage_bytes;
            sum.pods += totals.pods;
        }
        let mut listed: Vec<(&str, ResourceAmounts)> = workspaces
            .into_iter()
            .map(|(w, t)| (w, t.to_wire()))
            .collect();
        if listed.len() > MAX_SUMMARY_WORKSPACES {
            listed.sort_by(|a, b| b.1.cpu_millis.cmp(&a.1.cpu_millis).then(a.0.cmp(b.0)));
            listed.truncate(MAX_SUMMARY_WORKSPACES);
        }
        summary.workspaces = listed.into_iter().map(|(w, a)| (w.to_owned(), a)).collect();
        for watch in [CapacityWatch::Nodes, CapacityWatch::Pods] {
            let state = &self.watches[watch.index()];
            let objects = match watch {
                CapacityWatch::Nodes => self.nodes.len(),
                _ => self.pods.values().map(HashMap::len).sum(),
            };
            summary.watches.push(WatchHealth {
                resource: watch.name().to_owned(),
                ready: state.ready,
                objects: objects as u64,
                error: state.error.clone(),
            });
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    fn node(name: &str, ready: Option<&str>, cpu: &str, memory: &str) -> Node {
        let conditions = match ready {
            Some(status) => json!([{"type": "Ready", "status": status}]),
            None => json!([]),
        };
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "status": {
                "capacity": {"cpu": cpu, "memory": memory, "pods": "110"},
                "allocatable": {"cpu": cpu, "memory": memory, "pods": "110"},
                "conditions": conditions,
            },
        }))
        .unwrap()
    }

    fn pod(ns: &str, name: &str, node: Option<&str>, phase: &str, cpu: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "nodeName": node,
                "containers": [{"name": "c", "resources": {"requests": {"cpu": cpu, "memory": "1Mi"}}}],
            },
            "status": {"phase": phase},
        }))
        .unwrap()
    }

    fn summary(c: &Collector) -> ClusterSummary {
        let mut s = ClusterSummary::default();
        c.fill(&mut s);
        s
    }

    #[test]
    fn nodes_are_counted_by_readiness_and_summed() {
        let mut c = Collector::new();
        c.node_applied(&node("a", Some("True"), "4", "8Gi"));
        c.node_applied(&node("b", Some("False"), "2", "4Gi"));
        c.node_applied(&node("c", None, "1", "1Gi"));
        let s = summary(&c);
        assert_eq!((s.nodes.total, s.nodes.ready), (3, 1));
        assert_eq!(s.allocatable.cpu_millis, 7000);
        assert_eq!(s.allocatable.memory_bytes, 13 << 30);
        assert_eq!(s.schedulable.cpu_millis, 4000);
        assert_eq!(s.capacity.pods, 330);
        // b turns Ready: replaced, not added twice.
        c.node_applied(&node("b", Some("True"), "2", "4Gi"));
        let s = summary(&c);
        assert_eq!((s.nodes.total, s.nodes.ready), (3, 2));
        assert_eq!(s.allocatable.cpu_millis, 7000);
        c.node_deleted("a");
        let s = summary(&c);
        assert_eq!(
            (s.nodes.total, s.nodes.ready, s.allocatable.cpu_millis),
            (2, 1, 3000)
        );
    }

    #[test]
    fn only_scheduled_non_terminated_pods_count_towards_requests() {
        let mut c = Collector::new();
        c.pod_applied(&pod("ns", "run", Some("n1"), "Running", "100m"));
        c.pod_applied(&pod("ns", "bound", Some("n1"), "Pending", "200m"));
        c.pod_applied(&pod("ns", "unbound", None, "Pending", "400m"));
        c.pod_applied(&pod("ns", "done", Some("n2"), "Succeeded", "800m"));
        c.pod_applied(&pod("ns", "failed", Some("n2"), "Failed", "1600m"));
        let s = summary(&c);
        assert_eq!(s.requests.cpu_millis, 300);
        assert_eq!(s.requests.pods, 2);
        assert_eq!(s.requests.memory_bytes, 2 << 20);
        assert_eq!(
            (
                s.pods.pending,
                s.pods.running,
                s.pods.succeeded,
                s.pods.failed
            ),
            (2, 1, 1, 1)
        );
        assert_eq!(c.node_requests("n1").cpu_millis, 300);
        assert_eq!(c.node_requests("n2"), ResourceAmounts::default());

        // Running → Succeeded releases the request; deleting releases it too.
        c.pod_applied(&pod("ns", "run", Some("n1"), "Succeeded", "100m"));
        assert_eq!(summary(&c).requests.cpu_millis, 200);
        c.pod_deleted("ns", "bound");
        let s = summary(&c);
        assert_eq!((s.requests.cpu_millis, s.requests.pods), (0, 0));
        assert_eq!(c.node_requests("n1"), ResourceAmounts::default());
    }

    #[test]
    fn workspaces_follow_namespace_locators() {
        let mut c = Collector::new();
        let locator = |ws: &str| format!(r#"{{"cluster":"{ws}","namespace":"shop"}}"#);
        c.namespace_applied("a", Some(&locator("root:org:team-a")));
        c.namespace_applied("b", None);
        c.pod_applied(&pod("a", "p1", Some("n"), "Running", "100m"));
        c.pod_applied(&pod("a", "p2", Some("n"), "Running", "150m"));
        c.pod_applied(&pod("b", "p3", Some("n"), "Running", "1"));
        let s = summary(&c);
        assert_eq!(s.workspaces.len(), 1);
        assert_eq!(s.workspaces["root:org:team-a"].cpu_millis, 250);
        assert_eq!(s.workspaces["root:org:team-a"].pods, 2);
        // b gets mapped later: its pods follow without being seen again.
        c.namespace_applied("b", Some(&locator("root:org:team-b")));
        assert_eq!(summary(&c).workspaces["root:org:team-b"].cpu_millis, 1000);
    }

    #[test]
    fn a_relist_forgets_what_it_did_not_list() {
        let mut c = Collector::new();
        c.restarted(CapacityWatch::Nodes);
        c.node_applied(&node("a", Some("True"), "1", "1Gi"));
        c.node_applied(&node("b", Some("True"), "1", "1Gi"));
        c.listed(CapacityWatch::Nodes);
        c.restarted(CapacityWatch::Pods);
        c.pod_applied(&pod("ns", "p1", Some("a"), "Running", "1"));
        c.pod_applied(&pod("ns", "p2", Some("a"), "Running", "1"));
        c.listed(CapacityWatch::Pods);
        // A broken watch re-lists; b and p2 went away in between.
        c.restarted(CapacityWatch::Nodes);
        c.node_applied(&node("a", Some("True"), "1", "1Gi"));
        c.listed(CapacityWatch::Nodes);
        c.restarted(CapacityWatch::Pods);
        c.pod_applied(&pod("ns", "p1", Some("a"), "Running", "1"));
        c.listed(CapacityWatch::Pods);
        let s = summary(&c);
        assert_eq!(
            (s.nodes.total, s.requests.cpu_millis, s.requests.pods),
            (1, 1000, 1)
        );
        assert!(s.watches.iter().all(|w| w.ready));
    }

    #[test]
    fn extended_resources_are_summed_by_name() {
        let mut c = Collector::new();
        let gpu_node: Node = serde_json::from_value(json!({
            "metadata": {"name": "g"},
            "status": {"capacity": {"nvidia.com/gpu": "8"}, "allocatable": {"nvidia.com/gpu": "7"}},
        }))
        .unwrap();
        c.node_applied(&gpu_node);
        let gpu_pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "train", "namespace": "ml"},
            "spec": {"nodeName": "g", "containers": [{"name": "c", "resources": {"requests": {"nvidia.com/gpu": "3"}}}]},
        }))
        .unwrap();
        c.pod_applied(&gpu_pod);
        let s = summary(&c);
        assert_eq!(
            s.extended["nvidia.com/gpu"],
            ExtendedAmounts {
                capacity: 8,
                allocatable: 7,
                requests: 3
            }
        );
        c.pod_deleted("ml", "train");
        assert_eq!(summary(&c).extended["nvidia.com/gpu"].requests, 0);
    }

    #[test]
    fn usage_is_unknown_until_reported() {
        let mut c = Collector::new();
        assert_eq!(summary(&c).usage, None);
        let usage = ResourceAmounts {
            cpu_millis: 10,
            ..ResourceAmounts::default()
        };
        c.set_usage(Some(usage));
        assert_eq!(summary(&c).usage, Some(usage));
    }
}
