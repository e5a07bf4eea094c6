//! Every cluster's health and capacity, the fleet's totals, history, trends
//! and reports.
//!
//! The agents' heartbeat summaries (kept by [`crate::health`]) are the only
//! input: the numbers are the scheduler's, computed by each agent from its
//! nodes and pods, carried as integers in base units and added up here
//! exactly (saturating, never wrapping). A summary out of [`validate`]'s
//! bounds, or sent by an agent whose clock is too far off, never gets here.
//!
//! - [`record`]: one cluster's [`CapacityRecord`] and health thresholds;
//! - [`fleet`]: totals, per-workspace requests, top N;
//! - [`history`]: bounded series per cluster and for the fleet;
//! - [`trend`]: least-squares slopes and time to exhaustion;
//! - [`report`]: JSON, CSV and table renderings;
//! - [`metrics`]: the `uplink_cluster_*` and `uplink_fleet_*` gauges;
//! - [`api`]: `GET /api/v1/capacity[...]`, and the `uplink-hub report` client;
//! - [`validate`]: the bounds a cluster's heartbeat report must keep to.
//!
//! [`Capacity::run`] refreshes the metrics every few seconds and samples the
//! history every [`CapacitySettings::sample_interval`].

pub mod api;
pub mod fleet;
pub mod history;
pub mod metrics;
pub mod record;
pub mod report;
pub mod trend;
pub mod validate;

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use self::fleet::Ranking;
pub use self::history::HistorySettings;
use self::history::{FLEET, History, Point};
use self::metrics::CapacityMetrics;
pub use self::record::{CapacityRecord, ClusterHealth};
pub use self::report::{CapacityReport, Format};
pub use self::validate::{ReportBounds, ReportError};
use crate::health::{Health, cluster_state, unix_ms};

/// How capacity is sampled and how much history is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapacitySettings {
    /// How often a history point is recorded per cluster and for the fleet.
    pub sample_interval: Duration,
    pub history: HistorySettings,
    /// Length of the top N lists in reports.
    pub top_n: usize,
    /// What a cluster's heartbeat report must keep to; beyond it the
    /// report is refused.
    pub reports: ReportBounds,
}

impl Default for CapacitySettings {
    fn default() -> Self {
        Self {
            sample_interval: Duration::from_secs(30),
            history: HistorySettings::default(),
            top_n: 5,
            reports: ReportBounds::default(),
        }
    }
}

/// The hub's capacity view; see the module documentation.
#[derive(Debug)]
pub struct Capacity {
    health: Arc<Health>,
    heartbeat_interval: Duration,
    offline_grace: Duration,
    settings: CapacitySettings,
    history: Mutex<History>,
    metrics: CapacityMetrics,
}

impl Capacity {
    /// Registers the capacity metrics in `registry`.
    pub fn new(
        health: Arc<Health>,
        heartbeat_interval: Duration,
        offline_grace: Duration,
        settings: CapacitySettings,
        registry: &prometheus::Registry,
    ) -> Result<Self, prometheus::Error> {
        Ok(Self {
            health,
            heartbeat_interval,
            offline_grace,
            history: Mutex::new(History::new(settings.history)),
            settings,
            metrics: CapacityMetrics::register(registry)?,
        })
    }

    fn history(&self) -> MutexGuard<'_, History> {
        // Appends and drains of plain values; a poisoned lock holds valid data.
        self.history.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every cluster's record at `now`.
    pub fn records(&self, now: SystemTime) -> Vec<CapacityRecord> {
        self.health
            .records()
            .into_iter()
            .map(|(name, record)| {
                let state =
                    cluster_state(&record, now, self.heartbeat_interval, self.offline_grace);
                CapacityRecord::new(&name, &record, state)
            })
            .collect()
    }

    /// The full report at `now`.
    pub fn report(&self, now: SystemTime) -> CapacityReport {
        let clusters = self.records(now);
        let fleet_points = self.history().range(FLEET, i64::MIN, i64::MAX);
        CapacityReport {
            generated_at: rfc3339(now),
            fleet: fleet::totals(&clusters),
            workspaces: fleet::workspaces(&clusters),
            top_allocation: fleet::top(&clusters, Ranking::Allocation, self.settings.top_n),
            top_utilization: fleet::top(&clusters, Ranking::Utilization, self.settings.top_n),
            fleet_trends: trend::trends(&fleet_points),
            clusters,
        }
    }

    /// History of `cluster` (`None`: the fleet) between two times (ms).
    pub fn history_range(&self, cluster: Option<&str>, from_ms: i64, to_ms: i64) -> Vec<Point> {
        self.history()
            .range(cluster.unwrap_or(FLEET), from_ms, to_ms)
    }

    /// Removes the metric series of `cluster` (the hub forgot it).
    pub fn forget(&self, cluster: &str) {
        self.metrics.forget(cluster);
    }

    /// Publishes the metrics for `now`.
    pub fn refresh_metrics(&self, now: SystemTime) {
        let records = self.records(now);
        let fleet = fleet::totals(&records);
        self.metrics.publish(&records, &fleet);
    }

    /// Records one history point per counted cluster and one for the fleet.
    pub fn sample(&self, now: SystemTime) {
        let records = self.records(now);
        let fleet = fleet::totals(&records);
        let at_ms = unix_ms(now);
        let mut history = self.history();
        for r in records.iter().filter(|r| r.counts_in_totals()) {
            history.record(
                &r.cluster,
                Point {
                    at_ms,
                    allocatable: r.allocatable,
                    allocated: r.allocated,
                    used: r.used,
                    samples: 1,
                },
            );
        }
        history.record(
            FLEET,
            Point {
                at_ms,
                allocatable: fleet.allocatable,
                allocated: fleet.allocated,
                used: fleet.used,
                samples: 1,
            },
        );
    }

    /// Refreshes metrics and samples history until `stop`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let refresh =
            (self.heartbeat_interval / 2).clamp(Duration::from_millis(50), Duration::from_secs(5));
        let mut ticks = tokio::time::interval(refresh);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_sample = tokio::time::Instant::now();
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let now = SystemTime::now();
            self.refresh_metrics(now);
            if tokio::time::Instant::now() >= next_sample {
                self.sample(now);
                next_sample += self.settings.sample_interval.max(Duration::from_millis(10));
            }
        }
    }
}

/// RFC 3339 in whole seconds.
pub fn rfc3339(time: SystemTime) -> String {
    jiff::Timestamp::try_from(time)
        .ok()
        .and_then(|ts| jiff::Timestamp::from_second(ts.as_second()).ok())
        .map(|ts| ts.to_string())
        .unwrap_or_default()
}
