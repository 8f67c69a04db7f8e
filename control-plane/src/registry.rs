//! Nodes: launching them through the provider, admitting their agents with
//! single-use join tokens (signing their CSRs), heartbeats authenticated by the
//! node's certificate, health (Ready → Suspect → NotReady → Lost as heartbeats
//! stay away, with the configured timings; back to Ready when they return),
//! cordoning, and removal. Liveness is kept in memory; state changes are flushed.

use std::net::IpAddr;

use orca_proto::controlplane::v1::{self as pb, NodeState};
use orca_proto::types::v1::{PodPhase, Resources};
use tracing::{info, warn};

use crate::cloud::LaunchRequest;
use crate::cluster::{Cluster, ClusterError, now};
use crate::pki;
use crate::pods::Applied;
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

impl Cluster {
    pub(crate) fn new_token(&self, node: &str) -> Result<(String, i64), ClusterError> {
        let token = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let expires_at =
            jiff::Timestamp::now().as_second() + self.config().join_token_ttl.as_secs() as i64;
        self.store().tokens.put(
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
                self.provider().name().into()
            },
            created_at: Some(now()),
            labels: {
                let mut labels = req.labels.clone();
                if let crate::config::Provider::Local(l) = &self.config().provider
                    && l.usd_per_hour > 0.0
                    && !req.external
                {
                    labels.insert(
                        crate::provisioning::LABEL_PRICE.to_owned(),
                        format!("{}", l.usd_per_hour),
                    );
                }
                labels
            },
            taints: req.taints.clone(),
            size: Some(req.size),
            ..Default::default()
        };
        if !self.store().nodes.create(&name, &node)? {
            return Err(ClusterError::AlreadyExists { kind: "node", name });
        }
        if req.external {
            self.store().flush().await?;
            self.node_event(
                &name,
                false,
                "Registered",
                "external node: start its agent with a join token".into(),
            );
            return Ok(node);
        }
        let (token, _) = self.new_token(&name)?;
        self.store().flush().await?;
        let launch = LaunchRequest {
            node_name: name.clone(),
            join_token: token,
            control_plane_url: self.agent_url(),
            ca_pem: self.pki().ca_pem().to_owned(),
            size: req.size,
            pod: None,
        };
        let launched = self.provider().launch(launch).await;
        self.launch_counters()
            .count(self.provider().name(), &launched);
        match launched {
            Ok(instance) => {
                let note = self.provider().note().unwrap_or_default();
                let node = self.store().nodes.update(&name, |n| {
                    n.instance_id = instance.instance_id.clone();
                    n.message = note.clone();
                })?;
                self.store().flush().await?;
                self.node_event(
                    &name,
                    false,
                    "Launched",
                    format!("instance {}", instance.instance_id),
                );
                Ok(node.unwrap_or_default())
            }
            Err(e) => {
                warn!(node = %name, error = %e, "launch failed");
                self.store().nodes.update(&name, |n| {
                    n.state = NodeState::Failed as i32;
                    n.message = e.to_string();
                })?;
                self.store().flush().await?;
                self.node_event(&name, true, "LaunchFailed", e.to_string());
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
        self.store().flush().await?;
        Ok(pb::CreateJoinTokenResponse {
            token,
            expires_at,
            control_plane_url: self.agent_url(),
            ca_cert_pem: self.pki().ca_pem().to_owned(),
        })
    }

    /// Admits an agent: consumes its token, signs its CSR and marks its node Ready.
    pub async fn join(&self, req: pb::JoinRequest) -> Result<pb::JoinResponse, ClusterError> {
        let key = pki::Pki::csr_key_sha256(&req.csr_pem)
            .map_err(|e| ClusterError::Invalid(e.to_string()))?;
        let used_key = format!("{USED_PREFIX}{}", req.token);
        let mut repeated = false;
        let token = match self.store().tokens.remove(&req.token)? {
            Some(token) => {
                // Kept as used, bound to this key, until the token would have expired.
                let used = JoinToken {
                    used_by_key: key.clone(),
                    ..token.clone()
                };
                self.store().tokens.put(&used_key, &used)?;
                token
            }
            None => {
                // The same agent again (same key) after an answer it never got.
                let again = self
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
        self.store().flush().await?;
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
            .pki()
            .sign_node(
                &req.csr_pem,
                &req.node_name,
                &ips,
                self.config().cert_lifetime,
            )
            .map_err(|e| ClusterError::Invalid(e.to_string()))?;
        let id = uuid::Uuid::new_v4().to_string();
        let node = self.store().nodes.update(&req.node_name, |n| {
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
            n.message = self.provider().note().unwrap_or_default();
        })?;
        let Some(node) = node else {
            return Err(ClusterError::JoinRefused(format!(
                "node {:?} is not expected",
                req.node_name
            )));
        };
        self.store().flush().await?;
        self.forget(&node);
        self.touch(&node.name, 0);
        info!(node = %req.node_name, address = %req.agent_address, "node joined");
        self.node_event(
            &req.node_name,
            false,
            "NodeReady",
            format!("agent at {}", req.agent_address),
        );
        self.wake_scheduler();
        Ok(pb::JoinResponse {
            node_id: node.id.clone(),
            heartbeat_interval: prost_types::Duration::try_from(self.config().heartbeat_interval)
                .ok(),
            ca_cert_pem: self.pki().ca_pem().to_owned(),
            node_cert_pem: cert,
        })
    }

    /// The node with this id, if `peer` (the verified client certificate's common
    /// name) is that node's own certificate.
    fn authenticated_node(&self, id: &str, peer: Option<&str>) -> Result<pb::Node, ClusterError> {
        let claimed = peer.and_then(pki::node_of).ok_or_else(|| {
            ClusterError::Unauthenticated("a node certificate is required".into())
        })?;
        let node = self
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
            .pki()
            .sign_node(&req.csr_pem, &node.name, &ips, self.config().cert_lifetime)
            .map_err(|e| ClusterError::Invalid(e.to_string()))?;
        info!(node = %node.name, "node certificate renewed");
        Ok(pb::RenewCertificateResponse {
            node_cert_pem: cert,
        })
    }

    /// Records a heartbeat: liveness in memory; pod statuses, and node resources
    /// or state only when they changed.
    pub async fn heartbeat(
        &self,
        mut req: pb::HeartbeatRequest,
        peer: Option<&str>,
    ) -> Result<pb::HeartbeatResponse, ClusterError> {
        let node = self.authenticated_node(&req.node_id, peer)?;
        self.touch(&node.name, req.sequence);
        let gpu_labels = self.record_gpus(&node.name, &mut req);
        let labels_stale = crate::telemetry::GPU_LABELS
            .iter()
            .any(|k| node.labels.get(*k) != gpu_labels.get(*k));
        let mut orphans = Vec::new();
        let mut changed = false;
        for report in req.pods {
            let uid = report.r#ref.as_ref().map(|r| r.uid.clone());
            match self.apply_report(&node.name, report)? {
                Applied::Orphan => orphans.extend(uid),
                Applied::Changed => changed = true,
                Applied::Unchanged => {}
            }
        }
        if !req.notices.is_empty() {
            self.handle_notices(&node, &req.notices).await?;
        }
        if changed {
            // Flushed promptly but not awaited: the agent re-reports every pod's
            // full status in every heartbeat, so an observation lost in a crash
            // comes back with the next one, and the acknowledgement (hence the
            // agent's next report) does not wait for an fsync.
            self.flush_in_background();
        }
        // A warm-pool instance being stopped may still send a last heartbeat:
        // it stays Stopped (only one started for a pod comes back).
        let stopped_pool =
            node.state == NodeState::Stopped as i32 && crate::warm_pool::is_pool_node(&node);
        let healthy = stopped_pool
            || matches!(
                NodeState::try_from(node.state),
                Ok(NodeState::Ready | NodeState::Terminating)
            );
        if !healthy
            || node.capacity != req.capacity
            || node.allocatable != req.allocatable
            || labels_stale
        {
            let was = NodeState::try_from(node.state).unwrap_or(NodeState::Unspecified);
            self.store().nodes.update(&node.name, |n| {
                n.capacity = req.capacity;
                n.allocatable = req.allocatable;
                for key in crate::telemetry::GPU_LABELS {
                    n.labels.remove(key);
                }
                n.labels.extend(gpu_labels.clone());
                n.last_heartbeat = Some(now());
                let started =
                    n.state == NodeState::Stopped as i32 && !crate::warm_pool::is_pool_node(n);
                if started
                    || matches!(
                        NodeState::try_from(n.state),
                        Ok(NodeState::Suspect | NodeState::NotReady | NodeState::Lost)
                    )
                {
                    n.state = NodeState::Ready as i32;
                }
            })?;
            self.store().flush().await?;
            if !healthy {
                self.again(&format!("fence:{}", node.name));
                info!(node = %node.name, from = ?was, "node is back");
                self.node_event(
                    &node.name,
                    false,
                    "NodeReady",
                    format!("heartbeats resumed (was {was:?})"),
                );
                self.wake_scheduler();
            }
        }
        Ok(pb::HeartbeatResponse {
            heartbeat_interval: prost_types::Duration::try_from(self.config().heartbeat_interval)
                .ok(),
            orphan_pod_uids: orphans,
            // A heartbeat interval before this node can be declared Lost, its
            // agent stops its pods (no pod runs twice: recovery).
            stop_pods_after: self
                .config()
                .lost_after
                .checked_sub(self.config().heartbeat_interval)
                .filter(|d| !d.is_zero())
                .and_then(|d| prost_types::Duration::try_from(d).ok()),
            notices: self.pushed_notices(&node.name),
            node_ports: self
                .services()
                .map(|s| {
                    s.node_ports()
                        .into_iter()
                        .map(|p| pb::NodePort {
                            port: u32::from(p.node_port),
                            target: p.target.to_string(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        })
    }

    /// Keeps a heartbeat's GPU telemetry, with a Warning event for each GPU
    /// that just turned unhealthy; returns the node labels the GPUs give.
    fn record_gpus(
        &self,
        node: &str,
        req: &mut pb::HeartbeatRequest,
    ) -> std::collections::BTreeMap<String, String> {
        let report = crate::telemetry::Report {
            source: std::mem::take(&mut req.gpu_source),
            note: std::mem::take(&mut req.gpu_note),
            driver_version: std::mem::take(&mut req.gpu_driver_version),
            gpus: std::mem::take(&mut req.gpus),
        };
        let labels = crate::telemetry::gpu_labels(&report);
        for gpu in self.telemetry().record(node, report) {
            warn!(node, gpu = gpu.index, uuid = %gpu.uuid, reason = %gpu.health_reason, "GPU unhealthy");
            self.node_event(
                node,
                true,
                "GPUUnhealthy",
                format!(
                    "GPU {} ({}) is unhealthy: {}; no new pod is given it",
                    gpu.index, gpu.uuid, gpu.health_reason
                ),
            );
        }
        labels
    }

    /// Moves nodes along Ready → Suspect → NotReady → Lost as their silence grows
    /// (flushing each change).
    pub async fn check_health(&self) -> Result<(), ClusterError> {
        let c = self.config();
        // Only silent nodes are read from the store: with thousands of nodes a
        // pass costs a walk over the in-memory liveness map.
        for (name, silence) in self.silent_nodes(c.suspect_after) {
            let Some(node) = self.store().nodes.get(&name)? else {
                continue;
            };
            let Ok(state) = NodeState::try_from(node.state) else {
                continue;
            };
            if !matches!(
                state,
                NodeState::Ready | NodeState::Suspect | NodeState::NotReady
            ) {
                continue;
            }
            let due = if silence > c.lost_after {
                NodeState::Lost
            } else if silence > c.not_ready_after {
                NodeState::NotReady
            } else if silence > c.suspect_after {
                NodeState::Suspect
            } else {
                continue;
            };
            // Only ever worse here; heartbeats make nodes better.
            if rank(due) <= rank(state) {
                continue;
            }
            let updated = self.store().nodes.update(&node.name, |n| {
                if n.state == node.state {
                    n.state = due as i32;
                }
            })?;
            if updated.is_none_or(|n| n.state != due as i32) {
                continue;
            }
            self.store().flush().await?;
            let msg = format!("no heartbeat for {}", orca_model::time::human(silence));
            warn!(node = %node.name, state = ?due, silence_ms = silence.as_millis() as u64, "node health");
            // A pass that came late (a busy machine) may jump states; the events
            // still tell the whole sequence.
            for (step, reason) in [
                (NodeState::Suspect, "NodeSuspect"),
                (NodeState::NotReady, "NodeNotReady"),
                (NodeState::Lost, "NodeLost"),
            ] {
                if rank(step) > rank(state) && rank(step) <= rank(due) {
                    self.node_event(&node.name, true, reason, msg.clone());
                }
            }
        }
        Ok(())
    }

    /// Cordons or uncordons a node.
    pub async fn cordon(&self, name: &str, unschedulable: bool) -> Result<pb::Node, ClusterError> {
        let node = self
            .store()
            .nodes
            .update(name, |n| n.unschedulable = unschedulable)?
            .ok_or_else(|| ClusterError::NotFound {
                kind: "node",
                name: name.into(),
            })?;
        self.store().flush().await?;
        let reason = if unschedulable {
            "Cordoned"
        } else {
            "Uncordoned"
        };
        self.node_event(name, false, reason, String::new());
        self.wake_scheduler();
        Ok(node)
    }

    /// All nodes, with their pod counts and requested resources.
    pub fn nodes(&self) -> Result<Vec<pb::Node>, ClusterError> {
        let pods = self.store().pods.scan("")?;
        let mut nodes = self.store().nodes.scan("")?;
        for n in &mut nodes {
            let mine: Vec<_> = pods
                .iter()
                .filter(|p| p.node_name == n.name && crate::scheduler::holds_resources(p))
                .collect();
            n.pod_count = mine.len() as i32;
            n.requested = Some(crate::scheduler::sum_requests(mine.into_iter()));
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
            .store()
            .nodes
            .update(name, |n| n.state = NodeState::Terminating as i32)?
            .ok_or_else(|| ClusterError::NotFound {
                kind: "node",
                name: name.into(),
            })?;
        for pod in self
            .store()
            .pods
            .scan("")?
            .into_iter()
            .filter(|p| p.node_name == name)
        {
            let (ns, pod_name) = crate::pods::names(&pod);
            if !node.agent_address.is_empty()
                && let Err(e) = self.stop_on_node(&node, &pod, Some(0)).await
            {
                warn!(pod = %pod_name, error = %e, "pod not stopped before node removal");
            }
            // Pods that already ended keep their observed outcome.
            if !matches!(
                crate::pods::phase(&pod),
                PodPhase::Succeeded | PodPhase::Failed
            ) {
                let msg = format!("node {name} was removed");
                self.fail_pod(&ns, &pod_name, "NodeRemoved", msg)?;
            }
        }
        if !node.instance_id.is_empty() {
            self.provider().terminate(&node.instance_id).await?;
        }
        self.store().nodes.remove(name)?;
        self.store().flush().await?;
        self.forget(&node);
        self.node_event(
            name,
            false,
            "Removed",
            format!("instance {} terminated", node.instance_id),
        );
        Ok(node)
    }
}

/// Severity of a health state, for "only ever worse" transitions.
fn rank(state: NodeState) -> u8 {
    match state {
        NodeState::Ready => 0,
        NodeState::Suspect => 1,
        NodeState::NotReady => 2,
        NodeState::Lost => 3,
        _ => 0,
    }
}

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
