//! Containers' volumeMounts: checked, and turned into OCI bind mounts with their
//! subPaths resolved inside the volume.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, VolumeMount};
use serde_json::{Value, json};

use super::validation::{clean_absolute, clean_relative};
use super::{Kind, Prepared, PreparedVolume, VolumeError};

/// A volumeMount, checked.
pub(super) struct MountPlan {
    pub(super) destination: String,
    depth: usize,
    sub_path: Option<PathBuf>,
    propagation: &'static str,
    bind_options: Vec<String>,
}

pub(super) fn check_mount(
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

impl Prepared {
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
            let read_only = m.read_only.unwrap_or(false)
                || matches!(volume.kind, Kind::Files | Kind::Claim { read_only: true });
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
        if let Some(resolv) = self.resolv_conf.as_ref().and_then(|p| p.to_str()) {
            mounts.push((
                2,
                json!({
                    "destination": "/etc/resolv.conf",
                    "type": "bind",
                    "source": resolv,
                    "options": ["rbind", "rprivate", "ro"],
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

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::{Path, PathBuf};

    use k8s_openapi::api::core::v1::Container;
    use serde_json::json;

    use super::*;
    use crate::volumes::test_support::*;

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
}
