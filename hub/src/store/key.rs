//! The store's vocabulary: which object ([`ObjectKey`]), what a cluster
//! reported of it ([`Entry`], [`Update`]), where its stream stands
//! ([`Position`]) and what an ingest did ([`Applied`], [`StoreError`]).

use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, OnceLock};

use serde::Serialize;
use uplink_protocol::{Delta, ObjectRef};

use super::RefusedHeld;
use crate::status::Status;

/// A cluster's name, as its certificate proves it.
pub type ClusterName = String;

/// Names one upstream object: where it lives in KCP and what it is. The
/// downstream uid is not part of it (each cluster has its own).
///
/// A shared handle, hashed once when it is made: every report passes
/// through several maps (the store's, the cluster's keys, the write queue),
/// and hashing and comparing seven strings at each was a third of the hub's
/// CPU per delta. Clones share the parts; two handles of one object compare
/// by pointer first. The hash is keyed per process (agents choose the
/// strings, so it must not be predictable). Fields read through `Deref`.
#[derive(Clone)]
pub struct ObjectKey(Arc<Interned>);

struct Interned {
    hash: u64,
    parts: KeyParts,
}

/// The parts of an [`ObjectKey`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct KeyParts {
    pub workspace: String,
    pub group: String,
    pub version: String,
    pub resource: String,
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjectKey {
    pub fn new(parts: KeyParts) -> Self {
        static HASHER: OnceLock<RandomState> = OnceLock::new();
        let hash = HASHER.get_or_init(RandomState::new).hash_one(&parts);
        Self(Arc::new(Interned { hash, parts }))
    }

    /// The parts, to build a changed key from.
    pub fn parts(&self) -> &KeyParts {
        &self.0.parts
    }
}

#[cfg(test)]
impl ObjectKey {
    /// Deployment `name` in workspace `root:a`, namespace `default`: the
    /// key of unit tests in which only the name matters.
    pub fn deployment(name: &str) -> Self {
        Self::new(KeyParts {
            workspace: "root:a".into(),
            group: "apps".into(),
            version: "v1".into(),
            resource: "deployments".into(),
            kind: "Deployment".into(),
            namespace: Some("default".into()),
            name: name.into(),
        })
    }
}

impl From<KeyParts> for ObjectKey {
    fn from(parts: KeyParts) -> Self {
        Self::new(parts)
    }
}

impl std::ops::Deref for ObjectKey {
    type Target = KeyParts;

    fn deref(&self) -> &KeyParts {
        &self.0.parts
    }
}

impl PartialEq for ObjectKey {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
            || (self.0.hash == other.0.hash && self.0.parts == other.0.parts)
    }
}

impl Eq for ObjectKey {}

impl std::hash::Hash for ObjectKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.0.hash);
    }
}

impl PartialOrd for ObjectKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ObjectKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.parts.cmp(&other.0.parts)
    }
}

impl std::fmt::Debug for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.parts.fmt(f)
    }
}

impl Serialize for ObjectKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.parts.serialize(serializer)
    }
}

impl From<&ObjectRef> for ObjectKey {
    fn from(object: &ObjectRef) -> Self {
        Self::new(KeyParts {
            workspace: object.workspace.clone(),
            group: object.group.clone(),
            version: object.version.clone(),
            resource: object.resource.clone(),
            kind: object.kind.clone(),
            namespace: object.namespace.clone(),
            name: object.name.clone(),
        })
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

impl Update {
    /// A checked delta as a store update, with `entry` (its uid moved in):
    /// the delta's strings taken over, not copied (this runs once per
    /// delta).
    pub fn from_delta(delta: Delta, entry: Option<Entry>) -> Self {
        let ObjectRef {
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
            key: ObjectKey::new(KeyParts {
                workspace,
                group,
                version,
                resource,
                kind,
                namespace,
                name,
            }),
            seq: delta.seq,
            entry: entry.map(|entry| Entry { uid, ..entry }),
        }
    }
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
