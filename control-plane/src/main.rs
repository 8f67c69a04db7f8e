//! `orca-control-plane`: parse flags, load config, set up logging, bind, serve
//! until SIGINT/SIGTERM.

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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    orca_proto::process::init_tracing();
    let flags = Flags::parse();
    let config = orca_control_plane::config::Config::load(&flags.config)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    orca_control_plane::serve(listener, config, orca_proto::process::shutdown_signal()).await?;
    Ok(())
}
