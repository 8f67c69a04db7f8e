//! Classification: a `Volume`, checked, as what the agent does with it.

use k8s_openapi::api::core::v1::{DownwardAPIVolumeFile, KeyToPath, Volume};
use serde_json::Value;

use super::VolumeError;
use super::empty_dir::{EMPTY_DIR_MODE, MAX_DIR_MODE};
use super::files::{DEFAULT_FILE_MODE, MAX_FILE_MODE};
use super::host_path::HostPathType;
use super::validation::clean_absolute;
use crate::spec::parse_quantity;

/// Kubernetes' bounds of `serviceAccountToken.expirationSeconds`.
const TOKEN_EXPIRATION_SECONDS: std::ops::RangeInclusive<i64> = 600..=(1 << 32);

/// A volume, checked.
pub(super) enum Source<'s> {
    EmptyDir {
        memory: bool,
        size: Option<u64>,
        mode: u32,
    },
    HostPath {
        path: &'s str,
        kind: HostPathType,
    },
    /// persistentVolumeClaim: storage the control plane resolved into
    /// [`super::VolumeData::claims`].
    Claim {
        claim: &'s str,
        read_only: bool,
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
pub(super) enum Projection<'s> {
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
pub(super) enum KeysKind {
    ConfigMap,
    Secret,
}

impl KeysKind {
    pub(super) fn name(self) -> &'static str {
        match self {
            Self::ConfigMap => "configMap",
            Self::Secret => "secret",
        }
    }
}

/// The camelCase names of the fields set in a Kubernetes object.
fn set_fields<T: serde::Serialize>(value: &T) -> Vec<String> {
    match serde_json::to_value(value) {
        Ok(Value::Object(map)) => map.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

pub(super) fn classify(v: &Volume) -> Result<Source<'_>, VolumeError> {
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
    } else if let Some(c) = &v.persistent_volume_claim {
        if c.claim_name.is_empty() {
            return Err(invalid(
                "persistentVolumeClaim.claimName",
                "is required".into(),
            ));
        }
        Ok(Source::Claim {
            claim: &c.claim_name,
            read_only: c.read_only.unwrap_or(false),
        })
    } else {
        Err(VolumeError::Unsupported { field: at(kind) })
    }
}

pub(super) fn mode(
    value: Option<i32>,
    default: u32,
    max: i32,
    field: String,
) -> Result<u32, VolumeError> {
    match value {
        None => Ok(default),
        Some(m) if (0..=max).contains(&m) => Ok(m.unsigned_abs()),
        Some(mode) => Err(VolumeError::BadMode { field, mode, max }),
    }
}

/// A file owner (the alpha `defaultUser`/`user` fields): 0..=2147483647, as runAsUser.
pub(super) fn user(value: Option<i64>, field: String) -> Result<Option<u32>, VolumeError> {
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
