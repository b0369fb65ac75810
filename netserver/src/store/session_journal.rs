//! The embedded store's sessions: a journal in `DATA_DIR/sessions-journal/` in front of
//! `sessions.redb` ([`RedbBackend`]), the same kind of journal as the frame counters'
//! ([`crate::store::journal`]).
//!
//! Every join writes a session (a binary record of about 120–170 bytes, [`crate::store::record`];
//! earlier releases wrote about 600 bytes of JSON). Written straight into the B-tree, a
//! group commit of a hundred joins dirtied a hundred random leaves of the file, each copied,
//! checksummed and written at every commit: about a third of the network server's CPU per
//! join in a storm (docs/benchmarks.md, "The join path's CPU"). Through the journal a group
//! commit is one appended frame and one `fdatasync`, and each checkpoint writes the sessions
//! of a 16 MiB segment (about 100,000; 25,000 as JSON) into the B-tree in one transaction, in
//! key order.
//!
//! A record is `[table: u8, 0 current, 1 replaced][DevEUI: u64 LE][length: u32 LE,
//! u32::MAX for a removal][the session's record]`, the record [`RedbBackend`] stores (binary,
//! or the JSON of segments an earlier release wrote).

use std::collections::HashMap;
use std::path::Path;

use protocol::ids::DevEui;

use crate::store::backend::{SessionBackend, StoreError, WriteOp};
use crate::store::embedded::{
    decode_session, write_records, RedbBackend, SessionKey, SessionTable,
};
use crate::store::journal::{Journal, JournalBase};
use crate::store::stored::StoredSession;

/// The session journal's directory inside the data directory.
pub const SESSIONS_JOURNAL_DIR: &str = "sessions-journal";
/// The length that marks a removal.
const REMOVED: u32 = u32::MAX;

/// The sessions of the embedded store: [`RedbBackend`] behind its journal.
#[derive(Debug)]
pub struct SessionJournal(Journal<RedbBackend>);

impl SessionJournal {
    /// A segment's size before the next one starts and a checkpoint takes it: about 100,000
    /// sessions (25,000 as JSON); what is replayed at a start is at most about two segments.
    pub const SEGMENT_BYTES: u64 = 16 << 20;

    /// Opens (creating if needed) `sessions.redb` and its journal in `dir`, replaying the
    /// journal.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, Self::SEGMENT_BYTES)
    }

    /// [`Self::open`] with segments of `segment_bytes`.
    pub fn open_with(dir: &Path, segment_bytes: u64) -> Result<Self, StoreError> {
        let base = RedbBackend::open(dir)?;
        Journal::open(base, &dir.join(SESSIONS_JOURNAL_DIR), segment_bytes).map(Self)
    }

    /// The sessions of `table`: the B-tree's with the journal's records applied, in DevEUI
    /// order.
    fn load(&self, table: SessionTable) -> Result<Vec<StoredSession>, StoreError> {
        let mut sessions = self.0.base().load_table(table)?;
        // Oldest first, so the latest record of each device is the one kept.
        let pending: HashMap<DevEui, Option<Vec<u8>>> = self
            .0
            .pending()
            .into_iter()
            .filter(|((t, _), _)| *t == table)
            .map(|((_, dev_eui), record)| (dev_eui, record))
            .collect();
        if pending.is_empty() {
            return Ok(sessions);
        }
        sessions.retain(|s| !pending.contains_key(&s.dev_eui));
        for (dev_eui, record) in pending {
            if let Some(bytes) = record {
                sessions.push(decode_session(dev_eui, &bytes)?);
            }
        }
        sessions.sort_unstable_by_key(|s| s.dev_eui);
        Ok(sessions)
    }
}

impl SessionBackend for SessionJournal {
    fn load_all(&mut self) -> Result<Vec<StoredSession>, StoreError> {
        self.load(SessionTable::Current)
    }

    fn load_previous(&mut self) -> Result<Vec<StoredSession>, StoreError> {
        self.load(SessionTable::Previous)
    }

    fn commit(&mut self, batch: &[WriteOp]) -> Result<(), StoreError> {
        self.0.commit(&write_records(batch)?)
    }
}

impl JournalBase for RedbBackend {
    type Key = SessionKey;
    type Value = Option<Vec<u8>>;
    const MAGIC: &'static [u8; 8] = b"nssesj01";
    const WHAT: &'static str = "session";

    fn encode(key: &Self::Key, value: &Self::Value, out: &mut Vec<u8>) {
        let (table, dev_eui) = key;
        out.push(match table {
            SessionTable::Current => 0,
            SessionTable::Previous => 1,
        });
        out.extend_from_slice(&dev_eui.as_u64().to_le_bytes());
        match value {
            // A session's record is far below 4 GiB (at most a few hundred bytes).
            Some(record) => {
                out.extend_from_slice(&(record.len() as u32).to_le_bytes());
                out.extend_from_slice(record);
            }
            None => out.extend_from_slice(&REMOVED.to_le_bytes()),
        }
    }

    fn decode(payload: &mut &[u8]) -> Result<(Self::Key, Self::Value), StoreError> {
        let corrupt = |dev_eui, reason: &str| StoreError::Corrupt {
            dev_eui,
            reason: format!("session journal record: {reason}"),
        };
        let Some(head) = payload.get(..13) else {
            return Err(corrupt(DevEui::new(0), "cut short"));
        };
        let dev_eui = DevEui::new(u64::from_le_bytes(head[1..9].try_into().expect("8 bytes")));
        let table = match head[0] {
            0 => SessionTable::Current,
            1 => SessionTable::Previous,
            _ => return Err(corrupt(dev_eui, "unknown table")),
        };
        let len = u32::from_le_bytes(head[9..13].try_into().expect("4 bytes"));
        if len == REMOVED {
            *payload = &payload[13..];
            return Ok(((table, dev_eui), None));
        }
        let end = 13 + len as usize;
        let Some(record) = payload.get(13..end) else {
            return Err(corrupt(dev_eui, "cut short"));
        };
        let record = record.to_vec();
        *payload = &payload[end..];
        Ok(((table, dev_eui), Some(record)))
    }

    fn checkpointed_below(&self) -> Result<u64, StoreError> {
        RedbBackend::checkpointed_below(self)
    }

    fn commit_checkpoint(
        &self,
        records: &[(Self::Key, Self::Value)],
        below: u64,
    ) -> Result<(), StoreError> {
        let borrowed: Vec<_> = records.iter().map(|(k, v)| (*k, v.as_deref())).collect();
        RedbBackend::commit_checkpoint(self, &borrowed, below)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::stored::tests::stored;
    use proptest::prelude::*;

    fn eui_addr(s: &StoredSession) -> (u64, u32) {
        (s.dev_eui.as_u64(), s.dev_addr.as_u32())
    }

    /// DevEUI and DevAddr of each session.
    type Pairs = Vec<(u64, u32)>;

    fn loaded(j: &mut SessionJournal) -> (Pairs, Pairs) {
        (
            j.load_all().unwrap().iter().map(eui_addr).collect(),
            j.load_previous().unwrap().iter().map(eui_addr).collect(),
        )
    }

    #[test]
    fn puts_and_removals_of_both_tables_survive_a_reopen_before_any_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = SessionJournal::open(dir.path()).unwrap();
        j.commit(&[
            WriteOp::Put(Box::new(stored(1, 0x10))),
            WriteOp::Put(Box::new(stored(2, 0x20))),
        ])
        .unwrap();
        j.commit(&[
            WriteOp::PutPrevious(Box::new(stored(1, 0x10))),
            WriteOp::Put(Box::new(stored(1, 0x11))),
            WriteOp::Delete(DevEui::new(2)),
        ])
        .unwrap();
        drop(j);
        // Nothing was checkpointed: the B-tree is still empty.
        assert!(RedbBackend::open(dir.path())
            .unwrap()
            .load_all()
            .unwrap()
            .is_empty());
        let mut j = SessionJournal::open(dir.path()).unwrap();
        assert_eq!(loaded(&mut j), (vec![(1, 0x11)], vec![(1, 0x10)]));
        j.commit(&[WriteOp::DeletePrevious(DevEui::new(1))])
            .unwrap();
        drop(j);
        let mut j = SessionJournal::open(dir.path()).unwrap();
        assert_eq!(loaded(&mut j), (vec![(1, 0x11)], vec![]));
        // Each open checkpointed what it replayed before it returned: the B-tree holds it.
        drop(j);
        let mut base = RedbBackend::open(dir.path()).unwrap();
        let tree = |s: &StoredSession| (s.dev_eui.as_u64(), s.dev_addr.as_u32());
        assert_eq!(
            base.load_all()
                .unwrap()
                .iter()
                .map(tree)
                .collect::<Vec<_>>(),
            vec![(1, 0x11)]
        );
        assert!(base.load_previous().unwrap().is_empty());
    }

    #[test]
    fn checkpoints_write_puts_and_removals_into_the_b_tree() {
        let dir = tempfile::tempdir().unwrap();
        let in_tree = || -> Vec<u64> {
            let mut base = RedbBackend::open(dir.path()).unwrap();
            let all = base.load_all().unwrap();
            all.iter().map(|s| s.dev_eui.as_u64()).collect()
        };
        // A session's record is 117 bytes, so each commit fills a segment of 100 and
        // starts a checkpoint of everything not yet in the B-tree; closing the journal waits
        // for the checkpoint.
        let commit = |ops: Vec<WriteOp>| {
            let mut j = SessionJournal::open_with(dir.path(), 100).unwrap();
            j.commit(&ops).unwrap();
        };
        for dev in 1..=4 {
            commit(vec![WriteOp::Put(Box::new(stored(dev, dev as u32)))]);
        }
        assert_eq!(in_tree(), vec![1, 2, 3, 4]);
        commit(vec![
            WriteOp::Delete(DevEui::new(3)),
            WriteOp::Put(Box::new(stored(5, 5))),
        ]);
        assert_eq!(in_tree(), vec![1, 2, 4, 5]);
        // The checkpointed segments are gone: what is left is newer than the mark.
        let below = RedbBackend::open(dir.path())
            .unwrap()
            .checkpointed_below()
            .unwrap();
        let jdir = dir.path().join(SESSIONS_JOURNAL_DIR);
        for entry in std::fs::read_dir(&jdir).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            let Some(generation) = name.strip_suffix(".seg") else {
                assert_eq!(name, "next.spare", "a segment or the spare, nothing else");
                continue;
            };
            let generation = u64::from_str_radix(generation, 16).unwrap();
            assert!(generation >= below, "{name} left, mark {below}");
        }
        let mut j = SessionJournal::open_with(dir.path(), 512).unwrap();
        assert_eq!(loaded(&mut j).0, vec![(1, 1), (2, 2), (4, 4), (5, 5)]);
    }

    /// Segments an earlier release wrote hold each session's JSON: they replay as they are,
    /// and their checkpoint keeps the JSON until the session is written again.
    #[test]
    fn json_records_of_earlier_releases_replay() {
        let dir = tempfile::tempdir().unwrap();
        let old = stored(7, 0x70);
        {
            let j = SessionJournal::open(dir.path()).unwrap();
            let json = serde_json::to_vec(&old).unwrap();
            j.0.commit(&[((SessionTable::Current, old.dev_eui), Some(json))])
                .unwrap();
        }
        let mut j = SessionJournal::open(dir.path()).unwrap();
        assert_eq!(j.load_all().unwrap(), vec![old.clone()]);
        drop(j);
        // The start's checkpoint wrote it into the B-tree as it was.
        let mut base = RedbBackend::open(dir.path()).unwrap();
        assert_eq!(base.load_all().unwrap(), vec![old]);
    }

    #[test]
    fn a_record_cut_short_or_of_an_unknown_table_is_corrupt() {
        let mut json = Vec::new();
        RedbBackend::encode(
            &(SessionTable::Previous, DevEui::new(7)),
            &Some(b"{}".to_vec()),
            &mut json,
        );
        let mut whole = json.as_slice();
        assert_eq!(
            RedbBackend::decode(&mut whole).unwrap(),
            (
                (SessionTable::Previous, DevEui::new(7)),
                Some(b"{}".to_vec())
            )
        );
        assert!(whole.is_empty());
        let mut cut = &json[..json.len() - 1];
        assert_eq!(RedbBackend::decode(&mut cut).unwrap_err().kind(), "corrupt");
        json[0] = 9;
        let mut unknown = json.as_slice();
        assert_eq!(
            RedbBackend::decode(&mut unknown).unwrap_err().kind(),
            "corrupt"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Any sequence of batches, with restarts anywhere and segments of any size: what is
        /// loaded is what was committed last for each device in each table.
        #[test]
        fn load_is_the_last_committed_write_of_each_device(
            segment_bytes in 100u64..1500,
            steps in proptest::collection::vec(
                (proptest::collection::vec((0u64..5, 0u8..4, 1u32..1000), 1..4), any::<bool>()),
                1..24,
            ),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut model: [HashMap<u64, u32>; 2] = Default::default();
            let mut j = SessionJournal::open_with(dir.path(), segment_bytes).unwrap();
            let expect = |m: &[HashMap<u64, u32>; 2]| {
                let sorted = |t: &HashMap<u64, u32>| {
                    let mut v: Vec<(u64, u32)> = t.iter().map(|(d, a)| (*d, *a)).collect();
                    v.sort_unstable();
                    v
                };
                (sorted(&m[0]), sorted(&m[1]))
            };
            for (batch, restart) in steps {
                let ops: Vec<WriteOp> = batch
                    .iter()
                    .map(|&(dev, op, addr)| match op {
                        0 => WriteOp::Put(Box::new(stored(dev, addr))),
                        1 => WriteOp::Delete(DevEui::new(dev)),
                        2 => WriteOp::PutPrevious(Box::new(stored(dev, addr))),
                        _ => WriteOp::DeletePrevious(DevEui::new(dev)),
                    })
                    .collect();
                j.commit(&ops).unwrap();
                for &(dev, op, addr) in &batch {
                    let table = &mut model[usize::from(op >= 2)];
                    if op % 2 == 0 {
                        table.insert(dev, addr);
                    } else {
                        table.remove(&dev);
                    }
                }
                if restart {
                    drop(j);
                    j = SessionJournal::open_with(dir.path(), segment_bytes).unwrap();
                    prop_assert_eq!(loaded(&mut j), expect(&model));
                }
            }
            prop_assert_eq!(loaded(&mut j), expect(&model));
            drop(j);
            let mut j = SessionJournal::open_with(dir.path(), segment_bytes).unwrap();
            prop_assert_eq!(loaded(&mut j), expect(&model));
        }
    }
}
