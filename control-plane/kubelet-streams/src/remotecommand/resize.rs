//! Terminal resizes: a stream of JSON objects `{"Width":80,"Height":24}`
//! (client-go's `TerminalSize`, written by a `json.Encoder`), split across
//! frames or messages however the transport likes.

use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::mpsc;
use tracing::debug;

use super::TerminalSize;

/// One object; Go decodes field names without case, missing ones as zero.
#[derive(Debug, Deserialize)]
struct Size {
    #[serde(rename = "Width", alias = "width", default)]
    width: u16,
    #[serde(rename = "Height", alias = "height", default)]
    height: u16,
}

/// Why the resize stream ends early.
#[derive(Debug, thiserror::Error)]
pub enum ResizeError {
    /// Bytes that are not a JSON terminal size object (serde_json's message).
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

/// Accumulates bytes and yields every complete object.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    /// Adds `data`; returns the sizes it completed, or the JSON error that
    /// ends the resize stream (as the kubelet stops reading at the first).
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<TerminalSize>, ResizeError> {
        self.buf.extend_from_slice(data);
        let mut sizes = Vec::new();
        let mut objects = serde_json::Deserializer::from_slice(&self.buf).into_iter::<Size>();
        let mut consumed = 0;
        while let Some(object) = objects.next() {
            match object {
                Ok(size) => {
                    sizes.push(TerminalSize {
                        width: size.width,
                        height: size.height,
                    });
                }
                Err(e) if e.is_eof() => break,
                Err(e) => return Err(e.into()),
            }
            consumed = objects.byte_offset();
        }
        self.buf.drain(..consumed);
        Ok(sizes)
    }
}

/// Decodes `input` into `out` until either ends.
pub async fn pump(mut input: mpsc::Receiver<Bytes>, out: mpsc::Sender<TerminalSize>) {
    let mut decoder = Decoder::default();
    while let Some(chunk) = input.recv().await {
        match decoder.push(&chunk) {
            Ok(sizes) => {
                for size in sizes {
                    if out.send(size).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                debug!(error = %e, "invalid resize event; no more resizes");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_split_anywhere_decode_in_order() {
        let mut d = Decoder::default();
        assert_eq!(d.push(br#"{"Width":80,"#).expect("partial"), []);
        assert_eq!(
            d.push(b"\"Height\":24}\n{\"width\":1").expect("one"),
            [TerminalSize {
                width: 80,
                height: 24
            }]
        );
        assert_eq!(
            d.push(b"00,\"height\":50}").expect("two"),
            [TerminalSize {
                width: 100,
                height: 50
            }]
        );
        assert!(d.push(b"not json").is_err());
    }
}
