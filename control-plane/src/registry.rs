//! Nodes: launching them through the provider, admitting their agents with
//! single-use join tokens, heartbeats, health (Ready ⇄ NotReady on missed
//! heartbeats, with the configured timings), and removal.

use orca_proto::controlplane::v1::{self as pb, NodeState};
use orca_proto::types::v1::PodPhase;
use tracing::{info, warn};

use crate::cloud::LaunchRequest;
use crate::cluster::{Cluster, ClusterError, age, now};
use crate::store::JoinToken;

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

impl Cluster {
    /// Launches a node: records it, issues its join token, asks the provider.
    pub async fn add_node(&self, name: String) -> Result<pb::Node, ClusterError> {
        let name = if name.is_empty() {
            format!("node-{}", &uuid::Uuid::new_v4().simple().to_string()[..6])
        } else {
            name
        };
        if !valid_node_name(&name) {
            return Err(ClusterError::Invalid(format!(
                "node name {name:?} must be a lowercase DNS label (a-z, 0-9, '-')"
            )));
        }
        let node = pb::Node {
            name: name.clone(),
            state: NodeState::Launching as i32,
            provider: self.provider().name().into(),
            created_at: Some(now()),
            ..Default::default()
        };
        if !self.store().nodes.create(&name, &node)? {
            return Err(ClusterError::AlreadyExists { kind: "node", name });
        }
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
                node_name: name.clone(),
                expires_at,
            },
        )?;
        self.store().flush().await?;
        let launch = LaunchRequest {
            node_name: name.clone(),
            join_token: token,
            control_plane_url: self.config().advertise_url.clone(),
        };
        match self.provider().launch(launch).await {
            Ok(instance) => {
                let note = self.provider().note().unwrap_or_default();
                let node = self.store().nodes.update(&name, |n| {
                    n.instance_id = instance.instance_id.clone();
                    n.message = note.clone();
                })?;
                self.store().flush().await?;
                self.event(
                    "Node",
                    "",
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
                self.event("Node", "", &name, true, "LaunchFailed", e.to_string());
                Err(e.into())
            }
        }
    }

    /// Admits an agent: consumes its token and marks its node Ready.
    pub async fn join(&self, req: pb::JoinRequest) -> Result<pb::JoinResponse, ClusterError> {
        let token = self
            .store()
            .tokens
            .remove(&req.token)?
            .ok_or_else(|| ClusterError::JoinRefused("unknown or already used token".into()))?;
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
        let id = uuid::Uuid::new_v4().to_string();
        let node = self.store().nodes.update(&req.node_name, |n| {
            n.id = id.clone();
            n.state = NodeState::Ready as i32;
            n.agent_address = req.agent_address.clone();
            n.agent_version = req.agent_version.clone();
            n.capacity = req.capacity;
            n.allocatable = req.allocatable;
            n.last_heartbeat = Some(now());
            n.message = self.provider().note().unwrap_or_default();
        })?;
        if node.is_none() {
            return Err(ClusterError::JoinRefused(format!(
                "node {:?} is not expected",
                req.node_name
            )));
        }
        self.store().flush().await?;
        info!(node = %req.node_name, address = %req.agent_address, "node joined");
        self.event(
            "Node",
            "",
            &req.node_name,
            false,
            "NodeReady",
            format!("agent at {}", req.agent_address),
        );
        self.wake_scheduler();
        Ok(pb::JoinResponse {
            node_id: id,
            heartbeat_interval: prost_types::Duration::try_from(self.config().heartbeat_interval)
                .ok(),
            ..Default::default()
        })
    }

    fn node_by_id(&self, id: &str) -> Result<Option<pb::Node>, ClusterError> {
        Ok(self
            .store()
            .nodes
            .scan("")?
            .into_iter()
            .find(|n| n.id == id && !id.is_empty()))
    }

    /// Records a heartbeat: node liveness and every pod's observed status.
    pub async fn heartbeat(
        &self,
        req: pb::HeartbeatRequest,
    ) -> Result<pb::HeartbeatResponse, ClusterError> {
        let node = self
            .node_by_id(&req.node_id)?
            .ok_or_else(|| ClusterError::NotFound {
                kind: "node id",
                name: req.node_id.clone(),
            })?;
        let mut orphans = Vec::new();
        let mut count = 0;
        for report in req.pods {
            if self.apply_report(&node.name, report.clone())? {
                count += 1;
            } else if let Some(r) = report.r#ref {
                orphans.push(r.uid);
            }
        }
        let was = node.state;
        self.store().nodes.update(&node.name, |n| {
            n.last_heartbeat = Some(now());
            n.capacity = req.capacity;
            n.allocatable = req.allocatable;
            n.pod_count = count;
            if n.state == NodeState::NotReady as i32 {
                n.state = NodeState::Ready as i32;
            }
        })?;
        if was == NodeState::NotReady as i32 {
            info!(node = %node.name, "node is back");
            self.event(
                "Node",
                "",
                &node.name,
                false,
                "NodeReady",
                "heartbeats resumed".into(),
            );
            self.wake_scheduler();
        }
        Ok(pb::HeartbeatResponse {
            heartbeat_interval: prost_types::Duration::try_from(self.config().heartbeat_interval)
                .ok(),
            orphan_pod_uids: orphans,
        })
    }

    /// Marks nodes whose heartbeats stopped NotReady.
    pub fn check_health(&self) -> Result<(), ClusterError> {
        for node in self.store().nodes.scan("")? {
            if node.state == NodeState::Ready as i32
                && age(node.last_heartbeat.as_ref()) > self.config().node_timeout
            {
                warn!(node = %node.name, "no heartbeat within the node timeout; NotReady");
                self.store().nodes.update(&node.name, |n| {
                    if n.state == NodeState::Ready as i32 {
                        n.state = NodeState::NotReady as i32;
                    }
                })?;
                let msg = format!("no heartbeat for {:?}", age(node.last_heartbeat.as_ref()));
                self.event("Node", "", &node.name, true, "NodeNotReady", msg);
            }
        }
        Ok(())
    }

    /// All nodes, with their pod counts.
    pub fn nodes(&self) -> Result<Vec<pb::Node>, ClusterError> {
        let pods = self.store().pods.scan("")?;
        let mut nodes = self.store().nodes.scan("")?;
        for n in &mut nodes {
            n.pod_count = pods.iter().filter(|p| p.node_name == n.name).count() as i32;
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
            if let Err(e) = self.stop_on_node(&node, &pod, Some(0)).await {
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
        self.event(
            "Node",
            "",
            name,
            false,
            "Removed",
            format!("instance {} terminated", node.instance_id),
        );
        Ok(node)
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
