//! The ORCA control plane.
//!
//! It keeps the cluster's desired and observed state in an embedded sled store,
//! launches nodes through an instance provider, admits their agents with
//! single-use join tokens (signing their CSRs with the cluster CA), places pods
//! on nodes and hands them to the nodes' agents over mutual TLS, and records
//! what the agents observe. It never reports a pod state no agent observed:
//! until an agent reports, a pod is Pending; if no node takes it within the
//! pending timeout, it fails with reason Unschedulable. Nodes that stop
//! heartbeating go Suspect, NotReady, then Lost; a Lost node is fenced and its
//! pods recreated elsewhere or failed with reason NodeLost.
//!
//! # Layout
//! - [`config`]: the YAML config (plus flag overrides), validated with errors
//!   naming the field.
//! - [`store`]: sled tables of protobuf records; flushed before acknowledging.
//! - [`pki`]: the cluster CA, node certificates, the admin token;
//!   [`tls_identity`]: the control plane's own certificate and its rotation.
//! - [`shared`]: the infrastructure every component holds; [`cluster`]: the
//!   assembly of the components (ARCHITECTURE.md draws their layers):
//!   [`registry`] (nodes, join, liveness, health states, cordon),
//!   [`heartbeat`], [`pods`] (create, observe, delete, events), [`scheduler`]
//!   (placement by resources, selectors and taints, dispatch), [`recovery`]
//!   (fencing, new incarnations, drain, faults), [`streams`] (logs, exec and
//!   attach relayed from the pod's agent), [`interruptions`] (spot,
//!   maintenance and rebalance notices from the agents: cordon, move the pods,
//!   hand the checkpoint to the replacement), [`lifetime`]
//!   (`orca.research/max-lifetime`), [`budgets`] (admission estimates,
//!   statuses) and [`budget_caps`] (accrued spend, caps); [`resources`]: what
//!   pods ask for.
//! - [`objects`]: standalone mode's Namespaces, ResourceQuotas, LimitRanges,
//!   ConfigMaps and Secrets (admission, sealing, refresh of mounted volumes);
//!   [`references`]: what a pod refers to, resolved before it is handed over,
//!   from the API server (Kubernetes mode) or the store (standalone).
//! - [`selection`]: which EC2 instance types a pod gets (explicit, template,
//!   auto, chain; allowed/denied lists; the pod annotations that steer it),
//!   for the EC2 provider.
//! - [`provisioning`]: an instance per pod (EC2): launch with fallback over
//!   offerings, avoidance, back-off, caps, boot timeout, reaping, and the sweep
//!   that adopts or collects tagged instances; [`warm_pool`]: stopped instances
//!   kept ready and started for pods instead of launching;
//!   [`reservation_ends`]: nodes in a Capacity Block or Reservation drained
//!   ahead of its end.
//! - [`cloud`]: the `InstanceProvider` trait, the `local` provider (simulated
//!   hosts, each in a network namespace of its own on a bridge; faults) and the
//!   `ec2` provider.
//! - [`api`]: the AdminService (bearer token) and NodeService (node
//!   certificates) gRPC servers.
//! - [`vk`]: the Kubernetes mode: a Virtual Kubelet Node, its pods, and the
//!   kubelet API.
//! - [`cli`]: the `orca` command line client of AdminService.
//! - [`backup`]: backups of the CA and the store while the control plane runs
//!   (AdminService `Backup`, `orca backup`), restored offline
//!   (`orca-control-plane restore`).
//! - [`claims`]: PersistentVolumeClaims: local directories of simulated hosts,
//!   EBS volumes on EC2 (zone placement, creation, attachment; detachment is
//!   the provider's, before termination).
//! - [`metrics`]: Prometheus metrics on a plain-HTTP listener of their own
//!   (`metrics_listen`, bound address in `<data_dir>/metrics.addr`): the GPUs
//!   under dcgm-exporter's names and labels, and the control plane's `orca_`
//!   series.
//!
//! # Current limitations
//! The same services for agents and users (on the provider's gateway too, where
//! it has one). Claims are not provisioned in Kubernetes mode (the EBS CSI
//! driver's controller does it) and are never resized.

pub mod api;
pub mod auth;
pub mod autoscaling;
pub mod backup;
pub mod budget_caps;
pub mod budgets;
pub mod claims;
pub mod cloud;
pub mod cluster;
pub mod config;
pub mod heartbeat;
pub mod interruptions;
pub mod lifetime;
pub mod metrics;
pub mod objects;
pub mod pki;
pub mod pod_security;
pub mod pod_validation;
pub mod pods;
pub mod provisioning;
pub mod recovery;
pub mod references;
pub mod registry;
pub mod reservation_ends;
pub mod resources;
pub mod scheduler;
pub mod services;
pub mod shared;
pub mod streams;
pub mod telemetry;
pub mod tls_identity;
#[cfg(feature = "kubernetes")]
pub mod vk;
pub mod warm_pool;
pub mod workloads;

use std::future::Future;
use std::os::unix::fs::PermissionsExt as _;

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
    Store(#[from] orca_store::StoreError),
    /// The CA could not be loaded or a certificate issued.
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    /// The TLS configuration could not be built.
    #[error(transparent)]
    Tls(#[from] orca_proto::tls::TlsError),
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
    /// The metrics listener could not be bound (or its address recorded).
    #[error("cannot serve metrics on {addr}")]
    MetricsListener {
        /// Address.
        addr: std::net::SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The secrets key could not be read or made.
    #[error(transparent)]
    Secrets(#[from] objects::sealing::SealError),
    /// The Kubernetes mode could not start.
    #[cfg(feature = "kubernetes")]
    #[error(transparent)]
    Kubernetes(#[from] vk::kube::KubeError),
    /// The configuration asks for what this build leaves out.
    #[error(
        "{what} is not in this build of orca-control-plane: build it with the cargo feature `{feature}` (on by default)"
    )]
    NotBuilt {
        /// What the configuration asks for.
        what: &'static str,
        /// The cargo feature that brings it.
        feature: &'static str,
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

fn data_dir_error(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> ServeError + '_ {
    move |source| ServeError::DataDir {
        path: path.to_owned(),
        source,
    }
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
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let data = config.data_dir.clone();
    std::fs::create_dir_all(&data).map_err(data_dir_error(&data))?;
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700))
        .map_err(data_dir_error(&data))?;
    let store = orca_store::Store::open(&data.join("store"))?;
    let (pki, created) = pki::Pki::load_or_create(&store.pki)?;
    store.flush().await?;
    let listen = listener.local_addr().map_err(data_dir_error(&data))?;
    let user_url = format!(
        "https://{}",
        if listen.ip().is_unspecified() {
            std::net::SocketAddr::new([127, 0, 0, 1].into(), listen.port())
        } else {
            listen
        }
    );
    std::fs::write(data.join("ca.pem"), pki.ca_pem()).map_err(data_dir_error(&data))?;
    if let Some(created) = created {
        let path = data.join("admin.yaml");
        orca_proto::credentials::Credentials {
            server: user_url.clone(),
            certificate_authority_data: pki.ca_pem().to_owned(),
            token: created.admin_token,
        }
        .write(&path)
        .map_err(data_dir_error(&path))?;
        info!(credentials = %path.display(), "new cluster: CA and admin credentials created");
    }
    let provider: Box<dyn InstanceProvider> = match &config.provider {
        Provider::Local(local) => Box::new(cloud::local::LocalProvider::new(
            local.clone(),
            data.join("hosts"),
        )),
        #[cfg(feature = "ec2")]
        Provider::Ec2(ec2) => Box::new(cloud::ec2::Ec2Provider::new((**ec2).clone())),
        #[cfg(not(feature = "ec2"))]
        Provider::Ec2(_) => {
            return Err(ServeError::NotBuilt {
                what: "the ec2 provider",
                feature: "ec2",
            });
        }
    };
    let mut identity = tls_identity::ServerIdentity::new(&config, listen);
    let mut agent_url = config.advertise_url.clone();
    let gateway = provider.prepare().await?;
    let service_gateway = gateway.is_some();
    let host_listener = match gateway {
        // A listener on every address already covers the gateway.
        Some(gateway) if !listen.ip().is_unspecified() => {
            let at = std::net::SocketAddr::new(gateway, listen.port());
            let host_listener = TcpListener::bind(at)
                .await
                .map_err(|source| ServeError::HostListener { addr: at, source })?;
            let bound = host_listener
                .local_addr()
                .map_err(|source| ServeError::HostListener { addr: at, source })?;
            agent_url = format!("https://{bound}");
            identity.add_ip(gateway);
            info!(listen = %bound, "serving hosts on the provider's gateway");
            Some(host_listener)
        }
        Some(gateway) => {
            agent_url = format!(
                "https://{}",
                std::net::SocketAddr::new(gateway, listen.port())
            );
            identity.add_ip(gateway);
            None
        }
        None => None,
    };
    let slot = identity.issue(&pki)?;
    let ca = pki.ca_pem().to_owned();
    let agent_tls = orca_proto::tls::client_config(&ca, Some(slot.clone()))?;
    let server_tls =
        orca_proto::tls::server_config(slot.clone(), &ca, orca_proto::tls::ClientAuth::Optional)?;

    // Bound before anything starts, so a taken port fails the start cleanly.
    metrics::remove_addr(&data);
    let metrics_listener = match config.metrics_listen {
        Some(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::MetricsListener { addr, source })?;
            let bound = listener
                .local_addr()
                .and_then(|bound| metrics::write_addr(&data, bound).map(|()| bound))
                .map_err(|source| ServeError::MetricsListener { addr, source })?;
            info!(listen = %bound, addr_file = %data.join(metrics::ADDR_FILE).display(), "metrics serving (HTTP)");
            Some(listener)
        }
        None => None,
    };
    let cluster = Cluster::new(config, store.clone(), provider, pki, agent_tls, agent_url);
    let services = match (&cluster.shared().config().provider, service_gateway) {
        (Provider::Local(local), true) if cluster.shared().config().kubernetes.is_none() => {
            let services = std::sync::Arc::new(services::manager::Services::new(
                local.network.bridge.clone(),
                local.network.cidr,
            ));
            cluster.set_services(services.clone());
            let dns_socket = services.bind_dns(cluster.shared().config().dns_port).await;
            Some((services, dns_socket))
        }
        _ => None,
    };
    let sealer = objects::sealing::Sealer::open_or_create(&data)?;
    cluster.set_sealer(std::sync::Arc::new(sealer));

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let scheduler = {
        let cluster = cluster.clone();
        let stop = stopped(stop_rx.clone());
        tokio::spawn(async move { cluster.scheduler().run_scheduler(stop).await })
    };
    let workloads = cluster.shared().config().kubernetes.is_none().then(|| {
        let (scaler, scaler_stop) = (cluster.clone(), stopped(stop_rx.clone()));
        let autoscaling =
            tokio::spawn(async move { scaler.autoscaler().run_autoscaling(scaler_stop).await });
        let cluster = cluster.clone();
        let stop = stopped(stop_rx.clone());
        let controllers =
            tokio::spawn(async move { cluster.workloads().run_workloads(stop).await });
        [controllers, autoscaling]
    });
    let services = services.map(|(services, dns_socket)| {
        let cluster = cluster.clone();
        let stop = stopped(stop_rx.clone());
        tokio::spawn(async move {
            services::manager::run_services(cluster.shared().clone(), services, dns_socket, stop)
                .await
        })
    });
    let budgets = (!cluster.shared().config().budgets.is_empty()).then(|| {
        let cluster = cluster.clone();
        let stop = stopped(stop_rx.clone());
        tokio::spawn(async move { cluster.caps().run_budgets(stop).await })
    });
    let kubernetes: Vec<tokio::task::JoinHandle<()>> = match &cluster.shared().config().kubernetes {
        #[cfg(feature = "kubernetes")]
        Some(k) => vk::start(&cluster, k, stop_rx.clone()).await?,
        #[cfg(not(feature = "kubernetes"))]
        Some(_) => {
            return Err(ServeError::NotBuilt {
                what: "Kubernetes mode",
                feature: "kubernetes",
            });
        }
        None => Vec::new(),
    };
    let rotation = {
        let cluster = cluster.clone();
        let stop = stopped(stop_rx.clone());
        tokio::spawn(async move { identity.rotate(&cluster, slot, stop).await })
    };
    let metrics = metrics_listener.map(|listener| {
        let exporter = metrics::Exporter::new(cluster.clone());
        tokio::spawn(metrics::serve(exporter, listener, stop_rx.clone()))
    });

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<AdminServiceServer<api::admin::AdminApi>>()
        .await;
    health
        .set_serving::<NodeServiceServer<api::node::NodeApi>>()
        .await;
    info!(listen = %listen, data_dir = %data.display(), "control plane serving (TLS)");
    let result = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(orca_proto::serving::reflection_v1(SERVICES))
        .add_service(orca_proto::serving::reflection_v1alpha(SERVICES))
        .add_service(AdminServiceServer::with_interceptor(
            api::admin::AdminApi::new(cluster.clone()),
            api::admin_auth(cluster.clone()),
        ))
        .add_service(NodeServiceServer::new(api::node::NodeApi::new(
            cluster.clone(),
        )))
        .serve_with_incoming_shutdown(
            orca_proto::tls::incoming(
                std::iter::once(listener).chain(host_listener).collect(),
                server_tls,
            ),
            shutdown,
        )
        .await
        .map_err(ServeError::Serve);
    let _ = stop_tx.send(true);
    let _ = scheduler.await;
    if let Some(budgets) = budgets {
        let _ = budgets.await;
    }
    for task in workloads.into_iter().flatten() {
        let _ = task.await;
    }
    if let Some(services) = services {
        let _ = services.await;
    }
    let _ = rotation.await;
    if let Some(metrics) = metrics {
        let _ = metrics.await;
        metrics::remove_addr(&data);
    }
    for task in kubernetes {
        let _ = task.await;
    }
    store.flush().await?;
    info!("control plane stopped; state flushed");
    result
}
