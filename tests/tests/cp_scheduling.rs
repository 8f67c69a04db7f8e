//! Placement by resources, nodeSelector and taints; cordon and drain;
//! autoscaling; and a control plane killed with SIGKILL in the middle of work,
//! against the real binaries and containerd.

use orca_tests::cluster::{DEADLINE, TestCluster};
use orca_tests::eventually::eventually_blocking;

fn manifest(name: &str, image: &str, extra_spec: &str, cpu: &str, restart: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  restartPolicy: {restart}\n{extra_spec}  containers:\n  - name: c\n    image: {image}\n    command: [sleep, '600']\n    resources:\n      requests: {{cpu: {cpu}}}\n"
    )
}

fn apply(c: &TestCluster, text: &str) {
    let file = c.dir().join(format!("pod-{}.yaml", text.len()));
    std::fs::write(&file, text).unwrap();
    c.orca_ok(&["apply", "-f", file.to_str().unwrap()]);
}

#[test]
fn pods_go_where_their_requests_fit_and_unschedulable_ones_fail_with_the_reason() {
    let c = TestCluster::start_configured(&["--retry-ms=100"], "pending_timeout_ms: 3000\n");
    c.orca_ok(&["node", "add", "a", "--cpu", "1", "--memory", "1Gi"]);
    c.orca_ok(&[
        "node",
        "add",
        "b",
        "--cpu",
        "1",
        "--memory",
        "1Gi",
        "--label",
        "gpu=a100",
        "--taint",
        "dedicated=ml:NoSchedule",
    ]);
    apply(&c, &manifest("big1", &c.image, "", "600m", "Never"));
    let first = c.wait_phase("big1", "Running");
    assert_eq!(first["node"], "a", "b's taint is not tolerated: {first}");

    // The second 600m pod does not fit beside the first on a (1 CPU) and does not
    // tolerate b's taint: it fails Unschedulable, naming why, after the timeout.
    apply(&c, &manifest("big2", &c.image, "", "600m", "Never"));
    let failed = c.wait_phase("big2", "Failed");
    assert_eq!(failed["reason"], "Unschedulable", "{failed}");
    let message = failed["message"].as_str().unwrap();
    assert!(
        message.contains("a: cpu millis: 400 free, 600 asked"),
        "{message}"
    );
    assert!(
        message.contains("b: taint dedicated=ml:NoSchedule"),
        "{message}"
    );

    // Tolerating the taint and selecting the label lands on b.
    let tolerant = "  nodeSelector: {gpu: a100}\n  tolerations:\n  - {key: dedicated, operator: Equal, value: ml, effect: NoSchedule}\n";
    apply(&c, &manifest("ml", &c.image, tolerant, "600m", "Never"));
    assert_eq!(c.wait_phase("ml", "Running")["node"], "b");
    let nodes = c.orca_ok(&["node", "list"]);
    assert!(
        nodes
            .lines()
            .any(|l| l.starts_with("a ") && l.contains("600m/1")),
        "requests are shown per node: {nodes}"
    );

    // GPUs given at `node add` are capacity for placement.
    c.orca_ok(&["node", "add", "g", "--gpus", "2"]);
    let gpu = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: train\nspec:\n  restartPolicy: Never\n  containers:\n  - name: c\n    image: IMAGE\n    command: [sleep, '600']\n    resources:\n      limits: {nvidia.com/gpu: 2}\n";
    apply(&c, &gpu.replace("IMAGE", &c.image));
    assert_eq!(c.wait_phase("train", "Running")["node"], "g");
    assert_eq!(c.node("g")["requested"]["gpus"], 2);
}

#[test]
fn drain_moves_restartable_pods_and_evicts_the_rest_and_cordon_keeps_new_pods_off() {
    let c = TestCluster::start();
    let mut pods = c.pods_on_first_of_two("a", "b", &[("svc", "Always"), ("job", "Never")]);
    pods.pop();
    let svc = pods.pop().expect("svc");
    let old_uid = svc["uid"].as_str().unwrap().to_owned();

    c.orca_ok(&["node", "drain", "a", "--grace-period", "1"]);
    let moved = c.wait_phase("svc", "Running");
    assert_eq!(moved["node"], "b", "{moved}");
    assert_ne!(moved["uid"], old_uid.as_str(), "a new incarnation");
    assert_eq!(moved["recreations"], 1);
    let evicted = c.wait_phase("job", "Failed");
    assert_eq!(evicted["reason"], "Evicted", "{evicted}");
    eventually_blocking("nothing left running on a", DEADLINE, || {
        let running: Vec<_> = c
            .tasks("a")
            .into_iter()
            .filter(|(_, s)| s == "RUNNING")
            .collect();
        if running.is_empty() {
            Ok(())
        } else {
            Err(running)
        }
    });
    let nodes = c.orca_ok(&["node", "list"]);
    assert!(
        nodes
            .lines()
            .any(|l| l.starts_with("a ") && l.contains("SchedulingDisabled")),
        "{nodes}"
    );
}

#[test]
fn the_autoscaler_launches_a_host_for_a_pod_that_fits_nowhere() {
    let c = TestCluster::start_configured(
        &["--retry-ms=100"],
        "autoscale:\n  max_nodes: 1\n  cpu: '2'\n  memory: 1Gi\n",
    );
    c.orca_ok(&["run", "first", "--image", &c.image, "--", "sleep", "600"]);
    let pod = c.wait_phase("first", "Running");
    let node = pod["node"].as_str().unwrap().to_owned();
    let n = c.node(&node);
    assert_eq!(n["labels"]["orca.research/autoscaled"], "true", "{n}");
    assert_eq!(n["allocatable"]["cpuMillis"], 2000, "{n}");
}

#[test]
fn a_control_plane_killed_mid_work_loses_nothing_and_its_agents_reconnect() {
    let mut c = TestCluster::start();
    c.orca_ok(&["node", "add", "a"]);
    c.orca_ok(&["node", "add", "b"]);
    c.orca_ok(&["run", "long", "--image", &c.image, "--", "sleep", "600"]);
    let long = c.wait_phase("long", "Running");
    c.orca_ok(&[
        "run",
        "quick",
        "--image",
        &c.image,
        "--",
        "sh",
        "-c",
        "echo done",
    ]);
    c.wait_phase("quick", "Succeeded");
    // Acknowledged just before the kill: it must be there afterwards.
    c.orca_ok(&["run", "late", "--image", &c.image, "--", "sleep", "600"]);
    c.kill_control_plane();

    c.start_control_plane();
    let nodes = c.orca_ok(&["node", "list"]);
    assert!(nodes.contains("a ") && nodes.contains("b "), "{nodes}");
    let after = c.wait_phase("long", "Running");
    assert_eq!(
        after["uid"], long["uid"],
        "the same incarnation, not a new one"
    );
    assert_eq!(after["node"], long["node"]);
    assert_eq!(c.pod("quick")["phase"], "Succeeded");
    c.wait_phase("late", "Running");
    // The agents heartbeat to the new process without operator action: a new
    // pod runs, and the nodes stay Ready past the Lost threshold.
    c.orca_ok(&[
        "run", "new", "--image", &c.image, "--", "sh", "-c", "echo hi",
    ]);
    c.wait_phase("new", "Succeeded");
    for n in ["a", "b"] {
        c.wait_node_ready(n);
    }
    let running = c
        .tasks(long["node"].as_str().unwrap())
        .into_iter()
        .filter(|(_, s)| s == "RUNNING")
        .count();
    assert!(running >= 1, "the pod never stopped");
}

#[test]
fn cli_errors_have_exit_codes_and_down_removes_every_node() {
    let c = TestCluster::start();
    let code = |args: &[&str]| c.orca(args).status.code();
    assert_eq!(code(&["get", "pod", "nope"]), Some(3), "not found");
    assert_eq!(
        code(&["node", "add", "Bad_Name", "--no-wait"]),
        Some(2),
        "bad input"
    );
    assert_eq!(
        code(&["node", "fault", "x"]),
        Some(2),
        "usage: a fault flag is required"
    );
    let out = std::process::Command::new(orca_tests::env::workspace_bin("orca"))
        .args(["--config", "/nonexistent/orca.yaml", "get", "pods"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new(orca_tests::env::workspace_bin("orca"))
        .arg("--config")
        .arg(c.credentials())
        .args(["--server", "https://127.0.0.1:1", "get", "pods"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A misspelt or malformed ORCA annotation fails the pod, naming it; never ignored.
    c.orca_ok(&[
        "run",
        "typo",
        "--image",
        &c.image,
        "--annotation",
        "orca.research/instance-typo=g5.xlarge",
    ]);
    let typo = c.pod("typo");
    assert_eq!(typo["phase"], "Failed", "{typo}");
    assert_eq!(typo["reason"], "InvalidAnnotation", "{typo}");
    assert!(
        typo["message"]
            .as_str()
            .unwrap()
            .contains("orca.research/instance-typo: unknown ORCA annotation"),
        "{typo}"
    );
    let events = c.orca_ok(&["events", "typo"]);
    assert!(events.contains("InvalidAnnotation"), "{events}");
    c.orca_ok(&[
        "run",
        "cheap",
        "--image",
        &c.image,
        "--annotation",
        "orca.research/max-spot-price=0.5",
    ]);
    assert!(
        c.pod("cheap")["message"]
            .as_str()
            .unwrap()
            .contains("needs orca.research/capacity-type: spot")
    );

    c.orca_ok(&["node", "add", "a"]);
    c.orca_ok(&["node", "add", "b"]);
    c.orca_ok(&["run", "job", "--image", &c.image, "--", "sleep", "600"]);
    c.wait_phase("job", "Running");
    let down = c.orca_ok(&["down"]);
    assert!(
        down.contains("node/a removed") && down.contains("node/b removed"),
        "{down}"
    );
    let nodes = c.orca_ok(&["node", "list"]);
    assert_eq!(nodes.lines().count(), 1, "only the header is left: {nodes}");
    assert_eq!(c.pod("job")["reason"], "NodeRemoved");
    assert!(c.agent_pids().is_empty(), "no simulated host left");
}
