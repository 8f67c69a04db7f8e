//! SPDY/3 header blocks: the name/value list and its zlib compression.
//!
//! A header block is a 32-bit count, then per pair a 32-bit length and the
//! (lowercase) name, a 32-bit length and the value; several values of one name
//! are joined by NUL. Blocks are compressed with zlib, starting from the SPDY/3
//! [`DICTIONARY`], one context per direction for
//! the whole connection: every block ends with a sync flush and the next one
//! continues the same stream, so a block can only be decoded after all the
//! ones before it.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};

use super::dictionary::DICTIONARY;
use super::frame::FrameError;

/// Most bytes a decompressed header block may take; a bound against blocks
/// that inflate without end. Kubernetes' blocks are a few dozen bytes.
pub const MAX_HEADER_BLOCK: usize = 256 * 1024;

/// Most name/value pairs in one block.
const MAX_PAIRS: usize = 1024;

/// The headers of a stream, in order, names lowercase.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    /// No headers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a value (the name is lowercased, as SPDY/3 requires).
    pub fn add(&mut self, name: &str, value: &str) {
        self.0.push((name.to_ascii_lowercase(), value.to_owned()));
    }

    /// Adds a value, builder style.
    pub fn with(mut self, name: &str, value: &str) -> Self {
        self.add(name, value);
        self
    }

    /// The first value of `name` (compared without case, as Go's
    /// `http.Header.Get` does).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every pair, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// Whether there are no headers.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The uncompressed block: values of one name joined by NUL, names in order
    /// of first appearance.
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut names: Vec<(&str, Vec<&str>)> = Vec::new();
        for (name, value) in &self.0 {
            match names.iter_mut().find(|(n, _)| n == name) {
                Some((_, values)) => values.push(value),
                None => names.push((name, vec![value])),
            }
        }
        let mut out = Vec::new();
        put_len(&mut out, names.len());
        for (name, values) in names {
            put_len(&mut out, name.len());
            out.extend_from_slice(name.as_bytes());
            let value = values.join("\0");
            put_len(&mut out, value.len());
            out.extend_from_slice(value.as_bytes());
        }
        out
    }

    /// Parses an uncompressed block.
    pub(super) fn decode(block: &[u8]) -> Result<Self, FrameError> {
        let mut rest = block;
        let count = take_len(&mut rest)?;
        if count > MAX_PAIRS {
            return Err(FrameError::HeaderBlock("too many headers"));
        }
        let mut headers = Vec::with_capacity(count);
        for _ in 0..count {
            let name = take_str(&mut rest)?;
            if name.is_empty() {
                return Err(FrameError::HeaderBlock("empty header name"));
            }
            let value = take_str(&mut rest)?;
            let name = name.to_ascii_lowercase();
            for v in value.split('\0') {
                headers.push((name.clone(), v.to_owned()));
            }
        }
        if !rest.is_empty() {
            return Err(FrameError::HeaderBlock("bytes after the last header"));
        }
        Ok(Self(headers))
    }
}

fn put_len(out: &mut Vec<u8>, len: usize) {
    // Lengths here are of names and values we made; a u32 holds them.
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
}

fn take_len(rest: &mut &[u8]) -> Result<usize, FrameError> {
    let Some((head, tail)) = rest.split_first_chunk::<4>() else {
        return Err(FrameError::HeaderBlock("truncated length"));
    };
    *rest = tail;
    usize::try_from(u32::from_be_bytes(*head)).map_err(|_| FrameError::HeaderBlock("length"))
}

fn take_str(rest: &mut &[u8]) -> Result<String, FrameError> {
    let len = take_len(rest)?;
    if len > rest.len() {
        return Err(FrameError::HeaderBlock("truncated name or value"));
    }
    let (s, tail) = rest.split_at(len);
    *rest = tail;
    String::from_utf8(s.to_vec()).map_err(|_| FrameError::HeaderBlock("name or value not UTF-8"))
}

/// The compressing side: one per connection, for the blocks we send.
pub struct HeaderCompressor {
    z: Compress,
    primed: bool,
}

impl std::fmt::Debug for HeaderCompressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderCompressor").finish_non_exhaustive()
    }
}

impl Default for HeaderCompressor {
    fn default() -> Self {
        Self::new()
    }
}

impl HeaderCompressor {
    /// A fresh context (zlib header with the dictionary's id comes first).
    pub fn new() -> Self {
        // Go's spdystream compresses at BestCompression; any level inflates the same.
        Self {
            z: Compress::new(Compression::best(), true),
            primed: false,
        }
    }

    /// Compresses `headers` as the next block of this context.
    pub fn compress(&mut self, headers: &Headers) -> Result<Vec<u8>, FrameError> {
        if !self.primed {
            self.z
                .set_dictionary(DICTIONARY)
                .map_err(|e| FrameError::Compression(e.to_string()))?;
            self.primed = true;
        }
        let block = headers.encode();
        let mut input: &[u8] = &block;
        let mut out = Vec::with_capacity(block.len() / 2 + 64);
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(256);
            }
            let (before, len) = (self.z.total_in(), out.len());
            self.z
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .map_err(|e| FrameError::Compression(e.to_string()))?;
            let used = usize::try_from(self.z.total_in() - before).unwrap_or(input.len());
            input = &input[used.min(input.len())..];
            // Done once all input is in and the flush left room to spare (zlib
            // fills the buffer completely while it has more to give) or gave
            // nothing more.
            if input.is_empty() && (out.len() < out.capacity() || out.len() == len) {
                return Ok(out);
            }
        }
    }
}

/// The inflating side: one per connection, for the blocks we receive.
pub struct HeaderDecompressor {
    z: Decompress,
}

impl std::fmt::Debug for HeaderDecompressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderDecompressor").finish_non_exhaustive()
    }
}

impl Default for HeaderDecompressor {
    fn default() -> Self {
        Self::new()
    }
}

impl HeaderDecompressor {
    /// A fresh context; the first block starts with the zlib header that asks
    /// for the dictionary.
    pub fn new() -> Self {
        Self {
            z: Decompress::new(true),
        }
    }

    /// Inflates the next compressed block of this context.
    pub fn decompress(&mut self, compressed: &[u8]) -> Result<Headers, FrameError> {
        let mut input = compressed;
        let mut out = Vec::with_capacity(compressed.len() * 4 + 64);
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(out.capacity().max(256));
            }
            let (before_in, before_out) = (self.z.total_in(), self.z.total_out());
            let result = self
                .z
                .decompress_vec(input, &mut out, FlushDecompress::Sync);
            let used = usize::try_from(self.z.total_in() - before_in).unwrap_or(input.len());
            let made = self.z.total_out() - before_out;
            input = &input[used.min(input.len())..];
            match result {
                Ok(flate2::Status::StreamEnd) => {
                    return Err(FrameError::Compression("header stream ended".into()));
                }
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.z
                        .set_dictionary(DICTIONARY)
                        .map_err(|e| FrameError::Compression(e.to_string()))?;
                    continue;
                }
                Err(e) => return Err(FrameError::Compression(e.to_string())),
            }
            if out.len() > MAX_HEADER_BLOCK {
                return Err(FrameError::HeaderBlock("header block too large"));
            }
            if input.is_empty() && (out.len() < out.capacity() || made == 0) {
                break;
            }
            if used == 0 && made == 0 {
                return Err(FrameError::Compression(
                    "no progress inflating headers".into(),
                ));
            }
        }
        Headers::decode(&out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_round_trip_through_one_shared_context() {
        let mut tx = HeaderCompressor::new();
        let mut rx = HeaderDecompressor::new();
        let blocks = [
            Headers::new().with("streamType", "error"),
            Headers::new().with("streamtype", "stdin"),
            Headers::new(),
            Headers::new()
                .with("streamType", "data")
                .with("port", "8080")
                .with("requestID", "0")
                .with("X-Multi", "a")
                .with("x-multi", "b"),
        ];
        let mut sizes = Vec::new();
        for headers in &blocks {
            let wire = tx.compress(headers).expect("compress");
            sizes.push(wire.len());
            let back = rx.decompress(&wire).expect("decompress");
            assert_eq!(&back, headers);
        }
        // The context is shared: the second "streamtype" block costs less than
        // the first, which carried the zlib header and the first use of the name.
        assert!(sizes[1] < sizes[0], "sizes {sizes:?}");
    }

    #[test]
    fn a_block_out_of_order_does_not_decode() {
        let mut tx = HeaderCompressor::new();
        let _first = tx
            .compress(&Headers::new().with("a", "b"))
            .expect("compress");
        let second = tx
            .compress(&Headers::new().with("a", "b"))
            .expect("compress");
        // A fresh context never saw the zlib header: the second block alone is garbage.
        assert!(HeaderDecompressor::new().decompress(&second).is_err());
    }

    #[test]
    fn names_are_lowercase_on_the_wire_and_get_ignores_case() {
        let h = Headers::new().with("StreamType", "error");
        let block = h.encode();
        assert!(block.windows(10).any(|w| w == b"streamtype"));
        assert_eq!(h.get("STREAMTYPE"), Some("error"));
    }

    #[test]
    fn malformed_blocks_are_errors() {
        assert!(Headers::decode(&[0, 0, 0, 1, 0, 0, 0, 9, b'a']).is_err());
        assert!(Headers::decode(&[0, 0, 0, 0, 7]).is_err());
    }
}
