//! The kubelet API ORCA serves, driven by the real kubectl through the API
//! emulator's proxy (an HTTP upgrade passed through byte for byte, as the API
//! server does): `logs -f`, `exec` (stdin, a terminal, the exit code) and
//! `attach` over WebSockets and over SPDY/3.1, `port-forward` over kubectl's
//! SPDY-over-WebSocket tunnel and over SPDY; `/metrics/resource` parsed by the
//! Prometheus client's parser; client certificates from another CA refused; the
//! webhook authorisation mode.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use orca_tests::cluster::DEADLINE;
use orca_tests::eventually::eventually_blocking;
use orca_tests::kube_cluster::{KubeCluster, NODE};
use orca_tests::pki::TestPki;

/// kubectl's environment for each transport of exec/attach.
const REMOTE_COMMAND: [(&str, &str); 2] = [("websocket", "true"), ("spdy", "false")];

fn kubectl(k: &KubeCluster, env: (&str, &str), args: &[&str]) -> Command {
    let mut cmd = k.kapi.kubectl_command(args).expect("kubectl");
    cmd.env(env.0, env.1);
    cmd
}

fn run(mut cmd: Command, stdin: &[u8]) -> (i32, String, String) {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn kubectl");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A running `sleep` pod to exec into.
fn sleeper(k: &KubeCluster) {
    let containers = "  - name: main\n    image: {image}\n    command: [sh, -c, 'echo started; while true; do sleep 0.2; done']\n";
    k.create(&k.pod_yaml("box", "", containers));
    k.wait_running("box");
}

#[test]
fn exec_over_websockets_and_spdy_carries_stdin_output_and_exit_code() {
    let k = KubeCluster::start();
    sleeper(&k);
    for (transport, value) in REMOTE_COMMAND {
        let env = ("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", value);
        let (code, out, err) = run(
            kubectl(
                &k,
                env,
                &[
                    "exec",
                    "box",
                    "--",
                    "sh",
                    "-c",
                    "echo out; echo err >&2; exit 3",
                ],
            ),
            b"",
        );
        assert_eq!(code, 3, "{transport}: the remote exit code; stderr: {err}");
        assert_eq!(out, "out\n", "{transport}");
        assert!(err.contains("err\n"), "{transport}: {err}");

        let (code, out, err) = run(
            kubectl(&k, env, &["exec", "-i", "box", "--", "cat"]),
            b"hello\nworld\n",
        );
        assert_eq!(
            (code, out.as_str()),
            (0, "hello\nworld\n"),
            "{transport}: stdin to cat and EOF; {err}"
        );

        // A terminal: `script` gives kubectl a pseudo-terminal of 33x101; the
        // remote terminal gets that size (the resize channel) and its output.
        let inner = format!(
            "stty rows 33 cols 101; {}=\"{value}\" {} --kubeconfig {} exec -it box -- sh -c 'stty size; exit 7'",
            env.0,
            orca_tests::env::kubectl_binary().unwrap().display(),
            k.kapi.kubeconfig.display()
        );
        let out = Command::new("script")
            .args(["-qec", &inner, "/dev/null"])
            .stdin(Stdio::null())
            .output()
            .expect("script (util-linux)");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("33 101"),
            "{transport}: terminal size: {text}"
        );
        assert_eq!(
            out.status.code(),
            Some(7),
            "{transport}: exit code through the terminal: {text}"
        );
    }
}

/// Reads lines of `child`'s stdout into a channel.
fn lines_of(child: &mut std::process::Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

fn wait_line(rx: &mpsc::Receiver<String>, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let until = std::time::Instant::now() + DEADLINE;
    let mut seen = Vec::new();
    while let Some(left) = until.checked_duration_since(std::time::Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) if ok(&line) => return line,
            Ok(line) => seen.push(line),
            Err(_) => break,
        }
    }
    panic!("{what}: not seen; got {seen:?}");
}

#[test]
fn logs_follow_tail_timestamps_and_attach() {
    let k = KubeCluster::start();
    // Prints a numbered line every 200 ms.
    let containers = "  - name: main\n    image: {image}\n    command: [sh, -c, 'i=0; while true; do i=$((i+1)); echo line $i; sleep 0.2; done']\n";
    k.create(&k.pod_yaml("ticker", "", containers));
    k.wait_running("ticker");
    eventually_blocking("a few lines", DEADLINE, || {
        let out = k.kubectl_ok(&["logs", "ticker"]);
        if out.lines().count() >= 3 {
            Ok(())
        } else {
            Err(out)
        }
    });

    let tail = k.kubectl_ok(&["logs", "ticker", "--tail=2"]);
    assert_eq!(tail.lines().count(), 2, "{tail}");
    let stamped = k.kubectl_ok(&["logs", "ticker", "--tail=1", "--timestamps"]);
    let stamp = stamped.split_whitespace().next().unwrap();
    assert!(
        stamp.parse::<jiff::Timestamp>().is_ok(),
        "RFC 3339 timestamp first: {stamped}"
    );

    // Follow: lines written after kubectl started arrive while it runs.
    let mut follow = k
        .kapi
        .kubectl_command(&["logs", "-f", "ticker", "--tail=1"])
        .unwrap()
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rx = lines_of(&mut follow);
    let first: u32 = wait_line(&rx, "a first line", |l| l.starts_with("line "))[5..]
        .parse()
        .unwrap();
    let later = wait_line(&rx, "a later line", |l| {
        l.strip_prefix("line ")
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|n| n >= first + 3)
    });
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(later.starts_with("line "));

    // Attach (both transports): output written after attaching.
    for (transport, value) in REMOTE_COMMAND {
        let mut attach = kubectl(
            &k,
            ("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", value),
            &["attach", "ticker"],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
        let rx = lines_of(&mut attach);
        let a: u32 = wait_line(&rx, "attached output", |l| l.starts_with("line "))[5..]
            .parse()
            .unwrap();
        wait_line(&rx, &format!("{transport}: more attached output"), |l| {
            l.strip_prefix("line ")
                .and_then(|n| n.parse::<u32>().ok())
                .is_some_and(|n| n > a)
        });
        let _ = attach.kill();
        let _ = attach.wait();
    }
}

#[test]
fn port_forward_over_the_websocket_tunnel_and_spdy() {
    let k = KubeCluster::start();
    let containers = "  - name: web\n    image: {image}\n    command: [sh, -c, 'mkdir -p /www && echo hello-through-forward > /www/index.html && exec httpd -f -p 8080 -h /www']\n";
    k.create(&k.pod_yaml("web", "", containers));
    k.wait_running("web");
    for (transport, value) in [("websocket tunnel", "true"), ("spdy", "false")] {
        let local = orca_tests::env::free_port();
        let mut pf = kubectl(
            &k,
            ("KUBECTL_PORT_FORWARD_WEBSOCKETS", value),
            &["port-forward", "pod/web", &format!("{local}:8080")],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
        let rx = lines_of(&mut pf);
        wait_line(&rx, "Forwarding from", |l| l.contains("Forwarding from"));
        for _ in 0..3 {
            let mut conn = std::net::TcpStream::connect(("127.0.0.1", local)).unwrap();
            conn.set_read_timeout(Some(DEADLINE)).unwrap();
            conn.write_all(b"GET /index.html HTTP/1.0\r\n\r\n").unwrap();
            let mut answer = String::new();
            conn.read_to_string(&mut answer).unwrap();
            assert!(
                answer.starts_with("HTTP/1.") && answer.contains("hello-through-forward"),
                "{transport}: {answer}"
            );
        }
        let _ = pf.kill();
        let _ = pf.wait();
    }
}

/// A client of the kubelet API presenting `identity` (PEM cert + key), trusting ORCA's CA.
fn kubelet_client(k: &KubeCluster, identity: Option<(&str, &str)>) -> reqwest::Client {
    let ca = std::fs::read(k.cluster.data_dir().join("ca.pem")).unwrap();
    let mut b = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .timeout(Duration::from_secs(30));
    if let Some((cert, key)) = identity {
        let pem = format!("{cert}{key}");
        b = b.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
    }
    b.build().unwrap()
}

/// GET `url`: (status, body), or the transport error.
fn fetch(client: &reqwest::Client, url: &str) -> Result<(u16, String), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let r = client.get(url).send().await.map_err(|e| format!("{e:?}"))?;
        let status = r.status().as_u16();
        Ok((status, r.text().await.map_err(|e| e.to_string())?))
    })
}

#[test]
fn metrics_resource_parses_as_prometheus_text_and_clients_from_another_ca_are_refused() {
    let k = KubeCluster::start();
    let containers = "  - name: busy\n    image: {image}\n    command: [sh, -c, 'i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done; while true; do sleep 1; done']\n";
    k.create(&k.pod_yaml("busy", "", containers));
    k.wait_running("busy");
    let base = format!("https://127.0.0.1:{}", k.kubelet_port);
    let ours = kubelet_client(
        &k,
        Some((&k.kubelet_client.cert_pem, &k.kubelet_client.key_pem)),
    );

    let text = eventually_blocking("usage of the busy container", DEADLINE, || {
        let (status, text) = fetch(&ours, &format!("{base}/metrics/resource"))?;
        if status != 200 {
            return Err(format!("{status}: {text}"));
        }
        if text.contains("pod=\"busy\"") {
            Ok(text)
        } else {
            Err(text)
        }
    });
    // The Prometheus client library's parser (Python), as metrics-server parses it.
    let script = "import sys, json\nfrom prometheus_client.parser import text_string_to_metric_families\n\
                  out = [dict(name=s.name, labels=s.labels, value=s.value, ts=s.timestamp) for f in text_string_to_metric_families(sys.stdin.read()) for s in f.samples]\n\
                  print(json.dumps(out))\n";
    let python = orca_tests::env::emulator_python().unwrap();
    let mut child = Command::new(python)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client parse failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let samples: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let find = |name: &str| {
        samples
            .iter()
            .find(|s| {
                s["name"] == name
                    && s["labels"]["pod"] == "busy"
                    && s["labels"]["container"] == "busy"
            })
            .unwrap_or_else(|| panic!("{name} for busy in {text}"))
    };
    let cpu = find("container_cpu_usage_seconds_total");
    assert!(cpu["value"].as_f64().unwrap() > 0.0, "{cpu}");
    assert!(
        cpu["ts"].as_f64().is_some(),
        "samples carry timestamps: {cpu}"
    );
    assert!(
        find("container_memory_working_set_bytes")["value"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    assert!(
        samples
            .iter()
            .any(|s| s["name"] == "node_cpu_usage_seconds_total")
    );
    let summary: serde_json::Value =
        serde_json::from_str(&fetch(&ours, &format!("{base}/stats/summary")).unwrap().1).unwrap();
    assert_eq!(summary["node"]["nodeName"], NODE);
    let pods: serde_json::Value =
        serde_json::from_str(&fetch(&ours, &format!("{base}/pods")).unwrap().1).unwrap();
    assert_eq!(pods["kind"], "PodList");
    assert!(
        pods["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["metadata"]["name"] == "busy"),
        "{pods}"
    );
    assert!(
        summary["pods"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["podRef"]["name"] == "busy"),
        "{summary}"
    );

    // A certificate from another CA: the handshake fails; none at all: the same.
    let other = TestPki::new(&k.cluster.dir().join("other-pki"));
    let stranger = other.issue("stranger", "kube-apiserver-kubelet-client", &[]);
    for (who, client) in [
        (
            "another CA",
            kubelet_client(&k, Some((&stranger.cert_pem, &stranger.key_pem))),
        ),
        ("no certificate", kubelet_client(&k, None)),
    ] {
        let r = fetch(&client, &format!("{base}/healthz"));
        assert!(r.is_err(), "{who}: refused, got {r:?}");
    }
    assert_eq!(
        fetch(&ours, &format!("{base}/healthz")).unwrap(),
        (200, "ok\n".to_owned())
    );
}

#[test]
fn webhook_authorization_asks_the_api_server() {
    // The emulator allows the API server's kubelet client nodes/proxy (logs,
    // exec) but not nodes/metrics.
    let k = KubeCluster::start_with(
        "    authorization: webhook\n",
        &["kube-apiserver-kubelet-client:*:nodes:proxy"],
    );
    sleeper(&k);
    let logs = eventually_blocking("logs through an allowed review", DEADLINE, || {
        let out = k.kubectl(&["logs", "box"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains("started") {
            Ok(text)
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    });
    assert!(logs.contains("started"));
    let base = format!("https://127.0.0.1:{}", k.kubelet_port);
    let ours = kubelet_client(
        &k,
        Some((&k.kubelet_client.cert_pem, &k.kubelet_client.key_pem)),
    );
    let (status, message) = fetch(&ours, &format!("{base}/metrics/resource")).unwrap();
    assert_eq!(status, 403, "{message}");
    assert!(
        message.contains("user=kube-apiserver-kubelet-client")
            && message.contains("subresource=metrics"),
        "{message}"
    );
    // The reviews the control plane asked for, as the emulator recorded them.
    let reviews: Vec<serde_json::Value> = k
        .kapi
        .requests()
        .into_iter()
        .filter_map(|r| r.review)
        .collect();
    let asked = |sub: &str, allowed: bool| {
        reviews.iter().any(|r| {
            r["spec"]["resourceAttributes"]["subresource"] == sub
                && r["spec"]["resourceAttributes"]["name"] == NODE
                && r["spec"]["user"] == "kube-apiserver-kubelet-client"
                && r["status"]["allowed"] == allowed
        })
    };
    assert!(
        asked("proxy", true) && asked("metrics", false),
        "{reviews:?}"
    );
    assert!(k.assert_rbac_covers_requests() > 0);
}
