//! The provenance ledger: where and on what every incarnation of a pod ran,
//! kept in its record (`placements`) from what was observed, for a paper to
//! cite: the node and instance, its type, zone, AMI, capacity type and price
//! (from the node's labels, set at launch), the GPUs the agent gave it and the
//! node's driver version, when the agent first reported it running and when it
//! ended and why, and its container restarts. With the interruptions that moved
//! it, it is shown by `orca describe pod`, in `orca get pod -o json`, and
//! exported by `orca ledger -o json`; cost so far is price × time run. The
//! placements are also kept as the pod's annotation `orca.research/ledger` (a
//! JSON array, without costs, which change with time), patched onto the
//! Kubernetes pod in Kubernetes mode.

use orca_proto::controlplane::v1 as pb;
use orca_proto::types::v1::{self as types, PodPhase};
use serde_json::json;

use crate::labels::{LABEL_AMI, LABEL_CAPACITY_TYPE, LABEL_INSTANCE_TYPE, LABEL_PRICE, LABEL_ZONE};
use crate::selection::annotations::LEDGER;
use crate::time::now;

/// What of a node a placement records.
#[derive(Debug, Clone, Default)]
pub struct NodeFacts {
    /// The node.
    pub node: pb::Node,
    /// Its GPU driver version, when its agent reports one.
    pub gpu_driver_version: String,
}

fn restarts(status: &types::PodStatus) -> u32 {
    status
        .container_statuses
        .iter()
        .chain(&status.init_container_statuses)
        .map(|c| c.restart_count.max(0) as u32)
        .sum()
}

fn finished(status: &types::PodStatus) -> bool {
    matches!(
        PodPhase::try_from(status.phase),
        Ok(PodPhase::Succeeded | PodPhase::Failed)
    )
}

fn end_reason(status: &types::PodStatus) -> String {
    if !status.reason.is_empty() {
        return status.reason.clone();
    }
    match PodPhase::try_from(status.phase) {
        Ok(PodPhase::Succeeded) => "Completed".into(),
        _ => "Error".into(),
    }
}

/// Whether `status` of incarnation `uid` on `node` changes the ledger of
/// `record` (a new placement, its GPUs, restarts or end); cheap, so that only
/// such reports read the node.
pub fn affected(record: &pb::PodRecord, uid: &str, status: &types::PodStatus) -> bool {
    match record.placements.iter().find(|p| p.uid == uid) {
        None => PodPhase::try_from(status.phase) == Ok(PodPhase::Running) || finished(status),
        Some(p) => {
            p.ended_at.is_none()
                && (p.gpu_uuids != status.gpu_uuids
                    || p.restarts != restarts(status)
                    || finished(status))
        }
    }
}

/// Records what `status` says of incarnation `uid` running on `facts`' node.
pub fn observe(
    record: &mut pb::PodRecord,
    uid: &str,
    facts: &NodeFacts,
    status: &types::PodStatus,
) {
    if !record.placements.iter().any(|p| p.uid == uid) {
        let labels = &facts.node.labels;
        let label = |k: &str| labels.get(k).cloned().unwrap_or_default();
        record.placements.push(pb::Placement {
            uid: uid.to_owned(),
            node_name: facts.node.name.clone(),
            instance_id: facts.node.instance_id.clone(),
            instance_type: label(LABEL_INSTANCE_TYPE),
            zone: label(LABEL_ZONE),
            image_id: label(LABEL_AMI),
            capacity_type: label(LABEL_CAPACITY_TYPE),
            capacity_reservation_id: label(crate::labels::LABEL_RESERVATION),
            usd_per_hour: labels
                .get(LABEL_PRICE)
                .and_then(|p| p.parse().ok())
                .unwrap_or(0.0),
            gpu_driver_version: facts.gpu_driver_version.clone(),
            started_at: status.start_time.or_else(|| Some(now())),
            ..Default::default()
        });
    }
    let Some(p) = record.placements.iter_mut().find(|p| p.uid == uid) else {
        return;
    };
    if p.ended_at.is_some() {
        return;
    }
    p.gpu_uuids = status.gpu_uuids.clone();
    p.restarts = restarts(status);
    if finished(status) {
        p.ended_at = Some(now());
        p.end_reason = end_reason(status);
    }
    annotate(record);
}

/// The `orca.research/ledger` annotation of a record: its placements as JSON.
pub fn annotation(record: &pb::PodRecord) -> String {
    serde_json::Value::Array(record.placements.iter().map(placement_facts).collect()).to_string()
}

fn annotate(record: &mut pb::PodRecord) {
    let value = annotation(record);
    if let Some(meta) = record.pod.as_mut() {
        meta.annotations.insert(LEDGER.to_owned(), value);
    }
}

/// Ends incarnation `uid`'s open placement with `reason` (the control plane's
/// verdict: the pod moved, its node was lost, it was deleted).
pub fn close(record: &mut pb::PodRecord, uid: &str, reason: &str) {
    if let Some(p) = record
        .placements
        .iter_mut()
        .find(|p| p.uid == uid && p.ended_at.is_none())
    {
        p.ended_at = Some(now());
        p.end_reason = reason.to_owned();
        annotate(record);
    }
}

fn seconds(t: Option<&prost_types::Timestamp>) -> f64 {
    t.map_or(0.0, |t| t.seconds as f64 + f64::from(t.nanos) / 1e9)
}

/// Hours a placement ran (until now while it runs).
pub fn hours(p: &pb::Placement) -> f64 {
    let end = p.ended_at.or_else(|| Some(now()));
    ((seconds(end.as_ref()) - seconds(p.started_at.as_ref())) / 3600.0).max(0.0)
}

/// Cost so far, USD: each placement's price × hours.
pub fn cost(record: &pb::PodRecord) -> f64 {
    record
        .placements
        .iter()
        .map(|p| p.usd_per_hour * hours(p))
        .sum()
}

fn time(t: Option<&prost_types::Timestamp>) -> Option<String> {
    t.and_then(|t| jiff::Timestamp::new(t.seconds, t.nanos).ok())
        .map(|t| t.to_string())
}

/// One placement as JSON, with its cost so far.
pub fn placement_json(p: &pb::Placement) -> serde_json::Value {
    let mut v = placement_facts(p);
    v["costUSD"] = json!(p.usd_per_hour * hours(p));
    v
}

/// One placement's facts as JSON (no cost: it changes with time).
fn placement_facts(p: &pb::Placement) -> serde_json::Value {
    json!({
        "uid": p.uid, "node": p.node_name, "instanceId": p.instance_id,
        "instanceType": p.instance_type, "zone": p.zone, "imageId": p.image_id,
        "capacityType": p.capacity_type, "capacityReservationId": p.capacity_reservation_id,
        "usdPerHour": p.usd_per_hour,
        "gpuUUIDs": p.gpu_uuids, "gpuDriverVersion": p.gpu_driver_version,
        "startedAt": time(p.started_at.as_ref()), "endedAt": time(p.ended_at.as_ref()),
        "endReason": p.end_reason, "restarts": p.restarts,
    })
}

/// One interruption as JSON.
pub fn interruption_json(i: &pb::Interruption) -> serde_json::Value {
    let notice = i.notice.clone().unwrap_or_default();
    json!({
        "uid": i.uid, "node": i.node_name, "instanceId": i.instance_id,
        "kind": notice.kind().as_str_name().trim_start_matches("NOTICE_KIND_").to_lowercase(),
        "action": notice.action, "deadline": time(notice.deadline.as_ref()),
        "reservationId": notice.reservation_id,
        "handledAt": time(i.handled_at.as_ref()), "checkpoint": i.checkpoint,
        "released": i.released,
    })
}

/// A pod's ledger entry: the pod, its placements, interruptions and cost.
pub fn entry_json(record: &pb::PodRecord) -> serde_json::Value {
    let (ns, name) = crate::pod::names(record);
    json!({
        "namespace": ns, "name": name, "uid": crate::pod::uid(record),
        "placements": record.placements.iter().map(placement_json).collect::<Vec<_>>(),
        "interruptions": record.interruptions.iter().map(interruption_json).collect::<Vec<_>>(),
        "restarts": record.placements.iter().map(|p| p.restarts).sum::<u32>(),
        "costUSD": cost(record),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(phase: PodPhase, restarts: i32, gpus: &[&str]) -> types::PodStatus {
        types::PodStatus {
            phase: phase as i32,
            container_statuses: vec![types::ContainerStatus {
                restart_count: restarts,
                ..Default::default()
            }],
            gpu_uuids: gpus.iter().map(|g| g.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn placements_open_on_running_follow_the_run_and_close_once() {
        let mut node = pb::Node {
            name: "ec2-abc-1".into(),
            instance_id: "i-0abc".into(),
            ..Default::default()
        };
        for (k, v) in [
            (LABEL_INSTANCE_TYPE, "g5.xlarge"),
            (LABEL_ZONE, "us-east-1a"),
            (LABEL_AMI, "ami-0123"),
            (LABEL_CAPACITY_TYPE, "spot"),
            (LABEL_PRICE, "0.5"),
        ] {
            node.labels.insert(k.into(), v.into());
        }
        let facts = NodeFacts {
            node,
            gpu_driver_version: "550.54.15".into(),
        };
        let mut record = pb::PodRecord {
            pod: Some(types::Pod::default()),
            ..Default::default()
        };
        let pending = status(PodPhase::Pending, 0, &[]);
        assert!(!affected(&record, "u1", &pending));
        let running = status(PodPhase::Running, 0, &["GPU-1"]);
        assert!(affected(&record, "u1", &running));
        observe(&mut record, "u1", &facts, &running);
        assert!(!affected(&record, "u1", &running), "nothing new");
        let p = &record.placements[0];
        assert_eq!(
            (
                p.instance_type.as_str(),
                p.zone.as_str(),
                p.image_id.as_str()
            ),
            ("g5.xlarge", "us-east-1a", "ami-0123")
        );
        assert_eq!((p.capacity_type.as_str(), p.usd_per_hour), ("spot", 0.5));
        assert_eq!(p.gpu_uuids, ["GPU-1"]);
        assert_eq!(p.gpu_driver_version, "550.54.15");
        let restarted = status(PodPhase::Running, 2, &["GPU-1"]);
        assert!(affected(&record, "u1", &restarted));
        observe(&mut record, "u1", &facts, &restarted);
        assert_eq!(record.placements[0].restarts, 2);
        close(&mut record, "u1", "SpotInterruption");
        let ended = record.placements[0].ended_at;
        assert!(ended.is_some());
        close(&mut record, "u1", "NodeLost");
        observe(&mut record, "u1", &facts, &status(PodPhase::Failed, 2, &[]));
        assert_eq!(record.placements[0].end_reason, "SpotInterruption");
        assert_eq!(record.placements[0].ended_at, ended, "closed once");
        assert!(cost(&record) >= 0.0);
        let json = entry_json(&record);
        assert_eq!(json["placements"][0]["instanceId"], "i-0abc");
        let kept: serde_json::Value = serde_json::from_str(
            &record
                .pod
                .as_ref()
                .map(|m| m.annotations[LEDGER].clone())
                .unwrap_or_default(),
        )
        .unwrap();
        assert_eq!(kept[0]["zone"], "us-east-1a");
        assert_eq!(kept[0]["endReason"], "SpotInterruption");
        assert_eq!(json["restarts"], 2);
    }
}
