//! How one replica takes part: its identity, where its Leases live, and
//! client-go's leader-election timings, checked before anything starts.

use std::time::Duration;

use super::fence::Fence;

/// How one replica takes part. [`Default`] has client-go's leader-election
/// timings (15 s / 10 s / 2 s); `identity` must be set (e.g. the pod name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaSettings {
    /// Where the Leases live.
    pub namespace: String,
    /// This replica, unique among them (a DNS label: the pod name).
    pub identity: String,
    /// The Leases' name prefix and the value of their label.
    pub prefix: String,
    /// How many shards the workspaces hash into (1..=1024). Every replica
    /// must agree.
    pub shards: u16,
    /// How long others wait, from seeing a record change, before taking it.
    pub lease_duration: Duration,
    /// How long after a renew started the replica stops writing.
    pub renew_deadline: Duration,
    /// How often to renew, read and balance.
    pub retry_period: Duration,
}

impl Default for ReplicaSettings {
    fn default() -> Self {
        Self {
            namespace: "default".into(),
            identity: String::new(),
            prefix: "uplink-hub".into(),
            shards: 16,
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// client-go's `JitterFactor`: a replica holding no shard waits between
/// rounds a retry period plus up to this factor of it, at random
/// (`wait.JitterUntil`, sliding), so replicas started together do not race
/// in lockstep.
pub const JITTER_FACTOR: f64 = 1.2;

/// `period` plus up to `factor` of it, at random (client-go's `wait.Jitter`).
pub(super) fn jittered(period: Duration, factor: f64) -> Duration {
    period + period.mul_f64(rand::random::<f64>() * factor)
}

/// A setting that cannot work, named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("replica setting {field}: {reason}")]
pub struct SettingsError {
    pub field: &'static str,
    pub reason: String,
}

fn dns_label(value: &str, max: usize) -> Result<(), String> {
    let bytes = value.as_bytes();
    if bytes.is_empty() || bytes.len() > max {
        return Err(format!("{value:?} must be 1 to {max} characters"));
    }
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let ends_ok = bytes.first().is_some_and(alnum) && bytes.last().is_some_and(alnum);
    if !ends_ok || !bytes.iter().all(|b| alnum(b) || *b == b'-') {
        return Err(format!(
            "{value:?} must be lowercase letters, digits and '-', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

impl ReplicaSettings {
    /// Checks what the protocol's safety and the names rely on.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let invalid = |field, reason: String| Err(SettingsError { field, reason });
        if let Err(reason) = dns_label(&self.namespace, 63) {
            return invalid("namespace", reason);
        }
        if let Err(reason) = dns_label(&self.identity, 63) {
            return invalid("identity", reason);
        }
        // The prefix is also a label value (63 at most); names stay short.
        if let Err(reason) = dns_label(&self.prefix, 40) {
            return invalid("prefix", reason);
        }
        if !(1..=1024).contains(&self.shards) {
            return invalid("shards", format!("{} is not within 1..=1024", self.shards));
        }
        if self.lease_duration < Duration::from_secs(1) || self.lease_duration.subsec_nanos() != 0 {
            return invalid(
                "lease_duration",
                format!(
                    "{:?} must be whole seconds, at least 1 (Leases count in seconds)",
                    self.lease_duration
                ),
            );
        }
        if self.renew_deadline >= self.lease_duration {
            return invalid(
                "renew_deadline",
                format!(
                    "{:?} must be shorter than lease_duration {:?}",
                    self.renew_deadline, self.lease_duration
                ),
            );
        }
        if self.retry_period.is_zero() || self.retry_period >= self.renew_deadline {
            return invalid(
                "retry_period",
                format!(
                    "{:?} must be above zero and shorter than renew_deadline {:?}",
                    self.retry_period, self.renew_deadline
                ),
            );
        }
        // client-go's NewLeaderElector: renewDeadline > JitterFactor (1.2) ×
        // retryPeriod, in integers: 5 × renew > 6 × retry.
        if self.renew_deadline.saturating_mul(5) <= self.retry_period.saturating_mul(6) {
            return invalid(
                "renew_deadline",
                format!(
                    "{:?} must be longer than {JITTER_FACTOR} × retry_period {:?} (as client-go requires)",
                    self.renew_deadline, self.retry_period
                ),
            );
        }
        Ok(())
    }

    /// A fence with these settings' renew deadline, for [`super::run`].
    pub fn fence(&self) -> Fence {
        Fence::new(self.renew_deadline)
    }

    /// How long a replica stays over its share before releasing the excess
    /// ([`super::balance`]): one lease duration, what a crashed replica's shards
    /// wait anyway.
    pub fn settle(&self) -> Duration {
        self.lease_duration
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::collections::BTreeSet;

    use super::*;

    pub(in crate::replicas) fn valid() -> ReplicaSettings {
        ReplicaSettings {
            identity: "hub-0".into(),
            ..ReplicaSettings::default()
        }
    }

    #[test]
    fn defaults_are_client_go_and_valid() {
        let settings = valid();
        assert_eq!(settings.lease_duration, Duration::from_secs(15));
        assert_eq!(settings.renew_deadline, Duration::from_secs(10));
        assert_eq!(settings.retry_period, Duration::from_secs(2));
        assert_eq!(settings.shards, 16);
        assert_eq!(settings.prefix, "uplink-hub");
        assert_eq!(settings.validate(), Ok(()));
    }

    #[test]
    fn invalid_settings_name_their_field() {
        let field = |settings: ReplicaSettings| settings.validate().err().map(|e| e.field);
        assert_eq!(field(ReplicaSettings::default()), Some("identity"));
        let cases: Vec<(ReplicaSettings, &str)> = vec![
            (
                ReplicaSettings {
                    identity: "Hub_0".into(),
                    ..valid()
                },
                "identity",
            ),
            (
                ReplicaSettings {
                    namespace: String::new(),
                    ..valid()
                },
                "namespace",
            ),
            (
                ReplicaSettings {
                    prefix: "-x".into(),
                    ..valid()
                },
                "prefix",
            ),
            (
                ReplicaSettings {
                    shards: 0,
                    ..valid()
                },
                "shards",
            ),
            (
                ReplicaSettings {
                    shards: 1025,
                    ..valid()
                },
                "shards",
            ),
            (
                ReplicaSettings {
                    lease_duration: Duration::from_millis(1500),
                    ..valid()
                },
                "lease_duration",
            ),
            (
                ReplicaSettings {
                    renew_deadline: Duration::from_secs(15),
                    ..valid()
                },
                "renew_deadline",
            ),
            (
                ReplicaSettings {
                    retry_period: Duration::from_secs(10),
                    ..valid()
                },
                "retry_period",
            ),
            (
                ReplicaSettings {
                    retry_period: Duration::ZERO,
                    ..valid()
                },
                "retry_period",
            ),
        ];
        for (settings, expected) in cases {
            assert_eq!(field(settings.clone()), Some(expected), "{settings:?}");
        }
        let error = ReplicaSettings {
            shards: 0,
            ..valid()
        }
        .validate()
        .err();
        assert!(error.is_some_and(|e| e.to_string().starts_with("replica setting shards:")));
        assert_eq!(
            ReplicaSettings {
                shards: 1024,
                ..valid()
            }
            .validate(),
            Ok(())
        );
    }

    #[test]
    fn renew_deadline_exceeds_the_jitter_factor_times_the_retry_period() {
        let with = |renew_ms, retry_ms| ReplicaSettings {
            renew_deadline: Duration::from_millis(renew_ms),
            retry_period: Duration::from_millis(retry_ms),
            ..valid()
        };
        assert_eq!(
            with(1200, 1000).validate().err().map(|e| e.field),
            Some("renew_deadline")
        );
        assert_eq!(with(1201, 1000).validate(), Ok(()));
        assert_eq!(with(1500, 200).validate(), Ok(()));
    }

    #[test]
    fn jitter_stays_within_client_go_s_bounds() {
        let period = Duration::from_secs(2);
        let samples: Vec<Duration> = (0..1000).map(|_| jittered(period, JITTER_FACTOR)).collect();
        assert!(
            samples
                .iter()
                .all(|d| *d >= period && *d < period.mul_f64(2.2))
        );
        // Not constant: replicas started together drift apart.
        let distinct: BTreeSet<Duration> = samples.into_iter().collect();
        assert!(distinct.len() > 100);
    }
}
