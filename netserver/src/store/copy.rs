//! `netserver store copy --to postgres://…`: an embedded store moved into PostgreSQL, verified
//! by counts and a checksum read back from the target.
//!
//! The checksum is SHA-256 over the sessions in DevEUI order (current, then replaced), each as
//! the JSON it is stored as, a current one with the counters it would be restored with (its
//! counter record when that is of this session, else its own) and its 1.1 rekey flag. That is
//! what a server restores, whichever backend it reads: PostgreSQL gives every session a
//! counter row at its write, where the embedded log has records only after an uplink.

use sha2::{Digest, Sha256};

use crate::store::backend::{SessionBackend, StoreError, WriteOp};
use crate::store::counters::{restore_counters, CounterBackend};
use crate::store::embedded::backend_err;
use crate::store::pg::PgStore;
use crate::store::stored::StoredSession;

/// Sessions written per transaction.
const BATCH: usize = 2048;

/// What a store holds, counted and summed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inventory {
    /// Current sessions.
    pub sessions: usize,
    /// Replaced sessions kept.
    pub previous: usize,
    /// Uplinks counted: the sum of the current sessions' FCntUp.
    pub uplinks: u64,
    /// SHA-256 of all of it, hex.
    pub checksum: String,
}

impl std::fmt::Display for Inventory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} sessions, {} replaced sessions, {} uplinks counted, sha256 {}",
            self.sessions, self.previous, self.uplinks, self.checksum
        )
    }
}

/// Counts and sums what `sessions` and `counters` hold.
pub fn inventory(
    sessions: &mut dyn SessionBackend,
    counters: &dyn CounterBackend,
) -> Result<Inventory, StoreError> {
    let mut current = sessions.load_all()?;
    let mut previous = sessions.load_previous()?;
    let records = counters.load()?;
    current.sort_by_key(|s| s.dev_eui);
    previous.sort_by_key(|s| s.dev_eui);
    let mut h = Sha256::new();
    let mut uplinks = 0u64;
    for s in &mut current {
        let (rekey, _) = restore_counters(&records, s);
        uplinks += u64::from(s.counters.f_cnt_up);
        h.update(serde_json::to_vec(s).map_err(backend_err)?);
        h.update([u8::from(rekey)]);
    }
    for s in &previous {
        h.update(serde_json::to_vec(s).map_err(backend_err)?);
    }
    Ok(Inventory {
        sessions: current.len(),
        previous: previous.len(),
        uplinks,
        checksum: hex::encode(h.finalize()),
    })
}

/// The copy failed, or its result differs from the source.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// A store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The target already holds sessions.
    #[error("the target store is not empty ({0}); copy into an empty database")]
    NotEmpty(Inventory),
    /// What was read back differs from the source.
    #[error("verification failed: source {source_inv}, target {target}")]
    Mismatch {
        /// The source's inventory.
        source_inv: Inventory,
        /// The target's, read back.
        target: Inventory,
    },
}

/// Copies every session, replaced session and counter record of the source into the empty
/// PostgreSQL store `target`, then reads the target back and compares counts and checksums.
/// Returns the (equal) inventory.
pub fn copy(
    sessions: &mut dyn SessionBackend,
    counters: &dyn CounterBackend,
    target: &PgStore,
) -> Result<Inventory, CopyError> {
    let mut dst = target.clone();
    let before = inventory(&mut dst, target)?;
    if before.sessions + before.previous > 0 {
        return Err(CopyError::NotEmpty(before));
    }
    let source_inv = inventory(sessions, counters)?;
    let puts = |all: Vec<StoredSession>, op: fn(Box<StoredSession>) -> WriteOp| {
        all.into_iter().map(move |s| op(Box::new(s)))
    };
    let ops: Vec<WriteOp> = puts(sessions.load_all()?, WriteOp::Put)
        .chain(puts(sessions.load_previous()?, WriteOp::PutPrevious))
        .collect();
    for chunk in ops.chunks(BATCH) {
        SessionBackend::commit(&mut dst, chunk)?;
    }
    let records: Vec<_> = counters.load()?.into_iter().collect();
    for chunk in records.chunks(BATCH) {
        target.put_counters(chunk)?;
    }
    let after = inventory(&mut dst, target)?;
    if after != source_inv {
        return Err(CopyError::Mismatch {
            source_inv,
            target: after,
        });
    }
    Ok(after)
}
