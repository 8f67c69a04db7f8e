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
    /// The provider cannot do this.
    #[error("the {provider} provider cannot {what}")]
    Unsupported {
        /// Provider name.
        provider: &'static str,
        /// What was asked.
        what: &'static str,
    },
    /// The fault could not be injected.
    #[error("cannot inject the fault into {instance_id}: {reason}")]
    Fault {
        /// Instance id.
        instance_id: String,
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
    /// PEM of the cluster CA: the agent verifies the control plane with it.
    pub ca_pem: String,
    /// Size asked for (zero fields: the provider's default).
    pub size: orca_proto::types::v1::Resources,
}

/// A failure injected into a host, to rehearse recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Kill the host's agent; its containers keep running.
    KillAgent,
    /// Cut the host's network; the provider cannot fence it meanwhile.
    Partition,
    /// Undo a partition.
    Heal,
}

/// A launched instance.
#[derive(Debug, Clone)]
pub struct Instance {
    /// Provider's id for it.
    pub instance_id: String,
    /// Anything the operator should know about it (empty when nothing).
    pub note: String,
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
    /// This is also how a lost node is fenced: after Ok nothing of it runs.
    fn terminate(&self, instance_id: &str) -> BoxFuture<'_, Result<(), ProviderError>>;
    /// Injects a failure (simulated hosts only).
    fn fault(&self, instance_id: &str, fault: Fault) -> BoxFuture<'_, Result<(), ProviderError>> {
        let _ = (instance_id, fault);
        let provider = self.name();
        Box::pin(async move {
            Err(ProviderError::Unsupported {
                provider,
                what: "inject faults",
            })
        })
    }
}
