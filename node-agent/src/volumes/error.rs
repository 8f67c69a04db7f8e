//! [`VolumeError`], and the helpers that build its `Io` variant.

use std::io;
use std::path::{Path, PathBuf};

use nix::errno::Errno;

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
    /// A claim's storage cannot be used (not resolved, not formatted as asked,
    /// not mountable).
    #[error("volume {volume:?} (claim {claim}): {reason}")]
    Claim {
        /// Volume name.
        volume: String,
        /// The claim, `namespace/name`.
        claim: String,
        /// What is wrong.
        reason: String,
    },
    /// An EBS volume did not appear on the node in time.
    #[error("volume {volume:?}: EBS volume {volume_id} was not attached within {waited:?} (no {})", link.display())]
    NotAttached {
        /// Volume name.
        volume: String,
        /// `vol-...`.
        volume_id: String,
        /// The device link looked for.
        link: PathBuf,
        /// How long the agent waited.
        waited: std::time::Duration,
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

/// Maps an IO error on `path` to [`VolumeError::Io`] with `context`.
pub(super) fn io_err(context: &str, path: &Path) -> impl FnOnce(io::Error) -> VolumeError + use<> {
    let context = context.to_owned();
    let path = path.to_owned();
    move |source| VolumeError::Io {
        context,
        path,
        source,
    }
}

/// [`io_err`] with the context `volume "name": cannot <what>`.
pub(super) fn volume_io(
    volume: &str,
    what: &str,
    path: &Path,
) -> impl FnOnce(io::Error) -> VolumeError + use<> {
    io_err(&format!("volume {volume:?}: cannot {what}"), path)
}
