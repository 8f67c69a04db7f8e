//! Per-pod cloud identity and network on the `ec2` provider, against moto
//! through the real SDKs: a pod's instance profile, security groups and subnet
//! (`orca.research/iam-instance-profile`, `…/security-groups`, `…/subnet`)
//! reach RunInstances and show in moto's DescribeInstances; a repeated call of
//! the same attempt is byte-identical; an unknown profile, group or subnet, a
//! group from another VPC and a profile without a role each fail the pod
//! before anything is launched, naming the value.
//!
//! The IRSA-style mapping (a ServiceAccount's `eks.amazonaws.com/role-arn` →
//! `instance_profiles_by_role`) needs Kubernetes mode: `k8s_ec2_claims` tests it.

use orca_tests::ec2_cluster::Ec2Cluster;
use orca_tests::env::{Fault, iam_client};

const PROFILE: &str = "orca.research/iam-instance-profile";
const GROUPS: &str = "orca.research/security-groups";
const SUBNET: &str = "orca.research/subnet";

/// The path the deployment's IAM policy scopes instance profiles and roles to.
const PATH: &str = "/orca-pods/";

/// What the test made in moto.
struct Made {
    /// An instance profile holding a role: (name, ARN).
    profile: (String, String),
    /// An instance profile without a role.
    roleless: String,
    /// Two groups in the default VPC.
    groups: [String; 2],
    /// A subnet of the default VPC that the config does not list.
    subnet: String,
    /// A group in another VPC.
    foreign_group: String,
}

/// Makes, with the SDKs straight against moto (not through the proxy, not
/// recorded): a role in an instance profile, a profile without one, two groups
/// and a subnet in the default VPC, and a group in a new VPC.
fn make(e: &Ec2Cluster) -> Made {
    let ec2 = e.moto_client();
    e.rt.block_on(async {
        let iam = iam_client(&e.moto.endpoint).await;
        let trust = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ec2.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;
        iam.create_role()
            .role_name("train")
            .path(PATH)
            .assume_role_policy_document(trust)
            .send()
            .await
            .expect("CreateRole");
        let mut profiles = Vec::new();
        for name in ["train-profile", "roleless-profile"] {
            let out = iam
                .create_instance_profile()
                .instance_profile_name(name)
                .path(PATH)
                .send()
                .await
                .expect("CreateInstanceProfile");
            profiles.push(out.instance_profile().expect("a profile").arn().to_owned());
        }
        iam.add_role_to_instance_profile()
            .instance_profile_name("train-profile")
            .role_name("train")
            .send()
            .await
            .expect("AddRoleToInstanceProfile");

        let default_vpc = ec2
            .describe_vpcs()
            .send()
            .await
            .expect("DescribeVpcs")
            .vpcs()
            .iter()
            .find(|v| v.is_default() == Some(true))
            .and_then(|v| v.vpc_id().map(str::to_owned))
            .expect("moto's default VPC");
        let group = |name: &'static str, vpc: String| {
            let ec2 = ec2.clone();
            async move {
                ec2.create_security_group()
                    .group_name(name)
                    .description(name)
                    .vpc_id(vpc)
                    .send()
                    .await
                    .expect("CreateSecurityGroup")
                    .group_id()
                    .expect("a group id")
                    .to_owned()
            }
        };
        let groups = [
            group("pod-a", default_vpc.clone()).await,
            group("pod-b", default_vpc.clone()).await,
        ];
        let subnet = ec2
            .create_subnet()
            .vpc_id(&default_vpc)
            .cidr_block("172.31.192.0/24")
            .availability_zone("us-east-1c")
            .send()
            .await
            .expect("CreateSubnet")
            .subnet()
            .and_then(|s| s.subnet_id())
            .expect("a subnet id")
            .to_owned();
        let other_vpc = ec2
            .create_vpc()
            .cidr_block("10.77.0.0/16")
            .send()
            .await
            .expect("CreateVpc")
            .vpc()
            .and_then(|v| v.vpc_id())
            .expect("a VPC id")
            .to_owned();
        let foreign_group = group("elsewhere", other_vpc).await;
        Made {
            profile: ("train-profile".into(), profiles[0].clone()),
            roleless: "roleless-profile".into(),
            groups,
            subnet,
            foreign_group,
        }
    })
}

/// A pod with a profile, two groups and a subnet the config does not list gets
/// an instance with exactly those, as moto's DescribeInstances shows; the
/// call repeated after a lost answer is the same call, byte for byte. A
/// profile named by ARN goes to RunInstances as an ARN.
#[test]
fn a_pods_profile_groups_and_subnet_reach_its_instance() {
    let e = Ec2Cluster::start("    subnets: $SUBNETS\n");
    let made = make(&e);
    assert!(!e.subnets.contains(&made.subnet), "not a configured subnet");
    let groups = format!("{},{}", made.groups[0], made.groups[1]);
    e.proxy.fail("RunInstances", 1, Fault::DropResponse);
    e.apply(&e.pod(
        "identity",
        &[
            (PROFILE, &made.profile.0),
            (GROUPS, &groups),
            (SUBNET, &made.subnet),
        ],
        "",
        "",
    ));
    let pod = e.wait_phase("identity", "Running");
    let uid = pod["uid"].as_str().unwrap();

    let calls = e.run_calls(uid);
    assert_eq!(
        calls.len(),
        2,
        "the lost answer's call, repeated: {calls:?}"
    );
    assert_eq!(calls[0], calls[1], "a repeated call is the same call");
    let call = &calls[0];
    assert_eq!(call["IamInstanceProfile.Name"], made.profile.0);
    assert_eq!(call["SecurityGroupId.1"], made.groups[0]);
    assert_eq!(call["SecurityGroupId.2"], made.groups[1]);
    assert_eq!(call["SubnetId"], made.subnet);

    let instance = e
        .live_instances()
        .into_iter()
        .find(|i| i.tags["orca.research/pod-uid"] == uid)
        .expect("the pod's instance");
    let moto = e.moto_client();
    let described = e.rt.block_on(async {
        moto.describe_instances()
            .instance_ids(&instance.instance_id)
            .send()
            .await
            .expect("DescribeInstances")
    });
    let i = described
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .next()
        .expect("the instance");
    assert_eq!(
        i.iam_instance_profile().and_then(|p| p.arn()),
        Some(made.profile.1.as_str()),
        "{i:?}"
    );
    let mut got: Vec<&str> = i
        .security_groups()
        .iter()
        .filter_map(|g| g.group_id())
        .collect();
    got.sort();
    let mut want: Vec<&str> = made.groups.iter().map(String::as_str).collect();
    want.sort();
    assert_eq!(got, want, "exactly the pod's groups");
    assert_eq!(i.subnet_id(), Some(made.subnet.as_str()));
    let node = e.cluster.node(pod["node"].as_str().unwrap());
    assert_eq!(node["labels"]["orca.research/subnet"], made.subnet.as_str());

    // By ARN: passed as the ARN.
    e.apply(&e.pod("by-arn", &[(PROFILE, &made.profile.1)], "", ""));
    e.wait_event("by-arn", "Launched");
    let uid = e.cluster.pod("by-arn")["uid"].as_str().unwrap().to_owned();
    let calls = e.run_calls(&uid);
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0]["IamInstanceProfile.Arn"], made.profile.1);
    assert!(!calls[0].contains_key("IamInstanceProfile.Name"));
}

/// An unknown profile, group or subnet, a group in another VPC than the
/// subnet, and a profile without a role: each pod ends `Failed
/// (InvalidLaunchResource)` with a message and an Event naming the value, and
/// no RunInstances is sent for it.
#[test]
fn unknown_or_mismatched_resources_fail_the_pod_before_launch() {
    let e = Ec2Cluster::start("    subnets: $SUBNETS\n");
    let made = make(&e);
    let configured = e.subnets[0].clone();
    // (pod, annotations, what its message must name)
    type Case = (&'static str, Vec<(&'static str, String)>, String);
    let cases: Vec<Case> = vec![
        (
            "no-profile",
            vec![(PROFILE, "no-such-profile".into())],
            "instance profile no-such-profile".into(),
        ),
        (
            "no-profile-arn",
            vec![(
                PROFILE,
                "arn:aws:iam::123456789012:instance-profile/orca-pods/gone".into(),
            )],
            "instance profile arn:aws:iam::123456789012:instance-profile/orca-pods/gone".into(),
        ),
        (
            "roleless",
            vec![(PROFILE, made.roleless.clone())],
            format!("instance profile {} ", made.roleless),
        ),
        (
            "no-group",
            vec![(GROUPS, format!("{},sg-0000deadbeef", made.groups[0]))],
            "security group sg-0000deadbeef".into(),
        ),
        (
            "no-subnet",
            vec![(SUBNET, "subnet-0000deadbeef".into())],
            "subnet subnet-0000deadbeef".into(),
        ),
        (
            "wrong-vpc",
            vec![(GROUPS, made.foreign_group.clone())],
            format!("security group {} ({GROUPS}) is in", made.foreign_group),
        ),
    ];
    for (name, annotations, _) in &cases {
        let a: Vec<(&str, &str)> = annotations.iter().map(|(k, v)| (*k, v.as_str())).collect();
        e.apply(&e.pod(name, &a, "", ""));
    }
    for (name, _, names) in &cases {
        let pod = e.wait_phase(name, "Failed");
        assert_eq!(pod["reason"], "InvalidLaunchResource", "{name}: {pod}");
        let message = pod["message"].as_str().unwrap();
        assert!(message.contains(names.as_str()), "{name}: {message}");
        let event = e.wait_event(name, "InvalidLaunchResource");
        assert_eq!(event, message, "{name}");
        let uid = pod["uid"].as_str().unwrap();
        assert!(e.run_calls(uid).is_empty(), "{name}: nothing launched");
    }
    let wrong_vpc = e.cluster.pod("wrong-vpc");
    let message = wrong_vpc["message"].as_str().unwrap();
    assert!(
        message.contains(&configured) || message.contains(&e.subnets[1]),
        "names the configured subnet it does not fit: {message}"
    );
    assert!(e.live_instances().is_empty(), "{:?}", e.live_instances());
}
