//! A seam for the fuzz targets in `fuzz/` (feature `fuzzing`, hidden from the
//! documentation; not part of the hub's API; the hub's own tests use it
//! too, for what needs the session's clock): one agent session served
//! in-process by the real [`session::serve`], over an in-memory WebSocket,
//! on a paused clock, against a hub whose placement is already listed.
//!
//! The clock is tokio's paused test clock: whenever every task waits, it
//! jumps to the next timer, so heartbeat deadlines, throttle pauses and the
//! close timeout all pass in microseconds and a run is deterministic.
//!
//! Cluster [`CLUSTER`] has a SyncTarget and a complete placement of
//! deployments: [`PLACED`] in [`WORKSPACE`]/[`NAMESPACE`]. Anything else it
//! reports is refused at once (no hold), so after every run the store must
//! hold only placed objects.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_util::sync::CancellationToken;
use uplink_protocol::Limits;
use uplink_protocol::resource::ResourceSpec;

use crate::capacity::ReportBounds;
use crate::downstream::Downstream;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::placement::address::Address;
use crate::placement::source::Metadata;
use crate::placement::{
    PlacedAddress, PlacedObject, PlacementChange, PlacementSettings, Placements, SyncTargetRef,
    Verdict, key,
};
use crate::rejection::Rejections;
use crate::server::Gate;
use crate::session::{self, Connections, HelloWait, SessionShared, ThrottleSettings};
use crate::store::{KeyParts, ObjectKey, Store};
use crate::writer::finalizer::{FinalizerUpstream, Finalizers};
use crate::writer::{UpstreamError, WriteQueue};

/// The cluster the session's certificate proves.
pub const CLUSTER: &str = "fuzz-a";
/// The workspace of the placed objects.
pub const WORKSPACE: &str = "root:fuzz";
/// The namespace of the placed objects.
pub const NAMESPACE: &str = "shop";
/// The deployments placed on [`CLUSTER`].
pub const PLACED: [&str; 2] = ["web", "db"];
/// The hub's epoch (fixed, so a `Hello` can resume).
pub const HUB_EPOCH: u64 = 7;
/// The hub's heartbeat interval.
pub const HEARTBEAT: Duration = Duration::from_secs(10);

/// One thing the agent side does.
#[derive(Debug, Clone)]
pub enum Input {
    /// A binary WebSocket message (a frame, or not).
    Binary(Vec<u8>),
    /// A text WebSocket message (never a frame).
    Text(String),
    Ping(Vec<u8>),
    /// A WebSocket close from the agent.
    Close,
    /// Lets the (paused) clock run this long.
    Wait(Duration),
    /// The hub begins to shut down.
    Shutdown,
}

/// What a run showed.
#[derive(Debug)]
pub struct Outcome {
    /// The hub's binary messages, in order.
    pub sent: Vec<Vec<u8>>,
    /// Messages the hub sent that are neither binary nor control frames.
    pub other_messages: usize,
    /// The close code the hub sent, if it sent one.
    pub close_code: Option<u16>,
    /// When the hub sent a WebSocket ping, on the session's clock (from
    /// the first input).
    pub pings: Vec<Duration>,
    /// Whether the session ended within an hour of the last input.
    pub ended: bool,
    /// Objects the store holds for [`CLUSTER`] that placement does not
    /// accept from it (must be empty).
    pub stored_unplaced: Vec<ObjectKey>,
    /// Objects the store holds for [`CLUSTER`].
    pub stored: usize,
    /// The limits the hub enforces and announces.
    pub limits: Limits,
}

/// Limits small enough that fuzz-sized inputs reach them.
pub fn limits() -> Limits {
    Limits {
        max_frame_bytes: 64 * 1024,
        max_deltas_per_batch: 8,
        max_string_bytes: 64,
        max_status_bytes: 512,
        max_objects_per_cluster: 6,
        max_manifest_bytes: 1024,
        max_downward_in_flight: 8,
        max_events_per_batch: 2,
    }
}

/// Serves one session fed `inputs`, then lets it run until it ends.
///
/// Panics only when the harness itself cannot be set up (a runtime, the
/// metrics registry): a fuzz target has nobody to return an error to, and
/// such a failure is the harness's, found at the first input.
pub fn run_session(inputs: Vec<Input>) -> Outcome {
    runtime().block_on(session(inputs))
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap_or_else(|error| panic!("building the fuzzing runtime: {error}"))
    })
}

/// Metrics are shared by every run: they only count, and registering them
/// is most of a hub's set-up cost.
fn metrics() -> Arc<Metrics> {
    static METRICS: OnceLock<Arc<Metrics>> = OnceLock::new();
    METRICS
        .get_or_init(|| {
            Arc::new(Metrics::new().unwrap_or_else(|error| panic!("hub metrics: {error}")))
        })
        .clone()
}

async fn session(inputs: Vec<Input>) -> Outcome {
    let shared = shared();
    let limits = shared.limits;
    let max = limits.max_frame_bytes as usize;
    let (agent_io, hub_io) = tokio::io::duplex(16 * 1024);
    let config = WebSocketConfig::default()
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    let hub_ws = WebSocketStream::from_raw_socket(hub_io, Role::Server, Some(config)).await;
    let agent_ws = WebSocketStream::from_raw_socket(agent_io, Role::Client, None).await;
    let (mut to_hub, mut from_hub) = agent_ws.split();

    let peer = SocketAddr::from(([127, 0, 0, 1], 40000));
    let gauge = prometheus::IntGauge::new("fuzz_awaiting_hello", "unused")
        .unwrap_or_else(|error| panic!("gauge: {error}"));
    let gate = Gate::new(4, 4, "total", "per_cluster", gauge);
    let (slot, _) = gate.enter(CLUSTER.to_owned(), peer);
    let shutdown = CancellationToken::new();
    let served = tokio::spawn(session::serve(
        shared.clone(),
        hub_ws,
        CLUSTER.to_owned(),
        peer,
        HelloWait {
            deadline: Instant::now() + Duration::from_secs(10),
            slot,
        },
        shutdown.clone(),
    ));
    let started = Instant::now();
    let reader = tokio::spawn(async move {
        let mut sent = Vec::new();
        let mut other_messages = 0;
        let mut close_code = None;
        let mut pings = Vec::new();
        while let Some(Ok(message)) = from_hub.next().await {
            match message {
                Message::Binary(bytes) => sent.push(bytes.to_vec()),
                Message::Close(frame) => close_code = frame.map(|f| u16::from(f.code)),
                Message::Ping(_) => pings.push(started.elapsed()),
                Message::Pong(_) => {}
                Message::Text(_) | Message::Frame(_) => other_messages += 1,
            }
        }
        (sent, other_messages, close_code, pings)
    });

    for input in inputs {
        let message = match input {
            Input::Binary(bytes) => Message::Binary(bytes.into()),
            Input::Text(text) => Message::Text(text.into()),
            Input::Ping(bytes) => Message::Ping(bytes.into()),
            Input::Close => Message::Close(None),
            Input::Wait(duration) => {
                tokio::time::sleep(duration).await;
                continue;
            }
            Input::Shutdown => {
                shutdown.cancel();
                continue;
            }
        };
        if to_hub.send(message).await.is_err() {
            break;
        }
    }
    // Silent from here on: the hub ends the session within three heartbeat
    // intervals at most.
    let ended = tokio::time::timeout(Duration::from_secs(3600), served)
        .await
        .is_ok();
    drop(to_hub);
    let (sent, other_messages, close_code, pings) =
        match tokio::time::timeout(Duration::from_secs(60), reader).await {
            Ok(Ok(read)) => read,
            _ => (Vec::new(), 0, None, Vec::new()),
        };

    let stored_keys = shared.store.cluster_keys(CLUSTER);
    let view = shared.placements.read();
    let stored_unplaced = stored_keys
        .iter()
        .filter(|key| view.verdict(CLUSTER, key) != Verdict::Accept)
        .cloned()
        .collect();
    Outcome {
        sent,
        other_messages,
        close_code,
        pings,
        ended,
        stored_unplaced,
        stored: stored_keys.len(),
        limits,
    }
}

/// A fresh hub's session state, with [`CLUSTER`]'s placement listed.
fn shared() -> Arc<SessionShared> {
    let metrics = metrics();
    let limits = limits();
    let placements = Arc::new(Placements::new(
        PlacementSettings {
            resources: vec![ResourceSpec::deployments()],
            upsync: Vec::new(),
            synctarget_workspace: "root".to_owned(),
            hold: Duration::ZERO,
            max_per_cluster: limits.max_objects_per_cluster,
        },
        metrics.clone(),
    ));
    list_placement(&placements, limits.max_objects_per_cluster);
    let write_queue = Arc::new(WriteQueue::new(metrics.clone()));
    let metrics_for_events = metrics.clone();
    let metrics_for_upsync = metrics.clone();
    Arc::new(SessionShared {
        store: Arc::new(Store::new(
            write_queue.clone(),
            metrics.clone(),
            limits.max_objects_per_cluster,
        )),
        downstream: Arc::new(Downstream::new(write_queue.clone(), metrics.clone())),
        finalizers: Arc::new(Finalizers::new(Arc::new(NoFinalizers), metrics.clone())),
        placements,
        rejections: Arc::new(Rejections::new(metrics.clone())),
        health: Arc::new(Health::new(metrics.clone())),
        metrics,
        connections: Connections::default(),
        limits,
        heartbeat_interval: HEARTBEAT,
        hub_epoch: HUB_EPOCH,
        require_workspace: true,
        write_queue,
        // No writer drains the queue here, so a few deltas throttle.
        throttle: ThrottleSettings {
            queue_depth: 3,
            pause: Duration::from_secs(1),
            max_deltas_per_s: 5,
        },
        report_bounds: ReportBounds::default(),
        event_queue: Arc::new(crate::writer::events::EventQueue::new(
            16,
            metrics_for_events,
        )),
        event_rates: Arc::new(crate::session::EventRates::new(20.0, 200)),
        upsync: Arc::new(crate::writer::upsync::Upsync::new(16, metrics_for_upsync)),
        ownership: crate::replicas::Ownership::single(16),
        unheld: prometheus::IntCounterVec::new(
            prometheus::Opts::new("uplink_hub_unheld_shard_items_total", "fuzzing"),
            &["kind"],
        )
        .unwrap_or_else(|_| unreachable!("a valid metric name and label")),
    })
}

fn list_placement(placements: &Placements, max_objects: u64) {
    let target = SyncTargetRef {
        workspace: "root".to_owned(),
        name: CLUSTER.to_owned(),
        uid: "uid-fuzz-a".to_owned(),
        key: key::sync_target_key("root", CLUSTER),
    };
    let objects = PLACED
        .iter()
        .map(|name| PlacedAddress {
            address: Address::of(&placed_key(name)),
            object: PlacedObject {
                kind: None,
                metadata: Metadata {
                    name: (*name).to_owned(),
                    namespace: Some(NAMESPACE.to_owned()),
                    uid: format!("uid-{name}"),
                    ..Metadata::default()
                },
                rest: serde_json::Map::new(),
            },
        })
        .collect();
    {
        let mut view = placements.write();
        view.put_synctarget(target.clone());
        view.start_cluster(CLUSTER, &target.key);
        view.apply(
            CLUSTER,
            &target.key,
            0,
            PlacementChange::Listed {
                kind: Some("Deployment".to_owned()),
                objects,
            },
            max_objects,
        );
    }
    placements.notify_changed();
}

/// The key of placed deployment `name`.
pub fn placed_key(name: &str) -> ObjectKey {
    ObjectKey::new(KeyParts {
        workspace: WORKSPACE.to_owned(),
        group: "apps".to_owned(),
        version: "v1".to_owned(),
        resource: "deployments".to_owned(),
        kind: "Deployment".to_owned(),
        namespace: Some(NAMESPACE.to_owned()),
        name: name.to_owned(),
    })
}

/// Finalizer calls fail: nothing upstream (the session never waits on them).
#[derive(Debug)]
struct NoFinalizers;

impl FinalizerUpstream for NoFinalizers {
    fn finalizers<'a>(
        &'a self,
        _key: &'a ObjectKey,
    ) -> futures::future::BoxFuture<'a, Result<(String, Vec<String>), UpstreamError>> {
        Box::pin(async { Err(UpstreamError::NotFound) })
    }

    fn set_finalizers<'a>(
        &'a self,
        _key: &'a ObjectKey,
        _resource_version: &'a str,
        _finalizers: &'a [String],
        _leaving: Option<&'a str>,
    ) -> futures::future::BoxFuture<'a, Result<(), UpstreamError>> {
        Box::pin(async { Err(UpstreamError::NotFound) })
    }
}

#[cfg(test)]
mod tests {
    use uplink_protocol::{AgentFrame, Heartbeat, Hello, PROTOCOL_VERSION, encode};

    use super::*;

    fn frame(frame: &AgentFrame) -> Input {
        // Encoding plain frames into a Vec cannot fail.
        #[allow(clippy::expect_used)]
        Input::Binary(encode(frame).expect("encoding a frame"))
    }

    fn hello() -> Input {
        frame(&AgentFrame::Hello(Hello {
            protocol_versions: vec![PROTOCOL_VERSION],
            cluster: CLUSTER.to_owned(),
            agent_version: "test".to_owned(),
            session_id: "s1".to_owned(),
            last_hub_epoch: None,
            last_ack: 0,
            downward_resources: Vec::new(),
            upsync_resources: Vec::new(),
        }))
    }

    fn heartbeat() -> Input {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        frame(&AgentFrame::Heartbeat(Heartbeat {
            agent_time_ms: i64::try_from(now.as_millis()).unwrap_or(i64::MAX),
            summary: None,
        }))
    }

    /// A ping costs both ends a read and a write; the hub sends one only
    /// after a heartbeat interval in which it sent nothing else.
    #[test]
    fn the_hub_pings_only_into_silence() {
        let mut inputs = vec![hello()];
        // Two minutes of heartbeats every half interval, each answered.
        let beats = 24;
        for _ in 0..beats {
            inputs.push(Input::Wait(HEARTBEAT / 2));
            inputs.push(heartbeat());
        }
        let talking = HEARTBEAT / 2 * beats;
        let outcome = run_session(inputs);

        assert!(
            outcome.sent.len() > beats as usize,
            "a Welcome and an answer per heartbeat: {} frames",
            outcome.sent.len()
        );
        assert!(
            outcome.pings.iter().all(|at| *at > talking),
            "pinged while answering heartbeats: {:?}",
            outcome.pings
        );
        // Then silent: pinged an interval after its last answer, and the
        // session ended for the silence.
        let first = outcome.pings.first().copied();
        assert!(
            first.is_some_and(|at| at >= talking + HEARTBEAT && at < talking + HEARTBEAT * 2),
            "no ping an interval into the silence: {:?}",
            outcome.pings
        );
        assert!(outcome.ended);
    }
}
