//! Heartbeats: each one proves the agent alive, records its clock and
//! summary for health (once they passed [`crate::capacity::validate`]), is answered with `HeartbeatAck`, and brings the agent
//! the refusals of held reports that it was not told yet.

use std::time::SystemTime;

use uplink_protocol::{Ack, Heartbeat, HeartbeatAck, HubFrame};

use super::wire::Violation;
use super::{Connection, Transport};
use crate::health::unix_ms;

impl<S: Transport> Connection<S> {
    /// Answers one heartbeat, recording what it says about the agent: its
    /// clock sample and summary only when they keep to the report bounds
    /// (else the report is refused, counted and logged once per reason and
    /// connection; the heartbeat still proves the agent alive).
    pub(super) async fn heartbeat(&mut self, heartbeat: Heartbeat) -> Result<(), Violation> {
        let now = SystemTime::now();
        let checked = self.shared.report_bounds.check(
            heartbeat.agent_time_ms,
            unix_ms(now),
            heartbeat.summary.as_ref(),
        );
        match checked {
            Ok(()) => {
                self.shared
                    .health
                    .heartbeat(&self.cluster, heartbeat.agent_time_ms, now);
                if let Some(summary) = heartbeat.summary {
                    self.shared.health.summary(&self.cluster, summary);
                }
                if self.refused_report.take().is_some() {
                    tracing::info!(cluster = %self.cluster, outcome = "accepted", "heartbeat reports accepted again");
                }
            }
            Err(error) => {
                self.shared.health.alive(&self.cluster, now);
                let reason = error.reason();
                self.shared
                    .metrics
                    .reports_refused
                    .with_label_values(&[reason])
                    .inc();
                if self.refused_report.replace(reason) != Some(reason) {
                    tracing::warn!(cluster = %self.cluster, outcome = "refused", reason, %error, "heartbeat report refused: clock sample and summary not kept");
                }
            }
        }
        let ack = HubFrame::HeartbeatAck(HeartbeatAck {
            agent_time_ms: heartbeat.agent_time_ms,
            hub_time_ms: unix_ms(now),
        });
        self.send_or_end(&ack).await?;
        // Held reports refused since the last Ack: the agent learns them
        // now rather than with its next batch, which may be long away.
        let rejected = self.shared.rejections.take(&self.cluster);
        if !rejected.is_empty()
            && let Some(position) = self.shared.store.position(&self.cluster)
        {
            let ack = HubFrame::Ack(Ack {
                seq: position.seq,
                rejected,
            });
            self.send_or_end(&ack).await?;
        }
        Ok(())
    }
}
