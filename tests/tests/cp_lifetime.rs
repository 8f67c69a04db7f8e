//! `orca.research/max-lifetime` on simulated hosts: a running pod is stopped at
//! its deadline and ends `Failed (DeadlineExceeded)` with its container gone; a
//! pod that never gets a node ends so too when its lifetime passes; a malformed
//! value fails the pod at creation naming the annotation.

use orca_tests::cluster::TestCluster;

fn apply(c: &TestCluster, name: &str, lifetime: &str, extra_spec: &str) {
    let text = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  annotations:\n    orca.research/max-lifetime: \"{lifetime}\"\nspec:\n  restartPolicy: Always\n  terminationGracePeriodSeconds: 1\n{extra_spec}  containers:\n  - name: c\n    image: {}\n    command: [sleep, '600']\n",
        c.image
    );
    let file = c.dir().join(format!("{name}.yaml"));
    std::fs::write(&file, text).unwrap();
    c.orca_ok(&["apply", "-f", file.to_str().unwrap()]);
}

#[test]
fn a_pod_is_stopped_at_its_max_lifetime() {
    let c = TestCluster::start_configured(&["--retry-ms=100"], "pending_timeout_ms: 60000\n");
    c.orca_ok(&["node", "add", "one"]);
    c.wait_node_ready("one");

    apply(&c, "short", "3s", "");
    c.wait_phase("short", "Running");
    let failed = c.wait_phase("short", "Failed");
    assert_eq!(failed["reason"], "DeadlineExceeded", "{failed}");
    c.wait_nothing_running("one", "short's container to be gone");

    // No node it may go to: it ends when its lifetime does, not at the pending timeout.
    apply(
        &c,
        "stranded",
        "2s",
        "  nodeSelector: {nowhere: \"true\"}\n",
    );
    let failed = c.wait_phase("stranded", "Failed");
    assert_eq!(failed["reason"], "DeadlineExceeded", "{failed}");
    assert!(
        failed["message"]
            .as_str()
            .unwrap_or_default()
            .contains("2s passed before it ran"),
        "{failed}"
    );

    apply(&c, "vague", "soon", "");
    let failed = c.wait_phase("vague", "Failed");
    assert_eq!(failed["reason"], "InvalidAnnotation", "{failed}");
    assert!(
        failed["message"]
            .as_str()
            .unwrap_or_default()
            .contains("orca.research/max-lifetime"),
        "{failed}"
    );
}
