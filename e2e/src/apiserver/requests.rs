//! Counts of the requests a server received, for observers such as
//! benchmarks ("how many times did the hub read KCP per change?"): by
//! workspace, verb and resource, read from Rust as a snapshot
//! ([`super::ApiServer::requests`]) and served as Prometheus text on
//! `GET /metrics` (authenticated and authorized as kube-apiserver's is).
//!
//! A request is counted when it arrives and its path parses, whatever its
//! answer (authentication and authorization failures and injected faults
//! included), so a count is what a client asked for, not what succeeded.
//! Verbs are kube's `RequestInfo` verbs (`get`, `list`, `watch`, `create`,
//! `update`, `patch`, `delete`, `deletecollection`), so a list is told from
//! a get and a watch from both; requests that address no resource
//! (discovery, OpenAPI, `/version`, health, `/metrics`) are counted under
//! their path with the HTTP method as verb. Writes the server makes itself
//! (such as the stand-in kubelet's) are not requests and are not counted.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::{Mutex, PoisonError};

use super::rbac::Attributes;

/// What one counter counts: requests of one verb on one resource (or
/// non-resource path) in one logical cluster.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestKey {
    /// The logical cluster: "" for the physical cluster, a workspace path
    /// (`root:org:team-a`), or `*` for kcp's wildcard `/clusters/*`.
    pub workspace: String,
    /// kube's verb for resource requests (`get`, `list`, `watch`, ...);
    /// the lowercase HTTP method for non-resource requests.
    pub verb: String,
    /// The API group ("" for the core group and for non-resource requests).
    pub group: String,
    /// The resource (`deployments`); "" for non-resource requests.
    pub resource: String,
    /// The subresource (`status`, `scale`, ...) or "".
    pub subresource: String,
    /// The path of a non-resource request (`/apis`, `/openapi/v3`,
    /// without the `/clusters/<workspace>` prefix); "" for resource requests.
    pub path: String,
}

impl RequestKey {
    /// Whether this counts requests on a resource (not discovery, health, ...).
    pub fn is_resource(&self) -> bool {
        !self.resource.is_empty()
    }

    /// Whether this counts reads of stored objects: a `get` or a `list`
    /// of a resource (watches are not reads here: one watch serves many
    /// changes).
    pub fn is_read(&self) -> bool {
        self.is_resource() && matches!(self.verb.as_str(), "get" | "list")
    }
}

/// A snapshot of a server's request counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestCounts {
    counts: BTreeMap<RequestKey, u64>,
}

impl RequestCounts {
    /// Every counter, in key order (workspace, verb, group, resource, ...).
    pub fn iter(&self) -> impl Iterator<Item = (&RequestKey, u64)> {
        self.counts.iter().map(|(k, n)| (k, *n))
    }

    /// The sum of the counters whose key `select` accepts.
    pub fn total(&self, select: impl Fn(&RequestKey) -> bool) -> u64 {
        self.counts
            .iter()
            .filter(|(k, _)| select(k))
            .map(|(_, n)| n)
            .sum()
    }

    /// Requests of `verb` on any resource, in every logical cluster.
    pub fn verb(&self, verb: &str) -> u64 {
        self.total(|k| k.is_resource() && k.verb == verb)
    }

    /// Reads of stored objects (`get` and `list` of resources), in every
    /// logical cluster; see [`RequestKey::is_read`].
    pub fn reads(&self) -> u64 {
        self.total(RequestKey::is_read)
    }

    /// The counters of one logical cluster ("" physical, `*` the wildcard).
    pub fn in_workspace(&self, workspace: &str) -> RequestCounts {
        RequestCounts {
            counts: self
                .counts
                .iter()
                .filter(|(k, _)| k.workspace == workspace)
                .map(|(k, n)| (k.clone(), *n))
                .collect(),
        }
    }

    /// What was counted after `earlier` (a snapshot of the same server),
    /// for measuring one phase of a run; counters that did not move are left out.
    pub fn since(&self, earlier: &RequestCounts) -> RequestCounts {
        RequestCounts {
            counts: self
                .counts
                .iter()
                .filter_map(|(k, n)| {
                    let before = earlier.counts.get(k).copied().unwrap_or(0);
                    let moved = n.saturating_sub(before);
                    (moved > 0).then(|| (k.clone(), moved))
                })
                .collect(),
        }
    }

    /// The counters in Prometheus' text exposition format, as
    /// `uplink_testbed_requests_total{workspace,verb,group,resource,subresource,path}`.
    pub fn to_prometheus(&self) -> String {
        let mut out = String::from(
            "# HELP uplink_testbed_requests_total Requests the test-bed API server received, by logical cluster, verb and resource.\n\
             # TYPE uplink_testbed_requests_total counter\n",
        );
        for (k, n) in &self.counts {
            // Writing to a String cannot fail.
            let _ = writeln!(
                out,
                "uplink_testbed_requests_total{{workspace=\"{}\",verb=\"{}\",group=\"{}\",resource=\"{}\",subresource=\"{}\",path=\"{}\"}} {n}",
                label(&k.workspace),
                label(&k.verb),
                label(&k.group),
                label(&k.resource),
                label(&k.subresource),
                label(&k.path),
            );
        }
        out
    }
}

/// A label value escaped as the text format wants (`\`, `"`, newline).
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The live counters of one server.
#[derive(Debug, Default)]
pub(crate) struct RequestCounter {
    counts: Mutex<HashMap<RequestKey, u64>>,
}

impl RequestCounter {
    /// Counts one request in `workspace` (its logical cluster) asking for `attrs`.
    pub fn record(&self, workspace: &str, attrs: &Attributes) {
        let key = match attrs {
            Attributes::Resource {
                verb,
                group,
                resource,
                subresource,
                ..
            } => RequestKey {
                workspace: workspace.to_string(),
                verb: verb.clone(),
                group: group.clone(),
                resource: resource.clone(),
                subresource: subresource.clone(),
                path: String::new(),
            },
            Attributes::NonResource { verb, path } => RequestKey {
                workspace: workspace.to_string(),
                verb: verb.clone(),
                group: String::new(),
                resource: String::new(),
                subresource: String::new(),
                path: path.clone(),
            },
        };
        // Nothing panics under this lock; a poisoned map still counts.
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        *counts.entry(key).or_insert(0) += 1;
    }

    /// The counts so far.
    pub fn snapshot(&self) -> RequestCounts {
        let counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        RequestCounts {
            counts: counts.iter().map(|(k, n)| (k.clone(), *n)).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(verb: &str, group: &str, resource: &str, subresource: &str) -> Attributes {
        Attributes::Resource {
            verb: verb.into(),
            group: group.into(),
            version: "v1".into(),
            namespace: "default".into(),
            resource: resource.into(),
            subresource: subresource.into(),
            name: String::new(),
        }
    }

    fn counter() -> RequestCounter {
        let counter = RequestCounter::default();
        counter.record("root:a", &resource("list", "apps", "deployments", ""));
        counter.record("root:a", &resource("list", "apps", "deployments", ""));
        counter.record("root:a", &resource("watch", "apps", "deployments", ""));
        counter.record("root:b", &resource("get", "", "configmaps", ""));
        counter.record("", &resource("patch", "apps", "deployments", "status"));
        counter.record("*", &resource("list", "apps", "deployments", ""));
        counter.record(
            "root:a",
            &Attributes::NonResource {
                verb: "get".into(),
                path: "/apis".into(),
            },
        );
        counter
    }

    #[test]
    fn counts_by_workspace_verb_and_resource() {
        let counts = counter().snapshot();
        assert_eq!(counts.verb("list"), 3);
        assert_eq!(counts.verb("watch"), 1);
        assert_eq!(counts.verb("get"), 1, "discovery is not a resource get");
        // Reads: gets and lists of resources, not watches, writes or discovery.
        assert_eq!(counts.reads(), 4);
        let a = counts.in_workspace("root:a");
        assert_eq!(a.reads(), 2);
        assert_eq!(a.total(|_| true), 4);
        assert_eq!(counts.in_workspace("*").verb("list"), 1);
        assert_eq!(
            counts.in_workspace("").total(|k| k.subresource == "status"),
            1
        );
    }

    #[test]
    fn since_leaves_what_moved() {
        let counter = counter();
        let before = counter.snapshot();
        counter.record("root:a", &resource("list", "apps", "deployments", ""));
        counter.record("root:c", &resource("get", "", "secrets", ""));
        let moved = counter.snapshot().since(&before);
        let keys: Vec<(String, String, String, u64)> = moved
            .iter()
            .map(|(k, n)| (k.workspace.clone(), k.verb.clone(), k.resource.clone(), n))
            .collect();
        assert_eq!(
            keys,
            [
                ("root:a".into(), "list".into(), "deployments".into(), 1),
                ("root:c".into(), "get".into(), "secrets".into(), 1),
            ]
        );
        assert_eq!(before.since(&before), RequestCounts::default());
    }

    #[test]
    fn prometheus_text_has_one_line_per_counter() {
        let counter = RequestCounter::default();
        counter.record("root:a", &resource("list", "apps", "deployments", ""));
        counter.record(
            "",
            &Attributes::NonResource {
                verb: "get".into(),
                path: "/a\"b".into(),
            },
        );
        let text = counter.snapshot().to_prometheus();
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            samples,
            [
                "uplink_testbed_requests_total{workspace=\"\",verb=\"get\",group=\"\",resource=\"\",subresource=\"\",path=\"/a\\\"b\"} 1",
                "uplink_testbed_requests_total{workspace=\"root:a\",verb=\"list\",group=\"apps\",resource=\"deployments\",subresource=\"\",path=\"\"} 1",
            ]
        );
        assert!(text.contains("# TYPE uplink_testbed_requests_total counter\n"));
    }
}
