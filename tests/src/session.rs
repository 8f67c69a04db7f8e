//! Exec and attach sessions driven through AdminService, message by message, as
//! a terminal client would: stdin, resizes, stdin close, and the output read
//! until what a test waits for shows up.

use orca_cli::Admin;
use orca_proto::agent::v1::{self as agent, exec_input::Input, exec_output::Output};
use orca_proto::controlplane::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::cluster::DEADLINE;

/// An open exec session and what it has printed so far.
pub struct ExecSession {
    tx: Option<mpsc::Sender<pb::ExecInput>>,
    output: tonic::Streaming<agent::ExecOutput>,
    /// Standard output (the terminal's output with a TTY) so far.
    pub stdout: Vec<u8>,
    /// Standard error so far.
    pub stderr: Vec<u8>,
    /// The exit code, once the session ended.
    pub exit: Option<i32>,
}

/// What to run: `command` in `container` (empty: the only one) of pod `pod` in
/// namespace `default`.
pub struct ExecSpec<'a> {
    /// Pod name.
    pub pod: &'a str,
    /// Container name or empty.
    pub container: &'a str,
    /// Command and arguments.
    pub command: &'a [&'a str],
    /// Send stdin.
    pub stdin: bool,
    /// Allocate a terminal.
    pub tty: bool,
}

impl ExecSession {
    /// Starts the session; the error is the status the control plane answered.
    pub async fn open(admin: &mut Admin, spec: ExecSpec<'_>) -> Result<Self, tonic::Status> {
        let (tx, rx) = mpsc::channel(16);
        let start = agent::ExecStart {
            container: spec.container.into(),
            command: spec.command.iter().map(|s| s.to_string()).collect(),
            tty: spec.tty,
            stdin: spec.stdin,
            ..Default::default()
        };
        tx.send(pb::ExecInput {
            namespace: "default".into(),
            name: spec.pod.into(),
            input: Some(agent::ExecInput {
                input: Some(Input::Start(start)),
            }),
        })
        .await
        .expect("channel open");
        let output = admin.exec(ReceiverStream::new(rx)).await?.into_inner();
        Ok(Self {
            tx: Some(tx),
            output,
            stdout: Vec::new(),
            stderr: Vec::new(),
            exit: None,
        })
    }

    async fn send(&self, input: Input) {
        let tx = self.tx.as_ref().expect("input still open");
        tx.send(pb::ExecInput {
            input: Some(agent::ExecInput { input: Some(input) }),
            ..Default::default()
        })
        .await
        .expect("session input open");
    }

    /// Sends bytes to the process's stdin.
    pub async fn stdin(&self, bytes: &[u8]) {
        self.send(Input::Stdin(bytes.to_vec().into())).await
    }

    /// Resizes the terminal.
    pub async fn resize(&self, width: u32, height: u32) {
        self.send(Input::Resize(agent::TerminalSize { width, height }))
            .await
    }

    /// Closes stdin (EOF).
    pub async fn close_stdin(&self) {
        self.send(Input::CloseStdin(true)).await
    }

    /// Reads one message; false when the stream ended.
    async fn read_one(&mut self) -> Result<bool, tonic::Status> {
        let message = tokio::time::timeout(DEADLINE, self.output.message())
            .await
            .map_err(|_| {
                tonic::Status::deadline_exceeded("no exec output within the deadline")
            })??;
        match message.and_then(|m| m.output) {
            Some(Output::Stdout(b)) => self.stdout.extend_from_slice(&b),
            Some(Output::Stderr(b)) => self.stderr.extend_from_slice(&b),
            Some(Output::Exit(s)) => self.exit = Some(s.code),
            None => return Ok(false),
        }
        Ok(true)
    }

    /// Reads until stdout contains `needle` (panics at the deadline or at the end).
    pub async fn until_stdout(&mut self, needle: &str) {
        while !String::from_utf8_lossy(&self.stdout).contains(needle) {
            let more = self.read_one().await.expect("exec output");
            assert!(
                more && self.exit.is_none(),
                "session ended before printing {needle:?}: stdout {:?}, stderr {:?}",
                String::from_utf8_lossy(&self.stdout),
                String::from_utf8_lossy(&self.stderr)
            );
        }
    }

    /// Stops sending input (half-closes the request stream).
    pub fn end_input(&mut self) {
        self.tx = None;
    }

    /// Reads to the end; the exit code, or the status the stream ended with.
    pub async fn finish(&mut self) -> Result<i32, tonic::Status> {
        while self.read_one().await? {}
        self.exit
            .ok_or_else(|| tonic::Status::internal("stream ended without an exit status"))
    }
}
