//! Server-side printing: the `meta.k8s.io/v1` Table that `kubectl get` asks
//! for, with kube's columns for common built-ins and CRDs'
//! `additionalPrinterColumns`, and PartialObjectMetadata for metadata-only clients.

use std::sync::Arc;

use serde_json::{Value, json};

use super::registry::Target;

/// What a GET should return, from the `Accept` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rendering {
    Object,
    Table,
    Metadata,
}

impl Rendering {
    pub fn from_accept(accept: &str) -> Rendering {
        // The first acceptable alternative wins, as in kube's negotiation.
        for part in accept.split(',') {
            let p = part.replace(' ', "");
            if p.contains("as=Table") && p.contains("g=meta.k8s.io") {
                return Rendering::Table;
            }
            if p.contains("as=PartialObjectMetadata") && p.contains("g=meta.k8s.io") {
                return Rendering::Metadata;
            }
            if p.starts_with("application/json")
                || p.starts_with("*/*")
                || p.starts_with("application/yaml")
            {
                return Rendering::Object;
            }
        }
        Rendering::Object
    }
}

/// The object as PartialObjectMetadata.
pub(crate) fn partial_metadata(object: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": object.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}

type Cell = fn(&Value) -> Value;

struct Column {
    name: String,
    kind: &'static str,
    description: String,
    priority: u8,
    cell: ColumnValue,
}

enum ColumnValue {
    Computed(Cell),
    Path(String),
}

fn col(name: &str, cell: Cell) -> Column {
    Column {
        name: name.into(),
        kind: "string",
        description: String::new(),
        priority: 0,
        cell: ColumnValue::Computed(cell),
    }
}

fn int_at(v: &Value, pointer: &str) -> i64 {
    v.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

fn str_at(v: &Value, pointer: &str, default: &str) -> Value {
    json!(
        v.pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or(default)
    )
}

fn columns(target: &Target) -> Vec<Column> {
    let mut cols = vec![col("Name", |v| str_at(v, "/metadata/name", ""))];
    let builtin: Vec<Column> = match (target.def.group.as_str(), target.def.plural.as_str()) {
        ("apps", "deployments") => vec![
            col("Ready", |v| {
                json!(format!(
                    "{}/{}",
                    int_at(v, "/status/readyReplicas"),
                    v.pointer("/spec/replicas")
                        .and_then(Value::as_i64)
                        .unwrap_or(1)
                ))
            }),
            col("Up-to-date", |v| {
                json!(int_at(v, "/status/updatedReplicas"))
            }),
            col("Available", |v| {
                json!(int_at(v, "/status/availableReplicas"))
            }),
        ],
        ("apps", "replicasets") => vec![
            col("Desired", |v| {
                json!(
                    v.pointer("/spec/replicas")
                        .and_then(Value::as_i64)
                        .unwrap_or(1)
                )
            }),
            col("Current", |v| json!(int_at(v, "/status/replicas"))),
            col("Ready", |v| json!(int_at(v, "/status/readyReplicas"))),
        ],
        ("apps", "statefulsets") => vec![col("Ready", |v| {
            json!(format!(
                "{}/{}",
                int_at(v, "/status/readyReplicas"),
                v.pointer("/spec/replicas")
                    .and_then(Value::as_i64)
                    .unwrap_or(1)
            ))
        })],
        ("apps", "daemonsets") => vec![
            col("Desired", |v| {
                json!(int_at(v, "/status/desiredNumberScheduled"))
            }),
            col("Current", |v| {
                json!(int_at(v, "/status/currentNumberScheduled"))
            }),
            col("Ready", |v| json!(int_at(v, "/status/numberReady"))),
            col("Up-to-date", |v| {
                json!(int_at(v, "/status/updatedNumberScheduled"))
            }),
            col("Available", |v| json!(int_at(v, "/status/numberAvailable"))),
        ],
        ("batch", "jobs") => vec![col("Completions", |v| {
            json!(format!(
                "{}/{}",
                int_at(v, "/status/succeeded"),
                v.pointer("/spec/completions")
                    .and_then(Value::as_i64)
                    .unwrap_or(1)
            ))
        })],
        ("", "pods") => vec![
            col("Ready", |v| {
                let total = v
                    .pointer("/spec/containers")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len);
                let ready = v
                    .pointer("/status/containerStatuses")
                    .and_then(Value::as_array)
                    .map_or(0, |s| {
                        s.iter().filter(|c| c["ready"] == json!(true)).count()
                    });
                json!(format!("{ready}/{total}"))
            }),
            col("Status", |v| str_at(v, "/status/phase", "Unknown")),
            col("Restarts", |v| {
                let n: i64 = v
                    .pointer("/status/containerStatuses")
                    .and_then(Value::as_array)
                    .map_or(0, |s| {
                        s.iter().filter_map(|c| c["restartCount"].as_i64()).sum()
                    });
                json!(n)
            }),
        ],
        ("", "namespaces") => vec![col("Status", |v| str_at(v, "/status/phase", "Active"))],
        ("", "services") => vec![
            col("Type", |v| str_at(v, "/spec/type", "ClusterIP")),
            col("Cluster-IP", |v| str_at(v, "/spec/clusterIP", "<none>")),
        ],
        ("", "nodes") => vec![col("Status", |v| {
            let ready = v
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
                .map(|c| c["status"] == "True");
            json!(match ready {
                Some(true) => "Ready",
                Some(false) => "NotReady",
                None => "Unknown",
            })
        })],
        ("", "configmaps") => vec![col("Data", |v| {
            let n = |k: &str| {
                v.get(k)
                    .and_then(Value::as_object)
                    .map_or(0, serde_json::Map::len)
            };
            json!(n("data") + n("binaryData"))
        })],
        ("", "secrets") => vec![
            col("Type", |v| str_at(v, "/type", "Opaque")),
            col("Data", |v| {
                json!(
                    v.get("data")
                        .and_then(Value::as_object)
                        .map_or(0, serde_json::Map::len)
                )
            }),
        ],
        _ => Vec::new(),
    };
    cols.extend(builtin);
    let printer_columns = target
        .def
        .version(&target.version)
        .map(|v| v.printer_columns.clone())
        .unwrap_or_default();
    if target.def.custom && !printer_columns.is_empty() {
        for c in printer_columns {
            let path = c
                .get("jsonPath")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let is_age = path == ".metadata.creationTimestamp";
            cols.push(Column {
                name: c
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                kind: "string",
                description: c
                    .get("description")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                priority: u8::try_from(c.get("priority").and_then(Value::as_u64).unwrap_or(0))
                    .unwrap_or(0),
                cell: if is_age {
                    ColumnValue::Computed(age_cell)
                } else {
                    ColumnValue::Path(path)
                },
            });
        }
    } else {
        cols.push(col("Age", age_cell));
    }
    cols
}

fn age_cell(v: &Value) -> Value {
    let created = v
        .pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str)
        .unwrap_or_default();
    match created.parse::<jiff::Timestamp>() {
        Ok(t) => json!(human_duration(
            jiff::Timestamp::now().as_second() - t.as_second()
        )),
        Err(_) => json!("<unknown>"),
    }
}

/// kube's `duration.HumanDuration`.
fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    let s = seconds.max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86400);
    let y = d / 365;
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        if s % 60 == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{}s", s % 60)
        }
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        if m % 60 == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{}m", m % 60)
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 192 {
        if h % 24 == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{}h", h % 24)
        }
    } else if d < 730 {
        format!("{d}d")
    } else if y < 8 {
        if d % 365 == 0 {
            format!("{y}y")
        } else {
            format!("{y}y{}d", d % 365)
        }
    } else {
        format!("{y}y")
    }
}

/// Evaluates a simple JSONPath (`.status.replicas`, `.spec.items[0].name`).
fn json_path(v: &Value, path: &str) -> Value {
    let mut cur = v;
    for part in path
        .trim_start_matches('.')
        .split('.')
        .filter(|p| !p.is_empty())
    {
        let (field, index) = match part.split_once('[') {
            Some((f, rest)) => (f, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        let next = if field.is_empty() {
            Some(cur)
        } else {
            cur.get(field)
        };
        let next = match (next, index) {
            (Some(n), Some(i)) => n.get(i),
            (n, None) => n,
            (None, _) => None,
        };
        match next {
            Some(n) => cur = n,
            None => return Value::Null,
        }
    }
    match cur {
        Value::Object(_) | Value::Array(_) => json!(cur.to_string()),
        other => other.clone(),
    }
}

/// Renders objects as a Table. `include` is the `includeObject` parameter.
pub(crate) fn render(
    target: &Target,
    objects: &[Arc<Value>],
    rv: Option<String>,
    include: Option<&str>,
) -> Value {
    let cols = columns(target);
    let definitions: Vec<Value> = cols
        .iter()
        .map(|c| {
            let format = if c.name == "Name" { "name" } else { "" };
            json!({ "name": c.name, "type": c.kind, "format": format, "description": c.description, "priority": c.priority })
        })
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let cells: Vec<Value> = cols
                .iter()
                .map(|c| match &c.cell {
                    ColumnValue::Computed(f) => f(o),
                    ColumnValue::Path(p) => json_path(o, p),
                })
                .collect();
            let object = match include {
                Some("None") => Value::Null,
                Some("Object") => (**o).clone(),
                _ => partial_metadata(o),
            };
            json!({ "cells": cells, "object": object })
        })
        .collect();
    let mut metadata = json!({});
    if let Some(rv) = rv {
        metadata["resourceVersion"] = json!(rv);
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": definitions,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::builtins;

    #[test]
    fn kubectl_accept_header_asks_for_a_table() {
        let accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(Rendering::from_accept(accept), Rendering::Table);
        assert_eq!(
            Rendering::from_accept("application/json"),
            Rendering::Object
        );
        assert_eq!(
            Rendering::from_accept(
                "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
            ),
            Rendering::Metadata
        );
    }

    #[test]
    fn deployment_rows() {
        let def = builtins()
            .into_iter()
            .find(|d| d.plural == "deployments")
            .unwrap_or_else(|| panic!("builtin"));
        let t = Target {
            def,
            version: "v1".into(),
            namespace: "default".into(),
            status: false,
        };
        let o = Arc::new(
            json!({"metadata": {"name": "web", "creationTimestamp": "2020-01-01T00:00:00Z"}, "spec": {"replicas": 3}, "status": {"readyReplicas": 2}}),
        );
        let table = render(&t, &[o], Some("7".into()), None);
        assert_eq!(table["rows"][0]["cells"][0], "web");
        assert_eq!(table["rows"][0]["cells"][1], "2/3");
        assert_eq!(table["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(table["columnDefinitions"][0]["format"], "name");
    }

    #[test]
    fn human_durations() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(150), "2m30s");
        assert_eq!(human_duration(3600 * 5), "5h");
        assert_eq!(human_duration(86400 * 3), "3d");
    }

    #[test]
    fn json_paths() {
        let v = json!({"spec": {"items": [{"name": "a"}], "n": 3}});
        assert_eq!(json_path(&v, ".spec.n"), json!(3));
        assert_eq!(json_path(&v, ".spec.items[0].name"), json!("a"));
        assert_eq!(json_path(&v, ".spec.missing"), Value::Null);
    }
}
