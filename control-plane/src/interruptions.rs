//! Interruption notices: a node's agent reports what its instance metadata
//! announced (a spot interruption, scheduled maintenance within its drain lead,
//! a rebalance recommendation) in its heartbeats, and the control plane acts on
//! each notice once:
//!
//! - the node is cordoned, with an Event and the notice in its message;
//! - for an interruption or maintenance, each unfinished pod on the node is
//!   moved ([`crate::recovery::Recovery::relocate`]: a new incarnation placed elsewhere, in
//!   parallel with the old one's shutdown; restartPolicy Never ends it Failed).
//!   The moved incarnation is remembered in the record's `interruptions`: the
//!   agent runs its checkpoint handshake (`/run/orca/notice`, SIGTERM) and is
//!   not told to remove it as an orphan until it has ended;
//! - a rebalance recommendation only cordons (it is advisory, as Karpenter
//!   treats it);
//! - on EC2, a spot interruption's or reservation end's offering (type,
//!   subnet, capacity type) is avoided for `offering_avoid_ms`, so the
//!   replacement goes to another type, zone or on-demand, as after a capacity
//!   error;
//! - a reservation end ([`crate::reservation_ends`]) comes from the control
//!   plane itself, not the agent; a pod pinned to the ending reservation is
//!   failed rather than moved.
//!
//! The checkpoint location the old incarnation confirms becomes the record's
//! `orca.research/resume-from` annotation, which dispatch gives every container
//! as `ORCA_RESUME_FROM`. A pod with `orca.research/checkpoint-wait` is handed
//! to its new node only once that location is known, the old incarnation has
//! ended, or the deadline has passed: its instance launches at once, its
//! containers do not start from a stale checkpoint. On a provider with an
//! instance per pod, the old instance is kept until the old incarnation is
//! released (the cloud reclaims it at the deadline anyway).

use std::time::Duration;

use k8s_openapi::api::core::v1::{EnvVar, PodSpec};
use orca_proto::controlplane::v1::{self as pb, NoticeKind};
use orca_proto::types::v1::PodPhase;
use tracing::info;

use crate::pods::deadline_passed;
use crate::pods::{key, names, phase, uid};
use crate::shared::{ClusterError, Shared, now};
use orca_model::selection::annotations::{CAPACITY_RESERVATION_ID, CHECKPOINT_WAIT};

/// How far ahead EC2 announces a spot interruption (and the default of an
/// injected one).
pub const SPOT_NOTICE_LEAD: Duration = Duration::from_secs(120);

/// The environment variable that carries `orca.research/resume-from`.
pub const RESUME_ENV: &str = "ORCA_RESUME_FROM";

fn describe(n: &pb::Notice) -> String {
    let at = n
        .deadline
        .map(|d| {
            jiff::Timestamp::new(d.seconds, d.nanos)
                .map(|t| format!(" at {t}"))
                .unwrap_or_default()
        })
        .unwrap_or_default();
    match n.kind() {
        NoticeKind::SpotInterruption => format!("spot interruption ({}){at}", n.action),
        NoticeKind::ScheduledMaintenance => format!("scheduled maintenance ({}){at}", n.action),
        NoticeKind::Rebalance => "rebalance recommendation".to_owned(),
        NoticeKind::ReservationEnd if n.action == "terminate" => {
            format!(
                "end of Capacity Block {} (EC2 reclaims its instances){at}",
                n.reservation_id
            )
        }
        NoticeKind::ReservationEnd => format!(
            "end of Capacity Reservation {} (its instances then cost the on-demand price){at}",
            n.reservation_id
        ),
        NoticeKind::Unspecified => "notice".to_owned(),
    }
}

fn reason_of(n: &pb::Notice) -> &'static str {
    match n.kind() {
        NoticeKind::ScheduledMaintenance => "ScheduledMaintenance",
        NoticeKind::Rebalance => "RebalanceRecommendation",
        NoticeKind::ReservationEnd => crate::reservation_ends::REASON,
        _ => "SpotInterruption",
    }
}

/// Why a moved pod is not handed to its new node yet; `None` when it may be.
pub fn handoff_wait(record: &pb::PodRecord) -> Option<String> {
    let wants = record
        .pod
        .as_ref()
        .is_some_and(|p| p.annotations.contains_key(CHECKPOINT_WAIT));
    let last = record.interruptions.last()?;
    (wants && last.checkpoint.is_empty() && !last.released && !deadline_passed(last)).then(|| {
        format!(
            "waiting for the interrupted incarnation on {} to confirm its checkpoint ({CHECKPOINT_WAIT})",
            last.node_name
        )
    })
}

/// `spec_json` with `ORCA_RESUME_FROM=location` in every container (a value
/// the container sets itself is kept).
pub fn with_resume_env(spec_json: &str, location: &str) -> Option<String> {
    let mut spec: PodSpec = serde_json::from_str(spec_json).ok()?;
    let containers = spec
        .init_containers
        .iter_mut()
        .flatten()
        .chain(spec.containers.iter_mut());
    for c in containers {
        let env = c.env.get_or_insert_with(Vec::new);
        if !env.iter().any(|e| e.name == RESUME_ENV) {
            env.push(EnvVar {
                name: RESUME_ENV.into(),
                value: Some(location.into()),
                value_from: None,
            });
        }
    }
    serde_json::to_string(&spec).ok()
}

/// Agents' interruption notices: cordon, move the pods, keep the incarnation.
#[derive(Clone)]
pub struct Interruptions {
    shared: Shared,
    pods: crate::pods::Pods,
    provisioner: crate::provisioning::Provisioner,
    recovery: crate::recovery::Recovery,
}

impl Interruptions {
    /// The component over `shared` and the components below it.
    pub fn new(
        shared: Shared,
        pods: crate::pods::Pods,
        provisioner: crate::provisioning::Provisioner,
        recovery: crate::recovery::Recovery,
    ) -> Self {
        Self {
            shared,
            pods,
            provisioner,
            recovery,
        }
    }
}

impl Interruptions {
    /// Acts on the due notices of a node's heartbeat, each once per process (a
    /// restarted control plane acts again: cordoning is idempotent and moved
    /// pods are no longer on the node).
    pub(crate) async fn handle_notices(
        &self,
        node: &pb::Node,
        notices: &[pb::Notice],
    ) -> Result<(), ClusterError> {
        for notice in notices {
            if !self
                .shared
                .first_time(&format!("notice:{}:{}", node.name, notice.id))
            {
                continue;
            }
            let what = describe(notice);
            info!(node = %node.name, notice = %what, "interruption notice");
            let message = format!("{what}: cordoned");
            self.shared.store().nodes.update(&node.name, |n| {
                n.unschedulable = true;
                n.message = message.clone();
            })?;
            self.shared.store().flush().await?;
            self.shared
                .node_event(&node.name, true, reason_of(notice), what.clone());
            if notice.kind() == NoticeKind::Rebalance {
                continue;
            }
            if matches!(
                notice.kind(),
                NoticeKind::SpotInterruption | NoticeKind::ReservationEnd
            ) {
                self.provisioner.avoid_offering_of(node, &what);
            }
            for pod in self.shared.store().pods.scan("")? {
                if pod.node_name == node.name
                    && !matches!(phase(&pod), PodPhase::Succeeded | PodPhase::Failed)
                {
                    self.interrupt_pod(&pod, node, notice, &what).await?;
                }
            }
        }
        Ok(())
    }

    async fn interrupt_pod(
        &self,
        pod: &pb::PodRecord,
        node: &pb::Node,
        notice: &pb::Notice,
        what: &str,
    ) -> Result<(), ClusterError> {
        let (ns, name) = names(pod);
        let old_uid = uid(pod);
        let entry = pb::Interruption {
            uid: old_uid.clone(),
            node_name: node.name.clone(),
            instance_id: node.instance_id.clone(),
            notice: Some(notice.clone()),
            handled_at: Some(now()),
            ..Default::default()
        };
        self.shared.store().pods.update(&key(&ns, &name), |p| {
            if uid(p) == old_uid && !p.interruptions.iter().any(|i| i.uid == old_uid) {
                p.interruptions.push(entry.clone());
            }
        })?;
        self.shared.event(
            "Pod",
            &ns,
            &name,
            true,
            reason_of(notice),
            format!(
                "{what} of node {} (instance {}); the pod receives the notice in /run/orca",
                node.name, node.instance_id
            ),
        );
        let pinned = notice.kind() == NoticeKind::ReservationEnd
            && pod
                .pod
                .as_ref()
                .and_then(|p| p.annotations.get(CAPACITY_RESERVATION_ID))
                .is_some_and(|id| *id == notice.reservation_id);
        if pinned {
            // Its replacement could only launch into the ending reservation.
            self.pods.fail_pod(
                &ns,
                &name,
                reason_of(notice),
                format!(
                    "{what} of node {}; the pod is pinned to that reservation ({CAPACITY_RESERVATION_ID}) and is not relaunched",
                    node.name
                ),
            )?;
            self.shared.store().flush().await?;
            return Ok(());
        }
        self.recovery
            .relocate(
                pod,
                reason_of(notice),
                format!("{what} of node {}", node.name),
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pods::finishing;
    use orca_proto::types::v1 as types;

    #[test]
    fn resume_env_reaches_every_container_without_overriding_one() {
        let spec = r#"{"initContainers":[{"name":"i","image":"x"}],
            "containers":[{"name":"a","image":"x"},
                          {"name":"b","image":"x","env":[{"name":"ORCA_RESUME_FROM","value":"mine"}]}]}"#;
        let out: PodSpec =
            serde_json::from_str(&with_resume_env(spec, "s3://b/ckpt").unwrap()).unwrap();
        let value = |c: &k8s_openapi::api::core::v1::Container| {
            c.env
                .iter()
                .flatten()
                .find(|e| e.name == RESUME_ENV)
                .and_then(|e| e.value.clone())
        };
        assert_eq!(
            value(&out.init_containers.unwrap()[0]).as_deref(),
            Some("s3://b/ckpt")
        );
        assert_eq!(value(&out.containers[0]).as_deref(), Some("s3://b/ckpt"));
        assert_eq!(value(&out.containers[1]).as_deref(), Some("mine"));
    }

    fn record(wait: bool, last: pb::Interruption) -> pb::PodRecord {
        let mut meta = types::Pod::default();
        if wait {
            meta.annotations.insert(CHECKPOINT_WAIT.into(), "1m".into());
        }
        pb::PodRecord {
            pod: Some(meta),
            interruptions: vec![last],
            ..Default::default()
        }
    }

    #[test]
    fn handoff_waits_only_for_a_checkpoint_asked_for_and_not_past_the_deadline() {
        let later = prost_types::Timestamp {
            seconds: now().seconds + 60,
            nanos: 0,
        };
        let earlier = prost_types::Timestamp {
            seconds: now().seconds - 1,
            nanos: 0,
        };
        let open = |deadline| pb::Interruption {
            uid: "u1".into(),
            node_name: "n1".into(),
            notice: Some(pb::Notice {
                deadline: Some(deadline),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(handoff_wait(&record(true, open(later))).is_some());
        assert!(handoff_wait(&record(false, open(later))).is_none());
        assert!(handoff_wait(&record(true, open(earlier))).is_none());
        let done = pb::Interruption {
            checkpoint: "s3://b/c".into(),
            ..open(later)
        };
        assert!(handoff_wait(&record(true, done)).is_none());
        let released = pb::Interruption {
            released: true,
            ..open(later)
        };
        assert!(handoff_wait(&record(true, released)).is_none());
        assert!(finishing(&[record(true, open(later))], "n1", "u1"));
        assert!(!finishing(&[record(true, open(later))], "n2", "u1"));
        assert!(!finishing(&[record(true, open(earlier))], "n1", "u1"));
    }
}
