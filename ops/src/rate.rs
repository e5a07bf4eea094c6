//! A token bucket: at most `burst` at once, `rate` per second sustained.
//! The hub's KCP writer waits on one ([`TokenBucket::acquire`]); rate
//! limits that must never wait (events, issue 18) ask it
//! ([`TokenBucket::try_take`]) and come back at
//! [`TokenBucket::next_token_at`].
//!
//! Time is passed in or read from tokio's clock, so tests run on paused
//! time.

use std::time::Duration;

use tokio::time::Instant;

/// Tokens refilled continuously up to a burst.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Tokens added per second; zero, negative or not finite: unlimited.
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket (`burst` is at least one).
    pub fn new(rate: f64, burst: u32) -> Self {
        Self::full_at(rate, burst, Instant::now())
    }

    /// A full bucket as of `now`.
    pub fn full_at(rate: f64, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    fn unlimited(&self) -> bool {
        self.rate <= 0.0 || !self.rate.is_finite()
    }

    /// Takes a token if one is there at `now`.
    pub fn try_take(&mut self, now: Instant) -> bool {
        if self.unlimited() {
            return true;
        }
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// When the next token is there (`now` if it already is).
    pub fn next_token_at(&mut self, now: Instant) -> Instant {
        if self.unlimited() {
            return now;
        }
        self.refill(now);
        if self.tokens >= 1.0 {
            now
        } else {
            now + Duration::from_secs_f64((1.0 - self.tokens) / self.rate)
        }
    }

    /// Whether the bucket is full at `now` (it has been idle for a while):
    /// a full bucket is the same as a new one, so it may be forgotten.
    pub fn is_full(&mut self, now: Instant) -> bool {
        self.unlimited() || {
            self.refill(now);
            self.tokens >= self.burst
        }
    }

    /// Waits until a token is available and takes it.
    pub async fn acquire(&mut self) {
        loop {
            let now = Instant::now();
            if self.try_take(now) {
                return;
            }
            tokio::time::sleep_until(self.next_token_at(now)).await;
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn burst_then_rate() {
        let mut bucket = TokenBucket::new(10.0, 5);
        let start = Instant::now();
        for _ in 0..5 {
            bucket.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO, "the burst is free");
        for _ in 0..10 {
            bucket.acquire().await;
        }
        let elapsed = start.elapsed();
        assert!(
            elapsed >= Duration::from_millis(990) && elapsed <= Duration::from_millis(1100),
            "10 more tokens at 10/s take about a second, took {elapsed:?}"
        );
    }

    #[test]
    fn try_take_never_waits_and_says_when_to_come_back() {
        let start = Instant::now();
        let mut bucket = TokenBucket::full_at(2.0, 3, start);
        assert!((0..3).all(|_| bucket.try_take(start)), "the burst");
        assert!(!bucket.try_take(start));
        let next = bucket.next_token_at(start);
        assert_eq!(next, start + Duration::from_millis(500), "2 per second");
        assert!(!bucket.try_take(next - Duration::from_millis(1)));
        assert!(bucket.try_take(next));
        assert!(!bucket.is_full(next));
        let later = next + Duration::from_secs(2);
        assert!(bucket.is_full(later));
        assert!((0..3).all(|_| bucket.try_take(later)));
        // A clock read before the last one adds nothing and moves no time
        // back.
        assert!(!bucket.try_take(start));
        assert_eq!(
            bucket.next_token_at(later),
            later + Duration::from_millis(500)
        );
    }

    #[test]
    fn a_zero_rate_is_unlimited() {
        let now = Instant::now();
        let mut bucket = TokenBucket::full_at(0.0, 1, now);
        assert!((0..1000).all(|_| bucket.try_take(now)));
        assert_eq!(bucket.next_token_at(now), now);
    }
}
