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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::{
    Container, DownwardAPIVolumeFile, KeyToPath, PodSpec, ResourceFieldSelector, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use orca_proto::types::v1 as pb;
use serde_json::{Value, json};

use crate::spec::parse_quantity;

/// The directory under a pod's directory that holds its volumes.
const VOLUMES_DIR: &str = "volumes";
/// Mode of `<pod_dir>/volumes` (the kubelet's `pods/<uid>/volumes` is 0750).
const VOLUMES_DIR_MODE: u32 = 0o750;
/// Kubernetes' default mode of configMap, secret, downwardAPI and projected files.
const DEFAULT_FILE_MODE: u32 = 0o644;
/// Kubernetes' default mode of an emptyDir.
const EMPTY_DIR_MODE: u32 = 0o777;
/// Directories the agent makes: roots of file volumes, directories inside them,
/// `DirectoryOrCreate` host paths.
const DIR_MODE: u32 = 0o755;
/// A file made for a `FileOrCreate` host path.
const NEW_FILE_MODE: u32 = 0o644;
/// Largest file mode Kubernetes accepts in `defaultMode` and `mode`.
const MAX_FILE_MODE: i32 = 0o777;
/// Largest emptyDir `mode`.
const MAX_DIR_MODE: i32 = 0o1777;
/// What fsGroup adds to files of read-only volumes (the kubelet's `roMask`).
const FS_GROUP_FILE_BITS: u32 = 0o440;
/// What fsGroup adds to directories of read-only volumes (`roMask | execMask | setgid`).
const FS_GROUP_RO_DIR_BITS: u32 = 0o2550;
/// What fsGroup adds to an emptyDir's root (`rwMask | execMask | setgid`).
const FS_GROUP_RW_DIR_BITS: u32 = 0o2770;
/// The symlink to the current data directory of a file volume.
const DATA_LINK: &str = "..data";
/// The new `..data` symlink before it is renamed over the old one.
const DATA_LINK_TMP: &str = "..data_tmp";
/// Kubernetes' bounds of `serviceAccountToken.expirationSeconds`.
const TOKEN_EXPIRATION_SECONDS: std::ops::RangeInclusive<i64> = 600..=(1 << 32);

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

/// Why a pod's volumes cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// A field the agent does not implement; failing beats ignoring it.
    #[error("{field} is not supported by this agent yet")]
    Unsupported {
        /// The spec path, e.g. `volumes[data].nfs`.
        field: String,
    },
    /// A malformed field.
    #[error("{field}: {reason}")]
    Invalid {
        /// The spec path, e.g. `volumes[data].hostPath.type`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Two volumes share a name.
    #[error("volume name {volume:?} is used twice")]
    DuplicateVolume {
        /// Volume name.
        volume: String,
    },
    /// A volumeMount names a volume the pod does not have.
    #[error("container {container:?} mounts unknown volume {volume:?} at {mount_path:?}")]
    UnknownVolume {
        /// Container name.
        container: String,
        /// The volume named.
        volume: String,
        /// The mount's `mountPath`.
        mount_path: String,
    },
    /// A `defaultMode` or `mode` out of range.
    #[error("{field}: {mode} (decimal) is not a mode between 0 and {max:#o}")]
    BadMode {
        /// The spec path.
        field: String,
        /// The value found.
        mode: i32,
        /// The largest mode allowed.
        max: i32,
    },
    /// A file path in a volume (item `path`, or a key used as a file name) that is
    /// absolute, contains `..` or starts with `..`.
    #[error("{field}: {path:?} is not a relative path without '..' that does not start with '..'")]
    BadPath {
        /// The spec path (or the key's source).
        field: String,
        /// The path found.
        path: String,
    },
    /// A subPath that is absolute or contains `..`.
    #[error(
        "container {container:?}: subPath {sub_path:?} of volume {volume:?} is not a relative path without '..'"
    )]
    BadSubPath {
        /// Container name.
        container: String,
        /// Volume name.
        volume: String,
        /// The subPath found.
        sub_path: String,
    },
    /// A subPath that resolves (through a symlink) outside its volume, or not at all.
    #[error(
        "container {container:?}: subPath {sub_path:?} of volume {volume:?} does not resolve to a path inside the volume"
    )]
    SubPathOutside {
        /// Container name.
        container: String,
        /// Volume name.
        volume: String,
        /// The subPath.
        sub_path: String,
    },
    /// A subPath missing in a volume whose content the agent does not let containers create.
    #[error("container {container:?}: subPath {sub_path:?} does not exist in volume {volume:?}")]
    SubPathMissing {
        /// Container name.
        container: String,
        /// Volume name.
        volume: String,
        /// The subPath.
        sub_path: String,
    },
    /// A non-optional ConfigMap or Secret the control plane did not provide.
    #[error("volume {volume:?}: {kind} {name:?} not found")]
    MissingSource {
        /// Volume name.
        volume: String,
        /// `configMap` or `secret`.
        kind: &'static str,
        /// The ConfigMap's or Secret's name.
        name: String,
    },
    /// A key listed in `items` that a non-optional ConfigMap or Secret lacks.
    #[error("volume {volume:?}: key {key:?} not found in {kind} {name:?}")]
    MissingKey {
        /// Volume name.
        volume: String,
        /// `configMap` or `secret`.
        kind: &'static str,
        /// The ConfigMap's or Secret's name.
        name: String,
        /// The key.
        key: String,
    },
    /// A serviceAccountToken projection for a pod given no token.
    #[error("volume {volume:?}: no service account token was provided for the pod")]
    MissingToken {
        /// Volume name.
        volume: String,
    },
    /// A hostPath that is not what its `type` requires.
    #[error("volume {volume:?}: hostPath {path:?} is not {expected}")]
    HostPathType {
        /// Volume name.
        volume: String,
        /// The host path.
        path: String,
        /// What it should be, e.g. `an existing directory`.
        expected: &'static str,
    },
    /// A filesystem operation failed.
    #[error("{context}: {}", path.display())]
    Io {
        /// What was being done, naming the volume.
        context: String,
        /// The path it was done to.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A tmpfs could not be mounted.
    #[error("volume {volume:?}: cannot mount a tmpfs at {}", path.display())]
    Mount {
        /// Volume name.
        volume: String,
        /// The mount point.
        path: PathBuf,
        /// Cause.
        #[source]
        source: Errno,
    },
    /// A volume's mount could not be unmounted during cleanup.
    #[error("cannot unmount {}", path.display())]
    Unmount {
        /// The mount point.
        path: PathBuf,
        /// Cause.
        #[source]
        source: Errno,
    },
}

/// The volumes of a pod, set up on the host by [`prepare`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prepared {
    volumes: BTreeMap<String, PreparedVolume>,
}

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
    /// configMap, secret, downwardAPI, projected: always read-only.
    Files,
}

impl Prepared {
    /// Where a volume is on the host (for a hostPath volume, its path).
    pub fn host_path(&self, volume: &str) -> Option<&Path> {
        self.volumes.get(volume).map(|v| v.path.as_path())
    }

    /// The OCI mounts (`{destination, type: "bind", source, options}`) of one
    /// container's volumeMounts, ordered by destination depth. A subPath is resolved
    /// inside its volume (and created in emptyDir and hostPath volumes when missing,
    /// as the kubelet does). configMap, secret, downwardAPI and projected volumes are
    /// always read-only.
    pub fn mounts_for(&self, container: &Container) -> Result<Vec<Value>, VolumeError> {
        let prefix = format!("containers[{}]", container.name);
        let mut mounts = Vec::new();
        for (i, m) in container.volume_mounts.iter().flatten().enumerate() {
            let plan = check_mount(&prefix, &container.name, i, m)?;
            let volume = self
                .volumes
                .get(&m.name)
                .ok_or_else(|| VolumeError::UnknownVolume {
                    container: container.name.clone(),
                    volume: m.name.clone(),
                    mount_path: m.mount_path.clone(),
                })?;
            let source = match &plan.sub_path {
                Some(sub) => volume.resolve(&container.name, m, sub)?,
                None => volume.path.clone(),
            };
            let source = source
                .to_str()
                .ok_or_else(|| VolumeError::Invalid {
                    field: format!("{prefix}.volumeMounts[{i}]"),
                    reason: format!("source {} is not UTF-8", source.display()),
                })?
                .to_owned();
            let read_only = m.read_only.unwrap_or(false) || volume.kind == Kind::Files;
            let mut options = vec![
                "rbind".to_owned(),
                plan.propagation.to_owned(),
                if read_only { "ro" } else { "rw" }.to_owned(),
            ];
            options.extend(plan.bind_options);
            mounts.push((
                plan.depth,
                json!({
                    "destination": plan.destination,
                    "type": "bind",
                    "source": source,
                    "options": options,
                }),
            ));
        }
        mounts.sort_by_key(|(depth, _)| *depth);
        Ok(mounts.into_iter().map(|(_, m)| m).collect())
    }
}

impl PreparedVolume {
    /// The host path of `sub` inside this volume, created when missing and allowed.
    fn resolve(
        &self,
        container: &str,
        m: &VolumeMount,
        sub: &Path,
    ) -> Result<PathBuf, VolumeError> {
        let raw = m.sub_path.clone().unwrap_or_default();
        let outside = || VolumeError::SubPathOutside {
            container: container.to_owned(),
            volume: m.name.clone(),
            sub_path: raw.clone(),
        };
        let io = |path: &Path, what: &str| {
            let context = format!(
                "container {container:?}: cannot {what} subPath {raw:?} of volume {:?}",
                m.name
            );
            let path = path.to_owned();
            move |source| VolumeError::Io {
                context,
                path,
                source,
            }
        };
        let base = fs::canonicalize(&self.path).map_err(io(&self.path, "resolve"))?;
        let mut existing = base.join(sub);
        let mut missing: Vec<OsString> = Vec::new();
        loop {
            match fs::symlink_metadata(&existing) {
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    let Some(name) = existing.file_name() else {
                        return Err(outside());
                    };
                    missing.push(name.to_owned());
                    existing.pop();
                }
                Err(e) => return Err(io(&existing, "inspect")(e)),
            }
        }
        let inside = |path: &Path| match fs::canonicalize(path) {
            Ok(real) if real.starts_with(&base) => Ok(real),
            _ => Err(outside()),
        };
        let mut dir = inside(&existing)?;
        if missing.is_empty() {
            return Ok(dir);
        }
        if self.kind == Kind::Files {
            return Err(VolumeError::SubPathMissing {
                container: container.to_owned(),
                volume: m.name.clone(),
                sub_path: raw.clone(),
            });
        }
        // The kubelet gives a new subPath directory the mode of the volume's root, so
        // that emptyDir's 0777 and fsGroup's g+rwx carry over; the group follows too.
        let root = fs::metadata(&base).map_err(io(&base, "inspect"))?;
        let mode = root.permissions().mode() & 0o7777;
        for name in missing.iter().rev() {
            let next = dir.join(name);
            match fs::DirBuilder::new().mode(mode).create(&next) {
                Ok(()) => {
                    std::os::unix::fs::chown(&next, None, Some(root.gid()))
                        .map_err(io(&next, "chown"))?;
                    fs::set_permissions(&next, fs::Permissions::from_mode(mode))
                        .map_err(io(&next, "chmod"))?;
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io(&next, "create")(e)),
            }
            // Whatever raced in (a symlink) must still lead inside.
            dir = inside(&next)?;
        }
        Ok(dir)
    }
}

/// Checks the pod's volumes and every container's volumeMounts without touching
/// the disk: names, sources (only emptyDir, configMap, secret, downwardAPI,
/// projected and hostPath), modes, paths, subPaths, downward API fields, and that
/// `data` has every non-optional ConfigMap, Secret and key. The first problem found
/// is returned.
pub fn validate(spec: &PodSpec, data: &VolumeData) -> Result<(), VolumeError> {
    let fs_group = fs_group(spec)?;
    let empty = BTreeMap::new();
    let placeholder = PodInfo {
        name: "",
        namespace: "",
        uid: "",
        labels: &empty,
        annotations: &empty,
        node_name: "",
        host_ip: "",
        node_cpu_millis: 0,
        node_memory_bytes: 0,
    };
    let mut names = BTreeSet::new();
    for v in spec.volumes.iter().flatten() {
        if !is_dns_label(&v.name) {
            return Err(VolumeError::Invalid {
                field: format!("volumes[{}].name", v.name),
                reason: "must be a lowercase DNS-1123 label".into(),
            });
        }
        if !names.insert(v.name.as_str()) {
            return Err(VolumeError::DuplicateVolume {
                volume: v.name.clone(),
            });
        }
        if let Source::Files {
            projections,
            default_mode,
            default_user,
            ..
        } = classify(v)?
        {
            let files = Files {
                volume: &v.name,
                default_mode,
                default_user,
                fs_group,
            };
            files.collect(&projections, data, &placeholder, spec)?;
        }
    }
    for (kind, c) in containers(spec) {
        let prefix = format!("{kind}[{}]", c.name);
        if c.volume_devices.as_ref().is_some_and(|d| !d.is_empty()) {
            return Err(VolumeError::Unsupported {
                field: format!("{prefix}.volumeDevices"),
            });
        }
        let mut destinations = BTreeSet::new();
        for (i, m) in c.volume_mounts.iter().flatten().enumerate() {
            let plan = check_mount(&prefix, &c.name, i, m)?;
            if !names.contains(m.name.as_str()) {
                return Err(VolumeError::UnknownVolume {
                    container: c.name.clone(),
                    volume: m.name.clone(),
                    mount_path: m.mount_path.clone(),
                });
            }
            if !destinations.insert(plan.destination.clone()) {
                return Err(VolumeError::Invalid {
                    field: format!("{prefix}.volumeMounts[{i}].mountPath"),
                    reason: format!("{:?} is mounted twice", plan.destination),
                });
            }
        }
    }
    Ok(())
}

/// Materialises every volume of the pod under `pod_dir/volumes/<name>` (see the
/// module docs for each type) after [`validate`]. Idempotent: calling it again for
/// the same pod (after an agent restart) keeps emptyDir content and tmpfs mounts,
/// and rewrites file volumes only when their content changed.
pub fn prepare(
    pod_dir: &Path,
    pod: &PodInfo<'_>,
    spec: &PodSpec,
    data: &VolumeData,
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
                if memory {
                    mount_tmpfs(name, &dir, size, mode)?;
                } else {
                    make_dir(&dir, mode, None).map_err(volume_io(name, "create", &dir))?;
                }
                let mode = match fs_group {
                    Some(_) => mode | FS_GROUP_RW_DIR_BITS,
                    None => mode,
                };
                set_owner_and_mode(&dir, None, fs_group, mode).map_err(volume_io(
                    name,
                    "set the mode of",
                    &dir,
                ))?;
                (dir, Kind::EmptyDir)
            }
            Source::HostPath { path, kind } => {
                check_host_path(name, Path::new(path), kind)?;
                (PathBuf::from(path), Kind::HostPath)
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
                let payload = files.collect(&projections, data, pod, spec)?;
                let dir_mode = files.dir_mode();
                if tmpfs {
                    mount_tmpfs(name, &dir, None, dir_mode)?;
                } else {
                    make_dir(&dir, dir_mode, None).map_err(volume_io(name, "create", &dir))?;
                }
                set_owner_and_mode(&dir, None, fs_group, dir_mode).map_err(volume_io(
                    name,
                    "set the mode of",
                    &dir,
                ))?;
                write_atomic(name, &dir, &payload, dir_mode, fs_group)?;
                (dir, Kind::Files)
            }
        };
        prepared
            .volumes
            .insert(name.to_owned(), PreparedVolume { path, kind });
    }
    Ok(prepared)
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

// ---------------------------------------------------------------------------
// Classification: a Volume, checked, as what the agent does with it.

/// A volume, checked.
enum Source<'s> {
    EmptyDir {
        memory: bool,
        size: Option<u64>,
        mode: u32,
    },
    HostPath {
        path: &'s str,
        kind: HostPathType,
    },
    /// configMap, secret, downwardAPI, projected: files written by the agent.
    Files {
        projections: Vec<Projection<'s>>,
        default_mode: u32,
        default_user: Option<u32>,
        tmpfs: bool,
    },
}

/// One source of files.
enum Projection<'s> {
    Keys {
        kind: KeysKind,
        name: &'s str,
        items: Option<&'s [KeyToPath]>,
        optional: bool,
        /// Spec path of the source, e.g. `volumes[cfg].configMap`.
        field: String,
    },
    DownwardApi {
        items: &'s [DownwardAPIVolumeFile],
        field: String,
    },
    Token {
        path: &'s str,
        user: Option<u32>,
        field: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeysKind {
    ConfigMap,
    Secret,
}

impl KeysKind {
    fn name(self) -> &'static str {
        match self {
            Self::ConfigMap => "configMap",
            Self::Secret => "secret",
        }
    }
}

/// `hostPath.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostPathType {
    Unset,
    DirectoryOrCreate,
    Directory,
    FileOrCreate,
    File,
    Socket,
    CharDevice,
    BlockDevice,
}

/// The camelCase names of the fields set in a Kubernetes object.
fn set_fields<T: serde::Serialize>(value: &T) -> Vec<String> {
    match serde_json::to_value(value) {
        Ok(Value::Object(map)) => map.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

fn classify(v: &Volume) -> Result<Source<'_>, VolumeError> {
    let at = |f: &str| format!("volumes[{}].{f}", v.name);
    let invalid = |f: &str, reason: String| VolumeError::Invalid {
        field: at(f),
        reason,
    };
    let sources: Vec<String> = set_fields(v).into_iter().filter(|k| k != "name").collect();
    let kind = match sources.as_slice() {
        [one] => one.as_str(),
        [] => {
            return Err(VolumeError::Invalid {
                field: format!("volumes[{}]", v.name),
                reason: "no volume source is given".into(),
            });
        }
        many => {
            return Err(VolumeError::Invalid {
                field: format!("volumes[{}]", v.name),
                reason: format!("more than one volume source is given: {}", many.join(", ")),
            });
        }
    };
    if let Some(e) = &v.empty_dir {
        let memory = match e.medium.as_deref() {
            None | Some("") => false,
            Some("Memory") => true,
            Some(m) if m.starts_with("HugePages") => {
                return Err(VolumeError::Unsupported {
                    field: at("emptyDir.medium"),
                });
            }
            Some(m) => {
                return Err(invalid(
                    "emptyDir.medium",
                    format!("{m:?} is not \"\" or Memory"),
                ));
            }
        };
        let size = e
            .size_limit
            .as_ref()
            .map(|q| {
                parse_quantity(&q.0, false).ok_or_else(|| {
                    invalid(
                        "emptyDir.sizeLimit",
                        format!("{:?} is not a valid quantity", q.0),
                    )
                })
            })
            .transpose()?;
        if memory && size == Some(0) {
            // tmpfs reads size=0 as "unlimited".
            return Err(invalid(
                "emptyDir.sizeLimit",
                "must be positive for medium Memory".into(),
            ));
        }
        let mode = mode(e.mode, EMPTY_DIR_MODE, MAX_DIR_MODE, at("emptyDir.mode"))?;
        Ok(Source::EmptyDir { memory, size, mode })
    } else if let Some(h) = &v.host_path {
        if clean_absolute(&h.path).is_none() {
            return Err(invalid(
                "hostPath.path",
                format!("{:?} is not an absolute path without '..'", h.path),
            ));
        }
        let kind = match h.type_.as_deref() {
            None | Some("") => HostPathType::Unset,
            Some("DirectoryOrCreate") => HostPathType::DirectoryOrCreate,
            Some("Directory") => HostPathType::Directory,
            Some("FileOrCreate") => HostPathType::FileOrCreate,
            Some("File") => HostPathType::File,
            Some("Socket") => HostPathType::Socket,
            Some("CharDevice") => HostPathType::CharDevice,
            Some("BlockDevice") => HostPathType::BlockDevice,
            Some(t) => {
                return Err(invalid(
                    "hostPath.type",
                    format!("{t:?} is not a hostPath type"),
                ));
            }
        };
        Ok(Source::HostPath {
            path: &h.path,
            kind,
        })
    } else if let Some(c) = &v.config_map {
        if c.name.is_empty() {
            return Err(invalid("configMap.name", "is required".into()));
        }
        Ok(Source::Files {
            projections: vec![Projection::Keys {
                kind: KeysKind::ConfigMap,
                name: &c.name,
                items: c.items.as_deref(),
                optional: c.optional.unwrap_or(false),
                field: at("configMap"),
            }],
            default_mode: mode(
                c.default_mode,
                DEFAULT_FILE_MODE,
                MAX_FILE_MODE,
                at("configMap.defaultMode"),
            )?,
            default_user: user(c.default_user, at("configMap.defaultUser"))?,
            tmpfs: false,
        })
    } else if let Some(s) = &v.secret {
        let name = s.secret_name.as_deref().unwrap_or_default();
        if name.is_empty() {
            return Err(invalid("secret.secretName", "is required".into()));
        }
        Ok(Source::Files {
            projections: vec![Projection::Keys {
                kind: KeysKind::Secret,
                name,
                items: s.items.as_deref(),
                optional: s.optional.unwrap_or(false),
                field: at("secret"),
            }],
            default_mode: mode(
                s.default_mode,
                DEFAULT_FILE_MODE,
                MAX_FILE_MODE,
                at("secret.defaultMode"),
            )?,
            default_user: user(s.default_user, at("secret.defaultUser"))?,
            tmpfs: true,
        })
    } else if let Some(d) = &v.downward_api {
        Ok(Source::Files {
            projections: vec![Projection::DownwardApi {
                items: d.items.as_deref().unwrap_or_default(),
                field: at("downwardAPI"),
            }],
            default_mode: mode(
                d.default_mode,
                DEFAULT_FILE_MODE,
                MAX_FILE_MODE,
                at("downwardAPI.defaultMode"),
            )?,
            default_user: user(d.default_user, at("downwardAPI.defaultUser"))?,
            tmpfs: true,
        })
    } else if let Some(p) = &v.projected {
        let mut projections = Vec::new();
        for (i, s) in p.sources.iter().flatten().enumerate() {
            let field = at(&format!("projected.sources[{i}]"));
            let set = set_fields(s);
            if set.len() != 1 {
                return Err(VolumeError::Invalid {
                    field,
                    reason: "exactly one of configMap, secret, downwardAPI and serviceAccountToken is required".into(),
                });
            }
            let projection = if let Some(c) = &s.config_map {
                if c.name.is_empty() {
                    return Err(VolumeError::Invalid {
                        field: format!("{field}.configMap.name"),
                        reason: "is required".into(),
                    });
                }
                Projection::Keys {
                    kind: KeysKind::ConfigMap,
                    name: &c.name,
                    items: c.items.as_deref(),
                    optional: c.optional.unwrap_or(false),
                    field: format!("{field}.configMap"),
                }
            } else if let Some(c) = &s.secret {
                if c.name.is_empty() {
                    return Err(VolumeError::Invalid {
                        field: format!("{field}.secret.name"),
                        reason: "is required".into(),
                    });
                }
                Projection::Keys {
                    kind: KeysKind::Secret,
                    name: &c.name,
                    items: c.items.as_deref(),
                    optional: c.optional.unwrap_or(false),
                    field: format!("{field}.secret"),
                }
            } else if let Some(d) = &s.downward_api {
                Projection::DownwardApi {
                    items: d.items.as_deref().unwrap_or_default(),
                    field: format!("{field}.downwardAPI"),
                }
            } else if let Some(t) = &s.service_account_token {
                if let Some(e) = t.expiration_seconds
                    && !TOKEN_EXPIRATION_SECONDS.contains(&e)
                {
                    return Err(VolumeError::Invalid {
                        field: format!("{field}.serviceAccountToken.expirationSeconds"),
                        reason: format!("{e} is not between 600 and 4294967296"),
                    });
                }
                Projection::Token {
                    path: &t.path,
                    user: user(t.user, format!("{field}.serviceAccountToken.user"))?,
                    field: format!("{field}.serviceAccountToken"),
                }
            } else {
                return Err(VolumeError::Unsupported {
                    field: format!("{field}.{}", set[0]),
                });
            };
            projections.push(projection);
        }
        Ok(Source::Files {
            projections,
            default_mode: mode(
                p.default_mode,
                DEFAULT_FILE_MODE,
                MAX_FILE_MODE,
                at("projected.defaultMode"),
            )?,
            default_user: user(p.default_user, at("projected.defaultUser"))?,
            tmpfs: true,
        })
    } else {
        Err(VolumeError::Unsupported { field: at(kind) })
    }
}

fn mode(value: Option<i32>, default: u32, max: i32, field: String) -> Result<u32, VolumeError> {
    match value {
        None => Ok(default),
        Some(m) if (0..=max).contains(&m) => Ok(m.unsigned_abs()),
        Some(mode) => Err(VolumeError::BadMode { field, mode, max }),
    }
}

/// A file owner (the alpha `defaultUser`/`user` fields): 0..=2147483647, as runAsUser.
fn user(value: Option<i64>, field: String) -> Result<Option<u32>, VolumeError> {
    value
        .map(|u| {
            u32::try_from(u)
                .ok()
                .filter(|u| i32::try_from(*u).is_ok())
                .ok_or_else(|| VolumeError::Invalid {
                    field,
                    reason: format!("{u} is not between 0 and 2147483647"),
                })
        })
        .transpose()
}

fn fs_group(spec: &PodSpec) -> Result<Option<u32>, VolumeError> {
    let Some(sc) = &spec.security_context else {
        return Ok(None);
    };
    match sc.fs_group_change_policy.as_deref() {
        None | Some("Always" | "OnRootMismatch") => {}
        Some(p) => {
            return Err(VolumeError::Invalid {
                field: "securityContext.fsGroupChangePolicy".into(),
                reason: format!("{p:?} is not Always or OnRootMismatch"),
            });
        }
    }
    user(sc.fs_group, "securityContext.fsGroup".into())
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// `p` without `.` elements, when it is relative and has no `..` element.
fn clean_relative(p: &str) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in Path::new(p).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// `p` without `.` elements and trailing slashes, when it is absolute and has no `..` element.
fn clean_absolute(p: &str) -> Option<PathBuf> {
    let rest = p.strip_prefix('/')?;
    clean_relative(rest).map(|r| Path::new("/").join(r))
}

/// A file path in a file volume: relative, non-empty, no `..` element, and not
/// starting with `..` (the atomic writer's own names do).
fn file_path(p: &str) -> Option<PathBuf> {
    let clean = clean_relative(p)?;
    let first = clean.components().next()?;
    if p.starts_with("..") || first.as_os_str().as_encoded_bytes().starts_with(b"..") {
        return None;
    }
    Some(clean)
}

// ---------------------------------------------------------------------------
// Mounts.

/// A volumeMount, checked.
struct MountPlan {
    destination: String,
    depth: usize,
    sub_path: Option<PathBuf>,
    propagation: &'static str,
    bind_options: Vec<String>,
}

fn check_mount(
    prefix: &str,
    container: &str,
    i: usize,
    m: &VolumeMount,
) -> Result<MountPlan, VolumeError> {
    let at = |f: &str| format!("{prefix}.volumeMounts[{i}].{f}");
    let invalid = |f: &str, reason: String| VolumeError::Invalid {
        field: at(f),
        reason,
    };
    let destination = clean_absolute(&m.mount_path)
        .and_then(|d| d.to_str().map(str::to_owned))
        .ok_or_else(|| {
            invalid(
                "mountPath",
                format!("{:?} is not an absolute path without '..'", m.mount_path),
            )
        })?;
    let depth = Path::new(&destination).components().count();
    if m.sub_path_expr.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(VolumeError::Unsupported {
            field: at("subPathExpr"),
        });
    }
    let sub_path = match m.sub_path.as_deref() {
        None | Some("") => None,
        Some(s) => {
            let clean = clean_relative(s).ok_or_else(|| VolumeError::BadSubPath {
                container: container.to_owned(),
                volume: m.name.clone(),
                sub_path: s.to_owned(),
            })?;
            (!clean.as_os_str().is_empty()).then_some(clean)
        }
    };
    let propagation = match m.mount_propagation.as_deref() {
        None | Some("None") => "rprivate",
        Some("HostToContainer") => "rslave",
        Some("Bidirectional") => {
            return Err(VolumeError::Unsupported {
                field: at("mountPropagation"),
            });
        }
        Some(p) => {
            return Err(invalid(
                "mountPropagation",
                format!("{p:?} is not None, HostToContainer or Bidirectional"),
            ));
        }
    };
    let read_only = m.read_only.unwrap_or(false);
    match m.recursive_read_only.as_deref() {
        None | Some("Disabled") => {}
        Some("IfPossible" | "Enabled") if !read_only => {
            return Err(invalid("recursiveReadOnly", "requires readOnly".into()));
        }
        Some("IfPossible" | "Enabled") if propagation != "rprivate" => {
            return Err(invalid(
                "recursiveReadOnly",
                "requires mountPropagation None".into(),
            ));
        }
        // Not possible with runc 1.1: a plain read-only mount, as Kubernetes allows.
        Some("IfPossible") => {}
        Some("Enabled") => {
            return Err(VolumeError::Unsupported {
                field: at("recursiveReadOnly"),
            });
        }
        Some(r) => {
            return Err(invalid(
                "recursiveReadOnly",
                format!("{r:?} is not Disabled, IfPossible or Enabled"),
            ));
        }
    }
    let mut bind_options = Vec::new();
    for o in m.bind_mount_options.iter().flatten() {
        if !matches!(o.as_str(), "noexec" | "nodev" | "nosuid") {
            return Err(invalid(
                "bindMountOptions",
                format!("{o:?} is not noexec, nodev or nosuid"),
            ));
        }
        bind_options.push(o.clone());
    }
    Ok(MountPlan {
        destination,
        depth,
        sub_path,
        propagation,
        bind_options,
    })
}

/// Every container of the pod with the name of its list.
fn containers(spec: &PodSpec) -> impl Iterator<Item = (&'static str, &Container)> {
    spec.containers.iter().map(|c| ("containers", c)).chain(
        spec.init_containers
            .iter()
            .flatten()
            .map(|c| ("initContainers", c)),
    )
}

// ---------------------------------------------------------------------------
// File volumes: what to write.

/// One file of a file volume.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileSpec {
    content: Vec<u8>,
    mode: u32,
    uid: Option<u32>,
    gid: Option<u32>,
}

/// Relative path → file.
type Payload = BTreeMap<PathBuf, FileSpec>;

/// The settings of one file volume.
struct Files<'a> {
    volume: &'a str,
    default_mode: u32,
    default_user: Option<u32>,
    fs_group: Option<u32>,
}

impl Files<'_> {
    /// Mode of the volume's directories.
    fn dir_mode(&self) -> u32 {
        match self.fs_group {
            Some(_) => DIR_MODE | FS_GROUP_RO_DIR_BITS,
            None => DIR_MODE,
        }
    }

    fn file(&self, content: Vec<u8>, mode: u32, uid: Option<u32>) -> FileSpec {
        FileSpec {
            content,
            mode: match self.fs_group {
                Some(_) => mode | FS_GROUP_FILE_BITS,
                None => mode,
            },
            uid,
            gid: self.fs_group,
        }
    }

    /// Every file of the volume, checked against `data`.
    fn collect(
        &self,
        projections: &[Projection<'_>],
        data: &VolumeData,
        pod: &PodInfo<'_>,
        spec: &PodSpec,
    ) -> Result<Payload, VolumeError> {
        let mut payload = Payload::new();
        // Paths named in the spec must not collide (Kubernetes' validation); keys
        // projected without items overwrite earlier ones (the kubelet's behaviour).
        let mut named = BTreeSet::new();
        let mut name = |path: &Path, field: &str| {
            if named.insert(path.to_owned()) {
                Ok(())
            } else {
                Err(VolumeError::Invalid {
                    field: field.to_owned(),
                    reason: format!("path {:?} is used twice", path.display()),
                })
            }
        };
        for p in projections {
            match p {
                Projection::Keys {
                    kind,
                    name: source,
                    items,
                    optional,
                    field,
                } => {
                    let values = match kind {
                        KeysKind::ConfigMap => data.config_maps.get(*source),
                        KeysKind::Secret => data.secrets.get(*source),
                    };
                    let Some(items) = items else {
                        let Some(values) = values else {
                            if *optional {
                                continue;
                            }
                            return Err(self.missing_source(*kind, source));
                        };
                        for (key, value) in values {
                            let path = file_path(key).ok_or_else(|| VolumeError::BadPath {
                                field: format!("{field} key of {} {source:?}", kind.name()),
                                path: key.clone(),
                            })?;
                            payload.insert(
                                path,
                                self.file(value.clone(), self.default_mode, self.default_user),
                            );
                        }
                        continue;
                    };
                    let mut checked = Vec::new();
                    for (i, item) in items.iter().enumerate() {
                        let f = format!("{field}.items[{i}]");
                        if item.key.is_empty() {
                            return Err(VolumeError::Invalid {
                                field: format!("{f}.key"),
                                reason: "is required".into(),
                            });
                        }
                        let path = file_path(&item.path).ok_or_else(|| VolumeError::BadPath {
                            field: format!("{f}.path"),
                            path: item.path.clone(),
                        })?;
                        name(&path, &format!("{f}.path"))?;
                        let mode = mode(
                            item.mode,
                            self.default_mode,
                            MAX_FILE_MODE,
                            format!("{f}.mode"),
                        )?;
                        let uid = user(item.user, format!("{f}.user"))?.or(self.default_user);
                        checked.push((item.key.as_str(), path, mode, uid));
                    }
                    let Some(values) = values else {
                        if *optional {
                            continue;
                        }
                        return Err(self.missing_source(*kind, source));
                    };
                    for (key, path, mode, uid) in checked {
                        match values.get(key) {
                            Some(value) => {
                                payload.insert(path, self.file(value.clone(), mode, uid));
                            }
                            None if *optional => {}
                            None => {
                                return Err(VolumeError::MissingKey {
                                    volume: self.volume.to_owned(),
                                    kind: kind.name(),
                                    name: (*source).to_owned(),
                                    key: key.to_owned(),
                                });
                            }
                        }
                    }
                }
                Projection::DownwardApi { items, field } => {
                    for (i, item) in items.iter().enumerate() {
                        let f = format!("{field}.items[{i}]");
                        let path = file_path(&item.path).ok_or_else(|| VolumeError::BadPath {
                            field: format!("{f}.path"),
                            path: item.path.clone(),
                        })?;
                        name(&path, &format!("{f}.path"))?;
                        let mode = mode(
                            item.mode,
                            self.default_mode,
                            MAX_FILE_MODE,
                            format!("{f}.mode"),
                        )?;
                        let uid = user(item.user, format!("{f}.user"))?.or(self.default_user);
                        let value = downward_value(item, &f, pod, spec)?;
                        payload.insert(path, self.file(value.into_bytes(), mode, uid));
                    }
                }
                Projection::Token { path, user, field } => {
                    let f = format!("{field}.path");
                    let path = file_path(path).ok_or_else(|| VolumeError::BadPath {
                        field: f.clone(),
                        path: (*path).to_owned(),
                    })?;
                    name(&path, &f)?;
                    if data.service_account_token.is_empty() {
                        return Err(VolumeError::MissingToken {
                            volume: self.volume.to_owned(),
                        });
                    }
                    let token = data.service_account_token.clone().into_bytes();
                    payload.insert(
                        path,
                        self.file(token, self.default_mode, user.or(self.default_user)),
                    );
                }
            }
        }
        for path in payload.keys() {
            for dir in path.ancestors().skip(1) {
                if !dir.as_os_str().is_empty() && payload.contains_key(dir) {
                    return Err(VolumeError::Invalid {
                        field: format!("volumes[{}]", self.volume),
                        reason: format!("{:?} is both a file and a directory", dir.display()),
                    });
                }
            }
        }
        Ok(payload)
    }

    fn missing_source(&self, kind: KeysKind, name: &str) -> VolumeError {
        VolumeError::MissingSource {
            volume: self.volume.to_owned(),
            kind: kind.name(),
            name: name.to_owned(),
        }
    }
}

/// The content of one downwardAPI file.
fn downward_value(
    item: &DownwardAPIVolumeFile,
    field: &str,
    pod: &PodInfo<'_>,
    spec: &PodSpec,
) -> Result<String, VolumeError> {
    match (&item.field_ref, &item.resource_field_ref) {
        (Some(f), None) => {
            if let Some(v) = f.api_version.as_deref()
                && !v.is_empty()
                && v != "v1"
            {
                return Err(VolumeError::Invalid {
                    field: format!("{field}.fieldRef.apiVersion"),
                    reason: format!("{v:?} is not v1"),
                });
            }
            field_value(&f.field_path, pod).ok_or_else(|| VolumeError::Invalid {
                field: format!("{field}.fieldRef.fieldPath"),
                reason: format!(
                    "{:?} is not one of metadata.name, metadata.namespace, metadata.uid, \
                     metadata.labels, metadata.annotations, metadata.labels['KEY'], \
                     metadata.annotations['KEY'], spec.nodeName, status.hostIP",
                    f.field_path
                ),
            })
        }
        (None, Some(r)) => resource_value(r, &format!("{field}.resourceFieldRef"), pod, spec),
        _ => Err(VolumeError::Invalid {
            field: field.to_owned(),
            reason: "exactly one of fieldRef and resourceFieldRef is required".into(),
        }),
    }
}

/// A pod field as the kubelet writes it into a downwardAPI file.
fn field_value(path: &str, pod: &PodInfo<'_>) -> Option<String> {
    if let Some((map, key)) = path.strip_suffix("']").and_then(|p| p.split_once("['")) {
        let map = match map {
            "metadata.labels" => pod.labels,
            "metadata.annotations" => pod.annotations,
            _ => return None,
        };
        return Some(map.get(key).cloned().unwrap_or_default());
    }
    Some(match path {
        "metadata.name" => pod.name.to_owned(),
        "metadata.namespace" => pod.namespace.to_owned(),
        "metadata.uid" => pod.uid.to_owned(),
        "metadata.labels" => format_map(pod.labels),
        "metadata.annotations" => format_map(pod.annotations),
        "spec.nodeName" => pod.node_name.to_owned(),
        "status.hostIP" => pod.host_ip.to_owned(),
        _ => return None,
    })
}

/// The kubelet's `fieldpath.FormatMap`: `key="value"` lines sorted by key, values
/// quoted as Go's `%q` does, no final newline.
fn format_map(map: &BTreeMap<String, String>) -> String {
    map.iter()
        .map(|(k, v)| format!("{k}={}", go_quote(v)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Go's `strconv.Quote`. Go escapes what `unicode.IsPrint` rejects; std has no
/// Unicode categories, so beyond ASCII this escapes control characters, non-ASCII
/// spaces and the common format characters (soft hyphen, zero-width and
/// bidirectional marks, BOM).
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            ' ' => out.push(' '),
            c if c.is_ascii_graphic() => out.push(c),
            c if c.is_ascii() => out.push_str(&format!("\\x{:02x}", u32::from(c))),
            c if c.is_control()
                || c.is_whitespace()
                || matches!(c, '\u{ad}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2064}' | '\u{feff}') =>
            {
                let n = u32::from(c);
                if n < 0x10000 {
                    out.push_str(&format!("\\u{n:04x}"));
                } else {
                    out.push_str(&format!("\\U{n:08x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A container's CPU or memory limit or request, as the kubelet writes it: a limit
/// not set is the node's allocatable, a request not set is the limit (the API
/// server's defaulting) or 0; the value is divided by `divisor`, rounding up.
fn resource_value(
    r: &ResourceFieldSelector,
    field: &str,
    pod: &PodInfo<'_>,
    spec: &PodSpec,
) -> Result<String, VolumeError> {
    let invalid = |sub: &str, reason: String| VolumeError::Invalid {
        field: format!("{field}{sub}"),
        reason,
    };
    let name = r.container_name.as_deref().unwrap_or_default();
    if name.is_empty() {
        return Err(invalid(".containerName", "is required in a volume".into()));
    }
    let Some((_, container)) = containers(spec).find(|(_, c)| c.name == name) else {
        return Err(invalid(
            ".containerName",
            format!("the pod has no container {name:?}"),
        ));
    };
    let (kind, resource) = r
        .resource
        .split_once('.')
        .filter(|(k, _)| matches!(*k, "limits" | "requests"))
        .ok_or_else(|| {
            invalid(
                ".resource",
                format!(
                    "{:?} is not limits.RESOURCE or requests.RESOURCE",
                    r.resource
                ),
            )
        })?;
    let cpu = match resource {
        "cpu" => true,
        "memory" => false,
        res if res == "ephemeral-storage" || res.starts_with("hugepages-") => {
            return Err(VolumeError::Unsupported {
                field: format!("{field}.resource"),
            });
        }
        _ => {
            return Err(invalid(
                ".resource",
                format!(
                    "{:?} is not cpu, memory, ephemeral-storage or hugepages",
                    r.resource
                ),
            ));
        }
    };
    let quantity = |map: Option<&BTreeMap<String, Quantity>>, which: &str| {
        map.and_then(|m| m.get(resource))
            .map(|q| {
                parse_quantity(&q.0, cpu).ok_or_else(|| {
                    invalid(
                        "",
                        format!("{which}.{resource} of container {name:?}: {:?} is not a valid quantity", q.0),
                    )
                })
            })
            .transpose()
    };
    let resources = container.resources.as_ref();
    let limit = quantity(resources.and_then(|r| r.limits.as_ref()), "limits")?;
    let request = quantity(resources.and_then(|r| r.requests.as_ref()), "requests")?;
    let value = if kind == "limits" {
        limit.unwrap_or(if cpu {
            pod.node_cpu_millis
        } else {
            pod.node_memory_bytes
        })
    } else {
        request.or(limit).unwrap_or(0)
    };
    let divisor = match &r.divisor {
        None => {
            if cpu {
                1000
            } else {
                1
            }
        }
        Some(q) => parse_quantity(&q.0, cpu)
            .filter(|d| *d > 0)
            .ok_or_else(|| invalid(".divisor", format!("{:?} is not a positive quantity", q.0)))?,
    };
    Ok(value.div_ceil(divisor).to_string())
}

// ---------------------------------------------------------------------------
// On the disk.

fn io_err(context: &str, path: &Path) -> impl FnOnce(io::Error) -> VolumeError + use<> {
    let context = context.to_owned();
    let path = path.to_owned();
    move |source| VolumeError::Io {
        context,
        path,
        source,
    }
}

fn volume_io(
    volume: &str,
    what: &str,
    path: &Path,
) -> impl FnOnce(io::Error) -> VolumeError + use<> {
    io_err(&format!("volume {volume:?}: cannot {what}"), path)
}

/// Creates `dir` (and its parents) when missing, giving a new `dir` exactly `mode`.
fn make_dir(dir: &Path, mode: u32, gid: Option<u32>) -> io::Result<()> {
    match fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "exists and is not a directory",
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if let Some(parent) = dir.parent() {
        fs::DirBuilder::new().recursive(true).create(parent)?;
    }
    match fs::DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => set_owner_and_mode(dir, None, gid, mode),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

fn set_owner_and_mode(
    path: &Path,
    uid: Option<u32>,
    gid: Option<u32>,
    mode: u32,
) -> io::Result<()> {
    if uid.is_some() || gid.is_some() {
        std::os::unix::fs::chown(path, uid, gid)?;
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

/// Whether `dir` is a mount point: its device differs from its parent's.
fn is_mount_point(dir: &Path) -> io::Result<bool> {
    let own = fs::metadata(dir)?.dev();
    let parent = fs::metadata(dir.join(".."))?.dev();
    Ok(own != parent)
}

/// Mounts a tmpfs at `dir` unless one is there already.
fn mount_tmpfs(volume: &str, dir: &Path, size: Option<u64>, mode: u32) -> Result<(), VolumeError> {
    make_dir(dir, mode, None).map_err(volume_io(volume, "create", dir))?;
    if is_mount_point(dir).map_err(volume_io(volume, "inspect", dir))? {
        return Ok(());
    }
    let mut options = format!("mode={mode:o}");
    if let Some(size) = size {
        options.push_str(&format!(",size={size}"));
    }
    nix::mount::mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(options.as_str()),
    )
    .map_err(|source| VolumeError::Mount {
        volume: volume.to_owned(),
        path: dir.to_owned(),
        source,
    })
}

/// Checks a hostPath against its type; creates it for the `*OrCreate` types and,
/// as containerd's CRI plugin does, as a directory when the type is unset.
fn check_host_path(volume: &str, path: &Path, kind: HostPathType) -> Result<(), VolumeError> {
    let mismatch = |expected: &'static str| VolumeError::HostPathType {
        volume: volume.to_owned(),
        path: path.display().to_string(),
        expected,
    };
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return match kind {
                HostPathType::Unset | HostPathType::DirectoryOrCreate => fs::DirBuilder::new()
                    .recursive(true)
                    .mode(DIR_MODE)
                    .create(path)
                    .map_err(volume_io(volume, "create hostPath", path)),
                HostPathType::FileOrCreate => fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .mode(NEW_FILE_MODE)
                    .open(path)
                    .map(drop)
                    .map_err(volume_io(volume, "create hostPath", path)),
                HostPathType::Directory => Err(mismatch("an existing directory")),
                HostPathType::File => Err(mismatch("an existing file")),
                HostPathType::Socket => Err(mismatch("an existing socket")),
                HostPathType::CharDevice => Err(mismatch("an existing character device")),
                HostPathType::BlockDevice => Err(mismatch("an existing block device")),
            };
        }
        Err(e) => return Err(volume_io(volume, "inspect hostPath", path)(e)),
    };
    let t = meta.file_type();
    match kind {
        HostPathType::Unset => Ok(()),
        HostPathType::DirectoryOrCreate | HostPathType::Directory if t.is_dir() => Ok(()),
        HostPathType::DirectoryOrCreate | HostPathType::Directory => Err(mismatch("a directory")),
        HostPathType::FileOrCreate | HostPathType::File if t.is_file() => Ok(()),
        HostPathType::FileOrCreate | HostPathType::File => Err(mismatch("a regular file")),
        HostPathType::Socket if t.is_socket() => Ok(()),
        HostPathType::Socket => Err(mismatch("a socket")),
        HostPathType::CharDevice if t.is_char_device() => Ok(()),
        HostPathType::CharDevice => Err(mismatch("a character device")),
        HostPathType::BlockDevice if t.is_block_device() => Ok(()),
        HostPathType::BlockDevice => Err(mismatch("a block device")),
    }
}

/// Writes a file volume the way the kubelet's atomic writer does: into a fresh
/// timestamped directory, published by renaming a new `..data` symlink over the
/// old one; top-level names are symlinks through `..data`. Nothing is written when
/// the current data directory already holds exactly `payload`.
fn write_atomic(
    volume: &str,
    dir: &Path,
    payload: &Payload,
    dir_mode: u32,
    gid: Option<u32>,
) -> Result<(), VolumeError> {
    let data_link = dir.join(DATA_LINK);
    let current = fs::read_link(&data_link).ok();
    let unchanged = current.as_ref().is_some_and(|name| {
        read_payload(&dir.join(name)).is_ok_and(|old| same_payload(&old, payload))
    });
    let data_dir = match current {
        Some(name) if unchanged => name,
        _ => {
            let name = fresh_data_dir(volume, dir, dir_mode, gid)?;
            let data_dir = dir.join(&name);
            for (rel, file) in payload {
                write_file(volume, &data_dir, rel, file, dir_mode, gid)?;
            }
            let tmp = dir.join(DATA_LINK_TMP);
            remove_any(&tmp).map_err(volume_io(volume, "remove", &tmp))?;
            std::os::unix::fs::symlink(&name, &tmp).map_err(volume_io(volume, "create", &tmp))?;
            if gid.is_some() {
                std::os::unix::fs::lchown(&tmp, None, gid)
                    .map_err(volume_io(volume, "chown", &tmp))?;
            }
            fs::rename(&tmp, &data_link).map_err(volume_io(volume, "publish", &data_link))?;
            name
        }
    };
    let tops: BTreeSet<&OsStr> = payload
        .keys()
        .filter_map(|p| p.components().next())
        .map(|c| c.as_os_str())
        .collect();
    for top in &tops {
        let link = dir.join(top);
        let target = Path::new(DATA_LINK).join(top);
        if fs::read_link(&link).is_ok_and(|t| t == target) {
            continue;
        }
        remove_any(&link).map_err(volume_io(volume, "remove", &link))?;
        std::os::unix::fs::symlink(&target, &link).map_err(volume_io(volume, "create", &link))?;
        if gid.is_some() {
            std::os::unix::fs::lchown(&link, None, gid)
                .map_err(volume_io(volume, "chown", &link))?;
        }
    }
    // Everything else goes: names no longer projected and earlier data directories.
    for entry in fs::read_dir(dir).map_err(volume_io(volume, "list", dir))? {
        let entry = entry.map_err(volume_io(volume, "list", dir))?;
        let name = entry.file_name();
        if name == DATA_LINK || name == data_dir.as_os_str() || tops.contains(name.as_os_str()) {
            continue;
        }
        let path = entry.path();
        remove_any(&path).map_err(volume_io(volume, "remove", &path))?;
    }
    Ok(())
}

/// Creates `..<UTC timestamp>` in `dir` and returns its name.
fn fresh_data_dir(
    volume: &str,
    dir: &Path,
    mode: u32,
    gid: Option<u32>,
) -> Result<PathBuf, VolumeError> {
    let stamp = jiff::Timestamp::now()
        .strftime("..%Y_%m_%d_%H_%M_%S.%N")
        .to_string();
    for n in 0u32.. {
        let name = if n == 0 {
            stamp.clone()
        } else {
            format!("{stamp}_{n}")
        };
        let path = dir.join(&name);
        match fs::DirBuilder::new().mode(mode).create(&path) {
            Ok(()) => {
                set_owner_and_mode(&path, None, gid, mode).map_err(volume_io(
                    volume,
                    "set the mode of",
                    &path,
                ))?;
                return Ok(PathBuf::from(name));
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(volume_io(volume, "create", &path)(e)),
        }
    }
    unreachable!("u32 names ran out")
}

fn write_file(
    volume: &str,
    data_dir: &Path,
    rel: &Path,
    file: &FileSpec,
    dir_mode: u32,
    gid: Option<u32>,
) -> Result<(), VolumeError> {
    let path = data_dir.join(rel);
    let mut parent = data_dir.to_owned();
    for c in rel.parent().into_iter().flat_map(Path::components) {
        parent.push(c);
        make_dir(&parent, dir_mode, gid).map_err(volume_io(volume, "create", &parent))?;
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(volume_io(volume, "create", &path))?;
    f.write_all(&file.content)
        .map_err(volume_io(volume, "write", &path))?;
    drop(f);
    set_owner_and_mode(&path, file.uid, file.gid, file.mode).map_err(volume_io(
        volume,
        "set the mode of",
        &path,
    ))
}

/// The files under a data directory, as [`FileSpec`]s with the owner they have.
fn read_payload(dir: &Path) -> io::Result<Payload> {
    fn walk(root: &Path, dir: &Path, out: &mut Payload) -> io::Result<()> {
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let path = entry.path();
            let meta = fs::symlink_metadata(&path)?;
            if meta.is_dir() {
                walk(root, &path, out)?;
            } else if meta.is_file() {
                let rel = path
                    .strip_prefix(root)
                    .map_err(io::Error::other)?
                    .to_owned();
                out.insert(
                    rel,
                    FileSpec {
                        content: fs::read(&path)?,
                        mode: meta.permissions().mode() & 0o7777,
                        uid: Some(meta.uid()),
                        gid: Some(meta.gid()),
                    },
                );
            } else {
                return Err(io::Error::other("not a file or directory"));
            }
        }
        Ok(())
    }
    let mut out = Payload::new();
    walk(dir, dir, &mut out)?;
    Ok(out)
}

/// Whether files on disk (`old`, owners known) are what `new` asks for.
fn same_payload(old: &Payload, new: &Payload) -> bool {
    old.len() == new.len()
        && new.iter().all(|(path, want)| {
            old.get(path).is_some_and(|have| {
                have.content == want.content
                    && have.mode == want.mode
                    && want.uid.is_none_or(|u| have.uid == Some(u))
                    && want.gid.is_none_or(|g| have.gid == Some(g))
            })
        })
}

/// Removes a file, symlink or directory tree; absent is fine.
fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Mount points at or under `dir` in a mountinfo table, deepest first (a mount
/// stacked twice is listed twice).
fn mount_points_under(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape_mountinfo(field: &str) -> OsString {
    use std::os::unix::ffi::OsStringExt;
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(oct) = bytes.get(i + 1..i + 4)
            && let Ok(b) = u8::from_str_radix(std::str::from_utf8(oct).unwrap_or("x"), 8)
        {
            out.push(b);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    OsString::from_vec(out)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// A pod directory that is cleaned up (tmpfs unmounted) even when a test fails.
    struct PodDir(tempfile::TempDir);

    impl PodDir {
        fn new() -> Self {
            Self(tempfile::tempdir().expect("tempdir"))
        }
        fn path(&self) -> &Path {
            self.0.path()
        }
        fn volume(&self, name: &str) -> PathBuf {
            self.path().join("volumes").join(name)
        }
    }

    impl Drop for PodDir {
        fn drop(&mut self) {
            let _ = cleanup(self.0.path());
        }
    }

    fn labels() -> BTreeMap<String, String> {
        [
            ("app".to_owned(), "web".to_owned()),
            ("tier".to_owned(), "a \"quoted\"\nvalue".to_owned()),
        ]
        .into()
    }

    fn info<'a>(
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

    fn pod(json: Value) -> PodSpec {
        serde_json::from_value(json).expect("pod spec")
    }

    fn data() -> VolumeData {
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
        }
    }

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).expect("metadata").permissions().mode() & 0o7777
    }

    fn read(path: &Path) -> String {
        fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// The tmpfs mounts of this process's mount namespace at `dir`.
    fn tmpfs_at(dir: &Path) -> Vec<String> {
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

    fn one_container(mounts: Value, volumes: Value) -> PodSpec {
        pod(json!({
            "containers": [{ "name": "main", "image": "busybox", "volumeMounts": mounts }],
            "volumes": volumes,
        }))
    }

    fn prepare_one(dir: &PodDir, spec: &PodSpec) -> Prepared {
        let (l, a) = (labels(), BTreeMap::new());
        prepare(dir.path(), &info(&l, &a), spec, &data()).expect("prepare")
    }

    #[test]
    fn empty_dir_is_a_writable_directory_that_survives_prepare_again() {
        let dir = PodDir::new();
        let spec = one_container(
            json!([{ "name": "scratch", "mountPath": "/scratch" }]),
            json!([{ "name": "scratch", "emptyDir": {} }]),
        );
        let prepared = prepare_one(&dir, &spec);
        let path = dir.volume("scratch");
        assert_eq!(prepared.host_path("scratch"), Some(path.as_path()));
        assert_eq!(mode_of(&path), 0o777);
        fs::write(path.join("kept"), "x").unwrap();

        let again = prepare_one(&dir, &spec);
        assert_eq!(again, prepared);
        assert_eq!(read(&path.join("kept")), "x", "emptyDir content survives");
        let mounts = prepared.mounts_for(&spec.containers[0]).unwrap();
        assert_eq!(
            mounts,
            [json!({
                "destination": "/scratch",
                "type": "bind",
                "source": path.to_str().unwrap(),
                "options": ["rbind", "rprivate", "rw"],
            })]
        );
    }

    #[test]
    fn empty_dir_mode_is_honoured() {
        let dir = PodDir::new();
        let spec = one_container(
            json!([]),
            json!([{ "name": "s", "emptyDir": { "mode": 0o1770 } }]),
        );
        prepare_one(&dir, &spec);
        assert_eq!(mode_of(&dir.volume("s")), 0o1770);
    }

    #[test]
    fn memory_empty_dir_is_a_sized_tmpfs_that_cleanup_unmounts() {
        let dir = PodDir::new();
        let spec = one_container(
            json!([]),
            json!([{ "name": "cache", "emptyDir": { "medium": "Memory", "sizeLimit": "8Mi" } }]),
        );
        prepare_one(&dir, &spec);
        let path = dir.volume("cache");
        let mounts = tmpfs_at(&path);
        assert_eq!(mounts.len(), 1, "{mounts:?}");
        assert!(mounts[0].contains("size=8192k"), "{mounts:?}");
        assert_eq!(mode_of(&path), 0o777);
        fs::write(path.join("f"), "in memory").unwrap();

        prepare_one(&dir, &spec);
        assert_eq!(
            tmpfs_at(&path).len(),
            1,
            "prepare again does not stack a second tmpfs"
        );
        assert_eq!(read(&path.join("f")), "in memory");

        cleanup(dir.path()).unwrap();
        assert!(tmpfs_at(&path).is_empty());
        assert!(!dir.path().join("volumes").exists());
        cleanup(dir.path()).expect("cleanup is idempotent");
    }

    #[test]
    fn config_map_items_and_modes_use_the_atomic_writer_layout() {
        let dir = PodDir::new();
        let spec = one_container(
            json!([{ "name": "cfg", "mountPath": "/etc/app" }]),
            json!([{ "name": "cfg", "configMap": {
                "name": "app",
                "defaultMode": 0o640,
                "items": [
                    { "key": "app.conf", "path": "conf/app.conf", "mode": 0o600 },
                    { "key": "extra", "path": "extra.txt" },
                ],
            } }]),
        );
        let prepared = prepare_one(&dir, &spec);
        let path = dir.volume("cfg");
        assert_eq!(read(&path.join("conf/app.conf")), "listen 80\n");
        assert_eq!(mode_of(&path.join("conf/app.conf")), 0o600);
        assert_eq!(mode_of(&path.join("extra.txt")), 0o640, "defaultMode");
        assert_eq!(mode_of(&path.join("conf")), 0o755);
        assert!(
            !path.join("app.conf").exists(),
            "unlisted keys are not projected"
        );
        // The kubelet's layout: ..data → ..<timestamp>, name → ..data/name.
        let data_dir = fs::read_link(path.join("..data")).unwrap();
        assert!(
            data_dir.to_str().unwrap().starts_with("..20"),
            "{data_dir:?}"
        );
        assert_eq!(
            fs::read_link(path.join("conf")).unwrap(),
            Path::new("..data/conf")
        );
        assert!(tmpfs_at(&path).is_empty(), "configMap volumes are on disk");
        let mounts = prepared.mounts_for(&spec.containers[0]).unwrap();
        assert_eq!(
            mounts[0]["options"],
            json!(["rbind", "rprivate", "ro"]),
            "always read-only"
        );
    }

    #[test]
    fn config_map_without_items_projects_every_key_with_mode_0644() {
        let dir = PodDir::new();
        let spec = one_container(
            json!([]),
            json!([{ "name": "cfg", "configMap": { "name": "app" } }]),
        );
        prepare_one(&dir, &spec);
        let path = dir.volume("cfg");
        assert_eq!(read(&path.join("app.conf")), "listen 80\n");
        assert_eq!(read(&path.join("extra")), "x");
        assert_eq!(mode_of(&path.join("app.conf")), 0o644);
    }

    #[test]
    fn secret_is_tmpfs_backed_and_mounted_read_only() {
        let dir = PodDir::new();
        let spec = one_container(
            json!([{ "name": "creds", "mountPath": "/creds", "readOnly": false }]),
            json!([{ "name": "creds", "secret": { "secretName": "creds", "defaultMode": 0o400 } }]),
        );
        let prepared = prepare_one(&dir, &spec);
        let path = dir.volume("creds");
        assert_eq!(read(&path.join("password")), "hunter2");
        assert_eq!(mode_of(&path.join("password")), 0o400);
        assert_eq!(tmpfs_at(&path).len(), 1, "secrets never reach the disk");
        let mounts = prepared.mounts_for(&spec.containers[0]).unwrap();
        assert_eq!(mounts[0]["options"], json!(["rbind", "rprivate", "ro"]));
    }

    #[test]
    fn optional_sources_and_keys_may_be_missing() {
        let dir = PodDir::new();
        let spec = one_container(
            json!([]),
            json!([
                { "name": "gone", "configMap": { "name": "nope", "optional": true } },
                { "name": "some", "secret": { "secretName": "creds", "optional": true, "items": [
                    { "key": "password", "path": "p" },
                    { "key": "absent", "path": "a" },
                ] } },
            ]),
        );
        prepare_one(&dir, &spec);
        let gone = dir.volume("gone");
        let names: Vec<_> = fs::read_dir(&gone)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| !n.starts_with(".."))
            .collect();
        assert!(names.is_empty(), "{names:?}");
        assert_eq!(read(&dir.volume("some").join("p")), "hunter2");
        assert!(!dir.volume("some").join("a").exists());
    }

    #[test]
    fn downward_api_writes_metadata_node_and_resources_like_the_kubelet() {
        let dir = PodDir::new();
        let spec = pod(json!({
            "containers": [
                { "name": "main", "image": "busybox", "resources": {
                    "limits": { "cpu": "1500m", "memory": "64Mi" },
                    "requests": { "memory": "32Mi" },
                } },
                { "name": "side", "image": "busybox" },
            ],
            "volumes": [{ "name": "info", "downwardAPI": { "items": [
                { "path": "name", "fieldRef": { "fieldPath": "metadata.name" } },
                { "path": "namespace", "fieldRef": { "fieldPath": "metadata.namespace" } },
                { "path": "uid", "fieldRef": { "apiVersion": "v1", "fieldPath": "metadata.uid" } },
                { "path": "labels", "fieldRef": { "fieldPath": "metadata.labels" }, "mode": 0o600 },
                { "path": "annotations", "fieldRef": { "fieldPath": "metadata.annotations" } },
                { "path": "app", "fieldRef": { "fieldPath": "metadata.labels['app']" } },
                { "path": "missing", "fieldRef": { "fieldPath": "metadata.annotations['none']" } },
                { "path": "node", "fieldRef": { "fieldPath": "spec.nodeName" } },
                { "path": "ip", "fieldRef": { "fieldPath": "status.hostIP" } },
                { "path": "res/cpu_limit", "resourceFieldRef": { "containerName": "main", "resource": "limits.cpu" } },
                { "path": "res/cpu_limit_m", "resourceFieldRef": { "containerName": "main", "resource": "limits.cpu", "divisor": "1m" } },
                { "path": "res/cpu_request", "resourceFieldRef": { "containerName": "main", "resource": "requests.cpu", "divisor": "1m" } },
                { "path": "res/mem_limit_mi", "resourceFieldRef": { "containerName": "main", "resource": "limits.memory", "divisor": "1Mi" } },
                { "path": "res/mem_request", "resourceFieldRef": { "containerName": "main", "resource": "requests.memory" } },
                { "path": "res/side_cpu_limit", "resourceFieldRef": { "containerName": "side", "resource": "limits.cpu" } },
                { "path": "res/side_mem_limit", "resourceFieldRef": { "containerName": "side", "resource": "limits.memory", "divisor": "1Gi" } },
                { "path": "res/side_mem_request", "resourceFieldRef": { "containerName": "side", "resource": "requests.memory" } },
            ] } }],
        }));
        let l = labels();
        let a: BTreeMap<String, String> = [
            ("b".to_owned(), "2".to_owned()),
            ("a/x".to_owned(), "é\t".to_owned()),
        ]
        .into();
        prepare(dir.path(), &info(&l, &a), &spec, &data()).expect("prepare");
        let v = dir.volume("info");
        let file = |p: &str| read(&v.join(p));
        assert_eq!(file("name"), "web-0");
        assert_eq!(file("namespace"), "prod");
        assert_eq!(file("uid"), "0b3c-uid");
        assert_eq!(
            file("labels"),
            "app=\"web\"\ntier=\"a \\\"quoted\\\"\\nvalue\""
        );
        assert_eq!(mode_of(&v.join("labels")), 0o600);
        assert_eq!(file("annotations"), "a/x=\"é\\t\"\nb=\"2\"");
        assert_eq!(file("app"), "web");
        assert_eq!(file("missing"), "");
        assert_eq!(file("node"), "node-1");
        assert_eq!(file("ip"), "10.0.0.7");
        assert_eq!(file("res/cpu_limit"), "2", "1.5 CPUs rounded up");
        assert_eq!(file("res/cpu_limit_m"), "1500");
        assert_eq!(
            file("res/cpu_request"),
            "1500",
            "a request defaults to the limit"
        );
        assert_eq!(file("res/mem_limit_mi"), "64");
        assert_eq!(file("res/mem_request"), (32 << 20).to_string());
        assert_eq!(
            file("res/side_cpu_limit"),
            "4",
            "no limit: the node's allocatable"
        );
        assert_eq!(file("res/side_mem_limit"), "8");
        assert_eq!(file("res/side_mem_request"), "0");
        assert_eq!(mode_of(&v.join("name")), 0o644);
    }

    #[test]
    fn go_quoting_matches_strconv_quote() {
        assert_eq!(go_quote("plain"), "\"plain\"");
        assert_eq!(go_quote("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(go_quote("\u{1}\u{7f}\u{7}"), "\"\\x01\\x7f\\a\"");
        assert_eq!(go_quote("日本 ✓"), "\"日本 ✓\"");
        assert_eq!(
            go_quote("\u{a0}\u{200b}\u{85}"),
            "\"\\u00a0\\u200b\\u0085\""
        );
    }

    #[test]
    fn projected_puts_every_source_in_one_directory() {
        let dir = PodDir::new();
        let spec = one_container(
            json!([{ "name": "all", "mountPath": "/var/run/all" }]),
            json!([{ "name": "all", "projected": { "defaultMode": 0o440, "sources": [
                { "configMap": { "name": "app", "items": [{ "key": "app.conf", "path": "cfg/app.conf" }] } },
                { "secret": { "name": "creds" } },
                { "downwardAPI": { "items": [{ "path": "pod", "fieldRef": { "fieldPath": "metadata.name" } }] } },
                { "serviceAccountToken": { "path": "token", "expirationSeconds": 3600 } },
            ] } }]),
        );
        let prepared = prepare_one(&dir, &spec);
        let v = dir.volume("all");
        assert_eq!(read(&v.join("cfg/app.conf")), "listen 80\n");
        assert_eq!(read(&v.join("password")), "hunter2");
        assert_eq!(read(&v.join("pod")), "web-0");
        assert_eq!(read(&v.join("token")), "tok.en");
        for f in ["cfg/app.conf", "password", "pod", "token"] {
            assert_eq!(mode_of(&v.join(f)), 0o440, "{f}");
        }
        assert_eq!(tmpfs_at(&v).len(), 1);
        let mounts = prepared.mounts_for(&spec.containers[0]).unwrap();
        assert_eq!(mounts[0]["options"][2], "ro");
    }

    #[test]
    fn host_path_types_are_checked_and_created() {
        let dir = PodDir::new();
        let host = tempfile::tempdir().unwrap();
        let h = |p: &str| host.path().join(p).to_str().unwrap().to_owned();
        fs::write(host.path().join("file"), "on the host").unwrap();
        let _socket = std::os::unix::net::UnixListener::bind(host.path().join("sock")).unwrap();
        let spec = one_container(
            json!([{ "name": "made", "mountPath": "/made", "readOnly": true }]),
            json!([
                { "name": "made", "hostPath": { "path": h("new/dir"), "type": "DirectoryOrCreate" } },
                { "name": "unset", "hostPath": { "path": h("unset") } },
                { "name": "newfile", "hostPath": { "path": h("newfile"), "type": "FileOrCreate" } },
                { "name": "file", "hostPath": { "path": h("file"), "type": "File" } },
                { "name": "sock", "hostPath": { "path": h("sock"), "type": "Socket" } },
                { "name": "null", "hostPath": { "path": "/dev/null", "type": "CharDevice" } },
            ]),
        );
        let prepared = prepare_one(&dir, &spec);
        assert!(host.path().join("new/dir").is_dir());
        assert_eq!(mode_of(&host.path().join("new/dir")), 0o755);
        assert!(
            host.path().join("unset").is_dir(),
            "as containerd's CRI does"
        );
        assert!(host.path().join("newfile").is_file());
        assert_eq!(mode_of(&host.path().join("newfile")), 0o644);
        assert_eq!(prepared.host_path("made"), Some(Path::new(&h("new/dir"))));
        let mounts = prepared.mounts_for(&spec.containers[0]).unwrap();
        assert_eq!(mounts[0]["source"], h("new/dir"));
        assert_eq!(mounts[0]["options"], json!(["rbind", "rprivate", "ro"]));

        cleanup(dir.path()).unwrap();
        assert_eq!(
            read(&host.path().join("file")),
            "on the host",
            "cleanup leaves hostPaths alone"
        );
        assert!(host.path().join("new/dir").is_dir());

        let (l, a) = (labels(), BTreeMap::new());
        let check = |volume: Value| {
            let spec = one_container(json!([]), json!([volume]));
            prepare(dir.path(), &info(&l, &a), &spec, &data())
        };
        let err =
            check(json!({ "name": "d", "hostPath": { "path": h("absent"), "type": "Directory" } }))
                .unwrap_err();
        assert!(
            matches!(&err, VolumeError::HostPathType { volume, expected: "an existing directory", .. } if volume == "d"),
            "{err}"
        );
        let err = check(json!({ "name": "f", "hostPath": { "path": h("new"), "type": "File" } }))
            .unwrap_err();
        assert!(
            matches!(
                err,
                VolumeError::HostPathType {
                    expected: "a regular file",
                    ..
                }
            ),
            "{err}"
        );
        let err = check(
            json!({ "name": "b", "hostPath": { "path": "/dev/null", "type": "BlockDevice" } }),
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                VolumeError::HostPathType {
                    expected: "a block device",
                    ..
                }
            ),
            "{err}"
        );
        let err = check(
            json!({ "name": "p", "hostPath": { "path": h("no/parent"), "type": "FileOrCreate" } }),
        )
        .unwrap_err();
        assert!(
            matches!(err, VolumeError::Io { .. }),
            "the parent is not created: {err}"
        );
        assert!(!host.path().join("absent").exists());
    }

    #[test]
    fn sub_paths_resolve_inside_the_volume_and_are_created_where_writable() {
        let dir = PodDir::new();
        let host = tempfile::tempdir().unwrap();
        let spec = one_container(
            json!([
                { "name": "scratch", "mountPath": "/a/b", "subPath": "x/y" },
                { "name": "scratch", "mountPath": "/a" },
                { "name": "cfg", "mountPath": "/etc/app.conf", "subPath": "app.conf" },
                { "name": "host", "mountPath": "/h", "subPath": "./made" },
            ]),
            json!([
                { "name": "scratch", "emptyDir": {} },
                { "name": "cfg", "configMap": { "name": "app" } },
                { "name": "host", "hostPath": { "path": host.path().to_str().unwrap() } },
            ]),
        );
        let prepared = prepare_one(&dir, &spec);
        let mounts = prepared.mounts_for(&spec.containers[0]).unwrap();
        let destinations: Vec<&str> = mounts
            .iter()
            .map(|m| m["destination"].as_str().unwrap())
            .collect();
        assert_eq!(
            destinations,
            ["/a", "/h", "/a/b", "/etc/app.conf"],
            "parents first"
        );
        let scratch = fs::canonicalize(dir.volume("scratch")).unwrap();
        assert_eq!(mounts[2]["source"], scratch.join("x/y").to_str().unwrap());
        assert_eq!(
            mode_of(&scratch.join("x/y")),
            0o777,
            "the volume root's mode"
        );
        let cfg_source = PathBuf::from(mounts[3]["source"].as_str().unwrap());
        assert_eq!(read(&cfg_source), "listen 80\n");
        assert!(
            cfg_source
                .parent()
                .unwrap()
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("..20"),
            "a configMap subPath binds the file itself: {cfg_source:?}"
        );
        assert_eq!(mounts[3]["options"][2], "ro");
        assert!(host.path().join("made").is_dir());

        // A symlink planted in an emptyDir cannot lead a subPath out.
        std::os::unix::fs::symlink("/etc", scratch.join("evil")).unwrap();
        let escape = |sub: &str, volume: &str| {
            let c: Container = serde_json::from_value(json!({
                "name": "main", "volumeMounts": [{ "name": volume, "mountPath": "/m", "subPath": sub }],
            }))
            .unwrap();
            prepared.mounts_for(&c)
        };
        for sub in ["evil", "evil/new/dir"] {
            let err = escape(sub, "scratch").unwrap_err();
            assert!(
                matches!(err, VolumeError::SubPathOutside { .. }),
                "{sub}: {err}"
            );
        }
        assert!(!Path::new("/etc/new").exists());
        let err = escape("nope", "cfg").unwrap_err();
        assert!(matches!(err, VolumeError::SubPathMissing { .. }), "{err}");
        let err = escape("x", "other").unwrap_err();
        assert!(matches!(err, VolumeError::UnknownVolume { .. }), "{err}");
    }

    #[test]
    fn mount_options_follow_read_only_propagation_and_bind_options() {
        let dir = PodDir::new();
        let spec = one_container(
            json!([
                { "name": "s", "mountPath": "/ro", "readOnly": true, "recursiveReadOnly": "IfPossible" },
                { "name": "s", "mountPath": "/slave/", "mountPropagation": "HostToContainer", "bindMountOptions": ["noexec", "nosuid"] },
            ]),
            json!([{ "name": "s", "emptyDir": {} }]),
        );
        let mounts = prepare_one(&dir, &spec)
            .mounts_for(&spec.containers[0])
            .unwrap();
        assert_eq!(mounts[0]["options"], json!(["rbind", "rprivate", "ro"]));
        assert_eq!(mounts[1]["destination"], "/slave");
        assert_eq!(
            mounts[1]["options"],
            json!(["rbind", "rslave", "rw", "noexec", "nosuid"])
        );
    }

    #[test]
    fn file_volumes_are_rewritten_only_when_their_content_changes() {
        let dir = PodDir::new();
        let spec = one_container(
            json!([]),
            json!([{ "name": "cfg", "configMap": { "name": "app" } }]),
        );
        let (l, a) = (labels(), BTreeMap::new());
        let mut data = data();
        prepare(dir.path(), &info(&l, &a), &spec, &data).unwrap();
        let v = dir.volume("cfg");
        let first = fs::read_link(v.join("..data")).unwrap();
        prepare(dir.path(), &info(&l, &a), &spec, &data).unwrap();
        assert_eq!(
            fs::read_link(v.join("..data")).unwrap(),
            first,
            "unchanged: not rewritten"
        );

        let app = data.config_maps.get_mut("app").unwrap();
        app.remove("extra");
        app.insert("app.conf".into(), b"listen 8080\n".to_vec());
        prepare(dir.path(), &info(&l, &a), &spec, &data).unwrap();
        let second = fs::read_link(v.join("..data")).unwrap();
        assert_ne!(second, first);
        assert_eq!(read(&v.join("app.conf")), "listen 8080\n");
        assert!(!v.join("extra").exists(), "a removed key disappears");
        assert!(
            !v.join(&first).exists(),
            "the old data directory is removed"
        );
        let mut names: Vec<String> = fs::read_dir(&v)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, [second.to_str().unwrap(), "..data", "app.conf"]);
    }

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
    fn items_own_users_when_asked() {
        let dir = PodDir::new();
        let spec = one_container(
            json!([]),
            json!([{ "name": "cfg", "configMap": { "name": "app", "defaultUser": 1000, "items": [
                { "key": "app.conf", "path": "a" },
                { "key": "extra", "path": "b", "user": 1001 },
            ] } }]),
        );
        prepare_one(&dir, &spec);
        let uid = |p: &str| fs::metadata(dir.volume("cfg").join(p)).unwrap().uid();
        assert_eq!((uid("a"), uid("b")), (1000, 1001));
    }

    /// `validate` of a pod with one container mounting `mounts` and `volumes`.
    fn invalid(mounts: Value, volumes: Value) -> VolumeError {
        validate(&one_container(mounts, volumes), &data()).expect_err("invalid")
    }

    fn field(err: &VolumeError) -> &str {
        match err {
            VolumeError::Invalid { field, .. }
            | VolumeError::Unsupported { field }
            | VolumeError::BadMode { field, .. }
            | VolumeError::BadPath { field, .. } => field,
            other => panic!("no field in {other:?}"),
        }
    }

    #[test]
    fn validation_names_the_volume_and_the_field() {
        let none = json!([]);
        let cfg = |extra: Value| {
            let mut c = json!({ "name": "app" });
            c.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            json!([{ "name": "cfg", "configMap": c }])
        };
        let cases: Vec<(Value, Value, &str)> = vec![
            (
                none.clone(),
                json!([{ "name": "n", "nfs": { "server": "s", "path": "/" } }]),
                "volumes[n].nfs",
            ),
            (none.clone(), json!([{ "name": "n" }]), "volumes[n]"),
            (
                none.clone(),
                json!([{ "name": "n", "emptyDir": {}, "hostPath": { "path": "/x" } }]),
                "volumes[n]",
            ),
            (
                none.clone(),
                json!([{ "name": "Bad_Name", "emptyDir": {} }]),
                "volumes[Bad_Name].name",
            ),
            (
                none.clone(),
                json!([{ "name": "h", "hostPath": { "path": "relative" } }]),
                "volumes[h].hostPath.path",
            ),
            (
                none.clone(),
                json!([{ "name": "h", "hostPath": { "path": "/a/../b" } }]),
                "volumes[h].hostPath.path",
            ),
            (
                none.clone(),
                json!([{ "name": "h", "hostPath": { "path": "/x", "type": "Dir" } }]),
                "volumes[h].hostPath.type",
            ),
            (
                none.clone(),
                json!([{ "name": "e", "emptyDir": { "medium": "HugePages" } }]),
                "volumes[e].emptyDir.medium",
            ),
            (
                none.clone(),
                json!([{ "name": "e", "emptyDir": { "sizeLimit": "lots" } }]),
                "volumes[e].emptyDir.sizeLimit",
            ),
            (
                none.clone(),
                json!([{ "name": "e", "emptyDir": { "mode": 0o2000 } }]),
                "volumes[e].emptyDir.mode",
            ),
            (
                none.clone(),
                cfg(json!({ "defaultMode": 0o1000 })),
                "volumes[cfg].configMap.defaultMode",
            ),
            (
                none.clone(),
                cfg(json!({ "defaultMode": -1 })),
                "volumes[cfg].configMap.defaultMode",
            ),
            (
                none.clone(),
                cfg(json!({ "items": [{ "key": "extra", "path": "x", "mode": 512 }] })),
                "volumes[cfg].configMap.items[0].mode",
            ),
            (
                none.clone(),
                cfg(json!({ "items": [{ "key": "extra", "path": "../x" }] })),
                "volumes[cfg].configMap.items[0].path",
            ),
            (
                none.clone(),
                cfg(json!({ "items": [{ "key": "extra", "path": "/x" }] })),
                "volumes[cfg].configMap.items[0].path",
            ),
            (
                none.clone(),
                cfg(json!({ "items": [{ "key": "extra", "path": "..data" }] })),
                "volumes[cfg].configMap.items[0].path",
            ),
            (
                none.clone(),
                cfg(
                    json!({ "items": [{ "key": "extra", "path": "x" }, { "key": "app.conf", "path": "x" }] }),
                ),
                "volumes[cfg].configMap.items[1].path",
            ),
            (
                none.clone(),
                cfg(
                    json!({ "items": [{ "key": "extra", "path": "x" }, { "key": "app.conf", "path": "x/y" }] }),
                ),
                "volumes[cfg]",
            ),
            (
                none.clone(),
                json!([{ "name": "s", "secret": {} }]),
                "volumes[s].secret.secretName",
            ),
            (
                none.clone(),
                json!([{ "name": "d", "downwardAPI": { "items": [{ "path": "x", "fieldRef": { "fieldPath": "spec.serviceAccountName" } }] } }]),
                "volumes[d].downwardAPI.items[0].fieldRef.fieldPath",
            ),
            (
                none.clone(),
                json!([{ "name": "d", "downwardAPI": { "items": [{ "path": "x" }] } }]),
                "volumes[d].downwardAPI.items[0]",
            ),
            (
                none.clone(),
                json!([{ "name": "d", "downwardAPI": { "items": [{ "path": "x", "resourceFieldRef": { "resource": "limits.cpu" } }] } }]),
                "volumes[d].downwardAPI.items[0].resourceFieldRef.containerName",
            ),
            (
                none.clone(),
                json!([{ "name": "d", "downwardAPI": { "items": [{ "path": "x", "resourceFieldRef": { "containerName": "other", "resource": "limits.cpu" } }] } }]),
                "volumes[d].downwardAPI.items[0].resourceFieldRef.containerName",
            ),
            (
                none.clone(),
                json!([{ "name": "d", "downwardAPI": { "items": [{ "path": "x", "resourceFieldRef": { "containerName": "main", "resource": "limits.ephemeral-storage" } }] } }]),
                "volumes[d].downwardAPI.items[0].resourceFieldRef.resource",
            ),
            (
                none.clone(),
                json!([{ "name": "d", "downwardAPI": { "items": [{ "path": "x", "resourceFieldRef": { "containerName": "main", "resource": "limits.cpu", "divisor": "0" } }] } }]),
                "volumes[d].downwardAPI.items[0].resourceFieldRef.divisor",
            ),
            (
                none.clone(),
                json!([{ "name": "p", "projected": { "sources": [{ "clusterTrustBundle": { "path": "b" } }] } }]),
                "volumes[p].projected.sources[0].clusterTrustBundle",
            ),
            (
                none.clone(),
                json!([{ "name": "p", "projected": { "sources": [{ "serviceAccountToken": { "path": "t", "expirationSeconds": 60 } }] } }]),
                "volumes[p].projected.sources[0].serviceAccountToken.expirationSeconds",
            ),
            (
                none.clone(),
                json!([{ "name": "p", "projected": { "sources": [{ "serviceAccountToken": { "path": "t" } }, { "downwardAPI": { "items": [{ "path": "t", "fieldRef": { "fieldPath": "metadata.name" } }] } }] } }]),
                "volumes[p].projected.sources[1].downwardAPI.items[0].path",
            ),
            (
                json!([{ "name": "s", "mountPath": "rel" }]),
                json!([{ "name": "s", "emptyDir": {} }]),
                "containers[main].volumeMounts[0].mountPath",
            ),
            (
                json!([{ "name": "s", "mountPath": "/a" }, { "name": "s", "mountPath": "/a/" }]),
                json!([{ "name": "s", "emptyDir": {} }]),
                "containers[main].volumeMounts[1].mountPath",
            ),
            (
                json!([{ "name": "s", "mountPath": "/a", "subPathExpr": "$(POD)" }]),
                json!([{ "name": "s", "emptyDir": {} }]),
                "containers[main].volumeMounts[0].subPathExpr",
            ),
            (
                json!([{ "name": "s", "mountPath": "/a", "mountPropagation": "Bidirectional" }]),
                json!([{ "name": "s", "emptyDir": {} }]),
                "containers[main].volumeMounts[0].mountPropagation",
            ),
            (
                json!([{ "name": "s", "mountPath": "/a", "recursiveReadOnly": "IfPossible" }]),
                json!([{ "name": "s", "emptyDir": {} }]),
                "containers[main].volumeMounts[0].recursiveReadOnly",
            ),
            (
                json!([{ "name": "s", "mountPath": "/a", "readOnly": true, "recursiveReadOnly": "Enabled" }]),
                json!([{ "name": "s", "emptyDir": {} }]),
                "containers[main].volumeMounts[0].recursiveReadOnly",
            ),
            (
                json!([{ "name": "s", "mountPath": "/a", "bindMountOptions": ["suid"] }]),
                json!([{ "name": "s", "emptyDir": {} }]),
                "containers[main].volumeMounts[0].bindMountOptions",
            ),
        ];
        for (mounts, volumes, want) in cases {
            let err = invalid(mounts.clone(), volumes.clone());
            assert_eq!(field(&err), want, "{volumes} {mounts}: {err}");
        }
    }

    #[test]
    fn validation_errors_name_volumes_containers_sources_and_keys() {
        let scratch = json!([{ "name": "s", "emptyDir": {} }]);
        let err = invalid(
            json!([{ "name": "nope", "mountPath": "/x" }]),
            scratch.clone(),
        );
        assert_eq!(
            err.to_string(),
            "container \"main\" mounts unknown volume \"nope\" at \"/x\""
        );
        let err = invalid(
            json!([]),
            json!([{ "name": "s", "emptyDir": {} }, { "name": "s", "emptyDir": {} }]),
        );
        assert!(
            matches!(&err, VolumeError::DuplicateVolume { volume } if volume == "s"),
            "{err}"
        );
        for sub in ["/abs", "a/../../b", ".."] {
            let err = invalid(
                json!([{ "name": "s", "mountPath": "/x", "subPath": sub }]),
                scratch.clone(),
            );
            assert!(
                matches!(&err, VolumeError::BadSubPath { container, volume, .. } if container == "main" && volume == "s"),
                "{sub}: {err}"
            );
        }
        let err = invalid(
            json!([]),
            json!([{ "name": "c", "configMap": { "name": "nope" } }]),
        );
        assert_eq!(
            err.to_string(),
            "volume \"c\": configMap \"nope\" not found"
        );
        let err = invalid(
            json!([]),
            json!([{ "name": "c", "secret": { "secretName": "creds", "items": [{ "key": "user", "path": "u" }] } }]),
        );
        assert_eq!(
            err.to_string(),
            "volume \"c\": key \"user\" not found in secret \"creds\""
        );
        let err = invalid(
            json!([]),
            json!([{ "name": "c", "configMap": { "name": "nope", "optional": true, "items": [{ "key": "k", "path": "/abs" }] } }]),
        );
        assert!(
            matches!(err, VolumeError::BadPath { .. }),
            "items are checked even when the source is missing: {err}"
        );

        let spec = one_container(
            json!([]),
            json!([{ "name": "p", "projected": { "sources": [{ "serviceAccountToken": { "path": "t" } }] } }]),
        );
        let err = validate(&spec, &VolumeData::default()).unwrap_err();
        assert!(
            matches!(&err, VolumeError::MissingToken { volume } if volume == "p"),
            "{err}"
        );
        let mut spec = one_container(json!([]), scratch.clone());
        spec.containers[0].volume_devices = Some(vec![Default::default()]);
        assert_eq!(
            field(&validate(&spec, &data()).unwrap_err()),
            "containers[main].volumeDevices"
        );
        let spec = pod(json!({
            "containers": [{ "name": "main", "image": "b" }],
            "initContainers": [{ "name": "init", "image": "b", "volumeMounts": [{ "name": "x", "mountPath": "/x" }] }],
        }));
        assert!(
            matches!(validate(&spec, &data()), Err(VolumeError::UnknownVolume { container, .. }) if container == "init")
        );
        assert!(
            validate(
                &one_container(json!([]), json!(null)),
                &VolumeData::default()
            )
            .is_ok(),
            "no volumes"
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
        assert!(prepare(dir.path(), &info(&l, &a), &spec, &data()).is_err());
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

    #[test]
    fn mountinfo_points_are_found_deepest_first() {
        let table = "36 35 98:0 / /p/volumes/a rw - tmpfs tmpfs rw\n\
                     37 35 98:0 / /p/volumes/a\\040b rw - tmpfs tmpfs rw\n\
                     38 35 98:0 / /p/volumes/a/deep rw - tmpfs tmpfs rw\n\
                     39 35 98:0 / /p/volumesx rw - tmpfs tmpfs rw\n";
        let points = mount_points_under(table, Path::new("/p/volumes"));
        assert_eq!(
            points,
            [
                PathBuf::from("/p/volumes/a/deep"),
                PathBuf::from("/p/volumes/a"),
                PathBuf::from("/p/volumes/a b")
            ]
        );
    }
}
