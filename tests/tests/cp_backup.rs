//! Backup and restore of the control plane on real parts: a backup taken with
//! the real `orca backup` while the cluster runs, restored with the real
//! `orca-control-plane restore` into a fresh data directory (the old store
//! deleted, as with a lost volume), and a control plane started on it that
//! knows its node and pod again, whose agents reconnect with the certificates
//! they already had (same CA), and that accepts the old admin credentials.
//! Corrupt archives and non-empty or in-use data directories are refused.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use orca_tests::cluster::{DEADLINE, TestCluster};
use orca_tests::env::{process_running, workspace_bin};
use orca_tests::eventually::eventually_blocking;

/// `orca-control-plane restore --from FROM --data-dir DIR ARGS`.
fn restore(from: &Path, data_dir: &Path, args: &[&str]) -> Output {
    Command::new(workspace_bin("orca-control-plane"))
        .arg("restore")
        .arg("--from")
        .arg(from)
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env_remove("ORCA_CONFIG")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run orca-control-plane restore")
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn a_restored_control_plane_knows_its_node_and_pod_and_its_agents_reconnect() {
    let mut c = TestCluster::start();
    c.orca_ok(&["node", "add", "a"]);
    c.orca_ok(&["run", "web", "--image", &c.image, "--", "sleep", "3600"]);
    let web = c.wait_phase("web", "Running");
    let node = c.wait_node_ready("a");
    let identity = c.node_identity("a");
    let old_ca = std::fs::read_to_string(c.data_dir().join("ca.pem")).unwrap();
    let old_admin = std::fs::read_to_string(c.credentials()).unwrap();
    // A Secret, sealed in the store with the data directory's key.
    let secret = c.dir().join("secret.yaml");
    std::fs::write(
        &secret,
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\ndata:\n  password: cGFzcw==\n",
    )
    .unwrap();
    c.orca_ok(&["apply", "-f", secret.to_str().unwrap()]);

    let backup = c.dir().join("backup.tar.gz");
    let out = c.orca_ok(&["backup", backup.to_str().unwrap()]);
    assert!(
        out.contains("nodes 1") && out.contains("pods 1"),
        "the summary counts the store's records: {out}"
    );
    assert_eq!(mode(&backup), 0o600, "the archive holds the CA's key");

    // Created after the backup: the restored control plane does not know it.
    c.orca_ok(&["run", "later", "--image", &c.image, "--", "sleep", "3600"]);
    let later = c.wait_phase("later", "Running");
    let later_pid = c.container_pid("a", &later).expect("later's container");

    let stopped = c
        .stop_control_plane()
        .expect("the control plane was running");
    assert!(stopped.success(), "control plane exit: {stopped:?}");
    // As with a lost volume: the old store is gone.
    std::fs::remove_dir_all(c.data_dir().join("store")).unwrap();

    let restored = c.dir().join("restored");
    let out = restore(&backup, &restored, &[]);
    assert!(out.status.success(), "restore: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("restored the backup"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(
        std::fs::read_to_string(restored.join("ca.pem")).unwrap(),
        old_ca
    );
    assert_eq!(
        std::fs::read_to_string(restored.join("admin.yaml")).unwrap(),
        old_admin
    );
    assert_eq!(mode(&restored.join("admin.yaml")), 0o600);
    assert_eq!(mode(&restored.join("secrets.key")), 0o600);
    assert_eq!(mode(&restored), 0o700);

    c.use_data_dir(&restored);
    // Waits until `orca node list` answers with the old credentials file.
    c.start_control_plane();

    let again = c.wait_node_ready("a");
    assert_eq!(again["id"], node["id"], "the same node: {again}");
    let pod = c.wait_phase("web", "Running");
    assert_eq!(pod["uid"], web["uid"], "the same pod: {pod}");
    assert_eq!(pod["node"], "a");
    assert_eq!(
        pod["containerStatuses"][0]["containerID"], web["containerStatuses"][0]["containerID"],
        "the same container, untouched: {pod}"
    );

    // The agent reports `later`, unknown here, and is told to stop it.
    let out = c.orca(&["get", "pod", "later"]);
    assert!(
        !out.status.success(),
        "later is unknown: {}",
        text(&out.stdout)
    );
    eventually_blocking("later's container to be stopped", DEADLINE, || {
        if process_running(later_pid) {
            Err(later_pid)
        } else {
            Ok(())
        }
    });

    // Both directions of mutual TLS work with the certificates issued before
    // the backup: the control plane hands a new pod to the agent, and the
    // agent's heartbeats report it to the end.
    c.orca_ok(&[
        "run", "after", "--image", &c.image, "--", "echo", "restored",
    ]);
    let after = c.wait_phase("after", "Succeeded");
    assert_eq!(after["node"], "a");
    let logs = c.orca_ok(&["logs", "after"]);
    assert_eq!(logs.trim(), "restored");
    // The Secret opens: the key came back with the store.
    let db: serde_json::Value =
        serde_json::from_str(&c.orca_ok(&["get", "secret", "db", "-o", "json"])).unwrap();
    assert_eq!(db["data"]["password"], "cGFzcw==", "{db:#}");
    assert_eq!(
        c.node_identity("a"),
        identity,
        "the agent kept the certificate the old control plane issued"
    );
}

#[test]
fn corrupt_archives_and_non_empty_or_running_data_directories_are_refused() {
    let c = TestCluster::start();
    let backup = c.dir().join("backup.tar.gz");
    c.orca_ok(&["backup", backup.to_str().unwrap()]);

    let mut bytes = std::fs::read(&backup).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    let corrupt = c.dir().join("corrupt.tar.gz");
    std::fs::write(&corrupt, &bytes).unwrap();
    let target = c.dir().join("restored");
    let out = restore(&corrupt, &target, &[]);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "a corrupt archive was restored");
    assert!(
        err.contains("corrupt.tar.gz is not a valid backup") && err.contains("corrupt"),
        "the error names the file and what is wrong: {err}"
    );
    assert!(!target.exists(), "nothing written");
    let leftovers: Vec<String> = std::fs::read_dir(c.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("orca-restore"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // The running control plane's own directory: in use, with --force too.
    for args in [&[][..], &["--force"]] {
        let out = restore(&backup, c.data_dir(), args);
        let err = text(&out.stderr);
        assert!(
            !out.status.success(),
            "restored over a running control plane"
        );
        assert!(err.contains("a control plane is running on"), "{err}");
    }
    assert!(
        c.orca(&["node", "list"]).status.success(),
        "the control plane is untouched"
    );

    // A non-empty directory of no running control plane: refused, then replaced with --force.
    let other = c.dir().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("junk"), "x").unwrap();
    let out = restore(&backup, &other, &[]);
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("is not empty (it holds junk)") && err.contains("--force"),
        "{err}"
    );
    assert!(other.join("junk").exists(), "untouched");

    // `orca backup -` writes the archive to standard output; restore reads `-`.
    let out = c.orca(&["backup", "-"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut child = Command::new(workspace_bin("orca-control-plane"))
        .args(["restore", "--from", "-", "--force", "--data-dir"])
        .arg(&other)
        .env_remove("ORCA_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(&out.stdout).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!other.join("junk").exists(), "replaced");
    assert!(other.join("store").is_dir() && other.join("ca.pem").is_file());
}
