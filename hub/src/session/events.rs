//! The events lane (protocol version 3): each report of an `Events` batch
//! is about an object its cluster syncs, and is taken only when that
//! object is placed on the cluster as the report names it (a cluster's
//! events must never land in a workspace or on an object it does not
//! serve), then held to the cluster's event rate and queued for the event
//! writer ([`crate::writer::events`]). Best effort: a report refused,
//! over the rate or pushed out of the queue is counted and dropped, never
//! acknowledged, never held, and never the end of the session (only
//! `Events` before version 3 is).

use std::sync::{Mutex, PoisonError};

use tokio::time::Instant;
use uplink_ops::rate::TokenBucket;
use uplink_protocol::names::invalid_name;
use uplink_protocol::{EVENTS_VERSION, EventBatch, EventReport};

use super::wire::Violation;
use super::{Connection, Transport};
use crate::cache::LruCache;
use crate::metrics::{event_dropped, event_refused};
use crate::placement::{Judge, Verdict};
use crate::store::{ClusterName, ObjectKey};
use crate::writer::events::{EventSeries, micro_time, sparingly};

/// Clusters whose event rate is remembered; past it the one heard from
/// least recently starts afresh.
const RATE_CLUSTERS: usize = 65_536;

/// Each cluster's event rate: a token bucket per cluster, shared by its
/// connections (a reconnect does not refill it), in a bounded map.
#[derive(Debug)]
pub struct EventRates {
    rate: f64,
    burst: u32,
    buckets: Mutex<LruCache<ClusterName, TokenBucket>>,
}

impl EventRates {
    /// `rate` reports per second (0: unlimited) and `burst` at once, per
    /// cluster.
    pub fn new(rate: f64, burst: u32) -> Self {
        Self {
            rate,
            burst,
            buckets: Mutex::new(LruCache::new(RATE_CLUSTERS)),
        }
    }

    /// Takes one report's token from `cluster`'s bucket, if it has one.
    pub fn allow(&self, cluster: &str) -> bool {
        let now = Instant::now();
        // Never held across an await or a call that can panic midway.
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let mut bucket = buckets
            .get(cluster)
            .unwrap_or_else(|| TokenBucket::full_at(self.rate, self.burst, now));
        let allowed = bucket.try_take(now);
        buckets.insert(cluster.to_owned(), bucket);
        allowed
    }
}

impl<S: Transport> Connection<S> {
    /// An `Events` batch: each report judged, limited and queued; refusals
    /// are counted and logged, never sent back.
    pub(super) fn events(&self, batch: EventBatch) -> Result<(), Violation> {
        if self.version < EVENTS_VERSION {
            return Err(Violation::unexpected(
                "Events (protocol version 3) in an older session",
            ));
        }
        self.shared
            .metrics
            .events_received
            .inc_by(batch.reports.len() as u64);
        let taken: Vec<EventSeries> = {
            // Judged under the placement view's read lock, like deltas.
            let view = self.shared.placements.read();
            let judge = view.judge(&self.cluster);
            batch
                .reports
                .into_iter()
                // The holder of the shard writes its events.
                .filter(|report| {
                    self.shard_held(
                        &report.regarding.workspace,
                        super::shards::unheld_kind::EVENT,
                    )
                })
                .filter_map(|report| match self.judge_event(&judge, report) {
                    Ok(series) => Some(series),
                    Err((object, reason, detail)) => {
                        self.refuse_event(&object, reason, &detail);
                        None
                    }
                })
                .collect()
        };
        for series in taken {
            if !self.shared.event_rates.allow(&self.cluster) {
                self.drop_event(&series.object(), event_dropped::RATE_LIMITED);
                continue;
            }
            self.shared.event_queue.push(series);
        }
        Ok(())
    }

    /// `report` as the series the writer writes, or why it is refused:
    /// (object, reason, detail).
    fn judge_event(
        &self,
        judge: &Judge<'_>,
        mut report: EventReport,
    ) -> Result<EventSeries, (ObjectKey, &'static str, String)> {
        let object = ObjectKey::from(&report.regarding);
        if let Some(detail) = invalid_event(&report, self.shared.require_workspace) {
            return Err((object, event_refused::INVALID, detail));
        }
        let Some(regarding) = judge.placed(&object) else {
            let reason = match judge.verdict(&object) {
                Verdict::Reject(reason) => reason,
                Verdict::Accept | Verdict::Hold => event_refused::NOT_PLACED,
            };
            return Err((
                object,
                reason,
                "not placed on this cluster as named".to_owned(),
            ));
        };
        let regarding_uid = regarding.uid.clone();
        // A related object the cluster does not serve is left out, not
        // the whole series: the event is still about a placed object.
        let related_uid = report.related.as_ref().and_then(|related| {
            if invalid_name(related, self.shared.require_workspace).is_some() {
                return None;
            }
            judge
                .placed(&ObjectKey::from(related))
                .map(|placed| placed.uid.clone())
        });
        if related_uid.is_none() {
            report.related = None;
        }
        Ok(EventSeries::new(
            &self.cluster,
            report,
            regarding_uid,
            related_uid,
        ))
    }

    /// Counts and logs (sparingly) a refused report.
    fn refuse_event(&self, object: &ObjectKey, reason: &'static str, detail: &str) {
        let counter = self
            .shared
            .metrics
            .events_refused
            .with_label_values(&[reason]);
        counter.inc();
        let refused = counter.get();
        if sparingly(refused) {
            tracing::warn!(cluster = %self.cluster, object = %object, reason, detail, refused, "event refused");
        } else {
            tracing::debug!(cluster = %self.cluster, object = %object, reason, detail, refused, "event refused");
        }
    }

    /// Counts and logs (sparingly) a report taken and then dropped.
    fn drop_event(&self, object: &ObjectKey, reason: &'static str) {
        let counter = self
            .shared
            .metrics
            .events_dropped
            .with_label_values(&[reason]);
        counter.inc();
        let dropped = counter.get();
        if sparingly(dropped) {
            tracing::warn!(cluster = %self.cluster, object = %object, reason, dropped, "event dropped");
        } else {
            tracing::debug!(cluster = %self.cluster, object = %object, reason, dropped, "event dropped");
        }
    }
}

/// What makes `report` one kube-apiserver would refuse or the hub cannot
/// address, if anything.
fn invalid_event(report: &EventReport, require_workspace: bool) -> Option<String> {
    if !matches!(report.event_type.as_str(), "Normal" | "Warning") {
        return Some(format!(
            "type {:?} is neither Normal nor Warning",
            report.event_type
        ));
    }
    if report.reason.is_empty() {
        return Some("the reason is empty".to_owned());
    }
    if report.count == 0 {
        return Some("the count is 0".to_owned());
    }
    if let Some((what, value)) = invalid_name(&report.regarding, require_workspace) {
        return Some(format!("regarding {what} {value:?} is not a valid name"));
    }
    for (what, ms) in [("first", report.first_ms), ("last", report.last_ms)] {
        if micro_time(ms).is_none() {
            return Some(format!("the {what} time {ms} ms is out of range"));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn each_cluster_has_its_own_rate_across_connections() {
        let rates = EventRates::new(1.0, 2);
        assert!(rates.allow("a") && rates.allow("a"));
        assert!(!rates.allow("a"), "a's burst is spent");
        assert!(rates.allow("b"), "b has its own");
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
        assert!(rates.allow("a"), "refilled at its rate");
        assert!(!rates.allow("a"));
    }

    fn report() -> EventReport {
        EventReport {
            regarding: uplink_protocol::ObjectRef {
                group: "apps".into(),
                version: "v1".into(),
                resource: "deployments".into(),
                kind: "Deployment".into(),
                workspace: "root:org".into(),
                namespace: Some("default".into()),
                name: "web".into(),
                uid: "d1".into(),
            },
            related: None,
            event_type: "Normal".into(),
            reason: "ScalingReplicaSet".into(),
            action: String::new(),
            reporting_controller: String::new(),
            reporting_instance: String::new(),
            note: String::new(),
            count: 1,
            first_ms: 1_700_000_000_000,
            last_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn invalid_reports_are_told_apart() {
        assert_eq!(invalid_event(&report(), true), None);
        let cases = [
            EventReport {
                event_type: "Error".into(),
                ..report()
            },
            EventReport {
                reason: String::new(),
                ..report()
            },
            EventReport {
                count: 0,
                ..report()
            },
            EventReport {
                first_ms: -1,
                ..report()
            },
        ];
        for case in cases {
            assert!(invalid_event(&case, true).is_some(), "{case:?}");
        }
        let mut bad_name = report();
        bad_name.regarding.name = "a/b".into();
        assert!(invalid_event(&bad_name, true).is_some());
        let mut no_workspace = report();
        no_workspace.regarding.workspace = String::new();
        assert!(invalid_event(&no_workspace, true).is_some());
        assert_eq!(invalid_event(&no_workspace, false), None);
    }
}
