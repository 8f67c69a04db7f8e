//! Prometheus metrics on a plain-HTTP listener of their own (`metrics_listen`,
//! by default `0.0.0.0:9400`, dcgm-exporter's port): `GET /metrics` in the text
//! exposition format 0.0.4, `GET /healthz`.
//!
//! Two sets of series:
//! - [`dcgm`]: every GPU of every node, from the telemetry its agent last
//!   reported, under dcgm-exporter's names, HELP texts, types, units and
//!   labels, so dashboards made for dcgm-exporter work unchanged.
//! - [`orca`]: the control plane's own, prefixed `orca_`: nodes by state, pods
//!   by phase, heartbeat ages, GPUs by health, and instance launches and their
//!   failures ([`launches`], counted where instances are launched).
//!
//! Rendering ([`render`]) is a pure function of what [`Exporter::scrape`]
//! gathers (store, telemetry, liveness, counters) at each scrape; nothing is
//! kept between scrapes but the counters. The bound address is logged and
//! written to `<data_dir>/metrics.addr` ([`ADDR_FILE`]) while the endpoint
//! serves, so a port-0 listener can be found.

pub mod dcgm;
pub mod exposition;
pub mod launches;
pub mod orca;
pub mod server;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

pub use launches::{LaunchCounters, Launches};
pub use orca::Inputs;
pub use server::serve;

use crate::cluster::{Cluster, age};
use orca_store::StoreError;

/// File in the data directory holding the endpoint's bound address
/// (`127.0.0.1:9400`, one line), written once it is bound and removed when it
/// stops (or is off).
pub const ADDR_FILE: &str = "metrics.addr";

/// The whole exposition: the GPU series, then the `orca_` ones.
pub fn render(inputs: &Inputs<'_>) -> String {
    let mut out = exposition::Exposition::default();
    dcgm::write(&mut out, inputs.telemetry);
    orca::write(&mut out, inputs);
    out.finish()
}

/// Gathers what the series are made of, at each scrape.
#[derive(Clone)]
pub struct Exporter {
    cluster: Cluster,
}

impl Exporter {
    /// The metrics of `cluster` (its launch counters included).
    pub fn new(cluster: Cluster) -> Self {
        Self { cluster }
    }

    /// The exposition now.
    pub fn scrape(&self) -> Result<String, StoreError> {
        let store = self.cluster.shared().store();
        let nodes = store.nodes.scan("")?;
        let pods = store.pods.scan("")?;
        let telemetry = self.cluster.shared().telemetry().snapshot("", 0);
        // In-memory liveness is where every heartbeat lands (the store's
        // last_heartbeat is written only on joins and state changes); it
        // starts from the control plane's start for nodes known then.
        let silences: BTreeMap<String, Duration> = self
            .cluster
            .registry()
            .silent_nodes(Duration::ZERO)
            .into_iter()
            .collect();
        let heartbeat_ages: BTreeMap<String, Duration> = nodes
            .iter()
            .filter_map(|n| {
                let silence = silences
                    .get(&n.name)
                    .copied()
                    .or_else(|| n.last_heartbeat.as_ref().map(|t| age(Some(t))))?;
                Some((n.name.clone(), silence))
            })
            .collect();
        let mut launches = Launches::default();
        launches
            .attempts
            .insert(self.cluster.shared().provider().name().to_owned(), 0);
        launches.add(&self.cluster.shared().launch_counters().snapshot());
        Ok(render(&Inputs {
            nodes: &nodes,
            pods: &pods,
            heartbeat_ages: &heartbeat_ages,
            telemetry: &telemetry,
            launches: &launches,
        }))
    }
}

/// Records the endpoint's bound address in `data_dir` (written whole, then
/// renamed into place: a reader never sees half of it).
pub fn write_addr(data_dir: &Path, bound: SocketAddr) -> std::io::Result<()> {
    let tmp = data_dir.join(format!("{ADDR_FILE}.tmp"));
    std::fs::write(&tmp, format!("{bound}\n"))?;
    std::fs::rename(&tmp, data_dir.join(ADDR_FILE))
}

/// Removes the address file (the endpoint stopped, or is off).
pub fn remove_addr(data_dir: &Path) {
    let _ = std::fs::remove_file(data_dir.join(ADDR_FILE));
}

#[cfg(test)]
mod tests {
    use super::*;
    use orca_proto::controlplane::v1::{self as pb, NodeState};
    use orca_proto::types::v1::{GpuProcess, GpuSample, PodPhase, PodRef, PodStatus};
    use prom_text_format_parser::{Scrape, Type};

    fn gpu(index: i32, uuid: &str) -> GpuSample {
        GpuSample {
            index,
            uuid: uuid.into(),
            model: "NVIDIA H100 80GB HBM3".into(),
            pci_bus_id: format!("00000000:1{index}:00.0"),
            gpu_util_percent: 87,
            mem_util_percent: 40,
            memory_used_bytes: 1536 << 20,
            memory_total_bytes: 80 << 30,
            temperature_c: 61,
            power_mw: 312_345,
            sm_clock_mhz: 1980,
            mem_clock_mhz: 2619,
            ecc_corrected: 3,
            ecc_uncorrected: 1,
            healthy: true,
            ..Default::default()
        }
    }

    fn node(name: &str, state: NodeState) -> pb::Node {
        pb::Node {
            name: name.into(),
            state: state as i32,
            ..Default::default()
        }
    }

    fn pod(phase: Option<PodPhase>) -> pb::PodRecord {
        pb::PodRecord {
            status: phase.map(|p| PodStatus {
                phase: p as i32,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Two nodes: `g1` with a GPU a pod's process uses, a GPU allocated to a
    /// pod, and a free unhealthy one (weird model name to escape); `cpu` none.
    fn telemetry() -> Vec<pb::NodeTelemetry> {
        let used = GpuSample {
            processes: vec![
                GpuProcess {
                    pid: 1,
                    ..Default::default()
                },
                GpuProcess {
                    pid: 7,
                    used_memory_bytes: 1 << 30,
                    pod: Some(PodRef {
                        namespace: "ml".into(),
                        name: "train".into(),
                        uid: "u1".into(),
                    }),
                    container: "trainer".into(),
                },
            ],
            allocated_to: "ml/other".into(),
            ..gpu(0, "GPU-aaaa")
        };
        let held = GpuSample {
            allocated_to: "ml/idle".into(),
            ..gpu(1, "GPU-bbbb")
        };
        let free = GpuSample {
            model: "Fake \"GPU\" \\ 1\nrev".into(),
            healthy: false,
            last_xid: 79,
            power_mw: 1000,
            memory_used_bytes: 0,
            ..gpu(2, "GPU-cccc")
        };
        vec![
            pb::NodeTelemetry {
                node: "cpu".into(),
                source: "none".into(),
                ..Default::default()
            },
            pb::NodeTelemetry {
                node: "g1".into(),
                source: "fake".into(),
                driver_version: "550.54.15".into(),
                gpus: vec![used, held, free],
                ..Default::default()
            },
        ]
    }

    fn rendered() -> String {
        let nodes = [
            node("cpu", NodeState::Ready),
            node("g1", NodeState::Ready),
            node("lost", NodeState::Lost),
            node("new", NodeState::Launching),
        ];
        let pods = [
            pod(Some(PodPhase::Running)),
            pod(Some(PodPhase::Running)),
            pod(Some(PodPhase::Failed)),
            pod(None),
        ];
        let ages = BTreeMap::from([
            ("cpu".to_owned(), Duration::from_millis(1500)),
            ("g1".to_owned(), Duration::from_millis(250)),
            ("gone".to_owned(), Duration::from_secs(9)),
        ]);
        let mut launches = Launches::default();
        launches.attempts.insert("local".into(), 4);
        launches
            .failures
            .insert(("local".into(), "Fatal".into()), 1);
        render(&Inputs {
            nodes: &nodes,
            pods: &pods,
            heartbeat_ages: &ages,
            telemetry: &telemetry(),
            launches: &launches,
        })
    }

    /// Every sample of family `name`: its labels (values as written, escaped)
    /// and value, parsed by a real exposition-format parser.
    fn samples(scrape: &Scrape, name: &str) -> Vec<(Vec<(String, String)>, f64)> {
        let family = scrape
            .metrics
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("no family {name}"));
        family
            .samples
            .iter()
            .map(|s| {
                let labels = s
                    .labels
                    .iter()
                    .map(|l| (l.key.clone(), l.value.clone()))
                    .collect();
                (labels, s.value.value.as_f64())
            })
            .collect()
    }

    fn value(samples: &[(Vec<(String, String)>, f64)], label: (&str, &str)) -> f64 {
        samples
            .iter()
            .find(|(labels, _)| {
                labels
                    .iter()
                    .any(|(k, v)| (k.as_str(), v.as_str()) == label)
            })
            .unwrap_or_else(|| panic!("no sample with {label:?} in {samples:?}"))
            .1
    }

    #[test]
    fn gpu_series_have_dcgm_exporters_names_labels_and_units() {
        let text = rendered();
        let scrape = Scrape::parse(&text).expect("a valid exposition");
        let names: Vec<&str> = scrape.metrics.iter().map(|m| m.name.as_str()).collect();
        for name in dcgm::names() {
            assert_eq!(
                names.iter().filter(|n| **n == name).count(),
                1,
                "{name} is one family"
            );
        }
        let power = scrape
            .metrics
            .iter()
            .find(|m| m.name == "DCGM_FI_DEV_POWER_USAGE")
            .unwrap();
        assert_eq!(power.kind, Type::Gauge);
        assert_eq!(power.help_desc.as_deref(), Some("Power draw (in W)."));
        let ecc = scrape
            .metrics
            .iter()
            .find(|m| m.name == "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL")
            .unwrap();
        assert_eq!(ecc.kind, Type::Counter);

        let key_order = |s: &(Vec<(String, String)>, f64)| -> Vec<String> {
            s.0.iter().map(|(k, _)| k.clone()).collect()
        };
        let util = samples(&scrape, "DCGM_FI_DEV_GPU_UTIL");
        assert_eq!(util.len(), 3, "one per GPU; the GPU-less node has none");
        // Used by a pod's process: its container, even though allocated to another.
        assert_eq!(
            util[0].0,
            [
                ("gpu", "0"),
                ("UUID", "GPU-aaaa"),
                ("pci_bus_id", "00000000:10:00.0"),
                ("device", "nvidia0"),
                ("modelName", "NVIDIA H100 80GB HBM3"),
                ("Hostname", "g1"),
                ("DCGM_FI_DRIVER_VERSION", "550.54.15"),
                ("container", "trainer"),
                ("namespace", "ml"),
                ("pod", "train"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        assert_eq!(util[0].1, 87.0);
        // Allocated, no process: the pod without a container.
        let held: Vec<(&str, &str)> = util[1].0[7..]
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            held,
            [("container", ""), ("namespace", "ml"), ("pod", "idle")]
        );
        // Free: no pod labels at all; the model name escaped as the format says.
        assert_eq!(
            key_order(&util[2]),
            [
                "gpu",
                "UUID",
                "pci_bus_id",
                "device",
                "modelName",
                "Hostname",
                "DCGM_FI_DRIVER_VERSION"
            ]
        );
        assert_eq!(util[2].0[4].1, r#"Fake \"GPU\" \\ 1\nrev"#);
        assert!(
            text.contains(r#"modelName="Fake \"GPU\" \\ 1\nrev""#),
            "{text}"
        );

        // Units: watts from milliwatts, framebuffer in MiB.
        let power = samples(&scrape, "DCGM_FI_DEV_POWER_USAGE");
        assert_eq!(value(&power, ("UUID", "GPU-aaaa")), 312.345);
        assert_eq!(value(&power, ("UUID", "GPU-cccc")), 1.0);
        let used = samples(&scrape, "DCGM_FI_DEV_FB_USED");
        assert_eq!(value(&used, ("UUID", "GPU-aaaa")), 1536.0);
        assert_eq!(value(&used, ("UUID", "GPU-cccc")), 0.0);
        let free = samples(&scrape, "DCGM_FI_DEV_FB_FREE");
        assert_eq!(value(&free, ("UUID", "GPU-aaaa")), 80.0 * 1024.0 - 1536.0);
        assert_eq!(value(&free, ("UUID", "GPU-cccc")), 80.0 * 1024.0);
        let xid = samples(&scrape, "DCGM_FI_DEV_XID_ERRORS");
        assert_eq!(value(&xid, ("UUID", "GPU-cccc")), 79.0);
        let sm = samples(&scrape, "DCGM_FI_DEV_SM_CLOCK");
        assert_eq!(value(&sm, ("UUID", "GPU-bbbb")), 1980.0);
        let sbe = samples(&scrape, "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL");
        assert_eq!(value(&sbe, ("UUID", "GPU-bbbb")), 3.0);
    }

    #[test]
    fn orca_series_count_nodes_pods_launches_and_gpus() {
        let scrape = Scrape::parse(&rendered()).expect("a valid exposition");
        let nodes = samples(&scrape, "orca_nodes");
        assert_eq!(nodes.len(), 9, "every state, zeros included: {nodes:?}");
        assert_eq!(value(&nodes, ("state", "Stopped")), 0.0);
        assert_eq!(value(&nodes, ("state", "Ready")), 2.0);
        assert_eq!(value(&nodes, ("state", "Lost")), 1.0);
        assert_eq!(value(&nodes, ("state", "Launching")), 1.0);
        assert_eq!(value(&nodes, ("state", "NotReady")), 0.0);

        let pods = samples(&scrape, "orca_pods");
        assert_eq!(pods.len(), 5, "{pods:?}");
        assert_eq!(value(&pods, ("phase", "Running")), 2.0);
        assert_eq!(value(&pods, ("phase", "Failed")), 1.0);
        assert_eq!(value(&pods, ("phase", "Unknown")), 1.0, "no status yet");
        assert_eq!(value(&pods, ("phase", "Pending")), 0.0);

        let ages = samples(&scrape, "orca_node_heartbeat_age_seconds");
        assert_eq!(ages.len(), 2, "stored nodes with an age only: {ages:?}");
        assert_eq!(value(&ages, ("node", "cpu")), 1.5);
        assert_eq!(value(&ages, ("node", "g1")), 0.25);

        let launches = samples(&scrape, "orca_instance_launches_total");
        assert_eq!(value(&launches, ("provider", "local")), 4.0);
        let failures = samples(&scrape, "orca_instance_launch_failures_total");
        assert_eq!(
            failures[0].0,
            [("provider", "local"), ("reason", "Fatal")].map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        assert_eq!(failures[0].1, 1.0);

        let gpus = samples(&scrape, "orca_gpus");
        let count = |node: &str, health: &str| {
            gpus.iter()
                .find(|(l, _)| {
                    l == &[("node", node), ("health", health)]
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                })
                .map(|s| s.1)
        };
        assert_eq!(count("g1", "healthy"), Some(2.0));
        assert_eq!(count("g1", "unhealthy"), Some(1.0));
        assert_eq!(count("cpu", "healthy"), Some(0.0));
    }

    #[test]
    fn an_empty_cluster_renders_the_families_that_have_samples() {
        let text = render(&Inputs {
            nodes: &[],
            pods: &[],
            heartbeat_ages: &BTreeMap::new(),
            telemetry: &[],
            launches: &Launches::default(),
        });
        let scrape = Scrape::parse(&text).expect("a valid exposition");
        let names: Vec<&str> = scrape.metrics.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["orca_nodes", "orca_pods"], "{text}");
        assert!(text.ends_with('\n'));
    }
}
