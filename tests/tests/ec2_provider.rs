//! The `ec2` provider end to end: pod → selection → RunInstances (through the
//! EC2 proxy, into moto) → user data over IMDSv2 → join → containerd → Running,
//! with the instance player booting a real agent for every instance moto runs.

use orca_tests::cluster::DEADLINE;
use orca_tests::ec2_cluster::Ec2Cluster;
use orca_tests::env::Fault;
use orca_tests::eventually::eventually_blocking;

const TYPE: &str = "orca.research/instance-type";
const TEMPLATE: &str = "orca.research/workload-template";
const CAPACITY: &str = "orca.research/capacity-type";
const MAX_SPOT: &str = "orca.research/max-spot-price";
const RESERVATION: &str = "orca.research/capacity-reservation-id";

fn wait_gone(e: &Ec2Cluster, instance: &str) {
    eventually_blocking(&format!("instance {instance} terminated"), DEADLINE, || {
        let live: Vec<_> = e
            .live_instances()
            .into_iter()
            .map(|i| i.instance_id)
            .collect();
        if live.contains(&instance.to_owned()) {
            Err(live)
        } else {
            Ok(())
        }
    });
}

/// Auto selection picks the cheapest type that fits; the pod runs on the
/// instance's agent, which booted from its user data; deleting the pod
/// terminates the instance. The cluster's instance cap holds a second pod back
/// with a reason until the first is gone.
#[test]
fn auto_selection_launches_the_cheapest_fit_and_the_pod_runs_there() {
    let e = Ec2Cluster::start_with("    max_instances: 1\n", "pending_timeout_ms: 120000\n");
    e.apply(&e.pod("auto", &[], "1", "3Gi"));
    let pod = e.wait_phase("auto", "Running");
    let selected = e.wait_event("auto", "InstanceSelected");
    assert!(
        selected.contains("auto") && selected.contains("t3.medium"),
        "1 CPU and 3 GiB: t3.medium is the cheapest fit: {selected}"
    );
    let live = e.live_instances();
    assert_eq!(live.len(), 1, "{live:?}");
    let instance = &live[0];
    assert_eq!(instance.instance_type, "t3.medium");
    let uid = pod["uid"].as_str().unwrap();
    assert_eq!(instance.tags["orca.research/pod-uid"], uid);
    assert_eq!(instance.tags["orca.research/pod"], "default/auto");
    assert_eq!(instance.tags["orca.research/attempt"], "1");
    let node = e.cluster.node(pod["node"].as_str().unwrap());
    assert_eq!(node["instanceId"], instance.instance_id.as_str(), "{node}");
    assert_eq!(
        node["labels"]["node.kubernetes.io/instance-type"],
        "t3.medium"
    );
    let calls = e.run_calls(uid);
    assert_eq!(calls.len(), 1, "one RunInstances: {calls:?}");
    assert!(calls[0]["ClientToken"].ends_with("-1"), "{calls:?}");
    assert_eq!(calls[0]["InstanceInitiatedShutdownBehavior"], "terminate");
    let imds = e.player.imds_log(&instance.instance_id);
    assert_eq!(
        imds.first().map(String::as_str),
        Some("PUT /latest/api/token 200"),
        "IMDSv2: a token first: {imds:?}"
    );
    let events: Vec<String> = e.events("auto").into_iter().map(|(r, _)| r).collect();
    for step in ["InstanceSelected", "Launching", "Launched"] {
        assert!(events.contains(&step.to_owned()), "{step}: {events:?}");
    }

    // The cap: a second pod waits, saying why.
    e.apply(&e.pod("capped", &[], "", ""));
    let why = e.wait_event("capped", "LaunchBlocked");
    assert!(why.contains("max_instances"), "{why}");
    assert_eq!(e.cluster.pod("capped")["phase"], "Pending");

    // Deleting the first pod terminates its instance; then the second launches.
    e.cluster
        .orca_ok(&["delete", "pod", "auto", "--grace-period", "0"]);
    wait_gone(&e, &instance.instance_id);
    e.wait_phase("capped", "Running");
}

/// Explicit types, templates in order, spot with a price cap, and selection
/// failures that end the pod Failed with a reason and launch nothing.
#[test]
fn explicit_template_and_spot_launches_and_unplaceable_pods_fail() {
    let e = Ec2Cluster::start("    templates: {train: [p4d.24xlarge, g5.12xlarge]}\n");
    e.apply(&e.pod("explicit", &[(TYPE, "g5.xlarge")], "", ""));
    e.apply(&e.pod(
        "spot",
        &[(TEMPLATE, "train"), (CAPACITY, "spot"), (MAX_SPOT, "9.5")],
        "",
        "",
    ));
    e.apply(&e.pod("arm", &[(TYPE, "g5g.xlarge")], "", ""));
    e.apply(&e.pod("huge", &[(TYPE, "t3.micro")], "8", ""));
    e.apply(&e.pod("nameless", &[(TEMPLATE, "nope")], "", ""));

    let explicit = e.wait_phase("explicit", "Running");
    let spot = e.wait_phase("spot", "Running");
    let by_uid = |p: &serde_json::Value| {
        e.live_instances()
            .into_iter()
            .find(|i| i.tags["orca.research/pod-uid"] == p["uid"].as_str().unwrap())
            .expect("the pod's instance")
    };
    assert_eq!(by_uid(&explicit).instance_type, "g5.xlarge");
    assert_eq!(
        by_uid(&spot).instance_type,
        "p4d.24xlarge",
        "the template's first"
    );
    let spot_call = &e.run_calls(spot["uid"].as_str().unwrap())[0];
    assert_eq!(spot_call["InstanceMarketOptions.MarketType"], "spot");
    assert_eq!(
        spot_call["InstanceMarketOptions.SpotOptions.MaxPrice"],
        "9.5"
    );
    let explicit_call = &e.run_calls(explicit["uid"].as_str().unwrap())[0];
    assert!(!explicit_call.contains_key("InstanceMarketOptions.MarketType"));
    assert!(
        e.wait_event("spot", "InstanceSelected")
            .contains("template")
    );

    let arm = e.wait_phase("arm", "Failed");
    assert_eq!(arm["reason"], "NoInstanceType", "{arm}");
    assert!(arm["message"].as_str().unwrap().contains("arm64"), "{arm}");
    let huge = e.wait_phase("huge", "Failed");
    assert!(
        huge["message"].as_str().unwrap().contains("t3.micro"),
        "{huge}"
    );
    let nameless = e.wait_phase("nameless", "Failed");
    assert!(
        nameless["message"].as_str().unwrap().contains("train"),
        "{nameless}"
    );
    for failed in [&arm, &huge, &nameless] {
        assert!(e.run_calls(failed["uid"].as_str().unwrap()).is_empty());
    }
    assert_eq!(e.live_instances().len(), 2);
}

/// InsufficientInstanceCapacity moves to the next offering (the same type in the
/// next subnet), with an Event, and the offering is avoided: the next pod's
/// first call already goes elsewhere. Throttling repeats the same request after
/// a back-off (the same ClientToken). A pod that runs out of offerings, or
/// meets an error no retry fixes, ends Failed with the last reason.
#[test]
fn capacity_errors_fall_back_avoid_the_offering_and_end_failed_when_exhausted() {
    let e = Ec2Cluster::start(
        "    subnets: $SUBNETS\n    templates: {one: [g5.xlarge]}\n    offering_avoid_ms: 600000\n",
    );
    let (a, b) = (e.subnets[0].clone(), e.subnets[1].clone());
    e.proxy.fail(
        "RunInstances",
        1,
        Fault::error(
            "InsufficientInstanceCapacity",
            "We currently do not have sufficient g5.xlarge capacity in the Availability Zone you requested.",
            500,
        ),
    );
    e.apply(&e.pod("first", &[(TEMPLATE, "one")], "", ""));
    let first = e.wait_phase("first", "Running");
    let failed = e.wait_event("first", "LaunchFailed");
    assert!(
        failed.contains("InsufficientInstanceCapacity") && failed.contains(&a),
        "{failed}"
    );
    let calls = e.run_calls(first["uid"].as_str().unwrap());
    let subnets: Vec<&str> = calls.iter().map(|c| c["SubnetId"].as_str()).collect();
    assert_eq!(subnets, [a.as_str(), b.as_str()], "next subnet after ICE");
    assert!(
        calls[1]["ClientToken"].ends_with("-2"),
        "a new attempt: {calls:?}"
    );

    // Avoided: the next pod goes straight to subnet b; throttled twice on the way.
    e.proxy.fail(
        "RunInstances",
        2,
        Fault::error("RequestLimitExceeded", "Request limit exceeded.", 503),
    );
    e.apply(&e.pod("second", &[(TEMPLATE, "one")], "", ""));
    let second = e.wait_phase("second", "Running");
    let calls = e.run_calls(second["uid"].as_str().unwrap());
    assert_eq!(calls.len(), 3, "two throttled, then through: {calls:?}");
    assert!(calls.iter().all(|c| c["SubnetId"] == b), "{calls:?}");
    assert!(
        calls
            .iter()
            .all(|c| c["ClientToken"] == calls[0]["ClientToken"]),
        "throttled calls are repeated with the same token: {calls:?}"
    );

    // Subnet b full too: nothing left to try.
    e.proxy.fail(
        "RunInstances",
        1,
        Fault::error("InsufficientInstanceCapacity", "No capacity in b.", 500),
    );
    e.apply(&e.pod("third", &[(TEMPLATE, "one")], "", ""));
    let third = e.wait_phase("third", "Failed");
    assert_eq!(third["reason"], "InsufficientCapacity", "{third}");
    assert!(
        third["message"]
            .as_str()
            .unwrap()
            .contains("No capacity in b"),
        "{third}"
    );

    // An error no other offering fixes.
    e.proxy.fail(
        "RunInstances",
        1,
        Fault::error(
            "InvalidAMIID.NotFound",
            "The image id '[ami-x]' does not exist",
            400,
        ),
    );
    e.apply(&e.pod("fatal", &[(TYPE, "t3.small")], "", ""));
    let fatal = e.wait_phase("fatal", "Failed");
    assert_eq!(fatal["reason"], "LaunchFailed", "{fatal}");
    assert!(
        fatal["message"].as_str().unwrap().contains("InvalidAMIID"),
        "{fatal}"
    );
    assert_eq!(
        e.live_instances().len(),
        2,
        "only the two running pods' instances"
    );
}

/// An instance whose agent never joins is terminated after the boot timeout and
/// the pod launched again (attempt 2), which runs.
#[test]
fn an_instance_that_never_boots_is_replaced_after_the_boot_timeout() {
    let e = Ec2Cluster::start("    boot_timeout_ms: 3000\n");
    e.player.hold("t3.small");
    e.apply(&e.pod("slow", &[(TYPE, "t3.small")], "", ""));
    let first = eventually_blocking("the first instance", DEADLINE, || {
        let live = e.live_instances();
        live.first().map(|i| i.instance_id.clone()).ok_or(live)
    });
    let timeout = e.wait_event("slow", "BootTimeout");
    assert!(timeout.contains(&first), "{timeout}");
    e.player.release("t3.small");
    wait_gone(&e, &first);
    let pod = e.wait_phase("slow", "Running");
    let calls = e.run_calls(pod["uid"].as_str().unwrap());
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert!(calls[1]["ClientToken"].ends_with("-2"), "{calls:?}");
    assert_eq!(e.live_instances().len(), 1);
}

/// A Lost node's instance is terminated, and the termination confirmed, before
/// its pod moves; while TerminateInstances fails, the pod stays and says why.
#[test]
fn a_lost_nodes_instance_is_terminated_before_its_pod_moves() {
    let e = Ec2Cluster::start("");
    e.apply(&e.pod("survivor", &[(TYPE, "t3.small")], "", ""));
    let before = e.wait_phase("survivor", "Running");
    let old = e.live_instances()[0].instance_id.clone();
    e.proxy.fail(
        "TerminateInstances",
        1000,
        Fault::error(
            "UnauthorizedOperation",
            "You are not authorized to perform this operation.",
            400,
        ),
    );
    assert!(e.player.kill_agent(&old));
    let waiting = e.wait_event("survivor", "FenceWaiting");
    assert!(waiting.contains(&old), "{waiting}");
    let pod = e.cluster.pod("survivor");
    assert_eq!(
        pod["uid"], before["uid"],
        "not moved while its instance may run: {pod}"
    );
    assert!(
        pod["message"]
            .as_str()
            .unwrap()
            .contains("confirmed terminated"),
        "{pod}"
    );
    assert_eq!(e.live_instances().len(), 1, "no replacement yet");

    e.proxy.clear_faults();
    wait_gone(&e, &old);
    let after = eventually_blocking("a new incarnation running", DEADLINE, || {
        let p = e.cluster.pod("survivor");
        if p["uid"] != before["uid"] && p["phase"] == "Running" {
            Ok(p)
        } else {
            Err(p)
        }
    });
    // The termination came before the replacement's RunInstances.
    let calls = e.proxy.calls();
    let terminated = calls
        .iter()
        .position(|c| {
            c.action == "TerminateInstances"
                && c.status == 200
                && c.params.values().any(|v| v == &old)
        })
        .expect("a successful TerminateInstances");
    let compact: String = after["uid"]
        .as_str()
        .unwrap()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    let relaunched = calls
        .iter()
        .position(|c| {
            c.action == "RunInstances"
                && c.params
                    .get("ClientToken")
                    .is_some_and(|t| t.contains(&compact[..16]))
        })
        .expect("the replacement's RunInstances");
    assert!(
        terminated < relaunched,
        "fence first, then the new instance"
    );
    assert_eq!(e.live_instances().len(), 1);
}

/// A lost RunInstances answer is repeated with the same token: one instance.
/// A restarted control plane adopts what runs (no new launch), and an instance
/// tagged for the cluster that no record knows is terminated after two sweeps.
#[test]
fn lost_answers_restarts_and_unknown_instances_never_leak_or_duplicate() {
    let mut e = Ec2Cluster::start("");
    e.proxy.fail("RunInstances", 1, Fault::DropResponse);
    e.apply(&e.pod("once", &[(TYPE, "t3.small")], "", ""));
    let pod = e.wait_phase("once", "Running");
    let calls = e.run_calls(pod["uid"].as_str().unwrap());
    assert!(
        calls.len() >= 2,
        "the dropped answer was asked again: {calls:?}"
    );
    assert!(
        calls
            .iter()
            .all(|c| c["ClientToken"] == calls[0]["ClientToken"])
    );
    assert_eq!(e.live_instances().len(), 1, "exactly one instance");

    e.cluster.kill_control_plane();
    let runs_before = e.proxy.calls_of("RunInstances").len();
    e.cluster.start_control_plane();
    eventually_blocking("a sweep after the restart", DEADLINE, || {
        let n = e.proxy.calls_of("DescribeInstances").len();
        if n > 0 { Ok(()) } else { Err(n) }
    });
    let again = e.wait_phase("once", "Running");
    assert_eq!(again["uid"], pod["uid"]);
    assert_eq!(
        e.proxy.calls_of("RunInstances").len(),
        runs_before,
        "nothing relaunched"
    );

    // A stray instance with the cluster's tag: collected after two sweeps.
    e.player.hold("t3.micro");
    let client = e.moto_client();
    let name = e.name.clone();
    let stray = e.rt.block_on(async move {
        let tags = aws_sdk_ec2::types::TagSpecification::builder()
            .resource_type(aws_sdk_ec2::types::ResourceType::Instance)
            .tags(
                aws_sdk_ec2::types::Tag::builder()
                    .key("orca.research/cluster")
                    .value(name)
                    .build(),
            )
            .tags(
                aws_sdk_ec2::types::Tag::builder()
                    .key("orca.research/node")
                    .value("nobody")
                    .build(),
            )
            .build();
        client
            .run_instances()
            .image_id(orca_tests::ec2_cluster::AMI)
            .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
            .min_count(1)
            .max_count(1)
            .tag_specifications(tags)
            .send()
            .await
            .expect("RunInstances")
            .instances()[0]
            .instance_id()
            .unwrap()
            .to_owned()
    });
    wait_gone(&e, &stray);
    // Recorded once EC2 has confirmed the termination.
    let collected = e.wait_event("nobody", "UnknownInstanceTerminated");
    assert!(collected.contains(&stray), "{collected}");
    assert_eq!(e.live_instances().len(), 1, "the pod's instance stays");
}

/// A pod that names a Capacity Reservation launches into it (the request
/// targets it and the reservation's free count drops); a pod that finds it full
/// ends Failed with EC2's reason; preference `none` is passed through.
#[test]
fn capacity_reservations_are_targeted_and_a_full_one_fails_the_pod() {
    let e = Ec2Cluster::start("");
    let client =
        e.rt.block_on(orca_tests::env::ec2_client(&e.proxy.endpoint));
    let id = e.rt.block_on(async move {
        client
            .create_capacity_reservation()
            .instance_type("g5.xlarge")
            .instance_platform(aws_sdk_ec2::types::CapacityReservationInstancePlatform::LinuxUnix)
            .availability_zone("us-east-1a")
            .instance_count(1)
            .send()
            .await
            .expect("CreateCapacityReservation")
            .capacity_reservation()
            .and_then(|r| r.capacity_reservation_id())
            .expect("an id")
            .to_owned()
    });
    e.apply(&e.pod(
        "reserved",
        &[(TYPE, "g5.xlarge"), (RESERVATION, &id)],
        "",
        "",
    ));
    let pod = e.wait_phase("reserved", "Running");
    let call = &e.run_calls(pod["uid"].as_str().unwrap())[0];
    assert_eq!(
        call["CapacityReservationSpecification.CapacityReservationTarget.CapacityReservationId"],
        id
    );
    assert_eq!(
        e.proxy.reservation(&id).expect("the reservation").available,
        0
    );

    e.apply(&e.pod(
        "overflow",
        &[(TYPE, "g5.xlarge"), (RESERVATION, &id)],
        "",
        "",
    ));
    let overflow = e.wait_phase("overflow", "Failed");
    assert_eq!(overflow["reason"], "InsufficientCapacity", "{overflow}");
    assert!(
        overflow["message"]
            .as_str()
            .unwrap()
            .contains("ReservationCapacityExceeded"),
        "{overflow}"
    );

    e.apply(&e.pod(
        "unreserved",
        &[
            (TYPE, "t3.small"),
            ("orca.research/capacity-reservation-preference", "none"),
        ],
        "",
        "",
    ));
    let unreserved = e.wait_phase("unreserved", "Running");
    let call = &e.run_calls(unreserved["uid"].as_str().unwrap())[0];
    assert_eq!(
        call["CapacityReservationSpecification.CapacityReservationPreference"],
        "none"
    );
    assert_eq!(e.live_instances().len(), 2);
}

/// A RunInstances that takes effect but is never answered, however often it is
/// repeated: each call times out (`call_timeout_ms`), and the sweep adopts the
/// instance its tags name (the node record had no instance id yet). One
/// instance, and the pod runs on it.
#[test]
fn an_unanswered_launch_is_adopted_by_the_sweep() {
    let e = Ec2Cluster::start("    call_timeout_ms: 5000\n    max_call_retries: 1\n");
    e.proxy.fail("RunInstances", 1000, Fault::Hang);
    e.apply(&e.pod("adopted", &[(TYPE, "t3.small")], "", ""));
    let pod = e.wait_phase("adopted", "Running");
    let node = pod["node"].as_str().unwrap();
    let events = e.events(node);
    assert!(events.iter().any(|(r, _)| r == "Adopted"), "{events:?}");
    let calls = e.run_calls(pod["uid"].as_str().unwrap());
    assert!(
        calls
            .iter()
            .all(|c| c["ClientToken"] == calls[0]["ClientToken"]),
        "only the same request repeated: {calls:?}"
    );
    assert!(
        e.proxy
            .calls_of("RunInstances")
            .iter()
            .all(|c| c.status == 0)
    );
    assert_eq!(e.live_instances().len(), 1, "exactly one instance");
}
