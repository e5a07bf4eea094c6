//! A stand-in for kube-controller-manager's Deployment controller, so that
//! "run" is visible without ReplicaSets, pods or a kubelet. Opt-in per
//! server ([`super::ApiServerConfig::deployment_controller`]); it acts on
//! the Deployments of the physical cluster only (paths without
//! `/clusters/...`; KCP runs no such controller).
//!
//! What it does: it watches Deployments (in-process, as an informer would)
//! and, for each one that is not paused, writes the status kube's
//! controller reports once a rollout has completed, in one step:
//! `observedGeneration` is `metadata.generation`; `replicas`,
//! `updatedReplicas`, `readyReplicas` and `availableReplicas` all equal
//! `spec.replicas` (1 when unset, as kube defaults it), so a scale reaches
//! its new count in the first status write after it (no intermediate
//! counts); zero counts are omitted, as kube's `omitempty` fields are. The
//! conditions follow kube's `calculateStatus` and `syncRolloutStatus`:
//! `Available` True with reason `MinimumReplicasAvailable` ("Deployment has
//! minimum availability."), then `Progressing` True with reason
//! `NewReplicaSetAvailable` ("ReplicaSet \"<name>-<hash>\" has successfully
//! progressed.", the hash taken from `spec.template`, so a new template
//! names a new ReplicaSet), with kube's rules for the times: a condition
//! whose status and reason stay is left as it was; one whose status stays
//! keeps its `lastTransitionTime`. A Deployment whose
//! `progressDeadlineSeconds` is MaxInt32 (no deadline) gets no
//! `Progressing` condition; a `ReplicaFailure` condition is removed; other
//! conditions and `collisionCount` are kept. The status is written as
//! kube's controller writes it, an update of the `/status` subresource
//! (generation unchanged, appliers lose the fields whose value changes)
//! recorded in `managedFields` as manager `kube-controller-manager`,
//! operation `Update`, subresource `status`. Nothing is written when the
//! status is already what it should be. Each write that scales records the
//! `ScalingReplicaSet` Events kube's controller records
//! (`pkg/controller/deployment/sync.go`, `scaleReplicaSet`: "Scaled up
//! replica set web-<hash> from 0 to 3"), as core/v1 Events from its legacy
//! recorder (`source.component` `deployment-controller`, `count` 1, first
//! and last timestamp, no `eventTime`, named `<deployment>.<hex nanos>`): a
//! new template scales its ReplicaSet up from 0 and the previous one down
//! to 0, a scale changes the current one's count. Paused Deployments
//! (`spec.paused: true`) keep their status as it is, as do those whose
//! `spec.replicas` is not an integer (kube-apiserver would refuse them).
//!
//! What it does not do: no ReplicaSets or pods are created (so nothing
//! scales anything; only the Deployment's status says it did), no rollout
//! moves through intermediate states (no `ReplicaSetUpdated`, no
//! `MinimumReplicasUnavailable`, no `unavailableReplicas`, no progress
//! deadline), the `deployment.kubernetes.io/revision` annotation is not
//! set, the ReplicaSet name's hash is not kube's (same shape, different
//! function), and a paused Deployment gets neither kube's scaling nor its
//! `DeploymentPaused` reason. If its watch is ended (it fell too far
//! behind), it starts over from the current state of every Deployment.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::Shared;
use super::object::{self, meta_str, set_meta};
use super::registry::{self, Target};
use super::resources::ResourceDef;
use super::status::ApiError;
use super::store::{Decision, EventType, Filter, NameChoice, Scope, WatchStart};

/// The field manager kube-controller-manager writes as.
const FIELD_MANAGER: &str = "kube-controller-manager";

/// kube's reasons and messages for the conditions of a complete rollout
/// (`pkg/controller/deployment/util/deployment_util.go`).
const AVAILABLE: &str = "Available";
const MINIMUM_REPLICAS_AVAILABLE: &str = "MinimumReplicasAvailable";
const MINIMUM_AVAILABILITY: &str = "Deployment has minimum availability.";
const PROGRESSING: &str = "Progressing";
const NEW_REPLICA_SET_AVAILABLE: &str = "NewReplicaSetAvailable";
const REPLICA_FAILURE: &str = "ReplicaFailure";

/// `progressDeadlineSeconds` that means "no deadline" (math.MaxInt32).
const NO_PROGRESS_DEADLINE: i64 = i32::MAX as i64;

/// Keeps Deployment statuses following their specs until the server stops.
pub(crate) async fn run(shared: Arc<Shared>) {
    let Some(def) = shared.store.resolve("", "apps", "v1", "deployments") else {
        tracing::warn!("no apps/v1 deployments: the Deployment controller does not run");
        return;
    };
    let scope = Scope::Workspace(String::new());
    while !shared.shutdown.is_cancelled() {
        let subscription = shared.store.watch(
            &scope,
            &def.key(),
            Filter::default(),
            WatchStart::CurrentState,
        );
        let mut subscription = match subscription {
            Ok(s) => s,
            Err(error) => {
                // A watch of the current state cannot expire; nothing else fails.
                tracing::warn!(
                    error = error.message,
                    "the Deployment controller cannot watch"
                );
                return;
            }
        };
        for delivery in std::mem::take(&mut subscription.initial) {
            reconcile(&shared, &def, &delivery.event.object);
        }
        loop {
            let delivery = tokio::select! {
                () = shared.shutdown.cancelled() => return,
                delivery = subscription.live.recv() => delivery,
            };
            match delivery {
                Some(d) if d.kind != EventType::Deleted => {
                    reconcile(&shared, &def, &d.event.object)
                }
                Some(_) => {}
                None => break,
            }
        }
        tracing::debug!("the Deployment controller's watch ended; starting over");
    }
}

/// Brings one Deployment's status in line with its spec (read again under
/// the store's lock, so the decision is never based on a stale copy).
fn reconcile(shared: &Shared, def: &Arc<ResourceDef>, seen: &Value) {
    let namespace = meta_str(seen, "namespace").unwrap_or_default().to_string();
    let name = meta_str(seen, "name").unwrap_or_default().to_string();
    let target = Target {
        def: def.clone(),
        version: "v1".to_string(),
        namespace: namespace.clone(),
        status: true,
    };
    // What the write scaled, and the Deployment as written, for the Events.
    let mut scaled: Option<(Vec<String>, Value)> = None;
    let written = shared.store.write(
        "",
        &def.key(),
        &namespace,
        NameChoice::Exact(name.clone()),
        false,
        |_, name, current| {
            let Some(current) = current else {
                return Ok(Decision::Keep);
            };
            let decision = update_status(&target, name, current, &object::now_rfc3339())?;
            if let Decision::Put(next) = &decision {
                scaled = Some((scaling_messages(current, next), next.clone()));
            }
            Ok(decision)
        },
    );
    match written {
        Err(error) => tracing::warn!(
            namespace,
            deployment = name,
            error = error.message,
            "the Deployment controller could not write a status"
        ),
        Ok(_) => {
            if let Some((messages, deployment)) = scaled {
                for message in messages {
                    record_scaling(shared, &deployment, &message);
                }
            }
        }
    }
}

/// The messages of the `ScalingReplicaSet` Events for the status change
/// from `before` to `after` (see the module documentation).
fn scaling_messages(before: &Value, after: &Value) -> Vec<String> {
    let replicas = |d: &Value| {
        d.pointer("/status/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(0)
    };
    // The ReplicaSet a complete rollout names in its Progressing condition.
    let replica_set = |d: &Value| {
        let message = d
            .pointer("/status/conditions")?
            .as_array()?
            .iter()
            .find(|c| c.get("type").and_then(Value::as_str) == Some(PROGRESSING))?
            .get("message")?
            .as_str()?;
        let quoted = message.strip_prefix("ReplicaSet \"")?;
        quoted.split_once('"').map(|(name, _)| name.to_owned())
    };
    let (from, to) = (replicas(before), replicas(after));
    let scale = |set: &str, from: i64, to: i64| {
        let direction = if to > from { "up" } else { "down" };
        format!("Scaled {direction} replica set {set} from {from} to {to}")
    };
    let current = replica_set(after).unwrap_or_else(|| replica_set_name(after));
    match replica_set(before) {
        // A new template: a new ReplicaSet takes over from the previous one.
        Some(previous) if previous != current => [
            (to > 0).then(|| scale(&current, 0, to)),
            (from > 0).then(|| scale(&previous, from, 0)),
        ]
        .into_iter()
        .flatten()
        .collect(),
        _ if from != to => vec![scale(&current, from, to)],
        _ => Vec::new(),
    }
}

/// Records one `ScalingReplicaSet` Event about `deployment`, as kube's
/// legacy event recorder does.
fn record_scaling(shared: &Shared, deployment: &Value, message: &str) {
    let Some(def) = shared.store.resolve("", "", "v1", "events") else {
        return;
    };
    let namespace = meta_str(deployment, "namespace").unwrap_or_default();
    let name = meta_str(deployment, "name").unwrap_or_default();
    let now = jiff::Timestamp::now();
    let event = json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": format!("{name}.{:x}", now.as_nanosecond()), "namespace": namespace},
        "involvedObject": {
            "apiVersion": "apps/v1", "kind": "Deployment", "namespace": namespace, "name": name,
            "uid": meta_str(deployment, "uid"),
            "resourceVersion": meta_str(deployment, "resourceVersion"),
        },
        "reason": "ScalingReplicaSet",
        "message": message,
        "source": {"component": "deployment-controller"},
        "firstTimestamp": object::now_rfc3339(),
        "lastTimestamp": object::now_rfc3339(),
        "count": 1,
        "type": "Normal",
        "eventTime": null,
        "reportingComponent": "",
        "reportingInstance": "",
    });
    let target = Target {
        def: def.clone(),
        version: "v1".to_string(),
        namespace: namespace.to_string(),
        status: false,
    };
    let event_name = meta_str(&event, "name").unwrap_or_default().to_string();
    let recorded = shared.store.write(
        "",
        &def.key(),
        namespace,
        NameChoice::Exact(event_name),
        false,
        |view, name, current| registry::create(&target, view, name, current, event),
    );
    if let Err(error) = recorded {
        tracing::warn!(
            namespace,
            deployment = name,
            error = error.message,
            "the Deployment controller could not record an Event"
        );
    }
}

/// The `/status` update kube's controller would make, or `Keep` when the
/// status is already right (or the Deployment is paused or unreadable).
fn update_status(
    target: &Target,
    name: &str,
    current: &Arc<Value>,
    now: &str,
) -> Result<Decision, ApiError> {
    let Some(status) = desired_status(current, now) else {
        return Ok(Decision::Keep);
    };
    if current.get("status") == Some(&status) {
        return Ok(Decision::Keep);
    }
    let mut incoming = (**current).clone();
    incoming["status"] = status;
    Ok(
        match registry::update(
            target,
            name,
            Some(current),
            incoming,
            registry::Writer::Other,
        )? {
            Decision::Put(mut next) => {
                record_manager(&mut next, now);
                Decision::Put(next)
            }
            other => other,
        },
    )
}

/// The status of `deployment` once its rollout has completed, or `None`
/// when the controller leaves it alone: paused, or `spec.replicas` is not
/// an integer (kube-apiserver would not have stored it).
pub(crate) fn desired_status(deployment: &Value, now: &str) -> Option<Value> {
    let spec = deployment.get("spec");
    if spec
        .and_then(|s| s.get("paused"))
        .and_then(Value::as_bool)
        .unwrap_or(false)
    {
        return None;
    }
    let replicas = match spec.and_then(|s| s.get("replicas")) {
        None | Some(Value::Null) => 1,
        Some(n) => n.as_i64()?.clamp(0, i64::from(i32::MAX)),
    };
    let previous = deployment.get("status");
    let mut status = Map::new();
    let generation = deployment
        .pointer("/metadata/generation")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    for (field, value) in [
        ("observedGeneration", generation),
        ("replicas", replicas),
        ("updatedReplicas", replicas),
        ("readyReplicas", replicas),
        ("availableReplicas", replicas),
    ] {
        if value != 0 {
            status.insert(field.into(), json!(value));
        }
    }
    if let Some(count) = previous.and_then(|s| s.get("collisionCount")) {
        status.insert("collisionCount".into(), count.clone());
    }
    let mut conditions: Vec<Value> = previous
        .and_then(|s| s.get("conditions"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    set_condition(
        &mut conditions,
        Condition {
            kind: AVAILABLE,
            status: "True",
            reason: MINIMUM_REPLICAS_AVAILABLE,
            message: MINIMUM_AVAILABILITY.to_string(),
        },
        now,
    );
    let deadline = spec
        .and_then(|s| s.get("progressDeadlineSeconds"))
        .and_then(Value::as_i64);
    if deadline == Some(NO_PROGRESS_DEADLINE) {
        remove_condition(&mut conditions, PROGRESSING);
    } else {
        let replica_set = replica_set_name(deployment);
        let progressed = Condition {
            kind: PROGRESSING,
            status: "True",
            reason: NEW_REPLICA_SET_AVAILABLE,
            message: format!("ReplicaSet {replica_set:?} has successfully progressed."),
        };
        // kube moves through ReplicaSetUpdated to NewReplicaSetAvailable
        // for each new template (keeping lastTransitionTime while the
        // status stays True), so the condition is complete only when it
        // names the current template's ReplicaSet.
        let complete = condition(&conditions, PROGRESSING).is_some_and(|c| {
            c.get("reason").and_then(Value::as_str) == Some(progressed.reason)
                && c.get("message").and_then(Value::as_str) == Some(progressed.message.as_str())
        });
        if !complete {
            replace_condition(&mut conditions, progressed, now);
        }
    }
    remove_condition(&mut conditions, REPLICA_FAILURE);
    if !conditions.is_empty() {
        status.insert("conditions".into(), Value::Array(conditions));
    }
    Some(Value::Object(status))
}

/// A condition kube's controller sets.
#[derive(Debug)]
struct Condition {
    kind: &'static str,
    status: &'static str,
    reason: &'static str,
    message: String,
}

fn condition<'a>(conditions: &'a [Value], kind: &str) -> Option<&'a Value> {
    conditions
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(kind))
}

fn remove_condition(conditions: &mut Vec<Value>, kind: &str) {
    conditions.retain(|c| c.get("type").and_then(Value::as_str) != Some(kind));
}

/// kube's `SetDeploymentCondition`: nothing changes when the status and
/// reason are the same; otherwise the condition is replaced.
fn set_condition(conditions: &mut Vec<Value>, new: Condition, now: &str) {
    let unchanged = condition(conditions, new.kind).is_some_and(|c| {
        c.get("status").and_then(Value::as_str) == Some(new.status)
            && c.get("reason").and_then(Value::as_str) == Some(new.reason)
    });
    if !unchanged {
        replace_condition(conditions, new, now);
    }
}

/// Replaces (and moves last) the condition of `new`'s type, keeping its
/// `lastTransitionTime` when the status is the same.
fn replace_condition(conditions: &mut Vec<Value>, new: Condition, now: &str) {
    let transition = condition(conditions, new.kind)
        .filter(|c| c.get("status").and_then(Value::as_str) == Some(new.status))
        .and_then(|c| c.get("lastTransitionTime").and_then(Value::as_str))
        .unwrap_or(now)
        .to_string();
    remove_condition(conditions, new.kind);
    conditions.push(json!({
        "type": new.kind,
        "status": new.status,
        "lastUpdateTime": now,
        "lastTransitionTime": transition,
        "reason": new.reason,
        "message": new.message,
    }));
}

/// The name of the ReplicaSet kube would create for the current template:
/// `<deployment>-<hash of spec.template>`, in kube's shape (its
/// `ComputeHash` encodes an FNV-32a hash with `SafeEncodeString`) but
/// hashing the template's JSON rather than Go's printed struct.
fn replica_set_name(deployment: &Value) -> String {
    let name = meta_str(deployment, "name").unwrap_or_default();
    let template = deployment
        .pointer("/spec/template")
        .map(|t| object::to_json(t, object::KeyOrder::Sorted))
        .unwrap_or_default();
    let hash = fnv32a(&template);
    format!("{name}-{}", safe_encode(&hash.to_string()))
}

/// 32-bit FNV-1a, as Go's `hash/fnv.New32a`.
fn fnv32a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |hash, b| {
        (hash ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// apimachinery's `rand.SafeEncodeString`: each byte mapped into an
/// alphabet without vowels or look-alikes.
fn safe_encode(text: &str) -> String {
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    text.bytes()
        .map(|b| char::from(ALPHANUMS[usize::from(b) % ALPHANUMS.len()]))
        .collect()
}

/// Records the status update in `managedFields` as kube's field manager
/// records an `Update` to `/status`: one entry for the manager, owning the
/// status fields it wrote.
fn record_manager(object: &mut Value, now: &str) {
    let fields = status_fields(object.get("status"));
    let mut managed: Vec<Value> = object
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    managed.retain(|e| {
        !(e.get("manager").and_then(Value::as_str) == Some(FIELD_MANAGER)
            && e.get("operation").and_then(Value::as_str) == Some("Update")
            && e.get("subresource").and_then(Value::as_str) == Some("status"))
    });
    let api_version = object
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("apps/v1")
        .to_string();
    managed.push(json!({
        "manager": FIELD_MANAGER,
        "operation": "Update",
        "apiVersion": api_version,
        "time": now,
        "fieldsType": "FieldsV1",
        "fieldsV1": fields,
        "subresource": "status",
    }));
    set_meta(object, "managedFields", Some(Value::Array(managed)));
}

/// The FieldsV1 set of a Deployment status: each field, and each condition
/// keyed by its type.
fn status_fields(status: Option<&Value>) -> Value {
    let mut set = Map::new();
    for (key, value) in status.and_then(Value::as_object).into_iter().flatten() {
        let entry = match (key.as_str(), value) {
            ("conditions", Value::Array(items)) => {
                let mut list = Map::new();
                list.insert(".".into(), json!({}));
                for item in items {
                    let Some(fields) = item.as_object() else {
                        continue;
                    };
                    let mut inner: Map<String, Value> = fields
                        .keys()
                        .map(|f| (format!("f:{f}"), json!({})))
                        .collect();
                    inner.insert(".".into(), json!({}));
                    let key = json!({ "type": item.get("type").cloned().unwrap_or(Value::Null) });
                    list.insert(format!("k:{key}"), Value::Object(inner));
                }
                Value::Object(list)
            }
            _ => json!({}),
        };
        set.insert(format!("f:{key}"), entry);
    }
    json!({ "f:status": set })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::builtins;

    const T0: &str = "2025-01-01T00:00:00Z";
    const T1: &str = "2025-01-01T00:01:00Z";

    fn deployment(replicas: Value, image: &str) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "generation": 1, "resourceVersion": "5"},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "c", "image": image}]}}},
            "status": {},
        })
    }

    fn with_status(mut d: Value, now: &str) -> Value {
        d["status"] = desired_status(&d, now).unwrap_or_else(|| panic!("no status for {d}"));
        d
    }

    fn target() -> Target {
        let def = builtins()
            .into_iter()
            .find(|d| d.plural == "deployments")
            .unwrap_or_else(|| panic!("no builtin deployments"));
        Target {
            def,
            version: "v1".into(),
            namespace: "default".into(),
            status: true,
        }
    }

    #[test]
    fn a_new_deployment_reports_a_complete_rollout() {
        let status = desired_status(&deployment(json!(3), "nginx:1"), T0);
        let replica_set = replica_set_name(&deployment(json!(3), "nginx:1"));
        assert_eq!(
            status,
            Some(json!({
                "observedGeneration": 1,
                "replicas": 3, "updatedReplicas": 3, "readyReplicas": 3, "availableReplicas": 3,
                "conditions": [
                    {"type": "Available", "status": "True", "lastUpdateTime": T0, "lastTransitionTime": T0,
                     "reason": "MinimumReplicasAvailable", "message": "Deployment has minimum availability."},
                    {"type": "Progressing", "status": "True", "lastUpdateTime": T0, "lastTransitionTime": T0,
                     "reason": "NewReplicaSetAvailable",
                     "message": format!("ReplicaSet \"{replica_set}\" has successfully progressed.")},
                ],
            }))
        );
        assert!(replica_set.starts_with("web-") && replica_set.len() > "web-".len());
    }

    #[test]
    fn scales_and_rollouts_record_what_kube_records() {
        let first = with_status(deployment(json!(2), "nginx:1"), T0);
        let created = scaling_messages(&deployment(json!(2), "nginx:1"), &first);
        let rs1 = replica_set_name(&first);
        assert_eq!(
            created,
            [format!("Scaled up replica set {rs1} from 0 to 2")]
        );
        let mut scaled = first.clone();
        scaled["spec"]["replicas"] = json!(1);
        let scaled = with_status(scaled, T1);
        assert_eq!(
            scaling_messages(&first, &scaled),
            [format!("Scaled down replica set {rs1} from 2 to 1")]
        );
        let mut rolled = scaled.clone();
        rolled["spec"]["template"]["spec"]["containers"][0]["image"] = json!("nginx:2");
        let rolled = with_status(rolled, T1);
        let rs2 = replica_set_name(&rolled);
        assert_ne!(rs1, rs2);
        assert_eq!(
            scaling_messages(&scaled, &rolled),
            [
                format!("Scaled up replica set {rs2} from 0 to 1"),
                format!("Scaled down replica set {rs1} from 1 to 0"),
            ]
        );
        assert!(scaling_messages(&rolled, &rolled).is_empty());
    }

    #[test]
    fn a_scale_changes_the_counts_and_leaves_the_conditions() {
        let mut d = with_status(deployment(json!(2), "nginx:1"), T0);
        let before = d["status"]["conditions"].clone();
        d["spec"]["replicas"] = json!(5);
        d["metadata"]["generation"] = json!(2);
        let status = desired_status(&d, T1).unwrap_or_default();
        assert_eq!(status["observedGeneration"], 2);
        for field in [
            "replicas",
            "updatedReplicas",
            "readyReplicas",
            "availableReplicas",
        ] {
            assert_eq!(status[field], 5, "{field}");
        }
        assert_eq!(status["conditions"], before);
    }

    #[test]
    fn a_new_template_names_a_new_replica_set_and_keeps_the_transition_time() {
        let d = with_status(deployment(json!(2), "nginx:1"), T0);
        let mut next = d.clone();
        next["spec"]["template"]["spec"]["containers"][0]["image"] = json!("nginx:2");
        let status = desired_status(&next, T1).unwrap_or_default();
        let progressing = &status["conditions"][1];
        assert_eq!(progressing["type"], "Progressing");
        assert_eq!(progressing["reason"], "NewReplicaSetAvailable");
        assert_eq!(progressing["lastUpdateTime"], T1);
        assert_eq!(progressing["lastTransitionTime"], T0);
        let name = replica_set_name(&next);
        assert_ne!(name, replica_set_name(&d));
        assert_eq!(
            progressing["message"],
            format!("ReplicaSet \"{name}\" has successfully progressed.")
        );
        // Available did not change at all.
        assert_eq!(status["conditions"][0], d["status"]["conditions"][0]);
    }

    #[test]
    fn zero_replicas_omit_the_counts_and_unset_means_one() {
        let status = desired_status(&deployment(json!(0), "x"), T0).unwrap_or_default();
        assert!(status.get("replicas").is_none(), "{status}");
        assert!(status.get("availableReplicas").is_none(), "{status}");
        assert_eq!(status["conditions"][0]["status"], "True");
        let mut unset = deployment(json!(0), "x");
        if let Some(spec) = unset["spec"].as_object_mut() {
            spec.remove("replicas");
        }
        assert_eq!(
            desired_status(&unset, T0).unwrap_or_default()["readyReplicas"],
            1
        );
    }

    #[test]
    fn paused_or_unreadable_deployments_are_left_alone() {
        let mut paused = deployment(json!(3), "x");
        paused["spec"]["paused"] = json!(true);
        assert_eq!(desired_status(&paused, T0), None);
        assert_eq!(desired_status(&deployment(json!("three"), "x"), T0), None);
        // Negative counts (refused by kube's validation) read as zero.
        let status = desired_status(&deployment(json!(-2), "x"), T0).unwrap_or_default();
        assert!(status.get("replicas").is_none(), "{status}");
    }

    #[test]
    fn no_deadline_means_no_progressing_and_failures_go() {
        let mut d = deployment(json!(1), "x");
        d["spec"]["progressDeadlineSeconds"] = json!(i32::MAX);
        d["status"] = json!({
            "collisionCount": 2,
            "conditions": [
                {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate"},
                {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated"},
                {"type": "Custom", "status": "True", "reason": "Mine"},
            ],
        });
        let status = desired_status(&d, T0).unwrap_or_default();
        let types: Vec<&str> = status["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["type"].as_str())
            .collect();
        assert_eq!(types, ["Custom", "Available"]);
        assert_eq!(status["collisionCount"], 2);
    }

    #[test]
    fn the_update_records_the_controller_and_is_skipped_when_nothing_changes() {
        let current = Arc::new(deployment(json!(2), "x"));
        let next = match update_status(&target(), "web", &current, T0) {
            Ok(Decision::Put(next)) => next,
            other => panic!("expected a write, got {other:?}"),
        };
        assert_eq!(next["metadata"]["generation"], 1, "a status write");
        assert_eq!(next["spec"], current["spec"]);
        assert_eq!(next["status"]["availableReplicas"], 2);
        let entries = next["metadata"]["managedFields"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(entries.len(), 1, "{entries:?}");
        let entry = &entries[0];
        assert_eq!(entry["manager"], FIELD_MANAGER);
        assert_eq!(entry["operation"], "Update");
        assert_eq!(entry["subresource"], "status");
        assert_eq!(
            entry["fieldsV1"]["f:status"]["f:availableReplicas"],
            json!({})
        );
        assert_eq!(
            entry["fieldsV1"]["f:status"]["f:conditions"]["k:{\"type\":\"Available\"}"]["f:reason"],
            json!({})
        );
        // Once written, the same spec needs no write, even later.
        let written = Arc::new(next);
        assert!(matches!(
            update_status(&target(), "web", &written, T1),
            Ok(Decision::Keep)
        ));
    }
}
