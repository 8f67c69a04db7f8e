//! Pod volumes as containers see them: `orca_agent::volumes` prepares an emptyDir, a
//! memory-backed emptyDir, a configMap with items and modes, a secret, a downwardAPI
//! and a hostPath volume on the host, and busybox containers run by `ctr run` get
//! exactly the bind mounts `Prepared::mounts_for` returns.
//!
//! Pod specs and containers are written as Kubernetes JSON, as they arrive; their
//! types are inferred from the `volumes` functions they are handed to.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use orca_agent::volumes::{self, PodInfo, Prepared, VolumeData};
use orca_tests::env::{Containerd, busybox_image};
use serde_json::{Value, json};
use tempfile::TempDir;

/// A private containerd with the busybox image imported into the test's namespace.
struct Env {
    containerd: Containerd,
    ns: String,
    image: String,
    // Last: removed after containerd has stopped.
    dir: TempDir,
}

impl Env {
    fn start() -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let containerd = Containerd::start(dir.path()).expect("containerd starts");
        let ns = format!("agent-volumes-{}", std::process::id());
        let archive = busybox_image(dir.path()).expect("busybox image builds");
        let image = containerd
            .import_image(&ns, &archive)
            .expect("image imports");
        Env {
            containerd,
            ns,
            image,
            dir,
        }
    }

    /// Runs `sh -c script` in container `id` with `mounts` (OCI mount objects) and
    /// returns its stdout; panics with stderr when it fails.
    fn run(&self, id: &str, mounts: &[Value], script: &str) -> String {
        let mut cmd = self.containerd.ctr_command(&self.ns);
        cmd.args(["run", "--rm"]);
        for m in mounts {
            assert_eq!(m["type"], "bind", "{m}");
            let options: Vec<&str> = m["options"]
                .as_array()
                .expect("options")
                .iter()
                .map(|o| o.as_str().expect("option"))
                .collect();
            cmd.arg("--mount").arg(format!(
                "type=bind,src={},dst={},options={}",
                m["source"].as_str().expect("source"),
                m["destination"].as_str().expect("destination"),
                options.join(":"),
            ));
        }
        cmd.args([self.image.as_str(), id, "sh", "-c", script]);
        let out = cmd.output().expect("ctr run");
        assert!(
            out.status.success(),
            "{id}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Removes the pod's volumes (unmounting its tmpfs) even when the test fails.
struct PodVolumes(PathBuf);

impl Drop for PodVolumes {
    fn drop(&mut self) {
        if let Err(e) = volumes::cleanup(&self.0) {
            eprintln!("volume cleanup failed: {e}");
        }
    }
}

/// `key=value` lines of a script's output.
fn fields(out: &str) -> BTreeMap<String, String> {
    out.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect()
}

fn tmpfs_mounted_at(path: &Path) -> bool {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    std::fs::read_to_string("/proc/self/mounts")
        .expect("mounts")
        .lines()
        .any(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            f.len() > 2 && f[2] == "tmpfs" && Path::new(f[1]) == path
        })
}

#[test]
fn containers_see_prepared_volumes_with_contents_modes_and_read_only_mounts() {
    let env = Env::start();
    let pod_dir = env.dir.path().join("pod");
    let host_dir = env.dir.path().join("host/data");
    let guard = PodVolumes(pod_dir.clone());

    let volumes_json = json!([
        { "name": "scratch", "emptyDir": {} },
        { "name": "cache", "emptyDir": { "medium": "Memory", "sizeLimit": "4Mi" } },
        { "name": "cfg", "configMap": { "name": "app", "defaultMode": 0o640, "items": [
            { "key": "app.conf", "path": "conf/app.conf", "mode": 0o600 },
            { "key": "extra", "path": "extra.txt" },
        ] } },
        { "name": "creds", "secret": { "secretName": "creds", "defaultMode": 0o400 } },
        { "name": "info", "downwardAPI": { "items": [
            { "path": "name", "fieldRef": { "fieldPath": "metadata.name" } },
            { "path": "labels", "fieldRef": { "fieldPath": "metadata.labels" } },
            { "path": "cpu", "resourceFieldRef": {
                "containerName": "writer", "resource": "limits.cpu", "divisor": "1m" } },
        ] } },
        { "name": "host", "hostPath": { "path": host_dir.to_str().unwrap(), "type": "DirectoryOrCreate" } },
    ]);
    let writer_json = json!({
        "name": "writer",
        "image": "busybox",
        "resources": { "limits": { "cpu": "250m" } },
        "volumeMounts": [
            { "name": "scratch", "mountPath": "/scratch" },
            { "name": "scratch", "mountPath": "/logs", "subPath": "logs" },
            { "name": "cache", "mountPath": "/cache" },
            { "name": "cfg", "mountPath": "/etc/app" },
            { "name": "creds", "mountPath": "/creds" },
            { "name": "info", "mountPath": "/etc/podinfo" },
            { "name": "host", "mountPath": "/host", "readOnly": true },
        ],
    });
    let reader_json = json!({
        "name": "reader",
        "image": "busybox",
        "volumeMounts": [{ "name": "scratch", "mountPath": "/data", "readOnly": true }],
    });
    let spec = serde_json::from_value(json!({
        "containers": [writer_json, reader_json],
        "volumes": volumes_json,
    }))
    .expect("pod spec");
    let data = VolumeData {
        config_maps: [(
            "app".to_owned(),
            [
                ("app.conf".to_owned(), b"listen 80".to_vec()),
                ("extra".to_owned(), b"more".to_vec()),
            ]
            .into(),
        )]
        .into(),
        secrets: [(
            "creds".to_owned(),
            [("password".to_owned(), b"hunter2".to_vec())].into(),
        )]
        .into(),
        service_account_token: String::new(),
        ..Default::default()
    };
    let labels: BTreeMap<String, String> = [
        ("app".to_owned(), "web".to_owned()),
        ("tier".to_owned(), "front".to_owned()),
    ]
    .into();
    let annotations = BTreeMap::new();
    let pod = PodInfo {
        name: "web-0",
        namespace: "prod",
        uid: "uid-1",
        labels: &labels,
        annotations: &annotations,
        node_name: "node-1",
        host_ip: "127.0.0.1",
        node_cpu_millis: 2000,
        node_memory_bytes: 1 << 30,
    };

    let prepared: Prepared =
        volumes::prepare(&pod_dir, &pod, &spec, &data, Path::new("/nonexistent")).expect("prepare");
    std::fs::write(host_dir.join("on-host"), "from the host").expect("host file");
    let writer = serde_json::from_value(writer_json).expect("container");
    let mounts = prepared.mounts_for(&writer).expect("writer mounts");
    assert_eq!(mounts.len(), 7);

    let out = env.run(
        "writer",
        &mounts,
        r#"
        echo "app=$(cat /etc/app/conf/app.conf)"
        echo "extra=$(cat /etc/app/extra.txt)"
        echo "password=$(cat /creds/password)"
        echo "ls_app=$(ls -lnL /etc/app/conf/app.conf)"
        echo "ls_extra=$(ls -lnL /etc/app/extra.txt)"
        echo "ls_password=$(ls -lnL /creds/password)"
        echo "name=$(cat /etc/podinfo/name)"
        echo "cpu=$(cat /etc/podinfo/cpu)"
        echo "host=$(cat /host/on-host)"
        echo "ls_scratch=$(ls -lnd /scratch)"
        echo shared > /scratch/hello && echo "scratch=written"
        echo log > /logs/l && echo "logs=written"
        echo mem > /cache/m && echo "cache=written"
        for d in /host /etc/app /creds /etc/podinfo; do
            if echo x > $d/x 2>/dev/null; then echo "write_$d=ok"; else echo "write_$d=refused"; fi
        done
        "#,
    );
    let f = fields(&out);
    let get = |k: &str| {
        f.get(k)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("no {k} in:\n{out}"))
    };
    assert_eq!(get("app"), "listen 80");
    assert_eq!(get("extra"), "more");
    assert_eq!(get("password"), "hunter2");
    assert!(
        get("ls_app").starts_with("-rw-------"),
        "item mode 0600: {out}"
    );
    assert!(
        get("ls_extra").starts_with("-rw-r-----"),
        "defaultMode 0640: {out}"
    );
    assert!(
        get("ls_password").starts_with("-r--------"),
        "secret defaultMode 0400: {out}"
    );
    assert_eq!(get("name"), "web-0");
    assert_eq!(get("cpu"), "250");
    assert_eq!(get("host"), "from the host");
    assert!(
        get("ls_scratch").starts_with("drwxrwxrwx"),
        "emptyDir 0777: {out}"
    );
    assert_eq!(get("scratch"), "written");
    assert_eq!(get("logs"), "written");
    assert_eq!(get("cache"), "written");
    for d in ["/host", "/etc/app", "/creds", "/etc/podinfo"] {
        assert_eq!(
            get(&format!("write_{d}")),
            "refused",
            "{d} is read-only: {out}"
        );
    }

    // On the host: what the container wrote, where it should be.
    let scratch = prepared.host_path("scratch").expect("scratch").to_owned();
    assert_eq!(
        std::fs::read_to_string(scratch.join("hello")).unwrap(),
        "shared\n"
    );
    assert_eq!(
        std::fs::read_to_string(scratch.join("logs/l")).unwrap(),
        "log\n"
    );
    let cache = prepared.host_path("cache").expect("cache").to_owned();
    assert!(tmpfs_mounted_at(&cache));
    assert_eq!(std::fs::read_to_string(cache.join("m")).unwrap(), "mem\n");
    assert!(!host_dir.join("x").exists());
    let info = prepared.host_path("info").expect("info");
    assert_eq!(
        std::fs::read_to_string(info.join("labels")).unwrap(),
        "app=\"web\"\ntier=\"front\""
    );

    // The agent restarts: prepare again keeps everything; a second container
    // sees what the first wrote, through a read-only mount.
    let again = volumes::prepare(&pod_dir, &pod, &spec, &data, Path::new("/nonexistent"))
        .expect("prepare again");
    assert_eq!(again, prepared);
    let reader = serde_json::from_value(reader_json).expect("container");
    let out = env.run(
        "reader",
        &again.mounts_for(&reader).expect("reader mounts"),
        r#"
        echo "hello=$(cat /data/hello)"
        echo "log=$(cat /data/logs/l)"
        if echo x > /data/x 2>/dev/null; then echo "write=ok"; else echo "write=refused"; fi
        "#,
    );
    let f = fields(&out);
    assert_eq!(f.get("hello").map(String::as_str), Some("shared"), "{out}");
    assert_eq!(f.get("log").map(String::as_str), Some("log"), "{out}");
    assert_eq!(f.get("write").map(String::as_str), Some("refused"), "{out}");

    volumes::cleanup(&pod_dir).expect("cleanup");
    assert!(!pod_dir.join("volumes").exists());
    assert!(!tmpfs_mounted_at(&cache));
    assert_eq!(
        std::fs::read_to_string(host_dir.join("on-host")).unwrap(),
        "from the host",
        "hostPath content is left alone"
    );
    drop(guard);
}
