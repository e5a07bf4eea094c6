//! What a resource watch decodes of each object: the few metadata fields the
//! pipeline (and kube's watcher) reads, and `.status`. Spec, managedFields,
//! labels, annotations and everything else are skipped by the JSON decoder
//! without being built, so a list page of large objects costs little more
//! than its statuses.

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ApiResource, DynamicObject};
use kube::core::{DynamicResourceScope, Resource};
use serde::Deserialize;
use serde_json::Value;

/// An object of a watched type, reduced to its coordinates and `.status`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(from = "Decoded")]
pub struct WatchedObject {
    /// Only `name`, `namespace`, `uid`, `generation` and `resourceVersion`
    /// (the watcher resumes from it) are filled in.
    pub metadata: ObjectMeta,
    /// `.status`, `Null` when the object has none.
    pub status: Value,
}

/// The wire shape: unknown fields are skipped, not kept.
#[derive(Deserialize)]
struct Decoded {
    #[serde(default)]
    metadata: DecodedMeta,
    #[serde(default)]
    status: Value,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DecodedMeta {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    generation: Option<i64>,
    resource_version: Option<String>,
}

impl From<Decoded> for WatchedObject {
    fn from(d: Decoded) -> Self {
        let m = d.metadata;
        Self {
            metadata: ObjectMeta {
                name: m.name,
                namespace: m.namespace,
                uid: m.uid,
                generation: m.generation,
                resource_version: m.resource_version,
                ..ObjectMeta::default()
            },
            status: d.status,
        }
    }
}

impl From<DynamicObject> for WatchedObject {
    fn from(object: DynamicObject) -> Self {
        let status = match object.data {
            Value::Object(mut fields) => fields.remove("status").unwrap_or(Value::Null),
            _ => Value::Null,
        };
        Self {
            metadata: object.metadata,
            status,
        }
    }
}

/// The same resource type information as [`DynamicObject`]'s: the type is
/// known only at run time, from discovery.
impl Resource for WatchedObject {
    type DynamicType = ApiResource;
    type Scope = DynamicResourceScope;

    fn group(dt: &ApiResource) -> Cow<'_, str> {
        dt.group.as_str().into()
    }

    fn version(dt: &ApiResource) -> Cow<'_, str> {
        dt.version.as_str().into()
    }

    fn kind(dt: &ApiResource) -> Cow<'_, str> {
        dt.kind.as_str().into()
    }

    fn api_version(dt: &ApiResource) -> Cow<'_, str> {
        dt.api_version.as_str().into()
    }

    fn plural(dt: &ApiResource) -> Cow<'_, str> {
        dt.plural.as_str().into()
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn keeps_coordinates_and_status_only() {
        let object: WatchedObject = serde_json::from_value(json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": "web", "namespace": "ns", "uid": "u", "generation": 3,
                "resourceVersion": "42", "labels": {"a": "b"},
                "managedFields": [{"manager": "m", "fieldsV1": {"f:spec": {}}}],
            },
            "spec": {"replicas": 3},
            "status": {"replicas": 1},
        }))
        .unwrap();
        assert_eq!(object.status, json!({"replicas": 1}));
        assert_eq!(object.metadata.name.as_deref(), Some("web"));
        assert_eq!(object.metadata.namespace.as_deref(), Some("ns"));
        assert_eq!(object.metadata.uid.as_deref(), Some("u"));
        assert_eq!(object.metadata.generation, Some(3));
        assert_eq!(object.metadata.resource_version.as_deref(), Some("42"));
        assert_eq!(object.metadata.labels, None);
        assert_eq!(object.metadata.managed_fields, None);
    }

    #[test]
    fn no_status_is_null() {
        let object: WatchedObject =
            serde_json::from_value(json!({"metadata": {"name": "web"}, "status": null})).unwrap();
        assert_eq!(object.status, Value::Null);
        let object: WatchedObject =
            serde_json::from_value(json!({"metadata": {"name": "web"}})).unwrap();
        assert_eq!(object.status, Value::Null);
    }
}
