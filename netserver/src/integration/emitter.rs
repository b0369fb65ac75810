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
//! At start, [`crate::integration::recover::recover_delivered`] reads the file's tail and advances every counter past the
//! last uplink it delivered, so a crash between 1 and 2 neither loses nor repeats an event;
//! a partial last line (a crash inside the write) is cut off. Window: none.
//!
//! **Events to stdout or UDP** (which cannot be read back): the commit comes first, then the
//! events, then the downlinks. A crash between the commit and the write loses that batch's
//! events (at most one group commit) but never repeats one.
//!
//! **A shared store** (PostgreSQL, several instances): the commit is checked
//! ([`CounterBackend::commit_checked`]) and comes first, whatever the sink; an uplink whose
//! counter another instance already committed (a copy it delivered, or a replay) is not
//! delivered, a downlink whose FCntDown another instance used does not leave, and the local
//! session catches up with the committed counters ([`CatchUp`]).
//!
//! If a commit fails, the batch's downlinks are dropped (and, for stdout/UDP, its events);
//! the in-memory counters stay advanced, so no frame is accepted twice.
//!
//! The counters live beside the session store, not in it: a session record is written once at
//! the join, its counters at every uplink. Each counter record carries the identity of the
//! session it belongs to (DevAddr, DevNonce, creation time), so the record of a replaced
//! session is never applied to its successor.

use std::net::{SocketAddr, UdpSocket};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use protocol::ids::DevEui;

use crate::core::uplink::ScheduledDownlink;
use crate::gateway::handoff::HandoffKey;
use crate::integration::sink::EventSink;
use crate::ops::metrics::{DataMetrics, Metrics};
use crate::store::counters::{CounterBackend, CounterRecord, QueueItems, Verdict};
use crate::store::queue::QueuedDownlink;

/// What one uplink (or one downlink) leaves for the emitter.
#[derive(Debug, Default)]
pub struct Emit {
    /// The session's new counters, committed before anything else of the batch leaves.
    pub record: Option<(DevEui, CounterRecord)>,
    /// JSON event lines (without newline).
    pub events: Vec<Vec<u8>>,
    /// A downlink.
    pub downlink: Option<ScheduledDownlink>,
    /// When the uplink's PUSH_DATA arrived: its latency is measured to the event's write.
    pub started: Option<Instant>,
}

/// How the emitter thread gathers emits into one group commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// The most emits in one group commit.
    pub max: usize,
    /// The least time from one group commit's start to the next's: emits that arrive sooner
    /// wait for the rest of it and share the next commit. Under load that spares the socket
    /// loops a wake-up of this thread per emit (a futex call and a context switch each, about
    /// 4 % of the network server in a join storm); an emit after a quiet spell goes at once.
    pub interval: Duration,
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
        log: impl CounterBackend,
        sink: impl EventSink,
        downlinks: UdpSocket,
        max_batch: usize,
        metrics: Metrics,
    ) -> std::io::Result<(Self, EmitterThread)> {
        let batching = Batching {
            max: max_batch,
            interval: Duration::ZERO,
        };
        Self::start_with(
            log,
            sink,
            (downlinks, None),
            batching,
            metrics,
            Hooks::default(),
        )
    }

    /// [`Self::start`], with the hooks a shared store's refusals and the downlinks that did not
    /// leave are reported to, and the key that hands a downlink to the instance holding its
    /// gateway (several instances).
    pub fn start_with(
        log: impl CounterBackend,
        sink: impl EventSink,
        (downlinks, handoff): (UdpSocket, Option<Arc<HandoffKey>>),
        batching: Batching,
        metrics: Metrics,
        hooks: Hooks,
    ) -> std::io::Result<(Self, EmitterThread)> {
        let batching = Batching {
            max: batching.max.max(1),
            ..batching
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(batching.max * 16);
        let l = Loop {
            log,
            sink,
            downlinks: Downlinks {
                socket: downlinks,
                handoff,
            },
            hooks,
            metrics,
        };
        let h = std::thread::Builder::new()
            .name("netserver-emitter".into())
            .spawn(move || emit_loop(l, rx, batching))?;
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

/// Called with each counter record a shared store refused, and what is committed instead: the
/// local session catches up (a no-op for a store with one writer, which refuses nothing).
pub type CatchUp = Box<dyn Fn(DevEui, &CounterRecord) + Send>;

/// Called with the queued application downlinks whose downlink did not leave (a refused or
/// failed commit): they go back to their device's queue.
pub type Requeue = Box<dyn Fn(Vec<(DevEui, QueuedDownlink)>) + Send>;

/// What the emitter reports to.
#[derive(Default)]
pub struct Hooks {
    /// A shared store's committed records that differ from the local ones.
    pub catch_up: Option<CatchUp>,
    /// The queued downlinks that did not leave (none: they are dropped).
    pub requeue: Option<Requeue>,
}

/// The queued items of a batch's downlinks that may leave given the verdicts: taken in the
/// counters' transaction.
fn to_take(batch: &[Emit], verdicts: &[Verdict]) -> QueueItems {
    with_verdicts(batch, verdicts)
        .filter(|(e, v)| permits(e, *v).1)
        .filter_map(|(e, _)| {
            let (d, q) = e.downlink.as_ref()?.queued.as_deref()?;
            Some((*d, q.id))
        })
        .collect()
}

/// Refuses the downlinks whose queued item was not taken (another instance sent it), and
/// returns the items of every downlink that does not leave, to be put back.
fn settle_queued(
    batch: &[Emit],
    allowed: &mut [(bool, bool)],
    taken: &[u64],
    m: &DataMetrics,
) -> Vec<(DevEui, QueuedDownlink)> {
    let mut back = Vec::new();
    for (e, a) in batch.iter().zip(allowed.iter_mut()) {
        let Some((d, q)) = e.downlink.as_ref().and_then(|d| d.queued.as_deref()) else {
            continue;
        };
        if a.1 && !taken.contains(&q.id) {
            a.1 = false;
            m.shared
                .with_label_values(&["queue_item_sent_elsewhere"])
                .inc();
        } else if !a.1 {
            back.push((*d, q.clone()));
        }
    }
    back
}
/// What of an emit may leave given its record's verdict (none: an emit without a record, a
/// join event): (its events, its downlink).
fn permits(e: &Emit, v: Option<Verdict>) -> (bool, bool) {
    let Some(v) = v else {
        return (true, true);
    };
    // A downlink answers its uplink: not if another instance delivered that uplink (and
    // answered it), unless the emit is a downlink alone (a repeat's ACK).
    (v.uplink, v.downlink && (v.uplink || e.events.is_empty()))
}

/// Each emit of a batch with its record's verdict.
fn with_verdicts<'a>(
    batch: &'a [Emit],
    verdicts: &'a [Verdict],
) -> impl Iterator<Item = (&'a Emit, Option<Verdict>)> {
    let mut verdicts = verdicts.iter();
    batch.iter().map(move |e| {
        let v = e
            .record
            .map(|_| verdicts.next().copied().unwrap_or(Verdict::ACCEPTED));
        (e, v)
    })
}

/// The event lines of a batch that may leave.
fn permitted_lines(batch: &[Emit], verdicts: &[Verdict]) -> Vec<Vec<u8>> {
    with_verdicts(batch, verdicts)
        .filter(|(e, v)| permits(e, *v).0)
        .flat_map(|(e, _)| e.events.iter().cloned())
        .collect()
}

/// What may leave for each emit of a batch, from the commit's verdicts; counts the refusals
/// and reports the committed records to `catch_up`.
fn allowed(
    batch: &[Emit],
    verdicts: &[Verdict],
    catch_up: Option<&CatchUp>,
    m: &DataMetrics,
) -> Vec<(bool, bool)> {
    with_verdicts(batch, verdicts)
        .map(|(e, v)| {
            let permitted = permits(e, v);
            if let (Some(v), Some((dev_eui, rec))) = (v, &e.record) {
                if !v.uplink && !e.events.is_empty() {
                    m.shared.with_label_values(&["uplink_counted"]).inc();
                }
                if !v.downlink && e.downlink.is_some() {
                    m.shared.with_label_values(&["downlink_counter_used"]).inc();
                }
                if let (Some(c), Some(hook)) = (v.committed, catch_up) {
                    if c != *rec {
                        hook(*dev_eui, &c);
                    }
                }
            }
            permitted
        })
        .collect()
}

/// Where downlinks leave from: a GWMP socket, and the hand-off key for gateways another
/// instance holds.
struct Downlinks {
    socket: UdpSocket,
    handoff: Option<Arc<HandoffKey>>,
}

impl Downlinks {
    /// Sends `d`: its PULL_RESP to the gateway, or sealed to the owner instance.
    fn send(&self, d: &ScheduledDownlink) -> std::io::Result<usize> {
        match (&self.handoff, d.via_owner) {
            (_, false) => send_nonblocking(&self.socket, &d.datagram, d.to),
            (Some(key), true) => {
                let now_ms = protocol::time::unix_ms(std::time::SystemTime::now());
                let sealed = key.seal(d.gateway, &d.datagram, now_ms);
                send_nonblocking(&self.socket, &sealed, d.to)
            }
            (None, true) => Err(std::io::Error::other("no hand-off key")),
        }
    }
}

/// The loop's fixed parts.
struct Loop<L, S> {
    log: L,
    sink: S,
    downlinks: Downlinks,
    hooks: Hooks,
    metrics: Metrics,
}

fn emit_loop<L: CounterBackend, S: EventSink>(
    mut l: Loop<L, S>,
    rx: Receiver<Emit>,
    batching: Batching,
) {
    let metrics = l.metrics.clone();
    let m = &metrics.data;
    let mut batch: Vec<Emit> = Vec::with_capacity(batching.max);
    let mut records = Vec::with_capacity(batching.max);
    let mut buf = Vec::with_capacity(1 << 16);
    // With other writers, a record may be refused: nothing leaves before its verdict.
    let events_first = l.sink.readable_back() && !l.log.shared();
    let mut last_start: Option<Instant> = None;
    while let Ok(first) = rx.recv() {
        gather(&rx, first, (batching, &mut last_start), &mut batch);
        records.clear();
        records.extend(batch.iter().filter_map(|e| e.record));
        if events_first {
            let lines: Vec<&[u8]> = batch
                .iter()
                .flat_map(|e| e.events.iter().map(Vec::as_slice))
                .collect();
            write_events(&mut l.sink, &lines, &mut buf, m);
        }
        let verdicts = if records.is_empty() {
            Some((Vec::new(), Vec::new()))
        } else {
            let lines = |v: &[Verdict]| permitted_lines(&batch, v);
            let take = |v: &[Verdict]| to_take(&batch, v);
            match l.log.commit_taking(&records, &lines, &take) {
                Ok(v) => {
                    m.counter_commits.with_label_values(&["ok"]).inc();
                    Some(v)
                }
                Err(e) => {
                    m.counter_commits.with_label_values(&["error"]).inc();
                    tracing::error!(error = %e, writes = records.len(), "counter commit failed; the batch's downlinks are dropped");
                    None
                }
            }
        };
        let back = match verdicts {
            Some((v, taken)) => {
                let mut allowed = allowed(&batch, &v, l.hooks.catch_up.as_ref(), m);
                let back = settle_queued(&batch, &mut allowed, &taken, m);
                if !events_first {
                    let lines: Vec<&[u8]> = batch
                        .iter()
                        .zip(&allowed)
                        .filter(|(_, a)| a.0)
                        .flat_map(|(e, _)| e.events.iter().map(Vec::as_slice))
                        .collect();
                    write_events(&mut l.sink, &lines, &mut buf, m);
                }
                send_downlinks(&l.downlinks, &batch, &allowed, &metrics);
                back
            }
            None => {
                for e in &batch {
                    if e.downlink.is_some() {
                        m.downlinks.with_label_values(&["commit_failed"]).inc();
                    }
                }
                batch
                    .iter()
                    .filter_map(|e| e.downlink.as_ref()?.queued.as_deref().cloned())
                    .collect()
            }
        };
        if let (false, Some(requeue)) = (back.is_empty(), &l.hooks.requeue) {
            requeue(back);
        }
        batch.clear();
    }
}

/// Fills `batch` from `first` and what is queued, up to the batch's limit. Too soon after the
/// previous commit began (`last_start`), the rest of the interval gathers more first (the
/// socket loops' sends meanwhile find no sleeper to wake).
fn gather(
    rx: &Receiver<Emit>,
    first: Emit,
    (batching, last_start): (Batching, &mut Option<Instant>),
    batch: &mut Vec<Emit>,
) {
    if let Some(due) = last_start.map(|t| t + batching.interval) {
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
    }
    *last_start = Some(Instant::now());
    batch.push(first);
    while batch.len() < batching.max {
        match rx.try_recv() {
            Ok(e) => batch.push(e),
            Err(_) => break,
        }
    }
}

/// Sends the allowed downlinks of a committed batch and records the uplinks' latency.
fn send_downlinks(
    downlinks: &Downlinks,
    batch: &[Emit],
    allowed: &[(bool, bool)],
    metrics: &Metrics,
) {
    let m = &metrics.data;
    let now = Instant::now();
    for (e, &(uplink, downlink)) in batch.iter().zip(allowed) {
        if let (Some(d), true) = (&e.downlink, downlink) {
            let label = match downlinks.send(d) {
                Ok(_) => "sent",
                Err(_) => "send_failed",
            };
            m.downlinks.with_label_values(&[label]).inc();
            if label == "sent" && d.via_owner {
                // The owner sends the PULL_RESP on, and counts it.
                m.shared.with_label_values(&["handoff_sent"]).inc();
            } else if label == "sent" {
                metrics.pull_resp.inc();
            }
        }
        if let (Some(t), true) = (e.started, uplink) {
            m.uplink_latency
                .observe(now.saturating_duration_since(t).as_secs_f64());
        }
    }
}

fn write_events(sink: &mut impl EventSink, lines: &[&[u8]], buf: &mut Vec<u8>, m: &DataMetrics) {
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

/// Sends on a non-blocking socket (shared with a socket loop), waiting out a full send buffer
/// for up to 50 ms.
fn send_nonblocking(s: &UdpSocket, d: &[u8], to: SocketAddr) -> std::io::Result<usize> {
    let deadline = Instant::now() + Duration::from_millis(50);
    loop {
        match s.send_to(d, to) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_micros(200));
            }
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::device::FrameCounters;
    use crate::integration::sink::ConfiguredSink;
    use crate::store::counters::CounterLog;
    use crate::store::stored::tests::stored;

    /// An uplink's emit: its counter record and one event line.
    fn uplink(s: &crate::store::stored::StoredSession, f_cnt_up: u32) -> Emit {
        let rec = CounterRecord {
            dev_addr: s.dev_addr,
            dev_nonce: s.dev_nonce.0,
            created_at_ms: s.created_at_ms,
            counters: FrameCounters {
                f_cnt_up,
                ..FrameCounters::default()
            },
            rekey_confirmed: false,
            pending: None,
        };
        Emit {
            record: Some((s.dev_eui, rec)),
            events: vec![format!("{{\"f_cnt\":{}}}", f_cnt_up - 1).into_bytes()],
            downlink: None,
            started: Some(Instant::now()),
        }
    }

    /// An event file in `dir` and its sink.
    fn file_sink(dir: &tempfile::TempDir) -> (std::path::PathBuf, ConfiguredSink) {
        let events = dir.path().join("events.jsonl");
        let sink = ConfiguredSink::open(events.to_str().unwrap()).unwrap();
        (events, sink)
    }

    #[test]
    fn emits_within_the_interval_share_one_commit() {
        let dir = tempfile::tempdir().unwrap();
        let (events, sink) = file_sink(&dir);
        let m = Metrics::new();
        let batching = Batching {
            max: 64,
            interval: Duration::from_secs(1),
        };
        let (em, t) = Emitter::start_with(
            CounterLog::open(dir.path()).unwrap(),
            sink,
            (UdpSocket::bind("127.0.0.1:0").unwrap(), None),
            batching,
            m.clone(),
            Hooks::default(),
        )
        .unwrap();
        let commits = || m.data.counter_commits.with_label_values(&["ok"]).get();
        let lines = || std::fs::read_to_string(&events).unwrap().lines().count();
        let s = stored(2, 0x2600_0002);
        // The first, after a quiet spell, is delivered at once.
        let start = Instant::now();
        assert!(em.emit(uplink(&s, 1)));
        // (A file sink is written before the commit: wait for both.)
        while commits() < 1 {
            assert!(start.elapsed() < Duration::from_millis(900), "not at once");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!((lines(), commits()), (1, 1));
        // Five right after it wait for the rest of the interval and share the next commit.
        for i in 2..=6 {
            assert!(em.emit(uplink(&s, i)));
        }
        drop(em);
        t.join();
        assert_eq!(lines(), 6);
        assert_eq!(commits(), 2, "the five in one commit");
        assert!(start.elapsed() >= Duration::from_secs(1), "paced");
        let records = CounterLog::open(dir.path()).unwrap().load().unwrap();
        assert_eq!(records[&s.dev_eui].counters.f_cnt_up, 6);
    }

    #[test]
    fn events_are_written_only_after_the_commit() {
        let dir = tempfile::tempdir().unwrap();
        let (events, sink) = file_sink(&dir);
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
            assert!(em.emit(uplink(&s, i)));
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
}
