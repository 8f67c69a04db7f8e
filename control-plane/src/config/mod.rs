//! The control plane's configuration: one YAML file, validated once into
//! [`Config`] with errors that name the field. The `ec2` provider's section is
//! [`ec2`]; the Kubernetes mode's is [`kubernetes`]; research budgets are [`budgets`].

pub mod budgets;
pub mod ec2;

pub use ec2::StorageClass;
pub mod kubernetes;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::cloud::cidr::Ipv4Cidr;
use crate::cloud::netns::MAX_IFNAME;

/// Default listen address of the gRPC API (NodeService and AdminService).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7443";
/// Default listen address of the Prometheus metrics endpoint (plain HTTP
/// `/metrics` and `/healthz`): dcgm-exporter's port, so scrape configs and
/// dashboards made for it find the GPU series where they expect them.
pub const DEFAULT_METRICS_LISTEN: &str = "0.0.0.0:9400";
/// Default heartbeat interval sent to agents (ms).
pub const DEFAULT_HEARTBEAT_INTERVAL_MS: u64 = 2_000;
/// Default time without heartbeats before a node is Suspect (ms).
pub const DEFAULT_SUSPECT_AFTER_MS: u64 = 6_000;
/// Default time without heartbeats before a node is NotReady (ms).
pub const DEFAULT_NOT_READY_AFTER_MS: u64 = 20_000;
/// Default time without heartbeats before a node is Lost and its pods recovered (ms).
pub const DEFAULT_LOST_AFTER_MS: u64 = 60_000;
/// Default lifetime of node and control-plane certificates (s).
pub const DEFAULT_CERT_LIFETIME_S: u64 = 86_400;
/// Default lifetime of a join token (s).
pub const DEFAULT_JOIN_TOKEN_TTL_S: u64 = 600;
/// Default time a pod may wait for a node before it fails Unschedulable (ms).
pub const DEFAULT_PENDING_TIMEOUT_MS: u64 = 300_000;
/// Default period of the scheduler and health loops (ms).
pub const DEFAULT_RECONCILE_INTERVAL_MS: u64 = 500;
/// Default time allowed for one call to an agent (ms).
pub const DEFAULT_AGENT_CALL_TIMEOUT_MS: u64 = 30_000;
/// Default bridge of the `local` provider's simulated hosts.
pub const DEFAULT_BRIDGE: &str = "orca0";
/// Default network of the `local` provider's simulated hosts (the bridge takes
/// the first address).
pub const DEFAULT_HOSTS_CIDR: &str = "10.77.0.0/24";
/// Default port every simulated host's agent serves AgentService on.
pub const DEFAULT_AGENT_PORT: u16 = 7444;

/// A configuration error, naming the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}")]
    Read {
        /// Path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The YAML does not match the schema (serde names the field and line).
    #[error("config file {path}: {message}")]
    Parse {
        /// Path.
        path: PathBuf,
        /// serde's message, with the field and position.
        message: String,
    },
    /// A field has a bad value.
    #[error("config field `{field}`: {problem}")]
    Invalid {
        /// Dotted field path.
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
}

/// The configuration file, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    /// Address of the gRPC API (agents and users).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// URL agents dial to reach NodeService; defaults to `https://<listen>`.
    #[serde(default)]
    pub advertise_url: Option<String>,
    /// Address (host:port) of the Prometheus metrics endpoint, plain HTTP;
    /// port 0 takes any free port. The empty string turns it off. The bound
    /// address is logged and written to `<data_dir>/metrics.addr`.
    #[serde(default = "default_metrics_listen")]
    pub metrics_listen: String,
    /// Directory of the sled store and simulated hosts' state.
    pub data_dir: PathBuf,
    /// Heartbeat interval the agents are told to use (ms).
    #[serde(default = "d_heartbeat")]
    pub heartbeat_interval_ms: u64,
    /// Time without heartbeats before a node is Suspect (ms).
    #[serde(default = "d_suspect")]
    pub suspect_after_ms: u64,
    /// Time without heartbeats before a node is NotReady: no new pods (ms).
    #[serde(default = "d_not_ready")]
    pub not_ready_after_ms: u64,
    /// Time without heartbeats before a node is Lost: it is fenced and its pods
    /// recovered elsewhere (ms).
    #[serde(default = "d_lost")]
    pub lost_after_ms: u64,
    /// Lifetime of a join token (s).
    #[serde(default = "d_token_ttl")]
    pub join_token_ttl_s: u64,
    /// Time a pod may wait for a node before it fails Unschedulable (ms).
    #[serde(default = "d_pending")]
    pub pending_timeout_ms: u64,
    /// Period of the scheduler and node-health loops (ms).
    #[serde(default = "d_reconcile")]
    pub reconcile_interval_ms: u64,
    /// Time allowed for one call to an agent (ms).
    #[serde(default = "d_agent_call")]
    pub agent_call_timeout_ms: u64,
    /// UDP port of the cluster DNS on the simulated hosts' gateway
    /// (standalone mode's Services).
    #[serde(default = "d_dns_port")]
    pub dns_port: u16,
    /// Period of the HorizontalPodAutoscalers (ms; Kubernetes' 15 s).
    #[serde(default = "d_autoscaling_sync")]
    pub autoscaling_sync_ms: u64,
    /// TLS settings.
    #[serde(default)]
    pub tls: TlsFile,
    /// Launch hosts when no node fits a pending pod (off when absent).
    #[serde(default)]
    pub autoscale: Option<AutoscaleFile>,
    /// The instance provider.
    pub provider: ProviderFile,
    /// Kubernetes mode: serve a cluster as a Virtual Kubelet node (standalone
    /// when absent).
    #[serde(default)]
    pub kubernetes: Option<kubernetes::KubernetesFile>,
    /// Research budgets pods join with `orca.research/budget-namespace`.
    #[serde(default)]
    pub budgets: Vec<budgets::BudgetFile>,
    /// How often budget spend is accrued and caps enforced, ms.
    #[serde(default = "d_accrual")]
    pub budget_accrual_interval_ms: u64,
    /// Standalone mode's Pod Security admission: the levels of namespaces
    /// without `pod-security.kubernetes.io/*` labels (Kubernetes mode: the API
    /// server's own admission applies).
    #[serde(default)]
    pub pod_security: PodSecurityFile,
}

/// The cluster's default Pod Security levels, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodSecurityFile {
    /// Pods violating this level are refused (`privileged`, `baseline`,
    /// `restricted`).
    #[serde(default = "d_enforce")]
    pub enforce: String,
    /// Pods violating this level are admitted with a Warning event.
    #[serde(default = "d_privileged")]
    pub warn: String,
    /// Pods violating this level are admitted with a line in the audit log.
    #[serde(default = "d_privileged")]
    pub audit: String,
}

impl Default for PodSecurityFile {
    fn default() -> Self {
        Self {
            enforce: d_enforce(),
            warn: d_privileged(),
            audit: d_privileged(),
        }
    }
}

fn d_enforce() -> String {
    "baseline".into()
}

fn d_privileged() -> String {
    "privileged".into()
}

/// The cluster's default Pod Security levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodSecurityDefaults {
    /// Refused above this level.
    pub enforce: crate::pod_security::Level,
    /// Warned above this level.
    pub warn: crate::pod_security::Level,
    /// Audited above this level.
    pub audit: crate::pod_security::Level,
}

impl PodSecurityFile {
    fn validate(&self) -> Result<PodSecurityDefaults, ConfigError> {
        let level = |field: &'static str, value: &str| {
            value
                .parse::<crate::pod_security::Level>()
                .map_err(|e| ConfigError::Invalid {
                    field,
                    problem: e.to_string(),
                })
        };
        Ok(PodSecurityDefaults {
            enforce: level("pod_security.enforce", &self.enforce)?,
            warn: level("pod_security.warn", &self.warn)?,
            audit: level("pod_security.audit", &self.audit)?,
        })
    }
}

/// Autoscaling: hosts launched when no node fits a pending pod.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoscaleFile {
    /// At most this many autoscaled nodes.
    pub max_nodes: u32,
    /// CPU of a new host (a Kubernetes quantity); more if the pod asks for more.
    #[serde(default = "d_auto_cpu")]
    pub cpu: String,
    /// Memory of a new host (a Kubernetes quantity); more if the pod asks for more.
    #[serde(default = "d_auto_memory")]
    pub memory: String,
    /// GPUs of a new host; more if the pod asks for more.
    #[serde(default)]
    pub gpus: u32,
    /// Pods a new host takes.
    #[serde(default = "d_auto_pods")]
    pub pods: u32,
}

/// The validated autoscaling settings.
#[derive(Debug, Clone)]
pub struct Autoscale {
    /// Most autoscaled nodes.
    pub max_nodes: u32,
    /// Smallest size of a new host.
    pub size: orca_proto::types::v1::Resources,
}

/// TLS settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    /// Extra DNS names and IPs for the control plane's certificate (besides
    /// `localhost`, 127.0.0.1, the listen address and advertise_url's host).
    #[serde(default)]
    pub server_names: Vec<String>,
    /// Lifetime of node and control-plane certificates (s); they are renewed
    /// when two thirds of it have passed.
    #[serde(default)]
    pub cert_lifetime_s: Option<u64>,
}

/// Which instance provider launches nodes: exactly one of its fields is set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderFile {
    /// Simulated hosts on this machine.
    #[serde(default)]
    pub local: Option<LocalFile>,
    /// EC2 instances, one per pod.
    #[serde(default)]
    pub ec2: Option<ec2::Ec2File>,
}

/// The `local` provider: every node is an `orca-agent` process on this machine.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalFile {
    /// The `orca-agent` binary; defaults to the one beside the control plane's executable.
    #[serde(default)]
    pub agent_binary: Option<PathBuf>,
    /// containerd socket the simulated hosts share.
    #[serde(default = "d_socket")]
    pub containerd_socket: PathBuf,
    /// Each host uses containerd namespace `<prefix>-<node name>`.
    #[serde(default = "d_prefix")]
    pub containerd_namespace_prefix: String,
    /// Registries the agents reach over plain HTTP (loopback ones always are).
    #[serde(default)]
    pub insecure_registries: Vec<String>,
    /// Extra arguments for every agent (e.g. `--backoff-base-ms=100`).
    #[serde(default)]
    pub agent_args: Vec<String>,
    /// Port every agent serves AgentService on, at its host's address (agents
    /// without a network namespace take a free loopback port instead).
    #[serde(default = "d_agent_port")]
    pub agent_port: u16,
    /// The simulated hosts' network.
    #[serde(default)]
    pub network: NetworkFile,
    /// What a simulated host is said to cost, USD per hour (budgets, ledger).
    #[serde(default)]
    pub usd_per_hour: f64,
}

/// The simulated hosts' network: a bridge on this machine and an IPv4 network;
/// each host gets a namespace `<bridge>-<node>` with an address from it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkFile {
    /// Bridge interface name (at most 15 characters; unique per cluster on a machine).
    #[serde(default = "d_bridge")]
    pub bridge: String,
    /// IPv4 network, /16 to /28; the bridge (gateway) takes its first address.
    #[serde(default = "d_cidr")]
    pub cidr: String,
}

impl Default for NetworkFile {
    fn default() -> Self {
        Self {
            bridge: d_bridge(),
            cidr: d_cidr(),
        }
    }
}

fn default_listen() -> String {
    DEFAULT_LISTEN.into()
}
fn default_metrics_listen() -> String {
    DEFAULT_METRICS_LISTEN.into()
}
fn d_heartbeat() -> u64 {
    DEFAULT_HEARTBEAT_INTERVAL_MS
}
fn d_auto_cpu() -> String {
    "2".into()
}
fn d_auto_memory() -> String {
    "4Gi".into()
}
fn d_auto_pods() -> u32 {
    110
}
fn d_suspect() -> u64 {
    DEFAULT_SUSPECT_AFTER_MS
}
fn d_not_ready() -> u64 {
    DEFAULT_NOT_READY_AFTER_MS
}
fn d_lost() -> u64 {
    DEFAULT_LOST_AFTER_MS
}
fn d_token_ttl() -> u64 {
    DEFAULT_JOIN_TOKEN_TTL_S
}
fn d_pending() -> u64 {
    DEFAULT_PENDING_TIMEOUT_MS
}
fn d_autoscaling_sync() -> u64 {
    15_000
}
fn d_dns_port() -> u16 {
    53
}
fn d_reconcile() -> u64 {
    DEFAULT_RECONCILE_INTERVAL_MS
}
fn d_agent_call() -> u64 {
    DEFAULT_AGENT_CALL_TIMEOUT_MS
}
fn d_accrual() -> u64 {
    10_000
}
fn d_socket() -> PathBuf {
    "/run/containerd/containerd.sock".into()
}
fn d_prefix() -> String {
    "orca".into()
}
fn d_agent_port() -> u16 {
    DEFAULT_AGENT_PORT
}
fn d_bridge() -> String {
    DEFAULT_BRIDGE.into()
}
fn d_cidr() -> String {
    DEFAULT_HOSTS_CIDR.into()
}

/// Command-line flags that replace fields of the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `listen`.
    pub listen: Option<String>,
    /// `data_dir`.
    pub data_dir: Option<PathBuf>,
    /// `advertise_url`.
    pub advertise_url: Option<String>,
    /// `kubernetes.kubelet.address`.
    pub kubelet_address: Option<String>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listen address.
    pub listen: SocketAddr,
    /// URL agents dial (without a trailing slash).
    pub advertise_url: String,
    /// Address of the metrics endpoint; `None` when it is off.
    pub metrics_listen: Option<SocketAddr>,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Heartbeat interval for agents.
    pub heartbeat_interval: Duration,
    /// Suspect after this long without heartbeats.
    pub suspect_after: Duration,
    /// NotReady after this long without heartbeats.
    pub not_ready_after: Duration,
    /// Lost after this long without heartbeats.
    pub lost_after: Duration,
    /// Extra names (DNS or IP) of the control plane's certificate.
    pub server_names: Vec<String>,
    /// Certificate lifetime.
    pub cert_lifetime: Duration,
    /// Autoscaling, when on.
    pub autoscale: Option<Autoscale>,
    /// Join token lifetime.
    pub join_token_ttl: Duration,
    /// Unschedulable after this long pending.
    pub pending_timeout: Duration,
    /// Loop period.
    pub reconcile_interval: Duration,
    /// Agent call timeout.
    pub agent_call_timeout: Duration,
    /// The cluster DNS's UDP port.
    pub dns_port: u16,
    /// HorizontalPodAutoscaler period.
    pub autoscaling_sync: Duration,
    /// Provider.
    pub provider: Provider,
    /// Kubernetes mode, when on.
    pub kubernetes: Option<kubernetes::Kubernetes>,
    /// Research budgets.
    pub budgets: Vec<budgets::Budget>,
    /// How often budget spend is accrued (and caps enforced).
    pub budget_accrual_interval: Duration,
    /// Standalone mode's default Pod Security levels.
    pub pod_security: PodSecurityDefaults,
}

/// The validated provider configuration.
#[derive(Debug, Clone)]
pub enum Provider {
    /// Simulated hosts.
    Local(LocalProvider),
    /// EC2 instances.
    Ec2(Box<ec2::Ec2Provider>),
}

/// The validated `local` provider configuration.
#[derive(Debug, Clone)]
pub struct LocalProvider {
    /// Agent binary.
    pub agent_binary: PathBuf,
    /// containerd socket.
    pub containerd_socket: PathBuf,
    /// Namespace prefix.
    pub namespace_prefix: String,
    /// Insecure registries.
    pub insecure_registries: Vec<String>,
    /// Extra agent arguments.
    pub agent_args: Vec<String>,
    /// Agent port on each host's address.
    pub agent_port: u16,
    /// The hosts' network.
    pub network: Network,
    /// What a simulated host is said to cost, USD per hour (for budgets and the
    /// ledger; 0: nothing).
    pub usd_per_hour: f64,
}

/// The validated network of simulated hosts.
#[derive(Debug, Clone)]
pub struct Network {
    /// Bridge name.
    pub bridge: String,
    /// The hosts' network; the bridge has its first address.
    pub cidr: Ipv4Cidr,
}

impl Config {
    /// The EC2 settings, when that is the provider.
    pub fn ec2(&self) -> Option<&ec2::Ec2Provider> {
        match &self.provider {
            Provider::Ec2(s) => Some(s),
            Provider::Local(_) => None,
        }
    }

    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with(path, &Overrides::default())
    }

    /// Reads a config file, applies command-line overrides, validates.
    pub fn load_with(path: &Path, overrides: &Overrides) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut file = Self::parse_file(&text, path)?;
        if let Some(listen) = &overrides.listen {
            file.listen = listen.clone();
        }
        if let Some(dir) = &overrides.data_dir {
            file.data_dir = dir.clone();
        }
        if let Some(url) = &overrides.advertise_url {
            file.advertise_url = Some(url.clone());
        }
        if let (Some(address), Some(k)) = (&overrides.kubelet_address, file.kubernetes.as_mut()) {
            k.kubelet.address = Some(address.clone());
        }
        file.validate()
    }

    fn parse_file(text: &str, path: &Path) -> Result<File, ConfigError> {
        serde_yaml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// Parses and validates YAML text (`path` is for messages).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        Self::parse_file(text, path)?.validate()
    }
}

impl File {
    /// Validates the file, naming the first bad field.
    pub fn validate(self) -> Result<Config, ConfigError> {
        let invalid = |field, problem: String| ConfigError::Invalid { field, problem };
        let listen: SocketAddr = self
            .listen
            .parse()
            .map_err(|e| invalid("listen", format!("{:?} is not host:port: {e}", self.listen)))?;
        let advertise_url = self
            .advertise_url
            .clone()
            .unwrap_or_else(|| format!("https://{listen}"));
        if !advertise_url.starts_with("https://") {
            return Err(invalid(
                "advertise_url",
                format!("{advertise_url:?} must start with https:// (agents speak mutual TLS)"),
            ));
        }
        let metrics_listen = match self.metrics_listen.as_str() {
            "" => None,
            text => {
                let addr: SocketAddr = text.parse().map_err(|e| {
                    invalid(
                        "metrics_listen",
                        format!("{text:?} is not host:port (or \"\" for off): {e}"),
                    )
                })?;
                if addr == listen && addr.port() != 0 {
                    return Err(invalid(
                        "metrics_listen",
                        format!(
                            "{addr} is also `listen`: give the metrics endpoint a port of its own"
                        ),
                    ));
                }
                Some(addr)
            }
        };
        let positive = |field, v: u64| {
            if v == 0 {
                Err(invalid(field, "must be positive".into()))
            } else {
                Ok(v)
            }
        };
        let ms = |field, v| positive(field, v).map(Duration::from_millis);
        let heartbeat_interval = ms("heartbeat_interval_ms", self.heartbeat_interval_ms)?;
        let suspect_after = ms("suspect_after_ms", self.suspect_after_ms)?;
        let not_ready_after = ms("not_ready_after_ms", self.not_ready_after_ms)?;
        let lost_after = ms("lost_after_ms", self.lost_after_ms)?;
        if suspect_after <= heartbeat_interval {
            return Err(invalid(
                "suspect_after_ms",
                "must be longer than heartbeat_interval_ms".into(),
            ));
        }
        if not_ready_after <= suspect_after {
            return Err(invalid(
                "not_ready_after_ms",
                "must be longer than suspect_after_ms".into(),
            ));
        }
        if lost_after <= not_ready_after {
            return Err(invalid(
                "lost_after_ms",
                "must be longer than not_ready_after_ms".into(),
            ));
        }
        for name in &self.tls.server_names {
            let dns_ok = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
            if name.parse::<std::net::IpAddr>().is_err() && !dns_ok {
                return Err(invalid(
                    "tls.server_names",
                    format!("{name:?} is neither a DNS name nor an IP address"),
                ));
            }
        }
        let cert_lifetime = Duration::from_secs(positive(
            "tls.cert_lifetime_s",
            self.tls.cert_lifetime_s.unwrap_or(DEFAULT_CERT_LIFETIME_S),
        )?);
        let autoscale = match self.autoscale {
            None => None,
            Some(a) => {
                let q = positive_quantity;
                Some(Autoscale {
                    max_nodes: a.max_nodes,
                    size: orca_proto::types::v1::Resources {
                        cpu_millis: q("autoscale.cpu", &a.cpu, true)?,
                        memory_bytes: q("autoscale.memory", &a.memory, false)?,
                        gpus: a.gpus as i32,
                        pods: a.pods.max(1) as i32,
                    },
                })
            }
        };
        let provider = match (self.provider.local, self.provider.ec2) {
            (None, None) | (Some(_), Some(_)) => {
                return Err(invalid(
                    "provider",
                    "set exactly one provider: `local` or `ec2`".into(),
                ));
            }
            (None, Some(ec2)) => Provider::Ec2(Box::new(ec2.validate()?)),
            (Some(local), None) => {
                let agent_binary = match local.agent_binary {
                    Some(p) => p,
                    None => std::env::current_exe()
                        .map_err(|e| invalid("provider.local.agent_binary", e.to_string()))?
                        .with_file_name("orca-agent"),
                };
                if !agent_binary.is_file() {
                    return Err(invalid(
                        "provider.local.agent_binary",
                        format!(
                            "{} does not exist (build it: cargo build --bins)",
                            agent_binary.display()
                        ),
                    ));
                }
                let prefix = local.containerd_namespace_prefix;
                if prefix.is_empty()
                    || !prefix
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                {
                    return Err(invalid(
                        "provider.local.containerd_namespace_prefix",
                        format!("{prefix:?}"),
                    ));
                }
                Provider::Local(LocalProvider {
                    agent_binary,
                    containerd_socket: local.containerd_socket,
                    namespace_prefix: prefix,
                    insecure_registries: local.insecure_registries,
                    agent_args: local.agent_args,
                    agent_port: local.agent_port,
                    network: local.network.validate()?,
                    usd_per_hour: if local.usd_per_hour.is_finite() && local.usd_per_hour >= 0.0 {
                        local.usd_per_hour
                    } else {
                        return Err(invalid(
                            "provider.local.usd_per_hour",
                            format!("{} is not a non-negative price", local.usd_per_hour),
                        ));
                    },
                })
            }
        };
        let join_token_ttl =
            Duration::from_secs(positive("join_token_ttl_s", self.join_token_ttl_s)?);
        if let Provider::Ec2(ec2) = &provider
            && join_token_ttl < ec2.boot_timeout
        {
            return Err(invalid(
                "join_token_ttl_s",
                format!(
                    "must be at least provider.ec2.boot_timeout_ms ({:?}): an instance still booting must be able to join",
                    ec2.boot_timeout
                ),
            ));
        }
        Ok(Config {
            listen,
            advertise_url: advertise_url.trim_end_matches('/').to_owned(),
            metrics_listen,
            data_dir: self.data_dir,
            heartbeat_interval,
            suspect_after,
            not_ready_after,
            lost_after,
            server_names: self.tls.server_names,
            cert_lifetime,
            autoscale,
            join_token_ttl,
            pending_timeout: ms("pending_timeout_ms", self.pending_timeout_ms)?,
            reconcile_interval: ms("reconcile_interval_ms", self.reconcile_interval_ms)?,
            agent_call_timeout: ms("agent_call_timeout_ms", self.agent_call_timeout_ms)?,
            dns_port: self.dns_port,
            autoscaling_sync: ms("autoscaling_sync_ms", self.autoscaling_sync_ms)?,
            provider,
            kubernetes: self.kubernetes.map(|k| k.validate()).transpose()?,
            budgets: budgets::validate(self.budgets)?,
            budget_accrual_interval: ms(
                "budget_accrual_interval_ms",
                self.budget_accrual_interval_ms,
            )?,
            pod_security: self.pod_security.validate()?,
        })
    }
}

/// A positive Kubernetes quantity (`2`, `500m`, `4Gi`) of config field `field`.
pub(crate) fn positive_quantity(
    field: &'static str,
    text: &str,
    millis: bool,
) -> Result<i64, ConfigError> {
    orca_model::quantity::parse(text, millis)
        .filter(|v| *v > 0)
        .map(|v| v as i64)
        .ok_or_else(|| ConfigError::Invalid {
            field,
            problem: format!("{text:?} is not a positive quantity"),
        })
}

impl NetworkFile {
    fn validate(self) -> Result<Network, ConfigError> {
        let bridge = self.bridge;
        let bridge_ok = !bridge.is_empty()
            && bridge.len() <= MAX_IFNAME
            && bridge
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !bridge_ok {
            return Err(ConfigError::Invalid {
                field: "provider.local.network.bridge",
                problem: format!(
                    "{bridge:?} must be 1 to {MAX_IFNAME} characters of a-z, A-Z, 0-9, '-', '_'"
                ),
            });
        }
        let cidr = self
            .cidr
            .parse()
            .map_err(|e: crate::cloud::cidr::CidrError| ConfigError::Invalid {
                field: "provider.local.network.cidr",
                problem: e.to_string(),
            })?;
        Ok(Network { bridge, cidr })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Config, ConfigError> {
        Config::parse(yaml, Path::new("test.yaml"))
    }

    #[test]
    fn errors_name_the_field() {
        let agent = std::env::current_exe().unwrap();
        let base = format!(
            "data_dir: /tmp/x\nprovider:\n  local:\n    agent_binary: {}\n",
            agent.display()
        );
        assert!(parse(&base).is_ok());
        let e = parse(&format!("{base}bogus: 1\n")).unwrap_err().to_string();
        assert!(e.contains("unknown field `bogus`"), "{e}");
        let e = parse(&format!("{base}listen: nope\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`listen`"), "{e}");
        let e = parse(&format!("{base}heartbeat_interval_ms: 0\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`heartbeat_interval_ms`"), "{e}");
        let e = parse(&format!(
            "{base}suspect_after_ms: 100\nheartbeat_interval_ms: 200\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("`suspect_after_ms`"), "{e}");
        let e = parse(&format!("{base}lost_after_ms: 1000\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`lost_after_ms`"), "{e}");
        let e = parse(&format!("{base}tls:\n  server_names: ['a b']\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`tls.server_names`"), "{e}");
        let e = parse(&format!("{base}advertise_url: http://x:1\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`advertise_url`"), "{e}");
        for bad in ["nope", "9400", "'[::1]'", "127.0.0.1:7443"] {
            let e = parse(&format!("{base}metrics_listen: {bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("`metrics_listen`"), "{bad}: {e}");
        }
        let metrics = |extra: &str| parse(&format!("{base}{extra}")).unwrap().metrics_listen;
        assert_eq!(
            metrics(""),
            Some(DEFAULT_METRICS_LISTEN.parse().unwrap()),
            "on by default"
        );
        assert_eq!(
            metrics("metrics_listen: ''\n"),
            None,
            "the empty string turns it off"
        );
        assert_eq!(
            metrics("metrics_listen: 127.0.0.1:0\n"),
            Some("127.0.0.1:0".parse().unwrap())
        );
        let e = parse("data_dir: /tmp/x\nprovider:\n  local:\n    agent_binary: /nonexistent\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`provider.local.agent_binary`"), "{e}");
        let net = |extra: &str| {
            parse(&format!("{base}    network:\n{extra}"))
                .unwrap_err()
                .to_string()
        };
        let e = net("      bridge: a-bridge-name-too-long\n");
        assert!(e.contains("`provider.local.network.bridge`"), "{e}");
        let e = net("      bridge: 'br 0'\n");
        assert!(e.contains("`provider.local.network.bridge`"), "{e}");
        let e = net("      cidr: 10.77.0.0/8\n");
        assert!(e.contains("`provider.local.network.cidr`"), "{e}");
        let e = net("      cidr: 10.77.0.9/24\n");
        assert!(e.contains("`provider.local.network.cidr`"), "{e}");
        let ok = parse(&format!(
            "{base}    agent_port: 9000\n    network:\n      bridge: ob1f\n      cidr: 10.80.3.0/24\n"
        ))
        .unwrap();
        let Provider::Local(local) = ok.provider else {
            panic!("local")
        };
        assert_eq!(local.network.bridge, "ob1f");
        assert_eq!(local.network.cidr.to_string(), "10.80.3.0/24");
        assert_eq!(local.agent_port, 9000);
        let Provider::Local(default) = parse(&base).unwrap().provider else {
            panic!("local")
        };
        assert_eq!(default.network.bridge, DEFAULT_BRIDGE);
        assert_eq!(default.network.cidr.to_string(), DEFAULT_HOSTS_CIDR);
        let ec2 =
            "data_dir: /tmp/x\nprovider:\n  ec2:\n    ami: ami-1\n    boot_timeout_ms: 900000\n";
        let e = parse(ec2).unwrap_err().to_string();
        assert!(e.contains("`join_token_ttl_s`"), "{e}");
        assert!(parse(&format!("join_token_ttl_s: 900\n{ec2}")).is_ok());
        let e = parse(&format!("{base}  ec2:\n    ami: ami-1\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`provider`"), "both providers: {e}");
        let e = parse("provider:\n  local: {}\n").unwrap_err().to_string();
        assert!(e.contains("data_dir"), "{e}");
    }

    #[test]
    fn kubernetes_section_errors_name_the_field() {
        let agent = std::env::current_exe().unwrap();
        let base = format!(
            "data_dir: /tmp/x\nprovider:\n  local:\n    agent_binary: {}\nkubernetes:\n",
            agent.display()
        );
        let k = |extra: &str| parse(&format!("{base}{extra}"));
        let ok = k("  kubelet:\n    address: 10.0.0.5\n    client_ca: /ca.pem\n").unwrap();
        let kube = ok.kubernetes.expect("kubernetes on");
        assert_eq!(kube.node_name, kubernetes::DEFAULT_NODE_NAME);
        assert_eq!(kube.kubelet.address.to_string(), "10.0.0.5");
        assert_eq!(
            kube.kubelet.authorization,
            kubernetes::Authorization::AlwaysAllow
        );
        let cases = [
            (
                "  kubelet:\n    client_ca: /ca.pem\n",
                "`kubernetes.kubelet.address`",
            ),
            ("  kubelet:\n    address: 10.0.0.5\n", "client_ca"),
            (
                "  node_name: Bad_Name\n  kubelet:\n    address: 10.0.0.5\n    client_ca: /c\n",
                "`kubernetes.node_name`",
            ),
            (
                "  kubelet:\n    address: 10.0.0.5\n    client_ca: /c\n    authorization: rbac\n",
                "`kubernetes.kubelet.authorization`",
            ),
            (
                "  kubelet:\n    address: 10.0.0.5\n    client_ca: /c\n    serving_cert: /x\n",
                "`kubernetes.kubelet.serving_cert`",
            ),
            (
                "  lease_renew_ms: 50000\n  kubelet:\n    address: 10.0.0.5\n    client_ca: /c\n",
                "`kubernetes.lease_duration_s`",
            ),
            (
                "  capacity: {cpu: '0', memory: 1Gi, pods: 3}\n  kubelet:\n    address: 10.0.0.5\n    client_ca: /c\n",
                "`kubernetes.capacity.cpu`",
            ),
        ];
        for (extra, field) in cases {
            let e = k(extra).unwrap_err().to_string();
            assert!(e.contains(field), "{extra}: {e}");
        }
    }
}
