//! The part of a Deployment's status the demo compares: replica counts, the
//! observed generation and the `Available` condition. KCP, a cluster and the
//! driver agree on an object when their summaries are equal.
//!
//! Counts that Kubernetes omits when zero (`readyReplicas` and friends) read
//! as zero, so an omitted field and an explicit `0` agree. Condition times and
//! messages are left out: they say when and why, not what.

use k8s_openapi::api::apps::v1::DeploymentStatus;

/// A comparable projection of a `DeploymentStatus`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusSummary {
    pub replicas: i32,
    pub ready_replicas: i32,
    pub available_replicas: i32,
    pub updated_replicas: i32,
    pub observed_generation: Option<i64>,
    /// The `status` of the `Available` condition (`True`, `False`, `Unknown`), if any.
    pub available: Option<String>,
}

impl StatusSummary {
    /// The summary of `status`; `None` when there is no status or it is empty
    /// (a freshly created object), so "no status yet" is visible as such.
    pub fn of(status: Option<&DeploymentStatus>) -> Option<StatusSummary> {
        let status = status.filter(|s| **s != DeploymentStatus::default())?;
        let available = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Available")
            .map(|c| c.status.clone());
        Some(StatusSummary {
            replicas: status.replicas.unwrap_or(0),
            ready_replicas: status.ready_replicas.unwrap_or(0),
            available_replicas: status.available_replicas.unwrap_or(0),
            updated_replicas: status.updated_replicas.unwrap_or(0),
            observed_generation: status.observed_generation,
            available,
        })
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::DeploymentCondition;

    use super::*;

    #[test]
    fn empty_status_is_no_status() {
        assert_eq!(StatusSummary::of(None), None);
        assert_eq!(StatusSummary::of(Some(&DeploymentStatus::default())), None);
    }

    #[test]
    fn omitted_counts_equal_zero_and_condition_details_do_not_matter() {
        let condition = |message: &str| DeploymentCondition {
            type_: "Available".into(),
            status: "False".into(),
            message: Some(message.into()),
            ..Default::default()
        };
        let omitted = DeploymentStatus {
            replicas: Some(3),
            observed_generation: Some(2),
            conditions: Some(vec![condition("one")]),
            ..Default::default()
        };
        let explicit = DeploymentStatus {
            replicas: Some(3),
            ready_replicas: Some(0),
            available_replicas: Some(0),
            updated_replicas: Some(0),
            observed_generation: Some(2),
            conditions: Some(vec![condition("two")]),
            ..Default::default()
        };
        let summary = StatusSummary::of(Some(&omitted));
        assert_eq!(summary, StatusSummary::of(Some(&explicit)));
        assert_eq!(summary.and_then(|s| s.available).as_deref(), Some("False"));
    }

    #[test]
    fn a_different_generation_is_a_different_status() {
        let at = |generation| DeploymentStatus {
            replicas: Some(3),
            observed_generation: Some(generation),
            ..Default::default()
        };
        assert_ne!(
            StatusSummary::of(Some(&at(1))),
            StatusSummary::of(Some(&at(2)))
        );
    }
}
