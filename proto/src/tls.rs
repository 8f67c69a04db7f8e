//! Mutual TLS for ORCA's gRPC connections, shared by both daemons, the CLI and
//! the benchmarks.
//!
//! - [`CertSlot`]: a certificate and key that can be replaced while the process
//!   runs (rotation); it answers both as the server certificate and as the client
//!   certificate, so one rotation covers both directions.
//! - [`server_config`] / [`client_config`]: rustls configurations that trust
//!   only the cluster CA and speak HTTP/2 (ALPN `h2`, which grpc-go clients such
//!   as grpcurl insist on).
//! - [`incoming`]: accepted connections with their handshakes done concurrently
//!   (a slow or hostile client never holds up the accept loop), each carrying the
//!   verified [`Peer`] identity that handlers read with [`peer`].
//! - [`channel`]: a lazily connecting tonic channel over TLS with a fixed server
//!   name to verify (the control plane dials agents by IP but checks the node name).
//!
//! tonic's own TLS support is not used: it cannot rotate certificates without a
//! restart and does not hand the peer's verified name to handlers cheaply.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint, Uri};

/// Common name of the control plane's certificate; agents accept calls only from it.
pub const CONTROL_PLANE_CN: &str = "orca:control-plane";

/// Common name of a node's certificate.
pub fn node_cn(node: &str) -> String {
    format!("orca:node:{node}")
}

/// The node a certificate's common name belongs to.
pub fn node_of(common_name: &str) -> Option<&str> {
    common_name.strip_prefix("orca:node:")
}

pub use crate::accept::HANDSHAKE_TIMEOUT;

/// Errors building TLS configurations or channels.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// PEM input did not hold what was expected.
    #[error("{what}: {problem}")]
    Pem {
        /// Which input.
        what: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// rustls refused the material.
    #[error(transparent)]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built.
    #[error("client verifier: {0}")]
    Verifier(String),
    /// A URL or address is unusable.
    #[error("{0}")]
    Address(String),
}

/// The crypto provider every ORCA TLS configuration uses: *ring*. aws-lc-rs
/// seeds its random generator from CPU jitter when a process first uses it,
/// about 50 ms of CPU, which every `orca` invocation would pay.
///
/// TLS 1.3 with AES-128-GCM first (as Go's and OpenSSL's clients order them):
/// log and exec streams cross two TLS hops, and AES-128 takes fewer rounds
/// than the provider's default AES-256 for the same 128-bit security level
/// TLS 1.3 asks of its other primitives.
pub fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(provider)
}

/// Certificates of a PEM bundle.
pub fn certs(what: &'static str, pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            problem: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what,
            problem: "no certificate in it".into(),
        });
    }
    Ok(certs)
}

fn roots(ca_pem: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs("CA certificate", ca_pem)? {
        roots.add(cert)?;
    }
    Ok(roots)
}

/// A certificate with its key, replaceable at any time; new handshakes use the
/// latest one. Empty until first set: a server without a certificate refuses
/// handshakes, a client without one presents none.
#[derive(Debug, Default)]
pub struct CertSlot(RwLock<Option<Arc<CertifiedKey>>>);

impl CertSlot {
    /// A slot holding this certificate (chain) and key.
    pub fn new(cert_pem: &str, key_pem: &str) -> Result<Arc<Self>, TlsError> {
        let slot = Arc::new(Self::default());
        slot.set(cert_pem, key_pem)?;
        Ok(slot)
    }

    /// Replaces the certificate and key.
    pub fn set(&self, cert_pem: &str, key_pem: &str) -> Result<(), TlsError> {
        let chain = certs("certificate", cert_pem)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsError::Pem {
            what: "private key",
            problem: e.to_string(),
        })?;
        let key = CertifiedKey::from_der(chain, key, &provider())?;
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(key));
        Ok(())
    }

    fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl ResolvesServerCert for CertSlot {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

impl ResolvesClientCert for CertSlot {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.current()
    }

    fn has_certs(&self) -> bool {
        self.current().is_some()
    }
}

/// Whether a server demands client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Every client presents a certificate signed by the CA.
    Required,
    /// A client may present one (it is verified if it does); handlers decide.
    Optional,
}

/// A server configuration presenting `slot`'s certificate and verifying client
/// certificates against the CA.
pub fn server_config(
    slot: Arc<CertSlot>,
    ca_pem: &str,
    auth: ClientAuth,
) -> Result<Arc<ServerConfig>, TlsError> {
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca_pem)?), provider());
    let verifier = match auth {
        ClientAuth::Required => verifier,
        ClientAuth::Optional => verifier.allow_unauthenticated(),
    }
    .build()
    .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(slot);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A client configuration trusting only the CA, presenting `cert` when given.
pub fn client_config(
    ca_pem: &str,
    cert: Option<Arc<CertSlot>>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(ca_pem)?);
    let mut config = match cert {
        Some(slot) => builder.with_client_cert_resolver(slot),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Who is on the other end of an accepted connection.
#[derive(Debug, Clone, Default)]
pub struct Peer {
    /// The peer's address.
    pub addr: Option<SocketAddr>,
    /// Common name of the client certificate, verified against the CA; None when
    /// the client presented none.
    pub common_name: Option<String>,
}

/// The verified peer of a request (None for requests that did not come through
/// [`incoming`]).
pub fn peer<T>(req: &tonic::Request<T>) -> Option<&Peer> {
    req.extensions().get::<Peer>()
}

/// Common name of a DER certificate's subject.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

/// Organisations of a DER certificate's subject (Kubernetes reads them as the
/// client's groups).
pub fn organizations(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    cert.subject()
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_owned))
        .collect()
}

/// Validity of the first certificate of a PEM bundle: (not before, not after),
/// seconds since the Unix epoch.
pub fn validity(cert_pem: &str) -> Result<(i64, i64), TlsError> {
    let der = certs("certificate", cert_pem)?.remove(0);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| TlsError::Pem {
        what: "certificate",
        problem: e.to_string(),
    })?;
    let v = cert.validity();
    Ok((v.not_before.timestamp(), v.not_after.timestamp()))
}

/// When a certificate should be renewed: two thirds into its validity.
pub fn renew_at(cert_pem: &str) -> Result<i64, TlsError> {
    let (from, until) = validity(cert_pem)?;
    Ok(from + (until - from) * 2 / 3)
}

/// An accepted TLS connection and its verified peer.
pub struct TlsConn {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    peer: Peer,
}

impl Connected for TlsConn {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Connections accepted on every listener, TLS handshakes done concurrently
/// (failed ones are logged and dropped), `TCP_NODELAY` set (without it small
/// gRPC messages wait out the peer's delayed ACK: 40 ms a call on Linux).
pub fn incoming(
    listeners: Vec<TcpListener>,
    config: Arc<ServerConfig>,
) -> impl tokio_stream::Stream<Item = std::io::Result<TlsConn>> {
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    for listener in listeners {
        let mut listener = crate::accept::Acceptor::new(listener, "gRPC");
        let tx = tx.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, addr) = tokio::select! {
                    _ = tx.closed() => return,
                    accepted = listener.next() => accepted,
                };
                let tx = tx.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let stream = match crate::accept::handshake(&acceptor, tcp).await {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::debug!(%addr, error = %e, "gRPC connection refused");
                            return;
                        }
                    };
                    let common_name = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|c| common_name(c));
                    let peer = Peer {
                        addr: Some(addr),
                        common_name,
                    };
                    let _ = tx.send(Ok(TlsConn { stream, peer })).await;
                });
            }
        });
    }
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Host and port of a `https://host:port` URL (or a bare `host:port`).
pub fn host_port(url: &str) -> Result<(String, u16), TlsError> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .unwrap_or(url)
        .trim_end_matches('/');
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| TlsError::Address(format!("{url:?} has no port")))?;
    let port = port
        .parse()
        .map_err(|_| TlsError::Address(format!("{url:?}: bad port")))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(TlsError::Address(format!("{url:?} has no host")));
    }
    Ok((host.to_owned(), port))
}

/// A channel to `address` (`host:port` or an https URL) over TLS, verifying
/// the server's certificate for `server_name` (its host when None). Connects
/// lazily and reconnects after failures.
pub fn channel(
    address: &str,
    server_name: Option<&str>,
    config: Arc<ClientConfig>,
    connect_timeout: Duration,
) -> Result<Channel, TlsError> {
    let (endpoint, connector) = endpoint(address, server_name, config, connect_timeout)?;
    Ok(endpoint.connect_with_connector_lazy(connector))
}

/// As [`channel`], connecting now: an unreachable server is an error here.
pub async fn connect(
    address: &str,
    server_name: Option<&str>,
    config: Arc<ClientConfig>,
    connect_timeout: Duration,
) -> Result<Channel, ConnectError> {
    let (endpoint, connector) = endpoint(address, server_name, config, connect_timeout)?;
    Ok(endpoint.connect_with_connector(connector).await?)
}

/// Why [`connect`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The address or configuration is unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The connection or handshake failed.
    #[error("{}", chain(.0))]
    Transport(#[from] tonic::transport::Error),
}

/// An error with its sources, `a: b: c` (transport errors hide the cause).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    s
}

type Connector = tower::util::ServiceFn<
    Box<
        dyn Fn(
                Uri,
            ) -> Pin<
                Box<
                    dyn std::future::Future<
                            Output = std::io::Result<
                                hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>,
                            >,
                        > + Send,
                >,
            > + Send
            + Sync,
    >,
>;

fn endpoint(
    address: &str,
    server_name: Option<&str>,
    config: Arc<ClientConfig>,
    connect_timeout: Duration,
) -> Result<(Endpoint, Connector), TlsError> {
    let (host, port) = host_port(address)?;
    let name = server_name.unwrap_or(&host).to_owned();
    let server_name = ServerName::try_from(name.clone())
        .map_err(|e| TlsError::Address(format!("server name {name:?}: {e}")))?;
    let endpoint = Endpoint::from_shared(format!("http://{}", address_of(&host, port)))
        .map_err(|e| TlsError::Address(format!("{address:?}: {e}")))?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true);
    let connector: Connector = tower::service_fn(Box::new(move |_: Uri| {
        let connector = tokio_rustls::TlsConnector::from(config.clone());
        let server_name = server_name.clone();
        let host = host.clone();
        Box::pin(async move {
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(server_name, tcp).await?;
            Ok(hyper_util::rt::TokioIo::new(tls))
        })
    }));
    Ok((endpoint, connector))
}

fn address_of(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_host_and_port() {
        assert_eq!(
            host_port("https://10.0.0.1:7443/").unwrap(),
            ("10.0.0.1".into(), 7443)
        );
        assert_eq!(host_port("node-a:7444").unwrap(), ("node-a".into(), 7444));
        assert_eq!(host_port("https://[::1]:1").unwrap(), ("::1".into(), 1));
        assert!(host_port("https://nohost").is_err());
        assert!(host_port(":7").is_err());
    }
}
