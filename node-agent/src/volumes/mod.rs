//! Pod volumes on the host and their mounts into containers.
//!
//! The control plane resolves what a pod's volumes refer to (ConfigMaps, Secrets,
//! the service account token) into [`VolumeData`]; the agent materialises every
//! volume under `<pod_dir>/volumes/<name>` ([`prepare`]), turns each container's
//! `volumeMounts` into OCI bind mounts ([`Prepared::mounts_for`]) and removes it all
//! once the pod is gone ([`cleanup`]). [`validate`] checks everything that can be
//! checked without touching the disk, so that a pod that cannot run fails before
//! anything is created.
//!
//! # Kubernetes parity
//! What a container sees follows the kubelet:
//! - `emptyDir`: a directory of mode 0777 (or `mode`) that outlives container and
//!   agent restarts; `medium: Memory` is a tmpfs, `size=` its `sizeLimit` when set.
//! - `configMap`, `secret`, `downwardAPI`, `projected`: the kubelet's atomic writer
//!   layout. The files live in a timestamped directory (`..2025_01_31_12_00_00.123456789`),
//!   `..data` is a symlink to it and every top-level name is a symlink
//!   `name -> ..data/name`. New content goes into a fresh directory and `..data` is
//!   swapped by a rename, so a container sees the old set of files or the new one,
//!   never a mix. Files default to mode 0644. `secret`, `downwardAPI` and `projected`
//!   volumes are tmpfs-backed, as the kubelet's are, so secrets never reach the disk.
//!   These volumes are always mounted read-only.
//! - `hostPath`: checked per `type`, created for `DirectoryOrCreate` (0755) and
//!   `FileOrCreate` (0644, parent not created); with no `type`, a missing path is
//!   created as a directory, as containerd's CRI plugin does. Never removed.
//! - `securityContext.fsGroup`: files and directories of emptyDir roots and of the
//!   volumes above get the group, `g+r` (files) and `g+rx`, setgid (directories), as
//!   the kubelet's `SetVolumeOwnership` does for read-only volumes (`g+rwx` for emptyDir).
//! - `subPath`: resolved inside the volume (a symlink leading out is refused); missing
//!   directories are created in emptyDir and hostPath volumes with the mode and group
//!   of the volume's root.
//! - Mounts are ordered by the depth of their destination, as containerd's CRI
//!   plugin orders them, so `/a` is mounted before `/a/b`.
//!
//! # Departures and limitations
//! - downwardAPI files may also name `spec.nodeName` and `status.hostIP`, which
//!   Kubernetes allows only in environment variables.
//! - The `sizeLimit` of a disk-backed emptyDir is not enforced (the kubelet evicts the
//!   pod that exceeds it).
//! - `serviceAccountToken` projects the one token the control plane resolved:
//!   `audience` and `expirationSeconds` are not honoured and the token is not rotated.
//!   Content is written when [`prepare`] runs; a changed ConfigMap is seen when it runs
//!   again (there is no sync loop).
//! - A subPath is checked, then handed to the runtime by path: a container that swaps
//!   a directory of a shared emptyDir for a symlink between the check and runc's mount
//!   could redirect the mount. The kubelet closes that window by bind-mounting a file
//!   descriptor it holds (CVE-2017-1002101).
//! - Not supported, and refused by [`validate`] naming the field: other volume types,
//!   `subPathExpr`, `mountPropagation: Bidirectional`, `recursiveReadOnly: Enabled`
//!   (runc 1.1 has no recursive read-only mounts), hugepages emptyDirs,
//!   `clusterTrustBundle` and `podCertificate` projections, `volumeDevices`,
//!   `ephemeral-storage` and hugepages in `resourceFieldRef`.
//!
//! # Layout
//! - `mod.rs`: the public types, [`prepare`] and [`cleanup`].
//! - `validation.rs`: [`validate`] and the path and name checks the other modules share.
//! - `source.rs`: a `Volume`, checked and classified as what the agent does with it.
//! - `empty_dir.rs`, `host_path.rs`, `files.rs`: each kind of volume on the host;
//!   `files.rs` decides the files of configMap, secret, downwardAPI and projected
//!   volumes, `downward.rs` the content of downwardAPI files and `atomic_writer.rs`
//!   writes them in the kubelet's layout.
//! - `mounts.rs`: volumeMounts checked and turned into OCI mounts, subPaths resolved.
//! - `tmpfs.rs`, `disk.rs`: tmpfs mounts and the mount table; directories and owners.
//! - `error.rs`: [`VolumeError`].

mod atomic_writer;
mod claim;
mod disk;
mod downward;
mod empty_dir;
mod error;
mod files;
mod host_path;
mod mounts;
mod resolv;
mod source;
#[cfg(test)]
mod test_support;
mod tmpfs;
mod validation;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::PodSpec;
use nix::errno::Errno;
use nix::mount::MntFlags;
use orca_proto::types::v1 as pb;

pub use self::claim::{ClaimSource, ClaimVolume, ebs_device_link, wait_attached};
pub use self::error::VolumeError;
pub use self::validation::validate;

use self::disk::make_dir;
use self::error::io_err;
use self::files::Files;
use self::source::{Source, classify};
use self::tmpfs::mount_points_under;
use self::validation::fs_group;

/// The directory under a pod's directory that holds its volumes.
const VOLUMES_DIR: &str = "volumes";
/// Mode of `<pod_dir>/volumes` (the kubelet's `pods/<uid>/volumes` is 0750).
const VOLUMES_DIR_MODE: u32 = 0o750;
/// Directories the agent makes: roots of file volumes, directories inside them,
/// `DirectoryOrCreate` host paths.
const DIR_MODE: u32 = 0o755;

/// One ConfigMap's or Secret's data: key → content.
pub type KeyValues = BTreeMap<String, Vec<u8>>;

/// What the control plane resolved for a pod's configMap, secret and projected
/// volumes. `Debug` shows names and keys, never values.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct VolumeData {
    /// ConfigMaps by name.
    pub config_maps: BTreeMap<String, KeyValues>,
    /// Secrets by name, values decoded.
    pub secrets: BTreeMap<String, KeyValues>,
    /// The pod's service account token; empty when there is none.
    pub service_account_token: String,
    /// Where each persistentVolumeClaim volume's storage is, by volume name.
    pub claims: BTreeMap<String, ClaimVolume>,
}

impl fmt::Debug for VolumeData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys = |m: &BTreeMap<String, KeyValues>| -> BTreeMap<String, Vec<String>> {
            m.iter()
                .map(|(name, kv)| (name.clone(), kv.keys().cloned().collect()))
                .collect()
        };
        f.debug_struct("VolumeData")
            .field("config_maps", &keys(&self.config_maps))
            .field("secrets", &keys(&self.secrets))
            .field(
                "service_account_token",
                &if self.service_account_token.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .field("claims", &self.claims)
            .finish()
    }
}

impl From<pb::VolumeData> for VolumeData {
    fn from(data: pb::VolumeData) -> Self {
        let map = |m: HashMap<String, pb::KeyValues>| {
            m.into_iter()
                .map(|(name, kv)| (name, kv.data.into_iter().collect()))
                .collect()
        };
        Self {
            config_maps: map(data.config_maps),
            secrets: map(data.secrets),
            service_account_token: data.service_account_token,
            claims: data
                .claims
                .into_iter()
                .map(|(volume, c)| (volume, c.into()))
                .collect(),
        }
    }
}

/// What downwardAPI files can show of the pod and its node.
#[derive(Debug, Clone, Copy)]
pub struct PodInfo<'a> {
    /// `metadata.name`.
    pub name: &'a str,
    /// `metadata.namespace`.
    pub namespace: &'a str,
    /// `metadata.uid`.
    pub uid: &'a str,
    /// `metadata.labels`.
    pub labels: &'a BTreeMap<String, String>,
    /// `metadata.annotations`.
    pub annotations: &'a BTreeMap<String, String>,
    /// `spec.nodeName`.
    pub node_name: &'a str,
    /// `status.hostIP`.
    pub host_ip: &'a str,
    /// The node's allocatable CPU in millicores: what `limits.cpu` shows for a
    /// container without a CPU limit (the kubelet's rule).
    pub node_cpu_millis: u64,
    /// The node's allocatable memory in bytes: what `limits.memory` shows for a
    /// container without a memory limit.
    pub node_memory_bytes: u64,
}

/// The volumes of a pod, set up on the host by [`prepare`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prepared {
    volumes: BTreeMap<String, PreparedVolume>,
    /// The pod's `/etc/resolv.conf`, from its `dnsConfig`.
    resolv_conf: Option<PathBuf>,
}

/// One volume of [`Prepared`].
#[derive(Debug, Clone, PartialEq, Eq)]
struct PreparedVolume {
    /// Where the volume is on the host.
    path: PathBuf,
    kind: Kind,
}

/// What containers may do to a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Writable unless the mount is readOnly; subPaths are created.
    EmptyDir,
    /// As EmptyDir, on a path of the host.
    HostPath,
    /// A persistentVolumeClaim's storage: as EmptyDir, read-only for every
    /// container when the volume says `readOnly`.
    Claim { read_only: bool },
    /// configMap, secret, downwardAPI, projected: always read-only.
    Files,
}

impl Prepared {
    /// Where a volume is on the host (for a hostPath volume, its path).
    pub fn host_path(&self, volume: &str) -> Option<&Path> {
        self.volumes.get(volume).map(|v| v.path.as_path())
    }
}

/// Materialises every volume of the pod under `pod_dir/volumes/<name>` (see the
/// module docs for each type) after [`validate`]; EBS volumes of claims are looked
/// for under `ebs_device_dir`. Idempotent: calling it again for the same pod
/// (after an agent restart) keeps emptyDir content and tmpfs and EBS mounts, and
/// rewrites file volumes only when their content changed.
pub fn prepare(
    pod_dir: &Path,
    pod: &PodInfo<'_>,
    spec: &PodSpec,
    data: &VolumeData,
    ebs_device_dir: &Path,
) -> Result<Prepared, VolumeError> {
    validate(spec, data)?;
    let fs_group = fs_group(spec)?;
    let root = pod_dir.join(VOLUMES_DIR);
    make_dir(&root, VOLUMES_DIR_MODE, None)
        .map_err(io_err("cannot create the pod's volume directory", &root))?;
    let mut prepared = Prepared::default();
    for v in spec.volumes.iter().flatten() {
        let name = v.name.as_str();
        let dir = root.join(name);
        let (path, kind) = match classify(v)? {
            Source::EmptyDir { memory, size, mode } => {
                empty_dir::prepare(name, &dir, memory, size, mode, fs_group)?;
                (dir, Kind::EmptyDir)
            }
            Source::HostPath { path, kind } => {
                host_path::check(name, Path::new(path), kind)?;
                (PathBuf::from(path), Kind::HostPath)
            }
            Source::Claim { claim, read_only } => {
                let c = claim::check(name, claim, &data.claims)?;
                let path = claim::prepare(name, c, &dir, ebs_device_dir, fs_group)?;
                (path, Kind::Claim { read_only })
            }
            Source::Files {
                projections,
                default_mode,
                default_user,
                tmpfs,
            } => {
                let files = Files {
                    volume: name,
                    default_mode,
                    default_user,
                    fs_group,
                };
                files.write(&dir, &projections, tmpfs, data, pod, spec)?;
                (dir, Kind::Files)
            }
        };
        prepared
            .volumes
            .insert(name.to_owned(), PreparedVolume { path, kind });
    }
    prepared.resolv_conf = resolv::write(pod_dir, spec.dns_config.as_ref())?;
    Ok(prepared)
}

/// Writes the pod's file volumes (ConfigMaps, Secrets, projected, downward
/// API) again from `data`, leaving every other volume as it is: a changed one
/// gets a new data directory published atomically, an unchanged one is not
/// touched.
pub fn update_files(
    pod_dir: &Path,
    pod: &PodInfo<'_>,
    spec: &PodSpec,
    data: &VolumeData,
) -> Result<(), VolumeError> {
    let fs_group = fs_group(spec)?;
    let root = pod_dir.join(VOLUMES_DIR);
    for v in spec.volumes.iter().flatten() {
        if let Source::Files {
            projections,
            default_mode,
            default_user,
            tmpfs,
        } = classify(v)?
        {
            let files = Files {
                volume: v.name.as_str(),
                default_mode,
                default_user,
                fs_group,
            };
            files.write(&root.join(&v.name), &projections, tmpfs, data, pod, spec)?;
        }
    }
    Ok(())
}

/// Unmounts the pod's tmpfs volumes and removes `pod_dir/volumes` (hostPath targets
/// live elsewhere and are left alone). Idempotent; nothing is removed while
/// something under the directory is still mounted.
pub fn cleanup(pod_dir: &Path) -> Result<(), VolumeError> {
    let root = pod_dir.join(VOLUMES_DIR);
    let real = match fs::canonicalize(&root) {
        Ok(real) => real,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(io_err("cannot resolve the pod's volume directory", &root)(
                e,
            ));
        }
    };
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").map_err(io_err(
        "cannot read the mount table",
        Path::new("/proc/self/mountinfo"),
    ))?;
    for point in mount_points_under(&mountinfo, &real) {
        match nix::mount::umount2(&point, MntFlags::MNT_DETACH) {
            Ok(()) | Err(Errno::EINVAL | Errno::ENOENT) => {}
            Err(source) => {
                return Err(VolumeError::Unmount {
                    path: point,
                    source,
                });
            }
        }
    }
    match fs::remove_dir_all(&root) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("cannot remove the pod's volumes", &root)(e)),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use serde_json::json;

    use super::*;
    use crate::volumes::test_support::*;

    #[test]
    fn fs_group_owns_volumes_as_the_kubelet_sets_it() {
        let dir = PodDir::new();
        let mut spec = one_container(
            json!([{ "name": "scratch", "mountPath": "/s", "subPath": "sub" }]),
            json!([
                { "name": "scratch", "emptyDir": {} },
                { "name": "creds", "secret": { "secretName": "creds", "defaultMode": 0o400, "items": [
                    { "key": "password", "path": "dir/p" },
                ] } },
            ]),
        );
        spec.security_context = Some(k8s_openapi::api::core::v1::PodSecurityContext {
            fs_group: Some(4242),
            ..Default::default()
        });
        let prepared = prepare_one(&dir, &spec);
        let scratch = dir.volume("scratch");
        assert_eq!(mode_of(&scratch), 0o2777);
        assert_eq!(fs::metadata(&scratch).unwrap().gid(), 4242);
        let secret = dir.volume("creds").join("dir/p");
        assert_eq!(mode_of(&secret), 0o440, "0400 | g+r");
        assert_eq!(fs::metadata(&secret).unwrap().gid(), 4242);
        assert_eq!(mode_of(&dir.volume("creds").join("dir")), 0o2755);
        prepared.mounts_for(&spec.containers[0]).unwrap();
        let sub = scratch.join("sub");
        assert_eq!(
            (mode_of(&sub), fs::metadata(&sub).unwrap().gid()),
            (0o2777, 4242)
        );
        let before = fs::read_link(dir.volume("creds").join("..data")).unwrap();
        prepare_one(&dir, &spec);
        assert_eq!(
            fs::read_link(dir.volume("creds").join("..data")).unwrap(),
            before,
            "unchanged with fsGroup too"
        );
    }

    #[test]
    fn prepare_validates_before_touching_the_disk() {
        let dir = PodDir::new();
        let spec = one_container(
            json!([]),
            json!([{ "name": "s", "emptyDir": {} }, { "name": "c", "configMap": { "name": "nope" } }]),
        );
        let (l, a) = (labels(), BTreeMap::new());
        assert!(prepare_with(dir.path(), &info(&l, &a), &spec, &data()).is_err());
        assert!(!dir.path().join("volumes").exists());
        cleanup(dir.path()).expect("nothing to clean");
    }

    #[test]
    fn volume_data_converts_from_the_wire_and_hides_values_in_debug() {
        let wire = pb::VolumeData {
            config_maps: [(
                "app".to_owned(),
                pb::KeyValues {
                    data: [("k".to_owned(), b"v".to_vec())].into(),
                },
            )]
            .into(),
            secrets: [(
                "s".to_owned(),
                pb::KeyValues {
                    data: [("password".to_owned(), b"hunter2".to_vec())].into(),
                },
            )]
            .into(),
            service_account_token: "secret-token".into(),
            ..Default::default()
        };
        let data = VolumeData::from(wire);
        assert_eq!(data.config_maps["app"]["k"], b"v");
        assert_eq!(data.secrets["s"]["password"], b"hunter2");
        assert_eq!(data.service_account_token, "secret-token");
        let shown = format!("{data:?}");
        assert!(shown.contains("password"), "{shown}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("secret-token"),
            "{shown}"
        );
    }
}
