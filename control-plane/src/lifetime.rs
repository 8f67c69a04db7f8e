//! `orca.research/max-lifetime`: the longest a pod may live, counted from its
//! creation. A pod still Pending (waiting for a node, or for its instance) when
//! it runs out ends `Failed (DeadlineExceeded)` here; one handed to an agent
//! carries what is left as its `activeDeadlineSeconds` (the lower of the two),
//! which the agent enforces as the kubelet does: it stops the containers and
//! reports `Failed (DeadlineExceeded)`, and an instance of its own is then
//! released like any finished pod's.

use k8s_openapi::api::core::v1::PodSpec;
use orca_proto::controlplane::v1 as pb;
use orca_proto::types::v1::PodPhase;

use crate::pods::{names, phase};
use crate::shared::{ClusterError, age};
use orca_model::selection::annotations::{MAX_LIFETIME, parse};

/// Seconds left of a pod's max lifetime (rounded up); `None` without one.
pub fn seconds_left(record: &pb::PodRecord) -> Option<i64> {
    let meta = record.pod.as_ref()?;
    let max = parse(&meta.annotations).ok()?.max_lifetime?;
    let used = age(record.created_at.as_ref());
    Some(max.as_secs() as i64 - used.as_secs() as i64)
}

/// `spec_json` with `activeDeadlineSeconds` lowered to `left` (at least 1).
pub fn with_deadline(spec_json: &str, left: i64) -> Option<String> {
    let mut spec: PodSpec = serde_json::from_str(spec_json).ok()?;
    let left = left.max(1);
    spec.active_deadline_seconds = Some(match spec.active_deadline_seconds {
        Some(own) if own <= left => own,
        _ => left,
    });
    serde_json::to_string(&spec).ok()
}

/// `orca.research/max-lifetime` for Pending pods.
#[derive(Clone)]
pub struct Lifetime {
    pods: crate::pods::Pods,
}

impl Lifetime {
    /// The component over the pods.
    pub fn new(pods: crate::pods::Pods) -> Self {
        Self { pods }
    }
}

impl Lifetime {
    /// Fails the Pending pods whose max lifetime ran out before they ran;
    /// whether it failed any.
    pub(crate) fn expire_pending(&self, pods: &[pb::PodRecord]) -> Result<bool, ClusterError> {
        let mut expired = false;
        for pod in pods.iter().filter(|p| phase(p) == PodPhase::Pending) {
            if seconds_left(pod).is_some_and(|left| left <= 0) {
                let (ns, name) = names(pod);
                let max = pod
                    .pod
                    .as_ref()
                    .and_then(|m| m.annotations.get(MAX_LIFETIME))
                    .cloned()
                    .unwrap_or_default();
                self.pods.fail_pod(
                    &ns,
                    &name,
                    "DeadlineExceeded",
                    format!("its {MAX_LIFETIME} of {max} passed before it ran"),
                )?;
                expired = true;
            }
        }
        Ok(expired)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lower_deadline_wins() {
        let spec = r#"{"containers":[{"name":"a","image":"x"}]}"#;
        let with = |s: &str, left| -> Option<i64> {
            serde_json::from_str::<PodSpec>(&with_deadline(s, left).unwrap())
                .unwrap()
                .active_deadline_seconds
        };
        assert_eq!(with(spec, 30), Some(30));
        assert_eq!(with(spec, -5), Some(1), "at least a second");
        let own = r#"{"activeDeadlineSeconds":10,"containers":[{"name":"a","image":"x"}]}"#;
        assert_eq!(with(own, 30), Some(10));
        assert_eq!(with(own, 5), Some(5));
    }
}
