//! The container run that `Logs`, `Exec` and `Attach` address, chosen as the
//! kubelet chooses it, and whether that run is over; and the runs live now
//! (what `PortForward` and `Stats` work on).

use std::path::PathBuf;

use super::{ContainerEntry, PodEntry, PodError, PodKey};
use crate::status::ContainerState;

/// One run of a container: what logs, exec and attach work on.
#[derive(Debug, Clone)]
pub struct RunTarget {
    /// Pod uid.
    pub uid: String,
    /// Pod name, for messages.
    pub pod: String,
    /// Container name.
    pub container: String,
    /// containerd container id.
    pub id: String,
    /// Which run (0 for the first, the restart count for the current one).
    pub run: u32,
    /// The run's live log file.
    pub log: PathBuf,
    /// The container's state when the target was chosen.
    pub state: ContainerState,
}

impl RunTarget {
    /// Fails unless the run's task is running (for exec and attach).
    pub fn require_running(&self) -> Result<(), PodError> {
        match &self.state {
            ContainerState::Running { .. } => Ok(()),
            other => Err(PodError::NotRunning(format!(
                "container {:?} in pod {} is not running ({})",
                self.container,
                self.pod,
                describe(other)
            ))),
        }
    }
}

/// A container whose task was last observed running.
#[derive(Debug, Clone)]
pub struct LiveRun {
    /// Container name.
    pub container: String,
    /// containerd container id (its cgroup is `/<namespace>/<id>`).
    pub id: String,
    /// When the run's task started.
    pub started_at: jiff::Timestamp,
}

/// A pod with its running containers.
#[derive(Debug, Clone)]
pub struct LivePod {
    /// The pod.
    pub key: PodKey,
    /// Its containers whose tasks run (init containers included), in spec order.
    pub running: Vec<LiveRun>,
}

pub(super) fn live(p: &PodEntry) -> LivePod {
    let running = p
        .containers
        .iter()
        .filter_map(|c| match c.state {
            ContainerState::Running { started_at } => Some(LiveRun {
                container: c.name.clone(),
                id: c.id.clone(),
                started_at,
            }),
            _ => None,
        })
        .collect();
    LivePod {
        key: p.key.clone(),
        running,
    }
}

fn describe(state: &ContainerState) -> String {
    match state {
        ContainerState::Waiting { reason, .. } => format!("waiting: {reason}"),
        ContainerState::Running { .. } => "running".into(),
        ContainerState::Terminated {
            reason, exit_code, ..
        } => format!("terminated: {reason}, exit code {exit_code}"),
    }
}

/// The current run of container `container` of pod `p` (or the previous run),
/// where an empty name means the pod's only app container; `log` names a
/// run's log file.
pub(super) fn choose(
    p: &PodEntry,
    uid: &str,
    container: &str,
    previous: bool,
    log: impl FnOnce(&PodKey, &str, u32) -> PathBuf,
) -> Result<RunTarget, PodError> {
    let apps: Vec<&ContainerEntry> = p.containers.iter().filter(|c| !c.init).collect();
    let c = match (container, apps.as_slice()) {
        ("", [only]) => *only,
        ("", _) => {
            let names: Vec<&str> = apps.iter().map(|c| c.name.as_str()).collect();
            return Err(PodError::Invalid {
                reason: format!(
                    "a container name must be specified for pod {}, choose one of: [{}]",
                    p.key.name,
                    names.join(" ")
                ),
            });
        }
        (name, _) => p
            .containers
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| PodError::NoContainer {
                uid: uid.into(),
                container: name.into(),
            })?,
    };
    let (run, state) = if previous {
        match (c.restart_count.checked_sub(1), &c.last_state) {
            (Some(run), Some(state)) => (run, state.clone()),
            _ => {
                return Err(PodError::NotRunning(format!(
                    "previous terminated container {:?} in pod {} not found",
                    c.name, p.key.name
                )));
            }
        }
    } else {
        (c.restart_count, c.state.clone())
    };
    Ok(RunTarget {
        uid: uid.into(),
        pod: p.key.name.clone(),
        container: c.name.clone(),
        id: c.id.clone(),
        run,
        log: log(&p.key, &c.name, run),
        state,
    })
}

/// Whether the run `target` names is over, and its exit code when known:
/// `None` while it runs (or has not begun), `Some(None)` when it is over with
/// no exit to show (the container is gone, or the run was replaced).
pub(super) fn run_exit(c: Option<&ContainerEntry>, target: &RunTarget) -> Option<Option<i32>> {
    let Some(c) = c else {
        return Some(None);
    };
    let state = if c.restart_count == target.run {
        &c.state
    } else if c.restart_count == target.run + 1 {
        match &c.last_state {
            Some(s) => s,
            None => return Some(None),
        }
    } else {
        return Some(None);
    };
    match state {
        ContainerState::Running { .. } => None,
        ContainerState::Terminated { exit_code, .. } => Some(Some(*exit_code)),
        // Waiting with this run's number: a crashed run backing off before its
        // restart (over; its exit is in `last_state`), or the very first run
        // being created (not begun, so not over).
        ContainerState::Waiting { .. } if c.restart_count == target.run => match &c.last_state {
            Some(ContainerState::Terminated { exit_code, .. }) => Some(Some(*exit_code)),
            Some(_) => Some(None),
            None => None,
        },
        ContainerState::Waiting { .. } => Some(None),
    }
}
