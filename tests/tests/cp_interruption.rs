//! Spot interruption notices on simulated hosts, end to end: `orca node fault
//! --spot-notice` puts `spot/instance-action` in the host's metadata service
//! (IMDSv2, as EC2 serves it); the host's agent reads it, writes
//! `/run/orca/notice` into every container, waits for the checkpoint the
//! container confirms, and stops the pod; the control plane cordons the node,
//! moves the pod to the other host, and starts the replacement only with the
//! checkpoint's location (`orca.research/resume-from`, `ORCA_RESUME_FROM`).
//! A restartPolicy Never pod ends Failed with reason SpotInterruption instead.
//! `orca ledger` shows both instances the pod ran on and the interruption.

use orca_tests::cluster::{DEADLINE, TestCluster};
use orca_tests::eventually::eventually_blocking;

/// A trainer: says how it started, confirms a checkpoint when a notice comes,
/// records SIGTERM; every line goes to the shared hostPath file.
const TRAINER: &str = r#"
log=/out/trainer.log
from="${ORCA_RESUME_FROM:-fresh}"
echo "started $from" >> $log
trap 'echo "TERM $from" >> $log; exit 0' TERM
while true; do
  if [ -f /run/orca/notice ] && [ ! -f /run/orca/checkpoint-done ]; then
    echo "notice $(cat /run/orca/notice)" >> $log
    echo "s3://bucket/run-7/step-1200" > /run/orca/checkpoint-done
  fi
  sleep 1 & wait $!
done
"#;

fn apply(c: &TestCluster, name: &str, yaml: String) {
    let file = c.dir().join(format!("{name}.yaml"));
    std::fs::write(&file, yaml).unwrap();
    c.orca_ok(&["apply", "-f", file.to_str().unwrap()]);
}

fn log_lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_spot_notice_moves_the_pod_with_its_checkpoint() {
    // The trainer writes to a hostPath: its namespace's Pod Security level
    // must allow that (the cluster default, baseline, does not).
    let c = TestCluster::start_configured(
        &[
            "--retry-ms=100",
            "--notice-poll-ms=200",
            "--notice-pause-ms=300",
        ],
        "pod_security:\n  enforce: privileged\n",
    );
    let out = c.dir().join("out");
    std::fs::create_dir_all(&out).unwrap();
    c.orca_ok(&["node", "add", "one"]);
    c.wait_node_ready("one");

    let script = TRAINER.replace('\n', "\n      ");
    apply(
        &c,
        "trainer",
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: trainer\n  annotations:\n    orca.research/checkpoint-wait: 60s\nspec:\n  restartPolicy: Always\n  terminationGracePeriodSeconds: 5\n  volumes:\n  - name: out\n    hostPath: {{path: {}}}\n  containers:\n  - name: c\n    image: {}\n    volumeMounts: [{{name: out, mountPath: /out}}]\n    command: [sh, -c]\n    args:\n    - |\n      {script}\n",
            out.display(),
            c.image
        ),
    );
    apply(
        &c,
        "oneshot",
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: oneshot\nspec:\n  restartPolicy: Never\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: {}\n    command: [sleep, '3600']\n",
            c.image
        ),
    );
    let first = c.wait_phase("trainer", "Running");
    c.wait_phase("oneshot", "Running");
    assert_eq!(first["node"], "one");
    c.orca_ok(&["node", "add", "two"]);
    c.wait_node_ready("two");

    c.orca_ok(&["node", "fault", "one", "--spot-notice", "--for", "40s"]);

    // The replacement runs on the other host, started from the checkpoint.
    let moved = eventually_blocking("the trainer to run again on two", DEADLINE, || {
        let p = c.pod("trainer");
        if p["phase"] == "Running" && p["node"] == "two" {
            Ok(p)
        } else {
            Err(p)
        }
    });
    assert_ne!(moved["uid"], first["uid"], "a new incarnation: {moved}");
    assert_eq!(
        moved["annotations"]["orca.research/resume-from"], "s3://bucket/run-7/step-1200",
        "{moved}"
    );
    let log = out.join("trainer.log");
    let lines = eventually_blocking("the old incarnation's SIGTERM", DEADLINE, || {
        let lines = log_lines(&log);
        if lines.iter().any(|l| l == "TERM fresh") {
            Ok(lines)
        } else {
            Err(lines)
        }
    });
    let at = |prefix: &str| {
        lines
            .iter()
            .position(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line {prefix:?} in {lines:?}"))
    };
    eprintln!("trainer log: {lines:#?}");
    let notice: serde_json::Value =
        serde_json::from_str(lines[at("notice ")].trim_start_matches("notice ")).unwrap();
    assert_eq!(notice["kind"], "SpotInterruption", "{notice}");
    assert_eq!(notice["action"], "terminate", "{notice}");
    assert!(
        notice["deadline"]
            .as_str()
            .is_some_and(|d| d.ends_with('Z')),
        "{notice}"
    );
    assert_eq!(at("started fresh"), 0, "{lines:?}");
    assert!(
        at("notice ") < at("started s3://bucket/run-7/step-1200"),
        "the replacement starts only after the checkpoint: {lines:?}"
    );

    // The Never pod is not moved: it ends with the interruption as its reason.
    let failed = c.wait_phase("oneshot", "Failed");
    assert_eq!(failed["reason"], "SpotInterruption", "{failed}");
    assert_eq!(failed["node"], "one", "{failed}");

    // The node is cordoned and says why; the events tell the story.
    let node = c.node("one");
    assert_eq!(node["unschedulable"], true, "{node}");
    assert!(
        node["message"]
            .as_str()
            .is_some_and(|m| m.contains("spot interruption (terminate)")),
        "{node}"
    );
    let events = c.orca_ok(&["describe", "pod", "trainer"]);
    for reason in ["SpotInterruption", "Recreated", "CheckpointConfirmed"] {
        assert!(events.contains(reason), "no {reason} event:\n{events}");
    }
    // The ledger shows both instances, the interruption and its checkpoint.
    let ledger: serde_json::Value =
        serde_json::from_str(&c.orca_ok(&["ledger", "trainer", "-o", "json"])).unwrap();
    let placements = ledger["placements"].as_array().expect("placements");
    assert_eq!(placements.len(), 2, "{ledger:#}");
    assert_eq!(placements[0]["uid"], first["uid"], "{ledger:#}");
    assert_eq!(placements[0]["instanceId"], "local-one", "{ledger:#}");
    assert_eq!(placements[0]["endReason"], "SpotInterruption", "{ledger:#}");
    assert!(placements[0]["endedAt"].is_string(), "{ledger:#}");
    assert_eq!(placements[1]["uid"], moved["uid"], "{ledger:#}");
    assert_eq!(placements[1]["instanceId"], "local-two", "{ledger:#}");
    assert!(
        placements[1]["endedAt"].is_null(),
        "still running: {ledger:#}"
    );
    let interruption = &ledger["interruptions"][0];
    assert_eq!(interruption["kind"], "spot_interruption", "{ledger:#}");
    assert_eq!(interruption["node"], "one", "{ledger:#}");
    assert_eq!(
        interruption["checkpoint"], "s3://bucket/run-7/step-1200",
        "{ledger:#}"
    );
    let table = c.orca_ok(&["ledger"]);
    assert!(
        table.contains("local-one") && table.contains("SpotInterruption"),
        "{table}"
    );

    // The old incarnation is removed from its host once it has stopped.
    c.wait_nothing_running("one", "the old trainer's container to be gone from one");
}
