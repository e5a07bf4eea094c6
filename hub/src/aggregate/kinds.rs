//! Built-in merges of the kinds Uplink knows, as field rules. A field no rule
//! names goes to the resource type's strategy.
//!
//! | kind | rules |
//! |---|---|
//! | Deployment | sum of `replicas`, `updatedReplicas`, `readyReplicas`, `availableReplicas`, `unavailableReplicas`, `terminatingReplicas`; lowest `observedGeneration`; highest `collisionCount`; conditions combined |
//! | ReplicaSet | sum of `replicas`, `fullyLabeledReplicas`, `readyReplicas`, `availableReplicas`, `terminatingReplicas`; lowest `observedGeneration`; conditions combined |
//! | StatefulSet | sum of `replicas`, `readyReplicas`, `currentReplicas`, `updatedReplicas`, `availableReplicas`; lowest `observedGeneration`; highest `collisionCount`; conditions combined (revisions go to the strategy) |
//! | DaemonSet | sum of `currentNumberScheduled`, `desiredNumberScheduled`, `numberAvailable`, `numberMisscheduled`, `numberReady`, `numberUnavailable`, `updatedNumberScheduled`; lowest `observedGeneration`; highest `collisionCount`; conditions combined |
//! | Job | sum of `active`, `succeeded`, `failed`, `ready`, `terminating`; earliest `startTime`; latest `completionTime` only when every cluster completed; conditions combined (`Complete` only when all are, `Failed` when any is) |
//! | Pod | the whole status of the highest-priority cluster |
//! | Service | union of `loadBalancer.ingress`; conditions combined |
//! | anything else | lowest `observedGeneration`; conditions combined |
//!
//! "Conditions combined" is the rule in [`super::conditions`].

use super::rules::{FieldRule, Rule};

/// The built-in rules for `kind` in API group `group`.
pub fn rules_for(group: &str, kind: &str) -> Vec<FieldRule> {
    let sums = |fields: &[&str]| -> Vec<FieldRule> {
        fields
            .iter()
            .map(|f| FieldRule::new(&[f], Rule::Sum))
            .collect()
    };
    let workload = |fields: &[&str], collision: bool| {
        let mut rules = sums(fields);
        rules.push(FieldRule::new(&["observedGeneration"], Rule::Min));
        rules.push(FieldRule::new(&["conditions"], Rule::Conditions));
        if collision {
            rules.push(FieldRule::new(&["collisionCount"], Rule::Max));
        }
        rules
    };
    match (group, kind) {
        ("apps", "Deployment") => workload(
            &[
                "replicas",
                "updatedReplicas",
                "readyReplicas",
                "availableReplicas",
                "unavailableReplicas",
                "terminatingReplicas",
            ],
            true,
        ),
        ("apps", "ReplicaSet") => workload(
            &[
                "replicas",
                "fullyLabeledReplicas",
                "readyReplicas",
                "availableReplicas",
                "terminatingReplicas",
            ],
            false,
        ),
        ("apps", "StatefulSet") => workload(
            &[
                "replicas",
                "readyReplicas",
                "currentReplicas",
                "updatedReplicas",
                "availableReplicas",
            ],
            true,
        ),
        ("apps", "DaemonSet") => workload(
            &[
                "currentNumberScheduled",
                "desiredNumberScheduled",
                "numberAvailable",
                "numberMisscheduled",
                "numberReady",
                "numberUnavailable",
                "updatedNumberScheduled",
            ],
            true,
        ),
        ("batch", "Job") => {
            let mut rules = sums(&["active", "succeeded", "failed", "ready", "terminating"]);
            rules.push(FieldRule::new(&["startTime"], Rule::Min));
            rules.push(FieldRule::new(&["completionTime"], Rule::MaxWhenAll));
            rules.push(FieldRule::new(&["conditions"], Rule::Conditions));
            rules
        }
        ("", "Pod") => vec![FieldRule::new(&[], Rule::Priority)],
        ("", "Service") => vec![
            FieldRule::new(&["loadBalancer", "ingress"], Rule::Union),
            FieldRule::new(&["conditions"], Rule::Conditions),
            FieldRule::new(&["observedGeneration"], Rule::Min),
        ],
        _ => vec![
            FieldRule::new(&["observedGeneration"], Rule::Min),
            FieldRule::new(&["conditions"], Rule::Conditions),
        ],
    }
}
