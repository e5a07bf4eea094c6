//! `deploy/hub` runs the hub as three replicas that share the fleet through
//! `coordination.k8s.io/v1` Leases (issue 20), as `kubectl kustomize`
//! builds it: three pods with distinct identities (their names) and the
//! Leases in their namespace, spread over nodes, replaced one at a time; a
//! PodDisruptionBudget that lets one go at a time; the Lease RBAC bound to
//! the account the pods run as. `tests/tests/kubectl/cluster.rs` applies
//! the same build to the test bed and asks it.

use anyhow::{Context as _, Result, ensure};
use serde_json::Value;

#[path = "deploy/kustomize.rs"]
mod kustomize;

use kustomize::{deploy, expanded_args, find, flag, selects, strings};

#[test]
fn the_hub_runs_three_replicas_each_its_own_lease_identity() -> Result<()> {
    let hub = deploy("hub")?;
    let deployment = find(&hub, "Deployment", "uplink-hub")?;
    let spec = &deployment["spec"];
    ensure!(spec["replicas"] == 3, "replicas: {}", spec["replicas"]);

    let container = &spec["template"]["spec"]["containers"][0];
    let args = expanded_args(&hub, container)?;
    ensure!(
        flag(&args, "--replicas-lease-namespace") == Some("<fieldRef:metadata.namespace>"),
        "the Leases live in the pod's own namespace: {args:?}"
    );
    ensure!(
        flag(&args, "--replicas-identity") == Some("<fieldRef:metadata.name>"),
        "each replica is known by its pod's name, distinct among them: {args:?}"
    );
    ensure!(
        spec["template"]["spec"]["automountServiceAccountToken"] == true,
        "the Leases are written with the pod's service account token (in-cluster config)"
    );
    ensure!(
        flag(&args, "--replicas-kubeconfig").is_none(),
        "the Leases are in the hub's cluster, through the in-cluster config"
    );

    // A rollout stops one replica before starting its replacement.
    ensure!(spec["strategy"]["type"] == "RollingUpdate");
    let rolling = &spec["strategy"]["rollingUpdate"];
    ensure!(
        rolling["maxUnavailable"] == 1 && rolling["maxSurge"] == 0,
        "rolling update: {rolling}"
    );
    Ok(())
}

#[test]
fn the_hub_replicas_spread_over_nodes_and_zones() -> Result<()> {
    let hub = deploy("hub")?;
    let pod = &find(&hub, "Deployment", "uplink-hub")?["spec"]["template"];
    let labels = &pod["metadata"]["labels"];

    let anti = pod["spec"]["affinity"]["podAntiAffinity"]
        ["preferredDuringSchedulingIgnoredDuringExecution"]
        .as_array()
        .context("no preferred pod anti-affinity")?;
    ensure!(
        anti.iter().any(|term| {
            let term = &term["podAffinityTerm"];
            term["topologyKey"] == "kubernetes.io/hostname"
                && selects(&term["labelSelector"]["matchLabels"], labels)
        }),
        "the hub's pods prefer distinct nodes: {anti:?}"
    );
    ensure!(
        pod["spec"]["affinity"]["podAntiAffinity"]
            ["requiredDuringSchedulingIgnoredDuringExecution"]
            .is_null(),
        "preferred only: fewer nodes than replicas still run them all"
    );
    let spread = pod["spec"]["topologySpreadConstraints"]
        .as_array()
        .context("no topologySpreadConstraints")?;
    ensure!(
        spread
            .iter()
            .any(|c| c["maxSkew"] == 1 && selects(&c["labelSelector"]["matchLabels"], labels)),
        "the hub's pods spread: {spread:?}"
    );
    Ok(())
}

#[test]
fn a_disruption_budget_lets_one_hub_replica_go_at_a_time() -> Result<()> {
    let hub = deploy("hub")?;
    let deployment = find(&hub, "Deployment", "uplink-hub")?;
    let budgets: Vec<&Value> = hub
        .iter()
        .filter(|d| d["kind"] == "PodDisruptionBudget")
        .collect();
    let budget = budgets
        .iter()
        .find(|b| {
            selects(
                &b["spec"]["selector"]["matchLabels"],
                &deployment["spec"]["template"]["metadata"]["labels"],
            )
        })
        .context("no PodDisruptionBudget selects the hub's pods")?;
    ensure!(budget["apiVersion"] == "policy/v1");
    ensure!(budget["metadata"]["namespace"] == deployment["metadata"]["namespace"]);
    ensure!(
        budget["spec"]["maxUnavailable"] == 1 && budget["spec"]["minAvailable"].is_null(),
        "budget: {}",
        budget["spec"]
    );
    Ok(())
}

#[test]
fn the_lease_role_binds_the_account_the_hub_runs_as() -> Result<()> {
    let hub = deploy("hub")?;
    let deployment = find(&hub, "Deployment", "uplink-hub")?;
    let namespace = deployment["metadata"]["namespace"]
        .as_str()
        .context("the Deployment has no namespace")?;
    let account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
        .as_str()
        .context("the hub runs as no named ServiceAccount")?;
    find(&hub, "ServiceAccount", account)?;

    let bindings: Vec<&Value> = hub
        .iter()
        .filter(|d| {
            d["kind"] == "RoleBinding"
                && d["metadata"]["namespace"] == namespace
                && d["roleRef"]["kind"] == "Role"
                && d["subjects"].as_array().into_iter().flatten().any(|s| {
                    s["kind"] == "ServiceAccount"
                        && s["name"] == account
                        && s["namespace"] == namespace
                })
        })
        .collect();
    let granted: Vec<&str> = bindings
        .iter()
        .filter_map(|b| b["roleRef"]["name"].as_str())
        .filter_map(|name| find(&hub, "Role", name).ok())
        .filter(|role| role["metadata"]["namespace"] == namespace)
        .flat_map(|role| role["rules"].as_array().into_iter().flatten())
        .filter(|rule| {
            strings(&rule["apiGroups"]).contains(&"coordination.k8s.io")
                && strings(&rule["resources"]).contains(&"leases")
                && rule["resourceNames"].is_null()
        })
        .flat_map(|rule| strings(&rule["verbs"]))
        .collect();
    for verb in [
        "get", "list", "watch", "create", "update", "patch", "delete",
    ] {
        ensure!(
            granted.contains(&verb),
            "{account} may {verb} leases in {namespace}: {granted:?}"
        );
    }
    ensure!(
        !hub.iter().any(|d| d["kind"] == "ClusterRole"
            && d["rules"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|r| strings(&r["resources"]).contains(&"leases"))),
        "Leases are granted in the hub's namespace only, not cluster-wide"
    );
    Ok(())
}
