//! The `ec2` provider's section: where to launch (region, endpoints, AMI,
//! subnets, security groups), what may be launched (templates, allowed/denied
//! types, caps), the instance profiles IAM roles map to, the prices EC2 has no
//! API for, and every timing of the launch path.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;
use orca_model::selection::annotations::InstanceProfile;
use orca_model::selection::{Policy, Template};

/// Default time an offering that met InsufficientInstanceCapacity is avoided
/// (Karpenter's: 3 min).
pub const DEFAULT_OFFERING_AVOID_MS: u64 = 180_000;
/// Default time an instance's agent has to join before the instance is replaced.
pub const DEFAULT_BOOT_TIMEOUT_MS: u64 = 600_000;
/// Default number of RunInstances attempts (new offerings or relaunches) per pod incarnation.
pub const DEFAULT_MAX_LAUNCH_ATTEMPTS: u32 = 8;
/// Default period of the sweep over the cluster's tagged instances.
pub const DEFAULT_SWEEP_INTERVAL_MS: u64 = 60_000;
/// Default refresh period of the instance-type catalogue.
pub const DEFAULT_CATALOGUE_REFRESH_MS: u64 = 3_600_000;

/// The `ec2` provider, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ec2File {
    /// The cluster's name, tagged on every instance (`orca.research/cluster`).
    #[serde(default = "d_cluster")]
    pub cluster: String,
    /// Region; the default chain's when unset.
    #[serde(default)]
    pub region: Option<String>,
    /// An EC2 endpoint URL instead of AWS's (tests: `moto_server`).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// An IAM endpoint URL instead of AWS's; `endpoint` when that is set and this
    /// is not (`moto_server` serves IAM on the same port).
    #[serde(default)]
    pub iam_endpoint: Option<String>,
    /// Static credentials instead of the default chain (tests only).
    #[serde(default)]
    pub static_credentials: Option<StaticCredentials>,
    /// The baked AMI.
    pub ami: String,
    /// Subnets to launch into, in order of preference; EC2's default subnet when empty.
    #[serde(default)]
    pub subnets: Vec<String>,
    /// Security groups for every instance; the subnet's default when empty.
    #[serde(default)]
    pub security_groups: Vec<String>,
    /// IRSA-style identities: an IAM role ARN (a ServiceAccount's
    /// `eks.amazonaws.com/role-arn`) → the instance profile (name or ARN) that
    /// holds it, launched with the pod's instance.
    #[serde(default)]
    pub instance_profiles_by_role: BTreeMap<String, String>,
    /// On-demand prices, USD per hour, by instance type (EC2 has no price API).
    #[serde(default)]
    pub on_demand_prices: BTreeMap<String, f64>,
    /// Named templates: instance types, best first.
    #[serde(default)]
    pub templates: BTreeMap<String, Vec<String>>,
    /// Type name patterns (`g5.*`) that may be launched; every type when empty.
    #[serde(default)]
    pub allowed_instance_types: Vec<String>,
    /// Type name patterns that may not.
    #[serde(default)]
    pub denied_instance_types: Vec<String>,
    /// How many instance types a pod's selection keeps (the choice and its fallbacks).
    #[serde(default = "d_candidates")]
    pub max_candidates: usize,
    /// Most instances at once (0: no cap).
    #[serde(default)]
    pub max_instances: u32,
    /// Most GPUs over all instances at once (0: no cap).
    #[serde(default)]
    pub max_gpus: u32,
    /// Time an offering that met a capacity error is avoided (ms).
    #[serde(default = "d_avoid")]
    pub offering_avoid_ms: u64,
    /// Time an instance's agent has to join (ms).
    #[serde(default = "d_boot")]
    pub boot_timeout_ms: u64,
    /// RunInstances attempts per pod incarnation before it fails.
    #[serde(default = "d_attempts")]
    pub max_launch_attempts: u32,
    /// First back-off after throttling or no answer (ms); doubles, with jitter.
    #[serde(default = "d_backoff_base")]
    pub backoff_base_ms: u64,
    /// Longest back-off (ms).
    #[serde(default = "d_backoff_max")]
    pub backoff_max_ms: u64,
    /// Retries of one call that was throttled or got no answer.
    #[serde(default = "d_call_retries")]
    pub max_call_retries: u32,
    /// The longest one EC2 call may wait for its answer (ms); then it counts as
    /// unanswered and is repeated with the same token.
    #[serde(default = "d_call_timeout")]
    pub call_timeout_ms: u64,
    /// Period of the sweep over tagged instances (adopt, collect unknown ones) (ms).
    #[serde(default = "d_sweep")]
    pub sweep_interval_ms: u64,
    /// Time TerminateInstances has to be confirmed (shutting-down or terminated) (ms).
    #[serde(default = "d_confirm")]
    pub terminate_confirm_ms: u64,
    /// Refresh period of the instance-type catalogue (ms).
    #[serde(default = "d_refresh")]
    pub catalogue_refresh_ms: u64,
    /// Storage classes ORCA owns: a claim naming one gets an EBS volume created
    /// for it (CreateVolume) in its first pod's availability zone.
    #[serde(default)]
    pub storage_classes: Vec<StorageClass>,
    /// Time a detached volume has to become `available` before the instance is
    /// terminated anyway (ms).
    #[serde(default = "d_detach")]
    pub volume_detach_timeout_ms: u64,
    /// Warm pool: instance type → how many stopped on-demand instances of it to
    /// keep ready (they cost only their EBS volumes); a pod whose selection
    /// picks that type starts one instead of launching.
    #[serde(default)]
    pub warm_pool: std::collections::BTreeMap<String, u32>,
    /// Period of the look at the end dates of the Capacity Reservations and
    /// Blocks the cluster's instances run in (ms).
    #[serde(default = "d_reservation_check")]
    pub reservation_check_ms: u64,
    /// How long before EC2 reclaims a Capacity Block's instances (30 minutes
    /// before its end), or a reservation expires, its nodes are drained (ms;
    /// Karpenter's 10 minutes by default).
    #[serde(default = "d_reservation_lead")]
    pub reservation_drain_lead_ms: u64,
}

fn d_reservation_check() -> u64 {
    60_000
}
fn d_reservation_lead() -> u64 {
    600_000
}

/// A storage class ORCA provisions EBS volumes for.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageClass {
    /// The name claims give as `storageClassName`.
    pub name: String,
    /// EBS volume type (`gp3`, `gp2`, `io2`, `st1`, ...).
    #[serde(default = "d_volume_type")]
    pub volume_type: String,
    /// Filesystem the agent makes on the new volume: `ext4` or `xfs`.
    #[serde(default = "d_fs_type")]
    pub fs_type: String,
    /// `Delete` (the volume goes with the claim) or `Retain`.
    #[serde(default = "d_reclaim")]
    pub reclaim_policy: String,
}

fn d_volume_type() -> String {
    "gp3".into()
}
fn d_fs_type() -> String {
    "ext4".into()
}
fn d_reclaim() -> String {
    "Delete".into()
}
fn d_detach() -> u64 {
    120_000
}

/// Static credentials.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticCredentials {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
}

fn d_cluster() -> String {
    "orca".into()
}
fn d_candidates() -> usize {
    Policy::default().max_candidates
}
fn d_avoid() -> u64 {
    DEFAULT_OFFERING_AVOID_MS
}
fn d_boot() -> u64 {
    DEFAULT_BOOT_TIMEOUT_MS
}
fn d_attempts() -> u32 {
    DEFAULT_MAX_LAUNCH_ATTEMPTS
}
fn d_backoff_base() -> u64 {
    500
}
fn d_backoff_max() -> u64 {
    20_000
}
fn d_call_retries() -> u32 {
    6
}
fn d_call_timeout() -> u64 {
    30_000
}
fn d_sweep() -> u64 {
    DEFAULT_SWEEP_INTERVAL_MS
}
fn d_confirm() -> u64 {
    60_000
}
fn d_refresh() -> u64 {
    DEFAULT_CATALOGUE_REFRESH_MS
}

/// How to reach EC2.
#[derive(Debug, Clone, Default)]
pub struct ClientSettings {
    /// Region; the default chain's (`AWS_REGION`, the profile, IMDS) when `None`.
    pub region: Option<String>,
    /// An endpoint URL instead of EC2's (`moto_server` in tests).
    pub endpoint: Option<String>,
    /// An endpoint URL instead of IAM's (`moto_server` in tests).
    pub iam_endpoint: Option<String>,
    /// Static credentials (access key, secret) instead of the default chain.
    pub static_credentials: Option<(String, String)>,
    /// The longest one call may take, retries included (none: the SDK's default,
    /// which never gives up on a call that is never answered).
    pub call_timeout: Option<std::time::Duration>,
}

/// The validated `ec2` provider.
#[derive(Debug, Clone)]
pub struct Ec2Provider {
    /// Cluster tag value.
    pub cluster: String,
    /// How to reach EC2.
    pub client: ClientSettings,
    /// AMI.
    pub ami: String,
    /// Subnets, best first (empty: EC2's default).
    pub subnets: Vec<String>,
    /// Security groups (empty: the subnet's default).
    pub security_groups: Vec<String>,
    /// IAM role ARN → the instance profile that holds the role.
    pub instance_profiles_by_role: BTreeMap<String, InstanceProfile>,
    /// On-demand prices.
    pub on_demand_prices: BTreeMap<String, f64>,
    /// Selection policy (templates, allowed, denied, candidates).
    pub policy: Policy,
    /// Instance cap (0: none).
    pub max_instances: u32,
    /// GPU cap (0: none).
    pub max_gpus: u32,
    /// Offering avoidance after a capacity error.
    pub offering_avoid: Duration,
    /// Boot timeout.
    pub boot_timeout: Duration,
    /// RunInstances attempts per pod incarnation.
    pub max_launch_attempts: u32,
    /// Back-off base.
    pub backoff_base: Duration,
    /// Back-off cap.
    pub backoff_max: Duration,
    /// Retries of one throttled or unanswered call.
    pub max_call_retries: u32,
    /// Sweep period.
    pub sweep_interval: Duration,
    /// Termination confirmation time.
    pub terminate_confirm: Duration,
    /// Catalogue refresh period.
    pub catalogue_refresh: Duration,
    /// Storage classes ORCA provisions volumes for.
    pub storage_classes: Vec<StorageClass>,
    /// How long a detaching volume may take before termination goes ahead.
    pub volume_detach_timeout: Duration,
    /// Warm pool sizes by instance type.
    pub warm_pool: std::collections::BTreeMap<String, u32>,
    /// Period of the reservation end check.
    pub reservation_check: Duration,
    /// Drain lead before a reservation's reclaim.
    pub reservation_drain_lead: Duration,
}

/// `arn:<partition>:iam::<12 digits>:role/<path/>name`.
fn is_role_arn(s: &str) -> bool {
    let parts: Vec<&str> = s.splitn(6, ':').collect();
    matches!(parts.as_slice(), ["arn", partition, "iam", "", account, resource]
        if !partition.is_empty()
            && account.len() == 12
            && account.bytes().all(|b| b.is_ascii_digit())
            && resource.strip_prefix("role/").is_some_and(|r| !r.is_empty() && !r.ends_with('/')))
}

fn is_label_value(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl Ec2File {
    /// Validates the section, naming the first bad field.
    pub fn validate(self) -> Result<Ec2Provider, ConfigError> {
        let invalid = |field, problem: String| ConfigError::Invalid { field, problem };
        if !is_label_value(&self.cluster) {
            return Err(invalid(
                "provider.ec2.cluster",
                format!(
                    "{:?} must be 1 to 63 characters of a-z, A-Z, 0-9, '-', '_', '.'",
                    self.cluster
                ),
            ));
        }
        if !self.ami.starts_with("ami-") {
            return Err(invalid(
                "provider.ec2.ami",
                format!("{:?} is not an AMI id (ami-...)", self.ami),
            ));
        }
        if let Some(s) = self.subnets.iter().find(|s| !s.starts_with("subnet-")) {
            return Err(invalid(
                "provider.ec2.subnets",
                format!("{s:?} is not a subnet id (subnet-...)"),
            ));
        }
        if let Some(s) = self.security_groups.iter().find(|s| !s.starts_with("sg-")) {
            return Err(invalid(
                "provider.ec2.security_groups",
                format!("{s:?} is not a security group id (sg-...)"),
            ));
        }
        for (field, endpoint) in [
            ("provider.ec2.endpoint", &self.endpoint),
            ("provider.ec2.iam_endpoint", &self.iam_endpoint),
        ] {
            if let Some(e) = endpoint
                && !(e.starts_with("http://") || e.starts_with("https://"))
            {
                return Err(invalid(
                    field,
                    format!("{e:?} must be an http:// or https:// URL"),
                ));
            }
        }
        let mut instance_profiles_by_role = BTreeMap::new();
        for (role, profile) in &self.instance_profiles_by_role {
            let field = "provider.ec2.instance_profiles_by_role";
            if !is_role_arn(role) {
                return Err(invalid(
                    field,
                    format!("{role:?} is not an IAM role ARN (arn:aws:iam::<account>:role/<name>)"),
                ));
            }
            let profile = InstanceProfile::parse(profile).ok_or_else(|| {
                invalid(
                    field,
                    format!("{role}: {profile:?} is neither an instance profile name nor its ARN"),
                )
            })?;
            instance_profiles_by_role.insert(role.clone(), profile);
        }
        if let Some((t, p)) = self
            .on_demand_prices
            .iter()
            .find(|(_, p)| !p.is_finite() || **p <= 0.0)
        {
            return Err(invalid(
                "provider.ec2.on_demand_prices",
                format!("{t}: {p} is not a positive price"),
            ));
        }
        if let Some((name, _)) = self.templates.iter().find(|(_, t)| t.is_empty()) {
            return Err(invalid(
                "provider.ec2.templates",
                format!("template {name:?} lists no instance types"),
            ));
        }
        let positive = |field, v: u64| {
            if v == 0 {
                Err(invalid(field, "must be positive".into()))
            } else {
                Ok(Duration::from_millis(v))
            }
        };
        if self.max_candidates == 0 {
            return Err(invalid(
                "provider.ec2.max_candidates",
                "must be positive".into(),
            ));
        }
        if self.max_launch_attempts == 0 {
            return Err(invalid(
                "provider.ec2.max_launch_attempts",
                "must be positive".into(),
            ));
        }
        let backoff_base = positive("provider.ec2.backoff_base_ms", self.backoff_base_ms)?;
        let backoff_max = positive("provider.ec2.backoff_max_ms", self.backoff_max_ms)?;
        if backoff_max < backoff_base {
            return Err(invalid(
                "provider.ec2.backoff_max_ms",
                "must not be shorter than backoff_base_ms".into(),
            ));
        }
        let mut class_names = std::collections::BTreeSet::new();
        for c in &self.storage_classes {
            let field = "provider.ec2.storage_classes";
            if c.name.is_empty() || !class_names.insert(c.name.as_str()) {
                return Err(invalid(
                    field,
                    format!("{:?}: names must be non-empty and unique", c.name),
                ));
            }
            if !matches!(c.fs_type.as_str(), "ext4" | "xfs") {
                return Err(invalid(
                    field,
                    format!("{}: fs_type {:?} is not ext4 or xfs", c.name, c.fs_type),
                ));
            }
            if !matches!(c.reclaim_policy.as_str(), "Delete" | "Retain") {
                return Err(invalid(
                    field,
                    format!(
                        "{}: reclaim_policy {:?} is not Delete or Retain",
                        c.name, c.reclaim_policy
                    ),
                ));
            }
            if !matches!(
                c.volume_type.as_str(),
                "gp2" | "gp3" | "io1" | "io2" | "st1" | "sc1" | "standard"
            ) {
                return Err(invalid(
                    field,
                    format!(
                        "{}: volume_type {:?} is not an EBS volume type",
                        c.name, c.volume_type
                    ),
                ));
            }
        }
        for (instance_type, n) in &self.warm_pool {
            if instance_type.is_empty()
                || !instance_type
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
            {
                return Err(invalid(
                    "provider.ec2.warm_pool",
                    format!("{instance_type:?} is not an instance type"),
                ));
            }
            if *n > 100 {
                return Err(invalid(
                    "provider.ec2.warm_pool",
                    format!("{instance_type}: {n} stopped instances is more than 100"),
                ));
            }
        }
        Ok(Ec2Provider {
            warm_pool: self.warm_pool,
            storage_classes: self.storage_classes,
            volume_detach_timeout: positive(
                "provider.ec2.volume_detach_timeout_ms",
                self.volume_detach_timeout_ms,
            )?,
            cluster: self.cluster,
            client: ClientSettings {
                region: self.region,
                iam_endpoint: self.iam_endpoint.or_else(|| self.endpoint.clone()),
                endpoint: self.endpoint,
                static_credentials: self
                    .static_credentials
                    .map(|c| (c.access_key_id, c.secret_access_key)),
                call_timeout: Some(positive(
                    "provider.ec2.call_timeout_ms",
                    self.call_timeout_ms,
                )?),
            },
            ami: self.ami,
            subnets: self.subnets,
            security_groups: self.security_groups,
            instance_profiles_by_role,
            on_demand_prices: self.on_demand_prices,
            policy: Policy {
                templates: self
                    .templates
                    .into_iter()
                    .map(|(name, instance_types)| (name, Template { instance_types }))
                    .collect(),
                allowed: self.allowed_instance_types,
                denied: self.denied_instance_types,
                max_candidates: self.max_candidates,
            },
            max_instances: self.max_instances,
            max_gpus: self.max_gpus,
            offering_avoid: positive("provider.ec2.offering_avoid_ms", self.offering_avoid_ms)?,
            boot_timeout: positive("provider.ec2.boot_timeout_ms", self.boot_timeout_ms)?,
            max_launch_attempts: self.max_launch_attempts,
            backoff_base,
            backoff_max,
            max_call_retries: self.max_call_retries,
            sweep_interval: positive("provider.ec2.sweep_interval_ms", self.sweep_interval_ms)?,
            terminate_confirm: positive(
                "provider.ec2.terminate_confirm_ms",
                self.terminate_confirm_ms,
            )?,
            catalogue_refresh: positive(
                "provider.ec2.catalogue_refresh_ms",
                self.catalogue_refresh_ms,
            )?,
            reservation_check: positive(
                "provider.ec2.reservation_check_ms",
                self.reservation_check_ms,
            )?,
            reservation_drain_lead: Duration::from_millis(self.reservation_drain_lead_ms),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Ec2Provider, ConfigError> {
        serde_yaml::from_str::<Ec2File>(yaml)
            .map_err(|e| ConfigError::Parse {
                path: "t".into(),
                message: e.to_string(),
            })?
            .validate()
    }

    #[test]
    fn errors_name_the_field() {
        let ok = parse("ami: ami-1\ntemplates: {train: [p4d.24xlarge, p3.16xlarge]}\n").unwrap();
        assert_eq!(ok.cluster, "orca");
        assert_eq!(ok.offering_avoid, Duration::from_secs(180));
        assert_eq!(
            ok.policy.templates["train"].instance_types,
            ["p4d.24xlarge", "p3.16xlarge"]
        );
        for (yaml, field) in [
            ("ami: x\n", "provider.ec2.ami"),
            ("ami: ami-1\ncluster: 'a b'\n", "provider.ec2.cluster"),
            ("ami: ami-1\nsubnets: [s1]\n", "provider.ec2.subnets"),
            (
                "ami: ami-1\nsecurity_groups: [g]\n",
                "provider.ec2.security_groups",
            ),
            ("ami: ami-1\nendpoint: localhost\n", "provider.ec2.endpoint"),
            (
                "ami: ami-1\niam_endpoint: localhost\n",
                "provider.ec2.iam_endpoint",
            ),
            (
                "ami: ami-1\ninstance_profiles_by_role: {'arn:aws:iam::123456789012:user/u': p}\n",
                "provider.ec2.instance_profiles_by_role",
            ),
            (
                "ami: ami-1\ninstance_profiles_by_role: {'arn:aws:iam::123456789012:role/r': 'a b'}\n",
                "provider.ec2.instance_profiles_by_role",
            ),
            (
                "ami: ami-1\non_demand_prices: {g5.xlarge: -1}\n",
                "provider.ec2.on_demand_prices",
            ),
            ("ami: ami-1\ntemplates: {t: []}\n", "provider.ec2.templates"),
            (
                "ami: ami-1\nstorage_classes: [{name: s, fs_type: btrfs}]\n",
                "provider.ec2.storage_classes",
            ),
            (
                "ami: ami-1\nstorage_classes: [{name: s}, {name: s}]\n",
                "provider.ec2.storage_classes",
            ),
            (
                "ami: ami-1\nboot_timeout_ms: 0\n",
                "provider.ec2.boot_timeout_ms",
            ),
            (
                "ami: ami-1\nbackoff_base_ms: 10\nbackoff_max_ms: 5\n",
                "provider.ec2.backoff_max_ms",
            ),
            (
                "ami: ami-1\nmax_launch_attempts: 0\n",
                "provider.ec2.max_launch_attempts",
            ),
        ] {
            let e = parse(yaml).unwrap_err().to_string();
            assert!(e.contains(&format!("`{field}`")), "{yaml}: {e}");
        }
        let e = parse("ami: ami-1\nbogus: 1\n").unwrap_err().to_string();
        assert!(e.contains("unknown field `bogus`"), "{e}");
    }

    #[test]
    fn iam_follows_the_ec2_endpoint_and_roles_map_to_profiles() {
        let s = parse("ami: ami-1\nendpoint: http://127.0.0.1:5000\n").unwrap();
        assert_eq!(
            s.client.iam_endpoint.as_deref(),
            Some("http://127.0.0.1:5000")
        );
        let s = parse(
            "ami: ami-1\nendpoint: http://127.0.0.1:5000\niam_endpoint: http://127.0.0.1:6000\n",
        )
        .unwrap();
        assert_eq!(
            s.client.iam_endpoint.as_deref(),
            Some("http://127.0.0.1:6000")
        );
        assert_eq!(parse("ami: ami-1\n").unwrap().client.iam_endpoint, None);
        let s = parse(
            "ami: ami-1\ninstance_profiles_by_role:\n  \
             'arn:aws:iam::123456789012:role/research/train': train-profile\n  \
             'arn:aws:iam::123456789012:role/eval': 'arn:aws:iam::123456789012:instance-profile/eval'\n",
        )
        .unwrap();
        assert_eq!(
            s.instance_profiles_by_role["arn:aws:iam::123456789012:role/research/train"],
            InstanceProfile::Name("train-profile".into())
        );
        assert_eq!(
            s.instance_profiles_by_role["arn:aws:iam::123456789012:role/eval"].name(),
            "eval"
        );
        let e = parse(
            "ami: ami-1\ninstance_profiles_by_role: {'arn:aws:iam::123456789012:role/': p}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("role/") && e.contains("not an IAM role ARN"),
            "{e}"
        );
    }
}
