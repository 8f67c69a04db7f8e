//! The simulated hosts' instance metadata service, for interruption notices:
//! the IMDSv2 paths an agent on EC2 polls, answered for each host from the
//! notices injected into it (`orca node fault NODE --spot-notice`), so that the
//! agent's notice handling runs unchanged on a simulated host.
//!
//! One HTTP server per control plane, on the bridge's address (127.0.0.1 for
//! hosts without a namespace); host `NODE`'s endpoint is
//! `http://<address>:<port>/hosts/NODE`, given to its agent as
//! `--notices-endpoint`. As on EC2, a session token comes first (`PUT
//! /latest/api/token` with the TTL header) and every `GET` must carry it;
//! `meta-data/spot/instance-action` and `meta-data/events/recommendations/rebalance`
//! are 404 until a notice exists, `meta-data/events/maintenance/scheduled` is
//! `[]`. The port is kept in `<hosts dir>/.imds-port`, so a restarted control
//! plane serves the agents that outlived it at the address they know.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use super::host::HostDir;

/// Where the server's port is kept.
const PORT_FILE: &str = ".imds-port";

/// The notice files under a host's `notices/` directory, by IMDS path.
const PATHS: &[(&str, &str)] = &[
    (
        "meta-data/spot/instance-action",
        "spot-instance-action.json",
    ),
    (
        "meta-data/events/recommendations/rebalance",
        "rebalance.json",
    ),
    (
        "meta-data/events/maintenance/scheduled",
        "maintenance-scheduled.json",
    ),
];

/// Session tokens kept (agents take a new one per look; older ones lapse, as
/// IMDS tokens expire), so the set stays bounded however long hosts run.
const TOKENS_KEPT: usize = 1024;

/// The file a spot interruption notice is kept in.
pub(super) const SPOT_NOTICE: &str = "spot-instance-action.json";

/// Binds the server on `ip` (the port of an earlier run when free) and serves
/// it in the background; returns its address.
pub(super) async fn start(hosts_dir: &Path, ip: IpAddr) -> Result<SocketAddr, String> {
    let port_file = hosts_dir.join(PORT_FILE);
    let earlier: u16 = std::fs::read_to_string(&port_file)
        .ok()
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or(0);
    let listener = match TcpListener::bind((ip, earlier)).await {
        Ok(l) => l,
        Err(e) if earlier != 0 => {
            warn!(port = earlier, error = %e, "metadata port of the earlier run taken; agents that outlived it will not see notices");
            TcpListener::bind((ip, 0))
                .await
                .map_err(|e| format!("metadata server on {ip}: {e}"))?
        }
        Err(e) => return Err(format!("metadata server on {ip}: {e}")),
    };
    let addr = listener
        .local_addr()
        .map_err(|e| format!("metadata server: {e}"))?;
    std::fs::create_dir_all(hosts_dir).map_err(|e| format!("{}: {e}", hosts_dir.display()))?;
    std::fs::write(&port_file, addr.port().to_string())
        .map_err(|e| format!("{}: {e}", port_file.display()))?;
    info!(%addr, "simulated hosts' metadata service (interruption notices)");
    let hosts_dir = hosts_dir.to_path_buf();
    tokio::spawn(serve(listener, hosts_dir));
    Ok(addr)
}

/// Host `node`'s endpoint on the server at `addr`.
pub(super) fn endpoint(addr: SocketAddr, node: &str) -> String {
    format!("http://{addr}/hosts/{node}")
}

async fn serve(listener: TcpListener, hosts_dir: PathBuf) {
    let tokens: Arc<Mutex<VecDeque<String>>> = Arc::default();
    let mut listener = orca_proto::accept::Acceptor::new(listener, "metadata service");
    loop {
        let (tcp, peer) = listener.next().await;
        let hosts_dir = hosts_dir.clone();
        let tokens = tokens.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let response = answer(&hosts_dir, &tokens, &req);
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await
            {
                debug!(%peer, error = %e, "metadata connection ended");
            }
        });
    }
}

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "text/plain")
        .body(Full::new(body.into()))
        .unwrap_or_default()
}

fn answer<B>(
    hosts_dir: &Path,
    tokens: &Mutex<VecDeque<String>>,
    req: &Request<B>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let Some((node, rest)) = path
        .strip_prefix("/hosts/")
        .and_then(|p| p.split_once("/latest/"))
        .filter(|(node, _)| !node.is_empty() && !node.contains('/') && !node.starts_with('.'))
    else {
        return reply(StatusCode::NOT_FOUND, "not found\n");
    };
    let mut tokens = tokens.lock().unwrap_or_else(|p| p.into_inner());
    if rest == "api/token" {
        if req.method() != Method::PUT {
            return reply(StatusCode::METHOD_NOT_ALLOWED, "PUT\n");
        }
        if !req
            .headers()
            .contains_key("x-aws-ec2-metadata-token-ttl-seconds")
        {
            return reply(StatusCode::BAD_REQUEST, "missing TTL header\n");
        }
        let token = uuid::Uuid::new_v4().simple().to_string();
        if tokens.len() >= TOKENS_KEPT {
            tokens.pop_front();
        }
        tokens.push_back(token.clone());
        return reply(StatusCode::OK, token);
    }
    let authorised = req
        .headers()
        .get("x-aws-ec2-metadata-token")
        .and_then(|t| t.to_str().ok())
        .is_some_and(|t| tokens.iter().any(|k| k == t));
    if !authorised {
        return reply(StatusCode::UNAUTHORIZED, "unauthorized\n");
    }
    if req.method() != Method::GET {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "GET\n");
    }
    let Some((_, file)) = PATHS.iter().find(|(p, _)| *p == rest) else {
        return reply(StatusCode::NOT_FOUND, "not found\n");
    };
    let host = HostDir::new(hosts_dir, node);
    match std::fs::read(host.notices_dir().join(file)) {
        Ok(body) => reply(StatusCode::OK, body),
        Err(_) if file.starts_with("maintenance") => reply(StatusCode::OK, "[]"),
        Err(_) => reply(StatusCode::NOT_FOUND, "not found\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(dir: &Path, tokens: &Mutex<VecDeque<String>>, path: &str, token: &str) -> StatusCode {
        let req = Request::get(path)
            .header("x-aws-ec2-metadata-token", token)
            .body(())
            .unwrap();
        answer(dir, tokens, &req).status()
    }

    #[test]
    fn notices_need_a_token_and_exist_only_once_injected() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = Mutex::default();
        let put = Request::put("/hosts/n1/latest/api/token")
            .header("x-aws-ec2-metadata-token-ttl-seconds", "300")
            .body(())
            .unwrap();
        assert_eq!(answer(dir.path(), &tokens, &put).status(), StatusCode::OK);
        let token = tokens.lock().unwrap().front().unwrap().clone();
        let bare = Request::put("/hosts/n1/latest/api/token").body(()).unwrap();
        assert_eq!(
            answer(dir.path(), &tokens, &bare).status(),
            StatusCode::BAD_REQUEST
        );
        let spot = "/hosts/n1/latest/meta-data/spot/instance-action";
        assert_eq!(
            get(dir.path(), &tokens, spot, "nope"),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            get(dir.path(), &tokens, spot, &token),
            StatusCode::NOT_FOUND
        );
        let events = "/hosts/n1/latest/meta-data/events/maintenance/scheduled";
        assert_eq!(get(dir.path(), &tokens, events, &token), StatusCode::OK);
        let host = HostDir::new(dir.path(), "n1");
        host.write_notice(
            SPOT_NOTICE,
            br#"{"action":"terminate","time":"2030-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(get(dir.path(), &tokens, spot, &token), StatusCode::OK);
        let other = "/hosts/n2/latest/meta-data/spot/instance-action";
        assert_eq!(
            get(dir.path(), &tokens, other, &token),
            StatusCode::NOT_FOUND
        );
        let escape = "/hosts/../latest/meta-data/spot/instance-action";
        assert_eq!(
            get(dir.path(), &tokens, escape, &token),
            StatusCode::NOT_FOUND
        );
    }
}
