//! Many agents lose the hub at the same moment (it shuts down and tells
//! them `Bye`). Their first reconnect attempts must spread out over the
//! backoff's jitter window (full jitter: uniform in `[0, initial]`) instead
//! of arriving together.
//!
//! Each agent reaches the hub through its own [`TcpProxy`], whose log of
//! accepted connections says when that agent tried again. The assertions
//! leave wide margins: 50 uniform draws over 2 s spread over about 1.9 s,
//! and the test asks for 1 s; a machine too busy to schedule cannot make
//! attempts look more spread than they are.

use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use futures::StreamExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uplink_agent::watch::{WatchEvent, WatchId};
use uplink_agent::{Agent, AgentConfig, AgentError, ReconnectSettings, ResourceSpec};
use uplink_tests::fleet::proxy::TcpProxy;
use uplink_tests::fleet::{Fleet, bounded, eventually};

const AGENTS: usize = 50;
/// The bound of the first reconnect delay.
const INITIAL: Duration = Duration::from_secs(2);
const WITHIN: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_that_lose_the_hub_together_reconnect_spread_out() -> Result<()> {
    bounded(Duration::from_secs(120), spread()).await
}

struct EdgeAgent {
    proxy: TcpProxy,
    metrics: uplink_agent::metrics::Metrics,
    task: JoinHandle<Result<(), AgentError>>,
}

async fn spread() -> Result<()> {
    let fleet = Fleet::builder()
        .clusters(["a"])
        .heartbeat(Duration::from_secs(1))
        .without_agents()
        .start()
        .await?;
    let stop = CancellationToken::new();
    let mut agents = Vec::new();
    for i in 0..AGENTS {
        let cluster = format!("edge-{i:02}");
        let cert = fleet
            .pki()
            .client_cert(&cluster)
            .context("issuing a client certificate")?;
        let (tls_cert, tls_key) = fleet.write_cert(&cluster, &cert)?;
        let proxy = TcpProxy::start(fleet.hub_tunnel_addr()).await?;
        let config = AgentConfig {
            cluster,
            hub_url: proxy.wss_url(),
            tls_cert,
            tls_key,
            hub_ca: fleet.dir().join("pki/ca.crt"),
            heartbeat_interval: Duration::from_secs(1),
            reconnect: ReconnectSettings {
                initial: INITIAL,
                max: Duration::from_secs(30),
                multiplier: 2.0,
                reset_after: Duration::from_secs(60),
            },
            ..AgentConfig::default()
        };
        let agent = Agent::bind_with_events(config, idle_watches()).await?;
        let metrics = agent.metrics().clone();
        let task = tokio::spawn(agent.run(stop.child_token()));
        agents.push(EdgeAgent {
            proxy,
            metrics,
            task,
        });
    }
    eventually(WITHIN, "every agent to connect", async || {
        let connected = agents
            .iter()
            .filter(|a| a.metrics.connected.get() == 1)
            .count();
        if connected == AGENTS {
            Ok(())
        } else {
            bail!("{connected} of {AGENTS} connected")
        }
    })
    .await?;
    ensure!(
        agents.iter().all(|a| a.proxy.accepted().len() == 1),
        "each agent connected once"
    );

    // The hub goes away (Bye to every agent), and stays away.
    fleet.shutdown().await?;
    let first_attempts = eventually(WITHIN, "every agent to try again", async || {
        let attempts: Vec<_> = agents
            .iter()
            .filter_map(|a| a.proxy.accepted().get(1).copied())
            .collect();
        if attempts.len() == AGENTS {
            Ok(attempts)
        } else {
            bail!("{} of {AGENTS} tried again", attempts.len())
        }
    })
    .await?;

    let (Some(first), Some(last)) = (first_attempts.iter().min(), first_attempts.iter().max())
    else {
        bail!("no attempts");
    };
    let spread = *last - *first;
    ensure!(
        spread >= INITIAL / 2,
        "the first reconnect attempts of {AGENTS} agents spread over only {spread:?}; full jitter over {INITIAL:?} spreads them over about {:?}",
        INITIAL.mul_f64((AGENTS - 1) as f64 / (AGENTS + 1) as f64)
    );
    // No thundering herd: no tenth of the window holds half of the agents.
    let window = INITIAL / 10;
    let crowded = first_attempts
        .iter()
        .map(|start| {
            first_attempts
                .iter()
                .filter(|t| **t >= *start && **t - *start < window)
                .count()
        })
        .max()
        .unwrap_or(0);
    ensure!(
        crowded < AGENTS / 2,
        "{crowded} of {AGENTS} agents tried again within {window:?} of each other"
    );

    stop.cancel();
    for agent in agents {
        agent.task.await.context("an agent panicked")??;
    }
    Ok(())
}

/// Watches that list nothing and stay open.
fn idle_watches() -> impl futures::Stream<Item = WatchEvent> + Send + 'static {
    let resource = WatchId::Resource(ResourceSpec::deployments());
    futures::stream::iter([
        WatchEvent::Restarted(WatchId::Namespaces),
        WatchEvent::Listed(WatchId::Namespaces),
        WatchEvent::Restarted(resource.clone()),
        WatchEvent::Listed(resource),
    ])
    .chain(futures::stream::pending())
}
