//! Scheduling fit: what a pod asks for (Kubernetes' request defaulting, init
//! containers), whether a node has room, labels and tolerated taints for it,
//! the host ports pods would share, and how loaded a node would be. Pure
//! functions of the pod spec and the node; the scheduler and the registry's
//! listings use them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{PodSpec, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use orca_proto::controlplane::v1 as pb;
use orca_proto::types::v1::{PodPhase, Resources};

use crate::pod::phase;
use crate::quantity;

/// The extended resource name of NVIDIA GPUs.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";

fn amount(list: Option<&BTreeMap<String, Quantity>>, name: &str, millis: bool) -> Option<i64> {
    list.and_then(|l| l.get(name))
        .and_then(|q| quantity::parse(&q.0, millis))
        // parse bounds every value by i64::MAX; create refuses those it cannot read.
        .map(|v| i64::try_from(v).unwrap_or(i64::MAX))
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

/// The pod spec a record carries, when it reads as one.
pub fn spec_of(record: &pb::PodRecord) -> Option<PodSpec> {
    serde_json::from_str(&record.pod.as_ref()?.spec_json).ok()
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

/// Why a node cannot take a pod, or None when it can.
pub fn unfit(
    node: &pb::Node,
    used: &Resources,
    spec: &PodSpec,
    want: &Resources,
) -> Option<String> {
    let cap = node.allocatable.unwrap_or_default();
    let short = |what: &str, cap: i64, used: i64, want: i64| {
        (want > 0 && used.saturating_add(want) > cap)
            .then(|| format!("{what}: {} free, {want} asked", cap.saturating_sub(used)))
    };
    if let Some(why) = short(
        "cpu millis",
        cap.cpu_millis,
        used.cpu_millis,
        want.cpu_millis,
    )
    .or_else(|| {
        short(
            "memory bytes",
            cap.memory_bytes,
            used.memory_bytes,
            want.memory_bytes,
        )
    })
    .or_else(|| short("gpus", cap.gpus.into(), used.gpus.into(), want.gpus.into()))
    {
        return Some(why);
    }
    if cap.pods > 0 && used.pods >= cap.pods {
        return Some(format!("pods: all {} slots taken", cap.pods));
    }
    for (k, v) in spec.node_selector.iter().flatten() {
        if node.labels.get(k) != Some(v) {
            return Some(format!("nodeSelector {k}={v} does not match"));
        }
    }
    let tolerations = spec.tolerations.as_deref().unwrap_or_default();
    for taint in &node.taints {
        if taint.effect != "PreferNoSchedule" && !tolerations.iter().any(|t| tolerates(t, taint)) {
            return Some(format!(
                "taint {}={}:{} is not tolerated",
                taint.key, taint.value, taint.effect
            ));
        }
    }
    None
}

/// The ports a pod's containers listen on (`containerPort`, per protocol).
/// Containers share their host's network namespace, so these are the host's
/// ports, as Kubernetes' `hostPort`s are.
pub fn ports(spec: &PodSpec) -> Vec<(String, i32)> {
    spec.containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .map(|p| {
            (
                p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                p.container_port,
            )
        })
        .collect()
}

/// Why pod `spec` cannot share a node whose pods hold `taken` ports.
pub fn port_clash(taken: &[(String, i32)], spec: &PodSpec) -> Option<String> {
    ports(spec)
        .into_iter()
        .find(|p| taken.contains(p))
        .map(|(proto, port)| {
            format!("port {port}/{proto} is taken by another pod (pods share the host's network)")
        })
}

/// Kubernetes' toleration matching.
pub fn tolerates(t: &Toleration, taint: &pb::Taint) -> bool {
    let effect_ok = t
        .effect
        .as_deref()
        .is_none_or(|e| e.is_empty() || e == taint.effect);
    let key_ok =
        t.key.as_deref().is_none_or(|k| k.is_empty()) || t.key.as_deref() == Some(&taint.key);
    let value_ok = match t.operator.as_deref() {
        Some("Exists") => true,
        _ => t.value.as_deref().unwrap_or_default() == taint.value,
    };
    // An empty key with Exists tolerates everything.
    effect_ok && key_ok && value_ok
}

/// Free share of a node after placing `want`, for "least loaded first".
pub fn free_share(node: &pb::Node, used: &Resources) -> u64 {
    let cap = node.allocatable.unwrap_or_default();
    let share = |cap: i64, used: i64| {
        if cap <= 0 {
            1000
        } else {
            (((cap - used).max(0) * 1000) / cap) as u64
        }
    };
    share(cap.cpu_millis, used.cpu_millis) + share(cap.memory_bytes, used.memory_bytes)
}

/// Adds `r` to `a`.
pub fn add(a: &mut Resources, r: &Resources) {
    a.cpu_millis += r.cpu_millis;
    a.memory_bytes += r.memory_bytes;
    a.gpus += r.gpus;
    a.pods += r.pods;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> PodSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn node(cpu: i64, mem: i64, gpus: i32) -> pb::Node {
        pb::Node {
            name: "n".into(),
            allocatable: Some(Resources {
                cpu_millis: cpu,
                memory_bytes: mem,
                gpus,
                pods: 10,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn requests_default_to_limits_and_init_containers_take_the_max() {
        let s = spec(
            "containers:\n- name: a\n  resources: {requests: {cpu: 500m}, limits: {memory: 1Gi, nvidia.com/gpu: 1}}\n\
             - name: b\n  resources: {requests: {cpu: '1', memory: 1Mi}}\n\
             initContainers:\n- name: i\n  resources: {requests: {cpu: '4'}}\n",
        );
        let r = requests(&s);
        assert_eq!(r.cpu_millis, 4000, "the init container's 4 CPUs beat 1.5");
        assert_eq!(r.memory_bytes, (1 << 30) + (1 << 20));
        assert_eq!(r.gpus, 1);
    }

    #[test]
    fn nodes_must_have_room_labels_and_tolerated_taints() {
        let gpu_pod = spec("containers:\n- name: a\n  resources: {limits: {nvidia.com/gpu: 2}}\n");
        let want = requests(&gpu_pod);
        let used = Resources::default();
        assert!(
            unfit(&node(1000, 1 << 30, 1), &used, &gpu_pod, &want)
                .unwrap()
                .contains("gpus")
        );
        assert!(unfit(&node(1000, 1 << 30, 2), &used, &gpu_pod, &want).is_none());

        let selective = spec("nodeSelector: {gpu: a100}\ncontainers:\n- name: a\n");
        let mut n = node(1000, 1 << 30, 0);
        assert!(unfit(&n, &used, &selective, &requests(&selective)).is_some());
        n.labels.insert("gpu".into(), "a100".into());
        assert!(unfit(&n, &used, &selective, &requests(&selective)).is_none());

        n.taints.push(pb::Taint {
            key: "dedicated".into(),
            value: "ml".into(),
            effect: "NoSchedule".into(),
        });
        assert!(
            unfit(&n, &used, &selective, &requests(&selective))
                .unwrap()
                .contains("taint")
        );
        let tolerant = spec(
            "nodeSelector: {gpu: a100}\ntolerations:\n- {key: dedicated, operator: Equal, value: ml, effect: NoSchedule}\ncontainers:\n- name: a\n",
        );
        assert!(unfit(&n, &used, &tolerant, &requests(&tolerant)).is_none());
        let exists = spec("tolerations:\n- {operator: Exists}\ncontainers:\n- name: a\n");
        assert!(unfit(&n, &used, &exists, &requests(&exists)).is_none());
    }

    #[test]
    fn pod_slots_and_quantities_at_the_edge() {
        let pod = spec("containers:\n- name: a\n  resources: {requests: {cpu: 700m}}\n");
        let want = requests(&pod);
        assert_eq!(want.cpu_millis, 700, "exact, not 701");
        let n = node(1400, 1 << 30, 0);
        let mut used = Resources::default();
        assert!(unfit(&n, &used, &pod, &want).is_none());
        add(&mut used, &want);
        assert!(
            unfit(&n, &used, &pod, &want).is_none(),
            "700m + 700m = 1400m fits"
        );
        add(&mut used, &want);
        let why = unfit(&n, &used, &pod, &want).unwrap();
        assert_eq!(why, "cpu millis: 0 free, 700 asked");
        let full = Resources {
            pods: 10,
            ..Default::default()
        };
        assert_eq!(
            unfit(&node(1 << 40, 1 << 40, 0), &full, &pod, &want).unwrap(),
            "pods: all 10 slots taken"
        );
        // Requests summing beyond i64 saturate instead of wrapping into a fit
        // (each alone is valid: 4Ei < i64::MAX bytes; creation refuses more).
        let c = "- name: a\n  resources: {requests: {memory: 4Ei}}\n";
        let huge = spec(&format!("containers:\n{c}{c}{c}"));
        assert_eq!(requests(&huge).memory_bytes, i64::MAX);
        assert!(unfit(&n, &Resources::default(), &huge, &requests(&huge)).is_some());
    }

    #[test]
    fn taints_match_by_key_value_and_effect() {
        let taint = pb::Taint {
            key: "k".into(),
            value: "v".into(),
            effect: "NoSchedule".into(),
        };
        let t = |yaml: &str| -> Toleration { serde_yaml::from_str(yaml).unwrap() };
        assert!(tolerates(&t("{key: k, operator: Equal, value: v}"), &taint));
        assert!(tolerates(&t("{key: k, operator: Exists}"), &taint));
        assert!(tolerates(&t("{operator: Exists}"), &taint));
        assert!(!tolerates(
            &t("{key: k, operator: Equal, value: w}"),
            &taint
        ));
        assert!(!tolerates(
            &t("{key: k, operator: Exists, effect: NoExecute}"),
            &taint
        ));
        assert!(!tolerates(&t("{key: other, operator: Exists}"), &taint));
        // PreferNoSchedule never keeps a pod off.
        let mut n = node(1000, 1 << 30, 0);
        n.taints.push(pb::Taint {
            effect: "PreferNoSchedule".into(),
            ..taint
        });
        let pod = spec("containers:\n- name: a\n");
        assert!(unfit(&n, &Resources::default(), &pod, &requests(&pod)).is_none());
    }

    #[test]
    fn host_ports_clash_per_protocol_and_load_is_a_free_share() {
        let web = spec(
            "containers:\n- name: a\n  ports: [{containerPort: 80}, {containerPort: 53, protocol: UDP}]\n",
        );
        assert_eq!(
            ports(&web),
            [("TCP".to_owned(), 80), ("UDP".to_owned(), 53)]
        );
        let dns_tcp = spec("containers:\n- name: a\n  ports: [{containerPort: 53}]\n");
        assert_eq!(port_clash(&ports(&web), &dns_tcp), None);
        assert!(
            port_clash(&ports(&web), &web)
                .unwrap()
                .contains("port 80/TCP")
        );
        let n = node(1000, 1000, 0);
        let half = Resources {
            cpu_millis: 500,
            memory_bytes: 500,
            ..Default::default()
        };
        assert_eq!(free_share(&n, &Resources::default()), 2000);
        assert_eq!(free_share(&n, &half), 1000);
        assert_eq!(
            free_share(&node(0, 0, 0), &half),
            2000,
            "no capacity known: neutral"
        );
    }
}
