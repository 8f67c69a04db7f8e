//! The EC2 provider under load and under crashes (moto behind the EC2 proxy).
//!
//! - `ec2-launch`: N pods at once; for each, the control plane's own time from
//!   the pod being recorded (its `created_at`) to its RunInstances reaching the
//!   proxy (`ec2_launch_overhead_ms_p50/p99`). Instances are not booted: the
//!   player holds every type, so only the control plane's path is measured.
//! - `ec2-crash`: N pods launch while the control plane is killed with SIGKILL
//!   at random moments and restarted; once every pod is Running or Failed and
//!   the sweeps have run, it counts instances no live pod owns
//!   (`ec2_leaked_instances`) and pods with more than one live instance
//!   (`ec2_duplicate_instances`), summed over runs. [`crash_run`] is also the
//!   fault test.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use orca_proto::controlplane::v1 as pb;
use orca_proto::types::v1 as types;

use crate::bench::{metric, ms, percentile};
use crate::ec2_cluster::Ec2Cluster;
use crate::env::InstanceInfo;
use crate::eventually::try_eventually_blocking;

/// Timings for many pods on few cores: heartbeats every second, Lost after 40 s.
const CLUSTER_YAML: &str = "heartbeat_interval_ms: 1000\nsuspect_after_ms: 10000\n\
    not_ready_after_ms: 20000\nlost_after_ms: 40000\npending_timeout_ms: 600000\n\
    reconcile_interval_ms: 200\nagent_call_timeout_ms: 10000\n";

/// How often the scenarios look (each look lists every pod and instance).
const POLL: Duration = Duration::from_millis(500);

/// A small xorshift generator: random kill points without a dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

fn pod(name: &str, image: &str) -> types::Pod {
    let spec = serde_json::json!({
        "restartPolicy": "Always",
        "containers": [{"name": "main", "image": image, "command": ["sleep", "3600"]}],
    });
    types::Pod {
        r#ref: Some(types::PodRef {
            namespace: "default".into(),
            name: name.into(),
            uid: String::new(),
        }),
        spec_json: spec.to_string(),
        annotations: [(
            "orca.research/instance-type".to_owned(),
            "t3.small".to_owned(),
        )]
        .into(),
        labels: Default::default(),
    }
}

/// Creates pods `names` through AdminService; a pod whose answer was lost (the
/// control plane died) and that exists already counts as created.
fn create_pods(e: &Ec2Cluster, names: &[String]) -> Vec<String> {
    let image = e.cluster.image.clone();
    e.rt.block_on(async {
        let mut missed = Vec::new();
        let mut admin = e.cluster.admin().await;
        for name in names {
            let req = pb::RunPodRequest {
                pod: Some(pod(name, &image)),
            };
            match admin.run_pod(req).await {
                Ok(_) => {}
                Err(s) if s.code() == tonic::Code::AlreadyExists => {}
                Err(_) => missed.push(name.clone()),
            }
        }
        missed
    })
}

/// Every pod: (name, uid, phase, reason, node).
fn pods(e: &Ec2Cluster) -> Vec<(String, String, String, String, String)> {
    let out = e.cluster.orca_ok(&["get", "pods", "-o", "json"]);
    let list: serde_json::Value = serde_json::from_str(&out).expect("pods as JSON");
    let items = list
        .as_array()
        .cloned()
        .or_else(|| list["items"].as_array().cloned())
        .unwrap_or_default();
    items
        .iter()
        .map(|p| {
            let s = |k: &str| p[k].as_str().unwrap_or_default().to_owned();
            (s("name"), s("uid"), s("phase"), s("reason"), s("node"))
        })
        .collect()
}

/// What one crash run left behind.
#[derive(Debug, Clone, Default)]
pub struct CrashOutcome {
    /// Live instances no live pod owns.
    pub leaked: usize,
    /// Extra live instances of a pod (beyond one).
    pub duplicates: usize,
    /// Pods Running at the end.
    pub running: usize,
    /// Pods Failed at the end (each with a reason).
    pub failed: usize,
    /// Pods neither Running nor Failed, or Failed without a reason.
    pub unsettled: Vec<String>,
    /// The stray instances, for the report.
    pub strays: Vec<String>,
}

/// Counts leaked and duplicate instances against the pods.
fn audit(
    live: &[InstanceInfo],
    pods: &[(String, String, String, String, String)],
) -> (usize, usize, Vec<String>) {
    let owners: HashMap<&str, &str> = pods
        .iter()
        .filter(|p| matches!(p.2.as_str(), "Running" | "Pending"))
        .map(|p| (p.1.as_str(), p.4.as_str()))
        .collect();
    let mut per_pod: HashMap<&str, usize> = HashMap::new();
    let mut strays = Vec::new();
    for i in live {
        let uid = i
            .tags
            .get("orca.research/pod-uid")
            .map_or("", String::as_str);
        let node = i.tags.get("orca.research/node").map_or("", String::as_str);
        match owners.get(uid) {
            Some(bound) if *bound == node => *per_pod.entry(uid).or_default() += 1,
            Some(_) => *per_pod.entry(uid).or_default() += 1,
            None => strays.push(format!("{} ({node}, uid {uid})", i.instance_id)),
        }
    }
    let duplicates = per_pod.values().map(|n| n.saturating_sub(1)).sum();
    (strays.len(), duplicates, strays)
}

/// One crash run: `pods` pods launch while the control plane is SIGKILLed
/// `kills` times at random moments (seeded) and restarted each time.
pub fn crash_run(pods_n: usize, kills: usize, seed: u64) -> CrashOutcome {
    let mut e = Ec2Cluster::start_with("    sweep_interval_ms: 500\n", CLUSTER_YAML);
    let mut rng = Rng::new(seed);
    let names: Vec<String> = (0..pods_n).map(|i| format!("job-{i}")).collect();
    let mut missed = create_pods(&e, &names[..pods_n / 2]);
    for k in 0..kills {
        // The first kill lands while pods are still being created.
        if k == 0 {
            missed.extend(create_pods(&e, &names[pods_n / 2..]));
        }
        std::thread::sleep(Duration::from_millis(rng.below(1500)));
        e.cluster.kill_control_plane();
        e.cluster.start_control_plane();
        missed = create_pods(&e, &missed);
    }
    if kills == 0 {
        missed.extend(create_pods(&e, &names[pods_n / 2..]));
    }
    assert!(missed.is_empty(), "pods not created: {missed:?}");
    let settle = Duration::from_secs(120 + pods_n as u64 * 3);
    let settled = try_eventually_blocking("every pod Running or Failed", settle, POLL, || {
        let all = pods(&e);
        let open: Vec<String> = all
            .iter()
            .filter(|p| !(p.2 == "Running" || (p.2 == "Failed" && !p.3.is_empty())))
            .map(|p| format!("{} {} {}", p.0, p.2, p.3))
            .collect();
        if all.len() == pods_n && open.is_empty() {
            Ok(all)
        } else {
            Err(open)
        }
    });
    let all = match settled {
        Ok(all) => all,
        Err(_) => pods(&e),
    };
    // Two sweeps (0.5 s apart) collect what no record knows; give them time.
    let clean = try_eventually_blocking(
        "no stray or duplicate instance",
        Duration::from_secs(30),
        POLL,
        || {
            let (leaked, dups, strays) = audit(&e.live_instances(), &all);
            if leaked == 0 && dups == 0 {
                Ok(())
            } else {
                Err((leaked, dups, strays))
            }
        },
    );
    let _ = clean;
    let (leaked, duplicates, strays) = audit(&e.live_instances(), &all);
    CrashOutcome {
        leaked,
        duplicates,
        running: all.iter().filter(|p| p.2 == "Running").count(),
        failed: all
            .iter()
            .filter(|p| p.2 == "Failed" && !p.3.is_empty())
            .count(),
        unsettled: all
            .iter()
            .filter(|p| !(p.2 == "Running" || (p.2 == "Failed" && !p.3.is_empty())))
            .map(|p| format!("{} {} {}", p.0, p.2, p.3))
            .collect(),
        strays,
    }
}

/// `ec2-crash`: `runs` crash runs; prints the summed counts.
pub fn crash(pods: usize, runs: usize, kills: usize) {
    let (mut leaked, mut dups, mut unsettled) = (0, 0, 0);
    for run in 0..runs {
        let seed = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            ^ run as u64;
        let started = Instant::now();
        let o = crash_run(pods, kills, seed);
        eprintln!(
            "run {run}: {} Running, {} Failed, {} unsettled, {} leaked, {} duplicate ({:.0} s){}",
            o.running,
            o.failed,
            o.unsettled.len(),
            o.leaked,
            o.duplicates,
            started.elapsed().as_secs_f64(),
            if o.strays.is_empty() {
                String::new()
            } else {
                format!(" strays: {:?}", o.strays)
            }
        );
        leaked += o.leaked;
        dups += o.duplicates;
        unsettled += o.unsettled.len();
    }
    metric("ec2_leaked_instances", leaked as f64, "count");
    metric("ec2_duplicate_instances", dups as f64, "count");
    metric("ec2_unsettled_pods", unsettled as f64, "count");
}

/// `ec2-launch`: `pods` pods at once; the control plane's time from pod
/// recorded to RunInstances received by the proxy.
pub fn launch(pods_n: usize) {
    let e = Ec2Cluster::start_with("", CLUSTER_YAML);
    e.player.hold("t3.small");
    let names: Vec<String> = (0..pods_n).map(|i| format!("burst-{i}")).collect();
    let missed = create_pods(&e, &names);
    assert!(missed.is_empty(), "{missed:?}");
    let uids: HashMap<String, String> = try_eventually_blocking(
        "a RunInstances per pod",
        Duration::from_secs(120),
        POLL,
        || {
            let all = pods(&e);
            let calls = e.proxy.calls_of("RunInstances");
            let seen = all
                .iter()
                .filter(|p| {
                    let compact: String = p.1.chars().filter(char::is_ascii_alphanumeric).collect();
                    calls.iter().any(|c| {
                        c.params
                            .get("ClientToken")
                            .is_some_and(|t| t.contains(&compact[..16]))
                    })
                })
                .count();
            if seen == pods_n {
                Ok(all.into_iter().map(|p| (p.1, p.0)).collect())
            } else {
                Err(seen)
            }
        },
    )
    .expect("every pod launched");
    let created = e.rt.block_on(async {
        let mut admin = e.cluster.admin().await;
        admin
            .list_pods(pb::ListPodsRequest::default())
            .await
            .expect("ListPods")
            .into_inner()
            .pods
    });
    let mut overhead = Vec::new();
    for call in e.proxy.calls_of("RunInstances") {
        let Some(token) = call.params.get("ClientToken") else {
            continue;
        };
        let Some(record) = created.iter().find(|p| {
            let compact: String = crate::ec2_cluster::uid_of(p)
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .collect();
            compact.len() >= 16 && token.contains(&compact[..16]) && token.ends_with("-1")
        }) else {
            continue;
        };
        let Some(at) = record.created_at else {
            continue;
        };
        let created_at = SystemTime::UNIX_EPOCH
            + Duration::new(at.seconds.max(0) as u64, at.nanos.max(0) as u32);
        if let Ok(d) = call.at.duration_since(created_at) {
            overhead.push(d);
        }
    }
    assert_eq!(overhead.len(), uids.len(), "one first call per pod");
    eprintln!("{} pods, first RunInstances of each timed", overhead.len());
    metric(
        "ec2_launch_overhead_ms_p50",
        ms(percentile(&overhead, 50)),
        "ms",
    );
    metric(
        "ec2_launch_overhead_ms_p99",
        ms(percentile(&overhead, 99)),
        "ms",
    );
}
