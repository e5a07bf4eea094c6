//! The merge policy: which strategy each resource type uses, which field
//! rules apply, how clusters are ranked and what an Offline cluster's last
//! report contributes. Read from a YAML file (`--config`); a bad file is
//! refused at start with a message naming its line.
//!
//! ```yaml
//! defaultStrategy: Newest        # Newest | Oldest | Priority | Quorum | All | Union | Manual
//! offlinePolicy: exclude         # exclude (default) | keep
//! priority:                      # ranks clusters for Priority (default: by name)
//!   clusters: [east, west]       # or: label: uplink.io/priority (higher integer first)
//! clusters:                      # labels the hub gives clusters, for priority by label
//!   east: {labels: {uplink.io/priority: "10"}}
//! resources:
//!   - resource: deployments.apps # <plural>.<group>; core types without a group: pods
//!     strategy: Manual
//!     priority: {clusters: [west, east]}
//!     kindMerge: true            # built-in merge of known kinds (default true)
//!     upsyncConflicts: ThreeWayMerge  # ServerWins | ClientWins | ThreeWayMerge (default): upsynced objects
//!     fields:                    # rules per JSON path under status
//!       - {path: status.readyShards, rule: sum}   # sum | min | max | union | newest | priority | conditions
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use super::rules::{FieldPath, FieldRule, Rule};
use crate::store::ClusterName;

/// How the values several clusters report for one field, or one object,
/// become one value when they disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Strategy {
    /// The cluster whose report is newest, on skew-corrected clocks.
    Newest,
    /// The cluster whose report is oldest, on skew-corrected clocks.
    Oldest,
    /// The first cluster in the priority order.
    Priority,
    /// The value more than half of the contributing clusters report; without
    /// a majority the conflict stays open.
    Quorum,
    /// Only a unanimous value; otherwise the conflict stays open.
    All,
    /// Objects and lists merged (union of keys, union of elements); scalars
    /// that still disagree go by priority.
    Union,
    /// Nothing disputed is written; conflicts stay open for a person.
    Manual,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Newest => "Newest",
            Strategy::Oldest => "Oldest",
            Strategy::Priority => "Priority",
            Strategy::Quorum => "Quorum",
            Strategy::All => "All",
            Strategy::Union => "Union",
            Strategy::Manual => "Manual",
        }
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who wins when KCP and the cluster both changed an upsynced object since
/// the hub last wrote it (see [`crate::writer::upsync`]). Compared per leaf
/// JSON path of the content the cluster manages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum UpsyncConflicts {
    /// A path both changed keeps KCP's value; the cluster's changes of
    /// other paths still apply.
    ServerWins,
    /// The cluster's object, whole: KCP's changes are overwritten.
    ClientWins,
    /// What `kubectl apply` does: a path both changed takes the cluster's
    /// value, and changes only KCP made are kept.
    #[default]
    ThreeWayMerge,
}

impl UpsyncConflicts {
    /// Every value, as the policy file spells it.
    pub const ALL: [UpsyncConflicts; 3] = [
        UpsyncConflicts::ServerWins,
        UpsyncConflicts::ClientWins,
        UpsyncConflicts::ThreeWayMerge,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UpsyncConflicts::ServerWins => "ServerWins",
            UpsyncConflicts::ClientWins => "ClientWins",
            UpsyncConflicts::ThreeWayMerge => "ThreeWayMerge",
        }
    }

    /// The value the policy file spells `text`.
    pub fn from_name(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|value| value.as_str() == text)
    }
}

impl std::fmt::Display for UpsyncConflicts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the last report of an Offline cluster contributes to the merge.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OfflinePolicy {
    /// Left out of the merge (unless every reporting cluster is Offline: then
    /// their last reports are all there is, and are kept).
    #[default]
    Exclude,
    /// Merged like any other report.
    Keep,
}

/// How clusters are ranked for `Priority`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum PriorityOrder {
    /// These clusters first, in this order; the others after them, by name.
    Clusters(Vec<ClusterName>),
    /// Clusters with a higher integer value of this label first; clusters
    /// without it (or with a non-integer) after them; ties by name.
    Label(String),
}

impl Default for PriorityOrder {
    fn default() -> Self {
        PriorityOrder::Clusters(Vec::new())
    }
}

/// The policy for one resource type.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourcePolicy {
    pub strategy: Strategy,
    /// `None`: the policy-wide order.
    pub priority: Option<PriorityOrder>,
    /// Whether the built-in merge of known kinds (Deployment, Job, ...) applies.
    pub kind_merge: bool,
    /// Field rules; they take precedence over the built-in kind rules.
    pub fields: Vec<FieldRule>,
    /// For upsynced objects of the type: who wins a path that KCP and the
    /// cluster both changed.
    pub upsync_conflicts: UpsyncConflicts,
}

impl Default for ResourcePolicy {
    fn default() -> Self {
        Self {
            strategy: Strategy::Newest,
            priority: None,
            kind_merge: true,
            fields: Vec::new(),
            upsync_conflicts: UpsyncConflicts::default(),
        }
    }
}

/// The whole merge policy. `Default`: `Newest` with kind merges for every
/// type, Offline clusters excluded, priority by cluster name.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MergePolicy {
    /// For resource types without an entry in `resources`.
    pub default: ResourcePolicy,
    /// By `<plural>.<group>` (or `<plural>` for the core group).
    pub resources: BTreeMap<String, ResourcePolicy>,
    pub offline: OfflinePolicy,
    pub priority: PriorityOrder,
    /// Labels of clusters, for `PriorityOrder::Label`.
    pub cluster_labels: BTreeMap<ClusterName, BTreeMap<String, String>>,
}

impl MergePolicy {
    /// The policy of resource `resource` in API group `group` ("" for core).
    pub fn resource(&self, group: &str, resource: &str) -> &ResourcePolicy {
        let name = if group.is_empty() {
            resource.to_owned()
        } else {
            format!("{resource}.{group}")
        };
        self.resources.get(&name).unwrap_or(&self.default)
    }

    /// The priority order for `policy`'s resource type.
    pub fn priority_for<'a>(&'a self, policy: &'a ResourcePolicy) -> &'a PriorityOrder {
        policy.priority.as_ref().unwrap_or(&self.priority)
    }

    /// Reads and checks a policy file.
    pub fn load(path: &Path) -> Result<MergePolicy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|e| e.in_file(path))
    }

    /// Parses and checks a policy document.
    pub fn parse(text: &str) -> Result<MergePolicy, PolicyError> {
        let blank = text
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'));
        if blank {
            return Ok(MergePolicy::default());
        }
        let file: PolicyFile = serde_saphyr::from_str(text).map_err(|error| {
            // The first line of saphyr's message is "error: line L column C:
            // what"; the rest is a source snippet we do not need in a log line.
            let full = error.to_string();
            let first = full.lines().next().unwrap_or_default();
            let message = first.strip_prefix("error: ").unwrap_or(first).to_owned();
            let line = error.location().map(|l| l.line()).unwrap_or(0);
            PolicyError::Invalid {
                file: String::new(),
                line,
                message: if message.starts_with("line ") {
                    message
                } else {
                    format!("line {line}: {message}")
                },
            }
        })?;
        file.check()
    }
}

/// Why a policy file was refused.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("reading merge policy {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// `message` starts with `line N`.
    #[error("merge policy {file}{sep}{message}", sep = if file.is_empty() { "" } else { ": " })]
    Invalid {
        file: String,
        line: u64,
        message: String,
    },
}

impl PolicyError {
    fn in_file(self, path: &Path) -> Self {
        match self {
            PolicyError::Invalid { line, message, .. } => PolicyError::Invalid {
                file: path.display().to_string(),
                line,
                message,
            },
            other => other,
        }
    }

    /// The line the error is about (1-based), when it is about one.
    pub fn line(&self) -> Option<u64> {
        match self {
            PolicyError::Invalid { line, .. } => Some(*line),
            PolicyError::Read { .. } => None,
        }
    }
}

fn invalid<T>(at: &Spanned<T>, message: String) -> PolicyError {
    let line = at.referenced.line();
    PolicyError::Invalid {
        file: String::new(),
        line,
        message: format!("line {line}: {message}"),
    }
}

// The file's shape. Separate from `MergePolicy` so that what is read can be
// checked, with line numbers, before anything is built.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PolicyFile {
    #[serde(default)]
    default_strategy: Option<Strategy>,
    #[serde(default)]
    offline_policy: Option<OfflinePolicy>,
    #[serde(default)]
    priority: Option<PriorityFile>,
    #[serde(default)]
    clusters: BTreeMap<String, ClusterFile>,
    #[serde(default)]
    resources: Vec<ResourceFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PriorityFile {
    #[serde(default)]
    clusters: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    label: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterFile {
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ResourceFile {
    resource: Spanned<String>,
    #[serde(default)]
    strategy: Option<Strategy>,
    #[serde(default)]
    priority: Option<Spanned<PriorityFile>>,
    #[serde(default)]
    kind_merge: Option<bool>,
    #[serde(default)]
    fields: Vec<FieldFile>,
    /// Read as text so that a wrong value is refused naming the resource.
    #[serde(default)]
    upsync_conflicts: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FieldFile {
    path: Spanned<String>,
    rule: Rule,
}

impl PolicyFile {
    fn check(self) -> Result<MergePolicy, PolicyError> {
        let mut policy = MergePolicy {
            offline: self.offline_policy.unwrap_or_default(),
            cluster_labels: self
                .clusters
                .into_iter()
                .map(|(name, c)| (name, c.labels))
                .collect(),
            ..MergePolicy::default()
        };
        policy.default.strategy = self.default_strategy.unwrap_or(Strategy::Newest);
        if let Some(priority) = self.priority {
            policy.priority = priority.check(None)?;
        }
        for resource in self.resources {
            let name = resource.resource.value.trim().to_owned();
            if !is_resource_name(&name) {
                return Err(invalid(
                    &resource.resource,
                    format!(
                        "resource {name:?} is not <plural>.<group> or <plural> (lowercase, like deployments.apps or pods)"
                    ),
                ));
            }
            if policy.resources.contains_key(&name) {
                return Err(invalid(
                    &resource.resource,
                    format!("resource {name} is configured twice"),
                ));
            }
            let priority = match resource.priority {
                Some(p) => {
                    let line = p.referenced.line();
                    Some(p.value.check(Some(line))?)
                }
                None => None,
            };
            let mut fields: Vec<FieldRule> = Vec::with_capacity(resource.fields.len());
            for field in resource.fields {
                let path: FieldPath = field
                    .path
                    .value
                    .parse()
                    .map_err(|e: String| invalid(&field.path, e))?;
                if let Some(other) = fields
                    .iter()
                    .find(|f| f.path.starts_with(&path) || path.starts_with(&f.path))
                {
                    return Err(invalid(
                        &field.path,
                        format!("field rule {path} overlaps the rule for {}", other.path),
                    ));
                }
                fields.push(FieldRule {
                    path,
                    rule: field.rule,
                });
            }
            let upsync_conflicts = match resource.upsync_conflicts {
                None => UpsyncConflicts::default(),
                Some(value) => {
                    let text = value.value.trim();
                    UpsyncConflicts::from_name(text).ok_or_else(|| {
                        invalid(
                            &value,
                            format!(
                                "resource {name}: upsyncConflicts {text:?} is not one of ServerWins, ClientWins, ThreeWayMerge"
                            ),
                        )
                    })?
                }
            };
            policy.resources.insert(
                name,
                ResourcePolicy {
                    strategy: resource.strategy.unwrap_or(policy.default.strategy),
                    priority,
                    kind_merge: resource.kind_merge.unwrap_or(true),
                    fields,
                    upsync_conflicts,
                },
            );
        }
        Ok(policy)
    }
}

impl PriorityFile {
    /// `line`: where the enclosing `priority:` is, when known.
    fn check(self, line: Option<u64>) -> Result<PriorityOrder, PolicyError> {
        let here = |message: String| {
            let line = line.unwrap_or(0);
            PolicyError::Invalid {
                file: String::new(),
                line,
                message: format!("line {line}: {message}"),
            }
        };
        match (self.clusters, self.label) {
            (Some(_), Some(label)) => Err(invalid(
                &label,
                "priority takes either clusters or label, not both".into(),
            )),
            (Some(clusters), None) => {
                if clusters.value.is_empty() {
                    return Err(invalid(&clusters, "priority.clusters is empty".into()));
                }
                let mut seen = BTreeSet::new();
                for name in &clusters.value {
                    if name.trim().is_empty() {
                        return Err(invalid(
                            &clusters,
                            "priority.clusters has an empty name".into(),
                        ));
                    }
                    if !seen.insert(name) {
                        return Err(invalid(
                            &clusters,
                            format!("priority.clusters lists {name} twice"),
                        ));
                    }
                }
                Ok(PriorityOrder::Clusters(clusters.value))
            }
            (None, Some(label)) => {
                if label.value.trim().is_empty() {
                    return Err(invalid(&label, "priority.label is empty".into()));
                }
                Ok(PriorityOrder::Label(label.value))
            }
            (None, None) => Err(here("priority needs clusters or label".into())),
        }
    }
}

/// `deployments.apps`, `pods`, `widgets.example.com`.
fn is_resource_name(name: &str) -> bool {
    !name.is_empty()
        && name.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(text: &str) -> PolicyError {
        match MergePolicy::parse(text) {
            Ok(policy) => panic!("accepted {policy:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn the_shipped_sample_policy_is_valid() {
        let sample = include_str!("../../../deploy/hub/merge-policy.yaml");
        let policy = MergePolicy::parse(sample).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(policy.resource("", "pods").strategy, Strategy::Priority);
        assert_eq!(
            policy.resource("example.com", "widgets").strategy,
            Strategy::Manual
        );
    }

    #[test]
    fn reads_a_full_policy() {
        let policy = MergePolicy::parse(
            "defaultStrategy: Oldest\n\
             offlinePolicy: keep\n\
             priority:\n  label: tier\n\
             clusters:\n  east: {labels: {tier: '2'}}\n\
             resources:\n\
             \x20 - resource: deployments.apps\n\
             \x20   strategy: Manual\n\
             \x20   priority: {clusters: [west, east]}\n\
             \x20   fields:\n\
             \x20     - {path: status.readyShards, rule: sum}\n\
             \x20 - resource: pods\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(policy.default.strategy, Strategy::Oldest);
        assert_eq!(policy.offline, OfflinePolicy::Keep);
        assert_eq!(policy.priority, PriorityOrder::Label("tier".into()));
        let deployments = policy.resource("apps", "deployments");
        assert_eq!(deployments.strategy, Strategy::Manual);
        assert_eq!(
            deployments.priority,
            Some(PriorityOrder::Clusters(vec!["west".into(), "east".into()]))
        );
        assert_eq!(deployments.fields[0].rule, Rule::Sum);
        assert_eq!(deployments.fields[0].path.to_string(), "status.readyShards");
        assert_eq!(policy.resource("", "pods").strategy, Strategy::Oldest);
        assert_eq!(policy.resource("", "services").strategy, Strategy::Oldest);
        assert_eq!(policy.cluster_labels["east"]["tier"], "2");
        assert_eq!(MergePolicy::parse("").ok(), Some(MergePolicy::default()));
        assert_eq!(
            MergePolicy::parse("# nothing yet\n").ok(),
            Some(MergePolicy::default())
        );
    }

    #[test]
    fn errors_name_the_bad_line() {
        let cases = [
            (
                "resources:\n  - resource: pods\n    strategy: Latest\n",
                3,
                "Latest",
            ),
            (
                "resources:\n  - resource: pods\n    strateg: Newest\n",
                3,
                "strateg",
            ),
            ("offlinePolicy: drop\n", 1, "drop"),
            (
                "resources:\n  - resource: pods\n    fields:\n      - {path: spec.x, rule: sum}\n",
                4,
                "spec.x",
            ),
            (
                "resources:\n  - resource: pods\n    fields:\n      - {path: status.a, rule: sum}\n      - {path: status.a.b, rule: max}\n",
                5,
                "overlaps",
            ),
            (
                "resources:\n  - resource: pods\n    fields:\n      - {path: status.a, rule: average}\n",
                4,
                "average",
            ),
            ("priority:\n  clusters: []\n", 2, "empty"),
            ("priority:\n  clusters: [a, b, a]\n", 2, "twice"),
            ("resources:\n  - resource: Deployments\n", 2, "Deployments"),
            (
                "resources:\n  - resource: pods\n  - resource: pods\n",
                3,
                "twice",
            ),
        ];
        for (text, line, word) in cases {
            let error = error_of(text);
            let message = error.to_string();
            assert_eq!(error.line(), Some(line), "{message}");
            assert!(message.contains(&format!("line {line}")), "{message}");
            assert!(message.contains(word), "{message} should name {word}");
        }
    }

    #[test]
    fn upsync_conflicts_per_resource() {
        let policy = MergePolicy::parse(
            "resources:\n  - resource: persistentvolumes\n    upsyncConflicts: ServerWins\n  - resource: configmaps\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            policy.resource("", "persistentvolumes").upsync_conflicts,
            UpsyncConflicts::ServerWins
        );
        assert_eq!(
            policy.resource("", "configmaps").upsync_conflicts,
            UpsyncConflicts::ThreeWayMerge
        );
        assert_eq!(
            policy.resource("apps", "deployments").upsync_conflicts,
            UpsyncConflicts::ThreeWayMerge
        );
    }

    #[test]
    fn an_unknown_upsync_conflicts_value_names_file_resource_and_value() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("policy.yaml");
        std::fs::write(
            &path,
            "resources:\n  - resource: persistentvolumes\n    upsyncConflicts: KcpWins\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let message = MergePolicy::load(&path)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        for part in ["policy.yaml", "line 3", "persistentvolumes", "KcpWins"] {
            assert!(message.contains(part), "{message} should name {part}");
        }
    }

    #[test]
    fn file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("policy.yaml");
        std::fs::write(&path, "defaultStrategy: Nope\n").unwrap_or_else(|e| panic!("{e}"));
        let message = MergePolicy::load(&path)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(message.contains("policy.yaml: line 1"), "{message}");
    }
}
