//! Kubernetes mode: ORCA as a Virtual Kubelet node.
//!
//! - [`kube`]: the narrow Kubernetes client trait and its kube-rs implementation.
//! - [`node`]: the Node object (capacity, labels, taint, conditions, addresses,
//!   the kubelet port) and its Lease.
//! - [`pods`]: pods bound to the Node, kept in step with ORCA's pods both ways,
//!   with graceful deletion; [`status`] maps ORCA's pod status onto Kubernetes'.
//! - [`resolve`]: ConfigMaps, Secrets, tokens, pull secrets and downward values
//!   a pod refers to, resolved before its agent gets it.
//! - [`events`]: ORCA's pod events as Kubernetes Events.
//! - [`kubelet`]: the kubelet HTTPS API (logs, exec, attach, port-forward,
//!   stats) the API server calls.

pub mod claims;
pub mod events;
pub mod kube;
pub mod kubelet;
pub mod node;
pub mod pods;
pub mod resolve;
pub mod status;

use std::sync::Arc;

use tracing::{info, warn};

use self::kube::{KubeApi, KubeClient, KubeError};
use crate::cluster::Cluster;
use crate::config::kubernetes::Kubernetes;

/// Lifetime of the kubelet API's serving certificate when ORCA issues it.
const KUBELET_CERT_LIFETIME: std::time::Duration = std::time::Duration::from_secs(365 * 86_400);

/// Starts the Virtual Kubelet's loops (Node and Lease, pod watch, status sync,
/// events) and the kubelet API for `cluster`; they end when `stop` turns true.
pub async fn start(
    cluster: &Cluster,
    config: &Kubernetes,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<Vec<tokio::task::JoinHandle<()>>, KubeError> {
    let kube: Arc<dyn KubeApi> = Arc::new(KubeClient::new(config.kubeconfig.as_deref()).await?);
    let classes = cluster
        .shared()
        .config()
        .ec2()
        .map(|s| s.storage_classes.clone())
        .unwrap_or_default();
    cluster.shared().set_resolver(Arc::new(
        resolve::KubeResolver::new(kube.clone(), config.node_name.clone())
            .with_storage_classes(classes),
    ));
    let node = node::NodeSync::new(cluster.clone(), kube.clone(), config.clone());
    let pods = pods::PodSync::new(cluster.clone(), kube.clone(), config.node_name.clone());
    let mut tasks = Vec::new();
    {
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            // Register before anything else is written; retry until it works.
            let mut stopped = stop.clone();
            loop {
                match node.register().await {
                    Ok(()) => break,
                    Err(e) => warn!(error = %e, "registering the Node failed; retrying"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                    _ = stopped.wait_for(|s| *s) => return,
                }
            }
            node.run(stop).await;
        }));
    }
    let (tls, _serving) =
        kubelet::tls::server_config(config, cluster.shared().pki(), KUBELET_CERT_LIFETIME)
            .map_err(|e| KubeError::Config(e.to_string()))?;
    let listener = tokio::net::TcpListener::bind(config.kubelet.listen)
        .await
        .map_err(|e| {
            KubeError::Config(format!(
                "kubernetes.kubelet.listen {}: {e}",
                config.kubelet.listen
            ))
        })?;
    let api = kubelet::server::Kubelet::new(cluster.clone(), kube.clone(), config.clone());
    tasks.push(tokio::spawn(kubelet::server::serve(
        api,
        listener,
        tls,
        stop.clone(),
    )));
    tasks.push(tokio::spawn(
        pods.clone().run_watch(config.resync, stop.clone()),
    ));
    tasks.push(tokio::spawn(
        pods.run_status(config.status_sync, stop.clone()),
    ));
    tasks.push(tokio::spawn(events::run(
        cluster.clone(),
        kube,
        config.node_name.clone(),
        stop,
    )));
    info!(node = %config.node_name, "virtual kubelet started");
    Ok(tasks)
}
