//! Provisioning from a manifest held in memory: [`import`], the library's entry point into the
//! streaming, all-or-nothing import of [`crate::onboarding::import`]. The manifest format and
//! its parser are [`crate::manifest`] (re-exported here).

use protocol::ids::DevEui;

pub use crate::manifest::{Format, RowError};
use crate::onboarding::backend::OnboardBackend;
use crate::onboarding::db::Actor;
use crate::onboarding::import::{self as imp, Failure, Generated, Imported, Job};
use crate::secrets::MasterKey;
use crate::store::pg_onboard::PgOnboard;
use crate::store::postgres::PgStore;
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
/// wrapped under the master key, owner tokens kept as hashes (shorter than
/// [`crate::config::MIN_OWNER_TOKEN_LEN`] refused), audited as the command line.
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
        min_owner_token_len: crate::config::MIN_OWNER_TOKEN_LEN,
    };
    let mut source = imp::SliceSource::new(text.as_bytes());
    let r = outcome(imp::run(store.conn_mut(), job, &mut source, None))?;
    Ok(ImportSummary {
        imported: r.imported,
    })
}

/// An import's outcome as the library reports it.
fn outcome(r: Result<Imported, Failure>) -> Result<Imported, ImportError> {
    match r {
        Ok(r) => Ok(r),
        Err(Failure::Rows { rows, .. }) => Err(ImportError::Rows(rows)),
        Err(Failure::Store(e)) => Err(ImportError::Store(e)),
        Err(other) => Err(ImportError::Store(StoreError::Corrupt {
            dev_eui: DevEui::new(0),
            what: other.to_string(),
        })),
    }
}

/// What an import into PostgreSQL did.
#[derive(Debug)]
pub struct PgImported {
    /// Devices imported.
    pub imported: usize,
    /// The owner tokens generated for rows without one (only their hashes are stored).
    pub generated: Vec<Generated>,
}

/// Imports a manifest held in memory into the PostgreSQL store through the same import as the
/// API and the command line on PostgreSQL ([`crate::store::pg_onboard`]), all or nothing: the
/// rows checked as the embedded import checks them (owner tokens shorter than
/// `min_owner_token_len` refused), root keys wrapped under the master key, owner tokens kept as
/// hashes (generated for rows without one), devices already provisioned refused, audited as the
/// command line.
pub fn import_postgres(
    store: &mut PgStore,
    master: &MasterKey,
    manifest: &[u8],
    format: Option<Format>,
    min_owner_token_len: usize,
) -> Result<PgImported, ImportError> {
    let job = Job {
        actor: &Actor::cli(),
        master,
        format,
        verifier: None,
        commit_lock: None,
        min_owner_token_len,
    };
    let mut importer = PgOnboard::new(store.handle()).importer()?;
    let r = outcome(importer.run(job, &mut imp::SliceSource::new(manifest), None))?;
    Ok(PgImported {
        imported: r.imported,
        generated: r.generated,
    })
}

#[cfg(test)]
mod tests {
    use protocol::keys::Kek;

    use super::*;
    use crate::store::{NonceState, NonceUpdate, Store};

    /// A device removed and imported again (the streaming import, as the API and the command
    /// line do) continues from its last JoinNonce: it used to restart at 0.
    #[test]
    fn reimport_never_moves_a_join_nonce_backwards() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = SqliteStore::open(tmp.path()).unwrap();
        let master = MasterKey(Kek::new([5; 16]));
        let manifest = "dev_eui,join_eui,mac_version,app_key,nwk_key\n\
             0000000000000001,70B3D57ED0000000,1.0.4,2B7E151628AED2A6ABF7158809CF4F3C,\n\
             0000000000000002,70B3D57ED0000000,1.0.4,2B7E151628AED2A6ABF7158809CF4F3C,\n";
        import(&mut store, &master, manifest, Format::Csv).unwrap();
        store
            .commit_nonces(&[NonceUpdate {
                dev_eui: DevEui::new(1),
                state: NonceState {
                    last_dev_nonce: Some(9),
                    used_dev_nonces: vec![],
                    last_join_nonce: 41,
                    last_rj_count1: None,
                },
                joined: crate::store::LastJoin {
                    at_ms: 1_796_000_000_000,
                    net_id: protocol::ids::NetId::new(0x13).unwrap(),
                },
            }])
            .unwrap();
        assert!(store.remove_device(DevEui::new(1)).unwrap());
        assert!(store.remove_device(DevEui::new(2)).unwrap());
        import(&mut store, &master, manifest, Format::Csv).unwrap();
        let join_nonce = |s: &mut SqliteStore, d| {
            s.get_device(DevEui::new(d))
                .unwrap()
                .unwrap()
                .nonces
                .last_join_nonce
        };
        assert_eq!(join_nonce(&mut store, 1), 41);
        assert_eq!(join_nonce(&mut store, 2), 0);
    }
}
