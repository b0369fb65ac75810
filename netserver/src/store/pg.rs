//! The PostgreSQL backend: sessions, replaced sessions and frame counters in tables shared by
//! every `netserver serve` instance given the same `[store] url`, through a connection pool
//! (r2d2; a broken connection is replaced at the next checkout, so a database that went away
//! is used again once it is back).
//!
//! - Sessions are stored as the redb backend stores them (the JSON of [`StoredSession`]: the
//!   network keys wrapped under the KEK, the AppSKey envelope as received, never a key in
//!   clear). A batch is one transaction of multi-row statements; it ends with a `NOTIFY` on
//!   [`SESSIONS_CHANNEL`] naming the devices, so that the other instances load them
//!   ([`crate::store::sync`]).
//! - A session write also resets the device's counter row to the new session's identity, so
//!   the first uplink of a session made through one instance is judged against it by every
//!   other.
//! - Counter batches are checked, not blind: one transaction locks the batch's rows
//!   (`SELECT … FOR UPDATE`, in DevEUI order so that two instances never deadlock), judges each
//!   record against the committed counters ([`judge`]) and writes the result. A frame two
//!   instances both accepted in memory is delivered by the one that commits first; a replay
//!   another instance already counted is refused.
//!
//! Migrations ([`MIGRATIONS`]) are applied at start and by `netserver migrate`, under an
//! advisory lock so that instances starting together apply each one once.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use protocol::ids::{DevAddr, DevEui};
use r2d2_postgres::postgres::{self, NoTls};
use r2d2_postgres::PostgresConnectionManager;

use crate::core::device::{FrameCounters, PendingConfirmed};
use crate::ops::config::StoreConfig;
use crate::store::backend::{SessionBackend, StoreError, WriteOp};
use crate::store::counters::{judge, CounterBackend, CounterRecord, QueueItems, Verdict};
use crate::store::embedded::{backend_err, decode_session};
use crate::store::queue::{DownlinkQueue, QueueFull, QueuedDownlink};
use crate::store::shared_queue;
use crate::store::stored::StoredSession;
use crate::store::url::redacted;

/// The channel a session batch notifies: `WRITER:DEVEUI,DEVEUI,...` (hex), the writer being
/// the id of the [`PgStore`] that wrote them.
pub const SESSIONS_CHANNEL: &str = "netserver_sessions";

/// The schema, in order; `ns_schema_migrations` records which are applied.
pub const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        "CREATE TABLE ns_sessions (
        dev_eui bigint PRIMARY KEY,
        dev_addr bigint NOT NULL,
        record bytea NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX ns_sessions_updated_at ON ns_sessions (updated_at);
    CREATE TABLE ns_previous_sessions (
        dev_eui bigint PRIMARY KEY,
        record bytea NOT NULL
    );
    CREATE TABLE ns_counters (
        dev_eui bigint PRIMARY KEY,
        dev_addr bigint NOT NULL,
        dev_nonce integer NOT NULL,
        created_at_ms bigint NOT NULL,
        f_cnt_up bigint NOT NULL,
        n_f_cnt_down bigint NOT NULL,
        a_f_cnt_down bigint NOT NULL,
        rekey_confirmed boolean NOT NULL
    );",
    ),
    (
        2,
        "CREATE TABLE ns_events (
        id bigserial PRIMARY KEY,
        at timestamptz NOT NULL DEFAULT now(),
        event jsonb NOT NULL
    );",
    ),
    (
        3,
        "CREATE TABLE ns_gateway_owners (
        gateway_eui bigint PRIMARY KEY,
        instance bigint NOT NULL,
        handoff text NOT NULL,
        pulled_at timestamptz NOT NULL,
        expires_at timestamptz NOT NULL
    );
    CREATE INDEX ns_gateway_owners_pulled_at ON ns_gateway_owners (pulled_at);",
    ),
    (
        4,
        "CREATE TABLE ns_downlink_queue (
        id bigserial PRIMARY KEY,
        dev_eui bigint NOT NULL,
        f_port integer NOT NULL,
        payload bytea NOT NULL,
        confirmed boolean NOT NULL,
        queued_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX ns_downlink_queue_dev_eui ON ns_downlink_queue (dev_eui, id);",
    ),
    (
        5,
        // The confirmed downlink waiting for its ACK, shared so that the acknowledging uplink
        // reaching another instance is recognised (crate::store::counters::CounterRecord).
        "ALTER TABLE ns_counters ADD COLUMN pending_f_cnt bigint, ADD COLUMN pending_id bigint;",
    ),
];

/// A key of the advisory lock held while migrating (any constant, shared by all instances).
const MIGRATION_LOCK: i64 = 0x6e73_6d69_6772_6174; // "nsmigrat"

/// A NOTIFY payload is limited to 8,000 bytes: DevEUIs per notification (17 bytes each).
const NOTIFY_CHUNK: usize = 400;

type Pool = r2d2::Pool<PostgresConnectionManager<NoTls>>;

/// The PostgreSQL store: a pool of connections to one database. Cheap to clone.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    config: postgres::Config,
    /// Accepted events go to `ns_events` in the counters' transaction.
    event_log: bool,
    /// This process's writer id (random), in its notifications: its own listener skips them.
    writer: u64,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgStore")
    }
}

/// DevEUIs, DevAddrs and counters are unsigned; PostgreSQL has signed integers only. The
/// bits are kept (a DevEUI above 2^63 is stored negative).
fn eui_sql(d: DevEui) -> i64 {
    d.as_u64() as i64
}

fn eui_of(v: i64) -> DevEui {
    DevEui::new(v as u64)
}

impl PgStore {
    /// Connects a pool of `pool_size` to `url` (with `password`, if the URL has none). Fails
    /// if the database cannot be reached within 10 s.
    pub fn connect(url: &str, password: Option<&str>, pool_size: u32) -> Result<Self, StoreError> {
        let mut config: postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Backend(format!("store.url {}: {e}", redacted(url))))?;
        if config.get_password().is_none() {
            if let Some(p) = password {
                config.password(p);
            }
        }
        config.application_name("netserver");
        config.connect_timeout(Duration::from_secs(5));
        let manager = PostgresConnectionManager::new(config.clone(), NoTls);
        let pool = r2d2::Pool::builder()
            .max_size(pool_size.max(1))
            .min_idle(Some(1))
            // A broken connection is noticed when it is used (and then dropped); checking
            // each checkout would cost a round trip per batch.
            .test_on_check_out(false)
            .connection_timeout(Duration::from_secs(10))
            .build(manager)
            .map_err(|e| StoreError::Backend(format!("connecting to {}: {e}", redacted(url))))?;
        Ok(Self {
            pool,
            config,
            event_log: false,
            writer: rand::random(),
        })
    }

    /// Connects as `[store]` says (the password from `password_file`, if any) and applies the
    /// migrations not yet applied.
    pub fn open(store: &StoreConfig) -> anyhow::Result<Self> {
        use anyhow::Context;
        let pg = Self::connect_config(store)?;
        let applied = pg
            .migrate()
            .with_context(|| format!("migrating {}", redacted(&store.url)))?;
        if !applied.is_empty() {
            tracing::info!(?applied, "store migrations applied");
        }
        Ok(pg)
    }

    /// Connects as `[store]` says (the password from `password_file`, if any).
    pub fn connect_config(store: &StoreConfig) -> anyhow::Result<Self> {
        let password = match store.password_file.trim() {
            "" => None,
            path => Some(zeroize::Zeroizing::new(crate::keys::read_secret(
                std::path::Path::new(path),
                |s: &str| Ok::<_, std::convert::Infallible>(s.to_owned()),
            )?)),
        };
        let mut pg = Self::connect(
            &store.url,
            password.as_deref().map(String::as_str),
            store.pool_size,
        )?;
        pg.event_log = store.event_log;
        Ok(pg)
    }

    /// The writer id this store's notifications carry.
    pub fn writer(&self) -> u64 {
        self.writer
    }

    /// A pooled connection.
    pub fn conn(
        &self,
    ) -> Result<r2d2::PooledConnection<PostgresConnectionManager<NoTls>>, StoreError> {
        self.pool.get().map_err(backend_err)
    }

    /// A dedicated connection outside the pool (for `LISTEN`).
    pub fn dedicated(&self) -> Result<postgres::Client, StoreError> {
        self.config.connect(NoTls).map_err(backend_err)
    }

    /// Applies the migrations not yet applied; returns the versions it applied.
    pub fn migrate(&self) -> Result<Vec<i32>, StoreError> {
        let ledger = pgmigrate::Ledger {
            table: "ns_schema_migrations",
            columns: "applied_at timestamptz NOT NULL DEFAULT now()",
            values: "now()",
            lock: MIGRATION_LOCK,
        };
        let mut c = self.conn()?;
        pgmigrate::apply(&mut c, &ledger, MIGRATIONS).map_err(backend_err)
    }

    fn load_table(&self, sql: &str) -> Result<Vec<StoredSession>, StoreError> {
        let mut c = self.conn()?;
        let rows = c.query(sql, &[]).map_err(backend_err)?;
        rows.iter()
            .map(|r| decode_session(eui_of(r.get(0)), r.get(1)))
            .collect()
    }

    /// Writes counter records as they are (replacing the devices' rows): `store copy`.
    pub fn put_counters(&self, batch: &[(DevEui, CounterRecord)]) -> Result<(), StoreError> {
        let mut columns = CounterColumns::default();
        let last: BTreeMap<DevEui, &CounterRecord> = batch.iter().map(|(d, r)| (*d, r)).collect();
        for (d, r) in last {
            columns.push(d, r);
        }
        let mut c = self.conn()?;
        let mut tx = c.transaction().map_err(backend_err)?;
        columns.upsert(&mut tx, false)?;
        tx.commit().map_err(backend_err)
    }

    /// The current sessions of `devices` (for the session listener).
    pub fn sessions_of(&self, devices: &[DevEui]) -> Result<Vec<StoredSession>, StoreError> {
        let keys: Vec<i64> = devices.iter().map(|d| eui_sql(*d)).collect();
        let mut c = self.conn()?;
        let rows = c
            .query(
                "SELECT dev_eui, record FROM ns_sessions WHERE dev_eui = ANY($1)",
                &[&keys],
            )
            .map_err(backend_err)?;
        rows.iter()
            .map(|r| decode_session(eui_of(r.get(0)), r.get(1)))
            .collect()
    }

    /// Queues `item` for `dev_eui` in the shared downlink queue ([`shared_queue::push`]).
    pub fn queue_push(
        &self,
        dev_eui: DevEui,
        item: &QueuedDownlink,
        per_device: usize,
    ) -> Result<Result<(u64, usize), QueueFull>, StoreError> {
        shared_queue::push(&mut *self.conn()?, self.writer, dev_eui, item, per_device)
    }

    /// Loads the shared queues of `devices` (`None`: all) into `queue` ([`shared_queue::reload`]).
    pub fn reload_queue(
        &self,
        queue: &DownlinkQueue,
        devices: Option<&[DevEui]>,
    ) -> Result<usize, StoreError> {
        shared_queue::reload(&mut *self.conn()?, queue, devices)
    }

    /// The counter records of `devices`.
    pub fn counters_of(
        &self,
        devices: &[DevEui],
    ) -> Result<HashMap<DevEui, CounterRecord>, StoreError> {
        let keys: Vec<i64> = devices.iter().map(|d| eui_sql(*d)).collect();
        let mut c = self.conn()?;
        let rows = c
            .query(
                &format!("{COUNTER_COLUMNS} WHERE dev_eui = ANY($1)"),
                &[&keys],
            )
            .map_err(backend_err)?;
        Ok(rows.iter().map(counter_row).collect())
    }
}

const COUNTER_COLUMNS: &str = "SELECT dev_eui, dev_addr, dev_nonce, created_at_ms, f_cnt_up, \
     n_f_cnt_down, a_f_cnt_down, rekey_confirmed, pending_f_cnt, pending_id FROM ns_counters";

fn counter_row(r: &postgres::Row) -> (DevEui, CounterRecord) {
    let u32_at = |i: usize| r.get::<_, i64>(i) as u32;
    (
        eui_of(r.get(0)),
        CounterRecord {
            dev_addr: DevAddr::new(u32_at(1)),
            dev_nonce: r.get::<_, i32>(2) as u16,
            created_at_ms: r.get::<_, i64>(3) as u64,
            counters: FrameCounters {
                f_cnt_up: u32_at(4),
                n_f_cnt_down: u32_at(5),
                a_f_cnt_down: u32_at(6),
            },
            rekey_confirmed: r.get(7),
            pending: r
                .get::<_, Option<i64>>(8)
                .zip(r.get::<_, Option<i64>>(9))
                .and_then(|(f_cnt, id)| {
                    std::num::NonZeroU64::new(id as u64).map(|id| PendingConfirmed {
                        f_cnt: f_cnt as u32,
                        id,
                    })
                }),
        },
    )
}

/// Sends `NOTIFY` on [`SESSIONS_CHANNEL`] naming `devices` (DevEUIs as text), from `writer`,
/// in chunks, at `tx`'s commit: every other instance loads their sessions and counters.
fn notify_sessions(
    tx: &mut postgres::Transaction<'_>,
    writer: u64,
    devices: &[String],
) -> Result<(), StoreError> {
    for chunk in devices.chunks(NOTIFY_CHUNK) {
        tx.execute(
            "SELECT pg_notify($1, $2)",
            &[
                &SESSIONS_CHANNEL,
                &format!("{writer:016X}:{}", chunk.join(",")),
            ],
        )
        .map_err(backend_err)?;
    }
    Ok(())
}

/// Column arrays of counter rows, for one multi-row `unnest` statement.
#[derive(Default)]
struct CounterColumns {
    dev_eui: Vec<i64>,
    dev_addr: Vec<i64>,
    dev_nonce: Vec<i32>,
    created_at_ms: Vec<i64>,
    f_cnt_up: Vec<i64>,
    n_f_cnt_down: Vec<i64>,
    a_f_cnt_down: Vec<i64>,
    rekey_confirmed: Vec<bool>,
    pending_f_cnt: Vec<Option<i64>>,
    pending_id: Vec<Option<i64>>,
}

impl CounterColumns {
    fn push(&mut self, d: DevEui, r: &CounterRecord) {
        self.dev_eui.push(eui_sql(d));
        self.dev_addr.push(i64::from(r.dev_addr.as_u32()));
        self.dev_nonce.push(i32::from(r.dev_nonce));
        self.created_at_ms.push(r.created_at_ms as i64);
        self.f_cnt_up.push(i64::from(r.counters.f_cnt_up));
        self.n_f_cnt_down.push(i64::from(r.counters.n_f_cnt_down));
        self.a_f_cnt_down.push(i64::from(r.counters.a_f_cnt_down));
        self.rekey_confirmed.push(r.rekey_confirmed);
        self.pending_f_cnt
            .push(r.pending.map(|p| i64::from(p.f_cnt)));
        self.pending_id.push(r.pending.map(|p| p.id.get() as i64));
    }

    /// Inserts the rows; an existing row is replaced if `only_new_session` is false, or only
    /// when it belongs to another session if it is true.
    fn upsert(
        &self,
        tx: &mut postgres::Transaction<'_>,
        only_new_session: bool,
    ) -> Result<(), StoreError> {
        if self.dev_eui.is_empty() {
            return Ok(());
        }
        let condition = if only_new_session {
            " WHERE (ns_counters.dev_addr, ns_counters.dev_nonce, ns_counters.created_at_ms) \
             IS DISTINCT FROM (excluded.dev_addr, excluded.dev_nonce, excluded.created_at_ms)"
        } else {
            ""
        };
        let sql = format!(
            "INSERT INTO ns_counters (dev_eui, dev_addr, dev_nonce, created_at_ms, f_cnt_up, \
             n_f_cnt_down, a_f_cnt_down, rekey_confirmed, pending_f_cnt, pending_id) \
             SELECT * FROM unnest($1::int8[], $2::int8[], $3::int4[], $4::int8[], $5::int8[], \
             $6::int8[], $7::int8[], $8::bool[], $9::int8[], $10::int8[]) \
             ON CONFLICT (dev_eui) DO UPDATE SET dev_addr = excluded.dev_addr, \
             dev_nonce = excluded.dev_nonce, created_at_ms = excluded.created_at_ms, \
             f_cnt_up = excluded.f_cnt_up, n_f_cnt_down = excluded.n_f_cnt_down, \
             a_f_cnt_down = excluded.a_f_cnt_down, rekey_confirmed = excluded.rekey_confirmed, \
             pending_f_cnt = excluded.pending_f_cnt, pending_id = excluded.pending_id\
             {condition}"
        );
        tx.execute(
            sql.as_str(),
            &[
                &self.dev_eui,
                &self.dev_addr,
                &self.dev_nonce,
                &self.created_at_ms,
                &self.f_cnt_up,
                &self.n_f_cnt_down,
                &self.a_f_cnt_down,
                &self.rekey_confirmed,
                &self.pending_f_cnt,
                &self.pending_id,
            ],
        )
        .map_err(backend_err)?;
        Ok(())
    }
}

/// The last write of each device in a batch, per table (a multi-row statement may not touch
/// a row twice).
#[derive(Default)]
struct Net<'a> {
    current: BTreeMap<DevEui, Option<&'a StoredSession>>,
    previous: BTreeMap<DevEui, Option<&'a StoredSession>>,
}

impl<'a> Net<'a> {
    fn of(batch: &'a [WriteOp]) -> Self {
        let mut net = Self::default();
        for op in batch {
            match op {
                WriteOp::Put(s) => net.current.insert(s.dev_eui, Some(s)),
                WriteOp::Delete(d) => net.current.insert(*d, None),
                WriteOp::PutPrevious(s) => net.previous.insert(s.dev_eui, Some(s)),
                WriteOp::DeletePrevious(d) => net.previous.insert(*d, None),
            };
        }
        net
    }
}

/// Writes `ops` (the last write of each device) to `table`: one upsert, one delete.
fn write_sessions(
    tx: &mut postgres::Transaction<'_>,
    table: &str,
    ops: &BTreeMap<DevEui, Option<&StoredSession>>,
) -> Result<(), StoreError> {
    let (mut keys, mut addrs, mut records, mut gone) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (d, s) in ops {
        match s {
            Some(s) => {
                keys.push(eui_sql(*d));
                addrs.push(i64::from(s.dev_addr.as_u32()));
                records.push(serde_json::to_vec(s).map_err(backend_err)?);
            }
            None => gone.push(eui_sql(*d)),
        }
    }
    if !keys.is_empty() {
        let sql = if table == "ns_sessions" {
            "INSERT INTO ns_sessions (dev_eui, dev_addr, record) \
             SELECT * FROM unnest($1::int8[], $2::int8[], $3::bytea[]) \
             ON CONFLICT (dev_eui) DO UPDATE SET dev_addr = excluded.dev_addr, \
             record = excluded.record, updated_at = now()"
        } else {
            "INSERT INTO ns_previous_sessions (dev_eui, record) \
             SELECT k, r FROM unnest($1::int8[], $2::int8[], $3::bytea[]) AS t(k, a, r) \
             ON CONFLICT (dev_eui) DO UPDATE SET record = excluded.record"
        };
        tx.execute(sql, &[&keys, &addrs, &records])
            .map_err(backend_err)?;
    }
    if !gone.is_empty() {
        tx.execute(
            format!("DELETE FROM {table} WHERE dev_eui = ANY($1)").as_str(),
            &[&gone],
        )
        .map_err(backend_err)?;
    }
    Ok(())
}

impl SessionBackend for PgStore {
    fn load_all(&mut self) -> Result<Vec<StoredSession>, StoreError> {
        self.load_table("SELECT dev_eui, record FROM ns_sessions")
    }

    fn load_previous(&mut self) -> Result<Vec<StoredSession>, StoreError> {
        self.load_table("SELECT dev_eui, record FROM ns_previous_sessions")
    }

    fn commit(&mut self, batch: &[WriteOp]) -> Result<(), StoreError> {
        let net = Net::of(batch);
        let mut c = self.conn()?;
        let mut tx = c.transaction().map_err(backend_err)?;
        write_sessions(&mut tx, "ns_sessions", &net.current)?;
        write_sessions(&mut tx, "ns_previous_sessions", &net.previous)?;
        let mut counters = CounterColumns::default();
        for s in net.current.values().flatten() {
            counters.push(s.dev_eui, &CounterRecord::of_stored(s));
        }
        counters.upsert(&mut tx, true)?;
        let changed: Vec<String> = net.current.keys().map(ToString::to_string).collect();
        notify_sessions(&mut tx, self.writer, &changed)?;
        tx.commit().map_err(backend_err)
    }
}

impl CounterBackend for PgStore {
    fn load(&self) -> Result<HashMap<DevEui, CounterRecord>, StoreError> {
        let mut c = self.conn()?;
        let rows = c.query(COUNTER_COLUMNS, &[]).map_err(backend_err)?;
        Ok(rows.iter().map(counter_row).collect())
    }

    fn commit(&self, batch: &[(DevEui, CounterRecord)]) -> Result<(), StoreError> {
        self.commit_checked(batch).map(drop)
    }

    fn commit_checked(
        &self,
        batch: &[(DevEui, CounterRecord)],
    ) -> Result<Vec<Verdict>, StoreError> {
        self.commit_logged(batch, &|_| Vec::new())
    }

    fn commit_logged(
        &self,
        batch: &[(DevEui, CounterRecord)],
        events: &dyn Fn(&[Verdict]) -> Vec<Vec<u8>>,
    ) -> Result<Vec<Verdict>, StoreError> {
        self.commit_taking(batch, events, &|_| Vec::new())
            .map(|(v, _)| v)
    }

    fn commit_taking(
        &self,
        batch: &[(DevEui, CounterRecord)],
        events: &dyn Fn(&[Verdict]) -> Vec<Vec<u8>>,
        take: &dyn Fn(&[Verdict]) -> QueueItems,
    ) -> Result<(Vec<Verdict>, Vec<u64>), StoreError> {
        let mut keys: Vec<i64> = batch.iter().map(|(d, _)| eui_sql(*d)).collect();
        keys.sort_unstable();
        keys.dedup();
        let mut c = self.conn()?;
        let mut tx = c.transaction().map_err(backend_err)?;
        let rows = tx
            .query(
                &format!("{COUNTER_COLUMNS} WHERE dev_eui = ANY($1) ORDER BY dev_eui FOR UPDATE"),
                &[&keys],
            )
            .map_err(backend_err)?;
        let mut current: BTreeMap<DevEui, CounterRecord> = rows.iter().map(counter_row).collect();
        let before = current.clone();
        let mut written = BTreeMap::new();
        let verdicts: Vec<Verdict> = batch
            .iter()
            .map(|(d, rec)| {
                let (verdict, next) = judge(current.get(d), rec);
                if let Some(next) = next {
                    current.insert(*d, next);
                    written.insert(*d, next);
                }
                verdict
            })
            .collect();
        let mut columns = CounterColumns::default();
        for (d, r) in &written {
            columns.push(*d, r);
        }
        columns.upsert(&mut tx, false)?;
        // A confirmed downlink sent, or acknowledged: the other instances load the device's
        // record at once (crate::store::sync), so the acknowledging uplink is recognised
        // wherever it arrives, and once only.
        let confirmed: Vec<String> = written
            .iter()
            .filter(|(d, r)| before.get(d).and_then(|b| b.pending) != r.pending)
            .map(|(d, _)| d.to_string())
            .collect();
        notify_sessions(&mut tx, self.writer, &confirmed)?;
        if self.event_log {
            let lines: Vec<String> = events(&verdicts)
                .into_iter()
                .map(|l| String::from_utf8_lossy(&l).into_owned())
                .collect();
            if !lines.is_empty() {
                tx.execute(
                    "INSERT INTO ns_events (event) SELECT e::jsonb FROM unnest($1::text[]) AS e",
                    &[&lines],
                )
                .map_err(backend_err)?;
            }
        }
        let taken = shared_queue::take(&mut tx, &take(&verdicts), self.writer)?;
        tx.commit().map_err(backend_err)?;
        Ok((verdicts, taken))
    }

    fn shared(&self) -> bool {
        true
    }
}
