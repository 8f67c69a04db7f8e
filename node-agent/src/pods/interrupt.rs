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

use super::{PodKey, PodManager};
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

fn time_left(n: &Notice) -> Duration {
    crate::interruption::deadline(n)
        .map(|at| {
            let left = at.duration_since(jiff::Timestamp::now());
            Duration::try_from(left).unwrap_or(Duration::ZERO)
        })
        .unwrap_or(Duration::MAX)
}

impl PodManager {
    /// The pod's `/run/orca` directory on the host, created when missing
    /// (mode 1777: containers of any user write to it, as to `/tmp`).
    pub(super) fn run_orca_dir(&self, key: &PodKey) -> std::io::Result<PathBuf> {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = self.pod_dir(key).join(RUN_ORCA_DIR);
        std::fs::create_dir_all(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777))?;
        Ok(dir)
    }

    /// Starts the handshake for every unfinished pod not already interrupted.
    pub fn interrupt(&self, notice: &Notice, pause: Duration) {
        let uids: Vec<String> = {
            let mut pods = self.pods();
            pods.values_mut()
                .filter(|p| !p.interrupted && !p.stopping && !p.ended())
                .map(|p| {
                    p.interrupted = true;
                    p.key.uid.clone()
                })
                .collect()
        };
        for uid in uids {
            let this = self.clone();
            let notice = notice.clone();
            tokio::spawn(async move { this.handshake(uid, notice, pause).await });
        }
    }

    async fn handshake(&self, uid: String, notice: Notice, pause: Duration) {
        let Some((key, wait, grace)) = self.pods().get(&uid).map(|p| {
            let wait = p
                .annotations
                .get(CHECKPOINT_WAIT)
                .and_then(|v| orca_model::duration::parse(v).ok());
            let grace = p
                .spec
                .termination_grace_period_seconds
                .map(|s| Duration::from_secs(s.max(0) as u64));
            (p.key.clone(), wait, grace)
        }) else {
            return;
        };
        let dir = match self.run_orca_dir(&key) {
            Ok(dir) => dir,
            Err(e) => {
                warn!(pod = %key.name, error = %e, "no /run/orca directory; stopping without a notice");
                self.interrupted_stop(&uid, &notice, grace).await;
                return;
            }
        };
        let deadline = crate::interruption::deadline(&notice);
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
            "kind": reason(&notice),
            "action": notice.action,
            "deadline": deadline.map(|t| t.to_string()),
            "reason": why,
        });
        if let Err(e) = write_atomically(&dir.join(NOTICE_FILE), body.to_string().as_bytes()) {
            warn!(pod = %key.name, error = %e, "notice file not written");
        }
        info!(pod = %key.name, uid, deadline = ?deadline, "interruption notice handed to the pod");
        tokio::time::sleep(pause.min(time_left(&notice))).await;
        let done = dir.join(CHECKPOINT_DONE);
        if let Some(wait) = wait {
            let until = tokio::time::Instant::now() + wait.min(time_left(&notice));
            while !done.exists() && tokio::time::Instant::now() < until {
                tokio::time::sleep(CHECKPOINT_POLL).await;
            }
        }
        match read_checkpoint(&done) {
            Some(location) => {
                info!(pod = %key.name, uid, location, "checkpoint confirmed");
                self.update(&uid, |p| p.checkpoint = location.clone());
            }
            None if wait.is_some() => {
                warn!(pod = %key.name, uid, "no checkpoint confirmed before the stop")
            }
            None => {}
        }
        self.interrupted_stop(&uid, &notice, grace).await;
    }

    /// Records the verdict and stops the pod within what is left of the deadline.
    async fn interrupted_stop(&self, uid: &str, notice: &Notice, grace: Option<Duration>) {
        let left = time_left(notice);
        self.update(uid, |p| {
            if p.failure.is_none() {
                p.failure = Some(PodFailure {
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
                });
            }
        });
        self.save_runs(uid);
        let grace = grace.unwrap_or(Duration::from_secs(30)).min(left);
        if let Err(e) = self.stop(uid, Some(grace), false).await {
            warn!(uid, error = %e, "interrupted pod not stopped");
        }
    }
}

/// The checkpoint location in `path`, trimmed; `None` when absent or empty.
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
