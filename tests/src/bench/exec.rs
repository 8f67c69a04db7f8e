//! `exec`: (c) a whole `orca exec POD -- echo x` (a new CLI process, TLS to the
//! control plane, the relay to the agent, containerd's exec, the output and
//! exit code back) against `ctr task exec` of the same command in the same
//! container, interleaved run by run; (d) the round trip of one byte through an
//! open interactive session (`orca exec -i POD -- cat`).

use std::io::{Read as _, Write as _};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::bench::{median, metric, ms, percentile};
use crate::cluster::TestCluster;

/// Runs the scenario: `runs` execs of each side, then `samples` byte round trips.
pub fn run(runs: usize, samples: usize) {
    let c = TestCluster::start();
    c.orca_ok(&["node", "add", "n1"]);
    c.orca_ok(&["run", "box", "--image", &c.image, "--", "sleep", "100000"]);
    let pod = c.wait_phase("box", "Running");
    let id = pod["containerStatuses"][0]["containerID"]
        .as_str()
        .expect("container id")
        .trim_start_matches("containerd://")
        .to_owned();
    let ns = c.namespace("n1");

    let mut orca = Vec::with_capacity(runs);
    let mut ctr = Vec::with_capacity(runs);
    for i in 0..=runs {
        let started = Instant::now();
        let out = c
            .orca_command(&["exec", "box", "--", "echo", "x"])
            .output()
            .expect("orca exec");
        let o = started.elapsed();
        assert!(out.status.success() && out.stdout == b"x\n", "{out:?}");

        let started = Instant::now();
        let out = c
            .containerd
            .ctr_command(&ns)
            .args([
                "task",
                "exec",
                "--exec-id",
                &format!("bench-{i}"),
                &id,
                "echo",
                "x",
            ])
            .output()
            .expect("ctr task exec");
        let k = started.elapsed();
        assert!(out.status.success() && out.stdout == b"x\n", "{out:?}");
        // The first of each warms caches and connections.
        if i > 0 {
            orca.push(o);
            ctr.push(k);
        }
    }
    let (o, k) = (median(&orca), median(&ctr));
    eprintln!(
        "exec: {runs} runs each; orca p90 {:.1} ms, ctr p90 {:.1} ms",
        ms(percentile(&orca, 90)),
        ms(percentile(&ctr, 90))
    );
    metric("exec_orca_ms_p50", ms(o), "ms");
    metric("exec_ctr_ms_p50", ms(k), "ms");
    metric(
        "exec_rtt_ratio_vs_ctr",
        o.as_secs_f64() / k.as_secs_f64(),
        "x",
    );

    let mut cat = c
        .orca_command(&["exec", "-i", "box", "--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("orca exec -i");
    let mut stdin = cat.stdin.take().unwrap();
    let mut stdout = cat.stdout.take().unwrap();
    let mut rtt: Vec<Duration> = Vec::with_capacity(samples);
    let mut byte = [0u8; 1];
    for i in 0..samples + 5 {
        let sent = Instant::now();
        stdin.write_all(b"x").expect("write a byte");
        stdout.read_exact(&mut byte).expect("the byte back");
        assert_eq!(&byte, b"x");
        if i >= 5 {
            rtt.push(sent.elapsed());
        }
    }
    drop(stdin);
    let status = cat.wait().expect("orca exec -i ends at EOF");
    assert!(status.success(), "{status}");
    eprintln!(
        "exec: one byte through `orca exec -i -- cat`, {samples} times: p50 {:.2} ms, p99 {:.2} ms",
        ms(median(&rtt)),
        ms(percentile(&rtt, 99))
    );
    metric("exec_stream_rtt_ms_p50", ms(median(&rtt)), "ms");
    metric("exec_stream_rtt_ms_p99", ms(percentile(&rtt, 99)), "ms");
}
