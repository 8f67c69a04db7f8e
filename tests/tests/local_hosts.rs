//! The `local` provider's simulated hosts as real hosts: each in a network
//! namespace of its own with its own address on the cluster's bridge, pods in
//! their host's network, and the fault mechanics (KillAgent, Partition, Heal)
//! and the terminate fence, all on real namespaces and real processes.
//! Faults are injected through the provider library on the cluster's own hosts
//! (same config and data directory as its control plane).

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::time::Duration;

use orca_control_plane::cloud::netns::HostNetwork;
use orca_control_plane::cloud::{Fault, InstanceProvider as _};
use orca_tests::cluster::{DEADLINE, TestCluster};
use orca_tests::env::{http_request, process_running};
use orca_tests::eventually::eventually_blocking;

/// The agent port the provider gives every host (its default).
const AGENT_PORT: u16 = 7444;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A cluster whose hosts must have namespaces (the tests run as root). These
/// tests drive the provider's mechanics themselves, so the control plane never
/// declares a node Lost (and fences it) during them.
fn cluster() -> TestCluster {
    let c = TestCluster::start_configured(&["--retry-ms=100"], "lost_after_ms: 600000\n");
    assert!(
        c.namespaced,
        "the provider fell back to plain processes (run as root with iproute2):\n{}",
        c.control_plane_log()
    );
    c
}

fn add_node(c: &TestCluster, node: &str) -> HostNetwork {
    let out = c.orca_ok(&["node", "add", node]);
    assert!(out.contains(&format!("node/{node} Ready")), "{out}");
    c.host_network(node).expect("the host's network.json")
}

fn reachable(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
}

/// The pid of the pod's container task, as containerd reports it.
fn task_pid(c: &TestCluster, node: &str, pod: &str) -> u32 {
    let pod = c.wait_phase(pod, "Running");
    c.container_pid(node, &pod)
        .unwrap_or_else(|| panic!("no task for {pod} on {node}"))
}

/// Whether process `pid` lives in the host's network namespace.
fn in_netns(pid: u32, host: &HostNetwork) -> bool {
    let ns = std::fs::metadata(host.netns_path()).expect("netns file");
    std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .is_ok_and(|p| p.ino() == ns.ino() && p.dev() == ns.dev())
}

fn get_index(ip: Ipv4Addr, port: u16) -> Result<String, String> {
    let addr = format!("{ip}:{port}");
    match http_request(&addr, "GET", "/index.html", b"") {
        Ok(r) if r.status == 200 => Ok(r.body),
        Ok(r) => Err(format!("status {}", r.status)),
        Err(e) => Err(e.to_string()),
    }
}

#[test]
fn hosts_have_their_own_namespace_and_address() {
    let c = cluster();
    let n1 = add_node(&c, "n1");
    let n2 = add_node(&c, "n2");
    assert_ne!(n1.ip, n2.ip, "distinct addresses");
    let gateway = c.network.gateway;
    for host in [&n1, &n2] {
        let net = u32::from(host.ip) & 0xffff_ff00;
        assert_eq!(
            net,
            u32::from(gateway) & 0xffff_ff00,
            "{host:?} in {}",
            c.network.cidr
        );
        assert_ne!(host.ip, gateway);
        assert!(host.netns_path().exists(), "{host:?}: netns exists");
        assert!(
            Path::new("/sys/class/net").join(&host.veth).exists(),
            "{host:?}: veth exists"
        );
        assert_eq!(
            host.netns,
            format!("{}-{}", c.network.bridge, node_of(host))
        );
    }
    // Agents serve and advertise their host's address, and run inside the namespace.
    for (node, host) in [("n1", &n1), ("n2", &n2)] {
        let n = c.node(node);
        assert_eq!(n["address"], format!("{}:{AGENT_PORT}", host.ip), "{n}");
        assert!(reachable(SocketAddr::new(host.ip.into(), AGENT_PORT)));
    }
    let pids = c.agent_pids();
    assert_eq!(pids.len(), 2);
    assert!(
        pids.iter().all(|p| in_netns(*p, &n1) || in_netns(*p, &n2)),
        "agents run in their hosts' namespaces"
    );
}

fn node_of(host: &HostNetwork) -> &str {
    host.netns.split_once('-').map_or("", |(_, n)| n)
}

#[test]
fn pods_listen_on_their_hosts_address_and_reach_each_other() {
    let c = cluster();
    let n1 = add_node(&c, "n1");
    c.orca_ok(&[
        "run", "web", "--image", &c.image, "--", "httpd", "-f", "-p", "8080", "-h", "/www",
    ]);
    let web = c.wait_phase("web", "Running");
    assert_eq!(web["node"], "n1", "{web}");
    // From this machine, at the host's address.
    let page = eventually_blocking("the pod's httpd at n1's address", DEADLINE, || {
        get_index(n1.ip, 8080)
    });
    assert!(!page.is_empty());
    let pid = task_pid(&c, "n1", "web");
    assert!(in_netns(pid, &n1), "the container is in n1's namespace");

    // A pod on a second host fetches the page from the first host's pod.
    let n2 = add_node(&c, "n2");
    // (busybox-static's wget exits with SIGSEGV in this image; nc works.)
    let fetch = format!(
        "printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {} 8080",
        n1.ip
    );
    c.orca_ok(&[
        "run", "client", "--image", &c.image, "--", "sh", "-c", &fetch,
    ]);
    let client = c.wait_phase("client", "Succeeded");
    assert_eq!(client["node"], "n2", "{client}");
    let logs = c.orca_ok(&["logs", "client"]);
    assert!(logs.starts_with("HTTP/1.1 200 OK"), "{logs}");
    assert!(logs.ends_with(&page), "{logs}");
    assert_ne!(n1.ip, n2.ip);
}

#[test]
fn kill_agent_leaves_the_pods_running() {
    let c = cluster();
    let n1 = add_node(&c, "n1");
    c.orca_ok(&["run", "sleeper", "--image", &c.image, "--", "sleep", "3600"]);
    let pid = task_pid(&c, "n1", "sleeper");
    let agent = c.agent_pids()[0];
    let provider = c.provider();
    runtime()
        .block_on(provider.fault(&TestCluster::instance_id("n1"), Fault::KillAgent))
        .expect("KillAgent");
    assert!(!process_running(agent), "the agent is gone");
    assert!(!reachable(SocketAddr::new(n1.ip.into(), AGENT_PORT)));
    eventually_blocking("n1 to stop heartbeating (NotReady)", DEADLINE, || {
        let n = c.node("n1");
        if n["state"] == "NotReady" {
            Ok(())
        } else {
            Err(n)
        }
    });
    assert!(process_running(pid), "the container still runs");
    assert!(in_netns(pid, &n1));
}

#[test]
fn partition_blocks_terminate_until_healed_then_terminate_fences() {
    let c = cluster();
    let n1 = add_node(&c, "n1");
    c.orca_ok(&[
        "run", "web", "--image", &c.image, "--", "httpd", "-f", "-p", "8080", "-h", "/www",
    ]);
    let pid = task_pid(&c, "n1", "web");
    let agent_addr = SocketAddr::new(n1.ip.into(), AGENT_PORT);
    assert!(reachable(agent_addr));
    let provider = c.provider();
    let id = TestCluster::instance_id("n1");
    let rt = runtime();

    rt.block_on(provider.fault(&id, Fault::Partition))
        .expect("Partition");
    eventually_blocking("n1 to be unreachable", DEADLINE, || {
        if reachable(agent_addr) {
            Err("connected")
        } else {
            Ok(())
        }
    });
    assert!(c.data_dir().join("hosts/n1/partitioned").exists());
    let err = rt
        .block_on(provider.terminate(&id))
        .expect_err("terminate fails while partitioned");
    assert!(
        err.to_string().contains("host unreachable: partitioned"),
        "{err}"
    );
    // A provider that starts afresh (a restarted control plane) knows it too.
    let fresh = c.provider();
    assert!(rt.block_on(fresh.terminate(&id)).is_err());
    assert!(process_running(pid), "nothing was killed");

    rt.block_on(provider.fault(&id, Fault::Heal)).expect("Heal");
    eventually_blocking("n1 to be reachable again", DEADLINE, || {
        if reachable(agent_addr) {
            Ok(())
        } else {
            Err("unreachable")
        }
    });
    let agent = c.agent_pids()[0];
    let pause: u32 = pause_pid(&c, "n1");
    assert!(in_netns(pause, &n1));

    rt.block_on(provider.terminate(&id))
        .expect("terminate after heal");
    for (what, p) in [("agent", agent), ("container", pid), ("orca-pause", pause)] {
        assert!(!process_running(p), "the {what} ({p}) is gone");
    }
    assert!(!n1.netns_path().exists(), "netns deleted");
    assert!(
        !Path::new("/sys/class/net").join(&n1.veth).exists(),
        "veth deleted"
    );
    assert!(!c.data_dir().join("hosts/n1").exists(), "host dir removed");
    assert!(!reachable(agent_addr));
    // Terminating what is gone is not an error.
    rt.block_on(provider.terminate(&id))
        .expect("terminate is idempotent");
}

/// The pid of the (only) pod's `orca-pause` on `node`.
fn pause_pid(c: &TestCluster, node: &str) -> u32 {
    let pods = c.data_dir().join("hosts").join(node).join("pods");
    std::fs::read_dir(&pods)
        .expect("pods dir")
        .flatten()
        .find_map(|d| std::fs::read_to_string(d.path().join("pause.pid")).ok())
        .and_then(|p| p.trim().parse().ok())
        .expect("a pause.pid")
}

/// The MAC address of interface `link` in namespace `netns` (none: this machine's).
fn mac_of(netns: Option<&str>, link: &str) -> String {
    let mut cmd = std::process::Command::new("ip");
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    let out = cmd.args(["-o", "link", "show", link]).output().expect("ip");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no MAC for {link}: {text}"))
        .to_owned()
}

/// The gateway's MAC in a host's ARP cache, once it has one.
fn gateway_neighbour(netns: &str, gateway: Ipv4Addr) -> Option<String> {
    let out = std::process::Command::new("ip")
        .args(["-n", netns, "neigh", "show", &gateway.to_string()])
        .output()
        .expect("ip neigh");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "lladdr")
        .nth(1)
        .map(str::to_owned)
}

/// Finding 4 of the hardening review: Linux gives a bridge without an address
/// of its own the lowest MAC of its ports, so removing the node that owned it
/// moved the gateway's MAC under every other host's ARP cache and they fell
/// silent until declared Lost. The bridge now has a fixed MAC: removing that
/// node leaves the gateway where the hosts' caches say it is, and every other
/// node stays Ready through many heartbeats.
#[test]
fn removing_the_node_with_the_lowest_mac_leaves_the_others_ready() {
    // Suspect after 10 missed heartbeats rather than 5: a busy 2-core machine
    // may delay one past 1 s, which is not what this test is about.
    let c = TestCluster::start_configured(
        &["--retry-ms=100"],
        "suspect_after_ms: 2000\nnot_ready_after_ms: 4000\nlost_after_ms: 8000\n",
    );
    assert!(c.namespaced, "{}", c.control_plane_log());
    let bridge = c.network.bridge.clone();
    let gateway = c.network.gateway;
    let nodes = ["m1", "m2", "m3"];
    let hosts: Vec<HostNetwork> = nodes.iter().map(|n| add_node(&c, n)).collect();
    let bridge_mac = mac_of(None, &bridge);
    assert_eq!(
        bridge_mac,
        orca_control_plane::cloud::netns::bridge_mac(&bridge),
        "the bridge has its fixed MAC"
    );
    // Every host has talked to the control plane through the gateway.
    for h in &hosts {
        let seen = eventually_blocking("the gateway in the host's ARP cache", DEADLINE, || {
            gateway_neighbour(&h.netns, gateway).ok_or("not yet")
        });
        assert_eq!(seen, bridge_mac, "{}", h.netns);
    }
    let lowest = (0..hosts.len())
        .min_by_key(|&i| mac_of(None, &hosts[i].veth))
        .expect("three hosts");
    c.orca_ok(&["node", "remove", nodes[lowest]]);
    eventually_blocking("the removed node's veth gone", DEADLINE, || {
        (!orca_control_plane::cloud::netns::link_exists(&hosts[lowest].veth))
            .then_some(())
            .ok_or("still there")
    });
    assert_eq!(mac_of(None, &bridge), bridge_mac, "the gateway's MAC moved");
    // 25 heartbeat intervals (200 ms each): no other node
    // leaves Ready, and each still finds the gateway where its cache says.
    for _ in 0..25 {
        for (i, node) in nodes.iter().enumerate().filter(|(i, _)| *i != lowest) {
            let state = c.node(node);
            assert_eq!(state["state"], "Ready", "{node}: {state}");
            if let Some(cached) = gateway_neighbour(&hosts[i].netns, gateway) {
                assert_eq!(cached, bridge_mac, "{node}'s ARP cache");
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every process of this machine whose command line `matches`.
fn processes_where(matches: impl Fn(&[String]) -> bool) -> Vec<(u32, Vec<String>)> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let raw = std::fs::read(e.path().join("cmdline")).ok()?;
            let args: Vec<String> = raw
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            (!args.is_empty() && matches(&args)).then_some((pid, args))
        })
        .collect()
}

/// Finding 8 of the hardening review: fenced hosts' stopped tasks kept their
/// shims and loggers alive. After a fence nothing of the host is left: no
/// process in its namespace, no shim of its containerd namespace, no logger or
/// other process holding a path of its directory, no mount under it.
#[test]
fn a_fence_leaves_no_process_or_mount_of_the_host() {
    let c = cluster();
    let n1 = add_node(&c, "n1");
    let ns = c.namespace("n1");
    let host_dir = c.data_dir().join("hosts/n1");
    let secret = "apiVersion: v1\nkind: Secret\nmetadata: {name: token}\nstringData: {t: s3cret}\n";
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: held}}\nspec:\n  volumes:\n  - {{name: t, secret: {{secretName: token}}}}\n  - {{name: scratch, emptyDir: {{medium: Memory}}}}\n  containers:\n  - name: a\n    image: {image}\n    command: [sleep, '600']\n    volumeMounts: [{{name: t, mountPath: /t}}, {{name: scratch, mountPath: /s}}]\n  - name: b\n    image: {image}\n    command: [sh, -c, 'while :; do echo tick; sleep 1; done']\n",
        image = c.image
    );
    let file = c.dir().join("held.yaml");
    std::fs::write(&file, format!("{secret}---\n{pod}")).unwrap();
    c.orca_ok(&["apply", "-f", file.to_str().unwrap()]);
    c.wait_phase("held", "Running");
    let shim = |args: &[String]| args.windows(2).any(|w| w[0] == "-namespace" && w[1] == ns);
    let holds_dir = |args: &[String]| {
        args.iter()
            .skip(1)
            .any(|a| Path::new(a).starts_with(&host_dir))
    };
    let mounts = || {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
            .filter(|m| Path::new(m).starts_with(&host_dir))
            .collect::<Vec<_>>()
    };
    // What the fence must clear is there to begin with.
    assert!(processes_where(shim).len() >= 2, "two tasks' shims");
    assert!(
        processes_where(|a| a[0].ends_with("orca-logger") && holds_dir(a)).len() >= 2,
        "two loggers: {:?}",
        processes_where(holds_dir)
    );
    assert!(!mounts().is_empty(), "tmpfs volumes mounted");

    let rt = runtime();
    rt.block_on(c.provider().terminate(&TestCluster::instance_id("n1")))
        .expect("terminate");
    assert_eq!(processes_where(shim), Vec::new(), "shims left");
    assert_eq!(
        processes_where(holds_dir),
        Vec::new(),
        "loggers or others left"
    );
    assert_eq!(mounts(), Vec::<String>::new(), "mounts left");
    assert!(!n1.netns_path().exists(), "namespace deleted");
    let tasks = c.tasks("n1");
    assert!(
        tasks.iter().all(|(_, status)| status != "RUNNING"),
        "{tasks:?}"
    );
}
