//! A reported `.status` as the hub keeps it: the agent's JSON text, checked
//! once on arrival (valid JSON, an object) and parsed again only when a merge
//! needs its fields.
//!
//! Held as text, a status takes the bytes the agent sent. Parsed into a
//! `serde_json::Value` it took up to ~18 times that (a 256 KiB `{"a":[0,…]}`
//! became ~4.5 MiB of 32-byte values), and those bytes, not the ones sent,
//! are what the hub holds until the cluster's next snapshot.

use std::sync::Arc;

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// One cluster's `.status` of one object: a JSON object, as text. Cloning
/// shares the text.
#[derive(Clone)]
pub struct Status(Arc<RawValue>);

/// Why a reported status was refused.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("status_json is not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    #[error("status_json is not a JSON object")]
    NotObject,
}

impl Status {
    /// Checks `text` (JSON, an object, nested no deeper than serde_json's
    /// recursion limit) and keeps it as it is, without parsing it into values.
    pub fn from_json(text: String) -> Result<Self, StatusError> {
        let raw = RawValue::from_string(text).map_err(StatusError::NotJson)?;
        // `from_string` trims surrounding whitespace, so an object starts
        // with its brace.
        if !raw.get().starts_with('{') {
            return Err(StatusError::NotObject);
        }
        Ok(Self(Arc::from(raw)))
    }

    /// The status of `value` (tests and benches; a non-object is kept too).
    pub fn of(value: &Value) -> Self {
        // Serializing a `Value` cannot fail: its map keys are strings.
        // (`unwrap_or_default` would give `null`, never reached).
        Self(Arc::from(
            serde_json::value::to_raw_value(value).unwrap_or_default(),
        ))
    }

    /// The JSON text.
    pub fn json(&self) -> &str {
        self.0.get()
    }

    /// Bytes of the text: what this status takes in the hub, besides a
    /// small fixed overhead.
    pub fn len(&self) -> usize {
        self.0.get().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The status parsed, for a merge. Parsing text checked on arrival with
    /// the same parser cannot fail; if it ever did, the merge sees an empty
    /// status rather than the hub stopping.
    pub fn value(&self) -> Value {
        match serde_json::from_str(self.0.get()) {
            Ok(value) => value,
            Err(error) => {
                tracing::error!(%error, "a stored status no longer parses");
                Value::Object(Map::new())
            }
        }
    }
}

impl PartialEq for Status {
    /// The same text: two statuses that differ only in field order or
    /// spacing are different (a redundant requeue, never a lost change: the
    /// writer compares the merged value with what KCP holds).
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0.get() == other.0.get()
    }
}

impl std::fmt::Debug for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.get())
    }
}

impl Serialize for Status {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keeps_objects_as_sent_and_refuses_the_rest() {
        let status = Status::from_json(r#" {"b":1,"a":[0,0]} "#.to_owned());
        let status = status.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(status.json(), r#"{"b":1,"a":[0,0]}"#);
        assert_eq!(status.value(), json!({"a": [0, 0], "b": 1}));
        for bad in ["[1]", "1", "\"s\"", "null", "{", "{} {}", ""] {
            assert!(Status::from_json(bad.to_owned()).is_err(), "{bad:?}");
        }
        let deep = format!("{}{}", "{\"a\":".repeat(200), "}".repeat(200));
        assert!(Status::from_json(deep).is_err(), "nesting is bounded");
    }

    #[test]
    fn held_size_is_the_text() {
        let text = format!(r#"{{"a":[{}0]}}"#, "0,".repeat(100_000));
        let status = Status::from_json(text.clone()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(status.len(), text.len());
    }
}
