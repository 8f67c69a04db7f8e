//! `orca.controlplane.v1.NodeService`: agents join, heartbeat and renew their
//! certificates; every call but Join is authenticated by the node's certificate.

use orca_proto::controlplane::v1::{self as pb, node_service_server::NodeService};
use tonic::{Request, Response, Status};

use super::status;
use crate::cluster::Cluster;

/// The NodeService server.
pub struct NodeApi {
    cluster: Cluster,
}

impl NodeApi {
    /// A server over `cluster`.
    pub fn new(cluster: Cluster) -> Self {
        Self { cluster }
    }
}

#[tonic::async_trait]
impl NodeService for NodeApi {
    #[tracing::instrument(skip_all, fields(node = %req.get_ref().node_name))]
    async fn join(
        &self,
        req: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        self.cluster
            .registry()
            .join(req.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let peer = common_name(&req);
        self.cluster
            .heartbeats()
            .heartbeat(req.into_inner(), peer.as_deref())
            .await
            .map(Response::new)
            .map_err(status)
    }

    #[tracing::instrument(skip_all)]
    async fn renew_certificate(
        &self,
        req: Request<pb::RenewCertificateRequest>,
    ) -> Result<Response<pb::RenewCertificateResponse>, Status> {
        let peer = common_name(&req);
        self.cluster
            .registry()
            .renew_certificate(req.into_inner(), peer.as_deref())
            .map(Response::new)
            .map_err(status)
    }
}

/// The verified client certificate's common name.
fn common_name<T>(req: &Request<T>) -> Option<String> {
    orca_proto::tls::peer(req).and_then(|p| p.common_name.clone())
}
