//! A budget for the listener's warnings, so a scanner or a flood cannot
//! flood the log: every refusal is counted in a metric, only a few a second
//! are logged, and the next logged one says how many were left out.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Lets at most [`WarnBudget::PER_SECOND`] handshake warnings through per
/// second, so a scanner or a misconfigured fleet cannot flood the log; the
/// next warning says how many were left out (the metric counts them all).
#[derive(Debug, Default)]
pub struct WarnBudget {
    state: Mutex<WarnWindow>,
}

#[derive(Debug, Default)]
struct WarnWindow {
    started: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

impl WarnBudget {
    const PER_SECOND: u32 = 10;

    /// `Some(warnings left out since the last one)` when this one may be logged.
    pub fn allow(&self) -> Option<u64> {
        let mut window = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if window
            .started
            .is_none_or(|started| now.duration_since(started) >= Duration::from_secs(1))
        {
            window.started = Some(now);
            window.logged = 0;
        }
        if window.logged < Self::PER_SECOND {
            window.logged += 1;
            Some(std::mem::take(&mut window.suppressed))
        } else {
            window.suppressed += 1;
            None
        }
    }
}
