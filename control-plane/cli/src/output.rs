//! What `orca` prints: kubectl-like tables.

use std::io::{self, Write};

use orca_proto::controlplane::v1 as pb;
use orca_proto::types::v1::{PodPhase, Resources, container_state::State};

use orca_model::time::age;

pub use orca_model::phase::pod_phase_name as phase_name;
pub use orca_model::time::human;

/// The node's state as a word.
pub fn node_state(node: &pb::Node) -> &'static str {
    orca_model::phase::node_state_word(node.state)
}

/// The pod's status as a word or two: the phase, the reason, and exit codes.
pub fn pod_status(record: &pb::PodRecord) -> String {
    let status = record.status.clone().unwrap_or_default();
    let phase = PodPhase::try_from(status.phase).unwrap_or(PodPhase::Unspecified);
    let mut s = phase_name(phase).to_owned();
    if !status.reason.is_empty() {
        s.push_str(&format!(" ({})", status.reason));
    } else if let Some(reason) =
        status
            .container_statuses
            .iter()
            .find_map(|c| match c.state.as_ref()?.state.as_ref()? {
                State::Waiting(w)
                    if w.reason != "ContainerCreating" || phase == PodPhase::Pending =>
                {
                    Some(w.reason.clone())
                }
                _ => None,
            })
    {
        s.push_str(&format!(" ({reason})"));
    }
    s
}

fn exit_codes(record: &pb::PodRecord) -> String {
    let codes: Vec<String> = record
        .status
        .iter()
        .flat_map(|s| &s.container_statuses)
        .filter_map(|c| match c.state.as_ref()?.state.as_ref()? {
            State::Terminated(t) => Some(t.exit_code.to_string()),
            _ => None,
        })
        .collect();
    if codes.is_empty() {
        "-".into()
    } else {
        codes.join(",")
    }
}

pub(super) fn table(out: &mut impl Write, rows: &[Vec<String>]) -> io::Result<()> {
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        writeln!(out, "{}", line.join("   ").trim_end())?;
    }
    Ok(())
}

/// Prints pods as a table.
pub fn pods(out: &mut impl Write, pods: &[pb::PodRecord], wide: bool) -> io::Result<()> {
    let mut rows = vec![
        ["NAME", "STATUS", "EXIT", "RESTARTS", "NODE", "AGE"]
            .map(String::from)
            .to_vec(),
    ];
    if wide {
        rows[0].push("MESSAGE".into());
    }
    for p in pods {
        let (_, name) = orca_model::pod::names(p);
        let restarts: i32 = p
            .status
            .iter()
            .flat_map(|s| &s.container_statuses)
            .map(|c| c.restart_count)
            .sum();
        let node = if p.node_name.is_empty() {
            "<none>".into()
        } else {
            p.node_name.clone()
        };
        let mut row = vec![
            name,
            pod_status(p),
            exit_codes(p),
            restarts.to_string(),
            node,
            human(age(p.created_at.as_ref())),
        ];
        if wide {
            row.push(
                p.status
                    .as_ref()
                    .map(|s| s.message.clone())
                    .unwrap_or_default(),
            );
        }
        rows.push(row);
    }
    table(out, &rows)
}

/// A pod as `-o json|yaml` shows it.
pub fn pod_value(p: &pb::PodRecord) -> serde_json::Value {
    let (namespace, name) = orca_model::pod::names(p);
    let status = p.status.clone().unwrap_or_default();
    let containers: Vec<serde_json::Value> = status
        .container_statuses
        .iter()
        .map(|c| {
            let state = match c.state.as_ref().and_then(|s| s.state.as_ref()) {
                Some(State::Waiting(w)) => {
                    serde_json::json!({"waiting": {"reason": w.reason, "message": w.message}})
                }
                Some(State::Running(_)) => serde_json::json!({"running": {}}),
                Some(State::Terminated(t)) => {
                    serde_json::json!({"terminated": {"exitCode": t.exit_code, "reason": t.reason}})
                }
                None => serde_json::json!({}),
            };
            serde_json::json!({"name": c.name, "state": state, "restartCount": c.restart_count, "containerID": c.container_id})
        })
        .collect();
    let spec: serde_json::Value = p
        .pod
        .as_ref()
        .and_then(|p| serde_json::from_str(&p.spec_json).ok())
        .unwrap_or_default();
    let pod = p.pod.clone().unwrap_or_default();
    serde_json::json!({
        "namespace": namespace, "name": name, "uid": orca_model::pod::uid(p), "node": p.node_name,
        "labels": pod.labels, "annotations": pod.annotations,
        "phase": phase_name(PodPhase::try_from(status.phase).unwrap_or(PodPhase::Unknown)),
        "reason": status.reason, "message": status.message, "recreations": p.recreations,
        "podIP": status.pod_ip, "hostIP": status.host_ip,
        "containerStatuses": containers, "gpuUUIDs": status.gpu_uuids, "spec": spec,
        "placements": p.placements.iter().map(orca_model::ledger::placement_json).collect::<Vec<_>>(),
        "interruptions": p.interruptions.iter().map(orca_model::ledger::interruption_json).collect::<Vec<_>>(),
        "costUSD": orca_model::ledger::cost(p),
    })
}

fn resources_value(r: Option<&Resources>) -> serde_json::Value {
    let r = r.copied().unwrap_or_default();
    serde_json::json!({"cpuMillis": r.cpu_millis, "memoryBytes": r.memory_bytes, "gpus": r.gpus, "pods": r.pods})
}

/// A node as `-o json|yaml` shows it.
pub fn node_value(n: &pb::Node) -> serde_json::Value {
    let taints: Vec<String> = n.taints.iter().map(taint).collect();
    serde_json::json!({
        "name": n.name, "id": n.id, "state": node_state(n), "provider": n.provider,
        "instanceId": n.instance_id, "address": n.agent_address, "agentVersion": n.agent_version,
        "unschedulable": n.unschedulable, "labels": n.labels, "taints": taints,
        "capacity": resources_value(n.capacity.as_ref()),
        "allocatable": resources_value(n.allocatable.as_ref()),
        "requested": resources_value(n.requested.as_ref()),
        "pods": n.pod_count, "message": n.message,
    })
}

/// Prints values as JSON or YAML (`format`): one object when `one` was asked
/// for by name, else a list (as kubectl does).
pub fn structured(
    out: &mut impl Write,
    values: Vec<serde_json::Value>,
    one: bool,
    format: &str,
) -> io::Result<()> {
    let value = if one && values.len() == 1 {
        values.into_iter().next().unwrap_or_default()
    } else {
        serde_json::Value::Array(values)
    };
    if format == "yaml" {
        let text = serde_yaml::to_string(&value).map_err(io::Error::other)?;
        out.write_all(text.as_bytes())
    } else {
        serde_json::to_writer_pretty(&mut *out, &value).map_err(io::Error::other)?;
        writeln!(out)
    }
}

/// A taint as kubectl writes it.
pub fn taint(t: &pb::Taint) -> String {
    if t.value.is_empty() {
        format!("{}:{}", t.key, t.effect)
    } else {
        format!("{}={}:{}", t.key, t.value, t.effect)
    }
}

fn cpu(m: i64) -> String {
    if m % 1000 == 0 {
        (m / 1000).to_string()
    } else {
        format!("{m}m")
    }
}

fn memory(b: i64) -> String {
    const GI: i64 = 1 << 30;
    const MI: i64 = 1 << 20;
    if b >= GI && b % GI == 0 {
        format!("{}Gi", b / GI)
    } else {
        format!("{}Mi", b / MI)
    }
}

/// Prints nodes as a table; `wide` adds resources, labels and taints.
pub fn nodes(out: &mut impl Write, nodes: &[pb::Node], wide: bool) -> io::Result<()> {
    let mut head = vec![
        "NAME", "STATUS", "PODS", "CPU", "MEMORY", "GPUS", "PROVIDER", "ADDRESS", "AGE",
    ];
    if wide {
        head.extend(["INSTANCE", "LABELS", "TAINTS", "MESSAGE"]);
    }
    let mut rows = vec![head.into_iter().map(String::from).collect::<Vec<_>>()];
    for n in nodes {
        let (a, r) = (
            n.allocatable.unwrap_or_default(),
            n.requested.unwrap_or_default(),
        );
        let mut status = node_state(n).to_owned();
        if n.unschedulable {
            status.push_str(",SchedulingDisabled");
        }
        let mut row = vec![
            n.name.clone(),
            status,
            n.pod_count.to_string(),
            format!("{}/{}", cpu(r.cpu_millis), cpu(a.cpu_millis)),
            format!("{}/{}", memory(r.memory_bytes), memory(a.memory_bytes)),
            format!("{}/{}", r.gpus, a.gpus),
            n.provider.clone(),
            n.agent_address.clone(),
            human(age(n.created_at.as_ref())),
        ];
        if wide {
            let mut labels: Vec<String> =
                n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            labels.sort();
            row.extend([
                n.instance_id.clone(),
                labels.join(","),
                n.taints.iter().map(taint).collect::<Vec<_>>().join(","),
                n.message.clone(),
            ]);
        }
        rows.push(row);
    }
    table(out, &rows)
}

/// Prints a pod the way `kubectl describe pod` does, with its events.
pub fn describe_pod(
    out: &mut impl Write,
    p: &pb::PodRecord,
    events: &[pb::Event],
) -> io::Result<()> {
    let (namespace, name) = orca_model::pod::names(p);
    let status = p.status.clone().unwrap_or_default();
    let pod = p.pod.clone().unwrap_or_default();
    let node = if p.node_name.is_empty() {
        "<none>"
    } else {
        &p.node_name
    };
    writeln!(out, "Name:         {name}")?;
    writeln!(out, "Namespace:    {namespace}")?;
    writeln!(out, "UID:          {}", orca_model::pod::uid(p))?;
    writeln!(out, "Node:         {node}")?;
    writeln!(out, "Status:       {}", pod_status(p))?;
    if !status.message.is_empty() {
        writeln!(out, "Message:      {}", status.message)?;
    }
    writeln!(out, "Recreations:  {}", p.recreations)?;
    if !status.gpu_uuids.is_empty() {
        writeln!(out, "GPUs:         {}", status.gpu_uuids.join(","))?;
    }
    writeln!(out, "Age:          {}", human(age(p.created_at.as_ref())))?;
    let mut labels: Vec<String> = pod.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    labels.sort();
    writeln!(
        out,
        "Labels:       {}",
        if labels.is_empty() {
            "<none>".into()
        } else {
            labels.join(",")
        }
    )?;
    let spec: Option<k8s_openapi::api::core::v1::PodSpec> =
        serde_json::from_str(&pod.spec_json).ok();
    writeln!(out, "Containers:")?;
    for c in spec.iter().flat_map(|s| &s.containers) {
        writeln!(out, "  {}:", c.name)?;
        writeln!(
            out,
            "    Image:     {}",
            c.image.as_deref().unwrap_or_default()
        )?;
        if let Some(st) = status.container_statuses.iter().find(|s| s.name == c.name) {
            let state = match st.state.as_ref().and_then(|s| s.state.as_ref()) {
                Some(State::Waiting(w)) => format!("Waiting ({})", w.reason),
                Some(State::Running(_)) => "Running".into(),
                Some(State::Terminated(t)) => {
                    format!("Terminated ({}, exit {})", t.reason, t.exit_code)
                }
                None => "Unknown".into(),
            };
            writeln!(out, "    State:     {state}")?;
            writeln!(out, "    Restarts:  {}", st.restart_count)?;
        }
    }
    super::ledger::describe(out, p)?;
    writeln!(out, "Events:")?;
    if events.is_empty() {
        writeln!(out, "  <none>")?;
        return Ok(());
    }
    let mut buf = Vec::new();
    self::events(&mut buf, events)?;
    for line in String::from_utf8_lossy(&buf).lines() {
        writeln!(out, "  {line}")?;
    }
    Ok(())
}

/// Prints events.
pub fn events(out: &mut impl Write, events: &[pb::Event]) -> io::Result<()> {
    let mut rows = vec![
        ["AGE", "TYPE", "REASON", "OBJECT", "MESSAGE"]
            .map(String::from)
            .to_vec(),
    ];
    for e in events {
        let object = format!("{}/{}", e.kind.to_lowercase(), e.name);
        rows.push(vec![
            human(age(e.time.as_ref())),
            e.r#type.clone(),
            e.reason.clone(),
            object,
            e.message.clone(),
        ]);
    }
    table(out, &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_kubectl() {
        assert_eq!(human(std::time::Duration::from_secs(5)), "5s");
        assert_eq!(human(std::time::Duration::from_secs(600)), "10m");
        assert_eq!(human(std::time::Duration::from_secs(3 * 3600)), "3h");
        assert_eq!(human(std::time::Duration::from_secs(3 * 86_400)), "3d");
    }
}
