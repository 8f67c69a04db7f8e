//! One container of a pod on containerd: [`PodContainer`] is the
//! [`ContainerRuntime`] the lifecycle ([`super::lifecycle`]) runs against (the
//! pull with the pod's credentials, the OCI spec built from the pod's volumes,
//! sandbox and GPUs, the task with its log file, probes) and the [`Ledger`] that
//! writes its states into the pod manager's view.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::Container;
use tokio::sync::watch;
use tracing::warn;

use super::lifecycle::{self, ContainerRuntime, Counters, Exit, Ledger, Lifecycle, Outcome, Rules};
use super::probing::ProbeNews;
use super::{PodError, PodKey, PodManager, RunInputs};
use crate::cgroup;
use crate::runtime::{ImageInfo, RuntimeError, TaskObservation};
use crate::spec::{PullPolicy, SpecInput};
use crate::status::{ContainerState, PodFailure};

/// Supervises container `index` of pod `uid` until it ends for good;
/// `adopted` when its task was found after an agent restart (watched, not
/// started again).
pub(super) async fn supervise(
    pods: &PodManager,
    uid: &str,
    index: usize,
    inputs: &RunInputs,
    adopted: bool,
) -> Outcome {
    let Some(entry) = pods.pods().get(uid).cloned() else {
        return Outcome::Stopped;
    };
    let (Some(container), Some(c)) = (entry.container_spec(index), entry.containers.get(index))
    else {
        return Outcome::Failed;
    };
    let this = PodContainer {
        pods: pods.clone(),
        uid: uid.to_owned(),
        key: entry.key.clone(),
        index,
        incarnation: entry.incarnation,
        id: c.id.clone(),
        init: c.init,
        image: c.image.clone(),
        container: container.clone(),
        grace: std::time::Duration::from_secs(
            entry
                .spec
                .termination_grace_period_seconds
                .unwrap_or(30)
                .max(0) as u64,
        ),
        inputs: inputs.clone(),
    };
    let rules = Rules {
        policy: entry.policy,
        init: c.init,
        timings: pods.inner.timings.clone(),
        name: c.name.clone(),
    };
    let (state, counters) = if adopted {
        let since = match &c.state {
            ContainerState::Running { started_at } => *started_at,
            _ => jiff::Timestamp::now(),
        };
        let counters = Counters {
            created: true,
            ..Default::default()
        };
        let state = Lifecycle::Running {
            since,
            confirmed: false,
        };
        (state, counters)
    } else {
        (Lifecycle::Pulling { attempt: 0 }, Counters::default())
    };
    lifecycle::drive(
        &this,
        &this,
        &rules,
        entry.lifecycle.clone(),
        state,
        counters,
        c.restart_count,
    )
    .await
}

/// One container of one pod, as containerd runs it.
struct PodContainer {
    pods: PodManager,
    uid: String,
    key: PodKey,
    /// Index among the pod's containers (init containers first).
    index: usize,
    /// The acceptance of the pod this supervisor belongs to.
    incarnation: u64,
    /// containerd container id.
    id: String,
    init: bool,
    image: String,
    container: Container,
    /// The pod's termination grace period (a probe's kill waits this long).
    grace: std::time::Duration,
    inputs: RunInputs,
}

impl ContainerRuntime for PodContainer {
    async fn pull(&self) -> Result<ImageInfo, RuntimeError> {
        let policy = PullPolicy::of(&self.container).unwrap_or(PullPolicy::IfNotPresent);
        self.pods
            .inner
            .puller
            .ensure(&self.image, policy, &self.inputs.credentials)
            .await
    }

    async fn create(&self, image: &ImageInfo) -> Result<(), PodError> {
        let Some(entry) = self.pods.pods().get(&self.uid).cloned() else {
            return Err(PodError::NotFound {
                uid: self.uid.clone(),
            });
        };
        let container = &self.container;
        let invalid = |reason: String| PodError::Invalid { reason };
        let shared = self.pods.sandbox(&self.uid)?;
        let mut mounts = match &entry.volumes {
            Some(v) => v
                .mounts_for(container)
                .map_err(|e| invalid(e.to_string()))?,
            None if container
                .volume_mounts
                .as_ref()
                .is_some_and(|m| !m.is_empty()) =>
            {
                return Err(invalid("the pod's volumes are not prepared".into()));
            }
            None => Vec::new(),
        };
        if !mounts.iter().any(|m| m["destination"] == super::RUN_ORCA) {
            let dir = super::interrupt::run_orca_dir(&self.pods.pod_dir(&self.key))
                .map_err(|e| invalid(format!("{}: {e}", super::RUN_ORCA)))?;
            mounts.push(serde_json::json!({
                "destination": super::RUN_ORCA,
                "type": "bind",
                "source": dir,
                "options": ["rbind", "rprivate", "rw"],
            }));
        }
        let (devices, host_caps) = if crate::spec::security::privileged(container) {
            (
                crate::spec::security::host_devices(),
                crate::spec::security::host_capabilities(),
            )
        } else {
            (Vec::new(), Vec::new())
        };
        let ctrd = &self.pods.inner.ctrd;
        // `image.config.user` travels in here but is not honoured yet (see
        // `spec::ImageConfig::user`).
        let mut spec = crate::spec::runtime_spec(&SpecInput {
            container,
            pod: &entry.spec,
            image: &image.config,
            hostname: &self.key.name,
            namespace: ctrd.namespace(),
            container_id: &self.id,
            shared: &shared,
            mounts: &mounts,
            host_devices: &devices,
            host_capabilities: &host_caps,
            pids_limit: super::pids_share(
                self.pods.inner.layout.pids_limit,
                self.init,
                entry.spec.containers.len(),
            ),
        })
        .map_err(|e| invalid(e.to_string()))?;
        self.pods
            .inner
            .gpus
            .give(&entry.spec, &entry.gpus, self.index, &mut spec)
            .map_err(invalid)?;
        let labels = HashMap::from([
            (super::LABEL_POD_UID.to_owned(), self.key.uid.clone()),
            (
                super::LABEL_POD.to_owned(),
                format!("{}/{}", self.key.namespace, self.key.name),
            ),
            (super::LABEL_CONTAINER.to_owned(), container.name.clone()),
        ]);
        ctrd.create_container(&self.id, image, &spec, labels)
            .await?;
        Ok(())
    }

    async fn start(&self, run: u32) -> Result<(), RuntimeError> {
        let name = &self.container.name;
        let log = self.pods.log_path(&self.key, name, run);
        // Keep the current run's log and the previous one (`--previous`), as the kubelet.
        if let Some(older) = run.checked_sub(2) {
            for file in crate::logs::files_of(&self.pods.log_path(&self.key, name, older)) {
                let _ = std::fs::remove_file(file);
            }
        }
        let layout = &self.pods.inner.layout;
        let uri = crate::logs::log_uri(&layout.logger, &log, layout.log_rotation);
        let ctrd = &self.pods.inner.ctrd;
        ctrd.delete_task(&self.id).await?;
        ctrd.start_task(&self.id, &uri).await?;
        Ok(())
    }

    async fn observe(&self) -> Result<Option<TaskObservation>, RuntimeError> {
        self.pods.inner.ctrd.observe(&self.id).await
    }

    async fn wait(&self) -> Result<Exit, RuntimeError> {
        let ctrd = &self.pods.inner.ctrd;
        let (code, finished_at) = ctrd.wait(&self.id).await?;
        let oom = cgroup::oom_kills(ctrd.namespace(), &self.id).is_some_and(|n| n > 0);
        Ok(Exit {
            code: code as i32,
            finished_at,
            oom,
        })
    }

    async fn probe(&self, stop: watch::Receiver<bool>) -> Option<String> {
        if self.init || !super::probing::has_probes(&self.container) {
            return None;
        }
        let (pods, uid, index) = (&self.pods, self.uid.as_str(), self.index);
        let on = |news: ProbeNews| {
            pods.update(uid, |p| match news {
                ProbeNews::Ready(ready) => p.containers[index].ready = Some(ready),
                ProbeNews::Killing(message) => p.containers[index].probe_failure = Some(message),
            })
        };
        self.pods
            .inner
            .prober
            .manage(&self.id, &self.container, self.grace, stop, on)
            .await
    }
}

impl Ledger for PodContainer {
    fn record(&self, state: &Lifecycle) {
        let (pods, uid, index) = (&self.pods, self.uid.as_str(), self.index);
        let shown = state.container_state(&self.image, &self.container.name);
        match state {
            Lifecycle::Creating { image } => {
                // The image a container runs is the one it was created from.
                let id = format!("{}@{}", image.name, image.digest);
                pods.update(uid, |p| p.containers[index].image_id = id);
            }
            Lifecycle::Running {
                confirmed: true, ..
            } => {
                if let Some(s) = shown {
                    pods.set_state(uid, index, s);
                }
                pods.save_runs(uid);
            }
            Lifecycle::Terminated { state } => pods.update(uid, |p| {
                let c = &mut p.containers[index];
                c.ready = None;
                c.probe_failure = None;
                c.state = state.clone();
            }),
            Lifecycle::BackingOff { last, .. } => pods.update(uid, |p| {
                let c = &mut p.containers[index];
                c.last_state = Some(last.clone());
                if let Some(s) = shown {
                    c.state = s;
                }
            }),
            Lifecycle::Restarting => {
                pods.update(uid, |p| p.containers[index].restart_count += 1);
                pods.save_runs(uid);
            }
            Lifecycle::InitFailed { message } => {
                pods.update(uid, |p| {
                    p.failure = Some(PodFailure {
                        reason: "InitContainerFailed".into(),
                        message: message.clone(),
                    })
                });
                pods.save_runs(uid);
            }
            Lifecycle::Failed { reason, message } => {
                warn!(pod = %self.key.name, container = %self.container.name, reason, message, "container cannot run; the pod fails");
                pods.fail(uid, index, reason, message.clone());
            }
            Lifecycle::PullFailed { .. }
            | Lifecycle::PullBackOff { .. }
            | Lifecycle::StartFailed { .. } => {
                if let Some(s) = shown {
                    pods.set_state(uid, index, s);
                }
            }
            Lifecycle::Pulling { .. }
            | Lifecycle::Created
            | Lifecycle::Running { .. }
            | Lifecycle::Done(_) => {}
        }
    }

    fn stopping(&self) -> bool {
        self.pods.stopping(&self.uid, self.incarnation)
    }
}
