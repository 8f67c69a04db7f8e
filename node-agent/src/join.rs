//! The node's identity: joining the cluster once, keeping the certificate, and
//! renewing it before it expires.
//!
//! At first start the agent generates a key, sends a CSR with its single-use
//! join token over TLS (verifying the control plane against the cluster CA it
//! was launched with, `--ca-file`), and stores what it gets back under
//! `<state_dir>/identity/`: `key.pem` (never leaves the host), `cert.pem`,
//! `ca.pem` and `node-id`. A restarted agent reuses that identity and needs no
//! token. Operators may also provision the four files themselves.
//!
//! The certificate is the node's client certificate towards the control plane
//! and its server certificate for AgentService; [`Identity::renew`] replaces it
//! (new key, new CSR) in the shared [`CertSlot`], so both directions pick it up.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use orca_proto::controlplane::v1::{
    JoinRequest, RenewCertificateRequest, node_service_client::NodeServiceClient,
};
use orca_proto::tls::{CertSlot, TlsError};
use orca_proto::types::v1::Resources;
use tonic::transport::Channel;

/// Errors of joining and renewing.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The identity files could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// Path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Key or CSR generation failed.
    #[error("key generation: {0}")]
    Key(#[from] rcgen::Error),
    /// TLS material is unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// No identity and nothing to join with.
    #[error("{0}")]
    Missing(String),
    /// The control plane could not be reached or refused.
    #[error("{0}")]
    Refused(#[from] tonic::Status),
    /// The connection failed.
    #[error("cannot reach the control plane: {0}")]
    Connect(#[from] orca_proto::tls::ConnectError),
}

/// What joining needs.
#[derive(Debug, Clone)]
pub struct JoinSpec {
    /// Control plane URL (`https://host:port`).
    pub control_plane: String,
    /// The cluster CA the agent was launched with (PEM), if any.
    pub ca_pem: Option<String>,
    /// Single-use join token.
    pub token: String,
    /// Node name the token was issued for.
    pub node_name: String,
    /// Where this agent serves AgentService.
    pub agent_address: String,
    /// Node resources.
    pub capacity: Resources,
}

/// The node's identity.
pub struct Identity {
    /// The id the control plane gave the node.
    pub node_id: String,
    /// PEM of the cluster CA.
    pub ca_pem: String,
    /// The node's certificate and key, shared with the TLS configurations.
    pub slot: Arc<CertSlot>,
    cert_pem: std::sync::Mutex<String>,
    dir: PathBuf,
}

fn read(dir: &Path, name: &str) -> Result<Option<String>, JoinError> {
    let path = dir.join(name);
    match std::fs::read_to_string(&path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(JoinError::Io { path, source }),
    }
}

fn write(dir: &Path, name: &str, text: &str, mode: u32) -> Result<(), JoinError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let io = |source| JoinError::Io {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)
}

/// The key of a join not yet answered, kept for its retries.
const PENDING_KEY: &str = "pending-key.pem";

/// A new key and a CSR for it, PEM.
fn key_and_csr() -> Result<(String, String), JoinError> {
    key_and_csr_for(rcgen::KeyPair::generate()?)
}

/// A CSR for `key`, with the key's PEM.
fn key_and_csr_for(key: rcgen::KeyPair) -> Result<(String, String), JoinError> {
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)?
        .pem()?;
    Ok((key.serialize_pem(), csr))
}

impl Identity {
    /// The identity kept under `dir`, if the node has joined before.
    pub fn load(dir: &Path) -> Result<Option<Self>, JoinError> {
        let (Some(key), Some(cert), Some(ca), Some(id)) = (
            read(dir, "key.pem")?,
            read(dir, "cert.pem")?,
            read(dir, "ca.pem")?,
            read(dir, "node-id")?,
        ) else {
            return Ok(None);
        };
        Ok(Some(Self {
            node_id: id.trim().to_owned(),
            ca_pem: ca,
            slot: CertSlot::new(&cert, &key)?,
            cert_pem: std::sync::Mutex::new(cert),
            dir: dir.to_owned(),
        }))
    }

    /// Joins with the token and keeps the identity under `dir`.
    pub async fn join(spec: &JoinSpec, dir: &Path) -> Result<Self, JoinError> {
        let ca = spec.ca_pem.clone().ok_or_else(|| {
            JoinError::Missing("no cluster CA to verify the control plane: pass --ca-file".into())
        })?;
        if spec.token.is_empty() {
            return Err(JoinError::Missing(format!(
                "no identity under {} and no join token (--join-token)",
                dir.display()
            )));
        }
        let tls = orca_proto::tls::client_config(&ca, None)?;
        let channel =
            orca_proto::tls::connect(&spec.control_plane, None, tls, Duration::from_secs(5))
                .await?;
        // The key is kept before the first try: a join whose answer is lost (the
        // control plane died after consuming the token) may be repeated, and the
        // control plane accepts the used token again only with the same key.
        let pending = dir.join(PENDING_KEY);
        let (key, csr) = match std::fs::read_to_string(&pending) {
            Ok(pem) => key_and_csr_for(rcgen::KeyPair::from_pem(&pem)?)?,
            Err(_) => {
                let (key, csr) = key_and_csr()?;
                write(dir, PENDING_KEY, &key, 0o600)?;
                (key, csr)
            }
        };
        let resp = NodeServiceClient::new(channel)
            .join(JoinRequest {
                token: spec.token.clone(),
                node_name: spec.node_name.clone(),
                agent_version: env!("CARGO_PKG_VERSION").to_owned(),
                agent_address: spec.agent_address.clone(),
                capacity: Some(spec.capacity),
                allocatable: Some(spec.capacity),
                csr_pem: csr,
            })
            .await?
            .into_inner();
        write(dir, "key.pem", &key, 0o600)?;
        write(dir, "cert.pem", &resp.node_cert_pem, 0o644)?;
        write(dir, "ca.pem", &resp.ca_cert_pem, 0o644)?;
        write(dir, "node-id", &resp.node_id, 0o644)?;
        let _ = std::fs::remove_file(&pending);
        Ok(Self {
            node_id: resp.node_id,
            ca_pem: resp.ca_cert_pem,
            slot: CertSlot::new(&resp.node_cert_pem, &key)?,
            cert_pem: std::sync::Mutex::new(resp.node_cert_pem),
            dir: dir.to_owned(),
        })
    }

    /// Whether two thirds of the certificate's validity have passed.
    pub fn due_for_renewal(&self) -> bool {
        let cert = self
            .cert_pem
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        orca_proto::tls::renew_at(&cert).is_ok_and(|at| jiff::Timestamp::now().as_second() >= at)
    }

    /// Gets a new certificate for a new key and puts both in use.
    pub async fn renew(&self, client: &mut NodeServiceClient<Channel>) -> Result<(), JoinError> {
        let (key, csr) = key_and_csr()?;
        let resp = client
            .renew_certificate(RenewCertificateRequest {
                node_id: self.node_id.clone(),
                csr_pem: csr,
            })
            .await?
            .into_inner();
        self.slot.set(&resp.node_cert_pem, &key)?;
        write(&self.dir, "key.pem", &key, 0o600)?;
        write(&self.dir, "cert.pem", &resp.node_cert_pem, 0o644)?;
        *self.cert_pem.lock().unwrap_or_else(|p| p.into_inner()) = resp.node_cert_pem;
        Ok(())
    }
}
