//! Who may use the hub's HTTP endpoint, decided the way Kubernetes
//! components decide it (controller-runtime's secure metrics serving,
//! kube-rbac-proxy):
//!
//! - **Authentication**: a bearer token (`Authorization: Bearer <token>`)
//!   checked with a `TokenReview`, or, with `--http-client-ca`, a client
//!   certificate signed by that CA (the subject's CN is the user, each O a
//!   group), as kube-apiserver's x509 authenticator reads it.
//! - **Authorization**: each request with a `SubjectAccessReview` for a
//!   non-resource URL: `path` is the request path under
//!   [`DEFAULT_PATH_PREFIX`] (`--auth-path-prefix`), `verb` `get` (GET and
//!   HEAD). The prefix is needed because every Kubernetes cluster grants
//!   `get` on `/api/*` to all authenticated users (the `system:discovery`
//!   ClusterRole): authorizing the bare path `/api/v1/objects` would let
//!   any ServiceAccount read the hub API. An operator grants access with a
//!   ClusterRole such as `deploy/hub/api-reader-clusterrole.yaml`
//!   (`nonResourceURLs: ["/uplink-hub/api/v1/*"]`, and
//!   `/uplink-hub/metrics` when `/metrics` is protected); a narrower URL
//!   such as `/uplink-hub/api/v1/objects/root:team-a/*` grants one
//!   workspace's object details.
//! - `/healthz` and `/readyz` are open; `/metrics` is open unless
//!   `--http-metrics-auth`.
//! - No credentials, or credentials the API server refuses: 401. Known but
//!   not allowed: 403. The API server unreachable: 503 (nothing cached).
//!
//! Both reviews go to the API server the operator names (`--auth-kubeconfig`,
//! else the hub's in-cluster configuration). Answers are cached, bounded
//! ([`CACHE_ENTRIES`] each) with a TTL, as kube-rbac-proxy caches them
//! (tokens: [`TOKEN_TTL`], refused tokens [`TOKEN_REFUSED_TTL`]; decisions:
//! allowed [`ALLOWED_TTL`], denied [`DENIED_TTL`]), and at most
//! [`MAX_REVIEWS_IN_FLIGHT`] reviews are in flight at once.
//!
//! Modes (`--http-auth`): `delegated` (the above, the default),
//! `client-cert` (mutual TLS alone: a verified client certificate is
//! enough, no API server involved) and `none` (no checks, for local use on
//! loopback: the demo and the benchmarks run this way).

mod cache;
mod review;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use prometheus::{IntCounterVec, Opts, Registry};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use self::cache::TtlCache;
pub use self::review::{Decision, ReviewError, Reviewer};
use super::Body;
use crate::tls::reload::{RotationMetrics, ServerTls};

/// How long a token's user is remembered.
pub const TOKEN_TTL: Duration = Duration::from_secs(120);
/// How long a refused token is remembered.
pub const TOKEN_REFUSED_TTL: Duration = Duration::from_secs(10);
/// How long an allowed decision is remembered (kube's webhook authorizer
/// default `authorizedTTL`).
pub const ALLOWED_TTL: Duration = Duration::from_secs(300);
/// How long a denied decision is remembered (`unauthorizedTTL`).
pub const DENIED_TTL: Duration = Duration::from_secs(30);
/// Entries in each cache.
pub const CACHE_ENTRIES: usize = 4096;
/// What the authorized path of a request starts with (`--auth-path-prefix`).
pub const DEFAULT_PATH_PREFIX: &str = "/uplink-hub";
/// Reviews sent to the API server at once; more requests wait.
pub const MAX_REVIEWS_IN_FLIGHT: usize = 64;
/// Longest wait for one review, queueing included.
pub const REVIEW_TIMEOUT: Duration = Duration::from_secs(10);

/// How requests to the hub's HTTP endpoint are checked (`--http-auth`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum HttpAuthMode {
    /// Bearer tokens (TokenReview) or client certificates, each request
    /// authorized by a SubjectAccessReview.
    #[default]
    Delegated,
    /// A client certificate signed by `--http-client-ca` is enough.
    ClientCert,
    /// No checks: whoever reaches the listener may read everything.
    None,
}

/// The HTTP endpoint's access settings.
#[derive(Debug, Clone)]
pub struct HttpAuthConfig {
    pub mode: HttpAuthMode,
    /// Kubeconfig of the API server that answers the reviews; `None`: the
    /// hub's in-cluster configuration.
    pub kubeconfig: Option<PathBuf>,
    /// CA of client certificates; set, the listener serves HTTPS with the
    /// hub's serving certificate and accepts certificates it signed.
    pub client_ca: Option<PathBuf>,
    /// `/metrics` needs authorization too.
    pub protect_metrics: bool,
    /// Put before the request path in SubjectAccessReviews
    /// ([`DEFAULT_PATH_PREFIX`]; empty: the bare path).
    pub path_prefix: String,
}

impl Default for HttpAuthConfig {
    fn default() -> Self {
        Self {
            mode: HttpAuthMode::default(),
            kubeconfig: None,
            client_ca: None,
            protect_metrics: false,
            path_prefix: DEFAULT_PATH_PREFIX.to_owned(),
        }
    }
}

impl HttpAuthConfig {
    /// No checks (tests and local tools on loopback).
    pub fn disabled() -> Self {
        Self {
            mode: HttpAuthMode::None,
            ..Self::default()
        }
    }
}

/// An authenticated identity (kube's `user.Info`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct UserInfo {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

/// Why the access settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("--http-auth=client-cert needs --http-client-ca (the CA of client certificates)")]
    NoClientCa,
    #[error(
        "--auth-path-prefix {0:?}: expected empty or a path like /uplink-hub (a leading /, no trailing /)"
    )]
    PathPrefix(String),
    #[error("--http-client-ca: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("--auth-kubeconfig {path}: {message}")]
    Kubeconfig { path: PathBuf, message: String },
    #[error(
        "--http-auth=delegated without --auth-kubeconfig needs the hub's in-cluster configuration: {0} (name an API server with --auth-kubeconfig, or turn checks off with --http-auth=none on loopback)"
    )]
    InCluster(String),
    #[error("building the client of the reviewing API server: {0}")]
    Client(String),
    #[error("registering the HTTP auth metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// 401: no credentials, or credentials nobody vouches for.
    Unauthenticated(&'static str),
    /// 403: known, not allowed.
    Forbidden {
        user: String,
        verb: String,
        path: String,
        reason: String,
    },
    /// 503: the API server did not answer.
    Unavailable(String),
    /// 403: with `--http-auth none`, a request addressed to a host name
    /// (the `Host` header) rather than an IP address or `localhost`.
    HostName(String),
}

impl Denial {
    pub fn response(&self) -> Response<Body> {
        let (status, body) = match self {
            Denial::Unauthenticated(why) => {
                (StatusCode::UNAUTHORIZED, format!("Unauthorized: {why}\n"))
            }
            Denial::Forbidden {
                user,
                verb,
                path,
                reason,
            } => {
                let mut body =
                    format!("Forbidden: user {user:?} may not {verb} the non-resource URL {path}");
                if !reason.is_empty() {
                    body.push_str(&format!(" ({reason})"));
                }
                body.push('\n');
                (StatusCode::FORBIDDEN, body)
            }
            Denial::Unavailable(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot check the request's credentials: {why}\n"),
            ),
            Denial::HostName(host) => (
                StatusCode::FORBIDDEN,
                format!(
                    "Forbidden: with --http-auth none the hub answers requests addressed to an IP \
                     address or localhost only, not Host {host:?}: a web page of another site \
                     could otherwise read it through DNS rebinding; use the address, or an \
                     authenticating --http-auth mode\n"
                ),
            ),
        };
        let mut response = super::text(status, body);
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }

    fn result(&self) -> &'static str {
        match self {
            Denial::Unauthenticated(_) => "unauthenticated",
            Denial::Forbidden { .. } => "forbidden",
            Denial::Unavailable(_) => "error",
            Denial::HostName(_) => "host_refused",
        }
    }
}

/// Whether a `Host` header names an IP address (v4, or v6 in brackets) or
/// `localhost`, with or without a port.
fn addressed_by_ip_or_localhost(host: &[u8]) -> bool {
    let Ok(host) = std::str::from_utf8(host) else {
        return false;
    };
    if let Some(v6) = host.strip_prefix('[') {
        return v6
            .split_once(']')
            .is_some_and(|(ip, _)| ip.parse::<std::net::Ipv6Addr>().is_ok());
    }
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    name.parse::<std::net::Ipv4Addr>().is_ok() || name.eq_ignore_ascii_case("localhost")
}

/// The checks of the HTTP endpoint; see the module docs.
#[derive(Debug)]
pub struct Access {
    mode: HttpAuthMode,
    protect_metrics: bool,
    path_prefix: String,
    tls: Option<Arc<ServerTls>>,
    reviewer: Option<Reviewer>,
    /// SHA-256 of a token → its user, or `None` when refused.
    tokens: TtlCache<[u8; 32], Option<UserInfo>>,
    decisions: TtlCache<(UserInfo, String, String), Decision>,
    reviews: Semaphore,
    /// `uplink_hub_http_auth_total{result}`.
    outcomes: IntCounterVec,
}

impl Access {
    /// Builds the checks: the reviewing API server's client (delegated) and
    /// the HTTPS configuration (with `--http-client-ca`, using the hub's
    /// serving certificate `cert`/`key`).
    pub async fn new(
        config: &HttpAuthConfig,
        cert: &std::path::Path,
        key: &std::path::Path,
        registry: &Registry,
        rotation: &RotationMetrics,
    ) -> Result<Self, AccessError> {
        let prefix = &config.path_prefix;
        if !prefix.is_empty() && (!prefix.starts_with('/') || prefix.ends_with('/')) {
            return Err(AccessError::PathPrefix(prefix.clone()));
        }
        let tls = match &config.client_ca {
            Some(ca) => Some(Arc::new(
                ServerTls::https(cert, key, ca)?.with_metrics(rotation.clone()),
            )),
            None if config.mode == HttpAuthMode::ClientCert => return Err(AccessError::NoClientCa),
            None => None,
        };
        let reviewer = match config.mode {
            HttpAuthMode::Delegated => {
                Some(Reviewer::new(client(config.kubeconfig.as_ref()).await?))
            }
            HttpAuthMode::ClientCert | HttpAuthMode::None => None,
        };
        let outcomes = IntCounterVec::new(
            Opts::new(
                "uplink_hub_http_auth_total",
                "Requests to protected HTTP paths by outcome: allowed, unauthenticated (401), forbidden (403), error (503).",
            ),
            &["result"],
        )?;
        registry.register(Box::new(outcomes.clone()))?;
        Ok(Self {
            mode: config.mode,
            protect_metrics: config.protect_metrics,
            path_prefix: config.path_prefix.clone(),
            tls,
            reviewer,
            tokens: TtlCache::new(CACHE_ENTRIES),
            decisions: TtlCache::new(CACHE_ENTRIES),
            reviews: Semaphore::new(MAX_REVIEWS_IN_FLIGHT),
            outcomes,
        })
    }

    /// The HTTPS acceptor, when the listener serves TLS.
    pub fn tls(&self) -> Option<TlsAcceptor> {
        self.tls.as_ref().map(|tls| tls.acceptor())
    }

    /// The HTTPS configuration that follows its files, when the listener
    /// serves TLS.
    pub fn server_tls(&self) -> Option<Arc<ServerTls>> {
        self.tls.clone()
    }

    /// Whether `path` is served to anyone.
    pub fn is_open(&self, path: &str) -> bool {
        matches!(path, "/healthz" | "/readyz") || (path == "/metrics" && !self.protect_metrics)
    }

    /// Lets `request` through or says why not; `cert_user` is who the
    /// connection's client certificate proves.
    pub async fn check<B>(
        &self,
        request: &Request<B>,
        cert_user: Option<&UserInfo>,
    ) -> Result<(), Denial> {
        let path = request.uri().path();
        if self.is_open(path) {
            return Ok(());
        }
        if self.mode == HttpAuthMode::None {
            // No credentials to ask for, so the one thing that tells a
            // browser visiting another site (DNS rebinding) from someone
            // on this machine is the name the request was addressed to.
            return match request.headers().get(header::HOST) {
                Some(host) if !addressed_by_ip_or_localhost(host.as_bytes()) => {
                    let denial = Denial::HostName(String::from_utf8_lossy(host.as_bytes()).into());
                    self.outcomes.with_label_values(&[denial.result()]).inc();
                    Err(denial)
                }
                // HTTP/1.0 without Host: no browser sends that.
                _ => Ok(()),
            };
        }
        let outcome = self
            .decide(request.method(), request.headers(), path, cert_user)
            .await;
        let result = outcome.as_ref().map_or_else(Denial::result, |()| "allowed");
        self.outcomes.with_label_values(&[result]).inc();
        if let Err(denial) = &outcome {
            tracing::debug!(path, outcome = result, ?denial, "HTTP request refused");
        }
        outcome
    }

    async fn decide(
        &self,
        method: &Method,
        headers: &HeaderMap,
        path: &str,
        cert_user: Option<&UserInfo>,
    ) -> Result<(), Denial> {
        let reviewer = match (self.mode, &self.reviewer) {
            (HttpAuthMode::None, _) => return Ok(()),
            (HttpAuthMode::ClientCert, _) => {
                // A verified certificate is all it takes.
                return cert_user.map(drop).ok_or(Denial::Unauthenticated(
                    "a client certificate signed by the hub's --http-client-ca is required",
                ));
            }
            (HttpAuthMode::Delegated, Some(reviewer)) => reviewer,
            (HttpAuthMode::Delegated, None) => {
                // Access::new always builds one for this mode.
                return Err(Denial::Unavailable(
                    "no API server to review requests".into(),
                ));
            }
        };
        let user = match (bearer(headers), cert_user) {
            (Some(token), _) => self.authenticate(reviewer, token).await?,
            (None, Some(user)) => user.clone(),
            (None, None) => {
                return Err(Denial::Unauthenticated(
                    "send a bearer token (Authorization: Bearer <token>) or a client certificate",
                ));
            }
        };
        let verb = verb(method);
        let path = format!("{}{path}", self.path_prefix);
        let decision = self.authorize(reviewer, &user, verb, &path).await?;
        if decision.allowed {
            Ok(())
        } else {
            Err(Denial::Forbidden {
                user: user.name,
                verb: verb.to_owned(),
                path,
                reason: decision.reason,
            })
        }
    }

    async fn authenticate(&self, reviewer: &Reviewer, token: &str) -> Result<UserInfo, Denial> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let known = match self.tokens.get(&digest) {
            Some(known) => known,
            None => {
                let known = self.review(reviewer.token(token)).await?;
                let ttl = if known.is_some() {
                    TOKEN_TTL
                } else {
                    TOKEN_REFUSED_TTL
                };
                self.tokens.insert(digest, known.clone(), ttl);
                known
            }
        };
        known.ok_or(Denial::Unauthenticated("the bearer token is not valid"))
    }

    async fn authorize(
        &self,
        reviewer: &Reviewer,
        user: &UserInfo,
        verb: &str,
        path: &str,
    ) -> Result<Decision, Denial> {
        let key = (user.clone(), verb.to_owned(), path.to_owned());
        if let Some(decision) = self.decisions.get(&key) {
            return Ok(decision);
        }
        let decision = self.review(reviewer.access(user, verb, path)).await?;
        let ttl = if decision.allowed {
            ALLOWED_TTL
        } else {
            DENIED_TTL
        };
        self.decisions.insert(key, decision.clone(), ttl);
        Ok(decision)
    }

    /// Runs one review within the in-flight bound and the timeout.
    async fn review<T>(
        &self,
        review: impl Future<Output = Result<T, ReviewError>>,
    ) -> Result<T, Denial> {
        let bounded = async {
            let _permit = self
                .reviews
                .acquire()
                .await
                .map_err(|_| Denial::Unavailable("the hub is shutting down".into()))?;
            review.await.map_err(|e| Denial::Unavailable(e.to_string()))
        };
        tokio::time::timeout(REVIEW_TIMEOUT, bounded)
            .await
            .unwrap_or_else(|_| {
                Err(Denial::Unavailable(format!(
                    "no answer from the API server within {REVIEW_TIMEOUT:?}"
                )))
            })
    }
}

/// The request's bearer token.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The authorization verb of an HTTP method, as kube-apiserver maps it for
/// non-resource requests (the endpoint serves GET and HEAD only).
fn verb(method: &Method) -> &'static str {
    match *method {
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "get",
    }
}

/// The client of the reviewing API server.
async fn client(kubeconfig: Option<&PathBuf>) -> Result<kube::Client, AccessError> {
    let config = match kubeconfig {
        Some(path) => {
            let bad = |message: String| AccessError::Kubeconfig {
                path: path.clone(),
                message,
            };
            let file = kube::config::Kubeconfig::read_from(path).map_err(|e| bad(e.to_string()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| bad(e.to_string()))?
        }
        None => kube::Config::incluster().map_err(|e| AccessError::InCluster(e.to_string()))?,
    };
    kube::Client::try_from(config).map_err(|e| AccessError::Client(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_case_insensitively_and_never_empty() {
        let headers = |value: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                header::AUTHORIZATION,
                http::HeaderValue::from_str(value)
                    .unwrap_or_else(|_| http::HeaderValue::from_static("")),
            );
            h
        };
        assert_eq!(bearer(&headers("Bearer abc")), Some("abc"));
        assert_eq!(bearer(&headers("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(&headers("Bearer ")), None);
        assert_eq!(bearer(&headers("Basic abc")), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
    }

    #[test]
    fn only_addresses_and_localhost_pass_without_authentication() {
        for host in [
            "127.0.0.1:9090",
            "10.0.0.7",
            "[::1]:9090",
            "[fe80::1]",
            "localhost:8080",
            "LOCALHOST",
        ] {
            assert!(addressed_by_ip_or_localhost(host.as_bytes()), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:9090",
            "127.0.0.1.nip.io",
            "[not-v6]",
            "localhost.evil",
            "",
        ] {
            assert!(!addressed_by_ip_or_localhost(host.as_bytes()), "{host}");
        }
    }

    #[test]
    fn get_and_head_are_get() {
        assert_eq!(verb(&Method::GET), "get");
        assert_eq!(verb(&Method::HEAD), "get");
        assert_eq!(verb(&Method::POST), "create");
    }
}
