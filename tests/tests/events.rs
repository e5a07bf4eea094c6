//! Events come up: what happens to a synced object downstream shows in KCP
//! as events.k8s.io/v1 Events in the object's workspace and namespace,
//! folded into series the way kube-apiserver's series count them, and never
//! in the way of status. A cluster's events never land in a workspace it
//! does not serve.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::{ListParams, PostParams};
use serde_json::{Value, json};
use uplink_tests::fleet::{
    Fleet, SCENARIO_TIMEOUT, STATUS_DEADLINE, Scrape, bounded, deployment, eventually,
};

const TEAM_A: &str = "root:org:team-a";
const TEAM_B: &str = "root:org:team-b";

/// How long a burst's last counts may take to arrive: the agent sends one
/// report per object every five seconds once the object's burst of five is
/// spent.
const SERIES_DEADLINE: Duration = Duration::from_secs(60);

fn status(ready: i64) -> Value {
    json!({"observedGeneration": 1, "replicas": ready, "readyReplicas": ready, "updatedReplicas": ready})
}

/// A downstream Event about `about` (as the cluster holds it), as a
/// controller in the cluster would record it.
fn event(about: &Deployment, name: &str, reason: &str, at: &str) -> Result<Event> {
    let meta = &about.metadata;
    Ok(serde_json::from_value(json!({
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": meta.namespace},
        "eventTime": at,
        "regarding": {"apiVersion": "apps/v1", "kind": "Deployment",
                      "namespace": meta.namespace, "name": meta.name, "uid": meta.uid},
        "type": "Warning",
        "reason": reason,
        "action": "Create",
        "note": format!("{reason} for {}", meta.name.as_deref().unwrap_or_default()),
        "reportingController": "replicaset-controller",
        "reportingInstance": "kcm-1",
    }))?)
}

/// Records `count` Events with `reason` about `about` in `cluster`, many at
/// a time.
async fn record(
    fleet: &Fleet,
    cluster: &str,
    about: &Deployment,
    reason: &str,
    count: usize,
) -> Result<()> {
    let namespace = about.metadata.namespace.clone().unwrap_or_default();
    let api = Api::<Event>::namespaced(fleet.cluster(cluster).await?, &namespace);
    let prefix = about.metadata.name.clone().unwrap_or_default();
    futures::stream::iter(0..count)
        .map(|i| {
            let api = api.clone();
            let name = format!("{prefix}.{}.{i}", reason.to_lowercase());
            let at = format!("2026-12-07T10:{:02}:{:02}.000000Z", i / 60 % 60, i % 60);
            async move {
                let event = event(about, &name, reason, &at)?;
                api.create(&PostParams::default(), &event)
                    .await
                    .with_context(|| format!("recording {name} in {cluster}"))
                    .map(drop)
            }
        })
        .buffer_unordered(32)
        .try_collect()
        .await
}

/// The Events KCP holds in `workspace`/`namespace` about `name`, as
/// (cluster annotation, reason, occurrences, regarding uid).
async fn kcp_events(
    fleet: &Fleet,
    workspace: &str,
    namespace: &str,
    name: &str,
) -> Result<Vec<(String, String, u64, String)>> {
    let api = Api::<Event>::namespaced(fleet.kcp(workspace).await?, namespace);
    let mut found: Vec<_> = api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .map(|e| {
            let cluster = e
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("uplink.io/cluster").cloned())
                .unwrap_or_default();
            let count = e
                .series
                .as_ref()
                .map_or(1, |s| s.count.unsigned_abs().into());
            let uid = e
                .regarding
                .as_ref()
                .and_then(|r| r.uid.clone())
                .unwrap_or_default();
            (cluster, e.reason.unwrap_or_default(), count, uid)
        })
        .collect();
    found.sort();
    Ok(found)
}

/// The sum of every series of `name` whose labels include `label`.
fn total(scrape: &Scrape, name: &str, label: &str) -> f64 {
    scrape
        .text()
        .lines()
        .filter(|line| line.starts_with(&format!("{name}{{")) && line.contains(label))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_events_arrives_as_a_few_series_while_status_flows() -> Result<()> {
    bounded(SCENARIO_TIMEOUT * 2, burst()).await
}

/// 10,000 Events about `web` in cluster a (two reasons): KCP shows two
/// Events about web, with the upstream uid and the whole counts, while the
/// status changes of `db` made during the burst each reach KCP.
async fn burst() -> Result<()> {
    let fleet = Fleet::builder()
        .clusters(["a"])
        .workspaces([TEAM_A])
        .start()
        .await?;
    let web = fleet
        .place(TEAM_A, "shop", &deployment("web", 1), &["a"])
        .await?;
    fleet
        .place(TEAM_A, "shop", &deployment("db", 1), &["a"])
        .await?;
    let downstream_web = fleet
        .cluster_object::<Deployment>("a", TEAM_A, "shop", "web")
        .await?;

    let events = async {
        record(&fleet, "a", &downstream_web, "FailedCreate", 7_000).await?;
        record(&fleet, "a", &downstream_web, "BackOff", 3_000).await
    };
    let status = async {
        let mut slowest = Duration::ZERO;
        for ready in 1..=5 {
            let started = Instant::now();
            fleet
                .set_status::<Deployment>("a", TEAM_A, "shop", "db", status(ready))
                .await?;
            eventually(
                STATUS_DEADLINE,
                &format!("db's status {ready} in KCP during the burst"),
                async || {
                    let got = fleet
                        .upstream_status::<Deployment>(TEAM_A, "shop", "db")
                        .await?;
                    ensure!(got == Some(status(ready)), "KCP shows {got:?}");
                    Ok(())
                },
            )
            .await?;
            slowest = slowest.max(started.elapsed());
        }
        Ok::<_, anyhow::Error>(slowest)
    };
    let ((), slowest) = futures::try_join!(events, status)?;
    println!("slowest status change during the burst: {slowest:?}");

    let web_uid = web.metadata.uid.clone().unwrap_or_default();
    let want = vec![
        ("a".to_owned(), "BackOff".to_owned(), 3_000, web_uid.clone()),
        ("a".to_owned(), "FailedCreate".to_owned(), 7_000, web_uid),
    ];
    eventually(
        SERIES_DEADLINE,
        "two series about web with their whole counts",
        async || {
            let got = kcp_events(&fleet, TEAM_A, "shop", "web").await?;
            ensure!(got == want, "KCP holds {got:?}");
            Ok(())
        },
    )
    .await?;
    let agent = fleet.agent_metrics("a").await?;
    ensure!(
        agent.counter("uplink_agent_events_observed_total") == 10_000.0,
        "the agent read every Event:\n{agent}"
    );
    let sent = agent.counter("uplink_agent_events_sent_total");
    ensure!(
        sent <= 20.0,
        "a handful of reports for 10,000 Events, not {sent}"
    );
    fleet.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_events_never_land_in_a_workspace_it_does_not_serve() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, cross_tenant()).await
}

/// Cluster b holds a forged copy of team-a's `web` (placed on a only) and
/// records Events about it: none reaches team-a; the hub refuses and counts
/// them. b's Events about its own object and a's about web land.
async fn cross_tenant() -> Result<()> {
    let fleet = Fleet::builder()
        .clusters(["a", "b"])
        .workspaces([TEAM_A, TEAM_B])
        .start()
        .await?;
    fleet
        .place(TEAM_A, "shop", &deployment("web", 1), &["a"])
        .await?;
    fleet
        .place(TEAM_B, "billing", &deployment("invoices", 1), &["b"])
        .await?;
    let forged = fleet
        .create_downstream("b", TEAM_A, "shop", &deployment("web", 1))
        .await?;
    let invoices = fleet
        .cluster_object::<Deployment>("b", TEAM_B, "billing", "invoices")
        .await?;
    let web = fleet
        .cluster_object::<Deployment>("a", TEAM_A, "shop", "web")
        .await?;

    record(&fleet, "b", &forged, "Forged", 3).await?;
    eventually(
        STATUS_DEADLINE,
        "the hub to refuse b's Events about web",
        async || {
            let refused = total(
                &fleet.hub_metrics().await?,
                "uplink_hub_events_refused_total",
                "reason=\"not_placed\"",
            );
            ensure!(refused >= 1.0, "refused {refused}");
            Ok(())
        },
    )
    .await?;
    record(&fleet, "b", &invoices, "Billed", 1).await?;
    record(&fleet, "a", &web, "Scaled", 1).await?;
    eventually(
        STATUS_DEADLINE,
        "b's Event about its own object, and a's about web",
        async || {
            let billing = kcp_events(&fleet, TEAM_B, "billing", "invoices").await?;
            let shop = kcp_events(&fleet, TEAM_A, "shop", "web").await?;
            ensure!(
                billing.len() == 1 && shop.len() == 1,
                "billing {billing:?}, shop {shop:?}"
            );
            Ok(())
        },
    )
    .await?;
    let shop = kcp_events(&fleet, TEAM_A, "shop", "web").await?;
    ensure!(
        shop.iter()
            .all(|(cluster, reason, _, _)| cluster == "a" && reason == "Scaled"),
        "only a's Event about web is in team-a: {shop:?}"
    );
    fleet.shutdown().await
}
