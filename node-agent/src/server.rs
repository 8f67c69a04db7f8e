//! The AgentService gRPC server: validates and converts requests, calls the pod
//! manager, converts back. Errors map to gRPC codes in one `match`.

use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use orca_proto::agent::v1::{self as pb, agent_service_server::AgentService};
use tonic::{Request, Response, Status, Streaming};

use crate::logs::{self, ReadOptions};
use crate::pods::{PodError, PodKey, PodManager, RunInputs};
use crate::runtime::RuntimeError;
use crate::runtime::pull::Credential;

/// Implements `orca.agent.v1.AgentService` over a [`PodManager`].
pub struct AgentServer {
    pods: PodManager,
}

impl AgentServer {
    /// A server for `pods`.
    pub fn new(pods: PodManager) -> Self {
        Self { pods }
    }
}

fn status(e: PodError) -> Status {
    match e {
        PodError::Invalid { .. } => Status::invalid_argument(e.to_string()),
        PodError::NotFound { .. } | PodError::NoContainer { .. } => {
            Status::not_found(e.to_string())
        }
        PodError::Removing { .. } => Status::unavailable(e.to_string()),
        PodError::Runtime(ref r) => match r {
            RuntimeError::Connect { .. } => Status::unavailable(e.to_string()),
            RuntimeError::Containerd { source, .. } if source.code() == tonic::Code::NotFound => {
                Status::not_found(e.to_string())
            }
            RuntimeError::Containerd { .. } => Status::internal(e.to_string()),
            RuntimeError::ImagePull { .. }
            | RuntimeError::ImageNeverPull { .. }
            | RuntimeError::BadImage { .. } => Status::failed_precondition(e.to_string()),
        },
    }
}

type Stream_<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl AgentService for AgentServer {
    #[tracing::instrument(skip_all)]
    async fn run_pod(
        &self,
        req: Request<pb::RunPodRequest>,
    ) -> Result<Response<pb::RunPodResponse>, Status> {
        let req = req.into_inner();
        let pod = req
            .pod
            .ok_or_else(|| Status::invalid_argument("pod is required"))?;
        let r = pod.r#ref.unwrap_or_default();
        let key = PodKey {
            namespace: r.namespace,
            name: r.name,
            uid: r.uid,
        };
        let credentials = req
            .registry_credentials
            .into_iter()
            .map(|c| Credential {
                registry: c.registry,
                username: c.username,
                password: c.password,
            })
            .collect();
        let volume_data = req.volume_data.map(Into::into).unwrap_or_default();
        let inputs = RunInputs {
            credentials,
            volume_data,
        };
        let labels = pod.labels.into_iter().collect();
        let annotations = pod.annotations.into_iter().collect();
        let report = self
            .pods
            .run(key, &pod.spec_json, labels, annotations, inputs)
            .map_err(status)?;
        Ok(Response::new(pb::RunPodResponse {
            status: report.status,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn stop_pod(
        &self,
        req: Request<pb::StopPodRequest>,
    ) -> Result<Response<pb::StopPodResponse>, Status> {
        let req = req.into_inner();
        let grace = (req.grace_period_seconds >= 0)
            .then(|| Duration::from_secs(req.grace_period_seconds as u64));
        let report = self
            .pods
            .stop(&req.uid, grace, req.remove)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::StopPodResponse {
            status: report.status,
        }))
    }

    async fn get_pod(
        &self,
        req: Request<pb::GetPodRequest>,
    ) -> Result<Response<pb::GetPodResponse>, Status> {
        self.pods.refresh().await;
        let report = self.pods.report(&req.into_inner().uid).map_err(status)?;
        Ok(Response::new(pb::GetPodResponse { pod: Some(report) }))
    }

    async fn list_pods(
        &self,
        _: Request<pb::ListPodsRequest>,
    ) -> Result<Response<pb::ListPodsResponse>, Status> {
        self.pods.refresh().await;
        Ok(Response::new(pb::ListPodsResponse {
            pods: self.pods.reports(),
        }))
    }

    type LogsStream = Stream_<pb::LogChunk>;

    async fn logs(
        &self,
        req: Request<pb::LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        let req = req.into_inner();
        if req.follow {
            return Err(Status::unimplemented(
                "logs --follow comes with the logs/exec issue; read without follow",
            ));
        }
        let path = self
            .pods
            .log_file(&req.uid, &req.container, req.previous)
            .map_err(status)?;
        let since = match (req.since_seconds, req.since_time) {
            (s, _) if s > 0 => Some(jiff::Timestamp::now() - jiff::SignedDuration::from_secs(s)),
            (_, Some(t)) => jiff::Timestamp::new(t.seconds, t.nanos).ok(),
            _ => None,
        };
        let opts = ReadOptions {
            tail_lines: (req.tail_lines >= 0).then_some(req.tail_lines as usize),
            since,
            timestamps: req.timestamps,
            limit_bytes: (req.limit_bytes > 0).then_some(req.limit_bytes as usize),
        };
        let lines = tokio::task::spawn_blocking(move || logs::read(&path, &opts))
            .await
            .map_err(|e| Status::internal(format!("log reader failed: {e}")))?
            .map_err(|e| Status::internal(format!("cannot read log: {e}")))?;
        let chunks = lines.into_iter().map(|(stream, data)| {
            let stream = match stream {
                logs::Stream::Stdout => pb::OutputStream::Stdout,
                logs::Stream::Stderr => pb::OutputStream::Stderr,
            };
            Ok(pb::LogChunk {
                stream: stream as i32,
                data,
            })
        });
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }

    type ExecStream = Stream_<pb::ExecOutput>;

    async fn exec(
        &self,
        _: Request<Streaming<pb::ExecInput>>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        Err(Status::unimplemented("Exec comes with the logs/exec issue"))
    }

    type AttachStream = Stream_<pb::ExecOutput>;

    async fn attach(
        &self,
        _: Request<Streaming<pb::AttachInput>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        Err(Status::unimplemented(
            "Attach comes with the logs/exec issue",
        ))
    }

    async fn telemetry(
        &self,
        _: Request<pb::TelemetryRequest>,
    ) -> Result<Response<pb::TelemetryResponse>, Status> {
        Err(Status::unimplemented("Telemetry comes with the GPU issue"))
    }
}

/// Admits only calls whose client certificate is the control plane's (the TLS
/// layer has already verified it against the cluster CA).
pub fn control_plane_only(req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    let cn = orca_proto::tls::peer(&req).and_then(|p| p.common_name.as_deref());
    if cn == Some(orca_proto::tls::CONTROL_PLANE_CN) {
        Ok(req)
    } else {
        Err(tonic::Status::permission_denied(format!(
            "only the control plane may call the agent (client certificate {cn:?})"
        )))
    }
}
