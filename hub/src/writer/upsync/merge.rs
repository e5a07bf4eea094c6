//! What an upsynced object's write makes of three versions of it: the one
//! the hub last wrote (`uplink.io/last-applied`, the base, as
//! `kubectl apply`'s last-applied-configuration), the one KCP holds now
//! (the server's) and the one the cluster wants (the client's).
//!
//! Only the content the cluster manages takes part ([`managed`]): every
//! top-level field but `metadata` and `status`, and the entries of
//! `metadata.labels` and `metadata.annotations` that are not kcp's or
//! Uplink's own ([`is_reserved_key`]); the rest of the object is KCP's and
//! stays as it is. Content is compared per leaf JSON path: objects recurse,
//! arrays (and scalars) are atomic. A path only one side changed since the
//! base takes that side's value, except under `ClientWins`, where the
//! result is always the cluster's; a path both changed (differently) is
//! the strategy's ([`UpsyncConflicts`]). Every change since the base that
//! the result drops is reported ([`Dropped`]), so it can be recorded.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::aggregate::UpsyncConflicts;

/// The placement label's value on an object a cluster upsyncs (kcp's).
pub const STATE_UPSYNC: &str = "Upsync";
/// Per upsyncing cluster: `downstream-uid.uplink.io/<syncTargetKey>`, the
/// uid of the cluster's own object (the UID map on the object).
pub const DOWNSTREAM_UID_PREFIX: &str = "downstream-uid.uplink.io/";
/// The desired object (JSON) the hub last wrote: the merge's base.
pub const LAST_APPLIED_ANNOTATION: &str = "uplink.io/last-applied";
/// The last [`CONFLICTS_KEPT`] conflicts of the object's writes (JSON).
pub const CONFLICTS_ANNOTATION: &str = "uplink.io/conflicts";
/// Conflicts the annotation keeps, newest last.
pub const CONFLICTS_KEPT: usize = 5;

/// Whether a label or annotation key is kcp's or Uplink's own (its prefix
/// is `kcp.io`, `uplink.io` or a subdomain of either): never the cluster's
/// to set, never part of what it manages.
pub fn is_reserved_key(key: &str) -> bool {
    let Some((prefix, _)) = key.split_once('/') else {
        return false;
    };
    ["kcp.io", "uplink.io"]
        .iter()
        .any(|domain| prefix == *domain || prefix.ends_with(&format!(".{domain}")))
}

/// The content of `object` the cluster manages (see the module
/// documentation), as one JSON object: its top-level fields but
/// `metadata` and `status`, and `metadata: {labels, annotations}` without
/// the reserved entries (both always present, maybe empty).
pub fn managed(object: &Value) -> Value {
    let mut content = Map::new();
    let Some(fields) = object.as_object() else {
        return Value::Object(content);
    };
    for (field, value) in fields {
        if field != "metadata" && field != "status" {
            content.insert(field.clone(), value.clone());
        }
    }
    let mut metadata = Map::new();
    for part in ["labels", "annotations"] {
        let entries: Map<String, Value> = object
            .pointer(&format!("/metadata/{part}"))
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .filter(|(key, _)| !is_reserved_key(key))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        metadata.insert(part.to_owned(), Value::Object(entries));
    }
    content.insert("metadata".to_owned(), Value::Object(metadata));
    Value::Object(content)
}

/// `current` with its managed content replaced by `content` (a
/// [`managed`] value): KCP's metadata, reserved labels and annotations and
/// status stay.
pub fn with_managed(current: &Value, content: &Value) -> Value {
    let mut object = Map::new();
    let current = current.as_object();
    let content = content.as_object();
    for (field, value) in content.into_iter().flatten() {
        if field != "metadata" {
            object.insert(field.clone(), value.clone());
        }
    }
    let mut metadata = current
        .and_then(|c| c.get("metadata"))
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    for part in ["labels", "annotations"] {
        let mut entries: Map<String, Value> = metadata
            .get(part)
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .filter(|(key, _)| is_reserved_key(key))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        if let Some(managed) = content
            .and_then(|c| c.get("metadata"))
            .and_then(|m| m.get(part))
            .and_then(Value::as_object)
        {
            entries.extend(managed.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        metadata.insert(part.to_owned(), Value::Object(entries));
    }
    object.insert("metadata".to_owned(), Value::Object(metadata));
    if let Some(status) = current.and_then(|c| c.get("status")) {
        object.insert("status".to_owned(), status.clone());
    }
    Value::Object(object)
}

/// Whose change the merge dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Side {
    /// A change made in KCP since the hub last wrote the object.
    Kcp,
    /// The cluster's change since the hub last wrote the object.
    Cluster,
}

/// One change since the base that the result does not keep.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Dropped {
    /// The leaf path (`spec.a`, `metadata.labels["app.kubernetes.io/name"]`).
    pub path: String,
    /// Whose change it was.
    pub dropped: Side,
}

/// The merge's result: the managed content to write and what it dropped.
#[derive(Debug, Clone, PartialEq)]
pub struct Merged {
    pub content: Value,
    pub dropped: Vec<Dropped>,
}

/// Merges the managed contents `base`, `server` (KCP's) and `client` (the
/// cluster's) under `strategy`.
pub fn merge(base: &Value, server: &Value, client: &Value, strategy: UpsyncConflicts) -> Merged {
    let mut dropped = Vec::new();
    let content = merge_at(
        &mut String::new(),
        Some(base),
        Some(server),
        Some(client),
        strategy,
        &mut dropped,
    )
    .unwrap_or_else(|| Value::Object(Map::new()));
    Merged { content, dropped }
}

/// The merge of one path (`None`: absent).
fn merge_at(
    path: &mut String,
    base: Option<&Value>,
    server: Option<&Value>,
    client: Option<&Value>,
    strategy: UpsyncConflicts,
    dropped: &mut Vec<Dropped>,
) -> Option<Value> {
    if server == client {
        return server.cloned();
    }
    // Only the cluster changed it.
    if server == base {
        return client.cloned();
    }
    // Only KCP changed it: kept, except when the cluster's object wins whole.
    if client == base && strategy != UpsyncConflicts::ClientWins {
        return server.cloned();
    }
    if let (Some(Value::Object(server)), Some(Value::Object(client))) = (server, client) {
        let base = base.and_then(Value::as_object);
        let mut keys: Vec<&String> = server.keys().chain(client.keys()).collect();
        if let Some(base) = base {
            keys.extend(base.keys());
        }
        keys.sort_unstable();
        keys.dedup();
        let mut merged = Map::new();
        for key in keys {
            let len = path.len();
            push_segment(path, key);
            let value = merge_at(
                path,
                base.and_then(|b| b.get(key)),
                server.get(key),
                client.get(key),
                strategy,
                dropped,
            );
            path.truncate(len);
            if let Some(value) = value {
                merged.insert(key.clone(), value);
            }
        }
        return Some(Value::Object(merged));
    }
    // A leaf (or a subtree one side replaced or removed whole).
    let (kept, side) = match strategy {
        UpsyncConflicts::ServerWins => (server, Side::Cluster),
        UpsyncConflicts::ClientWins | UpsyncConflicts::ThreeWayMerge => (client, Side::Kcp),
    };
    dropped.push(Dropped {
        path: path.clone(),
        dropped: side,
    });
    kept.cloned()
}

/// Appends `key` to a rendered path: `.key`, or `["key"]` when it has
/// characters a dotted path cannot show plainly.
fn push_segment(path: &mut String, key: &str) {
    let plain = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if plain {
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(key);
    } else {
        path.push_str(&format!("[{}]", Value::String(key.to_owned())));
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn spec(value: Value) -> Value {
        json!({"spec": value, "metadata": {"labels": {}, "annotations": {}}})
    }

    fn paths(merged: &Merged) -> Vec<(String, Side)> {
        merged
            .dropped
            .iter()
            .map(|d| (d.path.clone(), d.dropped))
            .collect()
    }

    #[test]
    fn the_issue_example_under_each_strategy() {
        let base = spec(json!({"a": 1, "b": 1}));
        let kcp = spec(json!({"a": 2, "b": 5}));
        let cluster = spec(json!({"a": 1, "b": 3}));
        let run = |strategy| merge(&base, &kcp, &cluster, strategy);

        let client = run(UpsyncConflicts::ClientWins);
        assert_eq!(client.content, spec(json!({"a": 1, "b": 3})));
        assert_eq!(
            paths(&client),
            [("spec.a".into(), Side::Kcp), ("spec.b".into(), Side::Kcp)]
        );

        let server = run(UpsyncConflicts::ServerWins);
        assert_eq!(server.content, spec(json!({"a": 2, "b": 5})));
        assert_eq!(paths(&server), [("spec.b".into(), Side::Cluster)]);

        let three_way = run(UpsyncConflicts::ThreeWayMerge);
        assert_eq!(three_way.content, spec(json!({"a": 2, "b": 3})));
        assert_eq!(paths(&three_way), [("spec.b".into(), Side::Kcp)]);
    }

    #[test]
    fn no_conflict_when_only_one_side_changed() {
        let base = spec(json!({"a": 1, "b": 1}));
        let changed = spec(json!({"a": 1, "b": 2, "c": 3}));
        for strategy in UpsyncConflicts::ALL {
            // The cluster alone.
            let merged = merge(&base, &base, &changed, strategy);
            assert_eq!(merged.content, changed, "{strategy}");
            assert!(merged.dropped.is_empty(), "{strategy}");
            // Both the same way.
            let merged = merge(&base, &changed, &changed, strategy);
            assert_eq!(merged.content, changed, "{strategy}");
            assert!(merged.dropped.is_empty(), "{strategy}");
        }
        // KCP alone: kept, but overwritten (and said so) under ClientWins.
        let merged = merge(&base, &changed, &base, UpsyncConflicts::ThreeWayMerge);
        assert_eq!(merged.content, changed);
        assert!(merged.dropped.is_empty());
        let merged = merge(&base, &changed, &base, UpsyncConflicts::ClientWins);
        assert_eq!(merged.content, base);
        assert_eq!(
            paths(&merged),
            [("spec.b".into(), Side::Kcp), ("spec.c".into(), Side::Kcp)]
        );
    }

    #[test]
    fn arrays_are_atomic() {
        let base = spec(json!({"ports": [1, 2]}));
        let kcp = spec(json!({"ports": [1, 2, 3]}));
        let cluster = spec(json!({"ports": [2]}));
        let merged = merge(&base, &kcp, &cluster, UpsyncConflicts::ThreeWayMerge);
        assert_eq!(merged.content, cluster);
        assert_eq!(paths(&merged), [("spec.ports".into(), Side::Kcp)]);
        let merged = merge(&base, &kcp, &cluster, UpsyncConflicts::ServerWins);
        assert_eq!(merged.content, kcp);
        assert_eq!(paths(&merged), [("spec.ports".into(), Side::Cluster)]);
    }

    #[test]
    fn labels_and_annotations_merge_per_entry_and_reserved_ones_stay_out() {
        let object = |labels: Value, annotations: Value| {
            json!({
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": "pv", "uid": "u", "labels": labels, "annotations": annotations},
                "spec": {"capacity": {"storage": "1Gi"}},
                "status": {"phase": "Bound"},
            })
        };
        let base = managed(&object(json!({"app": "db"}), json!({"note": "a"})));
        let kcp_object = object(
            json!({"app": "db", "team": "x", "state.workload.kcp.io/k1": "Upsync"}),
            json!({"note": "b", "uplink.io/last-applied": "{}", "kcp.io/cluster": "root"}),
        );
        let kcp = managed(&kcp_object);
        assert_eq!(
            kcp["metadata"],
            json!({"labels": {"app": "db", "team": "x"}, "annotations": {"note": "b"}})
        );
        assert_eq!(kcp.get("status"), None);
        let cluster = managed(&object(
            json!({"app": "db2"}),
            json!({"note": "c", "app.kubernetes.io/name": "x"}),
        ));
        let merged = merge(&base, &kcp, &cluster, UpsyncConflicts::ThreeWayMerge);
        assert_eq!(
            merged.content["metadata"],
            json!({
                "labels": {"app": "db2", "team": "x"},
                "annotations": {"note": "c", "app.kubernetes.io/name": "x"},
            })
        );
        assert_eq!(
            paths(&merged),
            [("metadata.annotations.note".into(), Side::Kcp)]
        );
        // Written back: KCP's own entries, metadata and status stay.
        let written = with_managed(&kcp_object, &merged.content);
        assert_eq!(written["metadata"]["uid"], "u");
        assert_eq!(
            written["metadata"]["labels"]["state.workload.kcp.io/k1"],
            "Upsync"
        );
        assert_eq!(written["metadata"]["labels"]["app"], "db2");
        assert_eq!(written["metadata"]["annotations"]["kcp.io/cluster"], "root");
        assert_eq!(written["status"]["phase"], "Bound");
        assert_eq!(managed(&written), merged.content);
    }

    #[test]
    fn reserved_keys() {
        for key in [
            "state.workload.kcp.io/abc",
            "kcp.io/cluster",
            "uplink.io/last-applied",
            "downstream-uid.uplink.io/abc",
        ] {
            assert!(is_reserved_key(key), "{key}");
        }
        for key in [
            "app",
            "app.kubernetes.io/name",
            "notkcp.io/x",
            "example.com/kcp.io",
        ] {
            assert!(!is_reserved_key(key), "{key}");
        }
    }
}
