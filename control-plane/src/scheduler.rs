//! Placement: binds pending pods to Ready nodes (fewest pods first, within the
//! node's pod capacity) and hands them to the node's agent. A pod that finds no
//! node within the pending timeout fails with reason Unschedulable; it is never
//! left Pending forever. The loop also runs the node-health check, and wakes on
//! every pod or node change as well as every reconcile interval, so a missed
//! wake-up heals on the next tick.

use std::future::Future;

use orca_proto::agent::v1 as agent;
use orca_proto::controlplane::v1::NodeState;
use orca_proto::types::v1::PodPhase;
use tracing::{info, warn};

use crate::cluster::{Cluster, ClusterError, age};
use crate::pods::{key, names, phase};

impl Cluster {
    /// Runs placement and health checks until `shutdown` resolves.
    pub async fn run_scheduler(&self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            if let Err(e) = self.schedule_once() {
                warn!(error = %e, "scheduling pass failed");
            }
            if let Err(e) = self.check_health() {
                warn!(error = %e, "health check failed");
            }
            tokio::select! {
                _ = &mut shutdown => return,
                _ = self.scheduler_woken() => {}
                _ = tokio::time::sleep(self.config().reconcile_interval) => {}
            }
        }
    }

    /// One placement pass.
    pub fn schedule_once(&self) -> Result<(), ClusterError> {
        let pods = self.store().pods.scan("")?;
        let mut nodes: Vec<_> = self
            .store()
            .nodes
            .scan("")?
            .into_iter()
            .filter(|n| n.state == NodeState::Ready as i32)
            .map(|n| {
                let count = pods.iter().filter(|p| p.node_name == n.name).count();
                (n, count)
            })
            .collect();
        for pod in pods
            .iter()
            .filter(|p| p.node_name.is_empty() && phase(p) == PodPhase::Pending)
        {
            let (ns, name) = names(pod);
            if age(pod.created_at.as_ref()) > self.config().pending_timeout {
                let msg = format!(
                    "no Ready node with room within {:?}",
                    self.config().pending_timeout
                );
                self.fail_pod(&ns, &name, "Unschedulable", msg)?;
                continue;
            }
            let choice = nodes
                .iter_mut()
                .filter(|(n, count)| {
                    n.capacity
                        .is_none_or(|c| c.pods <= 0 || (*count as i32) < c.pods)
                })
                .min_by_key(|(n, count)| (*count, n.name.clone()));
            let Some((node, count)) = choice else {
                continue;
            };
            let bound = self.store().pods.update(&key(&ns, &name), |p| {
                if p.node_name.is_empty() {
                    p.node_name = node.name.clone();
                }
            })?;
            if bound.as_ref().is_none_or(|p| p.node_name != node.name) {
                continue;
            }
            *count += 1;
            info!(pod = %key(&ns, &name), node = %node.name, "scheduled");
            self.event(
                "Pod",
                &ns,
                &name,
                false,
                "Scheduled",
                format!("assigned to {}", node.name),
            );
            let this = self.clone();
            let node = node.clone();
            tokio::spawn(async move { this.dispatch(ns, name, node).await });
        }
        Ok(())
    }

    /// Hands a bound pod to its node's agent. An agent that refuses the spec fails
    /// the pod; one that cannot be reached unbinds it for another try.
    async fn dispatch(&self, ns: String, name: String, node: orca_proto::controlplane::v1::Node) {
        let result = async {
            self.store().flush().await?;
            let record = self.pod(&ns, &name)?;
            let req = agent::RunPodRequest {
                pod: record.pod.clone(),
                registry_credentials: Vec::new(),
                volume_data: None,
            };
            self.agent(&node)?
                .run_pod(self.timed(req, std::time::Duration::ZERO))
                .await
                .map_err(|status| ClusterError::Agent {
                    node: node.name.clone(),
                    status,
                })
        }
        .await;
        match result {
            Ok(resp) => {
                let record = self.pod(&ns, &name);
                if let (Ok(record), Some(status)) = (record, resp.into_inner().status) {
                    let report = orca_proto::types::v1::PodReport {
                        r#ref: record.pod.and_then(|p| p.r#ref),
                        status: Some(status),
                    };
                    if let Err(e) = self.apply_report(&node.name, report) {
                        warn!(pod = %name, error = %e, "status not recorded");
                    }
                }
            }
            Err(ClusterError::Agent { status, .. })
                if status.code() == tonic::Code::InvalidArgument =>
            {
                let _ = self.fail_pod(&ns, &name, "InvalidPodSpec", status.message().to_owned());
            }
            Err(e) => {
                warn!(pod = %name, node = %node.name, error = %e, "dispatch failed; will reschedule");
                self.event("Pod", &ns, &name, true, "FailedDispatch", e.to_string());
                let _ = self.store().pods.update(&key(&ns, &name), |p| {
                    if p.node_name == node.name && phase(p) == PodPhase::Pending {
                        p.node_name.clear();
                    }
                });
            }
        }
    }
}
