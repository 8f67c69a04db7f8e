//! ResourceQuotas: what the unfinished pods of a namespace may use together.
//!
//! Served resources, as Kubernetes names them: `pods` (`count/pods`),
//! `requests.cpu` (`cpu`), `requests.memory` (`memory`), `limits.cpu`,
//! `limits.memory`, and GPUs as `requests.nvidia.com/gpu` (also
//! `limits.nvidia.com/gpu` and, beyond Kubernetes, `nvidia.com/gpu`: a GPU's
//! request and limit are equal). A pod counts from its creation until it has
//! Succeeded or Failed. A quota that limits a compute resource needs every new
//! pod to say how much of it it wants (Kubernetes' "must specify").

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{PodSpec, ResourceQuota};
use orca_proto::controlplane::v1 as pb;
use orca_proto::types::v1::PodPhase;

use crate::pods::phase;

/// What a pod uses of one quota resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resource {
    Pods,
    RequestsCpu,
    RequestsMemory,
    LimitsCpu,
    LimitsMemory,
    Gpus,
}

impl Resource {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "pods" | "count/pods" => Self::Pods,
            "cpu" | "requests.cpu" => Self::RequestsCpu,
            "memory" | "requests.memory" => Self::RequestsMemory,
            "limits.cpu" => Self::LimitsCpu,
            "limits.memory" => Self::LimitsMemory,
            "nvidia.com/gpu" | "requests.nvidia.com/gpu" | "limits.nvidia.com/gpu" => Self::Gpus,
            _ => return None,
        })
    }

    /// CPU is counted in millicores.
    fn millis(self) -> bool {
        matches!(self, Self::RequestsCpu | Self::LimitsCpu)
    }

    /// A quantity of it, as Kubernetes would print it.
    fn show(self, v: i64) -> String {
        match self {
            Self::RequestsCpu | Self::LimitsCpu if v % 1000 == 0 => format!("{}", v / 1000),
            Self::RequestsCpu | Self::LimitsCpu => format!("{v}m"),
            Self::RequestsMemory | Self::LimitsMemory => {
                for (unit, size) in [("Gi", 1i64 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)] {
                    if v != 0 && v % size == 0 {
                        return format!("{}{unit}", v / size);
                    }
                }
                v.to_string()
            }
            Self::Pods | Self::Gpus => v.to_string(),
        }
    }
}

fn amount(
    list: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
    name: &str,
    millis: bool,
) -> Option<i64> {
    // An amount beyond any resource counts as the most there is: refused by
    // every quota, never wrapped (creation then fails it InvalidPodSpec).
    list.and_then(|l| l.get(name)).map(|q| {
        orca_model::quantity::parse(&q.0, millis)
            .and_then(|v| i64::try_from(v).ok())
            .unwrap_or(i64::MAX)
    })
}

/// What a pod uses of `r`; `None` when a container leaves it unsaid (a
/// request falls back to the limit, as Kubernetes defaults it).
fn usage(spec: &PodSpec, r: Resource) -> Option<i64> {
    let one = |c: &k8s_openapi::api::core::v1::Container| -> Option<i64> {
        let res = c.resources.as_ref();
        let requests = res.and_then(|x| x.requests.as_ref());
        let limits = res.and_then(|x| x.limits.as_ref());
        match r {
            Resource::Pods => Some(0),
            Resource::RequestsCpu => {
                amount(requests, "cpu", true).or_else(|| amount(limits, "cpu", true))
            }
            Resource::RequestsMemory => {
                amount(requests, "memory", false).or_else(|| amount(limits, "memory", false))
            }
            Resource::LimitsCpu => amount(limits, "cpu", true),
            Resource::LimitsMemory => amount(limits, "memory", false),
            Resource::Gpus => Some(
                amount(requests, crate::resources::GPU_RESOURCE, false)
                    .or_else(|| amount(limits, crate::resources::GPU_RESOURCE, false))
                    .unwrap_or(0),
            ),
        }
    };
    if r == Resource::Pods {
        return Some(1);
    }
    let mut sum: i64 = 0;
    for c in &spec.containers {
        sum = sum.saturating_add(one(c)?);
    }
    let mut init = 0;
    for c in spec.init_containers.iter().flatten() {
        init = init.max(one(c)?);
    }
    Some(sum.max(init))
}

fn hard(q: &ResourceQuota) -> BTreeMap<String, String> {
    q.spec
        .as_ref()
        .and_then(|s| s.hard.as_ref())
        .map(|h| h.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect())
        .unwrap_or_default()
}

/// Checks a quota's manifest: every resource served, every amount a quantity.
pub fn validate(q: &ResourceQuota) -> Result<(), String> {
    let spec = q.spec.as_ref();
    if spec.is_some_and(|s| s.scopes.is_some() || s.scope_selector.is_some()) {
        return Err("spec.scopes and spec.scopeSelector are not served in standalone mode".into());
    }
    for (name, value) in hard(q) {
        let r = Resource::parse(&name).ok_or_else(|| {
            format!(
                "spec.hard.{name}: not a resource standalone mode counts (pods, requests.cpu, requests.memory, limits.cpu, limits.memory, requests.nvidia.com/gpu)"
            )
        })?;
        orca_model::quantity::parse(&value, r.millis())
            .ok_or_else(|| format!("spec.hard.{name}: {value:?} is not a quantity"))?;
    }
    Ok(())
}

fn counts(p: &pb::PodRecord) -> bool {
    !matches!(phase(p), PodPhase::Succeeded | PodPhase::Failed)
}

fn spec_of(p: &pb::PodRecord) -> Option<PodSpec> {
    serde_json::from_str(&p.pod.as_ref()?.spec_json).ok()
}

/// What the namespace's unfinished `pods` use of each of the quota's resources.
fn used(q: &ResourceQuota, pods: &[pb::PodRecord]) -> BTreeMap<String, i64> {
    let specs: Vec<PodSpec> = pods
        .iter()
        .filter(|p| counts(p))
        .filter_map(spec_of)
        .collect();
    hard(q)
        .keys()
        .filter_map(|name| {
            let r = Resource::parse(name)?;
            let total = specs
                .iter()
                .map(|s| usage(s, r).unwrap_or(0))
                .fold(0i64, i64::saturating_add);
            Some((name.clone(), total))
        })
        .collect()
}

/// The quota's status, as Kubernetes shows it: `hard` and `used`.
pub fn status(q: &ResourceQuota, pods: &[pb::PodRecord]) -> serde_json::Value {
    let used: BTreeMap<String, String> = used(q, pods)
        .into_iter()
        .filter_map(|(k, v)| Some((k.clone(), Resource::parse(&k)?.show(v))))
        .collect();
    serde_json::json!({"hard": hard(q), "used": used})
}

/// Why the quota `name` refuses a new pod with `spec` beside the namespace's
/// `pods`; `None` when it admits it.
pub fn refusal(
    name: &str,
    q: &ResourceQuota,
    pods: &[pb::PodRecord],
    spec: &PodSpec,
) -> Option<String> {
    let used = used(q, pods);
    let mut missing = Vec::new();
    let (mut requested, mut using, mut limited) = (Vec::new(), Vec::new(), Vec::new());
    for (key, value) in hard(q) {
        let Some(r) = Resource::parse(&key) else {
            continue;
        };
        let Some(limit) = orca_model::quantity::parse(&value, r.millis()) else {
            continue;
        };
        let Some(want) = usage(spec, r) else {
            missing.push(key);
            continue;
        };
        let now = used.get(&key).copied().unwrap_or(0);
        if now.saturating_add(want) > i64::try_from(limit).unwrap_or(i64::MAX) {
            requested.push(format!("{key}={}", r.show(want)));
            using.push(format!("{key}={}", r.show(now)));
            limited.push(format!("{key}={value}"));
        }
    }
    if !missing.is_empty() {
        return Some(format!(
            "failed quota: {name}: must specify {}",
            missing.join(",")
        ));
    }
    (!requested.is_empty()).then(|| {
        format!(
            "exceeded quota: {name}, requested: {}, used: {}, limited: {}",
            requested.join(","),
            using.join(","),
            limited.join(",")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(hard: &str) -> ResourceQuota {
        serde_json::from_str(&format!(
            r#"{{"apiVersion":"v1","kind":"ResourceQuota","metadata":{{"name":"compute"}},"spec":{{"hard":{hard}}}}}"#
        ))
        .unwrap()
    }

    fn spec(cpu: Option<&str>, gpus: Option<&str>) -> PodSpec {
        let mut requests = serde_json::Map::new();
        if let Some(c) = cpu {
            requests.insert("cpu".into(), c.into());
        }
        if let Some(g) = gpus {
            requests.insert("nvidia.com/gpu".into(), g.into());
        }
        serde_json::from_value(serde_json::json!({
            "containers": [{"name": "c", "image": "i", "resources": {"requests": requests}}]
        }))
        .unwrap()
    }

    fn record(spec: &PodSpec, phase: PodPhase) -> pb::PodRecord {
        pb::PodRecord {
            pod: Some(orca_proto::types::v1::Pod {
                spec_json: serde_json::to_string(spec).unwrap(),
                ..Default::default()
            }),
            status: Some(orca_proto::types::v1::PodStatus {
                phase: phase as i32,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_pod_over_the_quota_is_refused_naming_it() {
        let q = quota(r#"{"pods": "2", "requests.cpu": "1", "requests.nvidia.com/gpu": "1"}"#);
        assert_eq!(validate(&q), Ok(()));
        let running = [record(&spec(Some("600m"), None), PodPhase::Running)];
        assert_eq!(
            refusal("compute", &q, &running, &spec(Some("400m"), None)),
            None
        );
        assert_eq!(
            refusal("compute", &q, &running, &spec(Some("500m"), None)).unwrap(),
            "exceeded quota: compute, requested: requests.cpu=500m, used: requests.cpu=600m, limited: requests.cpu=1"
        );
        assert_eq!(
            refusal("compute", &q, &running, &spec(Some("100m"), Some("2"))).unwrap(),
            "exceeded quota: compute, requested: requests.nvidia.com/gpu=2, used: requests.nvidia.com/gpu=0, limited: requests.nvidia.com/gpu=1"
        );
        assert_eq!(
            refusal("compute", &q, &running, &spec(None, None)).unwrap(),
            "failed quota: compute: must specify requests.cpu"
        );
        let finished = [
            record(&spec(Some("600m"), None), PodPhase::Failed),
            record(&spec(Some("600m"), None), PodPhase::Succeeded),
        ];
        assert_eq!(
            refusal("compute", &q, &finished, &spec(Some("1"), None)),
            None,
            "finished pods use nothing"
        );
        let two = [
            record(&spec(Some("100m"), None), PodPhase::Pending),
            record(&spec(Some("100m"), None), PodPhase::Running),
        ];
        assert!(
            refusal("compute", &q, &two, &spec(Some("100m"), None))
                .unwrap()
                .contains("requested: pods=1, used: pods=2, limited: pods=2")
        );
        assert_eq!(
            status(&q, &running)["used"],
            serde_json::json!({"pods": "1", "requests.cpu": "600m", "requests.nvidia.com/gpu": "0"})
        );
    }

    #[test]
    fn unserved_resources_and_bad_amounts_are_named() {
        assert!(
            validate(&quota(r#"{"services": "3"}"#))
                .unwrap_err()
                .contains("spec.hard.services")
        );
        assert!(
            validate(&quota(r#"{"requests.cpu": "lots"}"#))
                .unwrap_err()
                .contains("\"lots\" is not a quantity")
        );
        let huge = quota(r#"{"requests.nvidia.com/gpu": "1"}"#);
        assert!(
            refusal(
                "q",
                &huge,
                &[],
                &spec(Some("1"), Some("100000000000000000000"))
            )
            .is_some(),
            "an amount beyond i64 is refused, not wrapped"
        );
        assert_eq!(Resource::RequestsMemory.show(3 << 30), "3Gi");
        assert_eq!(Resource::RequestsCpu.show(2000), "2");
    }
}
