//! The story the driver tells about every demo Deployment, tick by tick:
//! replicas come up 0 → 3, then, over and over, a rollout (a spec change, so a
//! new generation), a failure (pods stop being ready, `Available=False`) and
//! the recovery. No controllers run in the demo's clusters, so this script is
//! what makes the status move.
//!
//! The script is a pure function of the tick, so it is easy to test and every
//! object can run it with its own delay.

use k8s_openapi::api::apps::v1::{DeploymentCondition, DeploymentStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::topology::DESIRED_REPLICAS;

/// Ticks the first scale-up takes before the object settles at 3/3.
const SCALE_UP_TICKS: u64 = 3;
/// Length of the repeating rollout / failure / recovery cycle.
const CYCLE_TICKS: u64 = 14;

/// What is happening to the Deployment, as a person would say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    ScalingUp,
    Steady,
    RollingOut,
    Failing,
    Recovering,
}

impl Phase {
    pub fn label(self) -> &'static str {
        match self {
            Phase::ScalingUp => "scaling up",
            Phase::Steady => "steady",
            Phase::RollingOut => "rolling out",
            Phase::Failing => "failing",
            Phase::Recovering => "recovering",
        }
    }
}

/// The state of one Deployment at one tick of the script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scene {
    pub phase: Phase,
    /// How many rollouts (spec changes) have started; the Deployment's spec
    /// is at revision `rollouts + 1`.
    pub rollouts: u32,
    pub replicas: i32,
    pub ready: i32,
    pub updated: i32,
}

impl Scene {
    /// The scene at `tick` (0 = the object's first tick).
    pub fn at(tick: u64) -> Scene {
        let d = DESIRED_REPLICAS;
        if tick < SCALE_UP_TICKS {
            // 0/3, 1/3, 2/3 ready while pods start.
            let ready = i32::try_from(tick).unwrap_or(d);
            return Scene {
                phase: Phase::ScalingUp,
                rollouts: 0,
                replicas: (ready + 1).min(d),
                ready,
                updated: (ready + 1).min(d),
            };
        }
        let since = tick - SCALE_UP_TICKS;
        let cycle = u32::try_from(since / CYCLE_TICKS).unwrap_or(u32::MAX - 1);
        let scene = |phase, rollouts, replicas, ready, updated| Scene {
            phase,
            rollouts,
            replicas,
            ready,
            updated,
        };
        match since % CYCLE_TICKS {
            0..=2 => scene(Phase::Steady, cycle, d, d, d),
            // A surge pod of the new revision, then old ones replaced one by one.
            3 => scene(Phase::RollingOut, cycle + 1, d + 1, d, 1),
            4 => scene(Phase::RollingOut, cycle + 1, d + 1, d, 2),
            5 => scene(Phase::RollingOut, cycle + 1, d + 1, d, d),
            6..=7 => scene(Phase::Steady, cycle + 1, d, d, d),
            // Two pods crash and stay down for a while.
            8..=10 => scene(Phase::Failing, cycle + 1, d, d - 2, d),
            11 => scene(Phase::Recovering, cycle + 1, d, d - 1, d),
            _ => scene(Phase::Steady, cycle + 1, d, d, d),
        }
    }

    /// `Available` holds when every desired replica is ready (the default
    /// `maxUnavailable` of 25% of 3 rounds down to 0).
    pub fn available(&self) -> bool {
        self.ready >= DESIRED_REPLICAS
    }

    /// The full status a deployment controller would write for this scene
    /// once it observed `generation`. `now` stamps the condition times.
    pub fn status(&self, generation: i64, now: jiff::Timestamp) -> DeploymentStatus {
        let condition =
            |type_: &str, status: bool, reason: &str, message: String| DeploymentCondition {
                type_: type_.to_owned(),
                status: if status { "True" } else { "False" }.to_owned(),
                reason: Some(reason.to_owned()),
                message: Some(message),
                last_transition_time: Some(Time(now)),
                last_update_time: Some(Time(now)),
            };
        let available = if self.available() {
            condition(
                "Available",
                true,
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.".to_owned(),
            )
        } else {
            condition(
                "Available",
                false,
                "MinimumReplicasUnavailable",
                format!(
                    "Deployment does not have minimum availability: {} of {} pods ready.",
                    self.ready, DESIRED_REPLICAS
                ),
            )
        };
        let progressing = match self.phase {
            Phase::ScalingUp | Phase::RollingOut => condition(
                "Progressing",
                true,
                "ReplicaSetUpdated",
                format!(
                    "ReplicaSet of revision {} is progressing.",
                    self.rollouts + 1
                ),
            ),
            Phase::Steady | Phase::Failing | Phase::Recovering => condition(
                "Progressing",
                true,
                "NewReplicaSetAvailable",
                format!(
                    "ReplicaSet of revision {} has successfully progressed.",
                    self.rollouts + 1
                ),
            ),
        };
        DeploymentStatus {
            observed_generation: Some(generation),
            replicas: Some(self.replicas),
            ready_replicas: Some(self.ready),
            available_replicas: Some(self.ready),
            updated_replicas: Some(self.updated),
            unavailable_replicas: Some((self.replicas - self.ready).max(0)),
            conditions: Some(vec![available, progressing]),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_come_up_then_settle() {
        let ready: Vec<i32> = (0..4).map(|t| Scene::at(t).ready).collect();
        assert_eq!(ready, [0, 1, 2, 3]);
        assert_eq!(Scene::at(0).phase, Phase::ScalingUp);
        assert_eq!(Scene::at(3).phase, Phase::Steady);
        assert!(!Scene::at(2).available());
        assert!(Scene::at(3).available());
    }

    #[test]
    fn every_phase_shows_within_twenty_ticks() {
        let phases: Vec<Phase> = (0..20).map(|t| Scene::at(t).phase).collect();
        for phase in [
            Phase::ScalingUp,
            Phase::Steady,
            Phase::RollingOut,
            Phase::Failing,
            Phase::Recovering,
        ] {
            assert!(phases.contains(&phase), "{phase:?} missing from {phases:?}");
        }
    }

    #[test]
    fn rollouts_only_grow_and_counts_stay_consistent() {
        let mut last = 0;
        for tick in 0..200 {
            let s = Scene::at(tick);
            assert!(s.rollouts >= last, "tick {tick}");
            last = s.rollouts;
            assert!(
                s.ready <= s.replicas && s.updated <= s.replicas,
                "tick {tick}: {s:?}"
            );
            assert!(
                s.ready >= 0 && s.replicas <= DESIRED_REPLICAS + 1,
                "tick {tick}"
            );
        }
        assert!(last >= 10, "the cycle keeps rolling out");
    }

    #[test]
    fn a_failure_sets_available_false_with_a_reason() {
        let failing = (0..40)
            .map(Scene::at)
            .find(|s| s.phase == Phase::Failing)
            .map(|s| s.status(2, jiff::Timestamp::UNIX_EPOCH));
        let available = failing
            .and_then(|s| s.conditions)
            .and_then(|c| c.into_iter().find(|c| c.type_ == "Available"));
        assert_eq!(available.as_ref().map(|c| c.status.as_str()), Some("False"));
        assert_eq!(
            available.and_then(|c| c.reason).as_deref(),
            Some("MinimumReplicasUnavailable")
        );
    }
}
