//! `check-recordings`: after a full test run, compares the Kubernetes requests
//! and EC2 calls the control plane made (recorded by the tests) exactly with
//! `deploy/kubernetes/rbac.yaml`'s ClusterRole and
//! `deploy/kubernetes/iam-policy.json` (see `orca_tests::recordings`).
//!
//! Exit status: 0 when both are equal, 1 when they differ (the report says how),
//! 2 when the recordings or manifests cannot be read.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use orca_tests::recordings;

/// Compares the recorded requests and calls with the RBAC rules and IAM policy.
#[derive(Debug, Parser)]
#[command(name = "check-recordings", about)]
struct Flags {
    /// The recordings directory (default: $ORCA_RECORDINGS_DIR, else target/orca-recordings).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The manifest holding the ClusterRole.
    #[arg(long)]
    rbac: Option<PathBuf>,
    /// The IAM policy.
    #[arg(long)]
    policy: Option<PathBuf>,
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("check-recordings: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run() -> anyhow::Result<bool> {
    let flags = Flags::parse();
    let deploy = orca_tests::env::repo_root().join("deploy/kubernetes");
    let dir = flags.dir.unwrap_or_else(recordings::dir);
    let rbac = flags.rbac.unwrap_or_else(|| deploy.join("rbac.yaml"));
    let policy = flags
        .policy
        .unwrap_or_else(|| deploy.join("iam-policy.json"));
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
    };
    let report = recordings::check(&dir, &read(&rbac)?, &read(&policy)?)
        .with_context(|| format!("checking the recordings in {}", dir.display()))?;
    print!("{report}");
    if report.is_exact() {
        println!(
            "check-recordings: {} and {} grant exactly what the tests used",
            rbac.display(),
            policy.display()
        );
    } else {
        println!("check-recordings: the rights granted and the rights used differ (above)");
    }
    Ok(report.is_exact())
}
