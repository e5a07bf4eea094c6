//! The cert-manager manifests in `deploy/cert-manager` build with
//! `kubectl kustomize` (the kustomize an operator runs) and say what the
//! hub and the agents need: the hub's certificate lands in the Secret
//! `deploy/hub` mounts, signed by a CA Issuer; an agent's certificate, with
//! the per-cluster overlay the kustomization documents, names the cluster in
//! its URI SAN `uplink://cluster/<name>` (what `hub/src/tls.rs` reads).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// `kubectl kustomize <dir>`, one value per document.
fn kustomize(dir: &Path) -> Result<Vec<Value>> {
    let output = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .context("running kubectl kustomize (is kubectl on PATH?)")?;
    if !output.status.success() {
        bail!(
            "kubectl kustomize {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let text = String::from_utf8(output.stdout)?;
    serde_saphyr::from_multiple(&text)
        .with_context(|| format!("kubectl kustomize printed invalid YAML:\n{text}"))
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> Result<&'a Value> {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .with_context(|| format!("no {kind}/{name} in the build"))
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .map(|items| items.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

#[test]
fn the_hub_certificate_comes_from_the_tunnel_ca_into_the_secret_the_hub_mounts() -> Result<()> {
    let pki = kustomize(&repo().join("deploy/cert-manager/hub"))?;
    let hub = kustomize(&repo().join("deploy/hub"))?;

    let ca = find(&pki, "Certificate", "uplink-tunnel-ca")?;
    ensure!(ca["spec"]["isCA"] == true, "the CA certificate is a CA");
    let bootstrap = &ca["spec"]["issuerRef"]["name"];
    let selfsigned = find(&pki, "Issuer", bootstrap.as_str().unwrap_or_default())?;
    ensure!(selfsigned["spec"]["selfSigned"].is_object());
    let ca_issuer = find(&pki, "Issuer", "uplink-tunnel-ca")?;
    ensure!(
        ca_issuer["spec"]["ca"]["secretName"] == ca["spec"]["secretName"],
        "the CA Issuer signs with the CA certificate's Secret"
    );

    let serving = find(&pki, "Certificate", "uplink-hub")?;
    ensure!(serving["spec"]["issuerRef"]["name"] == "uplink-tunnel-ca");
    ensure!(strings(&serving["spec"]["usages"]).contains(&"server auth"));
    let deployment = find(&hub, "Deployment", "uplink-hub")?;
    let mounted: Vec<&str> = deployment["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["secret"]["secretName"].as_str())
        .collect();
    let secret = serving["spec"]["secretName"].as_str().unwrap_or_default();
    ensure!(
        mounted.contains(&secret),
        "the hub mounts {mounted:?}, cert-manager writes {secret}"
    );
    for document in &pki {
        ensure!(
            document["metadata"]["namespace"] == "uplink-system",
            "{} is in uplink-system, with the hub",
            document["metadata"]["name"]
        );
    }
    Ok(())
}

#[test]
fn an_agent_overlay_names_its_cluster_in_the_uri_san() -> Result<()> {
    let base = kustomize(&repo().join("deploy/cert-manager/agent"))?;
    let template = find(&base, "Certificate", "uplink-agent")?;
    ensure!(template["spec"]["issuerRef"]["name"] == "uplink-tunnel-ca");
    ensure!(strings(&template["spec"]["usages"]).contains(&"client auth"));

    // The overlay the kustomization's comment shows.
    let dir = tempfile::tempdir()?;
    let base_dir = repo().join("deploy/cert-manager/agent");
    std::fs::write(
        dir.path().join("kustomization.yaml"),
        format!(
            r#"resources: [{}]
nameSuffix: -east-1
patches:
  - target: {{kind: Certificate, name: uplink-agent}}
    patch: |-
      - {{op: replace, path: /spec/commonName, value: east-1}}
      - {{op: replace, path: /spec/uris/0, value: "uplink://cluster/east-1"}}
      - {{op: replace, path: /spec/secretName, value: uplink-agent-tls-east-1}}
"#,
            relative(dir.path(), &base_dir)?
        ),
    )?;
    let overlay = kustomize(dir.path())?;
    let cert = find(&overlay, "Certificate", "uplink-agent-east-1")?;
    ensure!(strings(&cert["spec"]["uris"]) == ["uplink://cluster/east-1"]);
    ensure!(cert["spec"]["commonName"] == "east-1");
    ensure!(cert["spec"]["secretName"] == "uplink-agent-tls-east-1");
    ensure!(
        uplink_hub::tls::CLUSTER_URI_PREFIX == "uplink://cluster/",
        "the manifests spell the hub's URI SAN prefix"
    );
    Ok(())
}

/// kustomize wants a relative path to a base outside the overlay's root.
fn relative(from: &Path, to: &Path) -> Result<String> {
    let depth = from.components().count().saturating_sub(1);
    let up = "../".repeat(depth);
    let to = to
        .strip_prefix("/")
        .context("the repository's path is absolute")?;
    Ok(format!("{up}{}", to.display()))
}
