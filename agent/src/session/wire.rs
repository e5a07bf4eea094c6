//! The session's wire: sending frames (each send with a deadline, giving
//! way to the stop signal), reading the hub's frames, and turning the hub's
//! `Error` into a counted refusal.

use futures::SinkExt;
use futures::StreamExt;
use futures::stream::{SplitSink, SplitStream};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use uplink_protocol::{AgentFrame, ErrorCode, HubFrame, Limits, decode_hub_frame, encode};

use super::SessionError;
use super::dial::Ws;
use crate::metrics::Metrics;

/// The sending half of a connection.
///
/// Every send has a deadline and gives way to the stop signal: a hub that
/// stopped reading (its node died with our send buffer full) would otherwise
/// block a send until TCP gives up, many minutes later, and hold up
/// shutdown just as long.
pub(super) struct Sender {
    pub(super) sink: SplitSink<Ws, Message>,
    pub(super) metrics: Metrics,
    /// When a send in progress gives up: in the steady state, three heartbeat
    /// intervals after the hub was last heard from.
    pub(super) deadline: Instant,
    /// Abandons a send in progress; `None` while shutting down (the goodbye
    /// has its own time limit).
    pub(super) stop: Option<CancellationToken>,
}

impl Sender {
    pub(super) async fn frame(&mut self, frame: &AgentFrame) -> Result<(), SessionError> {
        let bytes = encode(frame)?;
        self.bytes(bytes).await
    }

    pub(super) async fn bytes(&mut self, bytes: Vec<u8>) -> Result<(), SessionError> {
        self.message(Message::Binary(bytes.into())).await
    }

    pub(super) async fn message(&mut self, message: Message) -> Result<(), SessionError> {
        let send = tokio::time::timeout_at(self.deadline, self.sink.send(message));
        let stopped = async {
            match &self.stop {
                Some(stop) => stop.cancelled().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = stopped => Err(SessionError::Stopped),
            sent = send => match sent {
                Ok(sent) => Ok(sent?),
                Err(_) => Err(SessionError::Timeout(
                    "sending to the hub (3 heartbeat intervals without anything from it)",
                )),
            },
        }
    }
}

/// The next hub frame; `None` for WebSocket control messages.
pub(super) async fn next_frame(
    stream: &mut SplitStream<Ws>,
    limits: &Limits,
) -> Result<Option<HubFrame>, SessionError> {
    match stream.next().await {
        None | Some(Ok(Message::Close(_))) => Err(SessionError::Closed),
        Some(Err(e)) => Err(e.into()),
        Some(Ok(Message::Binary(bytes))) => Ok(Some(decode_hub_frame(&bytes, limits)?)),
        Some(Ok(Message::Text(_))) => Err(SessionError::Protocol(
            "text message (frames are binary)".into(),
        )),
        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Ok(None),
    }
}

pub(super) fn refused(metrics: &Metrics, code: ErrorCode, message: String) -> SessionError {
    metrics
        .hub_errors
        .with_label_values(&[&format!("{code:?}")])
        .inc();
    SessionError::Refused { code, message }
}

pub(super) fn frame_name(frame: &HubFrame) -> &'static str {
    match frame {
        HubFrame::Welcome(_) => "Welcome",
        HubFrame::Ack(_) => "Ack",
        HubFrame::HeartbeatAck(_) => "HeartbeatAck",
        HubFrame::Throttle(_) => "Throttle",
        HubFrame::Error(_) => "Error",
        HubFrame::Bye(_) => "Bye",
        HubFrame::Downward(_) => "Downward",
        HubFrame::DownwardSnapshotBegin(_) => "DownwardSnapshotBegin",
        HubFrame::DownwardSnapshotChunk(_) => "DownwardSnapshotChunk",
        HubFrame::DownwardSnapshotEnd(_) => "DownwardSnapshotEnd",
        HubFrame::Shards(_) => "Shards",
    }
}
