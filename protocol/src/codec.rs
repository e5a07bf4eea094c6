//! Encoding and decoding of frames with msgpack, with limits enforced.
//!
//! Decoding runs in four steps, cheapest first, each refusing with its own
//! [`DecodeError`]: the frame's size; a walk over the raw msgpack that
//! enforces the batch, string and nesting limits before anything is
//! allocated ([`crate::precheck`]); the typed decode; and checks on the decoded
//! frame that the types cannot express (no empty names).
//!
//! What is *not* checked here: that `status_json` is a JSON object (the hub
//! parses it), and whether a frame is allowed in the session's current state
//! (the session's job).

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::frame::{
    AgentFrame, Delta, DownwardDelta, ErrorCode, EventReport, HubFrame, MAX_HEARTBEAT_INTERVAL_MS,
    ShardsHeld, SnapshotBegin,
};
use crate::limits::Limits;
use crate::precheck;
use crate::shard::{MAX_SHARDS, ShardId, check_shard_list};

/// Why a frame could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("encoding frame as msgpack: {0}")]
    Msgpack(#[from] rmp_serde::encode::Error),
}

/// Why received bytes are not an acceptable frame.
///
/// [`DecodeError::kind`] gives a stable label for metrics,
/// [`DecodeError::error_code`] the code the hub answers with, and
/// [`DecodeError::close_code`] the WebSocket close code that follows.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { len: usize, max: u32 },
    #[error("malformed frame: {0}")]
    Malformed(#[from] rmp_serde::decode::Error),
    #[error("batch of {len} deltas exceeds the limit of {max} deltas")]
    TooManyDeltas { len: u64, max: u32 },
    #[error("batch of {len} events exceeds the limit of {max} events")]
    TooManyEvents { len: u64, max: u32 },
    #[error("string `{field}` of {len} bytes exceeds the limit of {max} bytes")]
    StringTooLong { field: String, len: u64, max: u32 },
    #[error("status `{field}` of {len} bytes exceeds the limit of {max} bytes")]
    StatusTooLarge { field: String, len: u64, max: u32 },
    #[error("manifest `{field}` of {len} bytes exceeds the limit of {max} bytes")]
    ManifestTooLarge { field: String, len: u64, max: u32 },
    #[error("`{field}` nests deeper than {max} levels")]
    NestingTooDeep { field: String, max: usize },
    #[error("malformed frame: byte 0xc1 at offset {offset} is not a msgpack marker")]
    InvalidMarker { offset: usize },
    #[error(
        "malformed frame: truncated at offset {offset}: {needed} more bytes announced, {remaining} left"
    )]
    Truncated {
        offset: usize,
        needed: u64,
        remaining: usize,
    },
    #[error("{trailing} bytes follow the frame's {frame_len} bytes")]
    TrailingBytes { frame_len: usize, trailing: usize },
    #[error("invalid `{field}`: {reason}")]
    Invalid { field: String, reason: &'static str },
}

impl DecodeError {
    /// A short, stable label for metrics and logs: `frame_too_large`,
    /// `too_many_deltas`, `too_many_events`, `string_too_long`, `status_too_large`, `too_deep`,
    /// `trailing_bytes`, `malformed` or `invalid`.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::FrameTooLarge { .. } => "frame_too_large",
            DecodeError::TooManyDeltas { .. } => "too_many_deltas",
            DecodeError::TooManyEvents { .. } => "too_many_events",
            DecodeError::StringTooLong { .. } => "string_too_long",
            DecodeError::StatusTooLarge { .. } => "status_too_large",
            DecodeError::ManifestTooLarge { .. } => "manifest_too_large",
            DecodeError::NestingTooDeep { .. } => "too_deep",
            DecodeError::TrailingBytes { .. } => "trailing_bytes",
            DecodeError::Malformed(_)
            | DecodeError::InvalidMarker { .. }
            | DecodeError::Truncated { .. } => "malformed",
            DecodeError::Invalid { .. } => "invalid",
        }
    }

    /// The code of the [`crate::ErrorFrame`] the hub answers this error with.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            DecodeError::FrameTooLarge { .. }
            | DecodeError::TooManyDeltas { .. }
            | DecodeError::TooManyEvents { .. }
            | DecodeError::StringTooLong { .. }
            | DecodeError::StatusTooLarge { .. }
            | DecodeError::ManifestTooLarge { .. } => ErrorCode::LimitExceeded,
            DecodeError::Malformed(_)
            | DecodeError::NestingTooDeep { .. }
            | DecodeError::InvalidMarker { .. }
            | DecodeError::Truncated { .. }
            | DecodeError::TrailingBytes { .. }
            | DecodeError::Invalid { .. } => ErrorCode::Malformed,
        }
    }

    /// The WebSocket close code that follows the error frame (see
    /// [`crate::close`]).
    pub fn close_code(&self) -> u16 {
        self.error_code().close_code()
    }
}

/// Encodes a frame as msgpack with named fields.
pub fn encode<F: Serialize>(frame: &F) -> Result<Vec<u8>, EncodeError> {
    Ok(rmp_serde::to_vec_named(frame)?)
}

/// Decodes and validates a frame sent by an agent.
pub fn decode_agent_frame(bytes: &[u8], limits: &Limits) -> Result<AgentFrame, DecodeError> {
    let frame: AgentFrame = decode(bytes, limits)?;
    validate_agent_frame(&frame, limits)?;
    Ok(frame)
}

/// Decodes and validates a frame sent by the hub.
pub fn decode_hub_frame(bytes: &[u8], limits: &Limits) -> Result<HubFrame, DecodeError> {
    let frame: HubFrame = decode(bytes, limits)?;
    validate_hub_frame(&frame, limits)?;
    Ok(frame)
}

fn decode<F: DeserializeOwned>(bytes: &[u8], limits: &Limits) -> Result<F, DecodeError> {
    check_size(bytes, limits)?;
    precheck::check(bytes, limits)?;
    Ok(rmp_serde::from_slice(bytes)?)
}

fn check_size(bytes: &[u8], limits: &Limits) -> Result<(), DecodeError> {
    if bytes.len() > limits.max_frame_bytes as usize {
        return Err(DecodeError::FrameTooLarge {
            len: bytes.len(),
            max: limits.max_frame_bytes,
        });
    }
    Ok(())
}

/// What the types cannot say about an agent's frame.
fn validate_agent_frame(frame: &AgentFrame, limits: &Limits) -> Result<(), DecodeError> {
    match frame {
        AgentFrame::Hello(hello) if hello.cluster.is_empty() => Err(DecodeError::Invalid {
            field: "Hello.cluster".to_owned(),
            reason: "must not be empty",
        }),
        AgentFrame::Deltas(batch) => validate_deltas("Deltas", &batch.deltas, limits),
        AgentFrame::SnapshotChunk(chunk) => validate_deltas("SnapshotChunk", &chunk.deltas, limits),
        AgentFrame::Events(batch) => validate_events(&batch.reports, limits),
        AgentFrame::SnapshotBegin(begin) => validate_snapshot_begin("SnapshotBegin", begin),
        _ => Ok(()),
    }
}

fn validate_events(reports: &[EventReport], limits: &Limits) -> Result<(), DecodeError> {
    if reports.len() as u64 > u64::from(limits.max_events_per_batch) {
        return Err(DecodeError::TooManyEvents {
            len: reports.len() as u64,
            max: limits.max_events_per_batch,
        });
    }
    match reports
        .iter()
        .position(|report| report.regarding.name.is_empty())
    {
        Some(index) => Err(DecodeError::Invalid {
            field: format!("Events.reports[{index}].regarding.name"),
            reason: "must not be empty",
        }),
        None => Ok(()),
    }
}

fn validate_downward(deltas: &[DownwardDelta], limits: &Limits) -> Result<(), DecodeError> {
    if deltas.len() as u64 > u64::from(limits.max_deltas_per_batch) {
        return Err(DecodeError::TooManyDeltas {
            len: deltas.len() as u64,
            max: limits.max_deltas_per_batch,
        });
    }
    match deltas.iter().position(|delta| delta.object.name.is_empty()) {
        Some(index) => Err(DecodeError::Invalid {
            field: format!("Downward.deltas[{index}].object.name"),
            reason: "must not be empty",
        }),
        None => Ok(()),
    }
}

fn validate_deltas(frame: &str, deltas: &[Delta], limits: &Limits) -> Result<(), DecodeError> {
    // The precheck bounds batches in the canonical encoding before they are
    // built; this catches a batch sent with structs as arrays.
    if deltas.len() as u64 > u64::from(limits.max_deltas_per_batch) {
        return Err(DecodeError::TooManyDeltas {
            len: deltas.len() as u64,
            max: limits.max_deltas_per_batch,
        });
    }
    match deltas.iter().position(|delta| delta.object.name.is_empty()) {
        Some(index) => Err(DecodeError::Invalid {
            field: format!("{frame}.deltas[{index}].object.name"),
            reason: "must not be empty",
        }),
        None => Ok(()),
    }
}

/// What the types cannot say about the hub's frame.
fn validate_hub_frame(frame: &HubFrame, limits: &Limits) -> Result<(), DecodeError> {
    match frame {
        HubFrame::Downward(batch) | HubFrame::DownwardSnapshotChunk(batch) => {
            validate_downward(&batch.deltas, limits)
        }
        HubFrame::Welcome(welcome) if welcome.heartbeat_interval_ms == 0 => {
            Err(DecodeError::Invalid {
                field: "Welcome.heartbeat_interval_ms".to_owned(),
                reason: "must be positive",
            })
        }
        HubFrame::Welcome(welcome) if welcome.limits.max_deltas_per_batch == 0 => {
            Err(DecodeError::Invalid {
                field: "Welcome.limits.max_deltas_per_batch".to_owned(),
                reason: "must be positive",
            })
        }
        HubFrame::Welcome(welcome) => match &welcome.shards {
            Some(shards) => validate_shards_held("Welcome.shards", shards),
            None => Ok(()),
        },
        HubFrame::Shards(shards) => validate_shards_held("Shards", shards),
        HubFrame::DownwardSnapshotBegin(begin) => {
            validate_snapshot_begin("DownwardSnapshotBegin", begin)
        }
        _ => Ok(()),
    }
}

/// A snapshot's shards, when it names them: below [`MAX_SHARDS`], ascending,
/// at least one (an empty list would be a snapshot of nothing that prunes
/// nothing: a sender's mistake).
fn validate_snapshot_begin(frame: &str, begin: &SnapshotBegin) -> Result<(), DecodeError> {
    let Some(shards) = &begin.shards else {
        return Ok(());
    };
    let invalid = |reason| DecodeError::Invalid {
        field: format!("{frame}.shards"),
        reason,
    };
    if shards.is_empty() {
        return Err(invalid("must not be empty when present"));
    }
    check_shard_list(shards, MAX_SHARDS).map_err(invalid)
}

/// What a replica says it holds: a count in `1..=MAX_SHARDS`, held shards
/// below it in ascending order, snapshot shards among the held ones, and a
/// heartbeat interval, when it asks for one, in
/// `1..=MAX_HEARTBEAT_INTERVAL_MS`.
fn validate_shards_held(frame: &str, held: &ShardsHeld) -> Result<(), DecodeError> {
    let invalid = |field: &str, reason| DecodeError::Invalid {
        field: format!("{frame}.{field}"),
        reason,
    };
    if held.count == 0 || held.count > MAX_SHARDS {
        return Err(invalid("count", "must be between 1 and 1024"));
    }
    let shards: Vec<ShardId> = held.held.iter().map(|claim| claim.shard).collect();
    check_shard_list(&shards, held.count).map_err(|reason| invalid("held", reason))?;
    check_shard_list(&held.snapshot, held.count).map_err(|reason| invalid("snapshot", reason))?;
    if held.snapshot.iter().any(|shard| !shards.contains(shard)) {
        return Err(invalid("snapshot", "names a shard that is not held"));
    }
    if let Some(interval) = held.heartbeat_interval_ms
        && (interval == 0 || interval > MAX_HEARTBEAT_INTERVAL_MS)
    {
        return Err(invalid(
            "heartbeat_interval_ms",
            "must be between 1 and 3600000 (one hour)",
        ));
    }
    Ok(())
}
