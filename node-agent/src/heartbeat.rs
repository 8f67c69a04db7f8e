//! Heartbeating to the control plane, over mutual TLS with the node's
//! certificate ([`crate::join`]).
//!
//! The agent reports every interval (the control plane chooses it and may change
//! it in any answer) and at once whenever a pod's observed state changes or an
//! interruption notice comes due. Pods
//! the control plane no longer knows (orphans: removed, or recreated elsewhere
//! while this node was unreachable) are stopped. Failures are retried with the
//! configured retry interval; they never stop the pods.

use std::time::{Duration, Instant};

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

/// The agent's half of "no pod runs twice": when no heartbeat has been
/// answered for the control plane's `stop_pods_after` (counted from when the
/// last answered one was *sent*, never later than the control plane received
/// it), every pod the control plane may replace without a fence is stopped
/// ([`PodManager::cut_off`]). The control plane declares the node Lost a
/// heartbeat interval after that moment at the earliest, so those pods are gone
/// before it can replace them elsewhere.
#[derive(Clone, Default)]
struct CutOff(Arc<std::sync::Mutex<CutOffState>>);

#[derive(Default)]
struct CutOffState {
    /// When the last answered heartbeat was sent.
    last_answered: Option<Instant>,
    /// The control plane's `stop_pods_after`.
    stop_after: Option<Duration>,
    /// The pods of this silence were stopped already.
    stopped: bool,
}

impl CutOff {
    fn answered(&self, sent: Instant, stop_after: Option<Duration>) {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        s.last_answered = Some(sent);
        s.stop_after = stop_after;
        s.stopped = false;
    }

    /// How long past the deadline this silence is, when it is and its pods
    /// have not been stopped yet (marking them stopped).
    fn due(&self) -> Option<Duration> {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let silent = s.last_answered?.elapsed();
        if s.stopped || silent < s.stop_after? {
            return None;
        }
        s.stopped = true;
        Some(silent)
    }

    /// Checks often enough to act within a small part of a heartbeat interval.
    async fn watch(self, pods: PodManager) {
        loop {
            tokio::time::sleep(CUT_OFF_CHECK).await;
            if let Some(silent) = self.due() {
                pods.cut_off(silent);
            }
        }
    }
}

/// How often the cut-off watchdog looks.
const CUT_OFF_CHECK: Duration = Duration::from_millis(20);

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
    let cut_off = CutOff::default();
    let _watchdog = AbortOnDrop(tokio::spawn(cut_off.clone().watch(pods.clone())));
    loop {
        sequence += 1;
        let sent = Instant::now();
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
                cut_off.answered(
                    sent,
                    resp.stop_pods_after
                        .and_then(|d| Duration::try_from(d).ok())
                        .filter(|d| !d.is_zero()),
                );
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
        let woken = tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(pause) => false,
            _ = pods.changed() => true,
            _ = r.gpus.changed() => true,
            _ = r.notices.changed() => true,
        };
        if woken {
            // Changes come in bursts (a pod's containers, its conditions): one
            // report for the burst, not one per step of it.
            tokio::time::sleep(SETTLE).await;
        }
    }
}

/// How long a change waits for the rest of its burst before it is reported.
const SETTLE: Duration = Duration::from_millis(20);
