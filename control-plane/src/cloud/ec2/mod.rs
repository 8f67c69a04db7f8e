//! The EC2 provider, through aws-sdk-ec2 (and aws-sdk-iam for one read): the
//! clients (the default credential chain and region in production; endpoint
//! overrides and static credentials for `moto_server` in tests), the
//! instance-type [`catalogue`], the instance profile, security groups and
//! subnets a pod names, checked before its launch ([`resources`]), one
//! RunInstances and the meaning of its errors ([`launch`]), confirmed
//! termination and the list of the cluster's instances ([`instances`]), the
//! end dates of Capacity Reservations and Blocks ([`reservations`]), and
//! [`Ec2Provider`] over them ([`provider`]).

pub mod catalogue;
pub mod instances;
pub mod launch;
pub mod provider;
pub mod reservations;
pub mod resources;
pub mod volumes;

pub use provider::Ec2Provider;

use aws_config::BehaviorVersion;

pub use crate::config::ec2::ClientSettings;

/// An EC2 call that failed, with the SDK's whole error chain.
#[derive(Debug, thiserror::Error)]
#[error("EC2 {op} failed: {message}")]
pub struct Ec2Error {
    /// The API action.
    pub op: &'static str,
    /// What EC2 (or the transport) said.
    pub message: String,
}

impl Ec2Error {
    /// Wraps an SDK error of action `op`.
    pub fn of<E, R>(op: &'static str) -> impl FnOnce(aws_sdk_ec2::error::SdkError<E, R>) -> Self
    where
        E: std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        move |e| Self {
            op,
            message: aws_sdk_ec2::error::DisplayErrorContext(&e).to_string(),
        }
    }
}

/// An EC2 client as `settings` say.
pub async fn client(settings: &ClientSettings) -> aws_sdk_ec2::Client {
    aws_sdk_ec2::Client::new(&sdk_config(settings, settings.endpoint.as_deref()).await)
}

/// An IAM client as `settings` say (IAM is global: its endpoint, whatever the
/// region, is `iam.amazonaws.com` in the `aws` partition).
pub async fn iam_client(settings: &ClientSettings) -> aws_sdk_iam::Client {
    aws_sdk_iam::Client::new(&sdk_config(settings, settings.iam_endpoint.as_deref()).await)
}

async fn sdk_config(settings: &ClientSettings, endpoint: Option<&str>) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(region) = &settings.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    if let Some(timeout) = settings.call_timeout {
        loader = loader.timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .operation_timeout(timeout)
                .build(),
        );
    }
    if let Some(endpoint) = endpoint {
        loader = loader.endpoint_url(endpoint);
    }
    if let Some((key, secret)) = &settings.static_credentials {
        loader = loader.credentials_provider(aws_sdk_ec2::config::Credentials::new(
            key.clone(),
            secret.clone(),
            None,
            None,
            "orca-static",
        ));
    }
    loader.load().await
}
