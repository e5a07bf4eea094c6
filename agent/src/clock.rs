//! The agent's wall clock, shifted by `--clock-offset` so tests can simulate
//! an agent whose clock is wrong. Every timestamp the agent sends comes from
//! here.

use std::time::{SystemTime, UNIX_EPOCH};

use jiff::SignedDuration;

/// Wall-clock time in milliseconds since the Unix epoch, plus a fixed offset.
#[derive(Debug, Clone, Copy, Default)]
pub struct AgentClock {
    offset: SignedDuration,
}

impl AgentClock {
    pub fn new(offset: SignedDuration) -> Self {
        Self { offset }
    }

    /// Now, in ms since the Unix epoch, as the agent reports it.
    pub fn now_ms(&self) -> i64 {
        let real = match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(since) => i64::try_from(since.as_millis()).unwrap_or(i64::MAX),
            // A clock before 1970 is broken beyond what we can fix; report 0.
            Err(_) => 0,
        };
        real.saturating_add(i64::try_from(self.offset.as_millis()).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_is_added() {
        let plain = AgentClock::default().now_ms();
        let ahead = AgentClock::new(SignedDuration::from_secs(3600)).now_ms();
        let behind = AgentClock::new(SignedDuration::from_secs(-3600)).now_ms();
        // Allow for the test being slow between the reads.
        assert!((ahead - plain - 3_600_000).abs() < 5_000);
        assert!((plain - behind - 3_600_000).abs() < 5_000);
    }
}
