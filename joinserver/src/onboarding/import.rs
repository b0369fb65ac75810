//! The streaming import: one code path for `POST /api/v1/devices/import`, `joinserver devices
//! import [--signature FILE]` and the library's [`crate::devices::import`].
//!
//! The manifest arrives as chunks of any size ([`ManifestSource`]). Each chunk goes to the
//! signature verifier (one Ed25519 stream per trusted key), to a SHA-256 for the audit log, and
//! to the incremental parser ([`ManifestParser`]); each valid row is sealed (root keys wrapped
//! under the master key, owner token hashed) and inserted, as it arrives, into a staging table of
//! **one uncommitted SQLite transaction**. Memory stays bounded whatever the manifest's size
//! (apart from the generated owner tokens, which are returned).
//!
//! The staging table is a `TEMP` table of that transaction's connection (in a temporary file), so
//! the rows of an upload paced by a client do not hold the database's write lock: the join
//! pipeline keeps committing DevNonces meanwhile. When the manifest has ended, every row was
//! valid, no DevEUI repeats and the signature verified, the same transaction copies the staged
//! rows into `devices` and `ownership`, appends one `provision` audit record per device and the
//! `import` summary, and commits. Any failure rolls the whole transaction back: nothing of the
//! manifest is stored.

use std::io::Read;

use protocol::ids::DevEui;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use sha2::{Digest, Sha256};

use super::db::{now_ms, Actor, Role};
use super::manifest_sig::{ManifestVerifier, SignatureError};
use super::secret;
use crate::manifest::{Format, Item, ManifestParser, NewDevice, RowError};
use crate::secrets::MasterKey;
use crate::store::{self, StoreError, StoredDevice};

/// At most this many row errors are kept (and reported); the rest are counted.
pub const MAX_REPORTED_ERRORS: usize = 1000;

/// Why the manifest's bytes stopped before their end.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// More than the configured maximum.
    #[error("the manifest is larger than {0} bytes")]
    TooLarge(usize),
    /// The body (or file) could not be read whole.
    #[error("the manifest was not received whole: {0}")]
    Incomplete(String),
}

/// Where the manifest's bytes come from, chunk by chunk.
pub trait ManifestSource {
    /// The next chunk; `Ok(None)` at the end of the manifest. The slice is valid until the next
    /// call.
    fn next_chunk(&mut self) -> Result<Option<&[u8]>, SourceError>;
}

/// A manifest held in memory, served in chunks of 64 KiB.
#[derive(Debug)]
pub struct SliceSource<'a> {
    rest: &'a [u8],
}

impl<'a> SliceSource<'a> {
    /// Over `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }
}

impl ManifestSource for SliceSource<'_> {
    fn next_chunk(&mut self) -> Result<Option<&[u8]>, SourceError> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let (c, r) = self.rest.split_at(self.rest.len().min(64 * 1024));
        self.rest = r;
        Ok(Some(c))
    }
}

/// A manifest read from a file (or any reader), 64 KiB at a time.
#[derive(Debug)]
pub struct ReadSource<R> {
    reader: R,
    buf: Vec<u8>,
}

impl<R: Read> ReadSource<R> {
    /// Over `reader`.
    pub fn new(reader: R) -> Self {
        Self {
            reader,
            buf: vec![0; 64 * 1024],
        }
    }
}

impl<R: Read> ManifestSource for ReadSource<R> {
    fn next_chunk(&mut self) -> Result<Option<&[u8]>, SourceError> {
        loop {
            match self.reader.read(&mut self.buf) {
                Ok(0) => return Ok(None),
                Ok(n) => return Ok(Some(&self.buf[..n])),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(SourceError::Incomplete(e.to_string())),
            }
        }
    }
}

/// One import: who, under which master key, the format (or guess it), and the signature check
/// (absent: an unsigned import by the local operator).
#[derive(Debug)]
pub struct Job<'a> {
    /// Who imports (the manufacturer tenant of the devices, for a manufacturer key).
    pub actor: &'a Actor,
    /// Wraps the root keys.
    pub master: &'a MasterKey,
    /// The format, or `None` to guess it from the content.
    pub format: Option<Format>,
    /// Verifies the signature over every byte, if the import must be signed.
    pub verifier: Option<ManifestVerifier>,
    /// Held from the final copy until `on_device` has seen every device.
    pub commit_lock: Option<&'a std::sync::Mutex<()>>,
    /// Owner tokens in the manifest shorter than this (characters) are row errors.
    pub min_owner_token_len: usize,
}

/// A generated owner token, compact (24 bytes) until it is returned.
#[derive(Clone, PartialEq, Eq)]
pub struct Generated {
    /// The device.
    pub dev_eui: DevEui,
    /// Its new owner token's bytes.
    pub token: [u8; 16],
}

impl Generated {
    /// The owner token's text (32 uppercase hex digits).
    pub fn owner_token(&self) -> String {
        hex::encode_upper(self.token)
    }
}

impl std::fmt::Debug for Generated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Generated({}, <redacted>)", self.dev_eui)
    }
}

/// A committed import.
#[derive(Debug)]
pub struct Imported {
    /// Devices imported.
    pub imported: usize,
    /// The fingerprint of the key that signed it, if verified.
    pub signed_by: Option<String>,
    /// Owner tokens generated for rows without one.
    pub generated: Vec<Generated>,
    /// `manifest sha256 …, N bytes`, as audited.
    pub what: String,
}

/// Why an import was refused; nothing of it is stored. `what` describes the manifest for the
/// audit record (its SHA-256 prefix and size, as far as it was read).
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The body ended early or was too large.
    #[error("{error}")]
    Source {
        /// What happened.
        error: SourceError,
        /// The manifest as far as it was read.
        what: String,
    },
    /// The signature does not verify.
    #[error("{error}")]
    Signature {
        /// Why.
        error: SignatureError,
        /// The manifest.
        what: String,
    },
    /// Bad rows, duplicates inside the manifest, or devices already provisioned.
    #[error("{total} bad row(s)")]
    Rows {
        /// The first [`MAX_REPORTED_ERRORS`], in line order.
        rows: Vec<RowError>,
        /// How many in all.
        total: usize,
        /// The manifest and the count.
        what: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<rusqlite::Error> for Failure {
    fn from(e: rusqlite::Error) -> Self {
        Self::Store(e.into())
    }
}

const STAGE: &str = "
CREATE TEMP TABLE IF NOT EXISTS import_rows (
    dev_eui     INTEGER PRIMARY KEY,
    line        INTEGER NOT NULL,
    join_eui    INTEGER NOT NULL,
    mac_version TEXT NOT NULL,
    app_key     BLOB NOT NULL,
    nwk_key     BLOB,
    home_net_id INTEGER,
    token_hash  BLOB NOT NULL,
    dev_text    TEXT NOT NULL,
    detail      TEXT NOT NULL
);
DELETE FROM temp.import_rows;
";

/// Collected row errors: the first [`MAX_REPORTED_ERRORS`] and a count.
#[derive(Default)]
struct Errors {
    kept: Vec<RowError>,
    total: usize,
}

impl Extend<RowError> for Errors {
    fn extend<T: IntoIterator<Item = RowError>>(&mut self, iter: T) {
        for e in iter {
            self.push(e);
        }
    }
}

impl Errors {
    fn push(&mut self, e: RowError) {
        self.total += 1;
        if self.kept.len() < MAX_REPORTED_ERRORS {
            self.kept.push(e);
        }
    }
}

/// Runs one import on `conn` (a connection to the join server's database, with the onboarding
/// tables), reading `source` to its end. `on_device`, if given, sees every device after the
/// commit (the running server's map). All or nothing.
pub fn run(
    conn: &mut Connection,
    job: Job<'_>,
    source: &mut dyn ManifestSource,
    on_device: Option<&mut dyn FnMut(StoredDevice)>,
) -> Result<Imported, Failure> {
    super::db::ensure_schema(conn)?;
    // The staging table lives in the connection's temporary database, on disk.
    conn.pragma_update(None, "temp_store", "FILE")?;
    conn.execute_batch(STAGE)?;
    let result = stage_and_commit(conn, job, source, on_device);
    // Whatever happened, the staged rows (keys wrapped, token hashes) do not outlive the import.
    if let Err(e) = conn.execute_batch("DROP TABLE IF EXISTS temp.import_rows") {
        tracing::warn!(error = %e, "dropping the import staging table");
    }
    result
}

/// Where the rows of a manifest wait until the whole manifest has been checked: a `TEMP` table
/// of the import's SQLite transaction ([`TempTable`]), or memory for PostgreSQL
/// ([`crate::store::pg_onboard`]).
pub(crate) trait StageSink {
    /// The line `dev_eui` was staged from, if it was.
    fn staged_line(&mut self, dev_eui: DevEui) -> Result<Option<u64>, StoreError>;
    /// Stages a row.
    fn put(&mut self, row: StagedRow) -> Result<(), StoreError>;
}

/// One staged row of a manifest.
#[derive(Debug)]
pub(crate) struct StagedRow {
    /// The device.
    pub(crate) dev_eui: DevEui,
    /// Its manifest line.
    pub(crate) line: u64,
    /// The sealed device; `None` once the import has failed (only DevEUI and line matter then,
    /// for duplicates).
    pub(crate) sealed: Option<SealedRow>,
}

/// A valid row, sealed: root keys wrapped under the master key, the owner token hashed.
#[derive(Debug)]
pub(crate) struct SealedRow {
    /// The device as it will be stored.
    pub(crate) device: StoredDevice,
    /// Its owner token's hash.
    pub(crate) token_hash: [u8; 32],
    /// Its `provision` audit record's detail.
    pub(crate) detail: String,
}

/// The staging table of an import's SQLite transaction.
struct TempTable<'a>(&'a Connection);

impl StageSink for TempTable<'_> {
    fn staged_line(&mut self, dev_eui: DevEui) -> Result<Option<u64>, StoreError> {
        let line: Option<i64> = self
            .0
            .prepare_cached("SELECT line FROM temp.import_rows WHERE dev_eui = ?1")?
            .query_row([store::dev_eui_sql(dev_eui)], |r| r.get(0))
            .optional()?;
        Ok(line.map(|l| l as u64))
    }

    fn put(&mut self, row: StagedRow) -> Result<(), StoreError> {
        let Some(SealedRow {
            device: s,
            token_hash,
            detail,
        }) = row.sealed
        else {
            self.0
                .prepare_cached(
                    "INSERT INTO temp.import_rows (dev_eui, line, join_eui, mac_version, \
                     app_key, token_hash, dev_text, detail) \
                     VALUES (?1, ?2, 0, '', x'', x'', '', '')",
                )?
                .execute(params![store::dev_eui_sql(row.dev_eui), row.line as i64])?;
            return Ok(());
        };
        self.0
            .prepare_cached(
                "INSERT INTO temp.import_rows (dev_eui, line, join_eui, mac_version, app_key, \
                 nwk_key, home_net_id, token_hash, dev_text, detail) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?
            .execute(params![
                store::dev_eui_sql(s.dev_eui),
                row.line as i64,
                store::eui_to_sql(s.join_eui.as_u64()),
                s.mac_version.as_str(),
                s.app_key_wrapped,
                s.nwk_key_wrapped,
                s.home_net_id.map(|n| i64::from(n.as_u32())),
                &token_hash[..],
                s.dev_eui.to_string(),
                detail,
            ])?;
        Ok(())
    }
}

/// Stages one valid row; a DevEUI already staged is a row error naming its first line.
fn stage(
    sink: &mut dyn StageSink,
    master: &MasterKey,
    d: &NewDevice,
    dev_eui_column: &str,
    generated: &mut Vec<Generated>,
    errors: &mut Errors,
) -> Result<(), StoreError> {
    if let Some(first) = sink.staged_line(d.dev_eui)? {
        errors.push(RowError {
            line: d.line,
            column: dev_eui_column.to_owned(),
            message: format!("DevEUI {} already appears on line {first}", d.dev_eui),
        });
        return Ok(());
    }
    let sealed = (errors.total == 0).then(|| {
        let token_hash = token_hash(d, generated);
        let device = d.seal(master);
        let detail = match device.home_net_id {
            Some(n) => format!("{}, home_net_id {n}", device.mac_version.as_str()),
            None => device.mac_version.as_str().to_owned(),
        };
        SealedRow {
            device,
            token_hash,
            detail,
        }
    });
    sink.put(StagedRow {
        dev_eui: d.dev_eui,
        line: d.line,
        sealed,
    })
}

fn stage_and_commit(
    conn: &mut Connection,
    job: Job<'_>,
    source: &mut dyn ManifestSource,
    on_device: Option<&mut dyn FnMut(StoredDevice)>,
) -> Result<Imported, Failure> {
    // Deferred: staging touches only the temporary database, so the main database is neither
    // read nor locked until the final copy.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
    let (staged, actor, commit_lock) = stage_job(&mut TempTable(&tx), job, source)?;
    let _committing = commit_lock.map(|l| l.lock().unwrap_or_else(|e| e.into_inner()));
    let imported = commit_staged(&tx, actor, &staged)?;
    tx.commit()?;
    if let Some(f) = on_device {
        store::for_each_device(conn, "dev_eui IN (SELECT dev_eui FROM temp.import_rows)", f)?;
    }
    Ok(staged.imported(imported))
}

/// Reads `job`'s manifest from `source` to its end into `sink` and checks it whole (rows,
/// duplicates, signature): what every store's import does before its commit. Returns the staged
/// manifest, who imports, and the lock to hold from the commit until the devices are loaded.
pub(crate) fn stage_job<'a>(
    sink: &mut dyn StageSink,
    job: Job<'a>,
    source: &mut dyn ManifestSource,
) -> Result<(Staged, &'a Actor, Option<&'a std::sync::Mutex<()>>), Failure> {
    let Job {
        actor,
        master,
        format,
        verifier,
        commit_lock,
        min_owner_token_len,
    } = job;
    let rules = Rules {
        master,
        format,
        min_owner_token_len,
    };
    let staged = stage_manifest(sink, rules, verifier, source)?;
    Ok((staged, actor, commit_lock))
}

/// The hash of a row's owner token; for a row without one, of a new token, which is added to
/// `generated`.
fn token_hash(d: &NewDevice, generated: &mut Vec<Generated>) -> [u8; 32] {
    match &d.owner_token {
        Some(t) => secret::owner_token_hash(d.dev_eui, t),
        None => {
            let g = Generated {
                dev_eui: d.dev_eui,
                token: secret::generate_owner_token_bytes(),
            };
            let h = secret::owner_token_hash(d.dev_eui, &g.owner_token());
            generated.push(g);
            h
        }
    }
}

/// The row error of a device whose manifest-supplied owner token is shorter than `min`.
fn weak_token(d: &NewDevice, min: usize) -> Option<RowError> {
    let short = d.owner_token.as_ref()?.chars().count() < min;
    short.then(|| RowError {
        line: d.line,
        column: "owner_token".into(),
        message: format!(
            "owner token shorter than {min} characters (api.min_owner_token_len): it could be \
             guessed"
        ),
    })
}

/// How the rows of a manifest are checked and sealed.
struct Rules<'a> {
    /// Wraps the root keys.
    master: &'a MasterKey,
    /// The format, or `None` to guess it.
    format: Option<Format>,
    /// The shortest owner token accepted.
    min_owner_token_len: usize,
}

/// A whole manifest, valid, authentic and staged.
pub(crate) struct Staged {
    /// The manifest's description for the audit log (digest and size).
    pub(crate) what: String,
    /// The fingerprint of the key that signed it, if signed.
    pub(crate) signed_by: Option<String>,
    /// Owner tokens generated for rows without one.
    pub(crate) generated: Vec<Generated>,
    /// How row errors name the DevEUI column.
    pub(crate) dev_eui_column: String,
}

impl Staged {
    /// The committed import of this manifest's `imported` devices.
    pub(crate) fn imported(self, imported: usize) -> Imported {
        Imported {
            imported,
            signed_by: self.signed_by,
            generated: self.generated,
            what: self.what,
        }
    }
}

/// Reads `source` to its end, feeding the signature verifier, the digest and the parser, and
/// stages each valid row; fails unless every row was valid and the signature verified.
fn stage_manifest(
    sink: &mut dyn StageSink,
    rules: Rules<'_>,
    mut verifier: Option<ManifestVerifier>,
    source: &mut dyn ManifestSource,
) -> Result<Staged, Failure> {
    let mut parser = ManifestParser::new(rules.format);
    let mut staging = Staging {
        sink,
        rules,
        errors: Errors::default(),
        generated: Vec::new(),
        store_error: None,
    };
    let mut digest = Sha256::new();
    let mut bytes = 0u64;
    let mut items = Vec::new();
    let source_error = loop {
        let chunk = match source.next_chunk() {
            Ok(Some(c)) => c,
            Ok(None) => break None,
            Err(e) => break Some(e),
        };
        bytes += chunk.len() as u64;
        digest.update(chunk);
        if let Some(v) = &mut verifier {
            v.update(chunk);
        }
        parser.feed(chunk, &mut |i| items.push(i));
        staging.take(&mut items, &parser.dev_eui_column());
    };
    let what = format!(
        "manifest sha256 {}…, {bytes} bytes",
        hex::encode(&digest.finalize()[..8])
    );
    if let Some(error) = source_error {
        return Err(Failure::Source { error, what });
    }
    let signed_by = match verifier.map(ManifestVerifier::finish).transpose() {
        Ok(fp) => fp,
        Err(error) => return Err(Failure::Signature { error, what }),
    };
    let col = parser.dev_eui_column();
    parser.finish(&mut |i| items.push(i));
    staging.take(&mut items, &col);
    let Staging {
        errors,
        generated,
        store_error,
        ..
    } = staging;
    if let Some(e) = store_error {
        return Err(e.into());
    }
    if errors.total > 0 {
        let what = format!("{what}; {} bad row(s)", errors.total);
        return Err(Failure::Rows {
            rows: errors.kept,
            total: errors.total,
            what,
        });
    }
    Ok(Staged {
        what,
        signed_by,
        generated,
        dev_eui_column: col,
    })
}

/// The rows of a manifest being staged, and what staging them found.
struct Staging<'a> {
    sink: &'a mut dyn StageSink,
    rules: Rules<'a>,
    errors: Errors,
    generated: Vec<Generated>,
    /// The first store failure: nothing more is staged after it.
    store_error: Option<StoreError>,
}

impl Staging<'_> {
    /// Takes the parser's items: row errors are kept, valid rows staged.
    fn take(&mut self, items: &mut Vec<Item>, dev_eui_column: &str) {
        let min = self.rules.min_owner_token_len;
        for item in items.drain(..) {
            match item {
                Item::Error(e) => self.errors.push(e),
                Item::Row(d) if weak_token(&d, min).is_some() => {
                    self.errors.extend(weak_token(&d, min));
                }
                Item::Row(d) if self.store_error.is_none() => {
                    let staged = stage(
                        self.sink,
                        self.rules.master,
                        &d,
                        dev_eui_column,
                        &mut self.generated,
                        &mut self.errors,
                    );
                    if let Err(e) = staged {
                        self.store_error = Some(e);
                    }
                }
                Item::Row(_) => {}
            }
        }
    }
}

/// Copies the staged rows into the store (in DevEUI order, the order of both tables' keys),
/// with their ownership, one `provision` audit record each and the `import` summary, inside
/// `tx`. Returns how many devices were imported.
fn commit_staged(tx: &Connection, actor: &Actor, staged: &Staged) -> Result<usize, Failure> {
    let copied = tx.execute(
        &format!(
            // A device removed before continues from its last JoinNonce.
            "INSERT INTO devices ({}) SELECT s.dev_eui, s.join_eui, s.mac_version, s.app_key, \
             s.nwk_key, s.home_net_id, NULL, NULL, x'', COALESCE(r.last_join_nonce, 0) \
             FROM temp.import_rows s LEFT JOIN main.retired_join_nonces r \
             ON r.dev_eui = s.dev_eui ORDER BY s.dev_eui",
            store::DEVICE_COLUMNS
        ),
        [],
    );
    match copied {
        Ok(_) => {}
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            return Err(already_provisioned(tx, staged)?);
        }
        Err(e) => return Err(StoreError::from(e).into()),
    }
    let manufacturer = (actor.role == Role::Manufacturer)
        .then_some(actor.tenant.as_deref())
        .flatten();
    tx.execute(
        "INSERT OR REPLACE INTO ownership (dev_eui, token_hash, manufacturer, owner, claimed_ms, \
         locked) SELECT dev_eui, token_hash, ?1, NULL, NULL, 0 FROM temp.import_rows",
        params![manufacturer],
    )?;
    let at = now_ms();
    let imported = tx.execute(
        "INSERT INTO audit (at_ms, actor, tenant, action, dev_eui, outcome, detail) \
         SELECT ?1, ?2, ?3, 'provision', dev_text, 'ok', detail FROM temp.import_rows \
         ORDER BY line",
        params![at, actor.id, actor.tenant],
    )?;
    let summary = summary(staged, imported);
    super::db::append(
        tx,
        at,
        &super::db::AuditEntry {
            actor,
            action: "import",
            dev_eui: None,
            outcome: "ok",
            detail: &summary,
        },
    )?;
    store::bump_generation(
        tx,
        store::Changed::Query {
            select: "SELECT dev_eui FROM temp.import_rows",
            count: imported,
        },
    )?;
    Ok(imported)
}

/// The `import` audit record's detail: the manifest, the count, the signature.
pub(crate) fn summary(staged: &Staged, imported: usize) -> String {
    format!(
        "{}; {imported} device(s); {}",
        staged.what,
        staged.signed_by.as_deref().map_or_else(
            || "unsigned (operator)".to_owned(),
            |k| format!("signed by key {k}")
        )
    )
}

/// The failure for staged devices that are already provisioned: each one's line.
fn already_provisioned(tx: &Connection, staged: &Staged) -> Result<Failure, StoreError> {
    let mut stmt = tx.prepare(
        "SELECT s.line, s.dev_text FROM temp.import_rows s \
         JOIN main.devices d ON d.dev_eui = s.dev_eui ORDER BY s.line",
    )?;
    let mut found = Vec::new();
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let (line, dev): (i64, String) = (r.get(0)?, r.get(1)?);
        found.push((line as u64, dev));
    }
    Ok(provisioned_failure(staged, found))
}

/// The failure for the devices of `found` (line, DevEUI), in line order, that are already
/// provisioned.
pub(crate) fn provisioned_failure(staged: &Staged, found: Vec<(u64, String)>) -> Failure {
    let mut errors = Errors::default();
    for (line, dev) in found {
        errors.push(RowError {
            line,
            column: staged.dev_eui_column.clone(),
            message: format!("DevEUI {dev} is already provisioned (remove it first)"),
        });
    }
    let what = format!(
        "{}; {} device(s) already provisioned",
        staged.what, errors.total
    );
    Failure::Rows {
        rows: errors.kept,
        total: errors.total,
        what,
    }
}
