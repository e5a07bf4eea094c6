//! Handshakes cannot be starved (issue 15): 2,000 plain TCP connections
//! that never start TLS and 100 that send part of a ClientHello and stall,
//! half of them from the agent's own address (127.0.0.1) and half spread
//! over 20 other loopback addresses, held open, while more keep arriving
//! from 127.0.0.1 at about 200 a second. A legitimate agent started in the
//! middle of it connects within a few seconds and its status reaches KCP;
//! the hub's pending handshakes stay within their limit, every displaced or
//! timed-out connection is counted by reason, and once the flood stops the
//! TLS deadline closes what is left.
//!
//! The hub runs with its default per-source limit (32) and TLS deadline
//! shortened to 2 s; its total limit is lowered to 256 so that the flood's
//! 21 addresses (21 × 32 = 672 pending at most) exercise it too.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use serde_json::json;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use uplink_tests::fleet::{
    Fleet, SCENARIO_TIMEOUT, STATUS_DEADLINE, bounded, deployment, eventually,
};
use uplink_tests::flood::{idle, raise_fd_limit, spread_source, stalled_client_hello};

const WORKSPACE: &str = "root:org:team-a";
/// Idle connections held open.
const IDLE: usize = 2_000;
/// Connections that stall in the middle of a ClientHello, held open.
const STALLED: usize = 100;
/// Other loopback addresses the flood comes from, besides 127.0.0.1.
const OTHER_SOURCES: u8 = 20;
/// The hub's limit on connections in their TLS handshake, all sources.
const MAX_TLS_HANDSHAKES: usize = 256;
/// The hub's TLS deadline in this test.
const TLS_DEADLINE: Duration = Duration::from_secs(2);
/// "Within a few seconds".
const AGENT_WITHIN: Duration = Duration::from_secs(5);
/// How often the sustained part of the flood opens another connection.
const CHURN_EVERY: Duration = Duration::from_millis(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_idle_and_stalled_connections_does_not_lock_an_agent_out() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, flood()).await
}

async fn flood() -> Result<()> {
    // Both ends of every connection live in this process.
    let limit = raise_fd_limit(2 * (IDLE + STALLED) as u64 + 2_048)?;
    let mut fleet = Fleet::builder()
        .clusters(["a"])
        .workspaces([WORKSPACE])
        .without_agents()
        .hub_config(|c| {
            c.tls_handshake_timeout = TLS_DEADLINE;
            c.max_tls_handshakes = MAX_TLS_HANDSHAKES;
        })
        .start()
        .await?;
    fleet
        .place(WORKSPACE, "shop", &deployment("web", 1), &["a"])
        .await?;
    let hub = fleet.hub_tunnel_addr();

    let opening = Instant::now();
    let mut held = Vec::with_capacity(IDLE + STALLED);
    for i in 0..IDLE {
        let source = if i % 2 == 0 {
            Ipv4Addr::LOCALHOST
        } else {
            spread_source(i, OTHER_SOURCES)
        };
        held.push(idle(source, hub).await?);
    }
    for i in 0..STALLED {
        let source = if i % 2 == 0 {
            Ipv4Addr::LOCALHOST
        } else {
            spread_source(i, OTHER_SOURCES)
        };
        held.push(stalled_client_hello(source, hub).await?);
    }
    let opened_in = opening.elapsed();
    let stop_churn = CancellationToken::new();
    let churned = Arc::new(AtomicUsize::new(0));
    let churn = tokio::spawn(churn(hub, churned.clone(), stop_churn.clone()));
    eventually(
        STATUS_DEADLINE,
        "the sustained flood to be under way",
        async || {
            let opened = churned.load(Ordering::Relaxed);
            ensure!(opened >= 100, "{opened} opened");
            Ok(())
        },
    )
    .await?;

    let started = Instant::now();
    fleet.spawn_agent("a", fleet.agent_config("a")?).await?;
    fleet.wait_agent_connected("a").await?;
    let took = started.elapsed();
    let metrics = fleet.hub_metrics().await?;
    let counter = |reason: &str| {
        metrics.counter(&format!(
            "uplink_hub_handshake_failures_total{{reason=\"{reason}\"}}"
        ))
    };
    eprintln!(
        "flood: {IDLE} idle + {STALLED} stalled connections opened in {opened_in:?} \
         (descriptor limit {limit}), ~{}/s more from 127.0.0.1; the agent connected \
         {took:?} after it started; displaced so far: {} by the per-source limit, {} by \
         the total limit",
        1_000 / CHURN_EVERY.as_millis(),
        counter("too_many_from_source"),
        counter("too_many_handshakes"),
    );
    ensure!(
        took <= AGENT_WITHIN,
        "the agent needed {took:?} to connect under the flood (limit {AGENT_WITHIN:?})"
    );
    ensure!(
        counter("too_many_from_source") > 0.0 && counter("too_many_handshakes") > 0.0,
        "the flood should have reached both limits:\n{metrics}"
    );
    let pending = metrics.require(r#"uplink_hub_handshakes_in_progress{phase="tls"}"#)?;
    ensure!(
        pending <= MAX_TLS_HANDSHAKES as f64,
        "{pending} connections in their TLS handshake, over the limit of {MAX_TLS_HANDSHAKES}"
    );

    // The agent's session works: its status reaches KCP.
    let status = json!({"observedGeneration": 1, "replicas": 1, "readyReplicas": 1});
    fleet
        .set_status::<Deployment>("a", WORKSPACE, "shop", "web", status.clone())
        .await?;
    eventually(STATUS_DEADLINE, "the agent's status in KCP", async || {
        let seen = fleet
            .upstream_status::<Deployment>(WORKSPACE, "shop", "web")
            .await?;
        ensure!(seen.as_ref() == Some(&status), "KCP holds {seen:?}");
        Ok(())
    })
    .await?;

    // The flood stops (its sockets stay open): the TLS deadline closes the
    // connections still pending, and each is counted.
    stop_churn.cancel();
    let churn_held = churn.await??;
    eventually(
        TLS_DEADLINE * 3,
        "the pending handshakes to time out",
        async || {
            let metrics = fleet.hub_metrics().await?;
            let pending = metrics.require(r#"uplink_hub_handshakes_in_progress{phase="tls"}"#)?;
            let timeouts =
                metrics.counter(r#"uplink_hub_handshake_failures_total{reason="tls_timeout"}"#);
            ensure!(
                pending == 0.0 && timeouts > 0.0,
                "{pending} pending, {timeouts} timed out"
            );
            Ok(())
        },
    )
    .await?;
    eprintln!(
        "flood: {} connections opened by the sustained part",
        churned.load(Ordering::Relaxed)
    );
    drop((held, churn_held));
    fleet.shutdown().await
}

/// Opens an idle connection from 127.0.0.1 every [`CHURN_EVERY`] until
/// `stop`, holding the newest 64 (the hub keeps at most 32 per source
/// anyway), counting them in `opened`; returns the ones it still holds.
async fn churn(
    hub: SocketAddr,
    opened: Arc<AtomicUsize>,
    stop: CancellationToken,
) -> Result<VecDeque<TcpStream>> {
    let mut held = VecDeque::new();
    let mut tick = tokio::time::interval(CHURN_EVERY);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        held.push_back(idle(Ipv4Addr::LOCALHOST, hub).await?);
        opened.fetch_add(1, Ordering::Relaxed);
        if held.len() > 64 {
            held.pop_front();
        }
    }
    // Still held: the TLS deadline, not the client, must close them.
    Ok(held)
}
