//! Drift: an object the agent applied is changed downstream by someone
//! else (`kubectl edit`, `kubectl scale`, a script). The agent watches what
//! it owns (the objects carrying this cluster's placement label, one watch
//! per downward type) and, when a field it applied no longer has the value
//! it applied, applies the same manifest again.
//!
//! The rule (see also the agent's README):
//!
//! - Only the fields in the manifest the agent last applied *successfully*
//!   are compared and set back; a field only other managers set (an
//!   annotation a tool adds, a field KCP's spec leaves out) is never
//!   touched, since server-side apply only writes the fields it is given.
//! - A hand edit (an `Update` of the object in Kubernetes' terms, as
//!   `kubectl edit`/`patch` make) takes the edited fields over from manager
//!   `uplink`, so an unforced apply would conflict with the editor: when
//!   every other manager of the object is such an editor (or writes only
//!   `/status`), the same manifest is applied again *forced*, which takes
//!   back exactly the fields Uplink owned before the edit, nothing more.
//!   When another manager declared its fields with server-side apply, or
//!   writes through a subresource such as `/scale` (an autoscaler), it owns
//!   them on purpose: the re-apply is not forced, and a conflict is logged
//!   and counted (`result="drift_refused"`), not fought. A new manifest from KCP
//!   is never forced either: a conflict there is reported upward
//!   ([`super::ApplyResult::Failed`]), and an object whose last apply
//!   failed is not set back until an apply succeeds again.
//! - Each correction counts as `uplink_agent_applies_total{result="drift"}`.
//!   An apply that changes nothing makes no watch event, so a value the
//!   server normalizes differently costs one extra apply, not a loop.
//!
//! What was applied is remembered per object ([`Applied`]), bounded by the
//! objects placed on the cluster (the hub's per-cluster object limit).

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt as _;
use kube::Api;
use kube::api::{DynamicObject, Patch, PatchParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use serde_json::Value;

use super::{Applier, FIELD_MANAGER, classify, lock};
use crate::config::ResourceSpec;
use crate::transform::{DownstreamKey, Target};

/// What the agent last applied successfully, per downstream object.
pub(super) type Applied = HashMap<DownstreamKey, Arc<Value>>;

/// Whether every field of `applied` has the same value in `live`: maps
/// compared key by key (extra keys in `live` are someone else's or the
/// server's), lists item by item (same length), anything else equal.
pub fn holds(applied: &Value, live: &Value) -> bool {
    match (applied, live) {
        (Value::Object(want), Value::Object(have)) => want
            .iter()
            .all(|(k, v)| have.get(k).is_some_and(|h| holds(v, h))),
        (Value::Array(want), Value::Array(have)) => {
            want.len() == have.len() && want.iter().zip(have).all(|(w, h)| holds(w, h))
        }
        (want, have) => want == have,
    }
}

impl Applier {
    /// Remembers `manifest` as what `key` was last applied as.
    pub(super) fn remember(&self, key: &DownstreamKey, manifest: Option<&Value>) {
        let mut applied = lock(&self.applied);
        match manifest {
            Some(manifest) => {
                applied.insert(key.clone(), Arc::new(manifest.clone()));
            }
            None => {
                applied.remove(key);
            }
        }
    }

    /// Sets `live` back if a field the agent applied was changed; returns
    /// whether it did.
    async fn correct(&self, spec: &ResourceSpec, live: &DynamicObject) -> bool {
        let (Some(namespace), Some(name)) = (&live.metadata.namespace, &live.metadata.name) else {
            return false;
        };
        let key = DownstreamKey {
            group: spec.group.clone(),
            resource: spec.resource.clone(),
            namespace: namespace.clone(),
            name: name.clone(),
        };
        let Some(manifest) = lock(&self.applied).get(&key).cloned() else {
            return false;
        };
        let Ok(live_json) = serde_json::to_value(live) else {
            return false;
        };
        // List items may come without apiVersion and kind; the type is
        // the watch's anyway.
        let drifted = manifest.as_object().is_some_and(|fields| {
            fields
                .iter()
                .filter(|(k, _)| *k != "apiVersion" && *k != "kind")
                .any(|(k, v)| !live_json.get(k).is_some_and(|l| holds(v, l)))
        });
        if !drifted {
            return false;
        }
        let resolved = match self.resolve(spec).await {
            Ok(Ok(resolved)) => resolved,
            _ => return false,
        };
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), namespace, &resolved.api);
        let mut params = PatchParams::apply(FIELD_MANAGER);
        if only_hand_edits(live) {
            params = params.force();
        }
        // Only onto the state judged: a newer apply (or edit) since moves
        // the resourceVersion on, and this one is refused (409) rather than
        // setting an older manifest over it; the newer state's own watch
        // event is judged again.
        let mut manifest = (*manifest).clone();
        if let (Some(version), Some(metadata)) = (
            &live.metadata.resource_version,
            manifest.get_mut("metadata").and_then(Value::as_object_mut),
        ) {
            metadata.insert("resourceVersion".into(), Value::from(version.clone()));
        }
        match api.patch(name, &params, &Patch::Apply(&manifest)).await {
            Ok(_) => {
                self.metrics().applies.with_label_values(&["drift"]).inc();
                tracing::info!(resource = %spec, %namespace, %name, outcome = "set back", "drift: a field the agent applied was changed downstream");
                true
            }
            Err(e) => {
                let outcome = classify(e);
                match &outcome {
                    super::Outcome::Failed(_) => {
                        self.metrics()
                            .applies
                            .with_label_values(&["drift_refused"])
                            .inc();
                        tracing::warn!(resource = %spec, %namespace, %name, ?outcome, "drift: setting the object back failed");
                    }
                    // The object moved on since the event judged (a newer
                    // apply): its own event is judged next.
                    super::Outcome::Transient(t) if t.0.contains("has been modified") => {
                        tracing::debug!(resource = %spec, %namespace, %name, "drift: the object changed meanwhile; judging its next state");
                    }
                    _ => {
                        tracing::warn!(resource = %spec, %namespace, %name, ?outcome, "drift: setting the object back failed");
                    }
                }
                false
            }
        }
    }
}

/// Whether every manager of `live` other than the agent is a hand edit of
/// the object itself (operation `Update`, no subresource) or writes only
/// its `/status`: then a forced re-apply takes back only what the edit took.
fn only_hand_edits(live: &DynamicObject) -> bool {
    live.metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| m.manager.as_deref() != Some(FIELD_MANAGER))
        .all(|m| {
            let subresource = m.subresource.as_deref().unwrap_or_default();
            subresource == "status"
                || (subresource.is_empty() && m.operation.as_deref() == Some("Update"))
        })
}

/// Watches the objects of `spec` that carry `target`'s placement label and
/// sets back drift, until the task is aborted (with its session's apply
/// queue).
pub(super) async fn watch(applier: Arc<Applier>, target: Arc<Target>, spec: ResourceSpec) {
    let resolved = loop {
        match applier.resolve(&spec).await {
            Ok(Ok(resolved)) if resolved.namespaced => break resolved,
            // Not served, or cluster-scoped: nothing of it is applied.
            Ok(_) => return,
            Err(e) => {
                tracing::debug!(resource = %spec, error = %e, "drift watch: discovery failed; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    };
    let api: Api<DynamicObject> = Api::all_with(applier.client.clone(), &resolved.api);
    let config = watcher::Config::default().labels(&target.placement_label());
    let mut stream = std::pin::pin!(watcher(api, config).default_backoff());
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Apply(object) | watcher::Event::InitApply(object)) => {
                applier.correct(&spec, &object).await;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(resource = %spec, error = %e, "drift watch failed; retrying");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn what_was_applied_holds_whatever_others_add() {
        let applied = json!({"spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "app", "image": "a"}]}}}});
        let live = json!({
            "metadata": {"annotations": {"other": "x"}},
            "spec": {"replicas": 2, "paused": false, "template": {"spec": {"containers": [{"name": "app", "image": "a", "imagePullPolicy": "Always"}]}}},
            "status": {"readyReplicas": 2},
        });
        assert!(holds(&applied, &live));
    }

    #[test]
    fn a_changed_or_removed_applied_field_is_drift() {
        let applied = json!({"spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "app"}]}}}});
        assert!(!holds(
            &applied,
            &json!({"spec": {"replicas": 5, "template": {"spec": {"containers": [{"name": "app"}]}}}})
        ));
        assert!(!holds(
            &applied,
            &json!({"spec": {"template": {"spec": {"containers": [{"name": "app"}]}}}})
        ));
        assert!(!holds(
            &applied,
            &json!({"spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "app"}, {"name": "sidecar"}]}}}})
        ));
    }
}
