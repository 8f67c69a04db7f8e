//! The labels and annotations ORCA sets and reads: on the nodes it launches
//! (read back by the ledger, recovery and the CLI), on Deployments' ReplicaSets,
//! and on Services.

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

/// The label telling a Deployment template's pods (and ReplicaSet) apart.
pub const TEMPLATE_HASH: &str = "pod-template-hash";
/// A ReplicaSet's (and its Deployment's) revision.
pub const REVISION: &str = "deployment.kubernetes.io/revision";
/// The annotation choosing a Service's load-balancing algorithm.
pub const LB_ALGORITHM: &str = "orca.research/lb-algorithm";

/// A ReplicaSet's revision, from its manifest's [`REVISION`] annotation (0
/// when it has none).
pub fn revision(manifest: &serde_json::Value) -> i64 {
    manifest["metadata"]["annotations"][REVISION]
        .as_str()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}
