//! Request paths: what a URL (optionally under `/clusters/<workspace>`)
//! addresses, following kube-apiserver's `RequestInfoFactory`, plus query
//! string decoding.

/// What a request path addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    Version,
    /// `/api`
    LegacyApis,
    /// `/apis`
    Apis,
    /// `/apis/<group>`
    Group(String),
    /// `/api/v1` or `/apis/<group>/<version>`
    GroupVersion {
        group: String,
        version: String,
    },
    /// `/openapi/v2` or `/openapi/v3[/...]`
    OpenApi(String),
    /// `/healthz`, `/livez`, `/readyz` (and their sub-paths)
    Health,
    /// `/metrics` of the whole server (not under `/clusters/...`)
    Metrics,
    Resource(ResourcePath),
    Unknown,
}

/// A path that addresses a resource, a collection or a subresource.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct ResourcePath {
    pub group: String,
    pub version: String,
    pub namespace: Option<String>,
    pub resource: String,
    pub name: Option<String>,
    pub subresource: Option<String>,
    /// The deprecated `/api/v1/watch/...` form.
    pub legacy_watch: bool,
}

/// kcp's name for the wildcard logical cluster, `/clusters/*`.
pub(crate) const WILDCARD: &str = "*";

/// A parsed request path: the workspace ("" without a `/clusters/` prefix) and the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RequestPath {
    pub workspace: String,
    /// `/clusters/*`: kcp's wildcard, every workspace at once (`workspace` is "").
    pub all_workspaces: bool,
    pub target: Target,
}

impl RequestPath {
    /// The logical cluster the request is authenticated and authorized in,
    /// as kcp names it: the workspace, or [`WILDCARD`] under `/clusters/*`.
    pub fn logical_cluster(&self) -> &str {
        if self.all_workspaces {
            WILDCARD
        } else {
            &self.workspace
        }
    }
}

/// Checks a KCP logical cluster path such as `root:org:team-a`.
pub(crate) fn validate_workspace(ws: &str) -> Result<(), String> {
    if ws.is_empty() {
        return Err("must not be empty".into());
    }
    if ws.len() > 1024 {
        return Err("must be at most 1024 characters".into());
    }
    for part in ws.split(':') {
        let ok = !part.is_empty()
            && part.len() <= 63
            && part
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !part.starts_with('-')
            && !part.ends_with('-');
        if !ok {
            return Err(format!(
                "segment {part:?} must be a lowercase RFC 1123 label (a-z, 0-9, '-'), segments separated by ':'"
            ));
        }
    }
    Ok(())
}

/// Parses a URL path. Never fails: anything unrecognised is [`Target::Unknown`],
/// and a malformed workspace is reported as `Err` with a message.
pub(crate) fn parse(path: &str) -> Result<RequestPath, String> {
    // Go's HTTP server (and so kube-apiserver) answers malformed escapes with 400.
    let segments: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            if has_invalid_escape(s) {
                Err(format!("invalid URL escape in {s:?}"))
            } else {
                Ok(percent_decode(s))
            }
        })
        .collect::<Result<_, _>>()?;
    let mut rest: &[String] = &segments;
    let mut workspace = String::new();
    let mut all_workspaces = false;
    if rest.first().map(String::as_str) == Some("clusters") {
        let Some(ws) = rest.get(1) else {
            return Ok(RequestPath {
                workspace,
                all_workspaces,
                target: Target::Unknown,
            });
        };
        if ws == WILDCARD {
            all_workspaces = true;
        } else {
            validate_workspace(ws)
                .map_err(|reason| format!("invalid workspace {ws:?}: {reason}"))?;
            workspace = ws.clone();
        }
        rest = rest.get(2..).unwrap_or_default();
    }
    let target = match parse_target(rest) {
        // Metrics are the whole server's, as kcp serves them.
        Target::Metrics if all_workspaces || !workspace.is_empty() => Target::Unknown,
        target => target,
    };
    Ok(RequestPath {
        workspace,
        all_workspaces,
        target,
    })
}

fn parse_target(seg: &[String]) -> Target {
    let s: Vec<&str> = seg.iter().map(String::as_str).collect();
    match s.as_slice() {
        ["version"] => Target::Version,
        ["healthz" | "livez" | "readyz", ..] => Target::Health,
        ["metrics"] => Target::Metrics,
        ["openapi", rest @ ..] if !rest.is_empty() => Target::OpenApi(rest.join("/")),
        ["api"] => Target::LegacyApis,
        ["api", version] => Target::GroupVersion {
            group: String::new(),
            version: (*version).to_string(),
        },
        ["api", version, rest @ ..] => parse_resource("", version, rest),
        ["apis"] => Target::Apis,
        ["apis", group] => Target::Group((*group).to_string()),
        ["apis", group, version] => Target::GroupVersion {
            group: (*group).to_string(),
            version: (*version).to_string(),
        },
        ["apis", group, version, rest @ ..] => parse_resource(group, version, rest),
        _ => Target::Unknown,
    }
}

/// The part after `/api/v1` or `/apis/<g>/<v>`, as kube's RequestInfoFactory reads it.
fn parse_resource(group: &str, version: &str, rest: &[&str]) -> Target {
    let mut parts = rest;
    let mut legacy_watch = false;
    if parts.first() == Some(&"watch") {
        legacy_watch = true;
        parts = &parts[1..];
    }
    let mut namespace = None;
    if parts.first() == Some(&"namespaces") && parts.len() > 1 {
        // `/namespaces/<ns>/status` and `/finalize` are subresources of the
        // namespace itself; anything else below a namespace is a namespaced resource.
        let is_namespace_subresource = matches!(parts.get(2), Some(&"status" | &"finalize"));
        if parts.len() > 2 && !is_namespace_subresource {
            namespace = Some(parts[1].to_string());
            parts = &parts[2..];
        }
    }
    let (resource, name, subresource) = match parts {
        [resource] => (*resource, None, None),
        [resource, name] => (*resource, Some(*name), None),
        [resource, name, sub] => (*resource, Some(*name), Some(*sub)),
        _ => return Target::Unknown,
    };
    if resource.is_empty() {
        return Target::Unknown;
    }
    Target::Resource(ResourcePath {
        group: group.to_string(),
        version: version.to_string(),
        namespace,
        resource: resource.to_string(),
        name: name.map(str::to_string),
        subresource: subresource.map(str::to_string),
        legacy_watch,
    })
}

/// Whether a `%` is not followed by two hex digits.
fn has_invalid_escape(s: &str) -> bool {
    let b = s.as_bytes();
    b.iter().enumerate().any(|(i, c)| {
        *c == b'%'
            && !(b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    })
}

/// Decodes `%XX` escapes; invalid escapes are kept as they are.
pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).and_then(|c| (*c as char).to_digit(16)),
                bytes.get(i + 2).and_then(|c| (*c as char).to_digit(16)),
            )
        {
            // Two hex digits are at most 255.
            out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
            i += 3;
            continue;
        }
        out.push(b);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A decoded query string.
#[derive(Debug, Clone, Default)]
pub(crate) struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    pub fn parse(query: Option<&str>) -> Query {
        let pairs = query
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (
                    percent_decode(&k.replace('+', " ")),
                    percent_decode(&v.replace('+', " ")),
                )
            })
            .collect();
        Query { pairs }
    }

    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `key` (e.g. `dryRun=All`).
    pub fn all(&self, key: &str) -> impl Iterator<Item = &str> {
        self.pairs
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A boolean parameter as kube parses it (`true`, `1`).
    pub fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1" | "True" | "TRUE"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(path: &str) -> ResourcePath {
        match parse(path).map(|p| p.target) {
            Ok(Target::Resource(r)) => r,
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn namespaced_object_and_status() {
        let r = resource("/apis/apps/v1/namespaces/ns1/deployments/web/status");
        assert_eq!(r.group, "apps");
        assert_eq!(r.namespace.as_deref(), Some("ns1"));
        assert_eq!(r.resource, "deployments");
        assert_eq!(r.name.as_deref(), Some("web"));
        assert_eq!(r.subresource.as_deref(), Some("status"));
    }

    #[test]
    fn namespaces_themselves() {
        let r = resource("/api/v1/namespaces/ns1");
        assert_eq!(
            (r.resource.as_str(), r.name.as_deref(), r.namespace),
            ("namespaces", Some("ns1"), None)
        );
        let r = resource("/api/v1/namespaces/ns1/status");
        assert_eq!(r.subresource.as_deref(), Some("status"));
        assert_eq!(r.name.as_deref(), Some("ns1"));
        let r = resource("/api/v1/namespaces");
        assert_eq!((r.resource.as_str(), r.name), ("namespaces", None));
        let r = resource("/api/v1/namespaces/ns1/pods");
        assert_eq!(
            (r.resource.as_str(), r.namespace.as_deref()),
            ("pods", Some("ns1"))
        );
    }

    #[test]
    fn workspaces_prefix_every_path() {
        let p = parse("/clusters/root:org:team-a/api/v1/namespaces/default/configmaps/x")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.workspace, "root:org:team-a");
        assert!(matches!(p.target, Target::Resource(ref r) if r.resource == "configmaps"));
        let p = parse("/clusters/root%3Aa/apis").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((p.workspace.as_str(), p.target), ("root:a", Target::Apis));
        assert!(parse("/clusters/Root_A/api").is_err());
        assert!(parse("/api/v1/namespaces/%ZZ/configmaps").is_err());
        assert_eq!(parse("/api").map(|p| p.workspace), Ok(String::new()));
        let p = parse("/clusters/*/apis/apps/v1/deployments").unwrap_or_else(|e| panic!("{e}"));
        assert!(p.all_workspaces && p.workspace.is_empty());
        assert!(matches!(p.target, Target::Resource(ref r) if r.resource == "deployments"));
        assert!(parse("/clusters/root:a/api").is_ok_and(|p| !p.all_workspaces));
    }

    #[test]
    fn discovery_paths() {
        let t = |p: &str| parse(p).map(|r| r.target).unwrap_or(Target::Unknown);
        assert_eq!(t("/version"), Target::Version);
        assert_eq!(
            t("/api/v1"),
            Target::GroupVersion {
                group: String::new(),
                version: "v1".into()
            }
        );
        assert_eq!(t("/apis/apps"), Target::Group("apps".into()));
        assert_eq!(
            t("/openapi/v3/apis/apps/v1"),
            Target::OpenApi("v3/apis/apps/v1".into())
        );
        assert_eq!(t("/nope"), Target::Unknown);
        assert_eq!(t("/api/v1/a/b/c/d"), Target::Unknown);
        // Metrics are the whole server's, never a workspace's.
        assert_eq!(t("/metrics"), Target::Metrics);
        assert_eq!(t("/clusters/root:a/metrics"), Target::Unknown);
        assert_eq!(t("/clusters/*/metrics"), Target::Unknown);
    }

    #[test]
    fn legacy_watch_prefix() {
        let r = resource("/api/v1/watch/namespaces/ns/pods");
        assert!(r.legacy_watch);
        assert_eq!(r.resource, "pods");
    }

    #[test]
    fn query_decoding() {
        let q = Query::parse(Some(
            "labelSelector=app%3Dweb%2Cenv+in+(a)&watch=1&dryRun=All",
        ));
        assert_eq!(q.get("labelSelector"), Some("app=web,env in (a)"));
        assert!(q.flag("watch"));
        assert_eq!(q.all("dryRun").collect::<Vec<_>>(), ["All"]);
        assert_eq!(q.get("missing"), None);
    }
}
