//! The pods this agent runs: accepting them, bringing their containers up in
//! containerd, watching their tasks, restarting per policy, stopping them, and
//! reporting only what was observed.
//!
//! Each pod gets one background task that pulls and starts its containers in
//! spec order; each started container gets a watcher that waits on the
//! containerd task (`Tasks.Wait`) and records the exit. Every change wakes the
//! heartbeat ([`PodManager::changed`]) so the control plane hears of it at once.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::PodSpec;
use orca_proto::types::v1 as pb;
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::runtime::pull::Credential;
use crate::runtime::{Containerd, ImageInfo, Puller, RuntimeError, TaskStatus};
use crate::spec::{self, PullPolicy, RestartPolicy, SpecInput};
use crate::status::{self, ContainerState, PodFailure};

/// Label on every container: the pod uid.
pub const LABEL_POD_UID: &str = "orca.research/pod-uid";
/// Label on every container: `namespace/name` of the pod.
pub const LABEL_POD: &str = "orca.research/pod";
/// Label on every container: the container name in the pod spec.
pub const LABEL_CONTAINER: &str = "orca.research/container";

/// SIGTERM.
const SIGTERM: u32 = 15;
/// SIGKILL.
const SIGKILL: u32 = 9;
/// Kubernetes' default terminationGracePeriodSeconds.
const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// Timings of the pod lifecycle (configurable so tests run them short).
#[derive(Debug, Clone)]
pub struct Timings {
    /// First restart back-off; doubles per restart (the kubelet's 10 s).
    pub backoff_base: Duration,
    /// Longest restart back-off (the kubelet's 5 min).
    pub backoff_max: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Self {
            backoff_base: Duration::from_secs(10),
            backoff_max: Duration::from_secs(300),
        }
    }
}

/// Identity of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodKey {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Uid.
    pub uid: String,
}

/// Errors of the pod manager's API.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    /// The request does not describe a pod this agent can take.
    #[error("invalid pod: {reason}")]
    Invalid {
        /// What is wrong.
        reason: String,
    },
    /// No pod with this uid runs here.
    #[error("no pod with uid {uid} on this node")]
    NotFound {
        /// Pod uid.
        uid: String,
    },
    /// No such container in the pod.
    #[error("pod {uid} has no container {container:?}")]
    NoContainer {
        /// Pod uid.
        uid: String,
        /// Container asked for.
        container: String,
    },
    /// containerd failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

#[derive(Debug, Clone)]
struct ContainerEntry {
    name: String,
    image: String,
    image_id: String,
    id: String,
    state: ContainerState,
    last_state: Option<ContainerState>,
    restart_count: u32,
}

#[derive(Debug, Clone)]
struct PodEntry {
    key: PodKey,
    spec: PodSpec,
    policy: RestartPolicy,
    accepted_at: jiff::Timestamp,
    failure: Option<PodFailure>,
    stopping: bool,
    containers: Vec<ContainerEntry>,
    /// Held while containers are created or started and while the pod is stopped,
    /// so a stop never races a start into a leaked container.
    lifecycle: Arc<tokio::sync::Mutex<()>>,
}

impl PodEntry {
    fn report(&self, host_ip: &str) -> pb::PodReport {
        // A pod being stopped is not restarted: its phase is final once its tasks stop.
        let policy = if self.stopping {
            RestartPolicy::Never
        } else {
            self.policy
        };
        let states: Vec<&ContainerState> = self.containers.iter().map(|c| &c.state).collect();
        let phase = status::phase(policy, self.failure.as_ref(), &states);
        let statuses = self
            .containers
            .iter()
            .map(|c| pb::ContainerStatus {
                name: c.name.clone(),
                state: Some(c.state.to_pb()),
                last_state: c.last_state.as_ref().map(ContainerState::to_pb),
                ready: matches!(c.state, ContainerState::Running { .. }),
                restart_count: c.restart_count as i32,
                image: c.image.clone(),
                image_id: c.image_id.clone(),
                container_id: format!("containerd://{}", c.id),
            })
            .collect();
        let (reason, message) = self
            .failure
            .as_ref()
            .map(|f| (f.reason.clone(), f.message.clone()))
            .unwrap_or_default();
        pb::PodReport {
            r#ref: Some(pb::PodRef {
                namespace: self.key.namespace.clone(),
                name: self.key.name.clone(),
                uid: self.key.uid.clone(),
            }),
            status: Some(pb::PodStatus {
                phase: phase as i32,
                reason,
                message,
                container_statuses: statuses,
                pod_ip: host_ip.to_owned(),
                host_ip: host_ip.to_owned(),
                start_time: Some(status::to_pb_time(self.accepted_at)),
                observed_at: Some(status::to_pb_time(jiff::Timestamp::now())),
                ..Default::default()
            }),
        }
    }
}

/// Where things live on this node and how to reach them.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Directory for pod logs: `<dir>/<ns>_<name>_<uid>/<container>/<restart>.log`.
    pub log_dir: PathBuf,
    /// The `orca-logger` binary the shim starts for every task.
    pub logger: PathBuf,
    /// The node's IP, reported as hostIP and podIP (pods share the host network).
    pub host_ip: String,
}

/// Runs pods on containerd.
#[derive(Clone)]
pub struct PodManager {
    inner: Arc<Inner>,
}

struct Inner {
    ctrd: Containerd,
    puller: Puller,
    layout: Layout,
    timings: Timings,
    pods: Mutex<BTreeMap<String, PodEntry>>,
    changed: Notify,
}

impl PodManager {
    /// A manager over `ctrd`.
    pub fn new(
        ctrd: Containerd,
        insecure_registries: Vec<String>,
        layout: Layout,
        timings: Timings,
    ) -> Self {
        let puller = Puller::new(ctrd.clone(), insecure_registries);
        Self {
            inner: Arc::new(Inner {
                ctrd,
                puller,
                layout,
                timings,
                pods: Mutex::new(BTreeMap::new()),
                changed: Notify::new(),
            }),
        }
    }

    /// Resolves when some pod's observed state changed.
    pub async fn changed(&self) {
        self.inner.changed.notified().await
    }

    fn pods(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, PodEntry>> {
        self.inner.pods.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, uid: &str, f: impl FnOnce(&mut PodEntry)) {
        if let Some(entry) = self.pods().get_mut(uid) {
            f(entry);
        }
        self.inner.changed.notify_one();
    }

    fn set_state(&self, uid: &str, index: usize, state: ContainerState) {
        self.update(uid, |p| {
            if let Some(c) = p.containers.get_mut(index) {
                c.state = state;
            }
        });
    }

    /// Accepts a pod and starts it in the background. Idempotent per uid. A spec
    /// the agent cannot run is accepted as a Failed pod with the reason.
    pub fn run(
        &self,
        key: PodKey,
        spec_json: &str,
        credentials: Vec<Credential>,
    ) -> Result<pb::PodReport, PodError> {
        if key.uid.is_empty() || key.name.is_empty() {
            return Err(PodError::Invalid {
                reason: "pod uid and name are required".into(),
            });
        }
        if let Some(existing) = self.pods().get(&key.uid) {
            return Ok(existing.report(&self.inner.layout.host_ip));
        }
        let spec: PodSpec = serde_json::from_str(spec_json).map_err(|e| PodError::Invalid {
            reason: format!("spec is not a Kubernetes PodSpec: {e}"),
        })?;
        let failure = spec::validate(&spec).err().map(|e| PodFailure {
            reason: "InvalidPodSpec".into(),
            message: e.to_string(),
        });
        let policy = RestartPolicy::of(&spec).unwrap_or(RestartPolicy::Never);
        let short_uid: String = key
            .uid
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(12)
            .collect();
        let containers = spec
            .containers
            .iter()
            .map(|c| ContainerEntry {
                name: c.name.clone(),
                image: c.image.clone().unwrap_or_default(),
                image_id: String::new(),
                id: format!("{}-{}", short_uid, c.name),
                state: ContainerState::creating(),
                last_state: None,
                restart_count: 0,
            })
            .collect();
        let entry = PodEntry {
            key: key.clone(),
            spec,
            policy,
            accepted_at: jiff::Timestamp::now(),
            failure: failure.clone(),
            stopping: false,
            containers,
            lifecycle: Arc::default(),
        };
        let report = entry.report(&self.inner.layout.host_ip);
        self.pods().insert(key.uid.clone(), entry);
        match failure {
            Some(f) => {
                warn!(pod = %key.name, reason = %f.reason, message = %f.message, "pod rejected")
            }
            None => {
                info!(pod = %key.name, uid = %key.uid, "pod accepted");
                let this = self.clone();
                tokio::spawn(async move { this.start_pod(key.uid, credentials).await });
            }
        }
        self.inner.changed.notify_one();
        Ok(report)
    }

    async fn start_pod(&self, uid: String, credentials: Vec<Credential>) {
        let Some(entry) = self.pods().get(&uid).cloned() else {
            return;
        };
        for (index, container) in entry.spec.containers.iter().enumerate() {
            if self.pods().get(&uid).is_none_or(|p| p.stopping) {
                return;
            }
            let image = container.image.as_deref().unwrap_or_default();
            let policy = PullPolicy::of(container).unwrap_or(PullPolicy::IfNotPresent);
            let info = match self.inner.puller.ensure(image, policy, &credentials).await {
                Ok(info) => info,
                Err(e) => {
                    let reason = match e {
                        RuntimeError::ImageNeverPull { .. } => "ErrImageNeverPull",
                        _ => "ErrImagePull",
                    };
                    warn!(pod = %entry.key.name, image, error = %e, "image pull failed");
                    self.fail(&uid, index, reason, e.to_string());
                    return;
                }
            };
            let _lifecycle = entry.lifecycle.lock().await;
            if self.pods().get(&uid).is_none_or(|p| p.stopping) {
                return;
            }
            self.update(&uid, |p| {
                if let Some(c) = p.containers.get_mut(index) {
                    c.image_id = format!("{}@{}", info.name, info.digest);
                }
            });
            if let Err(e) = self.create(&entry, index, &info).await {
                warn!(pod = %entry.key.name, container = %container.name, error = %e, "container not created");
                self.fail(&uid, index, "CreateContainerError", e.to_string());
                return;
            }
            if let Err(e) = self.start(&uid, index).await {
                warn!(pod = %entry.key.name, container = %container.name, error = %e, "container not started");
                self.fail(&uid, index, "RunContainerError", e.to_string());
                return;
            }
        }
    }

    fn fail(&self, uid: &str, index: usize, reason: &str, message: String) {
        self.update(uid, |p| {
            if let Some(c) = p.containers.get_mut(index) {
                c.state = ContainerState::Waiting {
                    reason: reason.into(),
                    message: message.clone(),
                };
            }
            p.failure = Some(PodFailure {
                reason: reason.into(),
                message,
            });
        });
    }

    async fn create(
        &self,
        entry: &PodEntry,
        index: usize,
        image: &ImageInfo,
    ) -> Result<(), PodError> {
        let container = &entry.spec.containers[index];
        let id = &entry.containers[index].id;
        let spec = spec::runtime_spec(&SpecInput {
            container,
            pod: &entry.spec,
            image: &image.config,
            hostname: &entry.key.name,
            namespace: self.inner.ctrd.namespace(),
            container_id: id,
        })
        .map_err(|e| PodError::Invalid {
            reason: e.to_string(),
        })?;
        let labels = HashMap::from([
            (LABEL_POD_UID.to_owned(), entry.key.uid.clone()),
            (
                LABEL_POD.to_owned(),
                format!("{}/{}", entry.key.namespace, entry.key.name),
            ),
            (LABEL_CONTAINER.to_owned(), container.name.clone()),
        ]);
        self.inner
            .ctrd
            .create_container(id, image, &spec, labels)
            .await?;
        Ok(())
    }

    fn log_path(&self, key: &PodKey, container: &str, restart: u32) -> PathBuf {
        self.inner
            .layout
            .log_dir
            .join(format!("{}_{}_{}", key.namespace, key.name, key.uid))
            .join(container)
            .join(format!("{restart}.log"))
    }

    /// Starts the container's task, records what containerd then reports, and
    /// spawns its watcher.
    ///
    /// Boxed: the watcher it spawns calls it again to restart, and the future types
    /// would otherwise be cyclic.
    fn start<'a>(
        &'a self,
        uid: &'a str,
        index: usize,
    ) -> futures::future::BoxFuture<'a, Result<(), PodError>> {
        Box::pin(self.start_inner(uid, index))
    }

    async fn start_inner(&self, uid: &str, index: usize) -> Result<(), PodError> {
        let (key, c) = {
            let pods = self.pods();
            let p = pods
                .get(uid)
                .ok_or_else(|| PodError::NotFound { uid: uid.into() })?;
            (p.key.clone(), p.containers[index].clone())
        };
        let log = self.log_path(&key, &c.name, c.restart_count);
        let uri = format!(
            "binary://{}?log={}",
            self.inner.layout.logger.display(),
            log.display()
        );
        self.inner.ctrd.start_task(&c.id, &uri).await?;
        let started_at = jiff::Timestamp::now();
        // Report only what containerd says now: the task may already have exited.
        let observed = self.inner.ctrd.observe(&c.id).await?;
        match observed {
            Some(o) if o.status == TaskStatus::Running => {
                self.set_state(uid, index, ContainerState::Running { started_at })
            }
            Some(o) if o.status == TaskStatus::Stopped => self.set_state(
                uid,
                index,
                ContainerState::exited(o.exit_status as i32, Some(started_at), o.exited_at),
            ),
            other => warn!(container = %c.id, observed = ?other, "task not running after start"),
        }
        info!(pod = %key.name, container = %c.name, id = %c.id, "container started");
        let this = self.clone();
        let uid = uid.to_owned();
        tokio::spawn(async move { this.watch(uid, index, started_at).await });
        Ok(())
    }

    /// Waits for the container's task to exit, records it, and restarts it when
    /// the restart policy says so.
    async fn watch(&self, uid: String, index: usize, started_at: jiff::Timestamp) {
        let Some(id) = self
            .pods()
            .get(&uid)
            .map(|p| p.containers[index].id.clone())
        else {
            return;
        };
        let (code, finished) = match self.inner.ctrd.wait(&id).await {
            Ok(exit) => exit,
            Err(e) => {
                warn!(container = %id, error = %e, "lost track of task");
                return;
            }
        };
        let state = ContainerState::exited(
            code as i32,
            Some(started_at),
            finished.or(Some(jiff::Timestamp::now())),
        );
        info!(container = %id, exit_code = code, "container exited");
        let mut restart = None;
        self.update(&uid, |p| {
            let policy = p.policy;
            let stopping = p.stopping;
            if let Some(c) = p.containers.get_mut(index) {
                c.state = state.clone();
                if !stopping && status::restarts(policy, code as i32) {
                    restart = Some(c.restart_count);
                }
            }
        });
        let Some(count) = restart else { return };
        let backoff = self
            .inner
            .timings
            .backoff_base
            .saturating_mul(1 << count.min(16))
            .min(self.inner.timings.backoff_max);
        self.update(&uid, |p| {
            if let Some(c) = p.containers.get_mut(index) {
                c.last_state = Some(state);
                c.state = ContainerState::Waiting {
                    reason: "CrashLoopBackOff".into(),
                    message: format!(
                        "back-off {}s restarting failed container",
                        backoff.as_secs()
                    ),
                };
            }
        });
        tokio::time::sleep(backoff).await;
        let Some(lifecycle) = self.pods().get(&uid).map(|p| p.lifecycle.clone()) else {
            return;
        };
        let _lifecycle = lifecycle.lock().await;
        let still_wanted = self.pods().get(&uid).is_some_and(|p| !p.stopping);
        if !still_wanted {
            return;
        }
        self.update(&uid, |p| {
            if let Some(c) = p.containers.get_mut(index) {
                c.restart_count += 1;
            }
        });
        let restarted = async {
            self.inner.ctrd.delete_task(&id).await?;
            self.start(&uid, index).await
        };
        if let Err(e) = restarted.await {
            warn!(container = %id, error = %e, "restart failed");
            self.fail(&uid, index, "RunContainerError", e.to_string());
        }
    }

    /// Re-reads every container believed running from containerd and corrects
    /// what it no longer confirms.
    pub async fn refresh(&self) {
        let running: Vec<(String, usize, String)> = self
            .pods()
            .values()
            .flat_map(|p| {
                p.containers
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| matches!(c.state, ContainerState::Running { .. }))
                    .map(|(i, c)| (p.key.uid.clone(), i, c.id.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        for (uid, index, id) in running {
            match self.inner.ctrd.observe(&id).await {
                Ok(Some(o)) if o.status == TaskStatus::Running => {}
                Ok(Some(o)) if o.status == TaskStatus::Stopped => self.set_state(
                    &uid,
                    index,
                    ContainerState::exited(o.exit_status as i32, None, o.exited_at),
                ),
                Ok(other) => self.set_state(
                    &uid,
                    index,
                    ContainerState::Waiting {
                        reason: "ContainerMissing".into(),
                        message: format!(
                            "containerd reports {other:?} for a container believed running"
                        ),
                    },
                ),
                Err(e) => warn!(container = %id, error = %e, "cannot observe task"),
            }
        }
    }

    /// Every pod's report.
    pub fn reports(&self) -> Vec<pb::PodReport> {
        self.pods()
            .values()
            .map(|p| p.report(&self.inner.layout.host_ip))
            .collect()
    }

    /// One pod's report.
    pub fn report(&self, uid: &str) -> Result<pb::PodReport, PodError> {
        self.pods()
            .get(uid)
            .map(|p| p.report(&self.inner.layout.host_ip))
            .ok_or_else(|| PodError::NotFound { uid: uid.into() })
    }

    /// Stops a pod's containers: SIGTERM, up to `grace` (or the pod's
    /// terminationGracePeriodSeconds), then SIGKILL. With `remove`, also deletes
    /// the containers, snapshots and logs and forgets the pod.
    pub async fn stop(
        &self,
        uid: &str,
        grace: Option<Duration>,
        remove: bool,
    ) -> Result<pb::PodReport, PodError> {
        let (ids, pod_grace, key, lifecycle) = {
            let mut pods = self.pods();
            let p = pods
                .get_mut(uid)
                .ok_or_else(|| PodError::NotFound { uid: uid.into() })?;
            p.stopping = true;
            let ids: Vec<String> = p.containers.iter().map(|c| c.id.clone()).collect();
            let g = p
                .spec
                .termination_grace_period_seconds
                .map(|s| Duration::from_secs(s.max(0) as u64));
            (ids, g, p.key.clone(), p.lifecycle.clone())
        };
        // Wait out a create/start in flight; after this no new task can start.
        let _lifecycle = lifecycle.lock().await;
        let grace = grace.or(pod_grace).unwrap_or(DEFAULT_GRACE);
        let ctrd = &self.inner.ctrd;
        let stops = ids.iter().map(|id| async move {
            match ctrd.observe(id).await? {
                Some(o) if o.status != TaskStatus::Stopped => {
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
        // Record the final states from containerd before anything is deleted.
        for (index, id) in ids.iter().enumerate() {
            if let Some(o) = ctrd.observe(id).await?
                && o.status == TaskStatus::Stopped
            {
                let started = self
                    .pods()
                    .get(uid)
                    .and_then(|p| match p.containers[index].state {
                        ContainerState::Running { started_at } => Some(started_at),
                        ContainerState::Terminated { started_at, .. } => started_at,
                        ContainerState::Waiting { .. } => None,
                    });
                self.set_state(
                    uid,
                    index,
                    ContainerState::exited(o.exit_status as i32, started, o.exited_at),
                );
            }
        }
        let report = self.report(uid)?;
        if remove {
            for id in &ids {
                ctrd.delete_task(id).await?;
                ctrd.delete_container(id).await?;
            }
            let dir = self
                .inner
                .layout
                .log_dir
                .join(format!("{}_{}_{}", key.namespace, key.name, key.uid));
            if let Err(e) = std::fs::remove_dir_all(&dir)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                warn!(dir = %dir.display(), error = %e, "logs not removed");
            }
            self.pods().remove(uid);
            info!(pod = %key.name, uid, "pod removed");
        }
        self.inner.changed.notify_one();
        Ok(report)
    }

    /// The log file of a container's current run (or the previous one).
    pub fn log_file(
        &self,
        uid: &str,
        container: &str,
        previous: bool,
    ) -> Result<PathBuf, PodError> {
        let pods = self.pods();
        let p = pods
            .get(uid)
            .ok_or_else(|| PodError::NotFound { uid: uid.into() })?;
        let c = if container.is_empty() && p.containers.len() == 1 {
            &p.containers[0]
        } else {
            p.containers
                .iter()
                .find(|c| c.name == container)
                .ok_or_else(|| PodError::NoContainer {
                    uid: uid.into(),
                    container: container.into(),
                })?
        };
        let run = if previous {
            c.restart_count.saturating_sub(1)
        } else {
            c.restart_count
        };
        Ok(self.log_path(&p.key, &c.name, run))
    }
}
