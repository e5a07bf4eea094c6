//! The tunnel listener: accepts TCP connections, completes the TLS handshake
//! (client certificate required) and the WebSocket upgrade on `/v1/tunnel`
//! with subprotocol `uplink.v1`, then hands each connection to a session.
//!
//! A semaphore bounds the handshakes in progress, so a flood of connections
//! waits in the kernel's backlog instead of costing memory and CPU here.
//! Every session task is tracked; on shutdown the listener stops accepting
//! and waits for the sessions to say goodbye.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::{HeaderValue, StatusCode, header};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use uplink_protocol::{SUBPROTOCOL, TUNNEL_PATH};

use crate::metrics::handshake_reason;
use crate::session::{self, SessionShared};
use crate::tls::cluster_identity;

/// Each connection's WebSocket read buffer, allocated up front. tungstenite's
/// default is 128 KiB, which for 10,000 mostly idle agents is 1.25 GiB held
/// for nothing; TLS hands over at most one 16 KiB record per read anyway, and
/// frames larger than this are still assembled whole (the frame limit is
/// what bounds them).
const WS_READ_BUFFER: usize = 16 * 1024;

/// How the listener treats new connections.
#[derive(Debug, Clone)]
pub struct ListenerSettings {
    /// Longest time for the TLS handshake and the WebSocket upgrade together.
    pub handshake_timeout: Duration,
    /// Handshakes in progress at once.
    pub max_concurrent_handshakes: usize,
}

/// Accepts agents until `shutdown`, then waits for every session to end.
pub async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    shared: Arc<SessionShared>,
    settings: ListenerSettings,
    shutdown: CancellationToken,
) {
    let handshakes = Arc::new(Semaphore::new(settings.max_concurrent_handshakes.max(1)));
    let warnings = Arc::new(WarnBudget::default());
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            Some(joined) = sessions.join_next(), if !sessions.is_empty() => {
                if let Err(error) = joined
                    && error.is_panic()
                {
                    tracing::error!(%error, "an agent session panicked");
                }
            }
            permit = handshakes.clone().acquire_owned() => {
                let Ok(permit) = permit else { break }; // never closed
                let (tcp, peer) = tokio::select! {
                    () = shutdown.cancelled() => break,
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(error) => {
                            // Usually out of file descriptors; back off a little.
                            tracing::warn!(%error, "accepting a tunnel connection");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                let acceptor = acceptor.clone();
                let shared = shared.clone();
                let settings = settings.clone();
                let shutdown = shutdown.clone();
                let warnings = warnings.clone();
                sessions.spawn(async move {
                    let upgraded = tokio::select! {
                        () = shutdown.cancelled() => return,
                        upgraded = tokio::time::timeout(
                            settings.handshake_timeout,
                            upgrade(tcp, peer, &acceptor, &shared, &warnings),
                        ) => upgraded,
                    };
                    drop(permit);
                    let (ws, identity) = match upgraded {
                        Ok(Some(upgraded)) => upgraded,
                        Ok(None) => return,
                        Err(_) => {
                            failed(&shared, &warnings, peer, handshake_reason::TIMEOUT, "TLS or WebSocket handshake timed out");
                            return;
                        }
                    };
                    session::serve(shared, ws, identity, peer, shutdown).await;
                });
            }
        }
    }
    drop(listener);
    tracing::info!(
        sessions = sessions.len(),
        "tunnel listener closed; ending sessions"
    );
    while let Some(joined) = sessions.join_next().await {
        if let Err(error) = joined
            && error.is_panic()
        {
            tracing::error!(%error, "an agent session panicked");
        }
    }
}

type TunnelStream = tokio_rustls::server::TlsStream<TcpStream>;

/// TLS, identity, WebSocket upgrade. `None` when the connection was refused
/// (already counted and logged).
async fn upgrade(
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: &TlsAcceptor,
    shared: &SessionShared,
    warnings: &WarnBudget,
) -> Option<(tokio_tungstenite::WebSocketStream<TunnelStream>, String)> {
    let _ = tcp.set_nodelay(true);
    let tls = match acceptor.accept(tcp).await {
        Ok(tls) => tls,
        Err(error) => {
            failed(
                shared,
                warnings,
                peer,
                handshake_reason::TLS,
                &error.to_string(),
            );
            return None;
        }
    };
    let identity = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .ok_or(crate::tls::IdentityError::NoCertificate)
        .and_then(cluster_identity);
    let identity = match identity {
        Ok(identity) => identity,
        Err(error) => {
            failed(
                shared,
                warnings,
                peer,
                handshake_reason::NO_IDENTITY,
                &error.to_string(),
            );
            return None;
        }
    };

    let max = shared.limits.max_frame_bytes as usize;
    let config = WebSocketConfig::default()
        .read_buffer_size(WS_READ_BUFFER)
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    match tokio_tungstenite::accept_hdr_async_with_config(tls, check_upgrade, Some(config)).await {
        Ok(ws) => Some((ws, identity)),
        Err(error) => {
            failed(
                shared,
                warnings,
                peer,
                handshake_reason::WEBSOCKET,
                &error.to_string(),
            );
            None
        }
    }
}

/// Accepts only `GET /v1/tunnel` offering subprotocol `uplink.v1`.
#[allow(clippy::result_large_err)] // the signature tungstenite's callback requires
fn check_upgrade(request: &Request, mut response: Response) -> Result<Response, ErrorResponse> {
    if request.uri().path() != TUNNEL_PATH {
        return Err(refusal(
            StatusCode::NOT_FOUND,
            format!("no such endpoint; the tunnel is {TUNNEL_PATH}"),
        ));
    }
    let offered = request
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == SUBPROTOCOL);
    if !offered {
        return Err(refusal(
            StatusCode::BAD_REQUEST,
            format!("the WebSocket subprotocol {SUBPROTOCOL} is required"),
        ));
    }
    response.headers_mut().insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(SUBPROTOCOL),
    );
    Ok(response)
}

fn refusal(status: StatusCode, message: String) -> ErrorResponse {
    let mut response = ErrorResponse::new(Some(message));
    *response.status_mut() = status;
    response
}

fn failed(
    shared: &SessionShared,
    warnings: &WarnBudget,
    peer: SocketAddr,
    reason: &'static str,
    error: &str,
) {
    shared
        .metrics
        .handshake_failures
        .with_label_values(&[reason])
        .inc();
    if let Some(suppressed) = warnings.allow() {
        tracing::warn!(%peer, reason, %error, suppressed, "tunnel handshake failed");
    }
}

/// Lets at most [`WarnBudget::PER_SECOND`] handshake warnings through per
/// second, so a scanner or a misconfigured fleet cannot flood the log; the
/// next warning says how many were left out (the metric counts them all).
#[derive(Debug, Default)]
struct WarnBudget {
    state: Mutex<WarnWindow>,
}

#[derive(Debug, Default)]
struct WarnWindow {
    started: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

impl WarnBudget {
    const PER_SECOND: u32 = 10;

    /// `Some(warnings left out since the last one)` when this one may be logged.
    fn allow(&self) -> Option<u64> {
        let mut window = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if window
            .started
            .is_none_or(|started| now.duration_since(started) >= Duration::from_secs(1))
        {
            window.started = Some(now);
            window.logged = 0;
        }
        if window.logged < Self::PER_SECOND {
            window.logged += 1;
            Some(std::mem::take(&mut window.suppressed))
        } else {
            window.suppressed += 1;
            None
        }
    }
}
