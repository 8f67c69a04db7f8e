//! `orca-agent`: parse flags, set up logging, bind, serve until SIGINT/SIGTERM.

use anyhow::Context as _;
use clap::Parser as _;
use orca_agent::config::Flags;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    orca_proto::process::init_tracing();
    let config = Flags::parse().validate()?;
    let listener = tokio::net::TcpListener::bind(config.flags.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.flags.listen))?;
    orca_agent::serve(listener, config, orca_proto::process::shutdown_signal()).await?;
    Ok(())
}
