//! Instance providers: where nodes come from.
//!
//! [`InstanceProvider`] lists only what the control plane asks of a cloud:
//! launch an instance that will join with a given token, and terminate it.
//! [`local::LocalProvider`] runs every node as an `orca-agent` process on this
//! machine (a simulated host); the EC2 provider comes with its own issue.

pub mod local;

use std::future::Future;
use std::pin::Pin;

/// Errors of instance providers.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The instance could not be launched.
    #[error("cannot launch node {node}: {reason}")]
    Launch {
        /// Node name.
        node: String,
        /// Why.
        reason: String,
    },
    /// The instance could not be terminated.
    #[error("cannot terminate instance {instance_id}: {reason}")]
    Terminate {
        /// Instance id.
        instance_id: String,
        /// Why.
        reason: String,
    },
}

/// What a new instance needs to join the cluster.
#[derive(Debug, Clone)]
pub struct LaunchRequest {
    /// Node name (the token is bound to it).
    pub node_name: String,
    /// Single-use join token.
    pub join_token: String,
    /// URL the agent dials to join.
    pub control_plane_url: String,
}

/// A launched instance.
#[derive(Debug, Clone)]
pub struct Instance {
    /// Provider's id for it.
    pub instance_id: String,
}

/// A boxed future, for object-safe async trait methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Launches and terminates the instances nodes run on.
pub trait InstanceProvider: Send + Sync {
    /// The provider's name (`local`, `ec2`).
    fn name(&self) -> &'static str;
    /// Launches an instance whose agent will join with the request's token.
    fn launch(&self, req: LaunchRequest) -> BoxFuture<'_, Result<Instance, ProviderError>>;
    /// Terminates an instance; an instance that is already gone is not an error.
    fn terminate(&self, instance_id: &str) -> BoxFuture<'_, Result<(), ProviderError>>;
}
