//! The session's start: `Hello` → `Welcome` (within three heartbeat
//! intervals), then resume (resend what the hub has not acknowledged) or
//! snapshot (every object), as the hub decided, and on to the steady state.

use futures::StreamExt;
use futures::stream::SplitStream;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uplink_protocol::{
    AgentFrame, DOWNWARD_VERSION, EVENTS_VERSION, Hello, HubFrame, Limits, REPLICAS_VERSION,
    SessionMode, Welcome,
};

use super::dial::Ws;
use super::downward::DownwardLane;
use super::heartbeat::{heartbeat_interval, session_interval};
use super::upward::send_snapshot;
use super::wire::{Sender, frame_name, next_frame, refused};
use super::{Resumption, SessionContext, SessionEnd, SessionError, Steady};
use std::sync::Arc;

use crate::health::AgentHealth;
use crate::metrics::Metrics;
use crate::outbox::SharedOutbox;
use crate::routes::{Holding, ReplicaId, ShardSet};

/// The protocol versions an agent that applies or reports events speaks:
/// status only (1), the downward lane (2), events (3) and replicas (4).
/// Versions 3 and 4 keep version 2's rules: a hub opens the downward lane
/// only for an agent that names types it applies.
const FULL_VERSIONS: &[u16] = &[1, DOWNWARD_VERSION, EVENTS_VERSION, REPLICAS_VERSION];
/// The protocol versions a status-only agent speaks: 1, and 4, which a
/// replicated hub requires (it sends no downward or event frames to an
/// agent that names no types and reports no events).
const STATUS_VERSIONS: &[u16] = &[1, REPLICAS_VERSION];

/// What this agent offers in `Hello`: more than version 1 only when it
/// applies, reports events or upsyncs.
fn offered_versions(ctx: &SessionContext) -> &'static [u16] {
    if ctx.downward.is_some() || ctx.events.is_some() || !ctx.upsync_resources.is_empty() {
        FULL_VERSIONS
    } else {
        STATUS_VERSIONS
    }
}

/// Hello → Welcome → resume or snapshot → steady state.
pub(super) async fn converse(
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
    let offered = offered_versions(ctx);

    let hello = Hello {
        protocol_versions: offered.to_vec(),
        cluster: ctx.cluster.clone(),
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        session_id: ctx.session_id.clone(),
        last_hub_epoch: resumption.last_hub_epoch,
        last_ack: ctx.outbox.lock().acked(ctx.replica),
        downward_resources: ctx
            .downward
            .as_ref()
            .map(|applier| applier.types().iter().map(ToString::to_string).collect())
            .unwrap_or_default(),
        upsync_resources: ctx
            .upsync_resources
            .iter()
            .map(ToString::to_string)
            .collect(),
    };
    tx.frame(&AgentFrame::Hello(hello)).await?;

    let welcome_wait = ctx.heartbeat_interval * 3;
    let welcome = tokio::select! {
        () = stop.cancelled() => return Ok(SessionEnd::Shutdown),
        welcome = tokio::time::timeout(welcome_wait, read_welcome(&mut stream, &recv_limits, &ctx.metrics)) => {
            welcome.map_err(|_| SessionError::Timeout("waiting for Welcome"))??
        }
    };
    if !offered.contains(&welcome.protocol_version) {
        return Err(SessionError::Protocol(format!(
            "Welcome chose protocol version {}, the agent offered only {offered:?}",
            welcome.protocol_version
        )));
    }
    resumption.last_hub_epoch = Some(welcome.hub_epoch);
    // Upsync needs version 3: a version 2 hub names the SyncTarget too, but
    // would refuse the objects.
    if welcome.protocol_version >= EVENTS_VERSION
        && let Some(target) = &welcome.sync_target
    {
        ctx.sync_target.send_if_modified(|known| {
            let changed = known.as_ref() != Some(target);
            if changed {
                *known = Some(target.clone());
            }
            changed
        });
    }
    *established_at = Some(Instant::now());
    let _connected = ConnectedGuard::new(ctx);
    let limits = welcome.limits;
    let heartbeat = heartbeat_interval(ctx.heartbeat_interval, welcome.heartbeat_interval_ms);

    // What the replica holds (everything, from a hub that is not
    // replicated): the routes follow for as long as the session lasts.
    let shards = welcome
        .shards
        .as_ref()
        .filter(|_| welcome.protocol_version >= REPLICAS_VERSION);
    let _routes = RoutesGuard::hold(ctx, &Holding::from_welcome(shards));
    let shard_count = shards.map(|held| held.count);
    // Shards the replica asks a snapshot of besides a snapshot of all it holds.
    let mut snapshot_due =
        shards
            .filter(|held| !held.snapshot.is_empty())
            .map(|held| ShardSet::Shards {
                count: held.count,
                shards: held.snapshot.iter().map(|s| s.0).collect(),
            });

    match welcome.mode {
        SessionMode::Resume { acked } => {
            ctx.metrics.sessions.with_label_values(&["resume"]).inc();
            let mut outbox = ctx.outbox.lock();
            let agent_acked = outbox.acked(ctx.replica);
            if acked < agent_acked {
                tracing::warn!(
                    hub_acked = acked,
                    agent_acked,
                    "hub resumes before our last ack; entries in between were already dropped"
                );
            }
            outbox.resume(ctx.replica, acked);
            tracing::info!(cluster = %ctx.cluster, replica = %ctx.replica_name, hub_epoch = welcome.hub_epoch, acked, pending = outbox.pending_len(), "session resumed");
        }
        SessionMode::Snapshot => {
            ctx.metrics.sessions.with_label_values(&["snapshot"]).inc();
            let upsync_listed = if welcome.protocol_version >= EVENTS_VERSION {
                upsync_listed(ctx, heartbeat * 2, stop).await
            } else {
                false
            };
            ctx.outbox.lock().restart(ctx.replica);
            // Everything the replica holds (all of it, from a hub that is
            // not replicated).
            let covered = match shards {
                None => ShardSet::Everything,
                Some(held) => ShardSet::Shards {
                    count: held.count,
                    shards: held.held.iter().map(|claim| claim.shard.0).collect(),
                },
            };
            send_snapshot(
                ctx,
                &mut tx,
                &limits,
                welcome.protocol_version,
                upsync_listed,
                &covered,
            )
            .await?;
            snapshot_due = None;
        }
    }
    ctx.outbox.notify();

    // The downward lane, when both sides speak it.
    let (downward, downward_done) = match &ctx.downward {
        Some(applier) if welcome.protocol_version >= DOWNWARD_VERSION => {
            let (lane, done) =
                DownwardLane::start(applier.clone(), welcome.sync_target.as_ref(), &limits);
            (Some(lane), Some(done))
        }
        _ => (None, None),
    };

    let mut steady = Steady {
        ctx,
        version: welcome.protocol_version,
        limits,
        heartbeat,
        welcome_heartbeat_ms: welcome.heartbeat_interval_ms,
        last_received: Instant::now(),
        paused_until: None,
        max_deltas_per_s: 0,
        next_send_at: Instant::now(),
        last_summary: None,
        last_summary_sent: Instant::now(),
        downward,
        downward_done,
        events: ctx
            .events
            .clone()
            .filter(|_| welcome.protocol_version >= EVENTS_VERSION),
        shard_count,
        snapshot_due,
        outbox_changes: ctx.outbox.subscribe(),
    };
    // The interval the replica asked for, if it did.
    steady.set_heartbeat(session_interval(
        ctx.heartbeat_interval,
        welcome.heartbeat_interval_ms,
        shards.and_then(|held| held.heartbeat_interval_ms),
    ));
    steady.run(&mut tx, &mut stream, stop).await
}

/// Waits, at most `wait`, until every upsync watch has listed under the
/// SyncTarget the `Welcome` just named (they start only then), so that the
/// snapshot names every upsynced object; whether they all have. A hub
/// deletes upstream the cluster's upsynced objects a snapshot does not name
/// only when it says so (`SnapshotEnd::upsync_listed`).
async fn upsync_listed(ctx: &SessionContext, wait: Duration, stop: &CancellationToken) -> bool {
    let types = ctx.upsync_resources.len();
    let mut listed = ctx.upsync_listed.clone();
    let all = tokio::select! {
        () = stop.cancelled() => return false,
        all = tokio::time::timeout(wait, listed.wait_for(|n| *n >= types)) => all,
    };
    match all {
        Ok(Ok(_)) => true,
        Ok(Err(_)) => false,
        Err(_) => {
            tracing::warn!(cluster = %ctx.cluster, ?wait, "upsync lists not complete; the snapshot says so (the hub deletes nothing upsynced on its account)");
            false
        }
    }
}

/// Reads until `Welcome`, skipping control messages; the hub's `Error`
/// is its refusal.
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

/// Counts the session as connected (gauges, readiness) for as long as it
/// lives.
struct ConnectedGuard {
    metrics: Metrics,
    health: AgentHealth,
    replica: Arc<str>,
}

impl ConnectedGuard {
    fn new(ctx: &SessionContext) -> Self {
        ctx.metrics.connected.inc();
        ctx.metrics
            .hub_sessions
            .with_label_values(&[&ctx.replica_name])
            .set(1);
        ctx.health.set_hub_connected(true);
        Self {
            metrics: ctx.metrics.clone(),
            health: ctx.health.clone(),
            replica: Arc::clone(&ctx.replica_name),
        }
    }
}

impl Drop for ConnectedGuard {
    fn drop(&mut self) {
        self.metrics.connected.dec();
        self.metrics
            .hub_sessions
            .with_label_values(&[&self.replica])
            .set(0);
        self.health.set_hub_connected(false);
    }
}

/// Routes the replica's shards to this session for as long as it lives;
/// they are released when the session ends.
struct RoutesGuard {
    outbox: SharedOutbox,
    replica: ReplicaId,
}

impl RoutesGuard {
    fn hold(ctx: &SessionContext, holding: &Holding) -> Self {
        if ctx
            .outbox
            .lock()
            .hold(ctx.replica, &ctx.replica_name, holding)
        {
            ctx.outbox.notify();
        }
        Self {
            outbox: ctx.outbox.clone(),
            replica: ctx.replica,
        }
    }
}

impl Drop for RoutesGuard {
    fn drop(&mut self) {
        if self.outbox.lock().release(self.replica) {
            self.outbox.notify();
        }
    }
}
