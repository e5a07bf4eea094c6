//! The hub is unreachable while 100 000 status changes hit 10 000 objects.
//! The agent keeps one outbox entry per object (latest state wins), so its
//! memory stays flat however long the outage; past `--outbox-limit` it says
//! so in a metric and still keeps the newest state. Once the hub is back,
//! it sends no more than one entry per object.
//!
//! The changes are fed straight into the agent's pipeline
//! ([`Agent::bind_with_events`]): everything from the watch events onward
//! (inventory, extraction, mapping, outbox, session) is the real agent, and
//! an API server would only make the test slower.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use futures::StreamExt;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use uplink_agent::watch::{
    ObservedNamespace, ObservedObject, WatchEvent, WatchId, WatchedResource,
};
use uplink_agent::{Agent, ResourceSpec};
use uplink_tests::fleet::proxy::{LinkMode, TcpProxy};
use uplink_tests::fleet::{Fleet, bounded, eventually};

const TEAM: &str = "root:org:team-a";
const OBJECTS: u64 = 10_000;
const CHANGES: u64 = 100_000;
/// Below the number of objects, so the outage overflows it.
const OUTBOX_LIMIT: usize = 5_000;
const WITHIN: Duration = Duration::from_secs(60);

/// A hang guard, not a speed target: 10,000 KCP objects and 100,000 changes
/// through a debug build took 70 to over 90 s on a 2-core machine under a
/// load average of 5 (parallel builds), past the usual SCENARIO_TIMEOUT.
const OUTAGE_TIMEOUT: Duration = Duration::from_secs(240);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_keeps_the_outbox_flat_and_the_reconnect_sends_one_entry_per_object() -> Result<()>
{
    bounded(OUTAGE_TIMEOUT, outage()).await
}

async fn outage() -> Result<()> {
    let fleet = Fleet::builder()
        .clusters(["a"])
        .workspaces([TEAM])
        .heartbeat(Duration::from_millis(500))
        // The objects exist downstream only in this agent's imagination, and
        // in KCP placed on it; their status is not written (no KCP writes).
        .feature_gates("UpstreamSync=false".parse().context("feature gates")?)
        .without_agents()
        .start()
        .await?;
    fleet
        .create_upstream_deployments(TEAM, "shop", (0..OBJECTS).map(|i| format!("app-{i}")), "a")
        .await?;
    // The hub is unreachable: every connection is closed at once.
    let proxy = TcpProxy::start(fleet.hub_tunnel_addr()).await?;
    proxy.set_mode(LinkMode::Refuse);

    let mut config = fleet.agent_config("a")?;
    config.hub_url = proxy.wss_url();
    config.outbox_limit = OUTBOX_LIMIT;
    let agent = Agent::bind_with_events(config, changes()).await?;
    let metrics = agent.metrics().clone();
    let stop = CancellationToken::new();
    let task = tokio::spawn(agent.run(stop.clone()));

    // Sample the outbox while the changes flow in.
    let watch = WatchId::Resource(ResourceSpec::deployments()).to_string();
    let mut largest = 0i64;
    eventually(
        WITHIN,
        "every change to pass through the pipeline",
        async || {
            largest = largest.max(metrics.outbox_entries.get());
            let seen = metrics
                .watch_events
                .with_label_values(&[watch.as_str()])
                .get();
            if seen >= CHANGES {
                Ok(())
            } else {
                bail!("{seen} changes seen")
            }
        },
    )
    .await?;
    largest = largest.max(metrics.outbox_entries.get());
    ensure!(
        metrics.connected.get() == 0,
        "the hub was supposed to be unreachable"
    );
    ensure!(
        largest <= OBJECTS as i64,
        "the outbox held {largest} entries for {OBJECTS} objects: it grows with changes"
    );
    ensure!(
        metrics.outbox_entries.get() == OBJECTS as i64,
        "every object's latest state waits: {} entries",
        metrics.outbox_entries.get()
    );
    ensure!(
        metrics.outbox_objects.get() <= OBJECTS as i64,
        "the outbox remembers {} objects",
        metrics.outbox_objects.get()
    );
    ensure!(
        metrics.outbox_overflow.get() > 0,
        "past --outbox-limit the overflow is counted"
    );

    // The hub is back.
    proxy.set_mode(LinkMode::Forward);
    eventually(
        WITHIN,
        "the hub to hold every object and ack it",
        async || {
            let stored = fleet.hub_store().cluster_objects("a") as u64;
            let pending = metrics.outbox_entries.get();
            if stored == OBJECTS && pending == 0 {
                Ok(())
            } else {
                bail!("the hub stores {stored} objects, the agent waits for {pending} acks")
            }
        },
    )
    .await?;
    let hub = fleet.hub_metrics().await?;
    let received = hub.counter("uplink_hub_deltas_received_total{cluster=\"a\"}");
    ensure!(
        received <= OBJECTS as f64,
        "the hub received {received} deltas for {OBJECTS} objects after {CHANGES} changes"
    );
    let sent = metrics.deltas_sent.get() + metrics.snapshot_objects.get();
    ensure!(
        sent <= OBJECTS,
        "the agent sent {sent} entries for {OBJECTS} objects"
    );

    stop.cancel();
    task.await.context("the agent panicked")??;
    fleet.shutdown().await
}

/// A namespace mapped to KCP, then `CHANGES` status changes round-robin over
/// `OBJECTS` Deployments, then nothing (the watches stay open).
fn changes() -> impl futures::Stream<Item = WatchEvent> + Send + 'static {
    let spec = ResourceSpec::deployments();
    let resource = Arc::new(WatchedResource {
        spec: spec.clone(),
        kind: "Deployment".into(),
        namespaced: true,
        upsync: false,
    });
    let namespace = "kcp-outage";
    let locator = json!({ "cluster": TEAM, "namespace": "shop" }).to_string();
    let start = futures::stream::iter([
        WatchEvent::Restarted(WatchId::Namespaces),
        WatchEvent::NamespaceApplied(ObservedNamespace {
            name: namespace.into(),
            locator: Some(locator),
        }),
        WatchEvent::Listed(WatchId::Namespaces),
        WatchEvent::Restarted(WatchId::Resource(spec.clone())),
        WatchEvent::Listed(WatchId::Resource(spec)),
    ]);
    let updates = futures::stream::iter(0..CHANGES).map(move |i| {
        let object = i % OBJECTS;
        WatchEvent::Applied(ObservedObject {
            resource: resource.clone(),
            namespace: Some(namespace.into()),
            name: format!("app-{object}"),
            uid: format!("uid-{object}"),
            generation: Some(1),
            status: json!({"observedGeneration": 1, "replicas": 10, "readyReplicas": i / OBJECTS}),
            upsync: None,
        })
    });
    start.chain(updates).chain(futures::stream::pending())
}
