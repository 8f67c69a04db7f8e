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
use tracing::info;

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
        if let Some(network) = network {
            kill_netns(&network.netns).await?;
            netns::delete_host(&network)
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
    let deadline = tokio::time::Instant::now() + KILL_WAIT;
    loop {
        let pids = netns::pids(netns).await.map_err(|e| e.to_string())?;
        let live: Vec<i32> = pids
            .into_iter()
            .filter(|p| alive(Pid::from_raw(*p)))
            .collect();
        if live.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("processes {live:?} in {netns} survive SIGKILL"));
        }
        for pid in &live {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        tokio::time::sleep(POLL).await;
    }
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
