//! What one node contributes: readiness, cordon, capacity and allocatable.

use k8s_openapi::api::core::v1::Node;

use super::amounts::Amounts;
use super::quantity::QuantityError;

/// One node as the collector keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeShare {
    /// The `Ready` condition is `True`. A node without one is not ready.
    pub ready: bool,
    /// `spec.unschedulable` (cordoned).
    pub cordoned: bool,
    pub capacity: Amounts,
    pub allocatable: Amounts,
}

impl NodeShare {
    /// Reads `node`; the first malformed quantity met is returned beside it
    /// (counted as zero).
    pub fn of(node: &Node) -> (Self, Option<QuantityError>) {
        let status = node.status.as_ref();
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|conditions| conditions.iter().find(|c| c.type_ == "Ready"))
            .is_some_and(|c| c.status == "True");
        let cordoned = node
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false);
        let (capacity, e1) = Amounts::from_node_list(status.and_then(|s| s.capacity.as_ref()));
        let (allocatable, e2) =
            Amounts::from_node_list(status.and_then(|s| s.allocatable.as_ref()));
        let share = Self {
            ready,
            cordoned,
            capacity,
            allocatable,
        };
        (share, e1.or(e2))
    }

    /// Whether the scheduler may place pods on it: Ready and not cordoned.
    pub fn schedulable(&self) -> bool {
        self.ready && !self.cordoned
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    fn node(value: serde_json::Value) -> Node {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn readiness_comes_from_the_ready_condition_only() {
        let with = |conditions| node(json!({"status": {"conditions": conditions}}));
        let ready = with(json!([{"type": "Ready", "status": "True"}]));
        assert!(NodeShare::of(&ready).0.ready);
        let not_ready = with(json!([{"type": "Ready", "status": "False"}]));
        assert!(!NodeShare::of(&not_ready).0.ready);
        let unknown = with(json!([{"type": "Ready", "status": "Unknown"}]));
        assert!(!NodeShare::of(&unknown).0.ready);
        let no_ready_condition = with(json!([{"type": "MemoryPressure", "status": "False"}]));
        assert!(!NodeShare::of(&no_ready_condition).0.ready);
        assert!(!NodeShare::of(&node(json!({}))).0.ready);
    }

    #[test]
    fn capacity_and_allocatable_in_scheduler_units() {
        let n = node(json!({
            "spec": {"unschedulable": true},
            "status": {
                "capacity": {"cpu": "4", "memory": "16Gi", "ephemeral-storage": "100Gi", "pods": "110", "nvidia.com/gpu": "2", "hugepages-2Mi": "0"},
                "allocatable": {"cpu": "3800m", "memory": "15.5Gi", "ephemeral-storage": "90G", "pods": "110", "nvidia.com/gpu": "2"},
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        }));
        let (share, error) = NodeShare::of(&n);
        assert!(error.is_none());
        assert!(share.cordoned && share.ready && !share.schedulable());
        assert_eq!(share.capacity.cpu_millis, 4000);
        assert_eq!(share.capacity.memory_bytes, 16 << 30);
        assert_eq!(share.capacity.pods, 110);
        assert_eq!(share.allocatable.cpu_millis, 3800);
        assert_eq!(share.allocatable.memory_bytes, 15 * (1 << 30) + (1 << 29));
        assert_eq!(share.allocatable.ephemeral_storage_bytes, 90_000_000_000);
        assert_eq!(
            share.allocatable.scalars().collect::<Vec<_>>(),
            [("nvidia.com/gpu", 2)]
        );
    }
}
