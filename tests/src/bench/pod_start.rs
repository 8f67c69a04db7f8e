//! `pod-start`: how long `orca run` takes until the pod is reported Running —
//! the whole path: CLI, control plane, scheduler, agent, containerd, runc, and the
//! status coming back — against `ctr run -d` of the same image on the same
//! containerd until its task is running. Both with the image already present,
//! interleaved run by run so that both see the same machine noise.

use std::time::{Duration, Instant};

use crate::bench::{median, metric, ms, percentile};
use crate::cluster::TestCluster;

/// Runs the scenario with `runs` samples of each side.
pub fn run(runs: usize) {
    let c = TestCluster::start();
    c.orca_ok(&["node", "add", "n1"]);
    // Warm-up: the image is pulled once, so both sides start from a present image.
    c.orca_ok(&["run", "warmup", "--image", &c.image, "--", "sleep", "300"]);
    c.wait_phase("warmup", "Running");
    c.orca_ok(&["delete", "pod", "warmup", "--grace-period", "0"]);
    let ctr_ns = "bench-ctr";
    c.containerd
        .ctr(ctr_ns, &["images", "pull", "--plain-http", &c.image])
        .expect("ctr pulls the image");

    let mut orca = Vec::with_capacity(runs);
    let mut ctr = Vec::with_capacity(runs);
    for i in 0..runs {
        let name = format!("p{i}");
        let started = Instant::now();
        c.orca_ok(&["run", &name, "--image", &c.image, "--", "sleep", "300"]);
        c.orca_ok(&["wait", &name, "--for", "Running", "--timeout", "60"]);
        orca.push(started.elapsed());
        c.orca_ok(&["delete", "pod", &name, "--grace-period", "0"]);

        let id = format!("c{i}");
        let started = Instant::now();
        c.containerd
            .ctr(ctr_ns, &["run", "-d", &c.image, &id, "sleep", "300"])
            .expect("ctr run -d");
        while !task_running(&c, ctr_ns, &id) {
            std::thread::sleep(Duration::from_millis(1));
        }
        ctr.push(started.elapsed());
        let _ = c
            .containerd
            .ctr(ctr_ns, &["tasks", "kill", "-s", "SIGKILL", &id]);
        let _ = c.containerd.ctr(ctr_ns, &["tasks", "delete", "-f", &id]);
        let _ = c.containerd.ctr(ctr_ns, &["containers", "delete", &id]);
    }
    let (o, k) = (median(&orca), median(&ctr));
    eprintln!(
        "pod-start: {runs} runs each; orca p90 {:.1} ms, ctr p90 {:.1} ms",
        ms(percentile(&orca, 90)),
        ms(percentile(&ctr, 90))
    );
    metric("orca_run_ms_p50", ms(o), "ms");
    metric("ctr_run_ms_p50", ms(k), "ms");
    metric(
        "pod_start_ratio_vs_ctr",
        o.as_secs_f64() / k.as_secs_f64(),
        "x",
    );
}

fn task_running(c: &TestCluster, ns: &str, id: &str) -> bool {
    let out = c.containerd.ctr_command(ns).args(["tasks", "ls"]).output();
    let Ok(out) = out else { return false };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.split_whitespace().next() == Some(id) && l.contains("RUNNING"))
}
