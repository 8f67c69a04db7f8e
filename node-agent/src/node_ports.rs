//! The Services' node ports on this host (standalone mode): for each port the
//! control plane lists in its heartbeat answers, a listener on every address
//! of the host that forwards each connection to the Service's virtual IP,
//! where the control plane's load balancer picks an endpoint — kube-proxy's
//! NodePort, in userspace. A port no longer listed is closed; one that cannot
//! be bound (taken by a pod) is logged and tried again with the next answer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};

use orca_proto::controlplane::v1::NodePort;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// The node ports this agent serves.
#[derive(Default)]
pub struct NodePorts {
    serving: Mutex<HashMap<u16, (SocketAddr, JoinHandle<()>)>>,
}

impl Drop for NodePorts {
    fn drop(&mut self) {
        for (_, (_, task)) in self
            .serving
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
        {
            task.abort();
        }
    }
}

async fn forward(listener: TcpListener, target: SocketAddr) {
    let mut listener = orca_proto::accept::Acceptor::new(listener, "node port");
    loop {
        let (mut client, _) = listener.next().await;
        tokio::spawn(async move {
            if let Ok(mut upstream) = TcpStream::connect(target).await {
                let _ = client.set_nodelay(true);
                let _ = upstream.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            }
        });
    }
}

impl NodePorts {
    /// Serves exactly `wanted`.
    pub async fn set(&self, wanted: &[NodePort]) {
        let wanted: HashMap<u16, SocketAddr> = wanted
            .iter()
            .filter_map(|p| Some((u16::try_from(p.port).ok()?, p.target.parse().ok()?)))
            .collect();
        let missing: Vec<(u16, SocketAddr)> = {
            let mut serving = self.serving.lock().unwrap_or_else(PoisonError::into_inner);
            serving.retain(|port, (target, task)| {
                let keep = wanted.get(port) == Some(target);
                if !keep {
                    task.abort();
                    info!(port, "node port closed");
                }
                keep
            });
            wanted
                .iter()
                .filter(|(port, _)| !serving.contains_key(port))
                .map(|(p, t)| (*p, *t))
                .collect()
        };
        for (port, target) in missing {
            match TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))).await {
                Ok(listener) => {
                    info!(port, %target, "node port serving");
                    let task = tokio::spawn(forward(listener, target));
                    self.serving
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(port, (target, task));
                }
                Err(e) => warn!(port, error = %e, "node port cannot listen; trying again"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[tokio::test]
    async fn ports_forward_and_close_when_unlisted() {
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = upstream.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = upstream.accept().await.unwrap();
                s.write_all(b"hi").await.unwrap();
            }
        });
        let free = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let ports = NodePorts::default();
        ports
            .set(&[NodePort {
                port: u32::from(free),
                target: target.to_string(),
            }])
            .await;
        let mut c = TcpStream::connect(("127.0.0.1", free)).await.unwrap();
        let mut got = [0u8; 2];
        c.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hi");
        ports.set(&[]).await;
        tokio::task::yield_now().await;
        assert!(ports.serving.lock().unwrap().is_empty());
    }
}
