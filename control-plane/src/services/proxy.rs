//! The userspace load balancer behind a Service's virtual IP: one listener per
//! service port, each connection handed to one Ready endpoint (round-robin,
//! or the endpoint with the fewest open connections) and copied both ways
//! until either side closes. A backend that refuses the connection is skipped
//! for the next; with no endpoint at all the connection is closed at once (a
//! client sees it reset, as Kubernetes' REJECT rule makes it).
//!
//! The listeners and their connections run on one thread of their own
//! ([`runtime`]): a connection's accept, connect and copies then stay on one
//! core with no hand-offs between worker threads. On this 2-core machine
//! `orca-bench service` measured 0.73-0.74× the direct rate this way, 0.68×
//! on the control plane's shared runtime.
//!
//! Endpoints are replaced as a whole by [`Balancer::set`]; counters of an
//! endpoint that stays carry over, so least-connections stays right across
//! updates. Per-endpoint counts of connections served show in the Service's
//! status (`orca describe svc`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tracing::debug;

/// How a connection's endpoint is chosen (`orca.research/lb-algorithm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Algorithm {
    /// Each endpoint in turn.
    #[default]
    RoundRobin,
    /// The endpoint with the fewest open connections (in turn among equals).
    LeastConnections,
}

impl Algorithm {
    /// The annotation's value; an error names the accepted ones.
    pub fn parse(value: &str) -> Result<Self, String> {
        match value {
            "round-robin" => Ok(Self::RoundRobin),
            "least-connections" => Ok(Self::LeastConnections),
            other => Err(format!("{other:?} is not round-robin or least-connections")),
        }
    }
}

/// One Ready endpoint: the pod and where it listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The pod's name.
    pub pod: String,
    /// Its address and the target port.
    pub addr: SocketAddr,
}

/// An endpoint with its counters.
#[derive(Debug)]
pub struct Backend {
    /// Which.
    pub endpoint: Endpoint,
    /// Connections open now.
    pub active: AtomicUsize,
    /// Connections handed to it so far.
    pub served: AtomicU64,
}

/// The endpoints of one service port and how to choose among them.
#[derive(Debug, Default)]
pub struct Balancer {
    backends: RwLock<Arc<Vec<Arc<Backend>>>>,
    algorithm: RwLock<Algorithm>,
    next: AtomicUsize,
}

/// The proxies' runtime: one thread, made at first use, that lives as long
/// as the process.
pub fn runtime() -> &'static tokio::runtime::Handle {
    static PROXY: std::sync::OnceLock<tokio::runtime::Handle> = std::sync::OnceLock::new();
    PROXY.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("the proxy runtime starts");
        let handle = rt.handle().clone();
        std::thread::Builder::new()
            .name("orca-proxy".into())
            .spawn(move || rt.block_on(std::future::pending::<()>()))
            .expect("the proxy thread starts");
        handle
    })
}

/// Listens on `at` and serves it on the proxies' runtime; the task's handle
/// (abort it to close the port).
pub fn listen(
    at: SocketAddr,
    balancer: Arc<Balancer>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = std::net::TcpListener::bind(at)?;
    listener.set_nonblocking(true)?;
    Ok(runtime().spawn(async move {
        match TcpListener::from_std(listener) {
            Ok(listener) => balancer.serve(listener).await,
            Err(e) => tracing::warn!(%at, error = %e, "proxy listener not registered"),
        }
    }))
}

/// Time allowed to connect to an endpoint before the next is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

impl Balancer {
    /// Replaces the endpoints (counters of those that stay are kept) and the
    /// algorithm; whether the endpoints changed.
    pub fn set(&self, endpoints: &[Endpoint], algorithm: Algorithm) -> bool {
        *self
            .algorithm
            .write()
            .unwrap_or_else(PoisonError::into_inner) = algorithm;
        let mut slot = self
            .backends
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let same = slot.len() == endpoints.len()
            && slot.iter().zip(endpoints).all(|(b, e)| &b.endpoint == e);
        if same {
            return false;
        }
        let kept: Vec<Arc<Backend>> = endpoints
            .iter()
            .map(|e| {
                slot.iter()
                    .find(|b| &b.endpoint == e)
                    .cloned()
                    .unwrap_or_else(|| {
                        Arc::new(Backend {
                            endpoint: e.clone(),
                            active: AtomicUsize::new(0),
                            served: AtomicU64::new(0),
                        })
                    })
            })
            .collect();
        *slot = Arc::new(kept);
        true
    }

    /// The endpoints now, with their counters.
    pub fn backends(&self) -> Arc<Vec<Arc<Backend>>> {
        self.backends
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The order in which to try endpoints for one connection.
    fn order(&self) -> Vec<Arc<Backend>> {
        let backends = self.backends();
        if backends.is_empty() {
            return Vec::new();
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % backends.len();
        let mut order: Vec<Arc<Backend>> = backends[start..]
            .iter()
            .chain(&backends[..start])
            .cloned()
            .collect();
        if *self
            .algorithm
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            == Algorithm::LeastConnections
        {
            // Stable: equals keep their round-robin order.
            order.sort_by_key(|b| b.active.load(Ordering::Relaxed));
        }
        order
    }

    /// Serves `listener` until the task is aborted.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        let mut listener = orca_proto::accept::Acceptor::new(listener, "service proxy");
        loop {
            let (client, peer) = listener.next().await;
            let this = self.clone();
            tokio::spawn(async move { this.forward(client, peer).await });
        }
    }

    async fn forward(&self, mut client: TcpStream, peer: SocketAddr) {
        let _ = client.set_nodelay(true);
        for backend in self.order() {
            let connect = TcpStream::connect(backend.endpoint.addr);
            let Ok(Ok(mut upstream)) = tokio::time::timeout(CONNECT_TIMEOUT, connect).await else {
                debug!(%peer, endpoint = %backend.endpoint.addr, "endpoint refused; trying the next");
                continue;
            };
            let _ = upstream.set_nodelay(true);
            backend.served.fetch_add(1, Ordering::Relaxed);
            backend.active.fetch_add(1, Ordering::Relaxed);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            backend.active.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        // No endpoint took it: dropping the client closes it.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(pod: &str, port: u16) -> Endpoint {
        Endpoint {
            pod: pod.into(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    #[test]
    fn round_robin_takes_each_in_turn() {
        let b = Balancer::default();
        assert!(b.set(
            &[endpoint("a", 1), endpoint("b", 2), endpoint("c", 3)],
            Algorithm::RoundRobin
        ));
        let firsts: Vec<String> = (0..6).map(|_| b.order()[0].endpoint.pod.clone()).collect();
        assert_eq!(firsts, ["a", "b", "c", "a", "b", "c"]);
    }

    #[test]
    fn least_connections_prefers_the_idle_and_counters_survive_updates() {
        let b = Balancer::default();
        b.set(
            &[endpoint("a", 1), endpoint("b", 2)],
            Algorithm::LeastConnections,
        );
        b.backends()[0].active.store(5, Ordering::Relaxed);
        for _ in 0..4 {
            assert_eq!(b.order()[0].endpoint.pod, "b");
        }
        // Same endpoints: nothing changes; a new one joins with zero.
        assert!(!b.set(
            &[endpoint("a", 1), endpoint("b", 2)],
            Algorithm::LeastConnections
        ));
        assert!(b.set(
            &[endpoint("a", 1), endpoint("b", 2), endpoint("c", 3)],
            Algorithm::LeastConnections
        ));
        assert_eq!(
            b.backends()[0].active.load(Ordering::Relaxed),
            5,
            "a's count kept"
        );
        b.backends()[1].active.store(1, Ordering::Relaxed);
        assert_eq!(b.order()[0].endpoint.pod, "c");
    }

    #[test]
    fn algorithms_parse_from_the_annotation() {
        assert_eq!(
            Algorithm::parse("least-connections").unwrap(),
            Algorithm::LeastConnections
        );
        assert!(
            Algorithm::parse("random")
                .unwrap_err()
                .contains("round-robin")
        );
    }

    #[tokio::test]
    async fn connections_reach_a_live_endpoint_past_a_dead_one() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live = upstream.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = upstream.accept().await.unwrap();
                s.write_all(b"hello").await.unwrap();
            }
        });
        // A port nothing listens on.
        let dead = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let b = Arc::new(Balancer::default());
        b.set(
            &[
                Endpoint {
                    pod: "dead".into(),
                    addr: dead,
                },
                Endpoint {
                    pod: "live".into(),
                    addr: live,
                },
            ],
            Algorithm::RoundRobin,
        );
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = front.local_addr().unwrap();
        let serving = tokio::spawn(b.clone().serve(front));
        for _ in 0..3 {
            let mut c = TcpStream::connect(addr).await.unwrap();
            let mut got = [0u8; 5];
            c.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"hello");
        }
        assert_eq!(b.backends()[1].served.load(Ordering::Relaxed), 3);
        assert_eq!(b.backends()[0].served.load(Ordering::Relaxed), 0);
        serving.abort();
    }
}
