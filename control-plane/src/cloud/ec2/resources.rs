//! The instance profile, security groups and subnets a pod's instance is to be
//! launched with, checked before RunInstances is sent: the profile exists
//! (`iam:GetInstanceProfile`; an ARN must be that profile's, and the profile
//! must hold a role, or the pod would get no credentials), each subnet exists
//! (`ec2:DescribeSubnets`), each group exists (`ec2:DescribeSecurityGroups`)
//! and is in every subnet's VPC. A value that fails is an
//! [`ResourceError::Invalid`] naming it and where it came from (the
//! annotation, or the config field), so the pod fails before anything is
//! launched; so is a read the control plane's IAM policy denies (the policy
//! in `deploy/` scopes `iam:GetInstanceProfile` to the profiles it may pass).
//! A question EC2 or IAM did not answer (throttling, the network) is
//! [`ResourceError::Unanswered`] and asked again later.
//!
//! What was found is remembered for [`CACHE_TTL`] (what was not found is not
//! remembered: a group created a moment later is seen at once), so a burst of
//! pods asking for the same network costs one call per resource. A resource
//! deleted within that time is caught by RunInstances itself, whose error fails
//! the pod as any launch error does.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use orca_model::selection::annotations::InstanceProfile;

/// How long a resource that was found is taken to exist without asking again.
pub const CACHE_TTL: Duration = Duration::from_secs(60);

/// EC2's and IAM's codes for "no such resource" (and for an id that cannot be
/// one), which fail the pod rather than being asked again.
const NOT_FOUND: &[&str] = &[
    "InvalidSubnetID.NotFound",
    "InvalidSubnetID.Malformed",
    "InvalidSubnet",
    "InvalidGroup.NotFound",
    "InvalidGroupId.Malformed",
    "NoSuchEntity",
];

/// EC2's and IAM's codes for a call the caller's policy does not allow.
const DENIED: &[&str] = &[
    "UnauthorizedOperation",
    "AccessDenied",
    "AccessDeniedException",
];

/// Why a pod's launch resources cannot be used now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourceError {
    /// A resource does not exist, or does not go with the others: the pod
    /// cannot be launched this way.
    #[error("{0}")]
    Invalid(String),
    /// EC2 or IAM did not answer the question (throttled, unreachable): ask
    /// again later.
    #[error("{0}")]
    Unanswered(String),
}

/// A value and where it came from (`orca.research/subnet`, `provider.ec2.subnets`),
/// for the messages.
#[derive(Debug)]
pub struct Named<'a, T: ?Sized> {
    /// The value.
    pub value: &'a T,
    /// The annotation or config field that gave it.
    pub from: &'a str,
}

impl<T: ?Sized> Clone for Named<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T: ?Sized> Copy for Named<'_, T> {}

/// What a launch is to use, to be checked.
#[derive(Debug, Default)]
pub struct Wanted<'a> {
    /// The instance profile, and the role it must hold when it was mapped from
    /// one (IRSA-style).
    pub profile: Option<(Named<'a, InstanceProfile>, Option<&'a str>)>,
    /// Security groups (empty: the subnet's default, nothing to check).
    pub groups: Option<Named<'a, [String]>>,
    /// Subnets (empty: EC2's default subnet, whose VPC the groups are not
    /// checked against).
    pub subnets: Option<Named<'a, [String]>>,
}

/// What is known to exist.
#[derive(Debug, Clone)]
enum Found {
    /// A subnet or security group, with its VPC (none: a group outside any VPC).
    InVpc(Option<String>),
    /// An instance profile: its ARN and the ARNs of its roles.
    Profile { arn: String, roles: Vec<String> },
}

/// Resources found, each until [`CACHE_TTL`] has passed.
#[derive(Debug, Default)]
pub struct Cache {
    found: Mutex<HashMap<String, (Found, Instant)>>,
}

impl Cache {
    fn get(&self, key: &str) -> Option<Found> {
        let mut found = self.found.lock().unwrap_or_else(|p| p.into_inner());
        found.retain(|_, (_, at)| at.elapsed() < CACHE_TTL);
        found.get(key).map(|(f, _)| f.clone())
    }

    fn put(&self, key: String, value: Found) {
        self.found
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, (value, Instant::now()));
    }
}

/// Whether `e` says the resource does not exist (`Ok`); that the control
/// plane may not read it ([`ResourceError::Invalid`]: the deployment's policy
/// keeps it out, which waiting does not change); or why it was not answered.
fn classify<E, R>(e: SdkError<E, R>, op: &str, what: &str) -> Result<(), ResourceError>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let code = e.as_service_error().and_then(|s| s.code());
    if code.is_some_and(|c| NOT_FOUND.contains(&c)) {
        return Ok(());
    }
    if let Some(code) = code.filter(|c| DENIED.contains(c)) {
        return Err(ResourceError::Invalid(format!(
            "the control plane may not read {what} ({op}: {code}): allow it in its IAM policy"
        )));
    }
    Err(ResourceError::Unanswered(format!(
        "{op} failed: {}",
        DisplayErrorContext(&e)
    )))
}

/// A subnet's or a group's VPC; `None` when it does not exist.
async fn subnet_vpc(
    ec2: &aws_sdk_ec2::Client,
    cache: &Cache,
    id: &str,
) -> Result<Option<Option<String>>, ResourceError> {
    let key = format!("subnet:{id}");
    if let Some(Found::InVpc(vpc)) = cache.get(&key) {
        return Ok(Some(vpc));
    }
    match ec2.describe_subnets().subnet_ids(id).send().await {
        Ok(out) => {
            let Some(subnet) = out.subnets().iter().find(|s| s.subnet_id() == Some(id)) else {
                return Ok(None);
            };
            let vpc = subnet.vpc_id().map(str::to_owned);
            cache.put(key, Found::InVpc(vpc.clone()));
            Ok(Some(vpc))
        }
        Err(e) => classify(e, "DescribeSubnets", &format!("subnet {id}")).map(|()| None),
    }
}

async fn group_vpc(
    ec2: &aws_sdk_ec2::Client,
    cache: &Cache,
    id: &str,
) -> Result<Option<Option<String>>, ResourceError> {
    let key = format!("sg:{id}");
    if let Some(Found::InVpc(vpc)) = cache.get(&key) {
        return Ok(Some(vpc));
    }
    match ec2.describe_security_groups().group_ids(id).send().await {
        Ok(out) => {
            let Some(group) = out
                .security_groups()
                .iter()
                .find(|g| g.group_id() == Some(id))
            else {
                return Ok(None);
            };
            let vpc = group.vpc_id().map(str::to_owned);
            cache.put(key, Found::InVpc(vpc.clone()));
            Ok(Some(vpc))
        }
        Err(e) => {
            classify(e, "DescribeSecurityGroups", &format!("security group {id}")).map(|()| None)
        }
    }
}

/// An instance profile's ARN and role ARNs; `None` when it does not exist.
async fn profile(
    iam: &aws_sdk_iam::Client,
    cache: &Cache,
    name: &str,
) -> Result<Option<(String, Vec<String>)>, ResourceError> {
    let key = format!("profile:{name}");
    if let Some(Found::Profile { arn, roles }) = cache.get(&key) {
        return Ok(Some((arn, roles)));
    }
    match iam
        .get_instance_profile()
        .instance_profile_name(name)
        .send()
        .await
    {
        Ok(out) => {
            let Some(p) = out.instance_profile() else {
                return Ok(None);
            };
            let arn = p.arn().to_owned();
            let roles: Vec<String> = p.roles().iter().map(|r| r.arn().to_owned()).collect();
            cache.put(
                key,
                Found::Profile {
                    arn: arn.clone(),
                    roles: roles.clone(),
                },
            );
            Ok(Some((arn, roles)))
        }
        Err(e) => {
            classify(e, "GetInstanceProfile", &format!("instance profile {name}")).map(|()| None)
        }
    }
}

/// Checks everything `wanted` names, in order: the profile, the subnets, the
/// groups (each against every subnet's VPC). The first problem is the answer.
pub async fn check(
    ec2: &aws_sdk_ec2::Client,
    iam: &aws_sdk_iam::Client,
    cache: &Cache,
    wanted: &Wanted<'_>,
) -> Result<(), ResourceError> {
    let invalid = |m: String| Err(ResourceError::Invalid(m));
    if let Some((p, role)) = &wanted.profile {
        let Some((arn, roles)) = profile(iam, cache, p.value.name()).await? else {
            return invalid(format!(
                "instance profile {} ({}) does not exist",
                p.value, p.from
            ));
        };
        if let InstanceProfile::Arn(asked) = p.value
            && *asked != arn
        {
            return invalid(format!(
                "instance profile {asked} ({}) does not exist; the profile named {} is {arn}",
                p.from,
                p.value.name()
            ));
        }
        match role {
            Some(role) if !roles.iter().any(|r| r == role) => {
                return invalid(format!(
                    "instance profile {} ({}) does not hold role {role} (it holds: {})",
                    p.value,
                    p.from,
                    if roles.is_empty() {
                        "none".to_owned()
                    } else {
                        roles.join(", ")
                    }
                ));
            }
            _ if roles.is_empty() => {
                return invalid(format!(
                    "instance profile {} ({}) holds no role: the pod would get no credentials",
                    p.value, p.from
                ));
            }
            _ => {}
        }
    }
    let mut subnet_vpcs = Vec::new();
    if let Some(subnets) = &wanted.subnets {
        for id in subnets.value {
            match subnet_vpc(ec2, cache, id).await? {
                Some(vpc) => subnet_vpcs.push((id, vpc)),
                None => {
                    return invalid(format!("subnet {id} ({}) does not exist", subnets.from));
                }
            }
        }
    }
    if let Some(groups) = &wanted.groups {
        for id in groups.value {
            let Some(vpc) = group_vpc(ec2, cache, id).await? else {
                return invalid(format!(
                    "security group {id} ({}) does not exist",
                    groups.from
                ));
            };
            let from = wanted.subnets.as_ref().map_or("", |s| s.from);
            for (subnet, subnet_vpc) in &subnet_vpcs {
                if let (Some(g), Some(s)) = (&vpc, subnet_vpc)
                    && g != s
                {
                    return invalid(format!(
                        "security group {id} ({}) is in {g}, but subnet {subnet} ({from}) is in {s}",
                        groups.from
                    ));
                }
            }
        }
    }
    Ok(())
}
