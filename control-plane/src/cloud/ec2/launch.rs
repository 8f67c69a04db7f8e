//! RunInstances for one node: the request (instance type, AMI, subnet, security
//! groups, instance profile, capacity type and spot cap, Capacity Reservation,
//! tags, user data, ClientToken) and what EC2's answer means for the caller.
//!
//! The ClientToken is derived from the pod uid and a launch attempt number the
//! caller persists: a retried call (a lost answer, a restart) carries the same
//! token and EC2 answers with the instance already made; a deliberate relaunch
//! takes the next attempt. The SDK makes one attempt per call (its standard
//! retry would repeat a 500 InsufficientInstanceCapacity three times before the
//! next candidate type could be tried); retrying is the caller's decision,
//! guided by [`LaunchError`].

use aws_sdk_ec2::config::retry::RetryConfig;
use aws_sdk_ec2::error::ProvideErrorMetadata as _;
use aws_sdk_ec2::types::{
    CapacityReservationPreference, CapacityReservationSpecification, CapacityReservationTarget,
    HttpTokensState, IamInstanceProfileSpecification, InstanceInterruptionBehavior,
    InstanceMarketOptionsRequest, InstanceMetadataEndpointState, InstanceMetadataOptionsRequest,
    MarketType, ResourceType, ShutdownBehavior, SpotInstanceType, SpotMarketOptions, Tag,
    TagSpecification,
};
use base64::Engine as _;

use orca_model::selection::CapacityType;
use orca_model::selection::annotations::InstanceProfile;

/// Tag on every instance: the cluster it belongs to.
pub const TAG_CLUSTER: &str = "orca.research/cluster";
/// Tag: the node name.
pub const TAG_NODE: &str = "orca.research/node";
/// Tag: `namespace/name` of the pod the instance was launched for.
pub const TAG_POD: &str = "orca.research/pod";
/// Tag: that pod's uid.
pub const TAG_POD_UID: &str = "orca.research/pod-uid";
/// Tag: the launch attempt.
pub const TAG_ATTEMPT: &str = "orca.research/attempt";

/// How an instance may use Capacity Reservations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    /// Launch into this reservation only.
    Target(String),
    /// Use a matching open reservation if there is one (EC2's default).
    Open,
    /// Use none.
    None,
}

/// The pod an instance is launched for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Uid.
    pub uid: String,
}

/// Everything one RunInstances needs.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    /// The cluster's name (tagged, so instances can be found again).
    pub cluster: String,
    /// The node the instance becomes.
    pub node_name: String,
    /// The pod it is for.
    pub pod: PodRef,
    /// The launch attempt for this pod (part of the ClientToken).
    pub attempt: u32,
    /// The instance type.
    pub instance_type: String,
    /// The AMI.
    pub ami: String,
    /// The subnet; EC2's default subnet when `None`.
    pub subnet_id: Option<String>,
    /// Security groups, in this order; the subnet's default when empty.
    pub security_groups: Vec<String>,
    /// The instance profile (by name or ARN, as given); none when `None`.
    pub iam_instance_profile: Option<InstanceProfile>,
    /// On-demand or spot.
    pub capacity_type: CapacityType,
    /// The spot price cap, USD per hour (spot only).
    pub max_spot_price: Option<f64>,
    /// Capacity Reservation use; EC2's default (open) when `None`.
    pub reservation: Option<Reservation>,
    /// The user data, as is (it is base64-encoded here).
    pub user_data: String,
}

/// The ClientToken of a pod's launch attempt (EC2 allows 64 ASCII characters).
pub fn client_token(pod_uid: &str, attempt: u32) -> String {
    let uid: String = pod_uid
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(48)
        .collect();
    format!("orca-{uid}-{attempt}")
}

/// A launched instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launched {
    /// Its id.
    pub instance_id: String,
    /// Its private address, when EC2 gave one.
    pub private_ip: Option<String>,
    /// Its availability zone.
    pub zone: Option<String>,
    /// Its AMI.
    pub image_id: Option<String>,
    /// The Capacity Reservation it was placed in, if any.
    pub capacity_reservation_id: Option<String>,
}

/// What a failed launch means to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LaunchError {
    /// No capacity for this offering now (InsufficientInstanceCapacity,
    /// SpotMaxPriceTooLow, ...): try the next candidate and avoid this one a while.
    #[error("{code}: {message}")]
    Capacity {
        /// EC2's error code.
        code: String,
        /// EC2's message.
        message: String,
    },
    /// An account limit (InstanceLimitExceeded, VcpuLimitExceeded, ...): other
    /// types may still go.
    #[error("{code}: {message}")]
    Limit {
        /// EC2's error code.
        code: String,
        /// EC2's message.
        message: String,
    },
    /// Throttled (RequestLimitExceeded): retry the same call after a back-off.
    #[error("throttled: {0}")]
    Throttled(String),
    /// No answer (a network failure, a timeout): retry the same call, with the
    /// same ClientToken, which cannot make a second instance.
    #[error("no answer from EC2: {0}")]
    Transient(String),
    /// Anything else: the pod cannot be launched this way.
    #[error("{code}: {message}")]
    Failed {
        /// EC2's error code.
        code: String,
        /// EC2's message.
        message: String,
    },
}

impl LaunchError {
    /// EC2's error code, where EC2 answered with one that ORCA keeps
    /// (throttling and unanswered calls are classes, not codes).
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Capacity { code, .. } | Self::Limit { code, .. } | Self::Failed { code, .. } => {
                Some(code)
            }
            Self::Throttled(_) | Self::Transient(_) => None,
        }
    }

    /// Classifies EC2's error `code`.
    pub fn from_code(code: &str, message: &str) -> Self {
        let (code, message) = (code.to_owned(), message.to_owned());
        match code.as_str() {
            "InsufficientInstanceCapacity"
            | "InsufficientCapacity"
            | "InsufficientHostCapacity"
            | "SpotMaxPriceTooLow"
            | "MaxSpotInstanceCountExceeded"
            | "Unsupported"
            | "UnfulfillableCapacity"
            | "ReservationCapacityExceeded" => Self::Capacity { code, message },
            "InstanceLimitExceeded" | "VcpuLimitExceeded" | "MaxSpotFleetRequestCountExceeded" => {
                Self::Limit { code, message }
            }
            "RequestLimitExceeded" | "Throttling" | "ThrottlingException" => {
                Self::Throttled(message)
            }
            "InternalError" | "ServiceUnavailable" | "Unavailable" => Self::Transient(message),
            _ => Self::Failed { code, message },
        }
    }
}

/// Launches one instance as `spec` says.
pub async fn run_instance(
    client: &aws_sdk_ec2::Client,
    spec: &LaunchSpec,
) -> Result<Launched, LaunchError> {
    let tags = [
        ("Name", spec.node_name.clone()),
        (TAG_CLUSTER, spec.cluster.clone()),
        (TAG_NODE, spec.node_name.clone()),
        (TAG_POD, format!("{}/{}", spec.pod.namespace, spec.pod.name)),
        (TAG_POD_UID, spec.pod.uid.clone()),
        (TAG_ATTEMPT, spec.attempt.to_string()),
    ];
    let tag_spec = |kind| {
        TagSpecification::builder()
            .resource_type(kind)
            .set_tags(Some(
                tags.iter()
                    .map(|(k, v)| Tag::builder().key(*k).value(v).build())
                    .collect(),
            ))
            .build()
    };
    let mut req = client
        .run_instances()
        .image_id(&spec.ami)
        .instance_type(spec.instance_type.as_str().into())
        .min_count(1)
        .max_count(1)
        .client_token(client_token(&spec.pod.uid, spec.attempt))
        .user_data(base64::engine::general_purpose::STANDARD.encode(&spec.user_data))
        // An instance that powers itself off is gone, never a stopped leftover.
        .instance_initiated_shutdown_behavior(ShutdownBehavior::Terminate)
        // IMDSv2 only (a session token first), and its answers never cross a
        // second hop (a NATed container), so an SSRF-style GET reads nothing.
        .metadata_options(
            InstanceMetadataOptionsRequest::builder()
                .http_endpoint(InstanceMetadataEndpointState::Enabled)
                .http_tokens(HttpTokensState::Required)
                .http_put_response_hop_limit(1)
                .build(),
        )
        .tag_specifications(tag_spec(ResourceType::Instance))
        .tag_specifications(tag_spec(ResourceType::Volume))
        .set_subnet_id(spec.subnet_id.clone())
        .set_security_group_ids(
            (!spec.security_groups.is_empty()).then(|| spec.security_groups.clone()),
        );
    if let Some(profile) = &spec.iam_instance_profile {
        let p = IamInstanceProfileSpecification::builder();
        req = req.iam_instance_profile(
            match profile {
                InstanceProfile::Name(name) => p.name(name),
                InstanceProfile::Arn(arn) => p.arn(arn),
            }
            .build(),
        );
    }
    if spec.capacity_type == CapacityType::Spot {
        let mut spot = SpotMarketOptions::builder()
            .spot_instance_type(SpotInstanceType::OneTime)
            .instance_interruption_behavior(InstanceInterruptionBehavior::Terminate);
        if let Some(max) = spec.max_spot_price {
            spot = spot.max_price(format!("{max}"));
        }
        req = req.instance_market_options(
            InstanceMarketOptionsRequest::builder()
                .market_type(MarketType::Spot)
                .spot_options(spot.build())
                .build(),
        );
    }
    if let Some(reservation) = &spec.reservation {
        let spec = match reservation {
            Reservation::Target(id) => CapacityReservationSpecification::builder()
                .capacity_reservation_target(
                    CapacityReservationTarget::builder()
                        .capacity_reservation_id(id)
                        .build(),
                ),
            Reservation::Open => CapacityReservationSpecification::builder()
                .capacity_reservation_preference(CapacityReservationPreference::Open),
            Reservation::None => CapacityReservationSpecification::builder()
                .capacity_reservation_preference(CapacityReservationPreference::None),
        };
        req = req.capacity_reservation_specification(spec.build());
    }
    let out = req
        .customize()
        .config_override(
            aws_sdk_ec2::config::Builder::default()
                .retry_config(RetryConfig::standard().with_max_attempts(1)),
        )
        .send()
        .await
        .map_err(|e| match e {
            aws_sdk_ec2::error::SdkError::ServiceError(s) => {
                let err = s.into_err();
                LaunchError::from_code(
                    err.code().unwrap_or("Unknown"),
                    err.message().unwrap_or_default(),
                )
            }
            other => {
                LaunchError::Transient(aws_sdk_ec2::error::DisplayErrorContext(&other).to_string())
            }
        })?;
    let instance = out.instances().first().ok_or_else(|| LaunchError::Failed {
        code: "NoInstance".into(),
        message: "RunInstances answered without an instance".into(),
    })?;
    Ok(Launched {
        instance_id: instance.instance_id().unwrap_or_default().to_owned(),
        private_ip: instance.private_ip_address().map(str::to_owned),
        zone: instance
            .placement()
            .and_then(|p| p.availability_zone())
            .map(str::to_owned),
        image_id: instance.image_id().map(str::to_owned),
        capacity_reservation_id: instance.capacity_reservation_id().map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_tokens_are_stable_per_attempt_and_fit_ec2s_limit() {
        let uid = "0f8e4c1e-6b1a-4b8e-9a53-2f2a1d1c9e77";
        assert_eq!(client_token(uid, 1), client_token(uid, 1));
        assert_ne!(client_token(uid, 1), client_token(uid, 2));
        assert!(client_token(&"x".repeat(200), u32::MAX).len() <= 64);
    }

    #[test]
    fn ec2_codes_are_classified() {
        let kind = |c| LaunchError::from_code(c, "m");
        assert!(matches!(
            kind("InsufficientInstanceCapacity"),
            LaunchError::Capacity { .. }
        ));
        assert!(matches!(
            kind("SpotMaxPriceTooLow"),
            LaunchError::Capacity { .. }
        ));
        assert!(matches!(
            kind("InstanceLimitExceeded"),
            LaunchError::Limit { .. }
        ));
        assert!(matches!(
            kind("RequestLimitExceeded"),
            LaunchError::Throttled(_)
        ));
        assert!(matches!(kind("InternalError"), LaunchError::Transient(_)));
        assert!(matches!(
            kind("InvalidAMIID.NotFound"),
            LaunchError::Failed { .. }
        ));
    }
}
