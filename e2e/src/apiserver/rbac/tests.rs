//! The authorizer against kube's documented rule semantics.

use serde_json::json;

use super::*;
use crate::apiserver::store::{Decision, NameChoice, Store};

fn rule(v: serde_json::Value) -> PolicyRule {
    serde_json::from_value(v).unwrap_or_else(|e| panic!("{e}"))
}

fn resource(verb: &str, group: &str, resource: &str, sub: &str, name: &str) -> Attributes {
    Attributes::Resource {
        verb: verb.into(),
        group: group.into(),
        version: "v1".into(),
        namespace: "ns".into(),
        resource: resource.into(),
        subresource: sub.into(),
        name: name.into(),
    }
}

fn path(verb: &str, path: &str) -> Attributes {
    Attributes::NonResource {
        verb: verb.into(),
        path: path.into(),
    }
}

#[test]
fn rules_match_verbs_groups_resources_and_names() {
    let r = rule(
        json!({"verbs": ["get", "list"], "apiGroups": ["apps"], "resources": ["deployments"]}),
    );
    assert!(r.allows(&resource("get", "apps", "deployments", "", "web")));
    assert!(!r.allows(&resource("delete", "apps", "deployments", "", "web")));
    assert!(!r.allows(&resource("get", "", "deployments", "", "web")));
    assert!(!r.allows(&resource("get", "apps", "deployments", "status", "web")));

    let named = rule(
        json!({"verbs": ["get"], "apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["one"]}),
    );
    assert!(named.allows(&resource("get", "", "configmaps", "", "one")));
    assert!(!named.allows(&resource("get", "", "configmaps", "", "two")));
    assert!(!named.allows(&resource("get", "", "configmaps", "", "")));

    let wild = rule(json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}));
    assert!(wild.allows(&resource(
        "escalate",
        "rbac.authorization.k8s.io",
        "roles",
        "",
        "x"
    )));
    assert!(
        !wild.allows(&path("get", "/healthz")),
        "resource rules never match paths"
    );
}

#[test]
fn subresources_match_exactly_or_through_star_slash() {
    let logs = rule(json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods/log"]}));
    assert!(logs.allows(&resource("get", "", "pods", "log", "p")));
    assert!(!logs.allows(&resource("get", "", "pods", "", "p")));
    let any_status =
        rule(json!({"verbs": ["update"], "apiGroups": ["*"], "resources": ["*/status"]}));
    assert!(any_status.allows(&resource("update", "apps", "deployments", "status", "d")));
    assert!(!any_status.allows(&resource("update", "apps", "deployments", "scale", "d")));
    assert!(!any_status.allows(&resource("update", "apps", "deployments", "", "d")));
}

#[test]
fn non_resource_urls_match_exactly_or_by_prefix_star() {
    let r = rule(json!({"verbs": ["get"], "nonResourceURLs": ["/healthz", "/apis/*"]}));
    assert!(r.allows(&path("get", "/healthz")));
    assert!(!r.allows(&path("get", "/healthz/etcd")));
    assert!(r.allows(&path("get", "/apis/apps/v1")));
    assert!(!r.allows(&path("post", "/healthz")));
    assert!(!r.allows(&resource("get", "", "healthz", "", "")));
}

fn user(name: &str, groups: &[&str]) -> UserInfo {
    UserInfo {
        name: name.into(),
        groups: groups.iter().map(|g| (*g).to_string()).collect(),
        ..UserInfo::default()
    }
}

fn put(store: &Store, plural: &str, namespace: &str, object: serde_json::Value) {
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    store
        .write(
            "",
            &(GROUP.to_string(), plural.to_string()),
            namespace,
            NameChoice::Exact(name),
            false,
            |_, _, _| Ok(Decision::Put(object)),
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
}

#[test]
fn bindings_grant_their_roles_rules_to_their_subjects() {
    let store = Store::new(100, 10);
    policy::bootstrap(&store);
    put(
        &store,
        "roles",
        "ns",
        json!({"metadata": {"name": "reader", "namespace": "ns"},
        "rules": [{"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods"]}]}),
    );
    put(
        &store,
        "rolebindings",
        "ns",
        json!({"metadata": {"name": "read", "namespace": "ns"},
        "roleRef": {"apiGroup": GROUP, "kind": "Role", "name": "reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "sa"}]}),
    );
    let sa = user(
        "system:serviceaccount:ns:sa",
        &["system:serviceaccounts", "system:authenticated"],
    );
    let other = user("system:serviceaccount:other:sa", &["system:authenticated"]);
    let list_pods = resource("list", "", "pods", "", "");
    let decision = authorize(&store, "", &sa, &list_pods);
    assert!(decision.allowed);
    assert_eq!(
        decision.reason,
        "RBAC: allowed by RoleBinding \"read/ns\" of Role \"reader\" to ServiceAccount \"sa/ns\""
    );
    assert!(!authorize(&store, "", &other, &list_pods).allowed);
    assert!(!authorize(&store, "", &sa, &resource("delete", "", "pods", "", "p")).allowed);
    // Bootstrap bindings: discovery for everyone authenticated, everything for masters.
    assert!(authorize(&store, "", &other, &path("get", "/apis/apps")).allowed);
    assert!(!authorize(&store, "", &other, &path("get", "/metrics")).allowed);
    assert!(
        authorize(
            &store,
            "",
            &user("root", &[MASTERS]),
            &path("get", "/metrics")
        )
        .allowed
    );
}

#[test]
fn missing_roles_are_reasons_and_denials_read_like_kube() {
    let store = Store::new(100, 10);
    put(
        &store,
        "clusterrolebindings",
        "",
        json!({"metadata": {"name": "dangling"},
        "roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": "gone"},
        "subjects": [{"kind": "User", "name": "alice"}]}),
    );
    let alice = user("alice", &[]);
    let attrs = resource("get", "apps", "deployments", "scale", "web");
    let decision = authorize(&store, "", &alice, &attrs);
    assert!(!decision.allowed);
    assert_eq!(
        decision.reason,
        "RBAC: clusterrole.rbac.authorization.k8s.io \"gone\" not found"
    );
    let status = forbidden(&alice, &attrs, &decision.reason).to_status();
    assert_eq!(status["code"], 403);
    assert_eq!(status["reason"], "Forbidden");
    assert_eq!(
        status["message"],
        "deployments.apps \"web\" is forbidden: User \"alice\" cannot get resource \"deployments/scale\" in API group \"apps\" in the namespace \"ns\": RBAC: clusterrole.rbac.authorization.k8s.io \"gone\" not found"
    );
    assert_eq!(
        status["details"],
        json!({"name": "web", "group": "apps", "kind": "deployments"})
    );
    let status = forbidden(&alice, &path("get", "/metrics"), "").to_status();
    assert_eq!(
        status["message"],
        "forbidden: User \"alice\" cannot get path \"/metrics\""
    );
}

#[test]
fn workspaces_fall_back_to_the_bootstrap_policy() {
    let store = Store::new(100, 10);
    let someone = user("bob", &["system:authenticated"]);
    assert!(authorize(&store, "root:a", &someone, &path("get", "/api")).allowed);
    assert!(
        !authorize(
            &store,
            "root:a",
            &someone,
            &resource("list", "", "pods", "", "")
        )
        .allowed
    );
}
