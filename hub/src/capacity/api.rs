//! The capacity part of the hub API, and its command-line client.
//!
//! - `GET /api/v1/capacity?format=json|csv|table`: the [`CapacityReport`]
//!   (JSON by default).
//! - `GET /api/v1/capacity/history?cluster=<name>&from=<t>&to=<t>`: history
//!   points of a cluster (the fleet without `cluster`); `from` and `to` are
//!   RFC 3339 times or Unix milliseconds, both optional. The answer carries
//!   the points and their trends.
//!
//! [`fetch_report`] is what `uplink-hub report --hub-http URL` runs: one
//! plain-HTTP GET.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use serde::Serialize;

use super::Capacity;
use super::history::Point;
use super::report::Format;
use super::trend::{Trend, trends};

/// `GET /api/v1/capacity`.
pub const CAPACITY_PATH: &str = "/api/v1/capacity";
/// `GET /api/v1/capacity/history`.
pub const HISTORY_PATH: &str = "/api/v1/capacity/history";

/// The answer of the history endpoint.
#[derive(Debug, Serialize)]
pub struct HistoryView {
    /// The cluster, or `None` for the fleet.
    pub cluster: Option<String>,
    pub points: Vec<Point>,
    pub trends: Vec<Trend>,
}

/// Answers `path` when it is a capacity endpoint, else `None`.
pub fn route(
    capacity: &Capacity,
    path: &str,
    query: Option<&str>,
) -> Option<Response<Full<Bytes>>> {
    if path != CAPACITY_PATH && path != HISTORY_PATH {
        return None;
    }
    let params = parse_query(query.unwrap_or_default());
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    match path {
        CAPACITY_PATH => {
            let format = match param("format") {
                None => Format::Json,
                Some(f) => match Format::parse(f) {
                    Some(format) => format,
                    None => {
                        return Some(plain(
                            StatusCode::BAD_REQUEST,
                            format!("format={f:?}: expected json, csv or table\n"),
                        ));
                    }
                },
            };
            let report = capacity.report(SystemTime::now());
            Some(respond(
                StatusCode::OK,
                format.content_type(),
                report.render(format),
            ))
        }
        HISTORY_PATH => {
            let bound = |name: &str, default: i64| match param(name) {
                None => Ok(default),
                Some(v) => parse_time(v).ok_or_else(|| {
                    format!("{name}={v:?}: expected an RFC 3339 time or Unix milliseconds\n")
                }),
            };
            let (from, to) = match (bound("from", i64::MIN), bound("to", i64::MAX)) {
                (Ok(from), Ok(to)) => (from, to),
                (Err(e), _) | (_, Err(e)) => return Some(plain(StatusCode::BAD_REQUEST, e)),
            };
            let cluster = param("cluster").filter(|c| !c.is_empty());
            let points = capacity.history_range(cluster, from, to);
            let view = HistoryView {
                cluster: cluster.map(str::to_owned),
                trends: trends(&points),
                points,
            };
            let body = serde_json::to_string_pretty(&view).unwrap_or_default();
            Some(respond(StatusCode::OK, "application/json", body))
        }
        _ => None,
    }
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    response
}

fn plain(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    respond(status, "text/plain; charset=utf-8", body)
}

/// `a=1&b=x%20y` → pairs, percent-decoded (`+` is a space).
pub fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k, true), percent_decode(v, true))
        })
        .collect()
}

/// One segment of a URL's path, percent-decoded (`+` stays a `+`).
pub fn decode_path_segment(segment: &str) -> String {
    percent_decode(segment, false)
}

fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' if plus_is_space => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An RFC 3339 time or Unix milliseconds, as Unix milliseconds.
pub fn parse_time(s: &str) -> Option<i64> {
    if let Ok(ms) = s.parse::<i64>() {
        return Some(ms);
    }
    let ts: jiff::Timestamp = s.parse().ok()?;
    Some(ts.as_millisecond())
}

/// Why `uplink-hub report` failed.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("--hub-http {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("GET {url}: {source}")]
    Request {
        url: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    #[error("GET {url}: reading the answer: {reason}")]
    Body { url: String, reason: String },
    #[error("GET {url}: HTTP {status}: {body}")]
    Status {
        url: String,
        status: StatusCode,
        body: String,
    },
    #[error("GET {url}: no answer within {0:?}", REPORT_TIMEOUT)]
    Timeout { url: String },
}

/// How long `uplink-hub report` waits for the hub.
pub const REPORT_TIMEOUT: Duration = Duration::from_secs(30);

/// Fetches the capacity report in `format` from the hub whose HTTP endpoint
/// is `hub_http` (`http://host:port`), with `token` as the bearer token
/// when the hub checks them (`--http-auth=delegated`).
pub async fn fetch_report(
    hub_http: &str,
    format: Format,
    token: Option<&str>,
) -> Result<String, ReportError> {
    let base = hub_http.trim_end_matches('/');
    let url = format!("{base}{CAPACITY_PATH}?format={}", format.name());
    let uri: http::Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| ReportError::Url {
            url: hub_http.to_owned(),
            reason: e.to_string(),
        })?;
    if uri.scheme_str() != Some("http") {
        return Err(ReportError::Url {
            url: hub_http.to_owned(),
            reason: "expected http://host:port (the hub's --http-listen)".into(),
        });
    }
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let get = async {
        let mut request = http::Request::get(uri);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(Bytes::new()))
            .map_err(|e| ReportError::Url {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        let response = client
            .request(request)
            .await
            .map_err(|source| ReportError::Request {
                url: url.clone(),
                source,
            })?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| ReportError::Body {
                url: url.clone(),
                reason: e.to_string(),
            })?
            .to_bytes();
        let body = String::from_utf8_lossy(&body).into_owned();
        if status.is_success() {
            Ok(body)
        } else {
            Err(ReportError::Status {
                url: url.clone(),
                status,
                body,
            })
        }
    };
    tokio::time::timeout(REPORT_TIMEOUT, get)
        .await
        .map_err(|_| ReportError::Timeout { url: url.clone() })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_and_times() {
        assert_eq!(
            parse_query("cluster=a%2Db&format=csv&x"),
            [
                ("cluster".to_owned(), "a-b".to_owned()),
                ("format".to_owned(), "csv".to_owned()),
                ("x".to_owned(), String::new()),
            ]
        );
        assert_eq!(parse_query("v=100%"), [("v".to_owned(), "100%".to_owned())]);
        assert_eq!(parse_time("1700000000000"), Some(1_700_000_000_000));
        assert_eq!(parse_time("2023-11-14T22:13:20Z"), Some(1_700_000_000_000));
        assert_eq!(parse_time("yesterday"), None);
    }
}
