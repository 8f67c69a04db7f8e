//! Failure detection and recovery with real simulated hosts: a node whose
//! agent dies goes Suspect → NotReady → Lost, is fenced, and its pods run again
//! elsewhere (or fail NodeLost); a partitioned node that cannot be fenced keeps
//! its pods until the fence or the heal, and no pod runs twice.

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

/// Finding 9 of the hardening review: a partitioned host whose fence failed
/// kept its pods running while their replacements started elsewhere. Now the
/// pods of an unfenceable Lost node wait for the fence (or the heal) and run on
/// where they are, and a pod that opted in to moving at once
/// (`orca.research/on-node-lost: replace`) is stopped by its cut-off agent and
/// starts elsewhere only after its old copy is gone: at no moment do two
/// copies run.
#[test]
fn an_unfenceable_partitioned_node_runs_no_pod_twice() {
    let c = TestCluster::start();
    let (svc, job) = two_hosts_with_pods_on_a(&c);
    c.orca_ok(&["node", "cordon", "b"]);
    let eager = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: eager\n  annotations: {{orca.research/on-node-lost: replace}}\nspec:\n  containers:\n  - name: c\n    image: {}\n    command: [sleep, '3600']\n",
        c.image
    );
    let file = c.dir().join("eager.yaml");
    std::fs::write(&file, eager).unwrap();
    c.orca_ok(&["apply", "-f", file.to_str().unwrap()]);
    let eager = c.wait_phase("eager", "Running");
    assert_eq!(eager["node"], "a");
    c.orca_ok(&["node", "uncordon", "b"]);
    let stale = |p: &serde_json::Value| c.container_pid("a", p).expect("a container on a");
    let (stale_svc, stale_job, stale_eager) = (stale(&svc), stale(&job), stale(&eager));

    c.orca_ok(&["node", "fault", "a", "--partition"]);
    // Until the opted-in pod runs on b: never while its old copy still runs.
    let moved = eventually_blocking("eager to run on b", DEADLINE, || {
        let now = c.pod("eager");
        let running_on_b = now["node"] == "b" && now["phase"] == "Running";
        assert!(
            !(running_on_b && process_running(stale_eager)),
            "eager runs on b while its old copy still runs on a"
        );
        if running_on_b { Ok(now) } else { Err(now) }
    });
    assert_ne!(moved["uid"], eager["uid"], "a new incarnation");
    assert_eq!(c.node("a")["state"], "Lost");
    assert!(
        node_events(&c, "a").iter().any(|e| e == "FenceFailed"),
        "{:?}",
        node_events(&c, "a")
    );
    // The others wait for the fence and run on where they are: one copy each.
    for (name, before, pid) in [("svc", &svc, stale_svc), ("job", &job, stale_job)] {
        let now = c.pod(name);
        assert_eq!(now["node"], "a", "{name} waits for the fence: {now}");
        assert_eq!(now["uid"], before["uid"], "{name} not replaced: {now}");
        assert_eq!(now["reason"], "NodeLost", "{now}");
        assert!(process_running(pid), "{name} runs on through the partition");
    }
    assert!(
        c.orca_ok(&["events", "svc"]).contains("FenceWaiting"),
        "{}",
        c.orca_ok(&["events", "svc"])
    );

    // Healed, the fence is retried and now goes through (the pods then move),
    // or the node's heartbeats return first (the pods simply continue): either
    // way each pod has exactly one copy.
    c.orca_ok(&["node", "fault", "a", "--heal"]);
    for (name, before, pid) in [("svc", &svc, stale_svc), ("job", &job, stale_job)] {
        // Until the record and the host agree: the old copy runs exactly while
        // it is still the pod; never beside a new incarnation.
        let now = eventually_blocking(&format!("{name} to settle"), DEADLINE, || {
            let now = c.pod(name);
            let same = now["uid"] == before["uid"];
            let old_runs = process_running(pid);
            assert!(
                !(old_runs && !same && now["phase"] == "Running"),
                "{name} runs twice: {now}"
            );
            let continues = same && now["phase"] == "Running" && now["reason"] != "NodeLost";
            let ended = now["phase"] == "Failed" || (!same && now["phase"] == "Running");
            if (continues && old_runs) || (ended && !old_runs) {
                Ok(now)
            } else {
                Err(now)
            }
        });
        if name == "job" {
            assert_eq!(now["uid"], before["uid"], "Never is not recreated: {now}");
        }
        if now["phase"] == "Failed" {
            assert_eq!(now["reason"], "NodeLost", "{now}");
        }
    }
    let eager_now = c.pod("eager");
    assert_eq!(
        (eager_now["node"].as_str(), eager_now["uid"].as_str()),
        (Some("b"), moved["uid"].as_str())
    );
    assert!(!process_running(stale_eager));
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
