//! The fleet with both halves on: agents apply what the hub sends down
//! (`downward_resources`), the clusters run the test bed's stand-in
//! Deployment controller (status follows spec, so "run" shows without a
//! kubelet), and the fleet creates no downstream copies itself
//! ([`super::Fleet::place`] only creates the KCP object).
//!
//! [`SpecDown`] is the convergence check of the downward path, both ways:
//!
//! - **spec down**: for every tracked object and every cluster it is placed
//!   on, the KCP object passed through the agent's own transformation
//!   pipeline ([`uplink_agent::transform::transform`]) is what the cluster
//!   holds: the same `spec`, every label and annotation the pipeline keeps,
//!   no kcp metadata beside the placement label, in a `kcp-<hash>`
//!   namespace carrying the `kcp.io/namespace-locator` annotation. Server-set
//!   metadata and fields only other managers set are not compared. A
//!   cluster the object is not placed on (any more) holds no copy; an object
//!   deleted in KCP is gone from every cluster and, once its finalizer is
//!   removed, from KCP;
//! - **status up**: KCP's status is the merge of what the clusters hold
//!   ([`super::convergence`]'s rules for one cluster; for several, the
//!   Deployment merge: replica counts summed, the lowest
//!   `observedGeneration`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::{ApiResource, DynamicObject};
use serde_json::Value;
use uplink_agent::config::default_downward_resources;
use uplink_agent::transform::{self, Target, is_kcp_key};
use uplink_hub::placement::key::sync_target_key;
use uplink_protocol::ObjectRef;

use super::convergence::marked_unreported;
use super::{Fleet, FleetBuilder, NAMESPACE_LOCATOR, eventually};

/// The finalizer the hub keeps on a KCP object placed on `key`'s cluster.
pub fn syncer_finalizer(key: &str) -> String {
    format!("workload.kcp.io/syncer-{key}")
}

impl FleetBuilder {
    /// Both halves on: every agent applies the default downward types, the
    /// clusters run the stand-in Deployment controller, and
    /// [`Fleet::place`] creates the KCP object only (see the module docs).
    pub fn spec_down(mut self) -> Self {
        self.spec_down = true;
        self
    }
}

impl Fleet {
    /// Whether the agents apply what the hub sends down.
    pub fn is_spec_down(&self) -> bool {
        self.spec_down
    }

    /// Cluster `cluster` as its agent knows it from the hub's `Welcome`:
    /// its SyncTarget and kcp's key for it.
    pub fn target(&self, cluster: &str) -> Target {
        Target {
            sync_target: self.sync_target_ref(cluster),
            key: sync_target_key(self.synctarget_workspace(), cluster),
        }
    }

    /// The finalizer the hub keeps upstream for `cluster`.
    pub fn syncer_finalizer(&self, cluster: &str) -> String {
        syncer_finalizer(&self.target(cluster).key)
    }

    /// KCP Deployment `workspace`/`namespace`/`name` as JSON; `None` when
    /// it does not exist.
    pub async fn upstream_deployment(
        &self,
        workspace: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Value>> {
        let api = Api::<Deployment>::namespaced(self.kcp(workspace).await?, namespace);
        let object = api
            .get_opt(name)
            .await
            .with_context(|| format!("reading {name} in KCP {workspace}/{namespace}"))?;
        object.map(to_json).transpose()
    }

    /// The copy of KCP Deployment `workspace`/`namespace`/`name` in
    /// `cluster` as JSON (in its downstream namespace); `None` when there
    /// is none.
    pub async fn downstream_deployment(
        &self,
        cluster: &str,
        workspace: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Value>> {
        let downstream_ns = self.downstream_namespace(cluster, workspace, namespace);
        let api = Api::<Deployment>::namespaced(self.cluster(cluster).await?, &downstream_ns);
        let object = api
            .get_opt(name)
            .await
            .with_context(|| format!("reading {name} in cluster {cluster}/{downstream_ns}"))?;
        object.map(to_json).transpose()
    }

    /// Waits until `check` holds for the copy of KCP Deployment
    /// `workspace`/`namespace`/`name` in `cluster` and returns it.
    pub async fn downstream_deployment_where(
        &self,
        cluster: &str,
        (workspace, namespace, name): (&str, &str, &str),
        within: Duration,
        what: &str,
        check: impl Fn(&Value) -> Result<()>,
    ) -> Result<Value> {
        eventually(within, what, async || {
            let Some(object) = self
                .downstream_deployment(cluster, workspace, namespace, name)
                .await?
            else {
                bail!("cluster {cluster} has no copy of {name}");
            };
            check(&object)?;
            Ok(object)
        })
        .await
    }
}

/// The objects a scenario placed, where, and the two checks.
#[derive(Debug, Clone, Default)]
pub struct SpecDown {
    /// (workspace, namespace, name) → the clusters it is placed on now.
    objects: BTreeMap<(String, String, String), BTreeSet<String>>,
    /// Clusters that must hold no copy of an object (it was unplaced from
    /// them), by object.
    unplaced: BTreeMap<(String, String, String), BTreeSet<String>>,
}

impl SpecDown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Tracks Deployment `workspace`/`namespace`/`name`, placed on
    /// exactly `clusters` (placed before on others: they must hold no copy).
    pub fn track(&mut self, workspace: &str, namespace: &str, name: &str, clusters: &[&str]) {
        let key = (workspace.to_owned(), namespace.to_owned(), name.to_owned());
        let now: BTreeSet<String> = clusters.iter().map(|c| (*c).to_owned()).collect();
        let before = self.objects.insert(key.clone(), now.clone());
        let gone = self.unplaced.entry(key).or_default();
        gone.extend(before.into_iter().flatten().filter(|c| !now.contains(c)));
        gone.retain(|c| !now.contains(c));
    }

    /// How many objects it tracks.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// Every way in which the clusters and KCP disagree, one line each.
    pub async fn differences(&self, fleet: &Fleet) -> Result<Vec<String>> {
        let mut differences = Vec::new();
        for ((workspace, namespace, name), clusters) in &self.objects {
            let at = format!("{workspace}/{namespace}/{name}");
            let upstream = fleet
                .upstream_deployment(workspace, namespace, name)
                .await?;
            let deleting = upstream
                .as_ref()
                .is_some_and(|u| !u["metadata"]["deletionTimestamp"].is_null());
            let mut statuses = BTreeMap::new();
            let gone = self
                .unplaced
                .get(&(workspace.clone(), namespace.clone(), name.clone()));
            for cluster in clusters.iter().chain(gone.into_iter().flatten()) {
                let placed = clusters.contains(cluster) && upstream.is_some() && !deleting;
                let downstream = fleet
                    .downstream_deployment(cluster, workspace, namespace, name)
                    .await?;
                match (&upstream, downstream, placed) {
                    (_, None, false) => {}
                    (_, Some(_), false) => differences.push(format!(
                        "{at}: cluster {cluster} still holds a copy (not placed there{})",
                        if deleting || upstream.is_none() {
                            ", deleted in KCP"
                        } else {
                            ""
                        }
                    )),
                    (_, None, true) => {
                        differences.push(format!("{at}: cluster {cluster} holds no copy"));
                    }
                    (Some(up), Some(down), true) => {
                        let expected = expected_downstream(fleet, cluster, workspace, up)?;
                        for d in spec_differences(&expected, &down) {
                            differences.push(format!("{at} in cluster {cluster}: {d}"));
                        }
                        if let Some(d) =
                            namespace_difference(fleet, cluster, workspace, namespace).await?
                        {
                            differences.push(format!("{at} in cluster {cluster}: {d}"));
                        }
                        statuses.insert(cluster.clone(), normalize(down.get("status").cloned()));
                    }
                    (None, Some(_), true) => unreachable!("placed implies an upstream object"),
                }
            }
            match &upstream {
                // Deleted in KCP: gone for good once every cluster let go.
                Some(up) if deleting => differences.push(format!(
                    "{at}: deleted in KCP but still there with finalizers {}",
                    up["metadata"]["finalizers"]
                )),
                Some(up) if !statuses.is_empty() => {
                    let status = normalize(up.get("status").cloned());
                    if let Some(d) = status_difference(&statuses, status.as_ref()) {
                        differences.push(format!("{at}: {d}"));
                    }
                    for cluster in clusters {
                        let finalizer = fleet.syncer_finalizer(cluster);
                        let has = up["metadata"]["finalizers"]
                            .as_array()
                            .is_some_and(|f| f.iter().any(|f| f == finalizer.as_str()));
                        if !has {
                            differences.push(format!(
                                "{at}: KCP object lacks finalizer {finalizer} of cluster {cluster}"
                            ));
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(differences)
    }

    /// Polls until there are no differences; fails after `within` listing
    /// the first few seen last.
    pub async fn converged(&self, fleet: &Fleet, within: Duration) -> Result<()> {
        if self.objects.is_empty() {
            bail!("the spec-down checker tracks no objects");
        }
        eventually(
            within,
            &format!("KCP and the clusters to converge on {} objects", self.len()),
            async || {
                let differences = self.differences(fleet).await?;
                if differences.is_empty() {
                    return Ok(());
                }
                let shown: Vec<&str> = differences.iter().take(5).map(String::as_str).collect();
                bail!(
                    "{} differences, e.g. {}",
                    differences.len(),
                    shown.join("; ")
                )
            },
        )
        .await
    }
}

/// KCP object `upstream` as the agent of `cluster` applies it: through the
/// agent's own pipeline.
pub fn expected_downstream(
    fleet: &Fleet,
    cluster: &str,
    workspace: &str,
    upstream: &Value,
) -> Result<Value> {
    let meta = &upstream["metadata"];
    let text = |v: &Value, what: &str| {
        v.as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("the KCP object has no {what}: {upstream}"))
    };
    let object = ObjectRef {
        group: "apps".into(),
        version: "v1".into(),
        resource: "deployments".into(),
        kind: "Deployment".into(),
        workspace: workspace.to_owned(),
        namespace: Some(text(&meta["namespace"], "namespace")?),
        name: text(&meta["name"], "name")?,
        uid: text(&meta["uid"], "uid")?,
    };
    let downstream = transform::transform(
        &object,
        &upstream.to_string(),
        &fleet.target(cluster),
        &default_downward_resources(),
    )
    .map_err(|e| anyhow!("the agent's pipeline refuses {}: {e}", object.name))?;
    Ok(downstream.manifest)
}

/// How `down` (what the cluster holds) differs from `expected` (what the
/// agent applies): `spec` exactly; each expected label and annotation
/// present with its value; no kcp label or annotation beyond the expected.
pub fn spec_differences(expected: &Value, down: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if expected["spec"] != down["spec"] {
        out.push(format!(
            "spec is {} where KCP's transformed is {}",
            down["spec"], expected["spec"]
        ));
    }
    for field in ["labels", "annotations"] {
        let want = expected["metadata"][field].as_object();
        let have = down["metadata"][field].as_object();
        for (key, value) in want.into_iter().flatten() {
            let got = have.and_then(|h| h.get(key));
            if got != Some(value) {
                out.push(format!("{field} {key} is {got:?}, want {value}"));
            }
        }
        for key in have.into_iter().flatten().map(|(k, _)| k) {
            if is_kcp_key(key) && want.is_none_or(|w| !w.contains_key(key)) {
                out.push(format!("kcp {field} {key} went down"));
            }
        }
    }
    out
}

/// The downstream namespace of KCP `workspace`/`namespace` in `cluster`
/// must carry the locator pointing back to it.
async fn namespace_difference(
    fleet: &Fleet,
    cluster: &str,
    workspace: &str,
    namespace: &str,
) -> Result<Option<String>> {
    let name = fleet.downstream_namespace(cluster, workspace, namespace);
    let want = fleet
        .namespace_locator(cluster, workspace, namespace)
        .to_annotation();
    let api = Api::<Namespace>::all(fleet.cluster(cluster).await?);
    let Some(ns) = api.get_opt(&name).await? else {
        return Ok(Some(format!("namespace {name} does not exist")));
    };
    let have = ns
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(NAMESPACE_LOCATOR));
    Ok(
        (have != Some(&want))
            .then(|| format!("namespace {name} has locator {have:?}, want {want}")),
    )
}

/// Where KCP's status (`upstream`) is not the merge of the clusters' (`by_cluster`).
fn status_difference(
    by_cluster: &BTreeMap<String, Option<Value>>,
    upstream: Option<&Value>,
) -> Option<String> {
    if by_cluster.len() == 1 {
        let down = by_cluster.values().next().cloned().flatten();
        let agree = match (&down, upstream) {
            (None, Some(up)) => marked_unreported(up),
            (down, up) => down.as_ref() == up,
        };
        return (!agree).then(|| {
            format!(
                "status in KCP is {}, the cluster's is {}",
                show(upstream),
                show(down.as_ref())
            )
        });
    }
    let up = upstream?;
    let mut out = Vec::new();
    for field in MERGED_COUNTS {
        let sum: i64 = by_cluster
            .values()
            .map(|s| s.as_ref().and_then(|s| s[field].as_i64()).unwrap_or(0))
            .sum();
        let have = up[field].as_i64().unwrap_or(0);
        if have != sum {
            out.push(format!("{field} is {have}, the clusters' sum {sum}"));
        }
    }
    let lowest = by_cluster
        .values()
        .filter_map(|s| s.as_ref()?["observedGeneration"].as_i64())
        .min();
    if up["observedGeneration"].as_i64() != lowest {
        out.push(format!(
            "observedGeneration is {}, the clusters' lowest {lowest:?}",
            up["observedGeneration"]
        ));
    }
    (!out.is_empty()).then(|| out.join(", "))
}

/// The Deployment status counts the hub sums across clusters.
const MERGED_COUNTS: [&str; 4] = [
    "replicas",
    "updatedReplicas",
    "readyReplicas",
    "availableReplicas",
];

fn show(status: Option<&Value>) -> String {
    status.map_or_else(|| "none".to_owned(), Value::to_string)
}

/// Absent, `null` and `{}` all mean "no status".
fn normalize(status: Option<Value>) -> Option<Value> {
    match status {
        None | Some(Value::Null) => None,
        Some(Value::Object(map)) if map.is_empty() => None,
        other => other,
    }
}

fn to_json<T: serde::Serialize>(object: T) -> Result<Value> {
    serde_json::to_value(object).context("encoding an object as JSON")
}

/// The Deployment resource, for dynamic lists.
pub fn deployments() -> ApiResource {
    ApiResource::erase::<Deployment>(&())
}

/// Every Deployment in `cluster` (all namespaces) that carries a placement
/// label: what the agents applied there.
pub async fn owned_deployments(fleet: &Fleet, cluster: &str) -> Result<Vec<DynamicObject>> {
    let label = fleet.placement_label(cluster);
    let api = Api::<DynamicObject>::all_with(fleet.cluster(cluster).await?, &deployments());
    let list = api
        .list(&kube::api::ListParams::default().labels(&label))
        .await
        .with_context(|| format!("listing Deployments labelled {label} in {cluster}"))?;
    Ok(list.items)
}
