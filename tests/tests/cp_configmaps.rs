//! ConfigMaps and Secrets in standalone mode, through `orca` and a real control
//! plane with a simulated host: both applied from one manifest file; the
//! Secret is sealed in the store's files (the ConfigMap, as a control, is
//! readable there); a pod gets them as env (`valueFrom`, `envFrom`) and as
//! volumes; a changed ConfigMap reaches the running pod's volume (Event
//! `VolumesUpdated`) while its env keeps the value it started with; `orca
//! describe secret` shows sizes, not values; a pod naming a ConfigMap that does
//! not exist fails saying which.

use orca_tests::cluster::{DEADLINE, TestCluster};
use orca_tests::eventually::eventually_blocking;

fn objects(greeting: &str) -> String {
    format!(
        "apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
data:
  greeting: {greeting}
  mode: fast-and-visible-in-the-store
---
apiVersion: v1
kind: Secret
metadata:
  name: db
data:
  password: aHVudGVyMi1zZWFsZWQ=
"
    )
}

fn apply(c: &TestCluster, name: &str, text: &str) -> String {
    let file = c.dir().join(format!("{name}.yaml"));
    std::fs::write(&file, text).unwrap();
    c.orca_ok(&["apply", "-f", file.to_str().unwrap()])
}

/// Whether any file under `dir` contains `needle`.
fn found_in_files(dir: &std::path::Path, needle: &[u8]) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|e| {
        let path = e.path();
        if path.is_dir() {
            found_in_files(&path, needle)
        } else {
            std::fs::read(&path).is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
        }
    })
}

fn exec(c: &TestCluster, pod: &str, script: &str) -> String {
    c.orca_ok(&["exec", pod, "--", "sh", "-c", script])
        .trim()
        .to_owned()
}

#[test]
fn config_maps_and_secrets_reach_pods_as_env_and_volumes_and_updates_follow() {
    let c = TestCluster::start_with(&["--retry-ms=100"]);
    c.orca_ok(&["node", "add", "one"]);
    c.wait_node_ready("one");

    let applied = apply(&c, "objects", &objects("hello"));
    assert!(
        applied.contains("configmap/settings created") && applied.contains("secret/db created"),
        "{applied}"
    );

    // Sealed at rest: the Secret's value is in no file of the store, in base64
    // or plain, while the ConfigMap's is.
    let store = c.data_dir();
    assert!(found_in_files(store, b"fast-and-visible-in-the-store"));
    assert!(!found_in_files(store, b"aHVudGVyMi1zZWFsZWQ="));
    assert!(!found_in_files(store, b"hunter2-sealed"));
    let secret: serde_json::Value =
        serde_json::from_str(&c.orca_ok(&["get", "secret", "db", "-o", "json"])).unwrap();
    assert_eq!(
        secret["data"]["password"], "aHVudGVyMi1zZWFsZWQ=",
        "{secret:#}"
    );
    let described = c.orca_ok(&["describe", "secret", "db"]);
    assert!(described.contains("password:  14 bytes"), "{described}");
    assert!(!described.contains("hunter2"), "{described}");

    apply(
        &c,
        "reader",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: reader\nspec:\n  \
             terminationGracePeriodSeconds: 1\n  volumes:\n  \
             - {{name: settings, configMap: {{name: settings}}}}\n  \
             - {{name: db, secret: {{secretName: db, defaultMode: 256}}}}\n  containers:\n  \
             - name: c\n    image: {}\n    command: [sleep, '600']\n    env:\n    \
             - name: GREETING\n      valueFrom: {{configMapKeyRef: {{name: settings, key: greeting}}}}\n    \
             envFrom:\n    - {{secretRef: {{name: db}}, prefix: DB_}}\n    volumeMounts:\n    \
             - {{name: settings, mountPath: /etc/settings}}\n    \
             - {{name: db, mountPath: /etc/db}}\n",
            c.image
        ),
    );
    c.wait_phase("reader", "Running");
    assert_eq!(exec(&c, "reader", "echo $GREETING"), "hello");
    assert_eq!(exec(&c, "reader", "echo $DB_password"), "hunter2-sealed");
    assert_eq!(exec(&c, "reader", "cat /etc/settings/greeting"), "hello");
    assert_eq!(exec(&c, "reader", "cat /etc/db/password"), "hunter2-sealed");
    assert_eq!(exec(&c, "reader", "stat -L -c %a /etc/db/password"), "400");

    // A change reaches the mounted volume; the env keeps its start value.
    let again = apply(&c, "objects", &objects("bonjour"));
    assert!(again.contains("configmap/settings configured"), "{again}");
    eventually_blocking("the new greeting in the volume", DEADLINE, || {
        let now = exec(&c, "reader", "cat /etc/settings/greeting");
        if now == "bonjour" { Ok(()) } else { Err(now) }
    });
    assert_eq!(exec(&c, "reader", "echo $GREETING"), "hello");
    let events = c.orca_ok(&["events", "reader"]);
    assert!(events.contains("VolumesUpdated"), "{events}");

    // An immutable ConfigMap's data cannot change.
    let frozen = |v: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: frozen\nimmutable: true\ndata:\n  k: {v}\n"
        )
    };
    apply(&c, "frozen", &frozen("a"));
    let file = c.dir().join("frozen.yaml");
    std::fs::write(&file, frozen("b")).unwrap();
    let out = c.orca(&["apply", "-f", file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("immutable"),
        "{out:?}"
    );

    // A pod naming a ConfigMap that does not exist fails saying which.
    apply(
        &c,
        "lost",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: lost\nspec:\n  restartPolicy: Never\n  \
             containers:\n  - name: c\n    image: {}\n    command: [true]\n    env:\n    \
             - name: X\n      valueFrom: {{configMapKeyRef: {{name: nowhere, key: x}}}}\n",
            c.image
        ),
    );
    let lost = c.wait_phase("lost", "Failed");
    assert!(
        lost["message"]
            .as_str()
            .unwrap_or_default()
            .contains("nowhere"),
        "{lost:#}"
    );
}
