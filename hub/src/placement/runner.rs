//! The task that keeps the placement view up to date: it watches the
//! SyncTargets, starts one watch per synced type for every cluster whose
//! agent connected and that has a SyncTarget, applies what they report to
//! the view and the store together, and judges held reports again.
//!
//! It owns one task per watched cluster (stopped when the cluster's
//! SyncTarget goes or changes) and stops them all, then itself, when its
//! token is cancelled.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::{BoxStream, SelectAll};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uplink_protocol::Rejected;

use super::address::Address;
use super::key::{STATE_SYNC, state_label, sync_target_key};
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
    /// Runs until `stop` is cancelled; then stops every cluster's watches.
    pub async fn run(self, stop: CancellationToken) {
        let workspace = self.placements.settings().synctarget_workspace.clone();
        let mut synctargets = self.source.synctargets(&workspace);
        let mut clusters: HashMap<ClusterName, (String, CancellationToken)> = HashMap::new();
        let mut tasks = JoinSet::new();
        let mut recheck = tokio::time::interval(RECHECK_EVERY);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                Some(event) = synctargets.next() => match event {
                    Ok(event) => {
                        // Their watches stop; a SyncTarget that came back
                        // meanwhile gets a fresh placement below.
                        for cluster in self.synctargets_changed(event, &workspace) {
                            if let Some((_, token)) = clusters.remove(&cluster) {
                                token.cancel();
                            }
                        }
                    }
                    Err(error) => {
                        self.placements.metrics.placement_watch_failures.inc();
                        tracing::warn!(%workspace, %error, "watching SyncTargets failed");
                    }
                },
                () = self.placements.wanted_changed.notified() => {}
                _ = recheck.tick() => {
                    self.recheck_all();
                }
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Err(error) = joined
                        && error.is_panic()
                    {
                        tracing::error!(%error, "a placement watch panicked");
                    }
                }
            }
            self.reconcile_watches(&mut clusters, &mut tasks, &stop);
        }
        for (_, token) in clusters.values() {
            token.cancel();
        }
        while tasks.join_next().await.is_some() {}
    }

    /// Starts the watches of clusters that connected and have a SyncTarget,
    /// and stops those whose SyncTarget went or changed.
    fn reconcile_watches(
        &self,
        clusters: &mut HashMap<ClusterName, (String, CancellationToken)>,
        tasks: &mut JoinSet<()>,
        stop: &CancellationToken,
    ) {
        let wanted = self.placements.wanted();
        let mut view = self.placements.write();
        clusters.retain(|cluster, (key, token)| {
            let keep = view.synctarget(cluster).is_some_and(|t| t.key == *key);
            if !keep {
                token.cancel();
            }
            keep
        });
        for cluster in wanted {
            let Some(target) = view.synctarget(&cluster).cloned() else {
                continue;
            };
            if clusters.contains_key(&cluster) {
                continue;
            }
            if !view.watching(&cluster, &target.key) {
                view.start_cluster(&cluster, &target.key);
            }
            let token = stop.child_token();
            clusters.insert(cluster.clone(), (target.key.clone(), token.clone()));
            tracing::info!(%cluster, synctarget = %target.name, workspace = %target.workspace, key = %target.key, "watching the cluster's placement");
            tasks.spawn(self.clone().watch_cluster(cluster, target, token));
        }
    }

    /// Applies a change of the SyncTargets; a cluster whose SyncTarget went
    /// or changed loses its placement (and the hub every report of it).
    /// Returns those clusters.
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
        let dropped = match event {
            Event::Listed { objects, .. } => {
                tracing::info!(%workspace, synctargets = objects.len(), "SyncTargets listed");
                view.set_synctargets(
                    objects
                        .iter()
                        .map(|object| (object.metadata.name.clone(), target(object)))
                        .collect(),
                )
            }
            Event::Applied(object) => view.put_synctarget(target(&object)),
            Event::Deleted(object) => view.remove_synctarget(&object.metadata.name),
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
        self.recheck(&view, None);
        drop(view);
        self.placements.notify_changed();
        dropped
    }

    /// Watches every synced type placed on `cluster` until `stop`.
    async fn watch_cluster(
        self,
        cluster: ClusterName,
        target: SyncTargetRef,
        stop: CancellationToken,
    ) {
        let selector = format!("{}={STATE_SYNC}", state_label(&target.key));
        let mut streams: SelectAll<TypedEvents> = SelectAll::new();
        for (index, resource) in self.placements.settings().resources.iter().enumerate() {
            streams.push(
                self.source
                    .placed(resource, &selector)
                    .map(move |event| (index, event))
                    .boxed(),
            );
        }
        loop {
            let (index, event) = tokio::select! {
                () = stop.cancelled() => return,
                next = streams.next() => match next {
                    Some(next) => next,
                    None => return, // no types configured
                },
            };
            match event {
                Ok(event) => self.placement_changed(&cluster, &target.key, index, event),
                Err(error) => {
                    self.placements.metrics.placement_watch_failures.inc();
                    if error.attempt == 1 || error.attempt.is_power_of_two() {
                        tracing::warn!(%cluster, %error, attempt = error.attempt, "watching the cluster's placement failed");
                    } else {
                        tracing::debug!(%cluster, %error, attempt = error.attempt, "watching the cluster's placement failed");
                    }
                }
            }
        }
    }

    /// Applies one event of `cluster`'s placement of type `index` to the
    /// view and the store, under the view's write lock.
    fn placement_changed(
        &self,
        cluster: &str,
        key: &str,
        index: usize,
        event: Event<PlacedObject>,
    ) {
        let label = state_label(key);
        let label = label.as_str();
        let change = match event {
            Event::Listed { kind, objects } => PlacementChange::Listed {
                kind,
                objects: objects
                    .into_iter()
                    .filter_map(|object| self.placed_address(cluster, label, index, object))
                    .collect(),
            },
            Event::Applied(object) => match self.address(cluster, index, &object) {
                Some(address)
                    if object.metadata.labels.get(label).map(String::as_str)
                        == Some(STATE_SYNC) =>
                {
                    PlacementChange::Placed(Box::new(PlacedAddress { address, object }))
                }
                Some(address) => PlacementChange::Unplaced(address),
                None => return,
            },
            Event::Deleted(object) => match self.address(cluster, index, &object) {
                Some(address) => PlacementChange::Unplaced(address),
                None => return,
            },
        };
        let full_recheck = matches!(change, PlacementChange::Listed { .. });
        let placed = match &change {
            PlacementChange::Placed(placed) => Some(placed.address.clone()),
            _ => None,
        };
        let mut view = self.placements.write();
        let max = self.placements.settings().max_per_cluster;
        let Some(applied) = view.apply(cluster, key, index, change, max) else {
            return; // the cluster's watch was stopped meanwhile
        };
        if applied.overflow {
            tracing::warn!(%cluster, max, "more objects are placed on the cluster than the hub tracks; the rest are refused");
        }
        if !applied.unplaced.is_empty() {
            tracing::debug!(%cluster, objects = applied.unplaced.len(), "objects unplaced from the cluster");
            self.store.unplace(cluster, &applied.unplaced);
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
            self.recheck(&view, Some(cluster));
        } else if let Some(address) = placed {
            self.release(&view, cluster, &address);
        }
        drop(view);
        self.placements.notify_changed();
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

    fn placed_address(
        &self,
        cluster: &str,
        label: &str,
        index: usize,
        object: PlacedObject,
    ) -> Option<PlacedAddress> {
        if object.metadata.labels.get(label).map(String::as_str) != Some(STATE_SYNC) {
            return None;
        }
        let address = self.address(cluster, index, &object)?;
        Some(PlacedAddress { address, object })
    }

    /// Where `object` of type `index` lives; `None` (logged) when KCP did
    /// not say which workspace.
    fn address(&self, cluster: &str, index: usize, object: &PlacedObject) -> Option<Address> {
        let resource = self.placements.settings().resources.get(index)?;
        let workspace = match self.mode {
            UpstreamMode::Kubernetes => String::new(),
            UpstreamMode::Kcp => match object.workspace() {
                Some(workspace) if !workspace.is_empty() => workspace.to_owned(),
                _ => {
                    tracing::warn!(%cluster, name = %object.metadata.name, resource = %resource, "a placed object without the kcp.io/cluster annotation; ignoring it");
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
