//! The `orca` command line: a client of AdminService only.
//!
//! - [`backup`]: `orca backup`; [`budgets`]: `orca budget list`.
//! - [`claims`]: PersistentVolumeClaims (`apply -f`, `get pvc`, `delete pvc`).
//! - [`credentials`]: the kubeconfig-like credentials file.
//! - [`ledger`]: `orca ledger` and the ledger section of `orca describe pod`.
//! - [`nodes`]: the `orca node` commands and `orca down`.
//! - [`pod`]: builds a Kubernetes pod from `orca run` flags or reads one from YAML.
//! - [`output`]: tables and ages, as kubectl prints them.
//! - [`top`]: `orca top nodes|pods`, GPU telemetry.
//! - [`streams`]: `orca logs`, `orca exec` and `orca attach`; [`terminal`]: raw
//!   mode and window size for `exec -t`.

pub mod auth;
pub mod backup;
pub mod budgets;
pub mod claims;
pub use orca_proto::credentials;
pub mod ledger;
pub mod nodes;
pub mod objects;
pub mod output;
pub mod pod;
pub mod rollout;
pub mod streams;
pub mod terminal;
pub mod top;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use orca_proto::controlplane::v1::{self as pb, admin_service_client::AdminServiceClient};
use orca_proto::types::v1::PodPhase;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Errors of the CLI (it is a binary edge, but its logic lives here to be tested).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The control plane could not be reached.
    #[error("cannot reach the control plane at {server}: {reason}")]
    Connect {
        /// Address.
        server: String,
        /// Why.
        reason: String,
    },
    /// No usable credentials.
    #[error("{0}")]
    Credentials(String),
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
    /// The backup the control plane sent does not verify.
    #[error("the control plane's backup does not verify: {0}")]
    Backup(orca_archive::ArchiveError),
}

impl CliError {
    /// The process exit code for this error (README lists them).
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Call(s) => match s.code() {
                tonic::Code::NotFound => 3,
                tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => 4,
                tonic::Code::InvalidArgument | tonic::Code::AlreadyExists => 2,
                tonic::Code::Unavailable => 5,
                _ => 1,
            },
            CliError::Usage(_) => 2,
            CliError::Credentials(_) => 4,
            CliError::Connect { .. } => 5,
            CliError::Timeout(..) => 6,
            CliError::Io(_) | CliError::Backup(_) => 1,
        }
    }
}

/// `orca`: run pods on ORCA.
#[derive(Debug, Parser)]
#[command(name = "orca", version, about)]
pub struct Cli {
    /// Credentials file (default: $XDG_CONFIG_HOME/orca/config or ~/.config/orca/config;
    /// the control plane writes one to <data_dir>/admin.yaml).
    #[arg(long, global = true, env = "ORCACONFIG")]
    pub config: Option<PathBuf>,
    /// Control plane URL, overriding the credentials file's `server`.
    #[arg(long, global = true, env = "ORCA_SERVER")]
    pub server: Option<String>,
    /// Namespace.
    #[arg(long, short = 'n', global = true, default_value = "default")]
    pub namespace: String,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Output formats of `get`.
const FORMATS: [&str; 4] = ["table", "wide", "json", "yaml"];

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage nodes.
    #[command(subcommand)]
    Node(nodes::NodeCommand),
    /// Run a pod with one container.
    Run(pod::RunArgs),
    /// Create (or update) pods, PersistentVolumeClaims, Namespaces,
    /// ResourceQuotas, LimitRanges, ConfigMaps and Secrets from a Kubernetes
    /// manifest (YAML, `---`-separated, or JSON).
    Apply {
        /// The manifest file.
        #[arg(long, short = 'f')]
        file: PathBuf,
    },
    /// List pods or nodes.
    Get {
        /// `pods`, `pod NAME`, `nodes`, `node NAME`, `pvc`, `namespaces`,
        /// `resourcequotas` (`quota`), `limitranges` (`limits`), `configmaps`
        /// (`cm`), `secrets`, `deployments` (`deploy`) or `replicasets` (`rs`).
        #[arg(value_parser = kind_word)]
        kind: String,
        /// A name, for one object.
        name: Option<String>,
        /// Output format: table, wide, json or yaml.
        #[arg(long, short = 'o', default_value = "table", value_parser = FORMATS)]
        output: String,
    },
    /// Show a pod (with its events), namespace, quota or limit range in detail.
    Describe {
        /// `pod`, or a kind `get` lists (but nodes and claims).
        #[arg(value_parser = kind_word)]
        kind: String,
        /// Its name.
        name: String,
    },
    /// Print a container's log (-f to follow it).
    Logs(streams::LogsArgs),
    /// Run a command in a container: `orca exec [-i] [-t] POD [-c CONTAINER] -- CMD...`.
    Exec {
        /// The pod, container and stdin/terminal flags.
        #[command(flatten)]
        session: streams::SessionArgs,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Attach to a container's main process: its output from now on, then its exit code.
    Attach(streams::SessionArgs),
    /// Stop a pod's containers and delete it, or delete a claim (`pvc`), a
    /// namespace (with its pods and objects), a quota or a limit range.
    Delete {
        /// `pod`, `pvc`, or a kind `get` lists (but nodes).
        #[arg(value_parser = kind_word)]
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
    /// Show GPU telemetry: per GPU of each node (`nodes`), or per pod (`pods`).
    Top {
        /// `nodes` or `pods`.
        #[arg(value_parser = ["nodes", "node", "no", "pods", "pod", "po"])]
        kind: String,
        /// Only this node (for `nodes`).
        name: Option<String>,
        /// Output format: table or json.
        #[arg(long, short = 'o', default_value = "table", value_parser = ["table", "json"])]
        output: String,
    },
    /// Show events, of one pod or node, or all.
    Events {
        /// Pod or node name.
        name: Option<String>,
    },
    /// The provenance ledger: where and on what each pod's incarnations ran
    /// (instance, type, zone, AMI, capacity type, price, GPUs, driver), the
    /// interruptions that moved them, and the cost so far.
    Ledger {
        /// Only this pod.
        name: Option<String>,
        /// Output format: table, json or yaml.
        #[arg(long, short = 'o', default_value = "table", value_parser = ["table", "json", "yaml"])]
        output: String,
    },
    /// Research budgets: `orca budget list` shows each one's amount, spend
    /// within its period, burn rate and what is left.
    Budget {
        /// `list`.
        #[arg(value_parser = ["list", "ls"])]
        action: String,
        /// Output format: table, json or yaml.
        #[arg(long, short = 'o', default_value = "table", value_parser = ["table", "json", "yaml"])]
        output: String,
    },
    /// Manage a Deployment's rollout: `status` waits for it to complete (or
    /// fail its progress deadline), `history` lists its revisions, `undo`
    /// goes back to the previous one (or `--to-revision`).
    Rollout {
        /// status, history or undo.
        #[arg(value_enum)]
        action: rollout::Action,
        /// deployment/NAME.
        target: String,
        /// For undo: the revision to go back to.
        #[arg(long)]
        to_revision: Option<i64>,
        /// For status: give up after this many seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
    /// Named tokens and RBAC questions: `orca auth token create NAME`,
    /// `orca auth can-i delete pods`.
    #[command(subcommand)]
    Auth(auth::AuthCommand),
    /// Set a Deployment's number of replicas.
    Scale {
        /// deployment/NAME.
        target: String,
        /// The number of replicas.
        #[arg(long)]
        replicas: u32,
    },
    /// Remove every node (its pods fail with reason NodeRemoved).
    Down,
    /// Write a backup of the control plane (its CA, admin credentials and
    /// store, taken at one instant while it runs) as a gzip'd tar; restore it
    /// with `orca-control-plane restore --from FILE --data-dir DIR`. It holds
    /// the CA's private key: keep it secret.
    Backup {
        /// Where to write it (`-`: standard output); written with mode 0600.
        file: PathBuf,
    },
    /// Copy a credentials file (e.g. the control plane's <data_dir>/admin.yaml)
    /// to where `orca` looks by default, readable by you only.
    Login {
        /// The credentials file to import.
        file: PathBuf,
    },
}

/// A kind word of `get`, `describe` and `delete`: pods, nodes, claims, or a
/// stored object's kind.
fn kind_word(word: &str) -> Result<String, String> {
    const OTHERS: [&str; 9] = [
        "pods",
        "pod",
        "po",
        "nodes",
        "node",
        "no",
        "pvc",
        "persistentvolumeclaims",
        "persistentvolumeclaim",
    ];
    if OTHERS.contains(&word) || orca_model::kind::Kind::parse(word).is_some() {
        Ok(word.to_owned())
    } else {
        Err(format!(
            "unknown kind {word:?}: pods, nodes, pvc, namespaces, resourcequotas, limitranges, configmaps, secrets, deployments, replicasets, services, roles, clusterroles, rolebindings, clusterrolebindings"
        ))
    }
}

/// Polls every this long while waiting.
const POLL: Duration = Duration::from_millis(10);

/// The AdminService client `orca` uses: TLS to the control plane, the admin token on every call.
pub type Admin = AdminServiceClient<InterceptedService<Channel, Bearer>>;

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

/// Connects to the control plane with the credentials `cli` points at.
pub async fn connect(config: Option<&Path>, server: Option<&str>) -> Result<Admin, CliError> {
    let path = match config {
        Some(p) => p.to_owned(),
        None => credentials::Credentials::default_path().ok_or_else(|| {
            CliError::Credentials("no credentials file: pass --config or set ORCACONFIG".into())
        })?,
    };
    let creds = credentials::Credentials::load(&path).map_err(|e| {
        CliError::Credentials(format!(
            "cannot read the credentials {e}\n(the control plane writes them to <data_dir>/admin.yaml; point --config or ORCACONFIG at it, or copy it to ~/.config/orca/config)"
        ))
    })?;
    let server = server.unwrap_or(&creds.server).to_owned();
    let tls = orca_proto::tls::client_config(&creds.certificate_authority_data, None)
        .map_err(|e| CliError::Credentials(format!("{}: {e}", path.display())))?;
    let channel = orca_proto::tls::connect(&server, None, tls, Duration::from_secs(5))
        .await
        .map_err(|e| CliError::Connect {
            server: server.clone(),
            reason: e.to_string(),
        })?;
    let token = format!("Bearer {}", creds.token).parse().map_err(|_| {
        CliError::Credentials(format!("{}: the token is not ASCII", path.display()))
    })?;
    Ok(AdminServiceClient::with_interceptor(channel, Bearer(token)))
}

/// Runs a parsed command line; returns the process exit code.
pub async fn run(cli: Cli) -> Result<i32, CliError> {
    if let Command::Login { file } = &cli.command {
        return login(file, cli.config.as_deref());
    }
    let mut client = connect(cli.config.as_deref(), cli.server.as_deref()).await?;
    let ns = cli.namespace;
    let mut out = std::io::stdout().lock();
    match cli.command {
        Command::Node(cmd) => return nodes::run(&mut client, cmd, &mut out).await,
        Command::Auth(cmd) => {
            return auth::run(&mut client, cmd, &ns, cli.config.as_deref(), &mut out).await;
        }
        Command::Run(args) => {
            let pod = pod::from_run_args(&ns, &args)?;
            create_pod(&mut client, pod, &mut out).await?;
        }
        Command::Apply { file } => {
            let text = objects::read_manifest(&file)?;
            for (text, doc) in objects::documents(&text)? {
                match doc["kind"].as_str().unwrap_or_default() {
                    "PersistentVolumeClaim" => {
                        let manifest_json = claims::from_manifest(&ns, &text)?;
                        let claim = client
                            .create_claim(pb::CreateClaimRequest { manifest_json })
                            .await?
                            .into_inner();
                        writeln!(out, "persistentvolumeclaim/{} created", claim.name)?;
                    }
                    "Pod" | "" => {
                        create_pod(&mut client, pod::from_manifest(&ns, &text)?, &mut out).await?
                    }
                    _ => objects::apply(&mut client, &ns, &doc, &mut out).await?,
                }
            }
        }
        Command::Get {
            kind,
            name,
            output: format,
        } => {
            if let Some(kind) = orca_model::kind::Kind::parse(&kind) {
                objects::get(&mut client, kind, &ns, name, &format, &mut out).await?;
            } else if is_nodes(&kind) {
                nodes::get(&mut client, name, &format, &mut out).await?;
            } else if is_claims(&kind) {
                let mut list = client
                    .list_claims(pb::ListClaimsRequest { namespace: ns })
                    .await?
                    .into_inner()
                    .claims;
                if let Some(name) = &name {
                    list.retain(|c| &c.name == name);
                    if list.is_empty() {
                        return Err(CliError::Call(tonic::Status::not_found(format!(
                            "persistentvolumeclaim {name:?} not found"
                        ))));
                    }
                }
                match format.as_str() {
                    "json" | "yaml" => output::structured(
                        &mut out,
                        list.iter().map(claims::value).collect(),
                        name.is_some(),
                        &format,
                    )?,
                    _ => claims::table_of(&mut out, &list)?,
                }
            } else {
                let one = name.is_some();
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
                    "json" | "yaml" => output::structured(
                        &mut out,
                        pods.iter().map(output::pod_value).collect(),
                        one,
                        &format,
                    )?,
                    other => output::pods(&mut out, &pods, other == "wide")?,
                }
            }
        }
        Command::Describe { kind, name } if orca_model::kind::Kind::parse(&kind).is_some() => {
            let kind = orca_model::kind::Kind::parse(&kind).expect("checked");
            objects::describe(&mut client, kind, &ns, &name, &mut out).await?;
        }
        Command::Describe { kind: _, name } => {
            let record = client
                .get_pod(pb::GetPodRequest {
                    namespace: ns.clone(),
                    name: name.clone(),
                })
                .await?
                .into_inner();
            let events = client
                .list_events(pb::ListEventsRequest {
                    namespace: ns,
                    name,
                })
                .await?
                .into_inner()
                .events;
            output::describe_pod(&mut out, &record, &events)?;
        }
        Command::Logs(args) => streams::logs(&mut client, ns, args).await?,
        Command::Top { kind, name, output } => {
            let nodes = is_nodes(&kind);
            let mut t = client
                .telemetry(pb::TelemetryRequest {
                    node: name.filter(|_| nodes).unwrap_or_default(),
                    history: 0,
                })
                .await?
                .into_inner();
            if !nodes && ns != "default" {
                t.pods
                    .retain(|u| u.pod.as_ref().is_some_and(|p| p.namespace == ns));
            }
            match (output.as_str(), nodes) {
                ("json", _) => {
                    let value = top::json(&t, nodes);
                    writeln!(
                        out,
                        "{}",
                        serde_json::to_string_pretty(&value).unwrap_or_default()
                    )?;
                }
                (_, true) => top::nodes(&mut out, &t)?,
                (_, false) => top::pods(&mut out, &t)?,
            }
        }
        Command::Exec { session, command } => {
            return streams::exec(&mut client, ns, session, command).await;
        }
        Command::Attach(session) => return streams::attach(&mut client, ns, session).await,
        Command::Delete { kind, name, .. } if orca_model::kind::Kind::parse(&kind).is_some() => {
            let kind = orca_model::kind::Kind::parse(&kind).expect("checked");
            objects::delete(&mut client, kind, &ns, &name, &mut out).await?;
        }
        Command::Delete { kind, name, .. } if is_claims(&kind) => {
            client
                .delete_claim(pb::DeleteClaimRequest {
                    namespace: ns,
                    name: name.clone(),
                })
                .await?;
            writeln!(out, "persistentvolumeclaim/{name} deleted")?;
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
        Command::Rollout {
            action,
            target,
            to_revision,
            timeout,
        } => {
            rollout::rollout(
                &mut client,
                &ns,
                action,
                &target,
                to_revision,
                Duration::from_secs(timeout),
                &mut out,
            )
            .await?;
        }
        Command::Scale { target, replicas } => {
            rollout::scale(&mut client, &ns, &target, replicas, &mut out).await?;
        }
        Command::Events { name } => {
            let req = pb::ListEventsRequest {
                namespace: String::new(),
                name: name.unwrap_or_default(),
            };
            let events = client.list_events(req).await?.into_inner().events;
            output::events(&mut out, &events)?;
        }
        Command::Ledger {
            name,
            output: format,
        } => {
            let mut pods = client
                .list_pods(pb::ListPodsRequest { namespace: ns })
                .await?
                .into_inner()
                .pods;
            if let Some(name) = &name {
                pods.retain(|p| &orca_model::pod::names(p).1 == name);
                if pods.is_empty() {
                    return Err(CliError::Call(tonic::Status::not_found(format!(
                        "pod {name:?} not found"
                    ))));
                }
            }
            match format.as_str() {
                "json" | "yaml" => output::structured(
                    &mut out,
                    pods.iter().map(orca_model::ledger::entry_json).collect(),
                    name.is_some(),
                    &format,
                )?,
                _ => ledger::table_of(&mut out, &pods)?,
            }
        }
        Command::Budget {
            action: _,
            output: format,
        } => {
            let list = client
                .list_budgets(pb::ListBudgetsRequest {})
                .await?
                .into_inner()
                .budgets;
            match format.as_str() {
                "json" | "yaml" => output::structured(
                    &mut out,
                    list.iter().map(budgets::value).collect(),
                    false,
                    &format,
                )?,
                _ => budgets::table_of(&mut out, &list)?,
            }
        }
        Command::Down => nodes::down(&mut client, &mut out).await?,
        Command::Backup { file } => backup::backup(&mut client, &file, &mut out).await?,
        Command::Login { .. } => unreachable!("handled before connecting"),
    }
    Ok(0)
}

/// Checks a credentials file and installs it at `to` (or the default path).
fn login(file: &Path, to: Option<&Path>) -> Result<i32, CliError> {
    let creds =
        credentials::Credentials::load(file).map_err(|e| CliError::Credentials(e.to_string()))?;
    orca_proto::tls::certs(
        "certificate-authority-data",
        &creds.certificate_authority_data,
    )
    .map_err(|e| CliError::Credentials(format!("{}: {e}", file.display())))?;
    let target = match to {
        Some(p) => p.to_owned(),
        None => credentials::Credentials::default_path()
            .ok_or_else(|| CliError::Credentials("no HOME to keep credentials in".into()))?,
    };
    creds.write(&target)?;
    println!(
        "credentials for {} saved to {}",
        creds.server,
        target.display()
    );
    Ok(0)
}

async fn create_pod(
    client: &mut Admin,
    pod: orca_proto::types::v1::Pod,
    out: &mut impl std::io::Write,
) -> Result<(), CliError> {
    let record = client
        .run_pod(pb::RunPodRequest { pod: Some(pod) })
        .await?
        .into_inner();
    let (_, name) = orca_model::pod::names(&record);
    writeln!(out, "pod/{name} created")?;
    Ok(())
}

fn is_claims(kind: &str) -> bool {
    matches!(
        kind,
        "pvc" | "persistentvolumeclaim" | "persistentvolumeclaims"
    )
}

fn is_nodes(kind: &str) -> bool {
    matches!(kind, "nodes" | "node" | "no")
}

/// Waits until the pod reaches `phase` (`Done`: Succeeded or Failed). Fails at
/// once when the pod ends in another terminal phase.
pub async fn wait_pod(
    client: &mut Admin,
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
        let now = orca_model::pod::phase(&record);
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
