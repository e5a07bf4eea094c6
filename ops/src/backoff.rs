//! How long to wait before trying again: exponential growth from an initial
//! bound, capped, with jitter. The one place Uplink's retry delays come from:
//! the agent's reconnects, apply retries and discovery, the hub's KCP writes,
//! SyncTarget writes, finalizer writes and placement watches.
//!
//! The growing bound comes from the `backoff` crate. That crate is
//! unmaintained (RUSTSEC-2025-0012, and its `instant` dependency
//! RUSTSEC-2024-0384; both allowed with that reason in `deny.toml`), so it
//! stays behind this one module: nothing else in the workspace names it, and
//! replacing it means changing this file only. The jitter is ours (the
//! crate's symmetric randomization is switched off), in one of two kinds:
//!
//! - [`Jitter::Full`]: uniform in `[0, bound]`. Spreads out agents that lost
//!   the hub at the same moment best.
//! - [`Jitter::Added`]: uniform in `[bound, bound · (1 + fraction)]`. Keeps
//!   at least the nominal wait (the hub's retries against KCP, which must
//!   not hammer a failing server) while objects that failed together still
//!   retry apart.

use std::time::Duration;

use backoff::SystemClock;
use backoff::backoff::Backoff as _;
use backoff::exponential::ExponentialBackoff;
use rand::RngExt;
use rand::rngs::StdRng;

/// How delays grow and spread.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// The first bound.
    pub initial: Duration,
    /// No bound grows past this.
    pub max: Duration,
    /// Each bound is the previous one times this (at least 1).
    pub multiplier: f64,
    /// How a delay is drawn around its bound.
    pub jitter: Jitter,
}

/// How a delay is drawn from its bound.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Jitter {
    /// Uniform in `[0, bound]` ("full jitter").
    Full,
    /// Uniform in `[bound, bound · (1 + fraction)]`; `fraction` is clamped
    /// to `[0, 1]`.
    Added(f64),
}

impl Policy {
    /// Retries that must wait at least the nominal delay: doubling from
    /// `initial` up to `max`, plus up to 20 %.
    pub const fn retries(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            multiplier: 2.0,
            jitter: Jitter::Added(0.2),
        }
    }

    /// Retries spread as widely as possible: doubling from `initial` up to
    /// `max`, each delay uniform below its bound (full jitter).
    pub const fn spread(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            multiplier: 2.0,
            jitter: Jitter::Full,
        }
    }

    /// The bound after `failures` failures in a row (0 and 1 both give the
    /// initial bound): `initial · multiplier^(failures - 1)`, at most `max`.
    pub fn bound_after(&self, failures: u32) -> Duration {
        let mut bounds = Bounds::new(self);
        let mut bound = bounds.next();
        for _ in 1..failures {
            if bound >= self.max {
                break;
            }
            bound = bounds.next();
        }
        bound
    }

    /// The delay before attempt `failures + 1`, for callers that count
    /// failures themselves: [`Self::bound_after`] with the jitter applied.
    pub fn delay_after(&self, failures: u32) -> Duration {
        self.jitter
            .draw(self.bound_after(failures), &mut rand::rng())
    }
}

impl Jitter {
    /// A delay around `bound`.
    fn draw(self, bound: Duration, rng: &mut impl RngExt) -> Duration {
        match self {
            Self::Full => {
                let millis = u64::try_from(bound.as_millis()).unwrap_or(u64::MAX);
                Duration::from_millis(rng.random_range(0..=millis))
            }
            Self::Added(fraction) => {
                let fraction = if fraction.is_finite() {
                    fraction.clamp(0.0, 1.0)
                } else {
                    0.0
                };
                let factor = 1.0 + rng.random_range(0.0..=fraction);
                Duration::try_from_secs_f64(bound.as_secs_f64() * factor).unwrap_or(bound)
            }
        }
    }
}

/// The growing bounds, from the `backoff` crate.
#[derive(Debug)]
struct Bounds {
    inner: ExponentialBackoff<SystemClock>,
}

impl Bounds {
    fn new(policy: &Policy) -> Self {
        let initial = policy.initial.min(policy.max);
        let inner = ExponentialBackoff {
            current_interval: initial,
            initial_interval: initial,
            // No randomization in the bound itself; the jitter is ours.
            randomization_factor: 0.0,
            // `f64::max` also turns NaN into 1.
            multiplier: policy.multiplier.max(1.0),
            max_interval: policy.max,
            // Never give up: callers retry for as long as they run.
            max_elapsed_time: None,
            clock: SystemClock::default(),
            start_time: std::time::Instant::now(),
        };
        Self { inner }
    }

    fn next(&mut self) -> Duration {
        // With `max_elapsed_time: None` the crate always yields a value; the
        // fallback is the cap, never "stop retrying".
        let cap = self.inner.max_interval;
        self.inner.next_backoff().unwrap_or(cap).min(cap)
    }

    fn reset(&mut self) {
        self.inner.reset();
    }
}

/// The delays between attempts of one retrying task, which keeps the state:
/// each [`Backoff::next_delay`] grows the bound, [`Backoff::reset`] starts
/// over (after an attempt that worked long enough).
#[derive(Debug)]
pub struct Backoff {
    policy: Policy,
    bounds: Bounds,
    rng: StdRng,
}

impl Backoff {
    pub fn new(policy: Policy) -> Self {
        Self::with_rng(policy, rand::make_rng())
    }

    /// Same as [`Self::new`], with a given random source (tests seed it).
    pub fn with_rng(policy: Policy, rng: StdRng) -> Self {
        Self {
            bounds: Bounds::new(&policy),
            policy,
            rng,
        }
    }

    /// The bound the next delay is drawn around.
    pub fn next_bound(&mut self) -> Duration {
        self.bounds.next()
    }

    /// The next delay: the next bound, jittered by the policy.
    pub fn next_delay(&mut self) -> Duration {
        let bound = self.next_bound();
        self.policy.jitter.draw(bound, &mut self.rng)
    }

    /// Starts over from the initial bound.
    pub fn reset(&mut self) {
        self.bounds.reset();
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng as _;

    use super::*;

    fn full() -> Policy {
        Policy {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
            multiplier: 2.0,
            jitter: Jitter::Full,
        }
    }

    fn millis(d: Duration) -> u64 {
        u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
    }

    #[test]
    fn bound_grows_up_to_the_cap_and_resets() {
        let mut b = Backoff::with_rng(full(), StdRng::seed_from_u64(1));
        let bounds: Vec<u64> = (0..10).map(|_| millis(b.next_bound())).collect();
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
    fn counted_failures_give_the_same_bounds() {
        let policy = full();
        let mut b = Backoff::with_rng(policy, StdRng::seed_from_u64(1));
        assert_eq!(policy.bound_after(0), policy.initial);
        for failures in 1..=12 {
            assert_eq!(policy.bound_after(failures), b.next_bound(), "{failures}");
        }
        assert_eq!(policy.bound_after(u32::MAX), policy.max);
    }

    #[test]
    fn full_jitter_spreads_below_the_bound() {
        let mut b = Backoff::with_rng(full(), StdRng::seed_from_u64(7));
        let mut expected_bound = 500u64;
        let mut below_half = 0;
        for _ in 0..200 {
            let delay = millis(b.next_delay());
            assert!(delay <= expected_bound, "{delay} > {expected_bound}");
            if delay < expected_bound / 2 {
                below_half += 1;
            }
            expected_bound = (expected_bound * 2).min(30_000);
        }
        // Full jitter draws from [0, bound]: about half fall below the middle.
        assert!((50..150).contains(&below_half), "{below_half}");
    }

    #[test]
    fn added_jitter_keeps_the_nominal_delay_and_spreads_above_it() {
        let policy = Policy::retries(Duration::from_millis(100), Duration::from_secs(1));
        for (failures, nominal) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (40, 1000),
        ] {
            let nominal = Duration::from_millis(nominal);
            let delays: Vec<Duration> = (0..50).map(|_| policy.delay_after(failures)).collect();
            for got in &delays {
                assert!(
                    *got >= nominal && *got <= nominal.mul_f64(1.2),
                    "{failures}: {got:?}"
                );
            }
            // Jittered: 50 draws are not all the same.
            assert!(
                delays.iter().any(|d| *d != delays[0]),
                "{failures}: no jitter"
            );
        }
    }

    #[test]
    fn odd_settings_stay_bounded() {
        let policy = Policy {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(1),
            multiplier: f64::NAN,
            jitter: Jitter::Added(f64::INFINITY),
        };
        // The initial bound is capped, a NaN multiplier does not grow, an
        // infinite fraction adds nothing.
        assert_eq!(policy.bound_after(1), Duration::from_secs(1));
        assert_eq!(policy.delay_after(5), Duration::from_secs(1));
        let huge = Policy::retries(Duration::MAX, Duration::MAX);
        assert!(huge.delay_after(3) >= Duration::from_secs(u64::MAX / 2));
    }
}
