//! events.k8s.io/v1 Events: the same objects as core/v1 Events, in another
//! shape. kube-apiserver stores one Event type and converts between the two
//! versions field by field (`regarding` is `involvedObject`, `note` is
//! `message`, ...), so an Event written through either API is read through
//! both. Here objects are stored in the core shape; this module converts on
//! the way in (validating as the events.k8s.io/v1 strategy does) and out.

use serde_json::{Map, Value, json};

use super::object::meta_str;
use super::status::{ApiError, Cause};

/// events.k8s.io/v1 field → core/v1 field, for the fields whose names differ.
const RENAMED: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
    ("reportingController", "reportingComponent"),
];

/// The longest `note` kube accepts (1 kB).
const NOTE_LIMIT: usize = 1024;

/// The longest `action`, `reason` and `reportingInstance` kube accepts.
const FIELD_LIMIT: usize = 128;

fn rename(object: Value, from_events: bool) -> Value {
    let Value::Object(map) = object else {
        return object;
    };
    let mut out = Map::with_capacity(map.len());
    for (key, value) in map {
        let renamed = RENAMED.iter().find_map(|(events, core)| {
            let (from, to) = if from_events {
                (events, core)
            } else {
                (core, events)
            };
            (*from == key).then(|| (*to).to_string())
        });
        out.insert(renamed.unwrap_or(key), value);
    }
    Value::Object(out)
}

/// An events.k8s.io/v1 Event as it is stored (core/v1), after the checks
/// the events.k8s.io/v1 strategy makes.
pub(crate) fn to_core(event: Value) -> Result<Value, ApiError> {
    let causes = validate(&event);
    if !causes.is_empty() {
        let name = meta_str(&event, "name").unwrap_or_default().to_string();
        return Err(ApiError::invalid("events.k8s.io", "Event", &name, causes));
    }
    let mut core = rename(event, true);
    core["apiVersion"] = json!("v1");
    core["kind"] = json!("Event");
    Ok(core)
}

/// A stored core/v1 Event in the events.k8s.io shape of `api_version`.
pub(crate) fn from_core(core: &Value, api_version: &str) -> Value {
    let mut event = rename(core.clone(), false);
    event["apiVersion"] = json!(api_version);
    event["kind"] = json!("Event");
    event
}

/// What kube's `ValidateEventCreate` requires of an events.k8s.io/v1 Event.
fn validate(event: &Value) -> Vec<Cause> {
    let text = |field: &str| event.get(field).and_then(Value::as_str).unwrap_or_default();
    let mut causes = Vec::new();
    if event.get("eventTime").is_none_or(Value::is_null) {
        causes.push(Cause::required("eventTime", ""));
    }
    for field in [
        "reportingController",
        "reportingInstance",
        "action",
        "reason",
    ] {
        let value = text(field);
        if value.is_empty() {
            causes.push(Cause::required(field, ""));
        } else if field != "reportingController" && value.len() > FIELD_LIMIT {
            causes.push(Cause::invalid(
                field,
                value,
                &format!("can have at most {FIELD_LIMIT} characters"),
            ));
        }
    }
    let kind = text("type");
    if kind != "Normal" && kind != "Warning" {
        causes.push(Cause {
            reason: "FieldValueNotSupported",
            field: "type".into(),
            message: format!(
                "Unsupported value: {}: supported values: \"Normal\", \"Warning\"",
                Value::from(kind)
            ),
        });
    }
    let note = text("note");
    if note.len() > NOTE_LIMIT {
        causes.push(Cause {
            reason: "FieldValueTooLong",
            field: "note".into(),
            message: format!("Too long: may not be more than {NOTE_LIMIT} bytes"),
        });
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> Value {
        json!({
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "e1", "namespace": "ns"},
            "eventTime": "2024-01-01T00:00:00.000000Z",
            "reportingController": "uplink.io/test", "reportingInstance": "i1",
            "action": "Sync", "reason": "Synced", "type": "Normal",
            "regarding": {"kind": "Pod", "name": "p"}, "note": "hello",
            "deprecatedCount": 2,
        })
    }

    #[test]
    fn converts_both_ways() {
        let core = to_core(event()).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(core["apiVersion"], "v1");
        assert_eq!(core["involvedObject"]["name"], "p");
        assert_eq!(core["message"], "hello");
        assert_eq!(core["reportingComponent"], "uplink.io/test");
        assert_eq!(core["count"], 2);
        assert!(core.get("note").is_none());
        let back = from_core(&core, "events.k8s.io/v1");
        assert_eq!(back, event());
    }

    #[test]
    fn missing_required_fields_are_invalid() {
        let mut e = event();
        if let Some(m) = e.as_object_mut() {
            m.remove("eventTime");
            m.remove("action");
        }
        e["type"] = json!("Odd");
        let err = to_core(e).err().unwrap_or_else(|| panic!("invalid"));
        assert_eq!(err.code, 422);
        let fields: Vec<String> = err.to_status()["details"]["causes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["field"].as_str().map(str::to_string))
            .collect();
        assert_eq!(fields, ["eventTime", "action", "type"]);
    }
}
