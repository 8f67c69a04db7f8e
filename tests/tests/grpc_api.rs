//! Both daemons serve reflection and grpc.health.v1 over TLS, so the real
//! grpcurl binary lists, describes and calls every service given the cluster CA
//! and the right credentials: the admin token for the control plane, the
//! control plane's client certificate for an agent. Without them it is refused.

use std::process::{Command, Output};

use orca_tests::agent::{NODE, TestAgent};
use orca_tests::cluster::TestCluster;
use orca_tests::env::grpcurl;

fn run(args: &[&str]) -> Output {
    Command::new(grpcurl())
        .args(args)
        .output()
        .expect("run grpcurl")
}

fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "grpcurl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn err(args: &[&str]) -> String {
    let out = run(args);
    assert!(!out.status.success(), "grpcurl {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn token(c: &TestCluster) -> String {
    let creds = std::fs::read_to_string(c.credentials()).expect("credentials");
    creds
        .lines()
        .find_map(|l| l.strip_prefix("token: "))
        .expect("token in the credentials")
        .trim()
        .to_owned()
}

#[test]
fn grpcurl_reaches_the_control_plane_with_the_ca_and_the_admin_token() {
    let c = TestCluster::start();
    c.orca_ok(&["node", "add", "n1"]);
    let ca = c.data_dir().join("ca.pem");
    let ca = ca.to_str().unwrap();
    let auth = format!("authorization: Bearer {}", token(&c));

    let listed = ok(&["-cacert", ca, &c.addr, "list"]);
    for service in [
        "orca.controlplane.v1.AdminService",
        "orca.controlplane.v1.NodeService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(
            listed.lines().any(|l| l == service),
            "control plane lists {service}: {listed}"
        );
    }
    assert!(!listed.contains("orca.agent.v1.AgentService"), "{listed}");
    let message = ok(&[
        "-cacert",
        ca,
        &c.addr,
        "describe",
        "orca.types.v1.ContainerStateTerminated",
    ]);
    assert!(
        message.contains("128+N for a process killed by signal N"),
        "the proto doc comments are the API reference: {message}"
    );
    let health = ok(&[
        "-cacert",
        ca,
        "-d",
        r#"{"service":"orca.controlplane.v1.AdminService"}"#,
        &c.addr,
        "grpc.health.v1.Health/Check",
    ]);
    assert!(health.contains("SERVING"), "{health}");

    let get = [
        "-d",
        r#"{"name":"n1"}"#,
        &c.addr,
        "orca.controlplane.v1.AdminService/GetNode",
    ];
    let node = ok(&[&["-cacert", ca, "-H", &auth][..], &get].concat());
    assert!(node.contains("NODE_STATE_READY"), "{node}");

    // Refusals: no token, a wrong token, plaintext, an unknown CA.
    let e = err(&[&["-cacert", ca][..], &get].concat());
    assert!(
        e.contains("Unauthenticated") && e.contains("a token is required"),
        "{e}"
    );
    let e = err(&[
        &["-cacert", ca, "-H", "authorization: Bearer guess"][..],
        &get,
    ]
    .concat());
    assert!(
        e.contains("Unauthenticated") && e.contains("not valid"),
        "{e}"
    );
    let e = err(&[&["-plaintext", "-H", &auth][..], &get].concat());
    assert!(!e.contains("NODE_STATE_READY"), "{e}");
    let e = err(&[&["-H", &auth][..], &get].concat());
    assert!(e.to_lowercase().contains("certificate"), "unknown CA: {e}");
}

#[test]
fn grpcurl_reaches_an_agent_only_with_the_control_plane_certificate() {
    let a = TestAgent::start();
    let ca = a.pki.ca_file();
    let ca = ca.to_str().unwrap();
    let cert = a.control_plane_cert.cert_file.to_str().unwrap();
    let key = a.control_plane_cert.key_file.to_str().unwrap();
    let mtls = [
        "-cacert",
        ca,
        "-cert",
        cert,
        "-key",
        key,
        "-servername",
        NODE,
    ];

    let listed = ok(&[&mtls[..], &[&a.addr, "list"]].concat());
    for service in [
        "orca.agent.v1.AgentService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(
            listed.lines().any(|l| l == service),
            "agent lists {service}: {listed}"
        );
    }
    let described = ok(&[
        &mtls[..],
        &[&a.addr, "describe", "orca.agent.v1.AgentService"],
    ]
    .concat());
    assert!(
        described.contains("Runs pods on this node's containerd"),
        "{described}"
    );
    let pods = ok(&[&mtls[..], &[&a.addr, "orca.agent.v1.AgentService/ListPods"]].concat());
    let compact: String = pods.split_whitespace().collect();
    assert_eq!(compact, "{}", "no pods yet: {pods}");
    // No GPU here: the NVML source says why, and the node offers no GPUs.
    let telemetry = ok(&[
        &mtls[..],
        &[&a.addr, "orca.agent.v1.AgentService/Telemetry"],
    ]
    .concat());
    assert!(
        telemetry.contains("\"gpuSource\": \"nvml\"") && telemetry.contains("libnvidia-ml"),
        "{telemetry}"
    );

    // No client certificate: the handshake is refused.
    let e = err(&["-cacert", ca, "-servername", NODE, &a.addr, "list"]);
    assert!(!e.contains("AgentService"), "{e}");
    // A valid certificate of the cluster that is not the control plane's (a node's): refused.
    let other = a
        .pki
        .issue("other-node", &orca_proto::tls::node_cn("other"), &["other"]);
    let e = err(&[
        "-cacert",
        ca,
        "-cert",
        other.cert_file.to_str().unwrap(),
        "-key",
        other.key_file.to_str().unwrap(),
        "-servername",
        NODE,
        &a.addr,
        "orca.agent.v1.AgentService/ListPods",
    ]);
    assert!(
        e.contains("PermissionDenied") && e.contains("only the control plane"),
        "{e}"
    );
}
