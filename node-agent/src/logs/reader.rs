//! Selecting and following a container run's records with `kubectl logs`
//! semantics, streamed as chunks of whole lines from one stream.
//!
//! A run's files are `<file>.N` … `<file>.1`, `<file>` (oldest first); the last
//! is the *live* file the logger appends to. The reader walks them in order:
//!
//! - `tail` finds where to start by scanning backwards from the newest file,
//!   counting records as the kubelet does, then `since` filters going forwards;
//! - a follower waits at the end of the live file for inotify to report a change
//!   in the directory (or for a poll interval), notices a rotation when the live
//!   path names another inode, finishes the old file and goes on with the file
//!   that follows it, found by inode, so a follower that fell several rotations
//!   behind loses nothing still on disk;
//! - following ends once the run has ended and the file has stayed quiet for a
//!   settle time (the logger drains the pipes after the process exits).
//!
//! Memory stays bounded: chunks of at most [`CHUNK`] bytes go to a bounded
//! channel, and a full channel blocks the reader, so a slow client slows the
//! reading down instead of growing a buffer.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::sync::mpsc;

use super::{RawRecord, Stream, files_of, split_record};

/// Largest chunk of output sent at once.
pub const CHUNK: usize = 512 * 1024;

/// Read buffer of a log file.
const READ_BUFFER: usize = 256 * 1024;

/// Block size of the backwards scan for `tail`.
const TAIL_BLOCK: usize = 64 * 1024;

/// Which records to return, with `kubectl logs` semantics.
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    /// Only the last N lines (counted before `since` applies, as the kubelet does).
    pub tail_lines: Option<usize>,
    /// Only records at or after this time.
    pub since: Option<jiff::Timestamp>,
    /// Prefix lines with their RFC 3339 timestamp.
    pub timestamps: bool,
    /// Stop after this many bytes.
    pub limit_bytes: Option<usize>,
}

/// A piece of output: whole lines (or the parts of a long line) from one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Which stream.
    pub stream: Stream,
    /// The bytes, timestamps included when asked for.
    pub data: Vec<u8>,
}

/// How to follow the live file.
pub struct Follow {
    /// Whether the container run has ended (its task exited, or the pod is gone).
    pub ended: Box<dyn Fn() -> bool + Send>,
    /// Longest wait between two looks at the file when inotify reports nothing.
    pub poll: Duration,
    /// How long the file must stay quiet after the run ended before following ends.
    pub settle: Duration,
}

/// Streams the records of the run whose live file is `path`, as `opts` selects
/// them, to `tx`; with `follow`, goes on with new records until the run ends.
/// Returns when done, or as soon as the receiver is gone. Blocking: run it on a
/// blocking thread.
pub fn stream(
    path: &Path,
    opts: &ReadOptions,
    follow: Option<Follow>,
    tx: &mpsc::Sender<Chunk>,
) -> io::Result<()> {
    let mut files = Files::start(path, opts.tail_lines)?;
    let mut out = Output::new(opts, tx);
    let mut waiter: Option<Waiter> = None;
    let mut ended_at: Option<Instant> = None;
    loop {
        let mut wanted = true;
        let mut any = false;
        files.read_records(&mut |line| {
            any = true;
            if let Some(record) = split_record(line)
                && opts
                    .since
                    .is_none_or(|since| record.timestamp().is_none_or(|t| t >= since))
            {
                wanted = out.push(&record);
            }
            wanted
        })?;
        if !wanted {
            return Ok(());
        }
        if any && ended_at.is_some() {
            ended_at = Some(Instant::now());
        }
        // At the end of what has been written so far.
        if !out.flush() {
            return Ok(());
        }
        let Some(follow) = &follow else {
            return Ok(());
        };
        let wait = match ended_at {
            Some(t) if t.elapsed() >= follow.settle => return Ok(()),
            Some(t) => follow.settle.saturating_sub(t.elapsed()).min(follow.poll),
            None if (follow.ended)() => {
                ended_at = Some(Instant::now());
                follow.settle.min(follow.poll)
            }
            None => follow.poll,
        };
        if tx.is_closed() {
            return Ok(());
        }
        waiter.get_or_insert_with(|| Waiter::new(path)).wait(wait);
    }
}

/// The open file of a run and where the reader is in it.
struct Open {
    file: BufReader<File>,
    ino: u64,
    pos: u64,
}

impl Open {
    fn new(mut file: File, pos: u64) -> io::Result<Self> {
        let ino = file.metadata()?.ino();
        file.seek(SeekFrom::Start(pos))?;
        Ok(Self {
            file: BufReader::with_capacity(READ_BUFFER, file),
            ino,
            pos,
        })
    }
}

/// The files of one run, walked oldest first.
struct Files {
    path: PathBuf,
    current: Option<Open>,
    /// The start of a record whose end has not been read yet.
    partial: Vec<u8>,
}

impl Files {
    /// Positioned at the first record to return: the start of the oldest file, or
    /// the `tail`-th record from the end.
    fn start(path: &Path, tail: Option<usize>) -> io::Result<Self> {
        let current = match tail {
            Some(n) => tail_start(path, n)?,
            None => first_existing(path)?.map(|f| (f, 0)),
        };
        Ok(Self {
            path: path.to_owned(),
            current: current.map(|(f, pos)| Open::new(f, pos)).transpose()?,
            partial: Vec::new(),
        })
    }

    /// Calls `each` with every whole record (without its newline) up to the end of
    /// what is written, or until it returns false. Records are handed over where
    /// they lie in the read buffer; only one that straddles two reads is copied.
    /// The start of a record the logger is still writing waits for the next call.
    fn read_records(&mut self, each: &mut dyn FnMut(&[u8]) -> bool) -> io::Result<()> {
        loop {
            let Some(cur) = &mut self.current else {
                // Nothing written yet: the file may appear later.
                match first_existing(&self.path)? {
                    Some(f) => self.current = Some(Open::new(f, 0)?),
                    None => return Ok(()),
                }
                continue;
            };
            let buf = cur.file.fill_buf()?;
            if buf.is_empty() {
                if self.at_end_of_file()? {
                    return Ok(());
                }
                continue;
            }
            let mut used = 0;
            let mut wanted = true;
            if !self.partial.is_empty() {
                match memchr::memchr(b'\n', buf) {
                    Some(i) => {
                        self.partial.extend_from_slice(&buf[..i]);
                        used = i + 1;
                        wanted = each(&self.partial);
                        self.partial.clear();
                    }
                    None => {
                        self.partial.extend_from_slice(buf);
                        used = buf.len();
                    }
                }
            }
            if wanted && self.partial.is_empty() {
                let rest = &buf[used..];
                let mut start = 0;
                for end in memchr::memchr_iter(b'\n', rest) {
                    wanted = each(&rest[start..end]);
                    start = end + 1;
                    if !wanted {
                        break;
                    }
                }
                if wanted {
                    self.partial.extend_from_slice(&rest[start..]);
                    start = rest.len();
                }
                used += start;
            }
            cur.file.consume(used);
            cur.pos += used as u64;
            if !wanted {
                return Ok(());
            }
        }
    }

    /// At the end of the current file: `true` when it is the live file (the end
    /// of what is written); otherwise moves on to the next file and says `false`.
    fn at_end_of_file(&mut self) -> io::Result<bool> {
        let Some(cur) = &mut self.current else {
            return Ok(true);
        };
        match std::fs::metadata(&self.path) {
            Ok(live) if live.ino() == cur.ino => {
                if live.len() < cur.pos {
                    // Truncated in place (rotation that keeps one file): start over.
                    cur.file.seek(SeekFrom::Start(0))?;
                    cur.pos = 0;
                    self.partial.clear();
                    return Ok(false);
                }
                return Ok(true);
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        // Rotated away: what the logger wrote to it between the read that found
        // its end and the rename is still to be read. It no longer grows, so once
        // the position reaches its length it is finished.
        if cur.file.get_ref().metadata()?.len() > cur.pos {
            return Ok(false);
        }
        // This file is finished (rotated away, or an older one): go on with the
        // next. The logger writes whole records, so nothing of it continues there.
        let ino = cur.ino;
        let Some(next) = self.next_after(ino)? else {
            return Ok(true);
        };
        self.partial.clear();
        self.current = Some(Open::new(next, 0)?);
        Ok(false)
    }

    /// The file that follows the one with inode `ino`; the oldest one when that
    /// file is gone (everything older is gone too). `None` while it is not there.
    fn next_after(&self, ino: u64) -> io::Result<Option<File>> {
        let files = files_of(&self.path);
        let mut opened = Vec::with_capacity(files.len());
        for f in &files {
            match File::open(f) {
                Ok(file) => {
                    let i = file.metadata()?.ino();
                    opened.push((i, file));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        let next = match opened.iter().position(|(i, _)| *i == ino) {
            Some(at) => at + 1,
            None => 0,
        };
        Ok(opened.into_iter().nth(next).map(|(_, f)| f))
    }
}

fn first_existing(path: &Path) -> io::Result<Option<File>> {
    for f in files_of(path) {
        match File::open(&f) {
            Ok(file) => return Ok(Some(file)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// Where the last `n` records start: the file and offset just after the
/// `n + 1`-th newline from the end (a record still being written at the end is
/// not one), across rotated files; the oldest file's start when there are fewer.
fn tail_start(path: &Path, n: usize) -> io::Result<Option<(File, u64)>> {
    let mut need = n + 1;
    let mut oldest = None;
    let mut block = vec![0; TAIL_BLOCK];
    for f in files_of(path).iter().rev() {
        let mut file = match File::open(f) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let mut end = file.metadata()?.len();
        while end > 0 {
            let start = end.saturating_sub(TAIL_BLOCK as u64);
            let chunk = &mut block[..(end - start) as usize];
            file.seek(SeekFrom::Start(start))?;
            file.read_exact(chunk)?;
            for (i, _) in chunk.iter().enumerate().rev().filter(|(_, b)| **b == b'\n') {
                need -= 1;
                if need == 0 {
                    return Ok(Some((file, start + i as u64 + 1)));
                }
            }
            end = start;
        }
        oldest = Some(file);
    }
    Ok(oldest.map(|f| (f, 0)))
}

/// Batches records into chunks and applies `timestamps` and `limit_bytes`.
struct Output<'a> {
    tx: &'a mpsc::Sender<Chunk>,
    timestamps: bool,
    left: Option<usize>,
    batch: Option<Chunk>,
}

impl<'a> Output<'a> {
    fn new(opts: &ReadOptions, tx: &'a mpsc::Sender<Chunk>) -> Self {
        Self {
            tx,
            timestamps: opts.timestamps,
            left: opts.limit_bytes,
            batch: None,
        }
    }

    /// Adds a record; `false` when nothing more is wanted (the limit is reached or
    /// the receiver is gone).
    fn push(&mut self, record: &RawRecord<'_>) -> bool {
        let prefix = if self.timestamps {
            record.time.len() + 1
        } else {
            0
        };
        let size = prefix + record.content.len() + usize::from(!record.partial);
        if self
            .batch
            .as_ref()
            .is_some_and(|b| b.stream != record.stream || b.data.len() + size > CHUNK)
            && !self.flush()
        {
            return false;
        }
        let batch = self.batch.get_or_insert_with(|| Chunk {
            stream: record.stream,
            data: Vec::with_capacity(CHUNK.max(size)),
        });
        let mark = batch.data.len();
        if self.timestamps {
            batch.data.extend_from_slice(record.time);
            batch.data.push(b' ');
        }
        batch.data.extend_from_slice(record.content);
        if !record.partial {
            batch.data.push(b'\n');
        }
        let Some(left) = &mut self.left else {
            return true;
        };
        let added = batch.data.len() - mark;
        if added < *left {
            *left -= added;
            return true;
        }
        batch.data.truncate(mark + *left);
        *left = 0;
        self.flush();
        false
    }

    /// Sends what is batched; `false` when the receiver is gone.
    fn flush(&mut self) -> bool {
        match self.batch.take() {
            Some(chunk) if !chunk.data.is_empty() => self.tx.blocking_send(chunk).is_ok(),
            _ => !self.tx.is_closed(),
        }
    }
}

/// Waits for a change in the log directory: inotify, or plain sleeping where
/// inotify is not available (its limits are per user and can run out).
struct Waiter {
    inotify: Option<Inotify>,
}

impl Waiter {
    fn new(path: &Path) -> Self {
        let dir = path.parent().unwrap_or(Path::new("."));
        let flags = AddWatchFlags::IN_MODIFY
            | AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_CLOSE_WRITE;
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .and_then(|i| i.add_watch(dir, flags).map(|_| i));
        match inotify {
            Ok(i) => Self { inotify: Some(i) },
            Err(e) => {
                tracing::debug!(dir = %dir.display(), error = %e, "no inotify; following by polling");
                Self { inotify: None }
            }
        }
    }

    /// Returns after a change, or after `timeout`.
    fn wait(&mut self, timeout: Duration) {
        let Some(inotify) = &self.inotify else {
            std::thread::sleep(timeout);
            return;
        };
        let millis = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [nix::poll::PollFd::new(
            inotify.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        if matches!(nix::poll::poll(&mut fds, millis), Ok(n) if n > 0) {
            // Drain the events: which file changed does not matter, the reader looks.
            while inotify.read_events().is_ok_and(|e| !e.is_empty()) {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::format_record;
    use std::io::Write as _;

    fn t(s: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn write(path: &Path, lines: &[(i64, Stream, &str)]) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        for (s, stream, text) in lines {
            f.write_all(&format_record(t(*s), *stream, false, text.as_bytes()))
                .unwrap();
        }
    }

    /// Reads without following; the chunks' text per stream.
    fn read(path: &Path, opts: &ReadOptions) -> Vec<(Stream, String)> {
        let (tx, mut rx) = mpsc::channel(1024);
        stream(path, opts, None, &tx).unwrap();
        drop(tx);
        let mut out = Vec::new();
        while let Ok(c) = rx.try_recv() {
            out.push((c.stream, String::from_utf8(c.data).unwrap()));
        }
        out
    }

    /// The last `n` records' text.
    fn tail(path: &Path, n: usize) -> String {
        text(&read(
            path,
            &ReadOptions {
                tail_lines: Some(n),
                ..Default::default()
            },
        ))
    }

    fn text(chunks: &[(Stream, String)]) -> String {
        chunks.iter().map(|(_, s)| s.as_str()).collect()
    }

    #[test]
    fn read_applies_tail_since_timestamps_and_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        write(
            &path,
            &[
                (0, Stream::Stdout, "a"),
                (1, Stream::Stderr, "b"),
                (2, Stream::Stdout, "c"),
            ],
        );
        let all = read(&path, &ReadOptions::default());
        assert_eq!(
            all,
            [
                (Stream::Stdout, "a\n".into()),
                (Stream::Stderr, "b\n".into()),
                (Stream::Stdout, "c\n".into())
            ]
        );
        let tail = |n| tail(&path, n);
        assert_eq!(tail(0), "");
        assert_eq!(tail(1), "c\n");
        assert_eq!(tail(2), "b\nc\n");
        assert_eq!(tail(9), "a\nb\nc\n");
        let since = ReadOptions {
            since: Some(t(1)),
            ..Default::default()
        };
        assert_eq!(text(&read(&path, &since)), "b\nc\n");
        let stamped = ReadOptions {
            timestamps: true,
            tail_lines: Some(1),
            ..Default::default()
        };
        assert_eq!(text(&read(&path, &stamped)), "2027-01-15T08:00:02Z c\n");
        let limited = |n| {
            text(&read(
                &path,
                &ReadOptions {
                    limit_bytes: Some(n),
                    ..Default::default()
                },
            ))
        };
        assert_eq!(limited(3), "a\nb");
        assert_eq!(limited(4), "a\nb\n");
        assert_eq!(limited(100), "a\nb\nc\n");
        assert!(read(&dir.path().join("missing.log"), &ReadOptions::default()).is_empty());
    }

    #[test]
    fn tail_counts_across_rotated_files_and_ignores_a_record_being_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        write(&dir.path().join("0.log.2"), &[(0, Stream::Stdout, "1")]);
        write(
            &dir.path().join("0.log.1"),
            &[(1, Stream::Stdout, "2"), (2, Stream::Stdout, "3")],
        );
        write(&path, &[(3, Stream::Stdout, "4")]);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"2027-01-15T08:00:05Z stdout F half").unwrap();
        let tail = |n| tail(&path, n);
        assert_eq!(tail(1), "4\n");
        assert_eq!(tail(3), "2\n3\n4\n");
        assert_eq!(tail(4), "1\n2\n3\n4\n");
        assert_eq!(tail(100), "1\n2\n3\n4\n");
        assert_eq!(text(&read(&path, &ReadOptions::default())), "1\n2\n3\n4\n");
    }

    #[test]
    fn chunks_hold_one_stream_and_stay_under_the_chunk_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let long = "x".repeat(1000);
        let n = 3 * CHUNK / 1001 + 1;
        let lines: Vec<(i64, Stream, &str)> =
            (0..n).map(|_| (0, Stream::Stdout, long.as_str())).collect();
        write(&path, &lines);
        write(&path, &[(0, Stream::Stderr, "e")]);
        let chunks = read(&path, &ReadOptions::default());
        assert!(chunks.len() >= 4, "{} chunks", chunks.len());
        assert!(chunks.iter().all(|(_, c)| c.len() <= CHUNK));
        assert_eq!(chunks.last().unwrap(), &(Stream::Stderr, "e\n".into()));
        let stdout: usize = chunks
            .iter()
            .filter(|(s, _)| *s == Stream::Stdout)
            .map(|(_, c)| c.len())
            .sum();
        assert_eq!(stdout, n * 1001);
    }

    #[test]
    fn follow_sees_new_records_across_rotations_and_ends_after_the_run() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        write(&path, &[(0, Stream::Stdout, "before")]);
        let ended = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let follow = Follow {
            ended: {
                let ended = ended.clone();
                Box::new(move || ended.load(std::sync::atomic::Ordering::SeqCst))
            },
            poll: Duration::from_millis(20),
            settle: Duration::from_millis(100),
        };
        let (tx, mut rx) = mpsc::channel(4);
        let reader = {
            let path = path.clone();
            std::thread::spawn(move || stream(&path, &ReadOptions::default(), Some(follow), &tx))
        };
        let next = |rx: &mut mpsc::Receiver<Chunk>| {
            String::from_utf8(rx.blocking_recv().expect("a chunk").data).unwrap()
        };
        assert_eq!(next(&mut rx), "before\n");
        write(&path, &[(1, Stream::Stdout, "after")]);
        assert_eq!(next(&mut rx), "after\n");
        // Rotate twice while the reader waits: nothing is lost.
        std::fs::rename(&path, dir.path().join("0.log.1")).unwrap();
        write(&path, &[(2, Stream::Stdout, "rotated once")]);
        std::fs::rename(dir.path().join("0.log.1"), dir.path().join("0.log.2")).unwrap();
        std::fs::rename(&path, dir.path().join("0.log.1")).unwrap();
        write(&path, &[(3, Stream::Stdout, "rotated twice")]);
        let mut seen = String::new();
        while !seen.ends_with("rotated twice\n") {
            seen.push_str(&next(&mut rx));
        }
        assert_eq!(seen, "rotated once\nrotated twice\n");
        ended.store(true, std::sync::atomic::Ordering::SeqCst);
        write(&path, &[(4, Stream::Stderr, "last words")]);
        assert_eq!(next(&mut rx), "last words\n");
        assert!(
            rx.blocking_recv().is_none(),
            "the stream ends after the run"
        );
        reader.join().unwrap().unwrap();
    }

    #[test]
    fn a_gone_receiver_stops_the_follower() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        write(&path, &[(0, Stream::Stdout, "x")]);
        let (tx, rx) = mpsc::channel(1);
        let reader = std::thread::spawn(move || {
            let follow = Follow {
                ended: Box::new(|| false),
                poll: Duration::from_millis(10),
                settle: Duration::from_secs(1),
            };
            stream(&path, &ReadOptions::default(), Some(follow), &tx)
        });
        drop(rx);
        reader.join().unwrap().unwrap();
    }
}
