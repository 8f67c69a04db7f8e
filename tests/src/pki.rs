//! A throwaway cluster CA for tests that run an agent without a control plane:
//! it provisions the agent's identity (as an operator may) and gives the test
//! the control plane's client certificate, so every call is real mutual TLS.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use orca_proto::tls::{CONTROL_PLANE_CN, CertSlot};
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType,
};

/// A CA and the files it wrote.
pub struct TestPki {
    issuer: Issuer<'static, KeyPair>,
    /// PEM of the CA.
    pub ca_pem: String,
    dir: PathBuf,
}

/// A certificate with its key, PEM, and where they were written.
pub struct Issued {
    /// Certificate.
    pub cert_pem: String,
    /// Key.
    pub key_pem: String,
    /// Certificate file.
    pub cert_file: PathBuf,
    /// Key file.
    pub key_file: PathBuf,
}

impl TestPki {
    /// A new CA writing its files under `dir`.
    pub fn new(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("pki dir");
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "orca test CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_pem = params.self_signed(&key).expect("CA cert").pem();
        std::fs::write(dir.join("ca.pem"), &ca_pem).expect("write CA");
        Self {
            issuer: Issuer::new(params, key),
            ca_pem,
            dir: dir.to_owned(),
        }
    }

    /// The CA file.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Issues a client and server certificate for `cn` naming `names`.
    pub fn issue(&self, file: &str, cn: &str, names: &[&str]) -> Issued {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*n).try_into().expect("DNS name")),
            })
            .collect();
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert_pem = params.signed_by(&key, &self.issuer).expect("sign").pem();
        let key_pem = key.serialize_pem();
        let cert_file = self.dir.join(format!("{file}.pem"));
        let key_file = self.dir.join(format!("{file}.key"));
        std::fs::write(&cert_file, &cert_pem).expect("write cert");
        std::fs::write(&key_file, &key_pem).expect("write key");
        Issued {
            cert_pem,
            key_pem,
            cert_file,
            key_file,
        }
    }

    /// Writes an agent identity for `node` into `state_dir/identity`, as a
    /// joined agent keeps it.
    pub fn provision_node(&self, state_dir: &Path, node: &str, node_id: &str) {
        let issued = self.issue(node, &orca_proto::tls::node_cn(node), &[node, "127.0.0.1"]);
        let dir = state_dir.join("identity");
        std::fs::create_dir_all(&dir).expect("identity dir");
        std::fs::write(dir.join("cert.pem"), issued.cert_pem).expect("cert");
        std::fs::write(dir.join("key.pem"), issued.key_pem).expect("key");
        std::fs::write(dir.join("ca.pem"), &self.ca_pem).expect("ca");
        std::fs::write(dir.join("node-id"), node_id).expect("node id");
    }

    /// The control plane's client identity (what agents accept calls from).
    pub fn control_plane(&self) -> Issued {
        self.issue("control-plane", CONTROL_PLANE_CN, &["localhost"])
    }

    /// A TLS client configuration presenting `issued`.
    pub fn client_config(&self, issued: Option<&Issued>) -> Arc<rustls::ClientConfig> {
        let slot = issued.map(|i| CertSlot::new(&i.cert_pem, &i.key_pem).expect("cert slot"));
        orca_proto::tls::client_config(&self.ca_pem, slot).expect("client config")
    }
}
