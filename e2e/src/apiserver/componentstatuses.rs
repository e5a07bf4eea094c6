//! `componentstatuses` (core/v1, deprecated since 1.19 and still served):
//! kube-apiserver probes the scheduler, the controller manager and etcd and
//! reports each as a ComponentStatus. The test bed has no such components
//! apart from itself, so each is reported Healthy. Lists take label and
//! field selectors, as kube's REST filters them. Every response carries the
//! deprecation warning (added by the caller).

use std::sync::Arc;

use http::StatusCode;
use hyper::Response;
use serde_json::{Value, json};

use super::handler::{self, Body};
use super::path::Query;
use super::registry::Target;
use super::status::ApiError;
use super::table::{self, Rendering};

/// The components kube-apiserver reports, in its order.
const COMPONENTS: [&str; 3] = ["scheduler", "controller-manager", "etcd-0"];

fn status(name: &str) -> Value {
    json!({
        "kind": "ComponentStatus",
        "apiVersion": "v1",
        "metadata": { "name": name },
        "conditions": [{ "type": "Healthy", "status": "True", "message": "ok" }],
    })
}

/// GET of the list or of one component.
pub(crate) fn serve(
    target: &Target,
    name: Option<&str>,
    query: &Query,
    accept: &str,
) -> Result<Response<Body>, ApiError> {
    // A list takes label and field selectors (kube's default conversion and
    // attributes: `metadata.name`, `metadata.namespace`); a get ignores them.
    let filter = match name {
        None => Some(handler::list_filter(target, query, None, false)?),
        Some(_) => None,
    };
    let items: Vec<Arc<Value>> = COMPONENTS
        .iter()
        .filter(|c| name.is_none_or(|n| n == **c))
        .map(|c| status(c))
        .filter(|s| filter.as_ref().is_none_or(|f| f.matches(s)))
        .map(Arc::new)
        .collect();
    if let Some(name) = name
        && items.is_empty()
    {
        return Err(ApiError::not_found(target.subject(), name));
    }
    let body = match (Rendering::from_accept(accept), name) {
        (Rendering::Table, _) => table::render(target, &items, None, query.get("includeObject")),
        (Rendering::Metadata, Some(_)) => items
            .first()
            .map(|i| table::partial_metadata(i))
            .unwrap_or_default(),
        (_, Some(_)) => items.first().map(|i| (**i).clone()).unwrap_or_default(),
        (_, None) => json!({
            "kind": "ComponentStatusList",
            "apiVersion": "v1",
            "metadata": {},
            "items": items.iter().map(|i| (**i).clone()).collect::<Vec<_>>(),
        }),
    };
    Ok(handler::json_response(StatusCode::OK, &body))
}
