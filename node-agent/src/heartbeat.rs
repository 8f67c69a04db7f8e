//! Heartbeating to the control plane, over mutual TLS with the node's
//! certificate ([`crate::join`]).
//!
//! The agent reports every interval (the control plane chooses it and may change
//! it in any answer) and at once whenever a pod's observed state changes or an
//! interruption notice comes due. Pods
//! the control plane no longer knows (orphans: removed, or recreated elsewhere
//! while this node was unreachable) are stopped. Failures are retried with the
//! configured retry interval; they never stop the pods.

use std::time::Duration;

use std::sync::Arc;

use orca_proto::controlplane::v1::{HeartbeatRequest, node_service_client::NodeServiceClient};
use orca_proto::types::v1::Resources;
use tracing::{info, warn};

use crate::join::Identity;
use crate::pods::PodManager;

/// Shortest heartbeat interval accepted from the control plane.
const MIN_INTERVAL: Duration = Duration::from_millis(50);

/// What the heartbeat loop needs.
#[derive(Clone)]
pub struct Reporter {
    /// Control plane URL (`https://host:port`).
    pub control_plane: String,
    /// The node's identity (certificate, id).
    pub identity: Arc<Identity>,
    /// Node resources, GPUs aside.
    pub capacity: Resources,
    /// The GPUs and their telemetry.
    pub gpus: crate::gpu::monitor::Monitor,
    /// Pause between failed attempts to reach the control plane.
    pub retry: Duration,
    /// Heartbeat interval until the control plane says otherwise.
    pub interval: Duration,
    /// Interruption notices that are due.
    pub notices: crate::interruption::Notices,
    /// When the control plane last answered (the dead-man's switch reads it).
    pub contact: crate::deadman::Contact,
    /// The Services' node ports this host serves.
    pub node_ports: Arc<crate::node_ports::NodePorts>,
}

/// Aborts a task when dropped (the heartbeat loop's helpers end with it).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn duration(d: Option<prost_types::Duration>, fallback: Duration) -> Duration {
    d.and_then(|d| Duration::try_from(d).ok())
        .unwrap_or(fallback)
        .max(MIN_INTERVAL)
}

/// Heartbeats over mutual TLS until `shutdown` resolves, renewing the node's
/// certificate when it is due.
pub async fn run(r: Reporter, pods: PodManager, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    let client = match orca_proto::tls::client_config(
        &r.identity.ca_pem,
        Some(r.identity.slot.clone()),
    )
    .and_then(|tls| orca_proto::tls::channel(&r.control_plane, None, tls, Duration::from_secs(5)))
    {
        Ok(channel) => NodeServiceClient::new(channel),
        Err(e) => {
            warn!(error = %e, control_plane = %r.control_plane, "cannot heartbeat: bad control plane address or CA");
            return;
        }
    };
    let mut interval = r.interval;
    let mut sequence = 0u64;
    // Checking containerd for every running container is pod work: it runs on
    // a task of its own, so a heartbeat never waits behind it (one call per
    // container, each waiting on a containerd busy with other pods' starts, once
    // held heartbeats up long enough for the node to go Suspect).
    let refresher = {
        let (pods, every) = (pods.clone(), r.interval);
        tokio::spawn(async move {
            loop {
                pods.refresh().await;
                tokio::time::sleep(every).await;
            }
        })
    };
    let _refresher = AbortOnDrop(refresher);
    loop {
        sequence += 1;
        let telemetry = r.gpus.latest();
        // GPUs count only once the source answers; unhealthy ones are not allocatable.
        let capacity = Resources {
            gpus: telemetry.gpus.len() as i32,
            ..r.capacity
        };
        let allocatable = Resources {
            gpus: telemetry.healthy().len() as i32,
            ..r.capacity
        };
        let req = HeartbeatRequest {
            node_id: r.identity.node_id.clone(),
            sequence,
            capacity: Some(capacity),
            allocatable: Some(allocatable),
            pods: pods.reports(),
            gpus: pods.attribute(&telemetry),
            gpu_source: telemetry.source.to_owned(),
            gpu_note: telemetry.note.clone(),
            gpu_driver_version: telemetry.driver_version.clone(),
            notices: r.notices.latest(),
        };
        let mut client = client.clone();
        // One heartbeat never outlives the interval by much: a control plane
        // that does not answer is retried, not waited on.
        let call =
            tokio::time::timeout(interval.max(Duration::from_secs(5)), client.heartbeat(req));
        let answer = call.await.unwrap_or_else(|_| {
            Err(tonic::Status::deadline_exceeded(
                "no answer to the heartbeat",
            ))
        });
        let pause = match answer {
            Ok(resp) => {
                r.contact.touch();
                let resp = resp.into_inner();
                interval = duration(resp.heartbeat_interval, interval);
                r.notices.push(resp.notices);
                r.node_ports.set(&resp.node_ports).await;
                for uid in resp.orphan_pod_uids {
                    let pods = pods.clone();
                    tokio::spawn(async move {
                        if let Err(e) = pods.stop(&uid, Some(Duration::ZERO), true).await {
                            warn!(uid, error = %e, "orphan pod not removed");
                        }
                    });
                }
                if r.identity.due_for_renewal() {
                    match r.identity.renew(&mut client).await {
                        Ok(()) => info!("node certificate renewed"),
                        Err(e) => warn!(error = %e, "node certificate not renewed; retrying"),
                    }
                }
                interval
            }
            Err(e) => {
                warn!(error = %e, "heartbeat failed");
                r.retry.min(interval)
            }
        };
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(pause) => {}
            _ = pods.changed() => {}
            _ = r.gpus.changed() => {}
            _ = r.notices.changed() => {}
        }
    }
}
