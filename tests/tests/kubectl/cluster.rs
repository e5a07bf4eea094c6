//! kubectl against the cluster APIs: Uplink's own kustomizations applied as
//! an operator would, `kubectl auth can-i` for the ServiceAccounts they
//! create (answers a real kube-apiserver gives for that RBAC), every typed
//! `kubectl create` generator (protobuf bodies), tokens, `kubectl debug`
//! and `kubectl certificate approve`.

use std::path::PathBuf;

use anyhow::{Context as _, Result, ensure};
use serde_json::Value;
use uplink_tests::kubectl::Kubectl;

use super::with_kubectl;

/// The Prometheus Operator's ServiceMonitor, reduced to what the API needs:
/// both kustomizations include one.
const SERVICE_MONITOR_CRD: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: servicemonitors.monitoring.coreos.com
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {plural: servicemonitors, singular: servicemonitor, kind: ServiceMonitor, listKind: ServiceMonitorList}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
"#;

fn deploy_dir(name: &str) -> Result<String> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("deploy")
        .join(name);
    dir.to_str()
        .map(str::to_owned)
        .context("the deploy directory's path is not UTF-8")
}

/// `kubectl auth can-i <args>`: true for "yes", false for "no".
async fn can_i(kubectl: &Kubectl, args: &[&str]) -> Result<bool> {
    let mut all = vec!["auth", "can-i"];
    all.extend_from_slice(args);
    let output = kubectl.run(&all).await?;
    let answer = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    match answer.as_str() {
        "yes" => Ok(true),
        "no" => Ok(false),
        _ => anyhow::bail!(
            "kubectl {} answered {answer:?}: {}",
            all.join(" "),
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

#[tokio::test]
async fn kubectl_applies_uplink_deploy_and_can_i_answers_like_kube() -> Result<()> {
    with_kubectl(None, |kubectl| async move {
        let crd = kubectl.write_file("servicemonitor-crd.yaml", SERVICE_MONITOR_CRD)?;
        kubectl.ok(&["apply", "-f", &crd.to_string_lossy()]).await?;
        kubectl
            .ok(&[
                "wait",
                "--for=condition=Established",
                "crd/servicemonitors.monitoring.coreos.com",
                "--timeout=20s",
            ])
            .await?;
        for part in ["agent", "hub"] {
            let out = kubectl.ok(&["apply", "-k", &deploy_dir(part)?]).await?;
            ensure!(
                out.contains(&format!("deployment.apps/uplink-{part} created")),
                "apply -k deploy/{part}: {out}"
            );
            ensure!(
                out.contains(&format!(
                    "servicemonitor.monitoring.coreos.com/uplink-{part} created"
                )),
                "apply -k deploy/{part}: {out}"
            );
        }
        let out = kubectl.ok(&["apply", "-k", &deploy_dir("agent")?]).await?;
        ensure!(
            out.contains("clusterrolebinding.rbac.authorization.k8s.io/uplink-agent unchanged"),
            "re-apply: {out}"
        );
        the_hub_replicas_as_applied(&kubectl).await?;

        let agent = "--as=system:serviceaccount:uplink-system:uplink-agent";
        let hub = "--as=system:serviceaccount:uplink-system:uplink-hub";
        let cases: &[(&[&str], bool)] = &[
            (
                &["list", "deployments.apps", "--all-namespaces", agent],
                true,
            ),
            (
                &["watch", "statefulsets.apps", "-n", "default", agent],
                true,
            ),
            (&["get", "jobs.batch", "-n", "kube-system", agent], true),
            (&["list", "pods", "--all-namespaces", agent], true),
            (&["get", "nodes", agent], true),
            (&["watch", "namespaces", agent], true),
            (&["get", "services", "-n", "uplink-system", agent], true),
            // The downward lane's writes: create, patch, delete of what it applies.
            (
                &["create", "deployments.apps", "-n", "uplink-system", agent],
                true,
            ),
            (&["delete", "services", "-n", "default", agent], true),
            (
                &["update", "deployments.apps", "-n", "default", agent],
                false,
            ),
            (
                &[
                    "patch",
                    "deployments.apps",
                    "--subresource=status",
                    "-n",
                    "default",
                    agent,
                ],
                false,
            ),
            (&["get", "secrets", "-n", "uplink-system", agent], false),
            (&["delete", "pods", "-n", "default", agent], false),
            // The sweep lists what it applied; reading one by name is not needed.
            (&["list", "configmaps", "-n", "uplink-system", agent], true),
            (&["get", "configmaps", "-n", "uplink-system", agent], false),
            (
                &[
                    "create",
                    "selfsubjectaccessreviews.authorization.k8s.io",
                    agent,
                ],
                true,
            ),
            (&["get", "/api", agent], true),
            (&["get", "/healthz", agent], true),
            (&["get", "/metrics", agent], false),
            (&["list", "pods", "-n", "uplink-system", hub], false),
            (&["get", "configmaps", "-n", "uplink-system", hub], false),
            (&["get", "/version", hub], true),
            (
                &["impersonate", "serviceaccounts", "-n", "uplink-system", hub],
                false,
            ),
            // The replicas' Leases: in the hub's namespace, every verb the
            // engine uses (and delete, for member Leases of pods long gone).
            (
                &[
                    "get",
                    "leases.coordination.k8s.io",
                    "-n",
                    "uplink-system",
                    hub,
                ],
                true,
            ),
            (
                &[
                    "list",
                    "leases.coordination.k8s.io",
                    "-n",
                    "uplink-system",
                    hub,
                ],
                true,
            ),
            (
                &[
                    "watch",
                    "leases.coordination.k8s.io",
                    "-n",
                    "uplink-system",
                    hub,
                ],
                true,
            ),
            (
                &[
                    "create",
                    "leases.coordination.k8s.io",
                    "-n",
                    "uplink-system",
                    hub,
                ],
                true,
            ),
            (
                &[
                    "update",
                    "leases.coordination.k8s.io",
                    "-n",
                    "uplink-system",
                    hub,
                ],
                true,
            ),
            (
                &[
                    "patch",
                    "leases.coordination.k8s.io",
                    "-n",
                    "uplink-system",
                    hub,
                ],
                true,
            ),
            (
                &[
                    "delete",
                    "leases.coordination.k8s.io",
                    "-n",
                    "uplink-system",
                    hub,
                ],
                true,
            ),
            // ... and nowhere else.
            (
                &[
                    "create",
                    "leases.coordination.k8s.io",
                    "-n",
                    "kube-system",
                    hub,
                ],
                false,
            ),
            (
                &[
                    "list",
                    "leases.coordination.k8s.io",
                    "--all-namespaces",
                    hub,
                ],
                false,
            ),
            (
                &[
                    "create",
                    "leases.coordination.k8s.io",
                    "-n",
                    "uplink-system",
                    agent,
                ],
                false,
            ),
            (&["*", "*"], true),
        ];
        for (args, expected) in cases {
            let answer = can_i(&kubectl, args).await?;
            ensure!(
                answer == *expected,
                "kubectl auth can-i {}: {answer}, a real cluster says {expected}",
                args.join(" ")
            );
        }
        let list = kubectl.ok(&["auth", "can-i", "--list", agent]).await?;
        ensure!(
            list.lines().any(|l| l.starts_with("deployments.apps ")
                && l.contains("[get list watch create patch delete]")),
            "kubectl auth can-i --list:\n{list}"
        );
        let whoami = kubectl.ok(&["auth", "whoami", agent]).await?;
        ensure!(
            whoami.contains("system:serviceaccounts:uplink-system"),
            "kubectl auth whoami:\n{whoami}"
        );
        Ok(())
    })
    .await
}

/// What `kubectl apply -k deploy/hub` made of the replicas, read back from
/// the API server as an operator would, and the Lease RBAC at work: the
/// hub's ServiceAccount writes a shard Lease in its namespace (and may not
/// elsewhere), and `kubectl get leases -l <label>` (deploy/README.md,
/// "Replicas") shows its holder.
async fn the_hub_replicas_as_applied(kubectl: &Kubectl) -> Result<()> {
    let get = |args: &'static [&'static str]| async move {
        let text = kubectl.ok(args).await?;
        serde_json::from_str::<Value>(&text)
            .with_context(|| format!("kubectl {} printed {text}", args.join(" ")))
    };
    let deployment = get(&[
        "get",
        "deployment",
        "uplink-hub",
        "-n",
        "uplink-system",
        "-o",
        "json",
    ])
    .await?;
    ensure!(
        deployment["spec"]["replicas"] == 3,
        "replicas {}",
        deployment["spec"]["replicas"]
    );
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let pdb = get(&[
        "get",
        "pdb",
        "uplink-hub",
        "-n",
        "uplink-system",
        "-o",
        "json",
    ])
    .await?;
    ensure!(
        pdb["spec"]["maxUnavailable"] == 1,
        "the hub's PodDisruptionBudget: {}",
        pdb["spec"]
    );
    let selector = pdb["spec"]["selector"]["matchLabels"]
        .as_object()
        .context("the PodDisruptionBudget selects by no labels")?;
    ensure!(
        !selector.is_empty() && selector.iter().all(|(k, v)| pod_labels[k] == *v),
        "the PodDisruptionBudget ({selector:?}) selects the hub's pods ({pod_labels})"
    );
    let service = get(&[
        "get",
        "service",
        "uplink-hub-replicas",
        "-n",
        "uplink-system",
        "-o",
        "json",
    ])
    .await?;
    ensure!(
        service["spec"]["clusterIP"] == "None",
        "uplink-hub-replicas is headless: {}",
        service["spec"]
    );
    let binding = get(&[
        "get",
        "rolebinding",
        "uplink-hub-leases",
        "-n",
        "uplink-system",
        "-o",
        "json",
    ])
    .await?;
    ensure!(
        binding["subjects"][0]["kind"] == "ServiceAccount"
            && binding["subjects"][0]["name"]
                == deployment["spec"]["template"]["spec"]["serviceAccountName"],
        "the Lease Role is bound to the account the hub runs as: {binding}"
    );

    // As the hub: a shard Lease as the engine writes it (name, label, holder).
    let label = uplink_hub::replicas::lease::REPLICAS_LABEL;
    let name =
        uplink_hub::replicas::shard_lease_name("uplink-hub", uplink_hub::replicas::ShardId(3));
    let lease = kubectl.write_file(
        "lease.json",
        &serde_json::json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name, "labels": {label: "uplink-hub"}},
            "spec": {"holderIdentity": "uplink-hub-7d9f-abcde_0d4c", "leaseDurationSeconds": 15},
        })
        .to_string(),
    )?;
    let lease = lease.to_string_lossy();
    let as_hub = "--as=system:serviceaccount:uplink-system:uplink-hub";
    let out = kubectl
        .ok(&["create", "-f", &lease, "-n", "uplink-system", as_hub])
        .await?;
    ensure!(
        out.contains(&format!("lease.coordination.k8s.io/{name} created")),
        "the hub creates a Lease in its namespace: {out}"
    );
    let denied = kubectl
        .run(&["create", "-f", &lease, "-n", "default", as_hub])
        .await?;
    ensure!(
        !denied.status.success() && String::from_utf8_lossy(&denied.stderr).contains("forbidden"),
        "the hub may not create a Lease in default: {}",
        String::from_utf8_lossy(&denied.stderr)
    );
    let selector = format!("{label}=uplink-hub");
    let table = kubectl
        .ok(&["get", "leases", "-n", "uplink-system", "-l", &selector])
        .await?;
    let mut lines = table.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    ensure!(
        header == ["NAME", "HOLDER", "AGE"],
        "kubectl get leases:\n{table}"
    );
    let row: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    ensure!(
        row.get(..2) == Some(&[name.as_str(), "uplink-hub-7d9f-abcde_0d4c"][..]),
        "kubectl get leases:\n{table}"
    );
    Ok(())
}

/// Every `kubectl create <kind>` generator, each of which posts protobuf.
#[tokio::test]
async fn kubectl_create_generators_for_every_kind() -> Result<()> {
    with_kubectl(None, |kubectl| async move {
        kubectl.ok(&["create", "namespace", "gen"]).await?;
        let n = ["-n", "gen"];
        let commands: &[(&[&str], &str)] = &[
            (
                &[
                    "create",
                    "deployment",
                    "web",
                    "--image=nginx",
                    "--port=80",
                    "--replicas=0",
                ],
                "deployment.apps/web created",
            ),
            (
                &["create", "service", "clusterip", "web", "--tcp=80:8080"],
                "service/web created",
            ),
            (
                &[
                    "create",
                    "service",
                    "nodeport",
                    "np",
                    "--tcp=80:8080",
                    "--node-port=30080",
                ],
                "service/np created",
            ),
            (
                &[
                    "create",
                    "service",
                    "externalname",
                    "ext",
                    "--external-name=example.com",
                ],
                "service/ext created",
            ),
            (
                &[
                    "create",
                    "job",
                    "once",
                    "--image=busybox",
                    "--",
                    "echo",
                    "hi",
                ],
                "job.batch/once created",
            ),
            (
                &[
                    "create",
                    "cronjob",
                    "often",
                    "--image=busybox",
                    "--schedule=*/5 * * * *",
                    "--",
                    "echo",
                    "hi",
                ],
                "cronjob.batch/often created",
            ),
            (
                &["create", "job", "now", "--from=cronjob/often"],
                "job.batch/now created",
            ),
            (
                &[
                    "create",
                    "role",
                    "reader",
                    "--verb=get,list",
                    "--resource=pods,deployments.apps",
                    "--resource-name=x",
                ],
                "role.rbac.authorization.k8s.io/reader created",
            ),
            (
                &[
                    "create",
                    "rolebinding",
                    "read",
                    "--role=reader",
                    "--serviceaccount=gen:robot",
                    "--user=bob",
                ],
                "rolebinding.rbac.authorization.k8s.io/read created",
            ),
            (
                &[
                    "create",
                    "poddisruptionbudget",
                    "pdb",
                    "--selector=app=web",
                    "--min-available=50%",
                ],
                "poddisruptionbudget.policy/pdb created",
            ),
            (
                &["create", "secret", "generic", "s", "--from-literal=a=b"],
                "secret/s created",
            ),
            (
                &[
                    "create",
                    "secret",
                    "docker-registry",
                    "reg",
                    "--docker-username=u",
                    "--docker-password=p",
                    "--docker-server=r.example.com",
                ],
                "secret/reg created",
            ),
            (
                &["create", "configmap", "cm", "--from-literal=a=b"],
                "configmap/cm created",
            ),
            (
                &["create", "serviceaccount", "robot"],
                "serviceaccount/robot created",
            ),
            (
                &[
                    "create",
                    "ingress",
                    "ing",
                    "--rule=foo.example.com/bar*=web:8080,tls=cert",
                    "--class=nginx",
                ],
                "ingress.networking.k8s.io/ing created",
            ),
            (
                &[
                    "create",
                    "quota",
                    "q",
                    "--hard=cpu=1,memory=1G,pods=2",
                    "--scopes=BestEffort",
                ],
                "resourcequota/q created",
            ),
        ];
        for (args, expected) in commands {
            // The namespace goes first: anything after `--` is the container's command.
            let mut all = n.to_vec();
            all.extend_from_slice(args);
            let out = kubectl.ok(&all).await?;
            ensure!(out.contains(expected), "kubectl {}: {out}", args.join(" "));
        }
        for (args, expected) in [
            (
                vec![
                    "create",
                    "clusterrole",
                    "logs-reader",
                    "--verb=get",
                    "--non-resource-url=/logs/*",
                ],
                "clusterrole.rbac.authorization.k8s.io/logs-reader created",
            ),
            (
                vec![
                    "create",
                    "clusterrole",
                    "gathered",
                    "--aggregation-rule=team=a",
                ],
                "clusterrole.rbac.authorization.k8s.io/gathered created",
            ),
            (
                vec![
                    "create",
                    "clusterrolebinding",
                    "robots-view",
                    "--clusterrole=view",
                    "--serviceaccount=gen:robot",
                ],
                "clusterrolebinding.rbac.authorization.k8s.io/robots-view created",
            ),
            (
                vec![
                    "create",
                    "priorityclass",
                    "high",
                    "--value=1000",
                    "--description=important",
                    "--preemption-policy=Never",
                ],
                "priorityclass.scheduling.k8s.io/high created",
            ),
        ] {
            let out = kubectl.ok(&args).await?;
            ensure!(out.contains(expected), "kubectl {}: {out}", args.join(" "));
        }

        let get = |args: &'static [&'static str]| {
            let kubectl = &kubectl;
            async move {
                let text = kubectl.ok(args).await?;
                serde_json::from_str::<Value>(&text)
                    .with_context(|| format!("kubectl {} printed {text}", args.join(" ")))
            }
        };
        let deployment = get(&["get", "deployment", "web", "-n", "gen", "-o", "json"]).await?;
        ensure!(
            deployment["spec"]["replicas"] == 0,
            "replicas {}",
            deployment["spec"]
        );
        ensure!(
            deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"]
                == 80,
            "ports {}",
            deployment["spec"]
        );
        let service = get(&["get", "service", "np", "-n", "gen", "-o", "json"]).await?;
        let port = &service["spec"]["ports"][0];
        ensure!(
            port["port"] == 80 && port["targetPort"] == 8080 && port["nodePort"] == 30080,
            "port {port}"
        );
        let role = get(&["get", "role", "reader", "-n", "gen", "-o", "json"]).await?;
        let groups: Vec<&Value> = role["rules"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| &r["apiGroups"])
            .collect();
        ensure!(
            groups.iter().any(|g| g[0] == ""),
            "the core group survives protobuf: {}",
            role["rules"]
        );
        let pdb = get(&["get", "pdb", "pdb", "-n", "gen", "-o", "json"]).await?;
        ensure!(pdb["spec"]["minAvailable"] == "50%", "pdb {}", pdb["spec"]);
        let job = get(&["get", "job", "now", "-n", "gen", "-o", "json"]).await?;
        ensure!(
            job["metadata"]["ownerReferences"][0]["kind"] == "CronJob",
            "job from cronjob {}",
            job["metadata"]
        );
        let ingress = get(&["get", "ingress", "ing", "-n", "gen", "-o", "json"]).await?;
        ensure!(
            ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["port"]["number"]
                == 8080,
            "ingress {}",
            ingress["spec"]
        );
        let quota = get(&["get", "quota", "q", "-n", "gen", "-o", "json"]).await?;
        ensure!(
            quota["spec"]["hard"]["memory"] == "1G",
            "quota {}",
            quota["spec"]
        );
        let class = get(&["get", "priorityclass", "high", "-o", "json"]).await?;
        ensure!(
            class["value"] == 1000 && class["preemptionPolicy"] == "Never",
            "priorityclass {class}"
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn kubectl_create_token_authenticates_as_the_service_account() -> Result<()> {
    with_kubectl(None, |kubectl| async move {
        kubectl.ok(&["create", "namespace", "tok"]).await?;
        kubectl.ok(&["create", "serviceaccount", "robot", "-n", "tok"]).await?;
        kubectl.ok(&["create", "rolebinding", "robot-view", "--clusterrole=view", "--serviceaccount=tok:robot", "-n", "tok"]).await?;
        let token = kubectl.ok(&["create", "token", "robot", "-n", "tok", "--duration=1h"]).await?;
        let token_flag = format!("--token={}", token.trim());
        let whoami = kubectl.ok(&["auth", "whoami", &token_flag]).await?;
        ensure!(whoami.contains("system:serviceaccount:tok:robot"), "kubectl auth whoami with the token:\n{whoami}");
        kubectl.ok(&["get", "pods", "-n", "tok", &token_flag]).await?;
        let denied = kubectl.run(&["get", "secrets", "-n", "tok", &token_flag]).await?;
        let stderr = String::from_utf8_lossy(&denied.stderr);
        ensure!(
            !denied.status.success()
                && stderr.contains("secrets is forbidden: User \"system:serviceaccount:tok:robot\" cannot list resource \"secrets\" in API group \"\" in the namespace \"tok\""),
            "kubectl get secrets with a view token: {stderr}"
        );
        let short = kubectl.run(&["create", "token", "robot", "-n", "tok", "--duration=1m"]).await?;
        ensure!(
            !short.status.success() && String::from_utf8_lossy(&short.stderr).contains("may not specify a duration less than 10 minutes"),
            "a one-minute token: {}",
            String::from_utf8_lossy(&short.stderr)
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn kubectl_debug_and_certificate_approval() -> Result<()> {
    with_kubectl(None, |kubectl| async move {
        kubectl.ok(&["create", "namespace", "ops"]).await?;
        let pod = kubectl.write_file(
            "pod.yaml",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: target, namespace: ops}\nspec:\n  containers: [{name: app, image: registry.k8s.io/pause:3.10}]\n",
        )?;
        kubectl.ok(&["apply", "-f", &pod.to_string_lossy()]).await?;
        kubectl
            .ok(&["debug", "target", "-n", "ops", "--image=busybox", "--container=dbg", "--attach=false", "--profile=general"])
            .await?;
        let ephemeral = kubectl
            .ok(&["get", "pod", "target", "-n", "ops", "-o", "jsonpath={.spec.ephemeralContainers[0].name}"])
            .await?;
        ensure!(ephemeral.trim() == "dbg", "ephemeral containers after kubectl debug: {ephemeral:?}");

        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(rcgen::DnType::CommonName, "alice");
        let pem = params.serialize_request(&key)?.pem()?;
        let request = serde_json::to_value(k8s_openapi::ByteString(pem.into_bytes()))?;
        let csr = kubectl.write_file(
            "csr.json",
            &serde_json::json!({
                "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
                "metadata": {"name": "alice"},
                "spec": {"request": request, "signerName": "example.com/uplink", "usages": ["client auth"]},
            })
            .to_string(),
        )?;
        kubectl.ok(&["create", "-f", &csr.to_string_lossy()]).await?;
        let out = kubectl.ok(&["certificate", "approve", "alice"]).await?;
        ensure!(out.contains("certificatesigningrequest.certificates.k8s.io/alice approved"), "kubectl certificate approve: {out}");
        let condition = kubectl
            .ok(&["get", "csr", "alice", "-o", "jsonpath={.status.conditions[0].type}={.status.conditions[0].status} {.spec.username}"])
            .await?;
        ensure!(condition.trim() == "Approved=True uplink-admin", "after approval: {condition:?}");
        let deny = kubectl.run(&["certificate", "deny", "alice"]).await?;
        ensure!(!deny.status.success(), "denying an approved request succeeded");
        Ok(())
    })
    .await
}
