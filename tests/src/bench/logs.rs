//! `logs`: (a) `orca logs` of a container that wrote a large log, in bytes of
//! container output per second, against `cat` of that container's CRI log file
//! on the same disk, interleaved run by run; (b) the latency from a container
//! writing a line to `orca logs -f` printing it.
//!
//! For (b) the container echoes what it reads from a FIFO the benchmark holds
//! (a hostPath volume): the clock starts when the benchmark writes the line,
//! so the figure also holds the container's own read and echo.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::bench::{median, metric, ms, percentile};
use crate::cluster::{DEADLINE, TestCluster, files_named};
use crate::eventually::eventually_blocking;

/// Runs the scenario: a log of `megabytes` MB read `runs` times by each side,
/// then `samples` follow-latency samples.
pub fn run(megabytes: usize, runs: usize, samples: usize) {
    // The latency pod reads its cue from a hostPath: Pod Security must allow it.
    let c = TestCluster::start_configured(
        &[
            "--retry-ms=100",
            // One file for the whole log: no rotation drops what (a) reads.
            "--log-max-bytes=17179869184",
        ],
        "pod_security:\n  enforce: privileged\n",
    );
    c.orca_ok(&["node", "add", "n1"]);
    throughput(&c, megabytes, runs);
    latency(&c, samples);
}

fn throughput(c: &TestCluster, megabytes: usize, runs: usize) {
    // 100-byte lines (99 + newline), then a marker line.
    let bytes = megabytes * 1_000_000;
    let script = format!(
        "yes {} | head -c {bytes}; echo done; exec sleep 100000",
        "x".repeat(99)
    );
    c.orca_ok(&[
        "run", "writer", "--image", &c.image, "--", "sh", "-c", &script,
    ]);
    let written = Instant::now();
    eventually_blocking("the writer to finish", Duration::from_secs(600), || {
        let tail = c.orca(&["logs", "writer", "--tail", "1"]);
        if tail.stdout == b"done\n" {
            Ok(())
        } else {
            Err(tail.stdout.len())
        }
    });
    eprintln!(
        "logs: the container wrote {megabytes} MB in {:.1} s",
        written.elapsed().as_secs_f64()
    );
    let files = files_named(&c.data_dir().join("hosts/n1"), "0.log");
    let file = files
        .iter()
        .find(|f| f.to_string_lossy().contains("_writer_"))
        .expect("the writer's log file");
    let file_bytes = std::fs::metadata(file).expect("log file").len();
    let output = (bytes + "done\n".len()) as u64;

    let mut cat = Vec::with_capacity(runs);
    let mut orca = Vec::with_capacity(runs);
    let agent = c.agent_pids()[0];
    let cp = c.control_plane_pid().expect("control plane");
    let mut cpu = (Duration::ZERO, Duration::ZERO);
    // A first read of each warms the page cache and the connections.
    for i in 0..=runs {
        let (t, n) = drain(Command::new("cat").arg(file));
        assert_eq!(n, file_bytes, "cat reads the whole file");
        let before = (cpu_time(agent), cpu_time(cp));
        let (o, m) = drain(&mut c.orca_command(&["logs", "writer"]));
        if i > 0 {
            cpu.0 += cpu_time(agent) - before.0;
            cpu.1 += cpu_time(cp) - before.1;
        }
        assert_eq!(m, output, "orca logs prints every byte the container wrote");
        if i > 0 {
            cat.push(t);
            orca.push(o);
        }
    }
    let (o, k) = (median(&orca), median(&cat));
    eprintln!(
        "logs: {runs} reads each of a {:.0} MB CRI file holding {:.0} MB of output; orca p50 {:.0} ms, cat p50 {:.0} ms",
        file_bytes as f64 / 1e6,
        output as f64 / 1e6,
        ms(o),
        ms(k)
    );
    eprintln!(
        "logs: CPU per orca read: agent {:.0} ms, control plane {:.0} ms",
        ms(cpu.0) / runs as f64,
        ms(cpu.1) / runs as f64
    );
    let mb = output as f64 / 1e6;
    metric("logs_mb_s", mb / o.as_secs_f64(), "MB/s");
    metric("cat_mb_s", mb / k.as_secs_f64(), "MB/s");
    metric("logs_ratio_vs_cat", k.as_secs_f64() / o.as_secs_f64(), "x");
    c.orca_ok(&["delete", "pod", "writer", "--grace-period", "0"]);
}

/// Runs a command with stdout read to the end by this process; (time, bytes).
fn drain(cmd: &mut Command) -> (Duration, u64) {
    let started = Instant::now();
    let mut child = cmd.stdout(Stdio::piped()).spawn().expect("spawn");
    let mut stdout = child.stdout.take().unwrap();
    let mut buf = vec![0; 256 * 1024];
    let mut total = 0u64;
    loop {
        match stdout.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(e) => panic!("reading output: {e}"),
        }
    }
    let status = child.wait().expect("wait");
    let took = started.elapsed();
    assert!(status.success(), "{cmd:?}: {status}");
    (took, total)
}

fn latency(c: &TestCluster, samples: usize) {
    let dir = c.dir().join("cue");
    std::fs::create_dir_all(&dir).expect("cue dir");
    let fifo = dir.join("fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    let manifest = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": "echoer" },
        "spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "echoer",
                "image": c.image,
                "command": ["sh", "-c", "exec 3< /cue/fifo; while read -r l <&3; do echo \"$l\"; done"],
                "volumeMounts": [{ "name": "cue", "mountPath": "/cue" }],
            }],
            "volumes": [{ "name": "cue", "hostPath": { "path": dir } }],
        },
    });
    let path = c.dir().join("echoer.json");
    std::fs::write(&path, manifest.to_string()).expect("manifest");
    c.orca_ok(&["apply", "-f", &path.to_string_lossy()]);
    c.wait_phase("echoer", "Running");
    let mut follow = c
        .orca_command(&["logs", "-f", "echoer"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("orca logs -f");
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send((line.unwrap(), Instant::now())).is_err() {
                return;
            }
        }
    });
    let mut cue = std::fs::OpenOptions::new()
        .write(true)
        .open(&fifo)
        .expect("open the cue FIFO");
    let mut lat = Vec::with_capacity(samples);
    for i in 0..samples + 5 {
        let sent = Instant::now();
        writeln!(cue, "line-{i}").expect("cue");
        let (line, at) = rx.recv_timeout(DEADLINE).expect("the followed line");
        assert_eq!(line, format!("line-{i}"));
        if i >= 5 {
            lat.push(at - sent);
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    eprintln!(
        "logs: follow latency over {samples} lines: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(median(&lat)),
        ms(percentile(&lat, 99)),
        ms(percentile(&lat, 100))
    );
    metric("logs_latency_ms_p50", ms(median(&lat)), "ms");
    metric("logs_latency_ms_p99", ms(percentile(&lat, 99)), "ms");
}

/// User + system CPU time of a process so far (clock ticks of 10 ms).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15, i.e. 11 and 12 after the ')'.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}
