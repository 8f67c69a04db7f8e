//! A silent node's health: Ready → Suspect → NotReady → Lost as its silence
//! passes each threshold. Silence only makes a node worse; heartbeats (the
//! registry's) make it better. Other states (Launching, Terminating, ...) are
//! not judged by silence.

use std::time::Duration;

use orca_proto::controlplane::v1::NodeState;

/// The silences after which a node is Suspect, NotReady and Lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// Silence after which a Ready node is Suspect.
    pub suspect_after: Duration,
    /// Silence after which it is NotReady.
    pub not_ready_after: Duration,
    /// Silence after which it is Lost (its pods may be recovered).
    pub lost_after: Duration,
}

/// How bad a judged state is; 0 for states silence does not judge.
pub fn rank(state: NodeState) -> u8 {
    match state {
        NodeState::Ready => 0,
        NodeState::Suspect => 1,
        NodeState::NotReady => 2,
        NodeState::Lost => 3,
        _ => 0,
    }
}

/// What a node in `state`, silent for `silence`, becomes; `None` when it
/// stays as it is (not silent long enough for a worse state, already as bad,
/// or a state silence does not judge).
pub fn degraded(state: NodeState, silence: Duration, t: &Thresholds) -> Option<NodeState> {
    if !matches!(
        state,
        NodeState::Ready | NodeState::Suspect | NodeState::NotReady
    ) {
        return None;
    }
    let due = if silence > t.lost_after {
        NodeState::Lost
    } else if silence > t.not_ready_after {
        NodeState::NotReady
    } else if silence > t.suspect_after {
        NodeState::Suspect
    } else {
        return None;
    };
    (rank(due) > rank(state)).then_some(due)
}

/// The event reasons of every step from `from` to `to`, in order: a check that
/// came late and jumps states still tells the whole sequence.
pub fn steps(from: NodeState, to: NodeState) -> Vec<&'static str> {
    [
        (NodeState::Suspect, "NodeSuspect"),
        (NodeState::NotReady, "NodeNotReady"),
        (NodeState::Lost, "NodeLost"),
    ]
    .into_iter()
    .filter(|(step, _)| rank(*step) > rank(from) && rank(*step) <= rank(to))
    .map(|(_, reason)| reason)
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Thresholds = Thresholds {
        suspect_after: Duration::from_secs(10),
        not_ready_after: Duration::from_secs(20),
        lost_after: Duration::from_secs(40),
    };

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn silence_past_each_threshold_makes_a_ready_node_worse() {
        use NodeState::*;
        assert_eq!(
            degraded(Ready, s(10), &T),
            None,
            "at the threshold: not yet"
        );
        assert_eq!(degraded(Ready, s(11), &T), Some(Suspect));
        assert_eq!(degraded(Ready, s(21), &T), Some(NotReady));
        assert_eq!(degraded(Ready, s(41), &T), Some(Lost), "a late check jumps");
        assert_eq!(degraded(Suspect, s(15), &T), None, "already Suspect");
        assert_eq!(degraded(Suspect, s(21), &T), Some(NotReady));
        assert_eq!(degraded(NotReady, s(41), &T), Some(Lost));
    }

    #[test]
    fn silence_never_makes_a_node_better_nor_judges_other_states() {
        use NodeState::*;
        assert_eq!(degraded(NotReady, s(11), &T), None);
        for other in [Launching, Lost, Terminating, Failed, Stopped, Unspecified] {
            assert_eq!(degraded(other, s(1000), &T), None, "{other:?}");
        }
    }

    #[test]
    fn every_step_of_a_jump_is_told() {
        use NodeState::*;
        assert_eq!(
            steps(Ready, Lost),
            ["NodeSuspect", "NodeNotReady", "NodeLost"]
        );
        assert_eq!(steps(Suspect, NotReady), ["NodeNotReady"]);
        assert!(steps(Lost, Lost).is_empty());
    }
}
