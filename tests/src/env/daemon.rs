//! A supervised background process: started with its output in a log file, polled until
//! ready, stopped by PID (SIGTERM, grace period, SIGKILL) when dropped.

use std::fmt::Debug;
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use super::error::{EnvError, Result, io_err};
use super::tools::try_require;
use crate::eventually::{DEFAULT_EVERY, try_eventually_blocking};

/// How long a daemon gets to exit after SIGTERM before SIGKILL. containerd, the
/// registry and moto all exit within milliseconds; 5 s only bounds a wedged one.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// How much of a daemon's log a start error shows.
const LOG_TAIL_LINES: usize = 40;
const LOG_TAIL_BYTES: u64 = 16 * 1024;

/// Appended to a daemon's `PATH` so that e.g. containerd finds `runc` in `/usr/sbin`.
const EXTRA_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A background process owned by a test, killed when dropped.
///
/// Started with its stdin closed and stdout + stderr appended to a log file, in its own
/// process group (so stopping it also stops anything it forked that stayed in the group).
///
/// Where util-linux's `setpriv` exists (always on Debian), the process is started as
/// `setpriv --pdeathsig KILL -- PROGRAM ARGS…` from one spawner thread that lives as long
/// as the test process: the kernel then SIGKILLs the daemon when the test process dies
/// without running `Drop` (killed by a nextest timeout, `abort`, SIGKILL). `setpriv`
/// execs the program, so [`Daemon::pid`] is the daemon's own PID.
pub struct Daemon {
    name: String,
    child: Child,
    log: PathBuf,
    stopped: bool,
}

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Spawns `cmd` from a thread that never exits, so that a parent-death signal set in the
/// child fires when the process exits, not when the (short-lived) calling thread does.
fn spawn_from_long_lived_thread(cmd: Command) -> std::io::Result<Child> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnRequest>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("orca-tests-spawner".to_owned())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("start the daemon spawner thread");
        tx
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner
        .send((cmd, reply_tx))
        .map_err(|_| std::io::Error::other("the daemon spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| std::io::Error::other("the daemon spawner thread did not answer"))?
}

impl Daemon {
    /// Starts `cmd` as daemon `name`, stdout and stderr appended to `log`.
    ///
    /// The program, arguments, environment changes and working directory of `cmd` are
    /// used; its stdio settings are replaced and an `env_clear` is not carried over.
    /// `PATH` gains the usual sbin and bin directories.
    pub fn spawn(name: &str, cmd: Command, log: &Path) -> Result<Daemon> {
        let log_file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(io_err(format!("opening {}", log.display())))?;
        let log_err = log_file
            .try_clone()
            .map_err(io_err(format!("opening {}", log.display())))?;

        let mut run = match try_require("setpriv") {
            Ok(setpriv) => {
                let mut c = Command::new(setpriv);
                c.args(["--pdeathsig", "KILL", "--"]).arg(cmd.get_program());
                c
            }
            Err(_) => Command::new(cmd.get_program()),
        };
        run.args(cmd.get_args());
        let mut path_set = false;
        for (key, value) in cmd.get_envs() {
            path_set |= key == "PATH";
            match value {
                Some(v) => run.env(key, v),
                None => run.env_remove(key),
            };
        }
        if !path_set {
            let path = std::env::var("PATH").unwrap_or_default();
            run.env("PATH", format!("{path}:{EXTRA_PATH}"));
        }
        if let Some(dir) = cmd.get_current_dir() {
            run.current_dir(dir);
        }
        run.stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err)
            .process_group(0);

        let child = spawn_from_long_lived_thread(run)
            .map_err(io_err(format!("starting {name} ({:?})", cmd.get_program())))?;
        tracing::debug!(daemon = name, pid = child.id(), log = %log.display(), "daemon started");
        Ok(Daemon {
            name: name.to_owned(),
            child,
            log: log.to_path_buf(),
            stopped: false,
        })
    }

    /// The daemon's PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The daemon's name, as given to [`Daemon::spawn`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The daemon's log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last lines of the daemon's log file (empty when unreadable).
    pub fn log_tail(&self) -> String {
        log_tail(&self.log)
    }

    /// The exit status when the daemon has exited (reaping it), `None` while it runs.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// A [`EnvError::Start`] for this daemon with `reason` and the tail of its log.
    pub fn start_error(&self, reason: impl Into<String>) -> EnvError {
        EnvError::Start {
            what: self.name.clone(),
            reason: reason.into(),
            log_path: self.log.clone(),
            log: self.log_tail(),
        }
    }

    /// Polls `probe` until it succeeds, failing fast if the daemon exits first and with
    /// the last probe error once `within` passes; both errors carry the log's tail.
    pub fn wait_ready<E: Debug>(
        &mut self,
        within: Duration,
        mut probe: impl FnMut() -> std::result::Result<(), E>,
    ) -> Result<()> {
        let what = format!("{} to answer", self.name);
        let child = &mut self.child;
        // Ok(Some(status)) ends the wait early: the daemon is gone and will not get ready.
        let outcome = try_eventually_blocking(&what, within, DEFAULT_EVERY, || {
            match child.try_wait() {
                Ok(Some(status)) => return Ok(Some(status.to_string())),
                Ok(None) => {}
                Err(e) => return Ok(Some(format!("unknown status ({e})"))),
            }
            probe().map(|()| None)
        });
        match outcome {
            Ok(None) => {
                tracing::debug!(daemon = %self.name, pid = self.pid(), "daemon ready");
                Ok(())
            }
            Ok(Some(status)) => {
                self.stopped = true;
                Err(self.start_error(format!("exited ({status}) before it was ready")))
            }
            Err(timeout) => Err(self.start_error(timeout.to_string())),
        }
    }

    /// Sends SIGTERM to the daemon alone and waits up to `within` for it to exit on
    /// its own; returns its exit status, or `None` if it is still running (then
    /// `Drop` kills it). For tests of clean shutdown.
    pub fn terminate(&mut self, within: Duration) -> Option<ExitStatus> {
        let raw = i32::try_from(self.pid()).ok()?;
        let _ = kill(Pid::from_raw(raw), Signal::SIGTERM);
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.stopped = true;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the daemon: SIGTERM to its process group, up to [`STOP_GRACE`] to exit,
    /// then SIGKILL; then reaps it. Idempotent; also what `Drop` does.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let pid = self.pid();
        let Ok(raw) = i32::try_from(pid) else {
            let _ = self.child.kill();
            let _ = self.child.wait();
            return;
        };
        let rpid = Pid::from_raw(raw);
        if matches!(self.child.try_wait(), Ok(None)) {
            signal(rpid, Signal::SIGTERM);
            let deadline = Instant::now() + STOP_GRACE;
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if matches!(self.child.try_wait(), Ok(None)) {
                tracing::warn!(daemon = %self.name, pid, "daemon ignored SIGTERM; sending SIGKILL");
                signal(rpid, Signal::SIGKILL);
                let _ = self.child.kill();
            }
        }
        let status = self.child.wait();
        // Anything the daemon forked into its group dies with it. The group id stays
        // reserved while members remain, so this cannot hit an unrelated process.
        let _ = killpg(rpid, Signal::SIGKILL);
        tracing::debug!(daemon = %self.name, pid, ?status, "daemon stopped");
    }
}

/// Sends `sig` to the process group led by `pid`, or to `pid` alone if it has no group.
fn signal(pid: Pid, sig: Signal) {
    if killpg(pid, sig).is_err() {
        let _ = kill(pid, sig);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("name", &self.name)
            .field("pid", &self.pid())
            .field("log", &self.log)
            .finish()
    }
}

/// The last [`LOG_TAIL_LINES`] lines of `path` (at most [`LOG_TAIL_BYTES`] are read).
pub(crate) fn log_tail(path: &Path) -> String {
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)));
    let mut raw = Vec::new();
    let _ = file.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
    // A binary that failed with a backtrace prints it after its `Error:` line,
    // which the tail then misses: that line and its causes come first.
    let mut head = String::new();
    let _ = file.seek(SeekFrom::Start(0));
    let _ = (&mut file)
        .take(LOG_TAIL_BYTES * 16)
        .read_to_string(&mut head);
    match head.lines().position(|l| l.starts_with("Error: ")) {
        Some(at) if !tail.contains(head.lines().nth(at).unwrap_or_default()) => {
            let error: Vec<&str> = head.lines().skip(at).take(8).collect();
            format!("{}\n[...]\n{tail}", error.join("\n"))
        }
        _ => tail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::process_running;

    #[test]
    fn a_daemon_is_stopped_and_reaped_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "echo up; exec sleep 300"]);
        let mut d = Daemon::spawn("sleeper", cmd, &dir.path().join("sleeper.log")).unwrap();
        let pid = d.pid();
        let log = d.log_path().to_path_buf();
        d.wait_ready(Duration::from_secs(10), || {
            if log_tail(&log).contains("up") {
                Ok(())
            } else {
                Err("no output yet")
            }
        })
        .unwrap();
        assert!(process_running(pid));
        drop(d);
        assert!(!process_running(pid));
    }

    #[test]
    fn a_daemon_that_exits_early_fails_fast_with_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "echo boom >&2; exit 3"]);
        let mut d = Daemon::spawn("crasher", cmd, &dir.path().join("crasher.log")).unwrap();
        let started = Instant::now();
        let err = d
            .wait_ready(Duration::from_secs(30), || Err::<(), _>("not ready"))
            .unwrap_err()
            .to_string();
        assert!(started.elapsed() < Duration::from_secs(10), "{err}");
        assert!(err.contains("crasher did not start: exited"), "{err}");
        assert!(err.contains("boom"), "{err}");
    }
}
