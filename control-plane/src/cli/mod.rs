//! The `orca` command line: a client of AdminService only.
//!
//! - [`pod`]: builds a Kubernetes pod from `orca run` flags or reads one from YAML.
//! - [`output`]: tables and ages, as kubectl prints them.

pub mod output;
pub mod pod;

use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use orca_proto::agent::v1 as agent;
use orca_proto::controlplane::v1::{
    self as pb, NodeState, admin_service_client::AdminServiceClient,
};
use orca_proto::types::v1::PodPhase;
use tonic::transport::Channel;

/// Default control plane address.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7443";

/// Errors of the CLI (it is a binary edge, but its logic lives here to be tested).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The control plane could not be reached.
    #[error("cannot reach the control plane at {server}: {source}")]
    Connect {
        /// Address.
        server: String,
        /// Cause.
        source: tonic::transport::Error,
    },
    /// The control plane refused or failed a call.
    #[error("{}", .0.message())]
    Call(#[from] tonic::Status),
    /// Bad input.
    #[error("{0}")]
    Usage(String),
    /// Waiting ran out of time.
    #[error("timed out after {0:?}: {1}")]
    Timeout(Duration, String),
    /// Output failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// `orca`: run pods on ORCA.
#[derive(Debug, Parser)]
#[command(name = "orca", version, about)]
pub struct Cli {
    /// Control plane address.
    #[arg(long, global = true, env = "ORCA_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,
    /// Namespace.
    #[arg(long, short = 'n', global = true, default_value = "default")]
    pub namespace: String,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage nodes.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Run a pod with one container.
    Run(pod::RunArgs),
    /// Create a pod from a Kubernetes Pod manifest (YAML or JSON).
    Apply {
        /// The manifest file.
        #[arg(long, short = 'f')]
        file: PathBuf,
    },
    /// List pods or nodes.
    Get {
        /// `pods`, `pod NAME`, or `nodes`.
        #[arg(value_parser = ["pods", "pod", "po", "nodes", "node", "no"])]
        kind: String,
        /// A name, for one object.
        name: Option<String>,
        /// Output format: table (default), wide, json.
        #[arg(long, short = 'o', default_value = "table")]
        output: String,
    },
    /// Print a container's log.
    Logs {
        /// Pod name.
        pod: String,
        /// Container; may be left out when the pod has one.
        #[arg(long, short = 'c', default_value = "")]
        container: String,
        /// Only the last N lines.
        #[arg(long)]
        tail: Option<i64>,
        /// Prefix lines with their timestamps.
        #[arg(long)]
        timestamps: bool,
        /// The previous run of a restarted container.
        #[arg(long, short = 'p')]
        previous: bool,
    },
    /// Stop a pod's containers and delete it.
    Delete {
        /// `pod`.
        #[arg(value_parser = ["pod", "po"])]
        kind: String,
        /// Pod name.
        name: String,
        /// Seconds between SIGTERM and SIGKILL (default: the pod's own).
        #[arg(long)]
        grace_period: Option<i64>,
    },
    /// Wait until a pod reaches a phase.
    Wait {
        /// Pod name.
        pod: String,
        /// Phase to wait for: Running, Succeeded, Failed, or Done (Succeeded or Failed).
        #[arg(long = "for", default_value = "Running")]
        phase: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
    /// Show events, of one pod or all.
    Events {
        /// Pod or node name.
        name: Option<String>,
    },
}

/// Node commands.
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Launch a node (a simulated host with the local provider) and wait until it is Ready.
    Add {
        /// Node name; generated when left out.
        name: Option<String>,
        /// Return at once instead of waiting for Ready.
        #[arg(long)]
        no_wait: bool,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// List nodes.
    List,
    /// Stop a node's pods, terminate it and forget it.
    Remove {
        /// Node name.
        name: String,
    },
}

/// Polls every this long while waiting.
const POLL: Duration = Duration::from_millis(10);

/// Runs a parsed command line; returns the process exit code.
pub async fn run(cli: Cli) -> Result<i32, CliError> {
    let channel = tonic::transport::Endpoint::from_shared(cli.server.clone())
        .map_err(|e| CliError::Usage(format!("--server {}: {e}", cli.server)))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|source| CliError::Connect {
            server: cli.server.clone(),
            source,
        })?;
    let mut client = AdminServiceClient::new(channel);
    let ns = cli.namespace;
    let mut out = std::io::stdout().lock();
    match cli.command {
        Command::Node(NodeCommand::Add {
            name,
            no_wait,
            timeout,
        }) => {
            let node = client
                .add_node(pb::AddNodeRequest {
                    name: name.unwrap_or_default(),
                })
                .await?
                .into_inner();
            let node = if no_wait {
                node
            } else {
                wait_node_ready(&mut client, &node.name, timeout).await?
            };
            writeln!(out, "node/{} {}", node.name, output::node_state(&node))?;
        }
        Command::Node(NodeCommand::List) => {
            let nodes = client
                .list_nodes(pb::ListNodesRequest {})
                .await?
                .into_inner()
                .nodes;
            output::nodes(&mut out, &nodes)?;
        }
        Command::Node(NodeCommand::Remove { name }) => {
            client
                .remove_node(pb::RemoveNodeRequest { name: name.clone() })
                .await?;
            writeln!(out, "node/{name} removed")?;
        }
        Command::Run(args) => {
            let pod = pod::from_run_args(&ns, &args)?;
            create_pod(&mut client, pod, &mut out).await?;
        }
        Command::Apply { file } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| CliError::Usage(format!("{}: {e}", file.display())))?;
            create_pod(&mut client, pod::from_manifest(&ns, &text)?, &mut out).await?;
        }
        Command::Get {
            kind,
            name,
            output: format,
        } => {
            if is_nodes(&kind) {
                let mut nodes = client
                    .list_nodes(pb::ListNodesRequest {})
                    .await?
                    .into_inner()
                    .nodes;
                nodes.retain(|n| name.as_ref().is_none_or(|want| &n.name == want));
                output::nodes(&mut out, &nodes)?;
            } else {
                let pods = match name {
                    Some(name) => vec![
                        client
                            .get_pod(pb::GetPodRequest {
                                namespace: ns,
                                name,
                            })
                            .await?
                            .into_inner(),
                    ],
                    None => {
                        client
                            .list_pods(pb::ListPodsRequest { namespace: ns })
                            .await?
                            .into_inner()
                            .pods
                    }
                };
                match format.as_str() {
                    "json" => output::pods_json(&mut out, &pods)?,
                    "wide" => output::pods(&mut out, &pods, true)?,
                    "table" => output::pods(&mut out, &pods, false)?,
                    other => {
                        return Err(CliError::Usage(format!(
                            "-o {other}: use table, wide or json"
                        )));
                    }
                }
            }
        }
        Command::Logs {
            pod,
            container,
            tail,
            timestamps,
            previous,
        } => {
            let options = agent::LogsRequest {
                container,
                tail_lines: tail.unwrap_or(-1),
                timestamps,
                previous,
                ..Default::default()
            };
            let req = pb::LogsRequest {
                namespace: ns,
                name: pod,
                options: Some(options),
            };
            let mut stream = client.logs(req).await?.into_inner();
            while let Some(chunk) = stream.message().await? {
                out.write_all(&chunk.data)?;
            }
            out.flush()?;
        }
        Command::Delete {
            kind: _,
            name,
            grace_period,
        } => {
            let req = pb::DeletePodRequest {
                namespace: ns,
                name: name.clone(),
                grace_period_seconds: grace_period.unwrap_or(-1),
            };
            let deleted = client.delete_pod(req).await?.into_inner();
            let status = deleted
                .pod
                .as_ref()
                .map(output::pod_status)
                .unwrap_or_default();
            writeln!(out, "pod/{name} deleted ({status})")?;
        }
        Command::Wait {
            pod,
            phase,
            timeout,
        } => {
            let record = wait_pod(&mut client, &ns, &pod, &phase, timeout).await?;
            writeln!(out, "pod/{pod} {}", output::pod_status(&record))?;
        }
        Command::Events { name } => {
            let req = pb::ListEventsRequest {
                namespace: String::new(),
                name: name.unwrap_or_default(),
            };
            let events = client.list_events(req).await?.into_inner().events;
            output::events(&mut out, &events)?;
        }
    }
    Ok(0)
}

async fn create_pod(
    client: &mut AdminServiceClient<Channel>,
    pod: orca_proto::types::v1::Pod,
    out: &mut impl std::io::Write,
) -> Result<(), CliError> {
    let record = client
        .run_pod(pb::RunPodRequest { pod: Some(pod) })
        .await?
        .into_inner();
    let (_, name) = crate::pods::names(&record);
    writeln!(out, "pod/{name} created")?;
    Ok(())
}

fn is_nodes(kind: &str) -> bool {
    matches!(kind, "nodes" | "node" | "no")
}

async fn wait_node_ready(
    client: &mut AdminServiceClient<Channel>,
    name: &str,
    timeout: u64,
) -> Result<pb::Node, CliError> {
    let deadline = Instant::now() + Duration::from_secs(timeout);
    loop {
        let node = client
            .get_node(pb::GetNodeRequest { name: name.into() })
            .await?
            .into_inner();
        match NodeState::try_from(node.state).unwrap_or(NodeState::Unspecified) {
            NodeState::Ready => return Ok(node),
            NodeState::Failed => {
                return Err(CliError::Usage(format!(
                    "node {name} failed: {}",
                    node.message
                )));
            }
            _ => {}
        }
        if Instant::now() > deadline {
            return Err(CliError::Timeout(
                Duration::from_secs(timeout),
                format!("node {name} is {}", output::node_state(&node)),
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until the pod reaches `phase` (`Done`: Succeeded or Failed). Fails at
/// once when the pod ends in another terminal phase.
pub async fn wait_pod(
    client: &mut AdminServiceClient<Channel>,
    namespace: &str,
    name: &str,
    phase: &str,
    timeout: u64,
) -> Result<pb::PodRecord, CliError> {
    let want: &[PodPhase] = match phase.to_ascii_lowercase().as_str() {
        "running" => &[PodPhase::Running],
        "succeeded" | "completed" => &[PodPhase::Succeeded],
        "failed" => &[PodPhase::Failed],
        "done" => &[PodPhase::Succeeded, PodPhase::Failed],
        other => {
            return Err(CliError::Usage(format!(
                "--for {other}: use Running, Succeeded, Failed or Done"
            )));
        }
    };
    let deadline = Instant::now() + Duration::from_secs(timeout);
    loop {
        let record = client
            .get_pod(pb::GetPodRequest {
                namespace: namespace.into(),
                name: name.into(),
            })
            .await?
            .into_inner();
        let now = crate::pods::phase(&record);
        if want.contains(&now) {
            return Ok(record);
        }
        if matches!(now, PodPhase::Succeeded | PodPhase::Failed) {
            return Err(CliError::Usage(format!(
                "pod {name} ended {}",
                output::pod_status(&record)
            )));
        }
        if Instant::now() > deadline {
            return Err(CliError::Timeout(
                Duration::from_secs(timeout),
                format!("pod {name} is {}", output::pod_status(&record)),
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}
