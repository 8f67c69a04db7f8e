//! Failure detection and recovery with real simulated hosts: a node whose
//! agent dies goes Suspect → NotReady → Lost, is fenced, and its pods run again
//! elsewhere (or fail NodeLost); a partitioned node that cannot be fenced keeps
//! its stale container until the heal, which stops it, so the pod never runs
//! twice once the heal is processed.

use orca_tests::cluster::{DEADLINE, TestCluster};
use orca_tests::env::process_running;
use orca_tests::eventually::eventually_blocking;

/// Reasons of a node's events, in order.
fn node_events(c: &TestCluster, node: &str) -> Vec<String> {
    c.orca_ok(&["events", node])
        .lines()
        .skip(1)
        .filter(|l| l.contains(&format!("node/{node}")))
        .filter_map(|l| l.split_whitespace().nth(2).map(str::to_owned))
        .collect()
}

/// Two hosts and a pod of each restart policy on `a`.
fn two_hosts_with_pods_on_a(c: &TestCluster) -> (serde_json::Value, serde_json::Value) {
    let mut pods = c.pods_on_first_of_two("a", "b", &[("svc", "Always"), ("job", "Never")]);
    let job = pods.pop().expect("job");
    (pods.pop().expect("svc"), job)
}

#[test]
fn a_dead_agents_node_goes_lost_is_fenced_and_its_pods_move() {
    let c = TestCluster::start();
    let (svc, _) = two_hosts_with_pods_on_a(&c);
    let old_pid = c.container_pid("a", &svc).expect("svc's container");
    assert!(c.namespaced, "hosts need network namespaces here");

    c.orca_ok(&["node", "fault", "a", "--kill-agent"]);
    let mut states = Vec::new();
    eventually_blocking("a to be Lost", DEADLINE, || {
        let state = c.node("a")["state"].as_str().unwrap_or_default().to_owned();
        if states.last() != Some(&state) {
            states.push(state.clone());
        }
        if state == "Lost" {
            Ok(())
        } else {
            Err(states.clone())
        }
    });
    let events = eventually_blocking("a to be fenced", DEADLINE, || {
        let events = node_events(&c, "a");
        if events.iter().any(|e| e == "Fenced") {
            Ok(events)
        } else {
            Err(events)
        }
    });
    let order: Vec<&str> = events
        .iter()
        .map(String::as_str)
        .filter(|r| ["NodeSuspect", "NodeNotReady", "NodeLost", "Fenced"].contains(r))
        .collect();
    assert_eq!(
        order,
        ["NodeSuspect", "NodeNotReady", "NodeLost", "Fenced"],
        "events: {events:?}; polled states: {states:?}"
    );

    let moved = c.wait_phase("svc", "Running");
    assert_eq!(moved["node"], "b", "{moved}");
    assert_ne!(moved["uid"], svc["uid"]);
    let job = c.wait_phase("job", "Failed");
    assert_eq!(job["reason"], "NodeLost", "restartPolicy Never: {job}");
    assert!(
        !process_running(old_pid),
        "the fenced host's container is gone"
    );
    let describe = c.orca_ok(&["describe", "pod", "svc"]);
    assert!(
        describe.contains("Recreated") && describe.contains("Recreations:  1"),
        "{describe}"
    );
}

#[test]
fn an_unfenceable_partitioned_node_keeps_its_stale_pod_until_the_heal_stops_it() {
    let c = TestCluster::start();
    let (svc, job) = two_hosts_with_pods_on_a(&c);
    let stale = c.container_pid("a", &svc).expect("svc's container");
    let stale_job = c.container_pid("a", &job).expect("job's container");

    c.orca_ok(&["node", "fault", "a", "--partition"]);
    eventually_blocking("a to be Lost", DEADLINE, || {
        let n = c.node("a");
        if n["state"] == "Lost" { Ok(()) } else { Err(n) }
    });
    let moved = c.wait_phase("svc", "Running");
    assert_eq!(moved["node"], "b");
    assert!(
        node_events(&c, "a").iter().any(|e| e == "FenceFailed"),
        "{:?}",
        node_events(&c, "a")
    );
    // During the partition the stale incarnation still runs (nothing could stop it).
    assert!(
        process_running(stale),
        "the stale container runs during the partition"
    );
    assert!(process_running(stale_job));
    assert_eq!(c.pod("job")["reason"], "NodeLost");

    c.orca_ok(&["node", "fault", "a", "--heal"]);
    eventually_blocking("a to be Ready again", DEADLINE, || {
        let n = c.node("a");
        if n["state"] == "Ready" {
            Ok(())
        } else {
            Err(n)
        }
    });
    eventually_blocking("the stale containers to be stopped", DEADLINE, || {
        if process_running(stale) || process_running(stale_job) {
            Err((process_running(stale), process_running(stale_job)))
        } else {
            Ok(())
        }
    });
    // Once the heal is processed the pod runs exactly once: on b, as recorded.
    let now = c.pod("svc");
    assert_eq!(
        (now["node"].as_str(), now["phase"].as_str()),
        (Some("b"), Some("Running"))
    );
    assert_eq!(now["uid"], moved["uid"]);
    let running_on_a: Vec<_> = c
        .tasks("a")
        .into_iter()
        .filter(|(_, s)| s == "RUNNING")
        .collect();
    assert!(running_on_a.is_empty(), "{running_on_a:?}");
    assert_eq!(
        c.pod("job")["reason"],
        "NodeLost",
        "a verdict is not undone by the heal"
    );
}

#[test]
fn a_partition_for_a_while_heals_itself_and_the_node_comes_back_before_it_is_lost() {
    let c = TestCluster::start_configured(&["--retry-ms=100"], "lost_after_ms: 600000\n");
    c.orca_ok(&["node", "add", "a"]);
    c.orca_ok(&["node", "fault", "a", "--partition", "--for", "3s"]);
    eventually_blocking("a to fall silent (Suspect)", DEADLINE, || {
        let n = c.node("a");
        if n["state"] == "Suspect" || n["state"] == "NotReady" {
            Ok(())
        } else {
            Err(n)
        }
    });
    eventually_blocking(
        "the partition to heal by itself and a to be Ready",
        DEADLINE,
        || {
            let n = c.node("a");
            if n["state"] == "Ready" {
                Ok(())
            } else {
                Err(n)
            }
        },
    );
    let events = node_events(&c, "a");
    let faults: Vec<&str> = c
        .orca_ok(&["events", "a"])
        .lines()
        .filter(|l| l.contains("FaultInjected"))
        .map(|l| {
            if l.contains("Heal") {
                "Heal"
            } else {
                "Partition"
            }
        })
        .collect::<Vec<_>>();
    assert_eq!(faults, ["Partition", "Heal"], "{events:?}");
    c.orca_ok(&["run", "after", "--image", &c.image, "--", "true"]);
    c.wait_phase("after", "Succeeded");
}

#[test]
fn after_a_restart_a_silent_node_gets_a_full_grace_period_before_it_is_lost() {
    let mut c = TestCluster::start();
    c.orca_ok(&["node", "add", "a"]);
    c.orca_ok(&["node", "fault", "a", "--kill-agent"]);
    c.kill_control_plane();
    // Silent for longer than lost_after (4 s) while no control plane watched.
    let killed = std::time::Instant::now();
    eventually_blocking(
        "lost_after to pass while the control plane is down",
        DEADLINE,
        || {
            if killed.elapsed() > std::time::Duration::from_secs(5) {
                Ok(())
            } else {
                Err(())
            }
        },
    );
    c.start_control_plane();
    let first = c.node("a");
    assert_ne!(
        first["state"], "Lost",
        "declared Lost without a grace period: {first}"
    );
    eventually_blocking(
        "a to be Lost once the grace period has passed",
        DEADLINE,
        || {
            let n = c.node("a");
            if n["state"] == "Lost" { Ok(()) } else { Err(n) }
        },
    );
}
