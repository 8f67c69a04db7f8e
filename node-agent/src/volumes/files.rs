//! configMap, secret, downwardAPI and projected volumes: which files they hold,
//! checked against the data the control plane resolved, and writing them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::PodSpec;

use super::atomic_writer::write_atomic;
use super::disk::{make_dir, set_owner_and_mode};
use super::downward::downward_value;
use super::error::volume_io;
use super::source::{KeysKind, Projection, mode, user};
use super::tmpfs::mount_tmpfs;
use super::validation::file_path;
use super::{DIR_MODE, PodInfo, VolumeData, VolumeError};

/// Kubernetes' default mode of configMap, secret, downwardAPI and projected files.
pub(super) const DEFAULT_FILE_MODE: u32 = 0o644;
/// Largest file mode Kubernetes accepts in `defaultMode` and `mode`.
pub(super) const MAX_FILE_MODE: i32 = 0o777;
/// What fsGroup adds to files of read-only volumes (the kubelet's `roMask`).
const FS_GROUP_FILE_BITS: u32 = 0o440;
/// What fsGroup adds to directories of read-only volumes (`roMask | execMask | setgid`).
const FS_GROUP_RO_DIR_BITS: u32 = 0o2550;

/// One file of a file volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct FileSpec {
    pub(super) content: Vec<u8>,
    pub(super) mode: u32,
    pub(super) uid: Option<u32>,
    pub(super) gid: Option<u32>,
}

/// Relative path → file.
pub(super) type Payload = BTreeMap<PathBuf, FileSpec>;

/// The settings of one file volume.
pub(super) struct Files<'a> {
    pub(super) volume: &'a str,
    pub(super) default_mode: u32,
    pub(super) default_user: Option<u32>,
    pub(super) fs_group: Option<u32>,
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
    pub(super) fn collect(
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

    /// Writes the volume at `dir` (a tmpfs when `tmpfs`) with the atomic writer.
    pub(super) fn write(
        &self,
        dir: &Path,
        projections: &[Projection<'_>],
        tmpfs: bool,
        data: &VolumeData,
        pod: &PodInfo<'_>,
        spec: &PodSpec,
    ) -> Result<(), VolumeError> {
        let name = self.volume;
        let payload = self.collect(projections, data, pod, spec)?;
        let dir_mode = self.dir_mode();
        if tmpfs {
            mount_tmpfs(name, dir, None, dir_mode)?;
        } else {
            make_dir(dir, dir_mode, None).map_err(volume_io(name, "create", dir))?;
        }
        set_owner_and_mode(dir, None, self.fs_group, dir_mode).map_err(volume_io(
            name,
            "set the mode of",
            dir,
        ))?;
        write_atomic(name, dir, &payload, dir_mode, self.fs_group)
    }

    fn missing_source(&self, kind: KeysKind, name: &str) -> VolumeError {
        VolumeError::MissingSource {
            volume: self.volume.to_owned(),
            kind: kind.name(),
            name: name.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::MetadataExt;

    use serde_json::json;

    use crate::volumes::test_support::*;

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
}
