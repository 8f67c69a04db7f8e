//! `orca-agent`: parse flags (filling the rest from IMDS user data when asked),
//! set up logging, bind, serve until SIGINT/SIGTERM.

use anyhow::Context as _;
use clap::Parser as _;
use orca_agent::config::Flags;

/// jemalloc, whose background threads give freed memory back to the system.
/// With glibc's allocator the agent's memory never went down after a pod ended:
/// 33.6 MB idle, 48.7 MB after a 64-container pod was removed, 61.9 MB after the
/// third such pod; with jemalloc 39.1 MB idle, 41.7 MB after the first and
/// 42.4 MB after the third (debug builds, `agent_lifecycle` measures it).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
