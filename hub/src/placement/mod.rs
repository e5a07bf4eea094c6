//! Which upstream objects KCP placed on which cluster: the hub's only source
//! for what a cluster may report.
//!
//! A client certificate proves which cluster speaks; placement proves what
//! it may speak about. A cluster is known in KCP by its SyncTarget (in the
//! workspace `--synctarget-workspace` names, with the cluster's name), and
//! kcp marks every object it places on that SyncTarget with the label
//! `state.workload.kcp.io/<syncTargetKey>: Sync` ([`key`]). The hub watches
//! both ([`source`], [`watch`]): the SyncTargets, and each synced type once
//! across all workspaces, indexed by the SyncTarget keys its objects are
//! placed on ([`index`]); every cluster that connected and has a SyncTarget
//! gets its share. Nothing an agent sends changes this view.
//!
//! Every report is judged against it ([`PlacementView::verdict`]): taken
//! when the object is placed on the reporting cluster with the kind and
//! version the report names; held when the view cannot tell yet (not
//! listed yet, or not placed yet: the label may be on its way); refused
//! otherwise, with a reason the agent is told ([`uplink_protocol::Rejected`]).
//! Held reports wait in the store and are judged again when placement
//! changes and once a second ([`runner`]); a report still not placed
//! [`PlacementSettings::hold`] after the view was complete is refused.
//!
//! Upsynced objects ([`PlacementSettings::upsync`]) are born in the cluster,
//! so KCP placed nothing for them to match; a cluster may upsync where it
//! already serves KCP: a cluster-scoped object into its SyncTarget's
//! workspace, a namespaced one into a (workspace, namespace) where at least
//! one object KCP placed on the cluster lives ([`Judge::verdict`]).
//!
//! Consistency: sessions judge and store a batch while holding the view's
//! read lock; the runner changes the view and the store (dropping the
//! entries of unplaced objects, releasing held reports) while holding its
//! write lock. So the store never keeps a report of an object that is not
//! placed on its cluster, whatever the interleaving. Lock order: view, then
//! store.

pub mod address;
mod decode;
pub(crate) mod index;
pub mod key;
pub mod runner;
pub mod source;
pub mod watch;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Notify;
use tokio::time::Instant;
use uplink_protocol::Rejected;
use uplink_protocol::resource::ResourceSpec;

use crate::metrics::Metrics;
use crate::store::{ClusterName, ObjectKey};

use self::address::{Address, AddressParts};

pub use source::{PlacedObject, PlacementSource, SyncTargetObject};

/// The group and resource of Uplink's own cluster records, which only the
/// hub writes and no agent may report.
pub const SYNCTARGET_GROUP: &str = "workload.kcp.io";
pub const SYNCTARGET_RESOURCE: &str = "synctargets";

/// How placement is read and enforced.
#[derive(Debug, Clone)]
pub struct PlacementSettings {
    /// The resource types the hub syncs; reports of any other are refused.
    pub resources: Vec<ResourceSpec>,
    /// The resource types the hub accepts for upsync (none of `resources`).
    pub upsync: Vec<ResourceSpec>,
    /// The workspace holding the clusters' SyncTargets (empty with a plain
    /// Kubernetes upstream).
    pub synctarget_workspace: String,
    /// How long a report of an object not (yet) placed on its cluster is
    /// held, once the cluster's placement view is complete, before it is
    /// refused.
    pub hold: Duration,
    /// Most objects placed on one cluster the hub keeps track of.
    pub max_per_cluster: u64,
}

impl Default for PlacementSettings {
    fn default() -> Self {
        Self {
            resources: vec![ResourceSpec::deployments()],
            upsync: Vec::new(),
            synctarget_workspace: "root".to_owned(),
            hold: Duration::from_secs(30),
            max_per_cluster: 1_000_000,
        }
    }
}

/// A cluster's SyncTarget, as the hub found it in KCP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncTargetRef {
    pub workspace: String,
    pub name: String,
    pub uid: String,
    /// kcp's key of it ([`key::sync_target_key`]).
    pub key: String,
}

/// What to do with one report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The object is placed on the cluster as the report names it.
    Accept,
    /// The view cannot tell yet; keep the report aside and ask again.
    Hold,
    /// Refused, for this reason (one of [`Rejected`]'s).
    Reject(&'static str),
}

/// Placement, shared by the sessions (which read it) and the [`runner`]
/// (which keeps it up to date).
#[derive(Debug)]
pub struct Placements {
    view: RwLock<PlacementView>,
    settings: PlacementSettings,
    metrics: Arc<Metrics>,
    /// Clusters whose agents connected; the runner follows their placement.
    wanted: std::sync::Mutex<Wanted>,
    wanted_changed: Notify,
    /// Woken after every change of the view.
    changed: Notify,
}

impl Placements {
    pub fn new(settings: PlacementSettings, metrics: Arc<Metrics>) -> Self {
        Self {
            view: RwLock::new(PlacementView::new(
                settings.resources.clone(),
                settings.upsync.clone(),
            )),
            settings,
            metrics,
            wanted: std::sync::Mutex::default(),
            wanted_changed: Notify::new(),
            changed: Notify::new(),
        }
    }

    pub fn settings(&self) -> &PlacementSettings {
        &self.settings
    }

    /// The view, for judging reports. Hold it while storing what it judged.
    pub fn read(&self) -> RwLockReadGuard<'_, PlacementView> {
        // Never poisoned midway: the view's methods do not panic while
        // changing it.
        self.view.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn write(&self) -> RwLockWriteGuard<'_, PlacementView> {
        self.view.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Asks for `cluster`'s placement to be followed (its agent connected).
    pub fn want(&self, cluster: &str) {
        let mut wanted = self.wanted.lock().unwrap_or_else(PoisonError::into_inner);
        if wanted.all.insert(cluster.to_owned()) {
            wanted.fresh.push(cluster.to_owned());
            drop(wanted);
            self.wanted_changed.notify_one();
        }
    }

    /// Waits, at most `limit`, until `cluster`'s placement can judge reports
    /// (the SyncTargets are listed and the cluster has none, or its
    /// placement is listed). Sessions wait for it before their `Welcome`,
    /// so a connecting agent's first reports are judged at once rather than
    /// held; when KCP is slow they are held, nothing is lost either way.
    pub async fn wait_ready(&self, cluster: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let changed = self.changed.notified();
            if self.read().ready(cluster) {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return false;
            }
        }
    }

    /// Completes after the view's next change (create it before looking
    /// at the view: a change in between is not missed).
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// Wakes [`Placements::wait_ready`]; the runner calls it after changes.
    pub(crate) fn notify_changed(&self) {
        self.changed.notify_waiters();
    }

    /// Whether `cluster`'s agent ever connected.
    fn is_wanted(&self, cluster: &str) -> bool {
        self.wanted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .all
            .contains(cluster)
    }

    /// Every cluster whose agent ever connected.
    fn wanted(&self) -> Vec<ClusterName> {
        let wanted = self.wanted.lock().unwrap_or_else(PoisonError::into_inner);
        wanted.all.iter().cloned().collect()
    }

    /// The clusters wanted since the last call.
    fn take_fresh(&self) -> Vec<ClusterName> {
        std::mem::take(
            &mut self
                .wanted
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .fresh,
        )
    }

    /// What the hub knows of `cluster`'s placement, for the hub API.
    pub fn summary(&self, cluster: &str) -> PlacementSummary {
        self.read().summary(cluster)
    }
}

/// The clusters whose placement the runner follows.
#[derive(Debug, Default)]
struct Wanted {
    all: HashSet<ClusterName>,
    /// Added since the runner last looked.
    fresh: Vec<ClusterName>,
}

/// One cluster's placement as the hub API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlacementSummary {
    /// The cluster's SyncTarget; `None` when it has none (it may report
    /// nothing) or the SyncTargets are not listed yet.
    pub sync_target: Option<SyncTargetRef>,
    /// Whether the SyncTargets and every type's placement are listed.
    pub complete: bool,
    /// Objects placed on the cluster.
    pub objects: usize,
}

/// The placement of every watched cluster.
#[derive(Debug)]
pub struct PlacementView {
    /// The synced types, in configuration order; placements refer to them
    /// by index.
    types: Vec<ResourceSpec>,
    /// The upsynced types ([`PlacementSettings::upsync`]).
    upsync: Vec<ResourceSpec>,
    /// SyncTargets by cluster name; `None` until they were listed.
    synctargets: Option<HashMap<ClusterName, SyncTargetRef>>,
    clusters: HashMap<ClusterName, ClusterPlacement>,
    /// The followed clusters by SyncTarget key.
    by_key: HashMap<String, ClusterName>,
}

/// What is placed on one cluster.
#[derive(Debug, Default)]
pub(crate) struct ClusterPlacement {
    /// The SyncTarget key its objects are placed with.
    pub(crate) key: String,
    /// Per type: the kind KCP names it by, once its list arrived.
    kinds: Vec<Option<String>>,
    /// Per type: whether its list arrived.
    listed: Vec<bool>,
    /// When every type was listed (the hold of unplaced reports counts from
    /// here).
    pub(crate) complete_since: Option<Instant>,
    /// Placed objects by address (version and kind come from the type).
    objects: HashMap<Address, Placed>,
    /// Per type: how many of its objects are placed.
    counts: Vec<usize>,
    /// How many placed objects live in each namespace, by workspace then
    /// namespace: where the cluster serves KCP, so where it may upsync
    /// (looked up per report without allocating).
    served: HashMap<String, HashMap<String, usize>>,
}

/// What the hub knows of one object placed on a cluster, from KCP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// The upstream uid.
    pub uid: String,
    pub resource_version: String,
    /// What goes down to the cluster ([`PlacedObject::downward_manifest`]).
    pub manifest: Arc<str>,
    /// Deleted in KCP, or being taken off this cluster ([`Placed::leaving`]):
    /// deleted downstream, then let go.
    pub deleting: bool,
    /// kcp is taking the object off this cluster (its deletion annotation
    /// for the cluster's SyncTarget key): letting it go removes the
    /// placement label and that annotation with the finalizer.
    pub leaving: bool,
    /// The object's finalizers in KCP.
    pub finalizers: Vec<String>,
}

impl PlacementView {
    fn new(types: Vec<ResourceSpec>, upsync: Vec<ResourceSpec>) -> Self {
        Self {
            types,
            upsync,
            synctargets: None,
            clusters: HashMap::new(),
            by_key: HashMap::new(),
        }
    }

    /// Whether `cluster` may report `key`; see [`Verdict`]. `key` is the
    /// object as the report names it.
    pub fn verdict(&self, cluster: &str, key: &ObjectKey) -> Verdict {
        self.judge(cluster).verdict(key)
    }

    /// `cluster`'s judge: [`PlacementView::verdict`] for many reports of
    /// one cluster, looking the cluster up once.
    pub fn judge(&self, cluster: &str) -> Judge<'_> {
        let placement = match &self.synctargets {
            None => ClusterStanding::Unknown,
            Some(targets) if !targets.contains_key(cluster) => ClusterStanding::NoSyncTarget,
            Some(_) => match self.clusters.get(cluster) {
                Some(placement) => ClusterStanding::Placed(placement),
                None => ClusterStanding::Unknown,
            },
        };
        Judge {
            types: &self.types,
            upsync: &self.upsync,
            synctarget: self.synctarget(cluster),
            placement,
        }
    }

    /// Whether reports of `cluster` can be judged now.
    pub fn ready(&self, cluster: &str) -> bool {
        match &self.synctargets {
            None => false,
            Some(targets) if !targets.contains_key(cluster) => true,
            Some(_) => self.complete_since(cluster).is_some(),
        }
    }

    /// When `cluster`'s view became complete, if it is.
    pub fn complete_since(&self, cluster: &str) -> Option<Instant> {
        self.clusters.get(cluster)?.complete_since
    }

    /// The SyncTarget of `cluster`, if it has one.
    pub fn synctarget(&self, cluster: &str) -> Option<&SyncTargetRef> {
        self.synctargets.as_ref()?.get(cluster)
    }

    /// Whether the SyncTargets were listed.
    pub fn synctargets_listed(&self) -> bool {
        self.synctargets.is_some()
    }

    /// Every cluster with a SyncTarget, by SyncTarget key.
    pub fn clusters_by_synctarget_key(&self) -> HashMap<String, ClusterName> {
        self.synctargets
            .iter()
            .flatten()
            .map(|(cluster, target)| (target.key.clone(), cluster.clone()))
            .collect()
    }

    /// Whether `group`/`resource` is an upsynced type.
    pub fn is_upsync(&self, group: &str, resource: &str) -> bool {
        self.upsync
            .iter()
            .any(|t| t.group == group && t.resource == resource)
    }

    fn summary(&self, cluster: &str) -> PlacementSummary {
        let placement = self.clusters.get(cluster);
        PlacementSummary {
            sync_target: self.synctarget(cluster).cloned(),
            complete: placement.is_some_and(|p| p.complete_since.is_some()),
            objects: placement.map_or(0, |p| p.objects.len()),
        }
    }

    fn type_index(&self, group: &str, resource: &str) -> Option<usize> {
        self.types
            .iter()
            .position(|t| t.group == group && t.resource == resource)
    }

    /// The full key of `address` as placed on `cluster` (version and kind
    /// of its type), once the type's kind is known.
    pub(crate) fn canonical_key(&self, cluster: &str, address: &Address) -> Option<ObjectKey> {
        self.canonical(self.clusters.get(cluster)?, address)
    }

    /// The full key of a placed object's address on `cluster`.
    fn canonical(&self, placement: &ClusterPlacement, address: &Address) -> Option<ObjectKey> {
        let index = self.type_index(&address.group, &address.resource)?;
        let kind = placement.kinds.get(index)?.as_deref()?;
        Some(address.key(&self.types[index].version, kind))
    }

    // ---- Changes (the runner's, under the write lock) ----------------------

    /// Replaces the SyncTargets with a fresh list; returns the clusters
    /// whose SyncTarget went or changed (their placement must be dropped).
    pub(crate) fn set_synctargets(
        &mut self,
        synctargets: HashMap<ClusterName, SyncTargetRef>,
    ) -> Vec<ClusterName> {
        self.synctargets = Some(synctargets);
        self.stale_clusters()
    }

    /// Adds or updates one SyncTarget; returns the clusters to drop (its
    /// own, when followed with another key: one SyncTarget concerns one
    /// cluster, so this looks at no other; the hub's own status writes make
    /// these events as often as clusters heartbeat).
    pub(crate) fn put_synctarget(&mut self, target: SyncTargetRef) -> Vec<ClusterName> {
        let name = target.name.clone();
        let stale = self
            .clusters
            .get(&name)
            .is_some_and(|placement| placement.key != target.key);
        self.synctargets
            .get_or_insert_with(HashMap::new)
            .insert(name.clone(), target);
        if stale { vec![name] } else { Vec::new() }
    }

    /// Removes one SyncTarget; returns the clusters to drop (its own, when
    /// followed).
    pub(crate) fn remove_synctarget(&mut self, name: &str) -> Vec<ClusterName> {
        if let Some(targets) = &mut self.synctargets {
            targets.remove(name);
        }
        if self.clusters.contains_key(name) {
            vec![name.to_owned()]
        } else {
            Vec::new()
        }
    }

    /// Followed clusters whose SyncTarget is gone or has another key.
    fn stale_clusters(&self) -> Vec<ClusterName> {
        let targets = self.synctargets.as_ref();
        self.clusters
            .iter()
            .filter(|(cluster, placement)| {
                targets
                    .and_then(|t| t.get(*cluster))
                    .is_none_or(|target| target.key != placement.key)
            })
            .map(|(cluster, _)| cluster.clone())
            .collect()
    }

    /// Starts `cluster`'s placement with SyncTarget key `key`, empty and not
    /// listed.
    pub(crate) fn start_cluster(&mut self, cluster: &str, key: &str) {
        let types = self.types.len();
        if let Some(previous) = self.clusters.get(cluster)
            && self.by_key.get(&previous.key).is_some_and(|c| c == cluster)
        {
            self.by_key.remove(&previous.key);
        }
        self.by_key.insert(key.to_owned(), cluster.to_owned());
        self.clusters.insert(
            cluster.to_owned(),
            ClusterPlacement {
                key: key.to_owned(),
                kinds: vec![None; types],
                listed: vec![false; types],
                complete_since: None,
                objects: HashMap::new(),
                counts: vec![0; types],
                served: HashMap::new(),
            },
        );
    }

    /// Forgets `cluster`'s placement; returns the full keys of the objects
    /// that were placed on it.
    pub(crate) fn drop_cluster(&mut self, cluster: &str) -> Vec<ObjectKey> {
        let Some(placement) = self.clusters.remove(cluster) else {
            return Vec::new();
        };
        if self
            .by_key
            .get(&placement.key)
            .is_some_and(|c| c == cluster)
        {
            self.by_key.remove(&placement.key);
        }
        placement
            .objects
            .keys()
            .filter_map(|address| self.canonical(&placement, address))
            .collect()
    }

    /// Whether the runner follows `cluster` with SyncTarget key `key`.
    pub(crate) fn following(&self, cluster: &str, key: &str) -> bool {
        self.clusters.get(cluster).is_some_and(|p| p.key == key)
    }

    /// The followed cluster whose SyncTarget key is `key`.
    pub(crate) fn cluster_by_key(&self, key: &str) -> Option<&ClusterName> {
        self.by_key.get(key)
    }

    /// Every followed cluster and its SyncTarget key.
    pub(crate) fn followed(&self) -> Vec<(ClusterName, String)> {
        self.clusters
            .iter()
            .map(|(cluster, placement)| (cluster.clone(), placement.key.clone()))
            .collect()
    }

    /// Applies one change of type `index` on `cluster`'s placement as
    /// followed with SyncTarget key `key`. Returns what changed; `None` when
    /// the cluster is not followed with that key.
    pub(crate) fn apply(
        &mut self,
        cluster: &str,
        key: &str,
        index: usize,
        change: PlacementChange,
        max_objects: u64,
    ) -> Option<Applied> {
        let resource = self.types.get(index)?.clone();
        let api_version = if resource.group.is_empty() {
            resource.version.clone()
        } else {
            format!("{}/{}", resource.group, resource.version)
        };
        let placement = self.clusters.get_mut(cluster).filter(|p| p.key == key)?;
        let mut applied = Applied::default();
        // (address, before, after)
        let mut changes: Vec<(Address, Option<Placed>, Option<Placed>)> = Vec::new();
        let placed = |placement: &mut ClusterPlacement, object: PlacedAddress| {
            let kind = placement.kinds[index]
                .clone()
                .or(object.object.kind.clone())
                .unwrap_or_default();
            let after = Placed::of(&object.object, &api_version, &kind, key);
            match placement.objects.get(&object.address) {
                Some(before) if *before == after => None,
                Some(before) => {
                    let before = before.clone();
                    placement
                        .objects
                        .insert(object.address.clone(), after.clone());
                    Some((object.address, Some(before), Some(after)))
                }
                None => {
                    if placement.objects.len() as u64 >= max_objects {
                        return Some((object.address, None, None));
                    }
                    placement
                        .objects
                        .insert(object.address.clone(), after.clone());
                    placement.counts[index] += 1;
                    placement.serve(&object.address);
                    Some((object.address, None, Some(after)))
                }
            }
        };
        match change {
            PlacementChange::Listed { kind, objects } => {
                if let Some(kind) = kind {
                    placement.kinds[index] = Some(kind);
                }
                let listed: HashSet<Address> = objects.iter().map(|o| o.address.clone()).collect();
                let gone: Vec<Address> = placement
                    .objects
                    .keys()
                    .filter(|address| {
                        address.group == resource.group
                            && address.resource == resource.resource
                            && !listed.contains(*address)
                    })
                    .cloned()
                    .collect();
                for address in gone {
                    if let Some(before) = placement.objects.remove(&address) {
                        placement.counts[index] = placement.counts[index].saturating_sub(1);
                        placement.unserve(&address);
                        changes.push((address, Some(before), None));
                    }
                }
                for object in objects {
                    match placed(placement, object) {
                        Some((_, None, None)) => applied.overflow = true,
                        Some(change) => changes.push(change),
                        None => {}
                    }
                }
                placement.listed[index] = true;
                if placement.complete_since.is_none() && placement.listed.iter().all(|l| *l) {
                    placement.complete_since = Some(Instant::now());
                }
            }
            PlacementChange::Placed(object) => {
                let object = *object;
                if placement.kinds[index].is_none() {
                    placement.kinds[index] = object.object.kind.clone();
                }
                match placed(placement, object) {
                    Some((_, None, None)) => applied.overflow = true,
                    Some(change) => changes.push(change),
                    None => {}
                }
            }
            PlacementChange::Unplaced(address) => {
                if let Some(before) = placement.objects.remove(&address) {
                    placement.counts[index] = placement.counts[index].saturating_sub(1);
                    placement.unserve(&address);
                    changes.push((address, Some(before), None));
                }
            }
        }
        let placement = self.clusters.get(cluster)?;
        // Namespaces the cluster no longer serves: what it upsyncs there
        // goes too.
        for (address, _, after) in &changes {
            if let (None, Some(namespace)) = (after, &address.namespace) {
                let place = (address.workspace.clone(), namespace.clone());
                if !placement.serves(&place.0, &place.1) && !applied.unserved.contains(&place) {
                    applied.unserved.push(place);
                }
            }
        }
        for (address, before, after) in changes {
            let Some(full) = self.canonical(placement, &address) else {
                continue;
            };
            // The store's entry goes with the object it reports about: when
            // the object is unplaced, or replaced by a new one of the same
            // name.
            let replaced = matches!((&before, &after), (Some(b), Some(a)) if b.uid != a.uid);
            if after.is_none() || replaced {
                applied.unplaced.push(full.clone());
            }
            applied.changes.push(ObjectChange {
                key: full,
                before,
                after,
            });
        }
        Some(applied)
    }

    /// Every object placed on `cluster` of `types` ((group, resource)),
    /// with its state.
    pub(crate) fn placed_objects(
        &self,
        cluster: &str,
        types: &HashSet<(String, String)>,
    ) -> Vec<(ObjectKey, Placed)> {
        let Some(placement) = self.clusters.get(cluster) else {
            return Vec::new();
        };
        placement
            .objects
            .iter()
            .filter(|(address, _)| {
                types.contains(&(address.group.clone(), address.resource.clone()))
            })
            .filter_map(|(address, placed)| {
                Some((self.canonical(placement, address)?, placed.clone()))
            })
            .collect()
    }

    /// The state of `key` if it is placed on `cluster` as that kind.
    pub(crate) fn placed(&self, cluster: &str, key: &ObjectKey) -> Option<&Placed> {
        let placement = self.clusters.get(cluster)?;
        let index = self.type_index(&key.group, &key.resource)?;
        if self.types[index].version != key.version
            || placement.kinds.get(index)?.as_deref() != Some(key.kind.as_str())
        {
            return None;
        }
        placement.objects.get(key as &dyn AddressParts)
    }

    /// How many objects of `types` ((group, resource)) are placed on `cluster`.
    pub(crate) fn count(&self, cluster: &str, types: &HashSet<(String, String)>) -> usize {
        let Some(placement) = self.clusters.get(cluster) else {
            return 0;
        };
        self.types
            .iter()
            .zip(&placement.counts)
            .filter(|(t, _)| types.contains(&(t.group.clone(), t.resource.clone())))
            .map(|(_, count)| count)
            .sum()
    }

    /// How many objects are placed on `cluster`.
    pub fn objects(&self, cluster: &str) -> usize {
        self.clusters.get(cluster).map_or(0, |p| p.objects.len())
    }
}

impl ClusterPlacement {
    fn contains(&self, key: &ObjectKey) -> bool {
        self.objects.contains_key(key as &dyn AddressParts)
    }

    /// Counts a newly placed object where it lives.
    fn serve(&mut self, address: &Address) {
        if let Some(namespace) = &address.namespace {
            *self
                .served
                .entry(address.workspace.clone())
                .or_default()
                .entry(namespace.clone())
                .or_default() += 1;
        }
    }

    /// Uncounts an object no longer placed.
    fn unserve(&mut self, address: &Address) {
        let Some(namespace) = &address.namespace else {
            return;
        };
        let Some(namespaces) = self.served.get_mut(&address.workspace) else {
            return;
        };
        if let Some(count) = namespaces.get_mut(namespace) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                namespaces.remove(namespace);
            }
        }
        if namespaces.is_empty() {
            self.served.remove(&address.workspace);
        }
    }

    /// Whether at least one object placed on the cluster lives in
    /// `namespace` of `workspace`.
    fn serves(&self, workspace: &str, namespace: &str) -> bool {
        self.served
            .get(workspace)
            .is_some_and(|namespaces| namespaces.contains_key(namespace))
    }
}

/// Judges one cluster's reports; see [`PlacementView::verdict`].
#[derive(Debug)]
pub struct Judge<'a> {
    types: &'a [ResourceSpec],
    upsync: &'a [ResourceSpec],
    synctarget: Option<&'a SyncTargetRef>,
    placement: ClusterStanding<'a>,
}

#[derive(Debug)]
enum ClusterStanding<'a> {
    /// Not listed yet: the SyncTargets, or the cluster's placement.
    Unknown,
    NoSyncTarget,
    Placed(&'a ClusterPlacement),
}

impl<'a> Judge<'a> {
    /// What the hub knows of `key` (its upstream uid among it) when the
    /// cluster may report it, that is when [`Judge::verdict`] would
    /// [`Verdict::Accept`] it; `None` otherwise. Whatever a cluster says
    /// about an object beside its status (its events) needs this: a held
    /// report may never become one about an object it does not serve.
    pub fn placed(&self, key: &ObjectKey) -> Option<&'a Placed> {
        if self.verdict(key) != Verdict::Accept {
            return None;
        }
        match &self.placement {
            ClusterStanding::Placed(placement) => placement.objects.get(key as &dyn AddressParts),
            ClusterStanding::Unknown | ClusterStanding::NoSyncTarget => None,
        }
    }

    /// Whether the cluster may report `key`; see [`Verdict`]. An upsynced
    /// type is judged by [`Judge::upsync_verdict`].
    pub fn verdict(&self, key: &ObjectKey) -> Verdict {
        if is_reserved(&key.group, &key.resource) {
            return Verdict::Reject(Rejected::RESERVED_RESOURCE);
        }
        if let Some(upsync) = self
            .upsync
            .iter()
            .find(|t| t.resource == key.resource && t.group == key.group)
        {
            if upsync.version != key.version {
                return Verdict::Reject(Rejected::KIND_MISMATCH);
            }
            return self.upsync_verdict(key);
        }
        let Some(index) = self
            .types
            .iter()
            .position(|t| t.resource == key.resource && t.group == key.group)
        else {
            return Verdict::Reject(Rejected::RESOURCE_NOT_SYNCED);
        };
        if self.types[index].version != key.version {
            return Verdict::Reject(Rejected::KIND_MISMATCH);
        }
        let placement = match &self.placement {
            ClusterStanding::Unknown => return Verdict::Hold,
            // Held like an object not placed yet: the SyncTarget may be on
            // its way (registered after the agent connected); refused
            // `no_synctarget` once the hold runs out.
            ClusterStanding::NoSyncTarget => return Verdict::Hold,
            ClusterStanding::Placed(placement) => placement,
        };
        match placement.kinds.get(index) {
            Some(Some(kind)) if *kind != key.kind => {
                return Verdict::Reject(Rejected::KIND_MISMATCH);
            }
            Some(Some(_)) => {}
            _ => return Verdict::Hold,
        }
        if placement.contains(key) {
            Verdict::Accept
        } else {
            Verdict::Hold
        }
    }
}

impl Judge<'_> {
    /// Whether the cluster may upsync `key` (an object of an upsynced
    /// type): a cluster-scoped one only into its SyncTarget's workspace, a
    /// namespaced one only into a namespace where it serves KCP (at least
    /// one object placed on it lives there). Held while the view cannot
    /// tell (no SyncTarget yet, placement not listed yet).
    pub fn upsync_verdict(&self, key: &ObjectKey) -> Verdict {
        let (placement, synctarget) = match (&self.placement, self.synctarget) {
            (ClusterStanding::Placed(placement), Some(synctarget)) => (placement, synctarget),
            _ => return Verdict::Hold,
        };
        match &key.namespace {
            None if key.workspace == synctarget.workspace => Verdict::Accept,
            None => Verdict::Reject(Rejected::NOT_PLACED),
            Some(namespace) if placement.serves(&key.workspace, namespace) => Verdict::Accept,
            // Every object placed on the cluster is known: it serves
            // nothing there.
            Some(_) if placement.complete_since.is_some() => Verdict::Reject(Rejected::NOT_PLACED),
            Some(_) => Verdict::Hold,
        }
    }

    /// Whether `group`/`resource` is an upsynced type.
    pub fn is_upsync(&self, group: &str, resource: &str) -> bool {
        self.upsync
            .iter()
            .any(|t| t.group == group && t.resource == resource)
    }

    /// The cluster's SyncTarget, if it has one.
    pub fn synctarget(&self) -> Option<&SyncTargetRef> {
        self.synctarget
    }
}

/// What one change did to a cluster's placement.
#[derive(Debug, Default)]
pub(crate) struct Applied {
    /// Full keys of the objects whose reports from the cluster must go: no
    /// longer placed on it, or replaced by a new object of the same name.
    pub unplaced: Vec<ObjectKey>,
    /// (workspace, namespace) the cluster no longer serves: the last
    /// object placed on it there is gone.
    pub unserved: Vec<(String, String)>,
    /// Every object whose state changed.
    pub changes: Vec<ObjectChange>,
    /// Objects were left out because the cluster is at its limit.
    pub overflow: bool,
}

/// One placed object before and after a change (`None`: not placed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ObjectChange {
    pub key: ObjectKey,
    pub before: Option<Placed>,
    pub after: Option<Placed>,
}

impl Placed {
    /// `object` as placed on the cluster whose SyncTarget key is `synctarget_key`.
    fn of(object: &PlacedObject, api_version: &str, kind: &str, synctarget_key: &str) -> Self {
        let leaving = object.leaving(synctarget_key);
        Self {
            uid: object.metadata.uid.clone(),
            resource_version: object.metadata.resource_version.clone().unwrap_or_default(),
            manifest: Arc::from(object.downward_manifest(api_version, kind)),
            deleting: object.deleting() || leaving,
            leaving,
            finalizers: object.metadata.finalizers.clone(),
        }
    }
}

/// A change of one type's placement on one cluster, in the view's terms.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum PlacementChange {
    /// Every object of the type placed on the cluster now.
    Listed {
        kind: Option<String>,
        objects: Vec<PlacedAddress>,
    },
    Placed(Box<PlacedAddress>),
    Unplaced(Address),
}

/// A placed object as KCP sent it, and its address.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PlacedAddress {
    pub address: Address,
    pub object: PlacedObject,
}

/// Whether `group`/`resource` is one of the records only the hub writes.
pub fn is_reserved(group: &str, resource: &str) -> bool {
    group == SYNCTARGET_GROUP && resource == SYNCTARGET_RESOURCE
}

#[cfg(test)]
mod tests;
