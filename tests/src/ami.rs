//! The AMI's software path without AWS: a Debian 12 root filesystem made with
//! `debootstrap` (the AMI's base is Debian 12's official AMI), provisioned by
//! the very scripts the Packer template runs, then booted as a host: its own
//! containerd and its installed `orca-agent`, started as the installed systemd
//! unit says, inside a network namespace whose metadata service answers at
//! 169.254.169.254.
//!
//! # Design
//!
//! - [`debian12_tarball`] runs `debootstrap` once and keeps the result as a tar
//!   under `target/orca-cache/`; every [`Rootfs::unpack`] starts from that
//!   pristine tree, so provisioning always runs on a fresh system.
//! - [`Rootfs::stage`] copies what Packer's `file` provisioners upload (the
//!   agent's binaries, `ami/files/`, `ami/scripts/`) to `/tmp/orca-ami`;
//!   [`Rootfs::provision`] runs the scripts [`packer_scripts`] reads from the
//!   template, in its order, with its environment variables, under `chroot`.
//!   `/usr/sbin/policy-rc.d` (exit 101) keeps packages from starting services
//!   there, as image builders do; it is removed afterwards.
//! - Everything that mounts (`/proc`, `/dev`, `/sys`, a tmpfs `/run`)
//!   runs under `unshare --mount --propagation private`: the mounts die with the
//!   namespace, and no teardown can leave one behind.
//! - [`Rootfs::boot`] starts the host under `nsenter --net=<netns>` and `unshare
//!   --pid --fork --kill-child --mount`: containerd from the root filesystem
//!   (its installed config), then the unit's `ExecStart` with the unit's
//!   `Environment=` and `EnvironmentFile=`, under its `NoNewPrivileges=` and
//!   `CapabilityBoundingSet=` (through the root filesystem's `setpriv`).
//!   Dropping the returned [`Host`] kills the PID namespace: agent, containerd,
//!   shims and containers go together, as when an instance powers off.
//!
//! # Limitations
//!
//! - systemd itself does not run (no systemd as PID 1 here): [`Unit`] reads
//!   only the directives above; `systemd-analyze verify --root` checks the rest.
//! - The GPU variant's script is not run (no NVIDIA repository, no GPU).

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::env::{Daemon, require, workspace_bin};

/// The agent's binaries the template uploads.
pub const AGENT_BINARIES: [&str; 3] = ["orca-agent", "orca-logger", "orca-pause"];

/// Where the template's provisioners put what they upload.
pub const STAGING: &str = "/tmp/orca-ami";

/// What `debootstrap` installs beyond `minbase`: what Debian's AMI has and the
/// scripts rely on (systemd for `systemctl enable`, certificates for apt).
const DEBOOTSTRAP_INCLUDE: &str = "systemd,systemd-sysv,ca-certificates,iproute2";

/// Debian's mirror.
const MIRROR: &str = "http://deb.debian.org/debian";

/// `PATH` of systemd services.
const SERVICE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Runs `cmd`; its output, or a message naming it with its stderr.
fn run(what: &str, cmd: &mut Command) -> Result<Output, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{what}: cannot run {:?}: {e}", cmd.get_program()))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "{what} failed ({}):\n{}\n{}",
            out.status,
            tail(&String::from_utf8_lossy(&out.stdout)),
            tail(&String::from_utf8_lossy(&out.stderr))
        ))
    }
}

/// The last 40 lines of `text`.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// A pristine Debian 12 (bookworm) `minbase` root filesystem as a tar, made by
/// `debootstrap` on first use and kept in `target/orca-cache/`.
///
/// # Errors
///
/// `debootstrap` missing (with the install hint) or failing.
pub fn debian12_tarball() -> Result<PathBuf, String> {
    let cache = crate::env::repo_root().join("target").join("orca-cache");
    let tarball = cache.join("debian12-minbase-v1.tar");
    if tarball.exists() {
        return Ok(tarball);
    }
    let debootstrap = crate::env::try_require("debootstrap").map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&cache).map_err(|e| format!("{}: {e}", cache.display()))?;
    let work = tempfile::tempdir_in(&cache).map_err(|e| e.to_string())?;
    let root = work.path().join("root");
    run(
        "debootstrap",
        Command::new(debootstrap)
            .arg("--variant=minbase")
            .arg(format!("--include={DEBOOTSTRAP_INCLUDE}"))
            .args(["bookworm"])
            .arg(&root)
            .arg(MIRROR),
    )?;
    let partial = work.path().join("rootfs.tar");
    run(
        "tar the root filesystem",
        Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&partial)
            .arg("."),
    )?;
    std::fs::rename(&partial, &tarball).map_err(|e| format!("{}: {e}", tarball.display()))?;
    Ok(tarball)
}

/// The provisioning scripts of the Packer template at `template`, in order,
/// as paths relative to the template's directory (`scripts/10-base.sh`, ...).
///
/// # Errors
///
/// No `scripts = [...]` list in the template.
pub fn packer_scripts(template: &str) -> Result<Vec<String>, String> {
    let start = template
        .find("scripts = [")
        .ok_or("the template has no `scripts = [...]` list")?;
    let list = &template[start + "scripts = [".len()..];
    let end = list.find(']').ok_or("unterminated `scripts` list")?;
    let scripts: Vec<String> = list[..end]
        .split(',')
        .map(|s| s.trim().trim_matches('"'))
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_start_matches("${path.root}/").to_owned())
        .collect();
    if scripts.is_empty() {
        return Err("the `scripts` list is empty".into());
    }
    Ok(scripts)
}

/// The directives of a systemd unit's `[Service]` section that [`Rootfs::boot`] honours.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unit {
    /// `ExecStart=`, split on whitespace.
    pub exec_start: Vec<String>,
    /// `Environment=` assignments, in order.
    pub environment: Vec<(String, String)>,
    /// `EnvironmentFile=` paths, and whether each is optional (`-` prefix).
    pub environment_files: Vec<(String, bool)>,
    /// `NoNewPrivileges=yes`.
    pub no_new_privileges: bool,
    /// `CapabilityBoundingSet=`, lower case without `cap_` (as `setpriv` takes them).
    pub capabilities: Option<Vec<String>>,
}

impl Unit {
    /// Reads the `[Service]` section of `text`.
    ///
    /// # Errors
    ///
    /// No `ExecStart=`, or a directive this reader would get wrong (a quoted
    /// `Environment=`, a capability set starting with `~`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut unit = Unit::default();
        let mut in_service = false;
        for line in text.lines().map(str::trim) {
            if line.starts_with('[') {
                in_service = line == "[Service]";
                continue;
            }
            let Some((key, value)) = line.split_once('=').filter(|_| in_service) else {
                continue;
            };
            let value = value.trim();
            match key.trim() {
                "ExecStart" => {
                    unit.exec_start = value.split_whitespace().map(str::to_owned).collect();
                }
                "Environment" => {
                    if value.contains('"') {
                        return Err(format!("quoted Environment= not supported: {value}"));
                    }
                    for assignment in value.split_whitespace() {
                        let (k, v) = assignment
                            .split_once('=')
                            .ok_or_else(|| format!("Environment={value}: no `=`"))?;
                        unit.environment.push((k.into(), v.into()));
                    }
                }
                "EnvironmentFile" => match value.strip_prefix('-') {
                    Some(path) => unit.environment_files.push((path.into(), true)),
                    None => unit.environment_files.push((value.into(), false)),
                },
                "NoNewPrivileges" => unit.no_new_privileges = value == "yes" || value == "true",
                "CapabilityBoundingSet" => {
                    if value.starts_with('~') {
                        return Err(format!(
                            "inverted CapabilityBoundingSet= not supported: {value}"
                        ));
                    }
                    unit.capabilities = Some(
                        value
                            .split_whitespace()
                            .map(|c| c.to_ascii_lowercase().trim_start_matches("cap_").to_owned())
                            .collect(),
                    );
                }
                _ => {}
            }
        }
        if unit.exec_start.is_empty() {
            return Err("the unit has no ExecStart=".into());
        }
        Ok(unit)
    }

    /// The service's environment: systemd's `PATH`, `Environment=`, then each
    /// `EnvironmentFile=` read from `root` (later assignments win).
    ///
    /// # Errors
    ///
    /// A required environment file missing.
    pub fn env(&self, root: &Path) -> Result<Vec<(String, String)>, String> {
        let mut env = vec![("PATH".to_owned(), SERVICE_PATH.to_owned())];
        env.extend(self.environment.iter().cloned());
        for (file, optional) in &self.environment_files {
            let path = root.join(file.trim_start_matches('/'));
            let text = match std::fs::read_to_string(&path) {
                Ok(text) => text,
                Err(_) if *optional => continue,
                Err(e) => return Err(format!("EnvironmentFile={file}: {e}")),
            };
            for line in text.lines().map(str::trim) {
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                if let Some((k, v)) = line.split_once('=') {
                    env.push((k.trim().into(), v.trim().trim_matches('"').into()));
                }
            }
        }
        let mut merged: Vec<(String, String)> = Vec::new();
        for (k, v) in env {
            merged.retain(|(key, _)| key != &k);
            merged.push((k, v));
        }
        Ok(merged)
    }
}

/// A Debian 12 root filesystem unpacked in a directory the test owns.
#[derive(Debug)]
pub struct Rootfs {
    root: PathBuf,
}

/// Shell that mounts what a chroot needs in the private mount namespace it runs
/// in; `$R` is the root filesystem.
///
/// The root is bound onto itself first: runc makes `/` a slave mount, which
/// needs `/` to be a mount point, as it is on a real host.
const MOUNTS: &str = "set -e\n\
    mount --bind \"$R\" \"$R\"\n\
    mount -t proc proc \"$R/proc\"\n\
    mount --rbind /dev \"$R/dev\"\n\
    mount --rbind /sys \"$R/sys\"\n\
    mount -t tmpfs -o mode=0755 tmpfs \"$R/run\"\n";

impl Rootfs {
    /// Unpacks [`debian12_tarball`] into `dir` (created).
    ///
    /// # Errors
    ///
    /// The tarball cannot be made or unpacked.
    pub fn unpack(dir: &Path) -> Result<Self, String> {
        let tarball = debian12_tarball()?;
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        run(
            "unpack the root filesystem",
            Command::new("tar")
                .arg("-C")
                .arg(dir)
                .arg("-xf")
                .arg(&tarball),
        )?;
        Ok(Self {
            root: dir.to_path_buf(),
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `rel` (absolute inside the root filesystem) on this machine.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel.trim_start_matches('/'))
    }

    /// Runs `script` (shell, `$R` = the root) in a private mount namespace
    /// after the chroot mounts.
    fn in_mount_namespace(&self, what: &str, script: &str) -> Result<Output, String> {
        run(
            what,
            Command::new(require("unshare"))
                .args(["--mount", "--propagation", "private", "--", "/bin/sh", "-c"])
                .arg(format!("{MOUNTS}{script}"))
                .env("R", &self.root),
        )
    }

    /// Copies what the template uploads to [`STAGING`]: the agent's binaries
    /// (this build's), `ami/files/` and `ami/scripts/`.
    ///
    /// # Errors
    ///
    /// A binary or directory missing (build first: `cargo build --workspace`).
    pub fn stage(&self, ami_dir: &Path) -> Result<(), String> {
        let staging = self.path(STAGING);
        std::fs::create_dir_all(&staging).map_err(|e| e.to_string())?;
        for bin in AGENT_BINARIES {
            let from = workspace_bin(bin);
            std::fs::copy(&from, staging.join(bin))
                .map_err(|e| format!("{}: {e}", from.display()))?;
        }
        for dir in ["files", "scripts"] {
            run(
                "stage the AMI's files",
                Command::new("cp")
                    .arg("-r")
                    .arg(ami_dir.join(dir))
                    .arg(&staging),
            )?;
        }
        Ok(())
    }

    /// Runs `scripts` (relative to the staged files) as the template does:
    /// `bash SCRIPT` as root with `env`, in a chroot with the machine's DNS.
    /// The combined output of every script.
    ///
    /// # Errors
    ///
    /// A script failed (its output's tail in the message).
    pub fn provision(&self, scripts: &[String], env: &[(&str, &str)]) -> Result<String, String> {
        std::fs::copy("/etc/resolv.conf", self.path("/etc/resolv.conf"))
            .map_err(|e| format!("/etc/resolv.conf: {e}"))?;
        let policy = self.path("/usr/sbin/policy-rc.d");
        std::fs::write(&policy, "#!/bin/sh\nexit 101\n").map_err(|e| e.to_string())?;
        std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| e.to_string())?;
        let mut vars = format!("PATH={SERVICE_PATH}");
        for (k, v) in env {
            vars.push_str(&format!(" {k}={v}"));
        }
        let mut log = String::new();
        for script in scripts {
            let body = format!("chroot \"$R\" env -i {vars} bash {STAGING}/{script}\n");
            let out = self.in_mount_namespace(&format!("provisioning script {script}"), &body)?;
            log.push_str(&String::from_utf8_lossy(&out.stdout));
            log.push_str(&String::from_utf8_lossy(&out.stderr));
        }
        std::fs::remove_file(&policy).map_err(|e| e.to_string())?;
        Ok(log)
    }

    /// Boots the provisioned host in network namespace `netns`: its containerd,
    /// then `unit`'s `ExecStart` as systemd would run it (see the module docs).
    /// Logs go to `<log_dir>/host.log` and `<log_dir>/containerd.log`.
    ///
    /// # Errors
    ///
    /// The unit's environment cannot be read, or the launcher cannot start.
    pub fn boot(&self, netns: &str, unit: &Unit, log_dir: &Path) -> Result<Host, String> {
        let mut privileges = String::new();
        if unit.no_new_privileges {
            privileges.push_str(" --no-new-privs");
        }
        if let Some(caps) = &unit.capabilities {
            let list: Vec<String> = caps.iter().map(|c| format!("+{c}")).collect();
            privileges.push_str(&format!(" --bounding-set=-all,{}", list.join(",")));
        }
        let env = unit.env(&self.root)?;
        let namespace = env
            .iter()
            .find(|(k, _)| k == "ORCA_AGENT_CONTAINERD_NAMESPACE")
            .map_or_else(|| "orca".to_owned(), |(_, v)| v.clone());
        let env: Vec<String> = env
            .into_iter()
            .map(|(k, v)| shell_quote(&format!("{k}={v}")))
            .collect();
        let exec: Vec<String> = unit.exec_start.iter().map(|a| shell_quote(a)).collect();
        let script = format!(
            "{MOUNTS}\
             chroot \"$R\" /usr/bin/containerd --config /etc/containerd/config.toml \
               >\"$LOGS/containerd.log\" 2>&1 &\n\
             i=0\n\
             while [ ! -S \"$R/run/containerd/containerd.sock\" ]; do\n\
               i=$((i+1)); [ $i -lt 600 ] || {{ echo 'containerd did not start' >&2; exit 1; }}\n\
               sleep 0.05\n\
             done\n\
             exec chroot \"$R\" setpriv{privileges} -- env -i {} {}\n",
            env.join(" "),
            exec.join(" ")
        );
        let mut cmd = Command::new(require("nsenter"));
        cmd.arg(format!(
            "--net={}",
            Path::new(orca_control_plane::cloud::netns::NETNS_DIR)
                .join(netns)
                .display()
        ))
        .arg("--")
        .arg(require("unshare"))
        .args([
            "--pid",
            "--fork",
            "--kill-child",
            "--mount",
            "--propagation",
            "private",
            "--",
            "/bin/sh",
            "-c",
        ])
        .arg(script)
        .env("R", &self.root)
        .env("LOGS", log_dir);
        let daemon =
            Daemon::spawn("ami-host", cmd, &log_dir.join("host.log")).map_err(|e| e.to_string())?;
        Ok(Host { daemon, namespace })
    }
}

/// A booted host; dropping it powers it off: the PID namespace dies with
/// everything in it, then the containers' (empty) cgroups are removed.
#[derive(Debug)]
pub struct Host {
    daemon: Daemon,
    /// The agent's containerd namespace, which names its containers' cgroups.
    namespace: String,
}

impl Host {
    /// The tail of the host's log (the agent's output).
    pub fn log_tail(&self) -> String {
        self.daemon.log_tail()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.daemon.stop();
        remove_cgroups(&self.namespace);
    }
}

/// Removes the cgroups of containerd namespace `ns` (empty once the host is
/// gone): `/sys/fs/cgroup/<ns>` on cgroup v2, under each controller on v1.
fn remove_cgroups(ns: &str) {
    let root = Path::new("/sys/fs/cgroup");
    let mut dirs = vec![root.join(ns)];
    if let Ok(controllers) = std::fs::read_dir(root) {
        dirs.extend(controllers.flatten().map(|c| c.path().join(ns)));
    }
    for dir in dirs {
        if let Ok(children) = std::fs::read_dir(&dir) {
            for child in children.flatten().filter(|e| e.path().is_dir()) {
                let _ = std::fs::remove_dir(child.path());
            }
        }
        let _ = std::fs::remove_dir(&dir);
    }
}

/// `s` in single quotes for `sh`.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_lists_its_scripts_in_order() {
        let text = std::fs::read_to_string(crate::env::repo_root().join("ami/orca-agent.pkr.hcl"))
            .unwrap();
        let scripts = packer_scripts(&text).unwrap();
        assert_eq!(
            scripts.first().map(String::as_str),
            Some("scripts/10-base.sh")
        );
        assert!(
            scripts.iter().any(|s| s == "scripts/30-agent.sh"),
            "{scripts:?}"
        );
        for s in &scripts {
            assert!(
                crate::env::repo_root().join("ami").join(s).exists(),
                "{s} exists"
            );
        }
    }

    #[test]
    fn unit_directives_are_read_as_systemd_would() {
        let unit = Unit::parse(
            "[Unit]\nDescription=x\nExecStart=/not/this\n[Service]\n\
             Environment=A=1 B=2\nEnvironmentFile=-/etc/default/x\n\
             ExecStart=/usr/bin/agent --flag\nNoNewPrivileges=yes\n\
             CapabilityBoundingSet=CAP_SYS_ADMIN CAP_KILL\n",
        )
        .unwrap();
        assert_eq!(unit.exec_start, ["/usr/bin/agent", "--flag"]);
        assert_eq!(unit.environment.len(), 2);
        assert_eq!(
            unit.environment_files,
            [("/etc/default/x".to_owned(), true)]
        );
        assert!(unit.no_new_privileges);
        assert_eq!(
            unit.capabilities.as_deref(),
            Some(&["sys_admin".to_owned(), "kill".to_owned()][..])
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc/default")).unwrap();
        std::fs::write(dir.path().join("etc/default/x"), "# c\nB=3\nC=\"4\"\n").unwrap();
        let env = unit.env(dir.path()).unwrap();
        assert!(env.contains(&("B".into(), "3".into())), "{env:?}");
        assert!(env.contains(&("C".into(), "4".into())), "{env:?}");
        assert!(!env.contains(&("B".into(), "2".into())), "{env:?}");
        assert!(Unit::parse("[Service]\nType=exec\n").is_err());
        assert!(Unit::parse("[Service]\nExecStart=/x\nCapabilityBoundingSet=~CAP_X\n").is_err());
    }
}
