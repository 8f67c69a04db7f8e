//! Provisioning, for providers that give every pod an instance of its own (EC2).
//!
//! A Pending pod is planned (selection: the offerings it may get, best first,
//! recorded in an `InstanceSelected` Event), then launched on the first
//! offering that is not avoided, within the cluster's instance and GPU caps.
//! Before RunInstances is sent the intent is durable: the pod's launch attempt
//! number is counted and it is bound to a node record (`Launching`, labelled
//! with the offering, the pod uid and the attempt), and the node's join token is
//! stored. A call that was throttled or got no answer is repeated after a
//! back-off with jitter with the same idempotency token (pod uid and attempt)
//! and the same user data, so it can never make a second instance; a control
//! plane that restarts mid-call repeats it the same way. A capacity or limit
//! error avoids that offering for the configured time and moves to the next
//! with a `LaunchFailed` Event; a pod that runs out of offerings or attempts
//! ends Failed with the last reason. The pod's status says where it is
//! (`Selecting`, `Launching`, `Booting`), and its Events tell the sequence.
//!
//! Each pass also tends the dedicated nodes ([`Provisioner::tend_instances`]): an
//! instance whose agent has not joined within the boot timeout is terminated
//! and the pod launched again (a new attempt); the instance of a pod that ended,
//! was deleted or moved is terminated and its node removed; and a sweep over the
//! cluster's tagged instances adopts one whose launch answer was lost (its node
//! record has no instance id yet) and terminates one that no record knows once
//! it has been unknown in two consecutive sweeps.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::PodSpec;
use orca_proto::controlplane::v1::{self as pb, NodeState};
use orca_proto::types::v1::{self as types, PodPhase};
use tracing::{info, warn};

use crate::cloud::{
    CapacityType, LaunchFailure, LaunchRequest, Offering, PodLaunch, ProviderError,
};
use crate::config::ec2::Ec2Provider as Settings;
use crate::pods::{key, names, phase, uid};
use crate::shared::{ClusterError, Shared, age, now};
use orca_model::selection::{self};
use std::sync::Arc;

use orca_model::labels::{
    LABEL_AMI, LABEL_ATTEMPT, LABEL_CAPACITY_TYPE, LABEL_INSTANCE_TYPE, LABEL_POD_UID, LABEL_PRICE,
    LABEL_SUBNET, LABEL_ZONE,
};

/// What provisioning remembers in memory (a restart forgets it, safely: an
/// avoided offering is tried again, an unknown instance needs two more sweeps).
#[derive(Default)]
pub struct Memory {
    /// Offerings avoided until the instant, and why.
    avoided: Mutex<HashMap<Offering, (Instant, String)>>,
    /// Instances no record knew at the last sweep.
    unknown: Mutex<HashSet<String>>,
    /// When the last sweep ran.
    last_sweep: Mutex<Option<Instant>>,
    /// The last launch error per pod uid, for the final reason.
    last_error: Mutex<HashMap<String, String>>,
    /// When a warm-pool refill of an instance type last failed.
    pub(crate) pool_failed: Mutex<HashMap<String, Instant>>,
}

/// A poisoned lock's data is still used: every holder leaves it consistent.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How a launch attempt ended.
enum Outcome {
    /// Launched, or the pod needs nothing more now.
    Done,
    /// This offering cannot be had now: try the next.
    Next,
}

/// The node name of a pod's dedicated instance for one attempt.
pub fn dedicated_node_name(pod_uid: &str, attempt: u32) -> String {
    let short: String = pod_uid
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(10)
        .collect::<String>()
        .to_ascii_lowercase();
    format!("ec2-{short}-{attempt}")
}

fn capacity_label(c: CapacityType) -> &'static str {
    match c {
        CapacityType::OnDemand => "on-demand",
        CapacityType::Spot => "spot",
    }
}

/// The offering a dedicated node was launched with, from its labels.
fn offering_of(node: &pb::Node) -> Option<(Offering, u32)> {
    let capacity = match node.labels.get(LABEL_CAPACITY_TYPE)?.as_str() {
        "spot" => CapacityType::Spot,
        _ => CapacityType::OnDemand,
    };
    let offering = Offering {
        instance_type: node.labels.get(LABEL_INSTANCE_TYPE)?.clone(),
        subnet: node.labels.get(LABEL_SUBNET).cloned(),
        capacity,
    };
    Some((offering, node.labels.get(LABEL_ATTEMPT)?.parse().ok()?))
}

/// The record of a node about to be launched for `choice`: Launching, labelled
/// with the pod uid (or a warm pool's) and attempt, the offering and its price.
pub(crate) fn launching_node(
    node_name: &str,
    provider: &str,
    (pod_uid, attempt): (&str, u32),
    choice: &crate::cloud::PlannedOffering,
    message: String,
) -> pb::Node {
    let offering = &choice.offering;
    let mut labels = HashMap::from([
        (LABEL_POD_UID.to_owned(), pod_uid.to_owned()),
        (LABEL_ATTEMPT.to_owned(), attempt.to_string()),
        (
            LABEL_INSTANCE_TYPE.to_owned(),
            offering.instance_type.clone(),
        ),
        (
            LABEL_CAPACITY_TYPE.to_owned(),
            capacity_label(offering.capacity).to_owned(),
        ),
    ]);
    if let Some(subnet) = &offering.subnet {
        labels.insert(LABEL_SUBNET.to_owned(), subnet.clone());
    }
    if let Some(price) = choice.usd_per_hour {
        labels.insert(LABEL_PRICE.to_owned(), format!("{price}"));
    }
    pb::Node {
        name: node_name.to_owned(),
        state: NodeState::Launching as i32,
        provider: provider.to_owned(),
        created_at: Some(now()),
        labels,
        size: Some(choice.size),
        message,
        ..Default::default()
    }
}

/// A back-off for retry `n` (1-based): base × 2ⁿ⁻¹ up to `max`, with full
/// jitter over its upper half, so throttled callers spread out.
fn backoff(s: &Settings, n: u32) -> Duration {
    let exp = s
        .backoff_base
        .saturating_mul(1u32 << n.saturating_sub(1).min(16))
        .min(s.backoff_max);
    let half = exp / 2;
    let spread = half.as_millis().max(1);
    let jitter = uuid::Uuid::new_v4().as_u128() % spread;
    half + Duration::from_millis(jitter as u64)
}

/// Instances for pods: launches, the warm pool, reservation ends and the EBS volumes of claims.
#[derive(Clone)]
/// Its fields are the crate's because its methods span four sibling modules
/// (`provisioning`, `warm_pool`, `reservation_ends`, `claims::ebs`).
pub struct Provisioner {
    pub(crate) shared: Shared,
    pub(crate) pods: crate::pods::Pods,
    pub(crate) registry: crate::registry::Registry,
    pub(crate) claims: crate::claims::Claims,
    pub(crate) memory: Arc<Memory>,
    pub(crate) reservations: crate::reservation_ends::ReservationEnds,
}

impl Provisioner {
    /// The component over `shared` and the components below it.
    pub fn new(
        shared: Shared,
        pods: crate::pods::Pods,
        registry: crate::registry::Registry,
        claims: crate::claims::Claims,
    ) -> Self {
        Self {
            shared,
            pods,
            registry,
            claims,
            memory: Default::default(),
            reservations: Default::default(),
        }
    }

    /// What provisioning remembers in memory.
    pub(crate) fn provisioning(&self) -> &Memory {
        &self.memory
    }

    /// Ending reservations: their notices and refusals.
    pub fn reservation_ends(&self) -> &crate::reservation_ends::ReservationEnds {
        &self.reservations
    }
}

impl Provisioner {
    /// The EC2 settings, when that is the provider.
    fn ec2_settings(&self) -> Option<&Settings> {
        self.shared.config().ec2()
    }

    /// Notes where a Pending pod's launch stands (reason and message), if it is
    /// still this incarnation and Pending.
    pub(crate) fn launch_note(
        &self,
        ns: &str,
        name: &str,
        pod_uid: &str,
        reason: &str,
        message: String,
    ) {
        let result = self.shared.store().pods.update(&key(ns, name), |p| {
            if uid(p) == pod_uid && phase(p) == PodPhase::Pending {
                let status = p.status.get_or_insert_default();
                status.reason = reason.into();
                status.message = message.clone();
                status.observed_at = Some(now());
                status.conditions = vec![types::PodCondition {
                    r#type: "InstanceLaunched".into(),
                    status: if reason == "Booting" { "True" } else { "False" }.into(),
                    reason: reason.into(),
                    message: message.clone(),
                    last_transition_time: Some(now()),
                }];
            }
        });
        if let Err(e) = result {
            warn!(pod = %key(ns, name), error = %e, "launch progress not recorded");
        }
    }

    /// Clears a pod's binding to `node` (this incarnation only).
    fn unbind(&self, ns: &str, name: &str, pod_uid: &str, node: &str) -> Result<(), ClusterError> {
        self.shared.store().pods.update(&key(ns, name), |p| {
            if uid(p) == pod_uid && p.node_name == node {
                p.node_name.clear();
            }
        })?;
        Ok(())
    }

    pub(crate) fn fail_launch(&self, ns: &str, name: &str, reason: &str, message: String) {
        if let Err(e) = self.pods.fail_pod(ns, name, reason, message) {
            warn!(pod = %key(ns, name), error = %e, "launch failure not recorded");
        }
        self.shared.flush_in_background();
    }

    /// Avoids the offering a dedicated node was launched with for
    /// `offering_avoid_ms` (its spot capacity is being reclaimed), so that its
    /// pod's replacement picks another type, zone or capacity type.
    pub(crate) fn avoid_offering_of(&self, node: &pb::Node, why: &str) {
        if let (Some(s), Some((offering, _))) = (self.ec2_settings(), offering_of(node)) {
            info!(node = %node.name, %offering, "offering avoided after an interruption notice");
            lock(&self.provisioning().avoided).insert(
                offering,
                (Instant::now() + s.offering_avoid, why.to_owned()),
            );
        }
    }

    /// Launches, or goes on launching, the instance of a Pending pod. Runs as a
    /// task of its own, one per pod incarnation at a time.
    pub(crate) async fn provision(&self, ns: String, name: String, pod_uid: String) {
        if let Err(e) = self.provision_steps(&ns, &name, &pod_uid).await {
            warn!(pod = %key(&ns, &name), error = %e, "provisioning pass failed");
        }
        self.shared.again(&format!("provision:{pod_uid}"));
    }

    async fn provision_steps(
        &self,
        ns: &str,
        name: &str,
        pod_uid: &str,
    ) -> Result<(), ClusterError> {
        let Some(settings) = self.ec2_settings() else {
            return Ok(());
        };
        loop {
            let pod = match self.pods.pod(ns, name) {
                Ok(p) => p,
                Err(ClusterError::NotFound { .. }) => return Ok(()),
                Err(e) => return Err(e),
            };
            if uid(&pod) != pod_uid || phase(&pod) != PodPhase::Pending {
                return Ok(());
            }
            let Some(meta) = pod.pod.clone() else {
                return Ok(());
            };
            let mut annotations = match selection::annotations::parse(&meta.annotations) {
                Ok(a) => a,
                Err(e) => {
                    self.fail_launch(ns, name, "InvalidAnnotation", e.to_string());
                    return Ok(());
                }
            };
            if let Some(why) = annotations
                .capacity_reservation_id
                .as_deref()
                .and_then(|id| self.reservations.reservation_ending(id))
            {
                self.fail_launch(ns, name, crate::reservation_ends::REASON, why);
                return Ok(());
            }
            match self.claims.launch_context(&pod).await {
                Ok(context) => {
                    annotations.service_account_role_arn = context.service_account_role_arn;
                }
                Err(why) => {
                    self.launch_note(ns, name, pod_uid, "WaitingForClaim", why);
                    return Ok(());
                }
            }
            let (node, offering, attempt) = if pod.node_name.is_empty() {
                match self.new_launch(settings, &pod, &meta, &annotations).await? {
                    Some(launch) => launch,
                    None => return Ok(()),
                }
            } else {
                // A launch this process did not finish (a restart, or a call that
                // got no answer): resume it with the same attempt.
                match self.shared.store().nodes.get(&pod.node_name)? {
                    None => {
                        self.unbind(ns, name, pod_uid, &pod.node_name)?;
                        continue;
                    }
                    Some(node)
                        if node.state == NodeState::Launching as i32
                            && node.instance_id.is_empty() =>
                    {
                        let Some((offering, attempt)) = offering_of(&node) else {
                            return Ok(());
                        };
                        (node, offering, attempt)
                    }
                    Some(_) => return Ok(()),
                }
            };
            let launch = PodLaunch {
                namespace: ns.into(),
                name: name.into(),
                uid: pod_uid.into(),
                attempt,
                offering,
                annotations,
            };
            match self.launch_attempt(settings, &node, launch).await? {
                Outcome::Done => return Ok(()),
                Outcome::Next => continue,
            }
        }
    }

    /// Plans a pod's next launch and makes its intent durable (attempt counted,
    /// pod bound, node recorded); `None` when there is nothing to launch now
    /// (the pod failed, or waits on a cap, or changed meanwhile).
    async fn new_launch(
        &self,
        settings: &Settings,
        pod: &pb::PodRecord,
        meta: &types::Pod,
        annotations: &selection::LaunchAnnotations,
    ) -> Result<Option<(pb::Node, Offering, u32)>, ClusterError> {
        let (ns, name) = names(pod);
        let (ns, name, pod_uid) = (ns.as_str(), name.as_str(), uid(pod));
        let pod_uid = pod_uid.as_str();
        let last = lock(&self.provisioning().last_error)
            .get(pod_uid)
            .cloned()
            .unwrap_or_else(|| "none".into());
        if pod.launch_attempts >= settings.max_launch_attempts {
            let msg = format!(
                "no instance after {} launch attempts (provider.ec2.max_launch_attempts); last error: {last}",
                pod.launch_attempts
            );
            self.fail_launch(ns, name, "LaunchFailed", msg);
            return Ok(None);
        }
        let Some(spec) = serde_json::from_str::<PodSpec>(&meta.spec_json).ok() else {
            return Ok(None);
        };
        let plan = match self
            .shared
            .provider()
            .plan(&crate::resources::needs_of(&spec), annotations)
            .await
        {
            Ok(plan) => plan,
            Err(ProviderError::Unplaceable { code, reason }) => {
                self.fail_launch(ns, name, code, reason);
                return Ok(None);
            }
            Err(e) => {
                // The cloud did not answer: the next pass asks again, and
                // the pending timeout bounds how long.
                self.launch_note(ns, name, pod_uid, "Selecting", e.to_string());
                return Ok(None);
            }
        };
        let Some(plan) = self
            .plan_for_claims((ns, name, pod_uid), &spec, annotations, plan)
            .await?
        else {
            return Ok(None);
        };
        if self.shared.first_time(&format!("selected:{pod_uid}")) {
            let list: Vec<String> = plan
                .offerings
                .iter()
                .map(|o| o.offering.to_string())
                .collect();
            self.shared.event(
                "Pod",
                ns,
                name,
                false,
                "InstanceSelected",
                format!("{}; offerings in order: {}", plan.reason, list.join(", ")),
            );
        }
        let avoided: HashMap<Offering, String> = {
            let mut a = lock(&self.provisioning().avoided);
            a.retain(|_, (until, _)| *until > Instant::now());
            a.iter()
                .map(|(o, (_, why))| (o.clone(), why.clone()))
                .collect()
        };
        let Some(choice) = plan
            .offerings
            .iter()
            .find(|o| !avoided.contains_key(&o.offering))
        else {
            let msg = format!(
                "every offering the pod may get met a capacity error within {:?} (provider.ec2.offering_avoid_ms); last error: {last}",
                settings.offering_avoid
            );
            self.fail_launch(ns, name, "InsufficientCapacity", msg);
            return Ok(None);
        };
        if let Some(why) = self.over_cap(settings, &choice.size)? {
            if self.shared.first_time(&format!("capped:{pod_uid}")) {
                self.shared
                    .event("Pod", ns, name, true, "LaunchBlocked", why.clone());
            }
            self.launch_note(ns, name, pod_uid, "LaunchBlocked", why);
            return Ok(None);
        }
        let attempt = pod.launch_attempts + 1;
        if let Some(warm) = self.warm_for(&choice.offering)?
            && self.start_warm((ns, name, pod_uid), &warm, attempt).await?
        {
            return Ok(None);
        }
        // The intent is durable before the call: the attempt is counted, the
        // pod bound, then the node recorded (a node record always has its pod).
        let node_name = dedicated_node_name(pod_uid, attempt);
        let offering = choice.offering.clone();
        let message = format!("launching {offering} (attempt {attempt})");
        let bound = self.shared.store().pods.update(&key(ns, name), |p| {
            if uid(p) == pod_uid && p.node_name.is_empty() && phase(p) == PodPhase::Pending {
                p.node_name = node_name.clone();
                p.launch_attempts = attempt;
            }
        })?;
        if bound.is_none_or(|p| p.node_name != node_name) {
            return Ok(None);
        }
        let node = launching_node(
            &node_name,
            self.shared.provider().name(),
            (pod_uid, attempt),
            choice,
            message.clone(),
        );
        self.shared.store().nodes.put(&node_name, &node)?;
        self.launch_note(ns, name, pod_uid, "Launching", message.clone());
        self.shared.store().flush().await?;
        self.shared
            .event("Pod", ns, name, false, "Launching", message);
        Ok(Some((node, offering, attempt)))
    }

    /// Why launching an instance of `size` would pass a cluster cap, if it would.
    fn over_cap(
        &self,
        s: &Settings,
        size: &types::Resources,
    ) -> Result<Option<String>, ClusterError> {
        if s.max_instances == 0 && s.max_gpus == 0 {
            return Ok(None);
        }
        let ours: Vec<pb::Node> = self
            .shared
            .store()
            .nodes
            .scan("")?
            .into_iter()
            .filter(|n| n.labels.contains_key(LABEL_POD_UID) && n.state != NodeState::Failed as i32)
            .collect();
        if s.max_instances > 0 && ours.len() as u32 >= s.max_instances {
            return Ok(Some(format!(
                "the cluster runs its maximum of {} instances (provider.ec2.max_instances)",
                s.max_instances
            )));
        }
        let gpus: i64 = ours
            .iter()
            .map(|n| i64::from(n.size.unwrap_or_default().gpus))
            .sum();
        if s.max_gpus > 0 && gpus + i64::from(size.gpus) > i64::from(s.max_gpus) {
            return Ok(Some(format!(
                "{} more GPUs would pass the cluster's maximum of {} (provider.ec2.max_gpus; {gpus} in use)",
                size.gpus, s.max_gpus
            )));
        }
        Ok(None)
    }

    /// The join token of a node that has not joined: the stored one when there
    /// is one (a repeated RunInstances must carry the same user data), else new.
    pub(crate) fn launch_token(&self, node: &str) -> Result<String, ClusterError> {
        let today = jiff::Timestamp::now().as_second();
        let stored = self
            .shared
            .store()
            .tokens
            .entries("")?
            .into_iter()
            .find(|(key, t)| {
                !key.starts_with(crate::registry::USED_PREFIX)
                    && t.node_name == node
                    && t.expires_at > today
            });
        Ok(match stored {
            Some((token, _)) => token,
            None => self.registry.new_token(node)?.0,
        })
    }

    /// One launch of `launch.offering` as node `node`: RunInstances, repeated
    /// with the same token after throttling or no answer.
    async fn launch_attempt(
        &self,
        s: &Settings,
        node: &pb::Node,
        launch: PodLaunch,
    ) -> Result<Outcome, ClusterError> {
        let (ns, name, pod_uid) = (
            launch.namespace.clone(),
            launch.name.clone(),
            launch.uid.clone(),
        );
        let offering = launch.offering.clone();
        let token = self.launch_token(&node.name)?;
        self.shared.store().flush().await?;
        let req = LaunchRequest {
            node_name: node.name.clone(),
            join_token: token,
            control_plane_url: self.shared.agent_url(),
            ca_pem: self.shared.pki().ca_pem().to_owned(),
            size: node.size.unwrap_or_default(),
            pod: Some(launch),
        };
        let mut retries = 0;
        loop {
            let launched = self.shared.provider().launch(req.clone()).await;
            self.shared
                .launch_counters()
                .count(self.shared.provider().name(), &launched);
            let err = match launched {
                Ok(instance) => {
                    let id = instance.instance_id.clone();
                    let msg = format!(
                        "instance {id} ({offering}) launched; waiting for its agent to join"
                    );
                    let kept = self.shared.store().nodes.update(&node.name, |n| {
                        if n.instance_id.is_empty() {
                            n.instance_id = id.clone();
                            n.message = msg.clone();
                        }
                        for (label, value) in [
                            (LABEL_ZONE, &instance.zone),
                            (LABEL_AMI, &instance.image_id),
                            (
                                crate::reservation_ends::LABEL_RESERVATION,
                                &instance.capacity_reservation_id,
                            ),
                        ] {
                            if let Some(v) = value {
                                n.labels.insert(label.to_owned(), v.clone());
                            }
                        }
                    })?;
                    if kept.is_none() {
                        // The node was removed meanwhile (its pod deleted): the
                        // instance goes too.
                        if let Err(e) = self.shared.provider().terminate(&id).await {
                            warn!(instance = %id, error = %e, "instance of a removed node not terminated; the sweep will");
                        }
                        return Ok(Outcome::Done);
                    }
                    self.launch_note(&ns, &name, &pod_uid, "Booting", msg.clone());
                    self.shared.store().flush().await?;
                    info!(pod = %key(&ns, &name), node = %node.name, instance = %id, "instance launched");
                    self.shared.event("Pod", &ns, &name, false, "Launched", msg);
                    self.attach_claims(&ns, &name, &id).await;
                    return Ok(Outcome::Done);
                }
                Err(e) => e,
            };
            let (reason, failure) = match &err {
                ProviderError::Launch {
                    reason, failure, ..
                } => (reason.clone(), *failure),
                other => (other.to_string(), LaunchFailure::Fatal),
            };
            lock(&self.provisioning().last_error)
                .insert(pod_uid.clone(), format!("{offering}: {reason}"));
            match failure {
                LaunchFailure::Throttled | LaunchFailure::Transient
                    if retries < s.max_call_retries =>
                {
                    retries += 1;
                    let wait = backoff(s, retries);
                    warn!(pod = %key(&ns, &name), %reason, retry = retries, wait_ms = wait.as_millis() as u64, "RunInstances repeated after a back-off");
                    tokio::time::sleep(wait).await;
                }
                LaunchFailure::Throttled | LaunchFailure::Transient => {
                    // The node stays: the next pass repeats the same call, and the
                    // boot timeout bounds how long.
                    let msg = format!("{offering}: {reason}; repeating the same request");
                    self.launch_note(&ns, &name, &pod_uid, "Launching", msg.clone());
                    self.shared
                        .event("Pod", &ns, &name, true, "LaunchRetrying", msg);
                    return Ok(Outcome::Done);
                }
                LaunchFailure::Capacity | LaunchFailure::Limit => {
                    lock(&self.provisioning().avoided).insert(
                        offering.clone(),
                        (Instant::now() + s.offering_avoid, reason.clone()),
                    );
                    self.shared.store().nodes.remove(&node.name)?;
                    self.unbind(&ns, &name, &pod_uid, &node.name)?;
                    self.shared.store().flush().await?;
                    let msg = format!(
                        "{offering}: {reason}; avoided for {:?}, trying the next offering",
                        s.offering_avoid
                    );
                    self.shared
                        .event("Pod", &ns, &name, true, "LaunchFailed", msg);
                    return Ok(Outcome::Next);
                }
                LaunchFailure::Fatal => {
                    self.shared.store().nodes.remove(&node.name)?;
                    self.fail_launch(&ns, &name, "LaunchFailed", format!("{offering}: {reason}"));
                    return Ok(Outcome::Done);
                }
            }
        }
    }

    /// Boot timeouts, instances of pods that are gone, and the sweep (when due).
    pub async fn tend_instances(&self) -> Result<(), ClusterError> {
        let Some(s) = self.ec2_settings() else {
            return Ok(());
        };
        // Nodes before pods: a pod is bound before its node record is made, so a
        // node seen here has its binding in the pods read after.
        let nodes = self.shared.store().nodes.scan("")?;
        let pods = self.shared.store().pods.scan("")?;
        self.tend_pool(s, &nodes).await;
        self.reservations
            .check_reservation_ends(
                self.shared.provider(),
                &nodes,
                s.reservation_check,
                s.reservation_drain_lead,
            )
            .await;
        for node in nodes {
            if crate::registry::is_pool_node(&node) {
                continue;
            }
            let Some(pod_uid) = node.labels.get(LABEL_POD_UID) else {
                continue;
            };
            let pod = pods.iter().find(|p| uid(p) == *pod_uid);
            let live = pod.is_some_and(|p| {
                p.node_name == node.name
                    && !matches!(phase(p), PodPhase::Succeeded | PodPhase::Failed)
            }) || crate::pods::finishing(&pods, &node.name, pod_uid);
            if !live {
                if self.shared.first_time(&format!("reap:{}", node.name)) {
                    let this = self.clone();
                    tokio::spawn(async move { this.reap(node).await });
                }
                continue;
            }
            // A pool instance started for the pod is Stopped until its first heartbeat.
            if matches!(
                NodeState::try_from(node.state),
                Ok(NodeState::Launching | NodeState::Stopped)
            ) && age(node.created_at.as_ref()) > s.boot_timeout
                && let Some(pod) = pod
                && self
                    .shared
                    .first_time(&format!("boot-timeout:{}", node.name))
            {
                let this = self.clone();
                let pod = pod.clone();
                tokio::spawn(async move { this.replace_unbooted(node, pod).await });
            }
        }
        let due = {
            let mut last = lock(&self.provisioning().last_sweep);
            let due = last.is_none_or(|t| t.elapsed() >= s.sweep_interval);
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        if due {
            self.sweep().await?;
            self.claims.reclaim_mirrored().await;
        }
        Ok(())
    }

    /// Terminates the instance of a node whose pod is gone and removes the node.
    async fn reap(&self, node: pb::Node) {
        let pod_uid = node.labels.get(LABEL_POD_UID).cloned().unwrap_or_default();
        let bound = self.shared.store().pods.scan("").map(|pods| {
            pods.iter().any(|p| {
                uid(p) == pod_uid
                    && p.node_name == node.name
                    && !matches!(phase(p), PodPhase::Succeeded | PodPhase::Failed)
            }) || crate::pods::finishing(&pods, &node.name, &pod_uid)
        });
        if !matches!(bound, Ok(false)) {
            // Bound meanwhile (or unreadable): not this pass.
            self.shared.again(&format!("reap:{}", node.name));
            return;
        }
        match self.registry.remove_node(&node.name).await {
            Ok(_) => {
                info!(node = %node.name, instance = %node.instance_id, "instance of a finished pod terminated")
            }
            Err(ClusterError::NotFound { .. }) => {}
            Err(e) => {
                warn!(node = %node.name, error = %e, "instance not terminated; retrying");
                self.shared.again(&format!("reap:{}", node.name));
            }
        }
    }

    /// An instance whose agent did not join in time: terminate it, then launch
    /// the pod again (its next attempt).
    async fn replace_unbooted(&self, node: pb::Node, pod: pb::PodRecord) {
        let (ns, name) = names(&pod);
        let pod_uid = uid(&pod);
        let timeout = self
            .ec2_settings()
            .map(|s| s.boot_timeout)
            .unwrap_or_default();
        if !node.instance_id.is_empty()
            && let Err(e) = self.shared.provider().terminate(&node.instance_id).await
        {
            warn!(node = %node.name, error = %e, "unbooted instance not terminated; retrying");
            self.shared.again(&format!("boot-timeout:{}", node.name));
            return;
        }
        let msg = format!(
            "instance {} of node {} did not join within {timeout:?} (provider.ec2.boot_timeout_ms); terminated, launching again",
            if node.instance_id.is_empty() {
                "(never confirmed)"
            } else {
                &node.instance_id
            },
            node.name
        );
        let result = async {
            self.shared.store().nodes.remove(&node.name)?;
            self.unbind(&ns, &name, &pod_uid, &node.name)?;
            self.shared.store().flush().await?;
            Ok::<_, ClusterError>(())
        }
        .await;
        if let Err(e) = result {
            warn!(node = %node.name, error = %e, "boot timeout not recorded");
            return;
        }
        lock(&self.provisioning().last_error).insert(pod_uid, msg.clone());
        warn!(pod = %key(&ns, &name), node = %node.name, "boot timeout");
        self.shared
            .event("Pod", &ns, &name, true, "BootTimeout", msg);
        self.shared.wake_scheduler();
    }

    /// Lists the cluster's instances: adopts those whose node record lacks its
    /// instance id, terminates those unknown in two consecutive sweeps.
    async fn sweep(&self) -> Result<(), ClusterError> {
        let instances = match self.shared.provider().instances().await {
            Ok(i) => i,
            Err(e) => {
                warn!(error = %e, "sweep over the cluster's instances failed");
                return Ok(());
            }
        };
        let nodes: HashMap<String, pb::Node> = self
            .shared
            .store()
            .nodes
            .scan("")?
            .into_iter()
            .map(|n| (n.name.clone(), n))
            .collect();
        let mut unknown = HashSet::new();
        for inst in &instances {
            match nodes.get(&inst.node) {
                Some(n) if n.instance_id == inst.instance_id => {}
                Some(n)
                    if n.instance_id.is_empty()
                        && n.labels.get(LABEL_POD_UID) == Some(&inst.pod_uid)
                        && offering_of(n).is_some_and(|(_, a)| a == inst.attempt) =>
                {
                    let adopted = self.shared.store().nodes.update(&n.name, |n| {
                        if n.instance_id.is_empty() {
                            n.instance_id = inst.instance_id.clone();
                            n.message =
                                format!("instance {} adopted by the sweep", inst.instance_id);
                        }
                    })?;
                    if adopted.is_some_and(|n| n.instance_id == inst.instance_id) {
                        self.shared.store().flush().await?;
                        info!(node = %n.name, instance = %inst.instance_id, "instance adopted");
                        self.shared.node_event(
                            &n.name,
                            false,
                            "Adopted",
                            format!("instance {} (its launch answer was lost)", inst.instance_id),
                        );
                    }
                }
                _ => {
                    unknown.insert(inst.instance_id.clone());
                }
            }
        }
        let before = std::mem::replace(&mut *lock(&self.provisioning().unknown), unknown.clone());
        for inst in instances
            .iter()
            .filter(|i| unknown.contains(&i.instance_id) && before.contains(&i.instance_id))
        {
            warn!(instance = %inst.instance_id, node = %inst.node, "terminating an instance no record knows (unknown in two sweeps)");
            match self.shared.provider().terminate(&inst.instance_id).await {
                Ok(()) => self.shared.node_event(
                    &inst.node,
                    true,
                    "UnknownInstanceTerminated",
                    format!(
                        "instance {} (pod uid {}, attempt {}) was unknown in two consecutive sweeps",
                        inst.instance_id, inst.pod_uid, inst.attempt
                    ),
                ),
                Err(e) => warn!(instance = %inst.instance_id, error = %e, "unknown instance not terminated"),
            }
        }
        Ok(())
    }

    /// Whether a Pending pod of a dedicated provider needs a provisioning task:
    /// unbound, or bound to a node whose launch has no instance yet.
    pub(crate) fn needs_provisioning(&self, pod: &pb::PodRecord, nodes: &[pb::Node]) -> bool {
        if pod.node_name.is_empty() {
            return true;
        }
        match nodes.iter().find(|n| n.name == pod.node_name) {
            None => true,
            Some(n) => n.state == NodeState::Launching as i32 && n.instance_id.is_empty(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orca_model::selection::Arch;

    #[test]
    fn needs_take_gpus_model_and_arch_from_the_spec() {
        let spec: PodSpec = serde_json::from_value(serde_json::json!({
            "nodeSelector": {"orca.research/gpu-model": "A10G", "kubernetes.io/arch": "arm64"},
            "containers": [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": "4"}}}],
        }))
        .unwrap();
        let needs = crate::resources::needs_of(&spec);
        assert_eq!(needs.gpus, 4);
        assert_eq!(needs.gpu_model.as_deref(), Some("A10G"));
        assert_eq!(needs.architectures, [Arch::parse("arm64").unwrap()]);
    }

    #[test]
    fn node_names_are_dns_labels_per_attempt() {
        let a = dedicated_node_name("0F8E4C1E-6b1a-4b8e-9a53-2f2a1d1c9e77", 1);
        assert_eq!(a, "ec2-0f8e4c1e6b-1");
        assert_ne!(
            a,
            dedicated_node_name("0F8E4C1E-6b1a-4b8e-9a53-2f2a1d1c9e77", 2)
        );
    }

    #[test]
    fn back_off_grows_with_jitter_up_to_the_cap() {
        let s = crate::config::ec2::Ec2File {
            ..serde_yaml::from_str("ami: ami-1\nbackoff_base_ms: 100\nbackoff_max_ms: 1000\n")
                .unwrap()
        }
        .validate()
        .unwrap();
        for n in 1..20 {
            let d = backoff(&s, n);
            let cap = (100u64 << (n - 1).min(16)).min(1000);
            assert!(
                d.as_millis() as u64 >= cap / 2 && d.as_millis() as u64 <= cap,
                "{n}: {d:?}"
            );
        }
    }
}
