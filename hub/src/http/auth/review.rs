//! The API server's answers about a request, as a delegating Kubernetes
//! component asks for them: `TokenReview` (authentication.k8s.io/v1) for
//! who a bearer token is, `SubjectAccessReview` (authorization.k8s.io/v1)
//! for whether that user may use a non-resource URL with a verb.

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};

use super::UserInfo;

/// Asks one API server; the hub's identity there needs `create` on
/// `tokenreviews` and `subjectaccessreviews` (the `system:auth-delegator`
/// ClusterRole).
#[derive(Clone)]
pub struct Reviewer {
    client: kube::Client,
}

impl std::fmt::Debug for Reviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reviewer").finish_non_exhaustive()
    }
}

/// Why the API server gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("{kind} failed: {source}")]
    Request {
        kind: &'static str,
        source: kube::Error,
    },
    #[error("{0} came back without a status")]
    NoStatus(&'static str),
}

/// The answer of a `SubjectAccessReview`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub reason: String,
}

impl Reviewer {
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }

    /// Who `token` authenticates as; `Ok(None)` when the API server
    /// refuses it.
    pub async fn token(&self, token: &str) -> Result<Option<UserInfo>, ReviewError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: None,
            },
            ..TokenReview::default()
        };
        let answer = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|source| ReviewError::Request {
                kind: "TokenReview",
                source,
            })?;
        let status = answer.status.ok_or(ReviewError::NoStatus("TokenReview"))?;
        if status.authenticated != Some(true) {
            return Ok(None);
        }
        let user = status.user.unwrap_or_default();
        Ok(Some(UserInfo {
            name: user.username.unwrap_or_default(),
            uid: user.uid.unwrap_or_default(),
            groups: user.groups.unwrap_or_default(),
            extra: user.extra.unwrap_or_default().into_iter().collect(),
        }))
    }

    /// Whether `user` may `verb` the non-resource URL `path`.
    pub async fn access(
        &self,
        user: &UserInfo,
        verb: &str,
        path: &str,
    ) -> Result<Decision, ReviewError> {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.name.clone()),
                uid: (!user.uid.is_empty()).then(|| user.uid.clone()),
                groups: Some(user.groups.clone()),
                extra: (!user.extra.is_empty()).then(|| user.extra.clone().into_iter().collect()),
                non_resource_attributes: Some(NonResourceAttributes {
                    path: Some(path.to_owned()),
                    verb: Some(verb.to_owned()),
                }),
                resource_attributes: None,
            },
            ..SubjectAccessReview::default()
        };
        let answer = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|source| ReviewError::Request {
                kind: "SubjectAccessReview",
                source,
            })?;
        let status = answer
            .status
            .ok_or(ReviewError::NoStatus("SubjectAccessReview"))?;
        Ok(Decision {
            // `denied` only matters to authorizer chains; not allowed is no.
            allowed: status.allowed && status.denied != Some(true),
            reason: status.reason.unwrap_or_default(),
        })
    }
}
