//! Agents' event series (protocol version 3) through a hub on loopback:
//! a series about an object placed on the reporting cluster lands in its
//! workspace and namespace with its upstream uid; a series about anything
//! else is refused, counted and never written; `Events` in an older
//! session ends it.

mod support;

use anyhow::{Result, bail};
use support::{End, FakePlacement, TestHub, eventually, object};
use uplink_hub::writer::events::micro_time;
use uplink_protocol::{AgentFrame, ErrorCode, EventBatch, EventReport, HubFrame, ObjectRef, close};

const WORKSPACE: &str = "root:org:team-a";
const FIRST_MS: i64 = 1_700_000_000_000;

fn report(regarding: ObjectRef, count: u64) -> EventReport {
    EventReport {
        regarding,
        related: None,
        event_type: "Warning".into(),
        reason: "FailedCreate".into(),
        action: String::new(),
        reporting_controller: "replicaset-controller".into(),
        reporting_instance: String::new(),
        note: "quota exceeded".into(),
        count,
        first_ms: FIRST_MS,
        last_ms: FIRST_MS + 60_000,
    }
}

fn events(reports: Vec<EventReport>) -> AgentFrame {
    AgentFrame::Events(EventBatch { reports })
}

/// Placement: `web` and the rest on every cluster, `solo` on `west` only.
fn placement() -> FakePlacement {
    let mut placement = FakePlacement::default();
    placement.objects.push("solo".into());
    placement.only_on.insert("solo".into(), "west".into());
    placement
}

fn refused(hub: &TestHub, reason: &str) -> u64 {
    hub.metrics
        .events_refused
        .with_label_values(&[reason])
        .get()
}

#[tokio::test]
async fn a_placed_objects_series_lands_and_nothing_else_does() -> Result<()> {
    let hub = TestHub::start_placed(|_| {}, placement()).await?;
    let mut agent = hub.connect(&hub.pki.client("edge-1")?).await?;
    let HubFrame::Welcome(welcome) = agent.hello("edge-1", "s", None, 0).await? else {
        bail!("no Welcome");
    };
    assert!(welcome.protocol_version >= uplink_protocol::EVENTS_VERSION);

    let another_workspace = ObjectRef {
        workspace: "root:org:team-b".into(),
        ..object("web")
    };
    let mut related = report(object("web"), 1);
    related.reason = "Related".into();
    related.related = Some(object("solo"));
    agent
        .send(&events(vec![
            report(object("web"), 1),
            report(object("solo"), 1),
            report(another_workspace, 1),
            related,
        ]))
        .await?;
    agent.send(&events(vec![report(object("web"), 3)])).await?;

    let upstream = hub.upstream.clone();
    eventually("web's series written with count 3", || {
        upstream
            .events()
            .iter()
            .any(|(_, event)| event["reason"] == "FailedCreate" && event["series"]["count"] == 3)
    })
    .await?;
    eventually("the related series written", || {
        upstream.events().len() == 2
    })
    .await?;
    let written = upstream.events();
    for ((workspace, namespace, name), event) in &written {
        // Only web, in its own workspace and namespace, with the uid KCP
        // gave it (not the cluster's).
        assert_eq!(
            (workspace.as_str(), namespace.as_str()),
            (WORKSPACE, "default")
        );
        assert!(name.starts_with("web."), "{name}");
        assert_eq!(event["regarding"]["name"], "web");
        assert_eq!(event["regarding"]["uid"], "upstream-web");
        assert_eq!(
            event["metadata"]["annotations"]["uplink.io/cluster"],
            "edge-1"
        );
        assert_eq!(event["eventTime"].as_str(), micro_time(FIRST_MS).as_deref());
        // solo is not edge-1's: left out of the related series.
        assert_eq!(event.get("related"), None, "{event}");
    }
    let Some((_, first)) = written
        .iter()
        .find(|(_, event)| event["reason"] == "FailedCreate")
    else {
        bail!("no FailedCreate event in {written:?}");
    };
    assert_eq!(
        first["series"]["lastObservedTime"].as_str(),
        micro_time(FIRST_MS + 60_000).as_deref()
    );

    assert_eq!(refused(&hub, "not_placed"), 2, "solo and team-b's web");
    assert_eq!(hub.metrics.events_received.get(), 5);
    let (_, metrics) = hub.get("/metrics").await?;
    assert!(
        metrics.contains("uplink_hub_events_refused_total{reason=\"not_placed\"} 2"),
        "{metrics}"
    );

    // Refusals never end the session: it still answers.
    agent
        .send(&AgentFrame::Heartbeat(uplink_protocol::Heartbeat {
            agent_time_ms: FIRST_MS,
            summary: None,
        }))
        .await?;
    assert!(matches!(agent.recv().await?, HubFrame::HeartbeatAck(_)));
    hub.stop().await
}

#[tokio::test]
async fn a_cluster_that_serves_the_object_writes_its_own_series() -> Result<()> {
    // solo is west's: the same report from west lands.
    let hub = TestHub::start_placed(|_| {}, placement()).await?;
    let mut agent = hub.connect(&hub.pki.client("west")?).await?;
    agent.hello("west", "s", None, 0).await?;
    agent.send(&events(vec![report(object("solo"), 2)])).await?;
    let upstream = hub.upstream.clone();
    eventually("solo's series written", || upstream.events().len() == 1).await?;
    let written = upstream.events();
    assert_eq!(written[0].1["regarding"]["uid"], "upstream-solo");
    assert_eq!(
        written[0].1["metadata"]["annotations"]["uplink.io/cluster"],
        "west"
    );
    assert_eq!(refused(&hub, "not_placed"), 0);
    hub.stop().await
}

#[tokio::test]
async fn events_in_a_version_2_session_end_it() -> Result<()> {
    let hub = TestHub::start_placed(|_| {}, placement()).await?;
    let mut agent = hub.connect(&hub.pki.client("edge-1")?).await?;
    agent.hello_v2("edge-1", "s", &[]).await?;
    agent.send(&events(vec![report(object("web"), 1)])).await?;
    match agent.recv().await? {
        HubFrame::Error(error) => assert_eq!(error.code, ErrorCode::UnexpectedFrame),
        other => bail!("expected Error, got {other:?}"),
    }
    assert_eq!(agent.end().await?, End::Closed(Some(close::PROTOCOL_ERROR)));
    assert!(hub.upstream.events().is_empty());
    hub.stop().await
}

#[tokio::test]
async fn a_cluster_over_its_event_rate_is_dropped_and_a_misnamed_object_refused() -> Result<()> {
    let hub = TestHub::start_placed(
        |config| {
            config.events.cluster_rate = 0.001;
            config.events.cluster_burst = 2;
        },
        placement(),
    )
    .await?;
    let mut agent = hub.connect(&hub.pki.client("edge-1")?).await?;
    agent.hello("edge-1", "s", None, 0).await?;
    let as_job = ObjectRef {
        kind: "Job".into(),
        ..object("web")
    };
    let series = |reason: &str| {
        let mut report = report(object("web"), 1);
        reason.clone_into(&mut report.reason);
        report
    };
    agent
        .send(&events(vec![
            report(as_job, 1),
            series("A"),
            series("B"),
            series("C"),
        ]))
        .await?;
    let metrics = hub.metrics.clone();
    eventually("the one over the burst dropped", || {
        metrics
            .events_dropped
            .with_label_values(&["rate_limited"])
            .get()
            == 1
    })
    .await?;
    let upstream = hub.upstream.clone();
    eventually("the burst written", || upstream.events().len() == 2).await?;
    assert_eq!(
        refused(&hub, uplink_protocol::Rejected::KIND_MISMATCH),
        1,
        "the placement's own reason"
    );
    // A reconnect does not refill the cluster's bucket.
    drop(agent);
    let mut agent = hub.connect(&hub.pki.client("edge-1")?).await?;
    agent.hello("edge-1", "s2", None, 0).await?;
    agent.send(&events(vec![series("D")])).await?;
    eventually("the next one dropped too", || {
        metrics
            .events_dropped
            .with_label_values(&["rate_limited"])
            .get()
            == 2
    })
    .await?;
    assert_eq!(upstream.events().len(), 2);
    hub.stop().await
}
