//! The round: every retry period a replica renews what it holds, reads
//! every Lease with one LIST, counts the live replicas and balances; it
//! also wakes when another replica's Lease expires, and releases everything
//! on shutdown. See the module documentation of [`super`] for the protocol
//! and why its timings are safe.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::balance::{Balancer, ShardState};
use super::fence::Fence;
use super::lease::{LeaseClient, LeaseError, LeaseRecord, Observed};
use super::members;
use super::metrics::ReplicaMetrics;
use super::settings::{JITTER_FACTOR, ReplicaSettings, SettingsError, jittered};
use super::shard::{self, ShardId, member_lease_name, shard_lease_name};
use crate::server::warn::WarnBudget;

/// Takes part in the replicas until `shutdown`, then releases what it holds
/// (bounded by the renew deadline). `fence` (from
/// [`ReplicaSettings::fence`]) is kept up to date for whoever writes.
pub async fn run(
    client: kube::Client,
    settings: ReplicaSettings,
    fence: Fence,
    metrics: ReplicaMetrics,
    shutdown: CancellationToken,
) -> Result<(), SettingsError> {
    settings.validate()?;
    if fence.renew_deadline() > settings.renew_deadline {
        return Err(SettingsError {
            field: "renew_deadline",
            reason: "the fence was made with a longer renew deadline; use ReplicaSettings::fence"
                .into(),
        });
    }
    let mut engine = Engine::new(client, settings, fence, metrics);
    let retry = engine.settings.retry_period;
    while !shutdown.is_cancelled() {
        let started = Instant::now();
        // A tick is never dropped midway: a renew or acquire in flight could
        // land after the release and keep the shard held for a lease. It
        // stops between writes once shutdown is asked; each write (and the
        // LIST) is bounded by the renew deadline.
        engine.tick(&shutdown).await;
        // As client-go: a candidate holding nothing retries jittered from
        // the end of its round (JitterUntil, sliding); a holder renews every
        // retry period from the start of its round (the renew loop), which
        // keeps renewals well within the renew deadline.
        let next = if engine.held.is_empty() {
            Instant::now() + jittered(retry, JITTER_FACTOR)
        } else {
            started + retry
        };
        // A Lease another replica stopped renewing is free the moment it
        // expires: a round then, not up to a jittered retry period later
        // (a dead replica's shards come back that much sooner; a live
        // holder renews long before, so this never fires for it).
        let next = engine
            .next_expiry()
            .map_or(next, |expiry| next.min(expiry + EXPIRY_MARGIN));
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep_until(next) => {}
        }
    }
    engine.release_all().await;
    Ok(())
}

/// One replica's state between rounds.
#[derive(Debug)]
struct Engine {
    leases: LeaseClient,
    settings: ReplicaSettings,
    fence: Fence,
    metrics: ReplicaMetrics,
    /// Every Lease of these replicas as last read or written, by name.
    observed: BTreeMap<String, Observed>,
    /// Shards held → when their last successful renew started.
    held: BTreeMap<ShardId, Instant>,
    member: String,
    /// The holder string this process writes: `<identity>_<uuid v4>`, new
    /// on every start, so two processes with one identity never take each
    /// other's records for their own.
    holder: String,
    balancer: Balancer,
    warnings: WarnBudget,
    rounds: u64,
}

/// How long after a Lease's expiry (as observed) the round that takes it
/// runs: past the instant, so the Lease is expired when it is looked at.
const EXPIRY_MARGIN: Duration = Duration::from_millis(10);

/// Concurrent Lease writes in one round.
const CONCURRENT_WRITES: usize = 16;

impl Engine {
    fn new(
        client: kube::Client,
        settings: ReplicaSettings,
        fence: Fence,
        metrics: ReplicaMetrics,
    ) -> Self {
        Self {
            leases: LeaseClient::new(client, &settings.namespace, &settings.prefix),
            member: member_lease_name(&settings.prefix, &settings.identity),
            holder: holder_string(&settings.identity),
            balancer: Balancer::new(settings.settle()),
            settings,
            fence,
            metrics,
            observed: BTreeMap::new(),
            held: BTreeMap::new(),
            warnings: WarnBudget::default(),
            rounds: 0,
        }
    }

    fn shard_name(&self, shard: ShardId) -> String {
        shard_lease_name(&self.settings.prefix, shard)
    }

    fn warn(&self, what: &str, error: &LeaseError) {
        if let Some(suppressed) = self.warnings.allow() {
            warn!(identity = %self.settings.identity, %error, suppressed, "{what}");
        }
    }

    /// One round: renew, read, balance, act. Stops between writes once
    /// `shutdown` is asked (the write in flight finishes: it is bounded).
    async fn tick(&mut self, shutdown: &CancellationToken) {
        self.rounds += 1;
        self.renew_member().await;
        if !shutdown.is_cancelled() {
            self.renew_shards().await;
        }
        let listed = if shutdown.is_cancelled() {
            false
        } else {
            match self.list().await {
                Ok(leases) => {
                    self.observe(leases);
                    true
                }
                Err(error) => {
                    self.warn("reading the replicas' leases failed", &error);
                    false
                }
            }
        };
        self.drop_stale();
        // The first round only announces this replica: replicas that start
        // together see each other before taking shards.
        if self.rounds > 1 && listed && !shutdown.is_cancelled() {
            self.balance(shutdown).await;
            self.delete_gone_members(shutdown).await;
        }
        self.metrics.shards_held.set(self.held.len() as i64);
    }

    /// Deletes a few member Leases of replicas long gone ([`members`]), each
    /// request bounded by the retry period.
    async fn delete_gone_members(&mut self, shutdown: &CancellationToken) {
        let gone: Vec<(String, String)> = members::gone(
            &self.observed,
            &self.settings.prefix,
            &self.settings.identity,
            Instant::now(),
        )
        .into_iter()
        .map(|(name, version)| (name.to_owned(), version))
        .collect();
        for (name, version) in gone {
            if shutdown.is_cancelled() {
                return;
            }
            let deleting = self.leases.delete(&name, &version);
            match tokio::time::timeout(self.settings.retry_period, deleting).await {
                Ok(Ok(())) => {
                    self.observed.remove(&name);
                    self.metrics.members_deleted.inc();
                    info!(identity = %self.settings.identity, lease = %name, "deleted the member lease of a replica gone for ten lease durations");
                }
                Ok(Err(error)) if error.lost_race() => {
                    debug!(identity = %self.settings.identity, lease = %name, "member lease changed or went before it was deleted");
                }
                Ok(Err(error)) => {
                    self.warn("deleting a gone replica's member lease failed", &error)
                }
                Err(_) => {
                    debug!(identity = %self.settings.identity, lease = %name, "deleting a member lease took longer than the retry period")
                }
            }
        }
    }

    /// Every Lease of these replicas, bounded by the renew deadline (kube
    /// has no read timeout of its own).
    async fn list(&self) -> Result<BTreeMap<String, Lease>, LeaseError> {
        let after = self.settings.renew_deadline;
        match tokio::time::timeout(after, self.leases.list()).await {
            Ok(result) => result,
            Err(_) => Err(LeaseError::ListTimeout {
                namespace: self.settings.namespace.clone(),
                prefix: self.settings.prefix.clone(),
                after,
            }),
        }
    }

    async fn renew_member(&mut self) {
        let current = self.observed.get(&self.member);
        let me = &self.holder;
        if let Some(current) = current
            && current.record.holder != *me
            && current.held(Instant::now())
        {
            if self.warnings.allow().is_some() {
                warn!(identity = %self.settings.identity, holder = %me,
                    other = %current.record.holder, lease = %self.member,
                    "another process holds this replica's member lease: are two replicas using one identity? Taking no shards while it does");
            }
            return;
        }
        let record =
            LeaseRecord::acquired_by(current.map(|c| &c.record), me, self.settings.lease_duration);
        let result = self
            .write(
                &self.member,
                current.map(|c| &c.lease),
                &record,
                "renewing member",
            )
            .await;
        match result {
            Ok(lease) => {
                self.observed
                    .insert(self.member.clone(), Observed::new(lease, Instant::now()));
            }
            Err(error) if error.lost_race() => {
                debug!(identity = %me, %error, "member lease changed underneath; rereading");
            }
            Err(error) => self.warn("renewing the member lease failed", &error),
        }
    }

    async fn renew_shards(&mut self) {
        let me = self.holder.clone();
        let writes: Vec<_> = self
            .held
            .keys()
            .filter_map(|shard| {
                let name = self.shard_name(*shard);
                let current = self.observed.get(&name)?;
                let record = LeaseRecord::acquired_by(
                    Some(&current.record),
                    &me,
                    self.settings.lease_duration,
                );
                Some((*shard, name, current.lease.clone(), record))
            })
            .collect();
        let this = &*self;
        let results: Vec<_> = futures::stream::iter(writes)
            .map(|(shard, name, lease, record)| async move {
                let started = Instant::now();
                let result = this.write(&name, Some(&lease), &record, "renewing").await;
                (shard, name, started, result)
            })
            .buffer_unordered(CONCURRENT_WRITES)
            .collect()
            .await;
        for (shard, name, started, result) in results {
            match result {
                Ok(lease) => self.holding(shard, name, lease, started),
                Err(error) if error.lost_race() => {
                    self.lost(shard, "its lease changed underneath (409 on renew)");
                }
                Err(error) => self.warn("renewing a shard lease failed", &error),
            }
        }
    }

    /// Takes in one LIST: a record seen to change is observed now.
    fn observe(&mut self, leases: BTreeMap<String, Lease>) {
        let now = Instant::now();
        self.observed.retain(|name, _| leases.contains_key(name));
        for (name, lease) in leases {
            match self.observed.get_mut(&name) {
                Some(seen) => seen.update(lease, now),
                None => {
                    self.observed.insert(name, Observed::new(lease, now));
                }
            }
        }
    }

    /// Held shards not renewed within the renew deadline, or whose record
    /// names someone else, are lost.
    fn drop_stale(&mut self) {
        let deadline = self.settings.renew_deadline;
        let stale: Vec<(ShardId, &'static str)> = self
            .held
            .iter()
            .filter_map(|(shard, started)| {
                if started.elapsed() >= deadline {
                    return Some((*shard, "not renewed within the renew deadline"));
                }
                match self.observed.get(&self.shard_name(*shard)) {
                    None => Some((*shard, "its lease is gone")),
                    Some(seen) if seen.record.holder != self.holder => {
                        Some((*shard, "its lease names another holder"))
                    }
                    Some(_) => None,
                }
            })
            .collect();
        for (shard, reason) in stale {
            self.lost(shard, reason);
        }
    }

    /// A write that makes or keeps this replica the holder of `shard`
    /// landed; it `started` at that instant, which is what the fence counts
    /// from.
    fn holding(&mut self, shard: ShardId, name: String, lease: Lease, started: Instant) {
        let seen = Observed::new(lease, Instant::now());
        // leaseTransitions is never negative on a Lease this engine wrote.
        let term = u64::try_from(seen.record.transitions).unwrap_or(0);
        self.observed.insert(name, seen);
        self.held.insert(shard, started);
        self.fence.renewed(shard, started, term);
    }

    fn lost(&mut self, shard: ShardId, reason: &str) {
        self.fence.drop_shard(shard);
        if self.held.remove(&shard).is_some() {
            self.metrics.transitions.with_label_values(&["lost"]).inc();
            info!(%shard, holder = %self.holder, reason, "shard lost");
        }
    }

    async fn balance(&mut self, shutdown: &CancellationToken) {
        let now = Instant::now();
        let me = self.holder.clone();
        let live = live_holders(&self.settings.prefix, &self.observed, now);
        let states: Vec<ShardState> = (0..self.settings.shards)
            .map(|index| {
                let shard = ShardId(index);
                shard_state(
                    self.observed.get(&self.shard_name(shard)),
                    self.held.contains_key(&shard),
                    &me,
                    now,
                )
            })
            .collect();
        let mut plan = self.balancer.plan(&me, &live, &states, now);
        // While another process holds this identity's member lease, take
        // nothing: two processes with one identity (a force-deleted pod
        // still running, two deployments with one prefix) must not both
        // act as that replica. (The warning is in `renew_member`.)
        if !self.is_member(now) {
            plan.acquire.clear();
        }
        for shard in plan.release {
            if shutdown.is_cancelled() {
                return;
            }
            self.release(shard).await;
        }
        // Each shard lost to another replica is replaced by the next spare.
        let mut spare = plan.spare.into_iter();
        let mut wanted = plan.acquire;
        while !wanted.is_empty() && !shutdown.is_cancelled() {
            let lost = self.acquire(&wanted).await;
            wanted = spare.by_ref().take(lost).collect();
        }
    }

    /// When the next Lease held by another replica expires, as observed
    /// here (`None`: none does): a round then takes its shard at once
    /// instead of at the next retry period.
    fn next_expiry(&self) -> Option<Instant> {
        self.observed
            .values()
            .filter(|seen| !seen.record.holder.is_empty() && seen.record.holder != self.holder)
            .map(Observed::expires_at)
            .filter(|at| *at > Instant::now())
            .min()
    }

    /// Is the member lease, as last seen, this process's?
    fn is_member(&self, now: Instant) -> bool {
        self.observed
            .get(&self.member)
            .is_some_and(|seen| seen.record.holder == self.holder && seen.held(now))
    }

    /// Tries to acquire `shards` at once (a dead replica's shards are all
    /// free at the same moment, and one write after another would hand
    /// them over one write's latency apart). Returns how many were lost to
    /// another replica.
    async fn acquire(&mut self, shards: &[ShardId]) -> usize {
        let writes: Vec<_> = shards
            .iter()
            .map(|shard| {
                let name = self.shard_name(*shard);
                let current = self.observed.get(&name);
                let record = LeaseRecord::acquired_by(
                    current.map(|c| &c.record),
                    &self.holder,
                    self.settings.lease_duration,
                );
                (*shard, name, current.map(|c| c.lease.clone()), record)
            })
            .collect();
        let this = &*self;
        let results: Vec<_> = futures::stream::iter(writes)
            .map(|(shard, name, lease, record)| async move {
                let started = Instant::now();
                let result = this
                    .write(&name, lease.as_ref(), &record, "acquiring")
                    .await;
                (shard, name, started, result)
            })
            .buffer_unordered(CONCURRENT_WRITES)
            .collect()
            .await;
        let mut lost = 0;
        for (shard, name, started, result) in results {
            match result {
                Ok(lease) => {
                    self.holding(shard, name, lease, started);
                    self.metrics
                        .transitions
                        .with_label_values(&["acquired"])
                        .inc();
                    info!(%shard, holder = %self.holder, "shard acquired");
                }
                Err(error) if error.lost_race() => {
                    debug!(%shard, holder = %self.holder, "another replica took the shard first");
                    lost += 1;
                }
                Err(error) => self.warn("acquiring a shard lease failed", &error),
            }
        }
        lost
    }

    /// Closes the fence, then clears the holder.
    async fn release(&mut self, shard: ShardId) {
        self.fence.drop_shard(shard);
        if self.held.remove(&shard).is_none() {
            return;
        }
        let name = self.shard_name(shard);
        self.metrics
            .transitions
            .with_label_values(&["released"])
            .inc();
        info!(%shard, holder = %self.holder, "shard released");
        let Some(current) = self.observed.get(&name) else {
            return;
        };
        let record = current.record.released();
        match self
            .write(&name, Some(&current.lease), &record, "releasing")
            .await
        {
            Ok(lease) => {
                self.observed
                    .insert(name, Observed::new(lease, Instant::now()));
            }
            // Others take it when it expires.
            Err(error) => self.warn("releasing a shard lease failed", &error),
        }
    }

    /// On shutdown (after the last tick finished): every record naming this
    /// process, shards and member Lease together, released, all within the
    /// renew deadline. Re-reads first, so no write carries a resourceVersion
    /// older than the last renew; a 409 is re-read and retried once.
    async fn release_all(&mut self) {
        self.fence.drop_all();
        let bound = self.settings.renew_deadline;
        if tokio::time::timeout(bound, self.release_mine())
            .await
            .is_err()
        {
            warn!(holder = %self.holder, "releasing the leases took longer than the renew deadline; the rest expire");
        }
        self.held.clear();
        self.metrics.shards_held.set(0);
    }

    async fn release_mine(&mut self) {
        for attempt in 0..2 {
            match self.list().await {
                Ok(leases) => self.observe(leases),
                // What was last seen is the best left.
                Err(error) => self.warn("reading the leases to release them failed", &error),
            }
            let writes: Vec<(String, Lease, LeaseRecord)> = self
                .observed
                .iter()
                .filter(|(_, seen)| seen.record.holder == self.holder)
                .map(|(name, seen)| (name.clone(), seen.lease.clone(), seen.record.released()))
                .collect();
            if writes.is_empty() {
                return;
            }
            let this = &*self;
            let results: Vec<_> = futures::stream::iter(writes)
                .map(|(name, lease, record)| async move {
                    let result = this.write(&name, Some(&lease), &record, "releasing").await;
                    (name, result)
                })
                .buffer_unordered(CONCURRENT_WRITES)
                .collect()
                .await;
            let mut conflicts = 0;
            for (name, result) in results {
                match result {
                    Ok(lease) => {
                        if name != self.member {
                            self.metrics
                                .transitions
                                .with_label_values(&["released"])
                                .inc();
                            info!(lease = %name, holder = %self.holder, "shard released");
                        }
                        self.observed
                            .insert(name, Observed::new(lease, Instant::now()));
                    }
                    Err(error) if error.lost_race() && attempt == 0 => conflicts += 1,
                    // Others take it when it expires.
                    Err(error) => self.warn("releasing a lease failed", &error),
                }
            }
            if conflicts == 0 {
                return;
            }
            debug!(holder = %self.holder, conflicts, "leases changed underneath the release; rereading once");
        }
    }

    /// One write, bounded by the renew deadline (as client-go bounds a renew).
    async fn write(
        &self,
        name: &str,
        current: Option<&Lease>,
        record: &LeaseRecord,
        action: &'static str,
    ) -> Result<Lease, LeaseError> {
        match tokio::time::timeout(
            self.settings.renew_deadline,
            self.leases.write(name, current, record, action),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => Err(LeaseError::Timeout {
                action,
                namespace: self.settings.namespace.clone(),
                name: name.to_owned(),
                after: self.settings.renew_deadline,
            }),
        }
    }
}

/// The holder string of one process of `identity`: `<identity>_<uuid v4>`.
/// The identity part names the replica (and its member Lease); the uuid
/// tells two processes of one identity apart.
fn holder_string(identity: &str) -> String {
    format!("{identity}_{}", uuid::Uuid::new_v4())
}

/// The identity part of a holder string.
fn identity_of(holder: &str) -> &str {
    holder
        .split_once('_')
        .map_or(holder, |(identity, _)| identity)
}

/// The live replicas' holder strings: member Leases held (renewed within
/// their duration, as observed) by a process of the identity they name.
fn live_holders(
    prefix: &str,
    observed: &BTreeMap<String, Observed>,
    now: Instant,
) -> BTreeSet<String> {
    observed
        .iter()
        .filter_map(|(name, seen)| {
            let identity = shard::parse_member_lease_name(prefix, name)?;
            (seen.held(now) && identity_of(&seen.record.holder) == identity)
                .then(|| seen.record.holder.clone())
        })
        .collect()
}

/// One shard as the process whose holder string is `me` sees it. Only a
/// record naming `me` exactly is this process's to reclaim; one naming
/// another process of the same identity is someone else's.
fn shard_state(seen: Option<&Observed>, held: bool, me: &str, now: Instant) -> ShardState {
    match seen {
        None => ShardState::Free,
        Some(_) if held => ShardState::Mine,
        // Ours on record but not counted as held: ours to reclaim.
        Some(seen) if seen.record.holder == me => ShardState::Free,
        Some(seen) if seen.held(now) => ShardState::HeldBy(seen.record.holder.clone()),
        Some(_) => ShardState::Free,
    }
}

#[cfg(test)]
mod tests {
    use prometheus::Registry;

    use super::*;
    use crate::replicas::settings::tests::valid;

    fn observed(holder: &str) -> Observed {
        let record = LeaseRecord::acquired_by(None, holder, Duration::from_secs(15));
        let lease = Lease {
            metadata: kube::api::ObjectMeta::default(),
            spec: None,
        };
        let mut seen = Observed::new(lease, Instant::now());
        seen.record = record;
        seen
    }

    #[tokio::test(start_paused = true)]
    async fn only_this_process_s_records_are_its_own() {
        let me = holder_string("hub-0");
        let twin = holder_string("hub-0");
        assert_ne!(me, twin, "two processes of one identity differ");
        assert!(me.starts_with("hub-0_") && me.len() == "hub-0_".len() + 36);
        assert_eq!(identity_of(&me), "hub-0");
        let now = Instant::now();
        // A record naming this process, not counted as held: reclaim it.
        assert_eq!(
            shard_state(Some(&observed(&me)), false, &me, now),
            ShardState::Free
        );
        // One naming another process of the same identity is that one's.
        assert_eq!(
            shard_state(Some(&observed(&twin)), false, &me, now),
            ShardState::HeldBy(twin.clone())
        );
        assert_eq!(
            shard_state(Some(&observed(&twin)), true, &me, now),
            ShardState::Mine
        );
        tokio::time::advance(Duration::from_secs(15)).await;
        let now = Instant::now();
        let expired = observed(&twin);
        let mut expired = expired;
        expired.observed_at = now - Duration::from_secs(15);
        assert_eq!(
            shard_state(Some(&expired), false, &me, now),
            ShardState::Free
        );

        // The live set is holder strings, from member leases held by a
        // process of the identity they name.
        let mut leases = BTreeMap::new();
        leases.insert(member_lease_name("uplink-hub", "hub-0"), observed(&twin));
        leases.insert(
            member_lease_name("uplink-hub", "hub-1"),
            observed(&holder_string("hub-2")),
        );
        let live = live_holders("uplink-hub", &leases, now);
        assert_eq!(live, BTreeSet::from([twin.clone()]));
    }

    #[tokio::test(start_paused = true)]
    async fn a_process_takes_no_shards_while_its_member_lease_is_another_s()
    -> Result<(), Box<dyn std::error::Error>> {
        let settings = valid();
        // Never contacted: the test looks at the engine's state only.
        let client = kube::Client::try_from(kube::Config::new("http://127.0.0.1:1".parse()?))?;
        let metrics = ReplicaMetrics::register(&Registry::new())?;
        let mut engine = Engine::new(client, settings.clone(), settings.fence(), metrics);
        let now = Instant::now();
        assert!(!engine.is_member(now), "no member lease seen yet");
        let twin = holder_string("hub-0");
        engine
            .observed
            .insert(engine.member.clone(), observed(&twin));
        assert!(!engine.is_member(now));
        let mine = engine.holder.clone();
        engine
            .observed
            .insert(engine.member.clone(), observed(&mine));
        assert!(engine.is_member(now));
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn the_next_round_comes_when_another_replica_s_lease_expires()
    -> Result<(), Box<dyn std::error::Error>> {
        let settings = valid();
        // Never contacted: the test looks at the engine's state only.
        let client = kube::Client::try_from(kube::Config::new("http://127.0.0.1:1".parse()?))?;
        let metrics = ReplicaMetrics::register(&Registry::new())?;
        let mut engine = Engine::new(client, settings.clone(), settings.fence(), metrics);
        assert_eq!(engine.next_expiry(), None, "nothing observed");
        let mine = engine.holder.clone();
        engine
            .observed
            .insert(engine.shard_name(ShardId(0)), observed(&mine));
        assert_eq!(
            engine.next_expiry(),
            None,
            "its own Leases are renewed, not awaited"
        );
        let other = holder_string("hub-1");
        let mut dying = observed(&other);
        let seen_at = Instant::now();
        dying.observed_at = seen_at;
        engine.observed.insert(engine.shard_name(ShardId(1)), dying);
        let mut later = observed(&other);
        later.observed_at = seen_at + Duration::from_secs(3);
        engine.observed.insert(engine.shard_name(ShardId(2)), later);
        // (The records last for 15 s.)
        assert_eq!(
            engine.next_expiry(),
            Some(seen_at + Duration::from_secs(15))
        );
        tokio::time::advance(Duration::from_secs(16)).await;
        assert_eq!(
            engine.next_expiry(),
            Some(seen_at + Duration::from_secs(18)),
            "an expired Lease is due already: the next one counts"
        );
        Ok(())
    }
}
