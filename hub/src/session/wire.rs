//! The session's wire: reading agent frames, sending hub frames, and
//! refusing: a [`Violation`] becomes an `Error` frame, a close with the
//! matching close code, a metric and one log line.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use uplink_protocol::{
    AgentFrame, DecodeError, ErrorCode, ErrorFrame, HubFrame, decode_agent_frame, encode,
    truncate_utf8,
};

use super::{Connection, Transport};

/// Longest a close handshake may take before the connection is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// A refusal: what to tell the agent and how to count it.
#[derive(Debug)]
pub(super) struct Violation {
    /// Label of `frames_rejected_total{reason}` / `handshake_failures_total{reason}`.
    pub(super) reason: &'static str,
    pub(super) code: ErrorCode,
    pub(super) message: String,
}

impl Violation {
    pub(super) fn new(reason: &'static str, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            reason,
            code,
            message: message.into(),
        }
    }

    pub(super) fn unexpected(what: &str) -> Self {
        Self::new(
            "unexpected_frame",
            ErrorCode::UnexpectedFrame,
            format!("{what} is not allowed now"),
        )
    }
}

impl From<DecodeError> for Violation {
    fn from(error: DecodeError) -> Self {
        Self::new(error.kind(), error.error_code(), error.to_string())
    }
}

/// Why reading the next frame stopped.
#[derive(Debug)]
pub(super) enum ReadError {
    /// The peer closed the WebSocket or the connection.
    Closed,
    /// The transport failed.
    Transport(WsError),
    /// The peer sent something it must not.
    Violation(Violation),
}

impl<S: Transport> Connection<S> {
    /// Reads the next agent frame, skipping pings and pongs.
    pub(super) async fn read_frame(&mut self) -> Result<AgentFrame, ReadError> {
        loop {
            let message = match self.ws.next().await {
                None => return Err(ReadError::Closed),
                Some(Ok(message)) => message,
                Some(Err(WsError::Capacity(error))) => {
                    return Err(ReadError::Violation(Violation::new(
                        "frame_too_large",
                        ErrorCode::LimitExceeded,
                        format!(
                            "{error} (limit {} bytes)",
                            self.shared.limits.max_frame_bytes
                        ),
                    )));
                }
                Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => {
                    return Err(ReadError::Closed);
                }
                Some(Err(WsError::Protocol(error))) => {
                    return Err(ReadError::Violation(Violation::new(
                        "websocket_protocol",
                        ErrorCode::Malformed,
                        format!("WebSocket protocol error: {error}"),
                    )));
                }
                Some(Err(error)) => return Err(ReadError::Transport(error)),
            };
            match message {
                Message::Binary(bytes) => {
                    return decode_agent_frame(&bytes, &self.shared.limits)
                        .map_err(|e| ReadError::Violation(e.into()));
                }
                Message::Text(_) => {
                    return Err(ReadError::Violation(Violation::new(
                        "text_message",
                        ErrorCode::Malformed,
                        "frames are binary messages; got a text message",
                    )));
                }
                Message::Close(_) => return Err(ReadError::Closed),
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    }

    /// Sends one frame, giving up when the agent does not read for three
    /// heartbeat intervals.
    pub(super) async fn send(&mut self, frame: &HubFrame) -> Result<(), String> {
        let bytes = encode(frame).map_err(|e| e.to_string())?;
        let limit = self.shared.heartbeat_interval * 3;
        match tokio::time::timeout(limit, self.ws.send(Message::Binary(bytes.into()))).await {
            Ok(Ok(())) => {
                self.last_sent = Instant::now();
                Ok(())
            }
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!("the agent did not read for {limit:?}")),
        }
    }

    /// Sends a frame during the session; failing to is the end of it (the
    /// transport is gone, so nothing more is said to the agent).
    pub(super) async fn send_or_end(&mut self, frame: &HubFrame) -> Result<(), Violation> {
        self.send(frame).await.map_err(|error| {
            tracing::info!(cluster = %self.cluster, peer = %self.peer, %error, "sending to the agent failed");
            Violation::new("send_failed", ErrorCode::Internal, error)
        })
    }

    /// Refuses a frame during the session: counted per cluster, logged, then
    /// the agent is told why and the connection closed.
    pub(super) async fn reject(&mut self, violation: Violation) {
        if violation.reason == "send_failed" {
            return; // the transport is gone; nothing to tell the agent
        }
        self.shared
            .metrics
            .frames_rejected
            .with_label_values(&[&self.cluster, violation.reason])
            .inc();
        tracing::warn!(
            cluster = %self.cluster,
            peer = %self.peer,
            reason = violation.reason,
            code = ?violation.code,
            error = %violation.message,
            "refusing frame; closing the session"
        );
        self.refuse(violation).await;
    }

    /// Sends `Error` and closes with the code the error calls for.
    pub(super) async fn refuse(&mut self, violation: Violation) {
        let close_code = violation.code.close_code();
        // Cut to the string limit the hub announces, so that even a hub
        // configured below the protocol's cap on error messages sends only
        // frames within its own limits (found by fuzzing; see FUZZING.md).
        let mut message = violation.message;
        truncate_utf8(&mut message, self.shared.limits.max_string_bytes as usize);
        let frame = HubFrame::Error(ErrorFrame::new(violation.code, message));
        if self.send(&frame).await.is_ok() {
            self.close(close_code, violation.reason).await;
        }
    }

    /// Closes the WebSocket with `code`, then lets the agent's last bytes
    /// drain, so the close is not lost to a TCP reset.
    pub(super) async fn close(&mut self, code: u16, reason: &str) {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.to_owned().into(),
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            if self.ws.close(Some(frame)).await.is_err() {
                return;
            }
            // The raw stream: after a refused oversized message the rest of
            // it is still in flight and is not a WebSocket frame. It is read
            // and dropped until the agent closes or CLOSE_TIMEOUT passes;
            // bounded by time, not bytes, because a message of any declared
            // size may be refused, and a socket closed with unread bytes
            // sends a TCP reset that can discard the `Error` before the
            // agent reads it (and fails the agent's write mid-message).
            let stream = self.ws.get_mut();
            let _ = stream.shutdown().await;
            let mut sink = [0u8; 8192];
            while let Ok(1..) = stream.read(&mut sink).await {}
        })
        .await;
    }
}
