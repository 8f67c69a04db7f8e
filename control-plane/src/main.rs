//! `orca-control-plane`: parse flags, load config (flags replace the file's
//! fields), set up logging, bind, serve until SIGINT/SIGTERM.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;

/// The ORCA control plane daemon.
#[derive(Debug, Parser)]
#[command(name = "orca-control-plane", version, about)]
struct Flags {
    /// Config file (YAML).
    #[arg(long, short, env = "ORCA_CONFIG")]
    config: PathBuf,
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
    let config = orca_control_plane::config::Config::load_with(&flags.config, &overrides)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    orca_control_plane::serve(listener, config, orca_proto::process::shutdown_signal()).await?;
    Ok(())
}
