//! An [`InstancePlayer`] plays the EC2 instances of one cluster that moto only
//! pretends to run: it boots a real `orca-agent` for each of them, which reads
//! the instance's user data from its own [`ImdsServer`] and joins, and it
//! "powers the host off" when the instance goes away.
//!
//! # Design
//!
//! The player polls moto directly (never an [`super::Ec2Proxy`] in front of it,
//! so the proxy's call log holds only the control plane's calls) with
//! DescribeInstances filtered by `tag:orca.research/cluster=<cluster>`, every
//! [`PlayerSettings::poll`], on its own thread with its own tokio runtime (tests
//! may be blocking or async).
//!
//! - An instance newly seen `running` whose type is not held ([`InstancePlayer::hold`])
//!   boots: its user data (DescribeInstanceAttribute `userData`, base64-decoded)
//!   is served by a fresh [`ImdsServer`] with `instance-id` = its id and
//!   `local-ipv4` = `127.0.0.1`, and an `orca-agent` starts as a plain process
//!   with `--imds-endpoint`, a free loopback port, the containerd namespace
//!   `<namespace_prefix>-<node>` (`<node>` from the `orca.research/node` tag,
//!   the instance id without one), state and log under `<dir>/<instance id>/`,
//!   `--insecure-registry` and [`PlayerSettings::agent_args`]. An instance is
//!   booted at most once (and started again after a stop, below). Nothing is ever sent to moto's made-up instance
//!   addresses or to 169.254.169.254.
//! - A played instance that is no longer `pending`/`running` (moto goes straight
//!   to `terminated`; `shutting-down`, `stopping` and `stopped` count too) or
//!   is no longer listed is powered off: the agent gets SIGKILL, then every
//!   task of its containerd namespace is killed and deleted with its container,
//!   and the pods' `orca-pause` processes (from the `pause.pid` files under its
//!   state directory) are killed. [`Played::powered_off`] records when.
//! - An agent that exits by itself because its port was taken in between is
//!   started again on a fresh port (up to [`PORT_ATTEMPTS`] times).
//! - An agent that exits with [`POWER_OFF_EXIT`] powered its host off (its
//!   dead-man's switch): the player applies the instance's shutdown behaviour
//!   in moto (DescribeInstanceAttribute `instanceInitiatedShutdownBehavior`,
//!   then TerminateInstances or StopInstances; moto's default is `stop`), and
//!   the next poll powers the host off.
//! - A `stopped` (or `stopping`) instance is powered off likewise, but keeps its
//!   directory and agent port; when moto says it runs again (StartInstances),
//!   its agent starts again on the same state directory (its identity: no
//!   join) and port ([`Played::restarts`] counts it).
//! - EBS volumes moto says are attached to a played host appear in that host's
//!   `--ebs-device-dir` as loop devices named as Nitro names them, and go when
//!   moto says they are detached or the host is powered off
//!   ([`super::ec2_volumes`]).
//! - Dropping the player stops the thread and powers off every host it plays.
//!
//! What moto does with instance states (moto 5.2.5): RunInstances answers
//! `pending`, but the instance is `running` in DescribeInstances at once;
//! TerminateInstances answers `shutting-down` and the instance is `terminated`
//! at once, and stays listed as such until moto is reset.
//!
//! # Limitations
//!
//! - The [`ImdsServer`]s cannot be stopped: each keeps a thread and a loopback
//!   port until the test process exits.
//! - Hosts share the machine's network namespace: pods' ports are the machine's.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::{Filter, InstanceAttributeName};
use base64::Engine as _;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use orca_agent::deadman::POWER_OFF_EXIT;
use orca_control_plane::cloud::ec2::launch::{TAG_CLUSTER, TAG_NODE};

use super::containerd::output;
use super::daemon::Daemon;
use super::error::{Result, io_err};
use super::imds::ImdsServer;
use super::tools::{free_port, process_cmdline, process_running, try_require, workspace_bin};
use crate::eventually::try_eventually_blocking;

/// How many times an agent is started on a fresh port when the one
/// [`free_port`] gave was taken before the agent bound it.
const PORT_ATTEMPTS: u32 = 3;

/// How long killed processes (agent, `orca-pause`) get to disappear.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// How often a wait for a killed process looks again.
const KILL_POLL: Duration = Duration::from_millis(20);

/// Bounds on every `ctr` call of a power-off, so a containerd that is already
/// gone (a test dropping it first) cannot hang `Drop`.
const CTR_CONNECT_TIMEOUT: &str = "2s";
/// See [`CTR_CONNECT_TIMEOUT`].
const CTR_TIMEOUT: &str = "10s";

/// How many problems [`InstancePlayer::problems`] keeps (the latest).
const MAX_PROBLEMS: usize = 100;

/// What a player plays and how.
#[derive(Debug, Clone)]
pub struct PlayerSettings {
    /// moto's endpoint, `http://127.0.0.1:PORT` (not a proxy's).
    pub ec2_endpoint: String,
    /// The value of the `orca.research/cluster` tag of the instances to play.
    pub cluster: String,
    /// The containerd socket every agent uses.
    pub containerd_socket: PathBuf,
    /// Node `n`'s agent uses containerd namespace `<namespace_prefix>-<n>`.
    pub namespace_prefix: String,
    /// Passed to every agent as `--insecure-registry`.
    pub registry: String,
    /// Each instance's state directory and agent log live under `<dir>/<instance id>/`.
    /// Put it under the cluster's data directory when a `TestCluster` should also
    /// find the pods' `orca-pause` processes at teardown.
    pub dir: PathBuf,
    /// More flags for every agent (`--retry-ms=100`, back-off settings, ...).
    pub agent_args: Vec<String>,
    /// How often moto is asked (100 ms suits tests).
    pub poll: Duration,
}

/// An instance as the player last saw it in DescribeInstances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceInfo {
    /// Its id.
    pub instance_id: String,
    /// Its type, e.g. `g5.xlarge`.
    pub instance_type: String,
    /// Its state name: `pending`, `running`, `shutting-down`, `terminated`, ...
    pub state: String,
    /// The `orca.research/node` tag, when it has one.
    pub node: Option<String>,
    /// Every tag.
    pub tags: BTreeMap<String, String>,
}

/// An instance the player booted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Played {
    /// Its id.
    pub instance_id: String,
    /// The node name from its tag (its id without one).
    pub node: String,
    /// Its type.
    pub instance_type: String,
    /// The containerd namespace its agent uses.
    pub namespace: String,
    /// Its agent's PID (the latest, after a restart on a fresh port).
    pub agent_pid: u32,
    /// When its agent started.
    pub booted_at: Instant,
    /// When [`InstancePlayer::kill_agent`] killed its agent.
    pub agent_killed: Option<Instant>,
    /// When the host was powered off (the instance left `running`).
    pub powered_off: Option<Instant>,
    /// When its agent powered the host off itself (exit status
    /// [`POWER_OFF_EXIT`]), and the shutdown behaviour applied in moto.
    pub shut_itself_down: Option<(Instant, String)>,
    /// Stopped (not terminated): it boots again when moto says it runs.
    pub stopped: bool,
    /// How many times it was started again after a stop.
    pub restarts: u32,
}

/// A host being played.
struct Host {
    played: Played,
    /// `None` once killed or powered off.
    agent: Option<Daemon>,
    /// Serves the host's user data; kept for as long as the player.
    imds: ImdsServer,
    /// `<dir>/<instance id>`.
    dir: PathBuf,
    /// Agents started for it so far (more than one after a port clash).
    starts: u32,
    /// Length of the agent log when the current agent started.
    log_offset: u64,
    /// The instance type's GPUs (count, product name), which the host simulates.
    gpus: Option<(u32, String)>,
    /// The agent's port (kept across a stop and start, as an instance keeps its
    /// private address).
    port: u16,
}

#[derive(Default)]
struct State {
    /// Instance types not booted.
    held: BTreeSet<String>,
    /// Every instance booted, in boot order.
    hosts: Vec<Host>,
    /// DescribeInstances at the last successful poll.
    seen: Vec<InstanceInfo>,
    /// Successful polls so far.
    polls: u64,
    /// What went wrong (the latest [`MAX_PROBLEMS`]).
    problems: Vec<String>,
    /// EBS volumes' disks by volume id, with the instance each is attached to.
    disks: BTreeMap<String, (super::EbsDisk, Option<String>)>,
}

impl State {
    fn problem(&mut self, what: String) {
        tracing::warn!(problem = %what, "instance player");
        if self.problems.len() == MAX_PROBLEMS {
            self.problems.remove(0);
        }
        self.problems.push(what);
    }

    fn playing(&self, instance_id: &str) -> bool {
        self.hosts
            .iter()
            .any(|h| h.played.instance_id == instance_id)
    }

    fn host(&mut self, instance_id: &str) -> Option<&mut Host> {
        self.hosts
            .iter_mut()
            .find(|h| h.played.instance_id == instance_id)
    }
}

struct Shared {
    settings: PlayerSettings,
    agent: PathBuf,
    ctr: PathBuf,
    state: Mutex<State>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere must not stop the power-off at Drop.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Plays the EC2 instances of one cluster (see the module docs); stops and
/// powers off every host it plays when dropped.
pub struct InstancePlayer {
    shared: Arc<Shared>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for InstancePlayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstancePlayer")
            .field("settings", &self.shared.settings)
            .field("played", &self.played())
            .finish()
    }
}

impl InstancePlayer {
    /// Starts playing the instances `settings` names.
    ///
    /// # Errors
    ///
    /// When `ctr` is not installed or `settings.dir` cannot be made.
    ///
    /// # Panics
    ///
    /// When `orca-agent` is not built ([`workspace_bin`]).
    pub fn start(settings: PlayerSettings) -> Result<Self> {
        let ctr = try_require("ctr")?;
        let agent = workspace_bin("orca-agent");
        std::fs::create_dir_all(&settings.dir)
            .map_err(io_err(format!("creating {}", settings.dir.display())))?;
        let shared = Arc::new(Shared {
            settings,
            agent,
            ctr,
            state: Mutex::default(),
        });
        let (stop, stopped) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("orca-instance-player".into())
            .spawn({
                let shared = shared.clone();
                move || run(&shared, &stopped)
            })
            .map_err(io_err("starting the instance player thread"))?;
        Ok(Self {
            shared,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Instances of `instance_type` are not booted from now on (until
    /// [`InstancePlayer::release`]): to test a boot timeout.
    pub fn hold(&self, instance_type: &str) {
        self.shared.state().held.insert(instance_type.into());
    }

    /// Instances of `instance_type` boot again, those already running included.
    pub fn release(&self, instance_type: &str) {
        self.shared.state().held.remove(instance_type);
    }

    /// SIGKILLs the agent of `instance_id` alone (the instance stays running in
    /// moto, its containers keep running, its heartbeats stop) and waits until
    /// it is gone. Returns whether there was an agent to kill.
    pub fn kill_agent(&self, instance_id: &str) -> bool {
        let mut state = self.shared.state();
        let Some(host) = state.host(instance_id) else {
            return false;
        };
        let Some(agent) = host.agent.take() else {
            return false;
        };
        host.played.agent_killed = Some(Instant::now());
        let problem = sigkill_agent(agent).err();
        if let Some(p) = problem {
            state.problem(format!("{instance_id}: {p}"));
        }
        true
    }

    /// Every instance booted so far, in boot order.
    pub fn played(&self) -> Vec<Played> {
        self.shared
            .state()
            .hosts
            .iter()
            .map(|h| h.played.clone())
            .collect()
    }

    /// The cluster's instances as the last successful poll saw them (held ones included).
    pub fn seen(&self) -> Vec<InstanceInfo> {
        self.shared.state().seen.clone()
    }

    /// How many polls of moto have succeeded so far.
    pub fn polls(&self) -> u64 {
        self.shared.state().polls
    }

    /// What went wrong so far (failed polls, agents that could not start or
    /// exited by themselves, power-offs that left something behind).
    pub fn problems(&self) -> Vec<String> {
        self.shared.state().problems.clone()
    }

    /// The agent log of `instance_id` (empty when it never booted).
    pub fn agent_log(&self, instance_id: &str) -> String {
        std::fs::read_to_string(self.shared.settings.dir.join(instance_id).join("agent.log"))
            .unwrap_or_default()
    }

    /// Sets `meta-data/<key>` in instance `instance_id`'s metadata (a spot
    /// interruption notice, say); false when the player does not play it.
    pub fn set_metadata(&self, instance_id: &str, key: &str, value: &str) -> bool {
        self.shared
            .state()
            .host(instance_id)
            .map(|h| h.imds.set_meta(key, value))
            .is_some()
    }

    /// The requests the IMDS of `instance_id` has seen (`METHOD PATH STATUS`).
    pub fn imds_log(&self, instance_id: &str) -> Vec<String> {
        self.shared
            .state()
            .host(instance_id)
            .map(|h| h.imds.log())
            .unwrap_or_default()
    }
}

impl Drop for InstancePlayer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let shared = &self.shared;
        let mut state = shared.state();
        let problems: Vec<String> = state
            .hosts
            .iter_mut()
            .filter(|h| h.played.powered_off.is_none())
            .flat_map(|h| power_off(shared, h))
            .collect();
        for p in problems {
            state.problem(p);
        }
    }
}

/// The player's thread: poll, wait `poll` or until told to stop.
fn run(shared: &Shared, stopped: &mpsc::Receiver<()>) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            shared.state().problem(format!("no tokio runtime: {e}"));
            return;
        }
    };
    let client = rt.block_on(super::ec2_client(&shared.settings.ec2_endpoint));
    loop {
        poll_once(shared, &rt, &client);
        match stopped.recv_timeout(shared.settings.poll) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

fn poll_once(shared: &Shared, rt: &tokio::runtime::Runtime, client: &aws_sdk_ec2::Client) {
    let instances = match rt.block_on(cluster_instances(client, &shared.settings.cluster)) {
        Ok(instances) => instances,
        Err(e) => {
            shared.state().problem(format!("DescribeInstances: {e}"));
            return;
        }
    };
    // Asked before the state is locked: the lock is never held across a call.
    let volumes = rt.block_on(super::ec2_volumes::volumes(client));
    // Power off what left `running`, then restart agents that lost a port race.
    let mut shutdowns = Vec::new();
    let to_boot: Vec<InstanceInfo> = {
        let mut state = shared.state();
        state.polls += 1;
        state.seen = instances.clone();
        let mut problems = Vec::new();
        for host in state.hosts.iter_mut() {
            let now = instances
                .iter()
                .find(|i| i.instance_id == host.played.instance_id);
            let runs = now.is_some_and(|i| matches!(i.state.as_str(), "pending" | "running"));
            if host.played.powered_off.is_some() {
                if host.played.stopped && runs {
                    // Started again: the same disk (state directory), a fresh boot.
                    host.played.powered_off = None;
                    host.played.stopped = false;
                    host.played.restarts += 1;
                    host.starts = 0;
                    if let Err(e) = start_agent(shared, host) {
                        problems.push(format!(
                            "{}: restarting after a stop: {e}",
                            host.played.instance_id
                        ));
                    }
                }
                continue;
            }
            if !runs {
                problems.extend(power_off(shared, host));
                host.played.stopped =
                    now.is_some_and(|i| matches!(i.state.as_str(), "stopping" | "stopped"));
            } else if powered_itself_off(host) {
                shutdowns.push(host.played.instance_id.clone());
            } else {
                problems.extend(check_agent(shared, host));
            }
        }
        for p in problems {
            state.problem(p);
        }
        match volumes {
            Ok(volumes) => {
                let images = shared.settings.dir.join("ebs");
                let live: BTreeMap<String, PathBuf> = state
                    .hosts
                    .iter()
                    .filter(|h| h.played.powered_off.is_none())
                    .map(|h| (h.played.instance_id.clone(), h.dir.clone()))
                    .collect();
                let problems = super::ec2_volumes::sync(&mut state.disks, &images, &volumes, |i| {
                    live.get(i).cloned()
                });
                for p in problems {
                    state.problem(p);
                }
            }
            Err(e) => state.problem(format!("DescribeVolumes: {e}")),
        }
        instances
            .into_iter()
            .filter(|i| {
                i.state == "running"
                    && !state.held.contains(&i.instance_type)
                    && !state.playing(&i.instance_id)
            })
            .collect()
    };
    // Hosts whose agent powered them off: what EC2 does then, per the
    // instance's shutdown behaviour (the next poll powers the host off).
    for id in shutdowns {
        let applied = rt.block_on(apply_shutdown_behaviour(client, &id));
        let mut state = shared.state();
        match applied {
            Ok(behaviour) => {
                tracing::info!(instance = %id, %behaviour, "the host powered itself off");
                if let Some(host) = state.host(&id) {
                    host.played.shut_itself_down = Some((Instant::now(), behaviour));
                }
            }
            Err(e) => state.problem(format!("{id}: shutdown behaviour: {e}")),
        }
    }
    for instance in to_boot {
        let user_data = match rt.block_on(user_data(client, &instance.instance_id)) {
            Ok(u) => u,
            Err(e) => {
                shared
                    .state()
                    .problem(format!("{}: user data: {e}", instance.instance_id));
                continue;
            }
        };
        let gpus = match rt.block_on(gpus_of(client, &instance.instance_type)) {
            Ok(g) => g,
            Err(e) => {
                shared
                    .state()
                    .problem(format!("{}: instance type: {e}", instance.instance_id));
                continue;
            }
        };
        let mut state = shared.state();
        // Held or booted since the snapshot above: leave it.
        if state.held.contains(&instance.instance_type) || state.playing(&instance.instance_id) {
            continue;
        }
        match boot(shared, &instance, &user_data, gpus) {
            Ok(host) => state.hosts.push(host),
            Err(e) => state.problem(format!("{}: boot: {e}", instance.instance_id)),
        }
    }
}

/// The instances tagged for `cluster` as EC2 (moto) lists them, every page,
/// terminated ones included.
pub async fn cluster_instances(
    client: &aws_sdk_ec2::Client,
    cluster: &str,
) -> std::result::Result<Vec<InstanceInfo>, String> {
    let mut found = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let out = client
            .describe_instances()
            .filters(
                Filter::builder()
                    .name(format!("tag:{TAG_CLUSTER}"))
                    .values(cluster)
                    .build(),
            )
            .set_next_token(next.take())
            .send()
            .await
            .map_err(|e| format!("{}", aws_sdk_ec2::error::DisplayErrorContext(e)))?;
        for instance in out.reservations().iter().flat_map(|r| r.instances()) {
            let tags: BTreeMap<String, String> = instance
                .tags()
                .iter()
                .filter_map(|t| Some((t.key()?.to_owned(), t.value().unwrap_or("").to_owned())))
                .collect();
            found.push(InstanceInfo {
                instance_id: instance.instance_id().unwrap_or_default().to_owned(),
                instance_type: instance
                    .instance_type()
                    .map(|t| t.as_str().to_owned())
                    .unwrap_or_default(),
                state: instance
                    .state()
                    .and_then(|s| s.name())
                    .map(|n| n.as_str().to_owned())
                    .unwrap_or_default(),
                node: tags.get(TAG_NODE).cloned(),
                tags,
            });
        }
        match out.next_token() {
            Some(t) if !t.is_empty() => next = Some(t.to_owned()),
            _ => return Ok(found),
        }
    }
}

/// The GPUs of an instance type as EC2 (moto) describes them: their count and
/// NVML-style product name (`NVIDIA A10G`), or None for a type without GPUs.
async fn gpus_of(
    client: &aws_sdk_ec2::Client,
    instance_type: &str,
) -> std::result::Result<Option<(u32, String)>, String> {
    let out = client
        .describe_instance_types()
        .instance_types(instance_type.into())
        .send()
        .await
        .map_err(|e| format!("{}", aws_sdk_ec2::error::DisplayErrorContext(e)))?;
    let gpus = out
        .instance_types()
        .first()
        .and_then(|t| t.gpu_info())
        .map(|g| g.gpus().to_vec())
        .unwrap_or_default();
    let count: i32 = gpus.iter().filter_map(|g| g.count()).sum();
    Ok(gpus.first().filter(|_| count > 0).map(|g| {
        let maker = g.manufacturer().unwrap_or("NVIDIA");
        (
            count as u32,
            format!("{maker} {}", g.name().unwrap_or_default()),
        )
    }))
}

/// The instance's user data, decoded (empty when it has none).
async fn user_data(
    client: &aws_sdk_ec2::Client,
    instance_id: &str,
) -> std::result::Result<String, String> {
    let out = client
        .describe_instance_attribute()
        .instance_id(instance_id)
        .attribute(InstanceAttributeName::UserData)
        .send()
        .await
        .map_err(|e| format!("{}", aws_sdk_ec2::error::DisplayErrorContext(e)))?;
    let encoded = out.user_data().and_then(|u| u.value()).unwrap_or_default();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|e| format!("user data is not base64: {e}"))?;
    String::from_utf8(raw).map_err(|e| format!("user data is not UTF-8: {e}"))
}

/// Starts the instance's IMDS and agent.
fn boot(
    shared: &Shared,
    instance: &InstanceInfo,
    user_data: &str,
    gpus: Option<(u32, String)>,
) -> Result<Host> {
    let id = &instance.instance_id;
    let node = instance.node.clone().unwrap_or_else(|| id.clone());
    let dir = shared.settings.dir.join(id);
    std::fs::create_dir_all(dir.join("state"))
        .map_err(io_err(format!("creating {}", dir.display())))?;
    let imds = ImdsServer::start(
        user_data,
        &[("instance-id", id.as_str()), ("local-ipv4", "127.0.0.1")],
    )
    .map_err(io_err(format!("starting the IMDS of {id}")))?;
    let namespace = format!("{}-{node}", shared.settings.namespace_prefix);
    let mut host = Host {
        played: Played {
            instance_id: id.clone(),
            node,
            instance_type: instance.instance_type.clone(),
            namespace,
            agent_pid: 0,
            booted_at: Instant::now(),
            agent_killed: None,
            powered_off: None,
            shut_itself_down: None,
            stopped: false,
            restarts: 0,
        },
        agent: None,
        imds,
        dir,
        starts: 0,
        log_offset: 0,
        gpus,
        port: free_port(),
    };
    start_agent(shared, &mut host)?;
    tracing::info!(instance = %id, node = %host.played.node, pid = host.played.agent_pid, "instance booted");
    Ok(host)
}

/// Starts (again) the host's agent on a fresh port.
fn start_agent(shared: &Shared, host: &mut Host) -> Result<()> {
    let s = &shared.settings;
    let log = host.dir.join("agent.log");
    let mut cmd = Command::new(&shared.agent);
    cmd.args(["--imds-endpoint", &host.imds.endpoint])
        .args(["--listen", &format!("127.0.0.1:{}", host.port)])
        .arg("--containerd-socket")
        .arg(&s.containerd_socket)
        .args(["--containerd-namespace", &host.played.namespace])
        .arg("--state-dir")
        .arg(host.dir.join("state"))
        .args(["--insecure-registry", &s.registry])
        .arg("--ebs-device-dir")
        .arg(super::ec2_volumes::by_id_dir(&host.dir))
        .args(&s.agent_args);
    // The instance type's GPUs, simulated as the local provider does.
    if let Some((count, model)) = &host.gpus {
        let cdi = orca_control_plane::cloud::local::write_cdi_spec(&host.dir, *count)
            .map_err(io_err(format!("CDI spec in {}", host.dir.display())))?;
        cmd.arg(format!("--gpus={count}"))
            .arg(format!("--gpu-model={model}"))
            .arg("--cdi-dir")
            .arg(cdi);
    }
    host.log_offset = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    let agent = Daemon::spawn("orca-agent", cmd, &log)?;
    host.starts += 1;
    host.played.agent_pid = agent.pid();
    host.played.booted_at = Instant::now();
    host.agent = Some(agent);
    Ok(())
}

/// Whether the host's agent exited with [`POWER_OFF_EXIT`] (its dead-man's
/// switch powered the host off).
fn powered_itself_off(host: &mut Host) -> bool {
    let Some(status) = host.agent.as_mut().and_then(Daemon::exit_status) else {
        return false;
    };
    if status.code() != Some(POWER_OFF_EXIT) {
        return false;
    }
    host.agent = None;
    true
}

/// Applies instance `id`'s `instanceInitiatedShutdownBehavior` as EC2 does
/// when the instance shuts itself down (`terminate` or `stop`); returns it.
async fn apply_shutdown_behaviour(
    client: &aws_sdk_ec2::Client,
    id: &str,
) -> std::result::Result<String, String> {
    let attr = client
        .describe_instance_attribute()
        .instance_id(id)
        .attribute(InstanceAttributeName::InstanceInitiatedShutdownBehavior)
        .send()
        .await
        .map_err(|e| aws_sdk_ec2::error::DisplayErrorContext(&e).to_string())?;
    let behaviour = attr
        .instance_initiated_shutdown_behavior()
        .and_then(|v| v.value())
        .unwrap_or("stop")
        .to_owned();
    let sent = if behaviour == "terminate" {
        client
            .terminate_instances()
            .instance_ids(id)
            .send()
            .await
            .map(drop)
            .map_err(|e| aws_sdk_ec2::error::DisplayErrorContext(&e).to_string())
    } else {
        client
            .stop_instances()
            .instance_ids(id)
            .send()
            .await
            .map(drop)
            .map_err(|e| aws_sdk_ec2::error::DisplayErrorContext(&e).to_string())
    };
    sent?;
    Ok(behaviour)
}

/// Restarts an agent that exited because its port was taken; reports one that
/// exited for another reason (and forgets it).
fn check_agent(shared: &Shared, host: &mut Host) -> Vec<String> {
    let Some(status) = host.agent.as_mut().and_then(Daemon::exit_status) else {
        return Vec::new();
    };
    host.agent = None;
    let id = host.played.instance_id.clone();
    let log = std::fs::read(host.dir.join("agent.log")).unwrap_or_default();
    let since = String::from_utf8_lossy(log.get(host.log_offset as usize..).unwrap_or_default())
        .to_ascii_lowercase();
    if since.contains("address already in use") && host.starts < PORT_ATTEMPTS {
        host.port = free_port();
        return match start_agent(shared, host) {
            Ok(()) => Vec::new(),
            Err(e) => vec![format!("{id}: restarting the agent: {e}")],
        };
    }
    vec![format!("{id}: the agent exited by itself ({status})")]
}

/// SIGKILLs an agent and waits until it is gone (then reaps it).
fn sigkill_agent(mut agent: Daemon) -> std::result::Result<(), String> {
    if let Ok(pid) = i32::try_from(agent.pid()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let pid = agent.pid();
    let gone = try_eventually_blocking("the agent to exit", KILL_WAIT, KILL_POLL, || {
        agent.exit_status().map(drop).ok_or(pid)
    });
    // Reaped, or killed with its process group now.
    drop(agent);
    gone.map_err(|e| e.to_string())
}

/// Powers the host off: agent, containers, `orca-pause` processes. Returns what
/// could not be done.
fn power_off(shared: &Shared, host: &mut Host) -> Vec<String> {
    let id = host.played.instance_id.clone();
    let mut problems = Vec::new();
    if let Some(agent) = host.agent.take()
        && let Err(e) = sigkill_agent(agent)
    {
        problems.push(format!("{id}: {e}"));
    }
    problems.extend(kill_containers(shared, &host.played.namespace).map(|e| format!("{id}: {e}")));
    problems.extend(kill_pause(&host.dir.join("state")).map(|e| format!("{id}: {e}")));
    host.played.powered_off = Some(Instant::now());
    tracing::info!(instance = %id, node = %host.played.node, "instance powered off");
    problems
}

/// `ctr` in `namespace`, bounded.
fn ctr(shared: &Shared, namespace: &str, args: &[&str]) -> Result<String> {
    let mut cmd = Command::new(&shared.ctr);
    cmd.arg("--address")
        .arg(&shared.settings.containerd_socket)
        .args(["--connect-timeout", CTR_CONNECT_TIMEOUT])
        .args(["--timeout", CTR_TIMEOUT])
        .args(["-n", namespace])
        .args(args);
    output(cmd)
}

/// Kills and deletes every task of `namespace`, then deletes its containers:
/// the host's containerd is gone with the host. Returns the first failure.
fn kill_containers(shared: &Shared, namespace: &str) -> Option<String> {
    let ids = |what: &str| -> Result<Vec<String>> {
        Ok(ctr(shared, namespace, &[what, "ls", "-q"])?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect())
    };
    let tasks = match ids("tasks") {
        Ok(t) => t,
        Err(e) => return Some(format!("listing the tasks of {namespace}: {e}")),
    };
    for task in &tasks {
        let _ = ctr(
            shared,
            namespace,
            &["tasks", "kill", "--all", "--signal", "SIGKILL", task],
        );
    }
    let mut problem = None;
    for task in &tasks {
        // --force waits for the killed task to stop.
        if let Err(e) = ctr(shared, namespace, &["tasks", "delete", "--force", task]) {
            problem.get_or_insert(format!("deleting task {task} in {namespace}: {e}"));
        }
    }
    for container in ids("containers").unwrap_or_default() {
        if let Err(e) = ctr(shared, namespace, &["containers", "delete", &container]) {
            problem.get_or_insert(format!(
                "deleting container {container} in {namespace}: {e}"
            ));
        }
    }
    problem
}

/// SIGKILLs the `orca-pause` processes named by `pause.pid` files under
/// `state_dir` and waits until they are gone.
fn kill_pause(state_dir: &Path) -> Option<String> {
    let pids: Vec<u32> = crate::cluster::files_named(state_dir, "pause.pid")
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok()?.trim().parse().ok())
        .filter(|pid| {
            process_cmdline(*pid)
                .first()
                .is_some_and(|a0| a0.ends_with("orca-pause"))
        })
        .collect();
    for pid in &pids {
        if let Ok(raw) = i32::try_from(*pid) {
            let _ = kill(Pid::from_raw(raw), Signal::SIGKILL);
        }
    }
    try_eventually_blocking("orca-pause processes to exit", KILL_WAIT, KILL_POLL, || {
        let left: Vec<u32> = pids
            .iter()
            .copied()
            .filter(|p| process_running(*p))
            .collect();
        if left.is_empty() { Ok(()) } else { Err(left) }
    })
    .err()
    .map(|e| e.to_string())
}
