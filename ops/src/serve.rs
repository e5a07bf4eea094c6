//! The HTTP accept loop both binaries serve `/metrics` and the health probes
//! from (the hub its API too): a cap on open connections (past it a new one
//! is closed unanswered and counted), a deadline for request headers, and a
//! graceful shutdown that lets open requests finish. What a connection
//! answers is the caller's: it passes a handler per accepted connection,
//! which usually ends in [`connection`].

use std::error::Error as StdError;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper::service::HttpService;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{IntCounter, IntGauge};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How one listener serves.
#[derive(Debug, Clone)]
pub struct Serving {
    /// Connections served at once; past it new ones are closed unanswered
    /// (a client holding many open cannot grow the process; probes and
    /// scrapes retry).
    pub max_connections: usize,
    /// Longest time a client may take to send its request headers.
    pub header_timeout: Duration,
    /// After `stop`, how long open connections may take to finish their
    /// current request; `None` waits for them all.
    pub drain_timeout: Option<Duration>,
    /// Open connections, counted while they live.
    pub open: IntGauge,
    /// Connections closed unanswered past `max_connections`.
    pub refused: IntCounter,
}

/// Accepts connections until `stop`, each served by `handle` on its own
/// task; then stops accepting and waits for open connections (see
/// [`Serving::drain_timeout`]). `on_refused` is told of each connection
/// closed past the cap (after it is counted), to log it.
pub async fn accept<H, F>(
    listener: TcpListener,
    serving: Serving,
    stop: CancellationToken,
    mut on_refused: impl FnMut(SocketAddr, usize),
    mut handle: H,
) where
    H: FnMut(TcpStream, SocketAddr) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let mut connections = JoinSet::new();
    loop {
        let (tcp, peer) = tokio::select! {
            () = stop.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Usually out of file descriptors: wait instead of spinning.
                    tracing::warn!(%error, "accepting an HTTP connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        while connections.try_join_next().is_some() {}
        if connections.len() >= serving.max_connections {
            drop(tcp);
            serving.refused.inc();
            on_refused(peer, serving.max_connections);
            continue;
        }
        let open = OpenConnection::new(&serving.open);
        let served = handle(tcp, peer);
        connections.spawn(async move {
            let _open = open;
            served.await;
        });
    }
    drop(listener);
    let drained = async { while connections.join_next().await.is_some() {} };
    match serving.drain_timeout {
        None => drained.await,
        Some(limit) => {
            if tokio::time::timeout(limit, drained).await.is_err() {
                tracing::debug!(
                    open = connections.len(),
                    "HTTP connections still open after the drain timeout"
                );
            }
        }
    }
}

/// One connection counted in [`Serving::open`] while it lives.
#[derive(Debug)]
struct OpenConnection(IntGauge);

impl OpenConnection {
    fn new(gauge: &IntGauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Serves one connection's HTTP/1 requests with `service` until the client
/// closes it or `stop`, after which the request in progress finishes.
pub async fn connection<S, Svc, B>(
    io: S,
    service: Svc,
    header_timeout: Duration,
    stop: &CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    Svc: HttpService<Incoming, ResBody = B>,
    Svc::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: Body + 'static,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let connection = builder.serve_connection(TokioIo::new(io), service);
    let mut connection = std::pin::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, "HTTP connection ended with an error");
    }
}

/// A plain-text answer.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests;
