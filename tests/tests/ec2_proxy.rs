//! The EC2 proxy in front of moto, driven through the real aws-sdk-ec2: EC2's
//! ClientToken idempotency (which moto ignores), error answers the SDK parses as
//! EC2's, and a lost answer whose retry finds the instance already made.

use aws_sdk_ec2::types::{Filter, InstanceType, ResourceType, Tag, TagSpecification};
use orca_tests::env::{Ec2Proxy, Fault, Moto, ec2_client};

/// An AMI moto accepts.
const AMI: &str = "ami-12c6146b";

async fn launch(
    client: &aws_sdk_ec2::Client,
    token: &str,
) -> Result<
    String,
    aws_sdk_ec2::error::SdkError<aws_sdk_ec2::operation::run_instances::RunInstancesError>,
> {
    let out = client
        .run_instances()
        .image_id(AMI)
        .instance_type(InstanceType::G5Xlarge)
        .min_count(1)
        .max_count(1)
        .client_token(token)
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Instance)
                .tags(Tag::builder().key("orca-test/token").value(token).build())
                .build(),
        )
        .send()
        .await?;
    Ok(out.instances()[0].instance_id().unwrap().to_owned())
}

async fn instances_with_token(client: &aws_sdk_ec2::Client, token: &str) -> Vec<String> {
    let out = client
        .describe_instances()
        .filters(
            Filter::builder()
                .name("tag:orca-test/token")
                .values(token)
                .build(),
        )
        .send()
        .await
        .expect("DescribeInstances");
    out.reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter_map(|i| i.instance_id().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_keeps_client_tokens_idempotent_and_injects_ec2_errors() {
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(dir.path()).expect("moto_server starts");
    let proxy = Ec2Proxy::start(&moto.endpoint).await.expect("proxy");
    let client = ec2_client(&proxy.endpoint).await;

    // The same ClientToken twice: one instance, the same answer.
    let first = launch(&client, "token-a").await.expect("launch");
    let again = launch(&client, "token-a").await.expect("launch again");
    assert_eq!(first, again);
    assert_eq!(instances_with_token(&client, "token-a").await, vec![first]);
    assert_eq!(proxy.calls_of("RunInstances").len(), 2);
    assert_eq!(
        proxy.calls_of("RunInstances")[0]
            .params
            .get("ClientToken")
            .map(String::as_str),
        Some("token-a")
    );

    // Insufficient capacity, as EC2 answers it: the SDK parses the code. The SDK's
    // standard retry repeats 5xx answers, so the fault outlasts its attempts.
    proxy.fail(
        "RunInstances",
        10,
        Fault::error(
            "InsufficientInstanceCapacity",
            "We currently do not have sufficient g5.xlarge capacity in the Availability Zone you requested (us-east-1a).",
            500,
        ),
    );
    let e = launch(&client, "token-b").await.unwrap_err();
    let e = e.into_service_error();
    assert_eq!(
        aws_sdk_ec2::error::ProvideErrorMetadata::code(&e),
        Some("InsufficientInstanceCapacity")
    );
    let attempts = proxy
        .calls_of("RunInstances")
        .iter()
        .filter(|c| c.params.get("ClientToken").map(String::as_str) == Some("token-b"))
        .count();
    eprintln!(
        "aws-sdk-ec2 made {attempts} attempts at a RunInstances answered 500 InsufficientInstanceCapacity"
    );
    assert!(attempts >= 1);
    assert!(instances_with_token(&client, "token-b").await.is_empty());
    // A client error (400) is not retried by the SDK.
    proxy.clear_faults();
    proxy.fail(
        "RunInstances",
        1,
        Fault::error(
            "InstanceLimitExceeded",
            "You have requested more instances than your current instance limit allows.",
            400,
        ),
    );
    let e = launch(&client, "token-c")
        .await
        .unwrap_err()
        .into_service_error();
    assert_eq!(
        aws_sdk_ec2::error::ProvideErrorMetadata::code(&e),
        Some("InstanceLimitExceeded")
    );

    // The answer to a launch is lost (the instance is made): the retry with the
    // same token gets that instance, never a second one.
    proxy.fail("RunInstances", 1, Fault::DropResponse);
    let made = match launch(&client, "token-d").await {
        Ok(id) => id,
        // Where the SDK does not retry a lost answer, the caller does, with the same token.
        Err(_) => launch(&client, "token-d")
            .await
            .expect("retry with the same token"),
    };
    assert_eq!(instances_with_token(&client, "token-d").await, [made]);
    assert!(
        proxy.calls_of("RunInstances").iter().any(|c| c.status == 0),
        "one answer was dropped"
    );
}
