//! `orca-agent`: parse flags, set up logging, bind, serve until SIGINT/SIGTERM.

use anyhow::Context as _;
use clap::Parser as _;
use orca_agent::config::Flags;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,h2=warn,tower=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = Flags::parse().validate()?;
    let listener = tokio::net::TcpListener::bind(config.flags.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.flags.listen))?;
    orca_agent::serve(listener, config, shutdown_signal()).await?;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutdown signal received; draining");
}
