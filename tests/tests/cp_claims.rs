//! PersistentVolumeClaims in standalone mode on simulated hosts: a local claim is
//! bound to the host of its first pod, keeps what that pod wrote after the pod is
//! deleted, pins the next pod to that host, and goes (with its directory) only
//! once no pod uses it; a pod naming a claim that does not exist ends
//! Unschedulable saying so.

use orca_tests::cluster::{DEADLINE, TestCluster};
use orca_tests::eventually::eventually_blocking;

fn apply(c: &TestCluster, name: &str, text: &str) {
    let file = c.dir().join(format!("{name}.yaml"));
    std::fs::write(&file, text).unwrap();
    c.orca_ok(&["apply", "-f", file.to_str().unwrap()]);
}

fn claim_pod(name: &str, image: &str, claim: &str, script: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  restartPolicy: Never\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: {image}\n    command: [sh, -c, '{script}']\n    volumeMounts:\n    - {{name: data, mountPath: /data}}\n  volumes:\n  - name: data\n    persistentVolumeClaim: {{claimName: {claim}}}\n"
    )
}

fn claim_json(c: &TestCluster, name: &str) -> serde_json::Value {
    serde_json::from_str(&c.orca_ok(&["get", "pvc", name, "-o", "json"])).expect("JSON")
}

#[test]
fn a_local_claim_keeps_its_data_on_its_host_for_the_next_pod() {
    let c = TestCluster::start_configured(&["--retry-ms=100"], "pending_timeout_ms: 4000\n");
    c.orca_ok(&["node", "add", "one"]);
    c.orca_ok(&["node", "add", "two"]);
    c.wait_node_ready("one");
    c.wait_node_ready("two");

    apply(
        &c,
        "claim",
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: results\nspec:\n  accessModes: [ReadWriteOnce]\n  resources:\n    requests: {storage: 1Gi}\n",
    );
    let listed = c.orca_ok(&["get", "pvc"]);
    assert!(
        listed.contains("results") && listed.contains("Pending") && listed.contains("1Gi"),
        "{listed}"
    );

    apply(
        &c,
        "writer",
        &claim_pod(
            "writer",
            &c.image,
            "results",
            "echo epoch-12 > /data/checkpoint",
        ),
    );
    let writer = c.wait_phase("writer", "Succeeded");
    let host = writer["node"].as_str().expect("node").to_owned();
    let claim = claim_json(&c, "results");
    assert_eq!(claim["phase"], "Bound", "{claim}");
    assert_eq!(claim["nodeName"], host.as_str(), "{claim}");
    let dir = claim["localPath"].as_str().expect("path").to_owned();
    assert!(dir.contains(&host), "the directory is in the host's: {dir}");
    c.orca_ok(&["delete", "pod", "writer"]);
    assert_eq!(
        std::fs::read_to_string(format!("{dir}/checkpoint")).expect("kept on the host"),
        "epoch-12\n"
    );

    // The next pod goes to the claim's host and reads the data back.
    apply(
        &c,
        "reader",
        &claim_pod(
            "reader",
            &c.image,
            "results",
            "cat /data/checkpoint; sleep 600",
        ),
    );
    let reader = c.wait_phase("reader", "Running");
    assert_eq!(reader["node"], host.as_str(), "{reader}");
    let log = eventually_blocking("reader's output", DEADLINE, || {
        let log = c.orca_ok(&["logs", "reader"]);
        if log.contains("epoch-12") {
            Ok(log)
        } else {
            Err(log)
        }
    });
    assert_eq!(log, "epoch-12\n");

    // In use: the claim stays.
    let refused = c.orca(&["delete", "pvc", "results"]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("used by pod reader"), "{stderr}");

    // With its host cordoned, another pod of the claim has nowhere to go.
    c.orca_ok(&["node", "cordon", &host]);
    apply(&c, "late", &claim_pod("late", &c.image, "results", "true"));
    let late = c.wait_phase("late", "Failed");
    assert_eq!(late["reason"], "Unschedulable", "{late}");
    let message = late["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!(
            "persistentvolumeclaim default/results is on host {host}"
        )),
        "{late}"
    );

    c.orca_ok(&["delete", "pod", "reader"]);
    c.orca_ok(&["delete", "pvc", "results"]);
    assert!(
        !std::path::Path::new(&dir).exists(),
        "the directory went with the claim"
    );
    assert!(!c.orca_ok(&["get", "pvc"]).contains("results"));
}

#[test]
fn a_pod_naming_a_missing_claim_fails_unschedulable_saying_so() {
    let c = TestCluster::start_configured(&["--retry-ms=100"], "pending_timeout_ms: 2000\n");
    c.orca_ok(&["node", "add", "one"]);
    c.wait_node_ready("one");
    apply(&c, "lost", &claim_pod("lost", &c.image, "nothing", "true"));
    let failed = c.wait_phase("lost", "Failed");
    assert_eq!(failed["reason"], "Unschedulable", "{failed}");
    assert!(
        failed["message"]
            .as_str()
            .unwrap_or_default()
            .contains("persistentvolumeclaim default/nothing not found"),
        "{failed}"
    );

    // Claims this provider cannot give are refused naming the field.
    let file = c.dir().join("shared.yaml");
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: shared\nspec:\n  accessModes: [ReadWriteMany]\n",
    )
    .unwrap();
    let out = c.orca(&["apply", "-f", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "InvalidArgument");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("spec.accessModes"), "{stderr}");
}
