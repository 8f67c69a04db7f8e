//! The writing side: `orca-logger`, which containerd's runc shim starts for every
//! task with the container's stdout on fd 3, stderr on fd 4 and a ready pipe on
//! fd 5 (the `binary://` log protocol). It writes one CRI record per line and
//! rotates the file by size.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{MAX_RECORD, Rotation, Stream, format_record, rotated};

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

#[cfg(test)]
mod tests {
    use super::super::files_of;
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
    fn rotation_keeps_max_files_in_order() {
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
        let text: Vec<String> = files
            .iter()
            .flat_map(|f| {
                let content = std::fs::read(f).unwrap();
                content
                    .split(|b| *b == b'\n')
                    .filter_map(super::super::parse_record)
                    .map(|r| String::from_utf8(r.content).unwrap())
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(text.last().unwrap(), "line 19");
        let numbers: Vec<u32> = text.iter().map(|l| l[5..7].parse().unwrap()).collect();
        assert!(
            numbers.windows(2).all(|w| w[1] == w[0] + 1),
            "oldest first, no gaps: {numbers:?}"
        );
        assert!(numbers[0] > 0, "the oldest lines were rotated away");
    }
}
