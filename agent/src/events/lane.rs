//! The lane events wait in: series folded from [`Observed`] events, sent
//! as [`EventReport`]s when the rate limits allow; see [`super`].

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;
use uplink_ops::rate::TokenBucket;
use uplink_protocol::{EventReport, ObjectRef};

/// How events are folded, limited and bounded.
#[derive(Debug, Clone)]
pub struct EventSettings {
    /// Reports per second about one object, sustained, and at once.
    pub per_object_rate: f64,
    pub per_object_burst: u32,
    /// Reports per second of the whole cluster, sustained, and at once.
    pub per_cluster_rate: f64,
    pub per_cluster_burst: u32,
    /// Most series tracked.
    pub max_series: usize,
    /// Most series waiting to be sent.
    pub max_pending: usize,
    /// Most downstream Events remembered for their counts.
    pub max_tracked_events: usize,
    /// A series not observed for this long is forgotten.
    pub series_ttl: Duration,
}

impl Default for EventSettings {
    fn default() -> Self {
        Self {
            per_object_rate: 0.2,
            per_object_burst: 5,
            per_cluster_rate: 50.0,
            per_cluster_burst: 200,
            max_series: 10_000,
            max_pending: 1_000,
            max_tracked_events: 50_000,
            series_ttl: Duration::from_secs(6 * 60),
        }
    }
}

/// What makes two events one series (client-go's `getKey`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SeriesKey {
    pub regarding: ObjectRef,
    pub related: Option<ObjectRef>,
    /// `Normal` or `Warning`.
    pub type_: String,
    pub reason: String,
    pub action: String,
    pub reporting_controller: String,
    pub reporting_instance: String,
}

/// One downstream Event, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// The downstream Event's uid.
    pub uid: String,
    pub key: SeriesKey,
    pub note: String,
    /// Occurrences it stands for: its `series.count`, else its core/v1
    /// `count`, else 1.
    pub count: u64,
    /// Its first and last observation, milliseconds since the Unix epoch.
    pub first_ms: i64,
    pub last_ms: i64,
}

/// Why an observation or a report went nowhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// A new series while [`EventSettings::max_series`] are tracked.
    TooManySeries,
    /// The oldest waiting report, for a new one, at
    /// [`EventSettings::max_pending`].
    LaneFull,
}

impl Dropped {
    /// The reason as `uplink_agent_events_dropped_total` labels it.
    pub fn reason(self) -> &'static str {
        match self {
            Self::TooManySeries => "too_many_series",
            Self::LaneFull => "lane_full",
        }
    }
}

#[derive(Debug)]
struct Series {
    note: String,
    count: u64,
    /// When the series began: its first observation's, fixed for its
    /// life, since with the key it names the series upstream.
    first_ms: i64,
    last_ms: i64,
    /// When it was last observed (for the TTL).
    seen: Instant,
    /// Waiting to be sent.
    pending: bool,
}

/// The agent's events on their way up; see the module documentation.
#[derive(Debug)]
pub struct EventLane {
    settings: EventSettings,
    series: HashMap<SeriesKey, Series>,
    /// Series waiting to be sent, oldest first.
    pending: VecDeque<SeriesKey>,
    /// Downstream Event uid → its series and the count already added.
    tracked: HashMap<String, (SeriesKey, u64)>,
    /// `tracked`'s uids, oldest first.
    tracked_order: VecDeque<String>,
    per_object: HashMap<ObjectRef, TokenBucket>,
    cluster: TokenBucket,
    /// When [`EventLane::expire`] last looked.
    expired: Instant,
}

/// How often the lane looks for series and buckets to forget.
const EXPIRE_EVERY: Duration = Duration::from_secs(1);

impl EventLane {
    pub fn new(settings: EventSettings, now: Instant) -> Self {
        let cluster =
            TokenBucket::full_at(settings.per_cluster_rate, settings.per_cluster_burst, now);
        Self {
            settings,
            series: HashMap::new(),
            pending: VecDeque::new(),
            tracked: HashMap::new(),
            tracked_order: VecDeque::new(),
            per_object: HashMap::new(),
            cluster,
            expired: now,
        }
    }

    /// Series waiting to be sent.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Series tracked.
    pub fn series(&self) -> usize {
        self.series.len()
    }

    /// Folds `event` into its series. Returns what it dropped, if anything.
    pub fn observe(&mut self, event: Observed, now: Instant) -> Option<Dropped> {
        let known = self.series.contains_key(&event.key);
        if !known && self.series.len() >= self.settings.max_series {
            return Some(Dropped::TooManySeries);
        }
        let added = match self.tracked.get_mut(&event.uid) {
            Some((key, seen)) if *key == event.key => {
                let added = event.count.saturating_sub(*seen);
                *seen = (*seen).max(event.count);
                added
            }
            // New, or changed its key (a new event under an old uid).
            _ => {
                self.track(&event);
                event.count.max(1)
            }
        };
        if added == 0 {
            // Seen before (a resync, or a change of its note only).
            if let Some(series) = self.series.get_mut(&event.key) {
                series.seen = now;
            }
            return None;
        }
        let series = self
            .series
            .entry(event.key.clone())
            .or_insert_with(|| Series {
                note: String::new(),
                count: 0,
                first_ms: event.first_ms,
                last_ms: event.last_ms,
                seen: now,
                pending: false,
            });
        series.seen = now;
        series.count += added;
        series.last_ms = series.last_ms.max(event.last_ms);
        series.note = event.note;
        if series.pending {
            return None;
        }
        series.pending = true;
        self.pending.push_back(event.key);
        if self.pending.len() > self.settings.max_pending {
            if let Some(oldest) = self.pending.pop_front()
                && let Some(series) = self.series.get_mut(&oldest)
            {
                series.pending = false;
            }
            return Some(Dropped::LaneFull);
        }
        None
    }

    fn track(&mut self, event: &Observed) {
        let fresh = self
            .tracked
            .insert(event.uid.clone(), (event.key.clone(), event.count.max(1)))
            .is_none();
        if fresh {
            self.tracked_order.push_back(event.uid.clone());
        }
        while self.tracked_order.len() > self.settings.max_tracked_events {
            if let Some(uid) = self.tracked_order.pop_front() {
                self.tracked.remove(&uid);
            }
        }
    }

    /// Up to `max` reports the rate limits allow at `now`, oldest waiting
    /// first; a series whose object is over its limit waits without holding
    /// up the others. Also forgets series past their TTL.
    pub fn take(&mut self, now: Instant, max: usize) -> Vec<EventReport> {
        self.take_routed(now, max, |_| true)
    }

    /// [`EventLane::take`] of the series whose `regarding` object `routed`
    /// accepts (those its hub replica's session takes); the others keep
    /// waiting, within the lane's bound.
    pub fn take_routed(
        &mut self,
        now: Instant,
        max: usize,
        routed: impl Fn(&ObjectRef) -> bool,
    ) -> Vec<EventReport> {
        let mut reports = Vec::new();
        let mut waiting = VecDeque::with_capacity(self.pending.len());
        while let Some(key) = self.pending.pop_front() {
            if reports.len() >= max || !routed(&key.regarding) || !self.cluster_allows(now) {
                waiting.push_back(key);
                continue;
            }
            let settings = &self.settings;
            let bucket = self
                .per_object
                .entry(key.regarding.clone())
                .or_insert_with(|| {
                    TokenBucket::full_at(settings.per_object_rate, settings.per_object_burst, now)
                });
            if !bucket.try_take(now) {
                waiting.push_back(key);
                continue;
            }
            // Both limits allow it: the cluster's token is taken now.
            self.cluster.try_take(now);
            if let Some(series) = self.series.get_mut(&key) {
                series.pending = false;
                reports.push(EventReport {
                    regarding: key.regarding,
                    related: key.related,
                    event_type: key.type_,
                    reason: key.reason,
                    action: key.action,
                    reporting_controller: key.reporting_controller,
                    reporting_instance: key.reporting_instance,
                    note: series.note.clone(),
                    count: series.count,
                    first_ms: series.first_ms,
                    last_ms: series.last_ms,
                });
            }
        }
        self.pending = waiting;
        self.expire(now);
        reports
    }

    fn cluster_allows(&mut self, now: Instant) -> bool {
        self.cluster.next_token_at(now) <= now
    }

    /// When [`EventLane::take`] may have something to send, if anything
    /// waits.
    pub fn next_due(&mut self, now: Instant) -> Option<Instant> {
        self.next_due_routed(now, |_| true)
    }

    /// [`EventLane::next_due`] of the series `routed` accepts (see
    /// [`EventLane::take_routed`]).
    pub fn next_due_routed(
        &mut self,
        now: Instant,
        routed: impl Fn(&ObjectRef) -> bool,
    ) -> Option<Instant> {
        if !self.pending.iter().any(|key| routed(&key.regarding)) {
            return None;
        }
        let cluster = self.cluster.next_token_at(now);
        let object = self
            .pending
            .iter()
            .filter(|key| routed(&key.regarding))
            .map(|key| {
                self.per_object
                    .get_mut(&key.regarding)
                    .map_or(now, |bucket| bucket.next_token_at(now))
            })
            .min()
            .unwrap_or(now);
        Some(cluster.max(object))
    }

    /// Forgets series not observed within the TTL (and not waiting), and
    /// the buckets that are full again (a full bucket is a new one); at
    /// most once per [`EXPIRE_EVERY`], since it looks at every one.
    fn expire(&mut self, now: Instant) {
        if now.saturating_duration_since(self.expired) < EXPIRE_EVERY {
            return;
        }
        self.expired = now;
        let ttl = self.settings.series_ttl;
        self.series
            .retain(|_, series| series.pending || now.saturating_duration_since(series.seen) < ttl);
        self.per_object.retain(|_, bucket| !bucket.is_full(now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(name: &str) -> ObjectRef {
        ObjectRef {
            group: "apps".into(),
            version: "v1".into(),
            resource: "deployments".into(),
            kind: "Deployment".into(),
            workspace: "root:org:team-a".into(),
            namespace: Some("shop".into()),
            name: name.into(),
            uid: format!("uid-{name}"),
        }
    }

    fn key(name: &str, reason: &str) -> SeriesKey {
        SeriesKey {
            regarding: object(name),
            related: None,
            type_: "Warning".into(),
            reason: reason.into(),
            action: "Scheduling".into(),
            reporting_controller: "default-scheduler".into(),
            reporting_instance: "node-1".into(),
        }
    }

    fn event(uid: &str, key: SeriesKey, count: u64, at_ms: i64) -> Observed {
        Observed {
            uid: uid.into(),
            key,
            note: format!("0/3 nodes are available (at {at_ms})"),
            count,
            first_ms: at_ms,
            last_ms: at_ms,
        }
    }

    fn lane(now: Instant) -> EventLane {
        EventLane::new(EventSettings::default(), now)
    }

    #[test]
    fn a_burst_for_one_object_goes_up_as_a_few_reports_with_the_whole_count() {
        let start = Instant::now();
        let mut lane = lane(start);
        let mut sent = Vec::new();
        // 10,000 downstream Events about one object over 10 s, sent as
        // the limits allow, then what is left once the object's bucket
        // refills.
        for i in 0..10_000_i64 {
            let now = start + Duration::from_millis(u64::try_from(i).unwrap_or(0));
            assert_eq!(
                lane.observe(
                    event(&format!("e{i}"), key("web", "FailedScheduling"), 1, i),
                    now
                ),
                None
            );
            sent.extend(lane.take(now, 100));
        }
        let later = start + Duration::from_secs(30);
        sent.extend(lane.take(later, 100));
        assert!(
            sent.len() <= 5 + 3,
            "a burst of five, then one per five seconds: {} reports",
            sent.len()
        );
        let last = sent.last().map(|r| (r.count, r.first_ms, r.last_ms));
        assert_eq!(
            last,
            Some((10_000, 0, 9_999)),
            "the final report has every occurrence"
        );
        assert_eq!(lane.pending(), 0);
        assert_eq!(lane.series(), 1);
    }

    #[test]
    fn a_downstream_series_adds_what_its_count_grew_by() {
        let now = Instant::now();
        let mut lane = lane(now);
        let k = key("web", "BackOff");
        lane.observe(event("a", k.clone(), 1, 0), now);
        lane.observe(event("a", k.clone(), 5, 10), now);
        lane.observe(event("a", k.clone(), 5, 10), now); // a resync: nothing new
        lane.observe(event("b", k.clone(), 3, 20), now); // another event, same series
        let reports = lane.take(now, 10);
        assert_eq!(reports.len(), 1, "one series, one report");
        assert_eq!(reports[0].count, 8);
        assert_eq!((reports[0].first_ms, reports[0].last_ms), (0, 20));
        // Nothing changed since: nothing to send.
        lane.observe(event("a", k, 5, 10), now);
        assert!(lane.take(now, 10).is_empty());
    }

    #[test]
    fn one_noisy_object_does_not_hold_up_another() {
        let now = Instant::now();
        let mut lane = lane(now);
        for i in 0..20 {
            lane.observe(
                event(&format!("n{i}"), key("noisy", &format!("R{i}")), 1, i),
                now,
            );
        }
        lane.observe(event("q", key("quiet", "Scaled"), 1, 0), now);
        let sent = lane.take(now, 100);
        assert_eq!(
            sent.len(),
            6,
            "the noisy object's burst of five, and the quiet one"
        );
        assert!(sent.iter().any(|r| r.regarding.name == "quiet"));
        let next = lane.next_due(now);
        assert_eq!(
            next,
            Some(now + Duration::from_secs(5)),
            "0.2 per second per object"
        );
    }

    #[test]
    fn the_cluster_limit_holds_every_object_back() {
        let now = Instant::now();
        let settings = EventSettings {
            per_cluster_burst: 3,
            per_cluster_rate: 1.0,
            ..EventSettings::default()
        };
        let mut lane = EventLane::new(settings, now);
        for i in 0..10 {
            lane.observe(
                event(&format!("e{i}"), key(&format!("o{i}"), "Created"), 1, i),
                now,
            );
        }
        assert_eq!(lane.take(now, 100).len(), 3);
        assert_eq!(lane.next_due(now), Some(now + Duration::from_secs(1)));
        assert_eq!(lane.take(now + Duration::from_secs(1), 100).len(), 1);
        assert_eq!(lane.pending(), 6);
    }

    #[test]
    fn bounds_drop_and_say_why() {
        let now = Instant::now();
        let settings = EventSettings {
            max_series: 3,
            max_pending: 2,
            ..EventSettings::default()
        };
        let mut lane = EventLane::new(settings, now);
        let observe = |lane: &mut EventLane, name: &str| {
            lane.observe(event(name, key(name, "Created"), 1, 0), now)
        };
        assert_eq!(observe(&mut lane, "a"), None);
        assert_eq!(observe(&mut lane, "b"), None);
        assert_eq!(
            observe(&mut lane, "c"),
            Some(Dropped::LaneFull),
            "a's report goes"
        );
        assert_eq!(observe(&mut lane, "d"), Some(Dropped::TooManySeries));
        let sent: Vec<String> = lane
            .take(now, 10)
            .into_iter()
            .map(|r| r.regarding.name)
            .collect();
        assert_eq!(sent, ["b", "c"]);
        assert_eq!(Dropped::LaneFull.reason(), "lane_full");
    }

    #[test]
    fn quiet_series_are_forgotten_after_their_ttl() {
        let now = Instant::now();
        let mut lane = lane(now);
        lane.observe(event("a", key("web", "Created"), 1, 0), now);
        assert_eq!(lane.take(now, 10).len(), 1);
        assert_eq!(lane.series(), 1);
        lane.take(now + Duration::from_secs(6 * 60), 10);
        assert_eq!(lane.series(), 0);
        // The same downstream Event seen again after that is not new: it
        // adds nothing (its uid is still remembered), and no empty series
        // comes back for it.
        let later = now + Duration::from_secs(7 * 60);
        lane.observe(event("a", key("web", "Created"), 1, 0), later);
        assert!(lane.take(later, 10).is_empty());
        assert_eq!(lane.series(), 0);
        // A new occurrence starts the series again.
        lane.observe(event("b", key("web", "Created"), 1, 1), later);
        assert_eq!(lane.take(later, 10).len(), 1);
    }

    #[test]
    fn a_report_waits_while_its_object_has_no_route() {
        let now = Instant::now();
        let mut lane = lane(now);
        lane.observe(event("u1", key("web", "Pulled"), 1, 0), now);
        lane.observe(event("u2", key("db", "Pulled"), 1, 0), now);
        let routed = |object: &ObjectRef| object.name == "db";
        assert_eq!(lane.next_due_routed(now, |_| false), None);
        assert!(lane.next_due_routed(now, routed).is_some());
        let reports = lane.take_routed(now, 10, routed);
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].regarding.name, "db");
        assert_eq!(lane.pending(), 1, "web's report waits for a route");
        assert_eq!(lane.take(now, 10)[0].regarding.name, "web");
    }
}
