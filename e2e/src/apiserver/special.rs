//! Requests that are not plain object storage, routed to the code that
//! serves them: the reviews ([`super::reviews`]), TokenRequest, ephemeral
//! containers and CSR approval ([`super::subresources`]), CSR creation
//! ([`super::certificates`]) and component statuses. Also the controllers
//! a cluster runs that a client can observe at once: ClusterRole
//! aggregation after ClusterRole writes, and APIServices kept in step with
//! the served groups.

use std::sync::Arc;

use http::Method;
use hyper::body::Incoming;
use hyper::{Request, Response};

use super::Shared;
use super::apiservices;
use super::authn::UserInfo;
use super::certificates;
use super::handler::{self, Answer, Body, BodyKind};
use super::path::{Query, ResourcePath};
use super::rbac;
use super::registry::{self, Target};
use super::resources::{CRD_GROUP, CRD_PLURAL, ResourceDef};
use super::reviews;
use super::status::ApiError;
use super::subresources;

/// What serves a request that plain storage does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    Review,
    ComponentStatuses,
    CreateCertificateRequest,
    /// A subresource of [`ResourceDef::subresources`].
    Subresource,
}

/// The route of a request, if it is not plain storage.
pub(crate) fn route(def: &ResourceDef, rp: &ResourcePath, method: &Method) -> Option<Route> {
    if let Some(sub) = rp.subresource.as_deref() {
        return (def.subresource(sub).is_some() && rp.name.is_some()).then_some(Route::Subresource);
    }
    let target_is = |group, plural| def.is(group, plural);
    if def.verbs == ["create"] {
        return Some(Route::Review);
    }
    if target_is("", "componentstatuses") {
        return Some(Route::ComponentStatuses);
    }
    if target_is("certificates.k8s.io", "certificatesigningrequests")
        && *method == Method::POST
        && rp.name.is_none()
    {
        return Some(Route::CreateCertificateRequest);
    }
    None
}

/// Serves a routed request.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve(
    route: Route,
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    ws: &str,
    target: Target,
    rp: &ResourcePath,
    query: &Query,
    user: &UserInfo,
    accept: &str,
) -> Result<Response<Body>, ApiError> {
    let method = req.method().clone();
    match route {
        Route::Review => {
            if method != Method::POST || rp.name.is_some() {
                return Err(ApiError::method_not_allowed(method.as_str()));
            }
            let body = handler::read_body(shared, req, BodyKind::Object).await?;
            let mut review = registry::decode_body(&target, &body)?;
            registry::check_namespace(&target, &mut review)?;
            let answered = reviews::answer(shared, ws, &target, user, review)?;
            Ok(handler::respond_without_table(
                Answer::created(Arc::new(answered)),
                accept,
            ))
        }
        Route::ComponentStatuses => {
            if method != Method::GET {
                return Err(ApiError::method_not_allowed(method.as_str()));
            }
            let response =
                super::componentstatuses::serve(&target, rp.name.as_deref(), query, accept)?;
            Ok(handler::with_warnings(
                response,
                &[target.def.deprecation.unwrap_or_default().to_string()],
            ))
        }
        Route::CreateCertificateRequest => {
            let body = handler::read_body(shared, req, BodyKind::Object).await?;
            let answer = certificates::create(shared, ws, &target, &body, query, user)?;
            Ok(handler::respond(&target, answer, query, accept))
        }
        Route::Subresource => {
            let name = rp.name.clone().unwrap_or_default();
            let sub = rp.subresource.clone().unwrap_or_default();
            subresources::serve(shared, req, ws, &target, &name, &sub, query, user, accept).await
        }
    }
}

/// Brings controller-maintained objects up to date before a request reads them.
pub(crate) fn before(shared: &Shared, ws: &str, def: &ResourceDef) {
    if def.is(apiservices::GROUP, apiservices::PLURAL) {
        apiservices::sync(shared, ws);
    }
}

/// Runs what a cluster's controllers do after a successful write.
pub(crate) fn after_write(shared: &Shared, ws: &str, def: &ResourceDef) {
    if def.is(rbac::GROUP, "clusterroles") {
        rbac::policy::aggregate(&shared.store, ws);
    }
    if def.is(CRD_GROUP, CRD_PLURAL) {
        apiservices::sync(shared, ws);
    }
}
