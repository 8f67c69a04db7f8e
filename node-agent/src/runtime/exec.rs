//! Exec processes in running containers (containerd's exec process API).
//!
//! Done as containerd's Go client does it (`task.Exec` with `cio`): the exec
//! process is the container's own OCI process (user, env, cwd, capabilities,
//! rlimits, from the container's spec) with other args; its stdin, stdout and
//! stderr are FIFOs that the agent makes in a private directory, and whose other
//! ends the runc shim opens when the process starts. Then `Tasks.Start`,
//! `Tasks.Wait`, output read to EOF, `Tasks.DeleteProcess`.
//!
//! [`Containerd::start_exec`] starts one and hands back an [`ExecProcess`]
//! (wait, resize its terminal, close its stdin, finish) and its [`ExecIo`]; the
//! interactive `Exec` API and probes' [`Containerd::exec`] are built on it. With a
//! terminal, the shim puts the process on a pseudo-terminal and copies it to the
//! stdout FIFO (there is no separate stderr). Closing stdin is two steps, as in
//! `ctr`: the agent closes its write end, then `Tasks.CloseIO` makes the shim
//! close its own, so the process reads what was written and then EOF.
//!
//! The shim keeps a read end of each FIFO open itself, so a reader that stops
//! reading does not break the process's pipe; it fills up and blocks the process.
//! Output past the cap is therefore read and dropped, never left unread.

use std::path::{Path, PathBuf};
use std::time::Duration;

use containerd_client::services::v1::{
    CloseIoRequest, DeleteProcessRequest, ExecProcessRequest, GetContainerRequest, KillRequest,
    ResizePtyRequest, StartRequest, WaitRequest, containers_client::ContainersClient,
    tasks_client::TasksClient,
};
use futures::FutureExt;
use futures::future::FusedFuture;
use prost_types::Any;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tracing::debug;

use super::{Containerd, RuntimeError, op};

/// The type URL containerd expects for an OCI process spec in JSON.
const PROCESS_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";

/// SIGKILL, sent when an exec process outlives its timeout.
const SIGKILL: u32 = 9;

/// How long a SIGKILLed exec process gets to be reported exited (it is usually
/// milliseconds; a process in uninterruptible sleep can take longer).
const KILL_WAIT: Duration = Duration::from_secs(10);

/// How long output may still arrive after the exec process exited. A background
/// child that inherited stdout keeps the FIFOs open; containerd's shim closes them
/// at `Tasks.DeleteProcess` after waiting up to 2 s for it, so this is only a
/// backstop for a shim that does not.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(5);

/// Read size of the stdio FIFOs (a pipe's default capacity is 64 KiB).
const READ_CHUNK: usize = 16 * 1024;

/// Output and exit of a finished exec process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecResult {
    /// Exit status as containerd reports it (128 + signal when killed by a signal).
    pub exit_code: i32,
    /// The first `max_output` bytes of stdout.
    pub stdout: Vec<u8>,
    /// The first `max_output` bytes of stderr.
    pub stderr: Vec<u8>,
    /// Whether the process outlived its timeout and was SIGKILLed.
    pub timed_out: bool,
}

impl Containerd {
    /// Runs `args` in the running container `container_id` with the container's
    /// user, env and cwd (from its OCI spec), capturing at most `max_output` bytes
    /// of each of stdout and stderr. When `timeout` passes (counted from the start)
    /// the process is SIGKILLed and the result says `timed_out`. The exec process is
    /// deleted afterwards.
    ///
    /// Errors: the containerd error of the failing call, e.g. `Tasks.Exec` NotFound
    /// when the container has no task, or `Tasks.Start` when runc cannot start the
    /// process (such as a missing executable).
    pub async fn exec(
        &self,
        container_id: &str,
        args: &[String],
        timeout: Duration,
        max_output: usize,
    ) -> Result<ExecResult, RuntimeError> {
        if args.is_empty() {
            return Err(op("Tasks.Exec")(tonic::Status::invalid_argument(
                "exec needs a command",
            )));
        }
        let (process, io) = self.start_exec(container_id, args, None, false).await?;
        let ExecIo { stdout, stderr, .. } = io;
        let stderr = stderr.expect("an exec without a terminal has stderr");
        let mut out = Vec::new();
        let mut err = Vec::new();
        let (exited, timed_out) = {
            let io = async {
                tokio::join!(
                    drain(stdout, &mut out, max_output),
                    drain(stderr, &mut err, max_output)
                );
            };
            let mut io = std::pin::pin!(io.fuse());
            let (exited, timed_out) = self
                .wait_exec(container_id, &process.guard.exec_id, timeout, &mut io)
                .await;
            process.finish(&mut io).await;
            (exited, timed_out)
        };
        let exit_status = exited?;
        Ok(ExecResult {
            exit_code: i32::try_from(exit_status).unwrap_or(i32::MAX),
            stdout: out,
            stderr: err,
            timed_out,
        })
    }

    /// Starts `args` in the running container `container_id` as the container's
    /// own process (user, env, cwd), on a pseudo-terminal of `tty` = (columns,
    /// rows) when given (0x0: size unknown), with a stdin FIFO when `stdin`.
    ///
    /// Errors: the containerd error of the failing call, e.g. `Tasks.Exec` NotFound
    /// when the container has no task, or `Tasks.Start` when runc cannot start the
    /// process (such as a missing executable).
    pub async fn start_exec(
        &self,
        container_id: &str,
        args: &[String],
        tty: Option<(u32, u32)>,
        stdin: bool,
    ) -> Result<(ExecProcess, ExecIo), RuntimeError> {
        if args.is_empty() {
            return Err(op("Tasks.Exec")(tonic::Status::invalid_argument(
                "exec needs a command",
            )));
        }
        let process = self.exec_process_spec(container_id, args, tty).await?;
        let uuid = uuid::Uuid::new_v4().simple().to_string();
        let exec_id = format!("exec-{}", &uuid[..12]);
        let mut guard = ExecGuard {
            ctrd: self.clone(),
            container_id: container_id.to_owned(),
            exec_id: exec_id.clone(),
            dir: std::env::temp_dir().join(format!("orca-exec-{uuid}")),
            created: false,
        };
        let (stdout_path, stdout) = guard.fifo("stdout")?;
        let (stderr_path, stderr) = if tty.is_some() {
            (String::new(), None)
        } else {
            let (path, rx) = guard.fifo("stderr")?;
            (path, Some(rx))
        };
        let (stdin_path, stdin) = if stdin {
            let (path, tx) = guard.stdin_fifo()?;
            (path, Some(tx))
        } else {
            (String::new(), None)
        };

        let mut tasks = TasksClient::new(self.channel());
        let req = ExecProcessRequest {
            container_id: container_id.to_owned(),
            stdin: stdin_path,
            stdout: stdout_path,
            stderr: stderr_path,
            terminal: tty.is_some(),
            spec: Some(Any {
                type_url: PROCESS_TYPE_URL.to_owned(),
                value: process.to_string().into_bytes(),
            }),
            exec_id: exec_id.clone(),
        };
        tasks
            .exec(self.request(req, None))
            .await
            .map_err(op("Tasks.Exec"))?;
        guard.created = true;
        let start = StartRequest {
            container_id: container_id.to_owned(),
            exec_id: exec_id.clone(),
        };
        if let Err(s) = tasks.start(self.request(start, None)).await {
            guard.created = !self.delete_process(container_id, &exec_id).await;
            return Err(op("Tasks.Start")(s));
        }
        Ok((
            ExecProcess { guard },
            ExecIo {
                stdin,
                stdout,
                stderr,
            },
        ))
    }

    /// The container's OCI process with `args`, on a terminal of `tty` = (columns,
    /// rows) or not.
    async fn exec_process_spec(
        &self,
        container_id: &str,
        args: &[String],
        tty: Option<(u32, u32)>,
    ) -> Result<serde_json::Value, RuntimeError> {
        let req = GetContainerRequest {
            id: container_id.to_owned(),
        };
        let container = ContainersClient::new(self.channel())
            .get(self.request(req, None))
            .await
            .map_err(op("Containers.Get"))?
            .into_inner()
            .container;
        let spec: Option<serde_json::Value> = container
            .and_then(|c| c.spec)
            .and_then(|any| serde_json::from_slice(&any.value).ok());
        let Some(mut process) = spec.and_then(|mut s| s.get_mut("process").map(|p| p.take()))
        else {
            return Err(op("Containers.Get")(tonic::Status::failed_precondition(
                format!("container {container_id} has no OCI process spec"),
            )));
        };
        let Some(fields) = process.as_object_mut() else {
            return Err(op("Containers.Get")(tonic::Status::failed_precondition(
                format!("container {container_id} has a malformed OCI process spec"),
            )));
        };
        fields.insert("args".to_owned(), serde_json::json!(args));
        fields.insert(
            "terminal".to_owned(),
            serde_json::Value::Bool(tty.is_some()),
        );
        fields.remove("consoleSize");
        if let Some((width, height)) = tty.filter(|(w, h)| *w > 0 && *h > 0) {
            fields.insert(
                "consoleSize".to_owned(),
                serde_json::json!({ "height": height, "width": width }),
            );
        }
        Ok(process)
    }

    /// Waits for the exec process to exit while `io` reads its output, SIGKILLing
    /// it after `timeout`. Returns the exit status and whether it timed out.
    async fn wait_exec<F: FusedFuture + Unpin>(
        &self,
        container_id: &str,
        exec_id: &str,
        timeout: Duration,
        io: &mut F,
    ) -> (Result<u32, RuntimeError>, bool) {
        let mut timed_out = false;
        let wait = self.wait_process(container_id, exec_id);
        let mut wait = std::pin::pin!(wait);
        let deadline = tokio::time::sleep(timeout);
        let mut deadline = std::pin::pin!(deadline);
        let exited = loop {
            tokio::select! {
                status = &mut wait => break status,
                _ = &mut *io, if !io.is_terminated() => {}
                () = &mut deadline => {
                    if timed_out {
                        break Err(op("Tasks.Wait")(tonic::Status::deadline_exceeded(format!(
                            "exec process {exec_id} did not exit within {KILL_WAIT:?} of SIGKILL"
                        ))));
                    }
                    timed_out = true;
                    debug!(container = container_id, exec = exec_id, ?timeout, "exec timed out; killing it");
                    if let Err(e) = self.kill_process(container_id, exec_id).await {
                        break Err(e);
                    }
                    deadline.as_mut().reset(tokio::time::Instant::now() + KILL_WAIT);
                }
            }
        };
        (exited, timed_out)
    }

    async fn wait_process(&self, container_id: &str, exec_id: &str) -> Result<u32, RuntimeError> {
        let req = WaitRequest {
            container_id: container_id.to_owned(),
            exec_id: exec_id.to_owned(),
        };
        Ok(TasksClient::new(self.channel())
            .wait(self.request(req, None))
            .await
            .map_err(op("Tasks.Wait"))?
            .into_inner()
            .exit_status)
    }

    async fn kill_process(&self, container_id: &str, exec_id: &str) -> Result<(), RuntimeError> {
        // A process that exited in between is fine: the wait reports it.
        self.send_kill(KillRequest {
            container_id: container_id.to_owned(),
            exec_id: exec_id.to_owned(),
            signal: SIGKILL,
            all: false,
        })
        .await
    }

    /// Deletes an exited exec process; whether it is gone. A failure only leaves
    /// its record in the shim until the task is deleted.
    async fn delete_process(&self, container_id: &str, exec_id: &str) -> bool {
        let req = DeleteProcessRequest {
            container_id: container_id.to_owned(),
            exec_id: exec_id.to_owned(),
        };
        match TasksClient::new(self.channel())
            .delete_process(self.request(req, None))
            .await
        {
            Ok(_) => true,
            Err(s) if s.code() == tonic::Code::NotFound => true,
            Err(e) => {
                debug!(container = container_id, exec = exec_id, error = %e, "exec process not deleted");
                false
            }
        }
    }
}

/// The stdio of an exec process.
pub struct ExecIo {
    /// The write end of its stdin, when it was asked for.
    pub stdin: Option<pipe::Sender>,
    /// Its stdout (the terminal's output, with a terminal).
    pub stdout: pipe::Receiver,
    /// Its stderr; `None` with a terminal.
    pub stderr: Option<pipe::Receiver>,
}

/// A started exec process. Dropped before [`ExecProcess::finish`] (its caller
/// gave up), it is SIGKILLed and deleted in the background.
pub struct ExecProcess {
    guard: ExecGuard,
}

impl ExecProcess {
    /// Its exec id.
    pub fn id(&self) -> &str {
        &self.guard.exec_id
    }

    /// Waits for it to exit; its exit status (128 + signal when killed).
    pub async fn wait(&self) -> Result<u32, RuntimeError> {
        let g = &self.guard;
        g.ctrd.wait_process(&g.container_id, &g.exec_id).await
    }

    /// Sets its terminal's size.
    pub async fn resize(&self, width: u32, height: u32) -> Result<(), RuntimeError> {
        let g = &self.guard;
        let req = ResizePtyRequest {
            container_id: g.container_id.clone(),
            exec_id: g.exec_id.clone(),
            width,
            height,
        };
        TasksClient::new(g.ctrd.channel())
            .resize_pty(g.ctrd.request(req, None))
            .await
            .map_err(op("Tasks.ResizePty"))?;
        Ok(())
    }

    /// Makes the shim close its end of stdin: once the agent has closed its own
    /// (dropped [`ExecIo::stdin`]), the process reads what is left, then EOF.
    pub async fn close_stdin(&self) -> Result<(), RuntimeError> {
        let g = &self.guard;
        let req = CloseIoRequest {
            container_id: g.container_id.clone(),
            exec_id: g.exec_id.clone(),
            stdin: true,
        };
        TasksClient::new(g.ctrd.channel())
            .close_io(g.ctrd.request(req, None))
            .await
            .map_err(op("Tasks.CloseIO"))?;
        Ok(())
    }

    /// After it exited: deletes it, which makes the shim close its ends of the
    /// output FIFOs (after waiting up to 2 s for a child that inherited them),
    /// while `io` reads them to EOF, for at most [`DRAIN_AFTER_EXIT`].
    pub async fn finish<F: FusedFuture + Unpin>(mut self, io: &mut F) {
        let g = &self.guard;
        let drained = async {
            if !io.is_terminated()
                && tokio::time::timeout(DRAIN_AFTER_EXIT, &mut *io)
                    .await
                    .is_err()
            {
                debug!(
                    container = %g.container_id,
                    exec = %g.exec_id,
                    "exec output still open after exit; not waiting for it"
                );
            }
        };
        let (deleted, ()) =
            tokio::join!(g.ctrd.delete_process(&g.container_id, &g.exec_id), drained);
        // Left undeleted (still running after a failed wait or kill), the guard
        // kills and deletes it in the background.
        self.guard.created = !deleted;
    }
}

/// Reads `rx` to EOF, keeping the first `max` bytes in `buf`.
async fn drain(mut rx: pipe::Receiver, buf: &mut Vec<u8>, max: usize) {
    let mut chunk = vec![0; READ_CHUNK];
    loop {
        match rx.read(&mut chunk).await {
            Ok(0) => return,
            Ok(n) => {
                let keep = n.min(max.saturating_sub(buf.len()));
                buf.extend_from_slice(&chunk[..keep]);
            }
            Err(e) => {
                debug!(error = %e, "reading exec output failed");
                return;
            }
        }
    }
}

/// Owns an exec's FIFO directory (removed on drop) and, once the exec process is
/// created, the process itself: when the exec future is dropped midway (its caller
/// gave up), the process is SIGKILLed and deleted in the background.
struct ExecGuard {
    ctrd: Containerd,
    container_id: String,
    exec_id: String,
    dir: PathBuf,
    created: bool,
}

impl ExecGuard {
    /// Makes the FIFO `name` (the directory on first use) and opens its read end,
    /// which does not block and does not see EOF before a writer has come and gone.
    fn fifo(&self, name: &str) -> Result<(String, pipe::Receiver), RuntimeError> {
        self.make_fifo(name, |path| pipe::OpenOptions::new().open_receiver(path))
    }

    /// Makes the stdin FIFO and opens its write end. Opened read-write, it never
    /// blocks for want of a reader (Linux allows this on FIFOs).
    fn stdin_fifo(&self) -> Result<(String, pipe::Sender), RuntimeError> {
        self.make_fifo("stdin", |path| {
            pipe::OpenOptions::new().read_write(true).open_sender(path)
        })
    }

    fn make_fifo<T>(
        &self,
        name: &str,
        open: impl FnOnce(&Path) -> std::io::Result<T>,
    ) -> Result<(String, T), RuntimeError> {
        let path = self.dir.join(name);
        let made = create_private_dir(&self.dir)
            .and_then(|()| {
                nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).map_err(Into::into)
            })
            .and_then(|()| open(&path));
        match made {
            Ok(end) => Ok((path.display().to_string(), end)),
            Err(e) => Err(op("Tasks.Exec")(tonic::Status::internal(format!(
                "cannot make the stdio FIFO {}: {e}",
                path.display()
            )))),
        }
    }
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    }
}

impl Drop for ExecGuard {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            debug!(dir = %self.dir.display(), error = %e, "exec FIFO directory not removed");
        }
        if !self.created {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let ctrd = self.ctrd.clone();
        let container_id = std::mem::take(&mut self.container_id);
        let exec_id = std::mem::take(&mut self.exec_id);
        runtime.spawn(async move {
            debug!(container = %container_id, exec = %exec_id, "exec abandoned; killing it");
            if ctrd.kill_process(&container_id, &exec_id).await.is_ok() {
                let _ = tokio::time::timeout(KILL_WAIT, ctrd.wait_process(&container_id, &exec_id))
                    .await;
            }
            ctrd.delete_process(&container_id, &exec_id).await;
        });
    }
}
