//! Where placement comes from: KCP's SyncTargets and the objects of every
//! synced type, as [`watch`] streams. [`KubeUpstream`] reads them from KCP
//! (one wildcard `/clusters/*` list+watch per type; which SyncTargets an
//! object is placed on is in its labels, read by [`super::index`]); tests
//! may substitute their own source.

use std::collections::BTreeMap;

use futures::StreamExt;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uplink_protocol::resource::ResourceSpec;

use super::key::{CLUSTER_ANNOTATION, DELETION_ANNOTATION_PREFIX};
use super::watch::{self, Collection, Event, WatchError, Watched};
use crate::config::UpstreamMode;
use crate::writer::KubeUpstream;

/// Placement, as streams of list+watch events.
pub trait PlacementSource: Send + Sync + std::fmt::Debug + 'static {
    /// The SyncTargets (`workload.kcp.io/v1alpha1`) in `workspace`.
    fn synctargets(
        &self,
        workspace: &str,
    ) -> BoxStream<'static, Result<Event<SyncTargetObject>, WatchError>>;

    /// The objects of type `resource` in every workspace, placed or not:
    /// no label selector can ask for "placed on any SyncTarget".
    fn placed(
        &self,
        resource: &ResourceSpec,
    ) -> BoxStream<'static, Result<Event<PlacedObject>, WatchError>>;
}

/// An object's metadata: the fields the hub reads by name, the rest kept
/// as it came, except `managedFields` (dropped as it is read: often the
/// largest part of the metadata, and never read or sent down).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub uid: String,
    #[serde(default)]
    pub resource_version: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub finalizers: Vec<String>,
    #[serde(default)]
    pub deletion_timestamp: Option<String>,
    /// Every other metadata field.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// An object that may be placed on a cluster, without its status and its
/// `managedFields` (dropped as it is read: the hub writes the status and
/// never reads it back from KCP, and most watch events of a placed object
/// are the hub's own status writes). Serializes back to what it was read
/// from, less those (the placement index keeps objects as text).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PlacedObject {
    /// Set in watch events and in lists of custom resources; lists of
    /// built-in types leave it out (the list's kind names it).
    #[serde(default)]
    pub kind: Option<String>,
    pub metadata: Metadata,
    /// Every other top-level field: apiVersion, spec, data, ...
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// Metadata the server sets and changes by itself: never part of what goes
/// down to a cluster, so a write that changes only these (a status write, a
/// finalizer) sends nothing down.
const SERVER_METADATA: &[&str] = &[
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
    "finalizers",
];

impl PlacedObject {
    /// The workspace the object lives in, from kcp's `kcp.io/cluster`
    /// annotation; `None` when it has none.
    pub fn workspace(&self) -> Option<&str> {
        self.metadata
            .annotations
            .get(CLUSTER_ANNOTATION)
            .map(String::as_str)
    }
}

impl PlacedObject {
    /// Drops what no cluster's placement reads: the server's metadata
    /// ([`SERVER_METADATA`] kept in `metadata.other`), and the status should
    /// an object built by hand carry one (a read never keeps it, nor
    /// `managedFields`: `decode.rs`), so that keeping the object costs what
    /// its [`downward_manifest`](Self::downward_manifest) needs and no more.
    pub fn slim(&mut self) {
        self.rest.remove("status");
        for field in SERVER_METADATA {
            self.metadata.other.remove(*field);
        }
    }

    /// Whether the object is being deleted in KCP (it waits for finalizers).
    pub fn deleting(&self) -> bool {
        self.metadata.deletion_timestamp.is_some()
    }

    /// Whether kcp is taking the object off the SyncTarget with key
    /// `synctarget_key` (its deletion annotation for that key is set).
    pub fn leaving(&self, synctarget_key: &str) -> bool {
        self.metadata
            .annotations
            .keys()
            .any(|k| k.strip_prefix(DELETION_ANNOTATION_PREFIX) == Some(synctarget_key))
    }

    /// What goes down to a cluster: the object as JSON text without status
    /// and without the metadata the server sets ([`SERVER_METADATA`]), its
    /// keys sorted (serde_json's maps are ordered), so the same object gives
    /// the same text and a change of anything else gives another. The
    /// `kcp.io/cluster` annotation goes too: the workspace travels in the
    /// delta's object reference.
    pub fn downward_manifest(&self, api_version: &str, kind: &str) -> String {
        let mut metadata = self.metadata.other.clone();
        for field in SERVER_METADATA {
            metadata.remove(*field);
        }
        metadata.insert("name".into(), Value::from(self.metadata.name.clone()));
        if let Some(namespace) = &self.metadata.namespace {
            metadata.insert("namespace".into(), Value::from(namespace.clone()));
        }
        if !self.metadata.labels.is_empty() {
            metadata.insert("labels".into(), json_map(&self.metadata.labels));
        }
        let annotations: BTreeMap<String, String> = self
            .metadata
            .annotations
            .iter()
            .filter(|(key, _)| *key != CLUSTER_ANNOTATION)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !annotations.is_empty() {
            metadata.insert("annotations".into(), json_map(&annotations));
        }
        let mut object = self.rest.clone();
        object.remove("status");
        object.insert("apiVersion".into(), Value::from(api_version));
        object.insert("kind".into(), Value::from(kind));
        object.insert("metadata".into(), Value::Object(metadata));
        // A map of JSON values always serializes.
        serde_json::to_string(&object).unwrap_or_default()
    }
}

fn json_map(map: &BTreeMap<String, String>) -> Value {
    Value::Object(
        map.iter()
            .map(|(k, v)| (k.clone(), Value::from(v.clone())))
            .collect(),
    )
}

impl Watched for PlacedObject {
    fn resource_version(&self) -> Option<&str> {
        self.metadata.resource_version.as_deref()
    }

    /// Only objects placed somewhere: a list of a type carries every
    /// object in every workspace.
    fn keep_listed(&self) -> bool {
        super::index::sync_keys(self).next().is_some()
    }
}

/// A SyncTarget (only its metadata is read).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct SyncTargetObject {
    pub metadata: Metadata,
}

impl Watched for SyncTargetObject {
    fn resource_version(&self) -> Option<&str> {
        self.metadata.resource_version.as_deref()
    }
}

/// The collection path of `resource` (`/apis/apps/v1/deployments`, `/api/v1/pods`).
pub fn collection_path(resource: &ResourceSpec) -> String {
    if resource.group.is_empty() {
        format!("/api/{}/{}", resource.version, resource.resource)
    } else {
        format!(
            "/apis/{}/{}/{}",
            resource.group, resource.version, resource.resource
        )
    }
}

impl PlacementSource for KubeUpstream {
    fn synctargets(
        &self,
        workspace: &str,
    ) -> BoxStream<'static, Result<Event<SyncTargetObject>, WatchError>> {
        let resource = ResourceSpec {
            resource: super::SYNCTARGET_RESOURCE.to_owned(),
            version: "v1alpha1".to_owned(),
            group: super::SYNCTARGET_GROUP.to_owned(),
        };
        self.stream(workspace, &resource)
    }

    fn placed(
        &self,
        resource: &ResourceSpec,
    ) -> BoxStream<'static, Result<Event<PlacedObject>, WatchError>> {
        // Every workspace at once: kcp's wildcard; a plain Kubernetes
        // upstream has one space only.
        let workspace = match self.mode() {
            UpstreamMode::Kcp => "*",
            UpstreamMode::Kubernetes => "",
        };
        self.stream(workspace, resource)
    }
}

impl KubeUpstream {
    fn stream<T: Watched>(
        &self,
        workspace: &str,
        resource: &ResourceSpec,
    ) -> BoxStream<'static, Result<Event<T>, WatchError>> {
        let path = collection_path(resource);
        match self.workspace_client(workspace) {
            Ok(client) => watch::list_watch(Collection {
                client,
                path,
                label_selector: None,
            }),
            // The base configuration was checked at start-up; a workspace
            // that cannot be addressed fails for good, and says so once.
            Err(source) => futures::stream::once(async move {
                Err(WatchError {
                    what: "addressing",
                    path,
                    attempt: 1,
                    retry_in: std::time::Duration::MAX,
                    source,
                })
            })
            .chain(futures::stream::pending())
            .boxed(),
        }
    }
}
