//! Container logs in the CRI format the kubelet uses, one file per container run:
//! `2016-10-06T00:17:09.669794202Z stdout F the line`.
//!
//! Writing: containerd's runc shim starts the `orca-logger` binary for every task
//! (a `binary://` log URI) with the container's stdout on fd 3, stderr on fd 4 and
//! a ready pipe on fd 5; the logger writes the files. Container output therefore
//! never flows through the agent, and a container keeps running and logging while
//! the agent restarts.
//!
//! Reading: the agent reads the files for `Logs` (tail, since, timestamps, limit).

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

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

/// Parses one CRI log line (without its newline); `None` when malformed.
pub fn parse_record(line: &[u8]) -> Option<Record> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let time = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let stream = match parts.next()? {
        b"stdout" => Stream::Stdout,
        b"stderr" => Stream::Stderr,
        _ => return None,
    };
    let partial = match parts.next()? {
        b"P" => true,
        b"F" => false,
        _ => return None,
    };
    Some(Record {
        time,
        stream,
        partial,
        content: parts.next().unwrap_or_default().to_vec(),
    })
}

/// Runs the logger side of containerd's binary log protocol, writing to `path`.
/// Returns when both of the container's streams have closed.
pub fn run_logger(path: &Path) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = Arc::new(Mutex::new(
        OpenOptions::new().create(true).append(true).open(path)?,
    ));
    // The shim passes the pipes as fds 3 and 4; /proc/self/fd reopens them without unsafe code.
    let stdout = File::open("/proc/self/fd/3")?;
    let stderr = File::open("/proc/self/fd/4")?;
    // Tell the shim we are ready: it waits for a byte (or EOF) on fd 5.
    OpenOptions::new()
        .write(true)
        .open("/proc/self/fd/5")?
        .write_all(b"r")?;
    let threads: Vec<_> = [(stdout, Stream::Stdout), (stderr, Stream::Stderr)]
        .into_iter()
        .map(|(pipe, stream)| {
            let file = file.clone();
            std::thread::spawn(move || copy_records(pipe, stream, &file))
        })
        .collect();
    for t in threads {
        t.join()
            .map_err(|_| io::Error::other("logger thread panicked"))??;
    }
    Ok(())
}

fn copy_records(pipe: File, stream: Stream, file: &Mutex<File>) -> io::Result<()> {
    let mut reader = BufReader::with_capacity(MAX_RECORD, pipe);
    let mut buf = Vec::with_capacity(MAX_RECORD);
    loop {
        buf.clear();
        let n = (&mut reader)
            .take(MAX_RECORD as u64)
            .read_until(b'\n', &mut buf)?;
        if n == 0 {
            return Ok(());
        }
        let complete = buf.last() == Some(&b'\n');
        if complete {
            buf.pop();
        }
        let record = format_record(
            jiff::Timestamp::now(),
            stream,
            !complete && n == MAX_RECORD,
            &buf,
        );
        file.lock()
            .unwrap_or_else(|p| p.into_inner())
            .write_all(&record)?;
    }
}

/// Which records to return, with `kubectl logs` semantics.
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    /// Only the last N lines.
    pub tail_lines: Option<usize>,
    /// Only records at or after this time.
    pub since: Option<jiff::Timestamp>,
    /// Prefix lines with their RFC 3339 timestamp.
    pub timestamps: bool,
    /// Stop after this many bytes.
    pub limit_bytes: Option<usize>,
}

/// Reads a CRI log file and returns the selected lines, each with its stream.
pub fn read(path: &Path, opts: &ReadOptions) -> io::Result<Vec<(Stream, Vec<u8>)>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut lines: Vec<(Stream, Vec<u8>)> = Vec::new();
    for raw in BufReader::new(file).split(b'\n') {
        let Some(rec) = parse_record(&raw?) else {
            continue;
        };
        if opts.since.is_some_and(|since| rec.time < since) {
            continue;
        }
        let mut out = Vec::new();
        if opts.timestamps {
            out.extend_from_slice(format!("{} ", rec.time).as_bytes());
        }
        out.extend_from_slice(&rec.content);
        if !rec.partial {
            out.push(b'\n');
        }
        lines.push((rec.stream, out));
    }
    if let Some(n) = opts.tail_lines {
        let skip = lines.len().saturating_sub(n);
        lines.drain(..skip);
    }
    if let Some(mut left) = opts.limit_bytes {
        lines.retain_mut(|(_, l)| {
            if left == 0 {
                return false;
            }
            l.truncate(left);
            left -= l.len();
            true
        });
    }
    Ok(lines)
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

    #[test]
    fn read_applies_tail_since_timestamps_and_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut f = File::create(&path).unwrap();
        for (i, s) in ["a", "b", "c"].iter().enumerate() {
            let t = jiff::Timestamp::from_second(1_800_000_000 + i as i64).unwrap();
            f.write_all(&format_record(t, Stream::Stdout, false, s.as_bytes()))
                .unwrap();
        }
        let all = read(&path, &ReadOptions::default()).unwrap();
        assert_eq!(
            all.iter().map(|(_, l)| l.as_slice()).collect::<Vec<_>>(),
            [b"a\n", b"b\n", b"c\n"]
        );
        let tail = read(
            &path,
            &ReadOptions {
                tail_lines: Some(1),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(tail[0].1, b"c\n");
        let since = jiff::Timestamp::from_second(1_800_000_001).unwrap();
        let recent = read(
            &path,
            &ReadOptions {
                since: Some(since),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(recent.len(), 2);
        let stamped = read(
            &path,
            &ReadOptions {
                timestamps: true,
                tail_lines: Some(1),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(stamped[0].1, b"2027-01-15T08:00:02Z c\n");
        let limited = read(
            &path,
            &ReadOptions {
                limit_bytes: Some(3),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            limited.iter().map(|(_, l)| l.clone()).collect::<Vec<_>>(),
            [b"a\n".to_vec(), b"b".to_vec()]
        );
        assert!(
            read(&dir.path().join("missing.log"), &ReadOptions::default())
                .unwrap()
                .is_empty()
        );
    }
}
