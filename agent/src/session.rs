//! One connection to the hub, from TCP connect to close.
//!
//! TLS (client certificate, hub CA as the only root) → WebSocket handshake on
//! `/v1/tunnel` with subprotocol `uplink.v1` → `Hello` → `Welcome` → resume
//! (resend unacknowledged entries) or snapshot (every object) → the steady
//! state: deltas as the outbox fills, heartbeats every interval, acks and
//! throttles from the hub. A connection that delivers nothing for three
//! heartbeat intervals is dead, even in the middle of a send: every send has
//! that deadline and gives way to the stop signal (a hub that stopped
//! reading would otherwise block it until TCP gives up). On shutdown the
//! session flushes what the outbox still holds, says `Bye` and closes, within
//! a grace period.
//!
//! Reconnecting is not this module's business: [`crate::reconnect`] calls
//! [`run`] again.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;
use uplink_protocol::{
    AgentFrame, Bye, Delta, DeltaBatch, ErrorCode, Heartbeat, Hello, HubFrame, Limits,
    PROTOCOL_VERSION, Rejected, SUBPROTOCOL, SessionMode, SnapshotBegin, SnapshotChunk,
    SnapshotEnd, TUNNEL_PATH, Throttle, Welcome, decode_agent_frame, decode_hub_frame, encode,
    truncate_utf8,
};

use crate::clock::AgentClock;
use crate::health::AgentHealth;
use crate::metrics::Metrics;
use crate::outbox::SharedOutbox;

type Ws = WebSocketStream<TlsStream<TcpStream>>;

/// How long connecting (TCP, TLS, WebSocket) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the shutdown flush, `Bye` and close may take.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Longest time between two heartbeats carrying the summary, changed or not.
const FULL_SUMMARY_EVERY: Duration = Duration::from_secs(120);

/// Where the hub is, parsed once from `--hub-url`.
#[derive(Debug, Clone)]
pub struct HubEndpoint {
    /// The full tunnel URL the WebSocket request goes to.
    pub url: http::Uri,
    /// Host to connect to (no brackets around IPv6 addresses).
    pub host: String,
    pub port: u16,
    /// The name the hub's certificate must carry (a DNS name or an IP address).
    pub server_name: ServerName<'static>,
}

/// Why `--hub-url` is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--hub-url {url:?}: {reason}")]
pub struct HubUrlError {
    pub url: String,
    pub reason: String,
}

impl HubEndpoint {
    /// Parses `wss://host[:port][/path]`; the path defaults to `/v1/tunnel`.
    pub fn parse(url: &str) -> Result<Self, HubUrlError> {
        let fail = |reason: String| HubUrlError {
            url: url.to_owned(),
            reason,
        };
        let uri: http::Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| fail(e.to_string()))?;
        if uri.scheme_str() != Some("wss") {
            return Err(fail("the scheme must be wss://".into()));
        }
        let authority = uri.authority().ok_or_else(|| fail("no host".into()))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if host.is_empty() {
            return Err(fail("no host".into()));
        }
        let port = authority.port_u16().unwrap_or(443);
        let server_name =
            ServerName::try_from(host.clone()).map_err(|e| fail(format!("invalid host: {e}")))?;
        let path = match uri.path() {
            "" | "/" => TUNNEL_PATH,
            path => path,
        };
        let full = format!("wss://{authority}{path}");
        let url = full
            .parse()
            .map_err(|e: http::uri::InvalidUri| fail(e.to_string()))?;
        Ok(Self {
            url,
            host,
            port,
            server_name,
        })
    }
}

/// Everything a session needs that outlives one connection.
#[derive(Debug, Clone)]
pub struct SessionContext {
    pub cluster: String,
    /// Random per agent process; stable across its reconnects.
    pub session_id: String,
    pub hub: HubEndpoint,
    pub tls: Arc<rustls::ClientConfig>,
    /// The agent's own heartbeat interval (see [`heartbeat_interval`]).
    pub heartbeat_interval: Duration,
    pub outbox: SharedOutbox,
    pub metrics: Metrics,
    pub health: AgentHealth,
    pub clock: AgentClock,
}

/// What the agent remembers about the hub between connections.
#[derive(Debug, Clone, Copy, Default)]
pub struct Resumption {
    /// The hub epoch of the last `Welcome`.
    pub last_hub_epoch: Option<u64>,
}

/// How a session ended without an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEnd {
    /// The agent is shutting down; it said `Bye`.
    Shutdown,
    /// The hub said `Bye` (it is shutting down); reconnect later.
    HubBye(String),
}

/// Why a session failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("connecting to {host}:{port}: {source}")]
    Connect {
        host: String,
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS handshake with the hub: {0}")]
    Tls(#[source] std::io::Error),
    #[error("WebSocket handshake with the hub: {0}")]
    Handshake(#[source] tungstenite::Error),
    #[error("the hub did not select subprotocol {SUBPROTOCOL} (it sent {0:?})")]
    Subprotocol(Option<String>),
    #[error("timed out {0}")]
    Timeout(&'static str),
    #[error("the hub refused: {code:?}: {message}")]
    Refused { code: ErrorCode, message: String },
    #[error("protocol violation by the hub: {0}")]
    Protocol(String),
    #[error("undecodable frame from the hub: {0}")]
    Decode(#[from] uplink_protocol::DecodeError),
    #[error("encoding a frame: {0}")]
    Encode(#[from] uplink_protocol::EncodeError),
    #[error("WebSocket: {0}")]
    WebSocket(#[from] tungstenite::Error),
    #[error("the hub closed the connection")]
    Closed,
    /// The agent is stopping; a send in progress was abandoned.
    #[error("stopped while sending to the hub")]
    Stopped,
}

/// How one session went: the outcome, and how long it was established.
#[derive(Debug)]
pub struct SessionReport {
    /// Time between `Welcome` and the end; `None` if never welcomed.
    pub established_for: Option<Duration>,
    pub outcome: Result<SessionEnd, SessionError>,
}

/// The heartbeat interval of a session: the shorter of the agent's and the
/// hub's (the hub judges staleness by its own; sending more often is
/// harmless, less often is not). A hub announcing 0 leaves the agent's.
pub fn heartbeat_interval(agent: Duration, hub_ms: u64) -> Duration {
    if hub_ms == 0 {
        agent
    } else {
        agent.min(Duration::from_millis(hub_ms))
    }
}

/// Runs one connection until it ends.
pub async fn run(
    ctx: &SessionContext,
    resumption: &mut Resumption,
    stop: &CancellationToken,
) -> SessionReport {
    let mut established_at = None;
    let outcome = tokio::select! {
        () = stop.cancelled() => Ok(SessionEnd::Shutdown),
        ws = connect(ctx) => match ws {
            Ok(ws) => converse(ctx, resumption, stop, ws, &mut established_at).await,
            Err(e) => Err(e),
        },
    };
    let outcome = match outcome {
        Err(SessionError::Stopped) => Ok(SessionEnd::Shutdown),
        other => other,
    };
    SessionReport {
        established_for: established_at.map(|at: Instant| at.elapsed()),
        outcome,
    }
}

/// TCP, TLS and the WebSocket handshake.
async fn connect(ctx: &SessionContext) -> Result<Ws, SessionError> {
    let hub = &ctx.hub;
    let handshake = async {
        let tcp = TcpStream::connect((hub.host.as_str(), hub.port))
            .await
            .map_err(|source| SessionError::Connect {
                host: hub.host.clone(),
                port: hub.port,
                source,
            })?;
        // Frames are small and latency matters more than packet count.
        let _ = tcp.set_nodelay(true);
        let tls = TlsConnector::from(Arc::clone(&ctx.tls))
            .connect(hub.server_name.clone(), tcp)
            .await
            .map_err(SessionError::Tls)?;
        let mut request = hub
            .url
            .clone()
            .into_client_request()
            .map_err(SessionError::Handshake)?;
        request.headers_mut().insert(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            http::HeaderValue::from_static(SUBPROTOCOL),
        );
        let max = Limits::default().max_frame_bytes as usize;
        let config = WebSocketConfig::default()
            .max_message_size(Some(max))
            .max_frame_size(Some(max));
        let (ws, response) =
            tokio_tungstenite::client_async_with_config(request, tls, Some(config))
                .await
                .map_err(SessionError::Handshake)?;
        let selected = response
            .headers()
            .get(http::header::SEC_WEBSOCKET_PROTOCOL)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        if selected.as_deref() != Some(SUBPROTOCOL) {
            return Err(SessionError::Subprotocol(selected));
        }
        Ok(ws)
    };
    tokio::time::timeout(CONNECT_TIMEOUT, handshake)
        .await
        .map_err(|_| SessionError::Timeout("connecting to the hub"))?
}

/// The sending half of a connection.
///
/// Every send has a deadline and gives way to the stop signal: a hub that
/// stopped reading (its node died with our send buffer full) would otherwise
/// block a send until TCP gives up, many minutes later, and hold up
/// shutdown just as long.
struct Sender {
    sink: SplitSink<Ws, Message>,
    metrics: Metrics,
    /// When a send in progress gives up: in the steady state, three heartbeat
    /// intervals after the hub was last heard from.
    deadline: Instant,
    /// Abandons a send in progress; `None` while shutting down (the goodbye
    /// has its own time limit).
    stop: Option<CancellationToken>,
}

impl Sender {
    async fn frame(&mut self, frame: &AgentFrame) -> Result<(), SessionError> {
        let bytes = encode(frame)?;
        self.bytes(bytes).await
    }

    async fn bytes(&mut self, bytes: Vec<u8>) -> Result<(), SessionError> {
        self.message(Message::Binary(bytes.into())).await
    }

    async fn message(&mut self, message: Message) -> Result<(), SessionError> {
        let send = tokio::time::timeout_at(self.deadline, self.sink.send(message));
        let stopped = async {
            match &self.stop {
                Some(stop) => stop.cancelled().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = stopped => Err(SessionError::Stopped),
            sent = send => match sent {
                Ok(sent) => Ok(sent?),
                Err(_) => Err(SessionError::Timeout(
                    "sending to the hub (3 heartbeat intervals without anything from it)",
                )),
            },
        }
    }
}

/// Hello → Welcome → resume or snapshot → steady state.
async fn converse(
    ctx: &SessionContext,
    resumption: &mut Resumption,
    stop: &CancellationToken,
    ws: Ws,
    established_at: &mut Option<Instant>,
) -> Result<SessionEnd, SessionError> {
    let (sink, mut stream) = ws.split();
    let mut tx = Sender {
        sink,
        metrics: ctx.metrics.clone(),
        deadline: Instant::now() + ctx.heartbeat_interval * 3,
        stop: Some(stop.clone()),
    };
    let recv_limits = Limits::default();

    let hello = Hello {
        protocol_versions: vec![PROTOCOL_VERSION],
        cluster: ctx.cluster.clone(),
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        session_id: ctx.session_id.clone(),
        last_hub_epoch: resumption.last_hub_epoch,
        last_ack: ctx.outbox.lock().acked(),
    };
    tx.frame(&AgentFrame::Hello(hello)).await?;

    let welcome_wait = ctx.heartbeat_interval * 3;
    let welcome = tokio::select! {
        () = stop.cancelled() => return Ok(SessionEnd::Shutdown),
        welcome = tokio::time::timeout(welcome_wait, read_welcome(&mut stream, &recv_limits, &ctx.metrics)) => {
            welcome.map_err(|_| SessionError::Timeout("waiting for Welcome"))??
        }
    };
    if welcome.protocol_version != PROTOCOL_VERSION {
        return Err(SessionError::Protocol(format!(
            "Welcome chose protocol version {}, the agent offered only {PROTOCOL_VERSION}",
            welcome.protocol_version
        )));
    }
    resumption.last_hub_epoch = Some(welcome.hub_epoch);
    *established_at = Some(Instant::now());
    let _connected = ConnectedGuard::new(&ctx.metrics, &ctx.health);
    let limits = welcome.limits;
    let heartbeat = heartbeat_interval(ctx.heartbeat_interval, welcome.heartbeat_interval_ms);

    match welcome.mode {
        SessionMode::Resume { acked } => {
            ctx.metrics.sessions.with_label_values(&["resume"]).inc();
            let mut outbox = ctx.outbox.lock();
            if acked < outbox.acked() {
                tracing::warn!(
                    hub_acked = acked,
                    agent_acked = outbox.acked(),
                    "hub resumes before our last ack; entries in between were already dropped"
                );
            }
            outbox.resume(acked);
            tracing::info!(cluster = %ctx.cluster, hub_epoch = welcome.hub_epoch, acked, pending = outbox.pending_len(), "session resumed");
        }
        SessionMode::Snapshot => {
            ctx.metrics.sessions.with_label_values(&["snapshot"]).inc();
            send_snapshot(ctx, &mut tx, &limits).await?;
        }
    }
    ctx.outbox.notify();

    let mut steady = Steady {
        ctx,
        limits,
        heartbeat,
        last_received: Instant::now(),
        paused_until: None,
        max_deltas_per_s: 0,
        next_send_at: Instant::now(),
        last_summary: None,
        last_summary_sent: Instant::now(),
    };
    steady.run(&mut tx, &mut stream, stop).await
}

async fn read_welcome(
    stream: &mut SplitStream<Ws>,
    limits: &Limits,
    metrics: &Metrics,
) -> Result<Welcome, SessionError> {
    loop {
        match next_frame(stream, limits).await? {
            None => continue,
            Some(HubFrame::Welcome(welcome)) => return Ok(welcome),
            Some(HubFrame::Error(e)) => return Err(refused(metrics, e.code, e.message)),
            Some(other) => {
                return Err(SessionError::Protocol(format!(
                    "expected Welcome, got {}",
                    frame_name(&other)
                )));
            }
        }
    }
}

/// The next hub frame; `None` for WebSocket control messages.
async fn next_frame(
    stream: &mut SplitStream<Ws>,
    limits: &Limits,
) -> Result<Option<HubFrame>, SessionError> {
    match stream.next().await {
        None | Some(Ok(Message::Close(_))) => Err(SessionError::Closed),
        Some(Err(e)) => Err(e.into()),
        Some(Ok(Message::Binary(bytes))) => Ok(Some(decode_hub_frame(&bytes, limits)?)),
        Some(Ok(Message::Text(_))) => Err(SessionError::Protocol(
            "text message (frames are binary)".into(),
        )),
        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Ok(None),
    }
}

fn refused(metrics: &Metrics, code: ErrorCode, message: String) -> SessionError {
    metrics
        .hub_errors
        .with_label_values(&[&format!("{code:?}")])
        .inc();
    SessionError::Refused { code, message }
}

fn frame_name(frame: &HubFrame) -> &'static str {
    match frame {
        HubFrame::Welcome(_) => "Welcome",
        HubFrame::Ack(_) => "Ack",
        HubFrame::HeartbeatAck(_) => "HeartbeatAck",
        HubFrame::Throttle(_) => "Throttle",
        HubFrame::Error(_) => "Error",
        HubFrame::Bye(_) => "Bye",
    }
}

/// Sets the "connected" gauge and readiness for as long as it lives.
struct ConnectedGuard {
    metrics: Metrics,
    health: AgentHealth,
}

impl ConnectedGuard {
    fn new(metrics: &Metrics, health: &AgentHealth) -> Self {
        metrics.connected.set(1);
        health.set_hub_connected(true);
        Self {
            metrics: metrics.clone(),
            health: health.clone(),
        }
    }
}

impl Drop for ConnectedGuard {
    fn drop(&mut self) {
        self.metrics.connected.set(0);
        self.health.set_hub_connected(false);
    }
}

/// `SnapshotBegin`, chunks with every existing object, `SnapshotEnd`.
async fn send_snapshot(
    ctx: &SessionContext,
    tx: &mut Sender,
    limits: &Limits,
) -> Result<(), SessionError> {
    let snapshot = ctx.outbox.lock().snapshot();
    // Frames are built before `SnapshotBegin` so it can announce the exact
    // count (objects the hub would refuse are left out).
    let framed = frame_deltas(snapshot.deltas, limits, BatchKind::SnapshotChunk)?;
    report_dropped(ctx, &framed.dropped);
    // Each frame of a snapshot (sent before anything is read back) may take
    // three heartbeat intervals.
    let per_frame = ctx.heartbeat_interval * 3;
    tx.deadline = Instant::now() + per_frame;
    tx.frame(&AgentFrame::SnapshotBegin(SnapshotBegin {
        objects: framed.deltas,
    }))
    .await?;
    for frame in framed.frames {
        tx.deadline = Instant::now() + per_frame;
        tx.bytes(frame.bytes).await?;
    }
    tx.deadline = Instant::now() + per_frame;
    tx.frame(&AgentFrame::SnapshotEnd(SnapshotEnd { seq: snapshot.seq }))
        .await?;
    ctx.metrics.snapshot_objects.inc_by(framed.deltas);
    tracing::info!(cluster = %ctx.cluster, objects = framed.deltas, seq = snapshot.seq, "snapshot sent");
    Ok(())
}

fn report_dropped(ctx: &SessionContext, dropped: &[(Delta, &'static str, String)]) {
    if dropped.is_empty() {
        return;
    }
    let mut outbox = ctx.outbox.lock();
    for (delta, kind, error) in dropped {
        ctx.metrics.deltas_dropped.with_label_values(&[kind]).inc();
        tracing::warn!(
            workspace = %delta.object.workspace,
            namespace = delta.object.namespace.as_deref().unwrap_or_default(),
            name = %delta.object.name,
            resource = %delta.object.resource,
            error = %error,
            "delta exceeds the hub's limits; not sent"
        );
        outbox.discard(delta.seq);
    }
}

/// The frame a batch of deltas travels in.
#[derive(Debug, Clone, Copy)]
enum BatchKind {
    Deltas,
    SnapshotChunk,
}

impl BatchKind {
    fn wrap(self, deltas: Vec<Delta>) -> AgentFrame {
        match self {
            BatchKind::Deltas => AgentFrame::Deltas(DeltaBatch { deltas }),
            BatchKind::SnapshotChunk => AgentFrame::SnapshotChunk(SnapshotChunk { deltas }),
        }
    }

    fn unwrap(frame: AgentFrame) -> Vec<Delta> {
        match frame {
            AgentFrame::Deltas(DeltaBatch { deltas })
            | AgentFrame::SnapshotChunk(SnapshotChunk { deltas }) => deltas,
            _ => Vec::new(),
        }
    }
}

/// One encoded frame and the highest sequence number in it.
#[derive(Debug)]
struct Framed {
    bytes: Vec<u8>,
    last_seq: u64,
}

/// Deltas packed into frames the hub accepts.
#[derive(Debug, Default)]
struct FramedDeltas {
    frames: Vec<Framed>,
    /// Deltas in `frames`.
    deltas: u64,
    /// Deltas the hub would refuse on their own: (delta, reason, error).
    dropped: Vec<(Delta, &'static str, String)>,
}

/// Packs `deltas` (in sequence order) into frames within `limits`.
///
/// Each candidate frame is checked with the protocol's own decoder under the
/// hub's limits, exactly as the hub will check it. A frame that fails is split
/// in halves; a single delta that fails on its own is dropped (reported, never
/// sent: sending it would only get the session closed, again and again).
fn frame_deltas(
    deltas: Vec<Delta>,
    limits: &Limits,
    kind: BatchKind,
) -> Result<FramedDeltas, SessionError> {
    let per_batch = (limits.max_deltas_per_batch as usize).max(1);
    let mut todo: VecDeque<Vec<Delta>> = VecDeque::new();
    let mut rest = deltas;
    while !rest.is_empty() {
        let tail = rest.split_off(per_batch.min(rest.len()));
        todo.push_back(rest);
        rest = tail;
    }
    let mut out = FramedDeltas::default();
    while let Some(batch) = todo.pop_front() {
        let Some(last_seq) = batch.last().map(|d| d.seq) else {
            continue;
        };
        let count = batch.len() as u64;
        let frame = kind.wrap(batch);
        let bytes = encode(&frame)?;
        match decode_agent_frame(&bytes, limits) {
            Ok(_) => {
                out.deltas += count;
                out.frames.push(Framed { bytes, last_seq });
            }
            Err(e) => {
                let mut batch = BatchKind::unwrap(frame);
                if batch.len() == 1 {
                    if let Some(delta) = batch.pop() {
                        out.dropped.push((delta, e.kind(), e.to_string()));
                    }
                } else {
                    let second = batch.split_off(batch.len() / 2);
                    todo.push_front(second);
                    todo.push_front(batch);
                }
            }
        }
    }
    Ok(out)
}

/// The established part of a session.
struct Steady<'a> {
    ctx: &'a SessionContext,
    limits: Limits,
    heartbeat: Duration,
    last_received: Instant,
    paused_until: Option<Instant>,
    max_deltas_per_s: u32,
    next_send_at: Instant,
    last_summary: Option<uplink_protocol::ClusterSummary>,
    /// When a heartbeat last carried the summary.
    last_summary_sent: Instant,
}

impl Steady<'_> {
    async fn run(
        &mut self,
        tx: &mut Sender,
        stream: &mut SplitStream<Ws>,
        stop: &CancellationToken,
    ) -> Result<SessionEnd, SessionError> {
        let mut ticker = tokio::time::interval(self.heartbeat);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let dead_after = self.heartbeat * 3;
        loop {
            let has_unsent = self.ctx.outbox.lock().has_unsent();
            let send_at = self.send_at();
            tx.deadline = self.last_received + dead_after;
            let sent = tokio::select! {
                biased;
                () = stop.cancelled() => Err(SessionError::Stopped),
                message = stream.next() => {
                    self.last_received = Instant::now();
                    if let Some(end) = self.received(message)? {
                        return Ok(end);
                    }
                    Ok(())
                }
                // Dead exactly three intervals after the last message, not
                // at the next tick after that.
                () = tokio::time::sleep_until(self.last_received + dead_after) => {
                    return Err(SessionError::Timeout("waiting for anything from the hub (3 heartbeat intervals)"));
                }
                _ = ticker.tick() => {
                    if self.last_received.elapsed() > dead_after {
                        return Err(SessionError::Timeout("waiting for anything from the hub (3 heartbeat intervals)"));
                    }
                    self.send_heartbeat(tx).await
                }
                () = tokio::time::sleep_until(send_at), if has_unsent => {
                    self.send_deltas(tx).await
                }
                () = self.ctx.outbox.changed(), if !has_unsent => Ok(()),
            };
            match sent {
                Ok(()) => {}
                // Stopping, possibly in the middle of a send: say goodbye
                // (bounded by its own grace period).
                Err(SessionError::Stopped) => {
                    self.shut_down(tx, stream).await;
                    return Ok(SessionEnd::Shutdown);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// When the next `Deltas` frame may go out, given throttling.
    fn send_at(&self) -> Instant {
        match self.paused_until {
            Some(until) => until.max(self.next_send_at),
            None => self.next_send_at,
        }
    }

    fn received(
        &mut self,
        message: Option<Result<Message, tungstenite::Error>>,
    ) -> Result<Option<SessionEnd>, SessionError> {
        let bytes = match message {
            None | Some(Ok(Message::Close(_))) => return Err(SessionError::Closed),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(Message::Binary(bytes))) => bytes,
            Some(Ok(Message::Text(_))) => {
                return Err(SessionError::Protocol(
                    "text message (frames are binary)".into(),
                ));
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => return Ok(None),
        };
        match decode_hub_frame(&bytes, &Limits::default())? {
            HubFrame::Ack(ack) => {
                let mut outbox = self.ctx.outbox.lock();
                if ack.seq > outbox.last_seq() {
                    tracing::warn!(
                        ack = ack.seq,
                        last_seq = outbox.last_seq(),
                        "hub acknowledged a sequence never sent"
                    );
                }
                outbox.ack(ack.seq);
                tracing::debug!(ack = ack.seq, pending = outbox.pending_len(), "ack");
                drop(outbox);
                self.count_rejected(&ack.rejected);
            }
            HubFrame::HeartbeatAck(ack) => {
                let rtt = self.ctx.clock.now_ms().saturating_sub(ack.agent_time_ms);
                tracing::debug!(
                    rtt_ms = rtt,
                    hub_time_ms = ack.hub_time_ms,
                    "heartbeat acknowledged"
                );
            }
            HubFrame::Throttle(throttle) => self.throttle(throttle),
            HubFrame::Error(e) => return Err(refused(&self.ctx.metrics, e.code, e.message)),
            HubFrame::Bye(bye) => return Ok(Some(SessionEnd::HubBye(bye.reason))),
            HubFrame::Welcome(_) => return Err(SessionError::Protocol("second Welcome".into())),
        }
        Ok(None)
    }

    /// Counts the reports the hub refused and logs them: at `warn` for the
    /// first ten of each reason and then at every power of two (a cluster
    /// that reports what KCP did not place on it would flood otherwise),
    /// at `debug` in between.
    fn count_rejected(&self, rejected: &[Rejected]) {
        for refusal in rejected {
            // A reason this agent does not know is counted as `other`, so a
            // newer hub cannot grow the label set.
            let reason = Rejected::REASONS
                .iter()
                .copied()
                .find(|known| *known == refusal.reason)
                .unwrap_or("other");
            let counter = self
                .ctx
                .metrics
                .rejected_deltas
                .with_label_values(&[reason]);
            counter.inc();
            let total = counter.get();
            if total <= 10 || total.is_power_of_two() {
                tracing::warn!(cluster = %self.ctx.cluster, seq = refusal.seq, reason = %refusal.reason, rejected = total, "the hub refused a report");
            } else {
                tracing::debug!(cluster = %self.ctx.cluster, seq = refusal.seq, reason = %refusal.reason, rejected = total, "the hub refused a report");
            }
        }
    }

    fn throttle(&mut self, throttle: Throttle) {
        tracing::info!(
            pause_ms = throttle.pause_ms,
            max_deltas_per_s = throttle.max_deltas_per_s,
            "hub throttles deltas"
        );
        self.paused_until = (throttle.pause_ms > 0)
            .then(|| Instant::now() + Duration::from_millis(throttle.pause_ms));
        self.max_deltas_per_s = throttle.max_deltas_per_s;
    }

    async fn send_heartbeat(&mut self, tx: &mut Sender) -> Result<(), SessionError> {
        let mut summary = self.ctx.health.summary();
        for watch in &mut summary.watches {
            if let Some(error) = &mut watch.error {
                truncate_utf8(error, self.limits.max_string_bytes as usize);
            }
        }
        let changed = self.last_summary.as_ref() != Some(&summary)
            || self.last_summary_sent.elapsed() >= FULL_SUMMARY_EVERY;
        if changed {
            self.last_summary_sent = Instant::now();
        }
        let heartbeat = Heartbeat {
            agent_time_ms: self.ctx.clock.now_ms(),
            summary: changed.then(|| summary.clone()),
        };
        tx.frame(&AgentFrame::Heartbeat(heartbeat)).await?;
        // A WebSocket ping as well, for proxies that watch control frames.
        tx.message(Message::Ping(bytes::Bytes::new())).await?;
        self.last_summary = Some(summary);
        tx.metrics.heartbeats_sent.inc();
        Ok(())
    }

    /// Sends one batch of unsent outbox entries.
    async fn send_deltas(&mut self, tx: &mut Sender) -> Result<(), SessionError> {
        let mut max = (self.limits.max_deltas_per_batch as usize).max(1);
        if self.max_deltas_per_s > 0 {
            max = max.min(self.max_deltas_per_s as usize);
        }
        let deltas = self.ctx.outbox.lock().unsent(max);
        let Some(last_seq) = deltas.last().map(|d| d.seq) else {
            return Ok(());
        };
        let framed = frame_deltas(deltas, &self.limits, BatchKind::Deltas)?;
        report_dropped(self.ctx, &framed.dropped);
        let frames = framed.frames.len() as u64;
        for frame in framed.frames {
            tx.bytes(frame.bytes).await?;
            self.ctx.outbox.lock().mark_sent(frame.last_seq);
        }
        self.ctx.outbox.lock().mark_sent(last_seq);
        tx.metrics.deltas_sent.inc_by(framed.deltas);
        tx.metrics.delta_frames_sent.inc_by(frames);
        if self.max_deltas_per_s > 0 {
            let spacing =
                Duration::from_secs_f64(framed.deltas as f64 / f64::from(self.max_deltas_per_s));
            self.next_send_at = Instant::now() + spacing;
        }
        Ok(())
    }

    /// Best effort, bounded by [`SHUTDOWN_GRACE`]: flush what is unsent, say
    /// `Bye`, close, and wait for the hub's close (acks on the way count).
    async fn shut_down(&mut self, tx: &mut Sender, stream: &mut SplitStream<Ws>) {
        tx.stop = None;
        tx.deadline = Instant::now() + SHUTDOWN_GRACE;
        let goodbye = async {
            while self.ctx.outbox.lock().has_unsent() {
                self.send_deltas(tx).await?;
            }
            let bye = Bye {
                reason: "agent shutting down".into(),
            };
            tx.frame(&AgentFrame::Bye(bye)).await?;
            tx.sink
                .send(Message::Close(Some(CloseFrame {
                    code: CloseCode::Away,
                    reason: "agent shutting down".into(),
                })))
                .await?;
            // Until the hub answers the close (acks on the way still count).
            while let Some(Ok(message)) = stream.next().await {
                match message {
                    Message::Binary(bytes) => {
                        if let Ok(HubFrame::Ack(ack)) = decode_hub_frame(&bytes, &Limits::default())
                        {
                            self.ctx.outbox.lock().ack(ack.seq);
                            self.count_rejected(&ack.rejected);
                        }
                    }
                    Message::Close(_) => break,
                    _ => {}
                }
            }
            Ok::<(), SessionError>(())
        };
        match tokio::time::timeout(SHUTDOWN_GRACE, goodbye).await {
            Ok(Ok(())) => tracing::info!(cluster = %self.ctx.cluster, "said goodbye to the hub"),
            Ok(Err(e)) => tracing::warn!(error = %e, "goodbye to the hub failed"),
            Err(_) => tracing::warn!("goodbye to the hub timed out"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use uplink_protocol::{Change, ObjectRef};

    use super::*;

    #[test]
    fn hub_urls() {
        let hub = HubEndpoint::parse("wss://hub.example.com:9443").unwrap();
        assert_eq!(hub.url.to_string(), "wss://hub.example.com:9443/v1/tunnel");
        assert_eq!((hub.host.as_str(), hub.port), ("hub.example.com", 9443));
        let ip = HubEndpoint::parse("wss://127.0.0.1:8443/").unwrap();
        assert!(matches!(ip.server_name, ServerName::IpAddress(_)));
        let v6 = HubEndpoint::parse("wss://[::1]:8443/custom/path").unwrap();
        assert_eq!(v6.host, "::1");
        assert_eq!(v6.url.path(), "/custom/path");
        assert_eq!(HubEndpoint::parse("wss://hub").unwrap().port, 443);
        for bad in ["ws://hub:80", "https://hub", "hub:443", "wss://"] {
            let err = HubEndpoint::parse(bad).unwrap_err();
            assert!(err.to_string().contains("--hub-url"), "{err}");
        }
    }

    #[test]
    fn heartbeat_is_the_shorter_interval() {
        assert_eq!(
            heartbeat_interval(Duration::from_secs(10), 5000),
            Duration::from_secs(5)
        );
        assert_eq!(
            heartbeat_interval(Duration::from_secs(1), 10000),
            Duration::from_secs(1)
        );
        assert_eq!(
            heartbeat_interval(Duration::from_secs(7), 0),
            Duration::from_secs(7)
        );
    }

    fn delta(seq: u64, status_len: usize, name: &str) -> Delta {
        Delta {
            seq,
            object: ObjectRef {
                group: "apps".into(),
                version: "v1".into(),
                resource: "deployments".into(),
                kind: "Deployment".into(),
                workspace: "root:org".into(),
                namespace: Some("default".into()),
                name: name.into(),
                uid: "u".into(),
            },
            generation: Some(1),
            observed_generation: Some(1),
            observed_at_ms: 0,
            change: Change::Upsert {
                status_json: format!("{{\"x\":\"{}\"}}", "a".repeat(status_len)),
            },
        }
    }

    fn decoded_seqs(framed: &FramedDeltas, limits: &Limits) -> Vec<Vec<u64>> {
        framed
            .frames
            .iter()
            .map(|f| match decode_agent_frame(&f.bytes, limits).unwrap() {
                AgentFrame::Deltas(b) => b.deltas.iter().map(|d| d.seq).collect(),
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[test]
    fn batches_respect_count_and_size_limits() {
        let limits = Limits {
            max_deltas_per_batch: 3,
            max_frame_bytes: 1200,
            ..Limits::default()
        };
        let deltas: Vec<Delta> = (1..=8).map(|seq| delta(seq, 200, "web")).collect();
        let framed = frame_deltas(deltas, &limits, BatchKind::Deltas).unwrap();
        let seqs = decoded_seqs(&framed, &limits);
        assert_eq!(seqs.concat(), (1..=8).collect::<Vec<_>>());
        assert!(seqs.iter().all(|s| s.len() <= 3));
        assert!(framed.frames.iter().all(|f| f.bytes.len() <= 1200));
        assert_eq!(framed.deltas, 8);
        assert!(framed.dropped.is_empty());
    }

    #[test]
    fn a_delta_the_hub_would_refuse_is_dropped_alone() {
        let limits = Limits {
            max_status_bytes: 100,
            max_string_bytes: 64,
            ..Limits::default()
        };
        let deltas = vec![
            delta(1, 10, "ok"),
            delta(2, 500, "big-status"),
            delta(3, 10, &"n".repeat(100)),
            delta(4, 10, "ok-too"),
        ];
        let framed = frame_deltas(deltas, &limits, BatchKind::Deltas).unwrap();
        assert_eq!(decoded_seqs(&framed, &limits).concat(), [1, 4]);
        let dropped: Vec<(u64, &str)> = framed
            .dropped
            .iter()
            .map(|(d, kind, _)| (d.seq, *kind))
            .collect();
        assert_eq!(dropped, [(2, "status_too_large"), (3, "string_too_long")]);
    }
}
