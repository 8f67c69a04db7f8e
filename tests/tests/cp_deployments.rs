//! Deployments in standalone mode, on simulated hosts with real containers
//! (busybox httpd): a 3-replica Deployment rolls from one image tag to
//! another, then back with `orca rollout undo`. A watch of the pods (the
//! control plane's `WatchPods`) checks at every transition it sees that
//! never more than `replicas + maxSurge` pods exist and, once the first
//! rollout is complete, never fewer than `replicas - maxUnavailable` are
//! Ready. A Recreate Deployment never has old and new pods at once; a
//! rollout whose pods never become Ready fails its progress deadline; `orca
//! scale` and the revision history work as in kubectl.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use orca_proto::controlplane::v1 as pb;
use orca_tests::cluster::{DEADLINE, TestCluster};
use orca_tests::eventually::eventually_blocking;

/// One state of the watched pods, after one change.
#[derive(Debug, Clone)]
struct Seen {
    /// Unfinished pods of Deployment `web` (being stopped included).
    web: usize,
    /// Of which Ready.
    web_ready: usize,
    /// `batch` pods by image tag.
    batch_tags: Vec<String>,
}

fn owner(p: &pb::PodRecord) -> String {
    p.pod
        .as_ref()
        .and_then(|p| p.annotations.get("orca.research/controlled-by").cloned())
        .unwrap_or_default()
}

fn is_ready(p: &pb::PodRecord) -> bool {
    p.status.as_ref().is_some_and(|s| {
        s.phase == orca_proto::types::v1::PodPhase::Running as i32
            && s.conditions
                .iter()
                .any(|c| c.r#type == "Ready" && c.status == "True")
    })
}

fn finished(p: &pb::PodRecord) -> bool {
    use orca_proto::types::v1::PodPhase;
    p.status.as_ref().is_some_and(|s| {
        s.phase == PodPhase::Succeeded as i32 || s.phase == PodPhase::Failed as i32
    })
}

fn image_tag(p: &pb::PodRecord) -> String {
    let spec: serde_json::Value = serde_json::from_str(&p.pod.as_ref().unwrap().spec_json).unwrap();
    let image = spec["containers"][0]["image"].as_str().unwrap_or_default();
    image.rsplit(':').next().unwrap_or_default().to_owned()
}

/// Watches every pod change in the background, keeping the state after each.
/// The log, and the error that ended the watch (if it ended).
type Watched = (Arc<Mutex<Vec<Seen>>>, Arc<Mutex<Option<String>>>);

fn watch(c: &TestCluster) -> Watched {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let ended = Arc::new(Mutex::new(None));
    let (log, end) = (seen.clone(), ended.clone());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut admin = rt.block_on(c.admin());
    std::thread::spawn(move || {
        rt.block_on(async move {
            use futures::StreamExt as _;
            let mut stream = admin
                .watch_pods(pb::WatchPodsRequest {
                    namespace: "default".into(),
                })
                .await
                .expect("watch")
                .into_inner();
            let mut pods: HashMap<String, pb::PodRecord> = HashMap::new();
            while let Some(event) = stream.next().await {
                let event = match event {
                    Ok(e) => e,
                    Err(e) => {
                        *end.lock().unwrap() = Some(e.to_string());
                        return;
                    }
                };
                match event.pod {
                    Some(p) if event.r#type != "DELETED" => {
                        pods.insert(event.key, p);
                    }
                    _ => {
                        pods.remove(&event.key);
                    }
                }
                let live = |prefix: &str| {
                    pods.values()
                        .filter(|p| owner(p).starts_with(prefix) && !finished(p))
                        .cloned()
                        .collect::<Vec<_>>()
                };
                let web = live("ReplicaSet/web-");
                let mut batch_tags: Vec<String> =
                    live("ReplicaSet/batch-").iter().map(image_tag).collect();
                batch_tags.sort();
                batch_tags.dedup();
                log.lock().unwrap().push(Seen {
                    web: web.len(),
                    web_ready: web.iter().filter(|p| is_ready(p)).count(),
                    batch_tags,
                });
            }
            *end.lock().unwrap() = Some("the stream ended".into());
        });
    });
    (seen, ended)
}

fn deployment(c: &TestCluster, tag: &str) -> String {
    let image = c.image.replace(":test", &format!(":{tag}"));
    let text = format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  annotations:
    kubernetes.io/change-cause: image {tag}
spec:
  replicas: 3
  selector:
    matchLabels: {{app: web}}
  strategy:
    type: RollingUpdate
    rollingUpdate: {{maxSurge: 1, maxUnavailable: 0}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: httpd
        image: {image}
        command: [sh, -c, 'echo $HOSTNAME > /www/index.html; exec httpd -f -p 8080 -h /www']
        ports: [{{containerPort: 8080}}]
        readinessProbe:
          httpGet: {{path: /, port: 8080}}
          periodSeconds: 1
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: batch
spec:
  replicas: 2
  selector:
    matchLabels: {{app: batch}}
  strategy: {{type: Recreate}}
  template:
    metadata:
      labels: {{app: batch}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: sleep
        image: {image}
        command: [sleep, '600']
"
    );
    let file = c.dir().join(format!("web-{tag}.yaml"));
    std::fs::write(&file, text).unwrap();
    file.to_str().unwrap().to_owned()
}

fn web_pods(c: &TestCluster) -> Vec<serde_json::Value> {
    let list: serde_json::Value =
        serde_json::from_str(&c.orca_ok(&["get", "pods", "-o", "json"])).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"].as_str().unwrap_or_default().starts_with("web-"))
        .cloned()
        .collect()
}

fn rolled_out(c: &TestCluster, name: &str) {
    let out = c.orca_ok(&[
        "rollout",
        "status",
        &format!("deployment/{name}"),
        "--timeout",
        "60",
    ]);
    assert!(
        out.contains(&format!("deployment \"{name}\" successfully rolled out")),
        "{out}"
    );
}

#[test]
fn deployments_roll_within_their_bounds_and_undo() {
    let c = TestCluster::start_with(&["--retry-ms=100"]);
    for n in ["h1", "h2", "h3", "h4"] {
        c.orca_ok(&["node", "add", n]);
    }
    for n in ["h1", "h2", "h3", "h4"] {
        c.wait_node_ready(n);
    }
    let v2 = c
        .registry
        .push_oci_archive(&c.dir().join("busybox-oci.tar"), "orca/busybox:v2");
    v2.expect("a second tag of the image");
    let (seen, ended) = watch(&c);

    let applied = c.orca_ok(&["apply", "-f", &deployment(&c, "test")]);
    assert!(applied.contains("deployment/web created"), "{applied}");
    rolled_out(&c, "web");
    rolled_out(&c, "batch");
    let listed = c.orca_ok(&["get", "deployments"]);
    let row: Vec<&str> = listed
        .lines()
        .find(|l| l.starts_with("web "))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(&row[1..4], ["3/3", "3", "3"], "{listed}");
    // Each pod has its host's address.
    for p in web_pods(&c) {
        let ip = p["podIP"].as_str().unwrap_or_default();
        assert!(!ip.is_empty(), "{p:#}");
    }

    // Roll to v2.
    c.orca_ok(&["apply", "-f", &deployment(&c, "v2")]);
    rolled_out(&c, "web");
    rolled_out(&c, "batch");
    // The last old pod may be finishing its stop (Failed, exit 137 after the
    // grace period) until the control plane removes it.
    eventually_blocking("three web pods, all v2", DEADLINE, || {
        let pods = web_pods(&c);
        let v2 = pods
            .iter()
            .filter(|p| {
                p["spec"]["containers"][0]["image"]
                    .as_str()
                    .unwrap_or_default()
                    .ends_with(":v2")
            })
            .count();
        if pods.len() == 3 && v2 == 3 {
            Ok(())
        } else {
            Err(pods)
        }
    });
    let history = c.orca_ok(&["rollout", "history", "deployment/web"]);
    assert!(
        history.contains("image test") && history.contains("image v2"),
        "{history}"
    );
    let rs = c.orca_ok(&["get", "rs"]);
    assert_eq!(
        rs.lines().filter(|l| l.starts_with("web-")).count(),
        2,
        "{rs}"
    );

    // Back to the first template.
    let undone = c.orca_ok(&["rollout", "undo", "deployment/web"]);
    assert!(undone.contains("rolled back"), "{undone}");
    rolled_out(&c, "web");
    let history = c.orca_ok(&["rollout", "history", "deployment/web"]);
    let revisions: Vec<&str> = history
        .lines()
        .skip(2)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        revisions,
        ["2", "3"],
        "revision 1 came back as 3: {history}"
    );
    let describe = c.orca_ok(&["describe", "deployment", "web"]);
    assert!(
        describe.contains("ScalingReplicaSet") && describe.contains("DeploymentRollback"),
        "{describe}"
    );

    // Every transition the watch saw.
    assert_eq!(*ended.lock().unwrap(), None, "the watch ran throughout");
    let log = seen.lock().unwrap().clone();
    assert!(
        log.iter().all(|s| s.web <= 4),
        "more than replicas + maxSurge pods: {log:?}"
    );
    let complete = log
        .iter()
        .position(|s| s.web_ready >= 3)
        .expect("the first rollout completed");
    let short = log[complete..].iter().find(|s| s.web_ready < 3);
    assert!(
        short.is_none(),
        "fewer than 3 Ready during a rollout: {short:?} in {log:?}"
    );
    assert!(
        log.iter().any(|s| s.web == 4),
        "the surge was used: {log:?}"
    );
    assert!(
        log.iter().all(|s| s.batch_tags.len() <= 1),
        "Recreate ran old and new pods at once: {log:?}"
    );
    assert!(
        log.iter().any(|s| s.batch_tags == ["v2"]),
        "batch moved to v2: {log:?}"
    );

    // Scaling.
    c.orca_ok(&["scale", "deployment/web", "--replicas", "2"]);
    eventually_blocking("two web pods", DEADLINE, || {
        let n = web_pods(&c).len();
        if n == 2 { Ok(()) } else { Err(n) }
    });

    // A rollout whose pods never become Ready fails its deadline.
    let stuck = c.dir().join("stuck.yaml");
    std::fs::write(
        &stuck,
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: stuck}}\nspec:\n  replicas: 1\n  progressDeadlineSeconds: 2\n  selector: {{matchLabels: {{app: stuck}}}}\n  template:\n    metadata: {{labels: {{app: stuck}}}}\n    spec:\n      terminationGracePeriodSeconds: 1\n      containers:\n      - name: c\n        image: {}\n        command: [sleep, '600']\n        readinessProbe:\n          exec: {{command: ['false']}}\n          periodSeconds: 1\n",
            c.image
        ),
    )
    .unwrap();
    c.orca_ok(&["apply", "-f", stuck.to_str().unwrap()]);
    let out = c.orca(&["rollout", "status", "deployment/stuck", "--timeout", "60"]);
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("exceeded its progress deadline"), "{err}");
    let describe = c.orca_ok(&["describe", "deployment", "stuck"]);
    assert!(describe.contains("ProgressDeadlineExceeded"), "{describe}");

    // Bad input names the field; deleting a Deployment takes its pods.
    let bad = c.dir().join("bad.yaml");
    std::fs::write(&bad, "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: bad}\nspec:\n  selector: {matchLabels: {app: x}}\n  template:\n    metadata: {labels: {app: y}}\n    spec: {containers: [{name: c, image: x}]}\n").unwrap();
    let out = c.orca(&["apply", "-f", bad.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("spec.selector does not match"),
        "{out:?}"
    );
    c.orca_ok(&["delete", "deployment", "web"]);
    eventually_blocking("web's pods and replica sets gone", DEADLINE, || {
        let (pods, rs) = (web_pods(&c).len(), c.orca_ok(&["get", "rs"]));
        if pods == 0 && !rs.contains("web-") {
            Ok(())
        } else {
            Err((pods, rs))
        }
    });
}
