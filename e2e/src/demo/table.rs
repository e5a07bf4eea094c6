//! Renders an [`Observation`] as the demo's table: one row per object with
//! the step the driver last wrote in KCP, KCP's spec, the cluster's copy
//! (spec and status), KCP's status and whether the object shows what KCP
//! asks; then one row per cluster with its heartbeat age; then the latest
//! steps of the loop with their timings. A pure function of its input, so
//! it is tested without servers.

use std::fmt::Write as _;
use std::time::Duration;

use super::driver::LoopEvent;
use super::observe::{ClusterView, ObjectView, Observation};
use super::script::{ObjectState, Step};
use super::status::StatusSummary;

/// ANSI: cursor home, clear screen.
pub const CLEAR_SCREEN: &str = "\x1b[H\x1b[2J";

/// Renders the table; `title` and `notes` are printed above and below it,
/// `events` (the latest steps of the loop) between them.
pub fn render(
    title: &str,
    observation: &Observation,
    events: &[LoopEvent],
    notes: &[String],
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{title}");
    let _ = writeln!(out);

    let mut objects = vec![row([
        "OBJECT",
        "CLUSTER",
        "STEP",
        "KCP.SPEC",
        "CLUSTER COPY",
        "C.SPEC",
        "C.READY",
        "C.GEN",
        "KCP.READY",
        "KCP.OBSGEN",
        "IN SYNC",
    ])];
    let mut problems = Vec::new();
    for view in &observation.objects {
        objects.push(object_row(view));
        for (side, copy) in [("cluster", &view.truth), ("KCP", &view.kcp)] {
            if let Err(error) = copy {
                problems.push(format!("{} ({side}): {error}", view.object));
            }
        }
    }
    write_columns(&mut out, &objects);
    let _ = writeln!(
        out,
        "  STEP = the driver's last write in KCP (✓ once every effect was seen). *.SPEC = replicas × image. \
         C.* = the cluster's copy (status ready/replicas, generation). KCP.* = KCP's status, \
         merged by the hub. IN SYNC = the cluster runs KCP's spec and KCP shows the cluster's status \
         (unplaced: the copy is gone)."
    );
    let _ = writeln!(out);

    let mut clusters = vec![row([
        "CLUSTER",
        "OBJECTS",
        "HUB SAYS",
        "HEARTBEAT",
        "DELTAS RECEIVED",
    ])];
    clusters.extend(observation.clusters.iter().map(cluster_row));
    write_columns(&mut out, &clusters);
    let connected = observation
        .agents_connected
        .map_or_else(|| "?".to_owned(), |n| format!("{n}"));
    let _ = writeln!(out, "  hub: {connected} agent(s) connected");
    if let Some(error) = &observation.hub_error {
        problems.push(format!("hub metrics: {error}"));
    }

    if !events.is_empty() {
        let _ = writeln!(
            out,
            "\nthe loop, latest steps (KCP write → seen in the cluster → seen in KCP):"
        );
        for event in events {
            let _ = writeln!(out, "  {event}");
        }
    }
    if !problems.is_empty() {
        let _ = writeln!(out);
        for problem in problems {
            let _ = writeln!(out, "! {problem}");
        }
    }
    if !notes.is_empty() {
        let _ = writeln!(out);
        for note in notes {
            let _ = writeln!(out, "{note}");
        }
    }
    out
}

fn row<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.iter().map(|c| (*c).to_owned()).collect()
}

fn object_row(view: &ObjectView) -> Vec<String> {
    let step = view.progress.step.map_or_else(
        || "waiting".to_owned(),
        |(step, _)| {
            let mark = if view.progress.seen { "✓" } else { "…" };
            format!("{} {mark}", short(step))
        },
    );
    let unplaced = view.progress.step.is_some_and(|(_, i)| !i.placed);
    let kcp_spec = match &view.kcp {
        Ok(Some(copy)) if unplaced => format!("{} unplaced", spec(copy)),
        Ok(Some(copy)) => spec(copy),
        Ok(None) => "none".to_owned(),
        Err(_) => "error".to_owned(),
    };
    let (copy, c_spec, c_ready, c_gen) = match &view.truth {
        Ok(Some(copy)) => (
            format!("{}/{}", view.downstream_namespace, view.object.name),
            spec(copy),
            ready(copy.status.as_ref()),
            optional(copy.generation),
        ),
        Ok(None) => (
            "none".to_owned(),
            "-".to_owned(),
            "-".to_owned(),
            "-".to_owned(),
        ),
        Err(_) => (
            "error".to_owned(),
            "-".to_owned(),
            "-".to_owned(),
            "-".to_owned(),
        ),
    };
    let (k_ready, k_obs) = match &view.kcp {
        Ok(Some(copy)) => (
            ready(copy.status.as_ref()),
            optional(copy.status.as_ref().and_then(|s| s.observed_generation)),
        ),
        Ok(None) => ("-".to_owned(), "-".to_owned()),
        Err(_) => ("error".to_owned(), "-".to_owned()),
    };
    let in_sync = if view.progress.step.is_none() {
        "-"
    } else if view.settled() {
        "✓"
    } else {
        "✗"
    };
    vec![
        view.object.to_string(),
        view.object.cluster.clone(),
        step,
        kcp_spec,
        copy,
        c_spec,
        c_ready,
        c_gen,
        k_ready,
        k_obs,
        in_sync.to_owned(),
    ]
}

/// A step in a few words.
fn short(step: Step) -> String {
    match step {
        Step::Create => "create".to_owned(),
        Step::Scale { from, to } => format!("scale {from}→{to}"),
        Step::Rollout { revision } => format!("rollout v{revision}"),
        Step::Unplace => "unplace".to_owned(),
        Step::Place => "place".to_owned(),
    }
}

/// `5×v2`: replicas and the image's tag.
fn spec(copy: &ObjectState) -> String {
    let replicas = copy
        .desired
        .map_or_else(|| "-".to_owned(), |d| d.to_string());
    let tag = copy
        .image
        .as_deref()
        .and_then(|i| i.rsplit_once(':'))
        .map_or("-", |(_, tag)| tag);
    format!("{replicas}×{tag}")
}

/// `ready/replicas` of a status, `no status` without one.
fn ready(status: Option<&StatusSummary>) -> String {
    status.map_or_else(
        || "no status".to_owned(),
        |s| format!("{}/{}", s.ready_replicas, s.replicas),
    )
}

fn optional(value: Option<i64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn cluster_row(view: &ClusterView) -> Vec<String> {
    vec![
        view.name.clone(),
        view.objects.to_string(),
        view.state.as_ref().map_or_else(
            || "unknown".to_owned(),
            |s| {
                let link = if s.connected {
                    "connected"
                } else {
                    "disconnected"
                };
                format!("{} ({link})", s.state)
            },
        ),
        view.heartbeat_age.map_or_else(
            || "never".to_owned(),
            |age| format!("{} ago", age_text(age)),
        ),
        view.deltas_received
            .map_or_else(|| "-".to_owned(), |n| format!("{n}")),
    ]
}

/// `0.4s`, `12s`, `3m05s`.
pub fn age_text(age: Duration) -> String {
    let secs = age.as_secs_f64();
    if secs < 10.0 {
        format!("{secs:.1}s")
    } else if secs < 60.0 {
        format!("{}s", age.as_secs())
    } else {
        format!("{}m{:02}s", age.as_secs() / 60, age.as_secs() % 60)
    }
}

/// Left-aligned columns, two spaces apart, widths from the widest cell.
fn write_columns(out: &mut String, rows: &[Vec<String>]) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(&widths) {
            let _ = write!(line, "{cell}{}  ", " ".repeat(width - cell.chars().count()));
        }
        let _ = writeln!(out, "  {}", line.trim_end());
    }
}

#[cfg(test)]
mod tests {
    use super::super::driver::ObjectProgress;
    use super::super::observe::HubClusterState;
    use super::super::script::Intent;
    use super::super::topology::Topology;
    use super::*;

    fn summary(ready: i32, replicas: i32, generation: i64) -> StatusSummary {
        StatusSummary {
            replicas,
            ready_replicas: ready,
            available_replicas: ready,
            updated_replicas: replicas,
            observed_generation: Some(generation),
            available: Some("True".to_owned()),
        }
    }

    fn copy(replicas: i32, status: Option<StatusSummary>) -> ObjectState {
        ObjectState {
            generation: Some(2),
            desired: Some(replicas),
            image: Some("registry.example/demo/x:v1".to_owned()),
            status,
            held_by_hub: true,
        }
    }

    fn progress(step: Step, replicas: i32, placed: bool, seen: bool) -> ObjectProgress {
        ObjectProgress {
            step: Some((
                step,
                Intent {
                    placed,
                    replicas,
                    revision: 1,
                },
            )),
            seen,
        }
    }

    fn observation() -> Observation {
        let topology = Topology::new(2);
        let view = |index: usize, progress, truth, kcp| ObjectView {
            object: topology.objects[index].clone(),
            downstream_namespace: format!("kcp-{index}"),
            progress,
            truth,
            kcp,
        };
        Observation {
            objects: vec![
                // Scaled and seen through.
                view(
                    0,
                    progress(Step::Scale { from: 3, to: 5 }, 5, true, true),
                    Ok(Some(copy(5, Some(summary(5, 5, 2))))),
                    Ok(Some(copy(5, Some(summary(5, 5, 2))))),
                ),
                // Scaled in KCP, the hub has not merged the cluster's status yet.
                view(
                    1,
                    progress(Step::Scale { from: 3, to: 5 }, 5, true, false),
                    Ok(Some(copy(5, Some(summary(5, 5, 2))))),
                    Ok(Some(copy(5, Some(summary(3, 3, 1))))),
                ),
                // Unplaced and gone, but the cluster could not be read.
                view(
                    2,
                    progress(Step::Unplace, 3, false, false),
                    Err("503 ServiceUnavailable".to_owned()),
                    Ok(Some(copy(3, None))),
                ),
            ],
            clusters: vec![
                ClusterView {
                    name: "cluster-1".into(),
                    objects: 2,
                    heartbeat_age: Some(Duration::from_millis(420)),
                    deltas_received: Some(7.0),
                    state: Some(HubClusterState {
                        name: "cluster-1".into(),
                        connected: true,
                        state: "Ready".into(),
                    }),
                },
                ClusterView {
                    name: "cluster-2".into(),
                    objects: 1,
                    heartbeat_age: None,
                    deltas_received: None,
                    state: None,
                },
            ],
            agents_connected: Some(1.0),
            hub_error: None,
        }
    }

    fn line_starting<'a>(table: &'a str, prefix: &str) -> &'a str {
        table
            .lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .unwrap_or_else(|| panic!("no line starting with {prefix:?} in\n{table}"))
    }

    fn line_with<'a>(table: &'a str, needle: &str) -> &'a str {
        table
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in\n{table}"))
    }

    #[test]
    fn rows_show_the_step_both_copies_and_whether_they_agree() {
        let table = render("title", &observation(), &[], &["kubectl ...".to_owned()]);
        let web = line_with(&table, "root:demo:a/shop/web");
        let cells: Vec<&str> = web.split_whitespace().collect();
        assert_eq!(
            cells,
            [
                "root:demo:a/shop/web",
                "cluster-1",
                "scale",
                "3→5",
                "✓",
                "5×v1",
                "kcp-0/web",
                "5×v1",
                "5/5",
                "2",
                "5/5",
                "2",
                "✓"
            ]
        );
        let api = line_with(&table, "root:demo:a/shop/api");
        assert!(
            api.contains("3→5 …") && api.contains("3/3") && api.ends_with('✗'),
            "{api}"
        );
        let worker = line_with(&table, "root:demo:b/batch/worker");
        assert!(
            worker.contains("unplace …")
                && worker.contains("3×v1 unplaced")
                && worker.contains("error"),
            "{worker}"
        );
        assert!(table.contains("! root:demo:b/batch/worker (cluster): 503 ServiceUnavailable"));
        assert!(table.starts_with("title\n") && table.trim_end().ends_with("kubectl ..."));
    }

    #[test]
    fn events_follow_the_clusters() {
        let event = LoopEvent {
            seq: 1,
            at: jiff::Timestamp::UNIX_EPOCH,
            object: Topology::new(1).objects[0].clone(),
            step: Step::Unplace,
            stages: vec![(
                "deleted from cluster-1".to_owned(),
                Some(Duration::from_millis(300)),
            )],
        };
        let table = render("title", &observation(), &[event], &[]);
        let header = table.find("the loop, latest steps").unwrap_or(0);
        let line = table
            .find("unplaced in KCP: deleted from cluster-1 +0.30s")
            .unwrap_or(0);
        assert!(
            header > table.find("hub: 1 agent(s)").unwrap_or(usize::MAX),
            "{table}"
        );
        assert!(line > header, "{table}");
    }

    #[test]
    fn clusters_show_heartbeat_age() {
        let table = render("title", &observation(), &[], &[]);
        let one: Vec<&str> = line_starting(&table, "cluster-1 ")
            .split_whitespace()
            .collect();
        assert_eq!(
            one,
            ["cluster-1", "2", "Ready", "(connected)", "0.4s", "ago", "7"]
        );
        assert!(line_starting(&table, "cluster-2 ").contains("never"));
        assert!(table.contains("hub: 1 agent(s) connected"));
    }

    #[test]
    fn columns_line_up() {
        let table = render("title", &observation(), &[], &[]);
        let header = line_with(&table, "OBJECT");
        let web = line_with(&table, "shop/web");
        let column =
            |line: &str, needle: &str| line.find(needle).map(|i| line[..i].chars().count());
        assert_eq!(column(header, "CLUSTER "), column(web, "cluster-1"));
        assert_eq!(
            column(header, "IN SYNC"),
            column(web, "✓\n").or(web.rfind('✓').map(|i| web[..i].chars().count()))
        );
    }

    #[test]
    fn ages_read_naturally() {
        assert_eq!(age_text(Duration::from_millis(420)), "0.4s");
        assert_eq!(age_text(Duration::from_secs(12)), "12s");
        assert_eq!(age_text(Duration::from_secs(185)), "3m05s");
    }
}
