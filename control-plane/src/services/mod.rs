//! Standalone mode's Services (v1): a virtual IP on the simulated hosts'
//! network that load-balances TCP over the Ready pods its selector picks.
//!
//! - **Virtual IPs** come from the upper half of the `local` provider's network
//!   (hosts take the lower half), added as /32 addresses on the bridge: hosts
//!   reach them through their veth like any address on the bridge, and this
//!   machine's own processes reach them too. This kernel has no IPVS and no
//!   dummy interfaces; the bridge is the one interface ORCA owns.
//! - **Load balancing** is a userspace proxy in the control plane
//!   ([`proxy`]): round-robin, or least-connections with the annotation
//!   `orca.research/lb-algorithm: least-connections`.
//! - **Endpoints** are the selected pods that are Running with their Ready
//!   condition True; the store's watch wakes the sync on every pod change, so
//!   a readiness change reaches the proxy within milliseconds of the agent's
//!   report ([`manager`]). `orca describe svc` shows them with the connections
//!   each has served.
//! - **Discovery**: the Kubernetes environment variables
//!   (`NAME_SERVICE_HOST`, `NAME_SERVICE_PORT`, `NAME_PORT_80_TCP`, ...) for
//!   the Services of the pod's namespace that exist when it starts, and DNS
//!   (`NAME.NAMESPACE.svc[.cluster.local]`) served on the gateway ([`dns`]);
//!   pods get a `resolv.conf` naming it, with Kubernetes' search path.
//! - **NodePort**: every host's agent listens on the node port and forwards
//!   to the virtual IP.
//!
//! Only TCP ports are served; `LoadBalancer`, `ExternalName` and headless
//! (`clusterIP: None`) Services are refused saying so. Services need the
//! `local` provider with network namespaces (the EC2 provider's pods are
//! reached through the VPC, and Kubernetes mode has Kubernetes' own).

pub mod dns;
pub mod endpoints;
pub mod environment;
pub mod manager;
pub mod proxy;

use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Service;
use serde_json::{Value, json};

use crate::cloud::cidr::Ipv4Cidr;

pub use orca_model::labels::LB_ALGORITHM;
/// Node ports, as Kubernetes' default range.
pub const NODE_PORTS: std::ops::RangeInclusive<u16> = 30000..=32767;

/// Checks a Service manifest; the error names the field.
pub fn validate(manifest: &Value) -> Result<(), String> {
    let s: Service =
        serde_json::from_value(manifest.clone()).map_err(|e| format!("not a v1 Service: {e}"))?;
    let spec = s.spec.ok_or("spec is required")?;
    match spec.type_.as_deref().unwrap_or("ClusterIP") {
        "ClusterIP" | "NodePort" => {}
        other => {
            return Err(format!(
                "spec.type: {other} is not served in standalone mode (ClusterIP or NodePort)"
            ));
        }
    }
    if spec.cluster_ip.as_deref() == Some("None") {
        return Err(
            "spec.clusterIP: headless Services (None) are not served in standalone mode".into(),
        );
    }
    if spec.selector.as_ref().is_none_or(|s| s.is_empty()) {
        return Err("spec.selector is required: standalone mode has no manual Endpoints".into());
    }
    let ports = spec.ports.unwrap_or_default();
    if ports.is_empty() {
        return Err("spec.ports: at least one port is required".into());
    }
    for (i, p) in ports.iter().enumerate() {
        if p.protocol.as_deref().is_some_and(|p| p != "TCP") {
            return Err(format!("spec.ports[{i}].protocol: only TCP is served"));
        }
        if !(1..=65535).contains(&p.port) {
            return Err(format!("spec.ports[{i}].port: {} is not 1..65535", p.port));
        }
        if ports[..i].iter().any(|q| q.port == p.port) {
            return Err(format!("spec.ports[{i}].port: {} is listed twice", p.port));
        }
        if ports.len() > 1 && p.name.as_deref().is_none_or(str::is_empty) {
            return Err(format!(
                "spec.ports[{i}].name is required when there are several ports"
            ));
        }
        if let Some(n) = p.node_port
            && !NODE_PORTS.contains(&u16::try_from(n).unwrap_or(0))
        {
            return Err(format!(
                "spec.ports[{i}].nodePort: {n} is outside {NODE_PORTS:?}"
            ));
        }
    }
    if let Some(a) = s
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(LB_ALGORITHM))
    {
        proxy::Algorithm::parse(a)
            .map_err(|e| format!("metadata.annotations[{LB_ALGORITHM}]: {e}"))?;
    }
    Ok(())
}

/// Fills in a Service's `spec.clusterIP` and (NodePort) `nodePort`s: kept
/// from `old`, or the first free in `range` / the node-port range; given ones
/// must be free. `taken` lists the other Services' manifests.
pub fn assign(
    manifest: &mut Value,
    old: Option<&Value>,
    range: &Ipv4Cidr,
    taken: &[Value],
) -> Result<(), String> {
    let spec = &mut manifest["spec"];
    let asked = spec["clusterIP"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    let kept = old
        .and_then(|o| o["spec"]["clusterIP"].as_str())
        .map(str::to_owned);
    let ip = match (asked, kept) {
        (Some(a), Some(k)) if a != k => {
            return Err(format!("spec.clusterIP: field is immutable ({k})"));
        }
        (_, Some(k)) => k,
        (Some(a), None) => {
            let ip: Ipv4Addr = a
                .parse()
                .map_err(|_| format!("spec.clusterIP: {a:?} is not an IPv4 address"))?;
            if !range.service_ips().any(|s| s == ip) {
                return Err(format!(
                    "spec.clusterIP: {ip} is outside the Service range (the upper half of {range})"
                ));
            }
            if taken.iter().any(|t| t["spec"]["clusterIP"] == a.as_str()) {
                return Err(format!("spec.clusterIP: {ip} is already allocated"));
            }
            a
        }
        (None, None) => range
            .service_ips()
            .map(|ip| ip.to_string())
            .find(|ip| !taken.iter().any(|t| t["spec"]["clusterIP"] == ip.as_str()))
            .ok_or_else(|| format!("no free Service IP left in the upper half of {range}"))?,
    };
    spec["clusterIP"] = json!(ip);
    spec["clusterIPs"] = json!([ip]);
    let node_port = spec["type"] == "NodePort";
    let used: Vec<i64> = taken
        .iter()
        .flat_map(|t| t["spec"]["ports"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p["nodePort"].as_i64())
        .collect();
    let mut mine: Vec<i64> = Vec::new();
    for (i, p) in spec["ports"]
        .as_array_mut()
        .into_iter()
        .flatten()
        .enumerate()
    {
        if p["targetPort"].is_null() {
            p["targetPort"] = p["port"].clone();
        }
        if !node_port {
            p.as_object_mut().map(|p| p.remove("nodePort"));
            continue;
        }
        let kept = old
            .and_then(|o| o["spec"]["ports"][i]["nodePort"].as_i64())
            .filter(|_| p["nodePort"].is_null());
        let n = match p["nodePort"].as_i64().or(kept) {
            Some(n) if used.contains(&n) || mine.contains(&n) => {
                return Err(format!(
                    "spec.ports[{i}].nodePort: {n} is already allocated"
                ));
            }
            Some(n) => n,
            None => NODE_PORTS
                .map(i64::from)
                .find(|n| !used.contains(n) && !mine.contains(n))
                .ok_or("no free node port left")?,
        };
        mine.push(n);
        p["nodePort"] = json!(n);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(extra: Value) -> Value {
        let mut s = json!({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}
        });
        for (k, v) in extra.as_object().unwrap() {
            s["spec"][k] = v.clone();
        }
        s
    }

    #[test]
    fn services_are_checked_naming_the_field() {
        assert!(validate(&service(json!({}))).is_ok());
        assert!(
            validate(&service(json!({"type": "LoadBalancer"})))
                .unwrap_err()
                .contains("spec.type")
        );
        assert!(
            validate(&service(json!({"clusterIP": "None"})))
                .unwrap_err()
                .contains("headless")
        );
        assert!(
            validate(&service(json!({"selector": {}})))
                .unwrap_err()
                .contains("spec.selector")
        );
        let udp = service(json!({"ports": [{"port": 53, "protocol": "UDP"}]}));
        assert!(validate(&udp).unwrap_err().contains("only TCP"));
        let mut bad = service(json!({}));
        bad["metadata"]["annotations"] = json!({LB_ALGORITHM: "random"});
        assert!(validate(&bad).unwrap_err().contains(LB_ALGORITHM));
    }

    #[test]
    fn addresses_are_allocated_kept_and_never_shared() {
        let range: Ipv4Cidr = "10.9.0.0/24".parse().unwrap();
        let mut a = service(json!({"type": "NodePort"}));
        assign(&mut a, None, &range, &[]).unwrap();
        assert_eq!(a["spec"]["clusterIP"], "10.9.0.128");
        assert_eq!(a["spec"]["ports"][0]["nodePort"], 30000);
        let mut b = service(json!({}));
        assign(&mut b, None, &range, std::slice::from_ref(&a)).unwrap();
        assert_eq!(b["spec"]["clusterIP"], "10.9.0.129");
        assert!(b["spec"]["ports"][0]["nodePort"].is_null());
        // Applied again: the same addresses.
        let mut again = service(json!({"type": "NodePort"}));
        assign(&mut again, Some(&a), &range, std::slice::from_ref(&b)).unwrap();
        assert_eq!(
            (
                &again["spec"]["clusterIP"],
                &again["spec"]["ports"][0]["nodePort"]
            ),
            (&a["spec"]["clusterIP"], &json!(30000))
        );
        let mut moved = service(json!({"clusterIP": "10.9.0.140"}));
        assert!(
            assign(&mut moved, Some(&a), &range, &[])
                .unwrap_err()
                .contains("immutable")
        );
        let mut clash = service(json!({"clusterIP": "10.9.0.128"}));
        assert!(
            assign(&mut clash, None, &range, &[a])
                .unwrap_err()
                .contains("already allocated")
        );
        let mut outside = service(json!({"clusterIP": "10.9.0.5"}));
        assert!(
            assign(&mut outside, None, &range, &[])
                .unwrap_err()
                .contains("outside")
        );
    }
}
