//! Benchmark of the capacity collector: an agent watching 5,000 nodes and
//! 150,000 pods, fed in-memory watch events (no API server).
//!
//! ```text
//! cargo run --release -p uplink-agent --example capacity_bench [nodes] [pods]
//! ```
//!
//! Prints the memory the collector holds (resident set growth, from
//! `/proc/self/statm`, Linux only; an upper bound: it includes allocator
//! slack) and the cost per pod event (the pod read
//! into its contribution, quantities parsed, totals updated) for adds,
//! phase changes and deletes, and the cost of one heartbeat summary.

use std::hint::black_box;
use std::time::Instant;

use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::json;
use uplink_agent::capacity::Collector;
use uplink_protocol::ClusterSummary;

/// Pods built ahead of each timed batch (built outside the timing).
const BATCH: usize = 10_000;

fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn node(i: usize) -> Node {
    let result = serde_json::from_value(json!({
        "metadata": {"name": format!("node-{i:05}")},
        "spec": {"unschedulable": i.is_multiple_of(100)},
        "status": {
            "capacity": {"cpu": "32", "memory": "128Gi", "ephemeral-storage": "500Gi", "pods": "110", "nvidia.com/gpu": if i.is_multiple_of(10) { "8" } else { "0" }},
            "allocatable": {"cpu": "31500m", "memory": "125.5Gi", "ephemeral-storage": "450G", "pods": "110", "nvidia.com/gpu": if i.is_multiple_of(10) { "8" } else { "0" }},
            "conditions": [{"type": "Ready", "status": if i.is_multiple_of(250) { "False" } else { "True" }}],
        },
    }));
    result.unwrap_or_else(|e| panic!("node manifest: {e}"))
}

fn pod(i: usize, nodes: usize, phase: &str) -> Pod {
    let cpu = ["100m", "0.25", "1", "1500m", "2e-1"][i % 5];
    let memory = ["128Mi", "1Gi", "256e6", "1.5Gi", "64Mi"][i % 5];
    let result = serde_json::from_value(json!({
        "metadata": {"name": format!("pod-{i:06}"), "namespace": format!("ns-{:03}", i % 500)},
        "spec": {
            "nodeName": format!("node-{:05}", i % nodes),
            "initContainers": [
                {"name": "proxy", "image": "envoy", "restartPolicy": "Always", "resources": {"requests": {"cpu": "50m", "memory": "32Mi"}}},
                {"name": "setup", "image": "busybox", "resources": {"requests": {"cpu": "500m", "memory": "16Mi"}}},
            ],
            "containers": [
                {"name": "app", "image": "app", "resources": {"requests": {"cpu": cpu, "memory": memory}}},
                {"name": "log", "image": "log", "resources": {"requests": {"cpu": "10m", "memory": "8Mi", "ephemeral-storage": "1Gi"}}},
            ],
        },
        "status": {"phase": phase},
    }));
    result.unwrap_or_else(|e| panic!("pod manifest: {e}"))
}

/// Applies `count` pod events built by `make`, timing only the applies.
fn timed(
    count: usize,
    make: impl Fn(usize) -> Pod,
    mut apply: impl FnMut(&Pod),
) -> std::time::Duration {
    let mut total = std::time::Duration::ZERO;
    let mut start = 0;
    while start < count {
        let end = (start + BATCH).min(count);
        let batch: Vec<Pod> = (start..end).map(&make).collect();
        let t = Instant::now();
        for p in &batch {
            apply(p);
        }
        total += t.elapsed();
        start = end;
    }
    total
}

fn main() {
    let mut args = std::env::args().skip(1);
    let nodes: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5_000);
    let pods: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(150_000);

    // Warm the allocator with one batch of pod objects (built and dropped
    // in every timed batch) so the resident growth measures what the
    // collector holds, not the batches' high-water mark.
    drop(black_box(
        (0..BATCH)
            .map(|i| pod(i, nodes, "Running"))
            .collect::<Vec<_>>(),
    ));
    let before = resident_bytes();
    let mut collector = Collector::new();
    for i in 0..500 {
        let locator = format!(
            r#"{{"cluster":"root:org:team-{}","namespace":"ns-{i:03}"}}"#,
            i % 50
        );
        collector.namespace_applied(&format!("ns-{i:03}"), Some(&locator));
    }
    let t = Instant::now();
    for i in 0..nodes {
        collector.node_applied(&node(i));
    }
    let node_time = t.elapsed();

    let add = timed(
        pods,
        |i| pod(i, nodes, "Running"),
        |p| collector.pod_applied(p),
    );
    let after = resident_bytes();
    let update = timed(
        pods,
        |i| pod(i, nodes, "Succeeded"),
        |p| collector.pod_applied(p),
    );
    let back = timed(
        pods,
        |i| pod(i, nodes, "Running"),
        |p| collector.pod_applied(p),
    );

    let t = Instant::now();
    let rounds = 100;
    for _ in 0..rounds {
        let mut summary = ClusterSummary::default();
        collector.fill(&mut summary);
        black_box(summary);
    }
    let summary_time = t.elapsed() / rounds;
    let mut summary = ClusterSummary::default();
    collector.fill(&mut summary);

    let delete = timed(
        pods,
        |i| pod(i, nodes, "Running"),
        |p| {
            collector.pod_deleted(
                p.metadata.namespace.as_deref().unwrap_or_default(),
                p.metadata.name.as_deref().unwrap_or_default(),
            );
        },
    );

    let per = |d: std::time::Duration| d.as_nanos() as f64 / pods as f64;
    println!("capacity collector: {nodes} nodes, {pods} pods");
    match (before, after) {
        (Some(b), Some(a)) => println!(
            "memory held:        {:.1} MiB resident growth ({:.0} bytes per pod, nodes and namespaces included)",
            a.saturating_sub(b) as f64 / (1 << 20) as f64,
            a.saturating_sub(b) as f64 / pods as f64
        ),
        _ => println!("memory held:        unknown (no /proc/self/statm)"),
    }
    println!(
        "node add:           {:.0} ns per event",
        node_time.as_nanos() as f64 / nodes as f64
    );
    println!("pod add:            {:.0} ns per event", per(add));
    println!(
        "pod phase change:   {:.0} ns per event (Running → Succeeded)",
        per(update)
    );
    println!(
        "pod phase change:   {:.0} ns per event (Succeeded → Running)",
        per(back)
    );
    println!("pod delete:         {:.0} ns per event", per(delete));
    println!(
        "heartbeat summary:  {:.1} µs",
        summary_time.as_nanos() as f64 / 1000.0
    );
    println!(
        "summary: nodes {}/{} ready, {} cordoned; requests {} m cpu, {} bytes memory, {} pods; {} workspaces",
        summary.nodes.ready,
        summary.nodes.total,
        summary.nodes.cordoned,
        summary.requests.cpu_millis,
        summary.requests.memory_bytes,
        summary.requests.pods,
        summary.workspaces.len()
    );
}
