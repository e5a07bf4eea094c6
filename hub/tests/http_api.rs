//! The hub API over real HTTP on loopback: lists page and stream
//! (`limit`/`continue`), and requests are authenticated and authorized as
//! Kubernetes components do it (TokenReview and SubjectAccessReview at the
//! test bed's API server, RBAC ClusterRoles with nonResourceURLs), or by
//! client certificates (mutual TLS).

mod support;

use std::collections::BTreeSet;

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject};
use kube::api::{Api, ObjectMeta, PostParams};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use uplink_e2e::apiserver::{ApiServer, ApiServerConfig, StaticToken};
use uplink_hub::http::{DEFAULT_LIMIT, HttpAuthConfig, HttpAuthMode, MAX_LIMIT};
use uplink_hub::store::{Entry, KeyParts, ObjectKey, Update};

use support::{Pki, TestHub};

/// One answer: status, headers, body.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Result<Value> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "not JSON: {}",
                String::from_utf8_lossy(&self.body[..self.body.len().min(300)])
            )
        })
    }
}

/// `GET path` over `io` with an optional bearer token.
async fn get_over<S>(io: S, path: &str, token: Option<&str>) -> Result<Answer>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    // Drives the connection; ends with it (the request below is its only one).
    let driver = tokio::spawn(connection);
    let mut request = Request::get(path).header(header::HOST, "localhost");
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let response = sender
        .send_request(request.body(Empty::<Bytes>::new())?)
        .await;
    let answer = match response {
        Ok(response) => {
            let (parts, body) = response.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok(Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        }
        Err(error) => Err(error.into()),
    };
    driver.abort();
    answer
}

async fn get(hub: &TestHub, path: &str, token: Option<&str>) -> Result<Answer> {
    get_over(TcpStream::connect(hub.http).await?, path, token).await
}

fn key(i: usize) -> ObjectKey {
    ObjectKey::new(KeyParts {
        workspace: format!("root:team-{}", i % 7),
        group: "apps".into(),
        version: "v1".into(),
        resource: "deployments".into(),
        kind: "Deployment".into(),
        namespace: (!i.is_multiple_of(5)).then(|| format!("ns-{}", i % 13)),
        name: format!("app-{i:06}"),
    })
}

fn update(i: usize, seq: u64, pad: &str) -> Update {
    Update {
        key: key(i),
        seq,
        entry: Some(Entry {
            status: uplink_hub::status::Status::of(&json!({ "readyReplicas": i, "pad": pad })),
            generation: Some(1),
            observed_generation: Some(1),
            observed_at_ms: 1_700_000_000_000,
            seq,
            uid: format!("uid-{i}"),
        }),
    }
}

/// Every item of list `path`, following `metadata.continue` with `limit`.
async fn all_pages(hub: &TestHub, path: &str, limit: usize) -> Result<(Vec<Value>, usize)> {
    let mut items = Vec::new();
    let mut pages = 0;
    let mut token: Option<String> = None;
    let join = if path.contains('?') { '&' } else { '?' };
    loop {
        let url = match &token {
            Some(token) => format!("{path}{join}limit={limit}&continue={token}"),
            None => format!("{path}{join}limit={limit}"),
        };
        let answer = get(hub, &url, None).await?;
        ensure!(
            answer.status == StatusCode::OK,
            "GET {url}: {}",
            answer.status
        );
        let page = answer.json()?;
        let page_items = page["items"].as_array().context("no items")?;
        ensure!(
            page_items.len() <= limit,
            "{} items > limit {limit}",
            page_items.len()
        );
        items.extend(page_items.iter().cloned());
        pages += 1;
        match page["metadata"]["continue"].as_str() {
            Some(next) => token = Some(next.to_owned()),
            None => return Ok((items, pages)),
        }
        ensure!(pages < 1000, "more than 1000 pages");
    }
}

fn object_key(item: &Value) -> Result<ObjectKey> {
    let text = |f: &str| item[f].as_str().map(str::to_owned).context(f.to_owned());
    Ok(ObjectKey::new(KeyParts {
        workspace: text("workspace")?,
        group: text("group")?,
        version: text("version")?,
        resource: text("resource")?,
        kind: text("kind")?,
        namespace: item["namespace"].as_str().map(str::to_owned),
        name: text("name")?,
    }))
}

/// The finding: one anonymous `GET /api/v1/objects` built the whole fleet
/// into one body. Now a big store is served in pages (default 500, at most
/// 5,000), streamed, whose concatenation is exactly the store.
#[tokio::test]
async fn a_big_store_is_served_in_pages_that_add_up_to_it_exactly() -> Result<()> {
    const OBJECTS: usize = 12_345;
    let hub = TestHub::start_with(|_| {}).await?;
    let pad = "x".repeat(512);
    // Two clusters, overlapping: one object each from east, west or both.
    let east: Vec<Update> = (0..OBJECTS)
        .filter(|i| i % 3 != 1)
        .map(|i| update(i, i as u64 + 1, &pad))
        .collect();
    let west: Vec<Update> = (0..OBJECTS)
        .filter(|i| i % 3 != 2)
        .map(|i| update(i, i as u64 + 1, &pad))
        .collect();
    hub.store.apply("east", "s1", east, Vec::new())?;
    hub.store.apply("west", "s1", west, Vec::new())?;
    hub.health.session_started("east", 1, "s1", "test");
    hub.health.session_started("west", 2, "s1", "test");
    ensure!(hub.store.len() == OBJECTS);

    // Unpaged: the default limit and a continue token, streamed.
    let first = get(&hub, "/api/v1/objects", None).await?;
    ensure!(first.status == StatusCode::OK, "{}", first.status);
    ensure!(
        first.headers.get(header::CONTENT_LENGTH).is_none()
            && first
                .headers
                .get(header::TRANSFER_ENCODING)
                .is_some_and(|v| v == "chunked"),
        "a list is streamed (chunked), not built whole: {:?}",
        first.headers
    );
    // The finding was one unpaged GET building every object into one
    // body: now it is one page, whatever the store holds.
    ensure!(
        first.body.len() < (DEFAULT_LIMIT + 1) * 2048,
        "an unpaged list of {} bytes",
        first.body.len()
    );
    let list = first.json()?;
    ensure!(list["kind"] == "ObjectList");
    let items = list["items"].as_array().context("items")?;
    ensure!(
        items.len() == DEFAULT_LIMIT,
        "{} items unpaged",
        items.len()
    );
    ensure!(
        list["metadata"]["continue"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
    );
    ensure!(list["metadata"]["remainingItemCount"] == OBJECTS - DEFAULT_LIMIT);
    ensure!(
        items[0]["clusters"]["east"]["status"]["pad"] == pad.as_str(),
        "{:#}",
        items[0]
    );
    ensure!(items[0]["desired_status"].is_object());

    // Asking for more than the maximum gets the maximum.
    let big = get(&hub, "/api/v1/objects?limit=1000000", None)
        .await?
        .json()?;
    ensure!(big["items"].as_array().map(Vec::len) == Some(MAX_LIMIT));

    // Every page of 1,000: each object once, in key order, nothing missed.
    let (items, pages) = all_pages(&hub, "/api/v1/objects", 1000).await?;
    ensure!(pages == OBJECTS.div_ceil(1000), "{pages} pages");
    let keys: Vec<ObjectKey> = items.iter().map(object_key).collect::<Result<_>>()?;
    let mut expected: Vec<ObjectKey> = (0..OBJECTS).map(key).collect();
    expected.sort();
    ensure!(keys.len() == OBJECTS, "{} items over all pages", keys.len());
    ensure!(keys == expected, "the pages are not the store in key order");
    let distinct: BTreeSet<&ObjectKey> = keys.iter().collect();
    ensure!(distinct.len() == OBJECTS, "duplicates across pages");

    // Clusters page by name.
    let (clusters, pages) = all_pages(&hub, "/api/v1/clusters", 1).await?;
    let names: Vec<&str> = clusters.iter().filter_map(|c| c["name"].as_str()).collect();
    ensure!(
        names == ["east", "west"] && pages == 2,
        "{names:?} in {pages} pages"
    );
    ensure!(
        clusters[0]["objects"] == OBJECTS - OBJECTS / 3,
        "{:#}",
        clusters[0]
    );

    // One cluster's objects page the same way; one cluster by name.
    let (of_west, _) = all_pages(&hub, "/api/v1/objects?cluster=west", 1000).await?;
    ensure!(
        of_west.len() == OBJECTS - OBJECTS / 3,
        "{} of west's",
        of_west.len()
    );
    ensure!(
        of_west.iter().all(|o| o["clusters"]["west"].is_object()),
        "an object west does not report is in west's list"
    );
    let east = get(&hub, "/api/v1/clusters/east", None).await?.json()?;
    ensure!(
        east["name"] == "east" && east["objects"] == OBJECTS - OBJECTS / 3,
        "{east:#}"
    );
    ensure!(east["connected_since"].is_string(), "{east:#}");
    // One object, its path escaped as the page escapes it (all but `:`),
    // or as a client escaping everything would.
    for path in [
        "/api/v1/objects/root:team-1/apps/deployments/ns-1/app-000001",
        "/api/v1/objects/root%3Ateam-1/apps/deployments/ns%2D1/app%2D000001",
    ] {
        let one = get(&hub, path, None).await?;
        ensure!(one.status == StatusCode::OK, "{path}: {}", one.status);
        ensure!(one.json()?["name"] == "app-000001", "{path}");
    }
    let nobody = get(&hub, "/api/v1/clusters/nobody", None).await?;
    ensure!(nobody.status == StatusCode::NOT_FOUND, "{}", nobody.status);

    // A token of another list, or garbage, is a clear 400.
    let token = list["metadata"]["continue"].as_str().unwrap_or_default();
    for bad in [
        format!("/api/v1/clusters?continue={token}"),
        "/api/v1/objects?continue=bm9wZQ".to_owned(),
        "/api/v1/objects?limit=-3".to_owned(),
    ] {
        let answer = get(&hub, &bad, None).await?;
        ensure!(
            answer.status == StatusCode::BAD_REQUEST,
            "{bad}: {}",
            answer.status
        );
        let text = String::from_utf8_lossy(&answer.body);
        ensure!(
            text.contains("continue=") || text.contains("limit="),
            "{bad}: {text}"
        );
    }
    hub.stop().await
}

const ALICE: &str = "alice-token"; // group api-readers: may read /api/v1/*
const BOB: &str = "bob-token"; // authenticated, no permission
const DAVE: &str = "dave-token"; // may read one workspace's objects only

/// The test bed as the API server that reviews: static tokens, and RBAC
/// granting the hub API as an operator would (`deploy/hub`'s ClusterRole).
async fn reviewing_server(pki: &Pki) -> Result<(ApiServer, std::path::PathBuf)> {
    let token = |token: &str, user: &str, groups: &[&str]| StaticToken {
        token: token.into(),
        user: user.into(),
        uid: format!("uid-{user}"),
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
    };
    let server = ApiServer::start(ApiServerConfig {
        static_tokens: vec![
            token(ALICE, "alice", &["api-readers"]),
            token(BOB, "bob", &[]),
            token(DAVE, "dave", &[]),
        ],
        ..ApiServerConfig::default()
    })
    .await?;
    let kubeconfig = pki.path("auth.kubeconfig");
    server.write_kubeconfig(&kubeconfig, None)?;
    let client = kube::Client::try_from(
        kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&kubeconfig)?,
            &kube::config::KubeConfigOptions::default(),
        )
        .await?,
    )?;
    let grant = async |name: &str, urls: &[&str], subject: Subject| -> Result<()> {
        let role = ClusterRole {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            rules: Some(vec![PolicyRule {
                non_resource_urls: Some(urls.iter().map(|u| (*u).to_owned()).collect()),
                verbs: vec!["get".into()],
                ..PolicyRule::default()
            }]),
            ..ClusterRole::default()
        };
        Api::<ClusterRole>::all(client.clone())
            .create(&PostParams::default(), &role)
            .await?;
        let binding = ClusterRoleBinding {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".into(),
                kind: "ClusterRole".into(),
                name: name.into(),
            },
            subjects: Some(vec![subject]),
        };
        Api::<ClusterRoleBinding>::all(client.clone())
            .create(&PostParams::default(), &binding)
            .await?;
        Ok(())
    };
    let subject = |kind: &str, name: &str| Subject {
        api_group: Some("rbac.authorization.k8s.io".into()),
        kind: kind.into(),
        name: name.into(),
        namespace: None,
    };
    grant(
        "uplink-hub-api-reader",
        &["/uplink-hub/api/v1/*", "/uplink-hub/ui/*", "/uplink-hub/"],
        subject("Group", "api-readers"),
    )
    .await?;
    grant(
        "team-1-reader",
        &["/uplink-hub/api/v1/objects/root:team-1/*"],
        subject("User", "dave"),
    )
    .await?;
    grant(
        "cert-reader",
        &["/uplink-hub/api/v1/*"],
        subject("User", "carol"),
    )
    .await?;
    Ok((server, kubeconfig))
}

async fn delegated_hub(protect_metrics: bool, client_ca: bool) -> Result<(TestHub, ApiServer)> {
    let pki = Pki::new("reviewer files")?;
    let (server, kubeconfig) = reviewing_server(&pki).await?;
    let hub = TestHub::start_with(|config| {
        config.http_auth = HttpAuthConfig {
            mode: HttpAuthMode::Delegated,
            kubeconfig: Some(kubeconfig.clone()),
            client_ca: client_ca.then(|| config.client_ca.clone()),
            protect_metrics,
            ..HttpAuthConfig::default()
        };
    })
    .await?;
    // The kubeconfig was read at start; its directory may go.
    drop(pki);
    Ok((hub, server))
}

async fn status(hub: &TestHub, path: &str, token: Option<&str>) -> Result<StatusCode> {
    Ok(get(hub, path, token).await?.status)
}

/// With `--http-auth none`, a request addressed to a host name is refused
/// (a browser page of another site could reach a loopback hub through DNS
/// rebinding); probes and scrapes by name still work.
#[tokio::test]
async fn an_open_hub_answers_only_requests_addressed_to_it_by_address() -> Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let hub = TestHub::start_with(|_| {}).await?;
    let status_for = async |path: &str, host: &str| -> Result<String> {
        let mut tcp = TcpStream::connect(hub.http).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        tcp.write_all(request.as_bytes()).await?;
        let mut answer = String::new();
        tcp.read_to_string(&mut answer).await?;
        Ok(answer.lines().next().unwrap_or_default().to_owned())
    };
    let by_address = hub.http.to_string();
    for path in ["/api/v1/clusters", "/ui/"] {
        let ok = status_for(path, &by_address).await?;
        ensure!(ok.contains(" 200 "), "{path} by address: {ok}");
        let refused = status_for(path, "rebind.example:80").await?;
        ensure!(refused.contains(" 403 "), "{path} by name: {refused}");
    }
    let probe = status_for("/readyz", "uplink-hub.uplink-system.svc:9090").await?;
    ensure!(
        probe.contains(" 200 ") || probe.contains(" 503 "),
        "{probe}"
    );
    let metrics = hub.metrics.render();
    ensure!(
        metrics.contains(r#"uplink_hub_http_auth_total{result="host_refused"} 2"#),
        "no host_refused count"
    );
    hub.stop().await
}

/// 401 without or with a bad token, 403 known but not allowed, 200 allowed;
/// health open, `/metrics` open by default; reviews cached.
#[tokio::test]
async fn tokens_are_reviewed_and_requests_authorized_by_rbac() -> Result<()> {
    let (hub, server) = delegated_hub(false, false).await?;
    hub.store
        .apply("east", "s1", vec![update(1, 1, "")], Vec::new())?;

    let denied = get(&hub, "/api/v1/objects", None).await?;
    ensure!(
        denied.status == StatusCode::UNAUTHORIZED,
        "no token: {}",
        denied.status
    );
    ensure!(
        denied
            .headers
            .get(header::WWW_AUTHENTICATE)
            .is_some_and(|v| v == "Bearer")
    );
    ensure!(
        status(&hub, "/api/v1/objects", Some("not-a-token")).await? == StatusCode::UNAUTHORIZED
    );
    // bob is authenticated, so every cluster's system:discovery role lets
    // him get /api/*: the hub authorizes /uplink-hub/api/... instead.
    let forbidden = get(&hub, "/api/v1/objects", Some(BOB)).await?;
    ensure!(
        forbidden.status == StatusCode::FORBIDDEN,
        "bob: {}",
        forbidden.status
    );
    let text = String::from_utf8_lossy(&forbidden.body);
    ensure!(
        text.contains("\"bob\"")
            && text.contains("get the non-resource URL /uplink-hub/api/v1/objects"),
        "{text}"
    );

    let allowed = get(&hub, "/api/v1/objects", Some(ALICE)).await?;
    ensure!(
        allowed.status == StatusCode::OK,
        "alice: {} {}",
        allowed.status,
        String::from_utf8_lossy(&allowed.body)
    );
    ensure!(allowed.json()?["items"].as_array().map(Vec::len) == Some(1));
    for path in ["/api/v1/clusters", "/api/v1/conflicts", "/api/v1/capacity"] {
        ensure!(
            status(&hub, path, Some(ALICE)).await? == StatusCode::OK,
            "{path}"
        );
        ensure!(
            status(&hub, path, None).await? == StatusCode::UNAUTHORIZED,
            "{path}"
        );
    }

    // The operator's page is behind the same checks as the API it reads.
    let page = get(&hub, "/ui/", Some(ALICE)).await?;
    ensure!(
        page.status == StatusCode::OK,
        "alice, the page: {}",
        page.status
    );
    ensure!(
        page.headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|t| t.as_bytes().starts_with(b"text/html"))
            && String::from_utf8_lossy(&page.body).contains("<main id=\"view\""),
        "not the page: {:?}",
        page.headers
    );
    ensure!(status(&hub, "/", Some(ALICE)).await? == StatusCode::FOUND);
    ensure!(status(&hub, "/ui/app.js", None).await? == StatusCode::UNAUTHORIZED);
    ensure!(status(&hub, "/ui/", Some(BOB)).await? == StatusCode::FORBIDDEN);

    // The path is what RBAC sees: dave may read team-1's objects only.
    let team_1 = format!(
        "/api/v1/objects/root:team-1/apps/deployments/ns-1/{}",
        key(1).name
    );
    ensure!(status(&hub, &team_1, Some(DAVE)).await? == StatusCode::OK);
    let team_2 = "/api/v1/objects/root:team-2/apps/deployments/ns-2/app-000002";
    ensure!(status(&hub, team_2, Some(DAVE)).await? == StatusCode::FORBIDDEN);
    ensure!(status(&hub, "/api/v1/objects", Some(DAVE)).await? == StatusCode::FORBIDDEN);

    // Open paths.
    for path in ["/healthz", "/readyz", "/metrics"] {
        ensure!(
            status(&hub, path, None).await? == StatusCode::OK,
            "{path} without a token"
        );
    }

    // Cached: more requests by alice cost the API server no more reviews.
    let reviews = |server: &ApiServer| {
        server
            .requests()
            .total(|k| k.resource == "tokenreviews" || k.resource == "subjectaccessreviews")
    };
    let before = reviews(&server);
    for _ in 0..5 {
        ensure!(status(&hub, "/api/v1/objects", Some(ALICE)).await? == StatusCode::OK);
    }
    ensure!(
        reviews(&server) == before,
        "{} reviews for cached answers",
        reviews(&server) - before
    );

    let metrics = hub.metrics.render();
    for result in ["allowed", "unauthenticated", "forbidden"] {
        let line = format!("uplink_hub_http_auth_total{{result=\"{result}\"}}");
        ensure!(metrics.contains(&line), "{line} missing");
    }
    hub.stop().await?;
    server.shutdown().await;
    Ok(())
}

/// `--http-metrics-auth`: `/metrics` needs a token and permission too;
/// health stays open.
#[tokio::test]
async fn metrics_can_be_protected() -> Result<()> {
    let (hub, server) = delegated_hub(true, false).await?;
    ensure!(status(&hub, "/metrics", None).await? == StatusCode::UNAUTHORIZED);
    // alice's role covers /api/v1/* only.
    ensure!(status(&hub, "/metrics", Some(ALICE)).await? == StatusCode::FORBIDDEN);
    ensure!(status(&hub, "/metrics", Some(server.token())).await? == StatusCode::OK);
    ensure!(status(&hub, "/healthz", None).await? == StatusCode::OK);
    ensure!(status(&hub, "/readyz", None).await? == StatusCode::OK);
    hub.stop().await?;
    server.shutdown().await;
    Ok(())
}

/// `--http-auth=client-cert`: a certificate signed by `--http-client-ca` is
/// enough; none is 401; one of another CA is refused in the handshake.
#[tokio::test]
async fn client_certificates_alone_authenticate() -> Result<()> {
    let hub = TestHub::start_with(|config| {
        config.http_auth = HttpAuthConfig {
            mode: HttpAuthMode::ClientCert,
            client_ca: Some(config.client_ca.clone()),
            ..HttpAuthConfig::default()
        };
    })
    .await?;
    let connector = hub.connector();
    let identity = hub.pki.client("carol")?;
    let tls = connector.tls_to(hub.http, Some(&identity)).await?;
    let answer = get_over(tls, "/api/v1/clusters", None).await?;
    ensure!(
        answer.status == StatusCode::OK,
        "with a certificate: {}",
        answer.status
    );

    let tls = connector.tls_to(hub.http, None).await?;
    ensure!(get_over(tls, "/api/v1/clusters", None).await?.status == StatusCode::UNAUTHORIZED);
    let tls = connector.tls_to(hub.http, None).await?;
    ensure!(get_over(tls, "/healthz", None).await?.status == StatusCode::OK);

    let stranger = Pki::new("another CA")?.client("mallory")?;
    let refused = match connector.tls_to(hub.http, Some(&stranger)).await {
        Err(_) => true,
        Ok(tls) => get_over(tls, "/api/v1/clusters", None).await.is_err(),
    };
    ensure!(refused, "a certificate of another CA was accepted");
    // Plain HTTP to the HTTPS listener gets no answer.
    if let Ok(answer) = get(&hub, "/api/v1/clusters", None).await {
        bail!("plain HTTP answered {}", answer.status);
    }
    hub.stop().await
}

/// Delegated with `--http-client-ca`: a certificate's CN is the user RBAC
/// authorizes (carol may, mallory of the same CA may not); tokens still work.
#[tokio::test]
async fn client_certificates_are_authorized_like_tokens() -> Result<()> {
    let (hub, server) = delegated_hub(false, true).await?;
    let connector = hub.connector();
    let carol = hub.pki.client("carol")?;
    let tls = connector.tls_to(hub.http, Some(&carol)).await?;
    ensure!(get_over(tls, "/api/v1/objects", None).await?.status == StatusCode::OK);
    let mallory = hub.pki.client("mallory")?;
    let tls = connector.tls_to(hub.http, Some(&mallory)).await?;
    ensure!(get_over(tls, "/api/v1/objects", None).await?.status == StatusCode::FORBIDDEN);
    let tls = connector.tls_to(hub.http, None).await?;
    ensure!(get_over(tls, "/api/v1/objects", Some(ALICE)).await?.status == StatusCode::OK);
    let tls = connector.tls_to(hub.http, None).await?;
    ensure!(get_over(tls, "/api/v1/objects", None).await?.status == StatusCode::UNAUTHORIZED);
    hub.stop().await?;
    server.shutdown().await;
    Ok(())
}

/// Without an API server to ask and no `--auth-kubeconfig`, a delegated hub
/// refuses to start and says what to do.
#[tokio::test]
async fn delegated_auth_without_an_api_server_is_a_clear_start_error() -> Result<()> {
    if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
        // Inside a pod the in-cluster configuration exists: nothing to show.
        return Ok(());
    }
    let Err(error) =
        TestHub::start_with(|config| config.http_auth = HttpAuthConfig::default()).await
    else {
        bail!("a delegated hub started without an API server to review requests");
    };
    let text = format!("{error:#}");
    ensure!(
        text.contains("--auth-kubeconfig") && text.contains("--http-auth=none"),
        "{text}"
    );
    Ok(())
}

/// A client holding connections open cannot take more than
/// `--http-max-connections`: past it a new connection is closed
/// unanswered and counted; once one closes, requests are served again.
#[tokio::test]
async fn open_connections_are_capped() -> Result<()> {
    use tokio::io::AsyncReadExt as _;
    let hub = TestHub::start_with(|c| {
        c.http_auth.mode = HttpAuthMode::None;
        c.http_max_connections = 4;
    })
    .await?;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(hub.http).await?);
    }
    support::eventually("4 connections open", || {
        hub.metrics.http_connections.get() == 4
    })
    .await?;
    let mut fifth = TcpStream::connect(hub.http).await?;
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), fifth.read(&mut byte))
        .await
        .context("the fifth connection was neither closed nor answered")?;
    ensure!(
        matches!(read, Ok(0) | Err(_)),
        "the fifth connection got {read:?}"
    );
    ensure!(hub.metrics.http_connections_refused.get() == 1);

    held.pop();
    support::eventually("a connection to close", || {
        hub.metrics.http_connections.get() == 3
    })
    .await?;
    let answer = get(&hub, "/api/v1/clusters", None).await?;
    ensure!(answer.status == StatusCode::OK, "{}", answer.status);
    ensure!(hub.metrics.http_connections_refused.get() == 1);
    drop(held);
    hub.stop().await
}
