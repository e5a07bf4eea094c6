//! Errors as kube-apiserver reports them: `Status` objects with the reason,
//! code, message and details clients match on (e.g. `kube::Error::Api`).

use serde_json::{Value, json};

/// A failed request, rendered as a `metav1.Status` with `status: Failure`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
    /// Extra response headers, e.g. `Retry-After` on 429.
    pub retry_after: Option<u32>,
}

/// The resource an error is about: "deployments" in group "apps".
#[derive(Debug, Clone, Copy)]
pub(crate) struct Subject<'a> {
    pub group: &'a str,
    pub resource: &'a str,
}

impl Subject<'_> {
    /// `deployments.apps`, or `pods` for the core group.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.resource.to_string()
        } else {
            format!("{}.{}", self.resource, self.group)
        }
    }

    fn details(&self, name: &str) -> Value {
        let mut d = json!({ "name": name, "kind": self.resource });
        if !self.group.is_empty() {
            d["group"] = json!(self.group);
        }
        d
    }
}

/// One invalid field, as in `details.causes` of a 422.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Cause {
    pub reason: &'static str,
    pub field: String,
    pub message: String,
}

impl Cause {
    /// `Required value`, with `: <detail>` when there is one.
    pub fn required(field: &str, detail: &str) -> Cause {
        Cause {
            reason: "FieldValueRequired",
            field: field.to_string(),
            message: if detail.is_empty() {
                "Required value".to_string()
            } else {
                format!("Required value: {detail}")
            },
        }
    }

    pub fn invalid(field: &str, value: &str, detail: &str) -> Cause {
        Cause {
            reason: "FieldValueInvalid",
            field: field.to_string(),
            message: format!("Invalid value: {}: {detail}", Value::from(value)),
        }
    }
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
            retry_after: None,
        }
    }

    fn with_details(mut self, details: Value) -> ApiError {
        self.details = Some(details);
        self
    }

    pub fn not_found(subject: Subject<'_>, name: &str) -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            format!("{} {:?} not found", subject.qualified(), name),
        )
        .with_details(subject.details(name))
    }

    /// The 404 of an unknown path or resource.
    pub fn no_route() -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
        .with_details(json!({}))
    }

    /// What the NamespaceLifecycle admission plugin answers for a missing namespace.
    pub fn namespace_not_found(namespace: &str) -> ApiError {
        ApiError::not_found(
            Subject {
                group: "",
                resource: "namespaces",
            },
            namespace,
        )
    }

    pub fn already_exists(subject: Subject<'_>, name: &str) -> ApiError {
        ApiError::new(
            409,
            "AlreadyExists",
            format!("{} {:?} already exists", subject.qualified(), name),
        )
        .with_details(subject.details(name))
    }

    /// The optimistic-concurrency 409.
    pub fn conflict(subject: Subject<'_>, name: &str) -> ApiError {
        ApiError::conflict_because(
            subject,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    pub fn conflict_because(subject: Subject<'_>, name: &str, why: &str) -> ApiError {
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} {:?}: {why}",
                subject.qualified(),
                name
            ),
        )
        .with_details(subject.details(name))
    }

    /// 422 with field causes; `kind` is the object's kind (e.g. `Deployment`).
    pub fn invalid(group: &str, kind: &str, name: &str, causes: Vec<Cause>) -> ApiError {
        let qualified = if group.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}.{group}")
        };
        let summary = match causes.as_slice() {
            [one] => format!("{}: {}", one.field, one.message),
            many => {
                let parts: Vec<String> = many
                    .iter()
                    .map(|c| format!("{}: {}", c.field, c.message))
                    .collect();
                format!("[{}]", parts.join(", "))
            }
        };
        let causes_json: Vec<Value> = causes
            .iter()
            .map(|c| json!({ "reason": c.reason, "message": c.message, "field": c.field }))
            .collect();
        let mut details = json!({ "name": name, "kind": kind, "causes": causes_json });
        if !group.is_empty() {
            details["group"] = json!(group);
        }
        ApiError::new(
            422,
            "Invalid",
            format!("{qualified} {name:?} is invalid: {summary}"),
        )
        .with_details(details)
    }

    /// A server-side apply conflict between field managers.
    pub fn apply_conflict(message: String, causes: Value) -> ApiError {
        ApiError::new(409, "Conflict", message).with_details(json!({ "causes": causes }))
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }

    pub fn method_not_allowed(method: &str) -> ApiError {
        ApiError::new(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource ({method})"),
        )
        .with_details(json!({}))
    }

    /// kcp's answer to anything but list and watch under `/clusters/*`
    /// (its `WithWildcardListWatchGuard`: `NewMethodNotSupported` plus a note).
    pub fn not_in_all_workspaces(subject: Subject<'_>, verb: &str) -> ApiError {
        let mut details = json!({ "kind": subject.resource });
        if !subject.group.is_empty() {
            details["group"] = json!(subject.group);
        }
        ApiError::new(
            405,
            "MethodNotAllowed",
            format!(
                "{verb} is not supported on resources of kind {:?} in the `*` logical cluster",
                subject.qualified()
            ),
        )
        .with_details(details)
    }

    pub fn unsupported_media_type(content_type: &str) -> ApiError {
        ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf (got {content_type:?})"
            ),
        )
    }

    pub fn unsupported_patch_type(content_type: &str) -> ApiError {
        ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (got {content_type:?})"
            ),
        )
    }

    pub fn too_large(limit: usize) -> ApiError {
        ApiError::new(
            413,
            "RequestEntityTooLarge",
            format!("the server has received a request that is too large (limit is {limit} bytes)"),
        )
    }

    /// kube's `NewForbidden`: `detail` says who cannot do what. An empty
    /// `resource` is a non-resource request.
    pub fn forbidden(group: &str, resource: &str, name: &str, detail: &str) -> ApiError {
        let subject = Subject { group, resource };
        let message = match (resource.is_empty(), name.is_empty()) {
            (true, _) => format!("forbidden: {detail}"),
            (false, true) => format!("{} is forbidden: {detail}", subject.qualified()),
            (false, false) => format!("{} {name:?} is forbidden: {detail}", subject.qualified()),
        };
        let mut details = json!({});
        if !name.is_empty() {
            details["name"] = json!(name);
        }
        if !group.is_empty() {
            details["group"] = json!(group);
        }
        if !resource.is_empty() {
            details["kind"] = json!(resource);
        }
        ApiError::new(403, "Forbidden", message).with_details(details)
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(401, "Unauthorized", "Unauthorized")
    }

    pub fn expired(message: impl Into<String>) -> ApiError {
        ApiError::new(410, "Expired", message)
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(
            500,
            "InternalError",
            format!("Internal error occurred: {}", message.into()),
        )
    }

    /// An injected fault: 429 (with `Retry-After: 1`), 500, 503 or any other code.
    pub fn injected(code: u16) -> ApiError {
        match code {
            429 => {
                let mut e = ApiError::new(
                    429,
                    "TooManyRequests",
                    "Too many requests, please try again later.",
                )
                .with_details(json!({ "retryAfterSeconds": 1 }));
                e.retry_after = Some(1);
                e
            }
            500 => ApiError::new(
                500,
                "InternalError",
                "Internal error occurred: injected fault",
            ),
            503 => ApiError::new(
                503,
                "ServiceUnavailable",
                "the server is currently unable to handle the request (injected fault)",
            ),
            other => ApiError::new(
                other,
                "InternalError",
                format!("injected fault with status {other}"),
            ),
        }
    }

    /// The `Status` object.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflict_message_matches_kube() {
        let e = ApiError::conflict(
            Subject {
                group: "apps",
                resource: "deployments",
            },
            "x",
        );
        assert_eq!(e.code, 409);
        assert_eq!(
            e.message,
            "Operation cannot be fulfilled on deployments.apps \"x\": the object has been modified; please apply your changes to the latest version and try again"
        );
        let s = e.to_status();
        assert_eq!(s["details"]["kind"], "deployments");
        assert_eq!(s["details"]["group"], "apps");
    }

    #[test]
    fn core_resources_are_not_qualified() {
        let e = ApiError::already_exists(
            Subject {
                group: "",
                resource: "pods",
            },
            "p",
        );
        assert_eq!(e.message, "pods \"p\" already exists");
        assert!(e.to_status()["details"].get("group").is_none());
    }

    #[test]
    fn invalid_lists_causes() {
        let e = ApiError::invalid(
            "apps",
            "Deployment",
            "",
            vec![Cause::required(
                "metadata.name",
                "name or generateName is required",
            )],
        );
        assert_eq!(
            e.message,
            "Deployment.apps \"\" is invalid: metadata.name: Required value: name or generateName is required"
        );
        assert_eq!(
            e.to_status()["details"]["causes"][0]["field"],
            "metadata.name"
        );
    }
}
