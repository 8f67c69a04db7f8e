//! `/metrics/resource` (what metrics-server scrapes, so `kubectl top` works)
//! and `/stats/summary`, rendered from the usage the hosts' agents read from
//! their containers' cgroups. The virtual Node's own usage is the sum over the
//! hosts ORCA runs its pods on.

use std::collections::{BTreeSet, HashMap};

use serde_json::{Value, json};
use tracing::debug;

use crate::cluster::Cluster;

/// One container's usage.
#[derive(Debug, Clone, Default)]
pub struct ContainerSample {
    /// Container name.
    pub name: String,
    /// Cumulative CPU time, core-nanoseconds.
    pub cpu_core_ns: u64,
    /// Memory working set, bytes.
    pub memory_working_set: u64,
    /// When the container started (Unix seconds), if known.
    pub start_time_s: Option<i64>,
    /// When the sample was read (Unix milliseconds).
    pub at_ms: i64,
}

/// One pod's containers.
#[derive(Debug, Clone, Default)]
pub struct PodSample {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Kubernetes uid.
    pub uid: String,
    /// Its containers.
    pub containers: Vec<ContainerSample>,
}

/// The Node's usage.
#[derive(Debug, Clone, Default)]
pub struct NodeSample {
    /// Cumulative CPU time, core-nanoseconds.
    pub cpu_core_ns: u64,
    /// Memory working set, bytes.
    pub memory_working_set: u64,
    /// When it was read (Unix milliseconds).
    pub at_ms: i64,
}

fn millis(t: Option<&prost_types::Timestamp>) -> i64 {
    t.map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
        .unwrap_or(0)
}

/// Reads the usage of every host that runs a pod from Kubernetes, and of
/// those pods' containers. A host that does not answer is left out (its pods
/// have no sample this time, as a kubelet's missing cAdvisor data).
pub async fn collect(cluster: &Cluster) -> (NodeSample, Vec<PodSample>) {
    let records = cluster.shared().store().pods.scan("").unwrap_or_default();
    // ORCA uid → (namespace, name, Kubernetes uid).
    let mut pods: HashMap<String, (String, String, String)> = HashMap::new();
    let mut hosts = BTreeSet::new();
    for r in &records {
        let Some(pod) = r.pod.as_ref() else { continue };
        let Some(k8s_uid) = pod.annotations.get(crate::references::KUBERNETES_UID) else {
            continue;
        };
        let rf = pod.r#ref.clone().unwrap_or_default();
        pods.insert(rf.uid.clone(), (rf.namespace, rf.name, k8s_uid.clone()));
        if !r.node_name.is_empty() {
            hosts.insert(r.node_name.clone());
        }
    }
    let mut node = NodeSample {
        at_ms: jiff::Timestamp::now().as_millisecond(),
        ..Default::default()
    };
    let mut samples = Vec::new();
    for host in hosts {
        let stats = match cluster.streams().pod_stats(&host).await {
            Ok(s) => s,
            Err(e) => {
                debug!(host = %host, error = %e, "no usage from this host");
                continue;
            }
        };
        if let Some(n) = &stats.node {
            node.cpu_core_ns += n.cpu_usage_core_nanoseconds;
            node.memory_working_set += n.memory_working_set_bytes;
            node.at_ms = node.at_ms.min(millis(n.time.as_ref())).max(1);
        }
        for p in stats.pods {
            let uid = p.pod.map(|r| r.uid).unwrap_or_default();
            let Some((namespace, name, k8s_uid)) = pods.get(&uid).cloned() else {
                continue;
            };
            samples.push(PodSample {
                namespace,
                name,
                uid: k8s_uid,
                containers: p
                    .containers
                    .into_iter()
                    .map(|c| ContainerSample {
                        name: c.name,
                        cpu_core_ns: c.cpu_usage_core_nanoseconds,
                        memory_working_set: c.memory_working_set_bytes,
                        start_time_s: c.start_time.map(|t| t.seconds),
                        at_ms: millis(c.time.as_ref()),
                    })
                    .collect(),
            });
        }
    }
    (node, samples)
}

/// The Prometheus text exposition of `/metrics/resource`, with the kubelet's
/// metric names, labels and sample timestamps (metrics-server needs them).
/// Families without samples are left out (no pods: no container series).
pub fn metrics_resource(node: &NodeSample, pods: &[PodSample]) -> String {
    use crate::metrics::exposition::{Exposition, Kind, Value as V};
    let mut out = Exposition::default();
    let secs = |ns: u64| V::Float(ns as f64 / 1e9);
    let containers = || {
        pods.iter()
            .flat_map(|p| p.containers.iter().map(move |c| (p, c)))
    };
    let labels = |p: &PodSample, c: &ContainerSample| {
        [
            ("container", c.name.clone()),
            ("namespace", p.namespace.clone()),
            ("pod", p.name.clone()),
        ]
    };
    fn refs<'a>(l: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
        l.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }
    let mut f = out.family(
        "container_cpu_usage_seconds_total",
        "[STABLE] Cumulative cpu time consumed by the container in core-seconds",
        Kind::Counter,
    );
    for (p, c) in containers() {
        f.sample_at(&refs(&labels(p, c)), secs(c.cpu_core_ns), c.at_ms);
    }
    let mut f = out.family(
        "container_memory_working_set_bytes",
        "[STABLE] Current working set of the container in bytes",
        Kind::Gauge,
    );
    for (p, c) in containers() {
        f.sample_at(&refs(&labels(p, c)), V::Int(c.memory_working_set), c.at_ms);
    }
    let mut f = out.family(
        "container_start_time_seconds",
        "[STABLE] Start time of the container since unix epoch in seconds",
        Kind::Gauge,
    );
    for (p, c) in containers() {
        if let Some(s) = c.start_time_s {
            f.sample_at(&refs(&labels(p, c)), V::Int(s.max(0) as u64), c.at_ms);
        }
    }
    out.family(
        "node_cpu_usage_seconds_total",
        "[STABLE] Cumulative cpu time consumed by the node in core-seconds",
        Kind::Counter,
    )
    .sample_at(&[], secs(node.cpu_core_ns), node.at_ms);
    out.family(
        "node_memory_working_set_bytes",
        "[STABLE] Current working set of the node in bytes",
        Kind::Gauge,
    )
    .sample_at(&[], V::Int(node.memory_working_set), node.at_ms);
    let running = || pods.iter().filter(|p| !p.containers.is_empty());
    let pod_labels = |p: &PodSample| [("namespace", p.namespace.clone()), ("pod", p.name.clone())];
    let at = |p: &PodSample| p.containers.iter().map(|c| c.at_ms).max().unwrap_or(0);
    let mut f = out.family(
        "pod_cpu_usage_seconds_total",
        "[STABLE] Cumulative cpu time consumed by the pod in core-seconds",
        Kind::Counter,
    );
    for p in running() {
        let total: u64 = p.containers.iter().map(|c| c.cpu_core_ns).sum();
        f.sample_at(&refs(&pod_labels(p)), secs(total), at(p));
    }
    let mut f = out.family(
        "pod_memory_working_set_bytes",
        "[STABLE] Current working set of the pod in bytes",
        Kind::Gauge,
    );
    for p in running() {
        let total: u64 = p.containers.iter().map(|c| c.memory_working_set).sum();
        f.sample_at(&refs(&pod_labels(p)), V::Int(total), at(p));
    }
    out.family(
        "scrape_error",
        "[STABLE] 1 if there was an error while getting container metrics, 0 otherwise",
        Kind::Gauge,
    )
    .sample(&[], V::Int(0));
    out.finish()
}

fn rfc3339_ms(ms: i64) -> Value {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| Value::String(t.to_string()))
        .unwrap_or(Value::Null)
}

fn rfc3339_s(s: i64) -> Value {
    jiff::Timestamp::from_second(s)
        .map(|t| Value::String(t.to_string()))
        .unwrap_or(Value::Null)
}

/// The `/stats/summary` document (the kubelet's `stats/v1alpha1` Summary,
/// with the CPU and memory fields).
pub fn summary(node_name: &str, node: &NodeSample, pods: &[PodSample]) -> Value {
    let cpu = |ns: u64, at: i64| json!({"time": rfc3339_ms(at), "usageCoreNanoSeconds": ns});
    let memory = |bytes: u64, at: i64| json!({"time": rfc3339_ms(at), "workingSetBytes": bytes, "usageBytes": bytes});
    json!({
        "node": {
            "nodeName": node_name,
            "cpu": cpu(node.cpu_core_ns, node.at_ms),
            "memory": memory(node.memory_working_set, node.at_ms),
        },
        "pods": pods.iter().map(|p| {
            let at = p.containers.iter().map(|c| c.at_ms).max().unwrap_or(0);
            json!({
                "podRef": {"name": p.name, "namespace": p.namespace, "uid": p.uid},
                "startTime": p.containers.iter().filter_map(|c| c.start_time_s).min().map(rfc3339_s),
                "containers": p.containers.iter().map(|c| json!({
                    "name": c.name,
                    "startTime": c.start_time_s.map(rfc3339_s),
                    "cpu": cpu(c.cpu_core_ns, c.at_ms),
                    "memory": memory(c.memory_working_set, c.at_ms),
                })).collect::<Vec<_>>(),
                "cpu": cpu(p.containers.iter().map(|c| c.cpu_core_ns).sum(), at),
                "memory": memory(p.containers.iter().map(|c| c.memory_working_set).sum(), at),
            })
        }).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (NodeSample, Vec<PodSample>) {
        let c = ContainerSample {
            name: "main".into(),
            cpu_core_ns: 1_500_000_000,
            memory_working_set: 4096,
            start_time_s: Some(1_790_000_000),
            at_ms: 1_790_000_100_000,
        };
        let pods = vec![PodSample {
            namespace: "default".into(),
            name: "web".into(),
            uid: "u1".into(),
            containers: vec![c],
        }];
        let node = NodeSample {
            cpu_core_ns: 9_000_000_000,
            memory_working_set: 1 << 20,
            at_ms: 1_790_000_100_000,
        };
        (node, pods)
    }

    #[test]
    fn metrics_have_the_kubelet_names_labels_and_timestamps() {
        let (node, pods) = sample();
        let text = metrics_resource(&node, &pods);
        assert!(text.contains(
            "container_cpu_usage_seconds_total{container=\"main\",namespace=\"default\",pod=\"web\"} 1.5 1790000100000\n"
        ), "{text}");
        assert!(text.contains("container_memory_working_set_bytes{container=\"main\",namespace=\"default\",pod=\"web\"} 4096 1790000100000\n"));
        assert!(text.contains("node_cpu_usage_seconds_total 9 1790000100000\n"));
        assert!(text.contains("# TYPE container_cpu_usage_seconds_total counter\n"));
        assert!(text.contains("scrape_error 0\n"));
    }

    #[test]
    fn families_without_samples_are_left_out() {
        let (node, _) = sample();
        let text = metrics_resource(&node, &[]);
        assert!(!text.contains("container_"), "{text}");
        assert!(!text.contains("pod_"), "{text}");
        assert!(
            text.contains("# TYPE node_cpu_usage_seconds_total counter\n"),
            "{text}"
        );
        assert!(text.contains("scrape_error 0\n"), "{text}");
    }

    #[test]
    fn summary_has_pod_refs_and_usage() {
        let (node, pods) = sample();
        let s = summary("orca", &node, &pods);
        assert_eq!(s["node"]["nodeName"], "orca");
        assert_eq!(s["pods"][0]["podRef"]["uid"], "u1");
        assert_eq!(
            s["pods"][0]["containers"][0]["cpu"]["usageCoreNanoSeconds"],
            1_500_000_000u64
        );
        assert_eq!(s["pods"][0]["memory"]["workingSetBytes"], 4096);
        assert_eq!(s["pods"][0]["startTime"], "2026-09-21T14:13:20Z");
    }
}
