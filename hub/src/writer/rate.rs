//! A token bucket: at most `burst` writes at once, `qps` sustained.

use std::time::Duration;

use tokio::time::Instant;

/// Limits how fast the writer sends requests upstream.
#[derive(Debug)]
pub struct TokenBucket {
    /// Tokens added per second; zero or less means unlimited.
    qps: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(qps: f64, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            qps,
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    /// Waits until a token is available and takes it.
    pub async fn acquire(&mut self) {
        if self.qps <= 0.0 || !self.qps.is_finite() {
            return;
        }
        self.refill();
        if self.tokens < 1.0 {
            let wait = (1.0 - self.tokens) / self.qps;
            tokio::time::sleep(Duration::from_secs_f64(wait)).await;
            self.refill();
        }
        self.tokens -= 1.0;
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.qps).min(self.burst);
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
}
