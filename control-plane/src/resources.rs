//! What pods ask for, as pure functions of their specs and records: resource
//! requests (defaulting to limits; init containers take the maximum), their
//! sums over the pods that hold them, and the needs instance selection sees.
//! A leaf: the scheduler, the registry, provisioning, budgets, quotas and
//! autoscaling all read it.

use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use orca_model::pod::phase;
use orca_model::quantity;
use orca_model::selection::{Arch, Needs};
use orca_proto::controlplane::v1 as pb;
use orca_proto::types::v1::PodPhase;
use orca_proto::types::v1::Resources;
use std::collections::BTreeMap;

/// The extended resource name of NVIDIA GPUs.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";

/// What a pod asks for: the sum over its containers, or the largest init
/// container if that is more (init containers run one at a time, before).
pub fn requests(spec: &PodSpec) -> Resources {
    let mut sum = Resources {
        pods: 1,
        ..Default::default()
    };
    for c in &spec.containers {
        let r = container_requests(c);
        sum.cpu_millis = sum.cpu_millis.saturating_add(r.cpu_millis);
        sum.memory_bytes = sum.memory_bytes.saturating_add(r.memory_bytes);
        sum.gpus = sum.gpus.saturating_add(r.gpus);
    }
    for c in spec.init_containers.iter().flatten() {
        let r = container_requests(c);
        sum.cpu_millis = sum.cpu_millis.max(r.cpu_millis);
        sum.memory_bytes = sum.memory_bytes.max(r.memory_bytes);
        sum.gpus = sum.gpus.max(r.gpus);
    }
    sum
}

/// Whether a pod counts against its node's resources (bound and not finished).
pub fn holds_resources(record: &pb::PodRecord) -> bool {
    !record.node_name.is_empty() && !matches!(phase(record), PodPhase::Succeeded | PodPhase::Failed)
}

/// The sum of the pods' requests.
pub fn sum_requests<'a>(pods: impl Iterator<Item = &'a pb::PodRecord>) -> Resources {
    pods.filter_map(spec_of)
        .map(|s| requests(&s))
        .fold(Resources::default(), |a, r| Resources {
            cpu_millis: a.cpu_millis.saturating_add(r.cpu_millis),
            memory_bytes: a.memory_bytes.saturating_add(r.memory_bytes),
            gpus: a.gpus.saturating_add(r.gpus),
            pods: a.pods.saturating_add(r.pods),
        })
}

/// What a pod needs from an instance: its requests, and the architecture and
/// GPU model its nodeSelector names (the `orca.research/gpu-model` annotation
/// is read with the other launch annotations).
pub(crate) fn needs_of(spec: &PodSpec) -> Needs {
    let want = requests(spec);
    Needs {
        cpu_millis: want.cpu_millis.max(0) as u64,
        memory_bytes: want.memory_bytes.max(0) as u64,
        gpus: want.gpus.max(0) as u32,
        gpu_model: spec
            .node_selector
            .as_ref()
            .and_then(|s| s.get(crate::telemetry::GPU_MODEL_LABEL))
            .cloned(),
        architectures: spec
            .node_selector
            .as_ref()
            .and_then(|s| s.get("kubernetes.io/arch"))
            .and_then(|a| Arch::parse(a))
            .into_iter()
            .collect(),
    }
}

/// What one container asks for: its requests, or its limits where it set no
/// request (Kubernetes' defaulting).
fn container_requests(c: &k8s_openapi::api::core::v1::Container) -> Resources {
    let res = c.resources.as_ref();
    let requests = res.and_then(|r| r.requests.as_ref());
    let limits = res.and_then(|r| r.limits.as_ref());
    let get = |name, millis| {
        amount(requests, name, millis)
            .or_else(|| amount(limits, name, millis))
            .unwrap_or(0)
    };
    Resources {
        cpu_millis: get("cpu", true),
        memory_bytes: get("memory", false),
        gpus: i32::try_from(get(GPU_RESOURCE, false)).unwrap_or(i32::MAX),
        pods: 1,
    }
}

pub(crate) fn amount(
    list: Option<&BTreeMap<String, Quantity>>,
    name: &str,
    millis: bool,
) -> Option<i64> {
    list.and_then(|l| l.get(name))
        .and_then(|q| quantity::parse(&q.0, millis))
        // parse bounds every value by i64::MAX; create refuses those it cannot read.
        .map(|v| i64::try_from(v).unwrap_or(i64::MAX))
}

pub(crate) fn spec_of(record: &pb::PodRecord) -> Option<PodSpec> {
    serde_json::from_str(&record.pod.as_ref()?.spec_json).ok()
}
