//! Write-ahead frame counters, and the one thread that makes them durable before anything that
//! depends on them leaves the process.
//!
//! The data path never awaits storage. For each accepted uplink (or downlink) it hands an
//! [`Emit`] to the [`Emitter`] while it still holds the session's lock, so the emits of one
//! session are queued in counter order. The emitter thread takes what is queued (up to a
//! batch), and then:
//!
//! **Events to a file** (the event file is itself a durable record of what was delivered):
//! 1. writes the batch's events (one `write`) and `fdatasync`s the file;
//! 2. commits the batch's new counters in **one** redb transaction (group commit) to
//!    `uplinks.redb` in the data directory;
//! 3. sends the batch's downlinks — a downlink never leaves before its FCntDown is durable.
//!
//! At start, [`recover_delivered`] reads the file's tail and advances every counter past the
//! last uplink it delivered, so a crash between 1 and 2 neither loses nor repeats an event;
//! a partial last line (a crash inside the write) is cut off. Window: none.
//!
//! **Events to stdout or UDP** (which cannot be read back): the commit comes first, then the
//! events, then the downlinks. A crash between the commit and the write loses that batch's
//! events (at most one group commit) but never repeats one.
//!
//! If a commit fails, the batch's downlinks are dropped (and, for stdout/UDP, its events);
//! the in-memory counters stay advanced, so no frame is accepted twice.
//!
//! The counters live beside the session store, not in it: a session record is written once at
//! the join, its counters at every uplink. Each counter record carries the identity of the
//! session it belongs to (DevAddr, DevNonce, creation time), so the record of a replaced
//! session is never applied to its successor.

use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::Instant;

use protocol::ids::{DevAddr, DevEui};

use crate::metrics::Metrics;
use crate::session::{backend_err, open_redb, FrameCounters, RecordTable, Session, StoreError};

const COUNTERS: RecordTable = redb::TableDefinition::new("counters");

/// The durable counters of one session, with the identity of that session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterRecord {
    /// The session's DevAddr.
    pub dev_addr: DevAddr,
    /// The DevNonce of the join that created it.
    pub dev_nonce: u16,
    /// Its creation time, ms since the Unix epoch.
    pub created_at_ms: u64,
    /// The counters (next values).
    pub counters: FrameCounters,
    /// LoRaWAN 1.1: RekeyInd received.
    pub rekey_confirmed: bool,
}

const RECORD_LEN: usize = 4 + 2 + 8 + 4 * 3 + 1;

impl CounterRecord {
    /// The record for `s` with `counters`.
    pub fn of(s: &Session, counters: FrameCounters, rekey_confirmed: bool) -> Self {
        Self {
            dev_addr: s.dev_addr,
            dev_nonce: s.dev_nonce.0,
            created_at_ms: s.created_at_ms,
            counters,
            rekey_confirmed,
        }
    }

    fn encode(&self) -> [u8; RECORD_LEN] {
        let mut b = [0u8; RECORD_LEN];
        b[0..4].copy_from_slice(&self.dev_addr.as_u32().to_le_bytes());
        b[4..6].copy_from_slice(&self.dev_nonce.to_le_bytes());
        b[6..14].copy_from_slice(&self.created_at_ms.to_le_bytes());
        b[14..18].copy_from_slice(&self.counters.f_cnt_up.to_le_bytes());
        b[18..22].copy_from_slice(&self.counters.n_f_cnt_down.to_le_bytes());
        b[22..26].copy_from_slice(&self.counters.a_f_cnt_down.to_le_bytes());
        b[26] = u8::from(self.rekey_confirmed);
        b
    }

    fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != RECORD_LEN {
            return None;
        }
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let mut ms = [0u8; 8];
        ms.copy_from_slice(&b[6..14]);
        Some(Self {
            dev_addr: DevAddr::new(u32_at(0)),
            dev_nonce: u16::from_le_bytes([b[4], b[5]]),
            created_at_ms: u64::from_le_bytes(ms),
            counters: FrameCounters {
                f_cnt_up: u32_at(14),
                n_f_cnt_down: u32_at(18),
                a_f_cnt_down: u32_at(22),
            },
            rekey_confirmed: b[26] & 1 != 0,
        })
    }

    /// Whether this record belongs to `s` (same session, not a predecessor).
    pub fn belongs_to(&self, s: &crate::session::StoredSession) -> bool {
        self.dev_addr == s.dev_addr
            && self.dev_nonce == s.dev_nonce.0
            && self.created_at_ms == s.created_at_ms
    }
}

/// The counter log file.
pub struct CounterLog {
    db: redb::Database,
}

impl std::fmt::Debug for CounterLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CounterLog")
    }
}

impl CounterLog {
    /// File name inside the data directory.
    pub const FILE: &'static str = "uplinks.redb";
    /// redb's page cache for this file: the counter records are small (about 50 bytes each in
    /// the B-tree), so this holds those of a million sessions; redb's default is 1 GiB.
    pub const CACHE_BYTES: usize = 64 << 20;

    /// Opens (creating if needed) `dir/uplinks.redb`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = open_redb(dir, Self::FILE, Self::CACHE_BYTES, &[COUNTERS])?;
        Ok(Self { db })
    }

    /// Every record.
    pub fn load(&self) -> Result<HashMap<DevEui, CounterRecord>, StoreError> {
        use redb::{ReadableDatabase, ReadableTable};
        let tx = self.db.begin_read().map_err(backend_err)?;
        let table = tx.open_table(COUNTERS).map_err(backend_err)?;
        let mut out = HashMap::new();
        for row in table.iter().map_err(backend_err)? {
            let (k, v) = row.map_err(backend_err)?;
            let dev_eui = DevEui::new(k.value());
            let rec = CounterRecord::decode(v.value()).ok_or_else(|| StoreError::Corrupt {
                dev_eui,
                reason: "counter record of the wrong length".into(),
            })?;
            out.insert(dev_eui, rec);
        }
        Ok(out)
    }

    /// Commits a batch in one transaction (later records of a device replace earlier ones).
    pub fn commit(&self, batch: &[(DevEui, CounterRecord)]) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(backend_err)?;
        {
            let mut t = tx.open_table(COUNTERS).map_err(backend_err)?;
            for (d, r) in batch {
                t.insert(d.as_u64(), r.encode().as_slice())
                    .map_err(backend_err)?;
            }
        }
        tx.commit().map_err(backend_err)
    }
}

/// Applies the durable counters of `records` to a stored session about to be restored.
/// Returns the 1.1 rekey flag to set on its live state.
pub fn restore_counters(
    records: &HashMap<DevEui, CounterRecord>,
    stored: &mut crate::session::StoredSession,
) -> bool {
    match records.get(&stored.dev_eui) {
        Some(r) if r.belongs_to(stored) => {
            stored.counters = r.counters;
            r.rekey_confirmed
        }
        _ => false,
    }
}

/// A downlink to send once its counter is durable.
#[derive(Debug, Clone)]
pub struct OutgoingDownlink {
    /// The PULL_RESP datagram.
    pub datagram: Vec<u8>,
    /// The gateway's PULL_DATA address.
    pub to: SocketAddr,
}

/// What one uplink (or one downlink) leaves for the emitter.
#[derive(Debug, Default)]
pub struct Emit {
    /// The session's new counters, committed before anything else of the batch leaves.
    pub record: Option<(DevEui, CounterRecord)>,
    /// JSON event lines (without newline).
    pub events: Vec<Vec<u8>>,
    /// A downlink.
    pub downlink: Option<OutgoingDownlink>,
    /// When the uplink's PUSH_DATA arrived: its latency is measured to the event's write.
    pub started: Option<Instant>,
}

/// Where application events go.
#[derive(Debug)]
pub enum EventSink {
    /// Nowhere (no integration configured).
    Discard,
    /// Appended to a file.
    File(std::fs::File),
    /// Standard output.
    Stdout,
    /// UDP datagrams to one address: one event per datagram, or packed.
    Udp(UdpEvents),
}

/// The UDP event sink: `udp://HOST:PORT` (one event per datagram) or
/// `udp://HOST:PORT?pack=BYTES` (as many whole JSON lines per datagram as fit in `BYTES`).
#[derive(Debug)]
pub struct UdpEvents {
    socket: UdpSocket,
    to: SocketAddr,
    /// 0: one event per datagram, without newline. Else the most bytes per datagram.
    pack: usize,
}

impl UdpEvents {
    /// The largest UDP payload over IPv4.
    pub const MAX_DATAGRAM: usize = 65_507;

    /// Parses `HOST:PORT[?pack=BYTES]` (what follows `udp://`) and binds a socket for it.
    fn open(spec: &str) -> std::io::Result<Self> {
        use std::io::{Error, ErrorKind};
        use std::net::ToSocketAddrs;
        let (addr, query) = spec.split_once('?').unwrap_or((spec, ""));
        let mut pack = 0;
        for param in query.split('&').filter(|p| !p.is_empty()) {
            let bytes = param
                .strip_prefix("pack=")
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::InvalidInput,
                        format!(
                            "unknown parameter `{param}` in the UDP event sink (known: pack=BYTES)"
                        ),
                    )
                })?
                .parse::<usize>()
                .ok()
                .filter(|b| (1..=Self::MAX_DATAGRAM).contains(b))
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::InvalidInput,
                        format!(
                            "`{param}`: pack takes the most bytes per datagram, 1 to {}",
                            Self::MAX_DATAGRAM
                        ),
                    )
                })?;
            pack = bytes;
        }
        let to = addr
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| Error::new(ErrorKind::NotFound, "address resolves to nothing"))?;
        let bind: SocketAddr = if to.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        Ok(Self {
            socket: UdpSocket::bind(bind)?,
            to,
            pack,
        })
    }

    /// Sends `lines`: one datagram each, or packed whole into datagrams of at most `pack`
    /// bytes, each line ended by a newline (a line longer than that goes alone).
    fn send(&self, lines: &[&[u8]], buf: &mut Vec<u8>) -> std::io::Result<()> {
        if self.pack == 0 {
            for l in lines {
                self.socket.send_to(l, self.to)?;
            }
            return Ok(());
        }
        buf.clear();
        for l in lines {
            if !buf.is_empty() && buf.len() + l.len() + 1 > self.pack {
                self.socket.send_to(buf, self.to)?;
                buf.clear();
            }
            buf.extend_from_slice(l);
            buf.push(b'\n');
        }
        if !buf.is_empty() {
            self.socket.send_to(buf, self.to)?;
        }
        Ok(())
    }
}

impl EventSink {
    /// Whether the events can be read back at start (a file): they are then written before
    /// the counter commit.
    pub fn is_file(&self) -> bool {
        matches!(self, Self::File(_))
    }

    /// From the `data.events` setting: empty = discard, `-` = stdout,
    /// `udp://HOST:PORT[?pack=BYTES]`, or a file path (appended to, created if missing).
    pub fn open(spec: &str) -> std::io::Result<Self> {
        let spec = spec.trim();
        if spec.is_empty() {
            return Ok(Self::Discard);
        }
        if spec == "-" {
            return Ok(Self::Stdout);
        }
        if let Some(addr) = spec.strip_prefix("udp://") {
            return UdpEvents::open(addr).map(Self::Udp);
        }
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(spec)?;
        Ok(Self::File(f))
    }

    /// Writes the lines of a batch.
    fn write_batch(&mut self, lines: &[&[u8]], buf: &mut Vec<u8>) -> std::io::Result<()> {
        match self {
            Self::Discard => Ok(()),
            Self::Udp(u) => u.send(lines, buf),
            Self::File(_) | Self::Stdout => {
                buf.clear();
                for l in lines {
                    buf.extend_from_slice(l);
                    buf.push(b'\n');
                }
                match self {
                    Self::File(f) => {
                        f.write_all(buf)?;
                        f.sync_data()
                    }
                    _ => {
                        let mut out = std::io::stdout().lock();
                        out.write_all(buf)?;
                        out.flush()
                    }
                }
            }
        }
    }
}

/// The handle the data path emits through. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Emitter {
    tx: SyncSender<Emit>,
}

/// The emitter thread; [`EmitterThread::join`] waits for it once every [`Emitter`] is dropped.
#[derive(Debug)]
pub struct EmitterThread(JoinHandle<()>);

impl EmitterThread {
    /// Waits for the queue to be drained and the thread to exit.
    pub fn join(self) {
        let _ = self.0.join();
    }
}

impl Emitter {
    /// Starts the emitter thread. `downlinks` sends PULL_RESPs (a GWMP socket).
    pub fn start(
        log: CounterLog,
        sink: EventSink,
        downlinks: UdpSocket,
        max_batch: usize,
        metrics: Metrics,
    ) -> std::io::Result<(Self, EmitterThread)> {
        let (tx, rx) = std::sync::mpsc::sync_channel(max_batch.max(1) * 16);
        let h = std::thread::Builder::new()
            .name("netserver-emitter".into())
            .spawn(move || emit_loop(log, sink, downlinks, rx, max_batch.max(1), metrics))?;
        Ok((Self { tx }, EmitterThread(h)))
    }

    /// Queues an emit. Blocks while the queue is full (back-pressure on the socket loops);
    /// `false` if the emitter has stopped.
    pub fn emit(&self, e: Emit) -> bool {
        match self.tx.try_send(e) {
            Ok(()) => true,
            Err(TrySendError::Full(e)) => self.tx.send(e).is_ok(),
            Err(TrySendError::Disconnected(_)) => false,
        }
    }
}

fn emit_loop(
    log: CounterLog,
    mut sink: EventSink,
    downlinks: UdpSocket,
    rx: Receiver<Emit>,
    max_batch: usize,
    metrics: Metrics,
) {
    let m = &metrics.data;
    let mut batch: Vec<Emit> = Vec::with_capacity(max_batch);
    let mut records = Vec::with_capacity(max_batch);
    let mut buf = Vec::with_capacity(1 << 16);
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(e) => batch.push(e),
                Err(_) => break,
            }
        }
        records.clear();
        records.extend(batch.iter().filter_map(|e| e.record));
        let lines: Vec<&[u8]> = batch
            .iter()
            .flat_map(|e| e.events.iter().map(Vec::as_slice))
            .collect();
        let events_first = sink.is_file();
        if events_first {
            write_events(&mut sink, &lines, &mut buf, m);
        }
        let committed = records.is_empty()
            || {
                match log.commit(&records) {
                    Ok(()) => {
                        m.counter_commits.with_label_values(&["ok"]).inc();
                        true
                    }
                    Err(e) => {
                        m.counter_commits.with_label_values(&["error"]).inc();
                        tracing::error!(error = %e, writes = records.len(), "counter commit failed; the batch's downlinks are dropped");
                        false
                    }
                }
            };
        if committed && !events_first {
            write_events(&mut sink, &lines, &mut buf, m);
        }
        if committed {
            let now = Instant::now();
            for e in &batch {
                if let Some(d) = &e.downlink {
                    let label = match send_nonblocking(&downlinks, &d.datagram, d.to) {
                        Ok(_) => "sent",
                        Err(_) => "send_failed",
                    };
                    m.downlinks.with_label_values(&[label]).inc();
                    if label == "sent" {
                        metrics.pull_resp.inc();
                    }
                }
                if let Some(t) = e.started {
                    m.uplink_latency
                        .observe(now.saturating_duration_since(t).as_secs_f64());
                }
            }
        } else {
            for e in &batch {
                if e.downlink.is_some() {
                    m.downlinks.with_label_values(&["commit_failed"]).inc();
                }
            }
        }
        drop(lines);
        batch.clear();
    }
}

fn write_events(
    sink: &mut EventSink,
    lines: &[&[u8]],
    buf: &mut Vec<u8>,
    m: &crate::data_path::DataMetrics,
) {
    if lines.is_empty() {
        return;
    }
    if let Err(e) = sink.write_batch(lines, buf) {
        m.events
            .with_label_values(&["write_failed"])
            .inc_by(lines.len() as u64);
        tracing::error!(error = %e, "writing application events failed");
    } else {
        m.events
            .with_label_values(&["written"])
            .inc_by(lines.len() as u64);
    }
}

/// The uplinks delivered per device according to the tail of the event file (the last
/// `tail_bytes`): the DevAddr and highest FCnt after the device's last join event. A partial
/// last line (a crash inside a write) is cut off the file.
pub fn recover_delivered(
    path: &Path,
    tail_bytes: u64,
) -> std::io::Result<HashMap<DevEui, (DevAddr, u32)>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut out = HashMap::new();
    let mut f = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    let start = len.saturating_sub(tail_bytes);
    f.seek(SeekFrom::Start(start))?;
    let mut text = Vec::with_capacity((len - start) as usize);
    f.read_to_end(&mut text)?;
    let complete = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if complete < text.len() {
        tracing::warn!(
            bytes = text.len() - complete,
            "cutting a partial last line off the event file"
        );
        f.set_len(start + complete as u64)?;
        f.sync_data()?;
    }
    #[derive(serde::Deserialize)]
    struct Line {
        #[serde(rename = "type")]
        kind: String,
        dev_eui: DevEui,
        dev_addr: Option<DevAddr>,
        f_cnt: Option<u32>,
    }
    // The first line of a tail may be cut in the middle: skip it unless the tail is the file.
    let mut lines = text[..complete].split(|&b| b == b'\n');
    if start > 0 {
        lines.next();
    }
    for l in lines.filter(|l| !l.is_empty()) {
        let Ok(line) = serde_json::from_slice::<Line>(l) else {
            continue;
        };
        match (line.kind.as_str(), line.dev_addr, line.f_cnt) {
            ("join", _, _) => {
                out.remove(&line.dev_eui);
            }
            ("uplink", Some(addr), Some(fcnt)) => {
                let e = out.entry(line.dev_eui).or_insert((addr, fcnt));
                if e.0 != addr || fcnt > e.1 {
                    *e = (addr, fcnt);
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Advances a stored session's FCntUp past the last uplink the event file shows delivered
/// for it (same DevAddr).
pub fn apply_delivered(
    delivered: &HashMap<DevEui, (DevAddr, u32)>,
    stored: &mut crate::session::StoredSession,
) {
    if let Some(&(addr, fcnt)) = delivered.get(&stored.dev_eui) {
        if addr == stored.dev_addr && fcnt.wrapping_add(1) > stored.counters.f_cnt_up {
            stored.counters.f_cnt_up = fcnt.wrapping_add(1);
        }
    }
}

/// Sends on a non-blocking socket (shared with a socket loop), waiting out a full send buffer
/// for up to 50 ms.
fn send_nonblocking(s: &UdpSocket, d: &[u8], to: SocketAddr) -> std::io::Result<usize> {
    let deadline = Instant::now() + std::time::Duration::from_millis(50);
    loop {
        match s.send_to(d, to) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::tests::stored;

    #[test]
    fn records_round_trip_and_apply_only_to_their_session() {
        let dir = tempfile::tempdir().unwrap();
        let log = CounterLog::open(dir.path()).unwrap();
        let mut s = stored(1, 0x2600_0001);
        let rec = CounterRecord {
            dev_addr: s.dev_addr,
            dev_nonce: s.dev_nonce.0,
            created_at_ms: s.created_at_ms,
            counters: FrameCounters {
                f_cnt_up: 77,
                n_f_cnt_down: 5,
                a_f_cnt_down: 9,
            },
            rekey_confirmed: true,
        };
        log.commit(&[(s.dev_eui, rec)]).unwrap();
        drop(log);
        let records = CounterLog::open(dir.path()).unwrap().load().unwrap();
        assert_eq!(records[&s.dev_eui], rec);
        assert!(restore_counters(&records, &mut s));
        assert_eq!(s.counters.f_cnt_up, 77);
        // A new join (another DevNonce) starts from 0.
        let mut fresh = stored(1, 0x2600_0001);
        fresh.dev_nonce.0 += 1;
        assert!(!restore_counters(&records, &mut fresh));
        assert_eq!(fresh.counters, FrameCounters::default());
    }

    #[test]
    fn delivered_uplinks_are_recovered_from_the_event_file_tail() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("events.jsonl");
        let up = |d: &str, a: &str, f: u32| {
            format!(
                "{{\"type\":\"uplink\",\"dev_eui\":\"{d}\",\"dev_addr\":\"{a}\",\"f_cnt\":{f}}}\n"
            )
        };
        let mut text = String::new();
        text += &up("0000000000000001", "26000001", 7);
        text += &up("0000000000000001", "26000001", 8);
        text += &up("0000000000000002", "26000002", 3);
        text += "{\"type\":\"join\",\"dev_eui\":\"0000000000000002\",\"dev_addr\":\"26000009\"}\n";
        text += &up("0000000000000003", "26000003", 1);
        text += "{\"type\":\"uplink\",\"dev_eui\":\"00000000000000";
        std::fs::write(&p, &text).unwrap();
        let d = recover_delivered(&p, 1 << 20).unwrap();
        assert_eq!(d[&DevEui::new(1)], (DevAddr::new(0x2600_0001), 8));
        assert!(!d.contains_key(&DevEui::new(2)), "joined again since");
        assert_eq!(d[&DevEui::new(3)].1, 1);
        assert!(
            std::fs::read_to_string(&p)
                .unwrap()
                .ends_with("\"f_cnt\":1}\n"),
            "partial line cut"
        );
        let mut s = stored(1, 0x2600_0001);
        apply_delivered(&d, &mut s);
        assert_eq!(s.counters.f_cnt_up, 9);
        let mut other = stored(1, 0x2600_0777);
        apply_delivered(&d, &mut other);
        assert_eq!(other.counters.f_cnt_up, 0, "another session's address");
        assert!(recover_delivered(&dir.path().join("none"), 100)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn events_are_written_only_after_the_commit() {
        let dir = tempfile::tempdir().unwrap();
        let events = dir.path().join("events.jsonl");
        let sink = EventSink::open(events.to_str().unwrap()).unwrap();
        let m = Metrics::new();
        let (em, t) = Emitter::start(
            CounterLog::open(dir.path()).unwrap(),
            sink,
            UdpSocket::bind("127.0.0.1:0").unwrap(),
            8,
            m.clone(),
        )
        .unwrap();
        let s = stored(2, 0x2600_0002);
        for i in 1..=20u32 {
            let rec = CounterRecord {
                dev_addr: s.dev_addr,
                dev_nonce: s.dev_nonce.0,
                created_at_ms: s.created_at_ms,
                counters: FrameCounters {
                    f_cnt_up: i,
                    ..FrameCounters::default()
                },
                rekey_confirmed: false,
            };
            assert!(em.emit(Emit {
                record: Some((s.dev_eui, rec)),
                events: vec![format!("{{\"f_cnt\":{}}}", i - 1).into_bytes()],
                downlink: None,
                started: Some(Instant::now()),
            }));
        }
        drop(em);
        t.join();
        let text = std::fs::read_to_string(&events).unwrap();
        assert_eq!(text.lines().count(), 20);
        assert_eq!(text.lines().last(), Some("{\"f_cnt\":19}"));
        let records = CounterLog::open(dir.path()).unwrap().load().unwrap();
        assert_eq!(records[&s.dev_eui].counters.f_cnt_up, 20);
        assert_eq!(m.data.uplink_latency.get_sample_count(), 20);
        assert!(m.data.counter_commits.with_label_values(&["ok"]).get() >= 3);
    }

    fn udp_sink(query: &str) -> (EventSink, UdpSocket) {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let spec = format!("udp://{}{query}", rx.local_addr().unwrap());
        (EventSink::open(&spec).unwrap(), rx)
    }

    fn datagrams(rx: &UdpSocket, n: usize) -> Vec<Vec<u8>> {
        let mut buf = [0u8; 65_536];
        (0..n)
            .map(|_| {
                let (len, _) = rx.recv_from(&mut buf).unwrap();
                buf[..len].to_vec()
            })
            .collect()
    }

    #[test]
    fn udp_events_go_one_per_datagram_by_default() {
        let (mut sink, rx) = udp_sink("");
        let lines: [&[u8]; 3] = [b"{\"f_cnt\":1}", b"{\"f_cnt\":2}", b"{\"f_cnt\":3}"];
        sink.write_batch(&lines, &mut Vec::new()).unwrap();
        let got = datagrams(&rx, 3);
        assert_eq!(got, lines.map(<[u8]>::to_vec));
    }

    #[test]
    fn udp_events_are_packed_whole_into_datagrams_of_at_most_pack_bytes() {
        let (mut sink, rx) = udp_sink("?pack=40");
        // 12 + 1 bytes each: three fit in 40 bytes, a fourth would not.
        let short: Vec<Vec<u8>> = (0..7)
            .map(|i| format!("{{\"f_cnt\":{i:02}}}").into_bytes())
            .collect();
        let long = vec![b'x'; 50];
        let mut lines: Vec<&[u8]> = short.iter().map(Vec::as_slice).collect();
        lines.insert(4, &long);
        sink.write_batch(&lines, &mut Vec::new()).unwrap();
        let got: Vec<String> = datagrams(&rx, 4)
            .into_iter()
            .map(|d| String::from_utf8(d).unwrap())
            .collect();
        let line = |i: usize| format!("{{\"f_cnt\":{i:02}}}\n");
        assert_eq!(
            got,
            [
                line(0) + &line(1) + &line(2),
                line(3),
                format!("{}\n", "x".repeat(50)),
                line(4) + &line(5) + &line(6),
            ]
        );
        rx.set_read_timeout(Some(std::time::Duration::from_millis(100)))
            .unwrap();
        assert!(rx.recv_from(&mut [0u8; 64]).is_err(), "no fifth datagram");
    }

    #[test]
    fn udp_sink_parameters_are_checked() {
        for (spec, needle) in [
            ("udp://127.0.0.1:9?pack=0", "1 to 65507"),
            ("udp://127.0.0.1:9?pack=70000", "1 to 65507"),
            ("udp://127.0.0.1:9?pack=many", "1 to 65507"),
            ("udp://127.0.0.1:9?batch=10", "unknown parameter `batch=10`"),
        ] {
            let e = EventSink::open(spec).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{spec}");
            assert!(e.to_string().contains(needle), "{spec}: {e}");
        }
        assert!(matches!(
            EventSink::open("udp://127.0.0.1:9?pack=1472"),
            Ok(EventSink::Udp(UdpEvents { pack: 1472, .. }))
        ));
    }
}
