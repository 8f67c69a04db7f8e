//! The one accept loop of every ORCA listener: connections with `TCP_NODELAY`
//! set, and accept errors (out of descriptors, say) logged and retried after a
//! back-off that doubles from 5 ms to 1 s, instead of spinning a core; and TLS
//! handshakes bounded by [`HANDSHAKE_TIMEOUT`], so a client that connects and
//! says nothing holds no task for longer.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

/// The longest a client may take to complete a TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The first wait after a failed accept.
const FIRST_BACKOFF: Duration = Duration::from_millis(5);
/// The longest wait after failed accepts.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// A listener's accept loop; see the module docs.
#[derive(Debug)]
pub struct Acceptor {
    listener: TcpListener,
    what: &'static str,
    backoff: Duration,
}

impl Acceptor {
    /// Accepts on `listener`; `what` names it in logs ("kubelet API").
    pub fn new(listener: TcpListener, what: &'static str) -> Self {
        Self {
            listener,
            what,
            backoff: FIRST_BACKOFF,
        }
    }

    /// The listener's address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The next connection. Never fails: a failed accept is logged, waited
    /// out and retried. Cancel-safe (a connection is never lost to a
    /// `select!` that drops this future).
    pub async fn next(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            match self.listener.accept().await {
                Ok((tcp, peer)) => {
                    self.backoff = FIRST_BACKOFF;
                    let _ = tcp.set_nodelay(true);
                    return (tcp, peer);
                }
                Err(e) => {
                    tracing::warn!(listener = self.what, error = %e, retry_in = ?self.backoff, "accept failed");
                    tokio::time::sleep(self.backoff).await;
                    self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

/// Why a TLS handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The client sent something that is not a handshake we accept.
    #[error("TLS handshake failed: {0}")]
    Failed(#[source] std::io::Error),
    /// The client did not finish within [`HANDSHAKE_TIMEOUT`].
    #[error("TLS handshake not completed within {HANDSHAKE_TIMEOUT:?}")]
    TimedOut,
}

/// The server side of a TLS handshake on `io`, bounded by [`HANDSHAKE_TIMEOUT`].
pub async fn handshake<IO>(
    acceptor: &tokio_rustls::TlsAcceptor,
    io: IO,
) -> Result<tokio_rustls::server::TlsStream<IO>, HandshakeError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(HandshakeError::Failed(e)),
        Err(_) => Err(HandshakeError::TimedOut),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_arrive_with_nodelay() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut acceptor = Acceptor::new(listener, "test");
        let client = tokio::spawn(TcpStream::connect(addr));
        let (tcp, peer) = acceptor.next().await;
        assert!(tcp.nodelay().unwrap());
        assert_eq!(peer, client.await.unwrap().unwrap().local_addr().unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_dropped_after_the_handshake_timeout() {
        let provider = rustls::crypto::ring::default_provider();
        let key = self_signed();
        let config = rustls::ServerConfig::builder_with_provider(provider.into())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(key.0, key.1)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        // A client that never writes a byte.
        let (server, _client) = tokio::io::duplex(1024);
        let started = tokio::time::Instant::now();
        let result = handshake(&acceptor, server).await;
        assert!(
            matches!(result, Err(HandshakeError::TimedOut)),
            "{result:?}"
        );
        assert_eq!(started.elapsed(), HANDSHAKE_TIMEOUT);
    }

    /// A throwaway self-signed certificate.
    fn self_signed() -> (
        Vec<rustls::pki_types::CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    ) {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let key = rustls::pki_types::PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der());
        (vec![cert.cert.der().clone()], key.into())
    }
}
