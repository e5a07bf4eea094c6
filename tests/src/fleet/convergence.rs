//! The convergence checker: for every object a scenario placed, does KCP's
//! status equal what the cluster holding it says? Once the object is gone
//! downstream, KCP keeps its last status marked as reported by no cluster
//! (the condition `StatusReported=False`; no cluster can make the hub wipe
//! a status), or has none if it never had one.
//!
//! Scenarios end with [`Convergence::converged`], which polls until there
//! are no differences and otherwise fails listing them. A status that is
//! absent, `null` or `{}` counts as "no status" on both sides.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{ApiResource, DynamicObject, ListParams};
use kube::{Api, Client};
use serde_json::Value;

use super::{Fleet, eventually};

/// One object placed in one cluster.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Placement {
    pub workspace: String,
    pub namespace: String,
    pub name: String,
    pub cluster: String,
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{} (cluster {})",
            self.workspace, self.namespace, self.name, self.cluster
        )
    }
}

/// An object whose status in KCP is not what its cluster holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Difference {
    pub placement: Placement,
    /// The status in the cluster; `None` when the object or its status is gone.
    pub downstream: Option<Value>,
    /// The status in KCP; `None` when it has none.
    pub upstream: Option<Value>,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: &Option<Value>| v.as_ref().map_or("none".to_owned(), Value::to_string);
        write!(
            f,
            "{}: cluster has {}, KCP has {}",
            self.placement,
            show(&self.downstream),
            show(&self.upstream)
        )
    }
}

/// The objects a scenario placed, and how to compare them.
#[derive(Debug, Clone)]
pub struct Convergence {
    resource: ApiResource,
    placements: BTreeSet<Placement>,
}

impl Default for Convergence {
    fn default() -> Self {
        Self::deployments()
    }
}

impl Convergence {
    /// A checker of Deployments.
    pub fn deployments() -> Self {
        Self {
            resource: ApiResource::erase::<Deployment>(&()),
            placements: BTreeSet::new(),
        }
    }

    /// Tracks an object placed in `cluster`.
    pub fn track(&mut self, workspace: &str, namespace: &str, name: &str, cluster: &str) {
        self.placements.insert(Placement {
            workspace: workspace.to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            cluster: cluster.to_owned(),
        });
    }

    pub fn len(&self) -> usize {
        self.placements.len()
    }

    pub fn is_empty(&self) -> bool {
        self.placements.is_empty()
    }

    /// Every tracked object whose KCP status differs from its cluster's.
    /// Lists each namespace once per side (not one request per object).
    pub async fn differences(&self, fleet: &Fleet) -> Result<Vec<Difference>> {
        // (workspace, namespace) → placements there.
        let mut by_namespace: BTreeMap<(&str, &str), Vec<&Placement>> = BTreeMap::new();
        for p in &self.placements {
            by_namespace
                .entry((p.workspace.as_str(), p.namespace.as_str()))
                .or_default()
                .push(p);
        }
        let mut cluster_clients: HashMap<&str, Client> = HashMap::new();
        let mut differences = Vec::new();
        for ((workspace, namespace), placements) in by_namespace {
            let kcp = fleet.kcp(workspace).await?;
            let upstream = self
                .statuses(kcp, namespace)
                .await
                .with_context(|| format!("listing KCP {workspace}/{namespace}"))?;
            let mut downstream: HashMap<&str, HashMap<String, Option<Value>>> = HashMap::new();
            for p in &placements {
                if downstream.contains_key(p.cluster.as_str()) {
                    continue;
                }
                let downstream_ns = fleet.downstream_namespace(&p.cluster, workspace, namespace);
                let client = match cluster_clients.get(p.cluster.as_str()) {
                    Some(client) => client.clone(),
                    None => {
                        let client = fleet.cluster(&p.cluster).await?;
                        cluster_clients.insert(&p.cluster, client.clone());
                        client
                    }
                };
                let statuses = self
                    .statuses(client, &downstream_ns)
                    .await
                    .with_context(|| format!("listing cluster {} {downstream_ns}", p.cluster))?;
                downstream.insert(&p.cluster, statuses);
            }
            for p in placements {
                let down = downstream
                    .get(p.cluster.as_str())
                    .and_then(|s| s.get(&p.name))
                    .cloned()
                    .flatten();
                let up = upstream.get(&p.name).cloned().flatten();
                let agree = match (&down, &up) {
                    (None, Some(up)) => marked_unreported(up),
                    _ => down == up,
                };
                if !agree {
                    differences.push(Difference {
                        placement: p.clone(),
                        downstream: down,
                        upstream: up,
                    });
                }
            }
        }
        Ok(differences)
    }

    /// Polls until no tracked object differs; fails after `within`, listing
    /// (the first few of) the differences last seen.
    pub async fn converged(&self, fleet: &Fleet, within: Duration) -> Result<()> {
        if self.placements.is_empty() {
            bail!("the convergence checker tracks no objects");
        }
        eventually(
            within,
            &format!("KCP to converge on {} objects", self.placements.len()),
            async || {
                let differences = self.differences(fleet).await?;
                if differences.is_empty() {
                    return Ok(());
                }
                let shown: Vec<String> = differences
                    .iter()
                    .take(5)
                    .map(ToString::to_string)
                    .collect();
                bail!(
                    "{} differences, e.g. {}",
                    differences.len(),
                    shown.join("; ")
                )
            },
        )
        .await
    }

    /// Each object's normalized status in `namespace`, by name.
    async fn statuses(
        &self,
        client: Client,
        namespace: &str,
    ) -> Result<HashMap<String, Option<Value>>> {
        let api = Api::<DynamicObject>::namespaced_with(client, namespace, &self.resource);
        let list = api.list(&ListParams::default()).await?;
        Ok(list
            .items
            .into_iter()
            .filter_map(|mut object| {
                let name = object.metadata.name.take()?;
                let status = object.data.get_mut("status").map(Value::take);
                Some((name, normalize(status)))
            })
            .collect())
    }
}

/// Absent, `null` and `{}` all mean "no status".
fn normalize(status: Option<Value>) -> Option<Value> {
    match status {
        None | Some(Value::Null) => None,
        Some(Value::Object(map)) if map.is_empty() => None,
        other => other,
    }
}

/// Whether `status` says no cluster reports its object any more.
pub fn marked_unreported(status: &Value) -> bool {
    status["conditions"].as_array().is_some_and(|conditions| {
        conditions.iter().any(|c| {
            c["type"] == "StatusReported"
                && c["status"] == "False"
                && c["reason"] == "NoClusterReports"
        })
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn empty_statuses_are_no_status() {
        assert_eq!(normalize(Some(json!({}))), None);
        assert_eq!(normalize(Some(Value::Null)), None);
        assert_eq!(normalize(Some(json!({"a": 1}))), Some(json!({"a": 1})));
    }
}
