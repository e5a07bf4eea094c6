//! Turns an observed object into the status that travels to the hub.
//!
//! Only status travels: the watch stage already dropped everything but
//! `.status`, and for the kinds Uplink knows, this stage keeps only the status
//! fields the hub merges (an allowlist, so a field added to a kind later does
//! not start travelling by accident). Any other kind sends its whole `.status`.

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::watch::ObservedObject;

/// The part of an object the hub receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtractedStatus {
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// `status.observedGeneration`, when the kind has one.
    pub observed_generation: Option<i64>,
    /// The (filtered) status as compact JSON text. Keys are sorted, so equal
    /// statuses give equal text and "did it change" is a string comparison.
    /// Shared: the inventory and the outbox hold the same text.
    pub status_json: Arc<str>,
}

/// The status fields kept per kind; `None` keeps the whole `.status`.
fn allowed_fields(group: &str, kind: &str) -> Option<&'static [&'static str]> {
    const CONDITIONS: &str = "conditions";
    const OBSERVED: &str = "observedGeneration";
    Some(match (group, kind) {
        ("apps", "Deployment") => &[
            OBSERVED,
            "replicas",
            "updatedReplicas",
            "readyReplicas",
            "availableReplicas",
            "unavailableReplicas",
            "terminatingReplicas",
            "collisionCount",
            CONDITIONS,
        ],
        ("apps", "StatefulSet") => &[
            OBSERVED,
            "replicas",
            "readyReplicas",
            "currentReplicas",
            "updatedReplicas",
            "availableReplicas",
            "currentRevision",
            "updateRevision",
            "collisionCount",
            CONDITIONS,
        ],
        ("apps", "DaemonSet") => &[
            OBSERVED,
            "currentNumberScheduled",
            "numberMisscheduled",
            "desiredNumberScheduled",
            "numberReady",
            "updatedNumberScheduled",
            "numberAvailable",
            "numberUnavailable",
            "collisionCount",
            CONDITIONS,
        ],
        ("apps", "ReplicaSet") => &[
            OBSERVED,
            "replicas",
            "fullyLabeledReplicas",
            "readyReplicas",
            "availableReplicas",
            "terminatingReplicas",
            CONDITIONS,
        ],
        ("batch", "Job") => &[
            "active",
            "succeeded",
            "failed",
            "ready",
            "terminating",
            "startTime",
            "completionTime",
            "completedIndexes",
            "failedIndexes",
            CONDITIONS,
        ],
        ("", "Pod") => &[
            OBSERVED,
            "phase",
            "reason",
            "message",
            "hostIP",
            "hostIPs",
            "podIP",
            "podIPs",
            "startTime",
            "qosClass",
            "containerStatuses",
            "initContainerStatuses",
            "ephemeralContainerStatuses",
            CONDITIONS,
        ],
        ("", "Service") => &["loadBalancer", CONDITIONS],
        _ => return None,
    })
}

/// Whether `object`'s `.status` can travel at all: the hub takes a JSON
/// object (no status travels as `{}`) and refuses anything else, so an object
/// whose `.status` is a string, number or list (a CRD can do that) is not
/// sent; see [`crate::inventory`].
pub fn status_is_sendable(object: &ObservedObject) -> bool {
    matches!(object.status, Value::Object(_) | Value::Null)
}

/// Extracts the travelling status of `object` (check
/// [`status_is_sendable`] first).
pub fn extract(object: &ObservedObject) -> ExtractedStatus {
    let status = match (
        &object.status,
        allowed_fields(&object.resource.spec.group, &object.resource.kind),
    ) {
        (Value::Object(fields), Some(allowed)) => Value::Object(
            fields
                .iter()
                .filter(|(k, _)| allowed.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<Map<_, _>>(),
        ),
        // No status yet: an empty object, so the hub sees "exists, no status".
        (Value::Null, _) => Value::Object(Map::new()),
        (other, _) => other.clone(),
    };
    let observed_generation = status.get("observedGeneration").and_then(Value::as_i64);
    ExtractedStatus {
        generation: object.generation,
        observed_generation,
        status_json: status.to_string().into(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::watch::WatchedResource;

    fn observed(spec: &str, kind: &str, status: Value) -> ObservedObject {
        ObservedObject {
            resource: Arc::new(WatchedResource {
                spec: spec.parse().unwrap(),
                kind: kind.into(),
                namespaced: true,
                upsync: false,
            }),
            namespace: Some("ns".into()),
            name: "web".into(),
            uid: "u1".into(),
            generation: Some(4),
            status,
            upsync: None,
        }
    }

    fn parsed(e: &ExtractedStatus) -> Value {
        serde_json::from_str(&e.status_json).unwrap()
    }

    #[test]
    fn only_object_statuses_are_sendable() {
        for (status, sendable) in [
            (json!({"phase": "Running"}), true),
            (Value::Null, true),
            (json!("Running"), false),
            (json!([1, 2]), false),
            (json!(3), false),
        ] {
            let object = observed("widgets.v1.example.com", "Widget", status.clone());
            assert_eq!(status_is_sendable(&object), sendable, "{status}");
        }
    }

    #[test]
    fn deployment_keeps_replica_counts_and_conditions_only() {
        let e = extract(&observed(
            "deployments.v1.apps",
            "Deployment",
            json!({
                "observedGeneration": 3,
                "replicas": 2,
                "readyReplicas": 1,
                "conditions": [{"type": "Available", "status": "True"}],
                "somethingNew": "x",
            }),
        ));
        assert_eq!(e.generation, Some(4));
        assert_eq!(e.observed_generation, Some(3));
        assert_eq!(
            parsed(&e),
            json!({"observedGeneration": 3, "replicas": 2, "readyReplicas": 1, "conditions": [{"type": "Available", "status": "True"}]})
        );
    }

    #[test]
    fn pod_service_job_allowlists() {
        let pod = extract(&observed(
            "pods.v1",
            "Pod",
            json!({"phase": "Running", "nominatedNodeName": "n"}),
        ));
        assert_eq!(parsed(&pod), json!({"phase": "Running"}));
        let svc = extract(&observed(
            "services.v1",
            "Service",
            json!({"loadBalancer": {"ingress": [{"ip": "10.0.0.1"}]}}),
        ));
        assert_eq!(
            parsed(&svc),
            json!({"loadBalancer": {"ingress": [{"ip": "10.0.0.1"}]}})
        );
        let job = extract(&observed(
            "jobs.v1.batch",
            "Job",
            json!({"succeeded": 1, "uncountedTerminatedPods": {}}),
        ));
        assert_eq!(parsed(&job), json!({"succeeded": 1}));
        assert_eq!(job.observed_generation, None);
    }

    #[test]
    fn other_kinds_send_the_whole_status() {
        let status = json!({"phase": "Ready", "observedGeneration": 9, "custom": {"a": [1, 2]}});
        let e = extract(&observed(
            "widgets.v1.example.com",
            "Widget",
            status.clone(),
        ));
        assert_eq!(parsed(&e), status);
        assert_eq!(e.observed_generation, Some(9));
    }

    #[test]
    fn missing_status_is_an_empty_object_and_text_is_canonical() {
        let e = extract(&observed("deployments.v1.apps", "Deployment", Value::Null));
        assert_eq!(&*e.status_json, "{}");
        let a = extract(&observed(
            "widgets.v1.example.com",
            "Widget",
            json!({"b": 1, "a": 2}),
        ));
        let b = extract(&observed(
            "widgets.v1.example.com",
            "Widget",
            json!({"a": 2, "b": 1}),
        ));
        assert_eq!(a.status_json, b.status_json);
    }
}
