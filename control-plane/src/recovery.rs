//! Recovery: the pods of Lost nodes, drains, and injected faults.
//!
//! A Lost node is fenced first: the provider is told to terminate it (a
//! simulated host is killed, an EC2 instance terminated). Then each of its
//! unfinished pods is moved: with restartPolicy Always or OnFailure it becomes
//! a new incarnation (a new uid) that the scheduler places elsewhere; with
//! Never it ends Failed with reason `NodeLost`.
//!
//! **No pod runs twice.** When fencing fails (the host is unreachable, like an
//! instance whose termination fails) the pods stay where they are, bound to the
//! Lost node with a `FenceWaiting` event, until the termination is confirmed
//! (the fence is retried every pass) or the node comes back; a pod annotated
//! `orca.research/on-node-lost: replace` is moved at once instead (Nomad's
//! `disconnect { replace = true }`). The host's agent stops those opted-in
//! pods itself (reason `NodeCutOff`) once no heartbeat of its has been answered
//! for `lost_after` minus one heartbeat interval (`stop_pods_after`, told in
//! every answer): the node cannot be declared Lost before that, so a
//! replacement never overlaps its old copy. The other pods run on where they
//! are (stopping them would gain no safety, since nothing replaces them before
//! the fence, and would lose their work); when the host comes back they simply
//! continue. Pods an agent stopped for being cut off are moved like a Lost
//! node's (a new incarnation, or Failed `NodeLost` for restartPolicy Never),
//! and old incarnations a returning host still reports are answered as orphans. Both steps are redone by a restarted control plane
//! (once the node has been silent for `lost_after` since the restart): the fence
//! once per process, the moves until no unfinished pod is bound to a Lost node.

use std::time::Duration;

use k8s_openapi::api::core::v1::PodSpec;
use orca_proto::controlplane::v1::{self as pb, NodeState};
use orca_proto::types::v1::{self as types, PodPhase};
use tracing::{info, warn};

use crate::cloud::Fault;
use crate::pods::CUT_OFF_SCAN;
use crate::pods::{key, names, phase, uid};
use crate::shared::{ClusterError, Shared, now};
use orca_model::selection::annotations::ON_NODE_LOST;

/// Whether the pod asked to be moved at once when its node is Lost and cannot
/// be fenced (`orca.research/on-node-lost: replace`).
fn replaces_unfenced(p: &pb::PodRecord) -> bool {
    p.pod
        .as_ref()
        .and_then(|p| p.annotations.get(ON_NODE_LOST))
        .is_some_and(|v| v.trim() == "replace")
}

fn unfinished(p: &pb::PodRecord) -> bool {
    !matches!(phase(p), PodPhase::Succeeded | PodPhase::Failed)
}

/// Lost nodes fenced, pods given new incarnations, drains and faults.
#[derive(Clone)]
pub struct Recovery {
    shared: Shared,
    pods: crate::pods::Pods,
    registry: crate::registry::Registry,
}

impl Recovery {
    /// The component over `shared` and the components below it.
    pub fn new(
        shared: Shared,
        pods: crate::pods::Pods,
        registry: crate::registry::Registry,
    ) -> Self {
        Self {
            shared,
            pods,
            registry,
        }
    }
}

impl Recovery {
    /// Fences Lost nodes (once per control-plane process and Lost episode) and
    /// moves their unfinished pods.
    pub async fn recover_lost(&self) -> Result<(), ClusterError> {
        let mut lost = Vec::new();
        for (name, _) in self.registry.silent_nodes(self.shared.config().lost_after) {
            if let Some(node) = self.shared.store().nodes.get(&name)?
                && node.state == NodeState::Lost as i32
            {
                lost.push(node);
            }
        }
        for node in lost {
            // A node whose heartbeats came back since the list was taken is not
            // fenced (it would be killed while Ready).
            let still_lost = self
                .shared
                .store()
                .nodes
                .get(&node.name)?
                .is_some_and(|n| n.state == NodeState::Lost as i32);
            if !still_lost {
                continue;
            }
            if self.shared.first_time(&format!("fence:{}", node.name)) && !self.fence(&node).await {
                // The instance may still run them: they stay until it is gone,
                // but for those that opted in to moving at once.
                self.shared.again(&format!("fence:{}", node.name));
                self.wait_for_fence(&node)?;
                for pod in self.shared.store().pods.scan("")? {
                    if pod.node_name == node.name && unfinished(&pod) && replaces_unfenced(&pod) {
                        let msg = format!(
                            "node {} was lost and could not be fenced; moved at once ({ON_NODE_LOST}: replace)",
                            node.name
                        );
                        self.relocate(&pod, "NodeLost", msg).await?;
                    }
                }
                continue;
            }
            for pod in self.shared.store().pods.scan("")? {
                if pod.node_name == node.name && unfinished(&pod) {
                    let msg = format!("node {} was lost", node.name);
                    self.relocate(&pod, "NodeLost", msg).await?;
                }
            }
        }
        // Pods a host stopped itself while cut off (it came back, or another
        // pass saw its report): moved as a Lost node's pods are. Looked for once
        // at start and then only after such a report arrived, not every pass.
        if self.shared.first_time(CUT_OFF_SCAN)
            && let Err(e) = self.move_cut_off_pods().await
        {
            self.shared.again(CUT_OFF_SCAN);
            return Err(e);
        }
        Ok(())
    }

    /// Moves every pod its agent stopped for being cut off (see the module docs).
    async fn move_cut_off_pods(&self) -> Result<(), ClusterError> {
        for pod in self.shared.store().pods.scan("")? {
            let cut_off = phase(&pod) == PodPhase::Failed
                && pod
                    .status
                    .as_ref()
                    .is_some_and(|s| s.reason == orca_proto::NODE_CUT_OFF);
            if cut_off && !pod.node_name.is_empty() {
                let msg = format!(
                    "its node {} stopped it when cut off from the control plane",
                    pod.node_name
                );
                self.relocate(&pod, "NodeLost", msg).await?;
            }
        }
        Ok(())
    }

    /// Says on each unfinished pod of a Lost node whose termination is not
    /// confirmed why it has not moved yet.
    fn wait_for_fence(&self, node: &pb::Node) -> Result<(), ClusterError> {
        let msg = format!(
            "node {} was lost; waiting until its instance {} is confirmed terminated before the pod moves",
            node.name, node.instance_id
        );
        for pod in self.shared.store().pods.scan("")? {
            if pod.node_name == node.name && unfinished(&pod) {
                let (ns, name) = names(&pod);
                self.shared.store().pods.update(&key(&ns, &name), |p| {
                    if let Some(s) = p.status.as_mut() {
                        s.reason = "NodeLost".into();
                        s.message = msg.clone();
                    }
                })?;
                if self.shared.first_time(&format!("fence-wait:{}", uid(&pod))) {
                    self.shared
                        .event("Pod", &ns, &name, true, "FenceWaiting", msg.clone());
                }
            }
        }
        Ok(())
    }

    /// Terminates a Lost node's instance; true when that is done (or there is none to).
    async fn fence(&self, node: &pb::Node) -> bool {
        if node.instance_id.is_empty() {
            let msg = "no instance to terminate (external node): pods move anyway".to_owned();
            self.shared.node_event(&node.name, true, "FenceFailed", msg);
            return true;
        }
        match self.shared.provider().terminate(&node.instance_id).await {
            Ok(()) => {
                info!(node = %node.name, instance = %node.instance_id, "lost node fenced");
                let msg = format!("instance {} terminated", node.instance_id);
                let _ = self
                    .shared
                    .store()
                    .nodes
                    .update(&node.name, |n| n.message = msg.clone());
                self.shared.node_event(&node.name, false, "Fenced", msg);
                true
            }
            Err(e) => {
                warn!(node = %node.name, error = %e, "lost node not fenced; its pods move anyway");
                let msg =
                    format!("{e}; its pods move anyway, and stale ones are stopped if it returns");
                let _ = self
                    .shared
                    .store()
                    .nodes
                    .update(&node.name, |n| n.message = msg.clone());
                self.shared.node_event(&node.name, true, "FenceFailed", msg);
                false
            }
        }
    }

    /// Moves a pod off its node: a new incarnation, Pending for the scheduler,
    /// when its restartPolicy allows; otherwise Failed with `reason`.
    pub async fn relocate(
        &self,
        pod: &pb::PodRecord,
        reason: &str,
        message: String,
    ) -> Result<(), ClusterError> {
        let (ns, name) = names(pod);
        let old_uid = uid(pod);
        let policy = pod
            .pod
            .as_ref()
            .and_then(|p| serde_json::from_str::<PodSpec>(&p.spec_json).ok())
            .and_then(|s| s.restart_policy)
            .unwrap_or_else(|| "Always".into());
        if policy == "Never" {
            self.pods.fail_pod(&ns, &name, reason, message)?;
            self.shared.store().flush().await?;
            return Ok(());
        }
        let new_uid = uuid::Uuid::new_v4().to_string();
        let from = pod.node_name.clone();
        let moved = self.shared.store().pods.update(&key(&ns, &name), |p| {
            if uid(p) != old_uid {
                return;
            }
            orca_model::ledger::close(p, &old_uid, reason);
            if let Some(r) = p.pod.as_mut().and_then(|p| p.r#ref.as_mut()) {
                r.uid = new_uid.clone();
            }
            p.node_name.clear();
            p.recreations += 1;
            p.launch_attempts = 0;
            p.created_at = Some(now());
            p.status = Some(types::PodStatus {
                phase: PodPhase::Pending as i32,
                reason: reason.into(),
                message: format!("{message}; recreated"),
                observed_at: Some(now()),
                ..Default::default()
            });
        })?;
        if moved.is_some_and(|p| uid(&p) == new_uid) {
            self.shared.store().flush().await?;
            info!(pod = %key(&ns, &name), from = %from, uid = %new_uid, "pod recreated");
            self.shared.event(
                "Pod",
                &ns,
                &name,
                true,
                "Recreated",
                format!("{message}; new incarnation {new_uid} (was {old_uid} on {from})"),
            );
            self.shared.wake_scheduler();
        }
        Ok(())
    }

    /// Cordons a node and moves its pods away (each stopped there first, within
    /// its grace period).
    pub async fn drain(&self, name: &str, grace: Option<i64>) -> Result<pb::Node, ClusterError> {
        let node = self.registry.cordon(name, true).await?;
        for pod in self.shared.store().pods.scan("")? {
            if pod.node_name != name || !unfinished(&pod) {
                continue;
            }
            if let Err(e) = self.pods.stop_on_node(&node, &pod, grace).await {
                warn!(pod = %key(&names(&pod).0, &names(&pod).1), error = %e, "not stopped before the move");
            }
            self.relocate(&pod, "Evicted", format!("node {name} was drained"))
                .await?;
        }
        self.shared
            .node_event(name, false, "Drained", String::new());
        self.registry.node(name)
    }

    /// Injects a fault into a node's host; a partition with a duration heals
    /// itself after it.
    pub async fn inject_fault(
        &self,
        name: &str,
        fault: Fault,
        duration: Option<Duration>,
    ) -> Result<pb::Node, ClusterError> {
        let node = self.registry.node(name)?;
        if node.instance_id.is_empty() {
            return Err(ClusterError::FailedPrecondition(format!(
                "node {name} has no instance to inject faults into"
            )));
        }
        self.shared
            .provider()
            .fault(&node.instance_id, fault)
            .await?;
        let detail = match (fault, duration) {
            (Fault::Partition, Some(d)) => format!("{fault:?} for {d:?}"),
            (Fault::SpotNotice(lead), _) => format!("spot interruption notice, {lead:?} ahead"),
            _ => format!("{fault:?}"),
        };
        info!(node = %name, fault = %detail, "fault injected");
        self.shared.node_event(name, true, "FaultInjected", detail);
        if let Fault::SpotNotice(lead) = fault {
            // The world's part: the instance is reclaimed at the deadline.
            let this = self.clone();
            let node = node.clone();
            tokio::spawn(async move {
                tokio::time::sleep(lead).await;
                match this.shared.provider().terminate(&node.instance_id).await {
                    Ok(()) => this.shared.node_event(
                        &node.name,
                        true,
                        "InstanceReclaimed",
                        format!("spot instance {} reclaimed", node.instance_id),
                    ),
                    Err(e) => {
                        warn!(node = %node.name, error = %e, "interrupted instance not reclaimed")
                    }
                }
            });
        }
        if let (Fault::Partition, Some(d)) = (fault, duration) {
            let this = self.clone();
            let node = node.clone();
            tokio::spawn(async move {
                tokio::time::sleep(d).await;
                match this
                    .shared
                    .provider()
                    .fault(&node.instance_id, Fault::Heal)
                    .await
                {
                    Ok(()) => {
                        this.shared
                            .node_event(&node.name, false, "FaultInjected", "Heal".into())
                    }
                    Err(e) => warn!(node = %node.name, error = %e, "partition not healed"),
                }
            });
        }
        Ok(node)
    }
}
