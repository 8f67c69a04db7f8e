//! Container logs in the CRI format the kubelet uses, one file per container run:
//! `2016-10-06T00:17:09.669794202Z stdout F the line`.
//!
//! Writing: containerd's runc shim starts the `orca-logger` binary for every task
//! (a `binary://` log URI) with the container's stdout on fd 3, stderr on fd 4 and
//! a ready pipe on fd 5; the logger writes the files. Container output therefore
//! never flows through the agent, and a container keeps running and logging while
//! the agent restarts.
//!
//! Reading: the agent reads the files for `Logs` (tail, since, timestamps, limit,
//! follow across rotations), streaming them in bounded chunks.
//!
//! - [`logger`]: the `orca-logger` side: records, rotation.
//! - [`reader`]: selecting and following records for `Logs` and `Attach`.

pub mod logger;
pub mod reader;

use std::path::{Path, PathBuf};

pub use logger::{log_uri, logger_args, run_logger};
pub use reader::{Follow, ReadOptions};

/// Lines longer than this are split into partial (`P`) records, as the kubelet does.
const MAX_RECORD: usize = 16 * 1024;

/// Which stream a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    fn tag(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }
}

/// One parsed CRI log record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// When the logger received it.
    pub time: jiff::Timestamp,
    /// Which stream.
    pub stream: Stream,
    /// Whether the line continues in the next record (`P`) or ends here (`F`).
    pub partial: bool,
    /// The content without the trailing newline.
    pub content: Vec<u8>,
}

/// Formats one record as a CRI log line, newline included.
pub fn format_record(
    time: jiff::Timestamp,
    stream: Stream,
    partial: bool,
    content: &[u8],
) -> Vec<u8> {
    let mut line = format!(
        "{} {} {} ",
        time,
        stream.tag(),
        if partial { "P" } else { "F" }
    )
    .into_bytes();
    line.extend_from_slice(content);
    line.push(b'\n');
    line
}

/// One CRI log record as it lies in the file, unparsed where it can stay so
/// (reading a log does not need the time unless it filters by it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawRecord<'a> {
    /// The RFC 3339 time, as written.
    pub time: &'a [u8],
    /// Which stream.
    pub stream: Stream,
    /// Whether the line continues in the next record.
    pub partial: bool,
    /// The content without the trailing newline.
    pub content: &'a [u8],
}

impl RawRecord<'_> {
    /// The record's time; `None` when it does not parse.
    pub fn timestamp(&self) -> Option<jiff::Timestamp> {
        std::str::from_utf8(self.time).ok()?.parse().ok()
    }
}

/// Splits one CRI log line (without its newline); `None` when malformed.
pub fn split_record(line: &[u8]) -> Option<RawRecord<'_>> {
    let at = memchr::memchr(b' ', line)?;
    let (time, rest) = (&line[..at], &line[at + 1..]);
    let stream = match rest.get(..7)? {
        b"stdout " => Stream::Stdout,
        b"stderr " => Stream::Stderr,
        _ => return None,
    };
    let partial = match rest.get(7..9).or_else(|| rest.get(7..8))? {
        b"P " | b"P" => true,
        b"F " | b"F" => false,
        _ => return None,
    };
    Some(RawRecord {
        time,
        stream,
        partial,
        content: rest.get(9..).unwrap_or_default(),
    })
}

/// Parses one CRI log line (without its newline); `None` when malformed.
pub fn parse_record(line: &[u8]) -> Option<Record> {
    let raw = split_record(line)?;
    Some(Record {
        time: raw.timestamp()?,
        stream: raw.stream,
        partial: raw.partial,
        content: raw.content.to_vec(),
    })
}

/// Size-based rotation of a container's log file, as the kubelet's
/// `containerLogMaxSize` / `containerLogMaxFiles`: when the file would pass
/// `max_bytes` it becomes `<file>.1` (older ones shift to `.2` …), and at most
/// `max_files` files (the current one included) are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// Largest size of one file, bytes.
    pub max_bytes: u64,
    /// Files kept, the current one included (at least 1).
    pub max_files: u32,
}

impl Default for Rotation {
    /// The kubelet's defaults: 10 MiB, 5 files.
    fn default() -> Self {
        Self {
            max_bytes: 10 * 1024 * 1024,
            max_files: 5,
        }
    }
}

/// The files of one container run, oldest first: `<file>.N` … `<file>.1`, `<file>`.
pub fn files_of(path: &Path) -> Vec<PathBuf> {
    let mut rotated: Vec<(u32, PathBuf)> = (1..=100)
        .map(|n| (n, rotated(path, n)))
        .take_while(|(_, p)| p.exists())
        .collect();
    rotated.reverse();
    rotated
        .into_iter()
        .map(|(_, p)| p)
        .chain([path.to_path_buf()])
        .collect()
}

fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let t: jiff::Timestamp = "2026-11-22T10:00:00.123456789Z".parse().unwrap();
        let line = format_record(t, Stream::Stderr, false, b"hello world");
        assert_eq!(
            line,
            b"2026-11-22T10:00:00.123456789Z stderr F hello world\n"
        );
        let rec = parse_record(&line[..line.len() - 1]).unwrap();
        assert_eq!(
            rec,
            Record {
                time: t,
                stream: Stream::Stderr,
                partial: false,
                content: b"hello world".to_vec()
            }
        );
        assert!(parse_record(b"garbage").is_none());
    }
}
