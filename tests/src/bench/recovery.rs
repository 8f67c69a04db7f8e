//! `recovery`: how fast a dead host is noticed and its pod runs elsewhere. A
//! pod (restartPolicy Always) runs on one of two simulated hosts; that host's
//! agent is killed (`orca node fault --kill-agent`); the scenario times how
//! long until the node is Lost (in heartbeat intervals: detection is bounded
//! by `lost_after` / interval plus one reconcile tick) and until the pod is
//! Running again on the other host (fencing, recreation, scheduling, start).

use std::time::{Duration, Instant};

use crate::bench::{median, metric, wait_for};
use crate::cluster::TestCluster;

/// Runs `runs` rounds with this heartbeat interval (thresholds at 3, 6 and 10 intervals).
pub fn run(runs: usize, interval: Duration) {
    let ms = interval.as_millis();
    let yaml = format!(
        "heartbeat_interval_ms: {ms}\nsuspect_after_ms: {}\nnot_ready_after_ms: {}\nlost_after_ms: {}\nreconcile_interval_ms: 100\n",
        ms * 3,
        ms * 6,
        ms * 10
    );
    eprintln!("thresholds: suspect 3, not ready 6, lost 10 intervals of {ms} ms");
    let c = TestCluster::start_configured(&["--retry-ms=100"], &yaml);
    let mut detect = Vec::new();
    let mut recovered = Vec::new();
    for round in 0..runs {
        let (a, b) = (format!("a{round}"), format!("b{round}"));
        let pod = format!("svc{round}");
        c.pods_on_first_of_two(&a, &b, &[(&pod, "Always")]);
        let killed = Instant::now();
        c.orca_ok(&["node", "fault", &a, "--kill-agent"]);
        let lost = wait_for("Lost", || {
            (c.node(&a)["state"] == "Lost").then(|| killed.elapsed())
        });
        let running = wait_for("the pod on the other host", || {
            let p = c.pod(&pod);
            (p["phase"] == "Running" && p["node"] == b.as_str()).then(|| killed.elapsed())
        });
        eprintln!(
            "round {round}: Lost after {:.2}s, pod Running on {b} after {:.2}s",
            lost.as_secs_f64(),
            running.as_secs_f64()
        );
        detect.push(lost);
        recovered.push(running);
        c.orca_ok(&["delete", "pod", &pod, "--grace-period", "0"]);
        c.orca_ok(&["node", "remove", &a]);
        c.orca_ok(&["node", "remove", &b]);
    }
    metric(
        "lost_node_detect_intervals",
        median(&detect).as_secs_f64() / interval.as_secs_f64(),
        "intervals",
    );
    metric(
        "recovered_pod_running_s",
        median(&recovered).as_secs_f64(),
        "s",
    );
}
