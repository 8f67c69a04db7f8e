//! The gRPC servers: [`admin`] (users, through `orca`) and [`node`] (agents).
//! Handlers validate, call the [`Cluster`](crate::cluster::Cluster), and convert
//! errors to gRPC codes in [`status`], one exhaustive `match`.

pub mod admin;
pub mod node;

use crate::backup::BackupError;
use crate::cluster::{Cluster, ClusterError};

/// Checks the admin bearer token (`authorization: Bearer <token>`) of every
/// AdminService call.
pub fn admin_auth(cluster: Cluster) -> impl tonic::service::Interceptor + Clone {
    move |req: tonic::Request<()>| {
        let token = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match token.map(|t| cluster.auth().authenticate(t)) {
            Some(Some(caller)) => {
                let mut req = req;
                req.extensions_mut().insert(caller);
                Ok(req)
            }
            Some(None) => Err(tonic::Status::unauthenticated(
                "the token is not valid (not the admin token, nor a named token that exists)",
            )),
            None => Err(tonic::Status::unauthenticated(
                "a token is required (authorization: Bearer <token>; the orca CLI reads it from its credentials file)",
            )),
        }
    }
}

/// Maps a cluster error to a gRPC status.
pub fn status(e: ClusterError) -> tonic::Status {
    let msg = e.to_string();
    match e {
        ClusterError::Store(_) => tonic::Status::internal(msg),
        ClusterError::Provider(_) => tonic::Status::unavailable(msg),
        ClusterError::NotFound { .. } => tonic::Status::not_found(msg),
        ClusterError::AlreadyExists { .. } => tonic::Status::already_exists(msg),
        ClusterError::Invalid(_) => tonic::Status::invalid_argument(msg),
        ClusterError::JoinRefused(_) => tonic::Status::permission_denied(msg),
        ClusterError::Unauthenticated(_) => tonic::Status::unauthenticated(msg),
        ClusterError::PermissionDenied(_) => tonic::Status::permission_denied(msg),
        ClusterError::ResourceExhausted(_) => tonic::Status::resource_exhausted(msg),
        ClusterError::FailedPrecondition(_) | ClusterError::Unresolved(_) => {
            tonic::Status::failed_precondition(msg)
        }
        ClusterError::Agent { node, status } => {
            let code = match status.code() {
                tonic::Code::NotFound
                | tonic::Code::InvalidArgument
                | tonic::Code::FailedPrecondition
                | tonic::Code::Unimplemented => status.code(),
                _ => tonic::Code::Unavailable,
            };
            tonic::Status::new(code, format!("node {node}: {}", status.message()))
        }
    }
}

/// Maps a backup error to a gRPC status: each is the server's own failure.
pub fn backup_status(e: BackupError) -> tonic::Status {
    let msg = e.to_string();
    match e {
        BackupError::Store(_) | BackupError::ReadFile { .. } | BackupError::Archive(_) => {
            tonic::Status::internal(msg)
        }
    }
}
