//! The warm pool (`provider.ec2.warm_pool`: instance type → count): stopped
//! on-demand instances kept ready, costing only their EBS volumes, so that a
//! pod whose selection picks that type starts one (StartInstances: the agent
//! is already installed and joined, its image cache warm) instead of launching.
//!
//! A pool instance is launched like a pod's (its node `warm-<id>` carries the
//! pool label, a pool uid in the pod-uid label, so the sweep adopts it like any
//! launch whose answer was lost) and stopped once its agent has joined; its node
//! is then `Stopped`, which health checks leave alone. A pod that takes one:
//! the node is relabelled for the pod (its uid and attempt), the pod bound to
//! it, and StartInstances sent; the agent's first heartbeat makes it Ready and
//! the pod is handed over as after a launch (the boot timeout applies from the
//! start). The pool refills in the background, one launch per type at a time.

use std::time::Instant;

use orca_proto::controlplane::v1::{self as pb, NodeState};
use tracing::{info, warn};

use crate::cloud::{CapacityType, LaunchRequest, Offering, PodLaunch};
use crate::config::ec2::Ec2Provider as Settings;
use crate::provisioning::Provisioner;
use crate::registry::LABEL_WARM_POOL;
use crate::registry::in_pool;
use crate::registry::is_pool_node;
use crate::shared::{ClusterError, now};
use orca_model::labels::{LABEL_ATTEMPT, LABEL_POD_UID, LABEL_SUBNET};
use orca_model::selection::{LaunchAnnotations, Mode, Needs};

/// The pseudo-namespace of pool instances' launch tags.
const POOL_NAMESPACE: &str = "orca-warm-pool";

impl Provisioner {
    /// Stops pool instances that have joined, and launches what the pool lacks.
    pub(crate) async fn tend_pool(&self, s: &Settings, nodes: &[pb::Node]) {
        for node in nodes.iter().filter(|n| is_pool_node(n)) {
            if node.state == NodeState::Ready as i32
                && self.shared.first_time(&format!("pool-stop:{}", node.name))
            {
                match self.shared.provider().stop(&node.instance_id).await {
                    Ok(()) => {
                        let msg = format!("warm pool: instance {} stopped", node.instance_id);
                        let _ = self.shared.store().nodes.update(&node.name, |n| {
                            n.state = NodeState::Stopped as i32;
                            n.message = msg.clone();
                        });
                        self.registry.forget(node);
                        self.shared
                            .node_event(&node.name, false, "WarmPoolStopped", msg);
                        self.shared.flush_in_background();
                    }
                    Err(e) => {
                        warn!(node = %node.name, error = %e, "warm-pool instance not stopped");
                        self.shared.again(&format!("pool-stop:{}", node.name));
                    }
                }
            }
            if node.state == NodeState::Launching as i32
                && node.instance_id.is_empty()
                && crate::shared::age(node.created_at.as_ref()) > s.boot_timeout
            {
                // Its launch never answered and the sweep found nothing to adopt.
                let _ = self.shared.store().nodes.remove(&node.name);
            }
        }
        for (instance_type, want) in &s.warm_pool {
            let have = nodes
                .iter()
                .filter(|n| in_pool(n) == Some(instance_type.as_str()))
                .filter(|n| n.state != NodeState::Failed as i32)
                .count();
            let recently_failed = self
                .provisioning()
                .pool_failed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(instance_type)
                .is_some_and(|t| t.elapsed() < s.offering_avoid);
            if have < *want as usize
                && !recently_failed
                && self
                    .shared
                    .first_time(&format!("pool-refill:{instance_type}"))
            {
                let this = self.clone();
                let instance_type = instance_type.clone();
                tokio::spawn(async move {
                    if let Err(e) = this.refill(&instance_type).await {
                        warn!(instance_type, error = %e, "warm pool not refilled");
                    }
                    this.shared.again(&format!("pool-refill:{instance_type}"));
                });
            }
        }
    }

    /// Launches one pool instance of `instance_type`.
    async fn refill(&self, instance_type: &str) -> Result<(), ClusterError> {
        let annotations = LaunchAnnotations {
            mode: Mode::Explicit,
            instance_type: Some(instance_type.to_owned()),
            ..Default::default()
        };
        let failed = |why: String| {
            warn!(instance_type, %why, "warm-pool launch failed");
            self.provisioning()
                .pool_failed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(instance_type.to_owned(), Instant::now());
        };
        let plan = match self
            .shared
            .provider()
            .plan(&Needs::default(), &annotations)
            .await
        {
            Ok(plan) => plan,
            Err(e) => {
                failed(e.to_string());
                return Ok(());
            }
        };
        let Some(choice) = plan.offerings.first() else {
            failed("no offering".into());
            return Ok(());
        };
        let pool_uid = uuid::Uuid::new_v4().to_string();
        let node_name = format!("warm-{}", &pool_uid.replace('-', "")[..10]);
        let mut node = crate::provisioning::launching_node(
            &node_name,
            self.shared.provider().name(),
            (&pool_uid, 1),
            choice,
            format!("warm pool: launching {}", choice.offering),
        );
        node.labels
            .insert(LABEL_WARM_POOL.to_owned(), instance_type.to_owned());
        self.shared.store().nodes.put(&node_name, &node)?;
        let token = self.launch_token(&node_name)?;
        self.shared.store().flush().await?;
        let req = LaunchRequest {
            node_name: node_name.clone(),
            join_token: token,
            control_plane_url: self.shared.agent_url(),
            ca_pem: self.shared.pki().ca_pem().to_owned(),
            size: choice.size,
            pod: Some(PodLaunch {
                namespace: POOL_NAMESPACE.into(),
                name: node_name.clone(),
                uid: pool_uid,
                attempt: 1,
                offering: choice.offering.clone(),
                annotations,
            }),
        };
        match self.shared.provider().launch(req).await {
            Ok(instance) => {
                let msg = format!(
                    "warm pool: instance {} launched; stopped once its agent joins",
                    instance.instance_id
                );
                self.shared.store().nodes.update(&node_name, |n| {
                    n.instance_id = instance.instance_id.clone();
                    n.message = msg.clone();
                })?;
                self.shared.store().flush().await?;
                info!(node = %node_name, instance = %instance.instance_id, instance_type, "warm-pool instance launched");
                self.shared
                    .node_event(&node_name, false, "WarmPoolLaunched", msg);
            }
            Err(e) => {
                self.shared.store().nodes.remove(&node_name)?;
                self.shared.store().flush().await?;
                failed(e.to_string());
            }
        }
        Ok(())
    }

    /// A stopped pool instance that `offering` could be, if any.
    pub(crate) fn warm_for(&self, offering: &Offering) -> Result<Option<pb::Node>, ClusterError> {
        if offering.capacity != CapacityType::OnDemand {
            return Ok(None);
        }
        Ok(self.shared.store().nodes.scan("")?.into_iter().find(|n| {
            n.state == NodeState::Stopped as i32
                && in_pool(n) == Some(offering.instance_type.as_str())
                && n.labels.get(LABEL_SUBNET) == offering.subnet.as_ref()
                && !n.instance_id.is_empty()
        }))
    }

    /// Gives pool instance `node` to the pod (bound, relabelled) and starts it;
    /// whether it was taken.
    pub(crate) async fn start_warm(
        &self,
        (ns, name, pod_uid): (&str, &str, &str),
        node: &pb::Node,
        attempt: u32,
    ) -> Result<bool, ClusterError> {
        let taken = self.shared.store().nodes.update(&node.name, |n| {
            if is_pool_node(n) && n.state == NodeState::Stopped as i32 {
                n.labels.remove(LABEL_WARM_POOL);
                n.labels
                    .insert(LABEL_POD_UID.to_owned(), pod_uid.to_owned());
                n.labels
                    .insert(LABEL_ATTEMPT.to_owned(), attempt.to_string());
                // The boot timeout counts from the start.
                n.created_at = Some(now());
                n.message = format!("warm pool: starting {} for pod {ns}/{name}", n.instance_id);
            }
        })?;
        if taken
            .as_ref()
            .is_none_or(|n| n.labels.get(LABEL_POD_UID).map(String::as_str) != Some(pod_uid))
        {
            return Ok(false);
        }
        let bound = self
            .shared
            .store()
            .pods
            .update(&crate::pods::key(ns, name), |p| {
                if crate::pods::uid(p) == pod_uid && p.node_name.is_empty() {
                    p.node_name = node.name.clone();
                    p.launch_attempts = attempt;
                }
            })?;
        self.shared.store().flush().await?;
        if bound.is_none_or(|p| p.node_name != node.name) {
            // The pod changed meanwhile: the instance goes back to the pool.
            self.shared.store().nodes.update(&node.name, |n| {
                n.labels.insert(
                    LABEL_WARM_POOL.to_owned(),
                    node.labels[LABEL_WARM_POOL].clone(),
                );
            })?;
            return Ok(false);
        }
        match self.shared.provider().start(&node.instance_id).await {
            Ok(()) => {
                let msg = format!(
                    "instance {} started from the warm pool; waiting for its agent",
                    node.instance_id
                );
                self.launch_note(ns, name, pod_uid, "Booting", msg.clone());
                self.shared
                    .event("Pod", ns, name, false, "WarmStarted", msg);
                info!(pod = %crate::pods::key(ns, name), node = %node.name, instance = %node.instance_id, "warm-pool instance started");
            }
            Err(e) => {
                // The boot timeout replaces it with a launch.
                warn!(node = %node.name, error = %e, "warm-pool instance not started");
                self.shared
                    .event("Pod", ns, name, true, "WarmStartFailed", e.to_string());
            }
        }
        Ok(true)
    }
}
