//! Surviving an agent restart: every accepted pod is written to its directory
//! (`pod.json`: identity and spec; `containers.json`: restart counts and start
//! times), and a starting agent adopts what it finds. A container whose task
//! still runs is watched again without being restarted; one that stopped while the
//! agent was away has its exit recorded and the restart policy applied; one never
//! started is started. Secrets are not written: an adopted pod that must pull
//! again does so without the registry credentials it came with.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::supervise::Outcome;
use super::{PodEntry, PodKey, PodManager, RunInputs};
use crate::runtime::TaskStatus;
use crate::status::ContainerState;

/// The pod as accepted.
#[derive(Debug, Serialize, Deserialize)]
struct Saved {
    namespace: String,
    name: String,
    uid: String,
    spec_json: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    accepted_at: jiff::Timestamp,
}

/// Per container: how often it restarted and when its current run started; and
/// the pod's failure, once it has one (a failed pod is never brought back to life).
#[derive(Debug, Default, Serialize, Deserialize)]
struct Runs {
    containers: BTreeMap<String, (u32, Option<jiff::Timestamp>)>,
    #[serde(default)]
    failure: Option<(String, String)>,
    /// The GPUs allocated to the pod.
    #[serde(default)]
    gpus: Vec<crate::gpu::alloc::Gpu>,
}

fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(tmp, path)
}

impl PodManager {
    /// Writes `pod.json` for a newly accepted pod.
    pub(super) fn save_pod(&self, entry: &PodEntry, spec_json: &str) {
        let dir = self.pod_dir(&entry.key);
        let saved = Saved {
            namespace: entry.key.namespace.clone(),
            name: entry.key.name.clone(),
            uid: entry.key.uid.clone(),
            spec_json: spec_json.to_owned(),
            labels: entry.labels.clone(),
            annotations: entry.annotations.clone(),
            accepted_at: entry.accepted_at,
        };
        let result = std::fs::create_dir_all(&dir).and_then(|()| {
            write_atomic(
                &dir.join("pod.json"),
                &serde_json::to_vec(&saved).unwrap_or_default(),
            )
        });
        if let Err(e) = result {
            warn!(pod = %entry.key.name, error = %e, "pod not saved; it will not be adopted after a restart");
        }
    }

    /// Writes `containers.json` (restart counts, start times) after a change.
    pub(super) fn save_runs(&self, uid: &str) {
        let Some((key, runs)) = self.pods().get(uid).map(|p| {
            let runs = p
                .containers
                .iter()
                .map(|c| {
                    let started = match c.state {
                        ContainerState::Running { started_at } => Some(started_at),
                        _ => None,
                    };
                    (c.name.clone(), (c.restart_count, started))
                })
                .collect();
            let failure = p
                .failure
                .as_ref()
                .map(|f| (f.reason.clone(), f.message.clone()));
            (
                p.key.clone(),
                Runs {
                    containers: runs,
                    failure,
                    gpus: p.gpus.clone(),
                },
            )
        }) else {
            return;
        };
        let path = self.pod_dir(&key).join("containers.json");
        if let Err(e) = write_atomic(&path, &serde_json::to_vec(&runs).unwrap_or_default()) {
            warn!(pod = %key.name, error = %e, "restart counts not saved");
        }
    }

    /// Adopts the pods a previous agent process left: returns how many.
    pub async fn adopt(&self) -> usize {
        let Ok(dirs) = std::fs::read_dir(&self.inner.layout.pod_dir) else {
            return 0;
        };
        let mut adopted = 0;
        for dir in dirs.flatten() {
            let Ok(raw) = std::fs::read(dir.path().join("pod.json")) else {
                continue;
            };
            let Ok(saved) = serde_json::from_slice::<Saved>(&raw) else {
                warn!(dir = %dir.path().display(), "unreadable pod.json; not adopted");
                continue;
            };
            let runs: Runs = std::fs::read(dir.path().join("containers.json"))
                .ok()
                .and_then(|r| serde_json::from_slice(&r).ok())
                .unwrap_or_default();
            if let Err(e) = self.adopt_pod(saved, runs).await {
                warn!(dir = %dir.path().display(), error = %e, "pod not adopted");
            } else {
                adopted += 1;
            }
        }
        adopted
    }

    async fn adopt_pod(&self, saved: Saved, runs: Runs) -> Result<(), super::PodError> {
        let key = PodKey {
            namespace: saved.namespace,
            name: saved.name,
            uid: saved.uid,
        };
        let spec: k8s_openapi::api::core::v1::PodSpec = serde_json::from_str(&saved.spec_json)
            .map_err(|e| super::PodError::Invalid {
                reason: e.to_string(),
            })?;
        let mut entry = PodEntry::new(
            key.clone(),
            spec,
            saved.labels,
            saved.annotations,
            saved.accepted_at,
            runs.failure
                .clone()
                .map(|(reason, message)| crate::status::PodFailure { reason, message }),
        );
        // A pod that had failed stays failed: nothing of it is started again.
        entry.stopping = entry.failure.is_some();
        entry.gpus = runs.gpus.clone();
        let deadline = entry.spec.active_deadline_seconds;
        let mut found = Vec::new();
        for c in &mut entry.containers {
            let (restart_count, started) =
                runs.containers.get(&c.name).cloned().unwrap_or_default();
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
            let active = jiff::Timestamp::now()
                .duration_since(saved.accepted_at)
                .as_secs();
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
            match self.supervise(&uid, index, &inputs, *has_task).await {
                Outcome::Completed => continue,
                Outcome::Failed | Outcome::Stopped => return,
            }
        }
        let apps = (inits..entry.containers.len()).map(|index| {
            let (inputs, uid, found) = (&inputs, &uid, &found);
            async move { self.supervise(uid, index, inputs, found[index]).await }
        });
        futures::future::join_all(apps).await;
    }
}
