//! The kubelet's part in deleting a pod, which kube-apiserver leaves to it:
//! once a gracefully deleted pod's containers have stopped, the kubelet
//! deletes it with a grace period of 0 (and the UID as a precondition), and
//! only then is it gone. The test bed runs no containers, so this stand-in
//! does that when the pod's grace period has passed (its
//! `deletionTimestamp`, read to the second): every terminating pod, in the
//! physical cluster and in workspaces, whatever node it is bound to (on a
//! real cluster a pod bound to a node that does not exist is removed by the
//! pod garbage collector instead). A pod held by finalizers then waits for
//! them, as it would on a real cluster.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::Value;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::Shared;
use super::graceful;
use super::object::meta_str;
use super::registry::{self, DeleteOptions, Target};
use super::store::NameChoice;

/// A pod to delete with grace 0 when its grace period has passed.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Termination {
    due: Instant,
    workspace: String,
    namespace: String,
    name: String,
    uid: String,
}

/// The pods whose grace period is running, soonest first.
#[derive(Debug, Default)]
pub(crate) struct Kubelet {
    due: Mutex<BinaryHeap<Reverse<Termination>>>,
    wake: Notify,
}

impl Kubelet {
    /// Notes a pod that a DELETE left terminating, to remove it when its
    /// grace period has passed; anything else is ignored.
    pub fn terminating(&self, workspace: &str, pod: &Value) {
        let Some(left) = graceful::remaining_grace(pod) else {
            return;
        };
        let termination = Termination {
            due: Instant::now() + left,
            workspace: workspace.to_string(),
            namespace: meta_str(pod, "namespace").unwrap_or_default().to_string(),
            name: meta_str(pod, "name").unwrap_or_default().to_string(),
            uid: meta_str(pod, "uid").unwrap_or_default().to_string(),
        };
        self.queue().push(Reverse(termination));
        self.wake.notify_one();
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, BinaryHeap<Reverse<Termination>>> {
        // Nothing panics under this lock; a poisoned queue is still a queue.
        self.due.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn next_due(&self) -> Option<Instant> {
        self.queue().peek().map(|Reverse(t)| t.due)
    }

    fn take_due(&self, now: Instant) -> Vec<Termination> {
        let mut queue = self.queue();
        let mut due = Vec::new();
        while queue.peek().is_some_and(|Reverse(t)| t.due <= now) {
            if let Some(Reverse(t)) = queue.pop() {
                due.push(t);
            }
        }
        due
    }
}

/// Deletes terminating pods as their grace periods pass, until the server stops.
pub(crate) async fn run(shared: Arc<Shared>) {
    loop {
        let next = shared.kubelet.next_due();
        let sleep = async {
            match next {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = shared.shutdown.cancelled() => return,
            () = shared.kubelet.wake.notified() => continue,
            () = sleep => {}
        }
        for termination in shared.kubelet.take_due(Instant::now()) {
            delete_now(&shared, termination);
        }
    }
}

/// The kubelet's final DELETE: grace 0, only the pod it knew (its UID).
fn delete_now(shared: &Shared, t: Termination) {
    let Some(def) = shared.store.resolve(&t.workspace, "", "v1", "pods") else {
        return;
    };
    let key = def.key();
    let target = Target {
        def,
        version: "v1".to_string(),
        namespace: t.namespace.clone(),
        status: false,
    };
    let options = DeleteOptions {
        uid: Some(t.uid.clone()),
        grace_period_seconds: Some(0),
        ..DeleteOptions::default()
    };
    let deleted = shared.store.write(
        &t.workspace,
        &key,
        &t.namespace,
        NameChoice::Exact(t.name.clone()),
        false,
        |_, name, current| registry::delete(&target, name, current, &options),
    );
    match deleted {
        Ok(_) => tracing::debug!(
            workspace = t.workspace,
            namespace = t.namespace,
            pod = t.name,
            "grace period over: pod deleted"
        ),
        // Already gone, or replaced by another pod of that name.
        Err(e) if e.code == 404 || e.code == 409 => {}
        Err(error) => tracing::warn!(
            workspace = t.workspace,
            namespace = t.namespace,
            pod = t.name,
            error = error.message,
            "could not delete a pod whose grace period is over"
        ),
    }
}
