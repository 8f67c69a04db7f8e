//! `orca logs`, `orca exec` and `orca attach`: the streams of AdminService on
//! the local terminal, with kubectl's flags and behaviour.

use std::io::Write as _;
use std::time::Duration;

use clap::Args;
use orca_proto::agent::v1::{self as agent, exec_output::Output};
use orca_proto::controlplane::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::terminal::{self, RawMode};
use super::{Admin, CliError};

/// Flags of `orca logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Pod name.
    pub pod: String,
    /// Container; may be left out when the pod has one.
    #[arg(long, short = 'c', default_value = "")]
    pub container: String,
    /// Keep printing new lines until the container ends.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Only the last N lines (-1: all).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub tail: i64,
    /// Only lines newer than this (e.g. 30s, 5m, 1h30m).
    #[arg(long, value_parser = parse_duration, conflicts_with = "since_time")]
    pub since: Option<Duration>,
    /// Only lines at or after this RFC 3339 time.
    #[arg(long)]
    pub since_time: Option<jiff::Timestamp>,
    /// Prefix lines with their RFC 3339 timestamps.
    #[arg(long)]
    pub timestamps: bool,
    /// The previous run of a restarted container.
    #[arg(long, short = 'p')]
    pub previous: bool,
    /// Stop after this many bytes.
    #[arg(long)]
    pub limit_bytes: Option<u64>,
}

/// Flags of `orca exec` and `orca attach`.
#[derive(Debug, Args)]
pub struct SessionArgs {
    /// Pod name.
    pub pod: String,
    /// Container; may be left out when the pod has one.
    #[arg(long, short = 'c', default_value = "")]
    pub container: String,
    /// Pass standard input to the process.
    #[arg(long, short = 'i')]
    pub stdin: bool,
    /// Give the process a terminal (this one, in raw mode, with its size).
    #[arg(long, short = 't')]
    pub tty: bool,
}

pub use orca_model::duration::parse as parse_duration;

/// `orca logs`.
pub async fn logs(client: &mut Admin, namespace: String, args: LogsArgs) -> Result<(), CliError> {
    let options = agent::LogsRequest {
        container: args.container,
        follow: args.follow,
        tail_lines: Some(args.tail),
        since_seconds: args.since.map_or(0, |d| d.as_secs().max(1) as i64),
        since_time: args.since_time.map(|t| prost_types::Timestamp {
            seconds: t.as_second(),
            nanos: t.subsec_nanosecond(),
        }),
        timestamps: args.timestamps,
        previous: args.previous,
        limit_bytes: args.limit_bytes.map_or(0, |n| n as i64),
        ..Default::default()
    };
    let req = pb::LogsRequest {
        namespace,
        name: args.pod,
        options: Some(options),
    };
    let mut stream = client.logs(req).await?.into_inner();
    let mut stdout = std::io::stdout().lock();
    while let Some(chunk) = stream.message().await? {
        stdout.write_all(&chunk.data)?;
        stdout.flush()?;
    }
    Ok(())
}

/// `orca exec`: runs `command` in the container; the remote exit code is returned.
pub async fn exec(
    client: &mut Admin,
    namespace: String,
    args: SessionArgs,
    command: Vec<String>,
) -> Result<i32, CliError> {
    let tty = usable_tty(&args);
    let start = agent::ExecStart {
        container: args.container,
        command,
        tty,
        stdin: args.stdin,
        terminal_size: tty
            .then(terminal::size)
            .flatten()
            .map(|(width, height)| agent::TerminalSize { width, height }),
        ..Default::default()
    };
    let first = pb::ExecInput {
        namespace,
        name: args.pod,
        input: Some(agent::ExecInput {
            input: Some(agent::exec_input::Input::Start(start)),
        }),
    };
    let (requests, _raw) = open(first, args.stdin, tty)?;
    let output = client.exec(requests).await?.into_inner();
    print_session(output).await
}

/// `orca attach`: the main process's output from now on, and its exit code.
pub async fn attach(
    client: &mut Admin,
    namespace: String,
    args: SessionArgs,
) -> Result<i32, CliError> {
    let tty = usable_tty(&args);
    let start = agent::AttachStart {
        container: args.container,
        stdin: args.stdin,
        tty,
        ..Default::default()
    };
    let first = pb::AttachInput {
        namespace,
        name: args.pod,
        input: Some(agent::AttachInput {
            input: Some(agent::attach_input::Input::Start(start)),
        }),
    };
    let (requests, _raw) = open(first, args.stdin, tty)?;
    let output = client.attach(requests).await?.into_inner();
    print_session(output).await
}

/// `-t` needs a terminal on stdin; without one, kubectl goes on without a TTY.
fn usable_tty(args: &SessionArgs) -> bool {
    if args.tty && !(args.stdin && terminal::stdin_is_terminal()) {
        eprintln!("Unable to use a TTY - input is not a terminal or the right kind of file");
        return false;
    }
    args.tty
}

/// Local input to a session.
enum Local {
    Stdin(Vec<u8>),
    Resize(agent::TerminalSize),
    CloseStdin,
}

/// A session's request message: exec and attach wrap the same inputs.
trait Request: Send + 'static {
    fn wrap(local: Local) -> Self;
}

macro_rules! session_request {
    ($outer:ty, $inner:ident, $input:ident) => {
        impl Request for $outer {
            fn wrap(local: Local) -> Self {
                use agent::$input::Input;
                let input = match local {
                    Local::Stdin(b) => Input::Stdin(b.into()),
                    Local::Resize(s) => Input::Resize(s),
                    Local::CloseStdin => Input::CloseStdin(true),
                };
                Self {
                    input: Some(agent::$inner { input: Some(input) }),
                    ..Default::default()
                }
            }
        }
    };
}

session_request!(pb::ExecInput, ExecInput, exec_input);
session_request!(pb::AttachInput, AttachInput, attach_input);

/// The session's requests: `first`, then standard input (read on a thread of its
/// own, so a read that never returns cannot hold up `orca`'s exit; EOF becomes a
/// stdin close) and, with a terminal, its size after every SIGWINCH (the size at
/// the start travels in `first`). With a terminal, also the raw mode guard.
fn open<T: Request>(
    first: T,
    stdin: bool,
    tty: bool,
) -> Result<(ReceiverStream<T>, Option<RawMode>), CliError> {
    let (tx, rx) = mpsc::channel(16);
    tx.try_send(first)
        .map_err(|_| CliError::Usage("session channel full".into()))?;
    let raw = if tty { Some(RawMode::enable()?) } else { None };
    if tty {
        let tx = tx.clone();
        let mut winch =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())?;
        tokio::spawn(async move {
            while winch.recv().await.is_some() {
                if let Some((width, height)) = terminal::size() {
                    let size = agent::TerminalSize { width, height };
                    if tx.send(T::wrap(Local::Resize(size))).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
    if stdin {
        std::thread::spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = vec![0; 32 * 1024];
            loop {
                match std::io::Read::read(&mut stdin, &mut buf) {
                    Ok(0) | Err(_) => {
                        let _ = tx.blocking_send(T::wrap(Local::CloseStdin));
                        return;
                    }
                    Ok(n) => {
                        if tx
                            .blocking_send(T::wrap(Local::Stdin(buf[..n].to_vec())))
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            }
        });
    }
    Ok((ReceiverStream::new(rx), raw))
}

/// Prints a session's output as it comes; returns the remote exit code.
async fn print_session(mut output: tonic::Streaming<agent::ExecOutput>) -> Result<i32, CliError> {
    let mut stdout = std::io::stdout().lock();
    while let Some(message) = output.message().await? {
        match message.output {
            Some(Output::Stdout(b)) => {
                stdout.write_all(&b)?;
                stdout.flush()?;
            }
            Some(Output::Stderr(b)) => {
                let mut stderr = std::io::stderr().lock();
                stderr.write_all(&b)?;
                stderr.flush()?;
            }
            Some(Output::Exit(status)) => {
                if !status.reason.is_empty() {
                    eprintln!("{}", status.reason);
                }
                return Ok(status.code);
            }
            None => {}
        }
    }
    Err(CliError::Call(tonic::Status::unavailable(
        "the session ended without an exit status",
    )))
}
