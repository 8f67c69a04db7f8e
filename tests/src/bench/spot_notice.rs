//! `spot-notice`: how long from a spot interruption notice appearing in a
//! host's instance metadata to the pod running again on another host. A pod
//! (restartPolicy Always, image present) runs on one of two simulated hosts;
//! `orca node fault --spot-notice` writes `spot/instance-action` into that
//! host's metadata service; the clock runs until the pod's new incarnation is
//! Running on the other host. What it spans: the agent's next IMDS poll (on
//! average half of `--notice-poll-ms`), its heartbeat, the control plane
//! cordoning and moving the pod, placement, dispatch and container start. The
//! old incarnation's checkpoint handshake runs in parallel (the pod has no
//! `orca.research/checkpoint-wait`, so the replacement does not wait for it).
//! Each round injects the notice at a different phase of the agent's poll
//! (a delay of `poll × frac(round × 0.618…)` after the pod runs), so the
//! median is not an artefact of where the rounds fall in the poll cycle.

use std::time::{Duration, Instant};

use crate::bench::{median, metric, wait_for};
use crate::cluster::TestCluster;

/// Runs `runs` rounds with the agents polling IMDS every `poll`.
pub fn run(runs: usize, poll: Duration) {
    let poll_ms = format!("--notice-poll-ms={}", poll.as_millis());
    eprintln!("agents poll IMDS every {} ms", poll.as_millis());
    let c = TestCluster::start_with(&["--retry-ms=100", &poll_ms]);
    let mut samples = Vec::new();
    for round in 0..runs {
        let (a, b) = (format!("a{round}"), format!("b{round}"));
        let pod = format!("train{round}");
        let first = c.pods_on_first_of_two(&a, &b, &[(&pod, "Always")]);
        let phase = (round as f64 * 0.618_033_988_7).fract();
        std::thread::sleep(poll.mul_f64(phase));
        let noticed = Instant::now();
        c.orca_ok(&["node", "fault", &a, "--spot-notice"]);
        let running = wait_for("the replacement on the other host", || {
            let p = c.pod(&pod);
            (p["phase"] == "Running" && p["node"] == b.as_str() && p["uid"] != first[0]["uid"])
                .then(|| noticed.elapsed())
        });
        eprintln!(
            "round {round}: replacement Running on {b} {:.2}s after the notice",
            running.as_secs_f64()
        );
        samples.push(running);
        c.orca_ok(&["delete", "pod", &pod, "--grace-period", "0"]);
        c.orca_ok(&["node", "remove", &a]);
        c.orca_ok(&["node", "remove", &b]);
    }
    metric(
        "notice_to_replacement_running_s",
        median(&samples).as_secs_f64(),
        "s",
    );
}
