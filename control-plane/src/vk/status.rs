//! ORCA's pod status (what agents observed, or the control plane's own
//! verdict) as the Kubernetes `PodStatus` patched onto the pod object: the one
//! place the two are mapped.

use orca_proto::types::v1 as types;
use serde_json::{Value, json};

fn time(t: Option<&prost_types::Timestamp>) -> Value {
    match t.and_then(|t| jiff::Timestamp::new(t.seconds, 0).ok()) {
        Some(t) => Value::String(t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()),
        None => Value::Null,
    }
}

/// Kubernetes' phase: a pod no agent has reported on yet is Pending.
fn phase(p: i32) -> &'static str {
    match types::PodPhase::try_from(p).unwrap_or_default() {
        types::PodPhase::Unspecified => "Pending",
        known => orca_model::phase::pod_phase_name(known),
    }
}

fn state(s: Option<&types::ContainerState>) -> Value {
    use types::container_state::State;
    match s.and_then(|s| s.state.as_ref()) {
        Some(State::Waiting(w)) => json!({"waiting": drop_empty(json!({
            "reason": w.reason, "message": w.message,
        }))}),
        Some(State::Running(r)) => json!({"running": {"startedAt": time(r.started_at.as_ref())}}),
        Some(State::Terminated(t)) => json!({"terminated": drop_empty(json!({
            "exitCode": t.exit_code,
            "signal": t.signal,
            "reason": t.reason,
            "message": t.message,
            "startedAt": time(t.started_at.as_ref()),
            "finishedAt": time(t.finished_at.as_ref()),
        }))}),
        None => json!({}),
    }
}

/// Removes empty strings, zero signals and nulls from an object, as the API
/// server omits them.
fn drop_empty(mut v: Value) -> Value {
    if let Value::Object(map) = &mut v {
        map.retain(|k, v| match v {
            Value::Null => false,
            Value::String(s) => !s.is_empty(),
            Value::Number(n) if k == "signal" => n.as_i64() != Some(0),
            _ => true,
        });
    }
    v
}

fn containers(list: &[types::ContainerStatus]) -> Value {
    Value::Array(
        list.iter()
            .map(|c| {
                let running = matches!(
                    c.state.as_ref().and_then(|s| s.state.as_ref()),
                    Some(types::container_state::State::Running(_))
                );
                drop_empty(json!({
                    "name": c.name,
                    "state": state(c.state.as_ref()),
                    "lastState": state(c.last_state.as_ref()),
                    "ready": c.ready,
                    "started": running,
                    "restartCount": c.restart_count,
                    "image": c.image,
                    "imageID": c.image_id,
                    "containerID": c.container_id,
                }))
            })
            .collect(),
    )
}

/// The Kubernetes `PodStatus` (as JSON, for a merge patch of `/status`) of an
/// ORCA pod status. Lists are written whole, so a merge patch replaces them.
pub fn pod_status(s: &types::PodStatus) -> Value {
    let conditions: Vec<Value> = s
        .conditions
        .iter()
        .map(|c| {
            drop_empty(json!({
                "type": c.r#type,
                "status": c.status,
                "reason": c.reason,
                "message": c.message,
                "lastTransitionTime": time(c.last_transition_time.as_ref()),
                "lastProbeTime": Value::Null,
            }))
        })
        .collect();
    let mut status = json!({
        "phase": phase(s.phase),
        "reason": s.reason,
        "message": s.message,
        "conditions": conditions,
        "containerStatuses": containers(&s.container_statuses),
        "initContainerStatuses": containers(&s.init_container_statuses),
        "hostIP": s.host_ip,
        "podIP": s.pod_ip,
        "startTime": time(s.start_time.as_ref()),
    });
    if !s.pod_ip.is_empty() {
        status["podIPs"] = json!([{"ip": s.pod_ip}]);
    }
    if !s.host_ip.is_empty() {
        status["hostIPs"] = json!([{"ip": s.host_ip}]);
    }
    // A merge patch needs explicit nulls to clear what an earlier patch set.
    for key in ["reason", "message", "hostIP", "podIP", "startTime"] {
        if status[key] == json!("") {
            status[key] = Value::Null;
        }
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_pod_maps_to_kubernetes_fields() {
        let ts = prost_types::Timestamp {
            seconds: 1_790_000_000,
            nanos: 5,
        };
        let s = types::PodStatus {
            phase: types::PodPhase::Running as i32,
            conditions: vec![types::PodCondition {
                r#type: "Ready".into(),
                status: "True".into(),
                last_transition_time: Some(ts),
                ..Default::default()
            }],
            container_statuses: vec![types::ContainerStatus {
                name: "app".into(),
                state: Some(types::ContainerState {
                    state: Some(types::container_state::State::Running(
                        types::ContainerStateRunning {
                            started_at: Some(ts),
                        },
                    )),
                }),
                last_state: Some(types::ContainerState {
                    state: Some(types::container_state::State::Terminated(
                        types::ContainerStateTerminated {
                            exit_code: 3,
                            reason: "Error".into(),
                            ..Default::default()
                        },
                    )),
                }),
                ready: true,
                restart_count: 1,
                image: "busybox".into(),
                image_id: "busybox@sha256:ab".into(),
                container_id: "containerd://c1".into(),
            }],
            pod_ip: "10.1.0.2".into(),
            host_ip: "10.1.0.2".into(),
            start_time: Some(ts),
            ..Default::default()
        };
        let v = pod_status(&s);
        assert_eq!(v["phase"], "Running");
        assert_eq!(v["reason"], Value::Null, "empty reason clears");
        assert_eq!(v["podIPs"][0]["ip"], "10.1.0.2");
        assert_eq!(v["startTime"], "2026-09-21T14:13:20Z");
        let c = &v["containerStatuses"][0];
        assert_eq!(c["state"]["running"]["startedAt"], "2026-09-21T14:13:20Z");
        assert_eq!(c["lastState"]["terminated"]["exitCode"], 3);
        assert_eq!(c["lastState"]["terminated"]["reason"], "Error");
        assert!(c["lastState"]["terminated"].get("signal").is_none());
        assert_eq!(c["restartCount"], 1);
        assert_eq!(c["containerID"], "containerd://c1");
        assert_eq!(v["conditions"][0]["type"], "Ready");
        // What the API server will store decodes as a Kubernetes PodStatus.
        let typed: k8s_openapi::api::core::v1::PodStatus = serde_json::from_value(v).unwrap();
        assert!(typed.container_statuses.unwrap()[0].ready);
    }

    #[test]
    fn verdicts_keep_reason_and_message() {
        let s = types::PodStatus {
            phase: types::PodPhase::Failed as i32,
            reason: "InsufficientCapacity".into(),
            message: "no offering left".into(),
            ..Default::default()
        };
        let v = pod_status(&s);
        assert_eq!(v["phase"], "Failed");
        assert_eq!(v["reason"], "InsufficientCapacity");
        assert_eq!(v["message"], "no offering left");
        assert_eq!(v["hostIP"], Value::Null);
    }
}
