//! The store's vocabulary: which object ([`ObjectKey`]), what a cluster
//! reported of it ([`Entry`], [`Update`]), where its stream stands
//! ([`Position`]) and what an ingest did ([`Applied`], [`StoreError`]).

use std::sync::Arc;

use serde::Serialize;
use uplink_protocol::ObjectRef;

use super::RefusedHeld;
use crate::status::Status;

/// A cluster's name, as its certificate proves it.
pub type ClusterName = String;

/// Names one upstream object: where it lives in KCP and what it is. The
/// downstream uid is not part of it (each cluster has its own).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ObjectKey {
    pub workspace: String,
    pub group: String,
    pub version: String,
    pub resource: String,
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

impl From<&ObjectRef> for ObjectKey {
    fn from(object: &ObjectRef) -> Self {
        Self {
            workspace: object.workspace.clone(),
            group: object.group.clone(),
            version: object.version.clone(),
            resource: object.resource.clone(),
            kind: object.kind.clone(),
            namespace: object.namespace.clone(),
            name: object.name.clone(),
        }
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        write!(f, "{}:{}/{}/", self.workspace, group, self.resource)?;
        if let Some(ns) = &self.namespace {
            write!(f, "{ns}/")?;
        }
        f.write_str(&self.name)
    }
}

/// What one cluster last reported about one object.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The object's `.status`, always a JSON object, as the agent's text.
    pub status: Status,
    pub generation: Option<i64>,
    pub observed_generation: Option<i64>,
    /// When the agent observed it (agent clock, ms since the Unix epoch).
    pub observed_at_ms: i64,
    /// The agent's sequence number of this report.
    pub seq: u64,
    /// The downstream object's uid.
    pub uid: String,
}

/// One change reported by a cluster: the object and its new entry, or `None`
/// when the object was deleted downstream.
#[derive(Debug, Clone)]
pub struct Update {
    pub key: ObjectKey,
    pub seq: u64,
    pub entry: Option<Entry>,
}

/// Where a cluster's stream stands: the agent session the store's entries
/// come from and the highest sequence number stored from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub session: Arc<str>,
    pub seq: u64,
}

/// What a batch or snapshot did: the cluster's cumulative ack, and the
/// reports refused for a memory budget (object, sequence number, reason),
/// to be told to the agent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Applied {
    pub seq: u64,
    pub refused: Vec<RefusedHeld>,
}

/// Why the store refused a change; nothing of it was applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("cluster {cluster} would report {objects} objects, more than the limit of {max}")]
    TooManyObjects {
        cluster: ClusterName,
        objects: u64,
        max: u64,
    },
}
