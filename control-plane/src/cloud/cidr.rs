//! IPv4 networks written as CIDR (`10.77.0.0/24`): the simulated hosts' network.
//! The first address is the gateway (the bridge); hosts take the ones after it
//! in the lower half; the upper half is for Services' virtual IPs (standalone
//! mode's ClusterIPs, answered on the bridge); the network and broadcast
//! addresses are never handed out.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// Shortest prefix accepted (a /16: 32 766 hosts).
pub const MIN_PREFIX: u8 = 16;
/// Longest prefix accepted (a /28: 6 hosts, 7 Service IPs).
pub const MAX_PREFIX: u8 = 28;

/// An IPv4 network: its address (host bits zero) and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Cidr {
    network: Ipv4Addr,
    prefix: u8,
}

/// Why a CIDR string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// Not `A.B.C.D/N`.
    #[error("{text:?} is not an IPv4 network written as A.B.C.D/N")]
    Syntax {
        /// The text.
        text: String,
    },
    /// The prefix is outside the accepted range.
    #[error("prefix /{prefix} is outside /{MIN_PREFIX}../{MAX_PREFIX}")]
    Prefix {
        /// The prefix given.
        prefix: u8,
    },
    /// Host bits are set (`10.77.0.5/24`).
    #[error("{text} has host bits set (the network is {network})")]
    HostBits {
        /// The text.
        text: String,
        /// The network it would be.
        network: String,
    },
}

impl Ipv4Cidr {
    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The network address.
    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    /// The gateway: the first address after the network address.
    pub fn gateway(&self) -> Ipv4Addr {
        self.nth(1)
    }

    /// The address `n` after the network address (no bounds check).
    fn nth(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + n)
    }

    /// Addresses hosts may take, in order: after the gateway, in the lower half.
    pub fn hosts(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        let size = 1u32 << (32 - self.prefix);
        (2..size / 2).map(|n| self.nth(n))
    }

    /// Addresses Services' virtual IPs may take, in order: the upper half,
    /// before broadcast.
    pub fn service_ips(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        let size = 1u32 << (32 - self.prefix);
        (size / 2..size - 1).map(|n| self.nth(n))
    }

    /// Whether `ip` lies in this network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX << (32 - self.prefix);
        u32::from(ip) & mask == u32::from(self.network)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Self, CidrError> {
        let syntax = || CidrError::Syntax { text: text.into() };
        let (addr, prefix) = text.split_once('/').ok_or_else(syntax)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| syntax())?;
        let prefix: u8 = prefix.parse().map_err(|_| syntax())?;
        if !(MIN_PREFIX..=MAX_PREFIX).contains(&prefix) {
            return Err(CidrError::Prefix { prefix });
        }
        let mask = u32::MAX << (32 - prefix);
        let network = Ipv4Addr::from(u32::from(addr) & mask);
        if network != addr {
            return Err(CidrError::HostBits {
                text: text.into(),
                network: format!("{network}/{prefix}"),
            });
        }
        Ok(Self { network, prefix })
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_hands_out_host_addresses() {
        let c: Ipv4Cidr = "10.77.0.0/24".parse().unwrap();
        assert_eq!(c.gateway(), Ipv4Addr::new(10, 77, 0, 1));
        let hosts: Vec<_> = c.hosts().collect();
        assert_eq!(hosts.len(), 126);
        assert_eq!(hosts[0], Ipv4Addr::new(10, 77, 0, 2));
        assert_eq!(hosts[125], Ipv4Addr::new(10, 77, 0, 127));
        let vips: Vec<_> = c.service_ips().collect();
        assert_eq!(vips.len(), 127);
        assert_eq!(vips[0], Ipv4Addr::new(10, 77, 0, 128));
        assert_eq!(vips[126], Ipv4Addr::new(10, 77, 0, 254));
        assert!(c.contains(Ipv4Addr::new(10, 77, 0, 200)));
        assert!(!c.contains(Ipv4Addr::new(10, 77, 1, 2)));
        assert_eq!(c.to_string(), "10.77.0.0/24");
        let small: Ipv4Cidr = "10.1.2.16/28".parse().unwrap();
        assert_eq!(small.hosts().count(), 6);
        assert_eq!(small.service_ips().count(), 7);
    }

    #[test]
    fn refuses_what_is_not_a_usable_network() {
        assert!(matches!(
            "10.77.0.0".parse::<Ipv4Cidr>(),
            Err(CidrError::Syntax { .. })
        ));
        assert!(matches!(
            "fd00::/64".parse::<Ipv4Cidr>(),
            Err(CidrError::Syntax { .. })
        ));
        assert_eq!(
            "10.0.0.0/8".parse::<Ipv4Cidr>(),
            Err(CidrError::Prefix { prefix: 8 })
        );
        assert_eq!(
            "10.0.0.0/30".parse::<Ipv4Cidr>(),
            Err(CidrError::Prefix { prefix: 30 })
        );
        assert!(matches!(
            "10.77.0.5/24".parse::<Ipv4Cidr>(),
            Err(CidrError::HostBits { .. })
        ));
    }
}
