//! Spec checks: [`validate`], and the name and path checks the other modules share.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, PodSpec};

use super::files::Files;
use super::mounts::check_mount;
use super::source::{Source, classify, user};
use super::{PodInfo, VolumeData, VolumeError};

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
        if !crate::spec::is_dns_label(&v.name) {
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
        match classify(v)? {
            Source::Files {
                projections,
                default_mode,
                default_user,
                ..
            } => {
                let files = Files {
                    volume: &v.name,
                    default_mode,
                    default_user,
                    fs_group,
                };
                files.collect(&projections, data, &placeholder, spec)?;
            }
            Source::Claim { claim, .. } => {
                super::claim::check(&v.name, claim, &data.claims)?;
            }
            _ => {}
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

/// The pod's `securityContext.fsGroup`, its change policy checked.
pub(super) fn fs_group(spec: &PodSpec) -> Result<Option<u32>, VolumeError> {
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

/// `p` without `.` elements, when it is relative and has no `..` element.
pub(super) fn clean_relative(p: &str) -> Option<PathBuf> {
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
pub(super) fn clean_absolute(p: &str) -> Option<PathBuf> {
    let rest = p.strip_prefix('/')?;
    clean_relative(rest).map(|r| Path::new("/").join(r))
}

/// A file path in a file volume: relative, non-empty, no `..` element, and not
/// starting with `..` (the atomic writer's own names do).
pub(super) fn file_path(p: &str) -> Option<PathBuf> {
    let clean = clean_relative(p)?;
    let first = clean.components().next()?;
    if p.starts_with("..") || first.as_os_str().as_encoded_bytes().starts_with(b"..") {
        return None;
    }
    Some(clean)
}

/// Every container of the pod with the name of its list.
pub(super) fn containers(spec: &PodSpec) -> impl Iterator<Item = (&'static str, &Container)> {
    spec.containers.iter().map(|c| ("containers", c)).chain(
        spec.init_containers
            .iter()
            .flatten()
            .map(|c| ("initContainers", c)),
    )
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::volumes::test_support::*;

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
}
