//! The metrics endpoint: plain HTTP/1.1 on a listener of its own. `GET
//! /metrics` is the text exposition, `GET /healthz` is `ok`; `HEAD` is
//! answered as `GET`, other methods on those paths get 405, other paths 404.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tracing::{debug, warn};

use super::Exporter;
use super::exposition::CONTENT_TYPE;
use orca_store::StoreError;

/// Time a client has to send a request's headers: a scraper sends them at
/// once, and a connection that does not is not kept.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

fn text(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}

/// The answer to one request; `scrape` renders the exposition.
pub fn handle<B>(
    req: &Request<B>,
    scrape: impl FnOnce() -> Result<String, StoreError>,
) -> Response<Full<Bytes>> {
    let plain = "text/plain; charset=utf-8";
    let path = req.uri().path();
    if !matches!(path, "/metrics" | "/healthz") {
        return text(
            StatusCode::NOT_FOUND,
            plain,
            format!("no such path: {path}\n"),
        );
    }
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let mut response = text(
            StatusCode::METHOD_NOT_ALLOWED,
            plain,
            format!("{} is not allowed on {path}\n", req.method()),
        );
        response
            .headers_mut()
            .insert(header::ALLOW, http::HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    if path == "/healthz" {
        return text(StatusCode::OK, plain, "ok\n".into());
    }
    match scrape() {
        Ok(body) => text(StatusCode::OK, CONTENT_TYPE, body),
        Err(e) => {
            warn!(error = %e, "metrics not gathered");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                plain,
                format!("metrics not gathered: {e}\n"),
            )
        }
    }
}

/// Serves `exporter` on `listener` until `stop` turns true; connections open
/// then finish their request in flight and close.
pub async fn serve(
    exporter: Exporter,
    listener: TcpListener,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let exporter = Arc::new(exporter);
    let mut listener = orca_proto::accept::Acceptor::new(listener, "metrics endpoint");
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.next() => accepted,
            _ = stop.wait_for(|s| *s) => return,
        };
        let exporter = exporter.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let response = handle(&req, || exporter.scrape());
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(tcp), service);
            tokio::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                () = async { let _ = stop.wait_for(|s| *s).await; } => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                debug!(%peer, error = %e, "metrics connection ended");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    async fn answer(method: Method, uri: &str) -> (StatusCode, String, String) {
        let req = Request::builder().method(method).uri(uri).body(()).unwrap();
        let response = handle(&req, || Ok("# HELP x y\n".into()));
        let content_type = response.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_owned();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            content_type,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    #[tokio::test]
    async fn routes() {
        let (status, content_type, body) = answer(Method::GET, "/metrics?x=1").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "# HELP x y\n"));
        assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
        let (status, _, body) = answer(Method::GET, "/healthz").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ok\n"));
        let (status, _, _) = answer(Method::GET, "/metrics/extra").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _, _) = answer(Method::GET, "/").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _, _) = answer(Method::POST, "/metrics").await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    }
}
