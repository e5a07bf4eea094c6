//! What the hub API shows of each cluster, object and conflict: the items
//! of its lists and the object detail, read from the hub's state one item
//! at a time (see [`super::list`]).

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::Serialize;
use serde_json::Value;

use super::HttpState;
use crate::aggregate::ledger::{EndedConflict, PresentConflict};
use crate::aggregate::{Conflict, Strategy};
use crate::capacity::record::{CapacityRecord, ClusterHealth, Rates};
use crate::health::{ClusterState, cluster_state, unix_ms};
use crate::store::{ClusterName, Entry, ObjectKey};

/// One cluster in `GET /api/v1/clusters`.
#[derive(Debug, Serialize)]
pub(super) struct ClusterView {
    name: String,
    connected: bool,
    state: ClusterState,
    /// What the cluster's nodes and watches say ([`crate::capacity`]), and why.
    health: ClusterHealth,
    health_reason: String,
    /// RFC 3339, hub clock.
    last_heartbeat: Option<String>,
    /// When the current session began (RFC 3339, hub clock); `None` while
    /// no agent is connected.
    connected_since: Option<String>,
    /// Deltas received from the cluster since the hub started (the
    /// `uplink_hub_deltas_received_total` counter): two reads a known time
    /// apart give a rate.
    deltas_received: u64,
    /// Requests over allocatable, per resource (0..1).
    allocation: Rates,
    /// Use over allocatable, per resource, where metrics are reported.
    utilization: Rates,
    session: Option<String>,
    agent_version: Option<String>,
    clock_skew_ms: Option<i64>,
    /// Objects the cluster reports (stored; held reports not counted).
    objects: usize,
    /// Reports held until placement can judge them.
    held: usize,
    /// What KCP placed on the cluster. Without a SyncTarget the cluster
    /// may report nothing.
    placement: crate::placement::PlacementSummary,
    summary: Option<uplink_protocol::ClusterSummary>,
}

/// The cluster `name` as `GET /api/v1/clusters` shows it; `None` when it
/// is gone.
pub(super) fn cluster(state: &HttpState, name: &ClusterName) -> Option<ClusterView> {
    let record = state.health.record(name)?;
    let link = cluster_state(
        &record,
        SystemTime::now(),
        state.heartbeat_interval,
        state.offline_grace,
    );
    let capacity = CapacityRecord::new(name, &record, link);
    Some(ClusterView {
        objects: state.store.cluster_objects(name),
        held: state.store.held(name),
        placement: state.placements.summary(name),
        state: link,
        health: capacity.health,
        health_reason: capacity.health_reason,
        allocation: capacity.allocation,
        utilization: capacity.utilization,
        connected: record.connected,
        last_heartbeat: record.last_heartbeat.and_then(rfc3339),
        connected_since: record
            .connected_at
            .filter(|_| record.connected)
            .and_then(rfc3339),
        deltas_received: record.deltas_received,
        session: record.session_id,
        agent_version: record.agent_version,
        clock_skew_ms: record.clock_skew_ms,
        summary: record.summary,
        name: name.clone(),
    })
}

/// One object in `GET /api/v1/objects`.
#[derive(Debug, Serialize)]
pub(super) struct ObjectView {
    #[serde(flatten)]
    key: ObjectKey,
    clusters: BTreeMap<String, EntryView>,
    desired_status: Option<Value>,
}

#[derive(Debug, Serialize)]
struct EntryView {
    status: Value,
    generation: Option<i64>,
    observed_generation: Option<i64>,
    observed_at_ms: i64,
    seq: u64,
    uid: String,
}

impl From<Entry> for EntryView {
    fn from(e: Entry) -> Self {
        EntryView {
            status: e.status.value(),
            generation: e.generation,
            observed_generation: e.observed_generation,
            observed_at_ms: e.observed_at_ms,
            seq: e.seq,
            uid: e.uid,
        }
    }
}

/// The object `key` as `GET /api/v1/objects` shows it; `None` when no
/// cluster reports it (any more).
pub(super) fn object(state: &HttpState, key: &ObjectKey) -> Option<ObjectView> {
    let entries = state.store.entries(key);
    if entries.is_empty() {
        return None;
    }
    Some(ObjectView {
        desired_status: state.aggregator.preview(key, &entries).status,
        clusters: entries
            .into_iter()
            .map(|(cluster, e)| (cluster, EntryView::from(e)))
            .collect(),
        key: key.clone(),
    })
}

/// `GET /api/v1/objects/<workspace>/<group>/<resource>/<namespace>/<name>`.
#[derive(Debug, Serialize)]
pub(super) struct ObjectDetail {
    #[serde(flatten)]
    key: ObjectKey,
    strategy: Strategy,
    merged_status: Option<Value>,
    clusters: BTreeMap<String, ClusterEntryView>,
    /// Conflicts of the merge now; `resolved_by` is null while open.
    conflicts: Vec<Conflict>,
    /// The same, as the writer last recorded them, with when they began.
    recorded_conflicts: Vec<PresentConflict>,
    /// Conflicts that ended, newest first (at most 20).
    history: Vec<EndedConflict>,
}

#[derive(Debug, Serialize)]
struct ClusterEntryView {
    state: ClusterState,
    /// How long ago the cluster observed this status, on the hub's clock.
    age_ms: i64,
    /// RFC 3339, the agent's clock corrected by its estimated skew.
    observed_at: Option<String>,
    observed_at_agent_ms: i64,
    clock_skew_ms: i64,
    #[serde(flatten)]
    entry: EntryView,
}

pub(super) fn object_detail(state: &HttpState, path: &str) -> Option<ObjectDetail> {
    // Each segment percent-decoded: a name may hold characters a path must
    // escape (the page escapes all but `:`).
    let parts: Vec<String> = path
        .split('/')
        .map(crate::capacity::api::decode_path_segment)
        .collect();
    let [workspace, group, resource, namespace, name] = parts.as_slice() else {
        return None;
    };
    let group = if group == "core" { "" } else { group.as_str() };
    let namespace = if namespace == "_" {
        None
    } else {
        Some(namespace.as_str())
    };
    let (key, entries) = state.store.find(|k| {
        k.workspace == *workspace
            && k.group == group
            && k.resource == *resource
            && k.namespace.as_deref() == namespace
            && k.name == *name
    })?;
    let now = SystemTime::now();
    let view = state.aggregator.cluster_view(now);
    let merged = state.aggregator.preview(&key, &entries);
    let clusters = entries
        .into_iter()
        .map(|(cluster, e)| {
            let info = view.get(&cluster);
            let corrected = view.corrected_ms(&cluster, &e);
            let observed_at = jiff::Timestamp::from_millisecond(corrected)
                .ok()
                .map(|t| t.to_string());
            let entry = ClusterEntryView {
                state: info.state,
                age_ms: unix_ms(now).saturating_sub(corrected),
                observed_at,
                observed_at_agent_ms: e.observed_at_ms,
                clock_skew_ms: info.skew_ms,
                entry: EntryView::from(e),
            };
            (cluster, entry)
        })
        .collect();
    Some(ObjectDetail {
        recorded_conflicts: state.aggregator.ledger().present(&key),
        history: state.aggregator.ledger().history(Some(&key)),
        strategy: merged.strategy,
        merged_status: merged.status,
        conflicts: merged.conflicts,
        clusters,
        key,
    })
}

/// One object in `GET /api/v1/conflicts`: its present conflicts.
#[derive(Debug, Serialize)]
pub(super) struct ObjectConflicts {
    object: ObjectKey,
    conflicts: Vec<PresentConflict>,
}

/// The conflicts present on `key`; `None` when it has none (any more).
pub(super) fn object_conflicts(state: &HttpState, key: &ObjectKey) -> Option<ObjectConflicts> {
    let conflicts = state.aggregator.ledger().present(key);
    (!conflicts.is_empty()).then(|| ObjectConflicts {
        object: key.clone(),
        conflicts,
    })
}

fn rfc3339(time: SystemTime) -> Option<String> {
    jiff::Timestamp::try_from(time).ok().map(|t| t.to_string())
}
