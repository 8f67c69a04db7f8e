//! One container's supervisor: image, create, start, wait, record, restart.

use std::time::Duration;

use tracing::{info, warn};

use super::{PodManager, RunInputs};
use crate::cgroup;
use crate::runtime::{ImageInfo, RuntimeError, TaskStatus};
use crate::spec::{PullPolicy, SpecInput};
use crate::status::{self, ContainerState};

/// How a supervised container ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// It exited and will not run again, with exit code 0.
    Completed,
    /// It cannot run or exited non-zero with no restart to come; for an init
    /// container under restartPolicy Never the pod has failed.
    Failed,
    /// The pod is being stopped.
    Stopped,
}

impl PodManager {
    /// Whether the pod is being stopped or has failed as a whole (its containers
    /// must not be started or restarted any more).
    fn stopping(&self, uid: &str, incarnation: u64) -> bool {
        self.pods()
            .get(uid)
            .is_none_or(|p| p.stopping || p.failure.is_some() || p.incarnation != incarnation)
    }

    /// Supervises container `index` of pod `uid` until it ends for good.
    pub(super) async fn supervise(
        &self,
        uid: &str,
        index: usize,
        inputs: &RunInputs,
        adopted: bool,
    ) -> Outcome {
        let timings = self.inner.timings.clone();
        let mut restarts_in_a_row = 0u32;
        let mut start_failures = 0u32;
        let mut created = adopted;
        let mut running = adopted;
        let Some(incarnation) = self.pods().get(uid).map(|p| p.incarnation) else {
            return Outcome::Stopped;
        };
        loop {
            let Some(entry) = self.pods().get(uid).cloned() else {
                return Outcome::Stopped;
            };
            if self.stopping(uid, incarnation) {
                return Outcome::Stopped;
            }
            let Some(container) = entry.container_spec(index).cloned() else {
                return Outcome::Failed;
            };
            let c = entry.containers[index].clone();

            let started_at = if running {
                match &c.state {
                    ContainerState::Running { started_at } => *started_at,
                    _ => jiff::Timestamp::now(),
                }
            } else {
                let Some(image) = self
                    .pull_with_backoff(uid, incarnation, index, &container, inputs)
                    .await
                else {
                    return if self.stopping(uid, incarnation) {
                        Outcome::Stopped
                    } else {
                        Outcome::Failed
                    };
                };
                let lifecycle = entry.lifecycle.clone();
                let _guard = lifecycle.lock().await;
                if self.stopping(uid, incarnation) {
                    return Outcome::Stopped;
                }
                if !created {
                    // The image a container runs is the one it was created from.
                    self.update(uid, |p| {
                        p.containers[index].image_id = format!("{}@{}", image.name, image.digest)
                    });
                    if let Err(e) = self.create(uid, index, &image).await {
                        warn!(pod = %entry.key.name, container = %c.name, error = %e, "container not created");
                        self.fail(uid, index, "CreateContainerError", e.to_string());
                        return Outcome::Failed;
                    }
                    created = true;
                }
                let log = self.log_path(&entry.key, &c.name, c.restart_count);
                // Keep the current run's log and the previous one (`--previous`), as the kubelet.
                if let Some(older) = c.restart_count.checked_sub(2) {
                    for file in crate::logs::files_of(&self.log_path(&entry.key, &c.name, older)) {
                        let _ = std::fs::remove_file(file);
                    }
                }
                let uri = crate::logs::log_uri(
                    &self.inner.layout.logger,
                    &log,
                    self.inner.layout.log_rotation,
                );
                let started = async {
                    self.inner.ctrd.delete_task(&c.id).await?;
                    self.inner.ctrd.start_task(&c.id, &uri).await
                };
                if let Err(e) = started.await {
                    // As the kubelet does, a task that cannot start is retried with
                    // back-off (a create left half-done by a killed agent clears up),
                    // a bounded number of times.
                    start_failures += 1;
                    warn!(pod = %entry.key.name, container = %c.name, error = %e, attempt = start_failures, "container not started");
                    if start_failures >= timings.pull_attempts.max(1) {
                        self.fail(uid, index, "RunContainerError", e.to_string());
                        return Outcome::Failed;
                    }
                    let state = ContainerState::Waiting {
                        reason: "RunContainerError".into(),
                        message: e.to_string(),
                    };
                    self.set_state(uid, index, state);
                    drop(_guard);
                    tokio::time::sleep(timings.backoff(start_failures - 1)).await;
                    continue;
                }
                start_failures = 0;
                let started_at = jiff::Timestamp::now();
                // Report only what containerd says now: the task may already have exited.
                match self.inner.ctrd.observe(&c.id).await {
                    Ok(Some(o)) if o.status == TaskStatus::Running => {
                        self.set_state(uid, index, ContainerState::Running { started_at });
                        self.save_runs(uid);
                    }
                    other => {
                        info!(container = %c.id, observed = ?other, "task not running right after start")
                    }
                }
                info!(pod = %entry.key.name, container = %c.name, id = %c.id, "container started");
                started_at
            };
            running = false;

            // Probes of this run, stopped when it ends.
            let (stop_probes, probes_stopped) = tokio::sync::watch::channel(false);
            let probing = (!c.init && super::probing::has_probes(&container)).then(|| {
                let this = self.clone();
                let grace = std::time::Duration::from_secs(
                    entry
                        .spec
                        .termination_grace_period_seconds
                        .unwrap_or(30)
                        .max(0) as u64,
                );
                let (uid, id, container) = (uid.to_owned(), c.id.clone(), container.clone());
                tokio::spawn(async move {
                    this.manage_probes(uid, index, id, container, grace, probes_stopped)
                        .await
                })
            });
            let waited = self.inner.ctrd.wait(&c.id).await;
            let _ = stop_probes.send(true);
            let probe_failure = match probing {
                Some(handle) => handle.await.ok().flatten(),
                None => None,
            };
            let (code, finished) = match waited {
                Ok((code, finished)) => {
                    (code as i32, finished.unwrap_or_else(jiff::Timestamp::now))
                }
                Err(e) => {
                    warn!(container = %c.id, error = %e, "lost track of task");
                    self.fail(uid, index, "ContainerMissing", e.to_string());
                    return Outcome::Failed;
                }
            };
            let oom = cgroup::oom_kills(self.inner.ctrd.namespace(), &c.id).is_some_and(|n| n > 0);
            let mut state = if oom {
                ContainerState::oom_killed(Some(started_at), Some(finished))
            } else {
                ContainerState::exited(code, Some(started_at), Some(finished))
            };
            if let (Some(failure), ContainerState::Terminated { message, .. }) =
                (&probe_failure, &mut state)
            {
                *message = failure.clone();
            }
            self.update(uid, |p| {
                p.containers[index].ready = None;
                p.containers[index].probe_failure = None;
            });
            info!(container = %c.id, exit_code = code, oom, "container exited");
            self.set_state(uid, index, state.clone());
            if self.stopping(uid, incarnation) {
                return Outcome::Stopped;
            }
            let policy = entry.policy;
            if c.init && code == 0 {
                return Outcome::Completed;
            }
            if !status::restarts(policy, code) {
                if c.init {
                    let msg = format!("init container {} exited with {code}", c.name);
                    self.update(uid, |p| {
                        p.failure = Some(status::PodFailure {
                            reason: "InitContainerFailed".into(),
                            message: msg,
                        })
                    });
                    self.save_runs(uid);
                }
                return if code == 0 {
                    Outcome::Completed
                } else {
                    Outcome::Failed
                };
            }
            // The kubelet's back-off, reset after a long enough run.
            let ran = Duration::try_from(finished.duration_since(started_at)).unwrap_or_default();
            if ran >= timings.backoff_reset {
                restarts_in_a_row = 0;
            }
            let backoff = timings.backoff(restarts_in_a_row);
            restarts_in_a_row += 1;
            self.update(uid, |p| {
                let c = &mut p.containers[index];
                c.last_state = Some(state);
                c.state = ContainerState::Waiting {
                    reason: "CrashLoopBackOff".into(),
                    message: format!(
                        "back-off {:?} restarting failed container {}",
                        backoff, c.name
                    ),
                };
            });
            tokio::time::sleep(backoff).await;
            if self.stopping(uid, incarnation) {
                return Outcome::Stopped;
            }
            self.update(uid, |p| p.containers[index].restart_count += 1);
            self.save_runs(uid);
            // The next turn pulls again under imagePullPolicy Always, as the kubelet does.
        }
    }

    /// Makes the container's image present, retrying with the kubelet's back-off:
    /// ErrImagePull, then ImagePullBackOff while waiting. After the configured
    /// attempts the pod fails with ErrImagePull (it is never Pending forever).
    async fn pull_with_backoff(
        &self,
        uid: &str,
        incarnation: u64,
        index: usize,
        container: &k8s_openapi::api::core::v1::Container,
        inputs: &RunInputs,
    ) -> Option<ImageInfo> {
        let image = container.image.as_deref().unwrap_or_default();
        let policy = PullPolicy::of(container).unwrap_or(PullPolicy::IfNotPresent);
        let timings = &self.inner.timings;
        let mut attempt = 0;
        loop {
            match self
                .inner
                .puller
                .ensure(image, policy, &inputs.credentials)
                .await
            {
                Ok(info) => return Some(info),
                Err(e @ RuntimeError::ImageNeverPull { .. }) => {
                    self.fail(uid, index, "ErrImageNeverPull", e.to_string());
                    return None;
                }
                Err(e) => {
                    attempt += 1;
                    warn!(uid, image, attempt, error = %e, "image pull failed");
                    if attempt >= timings.pull_attempts.max(1) {
                        self.fail(uid, index, "ErrImagePull", e.to_string());
                        return None;
                    }
                    self.set_state(
                        uid,
                        index,
                        ContainerState::Waiting {
                            reason: "ErrImagePull".into(),
                            message: e.to_string(),
                        },
                    );
                    let backoff = timings.backoff(attempt - 1);
                    // ErrImagePull is reported first, then the back-off, as by the kubelet.
                    tokio::time::sleep(backoff / 4).await;
                    self.set_state(
                        uid,
                        index,
                        ContainerState::Waiting {
                            reason: "ImagePullBackOff".into(),
                            message: format!("Back-off pulling image {image:?}: {e}"),
                        },
                    );
                    tokio::time::sleep(backoff - backoff / 4).await;
                    if self.stopping(uid, incarnation) {
                        return None;
                    }
                }
            }
        }
    }

    async fn create(
        &self,
        uid: &str,
        index: usize,
        image: &ImageInfo,
    ) -> Result<(), super::PodError> {
        let Some(entry) = self.pods().get(uid).cloned() else {
            return Err(super::PodError::NotFound { uid: uid.into() });
        };
        let container = entry.container_spec(index).cloned().unwrap_or_default();
        let id = &entry.containers[index].id;
        let shared = self.sandbox(uid)?;
        let mounts = match &entry.volumes {
            Some(v) => v
                .mounts_for(&container)
                .map_err(|e| super::PodError::Invalid {
                    reason: e.to_string(),
                })?,
            None if container
                .volume_mounts
                .as_ref()
                .is_some_and(|m| !m.is_empty()) =>
            {
                return Err(super::PodError::Invalid {
                    reason: "the pod's volumes are not prepared".into(),
                });
            }
            None => Vec::new(),
        };
        let mut mounts = mounts;
        if !mounts.iter().any(|m| m["destination"] == super::RUN_ORCA) {
            let dir = self
                .run_orca_dir(&entry.key)
                .map_err(|e| super::PodError::Invalid {
                    reason: format!("{}: {e}", super::RUN_ORCA),
                })?;
            mounts.push(serde_json::json!({
                "destination": super::RUN_ORCA,
                "type": "bind",
                "source": dir,
                "options": ["rbind", "rprivate", "rw"],
            }));
        }
        let (devices, host_caps) = if crate::spec::security::privileged(&container) {
            (
                crate::spec::security::host_devices(),
                crate::spec::security::host_capabilities(),
            )
        } else {
            (Vec::new(), Vec::new())
        };
        let mut spec = crate::spec::runtime_spec(&SpecInput {
            container: &container,
            pod: &entry.spec,
            image: &image.config,
            hostname: &entry.key.name,
            namespace: self.inner.ctrd.namespace(),
            container_id: id,
            shared: &shared,
            mounts: &mounts,
            host_devices: &devices,
            host_capabilities: &host_caps,
            pids_limit: super::pids_share(
                self.inner.layout.pids_limit,
                entry.containers[index].init,
                entry.spec.containers.len(),
            ),
        })
        .map_err(|e| super::PodError::Invalid {
            reason: e.to_string(),
        })?;
        self.give_gpus(&entry.spec, &entry.gpus, index, &mut spec)
            .map_err(|reason| super::PodError::Invalid { reason })?;
        let labels = std::collections::HashMap::from([
            (super::LABEL_POD_UID.to_owned(), entry.key.uid.clone()),
            (
                super::LABEL_POD.to_owned(),
                format!("{}/{}", entry.key.namespace, entry.key.name),
            ),
            (super::LABEL_CONTAINER.to_owned(), container.name.clone()),
        ]);
        self.inner
            .ctrd
            .create_container(id, image, &spec, labels)
            .await?;
        Ok(())
    }
}
