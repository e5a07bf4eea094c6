//! The frames of protocol v1: what travels in each binary WebSocket message.
//!
//! Every WebSocket binary message carries exactly one frame, encoded with
//! msgpack as a map with named fields (`rmp_serde::to_vec_named`), so fields
//! can be added later without breaking older peers: a receiver ignores fields
//! it does not know and fills the ones it misses with their defaults.
//!
//! An enum is encoded externally tagged: a map of one entry whose key is the
//! variant name (`{"Hello": {...}}`); a variant without data is just its name
//! as a string (`"Deleted"`).
//!
//! Adding a field with `#[serde(default)]` is a compatible change. Removing or
//! renaming a field, changing its type, or adding an enum variant needs a new
//! [`PROTOCOL_VERSION`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::limits::Limits;
use crate::shard::ShardId;

/// Version numbers this implementation speaks. The agent lists its versions in
/// [`Hello::protocol_versions`]; the hub picks the highest one it also speaks
/// and names it in [`Welcome::protocol_version`].
///
/// - 1: status upward only.
/// - 2: adds the downward lane: the hub streams the objects KCP placed on
///   the cluster ([`HubFrame::Downward`] and the downward snapshot), the
///   agent acknowledges what it applied ([`AgentFrame::DownwardAck`]).
/// - 3: adds events: the agent reports the event series about the objects
///   it syncs ([`AgentFrame::Events`]), best effort; and upsync: objects
///   born in the cluster travel whole ([`Delta::object_json`]) for the
///   types the agent names ([`Hello::upsync_resources`]).
/// - 4: adds replicas: a replicated hub says which shards of the workspaces
///   it holds ([`Welcome::shards`], [`HubFrame::Shards`]); the agent keeps a
///   session with every replica and sends each object's deltas and events
///   to the holder of its workspace's shard ([`crate::shard_of`]);
///   snapshots may cover some shards only ([`SnapshotBegin::shards`]).
pub const PROTOCOL_VERSION: u16 = 4;

/// The first version with the downward lane.
pub const DOWNWARD_VERSION: u16 = 2;

/// The first version with events.
pub const EVENTS_VERSION: u16 = 3;

/// The first version with replicas (shards held, per-shard snapshots).
pub const REPLICAS_VERSION: u16 = 4;

/// Every protocol version this implementation speaks, [`PROTOCOL_VERSION`]
/// being the newest. What an agent puts in [`Hello::protocol_versions`].
pub const SUPPORTED_VERSIONS: &[u16] = &[1, DOWNWARD_VERSION, EVENTS_VERSION, PROTOCOL_VERSION];

/// The highest version both this implementation and the peer speak, or `None`
/// when there is none (the hub then answers [`ErrorCode::UnsupportedVersion`]).
///
/// `offered` is the peer's list in any order; duplicates and unknown versions
/// are fine.
pub fn negotiate_version(offered: &[u16]) -> Option<u16> {
    offered
        .iter()
        .copied()
        .filter(|v| SUPPORTED_VERSIONS.contains(v))
        .max()
}

/// The WebSocket subprotocol both sides must negotiate (`Sec-WebSocket-Protocol`).
/// It names the framing (one msgpack frame per binary message), which every
/// protocol version shares; the version of the frames is negotiated in
/// [`Hello`] and [`Welcome`].
pub const SUBPROTOCOL: &str = "uplink.v1";

/// The HTTP path of the tunnel endpoint on the hub.
pub const TUNNEL_PATH: &str = "/v1/tunnel";

/// A frame sent by an agent to the hub.
///
/// The first frame of a connection is always [`Hello`]; everything else is
/// only valid after the hub's [`Welcome`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AgentFrame {
    Hello(Hello),
    Deltas(DeltaBatch),
    SnapshotBegin(SnapshotBegin),
    SnapshotChunk(SnapshotChunk),
    SnapshotEnd(SnapshotEnd),
    Heartbeat(Heartbeat),
    Bye(Bye),
    /// Version 2: the downward deltas applied so far.
    DownwardAck(DownwardAck),
    /// Version 3: event series about synced objects, best effort.
    Events(EventBatch),
}

/// A frame sent by the hub to an agent.
///
/// The first frame is [`Welcome`] or, when the hub refuses the agent,
/// [`ErrorFrame`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum HubFrame {
    Welcome(Welcome),
    Ack(Ack),
    HeartbeatAck(HeartbeatAck),
    Throttle(Throttle),
    Error(ErrorFrame),
    Bye(Bye),
    /// Version 2: objects to create, update or delete in the cluster.
    Downward(DownwardBatch),
    /// Version 2: a full downward snapshot follows.
    DownwardSnapshotBegin(SnapshotBegin),
    DownwardSnapshotChunk(DownwardBatch),
    DownwardSnapshotEnd(SnapshotEnd),
    /// Version 4, from a replicated hub only: the shards it holds now,
    /// sent whenever they change.
    Shards(ShardsHeld),
}

/// Agent → hub, first frame on every connection.
///
/// Sent once, right after the WebSocket handshake. The hub checks that
/// `cluster` is the identity its TLS client certificate (or bearer token)
/// proves, picks a version from `protocol_versions`, and answers with
/// [`Welcome`] or, when it refuses, with [`ErrorFrame`] and a close.
///
/// `session_id`, `last_hub_epoch` and `last_ack` let the hub decide between
/// resuming the agent's stream and asking for a full snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Protocol versions the agent speaks, in any order.
    pub protocol_versions: Vec<u16>,
    /// The cluster this agent reports for. Must match the authenticated identity.
    pub cluster: String,
    /// Free-form agent build identifier, for logs only.
    #[serde(default)]
    pub agent_version: String,
    /// Chosen by the agent when it starts; stable across its reconnects, new
    /// after a restart (a restarted agent has lost its outbox and must snapshot).
    pub session_id: String,
    /// The hub epoch from the last [`Welcome`] this agent process received, if any.
    #[serde(default)]
    pub last_hub_epoch: Option<u64>,
    /// The highest sequence number the hub has acknowledged to this session.
    #[serde(default)]
    pub last_ack: u64,
    /// Version 2: the resource types (`resource.version.group`, e.g.
    /// `deployments.v1.apps`) the agent applies in its cluster; the hub
    /// streams only placed objects of these types (and of the ones it
    /// syncs). Empty: status only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub downward_resources: Vec<String>,
    /// Version 3: the resource types (`persistentvolumes.v1`, ...) whose
    /// objects born in the cluster the agent upsyncs: sent whole
    /// ([`Delta::object_json`]) for the hub to create and keep in KCP.
    /// Empty: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upsync_resources: Vec<String>,
}

/// Hub → agent, answer to an accepted [`Hello`]; sent once per connection.
///
/// After it, the agent either resumes sending its unacknowledged outbox
/// entries ([`SessionMode::Resume`]) or sends a full snapshot
/// ([`SessionMode::Snapshot`]), and heartbeats every `heartbeat_interval_ms`.
/// The agent remembers `hub_epoch` for its next [`Hello`] and sizes its
/// batches and frames to fit `limits`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The version both sides speak from now on.
    pub protocol_version: u16,
    /// Random per hub process start. A different epoch than the agent last saw
    /// means the hub may have lost state: the agent must snapshot.
    pub hub_epoch: u64,
    /// Whether the agent resumes or snapshots.
    pub mode: SessionMode,
    /// How often the agent sends [`Heartbeat`]s. Three intervals without any
    /// frame means the connection is dead, on both sides.
    pub heartbeat_interval_ms: u64,
    /// The limits the hub enforces on this connection.
    pub limits: Limits,
    /// Version 2: the cluster's SyncTarget in KCP, when it has one. The
    /// agent names downstream namespaces after it (as kcp's syncer did) and
    /// recognises the objects it owns by its placement label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_target: Option<SyncTargetLocator>,
    /// Version 4: the shards this replica of a replicated hub holds. `None`:
    /// the hub is not replicated and takes every object. With
    /// [`SessionMode::Snapshot`], `snapshot` names every held shard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<ShardsHeld>,
}

/// Hub → agent, version 4: which shards of the workspaces a replica of a
/// replicated hub holds, in [`Welcome::shards`] and in [`HubFrame::Shards`]
/// whenever they change.
///
/// The agent sends an object's deltas and events only to the replica
/// holding `shard_of(object.workspace, count)`: the session whose claim on
/// the shard has the highest `term` (on a tie, the claim received last). A
/// session whose new `ShardsHeld` no longer lists a shard gives up its route
/// to it; while no session holds a shard, its changes wait in the outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardsHeld {
    /// How many shards the workspaces hash into; every replica uses the same.
    pub count: u16,
    /// Every shard this replica holds now, in ascending order of shard.
    pub held: Vec<ShardClaim>,
    /// Shards (a subset of `held`) the replica has just taken over and knows
    /// nothing of: the agent sends a snapshot of these only
    /// ([`SnapshotBegin::shards`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snapshot: Vec<ShardId>,
    /// How often this replica wants the agent's [`Heartbeat`]s from now on,
    /// in ms, in place of [`Welcome::heartbeat_interval_ms`]; the
    /// connection counts as dead after three of these intervals without
    /// any frame, on both sides. Only the replica that writes the cluster's
    /// health into KCP (the holder of its SyncTarget workspace's shard)
    /// needs heartbeats at the full rate; the others ask for a longer
    /// keepalive interval. `None`: the `Welcome`'s. At most
    /// [`MAX_HEARTBEAT_INTERVAL_MS`] (one hour); 0 is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval_ms: Option<u64>,
}

/// The longest heartbeat interval a replica may ask for
/// ([`ShardsHeld::heartbeat_interval_ms`]): one hour. Longer is refused as
/// a sender's mistake (a dead connection would go unnoticed for hours).
pub const MAX_HEARTBEAT_INTERVAL_MS: u64 = 3_600_000;

/// One shard a replica holds, and since when.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardClaim {
    pub shard: ShardId,
    /// The shard Lease's `leaseTransitions` when this replica acquired it:
    /// grows with every change of holder, so of two replicas claiming one
    /// shard (the old holder's news late), the higher term is the holder.
    pub term: u64,
}

/// A cluster's SyncTarget, as the hub found it in KCP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncTargetLocator {
    /// The KCP workspace holding the SyncTarget.
    pub workspace: String,
    pub name: String,
    pub uid: String,
    /// kcp's `ToSyncTargetKey(workspace, name)`: objects placed on the
    /// cluster carry the label `state.workload.kcp.io/<key>`.
    pub key: String,
}

/// How a session continues after [`Welcome`].
///
/// On the wire: `{"Resume": {"acked": 42}}` or `"Snapshot"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionMode {
    /// The hub holds everything up to and including `acked`; the agent resends
    /// only entries with a higher sequence number.
    Resume { acked: u64 },
    /// The hub holds nothing it can trust for this cluster; the agent sends a
    /// snapshot of every object it watches.
    Snapshot,
}

/// Names one object: its type, where it lives upstream (KCP workspace and
/// namespace), its name and its downstream uid.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectRef {
    /// API group, empty for the core group.
    pub group: String,
    pub version: String,
    /// Plural resource name, e.g. `deployments`.
    pub resource: String,
    pub kind: String,
    /// The KCP workspace (logical cluster), e.g. `root:org:team-a`; empty when
    /// the upstream is a plain Kubernetes cluster without workspaces.
    pub workspace: String,
    /// The upstream namespace; `None` for cluster-scoped objects.
    #[serde(default)]
    pub namespace: Option<String>,
    /// The object's name; never empty (the decoder refuses it).
    pub name: String,
    /// The downstream object's uid.
    #[serde(default)]
    pub uid: String,
}

/// One status change of one object, inside a [`DeltaBatch`] or a
/// [`SnapshotChunk`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    /// The agent's sequence number for this entry. Strictly increasing within a
    /// session; acknowledgements are cumulative over it.
    pub seq: u64,
    pub object: ObjectRef,
    /// `metadata.generation` of the downstream object.
    #[serde(default)]
    pub generation: Option<i64>,
    /// `status.observedGeneration`, when the kind has one.
    #[serde(default)]
    pub observed_generation: Option<i64>,
    /// When the agent observed this state, in milliseconds since the Unix
    /// epoch, on the agent's clock (the hub corrects it by the estimated skew).
    pub observed_at_ms: i64,
    pub change: Change,
    /// Version 3, for an object the cluster upsyncs (a type in
    /// [`Hello::upsync_resources`]) and an `Upsert` only: the object as KCP
    /// is to hold it, as JSON text: `apiVersion`, `kind`, `metadata`
    /// (`name`, the upstream `namespace`, `labels`, `annotations`; nothing
    /// the server sets) and every other top-level field but `status`,
    /// which travels in [`Change::Upsert`] as for any object. At most
    /// [`Limits::max_manifest_bytes`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_json: Option<String>,
}

/// What happened to the object.
///
/// On the wire: `{"Upsert": {"status_json": "{...}"}}` or `"Deleted"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Change {
    /// The object exists; `status_json` is its `.status` as JSON text, at most
    /// [`Limits::max_status_bytes`] long. The codec does not parse it: the hub
    /// does, and refuses a delta whose status is not a JSON object.
    Upsert { status_json: String },
    /// The object no longer exists downstream.
    Deleted,
}

/// Agent → hub, a batch of status changes in increasing `seq` order, sent
/// whenever the outbox has entries the hub has not seen and the agent is not
/// throttled.
///
/// At most [`Limits::max_deltas_per_batch`] deltas. The hub stores every
/// delta, then acknowledges with [`Ack`] carrying the highest `seq` of the
/// batch. Deltas the hub already holds (replays after a resume) are harmless.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeltaBatch {
    pub deltas: Vec<Delta>,
}

/// Agent → hub, starts a snapshot after a [`Welcome`] that asked for one.
///
/// The hub collects the [`SnapshotChunk`]s that follow and applies them all at
/// once on [`SnapshotEnd`]; until then it keeps serving the cluster's old
/// entries. The agent sends no [`DeltaBatch`] between begin and end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotBegin {
    /// How many objects the snapshot will contain.
    pub objects: u64,
    /// Version 4: the shards the snapshot covers. `None`: everything. `Some`:
    /// only objects whose workspace is in one of these shards; the receiver
    /// replaces (the hub) or prunes (the agent, downward) only within them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<Vec<ShardId>>,
}

/// Agent → hub, part of a snapshot, between [`SnapshotBegin`] and
/// [`SnapshotEnd`]. Every delta in it is an `Upsert`; at most
/// [`Limits::max_deltas_per_batch`] deltas per chunk.
///
/// The hub buffers the deltas (counting them against
/// [`Limits::max_objects_per_cluster`]) and does not acknowledge chunks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotChunk {
    pub deltas: Vec<Delta>,
}

/// Agent → hub, ends a snapshot.
///
/// The hub replaces every entry it holds for this cluster with the snapshot's
/// objects (objects missing from it are deleted, so deletes during an outage
/// are not lost), then acknowledges `seq` with an [`Ack`]. Afterwards the
/// agent continues with [`DeltaBatch`]es above `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotEnd {
    /// The agent's sequence number at the moment the snapshot was taken.
    pub seq: u64,
    /// Version 3: the snapshot names every object the agent upsyncs (its
    /// upsync watches had listed them when it was taken), so the hub
    /// deletes upstream the cluster's upsynced objects it does not name.
    /// `false` (a snapshot taken before those lists completed, or an older
    /// agent): the hub deletes none on its account.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub upsync_listed: bool,
}

/// Agent → hub, every heartbeat interval.
///
/// Proves the connection and the agent are alive, carries the agent's clock
/// (the hub estimates the skew from it) and the cluster's summary: always in
/// the first heartbeat of a connection (the hub may have restarted), then
/// when it changed. The hub keeps the latest summary and answers with
/// [`HeartbeatAck`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The agent's clock when it sent this frame, in ms since the Unix epoch.
    pub agent_time_ms: i64,
    /// The cluster summary: in a connection's first heartbeat, then when it
    /// changed since the last one.
    #[serde(default)]
    pub summary: Option<ClusterSummary>,
}

/// Hub → agent, answer to every [`Heartbeat`].
///
/// The agent uses it to see that the hub is alive and to measure the round
/// trip; it is not an [`Ack`] of any delta.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatAck {
    /// Echo of [`Heartbeat::agent_time_ms`].
    pub agent_time_ms: i64,
    /// The hub's clock when it received the heartbeat.
    pub hub_time_ms: i64,
}

/// What the agent knows about its cluster, sent with heartbeats. The hub keeps
/// the latest one per cluster for health, capacity totals and reports.
///
/// Build it with `..Default::default()` so fields added later (always with a
/// default) do not break the build.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterSummary {
    /// One entry per configured resource type.
    #[serde(default)]
    pub watches: Vec<WatchHealth>,
    /// Nodes in the cluster, and how many are `Ready`.
    #[serde(default)]
    pub nodes: NodeCounts,
    /// Sum of the nodes' `status.capacity`.
    #[serde(default)]
    pub capacity: ResourceAmounts,
    /// Sum of the nodes' `status.allocatable`.
    #[serde(default)]
    pub allocatable: ResourceAmounts,
    /// Sum of the resource requests of pods that are not terminated
    /// (`pods` counts those pods).
    #[serde(default)]
    pub requests: ResourceAmounts,
    /// Current usage from `metrics.k8s.io`; `None` when that API does not
    /// answer (`pods` is 0).
    #[serde(default)]
    pub usage: Option<ResourceAmounts>,
    /// Pods by `status.phase`.
    #[serde(default)]
    pub pods: PodPhaseCounts,
    /// Sum of `status.allocatable` of the nodes that are `Ready` and not
    /// cordoned: where the scheduler can still place pods.
    #[serde(default)]
    pub schedulable: ResourceAmounts,
    /// Extended resources (`nvidia.com/gpu`, `hugepages-2Mi`, ...) by name,
    /// in whole units as the scheduler counts them (quantities rounded up).
    #[serde(default)]
    pub extended: BTreeMap<String, ExtendedAmounts>,
    /// Requests of the pods counted in `requests`, by the KCP workspace their
    /// namespace is mapped to (pods of unmapped namespaces are not listed).
    #[serde(default)]
    pub workspaces: BTreeMap<String, ResourceAmounts>,
}

/// One extended resource of a cluster, in whole units.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtendedAmounts {
    /// Sum of the nodes' `status.capacity`.
    #[serde(default)]
    pub capacity: u64,
    /// Sum of the nodes' `status.allocatable`.
    #[serde(default)]
    pub allocatable: u64,
    /// Sum of the requests of scheduled pods that are not terminated.
    #[serde(default)]
    pub requests: u64,
}

/// How many nodes a cluster has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCounts {
    #[serde(default)]
    pub total: u32,
    /// Nodes whose `Ready` condition is `True`.
    #[serde(default)]
    pub ready: u32,
    /// Nodes marked unschedulable (`spec.unschedulable`, `kubectl cordon`),
    /// Ready or not; they still count in `total` and `ready`.
    #[serde(default)]
    pub cordoned: u32,
}

/// Amounts of the resources Uplink accounts for, in fixed units so the hub can
/// add them up without parsing Kubernetes quantities.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceAmounts {
    /// CPU in millicores (`1500` is `1.5` cores).
    #[serde(default)]
    pub cpu_millis: u64,
    #[serde(default)]
    pub memory_bytes: u64,
    #[serde(default)]
    pub ephemeral_storage_bytes: u64,
    /// A number of pods.
    #[serde(default)]
    pub pods: u64,
}

/// Pods counted by phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodPhaseCounts {
    #[serde(default)]
    pub pending: u64,
    #[serde(default)]
    pub running: u64,
    #[serde(default)]
    pub succeeded: u64,
    #[serde(default)]
    pub failed: u64,
    #[serde(default)]
    pub unknown: u64,
}

/// The health of one of the agent's watches.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchHealth {
    /// The resource, as `resource.version.group`.
    pub resource: String,
    /// True once the initial list completed and the watch is running.
    pub ready: bool,
    /// How many objects the watch currently holds.
    pub objects: u64,
    /// The last error, if the watch is failing. Cut to fit
    /// [`Limits::max_string_bytes`] (see [`crate::limits::truncate_utf8`]).
    #[serde(default)]
    pub error: Option<String>,
}

/// Hub → agent, cumulative acknowledgement: every entry with a sequence
/// number up to and including `seq` is stored and may be dropped from the
/// agent's outbox.
///
/// Sent after each stored [`DeltaBatch`] and after an applied
/// [`SnapshotEnd`]; the hub may coalesce several into one. An `Ack` lower
/// than one already received is stale and ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub seq: u64,
    /// Reports the hub refused (not stored, but acknowledged all the same,
    /// since resending them would not help): at most
    /// [`Rejected::MAX_PER_ACK`], the rest only counted by the hub. Empty
    /// when every report was taken.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rejected: Vec<Rejected>,
}

impl Ack {
    /// An acknowledgement up to `seq` that refused nothing.
    pub fn new(seq: u64) -> Self {
        Self {
            seq,
            rejected: Vec::new(),
        }
    }
}

/// One report the hub refused, in an [`Ack`]: the delta's sequence number
/// and why. The agent counts and logs it; it does not resend it.
///
/// `reason` is one of the constants below. It is a string, not an enum, so a
/// newer hub may add reasons without a new protocol version; an agent that
/// does not know a reason counts it as `other`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    pub seq: u64,
    pub reason: String,
}

impl Rejected {
    /// Most refusals one [`Ack`] lists.
    pub const MAX_PER_ACK: usize = 1024;

    /// KCP has not placed the object on this cluster (not even after the
    /// hub held the report for a while, in case the placement was late).
    pub const NOT_PLACED: &'static str = "not_placed";
    /// The cluster has no SyncTarget in KCP, so nothing is placed on it.
    pub const NO_SYNCTARGET: &'static str = "no_synctarget";
    /// The object is placed, but the delta names another kind or version
    /// than the placed object has.
    pub const KIND_MISMATCH: &'static str = "kind_mismatch";
    /// The resource type is one of Uplink's own records (SyncTargets),
    /// which only the hub writes.
    pub const RESERVED_RESOURCE: &'static str = "reserved_resource";
    /// The hub does not sync this resource type (`uplink-hub --resources`).
    pub const RESOURCE_NOT_SYNCED: &'static str = "resource_not_synced";
    /// A name in the object reference is not a valid path segment.
    pub const INVALID_OBJECT: &'static str = "invalid_object";
    /// `status_json` is not a JSON object.
    pub const STATUS_NOT_OBJECT: &'static str = "status_not_object";
    /// Storing the report would take the cluster past the memory the hub
    /// gives one cluster's statuses; an earlier report of the object, if
    /// any, stays. Reports that shrink and deletions are still taken.
    pub const CLUSTER_MEMORY_BUDGET: &'static str = "cluster_memory_budget";
    /// Storing the report would take the hub past the memory it gives all
    /// clusters' statuses, and the cluster holds more than its fair share.
    pub const HUB_MEMORY_BUDGET: &'static str = "hub_memory_budget";

    /// Every reason this version of the protocol defines.
    pub const REASONS: &'static [&'static str] = &[
        Self::NOT_PLACED,
        Self::NO_SYNCTARGET,
        Self::KIND_MISMATCH,
        Self::RESERVED_RESOURCE,
        Self::RESOURCE_NOT_SYNCED,
        Self::INVALID_OBJECT,
        Self::STATUS_NOT_OBJECT,
        Self::CLUSTER_MEMORY_BUDGET,
        Self::HUB_MEMORY_BUDGET,
    ];
}

/// Hub → agent, slow down: the hub's KCP writer is behind.
///
/// The agent sends no [`DeltaBatch`] for `pause_ms`, then at most
/// `max_deltas_per_s` until another Throttle arrives (0 lifts the limit).
/// Heartbeats continue. A snapshot in progress is paused the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Throttle {
    pub pause_ms: u64,
    #[serde(default)]
    pub max_deltas_per_s: u32,
}

/// Hub → agent, a refusal; the hub closes the connection right after it with
/// the WebSocket close code [`ErrorCode::close_code`] names.
///
/// The agent logs it, counts it, and reconnects with backoff (an
/// [`ErrorCode::IdentityMismatch`] or [`ErrorCode::UnsupportedVersion`] will
/// not fix itself, but the operator may fix the hub).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorFrame {
    pub code: ErrorCode,
    /// For people; the agent does not parse it.
    pub message: String,
}

impl ErrorFrame {
    /// Longest message [`ErrorFrame::new`] keeps, well under the default
    /// [`Limits::max_string_bytes`] so the agent never refuses the frame that
    /// explains why it is being closed.
    pub const MAX_MESSAGE_BYTES: usize = 512;

    /// An error frame whose message is cut, at a character boundary, to
    /// [`ErrorFrame::MAX_MESSAGE_BYTES`].
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let mut message = message.into();
        crate::limits::truncate_utf8(&mut message, Self::MAX_MESSAGE_BYTES);
        Self { code, message }
    }
}

/// Why the hub refused or ended a session. Each code has its WebSocket close
/// code: [`ErrorCode::close_code`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorCode {
    /// No protocol version in common.
    UnsupportedVersion,
    /// The Hello names a cluster the credentials do not prove.
    IdentityMismatch,
    /// The frame could not be decoded.
    Malformed,
    /// A limit was exceeded (frame size, batch size, string length, objects).
    LimitExceeded,
    /// A frame arrived that is not allowed in the session's current state.
    UnexpectedFrame,
    /// Another connection for the same cluster replaced this one.
    Superseded,
    /// The hub failed; the agent should reconnect later.
    Internal,
}

/// Either side, a polite goodbye before closing: the hub is shutting down, or
/// the agent is. The receiver reconnects (agent) or marks the cluster
/// disconnected (hub) without waiting for a timeout. The sender closes the
/// WebSocket with [`crate::close::GOING_AWAY`] right after it.
///
/// Nothing in flight is lost: unacknowledged deltas stay in the agent's
/// outbox for the next connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bye {
    /// For people, e.g. `"shutting down"`.
    pub reason: String,
}

/// Hub → agent (version 2), placed objects to bring into the cluster, in
/// increasing `seq` order: at most [`Limits::max_deltas_per_batch`].
///
/// As [`HubFrame::Downward`] they are changes; as
/// [`HubFrame::DownwardSnapshotChunk`], between
/// [`HubFrame::DownwardSnapshotBegin`] and [`HubFrame::DownwardSnapshotEnd`],
/// they are every object placed on the cluster (all `Apply`): after the end
/// the agent deletes the objects it applied earlier that the snapshot does
/// not name (they were unplaced while it was away), then acknowledges the
/// end's `seq`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DownwardBatch {
    pub deltas: Vec<DownwardDelta>,
}

/// One placed object's change, hub → agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DownwardDelta {
    /// The hub's sequence number of this cluster's downward lane: strictly
    /// increasing within a hub epoch; [`DownwardAck`]s are cumulative over it.
    pub seq: u64,
    /// The object in KCP's coordinates; `uid` is the upstream uid.
    pub object: ObjectRef,
    pub change: DownwardChange,
}

/// What the agent is to do with the object.
///
/// On the wire: `{"Apply": {"manifest_json": "{...}"}}` or `"Delete"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DownwardChange {
    /// Bring the object into the cluster as `manifest_json` says: the KCP
    /// object as JSON text (apiVersion, kind, metadata, spec and the like;
    /// never status), at most [`Limits::max_manifest_bytes`]. The agent
    /// turns it into the downstream object (namespace, metadata) and applies
    /// it.
    Apply { manifest_json: String },
    /// The object is no longer placed on the cluster (or gone in KCP):
    /// delete it downstream.
    Delete,
}

/// Agent → hub (version 2): every downward delta with a sequence number up
/// to and including `seq` was applied (or deleted) in the cluster, except
/// the ones listed in `failures`.
///
/// A deletion acknowledged here is confirmed gone downstream: the hub then
/// lets go of the object upstream (its finalizer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownwardAck {
    pub seq: u64,
    /// Deltas the agent could not apply, at most [`Rejected::MAX_PER_ACK`];
    /// they are not retried until the object changes again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<ApplyFailure>,
}

/// One downward delta the agent could not apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyFailure {
    pub seq: u64,
    /// One of the constants below; a string, so newer agents may add one.
    pub reason: String,
    /// What the cluster said, cut to fit [`Limits::max_string_bytes`].
    pub message: String,
}

impl ApplyFailure {
    /// Another field manager owns fields the object sets; the agent does
    /// not force them.
    pub const CONFLICT: &'static str = "conflict";
    /// The cluster refused the object (validation, admission, a missing
    /// type).
    pub const INVALID: &'static str = "invalid";
    /// The agent may not write the object (RBAC), or will not (a type or
    /// object it never syncs).
    pub const FORBIDDEN: &'static str = "forbidden";
    /// The manifest could not be turned into a downstream object.
    pub const MALFORMED: &'static str = "malformed";
}

/// Agent → hub (version 3), the latest state of event series about objects
/// the cluster syncs: at most [`Limits::max_events_per_batch`] reports.
///
/// Best effort, and never in the way of status: no sequence numbers, no
/// acknowledgement, nothing kept for a resume. The agent sends them only
/// when it has no status to send; the hub writes what placement allows and
/// its rate limits keep, and drops the rest (counted). Each report carries
/// its series' whole state, so a lost or coalesced report costs only
/// intermediate counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventBatch {
    pub reports: Vec<EventReport>,
}

/// One series of events about one object, as kube-apiserver's event series
/// count them (`events.k8s.io/v1` `series`): every downstream Event with
/// the same regarding and related objects, type, reason, action and
/// reporting controller and instance.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EventReport {
    /// The object the events are about, in KCP's coordinates (its `uid` is
    /// the downstream uid, as in a [`Delta`]); the hub writes the series
    /// only when that object is placed on the cluster.
    pub regarding: ObjectRef,
    /// A second object involved, when it is synced too.
    #[serde(default)]
    pub related: Option<ObjectRef>,
    /// `Normal` or `Warning`.
    pub event_type: String,
    pub reason: String,
    #[serde(default)]
    pub action: String,
    #[serde(default)]
    pub reporting_controller: String,
    #[serde(default)]
    pub reporting_instance: String,
    /// The latest occurrence's note, cut to [`Limits::max_string_bytes`].
    #[serde(default)]
    pub note: String,
    /// Occurrences so far (at least 1).
    pub count: u64,
    /// When the series began and when it last occurred, in milliseconds
    /// since the Unix epoch on the agent's clock. `first_ms` is fixed for
    /// the series' life and, with the rest of the key, names it.
    pub first_ms: i64,
    pub last_ms: i64,
}
