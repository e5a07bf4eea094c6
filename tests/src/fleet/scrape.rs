//! Reading what the hub and the agents serve over plain HTTP: a minimal
//! HTTP/1.1 GET on a raw TCP stream (the endpoints are loopback, plain text,
//! one request per connection) and a parser of the Prometheus text format
//! just good enough to look up one series.

use std::{fmt, net::SocketAddr, time::Duration};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Longest time one GET may take, connect to last byte.
const GET_TIMEOUT: Duration = Duration::from_secs(5);

/// `GET http://<addr><path>` and the body, failing unless the answer is 200.
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    let what = format!("GET http://{addr}{path}");
    let exchange = async {
        let mut tcp = tokio::net::TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        tcp.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        tcp.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(GET_TIMEOUT, exchange)
        .await
        .map_err(|_| anyhow!("{what}: no complete answer within {GET_TIMEOUT:?}"))?
        .with_context(|| what.clone())?;
    let response = String::from_utf8(response).with_context(|| format!("{what}: not UTF-8"))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("{what}: no end of headers in {response:?}"))?;
    let status = head.split(' ').nth(1).unwrap_or_default();
    ensure!(status == "200", "{what}: HTTP {status}: {body}");
    let chunked = head.lines().any(|line| {
        let line = line.to_ascii_lowercase();
        line.starts_with("transfer-encoding:") && line.contains("chunked")
    });
    if chunked {
        dechunk(body).with_context(|| format!("{what}: bad chunked body"))
    } else {
        Ok(body.to_owned())
    }
}

/// Decodes a `Transfer-Encoding: chunked` body.
fn dechunk(mut rest: &str) -> Result<String> {
    let mut body = String::new();
    loop {
        let (size, after) = rest
            .split_once("\r\n")
            .ok_or_else(|| anyhow!("no chunk size line"))?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or_default().trim(), 16)
            .with_context(|| format!("chunk size {size:?}"))?;
        if size == 0 {
            return Ok(body);
        }
        let chunk = after
            .get(..size)
            .ok_or_else(|| anyhow!("chunk shorter than {size} bytes"))?;
        body.push_str(chunk);
        rest = after
            .get(size..)
            .and_then(|r| r.strip_prefix("\r\n"))
            .ok_or_else(|| anyhow!("no CRLF after a chunk"))?;
    }
}

/// One scrape of a `/metrics` endpoint.
#[derive(Debug, Clone)]
pub struct Scrape {
    text: String,
}

impl Scrape {
    pub fn new(text: String) -> Self {
        Scrape { text }
    }

    /// The exposition text as served.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The value of one series, written as in the exposition format:
    /// `uplink_hub_agents_connected` or
    /// `uplink_hub_heartbeats_total{cluster="a"}`. Labels must match exactly
    /// (all of them, any order). `None` when the series is absent (a labelled
    /// counter appears only once it was touched).
    pub fn value(&self, series: &str) -> Option<f64> {
        let wanted = Series::parse(series)?;
        self.text
            .lines()
            .filter(|line| !line.starts_with('#'))
            .find_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                (Series::parse(series)? == wanted).then(|| value.parse().ok())?
            })
    }

    /// Like [`Scrape::value`], but an absent series counts as 0 (counters
    /// that were never touched).
    pub fn counter(&self, series: &str) -> f64 {
        self.value(series).unwrap_or(0.0)
    }

    /// Like [`Scrape::value`], failing with the scrape in the message when the
    /// series is absent.
    pub fn require(&self, series: &str) -> Result<f64> {
        match self.value(series) {
            Some(value) => Ok(value),
            None => bail!("no series {series} in the scrape:\n{}", self.text),
        }
    }
}

impl fmt::Display for Scrape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A metric name and its labels, sorted.
#[derive(Debug, PartialEq, Eq)]
struct Series {
    name: String,
    labels: Vec<(String, String)>,
}

impl Series {
    fn parse(series: &str) -> Option<Series> {
        let series = series.trim();
        let Some((name, labels)) = series.split_once('{') else {
            return Some(Series {
                name: series.to_owned(),
                labels: Vec::new(),
            });
        };
        let mut rest = labels.strip_suffix('}')?;
        let mut parsed = Vec::new();
        while !rest.is_empty() {
            let (label, after) = rest.split_once("=\"")?;
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next()? {
                    (_, '\\') => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    (at, '"') => break at,
                    (_, c) => value.push(c),
                }
            };
            parsed.push((label.trim().to_owned(), value));
            rest = after[end + 1..].trim_start_matches(',').trim_start();
        }
        parsed.sort();
        Some(Series {
            name: name.to_owned(),
            labels: parsed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# HELP uplink_hub_agents_connected Agents with an established session.
# TYPE uplink_hub_agents_connected gauge
uplink_hub_agents_connected 2
uplink_hub_heartbeats_total{cluster=\"a\"} 17
uplink_hub_heartbeats_total{cluster=\"a-b\"} 3
uplink_hub_frames_rejected_total{cluster=\"x\",reason=\"too \\\"big\\\"\"} 1
";

    #[test]
    fn finds_series_by_name_and_exact_labels() {
        let scrape = Scrape::new(TEXT.to_owned());
        assert_eq!(scrape.value("uplink_hub_agents_connected"), Some(2.0));
        assert_eq!(
            scrape.value("uplink_hub_heartbeats_total{cluster=\"a\"}"),
            Some(17.0)
        );
        assert_eq!(
            scrape.value("uplink_hub_heartbeats_total{cluster=\"b\"}"),
            None
        );
        assert_eq!(
            scrape.counter("uplink_hub_heartbeats_total{cluster=\"b\"}"),
            0.0
        );
        assert_eq!(
            scrape.value(r#"uplink_hub_frames_rejected_total{reason="too \"big\"", cluster="x"}"#),
            Some(1.0)
        );
        assert_eq!(scrape.value("uplink_hub_frames_rejected_total"), None);
    }

    #[test]
    fn decodes_chunked_bodies() {
        assert_eq!(
            dechunk("5\r\nhello\r\n1;x=y\r\n!\r\n0\r\n\r\n")
                .ok()
                .as_deref(),
            Some("hello!")
        );
        assert!(dechunk("5\r\nhel").is_err());
    }
}
