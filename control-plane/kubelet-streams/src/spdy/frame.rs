//! SPDY/3 frames on the wire.
//!
//! Control frames: `1 | version(15) | type(16) | flags(8) | length(24) | data`;
//! data frames: `0 | stream id(31) | flags(8) | length(24) | data`. All
//! integers big-endian. Header blocks (SYN_STREAM, SYN_REPLY, HEADERS) go
//! through the connection's [`HeaderCompressor`] / [`HeaderDecompressor`].

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};

use super::headers::{HeaderCompressor, HeaderDecompressor, Headers};

/// The protocol version this codec speaks.
pub const VERSION: u16 = 3;
/// FLAG_FIN: the sender is done with the stream (DATA, SYN_STREAM, SYN_REPLY, HEADERS).
pub const FLAG_FIN: u8 = 0x01;
/// FLAG_UNIDIRECTIONAL on SYN_STREAM: the receiver may not send on it.
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;
/// Largest payload a frame can carry (24-bit length).
pub const MAX_PAYLOAD: usize = (1 << 24) - 1;

const TYPE_SYN_STREAM: u16 = 1;
const TYPE_SYN_REPLY: u16 = 2;
const TYPE_RST_STREAM: u16 = 3;
const TYPE_SETTINGS: u16 = 4;
const TYPE_PING: u16 = 6;
const TYPE_GOAWAY: u16 = 7;
const TYPE_HEADERS: u16 = 8;
const TYPE_WINDOW_UPDATE: u16 = 9;

/// RST_STREAM status codes (SPDY/3 section 2.4.2).
pub mod rst {
    /// Generic error.
    pub const PROTOCOL_ERROR: u32 = 1;
    /// A frame for a stream that is not active.
    pub const INVALID_STREAM: u32 = 2;
    /// The stream was refused before any processing.
    pub const REFUSED_STREAM: u32 = 3;
    /// The stream is no longer needed.
    pub const CANCEL: u32 = 5;
    /// A frame after the sender half-closed the stream.
    pub const STREAM_ALREADY_CLOSED: u32 = 9;
}

/// GOAWAY status codes.
pub mod goaway {
    /// Normal session teardown.
    pub const OK: u32 = 0;
    /// The peer broke the protocol.
    pub const PROTOCOL_ERROR: u32 = 1;
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Opens a stream.
    SynStream {
        /// Stream id (odd from clients).
        stream_id: u32,
        /// Stream it belongs to (server push); 0 when none.
        associated_to: u32,
        /// 0 (highest) to 7.
        priority: u8,
        /// [`FLAG_FIN`] and/or [`FLAG_UNIDIRECTIONAL`].
        flags: u8,
        /// The stream's headers.
        headers: Headers,
    },
    /// Accepts a stream.
    SynReply {
        /// Stream id.
        stream_id: u32,
        /// The replier is done sending on it.
        fin: bool,
        /// Reply headers.
        headers: Headers,
    },
    /// Aborts a stream.
    RstStream {
        /// Stream id.
        stream_id: u32,
        /// One of [`rst`].
        status: u32,
    },
    /// Session settings (ignored by Kubernetes' peers and by us).
    Settings {
        /// `(flags, id, value)` entries.
        entries: Vec<(u8, u32, u32)>,
    },
    /// Liveness check: the receiver echoes the peer's.
    Ping {
        /// Odd from clients, even from servers.
        id: u32,
    },
    /// The sender accepts no new streams.
    GoAway {
        /// Last stream the sender accepted.
        last_good_stream_id: u32,
        /// One of [`goaway`].
        status: u32,
    },
    /// More headers for a stream.
    Headers {
        /// Stream id.
        stream_id: u32,
        /// The sender is done with the stream.
        fin: bool,
        /// The headers.
        headers: Headers,
    },
    /// Flow-control credit.
    WindowUpdate {
        /// Stream id.
        stream_id: u32,
        /// Bytes granted.
        delta: u32,
    },
    /// Stream payload.
    Data {
        /// Stream id.
        stream_id: u32,
        /// Last frame of the sender on this stream.
        fin: bool,
        /// Payload.
        data: Bytes,
    },
    /// A control frame type this codec does not know (skipped).
    Unknown {
        /// The type field.
        frame_type: u16,
    },
}

/// Errors of the frame codec.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// A control frame of another SPDY version.
    #[error("unsupported SPDY version {0}")]
    Version(u16),
    /// A control frame shorter than its type requires.
    #[error("malformed {0} frame")]
    Malformed(&'static str),
    /// A header block that does not parse.
    #[error("malformed header block: {0}")]
    HeaderBlock(&'static str),
    /// zlib failed on a header block.
    #[error("header compression: {0}")]
    Compression(String),
    /// A payload over the 24-bit limit.
    #[error("frame payload of {0} bytes is too large")]
    TooLarge(usize),
}

/// Appends `frame` to `out`, compressing its headers with `compressor`.
pub fn encode(
    frame: &Frame,
    compressor: &mut HeaderCompressor,
    out: &mut BytesMut,
) -> Result<(), FrameError> {
    match frame {
        Frame::Data {
            stream_id,
            fin,
            data,
        } => {
            let len = payload_len(data.len())?;
            out.put_u32(stream_id & 0x7fff_ffff);
            out.put_u32(u32::from(flag(*fin)) << 24 | len);
            out.extend_from_slice(data);
        }
        Frame::SynStream {
            stream_id,
            associated_to,
            priority,
            flags,
            headers,
        } => {
            let block = compressor.compress(headers)?;
            control(out, TYPE_SYN_STREAM, *flags, 10 + block.len())?;
            out.put_u32(stream_id & 0x7fff_ffff);
            out.put_u32(associated_to & 0x7fff_ffff);
            out.put_u8((priority & 0x07) << 5);
            out.put_u8(0); // credential slot
            out.extend_from_slice(&block);
        }
        Frame::SynReply {
            stream_id,
            fin,
            headers,
        } => {
            let block = compressor.compress(headers)?;
            control(out, TYPE_SYN_REPLY, flag(*fin), 4 + block.len())?;
            out.put_u32(stream_id & 0x7fff_ffff);
            out.extend_from_slice(&block);
        }
        Frame::Headers {
            stream_id,
            fin,
            headers,
        } => {
            let block = compressor.compress(headers)?;
            control(out, TYPE_HEADERS, flag(*fin), 4 + block.len())?;
            out.put_u32(stream_id & 0x7fff_ffff);
            out.extend_from_slice(&block);
        }
        Frame::RstStream { stream_id, status } => {
            control(out, TYPE_RST_STREAM, 0, 8)?;
            out.put_u32(stream_id & 0x7fff_ffff);
            out.put_u32(*status);
        }
        Frame::Settings { entries } => {
            control(out, TYPE_SETTINGS, 0, 4 + 8 * entries.len())?;
            out.put_u32(
                u32::try_from(entries.len()).map_err(|_| FrameError::TooLarge(entries.len()))?,
            );
            for (flags, id, value) in entries {
                out.put_u32(u32::from(*flags) << 24 | (id & 0x00ff_ffff));
                out.put_u32(*value);
            }
        }
        Frame::Ping { id } => {
            control(out, TYPE_PING, 0, 4)?;
            out.put_u32(*id);
        }
        Frame::GoAway {
            last_good_stream_id,
            status,
        } => {
            control(out, TYPE_GOAWAY, 0, 8)?;
            out.put_u32(last_good_stream_id & 0x7fff_ffff);
            out.put_u32(*status);
        }
        Frame::WindowUpdate { stream_id, delta } => {
            control(out, TYPE_WINDOW_UPDATE, 0, 8)?;
            out.put_u32(stream_id & 0x7fff_ffff);
            out.put_u32(delta & 0x7fff_ffff);
        }
        Frame::Unknown { frame_type } => {
            control(out, *frame_type, 0, 0)?;
        }
    }
    Ok(())
}

fn flag(set: bool) -> u8 {
    if set { FLAG_FIN } else { 0 }
}

fn payload_len(len: usize) -> Result<u32, FrameError> {
    if len > MAX_PAYLOAD {
        return Err(FrameError::TooLarge(len));
    }
    u32::try_from(len).map_err(|_| FrameError::TooLarge(len))
}

fn control(out: &mut BytesMut, frame_type: u16, flags: u8, len: usize) -> Result<(), FrameError> {
    let len = payload_len(len)?;
    out.put_u16(0x8000 | VERSION);
    out.put_u16(frame_type);
    out.put_u32(u32::from(flags) << 24 | len);
    Ok(())
}

/// Takes the next whole frame off the front of `buf`, inflating its headers
/// with `decompressor`; `None` while `buf` holds less than a frame.
pub fn decode(
    buf: &mut BytesMut,
    decompressor: &mut HeaderDecompressor,
) -> Result<Option<Frame>, FrameError> {
    if buf.len() < 8 {
        return Ok(None);
    }
    let first = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let flags = buf[4];
    let len = usize::from(buf[5]) << 16 | usize::from(buf[6]) << 8 | usize::from(buf[7]);
    if buf.len() < 8 + len {
        buf.reserve(8 + len - buf.len());
        return Ok(None);
    }
    buf.advance(8);
    let mut p = buf.split_to(len);
    if first & 0x8000_0000 == 0 {
        return Ok(Some(Frame::Data {
            stream_id: first & 0x7fff_ffff,
            fin: flags & FLAG_FIN != 0,
            data: p.freeze(),
        }));
    }
    let version = u16::try_from((first >> 16) & 0x7fff).unwrap_or(0);
    let frame_type = u16::try_from(first & 0xffff).unwrap_or(0);
    if version != VERSION {
        return Err(FrameError::Version(version));
    }
    let fin = flags & FLAG_FIN != 0;
    let frame = match frame_type {
        TYPE_SYN_STREAM => {
            need(&p, 10, "SYN_STREAM")?;
            let stream_id = p.get_u32() & 0x7fff_ffff;
            let associated_to = p.get_u32() & 0x7fff_ffff;
            let priority = p.get_u8() >> 5;
            let _slot = p.get_u8();
            let headers = decompressor.decompress(&p)?;
            Frame::SynStream {
                stream_id,
                associated_to,
                priority,
                flags,
                headers,
            }
        }
        TYPE_SYN_REPLY => {
            need(&p, 4, "SYN_REPLY")?;
            let stream_id = p.get_u32() & 0x7fff_ffff;
            let headers = decompressor.decompress(&p)?;
            Frame::SynReply {
                stream_id,
                fin,
                headers,
            }
        }
        TYPE_HEADERS => {
            need(&p, 4, "HEADERS")?;
            let stream_id = p.get_u32() & 0x7fff_ffff;
            let headers = decompressor.decompress(&p)?;
            Frame::Headers {
                stream_id,
                fin,
                headers,
            }
        }
        TYPE_RST_STREAM => {
            need(&p, 8, "RST_STREAM")?;
            Frame::RstStream {
                stream_id: p.get_u32() & 0x7fff_ffff,
                status: p.get_u32(),
            }
        }
        TYPE_SETTINGS => {
            need(&p, 4, "SETTINGS")?;
            let count = usize::try_from(p.get_u32()).unwrap_or(usize::MAX);
            if p.len() / 8 < count {
                return Err(FrameError::Malformed("SETTINGS"));
            }
            let entries = (0..count)
                .map(|_| {
                    let id = p.get_u32();
                    let flags = u8::try_from(id >> 24).unwrap_or(0);
                    (flags, id & 0x00ff_ffff, p.get_u32())
                })
                .collect();
            Frame::Settings { entries }
        }
        TYPE_PING => {
            need(&p, 4, "PING")?;
            Frame::Ping { id: p.get_u32() }
        }
        TYPE_GOAWAY => {
            need(&p, 8, "GOAWAY")?;
            Frame::GoAway {
                last_good_stream_id: p.get_u32() & 0x7fff_ffff,
                status: p.get_u32(),
            }
        }
        TYPE_WINDOW_UPDATE => {
            need(&p, 8, "WINDOW_UPDATE")?;
            Frame::WindowUpdate {
                stream_id: p.get_u32() & 0x7fff_ffff,
                delta: p.get_u32() & 0x7fff_ffff,
            }
        }
        other => Frame::Unknown { frame_type: other },
    };
    Ok(Some(frame))
}

fn need(p: &BytesMut, len: usize, what: &'static str) -> Result<(), FrameError> {
    if p.len() < len {
        return Err(FrameError::Malformed(what));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(frames: &[Frame]) -> Vec<Frame> {
        let (mut tx, mut rx) = (HeaderCompressor::new(), HeaderDecompressor::new());
        let mut wire = BytesMut::new();
        for f in frames {
            encode(f, &mut tx, &mut wire).expect("encode");
        }
        let mut out = Vec::new();
        // Feed the bytes one at a time: decode must wait for whole frames.
        let mut buf = BytesMut::new();
        for b in wire {
            buf.put_u8(b);
            while let Some(f) = decode(&mut buf, &mut rx).expect("decode") {
                out.push(f);
            }
        }
        assert!(buf.is_empty());
        out
    }

    #[test]
    fn every_frame_type_round_trips_with_headers_sharing_one_context() {
        let frames = vec![
            Frame::SynStream {
                stream_id: 1,
                associated_to: 0,
                priority: 0,
                flags: 0,
                headers: Headers::new().with("streamtype", "error"),
            },
            Frame::SynStream {
                stream_id: 3,
                associated_to: 0,
                priority: 7,
                flags: FLAG_FIN,
                headers: Headers::new().with("streamtype", "stdin"),
            },
            Frame::SynReply {
                stream_id: 1,
                fin: false,
                headers: Headers::new(),
            },
            Frame::Headers {
                stream_id: 3,
                fin: true,
                headers: Headers::new().with("x", "y"),
            },
            Frame::RstStream {
                stream_id: 5,
                status: rst::CANCEL,
            },
            Frame::Settings {
                entries: vec![(1, 7, 65536), (0, 4, 100)],
            },
            Frame::Ping { id: 1 },
            Frame::GoAway {
                last_good_stream_id: 3,
                status: goaway::OK,
            },
            Frame::WindowUpdate {
                stream_id: 1,
                delta: 4096,
            },
            Frame::Data {
                stream_id: 3,
                fin: true,
                data: Bytes::from_static(b"hello"),
            },
            Frame::Data {
                stream_id: 1,
                fin: false,
                data: Bytes::new(),
            },
        ];
        assert_eq!(round_trip(&frames), frames);
    }

    #[test]
    fn layout_matches_the_draft() {
        let mut out = BytesMut::new();
        let mut tx = HeaderCompressor::new();
        encode(&Frame::Ping { id: 7 }, &mut tx, &mut out).expect("encode");
        assert_eq!(&out[..], &[0x80, 0x03, 0x00, 0x06, 0, 0, 0, 4, 0, 0, 0, 7]);
        out.clear();
        let data = Frame::Data {
            stream_id: 5,
            fin: true,
            data: Bytes::from_static(b"ab"),
        };
        encode(&data, &mut tx, &mut out).expect("encode");
        assert_eq!(&out[..], &[0, 0, 0, 5, 0x01, 0, 0, 2, b'a', b'b']);
    }

    #[test]
    fn other_versions_and_short_frames_are_errors() {
        let mut rx = HeaderDecompressor::new();
        let mut v2 = BytesMut::from(&[0x80, 0x02, 0x00, 0x06, 0, 0, 0, 4, 0, 0, 0, 1][..]);
        assert!(matches!(
            decode(&mut v2, &mut rx),
            Err(FrameError::Version(2))
        ));
        let mut short = BytesMut::from(&[0x80, 0x03, 0x00, 0x03, 0, 0, 0, 4, 0, 0, 0, 1][..]);
        assert!(matches!(
            decode(&mut short, &mut rx),
            Err(FrameError::Malformed(_))
        ));
    }
}
