//! Joining the control plane and heartbeating to it.
//!
//! The agent joins with its single-use token, learns its node id and the
//! heartbeat interval the control plane chose, then reports every interval and
//! at once whenever a pod's observed state changes. Failures are retried with the
//! configured retry interval; they never stop the pods.

use std::time::Duration;

use orca_proto::controlplane::v1::{
    HeartbeatRequest, JoinRequest, node_service_client::NodeServiceClient,
};
use orca_proto::types::v1::Resources;
use tonic::transport::Channel;
use tracing::{info, warn};

use crate::pods::PodManager;

/// Shortest heartbeat interval accepted from the control plane.
const MIN_INTERVAL: Duration = Duration::from_millis(50);

/// What the agent tells the control plane about itself.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Control plane URL (`http://host:port`).
    pub control_plane: String,
    /// Single-use join token.
    pub token: String,
    /// Node name the token was issued for.
    pub node_name: String,
    /// Where this agent serves AgentService.
    pub agent_address: String,
    /// Node resources.
    pub capacity: Resources,
    /// Pause between failed attempts to reach the control plane.
    pub retry: Duration,
}

fn duration(d: Option<prost_types::Duration>, fallback: Duration) -> Duration {
    d.and_then(|d| Duration::try_from(d).ok())
        .unwrap_or(fallback)
        .max(MIN_INTERVAL)
}

/// Joins, then heartbeats until `shutdown` resolves.
pub async fn run(id: Identity, pods: PodManager, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    let (mut client, node_id, mut interval) = loop {
        match join(&id).await {
            Ok(joined) => break joined,
            Err(e) => warn!(error = %e, control_plane = %id.control_plane, "join failed; retrying"),
        }
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(id.retry) => {}
        }
    };
    info!(node = %id.node_name, node_id = %node_id, interval_ms = interval.as_millis() as u64, "joined");
    let mut sequence = 0u64;
    loop {
        pods.refresh().await;
        sequence += 1;
        let req = HeartbeatRequest {
            node_id: node_id.clone(),
            sequence,
            capacity: Some(id.capacity),
            allocatable: Some(id.capacity),
            pods: pods.reports(),
            ..Default::default()
        };
        match client.heartbeat(req).await {
            Ok(resp) => {
                let resp = resp.into_inner();
                interval = duration(resp.heartbeat_interval, interval);
                for uid in resp.orphan_pod_uids {
                    let pods = pods.clone();
                    tokio::spawn(async move {
                        if let Err(e) = pods.stop(&uid, Some(Duration::ZERO), true).await {
                            warn!(uid, error = %e, "orphan pod not removed");
                        }
                    });
                }
            }
            Err(e) => warn!(error = %e, "heartbeat failed"),
        }
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(interval) => {}
            _ = pods.changed() => {}
        }
    }
}

async fn join(
    id: &Identity,
) -> Result<(NodeServiceClient<Channel>, String, Duration), tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(id.control_plane.clone())
        .map_err(|e| tonic::Status::invalid_argument(format!("control plane address: {e}")))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("cannot reach the control plane: {e}")))?;
    let mut client = NodeServiceClient::new(channel);
    let resp = client
        .join(JoinRequest {
            token: id.token.clone(),
            node_name: id.node_name.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            agent_address: id.agent_address.clone(),
            capacity: Some(id.capacity),
            allocatable: Some(id.capacity),
            csr_pem: String::new(),
        })
        .await?
        .into_inner();
    let interval = duration(resp.heartbeat_interval, Duration::from_secs(5));
    Ok((client, resp.node_id, interval))
}
