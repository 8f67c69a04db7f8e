//! Probes of one container run, as the kubelet drives them: the startup probe
//! first (liveness and readiness wait for it), then liveness and readiness
//! together. Readiness sets the container's `ready`; a failed liveness or startup
//! probe kills the container (its grace period, then SIGKILL) so that the restart
//! policy applies, and the exit carries the probe's message. Also preStop hooks.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::probes::{self, ProbeKind};
use crate::runtime::Containerd;

/// SIGTERM and SIGKILL.
const SIGTERM: u32 = 15;
const SIGKILL: u32 = 9;

/// Whether any probe of `container` needs a manager.
pub(super) fn has_probes(container: &Container) -> bool {
    container.startup_probe.is_some()
        || container.liveness_probe.is_some()
        || container.readiness_probe.is_some()
}

/// Validates every probe of a container, naming it.
pub(super) fn validate(container: &Container) -> Result<(), String> {
    let probes = [
        (ProbeKind::Startup, &container.startup_probe),
        (ProbeKind::Liveness, &container.liveness_probe),
        (ProbeKind::Readiness, &container.readiness_probe),
    ];
    for (kind, probe) in probes {
        if let Some(p) = probe {
            probes::validate(container, p)
                .and_then(|()| probes::validate_kind(kind, p))
                .map_err(|e| format!("containers[{}].{kind}Probe: {e}", container.name))?;
        }
    }
    if let Some(lifecycle) = &container.lifecycle {
        if lifecycle.post_start.is_some() {
            return Err(format!(
                "containers[{}].lifecycle.postStart is not supported yet",
                container.name
            ));
        }
        if let Some(pre_stop) = &lifecycle.pre_stop
            && pre_stop.tcp_socket.is_some()
        {
            return Err(format!(
                "containers[{}].lifecycle.preStop.tcpSocket is deprecated and not supported",
                container.name
            ));
        }
    }
    Ok(())
}

/// What the probes of a run tell its supervisor as they go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ProbeNews {
    /// The readiness verdict (false until the first success).
    Ready(bool),
    /// A liveness or startup probe failed: the run is being killed, with this message.
    Killing(String),
}

/// Runs probes and preStop hooks against containerd tasks.
#[derive(Clone)]
pub(super) struct Prober {
    ctrd: Containerd,
    /// The pod's IP (the node's): where httpGet and tcpSocket probes connect.
    host_ip: String,
}

impl Prober {
    /// A prober over `ctrd`, reaching pods at `host_ip`.
    pub(super) fn new(ctrd: Containerd, host_ip: String) -> Self {
        Self { ctrd, host_ip }
    }

    /// Drives the probes of the container running as `id` until `stop`
    /// flips, telling `on` what they find. Returns the message of a
    /// liveness/startup failure that killed it.
    pub(super) async fn manage(
        &self,
        id: &str,
        container: &Container,
        grace: Duration,
        mut stop: watch::Receiver<bool>,
        on: impl Fn(ProbeNews),
    ) -> Option<String> {
        let host_ip = self.host_ip.clone();
        let (tx, mut rx) = mpsc::channel(16);
        let stop_for_loops = stop.clone();
        let spawn = |kind: ProbeKind, probe: Probe| {
            let mut stop = stop_for_loops.clone();
            let run = probes::run(
                self.ctrd.clone(),
                id.to_owned(),
                host_ip.clone(),
                container.clone(),
                kind,
                probe,
                tx.clone(),
                async move {
                    let _ = stop.wait_for(|s| *s).await;
                },
            );
            tokio::spawn(run)
        };
        let mut started = container.startup_probe.is_none();
        let mut loops = Vec::new();
        match &container.startup_probe {
            Some(p) => loops.push(spawn(ProbeKind::Startup, p.clone())),
            None => loops.extend(spawn_main_probes(container, &spawn)),
        }
        if container.readiness_probe.is_some() {
            on(ProbeNews::Ready(false));
        }
        let killed = loop {
            let transition = tokio::select! {
                t = rx.recv() => t,
                _ = stop.wait_for(|s| *s) => None,
            };
            let Some(t) = transition else { break None };
            match (t.kind, t.healthy) {
                (ProbeKind::Startup, true) if !started => {
                    started = true;
                    info!(container = %id, "startup probe succeeded");
                    loops.extend(spawn_main_probes(container, &spawn));
                }
                (ProbeKind::Readiness, ready) if started => {
                    on(ProbeNews::Ready(ready));
                }
                (ProbeKind::Liveness | ProbeKind::Startup, false) => {
                    let message = format!("{} probe failed: {}", t.kind, t.message);
                    warn!(container = %id, %message, "killing the container");
                    on(ProbeNews::Killing(message.clone()));
                    if let Err(e) = self.ctrd.kill(id, SIGTERM).await {
                        warn!(container = %id, error = %e, "SIGTERM failed");
                    }
                    if tokio::time::timeout(grace, self.ctrd.wait(id))
                        .await
                        .is_err()
                    {
                        let _ = self.ctrd.kill(id, SIGKILL).await;
                    }
                    break Some(message);
                }
                _ => {}
            }
        };
        for l in loops {
            l.abort();
        }
        killed
    }

    /// Runs a container's preStop hook (exec, httpGet or sleep) within `budget`;
    /// returns how long it took.
    pub(super) async fn pre_stop(
        &self,
        id: &str,
        container: &Container,
        budget: Duration,
    ) -> Duration {
        let Some(hook) = container
            .lifecycle
            .as_ref()
            .and_then(|l| l.pre_stop.as_ref())
        else {
            return Duration::ZERO;
        };
        let began = tokio::time::Instant::now();
        if let Some(exec) = &hook.exec {
            let args = exec.command.clone().unwrap_or_default();
            match self.ctrd.exec(id, &args, budget, 64 * 1024).await {
                Ok(r) => {
                    info!(container = %id, exit_code = r.exit_code, timed_out = r.timed_out, "preStop hook ran")
                }
                Err(e) => warn!(container = %id, error = %e, "preStop hook failed"),
            }
        } else if let Some(http) = &hook.http_get {
            let probe = Probe {
                http_get: Some(http.clone()),
                timeout_seconds: Some(budget.as_secs().max(1) as i32),
                ..Default::default()
            };
            let outcome =
                probes::probe_once(&self.ctrd, id, &self.host_ip, container, &probe).await;
            info!(container = %id, ?outcome, "preStop hook ran");
        } else if let Some(sleep) = &hook.sleep {
            tokio::time::sleep(Duration::from_secs(sleep.seconds.max(0) as u64).min(budget)).await;
        }
        began.elapsed()
    }
}

fn spawn_main_probes(
    container: &Container,
    spawn: &impl Fn(ProbeKind, Probe) -> tokio::task::JoinHandle<()>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut loops = Vec::new();
    if let Some(p) = &container.liveness_probe {
        loops.push(spawn(ProbeKind::Liveness, p.clone()));
    }
    if let Some(p) = &container.readiness_probe {
        loops.push(spawn(ProbeKind::Readiness, p.clone()));
    }
    loops
}
