//! Nodes: launching them through the provider, admitting their agents with
//! single-use join tokens (signing their CSRs), heartbeats authenticated by the
//! node's certificate, health (Ready → Suspect → NotReady → Lost as heartbeats
//! stay away, with the configured timings; back to Ready when they return),
//! cordoning, and removal. Liveness is kept in memory; state changes are flushed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use orca_model::health;
use orca_proto::controlplane::v1::{self as pb, NodeState};
use orca_proto::types::v1::{PodPhase, Resources};
use tracing::{info, warn};

use crate::cloud::LaunchRequest;
use crate::pki;
use crate::shared::{ClusterError, Shared, now};
use orca_store::JoinToken;

/// Key prefix of used join tokens in the tokens table.
pub const USED_PREFIX: &str = "used:";

/// The control plane's version; agents must share its major version and be at
/// most one minor version older.
const VERSION: &str = env!("CARGO_PKG_VERSION");

fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// Whether an agent of `agent` version may join a control plane of `cp` version.
pub fn compatible(cp: &str, agent: &str) -> bool {
    let parse = |v: &str| -> Option<(u64, u64)> {
        let mut parts = v.split('.');
        Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
    };
    match (parse(cp), parse(agent)) {
        (Some((cm, cn)), Some((am, an))) => cm == am && an <= cn && cn - an <= 1,
        _ => false,
    }
}

/// What `orca node add` asks for.
#[derive(Debug, Clone, Default)]
pub struct NodeRequest {
    /// Name; generated when empty.
    pub name: String,
    /// Host size (zero fields: the provider's default).
    pub size: Resources,
    /// Labels.
    pub labels: std::collections::HashMap<String, String>,
    /// Taints.
    pub taints: Vec<pb::Taint>,
    /// Register only; the operator starts the agent.
    pub external: bool,
}

/// The IP of a `host:port` address, if it is one.
fn ip_of(address: &str) -> Option<IpAddr> {
    orca_proto::tls::host_port(address)
        .ok()
        .and_then(|(h, _)| h.parse().ok())
}

/// What the control plane remembers of a node's heartbeats, in memory only (a
/// heartbeat is not an fsync). After a restart every node starts from the
/// restart time: it gets one full grace period before it can be declared Lost.
#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    /// When the last heartbeat (or Join) arrived.
    pub last_seen: Instant,
    /// The sequence number of the last heartbeat.
    pub sequence: u64,
}

/// Nodes: join tokens, joins, certificates, liveness, health, cordon, removal.
#[derive(Clone)]
pub struct Registry {
    shared: Shared,
    pods: crate::pods::Pods,
    liveness: Arc<Mutex<HashMap<String, Liveness>>>,
}

impl Registry {
    /// The component over `shared` and the components below it.
    pub fn new(shared: Shared, pods: crate::pods::Pods) -> Self {
        let started = Instant::now();
        // Every known node starts silent from now: one full grace period each.
        let liveness = shared
            .store()
            .nodes
            .scan("")
            .unwrap_or_default()
            .into_iter()
            .filter(|n| !n.id.is_empty())
            .map(|n| {
                let l = Liveness {
                    last_seen: started,
                    sequence: 0,
                };
                (n.name, l)
            })
            .collect();
        Self {
            shared,
            pods,
            liveness: Arc::new(Mutex::new(liveness)),
        }
    }

    /// Records a sign of life from `node`.
    pub fn touch(&self, node: &str, sequence: u64) {
        let mut live = self.liveness.lock().unwrap_or_else(|p| p.into_inner());
        live.insert(
            node.to_owned(),
            Liveness {
                last_seen: Instant::now(),
                sequence,
            },
        );
    }

    /// Joined nodes silent for longer than `threshold`, with their silence.
    pub fn silent_nodes(
        &self,
        threshold: std::time::Duration,
    ) -> Vec<(String, std::time::Duration)> {
        let live = self.liveness.lock().unwrap_or_else(|p| p.into_inner());
        live.iter()
            .map(|(name, l)| (name.clone(), l.last_seen.elapsed()))
            .filter(|(_, silence)| *silence > threshold)
            .collect()
    }

    /// Forgets a node's liveness, telemetry and agent connection.
    pub fn forget(&self, node: &pb::Node) {
        self.shared.telemetry().forget(&node.name);
        let mut live = self.liveness.lock().unwrap_or_else(|p| p.into_inner());
        live.remove(&node.name);
        drop(live);
        self.shared.forget_agent(&node.agent_address);
    }
}

impl Registry {
    pub(crate) fn new_token(&self, node: &str) -> Result<(String, i64), ClusterError> {
        let token = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let expires_at = jiff::Timestamp::now().as_second()
            + self.shared.config().join_token_ttl.as_secs() as i64;
        self.shared.store().tokens.put(
            &token,
            &JoinToken {
                node_name: node.to_owned(),
                expires_at,
                used_by_key: Vec::new(),
            },
        )?;
        Ok((token, expires_at))
    }

    /// Launches a node: records it, issues its join token, asks the provider
    /// (unless the node is external).
    pub async fn add_node(&self, req: NodeRequest) -> Result<pb::Node, ClusterError> {
        let name = if req.name.is_empty() {
            format!("node-{}", &uuid::Uuid::new_v4().simple().to_string()[..6])
        } else {
            req.name.clone()
        };
        if !valid_node_name(&name) {
            return Err(ClusterError::Invalid(format!(
                "node name {name:?} must be a lowercase DNS label (a-z, 0-9, '-')"
            )));
        }
        for t in &req.taints {
            if t.key.is_empty()
                || !matches!(
                    t.effect.as_str(),
                    "NoSchedule" | "PreferNoSchedule" | "NoExecute"
                )
            {
                return Err(ClusterError::Invalid(format!(
                    "taint {}={}:{}: needs a key and an effect NoSchedule, PreferNoSchedule or NoExecute",
                    t.key, t.value, t.effect
                )));
            }
        }
        let node = pb::Node {
            name: name.clone(),
            state: NodeState::Launching as i32,
            provider: if req.external {
                "external".into()
            } else {
                self.shared.provider().name().into()
            },
            created_at: Some(now()),
            labels: {
                let mut labels = req.labels.clone();
                if let crate::config::Provider::Local(l) = &self.shared.config().provider
                    && l.usd_per_hour > 0.0
                    && !req.external
                {
                    labels.insert(
                        orca_model::labels::LABEL_PRICE.to_owned(),
                        format!("{}", l.usd_per_hour),
                    );
                }
                labels
            },
            taints: req.taints.clone(),
            size: Some(req.size),
            ..Default::default()
        };
        if !self.shared.store().nodes.create(&name, &node)? {
            return Err(ClusterError::AlreadyExists { kind: "node", name });
        }
        if req.external {
            self.shared.store().flush().await?;
            self.shared.node_event(
                &name,
                false,
                "Registered",
                "external node: start its agent with a join token".into(),
            );
            return Ok(node);
        }
        let (token, _) = self.new_token(&name)?;
        self.shared.store().flush().await?;
        let launch = LaunchRequest {
            node_name: name.clone(),
            join_token: token,
            control_plane_url: self.shared.agent_url(),
            ca_pem: self.shared.pki().ca_pem().to_owned(),
            size: req.size,
            pod: None,
        };
        let launched = self.shared.provider().launch(launch).await;
        self.shared
            .launch_counters()
            .count(self.shared.provider().name(), &launched);
        match launched {
            Ok(instance) => {
                let note = self.shared.provider().note().unwrap_or_default();
                let node = self.shared.store().nodes.update(&name, |n| {
                    n.instance_id = instance.instance_id.clone();
                    n.message = note.clone();
                })?;
                self.shared.store().flush().await?;
                self.shared.node_event(
                    &name,
                    false,
                    "Launched",
                    format!("instance {}", instance.instance_id),
                );
                Ok(node.unwrap_or_default())
            }
            Err(e) => {
                warn!(node = %name, error = %e, "launch failed");
                self.shared.store().nodes.update(&name, |n| {
                    n.state = NodeState::Failed as i32;
                    n.message = e.to_string();
                })?;
                self.shared.store().flush().await?;
                self.shared
                    .node_event(&name, true, "LaunchFailed", e.to_string());
                Err(e.into())
            }
        }
    }

    /// A new join token for a node that has not joined.
    pub async fn create_join_token(
        &self,
        node: &str,
    ) -> Result<pb::CreateJoinTokenResponse, ClusterError> {
        let record = self.node(node)?;
        if record.state != NodeState::Launching as i32 {
            return Err(ClusterError::FailedPrecondition(format!(
                "node {node} has already joined (tokens are for nodes that have not)"
            )));
        }
        let (token, expires_at) = self.new_token(node)?;
        self.shared.store().flush().await?;
        Ok(pb::CreateJoinTokenResponse {
            token,
            expires_at,
            control_plane_url: self.shared.agent_url(),
            ca_cert_pem: self.shared.pki().ca_pem().to_owned(),
        })
    }

    /// Admits an agent: consumes its token, signs its CSR and marks its node Ready.
    pub async fn join(&self, req: pb::JoinRequest) -> Result<pb::JoinResponse, ClusterError> {
        let key = pki::Pki::csr_key_sha256(&req.csr_pem)
            .map_err(|e| ClusterError::Invalid(e.to_string()))?;
        let used_key = format!("{USED_PREFIX}{}", req.token);
        let mut repeated = false;
        let token = match self.shared.store().tokens.remove(&req.token)? {
            Some(token) => {
                // Kept as used, bound to this key, until the token would have expired.
                let used = JoinToken {
                    used_by_key: key.clone(),
                    ..token.clone()
                };
                self.shared.store().tokens.put(&used_key, &used)?;
                token
            }
            None => {
                // The same agent again (same key) after an answer it never got.
                let again = self
                    .shared
                    .store()
                    .tokens
                    .get(&used_key)?
                    .filter(|u| u.used_by_key == key && u.node_name == req.node_name);
                let Some(token) = again else {
                    return Err(ClusterError::JoinRefused(
                        "unknown or already used token".into(),
                    ));
                };
                info!(node = %req.node_name, "join repeated by the key that used the token");
                repeated = true;
                token
            }
        };
        self.shared.store().flush().await?;
        if token.expires_at < jiff::Timestamp::now().as_second() {
            return Err(ClusterError::JoinRefused("token expired".into()));
        }
        if token.node_name != req.node_name {
            return Err(ClusterError::JoinRefused(format!(
                "token was issued for node {:?}, not {:?}",
                token.node_name, req.node_name
            )));
        }
        if !compatible(VERSION, &req.agent_version) {
            return Err(ClusterError::JoinRefused(format!(
                "agent version {} is not compatible with control plane {VERSION} (same major, at most one minor older)",
                req.agent_version
            )));
        }
        let ips: Vec<IpAddr> = ip_of(&req.agent_address).into_iter().collect();
        let cert = self
            .shared
            .pki()
            .sign_node(
                &req.csr_pem,
                &req.node_name,
                &ips,
                self.shared.config().cert_lifetime,
            )
            .map_err(|e| ClusterError::Invalid(e.to_string()))?;
        let id = uuid::Uuid::new_v4().to_string();
        let node = self.shared.store().nodes.update(&req.node_name, |n| {
            // A repeated join keeps the id the first one was given.
            if !repeated || n.id.is_empty() {
                n.id = id.clone();
            }
            n.state = NodeState::Ready as i32;
            n.agent_address = req.agent_address.clone();
            n.agent_version = req.agent_version.clone();
            n.capacity = req.capacity;
            n.allocatable = req.allocatable;
            n.last_heartbeat = Some(now());
            n.message = self.shared.provider().note().unwrap_or_default();
        })?;
        let Some(node) = node else {
            return Err(ClusterError::JoinRefused(format!(
                "node {:?} is not expected",
                req.node_name
            )));
        };
        self.shared.store().flush().await?;
        self.forget(&node);
        self.touch(&node.name, 0);
        info!(node = %req.node_name, address = %req.agent_address, "node joined");
        self.shared.node_event(
            &req.node_name,
            false,
            "NodeReady",
            format!("agent at {}", req.agent_address),
        );
        self.shared.wake_scheduler();
        Ok(pb::JoinResponse {
            node_id: node.id.clone(),
            heartbeat_interval: prost_types::Duration::try_from(
                self.shared.config().heartbeat_interval,
            )
            .ok(),
            ca_cert_pem: self.shared.pki().ca_pem().to_owned(),
            node_cert_pem: cert,
        })
    }

    /// The node with this id, if `peer` (the verified client certificate's common
    /// name) is that node's own certificate.
    pub(crate) fn authenticated_node(
        &self,
        id: &str,
        peer: Option<&str>,
    ) -> Result<pb::Node, ClusterError> {
        let claimed = peer.and_then(pki::node_of).ok_or_else(|| {
            ClusterError::Unauthenticated("a node certificate is required".into())
        })?;
        let node =
            self.shared
                .store()
                .nodes
                .get(claimed)?
                .ok_or_else(|| ClusterError::NotFound {
                    kind: "node",
                    name: claimed.to_owned(),
                })?;
        if node.id != id || id.is_empty() {
            return Err(ClusterError::PermissionDenied(format!(
                "the certificate of node {claimed} cannot speak for node id {id:?}"
            )));
        }
        Ok(node)
    }

    /// Signs a fresh certificate for an authenticated node.
    pub fn renew_certificate(
        &self,
        req: pb::RenewCertificateRequest,
        peer: Option<&str>,
    ) -> Result<pb::RenewCertificateResponse, ClusterError> {
        let node = self.authenticated_node(&req.node_id, peer)?;
        let ips: Vec<IpAddr> = ip_of(&node.agent_address).into_iter().collect();
        let cert = self
            .shared
            .pki()
            .sign_node(
                &req.csr_pem,
                &node.name,
                &ips,
                self.shared.config().cert_lifetime,
            )
            .map_err(|e| ClusterError::Invalid(e.to_string()))?;
        info!(node = %node.name, "node certificate renewed");
        Ok(pb::RenewCertificateResponse {
            node_cert_pem: cert,
        })
    }

    /// Moves nodes along Ready → Suspect → NotReady → Lost as their silence grows
    /// (flushing each change).
    pub async fn check_health(&self) -> Result<(), ClusterError> {
        let c = self.shared.config();
        let thresholds = health::Thresholds {
            suspect_after: c.suspect_after,
            not_ready_after: c.not_ready_after,
            lost_after: c.lost_after,
        };
        // Only silent nodes are read from the store: with thousands of nodes a
        // pass costs a walk over the in-memory liveness map.
        for (name, silence) in self.silent_nodes(c.suspect_after) {
            let Some(node) = self.shared.store().nodes.get(&name)? else {
                continue;
            };
            let Ok(state) = NodeState::try_from(node.state) else {
                continue;
            };
            // Only ever worse here; heartbeats make nodes better.
            let Some(due) = health::degraded(state, silence, &thresholds) else {
                continue;
            };
            let updated = self.shared.store().nodes.update(&node.name, |n| {
                if n.state == node.state {
                    n.state = due as i32;
                }
            })?;
            if updated.is_none_or(|n| n.state != due as i32) {
                continue;
            }
            self.shared.store().flush().await?;
            let msg = format!("no heartbeat for {}", orca_model::time::human(silence));
            warn!(node = %node.name, state = ?due, silence_ms = silence.as_millis() as u64, "node health");
            // A pass that came late (a busy machine) may jump states; the events
            // still tell the whole sequence.
            for reason in health::steps(state, due) {
                self.shared
                    .node_event(&node.name, true, reason, msg.clone());
            }
        }
        Ok(())
    }

    /// Cordons or uncordons a node.
    pub async fn cordon(&self, name: &str, unschedulable: bool) -> Result<pb::Node, ClusterError> {
        let node = self
            .shared
            .store()
            .nodes
            .update(name, |n| n.unschedulable = unschedulable)?
            .ok_or_else(|| ClusterError::NotFound {
                kind: "node",
                name: name.into(),
            })?;
        self.shared.store().flush().await?;
        let reason = if unschedulable {
            "Cordoned"
        } else {
            "Uncordoned"
        };
        self.shared.node_event(name, false, reason, String::new());
        self.shared.wake_scheduler();
        Ok(node)
    }

    /// All nodes, with their pod counts and requested resources.
    pub fn nodes(&self) -> Result<Vec<pb::Node>, ClusterError> {
        let pods = self.shared.store().pods.scan("")?;
        let mut nodes = self.shared.store().nodes.scan("")?;
        for n in &mut nodes {
            let mine: Vec<_> = pods
                .iter()
                .filter(|p| p.node_name == n.name && crate::resources::holds_resources(p))
                .collect();
            n.pod_count = mine.len() as i32;
            n.requested = Some(crate::resources::sum_requests(mine.into_iter()));
        }
        Ok(nodes)
    }

    /// One node.
    pub fn node(&self, name: &str) -> Result<pb::Node, ClusterError> {
        self.nodes()?
            .into_iter()
            .find(|n| n.name == name)
            .ok_or_else(|| ClusterError::NotFound {
                kind: "node",
                name: name.into(),
            })
    }

    /// Stops the node's pods (they fail with reason NodeRemoved), terminates its
    /// instance and forgets it.
    pub async fn remove_node(&self, name: &str) -> Result<pb::Node, ClusterError> {
        let node = self
            .shared
            .store()
            .nodes
            .update(name, |n| n.state = NodeState::Terminating as i32)?
            .ok_or_else(|| ClusterError::NotFound {
                kind: "node",
                name: name.into(),
            })?;
        for pod in self
            .shared
            .store()
            .pods
            .scan("")?
            .into_iter()
            .filter(|p| p.node_name == name)
        {
            let (ns, pod_name) = crate::pods::names(&pod);
            if !node.agent_address.is_empty()
                && let Err(e) = self.pods.stop_on_node(&node, &pod, Some(0)).await
            {
                warn!(pod = %pod_name, error = %e, "pod not stopped before node removal");
            }
            // Pods that already ended keep their observed outcome.
            if !matches!(
                crate::pods::phase(&pod),
                PodPhase::Succeeded | PodPhase::Failed
            ) {
                let msg = format!("node {name} was removed");
                self.pods.fail_pod(&ns, &pod_name, "NodeRemoved", msg)?;
            }
        }
        if !node.instance_id.is_empty() {
            self.shared.provider().terminate(&node.instance_id).await?;
        }
        self.shared.store().nodes.remove(name)?;
        self.shared.store().flush().await?;
        self.forget(&node);
        self.shared.node_event(
            name,
            false,
            "Removed",
            format!("instance {} terminated", node.instance_id),
        );
        Ok(node)
    }
}

/// Whether a node is a warm-pool instance (not yet taken by a pod).
pub fn is_pool_node(node: &pb::Node) -> bool {
    in_pool(node).is_some()
}

pub(crate) fn in_pool(node: &pb::Node) -> Option<&str> {
    node.labels.get(LABEL_WARM_POOL).map(String::as_str)
}

/// Node label: the instance type of the pool a stopped (or warming) instance is in.
pub const LABEL_WARM_POOL: &str = "orca.research/warm-pool";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_follow_the_skew_policy() {
        assert!(compatible("1.4.0", "1.4.2"));
        assert!(compatible("1.4.0", "1.3.9"));
        assert!(!compatible("1.4.0", "1.2.0"), "two minors older");
        assert!(
            !compatible("1.4.0", "1.5.0"),
            "agent newer than control plane"
        );
        assert!(!compatible("1.4.0", "2.4.0"));
        assert!(!compatible("1.4.0", "garbage"));
    }

    #[test]
    fn node_names_are_dns_labels() {
        assert!(valid_node_name("gpu-1"));
        assert!(!valid_node_name("GPU"));
        assert!(!valid_node_name("-a"));
        assert!(!valid_node_name(""));
    }
}
