//! The EC2 proxy in front of moto, driven through the real aws-sdk-ec2: EC2's
//! ClientToken idempotency (which moto ignores), error answers the SDK parses as
//! EC2's, a lost answer whose retry finds the instance already made, and the
//! capacity reservations the proxy emulates (moto has none).

use aws_sdk_ec2::error::ProvideErrorMetadata as _;
use aws_sdk_ec2::types::{
    CapacityReservationInstancePlatform, CapacityReservationPreference,
    CapacityReservationSpecification, CapacityReservationState, CapacityReservationTarget,
    EndDateType, Filter, Instance, InstanceMatchCriteria, InstanceType, ResourceType, Tag,
    TagSpecification,
};
use orca_tests::env::{Ec2Proxy, Fault, Moto, ReservationView, ec2_client};

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

/// RunInstances of one `instance_type` with a capacity reservation specification;
/// the SDK's error code on failure.
async fn launch_with(
    client: &aws_sdk_ec2::Client,
    instance_type: InstanceType,
    spec: CapacityReservationSpecification,
) -> Result<Instance, String> {
    client
        .run_instances()
        .image_id(AMI)
        .instance_type(instance_type)
        .min_count(1)
        .max_count(1)
        .capacity_reservation_specification(spec)
        .send()
        .await
        .map(|out| out.instances()[0].clone())
        .map_err(|e| {
            let e = e.into_service_error();
            e.code().unwrap_or("no code").to_owned()
        })
}

fn target(id: &str) -> CapacityReservationSpecification {
    CapacityReservationSpecification::builder()
        .capacity_reservation_target(
            CapacityReservationTarget::builder()
                .capacity_reservation_id(id)
                .build(),
        )
        .build()
}

fn targeted_id(instance: &Instance) -> Option<&str> {
    instance
        .capacity_reservation_specification()?
        .capacity_reservation_target()?
        .capacity_reservation_id()
}

async fn described_available(client: &aws_sdk_ec2::Client, id: &str) -> i32 {
    let out = client
        .describe_capacity_reservations()
        .capacity_reservation_ids(id)
        .send()
        .await
        .expect("DescribeCapacityReservations");
    out.capacity_reservations()[0]
        .available_instance_count()
        .unwrap()
}

async fn described(client: &aws_sdk_ec2::Client, instance_id: &str) -> Instance {
    let out = client
        .describe_instances()
        .instance_ids(instance_id)
        .send()
        .await
        .expect("DescribeInstances");
    out.reservations()[0].instances()[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_emulates_capacity_reservations_and_targeted_launches() {
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(dir.path()).expect("moto_server starts");
    let proxy = Ec2Proxy::start(&moto.endpoint).await.expect("proxy");
    let client = ec2_client(&proxy.endpoint).await;

    // Create and describe a reservation of two g5.xlarge in us-east-1a.
    let created = client
        .create_capacity_reservation()
        .instance_type("g5.xlarge")
        .instance_platform(CapacityReservationInstancePlatform::LinuxUnix)
        .availability_zone("us-east-1a")
        .instance_count(2)
        .end_date_type(EndDateType::Unlimited)
        .instance_match_criteria(InstanceMatchCriteria::Targeted)
        .send()
        .await
        .expect("CreateCapacityReservation");
    let cr = created.capacity_reservation().expect("a reservation");
    let id = cr.capacity_reservation_id().unwrap().to_owned();
    assert!(
        id.len() == 20 && id.starts_with("cr-"),
        "cr- and 17 hex digits: {id}"
    );
    assert_eq!(cr.state(), Some(&CapacityReservationState::Active));
    assert_eq!(cr.total_instance_count(), Some(2));
    assert_eq!(cr.available_instance_count(), Some(2));
    assert_eq!(cr.instance_type(), Some("g5.xlarge"));
    assert_eq!(cr.availability_zone(), Some("us-east-1a"));
    assert_eq!(
        cr.instance_match_criteria(),
        Some(&InstanceMatchCriteria::Targeted)
    );
    assert_eq!(
        cr.instance_platform(),
        Some(&CapacityReservationInstancePlatform::LinuxUnix)
    );
    let all = client
        .describe_capacity_reservations()
        .send()
        .await
        .expect("DescribeCapacityReservations");
    assert_eq!(all.capacity_reservations().len(), 1);
    assert_eq!(
        all.capacity_reservations()[0].capacity_reservation_id(),
        Some(id.as_str())
    );
    let view = |available| ReservationView {
        id: id.clone(),
        instance_type: "g5.xlarge".into(),
        availability_zone: "us-east-1a".into(),
        total: 2,
        available,
        state: "active".into(),
        end: None,
    };
    assert_eq!(proxy.reservation(&id), Some(view(2)));

    // Two launches fill it: each instance names it, in its zone, 2 → 1 → 0.
    let mut launched = Vec::new();
    for left in [1, 0] {
        let instance = launch_with(&client, InstanceType::G5Xlarge, target(&id))
            .await
            .expect("launch into the reservation");
        assert_eq!(instance.capacity_reservation_id(), Some(id.as_str()));
        assert_eq!(targeted_id(&instance), Some(id.as_str()));
        assert_eq!(
            instance.placement().and_then(|p| p.availability_zone()),
            Some("us-east-1a")
        );
        assert_eq!(described_available(&client, &id).await, left);
        assert_eq!(proxy.reservation(&id), Some(view(left as u32)));
        launched.push(instance.instance_id().unwrap().to_owned());
    }
    // moto never saw the specification; DescribeInstances shows it as EC2 does.
    for call in proxy.calls_of("RunInstances") {
        assert!(
            call.params.contains_key(
                "CapacityReservationSpecification.CapacityReservationTarget.CapacityReservationId"
            ),
            "the log keeps what the client sent"
        );
    }
    let first = described(&client, &launched[0]).await;
    assert_eq!(first.capacity_reservation_id(), Some(id.as_str()));
    assert_eq!(targeted_id(&first), Some(id.as_str()));

    // A third does not fit; nor does another instance type.
    assert_eq!(
        launch_with(&client, InstanceType::G5Xlarge, target(&id))
            .await
            .unwrap_err(),
        "ReservationCapacityExceeded"
    );
    assert_eq!(
        launch_with(&client, InstanceType::P4d24xlarge, target(&id))
            .await
            .unwrap_err(),
        "ReservationCapacityExceeded"
    );
    assert_eq!(
        proxy.reservation(&id),
        Some(view(0)),
        "refusals take nothing"
    );

    // Terminating one frees its slot, once.
    for _ in 0..2 {
        client
            .terminate_instances()
            .instance_ids(&launched[0])
            .send()
            .await
            .expect("TerminateInstances");
    }
    assert_eq!(described_available(&client, &id).await, 1);
    let third = launch_with(&client, InstanceType::G5Xlarge, target(&id))
        .await
        .expect("launch into the freed slot");
    assert_eq!(third.capacity_reservation_id(), Some(id.as_str()));
    assert_eq!(described_available(&client, &id).await, 0);

    // Unknown and malformed ids.
    assert_eq!(
        launch_with(
            &client,
            InstanceType::G5Xlarge,
            target("cr-0123456789abcdef0")
        )
        .await
        .unwrap_err(),
        "InvalidCapacityReservationId.NotFound"
    );
    assert_eq!(
        launch_with(&client, InstanceType::G5Xlarge, target("cr-123"))
            .await
            .unwrap_err(),
        "InvalidCapacityReservationId.Malformed"
    );
    let e = client
        .describe_capacity_reservations()
        .capacity_reservation_ids("cr-0123456789abcdef0")
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert_eq!(e.code(), Some("InvalidCapacityReservationId.NotFound"));

    // Preference `none` launches outside any reservation, and says so.
    let none = CapacityReservationSpecification::builder()
        .capacity_reservation_preference(CapacityReservationPreference::None)
        .build();
    let plain = launch_with(&client, InstanceType::G5Xlarge, none)
        .await
        .expect("launch with preference none");
    assert_eq!(plain.capacity_reservation_id(), None);
    let preference = |i: &Instance| {
        i.capacity_reservation_specification()
            .and_then(|s| s.capacity_reservation_preference())
            .cloned()
    };
    assert_eq!(
        preference(&plain),
        Some(CapacityReservationPreference::None)
    );
    let plain = described(&client, plain.instance_id().unwrap()).await;
    assert_eq!(
        preference(&plain),
        Some(CapacityReservationPreference::None)
    );
    assert_eq!(described_available(&client, &id).await, 0);

    // Cancel: the reservation stays visible, cancelled, and takes no launch.
    let cancelled = client
        .cancel_capacity_reservation()
        .capacity_reservation_id(&id)
        .send()
        .await
        .expect("CancelCapacityReservation");
    assert_eq!(cancelled.r#return(), Some(true));
    let out = client
        .describe_capacity_reservations()
        .capacity_reservation_ids(&id)
        .send()
        .await
        .expect("DescribeCapacityReservations");
    assert_eq!(
        out.capacity_reservations()[0].state(),
        Some(&CapacityReservationState::Cancelled)
    );
    assert_eq!(proxy.reservation(&id).unwrap().state, "cancelled");
    client
        .terminate_instances()
        .instance_ids(&launched[1])
        .send()
        .await
        .expect("TerminateInstances");
    assert_eq!(
        launch_with(&client, InstanceType::G5Xlarge, target(&id))
            .await
            .unwrap_err(),
        "ReservationCapacityExceeded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_client_token_answer_takes_no_second_slot() {
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(dir.path()).expect("moto_server starts");
    let proxy = Ec2Proxy::start(&moto.endpoint).await.expect("proxy");
    let client = ec2_client(&proxy.endpoint).await;
    let id = client
        .create_capacity_reservation()
        .instance_type("g5.xlarge")
        .instance_platform(CapacityReservationInstancePlatform::LinuxUnix)
        .availability_zone("us-east-1a")
        .instance_count(2)
        .send()
        .await
        .expect("CreateCapacityReservation")
        .capacity_reservation()
        .and_then(|c| c.capacity_reservation_id())
        .unwrap()
        .to_owned();

    let run = || {
        client
            .run_instances()
            .image_id(AMI)
            .instance_type(InstanceType::G5Xlarge)
            .min_count(1)
            .max_count(1)
            .client_token("token-cr")
            .capacity_reservation_specification(target(&id))
            .send()
    };
    let first = run().await.expect("launch");
    let again = run().await.expect("launch again");
    assert_eq!(
        first.instances()[0].instance_id(),
        again.instances()[0].instance_id()
    );
    assert_eq!(
        again.instances()[0].capacity_reservation_id(),
        Some(id.as_str())
    );
    assert_eq!(proxy.reservation(&id).unwrap().available, 1);

    // A lost answer: the instance is made and its slot taken once; the retry with
    // the same token finds it.
    proxy.fail("RunInstances", 1, Fault::DropResponse);
    let retried = {
        let go = || {
            client
                .run_instances()
                .image_id(AMI)
                .instance_type(InstanceType::G5Xlarge)
                .min_count(1)
                .max_count(1)
                .client_token("token-cr-2")
                .capacity_reservation_specification(target(&id))
                .send()
        };
        match go().await {
            Ok(out) => out,
            Err(_) => go().await.expect("retry with the same token"),
        }
    };
    assert_eq!(
        retried.instances()[0].capacity_reservation_id(),
        Some(id.as_str())
    );
    assert_eq!(proxy.reservation(&id).unwrap().available, 0);
}
