//! The fields a field selector may name on each resource, and the value kube
//! derives for each from an object, as kube-apiserver's field label
//! conversions (`AddFieldLabelConversionFunc`, or the default that accepts
//! `metadata.name` and `metadata.namespace` only) and each strategy's
//! `GetAttrs`/`ToSelectableFields` define them.
//!
//! A field that is unset reads as kube reads it from the stored object:
//! Go's zero value (`false`, `0`, "") or the value kube's defaulting would
//! have stored (the test bed does not default built-in objects), e.g. a
//! pod's `spec.restartPolicy` is `Always` and a node's `spec.unschedulable`
//! is `false`.
//!
//! Fields are read from the stored object. events.k8s.io/v1 Events are
//! stored as core/v1 Events, so their fields read the core names, as kube's
//! events.k8s.io conversion maps them (`regarding.kind` is
//! `involvedObject.kind`, `reportingController` is `reportingComponent`).

use serde_json::Value;

use super::resources::ResourceDef;

/// How a field selector's field reads its value from an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FieldSource {
    /// The value at a dotted path, or `default` when it is unset.
    Path {
        path: Vec<String>,
        default: &'static str,
    },
    /// A pod's `status.podIP`: the first of `status.podIPs` (kube fills
    /// those from `status.podIP` when only that is set).
    PrimaryPodIp,
    /// An event's `source`: `source.component`, else `reportingComponent`.
    EventSource,
    /// A field the conversion accepts that the field set never holds: "".
    Never,
}

impl FieldSource {
    fn path(path: &str, default: &'static str) -> FieldSource {
        FieldSource::Path {
            path: path.split('.').map(str::to_string).collect(),
            default,
        }
    }

    /// The field's value in `object`, as a string (booleans and numbers
    /// formatted as Go formats them).
    pub fn value(&self, object: &Value) -> String {
        match self {
            FieldSource::Path { path, default } => {
                scalar_at(object, path).unwrap_or_else(|| (*default).to_string())
            }
            FieldSource::PrimaryPodIp => object
                .pointer("/status/podIPs/0/ip")
                .or_else(|| object.pointer("/status/podIP"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            FieldSource::EventSource => {
                let text = |p: &str| object.pointer(p).and_then(Value::as_str).unwrap_or("");
                let component = text("/source/component");
                if component.is_empty() {
                    text("/reportingComponent").to_string()
                } else {
                    component.to_string()
                }
            }
            FieldSource::Never => String::new(),
        }
    }
}

fn scalar_at(object: &Value, path: &[String]) -> Option<String> {
    let mut cur = object;
    for part in path {
        cur = cur.get(part)?;
    }
    match cur {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Null => None,
        // Lists and maps are no selectable field's value.
        _ => Some(String::new()),
    }
}

/// Whose field label conversion refuses a field, which decides its words.
enum Conversion {
    /// The core kinds with a conversion of their own, and custom resources.
    Own,
    /// `batch/v1` Job's conversion.
    Job,
    /// kube's `DefaultMetaV1FieldSelectorConversion`.
    Default,
}

/// Built-in kinds whose field label conversion does not accept
/// `metadata.namespace` (cluster-scoped kinds with a conversion of their own).
fn refuses_namespace(def: &ResourceDef) -> bool {
    if def.custom {
        return !def.namespaced;
    }
    matches!(
        (def.group.as_str(), def.plural.as_str()),
        ("", "nodes" | "namespaces") | ("certificates.k8s.io", "certificatesigningrequests")
    )
}

fn conversion(def: &ResourceDef) -> Conversion {
    if def.custom {
        return Conversion::Own;
    }
    match (def.group.as_str(), def.plural.as_str()) {
        ("", "pods" | "nodes" | "namespaces" | "events" | "secrets" | "services")
        | ("events.k8s.io", "events")
        | ("certificates.k8s.io", "certificatesigningrequests") => Conversion::Own,
        ("batch", "jobs") => Conversion::Job,
        _ => Conversion::Default,
    }
}

/// Where a built-in field's value is not simply at its own path with an
/// empty default.
fn builtin_source(def: &ResourceDef, field: &str) -> Option<FieldSource> {
    if def.custom {
        return None;
    }
    let source = match (def.group.as_str(), def.plural.as_str(), field) {
        // Old v1 clients' name for spec.nodeName.
        ("", "pods", "spec.host") => FieldSource::path("spec.nodeName", ""),
        ("", "pods", "spec.restartPolicy") => FieldSource::path(field, "Always"),
        ("", "pods", "spec.schedulerName") => FieldSource::path(field, "default-scheduler"),
        // The ServiceAccount admission plugin sets "default" on every pod without one.
        ("", "pods", "spec.serviceAccountName") => FieldSource::path(field, "default"),
        ("", "pods", "spec.hostNetwork") => FieldSource::path(field, "false"),
        ("", "pods", "status.podIP") => FieldSource::PrimaryPodIp,
        // Accepted by the conversion, but never part of a pod's field set.
        ("", "pods", "status.podIPs") => FieldSource::Never,
        ("", "nodes", "spec.unschedulable") => FieldSource::path(field, "false"),
        ("", "services", "spec.type") => FieldSource::path(field, "ClusterIP"),
        ("", "events", "source") => FieldSource::EventSource,
        ("events.k8s.io", "events", "source") => FieldSource::EventSource,
        ("events.k8s.io", "events", "reportingController") => {
            FieldSource::path("reportingComponent", "")
        }
        ("events.k8s.io", "events", regarding) if regarding.starts_with("regarding.") => {
            FieldSource::path(&regarding.replacen("regarding.", "involvedObject.", 1), "")
        }
        // Named after the old field, read from status.succeeded.
        ("batch", "jobs", "status.successful") => FieldSource::path("status.succeeded", "0"),
        _ => return None,
    };
    Some(source)
}

/// Where `field` reads its value on `def` (in `version`), or kube's error
/// message for a field the resource does not support.
pub(crate) fn source(def: &ResourceDef, version: &str, field: &str) -> Result<FieldSource, String> {
    let known = match field {
        "metadata.name" => true,
        "metadata.namespace" => !refuses_namespace(def),
        _ => def
            .version(version)
            .is_some_and(|v| v.selectable_fields.iter().any(|f| f == field)),
    };
    if !known {
        return Err(match conversion(def) {
            Conversion::Own => format!("field label not supported: {field}"),
            Conversion::Job => format!("field label {field:?} not supported for batchv1.Job"),
            Conversion::Default => format!(
                "{field:?} is not a known field selector: only \"metadata.name\", \"metadata.namespace\""
            ),
        });
    }
    Ok(builtin_source(def, field).unwrap_or_else(|| FieldSource::path(field, "")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::builtins;
    use serde_json::json;

    fn def(plural: &str) -> std::sync::Arc<ResourceDef> {
        builtins()
            .into_iter()
            .find(|d| d.plural == plural)
            .unwrap_or_else(|| panic!("no builtin {plural}"))
    }

    fn def_in(group: &str, plural: &str) -> std::sync::Arc<ResourceDef> {
        builtins()
            .into_iter()
            .find(|d| d.group == group && d.plural == plural)
            .unwrap_or_else(|| panic!("no builtin {group}/{plural}"))
    }

    fn value(plural: &str, field: &str, object: &Value) -> Result<String, String> {
        source(&def(plural), "v1", field).map(|s| s.value(object))
    }

    #[test]
    fn unset_fields_read_as_kube_stores_them() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": []}});
        assert_eq!(
            value("pods", "spec.restartPolicy", &pod).as_deref(),
            Ok("Always")
        );
        assert_eq!(
            value("pods", "spec.schedulerName", &pod).as_deref(),
            Ok("default-scheduler")
        );
        assert_eq!(
            value("pods", "spec.hostNetwork", &pod).as_deref(),
            Ok("false")
        );
        assert_eq!(value("pods", "spec.nodeName", &pod).as_deref(), Ok(""));
        let node = json!({"metadata": {"name": "n"}});
        assert_eq!(
            value("nodes", "spec.unschedulable", &node).as_deref(),
            Ok("false")
        );
        let cordoned = json!({"spec": {"unschedulable": true}});
        assert_eq!(
            value("nodes", "spec.unschedulable", &cordoned).as_deref(),
            Ok("true")
        );
        let job = json!({"status": {"succeeded": 2}});
        assert_eq!(value("jobs", "status.successful", &job).as_deref(), Ok("2"));
        assert_eq!(
            value("jobs", "status.successful", &json!({})).as_deref(),
            Ok("0")
        );
    }

    #[test]
    fn derived_fields() {
        let pod = json!({"spec": {"nodeName": "n1"}, "status": {"podIPs": [{"ip": "10.0.0.2"}], "podIP": "10.0.0.9"}});
        assert_eq!(value("pods", "spec.host", &pod).as_deref(), Ok("n1"));
        assert_eq!(
            value("pods", "status.podIP", &pod).as_deref(),
            Ok("10.0.0.2")
        );
        assert_eq!(value("pods", "status.podIPs", &pod).as_deref(), Ok(""));
        let event = json!({"reportingComponent": "kubelet"});
        assert_eq!(value("events", "source", &event).as_deref(), Ok("kubelet"));
        let event = json!({"source": {"component": "scheduler"}, "reportingComponent": "x"});
        assert_eq!(
            value("events", "source", &event).as_deref(),
            Ok("scheduler")
        );
    }

    #[test]
    fn events_k8s_io_fields_read_the_stored_core_event() {
        let events = def_in("events.k8s.io", "events");
        let value =
            |field: &str, object: &Value| source(&events, "v1", field).map(|s| s.value(object));
        let stored = json!({
            "involvedObject": {"kind": "Pod", "name": "p"},
            "reportingComponent": "uplink.io/x",
            "reason": "Started",
            "type": "Normal",
        });
        assert_eq!(value("regarding.kind", &stored).as_deref(), Ok("Pod"));
        assert_eq!(value("regarding.name", &stored).as_deref(), Ok("p"));
        assert_eq!(value("regarding.uid", &stored).as_deref(), Ok(""));
        assert_eq!(
            value("reportingController", &stored).as_deref(),
            Ok("uplink.io/x")
        );
        assert_eq!(value("source", &stored).as_deref(), Ok("uplink.io/x"));
        assert_eq!(value("reason", &stored).as_deref(), Ok("Started"));
        assert_eq!(value("metadata.namespace", &stored).as_deref(), Ok(""));
        assert_eq!(
            value("involvedObject.kind", &stored),
            Err("field label not supported: involvedObject.kind".to_string())
        );
    }

    #[test]
    fn csrs_select_by_signer() {
        let csrs = def_in("certificates.k8s.io", "certificatesigningrequests");
        let csr = json!({"spec": {"signerName": "example.com/s"}});
        assert_eq!(
            source(&csrs, "v1", "spec.signerName").map(|s| s.value(&csr)),
            Ok("example.com/s".to_string())
        );
        assert_eq!(
            source(&csrs, "v1", "metadata.namespace").map(|s| s.value(&csr)),
            Err("field label not supported: metadata.namespace".to_string())
        );
    }

    #[test]
    fn unsupported_fields_are_refused_in_each_kinds_words() {
        assert_eq!(
            value("pods", "spec.nonsense", &json!({})),
            Err("field label not supported: spec.nonsense".to_string())
        );
        assert_eq!(
            value("nodes", "metadata.namespace", &json!({})),
            Err("field label not supported: metadata.namespace".to_string())
        );
        assert_eq!(
            value("jobs", "spec.x", &json!({})),
            Err("field label \"spec.x\" not supported for batchv1.Job".to_string())
        );
        assert_eq!(
            value("replicasets", "status.replicas", &json!({})),
            Err("\"status.replicas\" is not a known field selector: only \"metadata.name\", \"metadata.namespace\"".to_string())
        );
        assert!(value("configmaps", "metadata.namespace", &json!({})).is_ok());
    }
}
