//! The durable frame counters: one small record per session, written by the emitter's group
//! commits ([`crate::integration::emitter`]), beside the session store and not in it (a session record is written once at the join, its counters at every uplink). Each
//! record carries the identity of its session (DevAddr, DevNonce, creation time), so the
//! record of a replaced session is never applied to its successor.

use std::collections::HashMap;
use std::path::Path;

use protocol::ids::{DevAddr, DevEui};

use crate::core::device::{FrameCounters, PendingConfirmed};
use crate::store::backend::StoreError;
use crate::store::embedded::{backend_err, journal_mark, open_redb, set_journal_mark, RecordTable};
use crate::store::session::Session;
use crate::store::stored::StoredSession;

const COUNTERS: RecordTable = redb::TableDefinition::new("counters");
/// The counter journal's checkpoint mark ([`crate::store::journal`]): under key 0, the first
/// journal generation the table does not hold (LE u64). Absent from files written before the
/// journal: created empty on open.
const JOURNAL_MARK: RecordTable = redb::TableDefinition::new("counter_journal");

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
    /// The confirmed downlink waiting for the device's ACK: kept with the counters so that
    /// after a restart, or at another instance, the acknowledging uplink is recognised (its
    /// `ack` event; LoRaWAN 1.1: its MIC covers the downlink's FCnt, ConfFCnt).
    pub pending: Option<PendingConfirmed>,
}

/// A record without a pending confirmed downlink; with one, its FCnt and id follow
/// ([`PENDING_RECORD_LEN`]).
const RECORD_LEN: usize = 4 + 2 + 8 + 4 * 3 + 1;
const PENDING_RECORD_LEN: usize = RECORD_LEN + 4 + 8;

impl CounterRecord {
    /// The record of `s` with its live state's counters, rekey flag and pending downlink.
    pub fn of(s: &Session, st: &crate::core::device::DataState) -> Self {
        Self {
            dev_addr: s.dev_addr,
            dev_nonce: s.dev_nonce.0,
            created_at_ms: s.created_at_ms,
            counters: st.counters,
            rekey_confirmed: st.rekey_confirmed,
            pending: st.pending_confirmed,
        }
    }

    /// The encoded record and its length (without or with the pending downlink).
    pub(crate) fn encode(&self) -> ([u8; PENDING_RECORD_LEN], usize) {
        let mut b = [0u8; PENDING_RECORD_LEN];
        b[0..4].copy_from_slice(&self.dev_addr.as_u32().to_le_bytes());
        b[4..6].copy_from_slice(&self.dev_nonce.to_le_bytes());
        b[6..14].copy_from_slice(&self.created_at_ms.to_le_bytes());
        b[14..18].copy_from_slice(&self.counters.f_cnt_up.to_le_bytes());
        b[18..22].copy_from_slice(&self.counters.n_f_cnt_down.to_le_bytes());
        b[22..26].copy_from_slice(&self.counters.a_f_cnt_down.to_le_bytes());
        b[26] = u8::from(self.rekey_confirmed);
        match self.pending {
            None => (b, RECORD_LEN),
            Some(p) => {
                b[27..31].copy_from_slice(&p.f_cnt.to_le_bytes());
                b[31..39].copy_from_slice(&p.id.get().to_le_bytes());
                (b, PENDING_RECORD_LEN)
            }
        }
    }

    /// The record `b` encodes ([`Self::encode`]), if it has a record's length.
    pub(crate) fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != RECORD_LEN && b.len() != PENDING_RECORD_LEN {
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
            pending: (b.len() == PENDING_RECORD_LEN)
                .then(|| {
                    let mut id = [0u8; 8];
                    id.copy_from_slice(&b[31..39]);
                    std::num::NonZeroU64::new(u64::from_le_bytes(id)).map(|id| PendingConfirmed {
                        f_cnt: u32_at(27),
                        id,
                    })
                })
                .flatten(),
        })
    }

    /// The record of a stored session with its own counters (written with the session).
    pub fn of_stored(s: &StoredSession) -> Self {
        Self {
            dev_addr: s.dev_addr,
            dev_nonce: s.dev_nonce.0,
            created_at_ms: s.created_at_ms,
            counters: s.counters,
            rekey_confirmed: false,
            pending: None,
        }
    }

    /// Whether both records are of the same session.
    pub fn same_session(&self, other: &Self) -> bool {
        self.dev_addr == other.dev_addr
            && self.dev_nonce == other.dev_nonce
            && self.created_at_ms == other.created_at_ms
    }

    /// Whether this record belongs to `s` (same session, not a predecessor).
    pub fn belongs_to(&self, s: &StoredSession) -> bool {
        self.dev_addr == s.dev_addr
            && self.dev_nonce == s.dev_nonce.0
            && self.created_at_ms == s.created_at_ms
    }
}

/// Queued application downlinks to take off a shared queue: (device, item id).
pub type QueueItems = Vec<(DevEui, u64)>;

/// What a checked commit decided for one record ([`CounterBackend::commit_checked`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// The record's uplink is new (its FCntUp is above the committed one): deliver it.
    pub uplink: bool,
    /// The record's downlink counters are above the committed ones: its downlink may leave.
    pub downlink: bool,
    /// The committed record after this one (for a refused record, what another instance
    /// committed: the local session catches up with it).
    pub committed: Option<CounterRecord>,
}

impl Verdict {
    /// Everything of the record goes out (a backend with one writer).
    pub const ACCEPTED: Self = Self {
        uplink: true,
        downlink: true,
        committed: None,
    };
}

/// Judges `rec` against the committed record of its device (several instances write the same
/// rows). Returns the verdict and the record to commit, if any.
///
/// - No committed record, or one of an older session: `rec` is accepted and written.
/// - A committed record of a newer session: `rec` belongs to a replaced session some instance
///   still serves; accepted, not written (the successor's row stays).
/// - The same session: the uplink is new only if its FCntUp (the next expected value) is above
///   the committed one; the downlink may leave only if its counters are above the committed
///   ones and none is below (else another instance used that FCntDown). The committed record
///   becomes the maximum of both, counter by counter, with the pending confirmed downlink of
///   `rec` if it moved a counter (else the committed one's).
pub fn judge(
    committed: Option<&CounterRecord>,
    rec: &CounterRecord,
) -> (Verdict, Option<CounterRecord>) {
    let Some(c) = committed else {
        return (Verdict::ACCEPTED, Some(*rec));
    };
    if !c.same_session(rec) {
        return if rec.created_at_ms >= c.created_at_ms {
            (Verdict::ACCEPTED, Some(*rec))
        } else {
            (Verdict::ACCEPTED, None)
        };
    }
    let (r, k) = (&rec.counters, &c.counters);
    let uplink = r.f_cnt_up > k.f_cnt_up;
    let downlink = (r.n_f_cnt_down > k.n_f_cnt_down || r.a_f_cnt_down > k.a_f_cnt_down)
        && r.n_f_cnt_down >= k.n_f_cnt_down
        && r.a_f_cnt_down >= k.a_f_cnt_down;
    let next = CounterRecord {
        counters: FrameCounters {
            f_cnt_up: r.f_cnt_up.max(k.f_cnt_up),
            n_f_cnt_down: r.n_f_cnt_down.max(k.n_f_cnt_down),
            a_f_cnt_down: r.a_f_cnt_down.max(k.a_f_cnt_down),
        },
        rekey_confirmed: rec.rekey_confirmed || c.rekey_confirmed,
        // What the record's own frame left pending (a confirmed downlink it sent, or none once
        // its uplink acknowledged it); a record that moved no counter changes nothing.
        pending: if uplink || downlink {
            rec.pending
        } else {
            c.pending
        },
        ..*c
    };
    let verdict = Verdict {
        uplink,
        downlink,
        committed: Some(next),
    };
    (verdict, (next != *c).then_some(next))
}

/// The counter storage seam: load every record at start, commit a batch atomically and
/// durably. Two implementations: [`CounterLog`] (redb, `uplinks.redb`, one writer) and
/// [`crate::store::pg::PgStore`] (PostgreSQL, shared by several instances, checked commits).
pub trait CounterBackend: Send + std::fmt::Debug + 'static {
    /// Every record.
    fn load(&self) -> Result<HashMap<DevEui, CounterRecord>, StoreError>;
    /// Commits a batch in one transaction (later records of a device replace earlier ones).
    fn commit(&self, batch: &[(DevEui, CounterRecord)]) -> Result<(), StoreError>;
    /// Commits a batch in one transaction and says, per record, whether it may be delivered.
    /// A backend with one writer (the default) accepts every record.
    fn commit_checked(
        &self,
        batch: &[(DevEui, CounterRecord)],
    ) -> Result<Vec<Verdict>, StoreError> {
        self.commit(batch)?;
        Ok(vec![Verdict::ACCEPTED; batch.len()])
    }
    /// [`Self::commit_checked`], and the event lines `events` picks given the verdicts, in
    /// the same transaction where the backend keeps an event log (PostgreSQL with
    /// `[store] event_log`): the log then holds each accepted uplink's event exactly once,
    /// whatever instance dies when. Without a log (the default), the same as
    /// [`Self::commit_checked`].
    fn commit_logged(
        &self,
        batch: &[(DevEui, CounterRecord)],
        events: &dyn Fn(&[Verdict]) -> Vec<Vec<u8>>,
    ) -> Result<Vec<Verdict>, StoreError> {
        let _ = events;
        self.commit_checked(batch)
    }
    /// [`Self::commit_logged`], and takes the queued application downlinks `take` picks given
    /// the verdicts (their ids) off a shared downlink queue in the same transaction; returns
    /// the verdicts and the ids it took. An id not taken was already taken by another
    /// instance: its downlink must not leave. Without a shared queue (the default) every id
    /// picked is taken.
    fn commit_taking(
        &self,
        batch: &[(DevEui, CounterRecord)],
        events: &dyn Fn(&[Verdict]) -> Vec<Vec<u8>>,
        take: &dyn Fn(&[Verdict]) -> QueueItems,
    ) -> Result<(Vec<Verdict>, Vec<u64>), StoreError> {
        let verdicts = self.commit_logged(batch, events)?;
        let taken = take(&verdicts).into_iter().map(|(_, id)| id).collect();
        Ok((verdicts, taken))
    }
    /// Whether other processes commit to the same counters: then nothing is delivered before
    /// its verdict, even to an event file.
    fn shared(&self) -> bool {
        false
    }
}

impl<T: CounterBackend + ?Sized> CounterBackend for Box<T> {
    fn load(&self) -> Result<HashMap<DevEui, CounterRecord>, StoreError> {
        (**self).load()
    }
    fn commit(&self, batch: &[(DevEui, CounterRecord)]) -> Result<(), StoreError> {
        (**self).commit(batch)
    }
    fn commit_checked(
        &self,
        batch: &[(DevEui, CounterRecord)],
    ) -> Result<Vec<Verdict>, StoreError> {
        (**self).commit_checked(batch)
    }
    fn commit_logged(
        &self,
        batch: &[(DevEui, CounterRecord)],
        events: &dyn Fn(&[Verdict]) -> Vec<Vec<u8>>,
    ) -> Result<Vec<Verdict>, StoreError> {
        (**self).commit_logged(batch, events)
    }
    fn commit_taking(
        &self,
        batch: &[(DevEui, CounterRecord)],
        events: &dyn Fn(&[Verdict]) -> Vec<Vec<u8>>,
        take: &dyn Fn(&[Verdict]) -> QueueItems,
    ) -> Result<(Vec<Verdict>, Vec<u64>), StoreError> {
        (**self).commit_taking(batch, events, take)
    }
    fn shared(&self) -> bool {
        (**self).shared()
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
        let db = open_redb(
            dir,
            Self::FILE,
            Self::CACHE_BYTES,
            &[COUNTERS, JOURNAL_MARK],
        )?;
        Ok(Self { db })
    }

    /// The first counter journal generation this file does not hold: the segments before it
    /// were checkpointed into it (0: none).
    pub fn checkpointed_below(&self) -> Result<u64, StoreError> {
        journal_mark(&self.db, JOURNAL_MARK)
    }

    /// Commits `batch` and the journal mark `below` ([`Self::checkpointed_below`]) in one
    /// transaction.
    pub fn commit_checkpoint(
        &self,
        batch: &[(DevEui, CounterRecord)],
        below: u64,
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(backend_err)?;
        insert_records(&tx, batch)?;
        set_journal_mark(&tx, JOURNAL_MARK, below)?;
        tx.commit().map_err(backend_err)
    }
}

/// Writes `batch` into the counters table in `tx`.
fn insert_records(
    tx: &redb::WriteTransaction,
    batch: &[(DevEui, CounterRecord)],
) -> Result<(), StoreError> {
    let mut t = tx.open_table(COUNTERS).map_err(backend_err)?;
    for (d, r) in batch {
        let (b, len) = r.encode();
        t.insert(d.as_u64(), &b[..len]).map_err(backend_err)?;
    }
    Ok(())
}

impl CounterBackend for CounterLog {
    fn load(&self) -> Result<HashMap<DevEui, CounterRecord>, StoreError> {
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

    fn commit(&self, batch: &[(DevEui, CounterRecord)]) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(backend_err)?;
        insert_records(&tx, batch)?;
        tx.commit().map_err(backend_err)
    }
}

/// Applies the durable counters of `records` to a stored session about to be restored.
/// Returns the 1.1 rekey flag to set on its live state.
pub fn restore_counters(
    records: &HashMap<DevEui, CounterRecord>,
    stored: &mut StoredSession,
) -> (bool, Option<PendingConfirmed>) {
    match records.get(&stored.dev_eui) {
        Some(r) if r.belongs_to(stored) => {
            stored.counters = r.counters;
            (r.rekey_confirmed, r.pending)
        }
        _ => (false, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::stored::tests::stored;

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
            pending: Some(PendingConfirmed {
                f_cnt: 4,
                id: std::num::NonZeroU64::new(0x1_0000_0001).unwrap(),
            }),
        };
        // A device without a pending downlink: the shorter record of earlier releases.
        let other = stored(2, 0x2600_0002);
        let plain = CounterRecord {
            pending: None,
            ..CounterRecord::of_stored(&other)
        };
        assert_eq!(plain.encode().1, RECORD_LEN);
        log.commit(&[(s.dev_eui, rec), (other.dev_eui, plain)])
            .unwrap();
        drop(log);
        let records = CounterLog::open(dir.path()).unwrap().load().unwrap();
        assert_eq!((records[&s.dev_eui], records[&other.dev_eui]), (rec, plain));
        assert_eq!(restore_counters(&records, &mut s), (true, rec.pending));
        assert_eq!(s.counters.f_cnt_up, 77);
        // A new join (another DevNonce) starts from 0.
        let mut fresh = stored(1, 0x2600_0001);
        fresh.dev_nonce.0 += 1;
        assert_eq!(restore_counters(&records, &mut fresh), (false, None));
        assert_eq!(fresh.counters, FrameCounters::default());
    }

    fn rec(created_at_ms: u64, up: u32, n: u32, a: u32) -> CounterRecord {
        CounterRecord {
            dev_addr: DevAddr::new(0x2600_0001),
            dev_nonce: 7,
            created_at_ms,
            counters: FrameCounters {
                f_cnt_up: up,
                n_f_cnt_down: n,
                a_f_cnt_down: a,
            },
            rekey_confirmed: false,
            pending: None,
        }
    }

    /// `rec` with a confirmed downlink of FCnt `f_cnt` (id `f_cnt + 100`) waiting for its ACK.
    fn pending(r: CounterRecord, f_cnt: u32) -> CounterRecord {
        CounterRecord {
            pending: Some(PendingConfirmed {
                f_cnt,
                id: std::num::NonZeroU64::new(u64::from(f_cnt) + 100).unwrap(),
            }),
            ..r
        }
    }

    #[test]
    fn a_pending_confirmed_downlink_is_kept_until_a_frame_of_its_session_moves_on() {
        // A confirmed downlink (AFCntDown 3) sent with an uplink: committed with it.
        let sent = pending(rec(1, 6, 4, 3), 2);
        let (v, w) = judge(Some(&rec(1, 5, 4, 2)), &sent);
        assert!(v.uplink && v.downlink);
        assert_eq!(w, Some(sent));
        // The same frame again from another instance that did not know it: nothing changes.
        let (v, w) = judge(Some(&sent), &rec(1, 6, 4, 3));
        assert!(!v.uplink && !v.downlink);
        assert_eq!((w, v.committed.unwrap().pending), (None, sent.pending));
        // The device's next uplink acknowledges it: no longer pending.
        let (v, w) = judge(Some(&sent), &rec(1, 7, 4, 3));
        assert!(v.uplink);
        assert_eq!(w, Some(rec(1, 7, 4, 3)));
    }

    #[test]
    fn judge_table() {
        let v = |uplink, downlink| (uplink, downlink);
        // (committed, record) -> (uplink, downlink), record written
        let cases = [
            (None, rec(1, 5, 0, 0), v(true, true), Some(rec(1, 5, 0, 0))),
            // A new frame of the same session.
            (
                Some(rec(1, 5, 2, 0)),
                rec(1, 6, 2, 0),
                v(true, false),
                Some(rec(1, 6, 2, 0)),
            ),
            // A new frame answered with a downlink whose FCntDown was free.
            (
                Some(rec(1, 5, 2, 0)),
                rec(1, 6, 3, 0),
                v(true, true),
                Some(rec(1, 6, 3, 0)),
            ),
            // The same frame again (another instance committed it): refused.
            (
                Some(rec(1, 6, 3, 0)),
                rec(1, 6, 3, 0),
                v(false, false),
                None,
            ),
            // A replay: refused; the committed record stays.
            (
                Some(rec(1, 9, 3, 0)),
                rec(1, 4, 3, 0),
                v(false, false),
                None,
            ),
            // A new frame whose downlink reuses an FCntDown another instance used: the uplink
            // goes, the downlink does not; the down counter stays at the committed maximum.
            (
                Some(rec(1, 5, 4, 0)),
                rec(1, 6, 3, 0),
                v(true, false),
                Some(rec(1, 6, 4, 0)),
            ),
            // An application downlink (AFCntDown) alone.
            (
                Some(rec(1, 6, 4, 1)),
                rec(1, 6, 4, 2),
                v(false, true),
                Some(rec(1, 6, 4, 2)),
            ),
            // A record of a newer session replaces the row.
            (
                Some(rec(1, 50, 9, 9)),
                rec(2, 1, 0, 0),
                v(true, true),
                Some(rec(2, 1, 0, 0)),
            ),
            // A record of an older (replaced) session: accepted, the row left alone.
            (Some(rec(2, 1, 0, 0)), rec(1, 51, 9, 9), v(true, true), None),
        ];
        for (i, (committed, r, (uplink, downlink), written)) in cases.into_iter().enumerate() {
            let (verdict, w) = judge(committed.as_ref(), &r);
            assert_eq!(
                (verdict.uplink, verdict.downlink),
                (uplink, downlink),
                "case {i}"
            );
            assert_eq!(w, written, "case {i}");
        }
    }
}
