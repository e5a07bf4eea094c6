//! The create-only review APIs, answered at once and never stored:
//! TokenReview and SelfSubjectReview (authentication.k8s.io/v1), and
//! SubjectAccessReview, LocalSubjectAccessReview, SelfSubjectAccessReview
//! and SelfSubjectRulesReview (authorization.k8s.io/v1). Each returns the
//! posted object with its `status` filled in, as kube-apiserver's REST
//! storage for them does.

use serde_json::{Value, json};

use super::Shared;
use super::authn::{self, UserInfo};
use super::rbac::{self, Attributes};
use super::registry::Target;
use super::status::{ApiError, Cause};

fn invalid(target: &Target, field: &str, message: &str) -> ApiError {
    ApiError::invalid(
        &target.def.group,
        &target.def.kind,
        "",
        vec![Cause {
            reason: "FieldValueInvalid",
            field: field.to_string(),
            message: message.to_string(),
        }],
    )
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect()
}

/// Answers one review (a decoded, type-checked body) for `user`.
pub(crate) fn answer(
    shared: &Shared,
    workspace: &str,
    target: &Target,
    user: &UserInfo,
    mut review: Value,
) -> Result<Value, ApiError> {
    let spec = review.get("spec").cloned().unwrap_or_else(|| json!({}));
    let status = match target.def.plural.as_str() {
        "tokenreviews" => token_review(shared, workspace, &spec)?,
        "selfsubjectreviews" => json!({ "userInfo": user.to_json() }),
        "selfsubjectrulesreviews" => {
            let namespace = spec
                .get("namespace")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if namespace.is_empty() {
                return Err(ApiError::bad_request("no namespace on request"));
            }
            let (resource_rules, non_resource_rules, error) =
                rbac::rules_for(&shared.store, workspace, user, namespace);
            let mut status = json!({
                "resourceRules": resource_rules,
                "nonResourceRules": non_resource_rules,
                "incomplete": false,
            });
            if let Some(error) = error {
                status["evaluationError"] = json!(error);
            }
            status
        }
        plural => {
            let attrs = Attributes::of_review(&spec)
                .map_err(|message| invalid(target, "spec", &message))?;
            let subject = match plural {
                "selfsubjectaccessreviews" => user.clone(),
                _ => {
                    let subject = UserInfo::from_review_spec(&spec);
                    if subject.name.is_empty() && subject.groups.is_empty() {
                        return Err(invalid(
                            target,
                            "spec.user",
                            "Invalid value: \"\": at least one of user or group must be specified",
                        ));
                    }
                    subject
                }
            };
            if plural == "localsubjectaccessreviews" {
                check_local(target, &attrs)?;
            }
            let decision = rbac::authorize(&shared.store, workspace, &subject, &attrs);
            let mut status = json!({ "allowed": decision.allowed });
            if !decision.reason.is_empty() {
                status["reason"] = json!(decision.reason);
            }
            status
        }
    };
    if let Some(map) = review.as_object_mut() {
        let metadata = map.entry("metadata").or_insert_with(|| json!({}));
        metadata["creationTimestamp"] = Value::Null;
        map.insert("status".into(), status);
    }
    Ok(review)
}

/// A LocalSubjectAccessReview is about resources in its own namespace only.
fn check_local(target: &Target, attrs: &Attributes) -> Result<(), ApiError> {
    match attrs {
        Attributes::NonResource { .. } => Err(invalid(
            target,
            "spec.nonResourceAttributes",
            "Invalid value: \"\": disallowed on this kind of request",
        )),
        Attributes::Resource { namespace, .. } if *namespace != target.namespace => {
            Err(ApiError::bad_request(format!(
                "spec.resourceAttributes.namespace must match namespace: {}",
                target.namespace
            )))
        }
        Attributes::Resource { .. } => Ok(()),
    }
}

fn token_review(shared: &Shared, workspace: &str, spec: &Value) -> Result<Value, ApiError> {
    let token = spec
        .get("token")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if token.is_empty() {
        return Err(ApiError::bad_request("token is required for TokenReview"));
    }
    let audiences = strings(spec.get("audiences"));
    Ok(
        match authn::review_token(shared, workspace, token, &audiences) {
            Ok((user, audiences)) => json!({
                "authenticated": true,
                "user": user.to_json(),
                "audiences": audiences,
            }),
            Err(error) => json!({ "user": {}, "error": error }),
        },
    )
}
