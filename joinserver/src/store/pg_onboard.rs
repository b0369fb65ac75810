//! The onboarding state on PostgreSQL ([`OnboardBackend`]): tenants, API keys (SHA-256 hashes
//! only), ownership and claims, the append-only audit log (a trigger refuses UPDATE, DELETE and
//! TRUNCATE), imports, and the Backend Interfaces peer tokens ([`PeerTokens`], hashes only), in
//! the tables of migration 3 of [`super::postgres::MIGRATIONS`], shared by every join server on
//! the database.
//!
//! Every change of a device (claim, release, nonce reset, key rotation, deprovisioning, import)
//! bumps the store's generation and logs the device in its transaction, and so sends `NOTIFY`:
//! every other instance reads that device, and only it, at once
//! ([`crate::store::Store::wait_for_change`]).

use std::collections::HashMap;

use postgres::types::ToSql;
use protocol::ids::{DevEui, NetId};

use super::postgres::{
    bump_generation, delete_device_tx, insert_devices_tx, off_runtime, pg, PgStore,
};
use super::{dev_eui_sql, NonceState, Store, StoreError, StoredDevice};
use crate::bi::tokens::PeerTokens;
use crate::onboarding::backend::{Importer, OnboardBackend};
use crate::onboarding::db::{
    api_key_created, home_net_id_set, now_ms, released, Actor, ApiKeyInfo, ApiKeyRecord,
    AuditEntry, AuditFilter, AuditRecord, ClaimOutcome, FilterValue, Ownership, OwnershipColumn,
    Role,
};
use crate::onboarding::import::{
    self as imp, Failure, Imported, Job, ManifestSource, SealedRow, StageSink, StagedRow,
};
use crate::onboarding::secret;

/// Flips the sign bit: orders the stored (signed) DevEUI bits as unsigned DevEUIs.
const UNSIGNED: i64 = i64::MIN;

/// The onboarding state on a PostgreSQL store.
#[derive(Debug)]
pub struct PgOnboard {
    store: PgStore,
}

impl PgOnboard {
    /// Over `store` (migrated).
    pub fn new(store: PgStore) -> Self {
        Self { store }
    }
}

impl From<PgOnboard> for Box<dyn OnboardBackend> {
    fn from(s: PgOnboard) -> Self {
        Box::new(s)
    }
}

/// Appends an audit record inside `tx`.
fn append(
    tx: &mut postgres::Transaction<'_>,
    at_ms: i64,
    e: &AuditEntry<'_>,
) -> Result<(), StoreError> {
    append_seq(tx, at_ms, e).map(drop)
}

/// Appends an audit record inside `tx`; returns its sequence number.
fn append_seq(
    tx: &mut postgres::Transaction<'_>,
    at_ms: i64,
    e: &AuditEntry<'_>,
) -> Result<i64, StoreError> {
    let row = tx
        .query_one(
            "INSERT INTO audit (at_ms, actor, tenant, action, dev_eui, outcome, detail) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING seq",
            &[
                &at_ms,
                &e.actor.id,
                &e.actor.tenant,
                &e.action,
                &e.dev_eui.map(|d| d.to_string()),
                &e.outcome,
                &e.detail,
            ],
        )
        .map_err(pg)?;
    Ok(row.get(0))
}

/// Creates the record of the tenant `name` (at `at_ms`) if it has none.
fn ensure_tenant(
    tx: &mut postgres::Transaction<'_>,
    name: &str,
    at_ms: i64,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO tenants (name, created_ms) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        &[&name, &at_ms],
    )
    .map_err(pg)?;
    Ok(())
}

impl PgOnboard {
    /// Runs `f` in one transaction and commits it.
    fn tx<R>(
        &mut self,
        f: impl FnOnce(&mut postgres::Transaction<'_>) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        self.store.with(|h| {
            let mut tx = h.client.transaction().map_err(pg)?;
            let r = f(&mut tx)?;
            tx.commit().map_err(pg)?;
            Ok(r)
        })
    }

    /// A device's ownership (the default for a device without a row).
    fn ownership(&mut self, dev_eui: DevEui) -> Result<Ownership, StoreError> {
        let row = self.store.with(|h| {
            h.client
                .query_opt(
                    "SELECT token_hash, manufacturer, owner, claimed_ms, locked FROM ownership \
                     WHERE dev_eui = $1",
                    &[&dev_eui_sql(dev_eui)],
                )
                .map_err(pg)
        })?;
        Ok(row.map_or_else(Ownership::default, |r| Ownership {
            token_hash: r.get(0),
            manufacturer: r.get(1),
            owner: r.get(2),
            claimed_ms: r.get(3),
            locked: r.get::<_, i64>(4) != 0,
        }))
    }
}

impl OnboardBackend for PgOnboard {
    fn audit_append(&mut self, e: &AuditEntry<'_>) -> Result<(), StoreError> {
        self.tx(|tx| append(tx, now_ms(), e))
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
        self.tx(|tx| {
            ensure_tenant(tx, name, now)?;
            tx.execute(
                "INSERT INTO api_keys (id, name, role, key_hash, created_ms, expires_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &id,
                    &name,
                    &role.as_str(),
                    &&key_hash[..],
                    &now,
                    &expires_ms,
                ],
            )
            .map_err(pg)?;
            append(
                tx,
                now,
                &AuditEntry {
                    actor,
                    action: "api_key_create",
                    dev_eui: None,
                    outcome: "ok",
                    detail: &api_key_created(&id, role, name, expires_ms),
                },
            )
        })?;
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
        let row = self.store.with(|h| {
            let s = h.statement(
                "SELECT id, name, role, key_hash FROM api_keys WHERE key_hash = $1 \
                 AND revoked_ms IS NULL AND (expires_ms IS NULL OR expires_ms > $2)",
            )?;
            h.client
                .query_opt(&s, &[&&key_hash[..], &now_ms])
                .map_err(pg)
        })?;
        Ok(row.and_then(|r| {
            let (id, name, role, h): (String, String, String, Vec<u8>) =
                (r.get(0), r.get(1), r.get(2), r.get(3));
            secret::ct_eq(&h, key_hash)
                .then(|| Role::parse(&role))
                .flatten()
                .map(|role| ApiKeyRecord { id, name, role })
        }))
    }

    fn list_api_keys(&mut self) -> Result<Vec<ApiKeyInfo>, StoreError> {
        let rows = self.store.with(|h| {
            h.client
                .query(
                    "SELECT id, name, role, created_ms, expires_ms, revoked_ms FROM api_keys \
                     ORDER BY created_ms, id",
                    &[],
                )
                .map_err(pg)
        })?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                Some(ApiKeyInfo {
                    id: r.get(0),
                    name: r.get(1),
                    // A role written by a newer release is skipped.
                    role: Role::parse(r.get(2))?,
                    created_ms: r.get(3),
                    expires_ms: r.get(4),
                    revoked_ms: r.get(5),
                })
            })
            .collect())
    }

    fn revoke_api_key(&mut self, actor: &Actor, id: &str) -> Result<bool, StoreError> {
        let at = now_ms();
        self.tx(|tx| {
            let n = tx
                .execute(
                    "UPDATE api_keys SET revoked_ms = $2 WHERE id = $1 AND revoked_ms IS NULL",
                    &[&id, &at],
                )
                .map_err(pg)?;
            if n > 0 {
                append(
                    tx,
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
            Ok(n > 0)
        })
    }

    fn tenants(&mut self) -> Result<Vec<String>, StoreError> {
        let rows = self.store.with(|h| {
            h.client
                .query("SELECT name FROM tenants ORDER BY name", &[])
                .map_err(pg)
        })?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn set_tenant_home_net_id(
        &mut self,
        actor: &Actor,
        name: &str,
        net_id: Option<NetId>,
    ) -> Result<(), StoreError> {
        let at = now_ms();
        self.tx(|tx| {
            ensure_tenant(tx, name, at)?;
            tx.execute(
                "UPDATE tenants SET home_net_id = $2 WHERE name = $1",
                &[&name, &net_id.map(|n| i64::from(n.as_u32()))],
            )
            .map_err(pg)?;
            append(
                tx,
                at,
                &AuditEntry {
                    actor,
                    action: "tenant_home_net_id",
                    dev_eui: None,
                    outcome: "ok",
                    detail: &home_net_id_set(name, net_id),
                },
            )
        })
    }

    fn tenant_home_net_id(&mut self, name: &str) -> Result<Option<NetId>, StoreError> {
        let row = self.store.with(|h| {
            h.client
                .query_opt("SELECT home_net_id FROM tenants WHERE name = $1", &[&name])
                .map_err(pg)
        })?;
        row.and_then(|r| r.get::<_, Option<i64>>(0))
            .map(|v| {
                u32::try_from(v)
                    .ok()
                    .and_then(NetId::new)
                    .ok_or_else(|| StoreError::Postgres(format!("tenant {name:?}: bad home NetID")))
            })
            .transpose()
    }

    fn claim_failures_since(
        &mut self,
        since_ms: i64,
    ) -> Result<Vec<(i64, String, Option<String>)>, StoreError> {
        let rows = self.store.with(|h| {
            h.client
                .query(
                    "SELECT at_ms, actor, dev_eui FROM audit WHERE action = 'claim' \
                     AND at_ms >= $1 AND outcome IN ('refused:wrong_token', 'refused:not_found') \
                     ORDER BY seq",
                    &[&since_ms],
                )
                .map_err(pg)
        })?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    fn stored_device(&mut self, dev_eui: DevEui) -> Result<Option<StoredDevice>, StoreError> {
        self.store.get_device(dev_eui)
    }

    fn device(&mut self, dev_eui: DevEui) -> Result<Option<(StoredDevice, Ownership)>, StoreError> {
        let Some(d) = self.store.get_device(dev_eui)? else {
            return Ok(None);
        };
        Ok(Some((d, self.ownership(dev_eui)?)))
    }

    fn visible(
        &mut self,
        scope: Option<(OwnershipColumn, &str)>,
        after: Option<DevEui>,
        limit: u32,
    ) -> Result<Vec<DevEui>, StoreError> {
        let after = after.map(|a| dev_eui_sql(a) ^ UNSIGNED);
        let limit = i64::from(limit);
        let rows = self.store.with(|h| {
            let r = match scope {
                None => h.client.query(
                    "SELECT dev_eui FROM devices \
                     WHERE $2::bigint IS NULL OR (dev_eui # $1) > $2 \
                     ORDER BY dev_eui # $1 LIMIT $3",
                    &[&UNSIGNED, &after, &limit],
                ),
                Some((column, tenant)) => {
                    let sql = match column {
                        OwnershipColumn::Manufacturer => {
                            "SELECT d.dev_eui FROM devices d JOIN ownership o \
                             ON o.dev_eui = d.dev_eui WHERE o.manufacturer = $4 \
                             AND ($2::bigint IS NULL OR (d.dev_eui # $1) > $2) \
                             ORDER BY d.dev_eui # $1 LIMIT $3"
                        }
                        OwnershipColumn::Owner => {
                            "SELECT d.dev_eui FROM devices d JOIN ownership o \
                             ON o.dev_eui = d.dev_eui WHERE o.owner = $4 \
                             AND ($2::bigint IS NULL OR (d.dev_eui # $1) > $2) \
                             ORDER BY d.dev_eui # $1 LIMIT $3"
                        }
                    };
                    h.client.query(sql, &[&UNSIGNED, &after, &limit, &tenant])
                }
            };
            r.map_err(pg)
        })?;
        Ok(rows
            .iter()
            .map(|r| DevEui::new(r.get::<_, i64>(0) as u64))
            .collect())
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
        let d = dev_eui_sql(dev_eui);
        self.tx(|tx| {
            // The device's row is locked until the commit: of concurrent claims through any
            // instances, the later ones see its home NetID set and refuse.
            let row = tx
                .query_opt(
                    "SELECT d.home_net_id, o.token_hash, o.owner, COALESCE(o.locked, 0) \
                     FROM devices d LEFT JOIN ownership o ON o.dev_eui = d.dev_eui \
                     WHERE d.dev_eui = $1 FOR UPDATE OF d",
                    &[&d],
                )
                .map_err(pg)?;
            let Some(row) = row else {
                return Ok(ClaimOutcome::NotFound);
            };
            let (bound, token_hash, owner, locked): (
                Option<i64>,
                Option<Vec<u8>>,
                Option<String>,
                i64,
            ) = (row.get(0), row.get(1), row.get(2), row.get(3));
            // Constant time over the hash, as the embedded store compares it.
            let stored = token_hash.clone().unwrap_or_else(|| vec![0; 32]);
            if !secret::ct_eq(presented, &stored) || token_hash.is_none() {
                return Ok(ClaimOutcome::WrongToken);
            }
            if locked != 0 {
                return Ok(ClaimOutcome::Locked);
            }
            if bound.is_some() || owner.is_some() {
                return Ok(ClaimOutcome::AlreadyClaimed);
            }
            tx.execute(
                "INSERT INTO ownership (dev_eui, owner, claimed_ms) VALUES ($1, $2, $3) \
                 ON CONFLICT (dev_eui) DO UPDATE SET owner = $2, claimed_ms = $3",
                &[&d, &tenant, &at],
            )
            .map_err(pg)?;
            tx.execute(
                "UPDATE devices SET home_net_id = $2 WHERE dev_eui = $1",
                &[&d, &i64::from(home.as_u32())],
            )
            .map_err(pg)?;
            let entry = AuditEntry {
                actor,
                action: "claim",
                dev_eui: Some(dev_eui),
                outcome: "ok",
                detail,
            };
            append(tx, at, &entry)?;
            bump_generation(tx, &[d])?;
            Ok(ClaimOutcome::Claimed)
        })
    }

    fn release(
        &mut self,
        actor: &Actor,
        dev_eui: DevEui,
        new_token_hash: Option<&[u8; 32]>,
    ) -> Result<(), StoreError> {
        let at = now_ms();
        let d = dev_eui_sql(dev_eui);
        self.tx(|tx| {
            tx.execute(
                "UPDATE ownership SET owner = NULL, claimed_ms = NULL, \
                 token_hash = COALESCE($2, token_hash) WHERE dev_eui = $1",
                &[&d, &new_token_hash.map(|h| h.to_vec())],
            )
            .map_err(pg)?;
            tx.execute(
                "UPDATE devices SET home_net_id = NULL WHERE dev_eui = $1",
                &[&d],
            )
            .map_err(pg)?;
            let detail = released(new_token_hash.is_some());
            let entry = AuditEntry {
                actor,
                action: "release",
                dev_eui: Some(dev_eui),
                outcome: "ok",
                detail,
            };
            append(tx, at, &entry)?;
            bump_generation(tx, &[d])
        })
    }

    fn set_locked(
        &mut self,
        actor: &Actor,
        dev_eui: DevEui,
        locked: bool,
    ) -> Result<(), StoreError> {
        self.tx(|tx| {
            tx.execute(
                "INSERT INTO ownership (dev_eui, locked) VALUES ($1, $2) \
                 ON CONFLICT (dev_eui) DO UPDATE SET locked = $2",
                &[&dev_eui_sql(dev_eui), &i64::from(locked)],
            )
            .map_err(pg)?;
            let entry = AuditEntry {
                actor,
                action: if locked { "lock" } else { "unlock" },
                dev_eui: Some(dev_eui),
                outcome: "ok",
                detail: "",
            };
            append(tx, now_ms(), &entry)
        })
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
        let d = dev_eui_sql(dev_eui);
        self.tx(|tx| {
            tx.execute(
                "UPDATE devices SET last_dev_nonce = $2, used_dev_nonces = $3, \
                 last_join_nonce = GREATEST(last_join_nonce, $4), last_rj_count1 = $5 \
                 WHERE dev_eui = $1",
                &[
                    &d,
                    &nonces.last_dev_nonce.map(i64::from),
                    &nonces.history_blob(),
                    &i64::from(nonces.last_join_nonce),
                    &nonces.last_rj_count1.map(i64::from),
                ],
            )
            .map_err(pg)?;
            if let Some((app, nwk)) = keys {
                tx.execute(
                    "UPDATE devices SET app_key = $2, nwk_key = $3 WHERE dev_eui = $1",
                    &[&d, &app, &nwk],
                )
                .map_err(pg)?;
            }
            let entry = AuditEntry {
                actor,
                action,
                dev_eui: Some(dev_eui),
                outcome: "ok",
                detail,
            };
            let seq = append_seq(tx, now_ms(), &entry)?;
            bump_generation(tx, &[d])?;
            Ok(seq)
        })
    }

    fn deprovision(&mut self, actor: &Actor, dev_eui: DevEui) -> Result<bool, StoreError> {
        let d = dev_eui_sql(dev_eui);
        self.tx(|tx| {
            let removed = delete_device_tx(tx, d)?;
            tx.execute("DELETE FROM ownership WHERE dev_eui = $1", &[&d])
                .map_err(pg)?;
            if removed {
                let entry = AuditEntry {
                    actor,
                    action: "deprovision",
                    dev_eui: Some(dev_eui),
                    outcome: "ok",
                    detail: "",
                };
                append(tx, now_ms(), &entry)?;
                bump_generation(tx, &[d])?;
            }
            Ok(removed)
        })
    }

    fn audit(
        &mut self,
        f: &AuditFilter,
        tenant: Option<&str>,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        // A prefix match, without LIKE wildcards from the caller.
        let (sql, values) = f.query(tenant, "starts_with(outcome, ?)", '$');
        let args: Vec<Box<dyn ToSql + Sync>> = values
            .into_iter()
            .map(|v| -> Box<dyn ToSql + Sync> {
                match v {
                    FilterValue::Text(t) => Box::new(t),
                    FilterValue::Int(i) => Box::new(i),
                }
            })
            .collect();
        let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| a.as_ref()).collect();
        let rows = self
            .store
            .with(|h| h.client.query(&sql, &params).map_err(pg))?;
        Ok(rows
            .iter()
            .map(|r| AuditRecord {
                seq: r.get(0),
                at_ms: r.get(1),
                actor: r.get(2),
                tenant: r.get(3),
                action: r.get(4),
                dev_eui: r.get(5),
                outcome: r.get(6),
                detail: r.get(7),
                refers_to: r.get(8),
            })
            .collect())
    }

    fn importer(&self) -> Result<Box<dyn Importer>, StoreError> {
        Ok(Box::new(PgImporter(self.store.handle())))
    }
}

/// The rows of an import into PostgreSQL, staged in memory (the API bounds a manifest's size,
/// `[api] max_manifest_bytes`; the command line reads a file the operator chose) until the whole
/// manifest has been checked, then inserted in one transaction.
#[derive(Debug, Default)]
struct MemoryStage {
    rows: Vec<StagedRow>,
    lines: HashMap<DevEui, u64>,
}

impl StageSink for MemoryStage {
    fn staged_line(&mut self, dev_eui: DevEui) -> Result<Option<u64>, StoreError> {
        Ok(self.lines.get(&dev_eui).copied())
    }

    fn put(&mut self, row: StagedRow) -> Result<(), StoreError> {
        self.lines.insert(row.dev_eui, row.line);
        self.rows.push(row);
        Ok(())
    }
}

/// An import on a PostgreSQL handle of its own.
struct PgImporter(PgStore);

impl Importer for PgImporter {
    fn run(
        &mut self,
        job: Job<'_>,
        source: &mut dyn ManifestSource,
        on_device: Option<&mut dyn FnMut(StoredDevice)>,
    ) -> Result<Imported, Failure> {
        let mut stage = MemoryStage::default();
        let (staged, actor, commit_lock) = imp::stage_job(&mut stage, job, source)?;
        let _committing = commit_lock.map(|l| l.lock().unwrap_or_else(|e| e.into_inner()));
        let rows: Vec<&SealedRow> = stage
            .rows
            .iter()
            .filter_map(|r| r.sealed.as_ref())
            .collect();
        let summary = imp::summary(&staged, rows.len());
        let inserted = self.0.with(|h| {
            let mut tx = h.client.transaction().map_err(pg)?;
            if !commit_import(&mut tx, actor, &rows, &summary)? {
                return Ok(false);
            }
            tx.commit().map_err(pg)?;
            Ok(true)
        })?;
        if !inserted {
            let euis: Vec<i64> = rows.iter().map(|r| dev_eui_sql(r.device.dev_eui)).collect();
            let stored = self.0.stored_among(&euis)?;
            let found = stage
                .rows
                .iter()
                .filter(|r| stored.contains(&dev_eui_sql(r.dev_eui)))
                .map(|r| (r.line, r.dev_eui.to_string()))
                .collect();
            return Err(imp::provisioned_failure(&staged, found));
        }
        if let Some(f) = on_device {
            for r in &rows {
                if let Some(stored) = self.0.get_device(r.device.dev_eui)? {
                    f(stored);
                }
            }
        }
        Ok(staged.imported(rows.len()))
    }
}

/// Inserts an import's devices inside `tx` with their ownership (owner token hash, the
/// manufacturer of a manufacturer's import), one `provision` audit record each in manifest order,
/// the `import` summary, and the change mark; `false`, with `tx` failed, if a device is
/// provisioned already.
fn commit_import(
    tx: &mut postgres::Transaction<'_>,
    actor: &Actor,
    rows: &[&SealedRow],
    summary: &str,
) -> Result<bool, StoreError> {
    let devices: Vec<StoredDevice> = rows.iter().map(|r| r.device.clone()).collect();
    if !insert_devices_tx(tx, &devices)? {
        return Ok(false);
    }
    let euis: Vec<i64> = devices.iter().map(|d| dev_eui_sql(d.dev_eui)).collect();
    let hashes: Vec<&[u8]> = rows.iter().map(|r| &r.token_hash[..]).collect();
    let manufacturer = (actor.role == Role::Manufacturer)
        .then_some(actor.tenant.as_deref())
        .flatten();
    tx.execute(
        "INSERT INTO ownership (dev_eui, token_hash, manufacturer, owner, claimed_ms, locked) \
         SELECT u.d, u.h, $3, NULL, NULL, 0 FROM unnest($1::bigint[], $2::bytea[]) AS u(d, h) \
         ON CONFLICT (dev_eui) DO UPDATE SET token_hash = excluded.token_hash, \
           manufacturer = excluded.manufacturer, owner = NULL, claimed_ms = NULL, locked = 0",
        &[&euis, &hashes, &manufacturer],
    )
    .map_err(pg)?;
    let at = now_ms();
    let texts: Vec<String> = devices.iter().map(|d| d.dev_eui.to_string()).collect();
    let details: Vec<&str> = rows.iter().map(|r| r.detail.as_str()).collect();
    tx.execute(
        "INSERT INTO audit (at_ms, actor, tenant, action, dev_eui, outcome, detail) \
         SELECT $1, $2, $3, 'provision', u.dev, 'ok', u.detail \
         FROM unnest($4::text[], $5::text[]) WITH ORDINALITY AS u(dev, detail, n) ORDER BY u.n",
        &[&at, &actor.id, &actor.tenant, &texts, &details],
    )
    .map_err(pg)?;
    let entry = AuditEntry {
        actor,
        action: "import",
        dev_eui: None,
        outcome: "ok",
        detail: summary,
    };
    append(tx, at, &entry)?;
    bump_generation(tx, &euis)?;
    Ok(true)
}

impl PeerTokens for PgStore {
    fn insert_peer_token(
        &mut self,
        hash: &[u8; 32],
        net_id: NetId,
        created_ms: u64,
    ) -> Result<(), StoreError> {
        self.with(|h| {
            h.client
                .execute(
                    "INSERT INTO bi_peer_tokens (token_hash, net_id, created_ms) \
                     VALUES ($1, $2, $3)",
                    &[
                        &&hash[..],
                        &i64::from(net_id.as_u32()),
                        &i64::try_from(created_ms).unwrap_or(i64::MAX),
                    ],
                )
                .map_err(pg)?;
            Ok(())
        })
    }

    /// Called on the Backend Interfaces listener's runtime: runs off it (`off_runtime`).
    fn peer_token(&mut self, hash: &[u8; 32]) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        let row = off_runtime(|| {
            self.with(|h| {
                let s = h.statement(
                    "SELECT token_hash, net_id FROM bi_peer_tokens WHERE token_hash = $1",
                )?;
                h.client.query_opt(&s, &[&&hash[..]]).map_err(pg)
            })
        })?;
        Ok(row.and_then(|r| {
            let net: i64 = r.get(1);
            u32::try_from(net).ok().map(|n| (r.get(0), n))
        }))
    }
}
