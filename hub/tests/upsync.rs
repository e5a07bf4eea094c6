//! Upsync (protocol version 3) through a hub on loopback: an agent that
//! upsyncs PersistentVolumes and PersistentVolumeClaims sends objects born
//! in its cluster; those where it serves KCP (a PV in its SyncTarget's
//! workspace, a PVC in a namespace where KCP placed objects on it) are
//! created upstream whole, marked as its own, their status written like
//! any report's; one in a workspace it does not serve is refused
//! `not_placed` and nothing of it is written; a deletion deletes upstream.

mod support;

use anyhow::{Result, bail};
use futures::StreamExt;
use serde_json::{Value, json};
use support::{FakeUpstream, TestHub, eventually, placed_on, upsert};
use uplink_hub::placement::key::{state_label, sync_target_key};
use uplink_hub::placement::source::Metadata;
use uplink_hub::placement::watch::{Event, WatchError};
use uplink_hub::placement::{PlacedObject, PlacementSource, SyncTargetObject};
use uplink_hub::store::ObjectKey;
use uplink_protocol::{
    AgentFrame, Change, Delta, DeltaBatch, HubFrame, ObjectRef, Rejected, SnapshotBegin,
    SnapshotChunk, SnapshotEnd,
};

const SERVED: &str = "root:org:team-a";

fn pv_ref(name: &str) -> ObjectRef {
    ObjectRef {
        group: String::new(),
        version: "v1".into(),
        resource: "persistentvolumes".into(),
        kind: "PersistentVolume".into(),
        workspace: "root".into(),
        namespace: None,
        name: name.into(),
        uid: format!("down-{name}"),
    }
}

fn pvc_ref(workspace: &str, name: &str) -> ObjectRef {
    ObjectRef {
        resource: "persistentvolumeclaims".into(),
        kind: "PersistentVolumeClaim".into(),
        workspace: workspace.into(),
        namespace: Some("default".into()),
        ..pv_ref(name)
    }
}

/// The object as the agent sends it: what KCP is to hold, without status.
fn manifest(object: &ObjectRef) -> Value {
    let mut metadata = json!({"name": object.name, "labels": {"app": "db"}});
    if let Some(namespace) = &object.namespace {
        metadata["namespace"] = json!(namespace);
    }
    json!({
        "apiVersion": object.version,
        "kind": object.kind,
        "metadata": metadata,
        "spec": {"storageClassName": "fast"},
    })
}

fn upsync(seq: u64, object: ObjectRef, phase: &str) -> Delta {
    Delta {
        seq,
        object_json: Some(manifest(&object).to_string()),
        change: Change::Upsert {
            status_json: json!({"phase": phase}).to_string(),
        },
        object,
        generation: None,
        observed_generation: None,
        observed_at_ms: 1_700_000_000_000,
    }
}

fn key(object: &ObjectRef) -> ObjectKey {
    ObjectKey::from(object)
}

fn status_written(upstream: &FakeUpstream, object: &ObjectRef, phase: &str) -> bool {
    upstream
        .patches()
        .iter()
        .any(|(k, patch)| *k == key(object) && patch["status"]["phase"] == phase)
}

/// A hub that syncs Deployments and accepts PVs and PVCs for upsync.
async fn hub() -> Result<TestHub> {
    let upsync_resources = vec![
        "persistentvolumes.v1".parse()?,
        "persistentvolumeclaims.v1".parse()?,
    ];
    TestHub::start_with(|config| {
        config.resources = vec![uplink_protocol::resource::ResourceSpec::deployments()];
        config.upsync_resources = upsync_resources;
    })
    .await
}

#[tokio::test]
async fn objects_born_in_a_cluster_land_only_where_it_serves_kcp() -> Result<()> {
    let hub = hub().await?;
    let mut agent = hub.connect(&hub.pki.client("edge-1")?).await?;
    let HubFrame::Welcome(_) = agent
        .hello_upsync(
            "edge-1",
            "s",
            &["persistentvolumes.v1", "persistentvolumeclaims.v1"],
        )
        .await?
    else {
        bail!("no Welcome");
    };

    let pv = pv_ref("data");
    let pvc = pvc_ref(SERVED, "claim");
    let unserved = pvc_ref("root:org:team-b", "claim");
    let mut without_object = upsync(4, pv_ref("bare"), "Bound");
    without_object.object_json = None;
    let mut not_upsynced = upsert(5, "web", json!({"replicas": 1}));
    let mut without_uid = upsync(6, pv_ref("nameless"), "Bound");
    without_uid.object.uid = String::new();
    not_upsynced.object_json = Some(json!({"apiVersion": "apps/v1"}).to_string());
    agent
        .send(&AgentFrame::Deltas(DeltaBatch {
            deltas: vec![
                upsync(1, pv.clone(), "Bound"),
                upsync(2, pvc.clone(), "Pending"),
                upsync(3, unserved.clone(), "Pending"),
                without_object,
                not_upsynced,
                without_uid,
            ],
        }))
        .await?;
    let HubFrame::Ack(ack) = agent.recv().await? else {
        bail!("no Ack");
    };
    assert_eq!(ack.seq, 6);
    let mut refused: Vec<(u64, String)> = ack
        .rejected
        .into_iter()
        .map(|r| (r.seq, r.reason))
        .collect();
    refused.sort();
    assert_eq!(
        refused,
        [
            (3, Rejected::NOT_PLACED.to_owned()),
            (4, Rejected::INVALID_OBJECT.to_owned()),
            (5, Rejected::RESOURCE_NOT_SYNCED.to_owned()),
            (6, Rejected::INVALID_OBJECT.to_owned()),
        ]
    );

    let upstream = hub.upstream.clone();
    eventually("the PV and the PVC created upstream", || {
        upstream.upsynced().len() == 2
    })
    .await?;
    let synctarget_key = sync_target_key("root", "edge-1");
    for object in [&pv, &pvc] {
        let Some(stored) = upstream.upsynced().get(&key(object)).cloned() else {
            bail!("{} not created", object.name);
        };
        let metadata = &stored["metadata"];
        assert_eq!(metadata["labels"][state_label(&synctarget_key)], "Upsync");
        assert_eq!(metadata["labels"]["app"], "db");
        assert_eq!(
            metadata["annotations"][format!("downstream-uid.uplink.io/{synctarget_key}")],
            object.uid.as_str()
        );
        let last_applied: Value = serde_json::from_str(
            metadata["annotations"]["uplink.io/last-applied"]
                .as_str()
                .unwrap_or_default(),
        )?;
        assert_eq!(last_applied, manifest(object));
        assert_eq!(stored["spec"]["storageClassName"], "fast");
    }
    // Nothing of the unserved workspace's, status included.
    assert!(!upstream.upsynced().contains_key(&key(&unserved)));
    eventually("the PV's and the PVC's status written", || {
        status_written(&upstream, &pv, "Bound") && status_written(&upstream, &pvc, "Pending")
    })
    .await?;
    assert!(
        !upstream
            .patches()
            .iter()
            .any(|(k, _)| k.workspace == "root:org:team-b")
    );
    let (_, metrics) = hub.get("/metrics").await?;
    assert!(
        metrics.contains("uplink_hub_upsynced_objects{cluster=\"edge-1\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("uplink_hub_upsync_writes_total{result=\"created\"} 2"),
        "{metrics}"
    );

    // Deleted in the cluster: deleted upstream.
    let mut gone = upsync(7, pvc.clone(), "Pending");
    gone.change = Change::Deleted;
    gone.object_json = None;
    agent
        .send(&AgentFrame::Deltas(DeltaBatch { deltas: vec![gone] }))
        .await?;
    let HubFrame::Ack(ack) = agent.recv().await? else {
        bail!("no Ack");
    };
    assert_eq!((ack.seq, ack.rejected.len()), (7, 0));
    eventually("the PVC deleted upstream", || {
        !upstream.upsynced().contains_key(&key(&pvc))
    })
    .await?;
    assert!(upstream.upsynced().contains_key(&key(&pv)));
    hub.stop().await
}

#[tokio::test]
async fn a_conflict_shows_in_the_api_and_a_snapshot_without_the_object_deletes_it() -> Result<()> {
    let hub = hub().await?;
    let types = ["persistentvolumes.v1", "persistentvolumeclaims.v1"];
    let mut agent = hub.connect(&hub.pki.client("edge-1")?).await?;
    agent.hello_upsync("edge-1", "s1", &types).await?;
    let pv = pv_ref("data");
    agent
        .send(&AgentFrame::Deltas(DeltaBatch {
            deltas: vec![upsync(1, pv.clone(), "Bound")],
        }))
        .await?;
    let upstream = hub.upstream.clone();
    eventually("the PV created", || {
        upstream.upsynced().contains_key(&key(&pv))
    })
    .await?;

    // A KCP user changes the storage class; so does the cluster.
    {
        let mut objects = upstream
            .upsynced
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(stored) = objects.get_mut(&key(&pv)) else {
            bail!("the PV is gone");
        };
        stored["spec"]["storageClassName"] = json!("kcp-choice");
        stored["metadata"]["resourceVersion"] = json!("kcp-edit");
    }
    let mut changed = upsync(2, pv.clone(), "Bound");
    let mut object = manifest(&pv);
    object["spec"]["storageClassName"] = json!("cluster-choice");
    changed.object_json = Some(object.to_string());
    agent
        .send(&AgentFrame::Deltas(DeltaBatch {
            deltas: vec![changed],
        }))
        .await?;
    eventually("the cluster's choice written (ThreeWayMerge)", || {
        upstream
            .upsynced()
            .get(&key(&pv))
            .is_some_and(|stored| stored["spec"]["storageClassName"] == "cluster-choice")
    })
    .await?;
    let Some(stored) = upstream.upsynced().get(&key(&pv)).cloned() else {
        bail!("the PV is gone");
    };
    let conflicts: Value = serde_json::from_str(
        stored["metadata"]["annotations"]["uplink.io/conflicts"]
            .as_str()
            .unwrap_or_default(),
    )?;
    assert_eq!(
        conflicts[0]["fields"],
        json!([{"path": "spec.storageClassName", "dropped": "kcp"}]),
        "{conflicts}"
    );
    let (status, listed) = hub.get("/api/v1/conflicts").await?;
    assert_eq!(status, 200, "{listed}");
    assert!(listed.contains("UpsyncConflict"), "{listed}");
    assert!(listed.contains("ThreeWayMerge"), "{listed}");
    let (_, metrics) = hub.get("/metrics").await?;
    assert!(
        metrics
            .contains("uplink_hub_conflicts{strategy=\"ThreeWayMerge\",type=\"UpsyncConflict\"} 1"),
        "{metrics}"
    );

    // A new session's snapshot no longer has the PV: the cluster lost it
    // while the hub was not told.
    drop(agent);
    let mut agent = hub.connect(&hub.pki.client("edge-1")?).await?;
    agent.hello_upsync("edge-1", "s2", &types).await?;
    let pvc = pvc_ref(SERVED, "claim");
    agent
        .send(&AgentFrame::SnapshotBegin(SnapshotBegin {
            objects: 1,
            shards: None,
        }))
        .await?;
    agent
        .send(&AgentFrame::SnapshotChunk(SnapshotChunk {
            deltas: vec![upsync(1, pvc.clone(), "Bound")],
        }))
        .await?;
    agent
        .send(&AgentFrame::SnapshotEnd(SnapshotEnd {
            seq: 1,
            upsync_listed: true,
        }))
        .await?;
    let HubFrame::Ack(ack) = agent.recv().await? else {
        bail!("no Ack");
    };
    assert_eq!((ack.seq, ack.rejected.len()), (1, 0));
    eventually("the PV deleted, the PVC created", || {
        let objects = upstream.upsynced();
        !objects.contains_key(&key(&pv)) && objects.contains_key(&key(&pvc))
    })
    .await?;
    hub.stop().await
}

#[tokio::test]
async fn the_status_of_kcps_own_object_of_an_upsynced_name_is_never_written() -> Result<()> {
    use uplink_hub::metrics::{upsync_write, write_result};
    let hub = hub().await?;
    let upstream = hub.upstream.clone();
    let taken = pv_ref("taken");
    let own = json!({
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": "taken", "uid": "kcp-uid", "resourceVersion": "1"},
        "spec": {"storageClassName": "kcp"},
    });
    upstream
        .upsynced
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(key(&taken), own.clone());
    let mut agent = hub.connect(&hub.pki.client("edge-1")?).await?;
    agent
        .hello_upsync("edge-1", "s", &["persistentvolumes.v1"])
        .await?;
    agent
        .send(&AgentFrame::Deltas(DeltaBatch {
            deltas: vec![upsync(1, taken.clone(), "Bound")],
        }))
        .await?;
    let HubFrame::Ack(_) = agent.recv().await? else {
        bail!("no Ack");
    };
    let metrics = hub.metrics.clone();
    eventually("both writers judged the report", || {
        metrics
            .kcp_writes
            .with_label_values(&[write_result::NOT_UPSYNCED])
            .get()
            >= 1
            && metrics
                .upsync_writes
                .with_label_values(&[upsync_write::REFUSED])
                .get()
                >= 1
    })
    .await?;
    assert!(
        !upstream.patches().iter().any(|(k, _)| *k == key(&taken)),
        "{:?}",
        upstream.patches()
    );
    assert_eq!(upstream.upsynced().get(&key(&taken)), Some(&own));
    hub.stop().await
}

/// A snapshot of `session` naming no object, that does or does not name
/// every upsynced one (`upsync_listed`); waits for its Ack.
async fn empty_snapshot(agent: &mut support::Agent, upsync_listed: bool) -> Result<()> {
    agent
        .send(&AgentFrame::SnapshotBegin(SnapshotBegin {
            objects: 0,
            shards: None,
        }))
        .await?;
    agent
        .send(&AgentFrame::SnapshotEnd(SnapshotEnd {
            seq: 0,
            upsync_listed,
        }))
        .await?;
    let HubFrame::Ack(_) = agent.recv().await? else {
        bail!("no Ack");
    };
    Ok(())
}

/// Has `agent` (whose session upsyncs PVs) upsync PV `name`, and waits
/// until it is in KCP: with one upsync write at a time, every write queued
/// before it (a snapshot's deletions) has landed by then.
async fn barrier(
    agent: &mut support::Agent,
    upstream: &FakeUpstream,
    seq: u64,
    name: &str,
) -> Result<()> {
    agent
        .send(&AgentFrame::Deltas(DeltaBatch {
            deltas: vec![upsync(seq, pv_ref(name), "Available")],
        }))
        .await?;
    let HubFrame::Ack(_) = agent.recv().await? else {
        bail!("no Ack");
    };
    eventually(&format!("PV {name} created"), || {
        upstream.upsynced().contains_key(&key(&pv_ref(name)))
    })
    .await
}

#[tokio::test]
async fn only_a_snapshot_naming_every_upsynced_object_deletes_those_it_does_not_name_of_its_types()
-> Result<()> {
    let upsync_resources = vec![
        "persistentvolumes.v1".parse()?,
        "persistentvolumeclaims.v1".parse()?,
    ];
    let hub = TestHub::start_with(|config| {
        config.resources = vec![uplink_protocol::resource::ResourceSpec::deployments()];
        config.upsync_resources = upsync_resources;
        config.upsync_write_concurrency = 1;
    })
    .await?;
    let upstream = hub.upstream.clone();
    let types = ["persistentvolumes.v1", "persistentvolumeclaims.v1"];
    let mut agent = hub.connect(&hub.pki.client("edge-1")?).await?;
    agent.hello_upsync("edge-1", "s1", &types).await?;
    let (pv, pvc) = (pv_ref("data"), pvc_ref(SERVED, "claim"));
    agent
        .send(&AgentFrame::Deltas(DeltaBatch {
            deltas: vec![
                upsync(1, pv.clone(), "Bound"),
                upsync(2, pvc.clone(), "Bound"),
            ],
        }))
        .await?;
    eventually("the PV and the PVC created", || {
        upstream.upsynced().len() == 2
    })
    .await?;
    let before = upstream.upsynced();
    let both_still_there = || {
        let now = upstream.upsynced();
        [key(&pv), key(&pvc)]
            .iter()
            .all(|k| now.contains_key(k) && now.get(k) == before.get(k))
    };

    // The agent restarts: its first snapshot names no upsynced object (its
    // upsync lists had not completed), and says so.
    drop(agent);
    let mut agent = hub.connect(&hub.pki.client("edge-1")?).await?;
    agent.hello_upsync("edge-1", "s2", &types).await?;
    empty_snapshot(&mut agent, false).await?;
    barrier(&mut agent, &upstream, 1, "marker-1").await?;
    assert!(both_still_there(), "{:?}", upstream.upsynced());

    // A session that upsyncs nothing deletes nothing, whatever it says.
    drop(agent);
    let mut agent = hub.connect(&hub.pki.client("edge-1")?).await?;
    agent.hello("edge-1", "s3", None, 0).await?;
    empty_snapshot(&mut agent, true).await?;
    let mut east = hub.connect(&hub.pki.client("east")?).await?;
    east.hello_upsync("east", "e1", &types).await?;
    barrier(&mut east, &upstream, 1, "marker-2").await?;
    assert!(both_still_there(), "{:?}", upstream.upsynced());

    // One that upsyncs PVs only, naming every one (none): its PVs go, the
    // PVC is not its snapshot's to judge.
    drop(agent);
    let mut agent = hub.connect(&hub.pki.client("edge-1")?).await?;
    agent
        .hello_upsync("edge-1", "s4", &["persistentvolumes.v1"])
        .await?;
    empty_snapshot(&mut agent, true).await?;
    eventually("edge-1's PVs deleted", || {
        let now = upstream.upsynced();
        !now.contains_key(&key(&pv)) && !now.contains_key(&key(&pv_ref("marker-1")))
    })
    .await?;
    barrier(&mut east, &upstream, 2, "marker-3").await?;
    let now = upstream.upsynced();
    assert_eq!(now.get(&key(&pvc)), before.get(&key(&pvc)), "{now:?}");
    assert!(
        now.contains_key(&key(&pv_ref("marker-2"))),
        "east's PV stays"
    );
    hub.stop().await
}

/// Placement the test changes: `edge-1`'s SyncTarget, and Deployment `web`
/// placed on it in `SERVED`/`default`, then whatever the test sends.
#[derive(Debug)]
struct ChangingPlacement {
    events: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Event<PlacedObject>>>>,
}

fn web() -> PlacedObject {
    PlacedObject {
        kind: Some("Deployment".into()),
        metadata: Metadata {
            name: "web".into(),
            namespace: Some("default".into()),
            uid: "upstream-web".into(),
            labels: [placed_on("edge-1")].into(),
            annotations: [("kcp.io/cluster".to_owned(), SERVED.to_owned())].into(),
            ..Metadata::default()
        },
        rest: serde_json::Map::new(),
    }
}

impl PlacementSource for ChangingPlacement {
    fn synctargets(
        &self,
        _workspace: &str,
    ) -> futures::stream::BoxStream<'static, Result<Event<SyncTargetObject>, WatchError>> {
        let listed = Event::Listed {
            kind: Some("SyncTarget".into()),
            objects: vec![SyncTargetObject {
                metadata: Metadata {
                    name: "edge-1".into(),
                    uid: "uid-edge-1".into(),
                    ..Metadata::default()
                },
            }],
        };
        futures::stream::once(async move { Ok(listed) })
            .chain(futures::stream::pending())
            .boxed()
    }

    fn placed(
        &self,
        _resource: &uplink_protocol::resource::ResourceSpec,
    ) -> futures::stream::BoxStream<'static, Result<Event<PlacedObject>, WatchError>> {
        let listed = Event::Listed {
            kind: Some("Deployment".into()),
            objects: vec![web()],
        };
        let events = self
            .events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let changes = futures::stream::unfold(events, |events| async move {
            let mut events = events?;
            let event = events.recv().await?;
            Some((Ok(event), Some(events)))
        });
        futures::stream::once(async move { Ok(listed) })
            .chain(changes)
            .chain(futures::stream::pending())
            .boxed()
    }
}

#[tokio::test]
async fn what_a_cluster_upsyncs_where_it_stops_serving_kcp_is_no_longer_its_to_report() -> Result<()>
{
    let (changes, events) = tokio::sync::mpsc::unbounded_channel();
    let placement = ChangingPlacement {
        events: std::sync::Mutex::new(Some(events)),
    };
    let upsync_resources = vec!["persistentvolumeclaims.v1".parse()?];
    let hub = TestHub::start_with_source(
        |config| {
            config.resources = vec![uplink_protocol::resource::ResourceSpec::deployments()];
            config.upsync_resources = upsync_resources;
        },
        std::sync::Arc::new(placement),
    )
    .await?;
    let mut agent = hub.connect(&hub.pki.client("edge-1")?).await?;
    agent
        .hello_upsync("edge-1", "s", &["persistentvolumeclaims.v1"])
        .await?;
    let pvc = pvc_ref(SERVED, "claim");
    agent
        .send(&AgentFrame::Deltas(DeltaBatch {
            deltas: vec![upsync(1, pvc.clone(), "Bound")],
        }))
        .await?;
    let HubFrame::Ack(ack) = agent.recv().await? else {
        bail!("no Ack");
    };
    assert_eq!((ack.seq, ack.rejected.len()), (1, 0));
    let store = hub.store.clone();
    assert!(store.cluster_keys("edge-1").contains(&key(&pvc)));

    // web leaves the namespace: the cluster no longer serves it.
    changes.send(Event::Deleted(web()))?;
    eventually("the PVC's entry dropped", || {
        !store.cluster_keys("edge-1").contains(&key(&pvc))
    })
    .await?;
    agent
        .send(&AgentFrame::Deltas(DeltaBatch {
            deltas: vec![upsync(2, pvc.clone(), "Released")],
        }))
        .await?;
    let HubFrame::Ack(ack) = agent.recv().await? else {
        bail!("no Ack");
    };
    let refused: Vec<(u64, String)> = ack
        .rejected
        .into_iter()
        .map(|r| (r.seq, r.reason))
        .collect();
    assert_eq!(refused, [(2, Rejected::NOT_PLACED.to_owned())]);
    hub.stop().await
}

/// Upsynced objects buffered in a snapshot count against the cluster's
/// memory budget with their whole state, not only their status: a cluster
/// cannot make the hub hold a snapshot of huge objects.
#[tokio::test]
async fn a_snapshot_of_whole_objects_is_held_to_the_cluster_budget() -> Result<()> {
    let upsync_resources = vec!["persistentvolumes.v1".parse()?];
    let hub = TestHub::start_with(|config| {
        config.resources = vec![uplink_protocol::resource::ResourceSpec::deployments()];
        config.upsync_resources = upsync_resources;
        config.memory_budget = uplink_hub::budget::MemoryBudget {
            cluster_bytes: 256 * 1024,
            total_bytes: 1024 * 1024,
        };
    })
    .await?;
    let mut agent = hub.connect(&hub.pki.client("edge-1")?).await?;
    let HubFrame::Welcome(_) = agent
        .hello_upsync("edge-1", "s", &["persistentvolumes.v1"])
        .await?
    else {
        bail!("no Welcome");
    };
    // Three volumes of ~60 KiB each: their statuses are tiny, their whole
    // state (about twice its text once parsed) is not.
    let big = |seq: u64, name: &str| {
        let object = pv_ref(name);
        let mut whole = manifest(&object);
        whole["metadata"]["annotations"] = json!({"blob": "x".repeat(60 * 1024)});
        Delta {
            object_json: Some(whole.to_string()),
            ..upsync(seq, object, "Bound")
        }
    };
    agent
        .send(&AgentFrame::SnapshotBegin(SnapshotBegin {
            objects: 3,
            shards: None,
        }))
        .await?;
    agent
        .send(&AgentFrame::SnapshotChunk(SnapshotChunk {
            deltas: vec![big(1, "a"), big(2, "b"), big(3, "c")],
        }))
        .await?;
    agent
        .send(&AgentFrame::SnapshotEnd(SnapshotEnd {
            seq: 3,
            upsync_listed: true,
        }))
        .await?;
    let refused = loop {
        match agent.recv().await? {
            HubFrame::Ack(ack) if ack.seq >= 3 => {
                break ack
                    .rejected
                    .into_iter()
                    .map(|r| r.reason)
                    .collect::<Vec<_>>();
            }
            HubFrame::Error(error) => bail!("refused: {error:?}"),
            _ => {}
        }
    };
    assert_eq!(refused, vec![Rejected::CLUSTER_MEMORY_BUDGET.to_owned()]);
    hub.stop().await
}
