//! The checkpoint handshake of an interruption notice.
//!
//! Every container has the pod's `/run/orca` directory mounted (read-write).
//! When the instance is about to go away, each unfinished pod is handled once:
//!
//! 1. `/run/orca/notice` is written (JSON: `kind`, `action`, `deadline`,
//!    `reason`), atomically, so a reader never sees half of it;
//! 2. after the configured pause (never past the deadline), with the annotation
//!    `orca.research/checkpoint-wait: <duration>` the agent waits, at most that
//!    long and never past the deadline, for `/run/orca/checkpoint-done`, whose
//!    content is the checkpoint's location; it is reported as the pod's
//!    `checkpoint` for the control plane to hand to the replacement;
//! 3. the pod is stopped (SIGTERM, its grace period cut to what is left before
//!    the deadline, SIGKILL) and ends `Failed` with reason `SpotInterruption`,
//!    `ScheduledMaintenance` or `CapacityReservationEnd`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use orca_proto::controlplane::v1::{Notice, NoticeKind};
use tracing::{info, warn};

use super::{PodEntry, PodKey};
use crate::status::PodFailure;

/// The annotation asking to wait for a checkpoint before the stop.
pub const CHECKPOINT_WAIT: &str = "orca.research/checkpoint-wait";
/// Where the directory is in every container.
pub const RUN_ORCA: &str = "/run/orca";
/// The directory's name under the pod's directory.
const RUN_ORCA_DIR: &str = "run-orca";
/// The notice file.
const NOTICE_FILE: &str = "notice";
/// The file a container writes once its checkpoint is safe.
const CHECKPOINT_DONE: &str = "checkpoint-done";
/// How often the checkpoint file is looked for.
const CHECKPOINT_POLL: Duration = Duration::from_millis(100);

/// The reason a pod ends with when a notice stops it.
pub fn reason(n: &Notice) -> &'static str {
    match n.kind() {
        NoticeKind::ScheduledMaintenance => "ScheduledMaintenance",
        NoticeKind::ReservationEnd => "CapacityReservationEnd",
        _ => "SpotInterruption",
    }
}

pub(super) fn time_left(n: &Notice) -> Duration {
    crate::interruption::deadline(n)
        .map(|at| {
            let left = at.duration_since(jiff::Timestamp::now());
            Duration::try_from(left).unwrap_or(Duration::ZERO)
        })
        .unwrap_or(Duration::MAX)
}

/// The pod's `/run/orca` directory on the host under its directory
/// `pod_dir`, created when missing (mode 1777: containers of any user write to
/// it, as to `/tmp`).
pub(super) fn run_orca_dir(pod_dir: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = pod_dir.join(RUN_ORCA_DIR);
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777))?;
    Ok(dir)
}

/// One pod's side of the handshake: its directory, and how long it asked to
/// be given for a checkpoint.
pub(super) struct Handshake {
    pod_dir: PathBuf,
    key: PodKey,
    /// `orca.research/checkpoint-wait`, when set and valid.
    wait: Option<Duration>,
}

impl Handshake {
    /// The handshake of pod `p`, whose directory is `pod_dir`.
    pub(super) fn of(pod_dir: PathBuf, p: &PodEntry) -> Self {
        let wait = p
            .annotations
            .get(CHECKPOINT_WAIT)
            .and_then(|v| orca_model::duration::parse(v).ok());
        Self {
            pod_dir,
            key: p.key.clone(),
            wait,
        }
    }

    /// Hands the notice to the pod, waits the pause and (when asked) for its
    /// checkpoint; returns the checkpoint's location once confirmed. Fails
    /// only when the pod has no `/run/orca` directory (stop it without a notice).
    pub(super) async fn run(
        &self,
        notice: &Notice,
        pause: Duration,
    ) -> std::io::Result<Option<String>> {
        let (key, uid, wait) = (&self.key, &self.key.uid, self.wait);
        let dir = run_orca_dir(&self.pod_dir)?;
        let deadline = crate::interruption::deadline(notice);
        let why = match notice.kind() {
            NoticeKind::ScheduledMaintenance => {
                format!("scheduled maintenance ({})", notice.action)
            }
            NoticeKind::ReservationEnd => format!(
                "end of capacity reservation {} ({})",
                notice.reservation_id, notice.action
            ),
            _ => format!("spot interruption ({})", notice.action),
        };
        let body = serde_json::json!({
            "kind": reason(notice),
            "action": notice.action,
            "deadline": deadline.map(|t| t.to_string()),
            "reason": why,
        });
        if let Err(e) = write_atomically(&dir.join(NOTICE_FILE), body.to_string().as_bytes()) {
            warn!(pod = %key.name, error = %e, "notice file not written");
        }
        info!(pod = %key.name, uid, deadline = ?deadline, "interruption notice handed to the pod");
        tokio::time::sleep(pause.min(time_left(notice))).await;
        let done = dir.join(CHECKPOINT_DONE);
        if let Some(wait) = wait {
            let until = tokio::time::Instant::now() + wait.min(time_left(notice));
            while !done.exists() && tokio::time::Instant::now() < until {
                tokio::time::sleep(CHECKPOINT_POLL).await;
            }
        }
        let location = read_checkpoint(&done);
        match &location {
            Some(location) => info!(pod = %key.name, uid, location, "checkpoint confirmed"),
            None if wait.is_some() => {
                warn!(pod = %key.name, uid, "no checkpoint confirmed before the stop")
            }
            None => {}
        }
        Ok(location)
    }
}

/// The pod failure a notice stops a pod with, `left` before its deadline.
pub(super) fn failure(notice: &Notice, left: Duration) -> PodFailure {
    PodFailure {
        reason: reason(notice).into(),
        message: format!(
            "the instance is going away ({}{}); stopped {}s before the deadline",
            if notice.reservation_id.is_empty() {
                String::new()
            } else {
                format!("end of capacity reservation {}: ", notice.reservation_id)
            },
            if notice.action.is_empty() {
                "notice"
            } else {
                &notice.action
            },
            left.min(Duration::from_secs(u32::MAX.into())).as_secs()
        ),
    }
}

fn read_checkpoint(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let location = text.trim();
    (!location.is_empty()).then(|| location.to_owned())
}

fn write_atomically(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data)?;
    std::fs::rename(tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_location_is_trimmed_and_never_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CHECKPOINT_DONE);
        assert_eq!(read_checkpoint(&path), None);
        std::fs::write(&path, "  \n").unwrap();
        assert_eq!(read_checkpoint(&path), None);
        std::fs::write(&path, "s3://bucket/run-7/step-1200\n").unwrap();
        assert_eq!(
            read_checkpoint(&path).as_deref(),
            Some("s3://bucket/run-7/step-1200")
        );
    }
}
