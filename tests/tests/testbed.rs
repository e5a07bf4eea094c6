//! What only the embedded test-bed server does: KCP-style workspaces (and
//! kcp's wildcard `/clusters/*` list and watch), watch history expiry on
//! demand, fault injection, and surviving garbage.
//!
//! These run against the embedded server only. The 410 test lives here
//! because a real server's watch history (etcd compaction) cannot be forced
//! from a test.

use std::{sync::Arc, time::Duration};

use anyhow::{Context as _, Result, bail, ensure};
use futures::StreamExt as _;
use http::{Method, header};
use k8s_openapi::{
    api::{apps::v1::Deployment, core::v1::ConfigMap},
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, Config, Discovery,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use uplink_e2e::apiserver::{ApiServer, ApiServerConfig};
use uplink_tests::apiserver::{
    EVENT_TIMEOUT, TEST_TIMEOUT, client_for, client_from_kubeconfig_yaml, client_impersonating,
    client_with_token, client_without_retries, event_type, eventually, expect_api_error,
    next_change, next_event, raw_request, resource_version_number, start_server, stop_server,
    within,
};

const TEAM_A: &str = "root:org:team-a";
const TEAM_B: &str = "root:org:team-b";

fn configmap(name: &str, data: &[(&str, &str)]) -> Result<ConfigMap> {
    let data: serde_json::Map<String, serde_json::Value> = data
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect();
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": { "name": name },
        "data": data,
    }))?)
}

async fn create_namespace(client: &Client, name: &str) -> Result<()> {
    let namespace = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": name }
    }))?;
    Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .with_context(|| format!("creating namespace {name}"))?;
    Ok(())
}

fn data_value(cm: &ConfigMap, key: &str) -> Option<String> {
    cm.data.as_ref()?.get(key).cloned()
}

/// Starts a server with `config`, runs `body` bounded by [`TEST_TIMEOUT`],
/// then shuts the server down.
async fn with_server<F, Fut>(config: ApiServerConfig, body: F) -> Result<()>
where
    F: FnOnce(Arc<ApiServer>) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let server = Arc::new(start_server(config).await?);
    let outcome = within(TEST_TIMEOUT, body(server.clone())).await;
    let stopped = match Arc::try_unwrap(server) {
        Ok(server) => stop_server(server).await,
        Err(_) => {
            tracing::warn!("the server is still shared; dropping it instead of shutting down");
            Ok(())
        }
    };
    outcome?;
    stopped
}

fn two_workspaces() -> ApiServerConfig {
    ApiServerConfig {
        workspaces: vec![TEAM_A.to_owned(), TEAM_B.to_owned()],
        bookmark_interval: Duration::from_secs(1),
        ..ApiServerConfig::default()
    }
}

// ---------------------------------------------------------------------------
// Workspaces.

#[tokio::test]
async fn workspaces_hold_separate_objects() -> Result<()> {
    with_server(two_workspaces(), |server| async move {
        let a = client_for(&server, Some(TEAM_A)).await?;
        let b = client_for(&server, Some(TEAM_B)).await?;

        // The same namespace and object names in both workspaces.
        for (client, team) in [(&a, "a"), (&b, "b")] {
            create_namespace(client, "shared").await?;
            Api::<ConfigMap>::namespaced(client.clone(), "shared")
                .create(
                    &PostParams::default(),
                    &configmap("same", &[("team", team)])?,
                )
                .await?;
        }
        let in_a = Api::<ConfigMap>::namespaced(a.clone(), "shared")
            .get("same")
            .await?;
        let in_b = Api::<ConfigMap>::namespaced(b.clone(), "shared")
            .get("same")
            .await?;
        ensure!(
            data_value(&in_a, "team").as_deref() == Some("a"),
            "team-a sees {:?}",
            in_a.data
        );
        ensure!(
            data_value(&in_b, "team").as_deref() == Some("b"),
            "team-b sees {:?}",
            in_b.data
        );
        ensure!(
            in_a.metadata.uid != in_b.metadata.uid,
            "both workspaces share one uid"
        );

        // A workspace-scoped client sees only its own workspace.
        Api::<ConfigMap>::namespaced(a.clone(), "shared")
            .create(&PostParams::default(), &configmap("only-a", &[])?)
            .await?;
        let everything_b = Api::<ConfigMap>::all(b.clone())
            .list(&ListParams::default())
            .await?;
        ensure!(
            everything_b
                .items
                .iter()
                .all(|cm| cm.metadata.name.as_deref() != Some("only-a")),
            "team-b lists team-a's object"
        );
        ensure!(
            everything_b
                .items
                .iter()
                .all(|cm| data_value(cm, "team").as_deref() != Some("a")),
            "team-b lists an object with team-a's data"
        );
        expect_api_error(
            Api::<ConfigMap>::namespaced(b.clone(), "shared")
                .get("only-a")
                .await,
            404,
            "NotFound",
        )?;

        // Deleting in one workspace leaves the other alone.
        Api::<ConfigMap>::namespaced(a.clone(), "shared")
            .delete("same", &DeleteParams::default())
            .await?;
        let still = Api::<ConfigMap>::namespaced(b.clone(), "shared")
            .get("same")
            .await?;
        ensure!(
            data_value(&still, "team").as_deref() == Some("b"),
            "team-b's object changed"
        );

        // The same objects by their full path through an unscoped client.
        let root = client_for(&server, None).await?;
        let path = format!("/clusters/{TEAM_B}/api/v1/namespaces/shared/configmaps/same");
        let response = raw_request(&root, Method::GET, &path, None, Vec::new()).await?;
        ensure!(
            response.status == 200,
            "GET {path}: HTTP {}: {}",
            response.status,
            response.text()
        );
        ensure!(
            response.json()?["data"]["team"] == "b",
            "GET {path}: {}",
            response.text()
        );
        let path = format!("/clusters/{TEAM_A}/api/v1/namespaces/shared/configmaps/same");
        let response = raw_request(&root, Method::GET, &path, None, Vec::new()).await?;
        response
            .expect_status(404, "NotFound")
            .with_context(|| format!("GET {path} after delete"))?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn discovery_works_under_the_workspace_prefix() -> Result<()> {
    with_server(two_workspaces(), |server| async move {
        let a = client_for(&server, Some(TEAM_A)).await?;
        for discovery in [
            Discovery::new(a.clone()).run().await?,
            Discovery::new(a.clone()).run_aggregated().await?,
        ] {
            let deployments = discovery
                .get("apps")
                .context("no apps group in the workspace")?
                .versioned_resources("v1")
                .into_iter()
                .find(|(r, _)| r.plural == "deployments");
            ensure!(
                deployments.is_some(),
                "no apps/v1 deployments in the workspace"
            );
        }
        let version = raw_request(&a, Method::GET, "/version", None, Vec::new()).await?;
        ensure!(
            version.status == 200,
            "/version under the prefix: HTTP {}",
            version.status
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn watches_see_only_their_workspace() -> Result<()> {
    with_server(two_workspaces(), |server| async move {
        let a = client_for(&server, Some(TEAM_A)).await?;
        let b = client_for(&server, Some(TEAM_B)).await?;
        create_namespace(&a, "shared").await?;
        create_namespace(&b, "shared").await?;
        let in_a: Api<ConfigMap> = Api::namespaced(a, "shared");
        let in_b: Api<ConfigMap> = Api::namespaced(b, "shared");
        let rv = in_a
            .list(&ListParams::default())
            .await?
            .metadata
            .resource_version
            .unwrap_or_default();
        let mut stream = in_a
            .watch(&WatchParams::default().timeout(30), &rv)
            .await?
            .boxed();

        in_b.create(&PostParams::default(), &configmap("from-b", &[])?)
            .await?;
        in_a.create(&PostParams::default(), &configmap("from-a", &[])?)
            .await?;
        match next_change(&mut stream, EVENT_TIMEOUT).await? {
            WatchEvent::Added(cm) if cm.metadata.name.as_deref() == Some("from-a") => Ok(()),
            other => bail!(
                "team-a's watch got {} first, expected ADDED from-a: {other:?}",
                event_type(&other)
            ),
        }
    })
    .await
}

#[tokio::test]
async fn custom_resource_definitions_are_per_workspace() -> Result<()> {
    with_server(two_workspaces(), |server| async move {
        let a = client_for(&server, Some(TEAM_A)).await?;
        let b = client_for(&server, Some(TEAM_B)).await?;
        let crd: CustomResourceDefinition = serde_json::from_value(json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": { "name": "widgets.team-a.uplink.test" },
            "spec": {
                "group": "team-a.uplink.test",
                "scope": "Namespaced",
                "names": { "plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList" },
                "versions": [{
                    "name": "v1", "served": true, "storage": true,
                    "schema": { "openAPIV3Schema": { "type": "object", "x-kubernetes-preserve-unknown-fields": true } },
                    "subresources": { "status": {} },
                }],
            }
        }))?;
        Api::<CustomResourceDefinition>::all(a.clone()).create(&PostParams::default(), &crd).await?;
        eventually(EVENT_TIMEOUT, "the CRD in team-a's discovery", || async {
            Ok(Discovery::new(a.clone()).run().await?.has_group("team-a.uplink.test").then_some(()))
        })
        .await?;
        let in_b = Discovery::new(b.clone()).run().await?;
        ensure!(!in_b.has_group("team-a.uplink.test"), "team-a's CRD is served in team-b");
        let crds_in_b = Api::<CustomResourceDefinition>::all(b.clone()).list(&ListParams::default()).await?;
        ensure!(crds_in_b.items.is_empty(), "team-b lists team-a's CRD");
        let path = "/apis/team-a.uplink.test/v1/namespaces/default/widgets";
        let response = raw_request(&b, Method::GET, path, None, Vec::new()).await?;
        ensure!(response.status == 404, "team-b GET {path}: HTTP {}", response.status);
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------
// Watch history expiry.

#[tokio::test]
async fn watch_from_an_expired_version_is_gone() -> Result<()> {
    let config = ApiServerConfig {
        watch_history: 50,
        ..ApiServerConfig::default()
    };
    with_server(config, |server| async move {
        let client = client_for(&server, None).await?;
        create_namespace(&client, "history").await?;
        let api: Api<ConfigMap> = Api::namespaced(client, "history");
        let old_rv = api
            .list(&ListParams::default())
            .await?
            .metadata
            .resource_version
            .context("no list RV")?;
        api.create(&PostParams::default(), &configmap("churn", &[])?)
            .await?;
        let mut versions = Vec::new();
        for i in 0..100 {
            let patched = api
                .patch(
                    "churn",
                    &PatchParams::default(),
                    &Patch::Merge(json!({ "data": { "i": i.to_string() } })),
                )
                .await?;
            versions.push(patched.metadata.resource_version.context("no RV")?);
        }

        // 100 events later, the history of 50 no longer reaches back.
        let expired = match api
            .watch(&WatchParams::default().timeout(30), &old_rv)
            .await
        {
            Err(error) => Some(error_code(&error)),
            Ok(stream) => {
                let mut stream = stream.boxed();
                match tokio::time::timeout(EVENT_TIMEOUT, stream.next()).await {
                    Err(_) => bail!("no answer to a watch from an expired resourceVersion"),
                    Ok(None) => {
                        bail!("the watch from an expired resourceVersion ended without an error")
                    }
                    Ok(Some(Err(error))) => Some(error_code(&error)),
                    Ok(Some(Ok(WatchEvent::Error(status)))) => {
                        ensure!(
                            status.reason == "Expired" || status.reason == "Gone",
                            "410 with reason {:?}",
                            status.reason
                        );
                        Some((status.code, status.reason.clone()))
                    }
                    Ok(Some(Ok(event))) => {
                        bail!("expected 410 Expired, got {} {event:?}", event_type(&event))
                    }
                }
            }
        };
        let (code, reason) = expired.unwrap_or_default();
        ensure!(
            code == 410,
            "expected 410 for an expired resourceVersion, got {code} {reason:?}"
        );

        // A version still within the history resumes exactly after it.
        let recent = &versions[90];
        let mut stream = api
            .watch(&WatchParams::default().timeout(30), recent)
            .await?
            .boxed();
        for expected in 91..100 {
            match next_change(&mut stream, EVENT_TIMEOUT).await? {
                WatchEvent::Modified(cm) => {
                    let got = data_value(&cm, "i");
                    ensure!(
                        got == Some(expected.to_string()),
                        "resumed watch delivered i={got:?}, expected {expected}"
                    );
                }
                other => bail!("resumed watch delivered {}", event_type(&other)),
            }
        }
        Ok(())
    })
    .await
}

fn error_code(error: &kube::Error) -> (u16, String) {
    match error {
        kube::Error::Api(status) => (status.code, status.reason.clone()),
        other => (0, other.to_string()),
    }
}

// ---------------------------------------------------------------------------
// Fault injection.

async fn namespaced_list(client: &Client) -> Result<uplink_tests::apiserver::RawResponse> {
    raw_request(
        client,
        Method::GET,
        "/api/v1/namespaces/default/configmaps",
        None,
        Vec::new(),
    )
    .await
}

#[tokio::test]
async fn injected_latency_delays_responses() -> Result<()> {
    with_server(ApiServerConfig::default(), |server| async move {
        let client = client_for(&server, None).await?;
        namespaced_list(&client).await?;
        let latency = Duration::from_millis(400);
        server.faults().set_latency(latency);
        let started = tokio::time::Instant::now();
        let response = namespaced_list(&client).await?;
        let took = started.elapsed();
        ensure!(
            response.status == 200,
            "with latency: HTTP {}",
            response.status
        );
        ensure!(
            took >= latency,
            "a request took {took:?} with {latency:?} of injected latency"
        );
        server.faults().clear();
        Ok(())
    })
    .await
}

#[tokio::test]
async fn injected_errors_and_clear() -> Result<()> {
    with_server(ApiServerConfig::default(), |server| async move {
        let client = client_without_retries(&server, None).await?;
        ensure!(
            namespaced_list(&client).await?.status == 200,
            "no fault: not 200"
        );

        server.faults().set_error_rate(1.0, 429);
        for _ in 0..5 {
            let response = namespaced_list(&client).await?;
            response.expect_status(429, "TooManyRequests")?;
            let retry_after = response
                .headers
                .get(header::RETRY_AFTER)
                .context("a 429 without Retry-After")?
                .to_str()?;
            retry_after.parse::<u64>().with_context(|| {
                format!("Retry-After {retry_after:?} is not a number of seconds")
            })?;
        }
        server.faults().clear();
        let response = namespaced_list(&client).await?;
        ensure!(
            response.status == 200,
            "after clear(): HTTP {}: {}",
            response.status,
            response.text()
        );

        for (code, reason) in [(500, "InternalError"), (503, "ServiceUnavailable")] {
            server.faults().set_error_rate(1.0, code);
            namespaced_list(&client)
                .await?
                .expect_status(code, reason)?;
            server.faults().clear();
            ensure!(
                namespaced_list(&client).await?.status == 200,
                "after clearing {code}"
            );
        }

        // A share of requests, not all of them.
        server.faults().set_error_rate(0.5, 503);
        let mut failed = 0;
        let mut succeeded = 0;
        for _ in 0..100 {
            match namespaced_list(&client).await?.status.as_u16() {
                200 => succeeded += 1,
                503 => failed += 1,
                other => bail!("with a 50% 503 rate: HTTP {other}"),
            }
        }
        server.faults().clear();
        ensure!(
            failed > 0 && succeeded > 0,
            "a 50% error rate gave {failed} errors in 100"
        );

        // kube's default client retries 503s and gets through a partial rate.
        server.faults().set_error_rate(0.5, 503);
        let retrying = client_for(&server, None).await?;
        Api::<ConfigMap>::namespaced(retrying, "default")
            .list(&ListParams::default())
            .await?;
        server.faults().clear();
        Ok(())
    })
    .await
}

#[tokio::test]
async fn injected_watch_close_after_events() -> Result<()> {
    with_server(ApiServerConfig::default(), |server| async move {
        let client = client_for(&server, None).await?;
        create_namespace(&client, "closing").await?;
        let api: Api<ConfigMap> = Api::namespaced(client, "closing");
        let params = WatchParams::default().timeout(60).disable_bookmarks();

        server.faults().set_close_watches_after(Some(3));
        let rv = api
            .list(&ListParams::default())
            .await?
            .metadata
            .resource_version
            .unwrap_or_default();
        let mut stream = api.watch(&params, &rv).await?.boxed();
        for i in 0..5 {
            api.create(&PostParams::default(), &configmap(&format!("c{i}"), &[])?)
                .await?;
        }
        let mut delivered = 0;
        loop {
            match tokio::time::timeout(EVENT_TIMEOUT, stream.next()).await {
                Err(_) => {
                    bail!("the watch stayed open after {delivered} events with close-after 3")
                }
                Ok(None) => break,
                Ok(Some(event)) => {
                    event?;
                    delivered += 1;
                }
            }
        }
        ensure!(
            delivered == 3,
            "the watch closed after {delivered} events, expected 3"
        );

        server.faults().clear();
        let rv = api
            .list(&ListParams::default())
            .await?
            .metadata
            .resource_version
            .unwrap_or_default();
        let mut stream = api.watch(&params, &rv).await?.boxed();
        for i in 5..10 {
            api.create(&PostParams::default(), &configmap(&format!("c{i}"), &[])?)
                .await?;
        }
        for _ in 5..10 {
            next_event(&mut stream, EVENT_TIMEOUT)
                .await
                .context("after clear(), the watch closed early")?;
        }
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------
// Robustness.

fn tls_connector(server: &ApiServer) -> Result<tokio_rustls::TlsConnector> {
    use rustls_pki_types::{CertificateDer, pem::PemObject as _};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(server.ca_pem().as_bytes()) {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// Reads until the peer closes or `limit` passes; returns what was read.
async fn read_until_close<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    limit: Duration,
) -> Vec<u8> {
    let mut received = Vec::new();
    let _ = tokio::time::timeout(limit, stream.read_to_end(&mut received)).await;
    received
}

#[tokio::test]
async fn survives_garbage_and_keeps_serving() -> Result<()> {
    with_server(ApiServerConfig::default(), |server| async move {
        let client = client_for(&server, None).await?;

        // Not TLS at all.
        let mut plain = tokio::net::TcpStream::connect(server.addr()).await?;
        plain
            .write_all(b"\x16\x03\x01\xff\xffnot a handshake\r\n\r\n")
            .await?;
        read_until_close(&mut plain, Duration::from_secs(5)).await;

        // Connections that never say anything must not block others.
        let mut idle = Vec::new();
        for _ in 0..10 {
            idle.push(tokio::net::TcpStream::connect(server.addr()).await?);
        }

        // TLS, then junk instead of HTTP.
        let connector = tls_connector(&server)?;
        let tcp = tokio::net::TcpStream::connect(server.addr()).await?;
        let name = rustls_pki_types::ServerName::try_from("127.0.0.1")?.to_owned();
        let mut tls = connector
            .connect(name, tcp)
            .await
            .context("TLS handshake with the server")?;
        tls.write_all(b"\x00\x01\x02 GARBAGE \xff\xfe\r\n\r\n")
            .await?;
        let answer = read_until_close(&mut tls, Duration::from_secs(5)).await;
        if !answer.is_empty() {
            ensure!(
                answer.starts_with(b"HTTP/1.1 4"),
                "junk over TLS got: {}",
                String::from_utf8_lossy(&answer)
            );
        }

        // Paths that do not make sense: a 4xx each (kube-apiserver's Go
        // HTTP server answers 400 to a bad escape), never a 5xx.
        let mut wrong = Vec::new();
        for path in [
            "/clusters/",
            "/clusters//api/v1/namespaces",
            "/clusters/bad%20workspace!/api/v1/namespaces",
            "/api/v1/namespaces/%ZZ/configmaps",
            "/api/v1/namespaces/a/configmaps/b/c/d/e/f/g",
            "/apis/apps/v1/namespaces/a/deployments/b/frobnicate",
            "/../../etc/passwd",
        ] {
            let response = raw_request(&client, Method::GET, path, None, Vec::new())
                .await
                .with_context(|| format!("GET {path}"))?;
            if !response.status.is_client_error() {
                wrong.push(format!(
                    "GET {path}: HTTP {}: {}",
                    response.status,
                    response.text()
                ));
            }
        }

        // Still serving, with the idle connections still open.
        let api: Api<Deployment> = Api::namespaced(client, "default");
        api.list(&ListParams::default())
            .await
            .context("the server stopped serving")?;
        drop(idle);
        ensure!(
            wrong.is_empty(),
            "nonsense paths not answered with a 4xx:\n{}",
            wrong.join("\n")
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn wrong_token_is_unauthorized() -> Result<()> {
    with_server(ApiServerConfig::default(), |server| async move {
        let yaml = server
            .kubeconfig_yaml(None)
            .replace(server.token(), "not-the-token");
        ensure!(
            !yaml.contains(server.token()),
            "the kubeconfig still carries the token"
        );
        let stranger = client_from_kubeconfig_yaml(&yaml, false).await?;
        let result = Api::<ConfigMap>::namespaced(stranger, "default")
            .list(&ListParams::default())
            .await;
        expect_api_error(result, 401, "Unauthorized")?;
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------
// kcp's wildcard `/clusters/*`: list and watch across every workspace.

/// The label kcp's TMC puts on an object placed on a SyncTarget.
const PLACED: &str = "state.workload.kcp.io/abc123";
const CLUSTER_ANNOTATION: &str = "kcp.io/cluster";

fn labeled_configmap(name: &str, labels: serde_json::Value) -> Result<ConfigMap> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": { "name": name, "labels": labels },
    }))?)
}

fn placed_configmap(name: &str) -> Result<ConfigMap> {
    labeled_configmap(name, json!({ PLACED: "Sync" }))
}

fn workspace_of<K: kube::Resource>(object: &K) -> Option<String> {
    object
        .meta()
        .annotations
        .as_ref()?
        .get(CLUSTER_ANNOTATION)
        .cloned()
}

/// (name, workspace annotation) of each item, sorted.
fn names_and_workspaces<K: kube::Resource>(items: &[K]) -> Vec<(String, Option<String>)> {
    let mut out: Vec<(String, Option<String>)> = items
        .iter()
        .map(|o| (o.meta().name.clone().unwrap_or_default(), workspace_of(o)))
        .collect();
    out.sort();
    out
}

/// Clients for team-a, team-b, the physical cluster and `/clusters/*`.
async fn wildcard_clients(server: &ApiServer) -> Result<(Client, Client, Client, Client)> {
    Ok((
        client_for(server, Some(TEAM_A)).await?,
        client_for(server, Some(TEAM_B)).await?,
        client_for(server, None).await?,
        client_for(server, Some("*")).await?,
    ))
}

async fn create_in_default(client: &Client, cm: &ConfigMap) -> Result<ConfigMap> {
    Ok(Api::<ConfigMap>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), cm)
        .await?)
}

fn placed_in_both() -> Vec<(String, Option<String>)> {
    vec![
        ("placed-a".to_owned(), Some(TEAM_A.to_owned())),
        ("placed-b".to_owned(), Some(TEAM_B.to_owned())),
    ]
}

#[tokio::test]
async fn wildcard_list_selects_across_workspaces() -> Result<()> {
    with_server(two_workspaces(), |server| async move {
        let (a, b, physical, star) = wildcard_clients(&server).await?;
        create_in_default(&a, &placed_configmap("placed-a")?).await?;
        create_in_default(&a, &labeled_configmap("other-a", json!({"x": "y"}))?).await?;
        create_in_default(&b, &placed_configmap("placed-b")?).await?;
        // The physical cluster is not a workspace: `/clusters/*` never lists it.
        create_in_default(&physical, &placed_configmap("placed-physical")?).await?;
        let all: Api<ConfigMap> = Api::all(star);

        let exists = all.list(&ListParams::default().labels(PLACED)).await?;
        ensure!(
            names_and_workspaces(&exists.items) == placed_in_both(),
            "`{PLACED}` across workspaces: {:?}",
            names_and_workspaces(&exists.items)
        );
        let equals = all
            .list(&ListParams::default().labels(&format!("{PLACED}=Sync")))
            .await?;
        ensure!(
            names_and_workspaces(&equals.items) == placed_in_both(),
            "`{PLACED}=Sync` across workspaces: {:?}",
            names_and_workspaces(&equals.items)
        );
        let other_value = all
            .list(&ListParams::default().labels(&format!("{PLACED}=Other")))
            .await?;
        ensure!(other_value.items.is_empty(), "`{PLACED}=Other` matched");
        let by_field = all
            .list(
                &ListParams::default()
                    .labels(PLACED)
                    .fields("metadata.name=placed-b"),
            )
            .await?;
        ensure!(
            names_and_workspaces(&by_field.items) == placed_in_both()[1..],
            "field selector across workspaces: {:?}",
            names_and_workspaces(&by_field.items)
        );

        // Pages of one continue across workspaces, from one snapshot.
        let first = all
            .list(&ListParams::default().labels(PLACED).limit(1))
            .await?;
        let token = first
            .metadata
            .continue_
            .clone()
            .filter(|t| !t.is_empty())
            .context("a page of 1 of 2 items has no continue token")?;
        create_in_default(&b, &placed_configmap("placed-later")?).await?;
        let second = all
            .list(
                &ListParams::default()
                    .labels(PLACED)
                    .limit(1)
                    .continue_token(&token),
            )
            .await?;
        ensure!(
            second.metadata.continue_.as_deref().unwrap_or_default() == "",
            "the last page has a continue token"
        );
        ensure!(
            second.metadata.resource_version == first.metadata.resource_version,
            "a continued page reports another resourceVersion"
        );
        let mut both = first.items;
        both.extend(second.items);
        ensure!(
            names_and_workspaces(&both) == placed_in_both(),
            "two pages across workspaces: {:?}",
            names_and_workspaces(&both)
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn wildcard_watch_resumes_across_workspaces() -> Result<()> {
    with_server(two_workspaces(), |server| async move {
        let (a, b, physical, star) = wildcard_clients(&server).await?;
        let all: Api<ConfigMap> = Api::all(star);
        let listed = all.list(&ListParams::default().labels(PLACED)).await?;
        let start = listed.metadata.resource_version.context("no list RV")?;

        create_in_default(&a, &placed_configmap("placed-a")?).await?;
        create_in_default(&a, &labeled_configmap("other-a", json!({"x": "y"}))?).await?;
        let b_added = create_in_default(&b, &placed_configmap("placed-b")?).await?;
        Api::<ConfigMap>::namespaced(a.clone(), "default")
            .patch(
                "placed-a",
                &PatchParams::default(),
                &Patch::Merge(json!({ "data": { "step": "2" } })),
            )
            .await?;
        // Unplacing an object (removing the label) is a DELETED to the selector.
        Api::<ConfigMap>::namespaced(b.clone(), "default")
            .patch(
                "placed-b",
                &PatchParams::default(),
                &Patch::Json::<()>(serde_json::from_value(json!([
                    { "op": "remove", "path": "/metadata/labels/state.workload.kcp.io~1abc123" }
                ]))?),
            )
            .await?;

        let seen = |event: &WatchEvent<ConfigMap>| -> (String, String, Option<String>) {
            let (kind, cm) = match event {
                WatchEvent::Added(cm) => ("ADDED", Some(cm)),
                WatchEvent::Modified(cm) => ("MODIFIED", Some(cm)),
                WatchEvent::Deleted(cm) => ("DELETED", Some(cm)),
                other => (event_type(other), None),
            };
            (
                kind.to_owned(),
                cm.and_then(|c| c.metadata.name.clone()).unwrap_or_default(),
                cm.and_then(workspace_of),
            )
        };
        let expected = [
            ("ADDED", "placed-a", TEAM_A),
            ("ADDED", "placed-b", TEAM_B),
            ("MODIFIED", "placed-a", TEAM_A),
            ("DELETED", "placed-b", TEAM_B),
        ];
        let params = WatchParams::default().labels(PLACED).timeout(30);
        let mut stream = all.watch(&params, &start).await?.boxed();
        for (kind, name, ws) in expected {
            let event = next_change(&mut stream, EVENT_TIMEOUT).await?;
            ensure!(
                seen(&event) == (kind.to_owned(), name.to_owned(), Some(ws.to_owned())),
                "expected {kind} {name} from {ws}, got {:?}",
                seen(&event)
            );
        }

        // Resuming from the second workspace's event continues after it.
        let resume = b_added.metadata.resource_version.context("no RV")?;
        let mut resumed = all.watch(&params, &resume).await?.boxed();
        for (kind, name, ws) in &expected[2..] {
            let event = next_change(&mut resumed, EVENT_TIMEOUT).await?;
            ensure!(
                seen(&event) == ((*kind).to_owned(), (*name).to_owned(), Some((*ws).to_owned())),
                "resumed from {resume}: expected {kind} {name}, got {:?}",
                seen(&event)
            );
        }

        // `watch=1` works as `watch=true` does.
        let path = format!(
            "/clusters/*/api/v1/configmaps?watch=1&resourceVersion={resume}&labelSelector={PLACED}&timeoutSeconds=1"
        );
        let raw = raw_request(&physical, Method::GET, &path, None, Vec::new()).await?;
        let lines: Vec<serde_json::Value> = raw
            .text()
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()
            .with_context(|| format!("watch=1 answered {}", raw.text()))?;
        let kinds: Vec<&str> = lines.iter().filter_map(|l| l["type"].as_str()).collect();
        ensure!(
            kinds == ["MODIFIED", "DELETED"],
            "watch=1 from {resume}: {}",
            raw.text()
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn wildcard_watch_from_an_expired_version_is_gone() -> Result<()> {
    let config = ApiServerConfig {
        watch_history: 10,
        ..two_workspaces()
    };
    with_server(config, |server| async move {
        let (a, b, _, star) = wildcard_clients(&server).await?;
        let all: Api<ConfigMap> = Api::all(star);
        create_in_default(&a, &placed_configmap("placed-a")?).await?;
        let old = all
            .list(&ListParams::default())
            .await?
            .metadata
            .resource_version
            .context("no list RV")?;
        // Churn in one workspace only: its history no longer reaches back.
        create_in_default(&b, &placed_configmap("churn")?).await?;
        let churn = Api::<ConfigMap>::namespaced(b.clone(), "default");
        for i in 0..30 {
            churn
                .patch(
                    "churn",
                    &PatchParams::default(),
                    &Patch::Merge(json!({ "data": { "i": i.to_string() } })),
                )
                .await?;
        }
        let params = WatchParams::default().timeout(30);
        let gone = match all.watch(&params, &old).await {
            Err(error) => error_code(&error),
            Ok(stream) => match next_event(&mut stream.boxed(), EVENT_TIMEOUT).await? {
                WatchEvent::Error(status) => (status.code, status.reason),
                other => bail!("expected 410 Expired, got {} {other:?}", event_type(&other)),
            },
        };
        ensure!(gone.0 == 410, "watch from an expired version: {gone:?}");

        // The informer's answer: relist, then watch from the new version.
        let relisted = all.list(&ListParams::default().labels(PLACED)).await?;
        ensure!(
            names_and_workspaces(&relisted.items)
                == [
                    ("churn".to_owned(), Some(TEAM_B.to_owned())),
                    ("placed-a".to_owned(), Some(TEAM_A.to_owned()))
                ],
            "relist: {:?}",
            names_and_workspaces(&relisted.items)
        );
        let fresh = relisted.metadata.resource_version.context("no list RV")?;
        let mut stream = all.watch(&params, &fresh).await?.boxed();
        create_in_default(&a, &placed_configmap("after-relist")?).await?;
        match next_change(&mut stream, EVENT_TIMEOUT).await? {
            WatchEvent::Added(cm) if cm.metadata.name.as_deref() == Some("after-relist") => Ok(()),
            other => bail!("after the relist: {} {other:?}", event_type(&other)),
        }
    })
    .await
}

#[tokio::test]
async fn wildcard_watch_sends_bookmarks() -> Result<()> {
    with_server(two_workspaces(), |server| async move {
        let (a, b, _, star) = wildcard_clients(&server).await?;
        let all: Api<ConfigMap> = Api::all(star);
        let start = all
            .list(&ListParams::default().labels(PLACED))
            .await?
            .metadata
            .resource_version
            .context("no list RV")?;
        create_in_default(&a, &placed_configmap("placed-a")?).await?;
        let last = create_in_default(&b, &placed_configmap("placed-b")?).await?;
        let last_rv = resource_version_number(last.metadata.resource_version.as_deref())?;
        let params = WatchParams::default().labels(PLACED).timeout(30);
        ensure!(params.bookmarks, "kube's watches ask for bookmarks");
        let mut stream = all.watch(&params, &start).await?.boxed();
        let mut changes = 0;
        let bookmark = loop {
            match next_event(&mut stream, EVENT_TIMEOUT).await? {
                WatchEvent::Bookmark(b) => break b,
                WatchEvent::Added(_) => changes += 1,
                other => bail!("unexpected {} {other:?}", event_type(&other)),
            }
        };
        ensure!(changes == 2, "a bookmark came after {changes} of 2 events");
        let at = resource_version_number(Some(&bookmark.metadata.resource_version))?;
        ensure!(
            at >= last_rv,
            "the bookmark ({at}) is older than the last event ({last_rv})"
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn workspace_objects_carry_their_workspace() -> Result<()> {
    with_server(two_workspaces(), |server| async move {
        let (a, _, physical, _) = wildcard_clients(&server).await?;
        let in_a: Api<ConfigMap> = Api::namespaced(a.clone(), "default");
        let mut watch = in_a
            .watch(&WatchParams::default().timeout(30), "0")
            .await?
            .boxed();
        // A forged annotation is replaced by the real workspace.
        let mut forged = configmap("cm", &[])?;
        forged.metadata.annotations =
            Some([(CLUSTER_ANNOTATION.to_owned(), "root:other".to_owned())].into());
        let created = in_a.create(&PostParams::default(), &forged).await?;
        let got = in_a.get("cm").await?;
        let mut replacement = got.clone();
        replacement.metadata.annotations = None;
        replacement.data = Some([("k".to_owned(), "v".to_owned())].into());
        let replaced = in_a
            .replace("cm", &PostParams::default(), &replacement)
            .await?;
        let patched = in_a
            .patch(
                "cm",
                &PatchParams::default(),
                &Patch::Merge(
                    json!({ "metadata": { "annotations": { CLUSTER_ANNOTATION: null } } }),
                ),
            )
            .await?;
        let listed = in_a.list(&ListParams::default()).await?;
        for (what, object) in [
            ("create", &created),
            ("get", &got),
            ("update", &replaced),
            ("patch", &patched),
        ] {
            ensure!(
                workspace_of(object).as_deref() == Some(TEAM_A),
                "the {what} answer carries {:?}",
                workspace_of(object)
            );
        }
        ensure!(
            patched.metadata.resource_version == replaced.metadata.resource_version,
            "removing the workspace annotation wrote a new version"
        );
        ensure!(
            listed
                .items
                .iter()
                .all(|o| workspace_of(o).as_deref() == Some(TEAM_A)),
            "a listed object lacks the annotation"
        );
        let namespace = Api::<k8s_openapi::api::core::v1::Namespace>::all(a.clone())
            .get("default")
            .await?;
        ensure!(
            workspace_of(&namespace).as_deref() == Some(TEAM_A),
            "the initial namespace carries {:?}",
            workspace_of(&namespace)
        );
        in_a.delete("cm", &DeleteParams::default()).await?;
        let mut events = Vec::new();
        while events.len() < 3 {
            let event = next_change(&mut watch, EVENT_TIMEOUT).await?;
            match &event {
                WatchEvent::Added(cm) | WatchEvent::Modified(cm) | WatchEvent::Deleted(cm)
                    if cm.metadata.name.as_deref() == Some("cm") =>
                {
                    events.push((event_type(&event), workspace_of(cm)));
                }
                _ => {}
            }
        }
        ensure!(
            events
                == [
                    ("ADDED", Some(TEAM_A.to_owned())),
                    ("MODIFIED", Some(TEAM_A.to_owned())),
                    ("DELETED", Some(TEAM_A.to_owned()))
                ],
            "watch events: {events:?}"
        );

        // The physical cluster is no workspace: no annotation.
        let in_physical: Api<ConfigMap> = Api::namespaced(physical, "default");
        let plain = in_physical
            .create(&PostParams::default(), &configmap("cm", &[])?)
            .await?;
        ensure!(
            workspace_of(&plain).is_none() && workspace_of(&in_physical.get("cm").await?).is_none(),
            "an object of the physical cluster carries {CLUSTER_ANNOTATION}"
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn wildcard_refuses_everything_but_list_and_watch() -> Result<()> {
    with_server(two_workspaces(), |server| async move {
        let (a, _, physical, _) = wildcard_clients(&server).await?;
        create_in_default(&a, &placed_configmap("placed-a")?).await?;
        let body = serde_json::to_vec(&json!({
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": "x", "namespace": "default" }
        }))?;
        let json_type = Some("application/json");
        let merge_type = Some("application/merge-patch+json");
        let collection = "/clusters/*/api/v1/namespaces/default/configmaps";
        let object = "/clusters/*/api/v1/namespaces/default/configmaps/placed-a";
        for (method, path, content_type, verb) in [
            (Method::POST, collection, json_type, "create"),
            (Method::GET, object, None, "get"),
            (Method::PUT, object, json_type, "update"),
            (Method::PATCH, object, merge_type, "patch"),
            (Method::DELETE, object, None, "delete"),
            (Method::DELETE, collection, None, "deletecollection"),
        ] {
            let response = raw_request(&physical, method.clone(), path, content_type, body.clone()).await?;
            let status = response
                .expect_status(405, "MethodNotAllowed")
                .with_context(|| format!("{method} {path}"))?;
            ensure!(
                status.message
                    == format!("{verb} is not supported on resources of kind \"configmaps\" in the `*` logical cluster"),
                "{method} {path}: {:?}",
                status.message
            );
        }
        ensure!(
            Api::<ConfigMap>::namespaced(a, "default").get("placed-a").await?.metadata.annotations.is_some(),
            "the object is gone"
        );
        // Listing one namespace in every workspace is a list, and allowed.
        let listed = raw_request(&physical, Method::GET, collection, None, Vec::new()).await?;
        ensure!(listed.status == 200, "list of {collection}: {}", listed.text());
        Ok(())
    })
    .await
}

/// Creates ServiceAccount `robot` in `default` of the cluster `prefix`
/// addresses ("" or `/clusters/<workspace>`), makes it cluster-admin there
/// and returns a token for it.
async fn cluster_admin_robot(admin: &Client, prefix: &str) -> Result<String> {
    let post = |path: String, body: serde_json::Value| async move {
        let body = serde_json::to_vec(&body)?;
        let response =
            raw_request(admin, Method::POST, &path, Some("application/json"), body).await?;
        ensure!(response.status == 201, "POST {path}: {}", response.text());
        response.json()
    };
    post(
        format!("{prefix}/api/v1/namespaces/default/serviceaccounts"),
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "robot"}}),
    )
    .await?;
    post(
        format!("{prefix}/apis/rbac.authorization.k8s.io/v1/clusterrolebindings"),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "robot-admin"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
            "subjects": [{"kind": "ServiceAccount", "name": "robot", "namespace": "default"}],
        }),
    )
    .await?;
    let request = post(
        format!("{prefix}/api/v1/namespaces/default/serviceaccounts/robot/token"),
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}}),
    )
    .await?;
    request["status"]["token"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no token in {request}"))
}

/// kcp authorizes `/clusters/*` as the logical cluster `*`, which no
/// workspace is: only `system:masters` may use it. A cluster-admin of the
/// physical cluster or of a workspace, or a user the admin impersonates,
/// is refused (403) before the verb is looked at.
#[tokio::test]
async fn wildcard_is_for_privileged_users_only() -> Result<()> {
    with_server(two_workspaces(), |server| async move {
        let (a, _, physical, _) = wildcard_clients(&server).await?;
        create_in_default(&a, &placed_configmap("placed-a")?).await?;
        let kubeconfig = Kubeconfig::from_yaml(&server.kubeconfig_yaml(None))?;
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        let robot = "system:serviceaccount:default:robot";
        for prefix in ["", &format!("/clusters/{TEAM_A}")] {
            let token = cluster_admin_robot(&physical, prefix).await?;
            let client = client_with_token(&config, &token)?;
            let own = raw_request(&client, Method::GET, &format!("{prefix}/api/v1/configmaps"), None, Vec::new()).await?;
            ensure!(own.status == 200, "{robot} listing its own cluster {prefix:?}: {}", own.text());
            for (method, path, verb, scope) in [
                (Method::GET, "/clusters/*/api/v1/configmaps", "list", "at the cluster scope".to_owned()),
                (Method::GET, "/clusters/*/api/v1/configmaps?watch=1", "watch", "at the cluster scope".to_owned()),
                (Method::POST, "/clusters/*/api/v1/namespaces/default/configmaps", "create", "in the namespace \"default\"".to_owned()),
            ] {
                let response = raw_request(&client, method.clone(), path, Some("application/json"), b"{}".to_vec()).await?;
                let status = response.expect_status(403, "Forbidden").with_context(|| format!("{robot} of {prefix:?}: {method} {path}"))?;
                ensure!(
                    status.message
                        == format!("configmaps is forbidden: User \"{robot}\" cannot {verb} resource \"configmaps\" in API group \"\" {scope}: workspace access not permitted"),
                    "{method} {path}: {:?}",
                    status.message
                );
            }
            raw_request(&client, Method::GET, "/clusters/*/api", None, Vec::new())
                .await?
                .expect_status(403, "Forbidden")
                .context("discovery of /clusters/*")?;
        }
        let as_alice = client_impersonating(&config, "alice", &[])?;
        raw_request(&as_alice, Method::GET, "/clusters/*/api/v1/configmaps", None, Vec::new())
            .await?
            .expect_status(403, "Forbidden")
            .context("the admin impersonating alice")?;
        let listed = raw_request(&physical, Method::GET, "/clusters/*/api/v1/configmaps", None, Vec::new()).await?;
        ensure!(
            listed.status == 200 && listed.text().contains("placed-a"),
            "the admin's wildcard list: {}",
            listed.text()
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn kubectl_lists_deployments_in_every_workspace() -> Result<()> {
    with_server(two_workspaces(), |server| async move {
        let Some(kubectl) = uplink_tests::kubectl::Kubectl::for_server(&server, Some("*"))? else {
            return Ok(());
        };
        let (a, b, _, _) = wildcard_clients(&server).await?;
        for (client, name, labels) in [
            (&a, "web-a", json!({ PLACED: "Sync" })),
            (&a, "unplaced-a", json!({ "app": "web" })),
            (&b, "web-b", json!({ PLACED: "Sync" })),
        ] {
            let deployment: Deployment = serde_json::from_value(json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": { "name": name, "labels": labels },
                "spec": {
                    "selector": { "matchLabels": { "app": name } },
                    "template": {
                        "metadata": { "labels": { "app": name } },
                        "spec": { "containers": [{ "name": "c", "image": "registry.k8s.io/pause:3.10" }] }
                    }
                }
            }))?;
            Api::<Deployment>::namespaced(client.clone(), "default")
                .create(&PostParams::default(), &deployment)
                .await?;
        }
        let out = kubectl
            .ok(&["get", "deployments", "-A", "-l", PLACED, "-o", "json"])
            .await?;
        let listed: serde_json::Value = serde_json::from_str(&out)
            .with_context(|| format!("kubectl printed {out}"))?;
        let mut got: Vec<(String, String)> = listed["items"]
            .as_array()
            .context("no items")?
            .iter()
            .map(|d| {
                (
                    d["metadata"]["name"].as_str().unwrap_or_default().to_owned(),
                    d["metadata"]["annotations"][CLUSTER_ANNOTATION]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                )
            })
            .collect();
        got.sort();
        ensure!(
            got == [
                ("web-a".to_owned(), TEAM_A.to_owned()),
                ("web-b".to_owned(), TEAM_B.to_owned())
            ],
            "kubectl get deployments -A -l {PLACED}: {got:?}"
        );
        // The table form (what an operator types) works too.
        let table = kubectl.ok(&["get", "deployments", "-A", "-l", PLACED]).await?;
        ensure!(
            table.contains("web-a") && table.contains("web-b") && !table.contains("unplaced-a"),
            "kubectl table: {table}"
        );
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------
// The test bed's kubelet: a gracefully deleted pod goes when its grace ends.

fn bound_pod(
    name: &str,
    grace: i64,
    finalizers: &[&str],
) -> Result<k8s_openapi::api::core::v1::Pod> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "finalizers": finalizers },
        "spec": {
            "nodeName": "node-1",
            "terminationGracePeriodSeconds": grace,
            "containers": [{ "name": "c", "image": "registry.k8s.io/pause:3.10" }],
        },
    }))?)
}

#[tokio::test]
async fn terminating_pods_go_when_their_grace_period_ends() -> Result<()> {
    with_server(ApiServerConfig::default(), |server| async move {
        let client = client_for(&server, None).await?;
        let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client, "default");
        let listed = pods.list(&ListParams::default()).await?;
        let rv = listed.metadata.resource_version.context("no list RV")?;
        let mut events = pods
            .watch(&WatchParams::default().timeout(30), &rv)
            .await?
            .boxed();
        pods.create(&PostParams::default(), &bound_pod("short", 2, &[])?)
            .await?;
        pods.create(
            &PostParams::default(),
            &bound_pod("held", 1, &["uplink.test/hold"])?,
        )
        .await?;
        let started = tokio::time::Instant::now();
        pods.delete("short", &DeleteParams::default()).await?;
        pods.delete("held", &DeleteParams::default()).await?;
        let terminating = pods
            .get("short")
            .await
            .context("the pod went before its grace period")?;
        ensure!(
            terminating.metadata.deletion_grace_period_seconds == Some(2),
            "grace: {:?}",
            terminating.metadata.deletion_grace_period_seconds
        );

        // ADDED, then MODIFIED (terminating), then DELETED once the grace is over.
        let mut seen = Vec::new();
        while seen.len() < 3 {
            match next_change(&mut events, EVENT_TIMEOUT).await? {
                WatchEvent::Added(p) | WatchEvent::Modified(p) | WatchEvent::Deleted(p)
                    if p.metadata.name.as_deref() == Some("short") =>
                {
                    seen.push(p.metadata.deletion_timestamp.is_some());
                }
                _ => {}
            }
        }
        let took = started.elapsed();
        ensure!(
            seen == [false, true, true],
            "deletionTimestamp along the events: {seen:?}"
        );
        ensure!(
            took >= Duration::from_millis(900),
            "the pod went {took:?} after a delete with a 2 s grace"
        );
        expect_api_error(pods.get("short").await, 404, "NotFound")?;

        // A pod held by a finalizer waits for it after its grace, then goes.
        let held = eventually(EVENT_TIMEOUT, "the held pod's grace to end", || async {
            let pod = pods.get("held").await?;
            Ok((pod.metadata.deletion_grace_period_seconds == Some(0)).then_some(pod))
        })
        .await?;
        ensure!(
            held.metadata.deletion_timestamp.is_some(),
            "no deletionTimestamp on the held pod"
        );
        pods.patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "finalizers": null } })),
        )
        .await?;
        expect_api_error(pods.get("held").await, 404, "NotFound")
            .context("the held pod after its last finalizer went")?;
        Ok(())
    })
    .await
}

/// B's `pods/ephemeralcontainers` and A's graceful deletion together: a
/// terminating pod may still be debugged (kube's ephemeral containers
/// strategy does not look at deletion), the update keeps its deletion
/// metadata, and the stand-in kubelet still removes it when its grace ends.
#[tokio::test]
async fn a_terminating_pod_can_be_debugged_and_still_goes() -> Result<()> {
    with_server(ApiServerConfig::default(), |server| async move {
        let client = client_for(&server, None).await?;
        let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), "default");
        pods.create(&PostParams::default(), &bound_pod("debugged", 2, &[])?)
            .await?;
        pods.delete("debugged", &DeleteParams::default()).await?;
        let terminating = pods.get("debugged").await?;
        let deleted_at = terminating.metadata.deletion_timestamp.clone();
        ensure!(deleted_at.is_some(), "the pod is not terminating");
        let patch = serde_json::to_vec(&json!({"spec": {"ephemeralContainers": [
            {"name": "debugger", "image": "busybox", "targetContainerName": "c"}
        ]}}))?;
        let path = "/api/v1/namespaces/default/pods/debugged/ephemeralcontainers";
        let response = raw_request(
            &client,
            Method::PATCH,
            path,
            Some("application/strategic-merge-patch+json"),
            patch,
        )
        .await?;
        ensure!(response.status == 200, "PATCH {path}: {}", response.text());
        let debugged = pods.get("debugged").await?;
        ensure!(
            debugged
                .spec
                .as_ref()
                .and_then(|s| s.ephemeral_containers.as_ref())
                .is_some_and(|c| c.len() == 1),
            "no ephemeral container: {:?}",
            debugged.spec
        );
        ensure!(
            debugged.metadata.deletion_timestamp == deleted_at
                && debugged.metadata.deletion_grace_period_seconds == Some(2),
            "the update changed the deletion: {:?} {:?}",
            debugged.metadata.deletion_timestamp,
            debugged.metadata.deletion_grace_period_seconds
        );
        eventually(EVENT_TIMEOUT, "the debugged pod's grace to end", || async {
            match pods.get_opt("debugged").await? {
                None => Ok(Some(())),
                Some(_) => Ok(None),
            }
        })
        .await
    })
    .await
}

// ---------------------------------------------------------------------------
// Request counters.

fn web_deployment(name: &str, replicas: i32) -> Result<Deployment> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": name },
        "spec": {
            "replicas": replicas,
            "selector": { "matchLabels": { "app": name } },
            "template": {
                "metadata": { "labels": { "app": name } },
                "spec": { "containers": [{ "name": "web", "image": "nginx:1.27" }] },
            },
        },
    }))?)
}

#[tokio::test]
async fn request_counters_count_what_clients_asked_for() -> Result<()> {
    with_server(two_workspaces(), |server| async move {
        let a = client_for(&server, Some(TEAM_A)).await?;
        let star = client_for(&server, Some("*")).await?;
        let physical = client_for(&server, None).await?;
        let before = server.requests();

        let deployments: Api<Deployment> = Api::namespaced(a.clone(), "default");
        deployments
            .create(&PostParams::default(), &web_deployment("web", 1)?)
            .await?;
        deployments.list(&ListParams::default()).await?;
        deployments.list(&ListParams::default()).await?;
        deployments.get("web").await?;
        expect_api_error(deployments.get("missing").await, 404, "NotFound")?;
        deployments
            .patch_status(
                "web",
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": { "replicas": 1 } })),
            )
            .await?;
        let events = deployments
            .watch(&WatchParams::default().timeout(1), "0")
            .await?;
        drop(events);
        Api::<Deployment>::all(star)
            .list(&ListParams::default())
            .await?;

        let counted = server.requests().since(&before);
        let in_a = counted.in_workspace(TEAM_A);
        let got = [
            ("create", in_a.verb("create")),
            ("list", in_a.verb("list")),
            ("get", in_a.verb("get")),
            ("patch", in_a.verb("patch")),
            ("watch", in_a.verb("watch")),
        ];
        ensure!(
            got == [
                ("create", 1),
                ("list", 2),
                ("get", 2),
                ("patch", 1),
                ("watch", 1)
            ],
            "counted in {TEAM_A}: {got:?}"
        );
        ensure!(
            in_a.reads() == 4,
            "reads (gets and lists) in {TEAM_A}: {}",
            in_a.reads()
        );
        ensure!(
            in_a.total(|k| k.subresource == "status") == 1,
            "status writes: {:?}",
            in_a.iter().collect::<Vec<_>>()
        );
        ensure!(
            counted.in_workspace("*").verb("list") == 1,
            "wildcard lists: {:?}",
            counted.iter().collect::<Vec<_>>()
        );
        ensure!(
            counted.in_workspace(TEAM_B).total(|_| true) == 0,
            "nothing asked of {TEAM_B}"
        );

        // The same counts as Prometheus text, for the whole server only.
        let lists_in_a = server
            .requests()
            .in_workspace(TEAM_A)
            .total(|k| k.verb == "list" && k.resource == "deployments");
        let metrics = raw_request(&physical, Method::GET, "/metrics", None, Vec::new()).await?;
        ensure!(metrics.status == 200, "GET /metrics: {}", metrics.status);
        let text = String::from_utf8(metrics.body)?;
        let line = format!(
            "uplink_testbed_requests_total{{workspace=\"{TEAM_A}\",verb=\"list\",group=\"apps\",resource=\"deployments\",subresource=\"\",path=\"\"}} {lists_in_a}"
        );
        ensure!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        let in_workspace = raw_request(&a, Method::GET, "/metrics", None, Vec::new()).await?;
        ensure!(
            in_workspace.status == 404,
            "GET /clusters/{TEAM_A}/metrics: {}",
            in_workspace.status
        );
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------
// The stand-in Deployment controller.

/// The status counts and observed generation, once they all agree.
fn settled_replicas(d: &Deployment) -> Option<(i64, i32)> {
    let status = d.status.as_ref()?;
    let replicas = status.replicas?;
    let all_agree = [
        status.updated_replicas,
        status.ready_replicas,
        status.available_replicas,
    ]
    .iter()
    .all(|n| *n == Some(replicas));
    all_agree.then_some((status.observed_generation?, replicas))
}

fn condition_of(d: &Deployment, kind: &str) -> Option<(String, String, String)> {
    let c = d
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind)?;
    Some((
        c.status.clone(),
        c.reason.clone().unwrap_or_default(),
        c.last_transition_time
            .as_ref()
            .map(|t| t.0.to_string())
            .unwrap_or_default(),
    ))
}

/// Waits until `name`'s status reports generation `generation` rolled out
/// with `replicas` replicas.
async fn rolled_out(
    deployments: &Api<Deployment>,
    name: &str,
    generation: i64,
    replicas: i32,
) -> Result<Deployment> {
    let what = format!("{name} to report generation {generation} with {replicas} replicas");
    eventually(EVENT_TIMEOUT, &what, || async {
        let d = deployments.get(name).await?;
        Ok((settled_replicas(&d) == Some((generation, replicas))).then_some(d))
    })
    .await
}

#[tokio::test]
async fn the_deployment_controller_reports_rollouts_in_the_physical_cluster() -> Result<()> {
    let config = ApiServerConfig {
        workspaces: vec![TEAM_A.to_owned()],
        deployment_controller: true,
        ..ApiServerConfig::default()
    };
    with_server(config, |server| async move {
        let in_workspace: Api<Deployment> =
            Api::namespaced(client_for(&server, Some(TEAM_A)).await?, "default");
        let physical: Api<Deployment> =
            Api::namespaced(client_for(&server, None).await?, "default");
        in_workspace
            .create(&PostParams::default(), &web_deployment("web", 2)?)
            .await?;
        physical
            .create(&PostParams::default(), &web_deployment("web", 2)?)
            .await?;

        // Created: a complete rollout, written by the controller through /status.
        let created = rolled_out(&physical, "web", 1, 2).await?;
        let available = condition_of(&created, "Available").context("no Available")?;
        ensure!(
            (available.0.as_str(), available.1.as_str()) == ("True", "MinimumReplicasAvailable"),
            "Available: {available:?}"
        );
        let progressing = condition_of(&created, "Progressing").context("no Progressing")?;
        ensure!(
            (progressing.0.as_str(), progressing.1.as_str()) == ("True", "NewReplicaSetAvailable"),
            "Progressing: {progressing:?}"
        );
        let managers: Vec<(String, String, String)> = created
            .metadata
            .managed_fields
            .iter()
            .flatten()
            .map(|e| {
                (
                    e.manager.clone().unwrap_or_default(),
                    e.operation.clone().unwrap_or_default(),
                    e.subresource.clone().unwrap_or_default(),
                )
            })
            .collect();
        ensure!(
            managers.contains(&(
                "kube-controller-manager".into(),
                "Update".into(),
                "status".into()
            )),
            "managedFields: {managers:?}"
        );

        // Scaled through /scale: the counts follow, the conditions stay.
        physical
            .patch_scale(
                "web",
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": { "replicas": 5 } })),
            )
            .await?;
        let scaled = rolled_out(&physical, "web", 2, 5).await?;
        ensure!(
            condition_of(&scaled, "Available") == Some(available.clone()),
            "Available changed on a scale: {:?}",
            condition_of(&scaled, "Available")
        );

        // Paused: the status stays. The controller handles changes in
        // order, so once a later Deployment has its status, the pause has
        // been seen.
        physical
            .patch(
                "web",
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": { "paused": true, "replicas": 7 } })),
            )
            .await?;
        physical
            .create(&PostParams::default(), &web_deployment("later", 1)?)
            .await?;
        rolled_out(&physical, "later", 1, 1).await?;
        let paused = physical.get("web").await?;
        ensure!(
            settled_replicas(&paused) == Some((2, 5)),
            "a paused Deployment's status moved: {:?}",
            paused.status
        );
        physical
            .patch(
                "web",
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": { "paused": false } })),
            )
            .await?;
        let rolled = rolled_out(&physical, "web", 4, 7).await?;

        // Each scale recorded kube's ScalingReplicaSet Event, found as
        // `kubectl describe` finds them (core/v1, by involvedObject).
        let replica_set = rolled
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Progressing"))
            .and_then(|c| Some(c.message.as_deref()?.split('"').nth(1)?.to_owned()))
            .context("no ReplicaSet in Progressing")?;
        let events: Api<k8s_openapi::api::core::v1::Event> =
            Api::namespaced(client_for(&server, None).await?, "default");
        let mut recorded = events
            .list(
                &ListParams::default()
                    .fields("involvedObject.name=web,involvedObject.kind=Deployment"),
            )
            .await?
            .items;
        // Named <deployment>.<hex nanoseconds>: by name is by time.
        recorded.sort_by_key(|e| e.metadata.name.clone());
        let seen: Vec<(String, String, String, String)> = recorded
            .iter()
            .map(|e| {
                (
                    e.type_.clone().unwrap_or_default(),
                    e.reason.clone().unwrap_or_default(),
                    e.message.clone().unwrap_or_default(),
                    e.source
                        .as_ref()
                        .and_then(|s| s.component.clone())
                        .unwrap_or_default(),
                )
            })
            .collect();
        let scaled = |from, to| {
            (
                "Normal".to_owned(),
                "ScalingReplicaSet".to_owned(),
                format!("Scaled up replica set {replica_set} from {from} to {to}"),
                "deployment-controller".to_owned(),
            )
        };
        ensure!(
            seen == [scaled(0, 2), scaled(2, 5), scaled(5, 7)],
            "Events about web: {seen:?}"
        );
        ensure!(
            recorded
                .iter()
                .all(|e| e.involved_object.uid == rolled.metadata.uid),
            "the Events name web's uid"
        );

        // KCP runs no Deployment controller.
        let untouched = in_workspace.get("web").await?;
        ensure!(
            untouched
                .status
                .as_ref()
                .and_then(|s| s.observed_generation)
                .is_none()
                && untouched
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_none(),
            "the workspace's Deployment got a status: {:?}",
            untouched.status
        );
        Ok(())
    })
    .await
}
