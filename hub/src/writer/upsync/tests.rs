//! The upsync writer against a fake KCP that keeps objects as kube-apiserver
//! would (uids, resourceVersions, 409 on a stale PUT or an existing name,
//! uid preconditions on delete).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use futures::future::BoxFuture;
use serde_json::{Value, json};
use uplink_protocol::resource::ResourceSpec;

use super::*;
use crate::aggregate::{FeatureGates, MergePolicy};
use crate::placement::address::Address;
use crate::placement::key::sync_target_key;
use crate::placement::source::Metadata;
use crate::placement::{
    PlacedAddress, PlacedObject, PlacementChange, PlacementSettings, SyncTargetRef,
};

const WS: &str = "root:org:team-a";

/// KCP's objects, by key.
#[derive(Debug, Default)]
struct FakeKcp {
    objects: Mutex<BTreeMap<ObjectKey, Value>>,
    next: AtomicU64,
    /// Errors the next updates answer, in order.
    fail_updates: Mutex<Vec<UpstreamError>>,
    /// Every delete: (key, uid precondition).
    deletes: Mutex<Vec<(ObjectKey, String)>>,
    /// A cluster (by SyncTarget key) whose write adds its mark to the
    /// object between the next delete's read and the delete itself.
    mark_before_delete: Mutex<Option<String>>,
    /// Creates answer 404 (no such namespace upstream).
    create_not_found: std::sync::atomic::AtomicBool,
}

impl FakeKcp {
    fn objects(&self) -> std::sync::MutexGuard<'_, BTreeMap<ObjectKey, Value>> {
        self.objects.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn get(&self, key: &ObjectKey) -> Value {
        self.objects()
            .get(key)
            .cloned()
            .unwrap_or_else(|| panic!("{key} is not in KCP"))
    }

    fn version(&self) -> String {
        self.next.fetch_add(1, Ordering::SeqCst).to_string()
    }

    /// KCP's own edit of `key` (a user's): `edit` on the stored object.
    fn edit(&self, key: &ObjectKey, edit: impl FnOnce(&mut Value)) {
        let version = self.version();
        let mut objects = self.objects();
        let Some(object) = objects.get_mut(key) else {
            panic!("{key} is not in KCP");
        };
        edit(object);
        object["metadata"]["resourceVersion"] = json!(version);
    }
}

impl UpsyncUpstream for FakeKcp {
    fn get_upsynced<'a>(
        &'a self,
        key: &'a ObjectKey,
    ) -> BoxFuture<'a, Result<Value, UpstreamError>> {
        Box::pin(async move {
            self.objects()
                .get(key)
                .cloned()
                .ok_or(UpstreamError::NotFound)
        })
    }

    fn create_upsynced<'a>(
        &'a self,
        key: &'a ObjectKey,
        object: &'a Value,
        _dry_run: bool,
    ) -> BoxFuture<'a, Result<Value, UpstreamError>> {
        Box::pin(async move {
            if self.create_not_found.load(Ordering::SeqCst) {
                return Err(UpstreamError::NotFound);
            }
            let version = self.version();
            let mut objects = self.objects();
            if objects.contains_key(key) {
                return Err(UpstreamError::Conflict("already exists".into()));
            }
            let mut stored = object.clone();
            stored["metadata"]["uid"] = json!(format!("up-{version}"));
            stored["metadata"]["resourceVersion"] = json!(version);
            objects.insert(key.clone(), stored.clone());
            Ok(stored)
        })
    }

    fn update_upsynced<'a>(
        &'a self,
        key: &'a ObjectKey,
        object: &'a Value,
        _dry_run: bool,
    ) -> BoxFuture<'a, Result<Value, UpstreamError>> {
        Box::pin(async move {
            if let Some(error) = {
                let mut fail = self
                    .fail_updates
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                (!fail.is_empty()).then(|| fail.remove(0))
            } {
                return Err(error);
            }
            let version = self.version();
            let mut objects = self.objects();
            let Some(stored) = objects.get_mut(key) else {
                return Err(UpstreamError::NotFound);
            };
            if stored["metadata"]["resourceVersion"] != object["metadata"]["resourceVersion"] {
                return Err(UpstreamError::Conflict(
                    "the object has been modified".into(),
                ));
            }
            *stored = object.clone();
            stored["metadata"]["resourceVersion"] = json!(version);
            Ok(stored.clone())
        })
    }

    fn delete_upsynced<'a>(
        &'a self,
        key: &'a ObjectKey,
        uid: &'a str,
        resource_version: &'a str,
        _dry_run: bool,
    ) -> BoxFuture<'a, Result<(), UpstreamError>> {
        Box::pin(async move {
            self.deletes
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((key.clone(), uid.to_owned()));
            let marking = self
                .mark_before_delete
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(synctarget_key) = marking {
                self.edit(key, |object| {
                    object["metadata"]["labels"][state_label(&synctarget_key)] = json!("Upsync");
                    object["metadata"]["annotations"]
                        [format!("{DOWNSTREAM_UID_PREFIX}{synctarget_key}")] = json!("late");
                });
            }
            let mut objects = self.objects();
            let Some(stored) = objects.get(key) else {
                return Err(UpstreamError::NotFound);
            };
            if stored["metadata"]["uid"] != uid {
                return Err(UpstreamError::Conflict("precondition failed: uid".into()));
            }
            if !resource_version.is_empty()
                && stored["metadata"]["resourceVersion"] != resource_version
            {
                return Err(UpstreamError::Conflict(
                    "precondition failed: resourceVersion".into(),
                ));
            }
            objects.remove(key);
            Ok(())
        })
    }

    fn list_upsynced<'a>(
        &'a self,
        resource: &'a ResourceSpec,
    ) -> BoxFuture<'a, Result<Vec<Listed>, UpstreamError>> {
        Box::pin(async move {
            Ok(self
                .objects()
                .iter()
                .filter(|(key, _)| key.resource == resource.resource)
                .map(|(key, object)| Listed {
                    workspace: key.workspace.clone(),
                    object: object.clone(),
                })
                .collect())
        })
    }
}

struct Fixture {
    writer: Arc<UpsyncWriter>,
    kcp: Arc<FakeKcp>,
    status_queue: Arc<WriteQueue>,
    aggregator: Arc<Aggregator>,
    metrics: Arc<Metrics>,
    upsync: Arc<Upsync>,
}

fn spec(text: &str) -> ResourceSpec {
    text.parse().unwrap_or_else(|e| panic!("{e}"))
}

fn target(cluster: &str) -> SyncTargetRef {
    SyncTargetRef {
        workspace: "root".into(),
        name: cluster.into(),
        uid: format!("uid-{cluster}"),
        key: sync_target_key("root", cluster),
    }
}

/// Clusters `a` and `b` with SyncTargets in `root`, each serving
/// `WS`/`shop` (a Deployment placed there).
fn fixture(policy: MergePolicy) -> Fixture {
    let metrics = Arc::new(Metrics::new().unwrap_or_else(|e| panic!("{e}")));
    let placements = Arc::new(Placements::new(
        PlacementSettings {
            resources: vec![ResourceSpec::deployments()],
            upsync: vec![
                spec("persistentvolumes.v1"),
                spec("persistentvolumeclaims.v1"),
            ],
            ..PlacementSettings::default()
        },
        metrics.clone(),
    ));
    {
        let mut view = placements.write();
        view.set_synctargets(HashMap::from([
            ("a".to_owned(), target("a")),
            ("b".to_owned(), target("b")),
        ]));
        for cluster in ["a", "b"] {
            let key = target(cluster).key;
            view.start_cluster(cluster, &key);
            let web = PlacedAddress {
                address: Address {
                    group: "apps".into(),
                    resource: "deployments".into(),
                    workspace: WS.into(),
                    namespace: Some("shop".into()),
                    name: "web".into(),
                },
                object: PlacedObject {
                    kind: None,
                    metadata: Metadata {
                        name: "web".into(),
                        namespace: Some("shop".into()),
                        uid: "web-uid".into(),
                        ..Metadata::default()
                    },
                    rest: serde_json::Map::new(),
                },
            };
            view.apply(
                cluster,
                &key,
                0,
                PlacementChange::Listed {
                    kind: Some("Deployment".into()),
                    objects: vec![web],
                },
                100,
            );
        }
    }
    let status_queue = Arc::new(WriteQueue::new(metrics.clone()));
    let aggregator = Arc::new(Aggregator::new(
        policy,
        FeatureGates::default(),
        Arc::new(crate::health::Health::new(metrics.clone())),
        Duration::from_secs(10),
        Duration::from_secs(300),
        metrics.clone(),
    ));
    let kcp = Arc::new(FakeKcp::default());
    let upsync = Arc::new(Upsync::new(100, metrics.clone()));
    let writer = Arc::new(UpsyncWriter::new(
        upsync.clone(),
        kcp.clone(),
        placements,
        status_queue.clone(),
        aggregator.clone(),
        metrics.clone(),
        UpsyncWriterSettings {
            resources: vec![
                spec("persistentvolumes.v1"),
                spec("persistentvolumeclaims.v1"),
            ],
            concurrency: 2,
            hold: Duration::from_secs(30),
            dry_run: false,
        },
    ));
    Fixture {
        writer,
        kcp,
        status_queue,
        aggregator,
        metrics,
        upsync,
    }
}

fn pv_key() -> ObjectKey {
    ObjectKey::new(KeyParts {
        workspace: "root".into(),
        group: String::new(),
        version: "v1".into(),
        resource: "persistentvolumes".into(),
        kind: "PersistentVolume".into(),
        namespace: None,
        name: "data".into(),
    })
}

fn pv(spec: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": "data", "labels": {"app": "db"}},
        "spec": spec,
    })
}

fn desired(cluster: &str, uid: &str, object: Value) -> UpsyncReport {
    UpsyncReport {
        cluster: cluster.into(),
        key: pv_key(),
        downstream_uid: uid.into(),
        change: UpsyncChange::Desired(Arc::new(object)),
    }
}

fn deleted(cluster: &str, uid: &str) -> UpsyncReport {
    UpsyncReport {
        cluster: cluster.into(),
        key: pv_key(),
        downstream_uid: uid.into(),
        change: UpsyncChange::Deleted,
    }
}

fn label(cluster: &str) -> String {
    state_label(&target(cluster).key)
}

fn uid_annotation(cluster: &str) -> String {
    format!("{DOWNSTREAM_UID_PREFIX}{}", target(cluster).key)
}

impl Fixture {
    async fn write(&self, report: &UpsyncReport) {
        assert_eq!(self.writer.write(report).await, Outcome::Done, "{report:?}");
    }

    fn writes(&self, result: &str) -> u64 {
        self.metrics
            .upsync_writes
            .with_label_values(&[result])
            .get()
    }

    fn upsynced(&self, cluster: &str) -> i64 {
        self.metrics
            .upsynced_objects
            .with_label_values(&[cluster])
            .get()
    }
}

#[tokio::test]
async fn a_new_object_is_created_marked_and_its_status_written_again() {
    let f = fixture(MergePolicy::default());
    let object = pv(json!({"capacity": {"storage": "1Gi"}}));
    f.write(&desired("a", "d1", object.clone())).await;

    let stored = f.kcp.get(&pv_key());
    assert_eq!(stored["spec"], object["spec"]);
    assert_eq!(stored["metadata"]["labels"]["app"], "db");
    assert_eq!(stored["metadata"]["labels"][label("a")], "Upsync");
    assert_eq!(stored["metadata"]["annotations"][uid_annotation("a")], "d1");
    let last_applied: Value = serde_json::from_str(
        stored["metadata"]["annotations"][LAST_APPLIED_ANNOTATION]
            .as_str()
            .unwrap_or_default(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(last_applied, object);
    assert_eq!(f.status_queue.len(), 1, "the status is written again");
    assert_eq!(f.writes(upsync_write::CREATED), 1);
    assert_eq!(f.upsynced("a"), 1);
    assert_eq!(
        f.upsync.uids.upstream_uid(&pv_key()),
        stored["metadata"]["uid"].as_str().map(str::to_owned)
    );

    // The same report again changes nothing.
    f.write(&desired("a", "d1", object)).await;
    assert_eq!(f.writes(upsync_write::UNCHANGED), 1);
    assert_eq!(f.kcp.get(&pv_key()), stored);
}

#[tokio::test]
async fn an_update_merges_with_kcps_changes_and_records_the_conflict() {
    let f = fixture(MergePolicy::default());
    f.write(&desired("a", "d1", pv(json!({"a": 1, "b": 1}))))
        .await;
    f.kcp.edit(&pv_key(), |object| {
        object["spec"] = json!({"a": 2, "b": 5});
        object["metadata"]["labels"]["team"] = json!("x");
    });
    let wanted = pv(json!({"a": 1, "b": 3}));
    f.write(&desired("a", "d1", wanted.clone())).await;

    let stored = f.kcp.get(&pv_key());
    assert_eq!(
        stored["spec"],
        json!({"a": 2, "b": 3}),
        "ThreeWayMerge by default"
    );
    assert_eq!(
        stored["metadata"]["labels"]["team"], "x",
        "KCP's own change stays"
    );
    assert_eq!(f.writes(upsync_write::UPDATED), 1);
    let last_applied = stored["metadata"]["annotations"][LAST_APPLIED_ANNOTATION]
        .as_str()
        .unwrap_or_default();
    assert_eq!(
        serde_json::from_str::<Value>(last_applied).ok(),
        Some(wanted)
    );
    let conflicts: Vec<Value> = serde_json::from_str(
        stored["metadata"]["annotations"][CONFLICTS_ANNOTATION]
            .as_str()
            .unwrap_or_default(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let [conflict] = conflicts.as_slice() else {
        panic!("one conflict, got {conflicts:?}");
    };
    assert_eq!(conflict["cluster"], "a");
    assert_eq!(conflict["strategy"], "ThreeWayMerge");
    assert_eq!(
        conflict["fields"],
        json!([{"path": "spec.b", "dropped": "kcp"}])
    );
    let present = f.aggregator.ledger().present(&pv_key());
    let [recorded] = present.as_slice() else {
        panic!("one present conflict, got {present:?}");
    };
    assert_eq!(recorded.conflict.kind, ConflictType::UpsyncConflict);
    assert_eq!(recorded.conflict.clusters, ["a"]);
    assert_eq!(
        f.metrics
            .conflicts
            .with_label_values(&["UpsyncConflict", "ThreeWayMerge"])
            .get(),
        1
    );

    // A write that drops nothing ends it.
    f.write(&desired("a", "d1", pv(json!({"a": 2, "b": 4}))))
        .await;
    assert!(f.aggregator.ledger().present(&pv_key()).is_empty());
    assert_eq!(f.kcp.get(&pv_key())["spec"], json!({"a": 2, "b": 4}));
    assert_eq!(
        f.metrics
            .conflicts
            .with_label_values(&["UpsyncConflict", "ThreeWayMerge"])
            .get(),
        0
    );
}

#[tokio::test]
async fn server_wins_keeps_kcps_value_where_both_changed() {
    let policy = MergePolicy::parse(
        "resources:\n  - resource: persistentvolumes\n    upsyncConflicts: ServerWins\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let f = fixture(policy);
    f.write(&desired("a", "d1", pv(json!({"a": 1, "b": 1, "c": 1}))))
        .await;
    f.kcp.edit(&pv_key(), |object| {
        object["spec"] = json!({"a": 2, "b": 5, "c": 1})
    });
    f.write(&desired("a", "d1", pv(json!({"a": 1, "b": 3, "c": 7}))))
        .await;
    assert_eq!(
        f.kcp.get(&pv_key())["spec"],
        json!({"a": 2, "b": 5, "c": 7})
    );
}

#[tokio::test]
async fn a_conflict_rereads_and_lands() {
    let f = fixture(MergePolicy::default());
    f.write(&desired("a", "d1", pv(json!({"a": 1})))).await;
    f.kcp
        .fail_updates
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(UpstreamError::Conflict(
            "the object has been modified".into(),
        ));
    f.write(&desired("a", "d1", pv(json!({"a": 2})))).await;
    assert_eq!(f.kcp.get(&pv_key())["spec"], json!({"a": 2}));
    assert_eq!(f.writes(upsync_write::CONFLICT), 1);
    assert_eq!(f.writes(upsync_write::UPDATED), 1);
}

#[tokio::test]
async fn a_server_error_is_retried_after_a_backoff() {
    let f = fixture(MergePolicy::default());
    f.write(&desired("a", "d1", pv(json!({"a": 1})))).await;
    f.kcp
        .fail_updates
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(UpstreamError::Server {
            status: 503,
            message: "unavailable".into(),
        });
    let report = desired("a", "d1", pv(json!({"a": 2})));
    assert!(matches!(
        f.writer.write(&report).await,
        Outcome::RetryAfter(delay) if delay > Duration::ZERO
    ));
    f.write(&report).await;
    assert_eq!(f.kcp.get(&pv_key())["spec"], json!({"a": 2}));
}

#[tokio::test]
async fn the_last_upsyncers_deletion_deletes_the_object() {
    let f = fixture(MergePolicy::default());
    f.write(&desired("a", "d1", pv(json!({"a": 1})))).await;
    let uid = f.kcp.get(&pv_key())["metadata"]["uid"].clone();
    // A deletion of an older object of the cluster changes nothing.
    f.write(&deleted("a", "d0")).await;
    assert!(f.kcp.objects().contains_key(&pv_key()));
    f.write(&deleted("a", "d1")).await;
    assert!(!f.kcp.objects().contains_key(&pv_key()));
    let deletes = f
        .kcp
        .deletes
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    assert_eq!(
        deletes,
        [(pv_key(), uid.as_str().unwrap_or_default().to_owned())]
    );
    assert_eq!(f.writes(upsync_write::DELETED), 1);
    assert_eq!(f.upsynced("a"), 0);
}

#[tokio::test]
async fn a_downstream_recreate_makes_a_new_upstream_object() {
    let f = fixture(MergePolicy::default());
    f.write(&desired("a", "d1", pv(json!({"a": 1})))).await;
    let old_uid = f.kcp.get(&pv_key())["metadata"]["uid"].clone();
    f.write(&desired("a", "d2", pv(json!({"a": 1})))).await;
    let stored = f.kcp.get(&pv_key());
    assert_ne!(stored["metadata"]["uid"], old_uid, "never the old object");
    assert_eq!(stored["metadata"]["annotations"][uid_annotation("a")], "d2");
    let deletes = f
        .kcp
        .deletes
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    assert_eq!(
        deletes,
        [(pv_key(), old_uid.as_str().unwrap_or_default().to_owned())]
    );
    assert_eq!(f.writes(upsync_write::CREATED), 2);
    assert_eq!(f.upsynced("a"), 1);
    assert!(
        f.upsync.take_created(&pv_key()),
        "the status writer forgets what it wrote to the old object"
    );
}

#[tokio::test]
async fn two_clusters_share_one_object() {
    let f = fixture(MergePolicy::default());
    let object = pv(json!({"a": 1}));
    f.write(&desired("a", "da", object.clone())).await;
    f.write(&desired("b", "db", object.clone())).await;
    let stored = f.kcp.get(&pv_key());
    let uid = stored["metadata"]["uid"].clone();
    for (cluster, downstream) in [("a", "da"), ("b", "db")] {
        assert_eq!(stored["metadata"]["labels"][label(cluster)], "Upsync");
        assert_eq!(
            stored["metadata"]["annotations"][uid_annotation(cluster)],
            downstream
        );
    }
    assert_eq!((f.upsynced("a"), f.upsynced("b")), (1, 1));

    // b's object is created anew: only b's annotation changes.
    f.write(&desired("b", "db2", object.clone())).await;
    let stored = f.kcp.get(&pv_key());
    assert_eq!(stored["metadata"]["uid"], uid);
    assert_eq!(
        stored["metadata"]["annotations"][uid_annotation("b")],
        "db2"
    );
    assert_eq!(stored["metadata"]["annotations"][uid_annotation("a")], "da");

    // a lets go: its mark comes off, the object stays for b.
    f.write(&deleted("a", "da")).await;
    let stored = f.kcp.get(&pv_key());
    assert_eq!(stored["metadata"]["uid"], uid);
    assert_eq!(stored["metadata"]["labels"].get(label("a")), None);
    assert_eq!(
        stored["metadata"]["annotations"].get(uid_annotation("a")),
        None
    );
    assert_eq!(stored["metadata"]["labels"][label("b")], "Upsync");
    assert_eq!((f.upsynced("a"), f.upsynced("b")), (0, 1));
    // b lets go too: gone.
    f.write(&deleted("b", "db2")).await;
    assert!(f.kcp.objects().is_empty());
}

#[tokio::test]
async fn nothing_is_written_where_the_cluster_does_not_serve_kcp() {
    let f = fixture(MergePolicy::default());
    let elsewhere = ObjectKey::new(KeyParts {
        workspace: WS.into(),
        ..pv_key().parts().clone()
    });
    let report = UpsyncReport {
        key: elsewhere,
        ..desired("a", "d1", pv(json!({})))
    };
    f.write(&report).await;
    assert!(f.kcp.objects().is_empty());
    assert_eq!(f.writes(upsync_write::REFUSED), 1);
}

#[tokio::test]
async fn the_uid_map_is_rebuilt_and_a_snapshot_without_an_object_deletes_it() {
    let f = fixture(MergePolicy::default());
    f.write(&desired("a", "d1", pv(json!({"a": 1})))).await;
    // A new hub: an empty map, a snapshot that arrives before the rebuild.
    let fresh = Upsync::new(100, f.metrics.clone());
    let writer = UpsyncWriter::new(
        Arc::new(fresh),
        f.kcp.clone(),
        f.writer.placements.clone(),
        f.status_queue.clone(),
        f.aggregator.clone(),
        f.metrics.clone(),
        f.writer.settings.clone(),
    );
    writer.upsync.snapshot(
        "a",
        &target("a").key,
        &f.writer.settings.resources,
        &SnapshotScope::Everything,
        HashSet::new(),
    );
    assert!(writer.upsync.queue.is_empty(), "waits for the rebuild");
    writer.rebuild().await;
    assert_eq!(writer.upsync.uids.len(), 1);
    assert_eq!(
        writer
            .upsync
            .uids
            .downstream_uid(&pv_key(), &target("a").key),
        Some("d1".to_owned())
    );
    let report = writer.upsync.queue.next().await;
    assert_eq!(report, deleted("a", "d1"));
    assert_eq!(writer.write(&report).await, Outcome::Done);
    assert!(f.kcp.objects().is_empty());
}

#[tokio::test]
async fn kcps_own_object_of_that_name_is_never_taken_over() {
    let f = fixture(MergePolicy::default());
    let own = json!({
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": "data", "uid": "kcp-uid", "resourceVersion": "1"},
        "spec": {"a": 0},
    });
    f.kcp.objects().insert(pv_key(), own.clone());
    f.write(&desired("a", "d1", pv(json!({"a": 1})))).await;
    f.write(&deleted("a", "d1")).await;
    assert_eq!(f.kcp.get(&pv_key()), own);
    assert_eq!(f.writes(upsync_write::REFUSED), 1);
}

#[tokio::test]
async fn dry_run_writes_nothing_and_remembers_nothing() {
    let mut f = fixture(MergePolicy::default());
    let mut settings = f.writer.settings.clone();
    settings.dry_run = true;
    f.writer = Arc::new(UpsyncWriter::new(
        f.upsync.clone(),
        f.kcp.clone(),
        f.writer.placements.clone(),
        f.status_queue.clone(),
        f.aggregator.clone(),
        f.metrics.clone(),
        settings,
    ));
    // The fake ignores dryRun, as a server that validates would not: what
    // matters is that the writer counts it and keeps no record of it.
    f.write(&desired("a", "d1", pv(json!({"a": 1})))).await;
    assert_eq!(f.writes(upsync_write::DRY_RUN), 1);
    assert_eq!(f.writes(upsync_write::CREATED), 0);
    assert!(f.upsync.uids.is_empty());
    assert!(f.status_queue.is_empty());
}

#[tokio::test]
async fn a_snapshot_deletes_only_objects_of_the_types_it_lists() {
    let f = fixture(MergePolicy::default());
    f.upsync.uids.rebuilt(Vec::new(), HashMap::new());
    f.write(&desired("a", "d1", pv(json!({"a": 1})))).await;
    let claim = ObjectKey::new(KeyParts {
        workspace: WS.into(),
        resource: "persistentvolumeclaims".into(),
        kind: "PersistentVolumeClaim".into(),
        namespace: Some("shop".into()),
        ..pv_key().parts().clone()
    });
    let mut claimed = pv(json!({"a": 1}));
    claimed["kind"] = json!("PersistentVolumeClaim");
    claimed["metadata"]["namespace"] = json!("shop");
    f.write(&UpsyncReport {
        key: claim.clone(),
        ..desired("a", "c1", claimed)
    })
    .await;
    assert_eq!(f.upsync.uids.len(), 2);

    // A snapshot of shards the PVC's workspace is not in (a replica's
    // snapshot of what it took over) says nothing of it.
    let elsewhere = (uplink_protocol::shard_of(&claim.workspace, 16).0 + 1) % 16;
    f.upsync.snapshot(
        "a",
        &target("a").key,
        &[spec("persistentvolumeclaims.v1")],
        &SnapshotScope::Shards {
            count: 16,
            shards: [uplink_protocol::ShardId(elsewhere)].into(),
        },
        HashSet::new(),
    );
    assert!(f.upsync.queue.is_empty(), "not the snapshot's shard");

    // A snapshot that lists only PVCs, and names none: the PVC is gone,
    // the PV is not the snapshot's to judge.
    f.upsync.snapshot(
        "a",
        &target("a").key,
        &[spec("persistentvolumeclaims.v1")],
        &SnapshotScope::Everything,
        HashSet::new(),
    );
    let report = f.upsync.queue.next().await;
    assert_eq!(report.key, claim);
    assert_eq!(report.change, UpsyncChange::Deleted);
    f.upsync.queue.done(&report.id(), None);
    assert!(f.upsync.queue.is_empty(), "the PV is not deleted");
}

#[tokio::test]
async fn a_mark_added_while_deleting_makes_the_delete_read_again() {
    let f = fixture(MergePolicy::default());
    // a lets go of its object; b's write adds b's mark between a's read
    // and a's delete: the delete must not take b's object with it.
    f.write(&desired("a", "d1", pv(json!({"a": 1})))).await;
    let uid = f.kcp.get(&pv_key())["metadata"]["uid"].clone();
    *f.kcp
        .mark_before_delete
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = Some(target("b").key);
    f.write(&deleted("a", "d1")).await;
    let stored = f.kcp.get(&pv_key());
    assert_eq!(stored["metadata"]["uid"], uid);
    assert_eq!(stored["metadata"]["labels"].get(label("a")), None);
    assert_eq!(stored["metadata"]["labels"][label("b")], "Upsync");
    assert_eq!(f.writes(upsync_write::CONFLICT), 1);
    assert_eq!(f.writes(upsync_write::DELETED), 0);

    // The same race on a's recreate: b's mark stays, only a's uid changes.
    f.write(&desired("a", "d2", pv(json!({"a": 1})))).await;
    f.write(&deleted("b", "late")).await;
    assert_eq!(f.kcp.get(&pv_key())["metadata"]["uid"], uid);
    *f.kcp
        .mark_before_delete
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = Some(target("b").key);
    f.write(&desired("a", "d3", pv(json!({"a": 1})))).await;
    let stored = f.kcp.get(&pv_key());
    assert_eq!(stored["metadata"]["uid"], uid, "never deleted");
    assert_eq!(stored["metadata"]["annotations"][uid_annotation("a")], "d3");
    assert_eq!(stored["metadata"]["labels"][label("b")], "Upsync");
}

#[tokio::test]
async fn a_create_with_nowhere_to_go_is_dropped_not_retried() {
    let f = fixture(MergePolicy::default());
    f.kcp.create_not_found.store(true, Ordering::SeqCst);
    // `write` asserts it is done with, not retried.
    f.write(&desired("a", "d1", pv(json!({"a": 1})))).await;
    assert!(f.kcp.objects().is_empty());
    assert_eq!(f.writes(upsync_write::REFUSED), 1);
    assert_eq!(f.writes(upsync_write::RETRIED), 0);
    assert!(f.writer.retries().is_empty());
    assert!(f.status_queue.is_empty());
}
