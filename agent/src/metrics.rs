//! The agent's Prometheus metrics, in a registry owned by one agent instance
//! (never the process-global one: tests run several agents in one process).

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Every metric the agent exports, registered in its own [`Registry`].
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Connection attempts after the first one.
    pub reconnects: IntCounter,
    /// Sessions established (after `Welcome`) now, over every hub replica:
    /// 1 while the one hub's session is up when it is not replicated.
    pub connected: IntGauge,
    /// 1 while the session with a hub replica (its URL, or its address
    /// when resolved from a Service name) is established, by replica.
    pub hub_sessions: IntGaugeVec,
    /// Shards routed to each replica's session (see [`crate::routes`]).
    pub routed_shards: IntGaugeVec,
    /// Outbox entries waiting because no replica holds their shard.
    pub outbox_unrouted: IntGauge,
    /// Sessions established, by mode (`resume` / `snapshot`).
    pub sessions: IntCounterVec,
    /// Outbox entries waiting for the hub's acknowledgement.
    pub outbox_entries: IntGauge,
    /// Objects the outbox remembers (the baseline for "did the status change").
    pub outbox_objects: IntGauge,
    /// Times an entry was admitted while the outbox was over `--outbox-limit`.
    pub outbox_overflow: IntCounter,
    /// Deltas sent in `Deltas` frames (resends included).
    pub deltas_sent: IntCounter,
    /// `Deltas` frames sent (deltas sent / frames = the batching achieved).
    pub delta_frames_sent: IntCounter,
    /// Objects sent in snapshots.
    pub snapshot_objects: IntCounter,
    /// Deltas never sent because they break the hub's limits, by reason.
    pub deltas_dropped: IntCounterVec,
    /// Reports the hub refused (it says why in its `Ack`), by reason.
    pub rejected_deltas: IntCounterVec,
    /// Heartbeats sent.
    pub heartbeats_sent: IntCounter,
    /// `Error` frames received from the hub, by code.
    pub hub_errors: IntCounterVec,
    /// Namespaces whose `kcp.io/namespace-locator` could not be parsed.
    pub locator_errors: IntCounter,
    /// Watch events received, by resource.
    pub watch_events: IntCounterVec,
    /// Watch errors (the watch retries by itself), by resource.
    pub watch_errors: IntCounterVec,
    /// 1 when the watch of a resource completed its initial list, by resource.
    pub watch_ready: IntGaugeVec,
    /// Watch events waiting for the pipeline (bounded queue).
    pub watch_queue: IntGauge,
    /// Downward deltas by outcome: `applied`, `deleted`, `conflict`,
    /// `invalid`, `forbidden`, `malformed`, and `error` for each transient
    /// failure that is retried (see [`crate::apply::ApplyResult`]).
    pub applies: IntCounterVec,
    /// Seconds from receiving a downward delta to its outcome (queueing and
    /// retries included).
    pub apply_duration: Histogram,
    /// Downward deltas received from the hub and not yet taken up by an
    /// apply worker.
    pub downward_queue: IntGauge,
    /// Connections to the HTTP endpoint (metrics, probes) open now.
    pub http_connections: IntGauge,
    /// HTTP connections closed unanswered past the connection cap.
    pub http_connections_refused: IntCounter,
    /// The notAfter of the client certificate in use, Unix seconds.
    pub certificate_expiry: IntGauge,
    /// Changes of the TLS files on disk, by result ([`reload_result`]).
    pub certificate_reloads: IntCounterVec,
    /// Downstream Events about synced objects, read into their series.
    pub events_observed: IntCounter,
    /// Event series reports sent to the hub.
    pub events_sent: IntCounter,
    /// Events or reports that went nowhere, by reason
    /// ([`crate::events::Dropped::reason`], `unreadable`, `frame_limit`).
    pub events_dropped: IntCounterVec,
    /// Event series waiting to be sent.
    pub events_pending: IntGauge,
    /// Downstream Events queued for the pipeline (bounded; read only while
    /// no status change waits).
    pub event_queue: IntGauge,
}

/// Results of `uplink_agent_certificate_reloads_total`.
pub mod reload_result {
    /// The new material is used from the next connection.
    pub const SUCCESS: &str = "success";
    /// The new material is unusable; the previous stays.
    pub const FAILURE: &str = "failure";
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let m = Self {
            reconnects: counter(
                "uplink_agent_reconnects_total",
                "Connection attempts to the hub after the first one.",
            ),
            connected: gauge(
                "uplink_agent_connected",
                "Sessions with hub replicas established now (1 with a single hub).",
            ),
            hub_sessions: gauge_vec(
                "uplink_agent_hub_session_connected",
                "1 while the session with this hub replica is established.",
                &["replica"],
            ),
            routed_shards: gauge_vec(
                "uplink_agent_routed_shards",
                "Shards whose changes go to this hub replica's session.",
                &["replica"],
            ),
            outbox_unrouted: gauge(
                "uplink_agent_outbox_unrouted_entries",
                "Outbox entries waiting because no hub replica holds their shard.",
            ),
            sessions: counter_vec(
                "uplink_agent_sessions_total",
                "Sessions established with the hub, by mode.",
                &["mode"],
            ),
            outbox_entries: gauge(
                "uplink_agent_outbox_entries",
                "Outbox entries not yet acknowledged by the hub.",
            ),
            outbox_objects: gauge(
                "uplink_agent_outbox_objects",
                "Objects whose last reported state the outbox remembers.",
            ),
            outbox_overflow: counter(
                "uplink_agent_outbox_overflow_total",
                "Entries admitted while the outbox held more unacknowledged entries than --outbox-limit.",
            ),
            deltas_sent: counter(
                "uplink_agent_deltas_sent_total",
                "Deltas sent to the hub, resends included.",
            ),
            delta_frames_sent: counter(
                "uplink_agent_delta_frames_sent_total",
                "Deltas frames sent to the hub; deltas sent divided by this is the batching achieved.",
            ),
            snapshot_objects: counter(
                "uplink_agent_snapshot_objects_total",
                "Objects sent in snapshots.",
            ),
            deltas_dropped: counter_vec(
                "uplink_agent_deltas_dropped_total",
                "Deltas not sent because they exceed the hub's limits, by reason.",
                &["reason"],
            ),
            rejected_deltas: counter_vec(
                "uplink_agent_rejected_deltas_total",
                "Reports the hub refused (e.g. not_placed: KCP did not place the object on this cluster), by reason.",
                &["reason"],
            ),
            heartbeats_sent: counter(
                "uplink_agent_heartbeats_sent_total",
                "Heartbeats sent to the hub.",
            ),
            hub_errors: counter_vec(
                "uplink_agent_hub_errors_total",
                "Error frames received from the hub, by code.",
                &["code"],
            ),
            locator_errors: counter(
                "uplink_agent_locator_errors_total",
                "Namespace locator annotations that could not be parsed (their objects are not synced).",
            ),
            watch_events: counter_vec(
                "uplink_agent_watch_events_total",
                "Watch events received, by resource.",
                &["resource"],
            ),
            watch_errors: counter_vec(
                "uplink_agent_watch_errors_total",
                "Watch errors, by resource.",
                &["resource"],
            ),
            watch_ready: gauge_vec(
                "uplink_agent_watch_ready",
                "1 when the watch of the resource completed its initial list.",
                &["resource"],
            ),
            watch_queue: gauge(
                "uplink_agent_watch_queue_events",
                "Watch events queued for the pipeline.",
            ),
            applies: counter_vec(
                "uplink_agent_applies_total",
                "Downward deltas by outcome (error: a transient failure, retried).",
                &["result"],
            ),
            apply_duration: histogram(
                "uplink_agent_apply_duration_seconds",
                "Seconds from receiving a downward delta to its outcome, queueing and retries included.",
                &[
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    30.0,
                ],
            ),
            downward_queue: gauge(
                "uplink_agent_downward_queue_deltas",
                "Downward deltas received and not yet taken up by an apply worker.",
            ),
            http_connections: gauge(
                "uplink_agent_http_connections",
                "Connections to the HTTP endpoint (metrics, probes) open now.",
            ),
            http_connections_refused: counter(
                "uplink_agent_http_connections_refused_total",
                "HTTP connections closed unanswered because the connection cap was reached.",
            ),
            certificate_expiry: gauge(
                "uplink_agent_certificate_expiry_timestamp_seconds",
                "When the client certificate in use expires (its notAfter, Unix seconds).",
            ),
            certificate_reloads: counter_vec(
                "uplink_agent_certificate_reloads_total",
                "Changes of --tls-cert, --tls-key or --hub-ca on disk, by result: success (used from the next connection), failure (the previous material stays).",
                &["result"],
            ),
            events_observed: counter(
                "uplink_agent_events_observed_total",
                "Downstream Events about synced objects, folded into their series.",
            ),
            events_sent: counter(
                "uplink_agent_events_sent_total",
                "Event series reports sent to the hub.",
            ),
            events_dropped: counter_vec(
                "uplink_agent_events_dropped_total",
                "Events or event reports that went nowhere, by reason: too_many_series, lane_full (the oldest waiting report), unreadable, frame_limit.",
                &["reason"],
            ),
            event_queue: gauge(
                "uplink_agent_event_queue_events",
                "Downstream Events queued for the pipeline, behind status changes.",
            ),
            events_pending: gauge(
                "uplink_agent_events_pending",
                "Event series waiting to be sent (at most 1,000; past that the oldest waiting report is dropped).",
            ),
            registry,
        };
        for result in [reload_result::SUCCESS, reload_result::FAILURE] {
            m.certificate_reloads.with_label_values(&[result]);
        }
        m.register_all();
        m
    }

    fn register_all(&self) {
        let collectors: [Box<dyn prometheus::core::Collector>; 33] = [
            Box::new(self.reconnects.clone()),
            Box::new(self.connected.clone()),
            Box::new(self.hub_sessions.clone()),
            Box::new(self.routed_shards.clone()),
            Box::new(self.outbox_unrouted.clone()),
            Box::new(self.sessions.clone()),
            Box::new(self.outbox_entries.clone()),
            Box::new(self.outbox_objects.clone()),
            Box::new(self.outbox_overflow.clone()),
            Box::new(self.deltas_sent.clone()),
            Box::new(self.delta_frames_sent.clone()),
            Box::new(self.snapshot_objects.clone()),
            Box::new(self.deltas_dropped.clone()),
            Box::new(self.rejected_deltas.clone()),
            Box::new(self.heartbeats_sent.clone()),
            Box::new(self.hub_errors.clone()),
            Box::new(self.locator_errors.clone()),
            Box::new(self.watch_events.clone()),
            Box::new(self.watch_errors.clone()),
            Box::new(self.watch_ready.clone()),
            Box::new(self.watch_queue.clone()),
            Box::new(self.applies.clone()),
            Box::new(self.apply_duration.clone()),
            Box::new(self.downward_queue.clone()),
            Box::new(self.http_connections.clone()),
            Box::new(self.http_connections_refused.clone()),
            Box::new(self.certificate_expiry.clone()),
            Box::new(self.certificate_reloads.clone()),
            Box::new(self.events_observed.clone()),
            Box::new(self.events_sent.clone()),
            Box::new(self.events_dropped.clone()),
            Box::new(self.events_pending.clone()),
            Box::new(self.event_queue.clone()),
        ];
        for collector in collectors {
            // Registration fails only for duplicate or inconsistent
            // descriptors; the names above are distinct constants, and a fresh
            // registry holds nothing else.
            if let Err(e) = self.registry.register(collector) {
                tracing::error!(error = %e, "registering agent metric");
            }
        }
    }

    /// The registry, e.g. to add collectors or gather in tests.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// All metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        uplink_ops::metrics::encode(&self.registry)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

// The constructors below fail only on invalid metric names or label names;
// all of them are string constants in this file, checked by the test below.

#[allow(clippy::expect_used)]
fn counter(name: &str, help: &str) -> IntCounter {
    IntCounter::new(name, help).expect("valid metric name")
}

#[allow(clippy::expect_used)]
fn gauge(name: &str, help: &str) -> IntGauge {
    IntGauge::new(name, help).expect("valid metric name")
}

#[allow(clippy::expect_used)]
fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric name")
}

#[allow(clippy::expect_used)]
fn histogram(name: &str, help: &str, buckets: &[f64]) -> Histogram {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
        .expect("valid metric name and increasing buckets")
}

#[allow(clippy::expect_used)]
fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric name")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_agents_have_separate_registries() {
        let a = Metrics::new();
        let b = Metrics::new();
        a.reconnects.inc();
        assert!(a.render().contains("uplink_agent_reconnects_total 1"));
        assert!(b.render().contains("uplink_agent_reconnects_total 0"));
        assert!(a.render().contains("uplink_agent_outbox_entries 0"));
    }
}
