//! Downstream Events on their way up (issue 18): read from the cluster
//! ([`read`]), folded into series the way client-go's events recorder folds
//! them, rate-limited per object and per cluster, and held in a lane of
//! their own with a bound ([`lane`]), so that a burst of events can neither
//! delay status nor grow without limit.
//!
//! An [`Observed`] event is one downstream `events.k8s.io/v1` Event as the
//! agent read it, its `regarding` and `related` objects already in upstream
//! coordinates. Events with the same [`SeriesKey`] (client-go's
//! "isomorphic" key: regarding, related, type, reason, action, reporting
//! controller and instance; not the note) are one series upstream, whose
//! count is the number of occurrences of every downstream Event in it: a
//! downstream Event that is itself a series (`series.count`, or
//! `deprecatedCount`) adds its count, and a later version of it adds only
//! what its count grew by.
//!
//! What goes up is an [`uplink_protocol::EventReport`]: the series' whole
//! state (count, first and last observation, latest note), so the hub
//! writes it as it is and a report that was coalesced or rate-limited loses
//! nothing but intermediate counts.
//!
//! Bounds, each counted ([`Dropped`]): at most [`EventSettings::max_series`]
//! series are tracked (a new one past it is dropped), at most
//! [`EventSettings::max_pending`] series wait to be sent (the oldest waiting
//! report is dropped for a new one), and at most
//! [`EventSettings::max_tracked_events`] downstream Events are remembered
//! for their counts (the oldest forgotten first). Series not observed for
//! [`EventSettings::series_ttl`] are forgotten, as client-go forgets a
//! series after six minutes.
//!
//! The pipeline reads and observes ([`crate::inventory`], which knows the
//! synced objects); the session sends, protocol version 3, only when it
//! has no status ready to send ([`crate::session`]). [`SharedEventLane`]
//! is the lane between them.

pub mod lane;
pub mod read;

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::watch;
use tokio::time::Instant;
use uplink_protocol::{EventReport, ObjectRef};

pub use lane::{Dropped, EventLane, EventSettings, Observed, SeriesKey};
pub use read::{EventError, Regarding, read};

use crate::metrics::Metrics;

/// The [`EventLane`] the pipeline fills and the session drains, with the
/// lane's metrics kept current.
#[derive(Debug, Clone)]
pub struct SharedEventLane {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    lane: Mutex<EventLane>,
    /// Bumped when a series starts waiting; every session watches it.
    changed: watch::Sender<()>,
    metrics: Metrics,
}

impl SharedEventLane {
    pub fn new(settings: EventSettings, metrics: Metrics) -> Self {
        Self {
            inner: Arc::new(Shared {
                lane: Mutex::new(EventLane::new(settings, Instant::now())),
                changed: watch::Sender::new(()),
                metrics,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, EventLane> {
        // The lane's state is consistent between calls: a panic elsewhere
        // while holding it cannot leave it half-changed.
        self.inner
            .lane
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Folds `event` into its series (see [`EventLane::observe`]).
    pub fn observe(&self, event: Observed) {
        let metrics = &self.inner.metrics;
        metrics.events_observed.inc();
        let (dropped, pending) = {
            let mut lane = self.lock();
            (lane.observe(event, Instant::now()), lane.pending())
        };
        if let Some(dropped) = dropped {
            metrics
                .events_dropped
                .with_label_values(&[dropped.reason()])
                .inc();
        }
        metrics.events_pending.set(gauge(pending));
        self.inner.changed.send_replace(());
    }

    /// Up to `max` reports the rate limits allow now.
    pub fn take(&self, max: usize) -> Vec<EventReport> {
        self.take_routed(max, |_| true)
    }

    /// Up to `max` reports the rate limits allow now, of the objects
    /// `routed` accepts (see [`EventLane::take_routed`]).
    pub fn take_routed(&self, max: usize, routed: impl Fn(&ObjectRef) -> bool) -> Vec<EventReport> {
        let (reports, pending) = {
            let mut lane = self.lock();
            (
                lane.take_routed(Instant::now(), max, routed),
                lane.pending(),
            )
        };
        self.inner.metrics.events_pending.set(gauge(pending));
        reports
    }

    /// When [`SharedEventLane::take`] may have something, if anything waits.
    pub fn next_due(&self) -> Option<Instant> {
        self.lock().next_due(Instant::now())
    }

    /// [`SharedEventLane::next_due`] of the objects `routed` accepts.
    pub fn next_due_routed(&self, routed: impl Fn(&ObjectRef) -> bool) -> Option<Instant> {
        self.lock().next_due_routed(Instant::now(), routed)
    }

    /// The lane's wake-ups, for one session: [`EventChanges::changed`]
    /// resolves once a series starts waiting (at once if one did since the
    /// last call).
    pub fn subscribe(&self) -> EventChanges {
        EventChanges(self.inner.changed.subscribe())
    }
}

/// One session's view of [`SharedEventLane`]'s wake-ups.
#[derive(Debug)]
pub struct EventChanges(watch::Receiver<()>);

impl EventChanges {
    /// Resolves once a series starts waiting since the last call.
    pub async fn changed(&mut self) {
        if self.0.changed().await.is_err() {
            // The lane is gone: nothing will wait again.
            std::future::pending::<()>().await;
        }
    }
}

fn gauge(count: usize) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}
