//! What one event series becomes in KCP: its name, derived from what names
//! the series so every write of it lands on the same Event; the
//! `events.k8s.io/v1` Event a first write creates; the `series` patch a
//! later one sends. kube-apiserver keeps an Event immutable except
//! `series`, and refuses on create what `events.k8s.io/v1` deprecated
//! (`count`, `firstTimestamp`, `source`, …), so the body is built to its
//! create validation: every string within its length limit, defaults for
//! what it requires and a report may leave empty.

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use uplink_protocol::{EventReport, ObjectRef, truncate_utf8};

use super::EventSeries;

/// The annotation naming the cluster an Event came from.
pub const CLUSTER_ANNOTATION: &str = "uplink.io/cluster";
/// The reporting controller of a report that names none (or none that
/// kube-apiserver takes: it must be a qualified name).
pub const DEFAULT_REPORTING_CONTROLLER: &str = "uplink.io/agent";
/// The namespace of an Event about a cluster-scoped object.
pub const CLUSTER_SCOPED_NAMESPACE: &str = "default";

/// Longest Kubernetes object name (a DNS subdomain).
const MAX_NAME: usize = 253;
/// Hex digits of the series hash in the name.
const HASH_HEX: usize = 16;
/// kube-apiserver's limits on an Event's strings, in bytes.
const MAX_REASON: usize = 128;
const MAX_ACTION: usize = 128;
const MAX_REPORTING_INSTANCE: usize = 128;
const MAX_NOTE: usize = 1024;

/// The Event name of `cluster`'s series `report`:
/// `<regarding name, fit for a DNS subdomain and cut>.<16 hex digits>`,
/// the digits from a SHA-256 of everything that makes the series this
/// series (so two clusters, or two series of one object, never share an
/// Event, and the same series always finds its own).
pub fn event_name(cluster: &str, report: &EventReport) -> String {
    let mut hash = Sha256::new();
    put(&mut hash, cluster.as_bytes());
    put_object(&mut hash, &report.regarding);
    match &report.related {
        Some(related) => {
            put(&mut hash, b"related");
            put_object(&mut hash, related);
        }
        None => put(&mut hash, b"unrelated"),
    }
    for value in [
        &report.event_type,
        &report.reason,
        &report.action,
        &report.reporting_controller,
        &report.reporting_instance,
    ] {
        put(&mut hash, value.as_bytes());
    }
    put(&mut hash, &report.first_ms.to_le_bytes());
    let digest = hash.finalize();
    let hex: String = digest
        .iter()
        .take(HASH_HEX / 2)
        .map(|byte| format!("{byte:02x}"))
        .collect();
    let mut prefix = dns_subdomain(&report.regarding.name);
    // The hash and its dot must fit; the prefix is ASCII by now.
    prefix.truncate(MAX_NAME - HASH_HEX - 1);
    let prefix = prefix.trim_end_matches(['-', '.']);
    if prefix.is_empty() {
        format!("event.{hex}")
    } else {
        format!("{prefix}.{hex}")
    }
}

/// Adds one field to a series hash, length-prefixed: no two different
/// lists of fields hash alike.
fn put(hash: &mut Sha256, value: &[u8]) {
    hash.update((value.len() as u64).to_le_bytes());
    hash.update(value);
}

/// Adds what names an object (with its downstream uid) to a series hash.
fn put_object(hash: &mut Sha256, object: &ObjectRef) {
    put(hash, object.group.as_bytes());
    put(hash, object.resource.as_bytes());
    put(hash, object.workspace.as_bytes());
    match &object.namespace {
        Some(namespace) => {
            put(hash, b"namespaced");
            put(hash, namespace.as_bytes());
        }
        None => put(hash, b"cluster-scoped"),
    }
    put(hash, object.name.as_bytes());
    put(hash, object.uid.as_bytes());
}

/// `name` as a DNS subdomain (what an Event's name must be): lowercase,
/// each character outside `[a-z0-9.-]` a `-`, no label empty or starting
/// or ending with `-`. Most object names are one already and stay as
/// they are; the rest (path segments may hold `:`, `_`, `~`, capitals)
/// keep a recognizable prefix, the hash keeps them apart.
fn dns_subdomain(name: &str) -> String {
    name.split('.')
        .map(|label| {
            label
                .chars()
                .map(|c| match c.to_ascii_lowercase() {
                    c @ ('a'..='z' | '0'..='9' | '-') => c,
                    _ => '-',
                })
                .collect::<String>()
                .trim_matches('-')
                .to_owned()
        })
        .filter(|label| !label.is_empty())
        .collect::<Vec<_>>()
        .join(".")
}

/// The Event's namespace: the regarding object's, `default` for a
/// cluster-scoped one (kube-apiserver takes an Event about a cluster-scoped
/// object only in `default` or `kube-system`).
pub fn event_namespace(report: &EventReport) -> &str {
    report
        .regarding
        .namespace
        .as_deref()
        .unwrap_or(CLUSTER_SCOPED_NAMESPACE)
}

/// `ms` since the Unix epoch as a Kubernetes MicroTime
/// (`2006-01-02T15:04:05.000000Z`); `None` before 1970 or after 9999.
pub fn micro_time(ms: i64) -> Option<String> {
    // 9999-12-31T23:59:59.999Z: RFC 3339 has four-digit years.
    const LAST: i64 = 253_402_300_799_999;
    if !(0..=LAST).contains(&ms) {
        return None;
    }
    let time = jiff::Timestamp::from_millisecond(ms).ok()?;
    let micros = ms.rem_euclid(1000) * 1000;
    Some(format!(
        "{}.{micros:06}Z",
        time.strftime("%Y-%m-%dT%H:%M:%S")
    ))
}

/// The `events.k8s.io/v1` Event a first write of `series` creates.
pub fn event_manifest(series: &EventSeries) -> Value {
    let report = &series.report;
    let reason = cut(&report.reason, MAX_REASON);
    let action = if report.action.is_empty() {
        reason.clone()
    } else {
        cut(&report.action, MAX_ACTION)
    };
    let controller = if is_qualified_name(&report.reporting_controller) {
        report.reporting_controller.as_str()
    } else {
        DEFAULT_REPORTING_CONTROLLER
    };
    let instance = if report.reporting_instance.is_empty() {
        cut(&series.cluster, MAX_REPORTING_INSTANCE)
    } else {
        cut(&report.reporting_instance, MAX_REPORTING_INSTANCE)
    };
    let mut event = json!({
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {
            "name": series.name(),
            "namespace": event_namespace(report),
            "annotations": {CLUSTER_ANNOTATION: series.cluster},
        },
        "eventTime": micro_time(report.first_ms),
        "reportingController": controller,
        "reportingInstance": instance,
        "action": action,
        "reason": reason,
        "type": report.event_type,
        "regarding": reference(&report.regarding, &series.regarding_uid),
    });
    if let Some(series) = series_value(report) {
        event["series"] = series;
    }
    if !report.note.is_empty() {
        event["note"] = Value::String(cut(&report.note, MAX_NOTE));
    }
    if let (Some(related), Some(uid)) = (&report.related, &series.related_uid) {
        event["related"] = reference(related, uid);
    }
    event
}

/// The JSON merge patch a later write of `series` sends: its `series`
/// only, the one part of an Event kube-apiserver lets change. `None` for
/// a series seen once (a `series` needs a count of at least 2).
pub fn series_patch(series: &EventSeries) -> Option<Value> {
    series_value(&series.report).map(|series| json!({ "series": series }))
}

fn series_value(report: &EventReport) -> Option<Value> {
    (report.count >= 2).then(|| {
        json!({
            "count": report.count,
            "lastObservedTime": micro_time(report.last_ms),
        })
    })
}

/// An ObjectReference to `object` in KCP, with its upstream `uid`.
fn reference(object: &ObjectRef, uid: &str) -> Value {
    let api_version = if object.group.is_empty() {
        object.version.clone()
    } else {
        format!("{}/{}", object.group, object.version)
    };
    let mut reference = Map::new();
    reference.insert("apiVersion".into(), api_version.into());
    reference.insert("kind".into(), object.kind.clone().into());
    if let Some(namespace) = &object.namespace {
        reference.insert("namespace".into(), namespace.clone().into());
    }
    reference.insert("name".into(), object.name.clone().into());
    reference.insert("uid".into(), uid.into());
    Value::Object(reference)
}

/// `value` cut to at most `max` bytes at a character boundary.
fn cut(value: &str, max: usize) -> String {
    let mut value = value.to_owned();
    truncate_utf8(&mut value, max);
    value
}

/// Whether kube-apiserver takes `value` as a qualified name (what an
/// Event's `reportingController` must be): an optional DNS subdomain
/// prefix and `/`, then at most 63 characters of `[A-Za-z0-9_.-]`,
/// starting and ending with a letter or digit.
pub fn is_qualified_name(value: &str) -> bool {
    let (prefix, name) = match value.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, value),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    name_ok && prefix.is_none_or(is_dns_subdomain)
}

fn is_dns_subdomain(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_NAME
        && value.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        })
}
