//! Accepting a pod and its task: init containers in order, each to a successful
//! exit, then the app containers, supervised concurrently; and the pod's
//! activeDeadlineSeconds.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::PodSpec;
use orca_proto::types::v1 as pb;
use tracing::{info, warn};

use super::supervise::Outcome;
use super::{PodEntry, PodError, PodKey, PodManager, RunInputs};
use crate::spec;
use crate::status::PodFailure;

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
            self.save_pod(&entry, spec_json);
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
            match self.supervise(&uid, index, &inputs, false).await {
                Outcome::Completed => continue,
                Outcome::Failed | Outcome::Stopped => return,
            }
        }
        let apps = (inits..entry.containers.len()).map(|index| {
            let inputs = &inputs;
            let uid = &uid;
            async move { self.supervise(uid, index, inputs, false).await }
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
