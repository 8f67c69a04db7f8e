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
    let mut run_parts = Vec::with_capacity(runs);
    for i in 0..runs {
        let name = format!("p{i}");
        let started = Instant::now();
        c.orca_ok(&["run", &name, "--image", &c.image, "--", "sleep", "300"]);
        let created = started.elapsed();
        c.orca_ok(&["wait", &name, "--for", "Running", "--timeout", "60"]);
        orca.push(started.elapsed());
        run_parts.push(created);
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
    let rss = resident_sets(&c, 10);
    if std::env::var_os("ORCA_BENCH_LOGS").is_some() {
        eprintln!(
            "--- control plane ---\n{}\n--- agents ---\n{}",
            c.control_plane_log(),
            c.agent_logs_tail()
        );
    }
    let (o, k) = (median(&orca), median(&ctr));
    eprintln!(
        "pod-start: `orca run` alone (create + flush) p50 {:.1} ms",
        ms(median(&run_parts))
    );
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
    metric("agent_idle_rss_mib", rss.agent_kib as f64 / 1024.0, "MiB");
    metric(
        "logger_rss_kib_per_container",
        rss.logger_kib_per_container,
        "KiB",
    );
    metric("pause_rss_kib_per_pod", rss.pause_kib_per_pod, "KiB");
}

/// Resident memory of the agent with `pods` pods running, and of the helper
/// processes each pod brings (orca-logger per container, orca-pause per pod).
struct Rss {
    agent_kib: u64,
    logger_kib_per_container: f64,
    pause_kib_per_pod: f64,
}

fn resident_sets(c: &TestCluster, pods: usize) -> Rss {
    let names: Vec<String> = (0..pods).map(|i| format!("idle{i}")).collect();
    for name in &names {
        c.orca_ok(&["run", name, "--image", &c.image, "--", "sleep", "300"]);
    }
    for name in &names {
        c.wait_phase(name, "Running");
    }
    // Let the agent settle after the burst before reading its resident set.
    std::thread::sleep(Duration::from_secs(2));
    let agent = c.agent_pids()[0];
    let sum = |exe: &str| -> (u64, usize) {
        let pids = crate::env::find_processes(|cmd| cmd.first().is_some_and(|p| p.ends_with(exe)));
        (pids.iter().filter_map(|p| rss_kib(*p)).sum(), pids.len())
    };
    let (loggers, nl) = sum("orca-logger");
    let (pauses, np) = sum("orca-pause");
    let rss = Rss {
        agent_kib: rss_kib(agent).unwrap_or(0),
        logger_kib_per_container: loggers as f64 / nl.max(1) as f64,
        pause_kib_per_pod: pauses as f64 / np.max(1) as f64,
    };
    for name in &names {
        c.orca_ok(&["delete", "pod", name, "--grace-period", "0"]);
    }
    rss
}

/// VmRSS of a process, KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn task_running(c: &TestCluster, ns: &str, id: &str) -> bool {
    let out = c.containerd.ctr_command(ns).args(["tasks", "ls"]).output();
    let Ok(out) = out else { return false };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.split_whitespace().next() == Some(id) && l.contains("RUNNING"))
}
