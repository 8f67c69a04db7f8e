//! The agent's configuration: command-line flags (each also an `ORCA_AGENT_*`
//! environment variable), validated once into [`Config`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Default containerd socket.
pub const DEFAULT_CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";
/// Default containerd namespace for ORCA's containers.
pub const DEFAULT_NAMESPACE: &str = "orca";
/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/orca-agent";

/// A configuration error, naming the field.
#[derive(Debug, thiserror::Error)]
#[error("config field `{field}`: {problem}")]
pub struct ConfigError {
    /// The flag or field at fault.
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

/// `orca-agent`: runs ORCA pods on this host's containerd.
#[derive(Debug, Clone, Parser)]
#[command(name = "orca-agent", version, about)]
pub struct Flags {
    /// Control plane NodeService URL, e.g. https://10.0.0.1:7443 (or from --imds-endpoint).
    #[arg(long, env = "ORCA_AGENT_CONTROL_PLANE", default_value = "")]
    pub control_plane: String,
    /// Read what is not given here (control plane URL, CA, node name, join token,
    /// advertised address) from the instance metadata service at this URL,
    /// IMDSv2: http://169.254.169.254 on EC2.
    #[arg(long, env = "ORCA_AGENT_IMDS_ENDPOINT")]
    pub imds_endpoint: Option<String>,
    /// Single-use join token (not needed once the node has joined: its identity
    /// is kept under <state-dir>/identity).
    #[arg(
        long,
        env = "ORCA_AGENT_JOIN_TOKEN",
        hide_env_values = true,
        default_value = ""
    )]
    pub join_token: String,
    /// PEM file of the cluster CA, to verify the control plane at the first join.
    #[arg(long, env = "ORCA_AGENT_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Name of this node (the token is bound to it; or from --imds-endpoint).
    #[arg(long, env = "ORCA_AGENT_NODE_NAME", default_value = "")]
    pub node_name: String,
    /// Address to serve AgentService on.
    #[arg(long, env = "ORCA_AGENT_LISTEN", default_value = "0.0.0.0:7444")]
    pub listen: SocketAddr,
    /// Address the control plane dials; defaults to the bound listen address.
    #[arg(long, env = "ORCA_AGENT_ADVERTISE")]
    pub advertise: Option<String>,
    /// containerd's gRPC socket.
    #[arg(long, env = "ORCA_AGENT_CONTAINERD_SOCKET", default_value = DEFAULT_CONTAINERD_SOCKET)]
    pub containerd_socket: PathBuf,
    /// containerd namespace for this agent's containers.
    #[arg(long, env = "ORCA_AGENT_CONTAINERD_NAMESPACE", default_value = DEFAULT_NAMESPACE)]
    pub containerd_namespace: String,
    /// Directory for pod logs and agent state.
    #[arg(long, env = "ORCA_AGENT_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// The orca-logger binary; defaults to the one beside this executable.
    #[arg(long, env = "ORCA_AGENT_LOGGER")]
    pub logger: Option<PathBuf>,
    /// Registries reached over plain HTTP (loopback registries always are). Repeatable.
    #[arg(
        long = "insecure-registry",
        env = "ORCA_AGENT_INSECURE_REGISTRIES",
        value_delimiter = ','
    )]
    pub insecure_registries: Vec<String>,
    /// `HOST[:PORT]=PEMFILE`: reach that registry over HTTPS trusting this CA. Repeatable.
    #[arg(
        long = "registry-ca",
        env = "ORCA_AGENT_REGISTRY_CAS",
        value_delimiter = ','
    )]
    pub registry_cas: Vec<String>,
    /// CPU millicores to report; defaults to the host's CPUs.
    #[arg(long, env = "ORCA_AGENT_CPU_MILLIS")]
    pub cpu_millis: Option<i64>,
    /// Memory bytes to report; defaults to the host's memory.
    #[arg(long, env = "ORCA_AGENT_MEMORY_BYTES")]
    pub memory_bytes: Option<i64>,
    /// Where GPU telemetry comes from: `nvml` (the NVIDIA driver's library,
    /// loaded at run time), `fake` (replays --gpu-replay, or the bundled
    /// recording resized to --gpus devices: simulated hosts), `none`, or `auto`:
    /// `fake` when --gpus or --gpu-replay is given, else `nvml`.
    #[arg(long, env = "ORCA_AGENT_GPU_SOURCE", default_value = "auto")]
    pub gpu_source: String,
    /// A GPU recording (JSON lines, as `orca-gpu-probe` prints) for the fake source;
    /// read again when it changes.
    #[arg(long, env = "ORCA_AGENT_GPU_REPLAY")]
    pub gpu_replay: Option<PathBuf>,
    /// Simulated GPUs (fake source without --gpu-replay): how many devices the
    /// bundled recording is resized to.
    #[arg(long, env = "ORCA_AGENT_GPUS", default_value_t = 0)]
    pub gpus: i32,
    /// Product name of the simulated GPUs (`NVIDIA A10G`); default: the bundled
    /// recording's.
    #[arg(long, env = "ORCA_AGENT_GPU_MODEL")]
    pub gpu_model: Option<String>,
    /// GPU sampling interval in milliseconds.
    #[arg(long, env = "ORCA_AGENT_GPU_SAMPLE_MS", default_value_t = 5_000)]
    pub gpu_sample_ms: u64,
    /// How long a GPU pod waits for enough healthy, free GPUs before it fails
    /// with reason GPUUnavailable, in milliseconds.
    #[arg(long, env = "ORCA_AGENT_GPU_WAIT_MS", default_value_t = 120_000)]
    pub gpu_wait_ms: u64,
    /// Directories of CDI specs (`nvidia-ctk cdi generate`), later ones taking
    /// precedence. Repeatable.
    #[arg(
        long = "cdi-dir",
        env = "ORCA_AGENT_CDI_DIRS",
        value_delimiter = ',',
        default_value = "/etc/cdi,/var/run/cdi"
    )]
    pub cdi_dirs: Vec<PathBuf>,
    /// Where the node's block devices are named by id: EBS volumes attached to a
    /// Nitro instance appear as `nvme-Amazon_Elastic_Block_Store_vol<id>`.
    #[arg(
        long,
        env = "ORCA_AGENT_EBS_DEVICE_DIR",
        default_value = "/dev/disk/by-id"
    )]
    pub ebs_device_dir: PathBuf,
    /// How long a pod waits for its EBS volumes to be attached before it fails
    /// with reason FailedAttachVolume, in milliseconds.
    #[arg(
        long,
        env = "ORCA_AGENT_VOLUME_ATTACH_WAIT_MS",
        default_value_t = 300_000
    )]
    pub volume_attach_wait_ms: u64,
    /// Maximum pods on this node.
    #[arg(long, env = "ORCA_AGENT_MAX_PODS", default_value_t = 110)]
    pub max_pods: i32,
    /// First container restart back-off in milliseconds (doubles per restart).
    #[arg(long, env = "ORCA_AGENT_BACKOFF_BASE_MS", default_value_t = 10_000)]
    pub backoff_base_ms: u64,
    /// Longest container restart back-off in milliseconds.
    #[arg(long, env = "ORCA_AGENT_BACKOFF_MAX_MS", default_value_t = 300_000)]
    pub backoff_max_ms: u64,
    /// A container that ran this long (ms) restarts with the first back-off again.
    #[arg(long, env = "ORCA_AGENT_BACKOFF_RESET_MS", default_value_t = 600_000)]
    pub backoff_reset_ms: u64,
    /// Image pull attempts (with back-off) before a pod fails with ErrImagePull.
    #[arg(long, env = "ORCA_AGENT_IMAGE_PULL_ATTEMPTS", default_value_t = 5)]
    pub image_pull_attempts: u32,
    /// Largest container log file before it is rotated, bytes (the kubelet's 10 MiB).
    #[arg(long, env = "ORCA_AGENT_LOG_MAX_BYTES", default_value_t = 10 * 1024 * 1024)]
    pub log_max_bytes: u64,
    /// Log files kept per container run, the current one included (the kubelet's 5).
    #[arg(long, env = "ORCA_AGENT_LOG_MAX_FILES", default_value_t = 5)]
    pub log_max_files: u32,
    /// Longest wait between two looks at a followed log when inotify reports nothing, ms.
    #[arg(long, env = "ORCA_AGENT_LOG_FOLLOW_POLL_MS", default_value_t = 250)]
    pub log_follow_poll_ms: u64,
    /// How long a followed log must stay quiet after its container ended before
    /// following ends, ms (the logger may still be writing its last lines).
    #[arg(long, env = "ORCA_AGENT_LOG_FOLLOW_SETTLE_MS", default_value_t = 300)]
    pub log_follow_settle_ms: u64,
    /// Pause between failed attempts to reach the control plane, in milliseconds.
    #[arg(long, env = "ORCA_AGENT_RETRY_MS", default_value_t = 1_000)]
    pub retry_ms: u64,
    /// Where to watch for interruption notices (spot interruptions, rebalance
    /// recommendations, scheduled maintenance): an IMDSv2 endpoint. Default:
    /// --imds-endpoint; none watched without either.
    #[arg(long, env = "ORCA_AGENT_NOTICES_ENDPOINT")]
    pub notices_endpoint: Option<String>,
    /// How often the metadata service is asked for notices, ms (AWS suggests 5 s).
    #[arg(long, env = "ORCA_AGENT_NOTICE_POLL_MS", default_value_t = 5_000)]
    pub notice_poll_ms: u64,
    /// After a notice is written to a pod's /run/orca/notice, how long its
    /// containers have before SIGTERM (or before the checkpoint wait), ms.
    #[arg(long, env = "ORCA_AGENT_NOTICE_PAUSE_MS", default_value_t = 15_000)]
    pub notice_pause_ms: u64,
    /// Scheduled maintenance is acted on this long before it starts, ms (the
    /// 10 minutes Karpenter drains ahead of EC2).
    #[arg(long, env = "ORCA_AGENT_DRAIN_LEAD_MS", default_value_t = 600_000)]
    pub drain_lead_ms: u64,
    /// The most processes and threads one pod may hold (the kubelet's
    /// `podPidsLimit`), so a fork bomb stops there; 0 for no limit. ORCA's
    /// containers have no pod cgroup above them: each app container's
    /// `pids.max` is its even share of this (an init container, running alone,
    /// gets all of it).
    #[arg(long, env = "ORCA_AGENT_PIDS_LIMIT", default_value_t = 4096)]
    pub pids_limit: u32,
    /// Directories hostPath volumes may point into (comma-separated, absolute);
    /// unset: anywhere. An EC2 host holds its node's identity: the AMI's unit
    /// allows `/mnt` (instance-store and data volumes) only.
    #[arg(long, env = "ORCA_AGENT_HOST_PATH_ALLOW", value_delimiter = ',')]
    pub host_path_allow: Vec<PathBuf>,
    /// Dead-man's switch: power the host off once the control plane has not
    /// answered for this long while no pod runs, ms; 0 turns it off.
    #[arg(long, env = "ORCA_AGENT_DEAD_MAN_MS", default_value_t = 0)]
    pub dead_man_ms: u64,
    /// How the dead-man's switch powers off: `system` (systemctl poweroff: a
    /// real instance, as the AMI's unit sets) or `exit` (the agent exits with
    /// status 99: a simulated host, never the machine it runs on).
    #[arg(long, env = "ORCA_AGENT_POWER_OFF", default_value = "exit")]
    pub power_off: String,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The flags as given.
    pub flags: Flags,
    /// The logger binary.
    pub logger: PathBuf,
    /// The pod namespace holder binary.
    pub pause: PathBuf,
    /// Restart back-off base.
    pub backoff_base: Duration,
    /// Restart back-off cap.
    pub backoff_max: Duration,
    /// Restart back-off reset.
    pub backoff_reset: Duration,
    /// CA bundles (PEM) by registry.
    pub registry_cas: std::collections::HashMap<String, Vec<u8>>,
    /// Join/heartbeat retry pause.
    pub retry: Duration,
    /// The cluster CA from `--ca-file`.
    pub ca_pem: Option<String>,
    /// How logs are followed.
    pub follow: crate::streams::FollowTimings,
}

impl Config {
    /// The GPU source the flags ask for.
    pub fn gpu_source(&self) -> crate::gpu::SourceChoice {
        use crate::gpu::SourceChoice;
        let f = &self.flags;
        let fake = f.gpu_source == "fake"
            || f.gpu_source == "auto" && (f.gpus > 0 || f.gpu_replay.is_some());
        match (&f.gpu_replay, f.gpu_source.as_str()) {
            (Some(path), _) if fake => SourceChoice::Replay(path.clone()),
            (None, _) if fake => SourceChoice::Simulated {
                node: f.node_name.clone(),
                count: f.gpus as usize,
                model: f.gpu_model.clone(),
            },
            (_, "none") => SourceChoice::None,
            _ => SourceChoice::Nvml,
        }
    }
}

impl Flags {
    /// Validates the flags, naming the first bad one.
    pub fn validate(self) -> Result<Config, ConfigError> {
        let err = |field, problem: &str| {
            Err(ConfigError {
                field,
                problem: problem.to_owned(),
            })
        };
        if !self.control_plane.starts_with("https://")
            || orca_proto::tls::host_port(&self.control_plane).is_err()
        {
            return err(
                "control-plane",
                "must be an https://host:port URL (or come from --imds-endpoint)",
            );
        }
        if let Some(p) = self.host_path_allow.iter().find(|p| {
            !p.is_absolute()
                || p.components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
        }) {
            return err(
                "host-path-allow",
                &format!("{} is not an absolute path without `..`", p.display()),
            );
        }
        let ca_pem = match &self.ca_file {
            None => None,
            Some(path) => {
                let pem = std::fs::read_to_string(path).map_err(|e| ConfigError {
                    field: "ca-file",
                    problem: format!("{}: {e}", path.display()),
                })?;
                orca_proto::tls::certs("CA", &pem).map_err(|e| ConfigError {
                    field: "ca-file",
                    problem: e.to_string(),
                })?;
                Some(pem)
            }
        };
        if self.node_name.is_empty()
            || !self
                .node_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return err("node-name", "must be letters, digits and dashes");
        }
        let ns = &self.containerd_namespace;
        if ns.is_empty()
            || !ns
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return err(
                "containerd-namespace",
                "must be letters, digits, '.', '_' and '-'",
            );
        }
        if self.backoff_base_ms == 0 || self.backoff_max_ms < self.backoff_base_ms {
            return err(
                "backoff-max-ms",
                "back-offs must be positive with max >= base",
            );
        }
        if self.log_max_bytes < 1024 {
            return err("log-max-bytes", "must be at least 1024");
        }
        if self.log_max_files == 0 {
            return err("log-max-files", "must be at least 1");
        }
        if !["auto", "nvml", "fake", "none"].contains(&self.gpu_source.as_str()) {
            return err("gpu-source", "must be auto, nvml, fake or none");
        }
        if self.gpus < 0 {
            return err("gpus", "must not be negative");
        }
        if self.gpu_source == "fake" && self.gpu_replay.is_none() && self.gpus == 0 {
            return err("gpu-source", "fake needs --gpu-replay FILE or --gpus N");
        }
        if self.gpu_sample_ms == 0 {
            return err("gpu-sample-ms", "must be at least 1");
        }
        if self.image_pull_attempts == 0 {
            return err("image-pull-attempts", "must be at least 1");
        }
        if crate::deadman::PowerOffMode::parse(&self.power_off).is_none() {
            return err("power-off", "must be system or exit");
        }
        if self.notice_poll_ms == 0 {
            return err("notice-poll-ms", "must be at least 1");
        }
        if let Some(url) = &self.notices_endpoint
            && !url.starts_with("http://")
            && !url.starts_with("https://")
        {
            return err("notices-endpoint", "must be an http:// or https:// URL");
        }
        let logger = match &self.logger {
            Some(p) => p.clone(),
            None => std::env::current_exe()
                .map_err(|e| ConfigError {
                    field: "logger",
                    problem: format!("cannot locate own executable: {e}"),
                })?
                .with_file_name("orca-logger"),
        };
        if !logger.is_file() {
            return Err(ConfigError {
                field: "logger",
                problem: format!("{} does not exist", logger.display()),
            });
        }
        let mut registry_cas = std::collections::HashMap::new();
        for entry in &self.registry_cas {
            let Some((host, file)) = entry.split_once('=') else {
                return err("registry-ca", "must be HOST[:PORT]=PEMFILE");
            };
            let pem = std::fs::read(file).map_err(|e| ConfigError {
                field: "registry-ca",
                problem: format!("{file}: {e}"),
            })?;
            registry_cas.insert(host.to_owned(), pem);
        }
        let pause = logger.with_file_name("orca-pause");
        if !pause.is_file() {
            return Err(ConfigError {
                field: "logger",
                problem: format!("{} (beside the logger) does not exist", pause.display()),
            });
        }
        Ok(Config {
            logger,
            pause,
            backoff_base: Duration::from_millis(self.backoff_base_ms),
            backoff_max: Duration::from_millis(self.backoff_max_ms),
            backoff_reset: Duration::from_millis(self.backoff_reset_ms),
            registry_cas,
            retry: Duration::from_millis(self.retry_ms.max(10)),
            ca_pem,
            follow: crate::streams::FollowTimings {
                poll: Duration::from_millis(self.log_follow_poll_ms.max(1)),
                settle: Duration::from_millis(self.log_follow_settle_ms),
            },
            flags: self,
        })
    }
}
