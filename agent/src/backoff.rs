//! How long to wait before the next connection attempt: exponential growth
//! with full jitter, capped.
//!
//! The growing bound comes from the `backoff` crate (unmaintained, so it stays
//! behind this one type); the jitter is "full jitter": a uniform draw in
//! `[0, bound]`, which spreads out agents that lost the hub at the same moment
//! better than the crate's symmetric randomization.

use std::time::Duration;

use backoff::SystemClock;
use backoff::backoff::Backoff as _;
use backoff::exponential::ExponentialBackoff;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::config::ReconnectSettings;

/// The delays between connection attempts.
#[derive(Debug)]
pub struct ReconnectBackoff {
    bounds: ExponentialBackoff<SystemClock>,
    rng: StdRng,
}

impl ReconnectBackoff {
    pub fn new(settings: &ReconnectSettings) -> Self {
        Self::with_rng(settings, StdRng::from_os_rng())
    }

    /// Same as [`Self::new`], with a given random source (tests seed it).
    pub fn with_rng(settings: &ReconnectSettings, rng: StdRng) -> Self {
        let bounds = ExponentialBackoff {
            current_interval: settings.initial,
            initial_interval: settings.initial,
            // No randomization in the bound itself; the jitter is ours.
            randomization_factor: 0.0,
            multiplier: settings.multiplier.max(1.0),
            max_interval: settings.max,
            // Never give up: an agent retries for as long as it runs.
            max_elapsed_time: None,
            clock: SystemClock::default(),
            start_time: std::time::Instant::now(),
        };
        Self { bounds, rng }
    }

    /// The upper bound the next delay is drawn from.
    pub fn next_bound(&mut self) -> Duration {
        // With `max_elapsed_time: None` the crate always yields a value; the
        // fallback is the cap, never "stop retrying".
        let cap = self.bounds.max_interval;
        self.bounds.next_backoff().unwrap_or(cap).min(cap)
    }

    /// The next delay: uniform in `[0, bound]`, where the bound doubles (by
    /// the configured multiplier) per call up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let bound = self.next_bound();
        let millis = u64::try_from(bound.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(self.rng.random_range(0..=millis))
    }

    /// Starts over from the initial bound (after a connection that stayed
    /// healthy long enough).
    pub fn reset(&mut self) {
        self.bounds.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ReconnectSettings {
        ReconnectSettings {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
            multiplier: 2.0,
            reset_after: Duration::from_secs(60),
        }
    }

    #[test]
    fn bound_doubles_up_to_the_cap_and_resets() {
        let mut b = ReconnectBackoff::with_rng(&settings(), StdRng::seed_from_u64(1));
        let bounds: Vec<u64> = (0..10).map(|_| b.next_bound().as_millis() as u64).collect();
        assert_eq!(
            bounds,
            [
                500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000
            ]
        );
        b.reset();
        assert_eq!(b.next_bound(), Duration::from_millis(500));
    }

    #[test]
    fn delays_are_full_jitter_below_the_bound() {
        let mut b = ReconnectBackoff::with_rng(&settings(), StdRng::seed_from_u64(7));
        let mut expected_bound = 500u64;
        let mut below_half = 0;
        for _ in 0..200 {
            let delay = b.next_delay().as_millis() as u64;
            assert!(delay <= expected_bound, "{delay} > {expected_bound}");
            if delay < expected_bound / 2 {
                below_half += 1;
            }
            expected_bound = (expected_bound * 2).min(30_000);
        }
        // Full jitter draws from [0, bound]: about half fall below the middle.
        // (Symmetric jitter of the `backoff` crate would put none there.)
        assert!((50..150).contains(&below_half), "{below_half}");
    }
}
