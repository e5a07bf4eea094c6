//! Helpers for objects stored as JSON: metadata access, timestamps, names.

use serde_json::{Map, Value};

/// How the keys of a document written as JSON are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyOrder {
    /// `kind`, `apiVersion`, `metadata`, then the rest: kube's typed objects
    /// (built-in kinds, `Status`, lists, discovery), in Go struct order,
    /// which some clients sniff.
    KindFirst,
    /// Every key sorted: kube's unstructured objects (custom resources),
    /// which Go's encoding/json writes with sorted map keys.
    Sorted,
}

impl KeyOrder {
    /// The order kube writes an object of a resource in.
    pub fn for_resource(custom: bool) -> KeyOrder {
        if custom {
            KeyOrder::Sorted
        } else {
            KeyOrder::KindFirst
        }
    }
}

/// Writes `value` as JSON in `order` (the order applies to the top level;
/// nested maps are sorted).
pub(crate) fn write_json(
    out: &mut Vec<u8>,
    value: &Value,
    order: KeyOrder,
) -> Result<(), serde_json::Error> {
    let Value::Object(map) = value else {
        return serde_json::to_writer(out, value);
    };
    if order == KeyOrder::Sorted || !map.contains_key("kind") {
        return serde_json::to_writer(out, value);
    }
    const FIRST: [&str; 3] = ["kind", "apiVersion", "metadata"];
    let leading = FIRST.iter().filter_map(|k| map.get_key_value(*k));
    let rest = map.iter().filter(|(k, _)| !FIRST.contains(&k.as_str()));
    out.push(b'{');
    for (i, (key, value)) in leading.chain(rest).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut *out, key)?;
        out.push(b':');
        serde_json::to_writer(&mut *out, value)?;
    }
    out.push(b'}');
    Ok(())
}

/// `value` as JSON in `order`.
pub(crate) fn to_json(value: &Value, order: KeyOrder) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    // Writing a `Value` into a Vec cannot fail (its keys are strings).
    let _ = write_json(&mut out, value, order);
    out
}

/// `metadata.<field>` as a string.
pub(crate) fn meta_str<'a>(object: &'a Value, field: &str) -> Option<&'a str> {
    object.get("metadata")?.get(field)?.as_str()
}

/// `metadata`, created (as an empty map) when missing or not a map.
pub(crate) fn metadata_mut(object: &mut Value) -> &mut Map<String, Value> {
    if !object.is_object() {
        *object = Value::Object(Map::new());
    }
    let Value::Object(root) = object else {
        unreachable!("made an object above")
    };
    let meta = root
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    match meta {
        Value::Object(m) => m,
        _ => unreachable!("made an object above"),
    }
}

/// Sets or removes (`None`) `metadata.<field>`.
pub(crate) fn set_meta(object: &mut Value, field: &str, value: Option<Value>) {
    let meta = metadata_mut(object);
    match value {
        Some(v) => {
            meta.insert(field.to_string(), v);
        }
        None => {
            meta.remove(field);
        }
    }
}

/// The non-empty `metadata.finalizers`.
pub(crate) fn has_finalizers(object: &Value) -> bool {
    object
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty())
}

/// RFC 3339 UTC timestamp with second precision, as Kubernetes `metav1.Time` serialises.
pub(crate) fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// A random suffix for `generateName`, from kube's alphabet (no vowels, no confusables).
pub(crate) fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| char::from(ALPHABET[rand::random_range(0..ALPHABET.len())]))
        .collect()
}

/// Everything but `metadata` and `status`: what `generation` tracks.
pub(crate) fn spec_part(object: &Value) -> Map<String, Value> {
    match object {
        Value::Object(m) => m
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "metadata" | "status" | "apiVersion" | "kind"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        _ => Map::new(),
    }
}

/// A DNS-1123 subdomain (most object names).
pub(crate) fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                && b.first().is_some_and(u8::is_ascii_alphanumeric)
                && b.last().is_some_and(u8::is_ascii_alphanumeric)
        })
}

/// A DNS-1123 label (namespace names).
pub(crate) fn is_dns_label(name: &str) -> bool {
    name.len() <= 63 && !name.contains('.') && is_dns_subdomain(name)
}

/// Standard base64 with padding (RFC 4648), as Kubernetes encodes `[]byte` fields.
pub(crate) fn base64_encode(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                let sextet = (n >> (18 - 6 * i)) & 63;
                out.push(char::from(ALPHABET[sextet as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard base64 (padding optional); `None` when malformed.
pub(crate) fn base64_decode(input: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        })
    };
    let trimmed = input.trim_end_matches('=');
    let mut out = Vec::with_capacity(trimmed.len() * 3 / 4);
    for chunk in trimmed.as_bytes().chunks(4) {
        if chunk.len() == 1 {
            return None;
        }
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= value(*c)? << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_round_trips_rfc4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(plain.as_bytes()), encoded);
            assert_eq!(base64_decode(encoded).as_deref(), Some(plain.as_bytes()));
        }
        assert_eq!(base64_decode("a"), None);
        assert_eq!(base64_decode("!!!!"), None);
    }

    use super::*;
    use serde_json::json;

    #[test]
    fn metadata_is_created_on_demand() {
        let mut v = json!({"kind": "X"});
        set_meta(&mut v, "name", Some(json!("a")));
        assert_eq!(meta_str(&v, "name"), Some("a"));
        set_meta(&mut v, "name", None);
        assert_eq!(meta_str(&v, "name"), None);
    }

    #[test]
    fn typed_objects_begin_with_kind_and_unstructured_ones_are_sorted() {
        let v = json!({"apiVersion": "v1", "data": {"b": "1", "a": "2"}, "kind": "ConfigMap", "metadata": {"name": "x"}});
        assert_eq!(
            String::from_utf8_lossy(&to_json(&v, KeyOrder::KindFirst)),
            r#"{"kind":"ConfigMap","apiVersion":"v1","metadata":{"name":"x"},"data":{"a":"2","b":"1"}}"#
        );
        assert_eq!(
            String::from_utf8_lossy(&to_json(&v, KeyOrder::Sorted)),
            r#"{"apiVersion":"v1","data":{"a":"2","b":"1"},"kind":"ConfigMap","metadata":{"name":"x"}}"#
        );
        assert_eq!(to_json(&json!([1]), KeyOrder::KindFirst), b"[1]");
    }

    #[test]
    fn names() {
        assert!(is_dns_subdomain("web-1.example"));
        assert!(!is_dns_subdomain("Web"));
        assert!(!is_dns_subdomain("-a"));
        assert!(is_dns_label("ns-1"));
        assert!(!is_dns_label("a.b"));
        assert_eq!(random_suffix().len(), 5);
    }

    #[test]
    fn timestamps_look_like_kube() {
        let t = now_rfc3339();
        assert_eq!(t.len(), 20);
        assert!(t.ends_with('Z'));
    }
}
