//! `/portForward`: the upgrade (SPDY/3.1 `portforward.k8s.io`, or WebSocket,
//! including kubectl's SPDY-over-WebSocket tunnel), then each forwarded
//! connection bridged to the pod's agent through
//! [`crate::streams::Streams::port_forward`](crate::cluster::crate::streams::Streams::port_forward).

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt as _;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use orca_kubelet_streams::portforward::{self, ForwardStream};
use orca_kubelet_streams::upgrade;
use orca_proto::agent::v1 as agent;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tracing::{debug, warn};

use super::query::Query;
use super::server::{Body, Kubelet, empty, error_response, text};

/// Size of one chunk read from the client's side of a forwarded connection.
const CHUNK: usize = 32 * 1024;

/// Upgrades the request and forwards connections in the background.
pub async fn serve(
    kubelet: Arc<Kubelet>,
    mut req: Request<Incoming>,
    ns: String,
    pod: String,
) -> Response<Body> {
    let q = Query::parse(req.uri().query().unwrap_or(""));
    let mut ports = Vec::new();
    for p in q.all("port").iter().chain(q.all("ports").iter()) {
        for one in p.split(',') {
            match one.trim().parse::<u16>() {
                Ok(port) if port > 0 => ports.push(port),
                _ => return text(StatusCode::BAD_REQUEST, format!("invalid port {one:?}")),
            }
        }
    }
    if let Err(e) = kubelet.cluster.pods().pod(&ns, &pod) {
        return error_response(&e);
    }
    let negotiated = match upgrade::negotiate(upgrade::Kind::PortForward, req.headers()) {
        Ok(n) => n,
        Err(rejection) => return text(StatusCode::BAD_REQUEST, rejection.to_string()),
    };
    if negotiated.requires_ports() && ports.is_empty() {
        return text(
            StatusCode::BAD_REQUEST,
            "query parameter \"port\" is required",
        );
    }
    let timeout = kubelet.config.kubelet.stream_creation_timeout;
    let mut response = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
    if let Some(headers) = response.headers_mut() {
        headers.extend(negotiated.response_headers.clone());
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let io = match on_upgrade.await {
            Ok(u) => TokioIo::new(u),
            Err(e) => {
                debug!(error = %e, "port-forward upgrade failed");
                return;
            }
        };
        let mut session =
            match portforward::accept_with_timeout(io, negotiated, ports, timeout).await {
                Ok(s) => s,
                Err(e) => {
                    warn!(pod = %pod, error = %e, "port-forward session not established");
                    return;
                }
            };
        while let Some(stream) = session.incoming.recv().await {
            let (kubelet, ns, pod) = (kubelet.clone(), ns.clone(), pod.clone());
            tokio::spawn(async move { bridge(kubelet, ns, pod, stream).await });
        }
    });
    response.body(empty()).unwrap_or_default()
}

/// One forwarded connection: the client's bytes to the agent, the pod's back.
async fn bridge(kubelet: Arc<Kubelet>, ns: String, pod: String, stream: ForwardStream) {
    let ForwardStream {
        port, data, error, ..
    } = stream;
    let (from_client, mut to_client) = tokio::io::split(data);
    let data_in = futures::stream::unfold(from_client, |mut rd| async move {
        let mut chunk = vec![0u8; CHUNK];
        match rd.read(&mut chunk).await {
            Ok(0) | Err(_) => None,
            Ok(n) => {
                chunk.truncate(n);
                let input = agent::port_forward_input::Input::Data(Bytes::from(chunk));
                Some((agent::PortForwardInput { input: Some(input) }, rd))
            }
        }
    });
    let close = agent::PortForwardInput {
        input: Some(agent::port_forward_input::Input::CloseWrite(true)),
    };
    let input = data_in.chain(futures::stream::iter([close]));
    let output = kubelet
        .cluster
        .streams()
        .port_forward(&ns, &pod, port, input)
        .await;
    let mut output = match output {
        Ok(o) => o,
        Err(e) => {
            error.send(e.to_string()).await;
            return;
        }
    };
    while let Some(item) = output.next().await {
        match item {
            Ok(out) => {
                if !out.data.is_empty() && to_client.write_all(&out.data).await.is_err() {
                    return;
                }
                if out.close_write {
                    let _ = to_client.shutdown().await;
                }
            }
            Err(status) => {
                error.send(status.message().to_owned()).await;
                return;
            }
        }
    }
    let _ = to_client.shutdown().await;
}
