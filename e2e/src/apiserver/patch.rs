//! Patch formats kube-apiserver accepts, applied to JSON objects.
//!
//! - `application/merge-patch+json`: RFC 7386 JSON merge patch.
//! - `application/json-patch+json`: RFC 6902 JSON patch.
//! - `application/strategic-merge-patch+json` (built-in resources only; custom
//!   resources answer 415 as kube does). Simplification: maps merge
//!   recursively and `null` deletes, like a merge patch; lists whose field
//!   name has a known Kubernetes merge key (`containers`/`env`/`volumes`/...
//!   by `name`, `volumeMounts` by `mountPath`, `ports` by `containerPort` or
//!   `port`, `conditions` by `type`, `ownerReferences` by `uid`) are merged by
//!   that key, `finalizers` as a set; every other list is replaced. The
//!   directives `$patch: delete|replace|merge`, `$deleteFromPrimitiveList/<f>`
//!   are honoured; `$setElementOrder/<f>` and `$retainKeys` are ignored.
//! - `application/apply-patch+yaml` (server-side apply): see [`super::apply`].

use serde_json::{Map, Value};

/// The patch formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PatchType {
    Merge,
    Json,
    Strategic,
    Apply,
}

impl PatchType {
    /// The patch type of a `Content-Type` (parameters ignored).
    pub fn from_content_type(content_type: &str) -> Option<PatchType> {
        let media = content_type.split(';').next().unwrap_or_default().trim();
        match media {
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/json-patch+json" => Some(PatchType::Json),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+json" => {
                Some(PatchType::Apply)
            }
            _ => None,
        }
    }
}

/// Why a patch could not be applied, and how kube classifies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PatchFailure {
    /// The patch document itself is malformed (400).
    Malformed(String),
    /// A well-formed JSON patch that does not apply, e.g. a failed `test` (422).
    NotApplicable(String),
}

/// Parses a JSON patch body and applies it.
pub(crate) fn json_patch(target: &mut Value, body: &[u8]) -> Result<(), PatchFailure> {
    let ops: json_patch::Patch =
        serde_json::from_slice(body).map_err(|e| PatchFailure::Malformed(e.to_string()))?;
    json_patch::patch(target, &ops.0).map_err(|e| PatchFailure::NotApplicable(e.to_string()))
}

/// Parses a merge patch body and applies it.
pub(crate) fn merge_patch(target: &mut Value, body: &[u8]) -> Result<(), PatchFailure> {
    let patch: Value =
        serde_json::from_slice(body).map_err(|e| PatchFailure::Malformed(e.to_string()))?;
    if !patch.is_object() {
        return Err(PatchFailure::Malformed(
            "a merge patch must be a JSON object".into(),
        ));
    }
    json_patch::merge(target, &patch);
    Ok(())
}

/// Parses a strategic merge patch body and applies it (see the module docs).
pub(crate) fn strategic_patch(target: &mut Value, body: &[u8]) -> Result<(), PatchFailure> {
    let patch: Value =
        serde_json::from_slice(body).map_err(|e| PatchFailure::Malformed(e.to_string()))?;
    let Value::Object(patch) = patch else {
        return Err(PatchFailure::Malformed(
            "a strategic merge patch must be a JSON object".into(),
        ));
    };
    strategic_merge_map(target, &patch);
    Ok(())
}

/// The merge step of server-side apply (ownership is [`super::apply`]'s):
/// the applied configuration is merged into the live object like a
/// strategic merge patch (maps recursively, keyed lists by key, other lists
/// replaced), except that `null` values are ignored.
pub(crate) fn apply(target: &mut Value, applied: &Value) {
    let Value::Object(applied) = strip_nulls(applied) else {
        return;
    };
    strategic_merge_map(target, &applied);
}

fn strip_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), strip_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_nulls).collect()),
        other => other.clone(),
    }
}

/// The merge key of a list field, as Kubernetes' struct tags define it.
pub(crate) fn merge_key(field: &str, elements: &[Value]) -> Option<&'static str> {
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "resourceClaims" => Some("name"),
        "volumeMounts" => Some("mountPath"),
        "volumeDevices" => Some("devicePath"),
        "hostAliases" => Some("ip"),
        "ownerReferences" => Some("uid"),
        "conditions" => Some("type"),
        "topologySpreadConstraints" => Some("topologyKey"),
        "ports" => {
            let container_ports = elements.iter().any(|e| e.get("containerPort").is_some());
            Some(if container_ports {
                "containerPort"
            } else {
                "port"
            })
        }
        _ => None,
    }
}

/// Lists of scalars that merge as sets.
pub(crate) fn is_set_list(field: &str) -> bool {
    field == "finalizers"
}

fn strategic_merge_map(target: &mut Value, patch: &Map<String, Value>) {
    if patch.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut replacement = patch.clone();
        replacement.remove("$patch");
        *target = Value::Object(strip_directives(replacement));
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else { return };
    for (key, value) in patch {
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Value::Array(remove)) = (t.get_mut(field), value) {
                list.retain(|v| !remove.contains(v));
            }
            continue;
        }
        if key.starts_with('$') {
            continue;
        }
        match value {
            Value::Null => {
                t.remove(key);
            }
            Value::Object(p) => {
                if p.get("$patch").and_then(Value::as_str) == Some("delete") {
                    t.remove(key);
                } else {
                    strategic_merge_map(t.entry(key.clone()).or_insert(Value::Null), p);
                }
            }
            Value::Array(p) => {
                let merged = match t.get_mut(key) {
                    Some(Value::Array(existing)) => merge_list(key, existing, p),
                    _ => false,
                };
                if !merged {
                    let cleaned: Vec<Value> = p
                        .iter()
                        .filter(|e| e.get("$patch").and_then(Value::as_str) != Some("delete"))
                        .map(|e| match e {
                            Value::Object(m) => Value::Object(strip_directives(m.clone())),
                            other => other.clone(),
                        })
                        .collect();
                    t.insert(key.clone(), Value::Array(cleaned));
                }
            }
            scalar => {
                t.insert(key.clone(), scalar.clone());
            }
        }
    }
}

/// Merges `patch` into `existing` by the field's merge key; false when the
/// field has none (the caller replaces the list).
fn merge_list(field: &str, existing: &mut Vec<Value>, patch: &[Value]) -> bool {
    if is_set_list(field) {
        for v in patch {
            if !existing.contains(v) {
                existing.push(v.clone());
            }
        }
        return true;
    }
    let Some(key) = merge_key(field, patch) else {
        return false;
    };
    if patch.iter().any(|e| e.get(key).is_none()) {
        return false;
    }
    for element in patch {
        let Value::Object(p) = element else {
            return false;
        };
        let id = &p[key];
        let position = existing.iter().position(|e| e.get(key) == Some(id));
        let delete = p.get("$patch").and_then(Value::as_str) == Some("delete");
        match (position, delete) {
            (Some(i), true) => {
                existing.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => strategic_merge_map(&mut existing[i], p),
            (None, false) => existing.push(Value::Object(strip_directives(p.clone()))),
        }
    }
    true
}

fn strip_directives(mut m: Map<String, Value>) -> Map<String, Value> {
    m.retain(|k, _| !k.starts_with('$'));
    for v in m.values_mut() {
        match v {
            Value::Object(inner) => *inner = strip_directives(std::mem::take(inner)),
            Value::Array(items) => {
                for item in items {
                    if let Value::Object(inner) = item {
                        *inner = strip_directives(std::mem::take(inner));
                    }
                }
            }
            _ => {}
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn smp(mut target: Value, patch: Value) -> Value {
        strategic_patch(&mut target, patch.to_string().as_bytes())
            .unwrap_or_else(|e| panic!("{e:?}"));
        target
    }

    #[test]
    fn content_types() {
        assert_eq!(
            PatchType::from_content_type("application/merge-patch+json; charset=utf-8"),
            Some(PatchType::Merge)
        );
        assert_eq!(
            PatchType::from_content_type("application/apply-patch+yaml"),
            Some(PatchType::Apply)
        );
        assert_eq!(PatchType::from_content_type("application/json"), None);
    }

    #[test]
    fn merge_patch_deletes_with_null_and_replaces_lists() {
        let mut t = json!({"a": 1, "b": {"c": 2, "d": 3}, "l": [1, 2]});
        merge_patch(&mut t, br#"{"a": null, "b": {"c": 5}, "l": [3]}"#)
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(t, json!({"b": {"c": 5, "d": 3}, "l": [3]}));
        assert!(matches!(
            merge_patch(&mut t, b"nope"),
            Err(PatchFailure::Malformed(_))
        ));
    }

    #[test]
    fn json_patch_ops_and_failed_test() {
        let mut t = json!({"spec": {"replicas": 1}});
        json_patch(
            &mut t,
            br#"[{"op":"replace","path":"/spec/replicas","value":3}]"#,
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(t["spec"]["replicas"], 3);
        let r = json_patch(
            &mut t,
            br#"[{"op":"test","path":"/spec/replicas","value":9}]"#,
        );
        assert!(matches!(r, Err(PatchFailure::NotApplicable(_))));
        assert!(matches!(
            json_patch(&mut t, b"{}"),
            Err(PatchFailure::Malformed(_))
        ));
    }

    #[test]
    fn strategic_merge_merges_containers_by_name() {
        let t = json!({"spec": {"containers": [{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:1"}]}});
        let out = smp(
            t,
            json!({"spec": {"containers": [{"name": "b", "image": "b:2"}, {"name": "c", "image": "c:1"}], "$setElementOrder/containers": [{"name": "a"}]}}),
        );
        assert_eq!(
            out,
            json!({"spec": {"containers": [{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:2"}, {"name": "c", "image": "c:1"}]}})
        );
    }

    #[test]
    fn strategic_merge_directives() {
        let t = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}]}, "metadata": {"finalizers": ["x"], "labels": {"k": "v"}}});
        let out = smp(
            t,
            json!({
                "spec": {"containers": [{"name": "a", "$patch": "delete"}]},
                "metadata": {"finalizers": ["y"], "labels": {"$patch": "replace", "n": "m"}}
            }),
        );
        assert_eq!(out["spec"]["containers"], json!([{"name": "b"}]));
        assert_eq!(out["metadata"]["finalizers"], json!(["x", "y"]));
        assert_eq!(out["metadata"]["labels"], json!({"n": "m"}));
        let out = smp(
            out,
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["x"]}}),
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["y"]));
    }

    #[test]
    fn strategic_merge_replaces_lists_without_merge_key() {
        let out = smp(json!({"args": ["a", "b"]}), json!({"args": ["c"]}));
        assert_eq!(out, json!({"args": ["c"]}));
    }

    #[test]
    fn apply_merges_and_keeps_unmentioned_fields() {
        let mut t = json!({"spec": {"replicas": 1, "paused": false}, "status": {"x": 1}});
        apply(&mut t, &json!({"spec": {"replicas": 3, "paused": null}}));
        assert_eq!(
            t,
            json!({"spec": {"replicas": 3, "paused": false}, "status": {"x": 1}})
        );
    }
}
