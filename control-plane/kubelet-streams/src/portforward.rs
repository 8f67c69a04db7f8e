//! Port-forward sessions over every transport kubectl and the API server use:
//!
//! - SPDY/3.1 `portforward.k8s.io`: per forwarded connection the client opens
//!   an `error` and a `data` stream with the same `requestID` (and a `port`
//!   header); the pair is matched here, and a pair still incomplete after the
//!   stream-creation timeout gets "timed out waiting for streams" on its
//!   error stream (the kubelet's `httpStreamHandler`).
//! - WebSocket `SPDY/3.1+portforward.k8s.io` (kubectl 1.31+'s default): the
//!   same SPDY session tunnelled in binary messages ([`channels::tunnel()`]).
//! - WebSocket channels (`v4.channel.k8s.io` and kin): one connection per
//!   port of the `port` query parameter, data on channel `2i`, errors on
//!   `2i+1`; the first message on each carries the port, 2 bytes
//!   little-endian. The WebSocket closes once every pair is done.
//!
//! Each forwarded connection comes out as a [`ForwardStream`]: its data as a
//! [`DuplexStream`] (shut its write side down when the pod's side ends; its
//! read side ends when the client's does) and an [`ErrorSender`].

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, DuplexStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::debug;

use crate::channels::{self, ChannelProtocol, ChannelWriter};
use crate::spdy;
use crate::upgrade::{Kind, Negotiated, Transport};

/// How long the other stream of a SPDY pair may take to arrive by default
/// (the kubelet's `streamCreationTimeout`).
pub const DEFAULT_STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);

/// Bytes buffered each way between a transport and a [`ForwardStream`]'s data.
const BUFFER: usize = 64 * 1024;

/// Forwarded connections waiting for the application.
const INCOMING_QUEUE: usize = 16;

/// One forwarded connection.
#[derive(Debug)]
pub struct ForwardStream {
    /// The pod port.
    pub port: u16,
    /// The client's request id (SPDY), or the port's index (WebSocket).
    pub request_id: String,
    /// The bytes, both ways.
    pub data: DuplexStream,
    /// Reports a failure to the client.
    pub error: ErrorSender,
}

#[derive(Debug)]
enum ErrorTarget {
    Spdy(spdy::StreamWriter),
    /// The sender is held until the error side is done: the WebSocket closes
    /// when every holder has let go.
    Channel(ChannelWriter, u8, mpsc::Sender<()>),
}

/// The error stream of a forwarded connection; sending or dropping it ends it.
#[derive(Debug)]
pub struct ErrorSender(Option<ErrorTarget>);

impl ErrorSender {
    /// Sends `message` (kubectl prints it and drops the forwarded connection)
    /// and closes the error stream.
    pub async fn send(mut self, message: String) {
        match self.0.take() {
            Some(ErrorTarget::Spdy(writer)) => {
                let _ = writer.write(Bytes::from(message)).await;
                writer.close();
            }
            Some(ErrorTarget::Channel(writer, channel, _done)) => {
                let _ = writer.write(channel, Bytes::from(message)).await;
            }
            None => {}
        }
    }
}

impl Drop for ErrorSender {
    fn drop(&mut self) {
        if let Some(ErrorTarget::Spdy(writer)) = self.0.take() {
            writer.close();
        }
    }
}

/// The forwarded connections of one session.
#[derive(Debug)]
pub struct PortForwardSession {
    /// Each forwarded connection as its streams are complete; ends when the
    /// client goes (or, for WebSocket channels, when every pair is done).
    pub incoming: mpsc::Receiver<ForwardStream>,
}

/// Errors setting a session up.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// A WebSocket channel session without ports.
    #[error("query parameter \"port\" is required")]
    NoPorts,
    /// A negotiation for something else.
    #[error("an exec/attach negotiation is not a port-forward transport")]
    WrongTransport,
}

/// Sets a port-forward session up on `io`, the connection upgraded with
/// `negotiated`'s headers; `ports` (the `port` query parameter) are used by
/// WebSocket channel sessions only.
pub async fn accept<IO>(
    io: IO,
    negotiated: Negotiated,
    ports: Vec<u16>,
) -> Result<PortForwardSession, ProtocolError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    accept_with_timeout(io, negotiated, ports, DEFAULT_STREAM_CREATION_TIMEOUT).await
}

/// [`accept`], with the time a SPDY pair's second stream may take.
pub async fn accept_with_timeout<IO>(
    io: IO,
    negotiated: Negotiated,
    ports: Vec<u16>,
    timeout: Duration,
) -> Result<PortForwardSession, ProtocolError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if negotiated.kind != Kind::PortForward {
        return Err(ProtocolError::WrongTransport);
    }
    match negotiated.transport {
        Transport::Spdy => Ok(accept_spdy(io, timeout)),
        Transport::SpdyOverWebSocket => Ok(accept_spdy(channels::tunnel(io).await, timeout)),
        Transport::WebSocket(protocol) => accept_channels(io, protocol, &ports).await,
    }
}

/// Why a new SPDY port-forward stream is refused (the kubelet's checks of its
/// headers); the stream is reset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamRejection {
    /// No `port` header.
    #[error("\"port\" header is required")]
    MissingPort,
    /// A `port` header that is not a port from 1 to 65535.
    #[error("unable to parse {port:?} as a port")]
    InvalidPort {
        /// The header's value.
        port: String,
    },
    /// A `streamType` other than `data` or `error`.
    #[error("invalid stream type {stream_type:?}")]
    InvalidStreamType {
        /// The header's value.
        stream_type: String,
    },
    /// No `streamType` header.
    #[error("\"streamType\" header is required")]
    MissingStreamType,
}

/// The kubelet's checks of a new port-forward stream.
fn check_stream(headers: &spdy::Headers) -> Result<(), StreamRejection> {
    let port = headers.get("port").ok_or(StreamRejection::MissingPort)?;
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => {
            return Err(StreamRejection::InvalidPort {
                port: port.to_owned(),
            });
        }
    }
    match headers.get("streamtype") {
        Some("data" | "error") => Ok(()),
        Some(other) => Err(StreamRejection::InvalidStreamType {
            stream_type: other.to_owned(),
        }),
        None => Err(StreamRejection::MissingStreamType),
    }
}

fn accept_spdy<IO>(io: IO, timeout: Duration) -> PortForwardSession
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (connection, incoming) = spdy::Connection::serve(io, Box::new(|h| Ok(check_stream(h)?)));
    let (tx, rx) = mpsc::channel(INCOMING_QUEUE);
    tokio::spawn(pair_streams(connection, incoming, tx, timeout));
    PortForwardSession { incoming: rx }
}

/// A pair still missing a stream.
struct Pending {
    data: Option<spdy::Stream>,
    error: Option<spdy::Stream>,
    deadline: Instant,
}

/// The request id of a stream; older clients sent none, and the kubelet then
/// derives it from consecutive stream ids (error n, data n+2).
fn request_id(stream: &spdy::Stream) -> String {
    if let Some(id) = stream
        .headers()
        .get("requestid")
        .filter(|id| !id.is_empty())
    {
        return id.to_owned();
    }
    match stream.headers().get("streamtype") {
        Some("data") => stream.id().saturating_sub(2).to_string(),
        _ => stream.id().to_string(),
    }
}

async fn pair_streams(
    connection: spdy::Connection,
    mut incoming: mpsc::Receiver<spdy::Stream>,
    tx: mpsc::Sender<ForwardStream>,
    timeout: Duration,
) {
    let mut pending: HashMap<String, Pending> = HashMap::new();
    loop {
        let next_deadline = pending.values().map(|p| p.deadline).min();
        tokio::select! {
            stream = incoming.recv() => {
                let Some(stream) = stream else { break };
                let id = request_id(&stream);
                let pair = pending.entry(id.clone()).or_insert_with(|| Pending {
                    data: None,
                    error: None,
                    deadline: Instant::now() + timeout,
                });
                let is_data = stream.headers().get("streamtype") == Some("data");
                let slot = if is_data { &mut pair.data } else { &mut pair.error };
                if slot.is_some() {
                    let kind = if is_data { "data" } else { "error" };
                    let message = format!("error processing stream for request {id}: {kind} stream already assigned");
                    debug!(request = %id, "{message}");
                    if let Some(error) = &pair.error {
                        error.writer().write_now(Bytes::from(message));
                    }
                    stream.split().1.reset();
                    continue;
                }
                *slot = Some(stream);
                if pair.data.is_some() && pair.error.is_some()
                    && let Some(Pending { data: Some(data), error: Some(error), .. }) = pending.remove(&id)
                    && tx.send(forward(data, error, id)).await.is_err()
                {
                    break;
                }
            }
            () = tokio::time::sleep_until(next_deadline.unwrap_or_else(Instant::now)), if next_deadline.is_some() => {
                let now = Instant::now();
                pending.retain(|id, pair| {
                    if pair.deadline > now {
                        return true;
                    }
                    debug!(request = %id, "port-forward streams timed out");
                    if let Some(error) = &pair.error {
                        let message = format!("(request={id}) timed out waiting for streams");
                        error.writer().write_now(Bytes::from(message));
                        error.writer().close();
                    }
                    if let Some(data) = &pair.data {
                        data.writer().reset();
                    }
                    false
                });
            }
            () = tx.closed() => break,
        }
    }
    // The client went, or nobody takes connections any more.
    connection.close().await;
}

fn forward(data: spdy::Stream, error: spdy::Stream, request_id: String) -> ForwardStream {
    let port = data
        .headers()
        .get("port")
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let (from_client, to_client) = data.split();
    let (app, ours) = tokio::io::duplex(BUFFER);
    tokio::spawn(bridge(
        ours,
        from_client.into_receiver(),
        Sink::Spdy(to_client),
    ));
    ForwardStream {
        port,
        request_id,
        data: app,
        error: ErrorSender(Some(ErrorTarget::Spdy(error.split().1))),
    }
}

/// Where a forwarded connection's bytes go back to the client.
enum Sink {
    Spdy(spdy::StreamWriter),
    /// `_done` is dropped when the pod's side is done.
    Channel {
        writer: ChannelWriter,
        channel: u8,
        _done: mpsc::Sender<()>,
    },
}

/// Copies the client's bytes into `ours` and `ours`' bytes to the client,
/// until both directions ended. The sink goes as soon as the pod's side is
/// done.
async fn bridge(ours: DuplexStream, mut from_client: mpsc::Receiver<Bytes>, to_client: Sink) {
    let (mut rd, mut wr) = tokio::io::split(ours);
    let inbound = async move {
        while let Some(chunk) = from_client.recv().await {
            if wr.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    };
    let outbound = async move {
        let mut buf = vec![0u8; spdy::stream::MAX_CHUNK];
        loop {
            let n = match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let chunk = Bytes::copy_from_slice(&buf[..n]);
            let sent = match &to_client {
                Sink::Spdy(w) => w.write(chunk).await.is_ok(),
                Sink::Channel {
                    writer, channel, ..
                } => writer.write(*channel, chunk).await.is_ok(),
            };
            if !sent {
                return;
            }
        }
        if let Sink::Spdy(w) = &to_client {
            w.close();
        }
    };
    tokio::join!(inbound, outbound);
}

async fn accept_channels<IO>(
    io: IO,
    protocol: ChannelProtocol,
    ports: &[u16],
) -> Result<PortForwardSession, ProtocolError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if ports.is_empty() {
        return Err(ProtocolError::NoPorts);
    }
    let readable: Vec<bool> = ports.iter().flat_map(|_| [true, false]).collect();
    let mut channels = channels::open(io, protocol, &readable).await;
    let writer = channels.writer;
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let (tx, rx) = mpsc::channel(ports.len());
    for (i, &port) in ports.iter().enumerate() {
        // Channel numbers are bytes: at most 128 ports per connection.
        let Ok(data_channel) = u8::try_from(2 * i) else {
            break;
        };
        let error_channel = data_channel.saturating_add(1);
        let prefix = Bytes::copy_from_slice(&port.to_le_bytes());
        let _ = writer.write(data_channel, prefix.clone()).await;
        let _ = writer.write(error_channel, prefix).await;
        let from_client = channels.readers[usize::from(data_channel)]
            .take()
            .unwrap_or_else(|| mpsc::channel(1).1);
        let (app, ours) = tokio::io::duplex(BUFFER);
        tokio::spawn(bridge(
            ours,
            from_client,
            Sink::Channel {
                writer: writer.clone(),
                channel: data_channel,
                _done: done_tx.clone(),
            },
        ));
        let stream = ForwardStream {
            port,
            request_id: i.to_string(),
            data: app,
            error: ErrorSender(Some(ErrorTarget::Channel(
                writer.clone(),
                error_channel,
                done_tx.clone(),
            ))),
        };
        // Capacity is one per port: this does not wait.
        let _ = tx.send(stream).await;
    }
    drop(done_tx);
    tokio::spawn(async move {
        tokio::select! {
            // Every pair's pod side and error side are done.
            _ = done_rx.recv() => writer.close().await,
            () = writer.ended() => {}
        }
        drop(tx);
    });
    Ok(PortForwardSession { incoming: rx })
}
