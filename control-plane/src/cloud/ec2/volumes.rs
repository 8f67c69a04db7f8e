//! EBS volumes of claims: described, created (tagged, idempotent per claim),
//! attached to a pod's instance, detached before it is terminated (waiting for
//! `available`), deleted.
//!
//! EC2's rules this follows (AWS documentation): a volume attaches only to an
//! instance in its availability zone; AttachVolume answers `IncorrectState`
//! while the instance is `pending`, so it is repeated until the instance runs;
//! a volume being detached is `in-use` with an attachment `detaching` until it
//! is `available`; the device name given to AttachVolume (`/dev/sdf`..) is not
//! the one a Nitro instance shows (the agent finds the volume by id). Only
//! volumes attached under the device names ORCA gives (`/dev/sdf`..`/dev/sdp`)
//! and not deleted on termination are detached here: the root volume
//! (`/dev/xvda`, `/dev/sda1`) goes with the instance.

use std::time::{Duration, Instant};

use aws_sdk_ec2::error::ProvideErrorMetadata as _;
use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification, VolumeType};

use super::Ec2Error;
use super::launch::TAG_CLUSTER;
use crate::cloud::{NewVolume, VolumeInfo};

/// Tag of a volume ORCA created: the claim (`namespace/name`).
pub const TAG_CLAIM: &str = "orca.research/claim";
/// Tag of a volume ORCA created: the claim's uid.
pub const TAG_CLAIM_UID: &str = "orca.research/claim-uid";
/// How often a volume's state is read while waiting for it.
const POLL: Duration = Duration::from_millis(200);
/// Device names AttachVolume is given, one per claim of the pod (EC2's
/// recommended range for EBS data volumes on Linux).
const DEVICES: &[&str] = &[
    "/dev/sdf", "/dev/sdg", "/dev/sdh", "/dev/sdi", "/dev/sdj", "/dev/sdk", "/dev/sdl", "/dev/sdm",
    "/dev/sdn", "/dev/sdo", "/dev/sdp",
];

/// Why a volume operation failed.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// EC2 does not know the volume.
    #[error("EBS volume {0} does not exist")]
    NotFound(String),
    /// The volume or the instance is not in a state that allows it now (the
    /// instance still pending, the volume attached elsewhere).
    #[error("{0}")]
    NotNow(String),
    /// Anything else EC2 said.
    #[error(transparent)]
    Ec2(#[from] Ec2Error),
}

fn volume_not_found(code: Option<&str>) -> bool {
    matches!(
        code,
        Some("InvalidVolume.NotFound" | "InvalidVolumeID.Malformed")
    )
}

/// A volume as EC2 describes it.
pub async fn describe(
    client: &aws_sdk_ec2::Client,
    volume_id: &str,
) -> Result<VolumeInfo, VolumeError> {
    let out = match client.describe_volumes().volume_ids(volume_id).send().await {
        Ok(out) => out,
        Err(e) if volume_not_found(e.code()) => {
            return Err(VolumeError::NotFound(volume_id.to_owned()));
        }
        Err(e) => return Err(Ec2Error::of("DescribeVolumes")(e).into()),
    };
    let v = out
        .volumes()
        .iter()
        .find(|v| v.volume_id() == Some(volume_id))
        .ok_or_else(|| VolumeError::NotFound(volume_id.to_owned()))?;
    Ok(VolumeInfo {
        volume_id: volume_id.to_owned(),
        zone: v.availability_zone().unwrap_or_default().to_owned(),
        state: v.state().map(|s| s.as_str().to_owned()).unwrap_or_default(),
        attached_to: v
            .attachments()
            .iter()
            .find(|a| a.state().is_none_or(|s| s.as_str() != "detached"))
            .and_then(|a| a.instance_id())
            .map(str::to_owned),
    })
}

/// Waits until the volume is in `state` (at most `within`).
async fn wait_state(
    client: &aws_sdk_ec2::Client,
    volume_id: &str,
    state: &str,
    within: Duration,
) -> Result<VolumeInfo, VolumeError> {
    let deadline = Instant::now() + within;
    loop {
        let v = describe(client, volume_id).await?;
        if v.state == state {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(VolumeError::NotNow(format!(
                "EBS volume {volume_id} is still {} after {within:?}, not {state}",
                v.state
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The availability zone of a subnet; of EC2's default subnets (the first zone
/// by name) when `subnet` is `None`.
pub async fn subnet_zone(
    client: &aws_sdk_ec2::Client,
    subnet: Option<&str>,
) -> Result<String, Ec2Error> {
    let req = client.describe_subnets();
    let req = match subnet {
        Some(id) => req.subnet_ids(id),
        None => req.filters(
            Filter::builder()
                .name("default-for-az")
                .values("true")
                .build(),
        ),
    };
    let out = req.send().await.map_err(Ec2Error::of("DescribeSubnets"))?;
    let mut zones: Vec<String> = out
        .subnets()
        .iter()
        .filter_map(|s| s.availability_zone().map(str::to_owned))
        .collect();
    zones.sort();
    zones.into_iter().next().ok_or_else(|| Ec2Error {
        op: "DescribeSubnets",
        message: match subnet {
            Some(id) => format!("subnet {id} not found"),
            None => "no default subnet".into(),
        },
    })
}

/// EC2's default subnet in `zone`, if there is one.
pub async fn default_subnet(
    client: &aws_sdk_ec2::Client,
    zone: &str,
) -> Result<Option<String>, Ec2Error> {
    let out = client
        .describe_subnets()
        .filters(
            Filter::builder()
                .name("default-for-az")
                .values("true")
                .build(),
        )
        .filters(
            Filter::builder()
                .name("availability-zone")
                .values(zone)
                .build(),
        )
        .send()
        .await
        .map_err(Ec2Error::of("DescribeSubnets"))?;
    Ok(out
        .subnets()
        .iter()
        .find_map(|s| s.subnet_id().map(str::to_owned)))
}

/// Creates a claim's volume (the claim's uid is the idempotency token, so a
/// repeated call makes no second volume) and waits until it is `available`.
pub async fn create(
    client: &aws_sdk_ec2::Client,
    cluster: &str,
    req: &NewVolume,
    within: Duration,
) -> Result<VolumeInfo, VolumeError> {
    let tag = |k: &str, v: &str| Tag::builder().key(k).value(v).build();
    let out = client
        .create_volume()
        .availability_zone(&req.zone)
        .size(req.size_gib)
        .volume_type(VolumeType::from(req.volume_type.as_str()))
        .client_token(&req.claim_uid)
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Volume)
                .tags(tag(TAG_CLUSTER, cluster))
                .tags(tag(TAG_CLAIM, &req.claim))
                .tags(tag(TAG_CLAIM_UID, &req.claim_uid))
                .build(),
        )
        .send()
        .await
        .map_err(Ec2Error::of("CreateVolume"))?;
    let id = out.volume_id().unwrap_or_default().to_owned();
    wait_state(client, &id, "available", within).await
}

/// Attaches a volume to an instance as the `index`th data volume; repeated while
/// the instance is still pending, for at most `within`.
pub async fn attach(
    client: &aws_sdk_ec2::Client,
    volume_id: &str,
    instance_id: &str,
    index: usize,
    within: Duration,
) -> Result<(), VolumeError> {
    let device = DEVICES[index.min(DEVICES.len() - 1)];
    let deadline = Instant::now() + within;
    loop {
        let sent = client
            .attach_volume()
            .volume_id(volume_id)
            .instance_id(instance_id)
            .device(device)
            .send()
            .await;
        match sent {
            Ok(_) => return Ok(()),
            Err(e) if e.code() == Some("IncorrectState") && Instant::now() < deadline => {
                tokio::time::sleep(POLL).await;
            }
            Err(e) if volume_not_found(e.code()) => {
                return Err(VolumeError::NotFound(volume_id.to_owned()));
            }
            Err(e) if matches!(e.code(), Some("VolumeInUse" | "IncorrectState")) => {
                return Err(VolumeError::NotNow(format!(
                    "AttachVolume {volume_id} to {instance_id}: {}",
                    e.message().unwrap_or_default()
                )));
            }
            Err(e) => return Err(Ec2Error::of("AttachVolume")(e).into()),
        }
    }
}

/// Detaches every data volume ORCA attached to `instance_id` (one of
/// [`DEVICES`], DeleteOnTermination false) and waits until each is `available`.
pub async fn detach_all(
    client: &aws_sdk_ec2::Client,
    instance_id: &str,
    within: Duration,
) -> Result<Vec<String>, VolumeError> {
    let out = client
        .describe_volumes()
        .filters(
            Filter::builder()
                .name("attachment.instance-id")
                .values(instance_id)
                .build(),
        )
        .send()
        .await
        .map_err(Ec2Error::of("DescribeVolumes"))?;
    let ids: Vec<String> = out
        .volumes()
        .iter()
        .filter(|v| {
            v.attachments().iter().any(|a| {
                a.instance_id() == Some(instance_id)
                    && a.delete_on_termination() != Some(true)
                    && a.device().is_some_and(|d| DEVICES.contains(&d))
            })
        })
        .filter_map(|v| v.volume_id().map(str::to_owned))
        .collect();
    for id in &ids {
        match client
            .detach_volume()
            .volume_id(id)
            .instance_id(instance_id)
            .send()
            .await
        {
            Ok(_) => {}
            // Detached meanwhile.
            Err(e) if e.code() == Some("IncorrectState") || volume_not_found(e.code()) => {}
            Err(e) => return Err(Ec2Error::of("DetachVolume")(e).into()),
        }
    }
    for id in &ids {
        wait_state(client, id, "available", within).await?;
    }
    Ok(ids)
}

/// Deletes a volume; one already gone is not an error, one still attached is
/// [`VolumeError::NotNow`].
pub async fn delete(client: &aws_sdk_ec2::Client, volume_id: &str) -> Result<(), VolumeError> {
    match client.delete_volume().volume_id(volume_id).send().await {
        Ok(_) => Ok(()),
        Err(e) if volume_not_found(e.code()) => Ok(()),
        Err(e) if matches!(e.code(), Some("VolumeInUse" | "IncorrectState")) => {
            Err(VolumeError::NotNow(format!(
                "EBS volume {volume_id} is still attached: {}",
                e.message().unwrap_or_default()
            )))
        }
        Err(e) => Err(Ec2Error::of("DeleteVolume")(e).into()),
    }
}
