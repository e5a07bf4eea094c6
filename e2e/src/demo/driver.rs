//! Plays the tenant: moves every demo Deployment along its [`Story`] by
//! writing to KCP, and nowhere else. After each write it looks at both
//! copies of the object every [`POLL`] until every [`Stage`] of the step is
//! visible (the spec reached the cluster, the cluster's stand-in Deployment
//! controller set the status from it, the hub merged that status into KCP;
//! or, unplaced, the copy is gone and the hub's finalizer released), and
//! records how long each stage took as a [`LoopEvent`].
//!
//! The driver never writes a status: in the clusters the test bed's
//! stand-in Deployment controller does, and in KCP the hub does.
//! [`Progress`] is what the driver did and saw, shared with the table.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::observe::sight;
use super::script::{Intent, Stage, Step, Story};
use super::seed::{placed_deployment, placement_label};
use super::topology::DemoObject;

/// How often a step's progress is looked at: the resolution of the
/// timings the demo prints.
pub const POLL: Duration = Duration::from_millis(25);
/// How long the driver waits before retrying a failed KCP write.
const WRITE_RETRY: Duration = Duration::from_secs(1);
/// How long a step may take to become visible before it counts as missed.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(15);
/// Each object after the first starts this much later than the one before,
/// so the objects do not move in lockstep.
const STAGGER: Duration = Duration::from_millis(700);
/// Loop events kept for the table.
const EVENTS_KEPT: usize = 200;

/// What the driver is doing with one object.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ObjectProgress {
    /// The step last written to KCP, and what KCP asks since.
    pub step: Option<(Step, Intent)>,
    /// Every stage of that step was seen.
    pub seen: bool,
}

/// One step, from the write in KCP to the last stage seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopEvent {
    /// Counts from 1 across all objects.
    pub seq: u64,
    /// When the KCP write was made.
    pub at: jiff::Timestamp,
    pub object: DemoObject,
    pub step: Step,
    /// Each stage, described, and when it was first seen after the write.
    pub stages: Vec<(String, Option<Duration>)>,
}

impl LoopEvent {
    /// Every stage was seen within [`STEP_TIMEOUT`].
    pub fn complete(&self) -> bool {
        self.stages.iter().all(|(_, at)| at.is_some())
    }
}

impl fmt::Display for LoopEvent {
    /// `17:05:03 root:demo:a/shop/web scaled 3→5 in KCP: cluster-1 spec ... +0.21s · ...`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let time = self.at.strftime("%H:%M:%S");
        write!(f, "{time} {} {}:", self.object, self.step)?;
        for (index, (stage, at)) in self.stages.iter().enumerate() {
            let separator = if index == 0 { " " } else { " · " };
            match at {
                Some(at) => write!(f, "{separator}{stage} +{:.2}s", at.as_secs_f64())?,
                None => write!(
                    f,
                    "{separator}{stage} NOT SEEN within {}s",
                    STEP_TIMEOUT.as_secs()
                )?,
            }
        }
        Ok(())
    }
}

/// What the driver did and saw, shared with the table.
#[derive(Debug, Clone, Default)]
pub struct Progress(Arc<Mutex<ProgressState>>);

#[derive(Debug, Default)]
struct ProgressState {
    objects: Vec<ObjectProgress>,
    /// The latest [`EVENTS_KEPT`] events.
    events: VecDeque<LoopEvent>,
    next_seq: u64,
    complete: u64,
    missed: u64,
}

impl Progress {
    fn new(objects: usize) -> Progress {
        Progress(Arc::new(Mutex::new(ProgressState {
            objects: vec![ObjectProgress::default(); objects],
            ..ProgressState::default()
        })))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ProgressState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What the driver is doing with object `index` (topology order).
    pub fn get(&self, index: usize) -> ObjectProgress {
        self.state().objects.get(index).copied().unwrap_or_default()
    }

    /// The events numbered after `seq`, oldest first (as many as are kept).
    pub fn events_after(&self, seq: u64) -> Vec<LoopEvent> {
        self.state()
            .events
            .iter()
            .filter(|e| e.seq > seq)
            .cloned()
            .collect()
    }

    /// The last `n` events, oldest first.
    pub fn recent(&self, n: usize) -> Vec<LoopEvent> {
        let state = self.state();
        let skip = state.events.len().saturating_sub(n);
        state.events.iter().skip(skip).cloned().collect()
    }

    /// Steps seen through, and steps with a stage not seen in time.
    pub fn totals(&self) -> (u64, u64) {
        let state = self.state();
        (state.complete, state.missed)
    }

    fn begin(&self, index: usize, step: Step, intent: Intent) {
        if let Some(object) = self.state().objects.get_mut(index) {
            *object = ObjectProgress {
                step: Some((step, intent)),
                seen: false,
            };
        }
    }

    fn finish(&self, index: usize, mut event: LoopEvent) {
        let mut state = self.state();
        state.next_seq += 1;
        event.seq = state.next_seq;
        let complete = event.complete();
        if complete {
            state.complete += 1;
        } else {
            state.missed += 1;
        }
        if let Some(object) = state.objects.get_mut(index) {
            object.seen = complete;
        }
        if state.events.len() == EVENTS_KEPT {
            state.events.pop_front();
        }
        state.events.push_back(event);
    }
}

/// A KCP write the driver could not make; it retries after [`WRITE_RETRY`].
#[derive(Debug, thiserror::Error)]
#[error("{step} for {object}: {source}")]
pub struct DriveError {
    object: String,
    step: Step,
    #[source]
    source: kube::Error,
}

/// One object the driver moves: its copy in KCP (written) and in its
/// cluster (only read).
#[derive(Debug, Clone)]
pub struct DrivenObject {
    pub object: DemoObject,
    pub upstream: Api<Deployment>,
    pub downstream: Api<Deployment>,
}

/// Moves every object along its story.
#[derive(Debug)]
pub struct Driver {
    objects: Vec<DrivenObject>,
    progress: Progress,
    pause: Duration,
}

impl Driver {
    /// `pause` is the time between one step's last stage and the next step.
    pub fn new(objects: Vec<DrivenObject>, pause: Duration) -> Driver {
        let progress = Progress::new(objects.len());
        Driver {
            objects,
            progress,
            pause,
        }
    }

    /// The shared record of what the driver did.
    pub fn progress(&self) -> Progress {
        self.progress.clone()
    }

    /// Drives every object until `stop` is cancelled. A failed write is
    /// logged and retried; it never stops the other objects.
    pub async fn run(self, stop: CancellationToken) {
        let Driver {
            objects,
            progress,
            pause,
        } = self;
        let stories = objects.into_iter().enumerate().map(|(index, driven)| {
            let progress = progress.clone();
            let stop = stop.clone();
            async move {
                let delay = STAGGER * u32::try_from(index).unwrap_or(u32::MAX);
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
                drive(index, &driven, &progress, pause, &stop).await;
            }
        });
        futures::future::join_all(stories).await;
    }
}

/// Tells `driven`'s story until `stop`.
async fn drive(
    index: usize,
    driven: &DrivenObject,
    progress: &Progress,
    pause: Duration,
    stop: &CancellationToken,
) {
    for (step, intent) in Story::default() {
        let at = loop {
            let at = jiff::Timestamp::now();
            match write(driven, step).await {
                Ok(()) => break at,
                Err(error) => tracing::warn!(%error, "driver write failed; retrying"),
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(WRITE_RETRY) => {}
            }
        };
        progress.begin(index, step, intent);
        let Some(seen) = watch_step(driven, step, &intent, stop).await else {
            return;
        };
        let event = LoopEvent {
            seq: 0,
            at,
            object: driven.object.clone(),
            step,
            stages: step
                .stages()
                .iter()
                .zip(seen)
                .map(|(stage, at)| (stage.describe(&intent, &driven.object.cluster), at))
                .collect(),
        };
        tracing::info!(%event, "loop step");
        progress.finish(index, event);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// When each stage of `step` was first seen, or `None` per stage not seen
/// within [`STEP_TIMEOUT`]; `None` overall if stopped.
async fn watch_step(
    driven: &DrivenObject,
    step: Step,
    intent: &Intent,
    stop: &CancellationToken,
) -> Option<Vec<Option<Duration>>> {
    let stages: &[Stage] = step.stages();
    let mut seen: Vec<Option<Duration>> = vec![None; stages.len()];
    let start = Instant::now();
    loop {
        if let Ok(sighting) = sight(&driven.upstream, &driven.downstream, &driven.object.name).await
        {
            let elapsed = start.elapsed();
            // In order: a stage counts once the ones before it were seen
            // (a rollout's old status is not its new one).
            for (stage, at) in stages.iter().zip(seen.iter_mut()) {
                if at.is_some() {
                    continue;
                }
                if !stage.reached(intent, &sighting) {
                    break;
                }
                *at = Some(elapsed);
            }
        }
        if seen.iter().all(Option::is_some) || start.elapsed() >= STEP_TIMEOUT {
            return Some(seen);
        }
        tokio::select! {
            () = stop.cancelled() => return None,
            () = tokio::time::sleep(POLL) => {}
        }
    }
}

/// Makes `step`'s write in KCP.
async fn write(driven: &DrivenObject, step: Step) -> Result<(), DriveError> {
    let object = &driven.object;
    let api = &driven.upstream;
    let params = PatchParams::default();
    let label = placement_label(&object.cluster);
    let written = match step {
        Step::Create => {
            match api
                .create(&PostParams::default(), &placed_deployment(object))
                .await
            {
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
                other => other.map(|_| ()),
            }
        }
        Step::Scale { to, .. } => {
            let patch = Patch::Merge(serde_json::json!({ "spec": { "replicas": to } }));
            api.patch_scale(&object.name, &params, &patch)
                .await
                .map(|_| ())
        }
        Step::Rollout { revision } => {
            let patch = Patch::Merge(spec_patch(object, revision));
            api.patch(&object.name, &params, &patch).await.map(|_| ())
        }
        Step::Unplace | Step::Place => {
            let value = (step == Step::Place).then_some(super::seed::STATE_SYNC);
            let patch =
                Patch::Merge(serde_json::json!({ "metadata": { "labels": { label: value } } }));
            api.patch(&object.name, &params, &patch).await.map(|_| ())
        }
    };
    written.map_err(|source| DriveError {
        object: object.to_string(),
        step,
        source,
    })
}

/// The spec change of a rollout: a new image tag per revision.
fn spec_patch(object: &DemoObject, revision: u32) -> serde_json::Value {
    serde_json::json!({
        "spec": { "template": { "spec": { "containers": [
            { "name": object.name, "image": image(&object.name, revision) }
        ] } } }
    })
}

/// The container image of `name` at `revision`.
pub fn image(name: &str, revision: u32) -> String {
    format!("registry.example/demo/{name}:v{revision}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::topology::Topology;

    fn event(seq: u64, stages: Vec<(String, Option<Duration>)>) -> LoopEvent {
        LoopEvent {
            seq,
            at: jiff::Timestamp::UNIX_EPOCH,
            object: Topology::new(1).objects[0].clone(),
            step: Step::Scale { from: 3, to: 5 },
            stages,
        }
    }

    #[test]
    fn events_read_as_a_timeline() {
        let line = event(
            1,
            vec![
                (
                    "cluster-1 spec replicas=5".into(),
                    Some(Duration::from_millis(210)),
                ),
                ("KCP status 5/5 ready (merged)".into(), None),
            ],
        )
        .to_string();
        assert_eq!(
            line,
            "00:00:00 root:demo:a/shop/web scaled 3→5 in KCP: cluster-1 spec replicas=5 +0.21s \
             · KCP status 5/5 ready (merged) NOT SEEN within 15s"
        );
    }

    #[test]
    fn progress_numbers_and_bounds_its_events() {
        let progress = Progress::new(1);
        let intent = Step::Create.after(None);
        progress.begin(0, Step::Create, intent);
        assert_eq!(progress.get(0).step, Some((Step::Create, intent)));
        assert!(!progress.get(0).seen);
        for _ in 0..EVENTS_KEPT + 5 {
            progress.finish(0, event(0, vec![("x".into(), Some(Duration::ZERO))]));
        }
        progress.finish(0, event(0, vec![("x".into(), None)]));
        assert_eq!(progress.totals(), (EVENTS_KEPT as u64 + 5, 1));
        let recent = progress.recent(2);
        assert_eq!(recent.len(), 2);
        assert_eq!(recent[1].seq, EVENTS_KEPT as u64 + 6);
        assert_eq!(progress.events_after(EVENTS_KEPT as u64 + 5).len(), 1);
        assert_eq!(progress.recent(usize::MAX).len(), EVENTS_KEPT);
        // A missed stage leaves the object not seen through.
        assert!(!progress.get(0).seen);
    }
}

/// The driver's writes against an embedded KCP: each step changes what it
/// says, and nothing else (no status).
#[cfg(test)]
mod against_kcp {
    use super::*;
    use crate::apiserver::{ApiServer, ApiServerConfig};
    use crate::demo::connections::Connections;
    use crate::demo::seed::{SYNCTARGET_WORKSPACE, prepare_kcp};
    use crate::demo::topology::{Topology, WORKSPACES};

    #[tokio::test]
    async fn each_step_writes_what_it_says_in_kcp() {
        let kcp = ApiServer::start(ApiServerConfig {
            workspaces: WORKSPACES.iter().map(|w| (*w).to_owned()).collect(),
            ..ApiServerConfig::default()
        })
        .await
        .unwrap_or_else(|e| panic!("KCP: {e}"));
        let mut connections = Connections::default();
        for workspace in WORKSPACES.into_iter().chain([SYNCTARGET_WORKSPACE]) {
            connections
                .add_workspace(workspace, &kcp.kubeconfig_yaml(Some(workspace)))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let topology = Topology::new(1);
        let targets = prepare_kcp(&topology, &connections)
            .await
            .unwrap_or_else(|e| panic!("prepare: {e}"));
        let target = targets.get("cluster-1").cloned().unwrap_or_default();
        assert!(!target.uid.is_empty(), "{target:?}");
        assert_eq!(target.workspace, SYNCTARGET_WORKSPACE);

        let object = topology.objects[0].clone();
        let upstream: Api<Deployment> = Api::namespaced(
            connections
                .workspace(&object.workspace)
                .unwrap_or_else(|| unreachable!()),
            &object.namespace,
        );
        let driven = DrivenObject {
            object: object.clone(),
            upstream: upstream.clone(),
            // Never written by the driver.
            downstream: upstream.clone(),
        };
        let label = placement_label(&object.cluster);
        let get = || async {
            upstream
                .get(&object.name)
                .await
                .unwrap_or_else(|e| panic!("get: {e}"))
        };
        let mut story = Story::default();
        for _ in 0..6 {
            let Some((step, intent)) = story.next() else {
                unreachable!("the story never ends")
            };
            write(&driven, step)
                .await
                .unwrap_or_else(|e| panic!("{step}: {e}"));
            let held = get().await;
            let state = crate::demo::observe::state(&held);
            assert_eq!(state.desired, Some(intent.replicas), "{step}");
            assert_eq!(
                state.image.as_deref(),
                Some(image(&object.name, intent.revision).as_str()),
                "{step}"
            );
            let placed = held
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(&label))
                .map(String::as_str);
            let expected = intent.placed.then_some(super::super::seed::STATE_SYNC);
            assert_eq!(placed, expected, "{step}");
            assert_eq!(state.status, None, "{step}: the driver writes no status");
        }
        // Creating again (a retried create) is harmless.
        write(&driven, Step::Create)
            .await
            .unwrap_or_else(|e| panic!("create again: {e}"));
        kcp.shutdown().await;
    }
}
