//! Upsync within the upward lane (protocol version 3): which of a
//! session's reports are of objects born in its cluster, and the whole
//! object each `Upsert` carries, checked against the report's own names
//! before placement judges it. A session upsyncs the types its agent names
//! in `Hello` that the hub accepts (`--upsync-resources`); a type the hub
//! upsyncs is reported only that way, and an object travels only for such
//! a type. What the cluster may not set (kcp's and Uplink's labels and
//! annotations, which place objects and record who upsyncs them) and what
//! the server sets are left out of the object here.

use std::sync::Arc;

use serde_json::{Map, Value};
use uplink_protocol::resource::ResourceSpec;
use uplink_protocol::{
    Change, Delta, EVENTS_VERSION, ErrorCode, Hello, ObjectRef, Rejected, SnapshotEnd,
};

use super::wire::Violation;
use super::{Connection, Transport};
use crate::writer::upsync::UpsyncChange;
use crate::writer::upsync::merge::is_reserved_key;

impl<S: Transport> Connection<S> {
    /// The types this session upsyncs: those `hello` names (version 3 on)
    /// that the hub accepts.
    pub(super) fn upsync_types(&self, hello: &Hello) -> Vec<ResourceSpec> {
        if self.version < EVENTS_VERSION {
            return Vec::new();
        }
        let accepted = &self.shared.placements.settings().upsync;
        let mut types = Vec::new();
        for text in &hello.upsync_resources {
            match text.parse::<ResourceSpec>() {
                Ok(spec) if accepted.contains(&spec) => types.push(spec),
                Ok(spec) => {
                    tracing::info!(cluster = %self.cluster, resource = %spec, "the agent upsyncs a type this hub does not accept (--upsync-resources); its reports are refused");
                }
                Err(error) => {
                    tracing::info!(cluster = %self.cluster, %error, "the agent names an upsync type that does not parse; ignored");
                }
            }
        }
        types
    }

    /// Whether the snapshot `end` ends names every object this session
    /// upsyncs, so that those it does not name are gone from the cluster:
    /// version 3, upsync on, and the agent says so (`upsync_listed`).
    pub(super) fn lists_upsynced(&self, end: &SnapshotEnd) -> bool {
        self.version >= EVENTS_VERSION && !self.upsync.is_empty() && end.upsync_listed
    }

    /// Whether `object` is of a type this session upsyncs.
    pub(super) fn upsyncs(&self, object: &ObjectRef) -> bool {
        self.upsync
            .iter()
            .any(|t| t.group == object.group && t.resource == object.resource)
    }

    /// What `delta` asks of its upsynced object (`None`: it is a plain
    /// status report), or why it is refused. Takes the object out of the
    /// delta.
    pub(super) fn upsync_change(
        &self,
        delta: &mut Delta,
    ) -> Result<Option<UpsyncChange>, Violation> {
        let object = &delta.object;
        let seq = delta.seq;
        let text = delta.object_json.take();
        if !self.upsyncs(object) {
            let upsynced_by_hub = self
                .shared
                .placements
                .settings()
                .upsync
                .iter()
                .any(|t| t.group == object.group && t.resource == object.resource);
            if text.is_some() || upsynced_by_hub {
                return Err(Violation::new(
                    Rejected::RESOURCE_NOT_SYNCED,
                    ErrorCode::Malformed,
                    format!(
                        "delta {seq}: {}.{} is not upsynced in this session (the hub's --upsync-resources and the agent's upsync_resources)",
                        object.resource, object.group
                    ),
                ));
            }
            return Ok(None);
        }
        match (&delta.change, text) {
            (Change::Deleted, _) => Ok(Some(UpsyncChange::Deleted)),
            (Change::Upsert { .. }, None) => Err(invalid(
                seq,
                "an upsynced object's Upsert without object_json",
            )),
            // The uid tells a recreated object from the one before it.
            (Change::Upsert { .. }, Some(_)) if object.uid.is_empty() => Err(invalid(
                seq,
                "an upsynced object's Upsert without its downstream uid",
            )),
            (Change::Upsert { .. }, Some(text)) => desired_object(object, &text)
                .map(|desired| Some(UpsyncChange::Desired(Arc::new(desired))))
                .map_err(|reason| invalid(seq, &reason)),
        }
    }
}

fn invalid(seq: u64, reason: &str) -> Violation {
    Violation::new(
        Rejected::INVALID_OBJECT,
        ErrorCode::Malformed,
        format!("delta {seq}: {reason}"),
    )
}

/// The object `text` as KCP is to hold it, when it is the one `object`
/// names: its apiVersion, kind, metadata (name, namespace and the labels
/// and annotations that are not kcp's or Uplink's) and every other
/// top-level field but status.
pub(crate) fn desired_object(object: &ObjectRef, text: &str) -> Result<Value, String> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| format!("object_json is not JSON: {e}"))?;
    let Value::Object(mut fields) = value else {
        return Err("object_json is not a JSON object".to_owned());
    };
    let api_version = if object.group.is_empty() {
        object.version.clone()
    } else {
        format!("{}/{}", object.group, object.version)
    };
    let text_of = |fields: &Map<String, Value>, pointer: &str| -> Option<String> {
        Value::Object(fields.clone())
            .pointer(pointer)
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let checks = [
        (
            "apiVersion",
            text_of(&fields, "/apiVersion"),
            Some(api_version),
        ),
        ("kind", text_of(&fields, "/kind"), Some(object.kind.clone())),
        (
            "metadata.name",
            text_of(&fields, "/metadata/name"),
            Some(object.name.clone()),
        ),
        (
            "metadata.namespace",
            text_of(&fields, "/metadata/namespace"),
            object.namespace.clone(),
        ),
    ];
    for (what, found, expected) in checks {
        if found != expected {
            return Err(format!(
                "object_json's {what} {found:?} is not the delta's {expected:?}"
            ));
        }
    }
    fields.remove("status");
    let metadata = fields
        .remove("metadata")
        .and_then(|m| match m {
            Value::Object(m) => Some(m),
            _ => None,
        })
        .unwrap_or_default();
    let mut kept = Map::new();
    kept.insert("name".to_owned(), Value::String(object.name.clone()));
    if let Some(namespace) = &object.namespace {
        kept.insert("namespace".to_owned(), Value::String(namespace.clone()));
    }
    for part in ["labels", "annotations"] {
        let entries = match metadata.get(part) {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(entries)) => entries.clone(),
            Some(_) => return Err(format!("object_json's metadata.{part} is not an object")),
        };
        let mut own = Map::new();
        for (key, value) in entries {
            if !value.is_string() {
                return Err(format!(
                    "object_json's metadata.{part}[{key:?}] is not a string"
                ));
            }
            if !is_reserved_key(&key) {
                own.insert(key, value);
            }
        }
        if !own.is_empty() {
            kept.insert(part.to_owned(), Value::Object(own));
        }
    }
    fields.insert("metadata".to_owned(), Value::Object(kept));
    Ok(Value::Object(fields))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pv() -> ObjectRef {
        ObjectRef {
            group: String::new(),
            version: "v1".into(),
            resource: "persistentvolumes".into(),
            kind: "PersistentVolume".into(),
            workspace: "root".into(),
            namespace: None,
            name: "data".into(),
            uid: "d1".into(),
        }
    }

    #[test]
    fn the_object_is_kept_without_what_the_cluster_may_not_set() {
        let text = json!({
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {
                "name": "data",
                "uid": "d1",
                "resourceVersion": "7",
                "labels": {"app": "db", "state.workload.kcp.io/other": "Sync"},
                "annotations": {"note": "x", "uplink.io/last-applied": "{}"},
            },
            "spec": {"capacity": {"storage": "1Gi"}},
            "status": {"phase": "Bound"},
        })
        .to_string();
        let desired = desired_object(&pv(), &text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            desired,
            json!({
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": "data", "labels": {"app": "db"}, "annotations": {"note": "x"}},
                "spec": {"capacity": {"storage": "1Gi"}},
            })
        );
    }

    #[test]
    fn an_object_that_is_not_the_reported_one_is_refused() {
        let good =
            json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "data"}});
        assert!(desired_object(&pv(), &good.to_string()).is_ok());
        let cases = [
            "[1]".to_owned(),
            "not json".to_owned(),
            json!({"apiVersion": "v2", "kind": "PersistentVolume", "metadata": {"name": "data"}}).to_string(),
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "data"}}).to_string(),
            json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "other"}}).to_string(),
            json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "data", "namespace": "x"}}).to_string(),
            json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "data", "labels": {"a": 1}}}).to_string(),
        ];
        for case in cases {
            assert!(desired_object(&pv(), &case).is_err(), "{case}");
        }
        let pvc = ObjectRef {
            resource: "persistentvolumeclaims".into(),
            kind: "PersistentVolumeClaim".into(),
            namespace: Some("shop".into()),
            ..pv()
        };
        let no_namespace = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data"}});
        assert!(desired_object(&pvc, &no_namespace.to_string()).is_err());
    }
}
