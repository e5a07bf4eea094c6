//! Bounded in-memory history: one series of samples per cluster and one for
//! the fleet.
//!
//! A series keeps at most [`HistorySettings::retention`] of samples and at
//! most [`HistorySettings::max_points`] points. When it is full, the older
//! half is downsampled: neighbouring points are merged in pairs (their mean
//! time and mean values), so old history gets coarser step by step instead
//! of disappearing at once. Points older than the retention are dropped.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use serde::Serialize;
use uplink_protocol::ResourceAmounts;

/// The fleet's series key in [`History`].
pub const FLEET: &str = "";

/// How much history is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistorySettings {
    pub retention: Duration,
    /// Points per series; at least 4.
    pub max_points: usize,
}

impl Default for HistorySettings {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(24 * 3600),
            max_points: 2880,
        }
    }
}

/// One sample (or the mean of several, after downsampling).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Point {
    /// Milliseconds since the Unix epoch (hub clock).
    pub at_ms: i64,
    pub allocatable: ResourceAmounts,
    pub allocated: ResourceAmounts,
    /// `None` when usage was unknown at (any of the merged) samples.
    pub used: Option<ResourceAmounts>,
    /// How many samples this point stands for.
    pub samples: u32,
}

impl Point {
    /// The sample-weighted mean of two neighbouring points.
    fn merge(a: &Point, b: &Point) -> Point {
        let (wa, wb) = (u128::from(a.samples), u128::from(b.samples));
        let w = wa + wb;
        let mean = |x: u64, y: u64| -> u64 {
            let sum = u128::from(x) * wa + u128::from(y) * wb;
            // Rounded to nearest; fits because it is between x and y.
            u64::try_from((sum + w / 2) / w).unwrap_or(u64::MAX)
        };
        let amounts = |x: &ResourceAmounts, y: &ResourceAmounts| ResourceAmounts {
            cpu_millis: mean(x.cpu_millis, y.cpu_millis),
            memory_bytes: mean(x.memory_bytes, y.memory_bytes),
            ephemeral_storage_bytes: mean(x.ephemeral_storage_bytes, y.ephemeral_storage_bytes),
            pods: mean(x.pods, y.pods),
        };
        let at = (i128::from(a.at_ms) * wa as i128 + i128::from(b.at_ms) * wb as i128) / w as i128;
        Point {
            at_ms: i64::try_from(at).unwrap_or(b.at_ms),
            allocatable: amounts(&a.allocatable, &b.allocatable),
            allocated: amounts(&a.allocated, &b.allocated),
            used: match (&a.used, &b.used) {
                (Some(x), Some(y)) => Some(amounts(x, y)),
                _ => None,
            },
            samples: a.samples.saturating_add(b.samples),
        }
    }
}

/// Every series; see the module documentation.
#[derive(Debug, Default)]
pub struct History {
    settings: HistorySettings,
    series: BTreeMap<String, VecDeque<Point>>,
}

impl History {
    pub fn new(settings: HistorySettings) -> Self {
        Self {
            settings: HistorySettings {
                max_points: settings.max_points.max(4),
                ..settings
            },
            series: BTreeMap::new(),
        }
    }

    /// Appends `point` to the series `key` (a cluster, or [`FLEET`]).
    pub fn record(&mut self, key: &str, point: Point) {
        let series = self.series.entry(key.to_owned()).or_default();
        series.push_back(point);
        let oldest = point
            .at_ms
            .saturating_sub(i64::try_from(self.settings.retention.as_millis()).unwrap_or(i64::MAX));
        while series.front().is_some_and(|p| p.at_ms < oldest) {
            series.pop_front();
        }
        if series.len() > self.settings.max_points {
            downsample(series);
        }
    }

    /// Forgets every series but the fleet's and those in `keep`.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.series.retain(|k, _| k == FLEET || keep(k));
    }

    /// The points of `key` with `from_ms <= at_ms <= to_ms`.
    pub fn range(&self, key: &str, from_ms: i64, to_ms: i64) -> Vec<Point> {
        self.series
            .get(key)
            .map(|s| {
                s.iter()
                    .filter(|p| p.at_ms >= from_ms && p.at_ms <= to_ms)
                    .copied()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The names of the series (clusters, and [`FLEET`] as `""`).
    pub fn keys(&self) -> Vec<String> {
        self.series.keys().cloned().collect()
    }
}

/// Merges the older half of `series` in pairs.
fn downsample(series: &mut VecDeque<Point>) {
    let half = series.len() / 2;
    let older: Vec<Point> = series.drain(..half).collect();
    let mut merged: Vec<Point> = older
        .chunks(2)
        .filter_map(|pair| pair.iter().copied().reduce(|a, b| Point::merge(&a, &b)))
        .collect();
    while let Some(p) = merged.pop() {
        series.push_front(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(at_ms: i64, cpu: u64) -> Point {
        let amounts = ResourceAmounts {
            cpu_millis: cpu,
            ..ResourceAmounts::default()
        };
        Point {
            at_ms,
            allocatable: amounts,
            allocated: amounts,
            used: None,
            samples: 1,
        }
    }

    #[test]
    fn bounded_by_points_with_old_points_downsampled_not_dropped() {
        let mut h = History::new(HistorySettings {
            retention: Duration::from_secs(1_000_000),
            max_points: 10,
        });
        for i in 0..100 {
            h.record("a", point(i * 1000, i as u64));
        }
        let all = h.range("a", i64::MIN, i64::MAX);
        assert!(all.len() <= 10, "{}", all.len());
        // Every sample is still represented, the oldest ones coarser.
        assert_eq!(all.iter().map(|p| u64::from(p.samples)).sum::<u64>(), 100);
        assert!(all.windows(2).all(|w| w[0].at_ms < w[1].at_ms));
        assert_eq!(all.last().map(|p| (p.at_ms, p.samples)), Some((99_000, 1)));
        assert!(all[0].samples > 1);
    }

    #[test]
    fn retention_drops_old_points_and_ranges_filter_by_time() {
        let mut h = History::new(HistorySettings {
            retention: Duration::from_secs(10),
            max_points: 1000,
        });
        for i in 0..30 {
            h.record(FLEET, point(i * 1000, 1));
        }
        let all = h.range(FLEET, i64::MIN, i64::MAX);
        assert_eq!(all.first().map(|p| p.at_ms), Some(19_000));
        assert_eq!(h.range(FLEET, 20_000, 22_000).len(), 3);
        assert!(h.range("nope", 0, i64::MAX).is_empty());
    }

    #[test]
    fn merged_points_are_sample_weighted_means() {
        let mut a = point(0, 10);
        a.samples = 3;
        let b = point(4000, 30);
        let m = Point::merge(&a, &b);
        assert_eq!((m.at_ms, m.allocated.cpu_millis, m.samples), (1000, 15, 4));
    }
}
