//! The agent's exec processes and probes on a real containerd: `Containerd::exec`
//! (output, exit codes, the container's env and cwd, the output cap, the timeout kill,
//! containerd's errors) and `probes::probe_once` / `probes::run` with exec, httpGet,
//! tcpSocket and grpc handlers against busybox containers on the host's network.
//!
//! Probes and containers are written as Kubernetes JSON, as pod specs arrive.

use std::time::{Duration, Instant};

use orca_agent::probes::{self, Outcome, ProbeError, ProbeKind, Transition};
use orca_agent::runtime::{self, RuntimeError, TaskStatus};
use orca_tests::agent::TestAgent;
use orca_tests::env::{Containerd, busybox_image, free_port};
use orca_tests::eventually::eventually;
use serde_json::json;
use tempfile::TempDir;

/// Generous bound for anything awaited (2 noisy cores).
const DEADLINE: Duration = Duration::from_secs(60);

/// Output cap of the exec calls of these tests.
const MAX_OUTPUT: usize = 64 * 1024;

/// A private containerd with the busybox image imported into the test's namespace.
struct Env {
    containerd: Containerd,
    ctrd: runtime::Containerd,
    ns: String,
    image: String,
    // Last: removed after containerd has stopped.
    _dir: TempDir,
}

impl Env {
    async fn start(test: &str) -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let containerd = Containerd::start(dir.path()).expect("containerd starts");
        let ns = format!("exec-probes-{test}-{}", std::process::id());
        let archive = busybox_image(dir.path()).expect("busybox image builds");
        let image = containerd
            .import_image(&ns, &archive)
            .expect("image imports");
        let ctrd = runtime::Containerd::connect(&containerd.socket, &ns)
            .await
            .expect("agent connects to containerd");
        Env {
            containerd,
            ctrd,
            ns,
            image,
            _dir: dir,
        }
    }

    /// Starts container `id` running `sh -c script` on the host's network.
    fn run(&self, id: &str, script: &str) {
        self.containerd
            .ctr(
                &self.ns,
                &[
                    "run",
                    "-d",
                    "--net-host",
                    &self.image,
                    id,
                    "sh",
                    "-c",
                    script,
                ],
            )
            .unwrap_or_else(|e| panic!("ctr run {id}: {e}"));
    }

    async fn exec(&self, id: &str, args: &[&str], timeout: Duration) -> runtime::exec::ExecResult {
        let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        self.ctrd
            .exec(id, &args, timeout, MAX_OUTPUT)
            .await
            .unwrap_or_else(|e| panic!("exec {args:?} in {id}: {e:?}"))
    }
}

fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).expect("utf-8 output")
}

#[tokio::test]
async fn exec_returns_output_exit_code_and_the_containers_env() {
    let env = Env::start("output").await;
    env.run("box", "sleep 600");

    let r = env
        .exec(
            "box",
            &["sh", "-c", "echo out; echo err >&2; exit 3"],
            DEADLINE,
        )
        .await;
    assert_eq!(
        (r.exit_code, text(&r.stdout), text(&r.stderr), r.timed_out),
        (3, "out\n", "err\n", false)
    );

    let r = env.exec("box", &["cat", "/www/index.html"], DEADLINE).await;
    assert_eq!(
        (r.exit_code, text(&r.stdout)),
        (0, "hello from orca busybox\n")
    );

    // The container's process spec: the image's PATH and working directory.
    let r = env
        .exec("box", &["sh", "-c", "echo $PATH; pwd; id -u"], DEADLINE)
        .await;
    assert_eq!((r.exit_code, text(&r.stdout)), (0, "/bin\n/\n0\n"));

    // Many exec processes in a row: ids are unique and each is deleted after use.
    for i in 0..5 {
        let r = env
            .exec("box", &["sh", "-c", &format!("echo {i}")], DEADLINE)
            .await;
        assert_eq!(text(&r.stdout), format!("{i}\n"));
    }
}

#[tokio::test]
async fn exec_is_killed_at_its_timeout_and_its_output_is_capped() {
    let env = Env::start("timeout").await;
    env.run("box", "sleep 600");

    let started = Instant::now();
    let r = env
        .exec("box", &["sleep", "30"], Duration::from_millis(500))
        .await;
    assert!(r.timed_out, "{r:?}");
    assert_eq!(r.exit_code, 128 + 9, "SIGKILLed");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );

    // Output past the cap is read and dropped: the writer never blocks on a full pipe.
    let args: Vec<String> = ["sh", "-c", "yes | head -c 300000; echo done >&2"]
        .map(String::from)
        .to_vec();
    let r = env
        .ctrd
        .exec("box", &args, DEADLINE, 1000)
        .await
        .expect("exec");
    assert_eq!(r.exit_code, 0, "{r:?}");
    assert_eq!(r.stdout, b"y\n".repeat(500));
    assert_eq!(text(&r.stderr), "done\n");

    // An exec whose caller gives up midway is killed and deleted in the background.
    let processes = || {
        env.containerd
            .ctr(&env.ns, &["tasks", "ps", "box"])
            .map(|ps| ps.lines().count().saturating_sub(1))
    };
    let sleeper = ["sleep", "300"].map(String::from);
    tokio::select! {
        r = env.ctrd.exec("box", &sleeper, DEADLINE, MAX_OUTPUT) => panic!("sleep 300 ended: {r:?}"),
        () = eventually("the exec process to run beside the task", DEADLINE, || async {
            match processes() {
                Ok(2) => Ok(()),
                other => Err(other),
            }
        }) => {}
    }
    eventually(
        "the abandoned exec process to be killed",
        DEADLINE,
        || async {
            match processes() {
                Ok(1) => Ok(()),
                other => Err(other),
            }
        },
    )
    .await;

    // A background child keeps stdout open; the exit is not held up waiting for it.
    let started = Instant::now();
    let r = env
        .exec("box", &["sh", "-c", "sleep 30 & echo started"], DEADLINE)
        .await;
    assert_eq!((r.exit_code, text(&r.stdout)), (0, "started\n"));
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn exec_errors_are_containerds() {
    let env = Env::start("errors").await;
    env.run("box", "sleep 600");
    let args = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();

    // runc cannot start it: Tasks.Start fails.
    match env
        .ctrd
        .exec("box", &args(&["/no/such/binary"]), DEADLINE, MAX_OUTPUT)
        .await
    {
        Err(RuntimeError::Containerd {
            op: "Tasks.Start", ..
        }) => {}
        other => panic!("missing executable: {other:?}"),
    }

    // No such container.
    let err = env
        .ctrd
        .exec("nobody", &args(&["true"]), DEADLINE, MAX_OUTPUT)
        .await
        .expect_err("no container");
    assert!(err.is_not_found(), "{err:?}");

    // A container without a task, and one whose task has exited.
    env.containerd
        .ctr(
            &env.ns,
            &["containers", "create", &env.image, "idle", "true"],
        )
        .expect("ctr containers create");
    env.run("done", "true");
    eventually("the task of `done` to stop", DEADLINE, || async {
        match env.ctrd.observe("done").await {
            Ok(Some(o)) if o.status == TaskStatus::Stopped => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    match env
        .ctrd
        .exec("idle", &args(&["true"]), DEADLINE, MAX_OUTPUT)
        .await
    {
        Err(
            e @ RuntimeError::Containerd {
                op: "Tasks.Exec", ..
            },
        ) if e.is_not_found() => {}
        other => panic!("exec in a container without a task: {other:?}"),
    }
    // containerd 1.6's shim answers Unknown here, not FailedPrecondition.
    match env
        .ctrd
        .exec("done", &args(&["true"]), DEADLINE, MAX_OUTPUT)
        .await
    {
        Err(RuntimeError::Containerd {
            op: "Tasks.Exec",
            source,
        }) if source.message().contains("stopped") => {}
        other => panic!("exec in a stopped task: {other:?}"),
    }

    // The container still runs execs after all that.
    let r = env.exec("box", &["true"], DEADLINE).await;
    assert_eq!(r.exit_code, 0);
}

/// A probe or container from its Kubernetes JSON (the type comes from where it is used).
macro_rules! k8s {
    ($($json:tt)+) => {
        serde_json::from_value(json!($($json)+)).expect("valid Kubernetes JSON")
    };
}

#[tokio::test]
async fn probes_run_exec_http_and_tcp_handlers() {
    let env = Env::start("probes").await;
    let (http_port, tcp_port, closed_port) = (free_port(), free_port(), free_port());
    env.run(
        "web",
        &format!(
            "httpd -f -p 127.0.0.1:{http_port} -h /www & nc -ll -p {tcp_port} -e /bin/true & wait"
        ),
    );
    let container = k8s!({
        "name": "web",
        "image": "busybox",
        "ports": [{"name": "http", "containerPort": http_port}],
    });
    let once = |probe| {
        let env = &env;
        let container = &container;
        async move { probes::probe_once(&env.ctrd, "web", "127.0.0.1", container, &probe).await }
    };

    // Servers up: httpGet and tcpSocket succeed once they listen.
    for probe in [
        k8s!({"httpGet": {"port": http_port, "path": "/index.html"}}),
        k8s!({"httpGet": {"port": "http"}}),
        k8s!({"httpGet": {"port": http_port, "httpHeaders": [{"name": "X-Probe", "value": "1"}]}}),
        k8s!({"tcpSocket": {"port": tcp_port}}),
    ] {
        let what = format!("{probe:?} to succeed");
        eventually(&what, DEADLINE, || async {
            match once(Clone::clone(&probe)).await {
                Ok(Outcome::Success) => Ok(()),
                other => Err(other),
            }
        })
        .await;
    }

    let failure = |outcome: Result<Outcome, ProbeError>| match outcome {
        Ok(Outcome::Failure(message)) => message,
        other => panic!("expected a failure, got {other:?}"),
    };
    let m = failure(once(k8s!({"httpGet": {"port": http_port, "path": "/missing"}})).await);
    assert_eq!(m, "HTTP probe failed with statuscode: 404");
    let m = failure(once(k8s!({"tcpSocket": {"port": closed_port}})).await);
    assert!(
        m.contains(&format!("127.0.0.1:{closed_port}")) && m.contains("refused"),
        "{m}"
    );
    let m = failure(once(k8s!({"httpGet": {"port": closed_port}})).await);
    assert!(m.contains("refused"), "{m}");

    // exec: exit 0 succeeds; anything else fails with the code and output.
    assert_eq!(
        once(k8s!({"exec": {"command": ["true"]}}))
            .await
            .expect("runs"),
        Outcome::Success
    );
    let m =
        failure(once(k8s!({"exec": {"command": ["sh", "-c", "echo not ready; exit 1"]}})).await);
    assert!(
        m.contains("exited with 1") && m.contains("not ready"),
        "{m}"
    );
    let started = Instant::now();
    let m = failure(once(k8s!({"exec": {"command": ["sleep", "30"]}, "timeoutSeconds": 1})).await);
    assert!(m.contains("timed out"), "{m}");
    assert!(started.elapsed() < Duration::from_secs(15));
    let m = failure(once(k8s!({"exec": {"command": ["/no/such/probe"]}})).await);
    assert!(m.contains("could not start"), "{m}");

    // A probe that cannot run at all is an error, not a failure.
    let gone = probes::probe_once(
        &env.ctrd,
        "nobody",
        "127.0.0.1",
        &container,
        &k8s!({"exec": {"command": ["true"]}}),
    )
    .await;
    assert!(matches!(gone, Err(ProbeError::Runtime(_))), "{gone:?}");
    assert!(matches!(once(k8s!({})).await, Err(ProbeError::NoHandler)));
}

#[tokio::test]
async fn probe_loop_reports_each_transition_until_stopped() {
    let env = Env::start("loop").await;
    env.run("app", "sleep 600");
    let container = k8s!({"name": "app", "image": "busybox"});
    let probe = k8s!({
        "exec": {"command": ["cat", "/tmp/ready"]},
        "periodSeconds": 1,
        "failureThreshold": 1,
    });
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let looping = tokio::spawn(probes::run(
        env.ctrd.clone(),
        "app".to_owned(),
        "127.0.0.1".to_owned(),
        container,
        ProbeKind::Readiness,
        probe,
        tx,
        async {
            let _ = stop_rx.await;
        },
    ));
    let mut next = async || {
        tokio::time::timeout(DEADLINE, rx.recv())
            .await
            .expect("a transition in time")
            .expect("the loop is running")
    };

    let first = next().await;
    assert!(
        matches!(&first, Transition { kind: ProbeKind::Readiness, healthy: false, message } if message.contains("exited with 1")),
        "{first:?}"
    );
    env.exec("app", &["sh", "-c", "echo yes > /tmp/ready"], DEADLINE)
        .await;
    let second = next().await;
    assert_eq!(
        second,
        Transition {
            kind: ProbeKind::Readiness,
            healthy: true,
            message: String::new(),
        }
    );

    stop_tx.send(()).expect("loop listening");
    tokio::time::timeout(DEADLINE, looping)
        .await
        .expect("the loop stops")
        .expect("the loop did not panic");
}

#[tokio::test]
async fn grpc_probe_asks_the_health_service() {
    // A real plaintext grpc.health.v1 server (Kubernetes' gRPC probes speak no TLS).
    let agent = TestAgent::start();
    let (health, service) = tonic_health::server::health_reporter();
    health
        .set_service_status(
            "orca.agent.v1.AgentService",
            tonic_health::ServingStatus::Serving,
        )
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let ctrd = runtime::Containerd::connect(&agent.containerd.socket, "grpc-probe")
        .await
        .expect("connect");
    let container = k8s!({"name": "c", "image": "busybox"});
    let once = |probe| {
        let ctrd = &ctrd;
        let container = &container;
        async move { probes::probe_once(ctrd, "c", "127.0.0.1", container, &probe).await }
    };

    assert_eq!(
        once(k8s!({"grpc": {"port": port}})).await.expect("runs"),
        Outcome::Success
    );
    assert_eq!(
        once(k8s!({"grpc": {"port": port, "service": "orca.agent.v1.AgentService"}}))
            .await
            .expect("runs"),
        Outcome::Success
    );
    match once(k8s!({"grpc": {"port": port, "service": "no.such.Service"}})).await {
        Ok(Outcome::Failure(m)) => assert!(m.contains("NotFound"), "{m}"),
        other => panic!("unknown service: {other:?}"),
    }
    match once(k8s!({"grpc": {"port": free_port()}, "timeoutSeconds": 2})).await {
        Ok(Outcome::Failure(m)) => assert!(m.contains("failed to connect"), "{m}"),
        other => panic!("closed port: {other:?}"),
    }
}
