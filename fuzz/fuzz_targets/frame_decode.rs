//! The frame decoder with its pre-scan (`decode_agent_frame`,
//! `decode_hub_frame`: protocol/src/codec.rs and precheck.rs) on arbitrary
//! bytes, under the default limits and under tight ones.
//!
//! Properties:
//! - a frame either side accepts re-encodes to bytes that decode to the same
//!   frame (decode ∘ encode is the identity on what decode returns);
//! - tight limits accept nothing the default limits refuse (every tight
//!   limit is below its default);
//! - decoding allocates in proportion to the frame, never more: the peak
//!   of live heap bytes during a decode stays under a small multiple of the
//!   input's length (the pre-scan refuses lengths the bytes cannot back
//!   before the decoder reserves for them);
//! - every refusal carries a metrics label and is either malformed (close
//!   1002) or over a limit (close 1008).

#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use libfuzzer_sys::fuzz_target;
use uplink_protocol::{
    DecodeError, ErrorCode, Limits, close, decode_agent_frame, decode_hub_frame, encode,
};

fuzz_target!(|data: &[u8]| {
    let tight = tight_limits();
    let default = Limits::default();

    let agent = measured(data.len(), || decode_agent_frame(data, &default));
    let agent_tight = decode_agent_frame(data, &tight);
    check_refusal(agent.as_ref().err());
    check_refusal(agent_tight.as_ref().err());
    if agent_tight.is_ok() {
        assert!(
            agent.is_ok(),
            "tight limits accepted what the defaults refused"
        );
    }
    if let Ok(frame) = &agent {
        let bytes = encode(frame).expect("a decoded frame encodes");
        let again = decode_agent_frame(&bytes, &default).expect("a re-encoded frame decodes");
        assert_eq!(&again, frame, "agent frame changed through encode/decode");
    }

    let hub = measured(data.len(), || decode_hub_frame(data, &default));
    let hub_tight = decode_hub_frame(data, &tight);
    check_refusal(hub.as_ref().err());
    check_refusal(hub_tight.as_ref().err());
    if hub_tight.is_ok() {
        assert!(
            hub.is_ok(),
            "tight limits accepted what the defaults refused"
        );
    }
    if let Ok(frame) = &hub {
        let bytes = encode(frame).expect("a decoded frame encodes");
        let again = decode_hub_frame(&bytes, &default).expect("a re-encoded frame decodes");
        assert_eq!(&again, frame, "hub frame changed through encode/decode");
    }
});

/// Limits small enough that fuzz-sized inputs reach every refusal.
fn tight_limits() -> Limits {
    Limits {
        max_frame_bytes: 2048,
        max_deltas_per_batch: 3,
        max_string_bytes: 16,
        max_status_bytes: 64,
        max_objects_per_cluster: 10,
        max_manifest_bytes: 64,
        max_downward_in_flight: 4,
        max_events_per_batch: 3,
    }
}

fn check_refusal(error: Option<&DecodeError>) {
    let Some(error) = error else { return };
    assert!(!error.kind().is_empty());
    // A frame is refused as malformed (1002) or over a limit (1008).
    let expected = match error.error_code() {
        ErrorCode::Malformed => close::PROTOCOL_ERROR,
        ErrorCode::LimitExceeded => close::POLICY_VIOLATION,
        other => panic!("{error}: a decoder refusal with code {other:?}"),
    };
    assert_eq!(error.close_code(), expected, "{error}");
    assert!(!error.to_string().is_empty());
}

/// Runs `decode`, asserting its peak heap use stays proportional to the
/// input it was given.
fn measured<T>(input_len: usize, decode: impl FnOnce() -> T) -> T {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let result = decode();
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    // Strings are copied once, deltas and structs take a few hundred bytes
    // each and every one needs several input bytes; 64 KiB covers the
    // fixed costs (error messages, paths).
    let bound = 64 * 1024 + 256 * input_len;
    assert!(
        peak <= bound,
        "decoding {input_len} bytes peaked at {peak} heap bytes"
    );
    result
}

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// The system allocator, counting live bytes and their peak.
struct Counting;

// SAFETY: every call is forwarded unchanged to the system allocator; the
// counters are plain atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            let live = LIVE.fetch_add(new_size, Ordering::Relaxed) + new_size;
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;
