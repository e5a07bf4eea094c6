//! The hub's Prometheus metrics, registered in a registry owned by one hub
//! instance (several hubs may run in one test process).

use prometheus::{
    GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// Every metric the hub exports, and the registry that holds them.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Agents with an established session (after `Welcome`).
    pub agents_connected: IntGauge,
    /// Heartbeats received, by cluster.
    pub heartbeats: IntCounterVec,
    /// When the last heartbeat of a cluster arrived (hub clock, Unix seconds).
    pub last_heartbeat: GaugeVec,
    /// Deltas received (in batches and snapshots), by cluster.
    pub deltas_received: IntCounterVec,
    /// KCP status writes, by result.
    pub kcp_writes: IntCounterVec,
    /// How long one KCP status write took.
    pub kcp_write_duration: Histogram,
    /// Connections that never became a session, by reason.
    pub handshake_failures: IntCounterVec,
    /// Connections accepted that are not a session yet, by phase: in their
    /// TLS handshake, or past it and waiting for their `Hello`.
    pub handshakes_in_progress: IntGaugeVec,
    /// Objects in the store (any number of clusters reporting them).
    pub store_objects: IntGauge,
    /// Bytes the store's reports take, all clusters ([`crate::budget`]).
    pub store_bytes: IntGauge,
    /// Bytes the store's reports take, by cluster.
    pub store_cluster_bytes: IntGaugeVec,
    /// Objects the store holds for each cluster (entries and held reports).
    pub store_cluster_objects: IntGaugeVec,
    /// Objects waiting for the writer (ready or waiting for a retry).
    pub write_queue_depth: IntGauge,
    /// Frames refused during a session, by cluster and reason.
    pub frames_rejected: IntCounterVec,
    /// Reports refused (not stored, but acked and the agent told why), by
    /// cluster and reason (`uplink_protocol::Rejected`'s reasons); the rest
    /// of their frame is stored.
    pub rejected_deltas: IntCounterVec,
    /// Objects KCP placed on each watched cluster.
    pub placements: IntGaugeVec,
    /// Objects of each synced type placed on at least one SyncTarget, as the
    /// hub's one watch of the type keeps them (its memory grows with this).
    pub placed_objects: IntGaugeVec,
    /// Reports kept aside until placement can judge them, all clusters.
    pub held_reports: IntGauge,
    /// Failed lists and watches of SyncTargets and placements (each retried).
    pub placement_watch_failures: IntCounter,
    /// Objects placed on each cluster that its agent applies (downward lane).
    pub downstream_objects: IntGaugeVec,
    /// Downward changes waiting for their agents' acknowledgement, all clusters.
    pub downstream_queue: IntGauge,
    /// Finalizer writes to KCP, by result.
    pub finalizer_writes: IntCounterVec,
    /// Conflicts present on objects now, by type and strategy.
    pub conflicts: IntGaugeVec,
    /// Conflicts that appeared, by type and strategy.
    pub conflicts_total: IntCounterVec,
    /// 1 for each cluster's current state (`Ready`, `Stale`, `Offline`), 0
    /// for the others.
    pub cluster_state: IntGaugeVec,
    /// `Throttle` frames sent, by cluster.
    pub throttles: IntCounterVec,
    /// SyncTarget writes to KCP, by result.
    pub synctarget_writes: IntCounterVec,
    /// Heartbeat reports (clock and summary) refused, by reason
    /// (`capacity::validate::refused_reason`).
    pub reports_refused: IntCounterVec,
    /// Objects waiting for the writer on behalf of each cluster (only
    /// clusters with a backlog have a series).
    pub write_queue_cluster_depth: IntGaugeVec,
    /// How long ready objects waited for their turn at the writer.
    pub write_queue_wait: Histogram,
    /// How long each object that changed settled before it was ready to
    /// be written (the base settle time, or longer for an object that kept
    /// changing).
    pub write_settle: Histogram,
    /// Connections to the HTTP endpoint open now.
    pub http_connections: IntGauge,
    /// HTTP connections closed unanswered because `--http-max-connections`
    /// were open.
    pub http_connections_refused: IntCounter,
    /// Cluster state changes the hub acted on, by the state entered.
    pub cluster_state_changes: IntCounterVec,
    /// Objects sent back to the writer because a cluster's state change
    /// changed their merge, by the state entered.
    pub cluster_state_requeues: IntCounterVec,
    /// Event series reports received (protocol version 3), all clusters.
    pub events_received: IntCounter,
    /// Event series reports refused by the session, by reason
    /// ([`event_refused`], or the placement verdict's reason).
    pub events_refused: IntCounterVec,
    /// Event series reports accepted and then lost, by reason
    /// ([`event_dropped`]).
    pub events_dropped: IntCounterVec,
    /// Event writes to KCP, by result ([`event_write`]).
    pub event_writes: IntCounterVec,
    /// Event series waiting for the event writer.
    pub event_queue_depth: IntGauge,
    /// Objects each cluster upsyncs that KCP holds (the UID map).
    pub upsynced_objects: IntGaugeVec,
    /// Upsync writes to KCP, by result ([`upsync_write`]).
    pub upsync_writes: IntCounterVec,
    /// Upsync reports waiting for the upsync writer.
    pub upsync_queue_depth: IntGauge,
}

/// Labels of `uplink_hub_upsync_writes_total{result}`.
pub mod upsync_write {
    /// A new upstream object.
    pub const CREATED: &str = "created";
    /// Left to the replica holding the object's shard: dropped here.
    pub const NOT_HELD: &str = "not_held";
    /// An upstream object updated (PUT).
    pub const UPDATED: &str = "updated";
    /// An upstream object deleted: its last upsyncing cluster let go, or
    /// its cluster's object was deleted and created anew.
    pub const DELETED: &str = "deleted";
    /// Nothing to change upstream.
    pub const UNCHANGED: &str = "unchanged";
    /// 409: read again and written again.
    pub const CONFLICT: &str = "conflict";
    /// Throttled, a server error, no answer, or waiting on placement:
    /// tried again after a backoff.
    pub const RETRIED: &str = "retried";
    /// No longer allowed by placement, or refused by KCP (4xx): dropped.
    pub const REFUSED: &str = "refused";
    /// Not written: the `UpstreamSync` gate is off.
    pub const DISABLED: &str = "disabled";
    /// Sent with `dryRun=All` (`--dry-run`).
    pub const DRY_RUN: &str = "dry_run";
    pub const ALL: &[&str] = &[
        CREATED, UPDATED, DELETED, UNCHANGED, CONFLICT, RETRIED, REFUSED, DISABLED, DRY_RUN,
    ];
}

/// Labels of `uplink_hub_events_refused_total{reason}` besides the
/// placement verdicts' (`uplink_protocol::Rejected`'s).
pub mod event_refused {
    /// Not (yet) placed on the cluster: an event is never held.
    pub const NOT_PLACED: &str = "not_placed";
    /// Not an event kube-apiserver would take (type, reason, count, names).
    pub const INVALID: &str = "invalid";
}

/// Labels of `uplink_hub_events_dropped_total{reason}`.
pub mod event_dropped {
    /// Over the cluster's event rate.
    pub const RATE_LIMITED: &str = "rate_limited";
    /// The oldest waiting series, pushed out of the full event queue.
    pub const QUEUE_FULL: &str = "queue_full";
    /// KCP refused the write, or it kept failing.
    pub const WRITE_FAILED: &str = "write_failed";
    pub const ALL: &[&str] = &[RATE_LIMITED, QUEUE_FULL, WRITE_FAILED];
}

/// Labels of `uplink_hub_event_writes_total{result}`.
pub mod event_write {
    /// A new Event.
    pub const CREATED: &str = "created";
    /// An existing Event's series.
    pub const UPDATED: &str = "updated";
    /// Nothing newer than what was written.
    pub const UNCHANGED: &str = "unchanged";
    /// Sent with `dryRun=All`.
    pub const DRY_RUN: &str = "dry_run";
    /// Not written: the `UpstreamSync` gate is off.
    pub const DISABLED: &str = "disabled";
    /// Throttled, a server error or no answer: tried again.
    pub const RETRIED: &str = "retried";
    /// Refused by KCP (a 4xx other than the ones handled): dropped.
    pub const REFUSED: &str = "refused";
    /// Still failing after the last retry: dropped.
    pub const FAILED: &str = "failed";
    pub const ALL: &[&str] = &[
        CREATED, UPDATED, UNCHANGED, DRY_RUN, DISABLED, RETRIED, REFUSED, FAILED,
    ];
}

/// Labels of `uplink_hub_kcp_writes_total{result}`.
pub mod write_result {
    pub const SUCCESS: &str = "success";
    pub const CONFLICT: &str = "conflict";
    pub const NOT_FOUND: &str = "not_found";
    pub const THROTTLED: &str = "throttled";
    pub const ERROR: &str = "error";
    pub const DRY_RUN: &str = "dry_run";
    /// Not written: an object of an upsynced type that no cluster upsyncs
    /// upstream (KCP's own, or not created yet).
    pub const NOT_UPSYNCED: &str = "not_upsynced";
    /// Not written: another replica holds the shard of the object's
    /// workspace (or this one's fence closed meanwhile).
    pub const NOT_HELD: &str = "not_held";
}

/// Labels of `uplink_hub_handshake_failures_total{reason}`.
pub mod handshake_reason {
    pub const TLS: &str = "tls";
    /// No finished TLS handshake within `--tls-handshake-timeout`.
    pub const TLS_TIMEOUT: &str = "tls_timeout";
    /// Closed in its TLS handshake to make room: `--max-tls-handshakes`.
    pub const TOO_MANY_HANDSHAKES: &str = "too_many_handshakes";
    /// Closed in its TLS handshake to make room for a newer connection from
    /// the same source: `--max-tls-handshakes-per-source`.
    pub const TOO_MANY_FROM_SOURCE: &str = "too_many_from_source";
    /// Closed while waiting for its `Hello` to make room: `--max-awaiting-hello`.
    pub const TOO_MANY_AWAITING_HELLO: &str = "too_many_awaiting_hello";
    /// Closed while waiting for its `Hello` to make room for a newer
    /// connection of the same cluster: `--max-awaiting-hello-per-cluster`.
    pub const TOO_MANY_FOR_CLUSTER: &str = "too_many_for_cluster";
    pub const WEBSOCKET: &str = "websocket";
    pub const NO_IDENTITY: &str = "no_identity";
    pub const HELLO_TIMEOUT: &str = "hello_timeout";
    pub const MALFORMED: &str = "malformed";
    pub const UNEXPECTED_FRAME: &str = "unexpected_frame";
    pub const UNSUPPORTED_VERSION: &str = "unsupported_version";
    pub const IDENTITY_MISMATCH: &str = "identity_mismatch";
    pub const CLOSED: &str = "closed";
}

/// Labels of `uplink_hub_handshakes_in_progress{phase}`.
pub mod handshake_phase {
    /// Accepted, TLS handshake not finished.
    pub const TLS: &str = "tls";
    /// TLS finished, `Hello` not received yet.
    pub const HELLO: &str = "hello";
}

impl Metrics {
    /// Creates the metrics in a fresh registry.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let agents_connected = IntGauge::new(
            "uplink_hub_agents_connected",
            "Agents with an established session.",
        )?;
        let heartbeats = IntCounterVec::new(
            Opts::new("uplink_hub_heartbeats_total", "Heartbeats received."),
            &["cluster"],
        )?;
        let last_heartbeat = GaugeVec::new(
            Opts::new(
                "uplink_hub_last_heartbeat_timestamp_seconds",
                "When the cluster's last heartbeat arrived, in Unix seconds (hub clock).",
            ),
            &["cluster"],
        )?;
        let deltas_received = IntCounterVec::new(
            Opts::new(
                "uplink_hub_deltas_received_total",
                "Status deltas received, in batches and snapshots.",
            ),
            &["cluster"],
        )?;
        let kcp_writes = IntCounterVec::new(
            Opts::new(
                "uplink_hub_kcp_writes_total",
                "KCP status writes, by result.",
            ),
            &["result"],
        )?;
        let kcp_write_duration = Histogram::with_opts(
            HistogramOpts::new(
                "uplink_hub_kcp_write_duration_seconds",
                "Duration of one KCP status write.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )?;
        let handshake_failures = IntCounterVec::new(
            Opts::new(
                "uplink_hub_handshake_failures_total",
                "Connections refused before a session was established, by reason.",
            ),
            &["reason"],
        )?;
        let handshakes_in_progress = IntGaugeVec::new(
            Opts::new(
                "uplink_hub_handshakes_in_progress",
                "Tunnel connections accepted that are not a session yet, by phase: tls (TLS handshake not finished) or hello (waiting for the agent's Hello).",
            ),
            &["phase"],
        )?;
        let store_objects = IntGauge::new(
            "uplink_hub_store_objects",
            "Objects in the hub's store, whatever the number of clusters reporting them.",
        )?;
        let store_bytes = IntGauge::new(
            "uplink_hub_store_bytes",
            "Bytes the store's status reports take (status text, names, a fixed overhead per report), all clusters.",
        )?;
        let store_cluster_bytes = IntGaugeVec::new(
            Opts::new(
                "uplink_hub_store_cluster_bytes",
                "Bytes the store's status reports of the cluster take; over --max-status-bytes-per-cluster its reports are refused.",
            ),
            &["cluster"],
        )?;
        let store_cluster_objects = IntGaugeVec::new(
            Opts::new(
                "uplink_hub_store_cluster_objects",
                "Objects the store holds for the cluster (entries and held reports).",
            ),
            &["cluster"],
        )?;
        let write_queue_depth = IntGauge::new(
            "uplink_hub_kcp_write_queue_depth",
            "Objects waiting to be written to KCP (ready or waiting for a retry).",
        )?;
        let frames_rejected = IntCounterVec::new(
            Opts::new(
                "uplink_hub_frames_rejected_total",
                "Frames refused during a session, by cluster and reason.",
            ),
            &["cluster", "reason"],
        )?;
        let rejected_deltas = IntCounterVec::new(
            Opts::new(
                "uplink_hub_rejected_deltas_total",
                "Reports refused (not stored, but acked and the agent told), by cluster and reason.",
            ),
            &["cluster", "reason"],
        )?;
        let placements = IntGaugeVec::new(
            Opts::new(
                "uplink_hub_placements",
                "Objects KCP placed on the cluster, as the hub's placement watches see them.",
            ),
            &["cluster"],
        )?;
        let placed_objects = IntGaugeVec::new(
            Opts::new(
                "uplink_hub_placed_objects",
                "Objects of the type placed on at least one SyncTarget, kept by the hub's watch of the type.",
            ),
            &["resource"],
        )?;
        let held_reports = IntGauge::new(
            "uplink_hub_held_reports",
            "Reports kept aside until placement can judge them (all clusters).",
        )?;
        let downstream_objects = IntGaugeVec::new(
            Opts::new(
                "uplink_hub_downstream_objects",
                "Objects placed on the cluster that the hub sends down to it (its agent applies their type).",
            ),
            &["cluster"],
        )?;
        let downstream_queue = IntGauge::new(
            "uplink_hub_downstream_queue_entries",
            "Downward changes waiting for their agents' acknowledgement (all clusters).",
        )?;
        let finalizer_writes = IntCounterVec::new(
            Opts::new(
                "uplink_hub_finalizer_writes_total",
                "Writes of the hub's finalizers on placed objects in KCP, by result.",
            ),
            &["result"],
        )?;
        let placement_watch_failures = IntCounter::new(
            "uplink_hub_placement_watch_failures_total",
            "Failed lists and watches of SyncTargets and placed objects in KCP (each retried).",
        )?;

        let conflicts = IntGaugeVec::new(
            Opts::new(
                "uplink_hub_conflicts",
                "Conflicts present on objects now (open or resolved by the strategy), by type and strategy.",
            ),
            &["type", "strategy"],
        )?;
        let conflicts_total = IntCounterVec::new(
            Opts::new(
                "uplink_hub_conflicts_total",
                "Conflicts that appeared on objects, by type and strategy.",
            ),
            &["type", "strategy"],
        )?;

        let cluster_state = IntGaugeVec::new(
            Opts::new(
                "uplink_hub_cluster_state",
                "1 for the cluster's current state (Ready, Stale, Offline), 0 for the others.",
            ),
            &["cluster", "state"],
        )?;
        let throttles = IntCounterVec::new(
            Opts::new(
                "uplink_hub_throttles_total",
                "Throttle frames sent to agents because the KCP writer fell behind.",
            ),
            &["cluster"],
        )?;
        let synctarget_writes = IntCounterVec::new(
            Opts::new(
                "uplink_hub_synctarget_writes_total",
                "SyncTarget status writes to KCP, by result.",
            ),
            &["result"],
        )?;

        let reports_refused = IntCounterVec::new(
            Opts::new(
                "uplink_hub_reports_refused_total",
                "Heartbeat reports (agent clock and cluster summary) refused, by reason.",
            ),
            &["reason"],
        )?;
        for reason in crate::capacity::validate::refused_reason::ALL {
            reports_refused.with_label_values(&[reason]);
        }
        registry.register(Box::new(reports_refused.clone()))?;
        let write_queue_cluster_depth = IntGaugeVec::new(
            Opts::new(
                "uplink_hub_write_queue_cluster_depth",
                "Objects waiting for the KCP writer on behalf of the cluster (clusters with a backlog only).",
            ),
            &["cluster"],
        )?;
        registry.register(Box::new(write_queue_cluster_depth.clone()))?;
        let write_queue_wait = Histogram::with_opts(
            HistogramOpts::new(
                "uplink_hub_write_queue_wait_seconds",
                "How long a ready object waited for its turn at the KCP writer.",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
                1800.0,
            ]),
        )?;
        registry.register(Box::new(write_queue_wait.clone()))?;
        let write_settle = Histogram::with_opts(
            HistogramOpts::new(
                "uplink_hub_write_settle_seconds",
                "How long an object that changed waited for further changes before it was ready to be written: the base settle time, or longer (up to --write-settle-max) for one that kept changing.",
            )
            .buckets(vec![
                0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
            ]),
        )?;
        registry.register(Box::new(write_settle.clone()))?;
        let cluster_state_changes = IntCounterVec::new(
            Opts::new(
                "uplink_hub_cluster_state_changes_total",
                "Cluster state changes (Ready, Stale, Offline) the hub re-merged the cluster's objects for, by the state entered.",
            ),
            &["state"],
        )?;
        let cluster_state_requeues = IntCounterVec::new(
            Opts::new(
                "uplink_hub_cluster_state_requeues_total",
                "Objects written again because a cluster's state change changed their merged status or conflicts, by the state entered.",
            ),
            &["state"],
        )?;
        for state in crate::health::ClusterState::ALL {
            cluster_state_changes.with_label_values(&[state.name()]);
            cluster_state_requeues.with_label_values(&[state.name()]);
        }
        let http_connections = IntGauge::new(
            "uplink_hub_http_connections",
            "Connections to the HTTP endpoint (API, metrics, probes) open now.",
        )?;
        let http_connections_refused = IntCounter::new(
            "uplink_hub_http_connections_refused_total",
            "HTTP connections closed unanswered because --http-max-connections were open.",
        )?;
        let events_received = IntCounter::new(
            "uplink_hub_events_received_total",
            "Event series reports received from agents (protocol version 3).",
        )?;
        let events_refused = IntCounterVec::new(
            Opts::new(
                "uplink_hub_events_refused_total",
                "Event series reports refused: about an object not placed on the reporting cluster as named (not_placed, or the placement refusal's reason), or invalid.",
            ),
            &["reason"],
        )?;
        for reason in [event_refused::NOT_PLACED, event_refused::INVALID] {
            events_refused.with_label_values(&[reason]);
        }
        let events_dropped = IntCounterVec::new(
            Opts::new(
                "uplink_hub_events_dropped_total",
                "Event series reports accepted and then lost: over the cluster's rate, pushed out of the full queue, or not written to KCP.",
            ),
            &["reason"],
        )?;
        for reason in event_dropped::ALL {
            events_dropped.with_label_values(&[reason]);
        }
        let event_writes = IntCounterVec::new(
            Opts::new(
                "uplink_hub_event_writes_total",
                "Event writes to KCP (events.k8s.io/v1), by result.",
            ),
            &["result"],
        )?;
        for result in event_write::ALL {
            event_writes.with_label_values(&[result]);
        }
        let event_queue_depth = IntGauge::new(
            "uplink_hub_event_queue_depth",
            "Event series waiting for the event writer (bounded by --event-queue-size).",
        )?;
        registry.register(Box::new(events_received.clone()))?;
        registry.register(Box::new(events_refused.clone()))?;
        registry.register(Box::new(events_dropped.clone()))?;
        registry.register(Box::new(event_writes.clone()))?;
        registry.register(Box::new(event_queue_depth.clone()))?;
        let upsynced_objects = IntGaugeVec::new(
            Opts::new(
                "uplink_hub_upsynced_objects",
                "Objects a cluster upsyncs that KCP holds, per cluster (the hub's UID map).",
            ),
            &["cluster"],
        )?;
        let upsync_writes = IntCounterVec::new(
            Opts::new(
                "uplink_hub_upsync_writes_total",
                "Writes of upsynced objects to KCP, by result.",
            ),
            &["result"],
        )?;
        for result in upsync_write::ALL {
            upsync_writes.with_label_values(&[result]);
        }
        let upsync_queue_depth = IntGauge::new(
            "uplink_hub_upsync_queue_depth",
            "Upsync reports waiting for the upsync writer (bounded by --upsync-queue-size).",
        )?;
        registry.register(Box::new(upsynced_objects.clone()))?;
        registry.register(Box::new(upsync_writes.clone()))?;
        registry.register(Box::new(upsync_queue_depth.clone()))?;
        registry.register(Box::new(http_connections.clone()))?;
        registry.register(Box::new(http_connections_refused.clone()))?;
        registry.register(Box::new(cluster_state_changes.clone()))?;
        registry.register(Box::new(cluster_state_requeues.clone()))?;

        registry.register(Box::new(agents_connected.clone()))?;
        registry.register(Box::new(cluster_state.clone()))?;
        registry.register(Box::new(throttles.clone()))?;
        registry.register(Box::new(synctarget_writes.clone()))?;
        registry.register(Box::new(conflicts.clone()))?;
        registry.register(Box::new(conflicts_total.clone()))?;
        registry.register(Box::new(heartbeats.clone()))?;
        registry.register(Box::new(last_heartbeat.clone()))?;
        registry.register(Box::new(deltas_received.clone()))?;
        registry.register(Box::new(kcp_writes.clone()))?;
        registry.register(Box::new(kcp_write_duration.clone()))?;
        registry.register(Box::new(handshake_failures.clone()))?;
        registry.register(Box::new(handshakes_in_progress.clone()))?;
        registry.register(Box::new(store_objects.clone()))?;
        registry.register(Box::new(store_bytes.clone()))?;
        registry.register(Box::new(store_cluster_bytes.clone()))?;
        registry.register(Box::new(store_cluster_objects.clone()))?;
        registry.register(Box::new(write_queue_depth.clone()))?;
        registry.register(Box::new(frames_rejected.clone()))?;
        registry.register(Box::new(rejected_deltas.clone()))?;
        registry.register(Box::new(placements.clone()))?;
        registry.register(Box::new(placed_objects.clone()))?;
        registry.register(Box::new(held_reports.clone()))?;
        registry.register(Box::new(placement_watch_failures.clone()))?;
        registry.register(Box::new(downstream_objects.clone()))?;
        registry.register(Box::new(downstream_queue.clone()))?;
        registry.register(Box::new(finalizer_writes.clone()))?;

        Ok(Self {
            registry,
            agents_connected,
            heartbeats,
            last_heartbeat,
            deltas_received,
            kcp_writes,
            kcp_write_duration,
            handshake_failures,
            handshakes_in_progress,
            store_objects,
            store_bytes,
            store_cluster_bytes,
            store_cluster_objects,
            write_queue_depth,
            frames_rejected,
            rejected_deltas,
            placements,
            placed_objects,
            held_reports,
            placement_watch_failures,
            downstream_objects,
            downstream_queue,
            finalizer_writes,
            reports_refused,
            write_queue_cluster_depth,
            write_queue_wait,
            write_settle,
            http_connections,
            http_connections_refused,
            cluster_state_changes,
            cluster_state_requeues,
            conflicts,
            conflicts_total,
            cluster_state,
            throttles,
            synctarget_writes,
            events_received,
            events_refused,
            events_dropped,
            event_writes,
            event_queue_depth,
            upsynced_objects,
            upsync_writes,
            upsync_queue_depth,
        })
    }

    /// Removes every series labelled with `cluster` (a cluster the hub
    /// forgot: [`crate::labels`]); returns how many.
    pub fn forget_cluster(&self, cluster: &str) -> usize {
        use crate::labels::remove_cluster;
        remove_cluster(&self.heartbeats, cluster)
            + remove_cluster(&self.last_heartbeat, cluster)
            + remove_cluster(&self.deltas_received, cluster)
            + remove_cluster(&self.frames_rejected, cluster)
            + remove_cluster(&self.rejected_deltas, cluster)
            + remove_cluster(&self.placements, cluster)
            + remove_cluster(&self.downstream_objects, cluster)
            + remove_cluster(&self.cluster_state, cluster)
            + remove_cluster(&self.throttles, cluster)
            + remove_cluster(&self.store_cluster_bytes, cluster)
            + remove_cluster(&self.store_cluster_objects, cluster)
            + remove_cluster(&self.write_queue_cluster_depth, cluster)
            + remove_cluster(&self.upsynced_objects, cluster)
    }

    /// The registry holding every metric of this hub.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        uplink_ops::metrics::encode(&self.registry)
    }
}
