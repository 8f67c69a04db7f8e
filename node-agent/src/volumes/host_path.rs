//! hostPath volumes: checked against their `type`, created for the `*OrCreate`
//! types and, as containerd's CRI plugin does, when no type is given.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, OpenOptionsExt};
use std::path::Path;

use super::error::volume_io;
use super::{DIR_MODE, VolumeError};

/// A file made for a `FileOrCreate` host path.
const NEW_FILE_MODE: u32 = 0o644;

/// `hostPath.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum HostPathType {
    Unset,
    DirectoryOrCreate,
    Directory,
    FileOrCreate,
    File,
    Socket,
    CharDevice,
    BlockDevice,
}

/// Checks a hostPath against its type; creates it for the `*OrCreate` types and,
/// as containerd's CRI plugin does, as a directory when the type is unset.
pub(super) fn check(volume: &str, path: &Path, kind: HostPathType) -> Result<(), VolumeError> {
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::fs;
    use std::path::Path;

    use serde_json::{Value, json};

    use super::*;
    use crate::volumes::cleanup;
    use crate::volumes::test_support::*;

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
            prepare_with(dir.path(), &info(&l, &a), &spec, &data())
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
}
