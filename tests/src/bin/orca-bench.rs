//! `orca-bench SCENARIO`: runs a benchmark scenario against real parts and
//! prints `metric: NAME VALUE UNIT` lines. Build with `--release`.

use clap::{Parser, Subcommand};

/// ORCA's benchmark harness.
#[derive(Debug, Parser)]
#[command(name = "orca-bench", about)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// `orca run` → Running, against `ctr run -d` → task running (image present).
    PodStart {
        /// Samples of each side.
        #[arg(long, default_value_t = 20)]
        runs: usize,
    },
}

fn main() {
    match Cli::parse().scenario {
        Scenario::PodStart { runs } => orca_tests::bench::pod_start::run(runs),
    }
}
