//! ORCA's wire contract, generated from the `.proto` files beside this crate.
//!
//! The proto files are the API reference: every service, RPC, message and field
//! carries a doc comment, which `grpcurl describe` shows through server
//! reflection ([`FILE_DESCRIPTOR_SET`]).
//!
//! - [`agent::v1`]: `orca.agent.v1.AgentService`, served by every node agent and
//!   called by the control plane.
//! - [`controlplane::v1`]: `orca.controlplane.v1.NodeService` (agents join and
//!   heartbeat) and `orca.controlplane.v1.AdminService` (users, through `orca`).
//! - [`types::v1`]: pods and the statuses agents observe, shared by both.
//!
//! Besides the generated code, it holds what every ORCA process needs at the
//! transport edge: [`serving`] (reflection, health), [`accept`] (the accept
//! loop and TLS handshake timeout of every listener), [`tls`] (mutual TLS),
//! [`boot`] (the user data an instance boots from), [`credentials`] (the
//! `orca` CLI's credentials file, which the control plane writes) and [`process`]. Domain
//! types and decisions live in `orca-model` and the crates that own them.
//!
//! Feature `grpc` (default): the services, TLS and process helpers. Without it
//! the crate is the messages alone (prost; no tonic, no tokio).

#![allow(
    missing_docs,
    clippy::large_enum_variant,
    clippy::doc_lazy_continuation
)]

/// Shared types: pods, statuses, resources, GPU samples.
pub mod types {
    /// Version 1.
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/orca.types.v1.rs"));
    }
}

/// The node agent's service.
pub mod agent {
    /// Version 1.
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/orca.agent.v1.rs"));
    }
}

/// The control plane's services.
pub mod controlplane {
    /// Version 1.
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/orca.controlplane.v1.rs"));
    }
}

/// Encoded `FileDescriptorSet` of every ORCA proto, with source info (doc comments),
/// for tonic-reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/orca_descriptor.bin"));

/// The gRPC services every ORCA daemon serves beside its own: server reflection
/// (v1, and v1alpha because grpcurl 1.8.6 asks only for v1alpha) over every ORCA
/// proto and grpc.health.v1, so that `grpcurl -plaintext ADDR list` shows all.
#[cfg(feature = "grpc")]
pub mod serving {
    use tonic_reflection::server::Builder;

    /// The services every daemon serves beside its own.
    const COMMON: &[&str] = &[
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ];

    /// Reflection over every ORCA type, listing only `services` (the daemon's own)
    /// and the common ones: the control plane does not claim to serve AgentService.
    fn builder(services: &[&str]) -> Builder<'static> {
        let mut builder = Builder::configure()
            .register_encoded_file_descriptor_set(crate::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
        for name in services.iter().chain(COMMON) {
            builder = builder.with_service_name(*name);
        }
        builder
    }

    /// `grpc.reflection.v1.ServerReflection` for a daemon serving `services`.
    pub fn reflection_v1(
        services: &[&str],
    ) -> tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    > {
        builder(services).build_v1().expect(
            "the embedded descriptor sets are valid: they were produced by protoc at build time",
        )
    }

    /// `grpc.reflection.v1alpha.ServerReflection` for a daemon serving `services`.
    pub fn reflection_v1alpha(
        services: &[&str],
    ) -> tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    > {
        builder(services).build_v1alpha().expect(
            "the embedded descriptor sets are valid: they were produced by protoc at build time",
        )
    }
}

/// The reason of a pod its agent stopped because the host was cut off from
/// the control plane for its `stop_pods_after` (HeartbeatResponse) and the pod
/// may be replaced without a fence (`orca.research/on-node-lost: replace`): the
/// control plane may already be replacing it elsewhere, so it must not run on.
pub const NODE_CUT_OFF: &str = "NodeCutOff";

#[cfg(feature = "grpc")]
pub mod accept;
pub mod boot;
#[cfg(feature = "grpc")]
pub mod credentials;
#[cfg(feature = "grpc")]
pub mod tls;

/// Process conventions shared by the ORCA daemons' thin `main`s.
#[cfg(feature = "grpc")]
pub mod process {
    /// Logs to stderr with `RUST_LOG` filtering (default `info`).
    pub fn init_tracing() {
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "info,h2=warn,tower=warn,hyper=warn".into()),
            )
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .init();
    }

    /// Resolves on the first SIGINT or SIGTERM.
    pub async fn shutdown_signal() {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("shutdown signal received; draining");
    }
}
