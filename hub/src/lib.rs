//! Accepts every Uplink agent, merges what clusters report and writes the
//! status into KCP.
//!
//! Follow one status change by opening the modules in order:
//! [`server`] (TLS + WebSocket) → [`session`] (protocol) → [`placement`]
//! (may this cluster report this object?) → [`store`] (latest entry per
//! object and cluster) → [`aggregate`] (desired status) → [`writer`]
//! (rate-limited merge patches of `/status`). Agents' event series
//! (protocol version 3) take a shorter, best-effort path: [`session`]
//! (placed objects only) → [`writer::events`] (their own queue, rate and
//! writer). Upsynced objects (version 3, born in a cluster) are judged by
//! [`placement`] like reports, their status stored and written like any,
//! and the objects themselves written whole by [`writer::upsync`]. Beside
//! them: [`rejection`]
//! (refused reports, told to their agents),
//! [`health`] (cluster records; their states reach KCP as SyncTargets
//! through [`writer::synctarget`]), [`capacity`] (health and capacity totals,
//! history, trends, reports), [`http`] (`/metrics`, `/healthz`, `/readyz`,
//! hub API), [`metrics`], [`config`], [`tls`]; [`replicas`] (which shards
//! this replica holds, by Kubernetes Leases: every KCP write passes
//! [`writer::fenced`], sessions tell agents the shards held).
//!
//! Shutdown order, driven by one token: stop accepting agents → `Bye` to
//! every agent and close their sessions → abandon waiting event and upsync
//! writes (agents' snapshots bring every upsynced object to the next hub),
//! flush pending KCP status writes within
//! [`HubConfig::shutdown_flush_timeout`] → a replica releases its shards
//! (writing has stopped; the others take them over within a retry period)
//! → stop HTTP.

pub mod aggregate;
pub mod budget;
pub mod cache;
pub mod capacity;
pub mod config;
pub mod downstream;
pub mod forget;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod health;
pub mod http;
pub mod labels;
pub mod metrics;
pub mod page;
pub mod placement;
pub mod rejection;
pub mod replicas;
pub mod server;
pub mod session;
mod shards;
pub mod status;
pub mod store;
pub mod tls;
pub mod writer;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::{HubConfig, StatusWrite, UpstreamMode};
pub use metrics::Metrics;
pub use writer::{ApplyOptions, KubeUpstream, StatusUpstream, UpstreamError, UpstreamStatus};

use crate::aggregate::Aggregator;
use crate::downstream::Downstream;
use crate::health::Health;
use crate::placement::{PlacementSettings, PlacementSource, Placements};
use crate::rejection::Rejections;
use crate::replicas::{Ownership, ReplicaMetrics};
use crate::session::{Connections, SessionShared};
use crate::store::Store;
use crate::tls::reload::{RotationMetrics, ServerTls};
use crate::writer::events::{EventQueue, EventUpstream, EventWriter, EventWriterSettings};
use crate::writer::fenced::Fenced;
use crate::writer::finalizer::{FinalizerUpstream, Finalizers};
use crate::writer::upsync::{Upsync, UpsyncUpstream, UpsyncWriter, UpsyncWriterSettings};
use crate::writer::{
    SettleTimes, SyncTargetSettings, SyncTargets, UpstreamConfigError, WriteQueue, Writer,
    WriterSettings,
};

/// Why the hub could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("TLS configuration (--tls-cert, --tls-key, --client-ca): {0}")]
    Tls(#[from] tls::TlsError),
    #[error("upstream client (--kcp-kubeconfig): {0}")]
    Upstream(#[from] UpstreamConfigError),
    #[error("binding {flag} {addr}: {source}")]
    Bind {
        flag: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("registering metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("HTTP API access (--http-auth): {0}")]
    HttpAccess(#[from] http::auth::AccessError),
    #[error("the {0} task failed: {1}")]
    Task(&'static str, tokio::task::JoinError),
    #[error("the replicas' Lease client (--replicas-kubeconfig): {0}")]
    LeaseClient(String),
    #[error("replicas: {0}")]
    Replicas(#[from] replicas::SettingsError),
}

/// A hub with its listeners bound, ready to [`Hub::run`].
#[derive(Debug)]
pub struct Hub {
    config: HubConfig,
    /// The tunnel's TLS, following its files.
    tls: Arc<ServerTls>,
    tunnel: TcpListener,
    http: TcpListener,
    tunnel_addr: SocketAddr,
    http_addr: SocketAddr,
    metrics: Arc<Metrics>,
    store: Arc<Store>,
    queue: Arc<WriteQueue>,
    health: Arc<Health>,
    aggregator: Arc<Aggregator>,
    kcp: Kcp,
    placements: Arc<Placements>,
    rejections: Arc<Rejections>,
    downstream: Arc<Downstream>,
    finalizers: Arc<Finalizers>,
    capacity: Arc<capacity::Capacity>,
    access: Arc<http::Access>,
    upsync: Arc<Upsync>,
    /// Which shards this hub holds (all, for a single hub).
    ownership: Ownership,
    replica_metrics: ReplicaMetrics,
    /// `uplink_hub_unheld_shard_items_total{kind}`.
    unheld: prometheus::IntCounterVec,
    /// Where the Leases are (a replica only).
    lease_client: Option<LeaseApi>,
}

/// The Leases' API server (kube's client has no `Debug`).
struct LeaseApi(kube::Client);

impl std::fmt::Debug for LeaseApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LeaseApi")
    }
}

/// KCP as the hub reaches it: where it writes status, where it reads
/// placement, where it keeps its finalizers, where agents' events go. [`Kcp::kube`] for the real
/// thing; tests substitute parts.
#[derive(Debug, Clone)]
pub struct Kcp {
    pub status: Arc<dyn StatusUpstream>,
    pub placement: Arc<dyn PlacementSource>,
    pub finalizers: Arc<dyn FinalizerUpstream>,
    /// Where agents' event series go (protocol version 3).
    pub events: Arc<dyn EventUpstream>,
    /// Where upsynced objects go, whole (protocol version 3).
    pub upsync: Arc<dyn UpsyncUpstream>,
}

impl Kcp {
    /// Every part through one kube client.
    pub fn kube(upstream: KubeUpstream) -> Self {
        let upstream = Arc::new(upstream);
        Self {
            status: upstream.clone(),
            placement: upstream.clone(),
            finalizers: upstream.clone(),
            events: upstream.clone(),
            upsync: upstream,
        }
    }
}

impl Hub {
    /// Loads the TLS material, builds the upstream client from the
    /// kubeconfig and binds both listeners.
    pub async fn bind(config: HubConfig) -> Result<Hub, HubError> {
        // TLS first: a wrong file name is the likelier mistake, and cheap to find.
        let tls = ServerTls::tunnel(&config.tls_cert, &config.tls_key, &config.client_ca)?;
        let identity = config
            .replicas
            .lease
            .as_ref()
            .map_or(replicas::ownership::SINGLE, |l| {
                l.settings.identity.as_str()
            });
        let upstream = KubeUpstream::load(config.kcp_kubeconfig.as_deref(), config.upstream)
            .await?
            .with_identity(identity)?
            .with_max_clients(config.max_kcp_clients);
        let lease_client = match &config.replicas.lease {
            Some(lease) => Some(lease_client(lease.kubeconfig.as_deref()).await?),
            None => None,
        };
        let collectors = upstream.collectors();
        let mut hub = Self::bind_parts(config, tls, Kcp::kube(upstream)).await?;
        for collector in collectors {
            hub.metrics().registry().register(collector)?;
        }
        hub.lease_client = lease_client.map(LeaseApi);
        Ok(hub)
    }

    /// The API server holding the Leases of a replica (its
    /// `--replicas-kubeconfig`): [`Hub::bind`] builds it from the
    /// configuration, an embedding or a test gives its own.
    #[must_use]
    pub fn with_lease_client(mut self, client: kube::Client) -> Self {
        self.lease_client = Some(LeaseApi(client));
        self
    }

    /// Which shards this hub holds.
    pub fn ownership(&self) -> Ownership {
        self.ownership.clone()
    }

    /// Like [`Hub::bind`], reaching KCP through `kcp` instead of a kube
    /// client (tests, or an embedding that brings its own).
    pub async fn bind_with_kcp(config: HubConfig, kcp: Kcp) -> Result<Hub, HubError> {
        let tls = ServerTls::tunnel(&config.tls_cert, &config.tls_key, &config.client_ca)?;
        Self::bind_parts(config, tls, kcp).await
    }

    async fn bind_parts(config: HubConfig, tls: ServerTls, kcp: Kcp) -> Result<Hub, HubError> {
        let metrics = Arc::new(Metrics::new()?);
        let ownership = ownership(&config);
        let replica_metrics = ReplicaMetrics::register(metrics.registry())?;
        if !ownership.is_replicated() {
            replica_metrics
                .shards_held
                .set(i64::from(ownership.count()));
        }
        let fenced = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "uplink_hub_fenced_writes_total",
                "KCP writes not sent because this replica does not hold the object's shard (not_held), or abandoned when its fence closed (abandoned).",
            ),
            &["outcome"],
        )?;
        metrics.registry().register(Box::new(fenced.clone()))?;
        let unheld = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "uplink_hub_unheld_shard_items_total",
                "Agents' reports (delta, upsync, event, snapshot) of a shard this replica does not hold: acknowledged and dropped (the holder has them).",
            ),
            &["kind"],
        )?;
        metrics.registry().register(Box::new(unheld.clone()))?;
        // Every write to KCP passes the fence: the one door.
        let kcp = Kcp {
            status: Arc::new(Fenced::new(kcp.status, ownership.clone(), fenced.clone())),
            placement: kcp.placement,
            finalizers: Arc::new(Fenced::new(
                kcp.finalizers,
                ownership.clone(),
                fenced.clone(),
            )),
            events: Arc::new(Fenced::new(kcp.events, ownership.clone(), fenced.clone())),
            upsync: Arc::new(Fenced::new(kcp.upsync, ownership.clone(), fenced)),
        };
        let rotation = RotationMetrics::register(metrics.registry())?;
        let tls = Arc::new(tls.with_metrics(rotation.clone()));
        let placements = Arc::new(Placements::new(
            PlacementSettings {
                resources: config.resources.clone(),
                upsync: config.upsync_resources.clone(),
                synctarget_workspace: config.synctarget_workspace.clone(),
                hold: config.placement_hold,
                max_per_cluster: config.limits.max_objects_per_cluster,
            },
            metrics.clone(),
        ));
        let rejections = Arc::new(Rejections::new(metrics.clone()));
        let queue = Arc::new(WriteQueue::with_settle_times(
            metrics.clone(),
            SettleTimes {
                base: config.write_settle,
                max: config.write_settle_max,
            },
        ));
        let downstream = Arc::new(Downstream::new(queue.clone(), metrics.clone()));
        let finalizers = Arc::new(Finalizers::new(kcp.finalizers.clone(), metrics.clone()));
        let store = Arc::new(
            Store::new(
                queue.clone(),
                metrics.clone(),
                config.limits.max_objects_per_cluster,
            )
            .with_budget(config.memory_budget),
        );
        let health = Arc::new(Health::new(metrics.clone()));
        let upsync = Arc::new(Upsync::new(config.upsync_queue_size, metrics.clone()));
        let aggregator = Arc::new(
            Aggregator::new(
                config.merge_policy.clone(),
                config.feature_gates,
                health.clone(),
                config.heartbeat_interval,
                config.offline_grace,
                metrics.clone(),
            )
            .with_apply_failures(downstream.clone()),
        );
        tracing::info!(gates = %config.feature_gates, "feature gates");
        let capacity = Arc::new(capacity::Capacity::new(
            health.clone(),
            config.heartbeat_interval,
            config.offline_grace,
            config.capacity,
            metrics.registry(),
        )?);

        let access = Arc::new(
            http::Access::new(
                &config.http_auth,
                &config.tls_cert,
                &config.tls_key,
                metrics.registry(),
                &rotation,
            )
            .await?,
        );
        if config.http_auth.mode == http::HttpAuthMode::None
            && !config.http_listen.ip().is_loopback()
        {
            tracing::warn!(
                addr = %config.http_listen,
                "--http-auth=none on a non-loopback address: anyone who reaches it reads every workspace's statuses"
            );
        }
        let tunnel = bind("--listen", config.listen).await?;
        let http = bind("--http-listen", config.http_listen).await?;
        let tunnel_addr = local_addr("--listen", &tunnel, config.listen)?;
        let http_addr = local_addr("--http-listen", &http, config.http_listen)?;
        tracing::info!(addr = %tunnel_addr, "tunnel listening");
        tracing::info!(addr = %http_addr, "HTTP (metrics, health, API) listening");

        Ok(Hub {
            config,
            tls,
            tunnel,
            http,
            tunnel_addr,
            http_addr,
            metrics,
            store,
            queue,
            health,
            aggregator,
            kcp,
            placements,
            rejections,
            downstream,
            finalizers,
            capacity,
            access,
            upsync,
            ownership,
            replica_metrics,
            unheld,
            lease_client: None,
        })
    }

    /// Where agents connect (the bound address, so port 0 works).
    pub fn tunnel_addr(&self) -> SocketAddr {
        self.tunnel_addr
    }

    /// Where `/metrics`, `/healthz`, `/readyz` and the API are served.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// This hub's metrics.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// This hub's store of cluster reports.
    pub fn store(&self) -> Arc<Store> {
        self.store.clone()
    }

    /// This hub's cluster records.
    pub fn health(&self) -> Arc<Health> {
        self.health.clone()
    }

    /// This hub's merge of cluster reports and its conflict ledger.
    pub fn aggregator(&self) -> Arc<Aggregator> {
        self.aggregator.clone()
    }

    /// What KCP placed on each cluster, as this hub sees it.
    pub fn placements(&self) -> Arc<Placements> {
        self.placements.clone()
    }

    /// This hub's capacity records, totals, history and reports.
    pub fn capacity(&self) -> Arc<capacity::Capacity> {
        self.capacity.clone()
    }

    /// Serves until `shutdown` is cancelled, then shuts down in order.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), HubError> {
        let Hub {
            config,
            tls,
            tunnel,
            http,
            metrics,
            store,
            queue,
            health,
            aggregator,
            kcp,
            placements,
            rejections,
            downstream,
            finalizers,
            capacity,
            access,
            upsync,
            ownership,
            replica_metrics,
            unheld,
            lease_client,
            ..
        } = self;
        // Takes part in the replicas from the start: sessions tell agents
        // the shards held as they connect.
        let replicas_stop = CancellationToken::new();
        let replicas_task = match (&config.replicas.lease, ownership.fence()) {
            (Some(lease), Some(fence)) => {
                let client = lease_client.ok_or_else(|| {
                    HubError::LeaseClient("none given (Hub::with_lease_client)".into())
                })?;
                lease.settings.validate()?;
                tracing::info!(identity = %lease.settings.identity, namespace = %lease.settings.namespace, shards = lease.settings.shards, "taking part in the replicas");
                Some(tokio::spawn(replicas::run(
                    client.0,
                    lease.settings.clone(),
                    fence.clone(),
                    replica_metrics,
                    replicas_stop.clone(),
                )))
            }
            _ => None,
        };
        let upstream = kcp.status.clone();

        // Placement: what each cluster may report. Stopped last among the
        // background tasks (after the sessions), so no report waits on it.
        let placement_stop = CancellationToken::new();
        let placement_task = tokio::spawn(
            placement::runner::Runner {
                placements: placements.clone(),
                source: kcp.placement.clone(),
                store: store.clone(),
                downstream: downstream.clone(),
                finalizers: finalizers.clone(),
                rejections: rejections.clone(),
                mode: config.upstream,
                forget: Arc::new(forget::Forget {
                    store: store.clone(),
                    health: health.clone(),
                    capacity: capacity.clone(),
                    metrics: metrics.clone(),
                }),
            }
            .run(placement_stop.clone()),
        );

        // The hub's finalizers on objects the clusters apply.
        let finalizers_task = tokio::spawn(finalizers.clone().run(placement_stop.clone()));

        // Cluster states (metric) and SyncTargets in KCP.
        let synctargets = SyncTargets::new(
            upstream.clone(),
            health.clone(),
            placements.clone(),
            metrics.clone(),
            SyncTargetSettings {
                heartbeat_interval: config.heartbeat_interval,
                offline_grace: config.offline_grace,
                heartbeat_period: config.synctarget_heartbeat_period,
            },
        )
        .with_ownership(ownership.clone());

        let writer = Arc::new(
            Writer::new(
                queue.clone(),
                store.clone(),
                aggregator.clone(),
                upstream,
                metrics.clone(),
                WriterSettings {
                    qps: config.write_qps,
                    burst: config.write_burst,
                    concurrency: config.write_concurrency,
                    status_write: config.status_write,
                    dry_run: config.dry_run,
                },
            )
            .with_upsync(upsync.clone(), config.upsync_resources.clone())
            .with_ownership(ownership.clone()),
        );
        let writer_stop = CancellationToken::new();
        let writer_task = tokio::spawn(
            writer
                .clone()
                .run(writer_stop.clone(), config.shutdown_flush_timeout),
        );

        // Agents' event series: best effort, beside the status writer and
        // never in its way; stopped with it, abandoning what waits.
        let event_queue = Arc::new(EventQueue::new(config.events.queue_size, metrics.clone()));
        let event_writer = Arc::new(EventWriter::new(
            event_queue.clone(),
            kcp.events.clone(),
            metrics.clone(),
            EventWriterSettings {
                qps: config.events.write_qps,
                burst: config.events.write_burst,
                concurrency: EVENT_WRITE_CONCURRENCY,
                dry_run: config.dry_run,
                upstream_sync: config.feature_gates.upstream_sync,
            },
        ));
        let events_task = tokio::spawn(event_writer.run(writer_stop.clone()));

        // Upsynced objects, whole: not best effort, but nothing to flush at
        // shutdown either (agents' snapshots bring them all to the next hub).
        let upsync_writer = Arc::new(UpsyncWriter::new(
            upsync.clone(),
            kcp.upsync.clone(),
            placements.clone(),
            queue.clone(),
            aggregator.clone(),
            metrics.clone(),
            UpsyncWriterSettings {
                resources: config.upsync_resources.clone(),
                concurrency: config.upsync_write_concurrency,
                hold: config.placement_hold,
                dry_run: config.dry_run,
            },
        ));
        let upsync_task = tokio::spawn(upsync_writer.run(writer_stop.clone()));

        let synctargets_task = tokio::spawn(synctargets.run(writer_stop.clone()));
        let capacity_task = tokio::spawn(capacity.clone().run(writer_stop.clone()));

        // Re-queues the objects whose merge a cluster's state change alters.
        let states_task = tokio::spawn(aggregate::watch_cluster_states(
            aggregator.clone(),
            store.clone(),
            queue.clone(),
            (config.heartbeat_interval / 2).min(std::time::Duration::from_secs(5)),
            writer_stop.clone(),
        ));

        let http_state = Arc::new(http::HttpState {
            access,
            metrics: metrics.clone(),
            store: store.clone(),
            health: health.clone(),
            aggregator,
            placements: placements.clone(),
            capacity,
            heartbeat_interval: config.heartbeat_interval,
            offline_grace: config.offline_grace,
            max_connections: config.http_max_connections,
            ready: false.into(),
            shutdown: shutdown.clone(),
            ownership: ownership.clone(),
        });
        // Certificate rotation: both listeners' files polled.
        let reload_task = tls::reload::spawn(
            std::iter::once(tls.clone()).chain(http_state.access.server_tls()),
            config.tls_reload_interval,
            writer_stop.clone(),
        );
        let http_stop = CancellationToken::new();
        let http_task = tokio::spawn(http::serve(http, http_state.clone(), http_stop.clone()));

        let store_for_shards = store.clone();
        let shared = Arc::new(SessionShared {
            store,
            downstream,
            finalizers,
            placements: placements.clone(),
            rejections,
            health,
            metrics,
            connections: Connections::default(),
            limits: config.limits,
            heartbeat_interval: config.heartbeat_interval,
            hub_epoch: rand::random(),
            require_workspace: config.upstream == UpstreamMode::Kcp,
            write_queue: queue,
            throttle: session::ThrottleSettings {
                queue_depth: config.throttle_queue_depth,
                pause: config.throttle_pause,
                max_deltas_per_s: throttle_rate(config.write_qps),
            },
            report_bounds: config.capacity.reports,
            event_queue,
            event_rates: Arc::new(session::EventRates::new(
                config.events.cluster_rate,
                config.events.cluster_burst,
            )),
            upsync,
            ownership: ownership.clone(),
            unheld,
        });
        // A shard lost: its entries and what was written of it forgotten.
        let shards_task = tokio::spawn(shards::follow(
            ownership.clone(),
            store_for_shards,
            writer.clone(),
            writer_stop.clone(),
        ));
        http_state.ready.store(true, Ordering::Release);
        tracing::info!(epoch = shared.hub_epoch, "hub running");

        // Returns once shutdown began and every session has said goodbye.
        server::serve(
            tunnel,
            tls,
            shared,
            server::ListenerSettings {
                tls_handshake_timeout: config.tls_handshake_timeout,
                handshake_timeout: config.handshake_timeout,
                max_tls_handshakes: config.max_tls_handshakes,
                max_tls_handshakes_per_source: config.max_tls_handshakes_per_source,
                max_awaiting_hello: config.max_awaiting_hello,
                max_awaiting_hello_per_cluster: config.max_awaiting_hello_per_cluster,
            },
            shutdown,
        )
        .await;

        writer_stop.cancel();
        placement_stop.cancel();
        let placement_result = placement_task.await;
        let finalizers_result = finalizers_task.await;
        let writer_result = writer_task.await;
        let events_result = events_task.await;
        let upsync_result = upsync_task.await;
        let states_result = states_task.await;
        let synctargets_result = synctargets_task.await;
        let capacity_result = capacity_task.await;
        let shards_result = shards_task.await;
        // Writing has stopped: the shards are released, so the others take
        // them over within a retry period instead of a lease duration.
        replicas_stop.cancel();
        let replicas_result = match replicas_task {
            Some(task) => task.await,
            None => Ok(Ok(())),
        };
        let reload_result = match reload_task {
            Some(task) => task.await,
            None => Ok(()),
        };
        http_stop.cancel();
        let http_result = http_task.await;
        tracing::info!("hub stopped");
        writer_result.map_err(|e| HubError::Task("writer", e))?;
        events_result.map_err(|e| HubError::Task("event writer", e))?;
        upsync_result.map_err(|e| HubError::Task("upsync writer", e))?;
        placement_result.map_err(|e| HubError::Task("placement", e))?;
        finalizers_result.map_err(|e| HubError::Task("finalizer writer", e))?;
        states_result.map_err(|e| HubError::Task("cluster state watch", e))?;
        synctargets_result.map_err(|e| HubError::Task("SyncTarget writer", e))?;
        capacity_result.map_err(|e| HubError::Task("capacity", e))?;
        shards_result.map_err(|e| HubError::Task("shard follower", e))?;
        replicas_result.map_err(|e| HubError::Task("replicas", e))??;
        reload_result.map_err(|e| HubError::Task("certificate reload", e))?;
        http_result.map_err(|e| HubError::Task("http", e))?;
        Ok(())
    }
}

/// Event writes to KCP in flight at once: events are best effort, and a
/// few at a time keep them from taking the upstream's attention.
const EVENT_WRITE_CONCURRENCY: usize = 2;

/// Which shards a hub of `config` holds: all (single), or its fence's.
fn ownership(config: &HubConfig) -> Ownership {
    match &config.replicas.lease {
        None => Ownership::single(config.replicas.shards),
        Some(lease) => Ownership::replicated(
            &lease.settings.identity,
            config.replicas.shards,
            lease.settings.fence(),
            // Agents answer a snapshot request at once; one that has not
            // within three heartbeat intervals is as good as gone.
            config.heartbeat_interval * 3,
        ),
    }
}

/// The Leases' API server: `kubeconfig`, else in-cluster, else kube's usual
/// inference (`KUBECONFIG`, `~/.kube/config`).
async fn lease_client(kubeconfig: Option<&std::path::Path>) -> Result<kube::Client, HubError> {
    let failed = |e: &dyn std::fmt::Display| HubError::LeaseClient(e.to_string());
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| HubError::LeaseClient(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| HubError::LeaseClient(format!("{}: {e}", path.display())))?
        }
        None => match kube::Config::incluster() {
            Ok(config) => config,
            Err(_) => kube::Config::infer().await.map_err(|e| failed(&e))?,
        },
    };
    kube::Client::try_from(config).map_err(|e| failed(&e))
}

/// Binds the hub from `config` and runs it until `shutdown`.
pub async fn run(config: HubConfig, shutdown: CancellationToken) -> Result<(), HubError> {
    Hub::bind(config).await?.run(shutdown).await
}

/// The delta rate a throttled agent is held to: what the writer can write
/// per second (0, unlimited, when the writer is unlimited).
fn throttle_rate(write_qps: f64) -> u32 {
    if write_qps > 0.0 && write_qps.is_finite() {
        // Saturating float-to-int cast; at least one delta per second.
        (write_qps.ceil() as u32).max(1)
    } else {
        0
    }
}

async fn bind(flag: &'static str, addr: SocketAddr) -> Result<TcpListener, HubError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| HubError::Bind { flag, addr, source })
}

fn local_addr(
    flag: &'static str,
    listener: &TcpListener,
    addr: SocketAddr,
) -> Result<SocketAddr, HubError> {
    listener
        .local_addr()
        .map_err(|source| HubError::Bind { flag, addr, source })
}
