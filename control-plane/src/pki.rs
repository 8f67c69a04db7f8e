//! The cluster's certificate authority and the admin token.
//!
//! The control plane creates an ECDSA P-256 CA on first start and keeps it in
//! the store (the data directory is the control plane's secret: back it up and
//! keep it private). It issues:
//! - node certificates, from the agent's CSR at Join and at renewal (the private
//!   key never leaves the node): subject `CN=orca:node:<name>`, SAN the node
//!   name and its IP, usable as client (heartbeats) and server (AgentService);
//! - the control plane's own certificate, `CN=orca:control-plane`, regenerated
//!   at every start and before it expires, SAN the configured server names; it
//!   is the server certificate of the API and the client certificate with which
//!   the control plane calls agents.
//!
//! Users authenticate with a bearer token, generated on first start; only its
//! SHA-256 is stored, the token itself goes into the CLI credentials file
//! `<data_dir>/admin.yaml`.

use std::net::IpAddr;
use std::time::Duration;

use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use sha2::Digest as _;

use orca_store::{StoreError, Table};

pub use orca_proto::tls::{CONTROL_PLANE_CN, node_cn, node_of};
/// Lifetime of the CA.
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Certificates are valid from this long before they are issued (clock skew),
/// at most a quarter of their lifetime (so renewal at two thirds stays ahead).
const BACKDATE: Duration = Duration::from_secs(300);

/// Errors of the PKI.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Certificate generation or signing failed.
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
    /// A CSR is malformed.
    #[error("certificate signing request: {0}")]
    Csr(String),
}

pub use orca_model::records::CaRecord;

/// The CA, loaded.
pub struct Pki {
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
    admin_token_sha256: String,
}

/// What a freshly created PKI hands out once: the admin token in clear.
pub struct Created {
    /// The admin bearer token.
    pub admin_token: String,
}

fn validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE.min(lifetime / 4);
    params.not_after = now + lifetime;
}

/// SHA-256 of a token, hex.
pub fn token_hash(token: &str) -> String {
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

impl Pki {
    /// Loads the CA from `table`, creating it (and the admin token) on first start.
    pub fn load_or_create(table: &Table<CaRecord>) -> Result<(Self, Option<Created>), PkiError> {
        if let Some(record) = table.get("ca")? {
            let key = KeyPair::from_pem(&record.key_pem)?;
            let issuer = Issuer::from_ca_cert_pem(&record.cert_pem, key)?;
            let pki = Self {
                ca_pem: record.cert_pem,
                issuer,
                admin_token_sha256: record.admin_token_sha256,
            };
            return Ok((pki, None));
        }
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "orca cluster CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        validity(&mut params, CA_LIFETIME);
        let cert = params.self_signed(&key)?;
        let admin_token = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let record = CaRecord {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            admin_token_sha256: token_hash(&admin_token),
        };
        // Another start racing this one keeps the first CA.
        if !table.create("ca", &record)? {
            return Self::load_or_create(table);
        }
        let pki = Self {
            ca_pem: record.cert_pem,
            issuer: Issuer::new(params, key),
            admin_token_sha256: record.admin_token_sha256,
        };
        Ok((pki, Some(Created { admin_token })))
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Whether `token` is the admin token.
    pub fn admin_token_ok(&self, token: &str) -> bool {
        token_hash(token) == self.admin_token_sha256
    }

    fn params(
        common_name: &str,
        names: &[String],
        ips: &[IpAddr],
        lifetime: Duration,
    ) -> Result<CertificateParams, PkiError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.subject_alt_names = names
            .iter()
            .map(|n| n.as_str().try_into().map(SanType::DnsName))
            .collect::<Result<Vec<_>, _>>()?;
        params
            .subject_alt_names
            .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, lifetime);
        Ok(params)
    }

    /// A certificate and a new key for `common_name` (the control plane's own),
    /// PEM: (certificate, key).
    pub fn issue(
        &self,
        common_name: &str,
        names: &[String],
        ips: &[IpAddr],
        lifetime: Duration,
    ) -> Result<(String, String), PkiError> {
        let key = KeyPair::generate()?;
        let cert =
            Self::params(common_name, names, ips, lifetime)?.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// The SHA-256 of a CSR's public key: what binds a retried join to the key of
    /// the first one.
    pub fn csr_key_sha256(csr_pem: &str) -> Result<Vec<u8>, PkiError> {
        use rcgen::PublicKeyData as _;
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::Csr(e.to_string()))?;
        Ok(sha2::Sha256::digest(csr.public_key.der_bytes()).to_vec())
    }

    /// Signs a node's CSR. Only the CSR's public key is used: the subject, names
    /// and lifetime are the control plane's choice.
    pub fn sign_node(
        &self,
        csr_pem: &str,
        node: &str,
        ips: &[IpAddr],
        lifetime: Duration,
    ) -> Result<String, PkiError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::Csr(e.to_string()))?;
        let params = Self::params(&node_cn(node), &[node.to_owned()], ips, lifetime)?;
        Ok(params.signed_by(&csr.public_key, &self.issuer)?.pem())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_persists_and_signs_node_csrs() {
        let dir = tempfile::tempdir().unwrap();
        let store = orca_store::Store::open(dir.path()).unwrap();
        let (pki, created) = Pki::load_or_create(&store.pki).unwrap();
        let token = created
            .expect("first start creates the admin token")
            .admin_token;
        assert!(pki.admin_token_ok(&token));
        assert!(!pki.admin_token_ok("guess"));
        let (again, created) = Pki::load_or_create(&store.pki).unwrap();
        assert!(created.is_none(), "the CA is created once");
        assert_eq!(again.ca_pem(), pki.ca_pem());
        assert!(again.admin_token_ok(&token));

        let node_key = KeyPair::generate().unwrap();
        let csr = CertificateParams::new(vec!["ignored".to_owned()])
            .unwrap()
            .serialize_request(&node_key)
            .unwrap()
            .pem()
            .unwrap();
        let cert = again
            .sign_node(
                &csr,
                "gpu-1",
                &["10.0.0.2".parse().unwrap()],
                Duration::from_secs(60),
            )
            .unwrap();
        let der = orca_proto::tls::certs("node", &cert).unwrap().remove(0);
        assert_eq!(
            orca_proto::tls::common_name(&der).as_deref(),
            Some("orca:node:gpu-1"),
            "the control plane chooses the subject, not the CSR"
        );
        let (_, expires) = orca_proto::tls::validity(&cert).unwrap();
        let now = jiff::Timestamp::now().as_second();
        assert!(
            (now + 50..=now + 70).contains(&expires),
            "{expires} vs {now}"
        );
        assert!(
            again
                .sign_node("garbage", "gpu-1", &[], Duration::from_secs(60))
                .is_err()
        );
    }
}
