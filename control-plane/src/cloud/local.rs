//! The `local` provider: each node is an `orca-agent` process on this machine,
//! sharing one containerd (each in its own containerd namespace).
//!
//! Agents run in their own process group, so they outlive a control plane that
//! stops (as EC2 instances would) and reconnect when it returns. Each host keeps
//! its state, logs and pid file under `<data_dir>/hosts/<node>/`.
//! Network namespaces per host come with the control-plane core issue.

use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tracing::info;

use super::{BoxFuture, Instance, InstanceProvider, LaunchRequest, ProviderError};
use crate::config::LocalProvider as LocalConfig;

/// How long a terminated agent gets to exit on SIGTERM before SIGKILL.
const AGENT_STOP_GRACE: Duration = Duration::from_secs(5);

/// Instance ids look like `local-<pid>`.
const ID_PREFIX: &str = "local-";

/// Simulated hosts on this machine.
pub struct LocalProvider {
    config: LocalConfig,
    hosts_dir: PathBuf,
}

impl LocalProvider {
    /// A provider keeping host state under `hosts_dir`.
    pub fn new(config: LocalConfig, hosts_dir: PathBuf) -> Self {
        Self { config, hosts_dir }
    }

    fn spawn(&self, req: &LaunchRequest) -> Result<Instance, String> {
        let dir = self.hosts_dir.join(&req.node_name);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let log =
            std::fs::File::create(dir.join("agent.log")).map_err(|e| format!("agent.log: {e}"))?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let namespace = format!("{}-{}", self.config.namespace_prefix, req.node_name);
        let mut cmd = Command::new(&self.config.agent_binary);
        cmd.arg("--control-plane")
            .arg(&req.control_plane_url)
            .arg("--node-name")
            .arg(&req.node_name)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--containerd-socket")
            .arg(&self.config.containerd_socket)
            .arg("--containerd-namespace")
            .arg(&namespace)
            .arg("--state-dir")
            .arg(&dir)
            .args(&self.config.agent_args)
            // The token goes through the environment, not argv (visible in ps).
            .env("ORCA_AGENT_JOIN_TOKEN", &req.join_token)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0);
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, &req.ca_pem).map_err(|e| format!("{}: {e}", ca.display()))?;
        cmd.arg("--ca-file").arg(&ca);
        let size = req.size;
        if size.cpu_millis > 0 {
            cmd.arg(format!("--cpu-millis={}", size.cpu_millis));
        }
        if size.memory_bytes > 0 {
            cmd.arg(format!("--memory-bytes={}", size.memory_bytes));
        }
        if size.gpus > 0 {
            cmd.arg(format!("--gpus={}", size.gpus));
        }
        if size.pods > 0 {
            cmd.arg(format!("--max-pods={}", size.pods));
        }
        if !self.config.insecure_registries.is_empty() {
            cmd.arg("--insecure-registry")
                .arg(self.config.insecure_registries.join(","));
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("{}: {e}", self.config.agent_binary.display()))?;
        let pid = child.id();
        std::fs::write(dir.join("agent.pid"), pid.to_string())
            .map_err(|e| format!("agent.pid: {e}"))?;
        // The child is reaped by a thread so it never lingers as a zombie.
        let node = req.node_name.clone();
        std::thread::spawn(move || {
            let mut child = child;
            match child.wait() {
                Ok(status) => info!(node = %node, pid, %status, "simulated host's agent exited"),
                Err(e) => tracing::warn!(node = %node, pid, error = %e, "agent not reaped"),
            }
        });
        info!(node = %req.node_name, pid, namespace = %namespace, "simulated host started");
        Ok(Instance {
            instance_id: format!("{ID_PREFIX}{pid}"),
            note: String::new(),
        })
    }
}

fn alive(pid: Pid) -> bool {
    kill(pid, None).is_ok()
}

impl InstanceProvider for LocalProvider {
    fn name(&self) -> &'static str {
        "local"
    }

    fn launch(&self, req: LaunchRequest) -> BoxFuture<'_, Result<Instance, ProviderError>> {
        Box::pin(async move {
            self.spawn(&req).map_err(|reason| ProviderError::Launch {
                node: req.node_name.clone(),
                reason,
            })
        })
    }

    fn terminate(&self, instance_id: &str) -> BoxFuture<'_, Result<(), ProviderError>> {
        let instance_id = instance_id.to_owned();
        Box::pin(async move {
            let err = |reason: String| ProviderError::Terminate {
                instance_id: instance_id.clone(),
                reason,
            };
            let raw: i32 = instance_id
                .strip_prefix(ID_PREFIX)
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| err("not a local instance id".into()))?;
            let pid = Pid::from_raw(raw);
            if !alive(pid) {
                return Ok(());
            }
            kill(pid, Signal::SIGTERM).map_err(|e| err(e.to_string()))?;
            let deadline = tokio::time::Instant::now() + AGENT_STOP_GRACE;
            while alive(pid) && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if alive(pid) {
                let _ = kill(pid, Signal::SIGKILL);
            }
            info!(instance = %instance_id, "simulated host stopped");
            Ok(())
        })
    }
}
