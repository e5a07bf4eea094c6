//! The hub API's lists, paged and streamed as Kubernetes lists are
//! ("Retrieving large results sets in chunks"):
//!
//! - `?limit=N`: at most N items (absent or 0: [`DEFAULT_LIMIT`]; more
//!   than [`MAX_LIMIT`] is served as [`MAX_LIMIT`]).
//! - When more items follow, the list's `metadata.continue` holds an opaque
//!   token and `metadata.remainingItemCount` how many follow; `?continue=<token>`
//!   (with any `limit`) asks for the next page. A token is only good for the
//!   list that issued it; a bad one is a 400.
//! - Items come in key order (object: workspace, group, version, resource,
//!   kind, namespace, name; cluster: name). A page starts after the last key
//!   of the previous one, so the pages of a list are every item present
//!   throughout the listing exactly once; an item added or removed meanwhile
//!   may or may not appear (the hub keeps no history to serve a snapshot).
//!
//! The body is written while it is sent, in chunks of about
//! [`CHUNK_BYTES`], each item read from the hub's state just before it is
//! written: a request holds one page of keys and one chunk, never the list.

use std::convert::Infallible;

use bytes::Bytes;
use futures::StreamExt as _;
use http::{Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde::Serialize;
use serde_json::{Value, json};

use crate::page::Page;
use crate::store::{KeyParts, ObjectKey};

/// Items in a page when the request names no `limit`.
pub const DEFAULT_LIMIT: usize = 500;
/// Most items in one page, whatever `limit` asks for.
pub const MAX_LIMIT: usize = 5000;
/// A chunk of the body is sent once it holds this many bytes.
pub const CHUNK_BYTES: usize = 64 * 1024;

/// The body of every hub API answer: whole for small ones, streamed for
/// lists.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// What a list request asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct ListRequest<K> {
    pub limit: usize,
    /// The last key of the previous page.
    pub after: Option<K>,
}

/// Why a list request is refused (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListError {
    #[error(
        "limit={0:?}: expected a whole number (0 or absent: {DEFAULT_LIMIT}; at most {MAX_LIMIT})"
    )]
    Limit(String),
    #[error(
        "continue={0:?} is not a continue token of this list: pass metadata.continue of the previous page back unchanged, or start again without it"
    )]
    Continue(String),
}

/// A key lists are ordered and continued by.
pub trait ListKey: Ord + Clone + Serialize + Send + 'static {
    /// The key as a continue token wrote it.
    fn from_json(value: &Value) -> Option<Self>;
}

impl ListKey for String {
    fn from_json(value: &Value) -> Option<Self> {
        value.as_str().map(str::to_owned)
    }
}

impl ListKey for ObjectKey {
    fn from_json(value: &Value) -> Option<Self> {
        let text = |field: &str| value.get(field)?.as_str().map(str::to_owned);
        Some(ObjectKey::new(KeyParts {
            workspace: text("workspace")?,
            group: text("group")?,
            version: text("version")?,
            resource: text("resource")?,
            kind: text("kind")?,
            namespace: match value.get("namespace")? {
                Value::Null => None,
                Value::String(ns) => Some(ns.clone()),
                _ => return None,
            },
            name: text("name")?,
        }))
    }
}

/// Version of the token's layout.
const TOKEN_VERSION: &str = "uplink.hub/1";

impl<K: ListKey> ListRequest<K> {
    /// Reads `limit` and `continue` from `query`; `list` names the list
    /// (tokens of another list are refused).
    pub fn parse(list: &str, query: Option<&str>) -> Result<Self, ListError> {
        let mut request = ListRequest {
            limit: DEFAULT_LIMIT,
            after: None,
        };
        for (name, value) in crate::capacity::api::parse_query(query.unwrap_or_default()) {
            match name.as_str() {
                "limit" => {
                    let limit: usize = value.parse().map_err(|_| ListError::Limit(value))?;
                    request.limit = match limit {
                        0 => DEFAULT_LIMIT,
                        n => n.min(MAX_LIMIT),
                    };
                }
                "continue" if !value.is_empty() => {
                    request.after =
                        Some(decode_token(list, &value).ok_or(ListError::Continue(value))?);
                }
                _ => {}
            }
        }
        Ok(request)
    }
}

fn encode_token<K: ListKey>(list: &str, after: &K) -> String {
    let raw = json!({ "v": TOKEN_VERSION, "list": list, "after": after }).to_string();
    base64url_encode(raw.as_bytes())
}

fn decode_token<K: ListKey>(list: &str, token: &str) -> Option<K> {
    let raw = base64url_decode(token)?;
    let value: Value = serde_json::from_slice(&raw).ok()?;
    if value["v"] != TOKEN_VERSION || value["list"] != list {
        return None;
    }
    K::from_json(&value["after"])
}

/// Streams `page` as a list of kind `kind`: each key rendered by `render`
/// when its turn comes (`None`: the item is gone; it is left out).
pub fn respond<K, T, F>(list: &str, kind: &str, page: Page<K>, render: F) -> Response<Body>
where
    K: ListKey,
    T: Serialize,
    F: FnMut(&K) -> Option<T> + Send + 'static,
{
    let mut metadata = json!({});
    if page.remaining > 0
        && let Some(last) = page.keys.last()
    {
        metadata["continue"] = json!(encode_token(list, last));
        metadata["remainingItemCount"] = json!(page.remaining);
    }
    let head = format!(
        r#"{{"kind":{},"metadata":{metadata},"items":["#,
        json!(kind)
    );
    let mut writer = ListWriter {
        head: Some(head.into_bytes()),
        keys: page.keys.into_iter(),
        render,
        first: true,
        done: false,
    };
    let chunks = futures::stream::iter(std::iter::from_fn(move || writer.next_chunk()))
        .map(|chunk| Ok::<_, Infallible>(Frame::data(chunk)));
    let mut response = Response::new(StreamBody::new(chunks).boxed_unsync());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    *response.status_mut() = StatusCode::OK;
    response
}

/// Writes one list: the head, items in chunks, the tail.
struct ListWriter<I, F> {
    head: Option<Vec<u8>>,
    keys: I,
    render: F,
    first: bool,
    done: bool,
}

impl<K, I, T, F> ListWriter<I, F>
where
    I: Iterator<Item = K>,
    T: Serialize,
    F: FnMut(&K) -> Option<T>,
{
    fn next_chunk(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        let mut chunk = self.head.take().unwrap_or_default();
        while chunk.len() < CHUNK_BYTES {
            let Some(key) = self.keys.next() else {
                chunk.extend_from_slice(b"]}\n");
                self.done = true;
                break;
            };
            let Some(item) = (self.render)(&key) else {
                continue;
            };
            let mark = chunk.len();
            if !self.first {
                chunk.push(b',');
            }
            match serde_json::to_writer(&mut chunk, &item) {
                Ok(()) => self.first = false,
                Err(error) => {
                    // Not reachable with the hub's views (string keys, JSON
                    // values); an item that cannot be written is left out.
                    chunk.truncate(mark);
                    tracing::warn!(%error, outcome = "skipped", "writing a list item");
                }
            }
        }
        Some(Bytes::from(chunk))
    }
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Base64 with the URL alphabet and no padding: tokens go into query strings.
fn base64url_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let n = group
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=group.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    for group in text.as_bytes().chunks(4) {
        if group.len() == 1 {
            return None;
        }
        let mut n = 0u32;
        for (i, c) in group.iter().enumerate() {
            let value = ALPHABET.iter().position(|a| a == c)?;
            n |= (value as u32) << (18 - 6 * i);
        }
        for i in 0..group.len() - 1 {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str, namespace: Option<&str>) -> ObjectKey {
        ObjectKey::new(KeyParts {
            workspace: "root:org".into(),
            group: "apps".into(),
            version: "v1".into(),
            resource: "deployments".into(),
            kind: "Deployment".into(),
            namespace: namespace.map(str::to_owned),
            name: name.into(),
        })
    }

    #[test]
    fn base64url_round_trips_every_length() {
        for len in 0..10 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 250) as u8).collect();
            let text = base64url_encode(&bytes);
            assert!(!text.contains(['+', '/', '=']), "{text}");
            assert_eq!(base64url_decode(&text), Some(bytes));
        }
        assert_eq!(base64url_decode("A"), None);
        assert_eq!(base64url_decode("A*"), None);
    }

    #[test]
    fn tokens_round_trip_and_belong_to_their_list() {
        for after in [key("web", Some("shop")), key("cluster-wide", None)] {
            let token = encode_token("objects", &after);
            let query = format!("limit=10&continue={token}");
            let request = ListRequest::<ObjectKey>::parse("objects", Some(&query));
            assert_eq!(
                request,
                Ok(ListRequest {
                    limit: 10,
                    after: Some(after)
                })
            );
            assert!(matches!(
                ListRequest::<ObjectKey>::parse("conflicts", Some(&query)),
                Err(ListError::Continue(_))
            ));
        }
        assert!(matches!(
            ListRequest::<String>::parse("clusters", Some("continue=garbage")),
            Err(ListError::Continue(_))
        ));
    }

    #[test]
    fn limits_default_cap_and_refuse_garbage() {
        let limit = |q: &str| ListRequest::<String>::parse("clusters", Some(q)).map(|r| r.limit);
        assert_eq!(limit(""), Ok(DEFAULT_LIMIT));
        assert_eq!(limit("limit=0"), Ok(DEFAULT_LIMIT));
        assert_eq!(limit("limit=7"), Ok(7));
        assert_eq!(limit("limit=999999"), Ok(MAX_LIMIT));
        assert_eq!(limit("limit=-1"), Err(ListError::Limit("-1".into())));
        assert_eq!(limit("limit=ten"), Err(ListError::Limit("ten".into())));
    }

    /// A client that reads slowly holds the hub to what it has read: items
    /// are read from the hub's state only when the next chunk is wanted.
    #[tokio::test]
    async fn items_are_rendered_only_as_the_body_is_read() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};

        let rendered = Arc::new(AtomicUsize::new(0));
        let counter = rendered.clone();
        let page = Page {
            keys: (0..5000).map(|i| format!("k{i:05}")).collect(),
            remaining: 0,
        };
        let pad = "y".repeat(4096);
        let response = respond("test", "TestList", page, move |k: &String| {
            counter.fetch_add(1, Ordering::Relaxed);
            Some(json!({ "k": k, "pad": pad }))
        });
        assert_eq!(
            rendered.load(Ordering::Relaxed),
            0,
            "nothing before the body is read"
        );
        let mut body = response.into_body();
        let mut read = 0;
        while read < 3 * CHUNK_BYTES {
            let Some(Ok(frame)) = body.frame().await else {
                panic!("the body ended early");
            };
            read += frame.into_data().map(|d| d.len()).unwrap_or_default();
        }
        let so_far = rendered.load(Ordering::Relaxed);
        assert!(
            so_far < 5 * CHUNK_BYTES / 4096,
            "{so_far} items rendered for {read} bytes read"
        );
        while body.frame().await.is_some() {}
        assert_eq!(rendered.load(Ordering::Relaxed), 5000);
    }

    #[test]
    fn a_list_is_written_in_bounded_chunks_and_skips_gone_items() {
        let keys: Vec<String> = (0..2000).map(|i| format!("k{i:05}")).collect();
        let page = Page { keys, remaining: 3 };
        let big = "x".repeat(1000);
        let mut writer = ListWriter {
            head: Some(b"{\"items\":[".to_vec()),
            keys: page.keys.into_iter(),
            render: |k: &String| (!k.ends_with('7')).then(|| json!({ "k": k, "pad": big })),
            first: true,
            done: false,
        };
        let mut body = Vec::new();
        let mut chunks = 0;
        while let Some(chunk) = writer.next_chunk() {
            assert!(chunk.len() < CHUNK_BYTES + 2000, "chunk of {}", chunk.len());
            body.extend_from_slice(&chunk);
            chunks += 1;
        }
        assert!(chunks > 10, "{chunks} chunks");
        let list: Value = serde_json::from_slice(&body).unwrap_or_default();
        let items = list["items"].as_array().map(Vec::len);
        assert_eq!(items, Some(1800));
    }
}
