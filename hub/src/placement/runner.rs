//! The task that keeps the placement view up to date: it watches the
//! SyncTargets and each synced type once ([`super::index`]), gives every
//! cluster whose agent connected and that has a SyncTarget its share,
//! applies each change to the view and the store together, and judges held
//! reports again.
//!
//! It owns its watches (streams polled in its own loop, so no task per
//! cluster or type) and drops them when its token is cancelled.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::{BoxStream, SelectAll};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uplink_protocol::Rejected;

use super::address::Address;
use super::index::{PlacedIndex, is_placed_on, sync_keys};
use super::key::sync_target_key;
use super::source::{PlacedObject, PlacementSource, SyncTargetObject};
use super::watch::{Event, WatchError};
use super::{
    ObjectChange, PlacedAddress, PlacementChange, PlacementView, Placements, SyncTargetRef, Verdict,
};
use crate::config::UpstreamMode;
use crate::downstream::{Change, Downstream};
use crate::rejection::Rejections;
use crate::store::{ClusterName, HeldVerdict, ObjectKey, Store};
use crate::writer::finalizer::{Finalizers, finalizer_name};

/// One type's placement events, tagged with the type's index.
type TypedEvents = BoxStream<'static, (usize, Result<Event<PlacedObject>, WatchError>)>;

/// How often held reports are judged again (their hold may have run out).
const RECHECK_EVERY: Duration = Duration::from_secs(1);

/// What the runner needs.
#[derive(Debug, Clone)]
pub struct Runner {
    pub placements: Arc<Placements>,
    pub source: Arc<dyn PlacementSource>,
    pub store: Arc<Store>,
    pub downstream: Arc<Downstream>,
    pub finalizers: Arc<Finalizers>,
    pub rejections: Arc<Rejections>,
    pub mode: UpstreamMode,
    /// Forgets a cluster whose SyncTarget was deleted.
    pub forget: Arc<crate::forget::Forget>,
}

impl Runner {
    /// Runs until `stop` is cancelled.
    pub async fn run(self, stop: CancellationToken) {
        let workspace = self.placements.settings().synctarget_workspace.clone();
        let resources = self.placements.settings().resources.clone();
        let mut synctargets = self.source.synctargets(&workspace);
        let mut placed: SelectAll<TypedEvents> = resources
            .iter()
            .enumerate()
            .map(|(index, resource)| {
                self.source
                    .placed(resource)
                    .map(move |event| (index, event))
                    .boxed()
            })
            .collect();
        let mut indexes: Vec<PlacedIndex> =
            resources.iter().map(|_| PlacedIndex::default()).collect();
        let placed_objects: Vec<_> = resources
            .iter()
            .map(|resource| {
                let metrics = &self.placements.metrics;
                metrics
                    .placed_objects
                    .with_label_values(&[resource.to_string()])
            })
            .collect();
        let mut recheck = tokio::time::interval(RECHECK_EVERY);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                Some(event) = synctargets.next() => match event {
                    Ok(event) => {
                        let clusters = self.synctargets_changed(event, &workspace);
                        self.follow(&indexes, clusters);
                    }
                    Err(error) => {
                        self.placements.metrics.placement_watch_failures.inc();
                        tracing::warn!(%workspace, %error, "watching SyncTargets failed");
                    }
                },
                () = self.placements.wanted_changed.notified() => {
                    self.follow(&indexes, self.placements.take_fresh());
                }
                Some((index, event)) = placed.next() => match event {
                    Ok(event) => {
                        let placed = &mut indexes[index];
                        self.placement_changed(placed, index, event);
                        placed_objects[index].set(i64::try_from(placed.len()).unwrap_or(i64::MAX));
                    }
                    Err(error) => {
                        self.placements.metrics.placement_watch_failures.inc();
                        let resource = &resources[index];
                        if error.attempt == 1 || error.attempt.is_power_of_two() {
                            tracing::warn!(%resource, %error, attempt = error.attempt, "watching placement failed");
                        } else {
                            tracing::debug!(%resource, %error, attempt = error.attempt, "watching placement failed");
                        }
                    }
                },
                _ = recheck.tick() => {
                    self.recheck_all();
                }
            }
        }
    }

    /// Starts following those of `clusters` whose agent connected and that
    /// have a SyncTarget not followed yet, with their share of every type
    /// listed so far.
    fn follow(&self, indexes: &[PlacedIndex], clusters: Vec<ClusterName>) {
        if clusters.is_empty() {
            return;
        }
        // The lock is taken per cluster: clusters' placements are
        // independent, and sessions of the others go on judging meanwhile.
        let mut started = false;
        for cluster in clusters {
            let mut view = self.placements.write();
            let Some(target) = view.synctarget(&cluster).cloned() else {
                continue;
            };
            if view.following(&cluster, &target.key) || !self.placements.is_wanted(&cluster) {
                continue;
            }
            view.start_cluster(&cluster, &target.key);
            started = true;
            tracing::info!(%cluster, synctarget = %target.name, workspace = %target.workspace, key = %target.key, "following the cluster's placement");
            for (index, placed) in indexes.iter().enumerate() {
                if placed.listed() {
                    let change = share(placed, &target.key);
                    self.apply(&mut view, &cluster, &target.key, index, change);
                }
            }
        }
        if started {
            self.placements.notify_changed();
        }
    }

    /// Applies a change of the SyncTargets; a cluster whose SyncTarget went
    /// or changed loses its placement (and the hub every report of it).
    /// Returns the clusters that may now be followed.
    fn synctargets_changed(
        &self,
        event: Event<SyncTargetObject>,
        workspace: &str,
    ) -> Vec<ClusterName> {
        let target = |object: &SyncTargetObject| SyncTargetRef {
            workspace: workspace.to_owned(),
            name: object.metadata.name.clone(),
            uid: object.metadata.uid.clone(),
            key: sync_target_key(workspace, &object.metadata.name),
        };
        let mut view = self.placements.write();
        // The held reports to judge again: every cluster's after a list,
        // else the one cluster's whose SyncTarget changed.
        let mut concerned = None;
        let (dropped, candidates) = match event {
            Event::Listed { objects, .. } => {
                tracing::info!(%workspace, synctargets = objects.len(), "SyncTargets listed");
                let dropped = view.set_synctargets(
                    objects
                        .iter()
                        .map(|object| (object.metadata.name.clone(), target(object)))
                        .collect(),
                );
                (dropped, self.placements.wanted())
            }
            Event::Applied(object) => {
                let name = object.metadata.name.clone();
                let target = target(&object);
                // Most of these are the hub's own status writes: a cluster
                // followed with the same key needs nothing started.
                let candidates = if view.following(&name, &target.key) {
                    Vec::new()
                } else {
                    vec![name.clone()]
                };
                concerned = Some(name);
                (view.put_synctarget(target), candidates)
            }
            Event::Deleted(object) => {
                concerned = Some(object.metadata.name.clone());
                (view.remove_synctarget(&object.metadata.name), Vec::new())
            }
        };
        for cluster in &dropped {
            let keys = view.drop_cluster(cluster);
            tracing::info!(%cluster, objects = keys.len(), "the cluster's SyncTarget is gone or changed; dropping its placement");
            self.store.unplace(cluster, &keys);
            self.placements
                .metrics
                .placements
                .with_label_values(&[cluster.as_str()])
                .set(0);
            if view.synctarget(cluster).is_none() {
                self.forget.forget(cluster);
            }
        }
        self.recheck(&view, concerned.as_deref());
        drop(view);
        self.placements.notify_changed();
        // A SyncTarget that came back with another key is followed afresh.
        candidates.into_iter().chain(dropped).collect()
    }

    /// Applies one event of type `index`'s watch to its index, and to the
    /// view and the store of every followed cluster it concerns, under the
    /// view's write lock. The index is the runner's own: it changes before
    /// the lock is taken, and an event that concerns no SyncTarget (most
    /// objects of a type are placed nowhere) takes no lock and wakes no one.
    fn placement_changed(
        &self,
        placed: &mut PlacedIndex,
        index: usize,
        event: Event<PlacedObject>,
    ) {
        match event {
            Event::Listed { kind, objects } => {
                let objects: Vec<(Address, PlacedObject)> = objects
                    .into_iter()
                    .filter_map(|object| Some((self.address(index, &object)?, object)))
                    .collect();
                placed.replace(kind, objects);
                tracing::info!(resource = %self.resource(index), placed = placed.len(), "placement listed");
                // Each cluster's share under its own write lock (as in
                // `follow`), parsed before it is taken.
                let followed = self.placements.read().followed();
                for (cluster, key) in followed {
                    let change = share(placed, &key);
                    let mut view = self.placements.write();
                    self.apply(&mut view, &cluster, &key, index, change);
                }
            }
            Event::Applied(object) => {
                let Some(address) = self.address(index, &object) else {
                    return;
                };
                // A status write (the hub's own, or another replica's):
                // no cluster's placement changes, no lock is taken. A
                // finalizer write pending on the object keeps its older
                // resourceVersion; should it conflict, it reads the object
                // again.
                if placed.refresh(&address, &object) {
                    return;
                }
                let keys = placed.put(address.clone(), &object);
                if keys.is_empty() {
                    return;
                }
                let mut view = self.placements.write();
                for key in keys {
                    let Some(cluster) = view.cluster_by_key(&key).cloned() else {
                        continue;
                    };
                    let change = if is_placed_on(&object, &key) {
                        PlacementChange::Placed(Box::new(PlacedAddress {
                            address: address.clone(),
                            object: object.clone(),
                        }))
                    } else {
                        PlacementChange::Unplaced(address.clone())
                    };
                    self.apply(&mut view, &cluster, &key, index, change);
                }
            }
            Event::Deleted(object) => {
                let Some(address) = self.address(index, &object) else {
                    return;
                };
                let keys = placed.remove(&address, &object);
                if keys.is_empty() {
                    return;
                }
                let mut view = self.placements.write();
                for key in keys {
                    if let Some(cluster) = view.cluster_by_key(&key).cloned() {
                        let change = PlacementChange::Unplaced(address.clone());
                        self.apply(&mut view, &cluster, &key, index, change);
                    }
                }
            }
        }
        self.placements.notify_changed();
    }

    /// Applies one change of type `index` to `cluster`'s placement (followed
    /// with SyncTarget key `key`), to the store and to its downward lane.
    fn apply(
        &self,
        view: &mut PlacementView,
        cluster: &str,
        key: &str,
        index: usize,
        change: PlacementChange,
    ) {
        let full_recheck = matches!(change, PlacementChange::Listed { .. });
        let placed = match &change {
            PlacementChange::Placed(placed) => Some(placed.address.clone()),
            _ => None,
        };
        let max = self.placements.settings().max_per_cluster;
        let Some(applied) = view.apply(cluster, key, index, change, max) else {
            return;
        };
        if applied.overflow {
            tracing::warn!(%cluster, max, "more objects are placed on the cluster than the hub tracks; the rest are refused");
        }
        if !applied.unplaced.is_empty() {
            tracing::debug!(%cluster, objects = applied.unplaced.len(), "objects unplaced from the cluster");
            self.store.unplace(cluster, &applied.unplaced);
        }
        if !applied.unserved.is_empty() {
            // What the cluster upsyncs where it no longer serves KCP is no
            // longer its to report (the upstream objects stay as they are).
            let upsynced: Vec<ObjectKey> = self
                .store
                .cluster_keys(cluster)
                .into_iter()
                .filter(|key| {
                    view.is_upsync(&key.group, &key.resource)
                        && applied.unserved.iter().any(|(workspace, namespace)| {
                            key.workspace == *workspace
                                && key.namespace.as_deref() == Some(namespace.as_str())
                        })
                })
                .collect();
            tracing::debug!(%cluster, namespaces = applied.unserved.len(), upsynced = upsynced.len(), "namespaces the cluster no longer serves");
            self.store.unplace(cluster, &upsynced);
        }
        self.follow_downward(cluster, key, &applied.changes);
        let types = self.downstream.types(cluster);
        if !types.is_empty() {
            self.downstream
                .set_objects(cluster, view.count(cluster, &types));
        }
        self.placements
            .metrics
            .placements
            .with_label_values(&[cluster])
            .set(i64::try_from(view.objects(cluster)).unwrap_or(i64::MAX));
        if full_recheck {
            self.recheck(view, Some(cluster));
        } else if let Some(address) = placed {
            self.release(view, cluster, &address);
        }
    }

    /// What the changes mean for `cluster`'s downward lane (if its agent
    /// applies their types) and for the hub's finalizer on each object.
    fn follow_downward(&self, cluster: &str, synctarget_key: &str, changes: &[ObjectChange]) {
        let finalizer = finalizer_name(synctarget_key);
        for change in changes {
            let key = &change.key;
            if let Some(state) = change.after.as_ref().or(change.before.as_ref()) {
                self.finalizers
                    .observe(key, &state.resource_version, &state.finalizers);
            }
            if !self.downstream.applies(cluster, &key.group, &key.resource) {
                continue;
            }
            match (&change.before, &change.after) {
                // Placed or changed: the new manifest goes down, and the
                // hub holds the object in KCP while the cluster has it.
                (before, Some(after)) if !after.deleting => {
                    let new = before
                        .as_ref()
                        .is_none_or(|b| b.deleting || b.manifest != after.manifest);
                    if new {
                        self.downstream.changed(
                            cluster,
                            key,
                            &after.uid,
                            Change::Apply(after.manifest.clone()),
                        );
                    }
                    self.finalizers.want(
                        key,
                        &finalizer,
                        true,
                        false,
                        &after.resource_version,
                        &after.finalizers,
                    );
                }
                // Deleted in KCP, or being taken off the cluster: deleted
                // downstream; the finalizer comes off when the cluster
                // confirms it.
                (before, Some(after)) => {
                    if before.as_ref().is_none_or(|b| !b.deleting) {
                        self.downstream
                            .changed(cluster, key, &after.uid, Change::Delete);
                    }
                }
                // Unplaced: deleted downstream; the upstream object stays, so
                // there is nothing to hold.
                (Some(before), None) => {
                    if !before.deleting {
                        self.downstream
                            .changed(cluster, key, &before.uid, Change::Delete);
                    }
                    self.finalizers.want(
                        key,
                        &finalizer,
                        false,
                        false,
                        &before.resource_version,
                        &before.finalizers,
                    );
                }
                (None, None) => {}
            }
        }
    }

    fn resource(&self, index: usize) -> &uplink_protocol::resource::ResourceSpec {
        &self.placements.settings().resources[index]
    }

    /// Where `object` of type `index` lives; `None` when KCP did not say
    /// which workspace (logged when the object is placed somewhere).
    fn address(&self, index: usize, object: &PlacedObject) -> Option<Address> {
        let resource = self.placements.settings().resources.get(index)?;
        let workspace = match self.mode {
            UpstreamMode::Kubernetes => String::new(),
            UpstreamMode::Kcp => match object.workspace() {
                Some(workspace) if !workspace.is_empty() => workspace.to_owned(),
                _ => {
                    if sync_keys(object).next().is_some() {
                        tracing::warn!(name = %object.metadata.name, resource = %resource, "a placed object without the kcp.io/cluster annotation; ignoring it");
                    }
                    return None;
                }
            },
        };
        Some(Address {
            group: resource.group.clone(),
            resource: resource.resource.clone(),
            workspace,
            namespace: object.metadata.namespace.clone(),
            name: object.metadata.name.clone(),
        })
    }

    /// Releases `cluster`'s held report of the object just placed at
    /// `address`, if it names the placed kind.
    fn release(&self, view: &PlacementView, cluster: &str, address: &Address) {
        let hold = self.placements.settings().hold;
        let Some(key) = view.canonical_key(cluster, address) else {
            return;
        };
        let rejected = self.store.recheck_held(cluster, Some(&key), |key, since| {
            judge(view, cluster, key, since, hold)
        });
        self.rejections.rejected_held(cluster, rejected);
    }

    /// Judges again the held reports of `cluster` (every cluster: `None`).
    fn recheck(&self, view: &PlacementView, cluster: Option<&str>) {
        let hold = self.placements.settings().hold;
        let clusters = match cluster {
            Some(cluster) => vec![cluster.to_owned()],
            None => self.store.clusters_with_held(),
        };
        for cluster in clusters {
            let rejected = self.store.recheck_held(&cluster, None, |key, since| {
                judge(view, &cluster, key, since, hold)
            });
            self.rejections.rejected_held(&cluster, rejected);
        }
    }

    fn recheck_all(&self) {
        let view = self.placements.read();
        self.recheck(&view, None);
    }
}

/// What becomes of a held report of `key` from `cluster`, held since
/// `since`.
fn judge(
    view: &PlacementView,
    cluster: &str,
    key: &ObjectKey,
    since: Instant,
    hold: Duration,
) -> HeldVerdict {
    match view.verdict(cluster, key) {
        Verdict::Accept => HeldVerdict::Release,
        Verdict::Reject(reason) => HeldVerdict::Reject(reason),
        Verdict::Hold => {
            // No SyncTarget: the hold counts from the report; else from when
            // the cluster's placement was complete (before, the view could
            // not tell).
            let (reason, from) = if view.synctargets_listed() && view.synctarget(cluster).is_none()
            {
                (Rejected::NO_SYNCTARGET, Some(since))
            } else {
                (
                    Rejected::NOT_PLACED,
                    view.complete_since(cluster).map(|c| since.max(c)),
                )
            };
            match from {
                Some(from) if Instant::now() >= from + hold => HeldVerdict::Reject(reason),
                _ => HeldVerdict::Keep,
            }
        }
    }
}

/// The objects of `placed` placed on the SyncTarget with `key`, as a list
/// of that cluster's share.
fn share(placed: &PlacedIndex, key: &str) -> PlacementChange {
    PlacementChange::Listed {
        kind: placed.kind().map(str::to_owned),
        objects: placed
            .placed_on(key)
            .map(|(address, object)| PlacedAddress {
                address: address.clone(),
                object,
            })
            .collect(),
    }
}
