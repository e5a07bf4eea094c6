//! The namespace-locator annotation parser (`Locator::parse`,
//! agent/src/mapping.rs), which reads kcp's `NamespaceLocator` JSON.
//!
//! Two halves, picked by the first byte:
//! - raw annotation text: whatever it accepts names a workspace and a
//!   namespace that are valid path segments, and the annotation it writes
//!   for them parses back to the same locator;
//! - structure-aware: a `NamespaceLocator` of arbitrary strings, written as
//!   kcp writes it, parses back to its upstream coordinates exactly when
//!   both are valid names, and its downstream namespace has kcp's shape
//!   (`kcp-` and 12 lowercase base-36 digits).

#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use uplink_agent::mapping::{Locator, NamespaceLocator, SyncTargetRef};
use uplink_protocol::names::is_valid_path_segment;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        raw(rest);
    } else {
        structured(rest);
    }
});

fn raw(data: &[u8]) {
    let Ok(annotation) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(locator) = Locator::parse(annotation) else {
        return;
    };
    assert!(is_valid_path_segment(&locator.workspace), "{locator:?}");
    assert!(is_valid_path_segment(&locator.namespace), "{locator:?}");
    let written = locator.to_annotation();
    assert_eq!(
        Locator::parse(&written).ok(),
        Some(locator),
        "{written:?} does not parse back"
    );
}

fn structured(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(locator) = arbitrary_locator(&mut u) else {
        return;
    };
    let annotation = locator.to_annotation();
    let parsed = Locator::parse(&annotation);
    let valid =
        is_valid_path_segment(&locator.workspace) && is_valid_path_segment(&locator.namespace);
    match parsed {
        Ok(parsed) => {
            assert!(valid, "{annotation:?} accepted with invalid names");
            assert_eq!(parsed, locator.upstream(), "{annotation:?}");
        }
        Err(error) => assert!(!valid, "{annotation:?} refused: {error}"),
    }
    let namespace = locator.downstream_namespace();
    let digits = namespace
        .strip_prefix("kcp-")
        .unwrap_or_else(|| panic!("{namespace:?}"));
    assert_eq!(digits.len(), 12, "{namespace:?}");
    assert!(
        digits
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()),
        "{namespace:?}"
    );
    // The same locator always lands in the same namespace.
    assert_eq!(locator.clone().downstream_namespace(), namespace);
}

/// A locator whose strings are mostly name-like (so the accepting path is
/// reached) and sometimes anything at all.
fn arbitrary_locator(u: &mut Unstructured<'_>) -> arbitrary::Result<NamespaceLocator> {
    Ok(NamespaceLocator {
        sync_target: SyncTargetRef {
            workspace: text(u)?,
            name: text(u)?,
            uid: text(u)?,
        },
        workspace: text(u)?,
        namespace: text(u)?,
    })
}

fn text(u: &mut Unstructured<'_>) -> arbitrary::Result<String> {
    const NAME: &[u8] = b"abcz09-._:~";
    if bool::arbitrary(u)? {
        return String::arbitrary(u);
    }
    let len = u.int_in_range(0..=12)?;
    (0..len)
        .map(|_| u.choose(NAME).map(|b| char::from(*b)))
        .collect()
}
