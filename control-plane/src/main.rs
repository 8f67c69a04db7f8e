//! `orca-control-plane`: parse flags, load config (flags replace the file's
//! fields), set up logging, bind, serve until SIGINT/SIGTERM. Or, with the
//! `restore` subcommand, restore a backup into a data directory and exit.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

/// The ORCA control plane daemon.
#[derive(Debug, Parser)]
#[command(
    name = "orca-control-plane",
    version,
    about,
    subcommand_negates_reqs = true
)]
struct Flags {
    /// Config file (YAML).
    #[arg(long, short, env = "ORCA_CONFIG", required = true)]
    config: Option<PathBuf>,
    /// Replaces the file's `listen`.
    #[arg(long)]
    listen: Option<String>,
    /// Replaces the file's `data_dir`.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Replaces the file's `advertise_url`.
    #[arg(long)]
    advertise_url: Option<String>,
    /// Replaces the file's `kubernetes.kubelet.address` (in a Deployment, the
    /// pod's IP from the downward API).
    #[arg(long, env = "ORCA_KUBELET_ADDRESS")]
    kubelet_address: Option<String>,
    /// Instead of serving.
    #[command(subcommand)]
    command: Option<Command>,
}

/// What to do instead of serving.
#[derive(Debug, Subcommand)]
enum Command {
    /// Restore a backup written by `orca backup` into a data directory, with the
    /// control plane stopped: verifies the archive (manifest, checksums), then
    /// writes the store, the CA and the admin credentials beside or inside the
    /// directory and moves them into place.
    Restore(RestoreFlags),
}

/// `restore`'s flags.
#[derive(Debug, Args)]
struct RestoreFlags {
    /// The backup archive (`-`: standard input).
    #[arg(long, value_name = "FILE")]
    from: PathBuf,
    /// The data directory to restore into (default: the config file's `data_dir`).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Config file whose `data_dir` to restore into, when --data-dir is not given.
    #[arg(long, short, env = "ORCA_CONFIG")]
    config: Option<PathBuf>,
    /// Replace the contents of a non-empty data directory.
    #[arg(long)]
    force: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    orca_proto::process::init_tracing();
    let flags = Flags::parse();
    let overrides = orca_control_plane::config::Overrides {
        listen: flags.listen,
        data_dir: flags.data_dir,
        advertise_url: flags.advertise_url,
        kubelet_address: flags.kubelet_address,
    };
    if let Some(Command::Restore(restore)) = flags.command {
        return run_restore(restore, flags.config, overrides);
    }
    let config_path = flags
        .config
        .context("--config is required (or ORCA_CONFIG)")?;
    let config = orca_control_plane::config::Config::load_with(&config_path, &overrides)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    orca_control_plane::serve(listener, config, orca_proto::process::shutdown_signal()).await?;
    Ok(())
}

/// `restore`: the data directory is `--data-dir` (after `restore` or before
/// it), else the config file's `data_dir`.
fn run_restore(
    flags: RestoreFlags,
    config: Option<PathBuf>,
    mut overrides: orca_control_plane::config::Overrides,
) -> anyhow::Result<()> {
    use orca_control_plane::backup::restore;
    if flags.data_dir.is_some() {
        overrides.data_dir = flags.data_dir;
    }
    let data_dir = match (flags.config.or(config), overrides.data_dir.clone()) {
        (Some(path), _) => {
            orca_control_plane::config::Config::load_with(&path, &overrides)?.data_dir
        }
        (None, Some(dir)) => dir,
        (None, None) => anyhow::bail!(
            "restore needs --data-dir DIR, or --config FILE (or ORCA_CONFIG) whose data_dir to restore into"
        ),
    };
    let backup = restore::read_file(&flags.from)?;
    restore::restore(&backup, &data_dir, flags.force)?;
    let manifest = &backup.manifest;
    println!(
        "restored the backup of {} (orca {}) into {}: {}",
        manifest.created_at,
        manifest.orca_version,
        display(&data_dir),
        manifest.summary()
    );
    Ok(())
}

fn display(path: &Path) -> String {
    std::path::absolute(path)
        .unwrap_or_else(|_| path.to_owned())
        .display()
        .to_string()
}
