//! The onboarding tables, in the join server's SQLite file next to the devices:
//!
//! - `tenants`: the tenants (manufacturers and owners), each a record that keys, devices and
//!   keys-encryption keys refer to by name, with an optional home NetID (the network an owner's
//!   installers claim for);
//! - `api_keys`: management API keys, by SHA-256 hash only, with a role, their tenant, and an
//!   optional expiry; revoked keys stay listed (and audited) but authenticate nothing;
//! - `ownership` (created with the device tables, [`crate::store`], since a device's owner
//!   chooses the KEK of its AppSKey): per device, the owner token's hash, the manufacturer that
//!   provisioned it, the owner (tenant) that claimed it, and a lock flag; the home NetID stays in
//!   `devices`;
//! - `audit`: the append-only audit log (triggers refuse UPDATE and DELETE).
//!
//! Each method is one transaction. Root keys only ever arrive wrapped under the master key.

use std::path::Path;

use protocol::ids::{DevEui, NetId};
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use super::backend::{Importer, OnboardBackend};
use super::import::{Failure, Imported, Job, ManifestSource};
use crate::store::{self, NonceState, SqliteStore, Store, StoreError, StoredDevice};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS api_keys (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    role       TEXT NOT NULL,
    key_hash   BLOB NOT NULL UNIQUE,      -- SHA-256 of the key; the key itself is never stored
    created_ms INTEGER NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS tenants (
    name       TEXT PRIMARY KEY,
    created_ms INTEGER NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS audit (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms   INTEGER NOT NULL,
    actor   TEXT NOT NULL,
    tenant  TEXT,
    action  TEXT NOT NULL,
    dev_eui TEXT,
    outcome TEXT NOT NULL,
    detail  TEXT NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS audit_dev_eui ON audit (dev_eui);
CREATE INDEX IF NOT EXISTS audit_action_at ON audit (action, at_ms);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
";

/// Columns added to `api_keys` after its first release, added to older stores on open.
const API_KEY_COLUMNS_V2: [(&str, &str); 2] =
    [("expires_ms", "INTEGER"), ("revoked_ms", "INTEGER")];

/// Columns added to `tenants` after its first release, added to older stores on open.
const TENANT_COLUMNS_V2: [(&str, &str); 1] = [("home_net_id", "INTEGER")];

/// Columns added to `audit` after its first release, added to older stores on open:
/// `refers_to`, the sequence number of the record this one follows from (a root-key rotation,
/// for the join that put the keys into use and the first uplink under them).
const AUDIT_COLUMNS_V2: [(&str, &str); 1] = [("refers_to", "INTEGER")];

/// Adds to `table` those of `columns` (name, SQL type) it does not have yet.
fn add_missing_columns(
    conn: &Connection,
    table: &str,
    columns: &[(&str, &str)],
) -> Result<(), StoreError> {
    let present: Vec<String> = conn
        .prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for (column, ty) in columns {
        if !present.iter().any(|c| c == column) {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {ty}"))?;
        }
    }
    Ok(())
}

/// An API key's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Provisions devices; never sees owners.
    Manufacturer,
    /// A tenant: sees and acts on its own devices only.
    Owner,
    /// Everything.
    Admin,
}

impl Role {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Manufacturer => "manufacturer",
            Self::Owner => "owner",
            Self::Admin => "admin",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "manufacturer" => Some(Self::Manufacturer),
            "owner" => Some(Self::Owner),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }
}

/// An API key as stored (without the key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    /// Public id (16 hex digits).
    pub id: String,
    /// The tenant name: owner keys with the same name act for the same tenant.
    pub name: String,
    /// Role.
    pub role: Role,
}

/// An API key as listed: never the key, nor its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiKeyInfo {
    /// Public id (16 hex digits).
    pub id: String,
    /// Its tenant.
    pub name: String,
    /// Role.
    pub role: Role,
    /// When it was created (Unix ms).
    pub created_ms: i64,
    /// When it expires (Unix ms), if it does.
    pub expires_ms: Option<i64>,
    /// When it was revoked (Unix ms), if it was.
    pub revoked_ms: Option<i64>,
}

/// Who did something, for the audit log and authorisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// `key:<id>` for an API key, `cli` for the command line.
    pub id: String,
    /// The tenant name (the API key's name), if any.
    pub tenant: Option<String>,
    /// The role (`Admin` for the command line).
    pub role: Role,
}

impl Actor {
    /// The local operator on the command line.
    pub fn cli() -> Self {
        Self {
            id: "cli".into(),
            tenant: None,
            role: Role::Admin,
        }
    }

    /// Whoever sent a request without a valid API key, for the audit log only: `addr:<ip>`
    /// (`addr:unknown` without one). It is never authorised for anything.
    pub fn anonymous(peer: Option<std::net::IpAddr>) -> Self {
        Self {
            id: peer.map_or_else(|| "addr:unknown".to_owned(), |ip| format!("addr:{ip}")),
            tenant: None,
            role: Role::Owner,
        }
    }

    /// An API key's actor.
    pub fn from_key(k: &ApiKeyRecord) -> Self {
        Self {
            id: format!("key:{}", k.id),
            tenant: Some(k.name.clone()),
            role: k.role,
        }
    }
}

/// A device's onboarding state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ownership {
    /// Hash of the current owner token, if the device has one.
    pub token_hash: Option<Vec<u8>>,
    /// The manufacturer tenant that provisioned it.
    pub manufacturer: Option<String>,
    /// The owner tenant that claimed it.
    pub owner: Option<String>,
    /// When it was claimed (Unix ms).
    pub claimed_ms: Option<i64>,
    /// Locked devices cannot be claimed.
    pub locked: bool,
}

/// One audit record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditRecord {
    /// Sequence number (increasing).
    pub seq: i64,
    /// When (Unix ms).
    pub at_ms: i64,
    /// Who: `key:<id>` or `cli`.
    pub actor: String,
    /// The actor's tenant.
    pub tenant: Option<String>,
    /// What: `provision`, `claim`, `release`, `dev_nonce_reset`, `root_key_rotation`,
    /// `root_keys_join`, `root_keys_in_use`, `deprovision`, `lock`, `unlock`, `import`,
    /// `api_key_create`.
    pub action: String,
    /// The device, if one.
    pub dev_eui: Option<String>,
    /// `ok` or `refused:<reason>`.
    pub outcome: String,
    /// Details; never a key or a token.
    pub detail: String,
    /// The record this one follows from (its `seq`), if any: a `root_key_rotation` for its
    /// `root_keys_join` and `root_keys_in_use` ([`crate::rekey`]).
    pub refers_to: Option<i64>,
}

/// A new audit record.
#[derive(Debug, Clone)]
pub struct AuditEntry<'a> {
    /// Who.
    pub actor: &'a Actor,
    /// What.
    pub action: &'a str,
    /// Which device.
    pub dev_eui: Option<DevEui>,
    /// `ok` or `refused:<reason>`.
    pub outcome: &'a str,
    /// Details (no secrets).
    pub detail: &'a str,
}

/// One device's last root-key rotation and how far its trail got ([`OnboardStore::rotation_trails`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationTrail {
    /// The device.
    pub dev_eui: DevEui,
    /// The rotation's sequence number.
    pub rotation: i64,
    /// The `root_keys_join` record that refers to it: its sequence number and actor.
    pub joined: Option<(i64, String)>,
    /// Whether a `root_keys_in_use` record refers to it.
    pub in_use: bool,
}

/// Filters for [`OnboardStore::audit`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditFilter {
    /// Only this device.
    pub dev_eui: Option<String>,
    /// Only this action.
    pub action: Option<String>,
    /// Only this actor (`key:<id>` or `cli`).
    pub actor: Option<String>,
    /// Only outcomes starting with this (`ok`, `refused`).
    pub outcome: Option<String>,
    /// Only records at or after this time (Unix ms).
    pub since_ms: Option<i64>,
    /// Only records before this time (Unix ms).
    pub until_ms: Option<i64>,
    /// Only records after this sequence number (paging).
    pub after_seq: Option<i64>,
    /// Only this record and those that refer to it (a rotation and its trail).
    pub refers_to: Option<i64>,
    /// At most this many (default 100, at most 10,000).
    pub limit: Option<u32>,
}

/// A value an audit filter's condition compares with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FilterValue {
    /// Text.
    Text(String),
    /// An integer.
    Int(i64),
}

impl AuditFilter {
    /// The query of the records matching the filter, oldest first, as every store runs it: the
    /// conditions' values numbered `?1`, `?2`… (`$1`… with `placeholder` `'$'`), `tenant`
    /// scoping to one tenant's records, `prefix` the store's prefix match of the outcome (`?` for
    /// the prefix); and the values in order.
    pub(crate) fn query(
        &self,
        tenant: Option<&str>,
        prefix: &str,
        placeholder: char,
    ) -> (String, Vec<FilterValue>) {
        use FilterValue::{Int, Text};
        let mut conditions: Vec<(&str, FilterValue)> = Vec::new();
        let text = |s: &String| Text(s.clone());
        conditions.extend(tenant.map(|t| ("tenant = ?", Text(t.to_owned()))));
        conditions.extend(
            self.dev_eui
                .as_ref()
                .map(|d| ("dev_eui = ?", Text(d.to_uppercase()))),
        );
        conditions.extend(self.action.as_ref().map(|a| ("action = ?", text(a))));
        conditions.extend(self.actor.as_ref().map(|a| ("actor = ?", text(a))));
        conditions.extend(self.outcome.as_ref().map(|o| (prefix, text(o))));
        conditions.extend(self.since_ms.map(|s| ("at_ms >= ?", Int(s))));
        conditions.extend(self.until_ms.map(|u| ("at_ms < ?", Int(u))));
        conditions.extend(self.after_seq.map(|a| ("seq > ?", Int(a))));
        conditions.extend(
            self.refers_to
                .map(|r| ("(seq = ? OR refers_to = ?)", Int(r))),
        );
        let mut sql = String::from(
            "SELECT seq, at_ms, actor, tenant, action, dev_eui, outcome, detail, refers_to \
             FROM audit WHERE 1 = 1",
        );
        let mut values = Vec::new();
        for (n, (condition, value)) in conditions.into_iter().enumerate() {
            sql.push_str(" AND ");
            sql.push_str(&condition.replace('?', &format!("{placeholder}{}", n + 1)));
            values.push(value);
        }
        let limit = self.limit.unwrap_or(100).min(10_000);
        sql.push_str(&format!(" ORDER BY seq LIMIT {limit}"));
        (sql, values)
    }
}

/// What [`OnboardStore::claim`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// The device is now bound to the tenant and the home network.
    Claimed,
    /// No such device.
    NotFound,
    /// The token does not match (or the device has none).
    WrongToken,
    /// The device is locked.
    Locked,
    /// The device is already claimed or bound to a home network.
    AlreadyClaimed,
}

/// Which tenant column scopes a device listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnershipColumn {
    /// The provisioning manufacturer.
    Manufacturer,
    /// The claiming owner.
    Owner,
}

impl OwnershipColumn {
    fn as_sql(self) -> &'static str {
        match self {
            Self::Manufacturer => "manufacturer",
            Self::Owner => "owner",
        }
    }
}

/// The `api_key_create` audit record's detail (never the key or its hash).
pub(crate) fn api_key_created(id: &str, role: Role, name: &str, expires_ms: Option<i64>) -> String {
    format!(
        "key {id}, role {}, name {name:?}{}",
        role.as_str(),
        expires_ms.map_or_else(String::new, |e| format!(", expires_ms {e}"))
    )
}

/// The `tenant_home_net_id` audit record's detail.
pub(crate) fn home_net_id_set(name: &str, net_id: Option<NetId>) -> String {
    let value = net_id.map_or_else(|| "none".to_owned(), |n| n.to_string());
    format!("tenant {name:?}, home NetID {value}")
}

/// The `release` audit record's detail.
pub(crate) fn released(new_token: bool) -> &'static str {
    if new_token {
        "home network unbound; new owner token issued"
    } else {
        "home network unbound; owner token kept"
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    i64::try_from(protocol::time::unix_ms(std::time::SystemTime::now())).unwrap_or(i64::MAX)
}

/// The onboarding store: the device store of `DATA_DIR/joinserver.db` and, on the same
/// connection, the onboarding tables, so one transaction can span both.
pub struct OnboardStore {
    devices: SqliteStore,
}

impl std::fmt::Debug for OnboardStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnboardStore")
            .field("devices", &self.devices)
            .finish()
    }
}

impl From<OnboardStore> for Box<dyn OnboardBackend> {
    fn from(s: OnboardStore) -> Self {
        Box::new(s)
    }
}

/// An import on a connection of its own to the SQLite file.
struct SqliteImporter(Connection);

impl Importer for SqliteImporter {
    fn run(
        &mut self,
        job: Job<'_>,
        source: &mut dyn ManifestSource,
        on_device: Option<&mut dyn FnMut(StoredDevice)>,
    ) -> Result<Imported, Failure> {
        super::import::run(&mut self.0, job, source, on_device)
    }
}

/// Appends an audit record inside `tx`.
pub(crate) fn append(tx: &Connection, at_ms: i64, e: &AuditEntry<'_>) -> Result<(), StoreError> {
    append_referring(tx, at_ms, e, None).map(drop)
}

/// Appends an audit record inside `tx` that refers to the record `refers_to`; returns its
/// sequence number.
fn append_referring(
    tx: &Connection,
    at_ms: i64,
    e: &AuditEntry<'_>,
    refers_to: Option<i64>,
) -> Result<i64, StoreError> {
    tx.prepare_cached(
        "INSERT INTO audit (at_ms, actor, tenant, action, dev_eui, outcome, detail, refers_to) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        at_ms,
        e.actor.id,
        e.actor.tenant,
        e.action,
        e.dev_eui.map(|d| d.to_string()),
        e.outcome,
        e.detail,
        refers_to
    ])?;
    Ok(tx.last_insert_rowid())
}

/// Creates the record of the tenant `name` (at `at_ms`) if it has none.
fn ensure_tenant(tx: &Connection, name: &str, at_ms: i64) -> Result<(), StoreError> {
    tx.execute(
        "INSERT OR IGNORE INTO tenants (name, created_ms) VALUES (?1, ?2)",
        params![name, at_ms],
    )?;
    Ok(())
}

/// Creates the onboarding tables on `conn` if they do not exist, and brings older ones up to
/// date: the expiry and revocation columns of `api_keys`, the home NetID of `tenants`, and a
/// tenant record for every key's name.
pub(crate) fn ensure_schema(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(SCHEMA)?;
    add_missing_columns(conn, "api_keys", &API_KEY_COLUMNS_V2)?;
    add_missing_columns(conn, "tenants", &TENANT_COLUMNS_V2)?;
    add_missing_columns(conn, "audit", &AUDIT_COLUMNS_V2)?;
    conn.execute_batch("CREATE INDEX IF NOT EXISTS audit_refers_to ON audit (refers_to)")?;
    conn.execute(
        "INSERT OR IGNORE INTO tenants (name, created_ms) \
         SELECT name, MIN(created_ms) FROM api_keys GROUP BY name",
        [],
    )?;
    Ok(())
}

impl OnboardStore {
    /// Opens (creating the tables if needed) the store in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let mut devices = SqliteStore::open(data_dir)?;
        ensure_schema(devices.conn_mut())?;
        let mut s = Self { devices };
        s.hash_clear_owner_tokens()?;
        Ok(s)
    }

    /// Owner tokens stored in clear in `devices.owner_token` (by an import that bypassed the
    /// onboarding path, as the library's `devices::import` did before it went through
    /// [`super::import`]) are moved to `ownership` as hashes, and
    /// the clear column is emptied. Returns how many were moved.
    pub fn hash_clear_owner_tokens(&mut self) -> Result<usize, StoreError> {
        let tx = self.conn().transaction()?;
        let clear: Vec<(i64, String)> = tx
            .prepare("SELECT dev_eui, owner_token FROM devices WHERE owner_token IS NOT NULL")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        for (dev, token) in &clear {
            let h = super::secret::owner_token_hash(DevEui::new(*dev as u64), token);
            tx.execute(
                "INSERT INTO ownership (dev_eui, token_hash) VALUES (?1, ?2) \
                 ON CONFLICT (dev_eui) DO UPDATE SET token_hash = ?2",
                params![dev, &h[..]],
            )?;
            tx.execute(
                "UPDATE devices SET owner_token = NULL WHERE dev_eui = ?1",
                [dev],
            )?;
        }
        tx.commit()?;
        Ok(clear.len())
    }

    /// The connection the device store and the onboarding tables share.
    fn conn(&mut self) -> &mut Connection {
        self.devices.conn_mut()
    }

    /// The device store on the same file.
    pub fn devices(&mut self) -> &mut SqliteStore {
        &mut self.devices
    }

    fn ownership(&mut self, dev_eui: DevEui) -> Result<Ownership, StoreError> {
        Ok(self
            .conn()
            .prepare_cached(
                "SELECT token_hash, manufacturer, owner, claimed_ms, locked FROM ownership \
                 WHERE dev_eui = ?1",
            )?
            .query_row([store::dev_eui_sql(dev_eui)], |r| {
                Ok(Ownership {
                    token_hash: r.get(0)?,
                    manufacturer: r.get(1)?,
                    owner: r.get(2)?,
                    claimed_ms: r.get(3)?,
                    locked: r.get::<_, i64>(4)? != 0,
                })
            })
            .optional()?
            .unwrap_or_default())
    }

    /// Appends one audit record that refers to the record `refers_to`; returns its sequence
    /// number.
    pub fn audit_append_referring(
        &mut self,
        e: &AuditEntry<'_>,
        refers_to: Option<i64>,
    ) -> Result<i64, StoreError> {
        let tx = self.conn().transaction()?;
        let seq = append_referring(&tx, now_ms(), e, refers_to)?;
        tx.commit()?;
        Ok(seq)
    }

    /// Each device's last root-key rotation (`root_key_rotation`, `ok`), with the `root_keys_join`
    /// that refers to it, if any (its sequence number and actor), and whether a
    /// `root_keys_in_use` refers to it: the state [`crate::rekey::RekeyTrail`] starts from.
    pub fn rotation_trails(&mut self) -> Result<Vec<RotationTrail>, StoreError> {
        let mut stmt = self.conn().prepare(
            "SELECT r.dev_eui, r.seq, j.seq, j.actor, \
                    EXISTS (SELECT 1 FROM audit u WHERE u.refers_to = r.seq \
                            AND u.action = 'root_keys_in_use') \
             FROM (SELECT dev_eui, MAX(seq) AS seq FROM audit \
                   WHERE action = 'root_key_rotation' AND outcome = 'ok' GROUP BY dev_eui) r \
             LEFT JOIN audit j ON j.refers_to = r.seq AND j.action = 'root_keys_join'",
        )?;
        let rows = stmt.query_map([], |r| {
            let dev: String = r.get(0)?;
            Ok((dev, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (dev, rotation, join_seq, join_actor, in_use): (
                String,
                i64,
                Option<i64>,
                Option<String>,
                bool,
            ) = row?;
            let Ok(dev_eui) = dev.parse::<DevEui>() else {
                continue;
            };
            out.push(RotationTrail {
                dev_eui,
                rotation,
                joined: join_seq.zip(join_actor),
                in_use,
            });
        }
        Ok(out)
    }
}

impl OnboardBackend for OnboardStore {
    fn stored_device(&mut self, dev_eui: DevEui) -> Result<Option<StoredDevice>, StoreError> {
        self.devices.get_device(dev_eui)
    }

    /// A new connection to the same file: its staging table and transaction are its own, so the
    /// upload does not hold this store's lock ([`super::import`]).
    fn importer(&self) -> Result<Box<dyn Importer>, StoreError> {
        Ok(Box::new(SqliteImporter(self.devices.connect_again()?)))
    }

    fn audit_append(&mut self, e: &AuditEntry<'_>) -> Result<(), StoreError> {
        self.audit_append_referring(e, None).map(drop)
    }

    fn create_api_key(
        &mut self,
        actor: &Actor,
        name: &str,
        role: Role,
        key_hash: &[u8; 32],
        expires_ms: Option<i64>,
    ) -> Result<ApiKeyRecord, StoreError> {
        let id = hex::encode(&key_hash[..8]);
        let now = now_ms();
        let tx = self.conn().transaction()?;
        ensure_tenant(&tx, name, now)?;
        tx.execute(
            "INSERT INTO api_keys (id, name, role, key_hash, created_ms, expires_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![id, name, role.as_str(), &key_hash[..], now, expires_ms],
        )?;
        append(
            &tx,
            now_ms(),
            &AuditEntry {
                actor,
                action: "api_key_create",
                dev_eui: None,
                outcome: "ok",
                detail: &api_key_created(&id, role, name, expires_ms),
            },
        )?;
        tx.commit()?;
        Ok(ApiKeyRecord {
            id,
            name: name.to_owned(),
            role,
        })
    }

    fn find_api_key(
        &mut self,
        key_hash: &[u8; 32],
        now_ms: i64,
    ) -> Result<Option<ApiKeyRecord>, StoreError> {
        let row: Option<(String, String, String, Vec<u8>)> = self
            .conn()
            .prepare_cached(
                "SELECT id, name, role, key_hash FROM api_keys WHERE key_hash = ?1 \
                 AND revoked_ms IS NULL AND (expires_ms IS NULL OR expires_ms > ?2)",
            )?
            .query_row(params![&key_hash[..], now_ms], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .optional()?;
        Ok(row.and_then(|(id, name, role, h)| {
            (super::secret::ct_eq(&h, key_hash))
                .then_some(())
                .and_then(|()| Role::parse(&role))
                .map(|role| ApiKeyRecord { id, name, role })
        }))
    }

    fn list_api_keys(&mut self) -> Result<Vec<ApiKeyInfo>, StoreError> {
        let mut stmt = self.conn().prepare(
            "SELECT id, name, role, created_ms, expires_ms, revoked_ms FROM api_keys \
             ORDER BY created_ms, id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, Option<i64>>(4)?,
                r.get::<_, Option<i64>>(5)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, name, role, created_ms, expires_ms, revoked_ms) = row?;
            let Some(role) = Role::parse(&role) else {
                continue; // written by a newer release
            };
            out.push(ApiKeyInfo {
                id,
                name,
                role,
                created_ms,
                expires_ms,
                revoked_ms,
            });
        }
        Ok(out)
    }

    fn revoke_api_key(&mut self, actor: &Actor, id: &str) -> Result<bool, StoreError> {
        let at = now_ms();
        let tx = self.conn().transaction()?;
        let n = tx.execute(
            "UPDATE api_keys SET revoked_ms = ?2 WHERE id = ?1 AND revoked_ms IS NULL",
            params![id, at],
        )?;
        if n > 0 {
            append(
                &tx,
                at,
                &AuditEntry {
                    actor,
                    action: "api_key_revoke",
                    dev_eui: None,
                    outcome: "ok",
                    detail: &format!("key {id}"),
                },
            )?;
        }
        tx.commit()?;
        Ok(n > 0)
    }

    fn tenants(&mut self) -> Result<Vec<String>, StoreError> {
        let mut stmt = self
            .conn()
            .prepare("SELECT name FROM tenants ORDER BY name")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn set_tenant_home_net_id(
        &mut self,
        actor: &Actor,
        name: &str,
        net_id: Option<NetId>,
    ) -> Result<(), StoreError> {
        let at = now_ms();
        let tx = self.conn().transaction()?;
        ensure_tenant(&tx, name, at)?;
        tx.execute(
            "UPDATE tenants SET home_net_id = ?2 WHERE name = ?1",
            params![name, net_id.map(NetId::as_u32)],
        )?;
        append(
            &tx,
            at,
            &AuditEntry {
                actor,
                action: "tenant_home_net_id",
                dev_eui: None,
                outcome: "ok",
                detail: &home_net_id_set(name, net_id),
            },
        )?;
        tx.commit()?;
        Ok(())
    }

    fn tenant_home_net_id(&mut self, name: &str) -> Result<Option<NetId>, StoreError> {
        let v: Option<Option<i64>> = self
            .conn()
            .prepare_cached("SELECT home_net_id FROM tenants WHERE name = ?1")?
            .query_row([name], |r| r.get(0))
            .optional()?;
        v.flatten()
            .map(|v| {
                u32::try_from(v)
                    .ok()
                    .and_then(NetId::new)
                    .ok_or(StoreError::Db(rusqlite::Error::IntegralValueOutOfRange(
                        0, v,
                    )))
            })
            .transpose()
    }

    fn claim_failures_since(
        &mut self,
        since_ms: i64,
    ) -> Result<Vec<(i64, String, Option<String>)>, StoreError> {
        let mut stmt = self.conn().prepare(
            "SELECT at_ms, actor, dev_eui FROM audit WHERE action = 'claim' AND at_ms >= ?1 \
             AND outcome IN ('refused:wrong_token', 'refused:not_found') ORDER BY seq",
        )?;
        let rows = stmt.query_map([since_ms], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn device(&mut self, dev_eui: DevEui) -> Result<Option<(StoredDevice, Ownership)>, StoreError> {
        let Some(d) = self.devices.get_device(dev_eui)? else {
            return Ok(None);
        };
        let o = self.ownership(dev_eui)?;
        Ok(Some((d, o)))
    }

    fn visible(
        &mut self,
        scope: Option<(OwnershipColumn, &str)>,
        after: Option<DevEui>,
        limit: u32,
    ) -> Result<Vec<DevEui>, StoreError> {
        let map = |r: &rusqlite::Row<'_>| r.get::<_, i64>(0);
        let rows: Vec<i64> = match scope {
            None => self
                .conn()
                .prepare_cached("SELECT dev_eui FROM devices")?
                .query_map([], map)?
                .collect::<Result<_, _>>()?,
            Some((column, tenant)) => self
                .conn()
                .prepare_cached(&format!(
                    "SELECT d.dev_eui FROM devices d JOIN ownership o ON o.dev_eui = d.dev_eui \
                     WHERE o.{} = ?1",
                    column.as_sql()
                ))?
                .query_map([tenant], map)?
                .collect::<Result<_, _>>()?,
        };
        let mut out: Vec<DevEui> = rows.into_iter().map(|v| DevEui::new(v as u64)).collect();
        out.sort_unstable_by_key(|d| d.as_u64());
        let start = after.map_or(0, |a| out.partition_point(|d| d.as_u64() <= a.as_u64()));
        Ok(out.into_iter().skip(start).take(limit as usize).collect())
    }

    fn claim(
        &mut self,
        actor: &Actor,
        dev_eui: DevEui,
        presented: &[u8; 32],
        tenant: &str,
        home: NetId,
        detail: &str,
    ) -> Result<ClaimOutcome, StoreError> {
        let at = now_ms();
        let tx = self
            .conn()
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        // The device's home NetID, token hash, owner and lock flag.
        type ClaimRow = (Option<i64>, Option<Vec<u8>>, Option<String>, i64);
        let row: Option<ClaimRow> = tx
            .query_row(
                "SELECT d.home_net_id, o.token_hash, o.owner, COALESCE(o.locked, 0) \
                 FROM devices d LEFT JOIN ownership o ON o.dev_eui = d.dev_eui \
                 WHERE d.dev_eui = ?1",
                [store::dev_eui_sql(dev_eui)],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        let Some((bound, token_hash, owner, locked)) = row else {
            return Ok(ClaimOutcome::NotFound);
        };
        // Constant time over the hash; a device without a token is compared against a hash
        // nothing produces, so both paths do the same work.
        let stored = token_hash.clone().unwrap_or_else(|| vec![0; 32]);
        if !super::secret::ct_eq(presented, &stored) || token_hash.is_none() {
            return Ok(ClaimOutcome::WrongToken);
        }
        if locked != 0 {
            return Ok(ClaimOutcome::Locked);
        }
        if bound.is_some() || owner.is_some() {
            return Ok(ClaimOutcome::AlreadyClaimed);
        }
        tx.execute(
            "INSERT INTO ownership (dev_eui, owner, claimed_ms) VALUES (?1, ?2, ?3) \
             ON CONFLICT (dev_eui) DO UPDATE SET owner = ?2, claimed_ms = ?3",
            params![store::dev_eui_sql(dev_eui), tenant, at],
        )?;
        tx.execute(
            "UPDATE devices SET home_net_id = ?2 WHERE dev_eui = ?1",
            params![store::dev_eui_sql(dev_eui), i64::from(home.as_u32())],
        )?;
        append(
            &tx,
            at,
            &AuditEntry {
                actor,
                action: "claim",
                dev_eui: Some(dev_eui),
                outcome: "ok",
                detail,
            },
        )?;
        tx.commit()?;
        Ok(ClaimOutcome::Claimed)
    }

    fn release(
        &mut self,
        actor: &Actor,
        dev_eui: DevEui,
        new_token_hash: Option<&[u8; 32]>,
    ) -> Result<(), StoreError> {
        let at = now_ms();
        let tx = self.conn().transaction()?;
        tx.execute(
            "UPDATE ownership SET owner = NULL, claimed_ms = NULL, \
             token_hash = COALESCE(?2, token_hash) WHERE dev_eui = ?1",
            params![
                store::dev_eui_sql(dev_eui),
                new_token_hash.map(|h| h.to_vec())
            ],
        )?;
        tx.execute(
            "UPDATE devices SET home_net_id = NULL WHERE dev_eui = ?1",
            [store::dev_eui_sql(dev_eui)],
        )?;
        append(
            &tx,
            at,
            &AuditEntry {
                actor,
                action: "release",
                dev_eui: Some(dev_eui),
                outcome: "ok",
                detail: released(new_token_hash.is_some()),
            },
        )?;
        tx.commit()?;
        Ok(())
    }

    fn set_locked(
        &mut self,
        actor: &Actor,
        dev_eui: DevEui,
        locked: bool,
    ) -> Result<(), StoreError> {
        let tx = self.conn().transaction()?;
        tx.execute(
            "INSERT INTO ownership (dev_eui, locked) VALUES (?1, ?2) \
             ON CONFLICT (dev_eui) DO UPDATE SET locked = ?2",
            params![store::dev_eui_sql(dev_eui), i64::from(locked)],
        )?;
        append(
            &tx,
            now_ms(),
            &AuditEntry {
                actor,
                action: if locked { "lock" } else { "unlock" },
                dev_eui: Some(dev_eui),
                outcome: "ok",
                detail: "",
            },
        )?;
        tx.commit()?;
        Ok(())
    }

    fn set_nonces_and_keys(
        &mut self,
        actor: &Actor,
        action: &str,
        dev_eui: DevEui,
        nonces: &NonceState,
        keys: Option<(&[u8], Option<&[u8]>)>,
        detail: &str,
    ) -> Result<i64, StoreError> {
        let tx = self.conn().transaction()?;
        store::write_nonces(&tx, dev_eui, nonces, None)?;
        if let Some((app, nwk)) = keys {
            tx.execute(
                "UPDATE devices SET app_key = ?2, nwk_key = ?3 WHERE dev_eui = ?1",
                params![store::dev_eui_sql(dev_eui), app, nwk],
            )?;
        }
        let seq = append_referring(
            &tx,
            now_ms(),
            &AuditEntry {
                actor,
                action,
                dev_eui: Some(dev_eui),
                outcome: "ok",
                detail,
            },
            None,
        )?;
        tx.commit()?;
        Ok(seq)
    }

    fn deprovision(&mut self, actor: &Actor, dev_eui: DevEui) -> Result<bool, StoreError> {
        let tx = self.conn().transaction()?;
        let removed = store::delete_device(&tx, dev_eui)?;
        tx.execute(
            "DELETE FROM ownership WHERE dev_eui = ?1",
            [store::dev_eui_sql(dev_eui)],
        )?;
        if removed {
            append(
                &tx,
                now_ms(),
                &AuditEntry {
                    actor,
                    action: "deprovision",
                    dev_eui: Some(dev_eui),
                    outcome: "ok",
                    detail: "",
                },
            )?;
            store::bump_generation(&tx, store::Changed::Devices(&[dev_eui]))?;
        }
        tx.commit()?;
        Ok(removed)
    }

    fn audit(
        &mut self,
        f: &AuditFilter,
        tenant: Option<&str>,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        use rusqlite::types::Value;
        // A prefix match, without LIKE wildcards from the caller.
        let (sql, values) = f.query(tenant, "instr(outcome, ?) = 1", '?');
        let args = values.into_iter().map(|v| match v {
            FilterValue::Text(t) => Value::Text(t),
            FilterValue::Int(i) => Value::Integer(i),
        });
        let mut stmt = self.conn().prepare(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| {
            Ok(AuditRecord {
                seq: r.get(0)?,
                at_ms: r.get(1)?,
                actor: r.get(2)?,
                tenant: r.get(3)?,
                action: r.get(4)?,
                dev_eui: r.get(5)?,
                outcome: r.get(6)?,
                detail: r.get(7)?,
                refers_to: r.get(8)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_is_append_only_and_keys_are_found_by_hash_only() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = OnboardStore::open(tmp.path()).unwrap();
        let cli = Actor::cli();
        let rec = s
            .create_api_key(&cli, "alice", Role::Owner, &[7; 32], None)
            .unwrap();
        assert_eq!(
            s.find_api_key(&[7; 32], now_ms()).unwrap(),
            Some(rec.clone())
        );
        assert_eq!(s.find_api_key(&[8; 32], now_ms()).unwrap(), None);
        let dup = s.create_api_key(&cli, "bob", Role::Admin, &[7; 32], None);
        assert!(dup.is_err(), "a key hash is unique");
        s.audit_append(&AuditEntry {
            actor: &Actor::from_key(&rec),
            action: "claim",
            dev_eui: Some(DevEui::new(0xAB)),
            outcome: "refused:wrong_token",
            detail: "",
        })
        .unwrap();
        for sql in ["UPDATE audit SET outcome = 'ok'", "DELETE FROM audit"] {
            let e = s.conn().execute(sql, []).unwrap_err();
            assert!(e.to_string().contains("append-only"), "{sql}: {e}");
        }
        let f = AuditFilter {
            dev_eui: Some("00000000000000ab".into()),
            outcome: Some("refused".into()),
            ..AuditFilter::default()
        };
        let r = s.audit(&f, None).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].actor, format!("key:{}", rec.id));
        assert_eq!(r[0].tenant.as_deref(), Some("alice"));
        assert!(s.audit(&f, Some("bob")).unwrap().is_empty(), "tenant scope");
        let all = s.audit(&AuditFilter::default(), None).unwrap();
        assert_eq!(all.len(), 2, "the key creation and the refusal");
        assert!(all[0].seq < all[1].seq);
    }

    #[test]
    fn keys_expire_are_revoked_listed_without_secrets_and_name_tenants() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = OnboardStore::open(tmp.path()).unwrap();
        let cli = Actor::cli();
        let now = now_ms();
        let a = s
            .create_api_key(&cli, "acme", Role::Manufacturer, &[1; 32], None)
            .unwrap();
        let b = s
            .create_api_key(&cli, "alice", Role::Owner, &[2; 32], Some(now + 60_000))
            .unwrap();
        s.create_api_key(&cli, "alice", Role::Owner, &[3; 32], None)
            .unwrap();
        assert!(s.find_api_key(&[2; 32], now).unwrap().is_some());
        assert!(
            s.find_api_key(&[2; 32], now + 60_000).unwrap().is_none(),
            "expired"
        );
        assert!(s.revoke_api_key(&cli, &a.id).unwrap());
        assert!(!s.revoke_api_key(&cli, &a.id).unwrap(), "once");
        assert!(!s.revoke_api_key(&cli, "0000000000000000").unwrap());
        assert!(s.find_api_key(&[1; 32], now).unwrap().is_none(), "revoked");
        let list = s.list_api_keys().unwrap();
        assert_eq!(list.len(), 3);
        let la = list.iter().find(|k| k.id == a.id).unwrap();
        assert!(la.revoked_ms.is_some() && la.expires_ms.is_none());
        let lb = list.iter().find(|k| k.id == b.id).unwrap();
        assert_eq!(lb.expires_ms, Some(now + 60_000));
        assert_eq!(s.tenants().unwrap(), vec!["acme", "alice"]);
        assert_eq!(audited(&mut s, "api_key_revoke").len(), 1);
    }

    /// The audit records of one action, oldest first.
    fn audited(s: &mut OnboardStore, action: &str) -> Vec<AuditRecord> {
        s.audit(
            &AuditFilter {
                action: Some(action.into()),
                ..AuditFilter::default()
            },
            None,
        )
        .unwrap()
    }

    /// A store written before keys could expire gains the columns, and a tenant per key name.
    #[test]
    fn an_older_api_key_table_is_brought_up_to_date() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let devices = SqliteStore::open(tmp.path()).unwrap();
            drop(devices);
            let conn = Connection::open(tmp.path().join(store::DB_FILE)).unwrap();
            conn.execute_batch(
                "CREATE TABLE api_keys (id TEXT PRIMARY KEY, name TEXT NOT NULL, \
                 role TEXT NOT NULL, key_hash BLOB NOT NULL UNIQUE, created_ms INTEGER NOT NULL) \
                 STRICT; INSERT INTO api_keys VALUES ('0101010101010101', 'old', 'owner', \
                 x'0101010101010101010101010101010101010101010101010101010101010101', 5);",
            )
            .unwrap();
        }
        let mut s = OnboardStore::open(tmp.path()).unwrap();
        assert!(s.find_api_key(&[1; 32], now_ms()).unwrap().is_some());
        assert_eq!(s.tenants().unwrap(), vec!["old"]);
    }

    /// A tenants table without home NetIDs gains the column; a home NetID is set, read back,
    /// cleared, and each change audited.
    #[test]
    fn an_older_tenant_gains_a_home_net_id() {
        let tmp = tempfile::tempdir().unwrap();
        {
            drop(SqliteStore::open(tmp.path()).unwrap());
            let conn = Connection::open(tmp.path().join(store::DB_FILE)).unwrap();
            conn.execute_batch(
                "CREATE TABLE tenants (name TEXT PRIMARY KEY, created_ms INTEGER NOT NULL) STRICT; \
                 INSERT INTO tenants VALUES ('old', 5);",
            )
            .unwrap();
        }
        let mut s = OnboardStore::open(tmp.path()).unwrap();
        assert_eq!(s.tenant_home_net_id("old").unwrap(), None);
        let net = NetId::new(0x13);
        s.set_tenant_home_net_id(&Actor::cli(), "old", net).unwrap();
        assert_eq!(s.tenant_home_net_id("old").unwrap(), net);
        s.set_tenant_home_net_id(&Actor::cli(), "new", net).unwrap();
        assert_eq!(s.tenants().unwrap(), vec!["new", "old"]);
        s.set_tenant_home_net_id(&Actor::cli(), "old", None)
            .unwrap();
        assert_eq!(s.tenant_home_net_id("old").unwrap(), None);
        assert_eq!(s.tenant_home_net_id("nobody").unwrap(), None);
        let records = audited(&mut s, "tenant_home_net_id");
        let details: Vec<_> = records.iter().map(|r| r.detail.as_str()).collect();
        assert_eq!(
            details,
            [
                "tenant \"old\", home NetID 000013",
                "tenant \"new\", home NetID 000013",
                "tenant \"old\", home NetID none"
            ]
        );
    }

    #[test]
    fn clear_owner_tokens_are_hashed_on_open() {
        let tmp = tempfile::tempdir().unwrap();
        let mut devices = SqliteStore::open(tmp.path()).unwrap();
        let d = StoredDevice {
            dev_eui: DevEui::new(5),
            join_eui: protocol::ids::JoinEui::new(1),
            mac_version: protocol::version::MacVersion::V1_0_4,
            app_key_wrapped: vec![0; 24],
            nwk_key_wrapped: None,
            home_net_id: None,
            owner_token: Some("CLEARTOKEN".into()),
            owner: None,
            nonces: NonceState::default(),
            last_join: None,
        };
        devices.insert_devices(&[d]).unwrap();
        drop(devices);
        let mut s = OnboardStore::open(tmp.path()).unwrap();
        let (stored, own) = s.device(DevEui::new(5)).unwrap().unwrap();
        assert_eq!(stored.owner_token, None, "no token in clear");
        let want = super::super::secret::owner_token_hash(DevEui::new(5), "CLEARTOKEN");
        assert_eq!(own.token_hash.as_deref(), Some(&want[..]));
        assert_eq!(s.hash_clear_owner_tokens().unwrap(), 0, "idempotent");
    }
}
