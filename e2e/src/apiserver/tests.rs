//! End-to-end checks of the server through the unmodified `kube` client.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use kube::{Client, Config};
use serde_json::json;

use super::{ApiServer, ApiServerConfig};

async fn start(config: ApiServerConfig) -> ApiServer {
    let _ = rustls::crypto::ring::default_provider().install_default();
    ApiServer::start(config)
        .await
        .unwrap_or_else(|e| panic!("start: {e}"))
}

async fn client(server: &ApiServer, workspace: Option<&str>) -> Client {
    let kubeconfig =
        Kubeconfig::from_yaml(&server.kubeconfig_yaml(workspace)).unwrap_or_else(|e| panic!("{e}"));
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    Client::try_from(config).unwrap_or_else(|e| panic!("{e}"))
}

fn deployment(name: &str) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c", "image": "x"}]}}}
    }))
    .unwrap_or_else(|e| panic!("{e}"))
}

fn api_error(e: kube::Error) -> (u16, String, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason, s.message),
        other => panic!("expected an API error, got {other}"),
    }
}

#[tokio::test]
async fn crud_conflicts_and_status() {
    let server = start(ApiServerConfig::default()).await;
    let client = client(&server, None).await;
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let created = deploys
        .create(&PostParams::default(), &deployment("web"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(created.metadata.generation, Some(1));
    let err = deploys
        .create(&PostParams::default(), &deployment("web"))
        .await
        .err()
        .map(api_error);
    assert_eq!(
        err.map(|e| (e.0, e.1)),
        Some((409, "AlreadyExists".to_string()))
    );

    // Status writes do not bump generation; main writes keep status.
    let status = json!({"status": {"readyReplicas": 2}});
    let patched = deploys
        .patch_status("web", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(patched.metadata.generation, Some(1));
    assert_eq!(
        patched.status.as_ref().and_then(|s| s.ready_replicas),
        Some(2)
    );
    let spec = json!({"spec": {"replicas": 3}, "status": {"readyReplicas": 0}});
    let patched = deploys
        .patch("web", &PatchParams::default(), &Patch::Merge(&spec))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(patched.metadata.generation, Some(2));
    assert_eq!(
        patched.status.as_ref().and_then(|s| s.ready_replicas),
        Some(2)
    );

    // A stale resourceVersion conflicts with kube's exact message.
    let mut stale = created.clone();
    stale.metadata.managed_fields = None;
    let err = deploys
        .replace("web", &PostParams::default(), &stale)
        .await
        .err()
        .map(api_error);
    assert_eq!(
        err,
        Some((409, "Conflict".into(), "Operation cannot be fulfilled on deployments.apps \"web\": the object has been modified; please apply your changes to the latest version and try again".into()))
    );

    // So does a stale one in an apply configuration (optimistic locking
    // with server-side apply); a current one applies.
    let current = deploys.get("web").await.unwrap_or_else(|e| panic!("{e}"));
    let applied = |rv: &str| {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "web", "resourceVersion": rv},
               "spec": {"replicas": 4}})
    };
    let err = deploys
        .patch(
            "web",
            &PatchParams::apply("t"),
            &Patch::Apply(&applied("1")),
        )
        .await
        .err()
        .map(api_error);
    assert_eq!(err.map(|e| (e.0, e.1)), Some((409, "Conflict".into())));
    let rv = current
        .metadata
        .resource_version
        .clone()
        .unwrap_or_default();
    let ok = deploys
        .patch(
            "web",
            &PatchParams::apply("t").force(),
            &Patch::Apply(&applied(&rv)),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ok.spec.and_then(|s| s.replicas), Some(4));

    let err = deploys.get("nope").await.err().map(api_error);
    assert_eq!(
        err.map(|e| (e.0, e.2)),
        Some((404, "deployments.apps \"nope\" not found".to_string()))
    );
    let in_missing_ns: Api<ConfigMap> = Api::namespaced(client.clone(), "missing");
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "c"}})).unwrap_or_default();
    let err = in_missing_ns
        .create(&PostParams::default(), &cm)
        .await
        .err()
        .map(api_error);
    assert_eq!(
        err.map(|e| (e.0, e.2)),
        Some((404, "namespaces \"missing\" not found".to_string()))
    );

    deploys
        .delete("web", &DeleteParams::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        deploys
            .get_opt("web")
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .is_none()
    );
    server.shutdown().await;
}

#[tokio::test]
async fn watches_resume_and_expire() {
    let server = start(ApiServerConfig {
        watch_history: 3,
        ..ApiServerConfig::default()
    })
    .await;
    let client = client(&server, None).await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let first = cms
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "a"}, "data": {"n": "0"}}))
                .unwrap_or_default(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let first_rv = first.metadata.resource_version.clone().unwrap_or_default();
    for n in 1..6 {
        let p = json!({"data": {"n": n.to_string()}});
        cms.patch("a", &PatchParams::default(), &Patch::Merge(&p))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let mut stream = cms
        .watch(&WatchParams::default(), &first_rv)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .boxed();
    match stream.try_next().await {
        Ok(Some(WatchEvent::Error(e))) => {
            assert_eq!((e.code, e.reason.as_str()), (410, "Expired"));
            assert!(e.message.starts_with("too old resource version"));
        }
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
    // The watcher re-lists after 410 and sees the latest state.
    let mut w = watcher(cms.clone(), watcher::Config::default()).boxed();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut saw = false;
    while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, w.try_next())
        .await
        .unwrap_or(Ok(None))
    {
        if let watcher::Event::InitApply(cm) = ev {
            saw = cm
                .data
                .as_ref()
                .and_then(|d| d.get("n"))
                .map(String::as_str)
                == Some("5");
            break;
        }
    }
    assert!(saw);
    server.shutdown().await;
}

#[tokio::test]
async fn streaming_list_watcher_sees_initial_state_and_changes() {
    let server = start(ApiServerConfig::default()).await;
    let client = client(&server, Some("root:org:team-a")).await;
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), "default");
    deploys
        .create(&PostParams::default(), &deployment("one"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let config = watcher::Config::default()
        .streaming_lists()
        .labels("app=one");
    let mut w = watcher(deploys.clone(), config).boxed();
    let mut init_done = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while let Ok(Ok(Some(ev))) = tokio::time::timeout_at(deadline, w.try_next()).await {
        match ev {
            watcher::Event::InitDone => {
                init_done = true;
                let p = json!({"status": {"replicas": 7}});
                deploys
                    .patch_status("one", &PatchParams::default(), &Patch::Merge(&p))
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
            }
            watcher::Event::Apply(d) if init_done => {
                assert_eq!(d.status.and_then(|s| s.replicas), Some(7));
                break;
            }
            _ => {}
        }
    }
    assert!(init_done);
    // Another workspace and the cluster itself do not see it.
    let other: Api<Deployment> = Api::namespaced(
        super::tests::client(&server, Some("root:org:team-b")).await,
        "default",
    );
    assert!(
        other
            .list(&ListParams::default())
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .items
            .is_empty()
    );
    server.shutdown().await;
}

#[tokio::test]
async fn server_side_apply_and_injected_faults() {
    let server = start(ApiServerConfig::default()).await;
    let client = client(&server, None).await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "applied"}});
    let applied = namespaces
        .patch("applied", &PatchParams::apply("test"), &Patch::Apply(&ns))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        applied.status.and_then(|s| s.phase).as_deref(),
        Some("Active")
    );
    let missing_manager = namespaces
        .patch("applied", &PatchParams::default(), &Patch::Apply(&ns))
        .await
        .err()
        .map(api_error);
    assert_eq!(missing_manager.map(|e| e.0), Some(422));

    // kube's default client retries 429/503 (up to 15 times, server-aware),
    // so a permanent 429 is observed with retries switched off.
    let mut config = Config::from_custom_kubeconfig(
        Kubeconfig::from_yaml(&server.kubeconfig_yaml(None)).unwrap_or_else(|e| panic!("{e}")),
        &KubeConfigOptions::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    config.default_retry = false;
    let no_retry: Api<Namespace> =
        Api::all(Client::try_from(config).unwrap_or_else(|e| panic!("{e}")));
    server.faults().set_error_rate(1.0, 429);
    let err = no_retry.get("applied").await.err().map(api_error);
    assert_eq!(
        err.map(|e| (e.0, e.1)),
        Some((429, "TooManyRequests".to_string()))
    );
    server.faults().set_error_rate(1.0, 500);
    let err = namespaces.get("applied").await.err().map(api_error);
    assert_eq!(
        err.map(|e| (e.0, e.1)),
        Some((500, "InternalError".to_string()))
    );
    server.faults().clear();
    assert!(namespaces.get("applied").await.is_ok());
    server.shutdown().await;
}

#[tokio::test]
async fn custom_resources_follow_their_definition() {
    let server = start(ApiServerConfig::default()).await;
    let client = client(&server, None).await;
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> = Api::all(client.clone());
    let crd = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
                 "names": {"plural": "widgets", "kind": "Widget"},
                 "versions": [{"name": "v1", "served": true, "storage": true, "subresources": {"status": {}},
                               "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    let created = crds
        .create(&PostParams::default(), &crd)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let established = created.status.and_then(|s| s.conditions).is_some_and(|c| {
        c.iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
    });
    assert!(established);
    let discovery = kube::Discovery::new(client.clone())
        .run()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (ar, caps) = discovery
        .groups()
        .flat_map(|g| g.recommended_resources())
        .find(|(ar, _)| ar.plural == "widgets")
        .unwrap_or_else(|| panic!("widgets not discovered"));
    assert!(caps.subresources.iter().any(|(s, _)| s.plural == "status"));
    let widgets: Api<kube::api::DynamicObject> =
        Api::namespaced_with(client.clone(), "default", &ar);
    let w = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"size": 1}, "status": {"dropped": true}});
    let made = widgets
        .create(
            &PostParams::default(),
            &serde_json::from_value(w).unwrap_or_else(|e| panic!("{e}")),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        made.data.get("status").is_none(),
        "status is dropped on create when it is a subresource"
    );
    crds.delete("widgets.example.com", &DeleteParams::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let gone = widgets
        .list(&ListParams::default())
        .await
        .err()
        .map(api_error);
    assert_eq!(gone.map(|e| e.0), Some(404));
    server.shutdown().await;
}

/// Not a benchmark (those live elsewhere): a smoke check that writes keep
/// flowing while many watches are open. Run with `--ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "load smoke check; prints throughput"]
async fn load_smoke() {
    let server = start(ApiServerConfig::default()).await;
    let client = client(&server, None).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let mut watchers = Vec::new();
    for _ in 0..30 {
        let cms = cms.clone();
        watchers.push(tokio::spawn(async move {
            let mut n = 0u64;
            let mut s = cms
                .watch(&WatchParams::default(), "0")
                .await
                .unwrap_or_else(|e| panic!("{e}"))
                .boxed();
            while let Ok(Some(_)) = s.try_next().await {
                n += 1;
                if n == 4000 {
                    break;
                }
            }
            n
        }));
    }
    let started = std::time::Instant::now();
    let mut writers = Vec::new();
    for w in 0..8 {
        let cms = cms.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..500 {
                let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": format!("cm-{w}-{i}")}, "data": {"i": i.to_string()}}))
                    .unwrap_or_default();
                cms.create(&PostParams::default(), &cm).await.unwrap_or_else(|e| panic!("{e}"));
            }
        }));
    }
    for w in writers {
        let _ = w.await;
    }
    let elapsed = started.elapsed();
    eprintln!(
        "4000 creates in {elapsed:?} ({:.0}/s)",
        4000.0 / elapsed.as_secs_f64()
    );
    for w in watchers {
        let n = tokio::time::timeout(Duration::from_secs(30), w)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(0);
        assert_eq!(n, 4000);
    }
    eprintln!("all watchers saw every event after {:?}", started.elapsed());
    server.shutdown().await;
}

/// Sends a raw request through an authenticated kube client and returns
/// status, headers and body.
async fn raw(
    client: &Client,
    method: &str,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> (u16, http::HeaderMap, serde_json::Value) {
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", content_type)
        .body(body)
        .unwrap_or_else(|e| panic!("{e}"));
    let res = client
        .send(req.map(kube::client::Body::from))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let bytes = http_body_util::BodyExt::collect(res.into_body())
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    (
        status,
        headers,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test]
async fn bad_requests_are_answered_like_kube() {
    let server = start(ApiServerConfig {
        max_body_bytes: 1024,
        ..ApiServerConfig::default()
    })
    .await;
    let client = client(&server, None).await;
    let cms = "/api/v1/namespaces/default/configmaps";
    let cm = |name: &str| {
        serde_json::to_vec(
            &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}}),
        )
        .unwrap_or_default()
    };

    let (code, _, body) = raw(
        &client,
        "POST",
        cms,
        "application/json",
        b"{not json".to_vec(),
    )
    .await;
    assert_eq!((code, body["reason"].as_str()), (400, Some("BadRequest")));
    let (code, _, body) = raw(&client, "POST", cms, "text/plain", cm("a")).await;
    assert_eq!(
        (code, body["reason"].as_str()),
        (415, Some("UnsupportedMediaType"))
    );
    let (code, _, body) = raw(&client, "POST", cms, "application/json", vec![b' '; 2048]).await;
    assert_eq!(
        (code, body["reason"].as_str()),
        (413, Some("RequestEntityTooLarge"))
    );
    let wrong_version = serde_json::to_vec(
        &json!({"apiVersion": "v2", "kind": "ConfigMap", "metadata": {"name": "a"}}),
    )
    .unwrap_or_default();
    let (code, _, body) = raw(&client, "POST", cms, "application/json", wrong_version).await;
    assert_eq!(code, 400);
    assert_eq!(
        body["message"],
        "the API version in the data (v2) does not match the expected API version (v1)"
    );
    let no_name =
        serde_json::to_vec(&json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}}))
            .unwrap_or_default();
    let (code, _, body) = raw(&client, "POST", cms, "application/json", no_name).await;
    assert_eq!((code, body["reason"].as_str()), (422, Some("Invalid")));

    let (code, _, _) = raw(&client, "POST", cms, "application/json", cm("a")).await;
    assert_eq!(code, 201);
    let (code, _, body) = raw(
        &client,
        "PUT",
        &format!("{cms}/b"),
        "application/json",
        cm("a"),
    )
    .await;
    assert_eq!(
        (code, body["message"].as_str()),
        (
            400,
            Some("the name of the object (a) does not match the name on the URL (b)")
        )
    );
    let (code, _, body) = raw(
        &client,
        "PATCH",
        &format!("{cms}/a"),
        "application/json",
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(
        (code, body["reason"].as_str()),
        (415, Some("UnsupportedMediaType"))
    );
    let stale = br#"{"metadata":{"resourceVersion":"1"}}"#.to_vec();
    let (code, _, body) = raw(
        &client,
        "PATCH",
        &format!("{cms}/a"),
        "application/merge-patch+json",
        stale,
    )
    .await;
    assert_eq!((code, body["reason"].as_str()), (409, Some("Conflict")));
    let (code, _, body) = raw(
        &client,
        "GET",
        &format!("{cms}?fieldSelector=spec.x%3Dy"),
        "",
        Vec::new(),
    )
    .await;
    // ConfigMaps have kube's default field label conversion, and its words.
    assert_eq!(
        (code, body["message"].as_str()),
        (
            400,
            Some(
                "\"spec.x\" is not a known field selector: only \"metadata.name\", \"metadata.namespace\""
            )
        )
    );
    let (code, _, body) = raw(
        &client,
        "GET",
        "/apis/nope.example.com/v1/things",
        "",
        Vec::new(),
    )
    .await;
    assert_eq!(
        (code, body["message"].as_str()),
        (
            404,
            Some("the server could not find the requested resource")
        )
    );
    let (code, _, _) = raw(
        &client,
        "POST",
        &format!("{cms}/a"),
        "application/json",
        cm("a"),
    )
    .await;
    assert_eq!(code, 405);

    // Dry runs change nothing and use no resourceVersion.
    let (_, _, before) = raw(&client, "GET", cms, "", Vec::new()).await;
    let (code, _, _) = raw(
        &client,
        "POST",
        &format!("{cms}?dryRun=All"),
        "application/json",
        cm("dry"),
    )
    .await;
    assert_eq!(code, 201);
    let (code, _, _) = raw(
        &client,
        "DELETE",
        &format!("{cms}/a?dryRun=All"),
        "application/json",
        Vec::new(),
    )
    .await;
    assert_eq!(code, 200);
    let (_, _, after) = raw(&client, "GET", cms, "", Vec::new()).await;
    assert_eq!(
        before["metadata"]["resourceVersion"],
        after["metadata"]["resourceVersion"]
    );
    assert_eq!(after["items"].as_array().map(Vec::len), Some(1));

    // Without the token: 401.
    let anonymous = Client::try_from({
        let mut c = Config::from_custom_kubeconfig(
            Kubeconfig::from_yaml(&server.kubeconfig_yaml(None)).unwrap_or_else(|e| panic!("{e}")),
            &KubeConfigOptions::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        c.auth_info.token = None;
        c
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let (code, _, body) = raw(&anonymous, "GET", cms, "", Vec::new()).await;
    assert_eq!((code, body["reason"].as_str()), (401, Some("Unauthorized")));
    server.shutdown().await;
}

#[tokio::test]
async fn bookmarks_faults_and_shutdown_end_watches() {
    let server = start(ApiServerConfig {
        bookmark_interval: Duration::from_millis(50),
        ..ApiServerConfig::default()
    })
    .await;
    let client = client(&server, None).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let mut w = cms
        .watch(&WatchParams::default(), "0")
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .boxed();
    let bookmark = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(Some(ev)) = w.try_next().await {
            if let WatchEvent::Bookmark(b) = ev {
                return Some(b.metadata.resource_version);
            }
        }
        None
    })
    .await
    .ok()
    .flatten();
    assert!(bookmark.is_some_and(|rv| !rv.is_empty()));

    server.faults().set_close_watches_after(Some(2));
    let mut short = cms
        .watch(&WatchParams::default(), "0")
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .boxed();
    for i in 0..3 {
        let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": format!("c{i}")}}))
            .unwrap_or_default();
        cms.create(&PostParams::default(), &cm)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let mut seen = 0;
    while let Ok(Ok(Some(_))) = tokio::time::timeout(Duration::from_secs(5), short.try_next()).await
    {
        seen += 1;
    }
    assert_eq!(seen, 2, "the watch ends cleanly after 2 events");
    server.faults().clear();

    let mut open = cms
        .watch(&WatchParams::default().timeout(290), "0")
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .boxed();
    let mut n = 0;
    while n < 3 {
        if let Ok(Some(_)) = open.try_next().await {
            n += 1;
        }
    }
    server.shutdown().await;
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(Some(_)) = open.try_next().await {}
    })
    .await;
    assert!(ended.is_ok(), "shutdown ends open watches");
}

/// Static tokens (kube-apiserver's `--token-auth-file`): TokenReview knows
/// their users and groups, RBAC authorizes them, SubjectAccessReviews of
/// non-resource URLs follow ClusterRoles bound to their groups.
#[tokio::test]
async fn static_tokens_review_and_non_resource_access() {
    use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
    use k8s_openapi::api::authorization::v1::{
        NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
    };
    use k8s_openapi::api::rbac::v1::ClusterRole;
    use k8s_openapi::api::rbac::v1::ClusterRoleBinding;

    let server = start(ApiServerConfig {
        static_tokens: vec![super::StaticToken {
            token: "reader-secret".into(),
            user: "reader".into(),
            uid: "42".into(),
            groups: vec!["readers".into()],
        }],
        ..ApiServerConfig::default()
    })
    .await;
    let admin = client(&server, None).await;
    fn ok<T>(e: kube::Error) -> T {
        panic!("{e}")
    }

    let review = |token: &str| TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.into()),
            audiences: None,
        },
        ..TokenReview::default()
    };
    let reviews: Api<TokenReview> = Api::all(admin.clone());
    let known = reviews
        .create(&PostParams::default(), &review("reader-secret"))
        .await
        .unwrap_or_else(ok)
        .status
        .unwrap_or_default();
    assert_eq!(known.authenticated, Some(true));
    let user = known.user.unwrap_or_default();
    assert_eq!(user.username.as_deref(), Some("reader"));
    assert_eq!(user.uid.as_deref(), Some("42"));
    assert_eq!(
        user.groups,
        Some(vec![
            "readers".to_owned(),
            "system:authenticated".to_owned()
        ])
    );
    let unknown = reviews
        .create(&PostParams::default(), &review("guess"))
        .await
        .unwrap_or_else(ok)
        .status
        .unwrap_or_default();
    assert_ne!(unknown.authenticated, Some(true));

    let role: ClusterRole = serde_json::from_value(json!({
        "metadata": {"name": "hub-reader"},
        "rules": [{"nonResourceURLs": ["/hub/api/*"], "verbs": ["get"]}]
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    Api::<ClusterRole>::all(admin.clone())
        .create(&PostParams::default(), &role)
        .await
        .unwrap_or_else(ok);
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "hub-reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "hub-reader"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "readers"}]
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    Api::<ClusterRoleBinding>::all(admin.clone())
        .create(&PostParams::default(), &binding)
        .await
        .unwrap_or_else(ok);
    let access = |groups: &[&str], verb: &str, path: &str| SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some("reader".into()),
            groups: Some(groups.iter().map(|g| (*g).to_owned()).collect()),
            non_resource_attributes: Some(NonResourceAttributes {
                path: Some(path.into()),
                verb: Some(verb.into()),
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    };
    let sars: Api<SubjectAccessReview> = Api::all(admin.clone());
    for (groups, verb, path, allowed) in [
        (&["readers"][..], "get", "/hub/api/objects", true),
        (&["readers"][..], "delete", "/hub/api/objects", false),
        (&["readers"][..], "get", "/hub/metrics", false),
        (&[][..], "get", "/hub/api/objects", false),
        // Every authenticated user may get /api/* (system:discovery).
        (
            &["system:authenticated"][..],
            "get",
            "/api/v1/objects",
            true,
        ),
    ] {
        let answer = sars
            .create(&PostParams::default(), &access(groups, verb, path))
            .await
            .unwrap_or_else(ok)
            .status
            .unwrap_or_default();
        assert_eq!(answer.allowed, allowed, "{groups:?} {verb} {path}");
    }
}

/// A client of `workspace` that sends `User-Agent: <user_agent>`.
async fn client_as(server: &ApiServer, workspace: Option<&str>, user_agent: &str) -> Client {
    let kubeconfig =
        Kubeconfig::from_yaml(&server.kubeconfig_yaml(workspace)).unwrap_or_else(|e| panic!("{e}"));
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let value = http::HeaderValue::from_str(user_agent).unwrap_or_else(|e| panic!("{e}"));
    config.headers.push((http::header::USER_AGENT, value));
    Client::try_from(config).unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn status_writes_are_recorded_with_their_writer() {
    let server = start(ApiServerConfig {
        workspaces: vec!["root:a".into()],
        ..ApiServerConfig::default()
    })
    .await;
    let hub = client_as(&server, Some("root:a"), "uplink-hub/1.2.3 (hub-0)").await;
    let deploys: Api<Deployment> = Api::namespaced(hub, "default");
    let created = deploys
        .create(&PostParams::default(), &deployment("web"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let status = json!({"status": {"readyReplicas": 1}});
    deploys
        .patch_status("web", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // Not recorded: a dry run, a write of the main resource, a refused write.
    let dry = PatchParams {
        dry_run: true,
        ..PatchParams::default()
    };
    deploys
        .patch_status("web", &dry, &Patch::Merge(&status))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    deploys
        .patch("web", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let missing = deploys
        .patch_status("absent", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .err()
        .map(api_error);
    assert_eq!(missing.map(|e| e.0), Some(404));
    let stale = deploys
        .replace_status("web", &PostParams::default(), &created)
        .await
        .err()
        .map(api_error);
    assert_eq!(stale.map(|e| e.0), Some(409));
    // A PUT of the current object is recorded as an update.
    let mut current = deploys.get("web").await.unwrap_or_else(|e| panic!("{e}"));
    current.metadata.managed_fields = None;
    let replaced = deploys
        .replace_status("web", &PostParams::default(), &current)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // The physical cluster, a cluster-scoped object, no User-Agent.
    let admin = client(&server, None).await;
    let namespaces: Api<Namespace> = Api::all(admin);
    namespaces
        .patch_status(
            "default",
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": {"phase": "Active"}})),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let writes = server.status_writes();
    let seen: Vec<_> = writes
        .iter()
        .map(|w| {
            (
                w.workspace.as_str(),
                w.namespace.as_str(),
                w.group.as_str(),
                w.resource.as_str(),
                w.name.as_str(),
                w.verb.as_str(),
                w.user_agent.as_str(),
            )
        })
        .collect();
    let hub_ua = "uplink-hub/1.2.3 (hub-0)";
    assert_eq!(
        seen,
        [
            (
                "root:a",
                "default",
                "apps",
                "deployments",
                "web",
                "patch",
                hub_ua
            ),
            (
                "root:a",
                "default",
                "apps",
                "deployments",
                "web",
                "update",
                hub_ua
            ),
            ("", "", "", "namespaces", "default", "patch", ""),
        ]
    );
    assert_eq!(writes.iter().map(|w| w.seq).collect::<Vec<_>>(), [0, 1, 2]);
    assert!(writes.windows(2).all(|w| w[0].at <= w[1].at));
    assert_eq!(
        writes[1].resource_version,
        replaced.metadata.resource_version.unwrap_or_default()
    );
    assert_eq!(server.status_writes_dropped(), 0);
}

#[tokio::test]
async fn the_status_write_record_is_bounded() {
    let server = start(ApiServerConfig {
        status_write_capacity: 1,
        ..ApiServerConfig::default()
    })
    .await;
    let deploys: Api<Deployment> = Api::namespaced(client(&server, None).await, "default");
    deploys
        .create(&PostParams::default(), &deployment("web"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for ready in 1..=3 {
        let status = json!({"status": {"readyReplicas": ready}});
        deploys
            .patch_status("web", &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let writes = server.status_writes();
    assert_eq!(writes.iter().map(|w| w.seq).collect::<Vec<_>>(), [2]);
    assert_eq!(server.status_writes_dropped(), 2);
}
