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
//! [`run`] again. Nor is finding the replicas: [`crate::replicas`] keeps one
//! reconnect loop per replica, each with its own [`SessionContext::replica`].
//!
//! With replicas (protocol version 4) a session tells the outbox's routes
//! what its replica holds (`Welcome.shards`, then every `Shards` frame),
//! sends only the entries routed to it, and sends a snapshot of the shards
//! the replica asks for (one at a time; a request that comes while one is
//! waiting is merged into it). When the session ends its replica routes
//! nothing.
//!
//! In flow order: `dial` (TCP, TLS, WebSocket), `handshake` (`Hello` →
//! `Welcome` → resume or snapshot), then this module's steady state, which
//! waits on the hub, the heartbeat ticker, the outbox and the apply stage and
//! hands each to its lane: `upward` (outbox batches out, `Ack` and
//! `Throttle` in, packed into frames by `batch`), `downward` (protocol
//! version 2: placed objects in, to the apply stage, `DownwardAck` out),
//! `heartbeat`, `events` (protocol version 3: event series out, only when
//! no status is ready to go); last `shutdown` (flush, `Bye`, close). `wire`
//! sends and reads frames.

mod batch;
mod dial;
mod downward;
mod events;
mod handshake;
mod heartbeat;
mod shutdown;
mod upward;
mod wire;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::SplitStream;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;
use uplink_protocol::{ErrorCode, HubFrame, Limits, SUBPROTOCOL, decode_hub_frame};

pub use self::dial::{HubEndpoint, HubUrlError};
use self::dial::{Ws, connect};
use self::downward::{DownwardLane, next_done};
use self::events::{events_changed, sleep_until_due};
use self::handshake::converse;
pub use self::heartbeat::{heartbeat_interval, session_interval};
use self::wire::{Sender, frame_name, refused};
use crate::apply::Applier;
use crate::apply::queue::Done;
use crate::clock::AgentClock;
use crate::events::SharedEventLane;
use crate::health::AgentHealth;
use crate::metrics::Metrics;
use crate::outbox::{OutboxChanges, SharedOutbox};
use crate::routes::{Holding, ReplicaId, ShardSet};

/// Everything a session needs that outlives one connection.
#[derive(Debug, Clone)]
pub struct SessionContext {
    pub cluster: String,
    /// Random per agent process; stable across its reconnects.
    pub session_id: String,
    pub hub: HubEndpoint,
    /// Which replica this session is with (the outbox's routes and acks
    /// are per replica).
    pub replica: ReplicaId,
    /// How logs and metrics name the replica: its URL, or its address when
    /// resolved from a Service name.
    pub replica_name: Arc<str>,
    /// The TLS configuration, read at each connection attempt: a rotated
    /// certificate serves the next handshake.
    pub tls: Arc<crate::tls::reload::ClientTls>,
    /// The agent's own heartbeat interval (see [`heartbeat_interval`]).
    pub heartbeat_interval: Duration,
    pub outbox: SharedOutbox,
    pub metrics: Metrics,
    pub health: AgentHealth,
    pub clock: AgentClock,
    /// Applies what the hub sends down; `None`: status only. The versions
    /// the agent offers follow what it does (`handshake::offered_versions`):
    /// 1 for status alone, up to 3 when it reports events or upsyncs.
    pub downward: Option<Arc<Applier>>,
    /// The events to report; `None`: not reported.
    pub events: Option<SharedEventLane>,
    /// The types the agent upsyncs (protocol version 3).
    pub upsync_resources: Vec<crate::config::ResourceSpec>,
    /// Set from every version 3 `Welcome` that names the cluster's
    /// SyncTarget: the upsync watches select by its key.
    pub sync_target: tokio::sync::watch::Sender<Option<uplink_protocol::SyncTargetLocator>>,
    /// How many upsync watches have a complete list
    /// ([`crate::inventory::Inventory::upsync_listed`]).
    pub upsync_listed: tokio::sync::watch::Receiver<usize>,
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
    /// The hub answered the upgrade with an HTTP error, saying why in its
    /// body (a certificate naming no cluster, a wrong path).
    #[error("the hub refused the WebSocket upgrade with HTTP {status}: {body}")]
    UpgradeRefused { status: u16, body: String },
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

impl SessionError {
    /// A failed upgrade; an HTTP refusal keeps the hub's reason (its body,
    /// cut to 512 bytes: it is logged).
    fn from_handshake(error: tungstenite::Error) -> Self {
        match error {
            tungstenite::Error::Http(response) => {
                let body = response.body().as_deref().unwrap_or_default();
                let body = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
                Self::UpgradeRefused {
                    status: response.status().as_u16(),
                    body,
                }
            }
            other => Self::Handshake(other),
        }
    }
}

/// How one session went: the outcome, and how long it was established.
#[derive(Debug)]
pub struct SessionReport {
    /// Time between `Welcome` and the end; `None` if never welcomed.
    pub established_for: Option<Duration>,
    pub outcome: Result<SessionEnd, SessionError>,
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

/// The established part of a session.
struct Steady<'a> {
    ctx: &'a SessionContext,
    /// The protocol version negotiated: below 3, upsynced objects travel
    /// as status only.
    version: u16,
    limits: Limits,
    /// This session's heartbeat interval: the one its replica last asked
    /// for (`Welcome.shards`, then every `Shards` frame), else the shorter
    /// of the agent's and the `Welcome`'s ([`session_interval`]). The
    /// ticker, the pings and the dead-hub timeout follow it.
    heartbeat: Duration,
    /// `Welcome.heartbeat_interval_ms`, to judge what a replica asks for.
    welcome_heartbeat_ms: u64,
    last_received: Instant,
    paused_until: Option<Instant>,
    max_deltas_per_s: u32,
    next_send_at: Instant,
    last_summary: Option<uplink_protocol::ClusterSummary>,
    /// When a heartbeat last carried the summary.
    last_summary_sent: Instant,
    /// The downward lane, when the session speaks version 2 and the agent
    /// applies.
    downward: Option<DownwardLane>,
    /// What the lane's apply stage finished (taken by [`Steady::run`]).
    downward_done: Option<tokio::sync::mpsc::UnboundedReceiver<Done>>,
    /// The event lane, when the session speaks version 3 and the agent
    /// reports events.
    events: Option<SharedEventLane>,
    /// The shard count the replica announced (version 4).
    shard_count: Option<u16>,
    /// Shards the replica asked a snapshot of, not sent yet.
    snapshot_due: Option<ShardSet>,
    /// Wake-ups from the outbox.
    outbox_changes: OutboxChanges,
}

impl Steady<'_> {
    async fn run(
        &mut self,
        tx: &mut Sender,
        stream: &mut SplitStream<Ws>,
        stop: &CancellationToken,
    ) -> Result<SessionEnd, SessionError> {
        let mut ticking = self.heartbeat;
        let mut ticker = tokio::time::interval(ticking);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut downward_done = self.downward_done.take();
        let mut event_changes = self.events.as_ref().map(SharedEventLane::subscribe);
        loop {
            if let Some(shards) = self.snapshot_due.take() {
                match self.send_shard_snapshot(tx, shards).await {
                    Ok(()) => {}
                    Err(SessionError::Stopped) => {
                        self.shut_down(tx, stream).await;
                        return Ok(SessionEnd::Shutdown);
                    }
                    Err(e) => return Err(e),
                }
            }
            let replica = self.ctx.replica;
            let has_unsent = self.ctx.outbox.lock().has_unsent(replica);
            let send_at = self.send_at();
            // Events go only while no status is ready to go (none waits, or
            // the hub paused it).
            let status_ready = has_unsent && send_at <= Instant::now();
            let events_due = self.events_due();
            if self.heartbeat != ticking {
                // The replica asked for another interval: the next
                // heartbeat one new interval from now.
                ticking = self.heartbeat;
                ticker = tokio::time::interval_at(Instant::now() + ticking, ticking);
                ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
            }
            let dead_after = self.heartbeat * 3;
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
                () = self.outbox_changes.changed(), if !has_unsent => Ok(()),
                done = next_done(&mut downward_done) => self.downward_done(done, tx).await,
                () = sleep_until_due(events_due), if events_due.is_some() && !status_ready => {
                    self.send_events(tx).await
                }
                () = events_changed(event_changes.as_mut()), if events_due.is_none() => Ok(()),
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

    /// Handles one message from the hub, each frame in its lane; `Some`
    /// when the hub ended the session politely.
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
            // The upward lane: acks (with refusals) and throttles.
            HubFrame::Ack(ack) => self.acked(&ack),
            HubFrame::Throttle(throttle) => self.throttle(throttle),
            HubFrame::HeartbeatAck(ack) => self.heartbeat_acked(&ack),
            HubFrame::Error(e) => return Err(refused(&self.ctx.metrics, e.code, e.message)),
            HubFrame::Bye(bye) => return Ok(Some(SessionEnd::HubBye(bye.reason))),
            HubFrame::Welcome(_) => return Err(SessionError::Protocol("second Welcome".into())),
            HubFrame::Shards(held) => self.shards(held)?,
            frame @ (HubFrame::Downward(_)
            | HubFrame::DownwardSnapshotBegin(_)
            | HubFrame::DownwardSnapshotChunk(_)
            | HubFrame::DownwardSnapshotEnd(_)) => match &mut self.downward {
                Some(lane) => lane.receive(frame, self.shard_count)?,
                None => {
                    return Err(SessionError::Protocol(format!(
                        "{} in a status-only session",
                        frame_name(&frame)
                    )));
                }
            },
        }
        Ok(None)
    }
}

impl Steady<'_> {
    /// The replica holds other shards now: routes follow, and the shards
    /// it asks a snapshot of are due.
    fn shards(&mut self, held: uplink_protocol::ShardsHeld) -> Result<(), SessionError> {
        if self.version < uplink_protocol::REPLICAS_VERSION {
            return Err(SessionError::Protocol(format!(
                "Shards in a session of protocol version {}",
                self.version
            )));
        }
        self.shard_count = Some(held.count);
        self.set_heartbeat(session_interval(
            self.ctx.heartbeat_interval,
            self.welcome_heartbeat_ms,
            held.heartbeat_interval_ms,
        ));
        let snapshot: std::collections::BTreeSet<u16> = held.snapshot.iter().map(|s| s.0).collect();
        let count = held.count;
        let changed = self.ctx.outbox.lock().hold(
            self.ctx.replica,
            &self.ctx.replica_name,
            &Holding::Shards(held),
        );
        if changed {
            // Other sessions may have lost entries to this one or gained
            // some from it.
            self.ctx.outbox.notify();
        }
        if !snapshot.is_empty() {
            let asked = ShardSet::Shards {
                count,
                shards: snapshot,
            };
            match &mut self.snapshot_due {
                Some(due) => due.merge(asked),
                None => self.snapshot_due = Some(asked),
            }
        }
        Ok(())
    }
}
