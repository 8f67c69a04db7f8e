//! A pod's shared namespaces: an `orca-pause` process per pod holds the IPC and
//! UTS namespaces its containers join (the kubelet's pause container, without a
//! container), and a directory is every container's `/dev/shm`. The holder runs
//! in its own process group, so it outlives an agent restart.
//!
//! Containers also join the holder's network namespace, which is the agent's
//! own (the holder does not unshare it): on a simulated host that is the host's
//! namespace with its address on the bridge, on an instance it is the instance's
//! network. containerd's shim, which would otherwise lend its namespace, runs in
//! the machine's, not the host's.

use std::io::{BufRead as _, BufReader};
use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tracing::{info, warn};

use super::PodError;
use crate::spec::PodNamespaces;

/// File in the pod directory holding the holder's pid.
const PID_FILE: &str = "pause.pid";

/// A pod's sandbox: its `orca-pause` holder, known by the pid file in the
/// pod's directory (so a restarted agent finds it again), and its `/dev/shm`.
pub(super) struct Sandbox<'a> {
    /// The pod's directory.
    pub dir: &'a std::path::Path,
}

impl Sandbox<'_> {
    /// The pod's shared namespaces, starting its holder (`pause`, named for
    /// pod `name`) unless it runs already.
    pub(super) fn ensure(
        &self,
        pause: &std::path::Path,
        name: &str,
    ) -> Result<PodNamespaces, PodError> {
        let dir = self.dir;
        let io = |what: &str| {
            let what = what.to_owned();
            move |e: std::io::Error| PodError::Invalid {
                reason: format!("pod sandbox: {what}: {e}"),
            }
        };
        let shm = dir.join("shm");
        std::fs::create_dir_all(&shm).map_err(io("shm directory"))?;
        std::fs::set_permissions(&shm, std::os::unix::fs::PermissionsExt::from_mode(0o1777))
            .map_err(io("shm mode"))?;
        let pid = match read_live_pid(&dir.join(PID_FILE)) {
            Some(pid) => pid,
            None => {
                let mut child = Command::new(pause)
                    .arg(name)
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit())
                    .process_group(0)
                    .spawn()
                    .map_err(io("starting orca-pause"))?;
                let pid = child.id();
                // Wait for "ready": before it, /proc/<pid>/ns/* are still the agent's.
                let mut line = String::new();
                let stdout = child.stdout.take().ok_or_else(|| PodError::Invalid {
                    reason: "orca-pause stdout".into(),
                })?;
                BufReader::new(stdout)
                    .read_line(&mut line)
                    .map_err(io("orca-pause ready"))?;
                if line.trim() != "ready" {
                    let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
                    return Err(PodError::Invalid {
                        reason: format!("orca-pause did not start ({status})"),
                    });
                }
                std::thread::spawn(move || {
                    let _ = child.wait();
                });
                std::fs::write(dir.join(PID_FILE), pid.to_string()).map_err(io("pause.pid"))?;
                info!(pod = name, pid, "pod sandbox started");
                pid
            }
        };
        let shared = PodNamespaces {
            ipc: Some(format!("/proc/{pid}/ns/ipc")),
            uts: Some(format!("/proc/{pid}/ns/uts")),
            net: Some(format!("/proc/{pid}/ns/net")),
            shm: Some(shm.display().to_string()),
        };
        Ok(shared)
    }

    /// Stops the pod's namespace holder, if it runs.
    pub(super) fn stop(&self) {
        if let Some(pid) = read_live_pid(&self.dir.join(PID_FILE))
            && let Err(e) = kill(Pid::from_raw(pid as i32), Signal::SIGKILL)
        {
            warn!(pid, error = %e, "pod sandbox not stopped");
        }
    }
}

/// The pid in `file` if that process is alive and is an `orca-pause`.
fn read_live_pid(file: &std::path::Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(file).ok()?.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let exe = cmdline.split(|b| *b == 0).next()?;
    String::from_utf8_lossy(exe)
        .ends_with("orca-pause")
        .then_some(pid)
}
