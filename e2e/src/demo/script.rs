//! The story the driver tells about every demo Deployment, one step at a
//! time, and every step is a write to KCP only: the Deployment is created in
//! its workspace with kcp's placement label, then, over and over, scaled up,
//! rolled out (a new image, so a new generation), scaled down, unplaced (the
//! label removed), placed again and scaled back. Everything the clusters do
//! follows from those writes: Uplink carries the spec down, the clusters'
//! stand-in Deployment controller sets the status from the spec, and Uplink
//! carries the status back up.
//!
//! [`Story`] is a pure sequence of steps, so it is easy to test, and
//! [`Stage`] says what each step must make visible, judged from one
//! [`Sighting`] of the object's two copies.

use std::fmt;

use super::status::StatusSummary;
use super::topology::DESIRED_REPLICAS;

/// Replicas a scale-up goes to.
const SCALED_UP: i32 = 5;
/// Replicas a scale-down goes to (the object is placed again at this count).
const SCALED_DOWN: i32 = 2;

/// One write to KCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Created in its workspace, placed on its cluster.
    Create,
    /// `spec.replicas` changed (through the `scale` subresource, as
    /// `kubectl scale` does).
    Scale { from: i32, to: i32 },
    /// A new container image: a new generation.
    Rollout { revision: u32 },
    /// The placement label removed.
    Unplace,
    /// The placement label set again.
    Place,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Create => write!(f, "created in KCP, placed"),
            Step::Scale { from, to } => write!(f, "scaled {from}→{to} in KCP"),
            Step::Rollout { revision } => write!(f, "rolled out :v{revision} in KCP"),
            Step::Unplace => write!(f, "unplaced in KCP"),
            Step::Place => write!(f, "placed again in KCP"),
        }
    }
}

/// What KCP asks of the object once a step is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Intent {
    /// The placement label is on.
    pub placed: bool,
    pub replicas: i32,
    /// The image's revision (`:v<revision>`).
    pub revision: u32,
}

impl Step {
    /// What KCP asks after this step, given what it asked before.
    pub fn after(self, before: Option<Intent>) -> Intent {
        let before = before.unwrap_or(Intent {
            placed: true,
            replicas: DESIRED_REPLICAS,
            revision: 1,
        });
        match self {
            Step::Create => Intent {
                placed: true,
                replicas: DESIRED_REPLICAS,
                revision: 1,
            },
            Step::Scale { to, .. } => Intent {
                replicas: to,
                ..before
            },
            Step::Rollout { revision } => Intent { revision, ..before },
            Step::Unplace => Intent {
                placed: false,
                ..before
            },
            Step::Place => Intent {
                placed: true,
                ..before
            },
        }
    }

    /// What must become visible after this step, in the order it happens
    /// (the driver counts a stage once the ones before it were seen).
    pub fn stages(self) -> &'static [Stage] {
        match self {
            Step::Create | Step::Place => &[
                Stage::AppearsDownstream,
                Stage::DownstreamStatus,
                Stage::KcpStatus,
            ],
            Step::Scale { .. } | Step::Rollout { .. } => &[
                Stage::DownstreamSpec,
                Stage::DownstreamStatus,
                Stage::KcpStatus,
            ],
            Step::Unplace => &[Stage::GoneDownstream, Stage::FinalizerReleased],
        }
    }
}

/// The steps of one object, forever: [`Step::Create`], then a repeating
/// cycle of scale up, rollout, scale down, unplace, place, scale back.
#[derive(Debug, Clone, Default)]
pub struct Story {
    taken: u64,
    intent: Option<Intent>,
}

impl Iterator for Story {
    type Item = (Step, Intent);

    fn next(&mut self) -> Option<(Step, Intent)> {
        let replicas = self.intent.map_or(DESIRED_REPLICAS, |i| i.replicas);
        let revision = self.intent.map_or(1, |i| i.revision);
        let step = if self.taken == 0 {
            Step::Create
        } else {
            match (self.taken - 1) % 6 {
                0 => Step::Scale {
                    from: replicas,
                    to: SCALED_UP,
                },
                1 => Step::Rollout {
                    revision: revision + 1,
                },
                2 => Step::Scale {
                    from: replicas,
                    to: SCALED_DOWN,
                },
                3 => Step::Unplace,
                4 => Step::Place,
                _ => Step::Scale {
                    from: replicas,
                    to: DESIRED_REPLICAS,
                },
            }
        };
        let intent = step.after(self.intent);
        self.taken += 1;
        self.intent = Some(intent);
        Some((step, intent))
    }
}

/// One copy of the object (in KCP or in its cluster) as read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectState {
    pub generation: Option<i64>,
    /// `spec.replicas`.
    pub desired: Option<i32>,
    /// The first container's image.
    pub image: Option<String>,
    pub status: Option<StatusSummary>,
    /// It carries a finalizer of Uplink's hub (`workload.kcp.io/syncer-...`).
    pub held_by_hub: bool,
}

/// The object's two copies at one moment; `None` where it does not exist.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sighting {
    pub kcp: Option<ObjectState>,
    pub downstream: Option<ObjectState>,
}

/// One thing a step must make visible.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// The cluster holds a copy.
    AppearsDownstream,
    /// The cluster's copy has KCP's replicas and image.
    DownstreamSpec,
    /// The cluster's status says its spec has rolled out: every replica
    /// ready, its generation observed.
    DownstreamStatus,
    /// KCP's status is the cluster's (merged by the hub).
    KcpStatus,
    /// The cluster's copy is deleted.
    GoneDownstream,
    /// The hub removed its finalizer from the KCP object.
    FinalizerReleased,
}

impl Stage {
    /// Whether `sighting` shows this stage reached for `intent`.
    pub fn reached(self, intent: &Intent, sighting: &Sighting) -> bool {
        let down = sighting.downstream.as_ref();
        match self {
            Stage::AppearsDownstream => down.is_some(),
            Stage::DownstreamSpec => down.is_some_and(|d| {
                d.desired == Some(intent.replicas)
                    && d.image
                        .as_deref()
                        .is_some_and(|i| i.ends_with(&tag(intent.revision)))
            }),
            Stage::DownstreamStatus => down.is_some_and(|d| rolled_out(d, intent)),
            Stage::KcpStatus => {
                down.is_some_and(|d| rolled_out(d, intent))
                    && sighting.kcp.as_ref().map(|k| &k.status) == down.map(|d| &d.status)
            }
            Stage::GoneDownstream => down.is_none(),
            Stage::FinalizerReleased => sighting.kcp.as_ref().is_some_and(|k| !k.held_by_hub),
        }
    }

    /// The stage as a person would say it, for the object placed on `cluster`.
    pub fn describe(self, intent: &Intent, cluster: &str) -> String {
        let n = intent.replicas;
        match self {
            Stage::AppearsDownstream => format!("appeared in {cluster}"),
            Stage::DownstreamSpec => {
                format!("{cluster} spec replicas={n} image :v{}", intent.revision)
            }
            Stage::DownstreamStatus => format!("{cluster} status {n}/{n} ready"),
            Stage::KcpStatus => format!("KCP status {n}/{n} ready (merged)"),
            Stage::GoneDownstream => format!("deleted from {cluster}"),
            Stage::FinalizerReleased => "hub's finalizer released in KCP".to_owned(),
        }
    }
}

/// The object shows everything `intent` asks: placed, its cluster runs
/// KCP's spec and KCP shows the cluster's status; unplaced, the cluster's
/// copy is gone and the hub holds no finalizer.
pub fn settled(intent: &Intent, sighting: &Sighting) -> bool {
    let stages: &[Stage] = if intent.placed {
        &[Stage::DownstreamSpec, Stage::KcpStatus]
    } else {
        &[Stage::GoneDownstream, Stage::FinalizerReleased]
    };
    stages.iter().all(|s| s.reached(intent, sighting))
}

/// The status of a rolled-out `intent`: every replica ready, the copy's
/// generation observed.
fn rolled_out(copy: &ObjectState, intent: &Intent) -> bool {
    copy.status.as_ref().is_some_and(|s| {
        s.replicas == intent.replicas
            && s.ready_replicas == intent.replicas
            && s.observed_generation.is_some()
            && s.observed_generation == copy.generation
    })
}

/// The image tag of `revision`.
fn tag(revision: u32) -> String {
    format!(":v{revision}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps(n: usize) -> Vec<Step> {
        Story::default().take(n).map(|(s, _)| s).collect()
    }

    #[test]
    fn the_story_creates_then_cycles_through_the_loop() {
        assert_eq!(
            steps(8),
            [
                Step::Create,
                Step::Scale { from: 3, to: 5 },
                Step::Rollout { revision: 2 },
                Step::Scale { from: 5, to: 2 },
                Step::Unplace,
                Step::Place,
                Step::Scale { from: 2, to: 3 },
                Step::Scale { from: 3, to: 5 },
            ]
        );
        // The second cycle rolls out the next revision.
        assert_eq!(steps(9)[8], Step::Rollout { revision: 3 });
    }

    #[test]
    fn intents_follow_the_steps() {
        let intents: Vec<Intent> = Story::default().take(6).map(|(_, i)| i).collect();
        assert_eq!(
            intents[0],
            Intent {
                placed: true,
                replicas: 3,
                revision: 1
            }
        );
        assert_eq!(
            intents[2],
            Intent {
                placed: true,
                replicas: 5,
                revision: 2
            }
        );
        assert_eq!(
            intents[4],
            Intent {
                placed: false,
                replicas: 2,
                revision: 2
            }
        );
        assert_eq!(
            intents[5],
            Intent {
                placed: true,
                replicas: 2,
                revision: 2
            }
        );
    }

    fn copy(generation: i64, desired: i32, ready: i32, observed: i64) -> ObjectState {
        ObjectState {
            generation: Some(generation),
            desired: Some(desired),
            image: Some("registry.example/demo/web:v1".to_owned()),
            status: Some(StatusSummary {
                replicas: ready,
                ready_replicas: ready,
                available_replicas: ready,
                updated_replicas: ready,
                observed_generation: Some(observed),
                available: Some("True".to_owned()),
            }),
            held_by_hub: true,
        }
    }

    #[test]
    fn a_scale_is_seen_down_then_up() {
        let intent = Intent {
            placed: true,
            replicas: 5,
            revision: 1,
        };
        let stages = Step::Scale { from: 3, to: 5 }.stages();
        let reached = |sighting: &Sighting| -> Vec<bool> {
            stages
                .iter()
                .map(|s| s.reached(&intent, sighting))
                .collect()
        };
        // KCP scaled, the cluster not yet.
        let mut sighting = Sighting {
            kcp: Some(copy(2, 5, 3, 1)),
            downstream: Some(copy(1, 3, 3, 1)),
        };
        assert_eq!(reached(&sighting), [false, false, false]);
        // The spec went down; the controller has not caught up.
        sighting.downstream = Some(copy(2, 5, 3, 1));
        assert_eq!(reached(&sighting), [true, false, false]);
        sighting.downstream = Some(copy(2, 5, 5, 2));
        assert_eq!(reached(&sighting), [true, true, false]);
        // The hub merged it into KCP.
        sighting.kcp = Some(copy(2, 5, 5, 2));
        assert_eq!(reached(&sighting), [true, true, true]);
        assert!(settled(&intent, &sighting));
    }

    #[test]
    fn an_unplaced_object_settles_once_gone_and_released() {
        let intent = Intent {
            placed: false,
            replicas: 2,
            revision: 2,
        };
        let mut sighting = Sighting {
            kcp: Some(copy(4, 2, 2, 3)),
            downstream: Some(copy(3, 2, 2, 3)),
        };
        assert!(!settled(&intent, &sighting));
        sighting.downstream = None;
        assert!(Stage::GoneDownstream.reached(&intent, &sighting));
        assert!(!settled(&intent, &sighting), "the finalizer is still held");
        if let Some(kcp) = &mut sighting.kcp {
            kcp.held_by_hub = false;
        }
        assert!(settled(&intent, &sighting));
    }

    #[test]
    fn a_rollout_needs_the_new_image_and_its_generation_observed() {
        let intent = Intent {
            placed: true,
            replicas: 3,
            revision: 2,
        };
        let mut down = copy(2, 3, 3, 1);
        let sighting = |down: &ObjectState| Sighting {
            kcp: Some(down.clone()),
            downstream: Some(down.clone()),
        };
        assert!(!Stage::DownstreamSpec.reached(&intent, &sighting(&down)));
        down.image = Some("registry.example/demo/web:v2".to_owned());
        assert!(Stage::DownstreamSpec.reached(&intent, &sighting(&down)));
        assert!(!Stage::DownstreamStatus.reached(&intent, &sighting(&down)));
        down.status = copy(2, 3, 3, 2).status;
        assert!(Stage::KcpStatus.reached(&intent, &sighting(&down)));
    }
}
