//! What only the embedded test-bed server does: KCP-style workspaces, watch
//! history expiry on demand, fault injection, and surviving garbage.
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
    Api, Client, Discovery,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams},
};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use uplink_e2e::apiserver::{ApiServer, ApiServerConfig};
use uplink_tests::apiserver::{
    EVENT_TIMEOUT, TEST_TIMEOUT, client_for, client_from_kubeconfig_yaml, client_without_retries,
    event_type, eventually, expect_api_error, next_change, next_event, raw_request, start_server,
    stop_server, within,
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
