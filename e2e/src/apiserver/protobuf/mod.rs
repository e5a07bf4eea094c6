//! Just enough of Kubernetes' protobuf encoding to read the request bodies
//! kubectl's typed clients send: `kubectl create deployment|service|job|
//! cronjob|role|clusterrole|rolebinding|clusterrolebinding|pdb|secret|
//! configmap|namespace|serviceaccount|ingress|priorityclass|quota|token`,
//! `kubectl auth can-i|whoami` and `kubectl certificate approve|deny` post
//! `application/vnd.kubernetes.protobuf`. A body is decoded with the field
//! table of its kind ([`tables`]) into the same JSON the rest of the server
//! stores; responses are always JSON, which client-go accepts.
//!
//! Kubernetes' generated Go code writes every non-pointer field, zero or
//! not, and pointer fields only when set; the tables say which zero values
//! JSON would keep, so the result matches what the same client would have
//! sent as JSON. A field the tables do not know is refused with its number
//! and message (415: send JSON), unless it holds only zero values, rather
//! than silently dropped.

mod tables;

use serde_json::{Map, Value, json};

/// The 4-byte prefix of every Kubernetes protobuf message.
const MAGIC: &[u8] = b"k8s\0";

/// How one field is encoded, and how its JSON looks.
#[derive(Debug, Clone, Copy)]
enum Field {
    /// A string; empty ones are omitted (JSON `omitempty`) except in lists and maps.
    Str,
    /// An integer JSON omits when zero (a non-pointer `omitempty` field).
    Int,
    /// An integer JSON keeps when zero (a pointer, or no `omitempty`).
    IntKeep,
    /// A boolean JSON omits when false.
    Bool,
    /// A boolean JSON keeps when false (a pointer).
    BoolKeep,
    /// `[]byte`: base64 in JSON.
    Bytes,
    /// `metav1.Time` (seconds, nanos): RFC 3339; the zero time is omitted.
    Time,
    /// `intstr.IntOrString`: a number or a string.
    IntOrString,
    /// `resource.Quantity`: its string form.
    Quantity,
    /// A message whose only field is a repeated string (`ExtraValue`): a list.
    StrList,
    /// A nested message.
    Msg(&'static Message),
    /// An embedded struct (`json:",inline"`): its fields join the parent's.
    Inline(&'static Message),
    /// Set by the server, never by a client (the status of reviews): ignored.
    Skip,
    /// A repeated field.
    Repeated(&'static Field),
    /// `map<string, V>`.
    Map(&'static Field),
}

/// A message type: its Go name (for errors) and field table.
#[derive(Debug)]
struct Message {
    name: &'static str,
    fields: &'static [(u32, &'static str, Field)],
}

/// Builds a [`Message`] in the tables.
const fn msg(name: &'static str, fields: &'static [(u32, &'static str, Field)]) -> Message {
    Message { name, fields }
}

/// One raw field from the wire.
#[derive(Debug, Clone, Copy)]
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

/// Whether a payload holds nothing but zero values (what Go writes for an
/// unset non-pointer field), so ignoring it loses nothing.
fn is_zero(wire: Wire<'_>) -> bool {
    match wire {
        Wire::Varint(v) => v == 0,
        Wire::Fixed => false,
        Wire::Bytes(b) => {
            let mut r = Reader { buf: b };
            loop {
                match r.next() {
                    Ok(None) => return true,
                    Ok(Some((_, inner))) if is_zero(inner) => {}
                    _ => return false,
                }
            }
        }
    }
}

/// A varint as the signed integer Go wrote (int32 and int64 alike).
fn signed(v: u64) -> i64 {
    i64::from_ne_bytes(v.to_ne_bytes())
}

/// `metav1.Time` / `MicroTime`: seconds and nanos since the epoch.
fn time(bytes: &[u8]) -> Result<Option<Value>, String> {
    let mut r = Reader { buf: bytes };
    let (mut seconds, mut nanos) = (0i64, 0i64);
    while let Some((n, w)) = r.next()? {
        match (n, w) {
            (1, Wire::Varint(v)) => seconds = signed(v),
            (2, Wire::Varint(v)) => nanos = signed(v),
            _ => {}
        }
    }
    if seconds == 0 && nanos == 0 {
        return Ok(None);
    }
    let t = jiff::Timestamp::from_second(seconds).map_err(|e| e.to_string())?;
    Ok(Some(json!(t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())))
}

/// `intstr.IntOrString`: type (0 int, 1 string), intVal, strVal.
fn int_or_string(bytes: &[u8]) -> Result<Value, String> {
    let mut r = Reader { buf: bytes };
    let (mut kind, mut int, mut string) = (0u64, 0i64, String::new());
    while let Some((n, w)) = r.next()? {
        match (n, w) {
            (1, Wire::Varint(v)) => kind = v,
            (2, Wire::Varint(v)) => int = signed(v),
            (3, Wire::Bytes(b)) => string = text(b)?,
            _ => {}
        }
    }
    Ok(if kind == 1 { json!(string) } else { json!(int) })
}

/// The strings of field 1 of a message (`Quantity`'s string, `ExtraValue`'s items).
fn first_field_strings(bytes: &[u8]) -> Result<Vec<String>, String> {
    let mut r = Reader { buf: bytes };
    let mut out = Vec::new();
    while let Some((n, w)) = r.next()? {
        if let (1, Wire::Bytes(b)) = (n, w) {
            out.push(text(b)?);
        }
    }
    Ok(out)
}

/// One value of `field`; `None` when JSON would omit it. Inside lists and
/// maps (`in_collection`) zero values are kept.
fn single(field: Field, wire: Wire<'_>, in_collection: bool) -> Result<Option<Value>, String> {
    Ok(match (field, wire) {
        (Field::Str, Wire::Bytes(b)) if in_collection || !b.is_empty() => Some(json!(text(b)?)),
        (Field::Str, Wire::Bytes(_)) => None,
        (Field::Int, Wire::Varint(v)) => (in_collection || v != 0).then(|| json!(signed(v))),
        (Field::IntKeep, Wire::Varint(v)) => Some(json!(signed(v))),
        (Field::Bool, Wire::Varint(v)) => (in_collection || v != 0).then(|| json!(v != 0)),
        (Field::BoolKeep, Wire::Varint(v)) => Some(json!(v != 0)),
        (Field::Bytes, Wire::Bytes(b)) => Some(json!(super::object::base64_encode(b))),
        (Field::Time, Wire::Bytes(b)) => time(b)?,
        (Field::IntOrString, Wire::Bytes(b)) => Some(int_or_string(b)?),
        (Field::Quantity, Wire::Bytes(b)) => first_field_strings(b)?.pop().map(Value::from),
        (Field::StrList, Wire::Bytes(b)) => Some(json!(first_field_strings(b)?)),
        (Field::Msg(m), Wire::Bytes(b)) => Some(Value::Object(message(b, m)?)),
        _ => return Err("unexpected wire type".into()),
    })
}

/// A map entry: key (field 1) and value (field 2).
fn map_entry(bytes: &[u8], value: Field) -> Result<(String, Value), String> {
    let mut r = Reader { buf: bytes };
    let (mut key, mut out) = (String::new(), None);
    while let Some((n, w)) = r.next()? {
        match (n, w) {
            (1, Wire::Bytes(b)) => key = text(b)?,
            (2, w) => out = single(value, w, true)?,
            _ => {}
        }
    }
    let empty = match value {
        Field::Str | Field::Bytes | Field::Quantity => json!(""),
        Field::StrList => json!([]),
        _ => Value::Null,
    };
    Ok((key, out.unwrap_or(empty)))
}

fn message(bytes: &[u8], schema: &Message) -> Result<Map<String, Value>, String> {
    let mut out = Map::new();
    let mut r = Reader { buf: bytes };
    while let Some((number, wire)) = r.next()? {
        let Some((_, name, field)) = schema.fields.iter().find(|(n, _, _)| *n == number) else {
            if is_zero(wire) {
                continue;
            }
            return Err(format!(
                "field {number} of {} is not understood by the test bed",
                schema.name
            ));
        };
        let name = (*name).to_string();
        let in_field = |e: String| format!("{}.{name}: {e}", schema.name);
        match (*field, wire) {
            (Field::Skip, _) => {}
            (Field::Inline(m), Wire::Bytes(b)) => out.extend(message(b, m)?),
            (Field::Repeated(Field::Int | Field::IntKeep), Wire::Bytes(b)) => {
                // Packed integers.
                let mut packed = Reader { buf: b };
                let list = out.entry(name).or_insert_with(|| json!([]));
                while !packed.buf.is_empty() {
                    let v = packed.varint()?;
                    if let Value::Array(items) = list {
                        items.push(json!(signed(v)));
                    }
                }
            }
            (Field::Repeated(element), w) => {
                let item = single(*element, w, true).map_err(in_field)?;
                if let (Value::Array(items), Some(item)) =
                    (out.entry(name).or_insert_with(|| json!([])), item)
                {
                    items.push(item);
                }
            }
            (Field::Map(value), Wire::Bytes(b)) => {
                let (k, v) = map_entry(b, *value).map_err(in_field)?;
                if let Value::Object(m) = out.entry(name).or_insert_with(|| json!({})) {
                    m.insert(k, v);
                }
            }
            (f, w) => {
                if let Some(v) = single(f, w, false).map_err(in_field)? {
                    out.insert(name, v);
                }
            }
        }
    }
    Ok(out)
}

/// Decodes a Kubernetes protobuf body (a `runtime.Unknown` envelope) into
/// the object's JSON form.
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
    let schema = tables::kind(&api_version, &kind).ok_or_else(|| {
        format!("protobuf bodies of {api_version}/{kind} are not supported; send JSON")
    })?;
    let mut object = message(raw, schema)?;
    object.insert("apiVersion".into(), json!(api_version));
    object.insert("kind".into(), json!(kind));
    Ok(Value::Object(object))
}

#[cfg(test)]
mod tests;
