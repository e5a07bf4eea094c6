//! A cluster's identity is its client certificate, signed by the hub's CA.
//! An agent with a certificate from another CA, or whose Hello claims a
//! cluster its certificate does not prove, is refused: counted in the hub's
//! metrics, never connected, never in the store or the hub API, and the
//! well-behaved agents next to it keep delivering status to KCP without
//! losing their sessions.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use serde_json::{Value, json};
use uplink_e2e::pki::DevPki;
use uplink_tests::fleet::{
    Fleet, SCENARIO_TIMEOUT, STATUS_DEADLINE, bounded, deployment, eventually,
};

const WORKSPACE: &str = "root:org:team-a";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_with_a_certificate_from_another_ca_is_refused() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, foreign_ca()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_claiming_a_cluster_its_certificate_does_not_prove_is_refused() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, false_name()).await
}

/// An intruder with a certificate for cluster `a` from a CA the hub does not
/// trust, pointed at cluster a's API server: it tries to impersonate `a`.
async fn foreign_ca() -> Result<()> {
    let mut fleet = Fleet::builder()
        .clusters(["a"])
        .workspaces([WORKSPACE])
        .heartbeat(Duration::from_millis(200))
        .start()
        .await?;
    fleet
        .place(WORKSPACE, "shop", &deployment("web", 1), &["a"])
        .await?;

    let other_ca = DevPki::new("Some other CA")?;
    let (cert, key) = fleet.write_cert("intruder", &other_ca.client_cert("a")?)?;
    let mut intruder = fleet.agent_config("a")?;
    intruder.tls_cert = cert;
    intruder.tls_key = key;
    fleet.spawn_agent("intruder", intruder).await?;

    // Refused at the TLS handshake, and again at every retry.
    let tls_failures = r#"uplink_hub_handshake_failures_total{reason="tls"}"#;
    let first = eventually(
        STATUS_DEADLINE,
        "the hub to refuse the intruder's TLS handshake",
        async || {
            let failures = fleet.hub_metrics().await?.counter(tls_failures);
            ensure!(failures >= 1.0, "{tls_failures} is {failures}");
            Ok(failures)
        },
    )
    .await?;
    eventually(
        STATUS_DEADLINE,
        "the intruder to retry and be refused again",
        async || {
            let failures = fleet.hub_metrics().await?.counter(tls_failures);
            ensure!(failures > first, "{tls_failures} is {failures}");
            Ok(())
        },
    )
    .await?;
    let intruder = fleet.agent_metrics("intruder").await?;
    ensure!(
        intruder.value("uplink_agent_connected") == Some(0.0),
        "the intruder must not be connected:\n{intruder}"
    );
    ensure!(
        intruder.counter("uplink_agent_sessions_total{mode=\"snapshot\"}") == 0.0
            && intruder.counter("uplink_agent_sessions_total{mode=\"resume\"}") == 0.0,
        "the intruder must never have had a session:\n{intruder}"
    );

    // The real agent of `a` keeps its session and keeps delivering.
    let status = json!({"observedGeneration": 1, "replicas": 1, "readyReplicas": 1});
    fleet
        .set_status::<Deployment>("a", WORKSPACE, "shop", "web", status.clone())
        .await?;
    kcp_status_becomes(&fleet, "shop", "web", &status).await?;
    check_undisturbed(&fleet, &["a"]).await?;
    ensure_not_listed(&fleet, &["a"]).await?;

    fleet.stop_agent("intruder").await?;
    fleet.shutdown().await
}

/// Impostors with cluster b's genuine certificate whose Hello claims cluster
/// "evil" (unknown) or "a" (another real cluster), watching b's API server.
async fn false_name() -> Result<()> {
    let mut fleet = Fleet::builder()
        .clusters(["a", "b"])
        .workspaces([WORKSPACE])
        .heartbeat(Duration::from_millis(200))
        .start()
        .await?;
    fleet
        .place(WORKSPACE, "shop", &deployment("web", 1), &["a"])
        .await?;
    fleet
        .place(WORKSPACE, "billing", &deployment("invoices", 1), &["b"])
        .await?;

    let mut impostor = fleet.agent_config("b")?;
    impostor.cluster = "evil".to_owned();
    fleet.spawn_agent("evil", impostor).await?;
    // And one that claims the name of another real cluster.
    let mut impostor = fleet.agent_config("b")?;
    impostor.cluster = "a".to_owned();
    fleet.spawn_agent("b-as-a", impostor).await?;

    let mismatches = r#"uplink_hub_handshake_failures_total{reason="identity_mismatch"}"#;
    let first = eventually(
        STATUS_DEADLINE,
        "the hub to refuse the impostor's Hello",
        async || {
            let failures = fleet.hub_metrics().await?.counter(mismatches);
            ensure!(failures >= 1.0, "{mismatches} is {failures}");
            Ok(failures)
        },
    )
    .await?;
    eventually(
        STATUS_DEADLINE,
        "the impostor to retry and be refused again",
        async || {
            let failures = fleet.hub_metrics().await?.counter(mismatches);
            ensure!(failures > first, "{mismatches} is {failures}");
            Ok(())
        },
    )
    .await?;

    // The impostors were told why, in an Error frame, and never connected.
    for name in ["evil", "b-as-a"] {
        eventually(
            STATUS_DEADLINE,
            &format!("{name} to be told IdentityMismatch"),
            async || {
                let scrape = fleet.agent_metrics(name).await?;
                let errors =
                    scrape.counter(r#"uplink_agent_hub_errors_total{code="IdentityMismatch"}"#);
                ensure!(
                    errors >= 1.0,
                    "uplink_agent_hub_errors_total{{code=\"IdentityMismatch\"}} is {errors}"
                );
                Ok(())
            },
        )
        .await?;
        let scrape = fleet.agent_metrics(name).await?;
        ensure!(
            scrape.value("uplink_agent_connected") == Some(0.0),
            "impostor {name} must not be connected:\n{scrape}"
        );
    }

    // Both legitimate clusters keep delivering, b included (whose
    // certificate the impostor holds).
    for (cluster, namespace, name, ready) in
        [("a", "shop", "web", 1), ("b", "billing", "invoices", 1)]
    {
        let status = json!({"observedGeneration": 1, "replicas": 1, "readyReplicas": ready});
        fleet
            .set_status::<Deployment>(cluster, WORKSPACE, namespace, name, status.clone())
            .await?;
        kcp_status_becomes(&fleet, namespace, name, &status).await?;
    }
    check_undisturbed(&fleet, &["a", "b"]).await?;
    ensure_not_listed(&fleet, &["a", "b"]).await?;

    // Nothing of "evil" reached the store; b's objects are b's.
    let store = fleet.hub_store();
    ensure!(
        store.cluster_objects("evil") == 0 && store.position("evil").is_none(),
        "the store holds entries for \"evil\""
    );
    ensure!(
        fleet.hub_health().record("evil").is_none(),
        "the hub keeps a cluster record for \"evil\""
    );
    let objects = fleet.hub_list("/api/v1/objects").await?;
    for object in objects
        .as_array()
        .context("/api/v1/objects is not a list")?
    {
        ensure!(
            object["clusters"].get("evil").is_none(),
            "an object is reported by \"evil\": {object:#}"
        );
    }

    // Every object is reported by the cluster it was placed on, and only by it.
    for (namespace, name, cluster) in [("shop", "web", "a"), ("billing", "invoices", "b")] {
        let object = objects
            .as_array()
            .into_iter()
            .flatten()
            .find(|o| o["namespace"] == namespace && o["name"] == name)
            .with_context(|| format!("{namespace}/{name} missing from the hub API: {objects:#}"))?;
        let reporters: Vec<&String> = object["clusters"]
            .as_object()
            .map(|c| c.keys().collect())
            .unwrap_or_default();
        ensure!(
            reporters == [cluster],
            "{name} is reported by {reporters:?}, expected [{cluster}]"
        );
    }

    fleet.stop_agent("evil").await?;
    fleet.stop_agent("b-as-a").await?;
    fleet.shutdown().await
}

/// The hub counts exactly the legitimate agents, and none of them lost a
/// session to a newer connection for its name.
async fn check_undisturbed(fleet: &Fleet, legit: &[&str]) -> Result<()> {
    let hub = fleet.hub_metrics().await?;
    let connected = hub.require("uplink_hub_agents_connected")?;
    ensure!(
        connected == legit.len() as f64,
        "the hub should count {} connected agents:\n{hub}",
        legit.len()
    );
    for agent in legit {
        let scrape = fleet.agent_metrics(agent).await?;
        ensure!(
            scrape.value("uplink_agent_connected") == Some(1.0),
            "agent {agent} should be connected:\n{scrape}"
        );
        ensure!(
            scrape.counter(r#"uplink_agent_hub_errors_total{code="Superseded"}"#) == 0.0,
            "agent {agent} lost its session to another connection:\n{scrape}"
        );
    }
    Ok(())
}

/// `GET /api/v1/clusters` lists exactly the legitimate clusters.
async fn ensure_not_listed(fleet: &Fleet, legit: &[&str]) -> Result<()> {
    let clusters = fleet.hub_list("/api/v1/clusters").await?;
    let mut names: Vec<&str> = clusters
        .as_array()
        .context("/api/v1/clusters is not a list")?
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    names.sort_unstable();
    ensure!(
        names == legit,
        "the hub API should list only {legit:?}: {clusters:#}"
    );
    Ok(())
}

async fn kcp_status_becomes(
    fleet: &Fleet,
    namespace: &str,
    name: &str,
    expected: &Value,
) -> Result<()> {
    eventually(
        STATUS_DEADLINE,
        &format!("status {expected} on {name} in KCP {WORKSPACE}/{namespace}"),
        async || {
            let status = fleet
                .upstream_status::<Deployment>(WORKSPACE, namespace, name)
                .await?;
            ensure!(
                status.as_ref() == Some(expected),
                "status is {}",
                status.map_or_else(|| "absent".to_owned(), |s| s.to_string())
            );
            Ok(())
        },
    )
    .await
}
