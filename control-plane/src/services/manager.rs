//! Keeps the proxies in step with the store: for every Service, its virtual
//! IP on the bridge and a listener per port; for every pod change, each
//! port's Ready endpoints. One loop, woken by the store's watch of pods and
//! objects (and every reconcile interval), so endpoints follow readiness and
//! pod churn as soon as the agent's report is stored. The DNS server answers
//! from the same table.

use std::collections::HashMap;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::endpoints::ready_endpoints;
use super::proxy::{Algorithm, Balancer};
use super::{LB_ALGORITHM, dns};
use crate::cloud::cidr::Ipv4Cidr;
use crate::cloud::netns;
use crate::shared::{ClusterError, Shared};
use orca_model::kind::Kind;

/// One port of a running Service.
struct Port {
    port: u16,
    node_port: Option<u16>,
    balancer: Arc<Balancer>,
    task: JoinHandle<()>,
}

impl Drop for Port {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A running Service.
struct Running {
    vip: Ipv4Addr,
    uid: String,
    ports: Vec<Port>,
    /// When its endpoints last changed (RFC 3339, milliseconds).
    updated: String,
}

/// The Services' network and what runs on it.
pub struct Services {
    bridge: String,
    range: Ipv4Cidr,
    running: Mutex<HashMap<String, Running>>,
    /// The last failure of each Service that could not start (one Event each).
    failed: Mutex<HashMap<String, String>>,
    /// Whether the cluster DNS listens (pods are only pointed at it then).
    dns: std::sync::atomic::AtomicBool,
}

/// A node port to forward, as agents are told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePort {
    /// The port every host listens on.
    pub node_port: u16,
    /// Where it forwards: the virtual IP and service port.
    pub target: SocketAddr,
}

fn stamp() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Millisecond)
        .unwrap_or_else(|_| jiff::Timestamp::now())
        .to_string()
}

impl Services {
    /// Services on `bridge`, with virtual IPs from the upper half of `range`.
    pub fn new(bridge: String, range: Ipv4Cidr) -> Self {
        Self {
            bridge,
            range,
            running: Mutex::default(),
            failed: Mutex::default(),
            dns: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Binds the cluster DNS's socket on the gateway; from then on pods are
    /// given it as their resolver ([`Services::dns_server`]).
    pub async fn bind_dns(&self, port: u16) -> Option<tokio::net::UdpSocket> {
        let at = dns::address(self.range.gateway(), port);
        match tokio::net::UdpSocket::bind(at).await {
            Ok(socket) => {
                info!(listen = %at, "cluster DNS serving");
                self.dns.store(true, Ordering::Relaxed);
                Some(socket)
            }
            Err(e) => {
                warn!(listen = %at, error = %e, "cluster DNS cannot listen; pods keep their image's resolv.conf and find Services by environment only");
                None
            }
        }
    }

    /// The network Service IPs come from.
    pub fn range(&self) -> &Ipv4Cidr {
        &self.range
    }

    /// The cluster DNS's address (the gateway), when it listens.
    pub fn dns_server(&self) -> Option<Ipv4Addr> {
        self.dns
            .load(Ordering::Relaxed)
            .then(|| self.range.gateway())
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The virtual IP of Service `ns/name`, if it runs.
    pub fn resolve(&self, ns: &str, name: &str) -> Option<Ipv4Addr> {
        self.table().get(&format!("{ns}/{name}")).map(|r| r.vip)
    }

    /// Every node port, for the agents.
    pub fn node_ports(&self) -> Vec<NodePort> {
        self.table()
            .values()
            .flat_map(|r| {
                r.ports.iter().filter_map(|p| {
                    Some(NodePort {
                        node_port: p.node_port?,
                        target: SocketAddr::new(r.vip.into(), p.port),
                    })
                })
            })
            .collect()
    }

    /// What `orca describe svc` shows: the endpoints of each port with the
    /// connections they served, and when they last changed.
    pub fn status(&self, ns: &str, name: &str) -> Value {
        let table = self.table();
        let Some(r) = table.get(&format!("{ns}/{name}")) else {
            return json!({"endpoints": []});
        };
        let ports: Vec<Value> = r
            .ports
            .iter()
            .map(|p| {
                let endpoints: Vec<Value> = p
                    .balancer
                    .backends()
                    .iter()
                    .map(|b| {
                        json!({
                            "pod": b.endpoint.pod, "address": b.endpoint.addr.to_string(),
                            "served": b.served.load(Ordering::Relaxed),
                            "active": b.active.load(Ordering::Relaxed),
                        })
                    })
                    .collect();
                json!({"port": p.port, "nodePort": p.node_port, "endpoints": endpoints})
            })
            .collect();
        json!({"clusterIP": r.vip.to_string(), "ports": ports, "endpointsUpdatedAt": r.updated})
    }
}

/// Runs the Services (proxies, endpoints, and the DNS on `dns_socket`)
/// until `stop` resolves; then takes their addresses down.
pub async fn run_services(
    shared: Shared,
    services: Arc<Services>,
    dns_socket: Option<tokio::net::UdpSocket>,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    let dns_task = dns_socket.map(|socket| {
        let table = services.clone();
        let upstream = std::fs::read_to_string("/etc/resolv.conf")
            .ok()
            .and_then(|t| dns::upstream(&t));
        tokio::spawn(dns::serve(
            socket,
            Arc::new(move |ns: &str, name: &str| table.resolve(ns, name)),
            upstream,
        ))
    });
    let mut wakeups = orca_store::Wakeups::new(shared.store(), shared.config().reconcile_interval);
    loop {
        if let Err(e) = sync_services(&shared, &services).await {
            warn!(error = %e, "services: sync failed; retrying");
        }
        tokio::select! {
            () = &mut stop => break,
            () = wakeups.next() => {}
        }
    }
    if let Some(t) = dns_task {
        t.abort();
    }
    let vips: Vec<Ipv4Addr> = services.table().drain().map(|(_, r)| r.vip).collect();
    for vip in vips {
        let _ = netns::ip(&["addr", "del", &format!("{vip}/32"), "dev", &services.bridge]).await;
    }
}

async fn sync_services(shared: &Shared, services: &Services) -> Result<(), ClusterError> {
    let stored = shared
        .store()
        .objects
        .scan(&format!("{}/", Kind::Service.name()))?;
    let pods = shared.store().pods.scan("")?;
    let wanted: HashMap<String, (String, Value)> = stored
        .iter()
        .map(|o| {
            (
                format!("{}/{}", o.namespace, o.name),
                (
                    o.uid.clone(),
                    serde_json::from_str(&o.manifest_json).unwrap_or(Value::Null),
                ),
            )
        })
        .collect();
    // Gone, or replaced by another of the same name: stop it.
    let gone: Vec<Running> = {
        let mut table = services.table();
        let keys: Vec<String> = table
            .iter()
            .filter(|(k, r)| {
                wanted.get(*k).is_none_or(|(uid, m)| {
                    uid != &r.uid
                        || m["spec"]["clusterIP"] != r.vip.to_string().as_str()
                        || ports_changed(r, m)
                })
            })
            .map(|(k, _)| k.clone())
            .collect();
        keys.iter().filter_map(|k| table.remove(k)).collect()
    };
    for r in gone {
        let vip = r.vip;
        drop(r);
        if !services.table().values().any(|o| o.vip == vip) {
            let _ =
                netns::ip(&["addr", "del", &format!("{vip}/32"), "dev", &services.bridge]).await;
        }
    }
    for (k, (uid, m)) in &wanted {
        if !services.table().contains_key(k) {
            match start(services, uid, m).await {
                Ok(r) => {
                    info!(service = %k, vip = %r.vip, "service serving");
                    services.table().insert(k.clone(), r);
                    services
                        .failed
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .remove(k);
                }
                Err(why) => {
                    let news = services
                        .failed
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(k.clone(), why.clone())
                        .is_none_or(|before| before != why);
                    if news {
                        let (ns, name) = k.split_once('/').unwrap_or_default();
                        warn!(service = %k, error = %why, "service cannot serve");
                        shared.event("Service", ns, name, true, "FailedToServe", why);
                    }
                    continue;
                }
            }
        }
        let algorithm = m["metadata"]["annotations"][LB_ALGORITHM]
            .as_str()
            .and_then(|a| Algorithm::parse(a).ok())
            .unwrap_or_default();
        let mut table = services.table();
        let Some(r) = table.get_mut(k) else { continue };
        let mut changed = false;
        for (p, spec) in r
            .ports
            .iter()
            .zip(m["spec"]["ports"].as_array().into_iter().flatten())
        {
            changed |= p.balancer.set(&ready_endpoints(m, spec, &pods), algorithm);
        }
        if changed {
            r.updated = stamp();
        }
    }
    Ok(())
}

fn ports_changed(r: &Running, m: &Value) -> bool {
    let ports: Vec<(i64, Option<i64>)> = m["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| (p["port"].as_i64().unwrap_or(0), p["nodePort"].as_i64()))
        .collect();
    ports
        != r.ports
            .iter()
            .map(|p| (i64::from(p.port), p.node_port.map(i64::from)))
            .collect::<Vec<_>>()
}

/// Puts a Service's virtual IP on the bridge and listens on its ports.
async fn start(services: &Services, uid: &str, m: &Value) -> Result<Running, String> {
    let vip: Ipv4Addr = m["spec"]["clusterIP"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or("no clusterIP")?;
    match netns::ip(&["addr", "add", &format!("{vip}/32"), "dev", &services.bridge]).await {
        Ok(_) => {}
        Err(netns::NetError::Failed { stderr, .. }) if stderr.contains("exists") => {}
        Err(e) => return Err(format!("cannot add {vip} to {}: {e}", services.bridge)),
    }
    let ports = match listen_all(vip, m) {
        Ok(ports) => ports,
        Err(why) => {
            // Nothing of it stays: its listeners closed (dropped), its address off.
            let _ =
                netns::ip(&["addr", "del", &format!("{vip}/32"), "dev", &services.bridge]).await;
            return Err(why);
        }
    };
    Ok(Running {
        vip,
        uid: uid.to_owned(),
        ports,
        updated: stamp(),
    })
}

/// A listener per port of Service manifest `m` on `vip`.
fn listen_all(vip: Ipv4Addr, m: &Value) -> Result<Vec<Port>, String> {
    let mut ports = Vec::new();
    for p in m["spec"]["ports"].as_array().into_iter().flatten() {
        let port = p["port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .ok_or("bad port")?;
        let at = SocketAddr::new(vip.into(), port);
        let balancer = Arc::new(Balancer::default());
        let task = super::proxy::listen(at, balancer.clone())
            .map_err(|e| format!("cannot listen on {at}: {e}"))?;
        ports.push(Port {
            port,
            node_port: p["nodePort"].as_u64().and_then(|n| u16::try_from(n).ok()),
            balancer,
            task,
        });
    }
    Ok(ports)
}
