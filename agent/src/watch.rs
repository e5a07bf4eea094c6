//! Watches the cluster: one kube watcher per configured resource type (any
//! GVR, resolved through discovery, so CRDs work), plus one on namespaces for
//! their locator annotations. Everything after this stage sees only plain
//! [`WatchEvent`]s, so the pipeline can be driven without a cluster.
//!
//! The watchers re-list by themselves after `410 Gone` or a broken watch
//! (kube-runtime's `watcher`), which shows up here as
//! [`WatchEvent::Restarted`] … [`WatchEvent::Listed`]; objects not listed
//! again in between are gone. Only an object's `.status` leaves this stage:
//! spec, data and everything else is dropped on arrival.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{ApiResource, DynamicObject, PartialObjectMeta};
use kube::core::GroupVersion;
use kube::discovery::{self, Scope};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use uplink_protocol::SyncTargetLocator;

use crate::config::ResourceSpec;
use crate::mapping::NAMESPACE_LOCATOR;
use crate::transform::{PLACEMENT_LABEL_PREFIX, PLACEMENT_UPSYNC};
use crate::watched_object::WatchedObject;
use uplink_ops::backoff::{Backoff, Policy};

/// A resource type as discovery resolved it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WatchedResource {
    pub spec: ResourceSpec,
    /// The kind, e.g. `Deployment`.
    pub kind: String,
    /// Whether objects live in namespaces (only those can be synced).
    pub namespaced: bool,
    /// Watched for upsync (`--upsync-resources`): its objects travel whole,
    /// cluster-scoped ones too (see [`UpsyncedState`]).
    pub upsync: bool,
}

/// One object as a watch saw it, in downstream coordinates, status only.
#[derive(Debug, Clone, PartialEq)]
pub struct ObservedObject {
    pub resource: Arc<WatchedResource>,
    /// `None` for cluster-scoped objects.
    pub namespace: Option<String>,
    pub name: String,
    pub uid: String,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// The object's `.status`, `Null` when it has none.
    pub status: Value,
    /// For an object watched for upsync: the rest of it.
    pub upsync: Option<Arc<UpsyncedState>>,
}

/// What an upsync watch keeps of an object besides its status (protocol
/// version 3): the object, and where a cluster-scoped one goes upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct UpsyncedState {
    /// The object without `status` and `metadata.managedFields`, in
    /// downstream coordinates (the mapping turns it into KCP's).
    pub object: Value,
    /// The workspace of the cluster's SyncTarget: where a cluster-scoped
    /// object lives upstream.
    pub synctarget_workspace: String,
}

/// One namespace as the namespace watch saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedNamespace {
    pub name: String,
    /// The raw `kcp.io/namespace-locator` annotation, if present.
    pub locator: Option<String>,
}

/// Which watch an event comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WatchId {
    /// The namespace watch (locators).
    Namespaces,
    /// A configured resource type.
    Resource(ResourceSpec),
    /// The `events.k8s.io/v1` Events (best effort: not part of readiness
    /// nor of the cluster's snapshot).
    Events,
    /// A type watched for upsync: the objects labelled
    /// `state.workload.kcp.io/<syncTargetKey>: Upsync`, once the hub named
    /// the cluster's SyncTarget (not part of readiness: it cannot list
    /// before the first session).
    Upsync(ResourceSpec),
}

impl fmt::Display for WatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WatchId::Namespaces => f.write_str("namespaces.v1"),
            WatchId::Resource(spec) => spec.fmt(f),
            WatchId::Events => f.write_str("events.v1.events.k8s.io"),
            WatchId::Upsync(spec) => write!(f, "upsync:{spec}"),
        }
    }
}

/// What the watch stage tells the pipeline.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent {
    /// The watch (re)started a full list. Objects of this watch that are not
    /// listed again before [`WatchEvent::Listed`] no longer exist.
    Restarted(WatchId),
    /// The list that began with [`WatchEvent::Restarted`] is complete.
    Listed(WatchId),
    /// An object was added, modified or listed.
    Applied(ObservedObject),
    /// An object was deleted.
    Deleted(ObservedObject),
    /// A namespace was added, modified or listed.
    NamespaceApplied(ObservedNamespace),
    /// A namespace was deleted.
    NamespaceDeleted(String),
    /// An `events.k8s.io/v1` Event was added, modified or listed (as its
    /// JSON; [`crate::events::read`] reads what it needs). Deletions do
    /// not matter: an Event's occurrences happened.
    Event(Value),
    /// The watch failed; it retries by itself.
    Failed { watch: WatchId, error: String },
    /// Discovery cannot resolve the resource type (e.g. its CRD is not
    /// installed); retried by itself. Until it resolves, the cluster has no
    /// objects of this type: the pipeline counts it as listed and empty, so
    /// one missing type does not hold back the cluster's snapshot.
    Unavailable { watch: WatchId, error: String },
}

/// Why a resource type cannot be watched.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("discovery of {resource} failed: {source}")]
    Discovery {
        resource: ResourceSpec,
        #[source]
        source: kube::Error,
    },
    #[error("the API server does not serve {resource} (is the CRD installed?)")]
    NotServed { resource: ResourceSpec },
}

/// Resolves `spec` through discovery: its kind and scope.
pub async fn resolve(
    client: &Client,
    spec: &ResourceSpec,
) -> Result<(ApiResource, WatchedResource), ResolveError> {
    let gv = GroupVersion::gv(&spec.group, &spec.version);
    let group = discovery::pinned_group(client, &gv)
        .await
        .map_err(|source| ResolveError::Discovery {
            resource: spec.clone(),
            source,
        })?;
    let (api_resource, caps) = group
        .versioned_resources(&spec.version)
        .into_iter()
        .find(|(ar, _)| ar.plural == spec.resource)
        .ok_or_else(|| ResolveError::NotServed {
            resource: spec.clone(),
        })?;
    let watched = WatchedResource {
        spec: spec.clone(),
        kind: api_resource.kind.clone(),
        namespaced: caps.scope == Scope::Namespaced,
        upsync: false,
    };
    Ok((api_resource, watched))
}

/// Starts the namespace watch and one watch per resource type, each a task
/// sending into `events` until `stop` is cancelled. The tasks end (dropping
/// their senders) once stopped.
pub fn spawn_watches(
    client: Client,
    resources: &[ResourceSpec],
    events: mpsc::Sender<WatchEvent>,
    stop: CancellationToken,
) -> tokio::task::JoinSet<()> {
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(watch_namespaces(
        client.clone(),
        events.clone(),
        stop.clone(),
    ));
    for spec in resources {
        tasks.spawn(watch_resource(
            client.clone(),
            spec.clone(),
            events.clone(),
            stop.clone(),
        ));
    }
    tasks
}

/// Starts the watch of `events.k8s.io/v1` Events in every namespace once
/// `synced` turns true (before that, no object is known to relate an Event
/// to), sending into `events` until `stop` is cancelled.
pub fn spawn_event_watch(
    tasks: &mut tokio::task::JoinSet<()>,
    client: Client,
    mut synced: tokio::sync::watch::Receiver<bool>,
    events: mpsc::Sender<WatchEvent>,
    stop: CancellationToken,
) {
    tasks.spawn(async move {
        tokio::select! {
            () = stop.cancelled() => return,
            synced = synced.wait_for(|synced| *synced) => if synced.is_err() { return },
        }
        watch_events(client, events, stop).await;
    });
}

async fn watch_events(client: Client, events: mpsc::Sender<WatchEvent>, stop: CancellationToken) {
    let resource = ApiResource::from_gvk_with_plural(
        &kube::core::GroupVersionKind::gvk("events.k8s.io", "v1", "Event"),
        "events",
    );
    let api: Api<DynamicObject> = Api::all_with(client, &resource);
    tracing::info!("watching events.k8s.io/v1 Events");
    let mut stream = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
    loop {
        let next = tokio::select! {
            () = stop.cancelled() => return,
            next = stream.next() => next,
        };
        let event = match next {
            None => return,
            Some(Ok(watcher::Event::Apply(event) | watcher::Event::InitApply(event))) => {
                match serde_json::to_value(event) {
                    Ok(event) => WatchEvent::Event(event),
                    Err(e) => WatchEvent::Failed {
                        watch: WatchId::Events,
                        error: format!("re-encoding an Event: {e}"),
                    },
                }
            }
            Some(Ok(
                watcher::Event::Init | watcher::Event::InitDone | watcher::Event::Delete(_),
            )) => continue,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "event watch failed; retrying");
                WatchEvent::Failed {
                    watch: WatchId::Events,
                    error: e.to_string(),
                }
            }
        };
        if !send(&events, event, &stop).await {
            return;
        }
    }
}

/// Retry pacing of discovery, same shape as reconnects.
fn discovery_backoff() -> Backoff {
    Backoff::new(Policy::spread(
        Duration::from_secs(1),
        Duration::from_secs(60),
    ))
}

async fn watch_resource(
    client: Client,
    spec: ResourceSpec,
    events: mpsc::Sender<WatchEvent>,
    stop: CancellationToken,
) {
    let id = WatchId::Resource(spec.clone());
    let mut retry = discovery_backoff();
    let (api_resource, watched) = loop {
        match resolve(&client, &spec).await {
            Ok(resolved) => break resolved,
            Err(e) => {
                let delay = retry.next_delay();
                tracing::warn!(resource = %spec, error = %e, retry_in = ?delay, "cannot watch resource yet");
                let failed = WatchEvent::Unavailable {
                    watch: id.clone(),
                    error: e.to_string(),
                };
                if !send(&events, failed, &stop).await {
                    return;
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    };
    tracing::info!(resource = %spec, kind = %watched.kind, namespaced = watched.namespaced, "watching");
    let watched = Arc::new(watched);
    // Decodes coordinates and `.status` only (see `watched_object`).
    let api: Api<WatchedObject> = Api::all_with(client, &api_resource);
    let mut stream = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
    loop {
        let next = tokio::select! {
            () = stop.cancelled() => return,
            next = stream.next() => next,
        };
        let event = match next {
            None => return,
            Some(Ok(watcher::Event::Init)) => WatchEvent::Restarted(id.clone()),
            Some(Ok(watcher::Event::InitDone)) => WatchEvent::Listed(id.clone()),
            Some(Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o))) => {
                WatchEvent::Applied(observe(&watched, o))
            }
            Some(Ok(watcher::Event::Delete(o))) => WatchEvent::Deleted(observe(&watched, o)),
            Some(Err(e)) => {
                tracing::warn!(resource = %spec, error = %e, "watch failed; retrying");
                WatchEvent::Failed {
                    watch: id.clone(),
                    error: e.to_string(),
                }
            }
        };
        if !send(&events, event, &stop).await {
            return;
        }
    }
}

async fn watch_namespaces(
    client: Client,
    events: mpsc::Sender<WatchEvent>,
    stop: CancellationToken,
) {
    // Metadata only: the locator is an annotation.
    let api: Api<PartialObjectMeta<Namespace>> = Api::all(client);
    let mut stream = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
    loop {
        let next = tokio::select! {
            () = stop.cancelled() => return,
            next = stream.next() => next,
        };
        let event = match next {
            None => return,
            Some(Ok(watcher::Event::Init)) => WatchEvent::Restarted(WatchId::Namespaces),
            Some(Ok(watcher::Event::InitDone)) => WatchEvent::Listed(WatchId::Namespaces),
            Some(Ok(watcher::Event::Apply(ns) | watcher::Event::InitApply(ns))) => {
                WatchEvent::NamespaceApplied(observe_namespace(ns))
            }
            Some(Ok(watcher::Event::Delete(ns))) => {
                WatchEvent::NamespaceDeleted(ns.metadata.name.unwrap_or_default())
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "namespace watch failed; retrying");
                WatchEvent::Failed {
                    watch: WatchId::Namespaces,
                    error: e.to_string(),
                }
            }
        };
        if !send(&events, event, &stop).await {
            return;
        }
    }
}

/// Sends unless stopped first; false when the watch should end.
async fn send(
    events: &mpsc::Sender<WatchEvent>,
    event: WatchEvent,
    stop: &CancellationToken,
) -> bool {
    tokio::select! {
        () = stop.cancelled() => false,
        sent = events.send(event) => sent.is_ok(),
    }
}

/// Keeps what the pipeline needs of `object`: coordinates, generation, status.
pub fn observe(
    resource: &Arc<WatchedResource>,
    object: impl Into<WatchedObject>,
) -> ObservedObject {
    let WatchedObject { metadata, status } = object.into();
    ObservedObject {
        resource: Arc::clone(resource),
        namespace: metadata.namespace,
        name: metadata.name.unwrap_or_default(),
        uid: metadata.uid.unwrap_or_default(),
        generation: metadata.generation,
        status,
        upsync: None,
    }
}

/// Keeps what upsync needs of `object`: coordinates, generation, status,
/// and the rest of it.
pub fn observe_whole(
    resource: &Arc<WatchedResource>,
    object: DynamicObject,
    synctarget_workspace: &str,
) -> ObservedObject {
    let metadata = object.metadata.clone();
    // Cannot fail: a DynamicObject is JSON already (it was decoded from
    // the API server's JSON; its fields are strings, maps and
    // serde_json::Values), and serde_json fails only on maps with non-string
    // keys or a Serialize impl that errors, which it has neither of.
    let mut whole = serde_json::to_value(object).unwrap_or(Value::Null);
    let status = match whole.as_object_mut() {
        Some(map) => map.remove("status").unwrap_or(Value::Null),
        None => Value::Null,
    };
    if let Some(meta) = whole.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
    }
    ObservedObject {
        resource: Arc::clone(resource),
        namespace: metadata.namespace,
        name: metadata.name.unwrap_or_default(),
        uid: metadata.uid.unwrap_or_default(),
        generation: metadata.generation,
        status,
        upsync: Some(Arc::new(UpsyncedState {
            object: whole,
            synctarget_workspace: synctarget_workspace.to_owned(),
        })),
    }
}

/// Starts one watch per upsync type (resolved at start-up: an unknown type
/// is a configuration error, see [`crate::Agent::bind`]). Each waits for
/// the hub to name the cluster's SyncTarget (`sync_target`, set from every
/// `Welcome`), then lists and watches the objects labelled
/// `state.workload.kcp.io/<key>: Upsync`, starting over when the
/// SyncTarget changes.
pub fn spawn_upsync_watches(
    tasks: &mut tokio::task::JoinSet<()>,
    client: &Client,
    resources: &[(ApiResource, WatchedResource)],
    sync_target: &tokio::sync::watch::Receiver<Option<SyncTargetLocator>>,
    events: &mpsc::Sender<WatchEvent>,
    stop: &CancellationToken,
) {
    for (api_resource, watched) in resources {
        tasks.spawn(watch_upsync(
            client.clone(),
            api_resource.clone(),
            Arc::new(WatchedResource {
                upsync: true,
                ..watched.clone()
            }),
            sync_target.clone(),
            events.clone(),
            stop.clone(),
        ));
    }
}

async fn watch_upsync(
    client: Client,
    api_resource: ApiResource,
    watched: Arc<WatchedResource>,
    mut sync_target: tokio::sync::watch::Receiver<Option<SyncTargetLocator>>,
    events: mpsc::Sender<WatchEvent>,
    stop: CancellationToken,
) {
    let id = WatchId::Upsync(watched.spec.clone());
    loop {
        let target = sync_target.borrow_and_update().clone();
        let Some(target) = target else {
            tokio::select! {
                () = stop.cancelled() => return,
                changed = sync_target.changed() => if changed.is_err() { return } else { continue },
            }
        };
        let selector = format!("{PLACEMENT_LABEL_PREFIX}{}={PLACEMENT_UPSYNC}", target.key);
        tracing::info!(resource = %watched.spec, %selector, "watching for upsync");
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &api_resource);
        let config = watcher::Config::default().labels(&selector);
        let mut stream = std::pin::pin!(watcher(api, config).default_backoff());
        loop {
            let next = tokio::select! {
                () = stop.cancelled() => return,
                changed = sync_target.changed() => {
                    if changed.is_err() { return }
                    break;
                }
                next = stream.next() => next,
            };
            let event = match next {
                None => return,
                Some(Ok(watcher::Event::Init)) => WatchEvent::Restarted(id.clone()),
                Some(Ok(watcher::Event::InitDone)) => WatchEvent::Listed(id.clone()),
                Some(Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o))) => {
                    WatchEvent::Applied(observe_whole(&watched, o, &target.workspace))
                }
                Some(Ok(watcher::Event::Delete(o))) => {
                    WatchEvent::Deleted(observe_whole(&watched, o, &target.workspace))
                }
                Some(Err(e)) => {
                    tracing::warn!(resource = %watched.spec, error = %e, "upsync watch failed; retrying");
                    WatchEvent::Failed {
                        watch: id.clone(),
                        error: e.to_string(),
                    }
                }
            };
            if !send(&events, event, &stop).await {
                return;
            }
        }
    }
}

fn observe_namespace(ns: PartialObjectMeta<Namespace>) -> ObservedNamespace {
    let locator = ns
        .metadata
        .annotations
        .and_then(|mut annotations| annotations.remove(NAMESPACE_LOCATOR));
    ObservedNamespace {
        name: ns.metadata.name.unwrap_or_default(),
        locator,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn only_status_leaves_the_watch_stage() {
        let resource = Arc::new(WatchedResource {
            spec: ResourceSpec::deployments(),
            kind: "Deployment".into(),
            namespaced: true,
            upsync: false,
        });
        let object: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "ns", "uid": "u", "generation": 3},
            "spec": {"template": {"spec": {"containers": [{"env": [{"name": "PASSWORD", "value": "hunter2"}]}]}}},
            "status": {"replicas": 1},
        }))
        .unwrap();
        let observed = observe(&resource, object);
        assert_eq!(observed.status, json!({"replicas": 1}));
        assert_eq!(observed.generation, Some(3));
        assert_eq!(observed.namespace.as_deref(), Some("ns"));
        assert!(!format!("{observed:?}").contains("hunter2"));
    }
}
