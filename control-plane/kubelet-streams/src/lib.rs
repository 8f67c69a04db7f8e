//! The kubelet API's streaming protocols, server side: what `kubectl exec`,
//! `attach` and `port-forward` (and the API server's kubelet proxy in front of
//! them) speak once an HTTP/1.1 request has been upgraded.
//!
//! # What this crate owns
//! Bytes on the wire and nothing else: which protocol a request upgrades to,
//! the framing and multiplexing of each transport, and the exec/attach and
//! port-forward sessions over them. The caller (ORCA's kubelet server in
//! `orca-control-plane`'s `vk::kubelet`) routes the request, authenticates and
//! authorizes it, sends the 101 with the headers [`upgrade::negotiate`]
//! chose, and hands the upgraded connection to [`remotecommand::accept`] or
//! [`portforward::accept`]; what the session carries (a process's input and
//! output, a forwarded TCP connection) is the caller's.
//!
//! **Invariant:** nothing here knows ORCA: no dependency on
//! `orca-control-plane`, the Kubernetes client, the AWS SDK or the store.
//!
//! # Protocols
//! - Upgrade negotiation ([`upgrade`]): SPDY/3.1 with `X-Stream-Protocol-Version`
//!   as apimachinery's [`httpstream.Handshake`], or a
//!   [WebSocket (RFC 6455)](https://www.rfc-editor.org/rfc/rfc6455) handshake
//!   with `Sec-WebSocket-Protocol`.
//! - [SPDY/3.1](https://www.chromium.org/spdy/spdy-protocol/spdy-protocol-draft3-1/)
//!   ([`spdy`]), as Go's [`moby/spdystream`](https://github.com/moby/spdystream)
//!   speaks it: header blocks are [zlib (RFC 1950)](https://www.rfc-editor.org/rfc/rfc1950)
//!   streams with SPDY/3's preset dictionary.
//! - Kubernetes' WebSocket channel protocols ([`channels`]): `channel.k8s.io`,
//!   `base64.channel.k8s.io` and `v2`..`v5.channel.k8s.io`
//!   ([KEP-4006](https://github.com/kubernetes/enhancements/tree/master/keps/sig-api-machinery/4006-transition-spdy-to-websockets),
//!   apimachinery's [`wsstream`]), and kubectl's SPDY tunnelled in WebSocket
//!   binary messages (`SPDY/3.1+portforward.k8s.io`).
//! - Exec and attach ([`remotecommand`]): the stdin, stdout, stderr, error
//!   and resize streams, protocol versions 1 to 5, the final `metav1.Status`,
//!   as the kubelet's [`remotecommand`
//!   server](https://github.com/kubernetes/kubernetes/tree/master/pkg/kubelet/cri/streaming/remotecommand).
//! - Port-forward ([`portforward`]): `portforward.k8s.io` data/error stream
//!   pairs over SPDY, or port-prefixed channel pairs over WebSocket, as the
//!   kubelet's [`portforward`
//!   server](https://github.com/kubernetes/kubernetes/tree/master/pkg/kubelet/cri/streaming/portforward).
//!
//! [`httpstream.Handshake`]: https://github.com/kubernetes/apimachinery/blob/master/pkg/util/httpstream/httpstream.go
//! [`wsstream`]: https://github.com/kubernetes/apimachinery/tree/master/pkg/util/httpstream/wsstream
//!
//! # Layout
//! [`upgrade`] negotiates; [`spdy`] and [`channels`] are the transports;
//! [`remotecommand`] and [`portforward`] are the sessions over either.
//!
//! # Limitations
//! Server side only. SPDY has no flow control (spdystream's: WINDOW_UPDATE is
//! ignored and never sent; back-pressure is the socket's).

pub mod channels;
pub mod portforward;
pub mod remotecommand;
pub mod spdy;
pub mod upgrade;
