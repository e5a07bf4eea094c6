//! Fixtures for testing a Kubernetes-compatible API server.
//!
//! The conformance suite runs against the embedded test-bed server from
//! `uplink-e2e` by default. When `UPLINK_CONFORMANCE_KUBECONFIG` names a
//! kubeconfig, it runs against that server instead, unchanged, so every
//! assertion can be checked against a real kube-apiserver. The helpers here
//! therefore never assume anything a real server does not promise: names are
//! unique per test, namespaces are cleaned up, waits poll with a deadline.

use std::{future::Future, path::Path, time::Duration};

use anyhow::{Context as _, Result, anyhow, bail};
use futures::{Stream, StreamExt as _};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client, Config,
    api::{DeleteParams, PostParams, WatchEvent},
    config::{AuthInfo, KubeConfigOptions, Kubeconfig},
    core::{ObjectMeta, Status},
};
use uplink_e2e::apiserver::{ApiServer, ApiServerConfig};

/// Names a kubeconfig of a real server to run the conformance suite against.
pub const CONFORMANCE_KUBECONFIG_ENV: &str = "UPLINK_CONFORMANCE_KUBECONFIG";

/// How long one conformance test may take, setup and cleanup excluded.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// How long to wait for one expected watch event or one polled condition.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(20);

/// The `Accept` header that asks for aggregated discovery, as client-go sends it.
pub const AGGREGATED_DISCOVERY_ACCEPT: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json";

/// kube's rustls backend builds its configs from the process-wide default
/// crypto provider. Installing it twice is harmless; the second call fails
/// and is ignored.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The embedded server's configuration for the conformance suite: defaults,
/// except that bookmarks come every second so the bookmark test is quick.
pub fn conformance_server_config() -> ApiServerConfig {
    ApiServerConfig {
        bookmark_interval: Duration::from_secs(1),
        ..ApiServerConfig::default()
    }
}

/// A client for the server under test: the one named by
/// `UPLINK_CONFORMANCE_KUBECONFIG`, or else a freshly started embedded server
/// (returned too, so the caller keeps it alive and can shut it down).
pub async fn conformance_client() -> Result<(Client, Option<ApiServer>)> {
    let (config, server) = conformance_config().await?;
    let client = Client::try_from(config).context("building a kube client")?;
    Ok((client, server))
}

/// The client configuration [`conformance_client`] uses, for tests that
/// need other clients of the same server (other credentials, impersonation).
pub async fn conformance_config() -> Result<(Config, Option<ApiServer>)> {
    install_crypto_provider();
    if let Some(path) = std::env::var_os(CONFORMANCE_KUBECONFIG_ENV) {
        let path = Path::new(&path);
        let kubeconfig = Kubeconfig::read_from(path)
            .with_context(|| format!("reading kubeconfig {}", path.display()))?;
        return Ok((config_from_kubeconfig(kubeconfig, true).await?, None));
    }
    let server = start_server(conformance_server_config()).await?;
    let kubeconfig = Kubeconfig::from_yaml(&server.kubeconfig_yaml(None))
        .context("parsing the server's kubeconfig")?;
    Ok((
        config_from_kubeconfig(kubeconfig, true).await?,
        Some(server),
    ))
}

/// A client of the server `config` points at that authenticates with a
/// bearer `token` instead of `config`'s credentials.
pub fn client_with_token(config: &Config, token: &str) -> Result<Client> {
    let mut config = config.clone();
    config.auth_info = AuthInfo::default();
    let value = HeaderValue::from_str(&format!("Bearer {token}"))
        .context("the token is not a valid header value")?;
    config.headers.push((header::AUTHORIZATION, value));
    Client::try_from(config).context("building a kube client")
}

/// A client with `config`'s credentials that acts as `user` in `groups`
/// (`Impersonate-User` / `Impersonate-Group`, as `kubectl --as` sends them).
pub fn client_impersonating(config: &Config, user: &str, groups: &[&str]) -> Result<Client> {
    let mut config = config.clone();
    config.auth_info.impersonate = Some(user.to_owned());
    config.auth_info.impersonate_groups =
        (!groups.is_empty()).then(|| groups.iter().map(|g| (*g).to_owned()).collect());
    Client::try_from(config).context("building a kube client")
}

/// Starts an embedded server with `config`.
pub async fn start_server(config: ApiServerConfig) -> Result<ApiServer> {
    install_crypto_provider();
    ApiServer::start(config)
        .await
        .map_err(|e| anyhow!("starting the embedded API server: {e}"))
}

/// A client for `server`, scoped to `workspace` when given, with kube's
/// default retries of 429 / 503 / 504.
pub async fn client_for(server: &ApiServer, workspace: Option<&str>) -> Result<Client> {
    client_from_kubeconfig_yaml(&server.kubeconfig_yaml(workspace), true).await
}

/// Like [`client_for`], but every response reaches the caller as the server
/// sent it: no retries. For tests of fault injection.
pub async fn client_without_retries(server: &ApiServer, workspace: Option<&str>) -> Result<Client> {
    client_from_kubeconfig_yaml(&server.kubeconfig_yaml(workspace), false).await
}

/// A client from kubeconfig text, using its current context.
pub async fn client_from_kubeconfig_yaml(yaml: &str, retry: bool) -> Result<Client> {
    install_crypto_provider();
    let kubeconfig = Kubeconfig::from_yaml(yaml).context("parsing the server's kubeconfig")?;
    client_from_kubeconfig(kubeconfig, retry).await
}

async fn client_from_kubeconfig(kubeconfig: Kubeconfig, retry: bool) -> Result<Client> {
    let config = config_from_kubeconfig(kubeconfig, retry).await?;
    Client::try_from(config).context("building a kube client")
}

async fn config_from_kubeconfig(kubeconfig: Kubeconfig, retry: bool) -> Result<Config> {
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .context("building a client config from the kubeconfig")?;
    config.default_retry = retry;
    Ok(config)
}

/// `<prefix>-<random>`: a DNS-1123 label unique to this test run.
pub fn unique_name(prefix: &str) -> String {
    let suffix: u32 = rand::random();
    format!("{prefix}-{suffix:08x}")
}

/// Runs `body` against the server under test in a fresh namespace named
/// `conf-<test>-<random>`, bounded by [`TEST_TIMEOUT`]. The namespace is
/// deleted afterwards whatever the outcome (a real server finishes that
/// asynchronously; nothing waits for it).
pub async fn in_namespace<F, Fut>(test: &str, body: F) -> Result<()>
where
    F: FnOnce(Client, String) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    in_namespace_with_config(test, |client, _, namespace| body(client, namespace)).await
}

/// [`in_namespace`], also handing the body the client's configuration (for
/// clients with other credentials: [`client_with_token`],
/// [`client_impersonating`]).
pub async fn in_namespace_with_config<F, Fut>(test: &str, body: F) -> Result<()>
where
    F: FnOnce(Client, Config, String) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let (config, server) = within(EVENT_TIMEOUT, conformance_config()).await?;
    let client = Client::try_from(config.clone()).context("building a kube client")?;
    let namespace = within(
        EVENT_TIMEOUT,
        create_namespace(&client, &format!("conf-{test}")),
    )
    .await?;
    let outcome = within(
        TEST_TIMEOUT,
        body(client.clone(), config, namespace.clone()),
    )
    .await;
    let _ = tokio::time::timeout(EVENT_TIMEOUT, delete_namespace(&client, &namespace)).await;
    let stopped = stop_server(server).await;
    outcome?;
    stopped
}

/// Creates a namespace named `<prefix>-<random>` and returns its name.
pub async fn create_namespace(client: &Client, prefix: &str) -> Result<String> {
    let name = unique_name(prefix);
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .with_context(|| format!("creating namespace {name}"))?;
    Ok(name)
}

/// Deletes a namespace, best effort: cleanup must not hide a test's outcome.
pub async fn delete_namespace(client: &Client, name: &str) {
    let deleted = Api::<Namespace>::all(client.clone())
        .delete(name, &DeleteParams::default())
        .await;
    if let Err(error) = deleted {
        tracing::warn!(namespace = name, %error, "cleanup: deleting the test namespace failed");
    }
}

/// Runs `future`, failing if it takes longer than `limit`.
pub async fn within<T>(limit: Duration, future: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(limit, future)
        .await
        .map_err(|_| anyhow!("timed out after {limit:?}"))?
}

/// Polls `check` until it yields a value, failing after `limit` with `what`
/// in the message. Errors from `check` count as "not yet".
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(error) => last_error = Some(error),
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(match last_error {
                Some(error) => error.context(format!("gave up after {limit:?} waiting for {what}")),
                None => anyhow!("gave up after {limit:?} waiting for {what}"),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The next item of a watch stream, failing if none comes within `limit` or
/// the stream ends.
pub async fn next_event<K, S>(stream: &mut S, limit: Duration) -> Result<WatchEvent<K>>
where
    S: Stream<Item = kube::Result<WatchEvent<K>>> + Unpin,
{
    match tokio::time::timeout(limit, stream.next()).await {
        Err(_) => bail!("no watch event within {limit:?}"),
        Ok(None) => bail!("the watch stream ended"),
        Ok(Some(event)) => event.context("watch stream error"),
    }
}

/// The next event of a watch stream that is not a bookmark.
pub async fn next_change<K, S>(stream: &mut S, limit: Duration) -> Result<WatchEvent<K>>
where
    S: Stream<Item = kube::Result<WatchEvent<K>>> + Unpin,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match next_event(stream, left).await? {
            WatchEvent::Bookmark(_) => continue,
            event => return Ok(event),
        }
    }
}

/// The short name of a watch event's type, for assertion messages.
pub fn event_type<K>(event: &WatchEvent<K>) -> &'static str {
    match event {
        WatchEvent::Added(_) => "ADDED",
        WatchEvent::Modified(_) => "MODIFIED",
        WatchEvent::Deleted(_) => "DELETED",
        WatchEvent::Bookmark(_) => "BOOKMARK",
        WatchEvent::Error(_) => "ERROR",
    }
}

/// A response exactly as the server sent it.
#[derive(Debug)]
pub struct RawResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The body as a `Status` object, failing if it is not one.
    pub fn status_object(&self) -> Result<Status> {
        let value: serde_json::Value = self.json()?;
        if value.get("kind").and_then(|k| k.as_str()) != Some("Status") {
            bail!("expected a Status object, got {value}");
        }
        serde_json::from_value(value).context("decoding the Status body")
    }

    /// The body as JSON.
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "HTTP {} body is not JSON: {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The body as lossy UTF-8, for messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Fails unless the response is an HTTP `code` carrying a `Status` with
    /// the same `code` and the given `reason`.
    pub fn expect_status(&self, code: u16, reason: &str) -> Result<Status> {
        if self.status.as_u16() != code {
            bail!(
                "expected HTTP {code} {reason}, got HTTP {}: {}",
                self.status,
                self.text()
            );
        }
        let status = self.status_object()?;
        if status.code != code || status.reason != reason {
            bail!(
                "expected Status code {code} reason {reason:?}, got code {} reason {:?} (message {:?})",
                status.code,
                status.reason,
                status.message
            );
        }
        Ok(status)
    }
}

/// Sends a hand-built request through `client` (which adds the server URL,
/// TLS and credentials) and returns the response unprocessed.
pub async fn send_raw(client: &Client, request: Request<Vec<u8>>) -> Result<RawResponse> {
    let what = format!("{} {}", request.method(), request.uri());
    let response = client
        .send(request.map(kube::client::Body::from))
        .await
        .with_context(|| format!("sending {what}"))?;
    let (parts, body) = response.into_parts();
    let body = body
        .collect_bytes()
        .await
        .with_context(|| format!("reading the response to {what}"))?;
    Ok(RawResponse {
        status: parts.status,
        headers: parts.headers,
        body: body.to_vec(),
    })
}

/// Sends `method path` with an optional body of `content_type`.
pub async fn raw_request(
    client: &Client,
    method: Method,
    path: &str,
    content_type: Option<&str>,
    body: impl Into<Vec<u8>>,
) -> Result<RawResponse> {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(content_type) = content_type {
        request = request.header(header::CONTENT_TYPE, content_type);
    }
    let request = request
        .header(header::ACCEPT, "application/json")
        .body(body.into())
        .context("building a raw request")?;
    send_raw(client, request).await
}

/// The `Status` inside a kube API error, if that is what `error` is.
pub fn api_status(error: &kube::Error) -> Option<&Status> {
    match error {
        kube::Error::Api(status) => Some(status),
        _ => None,
    }
}

/// Fails unless `result` is an API error with `code` and `reason`.
pub fn expect_api_error<T: std::fmt::Debug>(
    result: kube::Result<T>,
    code: u16,
    reason: &str,
) -> Result<Status> {
    match result {
        Ok(value) => bail!("expected {code} {reason}, but the request succeeded: {value:?}"),
        Err(error) => match api_status(&error) {
            Some(status) if status.code == code && status.reason == reason => Ok(status.clone()),
            Some(status) => bail!(
                "expected {code} {reason}, got code {} reason {:?} (message {:?})",
                status.code,
                status.reason,
                status.message
            ),
            None => bail!("expected {code} {reason}, got a non-API error: {error}"),
        },
    }
}

/// A resourceVersion as an integer. Kubernetes documents resource versions
/// as opaque, but every etcd-backed server (and the test bed) uses integers;
/// tests compare them only for ordering.
pub fn resource_version_number(rv: Option<&str>) -> Result<u64> {
    let rv = rv.context("object has no resourceVersion")?;
    rv.parse()
        .with_context(|| format!("resourceVersion {rv:?} is not an integer"))
}

/// Runs `body` with a client for the server under test, bounded by
/// [`TEST_TIMEOUT`], then shuts an embedded server down.
pub async fn with_client<F, Fut>(body: F) -> Result<()>
where
    F: FnOnce(Client) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let (client, server) = within(EVENT_TIMEOUT, conformance_client()).await?;
    let outcome = within(TEST_TIMEOUT, body(client)).await;
    let stopped = stop_server(server).await;
    outcome?;
    stopped
}

/// Shuts an embedded server down (if there is one), failing if that takes
/// longer than [`EVENT_TIMEOUT`]: a server that cannot stop is a bug too.
pub async fn stop_server(server: impl Into<Option<ApiServer>>) -> Result<()> {
    match server.into() {
        None => Ok(()),
        Some(server) => tokio::time::timeout(EVENT_TIMEOUT, server.shutdown())
            .await
            .map_err(|_| anyhow!("the API server did not shut down within {EVENT_TIMEOUT:?}")),
    }
}
