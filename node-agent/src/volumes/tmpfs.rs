//! tmpfs mounts of memory-backed volumes, and the mount table that [`cleanup`]
//! unmounts from.
//!
//! [`cleanup`]: super::cleanup

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;

use super::VolumeError;
use super::disk::make_dir;
use super::error::volume_io;

/// Whether `dir` is a mount point: its device differs from its parent's.
pub(super) fn is_mount_point(dir: &Path) -> io::Result<bool> {
    let own = fs::metadata(dir)?.dev();
    let parent = fs::metadata(dir.join(".."))?.dev();
    Ok(own != parent)
}

/// Mounts a tmpfs at `dir` unless one is there already.
pub(super) fn mount_tmpfs(
    volume: &str,
    dir: &Path,
    size: Option<u64>,
    mode: u32,
) -> Result<(), VolumeError> {
    make_dir(dir, mode, None).map_err(volume_io(volume, "create", dir))?;
    if is_mount_point(dir).map_err(volume_io(volume, "inspect", dir))? {
        return Ok(());
    }
    let mut options = format!("mode={mode:o}");
    if let Some(size) = size {
        options.push_str(&format!(",size={size}"));
    }
    nix::mount::mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(options.as_str()),
    )
    .map_err(|source| VolumeError::Mount {
        volume: volume.to_owned(),
        path: dir.to_owned(),
        source,
    })
}

/// Mount points at or under `dir` in a mountinfo table, deepest first (a mount
/// stacked twice is listed twice).
pub(super) fn mount_points_under(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
pub(super) fn unescape_mountinfo(field: &str) -> OsString {
    use std::os::unix::ffi::OsStringExt;
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(oct) = bytes.get(i + 1..i + 4)
            && let Ok(b) = u8::from_str_radix(std::str::from_utf8(oct).unwrap_or("x"), 8)
        {
            out.push(b);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    OsString::from_vec(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_points_are_found_deepest_first() {
        let table = "36 35 98:0 / /p/volumes/a rw - tmpfs tmpfs rw\n\
                     37 35 98:0 / /p/volumes/a\\040b rw - tmpfs tmpfs rw\n\
                     38 35 98:0 / /p/volumes/a/deep rw - tmpfs tmpfs rw\n\
                     39 35 98:0 / /p/volumesx rw - tmpfs tmpfs rw\n";
        let points = mount_points_under(table, Path::new("/p/volumes"));
        assert_eq!(
            points,
            [
                PathBuf::from("/p/volumes/a/deep"),
                PathBuf::from("/p/volumes/a"),
                PathBuf::from("/p/volumes/a b")
            ]
        );
    }
}
