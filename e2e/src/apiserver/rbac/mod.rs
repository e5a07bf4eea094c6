//! Authorization as kube-apiserver does it with `--authorization-mode=RBAC`:
//! members of `system:masters` may do anything (the privileged-group
//! authorizer that runs first); everyone else may do what the rules of the
//! Roles and ClusterRoles bound to them allow, evaluated rule by rule as
//! kube's RBAC authorizer does (verbs, API groups, resources and
//! `resource/subresource`, `*/subresource`, resourceNames, nonResourceURLs
//! with a trailing `*`, wildcards). Denials become kube's 403 `Status`.
//! kcp's wildcard `/clusters/*` is authorized as the logical cluster `*`,
//! which no workspace is: as in kcp, only `system:masters` may use it.
//!
//! [`attributes`] turns a request into what is authorized (kube's
//! RequestInfo); [`policy`] holds the bootstrap roles and bindings every
//! cluster starts with and the ClusterRole aggregation controller.

pub(crate) mod attributes;
pub(crate) mod policy;

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Value, json};

use super::authn::UserInfo;
use super::path::WILDCARD;
use super::status::ApiError;
use super::store::{Filter, Scope, Store};

pub(crate) use attributes::Attributes;

/// The API group of RBAC objects.
pub(crate) const GROUP: &str = "rbac.authorization.k8s.io";

/// The group whose members the privileged-group authorizer allows everything.
pub(crate) const MASTERS: &str = "system:masters";

/// kcp's reason for refusing a request in a logical cluster the user may
/// not access (here: `/clusters/*` to anyone but [`MASTERS`]).
const WORKSPACE_ACCESS_NOT_PERMITTED: &str = "workspace access not permitted";

/// One rule of a Role or ClusterRole.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct PolicyRule {
    pub verbs: Vec<String>,
    pub api_groups: Vec<String>,
    pub resources: Vec<String>,
    pub resource_names: Vec<String>,
    #[serde(rename = "nonResourceURLs")]
    pub non_resource_urls: Vec<String>,
}

fn any_is(list: &[String], wanted: &str) -> bool {
    list.iter().any(|x| x == "*" || x == wanted)
}

impl PolicyRule {
    /// kube's `RuleAllows`.
    pub fn allows(&self, attrs: &Attributes) -> bool {
        match attrs {
            Attributes::Resource {
                verb,
                group,
                resource,
                subresource,
                name,
                ..
            } => {
                let combined = if subresource.is_empty() {
                    resource.clone()
                } else {
                    format!("{resource}/{subresource}")
                };
                any_is(&self.verbs, verb)
                    && any_is(&self.api_groups, group)
                    && self.resources.iter().any(|r| {
                        r == "*"
                            || *r == combined
                            || (!subresource.is_empty()
                                && r.strip_prefix("*/") == Some(subresource.as_str()))
                    })
                    && (self.resource_names.is_empty() || self.resource_names.contains(name))
            }
            Attributes::NonResource { verb, path } => {
                any_is(&self.verbs, verb)
                    && self.non_resource_urls.iter().any(|u| {
                        u == "*"
                            || u == path
                            || u.strip_suffix('*')
                                .is_some_and(|prefix| path.starts_with(prefix))
                    })
            }
        }
    }

    /// The rule as JSON (for SelfSubjectRulesReview).
    fn resource_rule_json(&self) -> Value {
        let mut v = json!({ "verbs": self.verbs, "apiGroups": self.api_groups, "resources": self.resources });
        if !self.resource_names.is_empty() {
            v["resourceNames"] = json!(self.resource_names);
        }
        v
    }
}

/// The outcome of authorizing one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Decision {
    pub allowed: bool,
    /// Why, as kube words it (`RBAC: allowed by ...`), or the errors met
    /// while resolving roles for a denial; empty when nothing is to be said.
    pub reason: String,
}

/// A binding's subject.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
struct Subject {
    kind: String,
    name: String,
    namespace: String,
}

impl Subject {
    /// kube's `appliesToUser`; `binding_namespace` is "" for ClusterRoleBindings.
    fn applies_to(&self, user: &UserInfo, binding_namespace: &str) -> bool {
        match self.kind.as_str() {
            "User" => user.name == self.name,
            "Group" => user.groups.contains(&self.name),
            "ServiceAccount" => {
                let ns = if self.namespace.is_empty() {
                    binding_namespace
                } else {
                    &self.namespace
                };
                !ns.is_empty() && user.name == format!("system:serviceaccount:{ns}:{}", self.name)
            }
            _ => false,
        }
    }

    /// As kube's rule resolver describes it in reasons.
    fn describe(&self, binding_namespace: &str) -> String {
        if self.kind == "ServiceAccount" {
            let ns = if self.namespace.is_empty() {
                binding_namespace
            } else {
                &self.namespace
            };
            format!("{} {:?}", self.kind, format!("{}/{ns}", self.name))
        } else {
            format!("{} {:?}", self.kind, self.name)
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct RoleRef {
    kind: String,
    name: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Binding {
    subjects: Vec<Subject>,
    role_ref: RoleRef,
}

fn parse<T: for<'de> Deserialize<'de> + Default>(object: &Value) -> T {
    serde_json::from_value(object.clone()).unwrap_or_default()
}

fn object_name(object: &Value) -> &str {
    super::object::meta_str(object, "name").unwrap_or_default()
}

/// The rules of a role, parsed.
pub(crate) fn rules_of(role: &Value) -> Vec<PolicyRule> {
    role.get("rules")
        .and_then(Value::as_array)
        .map(|rules| rules.iter().map(parse).collect())
        .unwrap_or_default()
}

fn key(plural: &str) -> (String, String) {
    (GROUP.to_string(), plural.to_string())
}

/// Reads the RBAC objects of one workspace (and, in a KCP workspace, the
/// bootstrap policy, which kcp applies to every workspace).
struct Policies<'a> {
    store: &'a Store,
    workspace: &'a str,
}

impl Policies<'_> {
    fn list(&self, plural: &str, namespace: Option<&str>) -> Vec<Arc<Value>> {
        let filter = Filter {
            namespace: namespace.map(str::to_string),
            ..Filter::default()
        };
        let stored = self
            .store
            .list(
                &Scope::Workspace(self.workspace.to_string()),
                &key(plural),
                &filter,
                None,
                None,
                None,
            )
            .map(|page| page.items)
            .unwrap_or_default();
        if self.workspace.is_empty() || plural != "clusterrolebindings" {
            return stored;
        }
        let mut all: Vec<Arc<Value>> = policy::bootstrap_bindings()
            .into_iter()
            .filter(|b| stored.iter().all(|s| object_name(s) != object_name(b)))
            .map(Arc::new)
            .collect();
        all.extend(stored);
        all
    }

    /// The rules a binding's roleRef points at, or the error kube reports.
    fn role_rules(&self, role_ref: &RoleRef, namespace: &str) -> Result<Vec<PolicyRule>, String> {
        let (plural, ns) = match role_ref.kind.as_str() {
            "Role" => ("roles", namespace),
            "ClusterRole" => ("clusterroles", ""),
            other => return Err(format!("unsupported role reference kind: {other:?}")),
        };
        let stored = self
            .store
            .get(self.workspace, &key(plural), ns, &role_ref.name);
        let role = match stored {
            Some(role) => Some((*role).clone()),
            None if !self.workspace.is_empty() && plural == "clusterroles" => {
                policy::bootstrap_cluster_role(&role_ref.name)
            }
            None => None,
        };
        role.map(|r| rules_of(&r)).ok_or_else(|| {
            format!(
                "{}.{GROUP} {:?} not found",
                role_ref.kind.to_lowercase(),
                role_ref.name
            )
        })
    }

    /// kube's `VisitRulesFor`: cluster role bindings first, then the role
    /// bindings of `namespace`. The visitor returns false to stop.
    fn visit(
        &self,
        user: &UserInfo,
        namespace: &str,
        mut visitor: impl FnMut(&str, &PolicyRule) -> bool,
        errors: &mut Vec<String>,
    ) {
        let mut scopes = vec![("clusterrolebindings", None)];
        if !namespace.is_empty() {
            scopes.push(("rolebindings", Some(namespace)));
        }
        for (plural, ns) in scopes {
            for object in self.list(plural, ns) {
                let binding: Binding = parse(&object);
                let binding_ns = ns.unwrap_or_default();
                let Some(subject) = binding
                    .subjects
                    .iter()
                    .find(|s| s.applies_to(user, binding_ns))
                else {
                    continue;
                };
                let rules = match self.role_rules(&binding.role_ref, binding_ns) {
                    Ok(rules) => rules,
                    Err(error) => {
                        errors.push(error);
                        continue;
                    }
                };
                let source = match ns {
                    None => format!(
                        "ClusterRoleBinding {:?} of {} {:?} to {}",
                        object_name(&object),
                        binding.role_ref.kind,
                        binding.role_ref.name,
                        subject.describe("")
                    ),
                    Some(ns) => format!(
                        "RoleBinding {:?} of {} {:?} to {}",
                        format!("{}/{ns}", object_name(&object)),
                        binding.role_ref.kind,
                        binding.role_ref.name,
                        subject.describe(ns)
                    ),
                };
                for rule in &rules {
                    if !visitor(&source, rule) {
                        return;
                    }
                }
            }
        }
    }
}

/// Whether `user` may do what `attrs` describe in `workspace`.
pub(crate) fn authorize(
    store: &Store,
    workspace: &str,
    user: &UserInfo,
    attrs: &Attributes,
) -> Decision {
    if user.groups.iter().any(|g| g == MASTERS) {
        return Decision {
            allowed: true,
            reason: String::new(),
        };
    }
    if workspace == WILDCARD {
        // kcp's workspace content authorizer finds no logical cluster named
        // `*`, so nothing but the privileged group above may use it.
        return Decision {
            allowed: false,
            reason: WORKSPACE_ACCESS_NOT_PERMITTED.to_string(),
        };
    }
    let policies = Policies { store, workspace };
    let mut allowed_by = None;
    let mut errors = Vec::new();
    policies.visit(
        user,
        attrs.namespace(),
        |source, rule| {
            if rule.allows(attrs) {
                allowed_by = Some(format!("RBAC: allowed by {source}"));
                return false;
            }
            true
        },
        &mut errors,
    );
    match allowed_by {
        Some(reason) => Decision {
            allowed: true,
            reason,
        },
        None if errors.is_empty() => Decision {
            allowed: false,
            reason: String::new(),
        },
        None => Decision {
            allowed: false,
            reason: format!("RBAC: {}", join_errors(&errors)),
        },
    }
}

/// utilerrors' aggregate format: one error as is, several in brackets.
fn join_errors(errors: &[String]) -> String {
    match errors {
        [one] => one.clone(),
        many => format!("[{}]", many.join(", ")),
    }
}

/// What `user` may do in `namespace`, as SelfSubjectRulesReview reports it:
/// (resourceRules, nonResourceRules, evaluationError).
pub(crate) fn rules_for(
    store: &Store,
    workspace: &str,
    user: &UserInfo,
    namespace: &str,
) -> (Vec<Value>, Vec<Value>, Option<String>) {
    let mut resource_rules = Vec::new();
    let mut non_resource_rules = Vec::new();
    if user.groups.iter().any(|g| g == MASTERS) {
        resource_rules.push(json!({ "verbs": ["*"], "apiGroups": ["*"], "resources": ["*"] }));
        non_resource_rules.push(json!({ "verbs": ["*"], "nonResourceURLs": ["*"] }));
    }
    if workspace == WILDCARD {
        let error = WORKSPACE_ACCESS_NOT_PERMITTED.to_string();
        return (resource_rules, non_resource_rules, Some(error));
    }
    let mut errors = Vec::new();
    Policies { store, workspace }.visit(
        user,
        namespace,
        |_, rule| {
            if !rule.resources.is_empty() {
                resource_rules.push(rule.resource_rule_json());
            }
            if !rule.non_resource_urls.is_empty() {
                non_resource_rules.push(
                    json!({ "verbs": rule.verbs, "nonResourceURLs": rule.non_resource_urls }),
                );
            }
            true
        },
        &mut errors,
    );
    let error = (!errors.is_empty()).then(|| join_errors(&errors));
    (resource_rules, non_resource_rules, error)
}

/// kube's 403: `<resource> "<name>" is forbidden: User "<u>" cannot <verb> ...`.
pub(crate) fn forbidden(user: &UserInfo, attrs: &Attributes, reason: &str) -> ApiError {
    let mut detail = match attrs {
        Attributes::NonResource { verb, path } => {
            format!("User {:?} cannot {verb} path {path:?}", user.name)
        }
        Attributes::Resource {
            verb,
            group,
            resource,
            subresource,
            namespace,
            ..
        } => {
            let what = if subresource.is_empty() {
                resource.clone()
            } else {
                format!("{resource}/{subresource}")
            };
            let scope = if namespace.is_empty() {
                "at the cluster scope".to_string()
            } else {
                format!("in the namespace {namespace:?}")
            };
            format!(
                "User {:?} cannot {verb} resource {what:?} in API group {group:?} {scope}",
                user.name
            )
        }
    };
    if !reason.is_empty() {
        detail = format!("{detail}: {reason}");
    }
    match attrs {
        Attributes::NonResource { .. } => ApiError::forbidden("", "", "", &detail),
        Attributes::Resource {
            group,
            resource,
            name,
            ..
        } => ApiError::forbidden(group, resource, name, &detail),
    }
}

#[cfg(test)]
mod tests;
