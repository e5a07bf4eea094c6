//! Just enough of Kubernetes' protobuf encoding to read the request bodies
//! kubectl's typed clients send (`kubectl create namespace|configmap|secret|
//! serviceaccount` post `application/vnd.kubernetes.protobuf`). Bodies are
//! decoded with a small field-number schema per kind into the same JSON the
//! rest of the server stores; responses are always JSON, which client-go
//! accepts. Other kinds are answered with 415.

use serde_json::{Map, Value, json};

/// The 4-byte prefix of every Kubernetes protobuf message.
const MAGIC: &[u8] = b"k8s\0";

/// How one field is encoded.
#[derive(Debug, Clone, Copy)]
enum Field {
    Str,
    Int,
    Bool,
    Time,
    Msg(&'static [(u32, &'static str, Field)]),
    RepeatedStr,
    RepeatedMsg(&'static [(u32, &'static str, Field)]),
    MapStr,
    MapBytes,
}

type Schema = &'static [(u32, &'static str, Field)];

const OWNER_REFERENCE: Schema = &[
    (1, "kind", Field::Str),
    (3, "name", Field::Str),
    (4, "uid", Field::Str),
    (5, "apiVersion", Field::Str),
    (6, "controller", Field::Bool),
    (7, "blockOwnerDeletion", Field::Bool),
];

const OBJECT_META: Schema = &[
    (1, "name", Field::Str),
    (2, "generateName", Field::Str),
    (3, "namespace", Field::Str),
    (5, "uid", Field::Str),
    (6, "resourceVersion", Field::Str),
    (7, "generation", Field::Int),
    (8, "creationTimestamp", Field::Time),
    (9, "deletionTimestamp", Field::Time),
    (10, "deletionGracePeriodSeconds", Field::Int),
    (11, "labels", Field::MapStr),
    (12, "annotations", Field::MapStr),
    (13, "ownerReferences", Field::RepeatedMsg(OWNER_REFERENCE)),
    (14, "finalizers", Field::RepeatedStr),
];

const OBJECT_REFERENCE: Schema = &[
    (1, "kind", Field::Str),
    (2, "namespace", Field::Str),
    (3, "name", Field::Str),
    (4, "uid", Field::Str),
    (5, "apiVersion", Field::Str),
    (6, "resourceVersion", Field::Str),
    (7, "fieldPath", Field::Str),
];

const LOCAL_OBJECT_REFERENCE: Schema = &[(1, "name", Field::Str)];

const NAMESPACE: Schema = &[
    (1, "metadata", Field::Msg(OBJECT_META)),
    (
        2,
        "spec",
        Field::Msg(&[(1, "finalizers", Field::RepeatedStr)]),
    ),
    (3, "status", Field::Msg(&[(1, "phase", Field::Str)])),
];

const CONFIG_MAP: Schema = &[
    (1, "metadata", Field::Msg(OBJECT_META)),
    (2, "data", Field::MapStr),
    (3, "binaryData", Field::MapBytes),
    (4, "immutable", Field::Bool),
];

const SECRET: Schema = &[
    (1, "metadata", Field::Msg(OBJECT_META)),
    (2, "data", Field::MapBytes),
    (3, "type", Field::Str),
    (4, "stringData", Field::MapStr),
    (5, "immutable", Field::Bool),
];

const SERVICE_ACCOUNT: Schema = &[
    (1, "metadata", Field::Msg(OBJECT_META)),
    (2, "secrets", Field::RepeatedMsg(OBJECT_REFERENCE)),
    (
        3,
        "imagePullSecrets",
        Field::RepeatedMsg(LOCAL_OBJECT_REFERENCE),
    ),
    (4, "automountServiceAccountToken", Field::Bool),
];

fn schema_for(api_version: &str, kind: &str) -> Option<Schema> {
    match (api_version, kind) {
        ("v1", "Namespace") => Some(NAMESPACE),
        ("v1", "ConfigMap") => Some(CONFIG_MAP),
        ("v1", "Secret") => Some(SECRET),
        ("v1", "ServiceAccount") => Some(SERVICE_ACCOUNT),
        _ => None,
    }
}

/// One raw field from the wire.
enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

/// Reads protobuf fields one by one.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self.buf.split_first().ok_or("truncated varint")?;
            self.buf = rest;
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("varint too long".into())
    }

    fn next(&mut self) -> Result<Option<(u32, Wire<'a>)>, String> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let number = u32::try_from(key >> 3).map_err(|_| "field number too large")?;
        let wire = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => self.skip(8)?,
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| "length too large")?;
                if len > self.buf.len() {
                    return Err("truncated field".into());
                }
                let (field, rest) = self.buf.split_at(len);
                self.buf = rest;
                Wire::Bytes(field)
            }
            5 => self.skip(4)?,
            other => return Err(format!("unsupported wire type {other}")),
        };
        Ok(Some((number, wire)))
    }

    fn skip(&mut self, n: usize) -> Result<Wire<'a>, String> {
        if n > self.buf.len() {
            return Err("truncated field".into());
        }
        self.buf = &self.buf[n..];
        Ok(Wire::Fixed)
    }
}

fn text(bytes: &[u8]) -> Result<String, String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| "invalid UTF-8 in a string field".to_string())
}

fn map_entry(bytes: &[u8], value_as_bytes: bool) -> Result<(String, Value), String> {
    let mut r = Reader { buf: bytes };
    let (mut key, mut value) = (String::new(), json!(""));
    while let Some((n, w)) = r.next()? {
        match (n, w) {
            (1, Wire::Bytes(b)) => key = text(b)?,
            (2, Wire::Bytes(b)) if value_as_bytes => value = json!(super::object::base64_encode(b)),
            (2, Wire::Bytes(b)) => value = json!(text(b)?),
            _ => {}
        }
    }
    Ok((key, value))
}

fn time(bytes: &[u8]) -> Result<Value, String> {
    let mut r = Reader { buf: bytes };
    let mut seconds = 0i64;
    while let Some((n, w)) = r.next()? {
        if let (1, Wire::Varint(v)) = (n, w) {
            seconds = v as i64;
        }
    }
    let t = jiff::Timestamp::from_second(seconds).map_err(|e| e.to_string())?;
    Ok(json!(t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()))
}

fn message(bytes: &[u8], schema: Schema) -> Result<Map<String, Value>, String> {
    let mut out = Map::new();
    let mut r = Reader { buf: bytes };
    while let Some((number, wire)) = r.next()? {
        let Some((_, name, field)) = schema.iter().find(|(n, _, _)| *n == number) else {
            continue;
        };
        let name = (*name).to_string();
        match (field, wire) {
            // Generated Go messages always write plain strings and integers;
            // JSON omits empty ones, and so do we.
            (Field::Str, Wire::Bytes(b)) => {
                if !b.is_empty() {
                    out.insert(name, json!(text(b)?));
                }
            }
            (Field::Int, Wire::Varint(v)) => {
                if v != 0 {
                    out.insert(name, json!(v as i64));
                }
            }
            (Field::Bool, Wire::Varint(v)) => {
                out.insert(name, json!(v != 0));
            }
            (Field::Time, Wire::Bytes(b)) => {
                out.insert(name, time(b)?);
            }
            (Field::Msg(s), Wire::Bytes(b)) => {
                out.insert(name, Value::Object(message(b, s)?));
            }
            (Field::RepeatedStr, Wire::Bytes(b)) => {
                let list = out.entry(name).or_insert_with(|| json!([]));
                if let Value::Array(items) = list {
                    items.push(json!(text(b)?));
                }
            }
            (Field::RepeatedMsg(s), Wire::Bytes(b)) => {
                let item = Value::Object(message(b, s)?);
                if let Value::Array(items) = out.entry(name).or_insert_with(|| json!([])) {
                    items.push(item);
                }
            }
            (Field::MapStr | Field::MapBytes, Wire::Bytes(b)) => {
                let (k, v) = map_entry(b, matches!(field, Field::MapBytes))?;
                if let Value::Object(m) = out.entry(name).or_insert_with(|| json!({})) {
                    m.insert(k, v);
                }
            }
            _ => return Err(format!("field {name} has an unexpected wire type")),
        }
    }
    Ok(out)
}

/// Decodes a Kubernetes protobuf body into the object's JSON form.
pub(crate) fn decode(body: &[u8]) -> Result<Value, String> {
    let rest = body
        .strip_prefix(MAGIC)
        .ok_or("missing the k8s protobuf prefix")?;
    let mut r = Reader { buf: rest };
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    while let Some((n, w)) = r.next()? {
        match (n, w) {
            (1, Wire::Bytes(type_meta)) => {
                let mut t = Reader { buf: type_meta };
                while let Some((n, w)) = t.next()? {
                    match (n, w) {
                        (1, Wire::Bytes(b)) => api_version = text(b)?,
                        (2, Wire::Bytes(b)) => kind = text(b)?,
                        _ => {}
                    }
                }
            }
            (2, Wire::Bytes(b)) => raw = b,
            _ => {}
        }
    }
    let schema = schema_for(&api_version, &kind).ok_or_else(|| {
        format!("protobuf bodies of {api_version}/{kind} are not supported; send JSON")
    })?;
    let mut object = message(raw, schema)?;
    object.insert("apiVersion".into(), json!(api_version));
    object.insert("kind".into(), json!(kind));
    Ok(Value::Object(object))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(number: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![
            u8::try_from(number << 3 | 2).unwrap_or(0),
            u8::try_from(payload.len()).unwrap_or(0),
        ];
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn decodes_a_config_map() {
        let meta = [
            field(1, b"c1"),
            field(11, &[field(1, b"app"), field(2, b"web")].concat()),
        ]
        .concat();
        let raw = [
            field(1, &meta),
            field(2, &[field(1, b"k"), field(2, b"v")].concat()),
        ]
        .concat();
        let type_meta = [field(1, b"v1"), field(2, b"ConfigMap")].concat();
        let body = [MAGIC.to_vec(), field(1, &type_meta), field(2, &raw)].concat();
        let v = decode(&body).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c1", "labels": {"app": "web"}}, "data": {"k": "v"}})
        );
    }

    #[test]
    fn rejects_unknown_kinds_and_garbage() {
        let type_meta = [field(1, b"apps/v1"), field(2, b"Deployment")].concat();
        let body = [MAGIC.to_vec(), field(1, &type_meta)].concat();
        assert!(decode(&body).is_err());
        assert!(decode(b"k8s\0\xff\xff").is_err());
        assert!(decode(b"nope").is_err());
    }
}
