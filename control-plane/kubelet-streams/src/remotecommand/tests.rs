//! Sessions driven by minimal clients that frame as client-go does: SPDY
//! (streams error, stdin, stdout, stderr, resize) and WebSocket channels.

use std::future::Future;

use base64::Engine as _;
use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _};
use http::{HeaderMap, HeaderValue};
use tokio::io::DuplexStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::*;
use crate::spdy::frame::{Frame, goaway};
use crate::spdy::testing::{Client, DEADLINE};
use crate::upgrade;

async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, f)
        .await
        .expect("deadline passed")
}

fn spdy_negotiated(version: &'static str) -> Negotiated {
    let mut h = HeaderMap::new();
    h.insert("connection", HeaderValue::from_static("Upgrade"));
    h.insert("upgrade", HeaderValue::from_static("SPDY/3.1"));
    h.insert(
        "x-stream-protocol-version",
        HeaderValue::from_static(version),
    );
    upgrade::negotiate(Kind::RemoteCommand, &h).expect("negotiate")
}

/// The process writes `out` on stdout, then `err` on stderr.
async fn write_out_and_err(session: &RemoteSession) {
    for (stream, bytes) in [(&session.stdout, "out"), (&session.stderr, "err")] {
        stream
            .as_ref()
            .expect("stream requested")
            .send(Bytes::from_static(bytes.as_bytes()))
            .await
            .expect("send");
    }
}

/// A SPDY session being accepted on one end of a pipe (protocol `version`,
/// the kubelet query `query`, streams awaited for `wait`), and a client on the other.
fn spdy_session(
    version: &'static str,
    query: &str,
    wait: Duration,
) -> (
    tokio::task::JoinHandle<Result<RemoteSession, ProtocolError>>,
    Client<DuplexStream>,
) {
    let (server, client) = tokio::io::duplex(64 * 1024);
    let options = StreamOptions::from_query(query);
    let accepting = tokio::spawn(accept(server, spdy_negotiated(version), options, wait));
    (accepting, Client::new(client))
}

fn ws_negotiated(protocol: &'static str) -> Negotiated {
    let mut h = HeaderMap::new();
    h.insert("connection", HeaderValue::from_static("Upgrade"));
    h.insert("upgrade", HeaderValue::from_static("websocket"));
    h.insert(
        "sec-websocket-key",
        HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
    );
    h.insert("sec-websocket-version", HeaderValue::from_static("13"));
    h.insert("sec-websocket-protocol", HeaderValue::from_static(protocol));
    upgrade::negotiate(Kind::RemoteCommand, &h).expect("negotiate")
}

/// Everything the client reads until EOF: DATA merged per stream, which
/// streams got FIN, and the frames in order.
struct Transcript {
    data: HashMap<u32, Vec<u8>>,
    fins: Vec<u32>,
    frames: Vec<Frame>,
}

async fn read_to_eof(client: &mut Client<DuplexStream>) -> Transcript {
    let mut t = Transcript {
        data: HashMap::new(),
        fins: Vec::new(),
        frames: Vec::new(),
    };
    while let Some(frame) = client.recv().await {
        if let Frame::Data {
            stream_id,
            fin,
            data,
        } = &frame
        {
            t.data
                .entry(*stream_id)
                .or_default()
                .extend_from_slice(data);
            if *fin {
                t.fins.push(*stream_id);
            }
        }
        t.frames.push(frame);
    }
    t
}

fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).expect("status JSON")
}

#[test]
fn options_from_the_kubelet_query() {
    let o = StreamOptions::from_query("command=sh&stdin=1&stdout=true&stderr=1&tty=1");
    assert_eq!(
        o,
        StreamOptions {
            stdin: true,
            stdout: true,
            stderr: false,
            tty: true
        },
        "no stderr with a TTY"
    );
    let o = StreamOptions::from_query("input=1&output=1&stderr=0");
    assert!(o.stdin && o.stdout && !o.stderr && !o.tty && o.any());
    assert!(!StreamOptions::from_query("command=ls").any());
}

#[tokio::test]
async fn spdy_v4_tty_session_stdin_resize_stdout_and_exit_code() {
    let (accepting, mut c) = spdy_session(
        "v4.channel.k8s.io",
        "stdin=1&stdout=1&stderr=1&tty=1",
        DEADLINE,
    );
    // client-go's order: error first, then stdin, stdout, resize.
    let error = c.open(&[("streamType", "error")]).await;
    let stdin = c.open(&[("streamType", "stdin")]).await;
    let stdout = c.open(&[("streamType", "stdout")]).await;
    let resize = c.open(&[("streamType", "resize")]).await;
    let mut session = within(accepting).await.expect("task").expect("accept");
    assert!(session.stderr.is_none());
    for id in [error, stdin, stdout, resize] {
        assert!(
            matches!(c.recv().await, Some(Frame::SynReply { stream_id, fin: false, .. }) if stream_id == id)
        );
    }

    c.data(stdin, b"echo hi\n", false).await;
    c.data(resize, br#"{"Width":80,"#, false).await;
    c.data(resize, b"\"Height\":24}\n", false).await;
    c.data(stdin, b"", true).await;
    let mut input = session.stdin.take().expect("stdin requested");
    assert_eq!(
        within(input.recv()).await.as_deref(),
        Some(&b"echo hi\n"[..])
    );
    assert_eq!(within(input.recv()).await, None, "FIN is stdin's EOF");
    assert_eq!(
        within(session.resize.recv()).await,
        Some(TerminalSize {
            width: 80,
            height: 24
        })
    );

    let out = session.stdout.clone().expect("stdout requested");
    out.send(Bytes::from_static(b"hi\r\n")).await.expect("send");
    session.finish.finish(Outcome::Exited(3)).await;

    let t = read_to_eof(&mut c).await;
    assert_eq!(t.data[&stdout], b"hi\r\n");
    let status = json(&t.data[&error]);
    assert_eq!(status["status"], "Failure");
    assert_eq!(status["reason"], "NonZeroExitCode");
    assert_eq!(
        status["details"]["causes"][0],
        serde_json::json!({"reason": "ExitCode", "message": "3"})
    );
    for id in [error, stdout, stdin, resize] {
        assert!(t.fins.contains(&id), "FIN on stream {id}");
    }
    assert_eq!(
        t.frames.last(),
        Some(&Frame::GoAway {
            last_good_stream_id: resize,
            status: goaway::OK
        }),
        "GOAWAY after everything else"
    );
}

#[tokio::test]
async fn spdy_v5_stdout_and_stderr_then_success() {
    let (accepting, mut c) = spdy_session("v5.channel.k8s.io", "stdout=1&stderr=1", DEADLINE);
    let error = c.open(&[("streamType", "error")]).await;
    let stdout = c.open(&[("streamType", "stdout")]).await;
    let stderr = c.open(&[("streamType", "stderr")]).await;
    let session = within(accepting).await.expect("task").expect("accept");
    assert!(session.stdin.is_none());
    write_out_and_err(&session).await;
    session.finish.finish(Outcome::Exited(0)).await;
    let t = read_to_eof(&mut c).await;
    assert_eq!(t.data[&stdout], b"out");
    assert_eq!(t.data[&stderr], b"err");
    assert_eq!(t.data[&error], br#"{"metadata":{},"status":"Success"}"#);
}

#[tokio::test]
async fn spdy_v2_has_no_resize_and_reports_in_text() {
    let (accepting, mut c) = spdy_session("v2.channel.k8s.io", "stdout=1&tty=1", DEADLINE);
    let error = c.open(&[("streamType", "error")]).await;
    let _stdout = c.open(&[("streamType", "stdout")]).await;
    // No resize stream before v3: the session is complete without one.
    let session = within(accepting).await.expect("task").expect("accept");
    session
        .finish
        .finish(Outcome::Error("no such container".into()))
        .await;
    let t = read_to_eof(&mut c).await;
    let text = String::from_utf8(t.data[&error].clone()).expect("text");
    assert!(
        text.contains("no such container") && !text.starts_with('{'),
        "{text}"
    );

    let (accepting, mut c) = spdy_session("v2.channel.k8s.io", "stdout=1&tty=1", DEADLINE);
    let error = c.open(&[("streamType", "error")]).await;
    let _stdout = c.open(&[("streamType", "stdout")]).await;
    let session = within(accepting).await.expect("task").expect("accept");
    session.finish.finish(Outcome::Exited(0)).await;
    let t = read_to_eof(&mut c).await;
    assert!(
        !t.data.contains_key(&error) || t.data[&error].is_empty(),
        "success writes nothing"
    );
    assert!(t.fins.contains(&error));
}

#[tokio::test]
async fn spdy_streams_missing_after_the_timeout() {
    let wait = Duration::from_millis(200);
    let (accepting, mut c) = spdy_session("v4.channel.k8s.io", "stdin=1&stdout=1", wait);
    let _error = c.open(&[("streamType", "error")]).await;
    let _stdin = c.open(&[("streamType", "stdin")]).await;
    match within(accepting).await.expect("task") {
        Err(ProtocolError::StreamTimeout { missing, .. }) => assert_eq!(missing, "stdout"),
        other => panic!("expected a timeout, got {other:?}"),
    }
    let t = read_to_eof(&mut c).await;
    assert!(matches!(t.frames.last(), Some(Frame::GoAway { .. })));
}

async fn ws_client(io: DuplexStream) -> WebSocketStream<DuplexStream> {
    WebSocketStream::from_raw_socket(io, Role::Client, None).await
}

/// Binary messages until the Close, which must be a normal one.
async fn ws_read_to_close(ws: &mut WebSocketStream<DuplexStream>) -> Vec<Vec<u8>> {
    let mut messages = Vec::new();
    loop {
        match within(ws.next()).await {
            Some(Ok(Message::Binary(b))) => messages.push(b.to_vec()),
            Some(Ok(Message::Text(t))) => messages.push(t.as_bytes().to_vec()),
            Some(Ok(Message::Close(frame))) => {
                assert_eq!(
                    frame.map(|f| f.code),
                    Some(CloseCode::Normal),
                    "client-go needs 1000"
                );
                return messages;
            }
            Some(Ok(_)) => {}
            other => panic!("connection ended without a Close: {other:?}"),
        }
    }
}

#[tokio::test]
async fn websocket_v5_session_with_close_signal() {
    let (server, client) = tokio::io::duplex(64 * 1024);
    let options = StreamOptions::from_query("stdin=1&stdout=1&stderr=1");
    let mut session = accept(
        server,
        ws_negotiated("v5.channel.k8s.io"),
        options,
        DEADLINE,
    )
    .await
    .expect("accept");
    let mut ws = ws_client(client).await;
    ws.send(Message::Binary(Bytes::from_static(&[0, b'h', b'i'])))
        .await
        .expect("stdin");
    ws.send(Message::Binary(Bytes::from_static(
        b"\x04{\"Width\":100,\"Height\":30}",
    )))
    .await
    .expect("resize");
    ws.send(Message::Binary(Bytes::from_static(&[255, 0])))
        .await
        .expect("CLOSE stdin");
    let mut input = session.stdin.take().expect("stdin");
    assert_eq!(within(input.recv()).await.as_deref(), Some(&b"hi"[..]));
    assert_eq!(within(input.recv()).await, None, "v5 CLOSE ends stdin");
    assert_eq!(
        within(session.resize.recv()).await,
        Some(TerminalSize {
            width: 100,
            height: 30
        })
    );
    write_out_and_err(&session).await;
    session.finish.finish(Outcome::Exited(3)).await;
    let messages = ws_read_to_close(&mut ws).await;
    assert_eq!(
        messages[0],
        [1],
        "the kubelet's empty 'connected' message on stdout"
    );
    assert_eq!(messages[1], b"\x01out");
    assert_eq!(messages[2], b"\x02err");
    assert_eq!(messages[3][0], 3);
    let status = json(&messages[3][1..]);
    assert_eq!(status["reason"], "NonZeroExitCode");
    assert_eq!(status["details"]["causes"][0]["message"], "3");
    assert_eq!(messages.len(), 4);
}

#[tokio::test]
async fn websocket_base64_and_a_dropped_finisher() {
    let (server, client) = tokio::io::duplex(64 * 1024);
    let options = StreamOptions::from_query("stdin=1&stdout=1");
    let mut session = accept(
        server,
        ws_negotiated("v4.base64.channel.k8s.io"),
        options,
        DEADLINE,
    )
    .await
    .expect("accept");
    let mut ws = ws_client(client).await;
    ws.send(Message::Text("0aGk=".into())).await.expect("stdin");
    let mut input = session.stdin.take().expect("stdin");
    assert_eq!(within(input.recv()).await.as_deref(), Some(&b"hi"[..]));
    session
        .stdout
        .as_ref()
        .expect("stdout")
        .send(Bytes::from_static(b"hi"))
        .await
        .expect("stdout");
    drop(session);
    let messages = ws_read_to_close(&mut ws).await;
    assert_eq!(messages[0], b"1", "empty 'connected' message, base64");
    assert_eq!(messages[1], b"1aGk=");
    let status = &messages[2];
    assert_eq!(status[0], b'3');
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(&status[1..])
        .expect("base64");
    let status = json(&decoded);
    assert_eq!(
        status["status"], "Failure",
        "a dropped session is not a success"
    );
    assert_eq!(status["reason"], "InternalError");
}
