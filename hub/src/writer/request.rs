//! What one write sends, built from the desired status: under apply the
//! apply configuration (the object's identity and its whole status), under
//! merge patch the JSON merge patch from the last written status.

use serde_json::{Map, Value};

use crate::store::ObjectKey;

/// The server-side apply configuration that makes `status` the object's
/// status as far as the hub owns it: the object's identity and the status,
/// nothing else (an apply to `/status` owns nothing outside `.status`).
pub fn apply_configuration(key: &ObjectKey, status: &Value) -> Value {
    let api_version = if key.group.is_empty() {
        key.version.clone()
    } else {
        format!("{}/{}", key.group, key.version)
    };
    let mut metadata = Map::new();
    metadata.insert("name".to_owned(), Value::String(key.name.clone()));
    if let Some(namespace) = &key.namespace {
        metadata.insert("namespace".to_owned(), Value::String(namespace.clone()));
    }
    serde_json::json!({
        "apiVersion": api_version,
        "kind": key.kind,
        "metadata": metadata,
        "status": status,
    })
}

/// The merge patch that takes an object's status from `written` (`None`:
/// unknown) to `desired` (`None`: no status).
pub fn status_patch(written: Option<&Value>, desired: Option<&Value>) -> Value {
    let status = match (written, desired) {
        (_, None) => Value::Null,
        (Some(old), Some(new)) => merge_diff(old, new),
        (None, Some(new)) => new.clone(),
    };
    let mut patch = Map::new();
    patch.insert("status".to_owned(), status);
    Value::Object(patch)
}

/// The JSON merge patch (RFC 7386) that turns `old` into `new`.
fn merge_diff(old: &Value, new: &Value) -> Value {
    match (old, new) {
        (Value::Object(old), Value::Object(new)) => {
            let mut patch = Map::new();
            for key in old.keys() {
                if !new.contains_key(key) {
                    patch.insert(key.clone(), Value::Null);
                }
            }
            for (key, value) in new {
                match old.get(key) {
                    Some(previous) if previous == value => {}
                    Some(previous @ Value::Object(_)) if value.is_object() => {
                        patch.insert(key.clone(), merge_diff(previous, value));
                    }
                    _ => {
                        patch.insert(key.clone(), value.clone());
                    }
                }
            }
            Value::Object(patch)
        }
        _ => new.clone(),
    }
}

#[cfg(test)]
mod tests {
    use crate::store::KeyParts;
    use serde_json::json;

    use super::*;

    fn key() -> ObjectKey {
        ObjectKey::deployment("web")
    }

    #[test]
    fn apply_configuration_of_core_and_cluster_scoped_objects() {
        let node = ObjectKey::new(KeyParts {
            group: String::new(),
            version: "v1".into(),
            resource: "nodes".into(),
            kind: "Node".into(),
            namespace: None,
            name: "n1".into(),
            ..key().parts().clone()
        });
        assert_eq!(
            apply_configuration(&node, &json!({"phase": "Ready"})),
            json!({
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": "n1"},
                "status": {"phase": "Ready"},
            })
        );
    }

    #[test]
    fn patch_with_unknown_upstream_sends_the_whole_status() {
        assert_eq!(
            status_patch(None, Some(&json!({"a": {"b": 1}}))),
            json!({"status": {"a": {"b": 1}}})
        );
        assert_eq!(
            status_patch(Some(&json!({"a": 1})), None),
            json!({"status": null})
        );
        assert_eq!(
            status_patch(Some(&json!({"a": [1, 2]})), Some(&json!({"a": [1]}))),
            json!({"status": {"a": [1]}})
        );
    }
}
