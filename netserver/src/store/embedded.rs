//! The embedded default storage: redb files in the data directory (`sessions.redb` for the
//! sessions; the frame counters' `uplinks.redb` is opened with the same helper).

use std::path::Path;

use protocol::ids::DevEui;

use crate::ops::private;
use crate::store::backend::{SessionBackend, StoreError, WriteOp};
use crate::store::record;
use crate::store::stored::{StoredSession, STORED_SESSION_VERSION};

const SESSIONS: RecordTable = redb::TableDefinition::new("sessions");
/// Replaced sessions, same keys and values as [`SESSIONS`]. Absent from files written before
/// it existed: created on open.
const PREVIOUS: RecordTable = redb::TableDefinition::new("previous_sessions");
/// The session journal's checkpoint mark ([`crate::store::session_journal`]), as
/// [`journal_mark`] reads it. Absent from files written before the journal: created on open.
const JOURNAL_MARK: RecordTable = redb::TableDefinition::new("session_journal");

/// Which of the session tables a record is of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SessionTable {
    /// The current sessions (`sessions`).
    Current,
    /// The replaced sessions still kept (`previous_sessions`).
    Previous,
}

/// The embedded default backend: a redb file. Values are session records ([`record`]; the JSON
/// of [`StoredSession`] where an earlier release wrote them), keys the DevEUI; current sessions
/// in table `sessions`, replaced ones in `previous_sessions`.
pub struct RedbBackend {
    db: redb::Database,
}

impl std::fmt::Debug for RedbBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedbBackend")
    }
}

/// A backend error as a [`StoreError`].
pub(crate) fn backend_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// A session record's key: its table and DevEUI.
pub type SessionKey = (SessionTable, DevEui);
/// A session record to write: its key and the session's record (`None`: removed).
pub type SessionRecord = (SessionKey, Option<Vec<u8>>);
/// [`SessionRecord`] with the record borrowed.
type SessionRecordRef<'a> = (SessionKey, Option<&'a [u8]>);

/// A redb table keyed by DevEUI, holding encoded records.
pub(crate) type RecordTable = redb::TableDefinition<'static, u64, &'static [u8]>;

/// The first journal generation the file of `db` does not hold, from its mark table `mark`
/// (under key 0, LE u64; absent: 0): the segments before it were checkpointed into the file
/// ([`crate::store::journal`]).
pub(crate) fn journal_mark(db: &redb::Database, mark: RecordTable) -> Result<u64, StoreError> {
    use redb::ReadableDatabase;
    let tx = db.begin_read().map_err(backend_err)?;
    let table = tx.open_table(mark).map_err(backend_err)?;
    let value = table.get(0).map_err(backend_err)?;
    Ok(value
        .and_then(|v| <[u8; 8]>::try_from(v.value()).ok())
        .map_or(0, u64::from_le_bytes))
}

/// Sets the journal mark [`journal_mark`] reads to `below`, in the transaction `tx`.
pub(crate) fn set_journal_mark(
    tx: &redb::WriteTransaction,
    mark: RecordTable,
    below: u64,
) -> Result<(), StoreError> {
    let mut m = tx.open_table(mark).map_err(backend_err)?;
    m.insert(0, &below.to_le_bytes()[..]).map_err(backend_err)?;
    Ok(())
}

/// Opens (creating if needed) the redb file `dir/file` with a page cache of `cache_bytes`
/// (redb's default, 1 GiB, would keep a whole store in memory) and creates `tables`, so that a
/// fresh store reads as empty. The directory is made 0700 and the file 0600
/// ([`crate::ops::private`]).
pub(crate) fn open_redb(
    dir: &Path,
    file: &str,
    cache_bytes: usize,
    tables: &[RecordTable],
) -> Result<redb::Database, StoreError> {
    private::create_dir(dir).map_err(backend_err)?;
    let path = dir.join(file);
    private::create_file(&path).map_err(backend_err)?;
    let db = redb::Builder::new()
        .set_cache_size(cache_bytes)
        .create(&path)
        .map_err(backend_err)?;
    let tx = db.begin_write().map_err(backend_err)?;
    for t in tables {
        tx.open_table(*t).map_err(backend_err)?;
    }
    tx.commit().map_err(backend_err)?;
    Ok(db)
}

impl RedbBackend {
    /// File name inside the data directory.
    pub const FILE: &'static str = "sessions.redb";
    /// redb's page cache for this file. Sessions are read once at start and written once per
    /// join, so a small cache is enough; redb's default (1 GiB) would keep the whole file in
    /// memory after the start (about 600 bytes per session).
    pub const CACHE_BYTES: usize = 16 << 20;

    /// Opens (creating if needed) `dir/sessions.redb`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = open_redb(
            dir,
            Self::FILE,
            Self::CACHE_BYTES,
            &[SESSIONS, PREVIOUS, JOURNAL_MARK],
        )?;
        Ok(Self { db })
    }

    /// Every stored session of `table`, in DevEUI order.
    pub(crate) fn load_table(&self, table: SessionTable) -> Result<Vec<StoredSession>, StoreError> {
        use redb::{ReadableDatabase, ReadableTable};
        let tx = self.db.begin_read().map_err(backend_err)?;
        let table = tx.open_table(definition(table)).map_err(backend_err)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(backend_err)? {
            let (k, v) = row.map_err(backend_err)?;
            out.push(decode_session(DevEui::new(k.value()), v.value())?);
        }
        Ok(out)
    }
}

/// The redb table of `table`.
fn definition(table: SessionTable) -> RecordTable {
    match table {
        SessionTable::Current => SESSIONS,
        SessionTable::Previous => PREVIOUS,
    }
}

/// Writes `records` (a session's record, or `None`: removed) into their tables in `tx`.
fn apply(tx: &redb::WriteTransaction, records: &[SessionRecordRef<'_>]) -> Result<(), StoreError> {
    let mut current = tx.open_table(SESSIONS).map_err(backend_err)?;
    let mut previous = tx.open_table(PREVIOUS).map_err(backend_err)?;
    for ((table, dev_eui), value) in records {
        let t = match table {
            SessionTable::Current => &mut current,
            SessionTable::Previous => &mut previous,
        };
        match value {
            Some(bytes) => t.insert(dev_eui.as_u64(), *bytes).map(drop),
            None => t.remove(dev_eui.as_u64()).map(drop),
        }
        .map_err(backend_err)?;
    }
    Ok(())
}

/// A batch of writes as records: the table and DevEUI each writes, and the session's binary
/// record ([`record`]; `None`: removed).
pub(crate) fn write_records(batch: &[WriteOp]) -> Result<Vec<SessionRecord>, StoreError> {
    batch
        .iter()
        .map(|op| {
            let (key, session) = match op {
                WriteOp::Put(s) => ((SessionTable::Current, s.dev_eui), Some(s)),
                WriteOp::Delete(d) => ((SessionTable::Current, *d), None),
                WriteOp::PutPrevious(s) => ((SessionTable::Previous, s.dev_eui), Some(s)),
                WriteOp::DeletePrevious(d) => ((SessionTable::Previous, *d), None),
            };
            let record = session
                .map(|s| {
                    let mut out = Vec::with_capacity(RECORD_CAPACITY);
                    record::encode(s, &mut out).map_err(backend_err)?;
                    Ok::<_, StoreError>(out)
                })
                .transpose()?;
            Ok((key, record))
        })
        .collect()
}

impl RedbBackend {
    /// The first session journal generation this file does not hold (0: none).
    pub(crate) fn checkpointed_below(&self) -> Result<u64, StoreError> {
        journal_mark(&self.db, JOURNAL_MARK)
    }

    /// Writes `records` and the session journal's mark `below` in one transaction.
    pub(crate) fn commit_checkpoint(
        &self,
        records: &[SessionRecordRef<'_>],
        below: u64,
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(backend_err)?;
        apply(&tx, records)?;
        set_journal_mark(&tx, JOURNAL_MARK, below)?;
        tx.commit().map_err(backend_err)
    }
}

/// Room for a session's binary record without a reallocation (a 1.1 session with a tenant
/// takes about 170 bytes).
const RECORD_CAPACITY: usize = 256;

/// Decodes the stored record of `dev_eui`, checking that it is that device's and of the
/// current format version: the binary [`record`] this release writes, or the JSON of
/// [`StoredSession`] that earlier releases wrote (and PostgreSQL keeps), told apart by the
/// first byte.
pub(crate) fn decode_session(dev_eui: DevEui, bytes: &[u8]) -> Result<StoredSession, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt { dev_eui, reason };
    let s: StoredSession = if bytes.first() == Some(&record::RECORD_TAG) {
        record::decode(bytes).map_err(|e| corrupt(e.to_string()))?
    } else {
        serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?
    };
    if s.dev_eui != dev_eui || s.version != STORED_SESSION_VERSION {
        return Err(StoreError::Corrupt {
            dev_eui,
            reason: format!("record is for {} (format version {})", s.dev_eui, s.version),
        });
    }
    Ok(s)
}

impl SessionBackend for RedbBackend {
    fn load_all(&mut self) -> Result<Vec<StoredSession>, StoreError> {
        self.load_table(SessionTable::Current)
    }

    fn load_previous(&mut self) -> Result<Vec<StoredSession>, StoreError> {
        self.load_table(SessionTable::Previous)
    }

    fn commit(&mut self, batch: &[WriteOp]) -> Result<(), StoreError> {
        let records = write_records(batch)?;
        let borrowed: Vec<_> = records.iter().map(|(k, v)| (*k, v.as_deref())).collect();
        let tx = self.db.begin_write().map_err(backend_err)?;
        apply(&tx, &borrowed)?;
        tx.commit().map_err(backend_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrupt_records_are_reported_not_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = RedbBackend::open(dir.path()).unwrap();
        {
            let tx = b.db.begin_write().unwrap();
            {
                let mut t = tx.open_table(SESSIONS).unwrap();
                t.insert(9u64, b"{not json".as_slice()).unwrap();
            }
            tx.commit().unwrap();
        }
        let e = b.load_all().unwrap_err();
        assert_eq!(e.kind(), "corrupt");
        assert!(e.to_string().contains("0000000000000009"), "{e}");
    }

    /// A file an earlier release wrote (JSON records) reads as it was; a session written again
    /// is stored as a binary record, and one filed under another DevEUI is refused.
    #[test]
    fn json_records_of_earlier_releases_read_and_new_ones_are_binary() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = RedbBackend::open(dir.path()).unwrap();
        let old = crate::store::stored::tests::stored(9, 0x2600_0009);
        {
            let tx = b.db.begin_write().unwrap();
            {
                let mut t = tx.open_table(SESSIONS).unwrap();
                let json = serde_json::to_vec(&old).unwrap();
                t.insert(9u64, json.as_slice()).unwrap();
            }
            tx.commit().unwrap();
        }
        assert_eq!(b.load_all().unwrap(), vec![old.clone()]);

        let mut new = old.clone();
        new.counters.f_cnt_up = 5;
        b.commit(&[WriteOp::Put(Box::new(new.clone()))]).unwrap();
        assert_eq!(b.load_all().unwrap(), vec![new.clone()]);
        let raw = {
            use redb::ReadableDatabase;
            let tx = b.db.begin_read().unwrap();
            let t = tx.open_table(SESSIONS).unwrap();
            t.get(9u64).unwrap().unwrap().value().to_vec()
        };
        assert_eq!(raw[0], record::RECORD_TAG);
        assert_eq!(record::decode(&raw).unwrap(), new);

        let e = decode_session(DevEui::new(10), &raw).unwrap_err();
        assert_eq!(e.kind(), "corrupt");
    }
}
