//! EBS volumes as a simulated Nitro instance shows them: an image file per
//! volume id, attached through a loop device and named under a by-id directory
//! the way `/dev/disk/by-id` names NVMe EBS volumes
//! (`nvme-Amazon_Elastic_Block_Store_vol<id without dash>`), so the agent's real
//! find-format-mount path runs against a real block device.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::error::io_err;
use super::{EnvError, Result, require};

/// One EBS volume's disk: its image file (which outlives attachments, as the
/// volume's data does) and, while attached, its loop device and by-id link.
#[derive(Debug)]
pub struct EbsDisk {
    volume_id: String,
    image: PathBuf,
    attached: Option<(String, PathBuf)>,
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().map_err(io_err(format!("running {cmd:?}")))?;
    if !out.status.success() {
        return Err(EnvError::Command {
            cmd: format!("{cmd:?}"),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

impl EbsDisk {
    /// The disk of `volume_id` under `dir` (`<dir>/<volume_id>.img`, sparse,
    /// `size_bytes` long), created empty when missing.
    pub fn open(dir: &Path, volume_id: &str, size_bytes: u64) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let image = dir.join(format!("{volume_id}.img"));
        if !image.exists() {
            let f = std::fs::File::create(&image)
                .map_err(io_err(format!("creating {}", image.display())))?;
            f.set_len(size_bytes)
                .map_err(io_err(format!("sizing {}", image.display())))?;
        }
        Ok(Self {
            volume_id: volume_id.to_owned(),
            image,
            attached: None,
        })
    }

    /// The link a Nitro instance would show for this volume under `by_id` (the
    /// name the agent looks for).
    pub fn link_in(&self, by_id: &Path) -> PathBuf {
        orca_agent::volumes::ebs_device_link(by_id, &self.volume_id)
    }

    /// Attaches the disk: a loop device over the image, linked under `by_id`.
    /// Returns the loop device.
    pub fn attach(&mut self, by_id: &Path) -> Result<String> {
        if let Some((device, _)) = &self.attached {
            return Ok(device.clone());
        }
        let losetup = require("losetup");
        let device = run(Command::new(&losetup)
            .args(["--find", "--show"])
            .arg(&self.image))?;
        std::fs::create_dir_all(by_id).map_err(io_err(format!("creating {}", by_id.display())))?;
        let link = self.link_in(by_id);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&device, &link)
            .map_err(io_err(format!("linking {}", link.display())))?;
        self.attached = Some((device.clone(), link));
        Ok(device)
    }

    /// Detaches the disk: the link goes, the loop device is released (at once, or
    /// by the kernel once nothing holds it).
    pub fn detach(&mut self) -> Result<()> {
        let Some((device, link)) = self.attached.take() else {
            return Ok(());
        };
        let _ = std::fs::remove_file(&link);
        run(Command::new(require("losetup")).args(["--detach", &device])).map(|_| ())
    }

    /// Whether the disk is attached now.
    pub fn is_attached(&self) -> bool {
        self.attached.is_some()
    }

    /// The image file.
    pub fn image(&self) -> &Path {
        &self.image
    }
}

impl Drop for EbsDisk {
    fn drop(&mut self) {
        let _ = self.detach();
    }
}
