//! The ORCA node agent.
//!
//! Baked into the AMI (or started by the `local` provider as a simulated host),
//! the agent joins the control plane with a single-use token, runs the pods it is
//! given on this host's containerd through containerd's gRPC API, and reports in
//! heartbeats only what it observed from containerd: a pod is Running because
//! containerd said its task runs, never because it was asked to run.
//!
//! # Layout
//! - [`config`]: flags, validated into a config that names bad fields.
//! - [`spec`]: Kubernetes container → OCI runtime spec (pure, unit-tested);
//!   [`spec::security`] for capabilities and privileged mode.
//! - [`runtime`]: the containerd seam: image pulls ([`runtime::pull`], with
//!   [`runtime::reference`] parsing), containers and tasks ([`runtime::task`]),
//!   exec processes ([`runtime::exec`]).
//! - [`pods`]: the pod lifecycle like the kubelet's: init containers, one
//!   supervisor per container (pull back-off, restarts with back-off, OOM kills),
//!   probes, preStop hooks, activeDeadlineSeconds, the shared IPC/UTS/network
//!   namespaces (`orca-pause`), stop, and adoption after an agent restart.
//! - [`probes`]: liveness, readiness and startup probe handlers and thresholds.
//! - [`volumes`]: pod volumes on the host and their mounts.
//! - [`cgroup`]: what the kernel says of a container's cgroup (OOM kills, CPU
//!   and memory usage), v1 and v2.
//! - [`status`]: observed states and the pod phase (Kubernetes' rules).
//! - [`logs`]: CRI log files: the logger the shim runs (with rotation), and the reader.
//! - [`imds`]: IMDSv2 (session token, then user data and instance id) and ORCA's
//!   boot data in the user data; for agents on EC2 (their boot wiring comes with
//!   the EC2 provider).
//! - [`interruption`]: spot interruption, rebalance and scheduled-maintenance
//!   notices polled from IMDS, reported in heartbeats and handed to the pods
//!   (the checkpoint handshake lives in `pods::interrupt`).
//! - [`deadman`]: the dead-man's switch (power off when the control plane has
//!   been silent too long and nothing runs).
//! - [`server`]: the AgentService gRPC server.
//! - [`rpc`]: what the gRPC edge shares: pod manager errors as gRPC codes, the
//!   response stream type.
//! - [`streams`]: logs (read and followed), exec and attach sessions.
//! - [`portforward`]: a TCP connection to a pod's port (on the agent's loopback,
//!   which is the pod's) relayed over a gRPC stream, half-closes included.
//! - [`stats`]: CPU and memory usage of the node (`/proc`) and of each running
//!   container (its cgroup), for the kubelet API's stats and metrics.
//! - [`join`]: the node's identity (join with a token, certificate renewal).
//! - [`heartbeat`]: heartbeats over mutual TLS.
//! - [`gpu`]: GPU telemetry sources (NVML, a replaying fake, none), device
//!   health from XID errors, allocation, and CDI device injection.
//!
//! Binaries: `orca-agent` (the daemon), `orca-logger` (started by containerd's
//! shim per task; writes the CRI log files), `orca-pause` (holds a pod's IPC and
//! UTS namespaces, and pins the agent's network namespace for the pod).
//!
//! # Departures from the kubelet, on purpose
//! - Image pulls are retried with the kubelet's back-off (ErrImagePull, then
//!   ImagePullBackOff) but only `--image-pull-attempts` times; then the pod fails
//!   with ErrImagePull instead of staying Pending forever.
//! - A pod's shared namespaces are held by a small `orca-pause` process rather
//!   than a pause container (no image to pull, nothing to schedule).
//! - An adopted pod (after an agent restart) has lost the registry credentials it
//!   came with (secrets are never written to disk) and the activeDeadlineSeconds
//!   timer restarts from the adoption.
//!
//! # Current limitations
//! Pod specs that ask for what is not built (postStart hooks, `env.valueFrom` and
//! `envFrom` until the control plane resolves them, tty/stdin, HTTPS probes) fail
//! with reason `InvalidPodSpec` naming the field rather than being half-run.
//! Containers share the host's network namespace: they join the network
//! namespace of their pod's `orca-pause` process, which is the agent's (on a
//! simulated host, the host's namespace; on EC2, the instance's: pod IP = host IP).

pub mod cgroup;
pub mod config;
pub mod deadman;
pub mod gpu;
pub mod heartbeat;
pub mod imds;
pub mod interruption;
pub mod join;
pub mod logs;
pub mod node_ports;
pub mod pods;
pub mod portforward;
pub mod probes;
pub mod rpc;
pub mod runtime;
pub mod server;
pub mod spec;
pub mod stats;
pub mod status;
pub mod streams;
pub mod volumes;

use std::future::Future;

use orca_proto::agent::v1::agent_service_server::AgentServiceServer;
use orca_proto::types::v1::Resources;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::config::Config;
use crate::pods::{Layout, PodManager, Timings};
use crate::runtime::Containerd;

/// The gRPC services the agent serves (besides health and reflection).
const SERVICES: &[&str] = &["orca.agent.v1.AgentService"];

/// Errors that stop the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// containerd could not be reached.
    #[error(transparent)]
    Runtime(#[from] runtime::RuntimeError),
    /// The node has no identity and cannot join.
    #[error(transparent)]
    Join(#[from] join::JoinError),
    /// The gRPC server failed.
    #[error("agent server failed")]
    Serve(#[source] tonic::transport::Error),
    /// Local IO failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Runs the agent on an already-bound listener until `shutdown` resolves, then
/// drains in-flight calls and returns. Pods keep running: they belong to containerd.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let flags = &config.flags;
    let local = listener.local_addr().map_err(|source| AgentError::Io {
        what: "listener address".into(),
        source,
    })?;
    let advertise = flags.advertise.clone().unwrap_or_else(|| local.to_string());
    let ctrd = Containerd::connect(&flags.containerd_socket, &flags.containerd_namespace).await?;
    let host_ip = advertise
        .rsplit_once(':')
        .map_or(advertise.clone(), |(h, _)| h.to_owned());
    let layout = Layout {
        pod_dir: flags.state_dir.join("pods"),
        logger: config.logger.clone(),
        pause: config.pause.clone(),
        log_rotation: logs::Rotation {
            max_bytes: flags.log_max_bytes,
            max_files: flags.log_max_files,
        },
        node_name: flags.node_name.clone(),
        node_cpu_millis: capacity(flags).cpu_millis.max(0) as u64,
        node_memory_bytes: capacity(flags).memory_bytes.max(0) as u64,
        host_ip,
        cdi_dirs: flags.cdi_dirs.clone(),
        gpu_wait: std::time::Duration::from_millis(flags.gpu_wait_ms),
        ebs_device_dir: flags.ebs_device_dir.clone(),
        volume_attach_wait: std::time::Duration::from_millis(flags.volume_attach_wait_ms),
        pids_limit: (flags.pids_limit > 0).then_some(i64::from(flags.pids_limit)),
        host_path_allow: flags.host_path_allow.clone(),
    };
    let timings = Timings {
        backoff_base: config.backoff_base,
        backoff_max: config.backoff_max,
        backoff_reset: config.backoff_reset,
        pull_attempts: flags.image_pull_attempts,
    };
    let registries = runtime::pull::RegistryAccess {
        insecure: flags.insecure_registries.clone(),
        ca_pems: config.registry_cas.clone(),
    };
    let gpus = gpu::monitor::Monitor::spawn(
        gpu::open(&config.gpu_source()),
        std::time::Duration::from_millis(flags.gpu_sample_ms),
    );
    let pods = PodManager::new(ctrd, registries, layout, timings, gpus.clone());
    let adopted = pods.adopt().await;
    if adopted > 0 {
        info!(adopted, "adopted the pods of a previous agent process");
    }

    let spec = join::JoinSpec {
        control_plane: flags.control_plane.clone(),
        ca_pem: config.ca_pem.clone(),
        token: flags.join_token.clone(),
        node_name: flags.node_name.clone(),
        agent_address: advertise.clone(),
        capacity: capacity(flags),
    };
    let identity_dir = flags.state_dir.join("identity");
    tokio::pin!(shutdown);
    let identity = match join::Identity::load(&identity_dir)? {
        Some(identity) => {
            info!(node_id = %identity.node_id, "using the identity of an earlier join");
            identity
        }
        None => loop {
            match join::Identity::join(&spec, &identity_dir).await {
                Ok(identity) => {
                    info!(node = %flags.node_name, node_id = %identity.node_id, "joined");
                    break identity;
                }
                Err(e @ join::JoinError::Missing(_)) => return Err(e.into()),
                Err(e) => {
                    warn!(error = %e, control_plane = %flags.control_plane, "join failed; retrying")
                }
            }
            tokio::select! {
                _ = &mut shutdown => return Ok(()),
                _ = tokio::time::sleep(config.retry) => {}
            }
        },
    };
    let identity = std::sync::Arc::new(identity);
    let server_tls = orca_proto::tls::server_config(
        identity.slot.clone(),
        &identity.ca_pem,
        orca_proto::tls::ClientAuth::Required,
    )
    .map_err(join::JoinError::from)?;
    let notices = interruption::Notices::default();
    let notices_endpoint = flags
        .notices_endpoint
        .clone()
        .or_else(|| flags.imds_endpoint.clone());
    if let Some(endpoint) = notices_endpoint {
        let ms = std::time::Duration::from_millis;
        let watch = interruption::Watch {
            every: ms(flags.notice_poll_ms),
            drain_lead: ms(flags.drain_lead_ms),
            pause: ms(flags.notice_pause_ms),
        };
        let imds = imds::Imds::new(&endpoint, std::time::Duration::from_secs(2));
        info!(endpoint = %endpoint, "watching for interruption notices");
        tokio::spawn(interruption::run(
            imds,
            watch,
            pods.clone(),
            notices.clone(),
        ));
    }
    let contact = deadman::Contact::default();
    if flags.dead_man_ms > 0 {
        let mode =
            deadman::PowerOffMode::parse(&flags.power_off).unwrap_or(deadman::PowerOffMode::Exit);
        tokio::spawn(deadman::run(
            std::time::Duration::from_millis(flags.dead_man_ms),
            contact.clone(),
            pods.clone(),
            deadman::power_off(mode),
        ));
    }
    let reporter = heartbeat::Reporter {
        notices,
        contact,
        control_plane: flags.control_plane.clone(),
        identity,
        capacity: capacity(flags),
        gpus,
        retry: config.retry,
        interval: std::time::Duration::from_secs(5),
        node_ports: Default::default(),
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let heartbeats = tokio::spawn(heartbeat::run(
        reporter,
        pods.clone(),
        stopped(stop_rx.clone()),
    ));

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<AgentServiceServer<server::AgentServer>>()
        .await;
    info!(listen = %local, advertise = %advertise, node = %flags.node_name, "agent serving (mutual TLS)");
    let result = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(orca_proto::serving::reflection_v1(SERVICES))
        .add_service(orca_proto::serving::reflection_v1alpha(SERVICES))
        .add_service(AgentServiceServer::with_interceptor(
            server::AgentServer::new(pods, config.follow),
            server::control_plane_only,
        ))
        .serve_with_incoming_shutdown(
            orca_proto::tls::incoming(vec![listener], server_tls),
            shutdown,
        )
        .await
        .map_err(AgentError::Serve);
    let _ = stop_tx.send(true);
    let _ = heartbeats.await;
    info!("agent stopped");
    result
}

fn capacity(flags: &config::Flags) -> Resources {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as i64;
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| {
                    l.split_whitespace()
                        .nth(1)
                        .and_then(|kb| kb.parse::<i64>().ok())
                })
        })
        .map_or(0, |kb| kb * 1024);
    Resources {
        cpu_millis: flags.cpu_millis.unwrap_or(cpus * 1000),
        memory_bytes: flags.memory_bytes.unwrap_or(memory),
        // GPUs count once the GPU source answers: see the heartbeat.
        gpus: 0,
        pods: flags.max_pods,
    }
}
