//! Accepting a pod and its task: volumes, GPUs, then init containers in order,
//! each to a successful exit, then the app containers, supervised concurrently;
//! the pod's activeDeadlineSeconds; and adopting the pods a previous agent
//! process left (their files are `adopt`'s).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::PodSpec;
use orca_proto::types::v1 as pb;
use tracing::{info, warn};

use super::adopt;
use super::gpus::Claim;
use super::lifecycle::Outcome;
use super::supervise::supervise;
use super::{PodEntry, PodError, PodKey, PodManager, RunInputs};
use crate::runtime::TaskStatus;
use crate::spec;
use crate::status::{ContainerState, PodFailure};

impl PodManager {
    /// Accepts a pod and starts it in the background. Idempotent per uid. A spec
    /// the agent cannot run is accepted as a Failed pod with the reason.
    pub fn run(
        &self,
        key: PodKey,
        spec_json: &str,
        labels: BTreeMap<String, String>,
        annotations: BTreeMap<String, String>,
        inputs: RunInputs,
    ) -> Result<pb::PodReport, PodError> {
        key.validate()?;
        // A uid names one pod: the same uid under another name is not this pod
        // sent again but an attempt to act on it (or a collision), and two pods
        // whose uids share their first 12 alphanumerics would share container ids.
        let short = key.short_uid();
        if let Some(other) = self.pods().values().find(|p| {
            (p.key.uid == key.uid && p.key != key)
                || (p.key.uid != key.uid && p.key.short_uid() == short)
        }) {
            return Err(PodError::Invalid {
                reason: format!(
                    "pod {}/{}: uid {} collides with pod {}/{} on this node",
                    key.namespace, key.name, key.uid, other.key.namespace, other.key.name
                ),
            });
        }
        if let Some(existing) = self.pods().get(&key.uid) {
            if existing.stopping && existing.failure.is_none() {
                return Err(PodError::Removing {
                    uid: key.uid.clone(),
                });
            }
            return Ok(existing.report(&self.inner.layout.host_ip));
        }
        let spec: PodSpec = serde_json::from_str(spec_json).map_err(|e| PodError::Invalid {
            reason: format!("spec is not a Kubernetes PodSpec: {e}"),
        })?;
        let failure = accept_check(&spec, &inputs).or_else(|| {
            super::host_path_refusal(&spec, &self.inner.layout.host_path_allow).map(|message| {
                PodFailure {
                    reason: "Forbidden".into(),
                    message,
                }
            })
        });
        let entry = PodEntry::new(
            key.clone(),
            spec,
            labels,
            annotations,
            jiff::Timestamp::now(),
            failure.clone(),
        );
        let report = entry.report(&self.inner.layout.host_ip);
        let deadline = entry.spec.active_deadline_seconds;
        if failure.is_none() {
            adopt::save_pod(&self.pod_dir(&entry.key), &entry, spec_json);
        }
        self.pods().insert(key.uid.clone(), entry);
        match failure {
            Some(f) => {
                warn!(pod = %key.name, reason = %f.reason, message = %f.message, "pod rejected")
            }
            None => {
                info!(pod = %key.name, uid = %key.uid, "pod accepted");
                let this = self.clone();
                let uid = key.uid.clone();
                tokio::spawn(async move { this.run_pod(uid, inputs).await });
                if let Some(seconds) = deadline {
                    let this = self.clone();
                    let uid = key.uid.clone();
                    tokio::spawn(async move { this.enforce_deadline(uid, seconds).await });
                }
            }
        }
        self.inner.changed.notify_one();
        Ok(report)
    }

    /// The pod task: init containers one by one, then every app container.
    async fn run_pod(&self, uid: String, inputs: RunInputs) {
        let Some(entry) = self.pods().get(&uid).cloned() else {
            return;
        };
        let layout = &self.inner.layout;
        let claims = &inputs.volume_data.claims;
        if let Err(e) =
            crate::volumes::wait_attached(claims, &layout.ebs_device_dir, layout.volume_attach_wait)
                .await
        {
            warn!(pod = %entry.key.name, error = %e, "volume not attached");
            self.update(&uid, |p| {
                p.failure = Some(PodFailure {
                    reason: "FailedAttachVolume".into(),
                    message: e.to_string(),
                })
            });
            self.save_runs(&uid);
            return;
        }
        {
            // Under the lifecycle lock: a removal that came first has cleaned up, and
            // one that comes later waits, so no volume (or tmpfs mount) is left behind.
            let _guard = entry.lifecycle.lock().await;
            if self.pods().get(&uid).is_none_or(|p| p.stopping) {
                return;
            }
            if let Err(e) = self.prepare_volumes(&uid, &inputs.volume_data) {
                warn!(pod = %entry.key.name, error = %e, "volumes not prepared");
                self.update(&uid, |p| {
                    p.failure = Some(PodFailure {
                        reason: "FailedMount".into(),
                        message: e.to_string(),
                    })
                });
                self.save_runs(&uid);
                return;
            }
        }
        if let Err(failure) = self.allocate_gpus(&uid).await {
            warn!(pod = %entry.key.name, reason = %failure.reason, message = %failure.message, "GPUs not allocated");
            self.update(&uid, |p| p.failure = Some(failure));
            self.save_runs(&uid);
            return;
        }
        let inits = entry.containers.iter().filter(|c| c.init).count();
        for index in 0..inits {
            match supervise(self, &uid, index, &inputs, false).await {
                Outcome::Completed => continue,
                Outcome::Failed | Outcome::Stopped => return,
            }
        }
        let apps = (inits..entry.containers.len()).map(|index| {
            let inputs = &inputs;
            let uid = &uid;
            async move { supervise(self, uid, index, inputs, false).await }
        });
        futures::future::join_all(apps).await;
    }

    /// Fails the pod with reason DeadlineExceeded once it has been active
    /// `seconds`, stopping its containers (the kubelet's activeDeadlineSeconds).
    pub(super) async fn enforce_deadline(&self, uid: String, seconds: i64) {
        tokio::time::sleep(Duration::from_secs(seconds.max(0) as u64)).await;
        let finished = self
            .pods()
            .get(&uid)
            .is_none_or(|p| p.stopping || p.ended());
        if finished {
            return;
        }
        info!(
            uid,
            seconds, "activeDeadlineSeconds passed; stopping the pod"
        );
        // The verdict first, as the kubelet does: the pod is Failed the moment its
        // deadline passes, whatever its containers' exits look like.
        self.update(&uid, |p| {
            p.failure = Some(PodFailure {
                reason: "DeadlineExceeded".into(),
                message: format!("pod was active longer than activeDeadlineSeconds ({seconds}s)"),
            });
        });
        self.save_runs(&uid);
        if let Err(e) = self.stop(&uid, None, false).await {
            warn!(uid, error = %e, "pod not stopped at its deadline");
        }
    }

    /// Adopts the pods a previous agent process left (see `adopt`): returns how many.
    pub async fn adopt(&self) -> usize {
        let mut adopted = 0;
        for (saved, runs) in adopt::saved(&self.inner.layout.pod_dir) {
            let name = format!("{}/{}", saved.namespace, saved.name);
            let accepted_at = saved.accepted_at;
            let result = match saved.entry(&runs) {
                Ok(entry) => self.adopt_pod(entry, accepted_at, runs).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => adopted += 1,
                Err(e) => warn!(pod = name, error = %e, "pod not adopted"),
            }
        }
        adopted
    }

    /// Observes an adopted pod's containers in containerd and supervises them
    /// again: a task still running is watched, one that stopped has its exit
    /// recorded, one never started is started.
    async fn adopt_pod(
        &self,
        mut entry: PodEntry,
        accepted_at: jiff::Timestamp,
        runs: adopt::Runs,
    ) -> Result<(), PodError> {
        let key = entry.key.clone();
        let deadline = entry.spec.active_deadline_seconds;
        let mut found = Vec::new();
        for c in &mut entry.containers {
            let (restart_count, started) = runs.of(&c.name);
            let observed = self.inner.ctrd.observe(&c.id).await?;
            c.restart_count = restart_count;
            c.state = match &observed {
                Some(o) if o.status == TaskStatus::Running => ContainerState::Running {
                    started_at: started.unwrap_or_else(jiff::Timestamp::now),
                },
                Some(o) if o.status == TaskStatus::Stopped => {
                    ContainerState::exited(o.exit_status as i32, started, o.exited_at)
                }
                _ => ContainerState::creating(),
            };
            // A task that never started (or is paused, or unknown) is started afresh.
            found.push(matches!(&observed, Some(o) if matches!(o.status, TaskStatus::Running | TaskStatus::Stopped)));
        }
        entry.refresh_conditions();
        self.pods().insert(key.uid.clone(), entry);
        info!(pod = %key.name, uid = %key.uid, "pod adopted");
        // Secrets were not saved: volumes that need them stay as they are on disk,
        // and only containers that still have to be created need their mounts.
        if let Err(e) = self.prepare_volumes(&key.uid, &Default::default()) {
            info!(pod = %key.name, error = %e, "volumes kept as found on disk");
        }
        if let Some(seconds) = deadline {
            // What is left of activeDeadlineSeconds since the pod was accepted.
            let active = jiff::Timestamp::now().duration_since(accepted_at).as_secs();
            let this = self.clone();
            let uid = key.uid.clone();
            tokio::spawn(
                async move { this.enforce_deadline(uid, (seconds - active).max(0)).await },
            );
        }
        if self
            .pods()
            .get(&key.uid)
            .is_some_and(|p| p.failure.is_some())
        {
            // Finish what a failure started before the restart: nothing of it runs.
            let this = self.clone();
            let uid = key.uid.clone();
            tokio::spawn(async move { this.stop(&uid, None, false).await });
        }
        let this = self.clone();
        tokio::spawn(async move { this.run_adopted(key.uid, found).await });
        self.inner.changed.notify_one();
        Ok(())
    }

    /// The pod task of an adopted pod: init containers that already succeeded are
    /// skipped; containers with a task are watched again, the others started.
    async fn run_adopted(&self, uid: String, found: Vec<bool>) {
        let inputs = RunInputs::default();
        let Some(entry) = self.pods().get(&uid).cloned() else {
            return;
        };
        let inits = entry.containers.iter().filter(|c| c.init).count();
        for (index, (c, has_task)) in entry.containers.iter().zip(&found).take(inits).enumerate() {
            if matches!(c.state, ContainerState::Terminated { exit_code: 0, .. }) {
                continue;
            }
            match supervise(self, &uid, index, &inputs, *has_task).await {
                Outcome::Completed => continue,
                Outcome::Failed | Outcome::Stopped => return,
            }
        }
        let apps = (inits..entry.containers.len()).map(|index| {
            let (inputs, uid, found) = (&inputs, &uid, &found);
            async move { supervise(self, uid, index, inputs, found[index]).await }
        });
        futures::future::join_all(apps).await;
    }

    /// Allocates the GPUs a pod asks for, waiting up to the configured time
    /// for enough healthy, free ones. `Ok` without GPUs for pods that ask none.
    async fn allocate_gpus(&self, uid: &str) -> Result<(), PodFailure> {
        let Some(spec) = self.pods().get(uid).map(|p| p.spec.clone()) else {
            return Ok(());
        };
        let want = crate::gpu::alloc::pod_gpus(&spec).unwrap_or(0);
        if want == 0 {
            return Ok(());
        }
        let mut allocated = false;
        let claim = |healthy: &[crate::gpu::alloc::Gpu]| {
            let mut pods = self.pods();
            let held: BTreeSet<String> = pods
                .values()
                .filter(|p| p.key.uid != uid && p.holds_gpus())
                .flat_map(|p| p.gpus.iter().map(|g| g.uuid.clone()))
                .collect();
            let Some(entry) = pods.get_mut(uid) else {
                return Claim::Done;
            };
            if entry.stopping {
                return Claim::Done;
            }
            match crate::gpu::alloc::pick(healthy, &held, want) {
                Ok(picked) => {
                    info!(pod = %entry.key.name, gpus = ?picked.iter().map(|g| &g.uuid).collect::<Vec<_>>(), "GPUs allocated");
                    entry.gpus = picked;
                    allocated = true;
                    Claim::Done
                }
                Err(why) => Claim::Short(why),
            }
        };
        self.inner.gpus.allocate(claim).await?;
        if allocated {
            self.save_runs(uid);
            self.inner.changed.notify_one();
        }
        Ok(())
    }
}

/// Why a pod cannot be run as given, checked before anything is started: the
/// spec, image references, volumes and probes.
fn accept_check(spec: &PodSpec, inputs: &RunInputs) -> Option<PodFailure> {
    let invalid = |message: String| {
        Some(PodFailure {
            reason: "InvalidPodSpec".into(),
            message,
        })
    };
    if let Err(e) = spec::validate(spec) {
        return invalid(e.to_string());
    }
    if let Err(e) = crate::gpu::alloc::pod_gpus(spec) {
        return invalid(e);
    }
    for c in spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
    {
        let image = c.image.as_deref().unwrap_or_default();
        if let Err(e) = crate::runtime::reference::ImageRef::parse(image) {
            let message = format!("container {:?}: invalid image name {image:?}: {e}", c.name);
            return Some(PodFailure {
                reason: "InvalidImageName".into(),
                message,
            });
        }
        if let Err(e) = super::probing::validate(c) {
            return invalid(e);
        }
    }
    crate::volumes::validate(spec, &inputs.volume_data)
        .err()
        .and_then(|e| invalid(e.to_string()))
}
