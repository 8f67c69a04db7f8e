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
use std::path::{Path, PathBuf};
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

/// The logger's arguments: containerd's shim passes the `binary://` URI's query
/// as `key value` pairs, in no particular order.
pub fn logger_args(args: &[String]) -> Result<(PathBuf, Rotation), String> {
    if !args.len().is_multiple_of(2) {
        return Err("arguments come in key value pairs".into());
    }
    let mut path = None;
    let mut rotation = Rotation::default();
    for pair in args.chunks(2) {
        let number = |v: &str| v.parse::<u64>().map_err(|e| format!("{}: {e}", pair[0]));
        match pair[0].as_str() {
            "log" => path = Some(PathBuf::from(&pair[1])),
            "max-size" => rotation.max_bytes = number(&pair[1])?.max(1024),
            "max-files" => rotation.max_files = number(&pair[1])?.clamp(1, 100) as u32,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok((path.ok_or("missing `log PATH`")?, rotation))
}

/// The `binary://` log URI that makes containerd's shim run `logger` for a task.
pub fn log_uri(logger: &Path, file: &Path, rotation: Rotation) -> String {
    format!(
        "binary://{}?log={}&max-size={}&max-files={}",
        logger.display(),
        file.display(),
        rotation.max_bytes,
        rotation.max_files
    )
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

/// The open log file and its rotation.
struct Sink {
    path: PathBuf,
    file: File,
    size: u64,
    rotation: Rotation,
    /// The last write failed (reported once until one succeeds).
    failing: bool,
}

impl Sink {
    fn open(path: &Path, rotation: Rotation) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path: path.to_owned(),
            file,
            size,
            rotation,
            failing: false,
        })
    }

    fn write(&mut self, record: &[u8]) -> io::Result<()> {
        if self.size > 0 && self.size + record.len() as u64 > self.rotation.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(record)?;
        self.size += record.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let keep = self.rotation.max_files.saturating_sub(1);
        if keep == 0 {
            self.file.set_len(0)?;
            self.size = 0;
            return Ok(());
        }
        let _ = std::fs::remove_file(rotated(&self.path, keep));
        for n in (1..keep).rev() {
            let from = rotated(&self.path, n);
            if from.exists() {
                std::fs::rename(&from, rotated(&self.path, n + 1))?;
            }
        }
        std::fs::rename(&self.path, rotated(&self.path, 1))?;
        *self = Self::open(&self.path, self.rotation)?;
        Ok(())
    }
}

/// Runs the logger side of containerd's binary log protocol, writing to `path`
/// with `rotation`. Returns when both of the container's streams have closed.
pub fn run_logger(path: &Path, rotation: Rotation) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let sink = Arc::new(Mutex::new(Sink::open(path, rotation)?));
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
            let sink = sink.clone();
            std::thread::spawn(move || copy_records(pipe, stream, &sink))
        })
        .collect();
    for t in threads {
        t.join()
            .map_err(|_| io::Error::other("logger thread panicked"))??;
    }
    Ok(())
}

fn copy_records(pipe: File, stream: Stream, sink: &Mutex<Sink>) -> io::Result<()> {
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
        // A write error (a full disk, a failed rotation) drops this record but never
        // stops the draining: a container whose pipe is not read blocks on output.
        let mut sink = sink.lock().unwrap_or_else(|p| p.into_inner());
        match sink.write(&record) {
            Ok(()) => sink.failing = false,
            Err(e) => {
                if !sink.failing {
                    eprintln!(
                        "orca-logger: {}: {e}; dropping records until writes succeed",
                        sink.path.display()
                    );
                }
                if let Ok(reopened) = Sink::open(&sink.path, sink.rotation) {
                    *sink = reopened;
                }
                sink.failing = true;
            }
        }
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
    let mut lines: Vec<(Stream, Vec<u8>)> = Vec::new();
    let mut records = Vec::new();
    for file in files_of(path) {
        match File::open(&file) {
            Ok(f) => records.extend(BufReader::new(f).split(b'\n')),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    for raw in records {
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
    fn logger_args_come_in_any_order() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (path, rot) = logger_args(&args(&[
            "max-files",
            "3",
            "log",
            "/x/0.log",
            "max-size",
            "4096",
        ]))
        .unwrap();
        assert_eq!(path, Path::new("/x/0.log"));
        assert_eq!(
            rot,
            Rotation {
                max_bytes: 4096,
                max_files: 3
            }
        );
        assert_eq!(
            logger_args(&args(&["log", "/y"])).unwrap().1,
            Rotation::default()
        );
        assert!(logger_args(&args(&["log"])).is_err());
        assert!(logger_args(&args(&["color", "red"])).is_err());
        assert!(logger_args(&args(&[])).is_err());
        let uri = log_uri(
            Path::new("/bin/orca-logger"),
            Path::new("/p/0.log"),
            Rotation {
                max_bytes: 10,
                max_files: 2,
            },
        );
        assert_eq!(
            uri,
            "binary:///bin/orca-logger?log=/p/0.log&max-size=10&max-files=2"
        );
    }

    #[test]
    fn rotation_keeps_max_files_and_the_reader_reads_them_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut sink = Sink::open(
            &path,
            Rotation {
                max_bytes: 200,
                max_files: 3,
            },
        )
        .unwrap();
        let t = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        for i in 0..20 {
            sink.write(&format_record(
                t,
                Stream::Stdout,
                false,
                format!("line {i:02}").as_bytes(),
            ))
            .unwrap();
        }
        let files = files_of(&path);
        assert_eq!(files.len(), 3, "{files:?}");
        assert!(!rotated(&path, 3).exists(), "at most max_files files");
        assert!(
            files
                .iter()
                .all(|f| std::fs::metadata(f).unwrap().len() <= 200)
        );
        let lines = read(&path, &ReadOptions::default()).unwrap();
        let text: Vec<String> = lines
            .iter()
            .map(|(_, l)| String::from_utf8_lossy(l).into_owned())
            .collect();
        assert_eq!(text.last().unwrap(), "line 19\n");
        let numbers: Vec<u32> = text.iter().map(|l| l[5..7].parse().unwrap()).collect();
        assert!(
            numbers.windows(2).all(|w| w[1] == w[0] + 1),
            "oldest first, no gaps: {numbers:?}"
        );
        assert!(numbers[0] > 0, "the oldest lines were rotated away");
    }

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
