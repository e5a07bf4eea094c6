//! One synced type's placement on every SyncTarget at once: what the hub's
//! single watch of that type last saw of the objects kcp placed somewhere,
//! indexed by SyncTarget key, so that one cluster's share is found without
//! a scan and one event reaches only the clusters it concerns.
//!
//! Why one watch per type rather than one per cluster: a label selector
//! cannot ask for "any `state.workload.kcp.io/` key" (nor OR several keys),
//! so a watch per cluster would be one more long-lived connection to KCP
//! per cluster and type; at 10,000 clusters that alone exhausts the hub's
//! file descriptors, and a restarted hub would list every type 10,000
//! times. The shared watch carries every object of the type instead;
//! objects placed nowhere are dropped as they arrive.

use std::collections::{HashMap, HashSet};

use super::address::Address;
use super::key::{STATE_LABEL_PREFIX, STATE_SYNC};
use super::source::PlacedObject;

/// The objects of one type that are placed on at least one SyncTarget.
///
/// Each is kept [slimmed](PlacedObject::slim) and as JSON text: a parsed
/// object costs several times its text, and it is read back only when a
/// cluster starts following or the type is listed again.
#[derive(Debug, Default)]
pub(crate) struct PlacedIndex {
    /// Whether the watch listed the type at least once.
    listed: bool,
    /// The kind KCP names the type by, once a list named it.
    kind: Option<String>,
    objects: HashMap<Address, Kept>,
    /// The addresses placed on each SyncTarget key.
    by_key: HashMap<String, HashSet<Address>>,
}

/// One placed object as the index keeps it.
#[derive(Debug)]
struct Kept {
    /// The SyncTarget keys it is placed on.
    keys: Vec<String>,
    /// The slimmed object, as JSON.
    json: Box<str>,
    /// [`PlacedObject::fingerprint`] of the version `json` holds.
    fingerprint: u64,
    /// The latest resourceVersion, newer than `json`'s after a
    /// [refresh](PlacedIndex::refresh).
    resource_version: Option<String>,
}

impl PlacedIndex {
    pub(crate) fn listed(&self) -> bool {
        self.listed
    }

    pub(crate) fn kind(&self) -> Option<&str> {
        self.kind.as_deref()
    }

    /// How many objects are placed somewhere.
    pub(crate) fn len(&self) -> usize {
        self.objects.len()
    }

    /// Replaces everything with a fresh list (`kind`: the list's, if it
    /// named one). Every cluster's share must be listed again after it.
    pub(crate) fn replace(
        &mut self,
        kind: Option<String>,
        objects: impl IntoIterator<Item = (Address, PlacedObject)>,
    ) {
        if kind.is_some() {
            self.kind = kind;
        }
        self.objects.clear();
        self.by_key.clear();
        for (address, object) in objects {
            self.put(address, &object);
        }
        self.listed = true;
    }

    /// Takes `object`'s resourceVersion when the index keeps it with the
    /// same [fingerprint](PlacedObject::fingerprint): nothing a cluster's
    /// placement reads changed (a status write, most often), so nothing
    /// else need be done with it. `false`: [`put`](Self::put) it.
    pub(crate) fn refresh(&mut self, address: &Address, object: &PlacedObject) -> bool {
        let Some(kept) = self.objects.get_mut(address) else {
            return false;
        };
        if kept.fingerprint != object.fingerprint() {
            return false;
        }
        kept.resource_version
            .clone_from(&object.metadata.resource_version);
        true
    }

    /// Keeps `object` (a new version, or a new object), or drops it when it
    /// is placed nowhere. Returns the SyncTarget keys whose share may have
    /// changed: those it was placed on before and those it is now.
    pub(crate) fn put(&mut self, address: Address, object: &PlacedObject) -> Vec<String> {
        let now: Vec<String> = sync_keys(object).map(str::to_owned).collect();
        let before = if now.is_empty() {
            self.objects.remove(&address)
        } else {
            let mut slim = object.clone();
            slim.slim();
            // A value read from JSON always writes back as JSON.
            let json = serde_json::to_string(&slim).unwrap_or_default().into();
            // (An empty text would fail to read back, loudly: `placed_on`.)
            let kept = Kept {
                keys: now.clone(),
                json,
                fingerprint: object.fingerprint(),
                resource_version: object.metadata.resource_version.clone(),
            };
            self.objects.insert(address.clone(), kept)
        };
        for key in &now {
            self.by_key
                .entry(key.clone())
                .or_default()
                .insert(address.clone());
        }
        let mut keys = now;
        for key in before.map(|b| b.keys).unwrap_or_default() {
            if !keys.contains(&key) {
                self.unindex(&key, &address);
                keys.push(key);
            }
        }
        keys
    }

    /// Forgets a deleted object (`object`: its last state, as the delete
    /// event carried it). Returns the keys it was placed on.
    pub(crate) fn remove(&mut self, address: &Address, object: &PlacedObject) -> Vec<String> {
        let mut keys: Vec<String> = sync_keys(object).map(str::to_owned).collect();
        for key in self
            .objects
            .remove(address)
            .map(|b| b.keys)
            .unwrap_or_default()
        {
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        for key in &keys {
            self.unindex(key, address);
        }
        keys
    }

    /// Every object placed on the SyncTarget with `key`, read back.
    pub(crate) fn placed_on<'a>(
        &'a self,
        key: &str,
    ) -> impl Iterator<Item = (&'a Address, PlacedObject)> + 'a {
        self.by_key
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|address| {
                let (address, kept) = self.objects.get_key_value(address)?;
                // Written by `put` from a `PlacedObject`, so it reads back;
                // were it ever not to, the object would look unplaced:
                // said, not silent.
                match serde_json::from_str::<PlacedObject>(&kept.json) {
                    Ok(mut object) => {
                        object
                            .metadata
                            .resource_version
                            .clone_from(&kept.resource_version);
                        Some((address, object))
                    }
                    Err(error) => {
                        tracing::error!(?address, %error, "a placed object kept by the hub does not read back; it is left out of the cluster's placement");
                        None
                    }
                }
            })
    }

    fn unindex(&mut self, key: &str, address: &Address) {
        if let Some(addresses) = self.by_key.get_mut(key) {
            addresses.remove(address);
            if addresses.is_empty() {
                self.by_key.remove(key);
            }
        }
    }
}

/// The SyncTarget keys `object` is placed on: its placement labels whose
/// value is `Sync`.
pub(crate) fn sync_keys(object: &PlacedObject) -> impl Iterator<Item = &str> {
    object
        .metadata
        .labels
        .iter()
        .filter(|(_, value)| *value == STATE_SYNC)
        .filter_map(|(label, _)| label.strip_prefix(STATE_LABEL_PREFIX))
        .filter(|key| !key.is_empty())
}

/// Whether `object` is placed on the SyncTarget with `key`.
pub(crate) fn is_placed_on(object: &PlacedObject, key: &str) -> bool {
    sync_keys(object).any(|k| k == key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::key::state_label;
    use crate::placement::source::Metadata;

    fn address(name: &str) -> Address {
        Address {
            group: "apps".into(),
            resource: "deployments".into(),
            workspace: "root:org:team-a".into(),
            namespace: Some("shop".into()),
            name: name.into(),
        }
    }

    /// `name` carrying a placement label with `value` for each of `keys`.
    fn object(name: &str, labels: &[(&str, &str)]) -> PlacedObject {
        PlacedObject {
            metadata: Metadata {
                name: name.into(),
                labels: labels
                    .iter()
                    .map(|(key, value)| (state_label(key), (*value).to_owned()))
                    .collect(),
                ..Metadata::default()
            },
            ..PlacedObject::default()
        }
    }

    fn names<'a>(index: &'a PlacedIndex, key: &str) -> Vec<&'a str> {
        let mut names: Vec<&str> = index.placed_on(key).map(|(a, _)| a.name.as_str()).collect();
        names.sort_unstable();
        names
    }

    #[test]
    fn a_list_is_shared_out_by_key_and_objects_placed_nowhere_are_dropped() {
        let mut index = PlacedIndex::default();
        assert!(!index.listed());
        index.replace(
            Some("Deployment".into()),
            [
                (
                    address("web"),
                    object("web", &[("k1", "Sync"), ("k2", "Sync")]),
                ),
                (address("api"), object("api", &[("k2", "Sync")])),
                (address("db"), object("db", &[("k1", "Upsync")])),
                (address("cron"), object("cron", &[])),
            ],
        );
        assert!(index.listed());
        assert_eq!(index.kind(), Some("Deployment"));
        assert_eq!(names(&index, "k1"), ["web"]);
        assert_eq!(names(&index, "k2"), ["api", "web"]);
        assert_eq!(index.len(), 2, "db and cron are placed nowhere");
        // A relist replaces everything, and keeps the kind when it names none.
        index.replace(None, [(address("api"), object("api", &[("k1", "Sync")]))]);
        assert_eq!(index.kind(), Some("Deployment"));
        assert_eq!(names(&index, "k1"), ["api"]);
        assert!(names(&index, "k2").is_empty());
    }

    #[test]
    fn a_change_names_the_keys_it_was_and_is_placed_on() {
        let mut index = PlacedIndex::default();
        index.replace(None, []);
        let mut keys = index.put(address("web"), &object("web", &[("k1", "Sync")]));
        assert_eq!(keys, ["k1"]);
        // Moved from k1 to k2: both clusters must hear of it.
        keys = index.put(address("web"), &object("web", &[("k2", "Sync")]));
        keys.sort_unstable();
        assert_eq!(keys, ["k1", "k2"]);
        assert!(names(&index, "k1").is_empty());
        assert_eq!(names(&index, "k2"), ["web"]);
        // No longer Sync anywhere: forgotten, and k2 hears of it.
        keys = index.put(address("web"), &object("web", &[("k2", "Upsync")]));
        assert_eq!(keys, ["k2"]);
        assert_eq!(index.len(), 0);
        // Never placed: nothing to tell anyone.
        assert!(index.put(address("api"), &object("api", &[])).is_empty());
    }

    #[test]
    fn a_new_resource_version_alone_is_taken_without_a_put() {
        let mut index = PlacedIndex::default();
        let mut web = object("web", &[("k1", "Sync")]);
        web.metadata.resource_version = Some("10".into());
        web.rest
            .insert("spec".into(), serde_json::json!({"replicas": 3}));
        assert!(!index.refresh(&address("web"), &web), "not kept yet");
        index.put(address("web"), &web);
        // A status write: only the resourceVersion moves.
        web.metadata.resource_version = Some("11".into());
        assert!(index.refresh(&address("web"), &web));
        let kept: Vec<PlacedObject> = index.placed_on("k1").map(|(_, o)| o).collect();
        assert_eq!(
            kept.first()
                .and_then(|o| o.metadata.resource_version.as_deref()),
            Some("11"),
            "a cluster that follows later starts from the latest version"
        );
        // A spec change is a change.
        web.metadata.resource_version = Some("12".into());
        web.rest
            .insert("spec".into(), serde_json::json!({"replicas": 4}));
        assert!(!index.refresh(&address("web"), &web));
        assert!(!index.refresh(&address("api"), &web), "another address");
    }

    #[test]
    fn a_kept_object_goes_down_the_same_without_its_status_and_managed_fields() {
        let mut web = object("web", &[("k1", "Sync")]);
        web.metadata.other.insert(
            "managedFields".into(),
            serde_json::json!([{"manager": "kcp"}]),
        );
        // A number whose text serde_json's fast parser reads back one unit
        // in the last place off, unless `float_roundtrip` is on.
        let spec = r#"{"replicas": 3, "ratio": 8.741188637605988e-08}"#;
        web.rest.insert(
            "spec".into(),
            serde_json::from_str(spec).unwrap_or_default(),
        );
        web.rest
            .insert("status".into(), serde_json::json!({"readyReplicas": 2}));
        let manifest = web.downward_manifest("apps/v1", "Deployment");
        let mut index = PlacedIndex::default();
        index.put(address("web"), &web);
        let kept: Vec<PlacedObject> = index.placed_on("k1").map(|(_, o)| o).collect();
        let [kept] = kept.as_slice() else {
            panic!("web alone is placed on k1, got {kept:?}");
        };
        assert_eq!(kept.metadata, {
            let mut metadata = web.metadata.clone();
            metadata.other.clear();
            metadata
        });
        assert!(!kept.rest.contains_key("status"));
        assert!(!kept.metadata.other.contains_key("managedFields"));
        assert_eq!(kept.rest["spec"]["replicas"], 3);
        assert_eq!(kept.downward_manifest("apps/v1", "Deployment"), manifest);
    }

    #[test]
    fn a_list_keeps_only_objects_placed_somewhere() {
        use crate::placement::watch::Watched;
        assert!(object("web", &[("k1", "Sync")]).keep_listed());
        assert!(object("web", &[("k1", "Upsync"), ("k2", "Sync")]).keep_listed());
        assert!(!object("web", &[("k1", "Upsync")]).keep_listed());
        assert!(!object("web", &[]).keep_listed());
    }

    #[test]
    fn a_delete_names_every_key_the_object_was_placed_on() {
        let mut index = PlacedIndex::default();
        index.replace(
            None,
            [(
                address("web"),
                object("web", &[("k1", "Sync"), ("k2", "Sync")]),
            )],
        );
        // The delete event's copy may be older or newer than the index's.
        let mut keys = index.remove(&address("web"), &object("web", &[("k3", "Sync")]));
        keys.sort_unstable();
        assert_eq!(keys, ["k1", "k2", "k3"]);
        assert_eq!(index.len(), 0);
        assert!(names(&index, "k1").is_empty() && names(&index, "k2").is_empty());
    }
}
