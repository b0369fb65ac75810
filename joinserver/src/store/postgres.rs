//! The PostgreSQL store: the join server's state shared by any number of instances
//! (`[store] url = "postgres://…"`, `--store-url`, `JOINSERVER_STORE_URL`).
//!
//! - The same tables as the embedded store (devices with root keys wrapped under `master.key`,
//!   the change log, ownership, retired JoinNonces, the master key check), plus `join_answers`:
//!   the answer of each accepted join, so a retry reaching another instance gets it identically.
//! - Migrations ([`MIGRATIONS`]) run at start and by `joinserver migrate`, under an advisory lock
//!   so instances starting together apply each once.
//! - [`Store::commit_joins`]: a batch is one statement (`UPDATE … FROM unnest(…) WHERE
//!   last_join_nonce + 1 = new`, with the answers inserted by the same statement), committed
//!   before any of its answers leaves; two instances racing for one device: one row updated.
//! - A change of the provisioned devices bumps the generation and sends `NOTIFY` on
//!   [`CHANNEL`] in its transaction; [`Store::wait_for_change`] waits on `LISTEN`, so another
//!   instance reads only the changed devices, at once.
//! - Connections come from an r2d2 pool; the writer keeps the one it took until it fails. A
//!   database that goes away makes every call fail with [`StoreError::Postgres`] (the link
//!   withholds the answers and counts); the next call connects again.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use postgres::fallible_iterator::FallibleIterator;
use postgres::types::ToSql;
use postgres::{Client, NoTls, Statement};
use protocol::ids::DevEui;
use r2d2_postgres::r2d2::{Pool, PooledConnection};
use r2d2_postgres::PostgresConnectionManager;

use super::{
    dev_eui_sql, eui_to_sql, AnswerKey, DeviceChanges, JoinCommit, JoinCommitted, NonceState,
    NonceUpdate, RawRow, Store, StoreError, StoredDevice, StoredPeer, CHANGE_LOG_GENERATIONS,
    CHANGE_LOG_MAX_DEVICES,
};

/// The `NOTIFY` channel of device changes (the payload is the new generation).
pub const CHANNEL: &str = "joinserver_devices";
/// The advisory lock key that serialises migrations ("JSMIGRAT" as ASCII).
const MIGRATION_LOCK: i64 = 0x4A53_4D49_4752_4154;
/// How long a call waits for a pooled connection before it fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How often [`Store::maintain`] deletes expired answers.
const PRUNE_EVERY: Duration = Duration::from_secs(5);

/// The schema, one migration per version, applied in order and recorded in
/// `js_schema_migrations`. Add new versions at the end; never edit an applied one.
pub const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        "CREATE TABLE js_meta (
        name  TEXT PRIMARY KEY,
        value BIGINT NOT NULL
    );
    INSERT INTO js_meta (name, value) VALUES ('generation', 0);
    CREATE TABLE js_master_check (
        id    INT PRIMARY KEY CHECK (id = 1),
        value BYTEA NOT NULL
    );
    CREATE TABLE devices (
        dev_eui          BIGINT PRIMARY KEY,     -- u64 bits as i64
        join_eui         BIGINT NOT NULL,
        mac_version      TEXT NOT NULL,
        app_key          BYTEA NOT NULL,         -- RFC 3394 wrap under master.key
        nwk_key          BYTEA,                  -- likewise; 1.1 only
        home_net_id      BIGINT,
        owner_token      TEXT,
        last_dev_nonce   BIGINT,                 -- NULL before the first join
        used_dev_nonces  BYTEA NOT NULL,         -- u16 LE, oldest first (1.0.2/1.0.3)
        last_join_nonce  BIGINT NOT NULL,
        last_join_ms     BIGINT,
        last_join_net_id BIGINT
    );
    CREATE TABLE device_changes (
        generation BIGINT NOT NULL,
        dev_eui    BIGINT                        -- NULL: too many to list
    );
    CREATE INDEX device_changes_generation ON device_changes (generation);
    CREATE TABLE ownership (
        dev_eui      BIGINT PRIMARY KEY,
        token_hash   BYTEA,
        manufacturer TEXT,
        owner        TEXT,
        claimed_ms   BIGINT,
        locked       BIGINT NOT NULL DEFAULT 0
    );
    CREATE INDEX ownership_owner ON ownership (owner);
    CREATE TABLE retired_join_nonces (
        dev_eui         BIGINT PRIMARY KEY,
        last_join_nonce BIGINT NOT NULL
    );
    CREATE TABLE join_answers (
        sender         BIGINT NOT NULL,
        transaction_id BIGINT NOT NULL,
        request        BYTEA NOT NULL,
        answer         BYTEA NOT NULL,
        created_ms     BIGINT NOT NULL,
        PRIMARY KEY (sender, transaction_id)
    );
    CREATE INDEX join_answers_created ON join_answers (created_ms);",
    ),
    (
        2,
        "ALTER TABLE devices ADD COLUMN last_rj_count1 BIGINT; -- LoRaWAN 1.1 RJcount1",
    ),
    (
        3,
        // The onboarding state (crate::store::pg_onboard) and the Backend Interfaces peer
        // tokens, as in the embedded store: keys and tokens as SHA-256 hashes only.
        "CREATE TABLE tenants (
        name        TEXT PRIMARY KEY,
        created_ms  BIGINT NOT NULL,
        home_net_id BIGINT
    );
    CREATE TABLE api_keys (
        id         TEXT PRIMARY KEY,
        name       TEXT NOT NULL,
        role       TEXT NOT NULL,
        key_hash   BYTEA NOT NULL UNIQUE,        -- SHA-256 of the key; never the key
        created_ms BIGINT NOT NULL,
        expires_ms BIGINT,
        revoked_ms BIGINT
    );
    CREATE TABLE audit (
        seq     BIGSERIAL PRIMARY KEY,
        at_ms   BIGINT NOT NULL,
        actor   TEXT NOT NULL,
        tenant  TEXT,
        action  TEXT NOT NULL,
        dev_eui TEXT,
        outcome TEXT NOT NULL,
        detail  TEXT NOT NULL
    );
    CREATE INDEX audit_dev_eui ON audit (dev_eui);
    CREATE INDEX audit_action_at ON audit (action, at_ms);
    CREATE FUNCTION js_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS
        $$ BEGIN RAISE EXCEPTION 'the audit log is append-only'; END $$;
    CREATE TRIGGER audit_no_change BEFORE UPDATE OR DELETE ON audit
        FOR EACH ROW EXECUTE FUNCTION js_audit_append_only();
    CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
        FOR EACH STATEMENT EXECUTE FUNCTION js_audit_append_only();
    CREATE TABLE bi_peer_tokens (
        token_hash BYTEA PRIMARY KEY,            -- SHA-256 of the token; never the token
        net_id     BIGINT NOT NULL,
        created_ms BIGINT NOT NULL
    );",
    ),
    (
        4,
        "ALTER TABLE audit ADD COLUMN refers_to BIGINT; -- the record this one follows from
    CREATE INDEX audit_refers_to ON audit (refers_to);",
    ),
    (
        5,
        // The network servers on the link (`joinserver peers add`), shared by every instance:
        // their link key and network KEK wrapped under master.key, never in clear.
        "CREATE TABLE link_peers (
        net_id     BIGINT PRIMARY KEY,
        link_key   BYTEA NOT NULL,
        ns_kek     BYTEA NOT NULL,
        kek_label  TEXT NOT NULL,
        created_ms BIGINT NOT NULL
    );",
    ),
];

type Manager = PostgresConnectionManager<NoTls>;

/// A pool of connections to one PostgreSQL database.
pub type PgPool = Pool<Manager>;

/// A `postgres` error as a store error (its text names the cause, never a parameter value).
pub(crate) fn pg(e: postgres::Error) -> StoreError {
    StoreError::Postgres(e.to_string())
}

/// Opens a pool on `url` (`postgres://user@host:port/db`) with at most `size` connections; its
/// connection settings too.
pub fn pool(url: &str, size: u32) -> Result<(PgPool, postgres::Config), StoreError> {
    let mut config: postgres::Config = url
        .parse()
        .map_err(|e: postgres::Error| StoreError::Postgres(format!("store url: {e}")))?;
    config
        .connect_timeout(CONNECT_TIMEOUT)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10))
        .application_name("joinserver");
    let pool = Pool::builder()
        .max_size(size.max(2))
        .min_idle(Some(0))
        .connection_timeout(CONNECT_TIMEOUT)
        // A connection that broke is noticed by its failed call (and `is_closed`), not by a
        // round trip on every checkout.
        .test_on_check_out(false)
        .build(PostgresConnectionManager::new(config.clone(), NoTls))
        .map_err(|e| StoreError::Postgres(format!("connecting: {e}")))?;
    Ok((pool, config))
}

/// A connection held by a [`PgStore`], with its prepared statements.
pub(crate) struct Held {
    pub(crate) client: PooledConnection<Manager>,
    statements: HashMap<&'static str, Statement>,
}

impl Held {
    /// The prepared statement for `sql`, prepared on first use.
    pub(crate) fn statement(&mut self, sql: &'static str) -> Result<Statement, StoreError> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql).map_err(pg)?;
        self.statements.insert(sql, s.clone());
        Ok(s)
    }
}

/// The PostgreSQL store. Each instance holds at most one pooled connection at a time (taken on
/// first use, given back when a call fails), plus its own `LISTEN` connection once
/// [`Store::wait_for_change`] is called.
pub struct PgStore {
    pool: OffRuntime<PgPool>,
    /// For the `LISTEN` connection, which stays outside the pool.
    config: postgres::Config,
    held: Option<Held>,
    listener: Option<Client>,
    answer_ttl_ms: u64,
    last_prune: Option<Instant>,
}

/// Whether this thread runs inside a tokio runtime (an async task, or its blocking pool).
fn in_runtime() -> bool {
    tokio::runtime::Handle::try_current().is_ok()
}

/// Runs `f` on a thread outside any tokio runtime when called inside one: the blocking
/// `postgres` client drives a runtime of its own, which must not start on a thread driving
/// another (a Backend Interfaces request authenticated on the listener's runtime).
pub(crate) fn off_runtime<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if !in_runtime() {
        return f();
    }
    std::thread::scope(|s| s.spawn(f).join()).unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// A value whose drop closes `postgres` connections (a pool), dropped on a thread of its own when
/// dropped inside a tokio runtime (a server's API state at shutdown): closing a blocking client
/// there would start a runtime inside a runtime.
struct OffRuntime<T: Send + 'static>(Option<T>);

impl<T: Send + 'static> std::ops::Deref for OffRuntime<T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.0.as_ref().expect("present until dropped")
    }
}

impl<T: Send + 'static> Drop for OffRuntime<T> {
    fn drop(&mut self) {
        if let Some(v) = self.0.take() {
            if in_runtime() {
                std::thread::spawn(move || drop(v));
            }
        }
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        if in_runtime() {
            let connections = (self.held.take(), self.listener.take());
            std::thread::spawn(move || drop(connections));
        }
    }
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("pool", &self.pool.state())
            .finish_non_exhaustive()
    }
}

/// The columns of a device as [`RawRow`] takes them, joined with its owner.
macro_rules! select_devices {
    () => {
        "SELECT d.dev_eui, d.join_eui, d.mac_version, d.app_key, d.nwk_key, d.home_net_id, \
         d.owner_token, d.last_dev_nonce, d.used_dev_nonces, d.last_join_nonce, d.last_join_ms, \
         d.last_join_net_id, o.owner, d.last_rj_count1 FROM devices d LEFT JOIN ownership o ON o.dev_eui = d.dev_eui"
    };
}

const SELECT_ALL: &str = concat!(select_devices!(), " ORDER BY d.dev_eui");
const SELECT_ONE: &str = concat!(select_devices!(), " WHERE d.dev_eui = $1");

/// One round of a batch's joins (each device at most once): the conditional update and the
/// answers of the rows it updated, in one statement; the DevEUIs updated.
const COMMIT_JOINS: &str = "WITH u AS ( \
       SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bytea[], $4::bigint[], \
         $5::bigint[], $6::bigint[], $7::bigint[], $8::bigint[], $9::bytea[], $10::bytea[], \
         $11::bigint[], $12::bigint[], $13::bytea[], $14::bigint[]) \
         AS u(dev_eui, last_dev_nonce, used, join_nonce, at_ms, net_id, sender, tid, request, \
           answer, prev_join_nonce, prev_dev_nonce, prev_used, rj_count1)), \
     upd AS ( \
       UPDATE devices d SET last_dev_nonce = u.last_dev_nonce, used_dev_nonces = u.used, \
         last_join_nonce = u.join_nonce, last_join_ms = u.at_ms, last_join_net_id = u.net_id, \
         last_rj_count1 = u.rj_count1 \
       FROM u WHERE d.dev_eui = u.dev_eui AND d.last_join_nonce = u.prev_join_nonce \
         AND d.last_dev_nonce IS NOT DISTINCT FROM u.prev_dev_nonce \
         AND d.used_dev_nonces = u.prev_used \
       RETURNING d.dev_eui), \
     ans AS ( \
       INSERT INTO join_answers (sender, transaction_id, request, answer, created_ms) \
       SELECT u.sender, u.tid, u.request, u.answer, u.at_ms FROM u JOIN upd ON upd.dev_eui = u.dev_eui \
       WHERE u.sender IS NOT NULL \
       ON CONFLICT (sender, transaction_id) DO UPDATE SET request = excluded.request, \
         answer = excluded.answer, created_ms = excluded.created_ms) \
     SELECT dev_eui FROM upd";

const NONCES_OF: &str = "SELECT dev_eui, last_dev_nonce, used_dev_nonces, last_join_nonce, \
     last_rj_count1 FROM devices WHERE dev_eui = ANY($1)";

const FIND_ANSWERS: &str = "SELECT a.sender, a.transaction_id, a.request, a.answer \
     FROM join_answers a JOIN unnest($1::bigint[], $2::bigint[]) AS k(sender, tid) \
     ON a.sender = k.sender AND a.transaction_id = k.tid";

impl PgStore {
    /// Opens the store on `url` with a pool of at most `pool_size` connections, and applies the
    /// migrations it lacks.
    pub fn connect(url: &str, pool_size: u32) -> Result<Self, StoreError> {
        let mut s = Self::connect_unmigrated(url, pool_size)?;
        s.migrate()?;
        Ok(s)
    }

    /// Opens the store on `url` without touching its schema (`joinserver migrate` reports what
    /// it applies).
    pub fn connect_unmigrated(url: &str, pool_size: u32) -> Result<Self, StoreError> {
        let (pool, config) = pool(url, pool_size)?;
        Ok(Self::on_pool(pool, config))
    }

    /// A store on an existing pool (another thread's handle on the same database).
    fn on_pool(pool: PgPool, config: postgres::Config) -> Self {
        Self {
            pool: OffRuntime(Some(pool)),
            config,
            held: None,
            listener: None,
            answer_ttl_ms: 30_000,
            last_prune: None,
        }
    }

    /// Another handle on the same pool.
    pub fn handle(&self) -> Self {
        let mut s = Self::on_pool(PgPool::clone(&self.pool), self.config.clone());
        s.answer_ttl_ms = self.answer_ttl_ms;
        s
    }

    /// How long the answers of accepted joins are kept for retries reaching other instances
    /// (the link's `answer_cache_ttl_ms`).
    pub fn set_answer_ttl_ms(&mut self, ms: u64) {
        self.answer_ttl_ms = ms;
    }

    /// Applies the migrations the database lacks, under an advisory lock; the versions applied.
    pub fn migrate(&mut self) -> Result<Vec<i32>, StoreError> {
        let ledger = pgmigrate::Ledger {
            table: "js_schema_migrations",
            columns: "applied_ms BIGINT NOT NULL",
            values: "(extract(epoch FROM clock_timestamp()) * 1000)::bigint",
            lock: MIGRATION_LOCK,
        };
        self.with(|h| pgmigrate::apply(&mut h.client, &ledger, MIGRATIONS).map_err(pg))
    }

    /// The schema version of the database (0 before any migration).
    pub fn schema_version(&mut self) -> Result<i32, StoreError> {
        self.with(|h| {
            let row = h
                .client
                .query_one(
                    "SELECT COALESCE((SELECT max(version) FROM js_schema_migrations), 0) \
                     WHERE to_regclass('js_schema_migrations') IS NOT NULL \
                     UNION ALL SELECT 0 LIMIT 1",
                    &[],
                )
                .map_err(pg)?;
            Ok(row.get(0))
        })
    }

    /// Runs `f` on the held connection (taking one from the pool first). A failed call gives the
    /// connection up, so the next call starts on a fresh one (the database may have restarted).
    pub(crate) fn with<R>(
        &mut self,
        f: impl FnOnce(&mut Held) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        if self.held.as_ref().is_some_and(|h| h.client.is_closed()) {
            self.held = None;
        }
        if self.held.is_none() {
            let client = self
                .pool
                .get()
                .map_err(|e| StoreError::Postgres(format!("no connection: {e}")))?;
            self.held = Some(Held {
                client,
                statements: HashMap::new(),
            });
        }
        let held = self.held.as_mut().expect("a connection was just taken");
        let r = f(held);
        if matches!(r, Err(StoreError::Postgres(_))) {
            self.held = None;
        }
        r
    }

    /// Inserts devices, all or nothing, as one provisioning change.
    fn insert_provisioned(&mut self, devices: &[StoredDevice]) -> Result<(), StoreError> {
        let inserted = self.with(|h| {
            let mut tx = h.client.transaction().map_err(pg)?;
            if !insert_devices_tx(&mut tx, devices)? {
                return Ok(false);
            }
            let euis: Vec<i64> = devices.iter().map(|d| dev_eui_sql(d.dev_eui)).collect();
            bump_generation(&mut tx, &euis)?;
            tx.commit().map_err(pg)?;
            Ok(true)
        })?;
        if inserted {
            Ok(())
        } else {
            Err(StoreError::Duplicate(self.first_duplicate(devices)?))
        }
    }

    /// Those of `euis` (DevEUIs as stored) that are provisioned.
    pub(crate) fn stored_among(
        &mut self,
        euis: &[i64],
    ) -> Result<std::collections::HashSet<i64>, StoreError> {
        self.with(|h| {
            Ok(h.client
                .query(
                    "SELECT dev_eui FROM devices WHERE dev_eui = ANY($1)",
                    &[&euis],
                )
                .map_err(pg)?
                .iter()
                .map(|r| r.get(0))
                .collect())
        })
    }

    /// The first of `devices` that is stored already or repeated in the list.
    fn first_duplicate(&mut self, devices: &[StoredDevice]) -> Result<DevEui, StoreError> {
        let euis: Vec<i64> = devices.iter().map(|d| dev_eui_sql(d.dev_eui)).collect();
        let stored = self.stored_among(&euis)?;
        let mut seen = std::collections::HashSet::new();
        let dup = devices
            .iter()
            .find(|d| stored.contains(&dev_eui_sql(d.dev_eui)) || !seen.insert(d.dev_eui))
            .map_or(DevEui::new(0), |d| d.dev_eui);
        Ok(dup)
    }

    /// Every row of every table of the join server's state, in a canonical order, hashed with
    /// SHA-256, and the row count of each table: what `joinserver store copy` compares.
    pub fn fingerprint(&mut self) -> Result<super::Fingerprint, StoreError> {
        let devices = self.load_devices()?;
        let retired = self.with(|h| {
            Ok(h.client
                .query(
                    "SELECT dev_eui, last_join_nonce FROM retired_join_nonces ORDER BY dev_eui",
                    &[],
                )
                .map_err(pg)?
                .iter()
                .map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1)))
                .collect::<Vec<_>>())
        })?;
        let ownership = self.with(|h| {
            Ok(h.client
                .query(
                    "SELECT dev_eui, token_hash, manufacturer, owner, claimed_ms, locked \
                     FROM ownership ORDER BY dev_eui",
                    &[],
                )
                .map_err(pg)?
                .iter()
                .map(|r| super::OwnershipRow {
                    dev_eui: r.get(0),
                    token_hash: r.get(1),
                    manufacturer: r.get(2),
                    owner: r.get(3),
                    claimed_ms: r.get(4),
                    locked: r.get(5),
                })
                .collect::<Vec<_>>())
        })?;
        Ok(super::Fingerprint::of(&devices, &ownership, &retired))
    }

    /// Writes a copy of another store's state (devices with their nonce state and last join,
    /// ownership, retired JoinNonces) into this empty store, in one transaction.
    pub fn import_copy(
        &mut self,
        devices: &[StoredDevice],
        ownership: &[super::OwnershipRow],
        retired: &[(i64, i64)],
    ) -> Result<(), StoreError> {
        self.with(|h| {
            let mut tx = h.client.transaction().map_err(pg)?;
            let n: i64 = tx
                .query_one("SELECT count(*) FROM devices", &[])
                .map_err(pg)?
                .get(0);
            if n != 0 {
                return Err(StoreError::Postgres(format!(
                    "the target database already holds {n} devices: copy only into an empty store"
                )));
            }
            for chunk in devices.chunks(1_000) {
                let c = DeviceColumns::of(chunk);
                let last_ms: Vec<Option<i64>> = chunk
                    .iter()
                    .map(|d| {
                        d.last_join
                            .map(|j| i64::try_from(j.at_ms).unwrap_or(i64::MAX))
                    })
                    .collect();
                let last_net: Vec<Option<i64>> = chunk
                    .iter()
                    .map(|d| d.last_join.map(|j| i64::from(j.net_id.as_u32())))
                    .collect();
                let mut params = c.params();
                params.push(&last_ms);
                params.push(&last_net);
                tx.execute(
                    "INSERT INTO devices (dev_eui, join_eui, mac_version, app_key, nwk_key, \
                       home_net_id, owner_token, last_dev_nonce, used_dev_nonces, \
                       last_join_nonce, last_rj_count1, last_join_ms, last_join_net_id) \
                     SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::bytea[], \
                       $5::bytea[], $6::bigint[], $7::text[], $8::bigint[], $9::bytea[], \
                       $10::bigint[], $11::bigint[], $12::bigint[], $13::bigint[])",
                    &params,
                )
                .map_err(pg)?;
            }
            for o in ownership {
                tx.execute(
                    "INSERT INTO ownership (dev_eui, token_hash, manufacturer, owner, \
                       claimed_ms, locked) VALUES ($1, $2, $3, $4, $5, $6)",
                    &[
                        &o.dev_eui,
                        &o.token_hash,
                        &o.manufacturer,
                        &o.owner,
                        &o.claimed_ms,
                        &o.locked,
                    ],
                )
                .map_err(pg)?;
            }
            for (d, j) in retired {
                tx.execute(
                    "INSERT INTO retired_join_nonces (dev_eui, last_join_nonce) VALUES ($1, $2)",
                    &[d, j],
                )
                .map_err(pg)?;
            }
            let euis: Vec<i64> = devices.iter().map(|d| dev_eui_sql(d.dev_eui)).collect();
            bump_generation(&mut tx, &euis)?;
            tx.commit().map_err(pg)
        })
    }
}

/// The columns of a list of devices as arrays, for `unnest`.
struct DeviceColumns {
    dev_eui: Vec<i64>,
    join_eui: Vec<i64>,
    mac_version: Vec<&'static str>,
    app_key: Vec<Vec<u8>>,
    nwk_key: Vec<Option<Vec<u8>>>,
    home_net_id: Vec<Option<i64>>,
    owner_token: Vec<Option<String>>,
    last_dev_nonce: Vec<Option<i64>>,
    used: Vec<Vec<u8>>,
    join_nonce: Vec<i64>,
    rj_count1: Vec<Option<i64>>,
}

impl DeviceColumns {
    fn of(devices: &[StoredDevice]) -> Self {
        Self {
            dev_eui: devices.iter().map(|d| dev_eui_sql(d.dev_eui)).collect(),
            join_eui: devices
                .iter()
                .map(|d| eui_to_sql(d.join_eui.as_u64()))
                .collect(),
            mac_version: devices.iter().map(|d| d.mac_version.as_str()).collect(),
            app_key: devices.iter().map(|d| d.app_key_wrapped.clone()).collect(),
            nwk_key: devices.iter().map(|d| d.nwk_key_wrapped.clone()).collect(),
            home_net_id: devices
                .iter()
                .map(|d| d.home_net_id.map(|n| i64::from(n.as_u32())))
                .collect(),
            owner_token: devices.iter().map(|d| d.owner_token.clone()).collect(),
            last_dev_nonce: devices
                .iter()
                .map(|d| d.nonces.last_dev_nonce.map(i64::from))
                .collect(),
            used: devices.iter().map(|d| d.nonces.history_blob()).collect(),
            join_nonce: devices
                .iter()
                .map(|d| i64::from(d.nonces.last_join_nonce))
                .collect(),
            rj_count1: devices
                .iter()
                .map(|d| d.nonces.last_rj_count1.map(i64::from))
                .collect(),
        }
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.dev_eui,
            &self.join_eui,
            &self.mac_version,
            &self.app_key,
            &self.nwk_key,
            &self.home_net_id,
            &self.owner_token,
            &self.last_dev_nonce,
            &self.used,
            &self.join_nonce,
            &self.rj_count1,
        ]
    }
}

/// Inserts `devices` inside `tx` (a device removed before continues from its last JoinNonce);
/// `false`, with `tx` failed, if one of them is stored already.
pub(crate) fn insert_devices_tx(
    tx: &mut postgres::Transaction<'_>,
    devices: &[StoredDevice],
) -> Result<bool, StoreError> {
    for chunk in devices.chunks(1_000) {
        let c = DeviceColumns::of(chunk);
        let r = tx.execute(
            "INSERT INTO devices (dev_eui, join_eui, mac_version, app_key, nwk_key, \
               home_net_id, owner_token, last_dev_nonce, used_dev_nonces, \
               last_join_nonce, last_rj_count1) \
             SELECT u.dev_eui, u.join_eui, u.mac_version, u.app_key, u.nwk_key, \
               u.home_net_id, u.owner_token, u.last_dev_nonce, u.used, \
               GREATEST(u.join_nonce, COALESCE(r.last_join_nonce, 0)), u.rj_count1 \
             FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::bytea[], \
               $5::bytea[], $6::bigint[], $7::text[], $8::bigint[], $9::bytea[], \
               $10::bigint[], $11::bigint[]) AS u(dev_eui, join_eui, mac_version, \
               app_key, nwk_key, home_net_id, owner_token, last_dev_nonce, used, \
               join_nonce, rj_count1) \
             LEFT JOIN retired_join_nonces r ON r.dev_eui = u.dev_eui",
            &c.params(),
        );
        if let Err(e) = r {
            if e.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION) {
                return Ok(false);
            }
            return Err(pg(e));
        }
    }
    Ok(true)
}

/// Removes a device inside `tx`, keeping its last JoinNonce for a later re-import; `false` if
/// it did not exist. The caller marks the change.
pub(crate) fn delete_device_tx(
    tx: &mut postgres::Transaction<'_>,
    dev_eui: i64,
) -> Result<bool, StoreError> {
    tx.execute(
        "INSERT INTO retired_join_nonces (dev_eui, last_join_nonce) \
         SELECT dev_eui, last_join_nonce FROM devices WHERE dev_eui = $1 \
         ON CONFLICT (dev_eui) DO UPDATE SET last_join_nonce = \
           GREATEST(retired_join_nonces.last_join_nonce, excluded.last_join_nonce)",
        &[&dev_eui],
    )
    .map_err(pg)?;
    let n = tx
        .execute("DELETE FROM devices WHERE dev_eui = $1", &[&dev_eui])
        .map_err(pg)?;
    Ok(n > 0)
}

/// Milliseconds since the Unix epoch, as stored.
pub(crate) fn now_ms() -> i64 {
    i64::try_from(protocol::time::unix_ms(std::time::SystemTime::now())).unwrap_or(i64::MAX)
}

/// Marks a provisioning change inside `tx`: bumps the generation (its row lock orders
/// concurrent changes), logs the devices, prunes the log, and notifies [`CHANNEL`] (delivered
/// at commit).
pub(crate) fn bump_generation(
    tx: &mut postgres::Transaction<'_>,
    devices: &[i64],
) -> Result<(), StoreError> {
    let generation: i64 = tx
        .query_one(
            "UPDATE js_meta SET value = value + 1 WHERE name = 'generation' RETURNING value",
            &[],
        )
        .map_err(pg)?
        .get(0);
    if devices.len() > CHANGE_LOG_MAX_DEVICES {
        tx.execute(
            "INSERT INTO device_changes (generation, dev_eui) VALUES ($1, NULL)",
            &[&generation],
        )
        .map_err(pg)?;
    } else {
        tx.execute(
            "INSERT INTO device_changes (generation, dev_eui) \
             SELECT $1, d FROM unnest($2::bigint[]) AS d",
            &[&generation, &devices],
        )
        .map_err(pg)?;
    }
    tx.execute(
        "DELETE FROM device_changes WHERE generation <= $1",
        &[&(generation - CHANGE_LOG_GENERATIONS as i64)],
    )
    .map_err(pg)?;
    tx.execute(
        "SELECT pg_notify($1, $2)",
        &[&CHANNEL, &generation.to_string()],
    )
    .map_err(pg)?;
    Ok(())
}

fn raw_row(r: &postgres::Row) -> RawRow {
    RawRow {
        dev_eui: r.get(0),
        join_eui: r.get(1),
        mac_version: r.get(2),
        app_key: r.get(3),
        nwk_key: r.get(4),
        home_net_id: r.get(5),
        owner_token: r.get(6),
        last_dev_nonce: r.get(7),
        used: r.get(8),
        last_join_nonce: r.get(9),
        last_join_ms: r.get(10),
        last_join_net_id: r.get(11),
        owner: r.get(12),
        last_rj_count1: r.get(13),
    }
}

/// Splits a batch into rounds in which each device appears at most once, keeping each device's
/// updates in order (a device joining twice within one batch): indices into the batch.
fn rounds(batch: &[JoinCommit]) -> Vec<Vec<usize>> {
    let mut rounds: Vec<Vec<usize>> = Vec::new();
    let mut seen: HashMap<DevEui, usize> = HashMap::new();
    for (i, j) in batch.iter().enumerate() {
        let r = seen.entry(j.update.dev_eui).or_insert(0);
        if rounds.len() <= *r {
            rounds.push(Vec::new());
        }
        rounds[*r].push(i);
        *r += 1;
    }
    rounds
}

/// The columns of one round of joins, for [`COMMIT_JOINS`].
struct JoinColumns<'a> {
    dev_eui: Vec<i64>,
    last_dev_nonce: Vec<Option<i64>>,
    used: Vec<Vec<u8>>,
    join_nonce: Vec<i64>,
    at_ms: Vec<i64>,
    net_id: Vec<i64>,
    sender: Vec<Option<i64>>,
    tid: Vec<Option<i64>>,
    request: Vec<Option<&'a [u8]>>,
    answer: Vec<Option<&'a [u8]>>,
    prev_join_nonce: Vec<i64>,
    prev_dev_nonce: Vec<Option<i64>>,
    prev_used: Vec<Vec<u8>>,
    rj_count1: Vec<Option<i64>>,
}

impl<'a> JoinColumns<'a> {
    fn of(batch: &'a [JoinCommit], round: &[usize]) -> Self {
        let js = || round.iter().map(|&i| &batch[i]);
        let u = |j: &'a JoinCommit| -> &'a NonceUpdate { &j.update };
        // One answer per (sender, TransactionID) in a statement: PostgreSQL refuses an
        // `ON CONFLICT DO UPDATE` that would touch one row twice, which would fail the whole
        // batch. A peer reusing a TransactionID for two devices keeps the first answer.
        let mut keys = std::collections::HashSet::new();
        let kept: Vec<_> = js()
            .map(|j| {
                j.answer
                    .as_ref()
                    .filter(|(k, _)| keys.insert((k.sender, k.transaction_id)))
            })
            .collect();
        Self {
            dev_eui: js().map(|j| dev_eui_sql(u(j).dev_eui)).collect(),
            last_dev_nonce: js()
                .map(|j| u(j).state.last_dev_nonce.map(i64::from))
                .collect(),
            used: js().map(|j| u(j).state.history_blob()).collect(),
            join_nonce: js()
                .map(|j| i64::from(u(j).state.last_join_nonce))
                .collect(),
            at_ms: js()
                .map(|j| i64::try_from(u(j).joined.at_ms).unwrap_or(i64::MAX))
                .collect(),
            net_id: js()
                .map(|j| i64::from(u(j).joined.net_id.as_u32()))
                .collect(),
            // Sender ids are NetIDs (24 bits): they fit an i64 as they are.
            sender: kept
                .iter()
                .map(|a| a.map(|(k, _)| k.sender as i64))
                .collect(),
            tid: kept
                .iter()
                .map(|a| a.map(|(k, _)| i64::from(k.transaction_id)))
                .collect(),
            request: kept
                .iter()
                .map(|a| a.map(|(k, _)| k.request.as_slice()))
                .collect(),
            answer: kept.iter().map(|a| a.map(|(_, a)| &a[..])).collect(),
            prev_join_nonce: js()
                .map(|j| i64::from(j.previous.last_join_nonce))
                .collect(),
            prev_dev_nonce: js()
                .map(|j| j.previous.last_dev_nonce.map(i64::from))
                .collect(),
            prev_used: js().map(|j| j.previous.history_blob()).collect(),
            rj_count1: js()
                .map(|j| u(j).state.last_rj_count1.map(i64::from))
                .collect(),
        }
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 14] {
        [
            &self.dev_eui,
            &self.last_dev_nonce,
            &self.used,
            &self.join_nonce,
            &self.at_ms,
            &self.net_id,
            &self.sender,
            &self.tid,
            &self.request,
            &self.answer,
            &self.prev_join_nonce,
            &self.prev_dev_nonce,
            &self.prev_used,
            &self.rj_count1,
        ]
    }
}

impl Store for PgStore {
    fn load_devices(&mut self) -> Result<Vec<StoredDevice>, StoreError> {
        let rows = self.with(|h| {
            let s = h.statement(SELECT_ALL)?;
            h.client.query(&s, &[]).map_err(pg)
        })?;
        rows.iter().map(|r| raw_row(r).into_device()).collect()
    }

    fn get_device(&mut self, dev_eui: DevEui) -> Result<Option<StoredDevice>, StoreError> {
        let row = self.with(|h| {
            let s = h.statement(SELECT_ONE)?;
            h.client.query_opt(&s, &[&dev_eui_sql(dev_eui)]).map_err(pg)
        })?;
        row.map(|r| raw_row(&r).into_device()).transpose()
    }

    fn insert_devices(&mut self, devices: &[StoredDevice]) -> Result<(), StoreError> {
        self.insert_provisioned(devices)
    }

    fn remove_device(&mut self, dev_eui: DevEui) -> Result<bool, StoreError> {
        self.with(|h| {
            let mut tx = h.client.transaction().map_err(pg)?;
            let d = dev_eui_sql(dev_eui);
            let removed = delete_device_tx(&mut tx, d)?;
            if removed {
                bump_generation(&mut tx, &[d])?;
            }
            tx.commit().map_err(pg)?;
            Ok(removed)
        })
    }

    fn commit_nonces(&mut self, batch: &[NonceUpdate]) -> Result<(), StoreError> {
        self.with(|h| {
            let mut tx = h.client.transaction().map_err(pg)?;
            for u in batch {
                tx.execute(
                    "UPDATE devices SET last_dev_nonce = $2, used_dev_nonces = $3, \
                     last_join_nonce = $4, last_join_ms = $5, last_join_net_id = $6, \
                     last_rj_count1 = $7 WHERE dev_eui = $1",
                    &[
                        &dev_eui_sql(u.dev_eui),
                        &u.state.last_dev_nonce.map(i64::from),
                        &u.state.history_blob(),
                        &i64::from(u.state.last_join_nonce),
                        &i64::try_from(u.joined.at_ms).unwrap_or(i64::MAX),
                        &i64::from(u.joined.net_id.as_u32()),
                        &u.state.last_rj_count1.map(i64::from),
                    ],
                )
                .map_err(pg)?;
            }
            tx.commit().map_err(pg)
        })
    }

    fn generation(&mut self) -> Result<u64, StoreError> {
        self.with(|h| {
            let g: i64 = h
                .client
                .query_one("SELECT value FROM js_meta WHERE name = 'generation'", &[])
                .map_err(pg)?
                .get(0);
            Ok(g as u64)
        })
    }

    fn changes_since(&mut self, seen: u64) -> Result<(u64, DeviceChanges), StoreError> {
        self.with(|h| {
            let mut tx = h
                .client
                .build_transaction()
                .isolation_level(postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .map_err(pg)?;
            let now: i64 = tx
                .query_one("SELECT value FROM js_meta WHERE name = 'generation'", &[])
                .map_err(pg)?
                .get(0);
            let now = now as u64;
            if now == seen {
                return Ok((now, DeviceChanges::Devices(Vec::new())));
            }
            if now < seen || now - seen > CHANGE_LOG_GENERATIONS {
                return Ok((now, DeviceChanges::All));
            }
            let row = tx
                .query_one(
                    "SELECT COUNT(DISTINCT generation), COALESCE(bool_or(dev_eui IS NULL), false) \
                     FROM device_changes WHERE generation > $1",
                    &[&(seen as i64)],
                )
                .map_err(pg)?;
            let (logged, everything): (i64, bool) = (row.get(0), row.get(1));
            if everything || logged as u64 != now - seen {
                return Ok((now, DeviceChanges::All));
            }
            let devices = tx
                .query(
                    "SELECT DISTINCT dev_eui FROM device_changes WHERE generation > $1 \
                     ORDER BY dev_eui",
                    &[&(seen as i64)],
                )
                .map_err(pg)?
                .iter()
                .map(|r| DevEui::new(r.get::<_, i64>(0) as u64))
                .collect();
            tx.commit().map_err(pg)?;
            Ok((now, DeviceChanges::Devices(devices)))
        })
    }

    fn check_master(&mut self, check_value: &[u8]) -> Result<(), StoreError> {
        self.with(|h| {
            // Whoever inserts first sets it; everyone compares with what is stored.
            h.client
                .execute(
                    "INSERT INTO js_master_check (id, value) VALUES (1, $1) \
                     ON CONFLICT (id) DO NOTHING",
                    &[&check_value],
                )
                .map_err(pg)?;
            let stored: Vec<u8> = h
                .client
                .query_one("SELECT value FROM js_master_check WHERE id = 1", &[])
                .map_err(pg)?
                .get(0);
            if stored.len() == check_value.len()
                && bool::from(subtle::ConstantTimeEq::ct_eq(&stored[..], check_value))
            {
                Ok(())
            } else {
                Err(StoreError::MasterKeyMismatch)
            }
        })
    }

    fn add_link_peer(&mut self, peer: &StoredPeer) -> Result<bool, StoreError> {
        self.with(|h| {
            let mut tx = h.client.transaction().map_err(pg)?;
            let n = tx
                .execute(
                    "INSERT INTO link_peers (net_id, link_key, ns_kek, kek_label, created_ms) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (net_id) DO NOTHING",
                    &[
                        &i64::from(peer.net_id),
                        &peer.link_key,
                        &peer.ns_kek,
                        &peer.kek_label,
                        &(peer.created_ms as i64),
                    ],
                )
                .map_err(pg)?;
            // Wakes every instance's reload thread (its payload is not read).
            tx.execute("SELECT pg_notify($1, 'peers')", &[&CHANNEL])
                .map_err(pg)?;
            tx.commit().map_err(pg)?;
            Ok(n == 1)
        })
    }

    fn link_peers(&mut self) -> Result<Vec<StoredPeer>, StoreError> {
        self.with(|h| {
            let rows = h
                .client
                .query(
                    "SELECT net_id, link_key, ns_kek, kek_label, created_ms FROM link_peers \
                     ORDER BY net_id",
                    &[],
                )
                .map_err(pg)?;
            Ok(rows
                .iter()
                .map(|r| StoredPeer {
                    net_id: r.get::<_, i64>(0) as u32,
                    link_key: r.get(1),
                    ns_kek: r.get(2),
                    kek_label: r.get(3),
                    created_ms: r.get::<_, i64>(4) as u64,
                })
                .collect())
        })
    }

    fn commit_joins(&mut self, batch: &[JoinCommit]) -> Result<Vec<JoinCommitted>, StoreError> {
        let rounds = rounds(batch);
        let applied = self.with(|h| {
            let s = h.statement(COMMIT_JOINS)?;
            let mut applied = vec![false; batch.len()];
            let mut mark = |round: &[usize], rows: Vec<postgres::Row>| {
                let done: std::collections::HashSet<i64> =
                    rows.iter().map(|r| r.get::<_, i64>(0)).collect();
                for &i in round {
                    applied[i] = done.contains(&dev_eui_sql(batch[i].update.dev_eui));
                }
            };
            if let [round] = rounds.as_slice() {
                // The usual batch: one statement, its own transaction.
                let c = JoinColumns::of(batch, round);
                mark(round, h.client.query(&s, &c.params()).map_err(pg)?);
            } else {
                let mut tx = h.client.transaction().map_err(pg)?;
                for round in &rounds {
                    let c = JoinColumns::of(batch, round);
                    mark(round, tx.query(&s, &c.params()).map_err(pg)?);
                }
                tx.commit().map_err(pg)?;
            }
            Ok(applied)
        })?;
        let stale: Vec<i64> = batch
            .iter()
            .zip(&applied)
            .filter(|(_, a)| !**a)
            .map(|(j, _)| dev_eui_sql(j.update.dev_eui))
            .collect();
        let mut current: HashMap<i64, NonceState> = HashMap::new();
        if !stale.is_empty() {
            let rows = self.with(|h| {
                let s = h.statement(NONCES_OF)?;
                h.client.query(&s, &[&stale]).map_err(pg)
            })?;
            for r in rows {
                let d: i64 = r.get(0);
                let state = NonceState::from_columns(
                    DevEui::new(d as u64),
                    r.get(1),
                    r.get::<_, &[u8]>(2),
                    r.get(3),
                    r.get(4),
                )?;
                current.insert(d, state);
            }
        }
        Ok(batch
            .iter()
            .zip(applied)
            .map(|(j, a)| {
                if a {
                    JoinCommitted::Applied
                } else {
                    current
                        .get(&dev_eui_sql(j.update.dev_eui))
                        .map_or(JoinCommitted::Gone, |s| JoinCommitted::Stale(s.clone()))
                }
            })
            .collect())
    }

    fn find_answers(&mut self, keys: &[AnswerKey]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let senders: Vec<i64> = keys.iter().map(|k| k.sender as i64).collect();
        let tids: Vec<i64> = keys.iter().map(|k| i64::from(k.transaction_id)).collect();
        let rows = self.with(|h| {
            let s = h.statement(FIND_ANSWERS)?;
            h.client.query(&s, &[&senders, &tids]).map_err(pg)
        })?;
        let mut found: HashMap<(i64, i64), (Vec<u8>, Vec<u8>)> = rows
            .iter()
            .map(|r| ((r.get(0), r.get(1)), (r.get(2), r.get(3))))
            .collect();
        Ok(keys
            .iter()
            .map(|k| {
                let (request, answer) =
                    found.remove(&(k.sender as i64, i64::from(k.transaction_id)))?;
                // The same TransactionID for another request is not a retry.
                (request == k.request).then_some(answer)
            })
            .collect())
    }

    fn wait_for_change(&mut self, timeout: Duration) -> Result<(), StoreError> {
        if self.listener.as_ref().is_some_and(Client::is_closed) {
            self.listener = None;
        }
        if self.listener.is_none() {
            // A connection of its own, outside the pool: LISTEN belongs to the session.
            let mut client = self.config.connect(NoTls).map_err(pg);
            if let Ok(c) = client.as_mut() {
                if let Err(e) = c.batch_execute(&format!("LISTEN {CHANNEL}")) {
                    client = Err(pg(e));
                }
            }
            match client {
                Ok(c) => self.listener = Some(c),
                Err(e) => {
                    std::thread::sleep(timeout);
                    return Err(e);
                }
            }
        }
        let listener = self.listener.as_mut().expect("just connected");
        let first = listener.notifications().timeout_iter(timeout).next();
        match first {
            Ok(_) => {
                // Take whatever else is queued (without blocking): one reload answers them all.
                while let Ok(Some(_)) = listener.notifications().iter().next() {}
                Ok(())
            }
            Err(e) => {
                self.listener = None;
                Err(pg(e))
            }
        }
    }

    fn maintain(&mut self) -> Result<(), StoreError> {
        if self.last_prune.is_some_and(|t| t.elapsed() < PRUNE_EVERY) {
            return Ok(());
        }
        self.last_prune = Some(Instant::now());
        let before = now_ms() - i64::try_from(self.answer_ttl_ms).unwrap_or(i64::MAX);
        self.with(|h| {
            h.client
                .execute("DELETE FROM join_answers WHERE created_ms < $1", &[&before])
                .map_err(pg)
                .map(drop)
        })
    }
}

/// `url` without its password (`postgres://user@host:port/db`), for logs and output; the
/// URL's scheme alone if it does not parse.
pub fn display_url(url: &str) -> String {
    let Ok(c) = url.parse::<postgres::Config>() else {
        return "postgres://(unparsable URL)".into();
    };
    let host = c.get_hosts().first().map_or_else(String::new, |h| match h {
        postgres::config::Host::Tcp(h) => h.clone(),
        postgres::config::Host::Unix(p) => p.display().to_string(),
    });
    let port = c.get_ports().first().map_or(5432, |p| *p);
    format!(
        "postgres://{}@{host}:{port}/{}",
        c.get_user().unwrap_or_default(),
        c.get_dbname().unwrap_or_default()
    )
}

/// Whether `url` names a PostgreSQL database (`postgres://` or `postgresql://`).
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::LastJoin;
    use protocol::ids::NetId;

    fn join(dev: u64, join_nonce: u32) -> JoinCommit {
        JoinCommit {
            update: NonceUpdate {
                dev_eui: DevEui::new(dev),
                state: NonceState {
                    last_dev_nonce: Some(1),
                    used_dev_nonces: vec![],
                    last_join_nonce: join_nonce,
                    last_rj_count1: None,
                },
                joined: LastJoin {
                    at_ms: 1,
                    net_id: NetId::new(0x13).unwrap(),
                },
            },
            previous: NonceState::default(),
            answer: None,
        }
    }

    /// A device joining twice in one batch gets two rounds, in order; others stay in the first.
    #[test]
    fn rounds_hold_each_device_at_most_once_in_order() {
        let batch = [join(1, 1), join(2, 1), join(1, 2), join(3, 1), join(1, 3)];
        assert_eq!(rounds(&batch), vec![vec![0, 1, 3], vec![2], vec![4]]);
        assert!(rounds(&[]).is_empty());
    }

    #[test]
    fn displayed_urls_carry_no_password() {
        assert_eq!(
            display_url("postgres://js:s3cret@127.0.0.1:5433/joins"),
            "postgres://js@127.0.0.1:5433/joins"
        );
        assert!(!display_url("postgres://js:s3cret@db/x").contains("s3cret"));
    }

    #[test]
    fn postgres_urls_are_recognised() {
        assert!(is_postgres_url("postgres://u@127.0.0.1:5432/db"));
        assert!(is_postgres_url("postgresql://u@localhost/db"));
        assert!(!is_postgres_url("/var/lib/joinserver"));
        assert!(!is_postgres_url("sqlite://x"));
    }
}
