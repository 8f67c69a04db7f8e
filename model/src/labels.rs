//! The node labels ORCA sets on the nodes it launches (read back by the
//! ledger, recovery and the CLI).

/// Node label: the uid of the pod the node's instance was launched for.
pub const LABEL_POD_UID: &str = "orca.research/pod-uid";
/// Node label: the launch attempt.
pub const LABEL_ATTEMPT: &str = "orca.research/attempt";
/// Node label: the instance type (Kubernetes' well-known label).
pub const LABEL_INSTANCE_TYPE: &str = "node.kubernetes.io/instance-type";
/// Node label: `on-demand` or `spot`.
pub const LABEL_CAPACITY_TYPE: &str = "orca.research/capacity-type";
/// Node label: the subnet, when one was chosen.
pub const LABEL_SUBNET: &str = "orca.research/subnet";
/// Node label: the availability zone (Kubernetes' well-known label).
pub const LABEL_ZONE: &str = "topology.kubernetes.io/zone";
/// Node label: the AMI the instance boots.
pub const LABEL_AMI: &str = "orca.research/ami";
/// Node label: the price the instance was launched at, USD per hour.
pub const LABEL_PRICE: &str = "orca.research/usd-per-hour";
/// Node label: the Capacity Reservation (or Block) the instance runs in.
pub const LABEL_RESERVATION: &str = "orca.research/capacity-reservation";
