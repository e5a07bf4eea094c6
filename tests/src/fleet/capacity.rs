//! Nodes and pods in the fleet's physical clusters, for capacity scenarios:
//! created through each cluster's API server, with their status set through
//! the `/status` subresource as a kubelet would.

use anyhow::{Context as _, Result};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use super::{Fleet, NAMESPACE_LOCATOR};

/// A node's resources, as Kubernetes quantities.
#[derive(Debug, Clone, Copy)]
pub struct NodeResources<'a> {
    pub cpu: &'a str,
    pub memory: &'a str,
    pub ephemeral_storage: &'a str,
    pub pods: &'a str,
    /// Extended resources, e.g. `("nvidia.com/gpu", "2")`.
    pub extended: &'a [(&'a str, &'a str)],
}

impl NodeResources<'_> {
    fn to_json(self) -> Value {
        let mut list = json!({
            "cpu": self.cpu,
            "memory": self.memory,
            "ephemeral-storage": self.ephemeral_storage,
            "pods": self.pods,
        });
        for (name, value) in self.extended {
            list[*name] = json!(value);
        }
        list
    }
}

impl Fleet {
    /// Creates node `name` in `cluster` with its capacity, allocatable and
    /// a `Ready` condition (`True` or `False`).
    pub async fn create_node(
        &self,
        cluster: &str,
        name: &str,
        capacity: NodeResources<'_>,
        allocatable: NodeResources<'_>,
        ready: bool,
    ) -> Result<()> {
        let api: Api<Node> = Api::all(self.cluster(cluster).await?);
        let node: Node = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name},
            "spec": {},
        }))?;
        api.create(&PostParams::default(), &node)
            .await
            .with_context(|| format!("creating node {name} in {cluster}"))?;
        let status = json!({"status": {
            "capacity": capacity.to_json(),
            "allocatable": allocatable.to_json(),
            "conditions": [ready_condition(ready)],
        }});
        api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .with_context(|| format!("setting the status of node {name} in {cluster}"))?;
        Ok(())
    }

    /// Sets node `name`'s `Ready` condition in `cluster`.
    pub async fn set_node_ready(&self, cluster: &str, name: &str, ready: bool) -> Result<()> {
        let api: Api<Node> = Api::all(self.cluster(cluster).await?);
        let status = json!({"status": {"conditions": [ready_condition(ready)]}});
        api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .with_context(|| format!("setting node {name} Ready={ready} in {cluster}"))?;
        Ok(())
    }

    /// Creates namespace `name` in `cluster`, mapped to KCP workspace
    /// `workspace` (namespace locator) when given.
    pub async fn create_cluster_namespace(
        &self,
        cluster: &str,
        name: &str,
        workspace: Option<&str>,
    ) -> Result<()> {
        let api: Api<Namespace> = Api::all(self.cluster(cluster).await?);
        let mut ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        if let Some(workspace) = workspace {
            let locator = json!({"cluster": workspace, "namespace": name}).to_string();
            ns["metadata"]["annotations"] = json!({ NAMESPACE_LOCATOR: locator });
        }
        api.create(&PostParams::default(), &serde_json::from_value(ns)?)
            .await
            .with_context(|| format!("creating namespace {name} in {cluster}"))?;
        Ok(())
    }

    /// Creates `pod` (a Pod manifest) in `cluster`, then sets its phase.
    pub async fn create_pod(&self, cluster: &str, pod: Value, phase: &str) -> Result<()> {
        let pod: Pod = serde_json::from_value(pod).context("the pod manifest")?;
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.cluster(cluster).await?, &namespace);
        api.create(&PostParams::default(), &pod)
            .await
            .with_context(|| format!("creating pod {namespace}/{name} in {cluster}"))?;
        let status = json!({"status": {"phase": phase}});
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .with_context(|| format!("setting the phase of pod {namespace}/{name} in {cluster}"))?;
        Ok(())
    }

    /// Deletes pod `namespace/name` in `cluster`. A pod bound to a node
    /// terminates first, for its grace period (one second for [`pod`]'s),
    /// and goes when the kubelet (the test bed's stand-in) deletes it.
    pub async fn delete_pod(&self, cluster: &str, namespace: &str, name: &str) -> Result<()> {
        let api: Api<Pod> = Api::namespaced(self.cluster(cluster).await?, namespace);
        api.delete(name, &DeleteParams::default())
            .await
            .with_context(|| format!("deleting pod {namespace}/{name} in {cluster}"))?;
        Ok(())
    }
}

fn ready_condition(ready: bool) -> Value {
    json!({
        "type": "Ready",
        "status": if ready { "True" } else { "False" },
        "reason": if ready { "KubeletReady" } else { "KubeletNotReady" },
    })
}

/// A pod manifest bound to `node` (or unscheduled) whose app containers
/// request `(cpu, memory)` each, with a grace period of one second, so that
/// a deleted pod is gone within a test's deadline.
pub fn pod(namespace: &str, name: &str, node: Option<&str>, containers: &[(&str, &str)]) -> Value {
    let containers: Vec<Value> = containers
        .iter()
        .enumerate()
        .map(|(i, (cpu, memory))| {
            json!({
                "name": format!("c{i}"),
                "image": "busybox",
                "resources": {"requests": {"cpu": cpu, "memory": memory}},
            })
        })
        .collect();
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"containers": containers, "terminationGracePeriodSeconds": 1},
    });
    if let Some(node) = node {
        pod["spec"]["nodeName"] = json!(node);
    }
    pod
}
