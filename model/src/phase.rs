//! Pod phases and node states as words: the one mapping from the wire's enums
//! to what Kubernetes, `orca` and the metrics' labels spell.

use orca_proto::controlplane::v1::NodeState;
use orca_proto::types::v1::PodPhase;

/// Every pod phase a pod is counted under, in Kubernetes' order (an unset
/// phase counts as Unknown).
pub const POD_PHASES: [PodPhase; 5] = [
    PodPhase::Pending,
    PodPhase::Running,
    PodPhase::Succeeded,
    PodPhase::Failed,
    PodPhase::Unknown,
];

/// A phase as Kubernetes spells it; an unset phase is `Unknown`.
pub fn pod_phase_name(phase: PodPhase) -> &'static str {
    match phase {
        PodPhase::Unspecified | PodPhase::Unknown => "Unknown",
        PodPhase::Pending => "Pending",
        PodPhase::Running => "Running",
        PodPhase::Succeeded => "Succeeded",
        PodPhase::Failed => "Failed",
    }
}

/// The wire's phase number as a word (a number no phase has is `Unknown`).
pub fn pod_phase_word(phase: i32) -> &'static str {
    pod_phase_name(PodPhase::try_from(phase).unwrap_or(PodPhase::Unspecified))
}

/// Every node state a node is counted under (an unset state counts as Unknown).
pub const NODE_STATES: [NodeState; 9] = [
    NodeState::Launching,
    NodeState::Ready,
    NodeState::Suspect,
    NodeState::NotReady,
    NodeState::Lost,
    NodeState::Terminating,
    NodeState::Failed,
    NodeState::Stopped,
    NodeState::Unspecified,
];

/// A node state as `orca node list` and the metrics spell it.
pub fn node_state_name(state: NodeState) -> &'static str {
    match state {
        NodeState::Unspecified => "Unknown",
        NodeState::Launching => "Launching",
        NodeState::Ready => "Ready",
        NodeState::Suspect => "Suspect",
        NodeState::NotReady => "NotReady",
        NodeState::Lost => "Lost",
        NodeState::Terminating => "Terminating",
        NodeState::Failed => "Failed",
        NodeState::Stopped => "Stopped",
    }
}

/// The wire's state number as a word.
pub fn node_state_word(state: i32) -> &'static str {
    node_state_name(NodeState::try_from(state).unwrap_or(NodeState::Unspecified))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_phase_and_state_has_its_own_word() {
        let phases: std::collections::BTreeSet<_> = POD_PHASES.map(pod_phase_name).into();
        assert_eq!(phases.len(), POD_PHASES.len());
        let states: std::collections::BTreeSet<_> = NODE_STATES.map(node_state_name).into();
        assert_eq!(states.len(), NODE_STATES.len());
        assert_eq!(pod_phase_word(99), "Unknown");
        assert_eq!(node_state_word(-1), "Unknown");
    }
}
