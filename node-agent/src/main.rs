//! `orca-agent`: parse flags (filling the rest from IMDS user data when asked),
//! set up logging, bind, serve until SIGINT/SIGTERM.

use anyhow::Context as _;
use clap::Parser as _;
use orca_agent::config::Flags;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    orca_proto::process::init_tracing();
    let mut flags = Flags::parse();
    let boot_ca = match flags.imds_endpoint.clone() {
        Some(endpoint) => Some(
            orca_agent::imds::boot(&mut flags, &endpoint, std::time::Duration::from_secs(10))
                .await
                .context("cannot read the boot data from the instance metadata service")?,
        ),
        None => None,
    };
    let mut config = flags.validate()?;
    if config.ca_pem.is_none() {
        config.ca_pem = boot_ca;
    }
    let listener = tokio::net::TcpListener::bind(config.flags.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.flags.listen))?;
    orca_agent::serve(listener, config, orca_proto::process::shutdown_signal()).await?;
    Ok(())
}
