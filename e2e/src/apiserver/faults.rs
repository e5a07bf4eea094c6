//! Fault injection: latency, error responses and short-lived watches, switched
//! on and off at run time by tests and benchmarks through a cheap handle.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::time::Duration;

/// A handle on one server's fault settings. Clones share the settings; a
/// change applies to every request that starts after it.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    inner: Arc<FaultSettings>,
}

#[derive(Debug)]
struct FaultSettings {
    /// Added before every request is handled, in microseconds.
    latency_micros: AtomicU64,
    /// Share of non-watch requests that fail, as `f64` bits.
    error_share_bits: AtomicU64,
    /// Status code of injected failures.
    error_status: AtomicU16,
    /// Watches end after this many events; `u64::MAX` means never.
    close_watches_after: AtomicU64,
}

/// What the request pipeline should do for one request, read once when the
/// request starts so that a concurrent change cannot half-apply.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct FaultPlan {
    pub latency: Duration,
    /// `Some(status)` when this (non-watch) request must fail.
    pub fail_with: Option<u16>,
    pub close_watch_after: Option<u64>,
}

impl Faults {
    /// Delays every request by `d` (zero switches it off).
    pub fn set_latency(&self, d: Duration) {
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.inner.latency_micros.store(micros, Ordering::Relaxed);
    }

    /// Answers a share (0.0..=1.0) of non-watch requests with `status`: 429
    /// (with `Retry-After: 1`), 500 or 503, as a `Status` object. 0.0 is off.
    pub fn set_error_rate(&self, share: f64, status: u16) {
        let share = if share.is_finite() {
            share.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self.inner.error_status.store(status, Ordering::Relaxed);
        self.inner
            .error_share_bits
            .store(share.to_bits(), Ordering::Relaxed);
    }

    /// Ends every watch (cleanly, like a server-side timeout) after it has
    /// sent `events` events. Bookmarks do not count. `None` is off.
    pub fn set_close_watches_after(&self, events: Option<u64>) {
        self.inner
            .close_watches_after
            .store(events.unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Switches every fault off.
    pub fn clear(&self) {
        self.set_latency(Duration::ZERO);
        self.set_error_rate(0.0, 0);
        self.set_close_watches_after(None);
    }

    pub(crate) fn plan(&self, is_watch: bool) -> FaultPlan {
        let latency = Duration::from_micros(self.inner.latency_micros.load(Ordering::Relaxed));
        let share = f64::from_bits(self.inner.error_share_bits.load(Ordering::Relaxed));
        let status = self.inner.error_status.load(Ordering::Relaxed);
        let fail_with =
            (!is_watch && share > 0.0 && rand::random::<f64>() < share).then_some(status);
        let close = self.inner.close_watches_after.load(Ordering::Relaxed);
        FaultPlan {
            latency,
            fail_with,
            close_watch_after: (close != u64::MAX).then_some(close),
        }
    }
}

impl Default for FaultSettings {
    fn default() -> Self {
        FaultSettings {
            latency_micros: AtomicU64::new(0),
            error_share_bits: AtomicU64::new(0.0f64.to_bits()),
            error_status: AtomicU16::new(0),
            close_watches_after: AtomicU64::new(u64::MAX),
        }
    }
}

impl Default for FaultPlan {
    fn default() -> Self {
        FaultPlan {
            latency: Duration::ZERO,
            fail_with: None,
            close_watch_after: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_off() {
        let faults = Faults::default();
        assert_eq!(faults.plan(false), FaultPlan::default());
    }

    #[test]
    fn full_error_rate_fails_every_non_watch_request() {
        let faults = Faults::default();
        faults.set_error_rate(1.0, 503);
        assert_eq!(faults.plan(false).fail_with, Some(503));
        assert_eq!(faults.plan(true).fail_with, None);
        faults.clear();
        assert_eq!(faults.plan(false).fail_with, None);
    }

    #[test]
    fn watch_close_and_latency_are_reported() {
        let faults = Faults::default();
        faults.set_latency(Duration::from_millis(5));
        faults.set_close_watches_after(Some(3));
        let plan = faults.plan(true);
        assert_eq!(plan.latency, Duration::from_millis(5));
        assert_eq!(plan.close_watch_after, Some(3));
    }
}
