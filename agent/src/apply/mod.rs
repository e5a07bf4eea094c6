//! The apply stage: downward deltas, transformed, written into the cluster.
//!
//! [`Applier`] makes one attempt at a time: server-side apply with field
//! manager [`FIELD_MANAGER`], never forced (a field another manager owns
//! with another value is a [`ApplyFailure::CONFLICT`], left as it is), or a
//! delete (a 404 counts as done). Each attempt ends in an [`ApplyResult`]
//! or, when the cluster may answer differently later (429, 5xx, a timeout, a
//! broken connection), in a [`Transient`] error that [`queue`] retries with
//! the agent's backoff. The namespace of an object is created first when the
//! agent has not seen it yet ([`crate::transform::namespace_object`]).
//!
//! In flow order: [`queue`] (per-session workers, in order per object, and
//! the barrier before a sweep) → this module → [`sweep`] (after a downward
//! snapshot, the owned objects it did not name are deleted).

pub mod drift;
pub mod queue;
pub mod sweep;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use uplink_protocol::{ApplyFailure, ObjectRef};

use crate::config::ResourceSpec;
use crate::mapping::{Locator, NAMESPACE_LOCATOR, NamespaceLocator};
use crate::metrics::Metrics;
use crate::transform::{self, Downstream, Target};
use crate::watch::{ResolveError, resolve};

/// The field manager of everything the agent applies.
pub const FIELD_MANAGER: &str = "uplink";

/// How one downward delta ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyResult {
    Applied,
    Deleted,
    /// Not applied, not retried until the object changes: `reason` is one
    /// of [`ApplyFailure`]'s, `message` what the cluster (or the transform)
    /// said.
    Failed {
        reason: &'static str,
        message: String,
    },
}

impl ApplyResult {
    /// The `result` label of `uplink_agent_applies_total`.
    pub fn label(&self) -> &'static str {
        match self {
            ApplyResult::Applied => "applied",
            ApplyResult::Deleted => "deleted",
            ApplyResult::Failed { reason, .. } => reason,
        }
    }

    fn failed(reason: &'static str, message: impl fmt::Display) -> Self {
        ApplyResult::Failed {
            reason,
            message: message.to_string(),
        }
    }
}

/// A failure worth retrying: the cluster may answer differently later.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Transient(pub String);

/// A resource type as discovery resolved it.
#[derive(Debug, Clone)]
struct Resolved {
    api: ApiResource,
    namespaced: bool,
}

/// Writes downward deltas into the cluster; shared by every session of the
/// agent (its caches outlive connections).
pub struct Applier {
    client: Client,
    types: Vec<ResourceSpec>,
    metrics: Metrics,
    /// Types resolved through discovery. A type that is not served is not
    /// kept, so a CRD installed later is found.
    resolved: Mutex<HashMap<ResourceSpec, Resolved>>,
    /// Namespaces known to exist with the locator the agent wants.
    namespaces: Mutex<HashSet<String>>,
    /// What each object was last applied as, for [`drift`].
    applied: Mutex<drift::Applied>,
}

impl fmt::Debug for Applier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Applier")
            .field("types", &self.types)
            .finish_non_exhaustive()
    }
}

impl Applier {
    /// An applier of `types` (`--downward-resources`) through `client`.
    pub fn new(client: Client, types: Vec<ResourceSpec>, metrics: Metrics) -> Self {
        Self {
            client,
            types,
            metrics,
            resolved: Mutex::new(HashMap::new()),
            namespaces: Mutex::new(HashSet::new()),
            applied: Mutex::new(HashMap::new()),
        }
    }

    /// The types this applier writes.
    pub fn types(&self) -> &[ResourceSpec] {
        &self.types
    }

    /// The agent's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// One attempt to bring `object` into the cluster as `manifest_json`
    /// says.
    pub async fn apply(
        &self,
        object: &ObjectRef,
        manifest_json: &str,
        target: &Target,
    ) -> Result<ApplyResult, Transient> {
        let downstream = match transform::transform(object, manifest_json, target, &self.types) {
            Ok(downstream) => downstream,
            Err(e) => return Ok(ApplyResult::failed(e.reason(), e)),
        };
        // A 404 means the namespace or the type went away since they were
        // cached: look again once, then believe it.
        for last in [false, true] {
            let resolved = match self.resolve_namespaced(object).await? {
                Ok(resolved) => resolved,
                Err(failed) => return Ok(failed),
            };
            if let Err(failed) = self.ensure_namespace(&downstream.locator, target).await? {
                return Ok(failed);
            }
            // While this apply is in flight, drift has nothing to set back:
            // the watch event of this very apply could otherwise be compared
            // with the manifest before it, and the older one re-applied.
            self.remember(&downstream.key, None);
            match self.patch(&downstream, &resolved).await {
                Ok(()) => {
                    self.remember(&downstream.key, Some(&downstream.manifest));
                    return Ok(ApplyResult::Applied);
                }
                Err(Outcome::NotFound(message)) if !last => {
                    tracing::debug!(namespace = %downstream.key.namespace, name = %downstream.key.name, %message, "not found while applying; looking again");
                    self.forget(object, &downstream.key.namespace);
                }
                Err(Outcome::NotFound(message)) => {
                    self.remember(&downstream.key, None);
                    return Ok(ApplyResult::failed(ApplyFailure::INVALID, message));
                }
                Err(Outcome::Failed(result)) => {
                    // Not KCP's spec any more: nothing to set back.
                    self.remember(&downstream.key, None);
                    return Ok(result);
                }
                Err(Outcome::Transient(e)) => {
                    if e.0.contains("being terminated") {
                        self.forget(object, &downstream.key.namespace);
                    }
                    return Err(e);
                }
            }
        }
        Err(Transient("not found twice".into()))
    }

    /// One attempt to delete `object` from the cluster (gone already is
    /// done too).
    pub async fn delete(
        &self,
        object: &ObjectRef,
        target: &Target,
    ) -> Result<ApplyResult, Transient> {
        let key = match transform::locate(object, target) {
            Ok(key) => key,
            Err(e) => return Ok(ApplyResult::failed(e.reason(), e)),
        };
        self.remember(&key, None);
        let resolved = match self.resolve_namespaced(object).await? {
            Ok(resolved) => resolved,
            // A type the cluster does not serve has no objects to delete.
            Err(ApplyResult::Failed { reason, .. }) if reason == ApplyFailure::INVALID => {
                return Ok(ApplyResult::Deleted);
            }
            Err(failed) => return Ok(failed),
        };
        match self
            .delete_object(&resolved.api, &key.namespace, &key.name)
            .await
        {
            Ok(()) | Err(Outcome::NotFound(_)) => Ok(ApplyResult::Deleted),
            Err(Outcome::Failed(result)) => Ok(result),
            Err(Outcome::Transient(e)) => Err(e),
        }
    }

    async fn patch(&self, downstream: &Downstream, resolved: &Resolved) -> Result<(), Outcome> {
        let api: Api<DynamicObject> = Api::namespaced_with(
            self.client.clone(),
            &downstream.key.namespace,
            &resolved.api,
        );
        // `PatchParams::apply` never forces.
        let params = PatchParams::apply(FIELD_MANAGER);
        api.patch(
            &downstream.key.name,
            &params,
            &Patch::Apply(&downstream.manifest),
        )
        .await
        .map(drop)
        .map_err(classify)
    }

    pub(crate) async fn delete_object(
        &self,
        api: &ApiResource,
        namespace: &str,
        name: &str,
    ) -> Result<(), Outcome> {
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), namespace, api);
        // Background: the object's dependents (ReplicaSets, a Job's pods)
        // go with it, whatever the type's default.
        api.delete(name, &DeleteParams::background())
            .await
            .map(drop)
            .map_err(classify)
    }

    /// `object`'s type, resolved through discovery (cached); it must be
    /// namespaced.
    async fn resolve_namespaced(
        &self,
        object: &ObjectRef,
    ) -> Result<Result<Resolved, ApplyResult>, Transient> {
        let spec = ResourceSpec {
            resource: object.resource.clone(),
            version: object.version.clone(),
            group: object.group.clone(),
        };
        let resolved = match self.resolve(&spec).await? {
            Ok(resolved) => resolved,
            Err(message) => return Ok(Err(ApplyResult::failed(ApplyFailure::INVALID, message))),
        };
        if !resolved.namespaced {
            return Ok(Err(ApplyResult::failed(
                ApplyFailure::FORBIDDEN,
                format!("{spec} is cluster-scoped; the agent applies only namespaced objects"),
            )));
        }
        Ok(Ok(resolved))
    }

    /// `spec` through discovery: `Ok(Err(message))` when the cluster does not
    /// serve it.
    async fn resolve(&self, spec: &ResourceSpec) -> Result<Result<Resolved, String>, Transient> {
        if let Some(resolved) = lock(&self.resolved).get(spec) {
            return Ok(Ok(resolved.clone()));
        }
        match resolve(&self.client, spec).await {
            Ok((api, watched)) => {
                let resolved = Resolved {
                    api,
                    namespaced: watched.namespaced,
                };
                lock(&self.resolved).insert(spec.clone(), resolved.clone());
                Ok(Ok(resolved))
            }
            Err(e @ ResolveError::NotServed { .. }) => Ok(Err(e.to_string())),
            Err(ResolveError::Discovery { source, .. }) => match classify(source) {
                Outcome::NotFound(_) => Ok(Err(format!(
                    "the API server does not serve {spec} (is the CRD installed?)"
                ))),
                Outcome::Transient(e) => Err(e),
                Outcome::Failed(ApplyResult::Failed { message, .. }) => Ok(Err(message)),
                Outcome::Failed(other) => Ok(Err(format!("{other:?}"))),
            },
        }
    }

    /// Creates the namespace of `locator` unless it exists; one that exists
    /// for another locator (or none) is not taken over.
    async fn ensure_namespace(
        &self,
        locator: &NamespaceLocator,
        target: &Target,
    ) -> Result<Result<(), ApplyResult>, Transient> {
        let name = locator.downstream_namespace();
        if lock(&self.namespaces).contains(&name) {
            return Ok(Ok(()));
        }
        let api: Api<Namespace> = Api::all(self.client.clone());
        for _ in 0..2 {
            match api.get_opt(&name).await {
                Ok(Some(existing)) => {
                    if existing.metadata.deletion_timestamp.is_some() {
                        return Err(Transient(format!(
                            "namespace {name} is being terminated; waiting to create it again"
                        )));
                    }
                    let theirs = existing
                        .metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(NAMESPACE_LOCATOR))
                        .and_then(|a| Locator::parse(a).ok());
                    if theirs.as_ref() != Some(&locator.upstream()) {
                        return Ok(Err(ApplyResult::failed(
                            ApplyFailure::FORBIDDEN,
                            format!(
                                "namespace {name} exists without the locator of {}/{}; the agent does not take it over",
                                locator.workspace, locator.namespace
                            ),
                        )));
                    }
                    lock(&self.namespaces).insert(name);
                    return Ok(Ok(()));
                }
                Ok(None) => {}
                Err(e) => return outcome_of_setup(classify(e)),
            }
            let namespace: Namespace =
                match serde_json::from_value(transform::namespace_object(locator, target)) {
                    Ok(namespace) => namespace,
                    Err(e) => return Ok(Err(ApplyResult::failed(ApplyFailure::MALFORMED, e))),
                };
            match api.create(&PostParams::default(), &namespace).await {
                Ok(_) => {
                    tracing::info!(namespace = %name, workspace = %locator.workspace, upstream = %locator.namespace, "created namespace");
                    lock(&self.namespaces).insert(name);
                    return Ok(Ok(()));
                }
                // Created meanwhile (another worker): look again.
                Err(kube::Error::Api(status)) if status.is_already_exists() => {}
                Err(e) => return outcome_of_setup(classify(e)),
            }
        }
        Err(Transient(format!(
            "namespace {name} appeared and vanished while being created"
        )))
    }

    /// Drops what is cached about `object`'s type and `namespace`.
    fn forget(&self, object: &ObjectRef, namespace: &str) {
        lock(&self.namespaces).remove(namespace);
        lock(&self.resolved)
            .retain(|spec, _| !(spec.group == object.group && spec.resource == object.resource));
    }
}

fn outcome_of_setup(outcome: Outcome) -> Result<Result<(), ApplyResult>, Transient> {
    match outcome {
        Outcome::Transient(e) => Err(e),
        Outcome::Failed(result) => Ok(Err(result)),
        Outcome::NotFound(message) => Ok(Err(ApplyResult::failed(ApplyFailure::INVALID, message))),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data is a cache: usable even if a holder panicked.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a failed request means for the delta.
#[derive(Debug)]
pub(crate) enum Outcome {
    NotFound(String),
    Failed(ApplyResult),
    Transient(Transient),
}

/// Sorts a failed request: a field conflict with another manager, a refusal
/// (invalid, forbidden), something gone (404), or worth retrying.
pub(crate) fn classify(error: kube::Error) -> Outcome {
    let kube::Error::Api(status) = error else {
        // No answer from the API server (connection, timeout, TLS) or one
        // that could not be read: try again.
        return Outcome::Transient(Transient(error.to_string()));
    };
    let message = if status.message.is_empty() {
        format!("{} {}", status.code, status.reason)
    } else {
        status.message.clone()
    };
    let causes: Vec<&str> = status
        .details
        .as_ref()
        .map(|d| d.causes.iter().map(|c| c.reason.as_str()).collect())
        .unwrap_or_default();
    match status.code {
        409 if causes.contains(&"FieldManagerConflict")
            || message.starts_with("Apply failed with") =>
        {
            Outcome::Failed(ApplyResult::failed(ApplyFailure::CONFLICT, message))
        }
        // Another write won a race: the next attempt sees it.
        409 => Outcome::Transient(Transient(message)),
        404 => Outcome::NotFound(message),
        // A namespace being deleted refuses new objects until it is gone;
        // then the agent creates it again.
        403 if causes.contains(&"NamespaceTerminating") || message.contains("being terminated") => {
            Outcome::Transient(Transient(message))
        }
        403 | 401 => Outcome::Failed(ApplyResult::failed(ApplyFailure::FORBIDDEN, message)),
        408 | 429 | 500..=599 => Outcome::Transient(Transient(message)),
        _ => Outcome::Failed(ApplyResult::failed(ApplyFailure::INVALID, message)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use kube::core::Status;
    use kube::core::response::StatusDetails;

    use super::*;

    fn api_error(code: u16, message: &str, cause: Option<&str>) -> kube::Error {
        let mut status = Status::failure(message, "Whatever").with_code(code);
        if let Some(reason) = cause {
            // As the API server sends it.
            let details: StatusDetails =
                serde_json::from_value(serde_json::json!({"causes": [{"reason": reason}]}))
                    .unwrap();
            status = status.with_details(details);
        }
        kube::Error::Api(status.boxed())
    }

    fn reason(outcome: Outcome) -> String {
        match outcome {
            Outcome::NotFound(_) => "not found".into(),
            Outcome::Transient(_) => "transient".into(),
            Outcome::Failed(result) => result.label().into(),
        }
    }

    #[test]
    fn cluster_answers_are_sorted() {
        let conflict =
            r#"Apply failed with 1 conflict: conflict with "hpa" using apps/v1: .spec.replicas"#;
        assert_eq!(reason(classify(api_error(409, conflict, None))), "conflict");
        assert_eq!(
            reason(classify(api_error(409, "x", Some("FieldManagerConflict")))),
            "conflict"
        );
        assert_eq!(
            reason(classify(api_error(
                409,
                "the object has been modified",
                None
            ))),
            "transient"
        );
        assert_eq!(reason(classify(api_error(422, "invalid", None))), "invalid");
        assert_eq!(reason(classify(api_error(400, "bad", None))), "invalid");
        assert_eq!(reason(classify(api_error(403, "rbac", None))), "forbidden");
        assert_eq!(
            reason(classify(api_error(
                403,
                "unable to create new content in namespace kcp-x because it is being terminated",
                Some("NamespaceTerminating")
            ))),
            "transient"
        );
        assert_eq!(reason(classify(api_error(404, "gone", None))), "not found");
        for code in [429, 500, 503, 504] {
            assert_eq!(
                reason(classify(api_error(code, "later", None))),
                "transient"
            );
        }
        let Outcome::Failed(ApplyResult::Failed { message, .. }) =
            classify(api_error(422, "spec.replicas: Invalid value", None))
        else {
            panic!("expected a failure")
        };
        assert_eq!(message, "spec.replicas: Invalid value");
    }
}
