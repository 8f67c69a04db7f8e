//! The network plumbing of simulated hosts: one Linux bridge per provider (its
//! address is the gateway), and per host a named network namespace joined to the
//! bridge by a veth pair (host side on the bridge, `eth0` inside), with an
//! address from the provider's CIDR, `lo` up and a default route via the gateway.
//!
//! Everything goes through iproute2's `ip` command rather than rtnetlink:
//! `ip netns add` already does the delicate part (bind-mounting a fresh namespace
//! at `/run/netns/NAME` with the right mount propagation) that rtnetlink leaves
//! to the caller, which would need `unsafe` `unshare`/`setns` on a dedicated
//! thread; the commands are exactly the ones an operator types to inspect or
//! repair a host (TESTENV §6); and a fork+exec per step costs milliseconds,
//! nothing next to an agent's start. iproute2 is on every Debian machine.

use std::net::Ipv4Addr;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tokio::process::Command;
use tracing::debug;

use super::cidr::Ipv4Cidr;

/// How to install `ip`, for error messages.
pub const IP_HINT: &str = "apt-get install -y iproute2";

/// Where `ip netns add` puts named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// Longest Linux interface name (IFNAMSIZ - 1).
pub const MAX_IFNAME: usize = 15;

/// Errors of the network plumbing.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// `ip` is not installed.
    #[error("the `ip` command (iproute2) is not installed: {IP_HINT}")]
    Missing,
    /// `ip` could not be run.
    #[error("cannot run `ip {args}`")]
    Spawn {
        /// The arguments.
        args: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// `ip` failed.
    #[error("`ip {args}` failed: {stderr}")]
    Failed {
        /// The arguments.
        args: String,
        /// What it printed on stderr.
        stderr: String,
    },
}

/// One host's network: its namespace, the host side of its veth pair, its address.
/// Saved as `network.json` in the host's directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostNetwork {
    /// Network namespace name (`<bridge>-<node>`).
    pub netns: String,
    /// Host-side veth interface, attached to the bridge.
    pub veth: String,
    /// The host's address on the bridge network.
    pub ip: Ipv4Addr,
}

impl HostNetwork {
    /// The network of node `node` on `bridge` at `ip`.
    pub fn new(bridge: &str, node: &str, ip: Ipv4Addr) -> Self {
        let netns = format!("{bridge}-{node}");
        let veth = veth_name(&netns);
        Self { netns, veth, ip }
    }

    /// `/run/netns/<netns>`, what `nsenter --net=` takes.
    pub fn netns_path(&self) -> std::path::PathBuf {
        Path::new(NETNS_DIR).join(&self.netns)
    }
}

/// A host-side veth name for namespace `netns`: `vo` and 12 hex digits of its
/// FNV-1a hash, unique where namespace names are (interface names are limited
/// to 15 bytes, namespace names are not).
pub fn veth_name(netns: &str) -> String {
    format!("vo{:012x}", fnv1a(netns) & 0xffff_ffff_ffff)
}

/// The bridge's own MAC address: locally administered, unicast, stable for its
/// name. Without one, Linux gives a bridge the lowest MAC of its ports and
/// changes it when that port goes: every host's ARP entry for the gateway then
/// points nowhere until it expires, and the hosts fall silent (found when
/// removing one node made the others Lost).
pub fn bridge_mac(bridge: &str) -> String {
    let b = fnv1a(bridge).to_be_bytes();
    format!(
        "02:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        b[3], b[4], b[5], b[6], b[7]
    )
}

/// FNV-1a, 64 bits: a stable hash of a name (std's hasher may change between
/// releases; names of links must not).
fn fnv1a(text: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// Runs `ip ARGS`, returning stdout.
pub async fn ip(args: &[&str]) -> Result<String, NetError> {
    let joined = args.join(" ");
    debug!(args = %joined, "ip");
    let out = Command::new("ip")
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => NetError::Missing,
            _ => NetError::Spawn {
                args: joined.clone(),
                source,
            },
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NetError::Failed {
            args: joined,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// Runs `ip ARGS`, where the object already being gone is success.
async fn ip_gone_ok(args: &[&str]) -> Result<(), NetError> {
    match ip(args).await {
        Ok(_) => Ok(()),
        Err(NetError::Failed { stderr, .. })
            if stderr.contains("Cannot find device")
                || stderr.contains("No such file")
                || stderr.contains("does not exist") =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Whether interface `name` exists on this machine.
pub fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Whether namespace `name` exists.
pub fn netns_exists(name: &str) -> bool {
    Path::new(NETNS_DIR).join(name).exists()
}

/// Creates the bridge with its fixed MAC ([`bridge_mac`]) and the network's
/// gateway address and brings it up; a bridge that already exists (after a
/// control-plane restart) is kept, and given the fixed MAC if it lacks it (an
/// address set by hand stays put when ports come and go).
pub async fn ensure_bridge(bridge: &str, cidr: &Ipv4Cidr) -> Result<(), NetError> {
    let mac = bridge_mac(bridge);
    if link_exists(bridge) {
        let current =
            std::fs::read_to_string(Path::new("/sys/class/net").join(bridge).join("address"))
                .unwrap_or_default();
        if current.trim() != mac {
            ip(&["link", "set", "dev", bridge, "address", &mac]).await?;
        }
    } else {
        match ip(&["link", "add", bridge, "address", &mac, "type", "bridge"]).await {
            Ok(_) => {}
            // Another control plane on the same config got there first.
            Err(NetError::Failed { stderr, .. }) if stderr.contains("File exists") => {}
            Err(e) => return Err(e),
        }
    }
    let gateway = format!("{}/{}", cidr.gateway(), cidr.prefix());
    ip(&["addr", "replace", &gateway, "dev", bridge]).await?;
    ip(&["link", "set", bridge, "up"]).await?;
    Ok(())
}

/// Checks that named network namespaces can be made here (root, a kernel and a
/// `/run` that allow them) by adding and deleting `<bridge>-probe`.
pub async fn probe(bridge: &str) -> Result<(), NetError> {
    let name = format!("{bridge}-probe");
    if netns_exists(&name) {
        ip_gone_ok(&["netns", "del", &name]).await?;
    }
    ip(&["netns", "add", &name]).await?;
    ip_gone_ok(&["netns", "del", &name]).await
}

/// Creates the host's namespace and veth pair on `bridge` and configures its
/// address, `lo` and default route. Leftovers of an earlier host of the same
/// name are removed first.
pub async fn create_host(
    host: &HostNetwork,
    bridge: &str,
    cidr: &Ipv4Cidr,
) -> Result<(), NetError> {
    delete_host(host).await?;
    let ns = host.netns.as_str();
    let addr = format!("{}/{}", host.ip, cidr.prefix());
    let gateway = cidr.gateway().to_string();
    ip(&["netns", "add", ns]).await?;
    ip(&[
        "link", "add", &host.veth, "type", "veth", "peer", "name", "eth0", "netns", ns,
    ])
    .await?;
    ip(&["link", "set", &host.veth, "master", bridge, "up"]).await?;
    ip(&["-n", ns, "addr", "add", &addr, "dev", "eth0"]).await?;
    ip(&["-n", ns, "link", "set", "eth0", "up"]).await?;
    ip(&["-n", ns, "link", "set", "lo", "up"]).await?;
    ip(&["-n", ns, "route", "add", "default", "via", &gateway]).await?;
    Ok(())
}

/// Brings the host side of the host's veth up or down (its link to everything).
pub async fn set_link(host: &HostNetwork, up: bool) -> Result<(), NetError> {
    let state = if up { "up" } else { "down" };
    ip(&["link", "set", &host.veth, state]).await.map(drop)
}

/// PIDs of the processes in namespace `netns` (`ip netns pids`); none when the
/// namespace is gone.
pub async fn pids(netns: &str) -> Result<Vec<i32>, NetError> {
    if !netns_exists(netns) {
        return Ok(Vec::new());
    }
    let out = ip(&["netns", "pids", netns]).await?;
    Ok(out.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// Deletes the host's veth pair and namespace; what is already gone is fine.
/// Processes still in the namespace keep it alive, unnamed: kill them first.
pub async fn delete_host(host: &HostNetwork) -> Result<(), NetError> {
    ip_gone_ok(&["link", "del", &host.veth]).await?;
    if netns_exists(&host.netns) {
        ip_gone_ok(&["netns", "del", &host.netns]).await?;
    }
    Ok(())
}

/// Deletes the bridge (the provider never does: hosts of a restarted control
/// plane stay on it; test and demo teardown do).
pub async fn delete_bridge(bridge: &str) -> Result<(), NetError> {
    ip_gone_ok(&["link", "del", bridge]).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_fit_and_differ() {
        let a = veth_name("orca0-node-1");
        let b = veth_name("orca0-node-2");
        assert_ne!(a, b);
        assert!(a.len() <= MAX_IFNAME, "{a}");
        assert_eq!(a, veth_name("orca0-node-1"), "stable");
        let host = HostNetwork::new("orca0", "n1", Ipv4Addr::new(10, 77, 0, 2));
        assert_eq!(host.netns, "orca0-n1");
        assert_eq!(host.netns_path(), Path::new("/run/netns/orca0-n1"));
    }

    #[test]
    fn bridge_macs_are_stable_unicast_and_local() {
        let mac = bridge_mac("orca0");
        assert_eq!(mac, bridge_mac("orca0"));
        assert_ne!(mac, bridge_mac("orca1"));
        let first = u8::from_str_radix(&mac[..2], 16).unwrap();
        assert_eq!(first & 0b11, 0b10, "locally administered unicast: {mac}");
        assert_eq!(mac.split(':').count(), 6);
    }
}
