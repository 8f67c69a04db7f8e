//! A byte stream carried in WebSocket binary messages: kubectl's port-forward
//! (`SPDY/3.1+portforward.k8s.io`, client-go `TunnelingConnection`) writes
//! each chunk of its SPDY connection as one binary message, with no channel
//! byte, and reads messages back as one stream; a Close frame (1000) ends it.

use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, DuplexStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;
use tracing::{debug, warn};

use super::{LINGER, normal_close};

/// Bytes buffered between the WebSocket and the byte stream, each way.
const BUFFER: usize = 64 * 1024;

/// Opens the WebSocket on `io` (after the 101 response) and returns the byte
/// stream it carries. Shutting the stream's write side down sends a normal
/// Close; the client's Close (or its going away) is the stream's EOF.
pub async fn tunnel<IO>(io: IO) -> DuplexStream
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    over(WebSocketStream::from_raw_socket(io, Role::Server, None).await)
}

/// The byte stream carried by `ws`, either role (tests use the client's).
pub fn over<IO>(ws: WebSocketStream<IO>) -> DuplexStream
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (ours, theirs) = tokio::io::duplex(BUFFER);
    tokio::spawn(pump(ws, theirs));
    ours
}

async fn pump<IO>(ws: WebSocketStream<IO>, end: DuplexStream)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let (mut sink, mut stream) = ws.split();
    let (mut from_end, mut to_end) = tokio::io::split(end);
    let inbound = async move {
        let mut open = true;
        while let Some(message) = stream.next().await {
            match message {
                Ok(Message::Binary(data)) if open => {
                    if to_end.write_all(&data).await.is_err() {
                        open = false;
                    }
                }
                Ok(Message::Text(_)) => {
                    warn!("text message in a SPDY tunnel; closing it");
                    break;
                }
                // Pings are answered by tungstenite; after the client's Close
                // the next read sends our reply and ends the stream.
                Ok(_) => {}
                Err(e) => {
                    debug!(error = %e, "SPDY tunnel read failed");
                    break;
                }
            }
        }
        let _ = to_end.shutdown().await;
    };
    let outbound = async move {
        let mut buf = vec![0u8; BUFFER];
        loop {
            match from_end.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let message = Message::Binary(Bytes::copy_from_slice(&buf[..n]));
                    if let Err(e) = sink.send(message).await {
                        debug!(error = %e, "SPDY tunnel write failed");
                        return;
                    }
                }
            }
        }
        let _ = sink.send(normal_close()).await;
    };
    tokio::pin!(inbound, outbound);
    // Whichever side ends first, the other gets a bounded time to finish.
    tokio::select! {
        () = &mut inbound => { let _ = tokio::time::timeout(LINGER, &mut outbound).await; }
        () = &mut outbound => { let _ = tokio::time::timeout(LINGER, &mut inbound).await; }
    }
}
