//! A TCP proxy on loopback between an agent and the hub (or between a hub
//! replica and the API server holding its Leases, [`super::replicas`]), with
//! a switch that cuts the link the way a broken network does: silently.
//!
//! - [`LinkMode::Forward`]: bytes flow both ways.
//! - [`LinkMode::Blackhole`]: nothing is forwarded in either direction and
//!   nothing is closed: established connections and new ones simply go
//!   quiet, as when a middlebox drops every packet (a freeze: what a
//!   network partition looks like to both ends). Bytes already read are
//!   held, not lost, and flow on when forwarding resumes.
//! - [`LinkMode::Refuse`]: new connections are closed right after accept
//!   (a hub that is down); established ones keep forwarding.
//!
//! Every accepted connection is logged with its time, so tests can see when
//! an agent tried to connect. Connections to the target are opened when
//! forwarding (re)starts, so a target that changed ([`TcpProxy::retarget`])
//! applies to every connection that was held.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{Context as _, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

/// What the proxy does with traffic; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkMode {
    Forward,
    Blackhole,
    Refuse,
}

/// A running proxy; stops when dropped.
#[derive(Debug)]
pub struct TcpProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _stop: DropGuard,
}

#[derive(Debug)]
struct Shared {
    target: Mutex<SocketAddr>,
    mode: watch::Sender<LinkMode>,
    accepted: Mutex<Vec<Instant>>,
}

impl TcpProxy {
    /// Listens on `127.0.0.1:0` and forwards to `target`.
    pub async fn start(target: SocketAddr) -> Result<TcpProxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .context("binding the proxy")?;
        let addr = listener.local_addr().context("the proxy's address")?;
        let shared = Arc::new(Shared {
            target: Mutex::new(target),
            mode: watch::Sender::new(LinkMode::Forward),
            accepted: Mutex::default(),
        });
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(listener, shared.clone(), stop.clone()));
        Ok(TcpProxy {
            addr,
            shared,
            _stop: stop.drop_guard(),
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `wss://127.0.0.1:<port>`: a hub URL through this proxy.
    pub fn wss_url(&self) -> String {
        format!("wss://{}", self.addr)
    }

    pub fn set_mode(&self, mode: LinkMode) {
        self.shared.mode.send_replace(mode);
    }

    pub fn mode(&self) -> LinkMode {
        *self.shared.mode.borrow()
    }

    /// Forwards connections opened from now on (and held ones) to `target`.
    pub fn retarget(&self, target: SocketAddr) {
        *self
            .shared
            .target
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = target;
    }

    /// When each connection was accepted, in order.
    pub fn accepted(&self) -> Vec<Instant> {
        self.shared
            .accepted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((client, _)) = accepted else { continue };
        shared
            .accepted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Instant::now());
        if *shared.mode.borrow() == LinkMode::Refuse {
            drop(client);
            continue;
        }
        let shared = shared.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = relay(client, shared) => {}
            }
        });
    }
}

/// Waits until the link forwards (returns `false` if the proxy is gone).
async fn forwarding(mode: &mut watch::Receiver<LinkMode>) -> bool {
    mode.wait_for(|m| *m != LinkMode::Blackhole).await.is_ok()
}

async fn relay(client: TcpStream, shared: Arc<Shared>) {
    let mut mode = shared.mode.subscribe();
    if !forwarding(&mut mode).await {
        return;
    }
    let target = *shared.target.lock().unwrap_or_else(PoisonError::into_inner);
    let Ok(upstream) = TcpStream::connect(target).await else {
        return; // the target is down: the client sees the close
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    let to_upstream = pump(client_read, upstream_write, shared.mode.subscribe());
    let to_client = pump(upstream_read, client_write, shared.mode.subscribe());
    // Each direction ends with its own EOF (a half-close is passed on), so
    // the last frames before a close are not cut off.
    tokio::join!(to_upstream, to_client);
}

/// Copies one direction, holding the bytes while the link is blackholed.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<LinkMode>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if !forwarding(&mut mode).await {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        if !forwarding(&mut mode).await {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
