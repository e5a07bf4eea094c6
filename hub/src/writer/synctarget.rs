//! Each cluster's record in KCP: the status of its `SyncTarget`
//! (`workload.kcp.io/v1alpha1`, cluster-scoped, named like the cluster, in
//! the configured workspace), carrying `lastSyncerHeartbeatTime`, a `Ready`
//! condition (`True` when the cluster is Ready, `False` with reason `Stale`
//! or `Offline`), and the capacity the agent last reported.
//!
//! The operator creates SyncTargets (they are what KCP places workloads
//! on); the hub only writes the status of the ones its placement view found
//! ([`crate::placement`]), each from its own cluster's record, so nothing a
//! cluster sends reaches another cluster's SyncTarget. A cluster without one
//! gets nothing written.
//!
//! Level-triggered like the status writer: every tick compares each
//! cluster's state in [`Health`] with what was last written, and writes when
//! the state changed, or when the heartbeat time moved and the last write is
//! older than the heartbeat period (so heartbeats do not turn into a write
//! each). Failures wait with exponential backoff and are retried; the
//! latest state is what lands, never a history.
//!
//! Capacity ([`crate::capacity::record`]): `capacity` and `allocatable`
//! include extended resources, `allocation` is the share of allocatable
//! that pod requests take (`{"cpu": "42%", ...}`, what the CRD's `CPU
//! Allocated` printer column shows), and a `Healthy` condition carries the
//! cluster's health (Healthy / Degraded / Unhealthy / Unknown); a change of
//! health is written at once, like a change of state, while new capacity
//! and allocation figures ride on the next heartbeat write.
//!
//! The same tick publishes `uplink_hub_cluster_state{cluster,state}`.

use crate::replicas::Ownership;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uplink_protocol::ResourceAmounts;

use super::{StatusUpstream, is_path_segment};
use crate::capacity::record::{CapacityRecord, ClusterHealth, apply_to_synctarget_patch};
use crate::health::{ClusterRecord, ClusterState, Health, cluster_state};
use crate::metrics::{Metrics, write_result};
use crate::placement::Placements;
use crate::store::{KeyParts, ObjectKey};

/// First retry delay after a failed write; doubles per failure.
const RETRY_BASE: Duration = Duration::from_millis(250);
/// Longest retry delay.
const RETRY_MAX: Duration = Duration::from_secs(30);

/// How SyncTargets are written.
#[derive(Debug, Clone)]
pub struct SyncTargetSettings {
    /// The agents' heartbeat interval (Stale after three).
    pub heartbeat_interval: Duration,
    /// Silence after which a cluster is Offline.
    pub offline_grace: Duration,
    /// Longest lag of `lastSyncerHeartbeatTime` behind the last heartbeat.
    pub heartbeat_period: Duration,
}

/// What was last written for one cluster, and when to try again.
#[derive(Debug, Clone)]
struct Written {
    /// The state last written successfully; `None` until the first success.
    state: Option<ClusterState>,
    /// The heartbeat time last written.
    heartbeat: Option<SystemTime>,
    /// When the last successful write happened.
    at: Instant,
    /// When the state last changed (the condition's `lastTransitionTime`).
    transition: SystemTime,
    /// The state the transition time belongs to.
    transition_state: ClusterState,
    failures: u32,
    retry_at: Option<Instant>,
    /// The capacity health last written successfully.
    health: Option<ClusterHealth>,
    /// The present health and since when (the `Healthy` condition's
    /// `lastTransitionTime`).
    health_since: Option<(ClusterHealth, SystemTime)>,
}

/// Writes the clusters' SyncTargets; see the module documentation.
#[derive(Debug)]
pub struct SyncTargets {
    upstream: Arc<dyn StatusUpstream>,
    health: Arc<Health>,
    placements: Arc<Placements>,
    metrics: Arc<Metrics>,
    settings: SyncTargetSettings,
    written: HashMap<String, Written>,
    /// Which SyncTarget workspaces' shards this hub writes.
    ownership: Ownership,
}

impl SyncTargets {
    pub fn new(
        upstream: Arc<dyn StatusUpstream>,
        health: Arc<Health>,
        placements: Arc<Placements>,
        metrics: Arc<Metrics>,
        settings: SyncTargetSettings,
    ) -> Self {
        Self {
            upstream,
            health,
            placements,
            metrics,
            settings,
            written: HashMap::new(),
            ownership: Ownership::single(1),
        }
    }

    /// Writes only the SyncTargets whose workspace's shard `ownership`
    /// holds (every one, for a single hub).
    #[must_use]
    pub fn with_ownership(mut self, ownership: Ownership) -> Self {
        self.ownership = ownership;
        self
    }

    /// Publishes states and writes SyncTargets every tick until `stop`.
    pub async fn run(mut self, stop: CancellationToken) {
        let every = (self.settings.heartbeat_interval / 2)
            .clamp(Duration::from_millis(50), Duration::from_secs(5));
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.tick(SystemTime::now()) => {}
            }
        }
    }

    /// One round: every cluster's state metric, then the writes that are due.
    pub async fn tick(&mut self, now: SystemTime) {
        let records = self.health.records();
        let states: Vec<(String, ClusterState, ClusterRecord)> = records
            .into_iter()
            .map(|(name, record)| {
                let state = cluster_state(
                    &record,
                    now,
                    self.settings.heartbeat_interval,
                    self.settings.offline_grace,
                );
                (name, state, record)
            })
            .collect();
        for (name, state, _) in &states {
            for candidate in [
                ClusterState::Ready,
                ClusterState::Stale,
                ClusterState::Offline,
            ] {
                self.metrics
                    .cluster_state
                    .with_label_values(&[name.as_str(), candidate.name()])
                    .set(i64::from(candidate == *state));
            }
        }
        for (name, state, record) in states {
            // Only the cluster's own SyncTarget, and only one that exists.
            let Some(workspace) = self
                .placements
                .read()
                .synctarget(&name)
                .map(|target| target.workspace.clone())
            else {
                continue;
            };
            if !is_path_segment(&name) {
                continue; // cannot be a SyncTarget name; the identity check should prevent it
            }
            // Every replica tracks every cluster's health; only the holder
            // of the SyncTarget workspace's shard writes the SyncTarget. What
            // was written is forgotten meanwhile, so a takeover writes anew.
            if !self.ownership.holds_workspace(&workspace) {
                self.written.remove(&name);
                continue;
            }
            if self.due(&name, state, &record, now) {
                self.write(&workspace, &name, state, &record, now).await;
            }
        }
    }

    fn due(
        &mut self,
        name: &str,
        state: ClusterState,
        record: &ClusterRecord,
        now: SystemTime,
    ) -> bool {
        let written = self
            .written
            .entry(name.to_owned())
            .or_insert_with(|| Written {
                state: None,
                heartbeat: None,
                at: Instant::now(),
                transition: now,
                transition_state: state,
                failures: 0,
                retry_at: None,
                health: None,
                health_since: None,
            });
        let health = CapacityRecord::new(name, record, state).health;
        if written.health_since.is_none_or(|(h, _)| h != health) {
            written.health_since = Some((health, now));
        }
        if written.transition_state != state {
            written.transition_state = state;
            written.transition = now;
        }
        if written.retry_at.is_some_and(|at| Instant::now() < at) {
            return false;
        }
        written.state != Some(state)
            || written.health != Some(health)
            || (written.heartbeat != record.last_heartbeat
                && written.at.elapsed() >= self.settings.heartbeat_period)
    }

    async fn write(
        &mut self,
        workspace: &str,
        name: &str,
        state: ClusterState,
        record: &ClusterRecord,
        now: SystemTime,
    ) {
        let key = synctarget_key(workspace, name);
        let transition = self.written.get(name).map_or(now, |w| w.transition);
        let mut patch = status_patch(state, record, transition);
        let capacity = CapacityRecord::new(name, record, state);
        let health_since = self
            .written
            .get(name)
            .and_then(|w| w.health_since)
            .map_or(now, |(_, since)| since);
        apply_to_synctarget_patch(&mut patch, &capacity, health_since);
        // A 404 (the SyncTarget was deleted meanwhile) is a failure like
        // any other: retried with backoff until the placement view drops it.
        let result = self.upstream.patch_status(&key, &patch, false).await;
        let Some(written) = self.written.get_mut(name) else {
            return;
        };
        match result {
            Ok(()) => {
                self.metrics
                    .synctarget_writes
                    .with_label_values(&[write_result::SUCCESS])
                    .inc();
                if written.state != Some(state) {
                    tracing::info!(cluster = %name, %workspace, state = state.name(), "SyncTarget updated");
                }
                written.state = Some(state);
                written.health = Some(capacity.health);
                written.heartbeat = record.last_heartbeat;
                written.at = Instant::now();
                written.failures = 0;
                written.retry_at = None;
            }
            Err(error) => {
                self.metrics
                    .synctarget_writes
                    .with_label_values(&[write_result::ERROR])
                    .inc();
                written.failures = written.failures.saturating_add(1);
                let delay = uplink_ops::backoff::Policy::retries(RETRY_BASE, RETRY_MAX)
                    .delay_after(written.failures);
                written.retry_at = Some(Instant::now() + delay);
                if written.failures == 1 {
                    tracing::warn!(cluster = %name, %workspace, %error, retry_in = ?delay, "writing the SyncTarget failed");
                } else {
                    tracing::debug!(cluster = %name, %workspace, %error, failures = written.failures, retry_in = ?delay, "writing the SyncTarget failed again");
                }
            }
        }
    }
}

/// Where cluster `name`'s SyncTarget lives.
pub fn synctarget_key(workspace: &str, name: &str) -> ObjectKey {
    ObjectKey::new(KeyParts {
        workspace: workspace.to_owned(),
        group: "workload.kcp.io".to_owned(),
        version: "v1alpha1".to_owned(),
        resource: "synctargets".to_owned(),
        kind: "SyncTarget".to_owned(),
        namespace: None,
        name: name.to_owned(),
    })
}

/// The merge patch of a SyncTarget's status for a cluster in `state`.
pub fn status_patch(state: ClusterState, record: &ClusterRecord, transition: SystemTime) -> Value {
    let (status, reason, message) = match state {
        ClusterState::Ready => ("True", "Ready", "the cluster's agent sends heartbeats"),
        ClusterState::Stale => (
            "False",
            "Stale",
            "no heartbeat from the cluster's agent for three heartbeat intervals",
        ),
        ClusterState::Offline => (
            "False",
            "Offline",
            "no heartbeat from the cluster's agent for longer than the offline grace",
        ),
    };
    let mut patch = json!({
        "status": {
            "lastSyncerHeartbeatTime": record.last_heartbeat.and_then(rfc3339),
            "conditions": [{
                "type": "Ready",
                "status": status,
                "reason": reason,
                "message": message,
                "lastTransitionTime": rfc3339(transition),
            }],
        }
    });
    if let Some(summary) = &record.summary
        && let Some(status) = patch.get_mut("status").and_then(Value::as_object_mut)
    {
        status.insert("capacity".into(), quantities(&summary.capacity));
        status.insert("allocatable".into(), quantities(&summary.allocatable));
    }
    patch
}

/// Amounts as Kubernetes quantities.
fn quantities(amounts: &ResourceAmounts) -> Value {
    json!({
        "cpu": format!("{}m", amounts.cpu_millis),
        "memory": amounts.memory_bytes.to_string(),
        "ephemeral-storage": amounts.ephemeral_storage_bytes.to_string(),
        "pods": amounts.pods.to_string(),
    })
}

/// RFC 3339 in whole seconds, as Kubernetes times are.
fn rfc3339(time: SystemTime) -> Option<String> {
    let ts = jiff::Timestamp::try_from(time).ok()?;
    let secs = jiff::Timestamp::from_second(ts.as_second()).ok()?;
    Some(secs.to_string())
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use futures::future::BoxFuture;

    use super::*;
    use crate::writer::{ApplyOptions, UpstreamError, UpstreamStatus};

    /// Upstream that knows which SyncTargets exist and records what was sent.
    #[derive(Debug, Default)]
    struct FakeKcp {
        existing: Mutex<HashMap<String, Value>>,
        calls: Mutex<Vec<String>>,
        fail: Mutex<u32>,
    }

    impl FakeKcp {
        fn calls(&self) -> Vec<String> {
            self.calls.lock().map(|c| c.clone()).unwrap_or_default()
        }
        fn status(&self, name: &str) -> Option<Value> {
            self.existing.lock().ok()?.get(name).cloned()
        }
    }

    impl StatusUpstream for FakeKcp {
        fn patch_status<'a>(
            &'a self,
            key: &'a ObjectKey,
            patch: &'a Value,
            _dry_run: bool,
        ) -> BoxFuture<'a, Result<(), UpstreamError>> {
            Box::pin(async move {
                if let Ok(mut calls) = self.calls.lock() {
                    calls.push(format!("patch {}", key.name));
                }
                if let Ok(mut fail) = self.fail.lock()
                    && *fail > 0
                {
                    *fail -= 1;
                    return Err(UpstreamError::Server {
                        status: 500,
                        message: "down".into(),
                    });
                }
                let mut existing = self.existing.lock().map_err(|_| UpstreamError::NotFound)?;
                match existing.get_mut(&key.name) {
                    Some(status) => {
                        *status = patch["status"].clone();
                        Ok(())
                    }
                    None => Err(UpstreamError::NotFound),
                }
            })
        }

        fn apply_status<'a>(
            &'a self,
            _key: &'a ObjectKey,
            _configuration: &'a Value,
            _options: ApplyOptions<'a>,
        ) -> BoxFuture<'a, Result<(), UpstreamError>> {
            // SyncTargets are merge-patched.
            Box::pin(async {
                Err(UpstreamError::Refused {
                    status: 415,
                    message: "SyncTargets are not applied".into(),
                })
            })
        }

        fn get_status<'a>(
            &'a self,
            _key: &'a ObjectKey,
        ) -> BoxFuture<'a, Result<UpstreamStatus, UpstreamError>> {
            Box::pin(async { Ok(UpstreamStatus::default()) })
        }
    }

    /// A hub's SyncTarget writer where cluster `c1` has a SyncTarget in
    /// `root` (in KCP and in the placement view) and `c2` has none.
    fn fixture(period: Duration) -> (SyncTargets, Arc<FakeKcp>, Arc<Health>, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new().unwrap_or_else(|e| panic!("metrics: {e}")));
        let health = Arc::new(Health::new(metrics.clone()));
        let kcp = Arc::new(FakeKcp::default());
        if let Ok(mut existing) = kcp.existing.lock() {
            existing.insert("c1".into(), Value::Null);
        }
        let placements = Arc::new(Placements::new(
            crate::placement::PlacementSettings::default(),
            metrics.clone(),
        ));
        placements
            .write()
            .put_synctarget(crate::placement::SyncTargetRef {
                workspace: "root".into(),
                name: "c1".into(),
                uid: "uid-c1".into(),
                key: crate::placement::key::sync_target_key("root", "c1"),
            });
        let targets = SyncTargets::new(
            kcp.clone(),
            health.clone(),
            placements,
            metrics.clone(),
            SyncTargetSettings {
                heartbeat_interval: Duration::from_secs(1),
                offline_grace: Duration::from_secs(10),
                heartbeat_period: period,
            },
        );
        (targets, kcp, health, metrics)
    }

    fn ready_reason(kcp: &FakeKcp, name: &str) -> Option<(String, String)> {
        let status = kcp.status(name)?;
        let condition = &status["conditions"][0];
        Some((
            condition["status"].as_str()?.to_owned(),
            condition["reason"].as_str()?.to_owned(),
        ))
    }

    #[tokio::test(start_paused = true)]
    async fn follows_state_changes_and_rate_limits_heartbeats() {
        let (mut targets, kcp, health, metrics) = fixture(Duration::from_secs(30));
        let t0 = SystemTime::now();
        health.session_started("c1", 1, "s", "v");
        health.heartbeat("c1", 0, t0);
        // c2 has no SyncTarget: nothing is written for it, nothing created.
        health.session_started("c2", 2, "s", "v");
        health.heartbeat("c2", 0, t0);
        targets.tick(t0).await;
        assert_eq!(kcp.calls(), ["patch c1"]);
        assert_eq!(kcp.status("c2"), None);
        assert_eq!(
            ready_reason(&kcp, "c1"),
            Some(("True".into(), "Ready".into()))
        );
        let state = |s: &str| metrics.cluster_state.with_label_values(&["c1", s]).get();
        assert_eq!(
            (state("Ready"), state("Stale"), state("Offline")),
            (1, 0, 0)
        );

        // A newer heartbeat alone is not written before the period passes.
        let t1 = t0 + Duration::from_secs(1);
        health.heartbeat("c1", 0, t1);
        targets.tick(t1).await;
        assert_eq!(kcp.calls().len(), 1);

        // Silence: Stale after three intervals, then Offline after the grace.
        targets.tick(t1 + Duration::from_secs(4)).await;
        assert_eq!(
            ready_reason(&kcp, "c1"),
            Some(("False".into(), "Stale".into()))
        );
        assert_eq!(
            (state("Ready"), state("Stale"), state("Offline")),
            (0, 1, 0)
        );
        targets.tick(t1 + Duration::from_secs(11)).await;
        assert_eq!(
            ready_reason(&kcp, "c1"),
            Some(("False".into(), "Offline".into()))
        );
        assert_eq!(state("Offline"), 1);

        // Back: Ready at once, with the new heartbeat time.
        let t2 = t1 + Duration::from_secs(12);
        health.heartbeat("c1", 0, t2);
        targets.tick(t2).await;
        assert_eq!(
            ready_reason(&kcp, "c1"),
            Some(("True".into(), "Ready".into()))
        );
        assert_eq!(
            kcp.status("c1")
                .map(|s| s["lastSyncerHeartbeatTime"].clone()),
            Some(json!(rfc3339(t2)))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_and_the_latest_state_lands() {
        let (mut targets, kcp, health, metrics) = fixture(Duration::from_secs(30));
        if let Ok(mut fail) = kcp.fail.lock() {
            *fail = 2;
        }
        let t0 = SystemTime::now();
        health.heartbeat("c1", 0, t0);
        targets.tick(t0).await; // fails
        targets.tick(t0).await; // backing off: no call
        assert_eq!(kcp.calls().len(), 1);
        tokio::time::advance(Duration::from_millis(300)).await;
        targets.tick(t0 + Duration::from_secs(5)).await; // fails again, now Stale
        tokio::time::advance(Duration::from_millis(600)).await;
        targets.tick(t0 + Duration::from_secs(5)).await;
        assert_eq!(
            ready_reason(&kcp, "c1"),
            Some(("False".into(), "Stale".into()))
        );
        assert_eq!(
            metrics
                .synctarget_writes
                .with_label_values(&[write_result::ERROR])
                .get(),
            2
        );
    }

    /// What `kubectl get synctargets` prints comes from the status: the
    /// `Ready` and `Healthy` reasons, the heartbeat time, and the allocation
    /// percentages next to capacity and allocatable.
    #[tokio::test(start_paused = true)]
    async fn status_carries_what_the_printer_columns_show() {
        let (mut targets, kcp, health, _) = fixture(Duration::from_secs(30));
        let t0 = SystemTime::now();
        health.session_started("c1", 1, "s", "v");
        health.heartbeat("c1", 0, t0);
        health.summary(
            "c1",
            uplink_protocol::ClusterSummary {
                watches: vec![uplink_protocol::WatchHealth {
                    resource: crate::capacity::record::NODES_WATCH.into(),
                    ready: true,
                    objects: 2,
                    error: None,
                }],
                nodes: uplink_protocol::NodeCounts {
                    total: 2,
                    ready: 2,
                    ..Default::default()
                },
                allocatable: ResourceAmounts {
                    cpu_millis: 8000,
                    memory_bytes: 32 << 30,
                    ephemeral_storage_bytes: 0,
                    pods: 220,
                },
                requests: ResourceAmounts {
                    cpu_millis: 3380,
                    memory_bytes: 4 << 30,
                    ephemeral_storage_bytes: 0,
                    pods: 11,
                },
                ..Default::default()
            },
        );
        targets.tick(t0).await;
        let status = kcp
            .status("c1")
            .unwrap_or_else(|| panic!("no status written"));
        let condition = |kind: &str| {
            status["conditions"]
                .as_array()
                .and_then(|all| all.iter().find(|c| c["type"] == kind))
                .map(|c| c["reason"].clone())
        };
        assert_eq!(condition("Ready"), Some(json!("Ready")));
        assert_eq!(condition("Healthy"), Some(json!("Healthy")));
        assert_eq!(status["lastSyncerHeartbeatTime"], json!(rfc3339(t0)));
        assert_eq!(status["allocatable"]["cpu"], "8000m");
        assert_eq!(
            status["allocation"],
            json!({"cpu": "42%", "memory": "12%", "ephemeral-storage": null, "pods": "5%"})
        );
    }
}
