//! Pure checks of a pod before it is stored: its size (what one pod may ask of
//! the store, the scheduler and its host's agent) and its resource quantities.
//! No IO; [`crate::pods`] applies them at creation.
//!
//! The size bounds play the part of the API server's request limits: a pod of
//! 1,000 containers raised its agent's memory by 3 GB and one of 100,000 env
//! entries stalled its agent's heartbeats, so one pod could take its node (and
//! every other pod on it) down. Kubernetes bounds an object by its encoded size
//! (etcd's 1.5 MiB); ORCA bounds the size and the two counts that cost its agent
//! the most, each far above what real pods use.

use k8s_openapi::api::core::v1::{Container, PodSpec};
use orca_model::quantity::{self, QuantityError};

/// Largest encoded PodSpec accepted, in bytes (etcd's default object limit is
/// 1.5 MiB; a pod's spec is most of its object).
pub const MAX_SPEC_BYTES: usize = 1024 * 1024;
/// Most containers (init, app and ephemeral together) in one pod.
pub const MAX_CONTAINERS: usize = 64;
/// Most `env` and `envFrom` entries over all of a pod's containers.
pub const MAX_ENV_ENTRIES: usize = 4096;

/// Why a pod is too large to admit, or None.
pub fn size_refusal(spec_json: &str, spec: &PodSpec) -> Option<String> {
    if spec_json.len() > MAX_SPEC_BYTES {
        return Some(format!(
            "pod spec is {} bytes; the limit is {MAX_SPEC_BYTES} bytes",
            spec_json.len()
        ));
    }
    let containers =
        all_containers(spec).count() + spec.ephemeral_containers.as_ref().map_or(0, Vec::len);
    if containers > MAX_CONTAINERS {
        return Some(format!(
            "pod has {containers} containers; the limit is {MAX_CONTAINERS}"
        ));
    }
    let env: usize = all_containers(spec)
        .map(|c| c.env.as_ref().map_or(0, Vec::len) + c.env_from.as_ref().map_or(0, Vec::len))
        .sum::<usize>()
        + spec
            .ephemeral_containers
            .iter()
            .flatten()
            .map(|c| c.env.as_ref().map_or(0, Vec::len) + c.env_from.as_ref().map_or(0, Vec::len))
            .sum::<usize>();
    if env > MAX_ENV_ENTRIES {
        return Some(format!(
            "pod has {env} env and envFrom entries; the limit is {MAX_ENV_ENTRIES}"
        ));
    }
    None
}

/// Why one of the pod's resource quantities cannot be honoured: not a
/// quantity, or beyond the largest a resource (and a cgroup) can hold. CPU is
/// read in millicores, everything else in units.
pub fn quantity_refusal(spec: &PodSpec) -> Option<String> {
    for c in all_containers(spec) {
        let Some(res) = &c.resources else { continue };
        let lists = [("requests", &res.requests), ("limits", &res.limits)];
        for (list, values) in lists {
            for (name, q) in values.iter().flatten() {
                if let Err(e) = quantity::parse_exact(&q.0, name == "cpu") {
                    let what = match e {
                        QuantityError::Invalid(_) => "is not a quantity",
                        QuantityError::TooLarge { .. } => "is larger than any resource can be",
                    };
                    return Some(format!(
                        "container {:?}: resources.{list}.{name} {:?} {what} ({e})",
                        c.name, q.0
                    ));
                }
            }
        }
    }
    None
}

fn all_containers(spec: &PodSpec) -> impl Iterator<Item = &Container> {
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: serde_json::Value) -> (String, PodSpec) {
        (v.to_string(), serde_json::from_value(v).unwrap())
    }

    #[test]
    fn absurd_quantities_are_refused_with_the_field() {
        let (_, s) = spec(serde_json::json!({"containers": [
            {"name": "c", "image": "x", "resources": {"requests": {"cpu": "1e30"}}}]}));
        let why = quantity_refusal(&s).expect("refused");
        assert!(why.contains("resources.requests.cpu \"1e30\""), "{why}");
        let (_, s) = spec(serde_json::json!({"containers": [
            {"name": "c", "image": "x", "resources": {"limits": {"memory": "lots"}}}]}));
        assert!(quantity_refusal(&s).unwrap().contains("is not a quantity"));
        let (_, s) = spec(serde_json::json!({"containers": [
            {"name": "c", "image": "x", "resources": {"limits": {"memory": "1Ei", "cpu": "700m"}}}]}));
        assert_eq!(quantity_refusal(&s), None, "1Ei is a valid memory amount");
    }

    #[test]
    fn oversized_pods_are_refused_with_the_limit() {
        let many: Vec<_> = (0..MAX_CONTAINERS + 1)
            .map(|i| serde_json::json!({"name": format!("c{i}"), "image": "x"}))
            .collect();
        let (json, s) = spec(serde_json::json!({ "containers": many }));
        let why = size_refusal(&json, &s).unwrap();
        assert!(why.contains("65 containers; the limit is 64"), "{why}");
        let env: Vec<_> = (0..MAX_ENV_ENTRIES + 1)
            .map(|i| serde_json::json!({"name": format!("E{i}"), "value": "v"}))
            .collect();
        let (json, s) =
            spec(serde_json::json!({"containers": [{"name": "c", "image": "x", "env": env}]}));
        assert!(
            size_refusal(&json, &s)
                .unwrap()
                .contains("env and envFrom entries")
        );
        let (json, s) = spec(
            serde_json::json!({"containers": [{"name": "c", "image": "x",
            "args": ["x".repeat(MAX_SPEC_BYTES)]}]}),
        );
        assert!(
            size_refusal(&json, &s)
                .unwrap()
                .contains("bytes; the limit is")
        );
        let (json, s) = spec(serde_json::json!({"containers": [{"name": "c", "image": "x"}]}));
        assert_eq!(size_refusal(&json, &s), None);
    }
}
