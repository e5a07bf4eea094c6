//! Connections that are not sessions yet: the TLS deadline, the limits per
//! source, in total and per cluster (a full limit closes the oldest pending
//! connection), the Hello deadline, and their metrics.

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use support::{End, TestHub, eventually};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};
use uplink_protocol::{ErrorCode, HubFrame, close};

/// A plain TCP connection to `hub` from `source` (any address of 127/8 on
/// Linux) that never starts TLS.
async fn idle(hub: SocketAddr, source: Ipv4Addr) -> Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket
        .bind(SocketAddr::from((source, 0)))
        .with_context(|| format!("binding a client socket to {source}"))?;
    Ok(socket.connect(hub).await?)
}

/// Whether the hub closed `tcp` within `within`.
async fn closed_within(tcp: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(within, tcp.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

fn failures(hub: &TestHub, reason: &str) -> u64 {
    hub.metrics
        .handshake_failures
        .with_label_values(&[reason])
        .get()
}

fn in_progress(hub: &TestHub, phase: &str) -> i64 {
    hub.metrics
        .handshakes_in_progress
        .with_label_values(&[phase])
        .get()
}

fn is_welcome(frame: &HubFrame) -> bool {
    matches!(frame, HubFrame::Welcome(_))
}

#[tokio::test]
async fn a_connection_that_never_starts_tls_is_closed_at_the_tls_deadline() -> Result<()> {
    let hub = TestHub::start_with(|c| c.tls_handshake_timeout = Duration::from_millis(300)).await?;
    let started = Instant::now();
    let mut silent = idle(hub.tunnel, Ipv4Addr::LOCALHOST).await?;
    eventually(
        "the silent connection to be counted in its TLS phase",
        || in_progress(&hub, "tls") == 1,
    )
    .await?;
    ensure!(
        closed_within(&mut silent, Duration::from_secs(5)).await,
        "the hub kept a connection that never started TLS for 5 s"
    );
    let took = started.elapsed();
    ensure!(
        took >= Duration::from_millis(250),
        "closed after {took:?}, before the deadline"
    );
    eventually("the TLS timeout to be counted", || {
        failures(&hub, "tls_timeout") == 1 && in_progress(&hub, "tls") == 0
    })
    .await?;
    hub.stop().await
}

#[tokio::test]
async fn stalled_connections_displace_only_each_other_never_an_agent() -> Result<()> {
    let hub = TestHub::start_with(|c| {
        c.max_tls_handshakes = 8;
        c.max_tls_handshakes_per_source = 4;
    })
    .await?;
    // 20 from the agent's own address: only the newest 4 stay.
    let mut same_source = Vec::new();
    for _ in 0..20 {
        same_source.push(idle(hub.tunnel, Ipv4Addr::LOCALHOST).await?);
    }
    eventually("16 displaced by newer ones from the same source", || {
        failures(&hub, "too_many_from_source") == 16
    })
    .await?;
    for (i, tcp) in same_source.iter_mut().enumerate() {
        let closed =
            closed_within(tcp, Duration::from_millis(if i < 16 { 5000 } else { 50 })).await;
        ensure!(
            closed == (i < 16),
            "connection {i} of 20 closed: {closed} (only the oldest 16 should be)"
        );
    }
    // 4 each from three other sources: the total (8) displaces the oldest.
    let mut others = Vec::new();
    for source in 2..=4 {
        for _ in 0..4 {
            others.push(idle(hub.tunnel, Ipv4Addr::new(127, 0, 0, source)).await?);
        }
    }
    eventually("the total limit to displace the oldest", || {
        failures(&hub, "too_many_handshakes") == 8 && in_progress(&hub, "tls") == 8
    })
    .await?;

    // An agent from the flooded address still gets in at once.
    let mut agent = hub.connect(&hub.pki.client("edge-1")?).await?;
    let frame = agent.hello("edge-1", "s", None, 0).await?;
    ensure!(is_welcome(&frame), "expected Welcome, got {frame:?}");
    ensure!(in_progress(&hub, "tls") <= 8, "the TLS gate overflowed");
    drop((agent, same_source, others));
    hub.stop().await
}

#[tokio::test]
async fn connections_waiting_for_hello_are_limited_per_cluster_and_have_a_deadline() -> Result<()> {
    let hub = TestHub::start_with(|c| {
        c.max_awaiting_hello_per_cluster = 1;
        c.tls_handshake_timeout = Duration::from_millis(500);
        c.handshake_timeout = Duration::from_secs(1);
    })
    .await?;
    let identity = hub.pki.client("edge-1")?;
    // A holder of the cluster's certificate that never says Hello ...
    let mut squatter = hub.connect(&identity).await?;
    eventually("the squatter to wait for its Hello", || {
        in_progress(&hub, "hello") == 1
    })
    .await?;
    // ... is displaced by the cluster's next connection, which says Hello.
    let mut agent = hub.connect(&identity).await?;
    let frame = agent.hello("edge-1", "s", None, 0).await?;
    ensure!(is_welcome(&frame), "expected Welcome, got {frame:?}");
    // Told why before the close.
    match squatter.recv().await? {
        HubFrame::Error(error) if error.code == ErrorCode::LimitExceeded => {}
        other => bail!("expected an Error saying why, got {other:?}"),
    }
    match squatter.end().await? {
        End::Closed(Some(code)) if code == close::POLICY_VIOLATION => {}
        other => bail!("the displaced connection ended with {other:?}"),
    }
    ensure!(failures(&hub, "too_many_for_cluster") == 1);

    // Another cluster's connection without Hello is closed at the deadline.
    let mut silent = hub.connect(&hub.pki.client("edge-2")?).await?;
    let started = Instant::now();
    match silent.recv().await? {
        HubFrame::Error(error) if error.code == ErrorCode::LimitExceeded => {}
        other => bail!("expected an Error saying why, got {other:?}"),
    }
    match silent.end().await? {
        End::Closed(Some(code)) if code == close::POLICY_VIOLATION => {}
        other => bail!("the silent connection ended with {other:?}"),
    }
    ensure!(
        started.elapsed() < Duration::from_secs(3),
        "closed only after {:?}",
        started.elapsed()
    );
    eventually("the Hello timeout to be counted", || {
        failures(&hub, "hello_timeout") == 1 && in_progress(&hub, "hello") == 0
    })
    .await?;
    drop(agent);
    hub.stop().await
}
