//! A whole standalone ORCA on real parts, for end-to-end tests and benchmarks:
//! a private containerd, a registry serving the busybox image, and the real
//! `orca-control-plane` binary with the `local` provider, driven through the
//! real `orca` CLI. Everything lives in one temp dir and is torn down on drop:
//! simulated hosts (agents) first, then the control plane, the hosts' network
//! namespaces (every process left in them), veths and bridge, containerd's
//! tasks, containerd, the registry.
//!
//! Each cluster has its own bridge and /24 ([`network`]); its hosts live in
//! network namespaces on it and pull the image through the bridge address (the
//! registry listens on every address). Where namespaces are unavailable the
//! provider falls back to plain processes and the image is the loopback one.

pub mod network;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;

use orca_control_plane::cloud::local::LocalProvider;
use orca_control_plane::cloud::netns::HostNetwork;
use orca_control_plane::config::{Config, Provider};

use crate::env::{self, Containerd, Daemon, Registry, workspace_bin};
use crate::eventually::eventually_blocking;
pub use network::ClusterNetwork;

/// Generous deadline for anything the tests wait on (the machine has 2 noisy cores).
pub const DEADLINE: Duration = Duration::from_secs(60);

/// A running standalone cluster.
pub struct TestCluster {
    control_plane: Option<Daemon>,
    /// The private containerd.
    pub containerd: Containerd,
    /// The registry serving [`TestCluster::image`]; its `addr` is the one hosts
    /// reach (the gateway's, when they have namespaces).
    pub registry: Registry,
    /// Fully qualified reference of the busybox image in the registry, as hosts reach it.
    pub image: String,
    /// The hosts' bridge and network.
    pub network: ClusterNetwork,
    /// Whether hosts have network namespaces (false: the provider fell back to
    /// plain processes on 127.0.0.1).
    pub namespaced: bool,
    /// AdminService / NodeService URL (`https://127.0.0.1:PORT`).
    pub server: String,
    /// `127.0.0.1:PORT` of the control plane, for grpcurl.
    pub addr: String,
    /// containerd namespace prefix; node `n` uses `<prefix>-<n>`.
    pub prefix: String,
    credentials: PathBuf,
    config_path: PathBuf,
    data_dir: PathBuf,
    dir: TempDir,
}

impl TestCluster {
    /// Starts containerd, the registry (with the image pushed) and a control plane
    /// whose agents restart crashed containers after `backoff_ms`.
    pub fn start() -> Self {
        Self::start_with(&[
            "--backoff-base-ms=200",
            "--backoff-max-ms=1000",
            "--retry-ms=100",
        ])
    }

    /// As [`TestCluster::start`], with these extra flags for every agent.
    pub fn start_with(agent_args: &[&str]) -> Self {
        Self::start_configured(agent_args, "")
    }

    /// As [`TestCluster::start_with`], with extra top-level YAML for the control
    /// plane's config (fields given there replace the defaults below).
    pub fn start_configured(agent_args: &[&str], extra_yaml: &str) -> Self {
        Self::start_inner(agent_args, extra_yaml, None, "")
    }

    /// As [`TestCluster::start_configured`], with more fields in the local
    /// provider's section (each line indented four spaces, e.g.
    /// `"    usd_per_hour: 36\n"`).
    pub fn start_local(agent_args: &[&str], extra_yaml: &str, local_yaml: &str) -> Self {
        Self::start_inner(agent_args, extra_yaml, None, local_yaml)
    }

    /// A cluster whose provider section is `provider_yaml` (indented under
    /// `provider:`, e.g. `  ec2:\n    ami: ...\n`) instead of the local one;
    /// `extra_yaml` as for [`TestCluster::start_configured`]. Its hosts, if any,
    /// are started by the test (e.g. an `InstancePlayer`) with this cluster's
    /// containerd and registry (reached at 127.0.0.1).
    pub fn start_with_provider(extra_yaml: &str, provider_yaml: &str) -> Self {
        Self::start_inner(&[], extra_yaml, Some(provider_yaml), "")
    }

    fn start_inner(
        agent_args: &[&str],
        extra_yaml: &str,
        provider_yaml: Option<&str>,
        local_yaml: &str,
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let network = ClusterNetwork::pick();
        // On every address: hosts in namespaces pull through the gateway.
        let (containerd, registry, _, image) =
            env::containerd_and_registry_on(dir.path(), Ipv4Addr::UNSPECIFIED.into())
                .expect("containerd, registry and image");
        let via_gateway = format!("{}:{}", network.gateway, registry.port());
        let port = env::free_port();
        let addr = format!("127.0.0.1:{port}");
        let data_dir = dir.path().join("orca");
        let prefix = format!("orca-e2e-{}", std::process::id());
        let args: Vec<String> = agent_args.iter().map(|a| format!("\"{a}\"")).collect();
        let defaults = [
            ("heartbeat_interval_ms", "200"),
            ("suspect_after_ms", "1000"),
            ("not_ready_after_ms", "2000"),
            ("lost_after_ms", "4000"),
            ("reconcile_interval_ms", "100"),
            ("pending_timeout_ms", "20000"),
            ("agent_call_timeout_ms", "2000"),
            // Any free port: tests run in parallel. metrics_url() finds it.
            ("metrics_listen", "127.0.0.1:0"),
        ];
        let mut config = format!("listen: {addr}\ndata_dir: {}\n", data_dir.display());
        for (k, v) in defaults {
            if !extra_yaml.lines().any(|l| l.starts_with(&format!("{k}:"))) {
                config.push_str(&format!("{k}: {v}\n"));
            }
        }
        config.push_str(extra_yaml);
        if let Some(provider) = provider_yaml {
            config.push_str("provider:\n");
            config.push_str(provider);
        } else {
            config.push_str(&format!(
            "provider:\n  local:\n    \
             agent_binary: {}\n    containerd_socket: {}\n    containerd_namespace_prefix: {prefix}\n    \
             agent_args: [{}]\n    insecure_registries: [\"{via_gateway}\"]\n    \
             network:\n      bridge: {}\n      cidr: {}\n",
            workspace_bin("orca-agent").display(),
            containerd.socket.display(),
            args.join(", "),
                network.bridge,
                network.cidr,
            ));
            config.push_str(local_yaml);
        }
        let config_path = dir.path().join("orca.yaml");
        std::fs::write(&config_path, config).expect("write config");
        let mut this = Self {
            control_plane: None,
            containerd,
            registry,
            image,
            network,
            namespaced: false,
            server: format!("https://{addr}"),
            addr,
            prefix,
            credentials: data_dir.join("admin.yaml"),
            config_path,
            data_dir,
            dir,
        };
        this.start_control_plane();
        // The provider made the bridge before serving, unless it fell back.
        this.namespaced = Path::new("/sys/class/net")
            .join(&this.network.bridge)
            .exists();
        if this.namespaced {
            this.image = this.image.replacen(&this.registry.addr, &via_gateway, 1);
            this.registry.addr = via_gateway;
        }
        this
    }

    /// Starts the control plane (again) and waits until `orca` gets answers.
    pub fn start_control_plane(&mut self) {
        let mut cmd = Command::new(workspace_bin("orca-control-plane"));
        cmd.arg("--config")
            .arg(&self.config_path)
            .env("RUST_LOG", "info,orca_control_plane=debug");
        let log = self.dir.path().join("control-plane.log");
        let mut cp = Daemon::spawn("orca-control-plane", cmd, &log).expect("control plane starts");
        let orca = workspace_bin("orca");
        let credentials = self.credentials.clone();
        cp.wait_ready(DEADLINE, || {
            let out = Command::new(&orca)
                .arg("--config")
                .arg(&credentials)
                .args(["node", "list"])
                .output();
            match out {
                Ok(o) if o.status.success() => Ok(()),
                Ok(o) => Err(String::from_utf8_lossy(&o.stderr).into_owned()),
                Err(e) => Err(e.to_string()),
            }
        })
        .expect("control plane answers");
        self.control_plane = Some(cp);
    }

    /// SIGKILLs the control plane (no draining, no flushing beyond what it
    /// flushed before acknowledging).
    pub fn kill_control_plane(&mut self) {
        if let Some(cp) = self.control_plane.take() {
            let _ = kill(Pid::from_raw(cp.pid() as i32), Signal::SIGKILL);
            drop(cp);
        }
    }

    /// The control plane's PID.
    pub fn control_plane_pid(&self) -> Option<u32> {
        self.control_plane.as_ref().map(Daemon::pid)
    }

    /// The CLI credentials file the control plane wrote.
    pub fn credentials(&self) -> &Path {
        &self.credentials
    }

    /// An AdminService client with the cluster's credentials, as `orca` uses.
    pub async fn admin(&self) -> orca_cli::Admin {
        orca_cli::connect(Some(&self.credentials), None)
            .await
            .expect("admin client")
    }

    /// A NodeService client over TLS, presenting `cert` (certificate and key
    /// PEM) when given, as an agent would.
    pub async fn node_client(
        &self,
        cert: Option<(&str, &str)>,
    ) -> orca_proto::controlplane::v1::node_service_client::NodeServiceClient<
        tonic::transport::Channel,
    > {
        let ca = std::fs::read_to_string(self.data_dir.join("ca.pem")).expect("ca.pem");
        let slot = cert.map(|(c, k)| orca_proto::tls::CertSlot::new(c, k).expect("cert"));
        let tls = orca_proto::tls::client_config(&ca, slot).expect("tls");
        let channel = orca_proto::tls::connect(&self.server, None, tls, DEADLINE)
            .await
            .expect("connect to the control plane");
        orca_proto::controlplane::v1::node_service_client::NodeServiceClient::new(channel)
    }

    /// The identity (certificate, key) node `node`'s agent keeps (waiting for
    /// it: the agent writes it once Join has answered, which is also when the
    /// node turns Ready).
    pub fn node_identity(&self, node: &str) -> (String, String) {
        let dir = self.data_dir.join("hosts").join(node).join("identity");
        eventually_blocking(&format!("node {node}'s identity files"), DEADLINE, || {
            let read = |f: &str| std::fs::read_to_string(dir.join(f));
            match (read("cert.pem"), read("key.pem")) {
                (Ok(cert), Ok(key)) => Ok((cert, key)),
                (cert, key) => Err(format!("{:?} {:?}", cert.err(), key.err())),
            }
        })
    }

    /// Registers an external node and returns its join token.
    pub fn external_token(&self, node: &str) -> String {
        let out = self.orca_ok(&["node", "add", node, "--external"]);
        out.split_whitespace()
            .find_map(|w| w.strip_prefix("ORCA_AGENT_JOIN_TOKEN="))
            .unwrap_or_else(|| panic!("token in {out}"))
            .to_owned()
    }

    /// Waits until node `name` is Ready (a busy machine may delay a heartbeat
    /// past `suspect_after` for a moment; Ready is where a healthy node returns).
    pub fn wait_node_ready(&self, name: &str) -> serde_json::Value {
        eventually_blocking(&format!("node {name} to be Ready"), DEADLINE, || {
            let n = self.node(name);
            if n["state"] == "Ready" { Ok(n) } else { Err(n) }
        })
    }

    /// A node as `orca node get NAME -o json` shows it.
    pub fn node(&self, name: &str) -> serde_json::Value {
        let out = self.orca_ok(&["node", "get", name, "-o", "json"]);
        serde_json::from_str(&out).expect("orca prints JSON")
    }

    /// `http://ADDR` of the control plane's metrics endpoint (`/metrics`,
    /// `/healthz`), from the `metrics.addr` it writes in its data directory
    /// once bound (before it serves gRPC, so as soon as it has started).
    pub fn metrics_url(&self) -> String {
        let path = self.data_dir.join(orca_control_plane::metrics::ADDR_FILE);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (is metrics_listen off?)\n--- control plane log ---\n{}",
                path.display(),
                self.control_plane_log()
            )
        });
        let mut addr: std::net::SocketAddr = text
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{}: {text:?}: {e}", path.display()));
        if addr.ip().is_unspecified() {
            addr.set_ip(Ipv4Addr::LOCALHOST.into());
        }
        format!("http://{addr}")
    }

    /// The control plane's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Points the control plane at the data directory `dir` from its next
    /// start on (one a backup was restored into). The simulated hosts' state is
    /// their disks, not the control plane's: it stays where it is, and `dir`
    /// gets a `hosts` link to it. `orca` keeps using the credentials file it
    /// was given at the start.
    pub fn use_data_dir(&mut self, dir: &Path) {
        let config = std::fs::read_to_string(&self.config_path).expect("read config");
        let line = |d: &Path| format!("data_dir: {}\n", d.display());
        assert!(config.contains(&line(&self.data_dir)), "{config}");
        let config = config.replacen(&line(&self.data_dir), &line(dir), 1);
        std::fs::write(&self.config_path, config).expect("write config");
        let (hosts, link) = (self.data_dir.join("hosts"), dir.join("hosts"));
        if hosts.exists() && !link.exists() {
            std::os::unix::fs::symlink(&hosts, &link).expect("link the hosts' state");
        }
        self.data_dir = dir.to_owned();
    }

    /// A `local` provider over this cluster's hosts (same config and data
    /// directory as the control plane's), to inject faults or terminate hosts.
    pub fn provider(&self) -> LocalProvider {
        let config = Config::load(&self.config_path).expect("the cluster's config loads");
        let Provider::Local(local) = config.provider else {
            panic!("the cluster's provider is local")
        };
        LocalProvider::new(local, self.data_dir.join("hosts"))
    }

    /// The network of node `node`'s host (namespace, veth, address), once launched.
    pub fn host_network(&self, node: &str) -> Option<HostNetwork> {
        self.provider().host_network(node)
    }

    /// The instance id of node `node`.
    pub fn instance_id(node: &str) -> String {
        LocalProvider::instance_id(node)
    }

    /// The temp dir everything lives in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The containerd namespace of node `node`.
    pub fn namespace(&self, node: &str) -> String {
        format!("{}-{node}", self.prefix)
    }

    /// `orca ARGS` against this cluster, to spawn or run.
    pub fn orca_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(workspace_bin("orca"));
        cmd.arg("--config").arg(&self.credentials).args(args);
        cmd
    }

    /// Runs `orca ARGS` against this cluster.
    pub fn orca(&self, args: &[&str]) -> Output {
        self.orca_command(args).output().expect("run orca")
    }

    /// Runs `orca ARGS`, asserts it succeeded, returns its stdout.
    pub fn orca_ok(&self, args: &[&str]) -> String {
        let out = self.orca(args);
        assert!(
            out.status.success(),
            "orca {args:?} failed: {}\n--- control plane log ---\n{}\n--- agent logs ---\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.control_plane_log(),
            self.agent_logs_tail(),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The pod as `orca get pod NAME -o json` shows it.
    pub fn pod(&self, name: &str) -> serde_json::Value {
        let out = self.orca_ok(&["get", "pod", name, "-o", "json"]);
        serde_json::from_str(&out).expect("orca prints JSON")
    }

    /// Waits until the pod's phase is `phase`; panics with the pod if it never is.
    pub fn wait_phase(&self, name: &str, phase: &str) -> serde_json::Value {
        eventually_blocking(&format!("pod {name} to be {phase}"), DEADLINE, || {
            let pod = self.pod(name);
            if pod["phase"] == phase {
                Ok(pod)
            } else {
                Err(pod)
            }
        })
    }

    /// Waits until no task of `node`'s containerd namespace is RUNNING (`what`
    /// names the wait); panics with the tasks if one still is at the deadline.
    pub fn wait_nothing_running(&self, node: &str, what: &str) {
        eventually_blocking(what, DEADLINE, || {
            let tasks = self.tasks(node);
            if tasks.iter().any(|(_, status)| status == "RUNNING") {
                Err(tasks)
            } else {
                Ok(())
            }
        });
    }

    /// Tasks of a node's containerd namespace: `(container id, status)`.
    pub fn tasks(&self, node: &str) -> Vec<(String, String)> {
        let out = self
            .containerd
            .ctr(&self.namespace(node), &["tasks", "ls"])
            .unwrap_or_default();
        out.lines()
            .skip(1)
            .filter_map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                Some((cols.first()?.to_string(), cols.get(2)?.to_string()))
            })
            .collect()
    }

    /// Adds hosts `a` and `b` and runs each `(pod, restartPolicy)` (`sleep 3600`)
    /// on `a`, keeping `b` cordoned while they are placed; `b` is schedulable
    /// again afterwards. Returns the pods as `orca get pod -o json` shows them.
    pub fn pods_on_first_of_two(
        &self,
        a: &str,
        b: &str,
        pods: &[(&str, &str)],
    ) -> Vec<serde_json::Value> {
        self.orca_ok(&["node", "add", a]);
        self.orca_ok(&["node", "add", b]);
        self.orca_ok(&["node", "cordon", b]);
        for (pod, restart) in pods {
            self.orca_ok(&[
                "run",
                pod,
                "--image",
                &self.image,
                "--restart",
                restart,
                "--",
                "sleep",
                "3600",
            ]);
        }
        let running: Vec<serde_json::Value> = pods
            .iter()
            .map(|(pod, _)| self.wait_phase(pod, "Running"))
            .collect();
        for pod in &running {
            assert_eq!(pod["node"], a, "{b} is cordoned: {pod}");
        }
        self.orca_ok(&["node", "uncordon", b]);
        running
    }

    /// PID of the (first) container of `pod` (as `orca get pod -o json` showed
    /// it) in node `node`'s containerd namespace, if its task is there.
    pub fn container_pid(&self, node: &str, pod: &serde_json::Value) -> Option<u32> {
        let id = pod["containerStatuses"][0]["containerID"]
            .as_str()?
            .trim_start_matches("containerd://")
            .to_owned();
        let out = self
            .containerd
            .ctr(&self.namespace(node), &["tasks", "ls"])
            .ok()?;
        out.lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|cols| cols.first() == Some(&id.as_str()))
            .and_then(|cols| cols.get(1)?.parse().ok())
    }

    /// Container ids of a node's containerd namespace.
    pub fn containers(&self, node: &str) -> Vec<String> {
        let out = self
            .containerd
            .ctr(&self.namespace(node), &["containers", "ls", "-q"])
            .unwrap_or_default();
        out.lines().map(str::to_owned).collect()
    }

    /// PIDs of the simulated hosts' agents, from their pid files.
    pub fn agent_pids(&self) -> Vec<u32> {
        let hosts = self.data_dir.join("hosts");
        std::fs::read_dir(hosts)
            .map(|d| {
                d.filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("agent.pid")).ok())
                    .filter_map(|p| p.trim().parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The control plane's log.
    pub fn control_plane_log(&self) -> String {
        self.control_plane
            .as_ref()
            .map(Daemon::log_tail)
            .unwrap_or_default()
    }

    /// The log of node `node`'s agent.
    pub fn agent_log(&self, node: &str) -> String {
        std::fs::read_to_string(self.data_dir.join("hosts").join(node).join("agent.log"))
            .unwrap_or_default()
    }

    /// The last lines of every agent's log.
    pub fn agent_logs_tail(&self) -> String {
        let Ok(hosts) = std::fs::read_dir(self.data_dir.join("hosts")) else {
            return String::new();
        };
        hosts
            .filter_map(|h| {
                let name = h.ok()?.file_name().to_string_lossy().into_owned();
                let log = self.agent_log(&name);
                let lines: Vec<&str> = log.lines().collect();
                Some(format!(
                    "[{name}]\n{}",
                    lines[lines.len().saturating_sub(30)..].join("\n")
                ))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// SIGTERMs the control plane and returns how it exited.
    pub fn stop_control_plane(&mut self) -> Option<ExitStatus> {
        self.control_plane.as_mut()?.terminate(DEADLINE)
    }
}

/// Every file called `name` under `dir`, at any depth.
pub fn files_named(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.is_dir() {
            found.extend(files_named(&path, name));
        } else if path.file_name().is_some_and(|n| n == name) {
            found.push(path);
        }
    }
    found
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for pid in self.agent_pids() {
            if let Ok(raw) = i32::try_from(pid) {
                let _ = kill(Pid::from_raw(raw), Signal::SIGKILL);
            }
        }
        self.control_plane.take();
        crate::env::kill_pid_files(&self.data_dir, "pause.pid");
        self.network.teardown();
    }
}
