//! Stopping a pod (SIGTERM, the grace period, SIGKILL) and removing it; the
//! pods stopped because the host is cut off from the control plane or is going
//! away (an interruption notice, after the checkpoint handshake of `interrupt`).

use std::time::Duration;

use orca_proto::types::v1 as pb;
use tracing::{info, warn};

use orca_proto::controlplane::v1::Notice;

use super::interrupt::{self, Handshake};
use super::{PodError, PodManager};
use crate::runtime::{RuntimeError, TaskStatus};
use crate::status::ContainerState;

/// SIGTERM.
const SIGTERM: u32 = 15;
/// SIGKILL.
const SIGKILL: u32 = 9;
/// Kubernetes' default terminationGracePeriodSeconds.
const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// The pod annotation that lets the control plane replace a pod of a Lost
/// host at once (`replace`) rather than once the host is confirmed gone.
pub const ON_NODE_LOST: &str = "orca.research/on-node-lost";

impl PodManager {
    /// Stops, with SIGKILL, every pod the control plane may replace without
    /// confirming this host is gone (annotated `orca.research/on-node-lost:
    /// replace`), because this host has been cut off from it for `silent`: each
    /// ends Failed with reason [`orca_proto::NODE_CUT_OFF`], so it never runs
    /// beside its replacement. Other pods run on: the control plane replaces
    /// them only once this host is confirmed terminated, and stopping them would
    /// only lose their work. Returns how many were stopped.
    pub fn cut_off(&self, silent: Duration) -> usize {
        let uids: Vec<String> = self
            .pods()
            .values()
            .filter(|p| !p.ended() && !p.stopping)
            .filter(|p| {
                p.annotations
                    .get(ON_NODE_LOST)
                    .is_some_and(|v| v.trim() == "replace")
            })
            .map(|p| p.key.uid.clone())
            .collect();
        for uid in &uids {
            self.update(uid, |p| {
                if p.failure.is_none() {
                    p.failure = Some(crate::status::PodFailure {
                        reason: orca_proto::NODE_CUT_OFF.into(),
                        message: format!(
                            "no answer from the control plane for {}s: stopped so that it cannot \
                             run twice (the control plane may be replacing it elsewhere)",
                            silent.as_secs()
                        ),
                    });
                }
            });
            self.save_runs(uid);
            let (this, uid) = (self.clone(), uid.clone());
            tokio::spawn(async move {
                if let Err(e) = this.stop(&uid, Some(Duration::ZERO), false).await {
                    warn!(uid, error = %e, "cut-off pod not stopped");
                }
            });
        }
        if !uids.is_empty() {
            warn!(
                pods = uids.len(),
                silent_s = silent.as_secs(),
                "cut off from the control plane: pods stopped"
            );
        }
        self.inner.changed.notify_one();
        uids.len()
    }

    /// Stops a pod's containers: SIGTERM, up to `grace` (or the pod's
    /// terminationGracePeriodSeconds), then SIGKILL. With `remove`, also deletes
    /// the containers, snapshots, logs and volumes and forgets the pod.
    pub async fn stop(
        &self,
        uid: &str,
        grace: Option<Duration>,
        remove: bool,
    ) -> Result<pb::PodReport, PodError> {
        let (ids, specs, pod_grace, key, lifecycle) = {
            let mut pods = self.pods();
            let p = pods
                .get_mut(uid)
                .ok_or_else(|| PodError::NotFound { uid: uid.into() })?;
            p.stopping = true;
            p.refresh_conditions();
            let ids: Vec<String> = p.containers.iter().map(|c| c.id.clone()).collect();
            let g = p
                .spec
                .termination_grace_period_seconds
                .map(|s| Duration::from_secs(s.max(0) as u64));
            let specs: Vec<_> = (0..ids.len())
                .map(|i| p.container_spec(i).cloned().unwrap_or_default())
                .collect();
            (ids, specs, g, p.key.clone(), p.lifecycle.clone())
        };
        // Wait out a create/start in flight; after this no new task can start.
        let _lifecycle = lifecycle.lock().await;
        let grace = grace.or(pod_grace).unwrap_or(DEFAULT_GRACE);
        let ctrd = &self.inner.ctrd;
        let stops = ids.iter().zip(&specs).map(|(id, spec)| async move {
            match ctrd.observe(id).await? {
                Some(o) if o.status != TaskStatus::Stopped => {
                    // The preStop hook runs first, within the grace period.
                    let spent = self.inner.prober.pre_stop(id, spec, grace).await;
                    let grace = grace.saturating_sub(spent);
                    ctrd.kill(id, SIGTERM).await?;
                    if tokio::time::timeout(grace, ctrd.wait(id)).await.is_err() {
                        info!(container = %id, grace_s = grace.as_secs(), "grace period over; killing");
                        ctrd.kill(id, SIGKILL).await?;
                        ctrd.wait(id).await?;
                    }
                }
                _ => {}
            }
            Ok::<_, RuntimeError>(())
        });
        for result in futures::future::join_all(stops).await {
            result?;
        }
        // Record final states from containerd for containers whose supervisor has
        // not recorded the exit yet, before anything is deleted.
        for (index, id) in ids.iter().enumerate() {
            let started = match self
                .pods()
                .get(uid)
                .map(|p| p.containers[index].state.clone())
            {
                Some(ContainerState::Running { started_at }) => started_at,
                _ => continue,
            };
            if let Some(o) = ctrd.observe(id).await?
                && o.status == TaskStatus::Stopped
            {
                self.set_state(
                    uid,
                    index,
                    ContainerState::exited(o.exit_status as i32, Some(started), o.exited_at),
                );
            }
        }
        let report = self.report(uid)?;
        if remove {
            for id in &ids {
                ctrd.delete_task(id).await?;
                ctrd.delete_container(id).await?;
            }
            let dir = self.pod_dir(&key);
            super::sandbox::Sandbox { dir: &dir }.stop();
            if let Err(e) = crate::volumes::cleanup(&dir) {
                warn!(pod = %key.name, error = %e, "volumes not cleaned up");
            }
            if let Err(e) = std::fs::remove_dir_all(&dir)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                warn!(dir = %dir.display(), error = %e, "pod directory not removed");
            }
            self.pods().remove(uid);
            info!(pod = %key.name, uid, "pod removed");
        }
        self.inner.changed.notify_one();
        Ok(report)
    }

    /// Starts the checkpoint handshake (see `interrupt`) for every unfinished
    /// pod not already interrupted.
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
        let Some((handshake, grace)) = self.pods().get(&uid).map(|p| {
            let grace = p
                .spec
                .termination_grace_period_seconds
                .map(|s| Duration::from_secs(s.max(0) as u64));
            (Handshake::of(self.pod_dir(&p.key), p), grace)
        }) else {
            return;
        };
        match handshake.run(&notice, pause).await {
            Ok(Some(location)) => self.update(&uid, |p| p.checkpoint = location),
            Ok(None) => {}
            Err(e) => {
                warn!(uid, error = %e, "no /run/orca directory; stopping without a notice")
            }
        }
        self.interrupted_stop(&uid, &notice, grace).await;
    }

    /// Fails the pod for the notice and stops it within what is left before
    /// the deadline.
    async fn interrupted_stop(&self, uid: &str, notice: &Notice, grace: Option<Duration>) {
        let left = interrupt::time_left(notice);
        self.update(uid, |p| {
            if p.failure.is_none() {
                p.failure = Some(interrupt::failure(notice, left));
            }
        });
        self.save_runs(uid);
        let grace = grace.unwrap_or(Duration::from_secs(30)).min(left);
        if let Err(e) = self.stop(uid, Some(grace), false).await {
            warn!(uid, error = %e, "interrupted pod not stopped");
        }
    }
}
