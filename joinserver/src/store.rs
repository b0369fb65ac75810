//! Durable state: devices (root keys encrypted at rest) and their DevNonce/JoinNonce state.
//!
//! [`Store`] is the small trait a backend implements; [`SqliteStore`] is the embedded default,
//! and [`postgres::PgStore`] the shared one for several join server instances (`[store] url`);
//! one SQLite file (`DATA_DIR/joinserver.db`) in WAL mode with `synchronous=FULL`, so a committed
//! transaction survives a crash or power loss. The store never sees a root key in clear: callers
//! pass and receive RFC 3394 wraps under the master key ([`crate::atrest`]).
//!
//! Durability without one flush per join: [`GroupCommit`] runs a writer thread that takes every
//! nonce update queued while the previous transaction was being flushed, commits them all in one
//! transaction, and only then releases the answers that depend on them.
//!
//! Several instances on one store: each accepted join is committed only if the device's stored
//! JoinNonce is still the one its DevNonce was checked against ([`Store::commit_joins`], one
//! conditional statement per device inside the batch's transaction), so of two instances that
//! accepted the same device's join only the first commits; the other answers from the winner's
//! stored answer (a retry of the same request) or refuses, and refreshes its copy of the device.

pub mod onboard_copy;
pub mod pg_onboard;
pub mod postgres;

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use protocol::ids::{DevEui, JoinEui, NetId};
use protocol::version::MacVersion;
use rusqlite::{params, Connection, OptionalExtension};

/// The database file inside the data directory.
pub const DB_FILE: &str = "joinserver.db";

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database reported an error.
    #[error("database: {0}")]
    Db(#[from] rusqlite::Error),
    /// A device to insert already exists.
    #[error("device {0} already exists")]
    Duplicate(DevEui),
    /// A stored row is not valid (corruption or a newer schema).
    #[error("corrupt row for device {dev_eui}: {what}")]
    Corrupt {
        /// The device.
        dev_eui: DevEui,
        /// What is wrong.
        what: String,
    },
    /// The database was written with a different master key.
    #[error("the store was created with a different master key (secrets/master.key)")]
    MasterKeyMismatch,
    /// The PostgreSQL store failed (the database is unreachable, or refused a statement).
    #[error("postgresql: {0}")]
    Postgres(String),
}

impl StoreError {
    /// A short stable name, used as a metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Db(_) => "sqlite",
            Self::Duplicate(_) => "duplicate",
            Self::Corrupt { .. } => "corrupt",
            Self::MasterKeyMismatch => "master_key_mismatch",
            Self::Postgres(_) => "postgres",
        }
    }
}

/// A device's nonce state: everything the DevNonce and JoinNonce rules need.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NonceState {
    /// The last accepted DevNonce; `None` before the first join.
    pub last_dev_nonce: Option<u16>,
    /// LoRaWAN 1.0.2/1.0.3: the most recent accepted DevNonces, oldest first (bounded).
    pub used_dev_nonces: Vec<u16>,
    /// The last JoinNonce sent; 0 before the first join (the first JoinNonce is 1).
    pub last_join_nonce: u32,
    /// LoRaWAN 1.1: the last RJcount1 of an accepted Rejoin-request type 1 (RJcount1_last);
    /// `None` before the first. A type 1 rejoin must carry a greater one.
    pub last_rj_count1: Option<u16>,
}

impl NonceState {
    /// The state from its stored columns (as both backends store them).
    pub(crate) fn from_columns(
        dev_eui: DevEui,
        last_dev_nonce: Option<i64>,
        used: &[u8],
        last_join_nonce: i64,
        last_rj_count1: Option<i64>,
    ) -> Result<Self, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt {
            dev_eui,
            what: what.to_owned(),
        };
        Ok(Self {
            last_dev_nonce: match last_dev_nonce {
                None => None,
                Some(v) => Some(u16::try_from(v).map_err(|_| corrupt("last_dev_nonce"))?),
            },
            used_dev_nonces: Self::history_from_blob(used)
                .ok_or_else(|| corrupt("used_dev_nonces"))?,
            last_join_nonce: u32::try_from(last_join_nonce)
                .map_err(|_| corrupt("last_join_nonce"))?,
            last_rj_count1: match last_rj_count1 {
                None => None,
                Some(v) => Some(u16::try_from(v).map_err(|_| corrupt("last_rj_count1"))?),
            },
        })
    }

    pub(crate) fn history_blob(&self) -> Vec<u8> {
        self.used_dev_nonces
            .iter()
            .flat_map(|n| n.to_le_bytes())
            .collect()
    }
    fn history_from_blob(b: &[u8]) -> Option<Vec<u16>> {
        if b.len() % 2 != 0 {
            return None;
        }
        Some(
            b.chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect(),
        )
    }
}

/// A device as stored: root keys wrapped under the master key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredDevice {
    /// The device.
    pub dev_eui: DevEui,
    /// Its JoinEUI.
    pub join_eui: JoinEui,
    /// Its LoRaWAN MAC version.
    pub mac_version: MacVersion,
    /// AppKey, RFC 3394-wrapped under the master key (24 bytes).
    pub app_key_wrapped: Vec<u8>,
    /// NwkKey (1.1 only), wrapped likewise.
    pub nwk_key_wrapped: Option<Vec<u8>>,
    /// The only NetID allowed to activate it, if any.
    pub home_net_id: Option<NetId>,
    /// The owner token (TR005), if any.
    pub owner_token: Option<String>,
    /// The tenant that claimed it (from `ownership`; read only: claims write it).
    pub owner: Option<String>,
    /// Nonce state.
    pub nonces: NonceState,
    /// The last accepted join; `None` before the first (written only by [`Store::commit_nonces`]).
    pub last_join: Option<LastJoin>,
}

/// When a device last joined, and through which network: recorded with the nonces of each
/// accepted JoinReq, before its JoinAns leaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LastJoin {
    /// When the join server received the JoinReq (Unix ms, its wall clock).
    pub at_ms: u64,
    /// The NetID of the network server that sent it (authenticated by the link).
    pub net_id: NetId,
}

/// One device's new nonce state, to be committed before its JoinAns leaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NonceUpdate {
    /// The device.
    pub dev_eui: DevEui,
    /// Its state after the join.
    pub state: NonceState,
    /// The join itself: when, through which network.
    pub joined: LastJoin,
}

/// What identifies a JoinReq's answer across instances: the authenticated sender, its
/// TransactionID, and the request's PHYPayload (a TransactionID reused for another request is
/// not a retry).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnswerKey {
    /// The sender id on the link (the network server's NetID).
    pub sender: u64,
    /// The TransactionID.
    pub transaction_id: u32,
    /// The Join-request PHYPayload.
    pub request: Vec<u8>,
}

/// One accepted join to commit: its nonce update, the state its DevNonce was checked against,
/// and the answer to keep beside it so that a retry reaching another instance gets the identical
/// answer (a store one instance alone uses may ignore it: that instance's answer cache is in
/// memory).
#[derive(Clone, Debug)]
pub struct JoinCommit {
    /// The nonce update; its `state.last_join_nonce` is the JoinNonce the answer carries.
    pub update: NonceUpdate,
    /// The device's nonce state the join was checked against: the update is committed only if
    /// the store still holds exactly this state.
    pub previous: NonceState,
    /// The request and the answer (the JoinAns body, whose session keys are wrapped under KEKs).
    pub answer: Option<(AnswerKey, Arc<[u8]>)>,
}

/// What [`Store::commit_joins`] did with one join.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JoinCommitted {
    /// Committed.
    Applied,
    /// Not committed: the device's stored JoinNonce had moved (another instance accepted a
    /// join first, or this instance's copy was ahead after a failed commit). The stored state.
    Stale(NonceState),
    /// Not committed: the device is no longer stored.
    Gone,
}

/// A network server on the link (a peer) as the store keeps it: its NetID and its two secrets,
/// each wrapped under `master.key` (RFC 3394), so the store never holds them in clear.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredPeer {
    /// The peer's NetID (24 bits).
    pub net_id: u32,
    /// Its link key, wrapped.
    pub link_key: Vec<u8>,
    /// Its network KEK, wrapped.
    pub ns_kek: Vec<u8>,
    /// The network KEK's `KEKLabel`.
    pub kek_label: String,
    /// When it was added (Unix ms).
    pub created_ms: u64,
}

impl std::fmt::Debug for StoredPeer {
    /// Without the wrapped keys.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredPeer")
            .field("net_id", &format_args!("{:06X}", self.net_id))
            .field("kek_label", &self.kek_label)
            .field("created_ms", &self.created_ms)
            .finish_non_exhaustive()
    }
}

/// The durable state of a join server. Implemented by [`SqliteStore`] (one instance) and
/// [`postgres::PgStore`] (several instances on one database); every method is one transaction,
/// and one conformance suite (`tests/store_conformance.rs`) runs against both.
pub trait Store: Send + 'static {
    /// Every device, with its nonce state.
    fn load_devices(&mut self) -> Result<Vec<StoredDevice>, StoreError>;
    /// One device.
    fn get_device(&mut self, dev_eui: DevEui) -> Result<Option<StoredDevice>, StoreError>;
    /// Inserts all devices or none. A device that already exists fails the whole batch.
    fn insert_devices(&mut self, devices: &[StoredDevice]) -> Result<(), StoreError>;
    /// Removes a device; `false` if it did not exist.
    fn remove_device(&mut self, dev_eui: DevEui) -> Result<bool, StoreError>;
    /// Durably records the nonce states of a batch, in one transaction. Updates to removed
    /// devices are ignored.
    fn commit_nonces(&mut self, batch: &[NonceUpdate]) -> Result<(), StoreError>;
    /// A number that changes whenever devices are inserted or removed, so a running server can
    /// notice provisioning done by another process.
    fn generation(&mut self) -> Result<u64, StoreError>;
    /// The current generation, and what changed since generation `seen`.
    fn changes_since(&mut self, seen: u64) -> Result<(u64, DeviceChanges), StoreError>;
    /// Checks (or, on a fresh store, records) the master key check value.
    fn check_master(&mut self, check_value: &[u8]) -> Result<(), StoreError>;
    /// Durably records the nonce states of accepted joins in one transaction, each only if the
    /// store still holds the state its DevNonce was checked against ([`JoinCommit::previous`]):
    /// the check and the update are one conditional statement, so of two instances that
    /// accepted a join of the same device from the same state, one commits. Returns what
    /// happened to each, in order. A shared store also keeps each join's answer for
    /// [`Store::find_answers`].
    fn commit_joins(&mut self, batch: &[JoinCommit]) -> Result<Vec<JoinCommitted>, StoreError>;
    /// The answers that any instance stored with its joins for these requests (`None` where
    /// there is none). A store used by one instance keeps none: its answer cache is in memory.
    fn find_answers(&mut self, keys: &[AnswerKey]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        Ok(vec![None; keys.len()])
    }
    /// Records a link peer; `false` (and nothing changed) when its NetID is stored already. A
    /// shared store signals the change to every instance ([`Store::wait_for_change`]).
    fn add_link_peer(&mut self, peer: &StoredPeer) -> Result<bool, StoreError>;
    /// Every stored link peer, by NetID.
    fn link_peers(&mut self) -> Result<Vec<StoredPeer>, StoreError>;
    /// Waits up to `timeout` for a change of the provisioned devices made elsewhere (another
    /// process or instance); returns early when one is signalled. The default just sleeps: the
    /// caller then asks [`Store::changes_since`].
    fn wait_for_change(&mut self, timeout: Duration) -> Result<(), StoreError> {
        std::thread::sleep(timeout);
        Ok(())
    }
    /// Housekeeping, called regularly off the commit path (SQLite: a WAL checkpoint;
    /// PostgreSQL: expired shared answers are deleted).
    fn maintain(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
}

impl<S: Store + ?Sized> Store for Box<S> {
    fn load_devices(&mut self) -> Result<Vec<StoredDevice>, StoreError> {
        (**self).load_devices()
    }
    fn get_device(&mut self, dev_eui: DevEui) -> Result<Option<StoredDevice>, StoreError> {
        (**self).get_device(dev_eui)
    }
    fn insert_devices(&mut self, devices: &[StoredDevice]) -> Result<(), StoreError> {
        (**self).insert_devices(devices)
    }
    fn remove_device(&mut self, dev_eui: DevEui) -> Result<bool, StoreError> {
        (**self).remove_device(dev_eui)
    }
    fn commit_nonces(&mut self, batch: &[NonceUpdate]) -> Result<(), StoreError> {
        (**self).commit_nonces(batch)
    }
    fn generation(&mut self) -> Result<u64, StoreError> {
        (**self).generation()
    }
    fn changes_since(&mut self, seen: u64) -> Result<(u64, DeviceChanges), StoreError> {
        (**self).changes_since(seen)
    }
    fn check_master(&mut self, check_value: &[u8]) -> Result<(), StoreError> {
        (**self).check_master(check_value)
    }
    fn commit_joins(&mut self, batch: &[JoinCommit]) -> Result<Vec<JoinCommitted>, StoreError> {
        (**self).commit_joins(batch)
    }
    fn find_answers(&mut self, keys: &[AnswerKey]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        (**self).find_answers(keys)
    }
    fn add_link_peer(&mut self, peer: &StoredPeer) -> Result<bool, StoreError> {
        (**self).add_link_peer(peer)
    }
    fn link_peers(&mut self) -> Result<Vec<StoredPeer>, StoreError> {
        (**self).link_peers()
    }
    fn wait_for_change(&mut self, timeout: Duration) -> Result<(), StoreError> {
        (**self).wait_for_change(timeout)
    }
    fn maintain(&mut self) -> Result<(), StoreError> {
        (**self).maintain()
    }
}

/// The embedded SQLite store.
pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY,
    value ANY NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS devices (
    dev_eui         INTEGER PRIMARY KEY,   -- u64 bits as i64
    join_eui        INTEGER NOT NULL,
    mac_version     TEXT NOT NULL,
    app_key         BLOB NOT NULL,         -- RFC 3394 wrap under master.key
    nwk_key         BLOB,                  -- likewise; 1.1 only
    home_net_id     INTEGER,
    owner_token     TEXT,
    last_dev_nonce  INTEGER,               -- NULL before the first join
    used_dev_nonces BLOB NOT NULL,         -- u16 LE, oldest first (1.0.2/1.0.3)
    last_join_nonce INTEGER NOT NULL,
    last_join_ms    INTEGER,               -- the last accepted join (Unix ms); NULL before
    last_join_net_id INTEGER               -- the NetID it came through
) STRICT;
INSERT OR IGNORE INTO meta (name, value) VALUES ('schema', 1), ('generation', 0);
-- Which devices each generation inserted or removed (dev_eui NULL: too many to list), so that a
-- running server reloads only those. Rows older than CHANGE_LOG_GENERATIONS are pruned.
CREATE TABLE IF NOT EXISTS device_changes (
    generation INTEGER NOT NULL,
    dev_eui    INTEGER
) STRICT;
CREATE INDEX IF NOT EXISTS device_changes_generation ON device_changes (generation);
-- Per device: its owner token's hash, the manufacturer that provisioned it, the owner (tenant)
-- that claimed it, and a lock flag (written by the onboarding tables' code).
CREATE TABLE IF NOT EXISTS ownership (
    dev_eui      INTEGER PRIMARY KEY,
    token_hash   BLOB,                    -- SHA-256 (domain, DevEUI, owner token)
    manufacturer TEXT,                    -- tenant that provisioned it (NULL: CLI / admin)
    owner        TEXT,                    -- tenant that claimed it (NULL: unclaimed)
    claimed_ms   INTEGER,
    locked       INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE INDEX IF NOT EXISTS ownership_owner ON ownership (owner);
CREATE INDEX IF NOT EXISTS ownership_manufacturer ON ownership (manufacturer);
-- The last JoinNonce of each removed device, so that importing it again continues from there:
-- a JoinNonce is never used twice with a device's root keys.
CREATE TABLE IF NOT EXISTS retired_join_nonces (
    dev_eui         INTEGER PRIMARY KEY,
    last_join_nonce INTEGER NOT NULL
) STRICT;
-- The network servers on the link added by `joinserver peers add`: their link key
-- and network KEK wrapped under master.key.
CREATE TABLE IF NOT EXISTS link_peers (
    net_id     INTEGER PRIMARY KEY,
    link_key   BLOB NOT NULL,
    ns_kek     BLOB NOT NULL,
    kek_label  TEXT NOT NULL,
    created_ms INTEGER NOT NULL
) STRICT;
";

/// Columns added to `devices` after its first release, added to an older database when it is
/// opened: (name, SQL type).
const ADDED_DEVICE_COLUMNS: &[(&str, &str)] = &[
    ("last_join_ms", "INTEGER"),
    ("last_join_net_id", "INTEGER"),
    // LoRaWAN 1.1 RJcount1_last (NULL before the first accepted Rejoin-request type 1).
    ("last_rj_count1", "INTEGER"),
];

/// Adds the [`ADDED_DEVICE_COLUMNS`] a database made by an earlier version lacks, in one
/// transaction (another process may be opening the same file).
fn add_missing_columns(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    for (name, ty) in ADDED_DEVICE_COLUMNS {
        let present = tx
            .prepare("SELECT 1 FROM pragma_table_info('devices') WHERE name = ?1")?
            .exists([name])?;
        if !present {
            tx.execute_batch(&format!("ALTER TABLE devices ADD COLUMN {name} {ty}"))?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// Generations kept in `device_changes`: a reader further behind reloads every device.
pub const CHANGE_LOG_GENERATIONS: u64 = 10_000;
/// Most devices one generation lists in `device_changes`; a larger change (a bulk import) is
/// logged as "everything", which a reader answers with one full reload.
pub const CHANGE_LOG_MAX_DEVICES: usize = 10_000;

/// Which devices a provisioning transaction inserted or removed.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Changed<'a> {
    /// These devices.
    Devices(&'a [DevEui]),
    /// The `count` devices whose DevEUI `select` (`SELECT dev_eui FROM …`) gives.
    Query {
        /// The query.
        select: &'a str,
        /// How many rows it gives.
        count: usize,
    },
}

/// What changed in the provisioned devices since a generation ([`Store::changes_since`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceChanges {
    /// Too much, or unknown (the log does not cover the gap): reload every device.
    All,
    /// These devices were inserted or removed (each once; may be empty).
    Devices(Vec<DevEui>),
}

/// How long a statement waits for another connection's lock before it fails.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection to the database file with the settings every connection of this crate uses.
fn connect(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

/// A DevEUI as SQLite stores it (see [`eui_to_sql`]).
pub(crate) fn dev_eui_sql(d: DevEui) -> i64 {
    eui_to_sql(d.as_u64())
}

/// A DevEUI/JoinEUI as SQLite stores it: the u64 bits as an i64.
pub(crate) fn eui_to_sql(v: u64) -> i64 {
    v as i64
}

fn eui_from_sql(v: i64) -> u64 {
    v as u64
}

/// The columns of `devices`, in the order every INSERT of this crate lists them.
pub(crate) const DEVICE_COLUMNS: &str = "dev_eui, join_eui, mac_version, app_key, nwk_key, \
     home_net_id, owner_token, last_dev_nonce, used_dev_nonces, last_join_nonce";

/// Marks a change of the provisioned devices (insert or removal), inside `tx`: bumps the
/// generation, logs which devices changed, and prunes the log's oldest generations.
pub(crate) fn bump_generation(tx: &Connection, changed: Changed<'_>) -> Result<(), StoreError> {
    let generation: i64 = tx.query_row(
        "UPDATE meta SET value = value + 1 WHERE name = 'generation' RETURNING value",
        [],
        |r| r.get(0),
    )?;
    let count = match changed {
        Changed::Devices(d) => d.len(),
        Changed::Query { count, .. } => count,
    };
    if count > CHANGE_LOG_MAX_DEVICES {
        tx.execute(
            "INSERT INTO device_changes (generation, dev_eui) VALUES (?1, NULL)",
            [generation],
        )?;
    } else {
        match changed {
            Changed::Devices(devices) => {
                let mut stmt = tx.prepare_cached(
                    "INSERT INTO device_changes (generation, dev_eui) VALUES (?1, ?2)",
                )?;
                for d in devices {
                    stmt.execute(params![generation, eui_to_sql(d.as_u64())])?;
                }
            }
            Changed::Query { select, .. } => {
                tx.execute(
                    &format!(
                        "INSERT INTO device_changes (generation, dev_eui) SELECT ?1, dev_eui FROM ({select})"
                    ),
                    [generation],
                )?;
            }
        }
    }
    tx.execute(
        "DELETE FROM device_changes WHERE generation <= ?1",
        [generation - CHANGE_LOG_GENERATIONS as i64],
    )?;
    Ok(())
}

/// Writes one device's nonce state and, for an accepted join, when and through which NetID it
/// came (kept as it was when `joined` is `None`): one statement (no-op for a device that does
/// not exist).
pub(crate) fn write_nonces(
    tx: &Connection,
    dev_eui: DevEui,
    state: &NonceState,
    joined: Option<LastJoin>,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "UPDATE devices SET last_dev_nonce = ?2, used_dev_nonces = ?3, last_join_nonce = ?4, \
         last_join_ms = COALESCE(?5, last_join_ms), \
         last_join_net_id = COALESCE(?6, last_join_net_id), last_rj_count1 = ?7 \
         WHERE dev_eui = ?1",
    )?
    .execute(params![
        dev_eui_sql(dev_eui),
        state.last_dev_nonce.map(i64::from),
        state.history_blob(),
        i64::from(state.last_join_nonce),
        joined.map(|j| i64::try_from(j.at_ms).unwrap_or(i64::MAX)),
        joined.map(|j| i64::from(j.net_id.as_u32())),
        state.last_rj_count1.map(i64::from),
    ])?;
    Ok(())
}

/// Records one accepted join if the device's stored nonce state is still the one it was checked
/// against: one conditional statement; otherwise reads what is stored.
fn write_join(tx: &Connection, j: &JoinCommit) -> Result<JoinCommitted, StoreError> {
    let (u, p) = (&j.update, &j.previous);
    let n = tx
        .prepare_cached(
            "UPDATE devices SET last_dev_nonce = ?2, used_dev_nonces = ?3, last_join_nonce = ?4, \
             last_join_ms = ?5, last_join_net_id = ?6, last_rj_count1 = ?10 \
             WHERE dev_eui = ?1 AND last_join_nonce = ?7 AND last_dev_nonce IS ?8 \
             AND used_dev_nonces = ?9",
        )?
        .execute(params![
            dev_eui_sql(u.dev_eui),
            u.state.last_dev_nonce.map(i64::from),
            u.state.history_blob(),
            i64::from(u.state.last_join_nonce),
            i64::try_from(u.joined.at_ms).unwrap_or(i64::MAX),
            i64::from(u.joined.net_id.as_u32()),
            i64::from(p.last_join_nonce),
            p.last_dev_nonce.map(i64::from),
            p.history_blob(),
            u.state.last_rj_count1.map(i64::from),
        ])?;
    if n == 1 {
        return Ok(JoinCommitted::Applied);
    }
    let stored = tx
        .prepare_cached(
            "SELECT last_dev_nonce, used_dev_nonces, last_join_nonce, last_rj_count1 \
             FROM devices WHERE dev_eui = ?1",
        )?
        .query_row([dev_eui_sql(u.dev_eui)], |r| {
            Ok((
                r.get::<_, Option<i64>>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Option<i64>>(3)?,
            ))
        })
        .optional()?;
    Ok(match stored {
        None => JoinCommitted::Gone,
        Some((last, used, join, rj)) => {
            JoinCommitted::Stale(NonceState::from_columns(u.dev_eui, last, &used, join, rj)?)
        }
    })
}

/// Deletes one device, remembering its last JoinNonce (`retired_join_nonces`); whether it
/// existed. The caller bumps the generation.
pub(crate) fn delete_device(tx: &Connection, dev_eui: DevEui) -> Result<bool, StoreError> {
    tx.execute(
        "INSERT INTO retired_join_nonces (dev_eui, last_join_nonce) \
         SELECT dev_eui, last_join_nonce FROM devices WHERE dev_eui = ?1 \
         ON CONFLICT (dev_eui) DO UPDATE SET \
         last_join_nonce = max(last_join_nonce, excluded.last_join_nonce)",
        [dev_eui_sql(dev_eui)],
    )?;
    let n = tx.execute(
        "DELETE FROM devices WHERE dev_eui = ?1",
        [dev_eui_sql(dev_eui)],
    )?;
    Ok(n > 0)
}

/// Calls `f` with every device whose row matches `condition` (SQL over the `devices` columns,
/// e.g. `dev_eui IN (SELECT dev_eui FROM temp.t)`), one at a time, in DevEUI order.
pub(crate) fn for_each_device(
    conn: &Connection,
    condition: &str,
    f: &mut dyn FnMut(StoredDevice),
) -> Result<(), StoreError> {
    let mut stmt = conn.prepare(&format!("{SELECT} WHERE {condition} ORDER BY dev_eui"))?;
    let rows = stmt.query_map([], SqliteStore::row_to_device)?;
    for r in rows {
        f(r?.into_device()?);
    }
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed) `DATA_DIR/joinserver.db`.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Self::open_file(&data_dir.join(DB_FILE))
    }

    /// Opens (creating if needed) a database file.
    pub fn open_file(path: &Path) -> Result<Self, StoreError> {
        // The database holds wrapped root keys and owner tokens: owner-only, like the secrets.
        // SQLite gives its -wal and -shm files the database file's permissions. The file is
        // created here only if it does not exist (`create_new`): opening and closing an existing
        // database file outside SQLite would drop every POSIX lock this process holds on it
        // (they are per process, and any close releases them), after which another process
        // closing its connection takes the file for the last user, checkpoints and deletes the
        // WAL under this process's connections: they then saw no later commit (a running server
        // missed every CLI change after the first) and their commits went to the deleted WAL.
        {
            use std::os::unix::fs::OpenOptionsExt;
            // Any other failure (a missing directory, no permission) is SQLite's to report.
            let _ = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path);
        }
        let mut conn = connect(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.execute_batch(SCHEMA)?;
        add_missing_columns(&mut conn)?;
        Ok(Self {
            conn,
            path: path.to_owned(),
        })
    }

    /// Sets SQLite's `synchronous` for this connection (`FULL` by default).
    pub fn set_synchronous(&self, s: crate::config::Synchronous) -> Result<(), StoreError> {
        let v = match s {
            crate::config::Synchronous::Full => "FULL",
            crate::config::Synchronous::Normal => "NORMAL",
        };
        self.conn.pragma_update(None, "synchronous", v)?;
        Ok(())
    }

    /// Turns SQLite's automatic WAL checkpoints off for this connection, so commits on it never
    /// pay for a checkpoint. Whoever does this must call [`Self::checkpoint`] regularly (the
    /// server does so from another thread and connection).
    pub fn disable_autocheckpoint(&self) -> Result<(), StoreError> {
        self.conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        Ok(())
    }

    /// Copies committed WAL content into the database and restarts the WAL
    /// (`PRAGMA wal_checkpoint(RESTART)`), waiting at most [`Self::RESTART_WAIT`] for the
    /// commit in progress and for readers of older snapshots; if they are still there, it
    /// copies what it can without waiting, as a passive checkpoint does.
    ///
    /// Why a restart: a passive checkpoint never blocks the commits, but under a steady stream
    /// of them (a join storm) it never finds the WAL fully copied when the next commit starts,
    /// which is when SQLite starts the WAL over, so the WAL grew without bound while the load
    /// lasted (about 8 MB a second at 30,000 joins a second). A restart makes the next commit
    /// write the WAL from its start. Why a short wait: while a restart waits, SQLite holds new
    /// commits back, so it must give up rather than hold the joins behind a long read.
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        self.conn.busy_timeout(Self::RESTART_WAIT)?;
        let done = self
            .conn
            .query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(()));
        self.conn.busy_timeout(BUSY_TIMEOUT)?;
        done?;
        Ok(())
    }

    /// How long a checkpoint waits for the commit in progress and for older readers.
    pub const RESTART_WAIT: Duration = Duration::from_millis(20);

    fn row_to_device(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawRow> {
        Ok(RawRow {
            dev_eui: row.get(0)?,
            join_eui: row.get(1)?,
            mac_version: row.get(2)?,
            app_key: row.get(3)?,
            nwk_key: row.get(4)?,
            home_net_id: row.get(5)?,
            owner_token: row.get(6)?,
            last_dev_nonce: row.get(7)?,
            used: row.get(8)?,
            last_join_nonce: row.get(9)?,
            last_join_ms: row.get(10)?,
            last_join_net_id: row.get(11)?,
            owner: row.get(12)?,
            last_rj_count1: row.get(13)?,
        })
    }

    /// A new connection to the same file, with the same settings (an import's own staging
    /// table and transaction).
    pub(crate) fn connect_again(&self) -> Result<Connection, StoreError> {
        connect(&self.path)
    }

    /// The connection, for the crate's multi-table operations on the same file (the
    /// onboarding import).
    pub(crate) fn conn_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }
}

pub(crate) struct RawRow {
    pub(crate) dev_eui: i64,
    pub(crate) join_eui: i64,
    pub(crate) mac_version: String,
    pub(crate) app_key: Vec<u8>,
    pub(crate) nwk_key: Option<Vec<u8>>,
    pub(crate) home_net_id: Option<i64>,
    pub(crate) owner_token: Option<String>,
    pub(crate) last_dev_nonce: Option<i64>,
    pub(crate) used: Vec<u8>,
    pub(crate) last_join_nonce: i64,
    pub(crate) last_join_ms: Option<i64>,
    pub(crate) last_join_net_id: Option<i64>,
    pub(crate) owner: Option<String>,
    pub(crate) last_rj_count1: Option<i64>,
}

impl RawRow {
    /// The device this row holds.
    pub(crate) fn into_device(self) -> Result<StoredDevice, StoreError> {
        let dev_eui = DevEui::new(eui_from_sql(self.dev_eui));
        let corrupt = |what: &str| StoreError::Corrupt {
            dev_eui,
            what: what.to_owned(),
        };
        Ok(StoredDevice {
            dev_eui,
            join_eui: JoinEui::new(eui_from_sql(self.join_eui)),
            mac_version: self
                .mac_version
                .parse()
                .map_err(|_| corrupt("mac_version"))?,
            app_key_wrapped: self.app_key,
            nwk_key_wrapped: self.nwk_key,
            home_net_id: match self.home_net_id {
                None => None,
                Some(v) => Some(
                    u32::try_from(v)
                        .ok()
                        .and_then(NetId::new)
                        .ok_or_else(|| corrupt("home_net_id"))?,
                ),
            },
            owner_token: self.owner_token,
            owner: self.owner,
            nonces: NonceState::from_columns(
                dev_eui,
                self.last_dev_nonce,
                &self.used,
                self.last_join_nonce,
                self.last_rj_count1,
            )?,
            last_join: match (self.last_join_ms, self.last_join_net_id) {
                (Some(at), Some(net)) => Some(LastJoin {
                    at_ms: u64::try_from(at).map_err(|_| corrupt("last_join_ms"))?,
                    net_id: u32::try_from(net)
                        .ok()
                        .and_then(NetId::new)
                        .ok_or_else(|| corrupt("last_join_net_id"))?,
                }),
                _ => None,
            },
        })
    }
}

const SELECT: &str = "SELECT dev_eui, join_eui, mac_version, app_key, nwk_key, home_net_id, \
     owner_token, last_dev_nonce, used_dev_nonces, last_join_nonce, last_join_ms, \
     last_join_net_id, (SELECT o.owner FROM ownership o WHERE o.dev_eui = devices.dev_eui), \
     last_rj_count1 FROM devices";

impl Store for SqliteStore {
    fn load_devices(&mut self) -> Result<Vec<StoredDevice>, StoreError> {
        let mut stmt = self.conn.prepare(&format!("{SELECT} ORDER BY dev_eui"))?;
        let rows = stmt.query_map([], Self::row_to_device)?;
        let mut out = Vec::new();
        for r in rows {
            out.push(r?.into_device()?);
        }
        Ok(out)
    }

    fn get_device(&mut self, dev_eui: DevEui) -> Result<Option<StoredDevice>, StoreError> {
        let raw = self
            .conn
            .query_row(
                &format!("{SELECT} WHERE dev_eui = ?1"),
                [dev_eui_sql(dev_eui)],
                Self::row_to_device,
            )
            .optional()?;
        raw.map(RawRow::into_device).transpose()
    }

    fn insert_devices(&mut self, devices: &[StoredDevice]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        {
            // A device removed before continues from its last JoinNonce, if that is higher.
            let mut stmt = tx.prepare(&format!(
                "INSERT INTO devices ({DEVICE_COLUMNS}) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, max(?10, COALESCE((SELECT \
                 last_join_nonce FROM retired_join_nonces WHERE dev_eui = ?1), 0)))"
            ))?;
            for d in devices {
                let r = stmt.execute(params![
                    dev_eui_sql(d.dev_eui),
                    eui_to_sql(d.join_eui.as_u64()),
                    d.mac_version.as_str(),
                    d.app_key_wrapped,
                    d.nwk_key_wrapped,
                    d.home_net_id.map(|n| i64::from(n.as_u32())),
                    d.owner_token,
                    d.nonces.last_dev_nonce.map(i64::from),
                    d.nonces.history_blob(),
                    i64::from(d.nonces.last_join_nonce),
                ]);
                match r {
                    Ok(_) => {}
                    Err(rusqlite::Error::SqliteFailure(e, _))
                        if e.code == rusqlite::ErrorCode::ConstraintViolation =>
                    {
                        return Err(StoreError::Duplicate(d.dev_eui));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let euis: Vec<DevEui> = devices.iter().map(|d| d.dev_eui).collect();
        bump_generation(&tx, Changed::Devices(&euis))?;
        tx.commit()?;
        Ok(())
    }

    fn remove_device(&mut self, dev_eui: DevEui) -> Result<bool, StoreError> {
        let tx = self.conn.transaction()?;
        let removed = delete_device(&tx, dev_eui)?;
        if removed {
            bump_generation(&tx, Changed::Devices(&[dev_eui]))?;
        }
        tx.commit()?;
        Ok(removed)
    }

    fn commit_nonces(&mut self, batch: &[NonceUpdate]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        for u in batch {
            write_nonces(&tx, u.dev_eui, &u.state, Some(u.joined))?;
        }
        tx.commit()?;
        Ok(())
    }

    fn generation(&mut self) -> Result<u64, StoreError> {
        let g: i64 = self.conn.query_row(
            "SELECT value FROM meta WHERE name = 'generation'",
            [],
            |r| r.get(0),
        )?;
        Ok(g as u64)
    }

    fn changes_since(&mut self, seen: u64) -> Result<(u64, DeviceChanges), StoreError> {
        let tx = self.conn.transaction()?;
        let now: i64 = tx.query_row(
            "SELECT value FROM meta WHERE name = 'generation'",
            [],
            |r| r.get(0),
        )?;
        let now = now as u64;
        if now == seen {
            return Ok((now, DeviceChanges::Devices(Vec::new())));
        }
        if now < seen || now - seen > CHANGE_LOG_GENERATIONS {
            return Ok((now, DeviceChanges::All));
        }
        // Every generation after `seen` must be in the log (one written by a release without
        // the log is not), and none may say "everything".
        let (logged, everything): (i64, bool) = tx.query_row(
            "SELECT COUNT(DISTINCT generation), COALESCE(MAX(dev_eui IS NULL), 0) \
             FROM device_changes WHERE generation > ?1",
            [seen as i64],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        if everything || logged as u64 != now - seen {
            return Ok((now, DeviceChanges::All));
        }
        let mut stmt = tx.prepare(
            "SELECT DISTINCT dev_eui FROM device_changes WHERE generation > ?1 ORDER BY dev_eui",
        )?;
        let devices = stmt
            .query_map([seen as i64], |r| r.get::<_, i64>(0))?
            .map(|r| r.map(|v| DevEui::new(eui_from_sql(v))))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((now, DeviceChanges::Devices(devices)))
    }

    fn commit_joins(&mut self, batch: &[JoinCommit]) -> Result<Vec<JoinCommitted>, StoreError> {
        let tx = self.conn.transaction()?;
        let out = batch
            .iter()
            .map(|j| write_join(&tx, j))
            .collect::<Result<Vec<_>, _>>()?;
        tx.commit()?;
        Ok(out)
    }

    fn maintain(&mut self) -> Result<(), StoreError> {
        self.checkpoint()
    }

    fn add_link_peer(&mut self, peer: &StoredPeer) -> Result<bool, StoreError> {
        let n = self.conn.execute(
            "INSERT INTO link_peers (net_id, link_key, ns_kek, kek_label, created_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (net_id) DO NOTHING",
            params![
                peer.net_id,
                peer.link_key,
                peer.ns_kek,
                peer.kek_label,
                peer.created_ms as i64
            ],
        )?;
        Ok(n == 1)
    }

    fn link_peers(&mut self) -> Result<Vec<StoredPeer>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT net_id, link_key, ns_kek, kek_label, created_ms FROM link_peers ORDER BY net_id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(StoredPeer {
                net_id: r.get(0)?,
                link_key: r.get(1)?,
                ns_kek: r.get(2)?,
                kek_label: r.get(3)?,
                created_ms: r.get::<_, i64>(4)? as u64,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn check_master(&mut self, check_value: &[u8]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        let stored: Option<Vec<u8>> = tx
            .query_row(
                "SELECT value FROM meta WHERE name = 'master_check'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        match stored {
            Some(v) if v == check_value => {}
            Some(_) => return Err(StoreError::MasterKeyMismatch),
            None => {
                tx.execute(
                    "INSERT INTO meta (name, value) VALUES ('master_check', ?1)",
                    [check_value],
                )?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

/// One row of `ownership` (owner token hash, manufacturer, claim), as both backends store it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnershipRow {
    /// The DevEUI's bits.
    pub dev_eui: i64,
    /// SHA-256 of the owner token (never the token).
    pub token_hash: Option<Vec<u8>>,
    /// The tenant that provisioned the device.
    pub manufacturer: Option<String>,
    /// The tenant that claimed it.
    pub owner: Option<String>,
    /// When it was claimed (Unix ms).
    pub claimed_ms: Option<i64>,
    /// Locked against claims (0 or 1).
    pub locked: i64,
}

/// What `joinserver store copy` compares between two stores: the row count of each table of
/// the device state, and a SHA-256 over every row in DevEUI order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fingerprint {
    /// Devices.
    pub devices: usize,
    /// Ownership rows.
    pub ownership: usize,
    /// Retired JoinNonces.
    pub retired: usize,
    /// SHA-256 over all of them.
    pub sha256: [u8; 32],
}

impl Fingerprint {
    /// The fingerprint of a store's rows, each list in DevEUI order.
    pub fn of(
        devices: &[StoredDevice],
        ownership: &[OwnershipRow],
        retired: &[(i64, i64)],
    ) -> Self {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        let mut field = |b: &[u8]| {
            h.update((b.len() as u64).to_le_bytes());
            h.update(b);
        };
        let opt = |v: Option<&[u8]>| v.map_or_else(|| vec![0xFF], |b| [&[1u8][..], b].concat());
        for d in devices {
            field(&d.dev_eui.as_u64().to_le_bytes());
            field(&d.join_eui.as_u64().to_le_bytes());
            field(d.mac_version.as_str().as_bytes());
            field(&d.app_key_wrapped);
            field(&opt(d.nwk_key_wrapped.as_deref()));
            field(&opt(d
                .home_net_id
                .map(|n| n.as_u32().to_le_bytes())
                .as_ref()
                .map(|b| &b[..])));
            field(&opt(d.owner_token.as_deref().map(str::as_bytes)));
            field(&opt(d
                .nonces
                .last_dev_nonce
                .map(u16::to_le_bytes)
                .as_ref()
                .map(|b| &b[..])));
            field(&d.nonces.history_blob());
            field(&d.nonces.last_join_nonce.to_le_bytes());
            let last = d.last_join.map(|j| {
                [
                    j.at_ms.to_le_bytes(),
                    u64::from(j.net_id.as_u32()).to_le_bytes(),
                ]
                .concat()
            });
            field(&opt(last.as_deref()));
        }
        field(b"ownership");
        for o in ownership {
            field(&o.dev_eui.to_le_bytes());
            field(&opt(o.token_hash.as_deref()));
            field(&opt(o.manufacturer.as_deref().map(str::as_bytes)));
            field(&opt(o.owner.as_deref().map(str::as_bytes)));
            field(&opt(o
                .claimed_ms
                .map(i64::to_le_bytes)
                .as_ref()
                .map(|b| &b[..])));
            field(&o.locked.to_le_bytes());
        }
        field(b"retired");
        for (d, j) in retired {
            field(&d.to_le_bytes());
            field(&j.to_le_bytes());
        }
        Self {
            devices: devices.len(),
            ownership: ownership.len(),
            retired: retired.len(),
            sha256: h.finalize().into(),
        }
    }
}

impl SqliteStore {
    /// The `ownership` rows, in DevEUI order.
    pub fn ownership_rows(&mut self) -> Result<Vec<OwnershipRow>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT dev_eui, token_hash, manufacturer, owner, claimed_ms, locked \
             FROM ownership ORDER BY dev_eui",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(OwnershipRow {
                dev_eui: r.get(0)?,
                token_hash: r.get(1)?,
                manufacturer: r.get(2)?,
                owner: r.get(3)?,
                claimed_ms: r.get(4)?,
                locked: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The retired JoinNonces (DevEUI bits, last JoinNonce), in DevEUI order.
    pub fn retired_join_nonces(&mut self) -> Result<Vec<(i64, i64)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT dev_eui, last_join_nonce FROM retired_join_nonces ORDER BY dev_eui")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The [`Fingerprint`] of the device state.
    pub fn fingerprint(&mut self) -> Result<Fingerprint, StoreError> {
        let devices = self.load_devices()?;
        let ownership = self.ownership_rows()?;
        let retired = self.retired_join_nonces()?;
        Ok(Fingerprint::of(&devices, &ownership, &retired))
    }
}

/// The writer queue is gone (the writer thread stopped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the store writer has stopped")]
pub struct WriterStopped;

/// Group commit: a writer thread that commits queued nonce updates in batches and releases each
/// batch's items (the answers waiting on them) only after the batch's transaction committed.
///
/// Items without an update (refusals, cached answers) travel through the same queue, so they are
/// released in order: a cached answer is never sent before the commit of the join that made it.
pub struct GroupCommit<T> {
    tx: SyncSender<(Job, T)>,
}

impl<T> Clone for GroupCommit<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
        }
    }
}

impl<T> std::fmt::Debug for GroupCommit<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GroupCommit")
    }
}

/// What an item queued on the writer asks of the store.
#[derive(Clone, Debug)]
pub enum Job {
    /// Nothing: the item is released after its batch.
    Nothing,
    /// Commit an accepted join ([`Store::commit_joins`]).
    Join(JoinCommit),
    /// Look up the answer another instance gave to this request ([`Store::find_answers`]): a
    /// retry refused here by the DevNonce rule may have been answered elsewhere.
    Lookup(AnswerKey),
}

/// What the writer reports for one item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Its join (if it had one) is committed, or it had nothing to commit, or its lookup found
    /// nothing.
    Done,
    /// Its join was not committed ([`JoinCommitted::Stale`] or [`JoinCommitted::Gone`]): the
    /// device's stored nonce state (`None`: the device is gone), and the answer another instance
    /// stored for the same request, if any.
    Stale {
        /// The device.
        dev_eui: DevEui,
        /// The stored state.
        current: Option<NonceState>,
        /// The winner's answer to the same request.
        answer: Option<Vec<u8>>,
    },
    /// Its lookup found the answer another instance gave to this request.
    Answered(Vec<u8>),
    /// The batch's commit failed: its join was not recorded (as far as this instance can
    /// know), so the device's state in memory goes back from `state` to `previous`.
    Failed {
        /// The device.
        dev_eui: DevEui,
        /// The state the join was checked against.
        previous: NonceState,
        /// The state the join would have recorded.
        state: NonceState,
    },
}

/// What the writer reports after each batch: the commit's result (`Ok` also when there was
/// nothing to write), the number of joins committed or refused as stale, and the released items
/// with their verdicts ([`Verdict::Failed`] for the joins, when the commit failed).
pub type Released<T> = (Result<(), StoreError>, usize, Vec<(T, Verdict)>);

impl<T: Send + 'static> GroupCommit<T> {
    /// Starts the writer thread. `release` is called on the writer thread after each batch.
    /// The thread ends, returning the store, once every `GroupCommit` handle is dropped and the
    /// queue is drained.
    pub fn spawn<S, F>(
        store: S,
        max_batch: usize,
        queue_depth: usize,
        release: F,
    ) -> (Self, JoinHandle<S>)
    where
        S: Store,
        F: FnMut(Released<T>) + Send + 'static,
    {
        let pacing = Pacing {
            max_batch,
            interval: Duration::ZERO,
            enough: max_batch,
        };
        Self::spawn_paced(store, pacing, queue_depth, release)
    }

    /// [`Self::spawn`] with commits paced ([`Pacing`]): a batch that would begin sooner than
    /// the interval after the previous one began waits for the rest of it, gathering what
    /// arrives meanwhile, unless enough updates are already waiting. In a join storm that turns
    /// hundreds of small commits a second (each an `fsync` of the WAL, which the profile showed
    /// as half the join server's CPU) into a few large ones; a join after a quiet spell commits
    /// at once, and a client with a full window of requests waiting is not held to the interval.
    pub fn spawn_paced<S, F>(
        mut store: S,
        pacing: Pacing,
        queue_depth: usize,
        mut release: F,
    ) -> (Self, JoinHandle<S>)
    where
        S: Store,
        F: FnMut(Released<T>) + Send + 'static,
    {
        let (tx, rx) = mpsc::sync_channel(queue_depth.max(1));
        let pacing = Pacing {
            max_batch: pacing.max_batch.max(1),
            ..pacing
        };
        let handle = std::thread::Builder::new()
            .name("js-store-writer".into())
            .spawn(move || {
                writer_loop(&mut store, &rx, pacing, &mut release);
                store
            })
            .expect("spawning the store writer thread");
        (Self { tx }, handle)
    }

    /// Queues an item with its job, blocking while the queue is full (back-pressure on the
    /// link).
    pub fn submit(&self, job: Job, item: impl Into<T>) -> Result<(), WriterStopped> {
        match self.tx.try_send((job, item.into())) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(v)) => self.tx.send(v).map_err(|_| WriterStopped),
            Err(TrySendError::Disconnected(_)) => Err(WriterStopped),
        }
    }
}

/// Where an item's job went in its batch.
enum Slot {
    Nothing,
    Join(usize),
    Lookup(usize),
}

/// One batch: the joins to commit, the answers to look up, and each item's slot.
struct Batch<T> {
    joins: Vec<JoinCommit>,
    lookups: Vec<AnswerKey>,
    items: Vec<(T, Slot)>,
}

impl<T> Batch<T> {
    fn push(&mut self, job: Job, item: T) {
        let slot = match job {
            Job::Nothing => Slot::Nothing,
            Job::Join(j) => {
                self.joins.push(j);
                Slot::Join(self.joins.len() - 1)
            }
            Job::Lookup(k) => {
                self.lookups.push(k);
                Slot::Lookup(self.lookups.len() - 1)
            }
        };
        self.items.push((item, slot));
    }

    /// Adds what is waiting in the queue, up to `max_batch` items in all.
    fn take_waiting(&mut self, rx: &Receiver<(Job, T)>, max_batch: usize) {
        while self.items.len() < max_batch {
            match rx.try_recv() {
                Ok((job, item)) => self.push(job, item),
                Err(_) => return,
            }
        }
    }

    /// Commits the joins, then looks up the answers for the lookups and for the joins found
    /// stale; each item's verdict.
    fn run<S: Store>(self, store: &mut S) -> Released<T> {
        let n = self.joins.len();
        let committed = if n == 0 {
            Vec::new()
        } else {
            match store.commit_joins(&self.joins) {
                Ok(c) => c,
                Err(e) => {
                    let mut joins = self.joins.into_iter();
                    let items = self.items.into_iter().map(|(t, slot)| match slot {
                        Slot::Join(_) => {
                            let j = joins.next().expect("one join per join slot, in order");
                            let v = Verdict::Failed {
                                dev_eui: j.update.dev_eui,
                                previous: j.previous,
                                state: j.update.state,
                            };
                            (t, v)
                        }
                        _ => (t, Verdict::Done),
                    });
                    return (Err(e), n, items.collect());
                }
            }
        };
        let mut keys = self.lookups;
        let mut stale_key = vec![None; n];
        for (i, c) in committed.iter().enumerate() {
            if let (false, Some((k, _))) = (*c == JoinCommitted::Applied, &self.joins[i].answer) {
                stale_key[i] = Some(keys.len());
                keys.push(k.clone());
            }
        }
        let mut found = if keys.is_empty() {
            Vec::new()
        } else {
            store.find_answers(&keys).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "looking up answers stored by other instances");
                vec![None; keys.len()]
            })
        };
        found.resize(keys.len(), None);
        let verdicts = self.items.into_iter().map(|(t, slot)| {
            let v = match slot {
                Slot::Nothing => Verdict::Done,
                Slot::Lookup(i) => found[i].take().map_or(Verdict::Done, Verdict::Answered),
                Slot::Join(i) => match &committed[i] {
                    JoinCommitted::Applied => Verdict::Done,
                    c => Verdict::Stale {
                        dev_eui: self.joins[i].update.dev_eui,
                        current: match c {
                            JoinCommitted::Stale(s) => Some(s.clone()),
                            _ => None,
                        },
                        answer: stale_key[i].and_then(|k| found[k].take()),
                    },
                },
            };
            (t, v)
        });
        (Ok(()), n, verdicts.collect())
    }
}

/// How the writer groups nonce updates into commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pacing {
    /// The most updates committed in one transaction.
    pub max_batch: usize,
    /// The least time from one commit's start to the next's (zero: commit as soon as the
    /// previous commit is done).
    pub interval: Duration,
    /// Updates waiting that end the wait for the interval early: a batch this large already
    /// spreads the commit's fixed cost (its `fsync`) thin.
    pub enough: usize,
}

/// While a paced batch waits, how often the writer looks for what arrived: a sleep, not a wait
/// on the queue, so that the link thread does not have to wake the writer for each request.
const PACING_POLL: Duration = Duration::from_micros(100);

fn writer_loop<S: Store, T, F: FnMut(Released<T>)>(
    store: &mut S,
    rx: &Receiver<(Job, T)>,
    pacing: Pacing,
    release: &mut F,
) {
    let mut last_commit: Option<std::time::Instant> = None;
    loop {
        // Block for the first item, then take whatever queued up meanwhile.
        let first = match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(v) => v,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let mut batch = Batch {
            joins: Vec::with_capacity(pacing.max_batch),
            lookups: Vec::new(),
            items: Vec::with_capacity(pacing.max_batch),
        };
        batch.push(first.0, first.1);
        batch.take_waiting(rx, pacing.max_batch);
        // Paced: too soon after the previous commit, the rest of the interval gathers more,
        // unless enough are already waiting.
        if let Some(due) = last_commit.map(|t| t + pacing.interval) {
            let enough = pacing.enough.min(pacing.max_batch);
            loop {
                let now = std::time::Instant::now();
                if due <= now || batch.items.len() >= enough {
                    break;
                }
                std::thread::sleep((due - now).min(PACING_POLL));
                batch.take_waiting(rx, pacing.max_batch);
            }
        }
        if !batch.joins.is_empty() {
            last_commit = Some(std::time::Instant::now());
        }
        release(batch.run(store));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(n: u64) -> StoredDevice {
        StoredDevice {
            dev_eui: DevEui::new(n),
            join_eui: JoinEui::new(0x70B3_D57E_D000_0000),
            mac_version: MacVersion::V1_0_3,
            app_key_wrapped: vec![n as u8; 24],
            nwk_key_wrapped: None,
            home_net_id: NetId::new(0x13),
            owner_token: Some("AABB".into()),
            owner: None,
            nonces: NonceState::default(),
            last_join: None,
        }
    }

    fn nonce_update(n: u64, join_nonce: u32) -> NonceUpdate {
        NonceUpdate {
            dev_eui: DevEui::new(n),
            state: NonceState {
                last_dev_nonce: Some(join_nonce as u16),
                used_dev_nonces: Vec::new(),
                last_join_nonce: join_nonce,
                last_rj_count1: None,
            },
            joined: LastJoin {
                at_ms: 1_700_000_000_000,
                net_id: NetId::new(0x13).unwrap(),
            },
        }
    }

    fn wal_bytes(dir: &Path) -> u64 {
        std::fs::metadata(dir.join(format!("{DB_FILE}-wal"))).map_or(0, |m| m.len())
    }

    #[test]
    fn checkpoints_keep_the_wal_bounded_under_a_steady_stream_of_commits() {
        let tmp = tempfile::tempdir().unwrap();
        let mut writer = SqliteStore::open(tmp.path()).unwrap();
        writer
            .insert_devices(&(0..256).map(device).collect::<Vec<_>>())
            .unwrap();
        writer.disable_autocheckpoint().unwrap();
        let checkpointer = SqliteStore::open(tmp.path()).unwrap();
        checkpointer.disable_autocheckpoint().unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // Commits one after the other, as the join path's writer does in a storm: each
        // rewrites a device's row, a page of the WAL, and between two the writer gathers the
        // next batch (here a pause of 100 µs). (A writer that never lets go of the lock at all
        // leaves a restart no moment to start in: the checkpoint then copies what it can, as a
        // passive one does.)
        let commits = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut n = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    writer
                        .commit_nonces(&[nonce_update(u64::from(n % 256), n)])
                        .unwrap();
                    std::thread::sleep(Duration::from_micros(100));
                }
                n
            })
        };
        for _ in 0..20 {
            std::thread::sleep(Duration::from_millis(50));
            checkpointer.checkpoint().unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let commits = commits.join().unwrap();
        let wal = wal_bytes(tmp.path());
        assert!(commits >= 100, "the writer committed only {commits} times");
        // A WAL that is never started over holds a page for each commit (4 KiB and its
        // header); restarted at each checkpoint, it holds about a twentieth of them.
        let growing = u64::from(commits) * 4096;
        assert!(
            wal < growing / 4,
            "WAL of {wal} bytes after {commits} commits (a never restarted one: {growing})"
        );
    }

    #[test]
    fn a_checkpoint_does_not_hold_the_commits_behind_a_long_read() {
        let tmp = tempfile::tempdir().unwrap();
        let mut writer = SqliteStore::open(tmp.path()).unwrap();
        writer.insert_devices(&[device(1)]).unwrap();
        writer.disable_autocheckpoint().unwrap();
        writer.commit_nonces(&[nonce_update(1, 1)]).unwrap();
        // A reader of the snapshot before the next commit, still reading.
        let mut reader = SqliteStore::open(tmp.path()).unwrap();
        let read = reader.conn.transaction().unwrap();
        let n: i64 = read
            .query_row("SELECT COUNT(*) FROM devices", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
        writer.commit_nonces(&[nonce_update(1, 2)]).unwrap();
        // The restart cannot happen while that reader uses the WAL: the checkpoint gives up
        // after its short wait instead of the connection's 10 s, and a commit goes through.
        let checkpointer = SqliteStore::open(tmp.path()).unwrap();
        let started = std::time::Instant::now();
        checkpointer.checkpoint().unwrap();
        writer.commit_nonces(&[nonce_update(1, 3)]).unwrap();
        assert!(
            started.elapsed() < BUSY_TIMEOUT / 2,
            "the checkpoint waited {:?}",
            started.elapsed()
        );
        drop(read);
        assert_eq!(
            writer
                .get_device(DevEui::new(1))
                .unwrap()
                .unwrap()
                .nonces
                .last_join_nonce,
            3
        );
    }

    #[test]
    fn changes_since_lists_the_changed_devices_or_says_all() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = SqliteStore::open(tmp.path()).unwrap();
        let d = DevEui::new;
        assert_eq!(
            s.changes_since(0).unwrap(),
            (0, DeviceChanges::Devices(vec![]))
        );
        s.insert_devices(&[device(1), device(u64::MAX)]).unwrap();
        s.insert_devices(&[device(2)]).unwrap();
        assert!(s.remove_device(d(1)).unwrap());
        let listed = |s: &mut SqliteStore, seen| match s.changes_since(seen).unwrap() {
            (g, DeviceChanges::Devices(mut v)) => {
                v.sort();
                (g, v)
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(listed(&mut s, 0), (3, vec![d(1), d(2), d(u64::MAX)]));
        assert_eq!(listed(&mut s, 1), (3, vec![d(1), d(2)]));
        assert_eq!(listed(&mut s, 2), (3, vec![d(1)]));
        assert_eq!(listed(&mut s, 3), (3, vec![]));

        // Too many devices in one change: "everything", from that generation on.
        let many: Vec<DevEui> = (0..=CHANGE_LOG_MAX_DEVICES as u64).map(d).collect();
        let tx = s.conn.transaction().unwrap();
        bump_generation(&tx, Changed::Devices(&many)).unwrap();
        tx.commit().unwrap();
        assert_eq!(s.changes_since(3).unwrap(), (4, DeviceChanges::All));
        // A generation the log does not hold (written by a release without it).
        s.conn
            .execute(
                "UPDATE meta SET value = value + 1 WHERE name = 'generation'",
                [],
            )
            .unwrap();
        s.insert_devices(&[device(7)]).unwrap();
        assert_eq!(
            s.changes_since(5).unwrap(),
            (6, DeviceChanges::Devices(vec![d(7)]))
        );
        assert_eq!(s.changes_since(4).unwrap(), (6, DeviceChanges::All));
        // A reader ahead of the store, or further behind than the log keeps.
        assert_eq!(s.changes_since(7).unwrap().1, DeviceChanges::All);
        s.conn
            .execute(
                "UPDATE meta SET value = ?1 WHERE name = 'generation'",
                [6 + CHANGE_LOG_GENERATIONS as i64 + 1],
            )
            .unwrap();
        assert_eq!(s.changes_since(6).unwrap().1, DeviceChanges::All);
    }

    #[test]
    fn the_change_log_keeps_only_its_last_generations() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = SqliteStore::open(tmp.path()).unwrap();
        s.insert_devices(&[device(1)]).unwrap();
        s.conn
            .execute(
                "UPDATE meta SET value = ?1 WHERE name = 'generation'",
                [CHANGE_LOG_GENERATIONS as i64],
            )
            .unwrap();
        let rows = |s: &SqliteStore| -> Vec<(i64, Option<i64>)> {
            let mut st = s
                .conn
                .prepare("SELECT generation, dev_eui FROM device_changes ORDER BY generation")
                .unwrap();
            st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        assert_eq!(rows(&s), vec![(1, Some(1))]);
        s.insert_devices(&[device(2)]).unwrap();
        // Generation 10,001 keeps 2..=10,001: generation 1 is pruned.
        assert_eq!(rows(&s), vec![(CHANGE_LOG_GENERATIONS as i64 + 1, Some(2))]);
    }

    #[test]
    fn insert_is_all_or_nothing_and_eui_bits_survive() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = SqliteStore::open(tmp.path()).unwrap();
        let g0 = s.generation().unwrap();
        s.insert_devices(&[device(1), device(u64::MAX)]).unwrap();
        assert_eq!(s.generation().unwrap(), g0 + 1);
        let e = s.insert_devices(&[device(2), device(1)]).unwrap_err();
        assert!(matches!(e, StoreError::Duplicate(d) if d == DevEui::new(1)));
        let all = s.load_devices().unwrap();
        assert_eq!(all.len(), 2, "device 2 must not be inserted");
        assert_eq!(all[1], device(1));
        assert_eq!(all[0], device(u64::MAX), "u64::MAX sorts as -1");
        assert!(s.remove_device(DevEui::new(1)).unwrap());
        assert!(!s.remove_device(DevEui::new(1)).unwrap());
        assert!(s.get_device(DevEui::new(1)).unwrap().is_none());
    }

    #[test]
    fn nonces_survive_reopen_without_clean_shutdown() {
        let tmp = tempfile::tempdir().unwrap();
        let state = NonceState {
            last_dev_nonce: Some(7),
            used_dev_nonces: vec![3, 9, 7],
            last_join_nonce: 5,
            last_rj_count1: Some(300),
        };
        {
            let mut s = SqliteStore::open(tmp.path()).unwrap();
            s.insert_devices(&[device(1)]).unwrap();
            assert_eq!(
                s.get_device(DevEui::new(1)).unwrap().unwrap().last_join,
                None
            );
            s.commit_nonces(&[NonceUpdate {
                dev_eui: DevEui::new(1),
                state: state.clone(),
                joined: JOINED,
            }])
            .unwrap();
            // Leak the connection: no close, no checkpoint, as if the process were killed.
            std::mem::forget(s);
        }
        let mut s = SqliteStore::open(tmp.path()).unwrap();
        let d = s.get_device(DevEui::new(1)).unwrap().unwrap();
        assert_eq!(d.nonces, state);
        assert_eq!(d.last_join, Some(JOINED));
        // A nonce reset (onboarding) keeps the record of the last join.
        write_nonces(&s.conn, DevEui::new(1), &NonceState::default(), None).unwrap();
        let d = s.get_device(DevEui::new(1)).unwrap().unwrap();
        assert_eq!(
            (d.nonces, d.last_join),
            (NonceState::default(), Some(JOINED))
        );
    }

    const JOINED: LastJoin = LastJoin {
        at_ms: 1_796_000_000_123,
        net_id: match NetId::new(0x13) {
            Some(n) => n,
            None => panic!(),
        },
    };

    #[test]
    fn a_database_of_the_first_schema_gains_the_last_join_columns() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(DB_FILE);
        {
            // The `devices` table as the first release created it, with one device.
            let c = Connection::open(&path).unwrap();
            c.execute_batch(
                "CREATE TABLE devices (dev_eui INTEGER PRIMARY KEY, join_eui INTEGER NOT NULL, \
                 mac_version TEXT NOT NULL, app_key BLOB NOT NULL, nwk_key BLOB, \
                 home_net_id INTEGER, owner_token TEXT, last_dev_nonce INTEGER, \
                 used_dev_nonces BLOB NOT NULL, last_join_nonce INTEGER NOT NULL) STRICT;
                 INSERT INTO devices VALUES (1, 2, '1.0.3', x'00', NULL, 19, NULL, 4, x'0400', 3);",
            )
            .unwrap();
        }
        let mut s = SqliteStore::open(tmp.path()).unwrap();
        let d = s.get_device(DevEui::new(1)).unwrap().unwrap();
        assert_eq!((d.nonces.last_dev_nonce, d.last_join), (Some(4), None));
        s.commit_nonces(&[NonceUpdate {
            dev_eui: DevEui::new(1),
            state: d.nonces.clone(),
            joined: JOINED,
        }])
        .unwrap();
        drop(s);
        // Opening it again finds the columns there.
        let mut s = SqliteStore::open(tmp.path()).unwrap();
        assert_eq!(
            s.get_device(DevEui::new(1)).unwrap().unwrap().last_join,
            Some(JOINED)
        );
    }

    /// A removed device imported again continues from its last JoinNonce (it used to restart
    /// at 0, so JoinNonces were used twice with the same root key).
    #[test]
    fn a_reinserted_device_never_moves_its_join_nonce_backwards() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = SqliteStore::open(tmp.path()).unwrap();
        s.insert_devices(&[device(1)]).unwrap();
        let state = |j| NonceState {
            last_dev_nonce: Some(3),
            used_dev_nonces: vec![],
            last_join_nonce: j,
            last_rj_count1: None,
        };
        s.commit_nonces(&[NonceUpdate {
            dev_eui: DevEui::new(1),
            state: state(5),
            joined: JOINED,
        }])
        .unwrap();
        assert!(s.remove_device(DevEui::new(1)).unwrap());
        s.insert_devices(&[device(1)]).unwrap();
        let again = s.get_device(DevEui::new(1)).unwrap().unwrap();
        assert_eq!(again.nonces.last_join_nonce, 5);
        assert_eq!(again.nonces.last_dev_nonce, None, "DevNonces start afresh");
        // Removed again at a lower JoinNonce (never happens, but the record keeps the highest).
        s.commit_nonces(&[NonceUpdate {
            dev_eui: DevEui::new(1),
            state: state(2),
            joined: JOINED,
        }])
        .unwrap();
        s.remove_device(DevEui::new(1)).unwrap();
        s.insert_devices(&[device(1)]).unwrap();
        assert_eq!(
            s.get_device(DevEui::new(1))
                .unwrap()
                .unwrap()
                .nonces
                .last_join_nonce,
            5
        );
        // Another device is not affected.
        s.insert_devices(&[device(2)]).unwrap();
        assert_eq!(
            s.get_device(DevEui::new(2))
                .unwrap()
                .unwrap()
                .nonces
                .last_join_nonce,
            0
        );
    }

    #[test]
    fn master_check_detects_a_different_master_key() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = SqliteStore::open(tmp.path()).unwrap();
        s.check_master(&[1; 24]).unwrap();
        s.check_master(&[1; 24]).unwrap();
        assert!(matches!(
            s.check_master(&[2; 24]),
            Err(StoreError::MasterKeyMismatch)
        ));
    }

    /// Device `i`'s join with DevNonce `i`, checked against `previous` (the JoinNonce after it).
    fn join_job(i: u32, previous: NonceState) -> Job {
        Job::Join(JoinCommit {
            update: NonceUpdate {
                dev_eui: DevEui::new(u64::from(i)),
                state: NonceState {
                    last_dev_nonce: Some(i as u16),
                    used_dev_nonces: vec![],
                    last_join_nonce: previous.last_join_nonce + 1,
                    last_rj_count1: None,
                },
                joined: JOINED,
            },
            previous,
            answer: None,
        })
    }

    /// A join for device `i` whose previous state is the default one.
    fn first_join(i: u32) -> Job {
        join_job(i, NonceState::default())
    }

    /// A paced writer over a new store with devices `0..devices`; each commit's join count
    /// arrives on the receiver.
    fn paced_writer(
        tmp: &tempfile::TempDir,
        devices: u64,
        (interval, enough): (Duration, usize),
    ) -> (GroupCommit<u32>, JoinHandle<SqliteStore>, Receiver<usize>) {
        let mut s = SqliteStore::open(tmp.path()).unwrap();
        s.insert_devices(&(0..devices).map(device).collect::<Vec<_>>())
            .unwrap();
        let (done_tx, done_rx) = mpsc::channel();
        let pacing = Pacing {
            max_batch: 4096,
            interval,
            enough,
        };
        let (gc, handle) = GroupCommit::<u32>::spawn_paced(s, pacing, 100, move |(r, n, _)| {
            r.unwrap();
            done_tx.send(n).unwrap();
        });
        (gc, handle, done_rx)
    }

    /// Submits device 0's join, which after a quiet spell commits at once and alone, then the
    /// joins of devices `1..=more` right after it.
    fn one_then(gc: &GroupCommit<u32>, done_rx: &Receiver<usize>, more: u32) {
        gc.submit(first_join(0), 0u32).unwrap();
        assert_eq!(done_rx.recv().unwrap(), 1, "the first join alone, at once");
        for i in 1..=more {
            gc.submit(first_join(i), i).unwrap();
        }
    }

    /// Stops the writer and checks that devices `0..devices` each committed one join.
    fn all_joined_once(gc: GroupCommit<u32>, handle: JoinHandle<SqliteStore>, devices: u64) {
        drop(gc);
        let mut store = handle.join().unwrap();
        for i in 0..devices {
            let d = store.get_device(DevEui::new(i)).unwrap().unwrap();
            assert_eq!(d.nonces.last_join_nonce, 1, "device {i} committed");
        }
    }

    #[test]
    fn paced_commits_gather_the_joins_of_an_interval() {
        let tmp = tempfile::tempdir().unwrap();
        let (gc, handle, done_rx) = paced_writer(&tmp, 21, (Duration::from_millis(300), 32));
        // Twenty joins right after a lone one wait out the interval and share one commit.
        one_then(&gc, &done_rx, 20);
        assert_eq!(
            done_rx.recv().unwrap(),
            20,
            "the twenty joins in one commit"
        );
        all_joined_once(gc, handle, 21);
    }

    #[test]
    fn paced_commits_go_ahead_once_enough_joins_wait() {
        let tmp = tempfile::tempdir().unwrap();
        let (gc, handle, done_rx) = paced_writer(&tmp, 9, (Duration::from_secs(60), 8));
        // Eight joins right after a lone one are enough: they do not wait out the minute.
        one_then(&gc, &done_rx, 8);
        let mut committed = 0;
        while committed < 8 {
            committed += done_rx
                .recv_timeout(Duration::from_secs(10))
                .expect("the eight joins committed well before the interval is out");
        }
        assert_eq!(committed, 8);
        all_joined_once(gc, handle, 9);
    }

    #[test]
    fn group_commit_releases_after_commit_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = SqliteStore::open(tmp.path()).unwrap();
        s.insert_devices(&(0..10).map(device).collect::<Vec<_>>())
            .unwrap();
        let (done_tx, done_rx) = mpsc::channel();
        let (gc, handle) = GroupCommit::<u32>::spawn(s, 4, 100, move |(r, _n, items)| {
            r.unwrap();
            for i in items {
                done_tx.send(i).unwrap();
            }
        });
        for i in 0..10u32 {
            let job = if i % 2 == 0 {
                // Device 8's join was checked against a state the store does not hold.
                let previous = NonceState {
                    last_join_nonce: if i == 8 { 5 } else { 0 },
                    ..NonceState::default()
                };
                join_job(i, previous)
            } else {
                Job::Nothing
            };
            gc.submit(job, i).unwrap();
        }
        drop(gc);
        let mut store = handle.join().unwrap();
        let released: Vec<(u32, Verdict)> = done_rx.iter().collect();
        assert_eq!(
            released.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            (0..10).collect::<Vec<_>>()
        );
        for (i, v) in &released {
            let expected = if *i == 8 {
                Verdict::Stale {
                    dev_eui: DevEui::new(8),
                    current: Some(NonceState::default()),
                    answer: None,
                }
            } else {
                Verdict::Done
            };
            assert_eq!(v, &expected, "item {i}");
        }
        assert_eq!(
            store.get_device(DevEui::new(8)).unwrap().unwrap().nonces,
            NonceState::default(),
            "a stale join is not written"
        );
        let d4 = store.get_device(DevEui::new(4)).unwrap().unwrap();
        assert_eq!(d4.nonces.last_dev_nonce, Some(4));
        assert_eq!(d4.last_join, Some(JOINED));
        let d5 = store.get_device(DevEui::new(5)).unwrap().unwrap();
        assert_eq!((d5.nonces.last_dev_nonce, d5.last_join), (None, None));
    }
}
