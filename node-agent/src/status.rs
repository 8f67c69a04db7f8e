//! Observed container states and the pod phase derived from them, in one place,
//! with Kubernetes' rules; and their conversion to the wire types.

use orca_proto::types::v1 as pb;

use crate::spec::RestartPolicy;

/// What the agent last observed of one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerState {
    /// Not running yet (or waiting to restart), with the reason.
    Waiting {
        /// `ContainerCreating`, `ErrImagePull`, `CrashLoopBackOff`, ...
        reason: String,
        /// Detail.
        message: String,
    },
    /// Its task was observed running.
    Running {
        /// When the task started.
        started_at: jiff::Timestamp,
    },
    /// Its task was observed stopped.
    Terminated {
        /// Exit status from containerd.
        exit_code: i32,
        /// `Completed`, `Error`, `OOMKilled`, ...
        reason: String,
        /// Detail.
        message: String,
        /// When the task started.
        started_at: Option<jiff::Timestamp>,
        /// When the task exited.
        finished_at: Option<jiff::Timestamp>,
    },
}

impl ContainerState {
    /// The state for a container that is being set up.
    pub fn creating() -> Self {
        Self::Waiting {
            reason: "ContainerCreating".into(),
            message: String::new(),
        }
    }

    /// The terminated state of an OOM-killed container.
    pub fn oom_killed(
        started_at: Option<jiff::Timestamp>,
        finished_at: Option<jiff::Timestamp>,
    ) -> Self {
        Self::Terminated {
            exit_code: 137,
            reason: "OOMKilled".into(),
            message: "the container exceeded its memory limit".into(),
            started_at,
            finished_at,
        }
    }

    /// The terminated state for an exit status, with Kubernetes' reasons.
    pub fn exited(
        exit_code: i32,
        started_at: Option<jiff::Timestamp>,
        finished_at: Option<jiff::Timestamp>,
    ) -> Self {
        let reason = if exit_code == 0 { "Completed" } else { "Error" };
        Self::Terminated {
            exit_code,
            reason: reason.into(),
            message: String::new(),
            started_at,
            finished_at,
        }
    }
}

/// Whether a container that exited with `exit_code` is restarted under `policy`.
pub fn restarts(policy: RestartPolicy, exit_code: i32) -> bool {
    match policy {
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => exit_code != 0,
        RestartPolicy::Never => false,
    }
}

/// A pod-level failure that is not any one container's exit (invalid spec, image pull).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodFailure {
    /// Machine-readable reason.
    pub reason: String,
    /// Detail.
    pub message: String,
}

/// The phase of a pod from its containers' observed states, as the kubelet computes it.
pub fn phase(
    policy: RestartPolicy,
    failure: Option<&PodFailure>,
    initializing: bool,
    states: &[&ContainerState],
) -> pb::PodPhase {
    if failure.is_some() {
        return pb::PodPhase::Failed;
    }
    if initializing {
        return pb::PodPhase::Pending;
    }
    let mut waiting = 0;
    let mut running = 0;
    let mut failed = 0;
    let mut will_restart = 0;
    for state in states {
        match state {
            ContainerState::Waiting { reason, .. } if reason == "CrashLoopBackOff" => {
                will_restart += 1
            }
            ContainerState::Waiting { .. } => waiting += 1,
            ContainerState::Running { .. } => running += 1,
            ContainerState::Terminated { exit_code, .. } if restarts(policy, *exit_code) => {
                will_restart += 1
            }
            ContainerState::Terminated { exit_code: 0, .. } => {}
            ContainerState::Terminated { .. } => failed += 1,
        }
    }
    if states.is_empty() || waiting > 0 {
        return pb::PodPhase::Pending;
    }
    if running + will_restart > 0 {
        return pb::PodPhase::Running;
    }
    if failed > 0 {
        pb::PodPhase::Failed
    } else {
        pb::PodPhase::Succeeded
    }
}

/// Converts a timestamp to the wire type.
pub fn to_pb_time(t: jiff::Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.as_second(),
        nanos: t.subsec_nanosecond(),
    }
}

impl ContainerState {
    /// The wire form.
    pub fn to_pb(&self) -> pb::ContainerState {
        use pb::container_state::State;
        let state = match self {
            Self::Waiting { reason, message } => State::Waiting(pb::ContainerStateWaiting {
                reason: reason.clone(),
                message: message.clone(),
            }),
            Self::Running { started_at } => State::Running(pb::ContainerStateRunning {
                started_at: Some(to_pb_time(*started_at)),
            }),
            Self::Terminated {
                exit_code,
                reason,
                message,
                started_at,
                finished_at,
            } => State::Terminated(pb::ContainerStateTerminated {
                exit_code: *exit_code,
                signal: if *exit_code > 128 { exit_code - 128 } else { 0 },
                reason: reason.clone(),
                message: message.clone(),
                started_at: started_at.map(to_pb_time),
                finished_at: finished_at.map(to_pb_time),
            }),
        };
        pb::ContainerState { state: Some(state) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RestartPolicy::*;
    use pb::PodPhase::*;

    fn running() -> ContainerState {
        ContainerState::Running {
            started_at: jiff::Timestamp::UNIX_EPOCH,
        }
    }
    fn exited(code: i32) -> ContainerState {
        ContainerState::exited(code, None, None)
    }

    #[test]
    fn phase_follows_the_kubelet() {
        let creating = ContainerState::creating();
        let backoff = ContainerState::Waiting {
            reason: "CrashLoopBackOff".into(),
            message: String::new(),
        };
        let table: &[(RestartPolicy, &[&ContainerState], pb::PodPhase)] = &[
            (Never, &[], Pending),
            (Never, &[&creating], Pending),
            (Never, &[&running(), &creating], Pending),
            (Never, &[&running()], Running),
            (Never, &[&running(), &exited(0)], Running),
            (Never, &[&exited(0)], Succeeded),
            (Never, &[&exited(0), &exited(0)], Succeeded),
            (Never, &[&exited(1)], Failed),
            (Never, &[&exited(0), &exited(137)], Failed),
            (OnFailure, &[&exited(0)], Succeeded),
            (OnFailure, &[&exited(1)], Running),
            (Always, &[&exited(0)], Running),
            (Always, &[&backoff], Running),
        ];
        for (policy, states, want) in table {
            assert_eq!(
                phase(*policy, None, false, states),
                *want,
                "{policy:?} {states:?}"
            );
        }
        let failure = PodFailure {
            reason: "ErrImagePull".into(),
            message: "not found".into(),
        };
        assert_eq!(phase(Never, Some(&failure), false, &[&creating]), Failed);
        assert_eq!(
            phase(Always, None, true, &[&running()]),
            Pending,
            "init containers still running"
        );
    }

    #[test]
    fn terminated_states_carry_kubernetes_reasons() {
        assert!(
            matches!(exited(0), ContainerState::Terminated { ref reason, .. } if reason == "Completed")
        );
        assert!(
            matches!(exited(2), ContainerState::Terminated { ref reason, .. } if reason == "Error")
        );
        let pb = exited(137).to_pb();
        let Some(pb::container_state::State::Terminated(t)) = pb.state else {
            panic!("not terminated")
        };
        assert_eq!((t.exit_code, t.signal), (137, 9));
    }
}
