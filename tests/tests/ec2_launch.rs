//! One RunInstances as the EC2 provider makes it, through the real aws-sdk-ec2
//! and the EC2 proxy to moto: what is asked for (spot with a cap, a Capacity
//! Reservation target, tags, base64 user data, shutdown behaviour, ClientToken),
//! and what each EC2 error means, in one attempt each.

use aws_sdk_ec2::types::Filter;
use base64::Engine as _;
use orca_control_plane::cloud::ec2::launch::{
    self, LaunchError, LaunchSpec, PodRef, Reservation, TAG_POD_UID,
};
use orca_model::selection::CapacityType;
use orca_tests::env::{Ec2Proxy, Fault, Moto, ec2_client};

fn spec(uid: &str) -> LaunchSpec {
    LaunchSpec {
        cluster: "test-cluster".into(),
        node_name: format!("node-{uid}"),
        pod: PodRef {
            namespace: "default".into(),
            name: "train".into(),
            uid: uid.into(),
        },
        attempt: 1,
        instance_type: "g5.xlarge".into(),
        ami: "ami-12c6146b".into(),
        subnet_id: None,
        security_groups: Vec::new(),
        iam_instance_profile: None,
        capacity_type: CapacityType::OnDemand,
        max_spot_price: None,
        reservation: None,
        user_data: r#"{"control_plane":"https://10.0.0.1:7443"}"#.into(),
    }
}

async fn instances_for(
    client: &aws_sdk_ec2::Client,
    uid: &str,
) -> Vec<aws_sdk_ec2::types::Instance> {
    client
        .describe_instances()
        .filters(
            Filter::builder()
                .name(format!("tag:{TAG_POD_UID}"))
                .values(uid)
                .build(),
        )
        .send()
        .await
        .expect("DescribeInstances")
        .reservations()
        .iter()
        .flat_map(|r| r.instances().to_vec())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_instance_asks_for_what_the_pod_needs_and_classifies_ec2_errors() {
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(dir.path()).expect("moto_server starts");
    let proxy = Ec2Proxy::start(&moto.endpoint).await.expect("proxy");
    let cr = proxy.create_reservation("g5.xlarge", "us-east-1a", 1);
    let client = ec2_client(&proxy.endpoint).await;

    // Spot with a cap, into a reservation target: every field reaches EC2.
    let spot = LaunchSpec {
        capacity_type: CapacityType::Spot,
        max_spot_price: Some(0.5),
        reservation: Some(Reservation::Target(cr.clone())),
        ..spec("uid-spot")
    };
    let launched = launch::run_instance(&client, &spot).await.expect("launch");
    let call = proxy.calls_of("RunInstances").pop().unwrap();
    let p = |k: &str| call.params.get(k).cloned().unwrap_or_default();
    assert_eq!(p("InstanceType"), "g5.xlarge");
    assert_eq!(p("ImageId"), "ami-12c6146b");
    assert_eq!(p("ClientToken"), launch::client_token("uid-spot", 1));
    assert_eq!(p("InstanceMarketOptions.MarketType"), "spot");
    assert_eq!(p("InstanceMarketOptions.SpotOptions.MaxPrice"), "0.5");
    assert_eq!(
        p("CapacityReservationSpecification.CapacityReservationTarget.CapacityReservationId"),
        cr
    );
    assert_eq!(p("InstanceInitiatedShutdownBehavior"), "terminate");
    assert_eq!(p("MetadataOptions.HttpTokens"), "required");
    assert_eq!(p("MetadataOptions.HttpPutResponseHopLimit"), "1");
    assert_eq!(p("MetadataOptions.HttpEndpoint"), "enabled");
    let user_data = base64::engine::general_purpose::STANDARD
        .decode(p("UserData"))
        .expect("base64 user data");
    assert_eq!(user_data, spot.user_data.as_bytes());
    let found = instances_for(&client, "uid-spot").await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].instance_id(), Some(launched.instance_id.as_str()));
    assert_eq!(
        launched.capacity_reservation_id.as_deref(),
        Some(cr.as_str()),
        "the reservation is read from the RunInstances answer"
    );
    assert_eq!(
        found[0].instance_lifecycle().map(|l| l.as_str()),
        Some("spot")
    );
    let imds = found[0].metadata_options().expect("MetadataOptions");
    assert_eq!(imds.http_tokens().map(|t| t.as_str()), Some("required"));
    assert_eq!(imds.http_put_response_hop_limit(), Some(1));
    let tags: Vec<(&str, &str)> = found[0]
        .tags()
        .iter()
        .map(|t| (t.key().unwrap_or_default(), t.value().unwrap_or_default()))
        .collect();
    for want in [
        ("orca.research/cluster", "test-cluster"),
        ("orca.research/pod", "default/train"),
        ("orca.research/attempt", "1"),
        ("Name", "node-uid-spot"),
    ] {
        assert!(tags.contains(&want), "{want:?} in {tags:?}");
    }

    // Each EC2 error, in one attempt (no SDK retries), with its meaning.
    let cases = [
        (
            Fault::error(
                "InsufficientInstanceCapacity",
                "no g5.xlarge in us-east-1a",
                500,
            ),
            "capacity",
        ),
        (
            Fault::error("SpotMaxPriceTooLow", "price too low", 400),
            "capacity",
        ),
        (Fault::error("InstanceLimitExceeded", "limit", 400), "limit"),
        (
            Fault::error("RequestLimitExceeded", "slow down", 503),
            "throttled",
        ),
        (
            Fault::error("InvalidAMIID.NotFound", "no such AMI", 400),
            "failed",
        ),
    ];
    for (i, (fault, want)) in cases.into_iter().enumerate() {
        let uid = format!("uid-err-{i}");
        proxy.fail("RunInstances", 1, fault);
        let e = launch::run_instance(&client, &spec(&uid))
            .await
            .unwrap_err();
        let got = match e {
            LaunchError::Capacity { .. } => "capacity",
            LaunchError::Limit { .. } => "limit",
            LaunchError::Throttled(_) => "throttled",
            LaunchError::Failed { .. } => "failed",
            LaunchError::Transient(_) => "transient",
        };
        assert_eq!(got, want, "{e}");
        let attempts = proxy
            .calls_of("RunInstances")
            .iter()
            .filter(|c| c.params.get("ClientToken") == Some(&launch::client_token(&uid, 1)))
            .count();
        assert_eq!(attempts, 1, "one attempt for {want}");
        assert!(instances_for(&client, &uid).await.is_empty());
    }

    // A lost answer: Transient; the retry with the same spec finds the one instance.
    proxy.fail("RunInstances", 1, Fault::DropResponse);
    let lost = spec("uid-lost");
    let e = launch::run_instance(&client, &lost).await.unwrap_err();
    assert!(matches!(e, LaunchError::Transient(_)), "{e}");
    let again = launch::run_instance(&client, &lost).await.expect("retry");
    let found = instances_for(&client, "uid-lost").await;
    assert_eq!(found.len(), 1, "exactly one instance after a lost answer");
    assert_eq!(found[0].instance_id(), Some(again.instance_id.as_str()));
    // A deliberate relaunch (the next attempt) is a new instance.
    let next = launch::run_instance(&client, &LaunchSpec { attempt: 2, ..lost })
        .await
        .expect("relaunch");
    assert_ne!(next.instance_id, again.instance_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservations_are_described_with_their_end_and_an_unknown_one_is_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(dir.path()).expect("moto_server starts");
    let proxy = Ec2Proxy::start(&moto.endpoint).await.expect("proxy");
    let end = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second() + 3600).unwrap();
    let block = proxy.create_capacity_block("g5.xlarge", "us-east-1a", 1, end);
    let open = proxy.create_reservation("g5.xlarge", "us-east-1a", 1);
    let client = ec2_client(&proxy.endpoint).await;
    // EC2 fails the whole call for one unknown id: the known ones still come back.
    let ids = [
        block.clone(),
        "cr-0123456789abcdef0".to_owned(),
        open.clone(),
    ];
    let found = orca_control_plane::cloud::ec2::reservations::describe(&client, &ids)
        .await
        .expect("described");
    assert_eq!(found.len(), 2, "{found:?}");
    let b = found.iter().find(|r| r.id == block).expect("the block");
    assert!(b.capacity_block);
    assert_eq!(b.end, Some(end));
    assert_eq!(b.state, "active");
    let o = found
        .iter()
        .find(|r| r.id == open)
        .expect("the reservation");
    assert!(!o.capacity_block);
    assert_eq!(o.end, None);
    let calls = proxy.calls_of("DescribeCapacityReservations").len();
    assert_eq!(calls, 4, "one batch, then one call per id");
}
