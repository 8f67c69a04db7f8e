//! The control plane's own certificate: issued by the cluster CA at every
//! start for the names agents and users dial (localhost, the loopback and
//! listen addresses, `advertise_url`'s host, `tls.server_names`; every local
//! interface address when listening on 0.0.0.0), and re-issued when two thirds
//! of its lifetime have passed. It is also the client certificate with which
//! the control plane calls agents (`CN=orca:control-plane`).

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use orca_proto::tls::CertSlot;
use tracing::{info, warn};

use crate::cluster::Cluster;
use crate::config::Config;
use crate::pki::{CONTROL_PLANE_CN, Pki, PkiError};

/// What the control plane's certificate names.
pub struct ServerIdentity {
    names: Vec<String>,
    ips: Vec<IpAddr>,
    lifetime: Duration,
}

/// Addresses of this machine's interfaces.
fn interface_ips() -> Vec<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    addrs
        .filter_map(|a| a.address)
        .filter_map(|a| {
            a.as_sockaddr_in()
                .map(|v4| IpAddr::V4(v4.ip()))
                .or_else(|| a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
        })
        .collect()
}

impl ServerIdentity {
    /// The names for this configuration and bound address.
    pub fn new(config: &Config, listen: SocketAddr) -> Self {
        let mut names = vec!["localhost".to_owned()];
        let mut ips: Vec<IpAddr> = vec![[127, 0, 0, 1].into()];
        if listen.ip().is_unspecified() {
            ips.extend(interface_ips());
        } else {
            ips.push(listen.ip());
        }
        let advertised = orca_proto::tls::host_port(&config.advertise_url)
            .map(|(h, _)| h)
            .ok();
        for name in config.server_names.iter().chain(advertised.iter()) {
            match name.parse::<IpAddr>() {
                Ok(ip) => ips.push(ip),
                Err(_) => names.push(name.clone()),
            }
        }
        ips.sort();
        ips.dedup();
        names.sort();
        names.dedup();
        Self {
            names,
            ips,
            lifetime: config.cert_lifetime,
        }
    }

    /// Adds an address (one the provider made agents reach the control plane at).
    pub fn add_ip(&mut self, ip: IpAddr) {
        if !self.ips.contains(&ip) {
            self.ips.push(ip);
        }
    }

    fn fill(&self, pki: &Pki, slot: &CertSlot) -> Result<(), PkiError> {
        let (cert, key) = pki.issue(CONTROL_PLANE_CN, &self.names, &self.ips, self.lifetime)?;
        slot.set(&cert, &key)
            .map_err(|e| PkiError::Csr(format!("own certificate: {e}")))
    }

    /// A slot holding a fresh certificate.
    pub fn issue(&self, pki: &Pki) -> Result<Arc<CertSlot>, PkiError> {
        let slot = Arc::new(CertSlot::default());
        self.fill(pki, &slot)?;
        Ok(slot)
    }

    /// Re-issues the certificate into `slot` every two thirds of its lifetime
    /// until `shutdown` resolves.
    pub async fn rotate(
        self,
        cluster: &Cluster,
        slot: Arc<CertSlot>,
        shutdown: impl Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let period = self.lifetime * 2 / 3;
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(period) => {}
            }
            match self.fill(cluster.shared().pki(), &slot) {
                Ok(()) => info!("control plane certificate renewed"),
                Err(e) => warn!(error = %e, "control plane certificate not renewed"),
            }
        }
    }
}
