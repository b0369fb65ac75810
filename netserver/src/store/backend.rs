//! The session storage seam: [`SessionBackend`] (two implementations,
//! [`crate::store::embedded::RedbBackend`] and [`crate::store::pg::PgStore`]), its batch of
//! writes and its errors.

use protocol::ids::DevEui;

use crate::store::stored::StoredSession;

/// The storage failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend reported an error.
    #[error("session store: {0}")]
    Backend(String),
    /// A stored record could not be decoded.
    #[error("session store: corrupt record for {dev_eui}: {reason}")]
    Corrupt {
        /// The record's key.
        dev_eui: DevEui,
        /// What is wrong.
        reason: String,
    },
    /// The store thread has stopped.
    #[error("session store is closed")]
    Closed,
}

impl StoreError {
    /// Stable metric label.
    pub const fn kind(&self) -> &'static str {
        match self {
            Self::Backend(_) => "backend",
            Self::Corrupt { .. } => "corrupt",
            Self::Closed => "closed",
        }
    }
}

/// One write of a batch.
#[derive(Debug, Clone)]
pub enum WriteOp {
    /// Insert or replace the device's session.
    Put(Box<StoredSession>),
    /// Remove the device's session.
    Delete(DevEui),
    /// Insert or replace the device's replaced session: the one a new join replaced, kept
    /// until the first uplink under its successor (the device may have missed the
    /// Join-accept).
    PutPrevious(Box<StoredSession>),
    /// Remove the device's replaced session.
    DeletePrevious(DevEui),
}

/// A durable session storage. Implementations must make [`commit`](Self::commit) atomic (all
/// of the batch or none) and durable when it returns `Ok`.
pub trait SessionBackend: Send + 'static {
    /// Every stored current session.
    fn load_all(&mut self) -> Result<Vec<StoredSession>, StoreError>;
    /// Every stored replaced session ([`WriteOp::PutPrevious`]).
    fn load_previous(&mut self) -> Result<Vec<StoredSession>, StoreError>;
    /// Applies a batch in one transaction.
    fn commit(&mut self, batch: &[WriteOp]) -> Result<(), StoreError>;
}

impl<T: SessionBackend + ?Sized> SessionBackend for Box<T> {
    fn load_all(&mut self) -> Result<Vec<StoredSession>, StoreError> {
        (**self).load_all()
    }
    fn load_previous(&mut self) -> Result<Vec<StoredSession>, StoreError> {
        (**self).load_previous()
    }
    fn commit(&mut self, batch: &[WriteOp]) -> Result<(), StoreError> {
        (**self).commit(batch)
    }
}

/// What a store holds at start.
#[derive(Debug, Default)]
pub struct Restored {
    /// The current sessions.
    pub current: Vec<StoredSession>,
    /// The replaced sessions still kept.
    pub previous: Vec<StoredSession>,
}
