//! What `orca` prints: kubectl-like tables.

use std::io::{self, Write};

use orca_proto::controlplane::v1::{self as pb, NodeState};
use orca_proto::types::v1::{PodPhase, container_state::State};

use crate::cluster::age;

/// A kubectl-style age: `5s`, `3m`, `2h`, `4d`.
pub fn human(d: std::time::Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// The node's state as a word.
pub fn node_state(node: &pb::Node) -> &'static str {
    match NodeState::try_from(node.state).unwrap_or(NodeState::Unspecified) {
        NodeState::Unspecified => "Unknown",
        NodeState::Launching => "Launching",
        NodeState::Ready => "Ready",
        NodeState::NotReady => "NotReady",
        NodeState::Terminating => "Terminating",
        NodeState::Failed => "Failed",
    }
}

/// A phase as Kubernetes spells it.
pub fn phase_name(phase: PodPhase) -> &'static str {
    match phase {
        PodPhase::Unspecified | PodPhase::Unknown => "Unknown",
        PodPhase::Pending => "Pending",
        PodPhase::Running => "Running",
        PodPhase::Succeeded => "Succeeded",
        PodPhase::Failed => "Failed",
    }
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

fn table(out: &mut impl Write, rows: &[Vec<String>]) -> io::Result<()> {
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
        let (_, name) = crate::pods::names(p);
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

/// Prints pods as JSON (the status as the wire carries it).
pub fn pods_json(out: &mut impl Write, pods: &[pb::PodRecord]) -> io::Result<()> {
    let items: Vec<serde_json::Value> = pods
        .iter()
        .map(|p| {
            let (namespace, name) = crate::pods::names(p);
            let status = p.status.clone().unwrap_or_default();
            let containers: Vec<serde_json::Value> = status
                .container_statuses
                .iter()
                .map(|c| {
                    let state = match c.state.as_ref().and_then(|s| s.state.as_ref()) {
                        Some(State::Waiting(w)) => serde_json::json!({"waiting": {"reason": w.reason, "message": w.message}}),
                        Some(State::Running(_)) => serde_json::json!({"running": {}}),
                        Some(State::Terminated(t)) => {
                            serde_json::json!({"terminated": {"exitCode": t.exit_code, "reason": t.reason}})
                        }
                        None => serde_json::json!({}),
                    };
                    serde_json::json!({"name": c.name, "state": state, "restartCount": c.restart_count, "containerID": c.container_id})
                })
                .collect();
            serde_json::json!({
                "namespace": namespace, "name": name, "uid": crate::pods::uid(p), "node": p.node_name,
                "phase": phase_name(PodPhase::try_from(status.phase).unwrap_or(PodPhase::Unknown)),
                "reason": status.reason, "message": status.message, "containerStatuses": containers,
            })
        })
        .collect();
    serde_json::to_writer_pretty(&mut *out, &items).map_err(io::Error::other)?;
    writeln!(out)
}

/// Prints nodes as a table.
pub fn nodes(out: &mut impl Write, nodes: &[pb::Node]) -> io::Result<()> {
    let mut rows = vec![
        [
            "NAME", "STATUS", "PODS", "PROVIDER", "INSTANCE", "ADDRESS", "AGE",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for n in nodes {
        rows.push(vec![
            n.name.clone(),
            node_state(n).into(),
            n.pod_count.to_string(),
            n.provider.clone(),
            n.instance_id.clone(),
            n.agent_address.clone(),
            human(age(n.created_at.as_ref())),
        ]);
    }
    table(out, &rows)
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
