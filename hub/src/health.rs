//! What the hub knows about each cluster's link: connected or not, its agent
//! session, its last heartbeat and how far its clock is from the hub's.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use uplink_protocol::ClusterSummary;

use crate::metrics::Metrics;
use crate::store::ClusterName;

/// Weight of a new sample in the clock skew estimate.
const SKEW_SMOOTHING: f64 = 0.2;

/// One cluster's link to the hub.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ClusterRecord {
    /// Whether an agent session is established now.
    pub connected: bool,
    /// The hub's id of the current connection (ends only its own record).
    #[serde(skip)]
    pub connection: Option<u64>,
    /// The agent's session id, from its last `Hello`.
    pub session_id: Option<String>,
    pub agent_version: Option<String>,
    /// When the current (or last) session started, on the hub clock.
    #[serde(skip)]
    pub connected_at: Option<SystemTime>,
    /// When the last heartbeat arrived, on the hub clock.
    #[serde(skip)]
    pub last_heartbeat: Option<SystemTime>,
    /// The heartbeat interval told to the current (or last) session, when
    /// a replica asked for other than the configured one (keepalives from
    /// an agent whose health another replica writes): the states follow
    /// it. `None`: the configured interval.
    #[serde(skip)]
    pub heartbeat_interval: Option<Duration>,
    /// When the session was last told a shorter interval: Stale counts
    /// three of them from no earlier than this (the agent needs time to
    /// hear of it).
    #[serde(skip)]
    pub interval_shrunk_at: Option<SystemTime>,
    /// Estimated `hub clock - agent clock`, in ms (includes half a round trip).
    pub clock_skew_ms: Option<i64>,
    /// The latest cluster summary the agent sent.
    pub summary: Option<ClusterSummary>,
    /// Deltas received from the cluster since the hub started (as
    /// `uplink_hub_deltas_received_total`); the hub API shows it so a
    /// reader can take a rate.
    #[serde(skip)]
    pub deltas_received: u64,
}

/// How a cluster's link looks from the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ClusterState {
    /// Heartbeats arrive.
    Ready,
    /// No heartbeat for three intervals: the configured interval, or the
    /// one the replica asked of the cluster's session
    /// ([`ClusterRecord::heartbeat_interval`]).
    Stale,
    /// No heartbeat for longer than the offline grace, or never.
    Offline,
}

impl ClusterState {
    pub const ALL: [ClusterState; 3] = [Self::Ready, Self::Stale, Self::Offline];

    /// Its name in the hub API and its label value in metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ready => "Ready",
            Self::Stale => "Stale",
            Self::Offline => "Offline",
        }
    }
}

/// The records of every cluster that ever connected.
#[derive(Debug)]
pub struct Health {
    records: Mutex<BTreeMap<ClusterName, ClusterRecord>>,
    metrics: Arc<Metrics>,
}

impl Health {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            records: Mutex::default(),
            metrics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<ClusterName, ClusterRecord>> {
        // Each update is a few field assignments; a poisoned lock holds valid data.
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An agent session for `cluster` began on connection `connection`.
    pub fn session_started(
        &self,
        cluster: &str,
        connection: u64,
        session_id: &str,
        agent_version: &str,
    ) {
        let mut records = self.lock();
        let record = records.entry(cluster.to_owned()).or_default();
        record.connected = true;
        record.connection = Some(connection);
        record.session_id = Some(session_id.to_owned());
        record.agent_version = Some(agent_version.to_owned());
        record.connected_at = Some(SystemTime::now());
        record.heartbeat_interval = None;
        record.interval_shrunk_at = None;
    }

    /// Connection `connection` of `cluster` told its agent to heartbeat
    /// every `interval` from `at` on (a replica's keepalive, or the
    /// configured interval again). A superseded connection changes nothing.
    pub fn interval_told(
        &self,
        cluster: &str,
        connection: u64,
        interval: Duration,
        at: SystemTime,
    ) {
        let mut records = self.lock();
        if let Some(record) = records.get_mut(cluster)
            && record.connection == Some(connection)
        {
            if record.heartbeat_interval.is_some_and(|old| interval < old) {
                record.interval_shrunk_at = Some(at);
            }
            record.heartbeat_interval = Some(interval);
        }
    }

    /// Forgets `cluster`'s record (its SyncTarget was deleted); a later
    /// session starts a new one.
    pub fn forget(&self, cluster: &str) {
        self.lock().remove(cluster);
    }

    /// Connection `connection` of `cluster` ended. A connection that was
    /// superseded by a newer one changes nothing.
    pub fn session_ended(&self, cluster: &str, connection: u64) {
        let mut records = self.lock();
        if let Some(record) = records.get_mut(cluster)
            && record.connection == Some(connection)
        {
            record.connected = false;
            record.connection = None;
        }
    }

    /// A heartbeat sent at `agent_time_ms` (agent clock) arrived at `received`.
    /// The caller checked the agent's clock against the hub's
    /// ([`crate::capacity::validate`]); see [`Health::alive`] otherwise.
    pub fn heartbeat(&self, cluster: &str, agent_time_ms: i64, received: SystemTime) {
        self.record_heartbeat(cluster, Some(agent_time_ms), received);
    }

    /// A heartbeat whose report was refused arrived at `received`: the
    /// cluster is alive (the hub's clock says so), but its clock sample is
    /// not taken into the skew estimate.
    pub fn alive(&self, cluster: &str, received: SystemTime) {
        self.record_heartbeat(cluster, None, received);
    }

    fn record_heartbeat(&self, cluster: &str, agent_time_ms: Option<i64>, received: SystemTime) {
        let hub_ms = unix_ms(received);
        {
            let mut records = self.lock();
            let record = records.entry(cluster.to_owned()).or_default();
            record.last_heartbeat = Some(received);
            if let Some(agent_ms) = agent_time_ms {
                let sample = hub_ms.saturating_sub(agent_ms);
                record.clock_skew_ms = Some(match record.clock_skew_ms {
                    None => sample,
                    Some(old) => {
                        let old = old as f64;
                        (old + SKEW_SMOOTHING * (sample as f64 - old)).round() as i64
                    }
                });
            }
        }
        self.metrics.heartbeats.with_label_values(&[cluster]).inc();
        self.metrics
            .last_heartbeat
            .with_label_values(&[cluster])
            .set(hub_ms as f64 / 1000.0);
    }

    /// Counts `n` deltas received from `cluster`.
    pub fn deltas_received(&self, cluster: &str, n: usize) {
        let mut records = self.lock();
        let record = records.entry(cluster.to_owned()).or_default();
        record.deltas_received = record.deltas_received.saturating_add(n as u64);
    }

    /// Keeps the latest summary `cluster` sent with a heartbeat.
    pub fn summary(&self, cluster: &str, summary: ClusterSummary) {
        self.lock().entry(cluster.to_owned()).or_default().summary = Some(summary);
    }

    /// The estimated clock skew of `cluster` (hub minus agent), in ms.
    pub fn clock_skew_ms(&self, cluster: &str) -> Option<i64> {
        self.lock().get(cluster).and_then(|r| r.clock_skew_ms)
    }

    /// Every cluster's state at `now` and clock skew, without the summaries
    /// (cheap enough for every merge).
    pub fn link_states(
        &self,
        now: SystemTime,
        interval: Duration,
        grace: Duration,
    ) -> Vec<(ClusterName, ClusterState, Option<i64>)> {
        self.lock()
            .iter()
            .map(|(name, record)| {
                let state = cluster_state(record, now, interval, grace);
                (name.clone(), state, record.clock_skew_ms)
            })
            .collect()
    }

    /// [`Health::link_states`] of only `clusters` (the ones a merge looks
    /// at); unknown clusters are left out. One lock, no walk of the fleet.
    pub fn link_states_of<'a>(
        &self,
        clusters: impl IntoIterator<Item = &'a str>,
        now: SystemTime,
        interval: Duration,
        grace: Duration,
    ) -> Vec<(ClusterName, ClusterState, Option<i64>)> {
        let records = self.lock();
        clusters
            .into_iter()
            .filter_map(|name| {
                let record = records.get(name)?;
                let state = cluster_state(record, now, interval, grace);
                Some((name.to_owned(), state, record.clock_skew_ms))
            })
            .collect()
    }

    pub fn record(&self, cluster: &str) -> Option<ClusterRecord> {
        self.lock().get(cluster).cloned()
    }

    /// One page of cluster names in order (the hub API's cluster list).
    pub fn names_page(
        &self,
        after: Option<&ClusterName>,
        limit: usize,
    ) -> crate::page::Page<ClusterName> {
        crate::page::select(self.lock().keys(), after, limit)
    }

    /// Every cluster's record, by name.
    pub fn records(&self) -> Vec<(ClusterName, ClusterRecord)> {
        self.lock()
            .iter()
            .map(|(name, record)| (name.clone(), record.clone()))
            .collect()
    }
}

/// The state of a cluster whose last heartbeat is `record.last_heartbeat`,
/// at `now`, with heartbeats every `interval` (unless its session was told
/// another, [`ClusterRecord::heartbeat_interval`]) and an Offline grace
/// `grace`.
pub fn cluster_state(
    record: &ClusterRecord,
    now: SystemTime,
    interval: Duration,
    grace: Duration,
) -> ClusterState {
    let Some(last) = record.last_heartbeat.or(record.connected_at) else {
        return ClusterState::Offline;
    };
    let interval = record.heartbeat_interval.unwrap_or(interval);
    let silent = now.duration_since(last).unwrap_or_default();
    // Stale counts from when a shorter interval was told, if later.
    let quiet = match record.interval_shrunk_at {
        Some(shrunk) if shrunk > last => now.duration_since(shrunk).unwrap_or_default(),
        _ => silent,
    };
    if silent > grace {
        ClusterState::Offline
    } else if quiet > interval * 3 {
        ClusterState::Stale
    } else {
        ClusterState::Ready
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health() -> Health {
        Health::new(Arc::new(
            Metrics::new().unwrap_or_else(|e| panic!("metrics: {e}")),
        ))
    }

    #[test]
    fn superseded_connection_does_not_mark_the_cluster_offline() {
        let health = health();
        health.session_started("c1", 1, "s", "v");
        health.session_started("c1", 2, "s", "v");
        health.session_ended("c1", 1);
        assert!(health.record("c1").is_some_and(|r| r.connected));
        health.session_ended("c1", 2);
        assert!(health.record("c1").is_some_and(|r| !r.connected));
    }

    #[test]
    fn skew_is_smoothed_and_heartbeats_counted() {
        let health = health();
        let now = UNIX_EPOCH + Duration::from_secs(1000);
        health.heartbeat("c1", 1_000_000 - 500, now); // agent 500 ms behind
        assert_eq!(health.clock_skew_ms("c1"), Some(500));
        health.heartbeat("c1", 1_000_000, now); // one sample of 0 moves it a little
        assert_eq!(health.clock_skew_ms("c1"), Some(400));
        assert_eq!(
            health.metrics.heartbeats.with_label_values(&["c1"]).get(),
            2
        );
        assert_eq!(
            health
                .metrics
                .last_heartbeat
                .with_label_values(&["c1"])
                .get(),
            1000.0
        );
    }

    #[test]
    fn states_follow_heartbeat_age() {
        let h = Duration::from_secs(10);
        let grace = Duration::from_secs(300);
        let last = UNIX_EPOCH + Duration::from_secs(1000);
        let record = ClusterRecord {
            last_heartbeat: Some(last),
            ..ClusterRecord::default()
        };
        let at = |s| cluster_state(&record, last + Duration::from_secs(s), h, grace);
        assert_eq!(at(29), ClusterState::Ready);
        assert_eq!(at(31), ClusterState::Stale);
        assert_eq!(at(301), ClusterState::Offline);
        assert_eq!(
            cluster_state(&ClusterRecord::default(), last, h, grace),
            ClusterState::Offline
        );
    }

    #[test]
    fn states_follow_the_interval_told_to_the_session() {
        let health = health();
        let h = Duration::from_secs(10);
        let grace = Duration::from_secs(300);
        health.session_started("c1", 1, "s", "v");
        let last = UNIX_EPOCH + Duration::from_secs(1000);
        health.heartbeat("c1", 1_000_000, last);
        // A keepalive replica: a minute between heartbeats is Ready.
        health.interval_told("c1", 1, Duration::from_secs(60), last);
        let state = |at: u64| {
            let record = health.record("c1").unwrap_or_default();
            cluster_state(&record, last + Duration::from_secs(at), h, grace)
        };
        assert_eq!(state(170), ClusterState::Ready);
        assert_eq!(state(181), ClusterState::Stale);
        // A superseded connection's telling changes nothing.
        health.interval_told("c1", 2, Duration::from_secs(1), last);
        assert_eq!(state(170), ClusterState::Ready);
        // Shrunk at 100 s: three of the new intervals count from then.
        health.interval_told("c1", 1, h, last + Duration::from_secs(100));
        assert_eq!(state(129), ClusterState::Ready);
        assert_eq!(state(131), ClusterState::Stale);
        // A new session starts with the configured interval.
        health.session_started("c1", 3, "s", "v");
        assert_eq!(state(31), ClusterState::Stale);
    }
}
