//! The cluster's instances after launch: termination, confirmed by
//! DescribeInstances (an instance is fenced once EC2 says `shutting-down` or
//! `terminated`, not when TerminateInstances returns), and the list of live
//! instances carrying the cluster's tag, for the sweep.

use std::time::{Duration, Instant};

use aws_sdk_ec2::error::ProvideErrorMetadata as _;
use aws_sdk_ec2::types::{Filter, InstanceStateName};

use super::Ec2Error;
use super::launch::{TAG_ATTEMPT, TAG_CLUSTER, TAG_NODE, TAG_POD_UID};
use crate::cloud::TaggedInstance;

/// How often a termination is checked while it is being confirmed.
const CONFIRM_POLL: Duration = Duration::from_millis(200);

/// EC2's answer for an id it does not know (never made, or long gone).
fn not_found(code: Option<&str>) -> bool {
    matches!(
        code,
        Some("InvalidInstanceID.NotFound" | "InvalidInstanceID.Malformed")
    )
}

/// The state of one instance; `None` when EC2 no longer knows it.
async fn state(
    client: &aws_sdk_ec2::Client,
    instance_id: &str,
) -> Result<Option<InstanceStateName>, Ec2Error> {
    let out = match client
        .describe_instances()
        .instance_ids(instance_id)
        .send()
        .await
    {
        Ok(out) => out,
        Err(e) if not_found(e.code()) => return Ok(None),
        Err(e) => return Err(Ec2Error::of("DescribeInstances")(e)),
    };
    Ok(out
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .find(|i| i.instance_id() == Some(instance_id))
        .and_then(|i| i.state()?.name().cloned()))
}

/// Terminates an instance and waits (up to `confirm_within`) until EC2 reports
/// it `shutting-down` or `terminated`. An unknown id is already gone.
pub async fn terminate(
    client: &aws_sdk_ec2::Client,
    instance_id: &str,
    confirm_within: Duration,
) -> Result<(), Ec2Error> {
    match client
        .terminate_instances()
        .instance_ids(instance_id)
        .send()
        .await
    {
        Ok(_) => {}
        Err(e) if not_found(e.code()) => return Ok(()),
        Err(e) => return Err(Ec2Error::of("TerminateInstances")(e)),
    }
    let deadline = Instant::now() + confirm_within;
    loop {
        let now = state(client, instance_id).await?;
        match now {
            None | Some(InstanceStateName::ShuttingDown | InstanceStateName::Terminated) => {
                return Ok(());
            }
            Some(other) if Instant::now() >= deadline => {
                return Err(Ec2Error {
                    op: "TerminateInstances",
                    message: format!(
                        "{instance_id} is still {} after {confirm_within:?}",
                        other.as_str()
                    ),
                });
            }
            Some(_) => tokio::time::sleep(CONFIRM_POLL).await,
        }
    }
}

/// Stops an instance (a warm-pool instance, once its agent has joined); EC2
/// finishes it in the background.
pub async fn stop(client: &aws_sdk_ec2::Client, instance_id: &str) -> Result<(), Ec2Error> {
    client
        .stop_instances()
        .instance_ids(instance_id)
        .send()
        .await
        .map(drop)
        .map_err(Ec2Error::of("StopInstances"))
}

/// Starts a stopped instance (a warm-pool instance taken by a pod).
pub async fn start(client: &aws_sdk_ec2::Client, instance_id: &str) -> Result<(), Ec2Error> {
    client
        .start_instances()
        .instance_ids(instance_id)
        .send()
        .await
        .map(drop)
        .map_err(Ec2Error::of("StartInstances"))
}

/// Every instance tagged for `cluster` that is not shutting down or terminated.
pub async fn tagged(
    client: &aws_sdk_ec2::Client,
    cluster: &str,
) -> Result<Vec<TaggedInstance>, Ec2Error> {
    let mut pages = client
        .describe_instances()
        .filters(
            Filter::builder()
                .name(format!("tag:{TAG_CLUSTER}"))
                .values(cluster)
                .build(),
        )
        .filters(
            Filter::builder()
                .name("instance-state-name")
                .set_values(Some(
                    ["pending", "running", "stopping", "stopped"]
                        .map(String::from)
                        .to_vec(),
                ))
                .build(),
        )
        .into_paginator()
        .send();
    let mut out = Vec::new();
    while let Some(page) = pages.next().await {
        let page = page.map_err(Ec2Error::of("DescribeInstances"))?;
        for i in page.reservations().iter().flat_map(|r| r.instances()) {
            let tag = |key: &str| {
                i.tags()
                    .iter()
                    .find(|t| t.key() == Some(key))
                    .and_then(|t| t.value())
                    .unwrap_or_default()
                    .to_owned()
            };
            out.push(TaggedInstance {
                instance_id: i.instance_id().unwrap_or_default().to_owned(),
                node: tag(TAG_NODE),
                pod_uid: tag(TAG_POD_UID),
                attempt: tag(TAG_ATTEMPT).parse().unwrap_or(0),
                state: i
                    .state()
                    .and_then(|s| s.name())
                    .map(|n| n.as_str().to_owned())
                    .unwrap_or_default(),
            });
        }
    }
    Ok(out)
}
