//! Pruning of unknown fields in custom resources, as kube-apiserver does for
//! structural CRD schemas, with the `fieldValidation` directive deciding what
//! happens to them: `Strict` rejects the request (400), `Warn` (the default)
//! and `Ignore` drop them, `Warn` with a `Warning` header.
//!
//! Only `properties`, `additionalProperties`, `items`,
//! `x-kubernetes-preserve-unknown-fields` and `x-kubernetes-embedded-resource`
//! are interpreted; types, formats and CEL rules are not validated.

use serde_json::Value;

use super::registry::Target;
use super::status::ApiError;

/// The `fieldValidation` query parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

impl FieldValidation {
    pub fn parse(value: Option<&str>) -> Result<FieldValidation, ApiError> {
        match value {
            None | Some("") | Some("Warn") => Ok(FieldValidation::Warn),
            Some("Ignore") => Ok(FieldValidation::Ignore),
            Some("Strict") => Ok(FieldValidation::Strict),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation: Unsupported value: {other:?}: supported values: \"Ignore\", \"Strict\", \"Warn\""
            ))),
        }
    }
}

/// Removes fields the resource's schema does not declare. Returns warnings
/// to send (for `Warn`), or the 400 of `Strict`.
pub(crate) fn prune(
    target: &Target,
    object: &mut Value,
    validation: FieldValidation,
) -> Result<Vec<String>, ApiError> {
    let Some(schema) = target
        .def
        .version(&target.version)
        .and_then(|v| v.schema.as_ref())
    else {
        return Ok(Vec::new());
    };
    if !target.def.custom {
        return Ok(Vec::new());
    }
    let mut unknown = Vec::new();
    prune_root(object, schema, &mut unknown);
    if unknown.is_empty() {
        return Ok(Vec::new());
    }
    match validation {
        FieldValidation::Strict => {
            let list: Vec<String> = unknown
                .iter()
                .map(|p| format!("unknown field {p:?}"))
                .collect();
            Err(ApiError::bad_request(format!(
                "strict decoding error: {}",
                list.join(", ")
            )))
        }
        FieldValidation::Warn => Ok(unknown
            .iter()
            .map(|p| format!("unknown field {p:?}"))
            .collect()),
        FieldValidation::Ignore => Ok(Vec::new()),
    }
}

fn prune_root(object: &mut Value, schema: &Value, unknown: &mut Vec<String>) {
    let Value::Object(map) = object else { return };
    let preserve = schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    let props = schema.get("properties").and_then(Value::as_object);
    let keys: Vec<String> = map.keys().cloned().collect();
    for key in keys {
        if matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        match props.and_then(|p| p.get(&key)) {
            Some(sub) => {
                if let Some(v) = map.get_mut(&key) {
                    prune_value(v, sub, &key, unknown);
                }
            }
            None if preserve => {}
            None => {
                map.remove(&key);
                unknown.push(key);
            }
        }
    }
}

fn prune_value(value: &mut Value, schema: &Value, path: &str, unknown: &mut Vec<String>) {
    let preserve = schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    let embedded = schema.get("x-kubernetes-embedded-resource") == Some(&Value::Bool(true));
    match value {
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            if props.is_none() && additional.is_none() && (preserve || schema.get("type").is_none())
            {
                return;
            }
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                if embedded && matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                let child = format!("{path}.{key}");
                let sub = props.and_then(|p| p.get(&key)).or(match additional {
                    Some(s @ Value::Object(_)) => Some(s),
                    _ => None,
                });
                match sub {
                    Some(sub) => {
                        if let Some(v) = map.get_mut(&key) {
                            prune_value(v, sub, &child, unknown);
                        }
                    }
                    None if preserve || additional == Some(&Value::Bool(true)) => {}
                    None => {
                        map.remove(&key);
                        unknown.push(child);
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    prune_value(item, item_schema, &format!("{path}[{i}]"), unknown);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::ResourceDef;
    use serde_json::json;
    use std::sync::Arc;

    fn target() -> Target {
        let crd = json!({"spec": {"group": "example.com", "scope": "Namespaced", "names": {"plural": "widgets", "kind": "Widget"},
        "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {
            "type": "object",
            "properties": {
                "spec": {"type": "object", "properties": {
                    "color": {"type": "string"},
                    "parts": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}}}},
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                    "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
                }},
                "status": {"type": "object", "properties": {"ready": {"type": "boolean"}}}
            }}}}]}});
        let def = ResourceDef::from_crd(&crd).unwrap_or_else(|e| panic!("{e}"));
        Target {
            def: Arc::new(def),
            version: "v1".into(),
            namespace: "default".into(),
            status: false,
        }
    }

    #[test]
    fn unknown_fields_are_pruned_with_warnings() {
        let mut o = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"},
            "spec": {"color": "red", "size": 3, "parts": [{"name": "a", "weight": 1}], "labels": {"x": "y"}, "free": {"any": {"thing": 1}}},
            "status": {"ready": true, "extra": 1}, "junk": 1});
        let warnings = prune(&target(), &mut o, FieldValidation::Warn).unwrap_or_default();
        assert_eq!(
            o,
            json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"},
            "spec": {"color": "red", "parts": [{"name": "a"}], "labels": {"x": "y"}, "free": {"any": {"thing": 1}}},
            "status": {"ready": true}})
        );
        assert_eq!(warnings.len(), 4);
    }

    #[test]
    fn strict_rejects_unknown_fields() {
        let mut o = json!({"spec": {"size": 3}});
        let err = prune(&target(), &mut o, FieldValidation::Strict)
            .err()
            .map(|e| (e.code, e.message));
        assert_eq!(
            err,
            Some((
                400,
                "strict decoding error: unknown field \"spec.size\"".to_string()
            ))
        );
        let mut ok = json!({"spec": {"color": "x"}});
        assert!(prune(&target(), &mut ok, FieldValidation::Strict).is_ok());
    }
}
