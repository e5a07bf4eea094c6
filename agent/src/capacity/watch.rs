//! The collector's watches: nodes, pods and namespaces (for their locators),
//! each a kube watcher task applying its events straight into the shared
//! [`super::Collector`] (one lock per event; a pod event holds it for one pod's
//! arithmetic, microseconds, so a heartbeat never waits long). Nothing is
//! queued between a watch and the collector: the watch stream is the
//! bound.
//!
//! Plus the usage poller: `metrics.k8s.io/v1beta1` node metrics every
//! [`USAGE_INTERVAL`], summed; any failure (the API is not installed, 404,
//! or does not answer) makes the usage unknown, never zero.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::PartialObjectMeta;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uplink_protocol::ResourceAmounts;

use super::collector::{CapacityWatch, SharedCollector, lock};
use super::node::NodeShare;
use super::quantity::Quantity;
use crate::mapping::NAMESPACE_LOCATOR;
use crate::metrics::Metrics;

/// How often node usage is read from `metrics.k8s.io`.
pub const USAGE_INTERVAL: Duration = Duration::from_secs(30);

/// Starts the capacity watches and the usage poller on `tasks`; they end
/// when `stop` is cancelled.
pub fn spawn(
    client: Client,
    collector: SharedCollector,
    metrics: Metrics,
    tasks: &mut JoinSet<()>,
    stop: CancellationToken,
) {
    tasks.spawn(watch_nodes(
        client.clone(),
        collector.clone(),
        metrics.clone(),
        stop.clone(),
    ));
    tasks.spawn(watch_pods(
        client.clone(),
        collector.clone(),
        metrics.clone(),
        stop.clone(),
    ));
    tasks.spawn(watch_namespaces(
        client.clone(),
        collector.clone(),
        metrics,
        stop.clone(),
    ));
    tasks.spawn(poll_usage(client, collector, stop));
}

/// What one watcher event means to the collector, for any object type.
enum Step<K> {
    Restarted,
    Applied(K),
    Deleted(K),
    Listed,
    Failed(String),
}

/// Runs a watcher on `api`, handing each step to `apply` until stopped.
async fn run_watch<K>(
    api: Api<K>,
    watch: CapacityWatch,
    collector: SharedCollector,
    metrics: Metrics,
    stop: CancellationToken,
    mut apply: impl FnMut(&SharedCollector, Step<K>),
) where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    let mut stream = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
    let label = [watch.name()];
    loop {
        let next = tokio::select! {
            () = stop.cancelled() => return,
            next = stream.next() => next,
        };
        let step = match next {
            None => return,
            Some(Ok(watcher::Event::Init)) => Step::Restarted,
            Some(Ok(watcher::Event::InitDone)) => {
                metrics.watch_ready.with_label_values(&label).set(1);
                Step::Listed
            }
            Some(Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o))) => Step::Applied(o),
            Some(Ok(watcher::Event::Delete(o))) => Step::Deleted(o),
            Some(Err(e)) => {
                tracing::warn!(watch = watch.name(), error = %e, "capacity watch failed; retrying");
                metrics.watch_errors.with_label_values(&label).inc();
                Step::Failed(e.to_string())
            }
        };
        metrics.watch_events.with_label_values(&label).inc();
        apply(&collector, step);
    }
}

async fn watch_nodes(
    client: Client,
    collector: SharedCollector,
    metrics: Metrics,
    stop: CancellationToken,
) {
    let watch = CapacityWatch::Nodes;
    run_watch(
        Api::<Node>::all(client),
        watch,
        collector,
        metrics,
        stop,
        |collector, step| match step {
            Step::Applied(node) => {
                let name = node.metadata.name.clone().unwrap_or_default();
                let (share, error) = NodeShare::of(&node);
                let mut c = lock(collector);
                if let Some(error) = error {
                    tracing::warn!(node = %name, %error, "malformed quantity counted as zero");
                }
                c.node_share(&name, share);
            }
            Step::Deleted(node) => {
                lock(collector).node_deleted(node.metadata.name.as_deref().unwrap_or_default());
            }
            other => common(collector, watch, other),
        },
    )
    .await;
}

async fn watch_pods(
    client: Client,
    collector: SharedCollector,
    metrics: Metrics,
    stop: CancellationToken,
) {
    let watch = CapacityWatch::Pods;
    run_watch(
        Api::<Pod>::all(client),
        watch,
        collector,
        metrics,
        stop,
        |collector, step| match step {
            Step::Applied(pod) => lock(collector).pod_applied(&pod),
            Step::Deleted(pod) => lock(collector).pod_deleted(
                pod.metadata.namespace.as_deref().unwrap_or_default(),
                pod.metadata.name.as_deref().unwrap_or_default(),
            ),
            other => common(collector, watch, other),
        },
    )
    .await;
}

async fn watch_namespaces(
    client: Client,
    collector: SharedCollector,
    metrics: Metrics,
    stop: CancellationToken,
) {
    let watch = CapacityWatch::Namespaces;
    // Metadata only: the locator is an annotation.
    run_watch(
        Api::<PartialObjectMeta<Namespace>>::all(client),
        watch,
        collector,
        metrics,
        stop,
        |collector, step| match step {
            Step::Applied(ns) => {
                let locator = ns
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(NAMESPACE_LOCATOR))
                    .map(String::as_str);
                lock(collector)
                    .namespace_applied(ns.metadata.name.as_deref().unwrap_or_default(), locator);
            }
            Step::Deleted(ns) => {
                lock(collector).namespace_deleted(ns.metadata.name.as_deref().unwrap_or_default());
            }
            other => common(collector, watch, other),
        },
    )
    .await;
}

fn common<K>(collector: &SharedCollector, watch: CapacityWatch, step: Step<K>) {
    let mut c = lock(collector);
    match step {
        Step::Restarted => c.restarted(watch),
        Step::Listed => c.listed(watch),
        Step::Failed(error) => c.failed(watch, error),
        Step::Applied(_) | Step::Deleted(_) => {}
    }
}

/// Reads node usage every [`USAGE_INTERVAL`] until `stop`.
async fn poll_usage(client: Client, collector: SharedCollector, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(USAGE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_known = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let usage = tokio::select! {
            () = stop.cancelled() => return,
            usage = node_usage(&client) => usage,
        };
        let known = usage.is_ok();
        match (&usage, was_known) {
            (Err(error), None | Some(true)) => {
                tracing::info!(%error, "node usage unknown (metrics.k8s.io does not answer)");
            }
            (Ok(_), None | Some(false)) => tracing::info!("node usage from metrics.k8s.io"),
            _ => {}
        }
        was_known = Some(known);
        lock(&collector).set_usage(usage.ok());
    }
}

/// Sum of `metrics.k8s.io/v1beta1` node usage (CPU and memory).
async fn node_usage(client: &Client) -> Result<ResourceAmounts, String> {
    let request = http::Request::get("/apis/metrics.k8s.io/v1beta1/nodes")
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    let list: serde_json::Value = client.request(request).await.map_err(|e| e.to_string())?;
    let items = list
        .get("items")
        .and_then(serde_json::Value::as_array)
        .ok_or("the node metrics list has no items")?;
    let mut cpu_nano: i128 = 0;
    let mut memory_nano: i128 = 0;
    for item in items {
        let usage = item.get("usage");
        let read = |name: &str| -> Result<i128, String> {
            match usage
                .and_then(|u| u.get(name))
                .and_then(serde_json::Value::as_str)
            {
                Some(s) => Quantity::parse(s)
                    .map(Quantity::nano)
                    .map_err(|e| e.to_string()),
                None => Ok(0),
            }
        };
        cpu_nano += read("cpu")?;
        memory_nano += read("memory")?;
    }
    let clamp = |v: i128| u64::try_from(v.max(0)).unwrap_or(u64::MAX);
    Ok(ResourceAmounts {
        cpu_millis: clamp(Quantity::from_nano(cpu_nano).milli_ceil()),
        memory_bytes: clamp(Quantity::from_nano(memory_nano).units_ceil()),
        ..ResourceAmounts::default()
    })
}
