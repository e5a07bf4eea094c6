//! Who a request comes from, as kube-apiserver's authenticators and its
//! impersonation filter decide it.
//!
//! Three kinds of bearer tokens are accepted: the server's admin token (user
//! [`ADMIN_USER`] in `system:masters`, like a cluster's admin kubeconfig),
//! static tokens of fixed users configured at start (as kube-apiserver's
//! `--token-auth-file`; in every workspace, plus `system:authenticated`),
//! and ServiceAccount tokens issued through TokenRequest
//! (`serviceaccounts/<name>/token`), which authenticate as
//! `system:serviceaccount:<ns>:<name>` while that ServiceAccount exists, in
//! the workspace they were issued in, until they expire, and only for the
//! API server's audience. Tokens are JWT-shaped with kube's claims, but
//! their signature is random: they are checked by looking them up, so only
//! this server can verify them (TokenReview), as with any bound token.
//!
//! A request with `Impersonate-User` (and `-Group`, `-Uid`, `-Extra-*`)
//! headers acts as that user when its sender may `impersonate` it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};

use http::HeaderMap;
use serde_json::{Value, json};

use super::Shared;
use super::object;
use super::path::WILDCARD;
use super::rbac::{self, Attributes, MASTERS};
use super::status::ApiError;

/// The admin token's user.
pub(crate) const ADMIN_USER: &str = "uplink-admin";

/// The audience of tokens meant for this API server (kube-apiserver's
/// default `--api-audiences`, its service account issuer).
pub(crate) const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

pub(crate) const AUTHENTICATED: &str = "system:authenticated";
const UNAUTHENTICATED: &str = "system:unauthenticated";
const ANONYMOUS: &str = "system:anonymous";
const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// An authenticated identity (kube's `user.Info`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct UserInfo {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    /// The admin token's identity.
    pub fn admin() -> UserInfo {
        UserInfo {
            name: ADMIN_USER.to_string(),
            groups: vec![MASTERS.to_string(), AUTHENTICATED.to_string()],
            ..UserInfo::default()
        }
    }

    /// As `userInfo` / `user` appear in reviews.
    pub fn to_json(&self) -> Value {
        let mut v = json!({ "username": self.name, "groups": self.groups });
        if !self.uid.is_empty() {
            v["uid"] = json!(self.uid);
        }
        if !self.extra.is_empty() {
            v["extra"] = json!(self.extra);
        }
        v
    }

    /// The user a SubjectAccessReview's spec names.
    pub fn from_review_spec(spec: &Value) -> UserInfo {
        let strings = |v: Option<&Value>| -> Vec<String> {
            v.and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        };
        let extra = spec
            .get("extra")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), strings(Some(v))))
            .collect();
        UserInfo {
            name: spec
                .get("user")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            uid: spec
                .get("uid")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            groups: strings(spec.get("groups")),
            extra,
        }
    }
}

/// The namespace and name of a `system:serviceaccount:<ns>:<name>` user.
fn service_account_of(username: &str) -> Option<(&str, &str)> {
    let rest = username.strip_prefix(SERVICE_ACCOUNT_PREFIX)?;
    let (ns, name) = rest.split_once(':')?;
    (!ns.is_empty() && !name.is_empty() && !name.contains(':')).then_some((ns, name))
}

/// The groups every ServiceAccount is in.
fn service_account_groups(namespace: &str) -> Vec<String> {
    vec![
        "system:serviceaccounts".to_string(),
        format!("system:serviceaccounts:{namespace}"),
    ]
}

/// One token issued through TokenRequest.
#[derive(Debug, Clone)]
struct Issued {
    workspace: String,
    namespace: String,
    name: String,
    service_account_uid: String,
    audiences: Vec<String>,
    expires: jiff::Timestamp,
    id: String,
}

/// The tokens this server has issued, by token text.
#[derive(Debug, Default)]
pub(crate) struct Tokens {
    issued: Mutex<HashMap<String, Issued>>,
}

/// A ServiceAccount a token is requested for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TokenSubject<'a> {
    pub workspace: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
    pub uid: &'a str,
}

/// JWT's base64url without padding.
fn base64url(bytes: &[u8]) -> String {
    object::base64_encode(bytes)
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_")
}

impl Tokens {
    /// Issues a token for a ServiceAccount; returns it and when it expires.
    pub fn issue(
        &self,
        subject: TokenSubject<'_>,
        audiences: Vec<String>,
        lifetime_seconds: i64,
    ) -> (String, jiff::Timestamp) {
        let now = jiff::Timestamp::now();
        let expires = now
            .checked_add(jiff::SignedDuration::from_secs(lifetime_seconds))
            .unwrap_or(jiff::Timestamp::MAX);
        let id = uuid::Uuid::new_v4().to_string();
        let header = json!({ "alg": "RS256", "kid": "uplink-test-bed" });
        let claims = json!({
            "aud": audiences,
            "exp": expires.as_second(),
            "iat": now.as_second(),
            "iss": API_AUDIENCE,
            "jti": id,
            "kubernetes.io": {
                "namespace": subject.namespace,
                "serviceaccount": { "name": subject.name, "uid": subject.uid },
            },
            "nbf": now.as_second(),
            "sub": format!("{SERVICE_ACCOUNT_PREFIX}{}:{}", subject.namespace, subject.name),
        });
        let signature: [u8; 32] = rand::random();
        let token = format!(
            "{}.{}.{}",
            base64url(header.to_string().as_bytes()),
            base64url(claims.to_string().as_bytes()),
            base64url(&signature)
        );
        let mut issued = self.issued.lock().unwrap_or_else(PoisonError::into_inner);
        issued.retain(|_, t| t.expires > now);
        issued.insert(
            token.clone(),
            Issued {
                workspace: subject.workspace.to_string(),
                namespace: subject.namespace.to_string(),
                name: subject.name.to_string(),
                service_account_uid: subject.uid.to_string(),
                audiences,
                expires,
                id,
            },
        );
        (token, expires)
    }

    fn lookup(&self, token: &str) -> Option<Issued> {
        self.issued
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(token)
            .cloned()
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The audiences a token is good for among `wanted` (the API server's when
/// empty), or why none.
fn audiences_for(token_audiences: &[String], wanted: &[String]) -> Result<Vec<String>, String> {
    let wanted: Vec<String> = if wanted.is_empty() {
        vec![API_AUDIENCE.to_string()]
    } else {
        wanted.to_vec()
    };
    let common: Vec<String> = wanted
        .iter()
        .filter(|a| token_audiences.contains(a))
        .cloned()
        .collect();
    if common.is_empty() {
        return Err(format!(
            "token audiences {token_audiences:?} is invalid for the target audiences {wanted:?}"
        ));
    }
    Ok(common)
}

/// What a bearer token proves in `workspace`, for the `audiences` asked
/// about (the API server's when empty): the user and the audiences it is
/// good for, or why it proves nothing. TokenReview answers with this.
pub(crate) fn review_token(
    shared: &Shared,
    workspace: &str,
    token: &str,
    audiences: &[String],
) -> Result<(UserInfo, Vec<String>), String> {
    if constant_time_eq(token.as_bytes(), shared.token.as_bytes()) {
        // A static token is good for the API server's own audience only.
        let audiences = audiences_for(&[API_AUDIENCE.to_string()], audiences)?;
        return Ok((UserInfo::admin(), audiences));
    }
    if let Some(fixed) = shared
        .config
        .static_tokens
        .iter()
        .find(|t| constant_time_eq(token.as_bytes(), t.token.as_bytes()))
    {
        let audiences = audiences_for(&[API_AUDIENCE.to_string()], audiences)?;
        let mut groups = fixed.groups.clone();
        if !groups.iter().any(|g| g == AUTHENTICATED) {
            groups.push(AUTHENTICATED.to_string());
        }
        let user = UserInfo {
            name: fixed.user.clone(),
            uid: fixed.uid.clone(),
            groups,
            extra: BTreeMap::new(),
        };
        return Ok((user, audiences));
    }
    let Some(issued) = shared.tokens.lookup(token) else {
        return Err("invalid bearer token".into());
    };
    if issued.workspace != workspace {
        return Err("invalid bearer token".into());
    }
    if issued.expires <= jiff::Timestamp::now() {
        return Err("service account token has expired".into());
    }
    let audiences = audiences_for(&issued.audiences, audiences)?;
    let account = shared.store.get(
        workspace,
        &(String::new(), "serviceaccounts".to_string()),
        &issued.namespace,
        &issued.name,
    );
    let Some(account) = account else {
        return Err(format!(
            "service account {}/{} has been deleted",
            issued.namespace, issued.name
        ));
    };
    let uid = object::meta_str(&account, "uid").unwrap_or_default();
    if uid != issued.service_account_uid {
        return Err(format!(
            "service account UID ({uid}) does not match claim ({})",
            issued.service_account_uid
        ));
    }
    let mut groups = service_account_groups(&issued.namespace);
    groups.push(AUTHENTICATED.to_string());
    let mut extra = BTreeMap::new();
    extra.insert(
        "authentication.kubernetes.io/credential-id".to_string(),
        vec![format!("JTI={}", issued.id)],
    );
    let user = UserInfo {
        name: format!(
            "{SERVICE_ACCOUNT_PREFIX}{}:{}",
            issued.namespace, issued.name
        ),
        uid: issued.service_account_uid,
        groups,
        extra,
    };
    Ok((user, audiences))
}

/// The user a request authenticates as in `workspace` (or
/// [`WILDCARD`]); `None` for an anonymous request where `anonymous_ok`
/// (health and version), 401 for other requests without valid credentials.
pub(crate) fn authenticate(
    shared: &Shared,
    workspace: &str,
    headers: &HeaderMap,
    anonymous_ok: bool,
) -> Result<Option<UserInfo>, ApiError> {
    let Some(value) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return if anonymous_ok {
            Ok(None)
        } else {
            Err(ApiError::unauthorized())
        };
    };
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .ok_or_else(ApiError::unauthorized)?;
    // Under `/clusters/*` a ServiceAccount token counts in the workspace it
    // was issued in, as kcp authenticates it (authorization then refuses it).
    let workspace = match shared.tokens.lookup(token) {
        Some(issued) if workspace == WILDCARD => issued.workspace,
        _ => workspace.to_string(),
    };
    match review_token(shared, &workspace, token, &[]) {
        Ok((user, _)) => Ok(Some(user)),
        Err(reason) => {
            tracing::debug!(%reason, "bearer token rejected");
            Err(ApiError::unauthorized())
        }
    }
}

const IMPERSONATE_USER: &str = "impersonate-user";
const IMPERSONATE_GROUP: &str = "impersonate-group";
const IMPERSONATE_UID: &str = "impersonate-uid";
const IMPERSONATE_EXTRA: &str = "impersonate-extra-";

/// The user a request acts as: `requester`, or whom its `Impersonate-*`
/// headers name when `requester` may impersonate each of them (403 if not).
pub(crate) fn impersonate(
    shared: &Shared,
    workspace: &str,
    requester: UserInfo,
    headers: &HeaderMap,
) -> Result<UserInfo, ApiError> {
    let values = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_string)
            .collect()
    };
    let user = values(IMPERSONATE_USER).into_iter().next();
    let groups = values(IMPERSONATE_GROUP);
    let uid = values(IMPERSONATE_UID).into_iter().next();
    let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for name in headers.keys() {
        if let Some(key) = name.as_str().strip_prefix(IMPERSONATE_EXTRA) {
            let key = super::path::percent_decode(key);
            extra.entry(key).or_default().extend(values(name.as_str()));
        }
    }
    let Some(username) = user else {
        if groups.is_empty() && uid.is_none() && extra.is_empty() {
            return Ok(requester);
        }
        return Err(ApiError::bad_request(
            "requested impersonation of groups, a uid or extra fields without impersonating a user",
        ));
    };
    let mut checks = Vec::new();
    let account = service_account_of(&username);
    checks.push(match account {
        Some((ns, name)) => ("", "serviceaccounts", "", ns.to_string(), name.to_string()),
        None => ("", "users", "", String::new(), username.clone()),
    });
    for group in &groups {
        checks.push(("", "groups", "", String::new(), group.clone()));
    }
    if let Some(uid) = &uid {
        checks.push((
            "authentication.k8s.io",
            "uids",
            "",
            String::new(),
            uid.clone(),
        ));
    }
    for (key, values) in &extra {
        for value in values {
            checks.push((
                "authentication.k8s.io",
                "userextras",
                key.as_str(),
                String::new(),
                value.clone(),
            ));
        }
    }
    for (group, resource, subresource, namespace, name) in checks {
        let attrs = Attributes::Resource {
            verb: "impersonate".into(),
            group: group.into(),
            version: String::new(),
            namespace,
            resource: resource.into(),
            subresource: subresource.into(),
            name,
        };
        let decision = rbac::authorize(&shared.store, workspace, &requester, &attrs);
        if !decision.allowed {
            return Err(rbac::forbidden(&requester, &attrs, &decision.reason));
        }
    }
    let mut impersonated = groups;
    if impersonated.is_empty()
        && let Some((ns, _)) = account
    {
        impersonated = service_account_groups(ns);
    }
    let implicit = if username == ANONYMOUS {
        UNAUTHENTICATED
    } else {
        AUTHENTICATED
    };
    if !impersonated.iter().any(|g| g == implicit) {
        impersonated.push(implicit.to_string());
    }
    Ok(UserInfo {
        name: username,
        uid: uid.unwrap_or_default(),
        groups: impersonated,
        extra,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_account_usernames() {
        assert_eq!(
            service_account_of("system:serviceaccount:ns:sa"),
            Some(("ns", "sa"))
        );
        assert_eq!(service_account_of("system:serviceaccount:ns"), None);
        assert_eq!(service_account_of("alice"), None);
    }

    #[test]
    fn audiences_must_overlap() {
        let token = vec!["a".to_string(), API_AUDIENCE.to_string()];
        assert_eq!(
            audiences_for(&token, &[]),
            Ok(vec![API_AUDIENCE.to_string()])
        );
        assert_eq!(
            audiences_for(&token, &["a".to_string(), "b".to_string()]),
            Ok(vec!["a".to_string()])
        );
        assert!(audiences_for(&["a".to_string()], &[]).is_err());
    }

    #[test]
    fn tokens_are_jwt_shaped_with_kube_claims() {
        let tokens = Tokens::default();
        let (token, _) = tokens.issue(
            TokenSubject {
                workspace: "",
                namespace: "ns",
                name: "sa",
                uid: "u1",
            },
            vec![API_AUDIENCE.to_string()],
            3600,
        );
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let claims: Value = object::base64_decode(parts[1])
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        assert_eq!(claims["sub"], "system:serviceaccount:ns:sa");
        assert_eq!(claims["kubernetes.io"]["serviceaccount"]["uid"], "u1");
        assert!(tokens.lookup(&token).is_some());
        assert!(tokens.lookup("nope").is_none());
    }
}
