//! Exec and attach sessions: one interface over SPDY/3.1 streams and
//! WebSocket channels.
//!
//! After the 101 ([`negotiate`](crate::upgrade::negotiate)), [`accept`] sets the session up the
//! kubelet's way:
//! - SPDY: waits (bounded) for the streams the client must create, told apart
//!   by their `streamType` header: `error` always, `stdin`/`stdout`/`stderr`
//!   as requested (`stderr` never with a TTY), `resize` with a TTY from
//!   protocol v3 on. Other streams are refused.
//! - WebSocket: channels 0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize are
//!   there at once; an empty message on the lowest requested output channel
//!   tells the client the session is up. Nothing is sent before
//!   [`WEBSOCKET_CLIENT_GRACE`] (client-go drops what comes too early).
//!
//! The [`Finisher`] writes the outcome on the error stream/channel
//! ([`status`]), closes every stream and ends the connection cleanly.

pub mod resize;
pub mod status;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OnceCell, mpsc};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::channels::{self, ChannelProtocol, ChannelWriter};
use crate::spdy;
use crate::upgrade::{Kind, Negotiated, Transport};

/// How long [`accept`] waits for a SPDY client's streams by default (the
/// kubelet's `streamCreationTimeout`).
pub const DEFAULT_STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);

/// Resizes buffered before the resize pump waits for the session.
const RESIZE_QUEUE: usize = 8;

/// How long a WebSocket session holds its first message back. client-go
/// registers its channels in a goroutine racing the one that reads: a message
/// that arrives first is dropped ("Unknown stream id"), and a Close that
/// arrives first fails the whole exec ("closed all streams"). Behind a real
/// API server the kubelet's own round trips hide the race; a session that
/// answers at once must wait.
pub const WEBSOCKET_CLIENT_GRACE: Duration = Duration::from_millis(100);

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;

/// Which streams the client asked for (the kubelet's query parameters).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamOptions {
    /// `stdin`: the client sends input.
    pub stdin: bool,
    /// `stdout`: the client wants standard output.
    pub stdout: bool,
    /// `stderr`: the client wants standard error (never with `tty`).
    pub stderr: bool,
    /// `tty`: a terminal; its output is all on stdout.
    pub tty: bool,
}

impl StreamOptions {
    /// Reads `stdin`, `stdout`, `stderr`, `tty` (also the old names `input`
    /// and `output`) from a query string; `1` and `true` set them. With a TTY,
    /// stderr is dropped, as the kubelet does.
    pub fn from_query(query: &str) -> Self {
        let mut o = Self::default();
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            let on = matches!(value.as_ref(), "1") || value.eq_ignore_ascii_case("true");
            match key.as_ref() {
                "stdin" | "input" => o.stdin = on,
                "stdout" | "output" => o.stdout = on,
                "stderr" | "error" => o.stderr = on,
                "tty" => o.tty = on,
                _ => {}
            }
        }
        if o.tty {
            o.stderr = false;
        }
        o
    }

    /// Whether any stream is requested (the kubelet answers 400 otherwise).
    pub fn any(&self) -> bool {
        self.stdin || self.stdout || self.stderr
    }
}

/// A terminal size, as client-go sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TerminalSize {
    /// Columns.
    pub width: u16,
    /// Rows.
    pub height: u16,
}

/// How the session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The process exited with this code (0: success).
    Exited(i32),
    /// The session failed otherwise.
    Error(String),
}

/// The connection is closing or gone.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the exec/attach session is closed")]
pub struct SessionClosed;

/// Errors setting a session up.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The SPDY client did not create the streams in time.
    #[error(
        "timed out after {timeout:?} waiting for the client to create streams (missing: {missing})"
    )]
    StreamTimeout {
        /// The wait.
        timeout: Duration,
        /// The stream types still missing.
        missing: String,
    },
    /// The client closed the connection during setup.
    #[error("the client closed the connection before creating its streams")]
    ClientGone,
    /// A negotiation for something else.
    #[error("{0} is not an exec/attach transport")]
    WrongTransport(&'static str),
}

/// One exec or attach session.
#[derive(Debug)]
pub struct RemoteSession {
    /// Client input; `None` if not requested. Ends at the client's EOF
    /// (SPDY FIN, v5 CLOSE) or when the connection ends.
    pub stdin: Option<mpsc::Receiver<Bytes>>,
    /// Terminal resizes; never yields for a client that cannot resize.
    pub resize: mpsc::Receiver<TerminalSize>,
    /// Standard output; `None` if not requested.
    pub stdout: Option<OutputSender>,
    /// Standard error; `None` if not requested (always with a TTY).
    pub stderr: Option<OutputSender>,
    /// Ends the session.
    pub finish: Finisher,
}

#[derive(Debug, Clone)]
enum Output {
    Spdy(spdy::StreamWriter),
    Channel(ChannelWriter, u8, Arc<Greeting>),
}

/// The kubelet's "connected" signal on WebSocket sessions: an empty message
/// on the lowest requested output channel, sent once, before anything else,
/// after [`WEBSOCKET_CLIENT_GRACE`].
#[derive(Debug)]
struct Greeting {
    sent: OnceCell<()>,
    writer: ChannelWriter,
    channel: u8,
    not_before: Instant,
}

impl Greeting {
    async fn sent(&self) {
        self.sent
            .get_or_init(|| async {
                tokio::time::sleep_until(self.not_before).await;
                let _ = self.writer.write(self.channel, Bytes::new()).await;
            })
            .await;
    }
}

/// Sends one output stream to the client.
#[derive(Debug, Clone)]
pub struct OutputSender(Output);

impl OutputSender {
    /// Sends `data`; waits while the connection has too much queued (the
    /// client is slow to read).
    pub async fn send(&self, data: Bytes) -> Result<(), SessionClosed> {
        match &self.0 {
            Output::Spdy(w) => w.write(data).await.map_err(|_| SessionClosed),
            Output::Channel(w, channel, greeting) => {
                greeting.sent().await;
                w.write(*channel, data).await.map_err(|_| SessionClosed)
            }
        }
    }
}

#[derive(Debug)]
enum Ending {
    Spdy {
        connection: spdy::Connection,
        error: spdy::StreamWriter,
        streams: Vec<spdy::StreamWriter>,
    },
    Channels(ChannelWriter, Arc<Greeting>),
}

/// Ends a session: status, then a clean close. Dropped without
/// [`finish`](Self::finish), it reports an error to the client.
#[derive(Debug)]
pub struct Finisher {
    ending: Option<Ending>,
    version: u8,
    /// Keeps the resize queue open when nothing feeds it.
    _resize: Option<mpsc::Sender<TerminalSize>>,
}

impl Finisher {
    /// Writes `outcome` on the error stream as the negotiated protocol
    /// version wants it, after all output already sent; then closes every
    /// stream and the connection (SPDY GOAWAY / WebSocket Close 1000) and
    /// waits until that is on the wire.
    pub async fn finish(mut self, outcome: Outcome) {
        let status = status::encode(self.version, &outcome).map(Bytes::from);
        match self.ending.take() {
            Some(Ending::Spdy {
                connection,
                error,
                streams,
            }) => {
                if let Some(status) = status
                    && let Err(e) = error.write(status).await
                {
                    debug!(error = %e, "exec status not sent");
                }
                error.close();
                streams.iter().for_each(spdy::StreamWriter::close);
                connection.close().await;
            }
            Some(Ending::Channels(writer, greeting)) => {
                greeting.sent().await;
                if let Some(status) = status
                    && writer.write(ERROR, status).await.is_err()
                {
                    debug!("exec status not sent");
                }
                writer.close().await;
            }
            None => {}
        }
    }
}

impl Drop for Finisher {
    fn drop(&mut self) {
        let Some(ending) = self.ending.take() else {
            return;
        };
        warn!("exec/attach session dropped without an outcome; closing it");
        let outcome = Outcome::Error("the session ended without an exit status".into());
        let status = status::encode(self.version, &outcome).map(Bytes::from);
        match ending {
            Ending::Spdy {
                connection,
                error,
                streams,
            } => {
                if let Some(status) = status {
                    error.write_now(status);
                }
                error.close();
                streams.iter().for_each(spdy::StreamWriter::close);
                connection.close_now();
            }
            Ending::Channels(writer, _) => {
                if let Some(status) = status {
                    writer.write_now(ERROR, status);
                }
                writer.close_now();
            }
        }
    }
}

/// Sets an exec/attach session up on `io`, the connection upgraded with
/// `negotiated`'s headers. SPDY waits at most `timeout` for the client's
/// streams ([`DEFAULT_STREAM_CREATION_TIMEOUT`] is the kubelet's).
pub async fn accept<IO>(
    io: IO,
    negotiated: Negotiated,
    options: StreamOptions,
    timeout: Duration,
) -> Result<RemoteSession, ProtocolError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if negotiated.kind != Kind::RemoteCommand {
        return Err(ProtocolError::WrongTransport("a port-forward negotiation"));
    }
    match negotiated.transport {
        Transport::Spdy => accept_spdy(io, negotiated.version, options, timeout).await,
        Transport::WebSocket(protocol) => {
            Ok(accept_channels(io, protocol, negotiated.version, options).await)
        }
        Transport::SpdyOverWebSocket => Err(ProtocolError::WrongTransport("SPDY over WebSocket")),
    }
}

/// The stream types a SPDY client creates for `options` under `version`.
fn expected_streams(options: StreamOptions, version: u8) -> Vec<&'static str> {
    let mut want = vec!["error"];
    for (on, name) in [
        (options.stdin, "stdin"),
        (options.stdout, "stdout"),
        (options.stderr && !options.tty, "stderr"),
        (options.tty && version >= 3, "resize"),
    ] {
        if on {
            want.push(name);
        }
    }
    want
}

async fn accept_spdy<IO>(
    io: IO,
    version: u8,
    options: StreamOptions,
    timeout: Duration,
) -> Result<RemoteSession, ProtocolError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (connection, mut incoming) = spdy::Connection::serve(io, Box::new(|_| Ok(())));
    let want = expected_streams(options, version);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut got: HashMap<&'static str, spdy::Stream> = HashMap::new();
    while got.len() < want.len() {
        let stream = match tokio::time::timeout_at(deadline, incoming.recv()).await {
            Ok(Some(stream)) => stream,
            Ok(None) => return Err(ProtocolError::ClientGone),
            Err(_) => {
                connection.close().await;
                let missing: Vec<_> = want
                    .iter()
                    .filter(|w| !got.contains_key(*w))
                    .copied()
                    .collect();
                return Err(ProtocolError::StreamTimeout {
                    timeout,
                    missing: missing.join(", "),
                });
            }
        };
        let kind = stream.headers().get("streamtype").unwrap_or("");
        match want.iter().find(|w| **w == kind) {
            Some(w) if !got.contains_key(w) => {
                got.insert(w, stream);
            }
            _ => {
                debug!(stream_type = kind, "unexpected exec stream; refused");
                stream.split().1.reset();
            }
        }
    }
    // Streams opened later are refused.
    drop(incoming);
    let mut take = |name: &str| got.remove(name).map(spdy::Stream::split);
    let (_, error) = take("error").ok_or(ProtocolError::ClientGone)?;
    let stdin = take("stdin");
    let stdout = take("stdout");
    let stderr = take("stderr");
    let resize = take("resize");
    let mut streams = Vec::new();
    let (resize_tx, resize_rx) = mpsc::channel(RESIZE_QUEUE);
    let keep_resize = match resize {
        Some((reader, writer)) => {
            streams.push(writer);
            tokio::spawn(resize::pump(reader.into_receiver(), resize_tx));
            None
        }
        None => Some(resize_tx),
    };
    let stdin = stdin.map(|(reader, writer)| {
        streams.push(writer);
        reader.into_receiver()
    });
    let mut output = |s: Option<(spdy::StreamReader, spdy::StreamWriter)>| {
        s.map(|(_, writer)| {
            streams.push(writer.clone());
            OutputSender(Output::Spdy(writer))
        })
    };
    let stdout = output(stdout);
    let stderr = output(stderr);
    Ok(RemoteSession {
        stdin,
        resize: resize_rx,
        stdout,
        stderr,
        finish: Finisher {
            ending: Some(Ending::Spdy {
                connection,
                error,
                streams,
            }),
            version,
            _resize: keep_resize,
        },
    })
}

async fn accept_channels<IO>(
    io: IO,
    protocol: ChannelProtocol,
    version: u8,
    options: StreamOptions,
) -> RemoteSession
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let readable = [options.stdin, false, false, false, true];
    let not_before = Instant::now() + WEBSOCKET_CLIENT_GRACE;
    let mut channels = channels::open(io, protocol, &readable).await;
    let writer = channels.writer;
    let greeting = Arc::new(Greeting {
        sent: OnceCell::new(),
        writer: writer.clone(),
        channel: if options.stdout {
            STDOUT
        } else if options.stderr {
            STDERR
        } else {
            ERROR
        },
        not_before,
    });
    tokio::spawn({
        let greeting = greeting.clone();
        async move { greeting.sent().await }
    });
    let mut reader = |channel: u8| {
        channels
            .readers
            .get_mut(usize::from(channel))
            .and_then(Option::take)
    };
    let stdin = reader(STDIN);
    let (resize_tx, resize_rx) = mpsc::channel(RESIZE_QUEUE);
    let keep_resize = match reader(RESIZE) {
        Some(input) => {
            tokio::spawn(resize::pump(input, resize_tx));
            None
        }
        None => Some(resize_tx),
    };
    let output = |on: bool, channel: u8| {
        on.then(|| OutputSender(Output::Channel(writer.clone(), channel, greeting.clone())))
    };
    RemoteSession {
        stdin,
        resize: resize_rx,
        stdout: output(options.stdout, STDOUT),
        stderr: output(options.stderr, STDERR),
        finish: Finisher {
            ending: Some(Ending::Channels(writer.clone(), greeting.clone())),
            version,
            _resize: keep_resize,
        },
    }
}
