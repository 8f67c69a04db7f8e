//! The hardening review's findings, each reproduced on a real standalone
//! cluster (control plane, agents in network namespaces, containerd + runc) and
//! shown refused or harmless: client-chosen uids, Pod Security admission,
//! absurd quantities, oversized pods, empty manifests, exec of a missing
//! binary, and the pids limit. (The bridge's MAC is in `local_hosts.rs`.)

use orca_proto::types::v1 as types;
use orca_tests::cluster::{DEADLINE, TestCluster};
use orca_tests::eventually::eventually_blocking;

fn apply(c: &TestCluster, name: &str, yaml: &str) -> std::process::Output {
    let file = c.dir().join(format!("{name}.yaml"));
    std::fs::write(&file, yaml).unwrap();
    c.orca(&["apply", "-f", file.to_str().unwrap()])
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn pod_yaml(name: &str, ns: &str, image: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n{extra_spec}  containers:\n  - name: c\n    image: {image}\n    command: [sleep, '600']\n"
    )
}

/// A pod sent through AdminService with the uid the client chose.
async fn run_with_uid(c: &TestCluster, name: &str, uid: &str) -> types::PodRef {
    let mut admin = c.admin().await;
    let spec = serde_json::json!({
        "containers": [{"name": "c", "image": c.image, "command": ["sleep", "600"]}]
    });
    let record = admin
        .run_pod(orca_proto::controlplane::v1::RunPodRequest {
            pod: Some(types::Pod {
                r#ref: Some(types::PodRef {
                    namespace: "default".into(),
                    name: name.into(),
                    uid: uid.into(),
                }),
                spec_json: spec.to_string(),
                ..Default::default()
            }),
        })
        .await
        .expect("RunPod")
        .into_inner();
    record.pod.unwrap().r#ref.unwrap()
}

/// Findings 1 and 2: a uid chosen by the client named a path outside the
/// pod's directory, or another pod's containers. The control plane now gives
/// every pod a fresh UUID, so neither reaches the agent.
#[tokio::test(flavor = "multi_thread")]
async fn client_chosen_uids_are_replaced_by_the_clusters_own() {
    let c = TestCluster::start();
    c.orca_ok(&["node", "add", "n1"]);
    let escape = c.dir().join("escaped");
    let traversal = format!("../../../../../../..{}", escape.display());
    let attacker = run_with_uid(&c, "traversal", &traversal).await;
    assert_ne!(attacker.uid, traversal);
    uuid::Uuid::try_parse(&attacker.uid).expect("a UUID");

    let victim = c.wait_phase("traversal", "Running");
    let victim_uid = victim["uid"].as_str().unwrap().to_owned();
    let thief = run_with_uid(&c, "thief", &victim_uid).await;
    assert_ne!(thief.uid, victim_uid, "another pod's uid is not taken");
    let thief = c.wait_phase("thief", "Running");
    let (victim_pid, thief_pid) = (
        c.container_pid("n1", &victim).expect("victim's task"),
        c.container_pid("n1", &thief).expect("thief's own task"),
    );
    assert_ne!(victim_pid, thief_pid);
    c.orca_ok(&["delete", "pod", "thief", "--grace-period", "0"]);
    eventually_blocking("thief's task gone", DEADLINE, || {
        c.container_pid("n1", &thief).map_or(Ok(()), Err)
    });
    assert_eq!(
        c.container_pid("n1", &victim),
        Some(victim_pid),
        "deleting one pod leaves the other running"
    );
    assert!(!escape.exists(), "nothing written outside the pod dir");
    c.orca_ok(&["delete", "pod", "traversal", "--grace-period", "0"]);
    assert!(!escape.exists());
}

/// Finding 3: any pod creator could mount the host. Pod Security admission
/// now enforces `baseline` by default, per namespace by its labels, with the
/// API server's wording; `warn` leaves an Event.
#[test]
fn pod_security_refuses_host_access_unless_the_namespace_allows_it() {
    let c = TestCluster::start();
    c.orca_ok(&["node", "add", "n1"]);
    let hostile = "  hostPID: true\n  volumes:\n  - name: root\n    hostPath: {path: /}\n";
    let hostile_container = "    securityContext:\n      privileged: true\n      capabilities: {add: [ALL]}\n    volumeMounts: [{name: root, mountPath: /host}]\n";
    let yaml = |name: &str, ns: &str| pod_yaml(name, ns, &c.image, hostile) + hostile_container;

    let out = apply(&c, "hostile", &yaml("hostile", "default"));
    assert_eq!(out.status.code(), Some(4), "forbidden: {}", stderr(&out));
    let why = stderr(&out);
    for part in [
        "pods \"hostile\" is forbidden: violates PodSecurity \"baseline:latest\"",
        "host namespaces (hostPID=true)",
        "privileged (container \"c\" must not set securityContext.privileged=true)",
        "hostPath volumes (volume \"root\")",
        "\"ALL\"",
    ] {
        assert!(why.contains(part), "{part:?} missing from: {why}");
    }
    assert!(
        c.orca(&["get", "pod", "hostile"]).status.code() == Some(3),
        "nothing stored"
    );

    // A namespace an admin labels privileged admits it; a restricted one
    // refuses even a plain pod; warn leaves an Event on an admitted pod.
    let namespaces = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: ops\n  labels:\n    pod-security.kubernetes.io/enforce: privileged\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: locked\n  labels:\n    pod-security.kubernetes.io/enforce: restricted\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: lab\n  labels:\n    pod-security.kubernetes.io/warn: restricted\n";
    let out = apply(&c, "namespaces", namespaces);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = apply(&c, "ops", &yaml("hostile", "ops"));
    assert!(out.status.success(), "{}", stderr(&out));
    let plain = pod_yaml("plain", "locked", &c.image, "");
    let out = apply(&c, "locked", &plain);
    let why = stderr(&out);
    assert_eq!(out.status.code(), Some(4), "{why}");
    assert!(
        why.contains("violates PodSecurity \"restricted:latest\""),
        "{why}"
    );
    assert!(why.contains("allowPrivilegeEscalation != false"), "{why}");
    let out = apply(&c, "lab", &pod_yaml("plain", "lab", &c.image, ""));
    assert!(out.status.success(), "{}", stderr(&out));
    let events = c.orca_ok(&["-n", "lab", "describe", "pod", "plain"]);
    assert!(
        events.contains("PodSecurity")
            && events.contains("would violate PodSecurity \"restricted:latest\""),
        "{events}"
    );
}

/// Finding 5: `cpu: 1e30` was placed on an 8-CPU node, which then showed
/// negative allocations; `memory: 1Ei`, valid in Kubernetes, was refused.
#[test]
fn quantities_are_exact_and_bounded() {
    let c = TestCluster::start_configured(&[], "pending_timeout_ms: 3000\n");
    c.orca_ok(&["node", "add", "n1", "--cpu", "8", "--memory", "8Gi"]);
    let with = |name: &str, resources: &str| {
        pod_yaml(name, "default", &c.image, "") + &format!("    resources: {resources}\n")
    };
    let out = apply(&c, "huge", &with("huge", "{requests: {cpu: '1e30'}}"));
    assert!(out.status.success(), "{}", stderr(&out));
    let huge = c.wait_phase("huge", "Failed");
    assert_eq!(huge["reason"], "InvalidPodSpec", "{huge}");
    assert!(
        huge["message"]
            .as_str()
            .unwrap()
            .contains("resources.requests.cpu \"1e30\""),
        "{huge}"
    );
    let out = apply(&c, "exa", &with("exa", "{requests: {memory: 1Ei}}"));
    assert!(out.status.success(), "{}", stderr(&out));
    let exa = c.wait_phase("exa", "Failed");
    assert_eq!(exa["reason"], "Unschedulable", "{exa}");
    let out = apply(
        &c,
        "fits",
        &with("fits", "{limits: {cpu: 700m, memory: 64Mi}}"),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    c.wait_phase("fits", "Running");
    let node = c.node("n1");
    assert_eq!(node["requested"]["cpuMillis"], 700, "{node}");
}

/// Finding 6 (admission side): one pod may not ask for more than a node can
/// carry: 65 containers or 4,097 env entries are refused with the limit.
#[test]
fn oversized_pods_are_refused_with_the_limit_they_exceed() {
    let c = TestCluster::start();
    let mut many = pod_yaml("many", "default", &c.image, "");
    for i in 1..65 {
        many.push_str(&format!("  - name: c{i}\n    image: {}\n", c.image));
    }
    let out = apply(&c, "many", &many);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("65 containers; the limit is 64"),
        "{}",
        stderr(&out)
    );
    let mut env = pod_yaml("env", "default", &c.image, "") + "    env:\n";
    for i in 0..4097 {
        env.push_str(&format!("    - {{name: E{i}, value: v}}\n"));
    }
    let out = apply(&c, "env", &env);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("4097 env and envFrom entries"),
        "{}",
        stderr(&out)
    );
}

/// Finding 10: an empty manifest did nothing and said nothing; a 10 MB one
/// got a raw gRPC size error; `exec` of a missing binary exited 5.
#[test]
fn careless_input_gets_a_clear_answer() {
    let c = TestCluster::start();
    c.orca_ok(&["node", "add", "n1"]);
    let out = apply(&c, "empty", "# nothing here\n---\n");
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("holds no object"), "{}", stderr(&out));
    let big = format!("# {}\n", "x".repeat(10 * 1024 * 1024));
    let out = apply(&c, "big", &big);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("the largest accepted is 3145728 bytes"),
        "{}",
        stderr(&out)
    );

    c.orca_ok(&["run", "box", "--image", &c.image, "--", "sleep", "600"]);
    c.wait_phase("box", "Running");
    let missing = c.orca(&["exec", "box", "--", "/no/such/binary"]);
    assert_eq!(missing.status.code(), Some(127), "{}", stderr(&missing));
    assert!(
        stderr(&missing).contains("no such file"),
        "{}",
        stderr(&missing)
    );
    let not_exec = c.orca(&["exec", "box", "--", "/etc/passwd"]);
    assert_eq!(not_exec.status.code(), Some(126), "{}", stderr(&not_exec));
}

/// The pids cgroup directory of `pod`'s container `index` on node `node`.
fn pids_dir(
    c: &TestCluster,
    node: &str,
    pod: &serde_json::Value,
    index: usize,
) -> std::path::PathBuf {
    let id = pod["containerStatuses"][index]["containerID"]
        .as_str()
        .unwrap()
        .trim_start_matches("containerd://")
        .to_owned();
    let ns = c.namespace(node);
    ["/sys/fs/cgroup/pids", "/sys/fs/cgroup"]
        .iter()
        .map(|root| std::path::Path::new(root).join(&ns).join(&id))
        .find(|d| d.join("pids.max").exists())
        .expect("the container's pids cgroup")
}

/// Finding 7: a fork bomb ran until something outside stopped it. A pod now
/// holds at most the agent's `--pids-limit` processes, enforced by its
/// containers' cgroups (each app container's `pids.max` its even share).
#[test]
fn a_fork_bomb_stops_at_the_pids_limit() {
    let c = TestCluster::start_with(&["--pids-limit=40"]);
    c.orca_ok(&["node", "add", "n1"]);
    // An inner shell forks until fork fails (which ends it); the outer one,
    // the container's main process, says so and lives on.
    let bomb = "sh -c 'while :; do sleep 600 & done'; echo bomb stopped; sleep 600";
    c.orca_ok(&["run", "bomb", "--image", &c.image, "--", "sh", "-c", bomb]);
    let pod = c.wait_phase("bomb", "Running");
    eventually_blocking("the bomb to stop at the limit", DEADLINE, || {
        let logs = c.orca_ok(&["logs", "bomb"]);
        if logs.contains("bomb stopped") {
            Ok(logs)
        } else {
            Err(logs)
        }
    });
    let dir = pids_dir(&c, "n1", &pod, 0);
    assert_eq!(
        std::fs::read_to_string(dir.join("pids.max"))
            .unwrap()
            .trim(),
        "40"
    );
    let current: u32 = std::fs::read_to_string(dir.join("pids.current"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(current <= 40, "{current} processes, above the limit");
    assert_eq!(c.pod("bomb")["phase"], "Running", "the pod lives on");
    let node = c.node("n1");
    assert_eq!(node["state"], "Ready", "{node}");

    // Two app containers share the pod's 40.
    let pair = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: pair}}\nspec:\n  containers:\n  - {{name: a, image: {0}, command: [sleep, '600']}}\n  - {{name: b, image: {0}, command: [sleep, '600']}}\n",
        c.image
    );
    let out = apply(&c, "pair", &pair);
    assert!(out.status.success(), "{}", stderr(&out));
    let pair = c.wait_phase("pair", "Running");
    for i in 0..2 {
        let max = std::fs::read_to_string(pids_dir(&c, "n1", &pair, i).join("pids.max")).unwrap();
        assert_eq!(max.trim(), "20", "container {i}");
    }
}
