//! Placement: binds pending pods to Ready, uncordoned nodes where their CPU,
//! memory and GPU requests fit beside the pods already there, whose labels
//! match the pod's nodeSelector and whose taints the pod tolerates; among
//! those, the least loaded (most free CPU and memory, then fewest pods).
//! When no node fits and autoscaling is configured,
//! it asks the provider for a host big enough (one launch at a time). A pod
//! that finds no node within the pending timeout fails with reason
//! Unschedulable; it is never left Pending forever.
//!
//! The loop also runs the node-health check and recovery, and hands bound pods
//! to their agents: a pod bound by a control plane that died before the agent
//! got it is dispatched again on the next pass (RunPod is idempotent per uid).
//! It wakes on every pod or node change and every reconcile interval, so a
//! missed wake-up heals on the next tick.

use std::future::Future;

use k8s_openapi::api::core::v1::PodSpec;
use orca_proto::agent::v1 as agent;
use orca_proto::controlplane::v1::{self as pb, NodeState};
use orca_proto::types::v1::{PodPhase, Resources};
use tracing::{info, warn};

use crate::pods::{Applied, key, names, phase, uid};
use crate::registry::NodeRequest;
use crate::resources::spec_of;
use crate::resources::{holds_resources, requests, sum_requests};
use crate::shared::{ClusterError, ResolveError, Shared, age};
use orca_model::selection::annotations::RESUME_FROM;

pub use orca_model::fit::{free_share, port_clash, ports, tolerates, unfit};

/// Label on nodes the autoscaler launched.
pub const AUTOSCALED_LABEL: &str = "orca.research/autoscaled";

/// Why a node's GPUs are not the model a pod asks for with
/// `orca.research/gpu-model`, or None (also when it asks for none).
pub fn wrong_gpu_model(node: &pb::Node, record: &pb::PodRecord) -> Option<String> {
    let want = record
        .pod
        .as_ref()?
        .annotations
        .get(orca_model::selection::annotations::GPU_MODEL)?;
    match node.labels.get(crate::telemetry::GPU_MODEL_LABEL) {
        Some(have) if crate::telemetry::same_model(have, want) => None,
        Some(have) => Some(format!("GPU model {have}, {want} asked")),
        None => Some(format!("no {want} GPUs")),
    }
}

/// Placement, dispatch and the reconcile loop that drives the passes.
#[derive(Clone)]
pub struct Scheduler {
    shared: Shared,
    registry: crate::registry::Registry,
    pods: crate::pods::Pods,
    claims: crate::claims::Claims,
    provisioner: crate::provisioning::Provisioner,
    recovery: crate::recovery::Recovery,
    interruptions: crate::interruptions::Interruptions,
    lifetime: crate::lifetime::Lifetime,
}

impl Scheduler {
    /// The component over `shared` and the components below it.
    pub fn new(
        shared: Shared,
        registry: crate::registry::Registry,
        pods: crate::pods::Pods,
        claims: crate::claims::Claims,
        provisioner: crate::provisioning::Provisioner,
        recovery: crate::recovery::Recovery,
        interruptions: crate::interruptions::Interruptions,
    ) -> Self {
        let lifetime = crate::lifetime::Lifetime::new(pods.clone());
        Self {
            shared,
            registry,
            pods,
            claims,
            provisioner,
            recovery,
            interruptions,
            lifetime,
        }
    }
}

impl Scheduler {
    /// Runs placement, health checks and recovery until `shutdown` resolves.
    pub async fn run_scheduler(&self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            if let Err(e) = self.registry.check_health().await {
                warn!(error = %e, "health check failed");
            }
            if let Err(e) = self.recovery.recover_lost().await {
                warn!(error = %e, "recovery pass failed");
            }
            if let Err(e) = self.schedule_once().await {
                warn!(error = %e, "scheduling pass failed");
            }
            if let Err(e) = self.provisioner.tend_instances().await {
                warn!(error = %e, "instance pass failed");
            }
            for (node, n) in self
                .provisioner
                .reservation_ends()
                .take_reservation_notices()
            {
                if let Err(e) = self
                    .interruptions
                    .handle_notices(&node, std::slice::from_ref(&n))
                    .await
                {
                    warn!(node = %node.name, error = %e, "reservation end not handled; retrying");
                    self.shared.again(&format!("notice:{}:{}", node.name, n.id));
                } else {
                    info!(node = %node.name, reservation = %n.reservation_id, "reservation end notice");
                }
            }
            tokio::select! {
                _ = &mut shutdown => return,
                _ = self.shared.scheduler_woken() => {}
                _ = tokio::time::sleep(self.shared.config().reconcile_interval) => {}
            }
        }
    }

    /// One placement pass.
    pub async fn schedule_once(&self) -> Result<(), ClusterError> {
        let pods = self.shared.store().pods.scan("")?;
        // Nothing to place or hand over: no need to read every node.
        if !pods.iter().any(|p| phase(p) == PodPhase::Pending) {
            return Ok(());
        }
        let pods = if self.lifetime.expire_pending(&pods)? {
            self.shared.store().pods.scan("")?
        } else {
            pods
        };
        let all_nodes = self.shared.store().nodes.scan("")?;
        let mut nodes: Vec<(pb::Node, Resources)> = all_nodes
            .iter()
            .filter(|n| n.state == NodeState::Ready as i32 && !n.unschedulable)
            .map(|n| {
                let used = sum_requests(
                    pods.iter()
                        .filter(|p| p.node_name == n.name && holds_resources(p)),
                );
                (n.clone(), used)
            })
            .collect();
        // Bound pods that this process has not handed to their agent yet.
        for pod in pods.iter().filter(|p| {
            !p.node_name.is_empty() && phase(p) == PodPhase::Pending && !uid(p).is_empty()
        }) {
            if let Some(node) = all_nodes
                .iter()
                .find(|n| n.name == pod.node_name && n.state == NodeState::Ready as i32)
                && !self.holds_for_handoff(pod)
                && self.shared.first_time(&format!("dispatch:{}", uid(pod)))
            {
                let (ns, name) = names(pod);
                let this = self.clone();
                let node = node.clone();
                tokio::spawn(async move { this.dispatch(ns, name, node).await });
            }
        }
        if self.shared.provider().dedicated() {
            return self.provision_pending(&pods, &all_nodes);
        }
        let mut wants_host: Option<Resources> = None;
        let mut claims = self.claims.claims_among("", &all_nodes)?;
        let mut taken: std::collections::HashMap<String, Vec<(String, i32)>> =
            std::collections::HashMap::new();
        for p in pods.iter().filter(|p| holds_resources(p)) {
            if let Some(spec) = spec_of(p) {
                taken
                    .entry(p.node_name.clone())
                    .or_default()
                    .extend(ports(&spec));
            }
        }
        let taken_on = |taken: &std::collections::HashMap<String, Vec<(String, i32)>>,
                        node: &str| {
            taken.get(node).cloned().unwrap_or_default()
        };
        for pod in pods
            .iter()
            .filter(|p| p.node_name.is_empty() && phase(p) == PodPhase::Pending)
        {
            let (ns, name) = names(pod);
            let Some(spec) = spec_of(pod) else { continue };
            let want = requests(&spec);
            if age(pod.created_at.as_ref()) > self.shared.config().pending_timeout {
                let why = nodes
                    .iter()
                    .filter_map(|(n, used)| {
                        unfit(n, used, &spec, &want)
                            .or_else(|| port_clash(&taken_on(&taken, &n.name), &spec))
                            .or_else(|| wrong_gpu_model(n, pod))
                            .or_else(|| crate::claims::misfit(&claims, &ns, &spec, &n.name))
                            .map(|w| format!("{}: {w}", n.name))
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                let msg = format!(
                    "no Ready node with room within {:?}{}",
                    self.shared.config().pending_timeout,
                    if why.is_empty() {
                        String::new()
                    } else {
                        format!(" ({why})")
                    }
                );
                self.pods.fail_pod(&ns, &name, "Unschedulable", msg)?;
                continue;
            }
            let choice = nodes
                .iter_mut()
                .filter(|(n, used)| {
                    unfit(n, used, &spec, &want).is_none()
                        && port_clash(&taken_on(&taken, &n.name), &spec).is_none()
                        && wrong_gpu_model(n, pod).is_none()
                        && crate::claims::misfit(&claims, &ns, &spec, &n.name).is_none()
                })
                .max_by_key(|(n, used)| {
                    (
                        free_share(n, used),
                        std::cmp::Reverse(used.pods),
                        std::cmp::Reverse(n.name.clone()),
                    )
                });
            let Some((node, used)) = choice else {
                if wants_host.is_none() && spec.node_selector.as_ref().is_none_or(|s| s.is_empty())
                {
                    wants_host = Some(want);
                }
                continue;
            };
            let bound = self.shared.store().pods.update(&key(&ns, &name), |p| {
                if p.node_name.is_empty() && uid(p) == uid(pod) {
                    p.node_name = node.name.clone();
                }
            })?;
            if bound.as_ref().is_none_or(|p| p.node_name != node.name) {
                continue;
            }
            orca_model::fit::add(used, &want);
            taken
                .entry(node.name.clone())
                .or_default()
                .extend(ports(&spec));
            if !crate::claims::claims_of(&spec).is_empty() {
                self.claims.bind_local_claims(&ns, &spec, &node.name)?;
                claims = self.claims.claims_among("", &all_nodes)?;
            }
            info!(pod = %key(&ns, &name), node = %node.name, "scheduled");
            self.shared.event(
                "Pod",
                &ns,
                &name,
                false,
                "Scheduled",
                format!("assigned to {}", node.name),
            );
            if self.holds_for_handoff(pod) {
                continue;
            }
            self.shared.first_time(&format!("dispatch:{}", uid(pod)));
            let this = self.clone();
            let node = node.clone();
            tokio::spawn(async move { this.dispatch(ns, name, node).await });
        }
        if let Some(want) = wants_host {
            self.scale_up(&all_nodes, want).await;
        }
        Ok(())
    }

    /// With an instance per pod: starts a provisioning task for each Pending pod
    /// that needs one. A pod that never got a launch attempt (the caps held it
    /// back, or the cloud did not answer) fails Unschedulable after the pending
    /// timeout; one that did is bounded by its launch attempts instead.
    fn provision_pending(
        &self,
        pods: &[pb::PodRecord],
        nodes: &[pb::Node],
    ) -> Result<(), ClusterError> {
        for pod in pods.iter().filter(|p| phase(p) == PodPhase::Pending) {
            let (ns, name) = names(pod);
            if pod.node_name.is_empty()
                && pod.launch_attempts == 0
                && age(pod.created_at.as_ref()) > self.shared.config().pending_timeout
            {
                let why = pod
                    .status
                    .as_ref()
                    .map(|s| s.message.clone())
                    .filter(|m| !m.is_empty())
                    .unwrap_or_else(|| "no launch was attempted".into());
                let msg = format!(
                    "no instance launched within {:?}: {why}",
                    self.shared.config().pending_timeout
                );
                self.pods.fail_pod(&ns, &name, "Unschedulable", msg)?;
                continue;
            }
            let pod_uid = uid(pod);
            if !pod_uid.is_empty()
                && self.provisioner.needs_provisioning(pod, nodes)
                && self.shared.first_time(&format!("provision:{pod_uid}"))
            {
                let this = self.clone();
                tokio::spawn(async move { this.provisioner.provision(ns, name, pod_uid).await });
            }
        }
        Ok(())
    }

    /// Launches a host big enough for `want` when autoscaling allows it: at most
    /// one launch in flight, at most `max_nodes` autoscaled nodes.
    async fn scale_up(&self, nodes: &[pb::Node], want: Resources) {
        let Some(auto) = self.shared.config().autoscale.clone() else {
            return;
        };
        let ours: Vec<_> = nodes
            .iter()
            .filter(|n| n.labels.contains_key(AUTOSCALED_LABEL))
            .collect();
        if ours.len() >= auto.max_nodes as usize
            || ours.iter().any(|n| n.state == NodeState::Launching as i32)
        {
            return;
        }
        let size = Resources {
            cpu_millis: auto.size.cpu_millis.max(want.cpu_millis),
            memory_bytes: auto.size.memory_bytes.max(want.memory_bytes),
            gpus: auto.size.gpus.max(want.gpus),
            pods: auto.size.pods,
        };
        let req = NodeRequest {
            size,
            labels: [(AUTOSCALED_LABEL.to_owned(), "true".to_owned())].into(),
            ..Default::default()
        };
        match self.registry.add_node(req).await {
            Ok(node) => info!(node = %node.name, "autoscaler launched a host"),
            Err(e) => warn!(error = %e, "autoscaler could not launch a host"),
        }
    }

    /// Whether a bound pod waits for its interrupted incarnation's checkpoint
    /// before it is handed over (saying so on the pod once).
    fn holds_for_handoff(&self, pod: &pb::PodRecord) -> bool {
        let Some(why) = crate::interruptions::handoff_wait(pod) else {
            return false;
        };
        if self
            .shared
            .first_time(&format!("handoff-wait:{}", uid(pod)))
        {
            let (ns, name) = names(pod);
            let _ = self.shared.store().pods.update(&key(&ns, &name), |p| {
                if uid(p) == uid(pod)
                    && let Some(s) = p.status.as_mut()
                {
                    s.message = why.clone();
                }
            });
            self.shared
                .event("Pod", &ns, &name, false, "WaitingForCheckpoint", why);
        }
        true
    }

    /// Hands a bound pod to its node's agent. An agent that refuses the spec fails
    /// the pod; one that cannot be reached unbinds it for another try.
    async fn dispatch(&self, ns: String, name: String, node: pb::Node) {
        if self.shared.provider().dedicated() && !node.instance_id.is_empty() {
            self.provisioner
                .attach_claims(&ns, &name, &node.instance_id)
                .await;
            if self
                .pods
                .pod(&ns, &name)
                .is_ok_and(|p| phase(&p) != PodPhase::Pending)
            {
                // Failed meanwhile: a volume could not be attached.
                return;
            }
        }
        let result = async {
            self.shared.store().flush().await?;
            let record = self.pods.pod(&ns, &name)?;
            let resolved = self.shared.resolve(&record, &node).await?;
            let mut pod = record.pod.clone();
            if let (Some(pod), Some(spec)) = (pod.as_mut(), resolved.spec_json) {
                pod.spec_json = spec;
            }
            if let Some(pod) = pod.as_mut()
                && let Some(location) = pod.annotations.get(RESUME_FROM)
                && let Some(spec) = crate::interruptions::with_resume_env(&pod.spec_json, location)
            {
                pod.spec_json = spec;
            }
            if let (Some(pod), Some(left)) = (pod.as_mut(), crate::lifetime::seconds_left(&record))
                && let Some(spec) = crate::lifetime::with_deadline(&pod.spec_json, left)
            {
                pod.spec_json = spec;
            }
            let mut volume_data = resolved.volume_data;
            if let Some(spec) = pod
                .as_ref()
                .and_then(|p| serde_json::from_str::<PodSpec>(&p.spec_json).ok())
                .filter(|s| !crate::claims::claims_of(s).is_empty())
            {
                let claims = self
                    .claims
                    .claim_volumes(&ns, &spec)
                    .map_err(ResolveError::Unresolvable)?;
                volume_data.get_or_insert_default().claims = claims.into_iter().collect();
            }
            let req = agent::RunPodRequest {
                pod,
                registry_credentials: resolved.registry_credentials,
                volume_data,
            };
            self.shared
                .agent(&node)?
                .run_pod(self.shared.timed(req, std::time::Duration::ZERO))
                .await
                .map_err(|status| ClusterError::Agent {
                    node: node.name.clone(),
                    status,
                })
        }
        .await;
        match result {
            Ok(resp) => {
                let record = self.pods.pod(&ns, &name);
                if let (Ok(record), Some(status)) = (record, resp.into_inner().status) {
                    let report = orca_proto::types::v1::PodReport {
                        r#ref: record.pod.and_then(|p| p.r#ref),
                        status: Some(status),
                        checkpoint: String::new(),
                    };
                    match self.pods.apply_report(&node.name, report) {
                        Ok(Applied::Changed) => self.shared.flush_in_background(),
                        Ok(_) => {}
                        Err(e) => warn!(pod = %name, error = %e, "status not recorded"),
                    }
                }
            }
            Err(ClusterError::Unresolved(e)) => {
                let _ = self
                    .pods
                    .fail_pod(&ns, &name, "CreateContainerConfigError", e.to_string());
            }
            Err(ClusterError::Agent { status, .. })
                if status.code() == tonic::Code::InvalidArgument =>
            {
                let _ =
                    self.pods
                        .fail_pod(&ns, &name, "InvalidPodSpec", status.message().to_owned());
            }
            Err(e) if self.shared.provider().dedicated() => {
                // The node is the pod's own instance: hand it over again on the
                // next pass rather than launch another.
                warn!(pod = %name, node = %node.name, error = %e, "dispatch failed; will retry");
                self.shared
                    .event("Pod", &ns, &name, true, "FailedDispatch", e.to_string());
                if let Ok(p) = self.pods.pod(&ns, &name) {
                    self.shared.again(&format!("dispatch:{}", uid(&p)));
                }
            }
            Err(e) => {
                warn!(pod = %name, node = %node.name, error = %e, "dispatch failed; will reschedule");
                self.shared
                    .event("Pod", &ns, &name, true, "FailedDispatch", e.to_string());
                if let Ok(Some(p)) = self.shared.store().pods.update(&key(&ns, &name), |p| {
                    if p.node_name == node.name && phase(p) == PodPhase::Pending {
                        p.node_name.clear();
                    }
                }) {
                    self.shared.again(&format!("dispatch:{}", uid(&p)));
                }
            }
        }
    }
}
