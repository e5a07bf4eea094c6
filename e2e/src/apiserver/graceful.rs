//! Graceful deletion, as kube's `rest.BeforeDelete` and the pod strategy's
//! `CheckGracefulDelete` do it. Pods are the only built-in kind deleted
//! gracefully: a DELETE gives a pod bound to a node a grace period
//! (`gracePeriodSeconds`, else `spec.terminationGracePeriodSeconds`, 30 s
//! when unset as kube defaults it) and sets `deletionTimestamp` (now plus
//! the grace) and `deletionGracePeriodSeconds`; the pod stays until the
//! kubelet deletes it with a grace of 0 (the test bed's stand-in for that
//! is [`super::kubelet`]). A grace of 0 removes the pod at once, as does
//! deleting a pod that is not bound to a node or has terminated. A later
//! DELETE may only shorten a pending grace period.

use serde_json::{Value, json};

use super::object::{self, meta_str, set_meta};
use super::resources::ResourceDef;

/// kube's default `spec.terminationGracePeriodSeconds`.
pub(crate) const DEFAULT_GRACE_SECONDS: i64 = 30;

/// What a DELETE does to an object's deletion metadata.
#[derive(Debug)]
pub(crate) enum Deletion {
    /// Not a graceful deletion: finalizers alone decide whether it stays.
    NotGraceful,
    /// A grace period is already running and this DELETE does not shorten
    /// it: nothing changes.
    Pending,
    /// The object with its (new or shortened) deletionTimestamp and
    /// deletionGracePeriodSeconds.
    Graceful(Value),
}

fn is_pod(def: &ResourceDef) -> bool {
    !def.custom && def.group.is_empty() && def.plural == "pods"
}

fn grace_of(object: &Value) -> Option<i64> {
    object
        .pointer("/metadata/deletionGracePeriodSeconds")
        .and_then(Value::as_i64)
}

/// The grace period a DELETE gives `pod` (the pod strategy's `CheckGracefulDelete`).
fn pod_grace_period(pod: &Value, requested: Option<i64>) -> i64 {
    let period = requested.unwrap_or_else(|| {
        pod.pointer("/spec/terminationGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(DEFAULT_GRACE_SECONDS)
    });
    let bound = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty());
    let terminated = matches!(
        pod.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    );
    if !bound || terminated {
        0
    } else if period < 0 {
        1
    } else {
        period
    }
}

/// `deletionTimestamp` `seconds` from now (or, negative, before).
fn timestamp_in(seconds: i64) -> Option<String> {
    let at = jiff::Timestamp::now().checked_add(jiff::SignedDuration::from_secs(seconds));
    at.ok()
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
}

/// Decides what a DELETE with `requested` (`gracePeriodSeconds`) does to
/// `current`, as `rest.BeforeDelete` does.
pub(crate) fn before_delete(
    def: &ResourceDef,
    current: &Value,
    requested: Option<i64>,
) -> Deletion {
    // Negative values are treated as 1 s on the delete path.
    let requested = requested.map(|p| if p < 0 { 1 } else { p });
    if !is_pod(def) {
        return Deletion::NotGraceful;
    }
    if let Some(since) = meta_str(current, "deletionTimestamp") {
        let grace = grace_of(current).unwrap_or(0);
        if grace <= 0 {
            return Deletion::NotGraceful;
        }
        return match requested {
            // Only a shorter grace period may be given: the new deadline
            // counts from when the deletion was first asked for.
            Some(period) if period < grace => {
                let asked_at = since
                    .parse::<jiff::Timestamp>()
                    .ok()
                    .and_then(|t| t.checked_sub(jiff::SignedDuration::from_secs(grace)).ok());
                let deadline = asked_at
                    .and_then(|t| t.checked_add(jiff::SignedDuration::from_secs(period)).ok())
                    .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
                    .or_else(|| timestamp_in(period));
                let mut next = current.clone();
                set_meta(&mut next, "deletionTimestamp", deadline.map(Value::from));
                set_meta(&mut next, "deletionGracePeriodSeconds", Some(json!(period)));
                Deletion::Graceful(next)
            }
            _ => Deletion::Pending,
        };
    }
    let period = pod_grace_period(current, requested);
    let mut next = current.clone();
    set_meta(
        &mut next,
        "deletionTimestamp",
        timestamp_in(period).map(Value::from),
    );
    set_meta(&mut next, "deletionGracePeriodSeconds", Some(json!(period)));
    let generation = next
        .pointer("/metadata/generation")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    if generation > 0 {
        set_meta(&mut next, "generation", Some(json!(generation + 1)));
    }
    Deletion::Graceful(next)
}

/// Whether a gracefully deleted object goes at once: its grace is 0 and
/// no finalizer holds it.
pub(crate) fn goes_at_once(next: &Value) -> bool {
    grace_of(next) == Some(0) && !object::has_finalizers(next)
}

/// How long until a terminating object's grace period ends, if it has one
/// running (none when its deletionTimestamp cannot be read).
pub(crate) fn remaining_grace(object: &Value) -> Option<std::time::Duration> {
    if grace_of(object).unwrap_or(0) <= 0 {
        return None;
    }
    let deadline = meta_str(object, "deletionTimestamp")?
        .parse::<jiff::Timestamp>()
        .ok()?;
    let left = deadline.duration_since(jiff::Timestamp::now());
    Some(std::time::Duration::try_from(left).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::builtins;

    fn def(plural: &str) -> std::sync::Arc<ResourceDef> {
        builtins()
            .into_iter()
            .find(|d| d.plural == plural)
            .unwrap_or_else(|| panic!("no builtin {plural}"))
    }

    fn graceful(d: Deletion) -> Value {
        match d {
            Deletion::Graceful(v) => v,
            other => panic!("expected a graceful deletion, got {other:?}"),
        }
    }

    fn bound_pod() -> Value {
        json!({"metadata": {"name": "p", "generation": 1}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}})
    }

    #[test]
    fn bound_pods_get_their_grace_period() {
        let pods = def("pods");
        let next = graceful(before_delete(&pods, &bound_pod(), None));
        assert_eq!(next["metadata"]["deletionGracePeriodSeconds"], 30);
        assert_eq!(next["metadata"]["generation"], 2);
        let left = remaining_grace(&next).unwrap_or_default();
        assert!(left.as_secs() >= 28 && left.as_secs() <= 30, "{left:?}");
        let mut custom = bound_pod();
        custom["spec"]["terminationGracePeriodSeconds"] = json!(5);
        let next = graceful(before_delete(&pods, &custom, None));
        assert_eq!(next["metadata"]["deletionGracePeriodSeconds"], 5);
        let next = graceful(before_delete(&pods, &custom, Some(7)));
        assert_eq!(next["metadata"]["deletionGracePeriodSeconds"], 7);
        let next = graceful(before_delete(&pods, &custom, Some(-3)));
        assert_eq!(next["metadata"]["deletionGracePeriodSeconds"], 1);
        assert!(!goes_at_once(&next));
        assert!(goes_at_once(&graceful(before_delete(
            &pods,
            &custom,
            Some(0)
        ))));
    }

    #[test]
    fn unbound_and_terminated_pods_go_at_once() {
        let pods = def("pods");
        let unbound = json!({"metadata": {"name": "p"}, "spec": {}});
        assert!(goes_at_once(&graceful(before_delete(
            &pods,
            &unbound,
            Some(30)
        ))));
        let mut done = bound_pod();
        done["status"]["phase"] = json!("Succeeded");
        assert!(goes_at_once(&graceful(before_delete(&pods, &done, None))));
    }

    #[test]
    fn a_pending_grace_may_only_be_shortened() {
        let pods = def("pods");
        let terminating = graceful(before_delete(&pods, &bound_pod(), Some(20)));
        assert!(matches!(
            before_delete(&pods, &terminating, None),
            Deletion::Pending
        ));
        assert!(matches!(
            before_delete(&pods, &terminating, Some(25)),
            Deletion::Pending
        ));
        let shorter = graceful(before_delete(&pods, &terminating, Some(5)));
        assert_eq!(shorter["metadata"]["deletionGracePeriodSeconds"], 5);
        let left = remaining_grace(&shorter).unwrap_or_default();
        assert!(left.as_secs() <= 5, "{left:?}");
        assert!(goes_at_once(&graceful(before_delete(
            &pods,
            &terminating,
            Some(0)
        ))));
    }

    #[test]
    fn other_kinds_are_not_deleted_gracefully() {
        let cm = json!({"metadata": {"name": "c"}});
        assert!(matches!(
            before_delete(&def("configmaps"), &cm, Some(30)),
            Deletion::NotGraceful
        ));
    }
}
