//! Fixtures shared by the unit tests of the volume modules.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::PodSpec;
use serde_json::{Value, json};

use super::tmpfs::unescape_mountinfo;
use super::{PodInfo, Prepared, VolumeData, cleanup, prepare};

/// A pod directory that is cleaned up (tmpfs unmounted) even when a test fails.
pub(super) struct PodDir(tempfile::TempDir);

impl PodDir {
    pub(super) fn new() -> Self {
        Self(tempfile::tempdir().expect("tempdir"))
    }
    pub(super) fn path(&self) -> &Path {
        self.0.path()
    }
    pub(super) fn volume(&self, name: &str) -> PathBuf {
        self.path().join("volumes").join(name)
    }
}

impl Drop for PodDir {
    fn drop(&mut self) {
        let _ = cleanup(self.0.path());
    }
}

pub(super) fn labels() -> BTreeMap<String, String> {
    [
        ("app".to_owned(), "web".to_owned()),
        ("tier".to_owned(), "a \"quoted\"\nvalue".to_owned()),
    ]
    .into()
}

pub(super) fn info<'a>(
    labels: &'a BTreeMap<String, String>,
    annotations: &'a BTreeMap<String, String>,
) -> PodInfo<'a> {
    PodInfo {
        name: "web-0",
        namespace: "prod",
        uid: "0b3c-uid",
        labels,
        annotations,
        node_name: "node-1",
        host_ip: "10.0.0.7",
        node_cpu_millis: 4000,
        node_memory_bytes: 8 << 30,
    }
}

pub(super) fn pod(json: Value) -> PodSpec {
    serde_json::from_value(json).expect("pod spec")
}

pub(super) fn data() -> VolumeData {
    VolumeData {
        config_maps: [(
            "app".to_owned(),
            [
                ("app.conf".to_owned(), b"listen 80\n".to_vec()),
                ("extra".to_owned(), b"x".to_vec()),
            ]
            .into(),
        )]
        .into(),
        secrets: [(
            "creds".to_owned(),
            [("password".to_owned(), b"hunter2".to_vec())].into(),
        )]
        .into(),
        service_account_token: "tok.en".into(),
        claims: BTreeMap::new(),
    }
}

pub(super) fn mode_of(path: &Path) -> u32 {
    fs::metadata(path).expect("metadata").permissions().mode() & 0o7777
}

pub(super) fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The tmpfs mounts of this process's mount namespace at `dir`.
pub(super) fn tmpfs_at(dir: &Path) -> Vec<String> {
    let dir = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
    fs::read_to_string("/proc/self/mounts")
        .expect("mounts")
        .lines()
        .filter(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            f.len() > 3 && f[2] == "tmpfs" && Path::new(&*unescape_mountinfo(f[1])) == dir
        })
        .map(str::to_owned)
        .collect()
}

pub(super) fn one_container(mounts: Value, volumes: Value) -> PodSpec {
    pod(json!({
        "containers": [{ "name": "main", "image": "busybox", "volumeMounts": mounts }],
        "volumes": volumes,
    }))
}

/// [`prepare`] with no EBS device directory (no claims in these tests).
pub(super) fn prepare_with(
    dir: &Path,
    info: &PodInfo<'_>,
    spec: &PodSpec,
    data: &VolumeData,
) -> Result<Prepared, super::VolumeError> {
    prepare(dir, info, spec, data, Path::new("/nonexistent"))
}

pub(super) fn prepare_one(dir: &PodDir, spec: &PodSpec) -> Prepared {
    let (l, a) = (labels(), BTreeMap::new());
    prepare_with(dir.path(), &info(&l, &a), spec, &data()).expect("prepare")
}
