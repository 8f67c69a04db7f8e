//! The pod annotations that steer instance selection and launch, parsed and
//! checked: an unknown `orca.research/` annotation or a malformed value is an
//! error naming it, never silently ignored.

use std::collections::BTreeMap;

/// `orca.research/instance-type`: the instance type to launch (`explicit`).
pub const INSTANCE_TYPE: &str = "orca.research/instance-type";
/// `orca.research/workload-template`: a template named in the config (`template`).
pub const WORKLOAD_TEMPLATE: &str = "orca.research/workload-template";
/// `orca.research/selection`: `explicit`, `template`, `auto` or `chain` (the default).
pub const SELECTION: &str = "orca.research/selection";
/// `orca.research/gpu-model`: the GPU model the pod needs (`A100`).
pub const GPU_MODEL: &str = "orca.research/gpu-model";
/// `orca.research/capacity-type`: `on-demand` (the default) or `spot`.
pub const CAPACITY_TYPE: &str = "orca.research/capacity-type";
/// `orca.research/max-spot-price`: the most to pay for spot, USD per hour.
pub const MAX_SPOT_PRICE: &str = "orca.research/max-spot-price";
/// `orca.research/capacity-reservation-id`: launch into this Capacity Reservation.
pub const CAPACITY_RESERVATION_ID: &str = "orca.research/capacity-reservation-id";
/// `orca.research/capacity-reservation-preference`: `open` or `none`.
pub const CAPACITY_RESERVATION_PREFERENCE: &str = "orca.research/capacity-reservation-preference";
/// `orca.research/ami`: the AMI to launch instead of the configured one.
pub const AMI: &str = "orca.research/ami";
/// `orca.research/iam-instance-profile`: the instance profile (a name or an ARN)
/// the pod's instance is launched with.
pub const IAM_INSTANCE_PROFILE: &str = "orca.research/iam-instance-profile";
/// `orca.research/security-groups`: comma-separated security group ids
/// (`sg-…`) instead of the configured ones.
pub const SECURITY_GROUPS: &str = "orca.research/security-groups";
/// `orca.research/subnet`: the subnet (`subnet-…`) to launch into instead of
/// the configured ones.
pub const SUBNET: &str = "orca.research/subnet";

/// `orca.research/node`: written by ORCA in Kubernetes mode, the ORCA node (the
/// instance) the pod was placed on; read by nothing, accepted as input.
pub const NODE: &str = "orca.research/node";

/// Annotation: the longest a pod may live, counted from its creation
/// (`90m`, `2h30m`, `45s`): then it ends `Failed (DeadlineExceeded)` and its
/// instance is released.
pub const MAX_LIFETIME: &str = "orca.research/max-lifetime";

/// Annotation: after an interruption notice, wait this long at most (`5m`,
/// `90s`) for the pod to write `/run/orca/checkpoint-done` before it is stopped
/// (read by the agent), and start the replacement only once it did.
pub const CHECKPOINT_WAIT: &str = "orca.research/checkpoint-wait";

/// Annotation: where the pod resumes from, given to its containers as the
/// environment variable `ORCA_RESUME_FROM`; written by ORCA on the replacement
/// of an interrupted pod (the checkpoint it confirmed), accepted as input.
pub const RESUME_FROM: &str = "orca.research/resume-from";

/// Annotation: the research budget (the config's `budgets`) the pod's cost
/// counts against.
pub const BUDGET: &str = "orca.research/budget-namespace";

/// Annotation written by ORCA: the pod's provenance ledger (where and on what
/// each incarnation ran), as a JSON array; accepted as input and ignored.
pub const LEDGER: &str = "orca.research/ledger";

/// Annotation written by ORCA's controllers on the pods they make: the pod's
/// owner (`ReplicaSet/NAME`); accepted as input and ignored.
pub const CONTROLLED_BY: &str = "orca.research/controlled-by";

/// Annotation: what becomes of the pod when its node is Lost and its instance
/// cannot be confirmed terminated: `wait` (the default: it is replaced only once
/// the instance is confirmed gone, so it never runs twice) or `replace` (it is
/// replaced at once; its agent stops the old copy when cut off, a heartbeat
/// interval before the node can be declared Lost), as Nomad's `disconnect` block.
pub const ON_NODE_LOST: &str = "orca.research/on-node-lost";

/// Every annotation the selection and launch understand.
pub const KNOWN: [&str; 17] = [
    INSTANCE_TYPE,
    WORKLOAD_TEMPLATE,
    SELECTION,
    GPU_MODEL,
    CAPACITY_TYPE,
    MAX_SPOT_PRICE,
    CAPACITY_RESERVATION_ID,
    CAPACITY_RESERVATION_PREFERENCE,
    AMI,
    IAM_INSTANCE_PROFILE,
    SECURITY_GROUPS,
    SUBNET,
    MAX_LIFETIME,
    CHECKPOINT_WAIT,
    RESUME_FROM,
    BUDGET,
    ON_NODE_LOST,
];

/// The prefix of ORCA's annotations.
pub const PREFIX: &str = "orca.research/";

/// How the instance type is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// The type named by [`INSTANCE_TYPE`].
    Explicit,
    /// The first allowed type of the template named by [`WORKLOAD_TEMPLATE`] that fits.
    Template,
    /// The cheapest allowed type that fits the pod's requests.
    Auto,
    /// Explicit when the pod names a type, else template when it names one, else auto.
    #[default]
    Chain,
}

/// On-demand or spot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum CapacityType {
    /// On-demand.
    #[default]
    OnDemand,
    /// Spot.
    Spot,
}

/// Whether an instance may use an open Capacity Reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReservationPreference {
    /// Any open reservation that matches.
    Open,
    /// None.
    None,
}

/// An IAM instance profile, as a pod names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstanceProfile {
    /// By name (`train-data-reader`).
    Name(String),
    /// By ARN (`arn:aws:iam::123456789012:instance-profile/path/name`).
    Arn(String),
}

impl InstanceProfile {
    /// Parses a name or an ARN; `None` when it is neither.
    pub fn parse(value: &str) -> Option<Self> {
        if value.starts_with("arn:") {
            // arn:<partition>:iam::<account>:instance-profile/<path/>name
            let parts: Vec<&str> = value.splitn(6, ':').collect();
            let [_, partition, "iam", "", account, resource] = parts.as_slice() else {
                return None;
            };
            let ok = !partition.is_empty()
                && account.len() == 12
                && account.bytes().all(|b| b.is_ascii_digit())
                && resource
                    .strip_prefix("instance-profile/")
                    .and_then(|r| r.rsplit('/').next())
                    .is_some_and(is_iam_name);
            return ok.then(|| Self::Arn(value.to_owned()));
        }
        is_iam_name(value).then(|| Self::Name(value.to_owned()))
    }

    /// The profile's name (an ARN's last path segment), as `iam:GetInstanceProfile` takes it.
    pub fn name(&self) -> &str {
        match self {
            Self::Name(n) => n,
            Self::Arn(a) => a.rsplit('/').next().unwrap_or(a),
        }
    }
}

impl std::fmt::Display for InstanceProfile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Name(s) | Self::Arn(s) => f.write_str(s),
        }
    }
}

/// What a pod's annotations ask for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LaunchAnnotations {
    /// How to choose.
    pub mode: Mode,
    /// The instance type named.
    pub instance_type: Option<String>,
    /// The template named.
    pub template: Option<String>,
    /// The GPU model needed.
    pub gpu_model: Option<String>,
    /// On-demand or spot.
    pub capacity_type: CapacityType,
    /// The spot price cap, USD per hour.
    pub max_spot_price: Option<f64>,
    /// The Capacity Reservation to launch into.
    pub capacity_reservation_id: Option<String>,
    /// Open reservations or none.
    pub reservation_preference: Option<ReservationPreference>,
    /// The AMI.
    pub ami: Option<String>,
    /// The instance profile.
    pub iam_instance_profile: Option<InstanceProfile>,
    /// Security group ids, in the order given (empty: the configured ones).
    pub security_groups: Vec<String>,
    /// The subnet (none: the configured ones).
    pub subnet: Option<String>,
    /// The longest the pod may live, from its creation.
    pub max_lifetime: Option<std::time::Duration>,
    /// Not an annotation: the IAM role ARN of the pod's ServiceAccount
    /// (`eks.amazonaws.com/role-arn`), which the provider maps to an instance
    /// profile by its config. [`parse`] never sets it; it is for whoever reads
    /// the ServiceAccount (Kubernetes mode) to fill in.
    pub service_account_role_arn: Option<String>,
}

/// A pod annotation that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {key}: {problem}")]
pub struct AnnotationError {
    /// The annotation.
    pub key: String,
    /// What is wrong with it.
    pub problem: String,
}

/// Parses the `orca.research/` annotations among `annotations` (checked in key
/// order, so the first error is always the same).
pub fn parse<'a>(
    annotations: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Result<LaunchAnnotations, AnnotationError> {
    let ours: BTreeMap<&String, &String> = annotations
        .into_iter()
        .filter(|(k, _)| k.starts_with(PREFIX))
        .collect();
    let mut out = LaunchAnnotations::default();
    for (key, value) in ours {
        let bad = |problem: String| AnnotationError {
            key: key.clone(),
            problem,
        };
        let value = value.trim();
        if value.is_empty() {
            return Err(bad("is empty".into()));
        }
        match key.as_str() {
            INSTANCE_TYPE => {
                if !is_instance_type_name(value) {
                    return Err(bad(format!(
                        "{value:?} is not an instance type name (family.size, e.g. g5.xlarge)"
                    )));
                }
                out.instance_type = Some(value.into());
            }
            WORKLOAD_TEMPLATE => out.template = Some(value.into()),
            SELECTION => {
                out.mode = match value {
                    "explicit" => Mode::Explicit,
                    "template" => Mode::Template,
                    "auto" => Mode::Auto,
                    "chain" => Mode::Chain,
                    other => {
                        return Err(bad(format!(
                            "{other:?}: use explicit, template, auto or chain"
                        )));
                    }
                }
            }
            GPU_MODEL => out.gpu_model = Some(value.into()),
            CAPACITY_TYPE => {
                out.capacity_type = match value {
                    "on-demand" => CapacityType::OnDemand,
                    "spot" => CapacityType::Spot,
                    other => return Err(bad(format!("{other:?}: use on-demand or spot"))),
                }
            }
            MAX_SPOT_PRICE => {
                let price: f64 = value.parse().map_err(|_| {
                    bad(format!(
                        "{value:?} is not a price in USD per hour (e.g. 0.45)"
                    ))
                })?;
                if !(price.is_finite() && price > 0.0) {
                    return Err(bad(format!("{value:?} must be a positive price")));
                }
                out.max_spot_price = Some(price);
            }
            CAPACITY_RESERVATION_ID => {
                if !is_aws_id(value, "cr-") {
                    return Err(bad(format!(
                        "{value:?} is not a Capacity Reservation id (cr-…)"
                    )));
                }
                out.capacity_reservation_id = Some(value.into());
            }
            CAPACITY_RESERVATION_PREFERENCE => {
                out.reservation_preference = Some(match value {
                    "open" => ReservationPreference::Open,
                    "none" => ReservationPreference::None,
                    other => return Err(bad(format!("{other:?}: use open or none"))),
                })
            }
            AMI => {
                if !is_aws_id(value, "ami-") {
                    return Err(bad(format!("{value:?} is not an AMI id (ami-…)")));
                }
                out.ami = Some(value.into());
            }
            IAM_INSTANCE_PROFILE => {
                out.iam_instance_profile = Some(InstanceProfile::parse(value).ok_or_else(|| {
                    bad(format!(
                        "{value:?} is neither an instance profile name (1 to 128 of a-z, A-Z, 0-9, +=,.@_-) \
                         nor an instance profile ARN (arn:aws:iam::<account>:instance-profile/<name>)"
                    ))
                })?);
            }
            SECURITY_GROUPS => {
                for group in value.split(',').map(str::trim) {
                    if !is_aws_id(group, "sg-") {
                        return Err(bad(format!(
                            "{group:?} is not a security group id (sg-…; a comma-separated list)"
                        )));
                    }
                    if out.security_groups.iter().any(|g| g == group) {
                        return Err(bad(format!("{group} is listed twice")));
                    }
                    out.security_groups.push(group.into());
                }
            }
            SUBNET => {
                if !is_aws_id(value, "subnet-") {
                    return Err(bad(format!("{value:?} is not a subnet id (subnet-…)")));
                }
                out.subnet = Some(value.into());
            }
            MAX_LIFETIME => {
                out.max_lifetime = Some(parse_duration(value).ok_or_else(|| {
                    bad(format!(
                        "{value:?} is not a positive duration (e.g. 90m, 2h30m, 45s)"
                    ))
                })?);
            }
            CHECKPOINT_WAIT => {
                if parse_duration(value).is_none() {
                    return Err(bad(format!(
                        "{value:?} is not a positive duration (e.g. 5m, 90s)"
                    )));
                }
            }
            ON_NODE_LOST => {
                if !matches!(value, "wait" | "replace") {
                    return Err(bad(format!("{value:?}: use wait or replace")));
                }
            }
            BUDGET => {
                if !crate::pod::valid_name(value) {
                    return Err(bad(format!("{value:?} is not a budget name")));
                }
            }
            NODE | RESUME_FROM | LEDGER | CONTROLLED_BY => {}
            _ => {
                return Err(bad(format!(
                    "unknown ORCA annotation; known: {}",
                    KNOWN.join(", ")
                )));
            }
        }
    }
    check_combinations(&out)?;
    Ok(out)
}

/// Annotations that contradict each other.
/// A positive duration in Go's grammar ([`crate::duration`]): `2h30m`, `90m`,
/// `45s`, `1.5h`.
pub fn parse_duration(s: &str) -> Option<std::time::Duration> {
    crate::duration::parse(s).ok().filter(|d| !d.is_zero())
}

fn check_combinations(a: &LaunchAnnotations) -> Result<(), AnnotationError> {
    let bad = |key: &str, problem: &str| {
        Err(AnnotationError {
            key: key.into(),
            problem: problem.into(),
        })
    };
    if a.max_spot_price.is_some() && a.capacity_type != CapacityType::Spot {
        return bad(MAX_SPOT_PRICE, "needs orca.research/capacity-type: spot");
    }
    if a.capacity_reservation_id.is_some() {
        if a.capacity_type == CapacityType::Spot {
            return bad(
                CAPACITY_RESERVATION_ID,
                "Capacity Reservations are on-demand capacity; drop capacity-type: spot",
            );
        }
        if a.reservation_preference.is_some() {
            return bad(
                CAPACITY_RESERVATION_PREFERENCE,
                "give either a reservation id (targeted) or a preference, not both",
            );
        }
    }
    if a.mode == Mode::Explicit && a.instance_type.is_none() {
        return bad(
            SELECTION,
            "explicit selection needs orca.research/instance-type",
        );
    }
    if a.mode == Mode::Template && a.template.is_none() {
        return bad(
            SELECTION,
            "template selection needs orca.research/workload-template",
        );
    }
    Ok(())
}

/// `family.size`: lower-case letters, digits and dashes, one dot.
fn is_instance_type_name(s: &str) -> bool {
    let ok = |p: &str| {
        !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    };
    matches!(s.split_once('.'), Some((family, size)) if ok(family) && ok(size))
}

/// An IAM name (roles, instance profiles): 1 to 128 of `[A-Za-z0-9+=,.@_-]`.
fn is_iam_name(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b))
}

/// `<prefix><hex>`, as EC2 resource ids are.
fn is_aws_id(s: &str, prefix: &str) -> bool {
    s.strip_prefix(prefix)
        .is_some_and(|rest| !rest.is_empty() && rest.chars().all(|c| c.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_lifetime_is_a_positive_go_duration() {
        let secs = |s: &str| parse_duration(s).map(|d| d.as_secs());
        assert_eq!(secs("2h30m"), Some(9000));
        assert_eq!(secs("90m"), Some(5400));
        assert_eq!(secs("45s"), Some(45));
        assert_eq!(secs("1h0m5s"), Some(3605));
        assert_eq!(secs("1.5h"), Some(5400));
        for bad in ["", "0s", "0", "5", "m5", "3d", "-5s"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
        let a: BTreeMap<String, String> = [(MAX_LIFETIME.to_owned(), "soon".to_owned())].into();
        let e = parse(&a).unwrap_err().to_string();
        assert!(e.contains(MAX_LIFETIME) && e.contains("soon"), "{e}");
    }

    fn parse_pairs(pairs: &[(&str, &str)]) -> Result<LaunchAnnotations, AnnotationError> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse(&map)
    }

    #[test]
    fn every_annotation_parses() {
        let a = parse_pairs(&[
            (INSTANCE_TYPE, "g5.xlarge"),
            (SELECTION, "explicit"),
            (GPU_MODEL, "A10G"),
            (CAPACITY_TYPE, "spot"),
            (MAX_SPOT_PRICE, "0.5"),
            (AMI, "ami-0abc123"),
            ("unrelated.io/x", "kept out"),
        ])
        .unwrap();
        assert_eq!(a.mode, Mode::Explicit);
        assert_eq!(a.instance_type.as_deref(), Some("g5.xlarge"));
        assert_eq!(a.capacity_type, CapacityType::Spot);
        assert_eq!(a.max_spot_price, Some(0.5));
        assert_eq!(a.ami.as_deref(), Some("ami-0abc123"));
        let r = parse_pairs(&[(CAPACITY_RESERVATION_ID, "cr-0123456789abcdef0")]).unwrap();
        assert_eq!(
            r.capacity_reservation_id.as_deref(),
            Some("cr-0123456789abcdef0")
        );
        assert_eq!(parse_pairs(&[]).unwrap(), LaunchAnnotations::default());
    }

    #[test]
    fn identity_and_network_annotations_parse() {
        let a = parse_pairs(&[
            (IAM_INSTANCE_PROFILE, "train-data-reader"),
            (SECURITY_GROUPS, "sg-0123abcd, sg-0f00"),
            (SUBNET, "subnet-0a1b2c"),
        ])
        .unwrap();
        assert_eq!(
            a.iam_instance_profile,
            Some(InstanceProfile::Name("train-data-reader".into()))
        );
        assert_eq!(a.security_groups, ["sg-0123abcd", "sg-0f00"], "order kept");
        assert_eq!(a.subnet.as_deref(), Some("subnet-0a1b2c"));
        assert_eq!(a.service_account_role_arn, None, "never from annotations");
        let arn = "arn:aws:iam::123456789012:instance-profile/research/train@v2";
        let p = parse_pairs(&[(IAM_INSTANCE_PROFILE, arn)])
            .unwrap()
            .iam_instance_profile
            .unwrap();
        assert_eq!(p, InstanceProfile::Arn(arn.into()));
        assert_eq!(p.name(), "train@v2");
        assert_eq!(p.to_string(), arn);
        let china = "arn:aws-cn:iam::123456789012:instance-profile/p";
        assert!(InstanceProfile::parse(china).is_some());
        assert_eq!(InstanceProfile::Name("p".into()).name(), "p");
    }

    #[test]
    fn bad_identity_and_network_annotations_name_the_value() {
        let err = |k: &str, v: &str| parse_pairs(&[(k, v)]).unwrap_err();
        for bad in [
            "has space",
            "a/b",
            &"x".repeat(129),
            "arn:aws:iam::123456789012:role/not-a-profile",
            "arn:aws:iam::1234:instance-profile/short-account",
            "arn:aws:ec2::123456789012:instance-profile/p",
            "arn:aws:iam::123456789012:instance-profile/",
        ] {
            let e = err(IAM_INSTANCE_PROFILE, bad);
            assert_eq!(e.key, IAM_INSTANCE_PROFILE);
            assert!(e.problem.contains("instance profile"), "{bad}: {e}");
        }
        let e = err(SECURITY_GROUPS, "sg-01,default");
        assert_eq!(e.key, SECURITY_GROUPS);
        assert!(
            e.problem.contains("\"default\"") && e.problem.contains("sg-"),
            "{e}"
        );
        assert!(err(SECURITY_GROUPS, "sg-01,").problem.contains("\"\""));
        assert!(
            err(SECURITY_GROUPS, "sg-01,sg-01")
                .problem
                .contains("twice")
        );
        let e = err(SUBNET, "sn-01");
        assert_eq!(e.key, SUBNET);
        assert!(
            e.problem.contains("sn-01") && e.problem.contains("subnet-"),
            "{e}"
        );
        assert!(
            err(SUBNET, "subnet-0a,subnet-0b")
                .problem
                .contains("subnet id")
        );
    }

    #[test]
    fn bad_annotations_name_the_key_and_the_problem() {
        let err = |pairs: &[(&str, &str)]| parse_pairs(pairs).unwrap_err();
        let e = err(&[("orca.research/instance-typo", "g5.xlarge")]);
        assert_eq!(e.key, "orca.research/instance-typo");
        assert!(e.problem.contains("unknown") && e.problem.contains(INSTANCE_TYPE));
        assert_eq!(err(&[(INSTANCE_TYPE, "G5 xlarge")]).key, INSTANCE_TYPE);
        assert_eq!(err(&[(INSTANCE_TYPE, " ")]).problem, "is empty");
        assert!(
            err(&[(SELECTION, "cheapest")])
                .problem
                .contains("explicit, template, auto or chain")
        );
        assert!(
            err(&[(CAPACITY_TYPE, "reserved")])
                .problem
                .contains("on-demand or spot")
        );
        assert!(
            err(&[(CAPACITY_TYPE, "spot"), (MAX_SPOT_PRICE, "cheap")])
                .problem
                .contains("USD")
        );
        assert!(
            err(&[(CAPACITY_TYPE, "spot"), (MAX_SPOT_PRICE, "-1")])
                .problem
                .contains("positive")
        );
        assert!(
            err(&[(MAX_SPOT_PRICE, "0.4")])
                .problem
                .contains("capacity-type: spot")
        );
        assert!(
            err(&[(CAPACITY_RESERVATION_ID, "reservation-1")])
                .problem
                .contains("cr-")
        );
        assert!(
            err(&[(CAPACITY_RESERVATION_ID, "cr-0a"), (CAPACITY_TYPE, "spot")])
                .problem
                .contains("on-demand")
        );
        assert_eq!(
            err(&[
                (CAPACITY_RESERVATION_ID, "cr-0a"),
                (CAPACITY_RESERVATION_PREFERENCE, "open")
            ])
            .key,
            CAPACITY_RESERVATION_PREFERENCE
        );
        assert!(
            err(&[(CAPACITY_RESERVATION_PREFERENCE, "maybe")])
                .problem
                .contains("open or none")
        );
        assert!(err(&[(AMI, "debian-12")]).problem.contains("ami-"));
        assert!(
            err(&[(SELECTION, "explicit")])
                .problem
                .contains(INSTANCE_TYPE)
        );
        assert!(
            err(&[(SELECTION, "template")])
                .problem
                .contains(WORKLOAD_TEMPLATE)
        );
    }
}
