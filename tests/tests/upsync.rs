//! Upsync: objects born in a physical cluster (here PersistentVolumes a
//! provisioner would create, labelled `state.workload.kcp.io/<key>:
//! Upsync`) are kept whole in KCP, in the workspace of the cluster's
//! SyncTarget, with the downstream uid in an annotation; changes and the
//! deletion follow; a delete-and-recreate downstream is a new object in
//! KCP. A change made in KCP meanwhile is a conflict, settled by the type's
//! strategy and recorded.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result, ensure};
use k8s_openapi::api::core::v1::PersistentVolume;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use uplink_tests::fleet::{Fleet, SCENARIO_TIMEOUT, STATUS_DEADLINE, bounded, eventually};

const TEAM_A: &str = "root:org:team-a";
const VOLUMES: &str = "persistentvolumes.v1";

/// The annotation that names a cluster's downstream uid upstream.
fn uid_annotation(fleet: &Fleet, cluster: &str) -> String {
    let label = fleet.placement_label(cluster);
    let key = label.rsplit('/').next().unwrap_or_default();
    format!("downstream-uid.uplink.io/{key}")
}

fn volume(fleet: &Fleet, cluster: &str, name: &str, labels: Value) -> Result<PersistentVolume> {
    let mut labels = labels;
    labels[fleet.placement_label(cluster)] = json!("Upsync");
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": name, "labels": labels},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                 "hostPath": {"path": format!("/data/{name}")}},
    }))?)
}

async fn downstream(fleet: &Fleet, cluster: &str) -> Result<Api<PersistentVolume>> {
    Ok(Api::all(fleet.cluster(cluster).await?))
}

async fn upstream(fleet: &Fleet) -> Result<Api<PersistentVolume>> {
    Ok(Api::all(fleet.kcp(fleet.synctarget_workspace()).await?))
}

/// KCP's copy of `name`, once `check` holds for it.
async fn kcp_volume(
    fleet: &Fleet,
    name: &str,
    what: &str,
    check: impl Fn(&PersistentVolume) -> Result<()>,
) -> Result<PersistentVolume> {
    let api = upstream(fleet).await?;
    eventually(STATUS_DEADLINE, what, async || {
        let volume = api
            .get_opt(name)
            .await?
            .with_context(|| format!("{name} is not in KCP"))?;
        check(&volume)?;
        Ok(volume)
    })
    .await
}

fn storage(volume: &PersistentVolume) -> Option<String> {
    volume
        .spec
        .as_ref()?
        .capacity
        .as_ref()?
        .get("storage")
        .map(|q| q.0.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_born_in_a_cluster_is_kept_in_kcp() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, lifecycle()).await
}

/// Created, changed, deleted, and deleted and created again downstream.
async fn lifecycle() -> Result<()> {
    let fleet = Fleet::builder()
        .clusters(["a"])
        .workspaces([TEAM_A])
        .upsync([VOLUMES])
        .start()
        .await?;
    let volumes = downstream(&fleet, "a").await?;
    let annotation = uid_annotation(&fleet, "a");
    let created = volumes
        .create(
            &PostParams::default(),
            &volume(&fleet, "a", "pv-1", json!({}))?,
        )
        .await?;
    let downstream_uid = created.metadata.uid.clone().unwrap_or_default();
    let first = kcp_volume(&fleet, "pv-1", "pv-1 in KCP with its downstream uid", |v| {
        let annotations = v.metadata.annotations.clone().unwrap_or_default();
        ensure!(
            annotations.get(&annotation) == Some(&downstream_uid),
            "annotations {annotations:?}"
        );
        ensure!(storage(v).as_deref() == Some("1Gi"), "spec {:?}", v.spec);
        let labels = v.metadata.labels.clone().unwrap_or_default();
        ensure!(
            labels.get(&fleet.placement_label("a")).map(String::as_str) == Some("Upsync"),
            "labels {labels:?}"
        );
        Ok(())
    })
    .await?;
    let first_uid = first.metadata.uid.clone().unwrap_or_default();
    ensure!(first_uid != downstream_uid, "KCP's object has its own uid");
    // Its status comes up too, as for any object.
    kcp_volume(&fleet, "pv-1", "pv-1's status in KCP", |v| {
        let phase = v.status.as_ref().and_then(|s| s.phase.clone());
        ensure!(phase.as_deref() == Some("Pending"), "status {:?}", v.status);
        Ok(())
    })
    .await?;

    // A change follows.
    volumes
        .patch(
            "pv-1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"capacity": {"storage": "2Gi"}}})),
        )
        .await?;
    kcp_volume(&fleet, "pv-1", "pv-1 grown to 2Gi in KCP", |v| {
        ensure!(storage(v).as_deref() == Some("2Gi"), "spec {:?}", v.spec);
        Ok(())
    })
    .await?;

    // Deleted and created again with the same name: a new object in KCP,
    // never the old one back.
    volumes.delete("pv-1", &DeleteParams::default()).await?;
    let again = volumes
        .create(
            &PostParams::default(),
            &volume(&fleet, "a", "pv-1", json!({}))?,
        )
        .await?;
    let again_uid = again.metadata.uid.clone().unwrap_or_default();
    let second = kcp_volume(&fleet, "pv-1", "the new pv-1 in KCP", |v| {
        let annotations = v.metadata.annotations.clone().unwrap_or_default();
        ensure!(
            annotations.get(&annotation) == Some(&again_uid),
            "annotations {annotations:?}"
        );
        Ok(())
    })
    .await?;
    ensure!(
        second.metadata.uid.as_deref() != Some(first_uid.as_str()),
        "the recreated volume is a new object in KCP"
    );

    // Deleted: gone from KCP.
    volumes.delete("pv-1", &DeleteParams::default()).await?;
    let api = upstream(&fleet).await?;
    eventually(STATUS_DEADLINE, "pv-1 gone from KCP", async || {
        let left = api.get_opt("pv-1").await?;
        ensure!(
            left.is_none(),
            "still there: {:?}",
            left.map(|v| v.metadata)
        );
        Ok(())
    })
    .await?;
    let hub = fleet.hub_metrics().await?;
    ensure!(
        hub.value("uplink_hub_upsynced_objects{cluster=\"a\"}") == Some(0.0),
        "{hub}"
    );
    fleet.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_conflict_strategy_ends_where_it_promises() -> Result<()> {
    bounded(SCENARIO_TIMEOUT * 2, strategies()).await
}

/// From labels {tier: 1, team: 1}, KCP sets tier=2, team=5 and the
/// cluster then sets team=3: ClientWins gives {1, 3}, ServerWins {2, 5},
/// ThreeWayMerge {2, 3}; each records the conflict.
async fn strategies() -> Result<()> {
    for (strategy, tier, team) in [
        ("ClientWins", "1", "3"),
        ("ServerWins", "2", "5"),
        ("ThreeWayMerge", "2", "3"),
    ] {
        conflict(strategy, tier, team)
            .await
            .with_context(|| format!("strategy {strategy}"))?;
    }
    Ok(())
}

async fn conflict(strategy: &str, tier: &str, team: &str) -> Result<()> {
    // As an operator writes it in the file `uplink-hub --config` reads.
    let policy = uplink_hub::aggregate::MergePolicy::parse(&format!(
        "resources:\n  - resource: persistentvolumes\n    upsyncConflicts: {strategy}\n"
    ))?;
    let fleet = Fleet::builder()
        .clusters(["a"])
        .workspaces([TEAM_A])
        .upsync([VOLUMES])
        .merge_policy(policy)
        .start()
        .await?;
    let volumes = downstream(&fleet, "a").await?;
    volumes
        .create(
            &PostParams::default(),
            &volume(&fleet, "a", "pv-c", json!({"tier": "1", "team": "1"}))?,
        )
        .await?;
    kcp_volume(&fleet, "pv-c", "pv-c in KCP", |_| Ok(())).await?;
    upstream(&fleet)
        .await?
        .patch(
            "pv-c",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"tier": "2", "team": "5"}}})),
        )
        .await?;
    volumes
        .patch(
            "pv-c",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"team": "3"}}})),
        )
        .await?;
    let want = BTreeMap::from([("tier", tier), ("team", team)]);
    kcp_volume(
        &fleet,
        "pv-c",
        &format!("{strategy}'s labels and the conflict recorded"),
        |v| {
            let labels = v.metadata.labels.clone().unwrap_or_default();
            let got: BTreeMap<&str, &str> = ["tier", "team"]
                .into_iter()
                .filter_map(|k| Some((k, labels.get(k)?.as_str())))
                .collect();
            ensure!(got == want, "labels {labels:?}");
            let annotations = v.metadata.annotations.clone().unwrap_or_default();
            let recorded = annotations
                .get("uplink.io/conflicts")
                .cloned()
                .unwrap_or_default();
            ensure!(
                recorded.contains("team"),
                "conflicts annotation {recorded:?}"
            );
            Ok(())
        },
    )
    .await?;
    // The ledger is told after KCP's write returns, so poll; and a later
    // report of the same object with nothing dropped ends the conflict, so
    // it may already be in the history.
    eventually(
        STATUS_DEADLINE,
        "the conflict in the hub's ledger",
        async || {
            let present = fleet.hub_api("/api/v1/conflicts").await?;
            let ended = fleet.hub_api("/api/v1/conflicts/history").await?;
            ensure!(
                present.to_string().contains("pv-c") || ended.to_string().contains("pv-c"),
                "present {present}, ended {ended}"
            );
            Ok(())
        },
    )
    .await?;
    fleet.shutdown().await
}
