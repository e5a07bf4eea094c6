//! One agent's session on an established WebSocket: `Hello` → `Welcome`, then
//! deltas, snapshots and heartbeats until `Bye`, silence, a protocol
//! violation, a newer connection for the same cluster, or hub shutdown.
//!
//! A session only ever changes its own cluster's entries in the store, and
//! only for objects KCP placed on that cluster: every report is judged by
//! [`crate::placement`] first (taken, held, or refused and the agent told in
//! its `Ack`). Every refusal of a frame is an `Error` frame with the code the
//! violation calls for, a close with the matching close code, a metric and
//! one log line.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;
use uplink_protocol::names::invalid_name;
use uplink_protocol::{
    Ack, AgentFrame, Bye, Change, DecodeError, Delta, ErrorCode, ErrorFrame, Heartbeat,
    HeartbeatAck, Hello, HubFrame, Limits, Rejected, SessionMode, Throttle, Welcome, close,
    decode_agent_frame, encode, negotiate_version,
};

use crate::health::{Health, unix_ms};
use crate::metrics::{Metrics, handshake_reason};
use crate::placement::{Placements, Verdict};
use crate::rejection::Rejections;
use crate::store::{Entry, ObjectKey, Store, StoreError, Update};
use crate::writer::WriteQueue;

/// Longest a connecting agent waits for its cluster's placement to be listed
/// before its `Welcome`.
const PLACEMENT_WAIT: Duration = Duration::from_secs(5);

/// Longest a close handshake may take before the connection is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// What every session of one hub shares.
#[derive(Debug)]
pub struct SessionShared {
    pub store: Arc<Store>,
    /// What KCP placed on each cluster: what a cluster may report.
    pub placements: Arc<Placements>,
    /// Refused reports, kept for each agent's next `Ack`.
    pub rejections: Arc<Rejections>,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    pub connections: Connections,
    pub limits: Limits,
    pub heartbeat_interval: Duration,
    pub hello_timeout: Duration,
    /// Random per hub start; an agent that saw another epoch must snapshot.
    pub hub_epoch: u64,
    /// Whether objects must name a workspace (KCP upstream).
    pub require_workspace: bool,
    /// The KCP writer's queue, whose depth decides when agents are throttled.
    pub write_queue: Arc<WriteQueue>,
    pub throttle: ThrottleSettings,
}

/// When and how agents are slowed down because the KCP writer fell behind.
///
/// The store keeps one entry per object whatever the traffic, so memory is
/// bounded either way; throttling keeps agents from spending the hub's CPU
/// (and the network) on changes the writer will coalesce anyway.
#[derive(Debug, Clone, Copy)]
pub struct ThrottleSettings {
    /// Queue depth at which agents get `Throttle`; below half of it they are
    /// released.
    pub queue_depth: usize,
    /// How long a throttled agent pauses its deltas.
    pub pause: Duration,
    /// The rate a throttled agent is held to after the pause (0: unlimited).
    pub max_deltas_per_s: u32,
}

/// The live connection of each cluster, so a newer one can replace it.
#[derive(Debug, Default)]
pub struct Connections {
    current: Mutex<HashMap<String, (u64, CancellationToken)>>,
    next_id: AtomicU64,
}

impl Connections {
    /// Makes a new connection the cluster's current one; the previous one's
    /// token is cancelled (it then tells its agent it was superseded).
    fn register(&self, cluster: &str) -> (u64, CancellationToken) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let token = CancellationToken::new();
        let previous = self
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(cluster.to_owned(), (id, token.clone()));
        if let Some((_, old)) = previous {
            old.cancel();
        }
        (id, token)
    }

    fn unregister(&self, cluster: &str, id: u64) {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if current
            .get(cluster)
            .is_some_and(|(current, _)| *current == id)
        {
            current.remove(cluster);
        }
    }
}

/// A refusal: what to tell the agent and how to count it.
#[derive(Debug)]
struct Violation {
    /// Label of `frames_rejected_total{reason}` / `handshake_failures_total{reason}`.
    reason: &'static str,
    code: ErrorCode,
    message: String,
}

impl Violation {
    fn new(reason: &'static str, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            reason,
            code,
            message: message.into(),
        }
    }

    fn unexpected(what: &str) -> Self {
        Self::new(
            "unexpected_frame",
            ErrorCode::UnexpectedFrame,
            format!("{what} is not allowed now"),
        )
    }
}

impl From<DecodeError> for Violation {
    fn from(error: DecodeError) -> Self {
        Self::new(error.kind(), error.error_code(), error.to_string())
    }
}

/// Why reading the next frame stopped.
#[derive(Debug)]
enum ReadError {
    /// The peer closed the WebSocket or the connection.
    Closed,
    /// The transport failed.
    Transport(WsError),
    /// The peer sent something it must not.
    Violation(Violation),
}

/// Serves one agent on an established WebSocket whose TLS client certificate
/// proved `identity`.
pub async fn serve<S>(
    shared: Arc<SessionShared>,
    ws: WebSocketStream<S>,
    identity: String,
    peer: SocketAddr,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut conn = Connection {
        ws,
        peer,
        cluster: identity,
        shared,
        throttled_until: None,
    };
    let Some((hello, mode)) = conn.handshake(&shutdown).await else {
        return;
    };
    let (id, superseded) = conn.shared.connections.register(&conn.cluster);
    conn.shared
        .health
        .session_started(&conn.cluster, id, &hello.session_id, &hello.agent_version);
    conn.shared.metrics.agents_connected.inc();
    tracing::info!(
        cluster = %conn.cluster,
        peer = %conn.peer,
        session = %hello.session_id,
        agent_version = %hello.agent_version,
        ?mode,
        "agent connected"
    );

    let end = conn.run(&hello.session_id, &shutdown, &superseded).await;

    conn.shared.metrics.agents_connected.dec();
    conn.shared.connections.unregister(&conn.cluster, id);
    conn.shared.health.session_ended(&conn.cluster, id);
    tracing::info!(cluster = %conn.cluster, peer = %conn.peer, reason = end, "agent disconnected");
    if end == SILENT {
        conn.close(close::GOING_AWAY, "silent for three heartbeat intervals")
            .await;
    }
}

/// Why a session ended when the agent stopped sending frames.
const SILENT: &str = "silent";

struct Connection<S> {
    ws: WebSocketStream<S>,
    peer: SocketAddr,
    cluster: String,
    shared: Arc<SessionShared>,
    /// While the agent is throttled: when its pause ends.
    throttled_until: Option<Instant>,
}

/// A snapshot being received.
struct SnapshotBuffer {
    entries: HashMap<ObjectKey, Entry>,
    /// Objects the agent saw deleted recently (acknowledged or not). A hub
    /// that restarted, possibly before writing an acknowledged deletion to
    /// KCP, holds nothing for them, so replacing the cluster's entries would
    /// not notice they are gone: they are re-evaluated (and cleared upstream
    /// when no cluster reports them) explicitly.
    tombstones: HashSet<ObjectKey>,
}

impl<S> Connection<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// Waits for `Hello`, checks it and answers `Welcome`. `None` when the
    /// agent was refused or went away (already counted and logged).
    async fn handshake(&mut self, shutdown: &CancellationToken) -> Option<(Hello, SessionMode)> {
        let read = tokio::select! {
            () = shutdown.cancelled() => return None,
            read = tokio::time::timeout(self.shared.hello_timeout, self.read_frame()) => read,
        };
        let hello = match read {
            Err(_) => {
                self.handshake_failed(handshake_reason::HELLO_TIMEOUT, "no Hello in time");
                self.close(close::POLICY_VIOLATION, "no Hello in time")
                    .await;
                return None;
            }
            Ok(Err(ReadError::Closed)) => {
                self.handshake_failed(handshake_reason::CLOSED, "closed before Hello");
                return None;
            }
            Ok(Err(ReadError::Transport(error))) => {
                self.handshake_failed(handshake_reason::WEBSOCKET, &error.to_string());
                return None;
            }
            Ok(Err(ReadError::Violation(violation))) => {
                let reason = if violation.code == ErrorCode::Malformed {
                    handshake_reason::MALFORMED
                } else {
                    violation.reason
                };
                self.handshake_failed(reason, &violation.message);
                self.refuse(violation).await;
                return None;
            }
            Ok(Ok(AgentFrame::Hello(hello))) => hello,
            Ok(Ok(_)) => {
                let violation = Violation::unexpected("a frame other than Hello before Welcome");
                self.handshake_failed(handshake_reason::UNEXPECTED_FRAME, &violation.message);
                self.refuse(violation).await;
                return None;
            }
        };

        let Some(version) = negotiate_version(&hello.protocol_versions) else {
            let violation = Violation::new(
                handshake_reason::UNSUPPORTED_VERSION,
                ErrorCode::UnsupportedVersion,
                format!(
                    "no common protocol version: the agent speaks {:?}, the hub {:?}",
                    hello.protocol_versions,
                    uplink_protocol::SUPPORTED_VERSIONS
                ),
            );
            self.handshake_failed(violation.reason, &violation.message);
            self.refuse(violation).await;
            return None;
        };

        if hello.cluster != self.cluster {
            let message = format!(
                "the client certificate proves cluster {:?} but Hello claims {:?}",
                self.cluster, hello.cluster
            );
            self.shared
                .metrics
                .handshake_failures
                .with_label_values(&[handshake_reason::IDENTITY_MISMATCH])
                .inc();
            tracing::warn!(
                peer = %self.peer,
                certificate_cluster = %self.cluster,
                hello_cluster = %hello.cluster,
                "refusing agent: Hello claims another cluster than its certificate"
            );
            self.refuse(Violation::new(
                handshake_reason::IDENTITY_MISMATCH,
                ErrorCode::IdentityMismatch,
                message,
            ))
            .await;
            return None;
        }

        // Placement first, so the agent's first reports are judged at once
        // (bounded: the agent waits three heartbeat intervals for Welcome).
        self.shared.placements.want(&self.cluster);
        let wait = self.shared.heartbeat_interval.min(PLACEMENT_WAIT);
        if !self.shared.placements.wait_ready(&self.cluster, wait).await {
            tracing::info!(cluster = %self.cluster, ?wait, "the cluster's placement is not listed yet; its reports are held until it is");
        }

        let mode = match self.shared.store.position(&self.cluster) {
            Some(position)
                if hello.last_hub_epoch == Some(self.shared.hub_epoch)
                    && *position.session == *hello.session_id =>
            {
                SessionMode::Resume {
                    acked: position.seq,
                }
            }
            _ => SessionMode::Snapshot,
        };
        let welcome = HubFrame::Welcome(Welcome {
            protocol_version: version,
            hub_epoch: self.shared.hub_epoch,
            mode,
            heartbeat_interval_ms: u64::try_from(self.shared.heartbeat_interval.as_millis())
                .unwrap_or(u64::MAX),
            limits: self.shared.limits,
        });
        if let Err(error) = self.send(&welcome).await {
            self.handshake_failed(handshake_reason::WEBSOCKET, &error);
            return None;
        }
        Some((hello, mode))
    }

    /// The session after `Welcome`; returns why it ended.
    async fn run(
        &mut self,
        session: &str,
        shutdown: &CancellationToken,
        superseded: &CancellationToken,
    ) -> &'static str {
        // Only frames prove the agent alive; pings and pongs keep
        // intermediaries from idling the connection out, nothing more.
        let dead_after = self.shared.heartbeat_interval * 3;
        let mut deadline = Instant::now() + dead_after;
        let mut ping = tokio::time::interval_at(
            Instant::now() + self.shared.heartbeat_interval,
            self.shared.heartbeat_interval,
        );
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut snapshot: Option<SnapshotBuffer> = None;
        loop {
            let read = tokio::select! {
                biased;
                () = shutdown.cancelled() => {
                    let bye = HubFrame::Bye(Bye { reason: "hub shutting down".into() });
                    if self.send(&bye).await.is_ok() {
                        self.close(close::GOING_AWAY, "hub shutting down").await;
                    }
                    return "hub shutdown";
                }
                () = superseded.cancelled() => {
                    tracing::info!(cluster = %self.cluster, peer = %self.peer, "connection superseded by a newer one");
                    self.refuse(Violation::new("superseded", ErrorCode::Superseded, "a newer connection for this cluster replaced this one")).await;
                    return "superseded";
                }
                _ = ping.tick() => {
                    if let Err(error) = self.ws.send(Message::Ping(Default::default())).await {
                        tracing::info!(cluster = %self.cluster, peer = %self.peer, %error, "sending a ping failed");
                        return "transport error";
                    }
                    continue;
                }
                read = tokio::time::timeout_at(deadline, self.read_frame()) => read,
            };
            let frame = match read {
                Err(_) => {
                    // The close is attempted after the session is marked
                    // ended (see `serve`): a dead peer would hold it up.
                    tracing::info!(cluster = %self.cluster, peer = %self.peer, silent = ?dead_after, "no frame for three heartbeat intervals");
                    return SILENT;
                }
                Ok(Err(ReadError::Closed)) => return "closed by agent",
                Ok(Err(ReadError::Transport(error))) => {
                    tracing::info!(cluster = %self.cluster, peer = %self.peer, %error, "connection failed");
                    return "transport error";
                }
                Ok(Err(ReadError::Violation(violation))) => {
                    self.reject(violation).await;
                    return "protocol violation";
                }
                Ok(Ok(frame)) => {
                    deadline = Instant::now() + dead_after;
                    frame
                }
            };
            let result = match self.handle(session, frame, &mut snapshot).await {
                Ok(true) => self.throttle_if_behind().await.map(|()| true),
                other => other,
            };
            match result {
                Ok(true) => {}
                Ok(false) => return "bye",
                Err(violation) => {
                    self.reject(violation).await;
                    return "protocol violation";
                }
            }
        }
    }

    /// Handles one frame; `Ok(false)` when the session ends politely.
    async fn handle(
        &mut self,
        session: &str,
        frame: AgentFrame,
        snapshot: &mut Option<SnapshotBuffer>,
    ) -> Result<bool, Violation> {
        match frame {
            AgentFrame::Hello(_) => return Err(Violation::unexpected("a second Hello")),
            AgentFrame::Deltas(batch) => {
                if snapshot.is_some() {
                    return Err(Violation::unexpected("Deltas during a snapshot"));
                }
                self.count_deltas(batch.deltas.len());
                let highest = batch.deltas.iter().map(|d| d.seq).max().unwrap_or(0);
                let updates: Vec<Update> = batch
                    .deltas
                    .into_iter()
                    .filter_map(|delta| self.accept(delta))
                    .collect();
                {
                    // Judged and stored under the placement view's read lock:
                    // an unplacement cannot slip in between.
                    let view = self.shared.placements.read();
                    let mut accepted = Vec::with_capacity(updates.len());
                    let mut held = Vec::new();
                    for update in updates {
                        match view.verdict(&self.cluster, &update.key) {
                            Verdict::Accept => accepted.push(update),
                            Verdict::Hold => held.push(update),
                            Verdict::Reject(reason) => self.refuse_report(
                                &update.key,
                                update.seq,
                                reason,
                                "not authorized by placement",
                            ),
                        }
                    }
                    self.shared
                        .store
                        .apply(&self.cluster, session, accepted, held)
                        .map_err(store_violation)?;
                }
                // Refused deltas are acked too: the agent would resend them
                // on every reconnect, and they would never get better.
                let acked = self.shared.store.advance(&self.cluster, session, highest);
                self.send_ack(acked).await?;
            }
            AgentFrame::SnapshotBegin(begin) => {
                if snapshot.is_some() {
                    return Err(Violation::unexpected("SnapshotBegin during a snapshot"));
                }
                let max = self.shared.limits.max_objects_per_cluster;
                if begin.objects > max {
                    return Err(Violation::new(
                        "too_many_objects",
                        ErrorCode::LimitExceeded,
                        format!(
                            "a snapshot of {} objects exceeds the limit of {max} objects per cluster",
                            begin.objects
                        ),
                    ));
                }
                tracing::debug!(cluster = %self.cluster, objects = begin.objects, "snapshot begins");
                *snapshot = Some(SnapshotBuffer {
                    entries: HashMap::new(),
                    tombstones: HashSet::new(),
                });
            }
            AgentFrame::SnapshotChunk(chunk) => {
                let Some(buffer) = snapshot.as_mut() else {
                    return Err(Violation::unexpected("SnapshotChunk outside a snapshot"));
                };
                self.count_deltas(chunk.deltas.len());
                for delta in chunk.deltas {
                    let Some(update) = self.accept(delta) else {
                        continue;
                    };
                    // An Upsert is part of the snapshot; a Deleted one is not,
                    // and is re-evaluated once the snapshot is applied.
                    match update.entry {
                        Some(entry) => {
                            buffer.entries.insert(update.key, entry);
                        }
                        None => {
                            buffer.entries.remove(&update.key);
                            buffer.tombstones.insert(update.key);
                        }
                    }
                }
                // Deletions count too: a snapshot that names more objects
                // than a cluster may hold is refused whatever they are.
                let max = self.shared.limits.max_objects_per_cluster;
                if buffer.entries.len() as u64 > max || buffer.tombstones.len() as u64 > max {
                    return Err(Violation::new(
                        "too_many_objects",
                        ErrorCode::LimitExceeded,
                        format!("the snapshot exceeds the limit of {max} objects per cluster"),
                    ));
                }
            }
            AgentFrame::SnapshotEnd(end) => {
                let Some(buffer) = snapshot.take() else {
                    return Err(Violation::unexpected("SnapshotEnd outside a snapshot"));
                };
                let objects = buffer.entries.len();
                let mut accepted = HashMap::with_capacity(objects);
                let mut held = HashMap::new();
                let acked = {
                    let view = self.shared.placements.read();
                    for (key, entry) in buffer.entries {
                        match view.verdict(&self.cluster, &key) {
                            Verdict::Accept => {
                                accepted.insert(key, entry);
                            }
                            Verdict::Hold => {
                                held.insert(key, entry);
                            }
                            Verdict::Reject(reason) => {
                                self.refuse_report(
                                    &key,
                                    entry.seq,
                                    reason,
                                    "not authorized by placement",
                                );
                            }
                        }
                    }
                    // Objects deleted while a restarted hub was away are
                    // merged again, but only those placed on this cluster:
                    // nothing here may touch another tenant's object.
                    let deleted: Vec<ObjectKey> = buffer
                        .tombstones
                        .into_iter()
                        .filter(|key| {
                            !accepted.contains_key(key)
                                && view.verdict(&self.cluster, key) == Verdict::Accept
                        })
                        .collect();
                    let acked = self
                        .shared
                        .store
                        .replace_cluster(&self.cluster, session, accepted, held, end.seq)
                        .map_err(store_violation)?;
                    for key in deleted {
                        self.shared.write_queue.push(key);
                    }
                    acked
                };
                tracing::info!(cluster = %self.cluster, objects, held = self.shared.store.held(&self.cluster), seq = acked, "snapshot applied");
                self.send_ack(acked).await?;
            }
            AgentFrame::Heartbeat(heartbeat) => self.heartbeat(heartbeat).await?,
            AgentFrame::Bye(bye) => {
                tracing::info!(cluster = %self.cluster, reason = %bye.reason, "agent said goodbye");
                self.close(close::NORMAL, "bye").await;
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Tells the agent to pause when the KCP writer is behind (again once
    /// each pause is over, while it stays behind), and releases it once the
    /// writer caught up to half the threshold. Checked after every frame, so
    /// heartbeats release an agent that stopped sending.
    async fn throttle_if_behind(&mut self) -> Result<(), Violation> {
        let settings = self.shared.throttle;
        if settings.queue_depth == 0 {
            return Ok(());
        }
        let depth = self.shared.write_queue.len();
        let now = Instant::now();
        let frame = if depth >= settings.queue_depth {
            if self.throttled_until.is_some_and(|until| now < until) {
                return Ok(());
            }
            if self.throttled_until.is_none() {
                tracing::info!(cluster = %self.cluster, queue_depth = depth, pause = ?settings.pause, max_deltas_per_s = settings.max_deltas_per_s, "KCP writer behind; throttling the agent");
            }
            self.throttled_until = Some(now + settings.pause);
            self.shared
                .metrics
                .throttles
                .with_label_values(&[&self.cluster])
                .inc();
            Throttle {
                pause_ms: u64::try_from(settings.pause.as_millis()).unwrap_or(u64::MAX),
                max_deltas_per_s: settings.max_deltas_per_s,
            }
        } else if self.throttled_until.is_some() && depth < settings.queue_depth / 2 {
            tracing::info!(cluster = %self.cluster, queue_depth = depth, "KCP writer caught up; releasing the agent");
            self.throttled_until = None;
            Throttle {
                pause_ms: 0,
                max_deltas_per_s: 0,
            }
        } else {
            return Ok(());
        };
        self.send_or_end(&HubFrame::Throttle(frame)).await
    }

    async fn heartbeat(&mut self, heartbeat: Heartbeat) -> Result<(), Violation> {
        let now = SystemTime::now();
        self.shared
            .health
            .heartbeat(&self.cluster, heartbeat.agent_time_ms, now);
        if let Some(summary) = heartbeat.summary {
            self.shared.health.summary(&self.cluster, summary);
        }
        let ack = HubFrame::HeartbeatAck(HeartbeatAck {
            agent_time_ms: heartbeat.agent_time_ms,
            hub_time_ms: unix_ms(now),
        });
        self.send_or_end(&ack).await?;
        // Held reports refused since the last Ack: the agent learns them
        // now rather than with its next batch, which may be long away.
        let rejected = self.shared.rejections.take(&self.cluster);
        if !rejected.is_empty()
            && let Some(position) = self.shared.store.position(&self.cluster)
        {
            let ack = HubFrame::Ack(Ack {
                seq: position.seq,
                rejected,
            });
            self.send_or_end(&ack).await?;
        }
        Ok(())
    }

    /// Acknowledges up to `seq`, with the refusals the agent was not told yet.
    async fn send_ack(&mut self, seq: u64) -> Result<(), Violation> {
        let ack = Ack {
            seq,
            rejected: self.shared.rejections.take(&self.cluster),
        };
        self.send_or_end(&HubFrame::Ack(ack)).await
    }

    /// Refuses one report: counted, logged (rate-limited) and kept for the
    /// agent's next `Ack`.
    fn refuse_report(&self, key: &ObjectKey, seq: u64, reason: &'static str, detail: &str) {
        self.shared
            .rejections
            .reject(&self.cluster, key, seq, reason, detail);
    }

    fn count_deltas(&self, n: usize) {
        self.shared
            .metrics
            .deltas_received
            .with_label_values(&[&self.cluster])
            .inc_by(n as u64);
    }

    /// The store update for one delta, or `None` for a delta the hub cannot
    /// use: refused (counted, logged, told to the agent in its `Ack`), never
    /// the end of the session (one bad object must not block its cluster:
    /// the agent would resend it after every reconnect).
    fn accept(&self, delta: Delta) -> Option<Update> {
        match self.checked_entry(&delta) {
            Ok(entry) => Some(into_update(delta, entry)),
            Err(refusal) => {
                let key = ObjectKey::from(&delta.object);
                self.refuse_report(&key, delta.seq, refusal.reason, &refusal.message);
                None
            }
        }
    }

    /// Checks one delta; its store entry (`None` for a deletion) without the
    /// uid, which [`into_update`] moves in.
    fn checked_entry(&self, delta: &Delta) -> Result<Option<Entry>, Violation> {
        let object = &delta.object;
        if let Some((what, value)) = invalid_name(object, self.shared.require_workspace) {
            return Err(Violation::new(
                Rejected::INVALID_OBJECT,
                ErrorCode::Malformed,
                format!("delta {}: {what} {value:?} is not a valid name", delta.seq),
            ));
        }

        let entry = match &delta.change {
            Change::Deleted => None,
            Change::Upsert { status_json } => {
                let status: Value = serde_json::from_str(status_json).map_err(|e| {
                    Violation::new(
                        Rejected::STATUS_NOT_OBJECT,
                        ErrorCode::Malformed,
                        format!("delta {}: status_json is not JSON: {e}", delta.seq),
                    )
                })?;
                if !status.is_object() {
                    return Err(Violation::new(
                        Rejected::STATUS_NOT_OBJECT,
                        ErrorCode::Malformed,
                        format!("delta {}: status_json is not a JSON object", delta.seq),
                    ));
                }
                Some(Entry {
                    status: Arc::new(status),
                    generation: delta.generation,
                    observed_generation: delta.observed_generation,
                    observed_at_ms: delta.observed_at_ms,
                    seq: delta.seq,
                    uid: String::new(),
                })
            }
        };
        Ok(entry)
    }

    /// Reads the next agent frame, skipping pings and pongs.
    async fn read_frame(&mut self) -> Result<AgentFrame, ReadError> {
        loop {
            let message = match self.ws.next().await {
                None => return Err(ReadError::Closed),
                Some(Ok(message)) => message,
                Some(Err(WsError::Capacity(error))) => {
                    return Err(ReadError::Violation(Violation::new(
                        "frame_too_large",
                        ErrorCode::LimitExceeded,
                        format!(
                            "{error} (limit {} bytes)",
                            self.shared.limits.max_frame_bytes
                        ),
                    )));
                }
                Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => {
                    return Err(ReadError::Closed);
                }
                Some(Err(WsError::Protocol(error))) => {
                    return Err(ReadError::Violation(Violation::new(
                        "websocket_protocol",
                        ErrorCode::Malformed,
                        format!("WebSocket protocol error: {error}"),
                    )));
                }
                Some(Err(error)) => return Err(ReadError::Transport(error)),
            };
            match message {
                Message::Binary(bytes) => {
                    return decode_agent_frame(&bytes, &self.shared.limits)
                        .map_err(|e| ReadError::Violation(e.into()));
                }
                Message::Text(_) => {
                    return Err(ReadError::Violation(Violation::new(
                        "text_message",
                        ErrorCode::Malformed,
                        "frames are binary messages; got a text message",
                    )));
                }
                Message::Close(_) => return Err(ReadError::Closed),
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    }

    /// Sends one frame, giving up when the agent does not read for three
    /// heartbeat intervals.
    async fn send(&mut self, frame: &HubFrame) -> Result<(), String> {
        let bytes = encode(frame).map_err(|e| e.to_string())?;
        let limit = self.shared.heartbeat_interval * 3;
        match tokio::time::timeout(limit, self.ws.send(Message::Binary(bytes.into()))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!("the agent did not read for {limit:?}")),
        }
    }

    /// Sends a frame during the session; failing to is the end of it (the
    /// transport is gone, so nothing more is said to the agent).
    async fn send_or_end(&mut self, frame: &HubFrame) -> Result<(), Violation> {
        self.send(frame).await.map_err(|error| {
            tracing::info!(cluster = %self.cluster, peer = %self.peer, %error, "sending to the agent failed");
            Violation::new("send_failed", ErrorCode::Internal, error)
        })
    }

    /// Refuses a frame during the session: counted per cluster, logged, then
    /// the agent is told why and the connection closed.
    async fn reject(&mut self, violation: Violation) {
        if violation.reason == "send_failed" {
            return; // the transport is gone; nothing to tell the agent
        }
        self.shared
            .metrics
            .frames_rejected
            .with_label_values(&[&self.cluster, violation.reason])
            .inc();
        tracing::warn!(
            cluster = %self.cluster,
            peer = %self.peer,
            reason = violation.reason,
            code = ?violation.code,
            error = %violation.message,
            "refusing frame; closing the session"
        );
        self.refuse(violation).await;
    }

    fn handshake_failed(&self, reason: &'static str, detail: &str) {
        self.shared
            .metrics
            .handshake_failures
            .with_label_values(&[reason])
            .inc();
        tracing::warn!(cluster = %self.cluster, peer = %self.peer, reason, %detail, "agent handshake failed");
    }

    /// Sends `Error` and closes with the code the error calls for.
    async fn refuse(&mut self, violation: Violation) {
        let close_code = violation.code.close_code();
        let frame = HubFrame::Error(ErrorFrame::new(violation.code, violation.message));
        if self.send(&frame).await.is_ok() {
            self.close(close_code, violation.reason).await;
        }
    }

    /// Closes the WebSocket with `code`, then lets the agent's last bytes
    /// drain, so the close is not lost to a TCP reset.
    async fn close(&mut self, code: u16, reason: &str) {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.to_owned().into(),
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            if self.ws.close(Some(frame)).await.is_err() {
                return;
            }
            // The raw stream: after a refused oversized message the rest of
            // it is still in flight and is not a WebSocket frame.
            let stream = self.ws.get_mut();
            let _ = stream.shutdown().await;
            let mut sink = [0u8; 8192];
            let mut budget = self.shared.limits.max_frame_bytes as usize + 64 * 1024;
            while budget > 0 {
                match stream.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => budget = budget.saturating_sub(n),
                }
            }
        })
        .await;
    }
}

fn store_violation(error: StoreError) -> Violation {
    match error {
        StoreError::TooManyObjects { .. } => Violation::new(
            "too_many_objects",
            ErrorCode::LimitExceeded,
            error.to_string(),
        ),
    }
}
/// A checked delta as a store update: its strings taken over, not copied
/// (this runs once per delta).
fn into_update(delta: Delta, entry: Option<Entry>) -> Update {
    let uplink_protocol::ObjectRef {
        group,
        version,
        resource,
        kind,
        workspace,
        namespace,
        name,
        uid,
    } = delta.object;
    Update {
        key: ObjectKey {
            workspace,
            group,
            version,
            resource,
            kind,
            namespace,
            name,
        },
        seq: delta.seq,
        entry: entry.map(|entry| Entry { uid, ..entry }),
    }
}
