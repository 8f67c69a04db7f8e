//! The GPU series, as NVIDIA's dcgm-exporter writes them: its metric names,
//! HELP texts, types and units (from its `etc/default-counters.csv`), and its
//! labels in its order (`gpu`, `UUID`, `pci_bus_id`, `device`, `modelName`,
//! `Hostname`, then `DCGM_FI_DRIVER_VERSION` as its
//! `dcp-metrics-included.csv` adds it, then the pod's `container`,
//! `namespace`, `pod` as it adds them in Kubernetes), so dashboards made for
//! it (Grafana's 12239) work unchanged. `Hostname` is the ORCA node name.
//!
//! One sample per GPU per family, from the latest telemetry of every node
//! (what its agent last reported in a heartbeat).

use orca_proto::controlplane::v1 as pb;
use orca_proto::types::v1::GpuSample;

use super::exposition::{Exposition, Kind, Value};

const MIB: u64 = 1 << 20;

/// A dcgm-exporter field: name, help, type, and how a sample gives its value.
struct Field {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    value: fn(&GpuSample) -> Value,
}

/// The fields ORCA's telemetry has, in the order of dcgm-exporter's
/// `default-counters.csv` (the ECC totals are commented out there: enabled,
/// the exporter writes them as below).
const FIELDS: &[Field] = &[
    Field {
        name: "DCGM_FI_DEV_SM_CLOCK",
        help: "SM clock frequency (in MHz).",
        kind: Kind::Gauge,
        value: |g| Value::Int(g.sm_clock_mhz.into()),
    },
    Field {
        name: "DCGM_FI_DEV_MEM_CLOCK",
        help: "Memory clock frequency (in MHz).",
        kind: Kind::Gauge,
        value: |g| Value::Int(g.mem_clock_mhz.into()),
    },
    Field {
        name: "DCGM_FI_DEV_GPU_TEMP",
        help: "GPU temperature (in C).",
        kind: Kind::Gauge,
        value: |g| Value::Int(g.temperature_c.into()),
    },
    Field {
        name: "DCGM_FI_DEV_POWER_USAGE",
        help: "Power draw (in W).",
        kind: Kind::Gauge,
        value: |g| Value::Float(f64::from(g.power_mw) / 1000.0),
    },
    Field {
        name: "DCGM_FI_DEV_GPU_UTIL",
        help: "GPU utilization (in %).",
        kind: Kind::Gauge,
        value: |g| Value::Int(g.gpu_util_percent.into()),
    },
    Field {
        name: "DCGM_FI_DEV_MEM_COPY_UTIL",
        help: "Memory utilization (in %).",
        kind: Kind::Gauge,
        value: |g| Value::Int(g.mem_util_percent.into()),
    },
    Field {
        name: "DCGM_FI_DEV_XID_ERRORS",
        help: "Value of the last XID error encountered.",
        kind: Kind::Gauge,
        value: |g| Value::Int(g.last_xid.into()),
    },
    Field {
        name: "DCGM_FI_DEV_FB_FREE",
        help: "Framebuffer memory free (in MiB).",
        kind: Kind::Gauge,
        value: |g| Value::Int(g.memory_total_bytes.saturating_sub(g.memory_used_bytes) / MIB),
    },
    Field {
        name: "DCGM_FI_DEV_FB_USED",
        help: "Framebuffer memory used (in MiB).",
        kind: Kind::Gauge,
        value: |g| Value::Int(g.memory_used_bytes / MIB),
    },
    Field {
        name: "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL",
        help: "Total number of single-bit volatile ECC errors.",
        kind: Kind::Counter,
        value: |g| Value::Int(g.ecc_corrected),
    },
    Field {
        name: "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",
        help: "Total number of double-bit volatile ECC errors.",
        kind: Kind::Counter,
        value: |g| Value::Int(g.ecc_uncorrected),
    },
];

/// The metric names written, in order.
pub fn names() -> impl Iterator<Item = &'static str> {
    FIELDS.iter().map(|f| f.name)
}

/// The labels of one GPU's samples.
struct Labels {
    gpu: String,
    device: String,
    /// (namespace, pod, container) of the pod using the GPU.
    pod: Option<(String, String, String)>,
}

impl Labels {
    fn of(gpu: &GpuSample) -> Self {
        // The first process the agent matched to a pod's container; else the
        // pod the device is allocated to (no container then).
        let pod = gpu
            .processes
            .iter()
            .find_map(|p| {
                let r = p.pod.as_ref()?;
                Some((r.namespace.clone(), r.name.clone(), p.container.clone()))
            })
            .or_else(|| match gpu.allocated_to.as_str() {
                "" => None,
                held => {
                    let (namespace, name) = held.split_once('/').unwrap_or(("", held));
                    Some((namespace.to_owned(), name.to_owned(), String::new()))
                }
            });
        Self {
            gpu: gpu.index.to_string(),
            device: format!("nvidia{}", gpu.index),
            pod,
        }
    }

    fn pairs<'a>(
        &'a self,
        node: &'a pb::NodeTelemetry,
        gpu: &'a GpuSample,
    ) -> Vec<(&'static str, &'a str)> {
        let mut pairs = vec![
            ("gpu", self.gpu.as_str()),
            ("UUID", gpu.uuid.as_str()),
            ("pci_bus_id", gpu.pci_bus_id.as_str()),
            ("device", self.device.as_str()),
            ("modelName", gpu.model.as_str()),
            ("Hostname", node.node.as_str()),
        ];
        if !node.driver_version.is_empty() {
            pairs.push(("DCGM_FI_DRIVER_VERSION", node.driver_version.as_str()));
        }
        if let Some((namespace, pod, container)) = &self.pod {
            pairs.push(("container", container.as_str()));
            pairs.push(("namespace", namespace.as_str()));
            pairs.push(("pod", pod.as_str()));
        }
        pairs
    }
}

/// Writes every field's family, one sample per GPU of `nodes`.
pub fn write(out: &mut Exposition, nodes: &[pb::NodeTelemetry]) {
    let gpus: Vec<(&pb::NodeTelemetry, &GpuSample, Labels)> = nodes
        .iter()
        .flat_map(|n| n.gpus.iter().map(move |g| (n, g, Labels::of(g))))
        .collect();
    for field in FIELDS {
        let mut family = out.family(field.name, field.help, field.kind);
        for (node, gpu, labels) in &gpus {
            family.sample(&labels.pairs(node, gpu), (field.value)(gpu));
        }
    }
}
