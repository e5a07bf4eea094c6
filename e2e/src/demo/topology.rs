//! What the demo runs: the KCP workspaces, the physical clusters and which
//! Deployment lives where.
//!
//! The demo's downstream namespaces are named by the agent
//! ([`super::seed::downstream_namespace`]). [`DemoObject::downstream_namespace`]
//! and [`DemoObject::namespace_locator`] are the status-only benchmarks'
//! naming, for the copies they make by hand ([`super::seed::seed`]).
//!
//! Each object is placed on exactly one cluster (aggregation across clusters
//! is not part of the walking skeleton), and every cluster gets at least one.

use std::fmt;

/// The annotation that tells the agent which KCP workspace and namespace a
/// downstream namespace belongs to.
pub const NAMESPACE_LOCATOR_ANNOTATION: &str = "kcp.io/namespace-locator";

/// The KCP workspaces the demo creates.
pub const WORKSPACES: [&str; 2] = ["root:demo:a", "root:demo:b"];

/// The desired replica count of every demo Deployment.
pub const DESIRED_REPLICAS: i32 = 3;

/// Names for the first demo objects; later ones are `svc-<n>`.
const OBJECT_NAMES: [&str; 8] = [
    "web", "api", "worker", "cache", "search", "mailer", "queue", "billing",
];

/// One demo Deployment: where it lives upstream and on which cluster it runs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DemoObject {
    pub workspace: String,
    pub namespace: String,
    pub name: String,
    pub cluster: String,
}

impl DemoObject {
    /// The namespace that holds the copy the status-only benchmarks make by
    /// hand (not the agent's naming: see the module documentation).
    pub fn downstream_namespace(&self) -> String {
        downstream_namespace(&self.workspace, &self.namespace)
    }

    /// The JSON value of the namespace locator annotation of
    /// [`Self::downstream_namespace`].
    pub fn namespace_locator(&self) -> String {
        serde_json::json!({ "cluster": self.workspace, "namespace": self.namespace }).to_string()
    }
}

impl fmt::Display for DemoObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.workspace, self.namespace, self.name)
    }
}

/// The clusters and the objects placed on them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub clusters: Vec<String>,
    pub objects: Vec<DemoObject>,
}

impl Topology {
    /// `clusters` clusters named `cluster-1` ... and `max(3, clusters)`
    /// objects, dealt round-robin over the clusters. Two of every three
    /// objects live in `root:demo:a/shop`, the third in `root:demo:b/batch`.
    pub fn new(clusters: usize) -> Topology {
        let cluster_names: Vec<String> = (1..=clusters).map(|i| format!("cluster-{i}")).collect();
        let object_count = clusters.max(3);
        let objects = (0..object_count)
            .map(|i| {
                let (workspace, namespace) = if i % 3 == 2 {
                    (WORKSPACES[1], "batch")
                } else {
                    (WORKSPACES[0], "shop")
                };
                let name = OBJECT_NAMES
                    .get(i)
                    .map(|n| (*n).to_owned())
                    .unwrap_or_else(|| format!("svc-{}", i + 1));
                DemoObject {
                    workspace: workspace.to_owned(),
                    namespace: namespace.to_owned(),
                    name,
                    cluster: cluster_names[i % clusters.max(1)].clone(),
                }
            })
            .collect();
        Topology {
            clusters: cluster_names,
            objects,
        }
    }

    /// The objects placed on `cluster`.
    pub fn objects_on<'a>(&'a self, cluster: &'a str) -> impl Iterator<Item = &'a DemoObject> {
        self.objects.iter().filter(move |o| o.cluster == cluster)
    }

    /// Every distinct (workspace, namespace) pair, in order of first use.
    pub fn upstream_namespaces(&self) -> Vec<(String, String)> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for o in &self.objects {
            let pair = (o.workspace.clone(), o.namespace.clone());
            if !pairs.contains(&pair) {
                pairs.push(pair);
            }
        }
        pairs
    }
}

/// `kcp-<hash>`: a stable, DNS-label-safe name for the downstream namespace
/// of `namespace` in `workspace` (FNV-1a of both, 10 base-36 digits), for
/// the copies the status-only benchmarks make by hand.
pub fn downstream_namespace(workspace: &str, namespace: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in workspace.bytes().chain([0]).chain(namespace.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut suffix = String::with_capacity(10);
    for _ in 0..10 {
        suffix.push(char::from(DIGITS[(hash % 36) as usize]));
        hash /= 36;
    }
    format!("kcp-{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_clusters_get_one_object_each() {
        let t = Topology::new(3);
        assert_eq!(t.clusters, ["cluster-1", "cluster-2", "cluster-3"]);
        let placed: Vec<_> = t
            .objects
            .iter()
            .map(|o| (o.to_string(), o.cluster.as_str()))
            .collect();
        assert_eq!(
            placed,
            [
                ("root:demo:a/shop/web".to_owned(), "cluster-1"),
                ("root:demo:a/shop/api".to_owned(), "cluster-2"),
                ("root:demo:b/batch/worker".to_owned(), "cluster-3"),
            ]
        );
    }

    #[test]
    fn every_cluster_gets_an_object_and_every_object_one_cluster() {
        for n in [1, 2, 5, 12] {
            let t = Topology::new(n);
            assert!(t.objects.len() >= 3);
            for c in &t.clusters {
                assert!(t.objects_on(c).count() >= 1, "{c} of {n} has no object");
            }
            let mut keys: Vec<_> = t.objects.iter().map(ToString::to_string).collect();
            keys.sort();
            keys.dedup();
            assert_eq!(keys.len(), t.objects.len(), "object names must be unique");
        }
    }

    #[test]
    fn downstream_namespaces_are_stable_distinct_dns_labels() {
        let a = downstream_namespace("root:demo:a", "shop");
        assert_eq!(a, downstream_namespace("root:demo:a", "shop"));
        assert_ne!(a, downstream_namespace("root:demo:b", "shop"));
        assert_ne!(a, downstream_namespace("root:demo:a", "batch"));
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(
            downstream_namespace("ab", "c"),
            downstream_namespace("a", "bc")
        );
        assert_eq!(a.len(), 14);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
    }

    #[test]
    fn the_locator_names_workspace_and_namespace() {
        let t = Topology::new(3);
        let locator: serde_json::Value =
            serde_json::from_str(&t.objects[2].namespace_locator()).unwrap_or_default();
        assert_eq!(
            locator,
            serde_json::json!({"cluster": "root:demo:b", "namespace": "batch"})
        );
    }
}
