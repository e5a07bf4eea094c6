//! What each verb does to an object, as kube-apiserver's generic registry and
//! the resources' strategies do it: metadata kube owns (uid, timestamps,
//! resourceVersion, generation), the status subresource split, finalizers
//! and graceful deletion, optimistic concurrency, name and namespace checks,
//! CRD acceptance, a few defaults (Namespace, Secret).
//!
//! Everything here runs inside [`Store::write`](super::store::Store::write)
//! closures, so each decision sees the current object atomically.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::events;
use super::graceful::{self, Deletion};
use super::object::{self, meta_str, set_meta};
use super::path::Query;
use super::resources::{self, ResourceDef, Storage};
use super::status::{ApiError, Cause, Subject};
use super::store::{Decision, SpaceView};

/// The resource a request is about, in the version it was addressed by.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub def: Arc<ResourceDef>,
    pub version: String,
    /// The URL namespace ("" for cluster-scoped resources).
    pub namespace: String,
    /// Whether the request addresses `/status`.
    pub status: bool,
}

impl Target {
    pub fn subject(&self) -> Subject<'_> {
        Subject {
            group: &self.def.group,
            resource: &self.def.plural,
        }
    }

    pub fn api_version(&self) -> String {
        self.def.api_version(&self.version)
    }

    /// Whether this resource's version has a status subresource.
    pub fn has_status(&self) -> bool {
        self.def.has_status(&self.version)
    }

    /// The object as served in this version: `apiVersion` and `kind` of the request.
    pub fn present(&self, object: &Arc<Value>) -> Arc<Value> {
        let api_version = self.api_version();
        if self.def.storage == Some(Storage::CoreEvents) {
            return Arc::new(events::from_core(object, &api_version));
        }
        let same = object.get("apiVersion").and_then(Value::as_str) == Some(api_version.as_str())
            && object.get("kind").and_then(Value::as_str) == Some(self.def.kind.as_str());
        if same || !object.is_object() {
            return object.clone();
        }
        let mut copy = (**object).clone();
        copy["apiVersion"] = json!(api_version);
        copy["kind"] = json!(self.def.kind);
        Arc::new(copy)
    }
}

/// Parses a request body into an object, checking apiVersion and kind
/// against the URL as kube's decoder does (missing ones are filled in for
/// built-in resources).
pub(crate) fn decode_body(target: &Target, body: &[u8]) -> Result<Value, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}"))
    })?;
    into_storage(target, check_type(target, value)?)
}

/// Checks and fills apiVersion/kind of a decoded object.
pub(crate) fn check_type(target: &Target, mut value: Value) -> Result<Value, ApiError> {
    let Value::Object(map) = &mut value else {
        return Err(ApiError::bad_request(
            "couldn't get version/kind; json parse error: the body must be a JSON object",
        ));
    };
    let expected_version = target.api_version();
    match map.get("apiVersion").and_then(Value::as_str) {
        Some(v) if !v.is_empty() && v != expected_version => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({expected_version})"
            )));
        }
        Some(v) if !v.is_empty() => {}
        _ if target.def.custom => {
            return Err(ApiError::bad_request(format!(
                "Object 'apiVersion' is missing in '{}'",
                Value::Object(map.clone())
            )));
        }
        _ => {
            map.insert("apiVersion".into(), json!(expected_version));
        }
    }
    match map.get("kind").and_then(Value::as_str) {
        Some(k) if !k.is_empty() && k != target.def.kind => {
            let name = map
                .get("metadata")
                .and_then(|m| m.get("name"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            return Err(if target.def.custom {
                ApiError::invalid(
                    &target.def.group,
                    k,
                    &name,
                    vec![Cause::invalid(
                        "kind",
                        k,
                        &format!("must be {}", target.def.kind),
                    )],
                )
            } else {
                ApiError::bad_request(format!(
                    "no kind {k:?} is registered for version {expected_version:?} in scheme \"k8s.io/apimachinery/pkg/runtime/scheme.go:100\""
                ))
            });
        }
        Some(k) if !k.is_empty() => {}
        _ if target.def.custom => {
            return Err(ApiError::bad_request(format!(
                "Object 'Kind' is missing in '{}'",
                Value::Object(map.clone())
            )));
        }
        _ => {
            map.insert("kind".into(), json!(target.def.kind));
        }
    }
    if map
        .get("metadata")
        .is_some_and(|m| !m.is_object() && !m.is_null())
    {
        return Err(ApiError::bad_request(
            "couldn't get version/kind; json parse error: metadata must be an object",
        ));
    }
    Ok(value)
}

/// A type-checked object in the shape it is stored in (the same, except
/// for resources that share another's storage).
pub(crate) fn into_storage(target: &Target, value: Value) -> Result<Value, ApiError> {
    match target.def.storage {
        Some(Storage::CoreEvents) => events::to_core(value),
        None => Ok(value),
    }
}

/// The namespace in the body must be empty or equal the URL's.
pub(crate) fn check_namespace(target: &Target, object: &mut Value) -> Result<(), ApiError> {
    if !target.def.namespaced {
        set_meta(object, "namespace", None);
        return Ok(());
    }
    match meta_str(object, "namespace") {
        Some(ns) if !ns.is_empty() && ns != target.namespace => Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        )),
        _ => {
            set_meta(object, "namespace", Some(json!(target.namespace)));
            Ok(())
        }
    }
}

fn name_causes(def: &ResourceDef, name: &str) -> Vec<Cause> {
    let ok = if def.plural == "namespaces" {
        object::is_dns_label(name)
    } else {
        object::is_dns_subdomain(name)
    };
    if ok {
        return Vec::new();
    }
    let detail = if def.plural == "namespaces" {
        "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
    } else {
        "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
    };
    vec![Cause::invalid("metadata.name", name, detail)]
}

/// What kube's `ValidateLeaseSpec` refuses (coordination.k8s.io Leases):
/// a `leaseDurationSeconds` of 0 or less, a negative `leaseTransitions`,
/// and a `preferredHolder` without a `strategy`. The `strategy` itself is
/// not checked (kube allows `OldestEmulationVersion` and qualified names).
fn lease_causes(object: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let int = |field: &str| {
        object
            .pointer(&format!("/spec/{field}"))
            .and_then(Value::as_i64)
    };
    // field.Invalid prints an integer value bare: `Invalid value: 0: ...`.
    let invalid = |field: &str, value: i64, detail: &str| Cause {
        reason: "FieldValueInvalid",
        field: format!("spec.{field}"),
        message: format!("Invalid value: {value}: {detail}"),
    };
    if let Some(seconds) = int("leaseDurationSeconds").filter(|s| *s <= 0) {
        causes.push(invalid(
            "leaseDurationSeconds",
            seconds,
            "must be greater than 0",
        ));
    }
    if let Some(transitions) = int("leaseTransitions").filter(|t| *t < 0) {
        causes.push(invalid(
            "leaseTransitions",
            transitions,
            "must be greater than or equal to 0",
        ));
    }
    let text = |field: &str| {
        object
            .pointer(&format!("/spec/{field}"))
            .and_then(Value::as_str)
            .unwrap_or_default()
    };
    if !text("preferredHolder").is_empty() && text("strategy").is_empty() {
        causes.push(Cause {
            reason: "FieldValueForbidden",
            field: "spec.preferredHolder".into(),
            message: "Forbidden: may only be specified if `strategy` is defined".into(),
        });
    }
    causes
}

/// Validation beyond names: CRDs must define a resource under their name;
/// Leases as kube's `ValidateLeaseSpec` ([`lease_causes`]).
fn validate(target: &Target, name: &str, object: &Value) -> Result<(), ApiError> {
    let mut causes = name_causes(&target.def, name);
    if target.def.group == "coordination.k8s.io" && target.def.plural == "leases" {
        causes.extend(lease_causes(object));
    }
    if target.def.plural == resources::CRD_PLURAL && target.def.group == resources::CRD_GROUP {
        match ResourceDef::from_crd(object) {
            Ok(def) => {
                let expected = format!("{}.{}", def.plural, def.group);
                if name != expected {
                    causes.push(Cause::invalid(
                        "metadata.name",
                        name,
                        "must be spec.names.plural+\".\"+spec.group",
                    ));
                }
                let storage = object
                    .pointer("/spec/versions")
                    .and_then(Value::as_array)
                    .map_or(0, |vs| {
                        vs.iter().filter(|v| v["storage"] == json!(true)).count()
                    });
                if storage != 1 {
                    causes.push(Cause {
                        reason: "FieldValueInvalid",
                        field: "spec.versions".into(),
                        message: "Invalid value: \"\": must have exactly one version marked as storage version".into(),
                    });
                }
            }
            Err(reason) => causes.push(Cause {
                reason: "FieldValueInvalid",
                field: "spec".into(),
                message: reason,
            }),
        }
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(
            &target.def.group,
            &target.def.kind,
            name,
            causes,
        ))
    }
}

/// Kind-specific defaults and conversions applied on every write of the main resource.
fn apply_defaults(target: &Target, object: &mut Value) {
    match (target.def.group.as_str(), target.def.plural.as_str()) {
        ("", "secrets") => {
            if let Some(Value::Object(string_data)) = object.get_mut("stringData").map(Value::take)
            {
                let data = object
                    .as_object_mut()
                    .map(|m| m.entry("data").or_insert_with(|| json!({})));
                if let Some(Value::Object(data)) = data {
                    for (k, v) in string_data {
                        let text = v.as_str().unwrap_or_default();
                        data.insert(k, json!(object::base64_encode(text.as_bytes())));
                    }
                }
            }
            if let Some(m) = object.as_object_mut() {
                m.remove("stringData");
                if m.get("type")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    m.insert("type".into(), json!("Opaque"));
                }
            }
        }
        ("", "namespaces") => {
            let name = meta_str(object, "name").unwrap_or_default().to_string();
            let meta = object::metadata_mut(object);
            let labels = meta.entry("labels").or_insert_with(|| json!({}));
            if let Value::Object(labels) = labels {
                labels.insert("kubernetes.io/metadata.name".into(), json!(name));
            }
            if let Some(m) = object.as_object_mut() {
                let spec = m.entry("spec").or_insert_with(|| json!({}));
                if let Value::Object(spec) = spec {
                    spec.entry("finalizers")
                        .or_insert_with(|| json!(["kubernetes"]));
                }
            }
        }
        _ => {}
    }
}

/// The status a new object starts with, as each kind's strategy resets it.
fn initial_status(target: &Target, object: &mut Value, now: &str) {
    let Some(map) = object.as_object_mut() else {
        return;
    };
    if !target.has_status() {
        return;
    }
    match (target.def.group.as_str(), target.def.plural.as_str()) {
        // Nodes may be created with their status (the kubelet does so).
        ("", "nodes") => {}
        ("", "namespaces") => {
            map.insert("status".into(), json!({"phase": "Active"}));
        }
        ("", "pods") => {
            map.insert("status".into(), json!({"phase": "Pending"}));
        }
        // kube's PersistentVolume strategy (PersistentVolumeLastPhaseTransitionTime,
        // GA in 1.31): Pending since now.
        ("", "persistentvolumes") => {
            map.insert(
                "status".into(),
                json!({"phase": "Pending", "lastPhaseTransitionTime": now}),
            );
        }
        _ if target.def.custom => {
            map.remove("status");
        }
        _ => {
            map.insert("status".into(), json!({}));
        }
    }
    let is_crd =
        target.def.group == resources::CRD_GROUP && target.def.plural == resources::CRD_PLURAL;
    if is_crd && let Ok(def) = ResourceDef::from_crd(object) {
        let status = resources::accepted_crd_status(object, &def, now);
        if let Some(map) = object.as_object_mut() {
            map.insert("status".into(), status);
        }
    }
}

/// Metadata fields clients may not set.
fn strip_system_metadata(object: &mut Value) {
    let meta = object::metadata_mut(object);
    for field in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
        "resourceVersion",
        "selfLink",
    ] {
        meta.remove(field);
    }
}

/// Create: checks, system metadata, initial status. `name` is the final name
/// (generated when the body had `generateName`).
pub(crate) fn create(
    target: &Target,
    view: &SpaceView<'_>,
    name: &str,
    current: Option<&Arc<Value>>,
    mut object: Value,
) -> Result<Decision, ApiError> {
    validate(target, name, &object)?;
    if target.def.namespaced && view.namespace(&target.namespace).is_none() {
        return Err(ApiError::namespace_not_found(&target.namespace));
    }
    if current.is_some() {
        return Err(ApiError::already_exists(target.subject(), name));
    }
    let now = object::now_rfc3339();
    strip_system_metadata(&mut object);
    set_meta(&mut object, "name", Some(json!(name)));
    set_meta(
        &mut object,
        "uid",
        Some(json!(uuid::Uuid::new_v4().to_string())),
    );
    set_meta(&mut object, "creationTimestamp", Some(json!(now)));
    if target.def.tracks_generation {
        set_meta(&mut object, "generation", Some(json!(1)));
    }
    apply_defaults(target, &mut object);
    initial_status(target, &mut object, &now);
    Ok(Decision::Put(object))
}

/// The name a create request asks for: `metadata.name`, or `generateName`.
pub(crate) fn requested_name(
    target: &Target,
    object: &Value,
) -> Result<super::store::NameChoice, ApiError> {
    use super::store::NameChoice;
    match (meta_str(object, "name"), meta_str(object, "generateName")) {
        (Some(n), _) if !n.is_empty() => Ok(NameChoice::Exact(n.to_string())),
        (_, Some(prefix)) if !prefix.is_empty() => Ok(NameChoice::Generate(prefix.to_string())),
        _ => Err(ApiError::invalid(
            &target.def.group,
            &target.def.kind,
            "",
            vec![Cause::required(
                "metadata.name",
                "name or generateName is required",
            )],
        )),
    }
}

/// The name in an update body must match the URL's.
pub(crate) fn check_name(object: &Value, url_name: &str) -> Result<(), ApiError> {
    let body_name = meta_str(object, "name").unwrap_or_default();
    if body_name != url_name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({url_name})"
        )));
    }
    Ok(())
}

fn generation(object: &Value) -> i64 {
    object
        .pointer("/metadata/generation")
        .and_then(Value::as_i64)
        .unwrap_or(0)
}

/// How a write came about, for field ownership (see [`super::apply`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Writer {
    /// Server-side apply: `incoming` carries the new managedFields.
    Apply,
    /// Anything else: appliers lose the fields whose value changes.
    Other,
}

/// Update (PUT, or the result of a patch): `incoming` replaces the object,
/// except for what kube keeps: system metadata, and `status` (main resource)
/// or everything but `status` (`/status`). Unchanged objects are not
/// written; an object whose last finalizer goes while it is being deleted is removed.
pub(crate) fn update(
    target: &Target,
    name: &str,
    current: Option<&Arc<Value>>,
    mut incoming: Value,
    writer: Writer,
) -> Result<Decision, ApiError> {
    let Some(current) = current else {
        return Err(ApiError::not_found(target.subject(), name));
    };
    let current_rv = meta_str(current, "resourceVersion").unwrap_or_default();
    if let Some(rv) = meta_str(&incoming, "resourceVersion")
        && !rv.is_empty()
        && rv != current_rv
    {
        return Err(ApiError::conflict(target.subject(), name));
    }
    let mut next = if target.status {
        // A status write changes nothing but the status.
        let mut next = (**current).clone();
        if writer == Writer::Apply {
            let managed = incoming.pointer("/metadata/managedFields").cloned();
            set_meta(&mut next, "managedFields", managed);
        }
        match incoming.get_mut("status").map(Value::take) {
            Some(status) if !status.is_null() => next["status"] = status,
            _ => {
                if let Some(m) = next.as_object_mut() {
                    m.remove("status");
                }
            }
        }
        next
    } else {
        validate(target, name, &incoming)?;
        let meta = object::metadata_mut(&mut incoming);
        let cur_meta = current
            .get("metadata")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        for field in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "namespace",
            "name",
        ] {
            match cur_meta.get(field) {
                Some(v) => meta.insert(field.to_string(), v.clone()),
                None => meta.remove(field),
            };
        }
        if writer == Writer::Other || !meta.contains_key("managedFields") {
            match cur_meta.get("managedFields") {
                Some(v) => meta.insert("managedFields".to_string(), v.clone()),
                None => meta.remove("managedFields"),
            };
        }
        meta.remove("selfLink");
        if target.has_status() {
            match current.get("status") {
                Some(s) => incoming["status"] = s.clone(),
                None => {
                    if let Some(m) = incoming.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
        }
        apply_defaults(target, &mut incoming);
        let is_crd =
            target.def.group == resources::CRD_GROUP && target.def.plural == resources::CRD_PLURAL;
        if is_crd && let Ok(def) = ResourceDef::from_crd(&incoming) {
            let now = object::now_rfc3339();
            let status = resources::accepted_crd_status(&incoming, &def, &now);
            // Keep the original transition times when nothing about acceptance changed.
            let keep = current
                .get("status")
                .is_some_and(|s| s["acceptedNames"] == status["acceptedNames"]);
            incoming["status"] = if keep {
                current["status"].clone()
            } else {
                status
            };
        }
        incoming
    };
    set_meta(&mut next, "resourceVersion", Some(json!(current_rv)));
    if writer == Writer::Other {
        super::apply::release_changed(current, &mut next);
    }
    if target.def.tracks_generation && !target.status && spec_changed(target, current, &next) {
        set_meta(
            &mut next,
            "generation",
            Some(json!(generation(current) + 1)),
        );
    }
    if next == **current {
        return Ok(Decision::Keep);
    }
    // Clearing the last finalizer of an object whose deletion is due
    // removes it (kube's shouldDeleteDuringUpdate); one in a grace period
    // stays until its grace ends.
    let deletion_due = current.pointer("/metadata/deletionTimestamp").is_some()
        && current
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
            == Some(0);
    if deletion_due && object::has_finalizers(current) && !object::has_finalizers(&next) {
        return Ok(Decision::Remove(next));
    }
    Ok(Decision::Put(next))
}

/// Whether what `generation` tracks changed: everything but metadata, and
/// but status when the status has its own subresource.
fn spec_changed(target: &Target, before: &Value, after: &Value) -> bool {
    let strip = |v: &Value| -> Map<String, Value> {
        let mut m = object::spec_part(v);
        if !target.has_status()
            && let Some(s) = v.get("status")
        {
            m.insert("status".into(), s.clone());
        }
        m
    };
    strip(before) != strip(after)
}

/// Options of a delete request.
#[derive(Debug, Clone, Default)]
pub(crate) struct DeleteOptions {
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    /// `gracePeriodSeconds` (see [`super::graceful`]).
    pub grace_period_seconds: Option<i64>,
}

impl DeleteOptions {
    /// From a `DeleteOptions` body, or, when the body is empty, from the
    /// query parameters (as kube's delete handler reads them).
    pub fn from_request(body: &[u8], query: &Query) -> Result<DeleteOptions, ApiError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            let grace_period_seconds = match query.get("gracePeriodSeconds") {
                None | Some("") => None,
                Some(text) => Some(text.parse::<i64>().map_err(|_| {
                    ApiError::bad_request(format!(
                        "gracePeriodSeconds: Invalid value: {text:?}: must be an integer"
                    ))
                })?),
            };
            return Ok(DeleteOptions {
                grace_period_seconds,
                ..DeleteOptions::default()
            });
        }
        let v: Value = serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}"))
        })?;
        let pre = v.get("preconditions");
        let s = |k: &str| {
            pre.and_then(|p| p.get(k))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let grace_period_seconds = match v.get("gracePeriodSeconds") {
            None | Some(Value::Null) => None,
            Some(g) => Some(g.as_i64().ok_or_else(|| {
                ApiError::bad_request(format!(
                    "gracePeriodSeconds: Invalid value: {g}: must be an integer"
                ))
            })?),
        };
        Ok(DeleteOptions {
            uid: s("uid"),
            resource_version: s("resourceVersion"),
            grace_period_seconds,
        })
    }
}

/// Whether a DELETE that removes the object at once answers with the object
/// (kube's `ReturnDeletedObject` stores, and namespaces and CRDs, which
/// kube only marks for deletion) rather than a `Status` of Success. An
/// object that stays (finalizers, graceful deletion) is always answered.
pub(crate) fn answers_delete_with_object(def: &ResourceDef) -> bool {
    !def.custom
        && matches!(
            (def.group.as_str(), def.plural.as_str()),
            ("", "pods" | "services" | "serviceaccounts" | "namespaces")
                | (resources::CRD_GROUP, resources::CRD_PLURAL)
        )
}

/// The `Status` a DELETE answers with when the object went at once, as
/// kube's `finalizeDelete` writes it (`details.kind` is the resource).
pub(crate) fn deleted_status(def: &ResourceDef, deleted: &Value) -> Value {
    let mut details = json!({
        "name": meta_str(deleted, "name").unwrap_or_default(),
        "kind": def.plural,
        "uid": meta_str(deleted, "uid").unwrap_or_default(),
    });
    if !def.group.is_empty() {
        details["group"] = json!(def.group);
    }
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": details,
    })
}

/// Delete: a pod bound to a node gets a grace period (see
/// [`super::graceful`]); objects with finalizers only get a
/// deletionTimestamp (and are removed by the update that clears the last
/// finalizer); others go at once.
pub(crate) fn delete(
    target: &Target,
    name: &str,
    current: Option<&Arc<Value>>,
    options: &DeleteOptions,
) -> Result<Decision, ApiError> {
    let Some(current) = current else {
        return Err(ApiError::not_found(target.subject(), name));
    };
    let why = |what: &str, wanted: &str, actual: &str| {
        format!(
            "Precondition failed: {what} in precondition: {wanted}, {what} in object meta: {actual}"
        )
    };
    if let Some(uid) = &options.uid {
        let actual = meta_str(current, "uid").unwrap_or_default();
        if uid != actual {
            return Err(ApiError::conflict_because(
                target.subject(),
                name,
                &why("UID", uid, actual),
            ));
        }
    }
    if let Some(rv) = &options.resource_version {
        let actual = meta_str(current, "resourceVersion").unwrap_or_default();
        if rv != actual {
            return Err(ApiError::conflict_because(
                target.subject(),
                name,
                &why("ResourceVersion", rv, actual),
            ));
        }
    }
    match graceful::before_delete(&target.def, current, options.grace_period_seconds) {
        Deletion::Pending => return Ok(Decision::Keep),
        Deletion::Graceful(next) if graceful::goes_at_once(&next) => {
            return Ok(Decision::Remove(next));
        }
        Deletion::Graceful(next) => return Ok(Decision::Put(next)),
        Deletion::NotGraceful => {}
    }
    if !object::has_finalizers(current) {
        return Ok(Decision::Remove((**current).clone()));
    }
    if current.pointer("/metadata/deletionTimestamp").is_some() {
        return Ok(Decision::Keep);
    }
    let mut next = (**current).clone();
    set_meta(
        &mut next,
        "deletionTimestamp",
        Some(json!(object::now_rfc3339())),
    );
    set_meta(&mut next, "deletionGracePeriodSeconds", Some(json!(0)));
    let current_generation = generation(&next);
    if current_generation > 0 {
        set_meta(&mut next, "generation", Some(json!(current_generation + 1)));
    }
    Ok(Decision::Put(next))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::builtins;

    fn deployments() -> Target {
        let def = builtins()
            .into_iter()
            .find(|d| d.plural == "deployments")
            .unwrap_or_else(|| panic!("builtin"));
        Target {
            def,
            version: "v1".into(),
            namespace: "default".into(),
            status: false,
        }
    }

    fn stored(spec: Value, status: Value) -> Arc<Value> {
        Arc::new(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "uid": "u1", "resourceVersion": "5", "generation": 1, "creationTimestamp": "2024-01-01T00:00:00Z"},
            "spec": spec, "status": status,
        }))
    }

    fn put(d: Decision) -> Value {
        match d {
            Decision::Put(v) => v,
            other => panic!("expected Put, got {other:?}"),
        }
    }

    #[test]
    fn main_update_keeps_status_and_bumps_generation_on_spec_change() {
        let cur = stored(json!({"replicas": 1}), json!({"readyReplicas": 1}));
        let body = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicas": 2}, "status": {"readyReplicas": 9}});
        let next = put(
            update(&deployments(), "web", Some(&cur), body, Writer::Other)
                .unwrap_or_else(|e| panic!("{e:?}")),
        );
        assert_eq!(next["status"]["readyReplicas"], 1);
        assert_eq!(next["metadata"]["generation"], 2);
        assert_eq!(next["metadata"]["uid"], "u1");
    }

    #[test]
    fn status_update_changes_only_status_and_not_generation() {
        let cur = stored(json!({"replicas": 1}), json!({}));
        let mut t = deployments();
        t.status = true;
        let body = json!({"metadata": {"name": "web", "labels": {"x": "y"}}, "spec": {"replicas": 5}, "status": {"readyReplicas": 2}});
        let next =
            put(update(&t, "web", Some(&cur), body, Writer::Other)
                .unwrap_or_else(|e| panic!("{e:?}")));
        assert_eq!(next["spec"]["replicas"], 1);
        assert_eq!(next["status"]["readyReplicas"], 2);
        assert_eq!(next["metadata"]["generation"], 1);
        assert!(next["metadata"].get("labels").is_none());
    }

    #[test]
    fn stale_resource_version_conflicts() {
        let cur = stored(json!({}), json!({}));
        let body = json!({"metadata": {"name": "web", "resourceVersion": "4"}});
        let err = update(&deployments(), "web", Some(&cur), body, Writer::Other)
            .err()
            .unwrap_or_else(|| panic!("conflict"));
        assert_eq!((err.code, err.reason), (409, "Conflict"));
    }

    #[test]
    fn identical_update_is_a_no_op() {
        let cur = stored(json!({"replicas": 1}), json!({}));
        let body = (*cur).clone();
        assert!(matches!(
            update(&deployments(), "web", Some(&cur), body, Writer::Other),
            Ok(Decision::Keep)
        ));
    }

    #[test]
    fn finalizers_delay_deletion_until_cleared() {
        let mut obj = (*stored(json!({}), json!({}))).clone();
        obj["metadata"]["finalizers"] = json!(["x"]);
        let cur = Arc::new(obj);
        let marked = put(
            delete(&deployments(), "web", Some(&cur), &DeleteOptions::default())
                .unwrap_or_else(|e| panic!("{e:?}")),
        );
        assert!(marked["metadata"]["deletionTimestamp"].is_string());
        assert_eq!(marked["metadata"]["deletionGracePeriodSeconds"], 0);
        let mut cleared = marked.clone();
        cleared["metadata"]["finalizers"] = json!([]);
        let marked = Arc::new(marked);
        assert!(matches!(
            update(&deployments(), "web", Some(&marked), cleared, Writer::Other),
            Ok(Decision::Remove(_))
        ));
    }

    #[test]
    fn type_checks() {
        let t = deployments();
        assert!(decode_body(&t, b"{nope").is_err_and(|e| e.code == 400));
        let wrong = json!({"apiVersion": "apps/v2", "kind": "Deployment"});
        assert!(check_type(&t, wrong).is_err_and(|e| {
            e.message
                .contains("does not match the expected API version (apps/v1)")
        }));
        let filled = check_type(&t, json!({"metadata": {"name": "x"}})).unwrap_or_default();
        assert_eq!(filled["kind"], "Deployment");
    }

    #[test]
    fn secrets_convert_string_data() {
        let def = builtins()
            .into_iter()
            .find(|d| d.plural == "secrets")
            .unwrap_or_else(|| panic!("builtin"));
        let t = Target {
            def,
            version: "v1".into(),
            namespace: "default".into(),
            status: false,
        };
        let mut s = json!({"metadata": {"name": "s"}, "stringData": {"a": "foo"}});
        apply_defaults(&t, &mut s);
        assert_eq!(s["data"]["a"], "Zm9v");
        assert_eq!(s["type"], "Opaque");
        assert!(s.get("stringData").is_none());
    }
}
