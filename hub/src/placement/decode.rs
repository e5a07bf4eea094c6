//! How a placed object is read from KCP's JSON, and how the hub tells that
//! a watch event changed nothing a cluster's placement reads.
//!
//! Most watch events of a placed object are the hub's own status writes:
//! with several replicas each sees every other's too. So the read is
//! written for them: the status and `managedFields` are skipped as they are
//! read (never built), and no field goes through serde's `flatten`, which
//! buffers the whole object once more before reading it. Then
//! [`PlacedObject::fingerprint`] lets the placement index see that an
//! event changed only the resourceVersion (a status write, seen through the
//! object) and stop there, before any cluster's placement is touched.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;

use super::source::{Metadata, PlacedObject};

/// A map key, borrowed from the input where it can be.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// A map that may be `null` (as Kubernetes writes an empty one at times).
fn map_or_null<'de, A: MapAccess<'de>>(map: &mut A) -> Result<BTreeMap<String, String>, A::Error> {
    Ok(map
        .next_value::<Option<BTreeMap<String, String>>>()?
        .unwrap_or_default())
}

impl<'de> Deserialize<'de> for Metadata {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MetadataVisitor;
        impl<'de> Visitor<'de> for MetadataVisitor {
            type Value = Metadata;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object's metadata")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Metadata, A::Error> {
                let mut metadata = Metadata::default();
                let mut name = None;
                while let Some(Key(key)) = map.next_key()? {
                    match key.as_ref() {
                        "name" => name = Some(map.next_value::<String>()?),
                        "namespace" => metadata.namespace = map.next_value()?,
                        "uid" => {
                            metadata.uid = map.next_value::<Option<String>>()?.unwrap_or_default()
                        }
                        "resourceVersion" => metadata.resource_version = map.next_value()?,
                        "labels" => metadata.labels = map_or_null(&mut map)?,
                        "annotations" => metadata.annotations = map_or_null(&mut map)?,
                        "finalizers" => {
                            metadata.finalizers =
                                map.next_value::<Option<Vec<String>>>()?.unwrap_or_default();
                        }
                        "deletionTimestamp" => metadata.deletion_timestamp = map.next_value()?,
                        "managedFields" => {
                            map.next_value::<IgnoredAny>()?;
                        }
                        _ => {
                            let value: Value = map.next_value()?;
                            metadata.other.insert(key.into_owned(), value);
                        }
                    }
                }
                metadata.name = name.ok_or_else(|| de::Error::missing_field("name"))?;
                Ok(metadata)
            }
        }
        deserializer.deserialize_map(MetadataVisitor)
    }
}

impl<'de> Deserialize<'de> for PlacedObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = PlacedObject;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a Kubernetes object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PlacedObject, A::Error> {
                let mut object = PlacedObject::default();
                let mut metadata = None;
                while let Some(Key(key)) = map.next_key()? {
                    match key.as_ref() {
                        "kind" => object.kind = map.next_value()?,
                        "metadata" => metadata = Some(map.next_value::<Metadata>()?),
                        "status" => {
                            map.next_value::<IgnoredAny>()?;
                        }
                        _ => {
                            let value: Value = map.next_value()?;
                            object.rest.insert(key.into_owned(), value);
                        }
                    }
                }
                object.metadata = metadata.ok_or_else(|| de::Error::missing_field("metadata"))?;
                Ok(object)
            }
        }
        deserializer.deserialize_map(ObjectVisitor)
    }
}

impl PlacedObject {
    /// A fingerprint of everything but the resourceVersion: two versions of
    /// an object with equal fingerprints place, send down and hold the same
    /// (the status and `managedFields` are not read at all). SipHash-1-3
    /// with fixed keys over 64 bits: two different objects share one about
    /// once in 2^64 comparisons.
    pub fn fingerprint(&self) -> u64 {
        let mut hasher = DefaultHasher::new();
        self.kind.hash(&mut hasher);
        let metadata = &self.metadata;
        metadata.name.hash(&mut hasher);
        metadata.namespace.hash(&mut hasher);
        metadata.uid.hash(&mut hasher);
        metadata.labels.hash(&mut hasher);
        metadata.annotations.hash(&mut hasher);
        metadata.finalizers.hash(&mut hasher);
        metadata.deletion_timestamp.hash(&mut hasher);
        hash_map(&metadata.other, &mut hasher);
        hash_map(&self.rest, &mut hasher);
        hasher.finish()
    }
}

fn hash_map(map: &serde_json::Map<String, Value>, hasher: &mut impl Hasher) {
    map.len().hash(hasher);
    for (key, value) in map {
        key.hash(hasher);
        hash_value(value, hasher);
    }
}

/// Hashes a JSON value with its type, so `1`, `"1"` and `[1]` differ.
fn hash_value(value: &Value, hasher: &mut impl Hasher) {
    match value {
        Value::Null => 0u8.hash(hasher),
        Value::Bool(b) => (1u8, *b).hash(hasher),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                (2u8, u).hash(hasher);
            } else if let Some(i) = n.as_i64() {
                (3u8, i).hash(hasher);
            } else {
                (4u8, n.as_f64().map(f64::to_bits)).hash(hasher);
            }
        }
        Value::String(s) => (5u8, s).hash(hasher),
        Value::Array(items) => {
            (6u8, items.len()).hash(hasher);
            for item in items {
                hash_value(item, hasher);
            }
        }
        Value::Object(map) => {
            7u8.hash(hasher);
            hash_map(map, hasher);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn read(value: Value) -> PlacedObject {
        serde_json::from_str(&value.to_string())
            .unwrap_or_else(|error| panic!("{value} does not read: {error}"))
    }

    fn deployment(replicas: u64, resource_version: &str, ready: u64) -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": "web",
                "namespace": "shop",
                "uid": "u-1",
                "resourceVersion": resource_version,
                "generation": 2,
                "labels": {"state.workload.kcp.io/k1": "Sync"},
                "annotations": null,
                "managedFields": [{"manager": "uplink-hub", "operation": "Update"}],
            },
            "spec": {"replicas": replicas, "ratio": 0.5},
            "status": {"readyReplicas": ready},
        })
    }

    #[test]
    fn the_status_and_managed_fields_are_not_kept_and_the_rest_is() {
        let object = read(deployment(3, "10", 1));
        assert_eq!(object.kind.as_deref(), Some("Deployment"));
        assert_eq!(object.metadata.name, "web");
        assert_eq!(object.metadata.namespace.as_deref(), Some("shop"));
        assert_eq!(object.metadata.resource_version.as_deref(), Some("10"));
        assert!(
            object.metadata.annotations.is_empty(),
            "null reads as empty"
        );
        assert!(!object.metadata.other.contains_key("managedFields"));
        assert_eq!(object.metadata.other["generation"], 2);
        assert!(!object.rest.contains_key("status"));
        assert_eq!(object.rest["spec"]["replicas"], 3);
        assert_eq!(object.rest["apiVersion"], "apps/v1");
    }

    #[test]
    fn a_read_from_text_equals_the_derived_read_of_the_same_fields() {
        // Escaped keys and values come as owned strings, not borrowed.
        let text = r#"{"kind":"ConfigMap","metadata":{"name":"a\"b","labels":{"x\u0041":"y"}},"data":{"k":"v"}}"#;
        let object: PlacedObject = serde_json::from_str(text).unwrap_or_default();
        assert_eq!(object.metadata.name, "a\"b");
        assert_eq!(
            object.metadata.labels.get("xA").map(String::as_str),
            Some("y")
        );
        assert_eq!(object.rest["data"]["k"], "v");
    }

    #[test]
    fn an_object_without_metadata_or_name_is_refused_by_name() {
        let error = serde_json::from_str::<PlacedObject>(r#"{"kind":"Pod"}"#)
            .err()
            .map(|e| e.to_string());
        assert!(error.is_some_and(|e| e.contains("metadata")));
        let error = serde_json::from_str::<PlacedObject>(r#"{"metadata":{"namespace":"a"}}"#)
            .err()
            .map(|e| e.to_string());
        assert!(error.is_some_and(|e| e.contains("name")));
    }

    #[test]
    fn a_status_write_keeps_the_fingerprint_and_any_other_change_moves_it() {
        let base = read(deployment(3, "10", 1)).fingerprint();
        assert_eq!(
            read(deployment(3, "11", 2)).fingerprint(),
            base,
            "only the status and the resourceVersion changed"
        );
        assert_ne!(read(deployment(4, "12", 2)).fingerprint(), base, "spec");
        let mut relabelled = deployment(3, "13", 1);
        relabelled["metadata"]["labels"]["state.workload.kcp.io/k2"] = json!("Sync");
        assert_ne!(read(relabelled).fingerprint(), base, "labels");
        let mut deleting = deployment(3, "14", 1);
        deleting["metadata"]["deletionTimestamp"] = json!("2026-12-08T00:00:00Z");
        assert_ne!(read(deleting).fingerprint(), base, "deletion");
        let mut finalized = deployment(3, "15", 1);
        finalized["metadata"]["finalizers"] = json!(["uplink.io/k1"]);
        assert_ne!(read(finalized).fingerprint(), base, "finalizers");
        let mut typed = deployment(3, "16", 1);
        typed["spec"]["replicas"] = json!("3");
        assert_ne!(read(typed).fingerprint(), base, "a number became a string");
    }
}
