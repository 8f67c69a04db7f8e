//! PortForward and Stats on real parts: a real `orca-agent` on a private
//! containerd running busybox pods on the host's network, called over mutual
//! TLS with the control plane's client certificate; and the control plane's
//! relay (`Cluster::port_forward`, `Cluster::pod_stats`) run in-process over
//! the same kind of agent.
//!
//! The pod's listeners: `httpd` serving `hello` (and a 1 MiB file), and
//! `nc -ll -e wc -c`, which answers only once it has read to end of file, so it
//! proves that the client's half-close reaches the listener. Ports are free
//! ports of this machine: the pods share its network with every other test.

use futures::StreamExt as _;
use orca_control_plane::cluster::{Cluster, ClusterError};
use orca_proto::agent::v1::{self as pb, agent_service_client::AgentServiceClient};
use orca_proto::controlplane::v1 as cp;
use orca_proto::types::v1::{self as types, PodPhase, container_state::State};
use orca_tests::agent::{NODE, TestAgent};
use orca_tests::cluster::DEADLINE;
use orca_tests::env::{free_port, workspace_bin};
use orca_tests::eventually::eventually;
use serde_json::json;
use tonic::Code;
use tonic::transport::Channel;

/// The size of the file served and of the upload counted.
const MIB: usize = 1024 * 1024;

/// A running pod of web servers and a CPU burner.
struct Pod {
    uid: String,
    /// httpd: `/` is `hello\n`, `/big` is 1 MiB of zeros.
    web: u16,
    /// `wc -c` of whatever a connection sends, answered at its end of file.
    count: u16,
}

/// Runs pod `web` (containers `web`, `count` and `busy`) and waits until it
/// runs; `busy` burns CPU, then says `looped` and sleeps.
async fn run_pod(a: &TestAgent) -> Pod {
    let web = free_port();
    let count = std::iter::repeat_with(free_port)
        .find(|p| *p != web)
        .expect("another free port");
    let spec = json!({
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 1,
        "containers": [
            { "name": "web", "image": a.image, "command": ["sh", "-c", format!(
                "mkdir -p /www && echo hello > /www/index.html && \
                 dd if=/dev/zero of=/www/big bs=1024 count=1024 2>/dev/null && \
                 exec httpd -f -p {web} -h /www")] },
            { "name": "count", "image": a.image,
              "command": ["nc", "-ll", "-p", count.to_string(), "-e", "wc", "-c"] },
            { "name": "busy", "image": a.image, "command": ["sh", "-c",
                "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; echo looped; exec sleep 3600"] },
        ],
    });
    let uid = a.run("web", spec).await;
    a.wait_phase(&uid, PodPhase::Running).await;
    Pod { uid, web, count }
}

/// What a port-forward session returned.
#[derive(Debug)]
struct Forwarded {
    data: Vec<u8>,
    /// The last message was `close_write` (the listener's end of file).
    closed: bool,
}

fn start(uid: &str, port: u32) -> pb::PortForwardInput {
    pb::PortForwardInput {
        input: Some(pb::port_forward_input::Input::Start(pb::PortForwardStart {
            uid: uid.into(),
            port,
        })),
    }
}

/// `payload` in 64 KiB messages, then `close_write`.
fn upload(payload: &[u8]) -> Vec<pb::PortForwardInput> {
    use pb::port_forward_input::Input;
    payload
        .chunks(64 * 1024)
        .map(|c| pb::PortForwardInput {
            input: Some(Input::Data(c.to_vec().into())),
        })
        .chain([pb::PortForwardInput {
            input: Some(Input::CloseWrite(true)),
        }])
        .collect()
}

/// Reads a session's output to its end.
async fn drain(
    mut out: tonic::Streaming<pb::PortForwardOutput>,
) -> Result<Forwarded, tonic::Status> {
    let mut got = Forwarded {
        data: Vec::new(),
        closed: false,
    };
    while let Some(m) = out.message().await? {
        assert!(!got.closed, "nothing follows close_write: {m:?}");
        got.data.extend_from_slice(&m.data);
        got.closed = m.close_write;
    }
    Ok(got)
}

/// Sends `payload` to `port` of pod `uid` through the agent, half-closes, and
/// reads everything back. The request stream stays open after `close_write`:
/// the session must end because both directions are done, not because the
/// client's stream did.
async fn forward(
    client: &AgentServiceClient<Channel>,
    uid: &str,
    port: u16,
    payload: &[u8],
) -> Result<Forwarded, tonic::Status> {
    let input = std::iter::once(start(uid, port.into())).chain(upload(payload));
    let input = futures::stream::iter(input).chain(futures::stream::pending());
    let out = client.clone().port_forward(input).await?.into_inner();
    drain(out).await
}

/// `GET path` over HTTP/1.0 through the agent, once the listener is up.
async fn get(client: &AgentServiceClient<Channel>, pod: &Pod, path: &str) -> Forwarded {
    let request = format!("GET {path} HTTP/1.0\r\n\r\n");
    eventually(&format!("GET {path} through PortForward"), DEADLINE, || {
        forward(client, &pod.uid, pod.web, request.as_bytes())
    })
    .await
}

/// Splits an HTTP response into its head and body.
fn body(response: &[u8]) -> (String, &[u8]) {
    let at = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("an HTTP response: {:?}", String::from_utf8_lossy(response)));
    (
        String::from_utf8_lossy(&response[..at]).into_owned(),
        &response[at + 4..],
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn port_forward_copies_both_ways_with_half_close_and_names_failures() {
    let a = TestAgent::start();
    let pod = run_pod(&a).await;
    let client = a.client().await;

    // Small: the listener's answer, then its end of file, then the stream's end.
    let hello = get(&client, &pod, "/").await;
    let (head, text) = body(&hello.data);
    assert!(
        head.lines().next().is_some_and(|l| l.ends_with(" 200 OK")),
        "{head}"
    );
    assert_eq!(text, b"hello\n");
    assert!(hello.closed, "the listener's end of file is relayed");

    // Large, pod → client: 1 MiB, many chunks, all of it.
    let big = get(&client, &pod, "/big").await;
    let (head, data) = body(&big.data);
    assert!(head.contains(&format!("Content-Length: {MIB}")), "{head}");
    assert_eq!(data.len(), MIB);
    assert!(data.iter().all(|b| *b == 0));

    // Large, client → pod, then the half-close: `wc -c` answers only at its end
    // of file, and counts every byte.
    let payload = vec![b'x'; MIB + 7];
    let counted = eventually("wc -c through PortForward", DEADLINE, || {
        forward(&client, &pod.uid, pod.count, &payload)
    })
    .await;
    assert_eq!(
        String::from_utf8_lossy(&counted.data).trim(),
        (MIB + 7).to_string()
    );
    assert!(counted.closed);

    // Nothing listens: an error naming the pod and the port, as kubectl shows it.
    let closed = free_port();
    let e = forward(&client, &pod.uid, closed, b"").await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert_eq!(
        e.message(),
        format!("pod web: port {closed}: connection refused")
    );

    // No such pod; no such port; no `start` first.
    let e = forward(&client, "no-such-uid", pod.web, b"")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().contains("no-such-uid"), "{e:?}");
    let e = forward(&client, &pod.uid, 0, b"").await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = client
        .clone()
        .port_forward(futures::stream::iter(upload(b"GET /")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("start"), "{e:?}");

    // A pod whose containers have all ended: nothing to connect to.
    let spec = json!({ "restartPolicy": "Never", "containers": [
        { "name": "once", "image": a.image, "command": ["true"] } ] });
    let done = a.run("done", spec).await;
    a.wait_phase(&done, PodPhase::Succeeded).await;
    let e = forward(&client, &done, pod.web, b"").await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("pod done has no running container"),
        "{e:?}"
    );
}

/// The cumulative CPU time of container `id` as its cgroup says it, read here
/// independently of the agent (v1 `cpuacct.usage` or v2 `cpu.stat`).
fn cgroup_cpu_ns(namespace: &str, id: &str) -> u64 {
    let v1 = ["cpuacct", "cpu,cpuacct"]
        .iter()
        .find_map(|h| {
            std::fs::read_to_string(format!("/sys/fs/cgroup/{h}/{namespace}/{id}/cpuacct.usage"))
                .ok()
        })
        .map(|s| s.trim().parse::<u64>().expect("cpuacct.usage is a number"));
    v1.unwrap_or_else(|| {
        let stat = std::fs::read_to_string(format!("/sys/fs/cgroup/{namespace}/{id}/cpu.stat"))
            .expect("the container's cgroup (v1 or v2)");
        stat.lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .expect("usage_usec")
            * 1000
    })
}

async fn stats(client: &mut AgentServiceClient<Channel>) -> pb::StatsResponse {
    client
        .stats(pb::StatsRequest {})
        .await
        .expect("Stats")
        .into_inner()
}

/// Pod `uid`'s container `name` in a Stats answer.
fn container<'a>(s: &'a pb::StatsResponse, uid: &str, name: &str) -> &'a pb::ContainerStats {
    s.pods
        .iter()
        .filter(|p| p.pod.as_ref().is_some_and(|r| r.uid == uid))
        .flat_map(|p| &p.containers)
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("container {name} of pod {uid} in {s:#?}"))
}

/// Container `name`'s state as GetPod reports it.
fn state(status: &types::PodStatus, name: &str) -> Option<State> {
    status
        .container_statuses
        .iter()
        .find(|c| c.name == name)
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.state.clone())
}

#[tokio::test(flavor = "multi_thread")]
async fn stats_read_each_running_containers_cgroup_and_the_node() {
    let a = TestAgent::start();
    let pod = run_pod(&a).await;
    let mut client = a.client().await;
    eventually("the busy loop to finish", DEADLINE, || async {
        let log = a.logs(&pod.uid, "busy", false).await;
        if log == "looped\n" { Ok(()) } else { Err(log) }
    })
    .await;
    let status = a.status(&pod.uid).await;
    let busy_id = TestAgent::container_id(&status, "busy");

    let first = stats(&mut client).await;
    let direct = cgroup_cpu_ns(&a.namespace, &busy_id);
    let second = stats(&mut client).await;

    let entry = first
        .pods
        .iter()
        .find(|p| p.pod.as_ref().is_some_and(|r| r.uid == pod.uid))
        .expect("the pod is in the stats");
    assert_eq!(
        entry
            .pod
            .as_ref()
            .map(|r| (r.namespace.as_str(), r.name.as_str())),
        Some(("default", "web"))
    );
    let mut names: Vec<&str> = entry.containers.iter().map(|c| c.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["busy", "count", "web"], "every running container");

    let busy = container(&first, &pod.uid, "busy");
    let idle = container(&first, &pod.uid, "count");
    // 200,000 shell iterations cost far more CPU than starting a container
    // that then waits (measured here: 317 ms against 10 ms).
    assert!(
        busy.cpu_usage_core_nanoseconds > 4 * idle.cpu_usage_core_nanoseconds,
        "the busy loop's CPU time: {busy:?}, an idle container's: {idle:?}"
    );
    // The figure is the container's own cgroup's: the file read between the two
    // calls lies between what the two calls returned.
    let busy_later = container(&second, &pod.uid, "busy");
    assert!(
        busy.cpu_usage_core_nanoseconds <= direct
            && direct <= busy_later.cpu_usage_core_nanoseconds,
        "{} <= {direct} <= {}",
        busy.cpu_usage_core_nanoseconds,
        busy_later.cpu_usage_core_nanoseconds
    );
    let now = jiff::Timestamp::now().as_second();
    for name in ["busy", "count", "web"] {
        let (c, later) = (
            container(&first, &pod.uid, name),
            container(&second, &pod.uid, name),
        );
        assert!(c.cpu_usage_core_nanoseconds > 0, "{c:?}");
        assert!(
            later.cpu_usage_core_nanoseconds >= c.cpu_usage_core_nanoseconds,
            "CPU time never goes back: {c:?} then {later:?}"
        );
        assert!(c.memory_working_set_bytes > 0, "{c:?}");
        assert!(c.memory_working_set_bytes <= c.memory_usage_bytes, "{c:?}");
        let read = c.time.expect("read time");
        assert!((now - read.seconds).abs() < 60, "read just now: {c:?}");
        assert!(
            later.time.expect("read time").seconds >= read.seconds,
            "{c:?} then {later:?}"
        );
        let Some(State::Running(running)) = state(&status, name) else {
            panic!("{name} runs: {status:?}");
        };
        assert_eq!(
            c.start_time, running.started_at,
            "the run's start, as GetPod reports it"
        );
    }

    let (node, node_later) = (
        first.node.expect("node stats"),
        second.node.expect("node stats"),
    );
    assert!(
        node.cpu_usage_core_nanoseconds >= busy.cpu_usage_core_nanoseconds,
        "{node:?}"
    );
    assert!(node_later.cpu_usage_core_nanoseconds >= node.cpu_usage_core_nanoseconds);
    assert!(node.memory_working_set_bytes > 0, "{node:?}");
    assert!(
        node.memory_working_set_bytes <= node.memory_usage_bytes,
        "{node:?}"
    );
    assert!(node.memory_available_bytes > 0, "{node:?}");

    // A stopped pod leaves the stats.
    a.stop(&pod.uid, 1).await;
    let after = stats(&mut client).await;
    assert!(
        !after
            .pods
            .iter()
            .any(|p| p.pod.as_ref().is_some_and(|r| r.uid == pod.uid)),
        "{after:#?}"
    );
}

/// A control plane's `Cluster` in this process, knowing one Ready node (the
/// test agent) and pod `web` bound to it; it calls the agent with the control
/// plane's certificate, as the real one does.
fn cluster_over(a: &TestAgent, uid: &str, dir: &std::path::Path) -> Cluster {
    let yaml = format!(
        "listen: 127.0.0.1:0\ndata_dir: {}\nagent_call_timeout_ms: 5000\n\
         provider:\n  local:\n    agent_binary: {}\n",
        dir.display(),
        workspace_bin("orca-agent").display()
    );
    let config = orca_control_plane::config::Config::parse(&yaml, &dir.join("orca.yaml"))
        .expect("config parses");
    let orca_control_plane::config::Provider::Local(local) = config.provider.clone() else {
        panic!("a local provider");
    };
    let provider = orca_control_plane::cloud::local::LocalProvider::new(local, dir.join("hosts"));
    let store = orca_store::Store::open(&dir.join("store")).expect("store");
    let (pki, _) = orca_control_plane::pki::Pki::load_or_create(&store.pki).expect("pki");
    let node = cp::Node {
        name: NODE.into(),
        id: "agent-test-id".into(),
        state: cp::NodeState::Ready as i32,
        agent_address: a.addr.clone(),
        ..Default::default()
    };
    store.nodes.put(NODE, &node).expect("node stored");
    let record = cp::PodRecord {
        pod: Some(types::Pod {
            r#ref: Some(types::PodRef {
                namespace: "default".into(),
                name: "web".into(),
                uid: uid.into(),
            }),
            ..Default::default()
        }),
        node_name: NODE.into(),
        ..Default::default()
    };
    store.pods.put("default/web", &record).expect("pod stored");
    let unbound = cp::PodRecord {
        pod: Some(types::Pod {
            r#ref: Some(types::PodRef {
                namespace: "default".into(),
                name: "unbound".into(),
                uid: "unbound-uid".into(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    store
        .pods
        .put("default/unbound", &unbound)
        .expect("pod stored");
    let tls = a.pki.client_config(Some(&a.control_plane_cert));
    Cluster::new(
        config,
        store,
        Box::new(provider),
        pki,
        tls,
        "https://127.0.0.1:1".into(),
    )
}

fn agent_status(e: ClusterError) -> tonic::Status {
    match e {
        ClusterError::Agent { node, status } => {
            assert_eq!(node, NODE);
            status
        }
        other => panic!("an agent's error: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_control_plane_relays_port_forward_and_stats() {
    let a = TestAgent::start();
    let pod = run_pod(&a).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = cluster_over(&a, &pod.uid, dir.path());

    let request = pb::PortForwardInput {
        input: Some(pb::port_forward_input::Input::Data(
            "GET / HTTP/1.0\r\n\r\n".into(),
        )),
    };
    let hello = eventually("GET / through the relay", DEADLINE, || {
        let cluster = cluster.clone();
        let request = request.clone();
        async move {
            let out = cluster
                .streams()
                .port_forward("default", "web", pod.web, futures::stream::iter([request]))
                .await
                .map_err(|e| e.to_string())?;
            drain(out).await.map_err(|e| e.to_string())
        }
    })
    .await;
    assert_eq!(body(&hello.data).1, b"hello\n");
    assert!(hello.closed);

    // The client's input stays open while the answer streams back: the
    // half-close is the client's to send.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let out = cluster
        .streams()
        .port_forward(
            "default",
            "web",
            pod.count,
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )
        .await
        .expect("relayed");
    for m in upload(b"four") {
        tx.send(m).await.expect("the relay reads input");
    }
    let counted = tokio::time::timeout(DEADLINE, drain(out))
        .await
        .expect("the count arrives")
        .expect("a clean end");
    assert_eq!(String::from_utf8_lossy(&counted.data).trim(), "4");
    drop(tx);

    // The agent's errors arrive as the node's, with the agent's status.
    let closed = free_port();
    let e = cluster
        .streams()
        .port_forward("default", "web", closed, futures::stream::empty())
        .await
        .map(drop)
        .map_err(agent_status)
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert_eq!(
        e.message(),
        format!("pod web: port {closed}: connection refused")
    );
    // The control plane's own: no such pod, a pod on no node.
    assert!(matches!(
        cluster
            .streams()
            .port_forward("default", "nope", pod.web, futures::stream::empty())
            .await,
        Err(ClusterError::NotFound { kind: "pod", .. })
    ));
    assert!(matches!(
        cluster
            .streams()
            .port_forward("default", "unbound", pod.web, futures::stream::empty())
            .await,
        Err(ClusterError::FailedPrecondition(_))
    ));

    let s = cluster
        .streams()
        .pod_stats(NODE)
        .await
        .expect("stats relayed");
    let web = container(&s, &pod.uid, "web");
    assert!(web.memory_working_set_bytes > 0, "{web:?}");
    assert!(s.node.is_some());
    assert!(matches!(
        cluster.streams().pod_stats("nope").await,
        Err(ClusterError::NotFound { kind: "node", .. })
    ));
    // A node that stopped answering is not dialled.
    cluster
        .shared()
        .store()
        .nodes
        .update(NODE, |n| n.state = cp::NodeState::NotReady as i32)
        .expect("node updated");
    let e = agent_status(cluster.streams().pod_stats(NODE).await.unwrap_err());
    assert_eq!(e.code(), Code::Unavailable);
    assert!(e.message().contains("NOT_READY"), "{e:?}");
}
