//! Each [`super::TestCluster`]'s own network for its simulated hosts: a bridge
//! `ob<hex>` and a /24 in 10.77.0.0/16 … 10.99.0.0/16 picked from the test
//! process's pid and a counter, so clusters of tests running in parallel never
//! share a bridge, an address or a namespace name (`<bridge>-<node>`); and the
//! teardown that removes them, namespaces and veths included, also after a panic.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use orca_control_plane::cloud::netns::{NETNS_DIR, veth_name};

use crate::env::require;
use crate::eventually::try_eventually_blocking;

/// How long the processes of a cluster's hosts get to die at teardown.
const KILL_WITHIN: Duration = Duration::from_secs(10);

/// Second octets 77 to 99, each with 256 /24s.
const SLOTS: u32 = 23 * 256;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A cluster's bridge and network.
#[derive(Debug, Clone)]
pub struct ClusterNetwork {
    /// Bridge name, `ob<hex>` (unique on the machine while the cluster runs).
    pub bridge: String,
    /// The hosts' network, `10.X.Y.0/24`.
    pub cidr: String,
    /// The bridge's address, which hosts reach this machine at.
    pub gateway: Ipv4Addr,
}

impl ClusterNetwork {
    /// A bridge and /24 that no running cluster on this machine uses.
    ///
    /// # Panics
    ///
    /// When `ip` (iproute2) is missing, with the install hint.
    pub fn pick() -> Self {
        require("ip");
        let pid = std::process::id();
        let base = pid.wrapping_mul(2_654_435_761) % SLOTS;
        for _ in 0..SLOTS {
            let slot = (base + NEXT.fetch_add(1, Ordering::Relaxed)) % SLOTS;
            let bridge = format!("ob{slot:x}");
            if Path::new("/sys/class/net").join(&bridge).exists() {
                continue; // another cluster's, or one a killed test left
            }
            let (b, c) = (77 + slot / 256, slot % 256);
            return Self {
                bridge,
                cidr: format!("10.{b}.{c}.0/24"),
                gateway: Ipv4Addr::new(10, b as u8, c as u8, 1),
            };
        }
        panic!("no free bridge name ob0..ob{SLOTS:x}: clean up with `ip link del obNNN`");
    }

    /// Namespaces of this cluster's hosts (`<bridge>-*` under /run/netns).
    pub fn namespaces(&self) -> Vec<String> {
        let prefix = format!("{}-", self.bridge);
        std::fs::read_dir(NETNS_DIR)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(&prefix))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Kills every process in the cluster's namespaces, deletes the namespaces,
    /// their veths and the bridge. Best effort: it runs in `Drop`.
    pub fn teardown(&self) {
        for ns in self.namespaces() {
            let _ = try_eventually_blocking(
                &format!("no process left in {ns}"),
                KILL_WITHIN,
                Duration::from_millis(20),
                || {
                    let pids = ip(&["netns", "pids", &ns]);
                    let pids: Vec<i32> =
                        pids.lines().filter_map(|l| l.trim().parse().ok()).collect();
                    for pid in &pids {
                        let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
                    }
                    if pids.is_empty() { Ok(()) } else { Err(pids) }
                },
            );
            ip(&["link", "del", &veth_name(&ns)]);
            ip(&["netns", "del", &ns]);
        }
        ip(&["link", "del", &self.bridge]);
    }
}

/// Runs `ip ARGS`, returning stdout (empty on failure: teardown is best effort).
fn ip(args: &[&str]) -> String {
    Command::new("ip")
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}
