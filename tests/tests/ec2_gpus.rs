//! A GPU pod on the `ec2` provider: the instance type is chosen by GPU model
//! and count, the instance player boots it with that type's GPUs (as moto
//! describes them) simulated, and the pod runs on them.

use orca_tests::cluster::DEADLINE;
use orca_tests::ec2_cluster::Ec2Cluster;
use orca_tests::eventually::eventually_blocking;

#[test]
fn a_gpu_pod_gets_an_instance_of_its_gpu_model_and_runs_on_its_gpu() {
    let e = Ec2Cluster::start_with("", "pending_timeout_ms: 120000\n");
    let manifest = e
        .pod("infer", &[("orca.research/gpu-model", "a10g")], "", "")
        .replace(
            "command: [sleep, '600']\n",
            "command: [sh, -c, 'ls /dev/nvidia*; echo VISIBLE=$NVIDIA_VISIBLE_DEVICES; exec sleep 600']\n    \
             resources:\n      limits: {nvidia.com/gpu: 1}\n",
        );
    e.apply(&manifest);
    let pod = e.wait_phase("infer", "Running");
    let live = e.live_instances();
    assert_eq!(live.len(), 1, "{live:?}");
    assert!(
        live[0].instance_type.starts_with("g5."),
        "an A10G type: {live:?}"
    );
    let uuids = pod["gpuUUIDs"].as_array().cloned().unwrap_or_default();
    assert_eq!(uuids.len(), 1, "{pod}");
    let node_name = pod["node"].as_str().unwrap_or_default().to_owned();
    let node = eventually_blocking("the node's GPU labels", DEADLINE, || {
        let node = e.cluster.node(&node_name);
        if node["labels"]["orca.research/gpu-model"] == "A10G" {
            Ok(node)
        } else {
            Err(node)
        }
    });
    assert_eq!(
        node["labels"]["nvidia.com/gpu.product"], "NVIDIA-A10G",
        "{node}"
    );
    let log = eventually_blocking("the pod's output", DEADLINE, || {
        let log = e.cluster.orca_ok(&["logs", "infer"]);
        if log.contains("VISIBLE=") {
            Ok(log)
        } else {
            Err(log)
        }
    });
    assert!(log.lines().any(|l| l == "/dev/nvidia0"), "{log}");
    assert!(
        log.contains(&format!(
            "VISIBLE={}",
            uuids[0].as_str().unwrap_or_default()
        )),
        "{log}"
    );
}
