//! Memory budgets of the store: what one cluster's reports may take, and
//! all clusters' together, counted as the bytes the hub holds for them
//! (the status text, the object's names, a fixed overhead per report), not
//! as the bytes sent.
//!
//! A report that would take its cluster over its budget is refused (acked,
//! and the agent told why in the `Ack`); deletions and reports that shrink
//! are always taken. Nothing of another cluster is dropped to make room.
//!
//! The total budget protects the hub from many clusters each within its own
//! budget. So that one cluster near the total cannot lock the others out, a
//! cluster within its fair share (the total budget divided by the clusters
//! the store knows) is never refused for it: the total then stays under
//! twice the budget (the clusters over their share cannot grow past it, and
//! those within it hold at most their shares).

use uplink_protocol::Rejected;

use crate::status::Status;
use crate::store::ObjectKey;

/// What the store's bookkeeping of one report takes besides its strings: the
/// entry, the key's copies in the object and cluster maps, the cluster's
/// name in the object's entries, the maps' slots. An estimate on the high
/// side.
pub const REPORT_OVERHEAD: u64 = 512;

/// Bytes the store may hold; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryBudget {
    /// For one cluster's reports (entries and held ones).
    pub cluster_bytes: u64,
    /// For every cluster's reports together.
    pub total_bytes: u64,
}

impl MemoryBudget {
    /// Sized from the benchmarks: a cluster of 10,000 objects with statuses
    /// of ~2 KiB holds ~25 MiB; ten times that per cluster, and a total for
    /// 16 such clusters at their limit (or 160 benchmark clusters).
    pub const DEFAULT_CLUSTER_BYTES: u64 = 256 * 1024 * 1024;
    pub const DEFAULT_TOTAL_BYTES: u64 = 4 * 1024 * 1024 * 1024;

    /// Whether a cluster holding `cluster_held` bytes, of `total_held` held
    /// by the `clusters` the store knows, may change one report's cost from
    /// `from` to `to` bytes.
    pub fn admit(
        &self,
        cluster_held: u64,
        total_held: u64,
        clusters: usize,
        from: u64,
        to: u64,
    ) -> Result<(), OverBudget> {
        let Some(grow) = to.checked_sub(from).filter(|grow| *grow > 0) else {
            return Ok(()); // shrinking or the same: always taken
        };
        let cluster_after = cluster_held.saturating_add(grow);
        if cluster_after > self.cluster_bytes {
            return Err(OverBudget::Cluster);
        }
        let fair_share = self.total_bytes / (clusters.max(1) as u64);
        if total_held.saturating_add(grow) > self.total_bytes && cluster_after > fair_share {
            return Err(OverBudget::Total);
        }
        Ok(())
    }
}

impl Default for MemoryBudget {
    fn default() -> Self {
        Self {
            cluster_bytes: Self::DEFAULT_CLUSTER_BYTES,
            total_bytes: Self::DEFAULT_TOTAL_BYTES,
        }
    }
}

/// Which budget a report would exceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OverBudget {
    #[error("the cluster's memory budget (--max-status-bytes-per-cluster)")]
    Cluster,
    #[error("the hub's memory budget (--max-status-bytes), beyond the cluster's fair share")]
    Total,
}

impl OverBudget {
    /// The reason the agent is told (`Rejected`'s constants).
    pub fn reason(self) -> &'static str {
        match self {
            Self::Cluster => Rejected::CLUSTER_MEMORY_BUDGET,
            Self::Total => Rejected::HUB_MEMORY_BUDGET,
        }
    }
}

/// What one report of `key` costs against the budgets: its strings and
/// [`REPORT_OVERHEAD`]; a deletion (`status` `None`) held for judging too.
pub fn report_cost(key: &ObjectKey, status: Option<&Status>, uid: &str) -> u64 {
    let names = key.workspace.len()
        + key.group.len()
        + key.version.len()
        + key.resource.len()
        + key.kind.len()
        + key.namespace.as_ref().map_or(0, String::len)
        + key.name.len();
    let bytes = names + uid.len() + status.map_or(0, Status::len);
    REPORT_OVERHEAD.saturating_add(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::KeyParts;

    const MIB: u64 = 1024 * 1024;

    fn budget() -> MemoryBudget {
        MemoryBudget {
            cluster_bytes: 10 * MIB,
            total_bytes: 16 * MIB,
        }
    }

    #[test]
    fn a_cluster_is_refused_past_its_own_budget_only() {
        let b = budget();
        assert_eq!(b.admit(9 * MIB, 9 * MIB, 1, 0, MIB), Ok(()));
        assert_eq!(
            b.admit(9 * MIB, 9 * MIB, 1, 0, MIB + 1),
            Err(OverBudget::Cluster)
        );
        // Replacing a report counts the difference only.
        assert_eq!(b.admit(10 * MIB, 10 * MIB, 1, MIB, MIB), Ok(()));
        assert_eq!(b.admit(10 * MIB, 10 * MIB, 1, 2 * MIB, MIB), Ok(()));
        assert_eq!(
            b.admit(10 * MIB, 10 * MIB, 1, MIB, MIB + 1),
            Err(OverBudget::Cluster)
        );
    }

    #[test]
    fn the_total_refuses_clusters_over_their_fair_share_only() {
        let b = budget();
        // Two clusters, 8 MiB share each; 15.5 MiB held in all.
        let total = 15 * MIB + MIB / 2;
        assert_eq!(
            b.admit(9 * MIB, total, 2, 0, MIB),
            Err(OverBudget::Total),
            "the big one is over its share"
        );
        assert_eq!(
            b.admit(6 * MIB + MIB / 2, total, 2, 0, MIB),
            Ok(()),
            "the small one still grows to its share"
        );
        assert_eq!(
            b.admit(7 * MIB + MIB / 2, total, 2, 0, MIB),
            Err(OverBudget::Total),
            "but not past it"
        );
        // Under the total, shares do not matter.
        assert_eq!(b.admit(9 * MIB, 9 * MIB, 2, 0, MIB), Ok(()));
    }

    #[test]
    fn cost_counts_the_text_and_names() {
        let key = ObjectKey::new(KeyParts {
            workspace: "ws".into(),
            group: "apps".into(),
            version: "v1".into(),
            resource: "deployments".into(),
            kind: "Deployment".into(),
            namespace: Some("ns".into()),
            name: "web".into(),
        });
        let status = Status::of(&serde_json::json!({"a": [0, 0]}));
        let names = 2 + 4 + 2 + 11 + 10 + 2 + 3;
        assert_eq!(
            report_cost(&key, Some(&status), "uid"),
            REPORT_OVERHEAD + names + 3 + 11
        );
        assert_eq!(report_cost(&key, None, ""), REPORT_OVERHEAD + names);
    }
}
