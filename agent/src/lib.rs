//! Watches the objects KCP placed on one physical cluster and streams their
//! status to the Uplink hub; applies the objects the hub sends down.
//!
//! One status change travels through these modules, in order:
//!
//! 1. [`watch`]: kube watchers (resource types resolved by discovery, plus
//!    namespaces) → plain [`watch::WatchEvent`]s;
//! 2. [`inventory`]: applies each event, using
//! 3. [`extract`]: the status that travels, per kind, and
//! 4. [`mapping`]: downstream → upstream coordinates (namespace locator);
//! 5. [`outbox`]: latest state per object, sequence numbers, acks;
//! 6. [`session`]: one TLS WebSocket connection to the hub, kept up by
//!    [`reconnect`] (with `uplink_ops::backoff`); with a replicated hub,
//!    one per replica ([`replicas`]: `--hub-url` lists them, or a Service
//!    name resolves to them), each sent the entries of the shards its
//!    replica holds ([`routes`]).
//!
//! One placed object travels down (protocol version 2, `--downward-resources`)
//! through:
//!
//! 1. [`session`]'s downward lane: `Downward` batches and downward snapshots
//!    in, `DownwardAck`s out;
//! 2. [`transform`]: the KCP object → the downstream object (namespace
//!    `kcp-<hash>` from [`mapping`], KCP-only metadata removed);
//! 3. [`apply`]: server-side apply (field manager `uplink`) or delete, on
//!    per-session workers, and the sweep after a downward snapshot.
//!
//! The Events about synced objects (protocol version 3) go up through
//! [`watch`] (`events.k8s.io/v1`, once synced), [`inventory`] (which knows
//! what is synced), [`events`] (series, rate limits, the lane's bound) and
//! [`session`] (sent only when no status is ready).
//!
//! Around them: [`config`], [`tls`], [`metrics`], [`health`], [`http`]
//! (`/metrics`, `/healthz`, `/readyz`), [`clock`], and [`capacity`] (nodes
//! and pods → the heartbeat's capacity summary).
//!
//! The session connects only once every watch completed its initial list
//! ([`inventory::Inventory::synced`]), so its first snapshot is complete.
//!
//! Shutdown order, on one [`CancellationToken`]: stop the watches → apply the
//! events already received → flush the outbox, `Bye` and close the session →
//! stop the HTTP server.

pub mod apply;
pub mod capacity;
pub mod clock;
pub mod config;
pub mod events;
pub mod extract;
pub mod health;
pub mod http;
pub mod inventory;
pub mod mapping;
pub mod metrics;
pub mod outbox;
pub mod reconnect;
pub mod replicas;
pub mod routes;
pub mod session;
pub mod tls;
pub mod transform;
pub mod watch;
pub mod watched_object;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::apply::Applier;
use crate::clock::AgentClock;
pub use crate::config::{AgentConfig, ReconnectSettings, ResourceSpec};
use crate::events::SharedEventLane;
use crate::health::AgentHealth;
use crate::inventory::Inventory;
use crate::metrics::Metrics;
use crate::outbox::{Outbox, SharedOutbox};
use crate::replicas::Replicas;
use crate::routes::{ReplicaId, Routes};
use crate::session::{HubEndpoint, SessionContext};
use crate::watch::WatchEvent;

/// Watch events queued between the watches and the pipeline.
const WATCH_QUEUE: usize = 1024;
/// How long shutdown waits for the session (flush, `Bye`, close) at most.
const SESSION_STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Why the agent could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{flag}: {reason}")]
    Config { flag: &'static str, reason: String },
    #[error(transparent)]
    HubUrl(#[from] session::HubUrlError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("--kubeconfig {}: {source}", path.display())]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("no --kubeconfig given and none could be inferred (in-cluster or KUBECONFIG): {0}")]
    InferKubeconfig(#[source] kube::config::InferConfigError),
    #[error("building the Kubernetes client: {0}")]
    KubeClient(#[source] kube::Error),
    #[error("--http-listen {addr}: cannot listen: {source}")]
    HttpListen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("agent task {task} stopped unexpectedly: {reason}")]
    Task { task: &'static str, reason: String },
}

/// Where watch events come from.
enum EventSource {
    /// Watches against a cluster, with the upsync types discovery resolved.
    Kube(
        kube::Client,
        Vec<(kube::api::ApiResource, watch::WatchedResource)>,
    ),
    /// Events supplied by the caller (tests, or an embedding program).
    Stream(Pin<Box<dyn Stream<Item = WatchEvent> + Send>>),
}

/// An agent that has checked its configuration, loaded its credentials and
/// bound its HTTP port, ready to [`Agent::run`].
pub struct Agent {
    config: AgentConfig,
    source: EventSource,
    tls: Arc<tls::reload::ClientTls>,
    /// The hub's replicas (one, when it is not replicated).
    replicas: Replicas,
    /// The first of them (the session template's; each session has its own).
    hub: HubEndpoint,
    /// The HTTP listener and its address, unless configured off.
    listener: Option<(TcpListener, SocketAddr)>,
    metrics: Metrics,
    health: AgentHealth,
}

impl fmt::Debug for Agent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Agent")
            .field("cluster", &self.config.cluster)
            .field("hub", &self.replicas.describe())
            .field("http_addr", &self.http_addr())
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// Checks `config`, loads the TLS material, builds the Kubernetes client
    /// (from `kubeconfig`, else inferred) and binds the HTTP listener.
    pub async fn bind(config: AgentConfig) -> Result<Agent, AgentError> {
        let kube_config = match &config.kubeconfig {
            Some(path) => {
                let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(|source| {
                    AgentError::Kubeconfig {
                        path: path.clone(),
                        source,
                    }
                })?;
                kube::Config::from_custom_kubeconfig(
                    kubeconfig,
                    &kube::config::KubeConfigOptions::default(),
                )
                .await
                .map_err(|source| AgentError::Kubeconfig {
                    path: path.clone(),
                    source,
                })?
            }
            None => kube::Config::infer()
                .await
                .map_err(AgentError::InferKubeconfig)?,
        };
        let client = kube::Client::try_from(kube_config).map_err(AgentError::KubeClient)?;
        // An upsync type the cluster does not serve is a configuration
        // error now, not a watch that retries forever.
        let mut upsync = Vec::with_capacity(config.upsync_resources.len());
        for spec in &config.upsync_resources {
            let resolved = watch::resolve(&client, spec)
                .await
                .map_err(|e| AgentError::Config {
                    flag: "--upsync-resources",
                    reason: e.to_string(),
                })?;
            upsync.push(resolved);
        }
        Self::bind_with_source(config, EventSource::Kube(client, upsync)).await
    }

    /// Like [`Agent::bind`], but the watch events come from `events` instead
    /// of a cluster (no Kubernetes client is built). The stream should report
    /// [`WatchEvent::Listed`] for the namespace watch and every configured
    /// resource, as real watches do, for `/readyz` to turn ready. Without a
    /// cluster to write to, such an agent applies nothing whatever
    /// `downward_resources` says; it reports the [`WatchEvent::Event`]s the
    /// stream carries (unless `events` is `None`).
    pub async fn bind_with_events(
        config: AgentConfig,
        events: impl Stream<Item = WatchEvent> + Send + 'static,
    ) -> Result<Agent, AgentError> {
        Self::bind_with_source(config, EventSource::Stream(Box::pin(events))).await
    }

    async fn bind_with_source(
        config: AgentConfig,
        source: EventSource,
    ) -> Result<Agent, AgentError> {
        if config.cluster.trim().is_empty() {
            return Err(AgentError::Config {
                flag: "--cluster",
                reason: "must name this cluster".into(),
            });
        }
        if config.resources.is_empty() {
            return Err(AgentError::Config {
                flag: "--resources",
                reason: "must list at least one resource type".into(),
            });
        }
        if config.heartbeat_interval.is_zero() {
            return Err(AgentError::Config {
                flag: "--heartbeat-interval",
                reason: "must be greater than zero".into(),
            });
        }
        let replicas = Replicas::parse(
            &config.hub_url,
            config.hub_discovery,
            config.hub_resolve_interval,
            config.hub_resolver.clone(),
        )?;
        let hub = match &replicas {
            Replicas::Static(endpoints) => endpoints.first().cloned(),
            Replicas::Dns { endpoint, .. } => Some(endpoint.clone()),
        }
        .ok_or_else(|| session::HubUrlError {
            url: config.hub_url.clone(),
            reason: "names no hub".into(),
        })?;
        let metrics = Metrics::new();
        let tls = Arc::new(
            tls::reload::ClientTls::load(tls::TlsFiles::new(
                &config.tls_cert,
                &config.tls_key,
                &config.hub_ca,
            ))?
            .with_metrics(metrics.clone()),
        );
        let listener = match config.http_listen {
            Some(addr) => {
                let listener = TcpListener::bind(addr)
                    .await
                    .map_err(|source| AgentError::HttpListen { addr, source })?;
                let bound = listener
                    .local_addr()
                    .map_err(|source| AgentError::HttpListen { addr, source })?;
                Some((listener, bound))
            }
            None => None,
        };
        let health = AgentHealth::new(&config.resources);
        Ok(Agent {
            config,
            source,
            tls,
            replicas,
            hub,
            listener,
            metrics,
            health,
        })
    }

    /// The address `/metrics`, `/healthz` and `/readyz` are served on, unless
    /// the configuration turned the server off.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.listener.as_ref().map(|(_, addr)| *addr)
    }

    /// This agent's metrics (the same registry `/metrics` serves).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// This agent's health (the source of `/readyz`).
    pub fn health(&self) -> &AgentHealth {
        &self.health
    }

    /// Runs until `shutdown` is cancelled, then stops in order: watches,
    /// pipeline, session (flush, `Bye`, close), HTTP server.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), AgentError> {
        let Agent {
            config,
            source,
            tls,
            replicas,
            hub,
            listener,
            metrics,
            health,
        } = self;
        let http_addr = listener.as_ref().map(|(_, addr)| *addr);
        let clock = AgentClock::new(config.clock_offset);
        let outbox = SharedOutbox::new(Outbox::with_routes(
            config.outbox_limit,
            metrics.clone(),
            Routes::new(&config.cluster),
        ));
        let session_id = uuid::Uuid::new_v4().to_string();
        tracing::info!(cluster = %config.cluster, hub = %replicas.describe(), http_addr = ?http_addr, %session_id, resources = ?config.resources.iter().map(ToString::to_string).collect::<Vec<_>>(), "agent starting");
        // The downward lane needs a cluster to write to.
        let downward = match &source {
            EventSource::Kube(client, _) if !config.downward_resources.is_empty() => {
                tracing::info!(downward_resources = ?config.downward_resources.iter().map(ToString::to_string).collect::<Vec<_>>(), "applying what the hub sends down");
                Some(Arc::new(Applier::new(
                    client.clone(),
                    config.downward_resources.clone(),
                    metrics.clone(),
                )))
            }
            _ => None,
        };

        let watch_stop = CancellationToken::new();
        let session_stop = CancellationToken::new();
        let http_stop = CancellationToken::new();
        let event_lane = config
            .events
            .clone()
            .map(|settings| SharedEventLane::new(settings, metrics.clone()));
        let mut inventory = Inventory::new(outbox.clone(), metrics.clone(), health.clone(), clock);
        if let Some(lane) = &event_lane {
            inventory = inventory.with_events(lane.clone());
        }
        let synced = inventory.synced();
        let upsync_listed = inventory.upsync_listed();
        // The cluster's SyncTarget as the hub last named it (every
        // `Welcome`): what the upsync watches select by.
        let sync_target = tokio::sync::watch::Sender::new(None);
        let mut upsync_tasks = tokio::task::JoinSet::new();

        let mut downstream_events: Pin<Box<dyn Stream<Item = WatchEvent> + Send>> =
            Box::pin(futures::stream::pending());
        let (events, mut watches): (Pin<Box<dyn Stream<Item = WatchEvent> + Send>>, _) =
            match source {
                EventSource::Kube(client, upsync) => {
                    let (tx, rx) = mpsc::channel(WATCH_QUEUE);
                    // Downstream Events queue apart, behind status.
                    let (events_tx, events_rx) = mpsc::channel(WATCH_QUEUE);
                    downstream_events =
                        Box::pin(queue_stream(events_rx, metrics.event_queue.clone()));
                    watch::spawn_upsync_watches(
                        &mut upsync_tasks,
                        &client,
                        &upsync,
                        &sync_target.subscribe(),
                        &tx,
                        &watch_stop,
                    );
                    let mut tasks = watch::spawn_watches(
                        client.clone(),
                        &config.resources,
                        tx.clone(),
                        watch_stop.clone(),
                    );
                    if event_lane.is_some() {
                        watch::spawn_event_watch(
                            &mut tasks,
                            client.clone(),
                            synced.clone(),
                            events_tx,
                            watch_stop.clone(),
                        );
                    }
                    if config.capacity {
                        let collector = capacity::Collector::new().shared();
                        health.attach_capacity(collector.clone());
                        capacity::watch::spawn(
                            client,
                            collector,
                            metrics.clone(),
                            &mut tasks,
                            watch_stop.clone(),
                        );
                    }
                    (
                        Box::pin(queue_stream(rx, metrics.watch_queue.clone())),
                        tasks,
                    )
                }
                EventSource::Stream(events) => (events, tokio::task::JoinSet::new()),
            };
        let pipeline = tokio::spawn(inventory::run(
            inventory,
            events,
            downstream_events,
            watch_stop.clone(),
        ));

        // Certificate rotation: the files polled, used from the next connection.
        let reload = (!config.tls_reload_interval.is_zero()).then(|| {
            tokio::spawn(tls::reload::watch(
                tls.clone(),
                config.tls_reload_interval,
                session_stop.clone(),
            ))
        });
        let ctx = SessionContext {
            cluster: config.cluster.clone(),
            session_id,
            replica_name: hub.url.to_string().into(),
            hub,
            replica: ReplicaId(0),
            tls,
            heartbeat_interval: config.heartbeat_interval,
            outbox,
            metrics: metrics.clone(),
            health: health.clone(),
            clock,
            downward,
            events: event_lane,
            upsync_resources: config.upsync_resources.clone(),
            sync_target,
            upsync_listed,
        };
        let mut session = tokio::spawn(connect_when_synced(
            ctx,
            replicas,
            config.reconnect,
            synced,
            session_stop.clone(),
        ));
        let mut http = match listener {
            Some((listener, _)) => {
                tokio::spawn(http::serve(listener, metrics, health, http_stop.clone()))
            }
            // Nothing to serve: a task that only waits for its stop keeps the
            // shutdown order below the same either way.
            None => {
                let stop = http_stop.clone();
                tokio::spawn(async move { stop.cancelled().await })
            }
        };

        let failure = tokio::select! {
            () = shutdown.cancelled() => None,
            ended = &mut session => Some(("session", ended)),
            ended = &mut http => Some(("http", ended)),
        };
        tracing::info!("agent shutting down");

        watch_stop.cancel();
        while watches.join_next().await.is_some() {}
        while upsync_tasks.join_next().await.is_some() {}
        if let Err(e) = pipeline.await {
            tracing::error!(error = %e, "pipeline task failed");
        }
        session_stop.cancel();
        if failure.as_ref().is_none_or(|(task, _)| *task != "session") {
            // The session's goodbye has its own grace period and abandons a
            // blocked send on stop; this bound is only a backstop.
            match tokio::time::timeout(SESSION_STOP_GRACE, &mut session).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "session task failed"),
                Err(_) => {
                    tracing::warn!(grace = ?SESSION_STOP_GRACE, "session did not stop in time; abandoning it");
                    session.abort();
                }
            }
        }
        if let Some(reload) = reload
            && let Err(e) = reload.await
        {
            tracing::error!(error = %e, "certificate reload task failed");
        }
        http_stop.cancel();
        if failure.as_ref().is_none_or(|(task, _)| *task != "http")
            && let Err(e) = (&mut http).await
        {
            tracing::error!(error = %e, "http task failed");
        }
        tracing::info!("agent stopped");

        match failure {
            None => Ok(()),
            Some((task, ended)) => Err(AgentError::Task {
                task,
                reason: match ended {
                    Ok(()) => "ended before shutdown".into(),
                    Err(e) => e.to_string(),
                },
            }),
        }
    }
}

/// A watch queue as a stream, keeping its depth metric current.
fn queue_stream(
    mut rx: mpsc::Receiver<WatchEvent>,
    depth: prometheus::IntGauge,
) -> impl Stream<Item = WatchEvent> + Send {
    futures::stream::poll_fn(move |cx| {
        let next = rx.poll_recv(cx);
        depth.set(i64::try_from(rx.len()).unwrap_or(i64::MAX));
        next
    })
}

/// Keeps a session with every hub replica up, but connects only once the inventory is synced
/// (every watch completed its initial list, see [`Inventory::synced`]): the
/// first thing a hub may ask for is a snapshot, and a snapshot of a partly
/// listed cluster would make the hub drop every object not listed yet, clear
/// their status in KCP and write it back moments later. Until then the hub
/// sees no connection (no heartbeats either) and `/readyz` names the pending
/// lists.
async fn connect_when_synced(
    ctx: SessionContext,
    replicas: Replicas,
    settings: ReconnectSettings,
    mut synced: tokio::sync::watch::Receiver<bool>,
    stop: CancellationToken,
) {
    let synced = tokio::select! {
        () = stop.cancelled() => return,
        ready = synced.wait_for(|synced| *synced) => ready.is_ok(),
    };
    if !synced {
        // The pipeline ended before the lists completed: nothing complete to
        // report; wait for the shutdown.
        tracing::warn!(
            "watch pipeline ended before its initial lists completed; not connecting to the hub"
        );
        stop.cancelled().await;
        return;
    }
    replicas::run(ctx, replicas, settings, stop).await;
}

/// Binds and runs an agent until `shutdown` is cancelled.
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> Result<(), AgentError> {
    Agent::bind(config).await?.run(shutdown).await
}
