//! The server side of a SPDY/3.1 connection: a reader task that decodes frames
//! and routes them to streams, and a writer task that owns the socket's write
//! half, the header compressor and the frame order.
//!
//! Behaviour follows Go's `moby/spdystream` (what kubectl and the API server
//! speak): every accepted stream gets a SYN_REPLY with no headers before any of
//! our DATA on it; client PINGs are echoed; SETTINGS, WINDOW_UPDATE and
//! HEADERS are read and ignored; DATA on a stream we do not know gets
//! RST_STREAM(INVALID_STREAM); closing sends GOAWAY with the last stream we
//! accepted, shuts the write side down and reads on for at most [`LINGER`] so
//! the client's last frames are not answered with a TCP reset.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, trace, warn};

use super::frame::{self, Frame, FrameError, goaway, rst};
use super::headers::{HeaderCompressor, HeaderDecompressor, Headers};
use super::stream::{Flags, Stream, StreamReader, StreamWriter};

/// How long a closed connection keeps reading (and discarding) what the client
/// still sends, waiting for it to close its side. Closing a socket with unread
/// data makes the kernel send a reset, which can destroy our last frames
/// before the client reads them.
pub const LINGER: Duration = Duration::from_secs(5);

/// Bytes of DATA queued for the socket before writers wait.
const SEND_BUDGET: usize = 256 * 1024;

/// DATA payloads buffered per stream before the reader waits for the stream's
/// consumer (which holds back every stream of the connection, as spdystream
/// does).
const STREAM_QUEUE: usize = 16;

/// New streams buffered before the reader waits for the application.
const INCOMING_QUEUE: usize = 16;

/// Bytes encoded before the writer goes to the socket.
const WRITE_BATCH: usize = 64 * 1024;

/// Decides whether to accept a new stream from its headers; `Err` rejects it
/// with RST_STREAM(CANCEL), as the kubelet rejects port-forward streams
/// without a valid `port` header. The error is the caller's own type (for
/// port-forward, [`StreamRejection`](crate::portforward::StreamRejection)):
/// it is only logged, the client sees the reset.
pub type Accept =
    Box<dyn Fn(&Headers) -> Result<(), Box<dyn std::error::Error + Send + Sync>> + Send + Sync>;

/// What the writer task is asked to do, in order.
pub(super) enum Command {
    /// A control frame.
    Frame(Frame),
    /// DATA; `permit` holds the payload's share of the send budget until written.
    Data {
        stream_id: u32,
        data: Bytes,
        fin: bool,
        permit: Option<OwnedSemaphorePermit>,
    },
    /// GOAWAY, then shut the write side down; `done` is told when flushed.
    Close { done: Option<oneshot::Sender<()>> },
    /// The peer is gone: stop.
    Abort,
}

/// A stream as the reader task routes to it.
struct Entry {
    data: Option<mpsc::Sender<Bytes>>,
    flags: Arc<Flags>,
}

/// What the tasks and the handles share.
pub(super) struct Shared {
    commands: mpsc::UnboundedSender<Command>,
    pub(super) budget: Arc<Semaphore>,
    streams: Mutex<HashMap<u32, Entry>>,
    /// We closed (or the writer failed): no new writes, the reader lingers.
    closing: watch::Sender<bool>,
    /// The reader is done: the connection is over.
    ended: watch::Sender<bool>,
    /// Last stream id we accepted (GOAWAY's last-good-stream-id).
    last_accepted: AtomicU32,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("closing", &*self.closing.borrow())
            .field("ended", &*self.ended.borrow())
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub(super) fn send(&self, command: Command) -> Result<(), ()> {
        self.commands.send(command).map_err(|_| ())
    }

    pub(super) fn is_closing(&self) -> bool {
        *self.closing.borrow() || *self.ended.borrow()
    }

    fn streams(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Entry>> {
        // A panic while holding this lock leaves only plain data behind.
        self.streams.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Drops a stream.
    pub(super) fn forget(&self, id: u32) {
        self.streams().remove(&id);
    }

    /// Drops a stream we just half-closed if the peer already had. Checked
    /// under the lock the reader sets `remote_fin` under, so that one of the
    /// two always sees the other's flag.
    pub(super) fn forget_if_remote_done(&self, id: u32, flags: &Flags) {
        let mut streams = self.streams();
        if flags.remote_fin.load(Ordering::Acquire) {
            streams.remove(&id);
        }
    }
}

/// A handle on a server-side SPDY connection; clones share it.
#[derive(Debug, Clone)]
pub struct Connection {
    shared: Arc<Shared>,
}

impl Connection {
    /// Serves SPDY/3.1 on `io` (an upgraded connection) as the server. Streams
    /// the client opens and `accept` admits come out of the receiver; it
    /// closes when the client goes.
    pub fn serve<IO>(io: IO, accept: Accept) -> (Self, mpsc::Receiver<Stream>)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (commands, command_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            commands,
            budget: Arc::new(Semaphore::new(SEND_BUDGET)),
            streams: Mutex::new(HashMap::new()),
            closing: watch::Sender::new(false),
            ended: watch::Sender::new(false),
            last_accepted: AtomicU32::new(0),
        });
        let (incoming_tx, incoming_rx) = mpsc::channel(INCOMING_QUEUE);
        let (read, write) = tokio::io::split(io);
        tokio::spawn(write_loop(write, command_rx, shared.clone()));
        let reader = Reader {
            shared: shared.clone(),
            incoming: incoming_tx,
            accept,
            last_stream_id: 0,
            peer_gone_away: false,
            deadline: None,
            closing: shared.closing.subscribe(),
        };
        tokio::spawn(reader.run(read));
        (Self { shared }, incoming_rx)
    }

    /// Sends GOAWAY after everything already written, shuts our side down and
    /// waits (at most [`LINGER`]) until that is on the wire. The connection
    /// then reads on until the client closes, for at most [`LINGER`].
    pub async fn close(&self) {
        let (done, flushed) = oneshot::channel();
        if self.begin_close(Some(done)) {
            let _ = tokio::time::timeout(LINGER, flushed).await;
        }
    }

    /// [`close`](Self::close) without waiting (for `Drop`).
    pub fn close_now(&self) {
        self.begin_close(None);
    }

    fn begin_close(&self, done: Option<oneshot::Sender<()>>) -> bool {
        if self.shared.closing.send_replace(true) {
            return false;
        }
        self.shared.send(Command::Close { done }).is_ok()
    }

    /// Resolves when the connection is over (client gone, or closed and
    /// lingered).
    pub async fn ended(&self) {
        let mut ended = self.shared.ended.subscribe();
        let _ = ended.wait_for(|e| *e).await;
    }

    /// Whether writes are refused (closing or over).
    pub fn is_closed(&self) -> bool {
        self.shared.is_closing()
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut io: W,
    mut commands: mpsc::UnboundedReceiver<Command>,
    shared: Arc<Shared>,
) {
    let mut compressor = HeaderCompressor::new();
    let mut out = BytesMut::with_capacity(WRITE_BATCH);
    let mut permits = Vec::new();
    while let Some(first) = commands.recv().await {
        let (mut close, mut abort) = (None, false);
        let mut next = Some(first);
        while let Some(command) = next.take() {
            let frame = match command {
                Command::Frame(frame) => frame,
                Command::Data {
                    stream_id,
                    data,
                    fin,
                    permit,
                } => {
                    permits.extend(permit);
                    Frame::Data {
                        stream_id,
                        fin,
                        data,
                    }
                }
                Command::Close { done } => {
                    close = Some(done);
                    Frame::GoAway {
                        last_good_stream_id: shared.last_accepted.load(Ordering::Acquire),
                        status: goaway::OK,
                    }
                }
                Command::Abort => {
                    abort = true;
                    break;
                }
            };
            if let Err(e) = frame::encode(&frame, &mut compressor, &mut out) {
                // Only a header block can fail, and ours are tiny.
                warn!(error = %e, "SPDY frame not encoded; dropped");
            }
            if close.is_some() || out.len() >= WRITE_BATCH {
                break;
            }
            next = commands.try_recv().ok();
        }
        if !out.is_empty() {
            let written = async {
                io.write_all(&out).await?;
                io.flush().await
            };
            if let Err(e) = written.await {
                debug!(error = %e, "SPDY connection write failed");
                break;
            }
            out.clear();
            permits.clear();
        }
        if let Some(done) = close {
            let _ = tokio::time::timeout(LINGER, io.shutdown()).await;
            if let Some(done) = done {
                let _ = done.send(());
            }
            break;
        }
        if abort {
            let _ = io.shutdown().await;
            break;
        }
    }
    shared.closing.send_replace(true);
    shared.budget.close();
}

/// The reader task's state.
struct Reader {
    shared: Arc<Shared>,
    incoming: mpsc::Sender<Stream>,
    accept: Accept,
    last_stream_id: u32,
    peer_gone_away: bool,
    /// Set once we are closing: reading stops then.
    deadline: Option<Instant>,
    closing: watch::Receiver<bool>,
}

/// Why the reader stopped.
enum End {
    Eof,
    Io(std::io::Error),
    Protocol(FrameError),
    Lingered,
}

impl Reader {
    async fn run<R: AsyncRead + Unpin>(mut self, mut io: R) {
        let mut buf = BytesMut::with_capacity(16 * 1024);
        let mut decompressor = HeaderDecompressor::new();
        let end = loop {
            match frame::decode(&mut buf, &mut decompressor) {
                Ok(Some(frame)) => {
                    self.handle(frame).await;
                    continue;
                }
                Ok(None) => {}
                Err(e) => break End::Protocol(e),
            }
            let read = match self.deadline {
                Some(deadline) => {
                    match tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await {
                        Ok(read) => read,
                        Err(_) => break End::Lingered,
                    }
                }
                None => tokio::select! {
                    read = io.read_buf(&mut buf) => read,
                    _ = self.closing.wait_for(|c| *c) => {
                        self.deadline = Some(Instant::now() + LINGER);
                        continue;
                    }
                },
            };
            match read {
                Ok(0) => break End::Eof,
                Ok(_) => {}
                Err(e) => break End::Io(e),
            }
        };
        match &end {
            End::Eof => debug!("SPDY client closed the connection"),
            End::Lingered => debug!("SPDY client did not close; dropping the connection"),
            End::Io(e) => debug!(error = %e, "SPDY connection read failed"),
            End::Protocol(e) => {
                warn!(error = %e, "SPDY protocol error; closing the connection");
                let _ = self.shared.send(Command::Frame(Frame::GoAway {
                    last_good_stream_id: self.last_stream_id,
                    status: goaway::PROTOCOL_ERROR,
                }));
            }
        }
        // Every stream reads to its end; no new writes; the writer stops
        // (after a close already queued, if any).
        self.shared.streams().clear();
        self.shared.ended.send_replace(true);
        if !self.shared.closing.send_replace(true) {
            let _ = self.shared.send(Command::Abort);
        }
    }

    fn reply(&self, frame: Frame) {
        let _ = self.shared.send(Command::Frame(frame));
    }

    fn reset(&self, stream_id: u32, status: u32) {
        self.reply(Frame::RstStream { stream_id, status });
    }

    async fn handle(&mut self, frame: Frame) {
        trace!(?frame, "SPDY frame received");
        match frame {
            Frame::SynStream {
                stream_id,
                flags,
                headers,
                ..
            } => self.open(stream_id, flags, headers).await,
            Frame::Data {
                stream_id,
                fin,
                data,
            } => self.data(stream_id, fin, data).await,
            Frame::RstStream { stream_id, status } => {
                debug!(
                    stream = stream_id,
                    status, "SPDY stream reset by the client"
                );
                if let Some(entry) = self.shared.streams().remove(&stream_id) {
                    entry.flags.reset.store(true, Ordering::Release);
                }
            }
            Frame::Headers { stream_id, fin, .. } => {
                if fin {
                    self.remote_fin(stream_id);
                }
            }
            // Client pings are odd; echo them. Even ids would answer ours (we send none).
            Frame::Ping { id } if id % 2 == 1 => self.reply(Frame::Ping { id }),
            Frame::GoAway { .. } => self.peer_gone_away = true,
            Frame::Ping { .. }
            | Frame::SynReply { .. }
            | Frame::Settings { .. }
            | Frame::WindowUpdate { .. }
            | Frame::Unknown { .. } => {}
        }
    }

    async fn open(&mut self, stream_id: u32, flags: u8, headers: Headers) {
        if self.deadline.is_some() || self.peer_gone_away || *self.closing.borrow() {
            return self.reset(stream_id, rst::REFUSED_STREAM);
        }
        if stream_id.is_multiple_of(2) || stream_id <= self.last_stream_id {
            debug!(
                stream = stream_id,
                last = self.last_stream_id,
                "SPDY stream id out of order"
            );
            return self.reset(stream_id, rst::PROTOCOL_ERROR);
        }
        self.last_stream_id = stream_id;
        if let Err(reason) = (self.accept)(&headers) {
            debug!(stream = stream_id, %reason, "SPDY stream rejected");
            return self.reset(stream_id, rst::CANCEL);
        }
        let remote_fin = flags & frame::FLAG_FIN != 0;
        let flags = Arc::new(Flags::default());
        flags.remote_fin.store(remote_fin, Ordering::Release);
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        self.shared.streams().insert(
            stream_id,
            Entry {
                data: (!remote_fin).then_some(tx),
                flags: flags.clone(),
            },
        );
        self.shared
            .last_accepted
            .store(stream_id, Ordering::Release);
        // Before the stream is handed out, so it precedes any DATA on it.
        self.reply(Frame::SynReply {
            stream_id,
            fin: false,
            headers: Headers::new(),
        });
        let stream = Stream {
            id: stream_id,
            headers,
            reader: StreamReader { rx },
            writer: StreamWriter {
                id: stream_id,
                flags,
                shared: self.shared.clone(),
            },
        };
        // Closing drops a stream still waiting here; the session is over anyway.
        let delivered: Result<(), Stream> = tokio::select! {
            sent = self.incoming.send(stream) => sent.map_err(|e| e.0),
            _ = self.closing.wait_for(|c| *c) => Ok(()),
        };
        if let Err(stream) = delivered {
            // Nobody takes new streams any more.
            stream.writer.reset();
        }
    }

    async fn data(&mut self, stream_id: u32, fin: bool, data: Bytes) {
        let sender = match self.shared.streams().get(&stream_id) {
            Some(entry) => entry.data.clone(),
            None => {
                if self.deadline.is_none() && !*self.closing.borrow() {
                    self.reset(stream_id, rst::INVALID_STREAM);
                }
                return;
            }
        };
        if let Some(sender) = sender.filter(|_| !data.is_empty() && self.deadline.is_none()) {
            tokio::select! {
                // A consumer that went away just loses the data.
                _ = sender.send(data) => {}
                _ = self.closing.wait_for(|c| *c) => {}
            }
        }
        if fin {
            self.remote_fin(stream_id);
        }
    }

    fn remote_fin(&self, stream_id: u32) {
        let mut streams = self.shared.streams();
        let done = match streams.get_mut(&stream_id) {
            Some(entry) => {
                entry.data = None;
                entry.flags.remote_fin.store(true, Ordering::Release);
                entry.flags.local_fin.load(Ordering::Acquire)
            }
            None => false,
        };
        if done {
            streams.remove(&stream_id);
        }
    }
}
