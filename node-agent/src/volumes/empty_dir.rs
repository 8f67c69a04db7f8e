//! emptyDir volumes: a directory under the pod's, or a tmpfs for `medium: Memory`.

use std::path::Path;

use super::VolumeError;
use super::disk::{make_dir, set_owner_and_mode};
use super::error::volume_io;
use super::tmpfs::mount_tmpfs;

/// Kubernetes' default mode of an emptyDir.
pub(super) const EMPTY_DIR_MODE: u32 = 0o777;
/// Largest emptyDir `mode`.
pub(super) const MAX_DIR_MODE: i32 = 0o1777;
/// What fsGroup adds to an emptyDir's root (`rwMask | execMask | setgid`).
const FS_GROUP_RW_DIR_BITS: u32 = 0o2770;

/// Creates the emptyDir `volume` at `dir` with `mode`, as a tmpfs of `size` bytes
/// when `memory`; with an fsGroup the root gets the group, `g+rwx` and setgid.
/// Content and a tmpfs already there are kept.
pub(super) fn prepare(
    volume: &str,
    dir: &Path,
    memory: bool,
    size: Option<u64>,
    mode: u32,
    fs_group: Option<u32>,
) -> Result<(), VolumeError> {
    if memory {
        mount_tmpfs(volume, dir, size, mode)?;
    } else {
        make_dir(dir, mode, None).map_err(volume_io(volume, "create", dir))?;
    }
    let mode = match fs_group {
        Some(_) => mode | FS_GROUP_RW_DIR_BITS,
        None => mode,
    };
    set_owner_and_mode(dir, None, fs_group, mode).map_err(volume_io(volume, "set the mode of", dir))
}

#[cfg(test)]
mod tests {
    use std::fs;

    use serde_json::json;

    use crate::volumes::cleanup;
    use crate::volumes::test_support::*;

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
}
