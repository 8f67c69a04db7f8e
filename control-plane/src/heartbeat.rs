//! Agents' heartbeats: liveness, the pods' reports, GPU telemetry and labels,
//! interruption notices; the answer carries the orphans to stop and the
//! notices the control plane pushes (reservation ends).

use orca_proto::controlplane::v1 as pb;

use crate::interruptions::Interruptions;
use crate::objects::Objects;
use crate::pods::{Applied, Pods};
use crate::provisioning::Provisioner;
use crate::registry::Registry;
use crate::shared::now;
use crate::shared::{ClusterError, Shared};
use orca_proto::controlplane::v1::NodeState;
use tracing::{info, warn};

/// Takes each heartbeat to the components it concerns.
#[derive(Clone)]
pub struct Heartbeats {
    shared: Shared,
    registry: Registry,
    pods: Pods,
    interruptions: Interruptions,
    provisioner: Provisioner,
    objects: Objects,
}

impl Heartbeats {
    /// The component over `shared` and the components it feeds.
    pub fn new(
        shared: Shared,
        registry: Registry,
        pods: Pods,
        interruptions: Interruptions,
        provisioner: Provisioner,
        objects: Objects,
    ) -> Self {
        Self {
            shared,
            registry,
            pods,
            interruptions,
            provisioner,
            objects,
        }
    }

    /// Records a heartbeat: liveness in memory; pod statuses, and node resources
    /// or state only when they changed.
    pub async fn heartbeat(
        &self,
        mut req: pb::HeartbeatRequest,
        peer: Option<&str>,
    ) -> Result<pb::HeartbeatResponse, ClusterError> {
        let node = self.registry.authenticated_node(&req.node_id, peer)?;
        self.registry.touch(&node.name, req.sequence);
        let gpu_labels = self.record_gpus(&node.name, &mut req);
        let labels_stale = crate::telemetry::GPU_LABELS
            .iter()
            .any(|k| node.labels.get(*k) != gpu_labels.get(*k));
        let mut orphans = Vec::new();
        let mut changed = false;
        for report in req.pods {
            let uid = report.r#ref.as_ref().map(|r| r.uid.clone());
            match self.pods.apply_report(&node.name, report)? {
                Applied::Orphan => orphans.extend(uid),
                Applied::Changed => changed = true,
                Applied::Unchanged => {}
            }
        }
        if !req.notices.is_empty() {
            self.interruptions
                .handle_notices(&node, &req.notices)
                .await?;
        }
        if changed {
            // Flushed promptly but not awaited: the agent re-reports every pod's
            // full status in every heartbeat, so an observation lost in a crash
            // comes back with the next one, and the acknowledgement (hence the
            // agent's next report) does not wait for an fsync.
            self.shared.flush_in_background();
        }
        // A warm-pool instance being stopped may still send a last heartbeat:
        // it stays Stopped (only one started for a pod comes back).
        let stopped_pool =
            node.state == NodeState::Stopped as i32 && crate::registry::is_pool_node(&node);
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
            self.shared.store().nodes.update(&node.name, |n| {
                n.capacity = req.capacity;
                n.allocatable = req.allocatable;
                for key in crate::telemetry::GPU_LABELS {
                    n.labels.remove(key);
                }
                n.labels.extend(gpu_labels.clone());
                n.last_heartbeat = Some(now());
                let started =
                    n.state == NodeState::Stopped as i32 && !crate::registry::is_pool_node(n);
                if started
                    || matches!(
                        NodeState::try_from(n.state),
                        Ok(NodeState::Suspect | NodeState::NotReady | NodeState::Lost)
                    )
                {
                    n.state = NodeState::Ready as i32;
                }
            })?;
            self.shared.store().flush().await?;
            if !healthy {
                self.shared.again(&format!("fence:{}", node.name));
                info!(node = %node.name, from = ?was, "node is back");
                self.shared.node_event(
                    &node.name,
                    false,
                    "NodeReady",
                    format!("heartbeats resumed (was {was:?})"),
                );
                self.shared.wake_scheduler();
            }
        }
        Ok(pb::HeartbeatResponse {
            heartbeat_interval: prost_types::Duration::try_from(
                self.shared.config().heartbeat_interval,
            )
            .ok(),
            orphan_pod_uids: orphans,
            // A heartbeat interval before this node can be declared Lost, its
            // agent stops its pods (no pod runs twice: recovery).
            stop_pods_after: self
                .shared
                .config()
                .lost_after
                .checked_sub(self.shared.config().heartbeat_interval)
                .filter(|d| !d.is_zero())
                .and_then(|d| prost_types::Duration::try_from(d).ok()),
            notices: self
                .provisioner
                .reservation_ends()
                .pushed_notices(&node.name),
            node_ports: self
                .objects
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
        for gpu in self.shared.telemetry().record(node, report) {
            warn!(node, gpu = gpu.index, uuid = %gpu.uuid, reason = %gpu.health_reason, "GPU unhealthy");
            self.shared.node_event(
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
}
