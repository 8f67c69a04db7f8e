//! Instance providers: where nodes come from.
//!
//! [`InstanceProvider`] lists only what the control plane asks of a cloud:
//! prepare its network, launch an instance that will join with a given token,
//! terminate it, and (for tests and drills) inject faults into it.
//! [`local::LocalProvider`] runs every node as a simulated host on this machine:
//! an `orca-agent` process in its own network namespace with its own address on
//! a bridge ([`netns`], [`cidr`]), or a plain process where namespaces are not
//! available. [`ec2`] holds the EC2 provider's seam to AWS as far as it is built
//! (the client and the instance-type catalogue); the provider itself is issue 7.

pub mod cidr;
pub mod ec2;
pub mod local;
pub mod netns;

use std::future::Future;
use std::net::IpAddr;
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
    /// The provider's network could not be prepared.
    #[error("cannot prepare the provider's network: {reason}")]
    Prepare {
        /// Why.
        reason: String,
    },
    /// A fault could not be injected.
    #[error("cannot inject {fault:?} into instance {instance_id}: {reason}")]
    Fault {
        /// Instance id.
        instance_id: String,
        /// The fault.
        fault: Fault,
        /// Why.
        reason: String,
    },
    /// The provider does not offer this operation.
    #[error("the {provider} provider does not support {what}")]
    Unsupported {
        /// Provider name.
        provider: &'static str,
        /// The operation.
        what: &'static str,
    },
}

/// A fault injected into an instance, as the world does to real ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The agent dies (SIGKILL); the instance and its containers keep running.
    KillAgent,
    /// The instance loses its network: nothing reaches it, it reaches nothing,
    /// and it cannot be terminated until healed.
    Partition,
    /// Ends a partition.
    Heal,
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

/// A launched instance.
#[derive(Debug, Clone)]
pub struct Instance {
    /// Provider's id for it.
    pub instance_id: String,
}

/// A boxed future, for object-safe async trait methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Launches and terminates the instances nodes run on. Optional operations
/// (faults) default to [`ProviderError::Unsupported`].
pub trait InstanceProvider: Send + Sync {
    /// The provider's name (`local`, `ec2`).
    fn name(&self) -> &'static str;
    /// Prepares what instances need before any is launched (the local provider's
    /// bridge) and returns the address instances reach this machine at, where
    /// that is not the control plane's own listen address; `None` otherwise.
    fn prepare(&self) -> BoxFuture<'_, Result<Option<IpAddr>, ProviderError>> {
        Box::pin(async { Ok(None) })
    }
    /// A remark that holds for every instance this provider launches (e.g. that
    /// simulated hosts share the machine's network), shown as the node's message.
    fn note(&self) -> Option<String> {
        None
    }
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
                what: "fault injection",
            })
        })
    }
}
