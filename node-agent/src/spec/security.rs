//! A container's privileges: capabilities (Kubernetes names, no `CAP_` prefix,
//! `ALL` allowed in add and drop) and privileged mode.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Container;
use serde_json::{Value, json};

use super::SpecError;

/// Every Linux capability, by its Kubernetes name.
pub const ALL_CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Capabilities a container gets by default (containerd's and Docker's set).
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

fn normalize(name: &str) -> String {
    name.trim().trim_start_matches("CAP_").to_ascii_uppercase()
}

/// Whether the container runs privileged.
pub fn privileged(container: &Container) -> bool {
    container
        .security_context
        .as_ref()
        .and_then(|s| s.privileged)
        .unwrap_or(false)
}

/// The container's capability set (as `CAP_*` names, sorted), or an error naming
/// an unknown capability.
pub fn capabilities(container: &Container) -> Result<Vec<String>, SpecError> {
    if privileged(container) {
        return Ok(ALL_CAPABILITIES
            .iter()
            .map(|c| format!("CAP_{c}"))
            .collect());
    }
    let caps = container
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.as_ref());
    let list = |v: Option<&Vec<String>>| -> Result<Vec<String>, SpecError> {
        v.into_iter()
            .flatten()
            .map(|c| {
                let n = normalize(c);
                if n == "ALL" || ALL_CAPABILITIES.contains(&n.as_str()) {
                    Ok(n)
                } else {
                    Err(SpecError::UnknownCapability {
                        container: container.name.clone(),
                        capability: c.clone(),
                    })
                }
            })
            .collect()
    };
    let add = list(caps.and_then(|c| c.add.as_ref()))?;
    let drop = list(caps.and_then(|c| c.drop.as_ref()))?;
    let mut set: BTreeSet<String> = DEFAULT_CAPABILITIES.iter().map(|c| c.to_string()).collect();
    if drop.iter().any(|c| c == "ALL") {
        set.clear();
    }
    for c in &drop {
        set.remove(c);
    }
    if add.iter().any(|c| c == "ALL") {
        set.extend(ALL_CAPABILITIES.iter().map(|c| c.to_string()));
    }
    set.extend(add.into_iter().filter(|c| c != "ALL"));
    Ok(set.into_iter().map(|c| format!("CAP_{c}")).collect())
}

/// The capabilities this host lets its processes have (the agent's bounding set),
/// as `CAP_*` names: what a privileged container gets, as containerd does.
pub fn host_capabilities() -> Vec<String> {
    let bounding = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapBnd:"))
                .map(|v| v.trim().to_owned())
        })
        .and_then(|hex| u64::from_str_radix(&hex, 16).ok())
        .unwrap_or(u64::MAX);
    capabilities_in(bounding)
}

/// The capability names of a capability bit mask (bit N is capability N).
pub fn capabilities_in(mask: u64) -> Vec<String> {
    ALL_CAPABILITIES
        .iter()
        .enumerate()
        .filter(|(bit, _)| mask & (1 << bit) != 0)
        .map(|(_, name)| format!("CAP_{name}"))
        .collect()
}

/// A host device node, for privileged containers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Path, e.g. `/dev/fuse`.
    pub path: String,
    /// `c` or `b`.
    pub kind: char,
    /// Major number.
    pub major: u64,
    /// Minor number.
    pub minor: u64,
    /// File mode.
    pub mode: u32,
}

impl Device {
    /// The OCI `linux.devices` entry.
    pub fn to_oci(&self) -> Value {
        json!({
            "path": self.path, "type": self.kind.to_string(), "major": self.major, "minor": self.minor,
            "fileMode": self.mode & 0o777, "uid": 0, "gid": 0,
        })
    }
}

/// The host's device nodes under `/dev` (not `/dev/pts`, `/dev/shm`, `/dev/mqueue`),
/// as a privileged container sees them with containerd.
pub fn host_devices() -> Vec<Device> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    fn walk(dir: &std::path::Path, out: &mut Vec<Device>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let ft = meta.file_type();
            if ft.is_dir() {
                if !["pts", "shm", "mqueue"]
                    .iter()
                    .any(|skip| path.ends_with(skip))
                {
                    walk(&path, out);
                }
                continue;
            }
            let kind = if ft.is_char_device() {
                'c'
            } else if ft.is_block_device() {
                'b'
            } else {
                continue;
            };
            let rdev = meta.rdev();
            let major = ((rdev >> 32) & 0xffff_f000) | ((rdev >> 8) & 0xfff);
            let minor = ((rdev >> 12) & 0xffff_ff00) | (rdev & 0xff);
            out.push(Device {
                path: path.display().to_string(),
                kind,
                major,
                minor,
                mode: meta.mode(),
            });
        }
    }
    let mut out = Vec::new();
    walk(std::path::Path::new("/dev"), &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Capabilities, SecurityContext};

    fn with_caps(add: &[&str], drop: &[&str]) -> Container {
        Container {
            name: "c".into(),
            security_context: Some(SecurityContext {
                capabilities: Some(Capabilities {
                    add: Some(add.iter().map(|s| s.to_string()).collect()),
                    drop: Some(drop.iter().map(|s| s.to_string()).collect()),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn add_and_drop_apply_to_the_default_set() {
        let caps = capabilities(&with_caps(&["NET_ADMIN"], &["NET_RAW", "CAP_KILL"])).unwrap();
        assert!(caps.contains(&"CAP_NET_ADMIN".into()));
        assert!(!caps.contains(&"CAP_NET_RAW".into()) && !caps.contains(&"CAP_KILL".into()));
        assert!(caps.contains(&"CAP_CHOWN".into()));
        assert_eq!(
            capabilities(&with_caps(&["SYS_TIME"], &["ALL"])).unwrap(),
            ["CAP_SYS_TIME"]
        );
        assert_eq!(
            capabilities(&with_caps(&["ALL"], &[])).unwrap().len(),
            ALL_CAPABILITIES.len()
        );
        let err = capabilities(&with_caps(&["FLY"], &[])).unwrap_err();
        assert_eq!(
            err,
            SpecError::UnknownCapability {
                container: "c".into(),
                capability: "FLY".into()
            }
        );
    }

    #[test]
    fn privileged_gets_every_capability() {
        let mut c = with_caps(&[], &["ALL"]);
        c.security_context.as_mut().unwrap().privileged = Some(true);
        assert!(privileged(&c));
        assert_eq!(capabilities(&c).unwrap().len(), ALL_CAPABILITIES.len());
    }

    #[test]
    fn capability_masks_map_to_names_by_bit() {
        assert_eq!(
            capabilities_in(0b1_0000_0000_0001),
            ["CAP_CHOWN", "CAP_NET_ADMIN"]
        );
        assert_eq!(capabilities_in(u64::MAX).len(), ALL_CAPABILITIES.len());
        assert!(host_capabilities().contains(&"CAP_CHOWN".to_owned()));
    }

    #[test]
    fn host_devices_include_dev_null() {
        let null = host_devices()
            .into_iter()
            .find(|d| d.path == "/dev/null")
            .expect("/dev/null");
        assert_eq!((null.kind, null.major, null.minor), ('c', 1, 3));
    }
}
