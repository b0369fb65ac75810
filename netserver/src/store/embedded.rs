//! The embedded default storage: redb files in the data directory (`sessions.redb` for the
//! sessions; the frame counters' `uplinks.redb` is opened with the same helper).

use std::path::Path;

use protocol::ids::DevEui;

use crate::ops::private;
use crate::store::backend::{SessionBackend, StoreError, WriteOp};
use crate::store::stored::{StoredSession, STORED_SESSION_VERSION};

const SESSIONS: RecordTable = redb::TableDefinition::new("sessions");
/// Replaced sessions, same keys and values as [`SESSIONS`]. Absent from files written before
/// it existed: created on open.
const PREVIOUS: RecordTable = redb::TableDefinition::new("previous_sessions");

/// The embedded default backend: a redb file. Values are the JSON of [`StoredSession`], keys
/// the DevEUI; current sessions in table `sessions`, replaced ones in `previous_sessions`.
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

/// A redb table keyed by DevEUI, holding encoded records.
pub(crate) type RecordTable = redb::TableDefinition<'static, u64, &'static [u8]>;

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
        let db = open_redb(dir, Self::FILE, Self::CACHE_BYTES, &[SESSIONS, PREVIOUS])?;
        Ok(Self { db })
    }

    fn load_table(
        &self,
        def: redb::TableDefinition<'_, u64, &[u8]>,
    ) -> Result<Vec<StoredSession>, StoreError> {
        use redb::{ReadableDatabase, ReadableTable};
        let tx = self.db.begin_read().map_err(backend_err)?;
        let table = tx.open_table(def).map_err(backend_err)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(backend_err)? {
            let (k, v) = row.map_err(backend_err)?;
            out.push(decode_session(DevEui::new(k.value()), v.value())?);
        }
        Ok(out)
    }
}

/// Decodes the stored record of `dev_eui` (the JSON of [`StoredSession`]), checking that it
/// is that device's and of the current format version.
pub(crate) fn decode_session(dev_eui: DevEui, bytes: &[u8]) -> Result<StoredSession, StoreError> {
    let s: StoredSession = serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        dev_eui,
        reason: e.to_string(),
    })?;
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
        self.load_table(SESSIONS)
    }

    fn load_previous(&mut self) -> Result<Vec<StoredSession>, StoreError> {
        self.load_table(PREVIOUS)
    }

    fn commit(&mut self, batch: &[WriteOp]) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(backend_err)?;
        {
            let mut current = tx.open_table(SESSIONS).map_err(backend_err)?;
            let mut previous = tx.open_table(PREVIOUS).map_err(backend_err)?;
            for op in batch {
                let (table, key, value) = match op {
                    WriteOp::Put(s) => (&mut current, s.dev_eui, Some(s)),
                    WriteOp::Delete(d) => (&mut current, *d, None),
                    WriteOp::PutPrevious(s) => (&mut previous, s.dev_eui, Some(s)),
                    WriteOp::DeletePrevious(d) => (&mut previous, *d, None),
                };
                match value {
                    Some(s) => {
                        let bytes = serde_json::to_vec(s).map_err(backend_err)?;
                        table
                            .insert(key.as_u64(), bytes.as_slice())
                            .map_err(backend_err)?;
                    }
                    None => {
                        table.remove(key.as_u64()).map_err(backend_err)?;
                    }
                }
            }
        }
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
}
