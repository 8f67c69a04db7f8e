//! Ending simulated hosts and injecting faults into them.
//!
//! Terminating a host is a fence: when it returns Ok, nothing of the host runs.
//! The agent gets SIGTERM and, after [`AGENT_STOP_GRACE`], SIGKILL; then every
//! process left in the host's network namespace (its pods' containers and
//! `orca-pause` processes: `ip netns pids`) is killed, the veth pair and the
//! namespace are deleted and the host's directory removed. containerd's records
//! of the killed containers stay in the host's containerd namespace; a new agent
//! there adopts only pods it finds a `pod.json` for, and the directory that held
//! them is gone. A partitioned host cannot be terminated (its termination
//! "cannot be carried out"), as with an instance the cloud cannot reach.
//!
//! Hosts without a namespace (the fallback) are fenced as well as can be: the
//! agent and the pods' `orca-pause` processes are killed; their containers are
//! not found (they share the machine's network namespace).
//!
//! Faults: [`Fault::KillAgent`] SIGKILLs the agent alone, its containers keep
//! running, as on a real host whose agent crashed. [`Fault::Partition`] takes
//! the host side of the veth down and writes the `partitioned` marker (which
//! survives a control-plane restart); [`Fault::Heal`] undoes both.
//! [`Fault::SpotNotice`] writes `spot/instance-action` (`terminate` at the
//! deadline, whole seconds, as EC2 writes it) for the host's metadata service.

use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::path::Path;

use tracing::{info, warn};

use super::host::HostDir;
use super::{AGENT_STOP_GRACE, LocalProvider};
use crate::cloud::Fault;
use crate::cloud::netns::{self, HostNetwork};

/// How long the processes of a fenced host get to disappear after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// How often a fence looks again at what is left.
const POLL: Duration = Duration::from_millis(20);

impl LocalProvider {
    /// Terminates node `node`'s host (see the module docs).
    pub(super) async fn fence(&self, node: &str) -> Result<(), String> {
        let dir = HostDir::new(&self.hosts_dir, node);
        if dir.partitioned() {
            return Err("host unreachable: partitioned".into());
        }
        if let Some(pid) = dir.agent_pid().filter(|p| self.is_agent(*p)) {
            stop_agent(pid).await?;
        }
        let network = match dir.network() {
            Some(network) => Some(network),
            None => {
                kill_pause_processes(&dir);
                // The names follow from the bridge and node: a host whose records
                // are gone (a fence interrupted half-way) is cleaned up too.
                let derived = HostNetwork::new(&self.config.network.bridge, node, [0; 4].into());
                (netns::netns_exists(&derived.netns) || netns::link_exists(&derived.veth))
                    .then_some(derived)
            }
        };
        if let Some(network) = &network {
            kill_netns(&network.netns).await?;
        }
        // What runs outside the namespace: the tasks' shims (children of
        // containerd) and the loggers they started. Deleting the tasks ends
        // both; whatever survives is killed by its command line.
        let namespace = format!("{}-{node}", self.config.namespace_prefix);
        delete_tasks(&self.config.containerd_socket, &namespace).await;
        let socket = self.config.containerd_socket.to_string_lossy().into_owned();
        kill_matching(|args| of_host(args, &namespace, &socket, dir.path())).await?;
        if let Some(network) = &network {
            netns::delete_host(network)
                .await
                .map_err(|e| e.to_string())?;
        }
        dir.remove()
            .map_err(|e| format!("{}: {e}", dir.path().display()))?;
        info!(node, "simulated host terminated");
        Ok(())
    }

    /// Injects `fault` into node `node`'s host.
    pub(super) async fn inject(&self, node: &str, fault: Fault) -> Result<(), String> {
        let dir = HostDir::new(&self.hosts_dir, node);
        if !dir.exists() {
            return Err(format!("no simulated host {node} here"));
        }
        let network = || {
            dir.network().ok_or_else(|| {
                "this host has no network namespace (namespaces are unavailable here)".to_owned()
            })
        };
        match fault {
            Fault::KillAgent => {
                if let Some(pid) = dir.agent_pid().filter(|p| self.is_agent(*p)) {
                    kill(pid, Signal::SIGKILL).map_err(|e| format!("kill {pid}: {e}"))?;
                    wait_gone(pid, KILL_WAIT).await?;
                }
            }
            Fault::Partition => {
                let net = network()?;
                // Marker first: a crash in between errs on the side of "partitioned".
                dir.set_partitioned(true)
                    .map_err(|e| format!("partition marker: {e}"))?;
                netns::set_link(&net, false)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Fault::SpotNotice(lead) => {
                let at = jiff::Timestamp::now().as_second() + lead.as_secs().max(1) as i64;
                let at = jiff::Timestamp::from_second(at).map_err(|e| e.to_string())?;
                let body = serde_json::json!({ "action": "terminate", "time": at.to_string() });
                dir.write_notice(super::imds::SPOT_NOTICE, body.to_string().as_bytes())
                    .map_err(|e| format!("spot notice: {e}"))?;
            }
            Fault::Heal => {
                let net = network()?;
                netns::set_link(&net, true)
                    .await
                    .map_err(|e| e.to_string())?;
                dir.set_partitioned(false)
                    .map_err(|e| format!("partition marker: {e}"))?;
            }
        }
        info!(node, ?fault, "fault injected");
        Ok(())
    }

    /// Whether `pid` is a live agent of this provider (not a recycled pid).
    fn is_agent(&self, pid: Pid) -> bool {
        let name = self
            .config
            .agent_binary
            .file_name()
            .map(|n| n.to_string_lossy());
        alive(pid)
            && cmdline(pid)
                .zip(name)
                .is_some_and(|(c, n)| c.ends_with(n.as_ref()))
    }
}

/// SIGTERM, the grace period, SIGKILL; returns once the agent is gone.
async fn stop_agent(pid: Pid) -> Result<(), String> {
    kill(pid, Signal::SIGTERM).map_err(|e| format!("kill {pid}: {e}"))?;
    if wait_gone(pid, AGENT_STOP_GRACE).await.is_ok() {
        return Ok(());
    }
    let _ = kill(pid, Signal::SIGKILL);
    wait_gone(pid, KILL_WAIT).await
}

/// SIGKILLs every process in namespace `netns` until none is left.
async fn kill_netns(netns: &str) -> Result<(), String> {
    kill_until_gone(&format!("in {netns}"), || async {
        let pids = netns::pids(netns).await.map_err(|e| e.to_string())?;
        Ok(pids.into_iter().map(Pid::from_raw).collect())
    })
    .await
}

/// SIGKILLs the live processes `list` names, again and again, until it names
/// none (or [`KILL_WAIT`] has passed: an error naming the survivors `where_`).
async fn kill_until_gone<F, Fut>(where_: &str, mut list: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Vec<Pid>, String>>,
{
    let deadline = tokio::time::Instant::now() + KILL_WAIT;
    loop {
        let live: Vec<Pid> = list().await?.into_iter().filter(|p| alive(*p)).collect();
        if live.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("processes {live:?} {where_} survive SIGKILL"));
        }
        for pid in &live {
            let _ = kill(*pid, Signal::SIGKILL);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Deletes (with force: kills first) every task of the host's containerd
/// namespace through `ctr`, so their shims and loggers end as containerd ends
/// them. Best effort: what it leaves, [`kill_matching`] finds.
async fn delete_tasks(socket: &Path, namespace: &str) {
    let ctr = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new("ctr");
        cmd.arg("--address")
            .arg(socket)
            .args(["--namespace", namespace])
            .args(args)
            .kill_on_drop(true);
        cmd
    };
    let listed = match ctr(&["tasks", "ls", "-q"]).output().await {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
        Ok(out) => {
            warn!(namespace, stderr = %String::from_utf8_lossy(&out.stderr).trim(), "ctr tasks ls failed");
            return;
        }
        Err(e) => {
            warn!(namespace, error = %e, "ctr not run (containerd's client; apt-get install -y containerd)");
            return;
        }
    };
    for task in listed.lines().map(str::trim).filter(|t| !t.is_empty()) {
        match ctr(&["tasks", "delete", "--force", task]).output().await {
            Ok(out) if !out.status.success() => warn!(
                namespace, task, stderr = %String::from_utf8_lossy(&out.stderr).trim(), "task not deleted"
            ),
            Err(e) => warn!(namespace, task, error = %e, "task not deleted"),
            Ok(_) => {}
        }
    }
}

/// Whether a command line belongs to the host: a containerd shim of its
/// namespace on this containerd (`-namespace NS … -address SOCKET`), or any
/// process with an argument under the host's directory (its tasks' loggers,
/// `log <dir>/pods/…`).
fn of_host(args: &[String], namespace: &str, socket: &str, dir: &Path) -> bool {
    let after = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .map(String::as_str)
    };
    let shim = after("-namespace") == Some(namespace) && after("-address") == Some(socket);
    shim || args.iter().skip(1).any(|a| Path::new(a).starts_with(dir))
}

/// SIGKILLs every process whose command line `belongs`, until none is left.
async fn kill_matching(belongs: impl Fn(&[String]) -> bool) -> Result<(), String> {
    kill_until_gone("of the host", || {
        let pids = processes()
            .into_iter()
            .filter(|(_, args)| belongs(args))
            .map(|(pid, _)| pid)
            .collect();
        std::future::ready(Ok(pids))
    })
    .await
}

/// Every process of this machine with its command line.
fn processes() -> Vec<(Pid, Vec<String>)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let raw = std::fs::read(e.path().join("cmdline")).ok()?;
            let args = raw
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            Some((Pid::from_raw(pid), args))
        })
        .collect()
}

/// Fallback hosts: the pods' namespace holders, from their pid files.
fn kill_pause_processes(dir: &HostDir) {
    let Ok(pods) = std::fs::read_dir(dir.path().join("pods")) else {
        return;
    };
    for pod in pods.flatten() {
        let Ok(raw) = std::fs::read_to_string(pod.path().join("pause.pid")) else {
            continue;
        };
        if let Ok(pid) = raw.trim().parse::<i32>()
            && cmdline(Pid::from_raw(pid)).is_some_and(|c| c.ends_with("orca-pause"))
        {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

async fn wait_gone(pid: Pid, within: Duration) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + within;
    while alive(pid) {
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("process {pid} still runs after {within:?}"));
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(())
}

/// Whether `pid` runs: it exists and is not a zombie whose threads have all
/// exited (a killed multi-threaded process shows its leader as a zombie while
/// the other threads still exit, holding its sockets open).
fn alive(pid: Pid) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name, which is in parentheses.
    let zombie = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next())
        .is_some_and(|state| state == 'Z' || state == 'X');
    !zombie
        || std::fs::read_dir(format!("/proc/{pid}/task")).is_ok_and(|threads| threads.count() > 1)
}

/// The first argument of `pid`'s command line.
fn cmdline(pid: Pid) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let first = raw.split(|b| *b == 0).next()?;
    Some(String::from_utf8_lossy(first).into_owned())
}
