//! Port-forward sessions driven as kubectl drives them: SPDY stream pairs
//! (also tunnelled in WebSocket binary messages) and WebSocket channels.

use std::future::Future;

use futures::{SinkExt as _, StreamExt as _};
use http::{HeaderMap, HeaderValue};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::*;
use crate::spdy::frame::{Frame, rst};
use crate::spdy::testing::{Client, DEADLINE};
use crate::upgrade;

async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, f)
        .await
        .expect("deadline passed")
}

fn negotiated(headers: &[(&'static str, &'static str)]) -> Negotiated {
    let mut h = HeaderMap::new();
    h.insert("connection", HeaderValue::from_static("Upgrade"));
    for (n, v) in headers {
        h.insert(*n, HeaderValue::from_static(v));
    }
    upgrade::negotiate(Kind::PortForward, &h).expect("negotiate")
}

fn spdy() -> Negotiated {
    negotiated(&[
        ("upgrade", "SPDY/3.1"),
        ("x-stream-protocol-version", "portforward.k8s.io"),
    ])
}

fn websocket(protocol: &'static str) -> Negotiated {
    negotiated(&[
        ("upgrade", "websocket"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("sec-websocket-version", "13"),
        ("sec-websocket-protocol", protocol),
    ])
}

/// Reads from the app's side of a forwarded connection.
async fn read_some(data: &mut DuplexStream) -> Vec<u8> {
    let mut buf = vec![0u8; 1024];
    let n = within(data.read(&mut buf)).await.expect("read");
    buf.truncate(n);
    buf
}

/// Two forwarded connections on one SPDY session, opened as client-go's
/// `handleConnection` opens them (error stream first, then data; ids by
/// request), interleaved; both directions, FIN and an error message.
async fn two_ports_over_spdy<IO>(client: IO, session: &mut PortForwardSession)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut c = Client::new(client);
    let err0 = c
        .open(&[
            ("streamType", "error"),
            ("port", "8080"),
            ("requestID", "0"),
        ])
        .await;
    let err1 = c
        .open(&[
            ("streamType", "error"),
            ("port", "9090"),
            ("requestID", "1"),
        ])
        .await;
    let data1 = c
        .open(&[("streamType", "data"), ("port", "9090"), ("requestID", "1")])
        .await;
    let data0 = c
        .open(&[("streamType", "data"), ("port", "8080"), ("requestID", "0")])
        .await;
    for id in [err0, err1] {
        // kubectl half-closes the error stream at once: it only reads it.
        c.data(id, b"", true).await;
    }
    let first = within(session.incoming.recv()).await.expect("first pair");
    let second = within(session.incoming.recv()).await.expect("second pair");
    let (mut p8080, mut p9090) = if first.port == 8080 {
        (first, second)
    } else {
        (second, first)
    };
    assert_eq!((p8080.port, p8080.request_id.as_str()), (8080, "0"));
    assert_eq!((p9090.port, p9090.request_id.as_str()), (9090, "1"));

    c.data(data0, b"GET / HTTP/1.0\r\n\r\n", false).await;
    c.data(data1, b"ping", true).await;
    assert_eq!(read_some(&mut p8080.data).await, b"GET / HTTP/1.0\r\n\r\n");
    assert_eq!(read_some(&mut p9090.data).await, b"ping");
    assert_eq!(
        read_some(&mut p9090.data).await,
        b"",
        "the client's FIN is EOF"
    );

    p8080
        .data
        .write_all(b"HTTP/1.0 200 OK\r\n\r\n")
        .await
        .expect("write");
    p8080.data.shutdown().await.expect("shutdown");
    p9090.data.write_all(b"pong").await.expect("write");
    p9090.data.shutdown().await.expect("shutdown");
    p9090.error.send("boom".into()).await;
    drop(p8080.error);

    let got = c.read_until_fins(&[data0, data1, err0, err1]).await;
    let bytes = |id| {
        got.iter()
            .find(|(i, _)| *i == id)
            .map(|(_, b)| b.clone())
            .unwrap_or_default()
    };
    assert_eq!(bytes(data0), b"HTTP/1.0 200 OK\r\n\r\n");
    assert_eq!(bytes(data1), b"pong");
    assert_eq!(bytes(err1), b"boom");
    assert_eq!(bytes(err0), b"", "no error: the error stream just ends");
}

#[tokio::test]
async fn spdy_pairs_streams_by_request_id_and_forwards_both_ways() {
    let (server, client) = tokio::io::duplex(64 * 1024);
    let mut session = accept(server, spdy(), Vec::new()).await.expect("accept");
    two_ports_over_spdy(client, &mut session).await;
}

#[tokio::test]
async fn spdy_tunnelled_in_websocket_as_kubectl_does_by_default() {
    let negotiated = websocket("SPDY/3.1+portforward.k8s.io");
    assert_eq!(negotiated.transport, Transport::SpdyOverWebSocket);
    let (server, client) = tokio::io::duplex(64 * 1024);
    let mut session = accept(server, negotiated, Vec::new())
        .await
        .expect("accept");
    let ws = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
    two_ports_over_spdy(channels::tunnel::over(ws), &mut session).await;
}

#[tokio::test]
async fn spdy_checks_streams_and_times_out_half_pairs() {
    let (server, client) = tokio::io::duplex(64 * 1024);
    let negotiated = spdy();
    let mut session =
        accept_with_timeout(server, negotiated, Vec::new(), Duration::from_millis(200))
            .await
            .expect("accept");
    let mut c = Client::new(client);
    let no_port = c.open(&[("streamType", "data"), ("requestID", "7")]).await;
    assert_eq!(
        c.recv().await,
        Some(Frame::RstStream {
            stream_id: no_port,
            status: rst::CANCEL
        })
    );
    let lonely = c
        .open(&[("streamType", "error"), ("port", "80"), ("requestID", "5")])
        .await;
    let got = c.read_until_fins(&[lonely]).await;
    let text = String::from_utf8(got[0].1.clone()).expect("text");
    assert!(text.contains("timed out waiting for streams"), "{text}");
    drop(c);
    assert!(
        within(session.incoming.recv()).await.is_none(),
        "ends when the client goes"
    );
}

#[tokio::test]
async fn websocket_channels_one_pair_per_port() {
    let (server, client) = tokio::io::duplex(64 * 1024);
    let mut session = accept(server, websocket("v4.channel.k8s.io"), vec![8080, 9090])
        .await
        .expect("accept");
    let mut ws = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
    let mut next = async || match within(ws.next()).await {
        Some(Ok(m)) => m,
        other => panic!("expected a message, got {other:?}"),
    };
    // The port, little-endian, first on every data and error channel.
    for expected in [
        [0u8, 0x90, 0x1f],
        [1, 0x90, 0x1f],
        [2, 0x82, 0x23],
        [3, 0x82, 0x23],
    ] {
        assert_eq!(
            next().await,
            Message::Binary(Bytes::copy_from_slice(&expected))
        );
    }
    let mut p8080 = within(session.incoming.recv()).await.expect("8080");
    let mut p9090 = within(session.incoming.recv()).await.expect("9090");
    assert_eq!((p8080.port, p9090.port), (8080, 9090));

    ws.send(Message::Binary(Bytes::from_static(b"\x00to 8080")))
        .await
        .expect("send");
    ws.send(Message::Binary(Bytes::from_static(b"\x02to 9090")))
        .await
        .expect("send");
    assert_eq!(read_some(&mut p8080.data).await, b"to 8080");
    assert_eq!(read_some(&mut p9090.data).await, b"to 9090");

    p8080.data.write_all(b"from 8080").await.expect("write");
    p9090.data.write_all(b"from 9090").await.expect("write");
    let mut messages = Vec::new();
    for _ in 0..2 {
        messages.push(match within(ws.next()).await {
            Some(Ok(Message::Binary(b))) => b.to_vec(),
            other => panic!("expected data, got {other:?}"),
        });
    }
    messages.sort();
    assert_eq!(
        messages,
        [b"\x00from 8080".to_vec(), b"\x02from 9090".to_vec()]
    );

    p9090.error.send("boom".into()).await;
    assert_eq!(
        within(ws.next()).await.expect("message").expect("ok"),
        Message::Binary(Bytes::from_static(b"\x03boom"))
    );
    // Every pair done: the pod sides shut down, the error sides gone.
    p8080.data.shutdown().await.expect("shutdown");
    p9090.data.shutdown().await.expect("shutdown");
    drop(p8080.error);
    match within(ws.next()).await {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Normal),
        other => panic!("expected a normal Close, got {other:?}"),
    }
    assert!(within(session.incoming.recv()).await.is_none());
}

#[tokio::test]
async fn websocket_channels_need_ports() {
    let (server, _client) = tokio::io::duplex(1024);
    let err = accept(server, websocket("v4.channel.k8s.io"), Vec::new())
        .await
        .expect_err("no ports");
    assert!(matches!(err, ProtocolError::NoPorts));
}
