//! certificates.k8s.io/v1 CertificateSigningRequests, as kube-apiserver's
//! CSR strategy and CertificateApproval admission treat them: on create the
//! request must carry a PEM `CERTIFICATE REQUEST`, a signer name and usages,
//! and the server records who asked (`spec.username`, `groups`, `uid`,
//! `extra`); approval (`/approval`) changes only the Approved/Denied
//! conditions, and only for users allowed to `approve` the signer
//! (`signers` in certificates.k8s.io, named after the signer or
//! `<domain>/*`). Nothing signs requests: no signer controller runs.

use serde_json::{Value, json};

use super::Shared;
use super::authn::UserInfo;
use super::handler::{self, Answer};
use super::object::{self, meta_str};
use super::path::Query;
use super::rbac::{self, Attributes};
use super::registry::{self, Target};
use super::status::{ApiError, Cause};

const GROUP: &str = "certificates.k8s.io";
const KIND: &str = "CertificateSigningRequest";

/// The shortest certificate lifetime a request may ask for (10 minutes).
const MIN_EXPIRATION_SECONDS: i64 = 600;

fn invalid_value(field: &str, value: &str, detail: &str) -> Cause {
    Cause {
        reason: "FieldValueInvalid",
        field: field.to_string(),
        message: format!("Invalid value: {value}: {detail}"),
    }
}

/// Whether `text` holds a PEM block of `kind` with a DER SEQUENCE inside.
fn is_pem_block(text: &str, kind: &str) -> bool {
    let begin = format!("-----BEGIN {kind}-----");
    let end = format!("-----END {kind}-----");
    let Some(start) = text.find(&begin) else {
        return false;
    };
    let rest = &text[start + begin.len()..];
    let Some(stop) = rest.find(&end) else {
        return false;
    };
    let body: String = rest[..stop].split_whitespace().collect();
    object::base64_decode(&body).is_some_and(|der| der.first() == Some(&0x30))
}

/// What kube's `ValidateCertificateSigningRequestCreate` checks.
fn validate_spec(spec: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let request = spec
        .get("request")
        .and_then(Value::as_str)
        .and_then(object::base64_decode)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned());
    match request {
        None => causes.push(Cause::required("spec.request", "")),
        Some(pem) if !is_pem_block(&pem, "CERTIFICATE REQUEST") => causes.push(invalid_value(
            "spec.request",
            "[]byte{...}",
            "PEM block type must be CERTIFICATE REQUEST",
        )),
        Some(_) => {}
    }
    let signer = spec
        .get("signerName")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if signer.is_empty() {
        causes.push(Cause::required("spec.signerName", ""));
    } else if !signer
        .split_once('/')
        .is_some_and(|(domain, path)| object::is_dns_subdomain(domain) && !path.is_empty())
    {
        causes.push(Cause::invalid(
            "spec.signerName",
            signer,
            "must be a fully qualified domain and path of the form 'example.com/signer-name'",
        ));
    }
    if spec
        .get("usages")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty)
    {
        causes.push(Cause::required("spec.usages", ""));
    }
    if let Some(seconds) = spec.get("expirationSeconds").and_then(Value::as_i64)
        && seconds < MIN_EXPIRATION_SECONDS
    {
        causes.push(invalid_value(
            "spec.expirationSeconds",
            &seconds.to_string(),
            "may not specify a duration less than 600 seconds (10 minutes)",
        ));
    }
    causes
}

/// POST of a CertificateSigningRequest.
pub(crate) fn create(
    shared: &Shared,
    ws: &str,
    target: &Target,
    body: &[u8],
    query: &Query,
    user: &UserInfo,
) -> Result<Answer, ApiError> {
    let dry = handler::dry_run(query)?;
    let mut csr = registry::decode_body(target, body)?;
    registry::check_namespace(target, &mut csr)?;
    let name = registry::requested_name(target, &csr)?;
    let spec = csr.get("spec").cloned().unwrap_or_else(|| json!({}));
    let causes = validate_spec(&spec);
    if !causes.is_empty() {
        let shown = meta_str(&csr, "name").unwrap_or_default().to_string();
        return Err(ApiError::invalid(GROUP, KIND, &shown, causes));
    }
    // The requester is recorded by the server, whatever the body says.
    let mut spec = spec;
    spec["username"] = json!(user.name);
    spec["groups"] = json!(user.groups);
    match user.uid.as_str() {
        "" => remove(&mut spec, "uid"),
        uid => spec["uid"] = json!(uid),
    }
    if user.extra.is_empty() {
        remove(&mut spec, "extra");
    } else {
        spec["extra"] = json!(user.extra);
    }
    csr["spec"] = spec;
    let written = shared.store.write(
        ws,
        &target.def.key(),
        "",
        name,
        dry,
        |view, name, current| registry::create(target, view, name, current, csr),
    )?;
    Ok(Answer::created(written.object))
}

fn remove(object: &mut Value, field: &str) {
    if let Some(map) = object.as_object_mut() {
        map.remove(field);
    }
}

/// The CertificateApproval admission check: may `user` approve (or deny)
/// requests for this CSR's signer?
pub(crate) fn check_approver(
    shared: &Shared,
    ws: &str,
    user: &UserInfo,
    csr: &Value,
) -> Result<(), ApiError> {
    let signer = csr
        .pointer("/spec/signerName")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let mut names = vec![signer.to_string()];
    if let Some((domain, _)) = signer.split_once('/') {
        names.push(format!("{domain}/*"));
    }
    let allowed = names.into_iter().any(|name| {
        let attrs = Attributes::Resource {
            verb: "approve".into(),
            group: GROUP.into(),
            version: "*".into(),
            namespace: String::new(),
            resource: "signers".into(),
            subresource: String::new(),
            name,
        };
        rbac::authorize(&shared.store, ws, user, &attrs).allowed
    });
    if allowed {
        return Ok(());
    }
    Err(ApiError::forbidden(
        GROUP,
        "certificatesigningrequests",
        meta_str(csr, "name").unwrap_or_default(),
        &format!("user not permitted to approve requests with signerName {signer:?}"),
    ))
}

fn conditions(csr: &Value) -> Vec<Value> {
    csr.pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn condition_type(c: &Value) -> &str {
    c.get("type").and_then(Value::as_str).unwrap_or_default()
}

/// The CSR with the conditions of `proposed` (defaulted as kube does), if
/// the approval strategy and validation accept them.
pub(crate) fn with_approval(current: &Value, proposed: &Value) -> Result<Value, ApiError> {
    let old = conditions(current);
    let now = object::now_rfc3339();
    let mut causes = Vec::new();
    let mut new = conditions(proposed);
    for (i, c) in new.iter_mut().enumerate() {
        let field = |f: &str| format!("status.conditions[{i}].{f}");
        let kind = condition_type(c).to_string();
        if c.get("status")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            c["status"] = json!("True");
        }
        if c.get("lastUpdateTime").is_none_or(Value::is_null) {
            c["lastUpdateTime"] = json!(now);
        }
        if c.get("lastTransitionTime").is_none_or(Value::is_null) {
            let before = old
                .iter()
                .find(|o| condition_type(o) == kind)
                .and_then(|o| o.get("lastTransitionTime").cloned());
            c["lastTransitionTime"] = before.unwrap_or_else(|| json!(now));
        }
        let status = c.get("status").and_then(Value::as_str).unwrap_or_default();
        if kind.is_empty() {
            causes.push(Cause::required(&field("type"), ""));
        }
        if matches!(kind.as_str(), "Approved" | "Denied") && status != "True" {
            causes.push(Cause {
                reason: "FieldValueNotSupported",
                field: field("status"),
                message: format!(
                    "Unsupported value: {}: supported values: \"True\"",
                    Value::from(status)
                ),
            });
        }
        if kind == "Failed" && !old.iter().any(|o| condition_type(o) == "Failed") {
            causes.push(Cause {
                reason: "FieldValueForbidden",
                field: "status.conditions".into(),
                message: "Forbidden: updates may not add a condition of type \"Failed\"".into(),
            });
        }
    }
    for (i, c) in new.iter().enumerate() {
        if new[..i]
            .iter()
            .any(|o| condition_type(o) == condition_type(c))
        {
            causes.push(Cause {
                reason: "FieldValueDuplicate",
                field: format!("status.conditions[{i}].type"),
                message: format!("Duplicate value: {}", Value::from(condition_type(c))),
            });
        }
    }
    let has = |kind: &str| new.iter().any(|c| condition_type(c) == kind);
    if has("Approved") && has("Denied") {
        causes.push(Cause {
            reason: "FieldValueInvalid",
            field: "status.conditions".into(),
            message:
                "Invalid value: \"Denied\": Approved and Denied conditions are mutually exclusive"
                    .into(),
        });
    }
    for kind in ["Approved", "Denied"] {
        if old.iter().any(|o| condition_type(o) == kind) && !has(kind) {
            causes.push(Cause {
                reason: "FieldValueForbidden",
                field: "status.conditions".into(),
                message: format!("Forbidden: updates may not remove a condition of type {kind:?}"),
            });
        }
    }
    if !causes.is_empty() {
        let name = meta_str(current, "name").unwrap_or_default();
        return Err(ApiError::invalid(GROUP, KIND, name, causes));
    }
    let mut next = current.clone();
    if !next.get("status").is_some_and(Value::is_object) {
        next["status"] = json!({});
    }
    next["status"]["conditions"] = Value::Array(new);
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CSR_PEM: &str = "-----BEGIN CERTIFICATE REQUEST-----\nMIIBADCBpwIBADAP\n-----END CERTIFICATE REQUEST-----\n";

    fn spec() -> Value {
        json!({
            "request": object::base64_encode(CSR_PEM.as_bytes()),
            "signerName": "example.com/test",
            "usages": ["client auth"],
        })
    }

    #[test]
    fn create_validation() {
        assert!(validate_spec(&spec()).is_empty());
        let mut bad = spec();
        bad["request"] = json!(object::base64_encode(b"not pem"));
        bad["signerName"] = json!("nodomain");
        bad["usages"] = json!([]);
        let fields: Vec<String> = validate_spec(&bad).into_iter().map(|c| c.field).collect();
        assert_eq!(fields, ["spec.request", "spec.signerName", "spec.usages"]);
    }

    #[test]
    fn approval_changes_conditions_only_and_keeps_decisions() {
        let current = json!({"metadata": {"name": "c"}, "spec": spec(), "status": {}});
        let mut proposed = current.clone();
        proposed["spec"]["signerName"] = json!("other.com/x");
        proposed["status"]["conditions"] = json!([{"type": "Approved", "reason": "Test"}]);
        let approved = with_approval(&current, &proposed).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(approved["spec"]["signerName"], "example.com/test");
        assert_eq!(approved["status"]["conditions"][0]["status"], "True");
        assert!(approved["status"]["conditions"][0]["lastUpdateTime"].is_string());

        let mut both = approved.clone();
        both["status"]["conditions"] = json!([{"type": "Approved"}, {"type": "Denied"}]);
        assert!(with_approval(&approved, &both).is_err_and(|e| e.code == 422));
        let mut removed = approved.clone();
        removed["status"]["conditions"] = json!([]);
        assert!(
            with_approval(&approved, &removed).is_err_and(|e| e.message.contains("may not remove"))
        );
    }
}
