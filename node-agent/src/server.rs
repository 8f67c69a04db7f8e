//! The AgentService gRPC server: validates and converts requests, calls the pod
//! manager (and [`crate::streams`] for logs, exec and attach,
//! [`crate::portforward`] and [`crate::stats`]), converts back. Errors map to
//! gRPC codes in one `match`.

use std::time::Duration;

use orca_proto::agent::v1::{self as pb, agent_service_server::AgentService};
use tonic::{Request, Response, Status, Streaming};

use crate::pods::{PodKey, PodManager, RunInputs};
use crate::rpc::{Responses, status};
use crate::runtime::pull::Credential;
use crate::streams::{FollowTimings, Streams};

/// Implements `orca.agent.v1.AgentService` over a [`PodManager`].
pub struct AgentServer {
    pods: PodManager,
    streams: Streams,
}

impl AgentServer {
    /// A server for `pods`, following logs with `follow`.
    pub fn new(pods: PodManager, follow: FollowTimings) -> Self {
        let streams = Streams::new(pods.clone(), follow);
        Self { pods, streams }
    }
}

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
    async fn update_volumes(
        &self,
        req: Request<pb::UpdateVolumesRequest>,
    ) -> Result<Response<pb::UpdateVolumesResponse>, Status> {
        let req = req.into_inner();
        let data = req.volume_data.map(Into::into).unwrap_or_default();
        match self.pods.update_volumes(&req.uid, &data) {
            Ok(true) => Ok(Response::new(pb::UpdateVolumesResponse {})),
            Ok(false) => Err(Status::not_found(format!("no pod {}", req.uid))),
            Err(e) => Err(Status::failed_precondition(e.to_string())),
        }
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

    type LogsStream = Responses<pb::LogChunk>;

    async fn logs(
        &self,
        req: Request<pb::LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        let stream = self.streams.logs(req.into_inner()).map_err(status)?;
        Ok(Response::new(stream))
    }

    type ExecStream = Responses<pb::ExecOutput>;

    async fn exec(
        &self,
        req: Request<Streaming<pb::ExecInput>>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        Ok(Response::new(self.streams.exec(req.into_inner()).await?))
    }

    type AttachStream = Responses<pb::ExecOutput>;

    async fn attach(
        &self,
        req: Request<Streaming<pb::AttachInput>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        Ok(Response::new(self.streams.attach(req.into_inner()).await?))
    }

    type PortForwardStream = Responses<pb::PortForwardOutput>;

    async fn port_forward(
        &self,
        req: Request<Streaming<pb::PortForwardInput>>,
    ) -> Result<Response<Self::PortForwardStream>, Status> {
        let stream = crate::portforward::port_forward(&self.pods, req.into_inner()).await?;
        Ok(Response::new(stream))
    }

    async fn stats(
        &self,
        _: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        let live = self.pods.live();
        let namespace = self.pods.containerd().namespace().to_owned();
        let stats = tokio::task::spawn_blocking(move || crate::stats::collect(&live, &namespace))
            .await
            .map_err(|e| Status::internal(format!("stats reader failed: {e}")))?;
        Ok(Response::new(stats))
    }

    async fn telemetry(
        &self,
        _: Request<pb::TelemetryRequest>,
    ) -> Result<Response<pb::TelemetryResponse>, Status> {
        let t = self.pods.gpus().latest();
        Ok(Response::new(pb::TelemetryResponse {
            gpus: self.pods.attribute(&t),
            gpu_source_note: t.note.clone(),
            sampled_at: t.sampled_at.map(crate::status::to_pb_time),
            gpu_source: t.source.to_owned(),
            driver_version: t.driver_version.clone(),
        }))
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
