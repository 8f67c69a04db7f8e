//! The `local` provider: each node is a simulated host on this machine, an
//! `orca-agent` process in a network namespace of its own (`<bridge>-<node>`),
//! with its own address on the provider's bridge, sharing one containerd (each
//! host in its own containerd namespace, `<prefix>-<node>`).
//!
//! [`InstanceProvider::prepare`] creates the bridge (kept if it exists: a
//! restarted control plane finds its hosts on it) and returns its address, the
//! gateway, which is how hosts reach this machine: 127.0.0.1 inside a namespace
//! is the namespace's own loopback. The agent is started with
//! `nsenter --net=/run/netns/<ns>`, which enters the network namespace only
//! (`ip netns exec` would also give it a mount namespace of its own, and the
//! agent's volume mounts must be the ones containerd and runc see), and serves
//! on `<host ip>:<agent_port>`. Pods join the network namespace of their
//! `orca-pause` process, which the agent starts, so a pod listens on its host's
//! address. Where namespaces cannot be made (not root, no iproute2) hosts fall
//! back to plain processes on 127.0.0.1; the log says so once and every node's
//! message says so.
//!
//! Agents run in their own process group, so they outlive a control plane that
//! stops (as EC2 instances would) and reconnect when it returns. Each host keeps
//! its state, logs and the provider's records under `<data_dir>/hosts/<node>/`
//! ([`host`]). Terminating a host is a fence and faults are injected as the world
//! does to real hosts ([`fence`]), interruption notices through a metadata
//! service of the provider's that speaks EC2's IMDSv2 paths ([`imds`]).
//! Instance ids are `local-<node>`.

mod fence;
mod gpus;
mod host;
mod imds;

pub use gpus::write_cdi_spec;

use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::OnceCell;
use tracing::{info, warn};

use super::netns::{self, HostNetwork};
use super::{BoxFuture, Fault, Instance, InstanceProvider, LaunchRequest, ProviderError};
use crate::config::LocalProvider as LocalConfig;
use host::HostDir;

/// How long a terminated agent gets to exit on SIGTERM before SIGKILL.
const AGENT_STOP_GRACE: Duration = Duration::from_secs(5);

/// Instance ids look like `local-<node>`.
const ID_PREFIX: &str = "local-";

/// How hosts are networked, decided once by [`InstanceProvider::prepare`].
#[derive(Debug, Clone)]
enum Mode {
    /// Each host in its own network namespace on the bridge.
    Namespaced,
    /// Plain processes on 127.0.0.1, and why.
    Plain {
        /// Why namespaces are not used.
        reason: String,
    },
}

/// Simulated hosts on this machine.
pub struct LocalProvider {
    config: LocalConfig,
    hosts_dir: PathBuf,
    mode: OnceCell<Mode>,
    /// The metadata service's address, once started.
    imds: OnceCell<Result<std::net::SocketAddr, String>>,
    /// Serialises address allocation (pick a free one, record it).
    allocating: Mutex<()>,
}

impl LocalProvider {
    /// A provider keeping host state under `hosts_dir`.
    pub fn new(config: LocalConfig, hosts_dir: PathBuf) -> Self {
        Self {
            config,
            hosts_dir,
            mode: OnceCell::new(),
            imds: OnceCell::new(),
            allocating: Mutex::new(()),
        }
    }

    /// The instance id of node `node`.
    pub fn instance_id(node: &str) -> String {
        format!("{ID_PREFIX}{node}")
    }

    /// The network of node `node`, when it has a namespace of its own.
    pub fn host_network(&self, node: &str) -> Option<HostNetwork> {
        HostDir::new(&self.hosts_dir, node).network()
    }

    fn node_of(instance_id: &str) -> Option<&str> {
        instance_id
            .strip_prefix(ID_PREFIX)
            .filter(|n| !n.is_empty() && !n.contains('/') && !n.starts_with('.'))
    }

    async fn mode(&self) -> &Mode {
        self.mode
            .get_or_init(|| async {
                let bridge = &self.config.network.bridge;
                let cidr = &self.config.network.cidr;
                let ready = async {
                    netns::ensure_bridge(bridge, cidr).await?;
                    netns::probe(bridge).await
                };
                match ready.await {
                    Ok(()) => {
                        info!(bridge = %bridge, cidr = %cidr, gateway = %cidr.gateway(),
                            "simulated hosts get network namespaces on the bridge");
                        Mode::Namespaced
                    }
                    Err(e) => {
                        let reason = e.to_string();
                        warn!(error = %reason,
                            "network namespaces unavailable: simulated hosts run as plain processes on 127.0.0.1");
                        Mode::Plain { reason }
                    }
                }
            })
            .await
    }

    /// The metadata service (started at the first call), or why there is none.
    async fn imds(&self) -> Result<std::net::SocketAddr, String> {
        let ip = match self.mode().await {
            Mode::Namespaced => IpAddr::V4(self.config.network.cidr.gateway()),
            Mode::Plain { .. } => IpAddr::V4(Ipv4Addr::LOCALHOST),
        };
        self.imds
            .get_or_init(|| imds::start(&self.hosts_dir, ip))
            .await
            .clone()
    }

    /// Picks and records the host's address and creates its namespace.
    async fn network_for(&self, dir: &HostDir, node: &str) -> Result<HostNetwork, String> {
        let net = {
            let _guard = self
                .allocating
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let cidr = &self.config.network.cidr;
            let ip = host::free_address(&self.hosts_dir, cidr)
                .ok_or_else(|| format!("no free address left in {cidr}"))?;
            let net = HostNetwork::new(&self.config.network.bridge, node, ip);
            dir.write_network(&net)
                .map_err(|e| format!("network.json: {e}"))?;
            net
        };
        if let Err(e) =
            netns::create_host(&net, &self.config.network.bridge, &self.config.network.cidr).await
        {
            let _ = netns::delete_host(&net).await;
            return Err(e.to_string());
        }
        Ok(net)
    }

    async fn spawn(&self, req: &LaunchRequest) -> Result<Instance, String> {
        let dir = HostDir::new(&self.hosts_dir, &req.node_name);
        std::fs::create_dir_all(dir.path())
            .map_err(|e| format!("{}: {e}", dir.path().display()))?;
        let network = match self.mode().await {
            Mode::Namespaced => Some(self.network_for(&dir, &req.node_name).await?),
            Mode::Plain { .. } => None,
        };
        let log = std::fs::File::create(dir.path().join("agent.log"))
            .map_err(|e| format!("agent.log: {e}"))?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let namespace = format!("{}-{}", self.config.namespace_prefix, req.node_name);
        let (mut cmd, listen) = match &network {
            Some(net) => {
                let mut cmd = Command::new("nsenter");
                cmd.arg(format!("--net={}", net.netns_path().display()))
                    .arg("--")
                    .arg(&self.config.agent_binary);
                (cmd, format!("{}:{}", net.ip, self.config.agent_port))
            }
            None => (
                Command::new(&self.config.agent_binary),
                format!("{}:0", Ipv4Addr::LOCALHOST),
            ),
        };
        cmd.arg("--control-plane")
            .arg(&req.control_plane_url)
            .arg("--node-name")
            .arg(&req.node_name)
            .arg("--listen")
            .arg(&listen)
            .arg("--containerd-socket")
            .arg(&self.config.containerd_socket)
            .arg("--containerd-namespace")
            .arg(&namespace)
            .arg("--state-dir")
            .arg(dir.path())
            .args(&self.config.agent_args)
            // The token goes through the environment, not argv (visible in ps).
            .env("ORCA_AGENT_JOIN_TOKEN", &req.join_token)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0);
        match self.imds().await {
            Ok(addr) => {
                cmd.arg("--notices-endpoint")
                    .arg(imds::endpoint(addr, &req.node_name));
            }
            Err(e) => {
                warn!(node = %req.node_name, error = %e, "no metadata service: the host will not see interruption notices")
            }
        }
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, &req.ca_pem).map_err(|e| format!("{}: {e}", ca.display()))?;
        cmd.arg("--ca-file").arg(&ca);
        let size = req.size;
        if size.gpus > 0 {
            let cdi = gpus::write_cdi_spec(dir.path(), size.gpus as u32)
                .map_err(|e| format!("CDI spec: {e}"))?;
            cmd.arg("--cdi-dir").arg(cdi);
        }
        for (flag, value) in [
            ("cpu-millis", size.cpu_millis),
            ("memory-bytes", size.memory_bytes),
            ("gpus", size.gpus.into()),
            ("max-pods", size.pods.into()),
        ] {
            if value > 0 {
                cmd.arg(format!("--{flag}={value}"));
            }
        }
        if !self.config.insecure_registries.is_empty() {
            cmd.arg("--insecure-registry")
                .arg(self.config.insecure_registries.join(","));
        }
        let program = cmd.get_program().to_string_lossy().into_owned();
        let child = cmd.spawn().map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound if network.is_some() => {
                format!("{program}: {e} (apt-get install -y util-linux)")
            }
            _ => format!("{program}: {e}"),
        })?;
        // nsenter execs the agent (no --fork), so this is the agent's pid.
        let pid = child.id();
        dir.write_agent_pid(pid)
            .map_err(|e| format!("agent.pid: {e}"))?;
        // The child is reaped by a thread so it never lingers as a zombie.
        let node = req.node_name.clone();
        std::thread::spawn(move || {
            let mut child = child;
            match child.wait() {
                Ok(status) => info!(node = %node, pid, %status, "simulated host's agent exited"),
                Err(e) => warn!(node = %node, pid, error = %e, "agent not reaped"),
            }
        });
        info!(node = %req.node_name, pid, namespace = %namespace, listen = %listen,
            netns = network.as_ref().map_or("-", |n| n.netns.as_str()), "simulated host started");
        Ok(Instance {
            instance_id: Self::instance_id(&req.node_name),
            zone: None,
            image_id: None,
            capacity_reservation_id: None,
        })
    }
}

impl InstanceProvider for LocalProvider {
    fn name(&self) -> &'static str {
        "local"
    }

    fn prepare(&self) -> BoxFuture<'_, Result<Option<IpAddr>, ProviderError>> {
        Box::pin(async move {
            Ok(match self.mode().await {
                Mode::Namespaced => Some(IpAddr::V4(self.config.network.cidr.gateway())),
                Mode::Plain { .. } => None,
            })
        })
    }

    fn note(&self) -> Option<String> {
        match self.mode.get()? {
            Mode::Namespaced => None,
            Mode::Plain { reason } => Some(format!(
                "simulated host without a network namespace (shares 127.0.0.1): {reason}"
            )),
        }
    }

    fn launch(&self, req: LaunchRequest) -> BoxFuture<'_, Result<Instance, ProviderError>> {
        Box::pin(async move {
            match self.spawn(&req).await {
                Ok(instance) => Ok(instance),
                Err(reason) => {
                    // Nothing of a host that did not start is left behind.
                    if let Err(e) = self.fence(&req.node_name).await {
                        warn!(node = %req.node_name, error = %e, "half-launched host not cleaned up");
                    }
                    Err(ProviderError::Launch {
                        node: req.node_name.clone(),
                        reason,
                        code: None,
                        failure: super::LaunchFailure::Fatal,
                    })
                }
            }
        })
    }

    fn terminate(&self, instance_id: &str) -> BoxFuture<'_, Result<(), ProviderError>> {
        let instance_id = instance_id.to_owned();
        Box::pin(async move {
            let node = Self::node_of(&instance_id).ok_or_else(|| ProviderError::Terminate {
                instance_id: instance_id.clone(),
                reason: "not a local instance id".into(),
            })?;
            self.fence(node)
                .await
                .map_err(|reason| ProviderError::Terminate {
                    instance_id: instance_id.clone(),
                    reason,
                })
        })
    }

    fn local_volumes_dir(&self, node: &str) -> Option<std::path::PathBuf> {
        Some(HostDir::new(&self.hosts_dir, node).path().join("claims"))
    }

    fn fault(&self, instance_id: &str, fault: Fault) -> BoxFuture<'_, Result<(), ProviderError>> {
        let instance_id = instance_id.to_owned();
        Box::pin(async move {
            let err = |reason: String| ProviderError::Fault {
                instance_id: instance_id.clone(),
                fault,
                reason,
            };
            let node =
                Self::node_of(&instance_id).ok_or_else(|| err("not a local instance id".into()))?;
            self.inject(node, fault).await.map_err(err)
        })
    }
}
