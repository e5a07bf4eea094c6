//! The APIs every cluster serves beside workloads, as kube-apiserver
//! documents them: RBAC (bootstrap roles, aggregation, authorization of
//! ServiceAccount tokens and impersonated users, 403s), TokenRequest and
//! TokenReview, the access reviews, events.k8s.io, Leases, CSRs and their
//! approval, APIServices, component statuses, ephemeral containers, and
//! their discovery. Cluster-scoped objects get unique names and are deleted.

use std::collections::BTreeSet;

use anyhow::{Context as _, Result, bail, ensure};
use futures::StreamExt as _;
use http::{Method, header};
use kube::Client;
use serde_json::{Value, json};
use uplink_tests::apiserver::{
    AGGREGATED_DISCOVERY_ACCEPT, EVENT_TIMEOUT, RawResponse, client_impersonating,
    client_with_token, event_type, eventually, in_namespace_with_config, next_event, raw_request,
    send_raw, unique_name,
};

use super::{PARTIAL_METADATA_ACCEPT, get_with_accept, write_with_accept};

// ---------------------------------------------------------------------------
// Helpers.

async fn send(
    client: &Client,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> Result<RawResponse> {
    match body {
        Some(body) => {
            raw_request(
                client,
                method,
                path,
                Some("application/json"),
                serde_json::to_vec(body)?,
            )
            .await
        }
        None => raw_request(client, method, path, None, Vec::new()).await,
    }
}

/// Sends and expects a 2xx JSON answer.
async fn ok(client: &Client, method: Method, path: &str, body: Option<&Value>) -> Result<Value> {
    let what = format!("{method} {path}");
    let response = send(client, method, path, body).await?;
    ensure!(
        response.status.is_success(),
        "{what}: HTTP {}: {}",
        response.status,
        response.text()
    );
    response.json()
}

async fn create(client: &Client, path: &str, body: Value) -> Result<Value> {
    ok(client, Method::POST, path, Some(&body)).await
}

async fn delete(client: &Client, path: &str) {
    if let Err(error) = send(client, Method::DELETE, path, None).await {
        tracing::warn!(path, %error, "cleanup failed");
    }
}

fn strings(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// Retries a create while a fresh namespace has no `default` ServiceAccount
/// yet (a real cluster's controller makes it moments after the namespace).
async fn create_pod(client: &Client, namespace: &str, pod: Value) -> Result<Value> {
    let path = format!("/api/v1/namespaces/{namespace}/pods");
    eventually(EVENT_TIMEOUT, "the pod to be created", || {
        let (path, pod) = (path.clone(), pod.clone());
        async move {
            let response = send(client, Method::POST, &path, Some(&pod)).await?;
            if response.status.is_success() {
                return Ok(Some(response.json()?));
            }
            if response.text().contains("serviceaccount") {
                return Ok(None);
            }
            bail!("POST {path}: HTTP {}: {}", response.status, response.text())
        }
    })
    .await
}

const SERVICE_ACCOUNT_GROUPS: &str = "system:serviceaccounts";

fn service_account_user(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

/// A ServiceAccount bound to a Role allowing `get`/`list` on pods and `get`
/// on the ConfigMap named `allowed`.
async fn reader_account(client: &Client, namespace: &str) -> Result<()> {
    create(
        client,
        &format!("/api/v1/namespaces/{namespace}/serviceaccounts"),
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader"}}),
    )
    .await?;
    create(
        client,
        &format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/roles"),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "pod-reader"},
            "rules": [
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
                {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["allowed"], "verbs": ["get"]},
            ],
        }),
    )
    .await?;
    create(
        client,
        &format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/rolebindings"),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "read"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
        }),
    )
    .await?;
    Ok(())
}

/// A token for a ServiceAccount from TokenRequest.
async fn request_token(
    client: &Client,
    namespace: &str,
    account: &str,
    spec: Value,
) -> Result<Value> {
    create(
        client,
        &format!("/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token"),
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}),
    )
    .await
}

fn token_of(request: &Value) -> Result<String> {
    request["status"]["token"]
        .as_str()
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .with_context(|| format!("no token in {request}"))
}

async fn review_token(client: &Client, token: &str, audiences: &[&str]) -> Result<Value> {
    let mut spec = json!({ "token": token });
    if !audiences.is_empty() {
        spec["audiences"] = json!(audiences);
    }
    let review = create(
        client,
        "/apis/authentication.k8s.io/v1/tokenreviews",
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec}),
    )
    .await?;
    Ok(review["status"].clone())
}

async fn access_review(client: &Client, kind: &str, path: &str, spec: Value) -> Result<Value> {
    let review = create(
        client,
        path,
        json!({"apiVersion": "authorization.k8s.io/v1", "kind": kind, "spec": spec}),
    )
    .await?;
    Ok(review["status"].clone())
}

async fn self_allowed(client: &Client, attributes: Value) -> Result<bool> {
    let status = access_review(
        client,
        "SelfSubjectAccessReview",
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
        attributes,
    )
    .await?;
    Ok(status["allowed"] == true)
}

// ---------------------------------------------------------------------------
// Discovery.

fn discovery_entry<'a>(list: &'a Value, group: &str, plural: &str) -> Option<&'a Value> {
    list["items"].as_array()?.iter().find_map(|g| {
        if g["metadata"]["name"].as_str().unwrap_or_default() != group {
            return None;
        }
        g["versions"]
            .as_array()?
            .iter()
            .filter(|v| v["version"] == "v1")
            .find_map(|v| {
                v["resources"]
                    .as_array()?
                    .iter()
                    .find(|r| r["resource"] == plural)
            })
    })
}

fn subresource<'a>(resource: &'a Value, name: &str) -> Option<&'a Value> {
    resource["subresources"]
        .as_array()?
        .iter()
        .find(|s| s["subresource"] == name)
}

#[tokio::test]
async fn discovery_lists_the_cluster_apis_with_their_verbs() -> Result<()> {
    in_namespace_with_config("discovery", |client, _, _| async move {
        let apis = get_with_accept(&client, "/apis", AGGREGATED_DISCOVERY_ACCEPT).await?.json()?;
        let core = get_with_accept(&client, "/api", AGGREGATED_DISCOVERY_ACCEPT).await?.json()?;
        let all = set(&["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]);
        let view = set(&["get", "patch", "update"]);
        for (group, plural, scope, verbs) in [
            ("rbac.authorization.k8s.io", "roles", "Namespaced", &all),
            ("rbac.authorization.k8s.io", "rolebindings", "Namespaced", &all),
            ("rbac.authorization.k8s.io", "clusterroles", "Cluster", &all),
            ("rbac.authorization.k8s.io", "clusterrolebindings", "Cluster", &all),
            ("events.k8s.io", "events", "Namespaced", &all),
            ("coordination.k8s.io", "leases", "Namespaced", &all),
            ("certificates.k8s.io", "certificatesigningrequests", "Cluster", &all),
            ("apiregistration.k8s.io", "apiservices", "Cluster", &all),
            ("authentication.k8s.io", "tokenreviews", "Cluster", &set(&["create"])),
            ("authentication.k8s.io", "selfsubjectreviews", "Cluster", &set(&["create"])),
            ("authorization.k8s.io", "subjectaccessreviews", "Cluster", &set(&["create"])),
            ("authorization.k8s.io", "selfsubjectaccessreviews", "Cluster", &set(&["create"])),
            ("authorization.k8s.io", "selfsubjectrulesreviews", "Cluster", &set(&["create"])),
            ("authorization.k8s.io", "localsubjectaccessreviews", "Namespaced", &set(&["create"])),
        ] {
            let entry = discovery_entry(&apis, group, plural)
                .with_context(|| format!("{plural}.{group} is not in aggregated discovery"))?;
            ensure!(entry["scope"] == scope, "{plural}.{group}: scope {}", entry["scope"]);
            ensure!(strings(&entry["verbs"]) == *verbs, "{plural}.{group}: verbs {}", entry["verbs"]);
        }
        let csr = discovery_entry(&apis, "certificates.k8s.io", "certificatesigningrequests")
            .context("no CSRs")?;
        for sub in ["approval", "status"] {
            let s = subresource(csr, sub).with_context(|| format!("CSRs without /{sub}: {csr}"))?;
            ensure!(strings(&s["verbs"]) == view, "CSR /{sub} verbs {}", s["verbs"]);
        }

        let statuses = discovery_entry(&core, "", "componentstatuses").context("no componentstatuses")?;
        ensure!(strings(&statuses["verbs"]) == set(&["get", "list"]), "componentstatuses verbs {}", statuses["verbs"]);
        ensure!(statuses["scope"] == "Cluster", "componentstatuses scope {}", statuses["scope"]);
        let accounts = discovery_entry(&core, "", "serviceaccounts").context("no serviceaccounts")?;
        let token = subresource(accounts, "token").with_context(|| format!("no serviceaccounts/token: {accounts}"))?;
        ensure!(
            token["responseKind"] == json!({"group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest"}),
            "serviceaccounts/token responseKind {}",
            token["responseKind"]
        );
        ensure!(strings(&token["verbs"]) == set(&["create"]), "serviceaccounts/token verbs {}", token["verbs"]);
        let pods = discovery_entry(&core, "", "pods").context("no pods")?;
        let ephemeral = subresource(pods, "ephemeralcontainers")
            .with_context(|| format!("no pods/ephemeralcontainers: {pods}"))?;
        ensure!(strings(&ephemeral["verbs"]) == view, "ephemeralcontainers verbs {}", ephemeral["verbs"]);
        ensure!(ephemeral["responseKind"]["kind"] == "Pod", "ephemeralcontainers kind {}", ephemeral["responseKind"]);

        // The per-group documents agree.
        let rbac = ok(&client, Method::GET, "/apis/rbac.authorization.k8s.io/v1", None).await?;
        let names = rbac["resources"].as_array().into_iter().flatten().filter_map(|r| r["name"].as_str()).collect::<BTreeSet<_>>();
        ensure!(
            ["roles", "rolebindings", "clusterroles", "clusterrolebindings"].iter().all(|n| names.contains(n)),
            "GET /apis/rbac.authorization.k8s.io/v1 lists {names:?}"
        );
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------
// RBAC objects.

fn has_rule(role: &Value, verb: &str, group: &str, resource: &str) -> bool {
    role["rules"].as_array().into_iter().flatten().any(|r| {
        let any =
            |field: &str, want: &str| strings(&r[field]).iter().any(|x| x == want || x == "*");
        any("verbs", verb) && any("apiGroups", group) && any("resources", resource)
    })
}

async fn cluster_role(client: &Client, name: &str) -> Result<Value> {
    ok(
        client,
        Method::GET,
        &format!("/apis/rbac.authorization.k8s.io/v1/clusterroles/{name}"),
        None,
    )
    .await
}

#[tokio::test]
async fn bootstrap_cluster_roles_are_served_as_kube_apiserver_creates_them() -> Result<()> {
    in_namespace_with_config("bootstrap-roles", |client, _, _| async move {
        let admin = cluster_role(&client, "cluster-admin").await?;
        ensure!(
            admin["rules"].as_array().into_iter().flatten().any(|r| strings(&r["nonResourceURLs"]).contains("*")),
            "cluster-admin does not allow every non-resource URL: {admin}"
        );
        ensure!(has_rule(&admin, "escalate", "rbac.authorization.k8s.io", "roles"), "cluster-admin: {admin}");
        let binding = ok(&client, Method::GET, "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/cluster-admin", None).await?;
        ensure!(
            binding["subjects"].as_array().into_iter().flatten().any(|s| s["kind"] == "Group" && s["name"] == "system:masters"),
            "cluster-admin is not bound to system:masters: {binding}"
        );

        let view = cluster_role(&client, "view").await?;
        ensure!(
            view["aggregationRule"]["clusterRoleSelectors"][0]["matchLabels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true",
            "view is not aggregated: {view}"
        );
        ensure!(has_rule(&view, "list", "", "pods") && !has_rule(&view, "get", "", "secrets"), "view: {view}");
        let edit = cluster_role(&client, "edit").await?;
        ensure!(has_rule(&edit, "create", "apps", "deployments") && has_rule(&edit, "get", "", "secrets"), "edit: {edit}");
        ensure!(!has_rule(&edit, "create", "rbac.authorization.k8s.io", "roles"), "edit may grant roles: {edit}");
        let admin = cluster_role(&client, "admin").await?;
        ensure!(has_rule(&admin, "create", "rbac.authorization.k8s.io", "rolebindings"), "admin: {admin}");
        ensure!(has_rule(&admin, "list", "", "pods"), "admin lacks view's rules: {admin}");
        let discovery = cluster_role(&client, "system:discovery").await?;
        let urls: BTreeSet<String> = discovery["rules"].as_array().into_iter().flatten().flat_map(|r| strings(&r["nonResourceURLs"])).collect();
        ensure!(["/api", "/apis", "/version"].iter().all(|u| urls.contains(*u)), "system:discovery URLs {urls:?}");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn aggregated_cluster_roles_take_the_rules_of_labelled_roles() -> Result<()> {
    in_namespace_with_config("aggregation", |client, _, _| async move {
        let name = unique_name("uplink-conformance-view");
        let resource = format!("widgets{}", name.rsplit('-').next().unwrap_or_default());
        let path = format!("/apis/rbac.authorization.k8s.io/v1/clusterroles/{name}");
        create(
            &client,
            "/apis/rbac.authorization.k8s.io/v1/clusterroles",
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                "metadata": {"name": name, "labels": {"rbac.authorization.k8s.io/aggregate-to-view": "true"}},
                "rules": [{"apiGroups": ["conformance.uplink.test"], "resources": [resource], "verbs": ["get"]}],
            }),
        )
        .await?;
        let outcome = async {
            for role in ["view", "edit", "admin"] {
                eventually(EVENT_TIMEOUT, &format!("{role} to take the labelled role's rule"), || async {
                    let r = cluster_role(&client, role).await?;
                    Ok(has_rule(&r, "get", "conformance.uplink.test", &resource).then_some(()))
                })
                .await?;
            }
            delete(&client, &path).await;
            eventually(EVENT_TIMEOUT, "view to drop the deleted role's rule", || async {
                let r = cluster_role(&client, "view").await?;
                Ok((!has_rule(&r, "get", "conformance.uplink.test", &resource)).then_some(()))
            })
            .await
        }
        .await;
        delete(&client, &path).await;
        outcome
    })
    .await
}

// ---------------------------------------------------------------------------
// ServiceAccount tokens, RBAC decisions, 403s.

#[tokio::test]
async fn service_account_tokens_are_authorized_by_their_bindings() -> Result<()> {
    in_namespace_with_config("sa-rbac", |client, config, ns| async move {
        reader_account(&client, &ns).await?;
        let token = token_of(&request_token(&client, &ns, "reader", json!({})).await?)?;
        let reader = client_with_token(&config, &token)?;
        let user = service_account_user(&ns, "reader");

        ok(&reader, Method::GET, &format!("/api/v1/namespaces/{ns}/pods"), None).await?;
        let elsewhere = send(&reader, Method::GET, "/api/v1/namespaces/default/pods", None).await?;
        let status = elsewhere.expect_status(403, "Forbidden")?;
        ensure!(
            status.message
                == format!("pods is forbidden: User \"{user}\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""),
            "403 message {:?}",
            status.message
        );
        let details = elsewhere.json()?["details"].clone();
        ensure!(details["kind"] == "pods", "403 details {details}");

        // resourceNames: the named object only, and never a list.
        send(&reader, Method::GET, &format!("/api/v1/namespaces/{ns}/configmaps/allowed"), None)
            .await?
            .expect_status(404, "NotFound")?;
        let other = send(&reader, Method::GET, &format!("/api/v1/namespaces/{ns}/configmaps/other"), None).await?;
        let status = other.expect_status(403, "Forbidden")?;
        ensure!(
            status.message
                == format!("configmaps \"other\" is forbidden: User \"{user}\" cannot get resource \"configmaps\" in API group \"\" in the namespace \"{ns}\""),
            "403 message {:?}",
            status.message
        );
        send(&reader, Method::GET, &format!("/api/v1/namespaces/{ns}/configmaps"), None)
            .await?
            .expect_status(403, "Forbidden")?;
        send(&reader, Method::GET, &format!("/api/v1/namespaces/{ns}/pods/p/log"), None)
            .await?
            .expect_status(403, "Forbidden")?;

        // Every authenticated user may discover the API and review itself.
        ok(&reader, Method::GET, "/apis", None).await?;
        let can_list = json!({"resourceAttributes": {"namespace": ns, "verb": "list", "resource": "pods"}});
        let can_delete = json!({"resourceAttributes": {"namespace": ns, "verb": "delete", "resource": "pods"}});
        ensure!(self_allowed(&reader, can_list).await?, "SelfSubjectAccessReview denies listing pods");
        ensure!(!self_allowed(&reader, can_delete).await?, "SelfSubjectAccessReview allows deleting pods");
        let who = create(
            &reader,
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}),
        )
        .await?;
        ensure!(who["status"]["userInfo"]["username"] == user.as_str(), "SelfSubjectReview: {who}");

        // The rules it may use, as `kubectl auth can-i --list` asks.
        let rules = access_review(
            &reader,
            "SelfSubjectRulesReview",
            "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews",
            json!({"namespace": ns}),
        )
        .await?;
        ensure!(
            rules["resourceRules"].as_array().into_iter().flatten().any(|r| strings(&r["resources"]).contains("pods") && strings(&r["verbs"]).contains("list")),
            "SelfSubjectRulesReview: {rules}"
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn token_requests_and_token_reviews() -> Result<()> {
    in_namespace_with_config("tokens", |client, config, ns| async move {
        create(
            &client,
            &format!("/api/v1/namespaces/{ns}/serviceaccounts"),
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "robot"}}),
        )
        .await?;
        let issued = request_token(&client, &ns, "robot", json!({"expirationSeconds": 3600})).await?;
        ensure!(issued["kind"] == "TokenRequest", "TokenRequest answer: {issued}");
        ensure!(issued["spec"]["expirationSeconds"] == 3600, "TokenRequest spec: {}", issued["spec"]);
        let expires = issued["status"]["expirationTimestamp"].as_str().unwrap_or_default();
        let expires: k8s_openapi::jiff::Timestamp = expires.parse().with_context(|| format!("expirationTimestamp {expires:?}"))?;
        let lifetime = expires.duration_since(k8s_openapi::jiff::Timestamp::now()).as_secs();
        ensure!((3500..=3700).contains(&lifetime), "the token lives {lifetime}s, asked 3600s");
        let token = token_of(&issued)?;
        ensure!(token.split('.').count() == 3, "not a JWT: {token}");

        let user = service_account_user(&ns, "robot");
        let review = review_token(&client, &token, &[]).await?;
        ensure!(review["authenticated"] == true, "TokenReview: {review}");
        ensure!(review["user"]["username"] == user.as_str(), "TokenReview user: {}", review["user"]);
        let groups = strings(&review["user"]["groups"]);
        for group in [SERVICE_ACCOUNT_GROUPS.to_owned(), format!("{SERVICE_ACCOUNT_GROUPS}:{ns}"), "system:authenticated".to_owned()] {
            ensure!(groups.contains(&group), "TokenReview groups {groups:?} lack {group}");
        }
        let garbage = review_token(&client, "not-a-token", &[]).await?;
        ensure!(garbage["authenticated"] != true, "a made-up token authenticated: {garbage}");

        // Audiences: a token for another audience is no good for the API server.
        let foreign = token_of(&request_token(&client, &ns, "robot", json!({"audiences": ["uplink-conformance"]})).await?)?;
        let review = review_token(&client, &foreign, &["uplink-conformance"]).await?;
        ensure!(review["authenticated"] == true, "TokenReview with the token's audience: {review}");
        ensure!(strings(&review["audiences"]) == set(&["uplink-conformance"]), "audiences {}", review["audiences"]);
        let review = review_token(&client, &foreign, &["somebody-else"]).await?;
        ensure!(review["authenticated"] != true, "TokenReview with another audience: {review}");
        send(&client_with_token(&config, &foreign)?, Method::GET, "/api", None)
            .await?
            .expect_status(401, "Unauthorized")?;

        // Too short a lifetime, or no such account.
        let short = send(
            &client,
            Method::POST,
            &format!("/api/v1/namespaces/{ns}/serviceaccounts/robot/token"),
            Some(&json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 60}})),
        )
        .await?;
        let status = short.expect_status(422, "Invalid")?;
        let causes = status.details.map(|d| d.causes).unwrap_or_default();
        ensure!(causes.iter().any(|c| c.field == "spec.expirationSeconds"), "causes {causes:?}");
        send(
            &client,
            Method::POST,
            &format!("/api/v1/namespaces/{ns}/serviceaccounts/nobody/token"),
            Some(&json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}})),
        )
        .await?
        .expect_status(404, "NotFound")?;

        // A deleted ServiceAccount's tokens stop working (kube caches for 10 s).
        delete(&client, &format!("/api/v1/namespaces/{ns}/serviceaccounts/robot")).await;
        let robot = client_with_token(&config, &token)?;
        eventually(EVENT_TIMEOUT, "the deleted account's token to be refused", || async {
            let response = send(&robot, Method::GET, "/api", None).await?;
            Ok((response.status == 401).then_some(()))
        })
        .await
    })
    .await
}

#[tokio::test]
async fn subject_access_reviews_answer_for_other_users() -> Result<()> {
    in_namespace_with_config("sar", |client, _, ns| async move {
        reader_account(&client, &ns).await?;
        let user = service_account_user(&ns, "reader");
        let groups = json!([SERVICE_ACCOUNT_GROUPS, format!("{SERVICE_ACCOUNT_GROUPS}:{ns}"), "system:authenticated"]);
        let sar = |verb: &str| {
            json!({"user": user, "groups": groups, "resourceAttributes": {"namespace": ns, "verb": verb, "resource": "pods"}})
        };
        let path = "/apis/authorization.k8s.io/v1/subjectaccessreviews";
        let allowed = access_review(&client, "SubjectAccessReview", path, sar("list")).await?;
        ensure!(allowed["allowed"] == true, "list pods: {allowed}");
        ensure!(
            allowed["reason"].as_str().is_some_and(|r| r.contains("RoleBinding") && r.contains("pod-reader")),
            "the reason names the binding: {allowed}"
        );
        let denied = access_review(&client, "SubjectAccessReview", path, sar("delete")).await?;
        ensure!(denied["allowed"] != true, "delete pods: {denied}");
        let discovery = access_review(
            &client,
            "SubjectAccessReview",
            path,
            json!({"user": user, "groups": groups, "nonResourceAttributes": {"path": "/apis", "verb": "get"}}),
        )
        .await?;
        ensure!(discovery["allowed"] == true, "GET /apis: {discovery}");
        let local = access_review(
            &client,
            "LocalSubjectAccessReview",
            &format!("/apis/authorization.k8s.io/v1/namespaces/{ns}/localsubjectaccessreviews"),
            sar("get"),
        )
        .await?;
        ensure!(local["allowed"] == true, "LocalSubjectAccessReview get pods: {local}");
        let nobody = send(
            &client,
            Method::POST,
            path,
            Some(&json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                "spec": {"resourceAttributes": {"verb": "get", "resource": "pods"}}})),
        )
        .await?;
        nobody.expect_status(422, "Invalid")?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn impersonation_acts_as_the_named_user() -> Result<()> {
    in_namespace_with_config("impersonation", |client, config, ns| async move {
        reader_account(&client, &ns).await?;
        let user = service_account_user(&ns, "reader");
        let as_reader = client_impersonating(&config, &user, &[])?;
        ok(&as_reader, Method::GET, &format!("/api/v1/namespaces/{ns}/pods"), None).await?;
        let write = send(
            &as_reader,
            Method::POST,
            &format!("/api/v1/namespaces/{ns}/configmaps"),
            Some(&json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}})),
        )
        .await?;
        let status = write.expect_status(403, "Forbidden")?;
        ensure!(status.message.contains(&format!("User \"{user}\" cannot create resource \"configmaps\"")), "{}", status.message);
        let who = create(
            &as_reader,
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}),
        )
        .await?;
        let info = &who["status"]["userInfo"];
        ensure!(info["username"] == user.as_str(), "impersonated user {info}");
        let groups = strings(&info["groups"]);
        ensure!(
            groups.contains(&format!("{SERVICE_ACCOUNT_GROUPS}:{ns}")) && groups.contains("system:authenticated"),
            "an impersonated ServiceAccount's groups: {groups:?}"
        );

        // Without rights to impersonate, impersonation is refused.
        let token = token_of(&request_token(&client, &ns, "reader", json!({})).await?)?;
        let reader = client_with_token(&config, &token)?;
        let request = http::Request::builder()
            .method(Method::GET)
            .uri(format!("/api/v1/namespaces/{ns}/pods"))
            .header("Impersonate-User", "someone-else")
            .body(Vec::new())?;
        let refused = send_raw(&reader, request).await?;
        let status = refused.expect_status(403, "Forbidden")?;
        ensure!(
            status.message
                == format!("users \"someone-else\" is forbidden: User \"{user}\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope"),
            "403 message {:?}",
            status.message
        );
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------
// Events, Leases.

#[tokio::test]
async fn events_are_the_same_objects_in_both_apis() -> Result<()> {
    in_namespace_with_config("events", |client, _, ns| async move {
        let now = k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S.000000Z").to_string();
        let regarding = json!({"apiVersion": "v1", "kind": "ConfigMap", "namespace": ns, "name": "subject"});
        create(
            &client,
            &format!("/apis/events.k8s.io/v1/namespaces/{ns}/events"),
            json!({
                "apiVersion": "events.k8s.io/v1", "kind": "Event",
                "metadata": {"name": "new-style"},
                "eventTime": now, "reportingController": "uplink.io/conformance",
                "reportingInstance": "conformance-1", "action": "Check", "reason": "Checked",
                "type": "Normal", "regarding": regarding, "note": "written as events.k8s.io/v1",
            }),
        )
        .await?;
        let core = ok(&client, Method::GET, &format!("/api/v1/namespaces/{ns}/events/new-style"), None).await?;
        ensure!(core["apiVersion"] == "v1" && core["kind"] == "Event", "core shape: {core}");
        ensure!(core["involvedObject"]["name"] == "subject", "involvedObject: {core}");
        ensure!(core["message"] == "written as events.k8s.io/v1", "message: {core}");
        ensure!(core["reportingComponent"] == "uplink.io/conformance", "reportingComponent: {core}");

        create(
            &client,
            &format!("/api/v1/namespaces/{ns}/events"),
            json!({
                "apiVersion": "v1", "kind": "Event", "metadata": {"name": "old-style"},
                "involvedObject": regarding, "reason": "Old", "message": "written as core/v1",
                "type": "Warning", "count": 3, "source": {"component": "conformance"},
            }),
        )
        .await?;
        let new = ok(&client, Method::GET, &format!("/apis/events.k8s.io/v1/namespaces/{ns}/events/old-style"), None).await?;
        ensure!(new["apiVersion"] == "events.k8s.io/v1", "events.k8s.io shape: {new}");
        ensure!(new["note"] == "written as core/v1" && new["regarding"]["name"] == "subject", "converted: {new}");
        ensure!(new["deprecatedCount"] == 3 && new["deprecatedSource"]["component"] == "conformance", "deprecated fields: {new}");
        let list = ok(&client, Method::GET, &format!("/apis/events.k8s.io/v1/namespaces/{ns}/events"), None).await?;
        let names: BTreeSet<String> = list["items"].as_array().into_iter().flatten().filter_map(|e| e["metadata"]["name"].as_str().map(str::to_owned)).collect();
        ensure!(names.contains("old-style") && names.contains("new-style"), "events.k8s.io list {names:?}");

        let invalid = send(
            &client,
            Method::POST,
            &format!("/apis/events.k8s.io/v1/namespaces/{ns}/events"),
            Some(&json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "bad"},
                "reportingController": "uplink.io/conformance", "reportingInstance": "i", "action": "A",
                "reason": "R", "type": "Normal", "regarding": regarding})),
        )
        .await?;
        let status = invalid.expect_status(422, "Invalid")?;
        let fields: Vec<String> = status.details.map(|d| d.causes.into_iter().map(|c| c.field).collect()).unwrap_or_default();
        ensure!(fields.iter().any(|f| f == "eventTime"), "causes {fields:?}");
        Ok(())
    })
    .await
}

/// The names a list of `path` with `fieldSelector=selector` returns.
async fn names_selected(client: &Client, path: &str, selector: &str) -> Result<BTreeSet<String>> {
    let list = ok(
        client,
        Method::GET,
        &format!("{path}?fieldSelector={selector}"),
        None,
    )
    .await?;
    Ok(list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["metadata"]["name"].as_str().map(str::to_owned))
        .collect())
}

/// events.k8s.io/v1 selects by its own field names (`regarding.*`,
/// `reportingController`, ...), which kube maps onto the core Event's
/// selectable fields; the core names are not among them. CSRs select by
/// `spec.signerName` and, cluster-scoped, refuse `metadata.namespace`.
#[tokio::test]
async fn events_and_csrs_have_their_own_field_selectors() -> Result<()> {
    in_namespace_with_config("fields", |client, _, ns| async move {
        let now = k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S.000000Z").to_string();
        let events = format!("/apis/events.k8s.io/v1/namespaces/{ns}/events");
        create(
            &client,
            &events,
            json!({
                "apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "new-style"},
                "eventTime": now, "reportingController": "uplink.io/conformance",
                "reportingInstance": "conformance-1", "action": "Check", "reason": "Checked", "type": "Normal",
                "regarding": {"apiVersion": "v1", "kind": "ConfigMap", "namespace": ns, "name": "subject"},
            }),
        )
        .await?;
        create(
            &client,
            &format!("/api/v1/namespaces/{ns}/events"),
            json!({
                "apiVersion": "v1", "kind": "Event", "metadata": {"name": "old-style"},
                "involvedObject": {"apiVersion": "v1", "kind": "Secret", "namespace": ns, "name": "other"},
                "reason": "Old", "message": "written as core/v1", "type": "Warning",
                "source": {"component": "conformance"},
            }),
        )
        .await?;
        for (selector, expected) in [
            ("regarding.name%3Dsubject", &["new-style"][..]),
            ("regarding.kind%3DSecret", &["old-style"]),
            ("reportingController%3Duplink.io/conformance", &["new-style"]),
            ("source%3Dconformance", &["old-style"]),
            ("source%3Duplink.io/conformance", &["new-style"]),
            ("type%3DWarning,reason%3DOld", &["old-style"]),
            ("metadata.name%3Dnew-style", &["new-style"]),
        ] {
            let names = names_selected(&client, &events, selector).await?;
            ensure!(names == set(expected), "events.k8s.io fieldSelector={selector}: {names:?}");
        }
        let core = format!("/api/v1/namespaces/{ns}/events");
        let names = names_selected(&client, &core, "involvedObject.name%3Dsubject").await?;
        ensure!(names == set(&["new-style"]), "core fieldSelector=involvedObject.name: {names:?}");
        let refused = send(&client, Method::GET, &format!("{events}?fieldSelector=involvedObject.name%3Dsubject"), None).await?;
        let status = refused.expect_status(400, "BadRequest")?;
        ensure!(
            status.message.contains("field label not supported: involvedObject.name"),
            "events.k8s.io with a core field: {:?}",
            status.message
        );

        let name = unique_name("uplink-conformance-fields");
        let signer = format!("example.com/{name}");
        let base = "/apis/certificates.k8s.io/v1/certificatesigningrequests";
        let request = serde_json::to_value(k8s_openapi::ByteString(csr_pem()?.into_bytes()))?;
        let outcome = async {
            create(
                &client,
                base,
                json!({"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
                    "metadata": {"name": name},
                    "spec": {"request": request, "signerName": signer, "usages": ["client auth"]}}),
            )
            .await?;
            let names = names_selected(&client, base, &format!("spec.signerName%3D{signer}")).await?;
            ensure!(names == set(&[name.as_str()]), "CSRs by signer: {names:?}");
            let refused = send(&client, Method::GET, &format!("{base}?fieldSelector=metadata.namespace%3Ddefault"), None).await?;
            let status = refused.expect_status(400, "BadRequest")?;
            ensure!(
                status.message.contains("field label not supported: metadata.namespace"),
                "CSRs by namespace: {:?}",
                status.message
            );
            Ok(())
        }
        .await;
        delete(&client, &format!("{base}/{name}")).await;
        outcome
    })
    .await
}

#[tokio::test]
async fn leases_keep_their_holder() -> Result<()> {
    in_namespace_with_config("leases", |client, _, ns| async move {
        let path = format!("/apis/coordination.k8s.io/v1/namespaces/{ns}/leases");
        let created = create(
            &client,
            &path,
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "leader"},
                "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15, "renewTime": "2024-01-01T00:00:00.000000Z"}}),
        )
        .await?;
        ensure!(created["spec"]["holderIdentity"] == "a", "created {created}");
        let mut lease = created.clone();
        lease["spec"]["holderIdentity"] = json!("b");
        lease["spec"]["leaseTransitions"] = json!(1);
        let updated = ok(&client, Method::PUT, &format!("{path}/leader"), Some(&lease)).await?;
        ensure!(updated["spec"]["holderIdentity"] == "b" && updated["spec"]["leaseTransitions"] == 1, "updated {updated}");
        // A stale write loses.
        send(&client, Method::PUT, &format!("{path}/leader"), Some(&lease))
            .await?
            .expect_status(409, "Conflict")?;
        Ok(())
    })
    .await
}

/// kube's `ValidateLeaseSpec`: a lease duration must be positive, the
/// transitions not negative, and a preferred holder needs a strategy.
#[tokio::test]
async fn invalid_lease_specs_are_refused() -> Result<()> {
    in_namespace_with_config("leases-invalid", |client, _, ns| async move {
        let path = format!("/apis/coordination.k8s.io/v1/namespaces/{ns}/leases");
        let lease = |name: &str, spec: Value| {
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": name}, "spec": spec})
        };
        let refused = [
            (
                json!({"holderIdentity": "a", "leaseDurationSeconds": 0}),
                "spec.leaseDurationSeconds: Invalid value: 0: must be greater than 0",
            ),
            (
                json!({"leaseTransitions": -1}),
                "spec.leaseTransitions: Invalid value: -1: must be greater than or equal to 0",
            ),
            (
                json!({"preferredHolder": "b"}),
                "spec.preferredHolder: Forbidden: may only be specified if `strategy` is defined",
            ),
        ];
        for (spec, message) in refused {
            let status = send(
                &client,
                Method::POST,
                &path,
                Some(&lease("bad", spec.clone())),
            )
            .await?
            .expect_status(422, "Invalid")?;
            ensure!(
                status.message
                    == format!("Lease.coordination.k8s.io \"bad\" is invalid: {message}"),
                "creating a Lease with {spec}: {:?}",
                status.message
            );
        }
        // An update is checked too; a valid Lease (no spec fields at all) is fine.
        let created = create(&client, &path, lease("good", json!({}))).await?;
        let mut bad = created.clone();
        bad["spec"] = json!({"leaseDurationSeconds": -5});
        send(&client, Method::PUT, &format!("{path}/good"), Some(&bad))
            .await?
            .expect_status(422, "Invalid")?;
        Ok(())
    })
    .await
}

/// What hub replicas do with Leases (issue 20): list and watch them by
/// label, and what an operator sees in `kubectl get leases` (Name, Holder,
/// Age; kube's printLease).
#[tokio::test]
async fn leases_are_listed_and_watched_by_label_and_printed_with_their_holder() -> Result<()> {
    in_namespace_with_config("leases-by-label", |client, _, ns| async move {
        let path = format!("/apis/coordination.k8s.io/v1/namespaces/{ns}/leases");
        let lease = |name: &str, set: &str, holder: &str| {
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": name, "labels": {"uplink.io/hub-replicas": set}},
                "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15}})
        };
        create(&client, &path, lease("mine-shard-00", "mine", "hub-0_1")).await?;
        create(&client, &path, lease("other-shard-00", "other", "x_1")).await?;
        create(&client, &path, lease("mine-shard-01", "mine", "")).await?;

        let selected = format!("{path}?labelSelector=uplink.io%2Fhub-replicas%3Dmine");
        let list = ok(&client, Method::GET, &selected, None).await?;
        let names: BTreeSet<&str> = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["metadata"]["name"].as_str())
            .collect();
        ensure!(
            names == BTreeSet::from(["mine-shard-00", "mine-shard-01"]),
            "listed by label: {names:?}"
        );
        let rv = list["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default()
            .to_owned();

        let table = get_with_accept(&client, &selected, TABLE_THEN_JSON).await?;
        ensure!(table.status == 200, "GET {selected} as kubectl: {}", table.text());
        let table = table.json()?;
        let columns: Vec<&str> = table["columnDefinitions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str())
            .collect();
        ensure!(columns == ["Name", "Holder", "Age"], "lease columns {columns:?}");
        let holders: BTreeSet<(&str, &str)> = table["rows"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| Some((r["cells"][0].as_str()?, r["cells"][1].as_str()?)))
            .collect();
        ensure!(
            holders == BTreeSet::from([("mine-shard-00", "hub-0_1"), ("mine-shard-01", "")]),
            "lease rows {holders:?}"
        );

        // A watch by label sees the selected Leases change, not the others.
        let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
            kube::Api::namespaced(client.clone(), &ns);
        let mut stream = leases
            .watch(
                &kube::api::WatchParams::default()
                    .labels("uplink.io/hub-replicas=mine")
                    .timeout(30),
                &rv,
            )
            .await?
            .boxed();
        let take = |name: &str, holder: &str| {
            json!({"spec": {"holderIdentity": holder}, "metadata": {"name": name}})
        };
        for (name, holder) in [("other-shard-00", "y_2"), ("mine-shard-01", "hub-1_2")] {
            let patch = kube::api::Patch::Merge(take(name, holder));
            leases
                .patch(name, &kube::api::PatchParams::default(), &patch)
                .await
                .with_context(|| format!("taking {name}"))?;
        }
        match next_event(&mut stream, EVENT_TIMEOUT).await? {
            kube::api::WatchEvent::Modified(lease) => {
                let holder = lease.spec.and_then(|s| s.holder_identity);
                ensure!(
                    lease.metadata.name.as_deref() == Some("mine-shard-01")
                        && holder.as_deref() == Some("hub-1_2"),
                    "watched {:?} held by {holder:?}",
                    lease.metadata.name
                );
            }
            other => bail!("expected the selected Lease's change, got {}", event_type(&other)),
        }
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------
// CertificateSigningRequests.

fn csr_pem() -> Result<String> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "uplink-conformance");
    Ok(params.serialize_request(&key)?.pem()?)
}

/// kubectl's `Accept` for `get`: a Table, else the object.
const TABLE_THEN_JSON: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";

/// Fails unless `response` is HTTP `code` with a PartialObjectMetadata
/// (of the object named `name`, when given) and nothing else.
fn expect_partial_metadata(
    what: &str,
    response: &RawResponse,
    code: u16,
    name: Option<&str>,
) -> Result<()> {
    ensure!(
        response.status.as_u16() == code,
        "{what}: HTTP {}: {}",
        response.status,
        response.text()
    );
    let body = response.json()?;
    ensure!(
        body["kind"] == "PartialObjectMetadata" && body["apiVersion"] == "meta.k8s.io/v1",
        "{what} answered {body}"
    );
    ensure!(
        body.get("spec").is_none() && body.get("status").is_none(),
        "{what} answered more than metadata: {body}"
    );
    if let Some(name) = name {
        ensure!(
            body["metadata"]["name"] == name,
            "{what}: metadata {}",
            body["metadata"]
        );
    }
    Ok(())
}

/// The subresources and reviews answer as `Accept` asks, as every verb does
/// (kube's `transformResponseObject`): PartialObjectMetadata when asked. A
/// Table only where the storage prints one, which `pods/ephemeralcontainers`
/// does not, so kubectl's Accept (a Table, else JSON) gets the Pod.
#[tokio::test]
async fn subresources_and_reviews_answer_as_accept_asks() -> Result<()> {
    in_namespace_with_config("accept-sub", |client, _, ns| async move {
        create_pod(
            &client,
            &ns,
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "target"},
                "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}]}}),
        )
        .await?;
        let ephemeral = format!("/api/v1/namespaces/{ns}/pods/target/ephemeralcontainers");
        let patch = json!({"spec": {"ephemeralContainers": [{"name": "debugger", "image": "busybox"}]}});
        let patched = write_with_accept(
            &client,
            Method::PATCH,
            &ephemeral,
            "application/strategic-merge-patch+json",
            &patch,
            PARTIAL_METADATA_ACCEPT,
        )
        .await?;
        expect_partial_metadata("PATCH pods/ephemeralcontainers", &patched, 200, Some("target"))?;
        let viewed = get_with_accept(&client, &ephemeral, PARTIAL_METADATA_ACCEPT).await?;
        expect_partial_metadata("GET pods/ephemeralcontainers", &viewed, 200, Some("target"))?;
        let as_kubectl = get_with_accept(&client, &ephemeral, TABLE_THEN_JSON).await?;
        ensure!(as_kubectl.status == 200, "GET {ephemeral} as kubectl: {}", as_kubectl.text());
        let pod = as_kubectl.json()?;
        ensure!(
            pod["kind"] == "Pod" && pod["spec"]["ephemeralContainers"][0]["name"] == "debugger",
            "GET {ephemeral} as kubectl answered {pod}"
        );

        let review = write_with_accept(
            &client,
            Method::POST,
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            "application/json",
            &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}),
            PARTIAL_METADATA_ACCEPT,
        )
        .await?;
        expect_partial_metadata("POST selfsubjectreviews", &review, 201, None)?;

        let name = unique_name("uplink-conformance-accept");
        let base = "/apis/certificates.k8s.io/v1/certificatesigningrequests";
        let path = format!("{base}/{name}");
        let request = serde_json::to_value(k8s_openapi::ByteString(csr_pem()?.into_bytes()))?;
        let outcome = async {
            let csr = json!({"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
                "metadata": {"name": name},
                "spec": {"request": request, "signerName": "example.com/uplink-conformance", "usages": ["client auth"]}});
            let created = write_with_accept(&client, Method::POST, base, "application/json", &csr, PARTIAL_METADATA_ACCEPT).await?;
            expect_partial_metadata("POST certificatesigningrequests", &created, 201, Some(&name))?;
            let current = ok(&client, Method::GET, &path, None).await?;
            let approved = write_with_accept(
                &client,
                Method::PUT,
                &format!("{path}/approval"),
                "application/json",
                &approval(&current, "Approved"),
                PARTIAL_METADATA_ACCEPT,
            )
            .await?;
            expect_partial_metadata("PUT certificatesigningrequests/approval", &approved, 200, Some(&name))?;
            let stored = ok(&client, Method::GET, &path, None).await?;
            ensure!(
                stored["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == "Approved"),
                "the approval was not stored: {}",
                stored["status"]
            );
            Ok(())
        }
        .await;
        delete(&client, &path).await;
        outcome
    })
    .await
}

fn approval(csr: &Value, kind: &str) -> Value {
    let mut next = csr.clone();
    let mut conditions = next["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    conditions.push(json!({"type": kind, "status": "True", "reason": "Conformance", "message": "by the conformance suite"}));
    next["status"]["conditions"] = json!(conditions);
    next
}

#[tokio::test]
async fn certificate_signing_requests_are_approved_through_approval() -> Result<()> {
    in_namespace_with_config("csr", |client, config, ns| async move {
        let name = unique_name("uplink-conformance");
        let signer = "example.com/uplink-conformance";
        let base = "/apis/certificates.k8s.io/v1/certificatesigningrequests";
        let path = format!("{base}/{name}");
        let role_path = format!("/apis/rbac.authorization.k8s.io/v1/clusterroles/{name}");
        let binding_path = format!("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{name}");
        let request = serde_json::to_value(k8s_openapi::ByteString(csr_pem()?.into_bytes()))?;
        let outcome = async {
            let created = create(
                &client,
                base,
                json!({"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
                    "metadata": {"name": name},
                    "spec": {"request": request, "signerName": signer, "usages": ["client auth"], "username": "forged"}}),
            )
            .await?;
            ensure!(
                created["spec"]["username"].as_str().is_some_and(|u| !u.is_empty() && u != "forged"),
                "the server records the requester: {}",
                created["spec"]
            );
            ensure!(strings(&created["spec"]["groups"]).contains("system:authenticated"), "groups {}", created["spec"]["groups"]);
            ensure!(created["status"]["conditions"].is_null(), "a new CSR has no conditions: {}", created["status"]);

            // An approver needs `approve` on the signer besides the subresource.
            create(
                &client,
                &format!("/api/v1/namespaces/{ns}/serviceaccounts"),
                json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "clerk"}}),
            )
            .await?;
            create(
                &client,
                "/apis/rbac.authorization.k8s.io/v1/clusterroles",
                json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": name},
                    "rules": [{"apiGroups": ["certificates.k8s.io"], "resources": ["certificatesigningrequests", "certificatesigningrequests/approval"], "verbs": ["get", "update"]}]}),
            )
            .await?;
            create(
                &client,
                "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
                json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": name},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
                    "subjects": [{"kind": "ServiceAccount", "name": "clerk", "namespace": ns}]}),
            )
            .await?;
            let clerk = client_with_token(&config, &token_of(&request_token(&client, &ns, "clerk", json!({})).await?)?)?;
            let refused = eventually(EVENT_TIMEOUT, "the clerk's binding to take effect", || async {
                let current = ok(&clerk, Method::GET, &path, None).await?;
                let response = send(&clerk, Method::PUT, &format!("{path}/approval"), Some(&approval(&current, "Approved"))).await?;
                Ok((response.status == 403).then_some(response))
            })
            .await?;
            let status = refused.status_object()?;
            ensure!(status.message.contains("not permitted to approve") && status.message.contains(signer), "{}", status.message);

            // Status writes through the main resource are ignored.
            let current = ok(&client, Method::GET, &path, None).await?;
            let unchanged = ok(&client, Method::PUT, &path, Some(&approval(&current, "Approved"))).await?;
            ensure!(unchanged["status"]["conditions"].is_null(), "the main resource approved: {}", unchanged["status"]);

            let approved = ok(&client, Method::PUT, &format!("{path}/approval"), Some(&approval(&unchanged, "Approved"))).await?;
            let conditions = approved["status"]["conditions"].as_array().cloned().unwrap_or_default();
            ensure!(
                conditions.iter().any(|c| c["type"] == "Approved" && c["status"] == "True" && c["lastUpdateTime"].is_string()),
                "after approval: {conditions:?}"
            );
            let current = ok(&client, Method::GET, &path, None).await?;
            send(&client, Method::PUT, &format!("{path}/approval"), Some(&approval(&current, "Denied")))
                .await?
                .expect_status(422, "Invalid")?;
            Ok(())
        }
        .await;
        for cleanup in [&path, &role_path, &binding_path] {
            delete(&client, cleanup).await;
        }
        outcome
    })
    .await
}

// ---------------------------------------------------------------------------
// APIServices, component statuses, ephemeral containers.

async fn apiservice_names(client: &Client) -> Result<BTreeSet<String>> {
    let list = ok(
        client,
        Method::GET,
        "/apis/apiregistration.k8s.io/v1/apiservices",
        None,
    )
    .await?;
    Ok(list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["metadata"]["name"].as_str().map(str::to_owned))
        .collect())
}

#[tokio::test]
async fn apiservices_list_the_served_group_versions() -> Result<()> {
    in_namespace_with_config("apiservices", |client, _, _| async move {
        let names = apiservice_names(&client).await?;
        for expected in [
            "v1.", "v1.apps", "v1.authentication.k8s.io", "v1.authorization.k8s.io",
            "v1.certificates.k8s.io", "v1.coordination.k8s.io", "v1.events.k8s.io",
            "v1.rbac.authorization.k8s.io", "v1.apiextensions.k8s.io",
        ] {
            ensure!(names.contains(expected), "no APIService {expected} in {names:?}");
        }
        let apps = ok(&client, Method::GET, "/apis/apiregistration.k8s.io/v1/apiservices/v1.apps", None).await?;
        ensure!(apps["spec"]["group"] == "apps" && apps["spec"]["version"] == "v1", "v1.apps spec {}", apps["spec"]);
        ensure!(apps["spec"]["service"].is_null(), "v1.apps is not local: {}", apps["spec"]);
        ensure!(
            apps["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == "Available" && c["status"] == "True"),
            "v1.apps is not Available: {}",
            apps["status"]
        );

        // A CRD's group-version gets one too, and loses it with the CRD.
        let suffix = unique_name("g");
        let group = format!("{suffix}.conformance.uplink.test");
        let crd_name = format!("gadgets.{group}");
        let crd_path = format!("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd_name}");
        create(
            &client,
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
                "metadata": {"name": crd_name},
                "spec": {"group": group, "scope": "Namespaced",
                    "names": {"plural": "gadgets", "singular": "gadget", "kind": "Gadget", "listKind": "GadgetList"},
                    "versions": [{"name": "v1", "served": true, "storage": true,
                        "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}}),
        )
        .await?;
        let service = format!("v1.{group}");
        let outcome = async {
            eventually(EVENT_TIMEOUT, "the CRD's APIService to appear", || async {
                Ok(apiservice_names(&client).await?.contains(&service).then_some(()))
            })
            .await?;
            delete(&client, &crd_path).await;
            eventually(EVENT_TIMEOUT, "the CRD's APIService to go", || async {
                Ok((!apiservice_names(&client).await?.contains(&service)).then_some(()))
            })
            .await
        }
        .await;
        delete(&client, &crd_path).await;
        outcome
    })
    .await
}

#[tokio::test]
async fn componentstatuses_are_served_with_a_deprecation_warning() -> Result<()> {
    in_namespace_with_config("componentstatuses", |client, _, _| async move {
        let response = send(&client, Method::GET, "/api/v1/componentstatuses", None).await?;
        ensure!(
            response.status == 200,
            "HTTP {}: {}",
            response.status,
            response.text()
        );
        let warnings: Vec<String> = response
            .headers
            .get_all(header::WARNING)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect();
        ensure!(
            warnings
                .iter()
                .any(|w| w.contains("v1 ComponentStatus is deprecated in v1.19+")),
            "warnings {warnings:?}"
        );
        let list = response.json()?;
        ensure!(
            list["kind"] == "ComponentStatusList",
            "kind {}",
            list["kind"]
        );
        let names: BTreeSet<String> = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["metadata"]["name"].as_str().map(str::to_owned))
            .collect();
        ensure!(
            names.contains("scheduler") && names.contains("controller-manager"),
            "components {names:?}"
        );
        ensure!(
            list["items"]
                .as_array()
                .into_iter()
                .flatten()
                .all(|c| c["conditions"][0]["type"] == "Healthy"),
            "conditions {list}"
        );
        // Lists filter by field selectors, as kube's REST does.
        let one = names_selected(
            &client,
            "/api/v1/componentstatuses",
            "metadata.name%3Dscheduler",
        )
        .await?;
        ensure!(
            one == set(&["scheduler"]),
            "componentstatuses by name: {one:?}"
        );
        send(
            &client,
            Method::GET,
            "/api/v1/componentstatuses?fieldSelector=spec.x%3Dy",
            None,
        )
        .await?
        .expect_status(400, "BadRequest")
        .context("componentstatuses by an unknown field")?;
        send(
            &client,
            Method::DELETE,
            "/api/v1/componentstatuses/scheduler",
            None,
        )
        .await?
        .expect_status(405, "MethodNotAllowed")?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn ephemeral_containers_are_added_through_their_subresource() -> Result<()> {
    in_namespace_with_config("ephemeral", |client, _, ns| async move {
        create_pod(
            &client,
            &ns,
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "target"},
                "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}]}}),
        )
        .await?;
        let path = format!("/api/v1/namespaces/{ns}/pods/target/ephemeralcontainers");
        let patch = json!({"spec": {
            "ephemeralContainers": [{"name": "debugger", "image": "busybox", "targetContainerName": "app", "stdin": true, "tty": true}],
            "containers": [{"name": "app", "image": "changed"}],
        }});
        let request = http::Request::builder()
            .method(Method::PATCH)
            .uri(&path)
            .header(header::CONTENT_TYPE, "application/strategic-merge-patch+json")
            .header(header::ACCEPT, "application/json")
            .body(serde_json::to_vec(&patch)?)?;
        let response = send_raw(&client, request).await?;
        ensure!(response.status == 200, "PATCH {path}: HTTP {}: {}", response.status, response.text());
        let pod = response.json()?;
        ensure!(pod["kind"] == "Pod", "the subresource answers with the Pod: {}", pod["kind"]);
        ensure!(pod["spec"]["ephemeralContainers"][0]["name"] == "debugger", "ephemeral containers {}", pod["spec"]);
        ensure!(
            pod["spec"]["containers"][0]["image"] == "registry.k8s.io/pause:3.10",
            "the subresource changed the containers: {}",
            pod["spec"]["containers"]
        );
        let stored = ok(&client, Method::GET, &format!("/api/v1/namespaces/{ns}/pods/target"), None).await?;
        ensure!(stored["spec"]["ephemeralContainers"][0]["image"] == "busybox", "stored {}", stored["spec"]);
        let view = ok(&client, Method::GET, &path, None).await?;
        ensure!(view["kind"] == "Pod", "GET {path}: {}", view["kind"]);

        // They may not be removed.
        let mut without = view.clone();
        without["spec"]["ephemeralContainers"] = json!([]);
        send(&client, Method::PUT, &path, Some(&without))
            .await?
            .expect_status(422, "Invalid")?;
        Ok(())
    })
    .await
}
