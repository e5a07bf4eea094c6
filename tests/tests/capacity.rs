//! Cluster health and capacity, end to end: three clusters with nodes and
//! pods created through their API servers; the hub's per-cluster records
//! and fleet totals equal figures computed by hand, exactly; a node turning
//! NotReady makes its cluster Degraded in the API, in metrics and in its
//! SyncTarget; deleting pods lowers the allocation; the CSV and JSON
//! reports agree. And `kubectl get synctargets` in KCP is a fleet table:
//! state, health, heartbeat age and CPU allocation from the status the hub
//! writes.

use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, ensure};
use serde_json::{Value, json};
use uplink_tests::fleet::capacity::{NodeResources, pod};
use uplink_tests::fleet::setup::ready_condition;
use uplink_tests::fleet::{
    Fleet, SCENARIO_TIMEOUT, STATUS_DEADLINE, bounded, eventually, http_get,
};
use uplink_tests::kubectl::{Kubectl, find_kubectl};

const SYNCTARGETS: &str = "root";
const TEAM_A: &str = "root:org:team-a";
const TEAM_B: &str = "root:org:team-b";

const KI: u64 = 1024;
const MI: u64 = 1024 * KI;
const GI: u64 = 1024 * MI;

fn res<'a>(cpu: &'a str, memory: &'a str, storage: &'a str, pods: &'a str) -> NodeResources<'a> {
    NodeResources {
        cpu,
        memory,
        ephemeral_storage: storage,
        pods,
        extended: &[],
    }
}

/// Expected figures of one cluster, computed by hand below.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Expected {
    nodes: (u64, u64),
    allocatable: [u64; 4],
    capacity: [u64; 4],
    allocated: [u64; 4],
}

fn amounts(v: &Value) -> [u64; 4] {
    [
        v["cpu_millis"].as_u64().unwrap_or(u64::MAX),
        v["memory_bytes"].as_u64().unwrap_or(u64::MAX),
        v["ephemeral_storage_bytes"].as_u64().unwrap_or(u64::MAX),
        v["pods"].as_u64().unwrap_or(u64::MAX),
    ]
}

fn observed(record: &Value) -> Expected {
    Expected {
        nodes: (
            record["nodes"]["total"].as_u64().unwrap_or(0),
            record["nodes"]["ready"].as_u64().unwrap_or(0),
        ),
        allocatable: amounts(&record["allocatable"]),
        capacity: amounts(&record["capacity"]),
        allocated: amounts(&record["allocated"]),
    }
}

fn cluster<'a>(report: &'a Value, name: &str) -> Result<&'a Value> {
    report["clusters"]
        .as_array()
        .and_then(|all| all.iter().find(|c| c["cluster"] == name))
        .ok_or_else(|| anyhow!("cluster {name} not in the capacity report"))
}

async fn populate(fleet: &Fleet) -> Result<()> {
    // Cluster a: two nodes, one with GPUs.
    fleet
        .create_node(
            "a",
            "a1",
            NodeResources {
                extended: &[("nvidia.com/gpu", "2")],
                ..res("4", "16Gi", "100Gi", "110")
            },
            NodeResources {
                extended: &[("nvidia.com/gpu", "2")],
                ..res("3800m", "15Gi", "90Gi", "110")
            },
            true,
        )
        .await?;
    fleet
        .create_node(
            "a",
            "a2",
            res("2", "8Gi", "50Gi", "110"),
            res("1.9", "7.5Gi", "45Gi", "110"),
            true,
        )
        .await?;
    fleet
        .create_cluster_namespace("a", "shop", Some(TEAM_A))
        .await?;
    fleet.create_cluster_namespace("a", "ml", None).await?;
    // p1: 100m + 250m, 128Mi + 256Mi.
    fleet
        .create_pod(
            "a",
            pod(
                "shop",
                "p1",
                Some("a1"),
                &[("100m", "128Mi"), ("250m", "256Mi")],
            ),
            "Running",
        )
        .await?;
    // p2: sidecar (200m, 100Mi), then an init container (1, 64Mi) running
    // beside it, one app container (300m, 200Mi), overhead (50m, 10Mi).
    // cpu = max(300 + 200, 1000 + 200) + 50 = 1250m;
    // memory = max(200 + 100, 64 + 100) + 10 = 310Mi.
    let mut p2 = pod("shop", "p2", Some("a2"), &[("300m", "200Mi")]);
    p2["spec"]["initContainers"] = json!([
        {"name": "proxy", "image": "envoy", "restartPolicy": "Always",
         "resources": {"requests": {"cpu": "200m", "memory": "100Mi"}}},
        {"name": "setup", "image": "busybox",
         "resources": {"requests": {"cpu": "1", "memory": "64Mi"}}},
    ]);
    p2["spec"]["overhead"] = json!({"cpu": "50m", "memory": "10Mi"});
    fleet.create_pod("a", p2, "Running").await?;
    // Terminated and unscheduled pods do not count.
    fleet
        .create_pod(
            "a",
            pod("shop", "done", Some("a1"), &[("2", "1Gi")]),
            "Succeeded",
        )
        .await?;
    fleet
        .create_pod(
            "a",
            pod("shop", "waiting", None, &[("1", "1Gi")]),
            "Pending",
        )
        .await?;
    // p5: one GPU, 500m, 1Gi, in an unmapped namespace.
    let mut p5 = pod("ml", "p5", Some("a1"), &[("500m", "1Gi")]);
    p5["spec"]["containers"][0]["resources"]["requests"]["nvidia.com/gpu"] = json!("1");
    fleet.create_pod("a", p5, "Running").await?;

    // Cluster b: one big node.
    fleet
        .create_node(
            "b",
            "b1",
            res("8", "32Gi", "200Gi", "250"),
            res("7500m", "30Gi", "180Gi", "250"),
            true,
        )
        .await?;
    fleet
        .create_cluster_namespace("b", "shop", Some(TEAM_A))
        .await?;
    fleet
        .create_pod(
            "b",
            pod("shop", "q1", Some("b1"), &[("1.5", "1.5Gi")]),
            "Running",
        )
        .await?;
    // Bound but not started yet: counts. 512e6 bytes = 512,000,000.
    fleet
        .create_pod(
            "b",
            pod("shop", "q2", Some("b1"), &[("0.5", "512e6")]),
            "Pending",
        )
        .await?;
    fleet
        .create_pod(
            "b",
            pod("shop", "q3", Some("b1"), &[("4", "4Gi")]),
            "Failed",
        )
        .await?;

    // Cluster c: three small nodes.
    for n in ["c1", "c2", "c3"] {
        fleet
            .create_node(
                "c",
                n,
                res("2", "4Gi", "20Gi", "110"),
                res("2", "4Gi", "20Gi", "110"),
                true,
            )
            .await?;
    }
    fleet
        .create_cluster_namespace("c", "web", Some(TEAM_B))
        .await?;
    fleet
        .create_pod(
            "c",
            pod("web", "r1", Some("c1"), &[("100m", "1k")]),
            "Running",
        )
        .await?;
    fleet
        .create_pod(
            "c",
            pod("web", "r2", Some("c2"), &[("1", "1Mi")]),
            "Running",
        )
        .await?;
    Ok(())
}

fn expected() -> [(&'static str, Expected); 3] {
    let a = Expected {
        nodes: (2, 2),
        capacity: [4000 + 2000, 16 * GI + 8 * GI, 100 * GI + 50 * GI, 220],
        allocatable: [
            3800 + 1900,
            15 * GI + 7 * GI + GI / 2,
            90 * GI + 45 * GI,
            220,
        ],
        // p1 + p2 + p5.
        allocated: [350 + 1250 + 500, 384 * MI + 310 * MI + GI, 0, 3],
    };
    let b = Expected {
        nodes: (1, 1),
        capacity: [8000, 32 * GI, 200 * GI, 250],
        allocatable: [7500, 30 * GI, 180 * GI, 250],
        // q1 + q2.
        allocated: [1500 + 500, 3 * GI / 2 + 512_000_000, 0, 2],
    };
    let c = Expected {
        nodes: (3, 3),
        capacity: [6000, 12 * GI, 60 * GI, 330],
        allocatable: [6000, 12 * GI, 60 * GI, 330],
        // r1 + r2.
        allocated: [100 + 1000, 1000 + MI, 0, 2],
    };
    [("a", a), ("b", b), ("c", c)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_totals_health_and_reports() -> Result<()> {
    bounded(SCENARIO_TIMEOUT, async {
        let fleet = Fleet::builder()
            .clusters(["a", "b", "c"])
            .workspaces([TEAM_A, TEAM_B])
            .synctargets(SYNCTARGETS, Duration::from_secs(1))
            .hub_config(|c| c.capacity.sample_interval = Duration::from_millis(100))
            .start()
            .await?;
        populate(&fleet).await?;
        let want = expected();

        // Every cluster's record, exactly.
        let report = eventually(
            STATUS_DEADLINE,
            "capacity records equal the hand-computed figures",
            async || {
                let report = fleet.hub_api("/api/v1/capacity").await?;
                for (name, want) in &want {
                    let got = observed(cluster(&report, name)?);
                    ensure!(got == *want, "cluster {name}: got {got:?}, want {want:?}");
                }
                Ok(report)
            },
        )
        .await?;

        // Fleet totals, exactly.
        let sum = |pick: fn(&Expected) -> [u64; 4]| -> [u64; 4] {
            let mut total = [0; 4];
            for (_, e) in &want {
                for (t, v) in total.iter_mut().zip(pick(e)) {
                    *t += v;
                }
            }
            total
        };
        let fleet_totals = &report["fleet"];
        assert_eq!(fleet_totals["clusters"], 3);
        assert_eq!(
            amounts(&fleet_totals["allocatable"]),
            sum(|e| e.allocatable)
        );
        assert_eq!(amounts(&fleet_totals["capacity"]), sum(|e| e.capacity));
        assert_eq!(amounts(&fleet_totals["allocated"]), sum(|e| e.allocated));
        assert_eq!(fleet_totals["nodes_total"], 6);
        assert_eq!(
            fleet_totals["used"],
            Value::Null,
            "no metrics.k8s.io: usage unknown, not zero"
        );
        assert_eq!(
            fleet_totals["extended"]["nvidia.com/gpu"],
            json!({"capacity": 2, "allocatable": 2, "requests": 1})
        );
        // Per workspace: team-a = p1 + p2 (cluster a) + q1 + q2 (cluster b).
        assert_eq!(
            report["workspaces"][TEAM_A]["requests"]["cpu_millis"],
            350 + 1250 + 2000
        );
        assert_eq!(report["workspaces"][TEAM_B]["requests"]["cpu_millis"], 1100);
        let a = cluster(&report, "a")?;
        assert_eq!(a["health"], "Healthy");
        assert_eq!(a["available"]["cpu_millis"], 5700 - 2100);

        // Metrics carry the same numbers (refreshed every half heartbeat).
        eventually(STATUS_DEADLINE, "capacity metrics", async || {
            let metrics = fleet.hub_metrics().await?;
            for (series, want) in [
                (
                    r#"uplink_cluster_allocated{cluster="a",resource="cpu"}"#,
                    2.1,
                ),
                (
                    r#"uplink_cluster_allocatable{cluster="b",resource="memory"}"#,
                    (30 * GI) as f64,
                ),
                (
                    r#"uplink_cluster_capacity{cluster="a",resource="nvidia.com/gpu"}"#,
                    2.0,
                ),
                (r#"uplink_fleet_allocated{resource="pods"}"#, 7.0),
                (r#"uplink_cluster_health{cluster="c",state="Healthy"}"#, 1.0),
            ] {
                let got = metrics.require(series)?;
                ensure!(got == want, "{series} = {got}, want {want}");
            }
            Ok(())
        })
        .await?;

        // A node NotReady: cluster c turns Degraded in the API, the metrics
        // and its SyncTarget.
        fleet.set_node_ready("c", "c2", false).await?;
        eventually(
            STATUS_DEADLINE,
            "cluster c Degraded everywhere",
            async || {
                let report = fleet.hub_api("/api/v1/capacity").await?;
                let c = cluster(&report, "c")?;
                ensure!(c["health"] == "Degraded", "API: {}", c["health"]);
                let metrics = fleet.hub_metrics().await?;
                ensure!(
                    metrics.value(r#"uplink_cluster_health{cluster="c",state="Degraded"}"#)
                        == Some(1.0),
                    "metrics not Degraded yet"
                );
                let synctarget = fleet
                    .synctarget(SYNCTARGETS, "c")
                    .await?
                    .context("no SyncTarget for c")?;
                let healthy = synctarget["status"]["conditions"]
                    .as_array()
                    .and_then(|all| all.iter().find(|c| c["type"] == "Healthy"))
                    .cloned()
                    .unwrap_or_default();
                ensure!(
                    healthy["status"] == "False" && healthy["reason"] == "Degraded",
                    "SyncTarget condition: {healthy}"
                );
                ensure!(ready_condition(&synctarget) == Some(("True".into(), "Ready".into())));
                ensure!(
                    synctarget["status"]["allocatable"]["cpu"] == "6000m",
                    "{}",
                    synctarget["status"]
                );
                Ok(())
            },
        )
        .await?;

        // Deleting pods lowers the allocation.
        fleet.delete_pod("a", "ml", "p5").await?;
        fleet.delete_pod("a", "shop", "p1").await?;
        eventually(
            STATUS_DEADLINE,
            "cluster a's allocation lowered",
            async || {
                let report = fleet.hub_api("/api/v1/capacity").await?;
                let a = cluster(&report, "a")?;
                ensure!(
                    amounts(&a["allocated"]) == [1250, 310 * MI, 0, 1],
                    "allocated: {}",
                    a["allocated"]
                );
                ensure!(a["extended"]["nvidia.com/gpu"]["requests"] == 0);
                Ok(())
            },
        )
        .await?;

        // CSV and JSON agree, and the CSV parses with a standard reader.
        let json_report = fleet.hub_api("/api/v1/capacity?format=json").await?;
        let csv_text = http_get(fleet.hub_http_addr(), "/api/v1/capacity?format=csv").await?;
        let mut reader = csv::Reader::from_reader(csv_text.as_bytes());
        let header = reader.headers()?.clone();
        let column = |row: &csv::StringRecord, name: &str| -> String {
            header
                .iter()
                .position(|h| h == name)
                .and_then(|i| row.get(i))
                .unwrap_or("<missing>")
                .to_owned()
        };
        let rows: Vec<csv::StringRecord> = reader.records().collect::<Result<_, _>>()?;
        assert_eq!(rows.len(), 4, "three clusters and the fleet");
        for row in &rows {
            let (json_side, name) = if column(row, "scope") == "fleet" {
                (&json_report["fleet"], "fleet".to_owned())
            } else {
                let name = column(row, "cluster");
                (cluster(&json_report, &name)?, name)
            };
            for (csv_res, json_res) in [
                ("cpu_millis", "cpu_millis"),
                ("memory_bytes", "memory_bytes"),
                ("ephemeral_storage_bytes", "ephemeral_storage_bytes"),
                ("pods", "pods"),
            ] {
                for what in ["capacity", "allocatable", "allocated", "available"] {
                    assert_eq!(
                        column(row, &format!("{csv_res}_{what}")),
                        json_side[what][json_res].to_string(),
                        "{name} {csv_res}_{what}"
                    );
                }
            }
            for (csv_col, rate) in [("cpu_allocation", "cpu"), ("memory_allocation", "memory")] {
                let csv_value: f64 = column(row, csv_col).parse()?;
                assert_eq!(
                    Some(csv_value),
                    json_side["allocation"][rate].as_f64(),
                    "{name} {csv_col}"
                );
            }
            if column(row, "scope") == "cluster" {
                assert_eq!(
                    column(row, "health"),
                    json_side["health"].as_str().unwrap_or_default()
                );
                assert_eq!(
                    column(row, "health_reason"),
                    json_side["health_reason"].as_str().unwrap_or_default()
                );
            }
        }

        // The table, through the `uplink-hub report` client.
        let table = uplink_hub::capacity::api::fetch_report(
            &format!("http://{}", fleet.hub_http_addr()),
            uplink_hub::capacity::Format::Table,
            None,
        )
        .await?;
        for needle in ["CLUSTER", "FLEET", "Degraded", TEAM_A] {
            assert!(table.contains(needle), "{needle} not in\n{table}");
        }

        // History: points per cluster, with the allocation seen last.
        eventually(STATUS_DEADLINE, "history of cluster a", async || {
            let history = fleet.hub_api("/api/v1/capacity/history?cluster=a").await?;
            let points = history["points"].as_array().cloned().unwrap_or_default();
            let last = points.last().context("no points yet")?;
            ensure!(
                last["allocated"]["cpu_millis"] == 1250,
                "last point: {last}"
            );
            Ok(())
        })
        .await?;

        fleet.shutdown().await
    })
    .await
}

/// A row of `kubectl get` output: cells by upper-case column name.
type Row = std::collections::BTreeMap<String, String>;

/// The header and rows of a table `kubectl get` printed.
/// Columns start where their header starts (kubectl pads with at least
/// three spaces; a header like `CPU ALLOCATED` has one), so an empty cell
/// reads as "".
fn kubectl_table(text: &str) -> Result<(Vec<String>, Vec<Row>)> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header = lines.next().context("kubectl printed nothing")?;
    let mut starts = Vec::new();
    let mut spaces = 2;
    for (i, c) in header.char_indices() {
        if c != ' ' && spaces >= 2 {
            starts.push(i);
        }
        spaces = if c == ' ' { spaces + 1 } else { 0 };
    }
    let cell = |line: &str, k: usize| -> String {
        let from = starts[k].min(line.len());
        let to = starts.get(k + 1).map_or(line.len(), |&e| e.min(line.len()));
        line.get(from..to).unwrap_or_default().trim().to_owned()
    };
    let names: Vec<String> = (0..starts.len()).map(|k| cell(header, k)).collect();
    let rows = lines
        .map(|line| {
            names
                .iter()
                .enumerate()
                .map(|(k, name)| (name.clone(), cell(line, k)))
                .collect()
        })
        .collect();
    Ok((names, rows))
}

/// Whether `text` reads as kube's `HumanDuration` (`5s`, `2m30s`, `3d`, ...).
fn is_age(text: &str) -> bool {
    text.starts_with(|c: char| c.is_ascii_digit())
        && text.ends_with(['s', 'm', 'h', 'd', 'y'])
        && text
            .chars()
            .all(|c| c.is_ascii_digit() || "smhdy".contains(c))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_synctargets_is_a_fleet_table() -> Result<()> {
    if find_kubectl().is_none() {
        eprintln!("skipping: kubectl not found on PATH");
        return Ok(());
    }
    bounded(SCENARIO_TIMEOUT, async {
        // A short heartbeat period: new allocation figures ride on it.
        let fleet = Fleet::builder()
            .clusters(["east", "west"])
            .synctargets(SYNCTARGETS, Duration::from_millis(500))
            .start()
            .await?;
        // east: one node, 4 CPUs and 16Gi allocatable; pods request 1700m
        // (42.5%, printed 42%) and 4Gi (25%).
        fleet
            .create_node(
                "east",
                "e1",
                res("4", "16Gi", "100Gi", "110"),
                res("4", "16Gi", "100Gi", "110"),
                true,
            )
            .await?;
        fleet.create_cluster_namespace("east", "shop", None).await?;
        fleet
            .create_pod(
                "east",
                pod("shop", "p1", Some("e1"), &[("1", "2Gi")]),
                "Running",
            )
            .await?;
        fleet
            .create_pod(
                "east",
                pod("shop", "p2", Some("e1"), &[("700m", "2Gi")]),
                "Running",
            )
            .await?;
        // west: two nodes, one NotReady (Degraded); 500m of 4 CPUs (12%).
        for (node, ready) in [("w1", true), ("w2", false)] {
            fleet
                .create_node(
                    "west",
                    node,
                    res("2", "8Gi", "50Gi", "110"),
                    res("2", "8Gi", "50Gi", "110"),
                    ready,
                )
                .await?;
        }
        fleet.create_cluster_namespace("west", "shop", None).await?;
        fleet
            .create_pod(
                "west",
                pod("shop", "q1", Some("w1"), &[("500m", "1Gi")]),
                "Running",
            )
            .await?;

        let kubectl = Kubectl::for_server(fleet.kcp_server(), Some(SYNCTARGETS))?
            .context("kubectl is on PATH")?;
        let table = eventually(
            STATUS_DEADLINE,
            "kubectl get synctargets to show the fleet",
            async || {
                let out = kubectl.ok(&["get", "synctargets"]).await?;
                let (header, rows) = kubectl_table(&out)?;
                ensure!(
                    header
                        == [
                            "NAME",
                            "STATE",
                            "HEALTH",
                            "HEARTBEAT",
                            "CPU ALLOCATED",
                            "AGE"
                        ],
                    "header {header:?}"
                );
                let row = |name: &str| {
                    rows.iter()
                        .find(|r| r["NAME"] == name)
                        .with_context(|| format!("no row {name} in\n{out}"))
                };
                let (east, west) = (row("east")?, row("west")?);
                for (r, health, cpu) in [(east, "Healthy", "42%"), (west, "Degraded", "12%")] {
                    ensure!(r["STATE"] == "Ready", "STATE in\n{out}");
                    ensure!(r["HEALTH"] == health, "HEALTH in\n{out}");
                    ensure!(is_age(&r["HEARTBEAT"]), "HEARTBEAT in\n{out}");
                    ensure!(r["CPU ALLOCATED"] == cpu, "CPU ALLOCATED in\n{out}");
                    ensure!(is_age(&r["AGE"]), "AGE in\n{out}");
                }
                Ok(out)
            },
        )
        .await?;
        println!("$ kubectl get synctargets\n{table}");

        let wide = kubectl.ok(&["get", "synctargets", "-o", "wide"]).await?;
        let (header, rows) = kubectl_table(&wide)?;
        assert_eq!(
            header,
            [
                "NAME",
                "STATE",
                "HEALTH",
                "HEARTBEAT",
                "CPU ALLOCATED",
                "AGE",
                "MEMORY ALLOCATED",
                "READY"
            ],
            "{wide}"
        );
        let east = rows
            .iter()
            .find(|r| r["NAME"] == "east")
            .context("no row east")?;
        assert_eq!(east["MEMORY ALLOCATED"], "25%", "{wide}");
        assert_eq!(east["READY"], "True", "{wide}");
        println!("$ kubectl get synctargets -o wide\n{wide}");

        fleet.shutdown().await
    })
    .await
}
