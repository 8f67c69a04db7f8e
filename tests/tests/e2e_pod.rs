//! End to end on real parts: the `orca` CLI → the control plane → a simulated
//! host's agent → containerd + runc, with images pulled from a real registry.
//! Every state asserted here is checked against containerd itself.

use std::time::Duration;

use orca_tests::cluster::{DEADLINE, TestCluster};
use orca_tests::env::process_running;
use orca_tests::eventually::eventually_blocking;

#[test]
fn pod_runs_logs_and_stops_in_containerd() {
    let mut c = TestCluster::start();
    let out = c.orca_ok(&["node", "add", "n1"]);
    assert!(out.contains("node/n1 Ready"), "{out}");
    let nodes = c.orca_ok(&["get", "nodes"]);
    assert!(
        nodes.contains("n1") && nodes.contains("Ready") && nodes.contains("local"),
        "{nodes}"
    );

    // Running, as containerd reports the task.
    c.orca_ok(&[
        "run",
        "web",
        "--image",
        &c.image,
        "--",
        "sh",
        "-c",
        "echo hello-from-orca; sleep 0.3; echo oops >&2; exec sleep 300",
    ]);
    let pod = c.wait_phase("web", "Running");
    let id = pod["containerStatuses"][0]["containerID"]
        .as_str()
        .unwrap()
        .trim_start_matches("containerd://")
        .to_owned();
    assert!(
        pod["containerStatuses"][0]["state"]["running"].is_object(),
        "{pod}"
    );
    assert!(
        c.tasks("n1").contains(&(id.clone(), "RUNNING".into())),
        "containerd runs {id}: {:?}",
        c.tasks("n1")
    );

    // Logs: what the container wrote, both streams, through the shim's logger.
    let logs = eventually_blocking("logs to show both lines", DEADLINE, || {
        let logs = c.orca_ok(&["logs", "web"]);
        if logs.contains("hello-from-orca") && logs.contains("oops") {
            Ok(logs)
        } else {
            Err(logs)
        }
    });
    assert_eq!(logs, "hello-from-orca\noops\n");
    assert_eq!(c.orca_ok(&["logs", "web", "--tail", "1"]), "oops\n");

    // Delete: the task is stopped and the container removed, in containerd.
    let out = c.orca_ok(&["delete", "pod", "web", "--grace-period", "1"]);
    assert!(out.contains("deleted"), "{out}");
    assert!(
        c.tasks("n1").iter().all(|(t, _)| t != &id),
        "task gone: {:?}",
        c.tasks("n1")
    );
    assert!(
        !c.containers("n1").contains(&id),
        "container gone: {:?}",
        c.containers("n1")
    );
    let gone = c.orca(&["get", "pod", "web"]);
    assert!(!gone.status.success() && String::from_utf8_lossy(&gone.stderr).contains("not found"));

    // Clean shutdown: the node is removed (its agent stops), the control plane exits 0.
    let agents = c.agent_pids();
    assert_eq!(agents.len(), 1);
    c.orca_ok(&["node", "remove", "n1"]);
    eventually_blocking("agent to exit", DEADLINE, || {
        if agents.iter().any(|p| process_running(*p)) {
            Err(agents.clone())
        } else {
            Ok(())
        }
    });
    let status = c
        .stop_control_plane()
        .expect("control plane exits on SIGTERM");
    assert!(status.success(), "control plane exit status {status}");
    assert!(
        c.control_plane_log().contains("state flushed"),
        "{}",
        c.control_plane_log()
    );
}

#[test]
fn exit_codes_and_bad_images_are_reported_as_observed() {
    let c = TestCluster::start();
    c.orca_ok(&["node", "add", "n1"]);

    c.orca_ok(&[
        "run",
        "ok",
        "--image",
        &c.image,
        "--",
        "sh",
        "-c",
        "echo done",
    ]);
    c.orca_ok(&[
        "run", "three", "--image", &c.image, "--", "sh", "-c", "exit 3",
    ]);
    c.orca_ok(&[
        "run",
        "missing",
        "--image",
        &format!("{}/orca/does-not-exist:1", c.registry.addr),
    ]);

    let ok = c.wait_phase("ok", "Succeeded");
    assert_eq!(
        ok["containerStatuses"][0]["state"]["terminated"]["exitCode"], 0,
        "{ok}"
    );
    assert_eq!(
        ok["containerStatuses"][0]["state"]["terminated"]["reason"],
        "Completed"
    );
    assert_eq!(c.orca_ok(&["logs", "ok"]), "done\n");

    let three = c.wait_phase("three", "Failed");
    assert_eq!(
        three["containerStatuses"][0]["state"]["terminated"]["exitCode"], 3,
        "{three}"
    );
    assert_eq!(
        three["containerStatuses"][0]["state"]["terminated"]["reason"],
        "Error"
    );
    let id = three["containerStatuses"][0]["containerID"]
        .as_str()
        .unwrap()
        .trim_start_matches("containerd://");
    assert!(
        c.tasks("n1").contains(&(id.to_owned(), "STOPPED".into())),
        "{:?}",
        c.tasks("n1")
    );

    let missing = c.wait_phase("missing", "Failed");
    assert_eq!(missing["reason"], "ErrImagePull", "{missing}");
    let message = missing["message"].as_str().unwrap();
    assert!(
        message.contains("does-not-exist") && message.contains("manifest unknown"),
        "{message}"
    );
    assert_eq!(
        missing["containerStatuses"][0]["state"]["waiting"]["reason"],
        "ErrImagePull"
    );

    let events = c.orca_ok(&["events", "missing"]);
    assert!(
        events.contains("Warning") && events.contains("ErrImagePull"),
        "{events}"
    );
    let table = c.orca_ok(&["get", "pods"]);
    assert!(
        table.contains("Failed (ErrImagePull)") && table.contains("Succeeded"),
        "{table}"
    );
}

#[test]
fn bad_specs_fail_with_a_reason_and_never_hang() {
    let c = TestCluster::start();
    c.orca_ok(&["node", "add", "n1"]);

    // A manifest asking for something the agent does not do fails, naming the field.
    let manifest = c.dir().join("probe.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: probed\nspec:\n  containers:\n  - name: c\n    image: {}\n    \
             lifecycle:\n      postStart:\n        exec:\n          command: [\"true\"]\n",
            c.image
        ),
    )
    .unwrap();
    c.orca_ok(&["apply", "-f", manifest.to_str().unwrap()]);
    let probed = c.wait_phase("probed", "Failed");
    assert_eq!(probed["reason"], "InvalidPodSpec", "{probed}");
    assert!(
        probed["message"].as_str().unwrap().contains("postStart"),
        "{probed}"
    );
    assert!(c.orca_ok(&["events", "probed"]).contains("InvalidPodSpec"));

    // An image-less container is refused by the control plane itself, with an event.
    let noimage = c.dir().join("noimage.yaml");
    std::fs::write(
        &noimage,
        "kind: Pod\nmetadata:\n  name: noimage\nspec:\n  containers:\n  - name: c\n",
    )
    .unwrap();
    c.orca_ok(&["apply", "-f", noimage.to_str().unwrap()]);
    assert_eq!(c.pod("noimage")["reason"], "InvalidPodSpec");

    // Malformed input is a clear error, and nothing is created.
    let out = c.orca(&["run", "Bad_Name", "--image", &c.image]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("DNS"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = c.orca(&["run", "ok", "--image", &c.image, "--restart", "Sometimes"]);
    assert!(out.status.success(), "the agent judges restart policies");
    let sometimes = c.wait_phase("ok", "Failed");
    assert!(
        sometimes["message"].as_str().unwrap().contains("Sometimes"),
        "{sometimes}"
    );
    let dup = c.orca(&["run", "ok", "--image", &c.image]);
    assert!(String::from_utf8_lossy(&dup.stderr).contains("already exists"));
    assert!(c.tasks("n1").is_empty(), "no task ran: {:?}", c.tasks("n1"));
}

#[test]
fn crashing_containers_restart_with_back_off_and_pods_wait_for_nodes() {
    let c = TestCluster::start();
    // No node yet: the pod waits, Pending, for one.
    c.orca_ok(&[
        "run",
        "crash",
        "--image",
        &c.image,
        "--restart",
        "OnFailure",
        "--",
        "sh",
        "-c",
        "echo run; exit 1",
    ]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(c.pod("crash")["phase"], "Pending");
    c.orca_ok(&["node", "add", "n1"]);

    let restarted = eventually_blocking("two restarts", DEADLINE, || {
        let pod = c.pod("crash");
        if pod["containerStatuses"][0]["restartCount"].as_i64() >= Some(2) {
            Ok(pod)
        } else {
            Err(pod)
        }
    });
    assert_eq!(
        restarted["phase"], "Running",
        "OnFailure keeps a failing pod Running: {restarted}"
    );
    let previous = c.orca_ok(&["logs", "crash", "--previous"]);
    assert_eq!(previous, "run\n");
    c.orca_ok(&["delete", "pod", "crash", "--grace-period", "0"]);
    assert!(c.containers("n1").is_empty(), "{:?}", c.containers("n1"));
}

#[test]
fn deleting_a_pod_waits_out_its_grace_period() {
    // The control plane's agent calls time out after 2 s here; a stop may take the
    // pod's whole grace period (3 s, and busybox `sleep` as PID 1 ignores SIGTERM).
    let c = TestCluster::start();
    c.orca_ok(&["node", "add", "n1"]);
    let manifest = c.dir().join("stubborn.yaml");
    std::fs::write(
        &manifest,
        format!(
            "kind: Pod\nmetadata:\n  name: stubborn\nspec:\n  terminationGracePeriodSeconds: 3\n  containers:\n  - name: c\n    image: {}\n    command: [sleep, \"300\"]\n",
            c.image
        ),
    )
    .unwrap();
    c.orca_ok(&["apply", "-f", manifest.to_str().unwrap()]);
    c.wait_phase("stubborn", "Running");
    let started = std::time::Instant::now();
    let out = c.orca_ok(&["delete", "pod", "stubborn"]);
    assert!(out.contains("deleted"), "{out}");
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(3),
        "the grace period was honoured"
    );
    assert!(c.containers("n1").is_empty(), "{:?}", c.containers("n1"));
}
