//! Conflicts: what the clusters disagree on, how bad it is, whether the
//! strategy resolved it, and the `StatusConflict` condition that tells KCP
//! users about it.
//!
//! The condition is present (status `True`) while the object has any
//! conflict, resolved or not; reason `Unresolved` when at least one is open,
//! else `Resolved`. It is left out when there is none, so the merge patch
//! removes it once the clusters agree again. It has no
//! `lastTransitionTime`: the merged status is a pure function of the
//! clusters' reports, and a clock reading would make every merge differ.

use serde::Serialize;
use serde_json::{Map, Value, json};

use super::config::{OfflinePolicy, Strategy};
use super::rules::FieldPath;
use crate::store::ClusterName;

/// The condition type the hub owns in `status.conditions`.
pub const CONDITION_TYPE: &str = "StatusConflict";

/// Longest rendering of one disputed value in a message.
const VALUE_CHARS: usize = 60;

/// What kind of disagreement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum ConflictType {
    /// Clusters report different `observedGeneration`s: a new spec has not
    /// reached (or not been processed by) all of them.
    GenerationSkew,
    /// Clusters report different values for a field no rule merges.
    FieldDisagreement,
    /// A cluster reporting the object is Offline.
    ClusterOffline,
    /// An upsynced object's write dropped a change that KCP or the cluster
    /// made since the hub last wrote it (the `upsyncConflicts` strategy
    /// resolved it; see [`crate::writer::upsync`]). Never part of a merged
    /// status: the upsync writer records it beside the merge's conflicts.
    UpsyncConflict,
}

impl ConflictType {
    pub fn as_str(self) -> &'static str {
        match self {
            ConflictType::GenerationSkew => "GenerationSkew",
            ConflictType::FieldDisagreement => "FieldDisagreement",
            ConflictType::ClusterOffline => "ClusterOffline",
            ConflictType::UpsyncConflict => "UpsyncConflict",
        }
    }
}

/// How much a conflict matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Severity {
    /// Worth knowing; the merged status is still right for live clusters
    /// (an Offline cluster left out).
    Info,
    /// The merged status hides a difference (generation skew, disputed
    /// fields, an Offline cluster's old report kept).
    Warning,
    /// Nothing current is known (every reporting cluster is Offline).
    Critical,
}

/// One conflict on one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Conflict {
    #[serde(rename = "type")]
    pub kind: ConflictType,
    pub severity: Severity,
    /// What it is about: a field path, `status.observedGeneration`, or
    /// `clusters` for Offline clusters. With `kind`, identifies the conflict.
    pub subject: String,
    /// The clusters it names, sorted.
    pub clusters: Vec<ClusterName>,
    pub message: String,
    /// What resolved it (a strategy, or `offlinePolicy=...`); `None` while open.
    pub resolved_by: Option<String>,
}

impl Conflict {
    pub fn is_open(&self) -> bool {
        self.resolved_by.is_none()
    }

    /// Clusters report different values for `path`: each value with the
    /// clusters that report it.
    pub fn field_disagreement(
        path: &FieldPath,
        groups: &[(&Value, Vec<String>)],
        resolved_by: Option<Strategy>,
    ) -> Conflict {
        let mut clusters: Vec<ClusterName> = groups.iter().flat_map(|(_, c)| c.clone()).collect();
        clusters.sort();
        let sides: Vec<String> = groups
            .iter()
            .map(|(value, names)| format!("{} report {}", names.join(", "), short(value)))
            .collect();
        Conflict {
            kind: ConflictType::FieldDisagreement,
            severity: Severity::Warning,
            subject: path.to_string(),
            clusters,
            message: format!("{path} differs: {}", sides.join("; ")),
            resolved_by: resolved_by.map(|s| s.to_string()),
        }
    }

    /// Clusters at different observed generations: `(generation, clusters)`
    /// from the lowest generation up. Names the clusters behind the newest.
    pub fn generation_skew(
        levels: &[(i64, Vec<String>)],
        resolved_by: Option<Strategy>,
    ) -> Conflict {
        let newest = levels.last().map_or(0, |(g, _)| *g);
        let mut behind: Vec<ClusterName> = levels
            .iter()
            .filter(|(g, _)| *g < newest)
            .flat_map(|(_, c)| c.clone())
            .collect();
        behind.sort();
        let sides: Vec<String> = levels
            .iter()
            .rev()
            .map(|(generation, names)| format!("{} at {generation}", names.join(", ")))
            .collect();
        Conflict {
            kind: ConflictType::GenerationSkew,
            severity: Severity::Warning,
            subject: "status.observedGeneration".into(),
            message: format!(
                "{} behind generation {newest}: observedGeneration {}",
                behind.join(", "),
                sides.join("; ")
            ),
            clusters: behind,
            resolved_by: resolved_by.map(|s| s.to_string()),
        }
    }

    /// `offline` clusters report the object; `all` when no other does.
    pub fn cluster_offline(offline: &[ClusterName], policy: OfflinePolicy, all: bool) -> Conflict {
        let (severity, effect, resolved_by) = match (policy, all) {
            (_, true) => (
                Severity::Critical,
                "every reporting cluster is Offline; their last reports are kept",
                "offlinePolicy=keep",
            ),
            (OfflinePolicy::Exclude, false) => (
                Severity::Info,
                "their last reports are left out",
                "offlinePolicy=exclude",
            ),
            (OfflinePolicy::Keep, false) => (
                Severity::Warning,
                "their last reports are kept",
                "offlinePolicy=keep",
            ),
        };
        Conflict {
            kind: ConflictType::ClusterOffline,
            severity,
            subject: "clusters".into(),
            clusters: offline.to_vec(),
            message: format!("{} Offline; {effect}", offline.join(", ")),
            resolved_by: Some(resolved_by.into()),
        }
    }
}

/// Puts the `StatusConflict` condition describing `conflicts` into
/// `status.conditions`, replacing one the hub wrote before; with no
/// conflicts, removes it.
pub fn set_condition(status: &mut Value, conflicts: &[Conflict]) {
    let Some(object) = status.as_object_mut() else {
        return;
    };
    if let Some(Value::Array(conditions)) = object.get_mut("conditions") {
        conditions.retain(|c| c.get("type").and_then(Value::as_str) != Some(CONDITION_TYPE));
        if conditions.is_empty() && conflicts.is_empty() {
            object.remove("conditions");
        }
    }
    if conflicts.is_empty() {
        return;
    }
    let open = conflicts.iter().any(Conflict::is_open);
    let message: Vec<String> = conflicts
        .iter()
        .map(|c| {
            let state = match &c.resolved_by {
                Some(by) => format!("resolved by {by}"),
                None => "unresolved".to_owned(),
            };
            format!(
                "{} ({:?}, {state}): {}",
                c.kind.as_str(),
                c.severity,
                c.message
            )
        })
        .collect();
    let condition = json!({
        "type": CONDITION_TYPE,
        "status": "True",
        "reason": if open { "Unresolved" } else { "Resolved" },
        "message": message.join(" | "),
    });
    // A status whose conditions are not a list is left as reported.
    if let Value::Array(conditions) = object
        .entry("conditions")
        .or_insert_with(|| Value::Array(Vec::new()))
    {
        conditions.push(condition);
    }
}

/// A value for a message: its JSON, cut at [`VALUE_CHARS`] characters.
fn short(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() <= VALUE_CHARS {
        return text;
    }
    let cut: String = text.chars().take(VALUE_CHARS).collect();
    format!("{cut}...")
}

/// Conflicts as a JSON object keyed by `type/subject` (for tests and logs).
pub fn by_id(conflicts: &[Conflict]) -> Map<String, Value> {
    conflicts
        .iter()
        .map(|c| {
            (
                format!("{}/{}", c.kind.as_str(), c.subject),
                Value::from(c.clusters.clone()),
            )
        })
        .collect()
}
