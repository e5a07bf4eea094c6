//! Keeps a session with the hub (one replica of it) for as long as the agent runs: connect, and
//! when the connection ends, wait (exponential backoff, full jitter, capped)
//! and connect again. A connection that stayed established for
//! `reset_after` resets the backoff, so a long-lived link that drops
//! reconnects quickly, while a hub that keeps refusing is not hammered.
//!
//! ```text
//!   Connecting ──session ends──▶ Backoff{delay} ──delay passed──▶ Connecting
//!        │                              │
//!        └────────── stop ──────────────┴──────────▶ Stopped
//! ```

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::ReconnectSettings;
use crate::session::{self, Resumption, SessionContext, SessionEnd};
use uplink_ops::backoff::Backoff;

/// Where the reconnect loop is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Connecting, or connected, on the `attempt`-th try since the last
    /// healthy connection (0 = first).
    Connecting { attempt: u32 },
    /// Waiting before the next attempt.
    Backoff { delay: Duration, attempt: u32 },
    /// Shutting down; the session said goodbye.
    Stopped,
}

/// Runs sessions until `stop` is cancelled.
pub async fn run(ctx: SessionContext, settings: ReconnectSettings, stop: CancellationToken) {
    let mut backoff = Backoff::new(settings.policy());
    let mut resumption = Resumption::default();
    let mut first_attempt = true;
    let mut state = State::Connecting { attempt: 0 };
    loop {
        state = match state {
            State::Connecting { attempt } => {
                if !first_attempt {
                    ctx.metrics.reconnects.inc();
                }
                first_attempt = false;
                tracing::info!(replica = %ctx.replica_name, attempt, "connecting to the hub");
                let report = session::run(&ctx, &mut resumption, &stop).await;
                let healthy = report
                    .established_for
                    .is_some_and(|d| d >= settings.reset_after);
                if healthy {
                    backoff.reset();
                }
                let attempt = if healthy { 0 } else { attempt + 1 };
                match report.outcome {
                    Ok(SessionEnd::Shutdown) => State::Stopped,
                    Ok(SessionEnd::HubBye(reason)) => {
                        tracing::info!(replica = %ctx.replica_name, %reason, "hub said goodbye");
                        State::Backoff {
                            delay: backoff.next_delay(),
                            attempt,
                        }
                    }
                    Err(e) => {
                        tracing::warn!(replica = %ctx.replica_name, error = %e, established_for = ?report.established_for, "session with the hub ended");
                        State::Backoff {
                            delay: backoff.next_delay(),
                            attempt,
                        }
                    }
                }
            }
            State::Backoff { delay, attempt } => {
                tracing::info!(?delay, attempt, "reconnecting after backoff");
                tokio::select! {
                    () = stop.cancelled() => State::Stopped,
                    () = tokio::time::sleep(delay) => State::Connecting { attempt },
                }
            }
            State::Stopped => {
                tracing::info!(replica = %ctx.replica_name, "session loop stopped");
                return;
            }
        };
    }
}
