//! GPU telemetry the agents report in their heartbeats, kept in memory: the
//! latest sample of every GPU of every node and a short history (its depth is
//! `gpu_history` in the config). Telemetry is not stored in sled: it is
//! re-reported every heartbeat, and a restarted control plane has it again
//! after one interval.
//!
//! [`pod_usage`] attributes it to pods: the GPUs a pod holds (from its status)
//! and the processes the agent matched to its containers by PID.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use orca_proto::controlplane::v1 as pb;
use orca_proto::types::v1::{GpuSample, PodRef};

/// What one heartbeat said of a node's GPUs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// `nvml`, `fake`, `none`.
    pub source: String,
    /// Why there are no devices, when there are none.
    pub note: String,
    /// NVIDIA driver version.
    pub driver_version: String,
    /// One sample per GPU.
    pub gpus: Vec<GpuSample>,
}

#[derive(Debug, Default)]
struct NodeGpus {
    latest: Report,
    /// Earlier samples, oldest first; each entry is one heartbeat's GPUs.
    history: VecDeque<Vec<GpuSample>>,
}

/// The telemetry of every node that reported.
#[derive(Debug)]
pub struct TelemetryStore {
    depth: usize,
    nodes: Mutex<BTreeMap<String, NodeGpus>>,
}

impl TelemetryStore {
    /// A store keeping `depth` samples of history per GPU.
    pub fn new(depth: usize) -> Self {
        Self {
            depth,
            nodes: Mutex::default(),
        }
    }

    fn nodes(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, NodeGpus>> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a heartbeat's report for `node`; returns the GPUs it reports
    /// unhealthy that were healthy (or unknown) before.
    pub fn record(&self, node: &str, report: Report) -> Vec<GpuSample> {
        let mut nodes = self.nodes();
        let entry = nodes.entry(node.to_owned()).or_default();
        let newly_unhealthy = report
            .gpus
            .iter()
            .filter(|g| !g.healthy)
            .filter(|g| {
                entry
                    .latest
                    .gpus
                    .iter()
                    .find(|b| b.uuid == g.uuid)
                    .is_none_or(|b| b.healthy)
            })
            .cloned()
            .collect();
        if !entry.latest.gpus.is_empty() && self.depth > 0 {
            entry
                .history
                .push_back(std::mem::take(&mut entry.latest.gpus));
            while entry.history.len() > self.depth {
                entry.history.pop_front();
            }
        }
        entry.latest = report;
        newly_unhealthy
    }

    /// Forgets a removed node.
    pub fn forget(&self, node: &str) {
        self.nodes().remove(node);
    }

    /// Telemetry of one node (or all when `node` is empty), with up to
    /// `history` earlier samples per GPU.
    pub fn snapshot(&self, node: &str, history: usize) -> Vec<pb::NodeTelemetry> {
        self.nodes()
            .iter()
            .filter(|(name, _)| node.is_empty() || name.as_str() == node)
            .map(|(name, n)| {
                let skip = n.history.len().saturating_sub(history.min(self.depth));
                pb::NodeTelemetry {
                    node: name.clone(),
                    source: n.latest.source.clone(),
                    note: n.latest.note.clone(),
                    driver_version: n.latest.driver_version.clone(),
                    gpus: n.latest.gpus.clone(),
                    history: n.history.iter().skip(skip).flatten().cloned().collect(),
                }
            })
            .collect()
    }
}

/// Node label: the short GPU model (`H100`), matched by the
/// `orca.research/gpu-model` annotation and usable in nodeSelectors.
pub const GPU_MODEL_LABEL: &str = "orca.research/gpu-model";
/// Node labels in the form NVIDIA's GPU feature discovery writes them, so
/// nodeSelectors written for GPU nodes elsewhere work here.
pub const GFD_PRODUCT_LABEL: &str = "nvidia.com/gpu.product";
/// GPU count label (GPU feature discovery's).
pub const GFD_COUNT_LABEL: &str = "nvidia.com/gpu.count";
/// GPU memory label, MiB (GPU feature discovery's).
pub const GFD_MEMORY_LABEL: &str = "nvidia.com/gpu.memory";
/// Every label the telemetry sets.
pub const GPU_LABELS: [&str; 4] = [
    GPU_MODEL_LABEL,
    GFD_PRODUCT_LABEL,
    GFD_COUNT_LABEL,
    GFD_MEMORY_LABEL,
];

/// The short model of an NVML product name, as EC2 names GPUs:
/// `NVIDIA H100 80GB HBM3` → `H100`, `NVIDIA A100-SXM4-80GB` → `A100`,
/// `Tesla T4` → `T4`, `NVIDIA RTX 6000 Ada Generation` → `RTX-6000-Ada`.
pub fn short_model(product: &str) -> String {
    let rest = ["NVIDIA ", "Tesla ", "GeForce ", "Quadro "]
        .iter()
        .fold(product.trim(), |s, p| s.strip_prefix(p).unwrap_or(s));
    let mut words = Vec::new();
    for (i, word) in rest.split_whitespace().enumerate() {
        let word = if i == 0 {
            word.split('-').next().unwrap_or(word)
        } else {
            word
        };
        let upper = word.to_ascii_uppercase();
        let is_detail = upper.ends_with("GB")
            && upper[..upper.len() - 2].bytes().all(|b| b.is_ascii_digit())
            || ["PCIE", "SXM", "HBM", "NVL", "GENERATION"]
                .iter()
                .any(|d| upper.starts_with(d));
        if i > 0 && is_detail {
            break;
        }
        words.push(word);
    }
    words.join("-")
}

/// Whether two GPU model names name the same model (`h100` and `H100`,
/// `RTX 6000 Ada` and `RTX-6000-Ada`).
pub fn same_model(a: &str, b: &str) -> bool {
    let norm = |s: &str| s.trim().to_ascii_lowercase().replace(' ', "-");
    norm(a) == norm(b)
}

/// The labels a node's GPU report gives it (none without GPUs).
pub fn gpu_labels(report: &Report) -> BTreeMap<String, String> {
    let Some(first) = report.gpus.first() else {
        return BTreeMap::new();
    };
    let label_value = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._-".contains(c) {
                    c
                } else {
                    '-'
                }
            })
            .take(63)
            .collect::<String>()
            .trim_matches(|c: char| !c.is_ascii_alphanumeric())
            .to_owned()
    };
    BTreeMap::from([
        (
            GPU_MODEL_LABEL.to_owned(),
            label_value(&short_model(&first.model)),
        ),
        (GFD_PRODUCT_LABEL.to_owned(), label_value(&first.model)),
        (GFD_COUNT_LABEL.to_owned(), report.gpus.len().to_string()),
        (
            GFD_MEMORY_LABEL.to_owned(),
            (first.memory_total_bytes >> 20).to_string(),
        ),
    ])
}

fn pod_key(p: &PodRef) -> (String, String) {
    (p.namespace.clone(), p.name.clone())
}

/// What each pod uses: the GPUs it holds (from the pods' statuses) and the
/// processes on any GPU that the agent matched to its containers.
pub fn pod_usage(nodes: &[pb::NodeTelemetry], pods: &[pb::PodRecord]) -> Vec<pb::PodGpuUsage> {
    let mut usage: BTreeMap<(String, String), pb::PodGpuUsage> = BTreeMap::new();
    for record in pods {
        let (Some(pod), Some(status)) = (&record.pod, &record.status) else {
            continue;
        };
        if status.gpu_uuids.is_empty() {
            continue;
        }
        let Some(r) = pod.r#ref.clone() else { continue };
        usage.insert(
            pod_key(&r),
            pb::PodGpuUsage {
                pod: Some(r),
                node: record.node_name.clone(),
                gpu_uuids: status.gpu_uuids.clone(),
                ..Default::default()
            },
        );
    }
    // The GPUs each pod's usage is computed over: those it holds, and those its
    // processes run on.
    let mut on: BTreeMap<(String, String), Vec<&GpuSample>> = BTreeMap::new();
    for n in nodes {
        for gpu in &n.gpus {
            for p in &gpu.processes {
                let Some(r) = &p.pod else { continue };
                let entry = usage.entry(pod_key(r)).or_insert_with(|| pb::PodGpuUsage {
                    pod: Some(r.clone()),
                    node: n.node.clone(),
                    ..Default::default()
                });
                entry.memory_used_bytes += p.used_memory_bytes;
                entry.processes.push(p.clone());
                let gpus = on.entry(pod_key(r)).or_default();
                if !gpus.iter().any(|g| g.uuid == gpu.uuid) {
                    gpus.push(gpu);
                }
            }
            for (key, u) in usage.iter() {
                if u.node == n.node && u.gpu_uuids.contains(&gpu.uuid) {
                    let gpus = on.entry(key.clone()).or_default();
                    if !gpus.iter().any(|g| g.uuid == gpu.uuid) {
                        gpus.push(gpu);
                    }
                }
            }
        }
    }
    for (key, u) in usage.iter_mut() {
        let gpus = on.get(key).map(Vec::as_slice).unwrap_or_default();
        if !gpus.is_empty() {
            u.gpu_util_percent =
                gpus.iter().map(|g| g.gpu_util_percent).sum::<u32>() / gpus.len() as u32;
            u.power_mw = gpus.iter().map(|g| u64::from(g.power_mw)).sum();
        }
    }
    usage.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use orca_proto::types::v1::GpuProcess;

    fn gpu(uuid: &str, util: u32, procs: Vec<GpuProcess>) -> GpuSample {
        GpuSample {
            uuid: uuid.into(),
            gpu_util_percent: util,
            power_mw: 100_000,
            processes: procs,
            ..Default::default()
        }
    }

    #[test]
    fn models_are_named_as_ec2_names_them() {
        for (product, short) in [
            ("NVIDIA H100 80GB HBM3", "H100"),
            ("NVIDIA A100-SXM4-80GB", "A100"),
            ("Tesla T4", "T4"),
            ("NVIDIA A10G", "A10G"),
            ("NVIDIA L40S", "L40S"),
            ("NVIDIA RTX 6000 Ada Generation", "RTX-6000-Ada"),
            ("NVIDIA H100 NVL", "H100"),
        ] {
            assert_eq!(short_model(product), short, "{product}");
        }
        assert!(same_model("rtx 6000 ada", "RTX-6000-Ada"));
        assert!(!same_model("A100", "A10G"));
        let labels = gpu_labels(&Report {
            gpus: vec![
                GpuSample {
                    model: "NVIDIA H100 80GB HBM3".into(),
                    memory_total_bytes: 85520809984,
                    ..Default::default()
                };
                2
            ],
            ..Default::default()
        });
        assert_eq!(labels[GPU_MODEL_LABEL], "H100");
        assert_eq!(labels[GFD_PRODUCT_LABEL], "NVIDIA-H100-80GB-HBM3");
        assert_eq!(labels[GFD_COUNT_LABEL], "2");
        assert_eq!(labels[GFD_MEMORY_LABEL], "81559");
    }

    #[test]
    fn a_gpu_turning_unhealthy_is_reported_once() {
        let store = TelemetryStore::new(2);
        let report = |healthy: bool| Report {
            gpus: vec![GpuSample {
                uuid: "GPU-a".into(),
                healthy,
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(store.record("n", report(true)).is_empty());
        assert_eq!(store.record("n", report(false)).len(), 1);
        assert!(store.record("n", report(false)).is_empty());
        // Unknown before and unhealthy at once (a control plane that restarted).
        assert_eq!(store.record("m", report(false)).len(), 1);
    }

    #[test]
    fn history_keeps_the_configured_depth() {
        let store = TelemetryStore::new(2);
        for util in 1..=4 {
            store.record(
                "n",
                Report {
                    gpus: vec![gpu("GPU-a", util, vec![])],
                    ..Default::default()
                },
            );
        }
        let snap = store.snapshot("", 10);
        assert_eq!(snap[0].gpus[0].gpu_util_percent, 4);
        let hist: Vec<u32> = snap[0].history.iter().map(|g| g.gpu_util_percent).collect();
        assert_eq!(hist, [2, 3]);
        assert!(store.snapshot("n", 0)[0].history.is_empty());
        assert!(store.snapshot("other", 10).is_empty());
    }

    #[test]
    fn usage_follows_pids_and_allocations() {
        let train = PodRef {
            namespace: "ml".into(),
            name: "train".into(),
            uid: "u1".into(),
        };
        let nodes = vec![pb::NodeTelemetry {
            node: "n".into(),
            gpus: vec![
                gpu(
                    "GPU-a",
                    80,
                    vec![GpuProcess {
                        pid: 7,
                        used_memory_bytes: 1 << 30,
                        pod: Some(train.clone()),
                        container: "c".into(),
                    }],
                ),
                gpu("GPU-b", 20, vec![]),
            ],
            ..Default::default()
        }];
        let held = pb::PodRecord {
            pod: Some(orca_proto::types::v1::Pod {
                r#ref: Some(PodRef {
                    namespace: "ml".into(),
                    name: "idle".into(),
                    uid: "u2".into(),
                }),
                ..Default::default()
            }),
            node_name: "n".into(),
            status: Some(orca_proto::types::v1::PodStatus {
                gpu_uuids: vec!["GPU-b".into()],
                ..Default::default()
            }),
            ..Default::default()
        };
        let usage = pod_usage(&nodes, &[held]);
        assert_eq!(usage.len(), 2);
        let idle = usage
            .iter()
            .find(|u| u.pod.as_ref().unwrap().name == "idle")
            .unwrap();
        assert_eq!((idle.gpu_util_percent, idle.memory_used_bytes), (20, 0));
        let train = usage
            .iter()
            .find(|u| u.pod.as_ref().unwrap().name == "train")
            .unwrap();
        assert_eq!(
            (train.gpu_util_percent, train.memory_used_bytes),
            (80, 1 << 30)
        );
        assert_eq!(train.processes[0].pid, 7);
    }
}
