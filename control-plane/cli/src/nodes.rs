//! `orca node add|list|get|cordon|uncordon|drain|fault|token|remove` and `orca down`.

use std::io::Write;
use std::time::{Duration, Instant};

use orca_proto::controlplane::v1::{self as pb, NodeState};
use orca_proto::types::v1::Resources;

use super::{Admin, CliError, FORMATS, POLL, output};

/// Node commands.
#[derive(Debug, clap::Subcommand)]
pub enum NodeCommand {
    /// Launch a node (a simulated host with the local provider) and wait until it is Ready.
    Add(AddArgs),
    /// List nodes.
    List {
        /// Output format: table, wide, json or yaml.
        #[arg(long, short = 'o', default_value = "table", value_parser = FORMATS)]
        output: String,
    },
    /// Show one node.
    Get {
        /// Node name.
        name: String,
        /// Output format: table, wide, json or yaml.
        #[arg(long, short = 'o', default_value = "wide", value_parser = FORMATS)]
        output: String,
    },
    /// Stop placing pods on a node.
    Cordon {
        /// Node name.
        name: String,
    },
    /// Place pods on a node again.
    Uncordon {
        /// Node name.
        name: String,
    },
    /// Cordon a node and move its pods to other nodes.
    Drain {
        /// Node name.
        name: String,
        /// Seconds each pod gets between SIGTERM and SIGKILL (default: its own).
        #[arg(long)]
        grace_period: Option<i64>,
    },
    /// Inject a failure into a simulated host (exactly one of the flags).
    Fault(FaultArgs),
    /// Print a new join token for a node that has not joined (an external one).
    Token {
        /// Node name.
        name: String,
    },
    /// Stop a node's pods, terminate it and forget it.
    Remove {
        /// Node name.
        name: String,
    },
}

/// `orca node add`.
#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// Node name; generated when left out.
    pub name: Option<String>,
    /// CPUs of the host, e.g. 4 or 3500m (default: the provider's).
    #[arg(long)]
    pub cpu: Option<String>,
    /// Memory of the host, e.g. 16Gi (default: the provider's).
    #[arg(long)]
    pub memory: Option<String>,
    /// GPUs of the host (capacity for scheduling).
    #[arg(long, default_value_t = 0)]
    pub gpus: u32,
    /// Most pods on the host.
    #[arg(long)]
    pub max_pods: Option<u32>,
    /// Label KEY=VALUE; repeatable.
    #[arg(long = "label", short = 'l')]
    pub labels: Vec<String>,
    /// Taint KEY[=VALUE]:EFFECT; repeatable.
    #[arg(long = "taint")]
    pub taints: Vec<String>,
    /// Register the node only; print the join token to start its agent yourself.
    #[arg(long)]
    pub external: bool,
    /// Return at once instead of waiting for Ready.
    #[arg(long)]
    pub no_wait: bool,
    /// Give up waiting after this many seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
}

/// `orca node fault`.
#[derive(Debug, clap::Args)]
#[command(group(
    clap::ArgGroup::new("fault")
        .required(true)
        .args(["kill_agent", "partition", "heal", "spot_notice"])
))]
pub struct FaultArgs {
    /// Node name.
    pub name: String,
    /// Kill the host's agent (its containers keep running).
    #[arg(long)]
    pub kill_agent: bool,
    /// Cut the host's network (the provider cannot fence it meanwhile).
    #[arg(long)]
    pub partition: bool,
    /// Restore the host's network.
    #[arg(long)]
    pub heal: bool,
    /// Announce a spot interruption in the host's instance metadata; the
    /// instance is reclaimed when it comes (after --for, default 2m).
    #[arg(long)]
    pub spot_notice: bool,
    /// With --partition: heal after this long; with --spot-notice: the time to
    /// the interruption (e.g. 30s, 2m, 500ms).
    #[arg(long = "for")]
    pub duration: Option<String>,
}

/// Parses `500ms`, `30s`, `5m`, `2h`.
pub fn parse_duration(text: &str) -> Result<Duration, CliError> {
    orca_model::duration::parse(text).map_err(|e| CliError::Usage(e.to_string()))
}

fn quantity(flag: &str, text: Option<&str>, millis: bool) -> Result<i64, CliError> {
    match text {
        None => Ok(0),
        Some(t) => orca_model::quantity::parse(t, millis)
            .map(|v| v as i64)
            .ok_or_else(|| CliError::Usage(format!("--{flag} {t:?} is not a quantity"))),
    }
}

/// Parses `KEY[=VALUE]:EFFECT`.
pub fn parse_taint(text: &str) -> Result<pb::Taint, CliError> {
    let (kv, effect) = text
        .rsplit_once(':')
        .ok_or_else(|| CliError::Usage(format!("--taint {text:?} is not KEY[=VALUE]:EFFECT")))?;
    let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
    Ok(pb::Taint {
        key: key.into(),
        value: value.into(),
        effect: effect.into(),
    })
}

fn add_request(args: &AddArgs) -> Result<pb::AddNodeRequest, CliError> {
    let labels = args
        .labels
        .iter()
        .map(|l| super::pod::key_value("--label", l))
        .collect::<Result<_, _>>()?;
    Ok(pb::AddNodeRequest {
        name: args.name.clone().unwrap_or_default(),
        size: Some(Resources {
            cpu_millis: quantity("cpu", args.cpu.as_deref(), true)?,
            memory_bytes: quantity("memory", args.memory.as_deref(), false)?,
            gpus: args.gpus as i32,
            pods: args.max_pods.unwrap_or(0) as i32,
        }),
        labels,
        taints: args
            .taints
            .iter()
            .map(|t| parse_taint(t))
            .collect::<Result<_, _>>()?,
        external: args.external,
    })
}

/// Runs a node command.
pub async fn run(
    client: &mut Admin,
    cmd: NodeCommand,
    out: &mut impl Write,
) -> Result<i32, CliError> {
    match cmd {
        NodeCommand::Add(args) => {
            let node = client.add_node(add_request(&args)?).await?.into_inner();
            if args.external {
                writeln!(out, "node/{} registered", node.name)?;
                return print_token(client, &node.name, out).await.map(|()| 0);
            }
            let node = if args.no_wait {
                node
            } else {
                wait_ready(client, &node.name, args.timeout).await?
            };
            writeln!(out, "node/{} {}", node.name, output::node_state(&node))?;
        }
        NodeCommand::List { output: format } => get(client, None, &format, out).await?,
        NodeCommand::Get {
            name,
            output: format,
        } => get(client, Some(name), &format, out).await?,
        NodeCommand::Cordon { name } => cordon(client, name, true, out).await?,
        NodeCommand::Uncordon { name } => cordon(client, name, false, out).await?,
        NodeCommand::Drain { name, grace_period } => {
            let node = client
                .drain_node(pb::DrainNodeRequest {
                    name: name.clone(),
                    grace_period_seconds: grace_period.unwrap_or(-1),
                })
                .await?
                .into_inner();
            writeln!(out, "node/{name} drained ({} pods left)", node.pod_count)?;
        }
        NodeCommand::Fault(args) => {
            let fault = if args.kill_agent {
                pb::Fault::KillAgent
            } else if args.partition {
                pb::Fault::Partition
            } else if args.spot_notice {
                pb::Fault::SpotNotice
            } else {
                pb::Fault::Heal
            };
            if args.duration.is_some() && !(args.partition || args.spot_notice) {
                return Err(CliError::Usage(
                    "--for goes with --partition or --spot-notice".into(),
                ));
            }
            let duration_ms = match &args.duration {
                Some(d) => parse_duration(d)?.as_millis() as i64,
                None => 0,
            };
            client
                .inject_fault(pb::InjectFaultRequest {
                    name: args.name.clone(),
                    fault: fault as i32,
                    duration_ms,
                })
                .await?;
            writeln!(out, "node/{} fault {}", args.name, fault.as_str_name())?;
        }
        NodeCommand::Token { name } => print_token(client, &name, out).await?,
        NodeCommand::Remove { name } => {
            client
                .remove_node(pb::RemoveNodeRequest { name: name.clone() })
                .await?;
            writeln!(out, "node/{name} removed")?;
        }
    }
    Ok(0)
}

async fn cordon(
    client: &mut Admin,
    name: String,
    unschedulable: bool,
    out: &mut impl Write,
) -> Result<(), CliError> {
    client
        .cordon_node(pb::CordonNodeRequest {
            name: name.clone(),
            unschedulable,
        })
        .await?;
    let word = if unschedulable {
        "cordoned"
    } else {
        "uncordoned"
    };
    writeln!(out, "node/{name} {word}")?;
    Ok(())
}

async fn print_token(client: &mut Admin, name: &str, out: &mut impl Write) -> Result<(), CliError> {
    let t = client
        .create_join_token(pb::CreateJoinTokenRequest {
            node_name: name.into(),
        })
        .await?
        .into_inner();
    writeln!(out, "# save the CA as ca.pem, then on the host:")?;
    writeln!(
        out,
        "ORCA_AGENT_JOIN_TOKEN={} orca-agent --control-plane {} --node-name {name} --ca-file ca.pem",
        t.token, t.control_plane_url
    )?;
    writeln!(
        out,
        "# the token is single use and expires at {} (Unix time)",
        t.expires_at
    )?;
    write!(out, "{}", t.ca_cert_pem)?;
    Ok(())
}

/// Prints nodes (all, or one) in `format`.
pub async fn get(
    client: &mut Admin,
    name: Option<String>,
    format: &str,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let one = name.is_some();
    let nodes = match name {
        Some(name) => vec![
            client
                .get_node(pb::GetNodeRequest { name })
                .await?
                .into_inner(),
        ],
        None => {
            client
                .list_nodes(pb::ListNodesRequest {})
                .await?
                .into_inner()
                .nodes
        }
    };
    match format {
        "json" | "yaml" => output::structured(
            out,
            nodes.iter().map(output::node_value).collect(),
            one,
            format,
        )?,
        other => output::nodes(out, &nodes, other == "wide")?,
    }
    Ok(())
}

/// Removes every node.
pub async fn down(client: &mut Admin, out: &mut impl Write) -> Result<(), CliError> {
    let nodes = client
        .list_nodes(pb::ListNodesRequest {})
        .await?
        .into_inner()
        .nodes;
    for node in nodes {
        client
            .remove_node(pb::RemoveNodeRequest {
                name: node.name.clone(),
            })
            .await?;
        writeln!(out, "node/{} removed", node.name)?;
    }
    Ok(())
}

/// Waits for a node to be Ready, showing its progress on stderr.
async fn wait_ready(client: &mut Admin, name: &str, timeout: u64) -> Result<pb::Node, CliError> {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(timeout);
    let mut shown = None;
    loop {
        let node = client
            .get_node(pb::GetNodeRequest { name: name.into() })
            .await?
            .into_inner();
        let state = NodeState::try_from(node.state).unwrap_or(NodeState::Unspecified);
        if shown != Some(state) {
            eprintln!(
                "node/{name}: {} after {:.1}s{}",
                output::node_state(&node),
                start.elapsed().as_secs_f64(),
                if node.message.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", node.message)
                }
            );
            shown = Some(state);
        }
        match state {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_taints_parse() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("x5s").is_err());
        let t = parse_taint("gpu=a100:NoSchedule").unwrap();
        assert_eq!(
            (t.key.as_str(), t.value.as_str(), t.effect.as_str()),
            ("gpu", "a100", "NoSchedule")
        );
        let t = parse_taint("dedicated:NoExecute").unwrap();
        assert_eq!((t.key.as_str(), t.value.as_str()), ("dedicated", ""));
        assert!(parse_taint("nocolon").is_err());
    }
}
