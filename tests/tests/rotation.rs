//! Certificate rotation while ten agents stream, the way cert-manager
//! rotates the Secrets mounted in the hub's and the agents' pods: the files
//! change on disk under running processes.
//!
//! 1. Renewal from the same CA (hub and every agent): no session drops,
//!    statuses keep converging, the expiry metrics move, and a new
//!    handshake with the hub gets the renewed serving certificate.
//! 2. A new CA: first trusted next to the old one, then the hub and agents
//!    get certificates from it (one agent an expired one, one agent none),
//!    then the old CA is removed from the CA file. Still no session drops.
//!    At their next handshake the agent holding a renewed certificate is
//!    welcomed (so it presented what it reloaded, and trusted the hub's new
//!    certificate through its reloaded CA file), the one with the old CA's
//!    certificate and the one with the expired certificate are refused.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::json;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use uplink_e2e::pki::{DevPki, IssuedCert};
use uplink_tests::fleet::convergence::Convergence;
use uplink_tests::fleet::proxy::{LinkMode, TcpProxy};
use uplink_tests::fleet::{Fleet, Scrape, bounded, deployment, eventually};

const TEAM: &str = "root:org:team-a";
const NS: &str = "shop";
const HEARTBEAT: Duration = Duration::from_millis(500);
/// The files are polled this often in the test (seconds in production).
const RELOAD: Duration = Duration::from_millis(100);
const WITHIN: Duration = Duration::from_secs(30);
/// Renewed certificates' lifetime: another notAfter than the fleet's
/// 397-day ones, so the expiry metric visibly moves.
const RENEWED_DAYS: i64 = 30;

/// Reaches the hub through a proxy, so the test can force its reconnect.
const RENEWED: &str = "c0";
/// Gets an expired certificate from the new CA.
const EXPIRED: &str = "c8";
/// Keeps its certificate from the removed CA.
const LEFT_BEHIND: &str = "c9";

const HUB_EXPIRY: &str = "uplink_hub_certificate_expiry_timestamp_seconds{listener=\"tunnel\"}";
const HUB_RELOADS: &str =
    "uplink_hub_certificate_reloads_total{listener=\"tunnel\",result=\"success\"}";
const AGENT_EXPIRY: &str = "uplink_agent_certificate_expiry_timestamp_seconds";
const AGENT_RELOADS: &str = "uplink_agent_certificate_reloads_total{result=\"success\"}";
const TLS_FAILURES: &str = "uplink_hub_handshake_failures_total{reason=\"tls\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_under_streaming_agents_without_dropping_sessions() -> Result<()> {
    bounded(Duration::from_secs(180), rotation()).await
}

fn clusters() -> Vec<String> {
    (0..10).map(|i| format!("c{i}")).collect()
}

async fn rotation() -> Result<()> {
    let mut fleet = Fleet::builder()
        .clusters(clusters())
        .workspaces([TEAM])
        .heartbeat(HEARTBEAT)
        .hub_config(|c| c.tls_reload_interval = RELOAD)
        .without_agents()
        .start()
        .await?;
    let mut proxies = std::collections::BTreeMap::new();
    for name in clusters() {
        let mut config = fleet.agent_config(&name)?;
        config.tls_reload_interval = RELOAD;
        if [RENEWED, EXPIRED, LEFT_BEHIND].contains(&name.as_str()) {
            let proxy = TcpProxy::start(fleet.hub_tunnel_addr()).await?;
            config.hub_url = proxy.wss_url();
            proxies.insert(name.clone(), proxy);
        }
        fleet.spawn_agent(&name, config).await?;
    }
    for name in clusters() {
        fleet.wait_agent_connected(&name).await?;
    }

    let mut checker = Convergence::deployments();
    for name in clusters() {
        let object = format!("web-{name}");
        fleet
            .place(TEAM, NS, &deployment(&object, 2), &[&name])
            .await?;
        checker.track(TEAM, NS, &object, &name);
    }
    set_statuses(&fleet, &clusters(), 0).await?;
    checker.converged(&fleet, WITHIN).await?;

    let sessions = Sessions::take(&fleet).await?;
    let hub_before = fleet.hub_metrics().await?;
    let hub_expiry = hub_before.require(HUB_EXPIRY)?;
    let mut agent_expiry = std::collections::BTreeMap::new();
    for name in clusters() {
        agent_expiry.insert(
            name.clone(),
            fleet.agent_metrics(&name).await?.require(AGENT_EXPIRY)?,
        );
    }

    // ---- 1. Renewal from the same CA -----------------------------------
    let pki_dir = fleet.dir().join("pki");
    let hub_cert = fleet.pki().hub_cert_for_days(&[], RENEWED_DAYS)?;
    replace(&pki_dir, "hub", &hub_cert)?;
    for name in clusters() {
        let cert = fleet.pki().client_cert_for_days(&name, RENEWED_DAYS)?;
        replace(&pki_dir, &name, &cert)?;
    }
    let renewed_hub_expiry = eventually(WITHIN, "the hub to reload its certificate", async || {
        let value = fleet.hub_metrics().await?.require(HUB_EXPIRY)?;
        ensure!(value < hub_expiry, "{HUB_EXPIRY} still {value}");
        Ok(value)
    })
    .await?;
    for name in clusters() {
        let before = agent_expiry[&name];
        eventually(WITHIN, &format!("agent {name} to reload"), async || {
            let value = fleet.agent_metrics(&name).await?.require(AGENT_EXPIRY)?;
            ensure!(value < before, "{AGENT_EXPIRY} still {value}");
            Ok(())
        })
        .await?;
    }
    ensure!(
        (hub_expiry - renewed_hub_expiry) > 300.0 * 86_400.0,
        "the renewed certificate expires {RENEWED_DAYS} days out: {hub_expiry} → {renewed_hub_expiry}"
    );
    // A new handshake gets the renewed serving certificate.
    let served = served_certificate(
        fleet.hub_tunnel_addr(),
        &fleet.pki().ca_cert_pem,
        &fleet.pki().client_cert("probe")?,
    )
    .await?;
    ensure!(
        served == hub_cert.cert_chain()?[0],
        "a new handshake got another certificate than the renewed one"
    );
    set_statuses(&fleet, &clusters(), 1).await?;
    checker.converged(&fleet, WITHIN).await?;
    sessions.unchanged(&fleet).await?;

    // ---- 2. A new CA, the old one removed --------------------------------
    let new_ca = DevPki::new("Uplink rotated test CA")?;
    let hub_reloads = fleet.hub_metrics().await?.counter(HUB_RELOADS);
    let agent_reloads = reload_counts(&fleet).await?;
    // Both CAs trusted, so nothing breaks while certificates move over.
    std::fs::write(
        pki_dir.join("ca.crt"),
        format!("{}{}", fleet.pki().ca_cert_pem, new_ca.ca_cert_pem),
    )?;
    reloaded(&fleet, hub_reloads, &agent_reloads).await?;

    let hub_reloads = fleet.hub_metrics().await?.counter(HUB_RELOADS);
    let agent_reloads = reload_counts(&fleet).await?;
    replace(
        &pki_dir,
        "hub",
        &new_ca.hub_cert_for_days(&[], RENEWED_DAYS * 2)?,
    )?;
    for name in clusters() {
        let cert = match name.as_str() {
            LEFT_BEHIND => continue,
            // Valid from yesterday for no days: expired.
            EXPIRED => new_ca.client_cert_for_days(&name, 0)?,
            _ => new_ca.client_cert_for_days(&name, RENEWED_DAYS * 2)?,
        };
        replace(&pki_dir, &name, &cert)?;
    }
    let moved: Vec<String> = clusters()
        .into_iter()
        .filter(|n| n != LEFT_BEHIND)
        .collect();
    reloaded(
        &fleet,
        hub_reloads,
        &agent_reloads
            .iter()
            .filter(|(n, _)| moved.contains(n))
            .cloned()
            .collect::<Vec<_>>(),
    )
    .await?;
    let hub_expiry_now = fleet.hub_metrics().await?.require(HUB_EXPIRY)?;
    ensure!(
        hub_expiry_now > renewed_hub_expiry,
        "the expiry metric moves with the new certificate: {renewed_hub_expiry} → {hub_expiry_now}"
    );

    let hub_reloads = fleet.hub_metrics().await?.counter(HUB_RELOADS);
    let agent_reloads = reload_counts(&fleet).await?;
    std::fs::write(pki_dir.join("ca.crt"), &new_ca.ca_cert_pem)?;
    reloaded(&fleet, hub_reloads, &agent_reloads).await?;
    // Established sessions were accepted with the old material and stay.
    set_statuses(&fleet, &clusters(), 2).await?;
    checker.converged(&fleet, WITHIN).await?;
    sessions.unchanged(&fleet).await?;

    // The next handshake of each proxied agent: cut, then heal.
    let tls_failures = fleet.hub_metrics().await?.counter(TLS_FAILURES);
    let mut reconnects = std::collections::BTreeMap::new();
    for (name, proxy) in &proxies {
        reconnects.insert(
            name.clone(),
            agent_counter(&fleet, name, "uplink_agent_reconnects_total").await?,
        );
        proxy.set_mode(LinkMode::Blackhole);
    }
    for name in proxies.keys() {
        eventually(
            WITHIN,
            &format!("agent {name} to notice the cut"),
            async || {
                let connected = fleet
                    .agent_metrics(name)
                    .await?
                    .require("uplink_agent_connected")?;
                ensure!(connected == 0.0, "uplink_agent_connected {connected}");
                Ok(())
            },
        )
        .await?;
    }
    for proxy in proxies.values() {
        proxy.set_mode(LinkMode::Forward);
    }
    // Renewed certificate and reloaded CA file: welcomed.
    fleet.wait_agent_connected(RENEWED).await?;
    // Removed CA, expired certificate: refused, again and again.
    for name in [EXPIRED, LEFT_BEHIND] {
        let before = reconnects[name];
        eventually(WITHIN, &format!("agent {name} to be refused"), async || {
            let metrics = fleet.agent_metrics(name).await?;
            let tries = metrics.counter("uplink_agent_reconnects_total");
            let connected = metrics.require("uplink_agent_connected")?;
            if connected != 0.0 {
                bail!("agent {name} has a session again: its certificate was accepted");
            }
            ensure!(tries >= before + 3.0, "{tries} reconnects (from {before})");
            Ok(())
        })
        .await?;
        ensure!(
            fleet.hub_cluster(name).await?["connected"] == false,
            "the hub shows {name} connected"
        );
    }
    // Each agent tried at least three times; all but a last one in flight
    // were refused in the TLS handshake.
    eventually(
        WITHIN,
        "the hub to count the refused handshakes",
        async || {
            let refused = fleet.hub_metrics().await?.counter(TLS_FAILURES) - tls_failures;
            ensure!(refused >= 4.0, "{refused} more {TLS_FAILURES}");
            Ok(())
        },
    )
    .await?;
    // And the welcomed agent's statuses keep flowing.
    let mut live = Convergence::deployments();
    live.track(TEAM, NS, &format!("web-{RENEWED}"), RENEWED);
    set_statuses(&fleet, &[RENEWED.to_owned()], 3).await?;
    live.converged(&fleet, WITHIN).await?;

    for name in clusters() {
        fleet.stop_agent(&name).await?;
    }
    fleet.shutdown().await
}

/// Writes `cert` as `<stem>.crt`/`.key` the way a renewal lands: the files
/// change under the running processes.
fn replace(dir: &Path, stem: &str, cert: &IssuedCert) -> Result<()> {
    cert.write(dir, stem)
        .with_context(|| format!("writing {stem}'s certificate"))
}

/// Gives every cluster's object a status that says `round`.
async fn set_statuses(fleet: &Fleet, names: &[String], round: i64) -> Result<()> {
    for name in names {
        fleet
            .set_status::<Deployment>(
                name,
                TEAM,
                NS,
                &format!("web-{name}"),
                json!({"replicas": 2, "readyReplicas": round % 3, "observedGeneration": round}),
            )
            .await?;
    }
    Ok(())
}

async fn agent_counter(fleet: &Fleet, name: &str, series: &str) -> Result<f64> {
    Ok(fleet.agent_metrics(name).await?.counter(series))
}

async fn reload_counts(fleet: &Fleet) -> Result<Vec<(String, f64)>> {
    let mut reloads = Vec::new();
    for name in clusters() {
        reloads.push((
            name.clone(),
            agent_counter(fleet, &name, AGENT_RELOADS).await?,
        ));
    }
    Ok(reloads)
}

/// Waits until the hub and each of `agents` reloaded successfully since
/// their counts were taken.
async fn reloaded(fleet: &Fleet, hub_before: f64, agents: &[(String, f64)]) -> Result<()> {
    eventually(WITHIN, "the hub to reload its TLS files", async || {
        let now = fleet.hub_metrics().await?.counter(HUB_RELOADS);
        ensure!(now > hub_before, "{HUB_RELOADS} still {now}");
        Ok(())
    })
    .await?;
    for (name, before) in agents {
        eventually(
            WITHIN,
            &format!("agent {name} to reload its TLS files"),
            async || {
                let now = agent_counter(fleet, name, AGENT_RELOADS).await?;
                ensure!(now > *before, "{AGENT_RELOADS} still {now}");
                Ok(())
            },
        )
        .await?;
    }
    Ok(())
}

/// Every session the fleet has: the agents' reconnect and session counts
/// and the hub's connected agents.
struct Sessions {
    agents: Vec<(String, f64, f64)>,
}

impl Sessions {
    async fn take(fleet: &Fleet) -> Result<Self> {
        let mut agents = Vec::new();
        for name in clusters() {
            let metrics = fleet.agent_metrics(&name).await?;
            agents.push((name, reconnects(&metrics), sessions(&metrics)));
        }
        let connected = fleet
            .hub_metrics()
            .await?
            .require("uplink_hub_agents_connected")?;
        ensure!(connected == 10.0, "uplink_hub_agents_connected {connected}");
        Ok(Self { agents })
    }

    async fn unchanged(&self, fleet: &Fleet) -> Result<()> {
        for (name, reconnects_before, sessions_before) in &self.agents {
            let metrics = fleet.agent_metrics(name).await?;
            ensure!(
                metrics.require("uplink_agent_connected")? == 1.0
                    && reconnects(&metrics) == *reconnects_before
                    && sessions(&metrics) == *sessions_before,
                "agent {name} lost its session: reconnects {reconnects_before} → {}, sessions {sessions_before} → {}",
                reconnects(&metrics),
                sessions(&metrics)
            );
        }
        let connected = fleet
            .hub_metrics()
            .await?
            .require("uplink_hub_agents_connected")?;
        ensure!(connected == 10.0, "uplink_hub_agents_connected {connected}");
        Ok(())
    }
}

fn reconnects(metrics: &Scrape) -> f64 {
    metrics.counter("uplink_agent_reconnects_total")
}

fn sessions(metrics: &Scrape) -> f64 {
    metrics.counter("uplink_agent_sessions_total{mode=\"snapshot\"}")
        + metrics.counter("uplink_agent_sessions_total{mode=\"resume\"}")
}

/// The leaf certificate the hub serves to a new TLS handshake, made with
/// `client` and trusting `ca_pem`.
async fn served_certificate(
    addr: std::net::SocketAddr,
    ca_pem: &str,
    client: &IssuedCert,
) -> Result<CertificateDer<'static>> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(ca?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_client_auth_cert(
        client.cert_chain()?,
        PrivateKeyDer::from_pem_slice(client.key_pem.as_bytes())?,
    )?;
    let tcp = TcpStream::connect(addr).await?;
    let tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost")?, tcp)
        .await
        .context("a TLS handshake with the hub")?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .context("the hub presented no certificate")?;
    Ok(leaf.clone().into_owned())
}
