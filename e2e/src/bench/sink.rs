//! The `ingest` scenario's baseline: the ceiling of the transport itself.
//!
//! [`serve`] is a bare tokio-tungstenite server over the hub's own TLS setup
//! ([`uplink_hub::tls::server_config`]: TLS 1.3, client certificates required)
//! that reads binary messages and throws them away. It runs as its own
//! process (`uplink-e2e bench-sink`, hidden), as the hub does, and prints
//! what it received when it gets SIGTERM.
//!
//! [`blast`] is its load: one connection per simulated cluster, each with the
//! cluster's own client certificate (the agent's TLS setup,
//! [`uplink_agent::tls::client_config`]), sending the same encoded `Deltas`
//! frame over and over as fast as the socket takes it. No session, no acks,
//! no store: what is left is TLS, WebSocket framing and the loopback.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use uplink_protocol::Limits;

/// The line the sink prints once it listens: `<PREFIX><addr>`.
pub const LISTENING: &str = "bench-sink listening on ";
/// The line the sink prints when it stops: `<PREFIX><messages> <bytes>`.
pub const RECEIVED: &str = "bench-sink received ";

/// `uplink-e2e bench-sink`: the baseline server.
#[derive(Debug, Clone, clap::Args)]
pub struct SinkArgs {
    /// Address to listen on; port 0 picks one (printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// PEM serving certificate (the hub's).
    #[arg(long)]
    pub tls_cert: PathBuf,
    /// PEM private key of the serving certificate.
    #[arg(long)]
    pub tls_key: PathBuf,
    /// PEM CA that client certificates must chain to.
    #[arg(long)]
    pub client_ca: PathBuf,
}

/// Serves until SIGTERM or Ctrl-C, then prints the totals.
pub async fn serve(args: SinkArgs) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};

    let tls = uplink_hub::tls::server_config(&args.tls_cert, &args.tls_key, &args.client_ca)?;
    let acceptor = TlsAcceptor::from(tls);
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    println!("{LISTENING}{}", listener.local_addr()?);
    let mut terminate = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let totals = Arc::new(Totals::default());
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = terminate.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            accepted = listener.accept() => {
                let Ok((tcp, _)) = accepted else { continue };
                let (acceptor, totals) = (acceptor.clone(), Arc::clone(&totals));
                connections.spawn(async move {
                    // A connection that fails only stops counting.
                    let _ = discard(acceptor, tcp, &totals).await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.abort_all();
    println!(
        "{RECEIVED}{} {}",
        totals.messages.load(Ordering::Relaxed),
        totals.bytes.load(Ordering::Relaxed)
    );
    Ok(())
}

#[derive(Debug, Default)]
struct Totals {
    messages: AtomicU64,
    bytes: AtomicU64,
}

async fn discard(acceptor: TlsAcceptor, tcp: TcpStream, totals: &Totals) -> anyhow::Result<()> {
    let _ = tcp.set_nodelay(true);
    let tls = acceptor.accept(tcp).await?;
    let max = Limits::default().max_frame_bytes as usize;
    let config = WebSocketConfig::default()
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    let mut ws =
        tokio_tungstenite::accept_hdr_async_with_config(tls, answer_upgrade, Some(config)).await?;
    while let Some(message) = ws.next().await {
        if let Message::Binary(bytes) = message? {
            totals.messages.fetch_add(1, Ordering::Relaxed);
            totals
                .bytes
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// Answers the upgrade as the hub does, with the protocol's subprotocol;
/// nothing is checked.
#[allow(clippy::result_large_err)] // the signature tungstenite's callback requires
fn answer_upgrade(_: &Request, mut response: Response) -> Result<Response, ErrorResponse> {
    response.headers_mut().insert(
        http::header::SEC_WEBSOCKET_PROTOCOL,
        http::HeaderValue::from_static(uplink_protocol::SUBPROTOCOL),
    );
    Ok(response)
}

/// The totals line of a sink's output, `(messages, bytes)`.
pub fn parse_received(output: &str) -> Option<(u64, u64)> {
    let line = output.lines().find_map(|l| l.strip_prefix(RECEIVED))?;
    let mut numbers = line.split_whitespace().map(str::parse::<u64>);
    Some((numbers.next()?.ok()?, numbers.next()?.ok()?))
}

/// The listen address in a sink's output.
pub fn parse_listening(output: &str) -> Option<SocketAddr> {
    output
        .lines()
        .find_map(|l| l.strip_prefix(LISTENING))
        .and_then(|addr| addr.trim().parse().ok())
}

/// One sending connection of [`blast`].
#[derive(Debug, Clone)]
pub struct BlastClient {
    pub cluster: String,
    pub tls: Arc<rustls::ClientConfig>,
}

/// Sends `frame` over one connection per client, as fast as each takes it,
/// until `stop`; returns the messages sent. The clients connect first; the
/// clock the caller reads should start after this returns `Ok` from
/// `connected` (all handshakes done).
pub async fn blast(
    addr: SocketAddr,
    clients: Vec<BlastClient>,
    frame: Bytes,
    run_for: Duration,
) -> anyhow::Result<BlastReport> {
    let mut sockets = Vec::with_capacity(clients.len());
    for client in clients {
        let tcp = TcpStream::connect(addr).await?;
        let _ = tcp.set_nodelay(true);
        // As the agent names a hub given as `wss://<ip>:<port>`.
        let server_name = rustls_pki_types::ServerName::from(addr.ip());
        let tls = TlsConnector::from(client.tls)
            .connect(server_name, tcp)
            .await
            .with_context(|| format!("TLS as {}", client.cluster))?;
        let mut request = format!("wss://{addr}/").into_client_request()?;
        request.headers_mut().insert(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            http::HeaderValue::from_static(uplink_protocol::SUBPROTOCOL),
        );
        let (ws, _) = tokio_tungstenite::client_async(request, tls)
            .await
            .with_context(|| format!("WebSocket handshake as {}", client.cluster))?;
        sockets.push(ws);
    }
    let stop = CancellationToken::new();
    let started = Instant::now();
    let mut senders = JoinSet::new();
    for mut ws in sockets {
        let (frame, stop) = (frame.clone(), stop.clone());
        senders.spawn(async move {
            let mut sent = 0u64;
            while !stop.is_cancelled() {
                if ws.send(Message::Binary(frame.clone())).await.is_err() {
                    break;
                }
                sent += 1;
            }
            let _ = ws.close(None).await;
            sent
        });
    }
    tokio::time::sleep(run_for).await;
    stop.cancel();
    let mut sent = 0;
    while let Some(count) = senders.join_next().await {
        sent += count.context("a sending task failed")?;
    }
    Ok(BlastReport {
        sent,
        elapsed: started.elapsed(),
    })
}

/// What [`blast`] sent, and over how long.
#[derive(Debug, Clone, Copy)]
pub struct BlastReport {
    pub sent: u64,
    pub elapsed: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sink_output_is_read_back() {
        let output = format!("{LISTENING}127.0.0.1:4242\n{RECEIVED}17 9000\n");
        assert_eq!(
            parse_listening(&output),
            Some(SocketAddr::from(([127, 0, 0, 1], 4242)))
        );
        assert_eq!(parse_received(&output), Some((17, 9000)));
        assert_eq!(parse_received("nothing"), None);
    }
}
