//! `PortForward`: one TCP connection to a port of a pod, relayed over a gRPC
//! stream (what `kubectl port-forward` needs from the kubelet).
//!
//! A pod's containers join the network namespace of its `orca-pause`, which is
//! the agent's own (the simulated host's, or the instance's), so the agent
//! reaches the pod's listeners on `127.0.0.1:<port>`: no `nsenter`, no socat.
//!
//! A session is two copies run together: client → pod (data, then a
//! half-close at `close_write` or at the end of the input) and pod → client
//! (data, then `close_write` at end of file). It ends when both are done, or
//! at once when the client goes away or the connection fails (an UNAVAILABLE
//! status naming the pod and the port). Output goes through a channel of one
//! message, so at most one chunk waits between the socket and the gRPC
//! stream, whose flow control paces the reads; input is read only as fast as
//! the socket takes it.

use std::net::Ipv4Addr;
use std::time::Duration;

use bytes::BytesMut;
use futures::FutureExt as _;
use futures::future::FusedFuture as _;
use orca_proto::agent::v1::{self as pb, port_forward_input::Input};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};
use tracing::debug;

use crate::pods::PodManager;
use crate::rpc::Responses;

/// The most one output message carries.
const CHUNK: usize = 32 * 1024;

/// How long connecting may take. On loopback a connection is accepted or
/// refused at once, unless the listener's backlog is full: then the kernel
/// retries for minutes, and the client deserves an answer sooner.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a session connects to, for messages.
#[derive(Debug, Clone)]
struct Target {
    pod: String,
    port: u16,
}

impl Target {
    /// `pod web: port 8080: connection refused`.
    fn failed(&self, what: impl std::fmt::Display) -> Status {
        Status::unavailable(format!("pod {}: port {}: {what}", self.pod, self.port))
    }
}

/// How one direction of a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// It ran to its end (end of file, or a half-close).
    Done,
    /// The session must end now: the client is gone, or the connection failed
    /// (its status has been sent).
    Abort,
}

/// Starts a session whose first message is `start`: checks the pod, connects
/// to the port, and relays in a task of its own.
pub async fn port_forward(
    pods: &PodManager,
    mut input: Streaming<pb::PortForwardInput>,
) -> Result<Responses<pb::PortForwardOutput>, Status> {
    let Some(Input::Start(start)) = input.message().await?.and_then(|m| m.input) else {
        return Err(Status::invalid_argument(
            "the first message must be `start`",
        ));
    };
    let port = u16::try_from(start.port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| {
            Status::invalid_argument(format!("port {}: not a TCP port (1 to 65535)", start.port))
        })?;
    let pod = pods.live_pod(&start.uid).map_err(crate::rpc::status)?;
    let target = Target {
        pod: pod.key.name,
        port,
    };
    let connect = TcpStream::connect((Ipv4Addr::LOCALHOST, port));
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(target.failed(describe(&e))),
        Err(_) => {
            return Err(target.failed(format_args!(
                "not accepted within {}s",
                CONNECT_TIMEOUT.as_secs()
            )));
        }
    };
    debug!(pod = %target.pod, port, "port-forward connected");
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(session(target, stream, input, tx));
    Ok(Box::pin(ReceiverStream::new(rx)))
}

/// Runs both directions until both are done, one aborts, or the client is gone.
async fn session(
    target: Target,
    stream: TcpStream,
    input: Streaming<pb::PortForwardInput>,
    tx: mpsc::Sender<Result<pb::PortForwardOutput, Status>>,
) {
    let (reader, writer) = stream.into_split();
    let mut up = std::pin::pin!(upstream(&target, input, writer).fuse());
    let mut down = std::pin::pin!(downstream(&target, reader, &tx).fuse());
    while !(up.is_terminated() && down.is_terminated()) {
        let flow = tokio::select! {
            flow = &mut up, if !up.is_terminated() => flow,
            flow = &mut down, if !down.is_terminated() => flow,
            () = tx.closed() => Flow::Abort,
        };
        if flow == Flow::Abort {
            debug!(pod = %target.pod, port = target.port, "port-forward aborted");
            return;
        }
    }
    debug!(pod = %target.pod, port = target.port, "port-forward ended");
}

/// Client → pod, until `close_write` or the end of the input; then the
/// connection's write side is shut down. Aborts when the client's stream fails.
async fn upstream(
    target: &Target,
    mut input: Streaming<pb::PortForwardInput>,
    mut writer: OwnedWriteHalf,
) -> Flow {
    loop {
        match input.message().await {
            Ok(Some(pb::PortForwardInput {
                input: Some(Input::Data(data)),
            })) => {
                if let Err(e) = writer.write_all(&data).await {
                    // The pod's side is closed for reading: what the client still
                    // sends has nowhere to go. Pod → client carries on.
                    debug!(pod = %target.pod, port = target.port, error = %e, "port-forward write failed");
                    return Flow::Done;
                }
            }
            Ok(Some(pb::PortForwardInput {
                input: Some(Input::CloseWrite(_)),
            }))
            | Ok(None) => break,
            // A repeated `start` or an empty message: nothing to do.
            Ok(Some(_)) => {}
            Err(status) => {
                debug!(pod = %target.pod, port = target.port, %status, "port-forward input failed");
                return Flow::Abort;
            }
        }
    }
    if let Err(e) = writer.shutdown().await {
        debug!(pod = %target.pod, port = target.port, error = %e, "port-forward half-close failed");
    }
    Flow::Done
}

/// Pod → client, until end of file (then `close_write`). A read error is sent
/// as the stream's status.
async fn downstream(
    target: &Target,
    mut reader: OwnedReadHalf,
    tx: &mpsc::Sender<Result<pb::PortForwardOutput, Status>>,
) -> Flow {
    let mut buf = BytesMut::new();
    loop {
        buf.reserve(CHUNK);
        let message = match reader.read_buf(&mut buf).await {
            Ok(0) => pb::PortForwardOutput {
                data: bytes::Bytes::new(),
                close_write: true,
            },
            Ok(_) => pb::PortForwardOutput {
                data: buf.split().freeze(),
                close_write: false,
            },
            Err(e) => {
                let _ = tx.send(Err(target.failed(describe(&e)))).await;
                return Flow::Abort;
            }
        };
        let last = message.close_write;
        if tx.send(Ok(message)).await.is_err() {
            return Flow::Abort;
        }
        if last {
            return Flow::Done;
        }
    }
}

/// An IO error as kubectl should show it: `connection refused`, not
/// `Connection refused (os error 111)`.
fn describe(e: &std::io::Error) -> String {
    let text = e.to_string();
    let text = text
        .rfind(" (os error ")
        .map_or(text.as_str(), |i| &text[..i]);
    let mut chars = text.chars();
    chars.next().map_or_else(String::new, |first| {
        first.to_lowercase().chain(chars).collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_read_as_kubectl_shows_them() {
        let refused = std::io::Error::from_raw_os_error(111);
        assert_eq!(describe(&refused), "connection refused");
        let target = Target {
            pod: "web".into(),
            port: 8080,
        };
        let status = target.failed(describe(&refused));
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(status.message(), "pod web: port 8080: connection refused");
        let custom = std::io::Error::other("Odd failure");
        assert_eq!(describe(&custom), "odd failure");
    }
}
