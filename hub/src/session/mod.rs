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
//!
//! In flow order: `handshake` (`Hello` → placement wait → `Welcome`,
//! resume or snapshot), then this module's run loop, which hands each frame
//! to its lane: `upward` (deltas and snapshots, judged against placement
//! and acked), `heartbeat`, `downward` (protocol version 2: the objects KCP
//! placed on the cluster, sent as the window allows, and the agent's
//! acknowledgements), `events` (protocol version 3: event series about
//! placed objects, best effort, for the event writer), and, within
//! `upward`, `upsync` (version 3: whole objects born in the cluster, for
//! the upsync writer); after every frame `throttle` slows the agent down
//! while the KCP writer is behind on its cluster's changes. `wire` reads and sends frames and
//! refuses and closes; `connections` keeps one live connection per cluster.

mod connections;
mod downward;
mod events;
mod handshake;
mod heartbeat;
mod shards;
mod throttle;
mod upsync;
mod upward;
mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::SinkExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use uplink_protocol::resource::ResourceSpec;
use uplink_protocol::{AgentFrame, Bye, ErrorCode, HubFrame, Limits, close};

pub use self::connections::Connections;
use self::downward::DownwardLane;
pub use self::events::EventRates;
pub use self::shards::KEEPALIVE_FACTOR;
pub use self::throttle::ThrottleSettings;
use self::upward::SnapshotBuffer;
use self::wire::{ReadError, Violation};
use crate::capacity::ReportBounds;
use crate::downstream::Downstream;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::placement::Placements;
use crate::rejection::Rejections;
use crate::server::HelloSlot;
use crate::store::Store;
use crate::writer::WriteQueue;
use crate::writer::events::EventQueue;
use crate::writer::finalizer::Finalizers;

/// What every session of one hub shares.
#[derive(Debug)]
pub struct SessionShared {
    pub store: Arc<Store>,
    /// What goes down to each cluster (protocol version 2).
    pub downstream: Arc<Downstream>,
    /// The hub's finalizers on what the clusters apply.
    pub finalizers: Arc<Finalizers>,
    /// What KCP placed on each cluster: what a cluster may report.
    pub placements: Arc<Placements>,
    /// Refused reports, kept for each agent's next `Ack`.
    pub rejections: Arc<Rejections>,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    pub connections: Connections,
    pub limits: Limits,
    pub heartbeat_interval: Duration,
    /// Random per hub start; an agent that saw another epoch must snapshot.
    pub hub_epoch: u64,
    /// Whether objects must name a workspace (KCP upstream).
    pub require_workspace: bool,
    /// The KCP writer's queue, whose backlog per cluster decides when a
    /// cluster's agent is throttled.
    pub write_queue: Arc<WriteQueue>,
    pub throttle: ThrottleSettings,
    /// What a cluster's heartbeat report (clock, summary) must keep to.
    pub report_bounds: ReportBounds,
    /// The event writer's queue (protocol version 3).
    pub event_queue: Arc<EventQueue>,
    /// Each cluster's event rate, across its connections.
    pub event_rates: Arc<EventRates>,
    /// The upsync writer's queue and UID map (protocol version 3).
    pub upsync: Arc<crate::writer::upsync::Upsync>,
    /// Which shards this hub holds (protocol version 4 tells agents).
    pub ownership: crate::replicas::Ownership,
    /// `uplink_hub_unheld_shard_items_total{kind}`: reports of shards this
    /// replica does not hold, acknowledged and dropped.
    pub unheld: prometheus::IntCounterVec,
}

/// What the listener hands a new session about its `Hello`: when it is
/// due, and the connection's place among those waiting for one (freed once
/// it arrives; a newer connection may displace this one before that).
#[derive(Debug)]
pub struct HelloWait {
    pub deadline: Instant,
    pub slot: HelloSlot,
}

/// Serves one agent on an established WebSocket whose TLS client certificate
/// proved `identity`.
pub async fn serve<S>(
    shared: Arc<SessionShared>,
    ws: WebSocketStream<S>,
    identity: String,
    peer: SocketAddr,
    hello: HelloWait,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let shared_interval = shared.heartbeat_interval;
    let mut conn = Connection {
        ws,
        peer,
        cluster: identity,
        shared,
        throttled_until: None,
        version: 0,
        refused_report: None,
        last_sent: Instant::now(),
        upsync: Vec::new(),
        shards: None,
        interval: shared_interval,
        interval_told_at: Instant::now(),
        connection: None,
    };
    let Some((hello, mode)) = Box::pin(conn.handshake(hello, &shutdown)).await else {
        return;
    };
    let (id, superseded) = conn.shared.connections.register(&conn.cluster);
    conn.connection = Some(id);
    conn.shared
        .health
        .session_started(&conn.cluster, id, &hello.session_id, &hello.agent_version);
    if conn.interval != conn.shared.heartbeat_interval {
        // A replica that asked for keepalives: the cluster's health
        // follows them.
        conn.shared.health.interval_told(
            &conn.cluster,
            id,
            conn.interval,
            std::time::SystemTime::now(),
        );
    }
    conn.shared.metrics.agents_connected.inc();
    tracing::info!(
        cluster = %conn.cluster,
        peer = %conn.peer,
        session = %hello.session_id,
        agent_version = %hello.agent_version,
        ?mode,
        "agent connected"
    );

    let end = match Box::pin(conn.open_downward(&hello)).await {
        Ok(lane) => {
            conn.run(&hello.session_id, lane.as_ref(), &shutdown, &superseded)
                .await
        }
        Err(violation) => {
            Box::pin(conn.reject(violation)).await;
            "transport error"
        }
    };

    conn.shared.metrics.agents_connected.dec();
    // No snapshot of a shard just taken over is awaited from it any more;
    // unless a newer connection of the cluster superseded it: what is
    // awaited is that one's (asked for in its handshake, before it was
    // registered).
    if conn.shared.connections.unregister(&conn.cluster, id) {
        conn.shared.ownership.gathered(&conn.cluster, None);
    }
    conn.shared.health.session_ended(&conn.cluster, id);
    tracing::info!(cluster = %conn.cluster, peer = %conn.peer, reason = end, "agent disconnected");
    if end == SILENT {
        Box::pin(conn.close(close::GOING_AWAY, "silent for three heartbeat intervals")).await;
    }
}

/// Why a session ended when the agent stopped sending frames.
const SILENT: &str = "silent";

/// The byte stream under an agent's WebSocket (`serve` takes any, the
/// server gives it TLS); one name for the bound every lane's methods need.
trait Transport: AsyncRead + AsyncWrite + Unpin {}

impl<T: AsyncRead + AsyncWrite + Unpin> Transport for T {}

struct Connection<S> {
    ws: WebSocketStream<S>,
    peer: SocketAddr,
    cluster: String,
    shared: Arc<SessionShared>,
    /// While the agent is throttled: when its pause ends.
    throttled_until: Option<Instant>,
    /// The protocol version negotiated in the handshake.
    version: u16,
    /// Why this connection's last heartbeat report was refused, if it was
    /// (logged once per reason).
    refused_report: Option<&'static str>,
    /// When the hub last sent the agent a frame or a ping.
    last_sent: Instant,
    /// The types this session upsyncs: those its agent names in `Hello`
    /// that the hub accepts (`--upsync-resources`).
    upsync: Vec<ResourceSpec>,
    /// Version 4 with a replicated hub: the shards told held, and their
    /// changes to follow (taken by the run loop).
    shards: Option<self::shards::ShardsTold>,
    /// The heartbeat interval last told to the agent: the configured one,
    /// unless a replica asked for keepalives
    /// (`ShardsHeld.heartbeat_interval_ms`). The dead-connection timeout
    /// and the pings follow it.
    interval: std::time::Duration,
    /// When the interval last shrank (or the session began): three
    /// intervals without a frame count from no earlier than this, since
    /// the agent needs time to hear of it.
    interval_told_at: Instant,
    /// The hub's id of this connection, once registered.
    connection: Option<u64>,
}

impl<S: Transport> Connection<S> {
    /// The session after `Welcome`; returns why it ended.
    async fn run(
        &mut self,
        session: &str,
        lane: Option<&DownwardLane>,
        shutdown: &CancellationToken,
        superseded: &CancellationToken,
    ) -> &'static str {
        // The loop waits in its select for hours per agent, so that wait is
        // all its future holds: handling a frame and the rare branches
        // (reject, close, downward sends) run in boxed futures of their own.
        //
        // Only frames prove the agent alive. A ping keeps intermediaries
        // from idling the connection out, and is sent only when the hub has
        // sent nothing for a heartbeat interval: a connected agent's
        // heartbeats are answered every interval, so in the steady state
        // there is none (a ping and its pong were a third of the idle CPU
        // at 10,000 agents). Both follow the interval last told to the
        // agent, which a replica may change with its shards.
        let mut last_frame = Instant::now();
        let mut deadline = self.dead_at(last_frame);
        let ping = tokio::time::sleep(self.interval);
        tokio::pin!(ping);
        let mut snapshot: Option<SnapshotBuffer> = None;
        let mut shards = self.shards.take();
        if let Some(lane) = lane
            && let Err(violation) = Box::pin(self.send_downward(lane)).await
        {
            Box::pin(self.reject(violation)).await;
            return "protocol violation";
        }
        loop {
            let downward_ready = async {
                match lane {
                    Some(lane) => lane.wake.notified().await,
                    None => std::future::pending().await,
                }
            };
            let shards_changed = async {
                match shards.as_mut() {
                    Some(told) => told.changed().await,
                    None => std::future::pending().await,
                }
            };
            let read = tokio::select! {
                biased;
                () = shutdown.cancelled() => {
                    let bye = HubFrame::Bye(Bye { reason: "hub shutting down".into() });
                    if Box::pin(self.send(&bye)).await.is_ok() {
                        Box::pin(self.close(close::GOING_AWAY, "hub shutting down")).await;
                    }
                    return "hub shutdown";
                }
                () = superseded.cancelled() => {
                    tracing::info!(cluster = %self.cluster, peer = %self.peer, "connection superseded by a newer one");
                    Box::pin(self.refuse(Violation::new("superseded", ErrorCode::Superseded, "a newer connection for this cluster replaced this one"))).await;
                    return "superseded";
                }
                () = downward_ready => {
                    if let Some(lane) = lane
                        && let Err(violation) = Box::pin(self.send_downward(lane)).await
                    {
                        Box::pin(self.reject(violation)).await;
                        return "protocol violation";
                    }
                    continue;
                }
                changed = shards_changed => {
                    match shards.as_mut() {
                        Some(told) if changed => {
                            let before = self.interval;
                            if let Err(violation) = Box::pin(self.send_shards(told)).await {
                                Box::pin(self.reject(violation)).await;
                                return "protocol violation";
                            }
                            if self.interval != before {
                                deadline = self.dead_at(last_frame);
                                ping.as_mut().reset(self.last_sent + self.interval);
                            }
                        }
                        // The fence is gone (the hub is stopping).
                        _ => shards = None,
                    }
                    continue;
                }
                () = &mut ping => {
                    let due = self.last_sent + self.interval;
                    if due > Instant::now() {
                        ping.as_mut().reset(due);
                        continue;
                    }
                    if let Err(error) = self.ws.send(Message::Ping(Default::default())).await {
                        tracing::info!(cluster = %self.cluster, peer = %self.peer, %error, "sending a ping failed");
                        return "transport error";
                    }
                    self.last_sent = Instant::now();
                    ping.as_mut().reset(self.last_sent + self.interval);
                    continue;
                }
                read = tokio::time::timeout_at(deadline, self.read_frame()) => read,
            };
            let frame = match read {
                Err(_) => {
                    // The close is attempted after the session is marked
                    // ended (see `serve`): a dead peer would hold it up.
                    tracing::info!(cluster = %self.cluster, peer = %self.peer, silent = ?self.interval * 3, "no frame for three heartbeat intervals");
                    return SILENT;
                }
                Ok(Err(ReadError::Closed)) => return "closed by agent",
                Ok(Err(ReadError::Transport(error))) => {
                    tracing::info!(cluster = %self.cluster, peer = %self.peer, %error, "connection failed");
                    return "transport error";
                }
                Ok(Err(ReadError::Violation(violation))) => {
                    Box::pin(self.reject(violation)).await;
                    return "protocol violation";
                }
                Ok(Ok(frame)) => {
                    last_frame = Instant::now();
                    deadline = self.dead_at(last_frame);
                    frame
                }
            };
            let result = match Box::pin(self.handle(session, frame, lane, &mut snapshot)).await {
                Ok(true) => Box::pin(self.throttle_if_behind()).await.map(|()| true),
                other => other,
            };
            match result {
                Ok(true) => {}
                Ok(false) => return "bye",
                Err(violation) => {
                    Box::pin(self.reject(violation)).await;
                    return "protocol violation";
                }
            }
        }
    }

    /// When the session counts as dead if no frame arrives after the one
    /// at `last_frame`: three intervals after it, or after the interval
    /// last shrank if that was later.
    fn dead_at(&self, last_frame: Instant) -> Instant {
        last_frame.max(self.interval_told_at) + self.interval * 3
    }

    /// Handles one frame, each in its lane; `Ok(false)` when the session
    /// ends politely.
    async fn handle(
        &mut self,
        session: &str,
        frame: AgentFrame,
        lane: Option<&DownwardLane>,
        snapshot: &mut Option<SnapshotBuffer>,
    ) -> Result<bool, Violation> {
        match frame {
            AgentFrame::Hello(_) => return Err(Violation::unexpected("a second Hello")),
            // The upward lane: status reports, as deltas or a snapshot.
            AgentFrame::Deltas(batch) => self.deltas(session, batch, snapshot).await?,
            AgentFrame::SnapshotBegin(begin) => self.snapshot_begin(&begin, snapshot)?,
            AgentFrame::SnapshotChunk(chunk) => self.snapshot_chunk(chunk, snapshot)?,
            AgentFrame::SnapshotEnd(end) => self.snapshot_end(session, &end, snapshot).await?,
            AgentFrame::Heartbeat(heartbeat) => self.heartbeat(heartbeat).await?,
            // The downward lane: what the agent applied.
            AgentFrame::DownwardAck(ack) => match lane {
                Some(lane) => self.downward_ack(&ack, lane).await?,
                None => {
                    return Err(Violation::unexpected("DownwardAck without a downward lane"));
                }
            },
            // The events lane: best effort, nothing answered.
            AgentFrame::Events(batch) => self.events(batch)?,
            AgentFrame::Bye(bye) => {
                tracing::info!(cluster = %self.cluster, reason = %bye.reason, "agent said goodbye");
                self.close(close::NORMAL, "bye").await;
                return Ok(false);
            }
        }
        Ok(true)
    }
}
