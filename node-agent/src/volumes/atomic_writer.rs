//! The kubelet's atomic writer: a file volume's files live in a timestamped data
//! directory published by renaming a `..data` symlink, so a container sees the old
//! set of files or the new one, never a mix.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::VolumeError;
use super::disk::{make_dir, set_owner_and_mode};
use super::error::volume_io;
use super::files::{FileSpec, Payload};

/// The symlink to the current data directory of a file volume.
const DATA_LINK: &str = "..data";
/// The new `..data` symlink before it is renamed over the old one.
const DATA_LINK_TMP: &str = "..data_tmp";

/// Writes a file volume the way the kubelet's atomic writer does: into a fresh
/// timestamped directory, published by renaming a new `..data` symlink over the
/// old one; top-level names are symlinks through `..data`. Nothing is written when
/// the current data directory already holds exactly `payload`.
pub(super) fn write_atomic(
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::fs;
    use std::path::Path;

    use serde_json::json;

    use crate::volumes::test_support::*;

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
    fn file_volumes_are_rewritten_only_when_their_content_changes() {
        let dir = PodDir::new();
        let spec = one_container(
            json!([]),
            json!([{ "name": "cfg", "configMap": { "name": "app" } }]),
        );
        let (l, a) = (labels(), BTreeMap::new());
        let mut data = data();
        prepare_with(dir.path(), &info(&l, &a), &spec, &data).unwrap();
        let v = dir.volume("cfg");
        let first = fs::read_link(v.join("..data")).unwrap();
        prepare_with(dir.path(), &info(&l, &a), &spec, &data).unwrap();
        assert_eq!(
            fs::read_link(v.join("..data")).unwrap(),
            first,
            "unchanged: not rewritten"
        );

        let app = data.config_maps.get_mut("app").unwrap();
        app.remove("extra");
        app.insert("app.conf".into(), b"listen 8080\n".to_vec());
        prepare_with(dir.path(), &info(&l, &a), &spec, &data).unwrap();
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
}
