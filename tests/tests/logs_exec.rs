//! Logs, exec and attach end to end on real parts: `orca` or an AdminService
//! client → the control plane → the agent over mutual TLS → containerd's exec
//! API and the CRI log files the shim's logger writes.
//!
//! Containers write on cue: `exec` of `echo … > /proc/1/fd/1` writes into the
//! main process's stdout pipe, so a log line appears exactly when a test asks
//! for it, without sleeping.

use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use orca_tests::cluster::{DEADLINE, TestCluster, files_named};
use orca_tests::eventually::{eventually_blocking, eventually_every};
use orca_tests::session::{ExecSession, ExecSpec};

/// Agents with small log files (rotation after 4 KiB, 5 kept) and quick follow timings.
fn cluster() -> TestCluster {
    let c = TestCluster::start_with(&[
        "--backoff-base-ms=200",
        "--backoff-max-ms=1000",
        "--retry-ms=100",
        "--log-max-bytes=4096",
        "--log-max-files=5",
        "--log-follow-poll-ms=50",
        "--log-follow-settle-ms=200",
    ]);
    c.orca_ok(&["node", "add", "n1"]);
    c
}

/// Makes pod `pod`'s main process write `text` to its stdout.
fn say(c: &TestCluster, pod: &str, text: &str) {
    say_to(c, pod, 1, text)
}

/// Makes pod `pod`'s main process write `text` to its fd 1 (stdout) or 2 (stderr).
fn say_to(c: &TestCluster, pod: &str, fd: u8, text: &str) {
    c.orca_ok(&[
        "exec",
        pod,
        "--",
        "sh",
        "-c",
        &format!("printf '%s\\n' \"{text}\" > /proc/1/fd/{fd}"),
    ]);
}

/// Waits until `orca logs ARGS` prints exactly `want`.
fn logs_become(c: &TestCluster, args: &[&str], want: &str) {
    eventually_blocking(
        &format!("orca logs {args:?} to print {want:?}"),
        DEADLINE,
        || {
            let mut all = vec!["logs"];
            all.extend_from_slice(args);
            let out = c.orca(&all);
            let got = String::from_utf8_lossy(&out.stdout).into_owned();
            if out.status.success() && got == want {
                Ok(())
            } else {
                Err((got, String::from_utf8_lossy(&out.stderr).into_owned()))
            }
        },
    );
}

#[test]
fn logs_select_tail_since_limit_previous_and_follow_across_rotations() {
    let c = cluster();
    // The main process writes five lines, then waits for /stop. (Its stdout and
    // stderr are two pipes: only lines cued one after the other have an order.)
    c.orca_ok(&[
        "run",
        "talker",
        "--image",
        &c.image,
        "--",
        "sh",
        "-c",
        "for i in 1 2 3 4 5; do echo out-$i; done; \
         while [ ! -f /stop ]; do sleep 0.05; done; echo bye",
    ]);
    c.wait_phase("talker", "Running");
    logs_become(&c, &["talker"], "out-1\nout-2\nout-3\nout-4\nout-5\n");
    say_to(&c, "talker", 2, "err-1");
    let first = "out-1\nout-2\nout-3\nout-4\nout-5\nerr-1\n";
    logs_become(&c, &["talker"], first);

    assert_eq!(
        c.orca_ok(&["logs", "talker", "--tail", "2"]),
        "out-5\nerr-1\n"
    );
    assert_eq!(c.orca_ok(&["logs", "talker", "--tail", "0"]), "");
    assert_eq!(
        c.orca_ok(&["logs", "talker", "--limit-bytes", "8"]),
        "out-1\nou"
    );
    let stamped = c.orca_ok(&["logs", "talker", "--timestamps", "--tail", "1"]);
    let (time, line) = stamped.split_once(' ').expect("a timestamp, a space");
    assert_eq!(line, "err-1\n");
    assert!(
        time.parse::<jiff::Timestamp>().is_ok(),
        "RFC 3339 timestamp: {stamped:?}"
    );
    assert_eq!(c.orca_ok(&["logs", "talker", "--since", "1h"]), first);
    // Only what was written after a moment between two lines.
    let between = jiff::Timestamp::now().to_string();
    say(&c, "talker", "late-1");
    logs_become(&c, &["talker", "--since-time", &between], "late-1\n");
    let out = c.orca(&["logs", "talker", "--previous"]);
    assert_eq!(out.status.code(), Some(1), "no previous run");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("previous terminated container"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Follow: the lines so far, then lines written after it started, across
    // rotations (4 KiB files), then the end of the container ends it.
    let mut follow = c
        .orca_command(&["logs", "-f", "talker"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("orca logs -f");
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    let next = || rx.recv_timeout(DEADLINE).expect("a followed line");
    for want in [
        "out-1", "out-2", "out-3", "out-4", "out-5", "err-1", "late-1",
    ] {
        assert_eq!(next(), want);
    }
    say(&c, "talker", "after-follow");
    assert_eq!(next(), "after-follow");
    c.orca_ok(&[
        "exec",
        "talker",
        "--",
        "sh",
        "-c",
        "i=0; while [ $i -lt 150 ]; do echo rot-$i-padding-padding-padding-padding; i=$((i+1)); done > /proc/1/fd/1",
    ]);
    for i in 0..150 {
        assert_eq!(next(), format!("rot-{i}-padding-padding-padding-padding"));
    }
    let rotated = files_named(&c.data_dir().join("hosts/n1"), "0.log.1");
    assert!(!rotated.is_empty(), "the log was rotated while followed");
    c.orca_ok(&["exec", "talker", "--", "touch", "/stop"]);
    assert_eq!(next(), "bye");
    let status = eventually_blocking("orca logs -f to end with the container", DEADLINE, || {
        follow.try_wait().unwrap().ok_or("still following")
    });
    assert!(status.success(), "{status:?}");
    assert!(
        rx.recv_timeout(Duration::from_millis(100)).is_err(),
        "nothing after the end"
    );
}

#[test]
fn previous_shows_the_run_before_a_restart() {
    let c = cluster();
    // Each run counts itself in the container's own filesystem (kept across restarts);
    // the first run fails, the second stays up.
    c.orca_ok(&[
        "run",
        "crasher",
        "--image",
        &c.image,
        "--restart",
        "Always",
        "--",
        "sh",
        "-c",
        "n=$(cat /n 2>/dev/null || echo 0); n=$((n+1)); echo $n > /n; echo run-$n; \
         [ $n -ge 2 ] && exec sleep 1000; exit 1",
    ]);
    logs_become(&c, &["crasher"], "run-2\n");
    assert_eq!(c.orca_ok(&["logs", "crasher", "--previous"]), "run-1\n");
    assert_eq!(
        c.orca_ok(&["logs", "crasher", "-p", "--tail", "1"]),
        "run-1\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_separates_streams_feeds_stdin_resizes_the_terminal_and_reports_exit_codes() {
    let c = cluster();
    c.orca_ok(&["run", "box", "--image", &c.image, "--", "sleep", "1000"]);
    c.wait_phase("box", "Running");
    let mut admin = c.admin().await;
    let spec = |command: &'static [&'static str], stdin, tty| ExecSpec {
        pod: "box",
        container: "",
        command,
        stdin,
        tty,
    };

    // stdout, stderr and the exit code, each apart.
    let mut s = ExecSession::open(
        &mut admin,
        spec(
            &["sh", "-c", "echo out; echo err >&2; exit 3"],
            false,
            false,
        ),
    )
    .await
    .expect("exec");
    assert_eq!(s.finish().await.expect("exit"), 3);
    assert_eq!(s.stdout, b"out\n");
    assert_eq!(s.stderr, b"err\n");

    // stdin reaches cat while it runs, and closing it ends cat.
    let mut s = ExecSession::open(&mut admin, spec(&["cat"], true, false))
        .await
        .expect("exec cat");
    s.stdin(b"hello\n").await;
    s.until_stdout("hello\n").await;
    s.stdin(b"world\n").await;
    s.until_stdout("world\n").await;
    s.close_stdin().await;
    assert_eq!(s.finish().await.expect("cat exits at EOF"), 0);
    assert_eq!(s.stdout, b"hello\nworld\n");

    // A terminal whose size follows resizes.
    let mut s = ExecSession::open(&mut admin, spec(&["sh"], true, true))
        .await
        .expect("exec with a tty");
    s.resize(123, 45).await;
    s.stdin(b"stty size\n").await;
    s.until_stdout("45 123").await;
    s.resize(80, 24).await;
    s.stdin(b"stty size; exit 7\n").await;
    s.until_stdout("24 80").await;
    assert_eq!(s.finish().await.expect("exit"), 7);
    assert!(s.stderr.is_empty(), "a terminal has no separate stderr");

    // A client that goes away kills its process.
    let s = ExecSession::open(
        &mut admin,
        spec(&["sh", "-c", "exec sleep 777"], false, false),
    )
    .await
    .expect("exec sleep");
    let sleeping = || has_process_with_args("sleep777");
    eventually_blocking("the exec'd process to run", DEADLINE, || {
        if sleeping() { Ok(()) } else { Err("not yet") }
    });
    drop(s);
    eventually_blocking("the abandoned exec to be killed", DEADLINE, || {
        if sleeping() {
            Err("still running")
        } else {
            Ok(())
        }
    });

    // The CLI: the remote exit code is orca's; stdin through a pipe, EOF ends it.
    let out = c.orca(&[
        "exec",
        "box",
        "--",
        "sh",
        "-c",
        "echo to-out; echo to-err >&2; exit 4",
    ]);
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(out.stdout, b"to-out\n");
    assert_eq!(out.stderr, b"to-err\n");
    let mut cat = c
        .orca_command(&["exec", "-i", "box", "--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("orca exec -i");
    cat.stdin.take().unwrap().write_all(b"piped\n").unwrap();
    let out = cat.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, b"piped\n");
    // -t without a terminal: kubectl's warning, then it runs without one.
    let out = c.orca(&["exec", "-it", "box", "--", "echo", "no-tty"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, b"no-tty\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Unable to use a TTY"));
}

/// Whether a process runs whose command line, without separators, is `joined`.
fn has_process_with_args(joined: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        std::fs::read(e.path().join("cmdline"))
            .map(|c| {
                c.iter().filter(|b| **b != 0).copied().collect::<Vec<u8>>() == joined.as_bytes()
            })
            .unwrap_or(false)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_and_logs_fail_clearly() {
    let c = cluster();
    c.orca_ok(&["run", "done", "--image", &c.image, "--", "echo", "finished"]);
    c.wait_phase("done", "Succeeded");
    c.orca_ok(&["run", "box", "--image", &c.image, "--", "sleep", "1000"]);
    c.wait_phase("box", "Running");
    let mut admin = c.admin().await;
    let open = |pod, container, command| ExecSpec {
        pod,
        container,
        command,
        stdin: false,
        tty: false,
    };

    let e = ExecSession::open(&mut admin, open("done", "", &["true"]))
        .await
        .err()
        .expect("exec into a stopped container fails");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("not running"), "{e:?}");
    assert!(e.message().contains("Completed"), "{e:?}");

    let e = ExecSession::open(&mut admin, open("box", "nope", &["true"]))
        .await
        .err()
        .expect("no such container");
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");

    let e = ExecSession::open(&mut admin, open("ghost", "", &["true"]))
        .await
        .err()
        .expect("no such pod");
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    assert!(e.message().contains("ghost"), "{e:?}");

    // A command that cannot be run ends as a shell would end it: 127 (not
    // found), with runc's reason on stderr, as `kubectl exec` reports it.
    let mut missing = ExecSession::open(&mut admin, open("box", "", &["no-such-binary"]))
        .await
        .expect("a session for a missing executable");
    assert_eq!(missing.finish().await.expect("an exit status"), 127);
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("no-such-binary"), "{stderr}");

    // The logs of a finished container are still there; attach to it is refused.
    assert_eq!(c.orca_ok(&["logs", "done"]), "finished\n");
    let out = c.orca(&["attach", "done"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not running"));

    // An unreachable agent: a clear UNAVAILABLE naming the node (exit code 5).
    c.orca_ok(&["node", "fault", "n1", "--kill-agent"]);
    let out = eventually_blocking("orca logs to find the agent gone", DEADLINE, || {
        let out = c.orca(&["logs", "box"]);
        if out.status.success() {
            Err(out)
        } else {
            Ok(out)
        }
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("node n1"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_streams_the_main_process_output_and_its_exit_code() {
    let c = cluster();
    c.orca_ok(&[
        "run",
        "main",
        "--image",
        &c.image,
        "--",
        "sh",
        "-c",
        "echo before-attach; while [ ! -f /stop ]; do sleep 0.05; done; echo leaving >&2; exit 9",
    ]);
    c.wait_phase("main", "Running");
    logs_become(&c, &["main"], "before-attach\n");
    let mut attach = c
        .orca_command(&["attach", "main"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("orca attach");
    // Attach shows output from now on; cue lines until one arrives (attaching takes a moment).
    let stdout = attach.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    let first = eventually_blocking("attach to show a cued line", DEADLINE, || {
        say(&c, "main", "cue");
        rx.recv_timeout(Duration::from_millis(300))
            .map_err(|e| e.to_string())
    });
    assert_eq!(first, "cue", "earlier output is not replayed");
    say(&c, "main", "while-attached");
    loop {
        let line = rx.recv_timeout(DEADLINE).expect("attached output");
        if line == "while-attached" {
            break;
        }
        assert_eq!(line, "cue");
    }
    c.orca_ok(&["exec", "main", "--", "touch", "/stop"]);
    let out = attach.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(9),
        "the container's exit code: {out:?}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("leaving"),
        "{out:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_log_reader_holds_the_agent_to_a_bounded_read_ahead() {
    let c = TestCluster::start_with(&["--retry-ms=100", "--log-max-bytes=1073741824"]);
    c.orca_ok(&["node", "add", "n1"]);
    // 48 MB of output in 100-byte lines: a CRI file of about 67 MB.
    c.orca_ok(&[
        "run",
        "hog",
        "--image",
        &c.image,
        "--",
        "sh",
        "-c",
        &format!(
            "yes {} | head -c 48000000; echo done; exec sleep 1000",
            "x".repeat(99)
        ),
    ]);
    logs_become(&c, &["hog", "--tail", "1"], "done\n");
    let mut admin = c.admin().await;
    let req = orca_proto::controlplane::v1::LogsRequest {
        namespace: "default".into(),
        name: "hog".into(),
        options: Some(orca_proto::agent::v1::LogsRequest {
            ..Default::default()
        }),
    };
    let mut stream = admin.logs(req).await.expect("logs").into_inner();
    let first = stream.message().await.expect("a chunk").expect("a chunk");
    assert!(!first.data.is_empty());

    // The agent's reader stops once the bounded channel and HTTP/2's windows are full.
    let agent = c.agent_pids()[0];
    let position = || log_read_position(agent, "/hog/0.log");
    // Stopped: the same position at five looks 100 ms apart.
    let last = std::sync::Mutex::new((0u64, 0u32));
    let stalled = eventually_every(
        "the agent's reader to stop advancing",
        DEADLINE,
        Duration::from_millis(100),
        || async {
            let now = position().ok_or(0u64)?;
            let mut last = last.lock().unwrap();
            *last = if now == last.0 {
                (now, last.1 + 1)
            } else {
                (now, 0)
            };
            if last.1 >= 5 { Ok(now) } else { Err(now) }
        },
    )
    .await;
    let size = files_named(&c.data_dir().join("hosts/n1"), "0.log")
        .into_iter()
        .find(|f| f.to_string_lossy().contains("/hog/"))
        .map(|f| std::fs::metadata(f).unwrap().len())
        .expect("the log file");
    eprintln!("a stalled client: the agent read {stalled} of {size} bytes and stopped");
    assert!(
        stalled < 24 * 1024 * 1024 && stalled < size / 2,
        "a stalled client let the agent read {stalled} of {size} bytes"
    );

    // Reading on gets every byte.
    let mut total = first.data.len();
    while let Some(chunk) = stream.message().await.expect("chunks") {
        total += chunk.data.len();
    }
    assert_eq!(total, 48_000_000 + "done\n".len());
}

/// The offset of the agent's open file whose path ends in `suffix`.
fn log_read_position(pid: u32, suffix: &str) -> Option<u64> {
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        let target = std::fs::read_link(fd.path()).ok()?;
        if target.to_string_lossy().ends_with(suffix) {
            let info = std::fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                fd.file_name().to_string_lossy()
            ))
            .ok()?;
            return info
                .lines()
                .find_map(|l| l.strip_prefix("pos:"))
                .and_then(|p| p.trim().parse().ok());
        }
    }
    None
}

#[test]
fn exec_with_a_terminal_gives_the_process_this_terminal_and_follows_its_size() {
    let c = cluster();
    c.orca_ok(&["run", "box", "--image", &c.image, "--", "sleep", "1000"]);
    c.wait_phase("box", "Running");
    // `script` runs orca on a real pseudo-terminal, sized 33x77 first: orca puts it
    // in raw mode and starts the process on a terminal of that size; each line
    // typed makes the remote shell print its terminal's size.
    let orca = format!(
        "tty; stty rows 33 cols 77; {} --config {} exec -it box -- sh -c 'tty; while read l; do stty size; [ \"$l\" = q ] && exit 5; done'",
        orca_tests::env::workspace_bin("orca").display(),
        c.credentials().display()
    );
    let mut script = std::process::Command::new("script")
        .args(["-qec", &orca, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("script (util-linux)");
    let mut stdin = script.stdin.take().unwrap();
    let mut stdout = script.stdout.take().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let seen = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = std::io::Read::read(&mut stdout, &mut buf) {
                if n == 0 {
                    return;
                }
                seen.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    };
    let text = || seen.lock().unwrap().clone();
    let mut type_line = |line: &str| {
        stdin.write_all(format!("{line}\r").as_bytes()).unwrap();
        stdin.flush().unwrap();
    };
    eventually_blocking("the terminal's size from the start", DEADLINE, || {
        type_line("");
        if text().contains("33 77") {
            Ok(())
        } else {
            Err(text())
        }
    });
    let local = text()
        .lines()
        .find(|l| l.starts_with("/dev/pts/"))
        .map(|l| l.trim().to_owned())
        .expect("script's terminal");
    // Resizing the local terminal (SIGWINCH to orca) resizes the remote one.
    let resized = Command::new("stty")
        .args(["-F", &local, "rows", "20", "cols", "60"])
        .status()
        .unwrap();
    assert!(resized.success());
    eventually_blocking("the remote terminal to follow a resize", DEADLINE, || {
        type_line("");
        if text().contains("20 60") {
            Ok(())
        } else {
            Err(text())
        }
    });
    type_line("q");
    let status = script.wait().unwrap();
    reader.join().unwrap();
    let text = text();
    assert!(
        text.matches("/dev/pts/").count() >= 2,
        "the remote process has a terminal too: {text:?}"
    );
    assert_eq!(
        status.code(),
        Some(5),
        "orca's exit code is the remote one: {text:?}"
    );
}
