//! `orca.controlplane.v1.AdminService`: nodes, pods, logs, events.

use std::pin::Pin;

use futures::{Stream, StreamExt as _};
use orca_proto::agent::v1 as agent;
use orca_proto::controlplane::v1::{self as pb, admin_service_server::AdminService};
use tonic::{Request, Response, Status, Streaming};

use super::{backup_status, status};
use crate::cloud::Fault;
use crate::cluster::Cluster;

/// The AdminService server.
pub struct AdminApi {
    cluster: Cluster,
}

impl AdminApi {
    /// A server over `cluster`.
    pub fn new(cluster: Cluster) -> Self {
        Self { cluster }
    }
}

type Stream_<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl AdminService for AdminApi {
    #[tracing::instrument(skip_all, fields(node = %req.get_ref().name))]
    async fn add_node(
        &self,
        req: Request<pb::AddNodeRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        let req = req.into_inner();
        let node = crate::registry::NodeRequest {
            name: req.name,
            size: req.size.unwrap_or_default(),
            labels: req.labels,
            taints: req.taints,
            external: req.external,
        };
        self.cluster
            .add_node(node)
            .await
            .map(Response::new)
            .map_err(status)
    }

    #[tracing::instrument(skip_all, fields(node = %req.get_ref().node_name))]
    async fn create_join_token(
        &self,
        req: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<pb::CreateJoinTokenResponse>, Status> {
        self.cluster
            .create_join_token(&req.into_inner().node_name)
            .await
            .map(Response::new)
            .map_err(status)
    }

    #[tracing::instrument(skip_all, fields(node = %req.get_ref().name))]
    async fn cordon_node(
        &self,
        req: Request<pb::CordonNodeRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        let req = req.into_inner();
        self.cluster
            .cordon(&req.name, req.unschedulable)
            .await
            .map(Response::new)
            .map_err(status)
    }

    #[tracing::instrument(skip_all, fields(node = %req.get_ref().name))]
    async fn inject_fault(
        &self,
        req: Request<pb::InjectFaultRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        let req = req.into_inner();
        let fault = match pb::Fault::try_from(req.fault) {
            Ok(pb::Fault::KillAgent) => Fault::KillAgent,
            Ok(pb::Fault::Partition) => Fault::Partition,
            Ok(pb::Fault::Heal) => Fault::Heal,
            Ok(pb::Fault::SpotNotice) => Fault::SpotNotice(match req.duration_ms {
                ms if ms > 0 => std::time::Duration::from_millis(ms as u64),
                _ => crate::interruptions::SPOT_NOTICE_LEAD,
            }),
            _ => {
                return Err(Status::invalid_argument(
                    "fault: kill-agent, partition, heal or spot-notice",
                ));
            }
        };
        let duration =
            (req.duration_ms > 0).then(|| std::time::Duration::from_millis(req.duration_ms as u64));
        self.cluster
            .inject_fault(&req.name, fault, duration)
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn get_node(
        &self,
        req: Request<pb::GetNodeRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        self.cluster
            .node(&req.into_inner().name)
            .map(Response::new)
            .map_err(status)
    }

    async fn list_nodes(
        &self,
        _: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let nodes = self.cluster.nodes().map_err(status)?;
        Ok(Response::new(pb::ListNodesResponse { nodes }))
    }

    #[tracing::instrument(skip_all, fields(node = %req.get_ref().name))]
    async fn drain_node(
        &self,
        req: Request<pb::DrainNodeRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        let req = req.into_inner();
        let grace = (req.grace_period_seconds >= 0).then_some(req.grace_period_seconds);
        self.cluster
            .drain(&req.name, grace)
            .await
            .map(Response::new)
            .map_err(status)
    }

    #[tracing::instrument(skip_all, fields(node = %req.get_ref().name))]
    async fn remove_node(
        &self,
        req: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::RemoveNodeResponse>, Status> {
        let node = self
            .cluster
            .remove_node(&req.into_inner().name)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RemoveNodeResponse { node: Some(node) }))
    }

    #[tracing::instrument(skip_all)]
    async fn run_pod(
        &self,
        req: Request<pb::RunPodRequest>,
    ) -> Result<Response<pb::PodRecord>, Status> {
        let pod = req
            .into_inner()
            .pod
            .ok_or_else(|| Status::invalid_argument("pod is required"))?;
        self.cluster
            .create_admitted_pod(pod)
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn apply_object(
        &self,
        req: Request<pb::ApplyObjectRequest>,
    ) -> Result<Response<pb::ApplyObjectResponse>, Status> {
        let req = req.into_inner();
        let (object, created) = self
            .cluster
            .apply_object(&req.manifest_json, &req.namespace)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ApplyObjectResponse {
            object: Some(object),
            created,
        }))
    }

    async fn get_object(
        &self,
        req: Request<pb::GetObjectRequest>,
    ) -> Result<Response<pb::StoredObject>, Status> {
        let req = req.into_inner();
        self.cluster
            .get_object(&req.kind, &req.namespace, &req.name)
            .map(Response::new)
            .map_err(status)
    }

    async fn list_objects(
        &self,
        req: Request<pb::ListObjectsRequest>,
    ) -> Result<Response<pb::ListObjectsResponse>, Status> {
        let req = req.into_inner();
        let objects = self
            .cluster
            .list_objects(&req.kind, &req.namespace)
            .map_err(status)?;
        Ok(Response::new(pb::ListObjectsResponse { objects }))
    }

    async fn delete_object(
        &self,
        req: Request<pb::DeleteObjectRequest>,
    ) -> Result<Response<pb::DeleteObjectResponse>, Status> {
        let req = req.into_inner();
        let (object, pods_deleted) = self
            .cluster
            .delete_object(&req.kind, &req.namespace, &req.name)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::DeleteObjectResponse {
            object: Some(object),
            pods_deleted,
        }))
    }

    async fn get_pod(
        &self,
        req: Request<pb::GetPodRequest>,
    ) -> Result<Response<pb::PodRecord>, Status> {
        let req = req.into_inner();
        self.cluster
            .pod(&req.namespace, &req.name)
            .map(Response::new)
            .map_err(status)
    }

    async fn list_pods(
        &self,
        req: Request<pb::ListPodsRequest>,
    ) -> Result<Response<pb::ListPodsResponse>, Status> {
        let pods = self
            .cluster
            .pods(&req.into_inner().namespace)
            .map_err(status)?;
        Ok(Response::new(pb::ListPodsResponse { pods }))
    }

    #[tracing::instrument(skip_all, fields(pod = %req.get_ref().name))]
    async fn delete_pod(
        &self,
        req: Request<pb::DeletePodRequest>,
    ) -> Result<Response<pb::DeletePodResponse>, Status> {
        let req = req.into_inner();
        let grace = (req.grace_period_seconds >= 0).then_some(req.grace_period_seconds);
        let pod = self
            .cluster
            .delete_pod(&req.namespace, &req.name, grace)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::DeletePodResponse { pod: Some(pod) }))
    }

    type LogsStream = Stream_<agent::LogChunk>;
    type WatchPodsStream = Stream_<pb::PodWatchEvent>;

    async fn watch_pods(
        &self,
        req: Request<pb::WatchPodsRequest>,
    ) -> Result<Response<Self::WatchPodsStream>, Status> {
        let ns = req.into_inner().namespace;
        self.cluster
            .watch_pods(&ns)
            .map(|s| Response::new(s.boxed()))
            .map_err(status)
    }

    async fn logs(
        &self,
        req: Request<pb::LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        let req = req.into_inner();
        let options = req.options.unwrap_or_default();
        let stream = self
            .cluster
            .logs(&req.namespace, &req.name, options)
            .await
            .map_err(status)?;
        Ok(Response::new(stream.boxed()))
    }

    type ExecStream = Stream_<agent::ExecOutput>;

    async fn exec(
        &self,
        req: Request<Streaming<pb::ExecInput>>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        use agent::exec_input::Input;
        let mut input = req.into_inner();
        let first = input.message().await?.ok_or_else(first_message_error)?;
        let Some(Input::Start(start)) = first.input.and_then(|i| i.input) else {
            return Err(first_message_error());
        };
        let (namespace, name) = (first.namespace, first.name);
        let rest = tokio_stream::StreamExt::map_while(input, |m| m.ok().and_then(|m| m.input));
        let output = self
            .cluster
            .exec(&namespace, &name, start, rest)
            .await
            .map_err(status)?;
        Ok(Response::new(output.boxed()))
    }

    type AttachStream = Stream_<agent::ExecOutput>;

    async fn attach(
        &self,
        req: Request<Streaming<pb::AttachInput>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        use agent::attach_input::Input;
        let mut input = req.into_inner();
        let first = input.message().await?.ok_or_else(first_message_error)?;
        let Some(Input::Start(start)) = first.input.and_then(|i| i.input) else {
            return Err(first_message_error());
        };
        let (namespace, name) = (first.namespace, first.name);
        let rest = tokio_stream::StreamExt::map_while(input, |m| m.ok().and_then(|m| m.input));
        let output = self
            .cluster
            .attach(&namespace, &name, start, rest)
            .await
            .map_err(status)?;
        Ok(Response::new(output.boxed()))
    }

    #[tracing::instrument(skip_all)]
    async fn create_claim(
        &self,
        req: Request<pb::CreateClaimRequest>,
    ) -> Result<Response<pb::Claim>, Status> {
        self.cluster
            .create_claim(&req.into_inner().manifest_json)
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn list_claims(
        &self,
        req: Request<pb::ListClaimsRequest>,
    ) -> Result<Response<pb::ListClaimsResponse>, Status> {
        let claims = self
            .cluster
            .claims(&req.into_inner().namespace)
            .map_err(status)?;
        Ok(Response::new(pb::ListClaimsResponse { claims }))
    }

    #[tracing::instrument(skip_all, fields(claim = %req.get_ref().name))]
    async fn delete_claim(
        &self,
        req: Request<pb::DeleteClaimRequest>,
    ) -> Result<Response<pb::Claim>, Status> {
        let req = req.into_inner();
        self.cluster
            .delete_claim(&req.namespace, &req.name)
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn list_events(
        &self,
        req: Request<pb::ListEventsRequest>,
    ) -> Result<Response<pb::ListEventsResponse>, Status> {
        let req = req.into_inner();
        let events = self
            .cluster
            .events(&req.namespace, &req.name)
            .map_err(status)?;
        Ok(Response::new(pb::ListEventsResponse { events }))
    }

    #[tracing::instrument(skip_all)]
    async fn telemetry(
        &self,
        req: Request<pb::TelemetryRequest>,
    ) -> Result<Response<pb::TelemetryResponse>, Status> {
        let req = req.into_inner();
        if !req.node.is_empty() {
            self.cluster.node(&req.node).map_err(status)?;
        }
        let nodes = self
            .cluster
            .telemetry()
            .snapshot(&req.node, req.history as usize);
        let pods = self
            .cluster
            .store()
            .pods
            .scan("")
            .map_err(|e| status(e.into()))?;
        let mut usage = crate::telemetry::pod_usage(&nodes, &pods);
        if !req.node.is_empty() {
            usage.retain(|u| u.node == req.node);
        }
        Ok(Response::new(pb::TelemetryResponse { nodes, pods: usage }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_budgets(
        &self,
        _: Request<pb::ListBudgetsRequest>,
    ) -> Result<Response<pb::ListBudgetsResponse>, Status> {
        self.cluster
            .budget_statuses()
            .map(|budgets| Response::new(pb::ListBudgetsResponse { budgets }))
            .map_err(status)
    }

    type BackupStream = Stream_<pb::BackupChunk>;

    #[tracing::instrument(skip_all)]
    async fn backup(
        &self,
        _: Request<pb::BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        let store = self.cluster.store().clone();
        let data_dir = self.cluster.config().data_dir.clone();
        // Copying the store and compressing it block: off the runtime's threads.
        let (archive, manifest) =
            tokio::task::spawn_blocking(move || crate::backup::create(&store, &data_dir))
                .await
                .map_err(|e| Status::internal(format!("backup task failed: {e}")))?
                .map_err(|e| {
                    tracing::error!(error = %e, "backup failed");
                    backup_status(e)
                })?;
        tracing::info!(bytes = archive.len(), trees = %manifest.summary(), "backup taken");
        let chunks = crate::backup::chunks(archive).map(|data| Ok(pb::BackupChunk { data }));
        Ok(Response::new(futures::stream::iter(chunks).boxed()))
    }
}

fn first_message_error() -> Status {
    Status::invalid_argument(
        "the first message must name the pod (namespace, name) and carry `input.start`",
    )
}
