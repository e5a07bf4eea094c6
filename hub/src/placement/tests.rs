use super::*;
use crate::store::KeyParts;

const WS: &str = "root:org:team-a";

fn view() -> PlacementView {
    PlacementView::new(
        vec![
            ResourceSpec::deployments(),
            "widgets.v1alpha1.example.com"
                .parse()
                .unwrap_or_else(|e| panic!("{e}")),
        ],
        vec![
            "persistentvolumes.v1"
                .parse()
                .unwrap_or_else(|e| panic!("{e}")),
            "persistentvolumeclaims.v1"
                .parse()
                .unwrap_or_else(|e| panic!("{e}")),
        ],
    )
}

fn target(cluster: &str) -> SyncTargetRef {
    SyncTargetRef {
        workspace: "root".into(),
        name: cluster.into(),
        uid: format!("uid-{cluster}"),
        key: key::sync_target_key("root", cluster),
    }
}

fn deployment(name: &str) -> ObjectKey {
    ObjectKey::new(KeyParts {
        workspace: WS.into(),
        group: "apps".into(),
        version: "v1".into(),
        resource: "deployments".into(),
        kind: "Deployment".into(),
        namespace: Some("shop".into()),
        name: name.into(),
    })
}

fn placed(name: &str, uid: &str) -> PlacedAddress {
    PlacedAddress {
        address: Address::of(&deployment(name)),
        object: PlacedObject {
            kind: None,
            metadata: source::Metadata {
                name: name.into(),
                namespace: Some("shop".into()),
                uid: uid.into(),
                ..source::Metadata::default()
            },
            rest: serde_json::Map::new(),
        },
    }
}

/// A view where `a` has a SyncTarget and a listed placement of `web` (and
/// an empty list of widgets), and `b` has a SyncTarget but no watch yet.
fn listed() -> PlacementView {
    let mut view = view();
    view.set_synctargets(HashMap::from([
        ("a".to_owned(), target("a")),
        ("b".to_owned(), target("b")),
    ]));
    let key_a = target("a").key;
    view.start_cluster("a", &key_a);
    view.apply(
        "a",
        &key_a,
        0,
        PlacementChange::Listed {
            kind: Some("Deployment".into()),
            objects: vec![placed("web", "u1")],
        },
        100,
    );
    view.apply(
        "a",
        &key_a,
        1,
        PlacementChange::Listed {
            kind: Some("Widget".into()),
            objects: vec![],
        },
        100,
    );
    view
}

#[test]
fn nothing_is_taken_before_the_synctargets_are_listed() {
    let view = view();
    assert_eq!(view.verdict("a", &deployment("web")), Verdict::Hold);
}

#[test]
fn a_placed_object_is_taken_from_its_cluster_only() {
    let view = listed();
    assert!(view.complete_since("a").is_some());
    assert_eq!(view.verdict("a", &deployment("web")), Verdict::Accept);
    // b has a SyncTarget but its placement is not listed yet: wait.
    assert_eq!(view.verdict("b", &deployment("web")), Verdict::Hold);
    // c has no SyncTarget (yet): held, refused once the hold runs out.
    assert_eq!(view.verdict("c", &deployment("web")), Verdict::Hold);
    // Not placed (yet): held, the label may be on its way.
    assert_eq!(view.verdict("a", &deployment("api")), Verdict::Hold);
    let other_workspace = ObjectKey::new(KeyParts {
        workspace: "root:org:team-b".into(),
        ..deployment("web").parts().clone()
    });
    assert_eq!(view.verdict("a", &other_workspace), Verdict::Hold);
}

#[test]
fn only_an_accepted_object_is_told_with_its_upstream_uid() {
    let view = listed();
    let uid = |cluster: &str, key: &ObjectKey| {
        view.judge(cluster)
            .placed(key)
            .map(|placed| placed.uid.clone())
    };
    assert_eq!(uid("a", &deployment("web")), Some("u1".to_owned()));
    // Held (not placed, not listed, no SyncTarget) or refused: nothing.
    assert_eq!(uid("a", &deployment("api")), None);
    assert_eq!(uid("b", &deployment("web")), None);
    assert_eq!(uid("c", &deployment("web")), None);
    let as_job = ObjectKey::new(KeyParts {
        kind: "Job".into(),
        ..deployment("web").parts().clone()
    });
    assert_eq!(uid("a", &as_job), None);
}

#[test]
fn another_kind_or_version_of_a_placed_object_is_refused() {
    let view = listed();
    let as_job = ObjectKey::new(KeyParts {
        kind: "Job".into(),
        ..deployment("web").parts().clone()
    });
    assert_eq!(
        view.verdict("a", &as_job),
        Verdict::Reject(Rejected::KIND_MISMATCH)
    );
    let old_version = ObjectKey::new(KeyParts {
        version: "v1beta1".into(),
        ..deployment("web").parts().clone()
    });
    assert_eq!(
        view.verdict("a", &old_version),
        Verdict::Reject(Rejected::KIND_MISMATCH)
    );
}

#[test]
fn synctargets_and_unsynced_types_are_refused() {
    let view = listed();
    let synctarget = ObjectKey::new(KeyParts {
        group: SYNCTARGET_GROUP.into(),
        version: "v1alpha1".into(),
        resource: SYNCTARGET_RESOURCE.into(),
        kind: "SyncTarget".into(),
        workspace: "root".into(),
        namespace: None,
        name: "b".into(),
    });
    assert_eq!(
        view.verdict("a", &synctarget),
        Verdict::Reject(Rejected::RESERVED_RESOURCE)
    );
    let secret = ObjectKey::new(KeyParts {
        group: String::new(),
        resource: "secrets".into(),
        kind: "Secret".into(),
        ..deployment("db").parts().clone()
    });
    assert_eq!(
        view.verdict("a", &secret),
        Verdict::Reject(Rejected::RESOURCE_NOT_SYNCED)
    );
}

#[test]
fn unplacing_and_relisting_name_the_objects_that_left() {
    let mut view = listed();
    let key_a = target("a").key;
    let applied = view.apply(
        "a",
        &key_a,
        0,
        PlacementChange::Placed(Box::new(placed("api", "u2"))),
        100,
    );
    assert!(applied.is_some_and(|a| a.unplaced.is_empty()));
    assert_eq!(view.verdict("a", &deployment("api")), Verdict::Accept);

    let applied = view.apply(
        "a",
        &key_a,
        0,
        PlacementChange::Unplaced(Address::of(&deployment("web"))),
        100,
    );
    assert_eq!(
        applied.map(|a| a.unplaced),
        Some(vec![deployment("web")]),
        "the full key, with the placed version and kind"
    );
    assert_eq!(view.verdict("a", &deployment("web")), Verdict::Hold);

    // A relist (after 410 Gone) replaces the type's placement.
    let applied = view.apply(
        "a",
        &key_a,
        0,
        PlacementChange::Listed {
            kind: Some("Deployment".into()),
            objects: vec![placed("web", "u1")],
        },
        100,
    );
    assert_eq!(applied.map(|a| a.unplaced), Some(vec![deployment("api")]));
    assert_eq!(view.objects("a"), 1);
}

#[test]
fn an_object_created_again_under_the_same_name_is_a_new_object() {
    let mut view = listed();
    let key_a = target("a").key;
    let applied = view.apply(
        "a",
        &key_a,
        0,
        PlacementChange::Placed(Box::new(placed("web", "u9"))),
        100,
    );
    assert_eq!(applied.map(|a| a.unplaced), Some(vec![deployment("web")]));
    assert_eq!(view.verdict("a", &deployment("web")), Verdict::Accept);
}

#[test]
fn events_of_a_stopped_watch_change_nothing() {
    let mut view = listed();
    let stale = key::sync_target_key("root", "a-before-rename");
    assert!(
        view.apply(
            "a",
            &stale,
            0,
            PlacementChange::Unplaced(Address::of(&deployment("web"))),
            100
        )
        .is_none()
    );
    assert_eq!(view.verdict("a", &deployment("web")), Verdict::Accept);
}

#[test]
fn a_cluster_whose_synctarget_goes_loses_its_placement() {
    let mut view = listed();
    assert_eq!(view.remove_synctarget("a"), vec!["a".to_owned()]);
    assert_eq!(view.drop_cluster("a"), vec![deployment("web")]);
    assert_eq!(view.verdict("a", &deployment("web")), Verdict::Hold);
    assert!(view.put_synctarget(target("a")).is_empty());
}

#[test]
fn placement_per_cluster_is_bounded() {
    let mut view = listed();
    let key_a = target("a").key;
    let applied = view.apply(
        "a",
        &key_a,
        0,
        PlacementChange::Placed(Box::new(placed("api", "u2"))),
        1,
    );
    assert!(applied.is_some_and(|a| a.overflow));
    assert_eq!(view.objects("a"), 1);
    assert_eq!(view.verdict("a", &deployment("api")), Verdict::Hold);
}

fn upsynced(workspace: &str, resource: &str, namespace: Option<&str>) -> ObjectKey {
    let kind = if resource == "persistentvolumes" {
        "PersistentVolume"
    } else {
        "PersistentVolumeClaim"
    };
    ObjectKey::new(KeyParts {
        workspace: workspace.into(),
        group: String::new(),
        version: "v1".into(),
        resource: resource.into(),
        kind: kind.into(),
        namespace: namespace.map(str::to_owned),
        name: "data".into(),
    })
}

#[test]
fn a_cluster_upsyncs_only_where_it_serves_kcp() {
    let view = listed();
    let pv = |workspace: &str| upsynced(workspace, "persistentvolumes", None);
    let pvc = |workspace: &str, ns: &str| upsynced(workspace, "persistentvolumeclaims", Some(ns));
    // Cluster-scoped: into its SyncTarget's workspace only.
    assert_eq!(view.verdict("a", &pv("root")), Verdict::Accept);
    assert_eq!(
        view.verdict("a", &pv(WS)),
        Verdict::Reject(Rejected::NOT_PLACED)
    );
    // Namespaced: where an object placed on it lives (web, in shop).
    assert_eq!(view.verdict("a", &pvc(WS, "shop")), Verdict::Accept);
    assert_eq!(
        view.verdict("a", &pvc(WS, "other")),
        Verdict::Reject(Rejected::NOT_PLACED)
    );
    assert_eq!(
        view.verdict("a", &pvc("root:org:team-b", "shop")),
        Verdict::Reject(Rejected::NOT_PLACED)
    );
    // Not listed yet, or no SyncTarget (yet): held.
    assert_eq!(view.verdict("b", &pvc(WS, "shop")), Verdict::Hold);
    assert_eq!(view.verdict("c", &pv("root")), Verdict::Hold);
    // Another version of the type is refused like any report's.
    let v2 = ObjectKey::new(KeyParts {
        version: "v2".into(),
        ..pv("root").parts().clone()
    });
    assert_eq!(
        view.verdict("a", &v2),
        Verdict::Reject(Rejected::KIND_MISMATCH)
    );
}

#[test]
fn a_namespace_stops_being_served_with_its_last_placed_object() {
    let mut view = listed();
    let key_a = target("a").key;
    let pvc = upsynced(WS, "persistentvolumeclaims", Some("shop"));
    assert_eq!(view.verdict("a", &pvc), Verdict::Accept);
    let applied = view.apply(
        "a",
        &key_a,
        0,
        PlacementChange::Unplaced(Address::of(&deployment("web"))),
        100,
    );
    assert_eq!(
        applied.map(|a| a.unserved),
        Some(vec![(WS.to_owned(), "shop".to_owned())])
    );
    assert_eq!(
        view.verdict("a", &pvc),
        Verdict::Reject(Rejected::NOT_PLACED)
    );
}
