//! An agent that says whatever its test tells it: a TLS WebSocket client
//! speaking protocol v1 frame by frame with a cluster's genuine certificate.
//! For scenarios where a cluster lies (forged object references, other
//! clusters' records, another kind for a placed object) and the hub must
//! hold its ground.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use futures::{SinkExt, StreamExt};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use uplink_protocol::{
    Ack, AgentFrame, Change, Delta, DeltaBatch, Hello, HubFrame, Limits, ObjectRef,
    PROTOCOL_VERSION, SUBPROTOCOL, TUNNEL_PATH, Welcome, decode_hub_frame, encode,
};

/// How long the forged agent waits for any one frame from the hub.
const FRAME_WAIT: Duration = Duration::from_secs(10);

/// One connection of a forged agent.
#[derive(Debug)]
pub struct ForgedAgent {
    ws: WebSocketStream<TlsStream<TcpStream>>,
    next_seq: u64,
}

impl ForgedAgent {
    /// Connects to the hub at `addr` with the certificate and key in
    /// `cert`/`key` (PEM files), trusting `ca`.
    pub async fn connect(
        addr: std::net::SocketAddr,
        ca: &Path,
        cert: &Path,
        key: &Path,
    ) -> Result<Self> {
        let read = |path: &Path| {
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))
        };
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&read(ca)?) {
            roots.add(cert?)?;
        }
        let chain = CertificateDer::pem_slice_iter(&read(cert)?).collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_slice(&read(key)?)?;
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
        let tcp = TcpStream::connect(addr).await?;
        let tls = TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost")?, tcp)
            .await?;
        let mut request = format!("wss://localhost{TUNNEL_PATH}").into_client_request()?;
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(SUBPROTOCOL),
        );
        let (ws, _) = tokio_tungstenite::client_async(request, tls).await?;
        Ok(Self { ws, next_seq: 1 })
    }

    /// Says Hello as `cluster` (a fresh session) and returns the Welcome.
    pub async fn hello(&mut self, cluster: &str) -> Result<Welcome> {
        self.send(&AgentFrame::Hello(Hello {
            protocol_versions: vec![PROTOCOL_VERSION],
            cluster: cluster.to_owned(),
            agent_version: "forged".to_owned(),
            session_id: uuid::Uuid::new_v4().to_string(),
            last_hub_epoch: None,
            last_ack: 0,
            downward_resources: Vec::new(),
            upsync_resources: Vec::new(),
        }))
        .await?;
        match self.recv().await? {
            HubFrame::Welcome(welcome) => Ok(welcome),
            other => bail!("expected Welcome, got {other:?}"),
        }
    }

    pub async fn send(&mut self, frame: &AgentFrame) -> Result<()> {
        self.ws.send(Message::Binary(encode(frame)?.into())).await?;
        Ok(())
    }

    /// The next frame from the hub (pings and pongs skipped).
    pub async fn recv(&mut self) -> Result<HubFrame> {
        loop {
            let message = tokio::time::timeout(FRAME_WAIT, self.ws.next())
                .await
                .context("no frame from the hub in time")?
                .ok_or_else(|| anyhow!("the hub closed the connection"))??;
            match message {
                Message::Binary(bytes) => return Ok(decode_hub_frame(&bytes, &Limits::default())?),
                Message::Close(frame) => bail!("closed by the hub: {frame:?}"),
                _ => {}
            }
        }
    }

    /// Sends `changes` as one batch (sequence numbers assigned in order)
    /// and returns the hub's `Ack` of it.
    pub async fn report(&mut self, changes: Vec<(ObjectRef, Change)>) -> Result<Ack> {
        let deltas: Vec<Delta> = changes
            .into_iter()
            .map(|(object, change)| {
                let seq = self.next_seq;
                self.next_seq += 1;
                Delta {
                    seq,
                    object,
                    generation: Some(1),
                    observed_generation: Some(1),
                    observed_at_ms: now_ms(),
                    change,
                    object_json: None,
                }
            })
            .collect();
        let last = self.next_seq - 1;
        self.send(&AgentFrame::Deltas(DeltaBatch { deltas }))
            .await?;
        loop {
            if let HubFrame::Ack(ack) = self.recv().await?
                && ack.seq >= last
            {
                return Ok(ack);
            }
        }
    }
}

/// A status report: `status` as an `Upsert`.
pub fn upsert(status: &serde_json::Value) -> Change {
    Change::Upsert {
        status_json: status.to_string(),
    }
}

/// A Deployment's reference as an agent would send it.
pub fn deployment_ref(workspace: &str, namespace: &str, name: &str) -> ObjectRef {
    ObjectRef {
        group: "apps".into(),
        version: "v1".into(),
        resource: "deployments".into(),
        kind: "Deployment".into(),
        workspace: workspace.into(),
        namespace: Some(namespace.into()),
        name: name.into(),
        uid: uuid::Uuid::new_v4().to_string(),
    }
}

/// The local clock, in ms since the Unix epoch (what an agent in step with
/// the hub sends as `agent_time_ms`).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl crate::fleet::Fleet {
    /// A forged agent holding `cluster`'s genuine certificate (issued by the
    /// fleet's CA; written on first use), connected to the hub.
    pub async fn forged_agent(&self, cluster: &str) -> Result<ForgedAgent> {
        let pki = self.dir().join("pki");
        let cert = pki.join(format!("{cluster}.crt"));
        let key = pki.join(format!("{cluster}.key"));
        if !cert.exists() {
            self.write_cert(cluster, &self.pki().client_cert(cluster)?)?;
        }
        ForgedAgent::connect(self.hub_tunnel_addr(), &pki.join("ca.crt"), &cert, &key).await
    }
}

/// How the hub ended a forged agent's connection: the `Error` frame it sent
/// first (if any) and its WebSocket close code and reason (if it sent a
/// Close frame).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ending {
    pub error: Option<uplink_protocol::ErrorFrame>,
    pub close: Option<(u16, String)>,
}

impl ForgedAgent {
    /// Sends one WebSocket message as it is (text, pings, any bytes).
    pub async fn send_message(&mut self, message: Message) -> Result<()> {
        self.ws.send(message).await?;
        Ok(())
    }

    /// Writes `bytes` straight onto the TLS stream, under the WebSocket
    /// layer (a frame header without its payload, for example).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        use tokio::io::AsyncWriteExt as _;
        let stream = self.ws.get_mut();
        stream.write_all(bytes).await?;
        stream.flush().await?;
        Ok(())
    }

    /// Reads until the hub ends the connection (each read waiting at most
    /// `within`), and tells how it did.
    pub async fn ending(&mut self, within: Duration) -> Result<Ending> {
        self.ending_from(Ending::default(), within).await
    }

    /// [`ForgedAgent::ending`], continuing from what [`ForgedAgent::read_ready`]
    /// already saw.
    pub async fn ending_from(&mut self, mut ending: Ending, within: Duration) -> Result<Ending> {
        loop {
            let message = tokio::time::timeout(within, self.ws.next())
                .await
                .with_context(|| {
                    format!(
                        "the hub did not end the connection within {within:?}; so far {ending:?}"
                    )
                })?;
            if note(&mut ending, message) {
                return Ok(ending);
            }
        }
    }

    /// Reads what the hub has sent by now, without waiting, as a client
    /// that writes and reads at once would (one that never reads fills the
    /// hub's socket, and the hub's close cannot get through). True once
    /// the connection ended.
    pub fn read_ready(&mut self, ending: &mut Ending) -> bool {
        use futures::FutureExt as _;
        while let Some(message) = self.ws.next().now_or_never() {
            if note(ending, message) {
                return true;
            }
        }
        false
    }
}

/// Notes one message (or the end) of a connection the hub is ending; true
/// once it ended.
fn note(
    ending: &mut Ending,
    message: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
) -> bool {
    match message {
        None | Some(Err(_)) => true,
        Some(Ok(Message::Binary(bytes))) => {
            if let Ok(HubFrame::Error(error)) = decode_hub_frame(&bytes, &Limits::default()) {
                ending.error = Some(error);
            }
            false
        }
        Some(Ok(Message::Close(frame))) => {
            ending.close = frame.map(|f| (u16::from(f.code), f.reason.to_string()));
            false
        }
        Some(Ok(_)) => false,
    }
}

impl ForgedAgent {
    /// The next frame from the hub, or how the hub ended the connection
    /// when it did instead (an `Error` frame starts the ending).
    pub async fn recv_or_ending(&mut self) -> Result<Result<HubFrame, Ending>> {
        loop {
            let message = tokio::time::timeout(FRAME_WAIT, self.ws.next())
                .await
                .context("no frame from the hub in time")?;
            let ended = |error, close| Ending { error, close };
            match message {
                None | Some(Err(_)) => return Ok(Err(ended(None, None))),
                Some(Ok(Message::Binary(bytes))) => {
                    match decode_hub_frame(&bytes, &Limits::default())? {
                        HubFrame::Error(error) => {
                            let rest = self.ending(FRAME_WAIT).await?;
                            return Ok(Err(ended(Some(error), rest.close)));
                        }
                        frame => return Ok(Ok(frame)),
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    let close = frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                    self.ending(FRAME_WAIT).await?;
                    return Ok(Err(ended(None, close)));
                }
                Some(Ok(_)) => {}
            }
        }
    }
}
