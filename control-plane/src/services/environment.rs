//! What a pod learns about Services when it starts, as Kubernetes gives it:
//! environment variables for each Service of its namespace (unless the pod
//! sets `enableServiceLinks: false`; its own variables win), and, with the
//! default `dnsPolicy` (`ClusterFirst`), a `dnsConfig` naming the cluster DNS
//! with the search path `NS.svc.cluster.local svc.cluster.local
//! cluster.local` and `ndots:5` (the agent writes it as the containers'
//! `/etc/resolv.conf`).

use std::net::Ipv4Addr;

use serde_json::{Value, json};

use super::dns::CLUSTER_DOMAIN;

fn env_name(name: &str) -> String {
    name.to_ascii_uppercase().replace('-', "_")
}

/// The variables Kubernetes sets for Service `svc` (a manifest with its
/// `clusterIP`), in its order.
pub fn service_links(svc: &Value) -> Vec<(String, String)> {
    let (Some(name), Some(ip)) = (
        svc["metadata"]["name"].as_str(),
        svc["spec"]["clusterIP"].as_str(),
    ) else {
        return Vec::new();
    };
    let ports = svc["spec"]["ports"].as_array().cloned().unwrap_or_default();
    let Some(first) = ports.first().and_then(|p| p["port"].as_i64()) else {
        return Vec::new();
    };
    let n = env_name(name);
    let mut out = vec![
        (format!("{n}_SERVICE_HOST"), ip.to_owned()),
        (format!("{n}_SERVICE_PORT"), first.to_string()),
    ];
    for p in &ports {
        if let (Some(port_name), Some(port)) = (
            p["name"].as_str().filter(|s| !s.is_empty()),
            p["port"].as_i64(),
        ) {
            out.push((
                format!("{n}_SERVICE_PORT_{}", env_name(port_name)),
                port.to_string(),
            ));
        }
    }
    out.push((format!("{n}_PORT"), format!("tcp://{ip}:{first}")));
    for p in &ports {
        let Some(port) = p["port"].as_i64() else {
            continue;
        };
        let prefix = format!("{n}_PORT_{port}_TCP");
        out.push((prefix.clone(), format!("tcp://{ip}:{port}")));
        out.push((format!("{prefix}_PROTO"), "tcp".into()));
        out.push((format!("{prefix}_PORT"), port.to_string()));
        out.push((format!("{prefix}_ADDR"), ip.to_owned()));
    }
    out
}

/// Adds the Services' variables to every container of `spec` and, with the
/// default DNS policy, the cluster DNS; whether it changed anything.
pub fn inject(spec: &mut Value, ns: &str, services: &[Value], dns: Option<Ipv4Addr>) -> bool {
    let mut changed = false;
    if spec["enableServiceLinks"] != json!(false) {
        let links: Vec<(String, String)> = services.iter().flat_map(service_links).collect();
        for list in ["initContainers", "containers"] {
            for c in spec[list].as_array_mut().into_iter().flatten() {
                let own: Vec<String> = c["env"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|e| e["name"].as_str().map(str::to_owned))
                    .collect();
                let mut env: Vec<Value> = links
                    .iter()
                    .filter(|(k, _)| !own.contains(k))
                    .map(|(k, v)| json!({"name": k, "value": v}))
                    .collect();
                if env.is_empty() {
                    continue;
                }
                env.extend(c["env"].as_array().cloned().unwrap_or_default());
                c["env"] = Value::Array(env);
                changed = true;
            }
        }
    }
    let policy = spec["dnsPolicy"].as_str().unwrap_or("ClusterFirst");
    if let Some(server) = dns
        && matches!(policy, "ClusterFirst" | "ClusterFirstWithHostNet")
    {
        let user = spec["dnsConfig"].clone();
        let mut nameservers = vec![json!(server.to_string())];
        nameservers.extend(user["nameservers"].as_array().cloned().unwrap_or_default());
        let mut searches = vec![
            json!(format!("{ns}.svc.{CLUSTER_DOMAIN}")),
            json!(format!("svc.{CLUSTER_DOMAIN}")),
            json!(CLUSTER_DOMAIN),
        ];
        searches.extend(user["searches"].as_array().cloned().unwrap_or_default());
        let mut options = vec![json!({"name": "ndots", "value": "5"})];
        options.extend(user["options"].as_array().cloned().unwrap_or_default());
        spec["dnsPolicy"] = json!("None");
        spec["dnsConfig"] =
            json!({"nameservers": nameservers, "searches": searches, "options": options});
        changed = true;
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc() -> Value {
        json!({"metadata": {"name": "web-front"}, "spec": {"clusterIP": "10.0.0.200",
            "ports": [{"name": "http", "port": 80}, {"name": "admin", "port": 9000}]}})
    }

    #[test]
    fn links_are_named_as_kubernetes_names_them() {
        let env: std::collections::HashMap<String, String> =
            service_links(&svc()).into_iter().collect();
        assert_eq!(env["WEB_FRONT_SERVICE_HOST"], "10.0.0.200");
        assert_eq!(env["WEB_FRONT_SERVICE_PORT"], "80");
        assert_eq!(env["WEB_FRONT_SERVICE_PORT_ADMIN"], "9000");
        assert_eq!(env["WEB_FRONT_PORT"], "tcp://10.0.0.200:80");
        assert_eq!(env["WEB_FRONT_PORT_9000_TCP_ADDR"], "10.0.0.200");
    }

    #[test]
    fn containers_get_links_and_the_cluster_dns() {
        let mut spec = json!({"containers": [{"name": "c", "env": [{"name": "WEB_FRONT_SERVICE_HOST", "value": "mine"}]}]});
        assert!(inject(
            &mut spec,
            "lab",
            &[svc()],
            Some(Ipv4Addr::new(10, 0, 0, 1))
        ));
        let env = spec["containers"][0]["env"].as_array().unwrap();
        let host: Vec<&Value> = env
            .iter()
            .filter(|e| e["name"] == "WEB_FRONT_SERVICE_HOST")
            .collect();
        assert_eq!(host.len(), 1);
        assert_eq!(host[0]["value"], "mine", "the pod's own variable wins");
        assert_eq!(spec["dnsPolicy"], "None");
        assert_eq!(spec["dnsConfig"]["nameservers"][0], "10.0.0.1");
        assert_eq!(spec["dnsConfig"]["searches"][0], "lab.svc.cluster.local");

        let mut off = json!({"enableServiceLinks": false, "dnsPolicy": "Default", "containers": [{"name": "c"}]});
        assert!(!inject(
            &mut off,
            "lab",
            &[svc()],
            Some(Ipv4Addr::new(10, 0, 0, 1))
        ));
    }
}
