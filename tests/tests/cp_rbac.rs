//! Authentication and RBAC in standalone mode, through `orca` and a real
//! control plane: a named token bound to the built-in `view` ClusterRole in
//! one namespace reads pods there but cannot delete them, cannot read
//! Secrets, sees nothing in another namespace and nothing cluster-scoped; a
//! Role with `resourceNames` grants one ConfigMap; `orca auth can-i`
//! answers as kubectl does; a deleted token authenticates no one; every
//! decision is a line in the audit log.

use orca_tests::cluster::TestCluster;

const POLICY: &str = "apiVersion: v1
kind: Namespace
metadata: {name: lab}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: viewer-views, namespace: default}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}
subjects: [{kind: User, name: viewer}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: settings-reader, namespace: lab}
rules:
- apiGroups: ['']
  resources: [configmaps]
  resourceNames: [settings]
  verbs: [get]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: viewer-settings, namespace: lab}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: settings-reader}
subjects: [{kind: User, name: viewer}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: lab}
data: {mode: fast}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: other, namespace: lab}
data: {x: y}
---
apiVersion: v1
kind: Secret
metadata: {name: key}
stringData: {k: v}
";

#[test]
fn a_view_token_reads_but_cannot_delete_and_every_decision_is_audited() {
    let c = TestCluster::start_with(&["--retry-ms=100"]);
    c.orca_ok(&["node", "add", "one"]);
    c.wait_node_ready("one");
    let file = c.dir().join("policy.yaml");
    std::fs::write(&file, POLICY).unwrap();
    c.orca_ok(&["apply", "-f", file.to_str().unwrap()]);
    let pod = c.dir().join("pod.yaml");
    std::fs::write(
        &pod,
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: app}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {{name: c, image: {}, command: [sleep, '600']}}\n", c.image),
    )
    .unwrap();
    c.orca_ok(&["apply", "-f", pod.to_str().unwrap()]);

    let creds = c.dir().join("viewer.yaml");
    let made = c.orca_ok(&[
        "auth",
        "token",
        "create",
        "viewer",
        "--credentials",
        creds.to_str().unwrap(),
    ]);
    assert!(made.contains("token/viewer created"), "{made}");
    let listed = c.orca_ok(&["auth", "token", "list"]);
    assert!(listed.contains("viewer"), "{listed}");
    let as_viewer = |args: &[&str]| {
        std::process::Command::new(orca_tests::env::workspace_bin("orca"))
            .arg("--config")
            .arg(&creds)
            .args(args)
            .output()
            .expect("run orca")
    };
    let stderr = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();

    // Reads in default.
    let pods = as_viewer(&["get", "pods"]);
    assert!(
        pods.status.success() && String::from_utf8_lossy(&pods.stdout).contains("app"),
        "{pods:?}"
    );
    c.wait_phase("app", "Running");
    let logs = as_viewer(&["logs", "app"]);
    assert!(logs.status.success(), "{logs:?}");
    // Cannot delete: refused as Kubernetes words it, and the pod is still there.
    let delete = as_viewer(&["delete", "pod", "app"]);
    assert!(!delete.status.success());
    assert!(
        stderr(&delete).contains("pods \"app\" is forbidden: User \"viewer\" cannot delete resource \"pods\" in API group \"\" in the namespace \"default\""),
        "{}", stderr(&delete)
    );
    assert!(c.orca_ok(&["get", "pods"]).contains("app"));
    let exec = as_viewer(&["exec", "app", "--", "true"]);
    assert!(
        stderr(&exec).contains("cannot create resource \"pods/exec\""),
        "{}",
        stderr(&exec)
    );
    // No Secrets, nothing in another namespace but the one ConfigMap, nothing cluster-scoped.
    assert!(
        stderr(&as_viewer(&["get", "secret", "key"])).contains("cannot get resource \"secrets\"")
    );
    assert!(stderr(&as_viewer(&["get", "pods", "-n", "lab"])).contains("in the namespace \"lab\""));
    assert!(
        as_viewer(&["get", "cm", "settings", "-n", "lab"])
            .status
            .success()
    );
    assert!(
        !as_viewer(&["get", "cm", "other", "-n", "lab"])
            .status
            .success()
    );
    assert!(stderr(&as_viewer(&["get", "nodes"])).contains("at the cluster scope"));
    assert!(
        !as_viewer(&["auth", "token", "create", "mallory"])
            .status
            .success()
    );

    // can-i, as kubectl: yes/no and the exit status.
    let yes = as_viewer(&["auth", "can-i", "list", "pods"]);
    assert_eq!(
        (
            yes.status.code(),
            String::from_utf8_lossy(&yes.stdout).trim()
        ),
        (Some(0), "yes")
    );
    let no = as_viewer(&["auth", "can-i", "delete", "pods"]);
    assert_eq!(
        (no.status.code(), String::from_utf8_lossy(&no.stdout).trim()),
        (Some(1), "no")
    );
    let other = c.orca(&[
        "auth",
        "can-i",
        "get",
        "configmaps",
        "settings",
        "-n",
        "lab",
        "--as",
        "viewer",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&other.stdout).trim(),
        "yes",
        "{other:?}"
    );
    assert!(
        String::from_utf8_lossy(&other.stderr).contains("RoleBinding lab/viewer-settings"),
        "{other:?}"
    );
    assert!(
        !as_viewer(&["auth", "can-i", "list", "pods", "--as", "admin"])
            .status
            .success(),
        "only the admin asks for others"
    );

    // The audit log: who, what, allowed or not.
    let audit = std::fs::read_to_string(c.data_dir().join("audit.log")).unwrap();
    let lines: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let refused = lines
        .iter()
        .find(|l| l["user"] == "viewer" && l["verb"] == "delete" && l["resource"] == "pods")
        .expect("the refused delete is audited");
    assert_eq!(refused["allowed"], false);
    assert_eq!(refused["name"], "app");
    assert!(lines.iter().any(|l| l["user"] == "viewer"
        && l["verb"] == "list"
        && l["allowed"] == true
        && l["reason"] == "RoleBinding default/viewer-views"));
    assert!(
        lines
            .iter()
            .any(|l| l["user"] == "admin" && l["method"] == "CreateToken")
    );

    // No escalation: a namespace admin may grant what it has, not more.
    let lead = c.dir().join("lead.yaml");
    c.orca_ok(&[
        "auth",
        "token",
        "create",
        "lead",
        "--credentials",
        lead.to_str().unwrap(),
    ]);
    let bind = |name: &str, role: &str, user: &str| {
        let f = c.dir().join(format!("{name}.yaml"));
        std::fs::write(
            &f,
            format!("apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: {name}, namespace: lab}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {role}}}\nsubjects: [{{kind: User, name: {user}}}]\n"),
        )
        .unwrap();
        f
    };
    c.orca_ok(&[
        "apply",
        "-f",
        bind("lead-admin", "admin", "lead").to_str().unwrap(),
    ]);
    let as_lead = |f: &std::path::Path| {
        std::process::Command::new(orca_tests::env::workspace_bin("orca"))
            .arg("--config")
            .arg(&lead)
            .args(["apply", "-f"])
            .arg(f)
            .output()
            .expect("run orca")
    };
    let granted = as_lead(&bind("viewer-lab", "view", "viewer"));
    assert!(granted.status.success(), "{granted:?}");
    let escalated = as_lead(&bind("lead-root", "cluster-admin", "lead"));
    assert!(!escalated.status.success());
    assert!(
        stderr(&escalated).contains("escalation"),
        "{}",
        stderr(&escalated)
    );

    // A deleted token authenticates no one.
    c.orca_ok(&["auth", "token", "delete", "viewer"]);
    let gone = as_viewer(&["get", "pods"]);
    assert!(
        stderr(&gone).contains("the token is not valid"),
        "{}",
        stderr(&gone)
    );
}
