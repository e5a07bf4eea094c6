//! The cert-manager manifests in `deploy/cert-manager` build with
//! `kubectl kustomize` (the kustomize an operator runs) and say what the
//! hub and the agents need: the hub's certificate lands in the Secret
//! `deploy/hub` mounts, signed by a CA Issuer; an agent's certificate, with
//! the per-cluster overlay the kustomization documents, names the cluster in
//! its URI SAN `uplink://cluster/<name>` (what `hub/src/tls.rs` reads);
//! and the name an agent dials to find every hub replica is the hub's
//! headless Service, on the hub's certificate.

use anyhow::{Context as _, Result, ensure};

#[path = "deploy/kustomize.rs"]
mod kustomize;

use kustomize::{deploy, expanded_args, find, flag, kustomize, relative, repo, selects, strings};

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

/// `wss://host:port[/...]` split into host and port.
fn host_and_port(url: &str) -> Result<(&str, u16)> {
    let rest = url
        .strip_prefix("wss://")
        .with_context(|| format!("{url} is not a wss:// URL"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = authority
        .rsplit_once(':')
        .with_context(|| format!("{url} names no port"))?;
    Ok((host, port.parse()?))
}

#[test]
fn agents_find_every_hub_replica_by_a_name_on_the_hub_certificate() -> Result<()> {
    let agent = deploy("agent")?;
    let hub = deploy("hub")?;
    let pki = deploy("cert-manager/hub")?;

    let container =
        &find(&agent, "Deployment", "uplink-agent")?["spec"]["template"]["spec"]["containers"][0];
    let args = expanded_args(&agent, container)?;
    ensure!(
        flag(&args, "--hub-discovery") == Some("dns"),
        "the agent resolves the hub's replicas: {args:?}"
    );
    let url = flag(&args, "--hub-url").context("the agent has no --hub-url")?;
    ensure!(
        !url.contains(','),
        "--hub-discovery=dns takes exactly one URL: {url}"
    );
    let (host, port) = host_and_port(url)?;

    // The host is a Service of deploy/hub by its cluster DNS name.
    let (service, rest) = host
        .split_once('.')
        .with_context(|| format!("{host} is no Service DNS name"))?;
    let namespace = rest
        .strip_suffix(".svc")
        .or_else(|| rest.strip_suffix(".svc.cluster.local"))
        .with_context(|| format!("{host} is no Service DNS name"))?;
    let replicas = find(&hub, "Service", service)?;
    ensure!(replicas["metadata"]["namespace"] == namespace);
    ensure!(
        replicas["spec"]["clusterIP"] == "None",
        "{service} is headless, so its name resolves to every replica: {}",
        replicas["spec"]
    );
    let deployment = find(&hub, "Deployment", "uplink-hub")?;
    ensure!(deployment["metadata"]["namespace"] == namespace);
    let pod = &deployment["spec"]["template"];
    ensure!(
        selects(&replicas["spec"]["selector"], &pod["metadata"]["labels"]),
        "{service} selects the hub's pods"
    );
    let hub_container = &pod["spec"]["containers"][0];
    let service_port = replicas["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["port"] == port)
        .with_context(|| format!("{service} has no port {port}"))?;
    let target = &service_port["targetPort"];
    let container_port = hub_container["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == *target || p["containerPort"] == *target)
        .with_context(|| format!("the hub has no port {target}"))?;
    let hub_args = expanded_args(&hub, hub_container)?;
    let listen = flag(&hub_args, "--listen").context("the hub has no --listen")?;
    ensure!(
        listen.ends_with(&format!(":{}", container_port["containerPort"])),
        "the tunnel port {} is where the hub listens ({listen})",
        container_port["containerPort"]
    );

    // The agent checks each replica's certificate against the URL's host.
    let serving = find(&pki, "Certificate", "uplink-hub")?;
    let names = strings(&serving["spec"]["dnsNames"]);
    for name in [
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ] {
        ensure!(
            names.contains(&name.as_str()),
            "the hub's certificate names {name}: {names:?}"
        );
    }
    ensure!(names.contains(&host), "{host} is on the hub's certificate");
    Ok(())
}
