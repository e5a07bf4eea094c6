//! Subresources with their own rules, as kube-apiserver's registries define
//! them:
//!
//! - `serviceaccounts/<name>/token` (POST a TokenRequest): issues a token
//!   that authenticates as the ServiceAccount (see [`super::authn`]).
//! - `pods/<name>/ephemeralcontainers` (GET, PUT, PATCH; kubectl debug):
//!   changes `spec.ephemeralContainers` only; existing ephemeral containers
//!   may be neither removed nor changed.
//! - `certificatesigningrequests/<name>/approval` (GET, PUT, PATCH; kubectl
//!   certificate approve|deny): changes `status.conditions` only, and only
//!   for users who may `approve` the request's signer.
//!
//! Each answers as `Accept` asks (the object or its PartialObjectMetadata;
//! no Table, as kube prints none for these storages).

use std::sync::Arc;

use http::{Method, header};
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::{Value, json};

use super::Shared;
use super::authn::{self, TokenSubject, UserInfo};
use super::certificates;
use super::handler::{self, Answer, Body, BodyKind};
use super::object::{self, meta_str};
use super::patch::{self, PatchType};
use super::path::Query;
use super::registry::{self, Target, Writer};
use super::status::{ApiError, Cause, Subject};
use super::store::NameChoice;

/// Shortest and longest token lifetimes kube accepts.
const MIN_TOKEN_SECONDS: i64 = 600;
const MAX_TOKEN_SECONDS: i64 = 1 << 32;

/// Tokens live an hour unless asked otherwise (kube's default).
const DEFAULT_TOKEN_SECONDS: i64 = 3600;

/// Serves `<target>/<name>/<sub>`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    ws: &str,
    target: &Target,
    name: &str,
    sub: &str,
    query: &Query,
    user: &UserInfo,
    accept: &str,
) -> Result<Response<Body>, ApiError> {
    let method = req.method().clone();
    if sub == "token" {
        if method != Method::POST {
            return Err(ApiError::method_not_allowed(method.as_str()));
        }
        let body = handler::read_body(shared, req, BodyKind::Object).await?;
        let issued = token_request(shared, ws, target, name, &body, query)?;
        return Ok(handler::respond_without_table(
            Answer::created(Arc::new(issued)),
            accept,
        ));
    }
    let key = target.def.key();
    let current = || {
        shared
            .store
            .get(ws, &key, &target.namespace, name)
            .ok_or_else(|| ApiError::not_found(target.subject(), name))
    };
    // What the request asks the object to become, as this version shows it.
    let proposed = match method {
        Method::GET => {
            let answer = Answer::ok(target.present(&current()?));
            return Ok(handler::respond_without_table(answer, accept));
        }
        Method::PUT => {
            let body = handler::read_body(shared, req, BodyKind::Object).await?;
            let object = registry::decode_body(target, &body)?;
            registry::check_name(&object, name)?;
            object
        }
        Method::PATCH => {
            let content_type = req
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let patch_type = PatchType::from_content_type(&content_type)
                .filter(|t| *t != PatchType::Apply)
                .ok_or_else(|| ApiError::unsupported_patch_type(&content_type))?;
            let body = handler::read_body(shared, req, BodyKind::Patch).await?;
            let mut object = (*target.present(&current()?)).clone();
            match patch_type {
                PatchType::Merge => patch::merge_patch(&mut object, &body),
                PatchType::Json => patch::json_patch(&mut object, &body),
                _ => patch::strategic_patch(&mut object, &body),
            }
            .map_err(handler::patch_failure)?;
            object
        }
        other => return Err(ApiError::method_not_allowed(other.as_str())),
    };
    if sub == "approval" {
        // Outside the write: authorizing reads the store.
        certificates::check_approver(shared, ws, user, &*current()?)?;
    }
    let dry = handler::dry_run(query)?;
    let written = shared.store.write(
        ws,
        &key,
        &target.namespace,
        NameChoice::Exact(name.to_string()),
        dry,
        |_, name, current| {
            let Some(cur) = current else {
                return Err(ApiError::not_found(target.subject(), name));
            };
            match sub {
                "ephemeralcontainers" => {
                    let next = with_ephemeral_containers(cur, &proposed)?;
                    registry::update(target, name, Some(cur), next, Writer::Other)
                }
                _ => {
                    let next = certificates::with_approval(cur, &proposed)?;
                    let status_target = Target {
                        status: true,
                        ..target.clone()
                    };
                    registry::update(&status_target, name, Some(cur), next, Writer::Other)
                }
            }
        },
    )?;
    let answer = Answer::ok(target.present(&written.object));
    Ok(handler::respond_without_table(answer, accept))
}

fn names_of(list: Option<&Value>) -> Vec<&str> {
    list.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("name").and_then(Value::as_str))
        .collect()
}

/// The pod with `proposed`'s ephemeral containers, if kube's
/// `ValidatePodEphemeralContainersUpdate` accepts them.
fn with_ephemeral_containers(current: &Value, proposed: &Value) -> Result<Value, ApiError> {
    let name = meta_str(current, "name").unwrap_or_default();
    if let Some(rv) = meta_str(proposed, "resourceVersion")
        && !rv.is_empty()
        && Some(rv) != meta_str(current, "resourceVersion")
    {
        return Err(ApiError::conflict(
            Subject {
                group: "",
                resource: "pods",
            },
            name,
        ));
    }
    let old: &[Value] = current
        .pointer("/spec/ephemeralContainers")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice);
    let new: Vec<Value> = proposed
        .pointer("/spec/ephemeralContainers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut causes = Vec::new();
    let mut taken: Vec<&str> = names_of(current.pointer("/spec/containers"));
    taken.extend(names_of(current.pointer("/spec/initContainers")));
    for (i, container) in new.iter().enumerate() {
        let field = |f: &str| format!("spec.ephemeralContainers[{i}].{f}");
        let cname = container
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if cname.is_empty() {
            causes.push(Cause::required(&field("name"), ""));
        } else if taken.contains(&cname) {
            causes.push(Cause {
                reason: "FieldValueDuplicate",
                field: field("name"),
                message: format!("Duplicate value: {}", Value::from(cname)),
            });
        } else {
            taken.push(cname);
        }
        if container
            .get("image")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            causes.push(Cause::required(&field("image"), ""));
        }
    }
    for existing in old {
        let ename = existing
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        match new
            .iter()
            .find(|c| c.get("name").and_then(Value::as_str) == Some(ename))
        {
            None => causes.push(Cause {
                reason: "FieldValueForbidden",
                field: "spec.ephemeralContainers".into(),
                message: format!(
                    "Forbidden: existing ephemeral containers {} may not be removed",
                    Value::from(ename)
                ),
            }),
            Some(c) if c != existing => causes.push(Cause {
                reason: "FieldValueForbidden",
                field: "spec.ephemeralContainers".into(),
                message: format!(
                    "Forbidden: existing ephemeral containers {} may not be changed",
                    Value::from(ename)
                ),
            }),
            Some(_) => {}
        }
    }
    if !causes.is_empty() {
        return Err(ApiError::invalid("", "Pod", name, causes));
    }
    let mut next = current.clone();
    next["spec"]["ephemeralContainers"] = Value::Array(new);
    if let Some(rv) = meta_str(current, "resourceVersion") {
        object::set_meta(&mut next, "resourceVersion", Some(json!(rv)));
    }
    Ok(next)
}

/// POST `serviceaccounts/<name>/token`: kube's TokenRequest REST; the
/// TokenRequest it answers with.
fn token_request(
    shared: &Shared,
    ws: &str,
    target: &Target,
    name: &str,
    body: &[u8],
    query: &Query,
) -> Result<Value, ApiError> {
    let request: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}"))
    })?;
    let account = shared
        .store
        .get(ws, &target.def.key(), &target.namespace, name)
        .ok_or_else(|| ApiError::not_found(target.subject(), name))?;
    let spec = request.get("spec").cloned().unwrap_or_else(|| json!({}));
    let seconds = spec
        .get("expirationSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(DEFAULT_TOKEN_SECONDS);
    let too = |detail: &str| {
        ApiError::invalid(
            "authentication.k8s.io",
            "TokenRequest",
            name,
            vec![Cause {
                reason: "FieldValueInvalid",
                field: "spec.expirationSeconds".into(),
                message: format!("Invalid value: {seconds}: {detail}"),
            }],
        )
    };
    if seconds < MIN_TOKEN_SECONDS {
        return Err(too("may not specify a duration less than 10 minutes"));
    }
    if seconds > MAX_TOKEN_SECONDS {
        return Err(too("may not specify a duration larger than 2^32 seconds"));
    }
    let mut audiences: Vec<String> = spec
        .get("audiences")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect();
    if audiences.is_empty() {
        audiences.push(authn::API_AUDIENCE.to_string());
    }
    if let Some(bound) = spec.get("boundObjectRef").filter(|b| !b.is_null()) {
        check_bound_object(shared, ws, &target.namespace, bound)?;
    }
    let (token, expires) = if handler::dry_run(query)? {
        (String::new(), jiff::Timestamp::now())
    } else {
        shared.tokens.issue(
            TokenSubject {
                workspace: ws,
                namespace: &target.namespace,
                name,
                uid: meta_str(&account, "uid").unwrap_or_default(),
            },
            audiences.clone(),
            seconds,
        )
    };
    let response = json!({
        "kind": "TokenRequest",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": { "name": name, "namespace": target.namespace, "creationTimestamp": null },
        "spec": {
            "audiences": audiences,
            "expirationSeconds": seconds,
            "boundObjectRef": spec.get("boundObjectRef").cloned().unwrap_or(Value::Null),
        },
        "status": {
            "token": token,
            "expirationTimestamp": expires.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        },
    });
    Ok(response)
}

/// A token may be bound to a Pod, Secret or Node that exists.
fn check_bound_object(
    shared: &Shared,
    ws: &str,
    namespace: &str,
    bound: &Value,
) -> Result<(), ApiError> {
    let text = |f: &str| bound.get(f).and_then(Value::as_str).unwrap_or_default();
    let (plural, ns) = match text("kind") {
        "Pod" => ("pods", namespace),
        "Secret" => ("secrets", namespace),
        "Node" => ("nodes", ""),
        other => {
            return Err(ApiError::invalid(
                "authentication.k8s.io",
                "TokenRequest",
                "",
                vec![Cause {
                    reason: "FieldValueNotSupported",
                    field: "spec.boundObjectRef.kind".into(),
                    message: format!(
                        "Unsupported value: {}: supported values: \"Pod\", \"Secret\", \"Node\"",
                        Value::from(other)
                    ),
                }],
            ));
        }
    };
    let subject = Subject {
        group: "",
        resource: plural,
    };
    let object = shared
        .store
        .get(ws, &(String::new(), plural.to_string()), ns, text("name"))
        .ok_or_else(|| ApiError::not_found(subject, text("name")))?;
    let uid = text("uid");
    if !uid.is_empty() && meta_str(&object, "uid") != Some(uid) {
        return Err(ApiError::conflict_because(
            subject,
            text("name"),
            &format!(
                "the UID in the bound object reference ({uid}) does not match the UID in record"
            ),
        ));
    }
    Ok(())
}
