//! Namespaces, ResourceQuotas and LimitRanges in standalone mode, through
//! `orca` and a real control plane with a simulated host: one manifest file
//! makes the namespace, its quota and its limit range; a pod in a namespace
//! that does not exist is refused; a pod without resources gets the range's
//! defaults and runs; pods over the quota's CPU or GPUs, or over the range's
//! maximum, are refused naming the quota or range and are not created; the
//! quota's use is shown; a deleted pod gives its room back; deleting the
//! namespace deletes its pods and objects; kinds that stay with Kubernetes are
//! refused saying so.

use orca_tests::cluster::{DEADLINE, TestCluster};
use orca_tests::eventually::eventually_blocking;

const LAB: &str = "apiVersion: v1
kind: Namespace
metadata:
  name: lab
---
apiVersion: v1
kind: ResourceQuota
metadata:
  name: compute
  namespace: lab
spec:
  hard:
    pods: '3'
    requests.cpu: '1'
    requests.nvidia.com/gpu: '1'
---
apiVersion: v1
kind: LimitRange
metadata:
  name: bounds
  namespace: lab
spec:
  limits:
  - type: Container
    default: {cpu: 200m}
    defaultRequest: {cpu: 200m}
    max: {cpu: '1'}
";

fn write(c: &TestCluster, name: &str, text: &str) -> String {
    let file = c.dir().join(format!("{name}.yaml"));
    std::fs::write(&file, text).unwrap();
    file.to_str().unwrap().to_owned()
}

/// A sleeping pod in `ns` with these container resources (YAML flow map, or empty).
fn pod(c: &TestCluster, ns: &str, name: &str, resources: &str) -> String {
    let resources = if resources.is_empty() {
        String::new()
    } else {
        format!("    resources: {resources}\n")
    };
    write(
        c,
        name,
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  \
             terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: {}\n    \
             command: [sleep, '600']\n{resources}",
            c.image
        ),
    )
}

/// `orca apply` that must fail: its stderr.
fn refused(c: &TestCluster, file: &str) -> String {
    let out = c.orca(&["apply", "-f", file]);
    assert!(!out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn pods_in(c: &TestCluster, ns: &str) -> Vec<String> {
    let list: serde_json::Value =
        serde_json::from_str(&c.orca_ok(&["get", "pods", "-n", ns, "-o", "json"])).unwrap();
    list.as_array()
        .into_iter()
        .flatten()
        .map(|p| p["name"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn quotas_and_limit_ranges_admit_or_refuse_pods_in_their_namespace() {
    let c = TestCluster::start_with(&["--retry-ms=100"]);
    c.orca_ok(&["node", "add", "one"]);
    c.wait_node_ready("one");

    let applied = c.orca_ok(&["apply", "-f", &write(&c, "lab", LAB)]);
    assert_eq!(
        applied.lines().collect::<Vec<_>>(),
        [
            "namespace/lab created",
            "resourcequota/compute created",
            "limitrange/bounds created"
        ],
        "{applied}"
    );
    let again = c.orca_ok(&["apply", "-f", &write(&c, "lab", LAB)]);
    assert!(
        again.contains("resourcequota/compute configured"),
        "{again}"
    );
    let namespaces = c.orca_ok(&["get", "namespaces"]);
    assert!(
        namespaces.contains("default") && namespaces.contains("lab"),
        "{namespaces}"
    );

    // No such namespace: refused, nothing created.
    let err = refused(&c, &pod(&c, "nolab", "stray", ""));
    assert!(err.contains("namespace \"nolab\" not found"), "{err}");

    // No resources: the range's defaults, then it runs.
    c.orca_ok(&["apply", "-f", &pod(&c, "lab", "small", "")]);
    let small: serde_json::Value =
        serde_json::from_str(&c.orca_ok(&["get", "pod", "small", "-n", "lab", "-o", "json"]))
            .unwrap();
    let res = &small["spec"]["containers"][0]["resources"];
    assert_eq!(res["requests"]["cpu"], "200m", "{small:#}");
    assert_eq!(res["limits"]["cpu"], "200m", "{small:#}");
    // A request above the range's default limit cannot be met.
    let err = refused(&c, &pod(&c, "lab", "big", "{requests: {cpu: 600m}}"));
    assert!(
        err.contains("requests.cpu: 600m must be less than or equal to the cpu limit of 200m"),
        "{err}"
    );
    c.orca_ok(&[
        "apply",
        "-f",
        &pod(&c, "lab", "big", "{limits: {cpu: 600m}}"),
    ]);
    eventually_blocking("both pods Running", DEADLINE, || {
        let list = c.orca_ok(&["get", "pods", "-n", "lab"]);
        if list.matches("Running").count() == 2 {
            Ok(())
        } else {
            Err(list)
        }
    });

    // 800m of 1 CPU used: 300m more is over the quota.
    let err = refused(&c, &pod(&c, "lab", "extra", "{limits: {cpu: 300m}}"));
    assert!(
        err.contains(
            "exceeded quota: compute, requested: requests.cpu=300m, used: requests.cpu=800m, limited: requests.cpu=1"
        ),
        "{err}"
    );
    let err = refused(
        &c,
        &pod(
            &c,
            "lab",
            "gpus",
            "{limits: {cpu: 100m, nvidia.com/gpu: 2}}",
        ),
    );
    assert!(
        err.contains("exceeded quota: compute, requested: requests.nvidia.com/gpu=2, used: requests.nvidia.com/gpu=0, limited: requests.nvidia.com/gpu=1"),
        "{err}"
    );
    let err = refused(&c, &pod(&c, "lab", "wide", "{limits: {cpu: '2'}}"));
    assert!(
        err.contains("limitrange bounds: container \"c\": maximum cpu usage per Container is 1, but limit is 2"),
        "{err}"
    );
    let mut names = pods_in(&c, "lab");
    names.sort();
    assert_eq!(names, ["big", "small"], "refused pods are not created");

    let described = c.orca_ok(&["describe", "quota", "compute", "-n", "lab"]);
    let row = |resource: &str| {
        described
            .lines()
            .find(|l| l.split_whitespace().next() == Some(resource))
            .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>())
            .unwrap_or_else(|| panic!("no {resource} row: {described}"))
    };
    assert_eq!(row("requests.cpu"), ["800m", "1"], "{described}");
    assert_eq!(row("pods"), ["2", "3"], "{described}");

    // A deleted pod gives its room back.
    c.orca_ok(&["delete", "pod", "big", "-n", "lab"]);
    c.orca_ok(&[
        "apply",
        "-f",
        &pod(&c, "lab", "extra", "{limits: {cpu: 300m}}"),
    ]);

    // Kinds that stay with Kubernetes, and kinds not served yet.
    let ingress = write(
        &c,
        "ingress",
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: web\n",
    );
    assert!(refused(&c, &ingress).contains("Ingress stays with Kubernetes"));

    // A claim in the namespace (none in a namespace that does not exist).
    let claim = |ns: &str| {
        format!(
            "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: data\n  namespace: {ns}\nspec:\n  \
             accessModes: [ReadWriteOnce]\n  resources: {{requests: {{storage: 1Gi}}}}\n"
        )
    };
    c.orca_ok(&["apply", "-f", &write(&c, "claim", &claim("lab"))]);
    assert!(
        refused(&c, &write(&c, "stray-claim", &claim("nolab")))
            .contains("namespace \"nolab\" not found")
    );

    // The namespace goes with its pods, claims and objects.
    let gone = c.orca_ok(&["delete", "namespace", "lab"]);
    assert!(
        gone.contains("namespace/lab deleted (with 2 pod(s))"),
        "{gone}"
    );
    assert!(pods_in(&c, "lab").is_empty());
    let claims: serde_json::Value =
        serde_json::from_str(&c.orca_ok(&["get", "pvc", "-n", "lab", "-o", "json"])).unwrap();
    assert_eq!(claims, serde_json::json!([]), "the claim went with it");
    let quotas: serde_json::Value =
        serde_json::from_str(&c.orca_ok(&["get", "quota", "-n", "lab", "-o", "json"])).unwrap();
    assert_eq!(quotas, serde_json::json!([]));
    assert!(!c.orca_ok(&["get", "ns"]).contains("lab"));
    let err = c.orca(&["delete", "namespace", "default"]);
    assert!(!err.status.success());
}
