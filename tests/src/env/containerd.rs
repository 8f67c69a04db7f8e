//! containerd + runc on a private socket (TESTENV §1).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::mount::{MntFlags, umount2};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::daemon::Daemon;
use super::error::{EnvError, Result, io_err};
use super::tools::{find_processes, try_require};

/// How long containerd gets to answer `ctr version` (it boots in ~35 ms).
const READY_WITHIN: Duration = Duration::from_secs(30);

/// Bound every ctr call of the teardown, so a wedged daemon cannot hang `Drop` (ctr's
/// own defaults wait 10 s for a socket that is gone, and forever for an answer).
const CLEANUP_CONNECT_TIMEOUT: &str = "2s";
/// See [`CLEANUP_CONNECT_TIMEOUT`].
const CLEANUP_CTR_TIMEOUT: &str = "10s";

/// Where containerd 1.6's runc shim keeps runc state, whatever containerd's `state` says.
const RUNC_ROOT: &str = "/run/containerd/runc";

/// A unix socket path must fit `sockaddr_un.sun_path` (108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// A containerd daemon of one test: config, socket, root and state under `<dir>/containerd`.
///
/// The CRI plugin is disabled and debug/metrics listeners are off, so it opens no TCP
/// port. Dropping it kills and deletes every task and container in every namespace,
/// stops containerd (SIGTERM, then SIGKILL), kills shims left behind, lazily unmounts
/// whatever is still mounted under the directory and removes `root` and `state`.
///
/// Limitation (containerd's, see TESTENV §1): shim sockets and runc state stay under
/// `/run/containerd` whatever the config says, so give each test its own namespace.
#[derive(Debug)]
pub struct Containerd {
    /// The gRPC socket: `ctr --address`, `containerd_client::connect`.
    pub socket: PathBuf,
    /// containerd's `root` (content store, snapshots, metadata).
    pub root: PathBuf,
    /// containerd's `state` (task bundles, runtime state).
    pub state: PathBuf,
    /// The directory holding all of it, `config.toml` and `containerd.log`.
    pub dir: PathBuf,
    ctr: PathBuf,
    daemon: Daemon,
}

impl Containerd {
    /// Starts containerd under `<dir>/containerd` and waits until `ctr version` answers.
    pub fn start(dir: &Path) -> Result<Containerd> {
        let containerd = try_require("containerd")?;
        let ctr = try_require("ctr")?;
        try_require("runc")?;
        try_require("containerd-shim-runc-v2")?;

        let base = dir.join("containerd");
        let root = base.join("root");
        let state = base.join("state");
        for d in [&root, &state] {
            std::fs::create_dir_all(d).map_err(io_err(format!("creating {}", d.display())))?;
        }
        let socket = base.join("containerd.sock");
        let ttrpc = base.join("containerd.sock.ttrpc");
        let log = base.join("containerd.log");
        if ttrpc.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(EnvError::Start {
                what: "containerd".to_owned(),
                reason: format!(
                    "socket path {} is longer than {MAX_SOCKET_PATH} bytes: use a shorter directory",
                    ttrpc.display()
                ),
                log_path: log,
                log: String::new(),
            });
        }

        let config = base.join("config.toml");
        std::fs::write(&config, config_toml(&root, &state, &socket, &ttrpc))
            .map_err(io_err(format!("writing {}", config.display())))?;

        let mut cmd = Command::new(containerd);
        cmd.arg("--config").arg(&config);
        let mut daemon = Daemon::spawn("containerd", cmd, &log)?;
        daemon.wait_ready(READY_WITHIN, || {
            run_ctr(&ctr, &socket, None, &["--connect-timeout", "1s", "version"]).map(drop)
        })?;
        Ok(Containerd {
            socket,
            root,
            state,
            dir: base,
            ctr,
            daemon,
        })
    }

    /// containerd's PID.
    pub fn pid(&self) -> u32 {
        self.daemon.pid()
    }

    /// containerd's log file.
    pub fn log_path(&self) -> &Path {
        self.daemon.log_path()
    }

    /// Runs `ctr --address SOCKET -n NS ARGS…` and returns its stdout;
    /// [`EnvError::Command`] with stderr when it fails.
    pub fn ctr(&self, ns: &str, args: &[&str]) -> Result<String> {
        run_ctr(&self.ctr, &self.socket, Some(ns), args)
    }

    /// A `ctr --address SOCKET -n NS` command to add arguments to, for callers that need
    /// to spawn it or handle its output themselves.
    pub fn ctr_command(&self, ns: &str) -> Command {
        let mut cmd = Command::new(&self.ctr);
        cmd.arg("--address").arg(&self.socket).args(["-n", ns]);
        cmd
    }

    /// Imports an OCI archive into namespace `ns` (`ctr images import`); the image is
    /// named after its `org.opencontainers.image.ref.name` annotation.
    pub fn import(&self, ns: &str, archive: &Path) -> Result<String> {
        let archive = archive.to_string_lossy();
        self.ctr(ns, &["images", "import", &archive])
    }

    /// Imports an OCI archive into `ns` and returns the name of the (single) image it
    /// holds, as containerd lists it.
    pub fn import_image(&self, ns: &str, archive: &Path) -> Result<String> {
        self.import(ns, archive)?;
        let images = self.ctr(ns, &["images", "ls", "-q"])?;
        images
            .lines()
            .next()
            .map(|l| l.trim().to_owned())
            .ok_or_else(|| super::error::EnvError::Command {
                cmd: format!("ctr -n {ns} images ls -q"),
                status: "no image".into(),
                stderr: format!("no image was imported into {ns}"),
            })
    }

    /// The namespaces that exist now.
    pub fn namespaces(&self) -> Result<Vec<String>> {
        Ok(lines(&self.ctr_cleanup(None, &["namespaces", "ls", "-q"])?))
    }

    /// PIDs of the runc shims serving this containerd (their command line names its socket).
    pub fn shim_pids(&self) -> Vec<u32> {
        let socket = self.socket.to_string_lossy().into_owned();
        find_processes(|argv| {
            argv.first().is_some_and(|a0| {
                a0.rsplit('/')
                    .next()
                    .unwrap_or(a0)
                    .starts_with("containerd-shim")
            }) && argv.contains(&socket)
        })
    }

    fn ctr_cleanup(&self, ns: Option<&str>, args: &[&str]) -> Result<String> {
        let mut all = vec![
            "--connect-timeout",
            CLEANUP_CONNECT_TIMEOUT,
            "--timeout",
            CLEANUP_CTR_TIMEOUT,
        ];
        all.extend_from_slice(args);
        run_ctr(&self.ctr, &self.socket, ns, &all)
    }

    /// Kills and deletes every task, then deletes every container, in every namespace.
    fn delete_everything(&self) {
        let namespaces = match self.namespaces() {
            Ok(ns) => ns,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list containerd namespaces for cleanup");
                return;
            }
        };
        for ns in &namespaces {
            let ns = Some(ns.as_str());
            let tasks = self
                .ctr_cleanup(ns, &["tasks", "ls", "-q"])
                .map(|out| lines(&out))
                .unwrap_or_default();
            for id in &tasks {
                let _ = self.ctr_cleanup(ns, &["tasks", "kill", "-a", "-s", "SIGKILL", id]);
            }
            for id in &tasks {
                // --force waits for the killed task to stop before deleting it.
                if let Err(e) = self.ctr_cleanup(ns, &["tasks", "delete", "--force", id]) {
                    tracing::warn!(namespace = ns, task = %id, error = %e, "task not deleted");
                }
            }
            let containers = self
                .ctr_cleanup(ns, &["containers", "ls", "-q"])
                .map(|out| lines(&out))
                .unwrap_or_default();
            for id in &containers {
                if let Err(e) = self.ctr_cleanup(ns, &["containers", "delete", id]) {
                    tracing::warn!(namespace = ns, container = %id, error = %e, "container not deleted");
                }
            }
            // runc's state root for the namespace is shared by every containerd on the
            // machine (TESTENV §1); remove it only when nothing is left in it.
            if let Some(ns) = ns {
                let _ = std::fs::remove_dir(Path::new(RUNC_ROOT).join(ns));
            }
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if self.daemon.exit_status().is_none() {
            self.delete_everything();
        } else {
            tracing::warn!(log = %self.daemon.log_path().display(), "containerd died before the test ended");
        }
        let shims = self.shim_pids();
        self.daemon.stop();
        // A shim outlives containerd by design; once its tasks are gone it exits by
        // itself, and one that has not is no longer wanted.
        for pid in shims.into_iter().chain(self.shim_pids()) {
            if let Ok(pid) = i32::try_from(pid) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        unmount_under(&self.dir);
        for d in [&self.root, &self.state] {
            if let Err(e) = std::fs::remove_dir_all(d) {
                tracing::warn!(dir = %d.display(), error = %e, "containerd directory not removed");
            }
        }
    }
}

/// The config of TESTENV §1: version 2, root and state under the test's directory, CRI
/// disabled, gRPC and ttrpc on private sockets, debug and metrics listeners off.
fn config_toml(root: &Path, state: &Path, socket: &Path, ttrpc: &Path) -> String {
    format!(
        r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{ttrpc}"

[debug]
  address = ""
  level = "info"

[metrics]
  address = ""
"#,
        root = root.display(),
        state = state.display(),
        socket = socket.display(),
        ttrpc = ttrpc.display(),
    )
}

fn run_ctr(ctr: &Path, socket: &Path, ns: Option<&str>, args: &[&str]) -> Result<String> {
    let mut cmd = Command::new(ctr);
    cmd.arg("--address").arg(socket);
    if let Some(ns) = ns {
        cmd.args(["-n", ns]);
    }
    cmd.args(args);
    output(cmd)
}

/// Runs `cmd` to completion: stdout on success, [`EnvError::Command`] otherwise.
pub(crate) fn output(mut cmd: Command) -> Result<String> {
    let shown = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let out = cmd.output().map_err(io_err(format!("running {shown}")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(EnvError::Command {
            cmd: shown,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

fn lines(out: &str) -> Vec<String> {
    out.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Lazily unmounts every mount point under `dir`, deepest first (overlay rootfs of
/// tasks that could not be deleted), so that the directory can be removed.
pub(crate) fn unmount_under(dir: &Path) {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    for p in points {
        match umount2(&p, MntFlags::MNT_DETACH) {
            Ok(()) => tracing::debug!(mount = %p.display(), "unmounted leftover mount"),
            Err(e) => tracing::warn!(mount = %p.display(), error = %e, "cannot unmount"),
        }
    }
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let oct = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("");
            if let Ok(b) = u8::from_str_radix(oct, 8) {
                out.push(b);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mountinfo(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape_mountinfo(r"/tmp/a\134b"), r"/tmp/a\b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo(r"/trail\04"), r"/trail\04");
    }

    #[test]
    fn config_names_private_paths_and_disables_cri() {
        let c = config_toml(
            Path::new("/t/root"),
            Path::new("/t/state"),
            Path::new("/t/c.sock"),
            Path::new("/t/c.sock.ttrpc"),
        );
        assert!(c.starts_with("version = 2\n"));
        assert!(c.contains("root = \"/t/root\""));
        assert!(c.contains("disabled_plugins = [\"io.containerd.grpc.v1.cri\"]"));
        assert!(c.contains("[ttrpc]\n  address = \"/t/c.sock.ttrpc\""));
    }
}
