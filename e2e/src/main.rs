//! `uplink-e2e`: Uplink's test bed on the command line.

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "uplink-e2e",
    version,
    about = "Uplink's test bed: API servers, development PKI, demo and benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one Kubernetes-compatible API server (with KCP-style workspaces) until Ctrl-C.
    Apiserver(uplink_e2e::apiserver::cli::ApiserverArgs),
    /// Write a development PKI: a CA, the hub's serving certificate and one client certificate per cluster.
    Certs(uplink_e2e::pki::CertsArgs),
    /// Run KCP, clusters, the hub and one agent per cluster, and show KCP's view next to each cluster's truth.
    Demo(uplink_e2e::demo::DemoArgs),
    /// Measure Uplink: real hub and agent processes over mutual TLS on loopback, figures beside goals and baselines.
    Bench(uplink_e2e::bench::BenchArgs),
    /// The `ingest` benchmark's baseline: a bare TLS WebSocket server that reads and discards.
    #[command(hide = true)]
    BenchSink(uplink_e2e::bench::sink::SinkArgs),
    /// The `failover` benchmark's simulated agents, driven over stdin and stdout.
    #[command(hide = true)]
    BenchAgentPool(uplink_e2e::bench::pool::PoolArgs),
}

/// mimalloc, as in the hub: `bench` runs thousands of simulated agents in
/// this process, and the load they generate should cost as little as it can.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // One crypto provider for the whole process; installing it twice is the only failure.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Apiserver(args) => uplink_e2e::apiserver::cli::run(args).await,
            Command::Certs(args) => uplink_e2e::pki::run_certs(args),
            Command::Demo(args) => uplink_e2e::demo::run(args).await,
            Command::Bench(args) => uplink_e2e::bench::run(args).await,
            Command::BenchSink(args) => uplink_e2e::bench::sink::serve(args).await,
            Command::BenchAgentPool(args) => uplink_e2e::bench::pool::serve(args).await,
        }
    })
}
