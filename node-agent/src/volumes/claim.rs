//! persistentVolumeClaim volumes: storage the control plane resolved for the
//! claim, either a directory of the host (a local persistent volume) or an EBS
//! volume attached to this instance.
//!
//! An EBS volume is found by its id, as Nitro instances name NVMe volumes under
//! `/dev/disk/by-id` (`nvme-Amazon_Elastic_Block_Store_vol0123...`, the id without
//! its dash): the device name given to AttachVolume is not the one the kernel
//! uses. A volume without a filesystem is formatted (`mkfs.ext4 -F -m0`, or
//! `mkfs.xfs`, as the kubelet's SafeFormatAndMount does); one with another
//! filesystem than asked, or with a partition table and no filesystem, is refused
//! rather than formatted. It is mounted at `<pod_dir>/volumes/<name>` and
//! bind-mounted from there into containers; [`super::cleanup`] unmounts it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::mount::MsFlags;
use orca_proto::types::v1 as pb;

use super::VolumeError;
use super::disk::{make_dir, set_owner_and_mode};
use super::error::volume_io;
use super::tmpfs::is_mount_point;
use super::validation::clean_absolute;

/// Mode of a local volume's directory when the agent creates it (as an emptyDir's).
const LOCAL_DIR_MODE: u32 = 0o777;
/// Mode of the mount point of an EBS volume.
const MOUNT_POINT_MODE: u32 = 0o750;
/// What fsGroup adds to a claim's root (`g+rwx`, setgid), as for an emptyDir.
const FS_GROUP_RW_DIR_BITS: u32 = 0o2770;
/// How often the agent looks for an EBS volume's device while it waits.
const ATTACH_POLL: Duration = Duration::from_millis(100);

/// Where a claim's storage is, as the control plane resolved it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimVolume {
    /// The claim, `namespace/name`.
    pub claim: String,
    /// Its storage; `None` when the control plane sent none.
    pub source: Option<ClaimSource>,
}

/// A claim's storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimSource {
    /// A directory of the host.
    Local(PathBuf),
    /// An EBS volume attached to this instance.
    Ebs {
        /// `vol-...`.
        volume_id: String,
        /// `ext4` or `xfs` (empty: ext4).
        fs_type: String,
    },
}

impl From<pb::ClaimVolume> for ClaimVolume {
    fn from(c: pb::ClaimVolume) -> Self {
        use pb::claim_volume::Source;
        let source = c.source.map(|s| match s {
            Source::LocalPath(p) => ClaimSource::Local(PathBuf::from(p)),
            Source::Ebs(e) => ClaimSource::Ebs {
                volume_id: e.volume_id,
                fs_type: e.fs_type,
            },
        });
        Self {
            claim: c.claim,
            source,
        }
    }
}

/// The filesystems the agent makes and mounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FsType {
    Ext4,
    Xfs,
}

impl FsType {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "" | "ext4" => Some(Self::Ext4),
            "xfs" => Some(Self::Xfs),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Ext4 => "ext4",
            Self::Xfs => "xfs",
        }
    }

    fn mkfs(self, device: &Path) -> Command {
        let mut cmd = match self {
            Self::Ext4 => {
                let mut c = Command::new("mkfs.ext4");
                c.args(["-F", "-m0", "-q"]);
                c
            }
            Self::Xfs => {
                let mut c = Command::new("mkfs.xfs");
                c.arg("-q");
                c
            }
        };
        cmd.arg(device);
        cmd
    }
}

/// The link under `dir` that names EBS volume `volume_id` on a Nitro instance.
pub fn ebs_device_link(dir: &Path, volume_id: &str) -> PathBuf {
    dir.join(format!(
        "nvme-Amazon_Elastic_Block_Store_{}",
        volume_id.replace('-', "")
    ))
}

/// Whether `id` looks like an EBS volume id (`vol-` and 8 or 17 hex digits).
fn is_volume_id(id: &str) -> bool {
    id.strip_prefix("vol-").is_some_and(|hex| {
        matches!(hex.len(), 8 | 17) && hex.bytes().all(|b| b.is_ascii_hexdigit())
    })
}

/// The checked storage of claim volume `volume` (referring to `claim_name`).
pub(super) fn check<'d>(
    volume: &str,
    claim_name: &str,
    claims: &'d std::collections::BTreeMap<String, ClaimVolume>,
) -> Result<&'d ClaimVolume, VolumeError> {
    let fail = |claim: &str, reason: String| VolumeError::Claim {
        volume: volume.to_owned(),
        claim: claim.to_owned(),
        reason,
    };
    let Some(c) = claims.get(volume) else {
        return Err(fail(
            claim_name,
            "the control plane sent no storage for this claim".into(),
        ));
    };
    match &c.source {
        None => Err(fail(&c.claim, "the claim has no storage".into())),
        Some(ClaimSource::Local(p)) => match p.to_str().and_then(clean_absolute) {
            Some(clean) if clean == *p => Ok(c),
            _ => Err(fail(
                &c.claim,
                format!("local path {} is not a clean absolute path", p.display()),
            )),
        },
        Some(ClaimSource::Ebs { volume_id, fs_type }) => {
            if !is_volume_id(volume_id) {
                return Err(fail(
                    &c.claim,
                    format!("{volume_id:?} is not an EBS volume id"),
                ));
            }
            if FsType::parse(fs_type).is_none() {
                return Err(fail(
                    &c.claim,
                    format!("filesystem {fs_type:?} is not ext4 or xfs"),
                ));
            }
            Ok(c)
        }
    }
}

/// Waits until every EBS volume of `claims` has its device under `dir`, for at
/// most `wait` each; the control plane attaches them as the instance boots.
pub async fn wait_attached(
    claims: &std::collections::BTreeMap<String, ClaimVolume>,
    dir: &Path,
    wait: Duration,
) -> Result<(), VolumeError> {
    for (volume, c) in claims {
        let Some(ClaimSource::Ebs { volume_id, .. }) = &c.source else {
            continue;
        };
        let link = ebs_device_link(dir, volume_id);
        let deadline = Instant::now() + wait;
        while !link.exists() {
            if Instant::now() >= deadline {
                return Err(VolumeError::NotAttached {
                    volume: volume.clone(),
                    volume_id: volume_id.clone(),
                    link,
                    waited: wait,
                });
            }
            tokio::time::sleep(ATTACH_POLL).await;
        }
    }
    Ok(())
}

/// Makes the claim's storage ready for volume `volume` and returns where it is on
/// the host: a local directory (created when missing), or the EBS volume
/// formatted when empty and mounted at `mount_point`. With an fsGroup the root
/// gets the group, `g+rwx` and setgid.
pub(super) fn prepare(
    volume: &str,
    c: &ClaimVolume,
    mount_point: &Path,
    ebs_device_dir: &Path,
    fs_group: Option<u32>,
) -> Result<PathBuf, VolumeError> {
    let fail = |reason: String| VolumeError::Claim {
        volume: volume.to_owned(),
        claim: c.claim.clone(),
        reason,
    };
    let root = match &c.source {
        None => return Err(fail("the claim has no storage".into())),
        Some(ClaimSource::Local(path)) => {
            make_dir(path, LOCAL_DIR_MODE, None).map_err(volume_io(volume, "create", path))?;
            path.clone()
        }
        Some(ClaimSource::Ebs { volume_id, fs_type }) => {
            let fs = FsType::parse(fs_type)
                .ok_or_else(|| fail(format!("filesystem {fs_type:?} is not ext4 or xfs")))?;
            let link = ebs_device_link(ebs_device_dir, volume_id);
            let device = std::fs::canonicalize(&link).map_err(|e| {
                fail(format!(
                    "EBS volume {volume_id} is not attached ({}: {e})",
                    link.display()
                ))
            })?;
            make_dir(mount_point, MOUNT_POINT_MODE, None).map_err(volume_io(
                volume,
                "create",
                mount_point,
            ))?;
            let mounted =
                is_mount_point(mount_point).map_err(volume_io(volume, "inspect", mount_point))?;
            if !mounted {
                format_if_empty(&device, fs).map_err(|r| fail(format!("{volume_id}: {r}")))?;
                nix::mount::mount(
                    Some(&device),
                    mount_point,
                    Some(fs.name()),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                    None::<&str>,
                )
                .map_err(|e| {
                    fail(format!(
                        "cannot mount {} ({volume_id}) at {}: {e}",
                        device.display(),
                        mount_point.display()
                    ))
                })?;
            }
            mount_point.to_owned()
        }
    };
    if let Some(gid) = fs_group {
        let mode = std::fs::metadata(&root)
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777)
            .map_err(volume_io(volume, "inspect", &root))?;
        set_owner_and_mode(&root, None, Some(gid), mode | FS_GROUP_RW_DIR_BITS)
            .map_err(volume_io(volume, "set the mode of", &root))?;
    }
    Ok(root)
}

/// What `blkid -p` finds on a device: its filesystem and partition table types.
#[derive(Debug, Default, PartialEq, Eq)]
struct Probe {
    fs: Option<String>,
    partition_table: Option<String>,
}

fn parse_probe(export: &str) -> Probe {
    let mut p = Probe::default();
    for line in export.lines() {
        match line.split_once('=') {
            Some(("TYPE", v)) => p.fs = Some(v.to_owned()),
            Some(("PTTYPE", v)) => p.partition_table = Some(v.to_owned()),
            _ => {}
        }
    }
    p
}

/// Formats `device` with `fs` when it holds nothing; refuses another filesystem
/// or a partition table.
fn format_if_empty(device: &Path, fs: FsType) -> Result<(), String> {
    let out = Command::new("blkid")
        .args(["-p", "-s", "TYPE", "-s", "PTTYPE", "-o", "export"])
        .arg(device)
        .output()
        .map_err(|e| format!("cannot run blkid (util-linux): {e}"))?;
    // blkid exits 2 when it finds nothing.
    let probe = match out.status.code() {
        Some(0) => parse_probe(&String::from_utf8_lossy(&out.stdout)),
        Some(2) => Probe::default(),
        _ => {
            return Err(format!(
                "blkid failed on {}: {}",
                device.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    };
    match (probe.fs.as_deref(), probe.partition_table.as_deref()) {
        (Some(found), _) if found == fs.name() => Ok(()),
        (Some(found), _) => Err(format!(
            "holds a {found} filesystem, not {}; not formatted",
            fs.name()
        )),
        (None, Some(table)) => Err(format!(
            "has a {table} partition table and no filesystem; not formatted"
        )),
        (None, None) => {
            let out = fs
                .mkfs(device)
                .output()
                .map_err(|e| format!("cannot run mkfs.{}: {e}", fs.name()))?;
            if out.status.success() {
                tracing::info!(device = %device.display(), fs = fs.name(), "empty volume formatted");
                Ok(())
            } else {
                Err(format!(
                    "mkfs.{} failed: {}",
                    fs.name(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nitro_names_volumes_by_id_without_the_dash() {
        assert_eq!(
            ebs_device_link(Path::new("/dev/disk/by-id"), "vol-0123456789abcdef0"),
            Path::new("/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0123456789abcdef0")
        );
        assert!(is_volume_id("vol-0123456789abcdef0"));
        assert!(is_volume_id("vol-0123abcd"));
        assert!(!is_volume_id("vol-xyz"));
        assert!(!is_volume_id("i-0123456789abcdef0"));
    }

    #[test]
    fn blkid_export_is_read_for_filesystem_and_partition_table() {
        assert_eq!(
            parse_probe("DEVNAME=/dev/loop0\nTYPE=ext4\n"),
            Probe {
                fs: Some("ext4".into()),
                partition_table: None
            }
        );
        assert_eq!(
            parse_probe("DEVNAME=/dev/loop0\nPTTYPE=gpt\n"),
            Probe {
                fs: None,
                partition_table: Some("gpt".into())
            }
        );
    }

    #[test]
    fn claims_are_checked_before_anything_is_touched() {
        let mut claims = std::collections::BTreeMap::new();
        let err = check("data", "mine", &claims).unwrap_err().to_string();
        assert!(err.contains("sent no storage"), "{err}");
        claims.insert(
            "data".to_owned(),
            ClaimVolume {
                claim: "default/mine".into(),
                source: Some(ClaimSource::Ebs {
                    volume_id: "vol-0123456789abcdef0".into(),
                    fs_type: "btrfs".into(),
                }),
            },
        );
        let err = check("data", "mine", &claims).unwrap_err().to_string();
        assert!(
            err.contains("btrfs") && err.contains("default/mine"),
            "{err}"
        );
        claims.get_mut("data").unwrap().source = Some(ClaimSource::Local("/a/../b".into()));
        assert!(check("data", "mine", &claims).is_err());
        claims.get_mut("data").unwrap().source = Some(ClaimSource::Local("/srv/claims/x".into()));
        assert!(check("data", "mine", &claims).is_ok());
    }
}
