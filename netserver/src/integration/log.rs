//! The durable event log: every application event, as a JSON line, in numbered segment files
//! under `DATA_DIR/event-log/` (0700, files 0600). The emitter appends each batch and
//! `fdatasync`s it before the batch's counters are committed (as the file sink does), so the
//! log is read back at start like the event file ([`crate::integration::recover`]).
//!
//! Each delivered sink (MQTT, a webhook) reads the log from its own position and stores how far
//! its broker or receiver acknowledged in `DATA_DIR/event-log/<sink>.pos`. A sink that is down
//! builds a backlog in the log, never in memory, so it never slows the radio side. The backlog
//! is bounded: past `backlog_bytes`, the oldest segments are deleted (and counted), and a sink
//! still positioned in one resumes at the oldest segment left.
//!
//! A segment is written only by whole batches, and the next one is created before anything is
//! written to it: a reader that finds a later segment knows its own is complete.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use tokio::sync::watch;

use crate::integration::sink::EventSink;
use crate::ops::private;

/// The log's directory under the data directory.
pub const LOG_DIR: &str = "event-log";

/// A place in the log: a segment's number and a byte offset in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    /// The segment (1, 2, ...).
    pub segment: u64,
    /// Bytes into the segment.
    pub offset: u64,
}

/// Sizes of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    /// A new segment is started once the current one holds this many bytes.
    pub segment_bytes: u64,
    /// The most bytes the log keeps for sinks that lag; the oldest segments go first.
    pub backlog_bytes: u64,
}

fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:016}.jsonl"))
}

fn position_path(dir: &Path, sink: &str) -> PathBuf {
    dir.join(format!("{sink}.pos"))
}

/// The segments in `dir`, oldest first.
pub fn segments(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let name = e?.file_name();
        if let Some(n) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".jsonl"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// The newest segment's path, if the log has one (what recovery reads at start).
pub fn newest_segment(dir: &Path) -> std::io::Result<Option<PathBuf>> {
    match segments(dir) {
        Ok(s) => Ok(s.last().map(|&n| segment_path(dir, n))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The acknowledged position a sink stored, if any.
pub fn load_position(dir: &Path, sink: &str) -> std::io::Result<Option<Position>> {
    let text = match std::fs::read_to_string(position_path(dir, sink)) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut it = text.split_whitespace().map(str::parse::<u64>);
    match (it.next(), it.next()) {
        (Some(Ok(segment)), Some(Ok(offset))) => Ok(Some(Position { segment, offset })),
        _ => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "{}: not `SEGMENT OFFSET`",
                position_path(dir, sink).display()
            ),
        )),
    }
}

/// Stores a sink's acknowledged position (written aside, then renamed over the old one). Not
/// synced: a position lost in a crash only makes events repeat (at least once).
pub fn save_position(dir: &Path, sink: &str, p: Position) -> std::io::Result<()> {
    let tmp = dir.join(format!("{sink}.pos.tmp"));
    std::fs::write(&tmp, format!("{} {}\n", p.segment, p.offset))?;
    std::fs::rename(tmp, position_path(dir, sink))
}

/// The log's writer: an [`EventSink`] the emitter writes through.
#[derive(Debug)]
pub struct EventLog {
    dir: PathBuf,
    segment: u64,
    file: File,
    size: u64,
    limits: LogLimits,
    sinks: Vec<String>,
    written: watch::Sender<Position>,
    dropped: prometheus::IntCounter,
}

impl EventLog {
    /// Opens (or creates) the log in `dir` for the delivered `sinks`; a sink without a stored
    /// position starts at the log's end. The receiver follows the end of what is written.
    pub fn open(
        dir: &Path,
        limits: LogLimits,
        sinks: Vec<String>,
        dropped: prometheus::IntCounter,
    ) -> std::io::Result<(Self, watch::Receiver<Position>)> {
        private::create_dir(dir)?;
        let segment = segments(dir)?.last().copied().unwrap_or(1);
        let path = segment_path(dir, segment);
        let file = private::open_append(&path)?;
        let size = file.metadata()?.len();
        let end = Position {
            segment,
            offset: size,
        };
        for s in &sinks {
            if load_position(dir, s)?.is_none() {
                save_position(dir, s, end)?;
            }
        }
        let (written, rx) = watch::channel(end);
        Ok((
            Self {
                dir: dir.to_owned(),
                segment,
                file,
                size,
                limits,
                sinks,
                written,
                dropped,
            },
            rx,
        ))
    }

    /// Starts the next segment, then deletes the segments every sink has passed and, past the
    /// backlog bound, the oldest ones.
    fn roll(&mut self) -> std::io::Result<()> {
        let next = self.segment + 1;
        self.file = private::open_append(&segment_path(&self.dir, next))?;
        File::open(&self.dir)?.sync_all()?;
        self.segment = next;
        self.size = 0;
        self.trim()
    }

    fn trim(&self) -> std::io::Result<()> {
        let mut oldest_needed = self.segment;
        for s in &self.sinks {
            if let Some(p) = load_position(&self.dir, s)? {
                oldest_needed = oldest_needed.min(p.segment);
            }
        }
        let mut kept = Vec::new();
        for n in segments(&self.dir)? {
            if n < oldest_needed {
                std::fs::remove_file(segment_path(&self.dir, n))?;
            } else {
                kept.push(n);
            }
        }
        // Every segment but the current is complete; the current is empty.
        let mut total: u64 = kept
            .iter()
            .map(|&n| std::fs::metadata(segment_path(&self.dir, n)).map_or(0, |m| m.len()))
            .sum();
        for &n in &kept[..kept.len().saturating_sub(1)] {
            if total <= self.limits.backlog_bytes {
                break;
            }
            let p = segment_path(&self.dir, n);
            total -= std::fs::metadata(&p).map_or(0, |m| m.len());
            std::fs::remove_file(&p)?;
            self.dropped.inc();
            tracing::warn!(segment = n, "event log over its backlog bound: oldest segment deleted, a lagging sink loses its events");
        }
        Ok(())
    }
}

impl EventSink for EventLog {
    fn readable_back(&self) -> bool {
        true
    }

    fn write_batch(&mut self, lines: &[&[u8]], buf: &mut Vec<u8>) -> std::io::Result<()> {
        if self.size >= self.limits.segment_bytes {
            self.roll()?;
        }
        buf.clear();
        for l in lines {
            buf.extend_from_slice(l);
            buf.push(b'\n');
        }
        self.file.write_all(buf)?;
        self.file.sync_data()?;
        self.size += buf.len() as u64;
        self.written.send_replace(Position {
            segment: self.segment,
            offset: self.size,
        });
        Ok(())
    }
}

/// The configured sink ([`crate::integration::sink::ConfiguredSink`]) behind the event log:
/// each batch goes to the log first (when delivered sinks are configured), then to the sink.
#[derive(Debug)]
pub struct Logged<S> {
    /// The event log, if any delivered sink reads it.
    pub log: Option<EventLog>,
    /// The `data.events` sink.
    pub sink: S,
}

impl<S: EventSink> EventSink for Logged<S> {
    fn readable_back(&self) -> bool {
        self.log.is_some() || self.sink.readable_back()
    }

    fn write_batch(&mut self, lines: &[&[u8]], buf: &mut Vec<u8>) -> std::io::Result<()> {
        if let Some(log) = &mut self.log {
            log.write_batch(lines, buf)?;
        }
        self.sink.write_batch(lines, buf)
    }
}

/// One event read from the log, and the position just after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The JSON line, without its newline.
    pub line: Vec<u8>,
    /// Where the next event starts: the position to store once this one is acknowledged.
    pub end: Position,
}

/// What [`LogReader::open_segment`] found.
enum Segment {
    /// The reader's segment is open.
    Open,
    /// It was deleted: the reader moved to the oldest later one.
    Skipped,
    /// No segment to read.
    None,
}

/// A sink's reader of the log, from a position on.
#[derive(Debug)]
pub struct LogReader {
    dir: PathBuf,
    pos: Position,
    file: Option<(u64, File)>,
    chunk_len: usize,
    chunk: Vec<u8>,
}

impl LogReader {
    /// A reader of the log in `dir` from `pos`.
    pub fn new(dir: &Path, pos: Position) -> Self {
        Self {
            dir: dir.to_owned(),
            pos,
            file: None,
            chunk_len: 64 * 1024,
            chunk: Vec::new(),
        }
    }

    /// Where the next read starts.
    pub fn position(&self) -> Position {
        self.pos
    }

    /// Reads from `pos` again (events not acknowledged are delivered again).
    pub fn rewind(&mut self, pos: Position) {
        self.pos = pos;
    }

    /// Appends up to `max` complete events before `end` to `out`; returns how many, and
    /// whether segments the reader was in were deleted (the backlog bound) so that it skipped
    /// to the oldest left.
    ///
    /// `end` is where the writer's last batch ended ([`EventLog::open`]'s receiver): nothing
    /// at or past it is read, so a reader that caught up costs no system call, and a reader
    /// at the end of a segment before `end`'s knows that segment is complete.
    pub fn read(
        &mut self,
        max: usize,
        end: Position,
        out: &mut Vec<Entry>,
    ) -> std::io::Result<(usize, bool)> {
        use std::os::unix::fs::FileExt;
        let mut n = 0;
        let mut skipped = false;
        while n < max && self.pos < end {
            match self.open_segment()? {
                Segment::Open => {}
                Segment::Skipped => {
                    skipped = true;
                    continue;
                }
                Segment::None => return Ok((n, skipped)),
            }
            let Some((_, f)) = &self.file else {
                return Ok((n, skipped));
            };
            // In the writer's segment, only what it wrote (whole lines) is read.
            let want = if self.pos.segment == end.segment {
                usize::try_from(end.offset - self.pos.offset)
                    .unwrap_or(usize::MAX)
                    .min(self.chunk_len)
            } else {
                self.chunk_len
            };
            if self.chunk.len() < self.chunk_len {
                self.chunk.resize(self.chunk_len, 0);
            }
            let got = f.read_at(&mut self.chunk[..want], self.pos.offset)?;
            let complete = self.chunk[..got]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1);
            if complete == 0 && got == self.chunk_len {
                // A line longer than the chunk: read it whole next time round.
                self.chunk_len *= 2;
                continue;
            }
            if complete == 0 {
                // At the end of this segment: if the writer is in a later one, this one is
                // complete and the next exists (or was deleted: the open above skips on).
                if got == 0 && self.pos.segment < end.segment {
                    self.pos = Position {
                        segment: self.pos.segment + 1,
                        offset: 0,
                    };
                    continue;
                }
                return Ok((n, skipped));
            }
            let mut start = 0;
            for (i, &b) in self.chunk[..complete].iter().enumerate() {
                if b != b'\n' {
                    continue;
                }
                self.pos.offset += (i + 1 - start) as u64;
                if i > start {
                    out.push(Entry {
                        line: self.chunk[start..i].to_vec(),
                        end: self.pos,
                    });
                    n += 1;
                }
                start = i + 1;
                if n >= max {
                    break;
                }
            }
        }
        Ok((n, skipped))
    }

    /// Opens the segment at the reader's position unless it is open; if it was deleted (the
    /// backlog bound), moves to the oldest later one left.
    fn open_segment(&mut self) -> std::io::Result<Segment> {
        if self.file.as_ref().map(|f| f.0) == Some(self.pos.segment) {
            return Ok(Segment::Open);
        }
        match File::open(segment_path(&self.dir, self.pos.segment)) {
            Ok(f) => {
                self.file = Some((self.pos.segment, f));
                Ok(Segment::Open)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let later = segments(&self.dir)?
                    .into_iter()
                    .find(|&s| s > self.pos.segment);
                Ok(match later {
                    Some(segment) => {
                        self.pos = Position { segment, offset: 0 };
                        Segment::Skipped
                    }
                    None => Segment::None,
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Bytes between `from` and the log's end `end` (the backlog of a sink at `from`).
    pub fn backlog_bytes(&self, from: Position, end: Position) -> u64 {
        if from.segment == end.segment {
            return end.offset.saturating_sub(from.offset);
        }
        let size = |n| std::fs::metadata(segment_path(&self.dir, n)).map_or(0, |m| m.len());
        let mut total = size(from.segment).saturating_sub(from.offset);
        for n in from.segment + 1..end.segment {
            total += size(n);
        }
        total + end.offset
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(
        dir: &Path,
        segment_bytes: u64,
        backlog_bytes: u64,
    ) -> (EventLog, watch::Receiver<Position>) {
        let limits = LogLimits {
            segment_bytes,
            backlog_bytes,
        };
        EventLog::open(
            dir,
            limits,
            vec!["a".into()],
            prometheus::IntCounter::new("d", "d").unwrap(),
        )
        .unwrap()
    }

    fn write(log: &mut EventLog, from: u32, to: u32) {
        let lines: Vec<Vec<u8>> = (from..to)
            .map(|i| format!("{{\"n\":{i:04}}}").into_bytes())
            .collect();
        let refs: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
        log.write_batch(&refs, &mut Vec::new()).unwrap();
    }

    fn read_all(r: &mut LogReader, end: &watch::Receiver<Position>) -> Vec<String> {
        let mut out = Vec::new();
        while r.read(7, *end.borrow(), &mut out).unwrap().0 > 0 {}
        out.into_iter()
            .map(|e| String::from_utf8(e.line).unwrap())
            .collect()
    }

    #[test]
    fn a_reader_follows_the_log_across_segments_from_its_position() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join(LOG_DIR);
        let (mut log, end) = open(&d, 40, 1 << 20);
        // 11 bytes a line: 4 lines fill a segment past 40 bytes.
        write(&mut log, 0, 4);
        write(&mut log, 4, 8);
        write(&mut log, 8, 9);
        assert_eq!(segments(&d).unwrap(), vec![1, 2, 3]);
        let start = load_position(&d, "a").unwrap().unwrap();
        assert_eq!(
            start,
            Position {
                segment: 1,
                offset: 0
            }
        );
        let mut r = LogReader::new(&d, start);
        let got = read_all(&mut r, &end);
        assert_eq!(got.len(), 9);
        assert_eq!(got[8], "{\"n\":0008}");
        assert_eq!(
            r.position(),
            Position {
                segment: 3,
                offset: 11
            }
        );
        // Acknowledged up to the 5th event; a new reader there gets the rest again.
        let mut out = Vec::new();
        LogReader::new(&d, start)
            .read(5, *end.borrow(), &mut out)
            .unwrap();
        save_position(&d, "a", out[4].end).unwrap();
        let mut again = LogReader::new(&d, load_position(&d, "a").unwrap().unwrap());
        assert_eq!(read_all(&mut again, &end)[0], "{\"n\":0005}");
        // A partial line is not read until it is complete.
        std::fs::OpenOptions::new()
            .append(true)
            .open(segment_path(&d, 3))
            .unwrap()
            .write_all(b"{\"n\":")
            .unwrap();
        assert!(read_all(&mut r, &end).is_empty());
        // Even told the log ends after those bytes, the reader leaves the partial line.
        let past_partial = Position {
            segment: 3,
            offset: 11 + 5,
        };
        let mut out = Vec::new();
        assert_eq!(r.read(7, past_partial, &mut out).unwrap(), (0, false));
        assert!(out.is_empty());
        assert_eq!(r.backlog_bytes(start, r.position()), 99);
    }

    #[test]
    fn acknowledged_segments_are_deleted_and_the_backlog_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join(LOG_DIR);
        let (mut log, end) = open(&d, 40, 100);
        for i in 0..3 {
            write(&mut log, i * 4, i * 4 + 4);
        }
        // The sink acknowledged all of segment 1: it goes at the next roll.
        save_position(
            &d,
            "a",
            Position {
                segment: 2,
                offset: 0,
            },
        )
        .unwrap();
        write(&mut log, 12, 16);
        assert_eq!(segments(&d).unwrap(), vec![2, 3, 4]);
        // The sink stays at segment 2: past 100 bytes the oldest segments go anyway.
        for i in 4..8 {
            write(&mut log, i * 4, i * 4 + 4);
        }
        let left = segments(&d).unwrap();
        assert_eq!(left, vec![6, 7, 8]);
        assert_eq!(log.dropped.get(), 4);
        let mut r = LogReader::new(
            &d,
            Position {
                segment: 2,
                offset: 11,
            },
        );
        let mut out = Vec::new();
        let (n, skipped) = r.read(1, *end.borrow(), &mut out).unwrap();
        assert_eq!((n, skipped), (1, true));
        assert_eq!(out[0].line, b"{\"n\":0020}");
    }

    #[test]
    fn a_bad_position_file_is_an_error_not_a_restart_from_zero() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("x.pos"), "twelve").unwrap();
        let e = load_position(dir.path(), "x").unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        assert!(load_position(dir.path(), "y").unwrap().is_none());
    }
}
