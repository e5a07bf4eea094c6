//! The real `kubectl` against the embedded API server: what an operator or
//! the demo does by hand must work. Skipped (with a notice) when kubectl is
//! not on PATH.

use anyhow::{Context as _, Result, ensure};
use serde_json::Value;
use uplink_e2e::apiserver::ApiServerConfig;
use uplink_tests::{
    apiserver::{EVENT_TIMEOUT, TEST_TIMEOUT, eventually, start_server, stop_server, within},
    kubectl::{Kubectl, find_kubectl},
};

#[path = "kubectl/cluster.rs"]
mod cluster;

const DEPLOYMENT_YAML: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: demo
  labels:
    app: web
spec:
  replicas: 2
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
        - name: web
          image: registry.k8s.io/pause:3.10
"#;

fn yaml_to_json(text: &str) -> Result<Value> {
    serde_saphyr::from_str(text).with_context(|| format!("kubectl printed invalid YAML:\n{text}"))
}

const NAMESPACE_YAML: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: demo\n";

/// Creates namespace `demo` from YAML. (`kubectl create namespace` is a typed
/// command that sends protobuf; it has its own test.)
async fn create_demo_namespace(kubectl: &Kubectl) -> Result<()> {
    let manifest = kubectl.write_file("namespace.yaml", NAMESPACE_YAML)?;
    let out = kubectl
        .ok(&["create", "-f", &manifest.to_string_lossy()])
        .await?;
    ensure!(
        out.contains("namespace/demo created"),
        "kubectl create namespace said: {out}"
    );
    Ok(())
}

/// Runs `body` with kubectl against a fresh embedded server, bounded by
/// [`TEST_TIMEOUT`]; skips when kubectl is missing.
async fn with_kubectl<F, Fut>(workspace: Option<&str>, body: F) -> Result<()>
where
    F: FnOnce(Kubectl) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    if find_kubectl().is_none() {
        eprintln!("skipping: kubectl not found on PATH");
        return Ok(());
    }
    let config = ApiServerConfig {
        workspaces: workspace.map(|w| vec![w.to_owned()]).unwrap_or_default(),
        ..ApiServerConfig::default()
    };
    let server = start_server(config).await?;
    let Some(kubectl) = Kubectl::for_server(&server, workspace)? else {
        return Ok(());
    };
    let outcome = within(TEST_TIMEOUT, body(kubectl)).await;
    let stopped = stop_server(server).await;
    outcome?;
    stopped
}

#[tokio::test]
async fn kubectl_deployment_lifecycle() -> Result<()> {
    with_kubectl(None, |kubectl| async move {
        create_demo_namespace(&kubectl).await?;
        let manifest = kubectl.write_file("deployment.yaml", DEPLOYMENT_YAML)?;
        let manifest = manifest.to_str().context("temp path is not UTF-8")?;
        let created = kubectl.ok(&["create", "-f", manifest]).await?;
        ensure!(created.contains("deployment.apps/web created"), "kubectl create said: {created}");

        // get -o yaml round-trips the object.
        let yaml = kubectl.ok(&["get", "deployment", "web", "-n", "demo", "-o", "yaml"]).await?;
        let object = yaml_to_json(&yaml)?;
        ensure!(object["kind"] == "Deployment", "kind {}", object["kind"]);
        ensure!(object["apiVersion"] == "apps/v1", "apiVersion {}", object["apiVersion"]);
        ensure!(object["metadata"]["name"] == "web", "name {}", object["metadata"]["name"]);
        ensure!(object["metadata"]["namespace"] == "demo", "namespace {}", object["metadata"]["namespace"]);
        ensure!(object["spec"]["replicas"] == 2, "replicas {}", object["spec"]["replicas"]);
        ensure!(object["metadata"]["uid"].is_string(), "no uid in {yaml}");

        // The default (table) output names it too.
        let table = kubectl.ok(&["get", "deployments", "-n", "demo"]).await?;
        ensure!(table.lines().any(|l| l.starts_with("web ")), "kubectl get deployments printed:\n{table}");

        // A watch sees a status patch.
        let mut watch = kubectl.spawn_lines(&[
            "get",
            "deployment",
            "web",
            "-n",
            "demo",
            "-w",
            "-o",
            r#"jsonpath={.metadata.name} ready={.status.readyReplicas}{"\n"}"#,
        ])?;
        watch
            .wait_for(EVENT_TIMEOUT, |line| line.starts_with("web ready="))
            .await
            .context("kubectl get -w printed no initial state")?;
        let patched = kubectl
            .ok(&[
                "patch",
                "deployment",
                "web",
                "-n",
                "demo",
                "--subresource=status",
                "--type=merge",
                "-p",
                r#"{"status":{"replicas":2,"updatedReplicas":2,"readyReplicas":2,"availableReplicas":2,"observedGeneration":1}}"#,
            ])
            .await?;
        ensure!(patched.contains("deployment.apps/web patched"), "kubectl patch said: {patched}");
        watch
            .wait_for(EVENT_TIMEOUT, |line| line.trim() == "web ready=2")
            .await
            .context("kubectl get -w did not show the status change")?;
        watch.stop().await;

        let ready = kubectl
            .ok(&["get", "deployment", "web", "-n", "demo", "-o", "jsonpath={.status.readyReplicas} {.metadata.generation} {.spec.replicas}"])
            .await?;
        ensure!(ready.trim() == "2 1 2", "after the status patch: {ready:?} (ready, generation, replicas)");

        let deleted = kubectl.ok(&["delete", "deployment", "web", "-n", "demo"]).await?;
        ensure!(deleted.contains(r#""web" deleted"#), "kubectl delete said: {deleted}");
        eventually(EVENT_TIMEOUT, "kubectl get to report the deployment gone", || async {
            let output = kubectl.run(&["get", "deployment", "web", "-n", "demo"]).await?;
            let stderr = String::from_utf8_lossy(&output.stderr);
            Ok((!output.status.success() && stderr.contains("NotFound")).then_some(()))
        })
        .await
    })
    .await
}

#[tokio::test]
async fn kubectl_apply_client_and_server_side() -> Result<()> {
    with_kubectl(None, |kubectl| async move {
        create_demo_namespace(&kubectl).await?;
        let first = kubectl.write_file("v1.yaml", DEPLOYMENT_YAML)?;
        let second = kubectl.write_file(
            "v2.yaml",
            &DEPLOYMENT_YAML.replace("replicas: 2", "replicas: 3"),
        )?;
        let third = kubectl.write_file(
            "v3.yaml",
            &DEPLOYMENT_YAML.replace("replicas: 2", "replicas: 4"),
        )?;
        let path = |p: &std::path::Path| p.to_string_lossy().into_owned();

        // Client-side apply: create, then a strategic merge patch.
        let out = kubectl.ok(&["apply", "-f", &path(&first)]).await?;
        ensure!(
            out.contains("deployment.apps/web created"),
            "first apply said: {out}"
        );
        let out = kubectl.ok(&["apply", "-f", &path(&second)]).await?;
        ensure!(
            out.contains("deployment.apps/web configured"),
            "second apply said: {out}"
        );
        let replicas = kubectl
            .ok(&[
                "get",
                "deployment",
                "web",
                "-n",
                "demo",
                "-o",
                "jsonpath={.spec.replicas} {.metadata.generation}",
            ])
            .await?;
        ensure!(
            replicas.trim() == "3 2",
            "after client-side apply: {replicas:?} (replicas, generation)"
        );

        // Server-side apply, taking over the field.
        let out = kubectl
            .ok(&[
                "apply",
                "--server-side",
                "--force-conflicts",
                "--field-manager=uplink-test",
                "-f",
                &path(&third),
            ])
            .await?;
        ensure!(
            out.contains("deployment.apps/web serverside-applied"),
            "server-side apply said: {out}"
        );
        let replicas = kubectl
            .ok(&[
                "get",
                "deployment",
                "web",
                "-n",
                "demo",
                "-o",
                "jsonpath={.spec.replicas}",
            ])
            .await?;
        ensure!(
            replicas.trim() == "4",
            "after server-side apply: replicas {replicas:?}"
        );
        Ok(())
    })
    .await
}

const CRD_YAML: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.kubectl.uplink.test
spec:
  group: kubectl.uplink.test
  scope: Namespaced
  names:
    plural: widgets
    singular: widget
    kind: Widget
    listKind: WidgetList
  versions:
    - name: v1
      served: true
      storage: true
      subresources:
        status: {}
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              x-kubernetes-preserve-unknown-fields: true
            status:
              type: object
              x-kubernetes-preserve-unknown-fields: true
"#;

const WIDGET_YAML: &str = r#"apiVersion: kubectl.uplink.test/v1
kind: Widget
metadata:
  name: w1
  namespace: demo
spec:
  size: 3
"#;

#[tokio::test]
async fn kubectl_custom_resource() -> Result<()> {
    with_kubectl(None, |kubectl| async move {
        create_demo_namespace(&kubectl).await?;
        let crd = kubectl.write_file("crd.yaml", CRD_YAML)?;
        let out = kubectl
            .ok(&["create", "-f", &crd.to_string_lossy()])
            .await?;
        ensure!(
            out.contains("widgets.kubectl.uplink.test created"),
            "kubectl create crd said: {out}"
        );
        kubectl
            .ok(&[
                "wait",
                "--for=condition=Established",
                "crd/widgets.kubectl.uplink.test",
                "--timeout=20s",
            ])
            .await?;
        eventually(
            EVENT_TIMEOUT,
            "kubectl to know the widgets resource",
            || async {
                let output = kubectl
                    .run(&["get", "widgets.kubectl.uplink.test", "-n", "demo"])
                    .await?;
                Ok(output.status.success().then_some(()))
            },
        )
        .await?;

        let widget = kubectl.write_file("widget.yaml", WIDGET_YAML)?;
        let out = kubectl
            .ok(&["create", "-f", &widget.to_string_lossy()])
            .await?;
        ensure!(
            out.contains("widget.kubectl.uplink.test/w1 created"),
            "kubectl create widget said: {out}"
        );

        let json = kubectl
            .ok(&["get", "widget", "w1", "-n", "demo", "-o", "json"])
            .await?;
        let object: Value = serde_json::from_str(&json)?;
        ensure!(object["kind"] == "Widget", "kind {}", object["kind"]);
        ensure!(object["spec"]["size"] == 3, "spec {}", object["spec"]);

        let table = kubectl.ok(&["get", "widgets", "-n", "demo"]).await?;
        ensure!(
            table.lines().any(|l| l.starts_with("w1 ")),
            "kubectl get widgets printed:\n{table}"
        );

        let out = kubectl
            .ok(&[
                "patch",
                "widget",
                "w1",
                "-n",
                "demo",
                "--subresource=status",
                "--type=merge",
                "-p",
                r#"{"status":{"phase":"Ready"}}"#,
            ])
            .await?;
        ensure!(
            out.contains("patched"),
            "kubectl patch widget status said: {out}"
        );
        let phase = kubectl
            .ok(&[
                "get",
                "widget",
                "w1",
                "-n",
                "demo",
                "-o",
                "jsonpath={.status.phase}",
            ])
            .await?;
        ensure!(phase.trim() == "Ready", "status.phase {phase:?}");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn kubectl_in_a_workspace() -> Result<()> {
    with_kubectl(Some("root:org:team-a"), |kubectl| async move {
        create_demo_namespace(&kubectl).await?;
        let manifest = kubectl.write_file("deployment.yaml", DEPLOYMENT_YAML)?;
        kubectl
            .ok(&["create", "-f", &manifest.to_string_lossy()])
            .await?;
        let name = kubectl
            .ok(&[
                "get",
                "deployment",
                "web",
                "-n",
                "demo",
                "-o",
                "jsonpath={.metadata.name}",
            ])
            .await?;
        ensure!(name.trim() == "web", "in the workspace: {name:?}");
        let resources = kubectl
            .ok(&["api-resources", "--api-group=apps", "-o", "name"])
            .await?;
        ensure!(
            resources.lines().any(|l| l.trim() == "deployments.apps"),
            "api-resources printed:\n{resources}"
        );
        Ok(())
    })
    .await
}

/// kubectl's typed generators (`create namespace`, `create configmap`)
/// send their bodies as protobuf, as they do to kube-apiserver.
#[tokio::test]
async fn kubectl_typed_create_commands() -> Result<()> {
    with_kubectl(None, |kubectl| async move {
        let out = kubectl.ok(&["create", "namespace", "typed"]).await?;
        ensure!(
            out.contains("namespace/typed created"),
            "kubectl create namespace said: {out}"
        );
        let out = kubectl
            .ok(&[
                "create",
                "configmap",
                "settings",
                "-n",
                "typed",
                "--from-literal=mode=fast",
            ])
            .await?;
        ensure!(
            out.contains("configmap/settings created"),
            "kubectl create configmap said: {out}"
        );
        let mode = kubectl
            .ok(&[
                "get",
                "configmap",
                "settings",
                "-n",
                "typed",
                "-o",
                "jsonpath={.data.mode}",
            ])
            .await?;
        ensure!(mode.trim() == "fast", "configmap data.mode {mode:?}");
        Ok(())
    })
    .await
}
