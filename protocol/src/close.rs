//! WebSocket close codes (RFC 6455, section 7.4.1) both sides use when they
//! end a tunnel, so a peer and an operator can tell why it closed.
//!
//! The rule: an [`crate::ErrorFrame`] goes first, then the close with the code
//! [`ErrorCode::close_code`] gives for it. A [`crate::Bye`] is followed by
//! [`GOING_AWAY`]. One close has neither: a peer silent for three heartbeat
//! intervals is presumed gone, so it gets [`GOING_AWAY`] alone (with the
//! reason `silent for three heartbeat intervals`) rather than an `Error`
//! it would likely never read.

use crate::frame::ErrorCode;

/// 1000: the session ended normally.
pub const NORMAL: u16 = 1000;
/// 1001: the sender is shutting down (after a `Bye`) or restarting.
pub const GOING_AWAY: u16 = 1001;
/// 1002: the peer broke the protocol: a malformed frame, a text message, a
/// frame not allowed in the session's state, no common version.
pub const PROTOCOL_ERROR: u16 = 1002;
/// 1008: the peer broke a policy: its identity does not match its `Hello`, it
/// exceeded a limit, or a newer connection for its cluster replaced it.
pub const POLICY_VIOLATION: u16 = 1008;
/// 1011: the sender failed internally; reconnecting later may work.
pub const INTERNAL_ERROR: u16 = 1011;

impl ErrorCode {
    /// The WebSocket close code that follows an error frame with this code.
    pub fn close_code(self) -> u16 {
        match self {
            ErrorCode::UnsupportedVersion | ErrorCode::Malformed | ErrorCode::UnexpectedFrame => {
                PROTOCOL_ERROR
            }
            ErrorCode::IdentityMismatch | ErrorCode::LimitExceeded | ErrorCode::Superseded => {
                POLICY_VIOLATION
            }
            ErrorCode::Internal => INTERNAL_ERROR,
        }
    }
}
