//! Kubernetes' WebSocket channel protocols, server side, on an already
//! upgraded connection.
//!
//! Every message carries one channel's data behind a channel byte:
//! - `channel.k8s.io`, `v2`..`v5.channel.k8s.io` (and no subprotocol): binary
//!   messages `[channel, data...]`;
//! - `base64.channel.k8s.io`, `v4.base64.channel.k8s.io`: text messages
//!   `'0'+channel` then the data in standard base64;
//! - `v5.channel.k8s.io` adds the CLOSE signal: `[255, channel]` half-closes
//!   that channel (kubectl sends it at the end of stdin).
//!
//! For exec and attach the channels are 0 stdin, 1 stdout, 2 stderr, 3 error,
//! 4 resize; for port-forward, per requested port, data `2i` and error `2i+1`.
//! [`tunnel()`] is the other WebSocket use: kubectl's port-forward tunnels raw
//! SPDY bytes in binary messages (`SPDY/3.1+portforward.k8s.io`).
//!
//! Both directions are pumped by tasks: a reader routes messages to one
//! bounded queue per readable channel, a writer owns the socket's sink.
//! Closing sends a Close frame with code 1000: client-go treats any other
//! close (even one without a code) as an error and drops the error channel's
//! status.

pub mod tunnel;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::{BufMut as _, Bytes, BytesMut};
use futures::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tracing::{debug, warn};

pub use tunnel::tunnel;

/// The v5 CLOSE signal's channel byte.
pub const CLOSE_SIGNAL: u8 = 255;

/// How long a closed connection keeps reading, waiting for the client's Close
/// reply, before it drops the socket.
pub const LINGER: Duration = Duration::from_secs(5);

/// Largest message we send; longer writes are cut.
const MAX_MESSAGE: usize = 32 * 1024;

/// Bytes queued for the socket before writers wait.
const SEND_BUDGET: usize = 256 * 1024;

/// Messages buffered per readable channel before the reader waits.
const CHANNEL_QUEUE: usize = 16;

/// How channel data is framed in messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Binary messages, raw channel byte.
    Binary,
    /// Text messages, channel as an ASCII digit, data in base64.
    Base64,
}

/// A negotiated channel protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelProtocol {
    /// Message framing.
    pub encoding: Encoding,
    /// Whether `[255, channel]` half-closes a channel (`v5.channel.k8s.io`).
    pub close_signal: bool,
}

/// The connection is closing or gone.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the WebSocket connection is closed")]
pub struct ChannelsClosed;

/// The open channels of a connection.
#[derive(Debug)]
pub struct Channels {
    /// Data the client sent, per channel (index = channel number); `Some` for
    /// the channels opened readable. A queue ends at the channel's CLOSE
    /// signal or when the connection ends.
    pub readers: Vec<Option<mpsc::Receiver<Bytes>>>,
    /// Sends on any channel; clones share the connection.
    pub writer: ChannelWriter,
}

/// Opens the channel protocol on `io` (after the 101 response): `readable[i]`
/// says whether data the client sends on channel `i` is kept; data on other
/// channels is dropped, as the kubelet ignores it.
pub async fn open<IO>(io: IO, protocol: ChannelProtocol, readable: &[bool]) -> Channels
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
    let (sink, stream) = ws.split();
    let (commands, command_rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        commands,
        budget: Arc::new(Semaphore::new(SEND_BUDGET)),
        closing: watch::Sender::new(false),
        ended: watch::Sender::new(false),
    });
    let mut readers = Vec::with_capacity(readable.len());
    let mut senders = Vec::with_capacity(readable.len());
    for &r in readable {
        if r {
            let (tx, rx) = mpsc::channel(CHANNEL_QUEUE);
            senders.push(Some(tx));
            readers.push(Some(rx));
        } else {
            senders.push(None);
            readers.push(None);
        }
    }
    tokio::spawn(write_loop(sink, command_rx, shared.clone()));
    tokio::spawn(read_loop(stream, senders, protocol, shared.clone()));
    Channels {
        readers,
        writer: ChannelWriter { shared, protocol },
    }
}

enum Command {
    Message {
        message: Message,
        permit: Option<OwnedSemaphorePermit>,
    },
    Close {
        done: Option<oneshot::Sender<()>>,
    },
    Abort,
}

#[derive(Debug)]
struct Shared {
    commands: mpsc::UnboundedSender<Command>,
    budget: Arc<Semaphore>,
    closing: watch::Sender<bool>,
    ended: watch::Sender<bool>,
}

impl Shared {
    fn is_closing(&self) -> bool {
        *self.closing.borrow() || *self.ended.borrow()
    }
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Message { .. } => f.write_str("Message"),
            Self::Close { .. } => f.write_str("Close"),
            Self::Abort => f.write_str("Abort"),
        }
    }
}

/// Writes to the channels of one connection.
#[derive(Debug, Clone)]
pub struct ChannelWriter {
    shared: Arc<Shared>,
    protocol: ChannelProtocol,
}

impl ChannelWriter {
    /// Sends `data` on `channel`, in messages of at most 32 KiB (one empty
    /// message for empty data, which the kubelet uses as "connected"). Waits
    /// while 256 KiB are queued for the socket.
    pub async fn write(&self, channel: u8, mut data: Bytes) -> Result<(), ChannelsClosed> {
        loop {
            if self.shared.is_closing() {
                return Err(ChannelsClosed);
            }
            let chunk = data.split_to(data.len().min(MAX_MESSAGE));
            let permits = u32::try_from(chunk.len().max(1)).unwrap_or(u32::MAX);
            let permit = self
                .shared
                .budget
                .clone()
                .acquire_many_owned(permits)
                .await
                .map_err(|_| ChannelsClosed)?;
            let message = encode(self.protocol.encoding, channel, &chunk);
            self.shared
                .commands
                .send(Command::Message {
                    message,
                    permit: Some(permit),
                })
                .map_err(|_| ChannelsClosed)?;
            if data.is_empty() {
                return Ok(());
            }
        }
    }

    /// Queues `data` on `channel` as one message without waiting for room in
    /// the send budget; for a last small message where nothing can wait (a
    /// `Drop`).
    pub fn write_now(&self, channel: u8, data: Bytes) {
        if self.shared.is_closing() {
            return;
        }
        let message = encode(self.protocol.encoding, channel, &data);
        let _ = self.shared.commands.send(Command::Message {
            message,
            permit: None,
        });
    }

    /// Sends a Close frame (1000, normal) after everything written, and waits
    /// (at most [`LINGER`]) until it is on the wire. The connection then reads
    /// until the client's Close reply, for at most [`LINGER`].
    pub async fn close(&self) {
        let (done, sent) = oneshot::channel();
        if self.begin_close(Some(done)) {
            let _ = tokio::time::timeout(LINGER, sent).await;
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
        self.shared.commands.send(Command::Close { done }).is_ok()
    }

    /// Resolves when the connection is over.
    pub async fn ended(&self) {
        let mut ended = self.shared.ended.subscribe();
        let _ = ended.wait_for(|e| *e).await;
    }

    /// Whether writes are refused (closing or over).
    pub fn is_closed(&self) -> bool {
        self.shared.is_closing()
    }
}

/// One outgoing message.
pub fn encode(encoding: Encoding, channel: u8, data: &[u8]) -> Message {
    match encoding {
        Encoding::Binary => {
            let mut m = BytesMut::with_capacity(data.len() + 1);
            m.put_u8(channel);
            m.extend_from_slice(data);
            Message::Binary(m.freeze())
        }
        Encoding::Base64 => {
            let mut text = String::with_capacity(data.len() * 4 / 3 + 5);
            text.push(char::from(b'0'.wrapping_add(channel)));
            BASE64.encode_string(data, &mut text);
            Message::Text(Utf8Bytes::from(text))
        }
    }
}

/// What one incoming message means.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// Data for a channel.
    Data(u8, Bytes),
    /// The v5 CLOSE signal for a channel.
    Close(u8),
    /// Nothing to act on (empty, or undecodable base64).
    Nothing,
}

/// Reads one message's payload.
pub fn decode(protocol: ChannelProtocol, payload: Bytes) -> Incoming {
    let Some(&first) = payload.first() else {
        return Incoming::Nothing;
    };
    if protocol.close_signal && first == CLOSE_SIGNAL {
        return match payload.get(1) {
            Some(&channel) => Incoming::Close(channel),
            None => Incoming::Nothing,
        };
    }
    match protocol.encoding {
        Encoding::Binary => Incoming::Data(first, payload.slice(1..)),
        Encoding::Base64 => match BASE64.decode(&payload[1..]) {
            Ok(data) => Incoming::Data(first.wrapping_sub(b'0'), Bytes::from(data)),
            Err(e) => {
                warn!(error = %e, "invalid base64 channel message; dropped");
                Incoming::Nothing
            }
        },
    }
}

/// The normal closure every Kubernetes client expects.
pub fn normal_close() -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: Utf8Bytes::from_static(""),
    }))
}

async fn write_loop<S>(
    mut sink: futures::stream::SplitSink<WebSocketStream<S>, Message>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    shared: Arc<Shared>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut permits = Vec::new();
    while let Some(command) = commands.recv().await {
        match command {
            Command::Message { message, permit } => {
                permits.extend(permit);
                if let Err(e) = sink.feed(message).await {
                    debug!(error = %e, "WebSocket write failed");
                    break;
                }
                if commands.is_empty() {
                    if let Err(e) = sink.flush().await {
                        debug!(error = %e, "WebSocket flush failed");
                        break;
                    }
                    permits.clear();
                }
            }
            Command::Close { done } => {
                let _ = tokio::time::timeout(LINGER, sink.send(normal_close())).await;
                if let Some(done) = done {
                    let _ = done.send(());
                }
                break;
            }
            Command::Abort => break,
        }
    }
    shared.closing.send_replace(true);
    shared.budget.close();
}

async fn read_loop<S>(
    mut stream: futures::stream::SplitStream<WebSocketStream<S>>,
    mut senders: Vec<Option<mpsc::Sender<Bytes>>>,
    protocol: ChannelProtocol,
    shared: Arc<Shared>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut closing = shared.closing.subscribe();
    let mut deadline: Option<Instant> = None;
    loop {
        let next = match deadline {
            Some(d) => match tokio::time::timeout_at(d, stream.next()).await {
                Ok(next) => next,
                Err(_) => {
                    debug!("WebSocket client did not close; dropping the connection");
                    break;
                }
            },
            None => tokio::select! {
                next = stream.next() => next,
                _ = closing.wait_for(|c| *c) => {
                    deadline = Some(Instant::now() + LINGER);
                    continue;
                }
            },
        };
        let payload = match next {
            None => break,
            Some(Err(e)) => {
                debug!(error = %e, "WebSocket read failed");
                break;
            }
            Some(Ok(Message::Binary(b))) => b,
            Some(Ok(Message::Text(t))) => Bytes::from(t),
            // Pings are answered by tungstenite; after a Close the next read
            // flushes our reply and ends the stream.
            Some(Ok(_)) => continue,
        };
        if deadline.is_some() {
            continue;
        }
        match decode(protocol, payload) {
            Incoming::Data(channel, data) => {
                let Some(Some(tx)) = senders.get(usize::from(channel)) else {
                    continue;
                };
                if data.is_empty() {
                    continue;
                }
                tokio::select! {
                    // A consumer that went away just loses the data.
                    _ = tx.send(data) => {}
                    _ = closing.wait_for(|c| *c) => {}
                }
            }
            Incoming::Close(channel) => {
                if let Some(slot) = senders.get_mut(usize::from(channel)) {
                    *slot = None;
                }
            }
            Incoming::Nothing => {}
        }
    }
    senders.clear();
    shared.ended.send_replace(true);
    if !shared.closing.send_replace(true) {
        let _ = shared.commands.send(Command::Abort);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V5: ChannelProtocol = ChannelProtocol {
        encoding: Encoding::Binary,
        close_signal: true,
    };
    const B64: ChannelProtocol = ChannelProtocol {
        encoding: Encoding::Base64,
        close_signal: false,
    };

    #[test]
    fn frames_are_channel_byte_then_data() {
        assert_eq!(
            encode(Encoding::Binary, 1, b"hi"),
            Message::Binary(Bytes::from_static(&[1, b'h', b'i']))
        );
        assert_eq!(
            encode(Encoding::Base64, 2, b"foo\n"),
            Message::Text("2Zm9vCg==".into())
        );
        assert_eq!(
            decode(V5, Bytes::from_static(&[0, b'x'])),
            Incoming::Data(0, Bytes::from_static(b"x"))
        );
        assert_eq!(
            decode(V5, Bytes::from_static(&[255, 0])),
            Incoming::Close(0)
        );
        assert_eq!(
            decode(B64, Bytes::from_static(b"0Zm9vCgo=")),
            Incoming::Data(0, Bytes::from_static(b"foo\n\n"))
        );
        assert_eq!(decode(B64, Bytes::from_static(b"0!!")), Incoming::Nothing);
        assert_eq!(decode(V5, Bytes::new()), Incoming::Nothing);
    }
}
