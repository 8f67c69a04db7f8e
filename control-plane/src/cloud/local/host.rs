//! A simulated host's directory, `<data_dir>/hosts/<node>/`: the agent's state
//! dir and log, and the provider's records of the host, which survive a
//! control-plane restart: `agent.pid`, `network.json` (its namespace, veth and
//! address, kept for as long as the host exists so the address is never handed
//! out twice), the `partitioned` marker and the interruption notices its
//! metadata service shows (`notices/`).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use nix::unistd::Pid;

use crate::cloud::cidr::Ipv4Cidr;
use crate::cloud::netns::HostNetwork;

const AGENT_PID: &str = "agent.pid";
const NETWORK: &str = "network.json";
const PARTITIONED: &str = "partitioned";

/// One host's directory.
pub(super) struct HostDir {
    path: PathBuf,
}

impl HostDir {
    pub(super) fn new(hosts_dir: &Path, node: &str) -> Self {
        Self {
            path: hosts_dir.join(node),
        }
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    pub(super) fn exists(&self) -> bool {
        self.path.is_dir()
    }

    /// The agent's pid, if recorded.
    pub(super) fn agent_pid(&self) -> Option<Pid> {
        let raw = std::fs::read_to_string(self.path.join(AGENT_PID)).ok()?;
        raw.trim().parse().ok().map(Pid::from_raw)
    }

    pub(super) fn write_agent_pid(&self, pid: u32) -> std::io::Result<()> {
        std::fs::write(self.path.join(AGENT_PID), pid.to_string())
    }

    /// The host's network, when it has a namespace of its own.
    pub(super) fn network(&self) -> Option<HostNetwork> {
        read_network(&self.path)
    }

    pub(super) fn write_network(&self, net: &HostNetwork) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(net).map_err(std::io::Error::other)?;
        let tmp = self.path.join("network.json.tmp");
        std::fs::write(&tmp, json)?;
        std::fs::rename(tmp, self.path.join(NETWORK))
    }

    /// Where the interruption notices its metadata service shows are kept.
    pub(super) fn notices_dir(&self) -> PathBuf {
        self.path.join("notices")
    }

    /// Writes one notice file (atomically: the metadata service never serves half).
    pub(super) fn write_notice(&self, file: &str, body: &[u8]) -> std::io::Result<()> {
        let dir = self.notices_dir();
        std::fs::create_dir_all(&dir)?;
        let tmp = dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, body)?;
        std::fs::rename(tmp, dir.join(file))
    }

    pub(super) fn partitioned(&self) -> bool {
        self.path.join(PARTITIONED).exists()
    }

    pub(super) fn set_partitioned(&self, partitioned: bool) -> std::io::Result<()> {
        let marker = self.path.join(PARTITIONED);
        if partitioned {
            std::fs::write(marker, b"")
        } else {
            match std::fs::remove_file(marker) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        }
    }

    /// Removes the directory, unmounting first whatever the agent left mounted
    /// under it (pods' volumes), deepest first.
    pub(super) fn remove(&self) -> std::io::Result<()> {
        for mount in mounts_under(&self.path) {
            if let Err(e) = nix::mount::umount2(&mount, nix::mount::MntFlags::MNT_DETACH) {
                tracing::warn!(mount = %mount.display(), error = %e, "not unmounted");
            }
        }
        match std::fs::remove_dir_all(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

fn read_network(dir: &Path) -> Option<HostNetwork> {
    let raw = std::fs::read(dir.join(NETWORK)).ok()?;
    serde_json::from_slice(&raw).ok()
}

/// The first address of `cidr` that no host under `hosts_dir` holds. The caller
/// serialises allocations and writes the result before the next one.
pub(super) fn free_address(hosts_dir: &Path, cidr: &Ipv4Cidr) -> Option<Ipv4Addr> {
    let used: Vec<Ipv4Addr> = std::fs::read_dir(hosts_dir)
        .map(|dirs| {
            dirs.flatten()
                .filter_map(|d| read_network(&d.path()))
                .map(|n| n.ip)
                .collect()
        })
        .unwrap_or_default();
    cidr.hosts().find(|ip| !used.contains(ip))
}

/// Mount points at or below `dir`, deepest first (from `/proc/self/mountinfo`).
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    found
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let code: String = chars.by_ref().take(3).collect();
            match u8::from_str_radix(&code, 8) {
                Ok(b) => out.push(char::from(b)),
                Err(_) => {
                    out.push('\\');
                    out.push_str(&code);
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_never_handed_out_twice() {
        let dir = tempfile::tempdir().unwrap();
        let cidr: Ipv4Cidr = "10.90.0.0/28".parse().unwrap();
        let mut given = Vec::new();
        for n in 0..6 {
            let ip = free_address(dir.path(), &cidr).expect("an address is free");
            let host = HostDir::new(dir.path(), &format!("n{n}"));
            std::fs::create_dir_all(host.path()).unwrap();
            host.write_network(&HostNetwork::new("ob0", &format!("n{n}"), ip))
                .unwrap();
            given.push(ip);
        }
        assert_eq!(given[0], Ipv4Addr::new(10, 90, 0, 2));
        assert_eq!(
            free_address(dir.path(), &cidr),
            None,
            "the /28's lower half is full"
        );
        HostDir::new(dir.path(), "n3").remove().unwrap();
        assert_eq!(free_address(dir.path(), &cidr), Some(given[3]));
    }

    #[test]
    fn partition_marker_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let host = HostDir::new(dir.path(), "n1");
        std::fs::create_dir_all(host.path()).unwrap();
        assert!(!host.partitioned());
        host.set_partitioned(true).unwrap();
        assert!(host.partitioned());
        host.set_partitioned(false).unwrap();
        host.set_partitioned(false).unwrap();
        assert!(!host.partitioned());
    }

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape("/plain"), "/plain");
    }
}
