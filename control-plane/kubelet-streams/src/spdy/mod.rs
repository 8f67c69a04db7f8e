//! SPDY/3.1, server side, as Kubernetes speaks it for exec, attach and
//! port-forward (`Upgrade: SPDY/3.1`; Go's `moby/spdystream` on the other end).
//!
//! A connection multiplexes streams the client opens with SYN_STREAM; each
//! carries headers (`streamType`, `port`, `requestID`), DATA both ways and a
//! FIN per direction. Header blocks are zlib-compressed against a preset
//! dictionary, one context per direction for the life of the connection.
//!
//! - [`frame`]: the frame codec; [`headers`]: header blocks and their zlib
//!   contexts; [`dictionary`]: the SPDY/3 dictionary.
//! - [`Connection`]: the session (reader and writer tasks), handing out
//!   [`Stream`]s, each a [`StreamReader`] and a [`StreamWriter`].
//!
//! Flow control is spdystream's: none. WINDOW_UPDATE is ignored and never
//! sent; back-pressure is the socket's (a bounded send budget on our side, a
//! bounded queue per stream on the receiving side).

pub mod connection;
pub mod dictionary;
pub mod frame;
pub mod headers;
pub mod stream;

pub use connection::{Accept, Connection, LINGER};
pub use headers::Headers;
pub use stream::{Stream, StreamError, StreamReader, StreamWriter};

/// A minimal SPDY client for tests, framing as client-go does.
#[cfg(test)]
pub(crate) mod testing {
    use std::time::Duration;

    use bytes::{Bytes, BytesMut};
    use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

    use super::frame::{self, Frame};
    use super::headers::{HeaderCompressor, HeaderDecompressor, Headers};

    /// Longest a test waits for a frame before failing.
    pub const DEADLINE: Duration = Duration::from_secs(10);

    /// The client end of a SPDY connection.
    pub struct Client<IO> {
        io: IO,
        tx: HeaderCompressor,
        rx: HeaderDecompressor,
        buf: BytesMut,
        next_id: u32,
    }

    impl<IO: AsyncRead + AsyncWrite + Unpin> Client<IO> {
        pub fn new(io: IO) -> Self {
            Self {
                io,
                tx: HeaderCompressor::new(),
                rx: HeaderDecompressor::new(),
                buf: BytesMut::new(),
                next_id: 1,
            }
        }

        pub async fn send(&mut self, frame: Frame) {
            let mut out = BytesMut::new();
            frame::encode(&frame, &mut self.tx, &mut out).expect("encode");
            self.io.write_all(&out).await.expect("client write");
        }

        /// Opens a stream with `headers` (as spdystream's CreateStream).
        pub async fn open(&mut self, headers: &[(&str, &str)]) -> u32 {
            let id = self.next_id;
            self.next_id += 2;
            let mut h = Headers::new();
            for (n, v) in headers {
                h.add(n, v);
            }
            self.send(Frame::SynStream {
                stream_id: id,
                associated_to: 0,
                priority: 0,
                flags: 0,
                headers: h,
            })
            .await;
            id
        }

        pub async fn data(&mut self, stream_id: u32, data: &[u8], fin: bool) {
            self.send(Frame::Data {
                stream_id,
                fin,
                data: Bytes::copy_from_slice(data),
            })
            .await;
        }

        /// The next frame; `None` at EOF. Fails the test after [`DEADLINE`].
        pub async fn recv(&mut self) -> Option<Frame> {
            tokio::time::timeout(DEADLINE, async {
                loop {
                    if let Some(f) = frame::decode(&mut self.buf, &mut self.rx).expect("decode") {
                        return Some(f);
                    }
                    if self.io.read_buf(&mut self.buf).await.expect("client read") == 0 {
                        return None;
                    }
                }
            })
            .await
            .expect("no frame before the deadline")
        }

        /// Collects DATA per stream until every stream in `until_fin` sent FIN,
        /// returning (stream, payload) in arrival order, merged per stream.
        pub async fn read_until_fins(&mut self, until_fin: &[u32]) -> Vec<(u32, Vec<u8>)> {
            let mut open: Vec<u32> = until_fin.to_vec();
            let mut out: Vec<(u32, Vec<u8>)> = Vec::new();
            while !open.is_empty() {
                match self.recv().await {
                    Some(Frame::Data {
                        stream_id,
                        fin,
                        data,
                    }) => {
                        match out.iter_mut().find(|(id, _)| *id == stream_id) {
                            Some((_, bytes)) => bytes.extend_from_slice(&data),
                            None => out.push((stream_id, data.to_vec())),
                        }
                        if fin {
                            open.retain(|id| *id != stream_id);
                        }
                    }
                    Some(_) => {}
                    None => panic!("EOF with streams {open:?} still open"),
                }
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::frame::{Frame, goaway, rst};
    use super::testing::Client;
    use super::*;

    fn serve_all() -> (
        Connection,
        tokio::sync::mpsc::Receiver<Stream>,
        Client<tokio::io::DuplexStream>,
    ) {
        let (server, client) = tokio::io::duplex(64 * 1024);
        let (conn, incoming) = Connection::serve(server, Box::new(|_| Ok(())));
        (conn, incoming, Client::new(client))
    }

    #[tokio::test]
    async fn streams_are_replied_and_carry_headers_and_data_both_ways() {
        let (_conn, mut incoming, mut client) = serve_all();
        let error = client.open(&[("streamType", "error")]).await;
        let stdin = client.open(&[("streamType", "stdin")]).await;
        let stdout = client
            .open(&[("streamType", "stdout"), ("X-Extra", "a")])
            .await;
        let mut streams = Vec::new();
        for _ in 0..3 {
            streams.push(incoming.recv().await.expect("stream"));
        }
        // Headers of three blocks decoded through the one shared zlib context.
        let types: Vec<_> = streams
            .iter()
            .map(|s| s.headers().get("streamtype"))
            .collect();
        assert_eq!(types, [Some("error"), Some("stdin"), Some("stdout")]);
        assert_eq!(streams[2].headers().get("x-extra"), Some("a"));
        // One SYN_REPLY per stream, in order, decoded through our shared context.
        for id in [error, stdin, stdout] {
            match client.recv().await {
                Some(Frame::SynReply {
                    stream_id,
                    fin,
                    headers,
                }) => {
                    assert_eq!((stream_id, fin), (id, false));
                    assert!(headers.is_empty());
                }
                other => panic!("expected SYN_REPLY for {id}, got {other:?}"),
            }
        }
        let mut streams = streams.into_iter().map(Stream::split);
        let (_, error_w) = streams.next().expect("error");
        let (mut stdin_r, _) = streams.next().expect("stdin");
        let (_, stdout_w) = streams.next().expect("stdout");

        client.data(stdin, b"hello ", false).await;
        client.data(stdin, b"world", true).await;
        assert_eq!(stdin_r.read().await.as_deref(), Some(&b"hello "[..]));
        assert_eq!(stdin_r.read().await.as_deref(), Some(&b"world"[..]));
        assert_eq!(stdin_r.read().await, None, "FIN ends the stream");

        stdout_w
            .write(Bytes::from_static(b"out"))
            .await
            .expect("write");
        stdout_w.close();
        error_w.close();
        let got = client.read_until_fins(&[stdout, error]).await;
        assert_eq!(got, [(stdout, b"out".to_vec()), (error, Vec::new())]);
        assert!(matches!(
            stdout_w.write(Bytes::from_static(b"late")).await,
            Err(StreamError::Closed { .. })
        ));
    }

    #[tokio::test]
    async fn pings_are_echoed_and_unknown_streams_reset() {
        let (_conn, _incoming, mut client) = serve_all();
        client.send(Frame::Ping { id: 1 }).await;
        assert_eq!(client.recv().await, Some(Frame::Ping { id: 1 }));
        client.data(41, b"x", false).await;
        assert_eq!(
            client.recv().await,
            Some(Frame::RstStream {
                stream_id: 41,
                status: rst::INVALID_STREAM
            })
        );
        // SETTINGS and WINDOW_UPDATE are read and ignored; the session goes on.
        client
            .send(Frame::Settings {
                entries: vec![(0, 7, 1 << 16)],
            })
            .await;
        client
            .send(Frame::WindowUpdate {
                stream_id: 1,
                delta: 10,
            })
            .await;
        client.send(Frame::Ping { id: 3 }).await;
        assert_eq!(client.recv().await, Some(Frame::Ping { id: 3 }));
    }

    #[tokio::test]
    async fn a_large_write_needs_no_window_update() {
        let (_conn, mut incoming, mut client) = serve_all();
        let id = client.open(&[("streamType", "stdout")]).await;
        let (_, writer) = incoming.recv().await.expect("stream").split();
        // 4 MiB: far past SPDY's 64 KiB initial window, and past our send budget.
        let payload = Bytes::from(vec![7u8; 4 << 20]);
        let write = tokio::spawn({
            let payload = payload.clone();
            async move {
                writer.write(payload).await.expect("write");
                writer.close();
            }
        });
        let got = client.read_until_fins(&[id]).await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1.len(), payload.len());
        write.await.expect("writer task");
    }

    #[tokio::test]
    async fn rejected_and_out_of_order_streams_are_reset() {
        let (server, client) = tokio::io::duplex(64 * 1024);
        let (_conn, mut incoming) = Connection::serve(
            server,
            Box::new(|h: &Headers| match h.get("port") {
                Some(_) => Ok(()),
                None => Err("port header is required".into()),
            }),
        );
        let mut client = Client::new(client);
        let bad = client.open(&[("streamType", "data")]).await;
        assert_eq!(
            client.recv().await,
            Some(Frame::RstStream {
                stream_id: bad,
                status: rst::CANCEL
            })
        );
        let good = client.open(&[("streamType", "data"), ("port", "80")]).await;
        assert!(
            matches!(client.recv().await, Some(Frame::SynReply { stream_id, .. }) if stream_id == good)
        );
        assert_eq!(incoming.recv().await.expect("stream").id(), good);
        // Reusing a lower id is a protocol error for that stream.
        client
            .send(Frame::SynStream {
                stream_id: 1,
                associated_to: 0,
                priority: 0,
                flags: 0,
                headers: Headers::new().with("port", "80"),
            })
            .await;
        assert_eq!(
            client.recv().await,
            Some(Frame::RstStream {
                stream_id: 1,
                status: rst::PROTOCOL_ERROR
            })
        );
    }

    #[tokio::test]
    async fn close_sends_goaway_after_pending_data_then_ends_at_client_eof() {
        let (conn, mut incoming, mut client) = serve_all();
        let id = client.open(&[("streamType", "stdout")]).await;
        let (_, writer) = incoming.recv().await.expect("stream").split();
        assert!(matches!(client.recv().await, Some(Frame::SynReply { .. })));
        writer
            .write(Bytes::from_static(b"last words"))
            .await
            .expect("write");
        writer.close();
        conn.close().await;
        assert!(conn.is_closed());
        assert_eq!(
            client.recv().await,
            Some(Frame::Data {
                stream_id: id,
                fin: false,
                data: Bytes::from_static(b"last words")
            })
        );
        assert!(matches!(
            client.recv().await,
            Some(Frame::Data { fin: true, .. })
        ));
        assert_eq!(
            client.recv().await,
            Some(Frame::GoAway {
                last_good_stream_id: id,
                status: goaway::OK
            })
        );
        assert_eq!(client.recv().await, None, "our side is shut down");
        drop(client);
        tokio::time::timeout(testing::DEADLINE, conn.ended())
            .await
            .expect("the connection ends when the client closes");
        assert!(incoming.recv().await.is_none());
    }

    #[tokio::test]
    async fn client_reset_and_eof_end_streams_and_refuse_writes() {
        let (conn, mut incoming, mut client) = serve_all();
        let a = client.open(&[("streamType", "data")]).await;
        let _b = client.open(&[("streamType", "data")]).await;
        let (mut a_r, a_w) = incoming.recv().await.expect("a").split();
        let (mut b_r, b_w) = incoming.recv().await.expect("b").split();
        client
            .send(Frame::RstStream {
                stream_id: a,
                status: rst::CANCEL,
            })
            .await;
        assert_eq!(a_r.read().await, None);
        assert!(matches!(
            a_w.write(Bytes::from_static(b"x")).await,
            Err(StreamError::Reset { .. })
        ));
        drop(client);
        assert_eq!(b_r.read().await, None, "the client's EOF ends every stream");
        tokio::time::timeout(testing::DEADLINE, conn.ended())
            .await
            .expect("ended");
        assert!(
            b_w.write(Bytes::from_static(b"x")).await.is_err(),
            "writes fail once the client is gone"
        );
    }
}
