//! GPU placement through the control plane, on simulated hosts whose agents
//! replay the bundled GPU recording and apply the local provider's CDI spec
//! (device nodes aliasing /dev/null) to real containers.

use orca_tests::cluster::{DEADLINE, TestCluster};
use orca_tests::eventually::eventually_blocking;

fn gpu_pod(name: &str, image: &str, gpus: u32, annotations: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n{annotations}spec:\n  restartPolicy: Never\n  containers:\n  - name: c\n    image: {image}\n    command: [sh, -c, 'ls /dev/nvidia*; echo VISIBLE=$NVIDIA_VISIBLE_DEVICES; exec sleep 600']\n    resources:\n      limits: {{nvidia.com/gpu: {gpus}}}\n"
    )
}

fn apply(c: &TestCluster, name: &str, text: &str) {
    let file = c.dir().join(format!("{name}.yaml"));
    std::fs::write(&file, text).unwrap();
    c.orca_ok(&["apply", "-f", file.to_str().unwrap()]);
}

fn gpus_of(pod: &serde_json::Value) -> Vec<String> {
    pod["gpuUUIDs"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|u| u.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn gpu_pods_land_where_enough_gpus_are_free_and_of_the_model_asked() {
    let c = TestCluster::start_configured(
        &["--retry-ms=100", "--gpu-sample-ms=100"],
        "pending_timeout_ms: 8000\n",
    );
    c.orca_ok(&["node", "add", "one", "--gpus", "1"]);
    c.orca_ok(&["node", "add", "two", "--gpus", "2"]);
    for (node, gpus) in [("one", 1), ("two", 2)] {
        eventually_blocking(&format!("{node} to offer {gpus} GPUs"), DEADLINE, || {
            let n = c.node(node);
            if n["allocatable"]["gpus"] == gpus {
                Ok(())
            } else {
                Err(n)
            }
        });
        let labels = &c.node(node)["labels"];
        assert_eq!(labels["orca.research/gpu-model"], "H100", "{labels}");
        assert_eq!(labels["nvidia.com/gpu.count"], gpus.to_string(), "{labels}");
    }

    // Two GPUs fit only on `two`; the container sees exactly its two device nodes.
    apply(&c, "train", &gpu_pod("train", &c.image, 2, ""));
    let train = c.wait_phase("train", "Running");
    assert_eq!(train["node"], "two", "{train}");
    let uuids = gpus_of(&train);
    assert_eq!(uuids.len(), 2, "{train}");
    let log = eventually_blocking("train's output", DEADLINE, || {
        let log = c.orca_ok(&["logs", "train"]);
        if log.contains("VISIBLE=") {
            Ok(log)
        } else {
            Err(log)
        }
    });
    assert!(
        log.contains(&format!("VISIBLE={}", uuids.join(","))),
        "{log}"
    );
    for dev in ["/dev/nvidia0", "/dev/nvidia1", "/dev/nvidiactl"] {
        assert!(log.lines().any(|l| l == dev), "{dev} in {log}");
    }
    let described = c.orca_ok(&["describe", "pod", "train"]);
    assert!(
        described.contains(&format!("GPUs:         {}", uuids.join(","))),
        "{described}"
    );

    // One GPU fits on `one` only (two's are held).
    apply(&c, "small", &gpu_pod("small", &c.image, 1, ""));
    assert_eq!(c.wait_phase("small", "Running")["node"], "one");

    // Another two-GPU pod waits for train's GPUs, then gets them.
    apply(&c, "next", &gpu_pod("next", &c.image, 2, ""));
    assert_eq!(c.pod("next")["node"], "", "no node has two free GPUs");
    c.orca_ok(&["delete", "pod", "train", "--grace-period", "0"]);
    let next = c.wait_phase("next", "Running");
    assert_eq!(next["node"], "two");
    assert_eq!(gpus_of(&next), uuids, "train's GPUs, freed");

    // `orca top` shows every GPU and the pods holding them.
    let top = c.orca_ok(&["top", "nodes"]);
    assert_eq!(top.matches("NVIDIA H100 80GB HBM3").count(), 3, "{top}");
    assert!(
        top.contains("default/next") && top.contains("default/small"),
        "{top}"
    );
    let top = c.orca_ok(&["top", "pods"]);
    let row = top
        .lines()
        .find(|l| l.contains(" next "))
        .unwrap_or_default();
    assert!(row.split_whitespace().nth(3) == Some("2"), "{top}");
    let json: serde_json::Value =
        serde_json::from_str(&c.orca_ok(&["top", "nodes", "two", "-o", "json"])).unwrap();
    assert_eq!(
        json["nodes"][0]["gpus"].as_array().map(Vec::len),
        Some(2),
        "{json}"
    );
    assert_eq!(json["nodes"][0]["source"], "fake");

    // A model no node has: Unschedulable, naming what each node has.
    c.orca_ok(&["delete", "pod", "small", "--grace-period", "0"]);
    let a100 = "  annotations: {orca.research/gpu-model: A100}\n";
    apply(&c, "a100", &gpu_pod("a100", &c.image, 1, a100));
    let failed = c.wait_phase("a100", "Failed");
    assert_eq!(failed["reason"], "Unschedulable", "{failed}");
    let message = failed["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("one: GPU model H100, A100 asked"),
        "{message}"
    );
    assert!(message.contains("two: gpus: 0 free, 1 asked"), "{message}");
    // The model it has, named in any case: placed.
    let h100 = "  annotations: {orca.research/gpu-model: h100}\n";
    apply(&c, "h100", &gpu_pod("h100", &c.image, 1, h100));
    assert_eq!(c.wait_phase("h100", "Running")["node"], "one");
}
