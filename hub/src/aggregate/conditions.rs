//! Kubernetes conditions from several clusters combined into one list.
//!
//! The rule, per condition type, over the contributing clusters (Offline
//! clusters are not contributing under `offlinePolicy: exclude`):
//!
//! - A *positive* condition (`Available`, `Progressing`, `Complete`,
//!   `Ready`, anything not listed below) is `True` only when every
//!   contributing cluster reports it `True`; `False` when any reports it
//!   `False`; otherwise `Unknown` (a cluster does not report it yet).
//! - A *negative* condition (`Failed`, `ReplicaFailure`, `FailureTarget`,
//!   `Degraded`, and types ending in `Failure`, `Failed` or `Pressure`) is
//!   `True` when any cluster reports it `True`, `False` when all that report
//!   it say `False`, otherwise `Unknown`.
//!
//! The combined condition copies the fields of the first cluster (by name)
//! whose status equals the combined one (else of the first reporting it);
//! `lastTransitionTime` and `lastUpdateTime` are the latest among the
//! clusters with the combined status, `observedGeneration` the lowest. When
//! clusters differ, the message ends with who says what, e.g.
//! `(True: a, b; False: c; missing: d)`. Conditions are sorted by type. The
//! hub's own conditions (`StatusConflict`, `StatusReported`,
//! `DownstreamApplied`) are never taken from a cluster.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::Report;
use super::conflict::CONDITION_TYPE;
use super::rules::{Votes, compare};

const NEGATIVE: [&str; 4] = ["Failed", "ReplicaFailure", "FailureTarget", "Degraded"];

/// The hub's condition on an object some cluster refused to apply: `False`,
/// the reason of the first refusal (`Conflict`, `Invalid`, `Forbidden`,
/// `Malformed`), and every cluster's refusal in the message. Absent while
/// every cluster applies it.
pub const APPLY_CONDITION: &str = "DownstreamApplied";

/// Puts the `DownstreamApplied` condition for `failures` (cluster → reason,
/// message) into `status.conditions`, replacing one the hub wrote before;
/// with none, removes it.
pub fn set_apply_failures(status: &mut Value, failures: &BTreeMap<String, (String, String)>) {
    let Some(object) = status.as_object_mut() else {
        return;
    };
    if let Some(Value::Array(conditions)) = object.get_mut("conditions") {
        conditions.retain(|c| c.get("type").and_then(Value::as_str) != Some(APPLY_CONDITION));
        if conditions.is_empty() && failures.is_empty() {
            object.remove("conditions");
        }
    }
    let Some((_, (first_reason, _))) = failures.iter().next() else {
        return;
    };
    let mut reason = first_reason.clone();
    if let Some(first) = reason.get_mut(..1) {
        first.make_ascii_uppercase();
    }
    let message: Vec<String> = failures
        .iter()
        .map(|(cluster, (reason, message))| format!("cluster {cluster}: {reason}: {message}"))
        .collect();
    let condition = serde_json::json!({
        "type": APPLY_CONDITION,
        "status": "False",
        "reason": reason,
        "message": message.join("; "),
    });
    if let Value::Array(conditions) = object
        .entry("conditions")
        .or_insert_with(|| Value::Array(Vec::new()))
    {
        conditions.push(condition);
    }
}

/// Whether `True` is bad news for condition type `kind`.
pub fn is_negative(kind: &str) -> bool {
    NEGATIVE.contains(&kind)
        || kind.ends_with("Failure")
        || kind.ends_with("Failed")
        || kind.ends_with("Pressure")
}

/// Combines the condition lists in `votes` (one list per cluster that has
/// one) over all `reports`.
pub(crate) fn combine(reports: &[Report<'_>], votes: &Votes<'_>) -> Value {
    // type -> report index -> condition
    let mut by_type: BTreeMap<&str, BTreeMap<usize, &Map<String, Value>>> = BTreeMap::new();
    for (index, list) in votes {
        for condition in list.as_array().into_iter().flatten() {
            let Some(object) = condition.as_object() else {
                continue;
            };
            let Some(kind) = object.get("type").and_then(Value::as_str) else {
                continue;
            };
            if kind == CONDITION_TYPE
                || kind == crate::writer::NOT_REPORTED_CONDITION
                || kind == APPLY_CONDITION
            {
                continue;
            }
            // A cluster listing a type twice: the first one counts.
            by_type
                .entry(kind)
                .or_default()
                .entry(*index)
                .or_insert(object);
        }
    }
    let combined = by_type
        .into_iter()
        .map(|(kind, reported)| Value::Object(combine_one(kind, reports, &reported)))
        .collect();
    Value::Array(combined)
}

fn status_of(condition: &Map<String, Value>) -> &str {
    match condition.get("status").and_then(Value::as_str) {
        Some("True") => "True",
        Some("False") => "False",
        _ => "Unknown",
    }
}

fn combine_one(
    kind: &str,
    reports: &[Report<'_>],
    reported: &BTreeMap<usize, &Map<String, Value>>,
) -> Map<String, Value> {
    let says = |status: &str| reported.values().any(|c| status_of(c) == status);
    let everyone_true =
        reported.len() == reports.len() && reported.values().all(|c| status_of(c) == "True");
    let status = if is_negative(kind) {
        if says("True") {
            "True"
        } else if says("Unknown") {
            "Unknown"
        } else {
            "False"
        }
    } else if everyone_true {
        "True"
    } else if says("False") {
        "False"
    } else {
        "Unknown"
    };

    let agreeing: Vec<&Map<String, Value>> = reported
        .values()
        .copied()
        .filter(|c| status_of(c) == status)
        .collect();
    // `reported` is never empty: a type exists because some cluster has it.
    let base = agreeing
        .first()
        .or_else(|| reported.values().next())
        .copied();
    let mut merged = base.cloned().unwrap_or_default();
    merged.insert("status".into(), Value::from(status));
    for field in ["lastTransitionTime", "lastUpdateTime"] {
        let latest = agreeing.iter().filter_map(|c| c.get(field)).reduce(|a, b| {
            if compare(b, a) == Some(Ordering::Greater) {
                b
            } else {
                a
            }
        });
        if let Some(latest) = latest {
            merged.insert(field.into(), latest.clone());
        }
    }
    let lowest = reported
        .values()
        .filter_map(|c| c.get("observedGeneration").and_then(Value::as_i64))
        .min();
    if let Some(lowest) = lowest {
        merged.insert("observedGeneration".into(), Value::from(lowest));
    }

    let unanimous = reported.len() == reports.len() && agreeing.len() == reports.len();
    if !unanimous {
        let mut sides: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (index, report) in reports.iter().enumerate() {
            let said = reported.get(&index).map_or("missing", |c| status_of(c));
            sides.entry(said).or_default().push(report.cluster);
        }
        let order = ["True", "False", "Unknown", "missing"];
        let summary: Vec<String> = order
            .iter()
            .filter_map(|s| {
                sides
                    .get(s)
                    .map(|names| format!("{s}: {}", names.join(", ")))
            })
            .collect();
        let message = merged
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let message = if message.is_empty() {
            format!("({})", summary.join("; "))
        } else {
            format!("{message} ({})", summary.join("; "))
        };
        merged.insert("message".into(), Value::from(message));
        if agreeing.is_empty() {
            merged.insert("reason".into(), Value::from("NotReportedByAllClusters"));
        }
    }
    merged
}
