//! The kubelet API's TLS: the serving certificate (configured, or issued by
//! the cluster CA for the advertised address and the node name) and client
//! certificates required from the configured client CA. HTTP/1.1 only: exec,
//! attach and port-forward upgrade the connection.

use std::sync::Arc;

use orca_proto::tls::{CertSlot, ClientAuth};

use crate::config::kubernetes::Kubernetes;
use crate::pki::Pki;

/// Why the kubelet API's TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum KubeletTlsError {
    /// A configured file could not be read.
    #[error("kubernetes.kubelet: cannot read {path}: {source}")]
    Read {
        /// Path.
        path: std::path::PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A certificate or key was not usable.
    #[error("kubernetes.kubelet: {0}")]
    Tls(#[from] orca_proto::tls::TlsError),
    /// The serving certificate could not be issued.
    #[error("kubernetes.kubelet: serving certificate: {0}")]
    Pki(#[from] crate::pki::PkiError),
}

fn read(path: &std::path::Path) -> Result<String, KubeletTlsError> {
    std::fs::read_to_string(path).map_err(|source| KubeletTlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The server configuration, and the slot holding the serving certificate.
pub fn server_config(
    config: &Kubernetes,
    pki: &Pki,
    lifetime: std::time::Duration,
) -> Result<(Arc<rustls::ServerConfig>, Arc<CertSlot>), KubeletTlsError> {
    let slot = match &config.kubelet.serving {
        Some((cert, key)) => CertSlot::new(&read(cert)?, &read(key)?)?,
        None => {
            let (cert, key) = pki.issue(
                &format!("system:node:{}", config.node_name),
                std::slice::from_ref(&config.node_name),
                &[config.kubelet.address],
                lifetime,
            )?;
            CertSlot::new(&cert, &key)?
        }
    };
    let client_ca = read(&config.kubelet.client_ca)?;
    let base = orca_proto::tls::server_config(slot.clone(), &client_ca, ClientAuth::Required)?;
    let mut tls = (*base).clone();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((Arc::new(tls), slot))
}
