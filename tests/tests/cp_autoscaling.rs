//! A HorizontalPodAutoscaler in standalone mode, on a simulated host with
//! real containers: a Deployment's pod starts burning CPU (far above 50% of
//! its 100m request), the HPA scales the Deployment up to its maximum; the
//! burn stops, and after the scale-down stabilization window it scales back
//! to its minimum. Each rescale is an Event; `orca get hpa` shows the
//! measured utilisation.

use orca_tests::cluster::{DEADLINE, TestCluster};
use orca_tests::eventually::eventually_blocking;

const MANIFESTS: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: burn}
spec:
  replicas: 1
  selector: {matchLabels: {app: burn}}
  template:
    metadata: {labels: {app: burn}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: c
        image: IMAGE
        command: [sh, -c, 'while true; do if [ -f /tmp/burn ]; then :; else sleep 0.2; fi; done']
        resources: {requests: {cpu: 100m}}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: burn}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: burn}
  minReplicas: 1
  maxReplicas: 3
  metrics:
  - type: Resource
    resource: {name: cpu, target: {type: Utilization, averageUtilization: 50}}
  behavior:
    scaleDown: {stabilizationWindowSeconds: 2}
";

fn replicas(c: &TestCluster) -> (i64, usize) {
    let d: serde_json::Value =
        serde_json::from_str(&c.orca_ok(&["get", "deploy", "burn", "-o", "json"])).unwrap();
    let pods: serde_json::Value =
        serde_json::from_str(&c.orca_ok(&["get", "pods", "-o", "json"])).unwrap();
    let running = pods
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| {
            p["name"].as_str().unwrap_or_default().starts_with("burn-") && p["phase"] == "Running"
        })
        .count();
    (d["spec"]["replicas"].as_i64().unwrap_or(0), running)
}

#[test]
fn an_hpa_scales_a_deployment_up_under_load_and_back_down() {
    let c = TestCluster::start_configured(&["--retry-ms=100"], "autoscaling_sync_ms: 500\n");
    c.orca_ok(&["node", "add", "one"]);
    c.wait_node_ready("one");
    let file = c.dir().join("burn.yaml");
    std::fs::write(&file, MANIFESTS.replace("IMAGE", &c.image)).unwrap();
    c.orca_ok(&["apply", "-f", file.to_str().unwrap()]);
    c.orca_ok(&["rollout", "status", "deployment/burn", "--timeout", "60"]);
    // Idle: the HPA reads a low utilisation and keeps the minimum.
    eventually_blocking("a measured utilisation", DEADLINE, || {
        let hpa = c.orca_ok(&["get", "hpa"]);
        if hpa.contains("%/50%") && !hpa.contains("<unknown>") {
            Ok(hpa)
        } else {
            Err(hpa)
        }
    });
    assert_eq!(replicas(&c).0, 1);

    let pods: serde_json::Value =
        serde_json::from_str(&c.orca_ok(&["get", "pods", "-o", "json"])).unwrap();
    let first = pods
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"].as_str().unwrap_or_default().starts_with("burn-"))
        .unwrap()["name"]
        .as_str()
        .unwrap()
        .to_owned();
    c.orca_ok(&["exec", &first, "--", "touch", "/tmp/burn"]);
    eventually_blocking("scaled up to the maximum", DEADLINE, || {
        let r = replicas(&c);
        if r == (3, 3) { Ok(()) } else { Err(r) }
    });
    let described = c.orca_ok(&["describe", "hpa", "burn"]);
    assert!(
        described.contains("SuccessfulRescale") && described.contains("above target"),
        "{described}"
    );

    c.orca_ok(&["exec", &first, "--", "rm", "/tmp/burn"]);
    eventually_blocking("scaled back down to the minimum", DEADLINE, || {
        let r = replicas(&c);
        if r == (1, 1) { Ok(()) } else { Err(r) }
    });
    let described = c.orca_ok(&["describe", "hpa", "burn"]);
    assert!(described.contains("below target"), "{described}");
}

/// Beyond Kubernetes: the HPA scales on the GPU utilisation the agents report
/// (here the fake GPU source's replayed NVML samples, which rise above 1%).
#[test]
fn an_hpa_scales_on_gpu_utilization() {
    let c = TestCluster::start_configured(&["--retry-ms=100"], "autoscaling_sync_ms: 500\n");
    c.orca_ok(&["node", "add", "gpu", "--gpus", "2"]);
    c.wait_node_ready("gpu");
    let manifests = format!(
        "apiVersion: apps/v1
kind: Deployment
metadata: {{name: train}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: train}}}}
  template:
    metadata: {{labels: {{app: train}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: c
        image: {}
        command: [sleep, '600']
        resources: {{limits: {{nvidia.com/gpu: 1}}}}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {{name: train}}
spec:
  scaleTargetRef: {{apiVersion: apps/v1, kind: Deployment, name: train}}
  minReplicas: 1
  maxReplicas: 2
  metrics:
  - type: Pods
    pods:
      metric: {{name: orca.research/gpu-utilization}}
      target: {{type: AverageValue, averageValue: '1'}}
",
        c.image
    );
    let file = c.dir().join("train.yaml");
    std::fs::write(&file, manifests).unwrap();
    c.orca_ok(&["apply", "-f", file.to_str().unwrap()]);
    eventually_blocking("scaled up on GPU utilisation", DEADLINE, || {
        let d: serde_json::Value =
            serde_json::from_str(&c.orca_ok(&["get", "deploy", "train", "-o", "json"])).unwrap();
        if d["spec"]["replicas"] == 2 && d["status"]["readyReplicas"] == 2 {
            Ok(())
        } else {
            Err(d["status"].clone())
        }
    });
    let described = c.orca_ok(&["describe", "hpa", "train"]);
    assert!(
        described.contains("orca.research/gpu-utilization above target"),
        "{described}"
    );
}
