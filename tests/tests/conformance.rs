//! Conformance of the test-bed API server with kube-apiserver.
//!
//! Every test here runs against the embedded server by default, and against
//! the server named by `UPLINK_CONFORMANCE_KUBECONFIG` when that is set, so
//! the same assertions can be checked against a real kube-apiserver. They are
//! therefore written to hold there too: unique namespaces per test, no
//! cluster-wide assumptions, resource versions compared only for ordering,
//! and a real server's controllers (the deployment controller writes status)
//! taken into account.
//!
//! What cannot be forced on a real server (watch history expiry, workspaces,
//! fault injection) lives in `testbed.rs`.

use std::collections::BTreeSet;

use anyhow::{Context as _, Result, bail, ensure};
use futures::{StreamExt as _, TryStreamExt as _};
use http::{Method, Request, header};
use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentCondition, ReplicaSet},
        batch::v1::Job,
        core::v1::{ConfigMap, Node, Pod, Service, ServiceAccount},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, Discovery,
    api::{
        DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, WatchEvent,
        WatchParams,
    },
    core::{ApiResource, Status},
    discovery::{ApiCapabilities, Scope},
    runtime::watcher,
};
use serde_json::{Value, json};
use uplink_tests::apiserver::{
    AGGREGATED_DISCOVERY_ACCEPT, EVENT_TIMEOUT, RawResponse, create_namespace, delete_namespace,
    event_type, eventually, expect_api_error, in_namespace, next_change, next_event, raw_request,
    resource_version_number, send_raw, unique_name, with_client,
};

#[path = "conformance/cluster_apis.rs"]
mod cluster_apis;

// ---------------------------------------------------------------------------
// Builders and small helpers.

fn configmap(name: &str, labels: &[(&str, &str)], data: &[(&str, &str)]) -> Result<ConfigMap> {
    let labels: serde_json::Map<String, Value> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect();
    let data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect();
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": { "name": name, "labels": labels },
        "data": data,
    }))?)
}

/// A Deployment with no replicas, so a real cluster starts no pods for it.
fn deployment(name: &str) -> Result<Deployment> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": name, "labels": { "app": name } },
        "spec": {
            "replicas": 0,
            "selector": { "matchLabels": { "app": name } },
            "template": {
                "metadata": { "labels": { "app": name } },
                "spec": { "containers": [{ "name": "app", "image": "registry.k8s.io/pause:3.10" }] }
            }
        }
    }))?)
}

/// A condition type no Kubernetes controller knows, so a real deployment
/// controller keeps it when it rewrites the status.
const TEST_CONDITION: &str = "UplinkConformance";

fn status_condition_patch(condition_type: &str, message: &str) -> Value {
    json!({
        "status": {
            "conditions": [{
                "type": condition_type,
                "status": "True",
                "reason": "Test",
                "message": message,
            }]
        }
    })
}

fn deployment_condition<'a>(
    deployment: &'a Deployment,
    condition_type: &str,
) -> Option<&'a DeploymentCondition> {
    deployment
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == condition_type)
}

fn rv_of<K: kube::Resource>(object: &K) -> Result<u64> {
    resource_version_number(object.meta().resource_version.as_deref())
}

fn name_of<K: kube::Resource>(object: &K) -> String {
    object.meta().name.clone().unwrap_or_default()
}

fn names<K: kube::Resource>(objects: &[K]) -> BTreeSet<String> {
    objects.iter().map(name_of).collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

/// The next non-bookmark watch event about one of `names`; events about other
/// objects (a real server creates `kube-root-ca.crt` in every namespace) are
/// skipped.
async fn next_change_about<K, S>(stream: &mut S, names: &[&str]) -> Result<WatchEvent<K>>
where
    K: kube::Resource,
    S: futures::Stream<Item = kube::Result<WatchEvent<K>>> + Unpin,
{
    let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let event = next_change(stream, left).await?;
        let about = match &event {
            WatchEvent::Added(o) | WatchEvent::Modified(o) | WatchEvent::Deleted(o) => name_of(o),
            WatchEvent::Error(status) => bail!("unexpected watch ERROR event: {status:?}"),
            WatchEvent::Bookmark(_) => continue,
        };
        if names.contains(&about.as_str()) {
            return Ok(event);
        }
    }
}

/// Fails unless `event` is of type `expected` about object `name`; returns
/// the object.
fn expect_event<K: kube::Resource + Clone>(
    event: &WatchEvent<K>,
    expected: &str,
    name: &str,
) -> Result<K> {
    let object = match event {
        WatchEvent::Added(o) | WatchEvent::Modified(o) | WatchEvent::Deleted(o) => o,
        other => bail!("expected {expected} {name}, got {}", event_type(other)),
    };
    ensure!(
        event_type(event) == expected && name_of(object) == name,
        "expected {expected} {name}, got {} {}",
        event_type(event),
        name_of(object)
    );
    Ok(object.clone())
}

/// Replaces a Deployment after `change`, retrying when a real deployment
/// controller's status write makes our read stale.
async fn replace_deployment(
    api: &Api<Deployment>,
    name: &str,
    change: impl Fn(&mut Deployment),
) -> Result<Deployment> {
    for _ in 0..5 {
        let mut current = api.get(name).await?;
        change(&mut current);
        match api.replace(name, &PostParams::default(), &current).await {
            Err(kube::Error::Api(status)) if status.code == 409 => continue,
            other => return Ok(other?),
        }
    }
    bail!("replacing deployment {name} conflicted five times in a row")
}

fn configmaps_path(namespace: &str) -> String {
    format!("/api/v1/namespaces/{namespace}/configmaps")
}

// ---------------------------------------------------------------------------
// 1. Discovery.

#[tokio::test]
async fn version_endpoint_answers() -> Result<()> {
    with_client(|client| async move {
        let response = raw_request(&client, Method::GET, "/version", None, Vec::new()).await?;
        ensure!(
            response.status == 200,
            "GET /version: HTTP {}: {}",
            response.status,
            response.text()
        );
        let version = response.json()?;
        for field in ["major", "minor", "gitVersion", "goVersion", "platform"] {
            ensure!(
                version[field].is_string(),
                "/version has no string {field}: {version}"
            );
        }
        let info = client.apiserver_version().await?;
        ensure!(
            info.git_version.starts_with('v'),
            "gitVersion {:?}",
            info.git_version
        );
        Ok(())
    })
    .await
}

/// (group, version, plural, kind, namespaced)
const BUILTIN_RESOURCES: &[(&str, &str, &str, &str, bool)] = &[
    ("", "v1", "namespaces", "Namespace", false),
    ("", "v1", "pods", "Pod", true),
    ("", "v1", "services", "Service", true),
    ("", "v1", "nodes", "Node", false),
    ("", "v1", "events", "Event", true),
    ("", "v1", "configmaps", "ConfigMap", true),
    ("", "v1", "secrets", "Secret", true),
    ("", "v1", "serviceaccounts", "ServiceAccount", true),
    ("apps", "v1", "deployments", "Deployment", true),
    ("apps", "v1", "replicasets", "ReplicaSet", true),
    ("apps", "v1", "statefulsets", "StatefulSet", true),
    ("apps", "v1", "daemonsets", "DaemonSet", true),
    ("batch", "v1", "jobs", "Job", true),
    ("coordination.k8s.io", "v1", "leases", "Lease", true),
    (
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        false,
    ),
];

fn find_resource(
    discovery: &Discovery,
    group: &str,
    version: &str,
    plural: &str,
) -> Option<(ApiResource, ApiCapabilities)> {
    discovery
        .get(group)?
        .versioned_resources(version)
        .into_iter()
        .find(|(resource, _)| resource.plural == plural)
}

fn has_subresource(capabilities: &ApiCapabilities, name: &str) -> bool {
    capabilities
        .subresources
        .iter()
        .any(|(resource, _)| resource.plural == name)
}

fn check_builtin_discovery(discovery: &Discovery, how: &str) -> Result<()> {
    for &(group, version, plural, kind, namespaced) in BUILTIN_RESOURCES {
        let (resource, capabilities) = find_resource(discovery, group, version, plural)
            .with_context(|| format!("{how}: {group}/{version} {plural} not discovered"))?;
        ensure!(
            resource.kind == kind,
            "{how}: {plural} has kind {}",
            resource.kind
        );
        let expected_scope = if namespaced {
            Scope::Namespaced
        } else {
            Scope::Cluster
        };
        ensure!(
            capabilities.scope == expected_scope,
            "{how}: {plural} has scope {:?}, expected {expected_scope:?}",
            capabilities.scope
        );
        for verb in [
            "get", "list", "watch", "create", "update", "patch", "delete",
        ] {
            ensure!(
                capabilities.supports_operation(verb),
                "{how}: {plural} does not list verb {verb}: {:?}",
                capabilities.operations
            );
        }
    }
    let (_, deployments) = find_resource(discovery, "apps", "v1", "deployments")
        .context("deployments not discovered")?;
    ensure!(
        has_subresource(&deployments, "status"),
        "{how}: deployments has no status subresource: {:?}",
        deployments
            .subresources
            .iter()
            .map(|(r, _)| &r.plural)
            .collect::<Vec<_>>()
    );
    Ok(())
}

#[tokio::test]
async fn discovery_finds_builtin_resources() -> Result<()> {
    with_client(|client| async move {
        // Only the groups under test: on a real cluster an unavailable
        // aggregated API (metrics.k8s.io, say) would fail the whole run.
        let groups = [
            "",
            "apps",
            "batch",
            "coordination.k8s.io",
            "apiextensions.k8s.io",
        ];
        let discovery = Discovery::new(client.clone()).filter(&groups).run().await?;
        check_builtin_discovery(&discovery, "legacy discovery")?;
        let aggregated = Discovery::new(client)
            .filter(&groups)
            .run_aggregated()
            .await?;
        check_builtin_discovery(&aggregated, "aggregated discovery")
    })
    .await
}

async fn get_with_accept(client: &Client, path: &str, accept: &str) -> Result<RawResponse> {
    let request = Request::builder()
        .method(Method::GET)
        .uri(path)
        .header(header::ACCEPT, accept)
        .body(Vec::new())?;
    send_raw(client, request).await
}

fn discovery_resource<'a>(list: &'a Value, version: &str, plural: &str) -> Option<&'a Value> {
    list["items"].as_array()?.iter().find_map(|group| {
        group["versions"]
            .as_array()?
            .iter()
            .filter(|v| v["version"] == version)
            .find_map(|v| {
                v["resources"]
                    .as_array()?
                    .iter()
                    .find(|r| r["resource"] == plural)
            })
    })
}

#[tokio::test]
async fn aggregated_discovery_documents() -> Result<()> {
    with_client(|client| async move {
        for (path, plural, scope) in [
            ("/apis", "deployments", "Namespaced"),
            ("/api", "namespaces", "Cluster"),
        ] {
            let response = get_with_accept(&client, path, AGGREGATED_DISCOVERY_ACCEPT).await?;
            ensure!(
                response.status == 200,
                "GET {path}: HTTP {}: {}",
                response.status,
                response.text()
            );
            // client-go decides from the response's Content-Type whether it got
            // the aggregated document.
            let content_type = response
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            ensure!(
                content_type.contains("as=APIGroupDiscoveryList")
                    && content_type.contains("g=apidiscovery.k8s.io"),
                "GET {path}: Content-Type {content_type:?} does not announce APIGroupDiscoveryList"
            );
            let list = response.json()?;
            ensure!(
                list["kind"] == "APIGroupDiscoveryList",
                "GET {path}: kind {}",
                list["kind"]
            );
            ensure!(
                list["apiVersion"] == "apidiscovery.k8s.io/v2",
                "GET {path}: apiVersion {}",
                list["apiVersion"]
            );
            let resource = discovery_resource(&list, "v1", plural)
                .with_context(|| format!("GET {path}: no v1 {plural} in {list}"))?;
            ensure!(
                resource["scope"] == scope,
                "GET {path}: {plural} scope {}",
                resource["scope"]
            );
            if plural == "deployments" {
                let subresources = resource["subresources"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                ensure!(
                    subresources.iter().any(|s| s["subresource"] == "status"),
                    "GET {path}: deployments without status subresource: {resource}"
                );
            }
        }
        // Clients that do not ask for it still get the legacy documents.
        let legacy = get_with_accept(&client, "/apis", "application/json").await?;
        ensure!(legacy.status == 200, "GET /apis: HTTP {}", legacy.status);
        let legacy = legacy.json()?;
        ensure!(
            legacy["kind"] == "APIGroupList",
            "plain GET /apis: kind {}",
            legacy["kind"]
        );
        let legacy_core = get_with_accept(&client, "/api", "application/json")
            .await?
            .json()?;
        ensure!(
            legacy_core["kind"] == "APIVersions",
            "plain GET /api: kind {}",
            legacy_core["kind"]
        );
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------
// 2. CustomResourceDefinitions.

fn crd(
    group: &str,
    plural: &str,
    kind: &str,
    with_status: bool,
) -> Result<CustomResourceDefinition> {
    let mut version = json!({
        "name": "v1",
        "served": true,
        "storage": true,
        "schema": { "openAPIV3Schema": {
            "type": "object",
            "properties": {
                "spec": { "type": "object", "x-kubernetes-preserve-unknown-fields": true },
                "status": { "type": "object", "x-kubernetes-preserve-unknown-fields": true },
            }
        }},
    });
    if with_status {
        version["subresources"] = json!({ "status": {} });
    }
    Ok(serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": { "name": format!("{plural}.{group}") },
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {
                "plural": plural,
                "singular": kind.to_lowercase(),
                "kind": kind,
                "listKind": format!("{kind}List"),
            },
            "versions": [version],
        }
    }))?)
}

async fn wait_established(api: &Api<CustomResourceDefinition>, name: &str) -> Result<()> {
    eventually(
        EVENT_TIMEOUT,
        &format!("CRD {name} to be Established"),
        || async {
            let crd = api.get(name).await?;
            let established = crd
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            Ok(established.then_some(()))
        },
    )
    .await
}

#[tokio::test]
async fn custom_resource_definitions() -> Result<()> {
    in_namespace("crd", |client, namespace| async move {
        let group = format!("{}.uplink.test", unique_name("conf"));
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        let widgets = crd(&group, "widgets", "Widget", true)?;
        let gadgets = crd(&group, "gadgets", "Gadget", false)?;
        let outcome = async {
            crds.create(&PostParams::default(), &widgets).await?;
            crds.create(&PostParams::default(), &gadgets).await?;
            wait_established(&crds, &format!("widgets.{group}")).await?;
            wait_established(&crds, &format!("gadgets.{group}")).await?;

            // The new resources show up in discovery, with the right shape.
            let (widget_resource, widget_caps, gadget_resource, gadget_caps) =
                eventually(EVENT_TIMEOUT, "the CRDs in discovery", || async {
                    let discovery = Discovery::new(client.clone())
                        .filter(&[&group])
                        .run()
                        .await?;
                    let widget = find_resource(&discovery, &group, "v1", "widgets");
                    let gadget = find_resource(&discovery, &group, "v1", "gadgets");
                    Ok(widget
                        .zip(gadget)
                        .map(|((wr, wc), (gr, gc))| (wr, wc, gr, gc)))
                })
                .await?;
            ensure!(
                widget_resource.kind == "Widget",
                "widgets kind {}",
                widget_resource.kind
            );
            ensure!(
                widget_caps.scope == Scope::Namespaced,
                "widgets not namespaced"
            );
            ensure!(
                has_subresource(&widget_caps, "status"),
                "widgets lacks the status subresource"
            );
            ensure!(
                gadget_caps.scope == Scope::Namespaced,
                "gadgets not namespaced"
            );
            ensure!(
                !has_subresource(&gadget_caps, "status"),
                "gadgets has a status subresource it was not given"
            );

            // Custom objects: create, list, /status.
            let widgets: Api<DynamicObject> =
                Api::namespaced_with(client.clone(), &namespace, &widget_resource);
            let mut widget = DynamicObject::new("w1", &widget_resource);
            widget.data = json!({ "spec": { "size": 3 } });
            let created = widgets.create(&PostParams::default(), &widget).await?;
            ensure!(created.metadata.uid.is_some(), "custom object has no uid");
            ensure!(
                created.metadata.generation == Some(1),
                "custom object generation {:?}",
                created.metadata.generation
            );
            let listed = widgets.list(&ListParams::default()).await?;
            ensure!(
                names(&listed.items) == set(&["w1"]),
                "listed widgets: {:?}",
                names(&listed.items)
            );
            ensure!(
                listed.metadata.resource_version.is_some(),
                "custom list has no resourceVersion"
            );

            let patched = widgets
                .patch_status(
                    "w1",
                    &PatchParams::default(),
                    &Patch::Merge(
                        json!({ "status": { "phase": "Ready" }, "spec": { "size": 99 } }),
                    ),
                )
                .await?;
            ensure!(
                patched.data["status"]["phase"] == "Ready",
                "status not written: {}",
                patched.data
            );
            ensure!(
                patched.data["spec"]["size"] == 3,
                "a /status patch changed spec: {}",
                patched.data
            );
            ensure!(
                patched.metadata.generation == Some(1),
                "a /status patch bumped generation"
            );
            let fetched = widgets.get_status("w1").await?;
            ensure!(
                fetched.data["status"]["phase"] == "Ready",
                "GET /status: {}",
                fetched.data
            );

            // Without the status subresource there is no /status.
            let gadgets: Api<DynamicObject> =
                Api::namespaced_with(client.clone(), &namespace, &gadget_resource);
            let mut gadget = DynamicObject::new("g1", &gadget_resource);
            gadget.data = json!({ "spec": { "size": 1 } });
            gadgets.create(&PostParams::default(), &gadget).await?;
            let status_patch = gadgets
                .patch_status(
                    "g1",
                    &PatchParams::default(),
                    &Patch::Merge(json!({ "status": { "phase": "x" } })),
                )
                .await;
            expect_api_error(status_patch, 404, "NotFound")
                .context("PATCH /status without the subresource")?;
            Ok(())
        }
        .await;
        for name in [format!("widgets.{group}"), format!("gadgets.{group}")] {
            let _ = crds.delete(&name, &DeleteParams::default()).await;
        }
        outcome
    })
    .await
}

// ---------------------------------------------------------------------------
// 3. Namespaces.

#[tokio::test]
async fn create_in_missing_namespace_is_not_found() -> Result<()> {
    with_client(|client| async move {
        let missing = unique_name("conf-missing");
        let api: Api<ConfigMap> = Api::namespaced(client, &missing);
        let status = expect_api_error(
            api.create(&PostParams::default(), &configmap("orphan", &[], &[])?)
                .await,
            404,
            "NotFound",
        )?;
        let details = status.details.context("NotFound has no details")?;
        ensure!(
            details.kind == "namespaces",
            "details.kind {:?}",
            details.kind
        );
        ensure!(details.name == missing, "details.name {:?}", details.name);
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------
// 4. Metadata.

#[tokio::test]
async fn metadata_versions_and_generation() -> Result<()> {
    in_namespace("meta", |client, namespace| async move {
        let api: Api<Deployment> = Api::namespaced(client, &namespace);
        let created = api
            .create(&PostParams::default(), &deployment("web")?)
            .await?;
        let uid = created.metadata.uid.clone().context("no uid on create")?;
        ensure!(!uid.is_empty(), "empty uid");
        let created_at = created
            .metadata
            .creation_timestamp
            .clone()
            .context("no creationTimestamp")?;
        ensure!(
            created.metadata.generation == Some(1),
            "generation on create: {:?}",
            created.metadata.generation
        );
        let mut last_rv = rv_of(&created)?;

        let mut check = |object: &Deployment, generation: i64, step: &str| -> Result<()> {
            let rv = rv_of(object)?;
            ensure!(
                rv > last_rv,
                "{step}: resourceVersion {rv} did not increase past {last_rv}"
            );
            last_rv = rv;
            ensure!(
                object.metadata.uid.as_deref() == Some(uid.as_str()),
                "{step}: uid changed"
            );
            ensure!(
                object.metadata.creation_timestamp.as_ref() == Some(&created_at),
                "{step}: creationTimestamp changed"
            );
            ensure!(
                object.metadata.generation == Some(generation),
                "{step}: generation {:?}, expected {generation}",
                object.metadata.generation
            );
            Ok(())
        };

        let spec_changed = api
            .patch(
                "web",
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": { "minReadySeconds": 5 } })),
            )
            .await?;
        check(&spec_changed, 2, "spec change")?;

        let relabelled = api
            .patch(
                "web",
                &PatchParams::default(),
                &Patch::Merge(json!({ "metadata": { "labels": { "extra": "yes" } } })),
            )
            .await?;
        check(&relabelled, 2, "label change")?;

        let status_written = api
            .patch_status(
                "web",
                &PatchParams::default(),
                &Patch::Merge(status_condition_patch(TEST_CONDITION, "metadata")),
            )
            .await?;
        check(&status_written, 2, "status write")?;

        let list = api.list(&ListParams::default()).await?;
        let list_rv = resource_version_number(list.metadata.resource_version.as_deref())?;
        ensure!(
            list_rv >= last_rv,
            "list resourceVersion {list_rv} older than the object's {last_rv}"
        );
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------
// 5. get / list.

async fn create_configmaps(
    api: &Api<ConfigMap>,
    names: &[&str],
    labels: &[(&str, &str)],
) -> Result<()> {
    for name in names {
        api.create(
            &PostParams::default(),
            &configmap(name, labels, &[("k", name)])?,
        )
        .await?;
    }
    Ok(())
}

/// Lists in pages of `limit`, returning the names in the order served and
/// the size of each page.
async fn list_in_pages(
    api: &Api<ConfigMap>,
    params: &ListParams,
    limit: u32,
) -> Result<(Vec<String>, Vec<usize>)> {
    let mut names = Vec::new();
    let mut sizes = Vec::new();
    let mut token: Option<String> = None;
    for page in 0.. {
        ensure!(page < 100, "pagination did not end after 100 pages");
        let mut params = params.clone().limit(limit);
        if let Some(token) = &token {
            params = params.continue_token(token);
        }
        let list = api.list(&params).await?;
        ensure!(
            list.metadata.resource_version.is_some(),
            "page {page} has no resourceVersion"
        );
        sizes.push(list.items.len());
        names.extend(list.items.iter().map(name_of));
        token = list.metadata.continue_.filter(|t| !t.is_empty());
        if token.is_none() {
            break;
        }
    }
    Ok((names, sizes))
}

#[tokio::test]
async fn list_paginates_every_object_exactly_once() -> Result<()> {
    in_namespace("page", |client, namespace| async move {
        let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
        let ours = ["p0", "p1", "p2", "p3", "p4", "p5", "p6"];
        create_configmaps(&api, &ours, &[("suite", &namespace)]).await?;

        let whole = api.list(&ListParams::default()).await?;
        ensure!(
            whole.metadata.resource_version.is_some(),
            "list has no resourceVersion"
        );
        ensure!(
            whole.metadata.continue_.as_deref().unwrap_or("").is_empty(),
            "an unlimited list has a continue token"
        );
        let expected = names(&whole.items);
        ensure!(
            expected.is_superset(&set(&ours)),
            "list misses objects: {expected:?}"
        );

        let (paged, sizes) = list_in_pages(&api, &ListParams::default(), 3).await?;
        ensure!(
            sizes.iter().all(|&n| n <= 3),
            "a page exceeds the limit: {sizes:?}"
        );
        ensure!(
            sizes.len() >= 3,
            "{} objects in pages of 3 came in {} pages",
            paged.len(),
            sizes.len()
        );
        let unique: BTreeSet<String> = paged.iter().cloned().collect();
        ensure!(
            unique.len() == paged.len(),
            "an object came twice: {paged:?}"
        );
        ensure!(unique == expected, "pages {unique:?} != list {expected:?}");

        let selected = ListParams::default().labels(&format!("suite={namespace}"));
        let (paged, _) = list_in_pages(&api, &selected, 2).await?;
        let unique: BTreeSet<String> = paged.iter().cloned().collect();
        ensure!(
            unique.len() == paged.len() && unique == set(&ours),
            "selected pages: {paged:?}"
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn list_pages_are_one_consistent_snapshot() -> Result<()> {
    in_namespace("snap", |client, namespace| async move {
        let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
        let ours = ["s0", "s1", "s2", "s3", "s4", "s5"];
        let selected = ListParams::default().labels(&format!("suite={namespace}"));
        create_configmaps(&api, &ours, &[("suite", &namespace)]).await?;

        // Between the first page and the rest, one object is deleted and one
        // created. The later pages are served from the first page's snapshot.
        let first = api.list(&selected.clone().limit(2)).await?;
        let mut token = first.metadata.continue_.clone().filter(|t| !t.is_empty());
        ensure!(
            token.is_some(),
            "no continue token on a first page of 2 out of 6"
        );
        api.delete("s5", &DeleteParams::default()).await?;
        api.create(
            &PostParams::default(),
            &configmap("s9-late", &[("suite", &namespace)], &[])?,
        )
        .await?;

        let mut seen: Vec<String> = first.items.iter().map(name_of).collect();
        let mut versions = vec![
            first
                .metadata
                .resource_version
                .clone()
                .context("page without resourceVersion")?,
        ];
        while let Some(t) = token {
            let page = api
                .list(&selected.clone().limit(2).continue_token(&t))
                .await?;
            versions.push(
                page.metadata
                    .resource_version
                    .clone()
                    .context("page without resourceVersion")?,
            );
            seen.extend(page.items.iter().map(name_of));
            token = page.metadata.continue_.filter(|t| !t.is_empty());
        }
        let unique: BTreeSet<String> = seen.iter().cloned().collect();
        ensure!(unique.len() == seen.len(), "an object came twice: {seen:?}");
        ensure!(
            unique == set(&ours),
            "pages around concurrent writes: {seen:?}, expected the snapshot {ours:?}"
        );
        ensure!(
            versions.windows(2).all(|w| w[0] == w[1]),
            "pages of one list carry different resourceVersions: {versions:?}"
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn label_selectors_on_list() -> Result<()> {
    in_namespace("labels", |client, namespace| async move {
        let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
        let suite = namespace.as_str();
        api.create(
            &PostParams::default(),
            &configmap(
                "a",
                &[("suite", suite), ("tier", "web"), ("env", "prod")],
                &[],
            )?,
        )
        .await?;
        api.create(
            &PostParams::default(),
            &configmap(
                "b",
                &[("suite", suite), ("tier", "db"), ("env", "prod")],
                &[],
            )?,
        )
        .await?;
        api.create(
            &PostParams::default(),
            &configmap("c", &[("suite", suite), ("tier", "cache")], &[])?,
        )
        .await?;
        api.create(
            &PostParams::default(),
            &configmap("d", &[("suite", suite), ("env", "dev")], &[])?,
        )
        .await?;

        let cases: &[(&str, &[&str])] = &[
            ("tier=web", &["a"]),
            ("tier==web", &["a"]),
            ("tier!=web", &["b", "c", "d"]),
            ("tier in (web,db)", &["a", "b"]),
            ("tier notin (web,db)", &["c", "d"]),
            ("env", &["a", "b", "d"]),
            ("!env", &["c"]),
            ("tier=web,env=prod", &["a"]),
            ("env=prod,tier!=web", &["b"]),
            ("tier in (nothing)", &[]),
        ];
        for (selector, expected) in cases {
            let full = format!("suite={suite},{selector}");
            let list = api.list(&ListParams::default().labels(&full)).await?;
            ensure!(
                names(&list.items) == set(expected),
                "labelSelector {full:?} selected {:?}, expected {expected:?}",
                names(&list.items)
            );
        }
        Ok(())
    })
    .await
}

#[tokio::test]
async fn field_selectors_on_list() -> Result<()> {
    in_namespace("fields", |client, namespace| async move {
        let other = create_namespace(&client, "conf-fields-other").await?;
        let outcome = async {
            let here: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
            let there: Api<ConfigMap> = Api::namespaced(client.clone(), &other);
            let suite = format!("suite={namespace}");
            let labels = [("suite", namespace.as_str())];
            create_configmaps(&here, &["a", "b", "c"], &labels).await?;
            create_configmaps(&there, &["a"], &labels).await?;

            let by_name = here
                .list(&ListParams::default().fields("metadata.name=a"))
                .await?;
            ensure!(
                names(&by_name.items) == set(&["a"]),
                "metadata.name=a: {:?}",
                names(&by_name.items)
            );
            let not_name = here
                .list(
                    &ListParams::default()
                        .labels(&suite)
                        .fields("metadata.name!=a"),
                )
                .await?;
            ensure!(
                names(&not_name.items) == set(&["b", "c"]),
                "metadata.name!=a: {:?}",
                names(&not_name.items)
            );

            let everywhere: Api<ConfigMap> = Api::all(client.clone());
            let all = everywhere
                .list(&ListParams::default().labels(&suite))
                .await?;
            ensure!(
                all.items.len() == 4,
                "across namespaces: {} objects",
                all.items.len()
            );
            for (ns, expected) in [(&namespace, 3), (&other, 1)] {
                let list = everywhere
                    .list(
                        &ListParams::default()
                            .labels(&suite)
                            .fields(&format!("metadata.namespace={ns}")),
                    )
                    .await?;
                ensure!(
                    list.items.len() == expected,
                    "metadata.namespace={ns}: {} objects",
                    list.items.len()
                );
                ensure!(
                    list.items
                        .iter()
                        .all(|o| o.metadata.namespace.as_deref() == Some(ns.as_str())),
                    "metadata.namespace={ns} let another namespace through"
                );
            }
            let both = everywhere
                .list(
                    &ListParams::default()
                        .fields(&format!("metadata.namespace={other},metadata.name=a")),
                )
                .await?;
            ensure!(
                both.items.len() == 1,
                "two field requirements: {} objects",
                both.items.len()
            );
            Ok(())
        }
        .await;
        delete_namespace(&client, &other).await;
        outcome
    })
    .await
}

/// The names a list with `fields` returns.
async fn names_with_fields<K>(api: &Api<K>, fields: &str) -> Result<BTreeSet<String>>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    let list = api
        .list(&ListParams::default().fields(fields))
        .await
        .with_context(|| format!("listing with fieldSelector {fields}"))?;
    Ok(names(&list.items))
}

/// Field selectors read unset fields as kube stores them (defaulted, or
/// Go's zero value) and accept each built-in kind's own fields only.
#[tokio::test]
async fn field_selectors_match_defaults_and_each_kinds_fields() -> Result<()> {
    in_namespace("fielddef", |client, namespace| async move {
        // A node without spec.unschedulable is schedulable.
        let node = unique_name("conf-node");
        let nodes: Api<Node> = Api::all(client.clone());
        nodes
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "apiVersion": "v1", "kind": "Node", "metadata": { "name": node }
                }))?,
            )
            .await?;
        let checked = async {
            let only = set(&[node.as_str()]);
            for (fields, expected) in [
                ("spec.unschedulable=false", &only),
                ("spec.unschedulable==false", &only),
                ("spec.unschedulable!=true", &only),
                ("spec.unschedulable=true", &BTreeSet::new()),
            ] {
                let got =
                    names_with_fields(&nodes, &format!("metadata.name={node},{fields}")).await?;
                ensure!(&got == expected, "nodes with {fields}: {got:?}");
            }
            expect_api_error(
                nodes
                    .list(&ListParams::default().fields("metadata.namespace=default"))
                    .await,
                400,
                "BadRequest",
            )
            .context("metadata.namespace on nodes")
        }
        .await;
        let _ = nodes.delete(&node, &DeleteParams::default()).await;
        checked?;

        // A service without a type is a ClusterIP service.
        let services: Api<Service> = Api::namespaced(client.clone(), &namespace);
        services
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "apiVersion": "v1", "kind": "Service",
                    "metadata": { "name": "svc" },
                    "spec": { "selector": { "app": "none" }, "ports": [{ "port": 80 }] },
                }))?,
            )
            .await?;
        ensure!(
            names_with_fields(&services, "spec.type=ClusterIP").await? == set(&["svc"]),
            "spec.type=ClusterIP did not match a service without a type"
        );
        ensure!(
            names_with_fields(&services, "spec.type=NodePort")
                .await?
                .is_empty(),
            "spec.type=NodePort matched a ClusterIP service"
        );

        // A job that has run nothing has status.successful=0 (from status.succeeded).
        let jobs: Api<Job> = Api::namespaced(client.clone(), &namespace);
        jobs.create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "batch/v1", "kind": "Job",
                "metadata": { "name": "job" },
                "spec": {
                    "suspend": true,
                    "template": { "spec": {
                        "restartPolicy": "Never",
                        "containers": [{ "name": "c", "image": "registry.k8s.io/pause:3.10" }],
                    } },
                },
            }))?,
        )
        .await?;
        ensure!(
            names_with_fields(&jobs, "status.successful=0").await? == set(&["job"]),
            "status.successful=0 did not match a job that has run nothing"
        );
        expect_api_error(
            jobs.list(&ListParams::default().fields("status.succeeded=0"))
                .await,
            400,
            "BadRequest",
        )
        .context("status.succeeded is no field label of jobs")?;

        // apps/v1 registers no field labels beyond metadata: status.replicas is refused.
        let replicasets: Api<ReplicaSet> = Api::namespaced(client, &namespace);
        let refused = expect_api_error(
            replicasets
                .list(&ListParams::default().fields("status.replicas=0"))
                .await,
            400,
            "BadRequest",
        )
        .context("status.replicas on apps/v1 replicasets")?;
        ensure!(
            refused.message.contains("status.replicas"),
            "the refusal does not name the field: {}",
            refused.message
        );
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------
// 6. update.

#[tokio::test]
async fn update_with_stale_resource_version_conflicts() -> Result<()> {
    in_namespace("update", |client, namespace| async move {
        let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
        let original = api
            .create(
                &PostParams::default(),
                &configmap("cm", &[], &[("v", "1")])?,
            )
            .await?;
        let mut fresh = original.clone();
        fresh.data = Some([("v".to_owned(), "2".to_owned())].into());
        let updated = api.replace("cm", &PostParams::default(), &fresh).await?;
        ensure!(
            rv_of(&updated)? > rv_of(&original)?,
            "update did not advance resourceVersion"
        );

        let mut stale = original.clone();
        stale.data = Some([("v".to_owned(), "stale".to_owned())].into());
        expect_api_error(
            api.replace("cm", &PostParams::default(), &stale).await,
            409,
            "Conflict",
        )?;
        let current = api.get("cm").await?;
        ensure!(
            current
                .data
                .as_ref()
                .and_then(|d| d.get("v"))
                .map(String::as_str)
                == Some("2"),
            "a conflicting update was stored: {:?}",
            current.data
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn create_existing_is_already_exists() -> Result<()> {
    in_namespace("exists", |client, namespace| async move {
        let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
        api.create(&PostParams::default(), &configmap("cm", &[], &[])?)
            .await?;
        let status = expect_api_error(
            api.create(&PostParams::default(), &configmap("cm", &[], &[])?)
                .await,
            409,
            "AlreadyExists",
        )?;
        let details = status.details.context("AlreadyExists has no details")?;
        ensure!(
            details.name == "cm" && details.kind == "configmaps",
            "details {details:?}"
        );
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------
// 7. delete.

#[tokio::test]
async fn delete_removes_the_object() -> Result<()> {
    in_namespace("delete", |client, namespace| async move {
        let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
        api.create(&PostParams::default(), &configmap("cm", &[], &[])?)
            .await?;
        api.delete("cm", &DeleteParams::default()).await?;
        expect_api_error(api.get("cm").await, 404, "NotFound")?;
        expect_api_error(
            api.delete("cm", &DeleteParams::default()).await,
            404,
            "NotFound",
        )?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn delete_waits_for_finalizers() -> Result<()> {
    in_namespace("final", |client, namespace| async move {
        let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
        let mut held = configmap("held", &[], &[])?;
        held.metadata.finalizers = Some(vec!["uplink.test/hold".to_owned()]);
        api.create(&PostParams::default(), &held).await?;

        api.delete("held", &DeleteParams::default()).await?;
        let terminating = api
            .get("held")
            .await
            .context("an object with a finalizer vanished on delete")?;
        ensure!(
            terminating.metadata.deletion_timestamp.is_some(),
            "no deletionTimestamp after delete"
        );
        ensure!(
            terminating.metadata.finalizers.as_deref()
                == Some(&["uplink.test/hold".to_owned()][..]),
            "finalizers changed: {:?}",
            terminating.metadata.finalizers
        );

        api.patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "finalizers": null } })),
        )
        .await?;
        eventually(
            EVENT_TIMEOUT,
            "the object to go once its finalizer is removed",
            || async {
                match api.get_opt("held").await? {
                    None => Ok(Some(())),
                    Some(_) => Ok(None),
                }
            },
        )
        .await
    })
    .await
}

// ---------------------------------------------------------------------------
// 8. watch.

#[tokio::test]
async fn watch_delivers_changes_in_order_from_a_list_version() -> Result<()> {
    in_namespace("watch", |client, namespace| async move {
        let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
        let start = api.list(&ListParams::default()).await?;
        let start_rv = start
            .metadata
            .resource_version
            .clone()
            .context("list without resourceVersion")?;

        // Written before the watch starts: replayed from the list's version.
        api.create(
            &PostParams::default(),
            &configmap("early", &[], &[("v", "1")])?,
        )
        .await?;
        api.patch(
            "early",
            &PatchParams::default(),
            &Patch::Merge(json!({ "data": { "v": "2" } })),
        )
        .await?;
        api.delete("early", &DeleteParams::default()).await?;

        let mut stream = api
            .watch(&WatchParams::default().timeout(60), &start_rv)
            .await?
            .boxed();
        let names = ["early", "late"];
        let mut last = resource_version_number(Some(&start_rv))?;
        let mut expect = async |kind: &str, name: &str| -> Result<ConfigMap> {
            let event = next_change_about(&mut stream, &names).await?;
            let object = expect_event(&event, kind, name)?;
            let rv = rv_of(&object)?;
            ensure!(
                rv > last,
                "{kind} {name}: resourceVersion {rv} not after {last}"
            );
            last = rv;
            Ok(object)
        };
        expect("ADDED", "early").await?;
        let modified = expect("MODIFIED", "early").await?;
        ensure!(
            modified
                .data
                .as_ref()
                .and_then(|d| d.get("v"))
                .map(String::as_str)
                == Some("2"),
            "MODIFIED carries {:?}",
            modified.data
        );
        expect("DELETED", "early").await?;

        // Written while the watch is open: delivered live.
        api.create(&PostParams::default(), &configmap("late", &[], &[])?)
            .await?;
        expect("ADDED", "late").await?;
        api.patch(
            "late",
            &PatchParams::default(),
            &Patch::Merge(json!({ "data": { "x": "y" } })),
        )
        .await?;
        expect("MODIFIED", "late").await?;
        api.delete("late", &DeleteParams::default()).await?;
        expect("DELETED", "late").await?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn watch_ends_at_timeout_seconds() -> Result<()> {
    in_namespace("wtimeout", |client, namespace| async move {
        let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
        let rv = api
            .list(&ListParams::default())
            .await?
            .metadata
            .resource_version
            .unwrap_or_default();
        let started = tokio::time::Instant::now();
        let mut stream = api
            .watch(&WatchParams::default().timeout(2).disable_bookmarks(), &rv)
            .await?
            .boxed();
        let ended = tokio::time::timeout(EVENT_TIMEOUT, async {
            while let Some(item) = stream.next().await {
                item?;
            }
            Ok::<_, kube::Error>(())
        })
        .await;
        match ended {
            Err(_) => bail!("a watch with timeoutSeconds=2 was still open after {EVENT_TIMEOUT:?}"),
            Ok(result) => result?,
        }
        let took = started.elapsed();
        ensure!(
            took >= std::time::Duration::from_secs(1),
            "the watch ended after only {took:?}"
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn watch_sends_bookmarks_when_allowed() -> Result<()> {
    in_namespace("bookmark", |client, namespace| async move {
        let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
        let rv = api
            .list(&ListParams::default())
            .await?
            .metadata
            .resource_version
            .unwrap_or_default();
        // A real server sends a bookmark shortly before a watch's timeout (or
        // once a minute); the test bed at its configured interval.
        let mut stream = api
            .watch(&WatchParams::default().timeout(10), &rv)
            .await?
            .boxed();
        api.create(&PostParams::default(), &configmap("marked", &[], &[])?)
            .await?;
        let mut added_rv = None;
        let bookmark_rv = loop {
            match next_event(&mut stream, EVENT_TIMEOUT)
                .await
                .context("waiting for a BOOKMARK")?
            {
                WatchEvent::Added(o) if name_of(&o) == "marked" => added_rv = Some(rv_of(&o)?),
                WatchEvent::Bookmark(b) => {
                    ensure!(
                        b.types.kind == "ConfigMap",
                        "bookmark kind {:?}",
                        b.types.kind
                    );
                    if added_rv.is_some() {
                        break resource_version_number(Some(&b.metadata.resource_version))?;
                    }
                }
                WatchEvent::Error(status) => bail!("ERROR event: {status:?}"),
                _ => {}
            }
        };
        let added_rv = added_rv.context("no ADDED before the bookmark")?;
        ensure!(
            bookmark_rv >= added_rv,
            "bookmark resourceVersion {bookmark_rv} is behind the delivered {added_rv}"
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn watch_with_label_selector() -> Result<()> {
    in_namespace("wlabels", |client, namespace| async move {
        let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
        let rv = api
            .list(&ListParams::default())
            .await?
            .metadata
            .resource_version
            .unwrap_or_default();
        let selector = format!("suite={namespace},watched=yes");
        let mut stream = api
            .watch(&WatchParams::default().timeout(60).labels(&selector), &rv)
            .await?
            .boxed();
        let names = ["ignored", "seen"];
        let suite = namespace.as_str();

        api.create(
            &PostParams::default(),
            &configmap("ignored", &[("suite", suite), ("watched", "no")], &[])?,
        )
        .await?;
        api.create(
            &PostParams::default(),
            &configmap("seen", &[("suite", suite), ("watched", "yes")], &[])?,
        )
        .await?;
        expect_event(
            &next_change_about(&mut stream, &names).await?,
            "ADDED",
            "seen",
        )?;

        // Leaving the selection is a DELETED, entering it an ADDED.
        let relabel =
            |value: &str| Patch::Merge(json!({ "metadata": { "labels": { "watched": value } } }));
        api.patch("seen", &PatchParams::default(), &relabel("no"))
            .await?;
        expect_event(
            &next_change_about(&mut stream, &names).await?,
            "DELETED",
            "seen",
        )?;
        api.patch("ignored", &PatchParams::default(), &relabel("yes"))
            .await?;
        expect_event(
            &next_change_about(&mut stream, &names).await?,
            "ADDED",
            "ignored",
        )?;
        api.patch(
            "ignored",
            &PatchParams::default(),
            &Patch::Merge(json!({ "data": { "a": "b" } })),
        )
        .await?;
        expect_event(
            &next_change_about(&mut stream, &names).await?,
            "MODIFIED",
            "ignored",
        )?;
        api.delete("ignored", &DeleteParams::default()).await?;
        expect_event(
            &next_change_about(&mut stream, &names).await?,
            "DELETED",
            "ignored",
        )?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn watch_with_field_selector() -> Result<()> {
    in_namespace("wfields", |client, namespace| async move {
        let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
        let rv = api
            .list(&ListParams::default())
            .await?
            .metadata
            .resource_version
            .unwrap_or_default();
        let mut stream = api
            .watch(
                &WatchParams::default()
                    .timeout(60)
                    .fields("metadata.name=target"),
                &rv,
            )
            .await?
            .boxed();
        let names = ["other", "target"];
        api.create(&PostParams::default(), &configmap("other", &[], &[])?)
            .await?;
        api.create(&PostParams::default(), &configmap("target", &[], &[])?)
            .await?;
        expect_event(
            &next_change_about(&mut stream, &names).await?,
            "ADDED",
            "target",
        )?;
        let touch = Patch::Merge(json!({ "data": { "touched": "yes" } }));
        api.patch("other", &PatchParams::default(), &touch).await?;
        api.patch("target", &PatchParams::default(), &touch).await?;
        expect_event(
            &next_change_about(&mut stream, &names).await?,
            "MODIFIED",
            "target",
        )?;
        api.delete("other", &DeleteParams::default()).await?;
        api.delete("target", &DeleteParams::default()).await?;
        expect_event(
            &next_change_about(&mut stream, &names).await?,
            "DELETED",
            "target",
        )?;
        Ok(())
    })
    .await
}

/// The next object `kube::runtime::watcher` reports as applied under `name`.
async fn next_applied<S>(events: &mut S, name: &str) -> Result<Deployment>
where
    S: futures::Stream<Item = Result<watcher::Event<Deployment>, watcher::Error>> + Unpin,
{
    loop {
        let event = tokio::time::timeout(EVENT_TIMEOUT, events.try_next())
            .await
            .context("no watcher event in time")??
            .context("the watcher stream ended")?;
        match event {
            watcher::Event::Apply(d) | watcher::Event::InitApply(d) if name_of(&d) == name => {
                return Ok(d);
            }
            _ => {}
        }
    }
}

#[tokio::test]
async fn runtime_watcher_sees_create_and_status_change() -> Result<()> {
    in_namespace("watcher", |client, namespace| async move {
        let api: Api<Deployment> = Api::namespaced(client, &namespace);
        let mut events = watcher(api.clone(), watcher::Config::default()).boxed();
        api.create(&PostParams::default(), &deployment("web")?)
            .await?;
        next_applied(&mut events, "web")
            .await
            .context("the watcher did not see the created Deployment")?;

        api.patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(status_condition_patch(TEST_CONDITION, "watcher")),
        )
        .await?;
        loop {
            let seen = next_applied(&mut events, "web")
                .await
                .context("the watcher did not see the status change")?;
            if deployment_condition(&seen, TEST_CONDITION).is_some() {
                return Ok(());
            }
        }
    })
    .await
}

// ---------------------------------------------------------------------------
// 9. The /status subresource.

#[tokio::test]
async fn status_subresource_is_separate_from_the_main_resource() -> Result<()> {
    in_namespace("status", |client, namespace| async move {
        let api: Api<Deployment> = Api::namespaced(client, &namespace);
        let mut with_status = deployment("web")?;
        with_status.status =
            serde_json::from_value(status_condition_patch("Sneaky", "create")["status"].clone())?;
        let created = api.create(&PostParams::default(), &with_status).await?;
        ensure!(
            deployment_condition(&created, "Sneaky").is_none(),
            "create stored status: {:?}",
            created.status
        );

        // A /status patch changes status only; spec in the same patch is ignored.
        let mut patch = status_condition_patch(TEST_CONDITION, "via /status");
        patch["spec"] = json!({ "minReadySeconds": 30 });
        let patched = api
            .patch_status("web", &PatchParams::default(), &Patch::Merge(patch))
            .await?;
        ensure!(
            deployment_condition(&patched, TEST_CONDITION).is_some(),
            "/status patch not applied: {:?}",
            patched.status
        );
        let spec = patched.spec.as_ref().context("no spec")?;
        ensure!(
            spec.min_ready_seconds.unwrap_or(0) == 0,
            "/status patch changed spec: {:?}",
            spec.min_ready_seconds
        );
        ensure!(
            patched.metadata.generation == Some(1),
            "/status patch bumped generation to {:?}",
            patched.metadata.generation
        );

        // Writes to the main resource leave status alone.
        let replaced = replace_deployment(&api, "web", |d| {
            d.spec
                .get_or_insert_with(Default::default)
                .min_ready_seconds = Some(5);
            if let Ok(status) =
                serde_json::from_value(status_condition_patch("Sneaky", "put")["status"].clone())
            {
                d.status = Some(status);
            }
        })
        .await?;
        ensure!(
            deployment_condition(&replaced, "Sneaky").is_none(),
            "PUT changed status: {:?}",
            replaced.status
        );
        ensure!(
            deployment_condition(&replaced, TEST_CONDITION).is_some(),
            "PUT dropped status: {:?}",
            replaced.status
        );
        ensure!(
            replaced.spec.as_ref().and_then(|s| s.min_ready_seconds) == Some(5),
            "PUT did not change spec"
        );
        ensure!(
            replaced.metadata.generation == Some(2),
            "spec PUT: generation {:?}",
            replaced.metadata.generation
        );

        let mut merge = status_condition_patch("Sneaky", "merge");
        merge["metadata"] = json!({ "labels": { "merged": "yes" } });
        let merged = api
            .patch("web", &PatchParams::default(), &Patch::Merge(merge))
            .await?;
        ensure!(
            deployment_condition(&merged, "Sneaky").is_none(),
            "merge patch changed status: {:?}",
            merged.status
        );
        ensure!(
            deployment_condition(&merged, TEST_CONDITION).is_some(),
            "merge patch dropped status"
        );

        let fetched = api.get("web").await?;
        ensure!(
            deployment_condition(&fetched, "Sneaky").is_none(),
            "status leaked in: {:?}",
            fetched.status
        );
        ensure!(
            deployment_condition(&fetched, TEST_CONDITION).is_some(),
            "status lost: {:?}",
            fetched.status
        );
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------
// 10. patch.

fn data_of(cm: &ConfigMap) -> Vec<(String, String)> {
    cm.data.clone().unwrap_or_default().into_iter().collect()
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[tokio::test]
async fn merge_patch() -> Result<()> {
    in_namespace("merge", |client, namespace| async move {
        let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
        api.create(&PostParams::default(), &configmap("cm", &[("keep", "1")], &[("a", "1"), ("b", "1")])?).await?;
        let patched = api
            .patch(
                "cm",
                &PatchParams::default(),
                &Patch::Merge(json!({ "metadata": { "labels": { "new": "2" } }, "data": { "a": null, "b": "2", "c": "3" } })),
            )
            .await?;
        ensure!(data_of(&patched) == pairs(&[("b", "2"), ("c", "3")]), "data after merge patch: {:?}", patched.data);
        let labels = patched.metadata.labels.clone().unwrap_or_default();
        ensure!(labels.get("keep").map(String::as_str) == Some("1"), "merge patch dropped a label: {labels:?}");
        ensure!(labels.get("new").map(String::as_str) == Some("2"), "merge patch did not add a label: {labels:?}");
        ensure!(data_of(&api.get("cm").await?) == data_of(&patched), "the patched object was not stored");
        Ok(())
    })
    .await
}

/// Sends a JSON patch (RFC 6902) by hand: kube's typed `Patch::Json` is
/// built on another major version of the json-patch crate than ours.
async fn json_patch_configmap(
    client: &Client,
    namespace: &str,
    name: &str,
    operations: Value,
) -> Result<RawResponse> {
    raw_request(
        client,
        Method::PATCH,
        &format!("{}/{name}", configmaps_path(namespace)),
        Some("application/json-patch+json"),
        serde_json::to_vec(&operations)?,
    )
    .await
}

#[tokio::test]
async fn json_patch() -> Result<()> {
    in_namespace("jsonpatch", |client, namespace| async move {
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
        api.create(
            &PostParams::default(),
            &configmap("cm", &[("drop", "me")], &[("a", "1"), ("b", "1")])?,
        )
        .await?;
        let response = json_patch_configmap(
            &client,
            &namespace,
            "cm",
            json!([
                { "op": "add", "path": "/data/c", "value": "3" },
                { "op": "replace", "path": "/data/b", "value": "2" },
                { "op": "remove", "path": "/data/a" },
                { "op": "remove", "path": "/metadata/labels/drop" },
                { "op": "test", "path": "/data/c", "value": "3" },
            ]),
        )
        .await?;
        ensure!(
            response.status == 200,
            "JSON patch: HTTP {}: {}",
            response.status,
            response.text()
        );
        let patched: ConfigMap = serde_json::from_slice(&response.body)?;
        ensure!(
            data_of(&patched) == pairs(&[("b", "2"), ("c", "3")]),
            "data after JSON patch: {:?}",
            patched.data
        );
        ensure!(
            !patched
                .metadata
                .labels
                .clone()
                .unwrap_or_default()
                .contains_key("drop"),
            "JSON patch did not remove the label"
        );
        ensure!(
            data_of(&api.get("cm").await?) == data_of(&patched),
            "the patched object was not stored"
        );

        // A failing "test" operation rejects the whole patch.
        let response = json_patch_configmap(
            &client,
            &namespace,
            "cm",
            json!([
                { "op": "replace", "path": "/data/b", "value": "changed" },
                { "op": "test", "path": "/data/c", "value": "not-3" },
            ]),
        )
        .await?;
        check_status(&response, 422, "Invalid", "a JSON patch whose test fails")?;
        ensure!(
            data_of(&api.get("cm").await?) == pairs(&[("b", "2"), ("c", "3")]),
            "a failed JSON patch was partly applied"
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn merge_patch_with_stale_resource_version_conflicts() -> Result<()> {
    in_namespace("patchrv", |client, namespace| async move {
        let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
        let original = api
            .create(
                &PostParams::default(),
                &configmap("cm", &[], &[("v", "1")])?,
            )
            .await?;
        let stale_rv = original
            .metadata
            .resource_version
            .clone()
            .context("no resourceVersion")?;
        api.patch(
            "cm",
            &PatchParams::default(),
            &Patch::Merge(json!({ "data": { "v": "2" } })),
        )
        .await?;
        let stale = Patch::Merge(
            json!({ "metadata": { "resourceVersion": stale_rv }, "data": { "v": "stale" } }),
        );
        expect_api_error(
            api.patch("cm", &PatchParams::default(), &stale).await,
            409,
            "Conflict",
        )?;
        ensure!(
            data_of(&api.get("cm").await?) == pairs(&[("v", "2")]),
            "a conflicting patch was stored"
        );

        // The current resourceVersion is accepted.
        let current_rv = api
            .get("cm")
            .await?
            .metadata
            .resource_version
            .context("no resourceVersion")?;
        let fresh = Patch::Merge(
            json!({ "metadata": { "resourceVersion": current_rv }, "data": { "v": "3" } }),
        );
        let patched = api.patch("cm", &PatchParams::default(), &fresh).await?;
        ensure!(
            data_of(&patched) == pairs(&[("v", "3")]),
            "a patch with the current resourceVersion failed"
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn server_side_apply_of_status() -> Result<()> {
    in_namespace("ssa", |client, namespace| async move {
        let api: Api<Deployment> = Api::namespaced(client, &namespace);
        api.create(&PostParams::default(), &deployment("web")?)
            .await?;
        let apply = json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": { "name": "web" },
            "status": status_condition_patch(TEST_CONDITION, "applied")["status"],
        });
        let applied = api
            .patch_status(
                "web",
                &PatchParams::apply("uplink-hub"),
                &Patch::Apply(apply),
            )
            .await?;
        let condition =
            deployment_condition(&applied, TEST_CONDITION).context("applied condition missing")?;
        ensure!(
            condition.message.as_deref() == Some("applied"),
            "condition {condition:?}"
        );
        ensure!(
            applied.metadata.generation == Some(1),
            "status apply bumped generation"
        );
        ensure!(
            applied.spec.as_ref().and_then(|s| s.replicas) == Some(0),
            "status apply touched spec: {:?}",
            applied.spec.as_ref().map(|s| s.replicas)
        );
        let fetched = api.get("web").await?;
        ensure!(
            deployment_condition(&fetched, TEST_CONDITION).is_some(),
            "applied status not stored"
        );
        Ok(())
    })
    .await
}

/// A condition of a type no Kubernetes controller knows (see
/// [`TEST_CONDITION`]), as a server-side apply configuration item.
fn applied_condition(condition_type: &str, message: &str) -> Value {
    json!({ "type": condition_type, "status": "True", "reason": "Test", "message": message })
}

/// `manager` server-side applies `status` to Deployment `web`'s /status.
async fn apply_deployment_status(
    api: &Api<Deployment>,
    manager: &str,
    params: PatchParams,
    status: Value,
) -> kube::Result<Deployment> {
    let params = PatchParams {
        field_manager: Some(manager.to_owned()),
        ..params
    };
    api.patch_status(
        "web",
        &params,
        &Patch::Apply(json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": { "name": "web" },
            "status": status,
        })),
    )
    .await
}

/// The managedFields entry of `manager`'s applies to /status.
fn status_apply_entry<'a>(
    deployment: &'a Deployment,
    manager: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry> {
    deployment
        .metadata
        .managed_fields
        .as_ref()?
        .iter()
        .find(|e| {
            e.manager.as_deref() == Some(manager)
                && e.operation.as_deref() == Some("Apply")
                && e.subresource.as_deref() == Some("status")
        })
}

/// Deployment status conditions are an associative list keyed by `type`:
/// managers that apply conditions of different types to /status each own
/// theirs, recorded as applies to the `status` subresource, and one
/// manager's apply leaves the other's conditions alone.
#[tokio::test]
async fn server_side_apply_of_status_merges_conditions_by_type() -> Result<()> {
    in_namespace("ssamerge", |client, namespace| async move {
        let api: Api<Deployment> = Api::namespaced(client, &namespace);
        api.create(&PostParams::default(), &deployment("web")?)
            .await?;
        let hub_type = format!("{TEST_CONDITION}Hub");
        let other_type = format!("{TEST_CONDITION}Other");
        let status = |condition_type: &str, message: &str| {
            json!({ "conditions": [applied_condition(condition_type, message)] })
        };
        apply_deployment_status(&api, "hub", PatchParams::default(), status(&hub_type, "one"))
            .await?;
        apply_deployment_status(
            &api,
            "other",
            PatchParams::default(),
            status(&other_type, "theirs"),
        )
        .await?;
        let applied =
            apply_deployment_status(&api, "hub", PatchParams::default(), status(&hub_type, "two"))
                .await?;
        let message = |d: &Deployment, t: &str| {
            deployment_condition(d, t).and_then(|c| c.message.clone())
        };
        ensure!(
            message(&applied, &hub_type).as_deref() == Some("two")
                && message(&applied, &other_type).as_deref() == Some("theirs"),
            "conditions after both applies: {:?}",
            applied.status
        );
        let fetched = api.get_status("web").await?;
        for (manager, condition_type) in [("hub", &hub_type), ("other", &other_type)] {
            let entry = status_apply_entry(&fetched, manager)
                .with_context(|| format!("no /status apply entry of {manager}"))?;
            let owned = serde_json::to_value(&entry.fields_v1)?;
            let item = format!("k:{}", json!({ "type": condition_type }));
            ensure!(
                owned["f:status"]["f:conditions"].get(&item).is_some(),
                "{manager} does not own its condition: {owned}"
            );
        }
        Ok(())
    })
    .await
}

/// What a manager applied to /status before and no longer applies is
/// removed (a field, an associative list item), unless another manager owns
/// it too; what other managers own stays.
#[tokio::test]
async fn server_side_apply_of_status_removes_what_a_manager_stops_applying() -> Result<()> {
    in_namespace("ssadrop", |client, namespace| async move {
        let api: Api<Deployment> = Api::namespaced(client, &namespace);
        api.create(&PostParams::default(), &deployment("web")?)
            .await?;
        let kept = format!("{TEST_CONDITION}Kept");
        let dropped = format!("{TEST_CONDITION}Dropped");
        let shared = format!("{TEST_CONDITION}Shared");
        let theirs = format!("{TEST_CONDITION}Theirs");
        apply_deployment_status(
            &api,
            "hub",
            PatchParams::default(),
            json!({ "conditions": [
                applied_condition(&kept, "with a message"),
                applied_condition(&dropped, "dropped"),
                applied_condition(&shared, "shared"),
            ]}),
        )
        .await?;
        apply_deployment_status(
            &api,
            "other",
            PatchParams::default(),
            json!({ "conditions": [
                applied_condition(&shared, "shared"),
                applied_condition(&theirs, "theirs"),
            ]}),
        )
        .await?;
        // The hub now applies `kept` without its message, and neither
        // `dropped` nor `shared`.
        let mut without_message = applied_condition(&kept, "");
        if let Some(fields) = without_message.as_object_mut() {
            fields.remove("message");
        }
        let applied = apply_deployment_status(
            &api,
            "hub",
            PatchParams::default(),
            json!({ "conditions": [without_message] }),
        )
        .await?;
        let kept_now = deployment_condition(&applied, &kept).context("kept condition missing")?;
        ensure!(
            kept_now.message.is_none() && kept_now.reason.as_deref() == Some("Test"),
            "the field the hub stopped applying is still there: {kept_now:?}"
        );
        ensure!(
            deployment_condition(&applied, &dropped).is_none(),
            "the condition the hub stopped applying is still there: {:?}",
            applied.status
        );
        ensure!(
            deployment_condition(&applied, &shared).is_some()
                && deployment_condition(&applied, &theirs).is_some(),
            "the other manager's conditions went: {:?}",
            applied.status
        );
        Ok(())
    })
    .await
}

/// Applying to /status a value of a field another manager owns is a 409
/// naming the conflict, and stores nothing; with `force` it succeeds and
/// takes the field over, so the former owner now conflicts. A dry run
/// stores nothing either.
#[tokio::test]
async fn server_side_apply_of_status_conflicts_unless_forced() -> Result<()> {
    in_namespace("ssaforce", |client, namespace| async move {
        let api: Api<Deployment> = Api::namespaced(client, &namespace);
        api.create(&PostParams::default(), &deployment("web")?)
            .await?;
        let status =
            |message: &str| json!({ "conditions": [applied_condition(TEST_CONDITION, message)] });
        let message = |d: &Deployment| {
            deployment_condition(d, TEST_CONDITION).and_then(|c| c.message.clone())
        };
        apply_deployment_status(&api, "other", PatchParams::default(), status("theirs")).await?;

        let refused =
            apply_deployment_status(&api, "hub", PatchParams::default(), status("ours")).await;
        let conflict = expect_api_error(refused, 409, "Conflict")
            .context("an unforced apply of another manager's field")?;
        let causes = conflict
            .details
            .map(|d| d.causes)
            .context("the conflict has no details")?;
        ensure!(
            causes
                .iter()
                .any(|c| c.reason == "FieldManagerConflict" && c.message.contains("other")),
            "causes: {causes:?}"
        );
        ensure!(
            message(&api.get_status("web").await?).as_deref() == Some("theirs"),
            "a refused apply was stored"
        );

        let dry = apply_deployment_status(
            &api,
            "hub",
            PatchParams::default().force().dry_run(),
            status("ours"),
        )
        .await?;
        ensure!(
            message(&dry).as_deref() == Some("ours"),
            "a dry run answers with the result"
        );
        ensure!(
            message(&api.get_status("web").await?).as_deref() == Some("theirs"),
            "a dry-run apply was stored"
        );

        let forced =
            apply_deployment_status(&api, "hub", PatchParams::default().force(), status("ours"))
                .await?;
        ensure!(
            message(&forced).as_deref() == Some("ours"),
            "forced apply: {:?}",
            forced.status
        );
        let taken_back =
            apply_deployment_status(&api, "other", PatchParams::default(), status("theirs")).await;
        expect_api_error(taken_back, 409, "Conflict")
            .context("the former owner's unforced apply after the takeover")?;
        Ok(())
    })
    .await
}

/// A nested object (a struct field of the status schema) or an associative
/// list that a manager applied to /status and no longer applies at all is
/// removed whole, not left as `{}` or `[]`, unless another manager owns part
/// of it: then only that part stays. (Shown on a custom resource: a
/// built-in's Go types print an empty struct as `{}` either way.)
#[tokio::test]
async fn server_side_apply_of_status_removes_a_nested_object_it_stops_applying() -> Result<()> {
    in_namespace("ssanest", |client, namespace| async move {
        let group = format!("{}.uplink.test", unique_name("nest"));
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        let mut probes = crd(&group, "probes", "Probe", true)?;
        let detail = json!({ "type": "object", "properties": {
            "x": { "type": "integer" },
            "y": { "type": "integer" },
        }});
        for version in &mut probes.spec.versions {
            version.schema = Some(serde_json::from_value(json!({ "openAPIV3Schema": {
                "type": "object",
                "properties": {
                    "spec": { "type": "object", "x-kubernetes-preserve-unknown-fields": true },
                    "status": { "type": "object", "properties": {
                        "phase": { "type": "string" },
                        "detail": detail,
                        "other": detail,
                        "conditions": {
                            "type": "array",
                            "x-kubernetes-list-type": "map",
                            "x-kubernetes-list-map-keys": ["type"],
                            "items": { "type": "object", "required": ["type"], "properties": {
                                "type": { "type": "string" },
                                "status": { "type": "string" },
                            }},
                        },
                    }},
                }
            }}))?);
        }
        let outcome = async {
            crds.create(&PostParams::default(), &probes).await?;
            wait_established(&crds, &format!("probes.{group}")).await?;
            let resource = ApiResource {
                group: group.clone(),
                version: "v1".into(),
                api_version: format!("{group}/v1"),
                kind: "Probe".into(),
                plural: "probes".into(),
            };
            let api: Api<DynamicObject> =
                Api::namespaced_with(client.clone(), &namespace, &resource);
            let mut probe = DynamicObject::new("p", &resource);
            probe.data = json!({ "spec": {} });
            eventually(EVENT_TIMEOUT, "the new resource to be served", || async {
                Ok(api.create(&PostParams::default(), &probe).await.ok())
            })
            .await?;
            let apply = |manager: &'static str, status: Value| {
                let api = api.clone();
                let api_version = resource.api_version.clone();
                async move {
                    api.patch_status(
                        "p",
                        &PatchParams::apply(manager),
                        &Patch::Apply(json!({
                            "apiVersion": api_version,
                            "kind": "Probe",
                            "metadata": { "name": "p" },
                            "status": status,
                        })),
                    )
                    .await
                }
            };
            apply(
                "hub",
                json!({
                    "phase": "A",
                    "detail": { "x": 1 },
                    "other": { "x": 1 },
                    "conditions": [{ "type": "Ready", "status": "True" }],
                }),
            )
            .await?;
            apply("someone-else", json!({ "other": { "y": 2 } })).await?;
            let applied = apply("hub", json!({ "phase": "A" })).await?;
            let status = &applied.data["status"];
            ensure!(
                status.get("detail").is_none() && status.get("conditions").is_none(),
                "what the hub stopped applying is still there: {status}"
            );
            ensure!(
                status["other"] == json!({ "y": 2 }),
                "another manager's part of a nested object: {status}"
            );
            Ok(())
        }
        .await;
        let _ = crds
            .delete(&format!("probes.{group}"), &DeleteParams::default())
            .await;
        outcome
    })
    .await
}

// ---------------------------------------------------------------------------
// 11. dryRun=All.

#[tokio::test]
async fn dry_run_changes_nothing() -> Result<()> {
    in_namespace("dryrun", |client, namespace| async move {
        let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
        let existing = api
            .create(
                &PostParams::default(),
                &configmap("existing", &[], &[("v", "1")])?,
            )
            .await?;
        let existing_rv = existing
            .metadata
            .resource_version
            .clone()
            .context("no resourceVersion")?;
        let mut stream = api
            .watch(&WatchParams::default().timeout(60), &existing_rv)
            .await?
            .boxed();
        let dry_post = PostParams {
            dry_run: true,
            ..PostParams::default()
        };
        let dry_patch = PatchParams {
            dry_run: true,
            ..PatchParams::default()
        };
        let dry_delete = DeleteParams {
            dry_run: true,
            ..DeleteParams::default()
        };

        let ghost = api
            .create(&dry_post, &configmap("ghost", &[], &[])?)
            .await?;
        ensure!(
            name_of(&ghost) == "ghost",
            "dry-run create answered {:?}",
            ghost.metadata.name
        );
        expect_api_error(api.get("ghost").await, 404, "NotFound")
            .context("a dry-run create was stored")?;

        let mut changed = existing.clone();
        changed.data = Some([("v".to_owned(), "put".to_owned())].into());
        let answered = api.replace("existing", &dry_post, &changed).await?;
        ensure!(
            data_of(&answered) == pairs(&[("v", "put")]),
            "dry-run update answered {:?}",
            answered.data
        );

        let answered = api
            .patch(
                "existing",
                &dry_patch,
                &Patch::Merge(json!({ "data": { "v": "patch" } })),
            )
            .await?;
        ensure!(
            data_of(&answered) == pairs(&[("v", "patch")]),
            "dry-run patch answered {:?}",
            answered.data
        );

        api.delete("existing", &dry_delete).await?;

        let after = api
            .get("existing")
            .await
            .context("a dry-run delete removed the object")?;
        ensure!(
            data_of(&after) == pairs(&[("v", "1")]),
            "dry-run writes were stored: {:?}",
            after.data
        );
        ensure!(
            after.metadata.resource_version.as_deref() == Some(existing_rv.as_str()),
            "dry-run writes changed the resourceVersion"
        );

        // None of it reached the watch: the first event is a real write.
        api.create(&PostParams::default(), &configmap("marker", &[], &[])?)
            .await?;
        let first = next_change_about(&mut stream, &["ghost", "existing", "marker"]).await?;
        expect_event(&first, "ADDED", "marker")
            .context("a dry-run write produced a watch event")?;
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------
// 12. Bad requests.

fn check_status(response: &RawResponse, code: u16, reason: &str, what: &str) -> Result<Status> {
    response
        .expect_status(code, reason)
        .with_context(|| what.to_owned())
}

#[tokio::test]
async fn malformed_json_is_bad_request() -> Result<()> {
    in_namespace("badjson", |client, namespace| async move {
        let path = configmaps_path(&namespace);
        let truncated = br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"#.to_vec();
        let response = raw_request(
            &client,
            Method::POST,
            &path,
            Some("application/json"),
            truncated.clone(),
        )
        .await?;
        check_status(&response, 400, "BadRequest", "POST with truncated JSON")?;

        Api::<ConfigMap>::namespaced(client.clone(), &namespace)
            .create(&PostParams::default(), &configmap("cm", &[], &[])?)
            .await?;
        let response = raw_request(
            &client,
            Method::PATCH,
            &format!("{path}/cm"),
            Some("application/json-patch+json"),
            br#"[{"op":"#.to_vec(),
        )
        .await?;
        check_status(
            &response,
            400,
            "BadRequest",
            "PATCH with a truncated JSON patch",
        )?;
        let response = raw_request(
            &client,
            Method::PATCH,
            &format!("{path}/cm"),
            Some("application/merge-patch+json"),
            truncated,
        )
        .await?;
        check_status(
            &response,
            400,
            "BadRequest",
            "PATCH with a truncated merge patch",
        )?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn mismatched_name_or_namespace_is_bad_request() -> Result<()> {
    in_namespace("mismatch", |client, namespace| async move {
        let path = configmaps_path(&namespace);
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
        api.create(&PostParams::default(), &configmap("cm", &[], &[])?)
            .await?;

        let mut other_name = api.get("cm").await?;
        other_name.metadata.name = Some("other".to_owned());
        let response = raw_request(
            &client,
            Method::PUT,
            &format!("{path}/cm"),
            Some("application/json"),
            serde_json::to_vec(&other_name)?,
        )
        .await?;
        check_status(
            &response,
            400,
            "BadRequest",
            "PUT whose body names another object",
        )?;

        let mut other_namespace = configmap("cm2", &[], &[])?;
        other_namespace.metadata.namespace = Some(format!("{namespace}-elsewhere"));
        let response = raw_request(
            &client,
            Method::POST,
            &path,
            Some("application/json"),
            serde_json::to_vec(&other_namespace)?,
        )
        .await?;
        check_status(
            &response,
            400,
            "BadRequest",
            "POST whose body names another namespace",
        )?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn unknown_resource_is_not_found() -> Result<()> {
    in_namespace("unknown", |client, namespace| async move {
        for path in [
            format!("/api/v1/namespaces/{namespace}/frobnicators"),
            format!("/api/v1/namespaces/{namespace}/frobnicators/x"),
            format!("/apis/apps/v1/namespaces/{namespace}/frobnicators"),
            "/api/v1/frobnicators".to_owned(),
        ] {
            let response = raw_request(&client, Method::GET, &path, None, Vec::new()).await?;
            check_status(&response, 404, "NotFound", &format!("GET {path}"))?;
        }
        // An unknown group answers 404 too (a real server's body is not
        // always a Status there, so only the code is checked).
        let path = "/apis/nonexistent.uplink.test/v1/things";
        let response = raw_request(&client, Method::GET, path, None, Vec::new()).await?;
        ensure!(
            response.status == 404,
            "GET {path}: HTTP {}: {}",
            response.status,
            response.text()
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn unsupported_content_type_is_rejected() -> Result<()> {
    in_namespace("mediatype", |client, namespace| async move {
        let path = configmaps_path(&namespace);
        let body = serde_json::to_vec(&configmap("cm", &[], &[])?)?;
        let response = raw_request(
            &client,
            Method::POST,
            &path,
            Some("text/plain"),
            body.clone(),
        )
        .await?;
        check_status(&response, 415, "UnsupportedMediaType", "POST as text/plain")?;
        expect_api_error(
            Api::<ConfigMap>::namespaced(client.clone(), &namespace)
                .get("cm")
                .await,
            404,
            "NotFound",
        )
        .context("a rejected POST was stored")?;

        Api::<ConfigMap>::namespaced(client.clone(), &namespace)
            .create(&PostParams::default(), &configmap("cm", &[], &[])?)
            .await?;
        for content_type in ["text/plain", "application/xml"] {
            let response = raw_request(
                &client,
                Method::PATCH,
                &format!("{path}/cm"),
                Some(content_type),
                br#"{"data":{"a":"b"}}"#.to_vec(),
            )
            .await?;
            check_status(
                &response,
                415,
                "UnsupportedMediaType",
                &format!("PATCH as {content_type}"),
            )?;
        }
        Ok(())
    })
    .await
}

#[tokio::test]
async fn oversized_body_is_request_entity_too_large() -> Result<()> {
    in_namespace("toolarge", |client, namespace| async move {
        let path = configmaps_path(&namespace);
        // kube-apiserver refuses request bodies over 3 MiB.
        let big = "x".repeat(4 * 1024 * 1024);
        let body = serde_json::to_vec(&configmap("huge", &[], &[("big", &big)])?)?;
        let response =
            raw_request(&client, Method::POST, &path, Some("application/json"), body).await?;
        check_status(
            &response,
            413,
            "RequestEntityTooLarge",
            "POST of a 4 MiB ConfigMap",
        )?;
        expect_api_error(
            Api::<ConfigMap>::namespaced(client.clone(), &namespace)
                .get("huge")
                .await,
            404,
            "NotFound",
        )
        .context("an oversized object was stored")?;
        // The server still answers on the same client afterwards.
        Api::<ConfigMap>::namespaced(client, &namespace)
            .list(&ListParams::default())
            .await?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn unsupported_field_selector_is_bad_request() -> Result<()> {
    in_namespace("badfield", |client, namespace| async move {
        let path = format!(
            "{}?fieldSelector=spec.nonsense%3Dx",
            configmaps_path(&namespace)
        );
        let response = raw_request(&client, Method::GET, &path, None, Vec::new()).await?;
        check_status(
            &response,
            400,
            "BadRequest",
            "a field selector on an unsupported field",
        )?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn invalid_label_selector_is_bad_request() -> Result<()> {
    in_namespace("badlabel", |client, namespace| async move {
        let path = format!("{}?labelSelector=%3D%3D%3D", configmaps_path(&namespace));
        let response = raw_request(&client, Method::GET, &path, None, Vec::new()).await?;
        check_status(&response, 400, "BadRequest", "an unparsable label selector")?;
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------
// Beyond the list: behaviours Uplink leans on.

/// The hub forgets an object when its status patch answers 404.
#[tokio::test]
async fn writes_to_a_missing_object_are_not_found() -> Result<()> {
    in_namespace("missing", |client, namespace| async move {
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
        let status = Patch::Merge(status_condition_patch(TEST_CONDITION, "gone"));
        expect_api_error(
            deployments
                .patch_status("gone", &PatchParams::default(), &status)
                .await,
            404,
            "NotFound",
        )
        .context("merge patch of /status of a missing Deployment")?;
        let apply = Patch::Apply(json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": { "name": "gone" },
            "status": status_condition_patch(TEST_CONDITION, "gone")["status"],
        }));
        expect_api_error(
            deployments
                .patch_status("gone", &PatchParams::apply("uplink-hub"), &apply)
                .await,
            404,
            "NotFound",
        )
        .context("server-side apply of /status of a missing Deployment")?;

        let configmaps: Api<ConfigMap> = Api::namespaced(client, &namespace);
        expect_api_error(
            configmaps
                .patch(
                    "gone",
                    &PatchParams::default(),
                    &Patch::Merge(json!({ "data": { "a": "b" } })),
                )
                .await,
            404,
            "NotFound",
        )
        .context("merge patch of a missing ConfigMap")?;
        expect_api_error(
            configmaps
                .replace(
                    "gone",
                    &PostParams::default(),
                    &configmap("gone", &[], &[])?,
                )
                .await,
            404,
            "NotFound",
        )
        .context("PUT of a missing ConfigMap")?;
        expect_api_error(configmaps.get("gone").await, 404, "NotFound")
            .context("a write created the object")?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn server_side_apply_creates_updates_and_guards_ownership() -> Result<()> {
    in_namespace("ssaown", |client, namespace| async move {
        let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
        let manifest = |value: &str| {
            json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": { "name": "owned" },
                "data": { "mode": value },
            })
        };
        let created = api
            .patch(
                "owned",
                &PatchParams::apply("uplink-hub"),
                &Patch::Apply(manifest("one")),
            )
            .await
            .context("server-side apply of a new object")?;
        ensure!(
            data_of(&created) == pairs(&[("mode", "one")]),
            "created {:?}",
            created.data
        );
        let updated = api
            .patch(
                "owned",
                &PatchParams::apply("uplink-hub"),
                &Patch::Apply(manifest("two")),
            )
            .await?;
        ensure!(
            data_of(&updated) == pairs(&[("mode", "two")]),
            "updated {:?}",
            updated.data
        );

        // Another manager may not take a field over without force...
        let conflict = api
            .patch(
                "owned",
                &PatchParams::apply("someone-else"),
                &Patch::Apply(manifest("three")),
            )
            .await;
        expect_api_error(conflict, 409, "Conflict")
            .context("apply by a second manager of an owned field")?;
        ensure!(
            data_of(&api.get("owned").await?) == pairs(&[("mode", "two")]),
            "a conflicting apply was stored"
        );
        // ...but may with it.
        let forced = api
            .patch(
                "owned",
                &PatchParams::apply("someone-else").force(),
                &Patch::Apply(manifest("three")),
            )
            .await?;
        ensure!(
            data_of(&forced) == pairs(&[("mode", "three")]),
            "forced apply: {:?}",
            forced.data
        );
        Ok(())
    })
    .await
}

/// kube-apiserver checks the name of an apply's result, not of its body: an
/// apply to an existing object may leave the name out (the live object's
/// stays), a create by apply must name the object, and a body naming
/// another object is refused.
#[tokio::test]
async fn server_side_apply_takes_the_name_of_an_existing_object() -> Result<()> {
    in_namespace("ssaname", |client, namespace| async move {
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
        api.create(&PostParams::default(), &configmap("cm", &[], &[])?)
            .await?;
        let unnamed = json!({ "apiVersion": "v1", "kind": "ConfigMap", "data": { "k": "v" } });
        let applied = api
            .patch(
                "cm",
                &PatchParams::apply("conformance"),
                &Patch::Apply(&unnamed),
            )
            .await
            .context("apply without metadata.name to an existing object")?;
        ensure!(
            applied.metadata.name.as_deref() == Some("cm")
                && data_of(&applied) == pairs(&[("k", "v")]),
            "applied {:?} {:?}",
            applied.metadata.name,
            applied.data
        );

        let deployments: Api<Deployment> = Api::namespaced(client, &namespace);
        deployments
            .create(&PostParams::default(), &deployment("web")?)
            .await?;
        let status_only = json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "status": status_condition_patch(TEST_CONDITION, "unnamed")["status"],
        });
        let applied = deployments
            .patch_status(
                "web",
                &PatchParams::apply("conformance"),
                &Patch::Apply(&status_only),
            )
            .await
            .context("status apply without metadata.name")?;
        ensure!(
            deployment_condition(&applied, TEST_CONDITION)
                .and_then(|c| c.message.clone())
                .as_deref()
                == Some("unnamed"),
            "the unnamed status apply was not applied"
        );

        expect_api_error(
            api.patch(
                "missing",
                &PatchParams::apply("conformance"),
                &Patch::Apply(&unnamed),
            )
            .await,
            400,
            "BadRequest",
        )
        .context("a create by apply without a name")?;
        ensure!(
            api.get_opt("missing").await?.is_none(),
            "an unnamed apply created an object"
        );
        let renamed =
            json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": "other" } });
        expect_api_error(
            api.patch(
                "cm",
                &PatchParams::apply("conformance"),
                &Patch::Apply(&renamed),
            )
            .await,
            400,
            "BadRequest",
        )
        .context("an apply whose body names another object")?;
        Ok(())
    })
    .await
}

const PARTIAL_METADATA_ACCEPT: &str =
    "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1";

/// A write with an `Accept` header (e.g. as=PartialObjectMetadata).
async fn write_with_accept(
    client: &Client,
    method: Method,
    path: &str,
    content_type: &str,
    body: &Value,
    accept: &str,
) -> Result<RawResponse> {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::ACCEPT, accept)
        .body(serde_json::to_vec(body)?)?;
    send_raw(client, request).await
}

/// kube-apiserver renders the answer to every verb as the client's `Accept`
/// asks, not only GET and LIST: writes asked for PartialObjectMetadata get
/// just the metadata.
#[tokio::test]
async fn writes_answer_as_partial_object_metadata_when_asked() -> Result<()> {
    in_namespace("asmeta", |client, namespace| async move {
        let path = configmaps_path(&namespace);
        let check =
            |what: &str, response: &RawResponse, code: u16, label: Option<&str>| -> Result<()> {
                ensure!(
                    response.status.as_u16() == code,
                    "{what}: HTTP {}: {}",
                    response.status,
                    response.text()
                );
                let body = response.json()?;
                ensure!(
                    body["kind"] == "PartialObjectMetadata"
                        && body["apiVersion"] == "meta.k8s.io/v1",
                    "{what} answered {body}"
                );
                ensure!(
                    body["metadata"]["name"] == "cm",
                    "{what}: metadata {}",
                    body["metadata"]
                );
                ensure!(
                    body.get("data").is_none(),
                    "{what} answered the whole object: {body}"
                );
                if let Some(label) = label {
                    ensure!(
                        body["metadata"]["labels"]["step"] == label,
                        "{what}: labels {}",
                        body["metadata"]
                    );
                }
                Ok(())
            };
        let object = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": { "name": "cm", "labels": { "step": "create" } },
            "data": { "k": "v" },
        });
        let created = write_with_accept(
            &client,
            Method::POST,
            &path,
            "application/json",
            &object,
            PARTIAL_METADATA_ACCEPT,
        )
        .await?;
        check("POST", &created, 201, Some("create"))?;
        let patch = json!({ "metadata": { "labels": { "step": "patch" } } });
        let patched = write_with_accept(
            &client,
            Method::PATCH,
            &format!("{path}/cm"),
            "application/merge-patch+json",
            &patch,
            PARTIAL_METADATA_ACCEPT,
        )
        .await?;
        check("PATCH", &patched, 200, Some("patch"))?;
        let mut replacement = object.clone();
        replacement["metadata"]["labels"]["step"] = json!("update");
        let updated = write_with_accept(
            &client,
            Method::PUT,
            &format!("{path}/cm"),
            "application/json",
            &replacement,
            PARTIAL_METADATA_ACCEPT,
        )
        .await?;
        check("PUT", &updated, 200, Some("update"))?;
        let stored = Api::<ConfigMap>::namespaced(client, &namespace)
            .get("cm")
            .await?;
        ensure!(
            data_of(&stored) == pairs(&[("k", "v")]),
            "the object lost its data: {:?}",
            stored.data
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn generate_name_makes_a_unique_name() -> Result<()> {
    in_namespace("genname", |client, namespace| async move {
        let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
        let mut template = configmap("", &[], &[])?;
        template.metadata.name = None;
        template.metadata.generate_name = Some("gen-".to_owned());
        let first = api.create(&PostParams::default(), &template).await?;
        let second = api.create(&PostParams::default(), &template).await?;
        let (first, second) = (name_of(&first), name_of(&second));
        ensure!(
            first.starts_with("gen-") && first.len() > 4,
            "generated name {first:?}"
        );
        ensure!(first != second, "generateName gave {first:?} twice");
        api.get(&first).await?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn watch_across_namespaces() -> Result<()> {
    in_namespace("wall", |client, namespace| async move {
        let other = create_namespace(&client, "conf-wall-other").await?;
        let outcome = async {
            let everywhere: Api<ConfigMap> = Api::all(client.clone());
            let selector = format!("suite={namespace}");
            let rv = everywhere
                .list(&ListParams::default().labels(&selector))
                .await?
                .metadata
                .resource_version
                .unwrap_or_default();
            let mut stream = everywhere
                .watch(&WatchParams::default().timeout(60).labels(&selector), &rv)
                .await?
                .boxed();
            let labels = [("suite", namespace.as_str())];
            for ns in [&namespace, &other] {
                Api::<ConfigMap>::namespaced(client.clone(), ns)
                    .create(&PostParams::default(), &configmap("cm", &labels, &[])?)
                    .await?;
            }
            for ns in [&namespace, &other] {
                let object = expect_event(
                    &next_change_about(&mut stream, &["cm"]).await?,
                    "ADDED",
                    "cm",
                )?;
                ensure!(
                    object.metadata.namespace.as_deref() == Some(ns.as_str()),
                    "ADDED from namespace {:?}, expected {ns}",
                    object.metadata.namespace
                );
            }
            Ok(())
        }
        .await;
        delete_namespace(&client, &other).await;
        outcome
    })
    .await
}

/// Deleting a namespace deletes what is in it. A real server does this
/// asynchronously (the namespace is Terminating for a while), so this polls.
#[tokio::test]
async fn namespace_deletion_removes_its_objects() -> Result<()> {
    with_client(|client| async move {
        let namespace = create_namespace(&client, "conf-nsdel").await?;
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
        api.create(&PostParams::default(), &configmap("inside", &[], &[])?)
            .await?;
        delete_namespace(&client, &namespace).await;
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
        eventually(
            std::time::Duration::from_secs(50),
            "the namespace and its objects to go",
            || async {
                let namespace_gone = namespaces.get_opt(&namespace).await?.is_none();
                let object_gone = api.get_opt("inside").await?.is_none();
                Ok((namespace_gone && object_gone).then_some(()))
            },
        )
        .await
    })
    .await
}

// ---------------------------------------------------------------------------
// Objects every cluster has.

/// Waits until `namespace` has its `default` ServiceAccount, which
/// kube-controller-manager creates shortly after the namespace (a real
/// server refuses pods until then); returns its uid.
async fn default_service_account(client: &Client, namespace: &str) -> Result<String> {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    eventually(
        EVENT_TIMEOUT,
        &format!("the default ServiceAccount of {namespace}"),
        || async {
            Ok(accounts
                .get_opt("default")
                .await?
                .map(|a| a.metadata.uid.unwrap_or_default()))
        },
    )
    .await
}

/// kube-apiserver keeps the `default/kubernetes` Service; every namespace
/// gets a `default` ServiceAccount, and gets it back when it is deleted.
#[tokio::test]
async fn every_cluster_has_the_kubernetes_service_and_default_service_accounts() -> Result<()> {
    in_namespace("defaults", |client, namespace| async move {
        let service = Api::<Service>::namespaced(client.clone(), "default")
            .get("kubernetes")
            .await
            .context("the default/kubernetes Service")?;
        let labels = service.metadata.labels.clone().unwrap_or_default();
        ensure!(
            labels.get("component").map(String::as_str) == Some("apiserver")
                && labels.get("provider").map(String::as_str) == Some("kubernetes"),
            "labels of default/kubernetes: {labels:?}"
        );
        let https = service
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .and_then(|ports| ports.iter().find(|p| p.name.as_deref() == Some("https")))
            .context("default/kubernetes has no https port")?;
        ensure!(
            https.port == 443 && https.protocol.as_deref() == Some("TCP"),
            "the https port of default/kubernetes: {https:?}"
        );

        let first = default_service_account(&client, &namespace).await?;
        Api::<ServiceAccount>::namespaced(client.clone(), &namespace)
            .delete("default", &DeleteParams::default())
            .await?;
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &namespace);
        eventually(EVENT_TIMEOUT, "a new default ServiceAccount", || async {
            let uid = accounts
                .get_opt("default")
                .await?
                .and_then(|a| a.metadata.uid);
            Ok(uid.filter(|uid| *uid != first).map(|_| ()))
        })
        .await
    })
    .await
}

// ---------------------------------------------------------------------------
// Encoding.

/// kube-apiserver writes built-in objects in Go struct order, `kind` before
/// `apiVersion` (some clients sniff the first bytes): single objects, the
/// answers to writes, lists, watch events and `Status` errors alike.
#[tokio::test]
async fn json_bodies_begin_with_kind_then_api_version() -> Result<()> {
    in_namespace("kindfirst", |client, namespace| async move {
        let path = configmaps_path(&namespace);
        let begins = |what: &str, body: &[u8], prefix: &str| -> Result<()> {
            ensure!(
                body.starts_with(prefix.as_bytes()),
                "{what} begins {:?}, expected {prefix:?}",
                String::from_utf8_lossy(&body[..body.len().min(80)])
            );
            Ok(())
        };
        let object = serde_json::to_vec(&configmap("cm", &[], &[("k", "v")])?)?;
        let created = raw_request(
            &client,
            Method::POST,
            &path,
            Some("application/json"),
            object,
        )
        .await?;
        ensure!(created.status == 201, "create: {}", created.text());
        begins(
            "the create answer",
            &created.body,
            r#"{"kind":"ConfigMap","apiVersion":"v1""#,
        )?;
        let got = raw_request(
            &client,
            Method::GET,
            &format!("{path}/cm"),
            None,
            Vec::new(),
        )
        .await?;
        begins(
            "a GET",
            &got.body,
            r#"{"kind":"ConfigMap","apiVersion":"v1""#,
        )?;
        let listed = raw_request(&client, Method::GET, &path, None, Vec::new()).await?;
        begins(
            "a list",
            &listed.body,
            r#"{"kind":"ConfigMapList","apiVersion":"v1""#,
        )?;
        let missing = raw_request(
            &client,
            Method::GET,
            &format!("{path}/missing"),
            None,
            Vec::new(),
        )
        .await?;
        ensure!(
            missing.status == 404,
            "GET of a missing object: {}",
            missing.text()
        );
        begins(
            "a Status",
            &missing.body,
            r#"{"kind":"Status","apiVersion":"v1""#,
        )?;
        let rv = listed.json()?["metadata"]["resourceVersion"]
            .as_str()
            .context("a list without a resourceVersion")?
            .to_owned();
        let watch_path = format!("{path}?watch=true&resourceVersion={rv}&timeoutSeconds=2");
        let mut watch = Box::pin(raw_request(
            &client,
            Method::GET,
            &watch_path,
            None,
            Vec::new(),
        ));
        // The watch ends by itself after timeoutSeconds; a change made while it runs shows up.
        let patch = json!({ "data": { "k": "w" } });
        let watched = loop {
            tokio::select! {
                response = &mut watch => break response?,
                () = tokio::time::sleep(std::time::Duration::from_millis(200)) => {
                    raw_request(
                        &client,
                        Method::PATCH,
                        &format!("{path}/cm"),
                        Some("application/merge-patch+json"),
                        serde_json::to_vec(&patch)?,
                    )
                    .await?;
                }
            }
        };
        let line = watched
            .text()
            .lines()
            .next()
            .map(str::to_owned)
            .with_context(|| format!("no watch event: {}", watched.text()))?;
        begins(
            "a watch event",
            line.as_bytes(),
            r#"{"type":"MODIFIED","object":{"kind":"ConfigMap","apiVersion":"v1""#,
        )?;
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------
// What DELETE answers.

/// DELETE of `path/name` through `client`, its body as JSON.
async fn delete_raw(client: &Client, path: &str, name: &str) -> Result<Value> {
    let response = raw_request(
        client,
        Method::DELETE,
        &format!("{path}/{name}"),
        None,
        Vec::new(),
    )
    .await?;
    ensure!(
        response.status == 200,
        "DELETE {path}/{name}: HTTP {}: {}",
        response.status,
        response.text()
    );
    response.json()
}

/// Fails unless `answer` is the `Status` of Success kube's registry writes
/// for an object deleted at once.
fn expect_deleted_status(
    answer: &Value,
    group: &str,
    resource: &str,
    name: &str,
    uid: &str,
) -> Result<()> {
    ensure!(
        answer["kind"] == "Status" && answer["status"] == "Success",
        "deleting {resource}/{name} answered {answer}"
    );
    let details = &answer["details"];
    ensure!(
        details["name"] == name && details["kind"] == resource && details["uid"] == uid,
        "details of deleting {resource}/{name}: {details}"
    );
    let answered_group = details["group"].as_str().unwrap_or_default();
    ensure!(
        answered_group == group,
        "deleting {resource}/{name}: details.group {answered_group:?}"
    );
    Ok(())
}

/// kube-apiserver answers a DELETE that removes the object at once with a
/// `Status` of Success, except for the resources whose store returns the
/// deleted object (pods, services, service accounts); an object that stays
/// (here: held by a finalizer) is answered with its new state.
#[tokio::test]
async fn delete_answers_a_status_or_the_object_that_stays() -> Result<()> {
    in_namespace("delanswer", |client, namespace| async move {
        let configmaps = Api::<ConfigMap>::namespaced(client.clone(), &namespace);
        let cm = configmaps
            .create(&PostParams::default(), &configmap("cm", &[], &[])?)
            .await?;
        let answer = delete_raw(&client, &configmaps_path(&namespace), "cm").await?;
        expect_deleted_status(
            &answer,
            "",
            "configmaps",
            "cm",
            cm.metadata.uid.as_deref().unwrap_or_default(),
        )?;

        let deployments = Api::<Deployment>::namespaced(client.clone(), &namespace);
        let web = deployments
            .create(&PostParams::default(), &deployment("web")?)
            .await?;
        let answer = delete_raw(
            &client,
            &format!("/apis/apps/v1/namespaces/{namespace}/deployments"),
            "web",
        )
        .await?;
        expect_deleted_status(
            &answer,
            "apps",
            "deployments",
            "web",
            web.metadata.uid.as_deref().unwrap_or_default(),
        )?;

        let services = Api::<Service>::namespaced(client.clone(), &namespace);
        services
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "apiVersion": "v1", "kind": "Service",
                    "metadata": { "name": "svc" },
                    "spec": { "ports": [{ "port": 80 }] },
                }))?,
            )
            .await?;
        let answer = delete_raw(
            &client,
            &format!("/api/v1/namespaces/{namespace}/services"),
            "svc",
        )
        .await?;
        ensure!(
            answer["kind"] == "Service" && answer["metadata"]["name"] == "svc",
            "deleting a service answered {answer}"
        );

        let accounts = Api::<ServiceAccount>::namespaced(client.clone(), &namespace);
        accounts
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": { "name": "robot" }}))?,
            )
            .await?;
        let answer = delete_raw(
            &client,
            &format!("/api/v1/namespaces/{namespace}/serviceaccounts"),
            "robot",
        )
        .await?;
        ensure!(
            answer["kind"] == "ServiceAccount",
            "deleting a service account answered {answer}"
        );

        let mut held = configmap("held", &[], &[])?;
        held.metadata.finalizers = Some(vec!["uplink.test/hold".to_owned()]);
        configmaps.create(&PostParams::default(), &held).await?;
        let answer = delete_raw(&client, &configmaps_path(&namespace), "held").await?;
        ensure!(
            answer["kind"] == "ConfigMap" && answer["metadata"]["deletionTimestamp"].is_string(),
            "deleting an object held by a finalizer answered {answer}"
        );
        configmaps
            .patch(
                "held",
                &PatchParams::default(),
                &Patch::Merge(json!({ "metadata": { "finalizers": null } })),
            )
            .await?;

        // A custom resource deleted at once: a Status too.
        let group = format!("{}.uplink.test", unique_name("del"));
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        crds.create(
            &PostParams::default(),
            &crd(&group, "gizmos", "Gizmo", false)?,
        )
        .await?;
        let custom = async {
            wait_established(&crds, &format!("gizmos.{group}")).await?;
            let resource = ApiResource {
                group: group.clone(),
                version: "v1".to_owned(),
                api_version: format!("{group}/v1"),
                kind: "Gizmo".to_owned(),
                plural: "gizmos".to_owned(),
            };
            let gizmos: Api<DynamicObject> =
                Api::namespaced_with(client.clone(), &namespace, &resource);
            let created = eventually(EVENT_TIMEOUT, "a custom object to be created", || async {
                Ok(gizmos
                    .create(&PostParams::default(), &DynamicObject::new("g", &resource))
                    .await
                    .ok())
            })
            .await?;
            let answer = delete_raw(
                &client,
                &format!("/apis/{group}/v1/namespaces/{namespace}/gizmos"),
                "g",
            )
            .await?;
            expect_deleted_status(
                &answer,
                &group,
                "gizmos",
                "g",
                created.metadata.uid.as_deref().unwrap_or_default(),
            )
        }
        .await;
        let _ = crds
            .delete(&format!("gizmos.{group}"), &DeleteParams::default())
            .await;
        custom
    })
    .await
}

// ---------------------------------------------------------------------------
// Pods: field selectors and graceful deletion.

/// A pod bound to `node` (a node that need not exist: nothing runs it), or,
/// without one, a pod no scheduler picks up, so that it stays unbound.
fn parked_pod(name: &str, node: Option<&str>, extra_spec: Value) -> Result<Pod> {
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name },
        "spec": { "containers": [{ "name": "c", "image": "registry.k8s.io/pause:3.10" }] },
    });
    match node {
        Some(node) => pod["spec"]["nodeName"] = json!(node),
        None => pod["spec"]["schedulerName"] = json!("uplink-conformance-no-such-scheduler"),
    }
    if let (Some(spec), Value::Object(extra)) = (pod["spec"].as_object_mut(), extra_spec) {
        spec.extend(extra);
    }
    Ok(serde_json::from_value(pod)?)
}

/// Pod field selectors read a pod as kube stores it: restartPolicy
/// `Always`, schedulerName `default-scheduler`, serviceAccountName
/// `default` and hostNetwork `false` when the manifest leaves them out.
#[tokio::test]
async fn pod_field_selectors_read_the_defaults() -> Result<()> {
    in_namespace("podfields", |client, namespace| async move {
        default_service_account(&client, &namespace).await?;
        let node = unique_name("conf-absent-node");
        let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
        pods.create(
            &PostParams::default(),
            &parked_pod("p", Some(&node), json!({}))?,
        )
        .await?;
        let outcome = async {
            let only = set(&["p"]);
            for fields in [
                "spec.restartPolicy=Always".to_owned(),
                "spec.schedulerName=default-scheduler".to_owned(),
                "spec.serviceAccountName=default".to_owned(),
                "spec.hostNetwork=false".to_owned(),
                format!("spec.nodeName={node}"),
                format!("spec.host={node}"),
                "status.phase=Pending".to_owned(),
            ] {
                let got = names_with_fields(&pods, &fields).await?;
                ensure!(got == only, "pods with {fields}: {got:?}");
            }
            ensure!(
                names_with_fields(&pods, "spec.restartPolicy=Never")
                    .await?
                    .is_empty(),
                "spec.restartPolicy=Never matched a pod with the default policy"
            );
            Ok(())
        }
        .await;
        let _ = pods
            .delete("p", &DeleteParams::default().grace_period(0))
            .await;
        outcome
    })
    .await
}

/// A DELETE of a pod (with DeleteOptions `body`, if any), its answer as JSON.
async fn delete_pod_raw(
    client: &Client,
    namespace: &str,
    name: &str,
    body: Option<Value>,
) -> Result<Value> {
    let path = format!("/api/v1/namespaces/{namespace}/pods/{name}");
    let (content_type, body) = match body {
        Some(options) => (Some("application/json"), serde_json::to_vec(&options)?),
        None => (None, Vec::new()),
    };
    let response = raw_request(client, Method::DELETE, &path, content_type, body).await?;
    ensure!(
        response.status == 200,
        "DELETE pod {name}: HTTP {}: {}",
        response.status,
        response.text()
    );
    response.json()
}

/// Whole seconds from one RFC 3339 timestamp to another.
fn seconds_between(earlier: &Value, later: &Value) -> Result<i64> {
    let at = |v: &Value| -> Result<i64> {
        let time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time =
            serde_json::from_value(v.clone()).with_context(|| format!("the timestamp {v}"))?;
        Ok(time.0.as_second())
    };
    Ok(at(later)? - at(earlier)?)
}

/// kube-apiserver deletes a pod bound to a node gracefully: the pod stays
/// with `deletionTimestamp` (now plus the grace) and
/// `deletionGracePeriodSeconds` (30 s by default, the pod's
/// terminationGracePeriodSeconds, or `gracePeriodSeconds`); a later DELETE
/// may only shorten it, and a grace of 0 removes it at once, as does
/// deleting a pod bound to no node.
#[tokio::test]
async fn pods_bound_to_a_node_are_deleted_gracefully() -> Result<()> {
    in_namespace("graceful", |client, namespace| async move {
        default_service_account(&client, &namespace).await?;
        let node = unique_name("conf-absent-node");
        let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
        for (name, node, spec) in [
            ("default-grace", Some(node.as_str()), json!({})),
            (
                "own-grace",
                Some(node.as_str()),
                json!({ "terminationGracePeriodSeconds": 7 }),
            ),
            ("asked-grace", Some(node.as_str()), json!({})),
            ("unbound", None, json!({})),
        ] {
            pods.create(&PostParams::default(), &parked_pod(name, node, spec)?)
                .await?;
        }
        let outcome = async {
            let answer = delete_pod_raw(&client, &namespace, "default-grace", None).await?;
            let meta = &answer["metadata"];
            ensure!(
                answer["kind"] == "Pod",
                "a graceful delete answered {answer}"
            );
            ensure!(
                meta["deletionGracePeriodSeconds"] == 30,
                "default grace: {meta}"
            );
            let ahead = seconds_between(&meta["creationTimestamp"], &meta["deletionTimestamp"])?;
            ensure!(
                (29..=90).contains(&ahead),
                "deletionTimestamp is {ahead}s after creation: {meta}"
            );
            let still = pods
                .get("default-grace")
                .await
                .context("a gracefully deleted pod vanished")?;
            ensure!(
                still.metadata.deletion_timestamp.is_some(),
                "the stored pod has no deletionTimestamp"
            );

            // A second DELETE without a shorter grace changes nothing; a shorter one shortens it.
            let again = delete_pod_raw(&client, &namespace, "default-grace", None).await?;
            ensure!(
                again["metadata"]["deletionGracePeriodSeconds"] == 30,
                "a repeated delete: {}",
                again["metadata"]
            );
            ensure!(
                again["metadata"]["deletionTimestamp"] == meta["deletionTimestamp"],
                "a repeated delete moved the deadline"
            );
            let shorter = delete_pod_raw(
                &client,
                &namespace,
                "default-grace",
                Some(json!({ "gracePeriodSeconds": 10 })),
            )
            .await?;
            ensure!(
                shorter["metadata"]["deletionGracePeriodSeconds"] == 10,
                "a shorter grace: {}",
                shorter["metadata"]
            );
            let moved = seconds_between(
                &shorter["metadata"]["deletionTimestamp"],
                &meta["deletionTimestamp"],
            )?;
            ensure!(
                (19..=21).contains(&moved),
                "shortening by 20s moved the deadline by {moved}s"
            );

            let own = delete_pod_raw(&client, &namespace, "own-grace", None).await?;
            ensure!(
                own["metadata"]["deletionGracePeriodSeconds"] == 7,
                "the pod's own grace: {}",
                own["metadata"]
            );
            let asked = delete_pod_raw(
                &client,
                &namespace,
                "asked-grace",
                Some(json!({ "gracePeriodSeconds": 12 })),
            )
            .await?;
            ensure!(
                asked["metadata"]["deletionGracePeriodSeconds"] == 12,
                "gracePeriodSeconds: {}",
                asked["metadata"]
            );

            // Grace 0 (kubectl delete --force --grace-period=0) removes it at once.
            delete_pod_raw(
                &client,
                &namespace,
                "default-grace",
                Some(json!({ "gracePeriodSeconds": 0 })),
            )
            .await?;
            expect_api_error(pods.get("default-grace").await, 404, "NotFound")
                .context("after a delete with grace 0")?;
            // A pod bound to no node has nothing to stop: it goes at once.
            delete_pod_raw(&client, &namespace, "unbound", None).await?;
            expect_api_error(pods.get("unbound").await, 404, "NotFound")
                .context("an unbound pod after delete")?;
            Ok(())
        }
        .await;
        for name in ["default-grace", "own-grace", "asked-grace", "unbound"] {
            let _ = pods
                .delete(name, &DeleteParams::default().grace_period(0))
                .await;
        }
        outcome
    })
    .await
}
