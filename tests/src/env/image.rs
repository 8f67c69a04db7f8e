//! The offline busybox test image (TESTENV §2a).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::containerd::output;
use super::error::{EnvError, Result};
use super::tools::{install_hint, repo_root, try_require};

/// The name `tests/env/mkoci.py` writes into the image's `org.opencontainers.image.ref.name`,
/// which `ctr images import` uses as the image name.
pub const BUSYBOX_REF: &str = "orca/busybox:test";

/// The busybox binary the image is built from (Debian's `busybox-static`).
const BUSYBOX: &str = "/bin/busybox";

/// A containerd and a registry under `dir`, with the busybox image built and pushed
/// as `orca/busybox:test`: what every end-to-end fixture starts from. Returns the
/// image archive too (to push elsewhere) and the image's full reference.
pub fn containerd_and_registry(
    dir: &Path,
) -> Result<(super::Containerd, super::Registry, PathBuf, String)> {
    containerd_and_registry_on(dir, std::net::Ipv4Addr::LOCALHOST.into())
}

/// As [`containerd_and_registry`], with the registry listening on `host`
/// (`0.0.0.0` for simulated hosts in network namespaces, which reach it at
/// their gateway; the returned reference is the loopback one).
pub fn containerd_and_registry_on(
    dir: &Path,
    host: std::net::IpAddr,
) -> Result<(super::Containerd, super::Registry, PathBuf, String)> {
    let containerd = super::Containerd::start(dir)?;
    let registry = super::Registry::start_on(dir, host)?;
    let archive = busybox_image(dir)?;
    let image = registry.push_oci_archive(&archive, "orca/busybox:test")?;
    Ok((containerd, registry, archive, image))
}

/// Builds the busybox OCI image-layout archive `<dir>/busybox-oci.tar` named
/// [`BUSYBOX_REF`] (`python3 tests/env/mkoci.py`, <1 s, reproducible digest) and returns
/// its path.
///
/// Its rootfs is `/bin/busybox` plus applet symlinks in `/bin` (sh, sleep, echo, cat,
/// httpd, nc, ls, env, wget, true, false, ps, id, hostname, ip, ifconfig, ping, seq, wc,
/// tail, head, yes, kill, grep, sed, touch, readlink, …), `/etc/passwd`, and `/www/index.html`; `PATH=/bin`.
pub fn busybox_image(dir: &Path) -> Result<PathBuf> {
    let python = try_require("python3")?;
    if !Path::new(BUSYBOX).is_file() {
        return Err(EnvError::Missing {
            tool: BUSYBOX.to_owned(),
            hint: install_hint("busybox"),
        });
    }
    let out = dir.join("busybox-oci.tar");
    let mut cmd = Command::new(python);
    cmd.arg(repo_root().join("tests/env/mkoci.py"))
        .arg(&out)
        .arg(BUSYBOX_REF);
    output(cmd)?;
    Ok(out)
}
