//! `heartbeats`: the control plane's CPU while N nodes heartbeat at the
//! production interval over real mutual TLS. Each simulated node joins like an
//! agent (external node, join token, its own key and CSR, its own signed
//! certificate) and keeps its own TLS connection; it is a lightweight client,
//! not a full agent, so thousands fit on one machine. The control plane's CPU
//! time is read from `/proc/<pid>/stat` over a measurement window after every
//! node has heartbeated at least once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use orca_proto::controlplane::v1::{
    self as pb, HeartbeatRequest, JoinRequest, node_service_client::NodeServiceClient,
};
use orca_proto::tls::CertSlot;
use orca_proto::types::v1::Resources;

use crate::bench::metric;
use crate::cluster::TestCluster;

/// One simulated node: its id and a client over its own TLS connection.
struct Node {
    id: String,
    client: NodeServiceClient<tonic::transport::Channel>,
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("control plane stat");
    let after = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after "pid (comm) ".
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    ticks as f64 / hz
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// Registers and joins one external node.
async fn join(admin: &mut orca_cli::Admin, ca: &str, server: &str, name: String) -> Node {
    admin
        .add_node(pb::AddNodeRequest {
            name: name.clone(),
            external: true,
            ..Default::default()
        })
        .await
        .expect("AddNode");
    let token = admin
        .create_join_token(pb::CreateJoinTokenRequest {
            node_name: name.clone(),
        })
        .await
        .expect("CreateJoinToken")
        .into_inner()
        .token;
    let key = rcgen::KeyPair::generate().expect("key");
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("csr pem");
    let anonymous = orca_proto::tls::client_config(ca, None).expect("tls");
    let channel = orca_proto::tls::channel(server, None, anonymous, Duration::from_secs(30))
        .expect("channel");
    let resp = NodeServiceClient::new(channel)
        .join(JoinRequest {
            token,
            node_name: name,
            agent_version: env!("CARGO_PKG_VERSION").into(),
            agent_address: "127.0.0.1:1".into(),
            csr_pem: csr,
            ..Default::default()
        })
        .await
        .expect("Join")
        .into_inner();
    let slot = CertSlot::new(&resp.node_cert_pem, &key.serialize_pem()).expect("cert");
    let tls = orca_proto::tls::client_config(ca, Some(slot)).expect("tls");
    let channel =
        orca_proto::tls::channel(server, None, tls, Duration::from_secs(30)).expect("channel");
    Node {
        id: resp.node_id,
        client: NodeServiceClient::new(channel),
    }
}

/// Runs the scenario: `nodes` nodes at `interval`, CPU measured over `window`.
pub fn run(nodes: usize, interval: Duration, window: Duration) {
    let ms = interval.as_millis();
    let yaml = format!(
        "heartbeat_interval_ms: {ms}\nsuspect_after_ms: {}\nnot_ready_after_ms: {}\nlost_after_ms: {}\nreconcile_interval_ms: 500\n",
        ms * 3,
        ms * 6,
        ms * 12
    );
    let c = TestCluster::start_configured(&[], &yaml);
    let pid = c.control_plane_pid().expect("control plane pid");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let ca = std::fs::read_to_string(c.data_dir().join("ca.pem")).expect("ca");
        let admin = orca_cli::connect(Some(c.credentials()), None)
            .await
            .expect("admin client");
        let started = Instant::now();
        let joined: Vec<Node> = futures::stream::iter(0..nodes)
            .map(|i| {
                let mut admin = admin.clone();
                let (ca, server) = (ca.clone(), c.server.clone());
                async move { join(&mut admin, &ca, &server, format!("hb-{i:05}")).await }
            })
            .buffer_unordered(32)
            .collect()
            .await;
        let join_s = started.elapsed().as_secs_f64();
        eprintln!("{nodes} nodes joined in {join_s:.1}s");
        metric("join_rate", nodes as f64 / join_s, "nodes/s");

        let sent = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let connected = Arc::new(AtomicU64::new(0));
        for (i, node) in joined.into_iter().enumerate() {
            let (sent, failed, connected) = (sent.clone(), failed.clone(), connected.clone());
            // Spread the nodes evenly over the interval, as independent hosts are.
            let offset = interval.mul_f64(i as f64 / nodes as f64);
            tokio::spawn(async move {
                let Node { id, mut client } = node;
                tokio::time::sleep(offset).await;
                let mut sequence = 0;
                loop {
                    sequence += 1;
                    let req = HeartbeatRequest {
                        node_id: id.clone(),
                        sequence,
                        capacity: Some(Resources {
                            cpu_millis: 8000,
                            memory_bytes: 32 << 30,
                            gpus: 1,
                            pods: 110,
                        }),
                        allocatable: Some(Resources {
                            cpu_millis: 8000,
                            memory_bytes: 32 << 30,
                            gpus: 1,
                            pods: 110,
                        }),
                        ..Default::default()
                    };
                    match client.heartbeat(req).await {
                        Ok(_) => {
                            if sequence == 1 {
                                connected.fetch_add(1, Ordering::Relaxed);
                            }
                            sent.fetch_add(1, Ordering::Relaxed)
                        }
                        Err(e) => {
                            if failed.fetch_add(1, Ordering::Relaxed) < 5 {
                                eprintln!("heartbeat failed: {e}");
                            }
                            0
                        }
                    };
                    tokio::time::sleep(interval).await;
                }
            });
        }
        // Warm-up: every node connected and heartbeating, one more interval to settle.
        let deadline = Instant::now() + interval * 6 + Duration::from_secs(60);
        while connected.load(Ordering::Relaxed) < nodes as u64 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(interval).await;
        let (cpu0, sent0, t0) = (
            cpu_seconds(pid),
            sent.load(Ordering::Relaxed),
            Instant::now(),
        );
        tokio::time::sleep(window).await;
        let (cpu1, sent1, elapsed) = (cpu_seconds(pid), sent.load(Ordering::Relaxed), t0.elapsed());
        let share = (cpu1 - cpu0) / elapsed.as_secs_f64();
        eprintln!(
            "{} connected, {} heartbeats in {:.1}s, {} failed",
            connected.load(Ordering::Relaxed),
            sent1 - sent0,
            elapsed.as_secs_f64(),
            failed.load(Ordering::Relaxed)
        );
        metric(
            "heartbeats_per_s",
            (sent1 - sent0) as f64 / elapsed.as_secs_f64(),
            "1/s",
        );
        metric(
            "heartbeat_failures",
            failed.load(Ordering::Relaxed) as f64,
            "count",
        );
        metric("cp_rss_mib", rss_mib(pid), "MiB");
        let name = if nodes == 10_000 && interval == Duration::from_secs(10) {
            "cp_core_share_10k_nodes".to_owned()
        } else {
            format!("cp_core_share_{nodes}_nodes_{ms}ms")
        };
        metric(&name, share, "fraction");
    });
    rt.shutdown_background();
}
