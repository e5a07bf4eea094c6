//! Reading and writing `coordination.k8s.io/v1` Leases with client-go's
//! leader-election semantics (`tools/leaderelection/leaderelection.go`,
//! `resourcelock/leaselock.go`):
//!
//! - the record is the spec: holderIdentity, leaseDurationSeconds,
//!   acquireTime, renewTime, leaseTransitions;
//! - an absent Lease is created; an existing one is replaced carrying the
//!   resourceVersion that was read, so of two candidates only one succeeds
//!   and the other gets 409 Conflict (lost a race, not a failure);
//! - a candidate may take a Lease only when its holder is empty or when the
//!   record has not been *observed* to change for its leaseDurationSeconds on
//!   the candidate's own clock (client-go's `observedTime`): the renewTime
//!   written by another machine is never compared with the local clock, so
//!   skew between replicas does not matter;
//! - releasing clears the holder (client-go's `ReleaseOnCancel`, which also
//!   sets leaseDurationSeconds to 1), so others take it at once.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams, Preconditions};
use kube::{Api, Client};
use tokio::time::Instant;

/// The label on every Lease of one set of replicas (value: the prefix), so
/// one LIST finds them all.
pub const REPLICAS_LABEL: &str = "uplink.io/hub-replicas";

/// What failed, on which Lease.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("listing the leases of {namespace} labelled {REPLICAS_LABEL}={prefix}: {source}")]
    List {
        namespace: String,
        prefix: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "listing the leases of {namespace} labelled {REPLICAS_LABEL}={prefix}: no answer within {after:?}"
    )]
    ListTimeout {
        namespace: String,
        prefix: String,
        after: Duration,
    },
    #[error("{action} lease {namespace}/{name}: {source}")]
    Write {
        action: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("{action} lease {namespace}/{name}: no answer within {after:?}")]
    Timeout {
        action: &'static str,
        namespace: String,
        name: String,
        after: Duration,
    },
}

impl LeaseError {
    /// Someone else wrote the Lease first (409: Conflict on an update,
    /// AlreadyExists on a create), or it was deleted underneath an update
    /// (404). Normal between candidates: not worth a warning.
    pub fn lost_race(&self) -> bool {
        match self {
            LeaseError::Write {
                source: kube::Error::Api(status),
                ..
            } => status.code == 409 || status.code == 404,
            _ => false,
        }
    }
}

/// A Lease's record, as client-go's `LeaderElectionRecord`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRecord {
    /// Empty: unheld.
    pub holder: String,
    pub lease_duration_seconds: i32,
    pub acquire_time: Option<jiff::Timestamp>,
    pub renew_time: Option<jiff::Timestamp>,
    pub transitions: i32,
}

impl LeaseRecord {
    pub fn of(lease: &Lease) -> Self {
        let spec = lease.spec.clone().unwrap_or_default();
        Self {
            holder: spec.holder_identity.unwrap_or_default(),
            lease_duration_seconds: spec.lease_duration_seconds.unwrap_or(0),
            acquire_time: spec.acquire_time.map(|t| t.0),
            renew_time: spec.renew_time.map(|t| t.0),
            transitions: spec.lease_transitions.unwrap_or(0),
        }
    }

    fn spec(&self) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.holder.clone()),
            lease_duration_seconds: Some(self.lease_duration_seconds),
            acquire_time: self.acquire_time.map(MicroTime),
            renew_time: self.renew_time.map(MicroTime),
            lease_transitions: Some(self.transitions),
            ..LeaseSpec::default()
        }
    }

    /// The record that `identity` writes to acquire (or keep) a Lease whose
    /// current record is `self` (`None`: absent).
    pub fn acquired_by(current: Option<&Self>, identity: &str, lease_duration: Duration) -> Self {
        let now = jiff::Timestamp::now();
        let seconds = i32::try_from(lease_duration.as_secs()).unwrap_or(i32::MAX);
        match current {
            Some(current) if current.holder == identity => Self {
                holder: identity.to_owned(),
                lease_duration_seconds: seconds,
                acquire_time: current.acquire_time.or(Some(now)),
                renew_time: Some(now),
                transitions: current.transitions,
            },
            Some(current) => Self {
                holder: identity.to_owned(),
                lease_duration_seconds: seconds,
                acquire_time: Some(now),
                renew_time: Some(now),
                transitions: current.transitions.saturating_add(1),
            },
            None => Self {
                holder: identity.to_owned(),
                lease_duration_seconds: seconds,
                acquire_time: Some(now),
                renew_time: Some(now),
                transitions: 0,
            },
        }
    }

    /// The record that releases a Lease held with `self` (client-go's
    /// `release`): holder cleared, duration 1 s.
    pub fn released(&self) -> Self {
        let now = jiff::Timestamp::now();
        Self {
            holder: String::new(),
            lease_duration_seconds: 1,
            acquire_time: Some(now),
            renew_time: Some(now),
            transitions: self.transitions,
        }
    }
}

/// One Lease as last read or written, and when this replica saw its record
/// change (client-go's `observedTime`, on the local monotonic clock).
#[derive(Debug, Clone)]
pub struct Observed {
    pub lease: Lease,
    pub record: LeaseRecord,
    pub observed_at: Instant,
}

impl Observed {
    pub fn new(lease: Lease, observed_at: Instant) -> Self {
        let record = LeaseRecord::of(&lease);
        Self {
            lease,
            record,
            observed_at,
        }
    }

    /// A newer read of the same Lease: the observation time moves only when
    /// the record changed (as client-go compares the raw record).
    pub fn update(&mut self, lease: Lease, now: Instant) {
        let record = LeaseRecord::of(&lease);
        if record != self.record {
            self.record = record;
            self.observed_at = now;
        }
        self.lease = lease;
    }

    /// Unchanged for its own leaseDurationSeconds, as observed here.
    pub fn expired(&self, now: Instant) -> bool {
        now >= self.expires_at()
    }

    /// When it expires unless its record changes meanwhile.
    pub fn expires_at(&self) -> Instant {
        let duration =
            Duration::from_secs(u64::try_from(self.record.lease_duration_seconds).unwrap_or(0));
        self.observed_at + duration
    }

    /// Held by someone (holder set) and not expired.
    pub fn held(&self, now: Instant) -> bool {
        !self.record.holder.is_empty() && !self.expired(now)
    }
}

/// The Leases of one set of replicas in one namespace.
#[derive(Debug, Clone)]
pub struct LeaseClient {
    api: Api<Lease>,
    namespace: String,
    prefix: String,
}

impl LeaseClient {
    pub fn new(client: Client, namespace: &str, prefix: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            prefix: prefix.to_owned(),
        }
    }

    /// Every Lease of these replicas (one LIST), by name.
    pub async fn list(&self) -> Result<BTreeMap<String, Lease>, LeaseError> {
        let params = ListParams::default().labels(&format!("{REPLICAS_LABEL}={}", self.prefix));
        let list = self
            .api
            .list(&params)
            .await
            .map_err(|source| LeaseError::List {
                namespace: self.namespace.clone(),
                prefix: self.prefix.clone(),
                source,
            })?;
        Ok(list
            .items
            .into_iter()
            .filter_map(|lease| Some((lease.metadata.name.clone()?, lease)))
            .collect())
    }

    /// Deletes the Lease `name` if it is still at `resource_version`
    /// (a precondition: 409 when it changed since, 404 when it is gone).
    pub async fn delete(&self, name: &str, resource_version: &str) -> Result<(), LeaseError> {
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                resource_version: Some(resource_version.to_owned()),
                uid: None,
            }),
            ..DeleteParams::default()
        };
        self.api
            .delete(name, &params)
            .await
            .map(drop)
            .map_err(|source| LeaseError::Write {
                action: "deleting",
                namespace: self.namespace.clone(),
                name: name.to_owned(),
                source,
            })
    }

    /// Writes `record` to the Lease `name`: creates it when `current` is
    /// `None`, else replaces `current` carrying its resourceVersion (409 if
    /// it changed since). Returns the Lease as stored.
    pub async fn write(
        &self,
        name: &str,
        current: Option<&Lease>,
        record: &LeaseRecord,
        action: &'static str,
    ) -> Result<Lease, LeaseError> {
        let error = |source| LeaseError::Write {
            action,
            namespace: self.namespace.clone(),
            name: name.to_owned(),
            source,
        };
        match current {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(name.to_owned()),
                        namespace: Some(self.namespace.clone()),
                        labels: Some(BTreeMap::from([(
                            REPLICAS_LABEL.to_owned(),
                            self.prefix.clone(),
                        )])),
                        ..ObjectMeta::default()
                    },
                    spec: Some(record.spec()),
                };
                self.api
                    .create(&PostParams::default(), &lease)
                    .await
                    .map_err(error)
            }
            Some(current) => {
                let mut lease = current.clone();
                lease.spec = Some(record.spec());
                self.api
                    .replace(name, &PostParams::default(), &lease)
                    .await
                    .map_err(error)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: &str, seconds: i32, renew: i64) -> Lease {
        Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                lease_duration_seconds: Some(seconds),
                renew_time: jiff::Timestamp::from_second(renew).ok().map(MicroTime),
                ..LeaseSpec::default()
            }),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn expiry_counts_from_the_local_observation_of_a_change() {
        let start = Instant::now();
        // The renewTime is far in the past (skewed clock): irrelevant.
        let mut seen = Observed::new(lease("hub-b", 15, 0), start);
        assert!(seen.held(start));
        tokio::time::advance(Duration::from_secs(10)).await;
        // The same record read again: no change observed.
        seen.update(lease("hub-b", 15, 0), Instant::now());
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(seen.expired(Instant::now()));
        // A renewal (new renewTime) observed restarts the wait.
        seen.update(lease("hub-b", 15, 1), Instant::now());
        assert!(seen.held(Instant::now()));
        tokio::time::advance(Duration::from_millis(14_999)).await;
        assert!(seen.held(Instant::now()));
        // An empty holder is free at once.
        let released = Observed::new(lease("", 1, 2), Instant::now());
        assert!(!released.held(Instant::now()));
    }

    #[test]
    fn records_follow_client_go() {
        let duration = Duration::from_secs(15);
        let first = LeaseRecord::acquired_by(None, "hub-a", duration);
        assert_eq!((first.holder.as_str(), first.transitions), ("hub-a", 0));
        assert_eq!(first.lease_duration_seconds, 15);
        let renewed = LeaseRecord::acquired_by(Some(&first), "hub-a", duration);
        assert_eq!(renewed.transitions, 0);
        assert_eq!(renewed.acquire_time, first.acquire_time);
        let taken = LeaseRecord::acquired_by(Some(&renewed), "hub-b", duration);
        assert_eq!((taken.holder.as_str(), taken.transitions), ("hub-b", 1));
        let released = taken.released();
        assert_eq!((released.holder.as_str(), released.transitions), ("", 1));
        assert_eq!(released.lease_duration_seconds, 1);
    }
}
