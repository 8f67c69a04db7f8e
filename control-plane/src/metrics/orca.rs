//! The control plane's own series, prefixed `orca_`. Their labels are bounded:
//! states, phases, providers, reasons and node names; never pod names or uids.

use std::collections::BTreeMap;
use std::time::Duration;

use orca_model::phase::{NODE_STATES, POD_PHASES, node_state_name, pod_phase_name, pod_phase_word};
use orca_proto::controlplane::v1::{self as pb, NodeState};

use super::exposition::{Exposition, Kind, Value};
use super::launches::Launches;

/// What the series are made of.
#[derive(Debug)]
pub struct Inputs<'a> {
    /// Every node in the store.
    pub nodes: &'a [pb::Node],
    /// Every pod in the store.
    pub pods: &'a [pb::PodRecord],
    /// Time since each node's last heartbeat, for nodes that have one.
    pub heartbeat_ages: &'a BTreeMap<String, Duration>,
    /// The latest GPU telemetry of every node that reported.
    pub telemetry: &'a [pb::NodeTelemetry],
    /// Launch counts (the cluster's provider present, with 0, before its first).
    pub launches: &'a Launches,
}

/// Writes the `orca_` families.
pub fn write(out: &mut Exposition, i: &Inputs<'_>) {
    let mut f = out.family("orca_nodes", "Nodes by state.", Kind::Gauge);
    for state in NODE_STATES {
        let n = i
            .nodes
            .iter()
            .filter(|n| NodeState::try_from(n.state).unwrap_or(NodeState::Unspecified) == state)
            .count();
        f.sample(&[("state", node_state_name(state))], Value::Int(n as u64));
    }

    let mut f = out.family("orca_pods", "Pods by phase.", Kind::Gauge);
    let mut phases: BTreeMap<&str, u64> =
        POD_PHASES.iter().map(|p| (pod_phase_name(*p), 0)).collect();
    for pod in i.pods {
        let phase = pod.status.as_ref().map_or(0, |s| s.phase);
        *phases.entry(pod_phase_word(phase)).or_default() += 1;
    }
    for phase in POD_PHASES {
        let name = pod_phase_name(phase);
        f.sample(&[("phase", name)], Value::Int(phases[name]));
    }

    let mut f = out.family(
        "orca_node_heartbeat_age_seconds",
        "Seconds since the node's last heartbeat (or its join).",
        Kind::Gauge,
    );
    for node in i.nodes {
        if let Some(age) = i.heartbeat_ages.get(&node.name) {
            f.sample(&[("node", &node.name)], Value::Float(age.as_secs_f64()));
        }
    }

    let mut f = out.family(
        "orca_instance_launches_total",
        "Instance launches asked of the provider (each attempt).",
        Kind::Counter,
    );
    for (provider, n) in &i.launches.attempts {
        f.sample(&[("provider", provider)], Value::Int(*n));
    }
    let mut f = out.family(
        "orca_instance_launch_failures_total",
        "Instance launches that failed, by the provider's error code or failure class.",
        Kind::Counter,
    );
    for ((provider, reason), n) in &i.launches.failures {
        f.sample(
            &[("provider", provider), ("reason", reason)],
            Value::Int(*n),
        );
    }

    let mut f = out.family(
        "orca_gpus",
        "GPUs in the node's latest telemetry, by health.",
        Kind::Gauge,
    );
    for node in i.telemetry {
        let healthy = node.gpus.iter().filter(|g| g.healthy).count() as u64;
        let unhealthy = node.gpus.len() as u64 - healthy;
        f.sample(
            &[("node", &node.node), ("health", "healthy")],
            Value::Int(healthy),
        );
        f.sample(
            &[("node", &node.node), ("health", "unhealthy")],
            Value::Int(unhealthy),
        );
    }
}
