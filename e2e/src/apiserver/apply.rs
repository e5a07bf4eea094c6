//! Server-side apply with field ownership, recorded in
//! `metadata.managedFields` (FieldsV1) as kube-apiserver does.
//!
//! An apply by manager M: (1) computes the fields M's configuration sets;
//! (2) fails with 409 Conflict when another applier owns one of them and the
//! values differ (unless `force=true`, which takes them over); (3) removes
//! fields M applied before but no longer does (and a nested object that
//! leaves empty), unless another applier still owns them or something
//! inside them; (4) merges the configuration into the object (maps
//! recursively, keyed lists by their merge key, other lists replaced);
//! (5) records M's fields.
//!
//! Simplifications: only appliers own fields. Other writes (create, update,
//! non-apply patches) record no manager; they only take away an applier's
//! ownership of a field whose value they change. So an apply never conflicts
//! with a field set by `kubectl create` or a merge patch, where
//! kube-apiserver would report a conflict with that manager.

use serde_json::{Map, Value, json};

use super::object;
use super::patch;
use super::status::ApiError;

/// Who applies, and how.
#[derive(Debug, Clone)]
pub(crate) struct Applier<'a> {
    pub manager: &'a str,
    pub force: bool,
    pub api_version: &'a str,
    /// Applying to `/status`: only the status is applied and owned.
    pub status: bool,
    /// The resource has a status subresource (main applies ignore status).
    pub has_status_subresource: bool,
}

type Path = Vec<String>;

/// The FieldsV1 set of what a configuration sets.
fn field_set(config: &Map<String, Value>) -> Map<String, Value> {
    let mut set = Map::new();
    for (k, v) in config {
        let entry = match v {
            Value::Object(m) if !m.is_empty() => Value::Object(field_set(m)),
            Value::Array(items) if patch::is_set_list(k) => Value::Object(
                items
                    .iter()
                    .map(|i| (format!("v:{i}"), json!({})))
                    .collect(),
            ),
            Value::Array(items) => match patch::merge_key(k, items) {
                Some(key) if items.iter().all(|i| i.get(key).is_some()) => Value::Object(
                    items
                        .iter()
                        .map(|i| {
                            let mut inner = match i {
                                Value::Object(m) => field_set(m),
                                _ => Map::new(),
                            };
                            inner.insert(".".into(), json!({}));
                            (
                                format!("k:{}", json!({ key: i[key] })),
                                Value::Object(inner),
                            )
                        })
                        .collect(),
                ),
                _ => json!({}),
            },
            _ => json!({}),
        };
        set.insert(format!("f:{k}"), entry);
    }
    set
}

/// Leaves and keyed list items of a set, as paths.
fn paths(set: &Map<String, Value>, prefix: &mut Path, out: &mut Vec<Path>) {
    for (k, v) in set {
        if k == "." {
            continue;
        }
        prefix.push(k.clone());
        let children = v
            .as_object()
            .map(|m| m.keys().any(|c| c != "."))
            .unwrap_or(false);
        if !children || k.starts_with("k:") {
            out.push(prefix.clone());
        }
        if let Some(m) = v.as_object() {
            paths(m, prefix, out);
        }
        prefix.pop();
    }
}

/// The fields of a set that have fields of their own below them, deepest
/// first (children before their parents).
fn parent_paths(set: &Map<String, Value>, prefix: &mut Path, out: &mut Vec<Path>) {
    for (k, v) in set {
        let Some(children) = v.as_object().filter(|m| m.keys().any(|c| c != ".")) else {
            continue;
        };
        prefix.push(k.clone());
        parent_paths(children, prefix, out);
        if k.starts_with("f:") {
            out.push(prefix.clone());
        }
        prefix.pop();
    }
}

fn all_paths(set: &Value) -> Vec<Path> {
    let mut out = Vec::new();
    if let Some(m) = set.as_object() {
        paths(m, &mut Vec::new(), &mut out);
    }
    out
}

fn contains(set: &Value, path: &[String]) -> bool {
    let mut cur = set;
    for seg in path {
        match cur.get(seg) {
            Some(next) => cur = next,
            None => return false,
        }
    }
    true
}

/// Removes a path from a set, and the parents it leaves empty.
fn remove_path(set: &mut Value, path: &[String]) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    let Some(map) = set.as_object_mut() else {
        return;
    };
    if rest.is_empty() {
        map.remove(first);
        return;
    }
    if let Some(child) = map.get_mut(first) {
        remove_path(child, rest);
        if child.as_object().is_some_and(Map::is_empty) {
            map.remove(first);
        }
    }
}

fn matches_element(element: &Value, seg: &str) -> bool {
    if let Some(key) = seg.strip_prefix("k:") {
        let Ok(Value::Object(want)) = serde_json::from_str::<Value>(key) else {
            return false;
        };
        want.iter().all(|(k, v)| element.get(k) == Some(v))
    } else if let Some(val) = seg.strip_prefix("v:") {
        serde_json::from_str::<Value>(val).is_ok_and(|v| v == *element)
    } else {
        false
    }
}

/// The value at a path in an object.
fn value_at<'a>(object: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = object;
    for seg in path {
        cur = match seg.strip_prefix("f:") {
            Some(field) => cur.get(field)?,
            None => cur.as_array()?.iter().find(|e| matches_element(e, seg))?,
        };
    }
    Some(cur)
}

/// Removes the field or list element a path names from an object.
fn remove_from_object(object: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = object;
    for seg in parents {
        let next = match seg.strip_prefix("f:") {
            Some(field) => cur.get_mut(field),
            None => cur
                .as_array_mut()
                .and_then(|a| a.iter_mut().find(|e| matches_element(e, seg))),
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    match last.strip_prefix("f:") {
        Some(field) => {
            if let Some(m) = cur.as_object_mut() {
                m.remove(field);
            }
        }
        None => {
            if let Some(a) = cur.as_array_mut() {
                a.retain(|e| !matches_element(e, last));
            }
        }
    }
}

/// `.spec.containers[name="web"].image`
fn display(path: &[String]) -> String {
    let mut out = String::new();
    for seg in path {
        if let Some(f) = seg.strip_prefix("f:") {
            out.push('.');
            out.push_str(f);
        } else if let Some(k) = seg.strip_prefix("k:") {
            let parts: Vec<String> = serde_json::from_str::<Map<String, Value>>(k)
                .map(|m| m.iter().map(|(k, v)| format!("{k}={v}")).collect())
                .unwrap_or_default();
            out.push_str(&format!("[{}]", parts.join(",")));
        } else if let Some(v) = seg.strip_prefix("v:") {
            out.push_str(&format!("[{v}]"));
        }
    }
    out
}

fn entries(object: &Value) -> Vec<Value> {
    object
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn is_same_slot(entry: &Value, manager: &str, status: bool) -> bool {
    entry.get("manager").and_then(Value::as_str) == Some(manager)
        && entry.get("operation").and_then(Value::as_str) == Some("Apply")
        && (entry.get("subresource").and_then(Value::as_str) == Some("status")) == status
}

fn conflict_error(conflicts: &[(String, String)]) -> ApiError {
    let message = match conflicts {
        [(manager, field)] => {
            format!("Apply failed with 1 conflict: conflict with {manager:?}: {field}")
        }
        many => {
            let lines: Vec<String> = many
                .iter()
                .map(|(m, f)| format!("conflict with {m:?}: {f}"))
                .collect();
            format!(
                "Apply failed with {} conflicts: {}",
                many.len(),
                lines.join("\n")
            )
        }
    };
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|(m, f)| json!({ "reason": "FieldManagerConflict", "message": format!("conflict with {m:?}"), "field": f }))
        .collect();
    ApiError::apply_conflict(message, Value::Array(causes))
}

/// Applies `config` (apiVersion and kind already checked; the caller checks
/// the name of the result) to `live` (`None` when creating) and returns the
/// object to write, with managedFields.
pub(crate) fn apply(
    live: Option<&Value>,
    config: &Value,
    who: &Applier<'_>,
) -> Result<Value, ApiError> {
    let Value::Object(config_map) = config else {
        return Err(ApiError::bad_request(
            "the apply configuration must be an object",
        ));
    };
    let mut owned_config = config_map.clone();
    // What the configuration claims: never identity or system metadata.
    if let Some(Value::Object(meta)) = owned_config.get_mut("metadata") {
        for f in [
            "name",
            "namespace",
            "uid",
            "resourceVersion",
            "generation",
            "creationTimestamp",
            "managedFields",
            "selfLink",
        ] {
            meta.remove(f);
        }
        if meta.is_empty() {
            owned_config.remove("metadata");
        }
    }
    owned_config.remove("apiVersion");
    owned_config.remove("kind");
    if who.status {
        owned_config.retain(|k, _| k == "status");
    } else if who.has_status_subresource {
        owned_config.remove("status");
    }
    let fields = Value::Object(field_set(&owned_config));
    let mut object = live.cloned().unwrap_or_else(|| json!({}));
    let mut managed = entries(&object);

    // Conflicts with other appliers that own a field with another value.
    let mut conflicts = Vec::new();
    for path in all_paths(&fields)
        .iter()
        .filter(|p| !p.last().is_some_and(|s| s.starts_with("k:")))
    {
        for entry in managed.iter_mut() {
            let other = entry
                .get("manager")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            if is_same_slot(entry, who.manager, who.status)
                || entry.get("operation").and_then(Value::as_str) != Some("Apply")
            {
                continue;
            }
            let Some(set) = entry.get_mut("fieldsV1") else {
                continue;
            };
            if !contains(set, path) || value_at(&object, path) == value_at(config, path) {
                continue;
            }
            if who.force {
                remove_path(set, path);
            } else {
                conflicts.push((other, display(path)));
            }
        }
    }
    if !conflicts.is_empty() {
        return Err(conflict_error(&conflicts));
    }

    // Fields this manager applied before and no longer does go, unless another applier owns them.
    let previous = managed
        .iter()
        .find(|e| is_same_slot(e, who.manager, who.status))
        .and_then(|e| e.get("fieldsV1"))
        .cloned();
    if let Some(previous) = &previous {
        let given_up = |path: &[String]| {
            !contains(&fields, path)
                && !managed
                    .iter()
                    .filter(|e| !is_same_slot(e, who.manager, who.status))
                    .filter_map(|e| e.get("fieldsV1"))
                    .any(|s| contains(s, path))
        };
        for path in all_paths(previous) {
            if given_up(&path) {
                remove_from_object(&mut object, &path);
            }
        }
        // A nested object (or keyed list) the manager no longer applies at
        // all goes whole rather than staying as `{}` (`[]`): kube-apiserver's
        // structured-merge-diff
        // counts the struct field above an owned field as owned too
        // (`EnsureNamedFieldsAreMembers`). What others set inside it stays
        // (there, its writers own it), so only an emptied object goes.
        let mut parents = Vec::new();
        if let Some(set) = previous.as_object() {
            parent_paths(set, &mut Vec::new(), &mut parents);
        }
        for path in parents {
            let emptied = value_at(&object, &path).is_some_and(|v| match v {
                Value::Object(m) => m.is_empty(),
                Value::Array(a) => a.is_empty(),
                _ => false,
            });
            if emptied && given_up(&path) {
                remove_from_object(&mut object, &path);
            }
        }
    }

    patch::apply(&mut object, config);

    // Record ownership; an unchanged set keeps its entry (and time) as is.
    if previous.as_ref() != Some(&fields) {
        managed.retain(|e| !is_same_slot(e, who.manager, who.status));
        let mut entry = json!({
            "manager": who.manager,
            "operation": "Apply",
            "apiVersion": who.api_version,
            "time": object::now_rfc3339(),
            "fieldsType": "FieldsV1",
            "fieldsV1": fields,
        });
        if who.status {
            entry["subresource"] = json!("status");
        }
        managed.push(entry);
    }
    managed.retain(|e| {
        e.get("fieldsV1")
            .and_then(Value::as_object)
            .is_none_or(|m| !m.is_empty())
    });
    object::set_meta(&mut object, "managedFields", Some(Value::Array(managed)));
    Ok(object)
}

/// After a non-apply write: appliers lose the fields whose value changed.
pub(crate) fn release_changed(before: &Value, after: &mut Value) {
    let mut managed = entries(after);
    if managed.is_empty() {
        return;
    }
    let mut changed = false;
    for entry in &mut managed {
        if entry.get("operation").and_then(Value::as_str) != Some("Apply") {
            continue;
        }
        let Some(set) = entry.get_mut("fieldsV1") else {
            continue;
        };
        for path in all_paths(set) {
            if path.last().is_some_and(|s| s.starts_with("k:")) {
                continue;
            }
            if value_at(before, &path) != value_at(after, &path) {
                remove_path(set, &path);
                changed = true;
            }
        }
    }
    if changed {
        managed.retain(|e| {
            e.get("fieldsV1")
                .and_then(Value::as_object)
                .is_none_or(|m| !m.is_empty())
        });
        object::set_meta(after, "managedFields", Some(Value::Array(managed)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(manager: &str, force: bool) -> Applier<'_> {
        Applier {
            manager,
            force,
            api_version: "v1",
            status: false,
            has_status_subresource: false,
        }
    }

    fn cm(data: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": data})
    }

    #[test]
    fn another_manager_conflicts_unless_forced() {
        let live = apply(None, &cm(json!({"mode": "one"})), &who("a", false))
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(
            live["metadata"]["managedFields"][0]["fieldsV1"],
            json!({"f:data": {"f:mode": {}}})
        );
        let err = apply(Some(&live), &cm(json!({"mode": "two"})), &who("b", false)).err();
        assert_eq!(
            err.map(|e| (e.code, e.message)),
            Some((
                409,
                "Apply failed with 1 conflict: conflict with \"a\": .data.mode".to_string()
            ))
        );
        // Same value: shared ownership, no conflict.
        assert!(apply(Some(&live), &cm(json!({"mode": "one"})), &who("b", false)).is_ok());
        let forced = apply(Some(&live), &cm(json!({"mode": "two"})), &who("b", true))
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(forced["data"]["mode"], "two");
        let managers: Vec<&str> = forced["metadata"]["managedFields"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["manager"].as_str())
            .collect();
        assert_eq!(managers, ["b"]);
    }

    #[test]
    fn fields_dropped_from_the_configuration_are_removed() {
        let live = apply(None, &cm(json!({"a": "1", "b": "2"})), &who("m", false))
            .unwrap_or_else(|e| panic!("{e:?}"));
        let next = apply(Some(&live), &cm(json!({"a": "1"})), &who("m", false))
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(next["data"], json!({"a": "1"}));
    }

    #[test]
    fn a_nested_object_a_manager_stops_applying_goes_unless_something_else_is_in_it() {
        let obj = |spec: Value| json!({"apiVersion": "v1", "kind": "X", "metadata": {"name": "x"}, "spec": spec});
        let live = apply(
            None,
            &obj(json!({"a": {"x": 1}, "b": {"x": 1}, "conditions": [{"type": "T"}]})),
            &who("m", false),
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        // Someone else's non-apply write puts a field inside `b`.
        let mut written = live.clone();
        written["spec"]["b"]["y"] = json!(2);
        let next = apply(Some(&written), &obj(json!({})), &who("m", false))
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(next["spec"], json!({"b": {"y": 2}}));
        // Giving up everything under metadata leaves the object's identity.
        let labelled = apply(
            None,
            &json!({"apiVersion": "v1", "kind": "X", "metadata": {"name": "x", "labels": {"a": "1"}}}),
            &who("m", false),
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        let unlabelled = apply(
            Some(&labelled),
            &json!({"apiVersion": "v1", "kind": "X", "metadata": {"name": "x"}}),
            &who("m", false),
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(unlabelled["metadata"]["name"], "x");
        assert_eq!(unlabelled["metadata"].get("labels"), None);
    }

    #[test]
    fn keyed_list_items_are_owned_by_key() {
        let d = |image: &str| json!({"spec": {"containers": [{"name": "web", "image": image}]}});
        let live = apply(None, &d("a"), &who("m", false)).unwrap_or_else(|e| panic!("{e:?}"));
        let err = apply(Some(&live), &d("b"), &who("n", false))
            .err()
            .map(|e| e.message);
        assert_eq!(
            err.as_deref(),
            Some(
                "Apply failed with 1 conflict: conflict with \"m\": .spec.containers[name=\"web\"].image"
            )
        );
    }

    #[test]
    fn other_writes_release_changed_fields() {
        let live = apply(None, &cm(json!({"mode": "one"})), &who("a", false))
            .unwrap_or_else(|e| panic!("{e:?}"));
        let mut updated = live.clone();
        updated["data"]["mode"] = json!("edited");
        release_changed(&live, &mut updated);
        assert_eq!(updated["metadata"]["managedFields"], json!([]));
        assert!(
            apply(
                Some(&updated),
                &cm(json!({"mode": "three"})),
                &who("b", false)
            )
            .is_ok()
        );
    }
}
