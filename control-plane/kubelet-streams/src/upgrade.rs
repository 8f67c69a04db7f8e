//! Which streaming protocol a request upgrades to, decided from its headers
//! before the 101 response is sent.
//!
//! - SPDY/3.1: `Connection: Upgrade`, `Upgrade: SPDY/3.1` and the client's
//!   `X-Stream-Protocol-Version` list (comma-separated, possibly repeated);
//!   the response names the chosen version (apimachinery's
//!   `httpstream.Handshake`).
//! - WebSocket: `Connection: Upgrade`, `Upgrade: websocket`,
//!   `Sec-WebSocket-Key`, `Sec-WebSocket-Version: 13` and the client's
//!   `Sec-WebSocket-Protocol` list; the response carries
//!   `Sec-WebSocket-Accept` and the chosen subprotocol (none when the client
//!   offered none: binary channels, protocol v1, as the kubelet does).
//!
//! Of the protocols both sides support, the newest wins (the server's order
//! below), whatever order the client listed them in.

use http::header::{CONNECTION, HeaderMap, HeaderValue, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY};
use http::header::{SEC_WEBSOCKET_PROTOCOL, SEC_WEBSOCKET_VERSION, UPGRADE};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::channels::{ChannelProtocol, Encoding};

/// The SPDY protocol-version header (request: the client's list; response:
/// the chosen one).
pub const X_STREAM_PROTOCOL_VERSION: &str = "x-stream-protocol-version";

/// kubectl's port-forward subprotocol: SPDY inside WebSocket binary messages.
pub const SPDY_TUNNEL_PORT_FORWARD: &str = "SPDY/3.1+portforward.k8s.io";

/// The SPDY port-forward protocol.
pub const PORT_FORWARD_V1: &str = "portforward.k8s.io";

/// Exec/attach protocols over SPDY, newest first, with their versions.
const SPDY_REMOTE_COMMAND: &[(&str, u8)] = &[
    ("v5.channel.k8s.io", 5),
    ("v4.channel.k8s.io", 4),
    ("v3.channel.k8s.io", 3),
    ("v2.channel.k8s.io", 2),
    ("channel.k8s.io", 1),
];

/// Exec/attach subprotocols over WebSocket, newest first. `v5` adds the CLOSE
/// signal; `v4`/`v5` write the final status as JSON.
const WS_REMOTE_COMMAND: &[(&str, u8, Encoding)] = &[
    ("v5.channel.k8s.io", 5, Encoding::Binary),
    ("v4.channel.k8s.io", 4, Encoding::Binary),
    ("v4.base64.channel.k8s.io", 4, Encoding::Base64),
    ("v3.channel.k8s.io", 3, Encoding::Binary),
    ("v2.channel.k8s.io", 2, Encoding::Binary),
    ("channel.k8s.io", 1, Encoding::Binary),
    ("base64.channel.k8s.io", 1, Encoding::Base64),
];

/// Port-forward subprotocols over WebSocket with channels (ports from the
/// query), newest first; the SPDY tunnel is preferred to all of them.
const WS_PORT_FORWARD: &[(&str, Encoding)] = &[
    ("v4.channel.k8s.io", Encoding::Binary),
    ("v4.base64.channel.k8s.io", Encoding::Base64),
    (PORT_FORWARD_V1, Encoding::Binary),
    ("channel.k8s.io", Encoding::Binary),
    ("base64.channel.k8s.io", Encoding::Base64),
];

/// What the request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `exec` or `attach`.
    RemoteCommand,
    /// `portForward`.
    PortForward,
}

/// The transport after the 101.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// SPDY/3.1 on the connection.
    Spdy,
    /// WebSocket with Kubernetes channels.
    WebSocket(ChannelProtocol),
    /// WebSocket carrying SPDY/3.1 in binary messages (port-forward).
    SpdyOverWebSocket,
}

/// The outcome of a successful negotiation.
#[derive(Debug, Clone)]
pub struct Negotiated {
    /// What the request is for.
    pub kind: Kind,
    /// How streams are carried.
    pub transport: Transport,
    /// The chosen protocol's name; empty for a WebSocket without subprotocol.
    pub protocol: String,
    /// Remote-command protocol version, 1 to 5 (1 for port-forward): v4+
    /// reports the exit status as JSON, v3+ resizes, v5 has CLOSE.
    pub version: u8,
    /// The headers of the 101 response, exactly.
    pub response_headers: HeaderMap,
}

impl Negotiated {
    /// Whether the session needs the ports from the query (`port=`): a
    /// WebSocket port-forward with channels. Check before upgrading: the
    /// kubelet refuses such a request without ports with a 400.
    pub fn requires_ports(&self) -> bool {
        self.kind == Kind::PortForward && matches!(self.transport, Transport::WebSocket(_))
    }
}

/// Why a request cannot be upgraded; answer it with 400 and this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// Neither SPDY nor WebSocket upgrade headers.
    #[error(
        "unable to upgrade: missing upgrade headers in request (want Connection: Upgrade with Upgrade: SPDY/3.1 or websocket)"
    )]
    NotAnUpgrade,
    /// SPDY without `X-Stream-Protocol-Version`.
    #[error("unable to upgrade: X-Stream-Protocol-Version is required")]
    MissingProtocolVersion,
    /// WebSocket without `Sec-WebSocket-Key`.
    #[error("unable to upgrade: Sec-WebSocket-Key is required")]
    MissingWebSocketKey,
    /// WebSocket version other than 13.
    #[error("unable to upgrade: unsupported Sec-WebSocket-Version {0:?} (want 13)")]
    WebSocketVersion(String),
    /// No protocol in common.
    #[error(
        "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server accepts {supported:?}"
    )]
    UnsupportedProtocol {
        /// What the client listed.
        offered: Vec<String>,
        /// What we accept for this kind and transport.
        supported: Vec<String>,
    },
}

/// Decides the protocol for a `kind` request with `request` headers.
pub fn negotiate(kind: Kind, request: &HeaderMap) -> Result<Negotiated, Rejection> {
    if !has_token(request, CONNECTION, "upgrade") {
        return Err(Rejection::NotAnUpgrade);
    }
    let upgrade = request
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim();
    if upgrade.eq_ignore_ascii_case("SPDY/3.1") {
        spdy(kind, request)
    } else if upgrade.eq_ignore_ascii_case("websocket") {
        websocket(kind, request)
    } else {
        Err(Rejection::NotAnUpgrade)
    }
}

fn spdy(kind: Kind, request: &HeaderMap) -> Result<Negotiated, Rejection> {
    let offered = list(request, X_STREAM_PROTOCOL_VERSION);
    if offered.is_empty() {
        return Err(Rejection::MissingProtocolVersion);
    }
    let supported: Vec<(&str, u8)> = match kind {
        Kind::RemoteCommand => SPDY_REMOTE_COMMAND.to_vec(),
        Kind::PortForward => vec![(PORT_FORWARD_V1, 1)],
    };
    let Some(&(name, version)) = supported
        .iter()
        .find(|(n, _)| offered.iter().any(|o| o == n))
    else {
        return Err(Rejection::UnsupportedProtocol {
            offered,
            supported: supported.iter().map(|(n, _)| (*n).to_owned()).collect(),
        });
    };
    let mut headers = HeaderMap::new();
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(UPGRADE, HeaderValue::from_static("SPDY/3.1"));
    headers.insert(X_STREAM_PROTOCOL_VERSION, HeaderValue::from_static(name));
    Ok(Negotiated {
        kind,
        transport: Transport::Spdy,
        protocol: name.to_owned(),
        version,
        response_headers: headers,
    })
}

fn websocket(kind: Kind, request: &HeaderMap) -> Result<Negotiated, Rejection> {
    let key = request
        .get(SEC_WEBSOCKET_KEY)
        .map(|k| k.as_bytes().trim_ascii())
        .filter(|k| !k.is_empty())
        .ok_or(Rejection::MissingWebSocketKey)?;
    let version = request
        .get(SEC_WEBSOCKET_VERSION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim();
    if version != "13" {
        return Err(Rejection::WebSocketVersion(version.to_owned()));
    }
    let offered = list(request, SEC_WEBSOCKET_PROTOCOL.as_str());
    let (name, version, transport) = choose_websocket(kind, &offered)?;
    let mut headers = HeaderMap::new();
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    let accept = derive_accept_key(key);
    // The key is base64 of SHA-1: always a valid header value.
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        headers.insert(SEC_WEBSOCKET_ACCEPT, accept);
    }
    if !name.is_empty() {
        headers.insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(name));
    }
    Ok(Negotiated {
        kind,
        transport,
        protocol: name.to_owned(),
        version,
        response_headers: headers,
    })
}

fn choose_websocket(
    kind: Kind,
    offered: &[String],
) -> Result<(&'static str, u8, Transport), Rejection> {
    let has = |name: &str| offered.iter().any(|o| o == name);
    let channels = |encoding, close_signal| {
        Transport::WebSocket(ChannelProtocol {
            encoding,
            close_signal,
        })
    };
    match kind {
        Kind::RemoteCommand => {
            if offered.is_empty() {
                return Ok(("", 1, channels(Encoding::Binary, false)));
            }
            if let Some(&(name, version, encoding)) =
                WS_REMOTE_COMMAND.iter().find(|(n, ..)| has(n))
            {
                return Ok((name, version, channels(encoding, version >= 5)));
            }
        }
        Kind::PortForward => {
            if offered.is_empty() {
                return Ok(("", 1, channels(Encoding::Binary, false)));
            }
            if has(SPDY_TUNNEL_PORT_FORWARD) {
                return Ok((SPDY_TUNNEL_PORT_FORWARD, 1, Transport::SpdyOverWebSocket));
            }
            if let Some(&(name, encoding)) = WS_PORT_FORWARD.iter().find(|(n, _)| has(n)) {
                return Ok((name, 1, channels(encoding, false)));
            }
        }
    }
    let supported = match kind {
        Kind::RemoteCommand => WS_REMOTE_COMMAND
            .iter()
            .map(|(n, ..)| (*n).to_owned())
            .collect(),
        Kind::PortForward => std::iter::once(SPDY_TUNNEL_PORT_FORWARD)
            .chain(WS_PORT_FORWARD.iter().map(|(n, _)| *n))
            .map(str::to_owned)
            .collect(),
    };
    Err(Rejection::UnsupportedProtocol {
        offered: offered.to_vec(),
        supported,
    })
}

/// Every comma-separated, trimmed, non-empty value of `name` over all its
/// occurrences.
fn list(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Whether a comma-separated header holds `token` (case-insensitive).
fn has_token(headers: &HeaderMap, name: http::header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(*n, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn spdy_picks_the_newest_common_version_and_answers_with_it() {
        // kubectl with KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false.
        let req = headers(&[
            ("connection", "Upgrade"),
            ("upgrade", "SPDY/3.1"),
            ("x-stream-protocol-version", "v2.channel.k8s.io"),
            (
                "x-stream-protocol-version",
                "v4.channel.k8s.io, v5.channel.k8s.io",
            ),
            ("x-stream-protocol-version", "v3.channel.k8s.io"),
        ]);
        let n = negotiate(Kind::RemoteCommand, &req).expect("negotiated");
        assert_eq!(
            (n.transport, n.protocol.as_str(), n.version),
            (Transport::Spdy, "v5.channel.k8s.io", 5)
        );
        assert_eq!(n.response_headers.len(), 3);
        assert_eq!(n.response_headers["connection"], "Upgrade");
        assert_eq!(n.response_headers["upgrade"], "SPDY/3.1");
        assert_eq!(
            n.response_headers["x-stream-protocol-version"],
            "v5.channel.k8s.io"
        );
    }

    #[test]
    fn spdy_port_forward_and_its_rejections() {
        let req = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "spdy/3.1"),
            ("x-stream-protocol-version", "portforward.k8s.io"),
        ]);
        let n = negotiate(Kind::PortForward, &req).expect("negotiated");
        assert_eq!(n.protocol, "portforward.k8s.io");
        assert!(!n.requires_ports());
        let missing = headers(&[("connection", "Upgrade"), ("upgrade", "SPDY/3.1")]);
        let err = negotiate(Kind::PortForward, &missing).expect_err("no version");
        assert_eq!(err, Rejection::MissingProtocolVersion);
        assert!(err.to_string().contains("X-Stream-Protocol-Version"));
        let wrong = headers(&[
            ("connection", "Upgrade"),
            ("upgrade", "SPDY/3.1"),
            ("x-stream-protocol-version", "v4.channel.k8s.io"),
        ]);
        let err = negotiate(Kind::PortForward, &wrong).expect_err("unsupported");
        assert!(
            err.to_string().contains("v4.channel.k8s.io")
                && err.to_string().contains("portforward.k8s.io")
        );
        assert_eq!(
            negotiate(Kind::RemoteCommand, &HeaderMap::new()).unwrap_err(),
            Rejection::NotAnUpgrade
        );
    }

    #[test]
    fn websocket_exec_answers_the_accept_key_and_subprotocol() {
        // RFC 6455's example key.
        let req = headers(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("sec-websocket-version", "13"),
            (
                "sec-websocket-protocol",
                "v4.channel.k8s.io, v5.channel.k8s.io",
            ),
        ]);
        let n = negotiate(Kind::RemoteCommand, &req).expect("negotiated");
        assert_eq!(n.protocol, "v5.channel.k8s.io");
        assert_eq!(
            n.transport,
            Transport::WebSocket(ChannelProtocol {
                encoding: Encoding::Binary,
                close_signal: true
            })
        );
        assert_eq!(
            n.response_headers["sec-websocket-accept"],
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert_eq!(
            n.response_headers["sec-websocket-protocol"],
            "v5.channel.k8s.io"
        );
        assert_eq!(n.response_headers["upgrade"], "websocket");
        assert_eq!(n.response_headers.len(), 4);
    }

    #[test]
    fn websocket_variants() {
        let ws = |protocols: &'static str| {
            let mut h = headers(&[
                ("connection", "upgrade"),
                ("upgrade", "WebSocket"),
                ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
                ("sec-websocket-version", "13"),
            ]);
            if !protocols.is_empty() {
                h.insert(
                    "sec-websocket-protocol",
                    HeaderValue::from_static(protocols),
                );
            }
            h
        };
        let b64 = negotiate(Kind::RemoteCommand, &ws("base64.channel.k8s.io")).expect("base64");
        assert_eq!(
            (b64.version, b64.transport),
            (
                1,
                Transport::WebSocket(ChannelProtocol {
                    encoding: Encoding::Base64,
                    close_signal: false
                })
            )
        );
        let none = negotiate(Kind::RemoteCommand, &ws("")).expect("no subprotocol");
        assert_eq!(none.protocol, "");
        assert!(!none.response_headers.contains_key("sec-websocket-protocol"));
        // kubectl >= 1.31 port-forward; preferred to the channel protocols.
        let tunnel = negotiate(
            Kind::PortForward,
            &ws("v4.channel.k8s.io,SPDY/3.1+portforward.k8s.io"),
        )
        .expect("tunnel");
        assert_eq!(tunnel.transport, Transport::SpdyOverWebSocket);
        assert_eq!(
            tunnel.response_headers["sec-websocket-protocol"],
            "SPDY/3.1+portforward.k8s.io"
        );
        assert!(!tunnel.requires_ports());
        let channels = negotiate(Kind::PortForward, &ws("v4.channel.k8s.io")).expect("channels");
        assert!(channels.requires_ports());
        let err =
            negotiate(Kind::RemoteCommand, &ws("v9.channel.k8s.io")).expect_err("unsupported");
        assert!(matches!(err, Rejection::UnsupportedProtocol { .. }));
        let mut old = ws("v5.channel.k8s.io");
        old.insert("sec-websocket-version", HeaderValue::from_static("8"));
        assert_eq!(
            negotiate(Kind::RemoteCommand, &old).unwrap_err(),
            Rejection::WebSocketVersion("8".into())
        );
        old.remove("sec-websocket-key");
        assert_eq!(
            negotiate(Kind::RemoteCommand, &old).unwrap_err(),
            Rejection::MissingWebSocketKey
        );
    }
}
