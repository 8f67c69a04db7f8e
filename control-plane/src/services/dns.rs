//! Service discovery by DNS: the control plane answers on the hosts' gateway
//! (UDP port 53 by default) for `NAME.NAMESPACE.svc` and
//! `NAME.NAMESPACE.svc.cluster.local` with the Service's virtual IP (A
//! records; AAAA and other types get an empty answer). It is authoritative
//! for `svc` and `cluster.local` only: an unknown name there is NXDOMAIN. Any
//! other name is forwarded as it came to the first `nameserver` of the
//! control plane machine's `/etc/resolv.conf` (as CoreDNS forwards to the
//! node's resolver), and the answer relayed; with no upstream it is REFUSED.
//! Messages are parsed and written with hickory-proto.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::net::UdpSocket;
use tracing::debug;

/// TTL of answers: short, since a Service can be deleted and made again.
const TTL: u32 = 5;
/// The cluster domain.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// What a query name is, for this server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// A Service name: `(namespace, name)`.
    Service(String, String),
    /// In our zones but no Service's form.
    Ours,
    /// Not ours.
    Foreign,
}

/// Classifies a query name (any case, trailing dot or not).
pub fn classify(name: &str) -> Lookup {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let short = name
        .strip_suffix(&format!(".{CLUSTER_DOMAIN}"))
        .unwrap_or(if name == CLUSTER_DOMAIN { "" } else { &name });
    let inside = short.len() != name.len() || name == CLUSTER_DOMAIN;
    let labels: Vec<&str> = short.split('.').collect();
    match labels.as_slice() {
        [svc, ns, "svc"] => Lookup::Service((*ns).to_owned(), (*svc).to_owned()),
        [.., "svc"] => Lookup::Ours,
        _ if inside => Lookup::Ours,
        _ => Lookup::Foreign,
    }
}

/// The answer to one query message; `resolve` gives a Service's virtual IP.
pub fn answer(request: &Message, resolve: &dyn Fn(&str, &str) -> Option<Ipv4Addr>) -> Message {
    let mut response = Message::new();
    response
        .set_id(request.id())
        .set_message_type(MessageType::Response)
        .set_op_code(request.op_code())
        .set_recursion_desired(request.recursion_desired())
        .set_recursion_available(false);
    let Some(query) = request.queries().first() else {
        response.set_response_code(ResponseCode::FormErr);
        return response;
    };
    response.add_query(query.clone());
    let name = query.name().to_ascii();
    match classify(&name) {
        Lookup::Foreign => {
            response.set_response_code(ResponseCode::Refused);
        }
        Lookup::Ours => {
            response
                .set_authoritative(true)
                .set_response_code(ResponseCode::NXDomain);
        }
        Lookup::Service(ns, svc) => {
            response.set_authoritative(true);
            match resolve(&ns, &svc) {
                None => {
                    response.set_response_code(ResponseCode::NXDomain);
                }
                Some(ip) if query.query_type() == RecordType::A => {
                    response.add_answer(Record::from_rdata(
                        query.name().clone(),
                        TTL,
                        RData::A(A(ip)),
                    ));
                }
                // The name exists; it has no record of this type.
                Some(_) => {}
            }
        }
    }
    response
}

/// Gives a Service's virtual IP from its namespace and name.
pub type Resolver = Arc<dyn Fn(&str, &str) -> Option<Ipv4Addr> + Send + Sync>;

/// The first `nameserver` of a resolv.conf text.
pub fn upstream(resolv_conf: &str) -> Option<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .find_map(|a| a.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
}

/// Time allowed for the upstream resolver's answer.
const UPSTREAM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Sends `query` to `upstream` and relays its answer to `peer`.
async fn forward(socket: Arc<UdpSocket>, query: Vec<u8>, peer: SocketAddr, upstream: SocketAddr) {
    let bind: SocketAddr = if upstream.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let Ok(out) = UdpSocket::bind(bind).await else {
        return;
    };
    if out.send_to(&query, upstream).await.is_err() {
        return;
    }
    let mut buf = vec![0u8; 4096];
    if let Ok(Ok((n, from))) = tokio::time::timeout(UPSTREAM_TIMEOUT, out.recv_from(&mut buf)).await
        && from == upstream
    {
        let _ = socket.send_to(&buf[..n], peer).await;
    }
}

/// Answers queries on `socket` until the task is aborted; names outside the
/// cluster's zones go to `upstream` when there is one.
pub async fn serve(socket: UdpSocket, resolve: Resolver, upstream: Option<SocketAddr>) {
    let socket = Arc::new(socket);
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let reply = match Message::from_vec(&buf[..n]) {
            Ok(request) => {
                let foreign = request
                    .queries()
                    .first()
                    .is_some_and(|q| classify(&q.name().to_ascii()) == Lookup::Foreign);
                match upstream {
                    Some(up) if foreign => {
                        tokio::spawn(forward(socket.clone(), buf[..n].to_vec(), peer, up));
                        continue;
                    }
                    _ => answer(&request, &*resolve),
                }
            }
            Err(e) => {
                debug!(%peer, error = %e, "not a DNS message; ignored");
                continue;
            }
        };
        if let Ok(bytes) = reply.to_vec() {
            let _ = socket.send_to(&bytes, peer).await;
        }
    }
}

/// Where the DNS server listens: the gateway, port 53 unless configured.
pub fn address(gateway: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::from((gateway, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;

    #[test]
    fn the_upstream_is_the_first_nameserver() {
        assert_eq!(
            upstream("# x\nsearch lan\nnameserver 10.0.0.53\nnameserver 1.1.1.1\n"),
            Some(SocketAddr::from(([10, 0, 0, 53], 53)))
        );
        assert_eq!(upstream("search lan\n"), None);
    }

    #[test]
    fn names_are_classified() {
        let svc = |ns: &str, n: &str| Lookup::Service(ns.into(), n.into());
        assert_eq!(classify("web.default.svc"), svc("default", "web"));
        assert_eq!(classify("Web.Lab.svc.cluster.local."), svc("lab", "web"));
        assert_eq!(
            classify("web.default.svc.cluster.local.default.svc.cluster.local"),
            Lookup::Ours
        );
        assert_eq!(classify("web.cluster.local"), Lookup::Ours);
        assert_eq!(classify("example.com."), Lookup::Foreign);
        assert_eq!(classify("web"), Lookup::Foreign);
    }

    fn ask(name: &str, kind: RecordType) -> Message {
        let mut m = Message::new();
        m.set_id(7)
            .add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
        let resolve = |ns: &str, n: &str| {
            (ns == "default" && n == "web").then_some(Ipv4Addr::new(10, 0, 0, 200))
        };
        let bytes = answer(&m, &resolve).to_vec().unwrap();
        Message::from_vec(&bytes).unwrap()
    }

    #[test]
    fn services_resolve_and_the_rest_is_nxdomain_or_refused() {
        let a = ask("web.default.svc.cluster.local.", RecordType::A);
        assert_eq!(a.id(), 7);
        assert_eq!(a.response_code(), ResponseCode::NoError);
        assert_eq!(
            a.answers()[0].data(),
            &RData::A(A(Ipv4Addr::new(10, 0, 0, 200)))
        );
        let aaaa = ask("web.default.svc.", RecordType::AAAA);
        assert_eq!(
            (aaaa.response_code(), aaaa.answers().len()),
            (ResponseCode::NoError, 0)
        );
        assert_eq!(
            ask("db.default.svc.", RecordType::A).response_code(),
            ResponseCode::NXDomain
        );
        assert_eq!(
            ask("example.com.", RecordType::A).response_code(),
            ResponseCode::Refused
        );
    }
}
