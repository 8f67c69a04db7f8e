//! The agent's streams: a container's log (read, or followed until the run
//! ends), exec sessions and attach sessions, between gRPC and the container.
//!
//! - `Logs` reads the CRI files on a blocking thread ([`crate::logs::reader`])
//!   into a bounded channel: a slow client slows the reader down.
//! - `Exec` starts a process through containerd's exec API
//!   ([`crate::runtime::exec`]) and runs one session task: client input goes to
//!   the process's stdin FIFO, terminal resizes and stdin close go to the shim,
//!   output FIFOs are read into a bounded channel, and the exit status is the
//!   last message. A client that goes away ends the session, and the process is
//!   killed.
//! - `Attach` is the main process's output from now on (its log followed from
//!   its end) and, at the end, its exit status. ORCA starts containers without
//!   stdin and without a terminal, so attaching with either is refused.

use std::pin::Pin;
use std::time::Duration;

use futures::future::FusedFuture as _;
use futures::{FutureExt as _, Stream, StreamExt as _};
use orca_proto::agent::v1::{self as pb, exec_output::Output};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::unix::pipe;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tracing::debug;

use crate::logs::Stream as LogStream;
use crate::logs::reader::{self, Chunk, Follow, ReadOptions};
use crate::pods::{PodError, PodManager, RunTarget};
use crate::runtime::exec::{ExecIo, ExecProcess};

pub use crate::rpc::Responses;

/// Chunks of log in flight between the reader thread and gRPC.
const LOG_CHANNEL: usize = 2;

/// Messages of exec output in flight between the session and gRPC.
const EXEC_CHANNEL: usize = 16;

/// Read size of exec output.
const EXEC_READ: usize = 32 * 1024;

/// How a follower waits (configurable so tests run them short).
#[derive(Debug, Clone, Copy)]
pub struct FollowTimings {
    /// Longest wait between two looks at a followed log when inotify reports nothing.
    pub poll: Duration,
    /// How long a followed log must stay quiet after its container ended before
    /// following ends (the logger may still be writing the last lines).
    pub settle: Duration,
}

impl Default for FollowTimings {
    fn default() -> Self {
        Self {
            poll: Duration::from_millis(250),
            settle: Duration::from_millis(300),
        }
    }
}

/// The streams over a [`PodManager`].
#[derive(Clone)]
pub struct Streams {
    pods: PodManager,
    follow: FollowTimings,
}

/// A client's input to an exec or attach session, whatever the RPC.
enum Control {
    Stdin(bytes::Bytes),
    Resize(pb::TerminalSize),
    CloseStdin,
}

impl Streams {
    /// Streams over `pods`.
    pub fn new(pods: PodManager, follow: FollowTimings) -> Self {
        Self { pods, follow }
    }

    /// A container's log, as `req` selects it.
    pub fn logs(&self, req: pb::LogsRequest) -> Result<Responses<pb::LogChunk>, PodError> {
        let target = self.pods.target(&req.uid, &req.container, req.previous)?;
        if let crate::status::ContainerState::Waiting { reason, .. } = &target.state
            && target.run == 0
            && !target.log.exists()
        {
            return Err(PodError::NotRunning(format!(
                "container {:?} in pod {} is waiting to start: {reason}",
                target.container, target.pod
            )));
        }
        let since = match (req.since_seconds, req.since_time) {
            (s, _) if s > 0 => Some(jiff::Timestamp::now() - jiff::SignedDuration::from_secs(s)),
            (_, Some(t)) => jiff::Timestamp::new(t.seconds, t.nanos).ok(),
            _ => None,
        };
        let opts = ReadOptions {
            tail_lines: req.tail_lines.and_then(|n| usize::try_from(n).ok()),
            since,
            timestamps: req.timestamps,
            limit_bytes: usize::try_from(req.limit_bytes).ok().filter(|n| *n > 0),
        };
        let follow = req.follow.then(|| self.follower(&target));
        let chunks = self.read_log(target, opts, follow).map(|c| {
            c.map(|c| pb::LogChunk {
                stream: output_stream(c.stream) as i32,
                data: c.data.into(),
            })
        });
        Ok(Box::pin(chunks))
    }

    /// Ends when `target`'s run ends.
    fn follower(&self, target: &RunTarget) -> Follow {
        let pods = self.pods.clone();
        let target = target.clone();
        Follow {
            ended: Box::new(move || pods.run_ended(&target)),
            poll: self.follow.poll,
            settle: self.follow.settle,
        }
    }

    /// Reads (or follows) `target`'s log on a blocking thread; a read error ends
    /// the stream with an INTERNAL status.
    fn read_log(
        &self,
        target: RunTarget,
        opts: ReadOptions,
        follow: Option<Follow>,
    ) -> impl Stream<Item = Result<Chunk, Status>> + Send + 'static {
        let (tx, rx) = mpsc::channel(LOG_CHANNEL);
        let done = tokio::task::spawn_blocking(move || {
            reader::stream(&target.log, &opts, follow, &tx).map_err(|e| {
                Status::internal(format!("cannot read log {}: {e}", target.log.display()))
            })
        });
        let failure = done.into_stream().filter_map(|r| async move {
            match r {
                Ok(Ok(())) => None,
                Ok(Err(status)) => Some(Err(status)),
                Err(e) => Some(Err(Status::internal(format!("log reader failed: {e}")))),
            }
        });
        ReceiverStream::new(rx).map(Ok).chain(failure)
    }

    /// The current run of a container, which must be running.
    fn running(&self, uid: &str, container: &str) -> Result<RunTarget, Status> {
        let target = self
            .pods
            .target(uid, container, false)
            .map_err(crate::rpc::status)?;
        target.require_running().map_err(crate::rpc::status)?;
        Ok(target)
    }

    /// Runs an exec session whose first message is `ExecStart`.
    pub async fn exec(
        &self,
        mut input: tonic::Streaming<pb::ExecInput>,
    ) -> Result<Responses<pb::ExecOutput>, Status> {
        use pb::exec_input::Input;
        let Some(Input::Start(start)) = input.message().await?.and_then(|m| m.input) else {
            return Err(not_started());
        };
        let target = self.running(&start.uid, &start.container)?;
        let tty = start.tty.then(|| {
            let size = start.terminal_size.unwrap_or_default();
            (size.width, size.height)
        });
        let (process, io) = match self
            .pods
            .containerd()
            .start_exec(&target.id, &start.command, tty, start.stdin)
            .await
        {
            Ok(started) => started,
            Err(e) => match unstartable_exit_code(&e) {
                // The command could not be run: a finished session with the
                // shell's status for it (126, 127) and runc's reason on stderr,
                // as `kubectl exec` reports it, not a failed call.
                Some(code) => {
                    let reason = format!("{e}\n");
                    let outputs = [
                        pb::ExecOutput {
                            output: Some(Output::Stderr(reason.into_bytes().into())),
                        },
                        pb::ExecOutput {
                            output: Some(Output::Exit(pb::ExitStatus {
                                code,
                                reason: "CommandNotRunnable".into(),
                            })),
                        },
                    ];
                    return Ok(Box::pin(futures::stream::iter(outputs.map(Ok))));
                }
                None => return Err(crate::rpc::status(e.into())),
            },
        };
        let controls = input.filter_map(|m| async move {
            match m.ok()?.input? {
                Input::Stdin(b) => Some(Control::Stdin(b)),
                Input::Resize(s) => Some(Control::Resize(s)),
                Input::CloseStdin(_) => Some(Control::CloseStdin),
                Input::Start(_) => None,
            }
        });
        let (tx, rx) = mpsc::channel(EXEC_CHANNEL);
        tokio::spawn(session(process, io, Box::pin(controls), tx));
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    /// Runs an attach session whose first message is `AttachStart`.
    pub async fn attach(
        &self,
        mut input: tonic::Streaming<pb::AttachInput>,
    ) -> Result<Responses<pb::ExecOutput>, Status> {
        use pb::attach_input::Input;
        let Some(Input::Start(start)) = input.message().await?.and_then(|m| m.input) else {
            return Err(not_started());
        };
        let target = self.running(&start.uid, &start.container)?;
        if start.stdin || start.tty {
            return Err(Status::failed_precondition(format!(
                "container {:?} in pod {} has no {}: ORCA starts containers without stdin and without a terminal; attach without -i/-t, or use exec",
                target.container,
                target.pod,
                if start.tty { "terminal" } else { "stdin" }
            )));
        }
        let opts = ReadOptions {
            tail_lines: Some(0),
            ..Default::default()
        };
        let follow = self.follower(&target);
        let pods = self.pods.clone();
        let exit_target = target.clone();
        let output = self
            .read_log(target, opts, Some(follow))
            .map(|c| {
                c.map(|c| pb::ExecOutput {
                    output: Some(match c.stream {
                        LogStream::Stdout => Output::Stdout(c.data.into()),
                        LogStream::Stderr => Output::Stderr(c.data.into()),
                    }),
                })
            })
            .chain(futures::stream::once(async move {
                let code = pods.run_exit(&exit_target).flatten();
                Ok(pb::ExecOutput {
                    output: Some(Output::Exit(pb::ExitStatus {
                        code: code.unwrap_or(-1),
                        reason: if code.is_some() {
                            String::new()
                        } else {
                            "the container's exit status is unknown".into()
                        },
                    })),
                })
            }));
        // The client may still send (a resize); read and ignore it until it ends.
        tokio::spawn(async move { while input.next().await.is_some() {} });
        Ok(Box::pin(output))
    }
}

fn not_started() -> Status {
    Status::invalid_argument("the first message must be `start`")
}

fn output_stream(s: LogStream) -> pb::OutputStream {
    match s {
        LogStream::Stdout => pb::OutputStream::Stdout,
        LogStream::Stderr => pb::OutputStream::Stderr,
    }
}

/// One exec session: feeds input, relays output, and ends with the exit status.
/// Returns early, dropping (and so killing) the process, when the client is gone.
async fn session(
    process: ExecProcess,
    io: ExecIo,
    controls: Pin<Box<dyn Stream<Item = Control> + Send>>,
    tx: mpsc::Sender<Result<pb::ExecOutput, Status>>,
) {
    let ExecIo {
        stdin,
        stdout,
        stderr,
    } = io;
    let outputs = async {
        let stderr = async {
            if let Some(rx) = stderr {
                pump(rx, Output::Stderr, &tx).await
            }
        };
        tokio::join!(pump(stdout, Output::Stdout, &tx), stderr);
    };
    let mut outputs = std::pin::pin!(outputs.fuse());
    let exited = {
        let inputs = feed(&process, stdin, controls).fuse();
        let mut inputs = std::pin::pin!(inputs);
        let wait = process.wait();
        let mut wait = std::pin::pin!(wait);
        loop {
            tokio::select! {
                status = &mut wait => break status,
                () = &mut inputs, if !inputs.is_terminated() => {}
                () = &mut outputs, if !outputs.is_terminated() => {}
                () = tx.closed() => {
                    debug!(exec = process.id(), "exec client gone; killing the process");
                    return;
                }
            }
        }
    };
    process.finish(&mut outputs).await;
    let last = match exited {
        Ok(code) => Ok(pb::ExecOutput {
            output: Some(Output::Exit(pb::ExitStatus {
                code: i32::try_from(code).unwrap_or(i32::MAX),
                reason: String::new(),
            })),
        }),
        Err(e) => Err(crate::rpc::status(e.into())),
    };
    let _ = tx.send(last).await;
}

/// The status a shell gives a command it cannot run, from runc's reason: 127
/// when the executable does not exist, 126 when it exists but cannot be
/// executed; `None` for any other failure (a call that failed, not a command).
fn unstartable_exit_code(error: &crate::runtime::RuntimeError) -> Option<i32> {
    let crate::runtime::RuntimeError::Containerd {
        op: "Tasks.Start",
        source,
    } = error
    else {
        return None;
    };
    let e = source.message().to_ascii_lowercase();
    if e.contains("executable file not found") || e.contains("no such file or directory") {
        Some(127)
    } else if e.contains("permission denied")
        || e.contains("is a directory")
        || e.contains("exec format error")
    {
        Some(126)
    } else {
        None
    }
}

/// Writes client input to the process until the client stops sending; then
/// closes its stdin (a client that is done sending has reached its EOF).
async fn feed(
    process: &ExecProcess,
    mut stdin: Option<pipe::Sender>,
    mut controls: Pin<Box<dyn Stream<Item = Control> + Send>>,
) {
    while let Some(control) = controls.next().await {
        match control {
            Control::Stdin(bytes) => {
                if let Some(w) = &mut stdin
                    && let Err(e) = w.write_all(&bytes).await
                {
                    debug!(exec = process.id(), error = %e, "exec stdin closed");
                    stdin = None;
                }
            }
            Control::Resize(size) => {
                if let Err(e) = process.resize(size.width, size.height).await {
                    debug!(exec = process.id(), error = %e, "terminal not resized");
                }
            }
            Control::CloseStdin => close_stdin(process, &mut stdin).await,
        }
    }
    close_stdin(process, &mut stdin).await;
}

async fn close_stdin(process: &ExecProcess, stdin: &mut Option<pipe::Sender>) {
    if stdin.take().is_some()
        && let Err(e) = process.close_stdin().await
    {
        debug!(exec = process.id(), error = %e, "exec stdin not closed");
    }
}

/// Relays one output FIFO to the client until EOF or until the client is gone.
async fn pump(
    mut rx: pipe::Receiver,
    wrap: fn(bytes::Bytes) -> Output,
    tx: &mpsc::Sender<Result<pb::ExecOutput, Status>>,
) {
    let mut buf = vec![0; EXEC_READ];
    loop {
        match rx.read(&mut buf).await {
            Ok(0) => return,
            Ok(n) => {
                let message = pb::ExecOutput {
                    output: Some(wrap(bytes::Bytes::copy_from_slice(&buf[..n]))),
                };
                if tx.send(Ok(message)).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                debug!(error = %e, "reading exec output failed");
                return;
            }
        }
    }
}
