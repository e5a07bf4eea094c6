//! Heartbeats: one every interval (the shorter of the agent's and the
//! hub's, or the keepalive interval a replica asked for:
//! [`session_interval`]), with the cluster's summary when it changed (and at least every
//! two minutes), and a WebSocket ping when the hub has been silent; the
//! hub's answer gives the round trip.

use std::time::Duration;

use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use uplink_protocol::{AgentFrame, Heartbeat, HeartbeatAck, truncate_utf8};

use super::wire::Sender;
use super::{SessionError, Steady};

/// Longest time between two heartbeats carrying the summary, changed or not.
const FULL_SUMMARY_EVERY: Duration = Duration::from_secs(120);

/// The heartbeat interval of a session: the shorter of the agent's and the
/// hub's (the hub judges staleness by its own; sending more often is
/// harmless, less often is not). A hub announcing 0 leaves the agent's.
pub fn heartbeat_interval(agent: Duration, hub_ms: u64) -> Duration {
    if hub_ms == 0 {
        agent
    } else {
        agent.min(Duration::from_millis(hub_ms))
    }
}

/// The heartbeat interval of a session whose `Welcome` said `welcome_ms`
/// and whose replica last asked for `asked_ms`
/// (`ShardsHeld::heartbeat_interval_ms`): an interval longer than the
/// `Welcome`'s is a keepalive, asked by a replica that does not write the
/// cluster's health, and is kept as asked (the agent's own shorter interval
/// would defeat it); a shorter one, or none, is
/// [`heartbeat_interval`] of it, as before.
pub fn session_interval(agent: Duration, welcome_ms: u64, asked_ms: Option<u64>) -> Duration {
    match asked_ms {
        Some(asked) if asked > welcome_ms => Duration::from_millis(asked),
        Some(asked) => heartbeat_interval(agent, asked),
        None => heartbeat_interval(agent, welcome_ms),
    }
}

impl Steady<'_> {
    /// Heartbeats every `interval` from now on (its replica asked for it),
    /// and judges the hub dead after three of them without anything.
    pub(super) fn set_heartbeat(&mut self, interval: Duration) {
        if interval == self.heartbeat {
            return;
        }
        tracing::debug!(
            cluster = %self.ctx.cluster,
            replica = %self.ctx.replica_name,
            previous_ms = self.heartbeat.as_millis(),
            interval_ms = interval.as_millis(),
            "the session's heartbeat interval changed"
        );
        self.heartbeat = interval;
    }

    pub(super) async fn send_heartbeat(&mut self, tx: &mut Sender) -> Result<(), SessionError> {
        let mut summary = self.ctx.health.summary();
        for watch in &mut summary.watches {
            if let Some(error) = &mut watch.error {
                truncate_utf8(error, self.limits.max_string_bytes as usize);
            }
        }
        let changed = self.last_summary.as_ref() != Some(&summary)
            || self.last_summary_sent.elapsed() >= FULL_SUMMARY_EVERY;
        if changed {
            self.last_summary_sent = Instant::now();
        }
        let heartbeat = Heartbeat {
            agent_time_ms: self.ctx.clock.now_ms(),
            summary: changed.then(|| summary.clone()),
        };
        tx.frame(&AgentFrame::Heartbeat(heartbeat)).await?;
        // A WebSocket ping too only when the hub has said nothing for one
        // and a half intervals: its pong then proves the connection alive
        // well within the three intervals after which it counts as dead. A
        // hub that answers heartbeats needs none (a ping and a pong per
        // heartbeat were a third of the hub's idle CPU at 10,000 agents).
        if self.last_received.elapsed() >= self.heartbeat * 3 / 2 {
            tx.message(Message::Ping(bytes::Bytes::new())).await?;
        }
        self.last_summary = Some(summary);
        tx.metrics.heartbeats_sent.inc();
        Ok(())
    }

    /// The hub's answer to a heartbeat: logs the round trip.
    pub(super) fn heartbeat_acked(&self, ack: &HeartbeatAck) {
        let rtt = self.ctx.clock.now_ms().saturating_sub(ack.agent_time_ms);
        tracing::debug!(
            rtt_ms = rtt,
            hub_time_ms = ack.hub_time_ms,
            "heartbeat acknowledged"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_is_the_shorter_interval() {
        assert_eq!(
            heartbeat_interval(Duration::from_secs(10), 5000),
            Duration::from_secs(5)
        );
        assert_eq!(
            heartbeat_interval(Duration::from_secs(1), 10000),
            Duration::from_secs(1)
        );
        assert_eq!(
            heartbeat_interval(Duration::from_secs(7), 0),
            Duration::from_secs(7)
        );
    }

    #[test]
    fn a_replica_asking_for_keepalives_gets_them_as_asked() {
        let agent = Duration::from_secs(5);
        // Nothing asked: as before.
        assert_eq!(session_interval(agent, 10_000, None), agent);
        // A keepalive, longer than the Welcome's: as asked, even though
        // the agent's own is shorter.
        assert_eq!(
            session_interval(agent, 10_000, Some(60_000)),
            Duration::from_secs(60)
        );
        // The full rate (or faster): the shorter of it and the agent's.
        assert_eq!(session_interval(agent, 10_000, Some(10_000)), agent);
        assert_eq!(
            session_interval(agent, 10_000, Some(2_000)),
            Duration::from_secs(2)
        );
    }
}
