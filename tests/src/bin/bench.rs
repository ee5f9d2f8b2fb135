//! Data-plane benchmark: ztunnel against direct traffic on the test topology.
//!
//! ```text
//! cargo release-ztunnel     # the deployable build: release profile, C library linked in
//! sudo ZTUNNEL_BIN=target/x86_64-unknown-linux-gnu/release/ztunnel \
//!     cargo run --release -p mesh-tests --bin bench -- --out target/bench
//! ```

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Measures throughput, latency, connection rate, memory and CPU of ztunnel against direct
/// traffic between the same pods, and writes results.json and results.md.
#[derive(Parser)]
struct Args {
    /// Directory for results.json and results.md.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Runs per scenario; the report shows medians.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Seconds per throughput, max-rate and connection-rate measurement.
    #[arg(long, default_value_t = 3)]
    duration: u64,
    /// Seconds per fixed-rate (1,000 req/s) latency measurement.
    #[arg(long, default_value_t = 10)]
    latency_duration: u64,
    /// Idle proxied connections held for the memory measurement (both tunnel ends are in one
    /// process, so each costs it two descriptors: mind the open-file limit).
    #[arg(long, default_value_t = 4000)]
    idle_connections: usize,
    /// Measure only these groups (comma-separated: latency, connections, throughput, memory,
    /// or passthrough: the passthrough half of throughput); rows of the others show "–". For
    /// quick before/after checks of one optimisation.
    #[arg(long, value_delimiter = ',', value_parser = ["latency", "connections", "throughput", "passthrough", "memory"])]
    only: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    mesh_tests::bench::run(mesh_tests::bench::Options {
        out: args.out,
        runs: args.runs,
        duration: Duration::from_secs(args.duration),
        latency_duration: Duration::from_secs(args.latency_duration),
        idle_connections: args.idle_connections,
        only: args.only,
    })
}
