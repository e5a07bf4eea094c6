//! What the agent's integration tests share: a development PKI and a tiny
//! fake hub (tokio-rustls + tokio-tungstenite) that hands each accepted
//! connection to the test, which plays the hub frame by frame.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use uplink_protocol::{
    AgentFrame, HubFrame, Limits, SessionMode, Welcome, decode_agent_frame, encode,
};

/// Generous deadline for anything the agent should do promptly.
pub const DEADLINE: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------- PKI

pub struct Pki {
    _dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub server: Arc<rustls::ServerConfig>,
}

pub fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "uplink test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate().unwrap();
    let mut server_params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();

    let client_key = KeyPair::generate().unwrap();
    let mut client_params = CertificateParams::new(vec!["east".to_owned()]).unwrap();
    client_params
        .distinguished_name
        .push(DnType::CommonName, "east");
    client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = client_params.signed_by(&client_key, &issuer).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, pem: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).unwrap();
        path
    };
    let ca = write("ca.pem", ca_cert.pem());
    let client_cert = write("east.pem", client_cert.pem());
    let client_key = write("east-key.pem", client_key.serialize_pem());

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots.add(ca_cert.der().clone()).unwrap();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
            .build()
            .unwrap();
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![server_cert.der().clone()],
            PrivateKeyDer::from_pem_slice(server_key.serialize_pem().as_bytes()).unwrap(),
        )
        .unwrap();
    Pki {
        _dir: dir,
        ca,
        client_cert,
        client_key,
        server: Arc::new(server),
    }
}

// ---------------------------------------------------------------- fake hub

/// Accepts agents; every accepted connection is handed to the test.
pub struct FakeHub {
    pub addr: SocketAddr,
    pub conns: mpsc::UnboundedReceiver<HubConn>,
}

pub struct HubConn {
    pub ws: WebSocketStream<TlsStream<TcpStream>>,
    /// The client certificate the agent presented.
    pub peer_certs: usize,
}

impl FakeHub {
    pub async fn start(tls: Arc<rustls::ServerConfig>) -> FakeHub {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, conns) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let acceptor = TlsAcceptor::from(tls);
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let peer_certs = tls.get_ref().1.peer_certificates().map_or(0, <[_]>::len);
                    let callback = |req: &Request, mut resp: Response| {
                        assert_eq!(req.uri().path(), "/v1/tunnel");
                        let offered = req.headers().get("sec-websocket-protocol").unwrap();
                        assert_eq!(offered, "uplink.v1");
                        resp.headers_mut()
                            .insert("sec-websocket-protocol", "uplink.v1".parse().unwrap());
                        Ok(resp)
                    };
                    if let Ok(ws) = tokio_tungstenite::accept_hdr_async(tls, callback).await {
                        let _ = tx.send(HubConn { ws, peer_certs });
                    }
                });
            }
        });
        FakeHub { addr, conns }
    }

    pub async fn next_conn(&mut self) -> HubConn {
        tokio::time::timeout(DEADLINE, self.conns.recv())
            .await
            .expect("the agent did not connect in time")
            .unwrap()
    }
}

impl HubConn {
    /// The next agent frame, heartbeats included.
    pub async fn recv_any(&mut self) -> AgentFrame {
        loop {
            let message = tokio::time::timeout(DEADLINE, self.ws.next())
                .await
                .expect("no frame from the agent in time")
                .expect("connection ended")
                .unwrap();
            match message {
                Message::Binary(bytes) => {
                    return decode_agent_frame(&bytes, &Limits::default()).unwrap();
                }
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("unexpected message {other:?}"),
            }
        }
    }

    /// The next agent frame that is not a heartbeat.
    pub async fn recv(&mut self) -> AgentFrame {
        loop {
            match self.recv_any().await {
                AgentFrame::Heartbeat(_) => {}
                frame => return frame,
            }
        }
    }

    pub async fn send(&mut self, frame: HubFrame) {
        self.ws
            .send(Message::Binary(encode(&frame).unwrap().into()))
            .await
            .unwrap();
    }

    pub async fn welcome(&mut self, epoch: u64, mode: SessionMode, heartbeat_ms: u64) {
        self.send(HubFrame::Welcome(Welcome {
            protocol_version: 1,
            hub_epoch: epoch,
            mode,
            heartbeat_interval_ms: heartbeat_ms,
            limits: Limits::default(),
            sync_target: None,
            shards: None,
        }))
        .await;
    }
}

pub async fn poll_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The test bed's API server as the agent's cluster.
pub struct Cluster {
    pub server: uplink_e2e::apiserver::ApiServer,
    pub kubeconfig: PathBuf,
    pub client: kube::Client,
    _dir: tempfile::TempDir,
}

pub async fn cluster() -> Cluster {
    use uplink_e2e::apiserver::{ApiServer, ApiServerConfig};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = ApiServer::start(ApiServerConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("east.kubeconfig");
    server.write_kubeconfig(&kubeconfig, None).unwrap();
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&kubeconfig).unwrap(),
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    Cluster {
        server,
        kubeconfig,
        client: kube::Client::try_from(config).unwrap(),
        _dir: dir,
    }
}
