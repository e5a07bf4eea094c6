//! What one field manager owns of an object's status, read back from the
//! object's `metadata.managedFields`: the status it last server-side
//! applied to `/status`, as far as the live object still holds it (what
//! client-go's `Extract…Status` functions compute).
//!
//! Under server-side apply the hub diffs against this, never against the
//! whole status KCP holds: fields other managers own are none of its
//! business, and applying them would make the hub their co-owner.
//!
//! Ownership is read from FieldsV1 (`f:<field>` for a field, `k:<json>` for
//! an associative list item by its keys, `v:<json>` for a set item, `.` for
//! the item itself); an owned field without owned children is taken whole.

use serde_json::{Map, Value};

/// The status `manager` owns through applies to `/status` (`None` when it
/// owns no status field).
pub fn applied_status(
    status: Option<&Value>,
    managed_fields: &[Value],
    manager: &str,
) -> Option<Value> {
    let entry = managed_fields.iter().find(|entry| {
        entry.get("manager").and_then(Value::as_str) == Some(manager)
            && entry.get("operation").and_then(Value::as_str) == Some("Apply")
            && entry.get("subresource").and_then(Value::as_str) == Some("status")
    })?;
    let owned = entry.pointer("/fieldsV1/f:status")?.as_object()?;
    extract(status?, owned)
}

/// The part of `value` that the field set `owned` names.
fn extract(value: &Value, owned: &Map<String, Value>) -> Option<Value> {
    if !has_children(owned) {
        return Some(value.clone());
    }
    match value {
        Value::Object(fields) => {
            let mut out = Map::new();
            for (segment, children) in owned {
                let Some(name) = segment.strip_prefix("f:") else {
                    continue;
                };
                let (Some(field), Some(children)) = (fields.get(name), children.as_object()) else {
                    continue;
                };
                if let Some(part) = extract(field, children) {
                    out.insert(name.to_owned(), part);
                }
            }
            Some(Value::Object(out))
        }
        Value::Array(items) => {
            // Items in the live list's order.
            let kept = items
                .iter()
                .filter_map(|item| {
                    let children = owned
                        .iter()
                        .find(|(segment, _)| names_item(segment, item))?
                        .1
                        .as_object()?;
                    extract(item, children)
                })
                .collect();
            Some(Value::Array(kept))
        }
        // A scalar where the set expects children: the set is stale.
        _ => None,
    }
}

/// Whether a FieldsV1 node names anything below itself.
fn has_children(set: &Map<String, Value>) -> bool {
    set.keys().any(|k| k != ".")
}

/// Whether a list path segment (`k:{"type":"Ready"}` or `v:"a"`) names `item`.
fn names_item(segment: &str, item: &Value) -> bool {
    if let Some(keys) = segment.strip_prefix("k:") {
        let Ok(Value::Object(keys)) = serde_json::from_str::<Value>(keys) else {
            return false;
        };
        keys.iter().all(|(k, v)| item.get(k) == Some(v))
    } else if let Some(value) = segment.strip_prefix("v:") {
        serde_json::from_str::<Value>(value).is_ok_and(|v| v == *item)
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn entry(manager: &str, operation: &str, subresource: Option<&str>, status: Value) -> Value {
        let mut entry = json!({
            "manager": manager,
            "operation": operation,
            "apiVersion": "apps/v1",
            "fieldsType": "FieldsV1",
            "fieldsV1": {"f:status": status},
        });
        if let Some(subresource) = subresource {
            entry["subresource"] = json!(subresource);
        }
        entry
    }

    #[test]
    fn takes_only_the_managers_own_fields_and_conditions() {
        let status = json!({
            "replicas": 2,
            "readyReplicas": 1,
            "conditions": [
                {"type": "Available", "status": "True", "reason": "Ok"},
                {"type": "External", "status": "False", "reason": "Theirs"},
            ],
        });
        let managed = [
            entry(
                "other",
                "Apply",
                Some("status"),
                json!({"f:readyReplicas": {}, "f:conditions": {
                    "k:{\"type\":\"External\"}": {".": {}, "f:type": {}, "f:status": {}, "f:reason": {}}
                }}),
            ),
            // The same manager's spec applies and updates are other slots.
            entry(
                "uplink-hub",
                "Update",
                Some("status"),
                json!({"f:readyReplicas": {}}),
            ),
            entry("uplink-hub", "Apply", None, json!({"f:readyReplicas": {}})),
            entry(
                "uplink-hub",
                "Apply",
                Some("status"),
                json!({"f:replicas": {}, "f:conditions": {
                    "k:{\"type\":\"Available\"}": {".": {}, "f:type": {}, "f:status": {}}
                }}),
            ),
        ];
        assert_eq!(
            applied_status(Some(&status), &managed, "uplink-hub"),
            Some(json!({
                "replicas": 2,
                "conditions": [{"type": "Available", "status": "True"}],
            }))
        );
        assert_eq!(applied_status(Some(&status), &managed, "nobody"), None);
    }

    #[test]
    fn leaves_are_taken_whole_and_vanished_fields_are_skipped() {
        let status = json!({"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}, "tags": ["a", "b"]});
        let managed = [entry(
            "m",
            "Apply",
            Some("status"),
            json!({"f:loadBalancer": {"f:ingress": {}}, "f:gone": {}, "f:tags": {"v:\"b\"": {}}}),
        )];
        assert_eq!(
            applied_status(Some(&status), &managed, "m"),
            Some(json!({"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}, "tags": ["b"]}))
        );
        assert_eq!(applied_status(None, &managed, "m"), None);
    }
}
