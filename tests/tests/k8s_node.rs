//! ORCA as a Virtual Kubelet node of an (emulated) Kubernetes API, driven with
//! the real kubectl: Node and Lease, a pod from Kubernetes running on a
//! simulated host with its status patched back, ConfigMap/Secret content inside
//! the container, graceful deletion, adoption across a control-plane restart,
//! and the RBAC rules of `deploy/kubernetes/rbac.yaml` covering every request
//! the control plane made.

use orca_tests::cluster::DEADLINE;
use orca_tests::eventually::eventually_blocking;
use orca_tests::kube_cluster::{KubeCluster, NODE};
use serde_json::Value;

#[test]
fn node_is_registered_with_capacity_labels_taint_and_a_renewed_lease() {
    let k = KubeCluster::start();
    let node = k.kubectl_json(&["get", "node", NODE]).unwrap();
    let labels = &node["metadata"]["labels"];
    assert_eq!(labels["type"], "virtual-kubelet");
    assert_eq!(labels["kubernetes.io/role"], "agent");
    assert_eq!(labels["orca.research/provider"], "local");
    let taints = node["spec"]["taints"].as_array().expect("taints");
    assert!(
        taints
            .iter()
            .any(|t| t["key"] == "virtual-kubelet.io/provider"
                && t["value"] == "orca"
                && t["effect"] == "NoSchedule"),
        "{taints:?}"
    );
    let status = &node["status"];
    assert_eq!(
        status["daemonEndpoints"]["kubeletEndpoint"]["Port"],
        k.kubelet_port
    );
    let ready = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .expect("Ready condition");
    assert_eq!(ready["status"], "True");
    // Capacity: the one simulated host's allocatable (patched when it changes).
    let host = k.cluster.node("n1");
    let host_pods = host["allocatable"]["pods"].as_i64().unwrap_or(0);
    assert!(host_pods > 0, "{host}");
    let node = eventually_blocking("capacity summed over the hosts", DEADLINE, || {
        let node = k.kubectl_json(&["get", "node", NODE])?;
        let pods: i64 = node["status"]["capacity"]["pods"]
            .as_str()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        if pods == host_pods {
            Ok(node)
        } else {
            Err(node["status"]["capacity"].to_string())
        }
    });
    let status = &node["status"];
    assert!(status["capacity"]["cpu"].is_string() && status["capacity"]["memory"].is_string());

    // The Lease is renewed: two different renewTimes.
    let renew = |k: &KubeCluster| {
        k.kubectl_json(&["get", "lease", NODE, "-n", "kube-node-lease"])
            .map(|l| {
                l["spec"]["renewTime"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
    };
    let first = eventually_blocking("a Lease", DEADLINE, || renew(&k));
    assert_eq!(
        k.kubectl_json(&["get", "lease", NODE, "-n", "kube-node-lease"])
            .unwrap()["spec"]["holderIdentity"],
        NODE
    );
    eventually_blocking("the Lease renewed", DEADLINE, || match renew(&k) {
        Ok(t) if t != first => Ok(t),
        other => Err(format!("{other:?}")),
    });
}

fn container_status<'a>(pod: &'a Value, name: &str) -> &'a Value {
    pod["status"]["containerStatuses"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .unwrap_or(&Value::Null)
}

#[test]
fn pod_runs_with_configmap_and_secret_content_and_is_deleted_gracefully() {
    let k = KubeCluster::start();
    k.create(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  namespace: default\ndata:\n  greeting: hello-from-configmap\n  mode: fast\n",
    );
    k.create(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: creds\n  namespace: default\ntype: Opaque\nstringData:\n  password: s3cret-value\n",
    );
    // The main process prints what it sees, then waits; on SIGTERM it takes a
    // moment before exiting, so the deletion is observably graceful.
    let script = "echo GREETING=$GREETING; echo PASSWORD=$PASSWORD; echo MODE=$APP_mode; \
                  echo NAME=$POD_NAME; echo FILE=$(cat /etc/settings/greeting); \
                  echo TOKEN=$(cat /var/run/secrets/orca/token); \
                  trap 'echo stopping; sleep 2; exit 0' TERM; while true; do sleep 0.2; done";
    let containers = format!(
        "  - name: main\n    image: {{image}}\n    command: [sh, -c, \"{script}\"]\n    env:\n    \
         - name: GREETING\n      valueFrom:\n        configMapKeyRef: {{name: settings, key: greeting}}\n    \
         - name: PASSWORD\n      valueFrom:\n        secretKeyRef: {{name: creds, key: password}}\n    \
         - name: POD_NAME\n      valueFrom:\n        fieldRef: {{fieldPath: metadata.name}}\n    \
         envFrom:\n    - prefix: APP_\n      configMapRef: {{name: settings}}\n    \
         volumeMounts:\n    - {{name: settings, mountPath: /etc/settings}}\n    \
         - {{name: token, mountPath: /var/run/secrets/orca}}\n"
    );
    let extra = "  terminationGracePeriodSeconds: 20\n  volumes:\n  - name: settings\n    configMap: {name: settings}\n  \
                 - name: token\n    projected:\n      sources:\n      - serviceAccountToken: {path: token, audience: research-store, expirationSeconds: 3600}\n";
    k.create(&k.pod_yaml("web", extra, &containers));

    let pod = k.wait_running("web");
    let status = &pod["status"];
    assert!(
        !status["podIP"].as_str().unwrap_or_default().is_empty(),
        "{status}"
    );
    assert!(status["startTime"].is_string(), "{status}");
    let main = container_status(&pod, "main");
    assert!(main["state"]["running"]["startedAt"].is_string(), "{main}");
    assert!(
        main["containerID"]
            .as_str()
            .unwrap()
            .starts_with("containerd://"),
        "{main}"
    );
    assert_eq!(pod["metadata"]["annotations"]["orca.research/node"], "n1");
    // The provenance ledger, patched in the same pass as the Running status.
    let ledger: serde_json::Value = serde_json::from_str(
        pod["metadata"]["annotations"]["orca.research/ledger"]
            .as_str()
            .unwrap_or_default(),
    )
    .unwrap_or_else(|e| panic!("orca.research/ledger is JSON: {e}: {pod}"));
    assert_eq!(ledger[0]["node"], "n1", "{ledger}");
    assert_eq!(ledger[0]["instanceId"], "local-n1", "{ledger}");

    // What the container printed, through the kubelet API (kubectl logs).
    let logs = eventually_blocking("the container's output", DEADLINE, || {
        let out = k.kubectl(&["logs", "web"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains("FILE=") {
            Ok(text)
        } else {
            Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr)))
        }
    });
    // The service account token, from the TokenRequest API, bound to this pod.
    let token = logs
        .lines()
        .find_map(|l| l.strip_prefix("TOKEN="))
        .expect("a token line");
    let payload = token.split('.').nth(1).expect("a JWT");
    use base64::Engine as _;
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        claims["sub"], "system:serviceaccount:default:default",
        "{claims}"
    );
    assert!(
        claims["aud"].to_string().contains("research-store"),
        "{claims}"
    );
    assert_eq!(
        claims["kubernetes.io"]["pod"]["uid"], pod["metadata"]["uid"],
        "{claims}"
    );
    for line in [
        "GREETING=hello-from-configmap",
        "PASSWORD=s3cret-value",
        "MODE=fast",
        "NAME=web",
        "FILE=hello-from-configmap",
    ] {
        assert!(logs.contains(line), "{line} missing from:\n{logs}");
    }
    // ORCA's decisions as Kubernetes Events on the pod.
    let events = k
        .kubectl_json(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=web",
        ])
        .unwrap();
    let reasons: Vec<&str> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["involvedObject"]["uid"] == pod["metadata"]["uid"])
        .filter_map(|e| e["reason"].as_str())
        .collect();
    for reason in ["Created", "Scheduled", "Started"] {
        assert!(reasons.contains(&reason), "{reason} missing: {reasons:?}");
    }

    // Graceful deletion: the object stays (with a deletionTimestamp) while the
    // container handles SIGTERM, then is removed.
    let before = k.cluster.containers("n1");
    assert!(!before.is_empty());
    k.kubectl_ok(&["delete", "pod", "web", "--wait=false"]);
    let terminating = k.wait_pod("web", "marked for deletion", |p| {
        p["metadata"]["deletionTimestamp"].is_string()
    });
    assert!(
        terminating["metadata"]["deletionGracePeriodSeconds"]
            .as_i64()
            .unwrap()
            > 0
    );
    eventually_blocking("the pod object removed", DEADLINE, || match k.pod("web") {
        None => Ok(()),
        Some(p) => Err(p["metadata"]["deletionTimestamp"].to_string()),
    });
    eventually_blocking("the container gone from containerd", DEADLINE, || {
        let tasks = k.cluster.tasks("n1");
        if tasks.is_empty() {
            Ok(())
        } else {
            Err(format!("{tasks:?}"))
        }
    });
    let out = k.cluster.orca(&["get", "pod", "web"]);
    assert!(!out.status.success(), "ORCA forgot the pod too");
    // Every call the control plane made is granted by deploy/kubernetes/rbac.yaml.
    assert!(k.assert_rbac_covers_requests() > 10);
}

#[test]
fn missing_configmap_fails_the_pod_with_a_reason() {
    let k = KubeCluster::start();
    let containers = "  - name: main\n    image: {image}\n    command: [sleep, '60']\n    env:\n    \
                      - name: X\n      valueFrom:\n        configMapKeyRef: {name: absent, key: x}\n";
    k.create(&k.pod_yaml("broken", "", containers));
    let pod = k.wait_pod("broken", "Failed", |p| p["status"]["phase"] == "Failed");
    assert_eq!(pod["status"]["reason"], "CreateContainerConfigError");
    let message = pod["status"]["message"].as_str().unwrap();
    assert!(message.contains("configmap default/absent"), "{message}");
}

#[test]
fn a_stopped_control_plane_marks_the_node_not_ready_and_ready_again_on_start() {
    let mut k = KubeCluster::start();
    let ready = |k: &KubeCluster| {
        k.kubectl_json(&["get", "node", NODE]).unwrap()["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .map(|c| c["status"].as_str().unwrap_or_default().to_owned())
            .unwrap_or_default()
    };
    assert_eq!(ready(&k), "True");
    let status = k.cluster.stop_control_plane().expect("stopped");
    assert!(status.success(), "{status:?}");
    assert_eq!(ready(&k), "False", "marked on SIGTERM, before exiting");
    k.cluster.start_control_plane();
    eventually_blocking("Ready again", DEADLINE, || {
        let r = ready(&k);
        if r == "True" { Ok(()) } else { Err(r) }
    });
}

#[test]
fn restarted_control_plane_adopts_running_pods_without_restarting_them() {
    let mut k = KubeCluster::start();
    let containers = "  - name: main\n    image: {image}\n    command: [sh, -c, 'while true; do sleep 0.2; done']\n";
    k.create(&k.pod_yaml("steady", "", containers));
    let before = k.wait_running("steady");
    let id = container_status(&before, "main")["containerID"].clone();
    let started = container_status(&before, "main")["state"]["running"]["startedAt"].clone();

    k.cluster.kill_control_plane();
    // While ORCA is down, Kubernetes still shows the last status.
    assert_eq!(k.pod("steady").unwrap()["status"]["phase"], "Running");
    k.cluster.start_control_plane();

    // After the restart the Lease is renewed again and the pod is the same run.
    let lease = |k: &KubeCluster| {
        k.kubectl_json(&["get", "lease", NODE, "-n", "kube-node-lease"])
            .unwrap()["spec"]["renewTime"]
            .clone()
    };
    let first = lease(&k);
    eventually_blocking("the Lease renewed after the restart", DEADLINE, || {
        if lease(&k) != first {
            Ok(())
        } else {
            Err("same renewTime")
        }
    });
    let after = k.wait_running("steady");
    let main = container_status(&after, "main");
    assert_eq!(main["containerID"], id, "same container");
    assert_eq!(
        main["state"]["running"]["startedAt"], started,
        "not restarted"
    );
    assert_eq!(main["restartCount"], 0);
    assert_eq!(k.cluster.tasks("n1").len(), 1, "exactly one task");
}

#[test]
fn on_ec2_the_node_advertises_the_families_and_gpu_models_it_may_launch() {
    let dir = tempfile::tempdir().unwrap();
    let pki = orca_tests::pki::TestPki::new(&dir.path().join("pki"));
    let kapi = orca_tests::env::KubeApi::start(dir.path(), Default::default()).expect("emulator");
    let kube_yaml = format!(
        "kubernetes:\n  kubeconfig: {}\n  node_name: {NODE}\n  lease_renew_ms: 300\n  lease_duration_s: 5\n  \
         kubelet:\n    listen: 127.0.0.1:{}\n    client_ca: {}\n",
        kapi.kubeconfig.display(),
        orca_tests::env::free_port(),
        pki.ca_file().display()
    );
    let _ec2 = orca_tests::ec2_cluster::Ec2Cluster::start_with(
        "    allowed_instance_types: ['g5.*', 'p4d.*', 'm5.large']\n",
        &kube_yaml,
    );
    let labels = eventually_blocking("the Node's labels", DEADLINE, || {
        let out = kapi.kubectl(&["get", "node", NODE, "-o", "json"]).unwrap();
        let node: Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
        let labels = node["metadata"]["labels"].clone();
        if labels.get("family.orca.research/g5").is_some() {
            Ok(labels)
        } else {
            Err(labels.to_string())
        }
    });
    assert_eq!(labels["orca.research/provider"], "aws");
    for key in [
        "family.orca.research/g5",
        "family.orca.research/p4d",
        "family.orca.research/m5",
        "gpu.orca.research/A10G",
        "gpu.orca.research/A100",
    ] {
        assert_eq!(labels[key], "true", "{key} in {labels}");
    }
    assert!(
        labels.get("family.orca.research/c5").is_none(),
        "not allowed: {labels}"
    );
}
