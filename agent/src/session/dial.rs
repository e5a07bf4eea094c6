//! Dialing the hub: where it is (`--hub-url`), then TCP, TLS (client
//! certificate, hub CA as the only root) and the WebSocket handshake with
//! subprotocol `uplink.v1`, within a time limit.

use std::net::SocketAddr;
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use uplink_protocol::{Limits, SUBPROTOCOL, TUNNEL_PATH};

use super::{SessionContext, SessionError};

/// The WebSocket to the hub, over TLS.
pub(super) type Ws = WebSocketStream<TlsStream<TcpStream>>;

/// How long connecting (TCP, TLS, WebSocket) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the hub is, parsed once from `--hub-url`.
#[derive(Debug, Clone)]
pub struct HubEndpoint {
    /// The full tunnel URL the WebSocket request goes to.
    pub url: http::Uri,
    /// Host to connect to (no brackets around IPv6 addresses).
    pub host: String,
    pub port: u16,
    /// The name the hub's certificate must carry (a DNS name or an IP address).
    pub server_name: ServerName<'static>,
    /// The address to connect to instead of resolving `host`: one replica
    /// of a Service name (`--hub-discovery=dns`); the TLS server name and
    /// the request stay `host`'s.
    pub address: Option<SocketAddr>,
}

/// Why `--hub-url` is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--hub-url {url:?}: {reason}")]
pub struct HubUrlError {
    pub url: String,
    pub reason: String,
}

impl HubEndpoint {
    /// Parses `wss://host[:port][/path]`; the path defaults to `/v1/tunnel`.
    pub fn parse(url: &str) -> Result<Self, HubUrlError> {
        let fail = |reason: String| HubUrlError {
            url: url.to_owned(),
            reason,
        };
        let uri: http::Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| fail(e.to_string()))?;
        if uri.scheme_str() != Some("wss") {
            return Err(fail("the scheme must be wss://".into()));
        }
        let authority = uri.authority().ok_or_else(|| fail("no host".into()))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if host.is_empty() {
            return Err(fail("no host".into()));
        }
        let port = authority.port_u16().unwrap_or(443);
        let server_name =
            ServerName::try_from(host.clone()).map_err(|e| fail(format!("invalid host: {e}")))?;
        let path = match uri.path() {
            "" | "/" => TUNNEL_PATH,
            path => path,
        };
        let full = format!("wss://{authority}{path}");
        let url = full
            .parse()
            .map_err(|e: http::uri::InvalidUri| fail(e.to_string()))?;
        Ok(Self {
            url,
            host,
            port,
            server_name,
            address: None,
        })
    }

    /// Parses a comma-separated list of URLs (see [`HubEndpoint::parse`]);
    /// empty entries are ignored, and the list must name at least one.
    pub fn parse_list(urls: &str) -> Result<Vec<Self>, HubUrlError> {
        let endpoints = urls
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .map(Self::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if endpoints.is_empty() {
            return Err(HubUrlError {
                url: urls.to_owned(),
                reason: "names no hub".into(),
            });
        }
        Ok(endpoints)
    }

    /// This endpoint, connecting to `address` (one replica behind the
    /// host's name).
    pub fn at(&self, address: SocketAddr) -> Self {
        Self {
            address: Some(address),
            ..self.clone()
        }
    }
}

/// TCP, TLS and the WebSocket handshake.
pub(super) async fn connect(ctx: &SessionContext) -> Result<Ws, SessionError> {
    let hub = &ctx.hub;
    let handshake = async {
        let tcp = match hub.address {
            Some(address) => TcpStream::connect(address).await,
            None => TcpStream::connect((hub.host.as_str(), hub.port)).await,
        }
        .map_err(|source| SessionError::Connect {
            host: hub.host.clone(),
            port: hub.port,
            source,
        })?;
        // Frames are small and latency matters more than packet count.
        let _ = tcp.set_nodelay(true);
        let tls = TlsConnector::from(ctx.tls.config())
            .connect(hub.server_name.clone(), tcp)
            .await
            .map_err(SessionError::Tls)?;
        let mut request = hub
            .url
            .clone()
            .into_client_request()
            .map_err(SessionError::Handshake)?;
        request.headers_mut().insert(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            http::HeaderValue::from_static(SUBPROTOCOL),
        );
        let max = Limits::default().max_frame_bytes as usize;
        let config = WebSocketConfig::default()
            .max_message_size(Some(max))
            .max_frame_size(Some(max));
        let (ws, response) =
            tokio_tungstenite::client_async_with_config(request, tls, Some(config))
                .await
                .map_err(SessionError::from_handshake)?;
        let selected = response
            .headers()
            .get(http::header::SEC_WEBSOCKET_PROTOCOL)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        if selected.as_deref() != Some(SUBPROTOCOL) {
            return Err(SessionError::Subprotocol(selected));
        }
        Ok(ws)
    };
    tokio::time::timeout(CONNECT_TIMEOUT, handshake)
        .await
        .map_err(|_| SessionError::Timeout("connecting to the hub"))?
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn hub_urls() {
        let hub = HubEndpoint::parse("wss://hub.example.com:9443").unwrap();
        assert_eq!(hub.url.to_string(), "wss://hub.example.com:9443/v1/tunnel");
        assert_eq!((hub.host.as_str(), hub.port), ("hub.example.com", 9443));
        let ip = HubEndpoint::parse("wss://127.0.0.1:8443/").unwrap();
        assert!(matches!(ip.server_name, ServerName::IpAddress(_)));
        let v6 = HubEndpoint::parse("wss://[::1]:8443/custom/path").unwrap();
        assert_eq!(v6.host, "::1");
        assert_eq!(v6.url.path(), "/custom/path");
        assert_eq!(HubEndpoint::parse("wss://hub").unwrap().port, 443);
        for bad in ["ws://hub:80", "https://hub", "hub:443", "wss://"] {
            let err = HubEndpoint::parse(bad).unwrap_err();
            assert!(err.to_string().contains("--hub-url"), "{err}");
        }
    }

    #[test]
    fn a_refused_upgrade_keeps_the_hubs_reason() {
        let mut response = http::Response::new(Some(b"names no cluster".to_vec()));
        *response.status_mut() = http::StatusCode::FORBIDDEN;
        let error = SessionError::from_handshake(tokio_tungstenite::tungstenite::Error::Http(
            Box::new(response),
        ));
        assert_eq!(
            error.to_string(),
            "the hub refused the WebSocket upgrade with HTTP 403: names no cluster"
        );
    }
}
