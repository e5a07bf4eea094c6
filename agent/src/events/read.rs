//! One downstream `events.k8s.io/v1` Event, read into an [`Observed`]
//! event: its series key with `regarding` and `related` in upstream
//! coordinates, its note, how many occurrences it stands for and when it
//! was first and last observed.
//!
//! Which objects are synced, and where they live upstream, is the caller's
//! to say (`upstream_of`: the agent's inventory, which got it from the
//! mapping module): an Event about any other object is not read (`None`).
//! A `related` object that is not synced is left out rather than named in
//! downstream coordinates upstream.

use serde::Deserialize;
use uplink_protocol::ObjectRef;

use super::lane::{Observed, SeriesKey};

/// The object an Event is about, as the cluster names it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Regarding {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub uid: String,
}

/// Why a downstream Event cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("not an events.k8s.io/v1 Event: {0}")]
    Shape(String),
    #[error("Event {name:?} has no {field}")]
    Missing { name: String, field: &'static str },
    #[error("Event {name:?} field {field} = {value:?} is not an RFC 3339 time")]
    Time {
        name: String,
        field: &'static str,
        value: String,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Event {
    metadata: Metadata,
    #[serde(default)]
    regarding: Option<Regarding>,
    #[serde(default)]
    related: Option<Regarding>,
    #[serde(default, rename = "type")]
    type_: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    note: String,
    #[serde(default)]
    reporting_controller: String,
    #[serde(default)]
    reporting_instance: String,
    #[serde(default)]
    event_time: Option<String>,
    #[serde(default)]
    series: Option<Series>,
    #[serde(default)]
    deprecated_source: Option<Source>,
    #[serde(default)]
    deprecated_count: Option<u64>,
    #[serde(default)]
    deprecated_first_timestamp: Option<String>,
    #[serde(default)]
    deprecated_last_timestamp: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Metadata {
    #[serde(default)]
    name: String,
    #[serde(default)]
    uid: String,
    #[serde(default)]
    creation_timestamp: Option<String>,
}

/// A core/v1 Event's `source`: who reported it, before
/// `reportingController`/`reportingInstance` (kube's legacy recorder, which
/// most controllers still use, sets only this).
#[derive(Deserialize)]
struct Source {
    #[serde(default)]
    component: String,
    #[serde(default)]
    host: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Series {
    count: u64,
    last_observed_time: Option<String>,
}

/// Reads `event`; `None` when its `regarding` object is not synced.
pub fn read(
    event: &serde_json::Value,
    upstream_of: impl Fn(&Regarding) -> Option<ObjectRef>,
) -> Result<Option<Observed>, EventError> {
    let event = Event::deserialize(event).map_err(|e| EventError::Shape(e.to_string()))?;
    let name = event.metadata.name.clone();
    let missing = |field| EventError::Missing {
        name: name.clone(),
        field,
    };
    if event.metadata.uid.is_empty() {
        return Err(missing("metadata.uid"));
    }
    let Some(regarding) = &event.regarding else {
        return Err(missing("regarding"));
    };
    let Some(regarding) = upstream_of(regarding) else {
        return Ok(None);
    };
    let related = event.related.as_ref().and_then(&upstream_of);
    let time = |field: &'static str, value: &Option<String>| -> Result<Option<i64>, EventError> {
        let Some(value) = value.as_deref().filter(|v| !v.is_empty()) else {
            return Ok(None);
        };
        value
            .parse::<jiff::Timestamp>()
            .map(|t| Some(t.as_millisecond()))
            .map_err(|_| EventError::Time {
                name: name.clone(),
                field,
                value: value.to_owned(),
            })
    };
    let first_ms = match time("eventTime", &event.event_time)? {
        Some(ms) => Some(ms),
        None => match time(
            "deprecatedFirstTimestamp",
            &event.deprecated_first_timestamp,
        )? {
            Some(ms) => Some(ms),
            None => time(
                "metadata.creationTimestamp",
                &event.metadata.creation_timestamp,
            )?,
        },
    };
    let Some(first_ms) = first_ms else {
        return Err(missing("eventTime"));
    };
    let series_last = match &event.series {
        Some(series) => time("series.lastObservedTime", &series.last_observed_time)?,
        None => None,
    };
    let last_ms = match series_last {
        Some(ms) => ms,
        None => {
            time("deprecatedLastTimestamp", &event.deprecated_last_timestamp)?.unwrap_or(first_ms)
        }
    };
    let count = event
        .series
        .as_ref()
        .map(|s| s.count)
        .or(event.deprecated_count)
        .filter(|count| *count > 0)
        .unwrap_or(1);
    let (source_component, source_host) = event
        .deprecated_source
        .map(|s| (s.component, s.host))
        .unwrap_or_default();
    let or = |reporting: String, source: String| {
        if reporting.is_empty() {
            source
        } else {
            reporting
        }
    };
    Ok(Some(Observed {
        uid: event.metadata.uid,
        key: SeriesKey {
            regarding,
            related,
            type_: event.type_,
            reason: event.reason,
            action: event.action,
            reporting_controller: or(event.reporting_controller, source_component),
            reporting_instance: or(event.reporting_instance, source_host),
        },
        note: event.note,
        count,
        first_ms,
        last_ms: last_ms.max(first_ms),
    }))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The upstream reference of `web` in namespace `shop` (synced), and
    /// nothing else.
    fn synced(regarding: &Regarding) -> Option<ObjectRef> {
        (regarding.namespace.as_deref() == Some("kcp-a1b2") && regarding.name == "web").then(|| {
            ObjectRef {
                group: "apps".into(),
                version: "v1".into(),
                resource: "deployments".into(),
                kind: regarding.kind.clone(),
                workspace: "root:org:team-a".into(),
                namespace: Some("shop".into()),
                name: "web".into(),
                uid: regarding.uid.clone(),
            }
        })
    }

    fn regarding(name: &str) -> serde_json::Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "namespace": "kcp-a1b2", "name": name, "uid": "d-uid"})
    }

    fn scheduling(series: Option<serde_json::Value>) -> serde_json::Value {
        let mut event = json!({
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            "metadata": {"name": "web.17a2", "namespace": "kcp-a1b2", "uid": "e-uid",
                         "creationTimestamp": "2026-12-07T10:00:01Z"},
            "regarding": regarding("web"),
            "related": regarding("not-synced"),
            "type": "Warning",
            "reason": "FailedScheduling",
            "action": "Scheduling",
            "note": "0/3 nodes are available",
            "reportingController": "default-scheduler",
            "reportingInstance": "scheduler-1",
            "eventTime": "2026-12-07T10:00:00.123456Z",
        });
        if let Some(series) = series {
            event["series"] = series;
        }
        event
    }

    #[test]
    fn an_event_about_a_synced_object_is_read_in_upstream_coordinates() {
        let observed = read(&scheduling(None), synced);
        let Ok(Some(observed)) = observed else {
            panic!("expected an observed event, got {observed:?}");
        };
        assert_eq!(observed.uid, "e-uid");
        assert_eq!(observed.key.regarding.workspace, "root:org:team-a");
        assert_eq!(observed.key.regarding.namespace.as_deref(), Some("shop"));
        assert_eq!(observed.key.related, None, "not synced: left out");
        assert_eq!(observed.key.reason, "FailedScheduling");
        assert_eq!(observed.key.reporting_controller, "default-scheduler");
        assert_eq!(observed.count, 1);
        // 2026-12-07T10:00:00.123456Z, to the millisecond.
        assert_eq!(observed.first_ms, 1_796_637_600_123);
        assert_eq!(observed.last_ms, observed.first_ms);
    }

    #[test]
    fn a_series_counts_its_occurrences_and_its_last_observation() {
        let series = json!({"count": 42, "lastObservedTime": "2026-12-07T10:05:00.000000Z"});
        let observed = read(&scheduling(Some(series)), synced);
        let Ok(Some(observed)) = observed else {
            panic!("expected an observed event, got {observed:?}");
        };
        assert_eq!(observed.count, 42);
        assert_eq!(observed.last_ms - observed.first_ms, 299_877);
    }

    #[test]
    fn a_legacy_event_names_its_reporter_by_its_source() {
        let mut event = scheduling(None);
        for field in ["reportingController", "reportingInstance", "action"] {
            event[field] = json!("");
        }
        event["deprecatedSource"] = json!({"component": "deployment-controller", "host": "node-1"});
        let observed = read(&event, synced);
        let Ok(Some(observed)) = observed else {
            panic!("expected an observed event, got {observed:?}");
        };
        assert_eq!(observed.key.reporting_controller, "deployment-controller");
        assert_eq!(observed.key.reporting_instance, "node-1");
        assert_eq!(observed.key.action, "");
    }

    #[test]
    fn an_event_about_another_object_is_not_read() {
        let mut event = scheduling(None);
        event["regarding"]["name"] = json!("db");
        assert_eq!(read(&event, synced), Ok(None));
    }

    #[test]
    fn a_malformed_event_says_what_is_wrong() {
        assert!(matches!(
            read(&json!([1, 2]), synced),
            Err(EventError::Shape(_))
        ));
        let mut no_uid = scheduling(None);
        no_uid["metadata"]["uid"] = json!("");
        assert_eq!(
            read(&no_uid, synced),
            Err(EventError::Missing {
                name: "web.17a2".into(),
                field: "metadata.uid"
            })
        );
        let mut bad_time = scheduling(None);
        bad_time["eventTime"] = json!("yesterday");
        let error = read(&bad_time, synced).err().map(|e| e.to_string());
        assert_eq!(
            error.as_deref(),
            Some("Event \"web.17a2\" field eventTime = \"yesterday\" is not an RFC 3339 time")
        );
    }
}
