//! A pass over a frame's raw msgpack that enforces the limits before anything
//! is decoded, so a hostile frame is refused without allocating for it.
//!
//! Decoding first and checking afterwards would build every string and every
//! delta of an oversized batch before noticing. This walk reads only headers:
//! it refuses a string, a batch or a nesting depth over its limit as soon as
//! the header announcing it is read, and checks that exactly one msgpack value
//! fills the frame. It knows nothing of the frame types beyond a few map
//! keys: an array under `deltas` is a batch of deltas, one under `reports` a
//! batch of events, a string under `status_json` is a status, one under
//! `manifest_json` or `object_json` a manifest; every other string is held to
//! [`Limits::max_string_bytes`].
//!
//! Binary values count as strings (serde turns valid UTF-8 bytes into a
//! `String`). Errors name the value by its path of map keys and array
//! indices, e.g. `Deltas.deltas[3].object.name`.

use std::fmt::Write as _;

use crate::codec::DecodeError;
use crate::limits::Limits;

/// How deeply maps and arrays may nest. The deepest v1 value is six levels
/// (`{"Deltas": {"deltas": [{"change": {"Upsert": {"status_json": …}}}]}}`);
/// the margin leaves room for fields added later, and the bound keeps this
/// walk and the decoder's recursion off the end of the stack.
pub const MAX_NESTING: usize = 32;

/// Checks that `bytes` hold exactly one msgpack value within `limits`.
pub(crate) fn check(bytes: &[u8], limits: &Limits) -> Result<(), DecodeError> {
    let mut scan = Scan {
        bytes,
        pos: 0,
        limits,
        path: Vec::new(),
    };
    scan.value(0)?;
    if scan.pos != bytes.len() {
        return Err(DecodeError::TrailingBytes {
            frame_len: scan.pos,
            trailing: bytes.len() - scan.pos,
        });
    }
    Ok(())
}

/// One step of the path to the value being read.
#[derive(Debug, Clone, Copy)]
enum Segment<'a> {
    /// A map entry, by its key's bytes (`?` when the key is not a string),
    /// read as UTF-8 only to name a refused value: this walk runs over every
    /// frame, and the decoder checks the keys' UTF-8 anyway.
    Key(&'a [u8]),
    /// An array element, by its index.
    Index(u64),
}

/// What a msgpack header announces.
#[derive(Debug, Clone, Copy)]
enum Head {
    /// A value of this many bytes that needs no look inside (numbers, nil,
    /// booleans, extension types).
    Opaque(u64),
    /// A string or binary of this many bytes.
    Text(u64),
    Array(u64),
    Map(u64),
}

#[derive(Debug)]
struct Scan<'a> {
    bytes: &'a [u8],
    pos: usize,
    limits: &'a Limits,
    path: Vec<Segment<'a>>,
}

impl<'a> Scan<'a> {
    fn value(&mut self, depth: usize) -> Result<(), DecodeError> {
        let head = self.head()?;
        self.body(head, depth)
    }

    fn body(&mut self, head: Head, depth: usize) -> Result<(), DecodeError> {
        match head {
            Head::Opaque(len) => {
                self.take(len)?;
            }
            Head::Text(len) => {
                self.check_text(len)?;
                self.take(len)?;
            }
            Head::Array(len) => {
                self.enter(depth)?;
                self.check_array(len)?;
                for index in 0..len {
                    self.path.push(Segment::Index(index));
                    self.value(depth + 1)?;
                    self.path.pop();
                }
            }
            Head::Map(len) => {
                self.enter(depth)?;
                for _ in 0..len {
                    let key = self.key(depth + 1)?;
                    self.path.push(Segment::Key(key));
                    self.value(depth + 1)?;
                    self.path.pop();
                }
            }
        }
        Ok(())
    }

    /// Reads a map key; a string key becomes the path segment of its value.
    fn key(&mut self, depth: usize) -> Result<&'a [u8], DecodeError> {
        match self.head()? {
            Head::Text(len) => {
                self.check_text(len)?;
                self.take(len)
            }
            other => {
                self.body(other, depth)?;
                Ok(b"?")
            }
        }
    }

    fn enter(&self, depth: usize) -> Result<(), DecodeError> {
        if depth >= MAX_NESTING {
            return Err(DecodeError::NestingTooDeep {
                field: self.render_path(),
                max: MAX_NESTING,
            });
        }
        Ok(())
    }

    fn current_key(&self) -> Option<&'a [u8]> {
        match self.path.last() {
            Some(Segment::Key(key)) => Some(key),
            _ => None,
        }
    }

    fn check_text(&self, len: u64) -> Result<(), DecodeError> {
        if self.current_key() == Some(b"status_json") {
            if len > u64::from(self.limits.max_status_bytes) {
                return Err(DecodeError::StatusTooLarge {
                    field: self.render_path(),
                    len,
                    max: self.limits.max_status_bytes,
                });
            }
        } else if matches!(self.current_key(), Some(b"manifest_json" | b"object_json")) {
            if len > u64::from(self.limits.max_manifest_bytes) {
                return Err(DecodeError::ManifestTooLarge {
                    field: self.render_path(),
                    len,
                    max: self.limits.max_manifest_bytes,
                });
            }
        } else if len > u64::from(self.limits.max_string_bytes) {
            return Err(DecodeError::StringTooLong {
                field: self.render_path(),
                len,
                max: self.limits.max_string_bytes,
            });
        }
        Ok(())
    }

    fn check_array(&self, len: u64) -> Result<(), DecodeError> {
        if self.current_key() == Some(b"deltas")
            && len > u64::from(self.limits.max_deltas_per_batch)
        {
            return Err(DecodeError::TooManyDeltas {
                len,
                max: self.limits.max_deltas_per_batch,
            });
        }
        if self.current_key() == Some(b"reports")
            && len > u64::from(self.limits.max_events_per_batch)
        {
            return Err(DecodeError::TooManyEvents {
                len,
                max: self.limits.max_events_per_batch,
            });
        }
        Ok(())
    }

    /// Reads a marker and the length fields after it.
    fn head(&mut self) -> Result<Head, DecodeError> {
        let offset = self.pos;
        let marker = self.take(1)?[0];
        let head = match marker {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => Head::Opaque(0),
            0x80..=0x8f => Head::Map(u64::from(marker & 0x0f)),
            0x90..=0x9f => Head::Array(u64::from(marker & 0x0f)),
            0xa0..=0xbf => Head::Text(u64::from(marker & 0x1f)),
            0xc1 => return Err(DecodeError::InvalidMarker { offset }),
            0xc4 | 0xd9 => Head::Text(self.uint(1)?),
            0xc5 | 0xda => Head::Text(self.uint(2)?),
            0xc6 | 0xdb => Head::Text(self.uint(4)?),
            // Extensions: a length, then a type byte, then the data.
            0xc7 => Head::Opaque(self.uint(1)? + 1),
            0xc8 => Head::Opaque(self.uint(2)? + 1),
            0xc9 => Head::Opaque(self.uint(4)? + 1),
            0xca => Head::Opaque(4),
            0xcb => Head::Opaque(8),
            0xcc | 0xd0 => Head::Opaque(1),
            0xcd | 0xd1 => Head::Opaque(2),
            0xce | 0xd2 => Head::Opaque(4),
            0xcf | 0xd3 => Head::Opaque(8),
            // Fixed-size extensions: a type byte, then 1, 2, 4, 8 or 16 bytes.
            0xd4 => Head::Opaque(2),
            0xd5 => Head::Opaque(3),
            0xd6 => Head::Opaque(5),
            0xd7 => Head::Opaque(9),
            0xd8 => Head::Opaque(17),
            0xdc => Head::Array(self.uint(2)?),
            0xdd => Head::Array(self.uint(4)?),
            0xde => Head::Map(self.uint(2)?),
            0xdf => Head::Map(self.uint(4)?),
        };
        Ok(head)
    }

    /// Reads a big-endian unsigned integer of `width` bytes.
    fn uint(&mut self, width: u64) -> Result<u64, DecodeError> {
        Ok(self
            .take(width)?
            .iter()
            .fold(0, |n, &byte| (n << 8) | u64::from(byte)))
    }

    fn take(&mut self, len: u64) -> Result<&'a [u8], DecodeError> {
        let remaining = self.bytes.len() - self.pos;
        match usize::try_from(len) {
            Ok(len) if len <= remaining => {
                let taken = &self.bytes[self.pos..self.pos + len];
                self.pos += len;
                Ok(taken)
            }
            _ => Err(DecodeError::Truncated {
                offset: self.pos,
                needed: len,
                remaining,
            }),
        }
    }

    fn render_path(&self) -> String {
        let mut rendered = String::new();
        for segment in &self.path {
            // Writing to a String cannot fail.
            let _ = match segment {
                Segment::Key(key) => {
                    let key = std::str::from_utf8(key).unwrap_or("?");
                    let dot = if rendered.is_empty() { "" } else { "." };
                    write!(rendered, "{dot}{key}")
                }
                Segment::Index(index) => write!(rendered, "[{index}]"),
            };
        }
        if rendered.is_empty() {
            rendered.push_str("<frame>");
        }
        rendered
    }
}
