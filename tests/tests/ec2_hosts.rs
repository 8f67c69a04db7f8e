//! The instance player against a real control plane and moto: an instance run
//! in moto boots a real agent from its user data, joins, runs a pod, and is
//! powered off (agent and containers gone, node NotReady) when moto terminates
//! it; a held instance type never boots until released; a killed agent leaves
//! its instance running.

use std::time::Duration;

use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};
use base64::Engine as _;
use orca_control_plane::cloud::ec2::launch::{
    TAG_ATTEMPT, TAG_CLUSTER, TAG_NODE, TAG_POD, TAG_POD_UID,
};
use orca_tests::cluster::{DEADLINE, TestCluster};
use orca_tests::env::{InstancePlayer, Moto, PlayerSettings, ec2_client, process_running};
use orca_tests::eventually::eventually_blocking;

/// A player of `cluster`'s instances in moto, whose agents join `c`.
fn player(c: &TestCluster, moto: &Moto, cluster: &str) -> InstancePlayer {
    InstancePlayer::start(PlayerSettings {
        ec2_endpoint: moto.endpoint.clone(),
        cluster: cluster.into(),
        containerd_socket: c.containerd.socket.clone(),
        namespace_prefix: c.prefix.clone(),
        registry: c.registry.addr.clone(),
        // Under the data dir, so the cluster's teardown finds its pods' orca-pause too.
        dir: c.data_dir().join("instances"),
        agent_args: [
            "--retry-ms=100",
            "--backoff-base-ms=200",
            "--backoff-max-ms=1000",
        ]
        .map(String::from)
        .to_vec(),
        poll: Duration::from_millis(100),
    })
    .expect("the player starts")
}

/// Runs an instance for external node `node` of `c`, tagged as the EC2
/// provider tags them, its user data the node's boot data; returns its id.
fn run_instance(
    rt: &tokio::runtime::Runtime,
    client: &aws_sdk_ec2::Client,
    c: &TestCluster,
    cluster: &str,
    node: &str,
    instance_type: &str,
) -> String {
    let boot = orca_agent::imds::BootData {
        control_plane: c.server.clone(),
        ca_pem: std::fs::read_to_string(c.data_dir().join("ca.pem")).unwrap(),
        node_name: node.into(),
        join_token: c.external_token(node),
    };
    let tags = [
        ("Name", node.to_owned()),
        (TAG_CLUSTER, cluster.to_owned()),
        (TAG_NODE, node.to_owned()),
        (TAG_POD, format!("default/for-{node}")),
        (TAG_POD_UID, format!("uid-{node}")),
        (TAG_ATTEMPT, "1".to_owned()),
    ];
    let tags = TagSpecification::builder()
        .resource_type(ResourceType::Instance)
        .set_tags(Some(
            tags.iter()
                .map(|(k, v)| Tag::builder().key(*k).value(v).build())
                .collect(),
        ))
        .build();
    let user_data =
        base64::engine::general_purpose::STANDARD.encode(serde_json::to_string(&boot).unwrap());
    let out = rt
        .block_on(
            client
                .run_instances()
                .image_id("ami-12c6146b")
                .instance_type(instance_type.into())
                .min_count(1)
                .max_count(1)
                .user_data(user_data)
                .tag_specifications(tags)
                .send(),
        )
        .expect("RunInstances");
    out.instances()[0].instance_id().unwrap().to_owned()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn a_played_instance_joins_runs_a_pod_and_is_powered_off_when_terminated() {
    let c = TestCluster::start();
    let moto = Moto::start(c.dir()).expect("moto_server starts");
    let player = player(&c, &moto, "ec2-hosts-boot");
    let rt = runtime();
    let client = rt.block_on(ec2_client(&moto.endpoint));

    let id = run_instance(&rt, &client, &c, "ec2-hosts-boot", "ec2-a", "t3.micro");
    let played = eventually_blocking("the instance to boot", DEADLINE, || {
        player
            .played()
            .into_iter()
            .find(|p| p.instance_id == id)
            .ok_or_else(|| (player.seen(), player.problems()))
    });
    assert_eq!(
        (played.node.as_str(), played.instance_type.as_str()),
        ("ec2-a", "t3.micro")
    );
    let node = eventually_blocking("node ec2-a to be Ready", DEADLINE, || {
        let n = c.node("ec2-a");
        if n["state"] == "Ready" {
            Ok(n)
        } else {
            Err((n, player.agent_log(&id)))
        }
    });
    assert!(
        node["address"].as_str().unwrap().starts_with("127.0.0.1:"),
        "the address from the player's local-ipv4, never moto's: {node}"
    );
    assert_eq!(
        player.imds_log(&id).first().map(String::as_str),
        Some("PUT /latest/api/token 200"),
        "the agent read its user data through IMDSv2"
    );

    c.orca_ok(&["run", "on-ec2", "--image", &c.image, "--", "sleep", "300"]);
    let pod = c.wait_phase("on-ec2", "Running");
    assert_eq!(pod["node"], "ec2-a", "{pod}");
    let container = c
        .container_pid("ec2-a", &pod)
        .expect("the pod's container runs in the node's namespace");
    assert!(process_running(container) && process_running(played.agent_pid));

    rt.block_on(client.terminate_instances().instance_ids(&id).send())
        .expect("TerminateInstances");
    let off = eventually_blocking("the host to be powered off", DEADLINE, || {
        player
            .played()
            .into_iter()
            .find(|p| p.instance_id == id && p.powered_off.is_some())
            .ok_or_else(|| player.seen())
    });
    assert!(off.powered_off.unwrap() >= off.booted_at);
    assert!(!process_running(played.agent_pid), "the agent is gone");
    assert!(!process_running(container), "the pod's container is gone");
    assert_eq!(c.container_pid("ec2-a", &pod), None);
    assert!(c.tasks("ec2-a").is_empty(), "{:?}", c.tasks("ec2-a"));
    assert!(player.problems().is_empty(), "{:?}", player.problems());
    eventually_blocking("node ec2-a to go NotReady", DEADLINE, || {
        let n = c.node("ec2-a");
        if n["state"] == "NotReady" || n["state"] == "Lost" {
            Ok(())
        } else {
            Err(n)
        }
    });
}

#[test]
fn a_held_instance_type_never_boots_until_released_and_a_killed_agent_leaves_its_instance() {
    let c = TestCluster::start();
    let moto = Moto::start(c.dir()).expect("moto_server starts");
    let player = player(&c, &moto, "ec2-hosts-hold");
    player.hold("g5.xlarge");
    let rt = runtime();
    let client = rt.block_on(ec2_client(&moto.endpoint));

    let held = run_instance(&rt, &client, &c, "ec2-hosts-hold", "ec2-gpu", "g5.xlarge");
    let free = run_instance(&rt, &client, &c, "ec2-hosts-hold", "ec2-cpu", "t3.micro");
    c.wait_node_ready("ec2-cpu");
    // Both running in moto for a few polls now, only one of them booted.
    let polls = eventually_blocking("the player to see both running", DEADLINE, || {
        let seen = player.seen();
        let running = |id: &str| {
            seen.iter()
                .any(|i| i.instance_id == id && i.state == "running")
        };
        if running(&held) && running(&free) {
            Ok(player.polls())
        } else {
            Err(seen)
        }
    });
    eventually_blocking("three more polls", DEADLINE, || {
        if player.polls() >= polls + 3 {
            Ok(())
        } else {
            Err(player.polls())
        }
    });
    let booted: Vec<String> = player.played().into_iter().map(|p| p.instance_id).collect();
    assert_eq!(booted, vec![free.clone()], "only the t3.micro booted");
    assert_ne!(c.node("ec2-gpu")["state"], "Ready");

    player.release("g5.xlarge");
    c.wait_node_ready("ec2-gpu");
    assert_eq!(player.played().len(), 2);

    // A crashed agent: the instance keeps running, only the heartbeats stop.
    let cpu_agent = player.played()[0].agent_pid;
    assert!(player.kill_agent(&free));
    assert!(!process_running(cpu_agent));
    eventually_blocking("node ec2-cpu to go NotReady", DEADLINE, || {
        let n = c.node("ec2-cpu");
        if n["state"] == "NotReady" || n["state"] == "Lost" {
            Ok(())
        } else {
            Err(n)
        }
    });
    let cpu = player.played().remove(0);
    assert!(
        cpu.agent_killed.is_some() && cpu.powered_off.is_none(),
        "{cpu:?}"
    );
    assert!(
        player
            .seen()
            .iter()
            .any(|i| i.instance_id == free && i.state == "running"),
        "{:?}",
        player.seen()
    );
    c.wait_node_ready("ec2-gpu");
    assert!(player.problems().is_empty(), "{:?}", player.problems());
}
