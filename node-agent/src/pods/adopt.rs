//! Surviving an agent restart: every accepted pod is written to its directory
//! (`pod.json`: identity and spec; `containers.json`: restart counts and start
//! times), and a starting agent adopts what it finds. A container whose task
//! still runs is watched again without being restarted; one that stopped while the
//! agent was away has its exit recorded and the restart policy applied; one never
//! started is started. Secrets are not written: an adopted pod that must pull
//! again does so without the registry credentials it came with.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tracing::warn;

use super::{PodEntry, PodError, PodKey};
use crate::status::ContainerState;

/// The pod as accepted.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Saved {
    pub(super) namespace: String,
    pub(super) name: String,
    uid: String,
    spec_json: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    pub(super) accepted_at: jiff::Timestamp,
}

/// Per container: how often it restarted and when its current run started; and
/// the pod's failure, once it has one (a failed pod is never brought back to life).
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct Runs {
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

/// Writes `pod.json` for a newly accepted pod into its directory `dir`.
pub(super) fn save_pod(dir: &Path, entry: &PodEntry, spec_json: &str) {
    let saved = Saved {
        namespace: entry.key.namespace.clone(),
        name: entry.key.name.clone(),
        uid: entry.key.uid.clone(),
        spec_json: spec_json.to_owned(),
        labels: entry.labels.clone(),
        annotations: entry.annotations.clone(),
        accepted_at: entry.accepted_at,
    };
    let result = std::fs::create_dir_all(dir).and_then(|()| {
        write_atomic(
            &dir.join("pod.json"),
            &serde_json::to_vec(&saved).unwrap_or_default(),
        )
    });
    if let Err(e) = result {
        warn!(pod = %entry.key.name, error = %e, "pod not saved; it will not be adopted after a restart");
    }
}

/// Writes `containers.json` (restart counts, start times, failure, GPUs) of
/// the pod whose directory is `dir`.
pub(super) fn save_runs(dir: &Path, p: &PodEntry) {
    let containers = p
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
    let runs = Runs {
        containers,
        failure,
        gpus: p.gpus.clone(),
    };
    let path = dir.join("containers.json");
    if let Err(e) = write_atomic(&path, &serde_json::to_vec(&runs).unwrap_or_default()) {
        warn!(pod = %p.key.name, error = %e, "restart counts not saved");
    }
}

/// The pods saved under `pod_dir` by a previous agent process.
pub(super) fn saved(pod_dir: &Path) -> Vec<(Saved, Runs)> {
    let Ok(dirs) = std::fs::read_dir(pod_dir) else {
        return Vec::new();
    };
    let mut found = Vec::new();
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
        found.push((saved, runs));
    }
    found
}

impl Saved {
    /// The pod as saved, its containers not yet observed: a pod that had
    /// failed stays failed (being stopped), with its GPUs.
    pub(super) fn entry(self, runs: &Runs) -> Result<PodEntry, PodError> {
        let key = PodKey {
            namespace: self.namespace,
            name: self.name,
            uid: self.uid,
        };
        let spec: k8s_openapi::api::core::v1::PodSpec = serde_json::from_str(&self.spec_json)
            .map_err(|e| PodError::Invalid {
                reason: e.to_string(),
            })?;
        let mut entry = PodEntry::new(
            key,
            spec,
            self.labels,
            self.annotations,
            self.accepted_at,
            runs.failure
                .clone()
                .map(|(reason, message)| crate::status::PodFailure { reason, message }),
        );
        entry.stopping = entry.failure.is_some();
        entry.gpus = runs.gpus.clone();
        Ok(entry)
    }
}

impl Runs {
    /// Container `name`'s restart count and the start of its current run.
    pub(super) fn of(&self, name: &str) -> (u32, Option<jiff::Timestamp>) {
        self.containers.get(name).cloned().unwrap_or_default()
    }
}
