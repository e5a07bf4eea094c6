//! The HTTP side of a request: authentication, fault injection, routing,
//! body limits, content negotiation, and the verbs on resources.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::{Value, json};

use super::Shared;
use super::apply;
use super::authn::{self, UserInfo};
use super::discovery;
use super::fields;
use super::object::{self, KeyOrder, meta_str};
use super::openapi;
use super::patch::{self, PatchFailure, PatchType};
use super::path::{self, Query, ResourcePath, Target as PathTarget};
use super::protobuf;
use super::rbac;
use super::registry::{self, DeleteOptions, Target};
use super::scale;
use super::schema::{self, FieldValidation};
use super::selector::{FieldSelector, LabelSelector};
use super::special;
use super::status::{self, ApiError};
use super::status_writes;
use super::store::{Filter, ListKey, NameChoice, Scope};
use super::table::{self, Rendering};
use super::watch;

/// Response bodies: whole documents or watch streams.
pub(crate) type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Serves one request; every failure becomes a `Status` response.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let method = req.method().clone();
    let uri = req.uri().clone();
    let response = match serve(&shared, req).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    };
    tracing::debug!(%method, %uri, status = response.status().as_u16(), "request");
    Ok(response)
}

async fn serve(shared: &Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let parsed = path::parse(req.uri().path()).map_err(ApiError::bad_request)?;
    let query = Query::parse(req.uri().query());
    let is_watch = matches!(&parsed.target, PathTarget::Resource(r)
        if req.method() == Method::GET && (r.legacy_watch || query.flag("watch")));
    let anonymous_ok = matches!(parsed.target, PathTarget::Health | PathTarget::Version);
    let attrs = rbac::Attributes::of_request(req.method(), req.uri().path(), &parsed, &query);
    shared.requests.record(parsed.logical_cluster(), &attrs);
    let user = authenticate_and_authorize(shared, &req, &parsed, &attrs, anonymous_ok)?;
    let plan = shared.faults.plan(is_watch);
    // Faults are for the clients under test, not for health checks or observers.
    if !matches!(parsed.target, PathTarget::Health | PathTarget::Metrics) {
        if !plan.latency.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(plan.latency) => {}
                () = shared.shutdown.cancelled() => return Err(ApiError::injected(503)),
            }
        }
        if let Some(code) = plan.fail_with {
            return Err(ApiError::injected(code));
        }
    }
    let ws = parsed.workspace.as_str();
    let scope = if parsed.all_workspaces {
        Scope::AllWorkspaces
    } else {
        Scope::Workspace(parsed.workspace.clone())
    };
    // Discovery of `/clusters/*` is the union of every workspace's.
    let served = || match &scope {
        Scope::AllWorkspaces => shared.store.resources_in_all_workspaces(),
        Scope::Workspace(_) => shared.store.resources(ws),
    };
    let accept = header_str(&req, header::ACCEPT).to_string();
    match parsed.target {
        PathTarget::Version => Ok(json_response(StatusCode::OK, &discovery::version())),
        PathTarget::Health => Ok(bytes_response(
            StatusCode::OK,
            Bytes::from_static(b"ok"),
            "text/plain; charset=utf-8",
        )),
        PathTarget::Metrics => {
            if req.method() != Method::GET {
                return Err(ApiError::method_not_allowed(req.method().as_str()));
            }
            Ok(bytes_response(
                StatusCode::OK,
                Bytes::from(shared.requests.snapshot().to_prometheus()),
                "text/plain; version=0.0.4; charset=utf-8",
            ))
        }
        PathTarget::LegacyApis => {
            if req.method() != Method::GET {
                return Err(ApiError::method_not_allowed(req.method().as_str()));
            }
            if let Some(v) = discovery::aggregated_version(&accept) {
                let doc = discovery::aggregated(&served(), true, v);
                return Ok(typed_json_response(
                    StatusCode::OK,
                    &doc,
                    &discovery::aggregated_content_type(v),
                ));
            }
            let host = header_str(&req, header::HOST);
            Ok(json_response(
                StatusCode::OK,
                &discovery::legacy_versions(host),
            ))
        }
        PathTarget::Apis => {
            if req.method() != Method::GET {
                return Err(ApiError::method_not_allowed(req.method().as_str()));
            }
            let resources = served();
            if let Some(v) = discovery::aggregated_version(&accept) {
                let doc = discovery::aggregated(&resources, false, v);
                return Ok(typed_json_response(
                    StatusCode::OK,
                    &doc,
                    &discovery::aggregated_content_type(v),
                ));
            }
            Ok(json_response(
                StatusCode::OK,
                &discovery::group_list(&resources),
            ))
        }
        PathTarget::Group(group) => discovery::group(&served(), &group)
            .map(|doc| json_response(StatusCode::OK, &doc))
            .ok_or_else(ApiError::no_route),
        PathTarget::GroupVersion { group, version } => {
            discovery::resource_list(&served(), &group, &version)
                .map(|doc| json_response(StatusCode::OK, &doc))
                .ok_or_else(ApiError::no_route)
        }
        PathTarget::OpenApi(rest) => {
            let resources = served();
            let doc = if rest == "v3" {
                Some(openapi::index(&resources))
            } else {
                openapi::document(&resources, &rest)
            };
            doc.map(|d| json_response(StatusCode::OK, &d))
                .ok_or_else(ApiError::no_route)
        }
        PathTarget::Unknown => Err(ApiError::no_route()),
        PathTarget::Resource(rp) => {
            let user = user.ok_or_else(ApiError::unauthorized)?;
            serve_resource(
                shared,
                req,
                scope,
                rp,
                query,
                is_watch,
                attrs.verb(),
                plan.close_watch_after,
                &accept,
                &user,
            )
            .await
        }
    }
}

fn header_str(req: &Request<Incoming>, name: header::HeaderName) -> &str {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// Who the request acts as (after impersonation), once authorization lets
/// it do what `attrs` describe; `None` for an anonymous read of health or
/// version. Under `/clusters/*` this is decided for kcp's logical cluster
/// `*`, which only `system:masters` may use (403 for anyone else).
fn authenticate_and_authorize(
    shared: &Shared,
    req: &Request<Incoming>,
    parsed: &path::RequestPath,
    attrs: &rbac::Attributes,
    anonymous_ok: bool,
) -> Result<Option<UserInfo>, ApiError> {
    let ws = parsed.logical_cluster();
    let Some(user) = authn::authenticate(shared, ws, req.headers(), anonymous_ok)? else {
        return Ok(None);
    };
    let user = authn::impersonate(shared, ws, user, req.headers())?;
    let decision = rbac::authorize(&shared.store, ws, &user, attrs);
    if !decision.allowed {
        return Err(rbac::forbidden(&user, attrs, &decision.reason));
    }
    Ok(Some(user))
}

#[allow(clippy::too_many_arguments)]
async fn serve_resource(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    scope: Scope,
    rp: ResourcePath,
    query: Query,
    is_watch: bool,
    verb: &str,
    close_watch_after: Option<u64>,
    accept: &str,
    user: &UserInfo,
) -> Result<Response<Body>, ApiError> {
    let def = match &scope {
        Scope::Workspace(ws) => shared
            .store
            .resolve(ws, &rp.group, &rp.version, &rp.resource),
        Scope::AllWorkspaces => {
            // kcp refuses every other verb before it looks the resource up.
            if verb != "list" && verb != "watch" {
                let subject = status::Subject {
                    group: &rp.group,
                    resource: &rp.resource,
                };
                return Err(ApiError::not_in_all_workspaces(subject, verb));
            }
            shared
                .store
                .resolve_in_any_workspace(&rp.group, &rp.version, &rp.resource)
        }
    }
    .ok_or_else(ApiError::no_route)?;
    if !def.namespaced && rp.namespace.is_some() {
        return Err(ApiError::no_route());
    }
    if def.namespaced && rp.namespace.is_none() && rp.name.is_some() {
        return Err(ApiError::no_route());
    }
    if let Scope::Workspace(ws) = &scope {
        special::before(shared, ws, &def);
    }
    if let Some(route) = special::route(&def, &rp, req.method()) {
        if is_watch {
            return Err(ApiError::method_not_allowed("WATCH"));
        }
        // Under `/clusters/*` only lists get here: of reviews (refused)
        // and of component statuses (the same everywhere).
        let ws = match &scope {
            Scope::Workspace(ws) => ws.as_str(),
            Scope::AllWorkspaces => "",
        };
        let target = Target {
            def,
            version: rp.version.clone(),
            namespace: rp.namespace.clone().unwrap_or_default(),
            status: false,
        };
        return special::serve(route, shared, req, ws, target, &rp, &query, user, accept).await;
    }
    let (status, scale) = match rp.subresource.as_deref() {
        None => (false, false),
        Some("status") if def.has_status(&rp.version) && rp.name.is_some() => (true, false),
        Some("scale") if scale::has_scale(&def) && rp.name.is_some() => (false, true),
        Some(_) => return Err(ApiError::no_route()),
    };
    let all_namespaces = def.namespaced && rp.namespace.is_none();
    let target = Target {
        def,
        version: rp.version.clone(),
        namespace: rp.namespace.clone().unwrap_or_default(),
        status,
    };
    let method = req.method().clone();
    if is_watch {
        let filter = list_filter(&target, &query, rp.name.as_deref(), all_namespaces)?;
        return watch::serve(
            shared.clone(),
            target,
            scope,
            &query,
            filter,
            close_watch_after,
            accept,
        );
    }
    if method == Method::GET && rp.name.is_none() {
        return list(shared, &scope, &target, &query, all_namespaces, accept);
    }
    let Scope::Workspace(ws) = &scope else {
        return Err(ApiError::internal(
            "only list and watch may address every workspace",
        ));
    };
    let ws = ws.as_str();
    let name = rp.name.clone();
    if scale {
        let name = name.unwrap_or_default();
        return serve_scale(shared, req, ws, &target, &name, &query).await;
    }
    // A write of `/status` is recorded once stored (`status_writes`).
    let status_write = (target.status && matches!(method, Method::PUT | Method::PATCH))
        .then(|| header_str(&req, header::USER_AGENT).to_owned());
    let answer = match (&method, name) {
        (&Method::GET, Some(name)) => get(shared, ws, &target, &name),
        (&Method::POST, None) if !all_namespaces => {
            let body = read_body(shared, req, BodyKind::Object).await?;
            create(shared, ws, &target, &body, &query)
        }
        (&Method::PUT, Some(name)) => {
            let body = read_body(shared, req, BodyKind::Object).await?;
            update(shared, ws, &target, &name, &body, &query)
        }
        (&Method::PATCH, Some(name)) => {
            let content_type = header_str(&req, header::CONTENT_TYPE).to_string();
            let patch_type = PatchType::from_content_type(&content_type)
                .ok_or_else(|| ApiError::unsupported_patch_type(&content_type))?;
            if patch_type == PatchType::Strategic && target.def.custom {
                return Err(ApiError::unsupported_patch_type(&content_type));
            }
            let body = read_body(shared, req, BodyKind::Patch).await?;
            patch(shared, ws, &target, &name, patch_type, &body, &query)
        }
        (&Method::DELETE, Some(name)) => {
            let body = read_body(shared, req, BodyKind::Options).await?;
            delete(shared, ws, &target, &name, &body, &query)
        }
        (&Method::DELETE, None) if !all_namespaces => {
            let body = read_body(shared, req, BodyKind::Options).await?;
            let response = delete_collection(shared, ws, &target, &body, &query)?;
            special::after_write(shared, ws, &target.def);
            return Ok(response);
        }
        _ => Err(ApiError::method_not_allowed(method.as_str())),
    }?;
    if let Some(user_agent) = status_write
        && !dry_run(&query)?
    {
        shared.status_writes.record(status_writes::Written {
            workspace: ws.to_owned(),
            namespace: target.namespace.clone(),
            group: target.def.group.clone(),
            resource: target.def.plural.clone(),
            name: rp.name.clone().unwrap_or_default(),
            verb: if method == Method::PUT {
                "update"
            } else {
                "patch"
            },
            user_agent,
            resource_version: meta_str(&answer.object, "resourceVersion")
                .unwrap_or_default()
                .to_owned(),
        });
    }
    if method != Method::GET {
        special::after_write(shared, ws, &target.def);
    }
    Ok(respond(&target, answer, &query, accept))
}

/// What a verb on one object answers: the object (or, for some deletes, a
/// `Status`), with its HTTP code and any warnings.
#[derive(Debug)]
pub(crate) struct Answer {
    pub code: StatusCode,
    pub object: Arc<Value>,
    pub warnings: Vec<String>,
}

impl Answer {
    pub fn ok(object: Arc<Value>) -> Answer {
        Answer {
            code: StatusCode::OK,
            object,
            warnings: Vec::new(),
        }
    }

    pub fn created(object: Arc<Value>) -> Answer {
        Answer {
            code: StatusCode::CREATED,
            ..Answer::ok(object)
        }
    }
}

/// The answer as the client's `Accept` asks for it (the object, its
/// PartialObjectMetadata, or a Table), for every verb alike, as kube's
/// `transformResponseObject` does.
pub(crate) fn respond(
    target: &Target,
    answer: Answer,
    query: &Query,
    accept: &str,
) -> Response<Body> {
    let Answer {
        code,
        object,
        warnings,
    } = answer;
    let is_status = object.get("kind").and_then(Value::as_str) == Some("Status");
    let response = if is_status {
        json_response(code, &object)
    } else {
        let object = target.present(&object);
        match Rendering::from_accept(accept) {
            Rendering::Object => bytes_response(
                code,
                Bytes::from(object::to_json(
                    &object,
                    KeyOrder::for_resource(target.def.custom),
                )),
                "application/json",
            ),
            Rendering::Metadata => json_response(code, &table::partial_metadata(&object)),
            Rendering::Table => {
                let rv = meta_str(&object, "resourceVersion").map(str::to_string);
                json_response(
                    code,
                    &table::render(target, &[object], rv, query.get("includeObject")),
                )
            }
        }
    };
    with_warnings(response, &warnings)
}

/// The answer of a storage that prints no Table (the reviews, TokenRequest,
/// `pods/ephemeralcontainers`, CSR `/approval`): the object as it is, or its
/// PartialObjectMetadata. kube skips an `Accept` alternative it cannot
/// serve, so a client that asks for a Table (and, as kubectl does, JSON
/// after it) gets the object.
pub(crate) fn respond_without_table(answer: Answer, accept: &str) -> Response<Body> {
    let Answer {
        code,
        object,
        warnings,
    } = answer;
    let response = match Rendering::from_accept(accept) {
        Rendering::Metadata => json_response(code, &table::partial_metadata(&object)),
        Rendering::Object | Rendering::Table => json_response(code, &object),
    };
    with_warnings(response, &warnings)
}

/// GET, PUT and PATCH of `/scale`: a Scale view over `spec.replicas`.
async fn serve_scale(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    ws: &str,
    target: &Target,
    name: &str,
    query: &Query,
) -> Result<Response<Body>, ApiError> {
    let method = req.method().clone();
    let key = target.def.key();
    if method == Method::GET {
        let object = shared
            .store
            .get(ws, &key, &target.namespace, name)
            .ok_or_else(|| ApiError::not_found(target.subject(), name))?;
        return Ok(json_response(StatusCode::OK, &scale::to_scale(&object)));
    }
    let (body, patch_type) = match method {
        Method::PUT => (read_body(shared, req, BodyKind::Object).await?, None),
        Method::PATCH => {
            let content_type = header_str(&req, header::CONTENT_TYPE).to_string();
            let patch_type = PatchType::from_content_type(&content_type)
                .filter(|t| *t != PatchType::Apply)
                .ok_or_else(|| ApiError::unsupported_patch_type(&content_type))?;
            (
                read_body(shared, req, BodyKind::Patch).await?,
                Some(patch_type),
            )
        }
        other => return Err(ApiError::method_not_allowed(other.as_str())),
    };
    let dry = dry_run(query)?;
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
            let mut view = scale::to_scale(cur);
            match patch_type {
                None => {
                    view = serde_json::from_slice(&body).map_err(|e| {
                        ApiError::bad_request(format!(
                            "couldn't get version/kind; json parse error: {e}"
                        ))
                    })?;
                }
                Some(PatchType::Merge) => {
                    patch::merge_patch(&mut view, &body).map_err(patch_failure)?
                }
                Some(PatchType::Json) => {
                    patch::json_patch(&mut view, &body).map_err(patch_failure)?
                }
                Some(_) => patch::strategic_patch(&mut view, &body).map_err(patch_failure)?,
            }
            let next = scale::apply_scale(cur, &view).map_err(|m| {
                ApiError::invalid(
                    "autoscaling",
                    "Scale",
                    name,
                    vec![status::Cause {
                        reason: "FieldValueInvalid",
                        field: "spec.replicas".into(),
                        message: m,
                    }],
                )
            })?;
            registry::update(target, name, Some(cur), next, registry::Writer::Other)
        },
    )?;
    Ok(json_response(
        StatusCode::OK,
        &scale::to_scale(&written.object),
    ))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyKind {
    /// A whole object (POST/PUT): JSON or YAML.
    Object,
    /// A patch document (its type comes from the Content-Type).
    Patch,
    /// DeleteOptions (optional).
    Options,
}

/// Reads the body within `max_body_bytes`, checking the content type of objects.
/// YAML objects are converted to JSON.
pub(crate) async fn read_body(
    shared: &Shared,
    req: Request<Incoming>,
    kind: BodyKind,
) -> Result<Bytes, ApiError> {
    let limit = shared.config.max_body_bytes;
    let content_type = header_str(&req, header::CONTENT_TYPE).to_string();
    let media = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let is_yaml = media == "application/yaml";
    let is_protobuf = media == "application/vnd.kubernetes.protobuf";
    if kind == BodyKind::Object
        && !(media.is_empty()
            || media == "application/json"
            || is_yaml
            || is_protobuf
            || media == "*/*")
    {
        return Err(ApiError::unsupported_media_type(&content_type));
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::too_large(limit));
    }
    let collected = Limited::new(req.into_body(), limit)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                ApiError::too_large(limit)
            } else {
                ApiError::bad_request(format!("failed to read the request body: {e}"))
            }
        })?;
    let bytes = collected.to_bytes();
    if is_protobuf && kind == BodyKind::Object {
        let value = protobuf::decode(&bytes).map_err(|reason| {
            let mut e = ApiError::unsupported_media_type(&content_type);
            e.message = format!("{} ({reason})", e.message);
            e
        })?;
        return Ok(Bytes::from(serde_json::to_vec(&value).unwrap_or_default()));
    }
    if is_yaml && kind == BodyKind::Object {
        let text = std::str::from_utf8(&bytes)
            .map_err(|e| ApiError::bad_request(format!("the YAML body is not UTF-8: {e}")))?;
        let value: Value = serde_saphyr::from_str(text).map_err(|e| {
            ApiError::bad_request(format!("couldn't get version/kind; yaml parse error: {e}"))
        })?;
        return Ok(Bytes::from(serde_json::to_vec(&value).unwrap_or_default()));
    }
    Ok(bytes)
}

/// `dryRun=All` (any other value is rejected, as kube does).
pub(crate) fn dry_run(query: &Query) -> Result<bool, ApiError> {
    let mut dry = false;
    for v in query.all("dryRun") {
        if v != "All" {
            return Err(ApiError::bad_request(format!(
                "dryRun: Unsupported value: {v:?}: supported values: \"All\""
            )));
        }
        dry = true;
    }
    Ok(dry)
}

/// The filter a list or watch uses: namespace, label and field selectors.
pub(crate) fn list_filter(
    target: &Target,
    query: &Query,
    name: Option<&str>,
    all_namespaces: bool,
) -> Result<Filter, ApiError> {
    let labels = LabelSelector::parse(query.get("labelSelector").unwrap_or_default())
        .map_err(ApiError::bad_request)?;
    let mut field_text = query.get("fieldSelector").unwrap_or_default().to_string();
    if let Some(name) = name {
        if !field_text.is_empty() {
            field_text.push(',');
        }
        field_text.push_str("metadata.name=");
        field_text.push_str(name);
    }
    let fields = FieldSelector::parse(&field_text, |field| {
        fields::source(&target.def, &target.version, field)
    })
    .map_err(ApiError::bad_request)?;
    let namespace = (target.def.namespaced && !all_namespaces).then(|| target.namespace.clone());
    Ok(Filter {
        namespace,
        labels,
        fields,
    })
}

fn get(shared: &Shared, ws: &str, target: &Target, name: &str) -> Result<Answer, ApiError> {
    shared
        .store
        .get(ws, &target.def.key(), &target.namespace, name)
        .map(Answer::ok)
        .ok_or_else(|| ApiError::not_found(target.subject(), name))
}

/// A continue token: the last key returned, opaque to clients.
fn encode_continue(rv: u64, key: &ListKey) -> String {
    let raw = json!({ "v": "uplink.1", "rv": rv, "ws": key.workspace, "ns": key.namespace, "name": key.name })
        .to_string();
    object::base64_encode(raw.as_bytes())
}

fn decode_continue(token: &str) -> Result<(u64, ListKey), ApiError> {
    let bad = || ApiError::bad_request(format!("continue key is not valid: {token:?}"));
    let raw = object::base64_decode(token).ok_or_else(bad)?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let text = |field: &str| v[field].as_str().map(str::to_string).ok_or_else(bad);
    let rv = v["rv"].as_u64().ok_or_else(bad)?;
    Ok((
        rv,
        ListKey {
            workspace: text("ws")?,
            namespace: text("ns")?,
            name: text("name")?,
        },
    ))
}

fn list(
    shared: &Shared,
    scope: &Scope,
    target: &Target,
    query: &Query,
    all_namespaces: bool,
    accept: &str,
) -> Result<Response<Body>, ApiError> {
    let filter = list_filter(target, query, None, all_namespaces)?;
    let limit = match query.get("limit") {
        None | Some("") => None,
        Some(l) => match l.parse::<i64>() {
            Ok(n) if n > 0 => usize::try_from(n).ok(),
            Ok(_) => None,
            Err(_) => {
                return Err(ApiError::bad_request(format!(
                    "limit: Invalid value: {l:?}"
                )));
            }
        },
    };
    let after = match query.get("continue") {
        None | Some("") => None,
        Some(token) => Some(decode_continue(token)?),
    };
    let page = shared.store.list(
        scope,
        &target.def.key(),
        &filter,
        after.as_ref().map(|(_, k)| k.clone()),
        limit,
        after.as_ref().map(|(rv, _)| *rv),
    )?;
    // Continued lists are served from, and report, their first page's resourceVersion.
    let rv = page.rv;
    let token = page.next.as_ref().map(|k| encode_continue(rv, k));
    let items: Vec<Arc<Value>> = page.items.iter().map(|o| target.present(o)).collect();
    match Rendering::from_accept(accept) {
        Rendering::Table => {
            let mut t = table::render(
                target,
                &items,
                Some(rv.to_string()),
                query.get("includeObject"),
            );
            if let Some(token) = &token {
                t["metadata"]["continue"] = json!(token);
            }
            Ok(json_response(StatusCode::OK, &t))
        }
        rendering => {
            let mut metadata = json!({ "resourceVersion": rv.to_string() });
            if let Some(token) = token {
                metadata["continue"] = json!(token);
                if query.get("labelSelector").is_none_or(str::is_empty)
                    && query.get("fieldSelector").is_none_or(str::is_empty)
                {
                    metadata["remainingItemCount"] = json!(page.remaining);
                }
            }
            let (kind, api_version) = if rendering == Rendering::Metadata {
                (
                    "PartialObjectMetadataList".to_string(),
                    "meta.k8s.io/v1".to_string(),
                )
            } else {
                (target.def.list_kind.clone(), target.api_version())
            };
            // Items are serialised one by one outside any lock.
            let mut out = Vec::with_capacity(256 + items.len() * 512);
            out.extend_from_slice(
                format!(
                    "{{\"kind\":{},\"apiVersion\":{},\"metadata\":{},\"items\":[",
                    json!(kind),
                    json!(api_version),
                    metadata
                )
                .as_bytes(),
            );
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                let written = if rendering == Rendering::Metadata {
                    object::write_json(
                        &mut out,
                        &table::partial_metadata(item),
                        KeyOrder::KindFirst,
                    )
                } else {
                    object::write_json(&mut out, item, KeyOrder::for_resource(target.def.custom))
                };
                written.map_err(|e| ApiError::internal(e.to_string()))?;
            }
            out.extend_from_slice(b"]}");
            Ok(bytes_response(
                StatusCode::OK,
                Bytes::from(out),
                "application/json",
            ))
        }
    }
}

fn create(
    shared: &Shared,
    ws: &str,
    target: &Target,
    body: &[u8],
    query: &Query,
) -> Result<Answer, ApiError> {
    let dry = dry_run(query)?;
    let validation = FieldValidation::parse(query.get("fieldValidation"))?;
    let mut object = registry::decode_body(target, body)?;
    registry::check_namespace(target, &mut object)?;
    let warnings = schema::prune(target, &mut object, validation)?;
    let name = registry::requested_name(target, &object)?;
    let written = shared.store.write(
        ws,
        &target.def.key(),
        &target.namespace,
        name,
        dry,
        |view, name, current| registry::create(target, view, name, current, object),
    )?;
    Ok(Answer {
        code: StatusCode::CREATED,
        object: written.object,
        warnings,
    })
}

fn update(
    shared: &Shared,
    ws: &str,
    target: &Target,
    name: &str,
    body: &[u8],
    query: &Query,
) -> Result<Answer, ApiError> {
    let dry = dry_run(query)?;
    let validation = FieldValidation::parse(query.get("fieldValidation"))?;
    let mut object = registry::decode_body(target, body)?;
    registry::check_name(&object, name)?;
    registry::check_namespace(target, &mut object)?;
    let warnings = schema::prune(target, &mut object, validation)?;
    let written = shared.store.write(
        ws,
        &target.def.key(),
        &target.namespace,
        NameChoice::Exact(name.to_string()),
        dry,
        |_, name, current| registry::update(target, name, current, object, registry::Writer::Other),
    )?;
    Ok(Answer {
        code: StatusCode::OK,
        object: written.object,
        warnings,
    })
}

pub(crate) fn patch_failure(failure: PatchFailure) -> ApiError {
    match failure {
        PatchFailure::Malformed(m) => ApiError::bad_request(m),
        PatchFailure::NotApplicable(m) => {
            let mut e = ApiError::bad_request(m);
            e.code = 422;
            e.reason = "Invalid";
            e
        }
    }
}

fn patch(
    shared: &Shared,
    ws: &str,
    target: &Target,
    name: &str,
    patch_type: PatchType,
    body: &[u8],
    query: &Query,
) -> Result<Answer, ApiError> {
    let dry = dry_run(query)?;
    let validation = FieldValidation::parse(query.get("fieldValidation"))?;
    let mut warnings = Vec::new();
    let patch_options_invalid = |field: &str, message: &str| {
        ApiError::invalid(
            "meta.k8s.io",
            "PatchOptions",
            "",
            vec![status::Cause {
                reason: if field == "fieldManager" {
                    "FieldValueRequired"
                } else {
                    "FieldValueForbidden"
                },
                field: field.to_string(),
                message: message.to_string(),
            }],
        )
    };
    let applied = if patch_type == PatchType::Apply {
        if query.get("fieldManager").is_none_or(str::is_empty) {
            return Err(patch_options_invalid(
                "fieldManager",
                "Required value: is required for apply patch",
            ));
        }
        let text = std::str::from_utf8(body)
            .map_err(|e| ApiError::bad_request(format!("the apply body is not UTF-8: {e}")))?;
        let value: Value = serde_saphyr::from_str(text)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
        if !value.is_object() {
            return Err(ApiError::bad_request(
                "the apply configuration must be an object",
            ));
        }
        if value
            .get("apiVersion")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
            || value
                .get("kind")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
        {
            return Err(ApiError::bad_request(
                "invalid object type: apiVersion and kind must be set in an apply configuration",
            ));
        }
        // No name check here: as kube-apiserver's patcher does, the name is
        // checked on the result, so an apply to an existing object may omit
        // it (the live object's name stays), while a create must carry it.
        Some(registry::check_type(target, value)?)
    } else {
        if query.get("force").is_some() {
            return Err(patch_options_invalid(
                "force",
                "Forbidden: may not be specified for non-apply patch",
            ));
        }
        None
    };
    let mut created = false;
    let force = query.flag("force");
    let manager = query.get("fieldManager").unwrap_or_default().to_string();
    let api_version = target.api_version();
    let applier = apply::Applier {
        manager: &manager,
        force,
        api_version: &api_version,
        status: target.status,
        has_status_subresource: target.has_status(),
    };
    let written = shared.store.write(
        ws,
        &target.def.key(),
        &target.namespace,
        NameChoice::Exact(name.to_string()),
        dry,
        |view, name, current| {
            let Some(cur) = current else {
                return match &applied {
                    Some(config) if !target.status => {
                        created = true;
                        let object = apply::apply(None, config, &applier)?;
                        registry::check_name(&object, name)?;
                        let mut object = registry::into_storage(target, object)?;
                        registry::check_namespace(target, &mut object)?;
                        warnings = schema::prune(target, &mut object, validation)?;
                        registry::create(target, view, name, None, object)
                    }
                    _ => Err(ApiError::not_found(target.subject(), name)),
                };
            };
            // Patches apply to the object as this version shows it.
            let shown = target.present(cur);
            let mut patched = (*shown).clone();
            let writer = match (patch_type, &applied) {
                (PatchType::Apply, Some(config)) => {
                    // As kube-apiserver: a resourceVersion in the applied
                    // configuration is a precondition (optimistic locking).
                    let wanted = config["metadata"]["resourceVersion"].as_str();
                    if let Some(wanted) = wanted.filter(|v| !v.is_empty())
                        && shown["metadata"]["resourceVersion"].as_str() != Some(wanted)
                    {
                        return Err(ApiError::conflict(target.subject(), name));
                    }
                    patched = apply::apply(Some(&shown), config, &applier)?;
                    registry::Writer::Apply
                }
                (PatchType::Apply, None) => {
                    return Err(ApiError::internal("apply configuration missing"));
                }
                (PatchType::Merge, _) => {
                    patch::merge_patch(&mut patched, body).map_err(patch_failure)?;
                    registry::Writer::Other
                }
                (PatchType::Json, _) => {
                    patch::json_patch(&mut patched, body).map_err(patch_failure)?;
                    registry::Writer::Other
                }
                (PatchType::Strategic, _) => {
                    patch::strategic_patch(&mut patched, body).map_err(patch_failure)?;
                    registry::Writer::Other
                }
            };
            let patched = registry::check_type(target, patched)?;
            let mut patched = registry::into_storage(target, patched)?;
            registry::check_name(&patched, name)?;
            registry::check_namespace(target, &mut patched)?;
            warnings = schema::prune(target, &mut patched, validation)?;
            registry::update(target, name, Some(cur), patched, writer)
        },
    )?;
    let code = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(Answer {
        code,
        object: written.object,
        warnings,
    })
}

fn delete(
    shared: &Shared,
    ws: &str,
    target: &Target,
    name: &str,
    body: &[u8],
    query: &Query,
) -> Result<Answer, ApiError> {
    let dry = dry_run(query)? || body_dry_run(body);
    let options = DeleteOptions::from_request(body, query)?;
    let written = shared.store.write(
        ws,
        &target.def.key(),
        &target.namespace,
        NameChoice::Exact(name.to_string()),
        dry,
        |_, name, current| registry::delete(target, name, current, &options),
    )?;
    if !dry && !written.removed {
        shared.kubelet.terminating(ws, &written.object);
    }
    if written.removed && !registry::answers_delete_with_object(&target.def) {
        let status = registry::deleted_status(&target.def, &written.object);
        return Ok(Answer::ok(Arc::new(status)));
    }
    Ok(Answer::ok(written.object))
}

/// `dryRun: ["All"]` inside a DeleteOptions body.
fn body_dry_run(body: &[u8]) -> bool {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| {
            v.get("dryRun")
                .and_then(Value::as_array)
                .map(|a| a.iter().any(|x| x == "All"))
        })
        .unwrap_or(false)
}

fn delete_collection(
    shared: &Shared,
    ws: &str,
    target: &Target,
    body: &[u8],
    query: &Query,
) -> Result<Response<Body>, ApiError> {
    let dry = dry_run(query)? || body_dry_run(body);
    let options = DeleteOptions::from_request(body, query)?;
    let filter = list_filter(target, query, None, false)?;
    let scope = Scope::Workspace(ws.to_string());
    let page = shared
        .store
        .list(&scope, &target.def.key(), &filter, None, None, None)?;
    let mut deleted = Vec::new();
    for item in page.items {
        let name = meta_str(&item, "name").unwrap_or_default().to_string();
        let result = shared.store.write(
            ws,
            &target.def.key(),
            &target.namespace,
            NameChoice::Exact(name.clone()),
            dry,
            |_, name, current| registry::delete(target, name, current, &options),
        );
        match result {
            Ok(w) => {
                if !dry && !w.removed {
                    shared.kubelet.terminating(ws, &w.object);
                }
                deleted.push(target.present(&w.object));
            }
            // Deleted concurrently: nothing left to do.
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    let list = json!({
        "kind": target.def.list_kind,
        "apiVersion": target.api_version(),
        "metadata": { "resourceVersion": shared.store.current_rv().to_string() },
        "items": deleted.iter().map(|o| (**o).clone()).collect::<Vec<Value>>(),
    });
    Ok(json_response(StatusCode::OK, &list))
}

/// Adds `Warning: 299 - "..."` headers, as kube does for dropped fields.
pub(crate) fn with_warnings(mut response: Response<Body>, warnings: &[String]) -> Response<Body> {
    for w in warnings {
        let escaped = w.replace('\\', "\\\\").replace('"', "\\\"");
        if let Ok(v) = HeaderValue::from_str(&format!("299 - \"{escaped}\"")) {
            response.headers_mut().append(header::WARNING, v);
        }
    }
    response
}

/// A whole-document response.
pub(crate) fn bytes_response(
    status: StatusCode,
    body: Bytes,
    content_type: &str,
) -> Response<Body> {
    let mut response = Response::new(Full::new(body).boxed_unsync());
    *response.status_mut() = status;
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(content_type) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, private"),
    );
    response
}

pub(crate) fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    typed_json_response(status, value, "application/json")
}

fn typed_json_response(status: StatusCode, value: &Value, content_type: &str) -> Response<Body> {
    let body = object::to_json(value, KeyOrder::KindFirst);
    bytes_response(status, Bytes::from(body), content_type)
}

/// A `Status` failure response.
pub(crate) fn error_response(error: &ApiError) -> Response<Body> {
    let status = StatusCode::from_u16(error.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = json_response(status, &error.to_status());
    if let Some(seconds) = error.retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip_and_reject_garbage() {
        let key = ListKey {
            workspace: "root:a".into(),
            namespace: "ns".into(),
            name: "web".into(),
        };
        let token = encode_continue(42, &key);
        assert_eq!(decode_continue(&token).ok(), Some((42, key)));
        assert!(decode_continue("garbage!").is_err());
    }
}
