//! What pods ask for: their requests and sums (pure, from
//! [`orca_model::fit`]), and the needs instance selection sees.
//! A leaf: the scheduler, the registry, provisioning, budgets, quotas and
//! autoscaling all read it.

use k8s_openapi::api::core::v1::PodSpec;
use orca_model::selection::{Arch, Needs};

pub use orca_model::fit::{GPU_RESOURCE, holds_resources, requests, spec_of, sum_requests};

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
