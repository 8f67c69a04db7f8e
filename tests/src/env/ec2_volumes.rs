//! The EBS side of the [`super::InstancePlayer`]: every poll it reads moto's
//! volumes (DescribeVolumes, directly) and makes each played host's disks
//! match: a volume attached to a live host gets its [`EbsDisk`] attached under
//! that host's by-id directory (the agent's `--ebs-device-dir`); a volume no
//! longer attached to a live host is detached. A volume's image file keeps its
//! data across attachments, as the volume does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::EbsDisk;
use super::error::Result;

/// A volume as moto lists it.
#[derive(Debug, Clone)]
pub(super) struct VolumeView {
    pub(super) volume_id: String,
    pub(super) size_gib: i32,
    /// The instance it is attached to (attaching or attached).
    pub(super) instance_id: Option<String>,
}

/// Every volume moto has.
pub(super) async fn volumes(client: &aws_sdk_ec2::Client) -> Result<Vec<VolumeView>, String> {
    let out = client
        .describe_volumes()
        .send()
        .await
        .map_err(|e| aws_sdk_ec2::error::DisplayErrorContext(&e).to_string())?;
    Ok(out
        .volumes()
        .iter()
        .map(|v| VolumeView {
            volume_id: v.volume_id().unwrap_or_default().to_owned(),
            size_gib: v.size().unwrap_or(1),
            instance_id: v
                .attachments()
                .iter()
                .find(|a| {
                    a.state()
                        .is_some_and(|s| matches!(s.as_str(), "attaching" | "attached"))
                        && a.delete_on_termination() != Some(true)
                })
                .and_then(|a| a.instance_id())
                .map(str::to_owned),
        })
        .collect())
}

/// The by-id directory of a host (under its directory).
pub(super) fn by_id_dir(host_dir: &Path) -> PathBuf {
    host_dir.join("by-id")
}

/// Makes `disks` match `volumes`: `live` gives the directory of a live played
/// host by instance id. Returns what went wrong.
pub(super) fn sync(
    disks: &mut BTreeMap<String, (EbsDisk, Option<String>)>,
    images: &Path,
    volumes: &[VolumeView],
    live: impl Fn(&str) -> Option<PathBuf>,
) -> Vec<String> {
    let mut problems = Vec::new();
    for v in volumes {
        let host = v
            .instance_id
            .as_deref()
            .and_then(|i| live(i).map(|dir| (i.to_owned(), dir)));
        let entry = match disks.get_mut(&v.volume_id) {
            Some(e) => e,
            None if host.is_none() => continue,
            None => {
                let size = u64::try_from(v.size_gib.max(1)).unwrap_or(1) << 30;
                match EbsDisk::open(images, &v.volume_id, size) {
                    Ok(d) => disks.entry(v.volume_id.clone()).or_insert((d, None)),
                    Err(e) => {
                        problems.push(format!("{}: disk: {e}", v.volume_id));
                        continue;
                    }
                }
            }
        };
        let (disk, on) = entry;
        match host {
            Some((instance, _)) if on.as_deref() == Some(instance.as_str()) => {}
            Some((instance, dir)) => {
                if let Err(e) = disk.detach() {
                    problems.push(format!("{}: detach: {e}", v.volume_id));
                }
                match disk.attach(&by_id_dir(&dir)) {
                    Ok(device) => {
                        tracing::info!(volume = %v.volume_id, %instance, %device, "volume attached");
                        *on = Some(instance);
                    }
                    Err(e) => problems.push(format!("{}: attach: {e}", v.volume_id)),
                }
            }
            None if on.is_some() => {
                match disk.detach() {
                    Ok(()) => tracing::info!(volume = %v.volume_id, "volume detached"),
                    Err(e) => problems.push(format!("{}: detach: {e}", v.volume_id)),
                }
                *on = None;
            }
            None => {}
        }
    }
    problems
}
