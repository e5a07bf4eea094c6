//! The pipeline between the watches and the outbox: what the agent knows
//! about the cluster, and what each watch event changes upstream.
//!
//! For every namespaced object of a watched type it keeps the extracted
//! status and where the object maps upstream; for every namespace, its
//! locator. Both halves are needed because a locator can change after the
//! objects arrived: then every object in the namespace is deleted under its
//! old upstream coordinates and sent under its new ones. Memory is bounded by
//! the number of watched objects.
//!
//! Order of one event: [`crate::watch`] → [`crate::extract`] →
//! [`crate::mapping`] → [`crate::outbox`].
//!
//! Downstream Events pass through here too: only the inventory knows which
//! objects are synced and where they live upstream, so it reads each Event
//! ([`crate::events::read`]) against its objects and hands what is about a
//! synced object to the event lane.
//!
//! It also says when the cluster is **synced** ([`Inventory::synced`]): every
//! watch has completed its initial list (a resource type discovery cannot
//! resolve counts as listed and empty). Before that the outbox holds only
//! part of the cluster, and a snapshot of it would make the hub drop (and
//! then re-add) every object not listed yet, so the session does not start
//! until then. Once synced it stays synced: a later re-list keeps the
//! previous objects until it completes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::{FutureExt, Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use uplink_protocol::ObjectRef;

use crate::clock::AgentClock;
use crate::config::ResourceSpec;
use crate::events::{Regarding, SharedEventLane, read};
use crate::extract::{ExtractedStatus, extract, status_is_sendable};
use crate::health::AgentHealth;
use crate::mapping::{
    DownstreamRef, Locator, cluster_scoped_upstream, to_upstream, upsynced_object,
};
use crate::metrics::Metrics;
use crate::outbox::SharedOutbox;
use crate::watch::{
    ObservedNamespace, ObservedObject, UpsyncedState, WatchEvent, WatchId, WatchedResource,
};

/// One object known downstream (its namespace, type and name are its keys
/// in [`Inventory::objects`]).
#[derive(Debug)]
struct Tracked {
    /// The downstream uid.
    uid: String,
    /// Shares its text with the outbox.
    status: ExtractedStatus,
    /// Where it was last reported upstream, if its namespace has a locator
    /// (shared with the outbox).
    upstream: Option<Arc<ObjectRef>>,
    /// Watched for upsync: the rest of the object, in downstream
    /// coordinates (mapped again when its namespace's locator changes).
    upsync: Option<Arc<UpsyncedState>>,
    /// The list epoch of its watch when it was last seen.
    epoch: u64,
}

/// One namespace known downstream.
#[derive(Debug)]
struct NamespaceEntry {
    /// The raw annotation, to log a malformed one only when it changes.
    raw: Option<String>,
    locator: Option<Locator>,
    epoch: u64,
}

/// Object key inside one namespace: its type (one allocation shared by
/// every object of the type) and name.
type ObjectKey = (Arc<WatchedResource>, String);

/// What the agent knows about the cluster; applies watch events to the outbox.
#[derive(Debug)]
pub struct Inventory {
    namespaces: HashMap<String, NamespaceEntry>,
    /// namespace → objects in it.
    objects: HashMap<String, HashMap<ObjectKey, Tracked>>,
    /// Current list epoch per watch (bumped on every restart).
    epochs: HashMap<WatchId, u64>,
    counts: HashMap<ResourceSpec, u64>,
    /// Resource watches discovery could not resolve (as `WatchId` text, the
    /// names [`AgentHealth::watches_not_ready`] reports).
    unavailable: HashSet<String>,
    /// Whether every watch completed its initial list (or is unavailable).
    synced: tokio::sync::watch::Sender<bool>,
    /// The watched types seen so far, to find the object an Event is about
    /// by its API group and kind (a few: one per configured type).
    kinds: Vec<Arc<WatchedResource>>,
    /// Where Events about synced objects go; `None`: not reported.
    events: Option<SharedEventLane>,
    /// The upsync watches whose list is complete (since their last
    /// restart), and how many: a snapshot names every upsynced object only
    /// once all of them are.
    upsync_listed: HashSet<ResourceSpec>,
    upsync_listed_count: tokio::sync::watch::Sender<usize>,
    outbox: SharedOutbox,
    metrics: Metrics,
    health: AgentHealth,
    clock: AgentClock,
}

impl Inventory {
    pub fn new(
        outbox: SharedOutbox,
        metrics: Metrics,
        health: AgentHealth,
        clock: AgentClock,
    ) -> Self {
        Self {
            namespaces: HashMap::new(),
            objects: HashMap::new(),
            epochs: HashMap::new(),
            counts: HashMap::new(),
            unavailable: HashSet::new(),
            synced: tokio::sync::watch::Sender::new(false),
            kinds: Vec::new(),
            events: None,
            upsync_listed: HashSet::new(),
            upsync_listed_count: tokio::sync::watch::Sender::new(0),
            outbox,
            metrics,
            health,
            clock,
        }
    }

    /// How many upsync watches have a complete list (since their last
    /// restart, e.g. for a new SyncTarget).
    pub fn upsync_listed(&self) -> tokio::sync::watch::Receiver<usize> {
        self.upsync_listed_count.subscribe()
    }

    /// Reads Events into `lane` (see the module documentation).
    pub fn with_events(mut self, lane: SharedEventLane) -> Self {
        self.events = Some(lane);
        self
    }

    /// Turns `true` once every watch completed its initial list, a resource
    /// type discovery cannot resolve counting as listed and empty; never
    /// turns back. Until then a snapshot would be incomplete.
    pub fn synced(&self) -> tokio::sync::watch::Receiver<bool> {
        self.synced.subscribe()
    }

    fn update_synced(&self) {
        if *self.synced.borrow() {
            return;
        }
        let pending = self.health.watches_not_ready();
        if pending.iter().all(|w| self.unavailable.contains(w)) {
            tracing::info!(unavailable = ?self.unavailable, "initial lists complete; the cluster is synced");
            self.synced.send_replace(true);
        }
    }

    /// Applies one event; wakes the session when the outbox changed.
    pub fn apply(&mut self, event: WatchEvent) {
        let queued = match event {
            WatchEvent::Restarted(watch) => {
                if let WatchId::Upsync(spec) = &watch {
                    self.upsync_listed.remove(spec);
                    self.upsync_listed_count
                        .send_replace(self.upsync_listed.len());
                }
                *self.epochs.entry(watch).or_default() += 1;
                false
            }
            WatchEvent::Listed(watch) => {
                let upsync = match &watch {
                    WatchId::Upsync(spec) => Some(spec.clone()),
                    _ => None,
                };
                let queued = self.listed(watch);
                if let Some(spec) = upsync {
                    // After its objects are in the outbox: a snapshot taken
                    // from now on names them.
                    self.upsync_listed.insert(spec);
                    self.upsync_listed_count
                        .send_replace(self.upsync_listed.len());
                }
                self.update_synced();
                queued
            }
            WatchEvent::Applied(object) => self.object_applied(object),
            WatchEvent::Deleted(object) => self.object_deleted(&object),
            WatchEvent::NamespaceApplied(ns) => self.namespace_applied(ns),
            WatchEvent::NamespaceDeleted(name) => self.namespace_deleted(&name),
            WatchEvent::Event(event) => {
                self.event(&event);
                false
            }
            WatchEvent::Failed { watch, error } => {
                self.metrics
                    .watch_errors
                    .with_label_values(&[&watch.to_string()])
                    .inc();
                // Events are best effort: their watch failing does not make
                // the agent unready.
                if watch != WatchId::Events {
                    self.health.update(&watch, |h| h.error = Some(error));
                }
                false
            }
            WatchEvent::Unavailable { watch, error } => {
                self.metrics
                    .watch_errors
                    .with_label_values(&[&watch.to_string()])
                    .inc();
                self.health.update(&watch, |h| h.error = Some(error));
                self.unavailable.insert(watch.to_string());
                self.update_synced();
                false
            }
        };
        if queued {
            self.outbox.notify();
        }
    }

    fn epoch(&self, watch: &WatchId) -> u64 {
        self.epochs.get(watch).copied().unwrap_or_default()
    }

    fn object_applied(&mut self, object: ObservedObject) -> bool {
        let spec = object.resource.spec.clone();
        let watch = watch_of(&object.resource);
        self.metrics
            .watch_events
            .with_label_values(&[&watch.to_string()])
            .inc();
        if !object.resource.upsync {
            self.health.update(&watch, |h| h.error = None);
        }
        // Only namespaced objects can carry a locator; others are not synced,
        // but for upsync, where they live upstream is the SyncTarget's
        // workspace (kept under the namespace "").
        let Some(namespace) = bucket(&object) else {
            return false;
        };
        if !status_is_sendable(&object) {
            // The hub would refuse it; the last sendable state (if any) stays.
            let dropped = self
                .metrics
                .deltas_dropped
                .with_label_values(&["status_not_object"]);
            dropped.inc();
            if dropped.get() <= 10 || dropped.get().is_power_of_two() {
                tracing::warn!(%namespace, name = %object.name, resource = %spec, "status is not a JSON object; not sent");
            }
            return false;
        }
        let epoch = self.epoch(&watch);
        let status = extract(&object);
        let upstream = self.upstream(
            &object.resource,
            &namespace,
            &object.name,
            &object.uid,
            object.upsync.as_deref(),
        );
        if !self.kinds.contains(&object.resource) {
            self.kinds.push(Arc::clone(&object.resource));
        }
        let whole = match (&upstream, &object.upsync) {
            (Some(upstream), Some(state)) => Some(self.whole(upstream, state)),
            _ => None,
        };
        let key = (Arc::clone(&object.resource), object.name);
        let tracked = Tracked {
            uid: object.uid,
            status: status.clone(),
            upstream: upstream.clone(),
            upsync: object.upsync,
            epoch,
        };
        let previous = self
            .objects
            .entry(namespace)
            .or_default()
            .insert(key, tracked);
        if previous.is_none() {
            self.count(&object.resource, 1);
        }
        match upstream {
            Some(upstream) => self
                .outbox
                .lock()
                .upsert_whole(upstream, status, whole, self.clock.now_ms())
                .is_some(),
            None => false,
        }
    }

    /// Where an object lives upstream: by its namespace's locator, or, a
    /// cluster-scoped upsynced object, in the SyncTarget's workspace.
    fn upstream(
        &self,
        resource: &WatchedResource,
        namespace: &str,
        name: &str,
        uid: &str,
        upsync: Option<&UpsyncedState>,
    ) -> Option<Arc<ObjectRef>> {
        let downstream = downstream_ref(resource, namespace, name, uid);
        if namespace.is_empty() {
            let state = upsync?;
            return Some(Arc::new(cluster_scoped_upstream(
                &downstream,
                &state.synctarget_workspace,
            )));
        }
        let locator = self.namespaces.get(namespace)?.locator.as_ref()?;
        Some(Arc::new(to_upstream(&downstream, locator)))
    }

    /// An upsynced object as KCP is to hold it, as JSON text.
    fn whole(&self, upstream: &ObjectRef, state: &UpsyncedState) -> Arc<str> {
        let object = upsynced_object(&state.object, upstream, |namespace| {
            self.namespaces.get(namespace)?.locator.clone()
        });
        Arc::from(object.to_string())
    }

    /// Reads one downstream Event into the event lane, if it is about a
    /// synced object.
    fn event(&self, event: &serde_json::Value) {
        let Some(lane) = &self.events else {
            return;
        };
        match read(event, |regarding| self.upstream_of(regarding)) {
            Ok(Some(observed)) => lane.observe(observed),
            Ok(None) => {}
            Err(error) => {
                let dropped = self
                    .metrics
                    .events_dropped
                    .with_label_values(&["unreadable"]);
                dropped.inc();
                if dropped.get() <= 10 || dropped.get().is_power_of_two() {
                    tracing::warn!(%error, unreadable = dropped.get(), "downstream Event unreadable; not reported");
                }
            }
        }
    }

    /// Where the object an Event is about lives upstream, when it is a
    /// synced object (the same one: an Event naming another uid is about
    /// an earlier object of the same name).
    fn upstream_of(&self, regarding: &Regarding) -> Option<ObjectRef> {
        let namespace = regarding.namespace.as_deref()?;
        let group = regarding
            .api_version
            .rsplit_once('/')
            .map_or("", |(group, _)| group);
        let resource = self
            .kinds
            .iter()
            .find(|r| r.kind == regarding.kind && r.spec.group == group)?;
        let tracked = self
            .objects
            .get(namespace)?
            .get(&(Arc::clone(resource), regarding.name.clone()))?;
        if !regarding.uid.is_empty() && regarding.uid != tracked.uid {
            return None;
        }
        tracked.upstream.as_deref().cloned()
    }

    fn object_deleted(&mut self, object: &ObservedObject) -> bool {
        self.metrics
            .watch_events
            .with_label_values(&[&watch_of(&object.resource).to_string()])
            .inc();
        let Some(namespace) = bucket(object) else {
            return false;
        };
        let removed = self.objects.get_mut(&namespace).and_then(|objects| {
            objects.remove(&(Arc::clone(&object.resource), object.name.clone()))
        });
        let Some(tracked) = removed else {
            return false;
        };
        self.count(&object.resource, -1);
        self.forget_namespace_if_empty(&namespace);
        self.unpublish(&tracked)
    }

    fn listed(&mut self, watch: WatchId) -> bool {
        let epoch = self.epoch(&watch);
        let queued = match &watch {
            // Never listed: its events are not kept.
            WatchId::Events => false,
            WatchId::Namespaces => {
                let gone: Vec<String> = self
                    .namespaces
                    .iter()
                    .filter(|(_, ns)| ns.epoch < epoch)
                    .map(|(name, _)| name.clone())
                    .collect();
                let mut queued = false;
                for name in gone {
                    queued |= self.namespace_deleted(&name);
                }
                queued
            }
            WatchId::Resource(spec) | WatchId::Upsync(spec) => {
                let upsync = matches!(watch, WatchId::Upsync(_));
                let mut gone = Vec::new();
                for objects in self.objects.values_mut() {
                    let keys: Vec<ObjectKey> = objects
                        .iter()
                        .filter(|((r, _), t)| {
                            r.spec == *spec && r.upsync == upsync && t.epoch < epoch
                        })
                        .map(|(k, _)| k.clone())
                        .collect();
                    gone.extend(
                        keys.into_iter()
                            .filter_map(|k| Some((objects.remove(&k)?, k.0))),
                    );
                }
                let mut queued = false;
                for (tracked, resource) in &gone {
                    self.count(resource, -1);
                    queued |= self.unpublish(tracked);
                }
                self.objects.retain(|_, objects| !objects.is_empty());
                queued
            }
        };
        if !matches!(watch, WatchId::Upsync(_)) {
            self.health.update(&watch, |h| {
                h.ready = true;
                h.error = None;
            });
        }
        self.metrics
            .watch_ready
            .with_label_values(&[&watch.to_string()])
            .set(1);
        queued
    }

    fn namespace_applied(&mut self, ns: ObservedNamespace) -> bool {
        self.metrics
            .watch_events
            .with_label_values(&[&WatchId::Namespaces.to_string()])
            .inc();
        self.health.update(&WatchId::Namespaces, |h| h.error = None);
        let epoch = self.epoch(&WatchId::Namespaces);
        let unchanged = self
            .namespaces
            .get(&ns.name)
            .is_some_and(|e| e.raw == ns.locator);
        if unchanged {
            if let Some(entry) = self.namespaces.get_mut(&ns.name) {
                entry.epoch = epoch;
            }
            return false;
        }
        let locator = match ns.locator.as_deref().map(Locator::parse) {
            None => None,
            Some(Ok(locator)) => Some(locator),
            Some(Err(e)) => {
                self.metrics.locator_errors.inc();
                tracing::warn!(namespace = %ns.name, error = %e, "namespace locator unusable; its objects are not synced");
                None
            }
        };
        let queued = self.relocate(&ns.name, locator.as_ref());
        self.namespaces.insert(
            ns.name,
            NamespaceEntry {
                raw: ns.locator,
                locator,
                epoch,
            },
        );
        self.set_namespace_count();
        queued
    }

    fn namespace_deleted(&mut self, name: &str) -> bool {
        self.metrics
            .watch_events
            .with_label_values(&[&WatchId::Namespaces.to_string()])
            .inc();
        let queued = self.relocate(name, None);
        self.namespaces.remove(name);
        self.set_namespace_count();
        queued
    }

    /// The namespace's locator is now `locator`: moves its objects upstream.
    fn relocate(&mut self, namespace: &str, locator: Option<&Locator>) -> bool {
        let old = self
            .namespaces
            .get(namespace)
            .and_then(|e| e.locator.as_ref());
        if old == locator {
            return false;
        }
        if let Some(locator) = locator {
            tracing::info!(%namespace, workspace = %locator.workspace, upstream_namespace = %locator.namespace, "namespace mapped upstream");
        } else if old.is_some() {
            tracing::info!(%namespace, "namespace no longer mapped upstream");
        }
        let Some(objects) = self.objects.get_mut(namespace) else {
            return false;
        };
        let namespaces = &self.namespaces;
        let now = self.clock.now_ms();
        let mut outbox = self.outbox.lock();
        let mut queued = false;
        for ((resource, name), tracked) in objects.iter_mut() {
            if let Some(old) = tracked.upstream.take() {
                queued |= outbox.delete_shared(old, now).is_some();
            }
            if let Some(locator) = locator {
                let downstream = downstream_ref(resource, namespace, name, &tracked.uid);
                let upstream = Arc::new(to_upstream(&downstream, locator));
                let whole = tracked.upsync.as_ref().map(|state| {
                    Arc::from(
                        upsynced_object(&state.object, &upstream, |ns| {
                            if ns == namespace {
                                return Some(locator.clone());
                            }
                            namespaces.get(ns)?.locator.clone()
                        })
                        .to_string(),
                    )
                });
                queued |= outbox
                    .upsert_whole(Arc::clone(&upstream), tracked.status.clone(), whole, now)
                    .is_some();
                tracked.upstream = Some(upstream);
            }
        }
        queued
    }

    /// Deletes `tracked` upstream, if it was reported there.
    fn unpublish(&self, tracked: &Tracked) -> bool {
        match &tracked.upstream {
            Some(upstream) => self
                .outbox
                .lock()
                .delete_shared(upstream, self.clock.now_ms())
                .is_some(),
            None => false,
        }
    }

    fn forget_namespace_if_empty(&mut self, namespace: &str) {
        if self.objects.get(namespace).is_some_and(HashMap::is_empty) {
            self.objects.remove(namespace);
        }
    }

    fn count(&mut self, resource: &WatchedResource, delta: i64) {
        if resource.upsync {
            return;
        }
        let spec = &resource.spec;
        let count = self.counts.entry(spec.clone()).or_default();
        *count = count.saturating_add_signed(delta);
        let objects = *count;
        self.health
            .update(&WatchId::Resource(spec.clone()), |h| h.objects = objects);
    }

    fn set_namespace_count(&self) {
        let n = self.namespaces.len() as u64;
        self.health.update(&WatchId::Namespaces, |h| h.objects = n);
    }
}

/// The watch an object's events come from.
fn watch_of(resource: &WatchedResource) -> WatchId {
    if resource.upsync {
        WatchId::Upsync(resource.spec.clone())
    } else {
        WatchId::Resource(resource.spec.clone())
    }
}

/// The namespace an object is kept under: its own; "" for a cluster-scoped
/// upsynced object; `None` for any other cluster-scoped object (not synced).
fn bucket(object: &ObservedObject) -> Option<String> {
    match (&object.namespace, &object.upsync) {
        (Some(namespace), _) => Some(namespace.clone()),
        (None, Some(_)) => Some(String::new()),
        (None, None) => None,
    }
}

/// The downstream coordinates of a tracked object, for the mapping.
fn downstream_ref(
    resource: &WatchedResource,
    namespace: &str,
    name: &str,
    uid: &str,
) -> DownstreamRef {
    DownstreamRef {
        resource: resource.spec.clone(),
        kind: resource.kind.clone(),
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        uid: uid.to_owned(),
    }
}

/// Feeds `events` into `inventory` until the stream ends or `stop` is
/// cancelled; on stop, events already waiting are still applied, so nothing
/// the watches saw is lost before the session's final flush.
///
/// `downstream_events` (the watch of `events.k8s.io/v1` Events) is read only
/// while `events` has nothing ready: a burst of Events never holds up the
/// status changes behind it. It is best effort and not drained on stop.
pub async fn run(
    mut inventory: Inventory,
    events: impl Stream<Item = WatchEvent>,
    downstream_events: impl Stream<Item = WatchEvent>,
    stop: CancellationToken,
) {
    let mut events = std::pin::pin!(events);
    let mut downstream_events = std::pin::pin!(downstream_events);
    let mut downstream_open = true;
    loop {
        tokio::select! {
            biased;
            event = events.next() => match event {
                Some(event) => inventory.apply(event),
                None => return,
            },
            () = stop.cancelled() => break,
            event = downstream_events.next(), if downstream_open => match event {
                Some(event) => inventory.apply(event),
                None => downstream_open = false,
            },
        }
    }
    while let Some(Some(event)) = events.next().now_or_never() {
        inventory.apply(event);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;
    use uplink_protocol::{Change, Delta};

    use super::*;
    use crate::outbox::Outbox;
    use crate::watch::WatchedResource;

    /// The one (unreplicated) hub the fixture's outbox sends to.
    const HUB: crate::routes::ReplicaId = crate::routes::ReplicaId(0);

    struct Fixture {
        inventory: Inventory,
        outbox: SharedOutbox,
        metrics: Metrics,
        health: AgentHealth,
    }

    fn fixture() -> Fixture {
        let metrics = Metrics::new();
        let outbox = SharedOutbox::new(Outbox::new(1000, metrics.clone()));
        outbox
            .lock()
            .hold(HUB, &"hub".into(), &crate::routes::Holding::Everything);
        let health = AgentHealth::new(&[ResourceSpec::deployments()]);
        let inventory = Inventory::new(
            outbox.clone(),
            metrics.clone(),
            health.clone(),
            AgentClock::default(),
        );
        Fixture {
            inventory,
            outbox,
            metrics,
            health,
        }
    }

    fn deployment(namespace: &str, name: &str, ready: i64) -> ObservedObject {
        ObservedObject {
            resource: Arc::new(WatchedResource {
                spec: ResourceSpec::deployments(),
                kind: "Deployment".into(),
                namespaced: true,
                upsync: false,
            }),
            namespace: Some(namespace.into()),
            name: name.into(),
            uid: format!("uid-{name}"),
            generation: Some(1),
            status: json!({"readyReplicas": ready}),
            upsync: None,
        }
    }

    fn namespace(name: &str, workspace: Option<&str>) -> WatchEvent {
        WatchEvent::NamespaceApplied(ObservedNamespace {
            name: name.into(),
            locator: workspace.map(|ws| {
                Locator {
                    workspace: ws.into(),
                    namespace: format!("up-{name}"),
                }
                .to_annotation()
            }),
        })
    }

    impl Fixture {
        fn drain(&self) -> Vec<Delta> {
            let mut outbox = self.outbox.lock();
            let unsent = outbox.unsent(HUB, 1000);
            outbox.mark_sent(HUB, unsent.iter().map(|d| d.seq));
            unsent
        }
    }

    /// A PersistentVolume watched for upsync, bound to `claim` in the
    /// downstream namespace `claim_namespace`.
    fn volume(name: &str, claim_namespace: &str) -> ObservedObject {
        let object = json!({
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": name, "uid": format!("uid-{name}"), "resourceVersion": "7",
                         "labels": {"state.workload.kcp.io/k1": "Upsync"},
                         "annotations": {"pv.kubernetes.io/bound-by-controller": "yes",
                                         "pv.kubernetes.io/provisioned-by": "csi.example.com"}},
            "spec": {"capacity": {"storage": "1Gi"},
                     "claimRef": {"kind": "PersistentVolumeClaim", "namespace": claim_namespace,
                                  "name": "data", "uid": "claim-uid", "resourceVersion": "3"}},
        });
        ObservedObject {
            resource: Arc::new(WatchedResource {
                spec: "persistentvolumes.v1".parse().unwrap(),
                kind: "PersistentVolume".into(),
                namespaced: false,
                upsync: true,
            }),
            namespace: None,
            name: name.into(),
            uid: format!("uid-{name}"),
            generation: None,
            status: json!({"phase": "Bound"}),
            upsync: Some(Arc::new(UpsyncedState {
                object,
                synctarget_workspace: "root".into(),
            })),
        }
    }

    #[test]
    fn an_upsynced_volume_goes_up_whole_to_the_synctarget_workspace() {
        let mut f = fixture();
        // The claim's namespace is synced to the SyncTarget's workspace,
        // where the volume goes.
        f.inventory.apply(namespace("ns1", Some("root")));
        f.inventory
            .apply(WatchEvent::Applied(volume("pv-1", "ns1")));
        let deltas = f.drain();
        assert_eq!(deltas.len(), 1, "{deltas:?}");
        let delta = &deltas[0];
        assert_eq!(delta.object.workspace, "root");
        assert_eq!(delta.object.namespace, None);
        assert_eq!(delta.object.uid, "uid-pv-1");
        let Change::Upsert { status_json } = &delta.change else {
            panic!("expected an upsert: {delta:?}");
        };
        assert_eq!(status_json, r#"{"phase":"Bound"}"#);
        let whole: serde_json::Value =
            serde_json::from_str(delta.object_json.as_deref().unwrap()).unwrap();
        assert_eq!(
            whole,
            json!({
                "apiVersion": "v1", "kind": "PersistentVolume",
                "metadata": {"name": "pv-1",
                             "labels": {"state.workload.kcp.io/k1": "Upsync"},
                             "annotations": {"pv.kubernetes.io/provisioned-by": "csi.example.com"}},
                "spec": {"capacity": {"storage": "1Gi"},
                         "claimRef": {"kind": "PersistentVolumeClaim", "namespace": "up-ns1",
                                      "name": "data"}},
            }),
            "server metadata, the downstream tools' annotations and the claim's \
             downstream identity stay behind; the claim is named upstream"
        );
        // Unchanged: nothing new. Deleted: a deletion, without the object.
        f.inventory
            .apply(WatchEvent::Applied(volume("pv-1", "ns1")));
        assert!(f.drain().is_empty());
        f.inventory
            .apply(WatchEvent::Deleted(volume("pv-1", "ns1")));
        let deltas = f.drain();
        assert!(
            matches!(deltas.as_slice(), [d] if d.change == Change::Deleted && d.object_json.is_none()),
            "{deltas:?}"
        );
    }

    #[test]
    fn a_claim_not_synced_beside_the_volume_is_not_named_upstream() {
        let mut f = fixture();
        f.inventory
            .apply(namespace("elsewhere", Some("root:org:team-a")));
        f.inventory
            .apply(WatchEvent::Applied(volume("pv-2", "local")));
        f.inventory
            .apply(WatchEvent::Applied(volume("pv-3", "elsewhere")));
        let deltas = f.drain();
        assert_eq!(deltas.len(), 2);
        for delta in deltas {
            let whole: serde_json::Value =
                serde_json::from_str(delta.object_json.as_deref().unwrap()).unwrap();
            assert_eq!(whole["spec"], json!({"capacity": {"storage": "1Gi"}}));
        }
    }

    #[test]
    fn an_upsync_relist_forgets_what_it_did_not_list_again() {
        let mut f = fixture();
        let id = WatchId::Upsync("persistentvolumes.v1".parse().unwrap());
        f.inventory.apply(WatchEvent::Restarted(id.clone()));
        f.inventory.apply(WatchEvent::Applied(volume("pv-1", "x")));
        f.inventory.apply(WatchEvent::Applied(volume("pv-2", "x")));
        f.inventory.apply(WatchEvent::Listed(id.clone()));
        assert_eq!(f.drain().len(), 2);
        f.inventory.apply(WatchEvent::Restarted(id.clone()));
        f.inventory.apply(WatchEvent::Applied(volume("pv-2", "x")));
        f.inventory.apply(WatchEvent::Listed(id));
        let deltas = f.drain();
        assert_eq!(
            summary(&deltas),
            [("root".to_owned(), "pv-1".to_owned(), false)]
        );
        assert!(
            f.health.watches_not_ready().is_empty()
                || !f
                    .health
                    .watches_not_ready()
                    .iter()
                    .any(|w| w.starts_with("upsync:")),
            "upsync watches are not part of readiness"
        );
    }

    fn summary(deltas: &[Delta]) -> Vec<(String, String, bool)> {
        deltas
            .iter()
            .map(|d| {
                (
                    d.object.workspace.clone(),
                    d.object.name.clone(),
                    matches!(d.change, Change::Upsert { .. }),
                )
            })
            .collect()
    }

    #[test]
    fn objects_are_sent_once_their_namespace_has_a_locator() {
        let mut f = fixture();
        f.inventory
            .apply(WatchEvent::Applied(deployment("ns1", "web", 1)));
        assert!(f.drain().is_empty());
        f.inventory.apply(namespace("ns1", Some("root:org:team-a")));
        let sent = f.drain();
        assert_eq!(
            summary(&sent),
            [("root:org:team-a".into(), "web".into(), true)]
        );
        assert_eq!(sent[0].object.namespace.as_deref(), Some("up-ns1"));
        // A new status is sent, the same status is not.
        f.inventory
            .apply(WatchEvent::Applied(deployment("ns1", "web", 2)));
        f.inventory
            .apply(WatchEvent::Applied(deployment("ns1", "web", 2)));
        assert_eq!(f.drain().len(), 1);
    }

    #[test]
    fn locator_change_moves_objects_and_removal_deletes_them() {
        let mut f = fixture();
        f.inventory.apply(namespace("ns1", Some("root:a")));
        f.inventory
            .apply(WatchEvent::Applied(deployment("ns1", "web", 1)));
        f.drain();
        f.inventory.apply(namespace("ns1", Some("root:b-c")));
        assert_eq!(
            summary(&f.drain()),
            [
                ("root:a".into(), "web".into(), false),
                ("root:b-c".into(), "web".into(), true)
            ]
        );
        f.inventory.apply(namespace("ns1", None));
        assert_eq!(
            summary(&f.drain()),
            [("root:b-c".into(), "web".into(), false)]
        );
        // Namespace deletion too.
        f.inventory.apply(namespace("ns1", Some("root:a")));
        f.drain();
        f.inventory
            .apply(WatchEvent::NamespaceDeleted("ns1".into()));
        assert_eq!(
            summary(&f.drain()),
            [("root:a".into(), "web".into(), false)]
        );
    }

    #[test]
    fn malformed_locator_is_counted_and_not_synced() {
        let mut f = fixture();
        f.inventory
            .apply(WatchEvent::NamespaceApplied(ObservedNamespace {
                name: "ns1".into(),
                locator: Some("{not json".into()),
            }));
        f.inventory
            .apply(WatchEvent::Applied(deployment("ns1", "web", 1)));
        assert!(f.drain().is_empty());
        assert_eq!(f.metrics.locator_errors.get(), 1);
        // The same bad annotation seen again (e.g. a re-list) is not re-counted.
        f.inventory
            .apply(WatchEvent::NamespaceApplied(ObservedNamespace {
                name: "ns1".into(),
                locator: Some("{not json".into()),
            }));
        assert_eq!(f.metrics.locator_errors.get(), 1);
    }

    #[test]
    fn relist_deletes_objects_that_were_not_listed_again() {
        let mut f = fixture();
        let watch = WatchId::Resource(ResourceSpec::deployments());
        f.inventory.apply(namespace("ns1", Some("root:a")));
        f.inventory.apply(WatchEvent::Restarted(watch.clone()));
        f.inventory
            .apply(WatchEvent::Applied(deployment("ns1", "web", 1)));
        f.inventory
            .apply(WatchEvent::Applied(deployment("ns1", "api", 1)));
        assert_eq!(
            f.health.watches_not_ready(),
            ["namespaces.v1", "deployments.v1.apps"]
        );
        f.inventory.apply(WatchEvent::Listed(watch.clone()));
        assert_eq!(f.health.watches_not_ready(), ["namespaces.v1"]);
        assert_eq!(f.health.summary().watches[0].objects, 2);
        f.drain();
        // 410 Gone: the watcher re-lists; "api" was deleted meanwhile.
        f.inventory.apply(WatchEvent::Restarted(watch.clone()));
        f.inventory
            .apply(WatchEvent::Applied(deployment("ns1", "web", 1)));
        f.inventory.apply(WatchEvent::Listed(watch));
        assert_eq!(
            summary(&f.drain()),
            [("root:a".into(), "api".into(), false)]
        );
        assert_eq!(f.health.summary().watches[0].objects, 1);
    }

    #[test]
    fn deleted_objects_are_deleted_upstream() {
        let mut f = fixture();
        f.inventory.apply(namespace("ns1", Some("root:a")));
        f.inventory
            .apply(WatchEvent::Applied(deployment("ns1", "web", 1)));
        f.inventory
            .apply(WatchEvent::Deleted(deployment("ns1", "web", 1)));
        // Coalesced in the outbox before being sent: only the deletion.
        assert_eq!(
            summary(&f.drain()),
            [("root:a".into(), "web".into(), false)]
        );
    }

    #[test]
    fn a_status_that_is_not_an_object_is_not_sent() {
        let mut f = fixture();
        f.inventory.apply(namespace("ns1", Some("root:a")));
        let mut odd = deployment("ns1", "odd", 1);
        odd.status = json!(["not", "an", "object"]);
        f.inventory.apply(WatchEvent::Applied(odd));
        f.inventory
            .apply(WatchEvent::Applied(deployment("ns1", "web", 1)));
        assert_eq!(summary(&f.drain()), [("root:a".into(), "web".into(), true)]);
        assert_eq!(
            f.metrics
                .deltas_dropped
                .with_label_values(&["status_not_object"])
                .get(),
            1
        );
    }

    #[test]
    fn synced_only_once_every_watch_completed_its_initial_list() {
        let mut f = fixture();
        let synced = f.inventory.synced();
        let deployments = WatchId::Resource(ResourceSpec::deployments());
        f.inventory
            .apply(WatchEvent::Restarted(WatchId::Namespaces));
        f.inventory.apply(namespace("ns1", Some("root:a")));
        f.inventory.apply(WatchEvent::Listed(WatchId::Namespaces));
        f.inventory
            .apply(WatchEvent::Restarted(deployments.clone()));
        f.inventory
            .apply(WatchEvent::Applied(deployment("ns1", "web", 1)));
        assert!(!*synced.borrow(), "deployments are still listing");
        f.inventory.apply(WatchEvent::Failed {
            watch: deployments.clone(),
            error: "list failed".into(),
        });
        assert!(!*synced.borrow(), "a failed list is not a complete one");
        f.inventory.apply(WatchEvent::Listed(deployments.clone()));
        assert!(*synced.borrow());
        // A later re-list keeps the previous objects meanwhile: still synced.
        f.inventory.apply(WatchEvent::Restarted(deployments));
        assert!(*synced.borrow());
    }

    #[test]
    fn an_unresolvable_resource_type_counts_as_listed_and_empty() {
        let metrics = Metrics::new();
        let outbox = SharedOutbox::new(Outbox::new(1000, metrics.clone()));
        let widgets: ResourceSpec = "widgets.v1.example.com".parse().unwrap();
        let health = AgentHealth::new(&[ResourceSpec::deployments(), widgets.clone()]);
        let mut inventory = Inventory::new(outbox, metrics, health.clone(), AgentClock::default());
        let synced = inventory.synced();
        inventory.apply(WatchEvent::Listed(WatchId::Namespaces));
        inventory.apply(WatchEvent::Listed(WatchId::Resource(
            ResourceSpec::deployments(),
        )));
        assert!(!*synced.borrow());
        inventory.apply(WatchEvent::Unavailable {
            watch: WatchId::Resource(widgets),
            error: "the API server does not serve widgets.v1.example.com".into(),
        });
        assert!(
            *synced.borrow(),
            "one missing CRD must not hold back the cluster"
        );
        // Not ready for `/readyz`, though: the type is not watched.
        assert_eq!(health.watches_not_ready(), ["widgets.v1.example.com"]);
    }
}
