//! The session's end when the agent stops: flush what the outbox still
//! holds, say `Bye`, close, and wait for the hub's close, all within a grace
//! period.

use std::time::Duration;

use futures::stream::SplitStream;
use futures::{SinkExt, StreamExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use uplink_protocol::{AgentFrame, Bye, HubFrame, Limits, decode_hub_frame};

use super::dial::Ws;
use super::wire::Sender;
use super::{SessionError, Steady};

/// How long the shutdown flush, `Bye` and close may take.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

impl Steady<'_> {
    /// Best effort, bounded by [`SHUTDOWN_GRACE`]: flush what is unsent, say
    /// `Bye`, close, and wait for the hub's close (acks on the way count).
    pub(super) async fn shut_down(&mut self, tx: &mut Sender, stream: &mut SplitStream<Ws>) {
        tx.stop = None;
        tx.deadline = Instant::now() + SHUTDOWN_GRACE;
        let goodbye = async {
            while self.ctx.outbox.lock().has_unsent(self.ctx.replica) {
                self.send_deltas(tx).await?;
            }
            let bye = Bye {
                reason: "agent shutting down".into(),
            };
            tx.frame(&AgentFrame::Bye(bye)).await?;
            tx.sink
                .send(Message::Close(Some(CloseFrame {
                    code: CloseCode::Away,
                    reason: "agent shutting down".into(),
                })))
                .await?;
            // Until the hub answers the close (acks on the way still count).
            while let Some(Ok(message)) = stream.next().await {
                match message {
                    Message::Binary(bytes) => {
                        if let Ok(HubFrame::Ack(ack)) = decode_hub_frame(&bytes, &Limits::default())
                        {
                            self.ctx.outbox.lock().ack(self.ctx.replica, ack.seq);
                            self.count_rejected(&ack.rejected);
                        }
                    }
                    Message::Close(_) => break,
                    _ => {}
                }
            }
            Ok::<(), SessionError>(())
        };
        match tokio::time::timeout(SHUTDOWN_GRACE, goodbye).await {
            Ok(Ok(())) => tracing::info!(cluster = %self.ctx.cluster, "said goodbye to the hub"),
            Ok(Err(e)) => tracing::warn!(error = %e, "goodbye to the hub failed"),
            Err(_) => tracing::warn!("goodbye to the hub timed out"),
        }
    }
}
