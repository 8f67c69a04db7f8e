//! A Service's endpoints: the pods of its namespace whose labels carry every
//! `spec.selector` pair, Running with their Ready condition True and an
//! address, at the port's `targetPort` (a number, or the name of one of the
//! pod's `containerPort`s).

use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::PodSpec;
use orca_proto::controlplane::v1 as pb;
use serde_json::Value;

use super::proxy::Endpoint;
use crate::pods::names;

/// Whether the pod's labels carry every pair of the selector.
pub fn selects(selector: &Value, record: &pb::PodRecord) -> bool {
    let Some(pod) = record.pod.as_ref() else {
        return false;
    };
    selector.as_object().is_some_and(|s| {
        !s.is_empty()
            && s.iter()
                .all(|(k, v)| pod.labels.get(k).map(String::as_str) == v.as_str())
    })
}

/// The port a `targetPort` names on this pod.
fn target_port(target: &Value, record: &pb::PodRecord) -> Option<u16> {
    if let Some(n) = target.as_u64() {
        return u16::try_from(n).ok();
    }
    let name = target.as_str()?;
    if let Ok(n) = name.parse() {
        return Some(n);
    }
    let spec: PodSpec = serde_json::from_str(&record.pod.as_ref()?.spec_json).ok()?;
    spec.containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some(name))
        .and_then(|p| u16::try_from(p.container_port).ok())
}

/// The Ready endpoints of port `port` (a `spec.ports[]` item) of Service
/// `svc`, by pod name.
pub fn ready_endpoints(svc: &Value, port: &Value, pods: &[pb::PodRecord]) -> Vec<Endpoint> {
    let ns = svc["metadata"]["namespace"].as_str().unwrap_or_default();
    let mut out: Vec<Endpoint> = pods
        .iter()
        .filter(|p| names(p).0 == ns && selects(&svc["spec"]["selector"], p))
        .filter(|p| crate::pods::ready(p))
        .filter_map(|p| {
            let ip: IpAddr = p.status.as_ref()?.pod_ip.parse().ok()?;
            let port = target_port(&port["targetPort"], p)?;
            Some(Endpoint {
                pod: names(p).1,
                addr: SocketAddr::new(ip, port),
            })
        })
        .collect();
    out.sort_by(|a, b| a.pod.cmp(&b.pod));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use orca_proto::types::v1 as types;
    use serde_json::json;

    fn pod(name: &str, app: &str, ready: bool) -> pb::PodRecord {
        pb::PodRecord {
            pod: Some(types::Pod {
                r#ref: Some(types::PodRef { namespace: "default".into(), name: name.into(), ..Default::default() }),
                spec_json: json!({"containers": [{"name": "c", "image": "x", "ports": [{"name": "http", "containerPort": 8080}]}]}).to_string(),
                labels: [("app".to_owned(), app.to_owned())].into(),
                ..Default::default()
            }),
            status: Some(types::PodStatus {
                phase: types::PodPhase::Running as i32,
                pod_ip: "10.0.0.5".into(),
                conditions: vec![types::PodCondition {
                    r#type: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn only_ready_selected_pods_at_their_target_port() {
        let svc =
            json!({"metadata": {"namespace": "default"}, "spec": {"selector": {"app": "web"}}});
        let pods = [
            pod("b", "web", true),
            pod("a", "web", true),
            pod("c", "web", false),
            pod("d", "db", true),
        ];
        let by_name = ready_endpoints(&svc, &json!({"port": 80, "targetPort": "http"}), &pods);
        assert_eq!(
            by_name.iter().map(|e| e.pod.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(by_name[0].addr.port(), 8080);
        let by_number = ready_endpoints(&svc, &json!({"port": 80, "targetPort": 9000}), &pods);
        assert_eq!(by_number[0].addr.port(), 9000);
        assert!(
            ready_endpoints(&svc, &json!({"port": 80, "targetPort": "grpc"}), &pods).is_empty()
        );
    }
}
