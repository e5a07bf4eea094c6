//! Renders an [`Observation`] as the demo's table: one row per object with
//! what the driver is doing, the cluster's truth, what KCP holds and whether
//! they agree; then one row per cluster with its heartbeat age. A pure
//! function of its input, so it is tested without servers.

use std::fmt::Write as _;
use std::time::Duration;

use super::observe::{ClusterView, ObjectCopy, ObjectView, Observation};
use super::status::StatusSummary;

/// ANSI: cursor home, clear screen.
pub const CLEAR_SCREEN: &str = "\x1b[H\x1b[2J";

/// Renders the table; `title` and `notes` are printed above and below it.
pub fn render(title: &str, observation: &Observation, notes: &[String]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{title}");
    let _ = writeln!(out);

    let mut objects = vec![row([
        "OBJECT",
        "CLUSTER",
        "DRIVER",
        "DESIRED",
        "C.READY",
        "C.GEN",
        "C.AVAILABLE",
        "KCP.READY",
        "KCP.OBSGEN",
        "KCP.AVAILABLE",
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
        "  DESIRED = the cluster's spec.replicas. C.* = the cluster's status (ready/replicas) \
         and generation. KCP.* = KCP's status: ready/replicas, observedGeneration."
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
    let driver = view
        .driver
        .as_ref()
        .map_or_else(|| "waiting".to_owned(), |d| d.phase.label().to_owned());
    let (desired, c_ready, c_gen, c_available) = match &view.truth {
        Ok(copy) => (
            copy.desired
                .map_or_else(|| "-".to_owned(), |d| d.to_string()),
            ready(copy.status.as_ref()),
            optional(copy.generation),
            available(copy),
        ),
        Err(_) => {
            let (ready, generation, available) = error_cells();
            ("-".to_owned(), ready, generation, available)
        }
    };
    let (k_ready, k_obs, k_available) = match &view.kcp {
        Ok(copy) => (
            ready(copy.status.as_ref()),
            optional(copy.status.as_ref().and_then(|s| s.observed_generation)),
            available(copy),
        ),
        Err(_) => error_cells(),
    };
    let in_sync = if view.kcp_matches_truth() {
        "✓"
    } else {
        "✗"
    };
    vec![
        view.object.to_string(),
        view.object.cluster.clone(),
        driver,
        desired,
        c_ready,
        c_gen,
        c_available,
        k_ready,
        k_obs,
        k_available,
        in_sync.to_owned(),
    ]
}

/// `ready/replicas` of a status, `no status` without one.
fn ready(status: Option<&StatusSummary>) -> String {
    status.map_or_else(
        || "no status".to_owned(),
        |s| format!("{}/{}", s.ready_replicas, s.replicas),
    )
}

fn available(copy: &ObjectCopy) -> String {
    copy.status
        .as_ref()
        .and_then(|s| s.available.clone())
        .unwrap_or_else(|| "-".to_owned())
}

fn optional(value: Option<i64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn error_cells() -> (String, String, String) {
    ("error".to_owned(), "-".to_owned(), "-".to_owned())
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
    use super::super::driver::Applied;
    use super::super::observe::HubClusterState;
    use super::super::script::Phase;
    use super::super::topology::Topology;
    use super::*;

    fn summary(ready: i32, replicas: i32, generation: i64, available: &str) -> StatusSummary {
        StatusSummary {
            replicas,
            ready_replicas: ready,
            available_replicas: ready,
            updated_replicas: replicas,
            observed_generation: Some(generation),
            available: Some(available.to_owned()),
        }
    }

    fn observation() -> Observation {
        let topology = Topology::new(2);
        let copy = |status| ObjectCopy {
            generation: Some(2),
            desired: Some(3),
            status,
        };
        let failing = summary(1, 3, 2, "False");
        let steady = summary(3, 3, 2, "True");
        Observation {
            objects: vec![
                ObjectView {
                    object: topology.objects[0].clone(),
                    driver: Some(Applied {
                        phase: Phase::Failing,
                        status: failing.clone(),
                    }),
                    truth: Ok(copy(Some(failing.clone()))),
                    kcp: Ok(copy(Some(failing))),
                },
                ObjectView {
                    object: topology.objects[1].clone(),
                    driver: Some(Applied {
                        phase: Phase::Steady,
                        status: steady.clone(),
                    }),
                    truth: Ok(copy(Some(steady))),
                    kcp: Ok(copy(None)),
                },
                ObjectView {
                    object: topology.objects[2].clone(),
                    driver: None,
                    truth: Err("503 ServiceUnavailable".to_owned()),
                    kcp: Ok(copy(None)),
                },
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
    fn rows_show_truth_kcp_and_whether_they_agree() {
        let table = render("title", &observation(), &["kubectl ...".to_owned()]);
        let web = line_with(&table, "root:demo:a/shop/web");
        let cells: Vec<&str> = web.split_whitespace().collect();
        assert_eq!(
            cells,
            [
                "root:demo:a/shop/web",
                "cluster-1",
                "failing",
                "3",
                "1/3",
                "2",
                "False",
                "1/3",
                "2",
                "False",
                "✓"
            ]
        );
        let api = line_with(&table, "root:demo:a/shop/api");
        assert!(api.contains("no status") && api.ends_with('✗'), "{api}");
        let worker = line_with(&table, "root:demo:b/batch/worker");
        assert!(
            worker.contains("waiting") && worker.contains("error"),
            "{worker}"
        );
        assert!(table.contains("! root:demo:b/batch/worker (cluster): 503 ServiceUnavailable"));
        assert!(table.starts_with("title\n") && table.trim_end().ends_with("kubectl ..."));
    }

    #[test]
    fn clusters_show_heartbeat_age() {
        let table = render("title", &observation(), &[]);
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
        let table = render("title", &observation(), &[]);
        let header = line_with(&table, "OBJECT");
        let web = line_with(&table, "shop/web");
        let column =
            |line: &str, needle: &str| line.find(needle).map(|i| line[..i].chars().count());
        assert_eq!(column(header, "CLUSTER"), column(web, "cluster-1"));
        assert_eq!(column(header, "IN SYNC"), column(web, "✓"));
    }

    #[test]
    fn ages_read_naturally() {
        assert_eq!(age_text(Duration::from_millis(420)), "0.4s");
        assert_eq!(age_text(Duration::from_secs(12)), "12s");
        assert_eq!(age_text(Duration::from_secs(185)), "3m05s");
    }
}
