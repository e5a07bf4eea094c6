use std::collections::VecDeque;

use serde_json::json;
use uplink_protocol::ObjectRef;

use super::*;

/// One request the fake received.
#[derive(Debug, Clone, PartialEq)]
enum Call {
    Create {
        workspace: String,
        namespace: String,
        event: Value,
        dry_run: bool,
    },
    Patch {
        workspace: String,
        namespace: String,
        name: String,
        patch: Value,
        dry_run: bool,
    },
}

/// Records every request; answers with the scripted results in order,
/// then success.
#[derive(Debug, Default)]
struct FakeEvents {
    calls: Mutex<Vec<Call>>,
    answers: Mutex<VecDeque<Result<(), UpstreamError>>>,
}

impl FakeEvents {
    fn answer(&self, result: Result<(), UpstreamError>) {
        self.answers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back(result);
    }

    fn calls(&self) -> Vec<Call> {
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn record(&self, call: Call) -> Result<(), UpstreamError> {
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(call);
        self.answers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front()
            .unwrap_or(Ok(()))
    }
}

impl EventUpstream for FakeEvents {
    fn create_event<'a>(
        &'a self,
        workspace: &'a str,
        namespace: &'a str,
        event: &'a Value,
        dry_run: bool,
    ) -> BoxFuture<'a, Result<(), UpstreamError>> {
        Box::pin(async move {
            self.record(Call::Create {
                workspace: workspace.to_owned(),
                namespace: namespace.to_owned(),
                event: event.clone(),
                dry_run,
            })
        })
    }

    fn patch_event<'a>(
        &'a self,
        workspace: &'a str,
        namespace: &'a str,
        name: &'a str,
        patch: &'a Value,
        dry_run: bool,
    ) -> BoxFuture<'a, Result<(), UpstreamError>> {
        Box::pin(async move {
            self.record(Call::Patch {
                workspace: workspace.to_owned(),
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                patch: patch.clone(),
                dry_run,
            })
        })
    }
}

fn metrics() -> Arc<Metrics> {
    match Metrics::new() {
        Ok(metrics) => Arc::new(metrics),
        Err(error) => panic!("metrics: {error}"),
    }
}

struct Fixture {
    writer: Arc<EventWriter>,
    queue: Arc<EventQueue>,
    upstream: Arc<FakeEvents>,
    metrics: Arc<Metrics>,
}

fn fixture_with(dry_run: bool, upstream_sync: bool) -> Fixture {
    let metrics = metrics();
    let queue = Arc::new(EventQueue::new(100, metrics.clone()));
    let upstream = Arc::new(FakeEvents::default());
    let writer = Arc::new(EventWriter::new(
        queue.clone(),
        upstream.clone(),
        metrics.clone(),
        EventWriterSettings {
            qps: 0.0,
            burst: 1,
            concurrency: 2,
            dry_run,
            upstream_sync,
        },
    ));
    Fixture {
        writer,
        queue,
        upstream,
        metrics,
    }
}

fn fixture() -> Fixture {
    fixture_with(false, true)
}

impl Fixture {
    fn writes(&self, result: &str) -> u64 {
        self.metrics.event_writes.with_label_values(&[result]).get()
    }

    fn dropped(&self, reason: &str) -> u64 {
        self.metrics
            .events_dropped
            .with_label_values(&[reason])
            .get()
    }
}

fn web() -> ObjectRef {
    ObjectRef {
        group: "apps".into(),
        version: "v1".into(),
        resource: "deployments".into(),
        kind: "Deployment".into(),
        workspace: "root:org:team-a".into(),
        namespace: Some("shop".into()),
        name: "web".into(),
        uid: "downstream-web".into(),
    }
}

/// 2023-11-14T22:13:20.123Z.
const FIRST_MS: i64 = 1_700_000_000_123;

fn report(count: u64) -> EventReport {
    EventReport {
        regarding: web(),
        related: None,
        event_type: "Normal".into(),
        reason: "ScalingReplicaSet".into(),
        action: String::new(),
        reporting_controller: String::new(),
        reporting_instance: String::new(),
        note: "Scaled up replica set web-5d8 to 3".into(),
        count,
        first_ms: FIRST_MS,
        last_ms: FIRST_MS + 1_000 * (count as i64 - 1),
    }
}

fn series(count: u64) -> EventSeries {
    EventSeries::new("edge-1", report(count), "upstream-web".into(), None)
}

fn series_patch_of(count: u64, last_ms: i64) -> Value {
    json!({"series": {"count": count, "lastObservedTime": micro_time(last_ms)}})
}

#[tokio::test(start_paused = true)]
async fn a_series_is_created_then_only_its_series_patched() {
    let f = fixture();
    f.writer.write(series(1)).await;
    f.writer.write(series(3)).await;
    // Nothing newer than what was written: no request.
    f.writer.write(series(3)).await;
    f.writer.write(series(2)).await;
    let calls = f.upstream.calls();
    assert_eq!(calls.len(), 2, "{calls:#?}");
    let Call::Create {
        workspace,
        namespace,
        event,
        dry_run,
    } = &calls[0]
    else {
        panic!("expected a create first: {calls:#?}");
    };
    assert_eq!(
        (workspace.as_str(), namespace.as_str(), *dry_run),
        ("root:org:team-a", "shop", false)
    );
    assert_eq!(event["metadata"]["name"], series(1).name());
    assert_eq!(event.get("series"), None, "a single occurrence has none");
    assert_eq!(
        calls[1],
        Call::Patch {
            workspace: "root:org:team-a".into(),
            namespace: "shop".into(),
            name: series(1).name().to_owned(),
            patch: series_patch_of(3, FIRST_MS + 2_000),
            dry_run: false,
        }
    );
    assert_eq!(
        (
            f.writes(event_write::CREATED),
            f.writes(event_write::UPDATED),
            f.writes(event_write::UNCHANGED)
        ),
        (1, 1, 2)
    );
}

#[tokio::test(start_paused = true)]
async fn a_create_that_finds_the_event_patches_its_series() {
    let f = fixture();
    f.upstream.answer(Err(UpstreamError::Conflict(
        "events.events.k8s.io \"web.x\" already exists".into(),
    )));
    f.writer.write(series(4)).await;
    let calls = f.upstream.calls();
    assert!(
        matches!(&calls[..], [Call::Create { .. }, Call::Patch { patch, .. }] if *patch == series_patch_of(4, FIRST_MS + 3_000)),
        "{calls:#?}"
    );
    assert_eq!(f.writes(event_write::UPDATED), 1);
    // Remembered: the same count again costs nothing.
    f.writer.write(series(4)).await;
    assert_eq!(f.upstream.calls().len(), 2);

    // A series seen once that is already there has nothing to patch.
    let f = fixture();
    f.upstream
        .answer(Err(UpstreamError::Conflict("already exists".into())));
    f.writer.write(series(1)).await;
    assert_eq!(f.upstream.calls().len(), 1);
    assert_eq!(f.writes(event_write::UNCHANGED), 1);
}

#[tokio::test(start_paused = true)]
async fn a_patch_of_an_expired_event_creates_it_again() {
    let f = fixture();
    f.writer.write(series(1)).await;
    f.upstream.answer(Err(UpstreamError::NotFound));
    f.writer.write(series(5)).await;
    let calls = f.upstream.calls();
    assert!(
        matches!(&calls[..], [Call::Create { .. }, Call::Patch { .. }, Call::Create { event, .. }] if event["series"]["count"] == 5),
        "{calls:#?}"
    );
    assert_eq!(f.writes(event_write::CREATED), 2);
}

#[tokio::test(start_paused = true)]
async fn server_errors_are_retried_a_few_times_then_dropped() {
    let f = fixture();
    for _ in 0..MAX_ATTEMPTS {
        f.upstream.answer(Err(UpstreamError::Server {
            status: 503,
            message: "unavailable".into(),
        }));
    }
    let start = Instant::now();
    f.writer.write(series(1)).await;
    assert_eq!(f.upstream.calls().len(), MAX_ATTEMPTS as usize);
    assert!(start.elapsed() >= RETRY_BASE, "backed off");
    assert_eq!(f.writes(event_write::FAILED), 1);
    assert_eq!(f.writes(event_write::RETRIED), u64::from(MAX_ATTEMPTS - 1));
    assert_eq!(f.dropped(event_dropped::WRITE_FAILED), 1);

    // Throttled, then it lands: not dropped, Retry-After honored.
    let f = fixture();
    f.upstream.answer(Err(UpstreamError::Throttled {
        retry_after: Some(Duration::from_secs(3)),
    }));
    let start = Instant::now();
    f.writer.write(series(1)).await;
    assert!(start.elapsed() >= Duration::from_secs(3));
    assert_eq!(f.writes(event_write::CREATED), 1);
    assert_eq!(f.dropped(event_dropped::WRITE_FAILED), 0);
}

#[tokio::test(start_paused = true)]
async fn a_refusal_is_dropped_at_once() {
    let f = fixture();
    f.upstream.answer(Err(UpstreamError::Refused {
        status: 422,
        message: "Event is invalid".into(),
    }));
    f.writer.write(series(1)).await;
    assert_eq!(f.upstream.calls().len(), 1);
    assert_eq!(f.writes(event_write::REFUSED), 1);
    assert_eq!(f.dropped(event_dropped::WRITE_FAILED), 1);
    // Not remembered: the next report tries a create again.
    f.writer.write(series(2)).await;
    assert!(matches!(
        f.upstream.calls().last(),
        Some(Call::Create { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn gate_off_writes_nothing_and_dry_run_remembers_nothing() {
    let f = fixture_with(false, false);
    f.writer.write(series(1)).await;
    assert!(f.upstream.calls().is_empty());
    assert_eq!(f.writes(event_write::DISABLED), 1);

    let f = fixture_with(true, true);
    f.writer.write(series(1)).await;
    f.writer.write(series(2)).await;
    let calls = f.upstream.calls();
    assert_eq!(calls.len(), 2);
    assert!(
        calls
            .iter()
            .all(|c| matches!(c, Call::Create { dry_run: true, .. })),
        "{calls:#?}"
    );
    assert_eq!(f.writes(event_write::DRY_RUN), 2);
}

#[tokio::test(start_paused = true)]
async fn the_writer_task_writes_what_is_queued_until_stopped() {
    let f = fixture();
    let stop = CancellationToken::new();
    let task = tokio::spawn(f.writer.clone().run(stop.clone()));
    f.queue.push(series(1));
    let deadline = Instant::now() + Duration::from_secs(5);
    while f.upstream.calls().is_empty() {
        assert!(Instant::now() < deadline, "nothing written");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    stop.cancel();
    let Ok(()) = task.await else {
        panic!("the event writer failed");
    };
    assert_eq!(f.writes(event_write::CREATED), 1);
    assert!(f.queue.is_empty());
}

#[test]
fn the_queue_coalesces_a_series_in_place() {
    let metrics = metrics();
    let queue = EventQueue::new(10, metrics.clone());
    let other = EventSeries::new(
        "edge-1",
        EventReport {
            reason: "Other".into(),
            ..report(1)
        },
        "upstream-web".into(),
        None,
    );
    queue.push(series(1));
    queue.push(other.clone());
    queue.push(series(7));
    assert_eq!(queue.len(), 2);
    assert_eq!(metrics.event_queue_depth.get(), 2);
    // The newer report, where the first one stood.
    assert_eq!(queue.pop().map(|s| s.report.count), Some(7));
    assert_eq!(queue.pop(), Some(other));
    assert_eq!(queue.pop(), None);
    assert_eq!(metrics.event_queue_depth.get(), 0);
    assert_eq!(
        metrics
            .events_dropped
            .with_label_values(&[event_dropped::QUEUE_FULL])
            .get(),
        0
    );
}

#[test]
fn a_full_queue_drops_its_oldest() {
    let metrics = metrics();
    let queue = EventQueue::new(2, metrics.clone());
    let named = |reason: &str| {
        EventSeries::new(
            "edge-1",
            EventReport {
                reason: reason.into(),
                ..report(1)
            },
            "upstream-web".into(),
            None,
        )
    };
    queue.push(named("A"));
    queue.push(named("B"));
    queue.push(named("C"));
    // A newer report of a waiting series takes no room.
    queue.push(named("C"));
    assert_eq!(queue.len(), 2);
    assert_eq!(metrics.event_queue_depth.get(), 2);
    let reasons: Vec<String> = std::iter::from_fn(|| queue.pop())
        .map(|s| s.report.reason)
        .collect();
    assert_eq!(reasons, ["B", "C"]);
    assert_eq!(
        metrics
            .events_dropped
            .with_label_values(&[event_dropped::QUEUE_FULL])
            .get(),
        1
    );
}

#[test]
fn names_are_deterministic_and_tell_series_apart() {
    let name = event_name("edge-1", &report(1));
    assert_eq!(name, event_name("edge-1", &report(9)), "count is not in it");
    let (prefix, hash) = name.split_at(name.len() - 17);
    assert_eq!(prefix, "web");
    assert!(hash.starts_with('.'));
    assert!(
        hash[1..]
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)),
        "{hash}"
    );
    let mut differ = vec![event_name("edge-2", &report(1))];
    for change in [
        |r: &mut EventReport| r.first_ms += 1,
        |r: &mut EventReport| r.reason = "Other".into(),
        |r: &mut EventReport| r.regarding.uid = "another".into(),
        |r: &mut EventReport| r.regarding.workspace = "root:org:team-b".into(),
        |r: &mut EventReport| r.event_type = "Warning".into(),
        |r: &mut EventReport| r.reporting_instance = "node-1".into(),
        |r: &mut EventReport| r.related = Some(web()),
    ] {
        let mut changed = report(1);
        change(&mut changed);
        differ.push(event_name("edge-1", &changed));
    }
    for other in &differ {
        assert_ne!(*other, name);
    }
}

#[test]
fn long_and_odd_names_are_cut_to_a_dns_subdomain() {
    let mut long = report(1);
    long.regarding.name = "a".repeat(300);
    let name = event_name("edge-1", &long);
    assert_eq!(name.len(), 253);
    assert!(name.starts_with(&"a".repeat(236)));
    assert_eq!(name.as_bytes()[236], b'.');
    let mut odd = report(1);
    odd.regarding.name = "Web:Front_End".into();
    let name = event_name("edge-1", &odd);
    assert!(name.starts_with("web-front-end."), "{name}");
    // Cut where a label would end with a dash.
    let mut dashed = report(1);
    dashed.regarding.name = format!("{}-b", "a".repeat(235));
    let name = event_name("edge-1", &dashed);
    assert!(name.starts_with(&format!("{}.", "a".repeat(235))), "{name}");
}

#[test]
fn the_manifest_is_what_events_k8s_io_v1_takes() {
    let event = event_manifest(&series(1));
    assert_eq!(
        event,
        json!({
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            "metadata": {
                "name": series(1).name(),
                "namespace": "shop",
                "annotations": {"uplink.io/cluster": "edge-1"},
            },
            "eventTime": "2023-11-14T22:13:20.123000Z",
            "reportingController": "uplink.io/agent",
            "reportingInstance": "edge-1",
            "action": "ScalingReplicaSet",
            "reason": "ScalingReplicaSet",
            "type": "Normal",
            "note": "Scaled up replica set web-5d8 to 3",
            "regarding": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "namespace": "shop",
                "name": "web",
                "uid": "upstream-web",
            },
        })
    );
    let mut full = report(3);
    full.reporting_controller = "example.com/scaler".into();
    full.reporting_instance = "scaler-7f".into();
    full.action = "Scale".into();
    full.note = "é".repeat(600);
    full.related = Some(ObjectRef {
        group: String::new(),
        version: "v1".into(),
        resource: "configmaps".into(),
        kind: "ConfigMap".into(),
        name: "settings".into(),
        ..web()
    });
    let event = event_manifest(&EventSeries::new(
        "edge-1",
        full,
        "upstream-web".into(),
        Some("upstream-settings".into()),
    ));
    assert_eq!(
        event["series"],
        json!({"count": 3, "lastObservedTime": "2023-11-14T22:13:22.123000Z"})
    );
    assert_eq!(event["reportingController"], "example.com/scaler");
    assert_eq!(event["reportingInstance"], "scaler-7f");
    assert_eq!(event["action"], "Scale");
    let Some(note) = event["note"].as_str() else {
        panic!("no note: {event}");
    };
    assert_eq!(note.len(), 1024, "cut at a character boundary");
    assert_eq!(
        event["related"],
        json!({"apiVersion": "v1", "kind": "ConfigMap", "namespace": "shop", "name": "settings", "uid": "upstream-settings"})
    );
    for deprecated in [
        "count",
        "firstTimestamp",
        "lastTimestamp",
        "source",
        "deprecatedCount",
        "deprecatedSource",
    ] {
        assert_eq!(event.get(deprecated), None, "{deprecated}");
    }
}

#[test]
fn cluster_scoped_objects_and_bad_controllers_get_defaults() {
    let mut node = report(1);
    node.regarding = ObjectRef {
        group: String::new(),
        version: "v1".into(),
        resource: "nodes".into(),
        kind: "Node".into(),
        namespace: None,
        name: "n1".into(),
        ..web()
    };
    node.reporting_controller = "Not a qualified/name/".into();
    node.reason = "R".repeat(200);
    let event = event_manifest(&EventSeries::new("edge-1", node, "u".into(), None));
    assert_eq!(event["metadata"]["namespace"], "default");
    assert_eq!(event["regarding"].get("namespace"), None);
    assert_eq!(event["reportingController"], "uplink.io/agent");
    assert_eq!(event["reason"].as_str().map(str::len), Some(128));
    assert_eq!(event["action"], event["reason"]);
}

#[test]
fn micro_times() {
    assert_eq!(
        micro_time(0).as_deref(),
        Some("1970-01-01T00:00:00.000000Z")
    );
    assert_eq!(
        micro_time(FIRST_MS).as_deref(),
        Some("2023-11-14T22:13:20.123000Z")
    );
    assert_eq!(micro_time(-1), None);
    assert_eq!(micro_time(i64::MAX), None);
    for good in ["uplink.io/agent", "kubelet", "a.b-c_d", "example.com/x"] {
        assert!(manifest::is_qualified_name(good), "{good}");
    }
    for bad in ["", "-a", "a b", "Example.com/x", "a/b/c", &"x".repeat(64)] {
        assert!(!manifest::is_qualified_name(bad), "{bad}");
    }
}

#[test]
fn kube_requests_create_and_merge_patch_events() {
    let event = event_manifest(&series(1));
    let Ok(create) = create_request("shop", &event, true) else {
        panic!("no create request");
    };
    assert_eq!(create.method(), http::Method::POST);
    assert_eq!(
        create.uri().to_string(),
        "/apis/events.k8s.io/v1/namespaces/shop/events?&dryRun=All"
    );
    assert_eq!(
        serde_json::from_slice::<Value>(create.body()).ok(),
        Some(event)
    );
    let patch = series_patch_of(2, FIRST_MS);
    let Ok(request) = patch_request("shop", series(1).name(), &patch, false) else {
        panic!("no patch request");
    };
    assert_eq!(request.method(), http::Method::PATCH);
    assert_eq!(
        request.uri().to_string(),
        format!(
            "/apis/events.k8s.io/v1/namespaces/shop/events/{}?",
            series(1).name()
        )
    );
    assert_eq!(
        request.headers().get(http::header::CONTENT_TYPE),
        Some(&http::HeaderValue::from_static(
            "application/merge-patch+json"
        ))
    );
    assert!(patch_request("a/b", "x", &patch, false).is_err());
    assert!(patch_request("shop", "../x", &patch, false).is_err());
}
