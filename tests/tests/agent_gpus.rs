//! GPUs on a real agent and containerd: the fake source replays a recording
//! file the test rewrites while the agent runs (real container PIDs, an XID
//! error), and a test CDI spec whose device nodes alias `/dev/null` and
//! `/dev/zero` is applied to real containers.

use orca_proto::agent::v1 as pb;
use orca_proto::types::v1::{self as types, PodPhase};
use orca_tests::agent::TestAgent;
use orca_tests::cluster::DEADLINE;
use orca_tests::eventually::eventually;
use serde_json::{Value, json};

const GPU0: &str = "GPU-00000000-1111-2222-3333-444444444444";
const GPU1: &str = "GPU-55555555-6666-7777-8888-999999999999";

/// One frame of two H100s; `pid` (if any) runs on GPU 0; `xid` (if any) hits GPU 0.
fn frame(pid: Option<u32>, xid: Option<u64>) -> String {
    let gpu = |index: u32, uuid: &str| {
        json!({
            "index": index, "uuid": uuid, "model": "NVIDIA H100 80GB HBM3",
            "pci_bus_id": format!("00000000:{:02X}:00.0", 0x18 + index),
            "gpu_util_percent": 40 + index, "memory_used_bytes": 1u64 << 30,
            "memory_total_bytes": 85520809984u64, "power_mw": 300000, "power_limit_mw": 700000,
            "processes": if index == 0 { pid.map(|p| json!([{"pid": p, "used_memory_bytes": 1u64 << 30}])).unwrap_or(json!([])) } else { json!([]) },
        })
    };
    let xids = xid.map_or(json!([]), |x| json!([{ "index": 0, "xid": x }]));
    json!({ "driver_version": "550.54.15", "gpus": [gpu(0, GPU0), gpu(1, GPU1)], "xids": xids })
        .to_string()
}

fn gpu_pod(gpus: &str) -> Value {
    json!({
        "restartPolicy": "Never",
        "containers": [{
            "name": "main",
            "image": "IMAGE",
            "command": ["sh", "-c", "ls -l /dev/nvidia*; cat /usr/local/nvidia/version; \
                echo VISIBLE=$NVIDIA_VISIBLE_DEVICES GLOBAL=$TEST_CDI_GLOBAL G1=$TEST_GPU1; exec sleep 600"],
            "resources": { "limits": { "nvidia.com/gpu": gpus } },
        }],
    })
}

async fn telemetry(agent: &TestAgent) -> pb::TelemetryResponse {
    agent
        .client()
        .await
        .telemetry(pb::TelemetryRequest {})
        .await
        .expect("Telemetry")
        .into_inner()
}

async fn run(agent: &TestAgent, name: &str, gpus: &str) -> String {
    let spec = gpu_pod(gpus).to_string().replace("IMAGE", &agent.image);
    agent.run(name, serde_json::from_str(&spec).unwrap()).await
}

async fn log_with(agent: &TestAgent, uid: &str, needle: &str) -> String {
    eventually(&format!("{needle} in the log"), DEADLINE, || async {
        let log = agent.logs(uid, "main", false).await;
        if log.contains(needle) {
            Ok(log)
        } else {
            Err(log)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn gpus_are_allocated_injected_attributed_and_withdrawn_when_unhealthy() {
    let dir = tempfile::tempdir().unwrap();
    let replay = dir.path().join("gpus.jsonl");
    std::fs::write(&replay, frame(None, None)).unwrap();
    let driver = dir.path().join("driver");
    std::fs::create_dir(&driver).unwrap();
    std::fs::write(driver.join("version"), "fake-driver-550\n").unwrap();
    let cdi = dir.path().join("cdi");
    std::fs::create_dir(&cdi).unwrap();
    // GPU 0 is named by index, GPU 1 by UUID, as `nvidia-ctk cdi generate` names both.
    std::fs::write(
        cdi.join("nvidia.yaml"),
        format!(
            "cdiVersion: 0.6.0\nkind: nvidia.com/gpu\ncontainerEdits:\n  env: [TEST_CDI_GLOBAL=yes]\n  \
             deviceNodes: [{{path: /dev/nvidiactl, hostPath: /dev/null}}]\n  \
             mounts: [{{hostPath: {}, containerPath: /usr/local/nvidia, options: [ro, nosuid, nodev, bind]}}]\n\
             devices:\n- name: \"0\"\n  containerEdits:\n    deviceNodes: [{{path: /dev/nvidia0, hostPath: /dev/null}}]\n\
             - name: {GPU1}\n  containerEdits:\n    env: [TEST_GPU1=yes]\n    deviceNodes: [{{path: /dev/nvidia1, hostPath: /dev/zero}}]\n",
            driver.display()
        ),
    )
    .unwrap();
    let agent = TestAgent::start_with(&[
        &format!("--gpu-replay={}", replay.display()),
        &format!("--cdi-dir={}", cdi.display()),
        "--gpu-sample-ms=50",
        "--gpu-wait-ms=1500",
    ]);
    let t = telemetry(&agent).await;
    assert_eq!(
        (t.gpu_source.as_str(), t.driver_version.as_str()),
        ("fake", "550.54.15")
    );
    assert_eq!(t.gpus.len(), 2, "{t:?}");
    assert!(t.gpus.iter().all(|g| g.healthy));

    // Two one-GPU pods get one GPU each, lowest index first, through CDI.
    let a = run(&agent, "a", "1").await;
    agent.wait_phase(&a, PodPhase::Running).await;
    let log = log_with(&agent, &a, "VISIBLE=").await;
    assert!(
        log.contains(&format!("VISIBLE={GPU0} GLOBAL=yes G1=")),
        "{log}"
    );
    assert!(
        log.contains("fake-driver-550"),
        "the CDI mount is there: {log}"
    );
    let dev0 = log
        .lines()
        .find(|l| l.ends_with("/dev/nvidia0"))
        .unwrap_or_default();
    assert!(
        dev0.starts_with('c') && dev0.contains("1,   3"),
        "/dev/null's numbers: {log}"
    );
    assert!(log.lines().any(|l| l.ends_with("/dev/nvidiactl")), "{log}");
    assert!(!log.contains("/dev/nvidia1"), "only its own GPU: {log}");
    let b = run(&agent, "b", "1").await;
    agent.wait_phase(&b, PodPhase::Running).await;
    let log = log_with(&agent, &b, "VISIBLE=").await;
    assert!(
        log.contains(&format!("VISIBLE={GPU1} GLOBAL=yes G1=yes")),
        "{log}"
    );
    let dev1 = log
        .lines()
        .find(|l| l.ends_with("/dev/nvidia1"))
        .unwrap_or_default();
    assert!(dev1.contains("1,   5"), "/dev/zero's numbers: {log}");
    assert!(!log.contains("/dev/nvidia0"), "{log}");
    assert_eq!(agent.status(&a).await.gpu_uuids, [GPU0]);
    assert_eq!(agent.status(&b).await.gpu_uuids, [GPU1]);

    // No third GPU: the pod fails with the reason after the wait, never Pending forever.
    let c = run(&agent, "c", "1").await;
    let failed = agent.wait_phase(&c, PodPhase::Failed).await;
    assert_eq!(failed.reason, "GPUUnavailable", "{failed:?}");
    assert!(
        failed
            .message
            .contains("1 GPU(s) asked, 0 healthy and free"),
        "{failed:?}"
    );
    // A malformed amount is refused at once.
    let bad = run(&agent, "bad", "500m").await;
    let failed = agent.wait_phase(&bad, PodPhase::Failed).await;
    assert_eq!(failed.reason, "InvalidPodSpec", "{failed:?}");
    assert!(failed.message.contains("whole number"), "{failed:?}");

    // The process NVML reports on GPU 0 is a's container's, found by its cgroup.
    let status = agent.status(&a).await;
    let id = TestAgent::container_id(&status, "main");
    let tasks = agent.ctr(&["tasks", "ls"]);
    let pid: u32 = tasks
        .lines()
        .find(|l| l.starts_with(&id))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or_else(|| panic!("task {id} in {tasks}"));
    std::fs::write(&replay, frame(Some(pid), None)).unwrap();
    let t = eventually("the process attributed to pod a", DEADLINE, || async {
        let t = telemetry(&agent).await;
        let found = t.gpus[0].processes.iter().any(|p| {
            p.pid == pid && p.container == "main" && p.pod.as_ref().is_some_and(|r| r.name == "a")
        });
        if found { Ok(t) } else { Err(t) }
    })
    .await;
    assert_eq!(t.gpus[0].allocated_to, "default/a");
    assert_eq!(t.gpus[1].allocated_to, "default/b");

    // An XID 79 takes GPU 0 out: once a and b are gone, a new pod gets GPU 1 only.
    std::fs::write(&replay, frame(None, Some(79))).unwrap();
    let t = eventually("GPU 0 unhealthy", DEADLINE, || async {
        let t = telemetry(&agent).await;
        if !t.gpus[0].healthy { Ok(t) } else { Err(t) }
    })
    .await;
    assert_eq!(
        t.gpus[0].health_reason,
        "XID 79: GPU has fallen off the bus"
    );
    assert_eq!(t.gpus[0].last_xid, 79);
    assert!(t.gpus[1].healthy);
    agent.stop(&a, 0).await;
    agent.stop(&b, 0).await;
    let d = run(&agent, "d", "1").await;
    agent.wait_phase(&d, PodPhase::Running).await;
    assert_eq!(agent.status(&d).await.gpu_uuids, [GPU1]);
    let two = run(&agent, "two", "2").await;
    let failed = agent.wait_phase(&two, PodPhase::Failed).await;
    assert!(
        failed
            .message
            .contains("2 GPU(s) asked, 0 healthy and free (1 healthy, 1 held"),
        "{failed:?}"
    );

    // A restarted agent adopts d with its GPU.
    let mut agent = agent;
    agent.kill_and_restart_agent();
    let status: types::PodStatus = agent.wait_phase(&d, PodPhase::Running).await;
    assert_eq!(status.gpu_uuids, [GPU1]);
}
