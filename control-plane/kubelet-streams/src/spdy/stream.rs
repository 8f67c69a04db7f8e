//! One stream of a SPDY connection: its headers, its incoming bytes (until the
//! peer's FIN) and its outgoing half.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::connection::{Command, Shared};
use super::frame::{Frame, rst};
use super::headers::Headers;

/// Largest DATA frame we send: writes are cut into frames this size, each
/// waiting for its room in the connection's send budget.
pub const MAX_CHUNK: usize = 32 * 1024;

/// Errors writing to a stream.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The peer (or we) reset the stream.
    #[error("stream {id} was reset")]
    Reset {
        /// Stream id.
        id: u32,
    },
    /// We already sent FIN on the stream.
    #[error("stream {id} is closed for writing")]
    Closed {
        /// Stream id.
        id: u32,
    },
    /// The connection is closing or gone.
    #[error("the SPDY connection is closed")]
    ConnectionClosed,
}

/// Per-stream state shared by the reader task and the stream's writers.
#[derive(Debug, Default)]
pub(super) struct Flags {
    /// We sent FIN (or may not send: unidirectional).
    pub(super) local_fin: AtomicBool,
    /// The peer sent FIN.
    pub(super) remote_fin: AtomicBool,
    /// Either side reset the stream.
    pub(super) reset: AtomicBool,
}

/// A stream the client opened, already accepted with SYN_REPLY.
#[derive(Debug)]
pub struct Stream {
    pub(super) id: u32,
    pub(super) headers: Headers,
    pub(super) reader: StreamReader,
    pub(super) writer: StreamWriter,
}

impl Stream {
    /// The stream id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The headers of its SYN_STREAM.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// The outgoing half, borrowed.
    pub fn writer(&self) -> &StreamWriter {
        &self.writer
    }

    /// The two halves.
    pub fn split(self) -> (StreamReader, StreamWriter) {
        (self.reader, self.writer)
    }
}

/// The incoming half: DATA payloads in order; `None` after the peer's FIN or
/// reset, or when the connection ends.
#[derive(Debug)]
pub struct StreamReader {
    pub(super) rx: mpsc::Receiver<Bytes>,
}

impl StreamReader {
    /// The next payload.
    pub async fn read(&mut self) -> Option<Bytes> {
        self.rx.recv().await
    }

    /// The payloads as a channel (it closes at the peer's FIN).
    pub fn into_receiver(self) -> mpsc::Receiver<Bytes> {
        self.rx
    }
}

/// The outgoing half. Clones write to the same stream.
#[derive(Debug, Clone)]
pub struct StreamWriter {
    pub(super) id: u32,
    pub(super) flags: Arc<Flags>,
    pub(super) shared: Arc<Shared>,
}

impl StreamWriter {
    /// The stream id.
    pub fn id(&self) -> u32 {
        self.id
    }

    fn check(&self) -> Result<(), StreamError> {
        if self.flags.reset.load(Ordering::Acquire) {
            return Err(StreamError::Reset { id: self.id });
        }
        if self.flags.local_fin.load(Ordering::Acquire) {
            return Err(StreamError::Closed { id: self.id });
        }
        if self.shared.is_closing() {
            return Err(StreamError::ConnectionClosed);
        }
        Ok(())
    }

    /// Sends `data` as DATA frames of at most [`MAX_CHUNK`] bytes. Waits while
    /// the connection has more than its budget queued for the socket (that is
    /// the back-pressure: the peer's reading). SPDY/3's flow-control windows
    /// are not enforced, as Go's spdystream (Kubernetes' peer) neither honours
    /// nor sends WINDOW_UPDATE: waiting for one would stall a large write
    /// forever.
    pub async fn write(&self, mut data: Bytes) -> Result<(), StreamError> {
        while !data.is_empty() {
            self.check()?;
            let chunk = data.split_to(data.len().min(MAX_CHUNK));
            let permits = u32::try_from(chunk.len()).unwrap_or(u32::MAX);
            let permit = self
                .shared
                .budget
                .clone()
                .acquire_many_owned(permits)
                .await
                .map_err(|_| StreamError::ConnectionClosed)?;
            self.check()?;
            self.shared
                .send(Command::Data {
                    stream_id: self.id,
                    data: chunk,
                    fin: false,
                    permit: Some(permit),
                })
                .map_err(|_| StreamError::ConnectionClosed)?;
        }
        Ok(())
    }

    /// Queues `data` without waiting for room in the send budget; for a last
    /// small message where nothing can wait (a `Drop`).
    pub fn write_now(&self, mut data: Bytes) {
        while !data.is_empty() && self.check().is_ok() {
            let chunk = data.split_to(data.len().min(MAX_CHUNK));
            let _ = self.shared.send(Command::Data {
                stream_id: self.id,
                data: chunk,
                fin: false,
                permit: None,
            });
        }
    }

    /// Half-closes the stream (an empty DATA frame with FIN) after what was
    /// written; later calls do nothing.
    pub fn close(&self) {
        if self.flags.reset.load(Ordering::Acquire)
            || self.flags.local_fin.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let _ = self.shared.send(Command::Data {
            stream_id: self.id,
            data: Bytes::new(),
            fin: true,
            permit: None,
        });
        self.shared.forget_if_remote_done(self.id, &self.flags);
    }

    /// Aborts the stream in both directions (RST_STREAM with CANCEL, as
    /// spdystream's `Reset`).
    pub fn reset(&self) {
        if self.flags.reset.swap(true, Ordering::AcqRel) {
            return;
        }
        self.flags.local_fin.store(true, Ordering::Release);
        let _ = self.shared.send(Command::Frame(Frame::RstStream {
            stream_id: self.id,
            status: rst::CANCEL,
        }));
        self.shared.forget(self.id);
    }
}
