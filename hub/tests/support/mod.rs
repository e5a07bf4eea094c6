//! Fixtures for the hub's tunnel tests: a throwaway PKI, a hub on loopback
//! with a fake upstream, and an agent-side test client speaking protocol v1.

#![allow(dead_code)] // each test binary uses a different part

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use futures::future::BoxFuture;
use futures::{SinkExt, StreamExt};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_util::sync::CancellationToken;
use uplink_hub::placement::source::Metadata;
use uplink_hub::placement::watch::{Event, WatchError};
use uplink_hub::placement::{PlacedObject, PlacementSource, SyncTargetObject};
use uplink_hub::store::ObjectKey;
use uplink_hub::writer::events::EventUpstream;
use uplink_hub::writer::finalizer::FinalizerUpstream;
use uplink_hub::writer::upsync::{Listed, UpsyncUpstream};
use uplink_hub::{
    ApplyOptions, Hub, HubConfig, Kcp, Metrics, StatusUpstream, UpstreamError, UpstreamStatus,
};
use uplink_protocol::resource::ResourceSpec;
use uplink_protocol::{
    AgentFrame, Change, Delta, Hello, HubFrame, Limits, ObjectRef, PROTOCOL_VERSION,
    decode_hub_frame, encode,
};

/// Polls `check` until it is true or `limit` passes.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check() {
        if tokio::time::Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// A CA with the files a hub and its agents need, in a temporary directory.
pub struct Pki {
    pub dir: tempfile::TempDir,
    ca_params: CertificateParams,
    ca_key: KeyPair,
    pub ca_pem: String,
}

impl Pki {
    pub fn new(name: &str) -> Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("ca.pem"), cert.pem())?;
        Ok(Self {
            dir,
            ca_pem: cert.pem(),
            ca_params: params,
            ca_key: key,
        })
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// Issues a certificate; returns (cert PEM, key PEM).
    fn issue(
        &self,
        cn: &str,
        sans: Vec<SanType>,
        usage: ExtendedKeyUsagePurpose,
    ) -> Result<(String, String)> {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.subject_alt_names = sans;
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate()?;
        let issuer = Issuer::from_params(&self.ca_params, &self.ca_key);
        let cert = params.signed_by(&key, &issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Writes `hub.pem` / `hub-key.pem` for `localhost` and 127.0.0.1.
    pub fn issue_server(&self) -> Result<()> {
        let (cert, key) = self.issue(
            "uplink-hub",
            vec![
                SanType::DnsName("localhost".try_into()?),
                SanType::IpAddress([127, 0, 0, 1].into()),
            ],
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        std::fs::write(self.path("hub.pem"), cert)?;
        std::fs::write(self.path("hub-key.pem"), key)?;
        Ok(())
    }

    /// A client identity for `cluster` as the dev PKI issues it: URI SAN
    /// `uplink://cluster/<name>` and CN `<name>`.
    pub fn client(&self, cluster: &str) -> Result<ClientIdentity> {
        let uri = format!("uplink://cluster/{cluster}");
        let (cert, key) = self.issue(
            cluster,
            vec![SanType::URI(uri.as_str().try_into()?)],
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
        ClientIdentity::from_pem(&cert, &key)
    }
}

pub struct ClientIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl ClientIdentity {
    fn from_pem(cert: &str, key: &str) -> Result<Self> {
        Ok(Self {
            chain: CertificateDer::pem_slice_iter(cert.as_bytes()).collect::<Result<_, _>>()?,
            key: PrivateKeyDer::from_pem_slice(key.as_bytes())?,
        })
    }
}

/// Records every status write; answers success.
#[derive(Debug, Default)]
pub struct FakeUpstream {
    /// Each write as `{"status": …}`: a merge patch as sent, an apply as
    /// the status it applied.
    pub patches: Mutex<Vec<(ObjectKey, Value)>>,
    /// Counts writes without keeping them (tests of the hub's own memory).
    pub discard: std::sync::atomic::AtomicBool,
    /// Writes received, kept or not.
    pub writes: std::sync::atomic::AtomicU64,
    /// Events as KCP would hold them, by (workspace, namespace, name):
    /// created whole, then their `series` merged in.
    pub events: Mutex<std::collections::BTreeMap<(String, String, String), Value>>,
    /// Upsynced objects as KCP would hold them (uid and resourceVersion
    /// set by the fake), and every request made of them.
    pub upsynced: Mutex<std::collections::BTreeMap<ObjectKey, Value>>,
    pub upsync_requests: AtomicUsize,
    versions: std::sync::atomic::AtomicU64,
    /// When each kept status write arrived.
    pub stamps: Mutex<Vec<(ObjectKey, tokio::time::Instant)>>,
}

impl FakeUpstream {
    fn record(&self, key: &ObjectKey, patch: Value) {
        self.writes.fetch_add(1, Ordering::Relaxed);
        if !self.discard.load(Ordering::Relaxed) {
            self.stamps
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((key.clone(), tokio::time::Instant::now()));
            self.patches
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((key.clone(), patch));
        }
    }
}

impl FakeUpstream {
    /// The status writes, in order (see [`FakeUpstream::patches`]).
    pub fn patches(&self) -> Vec<(ObjectKey, Value)> {
        self.patches
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl StatusUpstream for FakeUpstream {
    fn patch_status<'a>(
        &'a self,
        key: &'a ObjectKey,
        patch: &'a Value,
        _dry_run: bool,
    ) -> BoxFuture<'a, Result<(), UpstreamError>> {
        Box::pin(async move {
            self.record(key, patch.clone());
            Ok(())
        })
    }

    fn apply_status<'a>(
        &'a self,
        key: &'a ObjectKey,
        configuration: &'a Value,
        _options: ApplyOptions<'a>,
    ) -> BoxFuture<'a, Result<(), UpstreamError>> {
        Box::pin(async move {
            self.record(key, json!({"status": configuration["status"]}));
            Ok(())
        })
    }

    fn get_status<'a>(
        &'a self,
        _key: &'a ObjectKey,
    ) -> BoxFuture<'a, Result<UpstreamStatus, UpstreamError>> {
        Box::pin(async { Ok(UpstreamStatus::default()) })
    }
}

impl FakeUpstream {
    /// The Events written so far (see [`FakeUpstream::events`]).
    pub fn events(&self) -> Vec<((String, String, String), Value)> {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// Answers like kube-apiserver: a create of an Event that is there is a
/// conflict, a patch of one that is not is not found.
impl EventUpstream for FakeUpstream {
    fn create_event<'a>(
        &'a self,
        workspace: &'a str,
        namespace: &'a str,
        event: &'a Value,
        _dry_run: bool,
    ) -> BoxFuture<'a, Result<(), UpstreamError>> {
        Box::pin(async move {
            let name = event["metadata"]["name"].as_str().unwrap_or_default();
            let id = (workspace.to_owned(), namespace.to_owned(), name.to_owned());
            let mut events = self.events.lock().unwrap_or_else(PoisonError::into_inner);
            if events.contains_key(&id) {
                return Err(UpstreamError::Conflict("already exists".into()));
            }
            events.insert(id, event.clone());
            Ok(())
        })
    }

    fn patch_event<'a>(
        &'a self,
        workspace: &'a str,
        namespace: &'a str,
        name: &'a str,
        patch: &'a Value,
        _dry_run: bool,
    ) -> BoxFuture<'a, Result<(), UpstreamError>> {
        Box::pin(async move {
            let id = (workspace.to_owned(), namespace.to_owned(), name.to_owned());
            let mut events = self.events.lock().unwrap_or_else(PoisonError::into_inner);
            let Some(event) = events.get_mut(&id) else {
                return Err(UpstreamError::NotFound);
            };
            event["series"] = patch["series"].clone();
            Ok(())
        })
    }
}

impl FakeUpstream {
    /// The upsynced objects KCP holds.
    pub fn upsynced(&self) -> std::collections::BTreeMap<ObjectKey, Value> {
        self.upsynced
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn next_version(&self) -> String {
        (self.versions.fetch_add(1, Ordering::SeqCst) + 1).to_string()
    }
}

/// Answers like kube-apiserver: 409 for a name taken, a stale
/// resourceVersion or a failed uid precondition.
impl UpsyncUpstream for FakeUpstream {
    fn get_upsynced<'a>(
        &'a self,
        key: &'a ObjectKey,
    ) -> BoxFuture<'a, Result<Value, UpstreamError>> {
        Box::pin(async move {
            self.upsync_requests.fetch_add(1, Ordering::SeqCst);
            self.upsynced()
                .get(key)
                .cloned()
                .ok_or(UpstreamError::NotFound)
        })
    }

    fn create_upsynced<'a>(
        &'a self,
        key: &'a ObjectKey,
        object: &'a Value,
        _dry_run: bool,
    ) -> BoxFuture<'a, Result<Value, UpstreamError>> {
        Box::pin(async move {
            self.upsync_requests.fetch_add(1, Ordering::SeqCst);
            let version = self.next_version();
            let mut objects = self.upsynced.lock().unwrap_or_else(PoisonError::into_inner);
            if objects.contains_key(key) {
                return Err(UpstreamError::Conflict("already exists".into()));
            }
            let mut stored = object.clone();
            stored["metadata"]["uid"] = json!(format!("upstream-{version}"));
            stored["metadata"]["resourceVersion"] = json!(version);
            objects.insert(key.clone(), stored.clone());
            Ok(stored)
        })
    }

    fn update_upsynced<'a>(
        &'a self,
        key: &'a ObjectKey,
        object: &'a Value,
        _dry_run: bool,
    ) -> BoxFuture<'a, Result<Value, UpstreamError>> {
        Box::pin(async move {
            self.upsync_requests.fetch_add(1, Ordering::SeqCst);
            let version = self.next_version();
            let mut objects = self.upsynced.lock().unwrap_or_else(PoisonError::into_inner);
            let Some(stored) = objects.get_mut(key) else {
                return Err(UpstreamError::NotFound);
            };
            if stored["metadata"]["resourceVersion"] != object["metadata"]["resourceVersion"] {
                return Err(UpstreamError::Conflict(
                    "the object has been modified".into(),
                ));
            }
            *stored = object.clone();
            stored["metadata"]["resourceVersion"] = json!(version);
            Ok(stored.clone())
        })
    }

    fn delete_upsynced<'a>(
        &'a self,
        key: &'a ObjectKey,
        uid: &'a str,
        resource_version: &'a str,
        _dry_run: bool,
    ) -> BoxFuture<'a, Result<(), UpstreamError>> {
        Box::pin(async move {
            self.upsync_requests.fetch_add(1, Ordering::SeqCst);
            let mut objects = self.upsynced.lock().unwrap_or_else(PoisonError::into_inner);
            match objects.get(key) {
                None => Err(UpstreamError::NotFound),
                Some(stored) if stored["metadata"]["uid"] != uid => {
                    Err(UpstreamError::Conflict("precondition failed: uid".into()))
                }
                Some(stored)
                    if !resource_version.is_empty()
                        && stored["metadata"]["resourceVersion"] != resource_version =>
                {
                    Err(UpstreamError::Conflict(
                        "precondition failed: resourceVersion".into(),
                    ))
                }
                Some(_) => {
                    objects.remove(key);
                    Ok(())
                }
            }
        })
    }

    fn list_upsynced<'a>(
        &'a self,
        resource: &'a ResourceSpec,
    ) -> BoxFuture<'a, Result<Vec<Listed>, UpstreamError>> {
        Box::pin(async move {
            Ok(self
                .upsynced()
                .iter()
                .filter(|(key, _)| key.group == resource.group && key.resource == resource.resource)
                .map(|(key, object)| Listed {
                    workspace: key.workspace.clone(),
                    object: object.clone(),
                })
                .collect())
        })
    }
}

impl FinalizerUpstream for FakeUpstream {
    fn finalizers<'a>(
        &'a self,
        _key: &'a ObjectKey,
    ) -> BoxFuture<'a, Result<(String, Vec<String>), UpstreamError>> {
        Box::pin(async { Ok((String::new(), Vec::new())) })
    }

    fn set_finalizers<'a>(
        &'a self,
        _key: &'a ObjectKey,
        _resource_version: &'a str,
        _finalizers: &'a [String],
        _leaving: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), UpstreamError>> {
        Box::pin(async { Ok(()) })
    }
}

/// Clusters with a SyncTarget in the fake placement, and the objects (in
/// `root:org:team-a`, namespace `default`) placed on each of them.
pub const CLUSTERS: &[&str] = &["edge-1", "east", "west", "good", "bad", "a", "b"];
pub const PLACED: &[&str] = &["web", "api", "odd", "bad", "db"];

/// Placement as KCP would list it: SyncTargets in `root` for
/// [`CLUSTERS`], every object of [`PLACED`] placed on each of them. Listed
/// once; nothing changes afterwards.
#[derive(Debug)]
pub struct FakePlacement {
    pub clusters: Vec<String>,
    pub objects: Vec<String>,
    /// How many watches of placed objects the hub opened.
    pub placed_watches: Arc<AtomicUsize>,
    /// Objects (of `objects`) placed on one cluster only: object → cluster.
    pub only_on: std::collections::HashMap<String, String>,
}

impl Default for FakePlacement {
    fn default() -> Self {
        Self {
            clusters: CLUSTERS.iter().map(|c| (*c).to_owned()).collect(),
            objects: PLACED.iter().map(|o| (*o).to_owned()).collect(),
            placed_watches: Arc::default(),
            only_on: std::collections::HashMap::new(),
        }
    }
}

fn listed_once<T: Send + 'static>(
    kind: &str,
    objects: Vec<T>,
) -> futures::stream::BoxStream<'static, Result<Event<T>, WatchError>> {
    let event = Event::Listed {
        kind: Some(kind.to_owned()),
        objects,
    };
    futures::stream::once(async move { Ok(event) })
        .chain(futures::stream::pending())
        .boxed()
}

impl PlacementSource for FakePlacement {
    fn synctargets(
        &self,
        _workspace: &str,
    ) -> futures::stream::BoxStream<'static, Result<Event<SyncTargetObject>, WatchError>> {
        let objects = self
            .clusters
            .iter()
            .map(|name| SyncTargetObject {
                metadata: Metadata {
                    name: name.clone(),
                    uid: format!("uid-{name}"),
                    ..Metadata::default()
                },
            })
            .collect();
        listed_once("SyncTarget", objects)
    }

    fn placed(
        &self,
        _resource: &ResourceSpec,
    ) -> futures::stream::BoxStream<'static, Result<Event<PlacedObject>, WatchError>> {
        self.placed_watches.fetch_add(1, Ordering::SeqCst);
        // Placed on every cluster: one placement label per SyncTarget key.
        let labels: std::collections::BTreeMap<String, String> = self
            .clusters
            .iter()
            .map(|cluster| placed_on(cluster))
            .collect();
        let objects = self
            .objects
            .iter()
            .map(|name| PlacedObject {
                kind: None,
                metadata: Metadata {
                    name: name.clone(),
                    namespace: Some("default".into()),
                    uid: format!("upstream-{name}"),
                    labels: match self.only_on.get(name) {
                        Some(cluster) => [placed_on(cluster)].into(),
                        None => labels.clone(),
                    },
                    annotations: [("kcp.io/cluster".to_owned(), "root:org:team-a".to_owned())]
                        .into(),
                    ..Metadata::default()
                },
                rest: serde_json::Map::new(),
            })
            .collect();
        listed_once("Deployment", objects)
    }
}

/// A hub running on loopback with a fake upstream.
pub struct TestHub {
    pub pki: Pki,
    pub tunnel: SocketAddr,
    pub http: SocketAddr,
    pub metrics: Arc<Metrics>,
    pub store: Arc<uplink_hub::store::Store>,
    pub health: Arc<uplink_hub::health::Health>,
    pub upstream: Arc<FakeUpstream>,
    /// Which shards the hub holds (all, unless it is a replica).
    pub ownership: uplink_hub::replicas::Ownership,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<Result<(), uplink_hub::HubError>>,
}

impl TestHub {
    pub async fn start(limits: Limits) -> Result<Self> {
        Self::start_with(|config| config.limits = limits).await
    }

    /// A hub whose configuration `adjust` may change.
    pub async fn start_with(adjust: impl FnOnce(&mut HubConfig)) -> Result<Self> {
        Self::start_placed(adjust, FakePlacement::default()).await
    }

    /// A hub whose configuration `adjust` may change, with `placement`.
    pub async fn start_placed(
        adjust: impl FnOnce(&mut HubConfig),
        placement: FakePlacement,
    ) -> Result<Self> {
        Self::start_with_source(adjust, Arc::new(placement)).await
    }

    /// A hub whose configuration `adjust` may change, reading placement
    /// from `placement`.
    pub async fn start_with_source(
        adjust: impl FnOnce(&mut HubConfig),
        placement: Arc<dyn PlacementSource>,
    ) -> Result<Self> {
        Self::start_full(adjust, placement, Arc::new(FakeUpstream::default()), None).await
    }

    /// A replica (`adjust` sets `config.replicas.lease`) whose Leases are
    /// in `leases`, writing to `upstream`.
    pub async fn start_replica(
        adjust: impl FnOnce(&mut HubConfig),
        upstream: Arc<FakeUpstream>,
        leases: kube::Client,
    ) -> Result<Self> {
        Self::start_full(
            adjust,
            Arc::new(FakePlacement::default()),
            upstream,
            Some(leases),
        )
        .await
    }

    async fn start_full(
        adjust: impl FnOnce(&mut HubConfig),
        placement: Arc<dyn PlacementSource>,
        upstream: Arc<FakeUpstream>,
        leases: Option<kube::Client>,
    ) -> Result<Self> {
        let pki = Pki::new("uplink test CA")?;
        pki.issue_server()?;
        let mut config = HubConfig {
            listen: "127.0.0.1:0".parse()?,
            http_listen: "127.0.0.1:0".parse()?,
            tls_cert: pki.path("hub.pem"),
            tls_key: pki.path("hub-key.pem"),
            client_ca: pki.path("ca.pem"),
            heartbeat_interval: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(5),
            write_qps: 0.0,
            // Loopback only; tests of the checks turn them on.
            http_auth: uplink_hub::http::HttpAuthConfig::disabled(),
            ..HubConfig::default()
        };
        adjust(&mut config);
        let kcp = Kcp {
            status: upstream.clone(),
            placement,
            finalizers: upstream.clone(),
            events: upstream.clone(),
            upsync: upstream.clone(),
        };
        let mut hub = Hub::bind_with_kcp(config, kcp).await?;
        if let Some(leases) = leases {
            hub = hub.with_lease_client(leases);
        }
        let ownership = hub.ownership();
        let shutdown = CancellationToken::new();
        let (tunnel, http, metrics) = (hub.tunnel_addr(), hub.http_addr(), hub.metrics());
        let (store, health) = (hub.store(), hub.health());
        let task = tokio::spawn(hub.run(shutdown.clone()));
        Ok(Self {
            pki,
            tunnel,
            http,
            metrics,
            store,
            health,
            upstream,
            ownership,
            shutdown,
            task,
        })
    }

    pub fn connector(&self) -> TestAgentConnector {
        TestAgentConnector::new(&self.pki, self.tunnel)
    }

    /// Connects with `identity`, trusting this hub's CA.
    pub async fn connect(&self, identity: &ClientIdentity) -> Result<Agent> {
        self.connector().connect(identity).await
    }

    pub async fn connect_to(
        &self,
        identity: &ClientIdentity,
        path: &str,
        subprotocol: Option<&str>,
    ) -> Result<Agent> {
        self.connector()
            .connect_to(identity, path, subprotocol)
            .await
    }

    pub async fn tls(&self, identity: &ClientIdentity) -> Result<TlsStream<TcpStream>> {
        self.connector().tls(identity).await
    }

    /// `GET path` on the HTTP endpoint; returns (status, body).
    pub async fn get(&self, path: &str) -> Result<(u16, String)> {
        let mut tcp = TcpStream::connect(self.http).await?;
        tcp.write_all(
            // Addressed by IP, as an open (`--http-auth none`) hub requires.
            format!(
                "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                self.http
            )
            .as_bytes(),
        )
        .await?;
        let mut response = String::new();
        tcp.read_to_string(&mut response).await?;
        let status = response
            .split_whitespace()
            .nth(1)
            .context("no status line")?
            .parse()?;
        let (head, body) = response
            .split_once("\r\n\r\n")
            .unwrap_or((response.as_str(), ""));
        let chunked = head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked");
        let body = if chunked {
            dechunk(body)?
        } else {
            body.to_owned()
        };
        Ok((status, body))
    }

    pub async fn stop(self) -> Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.task).await???;
        Ok(())
    }
}

/// Decodes a `Transfer-Encoding: chunked` body (lists are streamed).
fn dechunk(mut rest: &str) -> Result<String> {
    let mut body = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").context("no chunk size line")?;
        let size = usize::from_str_radix(size.trim(), 16)?;
        if size == 0 {
            return Ok(body);
        }
        body.push_str(after.get(..size).context("chunk shorter than its size")?);
        rest = after.get(size + 2..).context("no end of chunk")?;
    }
}

/// Opens agent connections to a hub's tunnel, trusting the test CA.
pub struct TestAgentConnector {
    ca_pem: String,
    tunnel: SocketAddr,
}

impl TestAgentConnector {
    pub fn new(pki: &Pki, tunnel: SocketAddr) -> Self {
        Self {
            ca_pem: pki.ca_pem.clone(),
            tunnel,
        }
    }

    /// Connects with `identity`, trusting this hub's CA.
    pub async fn connect(&self, identity: &ClientIdentity) -> Result<Agent> {
        self.connect_to(identity, "/v1/tunnel", Some("uplink.v1"))
            .await
    }

    pub async fn connect_to(
        &self,
        identity: &ClientIdentity,
        path: &str,
        subprotocol: Option<&str>,
    ) -> Result<Agent> {
        let tls = self.tls(identity).await?;
        let mut request = format!("wss://localhost{path}").into_client_request()?;
        if let Some(subprotocol) = subprotocol {
            request.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                HeaderValue::from_str(subprotocol)?,
            );
        }
        let (ws, _response) = tokio_tungstenite::client_async(request, tls).await?;
        Ok(Agent { ws })
    }

    /// The TLS part only.
    pub async fn tls(&self, identity: &ClientIdentity) -> Result<TlsStream<TcpStream>> {
        self.tls_to(self.tunnel, Some(identity)).await
    }

    /// A TLS connection to `addr` trusting the test CA, with `identity`'s
    /// client certificate or none.
    pub async fn tls_to(
        &self,
        addr: SocketAddr,
        identity: Option<&ClientIdentity>,
    ) -> Result<TlsStream<TcpStream>> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(cert?)?;
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
        let config = match identity {
            Some(identity) => {
                config.with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())?
            }
            None => config.with_no_client_auth(),
        };
        let tcp = TcpStream::connect(addr).await?;
        let connector = TlsConnector::from(Arc::new(config));
        let mut tls = connector
            .connect(ServerName::try_from("localhost")?, tcp)
            .await?;
        // TLS 1.3: the server checks the client certificate after the client
        // considers the handshake done; a refusal arrives on the first read.
        tls.flush().await?;
        Ok(tls)
    }
}

/// The agent side of one tunnel connection.
pub struct Agent {
    pub ws: WebSocketStream<TlsStream<TcpStream>>,
}

/// How a connection ended, as the agent sees it.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    Closed(Option<u16>),
    Eof,
}

impl Agent {
    pub async fn send(&mut self, frame: &AgentFrame) -> Result<()> {
        self.ws.send(Message::Binary(encode(frame)?.into())).await?;
        Ok(())
    }

    pub async fn send_raw(&mut self, bytes: Vec<u8>) -> Result<()> {
        self.ws.send(Message::Binary(bytes.into())).await?;
        Ok(())
    }

    /// The next hub frame.
    pub async fn recv(&mut self) -> Result<HubFrame> {
        loop {
            let message = tokio::time::timeout(Duration::from_secs(10), self.ws.next())
                .await
                .context("no frame from the hub within 10 s")?
                .ok_or_else(|| anyhow!("connection ended"))??;
            match message {
                Message::Binary(bytes) => return Ok(decode_hub_frame(&bytes, &Limits::default())?),
                Message::Close(frame) => bail!("closed by the hub: {frame:?}"),
                _ => {}
            }
        }
    }

    /// Reads until the hub closes; returns the close code.
    pub async fn end(&mut self) -> Result<End> {
        loop {
            let next = tokio::time::timeout(Duration::from_secs(10), self.ws.next())
                .await
                .context("the hub did not close within 10 s")?;
            match next {
                None | Some(Err(_)) => return Ok(End::Eof),
                Some(Ok(Message::Close(frame))) => {
                    return Ok(End::Closed(frame.map(|f| u16::from(f.code))));
                }
                Some(Ok(_)) => {}
            }
        }
    }

    /// Hello of a version 2 agent for `cluster` that applies `resources`
    /// downward; returns the Welcome.
    pub async fn hello_v2(
        &mut self,
        cluster: &str,
        session: &str,
        resources: &[&str],
    ) -> Result<HubFrame> {
        self.send(&AgentFrame::Hello(Hello {
            protocol_versions: vec![1, 2],
            cluster: cluster.into(),
            agent_version: "test".into(),
            session_id: session.into(),
            last_hub_epoch: None,
            last_ack: 0,
            downward_resources: resources.iter().map(|r| (*r).to_owned()).collect(),
            upsync_resources: Vec::new(),
        }))
        .await?;
        self.recv().await
    }

    /// Hello for `cluster` with a fresh session; returns the Welcome.
    pub async fn hello(
        &mut self,
        cluster: &str,
        session: &str,
        epoch: Option<u64>,
        last_ack: u64,
    ) -> Result<HubFrame> {
        self.send(&AgentFrame::Hello(Hello {
            protocol_versions: vec![PROTOCOL_VERSION],
            cluster: cluster.into(),
            agent_version: "test".into(),
            session_id: session.into(),
            last_hub_epoch: epoch,
            last_ack,
            downward_resources: Vec::new(),
            upsync_resources: Vec::new(),
        }))
        .await?;
        self.recv().await
    }
}

impl Agent {
    /// Hello (the current version) for `cluster` with a fresh session,
    /// upsyncing `types`; returns the Welcome.
    pub async fn hello_upsync(
        &mut self,
        cluster: &str,
        session: &str,
        types: &[&str],
    ) -> Result<HubFrame> {
        self.send(&AgentFrame::Hello(Hello {
            protocol_versions: vec![PROTOCOL_VERSION],
            cluster: cluster.into(),
            agent_version: "test".into(),
            session_id: session.into(),
            last_hub_epoch: None,
            last_ack: 0,
            downward_resources: Vec::new(),
            upsync_resources: types.iter().map(|t| (*t).to_owned()).collect(),
        }))
        .await?;
        self.recv().await
    }
}

pub fn object(name: &str) -> ObjectRef {
    ObjectRef {
        group: "apps".into(),
        version: "v1".into(),
        resource: "deployments".into(),
        kind: "Deployment".into(),
        workspace: "root:org:team-a".into(),
        namespace: Some("default".into()),
        name: name.into(),
        uid: format!("uid-{name}"),
    }
}

pub fn upsert(seq: u64, name: &str, status: Value) -> Delta {
    Delta {
        seq,
        object: object(name),
        generation: Some(1),
        observed_generation: Some(1),
        observed_at_ms: 1_700_000_000_000,
        change: Change::Upsert {
            status_json: status.to_string(),
        },
        object_json: None,
    }
}

/// The SyncTarget CRD Uplink ships for KCP.
const SYNCTARGET_CRD: &str = include_str!("../../../deploy/crds/synctargets.workload.kcp.io.yaml");

/// Registers `clusters` with the test bed's KCP as an operator would: the
/// SyncTarget CRD and one SyncTarget per cluster in workspace `root`.
pub async fn register_clusters(
    server: &uplink_e2e::apiserver::ApiServer,
    dir: &std::path::Path,
    clusters: &[&str],
) -> Result<()> {
    use kube::api::{ApiResource, DynamicObject, PostParams};
    use kube::core::GroupVersionKind;

    let kubeconfig = dir.join("root.kubeconfig");
    server.write_kubeconfig(&kubeconfig, Some("root"))?;
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&kubeconfig)?,
        &kube::config::KubeConfigOptions::default(),
    )
    .await?;
    let client = kube::Client::try_from(config)?;
    let crds = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
        "customresourcedefinitions",
    );
    let crd: DynamicObject = serde_saphyr::from_str(SYNCTARGET_CRD)?;
    kube::Api::<DynamicObject>::all_with(client.clone(), &crds)
        .create(&PostParams::default(), &crd)
        .await?;
    let synctargets = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("workload.kcp.io", "v1alpha1", "SyncTarget"),
        "synctargets",
    );
    let api = kube::Api::<DynamicObject>::all_with(client, &synctargets);
    for cluster in clusters {
        api.create(
            &PostParams::default(),
            &DynamicObject::new(cluster, &synctargets),
        )
        .await?;
    }
    Ok(())
}

/// kcp's placement label for `cluster`'s SyncTarget in `root`, set to `Sync`.
pub fn placed_on(cluster: &str) -> (String, String) {
    use uplink_hub::placement::key::{STATE_SYNC, state_label, sync_target_key};
    (
        state_label(&sync_target_key("root", cluster)),
        STATE_SYNC.to_owned(),
    )
}
