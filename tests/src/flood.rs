//! Hostile connections for scenario tests: plain TCP connections that never
//! start TLS, ones that send part of a TLS ClientHello and stall, each from
//! a chosen loopback source address, and the descriptor limit such floods
//! need.

use std::net::{Ipv4Addr, SocketAddr};

use anyhow::{Context as _, Result, ensure};
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

/// The start of a TLS ClientHello: a handshake record header announcing 512
/// bytes, the handshake header (ClientHello, 508 bytes) and the legacy
/// version; the rest never comes, so a server waits for it.
const PARTIAL_CLIENT_HELLO: &[u8] = &[
    0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
];

/// A loopback source address for flood connection `i` of a flood spread
/// over `sources` addresses, none of them 127.0.0.1: Linux answers for all
/// of 127/8, so each is a distinct client address to the hub.
pub fn spread_source(i: usize, sources: u8) -> Ipv4Addr {
    let host = u8::try_from(i % usize::from(sources.max(1))).unwrap_or(0);
    Ipv4Addr::new(127, 0, 0, 2 + host)
}

/// A TCP connection to `to` from `source` (port chosen by the kernel).
pub async fn connect_from(source: Ipv4Addr, to: SocketAddr) -> Result<TcpStream> {
    let socket = TcpSocket::new_v4().context("creating a client socket")?;
    socket
        .bind(SocketAddr::from((source, 0)))
        .with_context(|| format!("binding a client socket to {source}"))?;
    socket
        .connect(to)
        .await
        .with_context(|| format!("connecting from {source} to {to}"))
}

/// A connection that never starts TLS.
pub async fn idle(source: Ipv4Addr, to: SocketAddr) -> Result<TcpStream> {
    connect_from(source, to).await
}

/// A connection that sends the first bytes of a TLS ClientHello and stalls.
pub async fn stalled_client_hello(source: Ipv4Addr, to: SocketAddr) -> Result<TcpStream> {
    let mut tcp = connect_from(source, to).await?;
    tcp.write_all(PARTIAL_CLIENT_HELLO)
        .await
        .context("sending a partial ClientHello")?;
    Ok(tcp)
}

/// Raises this process's soft limit on open descriptors to at least
/// `needed` (the hard limit permitting); returns the new soft limit. A
/// flood test holds both ends of every connection in one process.
pub fn raise_fd_limit(needed: u64) -> Result<u64> {
    let limit = getrlimit(Resource::Nofile);
    let soft = limit.current.unwrap_or(u64::MAX);
    if soft >= needed {
        return Ok(soft);
    }
    let hard = limit.maximum.unwrap_or(u64::MAX);
    ensure!(
        hard >= needed,
        "this test needs {needed} open descriptors, but the hard limit is {hard} (ulimit -Hn)"
    );
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(needed),
            maximum: limit.maximum,
        },
    )
    .with_context(|| format!("raising the soft descriptor limit from {soft} to {needed}"))?;
    Ok(needed)
}
