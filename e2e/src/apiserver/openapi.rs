//! A minimal OpenAPI v3 surface: the `/openapi/v3` index and one document
//! per group-version listing each resource's operations with their
//! `x-kubernetes-group-version-kind` and the `fieldValidation` parameter.
//!
//! That is what `kubectl create/apply` (default `--validate=strict`) looks
//! for to decide that the server validates fields itself; with it, kubectl
//! sends `fieldValidation=Strict` instead of validating against schemas.
//! No schemas are served (so `kubectl explain` does not work).

use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::resources::ResourceDef;

/// The group-versions served, as OpenAPI v3 index keys (`api/v1`, `apis/apps/v1`).
fn group_versions(resources: &[Arc<ResourceDef>]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for def in resources {
        for v in &def.versions {
            let gv = (def.group.clone(), v.name.clone());
            if !out.contains(&gv) {
                out.push(gv);
            }
        }
    }
    out
}

fn index_key(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// FNV-1a, enough to give each document version a distinct cache key.
fn fnv1a(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016X}")
}

/// `/openapi/v3`
pub(crate) fn index(resources: &[Arc<ResourceDef>]) -> Value {
    let mut paths = Map::new();
    for (group, version) in group_versions(resources) {
        let key = index_key(&group, &version);
        let doc = group_version(resources, &group, &version).unwrap_or_default();
        let hash = fnv1a(doc.to_string().as_bytes());
        paths.insert(
            key.clone(),
            json!({ "serverRelativeURL": format!("/openapi/v3/{key}?hash={hash}") }),
        );
    }
    json!({ "paths": paths })
}

/// The document for `/openapi/v3/<api/v1|apis/g/v>`, if that group-version is served.
pub(crate) fn document(resources: &[Arc<ResourceDef>], rest: &str) -> Option<Value> {
    let parts: Vec<&str> = rest.split('/').collect();
    match parts.as_slice() {
        ["v3", "api", version] => group_version(resources, "", version),
        ["v3", "apis", group, version] => group_version(resources, group, version),
        _ => None,
    }
}

fn group_version(resources: &[Arc<ResourceDef>], group: &str, version: &str) -> Option<Value> {
    let prefix = if group.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{group}/{version}")
    };
    let mut paths = Map::new();
    for def in resources.iter().filter(|d| d.group == group) {
        let Some(v) = def.version(version) else {
            continue;
        };
        let gvk = json!({ "group": group, "version": version, "kind": def.kind });
        let ns = if def.namespaced {
            "/namespaces/{namespace}"
        } else {
            ""
        };
        let op = |action: &str, id: &str| {
            json!({
                "operationId": format!("{id}{}", def.kind),
                "x-kubernetes-action": action,
                "x-kubernetes-group-version-kind": gvk,
                "parameters": [
                    { "name": "fieldValidation", "in": "query", "schema": { "type": "string", "uniqueItems": true },
                      "description": "how the server handles unknown or duplicate fields: Ignore, Warn or Strict" },
                    { "name": "dryRun", "in": "query", "schema": { "type": "string", "uniqueItems": true } },
                    { "name": "fieldManager", "in": "query", "schema": { "type": "string", "uniqueItems": true } }
                ],
                "responses": { "200": { "description": "OK" } },
            })
        };
        let serves = |verb: &str| def.verbs.contains(&verb);
        let mut collection = Map::new();
        if serves("create") {
            collection.insert("post".into(), op("post", "create"));
        }
        if serves("list") {
            collection.insert(
                "get".into(),
                json!({ "x-kubernetes-action": "list", "x-kubernetes-group-version-kind": gvk, "responses": { "200": { "description": "OK" } } }),
            );
        }
        paths.insert(
            format!("{prefix}{ns}/{}", def.plural),
            Value::Object(collection),
        );
        if serves("update") {
            paths.insert(
                format!("{prefix}{ns}/{}/{{name}}", def.plural),
                json!({ "put": op("put", "replace"), "patch": op("patch", "patch") }),
            );
        }
        if v.status {
            paths.insert(
                format!("{prefix}{ns}/{}/{{name}}/status", def.plural),
                json!({ "put": op("put", "replaceStatus"), "patch": op("patch", "patchStatus") }),
            );
        }
    }
    if paths.is_empty() {
        return None;
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": { "title": "Kubernetes", "version": "v1.34.0-uplink" },
        "paths": paths,
        "components": { "schemas": {} },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::builtins;

    #[test]
    fn index_points_at_each_group_version() {
        let idx = index(&builtins());
        let url = idx["paths"]["apis/apps/v1"]["serverRelativeURL"]
            .as_str()
            .unwrap_or_default();
        assert!(url.starts_with("/openapi/v3/apis/apps/v1?hash="));
        assert!(idx["paths"].get("api/v1").is_some());
    }

    #[test]
    fn patch_operations_declare_field_validation() {
        let doc = document(&builtins(), "v3/apis/apps/v1").unwrap_or_default();
        let patch =
            &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(
            patch["x-kubernetes-group-version-kind"]["kind"],
            "Deployment"
        );
        assert_eq!(patch["parameters"][0]["name"], "fieldValidation");
        assert!(document(&builtins(), "v3/apis/apps/v9").is_none());
    }
}
