//! `orca-bench SCENARIO`: runs a benchmark scenario against real parts and
//! prints `metric: NAME VALUE UNIT` lines. Build with `--release`.

use std::time::Duration;

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
    /// `orca run` → Running, against `ctr run -d` → task running (image present);
    /// with --pods, that many pods at once spread over --hosts hosts.
    PodStart {
        /// Samples of each side.
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// Create this many pods at once (the fleet scenario) instead.
        #[arg(long)]
        pods: Option<usize>,
        /// Hosts for the fleet scenario.
        #[arg(long, default_value_t = 10)]
        hosts: usize,
    },
    /// The control plane's CPU with N nodes heartbeating over mutual TLS.
    Heartbeats {
        /// Simulated nodes, each with its own certificate and TLS connection.
        #[arg(long, default_value_t = 10_000)]
        nodes: usize,
        /// Heartbeat interval, ms.
        #[arg(long, default_value_t = 10_000)]
        interval_ms: u64,
        /// Measurement window, s.
        #[arg(long, default_value_t = 30)]
        window_s: u64,
    },
    /// `orca logs` throughput against `cat` of the CRI file, and `orca logs -f` latency.
    Logs {
        /// Size of the container's log, MB of output.
        #[arg(long, default_value_t = 200)]
        megabytes: usize,
        /// Reads of each side.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Follow-latency samples.
        #[arg(long, default_value_t = 200)]
        samples: usize,
    },
    /// `orca exec` against `ctr task exec`, and one byte through `orca exec -i -- cat`.
    Exec {
        /// Execs of each side.
        #[arg(long, default_value_t = 30)]
        runs: usize,
        /// Byte round trips.
        #[arg(long, default_value_t = 500)]
        samples: usize,
    },
    /// Time to notice a dead host (in heartbeat intervals) and run its pod elsewhere.
    Recovery {
        /// Rounds.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Heartbeat interval, ms.
        #[arg(long, default_value_t = 500)]
        interval_ms: u64,
    },
    /// A spot interruption notice in a host's metadata → the pod Running on
    /// another host (image present).
    SpotNotice {
        /// Rounds.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// The agents' IMDS poll interval, ms (the agent's default, AWS's advice).
        #[arg(long, default_value_t = 5_000)]
        poll_ms: u64,
    },
    /// A Service's virtual IP against the pod behind it (req/s side by side),
    /// and readiness change → load balancer updated.
    Service {
        /// Client threads.
        #[arg(long, default_value_t = 8)]
        clients: usize,
        /// Seconds per load window.
        #[arg(long, default_value_t = 3)]
        window_s: u64,
        /// Windows of each (alternating).
        #[arg(long, default_value_t = 5)]
        windows: usize,
        /// Readiness flips timed.
        #[arg(long, default_value_t = 20)]
        flips: usize,
    },
    /// The EC2 provider's own time per launch: pod recorded → RunInstances sent (moto).
    Ec2Launch {
        /// Pods created at once.
        #[arg(long, default_value_t = 100)]
        pods: usize,
    },
    /// The agent's cost of one GPU sample (fake source, 8 devices) and its
    /// size in a heartbeat.
    GpuSample {
        /// Timed samples.
        #[arg(long, default_value_t = 2000)]
        iterations: usize,
    },
    /// Pods launch on EC2 (moto) while the control plane is SIGKILLed and
    /// restarted; leaked and duplicate instances, summed over runs.
    Ec2Crash {
        /// Runs.
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// Pods per run.
        #[arg(long, default_value_t = 100)]
        pods: usize,
        /// Kills per run, at random moments.
        #[arg(long, default_value_t = 3)]
        kills: usize,
    },
}

fn main() {
    match Cli::parse().scenario {
        Scenario::PodStart {
            pods: Some(pods),
            hosts,
            ..
        } => orca_tests::bench::fleet::fleet(pods, hosts),
        Scenario::PodStart { runs, .. } => orca_tests::bench::pod_start::run(runs),
        Scenario::Heartbeats {
            nodes,
            interval_ms,
            window_s,
        } => orca_tests::bench::heartbeats::run(
            nodes,
            Duration::from_millis(interval_ms),
            Duration::from_secs(window_s),
        ),
        Scenario::Logs {
            megabytes,
            runs,
            samples,
        } => orca_tests::bench::logs::run(megabytes, runs, samples),
        Scenario::Exec { runs, samples } => orca_tests::bench::exec::run(runs, samples),
        Scenario::Ec2Launch { pods } => orca_tests::bench::ec2::launch(pods),
        Scenario::Ec2Crash { runs, pods, kills } => {
            orca_tests::bench::ec2::crash(pods, runs, kills)
        }
        Scenario::GpuSample { iterations } => orca_tests::bench::gpu::run(iterations),
        Scenario::SpotNotice { runs, poll_ms } => {
            orca_tests::bench::spot_notice::run(runs, Duration::from_millis(poll_ms))
        }
        Scenario::Service {
            clients,
            window_s,
            windows,
            flips,
        } => {
            orca_tests::bench::service::run(clients, Duration::from_secs(window_s), windows, flips)
        }
        Scenario::Recovery { runs, interval_ms } => {
            orca_tests::bench::recovery::run(runs, Duration::from_millis(interval_ms))
        }
    }
}
