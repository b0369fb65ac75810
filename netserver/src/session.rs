//! Sessions: the in-memory table the uplink path reads, and the durable store behind a trait.
//!
//! - [`SessionBackend`] is the storage trait: load everything at start (current sessions, and
//!   sessions replaced by a rejoin and kept until their successor is used), commit a batch of
//!   writes atomically and durably. [`RedbBackend`] is the embedded default (one file,
//!   `sessions.redb`, in the data directory, no setup). A networked backend (PostgreSQL, for
//!   several instances) implements the same three methods with one transaction per batch.
//! - [`SessionStore`] runs a backend on its own thread with **group commit**: writes queued while
//!   a commit is in progress go into the next transaction together, so durability costs one
//!   flush per batch, not per join. `put(...).await` resolves once the write is durable.
//! - [`Sessions`] is the in-memory table, keyed by DevEUI with a DevAddr index for the data path.
//!   A [`Session`] there is compact (fixed-size fields, envelopes inline, KEK labels interned,
//!   no key schedules): about 380 bytes of heap with its index entries
//!   (`netserver/tests/memory.rs`). [`StoredSession`] is built only to persist one.
//!
//! On disk the network session keys are wrapped (RFC 3394) under the network server's KEK —
//! byte for byte the join server's envelopes when it wrapped them under that KEK, since the wrap
//! is deterministic; a key it sent in clear is wrapped before it is written — and the AppSKey
//! envelope is kept as received (wrapped under the application's KEK): the store never holds a
//! key in clear. In memory the network keys are unwrapped (see [`crate::keys`]).
//!
//! Frame counters are not written here but to the data path's write-ahead counter log
//! ([`crate::uplink_log`]): a session record is written at its join (and, for a replaced
//! session, at the rejoin that replaces it).

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use dashmap::DashMap;
use protocol::data::SessionCrypto;
use protocol::ids::{DevAddr, DevEui, DevNonce, JoinEui};
use protocol::keys::AppSKey;
use protocol::keywrap::{KeyEnvelope, KeyWrapError, WRAPPED_KEY_LEN};
/// The wrapped network session keys, stored as the join server sent them.
pub use protocol::ts002::NetworkKeys as StoredNetworkKeys;
use protocol::version::MacVersion;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use zeroize::Zeroize;

use crate::core::KeyedHasher;
use crate::keys::{LabeledKek, NetworkKeys};
use crate::metrics::Metrics;

/// Current format version of [`StoredSession`].
pub const STORED_SESSION_VERSION: u32 = 1;

/// A session as persisted. Keys are envelopes: network keys wrapped under the NS KEK, the
/// AppSKey as received from the join server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredSession {
    /// Format version ([`STORED_SESSION_VERSION`]).
    pub version: u32,
    /// The device.
    pub dev_eui: DevEui,
    /// Its join server.
    pub join_eui: JoinEui,
    /// Its address in this session.
    pub dev_addr: DevAddr,
    /// Its LoRaWAN version, as the join server reported it (absent if it did not).
    pub mac_version: Option<MacVersion>,
    /// The DevNonce of the Join-request that created the session.
    pub dev_nonce: DevNonce,
    /// Network session keys: `NwkSKey` (1.0.x) or `FNwkSIntKey`, `SNwkSIntKey`, `NwkSEncKey`
    /// (1.1), each wrapped under the NS KEK. Which variant it is tells the session's LoRaWAN
    /// generation: the join server answers with the keys of the device's version.
    pub network_keys: StoredNetworkKeys,
    /// The AppSKey envelope as the join server sent it (absent when it sent a SessionKeyID).
    pub app_s_key: Option<KeyEnvelope>,
    /// The SessionKeyID, when the application server fetches the AppSKey itself.
    #[serde(default, with = "opt_hex")]
    pub session_key_id: Option<Vec<u8>>,
    /// Radio parameters given in the Join-accept.
    pub rx: RxParams,
    /// Frame counters.
    pub counters: FrameCounters,
    /// When the session was created, ms since the Unix epoch.
    pub created_at_ms: u64,
    /// Session lifetime from the JoinAns, s (0 or absent: unlimited).
    pub lifetime_s: Option<u32>,
}

mod opt_hex {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_some(&hex::encode(b)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|t| hex::decode(t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// Class-A radio parameters of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RxParams {
    /// RX1DROffset.
    pub rx1_dr_offset: u8,
    /// RX2 data rate.
    pub rx2_data_rate: u8,
    /// RX2 frequency, Hz.
    pub rx2_frequency_hz: u32,
    /// RX1 delay, s (0 means 1).
    pub rx_delay_s: u8,
}

impl RxParams {
    /// The EU868 defaults (RP002): RX1DROffset 0, RX2 at DR0 on 869.525 MHz, RX1 after 1 s.
    pub const EU868_DEFAULT: Self = Self {
        rx1_dr_offset: 0,
        rx2_data_rate: 0,
        rx2_frequency_hz: protocol::region::RX2_FREQ_HZ,
        rx_delay_s: 1,
    };
}

/// Frame counters of a session (all 0 after a join).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrameCounters {
    /// Next expected FCntUp (32-bit).
    pub f_cnt_up: u32,
    /// Next NFCntDown (1.1) / FCntDown (1.0).
    pub n_f_cnt_down: u32,
    /// Next AFCntDown (1.1).
    pub a_f_cnt_down: u32,
}

/// A TS002 KeyEnvelope as a live session holds it: the `KEKLabel` interned (a server knows a
/// handful of KEKs, so every session shares one `Arc<str>` per label) and the `AESKey` inline,
/// so an envelope costs no heap allocation of its own.
///
/// `Debug` never shows the key; the bytes are zeroized on drop (a clear envelope holds a key).
#[derive(Clone, PartialEq, Eq)]
pub struct InlineEnvelope {
    /// The KEKLabel; `None` for a key in clear (an empty label on the wire).
    kek_label: Option<Arc<str>>,
    /// The RFC 3394 wrap of the key, or the key in clear in the first 16 bytes.
    aes_key: [u8; WRAPPED_KEY_LEN],
}

impl InlineEnvelope {
    /// From a received or stored envelope: a 24-byte wrap under a named KEK, or a 16-byte key in
    /// clear under an empty label. Anything else is refused (no 128-bit key has another form).
    pub fn new(env: &KeyEnvelope, labels: &KekLabels) -> Result<Self, KeyWrapError> {
        let (kek_label, expected) = if env.kek_label.is_empty() {
            (None, 16)
        } else {
            (Some(labels.intern(&env.kek_label)), WRAPPED_KEY_LEN)
        };
        if env.aes_key.len() != expected {
            return Err(KeyWrapError::KeyLength {
                role: AppSKey::ROLE,
                expected,
                found: env.aes_key.len(),
            });
        }
        let mut aes_key = [0u8; WRAPPED_KEY_LEN];
        aes_key[..expected].copy_from_slice(&env.aes_key);
        Ok(Self { kek_label, aes_key })
    }

    /// The KEKLabel ("" for a key in clear).
    pub fn kek_label(&self) -> &str {
        self.kek_label.as_deref().unwrap_or("")
    }

    /// The TS002 form, byte for byte the envelope it was made from.
    pub fn to_envelope(&self) -> KeyEnvelope {
        let len = if self.kek_label.is_some() {
            WRAPPED_KEY_LEN
        } else {
            16
        };
        KeyEnvelope {
            kek_label: self.kek_label().to_owned(),
            aes_key: self.aes_key[..len].to_vec(),
        }
    }

    /// Opens the AppSKey with `as_kek` (the label must name it), or reads it when in clear.
    /// `None` when this server cannot open it: it then forwards payloads still encrypted.
    pub fn open_app_s_key(&self, as_kek: Option<&LabeledKek>) -> Option<AppSKey> {
        match (&self.kek_label, as_kek) {
            (None, _) => {
                let mut k = [0u8; 16];
                k.copy_from_slice(&self.aes_key[..16]);
                let key = AppSKey::new(k);
                k.zeroize();
                Some(key)
            }
            (Some(label), Some(kek)) if **label == *kek.label => {
                protocol::keywrap::unwrap_key(&kek.key, &self.aes_key).ok()
            }
            _ => None,
        }
    }
}

impl Drop for InlineEnvelope {
    fn drop(&mut self) {
        self.aes_key.zeroize();
    }
}

impl std::fmt::Debug for InlineEnvelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InlineEnvelope")
            .field("kek_label", &self.kek_label())
            .field("aes_key", &"<redacted>")
            .finish()
    }
}

/// The KEKLabels of the live sessions, interned: one shared `Arc<str>` per label.
#[derive(Debug, Default)]
pub struct KekLabels(Mutex<Vec<Arc<str>>>);

impl KekLabels {
    /// The shared copy of `label` (added on first use). Labels come from the authenticated
    /// join server and the store, and a deployment has a few, so a scan is enough.
    pub fn intern(&self, label: &str) -> Arc<str> {
        let mut v = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(l) = v.iter().find(|l| ***l == *label) {
            return Arc::clone(l);
        }
        let l: Arc<str> = Arc::from(label);
        v.push(Arc::clone(&l));
        l
    }
}

/// A live session: fixed-size fields, the network keys in clear (zeroized on drop), the AppSKey
/// envelope inline, and the data path's state. One allocation (its `Arc`) per session; the
/// [`StoredSession`] is built only to persist it ([`Session::to_stored`]).
#[derive(Debug)]
pub struct Session {
    /// The device.
    pub dev_eui: DevEui,
    /// Its join server.
    pub join_eui: JoinEui,
    /// Its address in this session.
    pub dev_addr: DevAddr,
    /// The DevNonce of the Join-request that created the session.
    pub dev_nonce: DevNonce,
    /// Its LoRaWAN version, as the join server reported it (absent if it did not).
    pub reported_version: Option<MacVersion>,
    /// Radio parameters given in the Join-accept.
    pub rx: RxParams,
    /// Session lifetime from the JoinAns, s (0: unlimited).
    pub lifetime_s: u32,
    /// When the session was created, ms since the Unix epoch.
    pub created_at_ms: u64,
    /// The network session keys in clear.
    pub keys: NetworkKeys,
    /// The AppSKey envelope as the join server sent it (absent when it sent a SessionKeyID).
    pub app_s_key: Option<InlineEnvelope>,
    /// The AppSKey in clear, when the envelope opens with the application server's KEK that
    /// this server was given (`--as-kek`) or came in clear; `None`: application payloads are
    /// forwarded still encrypted, with the envelope. Opened once, not per frame.
    pub opened_app_s_key: Option<AppSKey>,
    /// The SessionKeyID, when the application server fetches the AppSKey itself (behind a
    /// thin box: most sessions have none).
    #[allow(clippy::box_collection)]
    pub session_key_id: Option<Box<Vec<u8>>>,
    /// The data path's mutable state (counters, ADR), see [`crate::live`].
    pub live: crate::live::Live,
}

impl Session {
    /// The live form of `stored`, its data state starting from the stored counters, its
    /// AppSKey opened if `as_kek` opens it. Fails only on an AppSKey envelope that holds no
    /// 128-bit key.
    pub fn new(
        stored: &StoredSession,
        keys: NetworkKeys,
        labels: &KekLabels,
        as_kek: Option<&LabeledKek>,
    ) -> Result<Self, KeyWrapError> {
        let app_s_key = stored
            .app_s_key
            .as_ref()
            .map(|e| InlineEnvelope::new(e, labels))
            .transpose()?;
        Ok(Self {
            opened_app_s_key: app_s_key.as_ref().and_then(|e| e.open_app_s_key(as_kek)),
            dev_eui: stored.dev_eui,
            join_eui: stored.join_eui,
            dev_addr: stored.dev_addr,
            dev_nonce: stored.dev_nonce,
            reported_version: stored.mac_version,
            rx: stored.rx,
            lifetime_s: stored.lifetime_s.unwrap_or(0),
            created_at_ms: stored.created_at_ms,
            keys,
            app_s_key,
            session_key_id: stored.session_key_id.clone().map(Box::new),
            live: crate::live::Live::new(stored.counters),
        })
    }

    /// The persisted form, with the current counters and the network keys wrapped under
    /// `ns_kek`.
    pub fn to_stored(&self, ns_kek: &LabeledKek) -> StoredSession {
        StoredSession {
            version: STORED_SESSION_VERSION,
            dev_eui: self.dev_eui,
            join_eui: self.join_eui,
            dev_addr: self.dev_addr,
            mac_version: self.reported_version,
            dev_nonce: self.dev_nonce,
            network_keys: self.keys.seal(ns_kek),
            app_s_key: self.app_s_key.as_ref().map(InlineEnvelope::to_envelope),
            session_key_id: self.session_key_id.as_deref().cloned(),
            rx: self.rx,
            counters: self.live.lock().counters,
            created_at_ms: self.created_at_ms,
            lifetime_s: (self.lifetime_s > 0).then_some(self.lifetime_s),
        }
    }

    /// The LoRaWAN version the data path applies: the reported one, else what the key set
    /// implies (1.1 keys: 1.1; 1.0 keys: 1.0.3, the most common 1.0 device).
    pub fn mac_version(&self) -> MacVersion {
        self.reported_version.unwrap_or(match self.keys {
            NetworkKeys::V1_1 { .. } => MacVersion::V1_1,
            NetworkKeys::V1_0(_) => MacVersion::V1_0_3,
        })
    }

    /// The session's key schedules, expanded now (on the caller's stack): the network keys,
    /// and the AppSKey when it is opened. Nothing is cached per session: with AES-NI the
    /// expansion costs about a quarter of a microsecond per frame (docs/benchmarks.md), while
    /// a cached `SessionCrypto` costs 2.9 KB per session.
    pub fn crypto(&self) -> SessionCrypto {
        SessionCrypto::new(
            &crate::live::network_session_keys(&self.keys),
            self.opened_app_s_key.as_ref(),
        )
    }
}

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

/// What a store holds at start.
#[derive(Debug, Default)]
pub struct Restored {
    /// The current sessions.
    pub current: Vec<StoredSession>,
    /// The replaced sessions still kept.
    pub previous: Vec<StoredSession>,
}

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
/// fresh store reads as empty.
pub(crate) fn open_redb(
    dir: &Path,
    file: &str,
    cache_bytes: usize,
    tables: &[RecordTable],
) -> Result<redb::Database, StoreError> {
    std::fs::create_dir_all(dir).map_err(backend_err)?;
    let db = redb::Builder::new()
        .set_cache_size(cache_bytes)
        .create(dir.join(file))
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
            let dev_eui = DevEui::new(k.value());
            let s: StoredSession =
                serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt {
                    dev_eui,
                    reason: e.to_string(),
                })?;
            if s.dev_eui != dev_eui || s.version != STORED_SESSION_VERSION {
                return Err(StoreError::Corrupt {
                    dev_eui,
                    reason: format!("record is for {} (format version {})", s.dev_eui, s.version),
                });
            }
            out.push(s);
        }
        Ok(out)
    }
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

type Ack = oneshot::Sender<Result<(), Arc<StoreError>>>;

enum Job {
    /// Writes committed together.
    Write(Vec<WriteOp>, Ack),
    /// Resolves once everything queued before it is committed.
    Flush(Ack),
}

/// The group-committing handle on a backend running on its own thread. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SessionStore {
    tx: mpsc::Sender<Job>,
}

/// Owns the store thread; [`StoreThread::join`] waits for it after every handle is dropped.
#[derive(Debug)]
pub struct StoreThread(JoinHandle<()>);

impl StoreThread {
    /// Waits for the store thread to commit what is queued and exit (after every
    /// [`SessionStore`] handle is dropped).
    pub fn join(self) {
        let _ = self.0.join();
    }
}

impl SessionStore {
    /// Loads the current sessions from `backend`, then starts the commit thread. `max_batch`
    /// bounds a group commit. For tools and tests; the server uses [`Self::start_all`].
    pub fn start<B: SessionBackend>(
        backend: B,
        max_batch: usize,
        metrics: Metrics,
    ) -> Result<(Self, Vec<StoredSession>, StoreThread), StoreError> {
        let (store, restored, thread) = Self::start_all(backend, max_batch, metrics)?;
        Ok((store, restored.current, thread))
    }

    /// Loads every session, current and replaced, from `backend`, then starts the commit
    /// thread. `max_batch` bounds a group commit.
    pub fn start_all<B: SessionBackend>(
        mut backend: B,
        max_batch: usize,
        metrics: Metrics,
    ) -> Result<(Self, Restored, StoreThread), StoreError> {
        let loaded = Restored {
            current: backend.load_all()?,
            previous: backend.load_previous()?,
        };
        let (tx, rx) = mpsc::channel(max_batch.max(1) * 4);
        let handle = std::thread::Builder::new()
            .name("netserver-store".into())
            .spawn(move || commit_loop(backend, rx, max_batch.max(1), metrics))
            .map_err(backend_err)?;
        Ok((Self { tx }, loaded, StoreThread(handle)))
    }

    async fn submit(&self, make: impl FnOnce(Ack) -> Job) -> Result<(), StoreError> {
        let (ack, done) = oneshot::channel();
        self.tx
            .send(make(ack))
            .await
            .map_err(|_| StoreError::Closed)?;
        match done.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Backend(e.to_string())),
            Err(_) => Err(StoreError::Closed),
        }
    }

    /// Stores a session; resolves once it is durable.
    pub async fn put(&self, s: StoredSession) -> Result<(), StoreError> {
        self.submit(|ack| Job::Write(vec![WriteOp::Put(Box::new(s))], ack))
            .await
    }

    /// Stores a new session and the session it replaces, kept until the first uplink under
    /// the new one, in one commit; resolves once both are durable.
    pub async fn put_replacing(
        &self,
        s: StoredSession,
        replaced: StoredSession,
    ) -> Result<(), StoreError> {
        let ops = vec![
            WriteOp::Put(Box::new(s)),
            WriteOp::PutPrevious(Box::new(replaced)),
        ];
        self.submit(|ack| Job::Write(ops, ack)).await
    }

    /// Queues the removal of the device's replaced session without waiting (the data path
    /// never waits for storage). If it is lost in a crash, the restart drops the replaced
    /// session anyway, since its successor's counters show it in use.
    pub fn forget_previous(&self, dev_eui: DevEui) {
        let (ack, _) = oneshot::channel();
        let op = vec![WriteOp::DeletePrevious(dev_eui)];
        if self.tx.try_send(Job::Write(op, ack)).is_err() {
            tracing::debug!(%dev_eui, "replaced session removal not queued (store busy)");
        }
    }

    /// Deletes a device's session; resolves once durable.
    pub async fn delete(&self, dev_eui: DevEui) -> Result<(), StoreError> {
        self.submit(|ack| Job::Write(vec![WriteOp::Delete(dev_eui)], ack))
            .await
    }

    /// Resolves once every write queued before it is durable.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.submit(Job::Flush).await
    }
}

fn commit_loop<B: SessionBackend>(
    mut backend: B,
    mut rx: mpsc::Receiver<Job>,
    max_batch: usize,
    metrics: Metrics,
) {
    let mut ops = Vec::with_capacity(max_batch);
    let mut acks = Vec::with_capacity(max_batch);
    while let Some(first) = rx.blocking_recv() {
        let mut next = Some(first);
        while let Some(job) = next.take() {
            match job {
                Job::Write(op, ack) => {
                    ops.extend(op);
                    acks.push(ack);
                }
                Job::Flush(ack) => acks.push(ack),
            }
            if ops.len() < max_batch {
                next = rx.try_recv().ok();
            }
        }
        let result = if ops.is_empty() {
            Ok(())
        } else {
            backend.commit(&ops).map_err(Arc::new)
        };
        let label = if result.is_ok() { "ok" } else { "error" };
        if !ops.is_empty() {
            metrics.store_commits.with_label_values(&[label]).inc();
        }
        if let Err(e) = &result {
            tracing::error!(error = %e, writes = ops.len(), "session store commit failed");
        }
        for ack in acks.drain(..) {
            let _ = ack.send(result.clone());
        }
        ops.clear();
    }
}

/// The in-memory session table: by DevEUI, with the DevAddr index the data path looks up.
///
/// Each index holds one entry per session, whose value is the session's `Arc` (16 bytes with
/// the key), never a copy of the session.
#[derive(Debug, Default)]
pub struct Sessions {
    by_dev_eui: DashMap<DevEui, Arc<Session>, KeyedHasher>,
    by_dev_addr: DashMap<DevAddr, Arc<Session>, KeyedHasher>,
    // Data path: a replaced session is kept until the first uplink under its successor
    // (the device may not have received the Join-accept); indexed by its DevAddr. Few
    // devices are between a rejoin and their next uplink at any time.
    previous: DashMap<DevEui, Arc<Session>, KeyedHasher>,
    previous_by_addr: DashMap<DevAddr, Vec<DevEui>, KeyedHasher>,
    labels: KekLabels,
}

impl Sessions {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// The interned KEKLabels the sessions' envelopes share.
    pub fn labels(&self) -> &KekLabels {
        &self.labels
    }

    /// Installs `s`, replacing the device's previous session; returns the replaced one, which
    /// is kept as a candidate of its DevAddr until [`Sessions::drop_previous`].
    pub fn insert(&self, s: Session) -> Option<Arc<Session>> {
        let s = Arc::new(s);
        let (dev_eui, dev_addr) = (s.dev_eui, s.dev_addr);
        let old = self.by_dev_eui.insert(dev_eui, Arc::clone(&s));
        if let Some(old) = &old {
            self.by_dev_addr
                .remove_if(&old.dev_addr, |_, cur| Arc::ptr_eq(cur, old));
        }
        self.by_dev_addr.insert(dev_addr, s);
        if let Some(old) = &old {
            self.keep_previous(Arc::clone(old));
        }
        old
    }

    /// Installs a replaced session restored from the store (the device had rejoined, and no
    /// uplink under its new session was seen before the restart).
    pub fn insert_previous(&self, s: Session) {
        self.keep_previous(Arc::new(s));
    }

    fn keep_previous(&self, old: Arc<Session>) {
        let (dev_eui, addr) = (old.dev_eui, old.dev_addr);
        if let Some(before) = self.previous.insert(dev_eui, old) {
            self.unindex_previous(before.dev_addr, dev_eui);
        }
        let mut list = self.previous_by_addr.entry(addr).or_default();
        if !list.contains(&dev_eui) {
            list.push(dev_eui);
        }
    }

    fn unindex_previous(&self, addr: DevAddr, dev_eui: DevEui) {
        if let dashmap::Entry::Occupied(mut e) = self.previous_by_addr.entry(addr) {
            e.get_mut().retain(|d| *d != dev_eui);
            if e.get().is_empty() {
                e.remove();
            }
        }
    }

    /// Every session an uplink from `dev_addr` may belong to: the current one holding the
    /// address, and replaced sessions at that address not yet superseded by an uplink.
    pub fn candidates(&self, dev_addr: DevAddr) -> Vec<Arc<Session>> {
        let mut out: Vec<Arc<Session>> = self.by_dev_addr(dev_addr).into_iter().collect();
        if let Some(list) = self.previous_by_addr.get(&dev_addr) {
            out.extend(
                list.iter()
                    .filter_map(|d| self.previous.get(d).map(|s| Arc::clone(&s))),
            );
        }
        out
    }

    /// Whether `s` is the device's current session.
    pub fn is_current(&self, s: &Arc<Session>) -> bool {
        self.by_dev_eui
            .get(&s.dev_eui)
            .is_some_and(|c| Arc::ptr_eq(&c, s))
    }

    /// Forgets the device's replaced session (its successor has been used); whether there was
    /// one.
    pub fn drop_previous(&self, dev_eui: DevEui) -> bool {
        match self.previous.remove(&dev_eui) {
            Some((_, old)) => {
                self.unindex_previous(old.dev_addr, dev_eui);
                true
            }
            None => false,
        }
    }

    /// Every current session (for a snapshot).
    pub fn all(&self) -> Vec<Arc<Session>> {
        self.by_dev_eui
            .iter()
            .map(|e| Arc::clone(e.value()))
            .collect()
    }

    /// The device's session.
    pub fn get(&self, dev_eui: DevEui) -> Option<Arc<Session>> {
        self.by_dev_eui.get(&dev_eui).map(|s| Arc::clone(&s))
    }

    /// The session holding `dev_addr`.
    pub fn by_dev_addr(&self, dev_addr: DevAddr) -> Option<Arc<Session>> {
        self.by_dev_addr.get(&dev_addr).map(|s| Arc::clone(&s))
    }

    /// Number of sessions.
    pub fn len(&self) -> usize {
        self.by_dev_eui.len()
    }

    /// Whether there is no session.
    pub fn is_empty(&self) -> bool {
        self.by_dev_eui.is_empty()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// [`the_stored_form_is_unchanged`]'s sessions as earlier releases stored them.
    const STORED_V1_0: &str = r#"{"version":1,"dev_eui":"0000000000000102","join_eui":"0102030405060708","dev_addr":"26000002","mac_version":"1.0.3","dev_nonce":7,"network_keys":{"kind":"v1_0","nwk_s_key":{"KEKLabel":"ns","AESKey":"010101010101010101010101010101010101010101010101"}},"app_s_key":{"KEKLabel":"as","AESKey":"020202020202020202020202020202020202020202020202"},"session_key_id":null,"rx":{"rx1_dr_offset":0,"rx2_data_rate":0,"rx2_frequency_hz":869525000,"rx_delay_s":1},"counters":{"f_cnt_up":0,"n_f_cnt_down":0,"a_f_cnt_down":0},"created_at_ms":1700000000000,"lifetime_s":null}"#;
    const STORED_V1_1: &str = r#"{"version":1,"dev_eui":"000000000000000A","join_eui":"0102030405060708","dev_addr":"26000001","mac_version":"1.1","dev_nonce":7,"network_keys":{"kind":"v1_1","f_nwk_s_int_key":{"KEKLabel":"ns","AESKey":"030303030303030303030303030303030303030303030303"},"s_nwk_s_int_key":{"KEKLabel":"ns","AESKey":"040404040404040404040404040404040404040404040404"},"nwk_s_enc_key":{"KEKLabel":"","AESKey":"05050505050505050505050505050505"}},"app_s_key":null,"session_key_id":"abcd","rx":{"rx1_dr_offset":0,"rx2_data_rate":0,"rx2_frequency_hz":869525000,"rx_delay_s":1},"counters":{"f_cnt_up":0,"n_f_cnt_down":0,"a_f_cnt_down":0},"created_at_ms":1700000000000,"lifetime_s":null}"#;

    pub(crate) fn stored(dev_eui: u64, dev_addr: u32) -> StoredSession {
        let env = |b: u8| KeyEnvelope {
            kek_label: "ns".into(),
            aes_key: vec![b; 24],
        };
        StoredSession {
            version: STORED_SESSION_VERSION,
            dev_eui: DevEui::new(dev_eui),
            join_eui: JoinEui::new(0x0102030405060708),
            dev_addr: DevAddr::new(dev_addr),
            mac_version: Some(MacVersion::V1_0_3),
            dev_nonce: DevNonce(7),
            network_keys: StoredNetworkKeys::V1_0 { nwk_s_key: env(1) },
            app_s_key: Some(KeyEnvelope {
                kek_label: "as".into(),
                aes_key: vec![2; 24],
            }),
            session_key_id: None,
            rx: RxParams::EU868_DEFAULT,
            counters: FrameCounters::default(),
            created_at_ms: 1_700_000_000_000,
            lifetime_s: None,
        }
    }

    /// The stored JSON of a session is a format that data directories keep across releases:
    /// this is what releases wrote, and what this one must read and write byte for byte.
    #[test]
    fn the_stored_form_is_unchanged() {
        let mut v11 = stored(0x0A, 0x2600_0001);
        v11.mac_version = Some(MacVersion::V1_1);
        v11.network_keys = StoredNetworkKeys::V1_1 {
            f_nwk_s_int_key: KeyEnvelope {
                kek_label: "ns".into(),
                aes_key: vec![3; 24],
            },
            s_nwk_s_int_key: KeyEnvelope {
                kek_label: "ns".into(),
                aes_key: vec![4; 24],
            },
            nwk_s_enc_key: KeyEnvelope {
                kek_label: String::new(),
                aes_key: vec![5; 16],
            },
        };
        v11.app_s_key = None;
        v11.session_key_id = Some(vec![0xAB, 0xCD]);
        let cases = [
            (stored(0x0102, 0x2600_0002), STORED_V1_0),
            (v11, STORED_V1_1),
        ];
        for (session, json) in cases {
            assert_eq!(serde_json::to_string(&session).unwrap(), json);
            let read: StoredSession = serde_json::from_str(json).unwrap();
            assert_eq!(read, session);
        }
    }

    #[test]
    fn a_live_session_round_trips_to_its_stored_form() {
        use protocol::keys::{Kek, NwkSKey};
        let ns = LabeledKek {
            label: "ns".into(),
            key: Kek::new([7; 16]),
        };
        let as_kek = LabeledKek {
            label: "as-1".into(),
            key: Kek::new([9; 16]),
        };
        let keys = NetworkKeys::V1_0(NwkSKey::new([1; 16]));
        let app = AppSKey::new([0x5A; 16]);
        let mut s = stored(1, 0x2600_0001);
        s.network_keys = keys.seal(&ns);
        s.app_s_key = Some(KeyEnvelope::seal("as-1", Some(&as_kek.key), &app).unwrap());
        s.session_key_id = Some(vec![1, 2, 3]);
        s.lifetime_s = Some(3600);
        let labels = KekLabels::default();
        let live = Session::new(&s, keys.clone(), &labels, Some(&as_kek)).unwrap();
        assert_eq!(live.to_stored(&ns), s, "byte for byte, envelopes included");
        assert_eq!(
            live.opened_app_s_key.as_ref().map(|k| *k.expose()),
            Some([0x5A; 16])
        );
        assert!(!format!("{live:?}").contains("5a5a"), "keys redacted");
        // Without the AS KEK (or under another one) the AppSKey stays wrapped.
        let other = LabeledKek {
            label: "as-2".into(),
            key: Kek::new([9; 16]),
        };
        for kek in [None, Some(&other)] {
            let s2 = Session::new(&s, keys.clone(), &labels, kek).unwrap();
            assert!(s2.opened_app_s_key.is_none());
        }
        // Labels are shared, not copied per session.
        let a = InlineEnvelope::new(s.app_s_key.as_ref().unwrap(), &labels).unwrap();
        assert!(Arc::ptr_eq(
            a.kek_label.as_ref().unwrap(),
            live.app_s_key.as_ref().unwrap().kek_label.as_ref().unwrap()
        ));
        // A key in clear round-trips and opens without a KEK; other lengths are refused.
        let clear = KeyEnvelope::seal("", None, &app).unwrap();
        let c = InlineEnvelope::new(&clear, &labels).unwrap();
        assert_eq!(c.to_envelope(), clear);
        assert!(c.open_app_s_key(None).is_some());
        let mut bad = clear;
        bad.aes_key.push(0);
        assert_eq!(
            InlineEnvelope::new(&bad, &labels).unwrap_err().kind(),
            "key_length"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn redb_store_persists_and_restores() {
        let dir = tempfile::tempdir().unwrap();
        let m = Metrics::new();
        {
            let (store, loaded, thread) =
                SessionStore::start(RedbBackend::open(dir.path()).unwrap(), 64, m.clone()).unwrap();
            assert!(loaded.is_empty());
            // Concurrent puts share group commits.
            let puts: Vec<_> = (0..50u64)
                .map(|i| {
                    let store = store.clone();
                    tokio::spawn(async move { store.put(stored(i, 0x2600_0000 + i as u32)).await })
                })
                .collect();
            for p in puts {
                p.await.unwrap().unwrap();
            }
            let mut replaced = stored(3, 0x2600_0FFF);
            let env = replaced.app_s_key.clone().unwrap();
            replaced.mac_version = Some(MacVersion::V1_1);
            replaced.session_key_id = Some(vec![1, 2, 3]);
            replaced.network_keys = StoredNetworkKeys::V1_1 {
                f_nwk_s_int_key: env.clone(),
                s_nwk_s_int_key: env.clone(),
                nwk_s_enc_key: env,
            };
            store.put(replaced).await.unwrap();
            store.delete(DevEui::new(4)).await.unwrap();
            store.flush().await.unwrap();
            drop(store);
            thread.join();
        }
        let commits = m.store_commits.with_label_values(&["ok"]).get();
        assert!((1..=52).contains(&commits), "{commits} commits");
        let (_store, mut loaded, _t) =
            SessionStore::start(RedbBackend::open(dir.path()).unwrap(), 64, Metrics::new())
                .unwrap();
        loaded.sort_by_key(|s| s.dev_eui);
        assert_eq!(loaded.len(), 49);
        let three = loaded.iter().find(|s| s.dev_eui == DevEui::new(3)).unwrap();
        assert_eq!(three.dev_addr, DevAddr::new(0x2600_0FFF));
        assert!(matches!(three.network_keys, StoredNetworkKeys::V1_1 { .. }));
        assert_eq!(three.mac_version, Some(MacVersion::V1_1));
        assert_eq!(three.session_key_id.as_deref(), Some(&[1u8, 2, 3][..]));
        assert_eq!(loaded[0], stored(0, 0x2600_0000));
        assert!(!loaded.iter().any(|s| s.dev_eui == DevEui::new(4)));
    }

    struct Failing;
    impl SessionBackend for Failing {
        fn load_all(&mut self) -> Result<Vec<StoredSession>, StoreError> {
            Ok(Vec::new())
        }
        fn load_previous(&mut self) -> Result<Vec<StoredSession>, StoreError> {
            Ok(Vec::new())
        }
        fn commit(&mut self, _: &[WriteOp]) -> Result<(), StoreError> {
            Err(StoreError::Backend("disk full".into()))
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn commit_failures_reach_every_writer() {
        let m = Metrics::new();
        let (store, _, _t) = SessionStore::start(Failing, 8, m.clone()).unwrap();
        let e = store.put(stored(1, 1)).await.unwrap_err();
        assert!(e.to_string().contains("disk full"), "{e}");
        assert_eq!(m.store_commits.with_label_values(&["error"]).get(), 1);
    }

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
