//! `service`: a Service's virtual IP against the pod behind it, and how fast
//! its endpoints follow readiness.
//!
//! - `service_rps` / `direct_rps`: busybox httpd in one pod (one Ready
//!   endpoint, so the only difference is the proxy), loaded by `--clients`
//!   threads each doing sequential HTTP/1.0 GETs (a new connection per
//!   request, as httpd closes each), through the virtual IP and straight to
//!   the pod's address, in alternating windows of `--window-s`; the median
//!   window of each, and their ratio `service_vs_direct`.
//! - `endpoint_update_ms_p99`: a second pod's readiness is flipped `--flips`
//!   times (its probe reads a file `orca exec` removes and puts back); each
//!   sample runs from the pod's Ready condition changing (its
//!   `lastTransitionTime`, stamped by the agent when the probe saw it) to
//!   the load balancer holding the new endpoints (the Service status's
//!   `endpointsUpdatedAt`, stamped when the proxy's list was replaced). Both
//!   clocks are this machine's.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use orca_proto::controlplane::v1 as pb;

use crate::bench::{median, metric, percentile, wait_for};
use crate::cluster::TestCluster;

const MANIFEST: &str = "apiVersion: v1
kind: Pod
metadata: {name: NAME, labels: {app: web, role: ROLE}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: httpd
    image: IMAGE
    command: [sh, -c, 'echo hello > /www/index.html; touch /tmp/ready; exec httpd -f -p 8080 -h /www']
    ports: [{containerPort: 8080}]
    readinessProbe:
      exec: {command: [test, -f, /tmp/ready]}
      periodSeconds: 1
      failureThreshold: 1
---
";

const SERVICES: &str = "apiVersion: v1
kind: Service
metadata: {name: load}
spec:
  selector: {role: load}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: flip}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
";

fn get(addr: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(b"GET / HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).is_ok() && reply.starts_with(b"HTTP/1.")
}

/// Requests per second over `window` with `clients` threads.
fn load(addr: &str, clients: usize, window: Duration) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (addr, done, stop) = (addr.to_owned(), done.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if get(&addr) {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let start = Instant::now();
    std::thread::sleep(window);
    let n = done.load(Ordering::Relaxed);
    let elapsed = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    n as f64 / elapsed.as_secs_f64()
}

fn timestamp(t: &prost_types::Timestamp) -> f64 {
    t.seconds as f64 + f64::from(t.nanos) / 1e9
}

/// Runs the scenario.
pub fn run(clients: usize, window: Duration, windows: usize, flips: usize) {
    let c = TestCluster::start_with(&["--retry-ms=100"]);
    assert!(c.namespaced, "Services need hosts in network namespaces");
    for n in ["s1", "s2"] {
        c.orca_ok(&["node", "add", n]);
    }
    for n in ["s1", "s2"] {
        c.wait_node_ready(n);
    }
    let mut text = String::new();
    for (name, role) in [("load", "load"), ("flip", "flip")] {
        text.push_str(
            &MANIFEST
                .replace("NAME", name)
                .replace("ROLE", role)
                .replace("IMAGE", &c.image),
        );
    }
    text.push_str(SERVICES);
    let file = c.dir().join("bench.yaml");
    std::fs::write(&file, text).unwrap();
    c.orca_ok(&["apply", "-f", file.to_str().unwrap()]);
    c.wait_phase("load", "Running");
    c.wait_phase("flip", "Running");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut admin = rt.block_on(c.admin());
    let mut pods = admin.clone();
    let mut service = |name: &str| -> serde_json::Value {
        let o = rt
            .block_on(admin.get_object(pb::GetObjectRequest {
                kind: "Service".into(),
                namespace: "default".into(),
                name: name.into(),
            }))
            .unwrap()
            .into_inner();
        let mut v: serde_json::Value = serde_json::from_str(&o.manifest_json).unwrap();
        v["status"] = serde_json::from_str(&o.status_json).unwrap();
        v
    };
    let endpoints = |v: &serde_json::Value| {
        v["status"]["ports"][0]["endpoints"]
            .as_array()
            .map_or(0, Vec::len)
    };
    wait_for("both Services' endpoints", || {
        (endpoints(&service("load")) == 1 && endpoints(&service("flip")) == 2).then_some(())
    });
    let vip = format!(
        "{}:80",
        service("load")["spec"]["clusterIP"].as_str().unwrap()
    );
    let direct = format!("{}:8080", c.pod("load")["podIP"].as_str().unwrap());
    eprintln!(
        "through {vip} and straight to {direct}: {clients} clients, {windows} windows of {window:?} each"
    );
    let (mut via, mut straight) = (Vec::new(), Vec::new());
    for w in 0..windows {
        let s = load(&vip, clients, window);
        let d = load(&direct, clients, window);
        eprintln!("window {w}: service {s:.0} req/s, direct {d:.0} req/s");
        via.push(s);
        straight.push(d);
    }
    let mid = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (s, d) = (mid(&mut via), mid(&mut straight));
    metric("service_rps", s, "req/s");
    metric("direct_rps", d, "req/s");
    metric("service_vs_direct", s / d, "ratio");

    let mut samples = Vec::new();
    let mut ready = true;
    for flip in 0..flips {
        let before = service("flip")["status"]["endpointsUpdatedAt"].clone();
        let cmd = if ready {
            "rm -f /tmp/ready"
        } else {
            "touch /tmp/ready"
        };
        c.orca_ok(&["exec", "flip", "--", "sh", "-c", cmd]);
        ready = !ready;
        let want = if ready { 2 } else { 1 };
        let updated = wait_for("the endpoints to follow", || {
            let v = service("flip");
            (endpoints(&v) == want && v["status"]["endpointsUpdatedAt"] != before)
                .then(|| v["status"]["endpointsUpdatedAt"].clone())
        });
        let at: jiff::Timestamp = updated.as_str().unwrap().parse().unwrap();
        let pod = rt
            .block_on(pods.get_pod(pb::GetPodRequest {
                namespace: "default".into(),
                name: "flip".into(),
            }))
            .unwrap()
            .into_inner();
        let changed = pod
            .status
            .unwrap()
            .conditions
            .iter()
            .find(|c| c.r#type == "Ready")
            .and_then(|c| c.last_transition_time)
            .map(|t| timestamp(&t))
            .unwrap();
        let lag = (at.as_millisecond() as f64 / 1000.0 - changed).max(0.0);
        eprintln!(
            "flip {flip}: ready={ready}, balancer updated {:.1} ms after the pod's Ready changed",
            lag * 1000.0
        );
        samples.push(Duration::from_secs_f64(lag));
    }
    metric(
        "endpoint_update_ms_p50",
        median(&samples).as_secs_f64() * 1000.0,
        "ms",
    );
    metric(
        "endpoint_update_ms_p99",
        percentile(&samples, 99).as_secs_f64() * 1000.0,
        "ms",
    );
}
