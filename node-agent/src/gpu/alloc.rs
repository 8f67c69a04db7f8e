//! Which pod holds which GPU. The agent allocates (as the kubelet's device
//! manager does): the control plane places pods by GPU count, and the agent
//! picks the devices, healthy ones only, never one a live pod holds. The
//! allocation is kept with the pod (and saved with its runs, so a restarted
//! agent adopts it); a pod holds its GPUs until it ends.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Container, PodSpec};
use serde::{Deserialize, Serialize};

/// The extended resource name of NVIDIA GPUs.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";

/// GPUs one container asks for: `nvidia.com/gpu` in its limits (Kubernetes
/// requires it there; a request, if any, must equal it).
pub fn container_gpus(c: &Container) -> Result<usize, String> {
    let res = c.resources.as_ref();
    let get = |list: Option<
        &std::collections::BTreeMap<
            String,
            k8s_openapi::apimachinery::pkg::api::resource::Quantity,
        >,
    >| {
        list.and_then(|l| l.get(GPU_RESOURCE)).map(|q| {
            q.0.trim().parse::<usize>().map_err(|_| {
                format!(
                    "containers[{}].resources: {GPU_RESOURCE} {:?} is not a whole number",
                    c.name, q.0
                )
            })
        })
    };
    let limit = get(res.and_then(|r| r.limits.as_ref())).transpose()?;
    let request = get(res.and_then(|r| r.requests.as_ref())).transpose()?;
    match (request, limit) {
        (Some(r), Some(l)) if r != l => Err(format!(
            "containers[{}].resources: {GPU_RESOURCE} request {r} must equal its limit {l}",
            c.name
        )),
        (Some(_), None) => Err(format!(
            "containers[{}].resources: {GPU_RESOURCE} must be set in limits",
            c.name
        )),
        (_, l) => Ok(l.unwrap_or(0)),
    }
}

/// GPUs a pod holds: the sum over its app containers, or the largest init
/// container's if more (init containers run before, one at a time).
pub fn pod_gpus(spec: &PodSpec) -> Result<usize, String> {
    let mut sum = 0;
    for c in &spec.containers {
        sum += container_gpus(c)?;
    }
    let mut init = 0;
    for c in spec.init_containers.iter().flatten() {
        init = init.max(container_gpus(c)?);
    }
    Ok(sum.max(init))
}

/// The GPUs container `index` (init containers first, as the pod manager
/// counts) gets of the pod's allocation: each app container a slice of its
/// own, in spec order; an init container the first ones.
pub fn share(spec: &PodSpec, index: usize, allocation: &[Gpu]) -> Vec<Gpu> {
    let inits = spec.init_containers.as_deref().unwrap_or_default();
    let take = |offset: usize, n: usize| {
        allocation
            .iter()
            .skip(offset)
            .take(n)
            .cloned()
            .collect::<Vec<_>>()
    };
    if let Some(c) = inits.get(index) {
        return take(0, container_gpus(c).unwrap_or(0));
    }
    let app = index - inits.len();
    let offset: usize = spec
        .containers
        .iter()
        .take(app)
        .map(|c| container_gpus(c).unwrap_or(0))
        .sum();
    let n = spec
        .containers
        .get(app)
        .map_or(0, |c| container_gpus(c).unwrap_or(0));
    take(offset, n)
}

/// A GPU given to a pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gpu {
    /// NVML index.
    pub index: u32,
    /// `GPU-...`.
    pub uuid: String,
}

/// Picks `n` of the `healthy` GPUs that are not `held`, lowest index first, or
/// says why it cannot.
pub fn pick(healthy: &[Gpu], held: &BTreeSet<String>, n: usize) -> Result<Vec<Gpu>, String> {
    let free: Vec<Gpu> = healthy
        .iter()
        .filter(|g| !held.contains(&g.uuid))
        .cloned()
        .collect();
    if free.len() < n {
        return Err(format!(
            "{n} GPU(s) asked, {} healthy and free ({} healthy, {} held by other pods)",
            free.len(),
            healthy.len(),
            healthy.iter().filter(|g| held.contains(&g.uuid)).count()
        ));
    }
    let mut picked = free;
    picked.sort_by_key(|g| g.index);
    picked.truncate(n);
    Ok(picked)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpus(n: u32) -> Vec<Gpu> {
        (0..n)
            .map(|index| Gpu {
                index,
                uuid: format!("GPU-{index}"),
            })
            .collect()
    }

    #[test]
    fn picks_free_healthy_gpus_lowest_first() {
        let held = BTreeSet::from(["GPU-0".to_owned()]);
        let got = pick(&gpus(3), &held, 2).unwrap();
        assert_eq!(got, gpus(3)[1..].to_vec());
        let e = pick(&gpus(3), &held, 3).unwrap_err();
        assert!(e.contains("3 GPU(s) asked, 2 healthy and free"), "{e}");
        assert!(pick(&gpus(0), &BTreeSet::new(), 0).unwrap().is_empty());
    }

    fn spec(yaml: &str) -> PodSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn containers_get_their_own_slice() {
        let s = spec(
            "initContainers:\n- {name: i, resources: {limits: {nvidia.com/gpu: 1}}}\n\
             containers:\n- {name: a, resources: {limits: {nvidia.com/gpu: 1}}}\n\
             - {name: b}\n- {name: c, resources: {limits: {nvidia.com/gpu: '2'}, requests: {nvidia.com/gpu: 2}}}\n",
        );
        assert_eq!(pod_gpus(&s), Ok(3));
        let all = gpus(3);
        assert_eq!(share(&s, 0, &all), all[..1]);
        assert_eq!(share(&s, 1, &all), all[..1]);
        assert!(share(&s, 2, &all).is_empty());
        assert_eq!(share(&s, 3, &all), all[1..]);
    }

    #[test]
    fn malformed_gpu_amounts_are_named() {
        let e = pod_gpus(&spec(
            "containers:\n- {name: a, resources: {limits: {nvidia.com/gpu: 500m}}}\n",
        ))
        .unwrap_err();
        assert!(
            e.contains("containers[a]") && e.contains("whole number"),
            "{e}"
        );
        let e = pod_gpus(&spec(
            "containers:\n- {name: a, resources: {requests: {nvidia.com/gpu: 1}}}\n",
        ))
        .unwrap_err();
        assert!(e.contains("limits"), "{e}");
        let e = pod_gpus(&spec("containers:\n- {name: a, resources: {requests: {nvidia.com/gpu: 1}, limits: {nvidia.com/gpu: 2}}}\n")).unwrap_err();
        assert!(e.contains("must equal"), "{e}");
    }
}
