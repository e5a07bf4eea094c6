//! The RBAC objects kube-apiserver creates at start (its bootstrap policy):
//! `cluster-admin` for `system:masters`, the user-facing `admin`, `edit` and
//! `view` (aggregated from the `system:aggregate-to-*` roles), discovery and
//! self-review access for every authenticated user, public health and
//! version information for everyone, and the roles components use for
//! delegated authentication and monitoring. Also the ClusterRole
//! aggregation controller, which kube-controller-manager runs.

use std::sync::{Arc, OnceLock};

use serde_json::{Map, Value, json};

use super::{GROUP, MASTERS, PolicyRule, rules_of};
use crate::apiserver::object::{self, meta_str};
use crate::apiserver::selector::LabelSelector;
use crate::apiserver::store::{Decision, Filter, NameChoice, Scope, Store};

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];
const READ_WRITE: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

const AGGREGATE_TO_ADMIN: &str = "rbac.authorization.k8s.io/aggregate-to-admin";
const AGGREGATE_TO_EDIT: &str = "rbac.authorization.k8s.io/aggregate-to-edit";
const AGGREGATE_TO_VIEW: &str = "rbac.authorization.k8s.io/aggregate-to-view";

/// A resource rule.
fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> Value {
    json!({ "apiGroups": groups, "resources": resources, "verbs": verbs })
}

/// A non-resource rule.
fn urls(verbs: &[&str], urls: &[&str]) -> Value {
    json!({ "nonResourceURLs": urls, "verbs": verbs })
}

fn metadata(name: &str, labels: &[&str]) -> Value {
    let mut label_map = Map::new();
    label_map.insert("kubernetes.io/bootstrapping".into(), json!("rbac-defaults"));
    for label in labels {
        label_map.insert((*label).to_string(), json!("true"));
    }
    json!({
        "name": name,
        "labels": label_map,
        "annotations": { "rbac.authorization.kubernetes.io/autoupdate": "true" },
    })
}

fn cluster_role(name: &str, labels: &[&str], rules: Vec<Value>) -> Value {
    json!({
        "apiVersion": format!("{GROUP}/v1"),
        "kind": "ClusterRole",
        "metadata": metadata(name, labels),
        "rules": rules,
    })
}

/// A ClusterRole whose rules are those of the ClusterRoles labelled `selector=true`.
fn aggregated_role(name: &str, labels: &[&str], selector: &str) -> Value {
    let mut role = cluster_role(name, labels, Vec::new());
    role["aggregationRule"] =
        json!({ "clusterRoleSelectors": [{ "matchLabels": { selector: "true" } }] });
    role
}

fn cluster_role_binding(role: &str, groups: &[&str]) -> Value {
    let subjects: Vec<Value> = groups
        .iter()
        .map(|g| json!({ "apiGroup": GROUP, "kind": "Group", "name": g }))
        .collect();
    json!({
        "apiVersion": format!("{GROUP}/v1"),
        "kind": "ClusterRoleBinding",
        "metadata": metadata(role, &[]),
        "roleRef": { "apiGroup": GROUP, "kind": "ClusterRole", "name": role },
        "subjects": subjects,
    })
}

/// The bootstrap ClusterRoles, with the aggregated ones' rules filled in.
pub(crate) fn bootstrap_cluster_roles() -> &'static [Value] {
    static ROLES: OnceLock<Vec<Value>> = OnceLock::new();
    ROLES.get_or_init(|| {
        let mut roles = declared_cluster_roles();
        // Three rounds settle the chain view -> edit -> admin.
        for _ in 0..3 {
            let current: Vec<Arc<Value>> = roles.iter().cloned().map(Arc::new).collect();
            for role in &mut roles {
                if let Some(rules) = aggregate_rules(role, &current) {
                    role["rules"] = Value::Array(rules);
                }
            }
        }
        roles
    })
}

/// A bootstrap ClusterRole by name.
pub(crate) fn bootstrap_cluster_role(name: &str) -> Option<Value> {
    bootstrap_cluster_roles()
        .iter()
        .find(|r| meta_str(r, "name") == Some(name))
        .cloned()
}

/// The bootstrap ClusterRoleBindings.
pub(crate) fn bootstrap_bindings() -> Vec<Value> {
    vec![
        cluster_role_binding("cluster-admin", &[MASTERS]),
        cluster_role_binding("system:basic-user", &["system:authenticated"]),
        cluster_role_binding("system:discovery", &["system:authenticated"]),
        cluster_role_binding(
            "system:public-info-viewer",
            &["system:authenticated", "system:unauthenticated"],
        ),
        cluster_role_binding("system:monitoring", &["system:monitoring"]),
    ]
}

/// kube-apiserver's bootstrap ClusterRoles (those a client can tell apart),
/// as declared: `admin`, `edit` and `view` without their aggregated rules.
fn declared_cluster_roles() -> Vec<Value> {
    let core = &[""];
    vec![
        cluster_role(
            "cluster-admin",
            &[],
            vec![rule(&["*"], &["*"], &["*"]), urls(&["*"], &["*"])],
        ),
        aggregated_role("admin", &[], AGGREGATE_TO_ADMIN),
        aggregated_role("edit", &[AGGREGATE_TO_ADMIN], AGGREGATE_TO_EDIT),
        aggregated_role("view", &[AGGREGATE_TO_EDIT], AGGREGATE_TO_VIEW),
        cluster_role(
            "system:aggregate-to-admin",
            &[AGGREGATE_TO_ADMIN],
            vec![
                rule(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["localsubjectaccessreviews"],
                ),
                rule(READ_WRITE, &[GROUP], &["rolebindings", "roles"]),
            ],
        ),
        cluster_role(
            "system:aggregate-to-edit",
            &[AGGREGATE_TO_EDIT],
            vec![
                rule(
                    READ,
                    core,
                    &[
                        "pods/attach",
                        "pods/exec",
                        "pods/portforward",
                        "pods/proxy",
                        "secrets",
                        "services/proxy",
                    ],
                ),
                rule(&["impersonate"], core, &["serviceaccounts"]),
                rule(
                    WRITE,
                    core,
                    &[
                        "pods",
                        "pods/attach",
                        "pods/exec",
                        "pods/portforward",
                        "pods/proxy",
                    ],
                ),
                rule(&["create"], core, &["pods/eviction"]),
                rule(
                    WRITE,
                    core,
                    &[
                        "configmaps",
                        "events",
                        "persistentvolumeclaims",
                        "replicationcontrollers",
                        "replicationcontrollers/scale",
                        "secrets",
                        "serviceaccounts",
                        "services",
                        "services/proxy",
                    ],
                ),
                rule(&["create"], core, &["serviceaccounts/token"]),
                rule(
                    WRITE,
                    &["apps"],
                    &[
                        "daemonsets",
                        "deployments",
                        "deployments/rollback",
                        "deployments/scale",
                        "replicasets",
                        "replicasets/scale",
                        "statefulsets",
                        "statefulsets/scale",
                    ],
                ),
                rule(WRITE, &["autoscaling"], &["horizontalpodautoscalers"]),
                rule(WRITE, &["batch"], &["cronjobs", "jobs"]),
                rule(
                    WRITE,
                    &["extensions"],
                    &[
                        "daemonsets",
                        "deployments",
                        "deployments/rollback",
                        "deployments/scale",
                        "ingresses",
                        "networkpolicies",
                        "replicasets",
                        "replicasets/scale",
                        "replicationcontrollers/scale",
                    ],
                ),
                rule(WRITE, &["policy"], &["poddisruptionbudgets"]),
                rule(
                    WRITE,
                    &["networking.k8s.io"],
                    &["ingresses", "networkpolicies"],
                ),
                rule(READ_WRITE, &["coordination.k8s.io"], &["leases"]),
            ],
        ),
        cluster_role(
            "system:aggregate-to-view",
            &[AGGREGATE_TO_VIEW],
            vec![
                rule(
                    READ,
                    core,
                    &[
                        "configmaps",
                        "endpoints",
                        "persistentvolumeclaims",
                        "persistentvolumeclaims/status",
                        "pods",
                        "replicationcontrollers",
                        "replicationcontrollers/scale",
                        "serviceaccounts",
                        "services",
                        "services/status",
                    ],
                ),
                rule(
                    READ,
                    core,
                    &[
                        "bindings",
                        "events",
                        "limitranges",
                        "namespaces/status",
                        "pods/log",
                        "pods/status",
                        "replicationcontrollers/status",
                        "resourcequotas",
                        "resourcequotas/status",
                    ],
                ),
                rule(READ, core, &["namespaces"]),
                rule(READ, &["discovery.k8s.io"], &["endpointslices"]),
                rule(
                    READ,
                    &["apps"],
                    &[
                        "controllerrevisions",
                        "daemonsets",
                        "daemonsets/status",
                        "deployments",
                        "deployments/scale",
                        "deployments/status",
                        "replicasets",
                        "replicasets/scale",
                        "replicasets/status",
                        "statefulsets",
                        "statefulsets/scale",
                        "statefulsets/status",
                    ],
                ),
                rule(
                    READ,
                    &["autoscaling"],
                    &[
                        "horizontalpodautoscalers",
                        "horizontalpodautoscalers/status",
                    ],
                ),
                rule(
                    READ,
                    &["batch"],
                    &["cronjobs", "cronjobs/status", "jobs", "jobs/status"],
                ),
                rule(
                    READ,
                    &["extensions"],
                    &[
                        "daemonsets",
                        "daemonsets/status",
                        "deployments",
                        "deployments/scale",
                        "deployments/status",
                        "ingresses",
                        "ingresses/status",
                        "networkpolicies",
                        "replicasets",
                        "replicasets/scale",
                        "replicasets/status",
                        "replicationcontrollers/scale",
                    ],
                ),
                rule(
                    READ,
                    &["policy"],
                    &["poddisruptionbudgets", "poddisruptionbudgets/status"],
                ),
                rule(
                    READ,
                    &["networking.k8s.io"],
                    &["ingresses", "ingresses/status", "networkpolicies"],
                ),
            ],
        ),
        cluster_role(
            "system:auth-delegator",
            &[],
            vec![
                rule(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
                rule(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["subjectaccessreviews"],
                ),
            ],
        ),
        cluster_role(
            "system:basic-user",
            &[],
            vec![
                rule(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                ),
                rule(
                    &["create"],
                    &["authentication.k8s.io"],
                    &["selfsubjectreviews"],
                ),
            ],
        ),
        cluster_role(
            "system:discovery",
            &[],
            vec![urls(
                &["get"],
                &[
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                    "/healthz",
                    "/livez",
                    "/openapi",
                    "/openapi/*",
                    "/readyz",
                    "/version",
                    "/version/",
                ],
            )],
        ),
        cluster_role(
            "system:monitoring",
            &[],
            vec![urls(
                &["get"],
                &[
                    "/healthz",
                    "/healthz/*",
                    "/livez",
                    "/livez/*",
                    "/metrics",
                    "/metrics/slis",
                    "/readyz",
                    "/readyz/*",
                ],
            )],
        ),
        cluster_role(
            "system:public-info-viewer",
            &[],
            vec![urls(
                &["get"],
                &["/healthz", "/livez", "/readyz", "/version", "/version/"],
            )],
        ),
    ]
}

/// A `metav1.LabelSelector` (matchLabels, matchExpressions) as a parsed
/// selector; `None` when it cannot match anything kube would accept.
fn label_selector(selector: &Value) -> Option<LabelSelector> {
    let mut terms = Vec::new();
    for (k, v) in selector
        .get("matchLabels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        terms.push(format!("{k}={}", v.as_str()?));
    }
    for expr in selector
        .get("matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let key = expr.get("key").and_then(Value::as_str)?;
        let values: Vec<&str> = expr
            .get("values")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        terms.push(match expr.get("operator").and_then(Value::as_str)? {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" => key.to_string(),
            "DoesNotExist" => format!("!{key}"),
            _ => return None,
        });
    }
    LabelSelector::parse(&terms.join(",")).ok()
}

/// The rules an aggregated ClusterRole should have, given all ClusterRoles;
/// `None` for a role without an aggregationRule. As kube's controller:
/// selectors in order, matching roles by name, each distinct rule once.
fn aggregate_rules(role: &Value, all: &[Arc<Value>]) -> Option<Vec<Value>> {
    let selectors = role
        .pointer("/aggregationRule/clusterRoleSelectors")?
        .as_array()?;
    let own_name = meta_str(role, "name");
    let mut sorted: Vec<&Arc<Value>> = all.iter().collect();
    sorted.sort_by(|a, b| meta_str(a, "name").cmp(&meta_str(b, "name")));
    let mut rules: Vec<Value> = Vec::new();
    let mut seen: Vec<PolicyRule> = Vec::new();
    for selector in selectors {
        let Some(selector) = label_selector(selector) else {
            continue;
        };
        for other in sorted
            .iter()
            .filter(|o| meta_str(o, "name") != own_name && selector.matches(o))
        {
            let raw = other.get("rules").and_then(Value::as_array);
            for (parsed, raw) in rules_of(other).into_iter().zip(raw.into_iter().flatten()) {
                if !seen.contains(&parsed) {
                    seen.push(parsed);
                    rules.push(raw.clone());
                }
            }
        }
    }
    Some(rules)
}

fn cluster_roles_key() -> (String, String) {
    (GROUP.to_string(), "clusterroles".to_string())
}

/// Stores an object as kube-apiserver's bootstrap does, unless it exists.
fn create_if_missing(store: &Store, plural: &str, object: &Value) {
    let name = meta_str(object, "name").unwrap_or_default().to_string();
    let written = store.write(
        "",
        &(GROUP.to_string(), plural.to_string()),
        "",
        NameChoice::Exact(name),
        false,
        |_, _, current| {
            if current.is_some() {
                return Ok(Decision::Keep);
            }
            let mut object = object.clone();
            object::set_meta(
                &mut object,
                "uid",
                Some(json!(uuid::Uuid::new_v4().to_string())),
            );
            object::set_meta(
                &mut object,
                "creationTimestamp",
                Some(json!(object::now_rfc3339())),
            );
            Ok(Decision::Put(object))
        },
    );
    if let Err(error) = written {
        tracing::warn!(?error, plural, "storing a bootstrap RBAC object failed");
    }
}

/// Creates the bootstrap policy in the physical cluster (workspace "").
/// KCP workspaces are not seeded: there the authorizer falls back to the
/// bootstrap policy itself, as kcp's bootstrap authorizer does.
pub(crate) fn bootstrap(store: &Store) {
    for role in bootstrap_cluster_roles() {
        create_if_missing(store, "clusterroles", role);
    }
    for binding in bootstrap_bindings() {
        create_if_missing(store, "clusterrolebindings", &binding);
    }
}

/// The ClusterRole aggregation controller's pass over one workspace: every
/// ClusterRole with an aggregationRule gets the rules of the ClusterRoles
/// its selectors match. Runs after each ClusterRole write; repeats until
/// nothing changes (aggregated roles may feed each other).
pub(crate) fn aggregate(store: &Store, workspace: &str) {
    let key = cluster_roles_key();
    for _ in 0..4 {
        let all = store
            .list(
                &Scope::Workspace(workspace.to_string()),
                &key,
                &Filter::default(),
                None,
                None,
                None,
            )
            .map(|page| page.items)
            .unwrap_or_default();
        let mut changed = false;
        for role in &all {
            let Some(rules) = aggregate_rules(role, &all) else {
                continue;
            };
            if role.get("rules") == Some(&Value::Array(rules.clone())) {
                continue;
            }
            let name = meta_str(role, "name").unwrap_or_default().to_string();
            let written = store.write(
                workspace,
                &key,
                "",
                NameChoice::Exact(name),
                false,
                |_, _, current| {
                    let Some(current) = current else {
                        return Ok(Decision::Keep);
                    };
                    let mut next = (**current).clone();
                    next["rules"] = Value::Array(rules.clone());
                    Ok(Decision::Put(next))
                },
            );
            match written {
                Ok(_) => changed = true,
                Err(error) => tracing::warn!(?error, "aggregating a ClusterRole failed"),
            }
        }
        if !changed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(name: &str) -> Value {
        bootstrap_cluster_role(name).unwrap_or_else(|| panic!("no bootstrap role {name}"))
    }

    fn has_rule(role: &Value, verb: &str, group: &str, resource: &str) -> bool {
        rules_of(role).iter().any(|r| {
            r.verbs.iter().any(|v| v == verb)
                && r.api_groups.iter().any(|g| g == group)
                && r.resources.iter().any(|x| x == resource)
        })
    }

    #[test]
    fn aggregated_roles_nest_view_in_edit_in_admin() {
        let (view, edit, admin) = (role("view"), role("edit"), role("admin"));
        assert!(has_rule(&view, "list", "", "pods"));
        assert!(!has_rule(&view, "list", "", "secrets"));
        assert!(
            has_rule(&edit, "list", "", "pods") && has_rule(&edit, "create", "apps", "deployments")
        );
        assert!(has_rule(&edit, "list", "", "secrets"));
        assert!(!has_rule(&edit, "create", GROUP, "roles"));
        assert!(has_rule(&admin, "create", GROUP, "roles") && has_rule(&admin, "get", "", "pods"));
        // Each distinct rule once, however many paths lead to it.
        let rules = rules_of(&admin);
        for (i, r) in rules.iter().enumerate() {
            assert!(!rules[i + 1..].contains(r), "duplicate rule {r:?}");
        }
    }

    #[test]
    fn selectors_from_json() {
        let selector = label_selector(&json!({
            "matchLabels": {"a": "1"},
            "matchExpressions": [{"key": "b", "operator": "In", "values": ["x", "y"]}, {"key": "c", "operator": "DoesNotExist"}]
        }))
        .unwrap_or_else(|| panic!("valid selector"));
        let labelled = |labels: Value| json!({"metadata": {"labels": labels}});
        assert!(selector.matches(&labelled(json!({"a": "1", "b": "y"}))));
        assert!(!selector.matches(&labelled(json!({"a": "1", "b": "y", "c": "z"}))));
        assert!(!selector.matches(&labelled(json!({"a": "2", "b": "y"}))));
        assert!(
            label_selector(&json!({"matchExpressions": [{"key": "b", "operator": "Near"}]}))
                .is_none()
        );
    }
}
