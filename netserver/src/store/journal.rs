//! An append-only journal in front of one of the embedded store's B-trees: the frame
//! counters ([`CounterJournal`], in front of `uplinks.redb`) and the sessions
//! ([`crate::store::session_journal`], in front of `sessions.redb`).
//!
//! Every uplink moves its device's counters and every join writes a session, so the group
//! commits write one record per device of the batch. Written straight into a B-tree, a batch of
//! a thousand devices dirtied about a thousand random 4 KiB leaves, each copied, checksummed
//! and written at every commit: for the counters at 50,000 uplinks a second that was 40 % of a
//! core, the largest part of the network server's CPU per uplink (docs/benchmarks.md, "The
//! counter journal"). The journal writes a batch as one frame appended to a segment file and
//! `fdatasync`s it: the commit is durable when this returns, as before. When a segment has
//! grown to its size, the next one is started and a checkpoint thread writes the latest record
//! of each key the finished segments hold into the B-tree in **one** transaction, in key
//! order, then deletes those segments; a key written ten times since the last checkpoint is
//! written once.
//!
//! At open, every segment the B-tree does not hold is replayed, in order, into the records
//! kept in front of it (the checkpoint's transaction records the first generation it does not
//! hold, so a segment whose checkpoint committed but which was not yet deleted is skipped). A
//! frame that does not read whole with its checksum (a crash inside its write, before its
//! commit returned) ends its segment's replay; writing always goes on in a new segment, and a
//! checkpoint of the replayed records starts at once (kept in memory until the new segment
//! filled, they were up to two segments' worth on a server that then stayed idle).
//!
//! Once a segment is half full, a background thread prepares the next one as a file written
//! full of zeros (`next.spare`, renamed to the segment when its turn comes): a commit into it
//! writes over allocated blocks and leaves the file's size alone, so its `fdatasync` has no
//! metadata to write (on this machine about 100 instead of 150–200 µs a commit, and 40–44
//! instead of 64–79 µs of CPU: docs/benchmarks.md, "Journal segments written over zeros"). The
//! zeros after the last frame are padding, the end of the segment. When no spare is ready the
//! segment is created empty and grows as it is written; the first segment of a start does.
//!
//! Hand-written because no maintained crate does this seam's job: redb (the embedded store)
//! has no append-only mode, and the write-ahead-log crates bring their own formats and
//! threads for what is a few hundred lines here with one writer (the committing thread).
//!
//! Layout, in the journal's directory, one file per segment named by its generation (16 hex
//! digits, `.seg`): an 8-byte magic ([`JournalBase::MAGIC`]), then frames `[payload length:
//! u32 LE][CRC-32 of the payload: u32 LE][payload]`, the payload the batch's records in the
//! base's encoding ([`JournalBase::encode`]); after the last frame, zeros to the end of the file
//! or nothing. (A header of zeros followed by anything but zeros is an empty frame: releases
//! before the spare segments wrote one for an empty batch.)

use std::collections::HashMap;
use std::fs::File;
use std::hash::Hash;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use protocol::ids::DevEui;

use crate::ops::private;
use crate::store::backend::StoreError;
use crate::store::counters::{CounterBackend, CounterLog, CounterRecord};
use crate::store::embedded::backend_err;

/// The next segment prepared ahead, in the journal's directory.
const SPARE: &str = "next.spare";

/// The counter journal's directory inside the data directory.
pub const JOURNAL_DIR: &str = "uplinks-journal";
/// A frame's header: payload length and CRC-32.
const FRAME_HEADER: usize = 8;

/// The B-tree a [`Journal`] is in front of: its records' encoding and its checkpoints.
pub trait JournalBase: Send + Sync + 'static {
    /// A record's key: the journal keeps the latest value of each.
    type Key: Copy + Eq + Hash + Ord + Send + Sync + 'static;
    /// A record's value.
    type Value: Clone + Send + Sync + 'static;
    /// The first bytes of every segment (the format's version is its last two).
    const MAGIC: &'static [u8; 8];
    /// What the segments hold, for errors ("counter", "session").
    const WHAT: &'static str;
    /// Appends the encoding of one record to `out`.
    fn encode(key: &Self::Key, value: &Self::Value, out: &mut Vec<u8>);
    /// Reads one record from the front of `payload` (a frame whose checksum held), advancing
    /// it past the record.
    fn decode(payload: &mut &[u8]) -> Result<(Self::Key, Self::Value), StoreError>;
    /// The first journal generation the B-tree does not hold: the segments before it were
    /// checkpointed into it (0: none).
    fn checkpointed_below(&self) -> Result<u64, StoreError>;
    /// Writes `records` (in key order) and the mark `below` ([`Self::checkpointed_below`]) in
    /// one transaction.
    fn commit_checkpoint(
        &self,
        records: &[(Self::Key, Self::Value)],
        below: u64,
    ) -> Result<(), StoreError>;
}

/// An append-only journal in front of the B-tree `B`.
pub struct Journal<B: JournalBase> {
    base: Arc<B>,
    dir: PathBuf,
    segment_bytes: u64,
    inner: Mutex<Inner<B>>,
}

impl<B: JournalBase> std::fmt::Debug for Journal<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Journal({})", B::WHAT)
    }
}

/// The writer's state.
struct Inner<B: JournalBase> {
    /// The segment being written.
    file: File,
    generation: u64,
    /// Bytes in it.
    written: u64,
    /// A write or sync failed: the segment may end in a partial frame, so the next commit
    /// starts a new one.
    broken: bool,
    /// The latest record of each key in the segments no checkpoint has taken yet.
    dirty: HashMap<B::Key, B::Value>,
    /// The checkpoint running, if one is.
    checkpoint: Option<Checkpoint<B>>,
    /// The frame being encoded.
    buf: Vec<u8>,
    /// The thread preparing the next segment ([`SPARE`]), if one was started.
    spare: Option<JoinHandle<std::io::Result<()>>>,
}

/// A checkpoint in progress: the records it writes into the B-tree.
struct Checkpoint<B: JournalBase> {
    records: Arc<HashMap<B::Key, B::Value>>,
    thread: JoinHandle<Result<(), StoreError>>,
}

impl<B: JournalBase> Journal<B> {
    /// Opens (creating if needed) the journal in directory `dir` (0700) in front of `base`,
    /// replaying the segments `base` does not hold; a segment becomes a checkpoint once it
    /// holds `segment_bytes`.
    pub fn open(base: B, dir: &Path, segment_bytes: u64) -> Result<Self, StoreError> {
        private::create_dir(dir).map_err(backend_err)?;
        // A spare left by a process that stopped while preparing it may be incomplete.
        match std::fs::remove_file(dir.join(SPARE)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(backend_err(e)),
            _ => {}
        }
        let segments = segments(dir)?;
        // Segments a checkpoint committed but had not deleted when the process stopped are
        // not replayed: the table holds them, and newer values than theirs.
        let below = base.checkpointed_below()?;
        let mut dirty = HashMap::new();
        for (_, path) in segments.iter().filter(|(g, _)| *g >= below) {
            if !replay::<B>(path, &mut dirty)? {
                // No frame (a server that stopped before its first commit here): it holds
                // nothing, so it goes, or every restart would leave one until a checkpoint.
                std::fs::remove_file(path).map_err(backend_err)?;
            }
        }
        let generation = segments
            .last()
            .map_or(below, |(g, _)| g + 1)
            .max(below)
            .max(1);
        let file = create_segment::<B>(dir, generation).map_err(backend_err)?;
        if !dirty.is_empty() {
            tracing::info!(
                journal = B::WHAT,
                segments = segments.len(),
                records = dirty.len(),
                "journal replayed"
            );
            // The replayed segments are finished (writing goes on in a new one): they are
            // checkpointed now, before the start reads the B-tree, rather than kept in memory
            // until the new segment fills (which an idle server never does) or written beside
            // the start's own allocations (a checkpoint thread then leaves the heap holding
            // both: 530 instead of 454 bytes per restored session, docs/benchmarks.md).
            let mut batch: Vec<_> = std::mem::take(&mut dirty).into_iter().collect();
            if let Err(e) = checkpoint(&base, &mut batch, dir, generation) {
                tracing::warn!(journal = B::WHAT, error = %e, "checkpoint of the replayed segments failed; their records go with the next one");
                dirty = batch.into_iter().collect();
            }
        }
        let journal = Self {
            base: Arc::new(base),
            dir: dir.to_path_buf(),
            segment_bytes: segment_bytes.max(1),
            inner: Mutex::new(Inner {
                file,
                generation,
                written: B::MAGIC.len() as u64,
                broken: false,
                dirty,
                checkpoint: None,
                buf: Vec::new(),
                spare: None,
            }),
        };
        Ok(journal)
    }

    /// The B-tree the journal is in front of.
    pub fn base(&self) -> &B {
        &self.base
    }

    /// The records no checkpoint has written into the B-tree yet, oldest first: applied in
    /// order over the B-tree's, they give the journal's state.
    pub fn pending(&self) -> Vec<(B::Key, B::Value)> {
        let g = self.lock();
        let running = g.checkpoint.as_ref().map(|c| c.records.iter());
        running
            .into_iter()
            .flatten()
            .chain(g.dirty.iter())
            .map(|(k, v)| (*k, v.clone()))
            .collect()
    }

    /// Appends `batch` as one frame and syncs it: durable when this returns `Ok`, all of it
    /// or (after a crash inside) none.
    pub fn commit(&self, batch: &[(B::Key, B::Value)]) -> Result<(), StoreError> {
        if batch.is_empty() {
            // Nothing to make durable; and an empty frame would read as the segment's padding.
            return Ok(());
        }
        let mut g = self.lock();
        if g.broken {
            // The last frame may be partial: nothing more is written after it.
            self.start_segment(&mut g)
                .map_err(|e| backend_err(format!("{} journal: a new segment: {e}", B::WHAT)))?;
        }
        if let Err(e) = append::<B>(&mut g, batch) {
            g.broken = true;
            return Err(backend_err(format!("{} journal: {e}", B::WHAT)));
        }
        g.written += g.buf.len() as u64;
        g.dirty.extend(batch.iter().cloned());
        if g.written >= self.segment_bytes {
            self.rotate(&mut g);
        } else if g.written >= self.segment_bytes / 2 {
            // Half full: the next segment is prepared now, so that it is ready when this one
            // is (a server that stays idle, or stops soon, writes none).
            self.prepare_spare(&mut g);
        }
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Inner<B>> {
        // A panic while holding the lock leaves a state that is still whole (every field is
        // updated after the write it describes succeeded).
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts segment `generation + 1` for the next commits: the spare, if it is ready, or
    /// an empty file that grows.
    fn start_segment(&self, g: &mut Inner<B>) -> std::io::Result<()> {
        let next = g.generation + 1;
        g.file = match self.take_spare(g, next) {
            Some(file) => file,
            None => create_segment::<B>(&self.dir, next)?,
        };
        g.generation = next;
        g.written = B::MAGIC.len() as u64;
        g.broken = false;
        Ok(())
    }

    /// The spare, renamed to segment `generation`, if its thread has finished preparing it;
    /// `None` (a new spare is then prepared) when it is not ready or its preparation failed.
    fn take_spare(&self, g: &mut Inner<B>, generation: u64) -> Option<File> {
        if !g.spare.as_ref()?.is_finished() {
            return None;
        }
        let prepared = match g.spare.take()?.join() {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::other("the spare segment's thread panicked")),
        };
        let path = self.dir.join(format!("{generation:016x}.seg"));
        let opened = prepared.and_then(|()| {
            std::fs::rename(self.dir.join(SPARE), &path)?;
            sync_dir(&self.dir)?;
            std::fs::OpenOptions::new().write(true).open(&path)
        });
        match opened {
            Ok(file) => Some(file),
            Err(e) => {
                tracing::warn!(journal = B::WHAT, error = %e, "spare journal segment unusable; the next segment grows as it is written");
                None
            }
        }
    }

    /// Starts preparing the next segment in the background, unless that is under way.
    fn prepare_spare(&self, g: &mut Inner<B>) {
        if g.spare.is_some() {
            return;
        }
        let (dir, bytes) = (self.dir.clone(), self.segment_bytes);
        match std::thread::Builder::new()
            .name("netserver-spare".into())
            .spawn(move || write_spare::<B>(&dir, bytes))
        {
            Ok(thread) => g.spare = Some(thread),
            Err(e) => {
                tracing::warn!(journal = B::WHAT, error = %e, "cannot start preparing a spare journal segment");
            }
        }
    }

    /// Starts the next segment and, when no checkpoint is running, hands the finished
    /// segments' records to a new one. A failure leaves everything as it was (retried at the
    /// next commit).
    fn rotate(&self, g: &mut Inner<B>) {
        if g.checkpoint
            .as_ref()
            .is_some_and(|c| !c.thread.is_finished())
        {
            // The running checkpoint is behind: this segment grows until it is done.
            return;
        }
        if let Some(c) = g.checkpoint.take() {
            finish::<B>(c, &mut g.dirty);
        }
        if let Err(e) = self.start_segment(g) {
            tracing::warn!(journal = B::WHAT, error = %e, "cannot start a journal segment; retrying at the next commit");
            return;
        }
        self.start_checkpoint(g);
    }

    /// Hands the records of the segments before the current one to a new checkpoint thread
    /// (none may be running).
    fn start_checkpoint(&self, g: &mut Inner<B>) {
        let records = Arc::new(std::mem::take(&mut g.dirty));
        let work = {
            let (base, records, dir) = (
                Arc::clone(&self.base),
                Arc::clone(&records),
                self.dir.clone(),
            );
            let current = g.generation;
            move || {
                let mut batch: Vec<_> = records.iter().map(|(k, v)| (*k, v.clone())).collect();
                checkpoint(&*base, &mut batch, &dir, current)
            }
        };
        match std::thread::Builder::new()
            .name("netserver-ckpt".into())
            .spawn(work)
        {
            Ok(thread) => g.checkpoint = Some(Checkpoint { records, thread }),
            Err(e) => {
                tracing::warn!(journal = B::WHAT, error = %e, "cannot start the checkpoint thread; the records wait for the next segment");
                let back = Arc::try_unwrap(records).unwrap_or_else(|a| (*a).clone());
                g.dirty = back;
            }
        }
    }
}

impl<B: JournalBase> Drop for Journal<B> {
    /// Waits for a running checkpoint (its thread holds the B-tree's file open).
    fn drop(&mut self) {
        let (c, spare) = {
            let mut g = self.lock();
            (g.checkpoint.take(), g.spare.take())
        };
        if let Some(c) = c {
            let _ = c.thread.join();
        }
        if let Some(s) = spare {
            let _ = s.join();
        }
    }
}

/// Appends `batch` to the segment as one frame and syncs it.
fn append<B: JournalBase>(g: &mut Inner<B>, batch: &[(B::Key, B::Value)]) -> std::io::Result<()> {
    let Inner {
        buf, file, written, ..
    } = g;
    buf.clear();
    buf.extend_from_slice(&[0; FRAME_HEADER]);
    for (k, v) in batch {
        B::encode(k, v, buf);
    }
    let payload = u32::try_from(buf.len() - FRAME_HEADER)
        .map_err(|_| std::io::Error::other("batch too large for one frame"))?;
    let crc = crc32fast::hash(&buf[FRAME_HEADER..]);
    buf[0..4].copy_from_slice(&payload.to_le_bytes());
    buf[4..8].copy_from_slice(&crc.to_le_bytes());
    // At the segment's end (over a spare's zeros; a segment created empty is appended to).
    file.write_all_at(buf, *written)?;
    file.sync_data()
}

/// Takes a finished checkpoint's result; a failed one gives its records back (under the newer
/// ones in `dirty`), so the next checkpoint writes them and its segments are kept until then.
fn finish<B: JournalBase>(c: Checkpoint<B>, dirty: &mut HashMap<B::Key, B::Value>) {
    let failed = match c.thread.join() {
        Ok(Ok(())) => return,
        Ok(Err(e)) => e.to_string(),
        Err(_) => "the checkpoint thread panicked".to_string(),
    };
    tracing::warn!(journal = B::WHAT, error = %failed, "checkpoint failed; its records go with the next one");
    let mut back = Arc::try_unwrap(c.records).unwrap_or_else(|a| (*a).clone());
    back.extend(dirty.drain());
    *dirty = back;
}

/// Writes `batch` (the latest record of each key) into the B-tree in one transaction (in key
/// order), then deletes the segments before generation `current`, whose records they are.
fn checkpoint<B: JournalBase>(
    base: &B,
    batch: &mut [(B::Key, B::Value)],
    dir: &Path,
    current: u64,
) -> Result<(), StoreError> {
    let started = Instant::now();
    batch.sort_unstable_by_key(|(k, _)| *k);
    base.commit_checkpoint(batch, current)?;
    let mut removed = 0;
    for (g, path) in segments(dir)? {
        if g < current {
            std::fs::remove_file(&path).map_err(backend_err)?;
            removed += 1;
        }
    }
    sync_dir(dir).map_err(backend_err)?;
    tracing::debug!(
        journal = B::WHAT,
        records = batch.len(),
        segments = removed,
        ms = started.elapsed().as_millis() as u64,
        "checkpoint"
    );
    Ok(())
}

/// The segments in `dir`, oldest first.
fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(backend_err)? {
        let path = entry.map_err(backend_err)?.path();
        let generation = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".seg"))
            .and_then(|n| u64::from_str_radix(n, 16).ok());
        if let Some(g) = generation {
            out.push((g, path));
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Creates segment `generation` (0600) with its magic, synced with its directory entry.
fn create_segment<B: JournalBase>(dir: &Path, generation: u64) -> std::io::Result<File> {
    let path = dir.join(format!("{generation:016x}.seg"));
    let mut f = private::open_append(&path)?;
    f.set_len(0)?;
    f.write_all(B::MAGIC)?;
    f.sync_data()?;
    sync_dir(dir)?;
    Ok(f)
}

/// Writes the spare segment ([`SPARE`], 0600): the magic, then zeros to a little more than
/// `segment_bytes` (the frame that fills a segment then still lands on allocated blocks),
/// synced with its size.
fn write_spare<B: JournalBase>(dir: &Path, segment_bytes: u64) -> std::io::Result<()> {
    let path = dir.join(SPARE);
    let mut f = private::open_append(&path)?;
    f.set_len(0)?;
    f.write_all(B::MAGIC)?;
    let total = segment_bytes + segment_bytes / 16;
    let zeros = vec![0u8; 1 << 20];
    let mut left = total.saturating_sub(B::MAGIC.len() as u64);
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        f.write_all(&zeros[..n])?;
        left -= n as u64;
    }
    f.sync_all()
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Applies the whole frames of the segment at `path` to `out`, in order; false when the
/// segment holds nothing but its magic and padding (or not even those).
fn replay<B: JournalBase>(
    path: &Path,
    out: &mut HashMap<B::Key, B::Value>,
) -> Result<bool, StoreError> {
    let bytes = std::fs::read(path).map_err(backend_err)?;
    if bytes.len() < B::MAGIC.len() {
        // Created, its magic not yet written: empty.
        return Ok(false);
    }
    if &bytes[..B::MAGIC.len()] != B::MAGIC {
        return Err(StoreError::Backend(format!(
            "{} is not a {} journal segment of this version",
            path.display(),
            B::WHAT
        )));
    }
    let (frames, end) = frames(&bytes[B::MAGIC.len()..]);
    let held = !frames.is_empty();
    for mut payload in frames {
        while !payload.is_empty() {
            let (k, v) = B::decode(&mut payload)?;
            out.insert(k, v);
        }
    }
    let end = B::MAGIC.len() + end;
    if end < bytes.len() {
        tracing::warn!(
            path = %path.display(),
            offset = end,
            ignored = bytes.len() - end,
            "journal segment ends in an incomplete frame (a commit that did not return); ignored"
        );
    }
    Ok(held || end < bytes.len())
}

/// The payloads of the whole frames at the start of `bytes`, and where they end (the end of
/// `bytes` when only padding, zeros, follows them).
fn frames(bytes: &[u8]) -> (Vec<&[u8]>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(header) = bytes.get(at..at + FRAME_HEADER) {
        if header == [0; FRAME_HEADER] && bytes[at..].iter().all(|&b| b == 0) {
            return (out, bytes.len());
        }
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let Some(payload) = bytes.get(at + FRAME_HEADER..at + FRAME_HEADER + len) else {
            break;
        };
        if crc32fast::hash(payload) != crc {
            break;
        }
        out.push(payload);
        at += FRAME_HEADER + len;
    }
    (out, at)
}

/// The frame counters of the embedded store: a journal in `DATA_DIR/uplinks-journal/` in front
/// of [`CounterLog`]. A record is `[DevEUI: u64 LE][record length: u8][record]`
/// ([`CounterRecord`]'s encoding), 36 bytes.
#[derive(Debug)]
pub struct CounterJournal(Journal<CounterLog>);

impl CounterJournal {
    /// A segment's size before the next one starts and a checkpoint takes it: about 470,000
    /// records, 9 s of 50,000 uplinks a second; what is replayed at a start is at most about
    /// two segments.
    pub const SEGMENT_BYTES: u64 = 16 << 20;

    /// Opens (creating if needed) the counter log and its journal in `dir`, replaying the
    /// journal.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, Self::SEGMENT_BYTES)
    }

    /// [`Self::open`] with segments of `segment_bytes`.
    pub fn open_with(dir: &Path, segment_bytes: u64) -> Result<Self, StoreError> {
        let base = CounterLog::open(dir)?;
        Journal::open(base, &dir.join(JOURNAL_DIR), segment_bytes).map(Self)
    }
}

impl JournalBase for CounterLog {
    type Key = DevEui;
    type Value = CounterRecord;
    const MAGIC: &'static [u8; 8] = b"nsctrj01";
    const WHAT: &'static str = "counter";

    fn encode(key: &DevEui, value: &CounterRecord, out: &mut Vec<u8>) {
        let (b, len) = value.encode();
        out.extend_from_slice(&key.as_u64().to_le_bytes());
        out.push(len as u8);
        out.extend_from_slice(&b[..len]);
    }

    fn decode(payload: &mut &[u8]) -> Result<(DevEui, CounterRecord), StoreError> {
        let corrupt = |dev_eui| StoreError::Corrupt {
            dev_eui,
            reason: "counter journal record of the wrong length".into(),
        };
        let Some(head) = payload.get(..9) else {
            return Err(corrupt(DevEui::new(0)));
        };
        let mut eui = [0u8; 8];
        eui.copy_from_slice(&head[..8]);
        let dev_eui = DevEui::new(u64::from_le_bytes(eui));
        let len = usize::from(head[8]);
        let rec = payload
            .get(9..9 + len)
            .and_then(CounterRecord::decode)
            .ok_or_else(|| corrupt(dev_eui))?;
        *payload = &payload[9 + len..];
        Ok((dev_eui, rec))
    }

    fn checkpointed_below(&self) -> Result<u64, StoreError> {
        CounterLog::checkpointed_below(self)
    }

    fn commit_checkpoint(
        &self,
        records: &[(DevEui, CounterRecord)],
        below: u64,
    ) -> Result<(), StoreError> {
        CounterLog::commit_checkpoint(self, records, below)
    }
}

impl CounterBackend for CounterJournal {
    fn load(&self) -> Result<HashMap<DevEui, CounterRecord>, StoreError> {
        let mut out = self.0.base().load()?;
        out.extend(self.0.pending());
        Ok(out)
    }

    fn commit(&self, batch: &[(DevEui, CounterRecord)]) -> Result<(), StoreError> {
        self.0.commit(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::device::FrameCounters;
    use proptest::prelude::*;
    use protocol::ids::DevAddr;

    fn rec(dev: u64, f_cnt_up: u32) -> (DevEui, CounterRecord) {
        (
            DevEui::new(dev),
            CounterRecord {
                dev_addr: DevAddr::new(0x2600_0000 + dev as u32),
                dev_nonce: 3,
                created_at_ms: 1_700_000_000_000,
                counters: FrameCounters {
                    f_cnt_up,
                    n_f_cnt_down: f_cnt_up / 2,
                    a_f_cnt_down: 0,
                },
                rekey_confirmed: false,
                pending: None,
            },
        )
    }

    fn segment_files(dir: &Path) -> Vec<(u64, PathBuf)> {
        segments(&dir.join(JOURNAL_DIR)).unwrap()
    }

    #[test]
    fn commits_survive_a_reopen_and_the_last_record_of_a_device_wins() {
        let dir = tempfile::tempdir().unwrap();
        let j = CounterJournal::open(dir.path()).unwrap();
        j.commit(&[rec(1, 1), rec(2, 1)]).unwrap();
        j.commit(&[rec(1, 2), rec(1, 3)]).unwrap();
        drop(j);
        // Nothing was checkpointed: the B-tree is still empty, the journal holds it all.
        assert!(CounterLog::open(dir.path())
            .unwrap()
            .load()
            .unwrap()
            .is_empty());
        let j = CounterJournal::open(dir.path()).unwrap();
        // The open checkpointed the replayed segment before it returned: nothing is left in
        // memory, and only the segment the open started is on disk.
        assert!(j.0.pending().is_empty());
        assert_eq!(segment_files(dir.path()).len(), 1);
        let loaded = j.load().unwrap();
        assert_eq!(loaded, HashMap::from([rec(1, 3), rec(2, 1)]));
        // The B-tree holds the same.
        drop(j);
        assert_eq!(
            CounterLog::open(dir.path()).unwrap().load().unwrap(),
            loaded
        );
    }

    /// A counter log whose checkpoints fail while `fail` is set (a full disk under the
    /// B-tree).
    struct FailingLog {
        log: CounterLog,
        fail: std::sync::atomic::AtomicBool,
    }

    impl JournalBase for FailingLog {
        type Key = DevEui;
        type Value = CounterRecord;
        const MAGIC: &'static [u8; 8] = CounterLog::MAGIC;
        const WHAT: &'static str = "counter";

        fn encode(key: &DevEui, value: &CounterRecord, out: &mut Vec<u8>) {
            CounterLog::encode(key, value, out);
        }

        fn decode(payload: &mut &[u8]) -> Result<(DevEui, CounterRecord), StoreError> {
            CounterLog::decode(payload)
        }

        fn checkpointed_below(&self) -> Result<u64, StoreError> {
            self.log.checkpointed_below()
        }

        fn commit_checkpoint(
            &self,
            records: &[(DevEui, CounterRecord)],
            below: u64,
        ) -> Result<(), StoreError> {
            if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(StoreError::Backend("no space left on device".into()));
            }
            self.log.commit_checkpoint(records, below)
        }
    }

    #[test]
    fn a_failed_checkpoint_at_the_open_keeps_the_replayed_records_for_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let j = CounterJournal::open(dir.path()).unwrap();
        j.commit(&[rec(1, 1), rec(2, 1)]).unwrap();
        j.commit(&[rec(1, 2)]).unwrap();
        drop(j);
        let open = |fail: bool, segment_bytes: u64| {
            let base = FailingLog {
                log: CounterLog::open(dir.path()).unwrap(),
                fail: fail.into(),
            };
            Journal::open(base, &dir.path().join(JOURNAL_DIR), segment_bytes).unwrap()
        };
        let sorted = |mut v: Vec<(DevEui, CounterRecord)>| {
            v.sort_unstable_by_key(|(k, _)| *k);
            v
        };
        // The checkpoint fails: the open still succeeds, the records stay in memory and their
        // segment on disk, beside the one the open started.
        let j = open(true, 1);
        assert_eq!(sorted(j.pending()), vec![rec(1, 2), rec(2, 1)]);
        assert!(j.base().log.load().unwrap().is_empty());
        assert_eq!(segment_files(dir.path()).len(), 2);
        // The disk has room again: the next checkpoint (this commit fills its segment) writes
        // them with the newer record.
        j.base()
            .fail
            .store(false, std::sync::atomic::Ordering::SeqCst);
        j.commit(&[rec(2, 5)]).unwrap();
        drop(j);
        assert_eq!(
            CounterLog::open(dir.path()).unwrap().load().unwrap(),
            HashMap::from([rec(1, 2), rec(2, 5)])
        );
        // A later open finds only what the checkpoint did not take.
        let j = open(false, 1 << 20);
        assert!(j.pending().is_empty());
        assert_eq!(segment_files(dir.path()).len(), 1);
    }

    #[test]
    fn restarts_without_a_commit_leave_one_empty_segment_not_one_each() {
        let dir = tempfile::tempdir().unwrap();
        let j = CounterJournal::open(dir.path()).unwrap();
        j.commit(&[rec(1, 1)]).unwrap();
        drop(j);
        for _ in 0..5 {
            drop(CounterJournal::open(dir.path()).unwrap());
        }
        // The one the last open started: the first open checkpointed the segment with the
        // commit, and the later ones deleted the empty segments before them.
        let files = segment_files(dir.path());
        assert_eq!(files.len(), 1, "{files:?}");
        let j = CounterJournal::open(dir.path()).unwrap();
        assert_eq!(j.load().unwrap(), HashMap::from([rec(1, 1)]));
        j.commit(&[rec(1, 2)]).unwrap();
        drop(j);
        let j = CounterJournal::open(dir.path()).unwrap();
        assert_eq!(j.load().unwrap(), HashMap::from([rec(1, 2)]));
        // Generations only grow: the newest segment is the last one started.
        let files = segment_files(dir.path());
        assert!(files.windows(2).all(|w| w[0].0 < w[1].0), "{files:?}");
    }

    #[test]
    fn a_checkpoint_writes_the_finished_segments_into_the_b_tree_and_deletes_them() {
        let dir = tempfile::tempdir().unwrap();
        // A frame of two records is 8 + 2 * 36 = 80 bytes: every second commit fills a segment.
        let j = CounterJournal::open_with(dir.path(), 200).unwrap();
        for round in 1..=40 {
            j.commit(&[rec(1, round), rec(2, round)]).unwrap();
        }
        drop(j);
        // What the checkpoints took is in the B-tree, their segments are gone: what is left
        // is the segment being written and those after the last checkpoint's start.
        let base = CounterLog::open(dir.path()).unwrap();
        let below = base.checkpointed_below().unwrap();
        let records = base.load().unwrap();
        drop(base);
        assert!(below > 1, "a checkpoint was committed");
        assert!(
            records
                .get(&DevEui::new(1))
                .is_some_and(|r| r.counters.f_cnt_up > 1),
            "{records:?}"
        );
        let left = segment_files(dir.path());
        assert!(
            left.iter().all(|(g, _)| *g >= below),
            "{left:?}, below {below}"
        );
        let j = CounterJournal::open_with(dir.path(), 200).unwrap();
        assert_eq!(j.load().unwrap(), HashMap::from([rec(1, 40), rec(2, 40)]));
    }

    #[test]
    fn a_segment_whose_checkpoint_was_committed_is_not_replayed() {
        // A crash between a checkpoint's commit and its deletion of the segments (here the
        // oldest is back, a newer one is gone): replaying it on the B-tree would bring back
        // device 2's older counters; the checkpoint's mark says the B-tree holds it.
        let dir = tempfile::tempdir().unwrap();
        let j = CounterJournal::open_with(dir.path(), 1 << 20).unwrap();
        j.commit(&[rec(1, 5), rec(2, 5)]).unwrap();
        j.commit(&[rec(1, 6)]).unwrap();
        drop(j);
        let kept: Vec<(PathBuf, Vec<u8>)> = segment_files(dir.path())
            .into_iter()
            .map(|(_, p)| (p.clone(), std::fs::read(&p).unwrap()))
            .collect();
        let j = CounterJournal::open_with(dir.path(), 100).unwrap();
        // One commit past 100 bytes: the checkpoint takes every record so far.
        j.commit(&[rec(2, 7), rec(3, 1)]).unwrap();
        j.commit(&[rec(3, 2)]).unwrap();
        drop(j);
        for (path, bytes) in &kept {
            assert!(!path.exists(), "the checkpoint deleted {}", path.display());
            std::fs::write(path, bytes).unwrap();
        }
        let j = CounterJournal::open(dir.path()).unwrap();
        assert_eq!(
            j.load().unwrap(),
            HashMap::from([rec(1, 6), rec(2, 7), rec(3, 2)])
        );
    }

    #[test]
    fn an_incomplete_last_frame_is_ignored_and_writing_goes_on_in_a_new_segment() {
        let dir = tempfile::tempdir().unwrap();
        let j = CounterJournal::open(dir.path()).unwrap();
        j.commit(&[rec(1, 1)]).unwrap();
        j.commit(&[rec(1, 2), rec(2, 2)]).unwrap();
        drop(j);
        let (_, last) = segment_files(dir.path()).pop().unwrap();
        let whole = std::fs::read(&last).unwrap();
        // A crash inside the second commit's write: its frame is cut short.
        std::fs::write(&last, &whole[..whole.len() - 5]).unwrap();
        let j = CounterJournal::open(dir.path()).unwrap();
        assert_eq!(j.load().unwrap(), HashMap::from([rec(1, 1)]));
        j.commit(&[rec(3, 1)]).unwrap();
        drop(j);
        // A frame whose checksum does not hold ends the replay of its segment alike.
        let (_, newest) = segment_files(dir.path()).pop().unwrap();
        let mut bytes = std::fs::read(&newest).unwrap();
        let at = bytes.len() - 3;
        bytes[at] ^= 0xFF;
        std::fs::write(&newest, &bytes).unwrap();
        let j = CounterJournal::open(dir.path()).unwrap();
        assert_eq!(j.load().unwrap(), HashMap::from([rec(1, 1)]));
    }

    /// Waits until the spare's thread has finished (the test's journal is idle).
    fn spare_ready<B: JournalBase>(j: &Journal<B>) {
        for _ in 0..500 {
            if j.lock().spare.as_ref().is_some_and(|t| t.is_finished()) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("the spare segment was not prepared");
    }

    #[test]
    fn segments_after_the_first_are_written_over_a_spare_of_zeros_and_replay_to_the_padding() {
        let dir = tempfile::tempdir().unwrap();
        let jdir = dir.path().join(JOURNAL_DIR);
        // 36-byte records in 44-byte frames: a 400-byte segment is half full after 5 commits
        // and full after 9.
        let j = CounterJournal::open_with(dir.path(), 400).unwrap();
        for n in 1..=4 {
            j.commit(&[rec(n, 1)]).unwrap();
        }
        assert!(j.0.lock().spare.is_none(), "not half full yet: no spare");
        assert!(!jdir.join(SPARE).exists());
        j.commit(&[rec(5, 1)]).unwrap();
        spare_ready(&j.0);
        let spare = jdir.join(SPARE);
        assert_eq!(std::fs::metadata(&spare).unwrap().len(), 400 + 400 / 16);
        let first = segment_files(dir.path()).pop().unwrap();
        for n in 6..=9 {
            j.commit(&[rec(n, 1)]).unwrap();
        }
        // The ninth commit filled the segment: the spare is the next one, its zeros in place,
        // and the commits after it write over them without changing its size.
        assert!(!spare.exists());
        let (generation, second) = segment_files(dir.path()).pop().unwrap();
        assert_eq!(generation, first.0 + 1);
        assert_eq!(std::fs::metadata(&second).unwrap().len(), 425);
        j.commit(&[rec(10, 1), rec(1, 2)]).unwrap();
        j.commit(&[rec(11, 1)]).unwrap();
        let bytes = std::fs::read(&second).unwrap();
        assert_eq!(bytes.len(), 425);
        assert_eq!(&bytes[..8], CounterLog::MAGIC);
        let data_end = 8 + (8 + 72) + (8 + 36);
        assert!(bytes[8..data_end].iter().any(|&b| b != 0));
        assert!(bytes[data_end..].iter().all(|&b| b == 0));
        // What the segment holds reads up to its padding, as a whole (no incomplete frame).
        let (payloads, end) = frames(&bytes[8..]);
        assert_eq!(payloads.len(), 2);
        assert_eq!(end, bytes.len() - 8);
        drop(j);
        let mut expected: HashMap<_, _> = (2..=11).map(|n| rec(n, 1)).collect();
        expected.extend([rec(1, 2)]);
        let j = CounterJournal::open_with(dir.path(), 400).unwrap();
        assert_eq!(j.load().unwrap(), expected);
        drop(j);
        // A spare that was never used (the server stopped before the segment filled) is
        // removed at the next open, as an incomplete one would be.
        std::fs::write(jdir.join(SPARE), b"half-written").unwrap();
        drop(CounterJournal::open_with(dir.path(), 400).unwrap());
        assert!(!jdir.join(SPARE).exists());
    }

    #[test]
    fn zeros_after_the_frames_are_padding_and_a_zero_header_before_data_an_empty_frame() {
        let frame = |payload: &[u8]| {
            let mut f = (payload.len() as u32).to_le_bytes().to_vec();
            f.extend(crc32fast::hash(payload).to_le_bytes());
            f.extend(payload);
            f
        };
        let mut bytes = frame(b"abc");
        bytes.extend([0; 100]);
        assert_eq!(frames(&bytes), (vec![&b"abc"[..]], 111));
        // A segment of padding only holds nothing.
        assert_eq!(frames(&[0; 64]), (vec![], 64));
        // An empty frame (an empty batch of an earlier release) with frames after it.
        let mut bytes = frame(b"");
        bytes.extend(frame(b"xy"));
        assert_eq!(frames(&bytes), (vec![&b""[..], &b"xy"[..]], 8 + 10));
        // A torn frame before the padding still ends the replay where it starts.
        let mut bytes = frame(b"abc");
        let mut torn = frame(b"defgh");
        torn.truncate(10);
        bytes.extend(torn);
        bytes.extend([0; 20]);
        assert_eq!(frames(&bytes), (vec![&b"abc"[..]], 11));
    }

    #[test]
    fn an_empty_commit_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let j = CounterJournal::open(dir.path()).unwrap();
        let (_, seg) = segment_files(dir.path()).pop().unwrap();
        j.commit(&[]).unwrap();
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), 8, "the magic alone");
    }

    #[test]
    fn a_segment_of_another_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(CounterJournal::open(dir.path()).unwrap());
        let (_, seg) = segment_files(dir.path()).pop().unwrap();
        std::fs::write(&seg, b"nsctrj99 and more").unwrap();
        let e = CounterJournal::open(dir.path()).unwrap_err();
        assert!(
            e.to_string().contains("not a counter journal segment"),
            "{e}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn the_journal_is_readable_by_the_server_s_user_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let j = CounterJournal::open(dir.path()).unwrap();
        j.commit(&[rec(1, 1)]).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path().join(JOURNAL_DIR)), 0o700);
        for (_, p) in segment_files(dir.path()) {
            assert_eq!(mode(&p), 0o600, "{}", p.display());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Any sequence of commits, with restarts anywhere and segments of any size: what is
        /// loaded is the last record committed of each device.
        #[test]
        fn load_is_the_last_committed_record_of_each_device(
            segment_bytes in 40u64..600,
            steps in proptest::collection::vec(
                (proptest::collection::vec((0u64..6, 0u32..1000), 1..5), any::<bool>()),
                1..40,
            ),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut model = HashMap::new();
            let mut j = CounterJournal::open_with(dir.path(), segment_bytes).unwrap();
            for (batch, restart) in steps {
                let batch: Vec<_> = batch.into_iter().map(|(d, f)| rec(d, f)).collect();
                j.commit(&batch).unwrap();
                model.extend(batch);
                if restart {
                    drop(j);
                    j = CounterJournal::open_with(dir.path(), segment_bytes).unwrap();
                    prop_assert_eq!(&j.load().unwrap(), &model);
                }
            }
            prop_assert_eq!(&j.load().unwrap(), &model);
            drop(j);
            let j = CounterJournal::open_with(dir.path(), segment_bytes).unwrap();
            prop_assert_eq!(&j.load().unwrap(), &model);
        }
    }
}
