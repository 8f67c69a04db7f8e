//! Pods as the control plane keeps them: creation with validation, statuses
//! merged from agents' observations (never invented), deletion through the
//! node's agent, and the events of each transition.

use k8s_openapi::api::core::v1::PodSpec;
use orca_proto::agent::v1 as agent;
use orca_proto::controlplane::v1 as pb;
use orca_proto::types::v1::{self as types, PodPhase};
use tracing::info;

use crate::shared::{ClusterError, Shared, now};
use orca_model::selection::annotations::RESUME_FROM;
use std::time::Duration;

/// What became of an agent's report about a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// No such incarnation is bound to that node: the agent must stop it.
    Orphan,
    /// Nothing new.
    Unchanged,
    /// The kept status changed (it must be flushed).
    Changed,
}

pub use orca_model::pod::{DEFAULT_NAMESPACE, key, names, phase, uid, valid_name};

fn pending(reason: &str, message: String) -> types::PodStatus {
    types::PodStatus {
        phase: PodPhase::Pending as i32,
        reason: reason.into(),
        message,
        observed_at: Some(now()),
        ..Default::default()
    }
}

/// The exit summary of a status, for event messages.
fn exits(status: &types::PodStatus) -> String {
    status
        .container_statuses
        .iter()
        .filter_map(|c| match c.state.as_ref()?.state.as_ref()? {
            types::container_state::State::Terminated(t) => {
                Some(format!("{}: exit {} ({})", c.name, t.exit_code, t.reason))
            }
            _ => None,
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// How long after its deadline an interrupted incarnation still reported
/// running is told to stop as an orphan.
const OVERDUE: Duration = Duration::from_secs(30);

/// Pods: creation, the agents' reports, verdicts, stops and deletion.
#[derive(Clone)]
pub struct Pods {
    shared: Shared,
    budgets: crate::budgets::Budgets,
}

impl Pods {
    /// The component over `shared` and the components below it.
    pub fn new(shared: Shared, budgets: crate::budgets::Budgets) -> Self {
        Self { shared, budgets }
    }
}

impl Pods {
    /// A report about an incarnation moved by an interruption: its checkpoint
    /// is recorded (and handed to the replacement as `orca.research/resume-from`)
    /// and it is released once it has ended. `None` when the report is not about
    /// one.
    pub(crate) fn interrupted_report(
        &self,
        node: &str,
        record: &pb::PodRecord,
        (r, status, reported_checkpoint): (&types::PodRef, &types::PodStatus, &str),
    ) -> Result<Option<Applied>, ClusterError> {
        let k = key(&r.namespace, &r.name);
        let Some(kept) = record
            .interruptions
            .iter()
            .find(|i| i.uid == r.uid && i.node_name == node)
        else {
            return Ok(None);
        };
        // restartPolicy Never: the record is still this incarnation, and its
        // reports go on to the normal path after the interruption is noted.
        let moved = uid(record) != r.uid;
        let verdict = |released: bool, changed: bool| {
            Ok(moved.then_some(match (released, changed) {
                (true, _) => Applied::Orphan,
                (false, true) => Applied::Changed,
                (false, false) => Applied::Unchanged,
            }))
        };
        // Released, or well past its deadline (the instance is gone by then on
        // EC2): whatever still runs of it is stopped.
        let overdue = kept
            .notice
            .as_ref()
            .and_then(|n| n.deadline)
            .is_some_and(|d| d.seconds + (OVERDUE.as_secs() as i64) < now().seconds);
        if kept.released || overdue {
            return verdict(true, false);
        }
        let checkpoint = (!reported_checkpoint.is_empty()
            && reported_checkpoint != kept.checkpoint)
            .then(|| reported_checkpoint.to_owned());
        let release = ended(status);
        if checkpoint.is_none() && !release {
            return verdict(false, false);
        }
        self.shared.store().pods.update(&k, |p| {
            let current = uid(p);
            let Some(i) = p.interruptions.iter_mut().find(|i| i.uid == r.uid) else {
                return;
            };
            if let Some(location) = &checkpoint {
                i.checkpoint = location.clone();
            }
            i.released |= release;
            let is_last = p.interruptions.last().is_some_and(|l| l.uid == r.uid);
            if let (Some(location), Some(meta), true) = (&checkpoint, p.pod.as_mut(), is_last)
                && current != r.uid
            {
                meta.annotations
                    .insert(RESUME_FROM.to_owned(), location.clone());
            }
        })?;
        if let Some(location) = &checkpoint {
            info!(pod = %k, uid = %r.uid, location, "checkpoint of an interrupted pod");
            self.shared.event(
                "Pod",
                &r.namespace,
                &r.name,
                false,
                "CheckpointConfirmed",
                format!("incarnation {} on {node} checkpointed to {location}", r.uid),
            );
        }
        if release {
            self.shared.event(
                "Pod",
                &r.namespace,
                &r.name,
                false,
                "InterruptedStopped",
                format!(
                    "incarnation {} on {node} stopped ({}{})",
                    r.uid,
                    status.reason,
                    if status.message.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", status.message)
                    }
                ),
            );
        }
        self.shared.wake_scheduler();
        verdict(release, true)
    }

    /// Creates a pod. A spec that is not a Kubernetes PodSpec is refused; one that
    /// decodes but cannot run is stored as Failed with reason InvalidPodSpec, and
    /// one with an unknown or malformed `orca.research/` annotation as Failed with
    /// reason InvalidAnnotation naming it.
    pub async fn create_pod(&self, mut pod: types::Pod) -> Result<pb::PodRecord, ClusterError> {
        let r = pod.r#ref.get_or_insert_default();
        if r.namespace.is_empty() {
            r.namespace = DEFAULT_NAMESPACE.into();
        }
        if r.uid.is_empty() {
            r.uid = uuid::Uuid::new_v4().to_string();
        } else if uuid::Uuid::try_parse(&r.uid)
            .map_or(true, |u| u.hyphenated().to_string() != r.uid)
        {
            return Err(ClusterError::Invalid(format!(
                "pod {}/{}: uid {:?} is not a UUID",
                r.namespace, r.name, r.uid
            )));
        }
        let (ns, name) = (r.namespace.clone(), r.name.clone());
        if !valid_name(&name) || !valid_name(&ns) {
            return Err(ClusterError::Invalid(format!(
                "pod {ns}/{name}: names must be lowercase DNS subdomains (a-z, 0-9, '-', '.')"
            )));
        }
        if pod.spec_json.len() > crate::pod_validation::MAX_SPEC_BYTES {
            return Err(ClusterError::Invalid(format!(
                "pod {ns}/{name}: spec is {} bytes; the limit is {} bytes",
                pod.spec_json.len(),
                crate::pod_validation::MAX_SPEC_BYTES
            )));
        }
        let spec: PodSpec = serde_json::from_str(&pod.spec_json).map_err(|e| {
            ClusterError::Invalid(format!("spec_json is not a Kubernetes PodSpec: {e}"))
        })?;
        if let Some(why) = crate::pod_validation::size_refusal(&pod.spec_json, &spec) {
            return Err(ClusterError::Invalid(format!("pod {ns}/{name}: {why}")));
        }
        let problem = if spec.containers.is_empty() {
            Some(("InvalidPodSpec", "pod spec has no containers".to_owned()))
        } else if let Some(c) = spec
            .containers
            .iter()
            .find(|c| c.image.as_deref().unwrap_or_default().trim().is_empty())
        {
            Some((
                "InvalidPodSpec",
                format!("container {:?} has no image", c.name),
            ))
        } else if let Some(why) = crate::pod_validation::quantity_refusal(&spec) {
            Some(("InvalidPodSpec", why))
        } else {
            match orca_model::selection::annotations::parse(&pod.annotations) {
                Err(e) => Some(("InvalidAnnotation", e.to_string())),
                Ok(_) => self.budgets.budget_refusal(&pod, &spec).await?,
            }
        };
        let status = match &problem {
            Some((reason, message)) => types::PodStatus {
                phase: PodPhase::Failed as i32,
                reason: (*reason).into(),
                message: message.clone(),
                observed_at: Some(now()),
                ..Default::default()
            },
            None => pending("", String::new()),
        };
        let record = pb::PodRecord {
            pod: Some(pod),
            node_name: String::new(),
            status: Some(status),
            created_at: Some(now()),
            ..Default::default()
        };
        if !self.shared.store().pods.create(&key(&ns, &name), &record)? {
            return Err(ClusterError::AlreadyExists {
                kind: "pod",
                name: key(&ns, &name),
            });
        }
        self.shared.store().flush().await?;
        match problem {
            Some((reason, message)) => self.shared.event("Pod", &ns, &name, true, reason, message),
            None => {
                self.shared.event(
                    "Pod",
                    &ns,
                    &name,
                    false,
                    "Created",
                    "waiting for a node".into(),
                );
                self.shared.wake_scheduler();
            }
        }
        info!(pod = %key(&ns, &name), "pod created");
        Ok(record)
    }

    /// One pod.
    pub fn pod(&self, namespace: &str, name: &str) -> Result<pb::PodRecord, ClusterError> {
        let ns = if namespace.is_empty() {
            DEFAULT_NAMESPACE
        } else {
            namespace
        };
        self.shared
            .store()
            .pods
            .get(&key(ns, name))?
            .ok_or_else(|| ClusterError::NotFound {
                kind: "pod",
                name: key(ns, name),
            })
    }

    /// Pods of a namespace, or all.
    pub fn pods(&self, namespace: &str) -> Result<Vec<pb::PodRecord>, ClusterError> {
        let prefix = if namespace.is_empty() {
            String::new()
        } else {
            format!("{namespace}/")
        };
        Ok(self.shared.store().pods.scan(&prefix)?)
    }

    /// What the ledger records of node `name`.
    fn node_facts(&self, name: &str) -> Result<orca_model::ledger::NodeFacts, ClusterError> {
        let node = self
            .shared
            .store()
            .nodes
            .get(name)?
            .unwrap_or_else(|| pb::Node {
                name: name.to_owned(),
                ..Default::default()
            });
        let gpu_driver_version = self
            .shared
            .telemetry()
            .snapshot(name, 0)
            .into_iter()
            .next()
            .map(|t| t.driver_version)
            .unwrap_or_default();
        Ok(orca_model::ledger::NodeFacts {
            node,
            gpu_driver_version,
        })
    }

    /// Applies a status that an agent observed, if it is newer than the one kept
    /// and differs from it (a heartbeat that repeats what is known writes nothing).
    pub fn apply_report(
        &self,
        node: &str,
        report: types::PodReport,
    ) -> Result<Applied, ClusterError> {
        let checkpoint = report.checkpoint;
        let (Some(r), Some(status)) = (report.r#ref, report.status) else {
            return Ok(Applied::Unchanged);
        };
        let k = key(&r.namespace, &r.name);
        let Some(old) = self.shared.store().pods.get(&k)? else {
            return Ok(Applied::Orphan);
        };
        if !old.interruptions.is_empty()
            && let Some(applied) =
                self.interrupted_report(node, &old, (&r, &status, &checkpoint))?
        {
            return Ok(applied);
        }
        if uid(&old) != r.uid || old.node_name != node {
            return Ok(Applied::Orphan);
        }
        // The control plane gave up on this incarnation (its node was lost or
        // removed, or it was evicted): whatever still runs of it must stop.
        if phase(&old) == PodPhase::Failed
            && old
                .status
                .as_ref()
                .is_some_and(|s| VERDICTS.contains(&s.reason.as_str()))
        {
            return Ok(Applied::Orphan);
        }
        let unchanged = old.status.as_ref().is_some_and(|kept| {
            let mut kept = kept.clone();
            kept.observed_at = status.observed_at;
            kept == status
        });
        if unchanged {
            return Ok(Applied::Unchanged);
        }
        // Agent observations are ordered by the agent's clock. A status the control
        // plane made itself (Pending, no container statuses yet) never blocks one:
        // clocks of different machines are not compared.
        let newer = |old: &pb::PodRecord| {
            let t = |s: Option<&types::PodStatus>| {
                s.and_then(|s| s.observed_at).map(|t| (t.seconds, t.nanos))
            };
            let from_agent = old
                .status
                .as_ref()
                .is_some_and(|s| !s.container_statuses.is_empty());
            !from_agent || t(Some(&status)) >= t(old.status.as_ref())
        };
        if !newer(&old) {
            return Ok(Applied::Unchanged);
        }
        let facts = orca_model::ledger::affected(&old, &r.uid, &status)
            .then(|| self.node_facts(node))
            .transpose()?;
        self.shared.store().pods.update(&k, |p| {
            if newer(p) && uid(p) == r.uid {
                p.status = Some(status.clone());
                if let Some(facts) = &facts {
                    orca_model::ledger::observe(p, &r.uid, facts, &status);
                }
            }
        })?;
        if status.reason == orca_proto::NODE_CUT_OFF {
            // Recovery moves such pods on its next pass (told after the write,
            // so that pass reads it).
            self.shared.again(CUT_OFF_SCAN);
        }
        let before = phase(&old);
        let after = PodPhase::try_from(status.phase).unwrap_or(PodPhase::Unspecified);
        if before != after {
            info!(pod = %k, node, from = ?before, to = ?after, "pod phase changed");
            match after {
                PodPhase::Running => self.shared.event(
                    "Pod",
                    &r.namespace,
                    &r.name,
                    false,
                    "Started",
                    format!("running on {node}"),
                ),
                PodPhase::Succeeded => self.shared.event(
                    "Pod",
                    &r.namespace,
                    &r.name,
                    false,
                    "Completed",
                    exits(&status),
                ),
                PodPhase::Failed => {
                    let msg = if status.reason.is_empty() {
                        exits(&status)
                    } else {
                        status.message.clone()
                    };
                    let reason = if status.reason.is_empty() {
                        "Failed"
                    } else {
                        status.reason.as_str()
                    };
                    self.shared
                        .event("Pod", &r.namespace, &r.name, true, reason, msg)
                }
                _ => {}
            }
        }
        Ok(Applied::Changed)
    }

    /// Marks a pod Failed with a reason of the control plane's own (it never reached
    /// an agent, or its node is gone).
    pub fn fail_pod(
        &self,
        namespace: &str,
        name: &str,
        reason: &str,
        message: String,
    ) -> Result<(), ClusterError> {
        self.shared
            .store()
            .pods
            .update(&key(namespace, name), |p| {
                let mut status = p.status.clone().unwrap_or_default();
                status.phase = PodPhase::Failed as i32;
                status.reason = reason.into();
                status.message = message.clone();
                status.observed_at = Some(now());
                p.status = Some(status);
                let current = uid(p);
                orca_model::ledger::close(p, &current, reason);
            })?;
        self.shared
            .event("Pod", namespace, name, true, reason, message);
        Ok(())
    }

    /// Asks the node's agent to stop (and remove) a pod.
    pub async fn stop_on_node(
        &self,
        node: &pb::Node,
        pod: &pb::PodRecord,
        grace: Option<i64>,
    ) -> Result<Option<types::PodStatus>, ClusterError> {
        let req = agent::StopPodRequest {
            uid: uid(pod),
            grace_period_seconds: grace.unwrap_or(-1),
            remove: true,
        };
        // The agent may use the whole grace period (the pod's own by default).
        let pod_grace = pod
            .pod
            .as_ref()
            .and_then(|p| serde_json::from_str::<PodSpec>(&p.spec_json).ok())
            .and_then(|s| s.termination_grace_period_seconds)
            .unwrap_or(30);
        let grace_s = grace.unwrap_or(pod_grace).max(0) as u64;
        let req = self
            .shared
            .timed(req, std::time::Duration::from_secs(grace_s));
        match self.shared.agent(node)?.stop_pod(req).await {
            Ok(resp) => Ok(resp.into_inner().status),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(status) => Err(ClusterError::Agent {
                node: node.name.clone(),
                status,
            }),
        }
    }

    /// Stops a pod's containers through its node's agent, then deletes it.
    pub async fn delete_pod(
        &self,
        namespace: &str,
        name: &str,
        grace: Option<i64>,
    ) -> Result<pb::PodRecord, ClusterError> {
        let mut record = self.pod(namespace, name)?;
        let (ns, name) = names(&record);
        if !record.node_name.is_empty() {
            // A Lost node's agent is not waited for: if it returns, the pod is an
            // orphan there and is stopped.
            let node = self
                .shared
                .store()
                .nodes
                .get(&record.node_name)?
                .filter(|n| n.state != orca_proto::controlplane::v1::NodeState::Lost as i32);
            if let Some(node) = node.filter(|n| !n.agent_address.is_empty())
                && let Some(status) = self.stop_on_node(&node, &record, grace).await?
            {
                record.status = Some(status);
            }
        }
        self.shared.store().pods.remove(&key(&ns, &name))?;
        self.shared.store().flush().await?;
        self.shared.event(
            "Pod",
            &ns,
            &name,
            false,
            "Deleted",
            format!("containers stopped on {}", record.node_name),
        );
        self.shared.wake_scheduler();
        Ok(record)
    }

    /// The pods of `namespace` (all when empty) now, then each stored change
    /// in order (the store's watch, subscribed before the listing, so nothing
    /// falls between).
    pub fn watch_pods(
        &self,
        namespace: &str,
    ) -> Result<
        impl futures::Stream<Item = Result<pb::PodWatchEvent, tonic::Status>> + use<>,
        ClusterError,
    > {
        let changes = self.shared.store().pods.watch();
        let prefix = if namespace.is_empty() {
            String::new()
        } else {
            format!("{namespace}/")
        };
        let now = self.shared.store().pods.entries(&prefix)?;
        let known: std::collections::HashSet<String> = now.iter().map(|(k, _)| k.clone()).collect();
        let initial = futures::stream::iter(now.into_iter().map(|(key, pod)| {
            Ok(pb::PodWatchEvent {
                r#type: "ADDED".into(),
                pod: Some(pod),
                key,
            })
        }));
        let later = futures::stream::unfold(
            (changes, known, false),
            move |(mut changes, mut known, ended)| {
                let prefix = prefix.clone();
                async move {
                    if ended {
                        return None;
                    }
                    loop {
                        let event = match changes.recv().await {
                            Ok(c) if c.key.starts_with(&prefix) => {
                                let r#type = match &c.record {
                                    None => {
                                        known.remove(&c.key);
                                        "DELETED"
                                    }
                                    Some(_) if known.insert(c.key.clone()) => "ADDED",
                                    Some(_) => "MODIFIED",
                                };
                                Ok(pb::PodWatchEvent {
                                    r#type: r#type.into(),
                                    pod: c.record,
                                    key: c.key,
                                })
                            }
                            Ok(_) => continue,
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                                Err(tonic::Status::aborted(format!(
                                    "the watch fell {n} changes behind; watch again"
                                )))
                            }
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                        };
                        let ended = event.is_err();
                        return Some((event, (changes, known, ended)));
                    }
                }
            },
        );
        Ok(futures::StreamExt::chain(initial, later))
    }

    /// Events of one object, or all, oldest first.
    pub fn events(&self, namespace: &str, name: &str) -> Result<Vec<pb::Event>, ClusterError> {
        Ok(self
            .shared
            .store()
            .events
            .scan("")?
            .into_iter()
            .filter(|e| {
                (namespace.is_empty() || e.namespace == namespace)
                    && (name.is_empty() || e.name == name)
            })
            .collect())
    }
}

/// Whether a pod's Ready condition is True (and it runs).
pub fn ready(record: &pb::PodRecord) -> bool {
    phase(record) == PodPhase::Running
        && record.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.r#type == "Ready" && c.status == "True")
        })
}

/// Whether an incarnation `pod_uid` on `node` is still finishing after an
/// interruption (its instance must stay until it is released).
pub fn finishing(pods: &[pb::PodRecord], node: &str, pod_uid: &str) -> bool {
    pods.iter()
        .flat_map(|p| &p.interruptions)
        .any(|i| i.uid == pod_uid && i.node_name == node && !i.released && !deadline_passed(i))
}

/// Reasons of the control plane's own verdicts on pods: a report from an agent
/// about that incarnation is stale, and the agent is told to stop it.
pub const VERDICTS: &[&str] = &["NodeLost", "NodeRemoved", "Evicted", "BudgetExceeded"];

/// The [`crate::shared::Shared::first_time`] key of the scan for cut-off pods: cleared by
/// [`crate::pods`] when an agent reports one.
pub const CUT_OFF_SCAN: &str = "scan:cut-off";

pub(crate) fn deadline_passed(n: &pb::Interruption) -> bool {
    n.notice
        .as_ref()
        .and_then(|n| n.deadline)
        .is_some_and(|d| d.seconds < now().seconds)
}

pub(crate) fn ended(status: &types::PodStatus) -> bool {
    let running = |c: &types::ContainerStatus| {
        matches!(
            c.state.as_ref().and_then(|s| s.state.as_ref()),
            Some(types::container_state::State::Running(_))
        )
    };
    matches!(
        PodPhase::try_from(status.phase),
        Ok(PodPhase::Succeeded | PodPhase::Failed)
    ) && !status.container_statuses.iter().any(running)
}
