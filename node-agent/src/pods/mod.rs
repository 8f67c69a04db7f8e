//! The pods this agent runs, kept as the kubelet keeps them, and reported only as
//! observed from containerd.
//!
//! Each pod has one task (`start`) that runs its init containers in order, each
//! to a successful exit, and then supervises its app containers concurrently.
//! A container's lifecycle is a state machine ([`lifecycle`]: pulling, created,
//! running, terminated, backing off, ...) whose transitions decide the pull
//! back-off, the restart policy and the CrashLoopBackOff back-off, driven
//! against a [`lifecycle::ContainerRuntime`]; `supervise` is its containerd
//! implementation for one container of a pod. `stop` ends a pod: SIGTERM, the
//! grace period, SIGKILL. Every change wakes the heartbeat
//! ([`PodManager::changed`]) so the control plane hears of it at once.
//!
//! [`PodManager`] holds the pods (`mod.rs`: the entries, reports and queries);
//! its methods are in three files: here, `start` (accepting, the pod task,
//! GPUs, adopting after an agent restart) and `stop` (stopping and removal,
//! cut-off, interruption notices). The other pieces are types of their own:
//! `lifecycle` (the state machine), `supervise` (`PodContainer`, the runtime and
//! ledger of one container), `probing` (`Prober`: probes and preStop hooks),
//! `sandbox` (`Sandbox`: the namespaces a pod's containers share), `gpus`
//! (`Gpus`: the monitor, allocation waits, CDI), `adopt` (the pod files a
//! restarted agent reads), `target` (the container run that logs, exec and
//! attach address, and the live runs that port-forward and stats work on),
//! `interrupt` (`Handshake`: the checkpoint handshake of an interruption
//! notice, through the `/run/orca` directory of every container).

mod adopt;
mod gpus;
mod interrupt;
pub mod lifecycle;
mod probing;
mod sandbox;
mod start;
mod stop;
mod supervise;
mod target;

pub use interrupt::{CHECKPOINT_WAIT, RUN_ORCA};
pub use target::{LivePod, LiveRun, RunTarget};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, PodSpec};
use orca_proto::types::v1 as pb;
use tokio::sync::Notify;

use crate::runtime::pull::Credential;
use crate::runtime::{Containerd, Puller, RuntimeError};
use crate::spec::RestartPolicy;
use crate::status::{self, ContainerState, PodFailure};

/// Label on every container: the pod uid.
pub const LABEL_POD_UID: &str = "orca.research/pod-uid";
/// Label on every container: `namespace/name` of the pod.
pub const LABEL_POD: &str = "orca.research/pod";
/// Label on every container: the container name in the pod spec.
pub const LABEL_CONTAINER: &str = "orca.research/container";

/// Timings of the pod lifecycle (configurable so tests run them short).
#[derive(Debug, Clone)]
pub struct Timings {
    /// First restart back-off; doubles per restart (the kubelet's 10 s).
    pub backoff_base: Duration,
    /// Longest restart back-off (the kubelet's 5 min).
    pub backoff_max: Duration,
    /// A container that ran this long restarts with the first back-off again
    /// (the kubelet's 10 min).
    pub backoff_reset: Duration,
    /// Image pull attempts before the pod fails with ErrImagePull (the kubelet
    /// retries forever; ORCA fails the pod so it is never Pending forever).
    pub pull_attempts: u32,
}

impl Default for Timings {
    fn default() -> Self {
        Self {
            backoff_base: Duration::from_secs(10),
            backoff_max: Duration::from_secs(300),
            backoff_reset: Duration::from_secs(600),
            pull_attempts: 5,
        }
    }
}

impl Timings {
    /// The back-off before restart number `n` (0-based): base × 2ⁿ, capped.
    pub fn backoff(&self, n: u32) -> Duration {
        self.backoff_base
            .saturating_mul(1 << n.min(16))
            .min(self.backoff_max)
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

impl PodKey {
    /// Checks that the key can name files and containers on this host: the uid a
    /// UUID in canonical form (the API server's and the control plane's), the
    /// namespace and name DNS subdomains. The pod's directory is
    /// `<namespace>_<name>_<uid>` under the agent's pod dir: none of the three can
    /// hold a `/` or be `..`, so no pod reaches outside its own directory.
    pub fn validate(&self) -> Result<(), PodError> {
        let invalid = |reason: String| Err(PodError::Invalid { reason });
        match uuid::Uuid::try_parse(&self.uid) {
            Ok(u) if u.hyphenated().to_string() == self.uid => {}
            _ => return invalid(format!("pod uid {:?} is not a UUID", self.uid)),
        }
        for (what, value) in [("namespace", &self.namespace), ("name", &self.name)] {
            if !dns_subdomain(value) {
                return invalid(format!(
                    "pod {what} {value:?} is not a DNS subdomain (a-z, 0-9, '-', '.'; at most 253)"
                ));
            }
        }
        Ok(())
    }

    /// The first 12 alphanumerics of the uid: the prefix of the pod's containerd
    /// container ids.
    fn short_uid(&self) -> String {
        self.uid
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(12)
            .collect()
    }
}

/// A Kubernetes DNS subdomain: dot-separated labels of a-z, 0-9 and '-', each
/// starting and ending with an alphanumeric, 253 characters at most.
fn dns_subdomain(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
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
    /// The pod is being stopped and removed; it can be sent again once it is gone.
    #[error("pod {uid} is being removed; try again")]
    Removing {
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
    /// The container is not in a state that allows the operation (exec into a
    /// stopped container, logs of one still waiting to start, no previous run).
    #[error("{0}")]
    NotRunning(String),
    /// containerd failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// What the agent knows of one container of a pod.
#[derive(Debug, Clone)]
struct ContainerEntry {
    name: String,
    /// An init container (they come first, in spec order).
    init: bool,
    image: String,
    image_id: String,
    /// containerd container id.
    id: String,
    state: ContainerState,
    last_state: Option<ContainerState>,
    restart_count: u32,
    /// The readiness probe's verdict for this run; `None` when it has none.
    ready: Option<bool>,
    /// Why a liveness or startup probe killed this run.
    probe_failure: Option<String>,
}

impl ContainerEntry {
    /// Running and, if it has a readiness probe, passing it.
    fn is_ready(&self) -> bool {
        matches!(self.state, ContainerState::Running { .. }) && self.ready.unwrap_or(true)
    }
}

#[derive(Debug, Clone)]
struct PodEntry {
    key: PodKey,
    spec: PodSpec,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    policy: RestartPolicy,
    accepted_at: jiff::Timestamp,
    failure: Option<PodFailure>,
    stopping: bool,
    /// Init containers first, then app containers, each in spec order.
    containers: Vec<ContainerEntry>,
    /// The namespaces its containers share, once its holder runs.
    shared: Option<crate::spec::PodNamespaces>,
    /// Its volumes on this host, once prepared.
    volumes: Option<Arc<crate::volumes::Prepared>>,
    /// Condition type → (status, last transition).
    conditions: BTreeMap<&'static str, (bool, jiff::Timestamp)>,
    /// Held while containers are created or started and while the pod is stopped,
    /// so a stop never races a start into a leaked container.
    lifecycle: Arc<tokio::sync::Mutex<()>>,
    /// Which acceptance of this uid the entry is: a supervisor of an earlier one
    /// (the pod was removed and sent again) stops instead of running on.
    incarnation: u64,
    /// The GPUs allocated to the pod, once allocated.
    gpus: Vec<crate::gpu::alloc::Gpu>,
    /// An interruption notice reached it (the handshake runs once).
    interrupted: bool,
    /// The checkpoint location its containers confirmed after a notice.
    checkpoint: String,
}

/// Source of [`PodEntry::incarnation`].
static INCARNATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl PodEntry {
    /// A pod as accepted (or adopted): one entry per init and app container, in
    /// spec order, each waiting to be created; containerd ids are
    /// `<first 12 uid alphanumerics>-<container name>`.
    fn new(
        key: PodKey,
        spec: PodSpec,
        labels: BTreeMap<String, String>,
        annotations: BTreeMap<String, String>,
        accepted_at: jiff::Timestamp,
        failure: Option<PodFailure>,
    ) -> Self {
        let short_uid = key.short_uid();
        let inits = spec.init_containers.iter().flatten().map(|c| (c, true));
        let containers = inits
            .chain(spec.containers.iter().map(|c| (c, false)))
            .map(|(c, init)| ContainerEntry {
                name: c.name.clone(),
                init,
                image: c.image.clone().unwrap_or_default(),
                image_id: String::new(),
                id: format!("{short_uid}-{}", c.name),
                state: ContainerState::creating(),
                last_state: None,
                restart_count: 0,
                ready: None,
                probe_failure: None,
            })
            .collect();
        let mut entry = Self {
            key,
            policy: RestartPolicy::of(&spec).unwrap_or(RestartPolicy::Never),
            spec,
            labels,
            annotations,
            accepted_at,
            failure,
            stopping: false,
            containers,
            shared: None,
            volumes: None,
            conditions: BTreeMap::new(),
            lifecycle: Arc::default(),
            incarnation: INCARNATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            gpus: Vec::new(),
            interrupted: false,
            checkpoint: String::new(),
        };
        entry.refresh_conditions();
        entry
    }

    /// The spec of container `index` (init containers first).
    fn container_spec(&self, index: usize) -> Option<&Container> {
        let inits = self.spec.init_containers.as_deref().unwrap_or_default();
        match inits.get(index) {
            Some(c) => Some(c),
            None => self.spec.containers.get(index - inits.len()),
        }
    }

    fn initialized(&self) -> bool {
        self.containers
            .iter()
            .filter(|c| c.init)
            .all(|c| matches!(c.state, ContainerState::Terminated { exit_code: 0, .. }))
    }

    /// Whether the pod still holds its GPUs: until it ends (Succeeded or
    /// Failed with every container stopped).
    fn holds_gpus(&self) -> bool {
        !self.gpus.is_empty() && !self.ended()
    }

    fn containers_ready(&self) -> bool {
        self.containers
            .iter()
            .filter(|c| !c.init)
            .all(ContainerEntry::is_ready)
    }

    /// Re-derives the conditions, keeping transition times of unchanged ones.
    fn refresh_conditions(&mut self) {
        let now = jiff::Timestamp::now();
        let ready = self.containers_ready() && self.failure.is_none() && !self.stopping;
        for (kind, value) in [
            ("PodScheduled", true),
            ("Initialized", self.initialized()),
            ("ContainersReady", ready),
            ("Ready", ready),
        ] {
            let slot = self.conditions.entry(kind).or_insert((value, now));
            if slot.0 != value {
                *slot = (value, now);
            }
        }
    }

    /// The pod's phase by Kubernetes' rules.
    fn phase(&self) -> pb::PodPhase {
        // A pod being stopped is not restarted: its phase is final once its tasks stop.
        let policy = if self.stopping {
            RestartPolicy::Never
        } else {
            self.policy
        };
        let app: Vec<&ContainerState> = self
            .containers
            .iter()
            .filter(|c| !c.init)
            .map(|c| &c.state)
            .collect();
        status::phase(policy, self.failure.as_ref(), !self.initialized(), &app)
    }

    /// Whether the pod has ended (Succeeded or Failed).
    fn ended(&self) -> bool {
        matches!(self.phase(), pb::PodPhase::Succeeded | pb::PodPhase::Failed)
    }

    fn report(&self, host_ip: &str) -> pb::PodReport {
        let phase = self.phase();
        let to_pb = |c: &ContainerEntry| pb::ContainerStatus {
            name: c.name.clone(),
            state: Some(c.state.to_pb()),
            last_state: c.last_state.as_ref().map(ContainerState::to_pb),
            ready: c.is_ready()
                || c.init && matches!(c.state, ContainerState::Terminated { exit_code: 0, .. }),
            restart_count: c.restart_count as i32,
            image: c.image.clone(),
            image_id: c.image_id.clone(),
            container_id: format!("containerd://{}", c.id),
        };
        let (reason, message) = self
            .failure
            .as_ref()
            .map(|f| (f.reason.clone(), f.message.clone()))
            .unwrap_or_default();
        let conditions = self
            .conditions
            .iter()
            .map(|(kind, (value, since))| pb::PodCondition {
                r#type: (*kind).to_owned(),
                status: if *value { "True" } else { "False" }.to_owned(),
                last_transition_time: Some(status::to_pb_time(*since)),
                ..Default::default()
            })
            .collect();
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
                conditions,
                init_container_statuses: self
                    .containers
                    .iter()
                    .filter(|c| c.init)
                    .map(to_pb)
                    .collect(),
                container_statuses: self
                    .containers
                    .iter()
                    .filter(|c| !c.init)
                    .map(to_pb)
                    .collect(),
                pod_ip: host_ip.to_owned(),
                host_ip: host_ip.to_owned(),
                start_time: Some(status::to_pb_time(self.accepted_at)),
                observed_at: Some(status::to_pb_time(jiff::Timestamp::now())),
                gpu_uuids: self.gpus.iter().map(|g| g.uuid.clone()).collect(),
            }),
            checkpoint: self.checkpoint.clone(),
        }
    }
}

/// Where things live on this node and how to reach them.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Directory for pods: `<dir>/<ns>_<name>_<uid>/` holds logs and volumes.
    pub pod_dir: PathBuf,
    /// The `orca-logger` binary the shim starts for every task.
    pub logger: PathBuf,
    /// The `orca-pause` binary that holds each pod's shared namespaces.
    pub pause: PathBuf,
    /// Rotation of container log files.
    pub log_rotation: crate::logs::Rotation,
    /// This node's name (downward API `spec.nodeName`).
    pub node_name: String,
    /// This node's CPU, millicores (downward API default for unset CPU limits).
    pub node_cpu_millis: u64,
    /// This node's memory, bytes (downward API default for unset memory limits).
    pub node_memory_bytes: u64,
    /// The node's IP, reported as hostIP and podIP (pods share the host network).
    pub host_ip: String,
    /// CDI spec directories, later ones taking precedence.
    pub cdi_dirs: Vec<PathBuf>,
    /// How long a GPU pod waits for healthy, free GPUs.
    pub gpu_wait: Duration,
    /// Where EBS volumes appear by id (`/dev/disk/by-id`).
    pub ebs_device_dir: PathBuf,
    /// How long a pod waits for its EBS volumes to be attached.
    pub volume_attach_wait: Duration,
    /// The most processes a pod may hold at once; `None` for no limit.
    pub pids_limit: Option<i64>,
    /// Where hostPath volumes may point: these directories and what is below
    /// them. Empty: anywhere (a simulated host, where the control plane's Pod
    /// Security admission decides). An EC2 host holds its node's identity, so
    /// the AMI's unit sets a list.
    pub host_path_allow: Vec<PathBuf>,
}

/// A container's `pids.max` under a pod limit of `limit`. ORCA's containers
/// have no pod cgroup above them (the kubelet sets `podPidsLimit` on one), so
/// the pod's limit is split evenly among its app containers, which run
/// together: the pod as a whole never holds more. An init container runs alone
/// and gets all of it.
pub fn pids_share(limit: Option<i64>, init: bool, app_containers: usize) -> Option<i64> {
    let limit = limit?;
    if init {
        return Some(limit);
    }
    let n = i64::try_from(app_containers.max(1)).unwrap_or(i64::MAX);
    Some((limit / n).max(1))
}

/// Why a hostPath volume is outside the allow-list, or None. Paths are
/// compared component by component after refusing `..` (no symlink games:
/// the agent checks the path as written, and a `..` could climb out of it).
pub fn host_path_refusal(spec: &PodSpec, allow: &[PathBuf]) -> Option<String> {
    if allow.is_empty() {
        return None;
    }
    for v in spec.volumes.iter().flatten() {
        let Some(hp) = &v.host_path else { continue };
        let path = std::path::Path::new(&hp.path);
        let climbs = path
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir));
        if climbs || !path.is_absolute() || !allow.iter().any(|a| path.starts_with(a)) {
            return Some(format!(
                "volume {:?}: hostPath {:?} is not under an allowed directory of this host ({})",
                v.name,
                hp.path,
                allow
                    .iter()
                    .map(|a| a.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    None
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
    gpus: gpus::Gpus,
    prober: probing::Prober,
}

/// What a pod's supervisors need besides the pod itself.
#[derive(Debug, Clone, Default)]
pub struct RunInputs {
    /// Registry credentials from imagePullSecrets.
    pub credentials: Vec<Credential>,
    /// ConfigMap and Secret content and the service account token for volumes.
    pub volume_data: crate::volumes::VolumeData,
}

impl PodManager {
    /// A manager over `ctrd`.
    pub fn new(
        ctrd: Containerd,
        registries: crate::runtime::pull::RegistryAccess,
        layout: Layout,
        timings: Timings,
        gpus: crate::gpu::monitor::Monitor,
    ) -> Self {
        let puller = Puller::new(ctrd.clone(), registries);
        let prober = probing::Prober::new(ctrd.clone(), layout.host_ip.clone());
        let gpus = gpus::Gpus::new(gpus, layout.gpu_wait, layout.cdi_dirs.clone());
        Self {
            inner: Arc::new(Inner {
                ctrd,
                puller,
                layout,
                timings,
                pods: Mutex::new(BTreeMap::new()),
                changed: Notify::new(),
                gpus,
                prober,
            }),
        }
    }

    /// The GPU monitor.
    pub fn gpus(&self) -> &crate::gpu::monitor::Monitor {
        self.inner.gpus.monitor()
    }

    /// The telemetry's samples with each process attributed to the pod and
    /// container it runs in, and each device to the pod holding it.
    pub fn attribute(&self, telemetry: &crate::gpu::monitor::Telemetry) -> Vec<pb::GpuSample> {
        gpus::attribute(telemetry, self.inner.ctrd.namespace(), self.pods().values())
    }

    /// The current run of container `container` of pod `uid` (or the previous run),
    /// where an empty name means the pod's only app container.
    ///
    /// Errors: no such pod or container; no name given for a pod with several app
    /// containers; `previous` of a container that has not restarted.
    pub fn target(
        &self,
        uid: &str,
        container: &str,
        previous: bool,
    ) -> Result<RunTarget, PodError> {
        let pods = self.pods();
        let p = pods
            .get(uid)
            .ok_or_else(|| PodError::NotFound { uid: uid.into() })?;
        target::choose(p, uid, container, previous, |key, name, run| {
            self.log_path(key, name, run)
        })
    }

    /// Every pod with its running containers (possibly none).
    pub fn live(&self) -> Vec<LivePod> {
        self.pods().values().map(target::live).collect()
    }

    /// Pod `uid` with its running containers; fails when no container of it runs.
    pub fn live_pod(&self, uid: &str) -> Result<LivePod, PodError> {
        let pod = self
            .pods()
            .get(uid)
            .map(target::live)
            .ok_or_else(|| PodError::NotFound { uid: uid.into() })?;
        if pod.running.is_empty() {
            return Err(PodError::NotRunning(format!(
                "pod {} has no running container",
                pod.key.name
            )));
        }
        Ok(pod)
    }

    /// Whether `target`'s run is over: the pod is gone, the container has started
    /// another run, or its task is no longer running.
    pub fn run_ended(&self, target: &RunTarget) -> bool {
        self.run_exit(target).is_some()
    }

    /// How `target`'s run ended: `Some(exit code)` once it is over (`None` inside
    /// when the code is unknown: the pod is gone, or the task vanished); `None`
    /// while it runs.
    pub fn run_exit(&self, target: &RunTarget) -> Option<Option<i32>> {
        let pods = self.pods();
        let c = pods
            .get(&target.uid)
            .and_then(|p| p.containers.iter().find(|c| c.name == target.container));
        target::run_exit(c, target)
    }

    /// Whether the pod is being stopped or has failed as a whole, or is no
    /// longer the acceptance `incarnation` (its containers must not be started
    /// or restarted any more).
    fn stopping(&self, uid: &str, incarnation: u64) -> bool {
        self.pods()
            .get(uid)
            .is_none_or(|p| p.stopping || p.failure.is_some() || p.incarnation != incarnation)
    }

    /// Writes the pod's restart counts, failure and GPUs to its directory
    /// (`adopt`) after a change.
    fn save_runs(&self, uid: &str) {
        let pods = self.pods();
        if let Some(p) = pods.get(uid) {
            adopt::save_runs(&self.pod_dir(&p.key), p);
        }
    }

    /// The pod's shared namespaces, starting its sandbox on first use.
    fn sandbox(&self, uid: &str) -> Result<crate::spec::PodNamespaces, PodError> {
        let (key, existing) = {
            let pods = self.pods();
            let p = pods
                .get(uid)
                .ok_or_else(|| PodError::NotFound { uid: uid.into() })?;
            (p.key.clone(), p.shared.clone())
        };
        if let Some(shared) = existing {
            return Ok(shared);
        }
        let dir = self.pod_dir(&key);
        let shared = sandbox::Sandbox { dir: &dir }.ensure(&self.inner.layout.pause, &key.name)?;
        self.update(uid, |p| p.shared = Some(shared.clone()));
        Ok(shared)
    }

    /// The containerd connection.
    pub fn containerd(&self) -> &Containerd {
        &self.inner.ctrd
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
            entry.refresh_conditions();
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

    /// A pod-level failure: the pod ends Failed with this reason.
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
        self.save_runs(uid);
        // A failed pod runs nothing: stop its other containers, as the kubelet would
        // never show a Failed pod with running containers.
        let this = self.clone();
        let uid = uid.to_owned();
        tokio::spawn(async move {
            if let Err(e) = this.stop(&uid, None, false).await {
                tracing::warn!(uid, error = %e, "failed pod not stopped");
            }
        });
    }

    fn pod_dir(&self, key: &PodKey) -> PathBuf {
        self.inner
            .layout
            .pod_dir
            .join(format!("{}_{}_{}", key.namespace, key.name, key.uid))
    }

    /// Writes a running pod's file volumes again from new content (a
    /// ConfigMap or Secret changed); `false` when the pod is unknown.
    pub fn update_volumes(
        &self,
        uid: &str,
        data: &crate::volumes::VolumeData,
    ) -> Result<bool, crate::volumes::VolumeError> {
        let Some(entry) = self.pods().get(uid).cloned() else {
            return Ok(false);
        };
        // One being stopped may have its volumes cleaned up already: writing
        // them would bring a tmpfs back that nothing unmounts.
        if entry.stopping || entry.ended() {
            return Ok(false);
        }
        let info = self.pod_info(&entry);
        crate::volumes::update_files(&self.pod_dir(&entry.key), &info, &entry.spec, data)?;
        Ok(true)
    }

    /// Materialises the pod's volumes (idempotent) and keeps them for its containers.
    fn prepare_volumes(
        &self,
        uid: &str,
        data: &crate::volumes::VolumeData,
    ) -> Result<(), crate::volumes::VolumeError> {
        let Some(entry) = self.pods().get(uid).cloned() else {
            return Ok(());
        };
        let layout = &self.inner.layout;
        let prepared = crate::volumes::prepare(
            &self.pod_dir(&entry.key),
            &self.pod_info(&entry),
            &entry.spec,
            data,
            &layout.ebs_device_dir,
        )?;
        self.update(uid, |p| p.volumes = Some(Arc::new(prepared)));
        Ok(())
    }

    /// What a pod's volumes may show of it (downward API).
    fn pod_info<'a>(&'a self, entry: &'a PodEntry) -> crate::volumes::PodInfo<'a> {
        let layout = &self.inner.layout;
        crate::volumes::PodInfo {
            name: &entry.key.name,
            namespace: &entry.key.namespace,
            uid: &entry.key.uid,
            labels: &entry.labels,
            annotations: &entry.annotations,
            node_name: &layout.node_name,
            host_ip: &layout.host_ip,
            node_cpu_millis: layout.node_cpu_millis,
            node_memory_bytes: layout.node_memory_bytes,
        }
    }

    fn log_path(&self, key: &PodKey, container: &str, restart: u32) -> PathBuf {
        self.pod_dir(key)
            .join(container)
            .join(format!("{restart}.log"))
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
                // Any task: its supervisor is waiting on it and records what becomes of
                // it (a slow shim can report Unknown for a live task for a while).
                Ok(Some(_)) => {}
                Ok(None) => self.set_state(
                    &uid,
                    index,
                    ContainerState::Waiting {
                        reason: "ContainerMissing".into(),
                        message: "containerd has no task for a container believed running".into(),
                    },
                ),
                Err(e) => tracing::warn!(container = %id, error = %e, "cannot observe task"),
            }
        }
    }

    /// How many pods have not ended or still have a container running.
    pub fn unfinished(&self) -> usize {
        let running = |p: &PodEntry| {
            p.containers
                .iter()
                .any(|c| matches!(c.state, ContainerState::Running { .. }))
        };
        self.pods()
            .values()
            .filter(|p| !p.ended() || running(p))
            .count()
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let t = Timings {
            backoff_base: Duration::from_secs(10),
            backoff_max: Duration::from_secs(300),
            ..Default::default()
        };
        let seq: Vec<u64> = (0..7).map(|n| t.backoff(n).as_secs()).collect();
        assert_eq!(seq, [10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(t.backoff(60).as_secs(), 300, "no overflow");
    }

    fn key(namespace: &str, name: &str, uid: &str) -> PodKey {
        PodKey {
            namespace: namespace.into(),
            name: name.into(),
            uid: uid.into(),
        }
    }

    /// Finding 1 of the hardening review: a uid (or name) that is a path.
    #[test]
    fn keys_that_could_name_paths_outside_the_pod_dir_are_refused() {
        let uid = "0b3c8a4e-5d1f-4c2a-9e7b-1f2d3c4b5a69";
        assert!(key("default", "web", uid).validate().is_ok());
        for (ns, name, uid) in [
            ("default", "web", "../../../../tmp/x"),
            ("default", "web", "0B3C8A4E-5D1F-4C2A-9E7B-1F2D3C4B5A69"),
            ("default", "web", "0b3c8a4e5d1f4c2a9e7b1f2d3c4b5a69"),
            ("default", "web", ""),
            ("..", "web", uid),
            ("default", "../x", uid),
            ("default", "a/b", uid),
            ("default", "", uid),
            ("default", "-a", uid),
        ] {
            let k = key(ns, name, uid);
            assert!(k.validate().is_err(), "{k:?} accepted");
        }
    }

    #[test]
    fn a_pods_pids_limit_is_split_among_its_app_containers() {
        assert_eq!(pids_share(None, false, 3), None);
        assert_eq!(pids_share(Some(4096), false, 1), Some(4096));
        assert_eq!(pids_share(Some(4096), false, 3), Some(1365));
        assert_eq!(
            pids_share(Some(4096), true, 3),
            Some(4096),
            "init runs alone"
        );
        assert_eq!(pids_share(Some(10), false, 64), Some(1), "never zero");
        assert_eq!(pids_share(Some(40), false, 0), Some(40));
    }

    #[test]
    fn host_paths_outside_the_allow_list_are_refused() {
        let spec = |path: &str| -> PodSpec {
            serde_json::from_value(serde_json::json!({
                "containers": [{"name": "c", "image": "x"}],
                "volumes": [{"name": "h", "hostPath": {"path": path}}],
            }))
            .unwrap()
        };
        let allow = [PathBuf::from("/mnt"), PathBuf::from("/data/sets")];
        assert_eq!(
            host_path_refusal(&spec("/"), &[]),
            None,
            "no list: anywhere"
        );
        assert_eq!(host_path_refusal(&spec("/mnt"), &allow), None);
        assert_eq!(host_path_refusal(&spec("/mnt/a/b"), &allow), None);
        assert_eq!(host_path_refusal(&spec("/data/sets/x"), &allow), None);
        for bad in [
            "/",
            "/etc",
            "/mntx",
            "/mnt/../etc",
            "mnt/a",
            "/data",
            "/var/lib/orca-agent",
        ] {
            let why = host_path_refusal(&spec(bad), &allow).unwrap_or_else(|| panic!("{bad}"));
            assert!(why.contains("not under an allowed directory"), "{why}");
        }
    }
}
