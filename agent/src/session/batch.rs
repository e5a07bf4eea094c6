//! Packing deltas into frames the hub accepts: `Deltas` batches and snapshot
//! chunks within the hub's limits, each frame checked by the protocol's own
//! decoder, and a delta the hub would refuse on its own left out.

use std::collections::VecDeque;

use uplink_protocol::{
    AgentFrame, Delta, DeltaBatch, Limits, SnapshotChunk, decode_agent_frame, encode,
};

use super::SessionError;

/// The frame a batch of deltas travels in.
#[derive(Debug, Clone, Copy)]
pub(super) enum BatchKind {
    Deltas,
    SnapshotChunk,
}

impl BatchKind {
    fn wrap(self, deltas: Vec<Delta>) -> AgentFrame {
        match self {
            BatchKind::Deltas => AgentFrame::Deltas(DeltaBatch { deltas }),
            BatchKind::SnapshotChunk => AgentFrame::SnapshotChunk(SnapshotChunk { deltas }),
        }
    }

    fn unwrap(frame: AgentFrame) -> Vec<Delta> {
        match frame {
            AgentFrame::Deltas(DeltaBatch { deltas })
            | AgentFrame::SnapshotChunk(SnapshotChunk { deltas }) => deltas,
            _ => Vec::new(),
        }
    }
}

/// One encoded frame and the sequence numbers in it.
#[derive(Debug)]
pub(super) struct Framed {
    pub(super) bytes: Vec<u8>,
    pub(super) seqs: Vec<u64>,
}

/// Deltas packed into frames the hub accepts.
#[derive(Debug, Default)]
pub(super) struct FramedDeltas {
    pub(super) frames: Vec<Framed>,
    /// Deltas in `frames`.
    pub(super) deltas: u64,
    /// Deltas the hub would refuse on their own: (delta, reason, error).
    pub(super) dropped: Vec<(Delta, &'static str, String)>,
}

/// Packs `deltas` (in sequence order) into frames within `limits`.
///
/// Each candidate frame is checked with the protocol's own decoder under the
/// hub's limits, exactly as the hub will check it. A frame that fails is split
/// in halves; a single delta that fails on its own is dropped (reported, never
/// sent: sending it would only get the session closed, again and again).
pub(super) fn frame_deltas(
    deltas: impl IntoIterator<Item = Delta>,
    limits: &Limits,
    kind: BatchKind,
) -> Result<FramedDeltas, SessionError> {
    let per_batch = (limits.max_deltas_per_batch as usize).max(1);
    let mut deltas = deltas.into_iter();
    let mut out = FramedDeltas::default();
    // One batch at a time: only the encoded frames are held, not every
    // delta of a snapshot at once.
    loop {
        let batch: Vec<Delta> = deltas.by_ref().take(per_batch).collect();
        if batch.is_empty() {
            return Ok(out);
        }
        frame_batch(batch, limits, kind, &mut out)?;
    }
}

/// Frames one batch, split in halves until each part passes (see
/// [`frame_deltas`]).
fn frame_batch(
    batch: Vec<Delta>,
    limits: &Limits,
    kind: BatchKind,
    out: &mut FramedDeltas,
) -> Result<(), SessionError> {
    let mut todo = VecDeque::from([batch]);
    while let Some(batch) = todo.pop_front() {
        if batch.is_empty() {
            continue;
        }
        let seqs: Vec<u64> = batch.iter().map(|d| d.seq).collect();
        let count = batch.len() as u64;
        let frame = kind.wrap(batch);
        let bytes = encode(&frame)?;
        match decode_agent_frame(&bytes, limits) {
            Ok(_) => {
                out.deltas += count;
                out.frames.push(Framed { bytes, seqs });
            }
            Err(e) => {
                let mut batch = BatchKind::unwrap(frame);
                if batch.len() == 1 {
                    if let Some(delta) = batch.pop() {
                        out.dropped.push((delta, e.kind(), e.to_string()));
                    }
                } else {
                    let second = batch.split_off(batch.len() / 2);
                    todo.push_front(second);
                    todo.push_front(batch);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use uplink_protocol::{Change, ObjectRef};

    use super::*;

    fn delta(seq: u64, status_len: usize, name: &str) -> Delta {
        Delta {
            seq,
            object: ObjectRef {
                group: "apps".into(),
                version: "v1".into(),
                resource: "deployments".into(),
                kind: "Deployment".into(),
                workspace: "root:org".into(),
                namespace: Some("default".into()),
                name: name.into(),
                uid: "u".into(),
            },
            generation: Some(1),
            observed_generation: Some(1),
            observed_at_ms: 0,
            change: Change::Upsert {
                status_json: format!("{{\"x\":\"{}\"}}", "a".repeat(status_len)),
            },
            object_json: None,
        }
    }

    fn decoded_seqs(framed: &FramedDeltas, limits: &Limits) -> Vec<Vec<u64>> {
        framed
            .frames
            .iter()
            .map(|f| match decode_agent_frame(&f.bytes, limits).unwrap() {
                AgentFrame::Deltas(b) => b.deltas.iter().map(|d| d.seq).collect(),
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[test]
    fn batches_respect_count_and_size_limits() {
        let limits = Limits {
            max_deltas_per_batch: 3,
            max_frame_bytes: 1200,
            ..Limits::default()
        };
        let deltas: Vec<Delta> = (1..=8).map(|seq| delta(seq, 200, "web")).collect();
        let framed = frame_deltas(deltas, &limits, BatchKind::Deltas).unwrap();
        let seqs = decoded_seqs(&framed, &limits);
        assert_eq!(seqs.concat(), (1..=8).collect::<Vec<_>>());
        assert!(seqs.iter().all(|s| s.len() <= 3));
        assert!(framed.frames.iter().all(|f| f.bytes.len() <= 1200));
        assert_eq!(framed.deltas, 8);
        assert!(framed.dropped.is_empty());
    }

    #[test]
    fn a_delta_the_hub_would_refuse_is_dropped_alone() {
        let limits = Limits {
            max_status_bytes: 100,
            max_string_bytes: 64,
            ..Limits::default()
        };
        let deltas = vec![
            delta(1, 10, "ok"),
            delta(2, 500, "big-status"),
            delta(3, 10, &"n".repeat(100)),
            delta(4, 10, "ok-too"),
        ];
        let framed = frame_deltas(deltas, &limits, BatchKind::Deltas).unwrap();
        assert_eq!(decoded_seqs(&framed, &limits).concat(), [1, 4]);
        let dropped: Vec<(u64, &str)> = framed
            .dropped
            .iter()
            .map(|(d, kind, _)| (d.seq, *kind))
            .collect();
        assert_eq!(dropped, [(2, "status_too_large"), (3, "string_too_long")]);
    }
}
