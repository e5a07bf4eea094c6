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

mod jsonpath;

use jsonpath::JsonPath;

type Cell = fn(&Value) -> Value;

struct Column {
    name: String,
    /// The OpenAPI type kube-apiserver declares: `string` for built-in
    /// columns, the CRD's `type` for printer columns.
    kind: String,
    format: String,
    description: String,
    priority: i64,
    cell: ColumnValue,
}

enum ColumnValue {
    Computed(Cell),
    /// A CRD printer column: its path (or why it did not parse).
    Path(Result<JsonPath, String>),
}

/// `metav1.ObjectMeta{}.SwaggerDoc()["name"]`, the Name column's description.
const NAME_DESCRIPTION: &str = "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";

/// `metav1.ObjectMeta{}.SwaggerDoc()["creationTimestamp"]`.
const CREATION_TIMESTAMP_DESCRIPTION: &str = "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";

/// `coordinationv1.LeaseSpec{}.SwaggerDoc()["holderIdentity"]` (1.31+).
const LEASE_HOLDER_DESCRIPTION: &str = "holderIdentity contains the identity of the holder of a current lease. If Coordinated Leader Election is used, the holder identity must be equal to the elected LeaseCandidate.metadata.name field.";

fn col(name: &str, cell: Cell) -> Column {
    Column {
        name: name.into(),
        kind: "string".into(),
        format: String::new(),
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
    let mut cols = vec![Column {
        format: "name".into(),
        description: NAME_DESCRIPTION.into(),
        ..col("Name", |v| str_at(v, "/metadata/name", ""))
    }];
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
        // kube's printLease (pkg/printers/internalversion): the holder, or
        // an empty cell for a Lease nobody holds.
        ("coordination.k8s.io", "leases") => vec![Column {
            description: LEASE_HOLDER_DESCRIPTION.into(),
            ..col("Holder", |v| str_at(v, "/spec/holderIdentity", ""))
        }],
        _ => Vec::new(),
    };
    cols.extend(builtin);
    if target.def.custom {
        let printer_columns = target
            .def
            .version(&target.version)
            .map(|v| v.printer_columns.clone())
            .unwrap_or_default();
        cols.extend(crd_columns(&printer_columns));
    } else {
        cols.push(Column {
            description: CREATION_TIMESTAMP_DESCRIPTION.into(),
            ..col("Age", age_cell)
        });
    }
    cols
}

/// A CRD's printer columns as kube-apiserver's table convertor makes them
/// (k8s.io/apiextensions-apiserver/pkg/registry/customresource/tableconvertor,
/// `New`): the CRD's columns as given, after Name, with their `type`,
/// `format`, `priority` and `description` (by default "Custom resource
/// definition column (in JSONPath format): <path>"); no Age is added. A
/// version without columns gets the one kube-apiserver serves by default
/// (apiextensions-apiserver's `serveDefaultColumnsIfEmpty`): Age, a `date`
/// column of `.metadata.creationTimestamp`.
fn crd_columns(printer_columns: &[Value]) -> Vec<Column> {
    if printer_columns.is_empty() {
        return vec![Column {
            name: "Age".into(),
            kind: "date".into(),
            format: String::new(),
            description: CREATION_TIMESTAMP_DESCRIPTION.into(),
            priority: 0,
            cell: ColumnValue::Path(JsonPath::parse(".metadata.creationTimestamp")),
        }];
    }
    printer_columns
        .iter()
        .map(|c| {
            let text = |key: &str| {
                c.get(key)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            let path = text("jsonPath");
            let description = match text("description") {
                d if d.is_empty() => {
                    format!("Custom resource definition column (in JSONPath format): {path}")
                }
                d => d,
            };
            Column {
                name: text("name"),
                kind: text("type"),
                format: text("format"),
                description,
                priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0),
                cell: ColumnValue::Path(JsonPath::parse(&path)),
            }
        })
        .collect()
}

/// A CRD column's cell, as the table convertor's `ConvertToTable` and
/// `cellForJSONValue` make it: `null` (kubectl prints nothing) when the path
/// finds nothing or fails; else the first value found, as text for a
/// `string` column (Go's printing of it), kept as a JSON integer, number or
/// boolean for those types (`null` when it is not one), and for a `date`
/// column the age of the timestamp (`metatable.ConvertToHumanReadableDateType`:
/// `<unknown>` for an empty or zero time, `<invalid>` when it does not parse).
fn crd_cell(kind: &str, path: &Result<JsonPath, String>, object: &Value) -> Value {
    let Ok(path) = path else {
        return Value::Null;
    };
    let value = match path.find(object) {
        Ok(found) => match found.first() {
            Some(v) => *v,
            None => return Value::Null,
        },
        Err(_) => return Value::Null,
    };
    if kind == "string" {
        return json!(jsonpath::go_text(value));
    }
    match (kind, value) {
        (_, Value::Null) => Value::Null,
        ("integer", Value::Number(n)) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => json!(i),
            // Go's int64(float64): toward zero, saturating here.
            (None, Some(f)) => json!(f as i64),
            (None, None) => Value::Null,
        },
        ("number", Value::Number(n)) => n.as_f64().map_or(Value::Null, |f| json!(f)),
        ("boolean", Value::Bool(b)) => json!(b),
        ("date", Value::String(s)) => json!(date_cell(s)),
        _ => Value::Null,
    }
}

/// `metatable.ConvertToHumanReadableDateType` of a timestamp parsed as
/// `metav1.Time.UnmarshalQueryParameter` parses it.
fn date_cell(text: &str) -> String {
    if text.is_empty() || text == "null" {
        return "<unknown>".into();
    }
    let Ok(t) = text.parse::<jiff::Timestamp>() else {
        return "<invalid>".into();
    };
    // Go's zero time, 0001-01-01T00:00:00Z.
    if t.as_second() == -62_135_596_800 {
        return "<unknown>".into();
    }
    human_duration(jiff::Timestamp::now().as_second() - t.as_second())
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
            json!({ "name": c.name, "type": c.kind, "format": c.format, "description": c.description, "priority": c.priority })
        })
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let cells: Vec<Value> = cols
                .iter()
                .map(|c| match &c.cell {
                    ColumnValue::Computed(f) => f(o),
                    ColumnValue::Path(p) => crd_cell(&c.kind, p, o),
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
    use crate::apiserver::resources::{ResourceDef, builtins};

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
    fn lease_rows_show_the_holder() {
        let def = builtins()
            .into_iter()
            .find(|d| d.plural == "leases")
            .unwrap_or_else(|| panic!("builtin"));
        let t = Target {
            def,
            version: "v1".into(),
            namespace: "default".into(),
            status: false,
        };
        let held = Arc::new(json!({
            "metadata": {"name": "uplink-hub-shard-03", "creationTimestamp": "2020-01-01T00:00:00Z"},
            "spec": {"holderIdentity": "hub-1_0e4c", "leaseDurationSeconds": 15},
        }));
        let free = Arc::new(json!({"metadata": {"name": "uplink-hub-shard-04"}, "spec": {}}));
        let table = render(&t, &[held, free], None, None);
        let names: Vec<&Value> = table["columnDefinitions"]
            .as_array()
            .map(|cols| cols.iter().map(|c| &c["name"]).collect())
            .unwrap_or_default();
        assert_eq!(names, [&json!("Name"), &json!("Holder"), &json!("Age")]);
        assert_eq!(table["rows"][0]["cells"][1], "hub-1_0e4c");
        assert_eq!(table["rows"][1]["cells"][1], "");
    }

    #[test]
    fn human_durations() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(150), "2m30s");
        assert_eq!(human_duration(3600 * 5), "5h");
        assert_eq!(human_duration(86400 * 3), "3d");
    }

    /// A cluster-scoped CRD with `columns` in its only version.
    fn crd_target(columns: Value) -> Target {
        let crd = json!({
            "metadata": {"name": "gadgets.example.com"},
            "spec": {
                "group": "example.com",
                "scope": "Cluster",
                "names": {"plural": "gadgets", "kind": "Gadget"},
                "versions": [{"name": "v1", "served": true, "storage": true,
                              "additionalPrinterColumns": columns}],
            }
        });
        let def = ResourceDef::from_crd(&crd).unwrap_or_else(|e| panic!("crd: {e}"));
        Target {
            def: Arc::new(def),
            version: "v1".into(),
            namespace: String::new(),
            status: false,
        }
    }

    fn rfc3339_ago(seconds: i64) -> String {
        jiff::Timestamp::from_second(jiff::Timestamp::now().as_second() - seconds)
            .map(|t| t.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn crd_columns_as_kube_apiserver_serves_them() {
        let t = crd_target(json!([
            {"name": "State", "type": "string",
             "jsonPath": ".status.conditions[?(@.type==\"Ready\")].reason"},
            {"name": "Heartbeat", "type": "date", "jsonPath": ".status.heartbeat",
             "description": "When it last beat."},
            {"name": "Nodes", "type": "integer", "jsonPath": ".status.nodes"},
            {"name": "Ratio", "type": "number", "jsonPath": ".status.ratio", "format": "float"},
            {"name": "On", "type": "boolean", "jsonPath": ".status.on", "priority": 1},
            {"name": "Text", "type": "string", "jsonPath": ".status.nodes", "priority": 2},
            {"name": "Shape", "type": "string", "jsonPath": ".status.shape", "priority": 1},
        ]));
        let full = Arc::new(json!({
            "metadata": {"name": "g1", "creationTimestamp": rfc3339_ago(3600)},
            "status": {
                "conditions": [{"type": "Ready", "status": "True", "reason": "Stale"}],
                "heartbeat": rfc3339_ago(900),
                "nodes": 3, "ratio": 0.5, "on": true, "shape": {"b": 2, "a": "x"},
            },
        }));
        let bare = Arc::new(json!({
            "metadata": {"name": "g2", "creationTimestamp": rfc3339_ago(5)},
            "status": {"heartbeat": "", "nodes": "three", "on": "yes"},
        }));
        let table = render(&t, &[full, bare], None, None);
        let defs = &table["columnDefinitions"];
        let names: Vec<&str> = defs
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d["name"].as_str())
            .collect();
        // Name first, then the CRD's columns as given: no Age appended.
        assert_eq!(
            names,
            [
                "Name",
                "State",
                "Heartbeat",
                "Nodes",
                "Ratio",
                "On",
                "Text",
                "Shape"
            ]
        );
        assert_eq!(defs[0]["format"], "name");
        assert_eq!(defs[0]["type"], "string");
        assert_eq!(defs[2]["type"], "date");
        assert_eq!(defs[2]["description"], "When it last beat.");
        assert_eq!(
            defs[3]["description"],
            "Custom resource definition column (in JSONPath format): .status.nodes"
        );
        assert_eq!(defs[3]["type"], "integer");
        assert_eq!(defs[4]["format"], "float");
        assert_eq!(defs[5]["priority"], 1);
        assert_eq!(defs[6]["priority"], 2);

        let full_cells = &table["rows"][0]["cells"];
        assert_eq!(full_cells[0], "g1");
        assert_eq!(full_cells[1], "Stale");
        assert_eq!(full_cells[2], "15m", "a date column prints the age");
        assert_eq!(full_cells[3], json!(3), "an integer stays an integer");
        assert_eq!(full_cells[4], json!(0.5));
        assert_eq!(full_cells[5], json!(true));
        assert_eq!(full_cells[6], "3", "a string column prints the number");
        assert_eq!(full_cells[7], r#"{"a":"x","b":2}"#);

        let bare_cells = &table["rows"][1]["cells"];
        // Nothing found: null, which kubectl prints as an empty cell.
        assert_eq!(bare_cells[1], Value::Null);
        assert_eq!(bare_cells[2], "<unknown>", "an empty time");
        assert_eq!(bare_cells[3], Value::Null, "not an integer");
        assert_eq!(bare_cells[4], Value::Null);
        assert_eq!(bare_cells[5], Value::Null, "not a boolean");
        assert_eq!(bare_cells[6], "three");
        assert_eq!(bare_cells[7], Value::Null);
    }

    #[test]
    fn crd_date_cells() {
        assert_eq!(date_cell(""), "<unknown>");
        assert_eq!(date_cell("0001-01-01T00:00:00Z"), "<unknown>");
        assert_eq!(date_cell("yesterday"), "<invalid>");
        assert_eq!(date_cell(&rfc3339_ago(3 * 86400)), "3d");
        // More than a second in the future.
        assert_eq!(date_cell(&rfc3339_ago(-60)), "<invalid>");
    }

    #[test]
    fn crd_without_columns_gets_name_and_age() {
        let t = crd_target(json!([]));
        let o =
            Arc::new(json!({"metadata": {"name": "g", "creationTimestamp": rfc3339_ago(7200)}}));
        let table = render(&t, &[o], None, None);
        let defs = &table["columnDefinitions"];
        assert_eq!(defs.as_array().map(Vec::len), Some(2));
        assert_eq!(defs[1]["name"], "Age");
        assert_eq!(defs[1]["type"], "date");
        assert_eq!(table["rows"][0]["cells"], json!(["g", "120m"]));
    }
}
