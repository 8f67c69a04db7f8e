//! The kubelet HTTPS API the API server calls: `/healthz`, `/pods`,
//! `/containerLogs`, `/exec`, `/attach`, `/portForward`, `/metrics/resource`,
//! `/stats/summary`.
//!
//! Clients authenticate with a certificate from the configured client CA (the
//! API server's kubelet client certificate); its CN is the user and its O
//! entries the groups. With `authorization: webhook` each request is checked
//! with a SubjectAccessReview on `nodes/<subresource>` of this Node, as the
//! kubelet's webhook mode does.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt as _;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use orca_proto::agent::v1 as agent;
use tokio::net::TcpListener;
use tracing::{debug, info};

use super::{exec, query};
use crate::cluster::{Cluster, ClusterError};
use crate::config::kubernetes::{Authorization, Kubernetes};
use crate::vk::kube::KubeApi;

/// A response body: whole, or streamed (logs).
pub type Body = BoxBody<Bytes, std::io::Error>;

/// Who called, from the client certificate.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    /// CN.
    pub user: String,
    /// O entries.
    pub groups: Vec<String>,
}

/// The kubelet API's shared state.
pub struct Kubelet {
    pub(super) cluster: Cluster,
    kube: Arc<dyn KubeApi>,
    pub(super) config: Kubernetes,
}

/// An empty body (the 101 of an upgrade).
pub fn empty() -> Body {
    Empty::<Bytes>::new().map_err(|e| match e {}).boxed()
}

/// A plain-text response.
pub fn text(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    let mut body = message.into();
    if !body.ends_with('\n') {
        body.push('\n');
    }
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body)).map_err(|e| match e {}).boxed())
        .unwrap_or_default()
}

fn json(value: &serde_json::Value) -> Response<Body> {
    Response::builder()
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(
            Full::new(Bytes::from(value.to_string()))
                .map_err(|e| match e {})
                .boxed(),
        )
        .unwrap_or_default()
}

/// The HTTP status of a cluster error.
pub fn error_response(e: &ClusterError) -> Response<Body> {
    let status = match e {
        ClusterError::NotFound { .. } => StatusCode::NOT_FOUND,
        ClusterError::Invalid(_) => StatusCode::BAD_REQUEST,
        ClusterError::FailedPrecondition(_) => StatusCode::BAD_REQUEST,
        ClusterError::Agent { status, .. } => match status.code() {
            tonic::Code::NotFound => StatusCode::NOT_FOUND,
            tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition => {
                StatusCode::BAD_REQUEST
            }
            _ => StatusCode::BAD_GATEWAY,
        },
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let message = match e {
        ClusterError::Agent { status, .. } => status.message().to_owned(),
        other => other.to_string(),
    };
    text(status, message)
}

/// The subresource of `nodes` a path is authorised as (the kubelet's mapping).
fn subresource(path: &str) -> &'static str {
    let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
    match first {
        "stats" => "stats",
        "metrics" => "metrics",
        "logs" => "log",
        "spec" => "spec",
        "checkpoint" => "checkpoint",
        _ => "proxy",
    }
}

impl Kubelet {
    /// The kubelet API over `cluster`.
    pub fn new(cluster: Cluster, kube: Arc<dyn KubeApi>, config: Kubernetes) -> Arc<Self> {
        Arc::new(Self {
            cluster,
            kube,
            config,
        })
    }

    async fn authorize(&self, req: &Request<Incoming>, who: &Identity) -> Result<(), String> {
        if self.config.kubelet.authorization == Authorization::AlwaysAllow {
            return Ok(());
        }
        let upgrade = req.headers().contains_key(http::header::UPGRADE);
        let verb = match *req.method() {
            _ if upgrade => "create",
            Method::GET | Method::HEAD => "get",
            Method::POST => "create",
            Method::PUT => "update",
            Method::PATCH => "patch",
            Method::DELETE => "delete",
            _ => "*",
        };
        let sub = subresource(req.uri().path());
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(who.user.clone()),
                groups: Some(who.groups.clone()),
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(verb.into()),
                    resource: Some("nodes".into()),
                    subresource: Some(sub.into()),
                    name: Some(self.config.node_name.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let deny = |why: String| {
            format!(
                "Forbidden (user={}, verb={verb}, resource=nodes, subresource={sub}): {why}",
                who.user
            )
        };
        match self.kube.review(review).await {
            Ok(s) if s.allowed => Ok(()),
            Ok(s) => Err(deny(s.reason.unwrap_or_default())),
            Err(e) => Err(deny(format!("authorization failed: {e}"))),
        }
    }

    /// Answers one request.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>, who: Identity) -> Response<Body> {
        if let Err(message) = self.authorize(&req, &who).await {
            return text(StatusCode::FORBIDDEN, message);
        }
        let path = req.uri().path().to_owned();
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        debug!(user = %who.user, method = %req.method(), path = %path, "kubelet API request");
        match parts.as_slice() {
            ["healthz"] => text(StatusCode::OK, "ok"),
            ["pods"] | ["pods", ""] => json(&self.pods()),
            ["metrics", "resource"] => {
                let (node, pods) = super::stats::collect(&self.cluster).await;
                Response::builder()
                    .header(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")
                    .body(
                        Full::new(Bytes::from(super::stats::metrics_resource(&node, &pods)))
                            .map_err(|e| match e {})
                            .boxed(),
                    )
                    .unwrap_or_default()
            }
            ["stats", "summary"] => {
                let (node, pods) = super::stats::collect(&self.cluster).await;
                json(&super::stats::summary(&self.config.node_name, &node, &pods))
            }
            ["containerLogs", ns, pod, container] => {
                let q = query::Query::parse(req.uri().query().unwrap_or(""));
                self.logs(ns, pod, container, &q).await
            }
            ["exec", ns, pod, container] | ["exec", ns, pod, _, container] => {
                let (ns, pod, container) = (ns.to_string(), pod.to_string(), container.to_string());
                exec::serve(self.clone(), req, exec::What::Exec, ns, pod, container).await
            }
            ["attach", ns, pod, container] | ["attach", ns, pod, _, container] => {
                let (ns, pod, container) = (ns.to_string(), pod.to_string(), container.to_string());
                exec::serve(self.clone(), req, exec::What::Attach, ns, pod, container).await
            }
            ["portForward", ns, pod] | ["portForward", ns, pod, _] => {
                let (ns, pod) = (ns.to_string(), pod.to_string());
                super::forward::serve(self.clone(), req, ns, pod).await
            }
            _ => text(StatusCode::NOT_FOUND, format!("404 page not found: {path}")),
        }
    }

    /// The pods this kubelet runs, as a PodList.
    fn pods(&self) -> serde_json::Value {
        let records = self
            .cluster
            .shared()
            .store()
            .pods
            .scan("")
            .unwrap_or_default();
        let items: Vec<serde_json::Value> = records
            .iter()
            .filter_map(|r| {
                let pod = r.pod.as_ref()?;
                let uid = pod.annotations.get(crate::references::KUBERNETES_UID)?;
                let rf = pod.r#ref.clone().unwrap_or_default();
                let spec: serde_json::Value = serde_json::from_str(&pod.spec_json).ok()?;
                Some(serde_json::json!({
                    "metadata": {"name": rf.name, "namespace": rf.namespace, "uid": uid,
                                 "labels": pod.labels, "annotations": pod.annotations},
                    "spec": spec,
                    "status": crate::vk::status::pod_status(&r.status.clone().unwrap_or_default()),
                }))
            })
            .collect();
        serde_json::json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items})
    }

    async fn logs(&self, ns: &str, pod: &str, container: &str, q: &query::Query) -> Response<Body> {
        let since_time = q
            .get("sinceTime")
            .and_then(|t| t.parse::<jiff::Timestamp>().ok());
        let options = agent::LogsRequest {
            uid: String::new(),
            container: container.to_owned(),
            follow: q.flag("follow"),
            tail_lines: q.get("tailLines").and_then(|v| v.parse().ok()),
            since_seconds: q
                .get("sinceSeconds")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            since_time: since_time.map(|t| prost_types::Timestamp {
                seconds: t.as_second(),
                nanos: t.subsec_nanosecond(),
            }),
            timestamps: q.flag("timestamps"),
            previous: q.flag("previous"),
            limit_bytes: q
                .get("limitBytes")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        };
        match self.cluster.streams().logs(ns, pod, options).await {
            Ok(stream) => {
                let body = stream.map(|chunk| match chunk {
                    Ok(c) => Ok(Frame::data(c.data)),
                    Err(status) => Err(std::io::Error::other(status.message().to_owned())),
                });
                Response::builder()
                    .header(http::header::CONTENT_TYPE, "text/plain")
                    .body(BodyExt::boxed(StreamBody::new(body)))
                    .unwrap_or_default()
            }
            Err(e) => error_response(&e),
        }
    }
}

/// Serves the kubelet API on `listener` until `stop`.
pub async fn serve(
    kubelet: Arc<Kubelet>,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    info!(listen = ?listener.local_addr().ok(), "kubelet API serving (HTTPS)");
    let mut listener = orca_proto::accept::Acceptor::new(listener, "kubelet API");
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.next() => accepted,
            _ = stop.wait_for(|s| *s) => return,
        };
        let acceptor = acceptor.clone();
        let kubelet = kubelet.clone();
        tokio::spawn(async move {
            let tls = match orca_proto::accept::handshake(&acceptor, tcp).await {
                Ok(t) => t,
                Err(e) => {
                    debug!(%peer, error = %e, "kubelet API connection refused");
                    return;
                }
            };
            let who = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|der| Identity {
                    user: orca_proto::tls::common_name(der).unwrap_or_default(),
                    groups: orca_proto::tls::organizations(der),
                })
                .unwrap_or_default();
            let service = hyper::service::service_fn(move |req| {
                let kubelet = kubelet.clone();
                let who = who.clone();
                async move { Ok::<_, std::convert::Infallible>(kubelet.handle(req, who).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .with_upgrades()
                .await
            {
                debug!(%peer, error = %e, "kubelet API connection ended");
            }
        });
    }
}
