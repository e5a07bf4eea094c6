//! Uplink's wire contract between `uplink-agent` and `uplink-hub`.
//!
//! This crate is the only place frame types live. It does no I/O: it turns
//! frames into bytes and bytes into validated frames, and says precisely what
//! was wrong when it cannot. See `README.md` beside this crate for the
//! protocol as a second implementation would need it.

pub mod close;
pub mod codec;
pub mod frame;
pub mod limits;
pub mod names;
pub mod precheck;
pub mod resource;
pub mod shard;

pub use codec::{DecodeError, EncodeError, decode_agent_frame, decode_hub_frame, encode};
pub use frame::*;
pub use limits::{Limits, truncate_utf8};
pub use shard::{MAX_SHARDS, ShardId, shard_of};
