//! The ORCA control plane.
//!
//! It keeps the cluster's desired and observed state in an embedded sled store,
//! launches nodes through an instance provider, admits their agents with
//! single-use join tokens, places pods on nodes and hands them to the nodes'
//! agents, and records what the agents observe. It never reports a pod state no
//! agent observed: until an agent reports, a pod is Pending; if no node takes it
//! within the pending timeout, it fails with reason Unschedulable.
//!
//! # Layout
//! - [`config`]: the YAML config, validated with errors naming the field.
//! - [`store`]: sled tables of protobuf records; flushed before acknowledging.
//! - [`cluster`]: the shared state; [`registry`] (nodes, join, heartbeats,
//!   health), [`pods`] (create, observe, delete, logs, events) and [`scheduler`]
//!   (placement, dispatch) are its operations.
//! - [`cloud`]: the `InstanceProvider` trait and the `local` provider (simulated
//!   hosts, each in a network namespace of its own on a bridge; faults).
//! - [`api`]: the AdminService and NodeService gRPC servers.
//! - [`cli`]: the `orca` command line client of AdminService.
//!
//! # Current limitations
//! Plain-text gRPC (mutual TLS comes with the control-plane core issue), the
//! same services for agents and users (on the provider's gateway too, where it
//! has one), no recovery of pods from lost nodes yet (a node
//! without heartbeats is only marked NotReady), no Kubernetes or EC2 yet.

pub mod api;
pub mod cli;
pub mod cloud;
pub mod cluster;
pub mod config;
pub mod pods;
pub mod registry;
pub mod scheduler;
pub mod store;

use std::future::Future;

use futures::StreamExt as _;
use orca_proto::controlplane::v1::admin_service_server::AdminServiceServer;
use orca_proto::controlplane::v1::node_service_server::NodeServiceServer;
use tokio::net::TcpListener;
use tracing::info;

use crate::cloud::InstanceProvider;
use crate::cluster::Cluster;
use crate::config::{Config, Provider};

/// The gRPC services the control plane serves (besides health and reflection).
const SERVICES: &[&str] = &[
    "orca.controlplane.v1.AdminService",
    "orca.controlplane.v1.NodeService",
];

/// Errors that stop the control plane.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The store could not be opened or flushed.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The gRPC server failed.
    #[error("server failed")]
    Serve(#[source] tonic::transport::Error),
    /// The instance provider could not be prepared.
    #[error(transparent)]
    Provider(#[from] cloud::ProviderError),
    /// The listener for hosts (on the provider's gateway address) could not be bound.
    #[error("cannot listen on {addr} for hosts")]
    HostListener {
        /// Address.
        addr: std::net::SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The data directory could not be prepared.
    #[error("data directory {path}")]
    DataDir {
        /// Path.
        path: std::path::PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Runs the control plane on an already-bound listener until `shutdown`
/// resolves; then drains in-flight calls, stops its loops and flushes the store.
///
/// When the provider's hosts reach this machine at an address of their own (the
/// `local` provider's bridge), the same services are also served on that
/// address (same port as `listener`, or any port when the listener has port 0)
/// and agents are given that URL instead of `advertise_url`.
pub async fn serve(
    listener: TcpListener,
    mut config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let data = config.data_dir.clone();
    std::fs::create_dir_all(&data).map_err(|source| ServeError::DataDir {
        path: data.clone(),
        source,
    })?;
    let store = store::Store::open(&data.join("store"))?;
    let provider: Box<dyn InstanceProvider> = match &config.provider {
        Provider::Local(local) => Box::new(cloud::local::LocalProvider::new(
            local.clone(),
            data.join("hosts"),
        )),
    };
    let local_addr = listener.local_addr().ok();
    let host_listener = match (provider.prepare().await?, local_addr) {
        // A listener on every address already covers the gateway.
        (Some(gateway), Some(addr)) if !addr.ip().is_unspecified() => {
            let at = std::net::SocketAddr::new(gateway, addr.port());
            let host_listener = TcpListener::bind(at)
                .await
                .map_err(|source| ServeError::HostListener { addr: at, source })?;
            let bound = host_listener
                .local_addr()
                .map_err(|source| ServeError::HostListener { addr: at, source })?;
            config.advertise_url = format!("http://{bound}");
            info!(listen = %bound, "serving hosts on the provider's gateway");
            Some(host_listener)
        }
        (Some(gateway), Some(addr)) => {
            config.advertise_url =
                format!("http://{}", std::net::SocketAddr::new(gateway, addr.port()));
            None
        }
        _ => None,
    };
    let cluster = Cluster::new(config, store.clone(), provider);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let scheduler = {
        let cluster = cluster.clone();
        let mut rx = stop_rx.clone();
        tokio::spawn(async move {
            cluster
                .run_scheduler(async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await
        })
    };

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<AdminServiceServer<api::admin::AdminApi>>()
        .await;
    health
        .set_serving::<NodeServiceServer<api::node::NodeApi>>()
        .await;
    info!(listen = ?local_addr, data_dir = %data.display(), "control plane serving");
    let incoming = orca_proto::incoming(listener);
    let incoming = match host_listener {
        Some(hosts) => futures::stream::select(incoming, orca_proto::incoming(hosts)).left_stream(),
        None => incoming.right_stream(),
    };
    let result = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(orca_proto::serving::reflection_v1(SERVICES))
        .add_service(orca_proto::serving::reflection_v1alpha(SERVICES))
        .add_service(AdminServiceServer::new(api::admin::AdminApi::new(
            cluster.clone(),
        )))
        .add_service(NodeServiceServer::new(api::node::NodeApi::new(
            cluster.clone(),
        )))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(ServeError::Serve);
    let _ = stop_tx.send(true);
    let _ = scheduler.await;
    store.flush().await?;
    info!("control plane stopped; state flushed");
    result
}
