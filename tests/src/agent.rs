//! One real `orca-agent` on a private containerd, driven directly through its
//! AgentService, for the agent's integration tests: any PodSpec, credentials and
//! volume data can be sent, and every state is read back from the agent and from
//! containerd. The agent is pointed at a control plane that is not there; it keeps
//! retrying its join and serves AgentService all the same.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use orca_proto::agent::v1::{self as pb, agent_service_client::AgentServiceClient};
use orca_proto::types::v1 as types;
use tempfile::TempDir;
use tonic::transport::Channel;

use crate::pki::{Issued, TestPki};

/// The node name of the test agent (its certificate names it).
pub const NODE: &str = "agent-test";

use crate::cluster::DEADLINE;
use crate::env::{self, Containerd, Daemon, Registry, workspace_bin};
use crate::eventually::eventually;

/// A running agent with its containerd and registry.
pub struct TestAgent {
    agent: Option<Daemon>,
    args: Vec<String>,
    /// The private containerd.
    pub containerd: Containerd,
    /// The registry serving [`TestAgent::image`].
    pub registry: Registry,
    /// The busybox image in the registry.
    pub image: String,
    /// A TLS registry with basic auth (user `orca`) and the image in it, when
    /// started with [`TestAgent::start_with_secured_registry`]; the agent trusts its CA.
    pub secured: Option<(Registry, String)>,
    /// `127.0.0.1:PORT` of AgentService.
    pub addr: String,
    /// The agent's containerd namespace.
    pub namespace: String,
    /// The agent's state directory (pod logs live under `pods/`).
    pub state_dir: PathBuf,
    /// The test CA that provisioned the agent's identity.
    pub pki: TestPki,
    /// The control plane's client certificate (the only one the agent accepts).
    pub control_plane_cert: Issued,
    dir: TempDir,
}

impl TestAgent {
    /// Starts containerd, the registry with the image, and an agent with short
    /// back-offs.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// As [`TestAgent::start`], with extra agent flags.
    pub fn start_with(extra: &[&str]) -> Self {
        Self::start_inner(extra, None)
    }

    /// Also starts a TLS registry with htpasswd auth for `orca`/`password`, holding
    /// the image as `secure/busybox:1`; the agent trusts its CA (`--registry-ca`).
    pub fn start_with_secured_registry(password: &str) -> Self {
        Self::start_inner(&[], Some(password))
    }

    fn start_inner(extra: &[&str], secured_password: Option<&str>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (containerd, registry, archive, image) =
            env::containerd_and_registry(dir.path()).expect("containerd, registry and image");
        let secured = secured_password.map(|password| {
            let tls =
                Registry::start_secured(dir.path(), "orca", password).expect("TLS registry starts");
            let image = tls
                .push_oci_archive(&archive, "secure/busybox:1")
                .expect("image pushed over TLS");
            (tls, image)
        });
        let addr = format!("127.0.0.1:{}", env::free_port());
        let namespace = format!("orca-agent-test-{}", std::process::id());
        let state_dir = dir.path().join("agent");
        // The agent's identity is provisioned, as after a join; its control plane
        // is not there, so heartbeats fail and are retried.
        let pki = TestPki::new(&dir.path().join("pki"));
        pki.provision_node(&state_dir, NODE, "agent-test-id");
        let control_plane_cert = pki.control_plane();
        let mut args: Vec<String> = [
            "--control-plane=https://127.0.0.1:1",
            "--node-name=agent-test",
            "--backoff-base-ms=200",
            "--backoff-max-ms=1000",
            "--retry-ms=1000",
        ]
        .map(String::from)
        .to_vec();
        // A flag given in `extra` replaces the default one.
        args.retain(|d| {
            let flag = d.split('=').next().unwrap_or_default();
            !extra.iter().any(|e| e.split('=').next() == Some(flag))
        });
        args.push(format!("--listen={addr}"));
        args.push(format!(
            "--containerd-socket={}",
            containerd.socket.display()
        ));
        args.push(format!("--containerd-namespace={namespace}"));
        args.push(format!("--state-dir={}", state_dir.display()));
        args.extend(extra.iter().map(|s| s.to_string()));
        if let Some((tls, _)) = &secured {
            let ca = &tls.secured.as_ref().expect("secured registry").ca;
            args.push(format!("--registry-ca={}={}", tls.addr, ca.display()));
        }
        let mut this = Self {
            agent: None,
            args,
            containerd,
            registry,
            image,
            secured,
            addr,
            namespace,
            state_dir,
            pki,
            control_plane_cert,
            dir,
        };
        this.spawn_agent();
        this
    }

    fn spawn_agent(&mut self) {
        let mut cmd = Command::new(workspace_bin("orca-agent"));
        cmd.args(&self.args)
            .env("RUST_LOG", "info,orca_agent=debug");
        let log = self.dir.path().join("agent.log");
        let mut agent = Daemon::spawn("orca-agent", cmd, &log).expect("agent starts");
        let addr = self.addr.clone();
        agent
            .wait_ready(DEADLINE, || TcpStream::connect(&addr).map(drop))
            .expect("agent listens");
        self.agent = Some(agent);
    }

    /// SIGKILLs the agent (its containers keep running in containerd) and starts it again.
    pub fn kill_and_restart_agent(&mut self) {
        if let Some(agent) = self.agent.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(agent.pid() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            drop(agent);
        }
        self.spawn_agent();
    }

    /// The agent's PID.
    pub fn pid(&self) -> u32 {
        self.agent.as_ref().map_or(0, Daemon::pid)
    }

    /// The agent's log.
    pub fn log(&self) -> String {
        self.agent
            .as_ref()
            .map(Daemon::log_tail)
            .unwrap_or_default()
    }

    /// A client of the agent, with the control plane's certificate.
    pub async fn client(&self) -> AgentServiceClient<Channel> {
        let tls = self.pki.client_config(Some(&self.control_plane_cert));
        let channel = orca_proto::tls::connect(&self.addr, Some(NODE), tls, DEADLINE)
            .await
            .expect("connect to the agent");
        AgentServiceClient::new(channel)
    }

    /// Runs a pod named `name` with this PodSpec (JSON); returns its uid.
    pub async fn run(&self, name: &str, spec: serde_json::Value) -> String {
        self.run_with(name, spec, Vec::new(), None).await
    }

    /// Runs a pod with credentials and volume data; returns its uid.
    pub async fn run_with(
        &self,
        name: &str,
        spec: serde_json::Value,
        registry_credentials: Vec<types::RegistryCredential>,
        volume_data: Option<types::VolumeData>,
    ) -> String {
        self.run_as(&uuid_like(), name, spec, registry_credentials, volume_data)
            .await
    }

    /// Runs a pod with a given uid (to send the same pod again); returns the uid.
    pub async fn run_as(
        &self,
        uid: &str,
        name: &str,
        spec: serde_json::Value,
        registry_credentials: Vec<types::RegistryCredential>,
        volume_data: Option<types::VolumeData>,
    ) -> String {
        let uid = uid.to_owned();
        let pod = types::Pod {
            r#ref: Some(types::PodRef {
                namespace: "default".into(),
                name: name.into(),
                uid: uid.clone(),
            }),
            spec_json: spec.to_string(),
            labels: [("app".to_owned(), name.to_owned())].into(),
            annotations: Default::default(),
        };
        let req = pb::RunPodRequest {
            pod: Some(pod),
            registry_credentials,
            volume_data,
        };
        self.client()
            .await
            .run_pod(req)
            .await
            .expect("RunPod accepted");
        uid
    }

    /// The pod's status as the agent reports it now.
    pub async fn status(&self, uid: &str) -> types::PodStatus {
        let req = pb::GetPodRequest { uid: uid.into() };
        let resp = self
            .client()
            .await
            .get_pod(req)
            .await
            .expect("GetPod")
            .into_inner();
        resp.pod.and_then(|p| p.status).unwrap_or_default()
    }

    /// Waits until `check` accepts the pod's status; panics with the last status and
    /// the agent's log otherwise.
    pub async fn wait_for(
        &self,
        uid: &str,
        what: &str,
        check: impl Fn(&types::PodStatus) -> bool,
    ) -> types::PodStatus {
        eventually(what, DEADLINE, || async {
            let status = self.status(uid).await;
            if check(&status) {
                Ok(status)
            } else {
                Err((status, self.log()))
            }
        })
        .await
    }

    /// Waits for a phase.
    pub async fn wait_phase(&self, uid: &str, phase: types::PodPhase) -> types::PodStatus {
        let what = format!("pod {uid} to be {phase:?}");
        let terminal = [
            types::PodPhase::Succeeded as i32,
            types::PodPhase::Failed as i32,
        ];
        let status = self
            .wait_for(uid, &what, |s| {
                s.phase == phase as i32 || terminal.contains(&s.phase)
            })
            .await;
        assert_eq!(
            status.phase, phase as i32,
            "pod {uid} ended in another phase: {status:?}"
        );
        status
    }

    /// Stops and removes a pod.
    pub async fn stop(&self, uid: &str, grace_seconds: i64) -> types::PodStatus {
        let req = pb::StopPodRequest {
            uid: uid.into(),
            grace_period_seconds: grace_seconds,
            remove: true,
        };
        self.client()
            .await
            .stop_pod(req)
            .await
            .expect("StopPod")
            .into_inner()
            .status
            .unwrap_or_default()
    }

    /// A container's log, read through the agent.
    pub async fn logs(&self, uid: &str, container: &str, previous: bool) -> String {
        let req = pb::LogsRequest {
            uid: uid.into(),
            container: container.into(),
            previous,
            ..Default::default()
        };
        let mut stream = self
            .client()
            .await
            .logs(req)
            .await
            .expect("Logs")
            .into_inner();
        let mut out = Vec::new();
        while let Some(chunk) = stream.message().await.expect("log chunk") {
            out.extend_from_slice(&chunk.data);
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// `ctr -n <agent namespace> ARGS` output.
    pub fn ctr(&self, args: &[&str]) -> String {
        self.containerd.ctr(&self.namespace, args).expect("ctr")
    }

    /// Waits until containerd lists the task of container `id` with `status`
    /// (`RUNNING`, `STOPPED`, ...).
    pub async fn wait_task(&self, id: &str, status: &str) {
        let what = format!("task {id} to be {status}");
        eventually(&what, DEADLINE, || async {
            let tasks = self.ctr(&["tasks", "ls"]);
            let found = tasks
                .lines()
                .any(|l| l.split_whitespace().next() == Some(id) && l.contains(status));
            if found { Ok(()) } else { Err(tasks) }
        })
        .await
    }

    /// The containerd id of a container in a status.
    pub fn container_id(status: &types::PodStatus, name: &str) -> String {
        status
            .container_statuses
            .iter()
            .chain(&status.init_container_statuses)
            .find(|c| c.name == name)
            .map(|c| {
                c.container_id
                    .trim_start_matches("containerd://")
                    .to_owned()
            })
            .unwrap_or_default()
    }

    /// The temp dir.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        self.agent.take();
        // Pods' namespace holders live in their own process groups, as they must
        // to outlive an agent restart: end them with the test.
        env::kill_pid_files(&self.state_dir, "pause.pid");
        // tmpfs volumes of pods the test left running: the agent unmounts them
        // only when it stops a pod, and the temporary directory cannot go with them.
        env::unmount_under(&self.state_dir);
    }
}

/// A fresh random uid in UUID form (from the kernel, no extra dependency).
fn uuid_like() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| {
            format!(
                "{:032x}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos()
            )
        })
}

/// How long tests give a state to appear.
pub const WAIT: Duration = DEADLINE;
