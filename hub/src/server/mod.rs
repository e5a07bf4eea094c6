//! The tunnel listener: accepts TCP connections, completes the TLS handshake
//! (client certificate required) and the WebSocket upgrade on `/v1/tunnel`
//! with subprotocol `uplink.v1`, then hands each connection to a session.
//!
//! The accept loop never waits on a peer: each accepted connection is
//! counted by [`admission`] and handed to its own task at once. That task
//! must finish TLS within [`ListenerSettings::tls_handshake_timeout`], and
//! the agent's `Hello` must arrive within
//! [`ListenerSettings::handshake_timeout`] of the accept. How many
//! connections may be in their TLS handshake (in total, per source address)
//! and how many may wait for their `Hello` (in total, per cluster) is
//! bounded; a full limit closes the oldest such connection, so idle or
//! stalled connections cannot lock agents out. Every closed connection is
//! counted in `uplink_hub_handshake_failures_total{reason}` and logged
//! within a budget. Every task is tracked; on shutdown the listener stops
//! accepting and waits for the sessions to say goodbye.

mod admission;
pub(crate) mod warn;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, StatusCode, header};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use uplink_protocol::{SUBPROTOCOL, TUNNEL_PATH};

pub use self::admission::{Displaced, Gate, Slot, Source};
use self::warn::WarnBudget;
use crate::metrics::{handshake_phase, handshake_reason};
use crate::session::{self, HelloWait, SessionShared};
use crate::tls::cluster_identity;
use crate::tls::reload::ServerTls;

/// Each connection's WebSocket read buffer, allocated and zeroed up front,
/// so held by every idle agent. tungstenite's default is 128 KiB (1.25 GiB
/// for 10,000 agents); 16 KiB was still the largest per-agent cost.
/// Heartbeats fit in 4 KiB, and a larger frame is assembled whole in a
/// buffer grown to its size (the frame limit bounds it), so a small buffer
/// costs only more reads of the TLS stream: ingest's CPU per delta did not
/// move (bench ingest, side by side).
const WS_READ_BUFFER: usize = 4 * 1024;

/// A connection's place among those waiting for their `Hello`.
pub type HelloSlot = Slot<String>;

/// How the listener treats new connections.
#[derive(Debug, Clone)]
pub struct ListenerSettings {
    /// Longest time from accept to a finished TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// Longest time from accept to the agent's `Hello`.
    pub handshake_timeout: Duration,
    /// Connections in their TLS handshake at once, all sources.
    pub max_tls_handshakes: usize,
    /// Connections in their TLS handshake at once from one source address
    /// (IPv6: one /64).
    pub max_tls_handshakes_per_source: usize,
    /// Connections past TLS waiting for their `Hello`, all clusters.
    pub max_awaiting_hello: usize,
    /// Connections past TLS waiting for their `Hello`, per cluster.
    pub max_awaiting_hello_per_cluster: usize,
}

/// What every connection task of one listener shares.
struct Listener {
    /// The TLS configuration, read at each accept: a rotated certificate
    /// serves the next handshake.
    certificates: Arc<ServerTls>,
    shared: Arc<SessionShared>,
    settings: ListenerSettings,
    tls: Arc<Gate<Source>>,
    hello: Arc<Gate<String>>,
    warnings: WarnBudget,
}

/// Accepts agents until `shutdown`, then waits for every session to end.
pub async fn serve(
    listener: TcpListener,
    certificates: Arc<ServerTls>,
    shared: Arc<SessionShared>,
    settings: ListenerSettings,
    shutdown: CancellationToken,
) {
    let in_progress = &shared.metrics.handshakes_in_progress;
    let tls = Gate::new(
        settings.max_tls_handshakes,
        settings.max_tls_handshakes_per_source,
        handshake_reason::TOO_MANY_HANDSHAKES,
        handshake_reason::TOO_MANY_FROM_SOURCE,
        in_progress.with_label_values(&[handshake_phase::TLS]),
    );
    let hello = Gate::new(
        settings.max_awaiting_hello,
        settings.max_awaiting_hello_per_cluster,
        handshake_reason::TOO_MANY_AWAITING_HELLO,
        handshake_reason::TOO_MANY_FOR_CLUSTER,
        in_progress.with_label_values(&[handshake_phase::HELLO]),
    );
    let this = Arc::new(Listener {
        certificates,
        shared: shared.clone(),
        settings,
        tls,
        hello,
        warnings: WarnBudget::default(),
    });
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
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Usually out of file descriptors; back off a little.
                        tracing::warn!(%error, "accepting a tunnel connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let accepted_at = Instant::now();
                let (slot, displaced) = this.tls.enter(Source::of(peer), peer);
                if let Some(displaced) = displaced {
                    this.displaced(&displaced);
                }
                sessions.spawn(this.clone().connection(tcp, peer, accepted_at, slot, shutdown.clone()));
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

impl Listener {
    /// One connection from accept to the end of its session: TLS within
    /// its deadline, identity, WebSocket upgrade and `Hello` within the
    /// handshake deadline; each phase counted by its gate.
    ///
    /// Each phase runs in its own boxed future, freed when the phase ends:
    /// a spawned task keeps the size of its largest state for its whole
    /// life, and with the handshakes and the session inline that was
    /// 18 KiB or more per connection, held by every idle agent.
    async fn connection(
        self: Arc<Self>,
        tcp: TcpStream,
        peer: SocketAddr,
        accepted_at: Instant,
        tls_slot: Slot<Source>,
        shutdown: CancellationToken,
    ) {
        let _ = tcp.set_nodelay(true);
        let deadline = accepted_at + self.settings.handshake_timeout;
        let tls_deadline = deadline.min(accepted_at + self.settings.tls_handshake_timeout);
        let tls = tokio::select! {
            () = shutdown.cancelled() => return,
            () = tls_slot.displaced() => return,
            tls = tokio::time::timeout_at(tls_deadline, Box::pin(self.certificates.acceptor().accept(tcp))) => tls,
        };
        drop(tls_slot);
        let tls = match tls {
            Ok(Ok(tls)) => tls,
            Ok(Err(error)) => {
                self.failed(peer, handshake_reason::TLS, &error.to_string());
                return;
            }
            Err(_) => {
                self.failed(
                    peer,
                    handshake_reason::TLS_TIMEOUT,
                    "no finished TLS handshake in time",
                );
                return;
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
                self.failed(peer, handshake_reason::NO_IDENTITY, &error.to_string());
                // Told why over HTTP, as any refused upgrade is; within the
                // handshake deadline, in no gate (its CA is one we trust).
                let message = format!("the client certificate names no cluster: {error}");
                #[allow(clippy::result_large_err)] // the signature tungstenite's callback requires
                let refuse =
                    |_: &Request, _: Response| Err(refusal(StatusCode::FORBIDDEN, message));
                let _ = tokio::time::timeout_at(
                    deadline,
                    Box::pin(tokio_tungstenite::accept_hdr_async(tls, refuse)),
                )
                .await;
                return;
            }
        };

        let (hello_slot, displaced) = self.hello.enter(identity.clone(), peer);
        if let Some(displaced) = displaced {
            self.displaced(&displaced);
        }
        let ws = tokio::select! {
            () = shutdown.cancelled() => return,
            () = hello_slot.displaced() => return,
            ws = tokio::time::timeout_at(deadline, Box::pin(self.upgrade(tls))) => ws,
        };
        let ws = match ws {
            Ok(Ok(ws)) => ws,
            Ok(Err(error)) => {
                self.failed(peer, handshake_reason::WEBSOCKET, &error.to_string());
                return;
            }
            Err(_) => {
                self.failed(
                    peer,
                    handshake_reason::HELLO_TIMEOUT,
                    "no WebSocket upgrade in time",
                );
                return;
            }
        };
        let wait = HelloWait {
            deadline,
            slot: hello_slot,
        };
        Box::pin(session::serve(
            self.shared.clone(),
            ws,
            identity,
            peer,
            wait,
            shutdown,
        ))
        .await;
    }

    /// The WebSocket upgrade on an established TLS connection.
    async fn upgrade(
        &self,
        tls: TunnelStream,
    ) -> Result<WebSocketStream<TunnelStream>, tokio_tungstenite::tungstenite::Error> {
        let max = self.shared.limits.max_frame_bytes as usize;
        let config = WebSocketConfig::default()
            .read_buffer_size(WS_READ_BUFFER)
            .max_message_size(Some(max))
            .max_frame_size(Some(max));
        tokio_tungstenite::accept_hdr_async_with_config(tls, check_upgrade, Some(config)).await
    }

    /// A connection closed to make room for a newer one: counted, and
    /// logged within the budget.
    fn displaced(&self, displaced: &Displaced) {
        self.shared
            .metrics
            .handshake_failures
            .with_label_values(&[displaced.reason])
            .inc();
        if let Some(suppressed) = self.warnings.allow() {
            tracing::warn!(
                peer = %displaced.peer,
                reason = displaced.reason,
                suppressed,
                "closed a pending tunnel connection to make room for a newer one"
            );
        }
    }

    fn failed(&self, peer: SocketAddr, reason: &'static str, error: &str) {
        self.shared
            .metrics
            .handshake_failures
            .with_label_values(&[reason])
            .inc();
        if let Some(suppressed) = self.warnings.allow() {
            tracing::warn!(%peer, reason, %error, suppressed, "tunnel handshake failed");
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
