//! `orca top nodes|pods`: GPU telemetry as the nodes last reported it, per GPU
//! and per pod (processes matched to pods' containers by PID on the node).

use std::io::{self, Write};

use orca_proto::controlplane::v1 as pb;
use serde_json::{Value, json};

use super::output::table;

fn gib(bytes: u64) -> String {
    format!("{:.1}Gi", bytes as f64 / f64::from(1u32 << 30))
}

fn watts(mw: u64) -> String {
    format!("{}W", (mw + 500) / 1000)
}

/// Prints one row per GPU (and one per node without GPUs, with the reason).
pub fn nodes(out: &mut impl Write, t: &pb::TelemetryResponse) -> io::Result<()> {
    let mut rows = vec![
        [
            "NODE", "GPU", "MODEL", "UTIL", "MEM-UTIL", "MEMORY", "TEMP", "POWER", "HEALTH", "POD",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for n in &t.nodes {
        if n.gpus.is_empty() {
            let note = if n.note.is_empty() {
                format!("no GPUs ({})", n.source)
            } else {
                format!("no GPUs ({}: {})", n.source, n.note)
            };
            let mut row = vec![n.node.clone(), "-".into(), note];
            row.extend(std::iter::repeat_n("-".to_owned(), 7));
            rows.push(row);
            continue;
        }
        for g in &n.gpus {
            let health = if g.healthy {
                "ok".to_owned()
            } else {
                format!("unhealthy: {}", g.health_reason)
            };
            let pod = g
                .processes
                .iter()
                .find_map(|p| p.pod.as_ref())
                .map(|p| format!("{}/{}", p.namespace, p.name))
                .or_else(|| Some(g.allocated_to.clone()).filter(|a| !a.is_empty()))
                .unwrap_or_else(|| "-".into());
            rows.push(vec![
                n.node.clone(),
                g.index.to_string(),
                g.model.clone(),
                format!("{}%", g.gpu_util_percent),
                format!("{}%", g.mem_util_percent),
                format!("{}/{}", gib(g.memory_used_bytes), gib(g.memory_total_bytes)),
                format!("{}C", g.temperature_c),
                format!(
                    "{}/{}",
                    watts(g.power_mw.into()),
                    watts(g.power_limit_mw.into())
                ),
                health,
                pod,
            ]);
        }
    }
    table(out, &rows)
}

/// Prints one row per pod that holds GPUs or runs processes on one.
pub fn pods(out: &mut impl Write, t: &pb::TelemetryResponse) -> io::Result<()> {
    let mut rows = vec![
        [
            "NAMESPACE",
            "NAME",
            "NODE",
            "GPUS",
            "UTIL",
            "GPU-MEMORY",
            "POWER",
            "PROCESSES",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for u in &t.pods {
        let pod = u.pod.clone().unwrap_or_default();
        let processes: Vec<String> = u
            .processes
            .iter()
            .map(|p| format!("{}:{}", p.container, p.pid))
            .collect();
        rows.push(vec![
            pod.namespace,
            pod.name,
            u.node.clone(),
            u.gpu_uuids.len().to_string(),
            format!("{}%", u.gpu_util_percent),
            gib(u.memory_used_bytes),
            watts(u.power_mw),
            if processes.is_empty() {
                "-".into()
            } else {
                processes.join(",")
            },
        ]);
    }
    table(out, &rows)
}

fn processes_json(processes: &[orca_proto::types::v1::GpuProcess]) -> Value {
    processes
        .iter()
        .map(|p| {
            let pod = p.pod.clone().unwrap_or_default();
            json!({
                "pid": p.pid,
                "usedMemoryBytes": p.used_memory_bytes,
                "namespace": pod.namespace,
                "pod": pod.name,
                "container": p.container,
            })
        })
        .collect()
}

/// The telemetry as `-o json` prints it: `{"nodes": [...]}` or `{"pods": [...]}`.
pub fn json(t: &pb::TelemetryResponse, nodes: bool) -> Value {
    if !nodes {
        let pods: Vec<Value> = t
            .pods
            .iter()
            .map(|u| {
                let pod = u.pod.clone().unwrap_or_default();
                json!({
                    "namespace": pod.namespace,
                    "name": pod.name,
                    "node": u.node,
                    "gpuUUIDs": u.gpu_uuids,
                    "gpuUtilPercent": u.gpu_util_percent,
                    "memoryUsedBytes": u.memory_used_bytes,
                    "powerMilliwatts": u.power_mw,
                    "processes": processes_json(&u.processes),
                })
            })
            .collect();
        return json!({ "pods": pods });
    }
    let nodes: Vec<Value> = t
        .nodes
        .iter()
        .map(|n| {
            let gpus: Vec<Value> = n
                .gpus
                .iter()
                .map(|g| {
                    json!({
                        "index": g.index,
                        "uuid": g.uuid,
                        "model": g.model,
                        "pciBusId": g.pci_bus_id,
                        "gpuUtilPercent": g.gpu_util_percent,
                        "memUtilPercent": g.mem_util_percent,
                        "memoryUsedBytes": g.memory_used_bytes,
                        "memoryTotalBytes": g.memory_total_bytes,
                        "temperatureC": g.temperature_c,
                        "powerMilliwatts": g.power_mw,
                        "powerLimitMilliwatts": g.power_limit_mw,
                        "smClockMHz": g.sm_clock_mhz,
                        "memClockMHz": g.mem_clock_mhz,
                        "eccUncorrected": g.ecc_uncorrected,
                        "eccCorrected": g.ecc_corrected,
                        "migEnabled": g.mig_enabled,
                        "healthy": g.healthy,
                        "healthReason": g.health_reason,
                        "lastXid": g.last_xid,
                        "allocatedTo": g.allocated_to,
                        "processes": processes_json(&g.processes),
                    })
                })
                .collect();
            json!({
                "node": n.node,
                "source": n.source,
                "note": n.note,
                "driverVersion": n.driver_version,
                "gpus": gpus,
            })
        })
        .collect();
    json!({ "nodes": nodes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use orca_proto::types::v1::{GpuProcess, GpuSample, PodRef};

    #[test]
    fn tables_show_gpus_pods_and_nodes_without_gpus() {
        let train = PodRef {
            namespace: "ml".into(),
            name: "train".into(),
            uid: "u".into(),
        };
        let t = pb::TelemetryResponse {
            nodes: vec![
                pb::NodeTelemetry {
                    node: "cpu".into(),
                    source: "nvml".into(),
                    note: "NVML: libnvidia-ml.so.1 not found".into(),
                    ..Default::default()
                },
                pb::NodeTelemetry {
                    node: "g".into(),
                    gpus: vec![GpuSample {
                        model: "NVIDIA H100 80GB HBM3".into(),
                        gpu_util_percent: 97,
                        memory_used_bytes: 40 << 30,
                        memory_total_bytes: 80 << 30,
                        power_mw: 650_400,
                        power_limit_mw: 700_000,
                        healthy: true,
                        processes: vec![GpuProcess {
                            pid: 42,
                            pod: Some(train.clone()),
                            container: "main".into(),
                            used_memory_bytes: 40 << 30,
                        }],
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            ],
            pods: vec![pb::PodGpuUsage {
                pod: Some(train),
                node: "g".into(),
                gpu_uuids: vec!["GPU-a".into()],
                gpu_util_percent: 97,
                memory_used_bytes: 40 << 30,
                power_mw: 650_400,
                processes: vec![GpuProcess {
                    pid: 42,
                    container: "main".into(),
                    ..Default::default()
                }],
            }],
        };
        let mut buf = Vec::new();
        nodes(&mut buf, &t).unwrap();
        let text = String::from_utf8(buf).unwrap();
        assert!(
            text.contains("no GPUs (nvml: NVML: libnvidia-ml.so.1 not found)"),
            "{text}"
        );
        let row = text.lines().find(|l| l.starts_with("g ")).unwrap();
        for cell in ["97%", "40.0Gi/80.0Gi", "650W/700W", "ok", "ml/train"] {
            assert!(row.contains(cell), "{cell} in {row}");
        }
        let mut buf = Vec::new();
        pods(&mut buf, &t).unwrap();
        let text = String::from_utf8(buf).unwrap();
        let row = text.lines().nth(1).unwrap();
        for cell in ["ml", "train", "97%", "40.0Gi", "650W", "main:42"] {
            assert!(row.contains(cell), "{cell} in {row}");
        }
    }
}
