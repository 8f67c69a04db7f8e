//! A pod's GPUs: allocated before its first container is created (waiting a
//! while for healthy, free devices), given to each container through CDI, and
//! the GPU processes attributed to pods' containers by PID.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use orca_proto::types::v1 as pb;
use serde_json::Value;

use super::PodEntry;
use crate::gpu::alloc::{self, Gpu};
use crate::gpu::cdi;
use crate::gpu::monitor::{Monitor, Telemetry};
use crate::status::PodFailure;

/// The CDI kind of NVIDIA GPUs.
const CDI_KIND: &str = "nvidia.com/gpu";

/// The container a process runs in: the containerd id in its cgroup path
/// (`.../<namespace>/<id>`, the spec's cgroupsPath), read from `/proc/<pid>/cgroup`.
fn container_of(pid: u32, namespace: &str) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    container_in(&text, namespace)
}

fn container_in(cgroup_file: &str, namespace: &str) -> Option<String> {
    let marker = format!("/{namespace}/");
    cgroup_file.lines().find_map(|line| {
        let path = line.splitn(3, ':').nth(2)?;
        let at = path.rfind(&marker)?;
        let id = path[at + marker.len()..].split('/').next()?;
        (!id.is_empty()).then(|| id.to_owned())
    })
}

/// The node's GPUs as pods get them: the monitor's view of the devices, how
/// long a pod waits for enough of them, and the CDI specs that hand them to
/// containers. Which pod holds which GPU is each pod's record (`PodEntry::gpus`).
pub(super) struct Gpus {
    monitor: Monitor,
    /// How long a pod waits for healthy, free GPUs.
    wait: Duration,
    /// CDI spec directories, later ones taking precedence.
    cdi_dirs: Vec<PathBuf>,
}

/// What one look at the devices gave an allocation.
pub(super) enum Claim {
    /// Allocated (or nothing to allocate any more: the pod is gone or stopping).
    Done,
    /// Not enough healthy, free GPUs: why.
    Short(String),
}

impl Gpus {
    /// GPUs from `monitor`.
    pub(super) fn new(monitor: Monitor, wait: Duration, cdi_dirs: Vec<PathBuf>) -> Self {
        Self {
            monitor,
            wait,
            cdi_dirs,
        }
    }

    /// The GPU monitor.
    pub(super) fn monitor(&self) -> &Monitor {
        &self.monitor
    }

    /// Allocates GPUs, waiting up to the configured time: `claim` is offered
    /// the healthy devices at every sample until it is done.
    pub(super) async fn allocate(
        &self,
        mut claim: impl FnMut(&[Gpu]) -> Claim,
    ) -> Result<(), PodFailure> {
        let deadline = Instant::now() + self.wait;
        let mut updates = self.monitor.subscribe();
        loop {
            let telemetry = self.monitor.latest();
            let why = match claim(&telemetry.healthy()) {
                Claim::Done => return Ok(()),
                Claim::Short(why) => why,
            };
            if Instant::now() >= deadline {
                let note = if telemetry.note.is_empty() {
                    String::new()
                } else {
                    format!("; GPU source {}: {}", telemetry.source, telemetry.note)
                };
                return Err(PodFailure {
                    reason: "GPUUnavailable".into(),
                    message: format!("{why} within {:?}{note}", self.wait),
                });
            }
            // Devices are reconsidered at every sample (a pod that ended frees
            // its GPUs; a source that became ready offers them).
            let _ = tokio::time::timeout_at(deadline.into(), updates.changed()).await;
        }
    }

    /// Gives container `index` its share of the pod's GPUs: the CDI edits of
    /// its devices (device nodes, mounts, hooks, env) and NVIDIA_VISIBLE_DEVICES
    /// naming exactly them.
    pub(super) fn give(
        &self,
        spec: &k8s_openapi::api::core::v1::PodSpec,
        allocation: &[Gpu],
        index: usize,
        oci: &mut Value,
    ) -> Result<(), String> {
        let container = {
            let inits = spec.init_containers.as_deref().unwrap_or_default();
            inits
                .get(index)
                .or_else(|| spec.containers.get(index - inits.len()))
        };
        let want = container.map_or(Ok(0), alloc::container_gpus)?;
        let gpus = alloc::share(spec, index, allocation);
        if gpus.len() < want {
            return Err(format!(
                "{want} GPU(s) asked but {} allocated to the pod",
                allocation.len()
            ));
        }
        if gpus.is_empty() {
            return Ok(());
        }
        let registry = cdi::Registry::load(&self.cdi_dirs).map_err(|e| e.to_string())?;
        let names: Vec<String> = gpus
            .iter()
            .map(|g| {
                let by_uuid = format!("{CDI_KIND}={}", g.uuid);
                if registry.has(&by_uuid) {
                    by_uuid
                } else {
                    format!("{CDI_KIND}={}", g.index)
                }
            })
            .collect();
        registry.apply(oci, &names).map_err(|e| e.to_string())?;
        let visible = format!(
            "NVIDIA_VISIBLE_DEVICES={}",
            gpus.iter()
                .map(|g| g.uuid.as_str())
                .collect::<Vec<_>>()
                .join(",")
        );
        if let Some(env) = oci["process"]["env"].as_array_mut() {
            env.retain(|e| {
                !e.as_str()
                    .is_some_and(|e| e.starts_with("NVIDIA_VISIBLE_DEVICES="))
            });
            env.push(Value::String(visible));
        }
        Ok(())
    }
}

/// The telemetry's samples with each process attributed to the pod and
/// container it runs in, and each device to the pod holding it.
pub(super) fn attribute<'a>(
    telemetry: &Telemetry,
    namespace: &str,
    pods: impl Iterator<Item = &'a PodEntry>,
) -> Vec<pb::GpuSample> {
    let mut by_container: HashMap<&str, (pb::PodRef, &str)> = HashMap::new();
    let mut holder: HashMap<&str, String> = HashMap::new();
    for p in pods {
        let r = pb::PodRef {
            namespace: p.key.namespace.clone(),
            name: p.key.name.clone(),
            uid: p.key.uid.clone(),
        };
        for c in &p.containers {
            by_container.insert(c.id.as_str(), (r.clone(), c.name.as_str()));
        }
        if p.holds_gpus() {
            for g in &p.gpus {
                holder.insert(
                    g.uuid.as_str(),
                    format!("{}/{}", p.key.namespace, p.key.name),
                );
            }
        }
    }
    let mut gpus = telemetry.gpus.clone();
    for g in &mut gpus {
        g.allocated_to = holder.get(g.uuid.as_str()).cloned().unwrap_or_default();
        for proc_ in &mut g.processes {
            let found = container_of(proc_.pid, namespace)
                .and_then(|id| by_container.get(id.as_str()).cloned());
            if let Some((pod, container)) = found {
                proc_.pod = Some(pod);
                proc_.container = container.to_owned();
            }
        }
    }
    gpus
}

#[cfg(test)]
mod tests {
    use super::container_in;

    #[test]
    fn containers_are_found_in_v1_and_v2_cgroup_files() {
        let v1 = "12:pids:/orca-n1/abc123def456-main\n4:memory:/orca-n1/abc123def456-main\n1:name=systemd:/\n";
        assert_eq!(
            container_in(v1, "orca-n1").as_deref(),
            Some("abc123def456-main")
        );
        let v2 = "0::/orca-n1/abc123def456-side\n";
        assert_eq!(
            container_in(v2, "orca-n1").as_deref(),
            Some("abc123def456-side")
        );
        assert_eq!(
            container_in("0::/user.slice/session-1.scope\n", "orca-n1"),
            None
        );
    }
}
