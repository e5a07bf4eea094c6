//! What a request asks to do, in the terms authorization decides on: kube's
//! `RequestInfo` (verb, API group, resource, subresource, name, namespace)
//! for resource requests, or a verb and a path for everything else. Also
//! read from a SubjectAccessReview's spec.

use http::Method;
use serde_json::Value;

use crate::apiserver::path::{Query, RequestPath, Target};

/// The subject of an authorization decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Attributes {
    Resource {
        verb: String,
        group: String,
        version: String,
        namespace: String,
        resource: String,
        subresource: String,
        name: String,
    },
    NonResource {
        verb: String,
        path: String,
    },
}

impl Attributes {
    /// The namespace whose RoleBindings apply ("" for cluster scope).
    pub fn namespace(&self) -> &str {
        match self {
            Attributes::Resource { namespace, .. } => namespace,
            Attributes::NonResource { .. } => "",
        }
    }

    /// The verb asked for (`list`, `watch`, `get`, `create`, ...).
    pub fn verb(&self) -> &str {
        match self {
            Attributes::Resource { verb, .. } | Attributes::NonResource { verb, .. } => verb,
        }
    }

    /// The attributes of an HTTP request, as kube's RequestInfoFactory reads
    /// them. `path` is the URL path (a `/clusters/<ws>` prefix is dropped).
    pub fn of_request(method: &Method, path: &str, parsed: &RequestPath, query: &Query) -> Self {
        let Target::Resource(rp) = &parsed.target else {
            let path = match path.strip_prefix("/clusters/") {
                Some(rest) => rest.find('/').map_or("/", |i| &rest[i..]),
                None => path,
            };
            return Attributes::NonResource {
                verb: method.as_str().to_ascii_lowercase(),
                path: path.to_string(),
            };
        };
        let mut name = rp.name.clone().unwrap_or_default();
        let other_method;
        let verb = match *method {
            Method::GET | Method::HEAD if rp.legacy_watch || query.flag("watch") => "watch",
            Method::GET | Method::HEAD if name.is_empty() => "list",
            Method::GET | Method::HEAD => "get",
            Method::POST => "create",
            Method::PUT => "update",
            Method::PATCH => "patch",
            Method::DELETE if name.is_empty() => "deletecollection",
            Method::DELETE => "delete",
            // kube's RequestInfoFactory names any other method by itself.
            _ => {
                other_method = method.as_str().to_ascii_lowercase();
                other_method.as_str()
            }
        };
        // A list or watch of one object by name is authorized as that name.
        if matches!(verb, "list" | "watch")
            && name.is_empty()
            && let Some(selected) = query.get("fieldSelector").and_then(single_name)
        {
            name = selected;
        }
        // `/api/v1/namespaces/<name>` is in the namespace it names.
        let namespace = match &rp.namespace {
            Some(ns) => ns.clone(),
            None if rp.group.is_empty() && rp.resource == "namespaces" => name.clone(),
            None => String::new(),
        };
        Attributes::Resource {
            verb: verb.to_string(),
            group: rp.group.clone(),
            version: rp.version.clone(),
            namespace,
            resource: rp.resource.clone(),
            subresource: rp.subresource.clone().unwrap_or_default(),
            name,
        }
    }

    /// The attributes a SubjectAccessReview's spec asks about.
    pub fn of_review(spec: &Value) -> Result<Self, String> {
        let text = |v: &Value, field: &str| {
            v.get(field)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        match (
            spec.get("resourceAttributes").filter(|v| !v.is_null()),
            spec.get("nonResourceAttributes").filter(|v| !v.is_null()),
        ) {
            (Some(_), Some(_)) => Err(
                "spec.nonResourceAttributes: Invalid value: \"\": cannot be specified in combination with resourceAttributes"
                    .into(),
            ),
            (Some(r), None) => Ok(Attributes::Resource {
                verb: text(r, "verb"),
                group: text(r, "group"),
                version: text(r, "version"),
                namespace: text(r, "namespace"),
                resource: text(r, "resource"),
                subresource: text(r, "subresource"),
                name: text(r, "name"),
            }),
            (None, Some(n)) => Ok(Attributes::NonResource {
                verb: text(n, "verb"),
                path: text(n, "path"),
            }),
            (None, None) => Err(
                "spec.resourceAttributes: Invalid value: \"null\": exactly one of nonResourceAttributes or resourceAttributes must be specified"
                    .into(),
            ),
        }
    }
}

/// The name a field selector picks when it is exactly `metadata.name=<x>`.
fn single_name(selector: &str) -> Option<String> {
    let selector = selector.trim();
    if selector.contains(',') {
        return None;
    }
    let value = selector
        .strip_prefix("metadata.name==")
        .or_else(|| selector.strip_prefix("metadata.name="))?;
    (!value.is_empty()).then(|| value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::path;

    fn attrs(method: Method, url: &str) -> Attributes {
        let (p, q) = url.split_once('?').unwrap_or((url, ""));
        let parsed = path::parse(p).unwrap_or_else(|e| panic!("{e}"));
        Attributes::of_request(&method, p, &parsed, &Query::parse(Some(q)))
    }

    fn resource(a: &Attributes) -> (String, String, String, String, String) {
        match a {
            Attributes::Resource {
                verb,
                namespace,
                resource,
                subresource,
                name,
                ..
            } => (
                verb.clone(),
                namespace.clone(),
                resource.clone(),
                subresource.clone(),
                name.clone(),
            ),
            other => panic!("not a resource request: {other:?}"),
        }
    }

    #[test]
    fn verbs_follow_kube() {
        let t = |m, u| resource(&attrs(m, u)).0;
        assert_eq!(t(Method::GET, "/api/v1/namespaces/a/pods"), "list");
        assert_eq!(
            t(Method::GET, "/api/v1/namespaces/a/pods?watch=true"),
            "watch"
        );
        assert_eq!(t(Method::GET, "/api/v1/watch/namespaces/a/pods"), "watch");
        assert_eq!(t(Method::GET, "/api/v1/namespaces/a/pods/p"), "get");
        assert_eq!(
            t(Method::DELETE, "/api/v1/namespaces/a/pods"),
            "deletecollection"
        );
        assert_eq!(
            t(Method::POST, "/api/v1/namespaces/a/serviceaccounts/s/token"),
            "create"
        );
        assert_eq!(t(Method::OPTIONS, "/api/v1/namespaces/a/pods"), "options");
    }

    #[test]
    fn namespaces_are_in_themselves_and_names_come_from_field_selectors() {
        assert_eq!(
            resource(&attrs(Method::GET, "/api/v1/namespaces/team")),
            (
                "get".into(),
                "team".into(),
                "namespaces".into(),
                String::new(),
                "team".into()
            )
        );
        assert_eq!(
            resource(&attrs(
                Method::GET,
                "/api/v1/namespaces/a/pods?fieldSelector=metadata.name%3Dweb&watch=1"
            )),
            (
                "watch".into(),
                "a".into(),
                "pods".into(),
                String::new(),
                "web".into()
            )
        );
        assert_eq!(
            resource(&attrs(
                Method::PATCH,
                "/api/v1/namespaces/a/pods/p/ephemeralcontainers"
            ))
            .3,
            "ephemeralcontainers"
        );
    }

    #[test]
    fn other_paths_are_non_resource_requests_without_the_workspace() {
        assert_eq!(
            attrs(Method::GET, "/clusters/root:a/apis"),
            Attributes::NonResource {
                verb: "get".into(),
                path: "/apis".into()
            }
        );
        assert_eq!(
            attrs(Method::GET, "/healthz"),
            Attributes::NonResource {
                verb: "get".into(),
                path: "/healthz".into()
            }
        );
    }
}
