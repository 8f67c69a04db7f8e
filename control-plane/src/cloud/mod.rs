//! Instance providers: where nodes come from.
//!
//! [`InstanceProvider`] lists only what the control plane asks of a cloud:
//! prepare its network, launch an instance that will join with a given token,
//! terminate it, and (for tests and drills) inject faults into it.
//! [`local::LocalProvider`] runs every node as a simulated host on this machine:
//! an `orca-agent` process in its own network namespace with its own address on
//! a bridge ([`netns`], [`cidr`]), or a plain process where namespaces are not
//! available. [`ec2::Ec2Provider`] launches one EC2 instance per pod
//! ([`InstanceProvider::dedicated`]): it plans the offerings a pod may get
//! ([`InstanceProvider::plan`]), makes one RunInstances per [`launch`], confirms
//! terminations, and lists the cluster's tagged instances for the sweep. What to
//! do between calls (fallback, avoidance, back-off, caps, boot timeout,
//! adoption) is the control plane's [`crate::provisioning`].
//!
//! [`launch`]: InstanceProvider::launch

pub mod cidr;
#[cfg(feature = "ec2")]
pub mod ec2;
pub mod local;
pub mod netns;

use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

pub use orca_model::selection::CapacityType;
use orca_model::selection::{LaunchAnnotations, Needs};

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
        /// The cloud's error code, when the cloud refused the launch with one
        /// (EC2's `InsufficientInstanceCapacity`, `VcpuLimitExceeded`, ...).
        code: Option<String>,
        /// What it means for the next try.
        failure: LaunchFailure,
    },
    /// No offering can run the pod (its annotations, its needs, the config).
    #[error("{reason}")]
    Unplaceable {
        /// Machine-readable reason (`InvalidAnnotation`, `NoInstanceType`,
        /// `InvalidLaunchResource`).
        code: &'static str,
        /// Why.
        reason: String,
    },
    /// The cloud could not be asked.
    #[error("{0}")]
    Api(String),
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
    /// The operation cannot be done now (a volume attached elsewhere, still
    /// detaching); it may be later.
    #[error("{0}")]
    NotNow(String),
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
    /// The instance's metadata announces a spot interruption this far ahead
    /// (EC2 gives two minutes), and the instance is reclaimed then.
    SpotNotice(std::time::Duration),
}

/// What a failed launch means for the next try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaunchFailure {
    /// No capacity for this offering now: try the next, avoid this one a while.
    Capacity,
    /// An account limit: other offerings may still go.
    Limit,
    /// Throttled: the same call again after a back-off.
    Throttled,
    /// No answer: the same call again (the same idempotency token).
    Transient,
    /// Anything else: this pod cannot be launched this way.
    Fatal,
}

/// Where and how one instance is launched: an instance type in a subnet (hence
/// an availability zone) with a capacity type. An offering that met a capacity
/// error is avoided for a while.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Offering {
    /// Instance type.
    pub instance_type: String,
    /// Subnet; the default one when `None`.
    pub subnet: Option<String>,
    /// On-demand or spot.
    pub capacity: CapacityType,
}

impl fmt::Display for Offering {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let capacity = match self.capacity {
            CapacityType::OnDemand => "on-demand",
            CapacityType::Spot => "spot",
        };
        match &self.subnet {
            Some(s) => write!(f, "{} {capacity} in {s}", self.instance_type),
            None => write!(f, "{} {capacity}", self.instance_type),
        }
    }
}

/// An offering a pod may get, with what it costs and holds.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedOffering {
    /// The offering.
    pub offering: Offering,
    /// USD per hour, when known.
    pub usd_per_hour: Option<f64>,
    /// Its size: vCPUs (as millis), memory, GPUs.
    pub size: orca_proto::types::v1::Resources,
}

/// What a pod may get, best first, and why (for its Event).
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Offerings, best first.
    pub offerings: Vec<PlannedOffering>,
    /// How they were chosen.
    pub reason: String,
}

/// The pod a dedicated instance is launched for.
#[derive(Debug, Clone)]
pub struct PodLaunch {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Uid of this incarnation.
    pub uid: String,
    /// The launch attempt (with the uid, the idempotency token).
    pub attempt: u32,
    /// Where and how.
    pub offering: Offering,
    /// The pod's launch annotations (spot cap, reservation, AMI).
    pub annotations: LaunchAnnotations,
}

/// An instance of this cluster as the cloud lists it, with its tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaggedInstance {
    /// Instance id.
    pub instance_id: String,
    /// The node it was launched as.
    pub node: String,
    /// The pod uid it was launched for.
    pub pod_uid: String,
    /// The launch attempt.
    pub attempt: u32,
    /// Its state (`pending`, `running`, ...).
    pub state: String,
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
    /// The pod, for providers with an instance per pod.
    pub pod: Option<PodLaunch>,
}

/// A launched instance.
#[derive(Debug, Clone)]
pub struct Instance {
    /// Provider's id for it.
    pub instance_id: String,
    /// Its availability zone, when the provider has zones.
    pub zone: Option<String>,
    /// The machine image it boots, when the provider has images.
    pub image_id: Option<String>,
    /// The Capacity Reservation (or Capacity Block) it runs in, if any.
    pub capacity_reservation_id: Option<String>,
}

/// A Capacity Reservation or Capacity Block as the cloud describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservationInfo {
    /// `cr-...`.
    pub id: String,
    /// A Capacity Block (EC2 reclaims its instances before its end) rather than
    /// an On-Demand Capacity Reservation (its instances outlive it).
    pub capacity_block: bool,
    /// When it ends; `None` for an unlimited reservation.
    pub end: Option<jiff::Timestamp>,
    /// `active`, `expired`, `cancelled`, ...
    pub state: String,
}

/// A boxed future, for object-safe async trait methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a provider may launch, as a Node advertises it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Offered {
    /// Instance families (`g5`, `p4d`).
    pub families: std::collections::BTreeSet<String>,
    /// GPU models (`A10G`, `A100`).
    pub gpu_models: std::collections::BTreeSet<String>,
}

/// An EBS volume as the cloud describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInfo {
    /// `vol-...`.
    pub volume_id: String,
    /// Its availability zone.
    pub zone: String,
    /// `creating`, `available`, `in-use`, ...
    pub state: String,
    /// The instance it is attached to, if any.
    pub attached_to: Option<String>,
}

/// A volume to create for a claim.
#[derive(Debug, Clone)]
pub struct NewVolume {
    /// Availability zone.
    pub zone: String,
    /// Size in GiB.
    pub size_gib: i32,
    /// EBS volume type.
    pub volume_type: String,
    /// The claim, `namespace/name`, and its uid (tags; the uid also makes the
    /// request idempotent).
    pub claim: String,
    /// The claim's uid.
    pub claim_uid: String,
}

/// Launches and terminates the instances nodes run on. Optional operations
/// (faults, volumes) default to [`ProviderError::Unsupported`].
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
    /// Whether every pod gets an instance of its own (planned, launched and
    /// terminated with it) rather than a place on a shared node.
    fn dedicated(&self) -> bool {
        false
    }
    /// The offerings a pod with `needs` and `annotations` may get, best first.
    fn plan<'a>(
        &'a self,
        needs: &'a Needs,
        annotations: &'a LaunchAnnotations,
    ) -> BoxFuture<'a, Result<Plan, ProviderError>> {
        let _ = (needs, annotations);
        let provider = self.name();
        Box::pin(async move {
            Err(ProviderError::Unsupported {
                provider,
                what: "planning",
            })
        })
    }
    /// The cluster's instances as the cloud lists them (not yet terminated).
    fn instances(&self) -> BoxFuture<'_, Result<Vec<TaggedInstance>, ProviderError>> {
        let provider = self.name();
        Box::pin(async move {
            Err(ProviderError::Unsupported {
                provider,
                what: "listing instances",
            })
        })
    }
    /// The instance families and GPU models this provider may launch (what a
    /// Kubernetes Node standing for it advertises as labels); empty when it
    /// launches no typed instances.
    fn offered(&self) -> BoxFuture<'_, Offered> {
        Box::pin(async { Offered::default() })
    }
    /// Launches an instance whose agent will join with the request's token.
    fn launch(&self, req: LaunchRequest) -> BoxFuture<'_, Result<Instance, ProviderError>>;
    /// Terminates an instance; an instance that is already gone is not an error.
    /// This is also how a lost node is fenced: after Ok nothing of it runs.
    fn terminate(&self, instance_id: &str) -> BoxFuture<'_, Result<(), ProviderError>>;
    /// The directory of `node`'s host where local persistent volumes live, for
    /// providers whose hosts share this machine's filesystem; `None` otherwise.
    fn local_volumes_dir(&self, node: &str) -> Option<std::path::PathBuf> {
        let _ = node;
        None
    }
    /// Describes an EBS volume.
    fn volume<'a>(
        &'a self,
        volume_id: &'a str,
    ) -> BoxFuture<'a, Result<VolumeInfo, ProviderError>> {
        let _ = volume_id;
        unsupported(self.name(), "volumes")
    }
    /// The availability zone of a subnet (`None`: EC2's default subnet).
    fn subnet_zone<'a>(
        &'a self,
        subnet: Option<&'a str>,
    ) -> BoxFuture<'a, Result<String, ProviderError>> {
        let _ = subnet;
        unsupported(self.name(), "volumes")
    }
    /// The plan's offerings in availability zone `zone` (a volume's): an
    /// offering in EC2's default subnet gets that zone's default subnet.
    fn in_zone<'a>(
        &'a self,
        plan: Plan,
        zone: &'a str,
    ) -> BoxFuture<'a, Result<Plan, ProviderError>> {
        let _ = (plan, zone);
        unsupported(self.name(), "volumes")
    }
    /// Creates an EBS volume and waits until it is `available`.
    fn create_volume(&self, req: NewVolume) -> BoxFuture<'_, Result<VolumeInfo, ProviderError>> {
        let _ = req;
        unsupported(self.name(), "volumes")
    }
    /// Attaches a volume to an instance as its `index`th data volume (repeated
    /// while the instance is not yet running).
    fn attach_volume<'a>(
        &'a self,
        volume_id: &'a str,
        instance_id: &'a str,
        index: usize,
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        let _ = (volume_id, instance_id, index);
        unsupported(self.name(), "volumes")
    }
    /// Detaches every volume ORCA attached to an instance and waits until each
    /// is `available` (or the detach timeout passes).
    fn detach_volumes<'a>(
        &'a self,
        instance_id: &'a str,
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        let _ = instance_id;
        Box::pin(async { Ok(()) })
    }
    /// Deletes a volume; one already gone is not an error.
    fn delete_volume<'a>(&'a self, volume_id: &'a str) -> BoxFuture<'a, Result<(), ProviderError>> {
        let _ = volume_id;
        unsupported(self.name(), "volumes")
    }
    /// Stops an instance, keeping its volumes (warm pool; EC2 only).
    fn stop(&self, instance_id: &str) -> BoxFuture<'_, Result<(), ProviderError>> {
        let _ = instance_id;
        unsupported(self.name(), "stopping instances")
    }
    /// How the Capacity Reservations `ids` stand (EC2 only).
    fn reservations<'a>(
        &'a self,
        ids: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<ReservationInfo>, ProviderError>> {
        let _ = ids;
        unsupported(self.name(), "capacity reservations")
    }
    /// Starts a stopped instance (warm pool; EC2 only).
    fn start(&self, instance_id: &str) -> BoxFuture<'_, Result<(), ProviderError>> {
        let _ = instance_id;
        unsupported(self.name(), "starting instances")
    }
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

fn unsupported<T: Send + 'static>(
    provider: &'static str,
    what: &'static str,
) -> BoxFuture<'static, Result<T, ProviderError>> {
    Box::pin(async move { Err(ProviderError::Unsupported { provider, what }) })
}
