//! Checks of what a cluster says about itself in a heartbeat: its clock and
//! its summary. A report outside these bounds is refused whole (neither the
//! clock sample nor the summary is kept), so no cluster can push the fleet
//! totals or its own skew estimate to absurd values.
//!
//! The bounds are far above any real cluster (Kubernetes' scalability
//! limits are 5,000 nodes and 150,000 pods) and far below where the fleet's
//! sums could overflow: a quantity at its bound can be added up for
//! thousands of clusters before the (saturating) totals reach `u64::MAX`.

use std::time::Duration;

use uplink_protocol::{ClusterSummary, ExtendedAmounts, PodPhaseCounts, ResourceAmounts};

/// The bounds a cluster's heartbeat report must keep to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportBounds {
    /// Largest difference between the agent's clock (as its heartbeat
    /// says) and the hub's. The hub corrects for a skewed clock (it
    /// estimates each agent's offset), so the default, a day, only refuses
    /// clocks no time sync could explain (the finding: 2^62 ms ahead).
    pub max_clock_skew: Duration,
    /// Most nodes a cluster may report.
    pub max_nodes: u32,
    /// Largest CPU amount (millicores) of any one figure.
    pub max_cpu_millis: u64,
    /// Largest memory or ephemeral storage amount (bytes) of any one figure.
    pub max_bytes: u64,
    /// Largest count of pods (capacity, requests, by phase).
    pub max_pods: u64,
    /// Largest amount of one extended resource (whole units).
    pub max_extended_units: u64,
    /// Most objects one watch may claim to hold.
    pub max_watch_objects: u64,
    /// Most entries in each of the summary's lists and maps (watches,
    /// extended resources, workspaces).
    pub max_entries: usize,
}

impl Default for ReportBounds {
    fn default() -> Self {
        Self {
            max_clock_skew: Duration::from_secs(24 * 3600),
            max_nodes: 1 << 20,
            // 4.4 billion cores.
            max_cpu_millis: 1 << 42,
            // 64 PiB.
            max_bytes: 1 << 56,
            max_pods: 1 << 24,
            max_extended_units: 1 << 40,
            max_watch_objects: 1 << 32,
            max_entries: 10_000,
        }
    }
}

/// Why a heartbeat report was refused. [`ReportError::reason`] is the
/// metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("the agent's clock is {skew_ms} ms from the hub's, more than the {max_ms} ms allowed")]
    ClockSkew { skew_ms: u64, max_ms: u64 },
    #[error("{field} is {value}, more than the bound of {max}")]
    OutOfRange { field: String, value: u64, max: u64 },
    #[error("{field} is {value}, more than {other} ({other_value})")]
    Inconsistent {
        field: &'static str,
        value: u64,
        other: &'static str,
        other_value: u64,
    },
    #[error("{field} has {entries} entries, more than the bound of {max}")]
    TooManyEntries {
        field: &'static str,
        entries: usize,
        max: usize,
    },
}

/// Labels of `uplink_hub_reports_refused_total{reason}`.
pub mod refused_reason {
    pub const CLOCK_SKEW: &str = "clock_skew";
    pub const OUT_OF_RANGE: &str = "out_of_range";
    pub const INCONSISTENT: &str = "inconsistent";
    pub const TOO_MANY_ENTRIES: &str = "too_many_entries";
    pub const ALL: [&str; 4] = [CLOCK_SKEW, OUT_OF_RANGE, INCONSISTENT, TOO_MANY_ENTRIES];
}

impl ReportError {
    pub fn reason(&self) -> &'static str {
        match self {
            ReportError::ClockSkew { .. } => refused_reason::CLOCK_SKEW,
            ReportError::OutOfRange { .. } => refused_reason::OUT_OF_RANGE,
            ReportError::Inconsistent { .. } => refused_reason::INCONSISTENT,
            ReportError::TooManyEntries { .. } => refused_reason::TOO_MANY_ENTRIES,
        }
    }
}

impl ReportBounds {
    /// Checks a heartbeat sent at `agent_time_ms` (agent clock) and received
    /// at `hub_time_ms` (hub clock), with its summary if it carries one.
    pub fn check(
        &self,
        agent_time_ms: i64,
        hub_time_ms: i64,
        summary: Option<&ClusterSummary>,
    ) -> Result<(), ReportError> {
        let skew_ms = hub_time_ms.abs_diff(agent_time_ms);
        let max_ms = u64::try_from(self.max_clock_skew.as_millis()).unwrap_or(u64::MAX);
        if skew_ms > max_ms {
            return Err(ReportError::ClockSkew { skew_ms, max_ms });
        }
        match summary {
            Some(summary) => self.check_summary(summary),
            None => Ok(()),
        }
    }

    /// Checks the figures of one summary.
    pub fn check_summary(&self, s: &ClusterSummary) -> Result<(), ReportError> {
        entries("watches", s.watches.len(), self.max_entries)?;
        entries("extended", s.extended.len(), self.max_entries)?;
        entries("workspaces", s.workspaces.len(), self.max_entries)?;

        let nodes = &s.nodes;
        at_most(
            "nodes.total",
            u64::from(nodes.total),
            u64::from(self.max_nodes),
        )?;
        not_over("nodes.ready", nodes.ready, "nodes.total", nodes.total)?;
        not_over("nodes.cordoned", nodes.cordoned, "nodes.total", nodes.total)?;

        self.amounts("capacity", &s.capacity)?;
        self.amounts("allocatable", &s.allocatable)?;
        self.amounts("schedulable", &s.schedulable)?;
        self.amounts("requests", &s.requests)?;
        if let Some(usage) = &s.usage {
            self.amounts("usage", usage)?;
        }
        self.phases(&s.pods)?;
        for w in &s.watches {
            at_most(
                &format!("watches[{}].objects", w.resource),
                w.objects,
                self.max_watch_objects,
            )?;
        }
        for (name, e) in &s.extended {
            self.extended(name, e)?;
        }
        for (workspace, requests) in &s.workspaces {
            self.amounts(&format!("workspaces[{workspace}]"), requests)?;
        }
        Ok(())
    }

    fn amounts(&self, what: &str, a: &ResourceAmounts) -> Result<(), ReportError> {
        at_most(
            &format!("{what}.cpu_millis"),
            a.cpu_millis,
            self.max_cpu_millis,
        )?;
        at_most(
            &format!("{what}.memory_bytes"),
            a.memory_bytes,
            self.max_bytes,
        )?;
        at_most(
            &format!("{what}.ephemeral_storage_bytes"),
            a.ephemeral_storage_bytes,
            self.max_bytes,
        )?;
        at_most(&format!("{what}.pods"), a.pods, self.max_pods)
    }

    fn phases(&self, p: &PodPhaseCounts) -> Result<(), ReportError> {
        for (phase, n) in [
            ("pending", p.pending),
            ("running", p.running),
            ("succeeded", p.succeeded),
            ("failed", p.failed),
            ("unknown", p.unknown),
        ] {
            at_most(&format!("pods.{phase}"), n, self.max_pods)?;
        }
        Ok(())
    }

    fn extended(&self, name: &str, e: &ExtendedAmounts) -> Result<(), ReportError> {
        let max = self.max_extended_units;
        at_most(&format!("extended[{name}].capacity"), e.capacity, max)?;
        at_most(&format!("extended[{name}].allocatable"), e.allocatable, max)?;
        at_most(&format!("extended[{name}].requests"), e.requests, max)
    }
}

fn at_most(field: &str, value: u64, max: u64) -> Result<(), ReportError> {
    if value > max {
        return Err(ReportError::OutOfRange {
            field: field.to_owned(),
            value,
            max,
        });
    }
    Ok(())
}

fn not_over(
    field: &'static str,
    value: u32,
    other: &'static str,
    other_value: u32,
) -> Result<(), ReportError> {
    if value > other_value {
        return Err(ReportError::Inconsistent {
            field,
            value: value.into(),
            other,
            other_value: other_value.into(),
        });
    }
    Ok(())
}

fn entries(field: &'static str, entries: usize, max: usize) -> Result<(), ReportError> {
    if entries > max {
        return Err(ReportError::TooManyEntries {
            field,
            entries,
            max,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use uplink_protocol::{NodeCounts, WatchHealth};

    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    fn honest() -> ClusterSummary {
        let node = ResourceAmounts {
            cpu_millis: 4000,
            memory_bytes: 8 << 30,
            ephemeral_storage_bytes: 100 << 30,
            pods: 110,
        };
        ClusterSummary {
            watches: vec![WatchHealth {
                resource: "nodes.v1".into(),
                ready: true,
                objects: 3,
                error: None,
            }],
            nodes: NodeCounts {
                total: 3,
                ready: 3,
                cordoned: 1,
            },
            capacity: node,
            allocatable: node,
            schedulable: node,
            requests: node,
            usage: Some(node),
            extended: BTreeMap::from([(
                "nvidia.com/gpu".to_owned(),
                ExtendedAmounts {
                    capacity: 8,
                    allocatable: 8,
                    requests: 2,
                },
            )]),
            workspaces: BTreeMap::from([("root:a".to_owned(), node)]),
            ..ClusterSummary::default()
        }
    }

    fn reason(r: Result<(), ReportError>) -> Option<&'static str> {
        r.err().map(|e| e.reason())
    }

    #[test]
    fn an_honest_report_passes() {
        let bounds = ReportBounds::default();
        assert_eq!(bounds.check(NOW - 1000, NOW, Some(&honest())), Ok(()));
        assert_eq!(bounds.check(NOW + 3_600_000, NOW, None), Ok(()));
    }

    #[test]
    fn a_clock_beyond_the_bound_is_refused_without_overflow() {
        let bounds = ReportBounds::default();
        for agent in [NOW + (1 << 62), i64::MAX, i64::MIN, 0, NOW - 86_401_000] {
            assert_eq!(
                reason(bounds.check(agent, NOW, Some(&honest()))),
                Some(refused_reason::CLOCK_SKEW),
                "agent clock {agent}"
            );
        }
        assert_eq!(
            reason(bounds.check(i64::MIN, i64::MAX, None)),
            Some(refused_reason::CLOCK_SKEW)
        );
    }

    #[test]
    fn quantities_and_counts_out_of_bounds_are_refused() {
        let bounds = ReportBounds::default();
        let max = ResourceAmounts {
            cpu_millis: u64::MAX,
            memory_bytes: u64::MAX,
            ephemeral_storage_bytes: u64::MAX,
            pods: u64::MAX,
        };
        type Change<'a> = Box<dyn Fn(&mut ClusterSummary) + 'a>;
        let cases: Vec<(&str, Change, &str)> = vec![
            (
                "allocatable",
                Box::new(|s| s.allocatable = max),
                "out_of_range",
            ),
            ("usage", Box::new(|s| s.usage = Some(max)), "out_of_range"),
            (
                "memory",
                Box::new(|s| s.requests.memory_bytes = (1 << 56) + 1),
                "out_of_range",
            ),
            (
                "nodes",
                Box::new(|s| s.nodes.total = u32::MAX),
                "out_of_range",
            ),
            ("ready", Box::new(|s| s.nodes.ready = 4), "inconsistent"),
            (
                "pods",
                Box::new(|s| s.pods.running = u64::MAX),
                "out_of_range",
            ),
            (
                "extended",
                Box::new(|s| {
                    s.extended.insert(
                        "x/y".into(),
                        ExtendedAmounts {
                            capacity: u64::MAX,
                            ..ExtendedAmounts::default()
                        },
                    );
                }),
                "out_of_range",
            ),
            (
                "workspace",
                Box::new(|s| {
                    s.workspaces.insert("root:b".into(), max);
                }),
                "out_of_range",
            ),
            (
                "entries",
                Box::new(|s| {
                    s.workspaces = (0..10_001)
                        .map(|i| (format!("root:{i}"), ResourceAmounts::default()))
                        .collect();
                }),
                "too_many_entries",
            ),
            (
                "watch objects",
                Box::new(|s| s.watches[0].objects = u64::MAX),
                "out_of_range",
            ),
        ];
        for (what, change, expected) in cases {
            let mut s = honest();
            change(&mut s);
            assert_eq!(
                reason(bounds.check(NOW, NOW, Some(&s))),
                Some(expected),
                "{what}"
            );
        }
    }

    #[test]
    fn errors_name_the_field() {
        let mut s = honest();
        s.workspaces.insert(
            "root:b".into(),
            ResourceAmounts {
                pods: u64::MAX,
                ..ResourceAmounts::default()
            },
        );
        let error = ReportBounds::default().check_summary(&s).err();
        assert!(
            error
                .as_ref()
                .is_some_and(|e| e.to_string().starts_with("workspaces[root:b].pods is ")),
            "{error:?}"
        );
    }
}
