//! The `/scale` subresource of deployments, replicasets and statefulsets
//! (what `kubectl scale` uses): an `autoscaling/v1` Scale view of
//! `spec.replicas`, `status.replicas` and the label selector.

use std::sync::Arc;

use serde_json::{Value, json};

use super::object::meta_str;
use super::resources::ResourceDef;

/// Whether a resource has `/scale`.
pub(crate) fn has_scale(def: &ResourceDef) -> bool {
    def.group == "apps"
        && matches!(
            def.plural.as_str(),
            "deployments" | "replicasets" | "statefulsets"
        )
}

/// The Scale view of an object.
pub(crate) fn to_scale(object: &Arc<Value>) -> Value {
    let meta = object.get("metadata").cloned().unwrap_or_else(|| json!({}));
    let keep = [
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "creationTimestamp",
    ];
    let metadata: serde_json::Map<String, Value> = meta
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| keep.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    let selector = object
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .map(|m| {
            let mut pairs: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect();
            pairs.sort();
            pairs.join(",")
        })
        .unwrap_or_default();
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": metadata,
        "spec": { "replicas": object.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1) },
        "status": {
            "replicas": object.pointer("/status/replicas").and_then(Value::as_i64).unwrap_or(0),
            "selector": selector,
        },
    })
}

/// The object with the replicas (and resourceVersion precondition) of a Scale.
pub(crate) fn apply_scale(object: &Value, scale: &Value) -> Result<Value, String> {
    let replicas = scale
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .ok_or("spec.replicas: Required value")?;
    if replicas < 0 {
        return Err(format!(
            "spec.replicas: Invalid value: {replicas}: must be greater than or equal to 0"
        ));
    }
    let mut next = object.clone();
    next["spec"]["replicas"] = json!(replicas);
    match meta_str(scale, "resourceVersion") {
        Some(rv) if !rv.is_empty() => next["metadata"]["resourceVersion"] = json!(rv),
        _ => {}
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_round_trip() {
        let d = Arc::new(
            json!({"metadata": {"name": "web", "resourceVersion": "3", "labels": {"x": "y"}},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"b": "2", "a": "1"}}}, "status": {"replicas": 2}}),
        );
        let s = to_scale(&d);
        assert_eq!(s["spec"]["replicas"], 3);
        assert_eq!(s["status"]["selector"], "a=1,b=2");
        assert!(s["metadata"].get("labels").is_none());
        let mut s2 = s.clone();
        s2["spec"]["replicas"] = json!(5);
        let next = apply_scale(&d, &s2).unwrap_or_default();
        assert_eq!(next["spec"]["replicas"], 5);
        s2["spec"]["replicas"] = json!(-1);
        assert!(apply_scale(&d, &s2).is_err());
    }
}
