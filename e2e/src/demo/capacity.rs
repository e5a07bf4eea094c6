//! The demo's nodes and pods, and the hub's fleet capacity table.
//!
//! Each cluster gets a few nodes (sizes differ per cluster, one GPU node in
//! the first) and, once the agent has created a demo Deployment's
//! downstream namespace, one Running pod per initial replica of that
//! Deployment, bound to the cluster's nodes in turn, in that namespace: the
//! agents' capacity collectors see them, so the hub's
//! `GET /api/v1/capacity?format=table` has numbers to show beside the
//! objects. The pods are made by hand (the test bed's stand-in Deployment
//! controller creates none) and stay as they are when a Deployment is
//! scaled or unplaced.

use std::net::SocketAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::connections::Connections;
use super::seed::SeedError;
use super::topology::{DESIRED_REPLICAS, Topology};

/// Nodes per demo cluster.
const NODES_PER_CLUSTER: usize = 3;
/// Longest time fetching the capacity table may take.
const TABLE_TIMEOUT: Duration = Duration::from_secs(2);

/// How often [`seed_pods`] looks for the downstream namespaces.
const NAMESPACE_POLL: Duration = Duration::from_millis(200);

/// Creates the nodes of every cluster of `topology`. Nodes that already
/// exist are left as they are.
pub async fn seed_nodes(topology: &Topology, connections: &Connections) -> Result<(), SeedError> {
    for (index, cluster) in topology.clusters.iter().enumerate() {
        let client = connections
            .cluster(cluster)
            .ok_or_else(|| SeedError::NotConnected {
                place: cluster.clone(),
            })?;
        let nodes: Api<Node> = Api::all(client.clone());
        for (n, name) in node_names(cluster).iter().enumerate() {
            let cpu = 4 * (index + 1);
            let memory_gi = 8 * (index + 1);
            let gpus = if index == 0 && n == 0 { "2" } else { "0" };
            let node: Node = node_manifest(name);
            create(&nodes, &node, name, cluster).await?;
            let status = json!({"status": {
                "capacity": {"cpu": cpu.to_string(), "memory": format!("{memory_gi}Gi"), "ephemeral-storage": "100Gi", "pods": "110", "nvidia.com/gpu": gpus},
                "allocatable": {"cpu": format!("{}m", cpu * 1000 - 200), "memory": format!("{}Mi", memory_gi * 1024 - 512), "ephemeral-storage": "90Gi", "pods": "110", "nvidia.com/gpu": gpus},
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
            }});
            patch_status(&nodes, name, &status, cluster).await?;
        }
    }
    Ok(())
}

fn node_names(cluster: &str) -> Vec<String> {
    (1..=NODES_PER_CLUSTER)
        .map(|n| format!("{cluster}-node-{n}"))
        .collect()
}

/// For every object of `topology` (with its downstream namespace, in the
/// same order): waits until its namespace exists in its cluster, then
/// creates its pods there. Gives up on an object after `patience`, or on
/// all when `stop` is cancelled; what failed is returned, not fatal.
pub async fn seed_pods(
    topology: &Topology,
    namespaces: &[String],
    connections: &Connections,
    patience: Duration,
    stop: &tokio_util::sync::CancellationToken,
) -> Vec<String> {
    let mut failures = Vec::new();
    let mut next_node: std::collections::BTreeMap<&str, usize> = Default::default();
    let deadline = tokio::time::Instant::now() + patience;
    for (object, namespace) in topology.objects.iter().zip(namespaces) {
        let Some(client) = connections.cluster(&object.cluster) else {
            failures.push(format!("no connection to {}", object.cluster));
            continue;
        };
        let namespaces: Api<Namespace> = Api::all(client.clone());
        loop {
            match namespaces.get_opt(namespace).await {
                Ok(Some(_)) => break,
                Ok(None) | Err(_) if tokio::time::Instant::now() < deadline => {}
                Ok(None) => {
                    failures.push(format!("{}: {namespace} never appeared", object.cluster));
                    break;
                }
                Err(error) => {
                    failures.push(format!("{}: reading {namespace}: {error}", object.cluster));
                    break;
                }
            }
            tokio::select! {
                () = stop.cancelled() => return failures,
                () = tokio::time::sleep(NAMESPACE_POLL) => {}
            }
        }
        let nodes = node_names(&object.cluster);
        let pods: Api<Pod> = Api::namespaced(client, namespace);
        for replica in 0..DESIRED_REPLICAS {
            let name = format!("{}-{replica}", object.name);
            let slot = next_node.entry(object.cluster.as_str()).or_default();
            let node = &nodes[*slot % nodes.len()];
            *slot += 1;
            let pod = pod_manifest(&name, namespace, node, replica);
            let created = async {
                create(&pods, &pod, &format!("{namespace}/{name}"), &object.cluster).await?;
                let status = json!({"status": {"phase": "Running"}});
                patch_status(&pods, &name, &status, &object.cluster).await
            };
            if let Err(error) = created.await {
                failures.push(error.to_string());
            }
        }
    }
    failures
}

fn node_manifest(name: &str) -> Node {
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": {}})).unwrap_or_default()
}

fn pod_manifest(name: &str, namespace: &str, node: &str, replica: i32) -> Pod {
    let cpu = ["250m", "500m", "1"][usize::try_from(replica).unwrap_or(0) % 3];
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "nodeName": node,
            "initContainers": [{"name": "proxy", "image": "envoy", "restartPolicy": "Always",
                                "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}}}],
            "containers": [{"name": "app", "image": "demo",
                            "resources": {"requests": {"cpu": cpu, "memory": "512Mi"}}}],
        },
    }))
    .unwrap_or_default()
}

async fn create<K>(api: &Api<K>, object: &K, what: &str, cluster: &str) -> Result<(), SeedError>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::Serialize + serde::de::DeserializeOwned,
{
    match api.create(&PostParams::default(), object).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(source) => Err(SeedError::Create {
            what: what.to_owned(),
            place: cluster.to_owned(),
            source,
        }),
    }
}

async fn patch_status<K>(
    api: &Api<K>,
    name: &str,
    status: &serde_json::Value,
    cluster: &str,
) -> Result<(), SeedError>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(status))
        .await
        .map(|_| ())
        .map_err(|source| SeedError::Create {
            what: format!("the status of {name}"),
            place: cluster.to_owned(),
            source,
        })
}

/// The hub's fleet capacity table (`GET /api/v1/capacity?format=table`), or
/// a line saying why there is none.
pub async fn fleet_table(hub_http: SocketAddr) -> String {
    let get = async {
        let mut tcp = tokio::net::TcpStream::connect(hub_http).await?;
        let request =
            format!("GET /api/v1/capacity?format=table HTTP/1.0\r\nHost: {hub_http}\r\n\r\n");
        tcp.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        tcp.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&response).into_owned())
    };
    match tokio::time::timeout(TABLE_TIMEOUT, get).await {
        Ok(Ok(response)) => match response.split_once("\r\n\r\n") {
            Some((head, body))
                if head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200") =>
            {
                body.to_owned()
            }
            _ => "fleet capacity: the hub gave no table\n".to_owned(),
        },
        Ok(Err(e)) => format!("fleet capacity: {e}\n"),
        Err(_) => "fleet capacity: the hub did not answer in time\n".to_owned(),
    }
}

/// `left` and `right` side by side, `gap` spaces apart; when the combined
/// width exceeds `width`, `right` goes below `left` instead.
pub fn beside(left: &str, right: &str, gap: usize, width: usize) -> String {
    let left_width = left.lines().map(|l| l.chars().count()).max().unwrap_or(0);
    let right_width = right.lines().map(|l| l.chars().count()).max().unwrap_or(0);
    if left_width + gap + right_width > width {
        return format!("{left}\n{right}");
    }
    let left_lines: Vec<&str> = left.lines().collect();
    let right_lines: Vec<&str> = right.lines().collect();
    let mut out = String::new();
    for i in 0..left_lines.len().max(right_lines.len()) {
        let l = left_lines.get(i).copied().unwrap_or("");
        let r = right_lines.get(i).copied().unwrap_or("");
        let pad = left_width - l.chars().count() + gap;
        let line = format!("{l}{}{r}", " ".repeat(pad));
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_go_side_by_side_when_they_fit() {
        assert_eq!(beside("ab\nc", "X\nY\nZ", 2, 80), "ab  X\nc   Y\n    Z\n");
        assert_eq!(beside("ab", "XY", 2, 3), "ab\nXY");
    }

    #[test]
    fn manifests_parse() {
        let pod = pod_manifest("web-0", "kcp-x", "n1", 1);
        assert_eq!(pod.spec.map(|s| s.node_name), Some(Some("n1".to_owned())));
        assert_eq!(node_manifest("n1").metadata.name.as_deref(), Some("n1"));
    }
}
