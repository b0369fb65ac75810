//! Provisioning from a manifest held in memory: [`import`], the library's entry point into the
//! streaming, all-or-nothing import of [`crate::onboarding::import`]. The manifest format and
//! its parser are [`crate::manifest`] (re-exported here).

use protocol::ids::DevEui;

pub use crate::manifest::{Format, RowError};
use crate::onboarding::db::Actor;
use crate::onboarding::import::{self as imp, Failure, Job};
use crate::secrets::MasterKey;
use crate::store::{SqliteStore, StoreError};

/// Why an import failed.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The manifest has bad rows; nothing was imported.
    #[error("{} bad row(s); nothing imported", .0.len())]
    Rows(Vec<RowError>),
    /// The store failed; nothing was imported.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What an import did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportSummary {
    /// Devices imported.
    pub imported: usize,
}

/// Imports a manifest held in memory into `store`, all or nothing, through the same streaming
/// import as the API and `joinserver devices import` ([`crate::onboarding::import`]): root keys
/// wrapped under the master key, owner tokens kept as hashes, audited as the command line.
/// Every bad row, duplicate and already-provisioned device is reported.
pub fn import(
    store: &mut SqliteStore,
    master: &MasterKey,
    text: &str,
    format: Format,
) -> Result<ImportSummary, ImportError> {
    let job = Job {
        actor: &Actor::cli(),
        master,
        format: Some(format),
        verifier: None,
        commit_lock: None,
    };
    let mut source = imp::SliceSource::new(text.as_bytes());
    match imp::run(store.conn_mut(), job, &mut source, None) {
        Ok(r) => Ok(ImportSummary {
            imported: r.imported,
        }),
        Err(Failure::Rows { rows, .. }) => Err(ImportError::Rows(rows)),
        Err(Failure::Store(e)) => Err(ImportError::Store(e)),
        Err(other) => Err(ImportError::Store(StoreError::Corrupt {
            dev_eui: DevEui::new(0),
            what: other.to_string(),
        })),
    }
}
