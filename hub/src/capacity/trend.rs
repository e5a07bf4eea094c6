//! Trends: how fast allocation (and usage) grows, and how long until the
//! allocatable is exhausted at that rate.
//!
//! The slope is an ordinary least-squares fit of the series against time
//! (each point weighted by the samples it stands for). The exhaustion time
//! is when the fitted line reaches the latest allocatable, counted from the
//! latest point; there is none when the slope is zero or negative, or fewer
//! than two distinct times are known. Ratios and fits are floats: they are
//! estimates, unlike the sums, which stay exact integers.

use serde::Serialize;
use uplink_protocol::ResourceAmounts;

use super::history::Point;

/// The resources trends are computed for.
pub const RESOURCES: [&str; 4] = ["cpu", "memory", "ephemeral_storage", "pods"];

/// The value of `resource` (one of [`RESOURCES`]) in `amounts`, in its base
/// unit (millicores for CPU).
pub fn amount(amounts: &ResourceAmounts, resource: &str) -> u64 {
    match resource {
        "cpu" => amounts.cpu_millis,
        "memory" => amounts.memory_bytes,
        "ephemeral_storage" => amounts.ephemeral_storage_bytes,
        _ => amounts.pods,
    }
}

/// A least-squares line `y = intercept + slope * t` (`t` in seconds).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fit {
    /// Units per second.
    pub slope: f64,
    /// The fitted value at `t = t0`.
    pub at_t0: f64,
    /// The time origin, seconds since the Unix epoch.
    pub t0: f64,
}

impl Fit {
    pub fn value_at(&self, t: f64) -> f64 {
        self.at_t0 + self.slope * (t - self.t0)
    }
}

/// Fits `(t seconds, y, weight)` samples; `None` with fewer than two
/// distinct times.
pub fn least_squares(samples: &[(f64, f64, f64)]) -> Option<Fit> {
    let weight: f64 = samples.iter().map(|s| s.2).sum();
    if weight <= 0.0 {
        return None;
    }
    // Centred on the mean time, for numerical stability with epoch seconds.
    let t_mean = samples.iter().map(|s| s.0 * s.2).sum::<f64>() / weight;
    let y_mean = samples.iter().map(|s| s.1 * s.2).sum::<f64>() / weight;
    let mut stt = 0.0;
    let mut sty = 0.0;
    for &(t, y, w) in samples {
        stt += w * (t - t_mean) * (t - t_mean);
        sty += w * (t - t_mean) * (y - y_mean);
    }
    if stt <= 0.0 {
        return None;
    }
    Some(Fit {
        slope: sty / stt,
        at_t0: y_mean,
        t0: t_mean,
    })
}

/// One resource's trend.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Trend {
    pub resource: &'static str,
    /// Growth of the allocated amount, base units per hour.
    pub allocated_per_hour: f64,
    /// Seconds from the latest point until the fitted allocation reaches the
    /// latest allocatable; `None` when flat or falling.
    pub allocation_exhausted_in_s: Option<f64>,
    /// Growth of usage, base units per hour; `None` without usage.
    pub used_per_hour: Option<f64>,
    /// Seconds until the fitted usage reaches the latest allocatable.
    pub usage_exhausted_in_s: Option<f64>,
}

/// Trends of every resource over `points` (oldest first); empty with fewer
/// than two points.
pub fn trends(points: &[Point]) -> Vec<Trend> {
    let Some(last) = points.last() else {
        return Vec::new();
    };
    let t_last = last.at_ms as f64 / 1000.0;
    RESOURCES
        .iter()
        .filter_map(|&resource| {
            let series = |pick: &dyn Fn(&Point) -> Option<u64>| -> Vec<(f64, f64, f64)> {
                points
                    .iter()
                    .filter_map(|p| {
                        Some((
                            p.at_ms as f64 / 1000.0,
                            pick(p)? as f64,
                            f64::from(p.samples),
                        ))
                    })
                    .collect()
            };
            let limit = amount(&last.allocatable, resource) as f64;
            let allocated = least_squares(&series(&|p| Some(amount(&p.allocated, resource))))?;
            let used = least_squares(&series(&|p| p.used.map(|u| amount(&u, resource))));
            Some(Trend {
                resource,
                allocated_per_hour: allocated.slope * 3600.0,
                allocation_exhausted_in_s: exhaustion(&allocated, limit, t_last),
                used_per_hour: used.map(|f| f.slope * 3600.0),
                usage_exhausted_in_s: used.and_then(|f| exhaustion(&f, limit, t_last)),
            })
        })
        .collect()
}

/// Seconds from `t_last` until `fit` reaches `limit`; `None` unless rising.
pub fn exhaustion(fit: &Fit, limit: f64, t_last: f64) -> Option<f64> {
    if fit.slope <= 0.0 || !fit.slope.is_finite() {
        return None;
    }
    let t_reach = fit.t0 + (limit - fit.at_t0) / fit.slope;
    Some((t_reach - t_last).max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(at_s: i64, allocatable: u64, allocated: u64) -> Point {
        let a = |cpu| ResourceAmounts {
            cpu_millis: cpu,
            memory_bytes: cpu << 20,
            ..ResourceAmounts::default()
        };
        Point {
            at_ms: at_s * 1000,
            allocatable: a(allocatable),
            allocated: a(allocated),
            used: None,
            samples: 1,
        }
    }

    #[test]
    fn exhaustion_of_a_known_slope_is_within_one_percent() {
        // 2 millicores per minute from 1000m, limit 64000m, sampled each
        // minute for 6 hours with a small deterministic jitter.
        let start = 1_700_000_000;
        let points: Vec<Point> = (0..360)
            .map(|i| {
                let jitter = [0u64, 1, 0, 2, 1][i % 5];
                point(start + 60 * i as i64, 64_000, 1000 + 2 * i as u64 + jitter)
            })
            .collect();
        let cpu = trends(&points)
            .into_iter()
            .find(|t| t.resource == "cpu")
            .unwrap_or_else(|| panic!("no cpu trend"));
        let last_value = 1000.0 + 2.0 * 359.0;
        let exact = (64_000.0 - last_value) / (2.0 / 60.0);
        let predicted = cpu
            .allocation_exhausted_in_s
            .unwrap_or_else(|| panic!("no exhaustion"));
        assert!(
            (predicted - exact).abs() / exact < 0.01,
            "predicted {predicted}, exact {exact}"
        );
        assert!((cpu.allocated_per_hour - 120.0).abs() < 1.0);
        assert_eq!(cpu.used_per_hour, None);
    }

    #[test]
    fn no_exhaustion_when_flat_or_falling() {
        let flat: Vec<Point> = (0..10).map(|i| point(i * 60, 100, 50)).collect();
        let falling: Vec<Point> = (0..10).map(|i| point(i * 60, 100, 90 - i as u64)).collect();
        for points in [flat, falling] {
            assert!(
                trends(&points)
                    .iter()
                    .all(|t| t.allocation_exhausted_in_s.is_none())
            );
        }
        assert!(trends(&[point(0, 1, 1)]).is_empty());
    }
}
