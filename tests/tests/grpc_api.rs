//! Both daemons serve reflection and grpc.health.v1, so the real grpcurl binary
//! lists and describes every service; RPCs that later issues implement answer
//! UNIMPLEMENTED with a message that says so.

use std::process::Command;

use orca_tests::cluster::TestCluster;
use orca_tests::env::grpcurl;

fn grpcurl_ok(args: &[&str]) -> String {
    let out = Command::new(grpcurl())
        .arg("-plaintext")
        .args(args)
        .output()
        .expect("run grpcurl");
    assert!(
        out.status.success(),
        "grpcurl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn grpcurl_err(args: &[&str]) -> String {
    let out = Command::new(grpcurl())
        .arg("-plaintext")
        .args(args)
        .output()
        .expect("run grpcurl");
    assert!(!out.status.success(), "grpcurl {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn grpcurl_lists_describes_and_calls_both_daemons() {
    let c = TestCluster::start();
    c.orca_ok(&["node", "add", "n1"]);

    let cp = grpcurl_ok(&[&c.addr, "list"]);
    for service in [
        "orca.controlplane.v1.AdminService",
        "orca.controlplane.v1.NodeService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(
            cp.lines().any(|l| l == service),
            "control plane lists {service}: {cp}"
        );
    }
    assert!(!cp.contains("orca.agent.v1.AgentService"), "{cp}");

    // The agent's address: its host's (or 127.0.0.1:PORT without namespaces).
    let row = c.node_row("n1").expect("n1 listed");
    let agent = row
        .get(5)
        .filter(|a| a.parse::<std::net::SocketAddr>().is_ok())
        .unwrap_or_else(|| panic!("agent address in {row:?}"))
        .to_owned();
    let listed = grpcurl_ok(&[&agent, "list"]);
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

    // The proto doc comments are the API reference: describe shows them.
    let described = grpcurl_ok(&[&agent, "describe", "orca.agent.v1.AgentService"]);
    assert!(
        described.contains("Runs pods on this node's containerd"),
        "{described}"
    );
    let message = grpcurl_ok(&[
        &c.addr,
        "describe",
        "orca.types.v1.ContainerStateTerminated",
    ]);
    assert!(
        message.contains("128+N for a process killed by signal N"),
        "{message}"
    );

    // Health.
    let health = grpcurl_ok(&[
        "-d",
        r#"{"service":"orca.controlplane.v1.AdminService"}"#,
        &c.addr,
        "grpc.health.v1.Health/Check",
    ]);
    assert!(health.contains("SERVING"), "{health}");
    let health = grpcurl_ok(&[
        "-d",
        r#"{"service":"orca.agent.v1.AgentService"}"#,
        &agent,
        "grpc.health.v1.Health/Check",
    ]);
    assert!(health.contains("SERVING"), "{health}");

    // Real calls through reflection alone.
    let pods = grpcurl_ok(&[&agent, "orca.agent.v1.AgentService/ListPods"]);
    let compact: String = pods.split_whitespace().collect();
    assert_eq!(compact, "{}", "no pods yet: {pods}");
    let node = grpcurl_ok(&[
        "-d",
        r#"{"name":"n1"}"#,
        &c.addr,
        "orca.controlplane.v1.AdminService/GetNode",
    ]);
    assert!(node.contains("NODE_STATE_READY"), "{node}");

    // Declared but not yet built: UNIMPLEMENTED, saying who brings it.
    let drain = grpcurl_err(&[
        "-d",
        r#"{"name":"n1"}"#,
        &c.addr,
        "orca.controlplane.v1.AdminService/DrainNode",
    ]);
    assert!(
        drain.contains("Unimplemented") && drain.contains("control-plane core"),
        "{drain}"
    );
    let telemetry = grpcurl_err(&[&agent, "orca.agent.v1.AgentService/Telemetry"]);
    assert!(
        telemetry.contains("Unimplemented") && telemetry.contains("GPU issue"),
        "{telemetry}"
    );
}
