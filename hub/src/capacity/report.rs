//! The capacity report in three renderings of the same numbers: JSON (the
//! whole [`CapacityReport`]), CSV (one row per cluster and one for the
//! fleet, RFC 4180 quoting) and a plain-text table for people.
//!
//! CSV and JSON agree exactly: integers are written as integers and ratios
//! with Rust's shortest round-trip float formatting, which is what the JSON
//! encoder writes too. An unknown value is an empty CSV field and `null` in
//! JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;
use uplink_protocol::ResourceAmounts;

use super::fleet::{FleetTotals, Ranked, WorkspaceTotals};
use super::record::{CapacityRecord, Rates};
use super::trend::Trend;

/// Everything the hub knows about capacity, at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct CapacityReport {
    /// RFC 3339, hub clock.
    pub generated_at: String,
    pub clusters: Vec<CapacityRecord>,
    pub fleet: FleetTotals,
    pub workspaces: BTreeMap<String, WorkspaceTotals>,
    pub top_allocation: Vec<Ranked>,
    pub top_utilization: Vec<Ranked>,
    /// The fleet's trends over its history.
    pub fleet_trends: Vec<Trend>,
}

/// A report rendering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    #[default]
    Json,
    Csv,
    Table,
}

impl Format {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "json" => Some(Format::Json),
            "csv" => Some(Format::Csv),
            "table" => Some(Format::Table),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Csv => "csv",
            Format::Table => "table",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Csv => "text/csv; charset=utf-8",
            Format::Table => "text/plain; charset=utf-8",
        }
    }
}

/// The resource columns of the CSV, with their unit in the name.
const CSV_RESOURCES: [&str; 4] = [
    "cpu_millis",
    "memory_bytes",
    "ephemeral_storage_bytes",
    "pods",
];

fn pick(a: &ResourceAmounts, resource: &str) -> u64 {
    match resource {
        "cpu_millis" => a.cpu_millis,
        "memory_bytes" => a.memory_bytes,
        "ephemeral_storage_bytes" => a.ephemeral_storage_bytes,
        _ => a.pods,
    }
}

/// The CSV header.
pub fn csv_header() -> Vec<String> {
    let mut columns: Vec<String> = [
        "scope",
        "cluster",
        "health",
        "state",
        "nodes_total",
        "nodes_ready",
        "nodes_cordoned",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    for r in CSV_RESOURCES {
        for what in ["capacity", "allocatable", "allocated", "used", "available"] {
            columns.push(format!("{r}_{what}"));
        }
    }
    for r in ["cpu", "memory", "ephemeral_storage", "pods"] {
        columns.push(format!("{r}_allocation"));
    }
    for r in ["cpu", "memory"] {
        columns.push(format!("{r}_utilization"));
    }
    columns.push("health_reason".to_owned());
    columns
}

/// One CSV row's values, unquoted.
struct Row<'a> {
    scope: &'a str,
    cluster: &'a str,
    health: &'a str,
    state: &'a str,
    nodes: [u64; 3],
    capacity: &'a ResourceAmounts,
    allocatable: &'a ResourceAmounts,
    allocated: &'a ResourceAmounts,
    used: Option<&'a ResourceAmounts>,
    available: &'a ResourceAmounts,
    allocation: &'a Rates,
    utilization: &'a Rates,
    reason: &'a str,
}

impl Row<'_> {
    fn fields(&self) -> Vec<String> {
        let mut f: Vec<String> = vec![
            self.scope.to_owned(),
            self.cluster.to_owned(),
            self.health.to_owned(),
            self.state.to_owned(),
        ];
        f.extend(self.nodes.iter().map(u64::to_string));
        for r in CSV_RESOURCES {
            f.push(pick(self.capacity, r).to_string());
            f.push(pick(self.allocatable, r).to_string());
            f.push(pick(self.allocated, r).to_string());
            f.push(
                self.used
                    .map(|u| pick(u, r).to_string())
                    .unwrap_or_default(),
            );
            f.push(pick(self.available, r).to_string());
        }
        let rate = |r: Option<f64>| r.map(|v| v.to_string()).unwrap_or_default();
        let a = self.allocation;
        f.extend([a.cpu, a.memory, a.ephemeral_storage, a.pods].map(rate));
        f.extend([self.utilization.cpu, self.utilization.memory].map(rate));
        f.push(self.reason.to_owned());
        f
    }
}

/// Quotes a CSV field when it holds a comma, quote, CR or LF (RFC 4180).
pub fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_owned()
    }
}

fn csv_line(out: &mut String, fields: &[String]) {
    let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
    out.push_str(&line.join(","));
    out.push_str("\r\n");
}

fn state_name(r: &CapacityRecord) -> &'static str {
    r.state.name()
}

impl CapacityReport {
    /// The report in `format`.
    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Json => serde_json::to_string_pretty(self).unwrap_or_else(|e| {
                // Plain data with string keys always serializes.
                format!("{{\"error\": \"{e}\"}}")
            }),
            Format::Csv => self.csv(),
            Format::Table => self.table(),
        }
    }

    /// One row per cluster, then the fleet's row (`scope` = `fleet`).
    pub fn csv(&self) -> String {
        let mut out = String::new();
        csv_line(&mut out, &csv_header());
        for r in &self.clusters {
            let row = Row {
                scope: "cluster",
                cluster: &r.cluster,
                health: r.health.name(),
                state: state_name(r),
                nodes: [
                    u64::from(r.nodes.total),
                    u64::from(r.nodes.ready),
                    u64::from(r.nodes.cordoned),
                ],
                capacity: &r.capacity,
                allocatable: &r.allocatable,
                allocated: &r.allocated,
                used: r.used.as_ref(),
                available: &r.available,
                allocation: &r.allocation,
                utilization: &r.utilization,
                reason: &r.health_reason,
            };
            csv_line(&mut out, &row.fields());
        }
        let f = &self.fleet;
        let row = Row {
            scope: "fleet",
            cluster: "",
            health: "",
            state: "",
            nodes: [f.nodes_total, f.nodes_ready, f.nodes_cordoned],
            capacity: &f.capacity,
            allocatable: &f.allocatable,
            allocated: &f.allocated,
            used: f.used.as_ref(),
            available: &f.available,
            allocation: &f.allocation,
            utilization: &f.utilization,
            reason: "",
        };
        csv_line(&mut out, &row.fields());
        out
    }

    /// A table for people: CPU in cores, memory and storage in binary units.
    pub fn table(&self) -> String {
        let header = [
            "CLUSTER", "HEALTH", "NODES", "CPU", "CPU%", "MEMORY", "MEM%", "PODS", "CPU USED",
            "MEM USED",
        ];
        let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| (*s).to_owned()).collect()];
        let line = |name: &str,
                    health: &str,
                    nodes: (u64, u64),
                    alloc: &ResourceAmounts,
                    allocatable: &ResourceAmounts,
                    rates: &Rates,
                    used: Option<&ResourceAmounts>| {
            vec![
                name.to_owned(),
                health.to_owned(),
                format!("{}/{}", nodes.0, nodes.1),
                format!(
                    "{}/{}",
                    cores(alloc.cpu_millis),
                    cores(allocatable.cpu_millis)
                ),
                percent(rates.cpu),
                format!(
                    "{}/{}",
                    bytes(alloc.memory_bytes),
                    bytes(allocatable.memory_bytes)
                ),
                percent(rates.memory),
                format!("{}/{}", alloc.pods, allocatable.pods),
                used.map_or_else(|| "unknown".to_owned(), |u| cores(u.cpu_millis)),
                used.map_or_else(|| "unknown".to_owned(), |u| bytes(u.memory_bytes)),
            ]
        };
        for r in &self.clusters {
            rows.push(line(
                &r.cluster,
                r.health.name(),
                (u64::from(r.nodes.ready), u64::from(r.nodes.total)),
                &r.allocated,
                &r.allocatable,
                &r.allocation,
                r.used.as_ref(),
            ));
        }
        let f = &self.fleet;
        rows.push(line(
            "FLEET",
            &format!("{} clusters", f.clusters),
            (f.nodes_ready, f.nodes_total),
            &f.allocated,
            &f.allocatable,
            &f.allocation,
            f.used.as_ref(),
        ));
        let widths: Vec<usize> = (0..header.len())
            .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for row in &rows {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect();
            let _ = writeln!(out, "{}", cells.join("  ").trim_end());
        }
        if !self.workspaces.is_empty() {
            let _ = writeln!(out, "\nWORKSPACE REQUESTS");
            for (workspace, w) in &self.workspaces {
                let _ = writeln!(
                    out,
                    "{workspace}  cpu {}  memory {}  pods {}",
                    cores(w.requests.cpu_millis),
                    bytes(w.requests.memory_bytes),
                    w.requests.pods
                );
            }
        }
        out
    }
}

/// Millicores as cores, exact (`1.5`, `0.001`, `4`).
pub fn cores(millis: u64) -> String {
    let whole = millis / 1000;
    let frac = millis % 1000;
    if frac == 0 {
        whole.to_string()
    } else {
        format!("{whole}.{frac:03}")
            .trim_end_matches('0')
            .to_owned()
    }
}

/// Bytes in the largest binary unit that keeps one decimal meaningful.
pub fn bytes(b: u64) -> String {
    const UNITS: [&str; 6] = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    if b < 1024 {
        return b.to_string();
    }
    let mut value = b as f64;
    let mut unit = "";
    for u in UNITS {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = u;
    }
    format!("{value:.1}{unit}")
}

fn percent(rate: Option<f64>) -> String {
    rate.map_or_else(|| "-".to_owned(), |r| format!("{:.1}%", r * 100.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_only_when_needed() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
    }

    #[test]
    fn human_units() {
        assert_eq!(cores(1500), "1.5");
        assert_eq!(cores(4000), "4");
        assert_eq!(cores(1), "0.001");
        assert_eq!(bytes(512), "512");
        assert_eq!(bytes(1536 << 20), "1.5Gi");
    }
}
